//! The services framework's instances: every task it launched and has not seen end, by app, with the kills
//! it sent and not yet seen answered. What converging an app needs ([`Instances::plan`]), what to sweep
//! ([`Instances::sweep`]) and how far a deployment got ([`Instances::progress`]) are pure: they read the
//! instances, the app and the time given, and change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use keel_core::task::{self, TaskState, TaskStatus};
use serde::Serialize;

use crate::app::{AppDefinition, AppId};
use crate::deployment::Rollout;
use crate::store::{InstanceRecord, timestamp};

/// How long a kill may go unanswered before it is sent again (a kill sent while the agent was disconnected
/// is lost); the wait doubles with each attempt, up to [`KILL_RETRY_MAX`].
const KILL_RETRY: Duration = Duration::from_secs(5);
const KILL_RETRY_MAX: Duration = Duration::from_secs(60);
/// How many kills one pass sends again at most, so that an agent coming back with many tasks to kill does
/// not flood the master.
pub const KILL_RESENDS_PER_PASS: usize = 100;

/// One running (or starting) task of an app.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    pub app_id: String,
    pub host: String,
    pub ports: Vec<u16>,
    /// The app's service ports, as Marathon lists them beside the host ports.
    pub service_ports: Vec<u32>,
    pub staged_at: String,
    pub started_at: Option<String>,
    /// When the task started running, in milliseconds since the epoch, for `taskStats`' life times.
    #[serde(skip)]
    pub started_millis: Option<i64>,
    pub version: String,
    pub state: TaskState,
    pub slave_id: String,
    /// Empty until the agent has reported the task's health.
    pub health_check_results: Vec<HealthCheckResult>,
    #[serde(skip)]
    pub healthy: Option<bool>,
    /// When the task first passed its health check, if this process saw it happen.
    #[serde(skip)]
    first_success: Option<String>,
    /// Whether this process has seen every health report of the task (it launched it), so that the first
    /// success it sees is the task's first; false for tasks known from the store after a restart.
    #[serde(skip)]
    seen_from_launch: bool,
    #[serde(skip)]
    staged_millis: i64,
    /// The configuration fingerprint of the app it was launched from.
    #[serde(skip)]
    fingerprint: String,
    #[serde(skip)]
    pub(crate) unreachable_since: Option<Instant>,
    /// The agent's attributes, for constraints; stored with the instance, so they survive a restart.
    #[serde(skip)]
    pub(crate) attributes: Vec<(String, String)>,
}

/// A task's health, as one entry of Marathon's `healthCheckResults`. Agents report only changes of health,
/// so Keel knows whether the task is alive and when it first passed, but not the time of the latest
/// success or failure: Marathon's `lastSuccess`, `lastFailure` and `lastFailureCause` are left out rather
/// than guessed, and `consecutiveFailures` is given only while the task is alive (it is then 0: the agent
/// reports the first failure after a success).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckResult {
    /// The task id: each Keel instance is one task.
    pub instance_id: String,
    pub alive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_success: Option<String>,
}

impl Instance {
    /// An instance known from its record, after a restart: staging until the master says otherwise.
    /// `fingerprint` is that of the app's configuration it was launched from (its record's version), so
    /// that a deployment under way goes on replacing it.
    pub(crate) fn from_record(r: InstanceRecord, app: Option<&AppDefinition>, fingerprint: String) -> Instance {
        Instance {
            id: r.task_id,
            app_id: r.app_id,
            host: r.host,
            ports: r.ports,
            service_ports: app.map(AppDefinition::service_ports).unwrap_or_default(),
            staged_at: timestamp(r.staged_at),
            started_at: None,
            started_millis: None,
            version: r.version,
            state: TaskState::Staging,
            slave_id: r.agent_id,
            health_check_results: Vec::new(),
            healthy: None,
            first_success: None,
            seen_from_launch: false,
            staged_millis: r.staged_at,
            fingerprint,
            unreachable_since: None,
            attributes: r.attributes,
        }
    }

