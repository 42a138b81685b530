//! The process containerizer: a task is `sh -c COMMAND` (or a program and its arguments) in its own process
//! group, in its sandbox, with stdout and stderr in files there.
//!
//! The command runs under a small shell wrapper that writes its exit code to a file in the sandbox. While
//! the agent that started it lives, the agent is its parent and gets the exit status directly; a restarted
//! agent is not the parent any more, so it watches the pid and reads the exit code from that file.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tracing::{debug, info};

use super::containerizer::{ContainerError, ContainerRecord, Containerizer, LaunchRequest, Termination};
use crate::ids::AgentId;

/// Runs the task's argv, then records its exit code in the file named by the first argument. The wrapper
/// traps (rather than ignores) TERM, INT and HUP so that it outlives a graceful kill of the task and still
/// records how it ended; a trapped signal is reset to its default in the task, an ignored one would not be.
const WRAPPER: &str = r#"trap 'true' TERM INT HUP; status="$1"; shift; "$@"; code=$?; printf '%s\n' "$code" > "$status.tmp" && mv -f "$status.tmp" "$status"; exit "$code""#;

/// How often a recovered (non-child) process is checked.
const POLL: Duration = Duration::from_millis(200);

/// Runs tasks as plain processes.
#[derive(Default)]
pub struct ProcessContainerizer {
    /// Processes this agent process started, by pid, until someone waits on them.
    children: Mutex<HashMap<i32, Child>>,
}

impl ProcessContainerizer {
    pub fn new() -> Self {
        Self::default()
    }
}

/// The start time of a process in clock ticks since boot, or `None` if it is gone or a zombie.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Process-group leaders whose environment contains `marker` (`KEEL_AGENT_ID=…`) and a `KEEL_SANDBOX` under
/// `work_dir`, which only this containerizer sets (a Docker task's processes carry the agent id too, and
/// are not ours; nor are those of another agent that claims the same id from another work directory).
fn stray_groups(marker: &str, work_dir: &std::path::Path) -> Vec<i32> {
    let sandbox = format!("KEEL_SANDBOX={}/", work_dir.display());
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let leader = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
                let rest = &stat[stat.rfind(')')? + 2..];
                rest.split_whitespace().nth(2)?.parse::<i32>().ok()
            }) == Some(*pid);
            leader
                && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|b| *b == 0).any(|var| var == marker.as_bytes())
                        && env.split(|b| *b == 0).any(|var| var.starts_with(sandbox.as_bytes()))
                })
        })
        .collect()
}

fn alive(pid: i32, started: u64) -> bool {
    start_time(pid) == Some(started)
}

/// Whether a process of group `pgid` still runs (zombies waiting for their parent do not count).
fn group_runs(pgid: i32) -> bool {
    // Most often the group is gone with its leader: no scan of every process.
    if killpg(Pid::from_raw(pgid), None).is_err() {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
            let Some(rest) = stat.rfind(')').and_then(|at| stat.get(at + 2..)) else { return false };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            state != Some("Z") && fields.nth(1).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
        })
    })
}

/// How long the end of a task's leftover processes is waited for once its leader has exited.
const GROUP_END_WAIT: Duration = Duration::from_secs(2);

