//! Tasks: what a framework asks to run ([`TaskSpec`]), the states a task moves through ([`TaskState`]) and the
//! status updates that report them ([`TaskStatus`]).
//!
//! ```text
//!  STAGING ─▶ STARTING ─▶ RUNNING ─▶ KILLING ─▶ FINISHED | FAILED | KILLED | LOST | ERROR | DROPPED | GONE
//!     │           │          │          │                       ▲
//!     └───────────┴──────────┴──────────┴─▶ UNREACHABLE ────────┘  (and back to what the agent reports)
//! ```
//! Terminal states never change again. A repeated update of the same state is a legal no-op, because
//! updates are delivered at least once.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TaskId};
use crate::resources::Resources;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum TaskState {
    Staging,
    Starting,
    Running,
    Killing,
    Finished,
    Failed,
    Killed,
    Lost,
    Error,
    Dropped,
    Unreachable,
    Gone,
    /// Only ever an answer to reconciliation: the master does not know the task.
    Unknown,
}

/// An update that would move a task backwards or out of a terminal state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal task transition from {from} to {to}")]
pub struct TransitionError {
    pub from: TaskState,
    pub to: TaskState,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        use TaskState::*;
        matches!(self, Finished | Failed | Killed | Lost | Error | Dropped | Gone)
    }

    /// Whether a kill can still do anything.
    pub fn can_kill(self) -> bool {
        !self.is_terminal() && self != TaskState::Unknown
    }

    fn rank(self) -> u8 {
        use TaskState::*;
        match self {
            Staging => 0,
            Starting => 1,
            Running => 2,
            Killing => 3,
            Unreachable => 4,
            Finished | Failed | Killed | Lost | Error | Dropped | Gone => 5,
            Unknown => 6,
        }
    }

    /// The state after an update to `next`, or an error if the move is illegal.
    pub fn transition(self, next: TaskState) -> Result<TaskState, TransitionError> {
        use TaskState::*;
        let legal = match (self, next) {
            (_, Unknown) | (Unknown, _) => false,
            (a, b) if a == b => true,
            (a, _) if a.is_terminal() => false,
            // An agent that comes back reports the real state of a task that was unreachable.
            (Unreachable, _) => true,
            (a, b) => b.rank() > a.rank(),
        };
        if legal { Ok(next) } else { Err(TransitionError { from: self, to: next }) }
    }

    /// The wire name, as in Mesos (`TASK_RUNNING`).
    pub fn name(self) -> &'static str {
        use TaskState::*;
        match self {
            Staging => "TASK_STAGING",
            Starting => "TASK_STARTING",
            Running => "TASK_RUNNING",
            Killing => "TASK_KILLING",
            Finished => "TASK_FINISHED",
            Failed => "TASK_FAILED",
            Killed => "TASK_KILLED",
            Lost => "TASK_LOST",
            Error => "TASK_ERROR",
            Dropped => "TASK_DROPPED",
            Unreachable => "TASK_UNREACHABLE",
            Gone => "TASK_GONE",
            Unknown => "TASK_UNKNOWN",
        }
    }

    pub const ALL: [TaskState; 13] = {
        use TaskState::*;
        [
            Staging,
            Starting,
            Running,
            Killing,
            Finished,
            Failed,
            Killed,
            Lost,
            Error,
            Dropped,
            Unreachable,
            Gone,
            Unknown,
        ]
    };
}

impl From<TaskState> for &'static str {
    fn from(s: TaskState) -> &'static str {
        s.name()
    }
}

impl TryFrom<String> for TaskState {
    type Error = String;
    fn try_from(s: String) -> Result<TaskState, String> {
        TaskState::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| format!("unknown task state '{s}'"))
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who produced a status update.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Source {
    Master,
    Agent,
}

/// Machine-readable reasons carried by status updates.
pub mod reason {
    pub const COMMAND_EXITED: &str = "REASON_COMMAND_EXITED";
    pub const KILLED: &str = "REASON_TASK_KILLED";
    pub const LAUNCH_FAILED: &str = "REASON_CONTAINER_LAUNCH_FAILED";
    pub const AGENT_UNREACHABLE: &str = "REASON_AGENT_UNREACHABLE";
    pub const AGENT_REREGISTERED: &str = "REASON_AGENT_REREGISTERED";
    pub const AGENT_RESTARTED: &str = "REASON_AGENT_RESTARTED";
    pub const NOT_FOUND_ON_AGENT: &str = "REASON_TASK_NOT_FOUND_ON_AGENT";
    pub const INVALID_OFFERS: &str = "REASON_INVALID_OFFERS";
    pub const TASK_INVALID: &str = "REASON_TASK_INVALID";
    pub const RECONCILIATION: &str = "REASON_RECONCILIATION";
    pub const FRAMEWORK_REMOVED: &str = "REASON_FRAMEWORK_REMOVED";
    pub const AGENT_DISCONNECTED: &str = "REASON_AGENT_DISCONNECTED";
    pub const HEALTH_CHECK: &str = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED";
    pub const NO_DOCKER: &str = "REASON_AGENT_HAS_NO_DOCKER";
}

/// One report of a task's state.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: TaskId,
    pub state: TaskState,
    pub message: String,
    pub source: Source,
    pub reason: Option<String>,
    pub agent_id: Option<AgentId>,
    /// Set on updates that the agent retries until the framework acknowledges them.
    pub uuid: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    pub exit_code: Option<i32>,
    pub healthy: Option<bool>,
}

