//! The master: it pools agents' resources, offers them to frameworks, launches what they accept and keeps
//! everyone told about their tasks.
//!
//! All mutable state lives in one actor ([`state::Master`]) that owns it and receives [`Command`]s on a
//! bounded channel; [`MasterHandle`] is the only way in. The gRPC services ([`grpc`]) and the operator HTTP
//! API ([`http`]) are thin edges that convert wire types and talk to the handle.

pub mod grpc;
pub mod http;
pub mod mesos_state;
mod state;
mod timers;
pub mod v1;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{AgentInfo, AgentMessage, AgentTask, Call, Event, FileChunk, FrameworkInfo, MasterMessage};
use crate::ids::{AgentId, FrameworkId, TaskId};
use crate::store::{AgentRecord, FrameworkRecord, Store, StoreError};

pub use state::{
    AgentView, ClusterEvent, FrameworkView, HistoryEntry, MAX_FILE_READ, StateSnapshot, StatusView, Summary,
    TaskDetail, TaskView,
};

/// How many events a `/keel/v1/events` reader may fall behind before it is told it lagged.
pub const EVENT_BUFFER: usize = 4096;

/// How many commands may wait for the actor before senders wait too.
const COMMAND_BUFFER: usize = 16 * 1024;

pub use crate::api::CONNECTION_BUFFER;

/// Tunables of the master; `Default` gives the production defaults.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// An agent silent for this long is marked unreachable and its tasks reported so (Mesos: 75 s).
    pub agent_timeout: Duration,
    /// How often agents are asked to heartbeat; a fifth of the timeout by default.
    pub agent_heartbeat: Duration,
    /// How often connected frameworks get a HEARTBEAT event.
    pub framework_heartbeat: Duration,
    /// Offers not answered within this are rescinded; `None` keeps them until answered.
    pub offer_timeout: Option<Duration>,
    /// A full allocation pass runs at least this often (others run as soon as resources change).
    pub allocation_interval: Duration,
    /// After a master restart, frameworks get at least this long to re-subscribe before their failover
    /// timeout can tear them down.
    pub recovery_grace: Duration,
    /// Role weights for DRF; unlisted roles weigh 1.
    pub role_weights: Vec<(String, f64)>,
}

impl Default for MasterConfig {
    fn default() -> Self {
        let agent_timeout = Duration::from_secs(10);
        MasterConfig {
            agent_timeout,
            agent_heartbeat: agent_timeout / 5,
            framework_heartbeat: Duration::from_secs(15),
            offer_timeout: Some(Duration::from_secs(30)),
            allocation_interval: Duration::from_secs(1),
            recovery_grace: Duration::from_secs(20),
            role_weights: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("framework {0} has been torn down and cannot subscribe again")]
    FrameworkRemoved(FrameworkId),
    #[error("the master is shutting down")]
    Stopped,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Forbidden(String),
}

impl From<MasterError> for tonic::Status {
    fn from(e: MasterError) -> tonic::Status {
        match e {
            MasterError::Store(e) => tonic::Status::unavailable(format!("store unavailable: {e}")),
            MasterError::FrameworkRemoved(_) => tonic::Status::failed_precondition(e.to_string()),
            MasterError::Stopped | MasterError::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
            MasterError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            MasterError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
            MasterError::Forbidden(_) => tonic::Status::permission_denied(e.to_string()),
        }
    }
}

/// Who registers an agent or subscribes a framework, when auth is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The principal's name, which the ids it creates are bound to.
    pub name: String,
    /// Admins may claim ids that no principal owns yet.
    pub admin: bool,
}

