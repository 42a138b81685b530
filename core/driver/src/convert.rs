//! Conversions between the protobuf wire types ([`crate::proto`]) and the domain types ([`crate::api`],
//! [`crate::task`]). Wire input is untrusted: every conversion from the wire validates and says what is wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::{AgentInfo, AgentTask, Call, Event, Filters, FrameworkInfo, MasterMessage, Offer};
use crate::ids::{AgentId, FrameworkId, IdError, OfferId, TaskId};
use crate::proto;
use crate::resources::{PortSet, ResourceError, Resources, Scalar};
use crate::task::{
    CommandSpec, DockerSpec, HealthCheck, HealthCheckKind, Network, PortMapping, Source, TaskSpec, TaskState,
    TaskStatus, Volume,
};

/// Why a wire message could not be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{field} must be a number of seconds from 0 to 315360000 (ten years), got {value}")]
    BadDuration { field: &'static str, value: f64 },
    #[error("unknown or unspecified {0}")]
    UnknownEnum(&'static str),
    #[error("port {0} is out of range")]
    BadPort(u32),
}

impl From<ConvertError> for tonic::Status {
    fn from(e: ConvertError) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// The longest duration accepted from the wire (ten years): far beyond any sensible timeout, and far from
/// overflowing an `Instant`.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `value` seconds as a duration, refused unless it is from 0 to [`MAX_DURATION`].
pub fn seconds(field: &'static str, value: f64) -> Result<Duration, ConvertError> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(ConvertError::BadDuration { field, value }),
    }
}

fn opt_id<T>(s: String, parse: impl FnOnce(String) -> Result<T, IdError>) -> Result<Option<T>, ConvertError> {
    if s.is_empty() { Ok(None) } else { Ok(Some(parse(s)?)) }
}

// ---- resources ----

impl From<&Resources> for proto::Resources {
    fn from(r: &Resources) -> proto::Resources {
        proto::Resources {
            cpus: r.cpus.as_f64(),
            mem: r.mem.as_f64(),
            disk: r.disk.as_f64(),
            ports: r.ports.ranges().iter().map(|&(b, e)| proto::Range { begin: b.into(), end: e.into() }).collect(),
        }
    }
}

impl TryFrom<proto::Resources> for Resources {
    type Error = ConvertError;
    fn try_from(p: proto::Resources) -> Result<Resources, ConvertError> {
        let port = |v: u32| u16::try_from(v).map_err(|_| ConvertError::BadPort(v));
        let ranges =
            p.ports.iter().map(|r| Ok((port(r.begin)?, port(r.end)?))).collect::<Result<Vec<_>, ConvertError>>()?;
        Ok(Resources {
            cpus: Scalar::from_f64(p.cpus)?,
            mem: Scalar::from_f64(p.mem)?,
            disk: Scalar::from_f64(p.disk)?,
            ports: PortSet::from_ranges(ranges)?,
        })
    }
}

fn attributes_to_proto(a: &[(String, String)]) -> Vec<proto::Attribute> {
    a.iter().map(|(name, value)| proto::Attribute { name: name.clone(), value: value.clone() }).collect()
}

fn attributes_from_proto(a: Vec<proto::Attribute>) -> Vec<(String, String)> {
    a.into_iter().map(|a| (a.name, a.value)).collect()
}

// ---- tasks ----

impl From<TaskState> for proto::TaskState {
    fn from(s: TaskState) -> proto::TaskState {
        use proto::TaskState as P;
        match s {
            TaskState::Staging => P::TaskStaging,
            TaskState::Starting => P::TaskStarting,
            TaskState::Running => P::TaskRunning,
            TaskState::Killing => P::TaskKilling,
            TaskState::Finished => P::TaskFinished,
            TaskState::Failed => P::TaskFailed,
            TaskState::Killed => P::TaskKilled,
            TaskState::Lost => P::TaskLost,
            TaskState::Error => P::TaskError,
            TaskState::Dropped => P::TaskDropped,
            TaskState::Unreachable => P::TaskUnreachable,
            TaskState::Gone => P::TaskGone,
            TaskState::Unknown => P::TaskUnknown,
        }
    }
}

impl TryFrom<proto::TaskState> for TaskState {
    type Error = ConvertError;
    fn try_from(p: proto::TaskState) -> Result<TaskState, ConvertError> {
        use proto::TaskState as P;
        Ok(match p {
            P::Unspecified => return Err(ConvertError::UnknownEnum("task state")),
            P::TaskStaging => TaskState::Staging,
            P::TaskStarting => TaskState::Starting,
            P::TaskRunning => TaskState::Running,
            P::TaskKilling => TaskState::Killing,
            P::TaskFinished => TaskState::Finished,
            P::TaskFailed => TaskState::Failed,
            P::TaskKilled => TaskState::Killed,
            P::TaskLost => TaskState::Lost,
            P::TaskError => TaskState::Error,
            P::TaskDropped => TaskState::Dropped,
            P::TaskUnreachable => TaskState::Unreachable,
            P::TaskGone => TaskState::Gone,
            P::TaskUnknown => TaskState::Unknown,
        })
    }
}

fn state_from_i32(v: i32) -> Result<TaskState, ConvertError> {
    proto::TaskState::try_from(v).map_err(|_| ConvertError::UnknownEnum("task state"))?.try_into()
}

impl From<&TaskStatus> for proto::TaskStatus {
    fn from(s: &TaskStatus) -> proto::TaskStatus {
        proto::TaskStatus {
            task_id: s.task_id.to_string(),
            state: proto::TaskState::from(s.state).into(),
            message: s.message.clone(),
            source: match s.source {
                Source::Master => "SOURCE_MASTER".into(),
                Source::Agent => "SOURCE_AGENT".into(),
            },
            reason: s.reason.clone().unwrap_or_default(),
            agent_id: s.agent_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            uuid: s.uuid.clone().unwrap_or_default(),
            timestamp: s.timestamp,
            exit_code: s.exit_code,
            healthy: s.healthy,
        }
    }
}

impl TryFrom<proto::TaskStatus> for TaskStatus {
    type Error = ConvertError;
    fn try_from(p: proto::TaskStatus) -> Result<TaskStatus, ConvertError> {
        Ok(TaskStatus {
            task_id: TaskId::parse(p.task_id)?,
            state: state_from_i32(p.state)?,
            message: p.message,
            source: if p.source == "SOURCE_MASTER" { Source::Master } else { Source::Agent },
            reason: Some(p.reason).filter(|r| !r.is_empty()),
            agent_id: opt_id(p.agent_id, AgentId::parse)?,
            uuid: Some(p.uuid).filter(|u| !u.is_empty()),
            timestamp: p.timestamp,
            exit_code: p.exit_code,
            healthy: p.healthy,
        })
    }
}

/// Converts a spec for the wire; `agent_id` is the agent it runs on, when known.
pub fn task_to_proto(t: &TaskSpec, agent_id: Option<&AgentId>) -> proto::TaskInfo {
    proto::TaskInfo {
        task_id: t.id.to_string(),
        name: t.name.clone(),
        agent_id: agent_id.map(ToString::to_string).unwrap_or_default(),
        resources: Some((&t.resources).into()),
        command: Some(proto::CommandInfo {
            value: t.command.value.clone(),
            shell: t.command.shell,
            arguments: t.command.arguments.clone(),
            environment: t.command.env.clone().into_iter().collect(),
        }),
        labels: t.labels.clone().into_iter().collect(),
        kill_grace_period_seconds: t.kill_grace.map(|d| d.as_secs_f64()).unwrap_or(0.0),
        container: t.container.as_ref().map(|d| proto::ContainerInfo { docker: Some(docker_to_proto(d)) }),
        health_check: t.health_check.as_ref().map(health_check_to_proto),
        user: t.user.clone().unwrap_or_default(),
    }
}

fn docker_to_proto(d: &DockerSpec) -> proto::DockerInfo {
    proto::DockerInfo {
        image: d.image.clone(),
        force_pull_image: d.force_pull,
        network: match d.network {
            Network::Host => proto::docker_info::Network::Host,
            Network::Bridge => proto::docker_info::Network::Bridge,
        }
        .into(),
        port_mappings: d
            .port_mappings
            .iter()
            .map(|m| proto::PortMapping {
                host_port: m.host_port.into(),
                container_port: m.container_port.into(),
                protocol: m.protocol.clone(),
            })
            .collect(),
        volumes: d
            .volumes
            .iter()
            .map(|v| proto::Volume {
                host_path: v.host_path.clone(),
                container_path: v.container_path.clone(),
                mode: if v.read_only { "RO".into() } else { "RW".into() },
            })
            .collect(),
    }
}

fn docker_from_proto(p: proto::DockerInfo) -> Result<DockerSpec, ConvertError> {
    let port = |v: u32| u16::try_from(v).map_err(|_| ConvertError::BadPort(v));
    let network = match proto::docker_info::Network::try_from(p.network) {
        Ok(proto::docker_info::Network::Host) => Network::Host,
        Ok(proto::docker_info::Network::Bridge) => Network::Bridge,
        Err(_) => return Err(ConvertError::UnknownEnum("docker network")),
    };
    let port_mappings = p
        .port_mappings
        .into_iter()
        .map(|m| {
            let protocol = if m.protocol.is_empty() { "tcp".to_owned() } else { m.protocol.to_lowercase() };
            if protocol != "tcp" && protocol != "udp" {
                return Err(ConvertError::UnknownEnum("port mapping protocol"));
            }
            Ok(PortMapping { host_port: port(m.host_port)?, container_port: port(m.container_port)?, protocol })
        })
        .collect::<Result<_, _>>()?;
    let volumes = p
        .volumes
        .into_iter()
        .map(|v| {
            let read_only = match v.mode.to_uppercase().as_str() {
                "RO" => true,
                "RW" | "" => false,
                _ => return Err(ConvertError::UnknownEnum("volume mode")),
            };
            if v.host_path.is_empty() || v.container_path.is_empty() {
                return Err(ConvertError::Missing("volume host_path and container_path"));
            }
            Ok(Volume { host_path: v.host_path, container_path: v.container_path, read_only })
        })
        .collect::<Result<_, _>>()?;
    Ok(DockerSpec { image: p.image, force_pull: p.force_pull_image, network, port_mappings, volumes })
}

fn health_check_to_proto(h: &HealthCheck) -> proto::HealthCheck {
    use proto::health_check::Type;
    let mut p = proto::HealthCheck {
        grace_period_seconds: h.grace_period.as_secs_f64(),
        interval_seconds: h.interval.as_secs_f64(),
        timeout_seconds: h.timeout.as_secs_f64(),
        max_consecutive_failures: h.max_consecutive_failures,
        ..Default::default()
    };
    match &h.kind {
        HealthCheckKind::Http { path, port_index } => {
            p.set_type(Type::Http);
            p.path = path.clone();
            p.port_index = *port_index as u32;
        }
        HealthCheckKind::Tcp { port_index } => {
            p.set_type(Type::Tcp);
            p.port_index = *port_index as u32;
        }
        HealthCheckKind::Command { command } => {
            p.set_type(Type::Command);
            p.command = command.clone();
        }
    }
    p
}

fn health_check_from_proto(p: proto::HealthCheck) -> Result<HealthCheck, ConvertError> {
    use proto::health_check::Type;
    let kind = match p.r#type() {
        Type::Unknown => return Err(ConvertError::UnknownEnum("health check type")),
        Type::Http => HealthCheckKind::Http {
            path: if p.path.is_empty() { "/".into() } else { p.path.clone() },
            port_index: p.port_index as usize,
        },
        Type::Tcp => HealthCheckKind::Tcp { port_index: p.port_index as usize },
        Type::Command => {
            if p.command.trim().is_empty() {
                return Err(ConvertError::Missing("health check command"));
            }
            HealthCheckKind::Command { command: p.command.clone() }
        }
    };
    Ok(HealthCheck {
        kind,
        grace_period: seconds("grace_period_seconds", p.grace_period_seconds)?,
        interval: seconds("interval_seconds", p.interval_seconds)?,
        timeout: seconds("timeout_seconds", p.timeout_seconds)?,
        max_consecutive_failures: p.max_consecutive_failures,
    })
}

