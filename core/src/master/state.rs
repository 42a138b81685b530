//! The master actor: the one owner of agents, frameworks, tasks and offers.
//!
//! Every handler is a plain method on [`Master`] that mutates state and sends messages on connection
//! channels with `try_send` (it never waits on a slow peer). Only registry changes (an agent registering, a
//! framework subscribing or being torn down) wait on the store; they are rare.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

mod offers;
mod registry;
mod tasks;
mod views;

pub use views::{AgentView, FrameworkView, StateSnapshot, StatusView, Summary, TaskDetail, TaskView};

use self::offers::OfferBook;
use self::registry::{Owner, Record};
use self::tasks::{Known, Update};
use super::timers::{self, AgentClock, FrameworkClock, Marks};
use super::{Command, Conn, FileRequest, MasterConfig, MasterError, MasterStore};
use crate::allocator::Allocator;
use crate::api::{
    AgentInfo, AgentMessage, AgentTask, Call, Event, FileChunk, Filters, FrameworkInfo, MasterMessage, Offer,
    SANDBOX_FILES,
};
use crate::ids::{AgentId, FrameworkId, OfferId, TaskId};
use crate::resources::Resources;
use crate::store::{AgentRecord, FrameworkRecord, now_millis};
use crate::task::{TaskSpec, TaskState, TaskStatus, now_seconds, reason};

/// The master's clock: tokio's, so that a test (or the cluster simulation) can pause and advance it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// `now + d`, saturating instead of overflowing on absurd durations.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(crate::convert::MAX_DURATION)).unwrap_or(now + crate::convert::MAX_DURATION)
}

/// How many finished tasks each framework keeps for reconciliation and the operator API.
const COMPLETED_TASKS_KEPT: usize = 1000;
/// How many commands the actor handles before it lets an allocation pass run.
const BATCH: usize = 1024;
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(200);
/// The most a file read returns.
pub const MAX_FILE_READ: u64 = 1 << 20;

type FileReply = tokio::sync::oneshot::Sender<Result<FileChunk, MasterError>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum AgentStatus {
    /// Known from the store after a master restart, not yet re-registered.
    Recovering,
    Active,
    /// Its stream closed; its tasks are presumed alive until the agent timeout.
    Disconnected,
    Unreachable,
}

struct Agent {
    info: AgentInfo,
    id: AgentId,
    registered_at: i64,
    /// The principal that owns this agent id.
    principal: Option<String>,
    conn: Option<Conn<MasterMessage>>,
    last_seen: Instant,
    status: AgentStatus,
    /// Its live tasks.
    tasks: BTreeSet<(FrameworkId, TaskId)>,
    /// Its finished tasks whose final update is not acknowledged yet.
    finished: BTreeSet<(FrameworkId, TaskId)>,
}

struct Task {
    agent_id: AgentId,
    name: String,
    resources: Resources,
    state: TaskState,
    /// The latest status, once there is one.
    status: Option<TaskStatus>,
    kill_requested: bool,
    /// Its states so far, oldest first (at most [`HISTORY_KEPT`]).
    history: Vec<HistoryEntry>,
}

/// One state a task was in, for the operator API.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryEntry {
    pub state: TaskState,
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub message: String,
    pub healthy: Option<bool>,
}

/// How many states each task remembers: the first, and the latest ones.
const HISTORY_KEPT: usize = 16;

/// Adds `entry` to `history`, dropping the second-oldest when full (the first state, STAGING, stays).
fn remember(history: &mut Vec<HistoryEntry>, entry: HistoryEntry) {
    if history.len() >= HISTORY_KEPT {
        history.remove(1);
    }
    history.push(entry);
}

struct Framework {
    info: FrameworkInfo,
    registered_at: i64,
    /// The principal that owns this framework id.
    principal: Option<String>,
    conn: Option<Conn<Event>>,
    /// When a disconnected framework's tasks are torn down.
    failover_deadline: Option<Instant>,
    /// Torn down: its tasks are being killed and it may not subscribe again.
    removed: bool,
    tasks: BTreeMap<TaskId, Task>,
    completed: VecDeque<(TaskId, TaskStatus, Vec<HistoryEntry>)>,
}

#[derive(Default)]
struct Counters {
    tasks_launched: u64,
    tasks_invalid: u64,
    status_updates: u64,
    updates_deferred: u64,
    offers_sent: u64,
    offers_declined: u64,
    offers_rescinded: u64,
    agents_unreachable: u64,
    frameworks_torn_down: u64,
}

pub(crate) struct Master {
    config: MasterConfig,
    store: Arc<dyn MasterStore>,
    started: Instant,
    started_at: f64,
    agents: BTreeMap<AgentId, Agent>,
    frameworks: BTreeMap<FrameworkId, Framework>,
    /// Frameworks torn down in an earlier life, which may not subscribe again.
    removed: BTreeSet<FrameworkId>,
    offers: OfferBook,
    allocator: Allocator,
    allocation_due: bool,
    last_full_allocation: Instant,
    last_heartbeat: Instant,
    counters: Counters,
    /// File reads waiting for their agent's answer.
    file_reads: BTreeMap<u64, (Instant, FileReply, AgentId)>,
    /// Teardowns the store has not recorded yet; retried until it does.
    unsaved_removals: BTreeSet<FrameworkId>,
    /// Reconciliation questions about tasks that an agent still recovering may hold, in the order asked.
    /// Each is answered once, when the agent re-registers or is found unreachable (Mesos's rule), so a
    /// framework that asked while the master was recovering is never left without an answer.
    deferred: VecDeque<(FrameworkId, TaskId, Option<AgentId>)>,
    next_file_read: u64,
    /// What happens, for `/keel/v1/events`; sending never waits (slow readers lag and are told so).
    events: tokio::sync::broadcast::Sender<ClusterEvent>,
}

/// A change in the cluster, as `/keel/v1/events` streams it.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterEvent {
    TaskUpdated {
        task_id: TaskId,
        framework_id: FrameworkId,
        agent_id: Option<AgentId>,
        state: TaskState,
        message: String,
        healthy: Option<bool>,
        at: f64,
    },
    AgentRegistered {
        agent_id: AgentId,
        hostname: String,
        at: f64,
    },
    AgentDisconnected {
        agent_id: AgentId,
        hostname: String,
        at: f64,
    },
    AgentUnreachable {
        agent_id: AgentId,
        hostname: String,
        at: f64,
    },
    FrameworkSubscribed {
        framework_id: FrameworkId,
        name: String,
        at: f64,
    },
    FrameworkDisconnected {
        framework_id: FrameworkId,
        name: String,
        at: f64,
    },
    FrameworkRemoved {
        framework_id: FrameworkId,
        name: String,
        at: f64,
    },
}

impl ClusterEvent {
    /// The event's `type`, as the SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterEvent::TaskUpdated { .. } => "task_updated",
            ClusterEvent::AgentRegistered { .. } => "agent_registered",
            ClusterEvent::AgentDisconnected { .. } => "agent_disconnected",
            ClusterEvent::AgentUnreachable { .. } => "agent_unreachable",
            ClusterEvent::FrameworkSubscribed { .. } => "framework_subscribed",
            ClusterEvent::FrameworkDisconnected { .. } => "framework_disconnected",
            ClusterEvent::FrameworkRemoved { .. } => "framework_removed",
        }
    }
}

