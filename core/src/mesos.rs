//! Mesos's v1 scheduler API (`scheduler.proto` and `mesos.proto` of Mesos 1.x) in its JSON form, mapped onto
//! Keel's domain ([`crate::api`], [`crate::task`]). Pure: the HTTP edge ([`crate::master::v1`]) parses calls
//! with [`parse_call`] and writes events with [`event_json`].
//!
//! What Keel cannot do is refused, never ignored: a call Keel does not serve is a 400 naming it, and a task
//! that asks for a feature Keel lacks (a custom executor, URIs to fetch, GPUs…) is answered TASK_ERROR with
//! the reason. Fields Mesos reads only to pass them on (labels of a framework, a task's `discovery`) are
//! accepted.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::api::{Call, Event, Filters, FrameworkInfo, Offer};
use crate::convert::MAX_DURATION;
use crate::ids::{AgentId, FrameworkId, OfferId, TaskId};
use crate::resources::{PortSet, Resources, Scalar};
use crate::task::{
    CommandSpec, DockerSpec, HealthCheck, HealthCheckKind, Network, PortMapping, Source, TaskSpec, TaskState,
    TaskStatus, Volume, reason,
};

/// The largest request body the v1 API reads.
pub const MAX_BODY: usize = 8 << 20;

/// Mesos's `{"value": "..."}` id wrapper.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct Id {
    pub value: String,
}

fn id(value: &str) -> Value {
    json!({ "value": value })
}

// ---- what a call is turned into ----

/// Tasks refused before the master sees them, each with why.
pub type Refused = Vec<(TaskId, String)>;

/// A parsed call: what the edge does with it.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Subscribe {
        framework_id: Option<FrameworkId>,
        info: FrameworkInfo,
        /// The principal FrameworkInfo names, checked against the credential by the edge.
        principal: Option<String>,
    },
    /// A call for the master. `refused` are tasks of an ACCEPT that Keel refuses before the master sees
    /// them: each is answered TASK_ERROR with its reason.
    Call { framework_id: FrameworkId, call: Call, refused: Refused },
    /// A call Mesos accepts and Keel has nothing to do for (REQUEST; MESSAGE, which only executors read,
    /// and Keel runs only its built-in one, which ignores messages as Mesos's command executor does).
    Ignored { framework_id: FrameworkId, kind: &'static str },
}

/// Why a call is refused with 400.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadCall(pub String);

fn bad(message: impl Into<String>) -> BadCall {
    BadCall(message.into())
}

// ---- the call's JSON ----

#[derive(Deserialize, Debug)]
struct CallJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    framework_id: Option<Id>,
    subscribe: Option<SubscribeJson>,
    accept: Option<AcceptJson>,
    decline: Option<DeclineJson>,
    kill: Option<KillJson>,
    acknowledge: Option<AcknowledgeJson>,
    reconcile: Option<ReconcileJson>,
    message: Option<MessageJson>,
}

#[derive(Deserialize, Debug)]
struct SubscribeJson {
    framework_info: Option<Checked<FrameworkInfoJson>>,
    #[serde(default)]
    suppressed_roles: Vec<String>,
}

#[derive(Deserialize, Debug)]
struct FrameworkInfoJson {
    user: Option<String>,
    name: Option<String>,
    id: Option<Id>,
    failover_timeout: Option<f64>,
    /// Keel's agents always keep their tasks' records: accepted either way.
    #[allow(dead_code)]
    checkpoint: Option<bool>,
    role: Option<String>,
    roles: Option<Vec<String>>,
    hostname: Option<String>,
    principal: Option<String>,
    webui_url: Option<String>,
    #[serde(default)]
    capabilities: Vec<CapabilityJson>,
    /// Passed on by Mesos, unread by it; accepted.
    #[allow(dead_code)]
    labels: Option<Value>,
}

#[derive(Deserialize, Debug)]
struct CapabilityJson {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize, Debug)]
struct FiltersJson {
    refuse_seconds: Option<f64>,
}

#[derive(Deserialize, Debug)]
struct AcceptJson {
    #[serde(default)]
    offer_ids: Vec<Id>,
    #[serde(default)]
    operations: Vec<OperationJson>,
    filters: Option<FiltersJson>,
}

#[derive(Deserialize, Debug)]
struct DeclineJson {
    #[serde(default)]
    offer_ids: Vec<Id>,
    filters: Option<FiltersJson>,
}

#[derive(Deserialize, Debug)]
struct OperationJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    launch: Option<LaunchJson>,
    launch_group: Option<LaunchGroupJson>,
}

#[derive(Deserialize, Debug)]
struct LaunchJson {
    #[serde(default)]
    task_infos: Vec<Box<RawValue>>,
}

#[derive(Deserialize, Debug)]
struct LaunchGroupJson {
    executor: Option<ExecutorJson>,
    task_group: Option<TaskGroupJson>,
}

#[derive(Deserialize, Debug)]
struct ExecutorJson {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize, Debug)]
struct TaskGroupJson {
    #[serde(default)]
    tasks: Vec<Box<RawValue>>,
}

#[derive(Deserialize, Debug)]
struct KillJson {
    task_id: Option<Id>,
    agent_id: Option<Id>,
    kill_policy: Option<Value>,
}

#[derive(Deserialize, Debug)]
struct AcknowledgeJson {
    agent_id: Option<Id>,
    task_id: Option<Id>,
    uuid: Option<String>,
}

#[derive(Deserialize, Debug)]
struct ReconcileJson {
    #[serde(default)]
    tasks: Vec<ReconcileTaskJson>,
}

#[derive(Deserialize, Debug)]
struct ReconcileTaskJson {
    task_id: Option<Id>,
    agent_id: Option<Id>,
}

#[derive(Deserialize, Debug)]
struct MessageJson {
    agent_id: Option<Id>,
    executor_id: Option<Id>,
    data: Option<String>,
}

/// The call types of Mesos 1.11's `scheduler.proto` that Keel does not serve, with why.
const UNSERVED: [(&str, &str); 6] = [
    ("ACCEPT_INVERSE_OFFERS", "Keel makes no inverse offers (it has no maintenance schedules)"),
    ("DECLINE_INVERSE_OFFERS", "Keel makes no inverse offers (it has no maintenance schedules)"),
    ("SHUTDOWN", "Keel runs no custom executors to shut down"),
    ("ACKNOWLEDGE_OPERATION_STATUS", "Keel offers no operations with status feedback"),
    ("RECONCILE_OPERATIONS", "Keel offers no operations with status feedback"),
    ("UPDATE_FRAMEWORK", "Keel does not update a framework's info in place: re-subscribe with the new info"),
];