impl TryFrom<proto::TaskInfo> for TaskSpec {
    type Error = ConvertError;
    fn try_from(p: proto::TaskInfo) -> Result<TaskSpec, ConvertError> {
        let command = p.command.ok_or(ConvertError::Missing("task command"))?;
        let grace = seconds("kill_grace_period_seconds", p.kill_grace_period_seconds)?;
        Ok(TaskSpec {
            id: TaskId::parse(p.task_id)?,
            name: p.name,
            resources: p.resources.ok_or(ConvertError::Missing("task resources"))?.try_into()?,
            command: CommandSpec {
                value: command.value,
                shell: command.shell,
                arguments: command.arguments,
                env: command.environment.into_iter().collect::<BTreeMap<_, _>>(),
            },
            labels: p.labels.into_iter().collect(),
            kill_grace: Some(grace).filter(|g| !g.is_zero()),
            container: p
                .container
                .map(|c| c.docker.ok_or(ConvertError::Missing("container.docker")).and_then(docker_from_proto))
                .transpose()?,
            health_check: p.health_check.map(health_check_from_proto).transpose()?,
            user: Some(p.user).filter(|u| !u.is_empty()),
        })
    }
}

// ---- scheduler API ----

impl From<&FrameworkInfo> for proto::FrameworkInfo {
    fn from(f: &FrameworkInfo) -> proto::FrameworkInfo {
        proto::FrameworkInfo {
            name: f.name.clone(),
            role: f.role.clone(),
            failover_timeout_seconds: f.failover_timeout.as_secs_f64(),
            webui_url: f.webui_url.clone(),
            user: f.user.clone(),
            hostname: f.hostname.clone(),
        }
    }
}

