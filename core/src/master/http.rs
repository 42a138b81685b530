//! The operator HTTP API: `/master/state`, `/health` and `/metrics`.
//!
//! `/metrics` is Prometheus text, unless the caller asks for JSON (`Accept: application/json`) and the
//! binary has plugged in a JSON answer (in `keel dev`, the services framework's Marathon metrics, which
//! Marathon clients read there). `/health` names every registered part of the process and its state.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use axum::extract::{Path, Query};

use super::{FileRequest, MasterError, MasterHandle};
use crate::health::Health;
use crate::ids::{FrameworkId, TaskId};

/// Answers `/metrics` for callers that accept only JSON.
pub type JsonMetrics =
    std::sync::Arc<dyn Fn() -> futures::future::BoxFuture<'static, Response> + Send + Sync + 'static>;

/// What the operator routes need besides the master.
#[derive(Clone, Default)]
pub struct Extras {
    /// The parts of the process `/health` reports on, besides the master's actor.
    pub health: Health,
    /// The JSON answer of `/metrics`, if the binary has one.
    pub json_metrics: Option<JsonMetrics>,
    /// Who may do what on this port (auth off by default: the binary always sets it).
    pub gate: crate::gate::Gate,
    /// Who this master is, as Mesos's v1 API tells its frameworks.
    pub mesos: crate::mesos::MasterInfo,
}

#[derive(Clone)]
struct Ops {
    master: MasterHandle,
    extras: Extras,
}

/// The operator routes, to be merged into the server's router.
pub fn router(master: MasterHandle) -> Router {
    router_with(master, Extras::default())
}

/// [`router`], with the health probes and JSON metrics of `extras`. The master's own state is asked by
/// `/health` itself; the probe registered here lets the binary notice a stopped actor too.
pub fn router_with(master: MasterHandle, extras: Extras) -> Router {
    let probe = master.clone();
    extras.health.register("master", move || probe.is_running());
    let v1 = super::v1::V1::new(master.clone(), extras.mesos.clone(), &extras.gate);
    let mesos = Mesos { master: master.clone(), info: extras.mesos.clone() };
    let ops = Ops { master: master.clone(), extras };
    // Mesos's tools call these at their short paths too, and with a trailing slash.
    let mut mesos_routes = Router::new();
    for (paths, handler) in [
        (&["/master/state", "/master/state.json", "/state.json", "/state"][..], get(state)),
        (&["/master/slaves", "/slaves"][..], get(slaves)),
        (&["/master/frameworks", "/frameworks"][..], get(frameworks)),
        (&["/master/tasks", "/tasks"][..], get(tasks)),
    ] {
        for path in paths {
            mesos_routes = mesos_routes.route(path, handler.clone()).route(&format!("{path}/"), handler.clone());
        }
    }
    Router::new()
        .route("/version", get(version))
        .route("/master/tasks/{task_id}/files/{file}", get(read_file))
        .route("/keel/v1/tasks/{task_id}", get(task))
        .route("/keel/v1/events", get(events))
        .route("/keel/v1/summary", get(summary))
        .route("/keel/v1/frameworks", get(frameworks_list))
        .with_state(master)
        .merge(Router::new().route("/health", get(health)).route("/metrics", get(metrics)).with_state(ops))
        .merge(super::v1::router(v1))
        .merge(mesos_routes.with_state(mesos))
}

/// What the Mesos-shaped routes need: the master, and who it is.
#[derive(Clone)]
struct Mesos {
    master: MasterHandle,
    info: crate::mesos::MasterInfo,
}

/// A JSON error body: `{"message": "..."}` with a status code.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "message": self.1 }))).into_response()
    }
}

