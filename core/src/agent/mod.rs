//! The agent: it registers its resources with the master, runs the tasks the master sends through a
//! [`Containerizer`], and reports their states until the framework acknowledges each report.
//!
//! One actor ([`Agent`]) owns the tasks. A connection task keeps a gRPC stream to the master open,
//! reconnecting with backoff, and feeds what arrives into the actor. Status updates of a task are queued;
//! only the head is sent, and it is re-sent until acknowledged, so each task's updates arrive at least once
//! and in order. Every change is checkpointed to `WORK_DIR/meta` before it is acted on, so a restarted
//! agent re-attaches to running tasks and re-sends unacknowledged updates. Shutting the agent down never
//! stops its tasks.

pub mod containerizer;
pub mod docker;
mod health;
pub mod memory;
pub mod process;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::{AgentInfo, AgentTask, MasterMessage};
use crate::ids::{AgentId, FrameworkId, TaskId};
use crate::proto;
use crate::proto::agent_service_client::AgentServiceClient;
use crate::resources::{PortSet, Resources, Scalar};
use crate::task::{Source, TaskSpec, TaskState, TaskStatus, now_seconds, reason};

pub use containerizer::{ContainerRecord, Containerizer, LaunchRequest, Termination};

/// The longest wait between two sends of the same unacknowledged update.
pub const MAX_STATUS_RETRY: Duration = Duration::from_secs(60);

/// How long a kill waits between SIGTERM and SIGKILL when the task does not say.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct AgentConfig {
    /// The master: its URL (such as `http://127.0.0.1:5050`), the token presented to it (an `agent` or
    /// `admin` token), and for an https:// master its CA and any client certificate.
    pub master: crate::client::Target,
    /// Sandboxes and checkpoints live here.
    pub work_dir: PathBuf,
    pub resources: Resources,
    pub attributes: Vec<(String, String)>,
    pub hostname: String,
    pub default_kill_grace: Duration,
    /// Re-send an unacknowledged update after this long, doubling up to [`MAX_STATUS_RETRY`].
    pub status_retry: Duration,
    /// Write checkpoints to disk. Off only for simulated agents in benchmarks.
    pub checkpoint: bool,
    /// The user of tasks that name none; `None`: the agent's own user.
    pub default_user: Option<String>,
    /// The only users tasks may run as (`--allowed-users`); empty: any.
    pub allowed_users: Vec<String>,
}

impl AgentConfig {
    pub fn new(master: impl Into<crate::client::Target>, work_dir: impl Into<PathBuf>, resources: Resources) -> Self {
        AgentConfig {
            master: master.into(),
            work_dir: work_dir.into(),
            resources,
            attributes: Vec::new(),
            hostname: hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into()),
            default_kill_grace: DEFAULT_KILL_GRACE,
            status_retry: Duration::from_secs(5),
            checkpoint: true,
            default_user: None,
            allowed_users: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("master", &self.master)
            .field("work_dir", &self.work_dir)
            .field("resources", &self.resources.to_string())
            .field("hostname", &self.hostname)
            .field("default_user", &self.default_user)
            .finish_non_exhaustive()
    }
}

/// The user a task runs as: the one it names, else (for a process) the agent's default. `None` is the
/// agent's own user for a process, and the image's user for a container: an image need not know the
/// agent's default user.
pub fn effective_user(task: &TaskSpec, default: Option<&str>) -> Option<String> {
    match (&task.user, &task.container) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(_)) => None,
        (None, None) => default.map(str::to_owned),
    }
}

/// Why a task may not run as `user` on an agent that allows only `allowed` (none: any); `None` if it may.
/// A task with no user runs as the agent's own, which the operator chose by starting the agent.
pub fn user_refused(user: Option<&str>, allowed: &[String]) -> Option<String> {
    let user = user?;
    (!allowed.is_empty() && !allowed.iter().any(|a| a == user))
        .then(|| format!("user '{user}' is not allowed on this agent (--allowed-users: {})", allowed.join(",")))
}

pub use crate::client::normalize_url;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot use work directory {path}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path} is corrupt")]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("containerizer could not recover: {0}")]
    Recover(#[from] containerizer::ContainerError),
    #[error("the master refused this agent: {0}")]
    Refused(String),
}