impl TryFrom<proto::FrameworkInfo> for FrameworkInfo {
    type Error = ConvertError;
    fn try_from(p: proto::FrameworkInfo) -> Result<FrameworkInfo, ConvertError> {
        if p.name.trim().is_empty() {
            return Err(ConvertError::Missing("framework name"));
        }
        Ok(FrameworkInfo {
            name: p.name,
            role: if p.role.is_empty() { "*".into() } else { p.role },
            failover_timeout: seconds("failover_timeout_seconds", p.failover_timeout_seconds)?,
            webui_url: p.webui_url,
            user: p.user,
            hostname: p.hostname,
        })
    }
}

fn filters_from_proto(f: Option<proto::Filters>) -> Result<Filters, ConvertError> {
    let refuse = f.and_then(|f| f.refuse_seconds).map(|s| seconds("refuse_seconds", s)).transpose()?;
    Ok(Filters { refuse })
}

fn filters_to_proto(f: &Filters) -> Option<proto::Filters> {
    Some(proto::Filters { refuse_seconds: f.refuse.map(|d| d.as_secs_f64()) })
}

fn offer_ids(ids: Vec<String>) -> Result<Vec<OfferId>, ConvertError> {
    if ids.is_empty() {
        return Err(ConvertError::Missing("offer_ids"));
    }
    Ok(ids.into_iter().map(OfferId::parse).collect::<Result<_, _>>()?)
}