impl From<MasterError> for ApiError {
    fn from(e: MasterError) -> ApiError {
        let code = match e {
            MasterError::NotFound(_) => StatusCode::NOT_FOUND,
            MasterError::Invalid(_) | MasterError::FrameworkRemoved(_) => StatusCode::BAD_REQUEST,
            MasterError::Forbidden(_) => StatusCode::FORBIDDEN,
            MasterError::Store(_) | MasterError::Stopped | MasterError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError(code, e.to_string())
    }
}

#[derive(serde::Deserialize)]
struct FileQuery {
    framework_id: Option<String>,
    offset: Option<u64>,
    length: Option<u64>,
}

/// `GET /master/tasks/{task_id}/files/{stdout|stderr}?offset=&length=&framework_id=`: part of a task's
/// output, read from its agent. Without `offset`, the last `length` bytes (64 KiB by default).
#[utoipa::path(
    get,
    path = "/master/tasks/{task_id}/files/{file}",
    tag = "master",
    description = "Part of a task's stdout or stderr, read from its agent.",
    params(
        ("task_id" = String, Path, description = "The task's id"),
        ("file" = String, Path, description = "stdout or stderr"),
        ("framework_id" = Option<String>, Query, description = "Needed when several frameworks use the task id"),
        ("offset" = Option<u64>, Query, description = "Where to start; without it, the last `length` bytes"),
        ("length" = Option<u64>, Query, description = "How many bytes (default 64 KiB)"),
    ),
    responses(
        (status = 200, description = "`data`, `offset` and `size`", body = serde_json::Value),
        (status = 400, description = "A bad id or file name", body = crate::gate::ErrorBody),
        (status = 404, description = "No such task", body = crate::gate::ErrorBody),
        (status = 503, description = "The task's agent is not connected", body = crate::gate::ErrorBody),
    )
)]
async fn read_file(
    State(master): State<MasterHandle>,
    principal: Option<axum::Extension<std::sync::Arc<crate::auth::Principal>>>,
    Path((task_id, file)): Path<(String, String)>,
    Query(q): Query<FileQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let bad = |e: crate::ids::IdError| ApiError(StatusCode::BAD_REQUEST, e.to_string());
    let owner = principal.filter(|p| p.role == crate::auth::Role::Framework).map(|p| p.name.clone());
    let request = FileRequest {
        owner,
        framework_id: q.framework_id.map(FrameworkId::parse).transpose().map_err(bad)?,
        task_id: TaskId::parse(task_id).map_err(bad)?,
        file,
        offset: q.offset,
        length: q.length.unwrap_or(64 * 1024),
    };
    Ok(Json(master.read_file(request).await?))
}

/// `GET /keel/v1/summary`: counts and capacity, without the list of every task.
#[utoipa::path(
    get,
    path = "/keel/v1/summary",
    tag = "keel",
    description = "Agents by status, frameworks, tasks by state, and the capacity of reachable agents against what live tasks use.",
    responses(
        (status = 200, description = "The counts", body = serde_json::Value),
        (status = 503, description = "The master is not running", body = crate::gate::ErrorBody),
    )
)]
async fn summary(State(master): State<MasterHandle>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(master.summary().await?))
}

/// `GET /keel/v1/frameworks`: every framework, without the list of its tasks.
#[utoipa::path(
    get,
    path = "/keel/v1/frameworks",
    tag = "keel",
    description = "Every framework the master knows: id, name, role, whether it is connected and active, its web UI URL, its share and how many tasks it has, without the tasks themselves.",
    responses(
        (status = 200, description = "`frameworks`", body = serde_json::Value),
        (status = 503, description = "The master is not running", body = crate::gate::ErrorBody),
    )
)]
async fn frameworks_list(State(master): State<MasterHandle>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(json!({ "frameworks": master.frameworks().await? })))
}

#[derive(serde::Deserialize)]
struct TaskQuery {
    framework_id: Option<String>,
}

/// `GET /keel/v1/tasks/{task_id}`: one task, live or recently completed, with the states it went through.
#[utoipa::path(
    get,
    path = "/keel/v1/tasks/{task_id}",
    tag = "keel",
    description = "One task, live or among the recently completed, with its state history (oldest first).",
    params(
        ("task_id" = String, Path, description = "The task's id"),
        ("framework_id" = Option<String>, Query, description = "Needed when several frameworks use the task id"),
    ),
    responses(
        (status = 200, description = "The task and its `history`", body = serde_json::Value),
        (status = 400, description = "A bad id", body = crate::gate::ErrorBody),
        (status = 404, description = "No such task", body = crate::gate::ErrorBody),
        (status = 503, description = "The master is not running", body = crate::gate::ErrorBody),
    )
)]
async fn task(
    State(master): State<MasterHandle>,
    Path(task_id): Path<String>,
    Query(q): Query<TaskQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let bad = |e: crate::ids::IdError| ApiError(StatusCode::BAD_REQUEST, e.to_string());
    let framework_id = q.framework_id.map(FrameworkId::parse).transpose().map_err(bad)?;
    Ok(Json(master.task(framework_id, TaskId::parse(task_id).map_err(bad)?).await?))
}