/// The resources of this machine: all cpus, memory less 1 GiB (at least half kept), the work dir's free
/// disk less 5 GiB (at least half kept), and ports 31000-32000, as Mesos does.
pub fn detect_resources(work_dir: &Path) -> Resources {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let mem_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(1024.0);
    let disk_mb = nix::sys::statvfs::statvfs(work_dir)
        .map(|s| s.blocks_available() as f64 * s.fragment_size() as f64 / 1_048_576.0)
        .unwrap_or(10_240.0);
    let keep = |total: f64, reserve: f64| (total - reserve).max(total / 2.0).floor();
    Resources {
        cpus: Scalar::from_f64(cpus).unwrap_or_default(),
        mem: Scalar::from_f64(keep(mem_mb, 1024.0)).unwrap_or_default(),
        disk: Scalar::from_f64(keep(disk_mb, 5120.0)).unwrap_or_default(),
        ports: PortSet::from_ranges([(31000, 32000)]).unwrap_or_default(),
    }
}

/// A task as the agent checkpoints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LocalTask {
    framework_id: FrameworkId,
    spec: TaskSpec,
    state: TaskState,
    container: Option<ContainerRecord>,
    /// Updates not yet acknowledged, oldest first; only the first is in flight.
    pending: VecDeque<TaskStatus>,
    kill_requested: bool,
    /// Why the agent itself killed the task (failed health checks), for its final update.
    #[serde(default)]
    kill_reason: Option<String>,
    /// The last health reported, for a re-registration with a restarted master.
    #[serde(default)]
    healthy: Option<bool>,
    #[serde(skip)]
    last_sent: Option<Instant>,
    /// How long after `last_sent` the head is re-sent; doubles on each retry so an overloaded framework
    /// is not buried in duplicates.
    #[serde(skip)]
    backoff: Duration,
}

type Key = (FrameworkId, TaskId);

enum Input {
    /// A stream to the master opened: register on it.
    Connected {
        outbox: mpsc::Sender<proto::AgentMessage>,
        generation: u64,
    },
    Disconnected {
        generation: u64,
    },
    /// The master refused the credential or the agent id: nothing to retry.
    Refused(String),
    FromMaster(MasterMessage),
    Launched {
        key: Key,
        result: Result<ContainerRecord, String>,
    },
    Exited {
        key: Key,
        termination: Termination,
    },
    Health {
        key: Key,
        verdict: health::Verdict,
    },
}

struct Agent {
    config: AgentConfig,
    containerizer: Arc<dyn Containerizer>,
    agent_id: Option<AgentId>,
    tasks: HashMap<Key, LocalTask>,
    outbox: Option<(mpsc::Sender<proto::AgentMessage>, u64)>,
    registered: bool,
    heartbeat: Duration,
    inputs: mpsc::Sender<Input>,
    /// Running health checkers, stopped when their task ends.
    health: HashMap<Key, CancellationToken>,
}

/// Runs an agent until `shutdown` is cancelled. Its tasks keep running after it stops.
pub async fn run(
    config: AgentConfig,
    containerizer: Arc<dyn Containerizer>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let (inputs, mut rx) = mpsc::channel(crate::master::CONNECTION_BUFFER);
    let mut agent = Agent {
        containerizer,
        agent_id: None,
        tasks: HashMap::new(),
        outbox: None,
        registered: false,
        heartbeat: Duration::from_secs(2),
        inputs: inputs.clone(),
        health: HashMap::new(),
        config,
    };
    agent.recover().await?;
    tokio::spawn(connection_loop(agent.config.master.clone(), inputs, shutdown.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_heartbeat = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            input = rx.recv() => match input {
                Some(Input::Refused(reason)) => {
                    error!(%reason, "the master refused this agent; its tasks keep running");
                    return Err(AgentError::Refused(reason));
                }
                Some(input) => agent.handle(input),
                None => break,
            },
            _ = tick.tick() => {
                if agent.registered && last_heartbeat.elapsed() >= agent.heartbeat {
                    last_heartbeat = Instant::now();
                    agent.send(proto::agent_message::Kind::Heartbeat(proto::agent_message::Heartbeat {}));
                }
                agent.retry_updates();
            }
        }
    }
    info!("agent stopped; its tasks keep running");
    Ok(())
}

