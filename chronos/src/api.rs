//! The REST APIs: Metronome's `/v1/jobs`, Chronos's `/scheduler` (also under `/v1/scheduler`), and Keel's
//! own `/keel/v1` (full run history, schedule preview). Handlers talk only to [`ChronosHandle`] and
//! [`JobStore`]; they never touch the core.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::Utc;
use keel_core::query::{pairs, param};
use serde_json::{Value, json};

use crate::forms::{self, Invalid};
use crate::job::{Job, JobId, Run, RunStatus, ScheduleSpec};
use crate::schedule::{CronSchedule, RepeatingInterval, Schedule};
use crate::scheduler::{ChangeError, ChronosHandle, Edit, JobView, PutMode};
use crate::store::{JobStore, JobStoreError};

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, body: json!({ "message": message.into() }) }
    }

    fn invalid(path: &str, error: impl Into<String>) -> ApiError {
        let error = error.into();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({ "message": error, "details": [{ "path": path, "errors": [error] }] }),
        }
    }

    /// Chronos answers every refusal with 400 and `{"status": "Bad Request", "message": …}`.
    fn chronos(self) -> ApiError {
        if !self.status.is_client_error() {
            return self;
        }
        let message = match (self.status, self.body["id"].as_str()) {
            (StatusCode::NOT_FOUND, Some(id)) => json!(format!("Job '{id}' not found")),
            _ => self.body["message"].clone(),
        };
        ApiError { status: StatusCode::BAD_REQUEST, body: json!({ "status": "Bad Request", "message": message }) }
    }

    fn no_job(id: &str) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, body: json!({ "id": id, "message": "Job not found" }) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> ApiError {
        ApiError::invalid(&e.path, e.error)
    }
}

impl From<JobStoreError> for ApiError {
    fn from(e: JobStoreError) -> ApiError {
        tracing::error!(error = %e, source = ?std::error::Error::source(&e), "job store failure");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; try again"))
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> ApiError {
        // Metronome's own words where it has them.
        let status = match &e {
            ChangeError::Invalid(_) => return ApiError::invalid("/", e.to_string()),
            ChangeError::NotFound(id) => return ApiError::no_job(id.as_str()),
            ChangeError::NoSuchRun { job, run } => {
                return ApiError {
                    status: StatusCode::NOT_FOUND,
                    body: json!({ "jobSpec": job, "id": run, "message": "Job Run not found" }),
                };
            }
            ChangeError::NoSuchSchedule { schedule, .. } => {
                return ApiError {
                    status: StatusCode::NOT_FOUND,
                    body: json!({ "id": schedule, "message": "Schedule not found" }),
                };
            }
            ChangeError::Exists(_) => return ApiError::new(StatusCode::CONFLICT, "Job with this id already exists"),
            ChangeError::ActiveRuns { .. } => {
                return ApiError::new(
                    StatusCode::CONFLICT,
                    "There are active job runs. Override with stopCurrentJobRuns=true",
                );
            }
            ChangeError::HasChildren { .. } | ChangeError::Conflict(_) => StatusCode::CONFLICT,
            ChangeError::Store(_) | ChangeError::Stopped => {
                tracing::error!(error = %e, "cannot change jobs");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError::new(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    pub jobs: JobStore,
    pub chronos: ChronosHandle,
}

/// All routes: Metronome's, Chronos's under both prefixes, and Keel's own.
pub fn router(api: Api) -> Router {
    let mut r = Router::new()
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{id}", get(show_job).put(replace_job).delete(delete_job))
        .route("/v1/jobs/{id}/schedules", get(list_schedules).post(create_schedule))
        .route("/v1/jobs/{id}/schedules/{sid}", get(show_schedule).put(replace_schedule).delete(delete_schedule))
        .route("/v1/jobs/{id}/runs", get(list_runs).post(start_run))
        .route("/v1/jobs/{id}/runs/{run}", get(show_run))
        .route("/v1/jobs/{id}/runs/{run}/actions/stop", post(stop_run))
        .route("/keel/v1/jobs/{id}/runs", get(run_history))
        .route("/keel/v1/schedule/preview", get(preview));
    for prefix in ["/scheduler", "/v1/scheduler"] {
        r = r
            .route(&format!("{prefix}/jobs"), get(chronos_jobs))
            .route(&format!("{prefix}/jobs/search"), get(chronos_search))
            .route(&format!("{prefix}/job/{{name}}"), get(chronos_job).put(chronos_run).delete(chronos_delete))
            .route(&format!("{prefix}/iso8601"), post(chronos_iso8601).put(chronos_iso8601))
            .route(&format!("{prefix}/dependency"), post(chronos_dependency).put(chronos_dependency))
            .route(&format!("{prefix}/task/kill/{{name}}"), delete(chronos_kill))
            .route(&format!("{prefix}/job/stat/{{name}}"), get(chronos_stat))
            .route(&format!("{prefix}/graph/dot"), get(chronos_dot))
            .route(&format!("{prefix}/graph/csv"), get(chronos_csv));
    }
    r.with_state(api)
}

/// A boolean query parameter; a bad value answers 400.
fn flag(pairs: &[(String, String)], key: &str) -> Result<bool, ApiError> {
    keel_core::query::flag(pairs, key).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
}

fn number(pairs: &[(String, String)], key: &str, default: usize, max: usize) -> Result<usize, ApiError> {
    match param(pairs, key) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map(|n| n.min(max)).map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("query parameter {key} must be a number, got '{v}'"))
        }),
    }
}

/// Parses a body strictly: a key repeated in an object is refused (422), so that a proxy in front of Keel
/// cannot read a different job than Keel stores.
fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    keel_core::json::parse_strict(body).map_err(|e| match e {
        keel_core::json::StrictError::Syntax(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}"))
        }
        e => ApiError::invalid("/", e.to_string()),
    })
}

