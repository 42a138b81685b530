//! The scheduler and agent protocols as plain Rust types. The master and the client library work with these;
//! [`crate::convert`] maps them to and from the protobuf wire types at the gRPC edge.

use std::time::Duration;

use crate::ids::{AgentId, FrameworkId, OfferId, TaskId};
use crate::resources::Resources;
use crate::task::{TaskSpec, TaskState, TaskStatus};

/// How many messages may wait for one framework or agent connection, on either side of it. Past this,
/// the master leaves a framework's status updates to the agents' retries, and closes the connection for
/// any other message (it re-attaches; nothing is lost, because updates are retried until acknowledged).
pub const CONNECTION_BUFFER: usize = 128 * 1024;

/// Decline filters refuse an agent's resources to a framework for this long unless told otherwise (Mesos's
/// default).
pub const DEFAULT_REFUSE: Duration = Duration::from_secs(5);

/// What a framework says about itself on SUBSCRIBE.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameworkInfo {
    pub name: String,
    /// `*` when the framework named none.
    pub role: String,
    /// How long the master keeps the framework's tasks while it is disconnected.
    pub failover_timeout: Duration,
    pub webui_url: String,
    pub user: String,
    pub hostname: String,
}

impl FrameworkInfo {
    pub fn new(name: impl Into<String>) -> FrameworkInfo {
        FrameworkInfo {
            name: name.into(),
            role: "*".into(),
            failover_timeout: Duration::ZERO,
            webui_url: String::new(),
            user: String::new(),
            hostname: String::new(),
        }
    }
}

/// Resources of one agent offered to one framework.
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    pub id: OfferId,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub hostname: String,
    pub resources: Resources,
    pub attributes: Vec<(String, String)>,
    /// Whether the agent can run Docker tasks.
    pub docker: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Filters {
    /// How long declined resources are not re-offered; [`DEFAULT_REFUSE`] when absent.
    pub refuse: Option<Duration>,
}

impl Filters {
    pub fn refuse(&self) -> Duration {
        self.refuse.unwrap_or(DEFAULT_REFUSE)
    }
}

/// A call from a subscribed framework.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Accept {
        offer_ids: Vec<OfferId>,
        tasks: Vec<TaskSpec>,
        filters: Filters,
    },
    Decline {
        offer_ids: Vec<OfferId>,
        filters: Filters,
    },
    Revive,
    Suppress,
    Kill {
        task_id: TaskId,
        agent_id: Option<AgentId>,
    },
    Acknowledge {
        agent_id: AgentId,
        task_id: TaskId,
        uuid: String,
    },
    /// Explicit when it names tasks; implicit (every task of the framework) when empty.
    Reconcile {
        tasks: Vec<(TaskId, Option<AgentId>)>,
    },
    Teardown,
}

impl Call {
    /// The call's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Call::Accept { .. } => "ACCEPT",
            Call::Decline { .. } => "DECLINE",
            Call::Revive => "REVIVE",
            Call::Suppress => "SUPPRESS",
            Call::Kill { .. } => "KILL",
            Call::Acknowledge { .. } => "ACKNOWLEDGE",
            Call::Reconcile { .. } => "RECONCILE",
            Call::Teardown => "TEARDOWN",
        }
    }
}

/// An event for a framework.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Subscribed {
        framework_id: FrameworkId,
        heartbeat_interval: Duration,
    },
    Offers(Vec<Offer>),
    Rescind(OfferId),
    Update(TaskStatus),
    /// An agent became unreachable; its tasks' updates follow.
    Failure {
        agent_id: AgentId,
    },
    Error(String),
    Heartbeat,
}

/// What an agent says about itself when it registers.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentInfo {
    /// Absent on an agent's very first registration.
    pub id: Option<AgentId>,
    pub hostname: String,
    pub resources: Resources,
    pub attributes: Vec<(String, String)>,
    pub docker: bool,
}

/// A task an agent reports on (re-)registration.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentTask {
    pub framework_id: FrameworkId,
    pub spec: TaskSpec,
    pub state: TaskState,
    /// The last health the agent reported, so that a restarted master answers with it.
    pub healthy: Option<bool>,
}

/// A message from an agent after registration.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentMessage {
    Heartbeat,
    StatusUpdate { framework_id: FrameworkId, status: TaskStatus },
    FileData { request_id: u64, chunk: Result<FileChunk, String> },
}

/// The sandbox files that can be read through the API.
pub const SANDBOX_FILES: [&str; 2] = ["stdout", "stderr"];

/// Part of a sandbox file.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileChunk {
    /// The bytes, as UTF-8 with invalid sequences replaced.
    pub data: String,
    /// Where `data` starts in the file.
    pub offset: u64,
    /// The file's size.
    pub size: u64,
}

/// A message from the master to an agent.
#[derive(Clone, Debug, PartialEq)]
pub enum MasterMessage {
    Registered {
        agent_id: AgentId,
        heartbeat_interval: Duration,
    },
    RunTask {
        framework_id: FrameworkId,
        spec: Box<TaskSpec>,
    },
    KillTask {
        framework_id: FrameworkId,
        task_id: TaskId,
    },
    Acknowledge {
        framework_id: FrameworkId,
        task_id: TaskId,
        uuid: String,
    },
    /// Read `length` bytes of a sandbox file from `offset`, or its last `length` bytes.
    ReadFile {
        request_id: u64,
        framework_id: FrameworkId,
        task_id: TaskId,
        file: String,
        offset: Option<u64>,
        length: u64,
    },
}