/// The sending half of one framework or agent connection. The id tells a stale connection's messages
/// from the current one's.
pub(crate) struct Conn<T> {
    pub id: u64,
    pub tx: mpsc::Sender<T>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

fn next_conn_id() -> u64 {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

pub(crate) enum Command {
    RegisterAgent {
        info: AgentInfo,
        tasks: Vec<AgentTask>,
        /// Who registers it; `None` when auth is off.
        principal: Option<Caller>,
        conn: Conn<MasterMessage>,
        reply: oneshot::Sender<Result<AgentId, MasterError>>,
    },
    FromAgent {
        agent_id: AgentId,
        conn_id: u64,
        msg: AgentMessage,
    },
    AgentDisconnected {
        agent_id: AgentId,
        conn_id: u64,
    },
    Subscribe {
        framework_id: Option<FrameworkId>,
        info: FrameworkInfo,
        /// Who subscribes; `None` when auth is off.
        principal: Option<Caller>,
        conn: Conn<Event>,
        reply: oneshot::Sender<Result<FrameworkId, MasterError>>,
    },
    Call {
        framework_id: FrameworkId,
        conn_id: u64,
        call: Call,
    },
    FrameworkDisconnected {
        framework_id: FrameworkId,
        conn_id: u64,
    },
    /// A call the edge could not understand; the framework gets an ERROR event, in order with the rest.
    CallError {
        framework_id: FrameworkId,
        conn_id: u64,
        message: String,
    },
    /// Tasks of an ACCEPT that the edge refused before the master saw them: each is answered TASK_ERROR
    /// with its reason, in order with the framework's other events.
    RefuseTasks {
        framework_id: FrameworkId,
        conn_id: u64,
        tasks: Vec<(TaskId, String)>,
    },
    State {
        reply: oneshot::Sender<StateSnapshot>,
    },
    Metrics {
        reply: oneshot::Sender<String>,
    },
    Summary {
        reply: oneshot::Sender<Summary>,
    },
    Frameworks {
        reply: oneshot::Sender<Vec<FrameworkView>>,
    },
    Task {
        framework_id: Option<FrameworkId>,
        task_id: TaskId,
        reply: oneshot::Sender<Option<TaskDetail>>,
    },
    ReadFile {
        request: FileRequest,
        reply: oneshot::Sender<Result<FileChunk, MasterError>>,
    },
}

/// Which part of which task's sandbox file to read.
#[derive(Clone, Debug)]
pub struct FileRequest {
    /// For a framework's own credential: only the tasks of frameworks this principal owns.
    pub owner: Option<String>,
    /// Needed only when several frameworks use the task id.
    pub framework_id: Option<FrameworkId>,
    pub task_id: TaskId,
    /// `stdout` or `stderr`.
    pub file: String,
    /// Absent: the last `length` bytes.
    pub offset: Option<u64>,
    pub length: u64,
}

/// The way in to a running master; cheap to clone.
#[derive(Clone)]
pub struct MasterHandle {
    tx: mpsc::Sender<Command>,
    events: tokio::sync::broadcast::Sender<ClusterEvent>,
}

impl MasterHandle {
    /// Whether the master's actor still runs.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// A subscribed framework connection: its id, and the events the master sends it.
pub struct Subscription {
    pub framework_id: FrameworkId,
    pub conn_id: u64,
    pub events: mpsc::Receiver<Event>,
}

/// A registered agent connection.
pub struct AgentSession {
    pub agent_id: AgentId,
    pub conn_id: u64,
    pub messages: mpsc::Receiver<MasterMessage>,
}

impl MasterHandle {
    async fn send(&self, cmd: Command) -> Result<(), MasterError> {
        self.tx.send(cmd).await.map_err(|_| MasterError::Stopped)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, MasterError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| MasterError::Stopped)
    }

    /// Subscribes a framework; SUBSCRIBED is the first event on the returned receiver. A framework id
    /// belongs to the principal that created it: another one is refused.
    pub async fn subscribe(
        &self,
        framework_id: Option<FrameworkId>,
        info: FrameworkInfo,
        principal: Option<Caller>,
    ) -> Result<Subscription, MasterError> {
        let (tx, events) = mpsc::channel(CONNECTION_BUFFER);
        let conn_id = next_conn_id();
        let conn = Conn { id: conn_id, tx };
        let framework_id =
            self.ask(|reply| Command::Subscribe { framework_id, info, principal, conn, reply }).await??;
        Ok(Subscription { framework_id, conn_id, events })
    }

    pub async fn call(&self, framework_id: FrameworkId, conn_id: u64, call: Call) -> Result<(), MasterError> {
        self.send(Command::Call { framework_id, conn_id, call }).await
    }

    pub async fn call_error(
        &self,
        framework_id: FrameworkId,
        conn_id: u64,
        message: String,
    ) -> Result<(), MasterError> {
        self.send(Command::CallError { framework_id, conn_id, message }).await
    }

    /// Answers each of `tasks` TASK_ERROR with its reason (see [`Command::RefuseTasks`]).
    pub async fn refuse_tasks(
        &self,
        framework_id: FrameworkId,
        conn_id: u64,
        tasks: Vec<(TaskId, String)>,
    ) -> Result<(), MasterError> {
        self.send(Command::RefuseTasks { framework_id, conn_id, tasks }).await
    }

    pub async fn framework_disconnected(&self, framework_id: FrameworkId, conn_id: u64) {
        let _ = self.send(Command::FrameworkDisconnected { framework_id, conn_id }).await;
    }

    /// Registers (or re-registers) an agent; REGISTERED is the first message on the returned receiver. An
    /// agent id belongs to the principal that first registered it: another one is refused, and the agent
    /// that holds the id is left alone.
    pub async fn register_agent(
        &self,
        info: AgentInfo,
        tasks: Vec<AgentTask>,
        principal: Option<Caller>,
    ) -> Result<AgentSession, MasterError> {
        let (tx, messages) = mpsc::channel(CONNECTION_BUFFER);
        let conn_id = next_conn_id();
        let conn = Conn { id: conn_id, tx };
        let agent_id = self.ask(|reply| Command::RegisterAgent { info, tasks, principal, conn, reply }).await??;
        Ok(AgentSession { agent_id, conn_id, messages })
    }

    pub async fn agent_message(&self, agent_id: AgentId, conn_id: u64, msg: AgentMessage) -> Result<(), MasterError> {
        self.send(Command::FromAgent { agent_id, conn_id, msg }).await
    }

    pub async fn agent_disconnected(&self, agent_id: AgentId, conn_id: u64) {
        let _ = self.send(Command::AgentDisconnected { agent_id, conn_id }).await;
    }

    /// Everything the master knows, for `/master/state`.
    pub async fn state(&self) -> Result<StateSnapshot, MasterError> {
        self.ask(|reply| Command::State { reply }).await
    }

    /// Reads part of a task's stdout or stderr from its agent.
    pub async fn read_file(&self, request: FileRequest) -> Result<FileChunk, MasterError> {
        self.ask(|reply| Command::ReadFile { request, reply }).await?
    }

    /// Counts and capacity, for `/keel/v1/summary`.
    pub async fn summary(&self) -> Result<Summary, MasterError> {
        self.ask(|reply| Command::Summary { reply }).await
    }

    /// Every framework, without its tasks, for `/keel/v1/frameworks`.
    pub async fn frameworks(&self) -> Result<Vec<FrameworkView>, MasterError> {
        self.ask(|reply| Command::Frameworks { reply }).await
    }

    /// One task, live or recently completed, with the states it went through.
    pub async fn task(&self, framework_id: Option<FrameworkId>, task_id: TaskId) -> Result<TaskDetail, MasterError> {
        let name = task_id.to_string();
        self.ask(|reply| Command::Task { framework_id, task_id, reply })
            .await?
            .ok_or_else(|| MasterError::NotFound(format!("no task '{name}'")))
    }

    /// Every change from now on: tasks, agents and frameworks. A reader that falls more than
    /// [`EVENT_BUFFER`] events behind is told it lagged.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    /// Prometheus text for `/metrics`.
    pub async fn metrics(&self) -> Result<String, MasterError> {
        self.ask(|reply| Command::Metrics { reply }).await
    }
}

/// What the master keeps in the store: its registry of agents and frameworks. Every write carries the term
/// the master leads at ([`MasterStore::term`]), and the store itself refuses it ([`StoreError::Fenced`])
/// once another master holds the lease. [`Store`] is the real one; the cluster simulation
/// (`core/tests/cluster_sim.rs`) plays the master against one in memory.
#[async_trait::async_trait]
pub trait MasterStore: Send + Sync + 'static {
    /// The term the writes are fenced at; 0 when they are not fenced.
    fn term(&self) -> i64;
    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    async fn frameworks(&self) -> Result<Vec<FrameworkRecord>, StoreError>;
    async fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError>;
    async fn put_framework(&self, framework: &FrameworkRecord) -> Result<(), StoreError>;
    async fn remove_framework(&self, id: &FrameworkId, at: i64) -> Result<(), StoreError>;
}

#[async_trait::async_trait]
impl MasterStore for Store {
    fn term(&self) -> i64 {
        self.fence_args().1
    }
    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Store::agents(self).await
    }
    async fn frameworks(&self) -> Result<Vec<FrameworkRecord>, StoreError> {
        Store::frameworks(self).await
    }
    async fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        Store::put_agent(self, agent).await
    }
    async fn put_framework(&self, framework: &FrameworkRecord) -> Result<(), StoreError> {
        Store::put_framework(self, framework).await
    }
    async fn remove_framework(&self, id: &FrameworkId, at: i64) -> Result<(), StoreError> {
        Store::remove_framework(self, id, at).await
    }
}

/// Loads the registry from `store` and starts the master actor. It runs until `shutdown` is cancelled.
pub async fn start(
    config: MasterConfig,
    store: impl MasterStore,
    shutdown: CancellationToken,
) -> Result<(MasterHandle, JoinHandle<()>), MasterError> {
    let agents = store.agents().await?;
    let frameworks = store.frameworks().await?;
    let store: std::sync::Arc<dyn MasterStore> = std::sync::Arc::new(store);
    let (tx, rx) = mpsc::channel(COMMAND_BUFFER);
    let events = tokio::sync::broadcast::channel(EVENT_BUFFER).0;
    let master = state::Master::recover(config, store, agents, frameworks, events.clone());
    let task = tokio::spawn(master.run(rx, shutdown));
    Ok((MasterHandle { tx, events }, task))
}
