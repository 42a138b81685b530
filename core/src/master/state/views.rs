//! The operator's views of the master's state: `/master/state`, the console's summary, one task's detail and
//! the Prometheus metrics. They only read the actor's state; nothing here changes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{AgentStatus, Framework, HistoryEntry, Master, Task, now};
use crate::ids::{AgentId, FrameworkId, TaskId};
use crate::resources::Resources;
use crate::task::{TaskState, TaskStatus};

impl Master {
    /// One task, live or completed, with its history; `framework_id` picks among frameworks that share
    /// the id.
    pub(super) fn task_detail(&self, framework_id: Option<&FrameworkId>, task_id: &TaskId) -> Option<TaskDetail> {
        let mut frameworks: Vec<(&FrameworkId, &Framework)> =
            self.frameworks.iter().filter(|(id, _)| framework_id.is_none_or(|f| f == *id)).collect();
        frameworks.sort_by(|a, b| a.0.cmp(b.0));
        for (fid, fw) in &frameworks {
            if let Some(t) = fw.tasks.get(task_id) {
                return Some(TaskDetail { task: self.task_view(fid, task_id, t), history: t.history.clone() });
            }
        }
        for (fid, fw) in frameworks {
            if let Some((tid, s, history)) = fw.completed.iter().rev().find(|(id, _, _)| id == task_id) {
                let mut task = completed_view(fid, tid, s);
                task.statuses = statuses(history);
                return Some(TaskDetail { task, history: history.clone() });
            }
        }
        None
    }

    fn task_view(&self, fid: &FrameworkId, tid: &TaskId, t: &Task) -> TaskView {
        TaskView {
            id: tid.clone(),
            name: t.name.clone(),
            framework_id: fid.clone(),
            agent_id: t.agent_id.clone(),
            slave_id: t.agent_id.clone(),
            executor_id: "",
            state: t.state,
            resources: t.resources.clone(),
            message: t.status.as_ref().map(|s| s.message.clone()).unwrap_or_default(),
            exit_code: t.status.as_ref().and_then(|s| s.exit_code),
            healthy: t.status.as_ref().and_then(|s| s.healthy),
            statuses: statuses(&t.history),
        }
    }

    /// Counts and capacity, without copying every task: the console's overview.
    pub(super) fn summary(&self) -> Summary {
        let mut tasks: std::collections::HashMap<TaskState, usize> = std::collections::HashMap::new();
        let mut used = Resources::default();
        for fw in self.frameworks.values() {
            for t in fw.tasks.values() {
                *tasks.entry(t.state).or_default() += 1;
                let reachable = self.agents.get(&t.agent_id).is_some_and(|a| a.status != AgentStatus::Unreachable);
                if !t.state.is_terminal() && reachable {
                    used.add(&t.resources);
                }
            }
        }
        let mut total = Resources::default();
        let mut agents: std::collections::BTreeMap<AgentStatus, usize> = std::collections::BTreeMap::new();
        for a in self.agents.values() {
            *agents.entry(a.status).or_default() += 1;
            if a.status != AgentStatus::Unreachable {
                total.add(&a.info.resources);
            }
        }
        Summary {
            agents: agents.into_iter().map(|(k, v)| (status_name(k).to_owned(), v)).collect(),
            frameworks: self.frameworks.values().filter(|f| !f.removed).count(),
            tasks: tasks.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            total_resources: total,
            used_resources: used,
        }
    }

    /// Every framework, without its tasks: what `/keel/v1/frameworks` answers, and the snapshot's list.
    pub(super) fn framework_views(&self) -> Vec<FrameworkView> {
        let mut frameworks: Vec<FrameworkView> = self
            .frameworks
            .iter()
            .map(|(id, f)| {
                let share = self.allocator.framework_share(id);
                FrameworkView {
                    id: id.clone(),
                    name: f.info.name.clone(),
                    role: f.info.role.clone(),
                    connected: f.conn.is_some(),
                    active: !f.removed,
                    failover_timeout_seconds: f.info.failover_timeout.as_secs_f64(),
                    webui_url: f.info.webui_url.clone(),
                    user: f.info.user.clone(),
                    hostname: f.info.hostname.clone(),
                    registered_at: f.registered_at as f64 / 1000.0,
                    dominant_share: share.as_ref().map_or(0.0, |s| s.dominant_share),
                    suppressed: share.is_some_and(|s| s.suppressed),
                    tasks: f.tasks.len(),
                    offers: self.offers.count_of_framework(id),
                }
            })
            .collect();
        frameworks.sort_by(|a, b| a.id.cmp(&b.id));
        frameworks
    }