impl TaskStatus {
    /// An update generated by the master: it needs no acknowledgement.
    pub fn from_master(
        task_id: TaskId,
        state: TaskState,
        agent_id: Option<AgentId>,
        reason: &str,
        message: impl Into<String>,
    ) -> TaskStatus {
        TaskStatus {
            task_id,
            state,
            message: message.into(),
            source: Source::Master,
            reason: Some(reason.to_owned()),
            agent_id,
            uuid: None,
            timestamp: now_seconds(),
            exit_code: None,
            healthy: None,
        }
    }
}

/// Seconds since the Unix epoch, as status updates carry them.
pub fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// What to run.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct CommandSpec {
    /// A shell command when `shell` is true, otherwise the program to execute.
    pub value: String,
    pub shell: bool,
    pub arguments: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// How a Docker container is networked.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum Network {
    /// The host's network namespace: the task binds its offered ports directly.
    #[default]
    Host,
    /// Docker's bridge: offered host ports are mapped to container ports.
    Bridge,
}

/// An offered host port forwarded to a port inside a bridged container.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// A host path mounted into a container.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Volume {
    pub host_path: String,
    pub container_path: String,
    pub read_only: bool,
}

/// Run the task in a Docker container. The task's env and labels apply to the container; its command, when
/// not empty, replaces the image's.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct DockerSpec {
    pub image: String,
    pub force_pull: bool,
    pub network: Network,
    pub port_mappings: Vec<PortMapping>,
    pub volumes: Vec<Volume>,
}

/// What a health check probes. Ports are named by index into the task's offered ports.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum HealthCheckKind {
    /// Healthy on a 2xx or 3xx answer to `GET path`.
    Http { path: String, port_index: usize },
    /// Healthy when a TCP connection opens.
    Tcp { port_index: usize },
    /// Healthy when the command exits 0; it runs inside the task's container.
    Command { command: String },
}

/// A check the agent runs against a running task; results travel as `healthy` in status updates.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// Failures in this time after the task starts do not count (a success ends it early).
    pub grace_period: Duration,
    pub interval: Duration,
    pub timeout: Duration,
    /// After this many failures in a row the agent kills the task; 0 never kills.
    pub max_consecutive_failures: u32,
}

/// A task as a framework asks for it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: TaskId,
    pub name: String,
    pub resources: Resources,
    pub command: CommandSpec,
    pub labels: BTreeMap<String, String>,
    /// Time between SIGTERM and SIGKILL on a kill; the agent's default when absent.
    pub kill_grace: Option<Duration>,
    /// Run in this Docker container instead of as a plain process.
    #[serde(default)]
    pub container: Option<DockerSpec>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// The user the task runs as; `None`: the agent's `--default-user`.
    #[serde(default)]
    pub user: Option<String>,
}

/// Why a [`TaskSpec`] cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskSpecError {
    #[error("task {0} has no command")]
    NoCommand(TaskId),
    #[error("task {0} asks for neither cpus nor mem")]
    NoResources(TaskId),
    #[error("task {0} has a container with no image")]
    NoImage(TaskId),
    #[error("task {task}: user '{user}' is not a user name (1 to 32 of a-z A-Z 0-9 . _ -, not starting with -)")]
    BadUser { task: TaskId, user: String },
    #[error("task {task}: host port {port} of a port mapping is not among the task's port resources")]
    UnmappedPort { task: TaskId, port: u16 },
    #[error("task {task}: port mappings need BRIDGE networking")]
    MappingsNeedBridge { task: TaskId },
    #[error("task {task}: health check port index {index} is out of range (the task has {ports} ports)")]
    HealthCheckPort { task: TaskId, index: usize, ports: usize },
    #[error("task {0}: health check interval and timeout must be positive")]
    HealthCheckTiming(TaskId),
}