/// A SUBSCRIBE call: the framework id it re-subscribes with, if any, and its info.
pub fn subscribe_from_proto(c: proto::Call) -> Result<(Option<FrameworkId>, FrameworkInfo), ConvertError> {
    if c.r#type() != proto::call::Type::Subscribe {
        return Err(ConvertError::Missing("SUBSCRIBE as the first call"));
    }
    let info = c.subscribe.and_then(|s| s.framework_info).ok_or(ConvertError::Missing("subscribe.framework_info"))?;
    Ok((opt_id(c.framework_id, FrameworkId::parse)?, info.try_into()?))
}

pub fn subscribe_to_proto(framework_id: Option<&FrameworkId>, info: &FrameworkInfo) -> proto::Call {
    proto::Call {
        framework_id: framework_id.map(ToString::to_string).unwrap_or_default(),
        r#type: proto::call::Type::Subscribe.into(),
        subscribe: Some(proto::call::Subscribe { framework_info: Some(info.into()) }),
        ..Default::default()
    }
}

/// Any call other than SUBSCRIBE.
impl TryFrom<proto::Call> for Call {
    type Error = ConvertError;
    fn try_from(c: proto::Call) -> Result<Call, ConvertError> {
        use proto::call::Type;
        Ok(match c.r#type() {
            Type::Unknown => return Err(ConvertError::UnknownEnum("call type")),
            Type::Subscribe => return Err(ConvertError::Missing("a new stream for SUBSCRIBE (already subscribed)")),
            Type::Teardown => Call::Teardown,
            Type::Revive => Call::Revive,
            Type::Suppress => Call::Suppress,
            Type::Accept => {
                let a = c.accept.ok_or(ConvertError::Missing("accept"))?;
                let mut tasks = Vec::new();
                for op in a.operations {
                    if op.r#type() != proto::call::operation::Type::Launch {
                        return Err(ConvertError::UnknownEnum("operation type"));
                    }
                    let launch = op.launch.ok_or(ConvertError::Missing("operation.launch"))?;
                    for t in launch.task_infos {
                        tasks.push(t.try_into()?);
                    }
                }
                Call::Accept { offer_ids: offer_ids(a.offer_ids)?, tasks, filters: filters_from_proto(a.filters)? }
            }
            Type::Decline => {
                let d = c.decline.ok_or(ConvertError::Missing("decline"))?;
                Call::Decline { offer_ids: offer_ids(d.offer_ids)?, filters: filters_from_proto(d.filters)? }
            }
            Type::Kill => {
                let k = c.kill.ok_or(ConvertError::Missing("kill"))?;
                Call::Kill { task_id: TaskId::parse(k.task_id)?, agent_id: opt_id(k.agent_id, AgentId::parse)? }
            }
            Type::Acknowledge => {
                let a = c.acknowledge.ok_or(ConvertError::Missing("acknowledge"))?;
                if a.uuid.is_empty() {
                    return Err(ConvertError::Missing("acknowledge.uuid"));
                }
                Call::Acknowledge {
                    agent_id: AgentId::parse(a.agent_id)?,
                    task_id: TaskId::parse(a.task_id)?,
                    uuid: a.uuid,
                }
            }
            Type::Reconcile => {
                let r = c.reconcile.unwrap_or_default();
                let tasks = r
                    .tasks
                    .into_iter()
                    .map(|t| Ok((TaskId::parse(t.task_id)?, opt_id(t.agent_id, AgentId::parse)?)))
                    .collect::<Result<_, ConvertError>>()?;
                Call::Reconcile { tasks }
            }
        })
    }
}

