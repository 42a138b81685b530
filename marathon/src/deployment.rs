//! The services framework's deployment planning: a deployment as Marathon shows it, and `Rollout::step`,
//! the pure arithmetic of a rolling upgrade (how many new instances to launch and old ones to kill, within
//! `minimumHealthCapacity` and `maximumOverCapacity`). The actor counts instances and carries out the step.

use std::time::Instant;

use crate::app::{AppDefinition, AppId};

/// A change being rolled out to one app, as Marathon's deployments show it.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub id: String,
    pub app_id: AppId,
    /// The app version being deployed.
    pub version: String,
    /// `StartApplication`, `ScaleApplication`, `RestartApplication` or `StopApplication`.
    pub action: &'static str,
    /// The definition before the change, for a rollback; `None` when the app is new.
    pub previous: Option<AppDefinition>,
    /// The definition being deployed; `None` when the app is being removed.
    pub target: Option<AppDefinition>,
    /// Roll back by itself if the deployment fails (the app label `KEEL_ROLLBACK_ON_FAILURE=true`).
    pub rollback_on_failure: bool,
    pub(crate) started: Instant,
    /// When the deployment last moved forward; it fails after `deployment_timeout` without progress.
    pub(crate) progressed: Instant,
    pub(crate) progress: (usize, usize),
}

impl Deployment {
    /// Its one step, as Marathon's events show `currentStep`: a Keel deployment changes one app in one step.
    pub(crate) fn step_json(&self) -> serde_json::Value {
        serde_json::json!({ "actions": [{ "action": self.action, "app": self.app_id }] })
    }

    /// The deployment as Marathon's events show its `plan`. Marathon's `original` and `target` are the root
    /// group before and after; a Keel deployment changes one app, so each holds that app (or nothing).
    pub(crate) fn plan_json(&self) -> serde_json::Value {
        let group = |app: &Option<AppDefinition>, version: &str| {
            serde_json::json!({
                "id": "/",
                "apps": app.iter().collect::<Vec<_>>(),
                "groups": [],
                "pods": [],
                "dependencies": [],
                "version": version,
            })
        };
        let before = self.previous.as_ref().and_then(|p| p.version.clone()).unwrap_or_else(|| self.version.clone());
        serde_json::json!({
            "id": self.id,
            "version": self.version,
            "original": group(&self.previous, &before),
            "target": group(&self.target, &self.version),
            "steps": [self.step_json()],
        })
    }
}

/// The label that makes a failed deployment roll back by itself.
pub const ROLLBACK_LABEL: &str = "KEEL_ROLLBACK_ON_FAILURE";

/// Where one app's rolling upgrade stands: counts of its live instances, old and new.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rollout {
    pub instances: usize,
    /// `(1 + maximumOverCapacity) × instances`, rounded down.
    pub max_total: usize,
    /// `minimumHealthCapacity × instances`, rounded up.
    pub min_ready: usize,
    pub new: usize,
    pub ready_new: usize,
    pub old: usize,
    pub ready_old: usize,
    /// Instances being killed: they still run until they end, so they take room like any other.
    pub dying: usize,
}

impl Rollout {
    /// How many new instances to launch now, and how many ready old ones to kill (unready old ones always
    /// go). Old instances go only as new ones become ready.
    pub fn step(&self) -> (usize, usize) {
        let n = self.instances;
        let room = self.max_total.saturating_sub(self.new + self.old + self.dying);
        let launch = n.saturating_sub(self.new).min(room);
        if self.ready_new >= n {
            return (launch, self.ready_old);
        }
        let can_kill = (self.ready_new + self.ready_old).saturating_sub(self.min_ready);
        let in_flight = self.dying > 0 || self.ready_new < self.new;
        if launch == 0 && can_kill == 0 && self.new < n && !in_flight {
            // The strategy leaves no room to start a new instance and none may go (minimumHealthCapacity 1
            // with maximumOverCapacity 0): make room one at a time, as Marathon does. Not while a new
            // instance is still getting ready or an old one is still ending: that room is already in use.
            return (launch, 1);
        }
        (launch, can_kill)
    }
}

#[cfg(test)]
mod tests {
    use super::Rollout;

    /// Plays whole rolling upgrades, applying [`Rollout::step`] after every single event (a new instance
    /// becoming ready, a killed one ending, or none) in every order, and checks Marathon's bounds.
    #[test]
    fn rolling_upgrades_stay_within_their_capacity_bounds() {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        struct World {
            unready_new: usize,
            ready_new: usize,
            old: usize,
            dying: usize,
        }
        for n in 1..=4usize {
            for (min_health, over) in [(1.0, 0.5), (1.0, 0.0), (0.5, 0.0), (0.0, 0.0), (0.5, 1.0), (1.0, 1.0)] {
                let max_total = n + (n as f64 * over).floor() as usize;
                let min_ready = (n as f64 * min_health).ceil() as usize;
                // With no room at all, one old instance goes first, as in Marathon.
                let floor = if max_total == min_ready { min_ready.saturating_sub(1) } else { min_ready };
                let apply = |w: World| {
                    let r = Rollout {
                        instances: n,
                        max_total,
                        min_ready,
                        new: w.unready_new + w.ready_new,
                        ready_new: w.ready_new,
                        old: w.old,
                        ready_old: w.old,
                        dying: w.dying,
                    };
                    let (launch, kill) = r.step();
                    let kill = kill.min(w.old);
                    World { unready_new: w.unready_new + launch, old: w.old - kill, dying: w.dying + kill, ..w }
                };
                let start = World { unready_new: 0, ready_new: 0, old: n, dying: 0 };
                let mut seen = std::collections::HashSet::new();
                let mut todo = vec![apply(start)];
                while let Some(w) = todo.pop() {
                    if !seen.insert(w) {
                        continue;
                    }
                    let label = format!("n={n} min={min_health} over={over}: {w:?}");
                    let total = w.unready_new + w.ready_new + w.old + w.dying;
                    assert!(total <= max_total.max(n), "over capacity, {label}");
                    assert!(w.ready_new + w.old >= floor.min(n), "capacity dropped, {label}");
                    // The plan is also made again with nothing new (the next offer, the periodic pass).
                    let mut next = vec![w];
                    if w.unready_new > 0 {
                        next.push(World { unready_new: w.unready_new - 1, ready_new: w.ready_new + 1, ..w });
                    }
                    if w.dying > 0 {
                        next.push(World { dying: w.dying - 1, ..w });
                    }
                    if next.len() == 1 && apply(w) == w {
                        assert_eq!((w.ready_new, w.old), (n, 0), "stuck before the end, {label}");
                    }
                    todo.extend(next.into_iter().map(apply));
                }
            }
        }
    }
}
