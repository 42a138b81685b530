//! The containerizer interface: how an agent starts, watches, stops and re-finds the work of a task.
//!
//! Every containerizer supports `recover`, so that a restarted agent re-attaches to what is still running
//! instead of losing or killing it. What a containerizer needs to find a container again is a
//! [`ContainerRecord`], which the agent checkpoints to disk.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, FrameworkId};
use crate::task::TaskSpec;

/// What to launch and where.
#[derive(Clone, Debug)]
pub struct LaunchRequest {
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub task: TaskSpec,
    /// The task's own directory; stdout and stderr go to files in it.
    pub sandbox: PathBuf,
}

/// Enough to find a container again after an agent restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContainerRecord {
    /// A process group led by `pid`; `start_time` (from `/proc/PID/stat`) guards against pid reuse, and
    /// the wrapper writes the exit code to `status_file`.
    Process { pid: i32, start_time: u64, status_file: PathBuf },
    /// A simulated task of the in-memory containerizer.
    Memory { id: String },
}

/// How a container ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Termination {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Said to the framework when there is more to say than the exit code.
    pub message: Option<String>,
}

impl Termination {
    pub fn exited(code: i32) -> Termination {
        Termination { exit_code: Some(code), ..Default::default() }
    }

    /// A one-line account for the status update.
    pub fn describe(&self) -> String {
        if let Some(m) = &self.message {
            return m.clone();
        }
        match (self.exit_code, self.signal) {
            (Some(c), _) => format!("command exited with status {c}"),
            (None, Some(s)) => format!("command was killed by signal {s}"),
            (None, None) => "command ended with an unknown status".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot prepare sandbox {path}")]
    Sandbox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the command")]
    Spawn(#[source] std::io::Error),
    #[error("{0}")]
    Other(String),
}

#[async_trait]
pub trait Containerizer: Send + Sync + 'static {
    /// A short name for logs and the operator API.
    fn name(&self) -> &'static str;

    /// Whether this agent can run Docker tasks through this containerizer.
    fn supports_docker(&self) -> bool {
        false
    }

    /// Starts the task and returns how to find it again.
    async fn launch(&self, request: &LaunchRequest) -> Result<ContainerRecord, ContainerError>;

    /// Resolves when the container ends. Works for containers started by an earlier agent process too.
    async fn wait(&self, record: &ContainerRecord) -> Termination;

    /// Asks the container to stop, and forces it after `grace`.
    async fn kill(&self, record: &ContainerRecord, grace: Duration) -> Result<(), ContainerError>;

    /// Called once at agent start with every checkpointed container, before any `wait` on them, so the
    /// containerizer can re-attach and clean up what belongs to no known task.
    async fn recover(&self, records: &[ContainerRecord]) -> Result<(), ContainerError>;
}