    /// An instance this process launches now, as `record` says, of `app` with configuration `fingerprint`.
    pub(crate) fn launched(record: &InstanceRecord, app: &AppDefinition, fingerprint: &str) -> Instance {
        Instance {
            seen_from_launch: true,
            fingerprint: fingerprint.to_owned(),
            ..Instance::from_record(record.clone(), None, String::new())
        }
        .with_service_ports(app.service_ports())
    }

    fn with_service_ports(mut self, ports: Vec<u32>) -> Instance {
        self.service_ports = ports;
        self
    }

    /// Records a health report from the agent (or the master's reconciliation answer).
    pub(crate) fn set_health(&mut self, status: &TaskStatus) {
        let Some(alive) = status.healthy else { return };
        self.healthy = Some(alive);
        // A reconciliation answer is stamped with the time of the answer, not of the check.
        let from_agent = status.reason.as_deref() == Some(task::reason::HEALTH_CHECK);
        if alive && from_agent && self.seen_from_launch && self.first_success.is_none() {
            self.first_success = Some(timestamp((status.timestamp * 1000.0) as i64));
        }
        self.health_check_results = vec![HealthCheckResult {
            instance_id: self.id.clone(),
            alive,
            consecutive_failures: alive.then_some(0),
            first_success: self.first_success.clone(),
        }];
    }

    /// Whether it counts as serving: running, and healthy if its app has health checks.
    pub fn ready(&self, app: Option<&AppDefinition>) -> bool {
        let checked = app.is_some_and(|a| !a.health_checks.is_empty());
        self.state == TaskState::Running && (!checked || self.healthy == Some(true))
    }

    /// Whether it has been unreachable for `after` or longer at `now`.
    fn unreachable_for(&self, after: Duration, now: Instant) -> bool {
        self.unreachable_since.is_some_and(|since| now.saturating_duration_since(since) >= after)
    }
}

/// When a kill of a task was last sent, and how many times it has been.
#[derive(Clone, Copy, Debug)]
struct KillSent {
    at: Instant,
    times: u32,
}

impl KillSent {
    /// Whether the kill is due to be sent again at `now`.
    fn due(&self, now: Instant) -> bool {
        let wait = KILL_RETRY.saturating_mul(1 << self.times.saturating_sub(1).min(8)).min(KILL_RETRY_MAX);
        now >= self.at + wait
    }
}

/// One convergence step for an app: how many instances of its current configuration to launch, and which
/// to kill.
#[derive(Default, Debug)]
pub struct Plan {
    pub launch: usize,
    pub kill: Vec<Instance>,
}

/// What a pass over every instance finds to do, besides each app's [`Plan`].
#[derive(Default, Debug)]
pub struct Sweep {
    /// Live instances of apps that no longer exist.
    pub kill: Vec<Instance>,
    /// Instances unreachable past their app's `expungeAfterSeconds`: forgotten (and killed, should they
    /// come back).
    pub expunge: Vec<String>,
}

/// Every instance, by task id and by app, and the kills sent. Ordered maps: what a pass over them does
/// depends on nothing but their contents.
#[derive(Default)]
pub struct Instances {
    all: BTreeMap<String, Instance>,
    /// Task ids by app id, so that per-app questions do not scan every instance.
    by_app: BTreeMap<String, BTreeSet<String>>,
    /// Tasks this framework asked to kill: their end is not a failure. Kills unanswered for a while are sent
    /// again, as one sent while the agent was away is lost.
    killing: BTreeMap<String, KillSent>,
}

impl Instances {
    pub fn new(instances: impl IntoIterator<Item = Instance>) -> Instances {
        let mut all = Instances::default();
        for i in instances {
            all.add(i);
        }
        all
    }

    pub fn add(&mut self, inst: Instance) {
        self.by_app.entry(inst.app_id.clone()).or_default().insert(inst.id.clone());
        self.all.insert(inst.id.clone(), inst);
    }