/// Encodes a call for `framework_id`.
pub fn call_to_proto(framework_id: &FrameworkId, call: &Call) -> proto::Call {
    use proto::call::{self as pc, Type};
    let mut p = proto::Call { framework_id: framework_id.to_string(), ..Default::default() };
    let ids = |ids: &[OfferId]| ids.iter().map(ToString::to_string).collect();
    match call {
        Call::Accept { offer_ids, tasks, filters } => {
            p.set_type(Type::Accept);
            p.accept = Some(pc::Accept {
                offer_ids: ids(offer_ids),
                operations: vec![pc::Operation {
                    r#type: pc::operation::Type::Launch.into(),
                    launch: Some(pc::Launch { task_infos: tasks.iter().map(|t| task_to_proto(t, None)).collect() }),
                }],
                filters: filters_to_proto(filters),
            });
        }
        Call::Decline { offer_ids, filters } => {
            p.set_type(Type::Decline);
            p.decline = Some(pc::Decline { offer_ids: ids(offer_ids), filters: filters_to_proto(filters) });
        }
        Call::Revive => p.set_type(Type::Revive),
        Call::Suppress => p.set_type(Type::Suppress),
        Call::Teardown => p.set_type(Type::Teardown),
        Call::Kill { task_id, agent_id } => {
            p.set_type(Type::Kill);
            p.kill = Some(pc::Kill {
                task_id: task_id.to_string(),
                agent_id: agent_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            });
        }
        Call::Acknowledge { agent_id, task_id, uuid } => {
            p.set_type(Type::Acknowledge);
            p.acknowledge = Some(pc::Acknowledge {
                agent_id: agent_id.to_string(),
                task_id: task_id.to_string(),
                uuid: uuid.clone(),
            });
        }
        Call::Reconcile { tasks } => {
            p.set_type(Type::Reconcile);
            p.reconcile = Some(pc::Reconcile {
                tasks: tasks
                    .iter()
                    .map(|(t, a)| pc::reconcile::Task {
                        task_id: t.to_string(),
                        agent_id: a.as_ref().map(ToString::to_string).unwrap_or_default(),
                    })
                    .collect(),
            });
        }
    }
    p
}