/// Whether `caller` may use an id owned by `owner`. An id nobody owns yet (new, or registered before
/// auth or while it was off) goes to an admin, or to a caller that is what the registry says the id is
/// (`same`: the same framework name, or the same agent hostname). With auth off (`caller` is `None`)
/// nobody is checked.
fn may_claim(owner: Option<&str>, caller: Option<&super::Caller>, same: bool) -> bool {
    match (owner, caller) {
        (Some(owner), Some(caller)) => owner == caller.name,
        (None, Some(caller)) => caller.admin || same,
        (_, None) => true,
    }
}

/// The most reconciliation questions kept waiting for recovering agents, over all frameworks.
const MAX_DEFERRED: usize = 100_000;

impl Master {
    /// Rebuilds the master from the registry after a (re)start: agents are expected to re-register and
    /// frameworks to re-subscribe, each within its grace period.
    pub(crate) fn recover(
        config: MasterConfig,
        store: Arc<dyn MasterStore>,
        agents: Vec<AgentRecord>,
        frameworks: Vec<FrameworkRecord>,
        events: tokio::sync::broadcast::Sender<ClusterEvent>,
    ) -> Master {
        let now = now();
        let mut allocator = Allocator::new();
        for (role, weight) in &config.role_weights {
            allocator.set_weight(role, *weight);
        }
        let epoch = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let mut m = Master {
            started: now,
            started_at: now_seconds(),
            agents: BTreeMap::new(),
            frameworks: BTreeMap::new(),
            removed: BTreeSet::new(),
            offers: OfferBook::new(epoch.clone()),
            allocator,
            allocation_due: false,
            last_full_allocation: now,
            last_heartbeat: now,
            counters: Counters::default(),
            file_reads: BTreeMap::new(),
            unsaved_removals: BTreeSet::new(),
            deferred: VecDeque::new(),
            next_file_read: 0,
            events,
            store,
            config,
        };
        for a in agents {
            let info = AgentInfo {
                id: Some(a.id.clone()),
                hostname: a.hostname,
                resources: a.resources,
                attributes: a.attributes,
                docker: false,
            };
            m.agents.insert(
                a.id.clone(),
                Agent {
                    info,
                    id: a.id,
                    registered_at: a.registered_at,
                    principal: a.principal,
                    conn: None,
                    last_seen: now,
                    status: AgentStatus::Recovering,
                    tasks: BTreeSet::new(),
                    finished: BTreeSet::new(),
                },
            );
        }
        for f in frameworks {
            if f.removed_at.is_some() {
                m.removed.insert(f.id);
                continue;
            }
            let timeout = Duration::try_from_secs_f64(f.failover_timeout_seconds).unwrap_or_default();
            let info = FrameworkInfo {
                name: f.name,
                role: f.role,
                failover_timeout: timeout,
                webui_url: f.webui_url,
                user: String::new(),
                hostname: String::new(),
            };
            m.allocator.add_framework(&f.id, &info.role, false);
            m.frameworks.insert(
                f.id,
                Framework {
                    info,
                    registered_at: f.registered_at,
                    principal: f.principal,
                    conn: None,
                    failover_deadline: Some(after(now, timeout.max(m.config.recovery_grace))),
                    removed: false,
                    tasks: BTreeMap::new(),
                    completed: VecDeque::new(),
                },
            );
        }
        let term = m.store.term();
        info!(agents = m.agents.len(), frameworks = m.frameworks.len(), %epoch, term, "master recovered registry");
        m
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Biased, so that the actor's order of work never depends on a random draw. The tick comes
            // before the commands: it is ready at most every TICK, so it cannot starve them, while a steady
            // stream of commands (heartbeats alone, on a large cluster) would otherwise starve the timers.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.periodic(now()).await,
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.handle(cmd).await;
                    let mut n = 1;
                    while n < BATCH {
                        match rx.try_recv() {
                            Ok(cmd) => self.handle(cmd).await,
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    if self.allocation_due {
                        self.allocate(now());
                    }
                }
            }
        }
        info!("master stopped");
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::RegisterAgent { info, tasks, principal, conn, reply } => {
                let result = self.register_agent(info, tasks, principal, conn).await;
                let _ = reply.send(result);
            }
            Command::FromAgent { agent_id, conn_id, msg } => self.agent_message(agent_id, conn_id, msg),
            Command::AgentDisconnected { agent_id, conn_id } => self.agent_disconnected(&agent_id, conn_id),
            Command::Subscribe { framework_id, info, principal, conn, reply } => {
                let result = self.subscribe(framework_id, info, principal, conn).await;
                let _ = reply.send(result);
            }
            Command::Call { framework_id, conn_id, call } => self.call(framework_id, conn_id, call).await,
            Command::FrameworkDisconnected { framework_id, conn_id } => {
                self.framework_disconnected(&framework_id, conn_id)
            }
            Command::CallError { framework_id, conn_id, message } => {
                if self.frameworks.get(&framework_id).and_then(|f| f.conn.as_ref()).is_some_and(|c| c.id == conn_id) {
                    warn!(framework_id = %framework_id, %message, "malformed call");
                    self.send_event(&framework_id, Event::Error(message));
                }
            }
            Command::RefuseTasks { framework_id, conn_id, tasks } => {
                if self.frameworks.get(&framework_id).and_then(|f| f.conn.as_ref()).is_some_and(|c| c.id == conn_id) {
                    for (task_id, message) in tasks {
                        self.counters.tasks_invalid += 1;
                        warn!(framework_id = %framework_id, task_id = %task_id, %message, "task refused");
                        let status =
                            TaskStatus::from_master(task_id, TaskState::Error, None, reason::TASK_INVALID, message);
                        self.send_update(&framework_id, status);
                    }
                }
            }
            Command::State { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Command::Metrics { reply } => {
                let _ = reply.send(self.metrics());
            }
            Command::Summary { reply } => {
                let _ = reply.send(self.summary());
            }
            Command::Frameworks { reply } => {
                let _ = reply.send(self.framework_views());
            }
            Command::Task { framework_id, task_id, reply } => {
                let _ = reply.send(self.task_detail(framework_id.as_ref(), &task_id));
            }
            Command::ReadFile { request, reply } => {
                if let Err(e) = self.read_file(request, reply) {
                    // The reply was handed back because the read could not start.
                    let (e, reply) = *e;
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    // ---- sending ----

    /// Sends an event to a framework. A framework whose buffer is full or whose stream is gone is
    /// disconnected; it will re-subscribe and reconcile.
    fn send_event(&mut self, framework_id: &FrameworkId, event: Event) {
        let Some(fw) = self.frameworks.get_mut(framework_id) else { return };
        let Some(conn) = &fw.conn else { return };
        match conn.tx.try_send(event) {
            Ok(()) => {}
            // The agent re-sends an update until it is acknowledged, so under overload one can be dropped
            // rather than cutting the framework off.
            Err(TrySendError::Full(Event::Update(s))) if s.uuid.is_some() => {
                self.counters.updates_deferred += 1;
                debug!(framework_id = %framework_id, task_id = %s.task_id, "framework is behind; update left to the agent's retry");
            }
            Err(TrySendError::Full(_)) => {
                warn!(framework_id = %framework_id, "framework is not reading its events; disconnecting it");
                let id = conn.id;
                self.framework_disconnected(framework_id, id);
            }
            Err(TrySendError::Closed(_)) => {
                let id = conn.id;
                self.framework_disconnected(framework_id, id);
            }
        }
    }

    fn send_update(&mut self, framework_id: &FrameworkId, status: TaskStatus) {
        let entry = HistoryEntry {
            state: status.state,
            at: status.timestamp,
            message: status.message.clone(),
            healthy: status.healthy,
        };
        if let Some(task) = self.frameworks.get_mut(framework_id).and_then(|f| f.tasks.get_mut(&status.task_id)) {
            let repeat = task.history.last().is_some_and(|h| h.state == entry.state && h.healthy == entry.healthy);
            if !repeat {
                remember(&mut task.history, entry);
            }
        }
        self.publish(ClusterEvent::TaskUpdated {
            task_id: status.task_id.clone(),
            framework_id: framework_id.clone(),
            agent_id: status.agent_id.clone(),
            state: status.state,
            message: status.message.clone(),
            healthy: status.healthy,
            at: status.timestamp,
        });
        self.send_event(framework_id, Event::Update(status));
    }

    /// Tells `/keel/v1/events` readers; nobody listening is fine.
    fn publish(&self, event: ClusterEvent) {
        let _ = self.events.send(event);
    }

    /// Sends a message to an agent; false when it could not be queued.
    fn send_agent(&mut self, agent_id: &AgentId, msg: MasterMessage) -> bool {
        let Some(agent) = self.agents.get_mut(agent_id) else { return false };
        let Some(conn) = &agent.conn else { return false };
        match conn.tx.try_send(msg) {
            Ok(()) => true,
            Err(e) => {
                if matches!(e, TrySendError::Full(_)) {
                    warn!(agent_id = %agent_id, "agent is not reading its messages; disconnecting it");
                }
                let id = conn.id;
                self.agent_disconnected(agent_id, id);
                false
            }
        }
    }

    fn ack_for_framework(&mut self, agent_id: &AgentId, framework_id: &FrameworkId, status: &TaskStatus) {
        if let Some(uuid) = &status.uuid {
            let msg = MasterMessage::Acknowledge {
                framework_id: framework_id.clone(),
                task_id: status.task_id.clone(),
                uuid: uuid.clone(),
            };
            self.send_agent(agent_id, msg);
        }
    }

    // ---- agents ----

    async fn register_agent(
        &mut self,
        info: AgentInfo,
        reported: Vec<AgentTask>,
        caller: Option<super::Caller>,
        conn: Conn<MasterMessage>,
    ) -> Result<AgentId, MasterError> {
        let now = now();
        let agent_id = info.id.clone().unwrap_or_else(AgentId::generate);
        let known = self.agents.get(&agent_id);
        let owner = known.and_then(|a| a.principal.clone());
        let same = known.is_none_or(|a| a.info.hostname == info.hostname);
        if !may_claim(owner.as_deref(), caller.as_ref(), same) {
            let principal = caller.as_ref().map_or("", |c| c.name.as_str());
            warn!(agent_id = %agent_id, owner = owner.as_deref().unwrap_or(""), principal, hostname = %info.hostname,
                "refused an agent registering with an id that belongs to another principal");
            return Err(MasterError::Forbidden(format!(
                "agent id {agent_id} belongs to another principal; this credential may not register it"
            )));
        }
        let principal = owner.or(caller.map(|c| c.name));
        let registered_at = self.agents.get(&agent_id).map_or_else(now_millis, |a| a.registered_at);
        let record = AgentRecord {
            id: agent_id.clone(),
            hostname: info.hostname.clone(),
            resources: info.resources.clone(),
            attributes: info.attributes.clone(),
            registered_at,
            principal: principal.clone(),
        };
        self.store.put_agent(&record).await?;
        let info = AgentInfo { id: Some(agent_id.clone()), ..info };
        let previous = self.agents.get(&agent_id).map(|a| a.status);
        // A new connection replaces an old one; its offers were made on the old one's behalf.
        self.rescind_agent_offers(&agent_id);
        let agent = self.agents.entry(agent_id.clone()).or_insert_with(|| Agent {
            info: info.clone(),
            id: agent_id.clone(),
            registered_at,
            principal: None,
            conn: None,
            last_seen: now,
            status: AgentStatus::Active,
            tasks: BTreeSet::new(),
            finished: BTreeSet::new(),
        });
        agent.info = info;
        agent.principal = principal;
        agent.conn = Some(conn);
        agent.last_seen = now;
        agent.status = AgentStatus::Active;
        let resources = agent.info.resources.clone();
        self.allocator.add_agent(&agent_id, &resources);
        self.send_agent(
            &agent_id,
            MasterMessage::Registered { agent_id: agent_id.clone(), heartbeat_interval: self.config.agent_heartbeat },
        );
        info!(agent_id = %agent_id, hostname = %record.hostname, resources = %resources, tasks = reported.len(), previous = ?previous, "agent registered");
        self.publish(ClusterEvent::AgentRegistered {
            agent_id: agent_id.clone(),
            hostname: record.hostname.clone(),
            at: now_seconds(),
        });
        let on_their_way = self.reconcile_agent_tasks(&agent_id, reported, previous == Some(AgentStatus::Unreachable));
        // A question about a task whose final update the agent is about to send is answered by that update
        // (with its real time, exit code and reason), not with "unknown" now.
        self.deferred.retain(|(fid, tid, _)| !on_their_way.contains(&(fid.clone(), tid.clone())));
        self.answer_deferred();
        self.allocation_due = true;
        Ok(agent_id)
    }

    /// Brings the master's view of an agent's tasks in line with what the agent reports. Answers the
    /// finished tasks the master does not know, whose final updates the agent is about to send.
    fn reconcile_agent_tasks(
        &mut self,
        agent_id: &AgentId,
        reported: Vec<AgentTask>,
        was_unreachable: bool,
    ) -> BTreeSet<(FrameworkId, TaskId)> {
        let mut seen = BTreeSet::new();
        let mut on_their_way = BTreeSet::new();
        let mut kills = Vec::new();
        for t in reported {
            let key = (t.framework_id.clone(), t.spec.id.clone());
            let owner = match self.frameworks.get(&t.framework_id) {
                Some(f) => Owner::Known { torn_down: f.removed },
                None if self.removed.contains(&t.framework_id) => Owner::RemovedEarlier,
                None => Owner::Unknown,
            };
            let record = self.frameworks.get(&t.framework_id).and_then(|f| f.tasks.get(&t.spec.id)).map(|r| Record {
                agent_id: &r.agent_id,
                state: r.state,
                kill_requested: r.kill_requested,
            });
            let plan = registry::on_reported(agent_id, t.state, owner, record, was_unreachable);
            if plan.ignore {
                warn!(agent_id = %agent_id, task_id = %t.spec.id, "an agent reports a task that runs on another agent; ignoring it");
                continue;
            }
            seen.insert(key.clone());
            if plan.final_update_coming {
                on_their_way.insert(key.clone());
            }
            if plan.kill {
                kills.push(key.clone());
            }
            if plan.placeholder {
                // A framework the registry does not know (it was wiped): keep the task and give the
                // framework the recovery grace to come back.
                warn!(framework_id = %t.framework_id, task_id = %t.spec.id, "agent reports a task of an unknown framework");
                let mut info = FrameworkInfo::new("unknown");
                info.failover_timeout = self.config.recovery_grace;
                self.allocator.add_framework(&t.framework_id, &info.role, false);
                self.frameworks.insert(
                    t.framework_id.clone(),
                    Framework {
                        info,
                        registered_at: now_millis(),
                        principal: None,
                        conn: None,
                        failover_deadline: Some(now() + self.config.recovery_grace),
                        removed: false,
                        tasks: BTreeMap::new(),
                        completed: VecDeque::new(),
                    },
                );
            }
            let status = |state| {
                TaskStatus::from_master(
                    t.spec.id.clone(),
                    state,
                    Some(agent_id.clone()),
                    reason::AGENT_REREGISTERED,
                    "agent re-registered",
                )
            };
            if let Some(state) = plan.revive
                && let Some(task) = self.frameworks.get_mut(&t.framework_id).and_then(|f| f.tasks.get_mut(&t.spec.id))
            {
                task.state = state;
                let update = status(state);
                task.status = Some(update.clone());
                self.send_update(&t.framework_id, update);
            }
            if let Some(notify) = plan.adopt
                && let Some(fw) = self.frameworks.get_mut(&t.framework_id)
            {
                self.allocator.track_used(&t.framework_id, agent_id, &t.spec.resources);
                // What the agent reports is the task's latest status (with its health), which a
                // reconciliation answers with.
                let mut update = status(t.state);
                update.healthy = t.healthy;
                fw.tasks.insert(
                    t.spec.id.clone(),
                    Task {
                        agent_id: agent_id.clone(),
                        name: t.spec.name.clone(),
                        resources: t.spec.resources.clone(),
                        state: t.state,
                        status: Some(update.clone()),
                        kill_requested: fw.removed,
                        history: vec![],
                    },
                );
                // An agent that was found unreachable while the master recovered: its frameworks were told
                // its tasks were unreachable (and may have replaced them), so tell them the tasks are back,
                // as for a known task, rather than leaving it to their next reconciliation.
                if notify {
                    self.send_update(&t.framework_id, update);
                }
            }
            let live = self
                .frameworks
                .get(&t.framework_id)
                .and_then(|f| f.tasks.get(&t.spec.id))
                .is_some_and(|task| !task.state.is_terminal());
            if live && let Some(agent) = self.agents.get_mut(agent_id) {
                agent.tasks.insert(key);
            }
        }
        // Tasks the master placed on this agent that the agent does not have are lost.
        let missing: Vec<(FrameworkId, TaskId)> = self
            .agents
            .get(agent_id)
            .map(|a| a.tasks.iter().filter(|k| !seen.contains(*k)).cloned().collect())
            .unwrap_or_default();
        for (fid, tid) in missing {
            if let Some(agent) = self.agents.get_mut(agent_id) {
                agent.tasks.remove(&(fid.clone(), tid.clone()));
            }
            let status = TaskStatus::from_master(
                tid.clone(),
                TaskState::Lost,
                Some(agent_id.clone()),
                reason::NOT_FOUND_ON_AGENT,
                "the agent re-registered without this task",
            );
            self.finish_task(&fid, &tid, status.clone());
            self.complete_task(&fid, &tid);
            self.send_update(&fid, status);
        }
        // Finished tasks of this agent whose last update was never acknowledged, and that the agent no
        // longer holds: nothing will ever send that update again, so the master lets them go too (the
        // framework was told, or learns it by reconciling). Kept, they would stay in the master for ever.
        let forgotten: Vec<(FrameworkId, TaskId)> =
            self.agents.get(agent_id).map(|a| a.finished.difference(&seen).cloned().collect()).unwrap_or_default();
        for (fid, tid) in forgotten {
            debug!(agent_id = %agent_id, task_id = %tid, "the agent re-registered without a finished task; completing it");
            self.complete_task(&fid, &tid);
        }
        for (fid, tid) in kills {
            self.send_agent(agent_id, MasterMessage::KillTask { framework_id: fid, task_id: tid });
        }
        on_their_way
    }

    fn agent_message(&mut self, agent_id: AgentId, conn_id: u64, msg: AgentMessage) {
        let Some(agent) = self.agents.get_mut(&agent_id) else { return };
        if agent.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            debug!(agent_id = %agent_id, "message from a replaced agent connection ignored");
            return;
        }
        agent.last_seen = now();
        match msg {
            AgentMessage::Heartbeat => {}
            AgentMessage::StatusUpdate { framework_id, status } => self.status_update(&agent_id, framework_id, status),
            AgentMessage::FileData { request_id, chunk } => {
                // Only the agent asked may answer.
                if self.file_reads.get(&request_id).is_some_and(|(_, _, asked)| *asked == agent_id)
                    && let Some((_, reply, _)) = self.file_reads.remove(&request_id)
                {
                    let _ = reply.send(chunk.map_err(MasterError::NotFound));
                }
            }
        }
    }

    /// Asks the task's agent for part of a sandbox file; the agent's answer completes `reply`.
    fn read_file(&mut self, req: FileRequest, reply: FileReply) -> Result<(), Box<(MasterError, FileReply)>> {
        let fail = |e: MasterError, reply: FileReply| Err(Box::new((e, reply)));
        if !SANDBOX_FILES.contains(&req.file.as_str()) {
            return fail(
                MasterError::Invalid(format!("unknown file '{}': use one of {SANDBOX_FILES:?}", req.file)),
                reply,
            );
        }
        let mut found: Vec<(FrameworkId, AgentId)> = Vec::new();
        for (fid, fw) in &self.frameworks {
            if req.framework_id.as_ref().is_some_and(|f| f != fid) {
                continue;
            }
            // A framework reads its own tasks' output only.
            if req.owner.is_some() && fw.principal != req.owner {
                continue;
            }
            if let Some(t) = fw.tasks.get(&req.task_id) {
                found.push((fid.clone(), t.agent_id.clone()));
            } else if let Some((_, s, _)) = fw.completed.iter().find(|(id, _, _)| *id == req.task_id)
                && let Some(agent) = &s.agent_id
            {
                found.push((fid.clone(), agent.clone()));
            }
        }
        let (fid, agent_id) = match found.len() {
            0 => return fail(MasterError::NotFound(format!("no task {} is known to the master", req.task_id)), reply),
            1 => found.remove(0),
            _ => {
                let e = MasterError::Invalid(format!(
                    "task id {} is used by several frameworks: pass framework_id",
                    req.task_id
                ));
                return fail(e, reply);
            }
        };
        if self.agents.get(&agent_id).is_none_or(|a| a.conn.is_none()) {
            return fail(
                MasterError::Unavailable(format!("agent {agent_id} of task {} is not connected", req.task_id)),
                reply,
            );
        }
        self.next_file_read += 1;
        let request_id = self.next_file_read;
        let msg = MasterMessage::ReadFile {
            request_id,
            framework_id: fid,
            task_id: req.task_id,
            file: req.file,
            offset: req.offset,
            length: req.length.min(MAX_FILE_READ),
        };
        if !self.send_agent(&agent_id, msg) {
            return fail(MasterError::Unavailable(format!("agent {agent_id} is not reachable")), reply);
        }
        self.file_reads.insert(request_id, (now(), reply, agent_id));
        Ok(())
    }

    fn status_update(&mut self, agent_id: &AgentId, framework_id: FrameworkId, mut status: TaskStatus) {
        self.counters.status_updates += 1;
        status.agent_id = Some(agent_id.clone());
        let tid = status.task_id.clone();
        let Some(fw) = self.frameworks.get_mut(&framework_id) else {
            // Nobody will ever acknowledge it: do so on the framework's behalf.
            self.ack_for_framework(agent_id, &framework_id, &status);
            return;
        };
        let removed = fw.removed;
        let known = match fw.tasks.get(&tid) {
            Some(t) => Known::Task { agent_id: &t.agent_id, state: t.state },
            None if fw.completed.iter().any(|(id, _, _)| *id == tid) => Known::Completed,
            None => Known::Unknown,
        };
        let (next, finished, complete, track) = match tasks::on_update(known, agent_id, &status, removed) {
            Update::Apply { next, finished, complete, track } => (next, finished, complete, track),
            Update::Completed { kill } => {
                debug!(agent_id = %agent_id, task_id = %tid, state = %status.state, "dropped an update for a completed task");
                self.ack_for_framework(agent_id, &framework_id, &status);
                if kill {
                    self.send_agent(agent_id, MasterMessage::KillTask { framework_id, task_id: tid });
                }
                return;
            }
            Update::OtherAgent { owner } => {
                warn!(agent_id = %agent_id, task_id = %tid, owner = %owner,
                    "an agent sent an update for a task of another agent; ignoring it");
                return;
            }
            Update::Illegal(e) => {
                error!(agent_id = %agent_id, task_id = %tid, error = %e, "agent sent an illegal update; dropping it");
                self.ack_for_framework(agent_id, &framework_id, &status);
                return;
            }
        };
        let Some(fw) = self.frameworks.get_mut(&framework_id) else { return };
        let task = fw.tasks.entry(tid.clone()).or_insert_with(|| Task {
            agent_id: agent_id.clone(),
            name: tid.to_string(),
            resources: Resources::default(),
            state: next,
            status: None,
            kill_requested: false,
            history: vec![],
        });
        task.state = next;
        task.status = Some(status.clone());
        debug!(task_id = %tid, state = %status.state, "status update");
        // A live task learnt from this update: its agent's, like any other (see `Update::Apply`).
        if track && let Some(agent) = self.agents.get_mut(agent_id) {
            agent.tasks.insert((framework_id.clone(), tid.clone()));
        }
        if finished {
            self.finish_task(&framework_id, &tid, status.clone());
        }
        if next.is_terminal()
            && let Some(agent) = self.agents.get_mut(agent_id)
        {
            agent.finished.insert((framework_id.clone(), tid.clone()));
        }
        if removed {
            self.ack_for_framework(agent_id, &framework_id, &status);
        } else {
            self.send_update(&framework_id, status);
        }
        if complete {
            self.complete_task(&framework_id, &tid);
        }
    }

    fn agent_disconnected(&mut self, agent_id: &AgentId, conn_id: u64) {
        let Some(agent) = self.agents.get_mut(agent_id) else { return };
        if agent.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return;
        }
        agent.conn = None;
        if agent.status == AgentStatus::Active {
            agent.status = AgentStatus::Disconnected;
        }
        info!(agent_id = %agent_id, "agent disconnected; its tasks are kept until the agent timeout");
        let hostname = agent.info.hostname.clone();
        self.publish(ClusterEvent::AgentDisconnected { agent_id: agent_id.clone(), hostname, at: now_seconds() });
        self.allocator.set_agent_active(agent_id, false);
        self.rescind_agent_offers(agent_id);
    }

    fn mark_unreachable(&mut self, agent_id: &AgentId) {
        let Some(agent) = self.agents.get_mut(agent_id) else { return };
        warn!(agent_id = %agent_id, hostname = %agent.info.hostname, timeout = ?self.config.agent_timeout, "agent unreachable");
        agent.status = AgentStatus::Unreachable;
        agent.conn = None;
        let hostname = agent.info.hostname.clone();
        let tasks: Vec<(FrameworkId, TaskId)> = agent.tasks.iter().cloned().collect();
        self.counters.agents_unreachable += 1;
        self.publish(ClusterEvent::AgentUnreachable { agent_id: agent_id.clone(), hostname, at: now_seconds() });
        self.allocator.set_agent_active(agent_id, false);
        self.rescind_agent_offers(agent_id);
        let mut told = BTreeSet::new();
        for (fid, tid) in tasks {
            if told.insert(fid.clone()) {
                self.send_event(&fid, Event::Failure { agent_id: agent_id.clone() });
            }
            let Some(task) = self.frameworks.get_mut(&fid).and_then(|f| f.tasks.get_mut(&tid)) else { continue };
            if task.state.is_terminal() {
                continue;
            }
            task.state = TaskState::Unreachable;
            let status = TaskStatus::from_master(
                tid,
                TaskState::Unreachable,
                Some(agent_id.clone()),
                reason::AGENT_UNREACHABLE,
                format!("agent {agent_id} missed heartbeats for {:?}", self.config.agent_timeout),
            );
            task.status = Some(status.clone());
            self.send_update(&fid, status);
        }
        self.answer_deferred();
    }

    // ---- tasks ----

    /// A task reached a terminal state: its resources go back to the pool.
    fn finish_task(&mut self, fid: &FrameworkId, tid: &TaskId, status: TaskStatus) {
        let Some(task) = self.frameworks.get_mut(fid).and_then(|f| f.tasks.get_mut(tid)) else { return };
        task.state = status.state;
        task.status = Some(status);
        let (agent_id, resources) = (task.agent_id.clone(), task.resources.clone());
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            agent.tasks.remove(&(fid.clone(), tid.clone()));
        }
        self.allocator.recover(fid, &agent_id, &resources);
        self.allocation_due = true;
    }

