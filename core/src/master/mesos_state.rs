//! The master's state in Mesos's shape, so that Mesos's tools read a Keel cluster: `/master/state` (and
//! `/master/state.json`, `/state.json`, `/state`) is a superset of Mesos's state document, and
//! `/master/slaves`, `/master/frameworks` and `/master/tasks` (and their short paths) answer as Mesos's do,
//! with Mesos's query parameters. Pure: built from a [`StateSnapshot`]; the routes are in [`super::http`].
//!
//! Keel's own fields stay beside Mesos's. Where the names clash, Mesos's meaning wins: `version` is the
//! Mesos version Keel speaks (Keel's own is `keel_version`) and a framework's `tasks` is the list of its
//! tasks, not their count.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::StateSnapshot;
use crate::mesos::MasterInfo;

fn master_pid(m: &MasterInfo) -> String {
    format!("master@{}:{}", m.ip, m.port)
}

/// Attributes with numbers as numbers, as Mesos's state has them.
fn attributes(v: &Value) -> Value {
    let Some(o) = v.as_object() else { return json!({}) };
    o.iter()
        .map(|(k, v)| {
            let s = v.as_str().unwrap_or("");
            let value = s.parse::<f64>().ok().filter(|n| n.is_finite()).map_or_else(|| v.clone(), |n| json!(n));
            (k.clone(), value)
        })
        .collect::<Map<_, _>>()
        .into()
}

/// One agent as Mesos's `slaves[]` entry, with Keel's fields beside.
fn slave(agent: &Value) -> Value {
    let mut s = agent.clone();
    let hostname = agent["hostname"].as_str().unwrap_or("");
    s["pid"] = json!(format!("slave(1)@{hostname}:5051"));
    s["port"] = json!(5051);
    s["active"] = json!(agent["status"] == "active");
    s["registered_time"] = agent["registered_at"].clone();
    s["unreserved_resources"] = agent["resources"].clone();
    s["reserved_resources"] = json!({});
    s["attributes"] = attributes(&agent["attributes"]);
    s["version"] = json!(crate::version::MESOS_VERSION);
    s["capabilities"] = json!([]);
    s
}

fn add(sum: &mut BTreeMap<&'static str, f64>, r: &Value) {
    for k in ["cpus", "mem", "disk"] {
        *sum.entry(k).or_default() += r[k].as_f64().unwrap_or(0.0);
    }
}

/// One framework as Mesos's `frameworks[]` entry: its live and completed tasks in full.
fn framework(f: &Value, tasks: Vec<Value>, completed: Vec<Value>) -> Value {
    let mut out = f.clone();
    let mut used = BTreeMap::new();
    for t in
        tasks.iter().filter(|t| !crate::task::TaskState::ALL.iter().any(|s| s.is_terminal() && t["state"] == s.name()))
    {
        add(&mut used, &t["resources"]);
    }
    let used = json!(used);
    out["tasks"] = Value::Array(tasks);
    out["completed_tasks"] = Value::Array(completed);
    out["unreachable_tasks"] = json!([]);
    out["executors"] = json!([]);
    out["completed_executors"] = json!([]);
    out["roles"] = json!([f["role"]]);
    out["failover_timeout"] = f["failover_timeout_seconds"].clone();
    out["checkpoint"] = json!(true);
    out["registered_time"] = f["registered_at"].clone();
    out["recovered"] = json!(false);
    out["capabilities"] = json!([]);
    out["resources"] = used.clone();
    out["used_resources"] = used.clone();
    out["allocated_resources"] = used;
    out
}

/// The frameworks with their tasks, from a serialized snapshot.
fn frameworks(doc: &Value) -> Vec<Value> {
    let mut live: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut completed: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (list, into) in [(&doc["tasks"], &mut live), (&doc["completed_tasks"], &mut completed)] {
        for t in list.as_array().map(Vec::as_slice).unwrap_or_default() {
            into.entry(t["framework_id"].as_str().unwrap_or("")).or_default().push(t.clone());
        }
    }
    let list = doc["frameworks"].as_array().map(Vec::as_slice).unwrap_or_default();
    list.iter()
        .map(|f| {
            let id = f["id"].as_str().unwrap_or("");
            framework(f, live.remove(id).unwrap_or_default(), completed.remove(id).unwrap_or_default())
        })
        .collect()
}