impl From<&Offer> for proto::Offer {
    fn from(o: &Offer) -> proto::Offer {
        proto::Offer {
            id: o.id.to_string(),
            framework_id: o.framework_id.to_string(),
            agent_id: o.agent_id.to_string(),
            hostname: o.hostname.clone(),
            resources: Some((&o.resources).into()),
            attributes: attributes_to_proto(&o.attributes),
            docker: o.docker,
        }
    }
}

impl TryFrom<proto::Offer> for Offer {
    type Error = ConvertError;
    fn try_from(p: proto::Offer) -> Result<Offer, ConvertError> {
        Ok(Offer {
            id: OfferId::parse(p.id)?,
            framework_id: FrameworkId::parse(p.framework_id)?,
            agent_id: AgentId::parse(p.agent_id)?,
            hostname: p.hostname,
            resources: p.resources.ok_or(ConvertError::Missing("offer resources"))?.try_into()?,
            attributes: attributes_from_proto(p.attributes),
            docker: p.docker,
        })
    }
}

impl From<&Event> for proto::Event {
    fn from(e: &Event) -> proto::Event {
        use proto::event::{self as pe, Type};
        let mut p = proto::Event::default();
        match e {
            Event::Subscribed { framework_id, heartbeat_interval } => {
                p.set_type(Type::Subscribed);
                p.subscribed = Some(pe::Subscribed {
                    framework_id: framework_id.to_string(),
                    heartbeat_interval_seconds: heartbeat_interval.as_secs_f64(),
                });
            }
            Event::Offers(offers) => {
                p.set_type(Type::Offers);
                p.offers = Some(pe::Offers { offers: offers.iter().map(Into::into).collect() });
            }
            Event::Rescind(id) => {
                p.set_type(Type::Rescind);
                p.rescind = Some(pe::Rescind { offer_id: id.to_string() });
            }
            Event::Update(status) => {
                p.set_type(Type::Update);
                p.update = Some(pe::Update { status: Some(status.into()) });
            }
            Event::Failure { agent_id } => {
                p.set_type(Type::Failure);
                p.failure = Some(pe::Failure { agent_id: agent_id.to_string() });
            }
            Event::Error(message) => {
                p.set_type(Type::Error);
                p.error = Some(pe::Error { message: message.clone() });
            }
            Event::Heartbeat => p.set_type(Type::Heartbeat),
        }
        p
    }
}

impl TryFrom<proto::Event> for Event {
    type Error = ConvertError;
    fn try_from(p: proto::Event) -> Result<Event, ConvertError> {
        use proto::event::Type;
        Ok(match p.r#type() {
            Type::Unknown => return Err(ConvertError::UnknownEnum("event type")),
            Type::Subscribed => {
                let s = p.subscribed.ok_or(ConvertError::Missing("subscribed"))?;
                Event::Subscribed {
                    framework_id: FrameworkId::parse(s.framework_id)?,
                    heartbeat_interval: seconds("heartbeat_interval_seconds", s.heartbeat_interval_seconds)?,
                }
            }
            Type::Offers => Event::Offers(
                p.offers.unwrap_or_default().offers.into_iter().map(Offer::try_from).collect::<Result<_, _>>()?,
            ),
            Type::Rescind => {
                Event::Rescind(OfferId::parse(p.rescind.ok_or(ConvertError::Missing("rescind"))?.offer_id)?)
            }
            Type::Update => Event::Update(
                p.update.and_then(|u| u.status).ok_or(ConvertError::Missing("update.status"))?.try_into()?,
            ),
            Type::Failure => Event::Failure {
                agent_id: AgentId::parse(p.failure.ok_or(ConvertError::Missing("failure"))?.agent_id)?,
            },
            Type::Error => Event::Error(p.error.map(|e| e.message).unwrap_or_default()),
            Type::Heartbeat => Event::Heartbeat,
        })
    }
}

