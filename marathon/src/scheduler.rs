//! The services scheduler: a framework that keeps each app's instances running.
//!
//! One actor owns the apps (desired state, from the store) and the instances (observed state, from status
//! updates and reconciliation). It converges the two whatever woke it: offers are used to launch missing
//! instances, surplus instances are killed (youngest or oldest first, per `killSelection`), instances of an
//! older configuration are replaced, and failed ones are relaunched after an exponential backoff.
//! Launched tasks are written to the store before they are accepted, so a restarted framework knows every
//! task it may have started; it then reconciles with the master.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use keel_core::api::{Call, Event, Filters, FrameworkInfo, Offer};
use keel_core::ids::{AgentId, FrameworkId, TaskId};
use keel_core::resources::{PortSet, Resources, Scalar};
use keel_core::scheduler::{self, DriverEvent, SchedulerHandle};
use keel_core::task::{
    self, CommandSpec, DockerSpec, HealthCheck, HealthCheckKind, Network, TaskSpec, TaskState, TaskStatus,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::app::{AppDefinition, AppId};
use crate::deployment::Rollout;
pub use crate::deployment::{Deployment, ROLLBACK_LABEL};
use crate::edit::{self, AppChange, ChangeError};
use crate::placement::{self, Place};
use crate::reconciliation::{Ask, Reconciliation};
use crate::store::{AppStore, InstanceRecord, timestamp};

/// How long an offer nobody needs is refused before it comes back.
const IDLE_REFUSE: Duration = Duration::from_secs(5);

/// How long a kill may go unanswered before it is sent again (a kill sent while the agent was disconnected
/// is lost); the wait doubles with each attempt, up to [`KILL_RETRY_MAX`].
const KILL_RETRY: Duration = Duration::from_secs(5);
const KILL_RETRY_MAX: Duration = Duration::from_secs(60);
/// How many kills one pass sends again at most, so that an agent coming back with many tasks to kill does
/// not flood the master.
const KILL_RESENDS_PER_PASS: usize = 100;

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

/// The unanswered kills to send again at `now`: of tasks still known and not yet ended, at most
/// [`KILL_RESENDS_PER_PASS`], the longest waiting first.
fn kills_to_resend(
    killing: &HashMap<String, KillSent>,
    instances: &HashMap<String, Instance>,
    now: Instant,
) -> Vec<String> {
    let mut due: Vec<(&String, &KillSent)> = killing
        .iter()
        .filter(|(id, k)| k.due(now) && instances.get(*id).is_some_and(|i| !i.state.is_terminal()))
        .collect();
    due.sort_by_key(|(id, k)| (k.at, *id));
    due.into_iter().take(KILL_RESENDS_PER_PASS).map(|(id, _)| id.clone()).collect()
}

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
    #[serde(skip)]
    fingerprint: String,
    #[serde(skip)]
    unreachable_since: Option<Instant>,
    /// The agent's attributes, for constraints; stored with the instance, so they survive a restart.
    #[serde(skip)]
    attributes: Vec<(String, String)>,
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
    /// Records a health report from the agent (or the master's reconciliation answer).
    fn set_health(&mut self, status: &TaskStatus) {
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
}

/// The last failure of an app, as Marathon's `lastTaskFailure`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskFailure {
    pub app_id: String,
    pub host: String,
    pub message: String,
    pub state: TaskState,
    pub task_id: String,
    pub timestamp: String,
    pub version: String,
}

/// Why an app is waiting for offers, for the queue: offers looked at, and how many were turned down for
/// which reason (Marathon's names: `InsufficientCpus`, `UnfulfilledConstraint`, …).
#[derive(Clone, Debug, Default)]
pub struct Waiting {
    pub processed: u64,
    pub declined: BTreeMap<String, u64>,
    /// The last offers turned down, newest last, at most [`LAST_UNUSED_OFFERS`]. Shared, so that a
    /// snapshot for the API does not copy them.
    pub last_unused: std::sync::Arc<VecDeque<UnusedOffer>>,
}

/// How many turned-down offers each waiting app keeps for `/v2/queue?embed=lastUnusedOffers`.
pub const LAST_UNUSED_OFFERS: usize = 10;

/// An offer an app could not use, and why.
#[derive(Clone, Debug)]
pub struct UnusedOffer {
    pub offer: Offer,
    pub reason: String,
    /// When it was turned down (Marathon's timestamp).
    pub timestamp: String,
}

/// An app's place in the launch queue.
#[derive(Clone, Debug)]
pub struct QueueEntry {
    /// Instances still to launch.
    pub count: usize,
    /// Seconds of backoff left before the next launch.
    pub delay_left: f64,
    pub waiting: Waiting,
}

/// What the API reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub instances: Vec<Instance>,
    pub failures: HashMap<String, TaskFailure>,
    /// Apps with instances still to launch, by app id.
    pub queue: BTreeMap<String, QueueEntry>,
    pub deployments: Vec<Deployment>,
}

enum Command {
    /// A change of one app's definition: the actor validates, stores and applies it.
    Change {
        id: AppId,
        change: AppChange,
        force: bool,
        reply: oneshot::Sender<Result<ChangeOutcome, ChangeError>>,
    },
    /// Cancels a deployment: `force` just stops tracking it; otherwise the app is rolled back.
    CancelDeployment {
        id: String,
        force: bool,
        reply: oneshot::Sender<Option<Result<Option<ChangeOutcome>, ChangeError>>>,
    },
    Kill {
        task_ids: Vec<String>,
        scale: bool,
        wipe: bool,
        reply: oneshot::Sender<(Vec<Instance>, Option<ChangeOutcome>)>,
    },
    ResetDelay(AppId),
    DeploymentOf(AppId, oneshot::Sender<Option<String>>),
    Snapshot(oneshot::Sender<Snapshot>),
}

/// An event for `/v2/events` subscribers, in Marathon's format.
#[derive(Clone, Debug)]
pub struct MarathonEvent {
    /// `status_update_event`, `health_status_changed_event`, `api_post_event`, …
    pub event_type: &'static str,
    pub data: serde_json::Value,
}

/// How many events a slow `/v2/events` subscriber may fall behind before it misses some.
const EVENT_BUFFER: usize = 4096;

/// The way in for the REST API; cheap to clone.
#[derive(Clone)]
pub struct MarathonHandle {
    tx: mpsc::Sender<Command>,
    events: tokio::sync::broadcast::Sender<MarathonEvent>,
}

/// The services framework's actor has stopped: its state cannot be read or changed.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the services framework is not running")]
pub struct Stopped;

impl From<Stopped> for ChangeError {
    fn from(_: Stopped) -> ChangeError {
        ChangeError::Stopped
    }
}

/// What a change did.
#[derive(Clone, Debug)]
pub struct ChangeOutcome {
    /// Whether the app existed before.
    pub existed: bool,
    /// The definition now stored; `None` when the app was deleted.
    pub app: Option<AppDefinition>,
    /// The deployment that rolls the change out.
    pub deployment: String,
}