    pub(super) fn snapshot(&self) -> StateSnapshot {
        let now = now();
        let mut used: BTreeMap<&AgentId, Resources> = BTreeMap::new();
        let mut tasks = Vec::new();
        let mut completed_tasks = Vec::new();
        for (fid, fw) in &self.frameworks {
            for (tid, t) in &fw.tasks {
                if !t.state.is_terminal() {
                    used.entry(&t.agent_id).or_default().add(&t.resources);
                }
                tasks.push(self.task_view(fid, tid, t));
            }
            for (tid, s, history) in &fw.completed {
                let mut view = completed_view(fid, tid, s);
                view.statuses = statuses(history);
                completed_tasks.push(view);
            }
        }
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        let mut agents: Vec<AgentView> = self
            .agents
            .values()
            .map(|a| {
                let mut offered = Resources::default();
                for o in self.offers.on_agent(&a.id) {
                    offered.add(&o.resources);
                }
                AgentView {
                    id: a.id.clone(),
                    hostname: a.info.hostname.clone(),
                    status: a.status,
                    resources: a.info.resources.clone(),
                    used_resources: used.remove(&a.id).unwrap_or_default(),
                    offered_resources: offered,
                    attributes: a.info.attributes.iter().cloned().collect(),
                    docker: a.info.docker,
                    registered_at: a.registered_at as f64 / 1000.0,
                    last_seen_seconds_ago: now.duration_since(a.last_seen).as_secs_f64(),
                    tasks: a.tasks.len(),
                }
            })
            .collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        let frameworks = self.framework_views();
        StateSnapshot {
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.started_at,
            uptime_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
            agents,
            frameworks,
            tasks,
            completed_tasks,
            outstanding_offers: self.offers.len(),
        }
    }

    pub(super) fn metrics(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let mut by_status: BTreeMap<AgentStatus, usize> = BTreeMap::new();
        let mut total = Resources::default();
        for a in self.agents.values() {
            *by_status.entry(a.status).or_default() += 1;
            if a.status == AgentStatus::Active {
                total.add(&a.info.resources);
            }
        }
        let statuses =
            [AgentStatus::Recovering, AgentStatus::Active, AgentStatus::Disconnected, AgentStatus::Unreachable];
        gauge(
            "keel_master_agents",
            "Agents by status.",
            "gauge",
            statuses
                .iter()
                .map(|s| {
                    (
                        format!(
                            "{{status=\"{}\"}}",
                            serde_json::to_value(s).unwrap_or_default().as_str().unwrap_or("")
                        ),
                        by_status.get(s).copied().unwrap_or(0) as f64,
                    )
                })
                .collect(),
        );
        let mut states: std::collections::HashMap<TaskState, usize> = std::collections::HashMap::new();
        let mut used = Resources::default();
        for fw in self.frameworks.values() {
            for t in fw.tasks.values() {
                *states.entry(t.state).or_default() += 1;
                if !t.state.is_terminal() {
                    used.add(&t.resources);
                }
            }
        }
        gauge(
            "keel_master_tasks",
            "Tasks the master tracks, by state.",
            "gauge",
            TaskState::ALL
                .iter()
                .map(|s| (format!("{{state=\"{}\"}}", s.name()), states.get(s).copied().unwrap_or(0) as f64))
                .collect(),
        );
        let connected = self.frameworks.values().filter(|f| f.conn.is_some()).count();
        gauge(
            "keel_master_frameworks",
            "Frameworks by connection.",
            "gauge",
            vec![
                ("{state=\"connected\"}".into(), connected as f64),
                ("{state=\"disconnected\"}".into(), (self.frameworks.len() - connected) as f64),
            ],
        );
        let res = |r: &Resources| {
            vec![
                ("{resource=\"cpus\"}".to_string(), r.cpus.as_f64()),
                ("{resource=\"mem\"}".to_string(), r.mem.as_f64()),
                ("{resource=\"disk\"}".to_string(), r.disk.as_f64()),
            ]
        };
        gauge("keel_master_resources_total", "Resources of active agents.", "gauge", res(&total));
        gauge("keel_master_resources_used", "Resources used by running tasks.", "gauge", res(&used));
        gauge(
            "keel_master_offers_outstanding",
            "Offers not yet answered.",
            "gauge",
            vec![(String::new(), self.offers.len() as f64)],
        );
        let c = &self.counters;
        for (name, help, v) in [
            ("keel_master_tasks_launched_total", "Tasks sent to agents.", c.tasks_launched),
            ("keel_master_tasks_invalid_total", "Tasks refused at ACCEPT.", c.tasks_invalid),
            ("keel_master_status_updates_total", "Status updates received from agents.", c.status_updates),
            (
                "keel_master_status_updates_deferred_total",
                "Updates not forwarded because the framework was behind (the agent retries them).",
                c.updates_deferred,
            ),
            ("keel_master_offers_sent_total", "Offers made.", c.offers_sent),
            ("keel_master_offers_declined_total", "Offers declined.", c.offers_declined),
            ("keel_master_offers_rescinded_total", "Offers rescinded.", c.offers_rescinded),
            ("keel_master_agents_unreachable_total", "Times an agent was marked unreachable.", c.agents_unreachable),
            ("keel_master_frameworks_torn_down_total", "Frameworks torn down.", c.frameworks_torn_down),
        ] {
            gauge(name, help, "counter", vec![(String::new(), v as f64)]);
        }
        gauge(
            "keel_master_uptime_seconds",
            "Seconds since the master started.",
            "gauge",
            vec![(String::new(), now().saturating_duration_since(self.started).as_secs_f64())],
        );
        out
    }
}