/// Parses one v1 call (JSON). Bad input is a [`BadCall`] that says what is wrong.
pub fn parse_call(body: &[u8]) -> Result<Parsed, BadCall> {
    let call: CallJson = serde_json::from_slice(body).map_err(|e| bad(format!("the call is not valid JSON: {e}")))?;
    let kind = call.kind.as_deref().ok_or_else(|| bad("the call has no 'type'"))?;
    if kind == "SUBSCRIBE" {
        return subscribe(call);
    }
    if let Some((_, why)) = UNSERVED.iter().find(|(k, _)| *k == kind) {
        return Err(bad(format!("call type {kind} is not supported: {why}")));
    }
    let framework_id = framework_id(call.framework_id.as_ref())?
        .ok_or_else(|| bad(format!("a {kind} call must name its framework in 'framework_id'")))?;
    let plain = |call: Call| Ok(Parsed::Call { framework_id: framework_id.clone(), call, refused: Vec::new() });
    match kind {
        "TEARDOWN" => plain(Call::Teardown),
        "REVIVE" => plain(Call::Revive),
        "SUPPRESS" => plain(Call::Suppress),
        "ACCEPT" => {
            let accept = call.accept.ok_or_else(|| bad("an ACCEPT call needs 'accept'"))?;
            let (tasks, refused) = launches(accept.operations)?;
            let call =
                Call::Accept { offer_ids: offer_ids(&accept.offer_ids)?, tasks, filters: filters(accept.filters)? };
            Ok(Parsed::Call { framework_id, call, refused })
        }
        "DECLINE" => {
            let decline = call.decline.ok_or_else(|| bad("a DECLINE call needs 'decline'"))?;
            plain(Call::Decline { offer_ids: offer_ids(&decline.offer_ids)?, filters: filters(decline.filters)? })
        }
        "KILL" => {
            let kill = call.kill.ok_or_else(|| bad("a KILL call needs 'kill'"))?;
            if kill.kill_policy.as_ref().is_some_and(|p| !is_empty(p)) {
                return Err(bad("kill.kill_policy is not supported: the task's own kill_policy applies"));
            }
            let task_id = task_id(kill.task_id.as_ref(), "kill.task_id")?;
            plain(Call::Kill { task_id, agent_id: agent_id(kill.agent_id.as_ref())? })
        }
        "ACKNOWLEDGE" => {
            let ack = call.acknowledge.ok_or_else(|| bad("an ACKNOWLEDGE call needs 'acknowledge'"))?;
            let agent_id = agent_id(ack.agent_id.as_ref())?.ok_or_else(|| bad("acknowledge.agent_id is missing"))?;
            let task_id = task_id(ack.task_id.as_ref(), "acknowledge.task_id")?;
            let uuid = uuid_from_json(ack.uuid.as_deref().ok_or_else(|| bad("acknowledge.uuid is missing"))?)?;
            plain(Call::Acknowledge { agent_id, task_id, uuid })
        }
        "RECONCILE" => {
            let reconcile = call.reconcile.unwrap_or(ReconcileJson { tasks: Vec::new() });
            let tasks = reconcile
                .tasks
                .iter()
                .map(|t| {
                    Ok((task_id(t.task_id.as_ref(), "reconcile.tasks[].task_id")?, agent_id(t.agent_id.as_ref())?))
                })
                .collect::<Result<_, BadCall>>()?;
            plain(Call::Reconcile { tasks })
        }
        "MESSAGE" => {
            let m = call.message.ok_or_else(|| bad("a MESSAGE call needs 'message'"))?;
            agent_id(m.agent_id.as_ref())?.ok_or_else(|| bad("message.agent_id is missing"))?;
            m.executor_id.filter(|e| !e.value.is_empty()).ok_or_else(|| bad("message.executor_id is missing"))?;
            BASE64.decode(m.data.unwrap_or_default()).map_err(|_| bad("message.data must be base64"))?;
            Ok(Parsed::Ignored { framework_id, kind: "MESSAGE" })
        }
        "REQUEST" => Ok(Parsed::Ignored { framework_id, kind: "REQUEST" }),
        other => Err(bad(format!("unknown call type '{}'", truncate(other)))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Whether a JSON value says nothing: null, false, 0, "", [] or {}.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Refuses the first field of `rest` (the fields Keel does not read that ask for something), naming it.
fn refuse_rest(what: &str, rest: &Map<String, Value>) -> Result<(), String> {
    match rest.keys().next() {
        Some(k) => Err(format!("{what}.{} is not supported by Keel", truncate(k))),
        None => Ok(()),
    }
}

/// A JSON object read as `T`, whose derived `Deserialize` skips the fields it does not know, and beside it
/// those unknown fields that ask for something (see [`is_empty`]), for the caller to refuse. serde's
/// `flatten` would do the same by buffering every field of the object in a generic tree first; this reads
/// the object's text twice instead (as `T`, then as its fields' unparsed text, parsing only the unknown
/// ones), which costs much less for the thousands of `TaskInfo`s of a busy framework's ACCEPTs.
#[derive(Debug)]
struct Checked<T> {
    value: T,
    rest: Map<String, Value>,
}

impl<T> std::ops::Deref for Checked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Checked<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = <&RawValue>::deserialize(d)?;
        let value = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
        let known = fields_of::<T>();
        let mut rest = Map::new();
        let object: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
        for (key, v) in object {
            if !known.contains(&key.as_str()) {
                let v: Value = serde_json::from_str(v.get()).map_err(D::Error::custom)?;
                if !is_empty(&v) {
                    rest.insert(key, v);
                }
            }
        }
        Ok(Checked { value, rest })
    }
}

/// The JSON field names a derived `Deserialize` of a struct reads: serde hands them to the deserializer,
/// and this one keeps them and stops.
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

fn framework_id(id: Option<&Id>) -> Result<Option<FrameworkId>, BadCall> {
    match id {
        Some(i) if !i.value.is_empty() => {
            FrameworkId::parse(i.value.clone()).map(Some).map_err(|e| bad(format!("framework_id: {e}")))
        }
        _ => Ok(None),
    }
}

fn agent_id(id: Option<&Id>) -> Result<Option<AgentId>, BadCall> {
    match id {
        Some(i) if !i.value.is_empty() => {
            AgentId::parse(i.value.clone()).map(Some).map_err(|e| bad(format!("agent_id: {e}")))
        }
        _ => Ok(None),
    }
}

fn task_id(id: Option<&Id>, field: &str) -> Result<TaskId, BadCall> {
    let id = id.filter(|i| !i.value.is_empty()).ok_or_else(|| bad(format!("{field} is missing")))?;
    TaskId::parse(id.value.clone()).map_err(|e| bad(format!("{field}: {e}")))
}

fn offer_ids(ids: &[Id]) -> Result<Vec<OfferId>, BadCall> {
    if ids.is_empty() {
        return Err(bad("offer_ids is empty"));
    }
    ids.iter().map(|i| OfferId::parse(i.value.clone()).map_err(|e| bad(format!("offer_ids: {e}")))).collect()
}

/// The wire's range check ([`crate::convert::seconds`]), its refusal as a message.
fn seconds(field: &'static str, value: f64) -> Result<Duration, String> {
    crate::convert::seconds(field, value).map_err(|e| e.to_string())
}

fn filters(f: Option<FiltersJson>) -> Result<Filters, BadCall> {
    let refuse = f.and_then(|f| f.refuse_seconds).map(|s| seconds("filters.refuse_seconds", s)).transpose();
    Ok(Filters { refuse: refuse.map_err(BadCall)? })
}

/// The domain form of a status uuid: the text of the bytes the framework got base64-encoded.
fn uuid_from_json(b64: &str) -> Result<String, BadCall> {
    let bytes = BASE64.decode(b64).map_err(|_| bad("acknowledge.uuid must be base64"))?;
    String::from_utf8(bytes).map_err(|_| bad("acknowledge.uuid is not one this master sent"))
}

/// A role name as Mesos allows it.
fn check_role(role: &str) -> Result<(), String> {
    let ok = role == "*"
        || (!role.is_empty()
            && role.len() <= 128
            && role != "."
            && role != ".."
            && !role.starts_with('-')
            && role.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\'));
    if ok { Ok(()) } else { Err(format!("'{}' is not a role name", truncate(role))) }
}

fn subscribe(call: CallJson) -> Result<Parsed, BadCall> {
    let sub = call.subscribe.ok_or_else(|| bad("a SUBSCRIBE call needs 'subscribe'"))?;
    let Checked { value: f, rest } = sub.framework_info.ok_or_else(|| bad("subscribe.framework_info is missing"))?;
    refuse_rest("framework_info", &rest).map_err(BadCall)?;
    let info_id = framework_id(f.id.as_ref())?;
    let framework_id = framework_id(call.framework_id.as_ref())?;
    if info_id.is_some() && framework_id.is_some() && info_id != framework_id {
        return Err(bad("framework_id and subscribe.framework_info.id name different frameworks"));
    }
    let name = f.name.unwrap_or_default();
    if name.trim().is_empty() || name.len() > 256 {
        return Err(bad("framework_info.name must be 1 to 256 characters"));
    }
    let multi_role = f.capabilities.iter().any(|c| c.kind.as_deref() == Some("MULTI_ROLE"));
    let role = match (f.roles.unwrap_or_default(), f.role) {
        (roles, _) if multi_role && roles.len() > 1 => {
            return Err(bad("a Keel framework has one role: framework_info.roles names more than one"));
        }
        (roles, _) if multi_role && roles.len() == 1 => roles[0].clone(),
        (roles, _) if !multi_role && !roles.is_empty() => {
            return Err(bad("framework_info.roles needs the MULTI_ROLE capability; without it, use 'role'"));
        }
        (_, Some(role)) if !role.is_empty() => role,
        _ => "*".into(),
    };
    check_role(&role).map_err(|e| bad(format!("framework_info.role: {e}")))?;
    if let Some(r) = sub.suppressed_roles.iter().find(|r| **r != role) {
        return Err(bad(format!(
            "subscribe.suppressed_roles names '{}', which is not the framework's role",
            truncate(r)
        )));
    }
    let failover = seconds("framework_info.failover_timeout", f.failover_timeout.unwrap_or(0.0)).map_err(BadCall)?;
    let info = FrameworkInfo {
        name,
        role,
        failover_timeout: failover,
        webui_url: f.webui_url.unwrap_or_default(),
        user: f.user.unwrap_or_default(),
        hostname: f.hostname.unwrap_or_default(),
    };
    Ok(Parsed::Subscribe { framework_id: framework_id.or(info_id), info, principal: f.principal })
}

// ---- tasks ----

/// The tasks of an ACCEPT's LAUNCH and LAUNCH_GROUP operations, and those refused with why. An operation
/// Keel does not perform refuses the whole call.
fn launches(ops: Vec<OperationJson>) -> Result<(Vec<TaskSpec>, Refused), BadCall> {
    let mut tasks = Vec::new();
    let mut refused = Vec::new();
    let mut take = |infos: Vec<Box<RawValue>>, group_refusal: Option<&str>| -> Result<(), BadCall> {
        /// The one field read before the rest, so that a task that cannot run is refused by its id.
        #[derive(Deserialize)]
        struct TaskIdOnly {
            task_id: Option<Id>,
        }
        for info in infos {
            let only: TaskIdOnly = serde_json::from_str(info.get()).map_err(|e| bad(format!("task_info: {e}")))?;
            let tid = only.task_id.map(|i| i.value).unwrap_or_default();
            let tid = TaskId::parse(tid).map_err(|e| bad(format!("task_info.task_id: {e}")))?;
            match group_refusal.map(|r| Err(r.to_owned())).unwrap_or_else(|| task_from_json(&tid, info.get())) {
                Ok(spec) => tasks.push(spec),
                Err(why) => refused.push((tid, why)),
            }
        }
        Ok(())
    };
    for op in ops {
        match op.kind.as_deref().unwrap_or("") {
            "LAUNCH" => take(op.launch.map(|l| l.task_infos).unwrap_or_default(), None)?,
            "LAUNCH_GROUP" => {
                let group = op.launch_group.ok_or_else(|| bad("a LAUNCH_GROUP operation needs 'launch_group'"))?;
                let executor = group.executor.and_then(|e| e.kind);
                let refusal = match executor.as_deref() {
                    Some("DEFAULT") => None,
                    _ => Some("a task group runs under the DEFAULT executor; Keel runs no custom executors"),
                };
                take(group.task_group.map(|g| g.tasks).unwrap_or_default(), refusal)?;
            }
            "" => return Err(bad("an operation has no 'type'")),
            other => {
                return Err(bad(format!(
                    "operation {} is not supported: Keel performs LAUNCH and LAUNCH_GROUP only",
                    truncate(other)
                )));
            }
        }
    }
    Ok((tasks, refused))
}

#[derive(Deserialize)]
struct TaskInfoJson {
    name: Option<String>,
    #[serde(default)]
    resources: Vec<Checked<ResourceJson>>,
    command: Option<Checked<CommandJson>>,
    container: Option<Checked<ContainerJson>>,
    health_check: Option<HealthCheckJson>,
    kill_policy: Option<KillPolicyJson>,
    labels: Option<LabelsJson>,
    /// Read by service discovery tools, not by Mesos; accepted.
    #[allow(dead_code)]
    discovery: Option<Value>,
    #[allow(dead_code)]
    task_id: Option<Id>,
    #[allow(dead_code)]
    agent_id: Option<Id>,
}

#[derive(Deserialize)]
struct ResourceJson {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    scalar: Option<ScalarJson>,
    ranges: Option<RangesJson>,
    /// Pre-reservation-refinement role; only `*` (unreserved) is Keel's.
    role: Option<String>,
    #[allow(dead_code)]
    allocation_info: Option<Value>,
}

#[derive(Deserialize)]
struct ScalarJson {
    value: f64,
}

#[derive(Deserialize)]
struct RangesJson {
    #[serde(default)]
    range: Vec<RangeJson>,
}

#[derive(Deserialize)]
struct RangeJson {
    begin: u64,
    end: u64,
}

#[derive(Deserialize)]
struct CommandJson {
    shell: Option<bool>,
    value: Option<String>,
    #[serde(default)]
    arguments: Vec<String>,
    environment: Option<EnvironmentJson>,
    user: Option<String>,
}

#[derive(Deserialize)]
struct EnvironmentJson {
    #[serde(default)]
    variables: Vec<VariableJson>,
}

#[derive(Deserialize)]
struct VariableJson {
    name: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct ContainerJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    docker: Option<Checked<DockerJson>>,
    #[serde(default)]
    volumes: Vec<Checked<VolumeJson>>,
}

#[derive(Deserialize)]
struct DockerJson {
    image: Option<String>,
    network: Option<String>,
    #[serde(default)]
    port_mappings: Vec<PortMappingJson>,
    force_pull_image: Option<bool>,
}

#[derive(Deserialize)]
struct PortMappingJson {
    host_port: u32,
    container_port: u32,
    protocol: Option<String>,
}

#[derive(Deserialize)]
struct VolumeJson {
    container_path: Option<String>,
    host_path: Option<String>,
    mode: Option<String>,
}

#[derive(Deserialize)]
struct HealthCheckJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    delay_seconds: Option<f64>,
    interval_seconds: Option<f64>,
    timeout_seconds: Option<f64>,
    consecutive_failures: Option<u32>,
    grace_period_seconds: Option<f64>,
    command: Option<Checked<CommandJson>>,
    http: Option<HttpCheckJson>,
    tcp: Option<TcpCheckJson>,
}

#[derive(Deserialize)]
struct HttpCheckJson {
    port: u32,
    path: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    statuses: Vec<u32>,
}

#[derive(Deserialize)]
struct TcpCheckJson {
    port: u32,
}

#[derive(Deserialize)]
struct KillPolicyJson {
    grace_period: Option<DurationJson>,
}

#[derive(Deserialize)]
struct DurationJson {
    nanoseconds: i64,
}

#[derive(Deserialize)]
struct LabelsJson {
    #[serde(default)]
    labels: Vec<LabelJson>,
}

#[derive(Deserialize)]
struct LabelJson {
    key: String,
    value: Option<String>,
}

/// One `TaskInfo` as a [`TaskSpec`], or why Keel cannot run it (the framework gets TASK_ERROR with it).
pub fn task_from_json(tid: &TaskId, info: &str) -> Result<TaskSpec, String> {
    let Checked { value: t, rest } =
        serde_json::from_str::<Checked<TaskInfoJson>>(info).map_err(|e| format!("task_info is malformed: {e}"))?;
    if rest.contains_key("executor") {
        return Err("a custom executor (TaskInfo.executor) is not supported: Keel runs tasks with its own \
                    command executor; give the task a 'command' or a Docker 'container'"
            .into());
    }
    refuse_rest("task_info", &rest)?;
    let resources = resources_from_json(&t.resources)?;
    let mut command = CommandSpec { shell: true, ..Default::default() };
    let mut user = None;
    if let Some(Checked { value: c, rest }) = t.command {
        refuse_rest("task_info.command", &rest)?;
        command = command_from_json(c.shell, c.value, c.arguments, c.environment)?;
        user = c.user.filter(|u| !u.is_empty());
    }
    let container = t.container.map(container_from_json).transpose()?.flatten();
    if container.is_none() && command.value.trim().is_empty() {
        return Err("the task needs a command.value (or a Docker container)".into());
    }
    let health_check = t.health_check.map(|h| health_check_from_json(h, &resources)).transpose()?;
    let kill_grace = match t.kill_policy.and_then(|k| k.grace_period) {
        Some(d) if d.nanoseconds < 0 || Duration::from_nanos(d.nanoseconds as u64) > MAX_DURATION => {
            return Err("kill_policy.grace_period is out of range".into());
        }
        Some(d) => Some(Duration::from_nanos(d.nanoseconds as u64)),
        None => None,
    };
    let labels = t
        .labels
        .map(|l| l.labels.into_iter().map(|l| (l.key, l.value.unwrap_or_default())).collect())
        .unwrap_or_default();
    let name = t.name.unwrap_or_default();
    if name.len() > 1024 {
        return Err("task_info.name is longer than 1024 characters".into());
    }
    let spec = TaskSpec {
        id: tid.clone(),
        name: if name.is_empty() { tid.to_string() } else { name },
        resources,
        command,
        labels,
        kill_grace,
        container,
        health_check,
        user,
    };
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

fn command_from_json(
    shell: Option<bool>,
    value: Option<String>,
    arguments: Vec<String>,
    environment: Option<EnvironmentJson>,
) -> Result<CommandSpec, String> {
    let mut env = BTreeMap::new();
    for v in environment.map(|e| e.variables).unwrap_or_default() {
        match v.kind.as_deref().unwrap_or("VALUE") {
            "VALUE" => {
                env.insert(v.name, v.value.unwrap_or_default());
            }
            other => return Err(format!("environment variable type {} is not supported", truncate(other))),
        }
    }
    let shell = shell.unwrap_or(true);
    // Mesos's arguments are the whole argv, its first the program's own name; Keel's follow the program.
    let arguments = if shell { arguments } else { arguments.into_iter().skip(1).collect() };
    Ok(CommandSpec { value: value.unwrap_or_default(), shell, arguments, env })
}

fn container_from_json(Checked { value: c, rest }: Checked<ContainerJson>) -> Result<Option<DockerSpec>, String> {
    refuse_rest("task_info.container", &rest)?;
    let kind = c.kind.as_deref().unwrap_or("MESOS");
    let volumes = c
        .volumes
        .into_iter()
        .map(|Checked { value: v, rest }| {
            refuse_rest("container.volumes[]", &rest)?;
            Ok(Volume {
                host_path: v.host_path.filter(|p| !p.is_empty()).ok_or("container.volumes[].host_path is missing")?,
                container_path: v
                    .container_path
                    .filter(|p| !p.is_empty())
                    .ok_or("container.volumes[].container_path is missing")?,
                read_only: match v.mode.as_deref().unwrap_or("RW") {
                    "RW" => false,
                    "RO" => true,
                    other => return Err(format!("volume mode {} is not RW or RO", truncate(other))),
                },
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    match kind {
        "MESOS" if c.docker.is_none() && volumes.is_empty() => Ok(None),
        "MESOS" => Err("a MESOS container with volumes or an image is not supported: use a DOCKER container".into()),
        "DOCKER" => {
            let Checked { value: d, rest } = c.docker.ok_or("a DOCKER container needs 'docker'")?;
            refuse_rest("container.docker", &rest)?;
            let network = match d.network.as_deref().unwrap_or("HOST") {
                "HOST" => Network::Host,
                "BRIDGE" => Network::Bridge,
                other => {
                    return Err(format!("docker network {} is not supported: use HOST or BRIDGE", truncate(other)));
                }
            };
            let port = |p: u32| u16::try_from(p).map_err(|_| format!("port {p} is out of range"));
            let port_mappings = d
                .port_mappings
                .into_iter()
                .map(|m| {
                    Ok(PortMapping {
                        host_port: port(m.host_port)?,
                        container_port: port(m.container_port)?,
                        protocol: match m.protocol.as_deref().unwrap_or("tcp") {
                            p @ ("tcp" | "udp") => p.to_owned(),
                            other => {
                                return Err(format!("port mapping protocol {} is not tcp or udp", truncate(other)));
                            }
                        },
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(Some(DockerSpec {
                image: d.image.unwrap_or_default(),
                force_pull: d.force_pull_image.unwrap_or(false),
                network,
                port_mappings,
                volumes,
            }))
        }
        other => Err(format!("container type {} is not supported: use DOCKER", truncate(other))),
    }
}

fn health_check_from_json(h: HealthCheckJson, resources: &Resources) -> Result<HealthCheck, String> {
    let port_index = |port: u32| {
        let port = u16::try_from(port).map_err(|_| format!("health check port {port} is out of range"))?;
        resources.ports.iter().position(|p| p == port).ok_or_else(|| {
            format!("health check port {port} is not among the task's port resources (Keel probes offered ports)")
        })
    };
    let kind = match h.kind.as_deref().unwrap_or("") {
        "COMMAND" => {
            let Checked { value: c, rest } = h.command.ok_or("a COMMAND health check needs 'command'")?;
            refuse_rest("health_check.command", &rest)?;
            let command = c.value.filter(|v| !v.trim().is_empty()).ok_or("health_check.command.value is missing")?;
            HealthCheckKind::Command { command }
        }
        "HTTP" => {
            let http = h.http.ok_or("an HTTP health check needs 'http'")?;
            if http.scheme.as_deref().is_some_and(|s| s != "http") {
                return Err("health check scheme must be http".into());
            }
            if !http.statuses.is_empty() {
                return Err("health_check.http.statuses is not supported: 2xx and 3xx are healthy".into());
            }
            HealthCheckKind::Http { path: http.path.unwrap_or_else(|| "/".into()), port_index: port_index(http.port)? }
        }
        "TCP" => HealthCheckKind::Tcp { port_index: port_index(h.tcp.ok_or("a TCP health check needs 'tcp'")?.port)? },
        other => return Err(format!("health check type '{}' is not COMMAND, HTTP or TCP", truncate(other))),
    };
    let grace = seconds("health_check.grace_period_seconds", h.grace_period_seconds.unwrap_or(10.0))?;
    let delay = seconds("health_check.delay_seconds", h.delay_seconds.unwrap_or(15.0))?;
    Ok(HealthCheck {
        kind,
        // Keel's first probe comes at once; the delay is kept as part of the grace period.
        grace_period: grace.max(delay),
        interval: seconds("health_check.interval_seconds", h.interval_seconds.unwrap_or(10.0))?,
        timeout: seconds("health_check.timeout_seconds", h.timeout_seconds.unwrap_or(20.0))?,
        max_consecutive_failures: h.consecutive_failures.unwrap_or(3),
    })
}

/// Mesos's resource list as Keel's [`Resources`]: scalar cpus, mem and disk, and port ranges, unreserved.
pub fn resources_from_json_value(v: &Value) -> Result<Resources, String> {
    let list: Vec<Checked<ResourceJson>> =
        serde_json::from_str(&v.to_string()).map_err(|e| format!("resources: {e}"))?;
    resources_from_json(&list)
}

fn resources_from_json(list: &[Checked<ResourceJson>]) -> Result<Resources, String> {
    let mut r = Resources::default();
    for res in list {
        let name = res.name.as_deref().unwrap_or("");
        refuse_rest(&format!("resource '{}'", truncate(name)), &res.rest)?;
        if res.role.as_deref().is_some_and(|role| role != "*") {
            return Err(format!("resource '{}': reserved resources are not supported", truncate(name)));
        }
        let kind = res.kind.as_deref().unwrap_or("");
        match (name, kind) {
            ("cpus" | "mem" | "disk", "SCALAR") => {
                let value = res.scalar.as_ref().ok_or_else(|| format!("resource '{name}' has no scalar"))?.value;
                let s = Scalar::from_f64(value).map_err(|e| format!("resource '{name}': {e}"))?;
                let slot = match name {
                    "cpus" => &mut r.cpus,
                    "mem" => &mut r.mem,
                    _ => &mut r.disk,
                };
                *slot = *slot + s;
            }
            ("ports", "RANGES") => {
                let ranges = res.ranges.as_ref().map(|r| r.range.as_slice()).unwrap_or_default();
                let port = |p: u64| u16::try_from(p).map_err(|_| format!("port {p} is out of range"));
                let ranges =
                    ranges.iter().map(|g| Ok((port(g.begin)?, port(g.end)?))).collect::<Result<Vec<_>, String>>()?;
                let ports = PortSet::from_ranges(ranges).map_err(|e| e.to_string())?;
                r.ports = r.ports.union(&ports);
            }
            ("cpus" | "mem" | "disk" | "ports", _) => {
                return Err(format!("resource '{name}' has type '{}', not the type Keel offers it as", truncate(kind)));
            }
            _ => return Err(format!("resource '{}' is not one Keel offers (cpus, mem, disk, ports)", truncate(name))),
        }
    }
    Ok(r)
}

// ---- events ----

/// Who the master is, as SUBSCRIBED's `master_info` tells it.
#[derive(Clone, Debug, Default)]
pub struct MasterInfo {
    pub id: String,
    pub hostname: String,
    pub ip: String,
    pub port: u16,
}

impl MasterInfo {
    /// The master serving at `addr`, with a fresh id (a Mesos master's id names one run of it).
    pub fn for_addr(addr: std::net::SocketAddr) -> MasterInfo {
        let ip = if addr.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { addr.ip() };
        let hostname = crate::gate::machine_hostname().unwrap_or_else(|| ip.to_string());
        MasterInfo { id: uuid::Uuid::new_v4().to_string(), hostname, ip: ip.to_string(), port: addr.port() }
    }

    /// Mesos's `MasterInfo`.
    pub fn json(&self) -> Value {
        let ip: u32 = self.ip.parse::<std::net::Ipv4Addr>().map(|a| u32::from_le_bytes(a.octets())).unwrap_or(0);
        json!({
            "id": self.id,
            "ip": ip,
            "port": self.port,
            "pid": format!("master@{}:{}", self.ip, self.port),
            "hostname": self.hostname,
            "version": crate::version::MESOS_VERSION,
            "address": { "hostname": self.hostname, "ip": self.ip, "port": self.port },
        })
    }
}

/// Keel's resources as Mesos's list, allocated to `role`.
pub fn resources_json(r: &Resources, role: Option<&str>) -> Value {
    let alloc = |mut v: Value| {
        if let Some(role) = role {
            v["allocation_info"] = json!({ "role": role });
        }
        v
    };
    let mut list = Vec::new();
    for (name, s) in [("cpus", r.cpus), ("mem", r.mem), ("disk", r.disk)] {
        if s.milli() > 0 {
            list.push(alloc(json!({ "name": name, "type": "SCALAR", "scalar": { "value": s.as_f64() }, "role": "*" })));
        }
    }
    if !r.ports.is_empty() {
        let range: Vec<Value> = r.ports.ranges().iter().map(|&(b, e)| json!({ "begin": b, "end": e })).collect();
        list.push(alloc(json!({ "name": "ports", "type": "RANGES", "ranges": { "range": range }, "role": "*" })));
    }
    Value::Array(list)
}

/// Agent attributes: a number is SCALAR, anything else TEXT.
pub fn attributes_json(attributes: &[(String, String)]) -> Value {
    attributes
        .iter()
        .map(|(name, value)| match value.parse::<f64>() {
            Ok(n) if n.is_finite() => json!({ "name": name, "type": "SCALAR", "scalar": { "value": n } }),
            _ => json!({ "name": name, "type": "TEXT", "text": { "value": value } }),
        })
        .collect()
}

fn offer_json(o: &Offer, role: &str) -> Value {
    json!({
        "id": id(o.id.as_str()),
        "framework_id": id(o.framework_id.as_str()),
        "agent_id": id(o.agent_id.as_str()),
        "hostname": o.hostname,
        "resources": resources_json(&o.resources, Some(role)),
        "attributes": attributes_json(&o.attributes),
        "allocation_info": { "role": role },
    })
}

/// The Mesos reasons of `mesos.proto`; Keel's own reasons map onto the nearest of them.
const MESOS_REASONS: [&str; 34] = [
    "REASON_COMMAND_EXECUTOR_FAILED",
    "REASON_CONTAINER_LAUNCH_FAILED",
    "REASON_CONTAINER_LIMITATION",
    "REASON_CONTAINER_LIMITATION_DISK",
    "REASON_CONTAINER_LIMITATION_MEMORY",
    "REASON_CONTAINER_PREEMPTED",
    "REASON_CONTAINER_UPDATE_FAILED",
    "REASON_MAX_COMPLETION_TIME_REACHED",
    "REASON_EXECUTOR_REGISTRATION_TIMEOUT",
    "REASON_EXECUTOR_REREGISTRATION_TIMEOUT",
    "REASON_EXECUTOR_TERMINATED",
    "REASON_EXECUTOR_UNREGISTERED",
    "REASON_FRAMEWORK_REMOVED",
    "REASON_GC_ERROR",
    "REASON_INVALID_FRAMEWORKID",
    "REASON_INVALID_OFFERS",
    "REASON_IO_SWITCHBOARD_EXITED",
    "REASON_MASTER_DISCONNECTED",
    "REASON_RECONCILIATION",
    "REASON_RESOURCES_UNKNOWN",
    "REASON_AGENT_DISCONNECTED",
    "REASON_AGENT_DRAINING",
    "REASON_AGENT_REMOVED",
    "REASON_AGENT_REMOVED_BY_OPERATOR",
    "REASON_AGENT_REREGISTERED",
    "REASON_AGENT_RESTARTED",
    "REASON_AGENT_UNKNOWN",
    "REASON_TASK_KILLED_DURING_LAUNCH",
    "REASON_TASK_CHECK_STATUS_UPDATED",
    "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED",
    "REASON_TASK_GROUP_INVALID",
    "REASON_TASK_INVALID",
    "REASON_TASK_UNAUTHORIZED",
    "REASON_TASK_UNKNOWN",
];

/// The Mesos reason for a Keel reason, if there is one: clients parse the enum strictly.
pub fn mesos_reason(keel: &str, state: TaskState) -> Option<&'static str> {
    if let Some(r) = MESOS_REASONS.iter().find(|r| **r == keel) {
        return Some(r);
    }
    match keel {
        reason::COMMAND_EXITED if state == TaskState::Failed => Some("REASON_COMMAND_EXECUTOR_FAILED"),
        reason::AGENT_UNREACHABLE => Some("REASON_AGENT_REMOVED"),
        reason::NOT_FOUND_ON_AGENT => Some("REASON_RECONCILIATION"),
        reason::NO_DOCKER => Some("REASON_CONTAINER_LAUNCH_FAILED"),
        _ => None,
    }
}

/// Mesos's `{"value": …}` id, borrowed.
#[derive(Serialize)]
struct IdRef<'a> {
    value: &'a str,
}

#[derive(Serialize)]
struct ContainerStatusJson<'a> {
    container_id: IdRef<'a>,
}

/// A status as Mesos's `TaskStatus`, written straight from Keel's (the UPDATE events of a busy framework
/// are most of what the v1 API writes). The uuid is the base64 of the bytes of Keel's uuid text, which
/// [`parse_call`] turns back on ACKNOWLEDGE.
#[derive(Serialize)]
struct StatusJson<'a> {
    task_id: IdRef<'a>,
    state: &'static str,
    source: &'static str,
    timestamp: f64,
    container_status: ContainerStatusJson<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<IdRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthy: Option<bool>,
}

impl<'a> StatusJson<'a> {
    fn new(s: &'a TaskStatus) -> StatusJson<'a> {
        StatusJson {
            task_id: IdRef { value: s.task_id.as_str() },
            state: s.state.name(),
            source: match s.source {
                Source::Master => "SOURCE_MASTER",
                Source::Agent if s.reason.as_deref().is_some_and(|r| r.starts_with("REASON_AGENT")) => "SOURCE_AGENT",
                Source::Agent => "SOURCE_EXECUTOR",
            },
            timestamp: s.timestamp,
            container_status: ContainerStatusJson { container_id: IdRef { value: s.task_id.as_str() } },
            message: &s.message,
            reason: s.reason.as_deref().and_then(|r| mesos_reason(r, s.state)),
            agent_id: s.agent_id.as_ref().map(|a| IdRef { value: a.as_str() }),
            uuid: s.uuid.as_ref().map(|u| BASE64.encode(u.as_bytes())),
            healthy: s.healthy,
        }
    }
}

/// The UPDATE event of a status.
#[derive(Serialize)]
struct UpdateJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    update: UpdateBodyJson<'a>,
}

#[derive(Serialize)]
struct UpdateBodyJson<'a> {
    status: StatusJson<'a>,
}

impl<'a> UpdateJson<'a> {
    fn new(status: &'a TaskStatus) -> UpdateJson<'a> {
        UpdateJson { kind: "UPDATE", update: UpdateBodyJson { status: StatusJson::new(status) } }
    }
}

/// One event as the v1 API sends it. `role` is the subscribed framework's role.
pub fn event_json(e: &Event, master: &MasterInfo, role: &str) -> Value {
    match e {
        Event::Subscribed { framework_id, heartbeat_interval } => json!({
            "type": "SUBSCRIBED",
            "subscribed": {
                "framework_id": id(framework_id.as_str()),
                "heartbeat_interval_seconds": heartbeat_interval.as_secs_f64(),
                "master_info": master.json(),
            },
        }),
        Event::Offers(offers) => json!({
            "type": "OFFERS",
            "offers": { "offers": offers.iter().map(|o| offer_json(o, role)).collect::<Vec<_>>() },
        }),
        Event::Rescind(offer_id) => json!({ "type": "RESCIND", "rescind": { "offer_id": id(offer_id.as_str()) } }),
        Event::Update(status) => serde_json::to_value(UpdateJson::new(status)).unwrap_or_default(),
        Event::Failure { agent_id } => json!({ "type": "FAILURE", "failure": { "agent_id": id(agent_id.as_str()) } }),
        Event::Error(message) => json!({ "type": "ERROR", "error": { "message": message } }),
        Event::Heartbeat => json!({ "type": "HEARTBEAT" }),
    }
}

/// Appends `e` to `out` as one RecordIO record of its [`event_json`]: the length of the JSON in bytes, a
/// newline, the JSON.
pub fn write_record(out: &mut Vec<u8>, e: &Event, master: &MasterInfo, role: &str) {
    let body = match e {
        // Written without building a JSON tree: most of a busy stream.
        Event::Update(status) => serde_json::to_vec(&UpdateJson::new(status)),
        other => serde_json::to_vec(&event_json(other, master, role)),
    }
    .unwrap_or_default();
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Parsed, BadCall> {
        parse_call(&serde_json::to_vec(&v).unwrap())
    }

    fn call(v: Value) -> (Call, Vec<(TaskId, String)>) {
        match parse(v).unwrap() {
            Parsed::Call { framework_id, call, refused } => {
                assert_eq!(framework_id.as_str(), "f1");
                (call, refused)
            }
            other => panic!("not a call: {other:?}"),
        }
    }

    fn fid() -> Value {
        json!({ "value": "f1" })
    }

    #[test]
    fn hostile_task_infos_are_refused_without_panicking() {
        let tid = TaskId::parse("t").unwrap();
        // A repeated key: refused, as Keel's other JSON bodies refuse them, rather than one value winning.
        let repeated = r#"{"task_id":{"value":"t"},"name":"a","name":"b","command":{"value":"true"}}"#;
        assert!(task_from_json(&tid, repeated).unwrap_err().contains("duplicate field"));
        for not_an_object in ["[1]", "\"x\"", "null", "7"] {
            assert!(task_from_json(&tid, not_an_object).is_err(), "{not_an_object}");
        }
        // An unknown field nested far deeper than any TaskInfo: an error, not a stack overflow.
        let deep = format!(r#"{{"task_id":{{"value":"t"}},"x":{}1{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(task_from_json(&tid, &deep).is_err());
    }

    fn task_info(id: &str) -> Value {
        json!({
            "name": id, "task_id": { "value": id }, "agent_id": { "value": "a1" },
            "resources": [
                { "name": "cpus", "type": "SCALAR", "scalar": { "value": 0.5 }, "role": "*",
                  "allocation_info": { "role": "*" } },
                { "name": "mem", "type": "SCALAR", "scalar": { "value": 64 } },
                { "name": "ports", "type": "RANGES", "ranges": { "range": [{ "begin": 31000, "end": 31001 }] } },
            ],
            "command": { "value": "echo hi", "environment": { "variables": [{ "name": "A", "value": "b" }] } },
            "labels": { "labels": [{ "key": "k", "value": "v" }] },
            "kill_policy": { "grace_period": { "nanoseconds": 3_000_000_000u64 } },
        })
    }

    #[test]
    fn subscribe_maps_framework_info() {
        let parsed = parse(json!({
            "type": "SUBSCRIBE",
            "subscribe": { "framework_info": {
                "user": "root", "name": "pyfw", "failover_timeout": 100, "checkpoint": true,
                "roles": ["batch"], "capabilities": [{ "type": "MULTI_ROLE" }, { "type": "GPU_RESOURCES" }],
                "webui_url": "http://x", "principal": "fw", "labels": { "labels": [] },
            }},
        }))
        .unwrap();
        let Parsed::Subscribe { framework_id, info, principal } = parsed else { panic!() };
        assert_eq!(framework_id, None);
        assert_eq!((info.name.as_str(), info.role.as_str(), info.user.as_str()), ("pyfw", "batch", "root"));
        assert_eq!(info.failover_timeout, Duration::from_secs(100));
        assert_eq!(principal.as_deref(), Some("fw"));
        // Re-subscribing names the framework, at the top or in the info.
        let again = parse(json!({ "type": "SUBSCRIBE", "framework_id": fid(),
            "subscribe": { "framework_info": { "name": "x", "id": fid(), "role": "r" } } }));
        assert!(matches!(again, Ok(Parsed::Subscribe { framework_id: Some(f), .. }) if f.as_str() == "f1"));
        for (bad, says) in [
            (json!({ "name": "" }), "name"),
            (json!({ "name": "x", "roles": ["a", "b"], "capabilities": [{ "type": "MULTI_ROLE" }] }), "one role"),
            (json!({ "name": "x", "roles": ["a"] }), "MULTI_ROLE"),
            (json!({ "name": "x", "role": "../etc" }), "role"),
            (json!({ "name": "x", "failover_timeout": -1 }), "failover_timeout"),
            (json!({ "name": "x", "failover_timeout": 1e300 }), "failover_timeout"),
            (json!({ "name": "x", "offer_filters": { "r": {} } }), "offer_filters"),
        ] {
            let e = parse(json!({ "type": "SUBSCRIBE", "subscribe": { "framework_info": bad } })).unwrap_err();
            assert!(e.0.contains(says), "{e} should say {says}");
        }
    }

    #[test]
    fn every_call_type_maps_or_is_refused_by_name() {
        let (c, _) = call(json!({ "type": "TEARDOWN", "framework_id": fid() }));
        assert_eq!(c, Call::Teardown);
        assert_eq!(call(json!({ "type": "REVIVE", "framework_id": fid(), "revive": { "roles": [] } })).0, Call::Revive);
        assert_eq!(call(json!({ "type": "SUPPRESS", "framework_id": fid() })).0, Call::Suppress);
        let (c, _) = call(json!({ "type": "DECLINE", "framework_id": fid(),
            "decline": { "offer_ids": [{ "value": "o1" }], "filters": { "refuse_seconds": 30 } } }));
        assert_eq!(
            c,
            Call::Decline {
                offer_ids: vec![OfferId::parse("o1").unwrap()],
                filters: Filters { refuse: Some(Duration::from_secs(30)) }
            }
        );
        let (c, _) = call(json!({ "type": "KILL", "framework_id": fid(), "kill": { "task_id": { "value": "t1" } } }));
        assert_eq!(c, Call::Kill { task_id: TaskId::parse("t1").unwrap(), agent_id: None });
        let uuid = BASE64.encode("u-1");
        let (c, _) = call(json!({ "type": "ACKNOWLEDGE", "framework_id": fid(), "acknowledge": {
            "agent_id": { "value": "a1" }, "task_id": { "value": "t1" }, "uuid": uuid } }));
        assert_eq!(
            c,
            Call::Acknowledge {
                agent_id: AgentId::parse("a1").unwrap(),
                task_id: TaskId::parse("t1").unwrap(),
                uuid: "u-1".into()
            }
        );
        let (c, _) = call(json!({ "type": "RECONCILE", "framework_id": fid(),
            "reconcile": { "tasks": [{ "task_id": { "value": "t1" } }] } }));
        assert_eq!(c, Call::Reconcile { tasks: vec![(TaskId::parse("t1").unwrap(), None)] });
        assert_eq!(call(json!({ "type": "RECONCILE", "framework_id": fid() })).0, Call::Reconcile { tasks: vec![] });
        let message = json!({ "type": "MESSAGE", "framework_id": fid(), "message": {
            "agent_id": { "value": "a1" }, "executor_id": { "value": "e" }, "data": BASE64.encode("x") } });
        assert!(matches!(parse(message), Ok(Parsed::Ignored { kind: "MESSAGE", .. })));
        let request = json!({ "type": "REQUEST", "framework_id": fid(), "request": { "requests": [] } });
        assert!(matches!(parse(request), Ok(Parsed::Ignored { kind: "REQUEST", .. })));
        for (kind, says) in [
            ("ACCEPT_INVERSE_OFFERS", "inverse offers"),
            ("SHUTDOWN", "executors"),
            ("UPDATE_FRAMEWORK", "re-subscribe"),
            ("RECONCILE_OPERATIONS", "operations"),
            ("FROBNICATE", "unknown call type 'FROBNICATE'"),
        ] {
            let e = parse(json!({ "type": kind, "framework_id": fid() })).unwrap_err();
            assert!(e.0.contains(says), "{kind}: {e}");
        }
    }

    #[test]
    fn bad_calls_say_what_is_wrong() {
        for (body, says) in [
            (b"{not json".to_vec(), "not valid JSON"),
            (b"[]".to_vec(), "not valid JSON"),
            (br#"{"framework_id":{"value":"f1"}}"#.to_vec(), "no 'type'"),
            (br#"{"type":"KILL"}"#.to_vec(), "framework_id"),
            (br#"{"type":"KILL","framework_id":{"value":"f1"},"kill":{}}"#.to_vec(), "kill.task_id"),
            (br#"{"type":"ACCEPT","framework_id":{"value":"f1"},"accept":{"offer_ids":[]}}"#.to_vec(), "offer_ids"),
            (
                br#"{"type":"ACKNOWLEDGE","framework_id":{"value":"f1"},"acknowledge":{"agent_id":{"value":"a"},"task_id":{"value":"t"},"uuid":"!!"}}"#.to_vec(),
                "base64",
            ),
            (
                br#"{"type":"DECLINE","framework_id":{"value":"f1"},"decline":{"offer_ids":[{"value":"o"}],"filters":{"refuse_seconds":-5}}}"#.to_vec(),
                "refuse_seconds",
            ),
            (
                br#"{"type":"ACCEPT","framework_id":{"value":"f1"},"accept":{"offer_ids":[{"value":"o"}],"operations":[{"type":"RESERVE"}]}}"#.to_vec(),
                "RESERVE",
            ),
        ] {
            let e = parse_call(&body).unwrap_err();
            assert!(e.0.contains(says), "{}: {e}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn launches_map_task_infos_and_refuse_what_keel_cannot_run() {
        // Fields Keel does not read are accepted while they ask for nothing.
        let mut plain = task_info("plain");
        (plain["data"], plain["check"], plain["executor"]) = (json!(""), json!({}), Value::Null);
        plain["resources"][0]["reservations"] = json!([]);
        let mut with_executor = task_info("exec");
        with_executor["executor"] = json!({ "executor_id": { "value": "e" }, "command": { "value": "x" } });
        let mut with_uris = task_info("uris");
        with_uris["command"]["uris"] = json!([{ "value": "http://x/y.tgz" }]);
        let mut with_gpus = task_info("gpus");
        with_gpus["resources"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "name": "gpus", "type": "SCALAR", "scalar": { "value": 1 } }));
        let mut reserved = task_info("reserved");
        reserved["resources"][0]["reservations"] = json!([{ "type": "STATIC", "role": "r" }]);
        let mut docker = task_info("docker");
        docker["container"] = json!({ "type": "DOCKER", "docker": { "image": "busybox", "network": "BRIDGE",
            "port_mappings": [{ "host_port": 31000, "container_port": 80 }] },
            "volumes": [{ "container_path": "/d", "host_path": "/tmp", "mode": "RO" }] });
        docker["health_check"] = json!({ "type": "TCP", "tcp": { "port": 31001 }, "interval_seconds": 2 });
        let (c, refused) = call(json!({ "type": "ACCEPT", "framework_id": fid(), "accept": {
            "offer_ids": [{ "value": "o1" }],
            "operations": [
                { "type": "LAUNCH", "launch": { "task_infos": [plain, with_executor, with_uris, with_gpus, reserved] } },
                { "type": "LAUNCH_GROUP", "launch_group": { "executor": { "type": "DEFAULT" }, "task_group": { "tasks": [docker] } } },
                { "type": "LAUNCH_GROUP", "launch_group": { "executor": { "type": "CUSTOM" }, "task_group": { "tasks": [task_info("custom")] } } },
            ],
            "filters": { "refuse_seconds": 0 } } }));
        let Call::Accept { offer_ids, tasks, filters } = c else { panic!() };
        assert_eq!(offer_ids.len(), 1);
        assert_eq!(filters.refuse, Some(Duration::ZERO));
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["plain", "docker"]);
        let plain = &tasks[0];
        assert_eq!(plain.resources.to_string(), "cpus:0.5;mem:64;disk:0;ports:[31000-31001]");
        assert!(plain.command.shell);
        assert_eq!(plain.command.env["A"], "b");
        assert_eq!(plain.labels["k"], "v");
        assert_eq!(plain.kill_grace, Some(Duration::from_secs(3)));
        let mut exec = task_info("exec-form");
        exec["command"] = json!({ "shell": false, "value": "/bin/echo", "arguments": ["echo", "a b"] });
        let spec = task_from_json(&TaskId::parse("exec-form").unwrap(), &exec.to_string()).unwrap();
        assert_eq!((spec.command.shell, spec.command.arguments.as_slice()), (false, &["a b".to_owned()][..]));
        let d = tasks[1].container.as_ref().unwrap();
        assert_eq!((d.image.as_str(), d.network, d.port_mappings[0].container_port), ("busybox", Network::Bridge, 80));
        assert!(d.volumes[0].read_only);
        assert_eq!(tasks[1].health_check.as_ref().unwrap().kind, HealthCheckKind::Tcp { port_index: 1 });
        let why: BTreeMap<&str, &str> = refused.iter().map(|(t, w)| (t.as_str(), w.as_str())).collect();
        assert!(why["exec"].contains("custom executor"), "{}", why["exec"]);
        assert!(why["uris"].contains("command.uris"), "{}", why["uris"]);
        assert!(why["gpus"].contains("'gpus'"), "{}", why["gpus"]);
        assert!(why["reserved"].contains("reservations"), "{}", why["reserved"]);
        assert!(why["custom"].contains("DEFAULT executor"), "{}", why["custom"]);
        assert_eq!(why.len(), 5, "{why:?}");
        // What an object's known fields are is serde's list, renames included.
        assert!(fields_of::<ResourceJson>().contains(&"type"));
        assert!(!fields_of::<ResourceJson>().contains(&"kind"));
    }

    #[test]
    fn resources_and_numbers_are_range_checked() {
        let bad = [
            json!([{ "name": "cpus", "type": "SCALAR", "scalar": { "value": -1 } }]),
            json!([{ "name": "cpus", "type": "RANGES" }]),
            json!([{ "name": "ports", "type": "RANGES", "ranges": { "range": [{ "begin": 1, "end": 70000 }] } }]),
            json!([{ "name": "ports", "type": "RANGES", "ranges": { "range": [{ "begin": 9, "end": 1 }] } }]),
            json!([{ "name": "mem", "type": "SCALAR", "scalar": { "value": 1 }, "role": "prod" }]),
        ];
        for b in bad {
            assert!(resources_from_json_value(&b).is_err(), "{b}");
        }
        let r = resources_from_json_value(&json!([
            { "name": "cpus", "type": "SCALAR", "scalar": { "value": 1 } },
            { "name": "cpus", "type": "SCALAR", "scalar": { "value": 0.5 } },
        ]))
        .unwrap();
        assert_eq!(r.cpus.as_f64(), 1.5);
        let mut t = task_info("t");
        t["kill_policy"]["grace_period"]["nanoseconds"] = json!(-1);
        assert!(task_from_json(&TaskId::parse("t").unwrap(), &t.to_string()).is_err());
    }

    #[test]
    fn events_are_mesos_shaped_and_uuids_round_trip() {
        let master = MasterInfo { id: "m".into(), hostname: "h".into(), ip: "127.0.0.1".into(), port: 5050 };
        let sub = event_json(
            &Event::Subscribed {
                framework_id: FrameworkId::parse("f1").unwrap(),
                heartbeat_interval: Duration::from_secs(15),
            },
            &master,
            "*",
        );
        assert_eq!(sub["type"], "SUBSCRIBED");
        assert_eq!(sub["subscribed"]["framework_id"]["value"], "f1");
        assert_eq!(sub["subscribed"]["heartbeat_interval_seconds"], 15.0);
        assert_eq!(sub["subscribed"]["master_info"]["port"], 5050);
        assert_eq!(sub["subscribed"]["master_info"]["ip"], 16777343);
        let offer = Offer {
            id: OfferId::parse("o1").unwrap(),
            framework_id: FrameworkId::parse("f1").unwrap(),
            agent_id: AgentId::parse("a1").unwrap(),
            hostname: "h".into(),
            resources: "cpus:2;mem:1024;ports:[31000-31009]".parse().unwrap(),
            attributes: vec![("rack".into(), "r1".into()), ("gen".into(), "3".into())],
            docker: false,
        };
        let offers = event_json(&Event::Offers(vec![offer]), &master, "batch");
        let o = &offers["offers"]["offers"][0];
        assert_eq!(
            o["resources"][0],
            json!({ "name": "cpus", "type": "SCALAR", "scalar": { "value": 2.0 }, "role": "*", "allocation_info": { "role": "batch" } })
        );
        assert_eq!(o["resources"][2]["ranges"]["range"][0], json!({ "begin": 31000, "end": 31009 }));
        assert_eq!(o["attributes"][0]["text"]["value"], "r1");
        assert_eq!(o["attributes"][1]["scalar"]["value"], 3.0);
        // The offered resources are what a framework sends back to launch.
        let back = resources_from_json_value(&o["resources"]).unwrap();
        assert_eq!(back.to_string(), "cpus:2;mem:1024;disk:0;ports:[31000-31009]");
        let mut status = TaskStatus::from_master(
            TaskId::parse("t1").unwrap(),
            TaskState::Lost,
            None,
            reason::AGENT_UNREACHABLE,
            "gone",
        );
        status.uuid = Some("u-1".into());
        let update = Event::Update(status);
        let u = event_json(&update, &master, "*");
        let s = &u["update"]["status"];
        assert_eq!((s["state"].as_str(), s["source"].as_str()), (Some("TASK_LOST"), Some("SOURCE_MASTER")));
        assert_eq!(s["reason"], "REASON_AGENT_REMOVED");
        assert_eq!(uuid_from_json(s["uuid"].as_str().unwrap()).unwrap(), "u-1");
        assert_eq!(event_json(&Event::Heartbeat, &master, "*"), json!({ "type": "HEARTBEAT" }));
        let mut out = Vec::new();
        write_record(&mut out, &Event::Heartbeat, &master, "*");
        assert_eq!(out, b"20\n{\"type\":\"HEARTBEAT\"}".to_vec());
        // An UPDATE's record, written without a JSON tree, says what its event_json says.
        out.clear();
        write_record(&mut out, &update, &master, "*");
        let (len, body) = std::str::from_utf8(&out).unwrap().split_once('\n').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), body.len());
        assert_eq!(serde_json::from_str::<Value>(body).unwrap(), u);
    }
}
