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
use keel_core::gate::ErrorBody;
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
        .route("/keel/v1/schedule/preview", get(preview))
        .route("/keel/v1/jobs/events", get(events));
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

#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "metronome",
    description = "Every job, with what `embed` (repeated or comma-separated) asks for.",
    params(("embed" = Option<String>, Query, description = "activeRuns, schedules, history, historySummary or keel")),
    responses(
        (status = 200, description = "The jobs, in Metronome's form", body = serde_json::Value),
        (status = 400, description = "An unknown embed", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
async fn list_jobs(State(api): State<Api>, RawQuery(q): RawQuery) -> ApiResult {
    let embeds = embeds(&pairs(q.as_deref()))?;
    let mut out = Vec::new();
    for v in api.chronos.view(None).await? {
        out.push(job_json(&api, &v, &embeds).await?);
    }
    ok(StatusCode::OK, Value::Array(out))
}

#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "metronome",
    description = "Creates a job, with its schedules if the body has them.",
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "The job in Metronome's form; `schedules` is optional"
    ),
    responses(
        (status = 201, description = "The job as saved", body = serde_json::Value),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 409, description = "A job with this id exists", body = ErrorBody),
        (status = 422, description = "An invalid job, a repeated key or JSON nested too deep", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "metronome",
    description = "One job, with what `embed` (repeated or comma-separated) asks for.",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("embed" = Option<String>, Query, description = "activeRuns, schedules, history, historySummary or keel"),
    ),
    responses(
        (status = 200, description = "The job, in Metronome's form", body = serde_json::Value),
        (status = 400, description = "An unknown embed", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
async fn show_job(State(api): State<Api>, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let embeds = embeds(&pairs(q.as_deref()))?;
    let v = view(&api, &job_id(&id)?).await?;
    ok(StatusCode::OK, job_json(&api, &v, &embeds).await?)
}

#[utoipa::path(
    put,
    path = "/v1/jobs/{id}",
    tag = "metronome",
    description = "Replaces a job; its schedules are kept unless the body names them.",
    params(("id" = String, Path, description = "The job's id")),
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "The job in Metronome's form; the path names it"
    ),
    responses(
        (status = 200, description = "The job as saved", body = serde_json::Value),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 422, description = "An invalid job, a repeated key or JSON nested too deep", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
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
        // Metronome's form has no dependencies: a job's parents (set through Chronos's API) stay.
        if job.parents.is_empty() {
            job.parents = current.parents.clone();
        }
        *current = job;
        Ok(())
    });
    let saved = api.chronos.modify(id, edit).await?;
    ok(StatusCode::OK, forms::metronome_job_json(&saved))
}