/// A POSIX-portable user name.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl TaskSpec {
    /// The checks that do not depend on any offer.
    pub fn validate(&self) -> Result<(), TaskSpecError> {
        let id = || self.id.clone();
        if self.container.is_none() && self.command.value.trim().is_empty() {
            return Err(TaskSpecError::NoCommand(id()));
        }
        if self.resources.cpus.milli() == 0 && self.resources.mem.milli() == 0 {
            return Err(TaskSpecError::NoResources(id()));
        }
        if let Some(user) = &self.user
            && !valid_user(user)
        {
            return Err(TaskSpecError::BadUser { task: id(), user: user.chars().take(64).collect() });
        }
        if let Some(docker) = &self.container {
            if docker.image.trim().is_empty() {
                return Err(TaskSpecError::NoImage(id()));
            }
            if !docker.port_mappings.is_empty() && docker.network != Network::Bridge {
                return Err(TaskSpecError::MappingsNeedBridge { task: id() });
            }
            if let Some(m) = docker.port_mappings.iter().find(|m| !self.resources.ports.contains_port(m.host_port)) {
                return Err(TaskSpecError::UnmappedPort { task: id(), port: m.host_port });
            }
        }
        if let Some(check) = &self.health_check {
            if check.interval.is_zero() || check.timeout.is_zero() {
                return Err(TaskSpecError::HealthCheckTiming(id()));
            }
            if let HealthCheckKind::Http { port_index, .. } | HealthCheckKind::Tcp { port_index } = check.kind {
                let ports = self.resources.ports.len();
                if port_index >= ports {
                    return Err(TaskSpecError::HealthCheckPort { task: id(), index: port_index, ports });
                }
            }
        }
        Ok(())
    }

    /// The host port a health check with `port_index` probes.
    pub fn port(&self, port_index: usize) -> Option<u16> {
        self.resources.ports.iter().nth(port_index)
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::*;
    use super::*;

    #[test]
    fn forward_moves_are_legal() {
        assert_eq!(Staging.transition(Running), Ok(Running));
        assert_eq!(Running.transition(Killing), Ok(Killing));
        assert_eq!(Killing.transition(Killed), Ok(Killed));
        assert_eq!(Starting.transition(Failed), Ok(Failed));
    }

    #[test]
    fn redelivery_is_a_no_op() {
        for s in TaskState::ALL.into_iter().filter(|s| *s != Unknown) {
            assert_eq!(s.transition(s), Ok(s));
        }
    }

    #[test]
    fn terminal_states_are_final() {
        for t in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for next in TaskState::ALL.into_iter().filter(|n| *n != t) {
                assert!(t.transition(next).is_err(), "{t} -> {next}");
            }
        }
    }

    #[test]
    fn backwards_moves_are_rejected() {
        assert!(Running.transition(Staging).is_err());
        assert!(Killing.transition(Running).is_err());
        assert!(Running.transition(Unknown).is_err());
    }

    #[test]
    fn unreachable_returns_to_what_the_agent_reports() {
        assert_eq!(Running.transition(Unreachable), Ok(Unreachable));
        assert_eq!(Unreachable.transition(Running), Ok(Running));
        assert_eq!(Unreachable.transition(Lost), Ok(Lost));
    }

    #[test]
    fn spec_validation() {
        let spec = TaskSpec {
            id: TaskId::parse("t").unwrap(),
            name: "t".into(),
            resources: Resources::default(),
            command: CommandSpec { value: "true".into(), shell: true, ..Default::default() },
            labels: BTreeMap::new(),
            kill_grace: None,
            container: None,
            health_check: None,
            user: None,
        };
        assert_eq!(spec.validate(), Err(TaskSpecError::NoResources(spec.id.clone())));
        let mut spec = spec;
        spec.resources = "cpus:0.1".parse().unwrap();
        assert!(spec.validate().is_ok());
        for bad in ["", "-x", "a b", "root;rm", &"u".repeat(33)] {
            spec.user = Some(bad.into());
            assert!(matches!(spec.validate(), Err(TaskSpecError::BadUser { .. })), "{bad}");
        }
        spec.user = Some("www-data".into());
        assert!(spec.validate().is_ok());
        spec.user = None;
        spec.command.value = " ".into();
        assert!(spec.validate().is_err());
        // A container may use its image's command.
        spec.container = Some(DockerSpec { image: "busybox".into(), ..Default::default() });
        assert!(spec.validate().is_ok());
        spec.container.as_mut().unwrap().port_mappings.push(PortMapping {
            host_port: 31000,
            container_port: 80,
            protocol: "tcp".into(),
        });
        assert!(matches!(spec.validate(), Err(TaskSpecError::MappingsNeedBridge { .. })));
        spec.container.as_mut().unwrap().network = Network::Bridge;
        assert!(matches!(spec.validate(), Err(TaskSpecError::UnmappedPort { port: 31000, .. })));
        spec.resources = "cpus:0.1;ports:[31000-31000]".parse().unwrap();
        assert!(spec.validate().is_ok());
        spec.health_check = Some(HealthCheck {
            kind: HealthCheckKind::Tcp { port_index: 1 },
            grace_period: Duration::ZERO,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_consecutive_failures: 3,
        });
        assert!(matches!(spec.validate(), Err(TaskSpecError::HealthCheckPort { index: 1, ports: 1, .. })));
        spec.health_check.as_mut().unwrap().kind = HealthCheckKind::Tcp { port_index: 0 };
        assert!(spec.validate().is_ok());
        assert_eq!(spec.port(0), Some(31000));
    }
}
