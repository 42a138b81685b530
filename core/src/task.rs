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
}

/// Why a [`TaskSpec`] cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskSpecError {
    #[error("task {0} has no command")]
    NoCommand(TaskId),
    #[error("task {0} asks for neither cpus nor mem")]
    NoResources(TaskId),
}

impl TaskSpec {
    /// The checks that do not depend on any offer.
    pub fn validate(&self) -> Result<(), TaskSpecError> {
        if self.command.value.trim().is_empty() {
            return Err(TaskSpecError::NoCommand(self.id.clone()));
        }
        if self.resources.cpus.milli() == 0 && self.resources.mem.milli() == 0 {
            return Err(TaskSpecError::NoResources(self.id.clone()));
        }
        Ok(())
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
        };
        assert_eq!(spec.validate(), Err(TaskSpecError::NoResources(spec.id.clone())));
        let mut spec = spec;
        spec.resources = "cpus:0.1".parse().unwrap();
        assert!(spec.validate().is_ok());
        spec.command.value = " ".into();
        assert!(spec.validate().is_err());
    }
}