impl MarathonHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Whether the actor still runs.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Changes one app: creates, updates, restarts or deletes it, unless a deployment is changing it and
    /// `force` is not given. The actor is the only writer of app definitions.
    pub async fn change(&self, id: AppId, change: AppChange, force: bool) -> Result<ChangeOutcome, ChangeError> {
        self.ask(|reply| Command::Change { id, change, force, reply }).await?
    }

    /// Cancels a deployment. `None`: no such deployment. With `force` it only stops; otherwise the app is
    /// rolled back to its previous definition, or deleted if it was new (the outcome of that change).
    pub async fn cancel_deployment(
        &self,
        id: String,
        force: bool,
    ) -> Result<Option<Option<ChangeOutcome>>, ChangeError> {
        self.ask(|reply| Command::CancelDeployment { id, force, reply }).await?.transpose()
    }

    /// Kills tasks; with `scale` the app's instance count goes down by as many. With `wipe` the instances are
    /// also forgotten at once (Marathon's expunge), without waiting for their end. Returns the tasks found
    /// and, with `scale`, the change that scaled the (first) app down.
    pub async fn kill(
        &self,
        task_ids: Vec<String>,
        scale: bool,
        wipe: bool,
    ) -> Result<(Vec<Instance>, Option<ChangeOutcome>), Stopped> {
        self.ask(|reply| Command::Kill { task_ids, scale, wipe, reply }).await
    }

    /// The id of the deployment changing `id`, if one is.
    pub async fn deployment_of(&self, id: AppId) -> Result<Option<String>, Stopped> {
        self.ask(|reply| Command::DeploymentOf(id, reply)).await
    }

    pub async fn reset_delay(&self, id: AppId) -> Result<(), Stopped> {
        self.tx.send(Command::ResetDelay(id)).await.map_err(|_| Stopped)
    }

    /// A stream of every event from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MarathonEvent> {
        self.events.subscribe()
    }

    /// Publishes an event (the API's own, such as `api_post_event`).
    pub fn publish(&self, event_type: &'static str, mut data: serde_json::Value) {
        if let Some(obj) = data.as_object_mut() {
            obj.insert("eventType".into(), event_type.into());
            obj.entry("timestamp").or_insert_with(|| timestamp(keel_core::store::now_millis()).into());
        }
        let _ = self.events.send(MarathonEvent { event_type, data });
    }

    pub async fn snapshot(&self) -> Result<Snapshot, Stopped> {
        self.ask(Command::Snapshot).await
    }
}

/// An app's launch delay after failures, as Marathon's rate limiter keeps it.
#[derive(Debug)]
struct Backoff {
    /// Failures since the delay was last forgotten: the exponent of `backoffFactor`.
    failures: u32,
    /// No launch of the app before this.
    until: Instant,
}

/// How long after its deadline a delay is forgotten, so that the next failure waits `backoffSeconds` again.
/// Marathon drops overdue delays every 10 s; a task that failed again sooner than that keeps the delay
/// growing.
const FORGET_BACKOFF_AFTER: Duration = Duration::from_secs(10);