/// `GET /master/state`.
#[derive(Clone, Debug, Serialize)]
pub struct StateSnapshot {
    pub version: &'static str,
    pub started_at: f64,
    pub uptime_seconds: f64,
    pub agents: Vec<AgentView>,
    pub frameworks: Vec<FrameworkView>,
    pub tasks: Vec<TaskView>,
    pub completed_tasks: Vec<TaskView>,
    pub outstanding_offers: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentView {
    pub id: AgentId,
    pub hostname: String,
    status: AgentStatus,
    pub resources: Resources,
    pub used_resources: Resources,
    pub offered_resources: Resources,
    pub attributes: std::collections::BTreeMap<String, String>,
    pub docker: bool,
    pub registered_at: f64,
    pub last_seen_seconds_ago: f64,
    pub tasks: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct FrameworkView {
    pub id: FrameworkId,
    pub name: String,
    pub role: String,
    pub connected: bool,
    pub active: bool,
    pub failover_timeout_seconds: f64,
    pub webui_url: String,
    pub user: String,
    pub hostname: String,
    pub registered_at: f64,
    pub dominant_share: f64,
    pub suppressed: bool,
    pub tasks: usize,
    pub offers: usize,
}

fn status_name(s: AgentStatus) -> &'static str {
    match s {
        AgentStatus::Recovering => "recovering",
        AgentStatus::Active => "active",
        AgentStatus::Disconnected => "disconnected",
        AgentStatus::Unreachable => "unreachable",
    }
}

/// Counts of agents (by status), frameworks and tasks (by state), and the capacity of the agents that are
/// not unreachable against what their live tasks use: `/keel/v1/summary`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub agents: std::collections::BTreeMap<String, usize>,
    pub frameworks: usize,
    pub tasks: std::collections::BTreeMap<String, usize>,
    pub total_resources: Resources,
    pub used_resources: Resources,
}

fn completed_view(fid: &FrameworkId, tid: &TaskId, s: &TaskStatus) -> TaskView {
    let agent_id = s.agent_id.clone().unwrap_or_else(|| AgentId::parse("unknown").expect("valid"));
    TaskView {
        id: tid.clone(),
        name: tid.to_string(),
        framework_id: fid.clone(),
        agent_id: agent_id.clone(),
        slave_id: agent_id,
        executor_id: "",
        state: s.state,
        resources: Resources::default(),
        message: s.message.clone(),
        exit_code: s.exit_code,
        healthy: s.healthy,
        statuses: Vec::new(),
    }
}

/// A task's states as Mesos's `statuses`, oldest first.
fn statuses(history: &[HistoryEntry]) -> Vec<StatusView> {
    history.iter().map(|h| StatusView { state: h.state, timestamp: h.at, healthy: h.healthy }).collect()
}

/// One state a task reached, as Mesos's state documents list them.
#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    pub state: TaskState,
    pub timestamp: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

/// One task and the states it went through, for `/keel/v1/tasks/{id}`.
#[derive(Clone, Debug, Serialize)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: TaskView,
    pub history: Vec<HistoryEntry>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    pub id: TaskId,
    pub name: String,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    /// `agent_id` under Mesos's name.
    pub slave_id: AgentId,
    /// Mesos's executor id: empty, as for Mesos's command tasks (Keel runs no custom executors).
    pub executor_id: &'static str,
    pub state: TaskState,
    pub resources: Resources,
    pub message: String,
    pub exit_code: Option<i32>,
    pub healthy: Option<bool>,
    /// The states the task went through (the first and the latest ones), as Mesos lists them.
    pub statuses: Vec<StatusView>,
}