/// Keeps one stream to the master open, reconnecting with backoff.
async fn connection_loop(target: crate::client::Target, inputs: mpsc::Sender<Input>, shutdown: CancellationToken) {
    let mut generation = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    while !shutdown.is_cancelled() {
        generation += 1;
        let (outbox, rx) = mpsc::channel(crate::master::CONNECTION_BUFFER);
        let attempt = async {
            let channel = target.connect().await.map_err(|e| e.to_string())?;
            let mut client =
                AgentServiceClient::with_interceptor(channel, target.credential()).max_decoding_message_size(64 << 20);
            if inputs.send(Input::Connected { outbox, generation }).await.is_err() {
                return Ok(());
            }
            let mut stream = match client.attach(ReceiverStream::new(rx)).await {
                Ok(r) => r.into_inner(),
                Err(s) if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
                    let _ = inputs.send(Input::Refused(s.message().to_owned())).await;
                    return Ok(());
                }
                Err(s) => return Err(s.message().to_owned()),
            };
            info!(master = %target.current_url(), "connected to master");
            warned = false;
            backoff = Duration::from_millis(100);
            while let Some(msg) = stream.next().await {
                let msg = msg.map_err(|s| s.message().to_owned())?;
                match MasterMessage::try_from(msg) {
                    Ok(m) => {
                        if inputs.send(Input::FromMaster(m)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => warn!(error = %e, "malformed message from master ignored"),
                }
            }
            Err::<(), String>("the master closed the stream".into())
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = shutdown.cancelled() => return,
        };
        if inputs.is_closed() {
            return;
        }
        let _ = inputs.send(Input::Disconnected { generation }).await;
        if let Err(e) = result {
            let master = target.current_url().to_owned();
            if warned {
                debug!(%master, error = %e, "still cannot reach master");
            } else {
                warn!(%master, error = %e, "lost connection to master; reconnecting");
                warned = true;
            }
            // Another master may lead now (or this one was a standby).
            target.rotate();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(target.max_backoff());
    }
}

impl Agent {
    fn meta_dir(&self) -> PathBuf {
        self.config.work_dir.join("meta")
    }

    fn task_file(&self, key: &Key) -> PathBuf {
        self.meta_dir().join("tasks").join(key.0.as_str()).join(format!("{}.json", key.1))
    }

    fn sandbox(&self, key: &Key) -> PathBuf {
        self.config.work_dir.join("sandboxes").join(key.0.as_str()).join(key.1.as_str())
    }

    /// Reads the checkpoints and re-attaches to every container still recorded.
    async fn recover(&mut self) -> Result<(), AgentError> {
        let work_err = |path: &Path| {
            let path = path.to_owned();
            move |source| AgentError::WorkDir { path, source }
        };
        let meta = self.meta_dir();
        std::fs::create_dir_all(meta.join("tasks")).map_err(work_err(&meta))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&meta, std::fs::Permissions::from_mode(0o700)).map_err(work_err(&meta))?;
        }
        // Containers mount sandboxes by absolute path.
        self.config.work_dir = std::fs::canonicalize(&self.config.work_dir).map_err(work_err(&self.config.work_dir))?;
        if let Ok(id) = std::fs::read_to_string(meta.join("agent_id"))
            && let Ok(id) = AgentId::parse(id.trim())
        {
            self.agent_id = Some(id);
        }
        let tasks_dir = meta.join("tasks");
        for fw_dir in std::fs::read_dir(&tasks_dir).map_err(work_err(&tasks_dir))?.flatten() {
            for entry in std::fs::read_dir(fw_dir.path()).map_err(work_err(&fw_dir.path()))?.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let bytes = std::fs::read(&path).map_err(work_err(&path))?;
                let task: LocalTask = serde_json::from_slice(&bytes)
                    .map_err(|source| AgentError::Checkpoint { path: path.clone(), source })?;
                self.tasks.insert((task.framework_id.clone(), task.spec.id.clone()), task);
            }
        }
        let records: Vec<ContainerRecord> =
            self.tasks.values().filter(|t| !t.state.is_terminal()).filter_map(|t| t.container.clone()).collect();
        self.containerizer.recover(self.agent_id.as_ref(), &self.config.work_dir, &records).await?;
        let keys: Vec<Key> = self.tasks.keys().cloned().collect();
        for key in keys {
            let task = &self.tasks[&key];
            if task.state.is_terminal() {
                continue;
            }
            match task.container.clone() {
                Some(record) => {
                    info!(task_id = %key.1, "re-attaching to task");
                    self.start_health(&key, &record);
                    self.watch(key, record);
                }
                None => {
                    let status = self.status(
                        &key.1,
                        TaskState::Failed,
                        reason::AGENT_RESTARTED,
                        "the agent restarted while launching the task".into(),
                    );
                    self.push_update(&key, status);
                }
            }
        }
        info!(agent_id = ?self.agent_id, tasks = self.tasks.len(), containerizer = self.containerizer.name(), "agent recovered");
        Ok(())
    }

    fn checkpoint(&self, key: &Key) {
        if !self.config.checkpoint {
            return;
        }
        let path = self.task_file(key);
        let result = (|| {
            let Some(task) = self.tasks.get(key) else {
                return match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                };
            };
            std::fs::create_dir_all(path.parent().expect("task file has a parent"))?;
            // Checkpoints hold tasks' environments, secrets included: readable by the agent only.
            let tmp = path.with_extension("json.tmp");
            let _ = std::fs::remove_file(&tmp);
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&serde_json::to_vec(task)?)?;
            drop(f);
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            error!(path = %path.display(), error = %e, "cannot checkpoint task");
        }
    }

    fn send(&mut self, kind: proto::agent_message::Kind) -> bool {
        let Some((outbox, _)) = &self.outbox else { return false };
        // A full outbox means the master is not reading; the retry timer re-sends updates.
        outbox.try_send(proto::AgentMessage { kind: Some(kind) }).is_ok()
    }

    /// Sends the head of a task's queue; `retry` when it is the same update sent again.
    fn send_head(&mut self, key: &Key, retry: bool) {
        if !self.registered {
            return;
        }
        let first = self.config.status_retry;
        let Some(task) = self.tasks.get_mut(key) else { return };
        let Some(status) = task.pending.front() else { return };
        task.last_sent = Some(Instant::now());
        task.backoff = if retry { (task.backoff * 2).clamp(first, MAX_STATUS_RETRY) } else { first };
        let msg = proto::agent_message::Kind::StatusUpdate(proto::agent_message::StatusUpdate {
            framework_id: key.0.to_string(),
            status: Some(status.into()),
        });
        self.send(msg);
    }

    fn retry_updates(&mut self) {
        let due: Vec<Key> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.pending.is_empty() && t.last_sent.is_none_or(|s| s.elapsed() >= t.backoff))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            debug!(task_id = %key.1, "re-sending unacknowledged update");
            self.send_head(&key, true);
        }
    }

    fn status(&self, task_id: &TaskId, state: TaskState, reason: &str, message: String) -> TaskStatus {
        TaskStatus {
            task_id: task_id.clone(),
            state,
            message,
            source: Source::Agent,
            reason: Some(reason.to_owned()),
            agent_id: self.agent_id.clone(),
            uuid: Some(uuid::Uuid::new_v4().to_string()),
            timestamp: now_seconds(),
            exit_code: None,
            healthy: None,
        }
    }

    /// Records a new state and queues its update for reliable delivery.
    fn push_update(&mut self, key: &Key, status: TaskStatus) {
        let Some(task) = self.tasks.get_mut(key) else { return };
        task.state = status.state;
        if status.healthy.is_some() {
            task.healthy = status.healthy;
        }
        task.pending.push_back(status);
        let first = task.pending.len() == 1;
        self.checkpoint(key);
        if first {
            self.send_head(key, false);
        }
    }

    fn watch(&self, key: Key, record: ContainerRecord) {
        let containerizer = self.containerizer.clone();
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let termination = containerizer.wait(&record).await;
            let _ = inputs.send(Input::Exited { key, termination }).await;
        });
    }

    fn launch_request(&self, key: &Key, spec: &TaskSpec) -> LaunchRequest {
        LaunchRequest {
            framework_id: key.0.clone(),
            agent_id: self.agent_id.clone().unwrap_or_else(|| AgentId::parse("unregistered").expect("valid id")),
            task: spec.clone(),
            sandbox: self.sandbox(key),
            user: effective_user(spec, self.config.default_user.as_deref()),
        }
    }

    fn start_health(&mut self, key: &Key, record: &ContainerRecord) {
        let Some(task) = self.tasks.get(key) else { return };
        let Some(check) = task.spec.health_check.clone() else { return };
        let port = match check.kind {
            crate::task::HealthCheckKind::Http { port_index, .. }
            | crate::task::HealthCheckKind::Tcp { port_index } => task.spec.port(port_index),
            crate::task::HealthCheckKind::Command { .. } => None,
        };
        let request = self.launch_request(key, &task.spec);
        let cancel = CancellationToken::new();
        if let Some(old) = self.health.insert(key.clone(), cancel.clone()) {
            old.cancel();
        }
        let probe = health::Probe { key: key.clone(), check, port, record: record.clone(), request };
        health::spawn(probe, self.containerizer.clone(), self.inputs.clone(), cancel);
    }

    fn health_verdict(&mut self, key: Key, verdict: health::Verdict) {
        let Some(task) = self.tasks.get_mut(&key) else { return };
        if task.state.is_terminal() || task.kill_requested {
            return;
        }
        match verdict {
            health::Verdict::Healthy(healthy, message) => {
                info!(task_id = %key.1, healthy, %message, "task health changed");
                let mut status = self.status(&key.1, TaskState::Running, reason::HEALTH_CHECK, message);
                status.healthy = Some(healthy);
                self.push_update(&key, status);
            }
            health::Verdict::Kill(message) => {
                warn!(task_id = %key.1, %message, "killing unhealthy task");
                task.kill_requested = true;
                task.kill_reason = Some(message);
                self.checkpoint(&key);
                self.kill(&key);
            }
        }
    }

    fn kill(&self, key: &Key) {
        let Some(task) = self.tasks.get(key) else { return };
        let Some(record) = task.container.clone() else { return };
        let grace = task.spec.kill_grace.unwrap_or(self.config.default_kill_grace);
        let containerizer = self.containerizer.clone();
        let task_id = key.1.clone();
        tokio::spawn(async move {
            if let Err(e) = containerizer.kill(&record, grace).await {
                error!(%task_id, error = %e, "kill failed");
            }
        });
    }

    fn register_message(&self) -> proto::agent_message::Kind {
        let info = AgentInfo {
            id: self.agent_id.clone(),
            hostname: self.config.hostname.clone(),
            resources: self.config.resources.clone(),
            attributes: self.config.attributes.clone(),
            docker: self.containerizer.supports_docker(),
        };
        let tasks = self
            .tasks
            .iter()
            .map(|((fid, _), t)| {
                proto::AgentTask::from(&AgentTask {
                    framework_id: fid.clone(),
                    spec: t.spec.clone(),
                    state: t.state,
                    healthy: t.healthy,
                })
            })
            .collect();
        proto::agent_message::Kind::Register(proto::agent_message::Register { info: Some((&info).into()), tasks })
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Connected { outbox, generation } => {
                self.outbox = Some((outbox, generation));
                self.registered = false;
                let register = self.register_message();
                self.send(register);
            }
            Input::Disconnected { generation } => {
                if self.outbox.as_ref().is_some_and(|(_, g)| *g == generation) {
                    self.outbox = None;
                    self.registered = false;
                }
            }
            Input::Refused(_) => {}
            Input::FromMaster(msg) => self.master_message(msg),
            Input::Launched { key, result } => self.launched(key, result),
            Input::Exited { key, termination } => self.exited(key, termination),
            Input::Health { key, verdict } => self.health_verdict(key, verdict),
        }
    }

    fn master_message(&mut self, msg: MasterMessage) {
        match msg {
            MasterMessage::Registered { agent_id, heartbeat_interval } => {
                if self.agent_id.as_ref() != Some(&agent_id) {
                    let path = self.meta_dir().join("agent_id");
                    if let Err(e) = std::fs::write(&path, agent_id.as_str()) {
                        error!(path = %path.display(), error = %e, "cannot checkpoint agent id");
                    }
                    self.agent_id = Some(agent_id.clone());
                }
                info!(agent_id = %agent_id, "registered with master");
                self.registered = true;
                self.heartbeat = heartbeat_interval.max(Duration::from_millis(100));
                let keys: Vec<Key> = self.tasks.keys().cloned().collect();
                for key in keys {
                    self.send_head(&key, false);
                }
            }
            MasterMessage::RunTask { framework_id, spec } => self.run_task(framework_id, *spec),
            MasterMessage::KillTask { framework_id, task_id } => {
                let key = (framework_id, task_id);
                match self.tasks.get_mut(&key) {
                    Some(task) if !task.state.is_terminal() => {
                        info!(task_id = %key.1, "kill requested");
                        task.kill_requested = true;
                        self.checkpoint(&key);
                        self.kill(&key);
                    }
                    Some(_) => {}
                    None => {
                        // The master thinks the task is here; tell it it is not, once.
                        let mut status = self.status(
                            &key.1,
                            TaskState::Lost,
                            reason::NOT_FOUND_ON_AGENT,
                            "the agent has no such task".into(),
                        );
                        status.uuid = None;
                        let msg = proto::agent_message::Kind::StatusUpdate(proto::agent_message::StatusUpdate {
                            framework_id: key.0.to_string(),
                            status: Some((&status).into()),
                        });
                        self.send(msg);
                    }
                }
            }
            MasterMessage::ReadFile { request_id, framework_id, task_id, file, offset, length } => {
                let path = self.sandbox(&(framework_id, task_id)).join(&file);
                let result = read_chunk(&path, offset, length);
                let (data, offset, size, error) = match result {
                    Ok((data, offset, size)) => (data, offset, size, String::new()),
                    Err(e) => (Vec::new(), 0, 0, format!("cannot read {file} of the task: {e}")),
                };
                let msg = proto::agent_message::FileData { request_id, data, offset, size, error };
                self.send(proto::agent_message::Kind::FileData(msg));
            }
            MasterMessage::Acknowledge { framework_id, task_id, uuid } => {
                let key = (framework_id, task_id);
                let Some(task) = self.tasks.get_mut(&key) else { return };
                if task.pending.front().and_then(|s| s.uuid.as_deref()) != Some(uuid.as_str()) {
                    debug!(task_id = %key.1, "acknowledgement for an update that is not in flight ignored");
                    return;
                }
                task.pending.pop_front();
                task.last_sent = None;
                if task.pending.is_empty() && task.state.is_terminal() {
                    self.tasks.remove(&key);
                    self.checkpoint(&key);
                    debug!(task_id = %key.1, "task done");
                } else {
                    self.checkpoint(&key);
                    self.send_head(&key, false);
                }
            }
        }
    }

    fn run_task(&mut self, framework_id: FrameworkId, spec: TaskSpec) {
        let key = (framework_id.clone(), spec.id.clone());
        if self.tasks.contains_key(&key) {
            warn!(task_id = %spec.id, "duplicate launch ignored");
            return;
        }
        let Some(agent_id) = self.agent_id.clone() else { return };
        let request = LaunchRequest {
            framework_id: framework_id.clone(),
            agent_id,
            task: spec.clone(),
            sandbox: self.sandbox(&key),
            user: effective_user(&spec, self.config.default_user.as_deref()),
        };
        self.tasks.insert(
            key.clone(),
            LocalTask {
                framework_id,
                spec,
                state: TaskState::Staging,
                container: None,
                pending: VecDeque::new(),
                kill_requested: false,
                kill_reason: None,
                healthy: None,
                last_sent: None,
                backoff: Duration::ZERO,
            },
        );
        self.checkpoint(&key);
        let containerizer = self.containerizer.clone();
        let inputs = self.inputs.clone();
        let refused = user_refused(request.user.as_deref(), &self.config.allowed_users);
        tokio::spawn(async move {
            if let Some(message) = refused {
                let _ = inputs.send(Input::Launched { key, result: Err(message) }).await;
                return;
            }
            let result = containerizer.launch(&request).await.map_err(|e| {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    message.push_str(&format!(": {s}"));
                    source = s.source();
                }
                message
            });
            let _ = inputs.send(Input::Launched { key, result }).await;
        });
    }

    fn launched(&mut self, key: Key, result: Result<ContainerRecord, String>) {
        let Some(task) = self.tasks.get_mut(&key) else { return };
        match result {
            Ok(record) => {
                task.container = Some(record.clone());
                let kill = task.kill_requested;
                let status = self.status(&key.1, TaskState::Running, reason::COMMAND_EXITED, String::new());
                let status = TaskStatus { reason: None, ..status };
                self.push_update(&key, status);
                self.start_health(&key, &record);
                self.watch(key.clone(), record);
                if kill {
                    self.kill(&key);
                }
            }
            Err(message) => {
                warn!(task_id = %key.1, %message, "launch failed");
                let status = self.status(&key.1, TaskState::Failed, reason::LAUNCH_FAILED, message);
                self.push_update(&key, status);
            }
        }
    }

    fn exited(&mut self, key: Key, termination: Termination) {
        if let Some(cancel) = self.health.remove(&key) {
            cancel.cancel();
        }
        let Some(task) = self.tasks.get(&key) else { return };
        if task.state.is_terminal() {
            return;
        }
        let kill_reason = task.kill_reason.clone();
        let (state, why) = if task.kill_requested {
            (TaskState::Killed, reason::KILLED)
        } else if termination.exit_code == Some(0) {
            (TaskState::Finished, reason::COMMAND_EXITED)
        } else {
            (TaskState::Failed, reason::COMMAND_EXITED)
        };
        info!(task_id = %key.1, state = %state, exit_code = ?termination.exit_code, signal = ?termination.signal, "task ended");
        let mut status = self.status(&key.1, state, why, termination.describe());
        status.exit_code = termination.exit_code;
        if let Some(reason) = kill_reason {
            status.message = reason;
            status.reason = Some(reason::HEALTH_CHECK.into());
            status.healthy = Some(false);
        }
        self.push_update(&key, status);
    }
}