fn job_id(s: &str) -> Result<JobId, ApiError> {
    // An id that cannot exist names no job.
    JobId::parse(s).map_err(|_| ApiError::no_job(s))
}

async fn view(api: &Api, id: &JobId) -> Result<JobView, ApiError> {
    api.chronos.view(Some(id.clone())).await?.pop().ok_or_else(|| ApiError::no_job(id.as_str()))
}

fn ok(status: StatusCode, v: Value) -> ApiResult {
    Ok((status, Json(v)).into_response())
}

// ---- Metronome ----

/// Which embeds were asked for: `embed` repeated or comma-separated.
fn embeds(pairs: &[(String, String)]) -> Result<Vec<String>, ApiError> {
    let names: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "embed")
        .flat_map(|(_, v)| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>())
        .collect();
    if let Some(bad) =
        names.iter().find(|n| !["activeRuns", "schedules", "history", "historySummary", "keel"].contains(&n.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown embed '{bad}': use activeRuns, schedules, history, historySummary or keel"),
        ));
    }
    Ok(names)
}

async fn job_json(api: &Api, v: &JobView, embeds: &[String]) -> Result<Value, ApiError> {
    let mut out = forms::metronome_job_json(&v.job);
    for e in embeds {
        match e.as_str() {
            "activeRuns" => out["activeRuns"] = v.active_runs.iter().map(forms::metronome_run_json).collect(),
            "schedules" => out["schedules"] = schedules_json(v),
            "historySummary" => out["historySummary"] = forms::metronome_history_summary(&v.stats),
            "keel" => out["keel"] = forms::keel_job_extras(&v.job),
            "history" => {
                let runs = api.jobs.runs(&v.job.id, 100).await?;
                out["history"] = forms::metronome_history(&v.stats, &runs);
            }
            _ => {}
        }
    }
    Ok(out)
}

fn schedules_json(v: &JobView) -> Value {
    v.job.schedules.iter().zip(&v.next_runs).map(|(s, n)| forms::metronome_schedule_json(s, *n)).collect()
}