/// `GET /keel/v1/events`: server-sent events, one per change of a task, an agent or a framework. Each
/// event's name is its `type`; a reader that falls behind gets a `lagged` event with how many it missed.
#[utoipa::path(
    get,
    path = "/keel/v1/events",
    tag = "keel",
    description = "Server-sent events: task_updated, agent_registered, agent_disconnected, agent_unreachable, \
        framework_subscribed, framework_disconnected, framework_removed; `lagged` when the reader fell behind.",
    responses(
        (status = 200, description = "An event stream", body = String, content_type = "text/event-stream"),
    )
)]
async fn events(State(master): State<MasterHandle>) -> Response {
    event_stream(master.events(), super::ClusterEvent::kind)
}

/// Server-sent events from a broadcast: each event named by `kind`, its data the JSON of the event; a
/// reader that falls behind gets a `lagged` event with how many it missed. Kept alive every 15 s.
pub fn event_stream<T>(rx: tokio::sync::broadcast::Receiver<T>, kind: fn(&T) -> &'static str) -> Response
where
    T: serde::Serialize + Clone + Send + 'static,
{
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
    let stream = BroadcastStream::new(rx).map(move |e| {
        let event = match e {
            Ok(e) => Event::default().event(kind(&e)).data(serde_json::to_string(&e).unwrap_or_default()),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                Event::default().event("lagged").data(json!({ "missed": n }).to_string())
            }
        };
        Ok::<_, std::convert::Infallible>(event)
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// `GET /version`: Mesos's version document, with Keel's own version beside it.
#[utoipa::path(
    get,
    path = "/version",
    tag = "master",
    description = "The Mesos version Keel's APIs answer as (`version`, numeric and dotted), the commit the binary was built from (`git_sha`; `build_time` is the commit's time), and Keel's own version (`keel_version`).",
    responses((status = 200, description = "The version document", body = serde_json::Value))
)]
async fn version() -> Json<serde_json::Value> {
    Json(crate::version::document())
}

#[utoipa::path(
    get,
    path = "/master/state",
    tag = "master",
    description = "Agents, frameworks and tasks, as the master knows them: a superset of Mesos's state \
                   document (`slaves`, `frameworks` with their tasks, `leader`, `version`...), with Keel's own \
                   fields (`agents`, `tasks`, `completed_tasks`...) beside. Also at /master/state.json, \
                   /state.json and /state.",
    responses(
        (status = 200, description = "The cluster's state", body = serde_json::Value),
        (status = 503, description = "The master is not running", body = crate::gate::ErrorBody),
    )
)]
async fn state(State(m): State<Mesos>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(super::mesos_state::state(&m.master.state().await?, &m.info)))
}

#[utoipa::path(
    get,
    path = "/master/slaves",
    tag = "master",
    description = "The agents, as Mesos's /master/slaves lists them (also at /slaves).",
    params(("slave_id" = Option<String>, Query, description = "Only this agent")),
    responses(
        (status = 200, description = "`slaves` and `recovered_slaves`", body = serde_json::Value),
        (status = 503, description = "The master is not running", body = crate::gate::ErrorBody),
    )
)]
async fn slaves(
    State(m): State<Mesos>,
    Query(q): Query<super::mesos_state::IdQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(super::mesos_state::slaves(&m.master.state().await?, &q)))
}

#[utoipa::path(
    get,
    path = "/master/frameworks",
    tag = "master",
    description = "The frameworks with their tasks, as Mesos's /master/frameworks lists them (also at /frameworks).",
    params(("framework_id" = Option<String>, Query, description = "Only this framework")),
    responses(
        (status = 200, description = "`frameworks`, `completed_frameworks` and `unregistered_frameworks`", body = serde_json::Value),
        (status = 503, description = "The master is not running", body = crate::gate::ErrorBody),
    )
)]
async fn frameworks(
    State(m): State<Mesos>,
    Query(q): Query<super::mesos_state::IdQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(super::mesos_state::frameworks_document(&m.master.state().await?, &q)))
}