    /// Forgets an instance. A kill sent for it stays recorded until [`Instances::kill_answered`].
    pub fn remove(&mut self, id: &str) -> Option<Instance> {
        let inst = self.all.remove(id)?;
        if let Some(ids) = self.by_app.get_mut(&inst.app_id) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_app.remove(&inst.app_id);
            }
        }
        Some(inst)
    }

    pub fn get(&self, id: &str) -> Option<&Instance> {
        self.all.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Instance> {
        self.all.get_mut(id)
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &Instance> {
        self.all.values()
    }

    /// Every instance of an app, terminal or not.
    pub fn of_app<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.by_app.get(id).into_iter().flatten().filter_map(|t| self.all.get(t))
    }

    pub fn is_killing(&self, id: &str) -> bool {
        self.killing.contains_key(id)
    }

    /// Records a kill of `id` sent at `now`; answers how many times it has been sent.
    pub fn kill_sent(&mut self, id: &str, now: Instant) -> u32 {
        let sent = self.killing.entry(id.to_owned()).or_insert(KillSent { at: now, times: 0 });
        sent.at = now;
        sent.times += 1;
        sent.times
    }

    /// The task ended: its kill, if one was sent, is answered. Answers whether it was being killed.
    pub fn kill_answered(&mut self, id: &str) -> bool {
        self.killing.remove(id).is_some()
    }

    /// Forgets kills of instances forgotten without an end (expunged, wiped), which need no answer, and
    /// answers the unanswered kills to send again at `now`: of instances not yet ended, at most
    /// [`KILL_RESENDS_PER_PASS`], the longest waiting first.
    pub fn kills_to_resend(&mut self, now: Instant) -> Vec<String> {
        let all = &self.all;
        self.killing.retain(|id, _| all.contains_key(id));
        let mut due: Vec<(&String, &KillSent)> = self
            .killing
            .iter()
            .filter(|(id, k)| k.due(now) && all.get(*id).is_some_and(|i| !i.state.is_terminal()))
            .collect();
        due.sort_by_key(|(id, k)| (k.at, *id));
        due.into_iter().take(KILL_RESENDS_PER_PASS).map(|(id, _)| id.clone()).collect()
    }

    /// Whether an instance counts towards its app's target at `now`: not being killed, not ended, and not
    /// unreachable past the app's `inactiveAfterSeconds`.
    fn counts(&self, inst: &Instance, app: Option<&AppDefinition>, now: Instant) -> bool {
        let inactive_after = Duration::from_secs(
            app.map_or(crate::app::DEFAULT_INACTIVE_AFTER_SECONDS, |a| a.unreachable_strategy.inactive_after_seconds),
        );
        !self.killing.contains_key(&inst.id) && !inst.state.is_terminal() && !inst.unreachable_for(inactive_after, now)
    }

    /// The instances that count towards app `id`'s target at `now`.
    pub fn active(&self, id: &AppId, app: Option<&AppDefinition>, now: Instant) -> Vec<&Instance> {
        self.of_app(id.as_str()).filter(|i| self.counts(i, app, now)).collect()
    }

    /// What converging app `id` (whose configuration has `fingerprint`) needs at `now`. Surplus instances
    /// of the current configuration go, the youngest first unless the app says `OLDEST_FIRST`. During an
    /// upgrade, old instances go only as new ones become ready, keeping at least
    /// `minimumHealthCapacity × instances` serving and at most `(1 + maximumOverCapacity) × instances`
    /// running (Marathon's rolling upgrade); old instances that are not ready go at once.
    pub fn plan(&self, id: &AppId, app: &AppDefinition, fingerprint: &str, now: Instant) -> Plan {
        let (new, old): (Vec<&Instance>, Vec<&Instance>) =
            self.active(id, Some(app), now).into_iter().partition(|i| i.fingerprint == fingerprint);
        let n = app.instances as usize;
        let mut kill: Vec<Instance> = Vec::new();
        if new.len() > n {
            let mut surplus: Vec<&Instance> = new.clone();
            surplus.sort_by_key(|i| (i.staged_millis, i.id.as_str()));
            if app.kill_selection != "OLDEST_FIRST" {
                surplus.reverse();
            }
            kill.extend(surplus.into_iter().take(new.len() - n).cloned());
        }
        if old.is_empty() {
            return Plan { launch: n.saturating_sub(new.len()), kill };
        }
        let strategy = &app.upgrade_strategy;
        let (ready_old, unready_old): (Vec<&Instance>, Vec<&Instance>) =
            old.iter().copied().partition(|i| i.ready(Some(app)));
        let rollout = Rollout {
            instances: n,
            max_total: n + (n as f64 * strategy.maximum_over_capacity).floor() as usize,
            min_ready: (n as f64 * strategy.minimum_health_capacity).ceil() as usize,
            new: new.len(),
            ready_new: new.iter().filter(|i| i.ready(Some(app))).count(),
            old: old.len(),
            ready_old: ready_old.len(),
            dying: self.of_app(id.as_str()).filter(|i| self.is_killing(&i.id) && !i.state.is_terminal()).count(),
        };
        let (launch, can_kill) = rollout.step();
        kill.extend(unready_old.into_iter().cloned());
        kill.extend(ready_old.into_iter().take(can_kill).cloned());
        Plan { launch, kill }
    }

    /// What a pass over every live instance not being killed finds at `now`: instances of apps that no
    /// longer exist, and unreachable instances past their app's `expungeAfterSeconds`.
    pub fn sweep<'a>(&self, app_of: impl Fn(&str) -> Option<&'a AppDefinition>, now: Instant) -> Sweep {
        let mut sweep = Sweep::default();
        for inst in self.all.values() {
            if self.killing.contains_key(&inst.id) || inst.state.is_terminal() {
                continue;
            }
            match app_of(&inst.app_id) {
                None => sweep.kill.push(inst.clone()),
                Some(app) => {
                    let after = Duration::from_secs(app.unreachable_strategy.expunge_after_seconds);
                    if inst.unreachable_for(after, now) {
                        sweep.expunge.push(inst.id.clone());
                    }
                }
            }
        }
        sweep
    }

    /// How far the deployment of app `id` got at `now`, towards `app` with `fingerprint` (`None`: the app
    /// is being removed): whether it is done, and its progress (new instances ready, others left).
    ///
    /// Done only when every live instance is of the new configuration, ready, and not being killed: tasks
    /// still shutting down keep the deployment open. Progress is more new instances ready or fewer old ones
    /// left. New instances that start and crash again are churn, not progress: they do not count.
    pub fn progress(
        &self,
        id: &AppId,
        app: Option<&AppDefinition>,
        fingerprint: &str,
        now: Instant,
    ) -> (bool, (usize, usize)) {
        let Some(app) = app else {
            let left = self.of_app(id.as_str()).count();
            return (left == 0, (0, left));
        };
        let inactive_after = Duration::from_secs(app.unreachable_strategy.inactive_after_seconds);
        let live: Vec<&Instance> = self
            .of_app(id.as_str())
            .filter(|i| !i.state.is_terminal() && !i.unreachable_for(inactive_after, now))
            .collect();
        let ready_new = live
            .iter()
            .filter(|i| i.fingerprint == fingerprint && !self.is_killing(&i.id) && i.ready(Some(app)))
            .count();
        let others = live.len() - ready_new;
        let stale = live.iter().filter(|i| i.fingerprint != fingerprint || self.is_killing(&i.id)).count();
        (ready_new == app.instances as usize && others == 0, (ready_new, stale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(json: serde_json::Value) -> AppDefinition {
        serde_json::from_value(json).unwrap()
    }

    fn instance(id: &str, fingerprint: &str, staged: i64, state: TaskState) -> Instance {
        let record = InstanceRecord {
            task_id: id.into(),
            app_id: "/web".into(),
            version: "v1".into(),
            agent_id: "a1".into(),
            host: "h1".into(),
            ports: vec![],
            staged_at: staged,
            attributes: vec![],
        };
        let mut inst = Instance::launched(&record, &app(serde_json::json!({"id": "/web", "cmd": "x"})), fingerprint);
        inst.state = state;
        inst
    }

    fn web() -> AppId {
        AppId::parse("/web").unwrap()
    }

    fn killed(plan: &Plan) -> Vec<&str> {
        let mut ids: Vec<&str> = plan.kill.iter().map(|i| i.id.as_str()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn surplus_instances_go_youngest_first_unless_the_app_says_oldest() {
        let t0 = Instant::now();
        let all = Instances::new((1..=4).map(|n| instance(&format!("t{n}"), "f", n, TaskState::Running)));
        let two = app(serde_json::json!({"id": "/web", "cmd": "x", "instances": 2}));
        let plan = all.plan(&web(), &two, "f", t0);
        assert_eq!((plan.launch, killed(&plan)), (0, vec!["t3", "t4"]));
        let oldest =
            app(serde_json::json!({"id": "/web", "cmd": "x", "instances": 2, "killSelection": "OLDEST_FIRST"}));
        assert_eq!(killed(&all.plan(&web(), &oldest, "f", t0)), vec!["t1", "t2"]);
        let six = app(serde_json::json!({"id": "/web", "cmd": "x", "instances": 6}));
        let plan = all.plan(&web(), &six, "f", t0);
        assert_eq!((plan.launch, plan.kill.len()), (2, 0));
    }

    #[test]
    fn an_instance_being_killed_ended_or_unreachable_too_long_does_not_count() {
        let t0 = Instant::now();
        let mut all = Instances::new([
            instance("run", "f", 1, TaskState::Running),
            instance("dying", "f", 2, TaskState::Running),
            instance("ended", "f", 3, TaskState::Failed),
            instance("away", "f", 4, TaskState::Unreachable),
        ]);
        all.kill_sent("dying", t0);
        all.get_mut("away").unwrap().unreachable_since = Some(t0);
        let a = app(serde_json::json!({"id": "/web", "cmd": "x", "instances": 3,
            "unreachableStrategy": {"inactiveAfterSeconds": 10, "expungeAfterSeconds": 20}}));
        let count = |now| all.active(&web(), Some(&a), now).len();
        assert_eq!(count(t0 + Duration::from_secs(9)), 2, "unreachable, but not yet for long");
        assert_eq!(count(t0 + Duration::from_secs(10)), 1);
        assert_eq!(all.plan(&web(), &a, "f", t0 + Duration::from_secs(10)).launch, 2);

        let none = all.sweep(|_| None, t0);
        assert_eq!(none.kill.len(), 2, "live instances not being killed, of an app that is gone");
        assert_eq!(all.sweep(|_| Some(&a), t0 + Duration::from_secs(19)).expunge, Vec::<String>::new());
        assert_eq!(all.sweep(|_| Some(&a), t0 + Duration::from_secs(20)).expunge, vec!["away"]);
    }

    #[test]
    fn an_upgrade_replaces_unready_old_instances_at_once_and_ready_ones_as_new_ones_get_ready() {
        let t0 = Instant::now();
        let mut all = Instances::new([
            instance("old1", "v1", 1, TaskState::Running),
            instance("old2", "v1", 2, TaskState::Running),
            instance("old3", "v1", 3, TaskState::Staging),
        ]);
        let a = app(serde_json::json!({"id": "/web", "cmd": "x", "instances": 3,
            "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0}}));
        let plan = all.plan(&web(), &a, "v2", t0);
        // At least 2 of 3 stay serving: the unready one goes, and one ready one may.
        assert_eq!(killed(&plan), vec!["old1", "old3"]);
        for i in &plan.kill {
            all.kill_sent(&i.id, t0);
        }
        let plan = all.plan(&web(), &a, "v2", t0);
        assert_eq!((plan.launch, plan.kill.len()), (0, 0), "instances being killed take room until they end");
        for id in ["old1", "old3"] {
            all.remove(id);
            assert!(all.kill_answered(id));
        }
        assert_eq!(all.plan(&web(), &a, "v2", t0).launch, 2);

        all.add(instance("new1", "v2", 5, TaskState::Running));
        all.add(instance("new2", "v2", 6, TaskState::Running));
        let (done, progress) = all.progress(&web(), Some(&a), "v2", t0);
        assert_eq!((done, progress), (false, (2, 1)));
        let plan = all.plan(&web(), &a, "v2", t0);
        assert_eq!((plan.launch, killed(&plan)), (0, vec!["old2"]), "two new ones serve: the last old one may go");
        all.kill_sent("old2", t0);
        let (done, _) = all.progress(&web(), Some(&a), "v2", t0);
        assert!(!done, "not done while an old instance is still ending");
        all.remove("old2");
        all.kill_answered("old2");
        assert_eq!(all.plan(&web(), &a, "v2", t0).launch, 1);
        all.add(instance("new3", "v2", 7, TaskState::Running));
        assert_eq!(all.progress(&web(), Some(&a), "v2", t0), (true, (3, 0)));
    }

    #[test]
    fn unanswered_kills_are_sent_again_less_and_less_often() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut all = Instances::new(["a", "b", "gone"].map(|id| instance(id, "f", 0, TaskState::Running)));
        all.get_mut("gone").unwrap().state = TaskState::Killed;
        all.kill_sent("a", t0);
        all.kill_sent("b", t0 + s(3));
        all.kill_sent("gone", t0);
        all.kill_sent("unknown", t0);
        assert!(all.kills_to_resend(t0 + s(4)).is_empty(), "not before 5 s");
        assert!(!all.is_killing("unknown"), "a kill of an instance no longer known needs no answer");
        assert_eq!(all.kills_to_resend(t0 + s(5)), vec!["a"], "only known, live tasks");
        assert_eq!(all.kills_to_resend(t0 + s(8)), vec!["a", "b"], "the longest waiting first");

        // Each attempt waits twice as long, up to a minute.
        let waits: Vec<u64> = (1..=6)
            .map(|times| {
                let k = KillSent { at: t0, times };
                (1..=120).find(|n| k.due(t0 + s(*n))).unwrap()
            })
            .collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 60, 60]);

        // A pass sends at most KILL_RESENDS_PER_PASS.
        for i in 0..KILL_RESENDS_PER_PASS + 10 {
            let id = format!("t{i}");
            all.add(instance(&id, "f", 0, TaskState::Running));
            all.kill_sent(&id, t0);
        }
        assert_eq!(all.kills_to_resend(t0 + s(5)).len(), KILL_RESENDS_PER_PASS);
    }

    fn health(healthy: Option<bool>, reason: &str, at: f64) -> TaskStatus {
        let mut s = TaskStatus::from_master(
            keel_core::ids::TaskId::parse("web.1").unwrap(),
            TaskState::Running,
            None,
            reason,
            "",
        );
        s.healthy = healthy;
        s.timestamp = at;
        s
    }

    #[test]
    fn health_check_results_say_only_what_the_agent_reported() {
        let mut inst = instance("web.1", "f", 0, TaskState::Running);
        inst.set_health(&health(None, task::reason::HEALTH_CHECK, 1.0));
        assert!(inst.health_check_results.is_empty(), "no report, no result");

        inst.set_health(&health(Some(true), task::reason::HEALTH_CHECK, 2.0));
        let json = serde_json::to_value(&inst).unwrap();
        assert_eq!(
            json["healthCheckResults"],
            serde_json::json!([{"instanceId": "web.1", "alive": true, "consecutiveFailures": 0,
                                "firstSuccess": "1970-01-01T00:00:02.000Z"}])
        );

        inst.set_health(&health(Some(false), task::reason::HEALTH_CHECK, 3.0));
        inst.set_health(&health(Some(true), task::reason::HEALTH_CHECK, 4.0));
        assert_eq!(inst.health_check_results[0].first_success.as_deref(), Some("1970-01-01T00:00:02.000Z"));
        inst.set_health(&health(Some(false), task::reason::HEALTH_CHECK, 5.0));
        let json = serde_json::to_value(&inst).unwrap();
        assert_eq!(
            json["healthCheckResults"],
            serde_json::json!([{"instanceId": "web.1", "alive": false, "firstSuccess": "1970-01-01T00:00:02.000Z"}]),
            "the number of failures is not reported, so it is not shown"
        );

        // Known from the store after a restart: the first success was not seen, and a reconciliation
        // answer carries the time of the answer.
        let mut inst = Instance { seen_from_launch: false, ..instance("web.2", "f", 0, TaskState::Running) };
        inst.set_health(&health(Some(true), task::reason::RECONCILIATION, 9.0));
        inst.set_health(&health(Some(true), task::reason::HEALTH_CHECK, 10.0));
        let json = serde_json::to_value(&inst).unwrap();
        assert_eq!(
            json["healthCheckResults"],
            serde_json::json!([{"instanceId": "web.2", "alive": true, "consecutiveFailures": 0}])
        );
    }
}