async fn list_jobs(State(api): State<Api>, RawQuery(q): RawQuery) -> ApiResult {
    let embeds = embeds(&pairs(q.as_deref()))?;
    let mut out = Vec::new();
    for v in api.chronos.view(None).await? {
        out.push(job_json(&api, &v, &embeds).await?);
    }
    ok(StatusCode::OK, Value::Array(out))
}

async fn create_job(State(api): State<Api>, body: Bytes) -> ApiResult {
    let (mut job, schedules) = forms::metronome_job(&json_body(&body)?)?;
    job.schedules = schedules.unwrap_or_default();
    let saved = api.chronos.put(job, PutMode::Create).await?;
    let v = view(&api, &saved.id).await?;
    let mut out = forms::metronome_job_json(&saved);
    if !saved.schedules.is_empty() {
        out["schedules"] = schedules_json(&v);
    }
    ok(StatusCode::CREATED, out)
}

async fn show_job(State(api): State<Api>, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let embeds = embeds(&pairs(q.as_deref()))?;
    let v = view(&api, &job_id(&id)?).await?;
    ok(StatusCode::OK, job_json(&api, &v, &embeds).await?)
}

async fn replace_job(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let id = job_id(&id)?;
    let mut body = json_body(&body)?;
    // As Metronome does, the path names the job.
    if let Some(obj) = body.as_object_mut() {
        obj.insert("id".into(), json!(id));
    }
    let (mut job, schedules) = forms::metronome_job(&body)?;
    let edit: Edit = Box::new(move |current: &mut Job| {
        // As Metronome does, schedules are kept unless the body names them.
        job.schedules = schedules.unwrap_or_else(|| current.schedules.clone());
        job.disabled = current.disabled;
        *current = job;
        Ok(())
    });
    let saved = api.chronos.modify(id, edit).await?;
    ok(StatusCode::OK, forms::metronome_job_json(&saved))
}

async fn delete_job(State(api): State<Api>, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let stop = flag(&pairs(q.as_deref()), "stopCurrentJobRuns")?;
    let job = api.chronos.delete(job_id(&id)?, stop).await?;
    ok(StatusCode::OK, forms::metronome_job_json(&job))
}

async fn list_schedules(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    let v = view(&api, &job_id(&id)?).await?;
    ok(StatusCode::OK, schedules_json(&v))
}

fn find_schedule<'a>(v: &'a JobView, sid: &str) -> Result<(usize, &'a ScheduleSpec), ApiError> {
    v.job.schedules.iter().enumerate().find(|(_, s)| s.id == sid).ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        body: json!({"id": sid, "message": "Schedule not found"}),
    })
}

async fn show_schedule(State(api): State<Api>, Path((id, sid)): Path<(String, String)>) -> ApiResult {
    let v = view(&api, &job_id(&id)?).await?;
    let (i, s) = find_schedule(&v, &sid)?;
    ok(StatusCode::OK, forms::metronome_schedule_json(s, v.next_runs[i]))
}

/// Changes the job's schedules inside the scheduler and answers with the schedule `sid` as it now stands.
async fn edit_schedules(api: &Api, id: JobId, sid: &str, status: StatusCode, edit: Edit) -> ApiResult {
    let saved = api.chronos.modify(id, edit).await?;
    let v = view(api, &saved.id).await?;
    let (i, s) = find_schedule(&v, sid)?;
    ok(status, forms::metronome_schedule_json(s, v.next_runs[i]))
}

fn no_schedule(job: &Job, sid: &str) -> ChangeError {
    ChangeError::NoSuchSchedule { job: job.id.clone(), schedule: sid.to_owned() }
}