#[utoipa::path(
    get,
    path = "/master/tasks",
    tag = "master",
    description = "Live and completed tasks of every framework, as Mesos's /master/tasks pages them (also at /tasks).",
    params(
        ("limit" = Option<i64>, Query, description = "How many tasks (default 100); -1 for all"),
        ("offset" = Option<u64>, Query, description = "How many to skip"),
        ("order" = Option<String>, Query, description = "asc or des (default): by launch time"),
        ("framework_id" = Option<String>, Query, description = "Only this framework's tasks"),
        ("task_id" = Option<String>, Query, description = "Only tasks with this id"),
    ),
    responses(
        (status = 200, description = "`tasks`", body = serde_json::Value),
        (status = 400, description = "A bad limit or order", body = crate::gate::ErrorBody),
        (status = 503, description = "The master is not running", body = crate::gate::ErrorBody),
    )
)]
async fn tasks(
    State(m): State<Mesos>,
    Query(q): Query<super::mesos_state::TasksQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let snapshot = m.master.state().await?;
    super::mesos_state::tasks(&snapshot, &q).map(Json).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))
}

/// How long `/health` waits for the master's actor before calling it wedged.
const HEALTH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /health`: 200 when every part runs, 503 otherwise; both name every part and its state.
#[utoipa::path(
    get,
    path = "/health",
    tag = "master",
    description = "Every part of the process with its state; needs no credential.",
    responses(
        (status = 200, description = "Every part runs", body = serde_json::Value),
        (status = 503, description = "A part has stopped; it is named", body = serde_json::Value),
    )
)]
async fn health(State(ops): State<Ops>) -> Response {
    // Asking the actor proves it is alive and not wedged. The summary counts (one pass over the tasks, no
    // copies): a probe every few seconds must not copy every task, as the whole state would. Its frameworks
    // are those not torn down.
    let master = tokio::time::timeout(HEALTH_WAIT, ops.master.summary()).await;
    let (master_up, counts) = match &master {
        Ok(Ok(summary)) => {
            (true, json!({ "agents": summary.agents.values().sum::<usize>(), "frameworks": summary.frameworks }))
        }
        Ok(Err(e)) => (false, json!({ "error": e.to_string() })),
        Err(_) => (false, json!({ "error": format!("no answer within {HEALTH_WAIT:?}") })),
    };
    let (all_up, mut body) = ops.extras.health.report(|name| name != "master" || master_up);
    if let (Some(obj), Some(counts)) = (body.as_object_mut(), counts.as_object()) {
        obj.extend(counts.clone());
    }
    let status = if all_up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Whether the caller wants JSON: it asked for `application/json` and not for text, or it sent no
/// `Accept` at all, as Chronos's and Marathon's Python clients do. Prometheus always names its text formats,
/// and curl sends `*/*`: both get text.
fn wants_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return true };
    accept.contains("application/json") && !accept.contains("text/plain") && !accept.contains("openmetrics")
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "master",
    description = "Prometheus text; JSON (Marathon's metrics, in keel dev) for Accept: application/json or none.",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "text/plain"),
        (status = 503, description = "The master is not running", body = crate::gate::ErrorBody),
    )
)]
async fn metrics(State(ops): State<Ops>, headers: axum::http::HeaderMap) -> Result<Response, ApiError> {
    if wants_json(&headers)
        && let Some(json_metrics) = &ops.extras.json_metrics
    {
        return Ok(json_metrics().await);
    }
    let text = ops.master.metrics().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The description of the operator routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        state, slaves, frameworks, tasks, version, read_file, task, events, summary, frameworks_list, health,
        metrics,
        super::v1::scheduler
    ),
    tags(
        (name = "master", description = "The master's operator API"),
        (name = "mesos", description = "Mesos's v1 scheduler API"),
    )
)]
pub struct MasterApiDoc;

/// The JSON 404 for any path nobody serves.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no such endpoint: {}", uri.path()))
}
