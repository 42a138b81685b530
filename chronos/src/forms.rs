//! The JSON forms of jobs and runs: Metronome's (`/v1/jobs`) and Chronos's (`/scheduler`). Each converts
//! to and from the one job model in [`crate::job`]; field names and defaults follow the published APIs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::job::{
    ConcurrencyPolicy, DEFAULT_STARTING_DEADLINE_SECONDS, DockerImage, Job, JobId, JobStats, Run, RunSpec, RunStatus,
    ScheduleExpr, ScheduleSpec,
};

/// A rejected body: the JSON path and what is wrong there, as a 422's `details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub error: String,
}

impl Invalid {
    pub fn new(path: impl Into<String>, error: impl Into<String>) -> Invalid {
        Invalid { path: path.into(), error: error.into() }
    }
}

/// Metronome's time stamps: `2016-07-15T13:02:59.735+0000`.
pub fn metronome_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()
}

/// Chronos's time stamps: `2014-03-08T16:57:17.507Z`.
pub fn chronos_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

// ---- Metronome ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetronomeJob {
    id: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    run: MetronomeRun,
    #[serde(default)]
    schedules: Option<Vec<Value>>,
    /// Jobs that must succeed first (Metronome's `dependencies`, `[{"id": …}]`).
    #[serde(default)]
    dependencies: Vec<MetronomeDependency>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetronomeDependency {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetronomeRun {
    #[serde(default = "one")]
    cpus: f64,
    #[serde(default = "mem_default")]
    mem: f64,
    #[serde(default)]
    disk: f64,
    #[serde(default)]
    gpus: u32,
    cmd: Option<String>,
    args: Option<Vec<String>>,
    user: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, Value>,
    docker: Option<MetronomeDocker>,
    ucr: Option<Value>,
    #[serde(default = "max_launch_delay_default")]
    max_launch_delay: u64,
    restart: Option<MetronomeRestart>,
    task_kill_grace_period_seconds: Option<f64>,
    placement: Option<Value>,
    #[serde(default)]
    artifacts: Vec<Value>,
    #[serde(default)]
    volumes: Vec<Value>,
    #[serde(default)]
    secrets: BTreeMap<String, Value>,
    #[serde(default)]
    networks: Vec<Value>,
}

fn one() -> f64 {
    1.0
}
fn mem_default() -> f64 {
    128.0
}
fn max_launch_delay_default() -> u64 {
    3600
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetronomeDocker {
    image: String,
    #[serde(default)]
    force_pull_image: bool,
    #[serde(default)]
    privileged: bool,
    #[serde(default)]
    parameters: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetronomeRestart {
    policy: String,
    active_deadline_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetronomeSchedule {
    id: String,
    cron: String,
    #[serde(default, alias = "timeZone")]
    timezone: Option<String>,
    starting_deadline_seconds: Option<u64>,
    concurrency_policy: Option<String>,
    enabled: Option<bool>,
    /// Output only; accepted and ignored so that a GET body can be sent back.
    #[serde(default)]
    #[allow(dead_code)]
    next_run_at: Option<Value>,
}

/// Metronome's default starting deadline.
pub const METRONOME_STARTING_DEADLINE_SECONDS: u64 = 900;

fn serde_invalid(e: serde_json::Error) -> Invalid {
    Invalid::new("/", e.to_string())
}

/// Parses a Metronome job. `schedules` are read when present (Keel accepts them on POST and PUT).
pub fn metronome_job(body: &Value) -> Result<(Job, Option<Vec<ScheduleSpec>>), Invalid> {
    let m: MetronomeJob = serde_json::from_value(body.clone()).map_err(serde_invalid)?;
    let id = JobId::parse(&m.id).map_err(|e| Invalid::new("/id", e.to_string()))?;
    if !metronome_id_ok(&m.id) {
        return Err(Invalid::new(
            "/id",
            "must be dot-separated segments of lowercase letters, digits and dashes, not starting or ending with a dash",
        ));
    }
    let r = m.run;
    let unsupported = |path: &str| Err(Invalid::new(path, "is not supported by Keel yet"));
    if r.gpus > 0 {
        return unsupported("/run/gpus");
    }
    if r.ucr.is_some() {
        return Err(Invalid::new("/run/ucr", "is not supported by Keel: use run.docker"));
    }
    if r.placement.as_ref().and_then(|p| p["constraints"].as_array()).is_some_and(|c| !c.is_empty()) {
        return unsupported("/run/placement/constraints");
    }
    for (path, empty) in [
        ("/run/artifacts", r.artifacts.is_empty()),
        ("/run/volumes", r.volumes.is_empty()),
        ("/run/secrets", r.secrets.is_empty()),
        ("/run/networks", r.networks.is_empty()),
    ] {
        if !empty {
            return unsupported(path);
        }
    }
    if let Some(d) = &r.docker
        && (d.privileged || !d.parameters.is_empty())
    {
        return unsupported("/run/docker (privileged or parameters)");
    }
    let mut env = BTreeMap::new();
    for (k, v) in r.env {
        match v {
            Value::String(s) => {
                env.insert(k, s);
            }
            _ => return Err(Invalid::new(format!("/run/env/{k}"), "must be a string (secrets are not supported)")),
        }
    }
    let (retries, deadline) = match &r.restart {
        None => (Some(0), None),
        Some(x) => match x.policy.as_str() {
            "NEVER" => (Some(0), x.active_deadline_seconds),
            "ON_FAILURE" => (None, x.active_deadline_seconds),
            other => return Err(Invalid::new("/run/restart/policy", format!("'{other}' is not NEVER or ON_FAILURE"))),
        },
    };
    if r.max_launch_delay < 1 {
        return Err(Invalid::new("/run/maxLaunchDelay", "must be at least 1"));
    }
    let mut job = Job::new(id);
    job.description = m.description.unwrap_or_default();
    job.labels = m.labels;
    job.run = RunSpec {
        cmd: r.cmd,
        args: r.args.unwrap_or_default(),
        docker: r.docker.map(|d| DockerImage { image: d.image, force_pull_image: d.force_pull_image }),
        cpus: r.cpus,
        mem: r.mem,
        disk: r.disk,
        env,
        task_kill_grace_period_seconds: r.task_kill_grace_period_seconds.map(|s| s.max(0.0).ceil() as u64),
        max_launch_delay_seconds: r.max_launch_delay,
        user: r.user.filter(|u| !u.is_empty()),
    };
    job.retries = retries;
    job.active_deadline_seconds = deadline;
    let parents: Vec<String> = m.dependencies.into_iter().map(|d| d.id).collect();
    job.parents = parent_ids(&parents, "/dependencies")?;
    let schedules = m
        .schedules
        .map(|list| {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    metronome_schedule(s).map_err(|e| Invalid::new(format!("/schedules({i}){}", e.path), e.error))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok((job, schedules))
}

/// Metronome's id rule: dot-separated segments of `[a-z0-9-]`, not starting or ending with a dash.
fn metronome_id_ok(id: &str) -> bool {
    id.split('.').all(|seg| {
        !seg.is_empty()
            && !seg.starts_with('-')
            && !seg.ends_with('-')
            && seg.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    })
}

/// Parses a Metronome schedule, with its defaults. The cron expression and zone are checked when the
/// job is saved.
pub fn metronome_schedule(body: &Value) -> Result<ScheduleSpec, Invalid> {
    let s: MetronomeSchedule = serde_json::from_value(body.clone()).map_err(serde_invalid)?;
    if s.id.is_empty() || !s.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(Invalid::new("/id", "must be lowercase letters, digits and dashes"));
    }
    let policy = match s.concurrency_policy.as_deref() {
        None => ConcurrencyPolicy::Allow,
        Some(p) => ConcurrencyPolicy::parse(p)
            .ok_or_else(|| Invalid::new("/concurrencyPolicy", format!("'{p}' is not ALLOW, FORBID or REPLACE")))?,
    };
    Ok(ScheduleSpec {
        id: s.id,
        expr: ScheduleExpr::Cron(s.cron),
        time_zone: s.timezone.unwrap_or_else(|| "UTC".into()),
        concurrency_policy: policy,
        starting_deadline_seconds: s.starting_deadline_seconds.unwrap_or(METRONOME_STARTING_DEADLINE_SECONDS),
        enabled: s.enabled.unwrap_or(true),
    })
}

/// A schedule as Metronome shows it.
pub fn metronome_schedule_json(s: &ScheduleSpec, next: Option<DateTime<Utc>>) -> Value {
    let expr = s.expr.as_str();
    let mut v = json!({
        "id": s.id,
        "cron": expr,
        "timezone": if s.time_zone.is_empty() { "UTC" } else { &s.time_zone },
        "startingDeadlineSeconds": s.starting_deadline_seconds,
        "concurrencyPolicy": s.concurrency_policy.name(),
        "enabled": s.enabled,
    });
    if let Some(n) = next {
        v["nextRunAt"] = json!(metronome_time(n.timestamp_millis()));
    }
    v
}

/// A job as Metronome shows it (without embeds): exactly the fields of Metronome's JobSpec and RunSpec,
/// as strict clients (dcos-metronome parses with protobuf) refuse any other. What Keel adds is in
/// [`keel_job_extras`].
pub fn metronome_job_json(job: &Job) -> Value {
    let r = &job.run;
    let mut run = json!({
        "cpus": r.cpus, "mem": r.mem, "disk": r.disk,
        "env": r.env,
        "placement": {"constraints": []},
        "artifacts": [], "volumes": [],
        "maxLaunchDelay": r.max_launch_delay_seconds,
        "restart": {"policy": if job.retries == Some(0) { "NEVER" } else { "ON_FAILURE" }},
    });
    if let Some(cmd) = &r.cmd {
        run["cmd"] = json!(cmd);
    }
    if !r.args.is_empty() {
        run["args"] = json!(r.args);
    }
    if let Some(d) = &r.docker {
        run["docker"] = json!({"image": d.image});
    }
    if let Some(u) = &r.user {
        run["user"] = json!(u);
    }
    if let Some(d) = job.active_deadline_seconds {
        run["restart"]["activeDeadlineSeconds"] = json!(d);
    }
    let mut v = json!({"id": job.id, "labels": job.labels, "run": run});
    if !job.description.is_empty() {
        v["description"] = json!(job.description);
    }
    v
}

/// What Keel keeps of a job beyond Metronome's JobSpec, shown with `embed=keel`: parents
/// (`dependencies`), Docker's `forcePullImage` and the kill grace period.
pub fn keel_job_extras(job: &Job) -> Value {
    let mut v = json!({
        "dependencies": job.parents.iter().map(|p| json!({"id": p})).collect::<Vec<_>>(),
    });
    if let Some(d) = &job.run.docker {
        v["forcePullImage"] = json!(d.force_pull_image);
    }
    if let Some(g) = job.run.task_kill_grace_period_seconds {
        v["taskKillGracePeriodSeconds"] = json!(g);
    }
    v
}

fn task_status(run: &Run, i: usize) -> &'static str {
    if i + 1 < run.task_ids.len() {
        return "TASK_FAILED";
    }
    match run.status {
        RunStatus::Initial | RunStatus::Starting => "TASK_STAGING",
        RunStatus::Active => "TASK_RUNNING",
        RunStatus::Success => "TASK_FINISHED",
        RunStatus::Failed | RunStatus::Missed | RunStatus::Skipped => "TASK_FAILED",
    }
}

/// A run as Metronome shows it: exactly Metronome's JobRun fields. Keel's additions (scheduled time, start,
/// attempts, exit code, message, trigger, outcome) are at `/keel/v1/jobs/{id}/runs`.
pub fn metronome_run_json(run: &Run) -> Value {
    let completed = run.finished_at.map(metronome_time);
    let tasks: Vec<Value> = run
        .task_ids
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut v = json!({"id": t, "status": task_status(run, i)});
            if let Some(s) = run.started_at {
                v["startedAt"] = json!(metronome_time(s));
            }
            if i + 1 == run.task_ids.len()
                && let Some(c) = &completed
            {
                v["completedAt"] = json!(c);
            }
            v
        })
        .collect();
    let status = match run.status {
        // Keel's own outcomes read as Metronome's nearest.
        RunStatus::Missed | RunStatus::Skipped => "FAILED",
        s => s.name(),
    };
    let mut v = json!({
        "id": run.id,
        "jobId": run.job_id,
        "status": status,
        "createdAt": metronome_time(run.created_at),
        "tasks": tasks,
    });
    if let Some(c) = completed {
        v["completedAt"] = json!(c);
    }
    v
}

/// A run with everything Keel records, for `/keel/v1/jobs/{id}/runs`.
pub fn history_json(run: &Run) -> Value {
    json!({
        "id": run.id,
        "jobId": run.job_id,
        "status": run.status.name(),
        "trigger": run.trigger.encode(),
        "scheduledAt": chronos_time(run.scheduled_at),
        "createdAt": chronos_time(run.created_at),
        "startedAt": run.started_at.map(chronos_time),
        "finishedAt": run.finished_at.map(chronos_time),
        "exitCode": run.exit_code,
        "attempts": run.attempts,
        "taskIds": run.task_ids,
        "message": run.message,
        "stdoutTail": run.stdout_tail,
        "stderrTail": run.stderr_tail,
    })
}

/// Metronome's `history` embed.
pub fn metronome_history(stats: &JobStats, runs: &[Run]) -> Value {
    let info = |r: &Run| {
        json!({
            "id": r.id,
            "createdAt": metronome_time(r.created_at),
            "finishedAt": r.finished_at.map(metronome_time),
            "tasks": r.task_ids,
        })
    };
    let mut v = metronome_history_summary(stats);
    v["successfulFinishedRuns"] = runs.iter().filter(|r| r.status == RunStatus::Success).map(info).collect();
    v["failedFinishedRuns"] = runs.iter().filter(|r| r.status == RunStatus::Failed).map(info).collect();
    v
}

pub fn metronome_history_summary(stats: &JobStats) -> Value {
    json!({
        "successCount": stats.success_count,
        "failureCount": stats.error_count,
        "lastSuccessAt": stats.last_success.map(metronome_time),
        "lastFailureAt": stats.last_error.map(metronome_time),
    })
}

// ---- Chronos ----

/// The name of the one schedule a Chronos job has.
pub const CHRONOS_SCHEDULE_ID: &str = "chronos";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChronosJob {
    name: String,
    #[serde(default)]
    command: String,
    #[serde(default = "yes")]
    shell: bool,
    schedule: Option<String>,
    #[serde(default)]
    schedule_time_zone: String,
    #[serde(default)]
    parents: Vec<String>,
    epsilon: Option<String>,
    retries: Option<u32>,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    owner_name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    disabled: bool,
    cpus: Option<f64>,
    mem: Option<f64>,
    disk: Option<f64>,
    container: Option<ChronosContainer>,
    #[serde(default)]
    environment_variables: Vec<ChronosEnv>,
    #[serde(default)]
    arguments: Vec<String>,
    concurrent: Option<bool>,
    #[serde(default)]
    uris: Vec<String>,
    #[serde(default)]
    fetch: Vec<Value>,
    #[serde(default)]
    constraints: Vec<Value>,
    run_as_user: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChronosContainer {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    image: String,
    #[serde(default)]
    force_pull_image: bool,
    #[serde(default)]
    volumes: Vec<Value>,
}

#[derive(Deserialize)]
struct ChronosEnv {
    name: String,
    #[serde(default)]
    value: String,
}

/// Chronos's defaults for resources that are missing or zero.
const CHRONOS_CPUS: f64 = 0.1;
const CHRONOS_MEM: f64 = 128.0;
const CHRONOS_DISK: f64 = 256.0;

/// Seconds as an ISO 8601 period in its largest units, as Chronos writes a period back (1800 → `PT30M`).
pub fn iso_period(seconds: u64) -> String {
    if seconds == 0 {
        return "PT0S".into();
    }
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut out = String::from("PT");
    for (n, unit) in [(h, 'H'), (m, 'M'), (s, 'S')] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// The most parents a job may have.
pub const MAX_PARENTS: usize = 100;

/// Parses a job's parents: valid ids, each once, at most [`MAX_PARENTS`].
fn parent_ids(raw: &[String], path: &str) -> Result<Vec<JobId>, Invalid> {
    if raw.len() > MAX_PARENTS {
        return Err(Invalid::new(path, format!("{} parents given; at most {MAX_PARENTS} are allowed", raw.len())));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        let id = JobId::parse(p).map_err(|e| Invalid::new(format!("{path}({i})"), e.to_string()))?;
        if !seen.insert(id.as_str().to_owned()) {
            return Err(Invalid::new(format!("{path}({i})"), format!("parent '{id}' is named twice")));
        }
        out.push(id);
    }
    Ok(out)
}

/// Parses a Chronos job. `dependent` is true for `/scheduler/dependency`, which needs parents.
pub fn chronos_job(body: &Value, dependent: bool) -> Result<Job, Invalid> {
    let c: ChronosJob = serde_json::from_value(body.clone()).map_err(serde_invalid)?;
    let id = JobId::parse(&c.name).map_err(|e| Invalid::new("/name", e.to_string()))?;
    if !c.uris.is_empty() || !c.fetch.is_empty() {
        return Err(Invalid::new("/fetch", "fetching URIs is not supported by Keel yet"));
    }
    if !c.constraints.is_empty() {
        return Err(Invalid::new("/constraints", "is not supported by Keel yet"));
    }
    let mut job = Job::new(id);
    job.description = c.description;
    job.owner = c.owner;
    job.owner_name = c.owner_name;
    job.disabled = c.disabled;
    job.retries = Some(c.retries.unwrap_or(2));
    let nonzero = |v: Option<f64>, d: f64| v.filter(|v| *v != 0.0).unwrap_or(d);
    let docker = match c.container {
        Some(ct) => {
            if ct.kind.as_deref().is_some_and(|k| !k.eq_ignore_ascii_case("docker")) {
                return Err(Invalid::new("/container/type", "only DOCKER containers are supported"));
            }
            if !ct.volumes.is_empty() {
                return Err(Invalid::new("/container/volumes", "is not supported by Keel yet"));
            }
            Some(DockerImage { image: ct.image, force_pull_image: ct.force_pull_image })
        }
        None => None,
    };
    let (cmd, args) = if c.shell || c.command.trim().is_empty() {
        ((!c.command.trim().is_empty()).then_some(c.command), vec![])
    } else {
        (None, std::iter::once(c.command).chain(c.arguments).collect())
    };
    job.run = RunSpec {
        cmd,
        args,
        docker,
        cpus: nonzero(c.cpus, CHRONOS_CPUS),
        mem: nonzero(c.mem, CHRONOS_MEM),
        disk: nonzero(c.disk, CHRONOS_DISK),
        env: c.environment_variables.into_iter().map(|e| (e.name, e.value)).collect(),
        user: c.run_as_user.filter(|u| !u.is_empty()),
        ..RunSpec::default()
    };
    let deadline = match &c.epsilon {
        None => DEFAULT_STARTING_DEADLINE_SECONDS,
        Some(e) => {
            let p: crate::schedule::Period =
                e.parse().map_err(|err: String| Invalid::new("/epsilon", format!("'{e}': {err}")))?;
            if p.months > 0 {
                return Err(Invalid::new("/epsilon", "must be days, hours, minutes or seconds"));
            }
            u64::from(p.days) * 86_400 + p.millis.div_ceil(1000)
        }
    };
    let policy = if c.concurrent == Some(true) { ConcurrencyPolicy::Allow } else { ConcurrencyPolicy::Forbid };
    if dependent {
        if c.parents.is_empty() {
            return Err(Invalid::new("/parents", "a dependent job needs at least one parent"));
        }
        job.parents = parent_ids(&c.parents, "/parents")?;
    } else {
        // A job with no schedule runs once, now (Chronos's "R1//PT24H").
        let schedule = c.schedule.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "R1//PT24H".into());
        job.schedules.push(ScheduleSpec {
            id: CHRONOS_SCHEDULE_ID.into(),
            expr: ScheduleExpr::Iso8601(schedule),
            time_zone: c.schedule_time_zone,
            concurrency_policy: policy,
            starting_deadline_seconds: deadline,
            enabled: true,
        });
    }
    Ok(job)
}

/// A job as Chronos shows it.
pub fn chronos_job_json(job: &Job, stats: &JobStats) -> Value {
    let r = &job.run;
    let (command, shell, arguments) = match (&r.cmd, r.args.split_first()) {
        (Some(c), _) => (c.clone(), true, vec![]),
        (None, Some((p, rest))) => (p.clone(), false, rest.to_vec()),
        (None, None) => (String::new(), true, vec![]),
    };
    let schedule = job.schedules.first();
    let epsilon = schedule.map_or(DEFAULT_STARTING_DEADLINE_SECONDS, |s| s.starting_deadline_seconds);
    let mut v = json!({
        "name": job.id,
        "command": command,
        "shell": shell,
        "epsilon": iso_period(epsilon),
        "executor": "",
        "executorFlags": "",
        "retries": job.retries.unwrap_or(u32::MAX),
        "owner": job.owner,
        "ownerName": job.owner_name,
        "description": job.description,
        "async": false,
        "successCount": stats.success_count,
        "errorCount": stats.error_count,
        "lastSuccess": stats.last_success.map(chronos_time).unwrap_or_default(),
        "lastError": stats.last_error.map(chronos_time).unwrap_or_default(),
        "cpus": r.cpus,
        "disk": r.disk,
        "mem": r.mem,
        "disabled": job.disabled,
        "softError": false,
        "dataProcessingJobType": false,
        "fetch": [],
        "uris": [],
        "environmentVariables": r.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "arguments": arguments,
        "highPriority": false,
        "constraints": [],
    });
    if let Some(u) = &r.user {
        v["runAsUser"] = json!(u);
    }
    if let Some(d) = &r.docker {
        v["container"] = json!({"type": "DOCKER", "image": d.image, "network": "HOST", "volumes": [], "forcePullImage": d.force_pull_image});
    }
    if job.parents.is_empty() {
        if let Some(s) = schedule {
            v["schedule"] = json!(s.expr.as_str());
            v["scheduleTimeZone"] = json!(s.time_zone);
            v["concurrent"] = json!(s.concurrency_policy == ConcurrencyPolicy::Allow);
        }
    } else {
        v["parents"] = json!(job.parents);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metronome_defaults_and_round_trip() {
        let body = json!({"id": "prod.backup", "run": {"cmd": "echo hi"}});
        let (job, schedules) = metronome_job(&body).unwrap();
        assert_eq!(schedules, None);
        assert_eq!((job.run.cpus, job.run.mem, job.run.disk), (1.0, 128.0, 0.0));
        assert_eq!(job.retries, Some(0));
        assert_eq!(job.run.max_launch_delay_seconds, 3600);
        let out = metronome_job_json(&job);
        assert_eq!(out["run"]["restart"]["policy"], "NEVER");
        assert_eq!(out["run"]["maxLaunchDelay"], 3600);
        assert!(out.get("description").is_none());
        let (again, _) = metronome_job(&out).unwrap();
        assert_eq!(again, job);
    }

    #[test]
    fn metronome_restart_policy_and_schedules() {
        let body = json!({
            "id": "nightly", "run": {"cmd": "x", "restart": {"policy": "ON_FAILURE", "activeDeadlineSeconds": 30}},
            "schedules": [{"id": "night", "cron": "0 2 * * *", "timezone": "Europe/Berlin"}]
        });
        let (job, schedules) = metronome_job(&body).unwrap();
        assert_eq!((job.retries, job.active_deadline_seconds), (None, Some(30)));
        let s = &schedules.unwrap()[0];
        assert_eq!(s.concurrency_policy, ConcurrencyPolicy::Allow);
        assert_eq!(s.starting_deadline_seconds, 900);
        assert!(s.enabled);
        assert_eq!(s.time_zone, "Europe/Berlin");
    }

    #[test]
    fn metronome_rejects_what_it_does_not_know() {
        for (body, path) in [
            (json!({"id": "Bad_Id", "run": {"cmd": "x"}}), "/id"),
            (json!({"id": "a", "run": {"cmd": "x", "restart": {"policy": "SOMETIMES"}}}), "/run/restart/policy"),
            (json!({"id": "a", "run": {"cmd": "x", "artifacts": [{"uri": "http://x"}]}}), "/run/artifacts"),
            (
                json!({"id": "a", "run": {"cmd": "x"}, "schedules": [{"id": "s", "cron": "* * * * *", "concurrencyPolicy": "SOMETIMES"}]}),
                "/schedules(0)/concurrencyPolicy",
            ),
        ] {
            assert_eq!(metronome_job(&body).unwrap_err().path, path, "{body}");
        }
        let e = metronome_job(&json!({"id": "a", "run": {"cmd": "x"}, "color": "red"})).unwrap_err();
        assert!(e.error.contains("unknown field `color`"), "{e:?}");
    }

    #[test]
    fn chronos_defaults_and_round_trip() {
        let body = json!({"name": "backup", "command": "echo hi", "schedule": "R/2026-01-01T00:00:00Z/PT1H", "owner": "ops@example.com"});
        let job = chronos_job(&body, false).unwrap();
        assert_eq!((job.run.cpus, job.run.mem, job.run.disk), (0.1, 128.0, 256.0));
        assert_eq!(job.retries, Some(2));
        assert_eq!(job.schedules[0].starting_deadline_seconds, 60);
        assert_eq!(job.schedules[0].concurrency_policy, ConcurrencyPolicy::Forbid);
        let out = chronos_job_json(&job, &JobStats { success_count: 3, last_success: Some(0), ..Default::default() });
        assert_eq!(out["schedule"], "R/2026-01-01T00:00:00Z/PT1H");
        assert_eq!(out["epsilon"], "PT1M");
        assert_eq!(out["successCount"], 3);
        assert_eq!(out["lastSuccess"], "1970-01-01T00:00:00.000Z");
        assert_eq!(out["lastError"], "");
        assert_eq!(chronos_job(&out, false).unwrap(), job);
    }

    #[test]
    fn chronos_dependent_jobs_need_parents() {
        let body = json!({"name": "child", "command": "x", "parents": []});
        assert_eq!(chronos_job(&body, true).unwrap_err().path, "/parents");
        let body = json!({"name": "child", "command": "x", "parents": ["a", "b"], "epsilon": "PT30M"});
        let job = chronos_job(&body, true).unwrap();
        assert_eq!(job.parents.len(), 2);
        assert!(job.schedules.is_empty());
        assert_eq!(chronos_job_json(&job, &JobStats::default())["parents"], json!(["a", "b"]));
    }

    #[test]
    fn time_formats() {
        assert_eq!(metronome_time(1_468_587_779_735), "2016-07-15T13:02:59.735+0000");
        assert_eq!(chronos_time(1_394_297_837_507), "2014-03-08T16:57:17.507Z");
        let periods = [0, 45, 60, 1800, 3600, 5430, 90061].map(iso_period);
        assert_eq!(periods, ["PT0S", "PT45S", "PT1M", "PT30M", "PT1H", "PT1H30M30S", "PT25H1M1S"]);
    }
}