/// `GET /master/state`: Keel's snapshot with Mesos's state document over it.
pub fn state(snapshot: &StateSnapshot, master: &MasterInfo) -> Value {
    let mut doc = serde_json::to_value(snapshot).unwrap_or_default();
    let frameworks = frameworks(&doc);
    let agents = doc["agents"].as_array().cloned().unwrap_or_default();
    let count = |status: &str| agents.iter().filter(|a| a["status"] == status).count();
    let build = crate::version::document();
    let pid = master_pid(master);
    let out = doc.as_object_mut().expect("a snapshot is an object");
    out.insert("keel_version".into(), json!(env!("CARGO_PKG_VERSION")));
    for k in ["version", "git_sha", "build_date", "build_time", "build_user"] {
        out.insert(k.into(), build.get(k).cloned().unwrap_or(json!("")));
    }
    out.insert("id".into(), json!(master.id));
    out.insert("pid".into(), json!(pid));
    out.insert("hostname".into(), json!(master.hostname));
    out.insert("leader".into(), json!(pid));
    out.insert("leader_info".into(), master.json());
    out.insert("start_time".into(), json!(snapshot.started_at));
    // A Keel master starts when it is elected: it stands by without a master actor until then.
    out.insert("elected_time".into(), json!(snapshot.started_at));
    out.insert("activated_slaves".into(), json!(count("active") as f64));
    out.insert("deactivated_slaves".into(), json!(count("disconnected") as f64));
    out.insert("unreachable_slaves".into(), json!(count("unreachable") as f64));
    out.insert("cluster".into(), json!(""));
    out.insert("flags".into(), json!({}));
    out.insert("slaves".into(), agents.iter().map(slave).collect());
    out.insert("frameworks".into(), Value::Array(frameworks));
    out.insert("completed_frameworks".into(), json!([]));
    out.insert("orphan_tasks".into(), json!([]));
    out.insert("unregistered_frameworks".into(), json!([]));
    doc
}

/// The query of `/master/slaves` and `/master/frameworks`.
#[derive(Deserialize, Debug, Default)]
pub struct IdQuery {
    pub slave_id: Option<String>,
    pub framework_id: Option<String>,
}

/// `GET /master/slaves[?slave_id=]`.
pub fn slaves(snapshot: &StateSnapshot, q: &IdQuery) -> Value {
    let doc = serde_json::to_value(&snapshot.agents).unwrap_or_default();
    let list = doc.as_array().map(Vec::as_slice).unwrap_or_default();
    let slaves: Vec<Value> =
        list.iter().filter(|a| q.slave_id.as_ref().is_none_or(|id| a["id"] == id.as_str())).map(slave).collect();
    json!({ "slaves": slaves, "recovered_slaves": [] })
}

/// `GET /master/frameworks[?framework_id=]`.
pub fn frameworks_document(snapshot: &StateSnapshot, q: &IdQuery) -> Value {
    let doc = serde_json::to_value(snapshot).unwrap_or_default();
    let list: Vec<Value> = frameworks(&doc)
        .into_iter()
        .filter(|f| q.framework_id.as_ref().is_none_or(|id| f["id"] == id.as_str()))
        .collect();
    json!({ "frameworks": list, "completed_frameworks": [], "unregistered_frameworks": [] })
}

/// The query of `/master/tasks`, as Mesos takes it.
#[derive(Deserialize, Debug, Default)]
pub struct TasksQuery {
    /// How many tasks; -1 for all (Mesos's default is 100).
    pub limit: Option<i64>,
    pub offset: Option<u64>,
    /// `asc` or `des` (the default): by the time the task was launched.
    pub order: Option<String>,
    pub framework_id: Option<String>,
    pub task_id: Option<String>,
}

/// Mesos's default page of `/master/tasks`.
pub const DEFAULT_TASKS_LIMIT: i64 = 100;

/// `GET /master/tasks`: live and completed tasks of every framework, filtered, ordered and paged; or a
/// message saying which parameter is wrong.
pub fn tasks(snapshot: &StateSnapshot, q: &TasksQuery) -> Result<Value, String> {
    let limit = q.limit.unwrap_or(DEFAULT_TASKS_LIMIT);
    if limit < -1 {
        return Err(format!("limit must be -1 (no limit) or at least 0, got {limit}"));
    }
    let descending = match q.order.as_deref().unwrap_or("des") {
        "des" => true,
        "asc" => false,
        other => {
            return Err(format!("order must be 'asc' or 'des', got '{}'", other.chars().take(16).collect::<String>()));
        }
    };
    let keep = |t: &&super::TaskView| {
        q.framework_id.as_ref().is_none_or(|f| t.framework_id.as_str() == f)
            && q.task_id.as_ref().is_none_or(|i| t.id.as_str() == i)
    };
    let mut list: Vec<&super::TaskView> = snapshot.tasks.iter().chain(&snapshot.completed_tasks).filter(keep).collect();
    let started = |t: &super::TaskView| t.statuses.first().map_or(0.0, |s| s.timestamp);
    list.sort_by(|a, b| started(a).total_cmp(&started(b)).then_with(|| a.id.cmp(&b.id)));
    if descending {
        list.reverse();
    }
    let offset = usize::try_from(q.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    let take = if limit == -1 { usize::MAX } else { usize::try_from(limit).unwrap_or(usize::MAX) };
    let page: Vec<&super::TaskView> = list.into_iter().skip(offset).take(take).collect();
    Ok(json!({ "tasks": page }))
}
