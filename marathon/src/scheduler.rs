//! The services scheduler: a framework that keeps each app's instances running.
//!
//! One actor owns the apps ([`crate::apps`]: desired state, from the store) and the instances
//! ([`crate::instances`]: observed state, from status updates and reconciliation). Its decisions are made by
//! those parts, by [`crate::deployment`] and by [`crate::placement`], as pure steps; the actor feeds them
//! its inputs and the time, and carries out their effects. It converges the two whatever woke it: offers are used to launch missing
//! instances, surplus instances are killed (youngest or oldest first, per `killSelection`), instances of an
//! older configuration are replaced, and failed ones are relaunched after an exponential backoff.
//! Launched tasks are written to the store before they are accepted, so a restarted framework knows every
//! task it may have started; it then reconciles with the master.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_core::api::{Call, Event, Filters, FrameworkInfo, Offer};
use keel_core::ids::{AgentId, FrameworkId, TaskId};
use keel_core::scheduler::{self, DriverEvent, Link, SchedulerHandle};
use keel_core::task::{TaskState, TaskStatus};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::app::{AppDefinition, AppId};
use crate::apps::Apps;
pub use crate::deployment::{Deployment, ROLLBACK_LABEL};
use crate::edit::{self, AppChange, ChangeError};
use crate::instances::{Instances, Plan, Sweep};
use crate::placement::{self, Place};
use crate::reconciliation::{Ask, Reconciliation};
use crate::store::{AppStore, InstanceRecord, ServiceStore, timestamp};

/// How long instances wait for offers after a REVIVE before they revive again.
const REVIVE_AGAIN: Duration = Duration::from_secs(5);

/// How long an offer nobody needs is refused before it comes back.
const IDLE_REFUSE: Duration = Duration::from_secs(5);

pub use crate::instances::{HealthCheckResult, Instance};

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

/// The actor's clock: tokio's, so that a test can pause and advance it (as the master's).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until `at`, or for ever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

struct Marathon {
    store: Arc<dyn ServiceStore>,
    driver: SchedulerHandle,
    task_ids: TaskIds,
    apps: Apps,
    instances: Instances,
    failures: HashMap<String, TaskFailure>,
    waiting: HashMap<String, Waiting>,
    suppressed: bool,
    /// Offers were declined (with a filter) since the last REVIVE: new demand must revive to see them.
    declined: bool,
    /// When offers were last revived, and whether any came since.
    revived_at: Option<Instant>,
    offered: bool,
    events: MarathonHandle,
    deployments: BTreeMap<AppId, Deployment>,
    deployment_timeout: Duration,
    /// Which tasks to ask the master about, and when.
    reconciliation: Reconciliation,
}

/// How long a deployment may go without progress before it is marked failed.
pub const DEFAULT_DEPLOYMENT_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the unique part of a new task's id (`app.UNIQUE`) comes from.
#[derive(Clone, Default)]
pub enum TaskIds {
    /// A random UUID, as Marathon's.
    #[default]
    Random,
    /// `0`, `1`, `2`, …: a simulation, whose runs must repeat exactly. The counter outlives the framework
    /// (a restarted one goes on counting), as the uniqueness of random ids does.
    Sequence(Arc<AtomicU64>),
}

