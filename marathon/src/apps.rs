//! The services framework's apps: each app's definition, with what is derived from it once per change (its
//! configuration fingerprint and compiled constraints), and its launch delay after failures ([`Backoff`]).
//! Every decision here is pure: the time is an argument.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::app::{AppDefinition, AppId};
use crate::placement::Constraint;

/// How long after its deadline a delay is forgotten, so that the next failure waits `backoffSeconds` again.
/// Marathon drops overdue delays every 10 s; a task that failed again sooner than that keeps the delay
/// growing.
pub const FORGET_BACKOFF_AFTER: Duration = Duration::from_secs(10);

/// An app's launch delay after failures.
#[derive(Debug)]
pub struct Backoff {
    /// Failures since the delay was last forgotten: the exponent of `backoffFactor`.
    failures: u32,
    /// No launch of the app before this.
    until: Instant,
}

impl Backoff {
    /// A failure heard of at `now`, which happened `ago` before: the delay is
    /// `backoff_seconds × backoff_factor^(failures − 1)` (at most `max_seconds`), counted from the failure
    /// itself, so that a failure heard of late (as after a master failover) does not wait it all again on
    /// top. `ago` counts for at most half the delay: an agent's clock running behind cannot take the backoff
    /// away. Answers the seconds left to wait.
    fn failed(
        &mut self,
        now: Instant,
        ago: Duration,
        backoff_seconds: f64,
        backoff_factor: f64,
        max_seconds: f64,
    ) -> f64 {
        if now >= self.until + FORGET_BACKOFF_AFTER {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        let exponent = i32::try_from(self.failures - 1).unwrap_or(i32::MAX);
        let delay = (backoff_seconds * backoff_factor.powi(exponent)).min(max_seconds);
        // Validation bounds both numbers; clamp anyway, as no stored value may overflow the clock.
        let delay = if delay.is_finite() { delay.clamp(0.0, crate::app::MAX_SECONDS as f64) } else { 0.0 };
        let delay = Duration::from_secs_f64(delay);
        let wait = delay.saturating_sub(ago.min(delay / 2));
        self.until = now + wait;
        wait.as_secs_f64()
    }
}

/// Every app, by id.
#[derive(Default)]
pub struct Apps {
    defs: BTreeMap<AppId, AppDefinition>,
    /// Each app's configuration fingerprint, computed once per change (it serializes the app).
    fingerprints: HashMap<AppId, String>,
    /// Each app's placement constraints, parsed and compiled once per change.
    constraints: HashMap<AppId, Vec<Constraint>>,
    /// Launch delays, of apps whose tasks failed.
    backoff: HashMap<AppId, Backoff>,
}

impl Apps {
    pub fn new(defs: impl IntoIterator<Item = (AppId, AppDefinition)>) -> Apps {
        let mut apps = Apps::default();
        for (id, app) in defs {
            apps.set(id, app);
        }
        apps
    }

    /// Sets an app's definition. A change of its configuration (not only of its scale) forgets its delay:
    /// the new configuration has not failed yet.
    pub fn set(&mut self, id: AppId, app: AppDefinition) {
        let fingerprint = app.config_fingerprint();
        if self.fingerprints.get(&id).is_some_and(|f| *f != fingerprint) {
            self.backoff.remove(&id);
        }
        self.fingerprints.insert(id.clone(), fingerprint);
        self.constraints.insert(id.clone(), Constraint::parse_all(&app.constraints));
        self.defs.insert(id, app);
    }

    pub fn remove(&mut self, id: &AppId) -> Option<AppDefinition> {
        self.fingerprints.remove(id);
        self.constraints.remove(id);
        self.backoff.remove(id);
        self.defs.remove(id)
    }

    pub fn get(&self, id: &AppId) -> Option<&AppDefinition> {
        self.defs.get(id)
    }

    /// The app of an instance, by the app id it carries.
    pub fn of(&self, app_id: &str) -> Option<&AppDefinition> {
        AppId::parse(app_id).ok().and_then(|id| self.defs.get(&id))
    }

