//! Deterministic simulation of a cluster: the real master actor, a registry in memory that fences writes by
//! term, agents and two frameworks (in two roles, with the same task ids) as models that speak the master's
//! protocol (the agent's update queue and acknowledgements, the framework's reconciliation and kills, as
//! the real ones do them), and the real actors of the services framework (`keel_marathon`, keeping one app
//! of four instances) and of the cron framework (`keel_chronos`, one job ticking every 10 s, whose tasks
//! the agents finish after 3 s), each over a link to the master and a store in memory beside the
//! registry. Everything runs on one thread, on tokio's paused clock (the cron schedule follows it), so a
//! run depends only on its seed.
//!
//! Each seed plays a schedule of faults for 60 simulated seconds: master crashes (a new master recovers
//! from the registry at the next term, after an election gap), the leader alone cut off the database (it
//! steps down, then a standby leads), the database going away, agents partitioned
//! (every message lost both ways), agents rebooted (their tasks die with them), dropped connections of
//! agents and of the frameworks, tasks failing, the services and cron frameworks crashing (each starts
//! again from its store), the services app restarting (a rolling deployment the other faults interrupt),
//! the frameworks' writes landing while their answers are lost, and per-message delays and losses on every
//! link. Then the faults stop and the cluster gets 90 s to settle. The invariants,
//! checked after every run:
//! - no task id is ever started twice, on any agent;
//! - each framework has exactly its wanted number of tasks running; the services framework's are all of
//!   its app's current version;
//! - for each framework, what the agents run, what the master reports and what it believes are the same
//!   tasks;
//! - every cron tick (old enough to have finished) has exactly one run, finished or recorded missed, and
//!   no agent runs a task of a run that is over.
//!
//! Two masters never act at once here (a crashed or cut-off leader stops before the next is elected):
//! that the election guarantees it is what `election_sim.rs` checks.
//!
//! `KEEL_SIM_SEEDS=N` runs N seeds (default 1000); a failure prints its seed, and `KEEL_SIM_SEED=S`
//! replays exactly that one (a test checks that two runs of a seed leave the same trace); add
//! `KEEL_SIM_LOG=debug` (a tracing filter) to see the actors' logs as it plays.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;

use keel_chronos::job::{ConcurrencyPolicy, Job, JobId, JobStats, Run, RunStatus, ScheduleExpr, ScheduleSpec, Trigger};
use keel_chronos::scheduler::Clock;
use keel_chronos::store::{CronStore, JobStoreError};
use keel_core::api::{AgentInfo, AgentMessage, AgentTask, Call, Event, Filters, FrameworkInfo, MasterMessage};
use keel_core::ids::{AgentId, FrameworkId, OfferId, TaskId};
use keel_core::master::{self, MasterConfig, MasterHandle, MasterStore};
use keel_core::scheduler::{Link, Session, SubscribeError};
use keel_core::store::{AgentRecord, FrameworkRecord, StoreError};
use keel_core::task::{CommandSpec, Source, TaskSpec, TaskState, TaskStatus};
use keel_marathon::app::{AppDefinition, AppId};
use keel_marathon::edit::AppChange;
use keel_marathon::scheduler::{MarathonHandle, TaskIds};
use keel_marathon::store::{AppStoreError, InstanceRecord, ServiceStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

const AGENTS: usize = 3;
/// Two frameworks in two roles, sharing the agents through the allocator; they use the same task ids, as
/// frameworks may (a task is known by its framework and its id).
const FRAMEWORKS: usize = 2;
/// How many tasks each framework wants running.
const WANTED: usize = 4;
const FAULTS_FOR: Duration = Duration::from_secs(60);
const SETTLE_FOR: Duration = Duration::from_secs(90);

// ---- the registry, in memory ----

/// The database: the lease's term, the registry rows, and whether it answers at all.
#[derive(Default)]
struct Db {
    term: i64,
    down: bool,
    agents: BTreeMap<AgentId, AgentRecord>,
    frameworks: BTreeMap<FrameworkId, FrameworkRecord>,
    /// Writes of the frameworks' stores land, but their answers are lost: the caller hears an error.
    ambiguous: bool,
    /// Terms whose master is cut off from the database (it is partitioned from it, the rest still is not).
    cut_off: BTreeSet<i64>,
}

/// One master's view of the database: every write carries the term it was elected at.
struct MemStore {
    db: Arc<Mutex<Db>>,
    term: i64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemStore {
    fn write(&self, what: &'static str, apply: impl FnOnce(&mut Db)) -> Result<(), StoreError> {
        let mut db = lock(&self.db);
        if db.down || db.cut_off.contains(&self.term) {
            return Err(StoreError::Query { what, source: sqlx::Error::PoolTimedOut });
        }
        if db.term != self.term {
            return Err(StoreError::Fenced { kind: "master", term: self.term });
        }
        apply(&mut db);
        Ok(())
    }

    fn read<T>(&self, what: &'static str, get: impl FnOnce(&Db) -> T) -> Result<T, StoreError> {
        let db = lock(&self.db);
        if db.down || db.cut_off.contains(&self.term) {
            return Err(StoreError::Query { what, source: sqlx::Error::PoolTimedOut });
        }
        Ok(get(&db))
    }
}

#[async_trait::async_trait]
impl MasterStore for MemStore {
    fn term(&self) -> i64 {
        self.term
    }
    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.read("agents", |db| db.agents.values().cloned().collect())
    }
    async fn frameworks(&self) -> Result<Vec<FrameworkRecord>, StoreError> {
        self.read("frameworks", |db| db.frameworks.values().cloned().collect())
    }
    async fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.write("put agent", |db| {
            db.agents.insert(agent.id.clone(), agent.clone());
        })
    }
    async fn put_framework(&self, framework: &FrameworkRecord) -> Result<(), StoreError> {
        self.write("put framework", |db| {
            db.frameworks.insert(framework.id.clone(), framework.clone());
        })
    }
    async fn remove_framework(&self, id: &FrameworkId, at: i64) -> Result<(), StoreError> {
        self.write("remove framework", |db| {
            if let Some(f) = db.frameworks.get_mut(id) {
                f.removed_at = Some(at);
            }
        })
    }
}

impl Believed {
    /// Tasks that count towards what it wants: live, reachable and not being killed. An unreachable task
    /// is replaced (and killed if it comes back); a task being killed is on its way out.
    fn active(&self) -> usize {
        self.live.iter().filter(|(t, (s, _))| *s != TaskState::Unreachable && !self.killing.contains(*t)).count()
    }
}

// ---- the world the models share ----

/// One agent host, as the simulation keeps it.
#[derive(Default)]
struct AgentHost {
    /// Its tasks: framework, spec, state and the updates not acknowledged yet (the head is in flight).
    tasks: BTreeMap<(FrameworkId, TaskId), HostTask>,
    /// Every message to and from the master is lost until then.
    partitioned_until: Option<Instant>,
    /// Down (rebooting) until then.
    down_until: Option<Instant>,
    /// Bumped to make the agent drop its connection and register again.
    generation: u64,
}

struct HostTask {
    framework_id: FrameworkId,
    spec: TaskSpec,
    state: TaskState,
    pending: VecDeque<TaskStatus>,
    /// When the head of `pending` was last sent, and how long until it is sent again: the real agent's
    /// retry, 5 s doubling to 60 s.
    last_sent: Option<Instant>,
    backoff: Duration,
    /// When the task ends by itself (a batch task), if it does.
    finish_at: Option<Instant>,
}

const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(60);

impl HostTask {
    fn sent(&mut self, retry: bool) {
        self.last_sent = Some(Instant::now());
        self.backoff = if retry { (self.backoff * 2).clamp(FIRST_RETRY, MAX_RETRY) } else { FIRST_RETRY };
    }
}