async fn create_schedule(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let id = job_id(&id)?;
    let s = forms::metronome_schedule(&json_body(&body)?)?;
    let sid = s.id.clone();
    let edit: Edit = Box::new(move |job: &mut Job| {
        if job.schedules.iter().any(|x| x.id == s.id) {
            return Err(ChangeError::Conflict(format!("A schedule with id {} already exists", s.id)));
        }
        job.schedules.push(s);
        Ok(())
    });
    edit_schedules(&api, id, &sid, StatusCode::CREATED, edit).await
}

async fn replace_schedule(State(api): State<Api>, Path((id, sid)): Path<(String, String)>, body: Bytes) -> ApiResult {
    let id = job_id(&id)?;
    let mut body = json_body(&body)?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("id".into(), json!(sid));
    }
    let s = forms::metronome_schedule(&body)?;
    let target = sid.clone();
    let edit: Edit = Box::new(move |job: &mut Job| {
        let i = job.schedules.iter().position(|x| x.id == target).ok_or_else(|| no_schedule(job, &target))?;
        job.schedules[i] = s;
        Ok(())
    });
    edit_schedules(&api, id, &sid, StatusCode::OK, edit).await
}

async fn delete_schedule(State(api): State<Api>, Path((id, sid)): Path<(String, String)>) -> ApiResult {
    let edit: Edit = Box::new(move |job: &mut Job| {
        let i = job.schedules.iter().position(|x| x.id == sid).ok_or_else(|| no_schedule(job, &sid))?;
        job.schedules.remove(i);
        Ok(())
    });
    api.chronos.modify(job_id(&id)?, edit).await?;
    Ok(StatusCode::OK.into_response())
}

async fn list_runs(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    let v = view(&api, &job_id(&id)?).await?;
    ok(StatusCode::OK, v.active_runs.iter().map(forms::metronome_run_json).collect())
}

async fn start_run(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    let run = api.chronos.run_now(job_id(&id)?).await?;
    ok(StatusCode::CREATED, forms::metronome_run_json(&run))
}

/// An open run. As in Metronome, a finished run is no longer found here; `/keel/v1/jobs/{id}/runs` has it.
async fn find_run(api: &Api, id: &JobId, run: &str) -> Result<Run, ApiError> {
    let v = view(api, id).await?;
    v.active_runs
        .into_iter()
        .find(|r| r.id == run)
        .ok_or_else(|| ChangeError::NoSuchRun { job: id.clone(), run: run.to_owned() }.into())
}

async fn show_run(State(api): State<Api>, Path((id, run)): Path<(String, String)>) -> ApiResult {
    let r = find_run(&api, &job_id(&id)?, &run).await?;
    ok(StatusCode::OK, forms::metronome_run_json(&r))
}

async fn stop_run(State(api): State<Api>, Path((id, run)): Path<(String, String)>) -> ApiResult {
    let r = api.chronos.stop_run(job_id(&id)?, run).await?;
    ok(StatusCode::OK, forms::metronome_run_json(&r))
}

// ---- Keel ----

async fn run_history(State(api): State<Api>, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let limit = number(&pairs(q.as_deref()), "limit", 50, 1000)?;
    let id = job_id(&id)?;
    let v = view(&api, &id).await?;
    let stored = api.jobs.runs(&id, limit as i64).await?;
    // Open runs as the scheduler sees them now, then the stored ones.
    let mut runs: Vec<Value> = v.active_runs.iter().rev().map(forms::history_json).collect();
    runs.extend(stored.iter().filter(|r| !v.active_runs.iter().any(|a| a.id == r.id)).map(forms::history_json));
    runs.truncate(limit);
    ok(
        StatusCode::OK,
        json!({
            "jobId": id,
            "successCount": v.stats.success_count,
            "errorCount": v.stats.error_count,
            "missedCount": v.stats.missed_count,
            "lastSuccess": v.stats.last_success.map(forms::chronos_time),
            "lastError": v.stats.last_error.map(forms::chronos_time),
            "runs": runs,
        }),
    )
}

