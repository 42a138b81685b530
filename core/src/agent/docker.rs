//! The Docker containerizer: tasks with a container run as Docker containers through the engine's API
//! (bollard).
//!
//! Each container is labelled with Keel's task, framework and agent ids. Its cpus become a CPU quota and
//! its mem a memory limit (without swap). Its output is copied into the task's sandbox, like a process's,
//! and the sandbox is mounted at `/mnt/mesos/sandbox`. A kill is `docker stop` with the task's grace period.
//! Ended containers are removed unless the agent keeps them. A restarted agent finds its containers by id
//! (from its checkpoints) and stops and removes any labelled with its agent id that no task owns.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use tracing::{debug, info, warn};

use super::containerizer::{ContainerError, ContainerRecord, Containerizer, LaunchRequest, Termination};
use crate::ids::AgentId;
use crate::task::Network;

pub const LABEL_TASK: &str = "keel.task_id";
pub const LABEL_FRAMEWORK: &str = "keel.framework_id";
pub const LABEL_AGENT: &str = "keel.agent_id";

/// Where the task's sandbox appears inside its container (Mesos's path, which existing images expect).
pub const SANDBOX_IN_CONTAINER: &str = "/mnt/mesos/sandbox";

fn docker_err(e: DockerError) -> ContainerError {
    ContainerError::Docker(match e {
        DockerError::DockerResponseServerError { status_code, message } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    })
}

fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Runs tasks as Docker containers.
pub struct DockerContainerizer {
    docker: Docker,
    /// Keep ended containers for inspection instead of removing them.
    keep_containers: bool,
}

impl DockerContainerizer {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and checks that it answers.
    pub async fn connect(keep_containers: bool) -> Result<Self, ContainerError> {
        let docker = Docker::connect_with_local_defaults().map_err(docker_err)?;
        let docker = docker.negotiate_version().await.map_err(docker_err)?;
        docker.ping().await.map_err(docker_err)?;
        Ok(DockerContainerizer { docker, keep_containers })
    }

    /// The engine handle, for tests and tools.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    async fn pull(&self, image: &str) -> Result<(), ContainerError> {
        info!(image, "pulling image");
        let (name, tag) = split_image(image);
        let options = CreateImageOptionsBuilder::default().from_image(name).tag(tag).build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(item) = pull.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        let message = detail.message.unwrap_or_else(|| "unknown error".into());
                        return Err(ContainerError::Pull { image: image.to_owned(), message });
                    }
                }
                Err(e) => {
                    let message = match e {
                        DockerError::DockerResponseServerError { message, .. } => message,
                        other => other.to_string(),
                    };
                    return Err(ContainerError::Pull { image: image.to_owned(), message });
                }
            }
        }
        Ok(())
    }

    /// Copies the container's output (since `since`, in Unix seconds; 0 for all) into the sandbox files
    /// until the container ends.
    fn follow_logs(&self, id: &str, sandbox: &std::path::Path, since: i32) {
        let docker = self.docker.clone();
        let id = id.to_owned();
        let sandbox = sandbox.to_owned();
        tokio::spawn(async move {
            let open = |name: &str| std::fs::File::options().create(true).append(true).open(sandbox.join(name));
            let (Ok(mut out), Ok(mut err)) = (open("stdout"), open("stderr")) else {
                warn!(container = %id, "cannot open sandbox log files");
                return;
            };
            let options = LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).since(since).build();
            let mut logs = docker.logs(&id, Some(options));
            while let Some(Ok(chunk)) = logs.next().await {
                let _ = match chunk {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => out.write_all(&message),
                    LogOutput::StdErr { message } => err.write_all(&message),
                    LogOutput::StdIn { .. } => Ok(()),
                };
            }
        });
    }

    async fn remove(&self, id: &str) {
        if self.keep_containers {
            return;
        }
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = self.docker.remove_container(id, Some(options)).await
            && status_code(&e) != Some(404)
        {
            warn!(container = %id, error = %docker_err(e), "cannot remove container");
        }
    }
}

/// `registry:5000/name:tag` → (`registry:5000/name`, `tag`); the tag defaults to `latest`.
fn split_image(image: &str) -> (&str, &str) {
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => (&image[..name_start + i], &image[name_start + i + 1..]),
        None => (image, "latest"),
    }
}