#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    tag = "metronome",
    description = "Deletes a job; if it has active runs, only with stopCurrentJobRuns=true, which stops them.",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("stopCurrentJobRuns" = Option<bool>, Query, description = "Stop the job's active runs (default false)"),
    ),
    responses(
        (status = 200, description = "The deleted job", body = serde_json::Value),
        (status = 400, description = "A bad stopCurrentJobRuns", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has active runs, or other jobs depend on it", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
async fn delete_job(State(api): State<Api>, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let stop = flag(&pairs(q.as_deref()), "stopCurrentJobRuns")?;
    let job = api.chronos.delete(job_id(&id)?, stop).await?;
    ok(StatusCode::OK, forms::metronome_job_json(&job))
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/schedules",
    tag = "metronome",
    description = "The job's schedules, each with its next run.",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The schedules", body = serde_json::Value),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/schedules/{sid}",
    tag = "metronome",
    description = "One schedule of a job, with its next run.",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("sid" = String, Path, description = "The schedule's id"),
    ),
    responses(
        (status = 200, description = "The schedule", body = serde_json::Value),
        (status = 404, description = "No such job or schedule", body = ErrorBody),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/schedules",
    tag = "metronome",
    description = "Adds a schedule to a job.",
    params(("id" = String, Path, description = "The job's id")),
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "The schedule in Metronome's form: `id`, `cron`, `timezone`..."
    ),
    responses(
        (status = 201, description = "The schedule as saved, with its next run", body = serde_json::Value),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has a schedule with this id", body = ErrorBody),
        (status = 422, description = "An invalid schedule, a repeated key or JSON nested too deep", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    put,
    path = "/v1/jobs/{id}/schedules/{sid}",
    tag = "metronome",
    description = "Replaces a schedule of a job.",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("sid" = String, Path, description = "The schedule's id"),
    ),
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "The schedule in Metronome's form; the path names it"
    ),
    responses(
        (status = 200, description = "The schedule as saved, with its next run", body = serde_json::Value),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 404, description = "No such job or schedule", body = ErrorBody),
        (status = 422, description = "An invalid schedule, a repeated key or JSON nested too deep", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}/schedules/{sid}",
    tag = "metronome",
    description = "Removes a schedule from a job.",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("sid" = String, Path, description = "The schedule's id"),
    ),
    responses(
        (status = 200, description = "The schedule is removed"),
        (status = 404, description = "No such job or schedule", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
async fn delete_schedule(State(api): State<Api>, Path((id, sid)): Path<(String, String)>) -> ApiResult {
    let edit: Edit = Box::new(move |job: &mut Job| {
        let i = job.schedules.iter().position(|x| x.id == sid).ok_or_else(|| no_schedule(job, &sid))?;
        job.schedules.remove(i);
        Ok(())
    });
    api.chronos.modify(job_id(&id)?, edit).await?;
    Ok(StatusCode::OK.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/runs",
    tag = "metronome",
    description = "The job's open runs; finished ones are in /keel/v1/jobs/{id}/runs.",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The open runs", body = serde_json::Value),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
async fn list_runs(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    let v = view(&api, &job_id(&id)?).await?;
    ok(StatusCode::OK, v.active_runs.iter().map(forms::metronome_run_json).collect())
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/runs",
    tag = "metronome",
    description = "Starts a run of the job now.",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 201, description = "The new run", body = serde_json::Value),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/runs/{run}",
    tag = "metronome",
    description = "One open run of the job; a finished run is not found here.",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("run" = String, Path, description = "The run's id"),
    ),
    responses(
        (status = 200, description = "The run", body = serde_json::Value),
        (status = 404, description = "No such job or open run", body = ErrorBody),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
async fn show_run(State(api): State<Api>, Path((id, run)): Path<(String, String)>) -> ApiResult {
    let r = find_run(&api, &job_id(&id)?, &run).await?;
    ok(StatusCode::OK, forms::metronome_run_json(&r))
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/runs/{run}/actions/stop",
    tag = "metronome",
    description = "Stops an open run of the job.",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("run" = String, Path, description = "The run's id"),
    ),
    responses(
        (status = 200, description = "The run, as it was when asked to stop", body = serde_json::Value),
        (status = 404, description = "No such job or open run", body = ErrorBody),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
async fn stop_run(State(api): State<Api>, Path((id, run)): Path<(String, String)>) -> ApiResult {
    let r = api.chronos.stop_run(job_id(&id)?, run).await?;
    ok(StatusCode::OK, forms::metronome_run_json(&r))
}

// ---- Keel ----

#[utoipa::path(
    get,
    path = "/keel/v1/jobs/{id}/runs",
    tag = "keel",
    description = "The job's counters and its runs: the open ones, then the finished ones.",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("limit" = Option<u32>, Query, description = "How many runs (default 50, at most 1000)"),
    ),
    responses(
        (status = 200, description = "`jobId`, the counters and `runs`", body = serde_json::Value),
        (status = 400, description = "A bad limit", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
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

/// `GET /keel/v1/jobs/events`: server-sent events, one per job saved or deleted and per run recorded in a
/// new state; `lagged` when the reader fell behind.
#[utoipa::path(
    get,
    path = "/keel/v1/jobs/events",
    tag = "keel",
    description = "Server-sent events: job_updated, job_deleted, run_updated, run_output; `lagged` when the reader fell behind.",
    responses((status = 200, description = "An event stream", body = String, content_type = "text/event-stream"))
)]
async fn events(State(api): State<Api>) -> axum::response::Response {
    keel_core::master::http::event_stream(api.chronos.events(), crate::scheduler::JobEvent::kind)
}

/// The next fire times of a schedule, before saving it: `cron=` (or `schedule=` for an ISO 8601
/// repeating interval), `timezone=`, `count=` (default 10, at most 1000) and `from=` (default now).
#[utoipa::path(
    get,
    path = "/keel/v1/schedule/preview",
    tag = "keel",
    description = "The next fire times of a cron expression or ISO 8601 repeating interval, before saving it.",
    params(
        ("cron" = Option<String>, Query, description = "A cron expression; give this or `schedule`"),
        ("schedule" = Option<String>, Query, description = "An ISO 8601 repeating interval; give this or `cron`"),
        ("timezone" = Option<String>, Query, description = "An IANA time zone (default UTC)"),
        ("count" = Option<u32>, Query, description = "How many fire times (default 10, at most 1000)"),
        ("from" = Option<String>, Query, description = "The time to count from, in RFC 3339 (default now)"),
    ),
    responses(
        (status = 200, description = "`timezone` and `next`, each time in UTC and local", body = serde_json::Value),
        (status = 400, description = "Neither or both of cron and schedule, or a bad count or from", body = ErrorBody),
        (status = 422, description = "An invalid expression or time zone", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    get,
    path = "/scheduler/jobs",
    tag = "chronos",
    description = "Every job, in Chronos's form.",
    responses(
        (status = 200, description = "The jobs", body = serde_json::Value),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
async fn chronos_jobs(State(api): State<Api>) -> ApiResult {
    let jobs: Vec<Value> =
        api.chronos.view(None).await?.iter().map(|v| forms::chronos_job_json(&v.job, &v.stats)).collect();
    ok(StatusCode::OK, Value::Array(jobs))
}

#[utoipa::path(
    get,
    path = "/scheduler/jobs/search",
    tag = "chronos",
    description = "The jobs whose name or command contains the given text (any case), in Chronos's form.",
    params(
        ("name" = Option<String>, Query, description = "Text in the job's name"),
        ("command" = Option<String>, Query, description = "Text in the job's command"),
        ("any" = Option<String>, Query, description = "Text in the job's name or command"),
        ("limit" = Option<u32>, Query, description = "How many jobs (default 10)"),
        ("offset" = Option<u32>, Query, description = "How many matching jobs to skip (default 0)"),
    ),
    responses(
        (status = 200, description = "The matching jobs", body = serde_json::Value),
        (status = 400, description = "A bad limit or offset", body = ErrorBody),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    get,
    path = "/scheduler/job/{name}",
    tag = "chronos",
    description = "One job, in Chronos's form.",
    params(("name" = String, Path, description = "The job's name")),
    responses(
        (status = 200, description = "The job", body = serde_json::Value),
        (status = 400, description = "No such job (Chronos answers 400)", body = ErrorBody),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
async fn chronos_job(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let v = view(&api, &job_id(&name).map_err(ApiError::chronos)?).await.map_err(ApiError::chronos)?;
    ok(StatusCode::OK, forms::chronos_job_json(&v.job, &v.stats))
}

#[utoipa::path(
    put,
    path = "/scheduler/job/{name}",
    tag = "chronos",
    description = "Starts a run of the job now.",
    params(("name" = String, Path, description = "The job's name")),
    responses(
        (status = 204, description = "The run is started"),
        (status = 400, description = "No such job (Chronos answers 400)", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
async fn chronos_run(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let id = job_id(&name).map_err(ApiError::chronos)?;
    api.chronos.run_now(id).await.map_err(|e| ApiError::from(e).chronos())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    delete,
    path = "/scheduler/job/{name}",
    tag = "chronos",
    description = "Deletes a job, stopping its runs.",
    params(("name" = String, Path, description = "The job's name")),
    responses(
        (status = 204, description = "The job is deleted"),
        (status = 400, description = "No such job, or other jobs depend on it", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    post,
    path = "/scheduler/iso8601",
    tag = "chronos",
    description = "Creates or replaces a job that runs on an ISO 8601 repeating interval.",
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "The job in Chronos's form, with `schedule`"
    ),
    responses(
        (status = 204, description = "The job is saved"),
        (status = 400, description = "The body is not valid JSON, or the job is invalid", body = ErrorBody),
        (status = 422, description = "A repeated key, or JSON nested too deep", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
async fn chronos_iso8601(State(api): State<Api>, body: Bytes) -> ApiResult {
    chronos_save(&api, &body, false).await
}

#[utoipa::path(
    post,
    path = "/scheduler/dependency",
    tag = "chronos",
    description = "Creates or replaces a job that runs after its parents.",
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "The job in Chronos's form, with `parents`"
    ),
    responses(
        (status = 204, description = "The job is saved"),
        (status = 400, description = "The body is not valid JSON, or the job is invalid", body = ErrorBody),
        (status = 422, description = "A repeated key, or JSON nested too deep", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
async fn chronos_dependency(State(api): State<Api>, body: Bytes) -> ApiResult {
    chronos_save(&api, &body, true).await
}

#[utoipa::path(
    delete,
    path = "/scheduler/task/kill/{name}",
    tag = "chronos",
    description = "Stops every open run of the job.",
    params(("name" = String, Path, description = "The job's name")),
    responses(
        (status = 204, description = "The runs are stopped"),
        (status = 400, description = "No such job (Chronos answers 400)", body = ErrorBody),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
async fn chronos_kill(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let id = job_id(&name).map_err(ApiError::chronos)?;
    api.chronos.kill_all(id).await.map_err(|e| ApiError::from(e).chronos())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Durations of recent successful runs as Chronos's histogram, and the runs themselves.
#[utoipa::path(
    get,
    path = "/scheduler/job/stat/{name}",
    tag = "chronos",
    description = "Durations of the job's recent successful runs as Chronos's histogram, and the runs themselves.",
    params(("name" = String, Path, description = "The job's name")),
    responses(
        (status = 200, description = "`histogram` and `taskStatHistory`", body = serde_json::Value),
        (status = 400, description = "No such job (Chronos answers 400)", body = ErrorBody),
        (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    get,
    path = "/scheduler/graph/dot",
    tag = "chronos",
    description = "The jobs' dependency graph in Graphviz dot.",
    responses(
        (status = 200, description = "The graph", body = String, content_type = "text/plain"),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    get,
    path = "/scheduler/graph/csv",
    tag = "chronos",
    description = "Each job's last outcome and state (node lines), then the dependencies (link lines), as CSV.",
    responses(
        (status = 200, description = "The graph", body = String, content_type = "text/plain"),
        (status = 503, description = "The scheduler did not answer", body = ErrorBody),
    )
)]
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

/// The description of every route [`router`] serves; [`openapi`] builds it.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list_jobs, create_job, show_job, replace_job, delete_job,
        list_schedules, create_schedule, show_schedule, replace_schedule, delete_schedule,
        list_runs, start_run, show_run, stop_run,
        run_history, preview, events,
        chronos_jobs, chronos_search, chronos_job, chronos_run, chronos_delete, chronos_iso8601, chronos_dependency,
        chronos_kill, chronos_stat, chronos_dot, chronos_csv,
        openapi_paths::chronos_iso8601_put, openapi_paths::chronos_dependency_put,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "metronome", description = "Metronome's /v1/jobs API"),
        (name = "chronos", description = "Chronos's /scheduler API"),
        (name = "keel", description = "Keel's own API")
    )
)]
pub struct ChronosApiDoc;

/// The OpenAPI 3 description of every route [`router`] serves, generated from the handlers.
///
/// The Chronos routes are served again under `/v1/scheduler`, and described so.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let doc = keel_core::openapi::with_refusals(<ChronosApiDoc as utoipa::OpenApi>::openapi());
    keel_core::openapi::mirror(doc, "/scheduler/", "/v1/scheduler/", "v1_")
}

/// Descriptions of what one handler serves on a second method: the PUTs that Chronos also takes where it
/// takes a POST. utoipa needs one function per operation, with a literal path. (The `/v1/scheduler`
/// copies are made by [`openapi`].)
mod openapi_paths {
    use keel_core::gate::ErrorBody;

    #[utoipa::path(
        put,
        path = "/scheduler/iso8601",
        tag = "chronos",
        description = "Creates or replaces a job that runs on an ISO 8601 repeating interval.",
        request_body(
            content = serde_json::Value,
            content_type = "application/json",
            description = "The job in Chronos's form, with `schedule`"
        ),
        responses(
            (status = 204, description = "The job is saved"),
            (status = 400, description = "The body is not valid JSON, or the job is invalid", body = ErrorBody),
            (status = 422, description = "A repeated key, or JSON nested too deep", body = ErrorBody),
            (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
        )
    )]
    #[allow(dead_code)]
    fn chronos_iso8601_put() {}

    #[utoipa::path(
        put,
        path = "/scheduler/dependency",
        tag = "chronos",
        description = "Creates or replaces a job that runs after its parents.",
        request_body(
            content = serde_json::Value,
            content_type = "application/json",
            description = "The job in Chronos's form, with `parents`"
        ),
        responses(
            (status = 204, description = "The job is saved"),
            (status = 400, description = "The body is not valid JSON, or the job is invalid", body = ErrorBody),
            (status = 422, description = "A repeated key, or JSON nested too deep", body = ErrorBody),
            (status = 503, description = "The scheduler or the job store did not answer", body = ErrorBody),
        )
    )]
    #[allow(dead_code)]
    fn chronos_dependency_put() {}
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use utoipa::openapi::path::{Operation, ParameterIn, PathItem};

    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

    /// A described path's operations, by method.
    fn operations(item: &PathItem) -> Vec<(&'static str, &Operation)> {
        let all = [
            ("get", &item.get),
            ("put", &item.put),
            ("post", &item.post),
            ("delete", &item.delete),
            ("options", &item.options),
            ("head", &item.head),
            ("patch", &item.patch),
            ("trace", &item.trace),
        ];
        all.into_iter().filter_map(|(method, op)| op.as_ref().map(|op| (method, op))).collect()
    }

    /// `path` with every `{param}` written `{}`.
    fn normalize(path: &str) -> String {
        let mut out = String::with_capacity(path.len());
        let mut in_param = false;
        for c in path.chars() {
            match c {
                '{' => {
                    in_param = true;
                    out.push_str("{}");
                }
                '}' => in_param = false,
                c if !in_param => out.push(c),
                _ => {}
            }
        }
        out
    }

    /// `s` split at each `sep` outside brackets and string literals.
    fn split_top(s: &str, sep: char) -> Vec<&str> {
        let (mut parts, mut depth, mut in_str, mut start) = (Vec::new(), 0i32, false, 0);
        for (i, c) in s.char_indices() {
            match c {
                '"' => in_str = !in_str,
                '(' | '[' if !in_str => depth += 1,
                ')' | ']' if !in_str => depth -= 1,
                c if c == sep && !in_str && depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + c.len_utf8();
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
    }

    /// Every route `router` registers, read from this file's source: by normalized path, the path and its
    /// methods. `.route(&format!("{prefix}…"))` counts once for each prefix of the `for prefix in […]` loop.
    fn routes() -> BTreeMap<String, (String, BTreeSet<String>)> {
        let src = include_str!("api.rs");
        let start = src.find("pub fn router(").expect("api.rs has `pub fn router(`");
        let body = &src[start..];
        let body = &body[..body.find("\n}\n").expect("router ends with a `}` line")];
        assert!(
            !body.contains(".merge(") && !body.contains(".nest("),
            "router merges or nests other routers now: teach every_route_is_described to read them"
        );
        let prefixes: Vec<String> = match body.find("for prefix in [") {
            None => Vec::new(),
            Some(i) => {
                let list = &body[i + "for prefix in [".len()..];
                let list = &list[..list.find(']').expect("the prefix list ends")];
                list.split(',').map(|p| p.trim().trim_matches('"').to_owned()).filter(|p| !p.is_empty()).collect()
            }
        };
        let mut routes: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
        for (at, _) in body.match_indices(".route(") {
            let rest = &body[at + ".route(".len()..];
            // The call's arguments: up to the parenthesis that closes it.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .expect("a .route( call ends");
            let call = &rest[..end];
            let args: Vec<&str> = split_top(call, ',').into_iter().map(str::trim).filter(|a| !a.is_empty()).collect();
            assert_eq!(args.len(), 2, "cannot read .route({call})");
            let (path, method_router) = (args[0], args[1]);
            let paths: Vec<String> = if let Some(literal) = path.strip_prefix('"') {
                vec![literal.trim_end_matches('"').to_owned()]
            } else {
                let template = path.split('"').nth(1).unwrap_or_else(|| panic!("cannot read the route path {path}"));
                assert!(
                    path.contains("format!(") && template.starts_with("{prefix}") && !prefixes.is_empty(),
                    "cannot read the route path {path}"
                );
                prefixes.iter().map(|p| template.replace("{prefix}", p).replace("{{", "{").replace("}}", "}")).collect()
            };
            let methods: BTreeSet<String> = split_top(method_router, '.')
                .into_iter()
                .map(|m| {
                    let name = m.trim().split('(').next().unwrap_or("").rsplit("::").next().unwrap_or("");
                    assert!(METHODS.contains(&name), "cannot read the methods of route {path}: {method_router}");
                    name.to_owned()
                })
                .collect();
            for p in paths {
                let entry = routes.entry(normalize(&p)).or_insert_with(|| (p.clone(), BTreeSet::new()));
                entry.1.extend(methods.iter().cloned());
            }
        }
        assert!(!routes.is_empty(), "found no .route( calls in router");
        routes
    }

    #[test]
    fn every_route_is_described() {
        let doc = super::openapi();
        let routes = routes();
        let mut described: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
        for (path, item) in &doc.paths.paths {
            let entry = described.entry(normalize(path)).or_insert_with(|| (path.clone(), BTreeSet::new()));
            entry.1.extend(operations(item).into_iter().map(|(method, _)| method.to_owned()));
        }
        for (key, (path, methods)) in &routes {
            let Some((described_path, found)) = described.get(key) else {
                panic!("route {path} is not described in openapi(): give its handler a #[utoipa::path]");
            };
            assert_eq!(
                found, methods,
                "route {path} (described as {described_path}): the description's methods, then the router's"
            );
        }
        for (key, (path, _)) in &described {
            assert!(routes.contains_key(key), "openapi() describes {path}, which router does not serve");
        }
    }

    #[test]
    fn every_operation_lists_the_gate_refusals_and_its_path_parameters() {
        for (path, item) in &super::openapi().paths.paths {
            let params: Vec<&str> = path.split('{').skip(1).filter_map(|s| s.split('}').next()).collect();
            for (method, op) in operations(item) {
                let mut statuses = vec!["401", "403"];
                if method != "get" {
                    statuses.extend(["413", "415"]);
                }
                for s in statuses {
                    assert!(op.responses.responses.contains_key(s), "{method} {path} does not list {s}");
                }
                for p in &params {
                    let declared =
                        op.parameters.iter().flatten().any(|x| x.name == *p && x.parameter_in == ParameterIn::Path);
                    assert!(declared, "{method} {path} does not declare its path parameter {p}");
                }
                assert!(op.tags.as_ref().is_some_and(|t| !t.is_empty()), "{method} {path} has no tag");
            }
        }
    }

    #[test]
    fn the_v1_scheduler_copies_match_scheduler() {
        let doc = super::openapi();
        let strip = |op: &Operation| {
            let mut v = serde_json::to_value(op).expect("an operation serializes");
            v.as_object_mut().expect("an operation is an object").remove("operationId");
            v
        };
        let mut copies = 0;
        for (path, item) in &doc.paths.paths {
            let Some(rest) = path.strip_prefix("/v1/scheduler") else { continue };
            let original = format!("/scheduler{rest}");
            let Some(original_item) = doc.paths.paths.get(&original) else {
                panic!("{path} is described but {original} is not");
            };
            let copy: Vec<_> = operations(item).into_iter().map(|(m, op)| (m, strip(op))).collect();
            let first: Vec<_> = operations(original_item).into_iter().map(|(m, op)| (m, strip(op))).collect();
            assert_eq!(copy, first, "{path} is not described as {original} is");
            copies += 1;
        }
        assert!(copies > 0, "no /v1/scheduler path is described");
    }
}