/// The next fire times of a schedule, before saving it: `cron=` (or `schedule=` for an ISO 8601
/// repeating interval), `timezone=`, `count=` (default 10, at most 1000) and `from=` (default now).
async fn preview(RawQuery(q): RawQuery) -> ApiResult {
    let p = pairs(q.as_deref());
    let tz = param(&p, "timezone").unwrap_or("UTC");
    let count = number(&p, "count", 10, 1000)?;
    let now = match param(&p, "from") {
        None => Utc::now(),
        Some(f) => chrono::DateTime::parse_from_rfc3339(f).map(|t| t.with_timezone(&Utc)).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("from must be an RFC 3339 time such as 2026-03-29T00:00:00Z, got '{f}'"),
            )
        })?,
    };
    let schedule = match (param(&p, "cron"), param(&p, "schedule")) {
        (Some(c), None) => CronSchedule::parse(c, tz).map(|c| Schedule::Cron(Box::new(c))),
        (None, Some(s)) => RepeatingInterval::parse(s, tz, now).map(Schedule::Interval),
        _ => return Err(ApiError::new(StatusCode::BAD_REQUEST, "give either cron= or schedule=")),
    }
    .map_err(|e| ApiError::invalid("/", e.to_string()))?;
    let zone = schedule.time_zone();
    let times: Vec<Value> = schedule
        .preview(now, count)
        .into_iter()
        .map(
            |t| json!({"utc": forms::chronos_time(t.timestamp_millis()), "local": t.with_timezone(&zone).to_rfc3339()}),
        )
        .collect();
    ok(StatusCode::OK, json!({"timezone": zone.name(), "next": times}))
}

// ---- Chronos ----

async fn chronos_jobs(State(api): State<Api>) -> ApiResult {
    let jobs: Vec<Value> =
        api.chronos.view(None).await?.iter().map(|v| forms::chronos_job_json(&v.job, &v.stats)).collect();
    ok(StatusCode::OK, Value::Array(jobs))
}

async fn chronos_search(State(api): State<Api>, RawQuery(q): RawQuery) -> ApiResult {
    let p = pairs(q.as_deref());
    let lower = |k: &str| param(&p, k).map(str::to_lowercase);
    let (name, command, any) = (lower("name"), lower("command"), lower("any"));
    let limit = number(&p, "limit", 10, 10_000)?;
    let offset = number(&p, "offset", 0, usize::MAX)?;
    let jobs: Vec<Value> = api
        .chronos
        .view(None)
        .await?
        .iter()
        .filter(|v| {
            let n = v.job.id.as_str().to_lowercase();
            let c = v.job.run.cmd.clone().unwrap_or_else(|| v.job.run.args.join(" ")).to_lowercase();
            name.as_ref().is_none_or(|x| n.contains(x))
                && command.as_ref().is_none_or(|x| c.contains(x))
                && any.as_ref().is_none_or(|x| n.contains(x) || c.contains(x))
        })
        .skip(offset)
        .take(limit)
        .map(|v| forms::chronos_job_json(&v.job, &v.stats))
        .collect();
    ok(StatusCode::OK, Value::Array(jobs))
}

async fn chronos_job(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let v = view(&api, &job_id(&name).map_err(ApiError::chronos)?).await.map_err(ApiError::chronos)?;
    ok(StatusCode::OK, forms::chronos_job_json(&v.job, &v.stats))
}