/// Reads up to `length` bytes of `path` from `offset`, or its last `length` bytes; returns the bytes,
/// where they start, and the file's size.
fn read_chunk(path: &Path, offset: Option<u64>, length: u64) -> std::io::Result<(Vec<u8>, u64, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    // A task owns its sandbox and could put a symlink (to a file only root may read) where its output was:
    // never follow one, and read regular files only.
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let size = meta.len();
    let start = offset.unwrap_or_else(|| size.saturating_sub(length)).min(size);
    file.seek(SeekFrom::Start(start))?;
    let mut data = Vec::new();
    file.take(length.min(crate::master::MAX_FILE_READ)).read_to_end(&mut data)?;
    Ok((data, start, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{CommandSpec, DockerSpec};

    fn spec(user: Option<&str>, docker: bool) -> TaskSpec {
        TaskSpec {
            id: TaskId::parse("t").unwrap(),
            name: "t".into(),
            resources: "cpus:0.1".parse().unwrap(),
            command: CommandSpec { value: "true".into(), shell: true, ..Default::default() },
            labels: Default::default(),
            kill_grace: None,
            container: docker.then(|| DockerSpec { image: "img".into(), ..Default::default() }),
            health_check: None,
            user: user.map(str::to_owned),
        }
    }

    #[test]
    fn who_a_task_runs_as() {
        assert_eq!(effective_user(&spec(Some("web"), false), Some("nobody")).as_deref(), Some("web"));
        assert_eq!(effective_user(&spec(None, false), Some("nobody")).as_deref(), Some("nobody"));
        assert_eq!(effective_user(&spec(None, false), None), None);
        // A container that names no user runs as its image's user, whatever the agent's default.
        assert_eq!(effective_user(&spec(None, true), Some("nobody")), None);
        assert_eq!(effective_user(&spec(Some("65534"), true), Some("nobody")).as_deref(), Some("65534"));
    }

    #[test]
    fn allowed_users() {
        let allowed = vec!["nobody".to_owned(), "www-data".to_owned()];
        assert_eq!(user_refused(Some("nobody"), &allowed), None);
        assert!(user_refused(Some("root"), &allowed).unwrap().contains("not allowed"));
        assert_eq!(user_refused(None, &allowed), None);
        assert_eq!(user_refused(Some("root"), &[]), None);
    }
}
