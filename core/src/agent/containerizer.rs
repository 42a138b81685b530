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
    /// The user to run as; `None`: the agent's own.
    pub user: Option<String>,
}

/// Enough to find a container again after an agent restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContainerRecord {
    /// A process group led by `pid`; `start_time` (from `/proc/PID/stat`) guards against pid reuse, and
    /// the wrapper writes the exit code to `status_file`.
    Process { pid: i32, start_time: u64, status_file: PathBuf },
    /// A Docker container, by id, and the sandbox its output is copied to.
    Docker { id: String, sandbox: PathBuf },
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
    #[error("cannot pull image {image}: {message}")]
    Pull { image: String, message: String },
    #[error("docker: {0}")]
    Docker(String),
    #[error("this agent has no Docker engine")]
    NoDocker,
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
    /// containerizer can re-attach, and clean up what this agent (`agent_id`) started that belongs to no
    /// known task.
    async fn recover(
        &self,
        agent_id: Option<&AgentId>,
        work_dir: &std::path::Path,
        records: &[ContainerRecord],
    ) -> Result<(), ContainerError>;

    /// Runs a health-check command for a running task, inside its container where it has one, and
    /// returns its exit code.
    async fn run_check(
        &self,
        record: &ContainerRecord,
        request: &LaunchRequest,
        command: &str,
    ) -> Result<i32, ContainerError> {
        let _ = record;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        // The task's environment, not the agent's: the agent's holds its token.
        cmd.arg("-c")
            .arg(command)
            .current_dir(&request.sandbox)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
            .env("HOME", &request.sandbox)
            .env("MESOS_SANDBOX", &request.sandbox)
            .env("KEEL_SANDBOX", &request.sandbox)
            .envs(&request.task.command.env)
            .process_group(0);
        if let Some(user) = &request.user {
            run_as(&mut cmd, user, None)?;
        }
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        cmd.kill_on_drop(true);
        let status = cmd.status().await.map_err(ContainerError::Spawn)?;
        Ok(status.code().unwrap_or(128))
    }
}

/// Runs each task with the containerizer that fits it: Docker for tasks with a container, processes for
/// the rest.
pub struct Composite {
    pub process: super::process::ProcessContainerizer,
    pub docker: Option<super::docker::DockerContainerizer>,
}

impl Composite {
    fn docker(&self) -> Result<&super::docker::DockerContainerizer, ContainerError> {
        self.docker.as_ref().ok_or(ContainerError::NoDocker)
    }
}

#[async_trait]
impl Containerizer for Composite {
    fn name(&self) -> &'static str {
        if self.docker.is_some() { "process+docker" } else { "process" }
    }

    fn supports_docker(&self) -> bool {
        self.docker.is_some()
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<ContainerRecord, ContainerError> {
        if request.task.container.is_some() {
            self.docker()?.launch(request).await
        } else {
            self.process.launch(request).await
        }
    }

    async fn wait(&self, record: &ContainerRecord) -> Termination {
        match (record, &self.docker) {
            (ContainerRecord::Docker { .. }, Some(d)) => d.wait(record).await,
            (ContainerRecord::Docker { .. }, None) => Termination {
                message: Some("the agent lost its Docker engine; the container cannot be watched".into()),
                ..Default::default()
            },
            _ => self.process.wait(record).await,
        }
    }

    async fn kill(&self, record: &ContainerRecord, grace: Duration) -> Result<(), ContainerError> {
        match record {
            ContainerRecord::Docker { .. } => self.docker()?.kill(record, grace).await,
            _ => self.process.kill(record, grace).await,
        }
    }

    async fn recover(
        &self,
        agent_id: Option<&AgentId>,
        work_dir: &std::path::Path,
        records: &[ContainerRecord],
    ) -> Result<(), ContainerError> {
        self.process.recover(agent_id, work_dir, records).await?;
        if let Some(d) = &self.docker {
            d.recover(agent_id, work_dir, records).await?;
        }
        Ok(())
    }

    async fn run_check(
        &self,
        record: &ContainerRecord,
        request: &LaunchRequest,
        command: &str,
    ) -> Result<i32, ContainerError> {
        match record {
            ContainerRecord::Docker { .. } => self.docker()?.run_check(record, request, command).await,
            _ => self.process.run_check(record, request, command).await,
        }
    }
}

/// Makes `cmd` run as `user` (its uid, primary group and supplementary groups) and, if given, hands it
/// `sandbox` and the files in it. Nothing changes when the agent already is that user; an agent that is
/// not root cannot run tasks as anyone else, and an unknown user is an error that names it.
pub(crate) fn run_as(
    cmd: &mut tokio::process::Command,
    user: &str,
    sandbox: Option<&std::path::Path>,
) -> Result<(), ContainerError> {
    use nix::unistd::{Gid, Uid, User, geteuid, getgrouplist};
    let found = User::from_name(user)
        .map_err(|e| ContainerError::Other(format!("cannot look up user '{user}': {e}")))?
        .ok_or_else(|| ContainerError::Other(format!("unknown user '{user}' on this agent")))?;
    let me = geteuid();
    if found.uid == me {
        return Ok(());
    }
    if !me.is_root() {
        return Err(ContainerError::Other(format!("this agent runs as uid {me} and cannot run tasks as '{user}'")));
    }
    let name = std::ffi::CString::new(user).map_err(|_| ContainerError::Other("user name has a NUL".into()))?;
    let groups: Vec<libc::gid_t> = getgrouplist(&name, found.gid)
        .map_err(|e| ContainerError::Other(format!("cannot list the groups of '{user}': {e}")))?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    if let Some(dir) = sandbox {
        // Not following symlinks: a sandbox reused by a task id's next launch may hold one its last run put.
        let give = |p: &std::path::Path| {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                p,
                Some(found.uid),
                Some(found.gid),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| ContainerError::Sandbox { path: p.to_owned(), source: e.into() })
        };
        give(dir)?;
        for entry in std::fs::read_dir(dir).map_err(|e| ContainerError::Sandbox { path: dir.to_owned(), source: e })? {
            give(&entry.map_err(|e| ContainerError::Sandbox { path: dir.to_owned(), source: e })?.path())?;
        }
    }
    let (uid, gid): (Uid, Gid) = (found.uid, found.gid);
    // SAFETY: between fork and exec only async-signal-safe calls are made (setgroups, setgid, setuid), on
    // data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0
                || libc::setgid(gid.as_raw()) != 0
                || libc::setuid(uid.as_raw()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