async fn chronos_run(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let id = job_id(&name).map_err(ApiError::chronos)?;
    api.chronos.run_now(id).await.map_err(|e| ApiError::from(e).chronos())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn chronos_delete(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let id = job_id(&name).map_err(ApiError::chronos)?;
    api.chronos.delete(id, true).await.map_err(|e| ApiError::from(e).chronos())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn chronos_save(api: &Api, body: &Bytes, dependent: bool) -> ApiResult {
    let job = forms::chronos_job(&json_body(body)?, dependent).map_err(|e| ApiError::from(e).chronos())?;
    api.chronos.put(job, PutMode::Upsert).await.map_err(|e| ApiError::from(e).chronos())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn chronos_iso8601(State(api): State<Api>, body: Bytes) -> ApiResult {
    chronos_save(&api, &body, false).await
}

async fn chronos_dependency(State(api): State<Api>, body: Bytes) -> ApiResult {
    chronos_save(&api, &body, true).await
}

async fn chronos_kill(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let id = job_id(&name).map_err(ApiError::chronos)?;
    api.chronos.kill_all(id).await.map_err(|e| ApiError::from(e).chronos())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Durations of recent successful runs as Chronos's histogram, and the runs themselves.
async fn chronos_stat(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let id = job_id(&name).map_err(ApiError::chronos)?;
    view(&api, &id).await.map_err(ApiError::chronos)?;
    let runs = api.jobs.runs(&id, 100).await?;
    let mut durations: Vec<i64> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Success)
        .filter_map(|r| Some(r.finished_at? - r.started_at?))
        .collect();
    durations.sort_unstable();
    let pct = |p: f64| -> Value {
        if durations.is_empty() {
            return json!(0);
        }
        let i = ((durations.len() as f64 - 1.0) * p).round() as usize;
        json!(durations[i])
    };
    let mean = if durations.is_empty() { 0.0 } else { durations.iter().sum::<i64>() as f64 / durations.len() as f64 };
    let history: Vec<Value> = runs
        .iter()
        .filter(|r| r.status.is_terminal() || r.status.is_active())
        .filter(|r| !r.task_ids.is_empty())
        .map(|r| {
            let status = match r.status {
                RunStatus::Success => "Success",
                RunStatus::Failed => "Fail",
                _ => "Running",
            };
            let t = |ms: Option<i64>| ms.map_or("N/A".to_owned(), forms::chronos_time);
            json!({
                "taskId": r.task_ids.last(), "jobName": r.job_id, "slaveId": "",
                "startTime": t(r.started_at), "endTime": t(r.finished_at), "status": status,
            })
        })
        .collect();
    ok(
        StatusCode::OK,
        json!({
            "histogram": {
                "75thPercentile": pct(0.75), "95thPercentile": pct(0.95), "98thPercentile": pct(0.98),
                "99thPercentile": pct(0.99), "median": pct(0.5), "mean": mean, "count": durations.len(),
            },
            "taskStatHistory": history,
        }),
    )
}

fn text(body: String) -> ApiResult {
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

async fn chronos_dot(State(api): State<Api>) -> ApiResult {
    let views = api.chronos.view(None).await?;
    let index: std::collections::HashMap<&JobId, usize> =
        views.iter().enumerate().map(|(i, v)| (&v.job.id, i + 1)).collect();
    let mut out = String::from("digraph G {\n");
    for (i, v) in views.iter().enumerate() {
        out.push_str(&format!("  {} [ label=\"{}\" ];\n", i + 1, v.job.id));
    }
    for v in &views {
        for p in &v.job.parents {
            if let Some(pi) = index.get(p) {
                out.push_str(&format!("  {pi} -> {};\n", index[&v.job.id]));
            }
        }
    }
    out.push_str("}\n");
    text(out)
}

async fn chronos_csv(State(api): State<Api>) -> ApiResult {
    let views = api.chronos.view(None).await?;
    let mut out = String::new();
    for v in &views {
        let last = match (v.stats.last_success, v.stats.last_error) {
            (None, None) => "fresh",
            (Some(s), Some(e)) if e > s => "failure",
            (None, Some(_)) => "failure",
            _ => "success",
        };
        let state = if v.active_runs.iter().any(|r| r.status.is_active()) {
            "running"
        } else if v.active_runs.iter().any(|r| r.status == RunStatus::Initial) {
            "queued"
        } else {
            "idle"
        };
        out.push_str(&format!("node,{},{last},{state}\n", v.job.id));
    }
    for v in &views {
        for p in &v.job.parents {
            out.push_str(&format!("link,{p},{}\n", v.job.id));
        }
    }
    text(out)
}