/// Ends what is left of a task's process group once its leader has exited (a child still exiting after a
/// signal, or one the command left behind), and waits until none runs, so that a task reported ended has
/// no process left. Bounded: a process stuck in the kernel is logged, not waited on for ever.
async fn end_group(pgid: i32) {
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    let deadline = Instant::now() + GROUP_END_WAIT;
    while group_runs(pgid) {
        if Instant::now() >= deadline {
            tracing::warn!(pgid, "processes of the task still run after SIGKILL; reporting its end anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_status_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[async_trait]
impl Containerizer for ProcessContainerizer {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<ContainerRecord, ContainerError> {
        let sandbox = &req.sandbox;
        let sandbox_err = |source| ContainerError::Sandbox { path: sandbox.clone(), source };
        std::fs::create_dir_all(sandbox).map_err(sandbox_err)?;
        {
            // Other tasks on this agent may not read this one's output.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(sandbox, std::fs::Permissions::from_mode(0o700)).map_err(sandbox_err)?;
        }
        // Never through a symlink a previous run of this task id may have left.
        use std::os::unix::fs::OpenOptionsExt;
        let open = |name: &str| {
            std::fs::File::options().create(true).append(true).custom_flags(libc::O_NOFOLLOW).open(sandbox.join(name))
        };
        let stdout = open("stdout").map_err(sandbox_err)?;
        let stderr = open("stderr").map_err(sandbox_err)?;
        let status_file = sandbox.join(".exit_status");
        let _ = std::fs::remove_file(&status_file);

        let command = &req.task.command;
        let mut argv: Vec<String> = if command.shell {
            vec!["/bin/sh".into(), "-c".into(), command.value.clone()]
        } else {
            let mut v = vec![command.value.clone()];
            v.extend(command.arguments.iter().cloned());
            v
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(WRAPPER).arg("keel-task").arg(&status_file).args(argv.drain(..));
        cmd.current_dir(sandbox)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
            .env("HOME", sandbox)
            .env("MESOS_SANDBOX", sandbox)
            .env("KEEL_SANDBOX", sandbox)
            .env("KEEL_TASK_ID", req.task.id.as_str())
            .env("KEEL_FRAMEWORK_ID", req.framework_id.as_str())
            .env("KEEL_AGENT_ID", req.agent_id.as_str())
            .envs(&command.env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        if let Some(user) = &req.user {
            super::containerizer::run_as(&mut cmd, user, Some(sandbox))?;
        }
        let child = cmd.spawn().map_err(|e| match &req.user {
            Some(u) => ContainerError::Other(format!("cannot start the command as '{u}': {e}")),
            None => ContainerError::Spawn(e),
        })?;
        let pid =
            child.id().ok_or_else(|| ContainerError::Other("the process exited before it could be watched".into()))?
                as i32;
        // The child exists until it is reaped, so its stat is readable even if it already exited.
        let start_time = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s[s.rfind(')')? + 2..].split_whitespace().nth(19)?.parse().ok())
            .unwrap_or(0);
        self.children.lock().expect("lock poisoned").insert(pid, child);
        info!(task_id = %req.task.id, pid, "process launched");
        Ok(ContainerRecord::Process { pid, start_time, status_file })
    }

    async fn wait(&self, record: &ContainerRecord) -> Termination {
        let ContainerRecord::Process { pid, start_time, status_file } = record else {
            return Termination { message: Some("not a process container".into()), ..Default::default() };
        };
        let child = self.children.lock().expect("lock poisoned").remove(pid);
        if let Some(mut child) = child {
            let status = child.wait().await;
            end_group(*pid).await;
            return match status {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    Termination { exit_code: status.code(), signal: status.signal(), message: None }
                }
                Err(e) => {
                    Termination { message: Some(format!("cannot wait for the process: {e}")), ..Default::default() }
                }
            };
        }
        // Started by an earlier agent process: watch it from outside.
        while alive(*pid, *start_time) {
            tokio::time::sleep(POLL).await;
        }
        end_group(*pid).await;
        match read_status_file(status_file) {
            Some(code) => Termination::exited(code),
            None => Termination {
                message: Some("the process ended while the agent was not its parent, without recording an exit code (killed by a signal?)".into()),
                ..Default::default()
            },
        }
    }

    async fn kill(&self, record: &ContainerRecord, grace: Duration) -> Result<(), ContainerError> {
        let ContainerRecord::Process { pid, start_time, .. } = record else { return Ok(()) };
        let (pid, start_time) = (*pid, *start_time);
        if !alive(pid, start_time) {
            return Ok(());
        }
        debug!(pid, ?grace, "sending SIGTERM to the process group");
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !alive(pid, start_time) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if alive(pid, start_time) {
            info!(pid, "grace period over; sending SIGKILL");
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Ok(())
    }

    async fn recover(
        &self,
        agent_id: Option<&AgentId>,
        work_dir: &std::path::Path,
        records: &[ContainerRecord],
    ) -> Result<(), ContainerError> {
        // Known processes need nothing: `wait` watches recovered pids by itself. Process groups this agent
        // started that no checkpoint names (the agent died between spawning and checkpointing) are killed.
        let Some(agent_id) = agent_id else { return Ok(()) };
        let known: Vec<i32> = records
            .iter()
            .filter_map(|r| if let ContainerRecord::Process { pid, .. } = r { Some(*pid) } else { None })
            .collect();
        let marker = format!("KEEL_AGENT_ID={agent_id}");
        for pid in stray_groups(&marker, work_dir) {
            if !known.contains(&pid) {
                tracing::warn!(pid, "process group of this agent belongs to no known task; killing it");
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{FrameworkId, TaskId};
    use crate::task::{CommandSpec, TaskSpec};

    fn request(dir: &Path, command: &str) -> LaunchRequest {
        LaunchRequest {
            framework_id: FrameworkId::parse("fw").unwrap(),
            agent_id: AgentId::parse("agent").unwrap(),
            task: TaskSpec {
                id: TaskId::parse("t").unwrap(),
                name: "t".into(),
                resources: Default::default(),
                command: CommandSpec { value: command.into(), shell: true, ..Default::default() },
                labels: Default::default(),
                kill_grace: None,
                container: None,
                health_check: None,
                user: None,
            },
            sandbox: dir.join("sandbox"),
            user: None,
        }
    }

    fn runs(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn a_task_reported_ended_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new();
        // A child that ignores SIGTERM and outlives the command that started it.
        let record =
            c.launch(&request(dir.path(), "(trap '' TERM; exec sleep 60) & echo $! > child; exit 4")).await.unwrap();
        let end = c.wait(&record).await;
        assert_eq!(end.exit_code, Some(4));
        let child: i32 = std::fs::read_to_string(dir.path().join("sandbox/child")).unwrap().trim().parse().unwrap();
        assert!(!runs(child), "the task's leftover process {child} still runs after its end was reported");
    }
}