/// A Docker container name for a task: only `[a-zA-Z0-9_.-]`, unique per launch.
fn container_name(request: &LaunchRequest) -> String {
    let clean: String = request
        .task
        .id
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '_' })
        .collect();
    format!("keel-{}-{}", clean, &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[async_trait]
impl Containerizer for DockerContainerizer {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn supports_docker(&self) -> bool {
        true
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<ContainerRecord, ContainerError> {
        let task = &request.task;
        let spec = task.container.as_ref().ok_or_else(|| ContainerError::Other("the task has no container".into()))?;
        std::fs::create_dir_all(&request.sandbox)
            .map_err(|source| ContainerError::Sandbox { path: request.sandbox.clone(), source })?;
        if spec.force_pull {
            self.pull(&spec.image).await?;
        }

        let mut env: Vec<String> = task.command.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("KEEL_TASK_ID={}", task.id));
        env.push(format!("KEEL_FRAMEWORK_ID={}", request.framework_id));
        env.push(format!("KEEL_AGENT_ID={}", request.agent_id));
        env.push(format!("MESOS_SANDBOX={SANDBOX_IN_CONTAINER}"));
        let (entrypoint, cmd) = match (&task.command.value, task.command.shell) {
            (v, _) if v.trim().is_empty() => (None, Some(task.command.arguments.clone()).filter(|a| !a.is_empty())),
            (v, true) => (Some(vec!["/bin/sh".to_owned(), "-c".to_owned()]), Some(vec![v.clone()])),
            (v, false) => {
                let mut argv = vec![v.clone()];
                argv.extend(task.command.arguments.iter().cloned());
                (None, Some(argv))
            }
        };
        let mut labels: HashMap<String, String> = task.labels.clone().into_iter().collect();
        labels.insert(LABEL_TASK.into(), task.id.to_string());
        labels.insert(LABEL_FRAMEWORK.into(), request.framework_id.to_string());
        labels.insert(LABEL_AGENT.into(), request.agent_id.to_string());

        let mut binds: Vec<String> = spec
            .volumes
            .iter()
            .map(|v| format!("{}:{}:{}", v.host_path, v.container_path, if v.read_only { "ro" } else { "rw" }))
            .collect();
        binds.push(format!("{}:{SANDBOX_IN_CONTAINER}:rw", request.sandbox.display()));
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
            .port_mappings
            .iter()
            .map(|m| {
                let binding = PortBinding { host_ip: Some("0.0.0.0".into()), host_port: Some(m.host_port.to_string()) };
                (format!("{}/{}", m.container_port, m.protocol), Some(vec![binding]))
            })
            .collect();
        let exposed: Vec<String> = port_bindings.keys().cloned().collect();
        // Docker refuses memory limits under 6 MiB.
        let memory = ((task.resources.mem.as_f64() * 1024.0 * 1024.0) as i64).max(6 << 20);
        let cpu_period = 100_000i64;
        let host_config = HostConfig {
            cpu_period: Some(cpu_period),
            cpu_quota: Some(((task.resources.cpus.as_f64() * cpu_period as f64) as i64).max(1_000)),
            memory: Some(memory),
            memory_swap: Some(memory),
            network_mode: Some(match spec.network {
                Network::Host => "host".into(),
                Network::Bridge => "bridge".into(),
            }),
            port_bindings: Some(port_bindings).filter(|p| !p.is_empty()),
            binds: Some(binds),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(env),
            entrypoint,
            cmd,
            labels: Some(labels),
            exposed_ports: Some(exposed).filter(|e| !e.is_empty()),
            host_config: Some(host_config),
            user: request.user.clone(),
            ..Default::default()
        };
        let began = std::time::Instant::now();
        let name = container_name(request);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        // Creating straight away saves a round trip; a missing image is pulled and the create retried.
        let created = match self.docker.create_container(Some(options.clone()), body.clone()).await {
            Err(e) if status_code(&e) == Some(404) && !spec.force_pull => {
                self.pull(&spec.image).await?;
                self.docker.create_container(Some(options), body).await.map_err(docker_err)?
            }
            other => other.map_err(docker_err)?,
        };
        debug!(container = %created.id, elapsed = ?began.elapsed(), "container created");
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            self.remove(&created.id).await;
            return Err(docker_err(e));
        }
        info!(task_id = %task.id, container = %created.id, image = %spec.image, elapsed = ?began.elapsed(), "container started");
        self.follow_logs(&created.id, &request.sandbox, 0);
        Ok(ContainerRecord::Docker { id: created.id, sandbox: request.sandbox.clone() })
    }

    async fn wait(&self, record: &ContainerRecord) -> Termination {
        let ContainerRecord::Docker { id, .. } = record else {
            return Termination { message: Some("not a docker container".into()), ..Default::default() };
        };
        loop {
            // The wait call fails for non-zero exits too; the container's state is the truth either way.
            let _ = self.docker.wait_container(id, None).next().await;
            match self.docker.inspect_container(id, None).await {
                Ok(info) => {
                    let state = info.state.unwrap_or_default();
                    if state.running == Some(true) {
                        // The engine connection dropped (a daemon restart?): watch again.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    let code = state.exit_code.map(|c| c as i32);
                    let oom = state.oom_killed == Some(true);
                    let memory = info.host_config.and_then(|h| h.memory).unwrap_or(0) >> 20;
                    // Give the log copier a moment to drain.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.remove(id).await;
                    let message = if oom {
                        Some(format!(
                            "container exceeded its memory limit of {memory} MB and was killed by the OOM killer"
                        ))
                    } else {
                        state.error.filter(|e| !e.is_empty()).map(|e| format!("docker: {e}"))
                    };
                    return Termination { exit_code: code, signal: None, message };
                }
                Err(e) if status_code(&e) == Some(404) => {
                    return Termination {
                        message: Some("the container was removed outside of Keel".into()),
                        ..Default::default()
                    };
                }
                Err(e) => {
                    debug!(container = %id, error = %e, "cannot inspect container; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn kill(&self, record: &ContainerRecord, grace: Duration) -> Result<(), ContainerError> {
        let ContainerRecord::Docker { id, .. } = record else { return Ok(()) };
        let seconds = grace.as_secs_f64().ceil() as i32;
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_code(&e), Some(304 | 404)) => Ok(()),
            Err(e) => Err(docker_err(e)),
        }
    }

    async fn recover(
        &self,
        agent_id: Option<&AgentId>,
        work_dir: &std::path::Path,
        records: &[ContainerRecord],
    ) -> Result<(), ContainerError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i32);
        let mut known = Vec::new();
        for r in records {
            if let ContainerRecord::Docker { id, sandbox } = r {
                // Output written while the agent was down is not copied; from now on it is.
                self.follow_logs(id, sandbox, now);
                known.push(id.as_str());
            }
        }
        let Some(agent_id) = agent_id else { return Ok(()) };
        let filters = HashMap::from([("label", vec![format!("{LABEL_AGENT}={agent_id}")])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self.docker.list_containers(Some(options)).await.map_err(docker_err)?;
        for c in containers {
            let Some(id) = c.id else { continue };
            // Only containers whose sandbox is under this agent's work directory are its own.
            let ours = c
                .mounts
                .iter()
                .flatten()
                .any(|m| m.source.as_deref().is_some_and(|s| std::path::Path::new(s).starts_with(work_dir)));
            if known.contains(&id.as_str()) || !ours {
                continue;
            }
            let task = c.labels.as_ref().and_then(|l| l.get(LABEL_TASK)).cloned().unwrap_or_default();
            warn!(container = %id, task_id = %task, "container belongs to no known task; stopping and removing it");
            let options = StopContainerOptionsBuilder::default().t(1).build();
            let _ = self.docker.stop_container(&id, Some(options)).await;
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = self.docker.remove_container(&id, Some(options)).await;
        }
        Ok(())
    }

    async fn run_check(
        &self,
        record: &ContainerRecord,
        _request: &LaunchRequest,
        command: &str,
    ) -> Result<i32, ContainerError> {
        let ContainerRecord::Docker { id, .. } = record else {
            return Err(ContainerError::Other("not a docker container".into()));
        };
        let exec = self
            .docker
            .create_exec(id, CreateExecOptions { cmd: Some(vec!["/bin/sh", "-c", command]), ..Default::default() })
            .await
            .map_err(docker_err)?;
        self.docker
            .start_exec(&exec.id, Some(StartExecOptions { detach: true, ..Default::default() }))
            .await
            .map_err(docker_err)?;
        loop {
            let info = self.docker.inspect_exec(&exec.id).await.map_err(docker_err)?;
            if info.running != Some(true) {
                return Ok(info.exit_code.unwrap_or(128) as i32);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn image_names_split_into_name_and_tag() {
        assert_eq!(split_image("busybox"), ("busybox", "latest"));
        assert_eq!(split_image("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(split_image("registry:5000/team/app"), ("registry:5000/team/app", "latest"));
        assert_eq!(split_image("registry:5000/team/app:v2"), ("registry:5000/team/app", "v2"));
    }
}