/// What the framework believes about its tasks.
#[derive(Default)]
struct Believed {
    /// Non-terminal tasks and their last known state.
    live: BTreeMap<TaskId, (TaskState, Option<AgentId>)>,
    /// Tasks it asked to kill, until it hears they ended.
    killing: BTreeSet<TaskId>,
    /// Bumped to make it drop its connection and subscribe again.
    generation: u64,
    next_task: u64,
    /// Periodic passes so far (one every 3 s).
    passes: u64,
}

struct World {
    rng: StdRng,
    start: Instant,
    leader: Option<MasterHandle>,
    hosts: Vec<AgentHost>,
    frameworks: Vec<Believed>,
    services: Services,
    cron: Life,
    /// How many times each task id was started on any agent.
    started: BTreeMap<(FrameworkId, TaskId), u32>,
    /// What happened, with simulated times: compared between two runs of one seed.
    trace: Vec<String>,
    violations: Vec<String>,
    /// Link faults for this seed: the chance a message is lost, and the longest delay.
    loss: f64,
    max_delay_ms: u64,
}

type Shared = Arc<Mutex<World>>;

impl World {
    fn now(&self) -> f64 {
        (Instant::now() - self.start).as_secs_f64()
    }

    fn note(&mut self, what: String) {
        let line = format!("{:>8.3} {what}", self.now());
        self.trace.push(line);
    }

    /// Whether a message on a link is lost, and how long it takes otherwise.
    fn link(&mut self) -> Option<Duration> {
        if self.rng.random_bool(self.loss) {
            return None;
        }
        Some(Duration::from_millis(self.rng.random_range(0..=self.max_delay_ms)))
    }
}

fn cut_off(host: &AgentHost, now: Instant) -> bool {
    host.partitioned_until.is_some_and(|t| now < t) || host.down_until.is_some_and(|t| now < t)
}

fn agent_id(i: usize) -> AgentId {
    AgentId::parse(format!("sim-agent-{i}")).unwrap()
}

fn framework_id(k: usize) -> FrameworkId {
    FrameworkId::parse(format!("sim-framework-{k}")).unwrap()
}

/// An agent's update; its uuid is unique to the framework, the task and the update, as the real agent's
/// random ones are, so that an acknowledgement meant for another framework's task never matches.
fn status(framework_id: &FrameworkId, task_id: &TaskId, agent: &AgentId, state: TaskState, seq: u64) -> TaskStatus {
    TaskStatus {
        task_id: task_id.clone(),
        state,
        message: String::new(),
        source: Source::Agent,
        reason: None,
        agent_id: Some(agent.clone()),
        uuid: Some(format!("{framework_id}-{task_id}-{agent}-{seq}")),
        timestamp: 0.0,
        exit_code: None,
        healthy: None,
    }
}

// ---- the agent model ----

/// Sends `msg` to the master over a link that may delay or lose it. Answers false when the master is gone.
async fn to_master(w: &Shared, i: usize, handle: &MasterHandle, id: &AgentId, conn: u64, msg: AgentMessage) -> bool {
    let Some(delay) = lock(w).link() else { return true };
    sleep(delay).await;
    if cut_off(&lock(w).hosts[i], Instant::now()) {
        return true;
    }
    handle.agent_message(id.clone(), conn, msg).await.is_ok()
}

/// The heads of the tasks' queues to send: all of them just after (re-)registering, otherwise those whose
/// retry is due, as the real agent sends them.
fn heads(w: &Shared, i: usize, registered: bool) -> Vec<(FrameworkId, TaskStatus)> {
    let mut w = lock(w);
    let now = Instant::now();
    let mut out = Vec::new();
    // Batch tasks whose time is up finish (checked on each pass: within a second).
    let agent = agent_id(i);
    for ((fid, tid), t) in w.hosts[i].tasks.iter_mut() {
        if !t.state.is_terminal() && t.finish_at.is_some_and(|at| now >= at) {
            t.state = TaskState::Finished;
            let seq = 3_000_000 + t.pending.len() as u64;
            t.pending.push_back(status(fid, tid, &agent, TaskState::Finished, seq));
        }
    }
    for t in w.hosts[i].tasks.values_mut() {
        let Some(head) = t.pending.front().cloned() else { continue };
        let due = registered || t.last_sent.is_none_or(|s| now - s >= t.backoff);
        if due {
            t.sent(!registered && t.last_sent.is_some());
            out.push((t.framework_id.clone(), head));
        }
    }
    out
}