// ---- agent protocol ----

impl From<&AgentInfo> for proto::AgentInfo {
    fn from(a: &AgentInfo) -> proto::AgentInfo {
        proto::AgentInfo {
            id: a.id.as_ref().map(ToString::to_string).unwrap_or_default(),
            hostname: a.hostname.clone(),
            resources: Some((&a.resources).into()),
            attributes: attributes_to_proto(&a.attributes),
            docker: a.docker,
        }
    }
}

impl TryFrom<proto::AgentInfo> for AgentInfo {
    type Error = ConvertError;
    fn try_from(p: proto::AgentInfo) -> Result<AgentInfo, ConvertError> {
        Ok(AgentInfo {
            id: opt_id(p.id, AgentId::parse)?,
            hostname: p.hostname,
            resources: p.resources.ok_or(ConvertError::Missing("agent resources"))?.try_into()?,
            attributes: attributes_from_proto(p.attributes),
            docker: p.docker,
        })
    }
}

impl From<&AgentTask> for proto::AgentTask {
    fn from(t: &AgentTask) -> proto::AgentTask {
        proto::AgentTask {
            framework_id: t.framework_id.to_string(),
            task: Some(task_to_proto(&t.spec, None)),
            state: proto::TaskState::from(t.state).into(),
            healthy: t.healthy,
        }
    }
}

impl TryFrom<proto::AgentTask> for AgentTask {
    type Error = ConvertError;
    fn try_from(p: proto::AgentTask) -> Result<AgentTask, ConvertError> {
        Ok(AgentTask {
            framework_id: FrameworkId::parse(p.framework_id)?,
            spec: p.task.ok_or(ConvertError::Missing("agent task"))?.try_into()?,
            state: state_from_i32(p.state)?,
            healthy: p.healthy,
        })
    }
}

impl From<&MasterMessage> for proto::MasterMessage {
    fn from(m: &MasterMessage) -> proto::MasterMessage {
        use proto::master_message::{self as pm, Kind};
        let kind = match m {
            MasterMessage::Registered { agent_id, heartbeat_interval } => Kind::Registered(pm::Registered {
                agent_id: agent_id.to_string(),
                heartbeat_interval_seconds: heartbeat_interval.as_secs_f64(),
            }),
            MasterMessage::RunTask { framework_id, spec } => Kind::RunTask(pm::RunTask {
                framework_id: framework_id.to_string(),
                task: Some(task_to_proto(spec, None)),
            }),
            MasterMessage::KillTask { framework_id, task_id } => {
                Kind::KillTask(pm::KillTask { framework_id: framework_id.to_string(), task_id: task_id.to_string() })
            }
            MasterMessage::ReadFile { request_id, framework_id, task_id, file, offset, length } => {
                Kind::ReadFile(pm::ReadFile {
                    request_id: *request_id,
                    framework_id: framework_id.to_string(),
                    task_id: task_id.to_string(),
                    file: file.clone(),
                    offset: *offset,
                    length: *length,
                })
            }
            MasterMessage::Acknowledge { framework_id, task_id, uuid } => Kind::Acknowledge(pm::Acknowledge {
                framework_id: framework_id.to_string(),
                task_id: task_id.to_string(),
                uuid: uuid.clone(),
            }),
        };
        proto::MasterMessage { kind: Some(kind) }
    }
}