impl Backoff {
    /// A failure heard of at `now`, which happened `ago` before: the delay is
    /// `backoff_seconds × backoff_factor^(failures − 1)` (at most `max_seconds`), counted from the failure
    /// itself, so that a failure heard of late (as after a master failover) does not wait it all again on
    /// top. `ago` counts for at most half the delay: an agent's clock running behind cannot take the backoff
    /// away. Answers the seconds left to wait. Pure.
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

/// The actor's clock: tokio's, so that a test can pause and advance it (as the master's).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The earliest launch delay still running at `now`, if any. Pure.
fn next_delay_end(backoff: &HashMap<AppId, Backoff>, now: Instant) -> Option<Instant> {
    backoff.values().map(|b| b.until).filter(|until| *until > now).min()
}

/// Sleeps until `at`, or for ever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One convergence step for an app.
#[derive(Default)]
struct Plan {
    launch: usize,
    kill: Vec<Instance>,
}

struct Marathon {
    store: AppStore,
    driver: SchedulerHandle,
    apps: BTreeMap<AppId, AppDefinition>,
    instances: HashMap<String, Instance>,
    backoff: HashMap<AppId, Backoff>,
    failures: HashMap<String, TaskFailure>,
    waiting: HashMap<String, Waiting>,
    /// Tasks this framework asked to kill: their end is not a failure. Kills unanswered for a while are sent
    /// again, as one sent while the agent was away is lost.
    killing: HashMap<String, KillSent>,
    suppressed: bool,
    /// Offers were declined (with a filter) since the last REVIVE: new demand must revive to see them.
    declined: bool,
    events: MarathonHandle,
    deployments: BTreeMap<AppId, Deployment>,
    deployment_timeout: Duration,
    /// Task ids by app id, so that per-app questions do not scan every instance.
    by_app: HashMap<String, HashSet<String>>,
    /// Each app's configuration fingerprint, computed once per change (it serializes the app).
    fingerprints: HashMap<AppId, String>,
    /// Each app's placement constraints, parsed and compiled once per change.
    constraints: HashMap<AppId, Vec<placement::Constraint>>,
    /// Which tasks to ask the master about, and when.
    reconciliation: Reconciliation,
}

/// Starts the services framework against `master`. It runs until `shutdown`.
/// How long a deployment may go without progress before it is marked failed.
pub const DEFAULT_DEPLOYMENT_TIMEOUT: Duration = Duration::from_secs(600);

/// Starts the services framework against `master`. It runs until `shutdown`.
pub async fn start(
    master: impl Into<keel_core::client::Target>,
    store: AppStore,
    shutdown: CancellationToken,
) -> Result<MarathonHandle, crate::store::AppStoreError> {
    start_with(master, store, DEFAULT_DEPLOYMENT_TIMEOUT, "", shutdown).await
}

/// [`start`], with the deployment timeout given, and the URL of the REST API (the framework's web UI URL,
/// which the master's console uses to reach it; empty when it has none).
pub async fn start_with(
    master: impl Into<keel_core::client::Target>,
    store: AppStore,
    deployment_timeout: Duration,
    webui_url: &str,
    shutdown: CancellationToken,
) -> Result<MarathonHandle, crate::store::AppStoreError> {
    let framework_id = store.framework_id().await?.and_then(|id| FrameworkId::parse(id).ok());
    let mut info = FrameworkInfo::new("marathon");
    info.webui_url = webui_url.to_owned();
    info.failover_timeout = Duration::from_secs(7 * 24 * 3600);
    if let Some(latest) = store.latest_version().await? {
        crate::store::issue_versions_after(&latest);
    }
    let (driver, events) = scheduler::start(master, info, framework_id, shutdown.clone());
    let mut apps = BTreeMap::new();
    for app in store.list().await? {
        match app.app_id() {
            Ok(id) => {
                apps.insert(id, app);
            }
            Err(e) => {
                error!(app_id = %app.id.chars().take(200).collect::<String>(), error = %e, "stored app ignored: its id is not valid")
            }
        }
    }
    let mut instances = HashMap::new();
    for r in store.instances().await? {
        let app = AppId::parse(&r.app_id).ok().and_then(|id| apps.get(&id));
        let fingerprint = app.map(|a: &AppDefinition| a.config_fingerprint()).unwrap_or_default();
        let service_ports = app.map(AppDefinition::service_ports).unwrap_or_default();
        instances.insert(
            r.task_id.clone(),
            Instance {
                id: r.task_id,
                app_id: r.app_id,
                host: r.host,
                ports: r.ports,
                service_ports,
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
            },
        );
    }
    info!(apps = apps.len(), instances = instances.len(), "services framework starting");
    let (tx, rx) = mpsc::channel(1024);
    let handle = MarathonHandle { tx, events: tokio::sync::broadcast::channel(EVENT_BUFFER).0 };
    let mut by_app: HashMap<String, HashSet<String>> = HashMap::new();
    for inst in instances.values() {
        by_app.entry(inst.app_id.clone()).or_default().insert(inst.id.clone());
    }
    let fingerprints = apps.iter().map(|(id, a)| (id.clone(), a.config_fingerprint())).collect();
    let constraints =
        apps.iter().map(|(id, a)| (id.clone(), placement::Constraint::parse_all(&a.constraints))).collect();
    let m = Marathon {
        reconciliation: Reconciliation::new(now()),
        constraints,
        fingerprints,
        by_app,
        events: handle.clone(),
        deployments: BTreeMap::new(),
        deployment_timeout,
        store,
        driver,
        apps,
        instances,
        backoff: HashMap::new(),
        failures: HashMap::new(),
        waiting: HashMap::new(),
        killing: HashMap::new(),
        suppressed: false,
        declined: false,
    };
    tokio::spawn(m.run(events, rx, shutdown));
    Ok(handle)
}

impl Marathon {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<DriverEvent>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            // A launch delay that runs out wakes the actor at once, rather than at the next tick.
            let delay_ends = next_delay_end(&self.backoff, now());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.recv() => match e {
                    Some(e) => self.event(e).await,
                    None => return,
                },
                c = commands.recv() => match c {
                    Some(c) => self.command(c).await,
                    None => return,
                },
                _ = tick.tick() => {
                    self.reconcile_pass().await;
                    self.converge().await;
                }
                _ = sleep_until_some(delay_ends) => self.converge().await,
            }
        }
    }

    /// Every task this framework may have running, with its agent, for reconciliation.
    fn known_tasks(&self) -> Vec<(TaskId, Option<AgentId>)> {
        self.instances
            .values()
            .filter_map(|i| Some((TaskId::parse(&i.id).ok()?, AgentId::parse(&i.slave_id).ok())))
            .collect()
    }

    async fn ask(&self, ask: Ask) {
        if !ask.explicit.is_empty() {
            self.call(Call::Reconcile { tasks: ask.explicit }).await;
        }
        if ask.implicit {
            self.call(Call::Reconcile { tasks: vec![] }).await;
        }
    }

    /// Asks again about tasks with no answer yet, and periodically about all.
    async fn reconcile_pass(&mut self) {
        let now = now();
        // The list of every task is built only when the periodic pass needs it, not every second.
        let all = if self.reconciliation.full_due(now) { self.known_tasks() } else { Vec::new() };
        if let Some(ask) = self.reconciliation.due(now, || all) {
            debug!(tasks = ask.explicit.len(), implicit = ask.implicit, "reconciling");
            self.ask(ask).await;
        }
    }

    async fn call(&self, call: Call) {
        if let Err(e) = self.driver.call(call).await {
            debug!(error = %e, "call not sent; it is retried on the next pass");
        }
    }

    async fn event(&mut self, e: DriverEvent) {
        match e {
            DriverEvent::Event(Event::Subscribed { framework_id, .. }) => {
                if let Err(e) = self.store.set_framework_id(framework_id.as_str()).await {
                    warn!(error = %e, "cannot store the framework id");
                }
                // Learn the real state of every task this framework may have started.
                let ask = self.reconciliation.subscribed(self.known_tasks(), now());
                self.ask(ask).await;
                self.suppressed = false;
                self.call(Call::Revive).await;
            }
            DriverEvent::Event(Event::Offers(offers)) => self.offers(offers).await,
            DriverEvent::Event(Event::Update(status)) => self.update(status).await,
            DriverEvent::Event(Event::Error(message)) => warn!(%message, "master reported an error"),
            DriverEvent::Stopped(reason) => warn!(%reason, "scheduler driver stopped"),
            _ => {}
        }
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Change { id, change, force, reply } => {
                let result = self.change(id, change, force).await;
                let _ = reply.send(result);
            }
            Command::CancelDeployment { id, force, reply } => {
                let Some(app_id) = self.deployments.iter().find(|(_, d)| d.id == id).map(|(a, _)| a.clone()) else {
                    let _ = reply.send(None);
                    return;
                };
                let d = self.deployments.remove(&app_id).expect("found above");
                info!(deployment = %d.id, app_id = %app_id, force, "deployment cancelled");
                let how = if force { "cancelled" } else { "cancelled and rolled back" };
                self.announce_failure(&d, how);
                let result = if force {
                    Ok(None)
                } else {
                    self.change(app_id, AppChange::Restore(d.previous.map(Box::new)), true).await.map(Some)
                };
                let _ = reply.send(Some(result));
            }
            Command::Kill { task_ids, scale, wipe, reply } => {
                let mut found = Vec::new();
                let mut scaled: BTreeMap<AppId, u32> = BTreeMap::new();
                let mut seen = HashSet::new();
                for tid in task_ids {
                    if !seen.insert(tid.clone()) {
                        continue;
                    }
                    let Some(inst) = self.instances.get(&tid).cloned() else { continue };
                    // Only an instance that still counts scales its app down: a repeated kill does not.
                    let counts = !self.killing.contains_key(&tid) && !inst.state.is_terminal();
                    if scale
                        && counts
                        && let Ok(app_id) = AppId::parse(&inst.app_id)
                    {
                        *scaled.entry(app_id).or_default() += 1;
                    }
                    self.kill(&inst).await;
                    if wipe {
                        // Keel's apps are not resident: there is no reservation to destroy, only the record.
                        // Its end will not be reported as a failure: an update of a task no longer known is
                        // ignored.
                        info!(task_id = %inst.id, app_id = %inst.app_id, "expunging a wiped instance");
                        self.drop_instance(&inst.id);
                        self.killing.remove(&inst.id);
                        if let Err(e) = self.store.delete_instance(&inst.id).await {
                            warn!(task_id = %inst.id, error = %e, "cannot delete the wiped instance's record");
                        }
                    }
                    found.push(inst);
                }
                // The instances are being killed, so they no longer count: the scale-down's deployment
                // kills no others.
                let mut outcome = None;
                for (app_id, n) in scaled {
                    let Some(instances) = self.apps.get(&app_id).map(|a| a.instances.saturating_sub(n)) else {
                        continue;
                    };
                    match self.change(app_id.clone(), AppChange::Scale(instances), true).await {
                        Ok(o) => {
                            outcome.get_or_insert(o);
                        }
                        Err(e) => warn!(app_id = %app_id, error = %e, "cannot scale the app down"),
                    }
                }
                let _ = reply.send((found, outcome));
            }
            Command::DeploymentOf(id, reply) => {
                let _ = reply.send(self.deployments.get(&id).map(|d| d.id.clone()));
            }
            Command::ResetDelay(id) => {
                self.backoff.remove(&id);
                self.converge().await;
            }
            Command::Snapshot(reply) => {
                let now = now();
                let mut queue = BTreeMap::new();
                for (id, app) in &self.apps {
                    let missing = (app.instances as usize).saturating_sub(self.active(id).len());
                    if missing == 0 {
                        continue;
                    }
                    let delay_left =
                        self.backoff.get(id).map_or(0.0, |b| b.until.saturating_duration_since(now).as_secs_f64());
                    let waiting = self.waiting.get(id.as_str()).cloned().unwrap_or_default();
                    queue.insert(id.to_string(), QueueEntry { count: missing, delay_left, waiting });
                }
                let _ = reply.send(Snapshot {
                    instances: self.instances.values().cloned().collect(),
                    failures: self.failures.clone(),
                    queue,
                    deployments: self.deployments.values().cloned().collect(),
                });
            }
        }
    }

    /// Validates, stores and applies one change of an app's definition (see [`crate::edit`]).
    async fn change(&mut self, id: AppId, change: AppChange, force: bool) -> Result<ChangeOutcome, ChangeError> {
        let current = self.apps.get(&id).cloned();
        let bypasses_lock = matches!(change, AppChange::Create(_) | AppChange::Restore(_));
        if !force
            && !bypasses_lock
            && current.is_some()
            && let Some(d) = self.deployments.get(&id)
        {
            return Err(ChangeError::Locked(d.id.clone()));
        }
        let taken: std::collections::BTreeSet<u32> = self
            .apps
            .iter()
            .filter(|(other, _)| **other != id)
            .flat_map(|(_, a)| a.service_ports())
            .filter(|p| *p != 0)
            .collect();
        let api_event = change.api_event();
        // Marathon's rollback: a PUT of `{"version": V}` restores version V of the app.
        let change = match change {
            AppChange::Put { raw, .. } if current.is_some() && edit::rollback_to(&raw).is_some() => {
                let wanted = edit::rollback_to(&raw).unwrap_or_default().to_owned();
                match self.store.version(&id, &wanted).await? {
                    Some(old) => AppChange::Restore(Some(Box::new(old))),
                    None => return Err(ChangeError::NoVersion(id, wanted)),
                }
            }
            other => other,
        };
        let version = crate::store::new_version();
        let new = edit::apply(&id, current.as_ref(), change, &taken, &version)?;
        if let Some(app) = &new {
            let missing = edit::missing_secrets(app, self.store.secrets());
            if !missing.is_empty() {
                return Err(ChangeError::Invalid(missing));
            }
        }
        let written = match &new {
            Some(app) => self.store.put(&id, app).await,
            None => self.store.delete(&id).await.map(|_| ()),
        };
        if let Err(e) = written {
            // The write may have landed all the same: reload and look, never guess.
            let landed = match self.store.get(&id).await {
                Ok(stored) => stored.and_then(|a| a.version) == new.as_ref().and_then(|a| a.version.clone()),
                Err(_) => false,
            };
            if !landed {
                warn!(app_id = %id, error = %e, "app change not stored");
                return Err(ChangeError::Store(e));
            }
            info!(app_id = %id, error = %e, "app change stored despite an error answer");
        }
        let deployment = self.app_changed(id.clone(), new.clone()).await;
        match (&new, api_event) {
            (Some(app), Some(event)) => {
                self.events.publish(event, serde_json::json!({ "uri": format!("/v2/apps{id}"), "appDefinition": app }));
            }
            (None, _) => self.events.publish("app_terminated_event", serde_json::json!({ "appId": id })),
            _ => {}
        }
        info!(app_id = %id, version = ?new.as_ref().and_then(|a| a.version.as_deref()), existed = current.is_some(), deleted = new.is_none(), "app definition changed");
        Ok(ChangeOutcome { existed: current.is_some(), app: new, deployment })
    }

    /// Starts the deployment of a stored change of app `id` (`None`: deleted) and returns its id.
    async fn app_changed(&mut self, id: AppId, app: Option<AppDefinition>) -> String {
        let changed = id.clone();
        let previous = self.apps.get(&id).cloned();
        let action = match (&previous, &app) {
            (None, _) => "StartApplication",
            (Some(_), None) => "StopApplication",
            (Some(old), Some(new)) if old.config_fingerprint() != new.config_fingerprint() => "RestartApplication",
            _ => "ScaleApplication",
        };
        let version =
            app.as_ref().and_then(|a| a.version.clone()).unwrap_or_else(|| timestamp(keel_core::store::now_millis()));
        let rollback_on_failure = app
            .as_ref()
            .or(previous.as_ref())
            .is_some_and(|a| a.labels.get(ROLLBACK_LABEL).is_some_and(|v| v == "true"));
        match app {
            Some(app) => {
                if action != "ScaleApplication" {
                    self.backoff.remove(&id);
                }
                self.set_app(id.clone(), app);
            }
            None => {
                self.remove_app(&id);
                self.backoff.remove(&id);
            }
        }
        let now = now();
        let deployment = Deployment {
            id: uuid::Uuid::new_v4().to_string(),
            app_id: id.clone(),
            version,
            action,
            target: self.apps.get(&id).cloned(),
            previous,
            rollback_on_failure,
            started: now,
            progressed: now,
            progress: (0, usize::MAX),
        };
        let deployment_id = deployment.id.clone();
        self.begin(deployment);
        // Only this app changed: the once-a-second pass looks at the others.
        self.converge_app(&changed).await;
        deployment_id
    }

    fn set_app(&mut self, id: AppId, app: AppDefinition) {
        self.fingerprints.insert(id.clone(), app.config_fingerprint());
        self.constraints.insert(id.clone(), placement::Constraint::parse_all(&app.constraints));
        self.apps.insert(id, app);
    }

    fn remove_app(&mut self, id: &AppId) {
        self.fingerprints.remove(id);
        self.constraints.remove(id);
        self.apps.remove(id);
    }

    fn fingerprint(&self, id: &AppId) -> &str {
        self.fingerprints.get(id).map_or("", String::as_str)
    }

    fn add_instance(&mut self, inst: Instance) {
        self.by_app.entry(inst.app_id.clone()).or_default().insert(inst.id.clone());
        self.instances.insert(inst.id.clone(), inst);
    }

    fn drop_instance(&mut self, id: &str) -> Option<Instance> {
        let inst = self.instances.remove(id)?;
        if let Some(ids) = self.by_app.get_mut(&inst.app_id) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_app.remove(&inst.app_id);
            }
        }
        Some(inst)
    }

    /// Every instance of an app, terminal or not.
    fn of_app<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.by_app.get(id).into_iter().flatten().filter_map(|t| self.instances.get(t))
    }

    async fn kill(&mut self, inst: &Instance) {
        let Ok(task_id) = TaskId::parse(&inst.id) else { return };
        let sent = self.killing.entry(inst.id.clone()).or_insert(KillSent { at: now(), times: 0 });
        sent.at = now();
        sent.times += 1;
        if sent.times == 1 {
            info!(task_id = %inst.id, app_id = %inst.app_id, "killing task");
        } else {
            warn!(task_id = %inst.id, app_id = %inst.app_id, attempt = sent.times, "kill not answered; sending it again");
        }
        self.call(Call::Kill { task_id, agent_id: AgentId::parse(&inst.slave_id).ok() }).await;
    }

    /// Instances that count towards an app's target: not being killed, not terminal, and not unreachable
    /// past the app's `inactiveAfterSeconds`.
    fn active(&self, id: &AppId) -> Vec<&Instance> {
        let app = self.apps.get(id);
        self.of_app(id.as_str())
            .filter(|i| !self.killing.contains_key(&i.id) && !i.state.is_terminal())
            .filter(|i| {
                let inactive_after = Duration::from_secs(app.map_or(crate::app::DEFAULT_INACTIVE_AFTER_SECONDS, |a| {
                    a.unreachable_strategy.inactive_after_seconds
                }));
                i.unreachable_since.is_none_or(|since| since.elapsed() < inactive_after)
            })
            .collect()
    }

    /// How many instances each app still needs, for apps not in backoff.
    fn demand(&self) -> Vec<(AppId, usize)> {
        let now = now();
        self.apps
            .keys()
            .filter(|id| self.backoff.get(*id).is_none_or(|b| now >= b.until))
            .filter_map(|id| {
                let plan = self.plan(id);
                (plan.launch > 0).then(|| (id.clone(), plan.launch))
            })
            .collect()
    }

    /// Whether an instance counts as serving: running, and healthy if the app has health checks.
    fn ready(&self, inst: &Instance) -> bool {
        let checked = AppId::parse(&inst.app_id)
            .ok()
            .and_then(|id| self.apps.get(&id))
            .is_some_and(|a| !a.health_checks.is_empty());
        inst.state == TaskState::Running && (!checked || inst.healthy == Some(true))
    }

    /// What converging an app needs now: how many instances of its current configuration to launch, and
    /// which to kill. During an upgrade, old instances go only as new ones become ready, keeping at least
    /// `minimumHealthCapacity × instances` serving and at most `(1 + maximumOverCapacity) × instances`
    /// running (Marathon's rolling upgrade).
    fn plan(&self, id: &AppId) -> Plan {
        let Some(app) = self.apps.get(id) else { return Plan::default() };
        let fingerprint = self.fingerprint(id);
        let (new, old): (Vec<&Instance>, Vec<&Instance>) =
            self.active(id).into_iter().partition(|i| i.fingerprint == fingerprint);
        let n = app.instances as usize;
        let mut kill: Vec<Instance> = Vec::new();
        if new.len() > n {
            let mut surplus: Vec<&Instance> = new.clone();
            surplus.sort_by_key(|i| i.staged_millis);
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
            old.iter().copied().partition(|i| self.ready(i));
        let rollout = Rollout {
            instances: n,
            max_total: n + (n as f64 * strategy.maximum_over_capacity).floor() as usize,
            min_ready: (n as f64 * strategy.minimum_health_capacity).ceil() as usize,
            new: new.len(),
            ready_new: new.iter().filter(|i| self.ready(i)).count(),
            old: old.len(),
            ready_old: ready_old.len(),
            dying: self
                .of_app(id.as_str())
                .filter(|i| self.killing.contains_key(&i.id) && !i.state.is_terminal())
                .count(),
        };
        let (launch, can_kill) = rollout.step();
        kill.extend(unready_old.into_iter().cloned());
        kill.extend(ready_old.into_iter().take(can_kill).cloned());
        Plan { launch, kill }
    }

    /// Kills what should not run: surplus instances, instances of an older configuration or of deleted
    /// apps, and unreachable ones past `expungeAfterSeconds`; sends unanswered kills again. Revives offers
    /// when something is missing.
    async fn converge(&mut self) {
        // Kills of instances forgotten without an end (expunged, wiped) need no answer.
        let instances = &self.instances;
        self.killing.retain(|id, _| instances.contains_key(id));
        for id in kills_to_resend(&self.killing, &self.instances, now()) {
            if let Some(inst) = self.instances.get(&id).cloned() {
                self.kill(&inst).await;
            }
        }
        let mut to_kill: Vec<Instance> = Vec::new();
        let mut expunge = Vec::new();
        for inst in self.instances.values() {
            if self.killing.contains_key(&inst.id) || inst.state.is_terminal() {
                continue;
            }
            let app = AppId::parse(&inst.app_id).ok().and_then(|id| self.apps.get(&id));
            match app {
                None => to_kill.push(inst.clone()),
                Some(app) => {
                    if let Some(since) = inst.unreachable_since
                        && since.elapsed() >= Duration::from_secs(app.unreachable_strategy.expunge_after_seconds)
                    {
                        expunge.push(inst.id.clone());
                    }
                }
            }
        }
        for id in expunge {
            info!(task_id = %id, "expunging unreachable task");
            if let Some(inst) = self.drop_instance(&id) {
                self.kill(&inst).await;
                let _ = self.store.delete_instance(&id).await;
            }
        }
        let ids: Vec<AppId> = self.apps.keys().cloned().collect();
        for id in ids {
            to_kill.extend(self.plan(&id).kill);
        }
        for inst in to_kill {
            self.kill(&inst).await;
        }
        let wanted = !self.demand().is_empty();
        if wanted && (self.suppressed || self.declined) {
            self.suppressed = false;
            self.declined = false;
            self.call(Call::Revive).await;
        } else if !wanted && !self.suppressed && !self.apps.is_empty() {
            self.suppressed = true;
            self.call(Call::Suppress).await;
        }
        self.check_deployments(None).await;
        // What is waited on no more needs no explanation.
        let waiting: Vec<String> = self.waiting.keys().cloned().collect();
        for id in waiting {
            let done = AppId::parse(&id).ok().and_then(|a| self.apps.get(&a).map(|app| (a, app.instances as usize)));
            if done.is_none_or(|(a, n)| self.active(&a).len() >= n) {
                self.waiting.remove(&id);
            }
        }
    }

    /// [`Marathon::converge`] for one app that just changed, without a pass over every app.
    async fn converge_app(&mut self, id: &AppId) {
        let mut to_kill = self.plan(id).kill;
        if !self.apps.contains_key(id) {
            to_kill.extend(
                self.of_app(id.as_str())
                    .filter(|i| !i.state.is_terminal() && !self.killing.contains_key(&i.id))
                    .cloned(),
            );
        }
        for inst in to_kill {
            self.kill(&inst).await;
        }
        let wanted = self.backoff.get(id).is_none_or(|b| now() >= b.until) && self.plan(id).launch > 0;
        if wanted && (self.suppressed || self.declined) {
            self.suppressed = false;
            self.declined = false;
            self.call(Call::Revive).await;
        }
        self.check_deployments(Some(id)).await;
    }

    /// Finishes deployments whose app has converged, and fails (and, if asked, rolls back) those that made
    /// no progress within the deployment timeout.
    async fn check_deployments(&mut self, only: Option<&AppId>) {
        let ids: Vec<AppId> = match only {
            Some(id) if self.deployments.contains_key(id) => vec![id.clone()],
            Some(_) => return,
            None => self.deployments.keys().cloned().collect(),
        };
        for id in ids {
            let (done, progress) = match self.apps.get(&id) {
                None => {
                    let left = self.of_app(id.as_str()).count();
                    (left == 0, (0, left))
                }
                Some(app) => {
                    // Done only when every live instance is of the new configuration, ready, and not being
                    // killed: tasks still shutting down keep the deployment open.
                    let fingerprint = self.fingerprint(&id);
                    let inactive_after = Duration::from_secs(app.unreachable_strategy.inactive_after_seconds);
                    let live: Vec<&Instance> = self
                        .of_app(id.as_str())
                        .filter(|i| {
                            !i.state.is_terminal() && i.unreachable_since.is_none_or(|s| s.elapsed() < inactive_after)
                        })
                        .collect();
                    let ready_new = live
                        .iter()
                        .filter(|i| i.fingerprint == fingerprint && !self.killing.contains_key(&i.id) && self.ready(i))
                        .count();
                    let others = live.len() - ready_new;
                    // Progress is more new instances ready or fewer old ones left. New instances that start
                    // and crash again are churn, not progress: they must not hold off the deadline.
                    let stale = live
                        .iter()
                        .filter(|i| i.fingerprint != fingerprint || self.killing.contains_key(&i.id))
                        .count();
                    (ready_new == app.instances as usize && others == 0, (ready_new, stale))
                }
            };
            let Some(d) = self.deployments.get_mut(&id) else { continue };
            if done {
                let d = self.deployments.remove(&id).expect("present");
                info!(deployment = %d.id, app_id = %id, seconds = d.started.elapsed().as_secs_f64(), "deployment finished");
                self.events.publish(
                    "deployment_step_success",
                    serde_json::json!({ "plan": d.plan_json(), "currentStep": d.step_json() }),
                );
                self.events.publish("deployment_success", serde_json::json!({ "id": d.id, "plan": d.plan_json() }));
                continue;
            }
            if progress != d.progress {
                d.progress = progress;
                d.progressed = now();
                continue;
            }
            if d.progressed.elapsed() < self.deployment_timeout {
                continue;
            }
            let d = self.deployments.remove(&id).expect("present");
            let waiting = self
                .waiting
                .get(id.as_str())
                .map(|w| w.declined.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let failure = self
                .failures
                .get(id.as_str())
                .map(|f| format!("; last task failure: {} ({})", f.state, f.message))
                .unwrap_or_default();
            let reason = format!(
                "no progress for {}s: {} of {} instances ready{}{failure}",
                self.deployment_timeout.as_secs(),
                progress.0,
                self.apps.get(&id).map_or(0, |a| a.instances),
                if waiting.is_empty() { String::new() } else { format!("; offers turned down for {waiting}") },
            );
            warn!(deployment = %d.id, app_id = %id, %reason, "deployment failed");
            self.announce_failure(&d, &reason);
            if d.rollback_on_failure {
                self.roll_back(&id, d.previous).await;
            }
        }
    }

    /// Tracks a new deployment and announces it. A deployment it replaces (a forced change) ends as
    /// failed, as Marathon reports a cancelled plan.
    fn begin(&mut self, d: Deployment) {
        info!(app_id = %d.app_id, deployment = %d.id, action = d.action, "deployment started");
        self.events
            .publish("deployment_info", serde_json::json!({ "plan": d.plan_json(), "currentStep": d.step_json() }));
        let new_id = d.id.clone();
        if let Some(old) = self.deployments.insert(d.app_id.clone(), d) {
            info!(deployment = %old.id, replaced_by = %new_id, "deployment replaced by a forced change");
            self.announce_failure(&old, &format!("replaced by deployment {new_id}"));
        }
    }

    /// Publishes the end of a deployment that did not complete.
    fn announce_failure(&self, d: &Deployment, reason: &str) {
        self.events.publish(
            "deployment_step_failure",
            serde_json::json!({ "plan": d.plan_json(), "currentStep": d.step_json() }),
        );
        self.events.publish(
            "deployment_failed",
            serde_json::json!({ "id": d.id, "appId": d.app_id, "reason": reason, "plan": d.plan_json() }),
        );
    }

    /// Restores an app's previous definition (or removes an app that was new) as a new deployment.
    async fn roll_back(&mut self, id: &AppId, previous: Option<AppDefinition>) {
        match previous {
            Some(mut app) => {
                app.version = Some(crate::store::new_version());
                if let Err(e) = self.store.put(id, &app).await {
                    warn!(app_id = %id, error = %e, "cannot store the rolled-back app");
                    return;
                }
                info!(app_id = %id, "rolling back to the previous definition");
                let now = now();
                let failed = self.apps.get(id).cloned();
                self.set_app(id.clone(), app.clone());
                self.begin(Deployment {
                    id: uuid::Uuid::new_v4().to_string(),
                    app_id: id.clone(),
                    version: app.version.clone().unwrap_or_default(),
                    action: "RestartApplication",
                    target: Some(app.clone()),
                    // Cancelling the rollback restores what failed; never "the app was new".
                    previous: failed,
                    rollback_on_failure: false,
                    started: now,
                    progressed: now,
                    progress: (0, usize::MAX),
                });
            }
            None => {
                info!(app_id = %id, "rolling back a new app: removing it");
                let _ = self.store.delete(id).await;
                self.remove_app(id);
            }
        }
    }

    async fn offers(&mut self, offers: Vec<Offer>) {
        let mut demand = self.demand();
        let mut decline = Vec::new();
        for offer in offers {
            let mut left = offer.resources.clone();
            let mut tasks = Vec::new();
            let mut records = Vec::new();
            for (app_id, need) in demand.iter_mut() {
                let app = self.apps[app_id].clone();
                self.waiting.entry(app_id.to_string()).or_default().processed += 1;
                while *need > 0 {
                    match self.place(&app, app_id, &offer, &left) {
                        Ok((spec, ports)) => {
                            left.subtract(&spec.resources);
                            let now = keel_core::store::now_millis();
                            records.push(InstanceRecord {
                                task_id: spec.id.to_string(),
                                app_id: app_id.to_string(),
                                version: app.version.clone().unwrap_or_default(),
                                agent_id: offer.agent_id.to_string(),
                                host: offer.hostname.clone(),
                                ports: ports.clone(),
                                staged_at: now,
                                attributes: offer.attributes.clone(),
                            });
                            self.add_instance(Instance {
                                id: spec.id.to_string(),
                                app_id: app_id.to_string(),
                                host: offer.hostname.clone(),
                                ports,
                                service_ports: app.service_ports(),
                                staged_at: timestamp(now),
                                started_at: None,
                                started_millis: None,
                                version: app.version.clone().unwrap_or_default(),
                                state: TaskState::Staging,
                                slave_id: offer.agent_id.to_string(),
                                health_check_results: Vec::new(),
                                healthy: None,
                                first_success: None,
                                seen_from_launch: true,
                                staged_millis: now,
                                fingerprint: self.fingerprint(app_id).to_owned(),
                                unreachable_since: None,
                                attributes: offer.attributes.clone(),
                            });
                            tasks.push(spec);
                            *need -= 1;
                        }
                        Err(reason) => {
                            let waiting = self.waiting.entry(app_id.to_string()).or_default();
                            *waiting.declined.entry(reason.clone()).or_default() += 1;
                            let last = std::sync::Arc::make_mut(&mut waiting.last_unused);
                            if last.len() == LAST_UNUSED_OFFERS {
                                last.pop_front();
                            }
                            let timestamp = timestamp(keel_core::store::now_millis());
                            last.push_back(UnusedOffer { offer: offer.clone(), reason, timestamp });
                            break;
                        }
                    }
                }
            }
            demand.retain(|(_, n)| *n > 0);
            if tasks.is_empty() {
                decline.push(offer.id);
                continue;
            }
            // Written down before it is launched, so that a restart never forgets a task it started.
            if let Err(e) = self.store.put_instances(&records).await {
                warn!(error = %e, "cannot record tasks; not launching them");
                for r in &records {
                    self.drop_instance(&r.task_id);
                }
                decline.push(offer.id);
                continue;
            }
            info!(agent = %offer.hostname, tasks = tasks.len(), "launching");
            self.call(Call::Accept {
                offer_ids: vec![offer.id],
                tasks,
                filters: Filters { refuse: Some(Duration::ZERO) },
            })
            .await;
        }
        if !decline.is_empty() {
            self.declined = true;
            self.call(Call::Decline { offer_ids: decline, filters: Filters { refuse: Some(IDLE_REFUSE) } }).await;
        }
    }

    /// Builds one task of `app` to fit in what is `left` of `offer`, or says why it does not fit.
    fn place(
        &self,
        app: &AppDefinition,
        app_id: &AppId,
        offer: &Offer,
        left: &Resources,
    ) -> Result<(TaskSpec, Vec<u16>), String> {
        // Validation accepted only amounts the core can count; a stored one it cannot is never taken for 0.
        let scalar = |v: f64| Scalar::from_f64(v).map_err(|_| "InvalidResources".to_owned());
        let (cpus, mem, disk) = (scalar(app.cpus)?, scalar(app.mem)?, scalar(app.disk)?);
        if left.cpus < cpus {
            return Err("InsufficientCpus".into());
        }
        if left.mem < mem {
            return Err("InsufficientMemory".into());
        }
        if left.disk < disk {
            return Err("InsufficientDisk".into());
        }
        let docker = app.container.as_ref().and_then(|c| c.docker.as_ref());
        if docker.is_some() && !offer.docker {
            // Not one of Marathon's reasons: Keel agents may run without a Docker engine.
            return Err("NoDockerOnAgent".into());
        }
        if app.accepted_resource_roles.as_ref().is_some_and(|roles| !roles.iter().any(|r| r == "*")) {
            // Every offer Keel makes is of unreserved resources.
            return Err("UnfulfilledRole".into());
        }
        let ports: Vec<u16> = if app.require_ports {
            // The app names its host ports: only those will do.
            let wanted: Vec<u16> =
                app.port_definitions.iter().flatten().filter_map(|p| u16::try_from(p.port).ok()).collect();
            if wanted.iter().any(|p| *p == 0 || !left.ports.contains_port(*p)) {
                return Err("InsufficientPorts".into());
            }
            wanted
        } else {
            left.ports.iter().take(app.port_count()).collect()
        };
        if ports.len() < app.port_count() {
            return Err("InsufficientPorts".into());
        }
        if !app.constraints.is_empty() {
            let existing: Vec<Place<'_>> = self
                .active(app_id)
                .into_iter()
                .map(|i| Place { hostname: &i.host, attributes: &i.attributes })
                .collect();
            let here = Place { hostname: &offer.hostname, attributes: &offer.attributes };
            let constraints = self.constraints.get(app_id).map_or(&[][..], Vec::as_slice);
            placement::check(constraints, &here, &existing).map_err(|_| "UnfulfilledConstraint".to_owned())?;
        }

        // Reasons are counted per kind for the queue: never put the (random) task id in one.
        let task_id = TaskId::parse(format!("{}.{}", app_id.task_prefix(), uuid::Uuid::new_v4()))
            .map_err(|_| "InvalidTaskId".to_owned())?;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &app.env {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                v => {
                    let key = v["secret"].as_str().unwrap_or_default();
                    let source = app.secrets.get(key).map(|s| s.source.as_str()).unwrap_or_default();
                    self.store.secrets().get(source).ok_or_else(|| "SecretNotFound".to_owned())?
                }
            };
            env.insert(k.clone(), value);
        }
        for (i, p) in ports.iter().enumerate() {
            env.insert(format!("PORT{i}"), p.to_string());
        }
        if let Some(p) = ports.first() {
            env.insert("PORT".into(), p.to_string());
        }
        env.insert("PORTS".into(), ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","));
        env.insert("HOST".into(), offer.hostname.clone());
        env.insert("MARATHON_APP_ID".into(), app_id.to_string());
        env.insert("MARATHON_APP_VERSION".into(), app.version.clone().unwrap_or_default());
        env.insert("MESOS_TASK_ID".into(), task_id.to_string());
        let (value, shell, arguments) = match (&app.cmd, &app.args) {
            (Some(cmd), _) => (cmd.clone(), true, vec![]),
            (None, Some(args)) if !args.is_empty() => (args[0].clone(), false, args[1..].to_vec()),
            _ => (String::new(), true, vec![]),
        };
        let container = docker.map(|d| DockerSpec {
            image: d.image.clone(),
            force_pull: d.force_pull_image,
            network: if d.network.as_deref() == Some("BRIDGE") { Network::Bridge } else { Network::Host },
            port_mappings: d
                .port_mappings
                .iter()
                .flatten()
                .zip(&ports)
                .map(|(m, host)| task::PortMapping {
                    host_port: *host,
                    container_port: m.container_port as u16,
                    protocol: m.protocol.clone(),
                })
                .collect(),
            volumes: vec![],
        });
        let health_check = app.health_checks.first().and_then(|h| {
            let kind = match h.protocol.trim_start_matches("MESOS_") {
                "HTTP" | "HTTPS" => HealthCheckKind::Http {
                    path: h.path.clone().unwrap_or_else(|| "/".into()),
                    port_index: h.port_index.unwrap_or(0) as usize,
                },
                "TCP" => HealthCheckKind::Tcp { port_index: h.port_index.unwrap_or(0) as usize },
                "COMMAND" => HealthCheckKind::Command {
                    command: h
                        .command
                        .as_ref()
                        .and_then(|c| c.get("value").and_then(|v| v.as_str()).or(c.as_str()))
                        .unwrap_or("true")
                        .to_owned(),
                },
                _ => return None,
            };
            Some(HealthCheck {
                kind,
                grace_period: Duration::from_secs(h.grace_period_seconds),
                interval: Duration::from_secs(h.interval_seconds),
                timeout: Duration::from_secs(h.timeout_seconds),
                max_consecutive_failures: h.max_consecutive_failures,
            })
        });
        let resources = Resources {
            cpus,
            mem,
            disk,
            ports: PortSet::from_ranges(ports.iter().map(|p| (*p, *p))).unwrap_or_default(),
        };
        let spec = TaskSpec {
            id: task_id,
            name: app_id.to_string(),
            resources,
            command: CommandSpec { value, shell, arguments, env },
            labels: app.labels.clone(),
            kill_grace: app.task_kill_grace_period_seconds.map(Duration::from_secs),
            container,
            health_check,
            user: app.user.clone().filter(|u| !u.is_empty()),
        };
        spec.validate().map_err(|e| e.to_string())?;
        Ok((spec, ports))
    }

    async fn update(&mut self, status: TaskStatus) {
        if let (Some(uuid), Some(agent_id)) = (&status.uuid, &status.agent_id) {
            self.call(Call::Acknowledge {
                agent_id: agent_id.clone(),
                task_id: status.task_id.clone(),
                uuid: uuid.clone(),
            })
            .await;
        }
        self.reconciliation.answered(&status.task_id);
        let tid = status.task_id.to_string();
        let Some(inst) = self.instances.get_mut(&tid) else {
            if !status.state.is_terminal() && status.state != TaskState::Unknown {
                // A task this framework does not know of (its record was lost): stop it.
                warn!(task_id = %tid, "unknown task reported; killing it");
                self.call(Call::Kill { task_id: status.task_id.clone(), agent_id: status.agent_id.clone() }).await;
            }
            return;
        };
        if status.state == TaskState::Unknown {
            // The master has no record of it: it is gone.
            let inst = inst.clone();
            self.ended(inst, TaskState::Lost, status.message, None).await;
            return;
        }
        inst.state = status.state;
        let health_changed = status.healthy.is_some() && status.healthy != inst.healthy;
        inst.set_health(&status);
        let inst_now = inst.clone();
        self.events.publish(
            "status_update_event",
            serde_json::json!({
                "slaveId": inst_now.slave_id, "taskId": inst_now.id, "taskStatus": status.state, "message": status.message,
                "appId": inst_now.app_id, "host": inst_now.host, "ports": inst_now.ports, "ipAddresses": [],
                "version": inst_now.version,
            }),
        );
        if health_changed {
            self.events.publish(
                "health_status_changed_event",
                serde_json::json!({
                    "appId": inst_now.app_id, "taskId": inst_now.id, "instanceId": inst_now.id,
                    "version": inst_now.version, "alive": status.healthy == Some(true),
                }),
            );
        }
        let Some(inst) = self.instances.get_mut(&tid) else { return };
        inst.unreachable_since = match status.state {
            TaskState::Unreachable => inst.unreachable_since.or(Some(now())),
            _ => None,
        };
        if status.state == TaskState::Running && inst.started_at.is_none() {
            let millis = (status.timestamp * 1000.0) as i64;
            inst.started_at = Some(timestamp(millis));
            inst.started_millis = Some(millis);
        }
        if status.state.is_terminal() {
            let inst = inst.clone();
            self.ended(inst, status.state, status.message, Some(status.timestamp)).await;
        } else if let Ok(app_id) = AppId::parse(&inst_now.app_id) {
            // A task becoming ready may be what its app's deployment waits for.
            self.check_deployments(Some(&app_id)).await;
        }
    }

    /// A task of ours ended; `at` is when (seconds since the Unix epoch), as its status says.
    async fn ended(&mut self, inst: Instance, state: TaskState, message: String, at: Option<f64>) {
        self.drop_instance(&inst.id);
        let _ = self.store.delete_instance(&inst.id).await;
        let expected = self.killing.remove(&inst.id).is_some();
        let Ok(app_id) = AppId::parse(&inst.app_id) else { return };
        if !expected && let Some(app) = self.apps.get(&app_id) {
            let now = now();
            let b = self.backoff.entry(app_id.clone()).or_insert(Backoff { failures: 0, until: now });
            // How long ago it failed, by its status's clock (never negative, whatever the agent's clock says).
            let ago = at
                .filter(|t| *t > 0.0)
                .and_then(|t| Duration::try_from_secs_f64(keel_core::task::now_seconds() - t).ok())
                .unwrap_or_default();
            let delay = b.failed(now, ago, app.backoff_seconds, app.backoff_factor, app.max_launch_delay_seconds);
            info!(task_id = %inst.id, app_id = %app_id, state = %state, delay_seconds = delay, "task ended; relaunching after a delay");
            self.failures.insert(
                app_id.to_string(),
                TaskFailure {
                    app_id: app_id.to_string(),
                    host: inst.host.clone(),
                    message,
                    state,
                    task_id: inst.id.clone(),
                    timestamp: timestamp(keel_core::store::now_millis()),
                    version: inst.version.clone(),
                },
            );
        }
        self.converge().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_actor_wakes_when_the_earliest_running_delay_ends() {
        use super::{Backoff, next_delay_end};
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let mut backoff = std::collections::HashMap::new();
        assert_eq!(next_delay_end(&backoff, t0), None);
        backoff.insert(crate::app::AppId::parse("/a").unwrap(), Backoff { failures: 1, until: t0 + s(3) });
        backoff.insert(crate::app::AppId::parse("/b").unwrap(), Backoff { failures: 2, until: t0 + s(1) });
        backoff.insert(crate::app::AppId::parse("/c").unwrap(), Backoff { failures: 1, until: t0 });
        assert_eq!(next_delay_end(&backoff, t0), Some(t0 + s(1)));
        // Once a delay has run out it no longer wakes the actor; the next one does.
        assert_eq!(next_delay_end(&backoff, t0 + s(1)), Some(t0 + s(3)));
        assert_eq!(next_delay_end(&backoff, t0 + s(3)), None);
    }

    #[test]
    fn a_backoff_grows_with_failures_in_a_row_and_is_forgotten_once_overdue() {
        use super::{Backoff, FORGET_BACKOFF_AFTER};
        use std::time::{Duration, Instant};
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
        use super::Backoff;
        use std::time::{Duration, Instant};
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

    use super::*;

    fn instance(id: &str, seen_from_launch: bool) -> Instance {
        Instance {
            id: id.into(),
            app_id: "/web".into(),
            host: "h1".into(),
            ports: vec![],
            service_ports: vec![],
            staged_at: timestamp(0),
            started_at: None,
            started_millis: None,
            version: "v1".into(),
            state: TaskState::Running,
            slave_id: "a1".into(),
            health_check_results: Vec::new(),
            healthy: None,
            first_success: None,
            seen_from_launch,
            staged_millis: 0,
            fingerprint: String::new(),
            unreachable_since: None,
            attributes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn instances_come_back_with_their_attributes_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("k.db").display());
        let store = AppStore::new(keel_core::store::Store::connect(&url).await.unwrap());
        let record = InstanceRecord {
            task_id: "web.1".into(),
            app_id: "/web".into(),
            version: "v1".into(),
            agent_id: "a1".into(),
            host: "h1".into(),
            ports: vec![],
            staged_at: 0,
            attributes: vec![("rack".into(), "r2".into())],
        };
        store.put_instances(&[record]).await.unwrap();
        // No master answers here: the scheduler only loads its state.
        let token = CancellationToken::new();
        let handle = start("http://127.0.0.1:1", store, token.clone()).await.unwrap();
        let snapshot = handle.snapshot().await.unwrap();
        token.cancel();
        assert_eq!(snapshot.instances.len(), 1);
        assert_eq!(snapshot.instances[0].attributes, vec![("rack".to_owned(), "r2".to_owned())]);
    }

    #[test]
    fn unanswered_kills_are_sent_again_less_and_less_often() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut instances: HashMap<String, Instance> =
            ["a", "b", "gone"].iter().map(|id| (id.to_string(), instance(id, true))).collect();
        instances.get_mut("gone").unwrap().state = TaskState::Killed;
        let mut killing: HashMap<String, KillSent> = HashMap::new();
        killing.insert("a".into(), KillSent { at: t0, times: 1 });
        killing.insert("b".into(), KillSent { at: t0 + s(3), times: 1 });
        killing.insert("gone".into(), KillSent { at: t0, times: 1 });
        killing.insert("unknown".into(), KillSent { at: t0, times: 1 });
        assert!(kills_to_resend(&killing, &instances, t0 + s(4)).is_empty(), "not before 5 s");
        assert_eq!(kills_to_resend(&killing, &instances, t0 + s(5)), vec!["a"], "only known, live tasks");
        assert_eq!(kills_to_resend(&killing, &instances, t0 + s(8)), vec!["a", "b"], "the longest waiting first");

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
            instances.insert(id.clone(), instance(&id, true));
            killing.insert(id, KillSent { at: t0, times: 1 });
        }
        assert_eq!(kills_to_resend(&killing, &instances, t0 + s(5)).len(), KILL_RESENDS_PER_PASS);
    }

    fn health(healthy: Option<bool>, reason: &str, at: f64) -> TaskStatus {
        let mut s = TaskStatus::from_master(TaskId::parse("web.1").unwrap(), TaskState::Running, None, reason, "");
        s.healthy = healthy;
        s.timestamp = at;
        s
    }

    #[test]
    fn health_check_results_say_only_what_the_agent_reported() {
        let mut inst = instance("web.1", true);
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
        let mut inst = instance("web.2", false);
        inst.set_health(&health(Some(true), task::reason::RECONCILIATION, 9.0));
        inst.set_health(&health(Some(true), task::reason::HEALTH_CHECK, 10.0));
        let json = serde_json::to_value(&inst).unwrap();
        assert_eq!(
            json["healthCheckResults"],
            serde_json::json!([{"instanceId": "web.2", "alive": true, "consecutiveFailures": 0}])
        );
    }
}