    pub fn contains(&self, id: &AppId) -> bool {
        self.defs.contains_key(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&AppId, &AppDefinition)> {
        self.defs.iter()
    }

    pub fn ids(&self) -> Vec<AppId> {
        self.defs.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.defs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    pub fn fingerprint(&self, id: &AppId) -> &str {
        self.fingerprints.get(id).map_or("", String::as_str)
    }

    pub fn constraints(&self, id: &AppId) -> &[Constraint] {
        self.constraints.get(id).map_or(&[][..], Vec::as_slice)
    }

    /// The service ports of every app but `except`.
    pub fn service_ports_taken(&self, except: &AppId) -> BTreeSet<u32> {
        self.defs
            .iter()
            .filter(|(other, _)| *other != except)
            .flat_map(|(_, a)| a.service_ports())
            .filter(|p| *p != 0)
            .collect()
    }

    /// A task of app `id` failed at `now`, `ago` before: its delay grows. Answers the seconds left to wait
    /// (`None`: no such app).
    pub fn failed(&mut self, id: &AppId, now: Instant, ago: Duration) -> Option<f64> {
        let app = self.defs.get(id)?;
        let b = self.backoff.entry(id.clone()).or_insert(Backoff { failures: 0, until: now });
        Some(b.failed(now, ago, app.backoff_seconds, app.backoff_factor, app.max_launch_delay_seconds))
    }

    /// Forgets an app's delay (`DELETE /v2/queue/{app}/delay`).
    pub fn reset_delay(&mut self, id: &AppId) {
        self.backoff.remove(id);
    }

    /// Whether app `id` may launch at `now`: no delay of it is running.
    pub fn may_launch(&self, id: &AppId, now: Instant) -> bool {
        self.backoff.get(id).is_none_or(|b| now >= b.until)
    }

    /// The delay left of app `id` at `now`.
    pub fn delay_left(&self, id: &AppId, now: Instant) -> Duration {
        self.backoff.get(id).map_or(Duration::ZERO, |b| b.until.saturating_duration_since(now))
    }

    /// The earliest launch delay still running at `now`, if any: when the actor must wake.
    pub fn next_delay_end(&self, now: Instant) -> Option<Instant> {
        self.backoff.values().map(|b| b.until).filter(|until| *until > now).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, json: serde_json::Value) -> (AppId, AppDefinition) {
        let mut json = json;
        json["id"] = id.into();
        (AppId::parse(id).unwrap(), serde_json::from_value(json).unwrap())
    }

    #[test]
    fn the_actor_wakes_when_the_earliest_running_delay_ends() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut apps = Apps::new(
            [("/a", 3.0), ("/b", 1.0), ("/c", 0.0)]
                .map(|(id, seconds)| app(id, serde_json::json!({"cmd": "x", "backoffSeconds": seconds}))),
        );
        assert_eq!(apps.next_delay_end(t0), None);
        for id in ["/a", "/b", "/c"] {
            apps.failed(&AppId::parse(id).unwrap(), t0, Duration::ZERO).unwrap();
        }
        assert_eq!(apps.next_delay_end(t0), Some(t0 + s(1)));
        // Once a delay has run out it no longer wakes the actor; the next one does.
        assert_eq!(apps.next_delay_end(t0 + s(1)), Some(t0 + s(3)));
        assert_eq!(apps.next_delay_end(t0 + s(3)), None);
        let a = AppId::parse("/a").unwrap();
        assert!(!apps.may_launch(&a, t0 + s(2)));
        assert_eq!(apps.delay_left(&a, t0 + s(2)), s(1));
        apps.reset_delay(&a);
        assert!(apps.may_launch(&a, t0 + s(2)));
    }

    #[test]
    fn a_new_configuration_forgets_the_delay_and_a_new_scale_keeps_it() {
        let t0 = Instant::now();
        let (id, def) = app("/a", serde_json::json!({"cmd": "x", "backoffSeconds": 60}));
        let mut apps = Apps::new([(id.clone(), def.clone())]);
        apps.failed(&id, t0, Duration::ZERO);
        apps.set(id.clone(), AppDefinition { instances: 5, ..def.clone() });
        assert!(!apps.may_launch(&id, t0), "scaling keeps the delay");
        apps.set(id.clone(), AppDefinition { cmd: Some("y".into()), ..def });
        assert!(apps.may_launch(&id, t0), "a new command has not failed yet");
        assert_eq!(apps.failed(&AppId::parse("/none").unwrap(), t0, Duration::ZERO), None);
    }

    #[test]
    fn a_backoff_grows_with_failures_in_a_row_and_is_forgotten_once_overdue() {
        let t0 = Instant::now();
        let mut b = Backoff { failures: 0, until: t0 };
        assert_eq!(b.failed(t0, Duration::ZERO, 1.0, 2.0, 300.0), 1.0);
        // Failing again 1.5 s later, soon after the delay ran out: the delay grows.
        assert_eq!(b.failed(t0 + Duration::from_millis(1500), Duration::ZERO, 1.0, 2.0, 300.0), 2.0);
        assert_eq!(b.failed(t0 + Duration::from_secs(4), Duration::ZERO, 1.0, 2.0, 300.0), 4.0);
        assert_eq!(
            b.failed(t0 + Duration::from_secs(9), Duration::ZERO, 100.0, 2.0, 300.0),
            300.0,
            "capped at maxLaunchDelaySeconds"
        );
        // A task that ran well past the delay: the next failure waits backoffSeconds again.
        let later = b.until + FORGET_BACKOFF_AFTER;
        assert_eq!(b.failed(later, Duration::ZERO, 1.0, 2.0, 300.0), 1.0);
        assert_eq!(b.until, later + Duration::from_secs(1));
        assert_eq!(
            b.failed(later, Duration::ZERO, 1e12, 1.0, 1e13),
            crate::app::MAX_SECONDS as f64,
            "no delay overflows the clock"
        );
    }

    #[test]
    fn a_delay_counts_from_the_failure_not_from_when_it_was_heard_of() {
        let t0 = Instant::now();
        let mut b = Backoff { failures: 0, until: t0 };
        // Heard of 0.4 s after it happened (a master failover in between): 0.6 s of the 1 s delay are left.
        assert_eq!(b.failed(t0, Duration::from_millis(400), 1.0, 2.0, 300.0), 0.6);
        assert_eq!(b.until, t0 + Duration::from_millis(600));
        // Heard of long after (or an agent's clock far behind): half the delay still applies.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.failed(t1, Duration::from_secs(3600), 1.0, 2.0, 300.0), 1.0);
        assert_eq!(b.until, t1 + Duration::from_secs(1));
    }
}