impl TryFrom<proto::MasterMessage> for MasterMessage {
    type Error = ConvertError;
    fn try_from(p: proto::MasterMessage) -> Result<MasterMessage, ConvertError> {
        use proto::master_message::Kind;
        Ok(match p.kind.ok_or(ConvertError::Missing("master message"))? {
            Kind::Registered(r) => MasterMessage::Registered {
                agent_id: AgentId::parse(r.agent_id)?,
                heartbeat_interval: seconds("heartbeat_interval_seconds", r.heartbeat_interval_seconds)?,
            },
            Kind::RunTask(r) => MasterMessage::RunTask {
                framework_id: FrameworkId::parse(r.framework_id)?,
                spec: Box::new(r.task.ok_or(ConvertError::Missing("run_task.task"))?.try_into()?),
            },
            Kind::KillTask(k) => MasterMessage::KillTask {
                framework_id: FrameworkId::parse(k.framework_id)?,
                task_id: TaskId::parse(k.task_id)?,
            },
            Kind::ReadFile(r) => MasterMessage::ReadFile {
                request_id: r.request_id,
                framework_id: FrameworkId::parse(r.framework_id)?,
                task_id: TaskId::parse(r.task_id)?,
                file: r.file,
                offset: r.offset,
                length: r.length,
            },
            Kind::Acknowledge(a) => MasterMessage::Acknowledge {
                framework_id: FrameworkId::parse(a.framework_id)?,
                task_id: TaskId::parse(a.task_id)?,
                uuid: a.uuid,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            id: TaskId::parse("t1").unwrap(),
            name: "t".into(),
            resources: "cpus:0.5;mem:32;ports:[31000-31001]".parse().unwrap(),
            command: CommandSpec {
                value: "echo hi".into(),
                shell: true,
                arguments: vec![],
                env: [("A".into(), "1".into())].into(),
            },
            labels: BTreeMap::new(),
            kill_grace: Some(Duration::from_secs(2)),
            container: Some(DockerSpec {
                image: "busybox".into(),
                force_pull: true,
                network: Network::Bridge,
                port_mappings: vec![PortMapping { host_port: 31000, container_port: 80, protocol: "tcp".into() }],
                volumes: vec![Volume { host_path: "/tmp".into(), container_path: "/data".into(), read_only: true }],
            }),
            health_check: Some(HealthCheck {
                kind: HealthCheckKind::Http { path: "/health".into(), port_index: 1 },
                grace_period: Duration::from_secs(5),
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                max_consecutive_failures: 3,
            }),
            user: Some("nobody".into()),
        }
    }

    #[test]
    fn calls_round_trip() {
        let fw = FrameworkId::parse("fw").unwrap();
        let calls = vec![
            Call::Accept {
                offer_ids: vec![OfferId::parse("o1").unwrap()],
                tasks: vec![spec()],
                filters: Filters { refuse: Some(Duration::ZERO) },
            },
            Call::Decline { offer_ids: vec![OfferId::parse("o1").unwrap()], filters: Filters::default() },
            Call::Kill { task_id: TaskId::parse("t1").unwrap(), agent_id: None },
            Call::Acknowledge {
                agent_id: AgentId::parse("a").unwrap(),
                task_id: TaskId::parse("t1").unwrap(),
                uuid: "u".into(),
            },
            Call::Reconcile { tasks: vec![(TaskId::parse("t1").unwrap(), None)] },
            Call::Revive,
            Call::Suppress,
            Call::Teardown,
        ];
        for call in calls {
            assert_eq!(Call::try_from(call_to_proto(&fw, &call)).unwrap(), call);
        }
    }

    #[test]
    fn bad_wire_input_is_named() {
        let mut p = call_to_proto(&FrameworkId::parse("fw").unwrap(), &Call::Revive);
        p.r#type = 99;
        assert_eq!(Call::try_from(p).unwrap_err(), ConvertError::UnknownEnum("call type"));
        let p = proto::Call { r#type: proto::call::Type::Accept.into(), ..Default::default() };
        assert_eq!(Call::try_from(p).unwrap_err().to_string(), "accept is missing");
        let mut t = task_to_proto(&spec(), None);
        t.task_id = "../etc".into();
        assert!(TaskSpec::try_from(t).is_err());
        let mut t = task_to_proto(&spec(), None);
        t.resources.as_mut().unwrap().cpus = -1.0;
        assert!(TaskSpec::try_from(t).is_err());
    }
}