impl TaskIds {
    fn next(&self) -> String {
        match self {
            TaskIds::Random => uuid::Uuid::new_v4().to_string(),
            // Zero-padded, so that ids sort in launch order.
            TaskIds::Sequence(n) => format!("{:06}", n.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

/// How the services framework runs, besides its master and its store.
#[derive(Clone)]
pub struct Options {
    /// How long a deployment may go without progress before it fails.
    pub deployment_timeout: Duration,
    /// The URL of the REST API (the framework's web UI URL, which the master's console uses to reach it;
    /// empty when it has none).
    pub webui_url: String,
    pub task_ids: TaskIds,
}

impl Default for Options {
    fn default() -> Options {
        Options { deployment_timeout: DEFAULT_DEPLOYMENT_TIMEOUT, webui_url: String::new(), task_ids: TaskIds::Random }
    }
}

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
    let options = Options { deployment_timeout, webui_url: webui_url.to_owned(), task_ids: TaskIds::Random };
    start_on(Arc::new(master.into()), Arc::new(store), options, shutdown).await
}

/// Starts the services framework over any link to the master, with any store. It runs until `shutdown`.
pub async fn start_on(
    master: Arc<dyn Link>,
    store: Arc<dyn ServiceStore>,
    options: Options,
    shutdown: CancellationToken,
) -> Result<MarathonHandle, crate::store::AppStoreError> {
    let framework_id = store.framework_id().await?.and_then(|id| FrameworkId::parse(id).ok());
    let mut info = FrameworkInfo::new("marathon");
    info.webui_url = options.webui_url.clone();
    info.failover_timeout = Duration::from_secs(7 * 24 * 3600);
    if let Some(latest) = store.latest_version().await? {
        crate::store::issue_versions_after(&latest);
    }
    let mut apps = Vec::new();
    for app in store.list().await? {
        match app.app_id() {
            Ok(id) => apps.push((id, app)),
            Err(e) => {
                error!(app_id = %app.id.chars().take(200).collect::<String>(), error = %e, "stored app ignored: its id is not valid")
            }
        }
    }
    let apps = Apps::new(apps);
    let mut instances = Instances::default();
    // Each instance keeps the configuration it was launched from: one of an older version is still to be
    // replaced, if the framework stopped during a deployment.
    let mut fingerprints: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in store.instances().await? {
        let key = (r.app_id.clone(), r.version.clone());
        if !fingerprints.contains_key(&key) {
            let fingerprint = match (apps.of(&r.app_id), AppId::parse(&r.app_id)) {
                (Some(app), _) if app.version.as_deref() == Some(r.version.as_str()) => app.config_fingerprint(),
                (_, Ok(id)) => {
                    store.version(&id, &r.version).await?.map(|a| a.config_fingerprint()).unwrap_or_default()
                }
                _ => String::new(),
            };
            fingerprints.insert(key.clone(), fingerprint);
        }
        let app = apps.of(&r.app_id);
        instances.add(Instance::from_record(r, app, fingerprints[&key].clone()));
    }
    // Subscribed only once its state is loaded: a framework that cannot start holds no subscription.
    let (driver, events) = scheduler::start_on(master, info, framework_id, shutdown.clone());
    info!(apps = apps.len(), instances = instances.len(), "services framework starting");
    let (tx, rx) = mpsc::channel(1024);
    let handle = MarathonHandle { tx, events: tokio::sync::broadcast::channel(EVENT_BUFFER).0 };
    let m = Marathon {
        reconciliation: Reconciliation::new(now()),
        events: handle.clone(),
        deployments: BTreeMap::new(),
        deployment_timeout: options.deployment_timeout,
        task_ids: options.task_ids,
        store,
        driver,
        apps,
        instances,
        failures: HashMap::new(),
        waiting: HashMap::new(),
        suppressed: false,
        declined: false,
        revived_at: None,
        offered: false,
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
            let delay_ends = self.apps.next_delay_end(now());
            // Biased, so that a run depends only on what happens, not on a random draw (a simulation
            // replays its runs exactly). The timers come first, so that a steady stream of events cannot
            // starve them; after each event one waiting command is taken, and the other way round, so that
            // neither stream starves the other.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.reconcile_pass().await;
                    self.converge().await;
                }
                _ = sleep_until_some(delay_ends) => self.converge().await,
                e = events.recv() => match e {
                    Some(e) => {
                        self.event(e).await;
                        if let Ok(c) = commands.try_recv() {
                            self.command(c).await;
                        }
                    }
                    None => return,
                },
                c = commands.recv() => match c {
                    Some(c) => {
                        self.command(c).await;
                        if let Ok(e) = events.try_recv() {
                            self.event(e).await;
                        }
                    }
                    None => return,
                },
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
                self.revive().await;
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
                    let counts = !self.instances.is_killing(&tid) && !inst.state.is_terminal();
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
                        self.instances.remove(&inst.id);
                        self.instances.kill_answered(&inst.id);
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
                self.apps.reset_delay(&id);
                self.converge().await;
            }
            Command::Snapshot(reply) => {
                let now = now();
                let mut queue = BTreeMap::new();
                for (id, app) in self.apps.iter() {
                    let missing =
                        (app.instances as usize).saturating_sub(self.instances.active(id, Some(app), now).len());
                    if missing == 0 {
                        continue;
                    }
                    let delay_left = self.apps.delay_left(id, now).as_secs_f64();
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
        let taken = self.apps.service_ports_taken(&id);
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
            // A new configuration forgets the app's launch delay; a new scale keeps it.
            Some(app) => self.apps.set(id.clone(), app),
            None => {
                self.apps.remove(&id);
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

    async fn kill(&mut self, inst: &Instance) {
        let Ok(task_id) = TaskId::parse(&inst.id) else { return };
        let attempt = self.instances.kill_sent(&inst.id, now());
        if attempt == 1 {
            info!(task_id = %inst.id, app_id = %inst.app_id, "killing task");
        } else {
            warn!(task_id = %inst.id, app_id = %inst.app_id, attempt, "kill not answered; sending it again");
        }
        self.call(Call::Kill { task_id, agent_id: AgentId::parse(&inst.slave_id).ok() }).await;
    }

    /// How many instances each app still needs, for apps not in backoff.
    fn demand(&self) -> Vec<(AppId, usize)> {
        let now = now();
        self.apps
            .iter()
            .filter(|(id, _)| self.apps.may_launch(id, now))
            .filter_map(|(id, app)| {
                let plan = self.instances.plan(id, app, self.apps.fingerprint(id), now);
                (plan.launch > 0).then(|| (id.clone(), plan.launch))
            })
            .collect()
    }

    /// [`Instances::plan`] for app `id`, now.
    fn plan(&self, id: &AppId) -> Plan {
        match self.apps.get(id) {
            Some(app) => self.instances.plan(id, app, self.apps.fingerprint(id), now()),
            None => Plan::default(),
        }
    }

    /// Kills what should not run: surplus instances, instances of an older configuration or of deleted
    /// apps, and unreachable ones past `expungeAfterSeconds`; sends unanswered kills again. Revives offers
    /// when something is missing.
    async fn converge(&mut self) {
        let now = now();
        for id in self.instances.kills_to_resend(now) {
            if let Some(inst) = self.instances.get(&id).cloned() {
                self.kill(&inst).await;
            }
        }
        let apps = &self.apps;
        let Sweep { kill: mut to_kill, expunge } = self.instances.sweep(|app_id| apps.of(app_id), now);
        for id in expunge {
            info!(task_id = %id, "expunging unreachable task");
            if let Some(inst) = self.instances.remove(&id) {
                self.kill(&inst).await;
                let _ = self.store.delete_instance(&id).await;
            }
        }
        let ids = self.apps.ids();
        for id in ids {
            to_kill.extend(self.plan(&id).kill);
        }
        for inst in to_kill {
            self.kill(&inst).await;
        }
        let wanted = !self.demand().is_empty();
        if wanted && self.must_revive(now) {
            self.revive().await;
        } else if !wanted && !self.suppressed && !self.apps.is_empty() {
            self.suppressed = true;
            self.call(Call::Suppress).await;
        }
        self.check_deployments(None).await;
        // What is waited on no more needs no explanation.
        let waiting: Vec<String> = self.waiting.keys().cloned().collect();
        for id in waiting {
            let done = AppId::parse(&id).ok().and_then(|a| self.apps.get(&a).map(|app| (a, app)));
            if done.is_none_or(|(a, app)| self.instances.active(&a, Some(app), now).len() >= app.instances as usize) {
                self.waiting.remove(&id);
            }
        }
    }

    /// Whether instances still to launch need a REVIVE at `now`: offers are suppressed or filtered, or none
    /// came since the last REVIVE for a while (it, or the offers it brought, may have been lost with a
    /// connection; Marathon repeats its revives too).
    fn must_revive(&self, now: Instant) -> bool {
        self.suppressed
            || self.declined
            || (!self.offered && self.revived_at.is_some_and(|at| now >= at + REVIVE_AGAIN))
    }

    async fn revive(&mut self) {
        self.suppressed = false;
        self.declined = false;
        self.offered = false;
        self.revived_at = Some(now());
        self.call(Call::Revive).await;
    }

    /// [`Marathon::converge`] for one app that just changed, without a pass over every app.
    async fn converge_app(&mut self, id: &AppId) {
        let mut to_kill = self.plan(id).kill;
        if !self.apps.contains(id) {
            to_kill.extend(
                self.instances
                    .of_app(id.as_str())
                    .filter(|i| !i.state.is_terminal() && !self.instances.is_killing(&i.id))
                    .cloned(),
            );
        }
        for inst in to_kill {
            self.kill(&inst).await;
        }
        let wanted = self.apps.may_launch(id, now()) && self.plan(id).launch > 0;
        if wanted && self.must_revive(now()) {
            self.revive().await;
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
            let now = now();
            let (done, progress) = self.instances.progress(&id, self.apps.get(&id), self.apps.fingerprint(&id), now);
            let Some(d) = self.deployments.get_mut(&id) else { continue };
            if done {
                let d = self.deployments.remove(&id).expect("present");
                info!(deployment = %d.id, app_id = %id, seconds = now.saturating_duration_since(d.started).as_secs_f64(), "deployment finished");
                self.events.publish(
                    "deployment_step_success",
                    serde_json::json!({ "plan": d.plan_json(), "currentStep": d.step_json() }),
                );
                self.events.publish("deployment_success", serde_json::json!({ "id": d.id, "plan": d.plan_json() }));
                continue;
            }
            if progress != d.progress {
                d.progress = progress;
                d.progressed = now;
                continue;
            }
            if now.saturating_duration_since(d.progressed) < self.deployment_timeout {
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
                self.apps.set(id.clone(), app.clone());
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
                self.apps.remove(id);
            }
        }
    }

    async fn offers(&mut self, offers: Vec<Offer>) {
        self.offered = true;
        let mut demand = self.demand();
        let mut decline = Vec::new();
        for offer in offers {
            let mut left = offer.resources.clone();
            let mut tasks = Vec::new();
            let mut records = Vec::new();
            for (app_id, need) in demand.iter_mut() {
                let Some(app) = self.apps.get(app_id).cloned() else { continue };
                self.waiting.entry(app_id.to_string()).or_default().processed += 1;
                while *need > 0 {
                    let instances = &self.instances;
                    let existing = || {
                        instances
                            .active(app_id, Some(&app), now())
                            .into_iter()
                            .map(|i| Place { hostname: &i.host, attributes: &i.attributes })
                            .collect()
                    };
                    let constraints = self.apps.constraints(app_id);
                    let unique = self.task_ids.next();
                    match placement::fit(
                        &app,
                        app_id,
                        &unique,
                        &offer,
                        &left,
                        constraints,
                        existing,
                        self.store.secrets(),
                    ) {
                        Ok((spec, ports)) => {
                            left.subtract(&spec.resources);
                            let now = keel_core::store::now_millis();
                            let record = InstanceRecord {
                                task_id: spec.id.to_string(),
                                app_id: app_id.to_string(),
                                version: app.version.clone().unwrap_or_default(),
                                agent_id: offer.agent_id.to_string(),
                                host: offer.hostname.clone(),
                                ports,
                                staged_at: now,
                                attributes: offer.attributes.clone(),
                            };
                            self.instances.add(Instance::launched(&record, &app, self.apps.fingerprint(app_id)));
                            records.push(record);
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
                    self.instances.remove(&r.task_id);
                }
                decline.push(offer.id);
                continue;
            }
            info!(agent = %offer.hostname, tasks = tasks.len(), "launching");
            self.reconciliation.launched(tasks.iter().map(|t| (t.id.clone(), Some(offer.agent_id.clone()))), now());
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
        self.instances.remove(&inst.id);
        let _ = self.store.delete_instance(&inst.id).await;
        let expected = self.instances.kill_answered(&inst.id);
        let Ok(app_id) = AppId::parse(&inst.app_id) else { return };
        // How long ago it failed, by its status's clock (never negative, whatever the agent's clock says).
        let ago = at
            .filter(|t| *t > 0.0)
            .and_then(|t| Duration::try_from_secs_f64(keel_core::task::now_seconds() - t).ok())
            .unwrap_or_default();
        if !expected && let Some(delay) = self.apps.failed(&app_id, now(), ago) {
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

    use super::*;

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
}