    /// Forgets a terminal task once its final update needs no more delivery, keeping it in the ring of
    /// completed tasks.
    fn complete_task(&mut self, fid: &FrameworkId, tid: &TaskId) {
        let Some(fw) = self.frameworks.get_mut(fid) else { return };
        let removed_task = fw.tasks.remove(tid);
        if let Some(agent) = removed_task.as_ref().and_then(|t| self.agents.get_mut(&t.agent_id)) {
            let key = (fid.clone(), tid.clone());
            agent.tasks.remove(&key);
            agent.finished.remove(&key);
        }
        let Some(fw) = self.frameworks.get_mut(fid) else { return };
        if let Some(task) = removed_task
            && let Some(status) = task.status
        {
            if fw.completed.len() == COMPLETED_TASKS_KEPT {
                fw.completed.pop_front();
            }
            fw.completed.push_back((tid.clone(), status, task.history));
        }
        if fw.removed && fw.tasks.is_empty() {
            self.frameworks.remove(fid);
            self.removed.insert(fid.clone());
        }
    }

    // ---- frameworks ----

    async fn subscribe(
        &mut self,
        framework_id: Option<FrameworkId>,
        info: FrameworkInfo,
        caller: Option<super::Caller>,
        conn: Conn<Event>,
    ) -> Result<FrameworkId, MasterError> {
        let id = match framework_id {
            Some(id) if self.removed.contains(&id) || self.frameworks.get(&id).is_some_and(|f| f.removed) => {
                return Err(MasterError::FrameworkRemoved(id));
            }
            Some(id) => id,
            None => FrameworkId::generate(),
        };
        let known = self.frameworks.get(&id);
        let owner = known.and_then(|f| f.principal.clone());
        // A placeholder kept for tasks an agent reported is named "unknown": only an admin may claim it.
        let same = known.is_none_or(|f| f.info.name == info.name && f.info.name != "unknown");
        if !may_claim(owner.as_deref(), caller.as_ref(), same) {
            let principal = caller.as_ref().map_or("", |c| c.name.as_str());
            warn!(framework_id = %id, owner = owner.as_deref().unwrap_or(""), principal,
                "refused a subscription with a framework id that belongs to another principal");
            return Err(MasterError::Forbidden(format!(
                "framework {id} belongs to another principal; this credential may not subscribe as it"
            )));
        }
        let principal = owner.or(caller.map(|c| c.name));
        let registered_at = self.frameworks.get(&id).map_or_else(now_millis, |f| f.registered_at);
        self.store
            .put_framework(&FrameworkRecord {
                id: id.clone(),
                name: info.name.clone(),
                role: info.role.clone(),
                failover_timeout_seconds: info.failover_timeout.as_secs_f64(),
                webui_url: info.webui_url.clone(),
                registered_at,
                removed_at: None,
                principal: principal.clone(),
            })
            .await?;
        self.rescind_framework_offers(&id);
        let fw = self.frameworks.entry(id.clone()).or_insert_with(|| Framework {
            info: info.clone(),
            registered_at,
            principal: None,
            conn: None,
            failover_deadline: None,
            removed: false,
            tasks: BTreeMap::new(),
            completed: VecDeque::new(),
        });
        if let Some(old) = fw.conn.take() {
            let _ = old.tx.try_send(Event::Error("framework failed over to a new connection".into()));
            info!(framework_id = %id, "framework failed over to a new connection");
        }
        fw.info = info;
        fw.principal = principal;
        fw.failover_deadline = None;
        let _ = conn.tx.try_send(Event::Subscribed {
            framework_id: id.clone(),
            heartbeat_interval: self.config.framework_heartbeat,
        });
        fw.conn = Some(conn);
        self.allocator.add_framework(&id, &fw.info.role, true);
        info!(framework_id = %id, name = %fw.info.name, role = %fw.info.role, tasks = fw.tasks.len(), "framework subscribed");
        let name = fw.info.name.clone();
        self.publish(ClusterEvent::FrameworkSubscribed { framework_id: id.clone(), name, at: now_seconds() });
        self.allocation_due = true;
        Ok(id)
    }