async fn agent(w: Shared, i: usize) {
    let id = agent_id(i);
    let mut seq = 0u64;
    loop {
        // Wait until the host is up and reachable and a master leads.
        let (handle, generation, tasks) = loop {
            {
                let w = lock(&w);
                let host = &w.hosts[i];
                if !cut_off(host, Instant::now())
                    && let Some(h) = &w.leader
                {
                    let tasks = host
                        .tasks
                        .values()
                        .map(|t| AgentTask {
                            framework_id: t.framework_id.clone(),
                            spec: t.spec.clone(),
                            state: t.state,
                            healthy: None,
                        })
                        .collect::<Vec<_>>();
                    break (h.clone(), host.generation, tasks);
                }
            }
            sleep(Duration::from_millis(200)).await;
        };
        let info = AgentInfo {
            id: Some(id.clone()),
            hostname: format!("host-{i}"),
            resources: "cpus:1;mem:256".parse().unwrap(),
            attributes: vec![],
            docker: false,
        };
        let mut session = match handle.register_agent(info, tasks, None).await {
            Ok(s) => s,
            Err(_) => {
                sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        lock(&w).note(format!("agent {i} registered"));
        for (fid, status) in heads(&w, i, true) {
            to_master(&w, i, &handle, &id, session.conn_id, AgentMessage::StatusUpdate { framework_id: fid, status })
                .await;
        }
        let conn = session.conn_id;
        let mut retry = Instant::now() + Duration::from_secs(1);
        loop {
            tokio::select! {
                biased;
                msg = session.messages.recv() => {
                    let Some(msg) = msg else { break };
                    let replies = {
                        let mut w = lock(&w);
                        if cut_off(&w.hosts[i], Instant::now()) {
                            continue; // lost on the way
                        }
                        on_master_message(&mut w, i, &id, &mut seq, msg)
                    };
                    for (fid, status) in replies {
                        to_master(&w, i, &handle, &id, conn, AgentMessage::StatusUpdate { framework_id: fid, status }).await;
                    }
                }
                _ = sleep_until(retry) => {
                    retry = Instant::now() + Duration::from_secs(1);
                    let (gone, cut) = {
                        let w = lock(&w);
                        (w.hosts[i].generation != generation, cut_off(&w.hosts[i], Instant::now()))
                    };
                    if gone {
                        // The connection dropped: the master hears of it (unless the host is cut off).
                        if !cut {
                            handle.agent_disconnected(id.clone(), conn).await;
                        }
                        break;
                    }
                    if cut {
                        continue;
                    }
                    if !to_master(&w, i, &handle, &id, conn, AgentMessage::Heartbeat).await {
                        break;
                    }
                    for (fid, status) in heads(&w, i, false) {
                        to_master(&w, i, &handle, &id, conn, AgentMessage::StatusUpdate { framework_id: fid, status }).await;
                    }
                }
            }
        }
        lock(&w).note(format!("agent {i} lost its connection"));
    }
}

/// What the agent does with one message from the master; answers the updates to send now.
fn on_master_message(
    w: &mut World,
    i: usize,
    id: &AgentId,
    seq: &mut u64,
    msg: MasterMessage,
) -> Vec<(FrameworkId, TaskStatus)> {
    let mut out = Vec::new();
    match msg {
        MasterMessage::Registered { .. } => {}
        MasterMessage::RunTask { framework_id, spec } => {
            let key = (framework_id.clone(), spec.id.clone());
            if w.hosts[i].tasks.contains_key(&key) {
                return out;
            }
            let n = w.started.entry(key.clone()).or_default();
            *n += 1;
            if *n > 1 {
                let v = format!("task {} of {framework_id} started a second time, on agent {i}", spec.id);
                w.violations.push(v);
            }
            w.note(format!("agent {i} starts {} of {framework_id}", spec.id));
            *seq += 1;
            let s = status(&framework_id, &spec.id, id, TaskState::Running, *seq);
            let finish_at = spec
                .labels
                .get(RUNS_FOR)
                .and_then(|s| s.parse().ok())
                .map(|secs| Instant::now() + Duration::from_secs(secs));
            let task = HostTask {
                framework_id: framework_id.clone(),
                spec: *spec,
                state: TaskState::Running,
                pending: VecDeque::from([s.clone()]),
                last_sent: Some(Instant::now()),
                backoff: FIRST_RETRY,
                finish_at,
            };
            w.hosts[i].tasks.insert(key, task);
            out.push((framework_id, s));
        }
        MasterMessage::KillTask { framework_id, task_id } => {
            match w.hosts[i].tasks.get_mut(&(framework_id.clone(), task_id.clone())) {
                Some(t) if !t.state.is_terminal() => {
                    *seq += 1;
                    t.state = TaskState::Killed;
                    let s = status(&framework_id, &task_id, id, TaskState::Killed, *seq);
                    t.pending.push_back(s.clone());
                    if t.pending.len() == 1 {
                        t.sent(false);
                        out.push((framework_id, s));
                    }
                }
                Some(_) => {}
                None => {
                    let mut s = status(&framework_id, &task_id, id, TaskState::Lost, 0);
                    s.uuid = None;
                    out.push((framework_id, s));
                }
            }
        }
        MasterMessage::Acknowledge { framework_id, task_id, uuid } => {
            let host = &mut w.hosts[i];
            let key = (framework_id, task_id);
            let Some(t) = host.tasks.get_mut(&key) else { return out };
            if t.pending.front().and_then(|s| s.uuid.as_deref()) != Some(uuid.as_str()) {
                return out;
            }
            t.pending.pop_front();
            t.last_sent = None;
            if let Some(next) = t.pending.front().cloned() {
                t.sent(false);
                out.push((t.framework_id.clone(), next));
            } else if t.state.is_terminal() {
                host.tasks.remove(&key);
            }
        }
        MasterMessage::ReadFile { .. } => {}
    }
    out
}

// ---- the framework model ----

async fn framework(w: Shared, k: usize) {
    let fid = framework_id(k);
    loop {
        let (handle, generation) = loop {
            {
                let w = lock(&w);
                if let Some(h) = &w.leader {
                    break (h.clone(), w.frameworks[k].generation);
                }
            }
            sleep(Duration::from_millis(200)).await;
        };
        let mut info = FrameworkInfo::new(format!("sim-{k}"));
        info.role = format!("role-{k}");
        info.failover_timeout = Duration::from_secs(3600);
        let mut sub = match handle.subscribe(Some(fid.clone()), info, None).await {
            Ok(s) => s,
            Err(_) => {
                sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let conn = sub.conn_id;
        lock(&w).note(format!("framework {k} subscribed"));
        let call = |call: Call| {
            let w = w.clone();
            let handle = handle.clone();
            let fid = fid.clone();
            async move {
                let Some(delay) = lock(&w).link() else { return true };
                sleep(delay).await;
                handle.call(fid, conn, call).await.is_ok()
            }
        };
        // Learn the real state of every task it may have, then of all.
        let known: Vec<(TaskId, Option<AgentId>)> =
            lock(&w).frameworks[k].live.iter().map(|(t, (_, a))| (t.clone(), a.clone())).collect();
        call(Call::Reconcile { tasks: known }).await;
        call(Call::Reconcile { tasks: vec![] }).await;
        call(Call::Revive).await;
        let mut pass = Instant::now() + Duration::from_secs(3);
        loop {
            tokio::select! {
                biased;
                event = sub.events.recv() => {
                    let Some(event) = event else { break };
                    let calls = on_event(&mut lock(&w), k, event);
                    for c in calls {
                        call(c).await;
                    }
                }
                _ = sleep_until(pass) => {
                    pass = Instant::now() + Duration::from_secs(3);
                    if lock(&w).frameworks[k].generation != generation {
                        handle.framework_disconnected(fid.clone(), conn).await;
                        break;
                    }
                    let calls = periodic_calls(&mut lock(&w), k);
                    for c in calls {
                        if !call(c).await {
                            break;
                        }
                    }
                }
            }
        }
        lock(&w).note(format!("framework {k} lost its connection"));
    }
}

/// The framework's answer to one event: the calls to make.
fn on_event(w: &mut World, k: usize, event: Event) -> Vec<Call> {
    let mut calls = Vec::new();
    match event {
        Event::Offers(offers) => {
            let mut used = Vec::new();
            let mut tasks = Vec::new();
            let mut spare = Vec::new();
            for offer in offers {
                if w.frameworks[k].active() + tasks.len() < WANTED {
                    w.frameworks[k].next_task += 1;
                    let id = TaskId::parse(format!("sim-task-{}", w.frameworks[k].next_task)).unwrap();
                    w.note(format!("framework {k} launches {id} on {}", offer.agent_id));
                    tasks.push((id, offer.agent_id.clone()));
                    used.push(offer.id);
                } else {
                    spare.push(offer.id);
                }
            }
            for (id, agent) in &tasks {
                w.frameworks[k].live.insert(id.clone(), (TaskState::Staging, Some(agent.clone())));
            }
            if !used.is_empty() {
                // One task per offer, one ACCEPT per offer, as most frameworks do.
                for (offer_id, (id, _)) in used.into_iter().zip(tasks) {
                    calls.push(accept(offer_id, id));
                }
            }
            if !spare.is_empty() {
                calls.push(Call::Decline {
                    offer_ids: spare,
                    filters: Filters { refuse: Some(Duration::from_secs(1)) },
                });
            }
        }
        Event::Update(s) => {
            w.note(format!("framework {k} hears {} {}", s.task_id, s.state.name()));
            if s.state.is_terminal() || s.state == TaskState::Unknown {
                w.frameworks[k].live.remove(&s.task_id);
                w.frameworks[k].killing.remove(&s.task_id);
            } else {
                w.frameworks[k].live.insert(s.task_id.clone(), (s.state, s.agent_id.clone()));
            }
            if let (Some(uuid), Some(agent_id)) = (s.uuid.clone(), s.agent_id.clone()) {
                calls.push(Call::Acknowledge { agent_id, task_id: s.task_id.clone(), uuid });
            }
        }
        _ => {}
    }
    calls
}

fn accept(offer_id: OfferId, id: TaskId) -> Call {
    let spec = TaskSpec {
        id,
        name: "sim".into(),
        resources: "cpus:0.1;mem:16".parse().unwrap(),
        command: CommandSpec { value: "sleep 3600".into(), shell: true, arguments: vec![], env: BTreeMap::new() },
        labels: BTreeMap::new(),
        kill_grace: None,
        container: None,
        health_check: None,
        user: None,
    };
    Call::Accept { offer_ids: vec![offer_id], tasks: vec![spec], filters: Filters::default() }
}

/// Every few seconds: kill tasks beyond what it wants (a replaced task can come back from a partition),
/// ask again about tasks not yet running, and revive when short.
fn periodic_calls(w: &mut World, k: usize) -> Vec<Call> {
    let f = &mut w.frameworks[k];
    let mut calls = Vec::new();
    let running: Vec<TaskId> = f
        .live
        .iter()
        .filter(|(t, (s, _))| *s == TaskState::Running && !f.killing.contains(*t))
        .map(|(t, _)| t.clone())
        .collect();
    let extra = f.active().saturating_sub(WANTED);
    for id in running.iter().rev().take(extra) {
        f.killing.insert(id.clone());
    }
    for id in &f.killing {
        let agent_id = f.live.get(id).and_then(|(_, a)| a.clone());
        calls.push(Call::Kill { task_id: id.clone(), agent_id });
    }
    // Every 30 s it asks about every task it knows (an answer, or the question, may have been lost), as
    // Marathon's periodic reconciliation does; in between, only about tasks not running yet.
    f.passes += 1;
    let all = f.passes % 10 == 0;
    let unsure: Vec<(TaskId, Option<AgentId>)> = f
        .live
        .iter()
        .filter(|(_, (s, _))| all || *s != TaskState::Running)
        .map(|(t, (_, a))| (t.clone(), a.clone()))
        .collect();
    if !unsure.is_empty() {
        calls.push(Call::Reconcile { tasks: unsure });
    }
    if f.active() < WANTED {
        calls.push(Call::Revive);
    }
    calls
}

// ---- the services framework: the real actor ----

/// The services framework's framework id, stored before its first start (a new framework would get a
/// random one from the master, and a run must repeat exactly).
const SERVICES_ID: &str = "sim-services";
/// Its one app, and how many instances it wants.
const SERVICE_APP: &str = "/svc";
const SERVICE_INSTANCES: u32 = 4;

/// The services framework's tables, in memory, in the same database as the registry: they are away when
/// it is.
#[derive(Default)]
struct ServiceTables {
    apps: BTreeMap<String, AppDefinition>,
    versions: BTreeMap<(String, String), AppDefinition>,
    framework_id: Option<String>,
    instances: BTreeMap<String, InstanceRecord>,
}

struct MemServiceStore {
    db: Arc<Mutex<Db>>,
    tables: Arc<Mutex<ServiceTables>>,
    secrets: keel_core::secrets::Secrets,
}

impl MemServiceStore {
    fn with<T>(&self, what: &'static str, f: impl FnOnce(&mut ServiceTables) -> T) -> Result<T, AppStoreError> {
        let lost = || AppStoreError::Store(StoreError::Query { what, source: sqlx::Error::PoolTimedOut });
        if lock(&self.db).down {
            return Err(lost());
        }
        let out = f(&mut lock(&self.tables));
        // A commit whose answer is lost: written, but the caller hears an error.
        if lock(&self.db).ambiguous && what.starts_with("put") | what.starts_with("delete") | what.starts_with("set") {
            return Err(lost());
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl ServiceStore for MemServiceStore {
    async fn put(&self, id: &AppId, app: &AppDefinition) -> Result<(), AppStoreError> {
        self.with("put app", |t| {
            let version = app.version.clone().unwrap_or_default();
            t.versions.insert((id.to_string(), version), app.clone());
            t.apps.insert(id.to_string(), app.clone());
        })
    }
    async fn get(&self, id: &AppId) -> Result<Option<AppDefinition>, AppStoreError> {
        self.with("get app", |t| t.apps.get(id.as_str()).cloned())
    }
    async fn list(&self) -> Result<Vec<AppDefinition>, AppStoreError> {
        self.with("list apps", |t| t.apps.values().cloned().collect())
    }
    async fn delete(&self, id: &AppId) -> Result<bool, AppStoreError> {
        self.with("delete app", |t| t.apps.remove(id.as_str()).is_some())
    }
    async fn latest_version(&self) -> Result<Option<String>, AppStoreError> {
        self.with("latest version", |t| t.versions.keys().map(|(_, v)| v.clone()).max())
    }
    async fn version(&self, id: &AppId, version: &str) -> Result<Option<AppDefinition>, AppStoreError> {
        self.with("app version", |t| t.versions.get(&(id.to_string(), version.to_owned())).cloned())
    }
    async fn framework_id(&self) -> Result<Option<String>, AppStoreError> {
        self.with("framework id", |t| t.framework_id.clone())
    }
    async fn set_framework_id(&self, id: &str) -> Result<(), AppStoreError> {
        self.with("set framework id", |t| t.framework_id = Some(id.to_owned()))
    }
    async fn put_instances(&self, records: &[InstanceRecord]) -> Result<(), AppStoreError> {
        self.with("put instances", |t| {
            for r in records {
                t.instances.insert(r.task_id.clone(), r.clone());
            }
        })
    }
    async fn delete_instance(&self, task_id: &str) -> Result<(), AppStoreError> {
        self.with("delete instance", |t| {
            t.instances.remove(task_id);
        })
    }
    async fn instances(&self) -> Result<Vec<InstanceRecord>, AppStoreError> {
        self.with("instances", |t| t.instances.values().cloned().collect())
    }
    fn secrets(&self) -> &keel_core::secrets::Secrets {
        &self.secrets
    }
}

/// The services framework's link to the master: calls travel a link that may delay or lose them, as the
/// models' do, and the subscription breaks when the leader goes or the connection is dropped.
struct SimLink {
    w: Shared,
    cron: bool,
}

impl World {
    /// How many times the connection of the services (or the cron) framework has been dropped.
    fn generation(&self, cron: bool) -> u64 {
        if cron { self.cron.generation } else { self.services.generation }
    }
}

#[async_trait::async_trait]
impl Link for SimLink {
    async fn subscribe(
        &self,
        framework_id: Option<FrameworkId>,
        info: &FrameworkInfo,
    ) -> Result<Session, SubscribeError> {
        let (handle, generation) = {
            let w = lock(&self.w);
            let handle = w.leader.clone().ok_or_else(|| SubscribeError::Unavailable("no master leads".into()))?;
            (handle, w.generation(self.cron))
        };
        let mut sub = handle
            .subscribe(framework_id, info.clone(), None)
            .await
            .map_err(|e| SubscribeError::Unavailable(e.to_string()))?;
        let (fid, conn) = (sub.framework_id.clone(), sub.conn_id);
        lock(&self.w).note(format!("{fid} subscribed"));
        let (calls_tx, mut calls) = mpsc::channel::<Call>(1024);
        let (events_tx, events) = mpsc::channel::<Result<Event, String>>(1024);
        let w = self.w.clone();
        let master = handle.clone();
        let caller = fid.clone();
        tokio::spawn(async move {
            while let Some(call) = calls.recv().await {
                let Some(delay) = lock(&w).link() else { continue };
                sleep(delay).await;
                if master.call(caller.clone(), conn, call).await.is_err() {
                    return;
                }
            }
        });
        let w = self.w.clone();
        let cron = self.cron;
        tokio::spawn(async move {
            let mut check = Instant::now() + Duration::from_secs(1);
            loop {
                tokio::select! {
                    biased;
                    event = sub.events.recv() => match event {
                        Some(e) => {
                            if events_tx.send(Ok(e)).await.is_err() {
                                break;
                            }
                        }
                        // The master is gone.
                        None => return,
                    },
                    _ = events_tx.closed() => break,
                    _ = sleep_until(check) => {
                        check = Instant::now() + Duration::from_secs(1);
                        if lock(&w).generation(cron) != generation {
                            break;
                        }
                    }
                }
            }
            // The connection dropped (or the framework stopped): the master hears of it.
            handle.framework_disconnected(fid.clone(), conn).await;
            lock(&w).note(format!("{fid} lost its connection"));
        });
        Ok(Session { calls: Arc::new(calls_tx), events: tokio_stream::wrappers::ReceiverStream::new(events).boxed() })
    }

    fn max_backoff(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn describe(&self) -> String {
        "the simulated master".into()
    }
}

/// What the simulation keeps of the cron framework between its lives.
#[derive(Default)]
struct Life {
    /// Bumped to make it drop its connection and subscribe again.
    generation: u64,
    /// Stops the running framework: a crash.
    stop: Option<CancellationToken>,
    /// Down (crashed, not yet restarted) until then.
    down_until: Option<Instant>,
}

/// What the simulation keeps of the services framework between its lives.
#[derive(Default)]
struct Services {
    /// Bumped to make it drop its connection and subscribe again.
    generation: u64,
    /// The running framework: stopping it is a crash.
    running: Option<(MarathonHandle, CancellationToken)>,
    /// Down (crashed, not yet restarted) until then.
    down_until: Option<Instant>,
}

fn service_app() -> AppDefinition {
    let mut app: AppDefinition = serde_json::from_value(serde_json::json!({
        "id": SERVICE_APP, "cmd": "sleep 3600", "cpus": 0.1, "mem": 16, "instances": SERVICE_INSTANCES,
        // The simulated agents offer no ports.
        "portDefinitions": [],
    }))
    .expect("a valid app");
    app.version = Some("2026-01-01T00:00:00.000Z".into());
    app
}

/// Runs the services framework, restarting it after each crash from what its store holds.
async fn services(w: Shared, db: Arc<Mutex<Db>>, tables: Arc<Mutex<ServiceTables>>) {
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let down = lock(&w).services.down_until;
        if let Some(until) = down {
            sleep_until(until).await;
        }
        let store =
            MemServiceStore { db: db.clone(), tables: tables.clone(), secrets: keel_core::secrets::Secrets::none() };
        let stop = CancellationToken::new();
        let options =
            keel_marathon::scheduler::Options { task_ids: TaskIds::Sequence(ids.clone()), ..Default::default() };
        match keel_marathon::scheduler::start_on(
            Arc::new(SimLink { w: w.clone(), cron: false }),
            Arc::new(store),
            options,
            stop.clone(),
        )
        .await
        {
            Ok(handle) => {
                let mut world = lock(&w);
                world.note("services framework started".into());
                world.services.running = Some((handle, stop.clone()));
                world.services.down_until = None;
            }
            Err(_) => {
                // Its database is away: it tries again, as the real process does once restarted.
                sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        stop.cancelled().await;
    }
}

/// Checks the services framework at the end: its app runs exactly its instances, of its current version,
/// and the framework, the agents and the master agree on them.
async fn check_services(
    w: &Shared,
    tables: &Arc<Mutex<ServiceTables>>,
    state: &master::StateSnapshot,
    problems: &mut Vec<String>,
) {
    let Some(handle) = lock(w).services.running.as_ref().map(|(h, _)| h.clone()) else {
        problems.push("the services framework is not running at the end".into());
        return;
    };
    let Ok(snapshot) = handle.snapshot().await else {
        problems.push("the services framework does not answer".into());
        return;
    };
    let version = lock(tables).apps.get(SERVICE_APP).and_then(|a| a.version.clone()).unwrap_or_default();
    let instances: BTreeMap<String, (TaskState, String)> =
        snapshot.instances.iter().map(|i| (i.id.clone(), (i.state, i.version.clone()))).collect();
    let running = instances.values().filter(|(s, v)| *s == TaskState::Running && *v == version).count();
    if instances.len() != SERVICE_INSTANCES as usize || running != SERVICE_INSTANCES as usize {
        problems.push(format!(
            "the services framework has {} instances ({running} running at version {version}), wants {SERVICE_INSTANCES}: {instances:?}",
            instances.len()
        ));
    }
    let believed: BTreeSet<TaskId> = instances.keys().filter_map(|id| TaskId::parse(id).ok()).collect();
    let fid = FrameworkId::parse(SERVICES_ID).unwrap();
    agree(&lock(w), state, &fid, "the services framework", &believed, problems);
}

/// Checks that the agents run exactly the tasks framework `fid` (`who`) believes live, and that the master
/// reports those same tasks, all running.
fn agree(
    w: &World,
    state: &master::StateSnapshot,
    fid: &FrameworkId,
    who: &str,
    believed: &BTreeSet<TaskId>,
    problems: &mut Vec<String>,
) {
    let on_agents: BTreeSet<TaskId> = w
        .hosts
        .iter()
        .flat_map(|h| h.tasks.iter())
        .filter(|((owner, _), t)| owner == fid && !t.state.is_terminal())
        .map(|((_, id), _)| id.clone())
        .collect();
    if on_agents != *believed {
        problems.push(format!("agents run {on_agents:?} of {who}, which believes {believed:?}"));
    }
    let reported: Vec<&master::TaskView> = state.tasks.iter().filter(|t| &t.framework_id == fid).collect();
    let in_master: BTreeSet<TaskId> =
        reported.iter().filter(|t| t.state == TaskState::Running).map(|t| t.id.clone()).collect();
    if reported.len() != in_master.len() || in_master != on_agents {
        let all: Vec<String> = reported.iter().map(|t| format!("{} {}", t.id, t.state.name())).collect();
        problems.push(format!("the master reports {all:?} of {who}, agents run {on_agents:?}"));
    }
}

// ---- the cron framework: the real actor ----

const CRON_ID: &str = "sim-cron";
/// Its one job ticks every 10 s; each run's task runs for 3 s (the agents finish it).
const CRON_JOB: &str = "tick";
const CRON_EVERY_SECONDS: i64 = 10;
const CRON_TASK_SECONDS: u64 = 3;
/// The label that makes a simulated agent finish a task after that many seconds.
const RUNS_FOR: &str = "sim-runs-for";

/// The cron framework's tables, in memory, beside the registry: away when the database is.
#[derive(Default)]
struct CronTables {
    jobs: BTreeMap<JobId, Job>,
    runs: BTreeMap<(JobId, String), Run>,
    stats: BTreeMap<JobId, JobStats>,
    framework_id: Option<String>,
}

struct MemCronStore {
    db: Arc<Mutex<Db>>,
    tables: Arc<Mutex<CronTables>>,
}

impl MemCronStore {
    /// Runs `f` on the tables, as the database would: not at all when it is away, and with its answer
    /// lost (an error, though written) when writes are ambiguous.
    fn with<T>(
        &self,
        what: &'static str,
        write: bool,
        f: impl FnOnce(&mut CronTables) -> T,
    ) -> Result<T, JobStoreError> {
        let lost = || JobStoreError::Store(StoreError::Query { what, source: sqlx::Error::PoolTimedOut });
        if lock(&self.db).down {
            return Err(lost());
        }
        let out = f(&mut lock(&self.tables));
        if write && lock(&self.db).ambiguous {
            return Err(lost());
        }
        Ok(out)
    }
}

fn is_open(status: RunStatus) -> bool {
    matches!(status, RunStatus::Initial | RunStatus::Starting | RunStatus::Active)
}

#[async_trait::async_trait]
impl CronStore for MemCronStore {
    async fn put_job(&self, job: &Job) -> Result<(), JobStoreError> {
        self.with("put job", true, |t| {
            t.jobs.insert(job.id.clone(), job.clone());
        })
    }
    async fn delete_job(&self, id: &JobId) -> Result<bool, JobStoreError> {
        self.with("delete job", true, |t| t.jobs.remove(id).is_some())
    }
    async fn jobs(&self) -> Result<Vec<Job>, JobStoreError> {
        self.with("jobs", false, |t| t.jobs.values().cloned().collect())
    }
    async fn insert_runs(&self, runs: &[Run]) -> Result<Vec<bool>, JobStoreError> {
        self.with("insert runs", true, |t| {
            runs.iter()
                .map(|r| {
                    // (job, trigger key) is unique, as in the database.
                    let taken = t.runs.values().any(|o| o.job_id == r.job_id && o.trigger_key == r.trigger_key);
                    if !taken {
                        t.runs.insert((r.job_id.clone(), r.id.clone()), r.clone());
                    }
                    !taken
                })
                .collect()
        })
    }
    async fn update_runs(&self, runs: &[(Run, bool)]) -> Result<(), JobStoreError> {
        self.with("update runs", true, |t| {
            for (r, counted) in runs {
                let Some(stored) = t.runs.get_mut(&(r.job_id.clone(), r.id.clone())) else { continue };
                // A finished run counts once: only while it is still open in the store.
                if *counted && !is_open(stored.status) {
                    continue;
                }
                *stored = Run { trigger_key: stored.trigger_key.clone(), ..r.clone() };
                if *counted {
                    let s = t.stats.entry(r.job_id.clone()).or_default();
                    match r.status {
                        RunStatus::Success => s.success_count += 1,
                        RunStatus::Failed => s.error_count += 1,
                        RunStatus::Missed => s.missed_count += 1,
                        _ => {}
                    }
                }
            }
        })
    }
    async fn set_tails(&self, job: &JobId, run: &str, stdout: &str, stderr: &str) -> Result<(), JobStoreError> {
        self.with("set tails", true, |t| {
            if let Some(r) = t.runs.get_mut(&(job.clone(), run.to_owned())) {
                r.stdout_tail = stdout.to_owned();
                r.stderr_tail = stderr.to_owned();
            }
        })
    }
    async fn add_missed(&self, job: &JobId, n: u64) -> Result<(), JobStoreError> {
        self.with("add missed", true, |t| t.stats.entry(job.clone()).or_default().missed_count += n)
    }
    async fn open_runs(&self) -> Result<Vec<Run>, JobStoreError> {
        self.with("open runs", false, |t| {
            let mut open: Vec<Run> = t.runs.values().filter(|r| is_open(r.status)).cloned().collect();
            open.sort_by_key(|r| r.scheduled_at);
            open
        })
    }
    async fn run_by_trigger(&self, job: &JobId, trigger_key: &str) -> Result<Option<Run>, JobStoreError> {
        self.with("run by trigger", false, |t| {
            t.runs.values().find(|r| &r.job_id == job && r.trigger_key == trigger_key).cloned()
        })
    }
    async fn run(&self, job: &JobId, id: &str) -> Result<Option<Run>, JobStoreError> {
        self.with("run", false, |t| t.runs.get(&(job.clone(), id.to_owned())).cloned())
    }
    async fn last_ticks(&self) -> Result<HashMap<(JobId, String), i64>, JobStoreError> {
        self.with("last ticks", false, |t| {
            let mut out: HashMap<(JobId, String), i64> = HashMap::new();
            for r in t.runs.values() {
                if let Trigger::Schedule(sid) = &r.trigger {
                    let at = out.entry((r.job_id.clone(), sid.clone())).or_insert(r.scheduled_at);
                    *at = (*at).max(r.scheduled_at);
                }
            }
            out
        })
    }
    async fn last_successes(&self) -> Result<HashMap<JobId, (i64, String)>, JobStoreError> {
        self.with("last successes", false, |t| {
            let mut out: HashMap<JobId, (i64, String)> = HashMap::new();
            for r in t.runs.values().filter(|r| r.status == RunStatus::Success) {
                let at = r.finished_at.unwrap_or_default();
                if out.get(&r.job_id).is_none_or(|(f, _)| at > *f) {
                    out.insert(r.job_id.clone(), (at, r.id.clone()));
                }
            }
            out
        })
    }
    async fn last_dependency_runs(&self) -> Result<HashMap<JobId, i64>, JobStoreError> {
        self.with("last dependency runs", false, |t| {
            let mut out: HashMap<JobId, i64> = HashMap::new();
            for r in t.runs.values().filter(|r| r.trigger == Trigger::Parents) {
                let at = out.entry(r.job_id.clone()).or_insert(r.created_at);
                *at = (*at).max(r.created_at);
            }
            out
        })
    }
    async fn stats(&self) -> Result<HashMap<JobId, JobStats>, JobStoreError> {
        self.with("stats", false, |t| t.stats.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    async fn prune(&self, _job: &JobId, _keep: i64) -> Result<u64, JobStoreError> {
        // Runs are kept: the checks read every one. (Pruning is due hourly; a simulated run lasts 150 s.)
        self.with("prune", true, |_| 0)
    }
    async fn framework_id(&self) -> Result<Option<String>, JobStoreError> {
        self.with("framework id", false, |t| t.framework_id.clone())
    }
    async fn set_framework_id(&self, id: &str) -> Result<(), JobStoreError> {
        self.with("set framework id", true, |t| t.framework_id = Some(id.to_owned()))
    }
}

fn cron_job(now: i64) -> Job {
    let mut job = Job::new(JobId::parse(CRON_JOB).unwrap());
    job.run.cmd = Some("sleep 3".into());
    job.run.cpus = 0.1;
    job.run.mem = 16.0;
    job.labels.insert(RUNS_FOR.into(), CRON_TASK_SECONDS.to_string());
    job.schedules.push(ScheduleSpec {
        id: "every-10s".into(),
        expr: ScheduleExpr::Cron(format!("*/{CRON_EVERY_SECONDS} * * * * *")),
        time_zone: String::new(),
        concurrency_policy: ConcurrencyPolicy::Allow,
        starting_deadline_seconds: 60,
        enabled: true,
    });
    job.updated_at = now;
    job
}

/// Where the cron schedule's time starts: tokio's clock is mapped onto this instant.
fn cron_epoch() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a valid instant")
}

/// Runs the cron framework, restarting it after each crash from what its store holds.
async fn cron(w: Shared, db: Arc<Mutex<Db>>, tables: Arc<Mutex<CronTables>>) {
    let start = lock(&w).start;
    loop {
        let down = lock(&w).cron.down_until;
        if let Some(until) = down {
            sleep_until(until).await;
        }
        let store = MemCronStore { db: db.clone(), tables: tables.clone() };
        let stop = CancellationToken::new();
        let clock = Clock::Tokio { at: cron_epoch(), since: start };
        let link = Arc::new(SimLink { w: w.clone(), cron: true });
        match keel_chronos::scheduler::start_on(link, Arc::new(store), clock, "", None, stop.clone()).await {
            Ok(_) => {
                let mut world = lock(&w);
                world.note("cron framework started".into());
                world.cron.stop = Some(stop.clone());
                world.cron.down_until = None;
            }
            Err(_) => {
                sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        stop.cancelled().await;
    }
}

/// Checks the cron framework at the end: each tick of its job ran once or was recorded missed, and the
/// agents run no task of it but those of runs still open.
fn check_cron(w: &World, tables: &Arc<Mutex<CronTables>>, problems: &mut Vec<String>) {
    let t = lock(tables);
    let job = JobId::parse(CRON_JOB).unwrap();
    let epoch = cron_epoch().timestamp_millis();
    let elapsed = (Instant::now() - w.start).as_millis() as i64;
    // Ticks old enough to have finished: a run takes 3 s, a lost launch is found within the 30 s of a
    // reconciliation pass.
    let settled = epoch + elapsed - 40_000;
    let runs: BTreeMap<i64, &Run> = t.runs.values().filter(|r| r.job_id == job).map(|r| (r.scheduled_at, r)).collect();
    let mut tick = epoch + CRON_EVERY_SECONDS * 1000;
    while tick <= settled {
        match runs.get(&tick) {
            None => problems.push(format!("the cron tick at +{} s has no run", (tick - epoch) / 1000)),
            Some(r) if is_open(r.status) => problems.push(format!(
                "the cron tick at +{} s is still {}: {r:?}",
                (tick - epoch) / 1000,
                r.status.name()
            )),
            Some(_) => {}
        }
        tick += CRON_EVERY_SECONDS * 1000;
    }
    let fid = FrameworkId::parse(CRON_ID).unwrap();
    let open: BTreeSet<String> =
        t.runs.values().filter(|r| is_open(r.status)).flat_map(|r| r.task_ids.iter().cloned()).collect();
    for ((owner, id), task) in w.hosts.iter().flat_map(|h| h.tasks.iter()) {
        if *owner == fid && !task.state.is_terminal() && !open.contains(id.as_str()) {
            problems.push(format!("an agent runs {id} of the cron framework, whose run is over"));
        }
    }
}

// ---- the masters and the faults ----

/// The running leader, if any: stopping it is a crash (SIGKILL): nothing is resigned or flushed.
struct Leader {
    term: i64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Leader {
    fn crash(&self, w: &Shared) {
        self.stop.cancel();
        self.task.abort();
        lock(w).leader = None;
    }
}

/// Elects masters until one starts (the database may be away).
async fn elect_until_one_leads(w: &Shared, db: &Arc<Mutex<Db>>) -> Leader {
    loop {
        if let Some(l) = elect(w, db).await {
            return l;
        }
        sleep(Duration::from_millis(500)).await;
    }
}

async fn elect(w: &Shared, db: &Arc<Mutex<Db>>) -> Option<Leader> {
    let term = {
        let mut db = lock(db);
        if db.down {
            return None;
        }
        db.term += 1;
        db.term
    };
    let stop = CancellationToken::new();
    let config = MasterConfig::default();
    let store = MemStore { db: db.clone(), term };
    let (handle, task) = master::start(config, store, stop.clone()).await.ok()?;
    let mut w = lock(w);
    w.note(format!("master elected at term {term}"));
    w.leader = Some(handle);
    Some(Leader { term, stop, task })
}

#[derive(Debug)]
enum Fault {
    MasterCrash {
        down: Duration,
    },
    /// The leader alone loses the database: it steps down after 1.4 s (the real `Tenure`), and a standby
    /// takes over once the 2 s lease has run out.
    LeaderCutFromDatabase {
        renewed_ago: Duration,
    },
    DatabaseDown {
        down: Duration,
    },
    Partition {
        agent: usize,
        down: Duration,
    },
    /// The host reboots: its tasks die. With `keeps_records`, the agent recovers its checkpointed tasks
    /// and reports them failed, with updates to deliver (the real agent's recovery); without, its work
    /// directory is gone with them.
    Reboot {
        agent: usize,
        down: Duration,
        keeps_records: bool,
    },
    AgentReconnect {
        agent: usize,
    },
    FrameworkReconnect {
        framework: usize,
    },
    TaskFails,
    /// The services framework crashes, and is started again after `down` from what its store holds.
    ServicesCrash {
        down: Duration,
    },
    ServicesReconnect,
    /// A restart of the services framework's app: a rolling deployment, which faults may interrupt.
    AppRestart,
    /// The cron framework crashes, and is started again after `down` from what its store holds.
    CronCrash {
        down: Duration,
    },
    CronReconnect,
    /// For a while, the frameworks' writes land but their answers are lost (a commit whose answer the
    /// network ate): each must reload and look, never guess.
    AmbiguousWrites {
        lasting: Duration,
    },
}

fn schedule(rng: &mut StdRng) -> Vec<(Duration, Fault)> {
    let n = rng.random_range(3..=10);
    let mut faults: Vec<(Duration, Fault)> = (0..n)
        .map(|_| {
            let at = Duration::from_millis(rng.random_range(5_000..FAULTS_FOR.as_millis() as u64));
            let secs =
                |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo * 1000..hi * 1000));
            let fault = match rng.random_range(0..14) {
                0 => Fault::MasterCrash { down: secs(rng, 1, 4) },
                7 => Fault::LeaderCutFromDatabase { renewed_ago: Duration::from_millis(rng.random_range(0..400)) },
                1 => Fault::DatabaseDown { down: secs(rng, 1, 6) },
                2 => Fault::Partition { agent: rng.random_range(0..AGENTS), down: secs(rng, 1, 20) },
                3 => Fault::Reboot {
                    agent: rng.random_range(0..AGENTS),
                    down: secs(rng, 1, 20),
                    keeps_records: rng.random_bool(0.5),
                },
                4 => Fault::AgentReconnect { agent: rng.random_range(0..AGENTS) },
                5 => Fault::FrameworkReconnect { framework: rng.random_range(0..FRAMEWORKS) },
                8 => Fault::ServicesCrash { down: secs(rng, 1, 6) },
                9 => Fault::ServicesReconnect,
                10 => Fault::AppRestart,
                11 => Fault::CronCrash { down: secs(rng, 1, 30) },
                12 => Fault::CronReconnect,
                13 => Fault::AmbiguousWrites { lasting: secs(rng, 1, 5) },
                _ => Fault::TaskFails,
            };
            (at, fault)
        })
        .collect();
    faults.sort_by_key(|(at, _)| *at);
    faults
}

async fn chaos(w: Shared, db: Arc<Mutex<Db>>, faults: Vec<(Duration, Fault)>) {
    let start = lock(&w).start;
    let mut leader = elect_until_one_leads(&w, &db).await;
    for (at, fault) in faults {
        sleep_until(start + at).await;
        let now = Instant::now();
        lock(&w).note(format!("fault {fault:?}"));
        match fault {
            Fault::MasterCrash { down } => {
                leader.crash(&w);
                sleep(down).await;
                leader = elect_until_one_leads(&w, &db).await;
            }
            Fault::LeaderCutFromDatabase { renewed_ago } => {
                lock(&db).cut_off.insert(leader.term);
                // It keeps acting on what it holds in memory until it steps down...
                sleep(Duration::from_millis(1400) - renewed_ago).await;
                leader.crash(&w);
                // ...and the lease, last renewed `renewed_ago` before the cut, runs out 2 s after that.
                sleep(Duration::from_millis(600)).await;
                leader = elect_until_one_leads(&w, &db).await;
            }
            Fault::DatabaseDown { down } => {
                lock(&db).down = true;
                sleep(down).await;
                lock(&db).down = false;
            }
            Fault::Partition { agent, down } => {
                // The agent's stream breaks on its side too; it registers again once the partition heals.
                let mut w = lock(&w);
                w.hosts[agent].partitioned_until = Some(now + down);
                w.hosts[agent].generation += 1;
            }
            Fault::Reboot { agent, down, keeps_records } => {
                let mut w = lock(&w);
                let id = agent_id(agent);
                let host = &mut w.hosts[agent];
                if keeps_records {
                    for ((fid, tid), t) in host.tasks.iter_mut().filter(|(_, t)| !t.state.is_terminal()) {
                        t.state = TaskState::Failed;
                        // Sent at the agent's next retry tick (the real one sends at once; no matter here).
                        t.pending.push_back(status(
                            fid,
                            tid,
                            &id,
                            TaskState::Failed,
                            2_000_000 + t.pending.len() as u64,
                        ));
                    }
                } else {
                    host.tasks.clear();
                }
                host.down_until = Some(now + down);
                host.generation += 1;
            }
            Fault::AgentReconnect { agent } => lock(&w).hosts[agent].generation += 1,
            Fault::FrameworkReconnect { framework } => lock(&w).frameworks[framework].generation += 1,
            Fault::ServicesCrash { down } => {
                let mut w = lock(&w);
                if let Some((_, stop)) = w.services.running.take() {
                    stop.cancel();
                    w.services.down_until = Some(now + down);
                }
            }
            Fault::ServicesReconnect => lock(&w).services.generation += 1,
            Fault::CronCrash { down } => {
                let mut w = lock(&w);
                if let Some(stop) = w.cron.stop.take() {
                    stop.cancel();
                    w.cron.down_until = Some(now + down);
                }
            }
            Fault::CronReconnect => lock(&w).cron.generation += 1,
            Fault::AmbiguousWrites { lasting } => {
                lock(&db).ambiguous = true;
                sleep(lasting).await;
                lock(&db).ambiguous = false;
            }
            Fault::AppRestart => {
                let handle = lock(&w).services.running.as_ref().map(|(h, _)| h.clone());
                if let Some(handle) = handle {
                    let outcome = handle.change(AppId::parse(SERVICE_APP).unwrap(), AppChange::Restart, true).await;
                    lock(&w).note(format!("app restart: {}", if outcome.is_ok() { "deploying" } else { "refused" }));
                }
            }
            Fault::TaskFails => {
                let mut w = lock(&w);
                let picks: Vec<(usize, (FrameworkId, TaskId))> = w
                    .hosts
                    .iter()
                    .enumerate()
                    .flat_map(|(i, h)| {
                        h.tasks
                            .iter()
                            .filter(|(_, t)| t.state == TaskState::Running)
                            .map(move |(id, _)| (i, id.clone()))
                    })
                    .collect();
                if !picks.is_empty() {
                    let (i, id) = picks[w.rng.random_range(0..picks.len())].clone();
                    let agent = agent_id(i);
                    let t = w.hosts[i].tasks.get_mut(&id).unwrap();
                    t.state = TaskState::Failed;
                    t.pending.push_back(status(
                        &id.0,
                        &id.1,
                        &agent,
                        TaskState::Failed,
                        1_000_000 + t.pending.len() as u64,
                    ));
                }
            }
        }
    }
    // Keep the leader alive until the run ends.
    std::future::pending::<()>().await;
    drop(leader);
}

/// Plays one seed; answers its trace, or what went wrong with it.
fn run(seed: u64) -> Result<Vec<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    rt.block_on(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let faults = schedule(&mut rng);
        let loss = if rng.random_bool(0.5) { 0.03 } else { 0.0 };
        let max_delay_ms = rng.random_range(0..500);
        let w: Shared = Arc::new(Mutex::new(World {
            rng,
            start: Instant::now(),
            leader: None,
            hosts: (0..AGENTS).map(|_| AgentHost::default()).collect(),
            frameworks: (0..FRAMEWORKS).map(|_| Believed::default()).collect(),
            services: Services::default(),
            cron: Life::default(),
            started: BTreeMap::new(),
            trace: vec![],
            violations: vec![],
            loss,
            max_delay_ms,
        }));
        let db = Arc::new(Mutex::new(Db::default()));
        let tables = Arc::new(Mutex::new(ServiceTables::default()));
        {
            let mut t = lock(&tables);
            t.framework_id = Some(SERVICES_ID.into());
            let app = service_app();
            t.versions.insert((SERVICE_APP.into(), app.version.clone().unwrap_or_default()), app.clone());
            t.apps.insert(SERVICE_APP.into(), app);
        }
        let cron_tables = Arc::new(Mutex::new(CronTables::default()));
        {
            let mut t = lock(&cron_tables);
            t.framework_id = Some(CRON_ID.into());
            let job = cron_job(cron_epoch().timestamp_millis());
            t.jobs.insert(job.id.clone(), job);
        }
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(chaos(w.clone(), db.clone(), faults));
        for i in 0..AGENTS {
            tasks.spawn(agent(w.clone(), i));
        }
        for k in 0..FRAMEWORKS {
            tasks.spawn(framework(w.clone(), k));
        }
        tasks.spawn(services(w.clone(), db.clone(), tables.clone()));
        tasks.spawn(cron(w.clone(), db.clone(), cron_tables.clone()));
        sleep(FAULTS_FOR + SETTLE_FOR).await;
        let handle = lock(&w).leader.clone().ok_or("no master leads at the end")?;
        let state = handle.state().await.map_err(|e| format!("the master does not answer: {e}"))?;
        let mut problems = Vec::new();
        check_services(&w, &tables, &state, &mut problems).await;
        tasks.abort_all();
        if let Some((_, stop)) = lock(&w).services.running.take() {
            stop.cancel();
        }
        if let Some(stop) = lock(&w).cron.stop.take() {
            stop.cancel();
        }
        let w = lock(&w);
        check_cron(&w, &cron_tables, &mut problems);
        problems.extend(w.violations.iter().cloned());
        for (k, f) in w.frameworks.iter().enumerate() {
            let fid = framework_id(k);
            let believed: BTreeSet<TaskId> = f.live.keys().cloned().collect();
            let running = f.live.values().filter(|(s, _)| *s == TaskState::Running).count();
            if believed.len() != WANTED || running != WANTED {
                problems.push(format!(
                    "framework {k} believes {} tasks live ({running} running), wants {WANTED}: {:?}",
                    believed.len(),
                    f.live
                ));
            }
            agree(&w, &state, &fid, &format!("framework {k}"), &believed, &mut problems);
        }
        if problems.is_empty() {
            Ok(w.trace.clone())
        } else {
            Err(format!("{}\ntrace:\n{}", problems.join("\n"), w.trace.join("\n")))
        }
    })
}

#[test]
fn a_thousand_seeded_schedules_of_faults_keep_every_invariant() {
    if let Ok(seed) = std::env::var("KEEL_SIM_SEED") {
        let seed: u64 = seed.parse().expect("KEEL_SIM_SEED is a number");
        // The actors' own logs, between the trace's lines: `KEEL_SIM_LOG=debug` (any tracing filter).
        if let Ok(filter) = std::env::var("KEEL_SIM_LOG") {
            tracing_subscriber::fmt().with_env_filter(filter).without_time().with_test_writer().init();
        }
        match run(seed) {
            Ok(trace) => eprintln!("seed {seed} kept every invariant; its trace:\n{}", trace.join("\n")),
            Err(e) => panic!("seed {seed}: {e}"),
        }
        return;
    }
    let seeds: u64 = std::env::var("KEEL_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    for seed in 0..seeds {
        if let Err(e) = run(seed) {
            if failed.is_empty() {
                eprintln!("seed {seed} failed (replay with KEEL_SIM_SEED={seed}):\n{e}");
            }
            failed.push(seed);
        }
    }
    eprintln!("{seeds} seeds in {:.1?}", started.elapsed());
    assert!(failed.is_empty(), "{} of {seeds} seeds failed: {failed:?}", failed.len());
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17] {
        let a = run(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let b = run(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(a, b, "two runs of seed {seed} differ");
        assert!(a.iter().any(|l| l.contains("fault")), "seed {seed} played no fault");
        let both =
            (0..FRAMEWORKS).all(|k| a.iter().any(|l| l.ends_with(&format!("starts sim-task-1 of sim-framework-{k}"))));
        assert!(both, "seed {seed}: the frameworks did not both use task id sim-task-1");
        assert!(
            a.iter().any(|l| l.ends_with(&format!("starts svc.000000 of {SERVICES_ID}"))),
            "seed {seed}: the services framework launched nothing"
        );
        assert!(
            a.iter().any(|l| l.ends_with(&format!("of {CRON_ID}"))),
            "seed {seed}: the cron framework launched nothing"
        );
    }
}

/// Seeds beyond the default thousand that once broke an invariant, kept so that their fault stays fixed.
/// 4547 and 4802: after a master failover, an agent that had finished a cron task re-registered reporting it
/// finished, then sent its queued RUNNING update; the master took the task back as live without counting it
/// among the agent's tasks, so when the agent rebooted and lost it, the task stayed RUNNING in the master for
/// ever, and its run ACTIVE.
const REGRESSION_SEEDS: [u64; 2] = [4547, 4802];

#[test]
fn seeds_that_once_failed_keep_every_invariant() {
    for seed in REGRESSION_SEEDS {
        if let Err(e) = run(seed) {
            panic!("seed {seed} (replay with KEEL_SIM_SEED={seed}): {e}");
        }
    }
}