    fn framework_disconnected(&mut self, id: &FrameworkId, conn_id: u64) {
        let Some(fw) = self.frameworks.get_mut(id) else { return };
        if fw.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return;
        }
        fw.conn = None;
        fw.failover_deadline = Some(after(now(), fw.info.failover_timeout));
        info!(framework_id = %id, failover_timeout = ?fw.info.failover_timeout, "framework disconnected");
        let name = fw.info.name.clone();
        self.allocator.set_framework_active(id, false);
        self.rescind_framework_offers(id);
        self.publish(ClusterEvent::FrameworkDisconnected { framework_id: id.clone(), name, at: now_seconds() });
    }

    async fn teardown(&mut self, id: &FrameworkId, why: &str) {
        let Some(fw) = self.frameworks.get_mut(id) else { return };
        info!(framework_id = %id, name = %fw.info.name, tasks = fw.tasks.len(), why, "tearing down framework");
        let name = fw.info.name.clone();
        let _ = self.events.send(ClusterEvent::FrameworkRemoved { framework_id: id.clone(), name, at: now_seconds() });
        let Some(fw) = self.frameworks.get_mut(id) else { return };
        fw.removed = true;
        fw.conn = None;
        fw.failover_deadline = None;
        self.counters.frameworks_torn_down += 1;
        if let Err(e) = self.store.remove_framework(id, now_millis()).await {
            error!(framework_id = %id, error = %e, "could not record the teardown; retrying");
            self.unsaved_removals.insert(id.clone());
        }
        self.rescind_framework_offers(id);
        self.allocator.remove_framework(id);
        let fw = &mut self.frameworks.get_mut(id).expect("checked above");
        let mut kills = Vec::new();
        let mut done = Vec::new();
        for (tid, task) in fw.tasks.iter_mut() {
            if task.state.can_kill() {
                task.kill_requested = true;
                kills.push((task.agent_id.clone(), tid.clone()));
            } else {
                done.push(tid.clone());
            }
        }
        for (agent_id, tid) in kills {
            self.send_agent(&agent_id, MasterMessage::KillTask { framework_id: id.clone(), task_id: tid });
        }
        for tid in done {
            self.complete_task(id, &tid);
        }
        if self.frameworks.get(id).is_some_and(|f| f.tasks.is_empty()) {
            self.frameworks.remove(id);
            self.removed.insert(id.clone());
        }
        self.allocation_due = true;
    }

    async fn call(&mut self, id: FrameworkId, conn_id: u64, call: Call) {
        match self.frameworks.get(&id) {
            Some(fw) if fw.conn.as_ref().map(|c| c.id) == Some(conn_id) => {}
            _ => {
                debug!(framework_id = %id, call = call.kind(), "call from a stale connection ignored");
                return;
            }
        }
        match call {
            Call::Accept { offer_ids, tasks, filters } => self.accept(&id, offer_ids, tasks, filters),
            Call::Decline { offer_ids, filters } => self.decline(&id, offer_ids, filters),
            Call::Revive => {
                self.allocator.revive(&id);
                self.allocation_due = true;
            }
            Call::Suppress => self.allocator.suppress(&id),
            Call::Kill { task_id, .. } => self.kill(&id, task_id),
            Call::Acknowledge { agent_id, task_id, uuid } => self.acknowledge(&id, agent_id, task_id, uuid),
            Call::Reconcile { tasks } => self.reconcile(&id, tasks),
            Call::Teardown => self.teardown(&id, "the framework asked").await,
        }
    }

    fn accept(&mut self, fid: &FrameworkId, offer_ids: Vec<OfferId>, tasks: Vec<TaskSpec>, filters: Filters) {
        let mut valid = Vec::new();
        let mut problem = None;
        for oid in &offer_ids {
            match self.offers.get(oid) {
                Some(o) if &o.framework_id == fid => valid.push(oid.clone()),
                Some(_) => problem = Some(format!("offer {oid} was made to another framework")),
                None => problem = Some(format!("offer {oid} is unknown, expired, rescinded or already used")),
            }
        }
        let offers: Vec<Offer> = valid.iter().filter_map(|oid| self.offers.take(oid)).collect();
        let agent_id = offers.first().map(|o| o.agent_id.clone());
        if offer_ids.is_empty() {
            problem = Some("ACCEPT names no offers".into());
        }
        if problem.is_none() && offers.iter().any(|o| Some(&o.agent_id) != agent_id.as_ref()) {
            problem = Some("the offers of one ACCEPT must all come from the same agent".into());
        }
        if let Some(problem) = problem {
            warn!(framework_id = %fid, %problem, "ACCEPT refused");
            for o in &offers {
                self.allocator.recover(fid, &o.agent_id, &o.resources);
            }
            for t in tasks {
                let status = TaskStatus::from_master(
                    t.id,
                    TaskState::Dropped,
                    agent_id.clone(),
                    reason::INVALID_OFFERS,
                    problem.clone(),
                );
                self.send_update(fid, status);
            }
            self.allocation_due = true;
            return;
        }
        let Some(agent_id) = agent_id else { return };
        let mut remaining = Resources::default();
        for o in &offers {
            remaining.add(&o.resources);
        }
        let docker = self.agents.get(&agent_id).is_some_and(|a| a.info.docker);
        for spec in tasks {
            if spec.container.is_some() && !docker {
                self.counters.tasks_invalid += 1;
                let host = self.agents.get(&agent_id).map(|a| a.info.hostname.clone()).unwrap_or_default();
                let message = format!(
                    "task {} needs Docker, but agent {agent_id} ({host}) has no reachable Docker engine",
                    spec.id
                );
                let status = TaskStatus::from_master(
                    spec.id,
                    TaskState::Error,
                    Some(agent_id.clone()),
                    reason::NO_DOCKER,
                    message,
                );
                self.send_update(fid, status);
                continue;
            }
            let error = if let Err(e) = spec.validate() {
                Some(e.to_string())
            } else if self.frameworks[fid].tasks.contains_key(&spec.id) {
                Some(format!("task id {} is already in use by this framework", spec.id))
            } else if !remaining.contains(&spec.resources) {
                Some(format!(
                    "task {} needs {} but the accepted offers have only {} left",
                    spec.id, spec.resources, remaining
                ))
            } else {
                None
            };
            if let Some(message) = error {
                self.counters.tasks_invalid += 1;
                let status = TaskStatus::from_master(
                    spec.id,
                    TaskState::Error,
                    Some(agent_id.clone()),
                    reason::TASK_INVALID,
                    message,
                );
                self.send_update(fid, status);
                continue;
            }
            remaining.subtract(&spec.resources);
            self.launch(fid, &agent_id, spec);
        }
        if !remaining.is_empty() {
            self.allocator.recover(fid, &agent_id, &remaining);
            let refuse = filters.refuse();
            if !refuse.is_zero() {
                self.allocator.filter(fid, &agent_id, after(now(), refuse));
            }
        }
        self.allocation_due = true;
    }

    fn launch(&mut self, fid: &FrameworkId, agent_id: &AgentId, spec: TaskSpec) {
        self.counters.tasks_launched += 1;
        let key = (fid.clone(), spec.id.clone());
        let task = Task {
            agent_id: agent_id.clone(),
            name: spec.name.clone(),
            resources: spec.resources.clone(),
            state: TaskState::Staging,
            status: None,
            kill_requested: false,
            history: vec![HistoryEntry {
                state: TaskState::Staging,
                at: now_seconds(),
                message: String::new(),
                healthy: None,
            }],
        };
        if let Some(fw) = self.frameworks.get_mut(fid) {
            fw.tasks.insert(spec.id.clone(), task);
        }
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.tasks.insert(key);
        }
        debug!(framework_id = %fid, agent_id = %agent_id, task_id = %spec.id, "launching task");
        // If the agent is gone the task stays STAGING; the agent re-registering without it reports it lost.
        self.send_agent(agent_id, MasterMessage::RunTask { framework_id: fid.clone(), spec: Box::new(spec) });
    }

    fn decline(&mut self, fid: &FrameworkId, offer_ids: Vec<OfferId>, filters: Filters) {
        let refuse = filters.refuse();
        for oid in offer_ids {
            // Declining an offer that was just rescinded is a harmless race, so unknown ids are ignored.
            if self.offers.get(&oid).is_none_or(|o| &o.framework_id != fid) {
                continue;
            }
            if let Some(offer) = self.offers.take(&oid) {
                self.counters.offers_declined += 1;
                self.allocator.recover(fid, &offer.agent_id, &offer.resources);
                if !refuse.is_zero() {
                    self.allocator.filter(fid, &offer.agent_id, after(now(), refuse));
                }
            }
        }
        self.allocation_due = true;
    }

    fn kill(&mut self, fid: &FrameworkId, tid: TaskId) {
        let fw = self.frameworks.get_mut(fid).expect("caller checked");
        if let Some(task) = fw.tasks.get_mut(&tid) {
            if let (false, Some(status)) = (task.state.can_kill(), task.status.clone()) {
                self.send_update(fid, status);
                return;
            }
            task.kill_requested = true;
            let agent_id = task.agent_id.clone();
            info!(framework_id = %fid, task_id = %tid, agent_id = %agent_id, "killing task");
            // An unreachable agent gets the kill when it comes back.
            self.send_agent(&agent_id, MasterMessage::KillTask { framework_id: fid.clone(), task_id: tid });
            return;
        }
        if let Some((_, status, _)) = fw.completed.iter().find(|(id, _, _)| *id == tid) {
            let status = status.clone();
            self.send_update(fid, status);
            return;
        }
        self.send_event(fid, Event::Error(format!("cannot kill task {tid}: no such task")));
    }

    fn acknowledge(&mut self, fid: &FrameworkId, agent_id: AgentId, tid: TaskId, uuid: String) {
        if !self.agents.contains_key(&agent_id) {
            self.send_event(fid, Event::Error(format!("cannot acknowledge task {tid}: no such agent {agent_id}")));
            return;
        }
        let fw = self.frameworks.get(fid).expect("caller checked");
        let known = fw.tasks.contains_key(&tid) || fw.completed.iter().any(|(id, _, _)| *id == tid);
        if !known {
            self.send_event(fid, Event::Error(format!("cannot acknowledge task {tid}: no such task")));
            return;
        }
        let acked_terminal = fw
            .tasks
            .get(&tid)
            .and_then(|t| t.status.as_ref())
            .is_some_and(|s| s.state.is_terminal() && s.uuid.as_deref() == Some(uuid.as_str()));
        self.send_agent(
            &agent_id,
            MasterMessage::Acknowledge { framework_id: fid.clone(), task_id: tid.clone(), uuid },
        );
        if acked_terminal {
            self.complete_task(fid, &tid);
        }
    }

    fn reconcile(&mut self, fid: &FrameworkId, asked: Vec<(TaskId, Option<AgentId>)>) {
        let Some(fw) = self.frameworks.get(fid) else { return };
        let mut replies = Vec::new();
        let mut later = Vec::new();
        let answer = |tid: &TaskId, task: &Task| {
            let mut s = TaskStatus::from_master(
                tid.clone(),
                task.state,
                Some(task.agent_id.clone()),
                reason::RECONCILIATION,
                "reconciliation",
            );
            // The answer is about the latest status: it keeps its time, so that a framework learns when the
            // task got there (when it started running, when it failed), not when it asked.
            if let Some(last) = &task.status {
                s.message = last.message.clone();
                s.exit_code = last.exit_code;
                s.healthy = last.healthy;
                s.timestamp = last.timestamp;
            }
            s
        };
        if asked.is_empty() {
            replies.extend(fw.tasks.iter().filter(|(_, t)| !t.state.is_terminal()).map(|(tid, t)| answer(tid, t)));
        } else {
            for (tid, agent_id) in asked {
                if let Some(task) = fw.tasks.get(&tid) {
                    replies.push(answer(&tid, task));
                } else if let Some((_, status, _)) = fw.completed.iter().find(|(id, _, _)| *id == tid) {
                    let mut s = status.clone();
                    s.uuid = None;
                    s.reason = Some(reason::RECONCILIATION.into());
                    replies.push(s);
                } else if agent_id.is_none() && self.agents.values().any(|a| a.status == AgentStatus::Recovering) {
                    // Some agent has not re-registered since a master restart and may hold the task: the
                    // answer waits until it comes back or is found unreachable.
                    later.push((tid, agent_id));
                } else {
                    let agent = agent_id.as_ref().and_then(|a| self.agents.get(a));
                    match agent.map(|a| a.status) {
                        // The agent has not re-registered since a master restart: the answer waits for it.
                        Some(AgentStatus::Recovering) => later.push((tid, agent_id)),
                        Some(AgentStatus::Unreachable) => replies.push(TaskStatus::from_master(
                            tid,
                            TaskState::Unreachable,
                            agent_id,
                            reason::RECONCILIATION,
                            "the task's agent is unreachable",
                        )),
                        _ => replies.push(TaskStatus::from_master(
                            tid,
                            TaskState::Unknown,
                            agent_id,
                            reason::RECONCILIATION,
                            "the master does not know this task",
                        )),
                    }
                }
            }
        }
        for status in replies {
            self.send_update(fid, status);
        }
        if self.deferred.len() + later.len() > MAX_DEFERRED {
            warn!(framework_id = %fid, "too many reconciliation questions waiting for recovering agents: dropping the oldest");
        }
        self.deferred.extend(later.into_iter().map(|(tid, agent_id)| (fid.clone(), tid, agent_id)));
        while self.deferred.len() > MAX_DEFERRED {
            self.deferred.pop_front();
        }
    }

    /// Asks again, in order, every question that waited for a recovering agent: each is answered now, or
    /// waits again if its agent still recovers.
    fn answer_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.deferred);
        for (fid, tid, agent_id) in waiting {
            self.reconcile(&fid, vec![(tid, agent_id)]);
        }
    }

    // ---- offers ----

    fn rescind(&mut self, oid: &OfferId) {
        if let Some(offer) = self.offers.take(oid) {
            self.counters.offers_rescinded += 1;
            self.allocator.recover(&offer.framework_id, &offer.agent_id, &offer.resources);
            self.send_event(&offer.framework_id, Event::Rescind(oid.clone()));
            self.allocation_due = true;
        }
    }

    fn rescind_agent_offers(&mut self, agent_id: &AgentId) {
        for oid in self.offers.of_agent(agent_id) {
            self.rescind(&oid);
        }
    }

    fn rescind_framework_offers(&mut self, fid: &FrameworkId) {
        for oid in self.offers.of_framework(fid) {
            self.rescind(&oid);
        }
    }

    fn allocate(&mut self, now: Instant) {
        self.allocation_due = false;
        let allocations = self.allocator.allocate(now);
        let mut by_framework: BTreeMap<FrameworkId, Vec<Offer>> = BTreeMap::new();
        for a in allocations {
            let Some(agent) = self.agents.get(&a.agent_id) else { continue };
            let offer = Offer {
                id: OfferId::sequential("", 0), // the book numbers it
                framework_id: a.framework_id.clone(),
                agent_id: a.agent_id.clone(),
                hostname: agent.info.hostname.clone(),
                resources: a.resources,
                attributes: agent.info.attributes.clone(),
                docker: agent.info.docker,
            };
            let offer = self.offers.make(offer, now);
            by_framework.entry(a.framework_id).or_default().push(offer);
        }
        for (fid, offers) in by_framework {
            self.counters.offers_sent += offers.len() as u64;
            self.send_event(&fid, Event::Offers(offers));
        }
    }

    // ---- timers ----

    async fn periodic(&mut self, now: Instant) {
        for id in self.unsaved_removals.clone() {
            if self.store.remove_framework(&id, now_millis()).await.is_ok() {
                self.unsaved_removals.remove(&id);
            }
        }
        let marks = Marks {
            last_heartbeat: self.last_heartbeat,
            last_full_allocation: self.last_full_allocation,
            allocation_due: self.allocation_due,
        };
        let agents = self.agents.values().map(|a| AgentClock {
            id: a.id.clone(),
            recovering: a.status == AgentStatus::Recovering,
            unreachable: a.status == AgentStatus::Unreachable,
            last_seen: a.last_seen,
        });
        let frameworks = self.frameworks.iter().map(|(id, f)| FrameworkClock {
            id: id.clone(),
            removed: f.removed,
            connected: f.conn.is_some(),
            failover_deadline: f.failover_deadline,
        });
        let reads = self.file_reads.iter().map(|(id, (t, _, _))| (*id, *t));
        let offers = self.offers.made_at();
        let due = timers::due(now, &self.config, &marks, agents, frameworks, reads, offers);

        for id in due.unreachable {
            self.mark_unreachable(&id);
        }
        for id in due.expired {
            self.teardown(&id, "its failover timeout passed").await;
        }
        for id in due.stale_reads {
            if let Some((_, reply, _)) = self.file_reads.remove(&id) {
                let _ =
                    reply.send(Err(MasterError::Unavailable("the agent did not answer the file read in time".into())));
            }
        }
        for oid in due.stale_offers {
            debug!(offer_id = %oid, "offer timed out");
            self.rescind(&oid);
        }
        if due.heartbeat {
            self.last_heartbeat = now;
            let connected: Vec<FrameworkId> =
                self.frameworks.iter().filter(|(_, f)| f.conn.is_some()).map(|(id, _)| id.clone()).collect();
            for fid in connected {
                self.send_event(&fid, Event::Heartbeat);
            }
        }
        // Carrying out the above (a rescind, an agent gone) may itself call for an allocation.
        if due.allocate || self.allocation_due {
            self.last_full_allocation = now;
            self.allocator.expire_filters(now);
            self.allocate(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_use_an_id() {
        let c = |name: &str, admin| super::super::Caller { name: name.into(), admin };
        // Owned: only its owner, admins included.
        assert!(may_claim(Some("ops"), Some(&c("ops", false)), false));
        assert!(!may_claim(Some("ops"), Some(&c("thief", false)), true));
        assert!(!may_claim(Some("ops"), Some(&c("root", true)), true));
        // Unowned: an admin, or what the registry says the id is.
        assert!(may_claim(None, Some(&c("root", true)), false));
        assert!(may_claim(None, Some(&c("svc", false)), true));
        assert!(!may_claim(None, Some(&c("thief", false)), false));
        // Auth off: nobody is checked.
        assert!(may_claim(Some("ops"), None, false));
    }
}
