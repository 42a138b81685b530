//! Marathon's `/v2/apps` endpoints over the app store: create, read, replace, patch, delete, list with
//! filters, and version history. Errors are JSON with a `message` (and `details` for 422), as Marathon's.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use keel_core::gate::ErrorBody;
use keel_core::query::{pairs, param};
use serde::Deserialize;
use serde_json::{Value, json};

use axum::extract::RawQuery;
use axum::routing::{delete, post};
use keel_core::task::TaskState;

use crate::app::{AppDefinition, AppId, Violation};
use crate::callbacks::{CallbackError, Callbacks};
use crate::edit::{AppChange, ChangeError};
use crate::scheduler::{ChangeOutcome, Instance, MarathonHandle, Snapshot, Stopped, UnusedOffer};
use crate::store::{AppStore, AppStoreError};

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

    fn invalid(details: Vec<Violation>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({ "message": "Object is not valid", "details": details }),
        }
    }

    fn no_app(id: &AppId) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("App '{id}' does not exist"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<Stopped> for ApiError {
    fn from(e: Stopped) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> ApiError {
        match e {
            ChangeError::NotFound(_) | ChangeError::NoVersion(..) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            ChangeError::Exists(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            ChangeError::Locked(ref d) => ApiError {
                status: StatusCode::CONFLICT,
                body: json!({ "message": e.to_string(), "deployments": [{ "id": d }] }),
            },
            ChangeError::Invalid(details) => ApiError::invalid(details),
            ChangeError::Store(e) => e.into(),
            ChangeError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

impl From<AppStoreError> for ApiError {
    fn from(e: AppStoreError) -> ApiError {
        tracing::error!(error = %e, source = ?std::error::Error::source(&e), "app store failure");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; try again"))
    }
}

/// What the handlers share: the store (desired state) and the scheduler (observed state).
#[derive(Clone)]
pub struct Api {
    pub apps: AppStore,
    pub marathon: MarathonHandle,
    /// The HTTP callback subscriptions.
    pub callbacks: Callbacks,
    /// Where this framework serves, for `/v2/info` and `/v2/leader`.
    pub info: ServiceInfo,
}

/// Where the services framework serves and which master it uses.
#[derive(Clone, Debug, Default)]
pub struct ServiceInfo {
    /// `host:port` of the REST API, as Marathon reports its leader.
    pub leader: String,
    /// The master's URL.
    pub master: String,
}

/// Marathon's `/v2` routes (apps, tasks, queue delay, info) and `/ping`.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v2/apps", get(list).post(create).put(replace_many).patch(patch_many))
        .route("/v2/groups", get(groups).post(create_group))
        .route("/v2/groups/{*rest}", get(groups_at).put(update_group).delete(delete_group))
        .route("/v2/apps/{*rest}", get(show).put(replace).patch(patch).delete(remove).post(restart))
        .route("/v2/tasks", get(all_tasks))
        .route("/v2/tasks/delete", post(delete_tasks))
        .route("/v2/queue", get(queue))
        .route("/v2/queue/{*rest}", delete(reset_delay))
        .route("/v2/events", get(events))
        .route("/v2/deployments", get(deployments))
        .route("/v2/deployments/{id}", delete(cancel_deployment))
        .route("/v2/info", get(info))
        .route("/v2/eventSubscriptions", get(list_subscriptions).post(subscribe).delete(unsubscribe))
        .route("/v2/leader", get(leader))
        .route("/ping", get(ping))
        .with_state(api)
}

/// A boolean query parameter; a bad value answers 400.
fn flag(pairs: &[(String, String)], key: &str) -> Result<bool, ApiError> {
    keel_core::query::flag(pairs, key).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
}

/// What `embed` asks to add to an app.
#[derive(Clone, Copy, Default)]
struct Embeds {
    tasks: bool,
    task_stats: bool,
}

impl Embeds {
    /// Reads `embed=apps.tasks` / `app.tasks` and `apps.taskStats` / `app.taskStats`.
    fn from_query(q: &[(String, String)]) -> Embeds {
        let has = |what: &str| q.iter().any(|(k, v)| k == "embed" && v.split_once('.').is_some_and(|(_, w)| w == what));
        Embeds { tasks: has("tasks"), task_stats: has("taskStats") }
    }
}

/// Marathon's `taskStats` of an app: counts and life times of its instances in all, started since the
/// last scaling, and of the latest and of older configurations. A category without instances is left out.
fn task_stats(app: &AppDefinition, tasks: &[&Instance], now_millis: i64) -> Value {
    let info = app.version_info.as_ref();
    let scaled_at = info.map_or("", |i| i.last_scaling_at.as_str());
    let changed_at = info.map_or("", |i| i.last_config_change_at.as_str());
    let stats = |chosen: Vec<&&Instance>| -> Option<Value> {
        if chosen.is_empty() {
            return None;
        }
        let count = |f: &dyn Fn(&Instance) -> bool| chosen.iter().filter(|i| f(i)).count();
        let mut lives: Vec<f64> =
            chosen.iter().filter_map(|i| i.started_millis).map(|s| (now_millis - s).max(0) as f64 / 1000.0).collect();
        lives.sort_by(f64::total_cmp);
        let mut v = json!({ "counts": {
            "staged": count(&|i| matches!(i.state, TaskState::Staging | TaskState::Starting)),
            "running": count(&|i| i.state == TaskState::Running),
            "healthy": count(&|i| i.healthy == Some(true)),
            "unhealthy": count(&|i| i.healthy == Some(false)),
        }});
        if !lives.is_empty() {
            let average = lives.iter().sum::<f64>() / lives.len() as f64;
            v["lifeTime"] = json!({ "averageSeconds": average, "medianSeconds": lives[lives.len() / 2] });
        }
        Some(json!({ "stats": v }))
    };
    let mut out = serde_json::Map::new();
    type Keep<'a> = &'a dyn Fn(&Instance) -> bool;
    let categories: [(&str, Keep); 4] = [
        ("startedAfterLastScaling", &|i| i.staged_at.as_str() >= scaled_at),
        ("withLatestConfig", &|i| i.version.as_str() >= changed_at),
        ("withOutdatedConfig", &|i| i.version.as_str() < changed_at),
        ("totalSummary", &|_| true),
    ];
    for (name, keep) in categories {
        if let Some(s) = stats(tasks.iter().filter(|i| keep(i)).collect()) {
            out.insert(name.into(), s);
        }
    }
    Value::Object(out)
}

/// The app as Marathon shows it: its definition plus counts, deployments, the last failure and, when
/// asked for, its tasks and task statistics.
fn enrich(app: &AppDefinition, snapshot: &Snapshot, embeds: Embeds) -> Value {
    let tasks: Vec<&Instance> = snapshot.instances.iter().filter(|i| i.app_id == app.id).collect();
    enrich_with(app, &tasks, snapshot, embeds)
}

/// The instances of each app, found in one pass (a list of many apps must not scan every instance per app).
fn instances_by_app(snapshot: &Snapshot) -> HashMap<&str, Vec<&Instance>> {
    let mut by_app: HashMap<&str, Vec<&Instance>> = HashMap::new();
    for i in &snapshot.instances {
        by_app.entry(i.app_id.as_str()).or_default().push(i);
    }
    by_app
}

/// [`enrich`], with the app's instances already found.
fn enrich_with(app: &AppDefinition, tasks: &[&Instance], snapshot: &Snapshot, embeds: Embeds) -> Value {
    let count = |f: &dyn Fn(&Instance) -> bool| tasks.iter().filter(|i| f(i)).count();
    let mut v = serde_json::to_value(app).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "tasksStaged".into(),
            json!(count(&|i| matches!(i.state, TaskState::Staging | TaskState::Starting))),
        );
        obj.insert("tasksRunning".into(), json!(count(&|i| i.state == TaskState::Running)));
        obj.insert("tasksHealthy".into(), json!(count(&|i| i.healthy == Some(true))));
        obj.insert("tasksUnhealthy".into(), json!(count(&|i| i.healthy == Some(false))));
        let deployments: Vec<Value> = snapshot
            .deployments
            .iter()
            .filter(|d| d.app_id.as_str() == app.id)
            .map(|d| json!({ "id": d.id }))
            .collect();
        obj.insert("deployments".into(), json!(deployments));
        if let Some(f) = snapshot.failures.get(&app.id) {
            obj.insert("lastTaskFailure".into(), json!(f));
        }
        if embeds.task_stats {
            obj.insert("taskStats".into(), task_stats(app, tasks, keel_core::store::now_millis()));
        }
        if embeds.tasks {
            obj.insert("tasks".into(), json!(tasks));
        }
    }
    v
}

/// 409 when a deployment is changing the app and the caller did not `force`.
async fn check_locked(api: &Api, id: &AppId, force: bool) -> Result<(), ApiError> {
    if force {
        return Ok(());
    }
    match api.marathon.deployment_of(id.clone()).await? {
        Some(d) => Err(ChangeError::Locked(d).into()),
        None => Ok(()),
    }
}

/// The time now, also used as a new version: unique within this process.
fn now() -> String {
    crate::store::new_version()
}

/// Parses a body, telling malformed JSON (400) from well-formed JSON of the wrong shape (422). Duplicate
/// keys are refused, so that a proxy in front of Keel cannot read a different value than Keel stores.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value = keel_core::json::parse_strict(body).map_err(|e| match e {
        keel_core::json::StrictError::Syntax(e) => ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid JSON: {e}")),
        e => ApiError::invalid(vec![Violation { path: "/".into(), errors: vec![e.to_string()] }]),
    })?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::invalid(vec![Violation { path: "/".into(), errors: vec![e.to_string()] }]))
}

fn parse_id(raw: &str) -> Result<AppId, ApiError> {
    AppId::parse(raw).map_err(|e| ApiError::invalid(vec![Violation { path: "/id".into(), errors: vec![e] }]))
}

/// `{"version": …, "deploymentId": …}`, as Marathon answers a change.
fn changed(outcome: &ChangeOutcome) -> Value {
    let version = outcome.app.as_ref().and_then(|a| a.version.clone()).unwrap_or_else(now);
    json!({ "version": version, "deploymentId": outcome.deployment })
}

/// Marathon's `label` filter: `key`, `key==value` or `key!=value`.
fn label_matches(app: &AppDefinition, selector: &str) -> bool {
    if let Some((k, v)) = selector.split_once("!=") {
        return app.labels.get(k.trim()).is_some_and(|x| x != v.trim());
    }
    if let Some((k, v)) = selector.split_once("==") {
        return app.labels.get(k.trim()).is_some_and(|x| x == v.trim());
    }
    app.labels.contains_key(selector.trim())
}

#[utoipa::path(
    get,
    path = "/v2/apps",
    tag = "marathon",
    description = "Lists the apps, with their task counts and deployments, optionally filtered.",
    params(
        ("id" = Option<String>, Query, description = "Only apps whose id contains this"),
        ("cmd" = Option<String>, Query, description = "Only apps whose cmd contains this"),
        ("label" = Option<String>, Query, description = "Only apps with this label: key, key==value or key!=value"),
        (
            "embed" = Option<String>,
            Query,
            description = "app(s).tasks adds the tasks, app(s).taskStats their statistics (repeatable)"
        ),
    ),
    responses(
        (status = 200, description = "`{\"apps\": [...]}`", body = Value),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn list(State(api): State<Api>, RawQuery(q): RawQuery) -> Result<Json<Value>, ApiError> {
    let q = pairs(q.as_deref());
    let embeds = Embeds::from_query(&q);
    let (id, cmd, label) = (param(&q, "id"), param(&q, "cmd"), param(&q, "label"));
    let all = api.apps.list().await?;
    let snapshot = api.marathon.snapshot().await?;
    let by_app = instances_by_app(&snapshot);
    let chosen: Vec<Value> = all
        .iter()
        .filter(|a| id.is_none_or(|id| a.id.contains(id)))
        .filter(|a| cmd.is_none_or(|c| a.cmd.as_deref().is_some_and(|cmd| cmd.contains(c))))
        .filter(|a| label.is_none_or(|l| label_matches(a, l)))
        .map(|a| enrich_with(a, by_app.get(a.id.as_str()).map_or(&[][..], Vec::as_slice), &snapshot, embeds))
        .collect();
    Ok(Json(json!({ "apps": chosen })))
}

#[utoipa::path(
    post,
    path = "/v2/apps",
    tag = "marathon",
    description = "Creates an app and starts deploying it.",
    request_body(content = Value, content_type = "application/json", description = "The app definition, with its id"),
    responses(
        (
            status = 201,
            description = "The stored app; Location names it",
            body = Value,
            headers(("Location" = String, description = "/v2/apps{id}"))
        ),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 409, description = "An app with that id exists", body = ErrorBody),
        (status = 422, description = "The definition is not valid (details name the fields)", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn create(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let raw: Value = parse_body(&body)?;
    let id = parse_id(raw.get("id").and_then(Value::as_str).unwrap_or_default())?;
    let outcome = api.marathon.change(id.clone(), AppChange::Create(raw), false).await?;
    let mut app = serde_json::to_value(&outcome.app).unwrap_or_default();
    if let Some(obj) = app.as_object_mut() {
        obj.insert("deployments".into(), json!([{ "id": outcome.deployment }]));
    }
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v2/apps{id}")) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(app)).into_response())
}

/// Splits `/prod/web/versions/V` into the app id and what follows it.
enum Target {
    App(AppId),
    Versions(AppId),
    Version(AppId, String),
    Tasks(AppId),
    Task(AppId, String),
}

fn target(rest: &str) -> Result<Target, ApiError> {
    let trimmed = rest.trim_end_matches('/');
    if let Some(id) = trimmed.strip_suffix("/tasks") {
        return Ok(Target::Tasks(parse_id(id)?));
    }
    if let Some((id, task)) = trimmed.rsplit_once("/tasks/") {
        return Ok(Target::Task(parse_id(id)?, task.to_owned()));
    }
    if let Some(id) = trimmed.strip_suffix("/versions") {
        return Ok(Target::Versions(parse_id(id)?));
    }
    if let Some((id, version)) = trimmed.rsplit_once("/versions/") {
        return Ok(Target::Version(parse_id(id)?, version.to_owned()));
    }
    Ok(Target::App(parse_id(trimmed)?))
}

#[utoipa::path(
    get,
    path = "/v2/apps/{app_id}",
    tag = "marathon",
    description = "One app with its tasks, counts, deployments and last failure.",
    params(
        (
            "app_id" = String,
            Path,
            description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
        ),
        (
            "embed" = Option<String>,
            Query,
            description = "app(s).tasks adds the tasks, app(s).taskStats their statistics (repeatable)"
        ),
    ),
    responses(
        (status = 200, description = "`{\"app\": {...}}`", body = Value),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 422, description = "The app id is not valid", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn show(
    State(api): State<Api>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let apps = &api.apps;
    match target(&rest)? {
        Target::App(id) => {
            let app = apps.get(&id).await?.ok_or_else(|| ApiError::no_app(&id))?;
            // One app always comes with its tasks, as in Marathon.
            let embeds = Embeds { tasks: true, ..Embeds::from_query(&pairs(q.as_deref())) };
            Ok(Json(json!({ "app": enrich(&app, &api.marathon.snapshot().await?, embeds) })))
        }
        Target::Tasks(id) => {
            apps.get(&id).await?.ok_or_else(|| ApiError::no_app(&id))?;
            let snapshot = api.marathon.snapshot().await?;
            let tasks: Vec<&Instance> = snapshot.instances.iter().filter(|i| i.app_id == id.as_str()).collect();
            Ok(Json(json!({ "tasks": tasks })))
        }
        Target::Task(id, _) => {
            Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("read the tasks of {id} at /v2/apps{id}/tasks")))
        }
        Target::Versions(id) => {
            let versions = apps.versions(&id).await?;
            if versions.is_empty() {
                return Err(ApiError::no_app(&id));
            }
            Ok(Json(json!({ "versions": versions })))
        }
        Target::Version(id, version) => {
            let app = apps.version(&id, &version).await?.ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, format!("App '{id}' does not exist in version {version}"))
            })?;
            Ok(Json(serde_json::to_value(app).unwrap_or_default()))
        }
    }
}

fn app_target(rest: &str) -> Result<AppId, ApiError> {
    match target(rest)? {
        Target::App(id) => Ok(id),
        _ => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "versions can only be read")),
    }
}

/// `PUT /v2/apps/{id}?partialUpdate=&force=`: creates the app (201) or changes it (200). As in Marathon,
/// the fields given are merged into the current definition unless `partialUpdate=false`.
#[utoipa::path(
    put,
    path = "/v2/apps/{app_id}",
    tag = "marathon",
    description = "Creates or changes an app; `{\"version\": V}` rolls it back to version V.",
    params(
        (
            "app_id" = String,
            Path,
            description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
        ),
        (
            "force" = Option<bool>,
            Query,
            description = "Change even while a deployment is changing the app (otherwise 409)"
        ),
        (
            "partialUpdate" = Option<bool>,
            Query,
            description = "false: the body replaces the definition (by default its fields are merged)"
        ),
    ),
    request_body(
        content = Value,
        content_type = "application/json",
        description = "The app definition (or the fields to change)"
    ),
    responses(
        (status = 200, description = "Changed: `{\"version\", \"deploymentId\"}`", body = Value),
        (status = 201, description = "Created: `{\"version\", \"deploymentId\"}`", body = Value),
        (
            status = 400,
            description = "The body is not valid JSON, or a query parameter is not true or false",
            body = ErrorBody
        ),
        (status = 404, description = "The version to roll back to does not exist", body = ErrorBody),
        (status = 405, description = "The path names versions or tasks, which cannot be replaced", body = ErrorBody),
        (status = 409, description = "A deployment is changing the app (use force=true)", body = ErrorBody),
        (status = 422, description = "The definition is not valid (details name the fields)", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn replace(
    State(api): State<Api>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = app_target(&rest)?;
    let q = pairs(q.as_deref());
    let force = flag(&q, "force")?;
    let partial = param(&q, "partialUpdate").is_none() || flag(&q, "partialUpdate")?;
    let raw: Value = parse_body(&body)?;
    let outcome = api.marathon.change(id, AppChange::Put { raw, partial }, force).await?;
    let status = if outcome.existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(changed(&outcome))).into_response())
}

/// `PATCH /v2/apps/{id}`: changes only the fields given.
#[utoipa::path(
    patch,
    path = "/v2/apps/{app_id}",
    tag = "marathon",
    description = "Changes only the fields given of an app.",
    params(
        (
            "app_id" = String,
            Path,
            description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
        ),
        (
            "force" = Option<bool>,
            Query,
            description = "Change even while a deployment is changing the app (otherwise 409)"
        ),
    ),
    request_body(content = Value, content_type = "application/json", description = "The fields to change"),
    responses(
        (status = 200, description = "`{\"version\", \"deploymentId\"}`", body = Value),
        (
            status = 400,
            description = "The body is not valid JSON, or a query parameter is not true or false",
            body = ErrorBody
        ),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 405, description = "The path names versions or tasks, which cannot be patched", body = ErrorBody),
        (status = 409, description = "A deployment is changing the app (use force=true)", body = ErrorBody),
        (status = 422, description = "The definition is not valid (details name the fields)", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn patch(
    State(api): State<Api>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = app_target(&rest)?;
    let force = flag(&pairs(q.as_deref()), "force")?;
    let raw: Value = parse_body(&body)?;
    let outcome = api.marathon.change(id, AppChange::Patch(raw), force).await?;
    Ok(Json(changed(&outcome)))
}

/// `POST /v2/apps/{id}/restart?force=`: replaces every instance (as a rolling upgrade) with the same
/// definition, under a new version.
#[utoipa::path(
    post,
    path = "/v2/apps/{app_id}/restart",
    tag = "marathon",
    description = "Replaces every instance of an app (a rolling upgrade) under a new version.",
    params(
        (
            "app_id" = String,
            Path,
            description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
        ),
        (
            "force" = Option<bool>,
            Query,
            description = "Change even while a deployment is changing the app (otherwise 409)"
        ),
    ),
    responses(
        (status = 200, description = "`{\"version\", \"deploymentId\"}`", body = Value),
        (status = 400, description = "A query parameter is not true or false", body = ErrorBody),
        (status = 404, description = "No such app, or the path does not end in /restart", body = ErrorBody),
        (status = 409, description = "A deployment is changing the app (use force=true)", body = ErrorBody),
        (status = 422, description = "The app id is not valid", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn restart(
    State(api): State<Api>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let id = rest
        .trim_end_matches('/')
        .strip_suffix("/restart")
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint: POST /v2/apps/{rest}")))?;
    let id = parse_id(id)?;
    let force = flag(&pairs(q.as_deref()), "force")?;
    let outcome = api.marathon.change(id, AppChange::Restart, force).await?;
    Ok(Json(changed(&outcome)))
}

/// `PUT` or `PATCH /v2/apps` with a list: every app in it, each by its own `id`, in order. Each is
/// validated and stored on its own: a refused one stops the list there, and those before it stand.
async fn change_many(api: Api, q: Option<String>, body: Bytes, partial: bool) -> Result<Json<Value>, ApiError> {
    let force = flag(&pairs(q.as_deref()), "force")?;
    let list: Vec<Value> = parse_body(&body)?;
    let mut targets = Vec::new();
    for (i, raw) in list.into_iter().enumerate() {
        let id = raw.get("id").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(vec![Violation {
                path: format!("({i})/id"),
                errors: vec!["every app in the list needs an id".into()],
            }])
        })?;
        targets.push((parse_id(id)?, raw));
    }
    for (id, _) in &targets {
        check_locked(&api, id, force).await?;
    }
    let mut last = None;
    let mut deployments = Vec::new();
    for (id, raw) in targets {
        let outcome = api.marathon.change(id, AppChange::Put { raw, partial }, force).await?;
        deployments.push(outcome.deployment.clone());
        last = Some(outcome);
    }
    let version = last.as_ref().and_then(|o| o.app.as_ref()).and_then(|a| a.version.clone());
    Ok(Json(json!({ "version": version, "deploymentId": deployments.first() })))
}

/// `PUT /v2/apps` with a list: as for one app, partial unless `partialUpdate=false`.
#[utoipa::path(
    put,
    path = "/v2/apps",
    tag = "marathon",
    description = "Creates or changes every app in a list, each by its own id, in order.",
    params(
        (
            "force" = Option<bool>,
            Query,
            description = "Change even while a deployment is changing the app (otherwise 409)"
        ),
        (
            "partialUpdate" = Option<bool>,
            Query,
            description = "false: the body replaces the definition (by default its fields are merged)"
        ),
    ),
    request_body(
        content = Value,
        content_type = "application/json",
        description = "A list of app definitions, each with its id"
    ),
    responses(
        (status = 200, description = "`{\"version\", \"deploymentId\"}` of the changes", body = Value),
        (
            status = 400,
            description = "The body is not valid JSON, or a query parameter is not true or false",
            body = ErrorBody
        ),
        (status = 404, description = "A version to roll back to does not exist", body = ErrorBody),
        (status = 409, description = "A deployment is changing the app (use force=true)", body = ErrorBody),
        (status = 422, description = "The definition is not valid (details name the fields)", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn replace_many(State(api): State<Api>, RawQuery(q): RawQuery, body: Bytes) -> Result<Json<Value>, ApiError> {
    let qp = pairs(q.as_deref());
    let partial = param(&qp, "partialUpdate").is_none() || flag(&qp, "partialUpdate")?;
    change_many(api, q, body, partial).await
}

#[utoipa::path(
    patch,
    path = "/v2/apps",
    tag = "marathon",
    description = "Changes the fields given of every app in a list, each by its own id, in order.",
    params(
        (
            "force" = Option<bool>,
            Query,
            description = "Change even while a deployment is changing the app (otherwise 409)"
        ),
    ),
    request_body(
        content = Value,
        content_type = "application/json",
        description = "A list of partial app definitions, each with its id"
    ),
    responses(
        (status = 200, description = "`{\"version\", \"deploymentId\"}` of the changes", body = Value),
        (
            status = 400,
            description = "The body is not valid JSON, or a query parameter is not true or false",
            body = ErrorBody
        ),
        (status = 404, description = "A version to roll back to does not exist", body = ErrorBody),
        (status = 409, description = "A deployment is changing the app (use force=true)", body = ErrorBody),
        (status = 422, description = "The definition is not valid (details name the fields)", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn patch_many(State(api): State<Api>, RawQuery(q): RawQuery, body: Bytes) -> Result<Json<Value>, ApiError> {
    change_many(api, q, body, true).await
}

/// A group as Marathon shows it: its apps, and its subgroups, built from the apps' path ids. Only apps
/// whose ids parse are placed, so the recursion is at most [`crate::app::MAX_DEPTH`] deep, whatever is
/// stored.
fn group_tree(id: &str, apps: &[AppDefinition], snapshot: &Snapshot) -> Value {
    let valid: Vec<&AppDefinition> = apps.iter().filter(|a| AppId::parse(&a.id).is_ok()).collect();
    group_level(id, &valid, snapshot)
}

fn group_level(id: &str, apps: &[&AppDefinition], snapshot: &Snapshot) -> Value {
    let prefix = if id == "/" { "/".to_owned() } else { format!("{id}/") };
    let mut direct = Vec::new();
    let mut children: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for app in apps.iter().filter(|a| a.id.starts_with(&prefix)) {
        match app.id[prefix.len()..].split_once('/') {
            None => direct.push(enrich(app, snapshot, Embeds::default())),
            Some((child, _)) => {
                children.insert(format!("{prefix}{child}"));
            }
        }
    }
    let groups: Vec<Value> = children.iter().map(|c| group_level(c, apps, snapshot)).collect();
    json!({ "id": id, "apps": direct, "groups": groups, "dependencies": [], "version": now() })
}

#[utoipa::path(
    get,
    path = "/v2/groups",
    tag = "marathon",
    description = "The root group: top-level apps and the groups formed by app ids.",
    responses(
        (status = 200, description = "The root group", body = Value),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn groups(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let apps = api.apps.list().await?;
    Ok(Json(group_tree("/", &apps, &api.marathon.snapshot().await?)))
}

#[utoipa::path(
    get,
    path = "/v2/groups/{group_id}",
    tag = "marathon",
    description = "One group: its apps and subgroups.",
    params(
        (
            "group_id" = String,
            Path,
            description = "The group id without its leading slash, e.g. prod/db (it may hold slashes)"
        ),
    ),
    responses(
        (status = 200, description = "The group", body = Value),
        (status = 404, description = "No app is in the group", body = ErrorBody),
        (status = 422, description = "The group id is not valid", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn groups_at(State(api): State<Api>, Path(rest): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&rest)?;
    let apps = api.apps.list().await?;
    if !apps.iter().any(|a| AppId::parse(&a.id).is_ok_and(|a| a.is_in(id.as_str()))) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("Group '{id}' does not exist")));
    }
    Ok(Json(group_tree(id.as_str(), &apps, &api.marathon.snapshot().await?)))
}

#[derive(Deserialize)]
struct GroupBody {
    id: String,
    #[serde(default)]
    apps: Vec<Value>,
}

/// `POST /v2/groups`: creates the group's apps (ids relative to the group are made absolute).
#[utoipa::path(
    post,
    path = "/v2/groups",
    tag = "marathon",
    description = "Creates a group's apps (ids relative to the group are made absolute).",
    request_body(
        content = Value,
        content_type = "application/json",
        description = "`{\"id\": group, \"apps\": [...]}`"
    ),
    responses(
        (status = 201, description = "`{\"version\", \"deploymentId\"}`", body = Value),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 409, description = "An app of the group exists", body = ErrorBody),
        (status = 422, description = "The definition is not valid (details name the fields)", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn create_group(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let group: GroupBody = parse_body(&body)?;
    let gid = parse_id(&group.id)?;
    let mut created = Vec::new();
    for raw in group.apps {
        let rel = raw.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let id = if rel.starts_with('/') { parse_id(&rel)? } else { parse_id(&format!("{gid}/{rel}"))? };
        if api.apps.get(&id).await?.is_some() {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("An app with id [{id}] already exists.")));
        }
        created.push((id, raw));
    }
    let mut deployment = None;
    let mut version = None;
    for (id, raw) in created {
        let outcome = api.marathon.change(id, AppChange::Create(raw), false).await?;
        deployment.get_or_insert(outcome.deployment);
        version = outcome.app.and_then(|a| a.version);
    }
    Ok((StatusCode::CREATED, Json(json!({ "version": version, "deploymentId": deployment }))).into_response())
}

#[derive(Deserialize)]
struct GroupUpdate {
    #[serde(default)]
    apps: Option<Vec<Value>>,
    #[serde(default, rename = "scaleBy")]
    scale_by: Option<f64>,
    #[serde(default)]
    version: Option<String>,
}

/// `PUT /v2/groups/{id}?force=`: creates or updates the group's `apps` (ids relative to the group are made
/// absolute; fields given are merged into existing apps), or with `scaleBy` multiplies the instances of
/// every app in the group and its subgroups.
#[utoipa::path(
    put,
    path = "/v2/groups/{group_id}",
    tag = "marathon",
    description = "Creates or updates a group's apps, or scales them all with scaleBy.",
    params(
        (
            "group_id" = String,
            Path,
            description = "The group id without its leading slash, e.g. prod/db (it may hold slashes)"
        ),
        (
            "force" = Option<bool>,
            Query,
            description = "Change even while a deployment is changing the app (otherwise 409)"
        ),
    ),
    request_body(
        content = Value,
        content_type = "application/json",
        description = "`{\"apps\": [...]}` and/or `{\"scaleBy\": factor}`"
    ),
    responses(
        (status = 200, description = "`{\"version\", \"deploymentId\"}`", body = Value),
        (
            status = 400,
            description = "The body is not valid JSON, or a query parameter is not true or false",
            body = ErrorBody
        ),
        (status = 404, description = "A version to roll back to does not exist", body = ErrorBody),
        (status = 409, description = "A deployment is changing the app (use force=true)", body = ErrorBody),
        (status = 422, description = "The body, an app or scaleBy is not valid", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn update_group(
    State(api): State<Api>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let gid = parse_id(&rest)?;
    let force = flag(&pairs(q.as_deref()), "force")?;
    let update: GroupUpdate = parse_body(&body)?;
    if update.version.is_some() {
        return Err(ApiError::invalid(vec![Violation {
            path: "/version".into(),
            errors: vec!["Keel rolls back apps one at a time: PUT /v2/apps/{id} with {\"version\": V}".into()],
        }]));
    }
    let mut changes: Vec<(AppId, Value)> = Vec::new();
    if let Some(factor) = update.scale_by {
        if !(factor.is_finite() && (0.0..=1000.0).contains(&factor)) {
            return Err(ApiError::invalid(vec![Violation {
                path: "/scaleBy".into(),
                errors: vec![format!("got {factor}, expected a number from 0 to 1000")],
            }]));
        }
        for app in api.apps.list().await? {
            let Ok(id) = AppId::parse(&app.id) else { continue };
            if id.is_in(gid.as_str()) {
                let n = (f64::from(app.instances) * factor).round().min(f64::from(crate::app::MAX_INSTANCES));
                changes.push((id, json!({ "instances": n as u32 })));
            }
        }
    }
    for raw in update.apps.unwrap_or_default() {
        let rel = raw.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let id = if rel.starts_with('/') { parse_id(&rel)? } else { parse_id(&format!("{gid}/{rel}"))? };
        changes.push((id, raw));
    }
    for (id, _) in &changes {
        check_locked(&api, id, force).await?;
    }
    let mut deployment = None;
    let mut version = None;
    for (id, raw) in changes {
        let outcome = api.marathon.change(id, AppChange::Put { raw, partial: true }, force).await?;
        deployment.get_or_insert(outcome.deployment);
        version = outcome.app.and_then(|a| a.version);
    }
    Ok(Json(json!({ "version": version.unwrap_or_else(now), "deploymentId": deployment })))
}

/// `DELETE /v2/groups/{id}`: deletes every app in the group.
#[utoipa::path(
    delete,
    path = "/v2/groups/{group_id}",
    tag = "marathon",
    description = "Deletes every app in a group and its subgroups.",
    params(
        (
            "group_id" = String,
            Path,
            description = "The group id without its leading slash, e.g. prod/db (it may hold slashes)"
        ),
        (
            "force" = Option<bool>,
            Query,
            description = "Change even while a deployment is changing the app (otherwise 409)"
        ),
    ),
    responses(
        (status = 200, description = "`{\"version\", \"deploymentId\"}`", body = Value),
        (status = 400, description = "A query parameter is not true or false", body = ErrorBody),
        (status = 404, description = "No app is in the group", body = ErrorBody),
        (status = 409, description = "A deployment is changing the app (use force=true)", body = ErrorBody),
        (status = 422, description = "The group id is not valid", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn delete_group(
    State(api): State<Api>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let gid = parse_id(&rest)?;
    let force = flag(&pairs(q.as_deref()), "force")?;
    let ids: Vec<AppId> = api
        .apps
        .list()
        .await?
        .iter()
        .filter_map(|a| AppId::parse(&a.id).ok())
        .filter(|a| a.is_in(gid.as_str()))
        .collect();
    if ids.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("Group '{gid}' does not exist")));
    }
    for id in &ids {
        check_locked(&api, id, force).await?;
    }
    let mut deployment = None;
    for id in ids {
        let outcome = api.marathon.change(id, AppChange::Delete, force).await?;
        deployment.get_or_insert(outcome.deployment);
    }
    Ok(Json(json!({ "version": now(), "deploymentId": deployment })))
}

#[utoipa::path(
    delete,
    path = "/v2/apps/{app_id}",
    tag = "marathon",
    description = "Deletes an app and kills its tasks.",
    params(
        (
            "app_id" = String,
            Path,
            description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
        ),
        (
            "force" = Option<bool>,
            Query,
            description = "Change even while a deployment is changing the app (otherwise 409)"
        ),
    ),
    responses(
        (status = 200, description = "`{\"version\", \"deploymentId\"}`", body = Value),
        (status = 400, description = "A query parameter is not true or false", body = ErrorBody),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 405, description = "The path names versions, which cannot be deleted", body = ErrorBody),
        (status = 409, description = "A deployment is changing the app (use force=true)", body = ErrorBody),
        (status = 422, description = "The app id is not valid", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn remove(
    State(api): State<Api>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = pairs(q.as_deref());
    match target(&rest)? {
        Target::App(id) => {
            let outcome = api.marathon.change(id, AppChange::Delete, flag(&q, "force")?).await?;
            Ok(Json(changed(&outcome)))
        }
        Target::Task(id, task) => {
            let (scale, wipe) = (flag(&q, "scale")?, flag(&q, "wipe")?);
            let snapshot = api.marathon.snapshot().await?;
            if !snapshot.instances.iter().any(|i| i.id == task && i.app_id == id.as_str()) {
                return Err(ApiError::new(StatusCode::NOT_FOUND, format!("Task '{task}' does not exist")));
            }
            let (killed, scaled) = api.marathon.kill(vec![task], scale, wipe).await?;
            // As Marathon: a kill that scales answers with the deployment that scales.
            Ok(Json(match scaled {
                Some(outcome) => changed(&outcome),
                None => json!({ "task": killed.first() }),
            }))
        }
        Target::Tasks(id) => {
            api.apps.get(&id).await?.ok_or_else(|| ApiError::no_app(&id))?;
            let (scale, wipe) = (flag(&q, "scale")?, flag(&q, "wipe")?);
            let host = param(&q, "host");
            let snapshot = api.marathon.snapshot().await?;
            let ids: Vec<String> = snapshot
                .instances
                .iter()
                .filter(|i| i.app_id == id.as_str() && host.is_none_or(|h| i.host == h))
                .map(|i| i.id.clone())
                .collect();
            let (killed, scaled) = api.marathon.kill(ids, scale, wipe).await?;
            Ok(Json(match scaled {
                Some(outcome) => changed(&outcome),
                None => json!({ "tasks": killed }),
            }))
        }
        _ => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "versions cannot be deleted")),
    }
}

#[utoipa::path(
    get,
    path = "/v2/tasks",
    tag = "marathon",
    description = "Every task of every app.",
    responses(
        (status = 200, description = "`{\"tasks\": [...]}`", body = Value),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn all_tasks(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let snapshot = api.marathon.snapshot().await?;
    Ok(Json(json!({ "tasks": snapshot.instances })))
}

#[derive(Deserialize)]
struct TaskIds {
    ids: Vec<String>,
}

/// `POST /v2/tasks/delete?scale=&wipe=`: kills the listed tasks of any apps.
#[utoipa::path(
    post,
    path = "/v2/tasks/delete",
    tag = "marathon",
    description = "Kills the listed tasks, of any apps.",
    params(
        (
            "scale" = Option<bool>,
            Query,
            description = "Also lower the app's instance count by as many tasks as are killed"
        ),
        (
            "wipe" = Option<bool>,
            Query,
            description = "Also forget the instances at once, without waiting for their end"
        ),
    ),
    request_body(content = Value, content_type = "application/json", description = "`{\"ids\": [task ids]}`"),
    responses(
        (status = 200, description = "`{\"tasks\": [killed]}`, or with scale the deployment that scales", body = Value),
        (
            status = 400,
            description = "The body is not valid JSON, or a query parameter is not true or false",
            body = ErrorBody
        ),
        (status = 422, description = "The body is not `{\"ids\": [...]}`", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn delete_tasks(State(api): State<Api>, RawQuery(q): RawQuery, body: Bytes) -> Result<Json<Value>, ApiError> {
    let q = pairs(q.as_deref());
    let (scale, wipe) = (flag(&q, "scale")?, flag(&q, "wipe")?);
    let TaskIds { ids } = parse_body(&body)?;
    let (killed, scaled) = api.marathon.kill(ids, scale, wipe).await?;
    Ok(Json(match scaled {
        Some(outcome) => changed(&outcome),
        None => json!({ "tasks": killed }),
    }))
}

/// An offer as Marathon's `lastUnusedOffers` shows it, with Mesos's resource list.
fn unused_offer_json(u: &UnusedOffer) -> Value {
    let o = &u.offer;
    let scalar =
        |name: &str, v: keel_core::resources::Scalar| json!({ "name": name, "role": "*", "scalar": v.as_f64() });
    let mut resources =
        vec![scalar("cpus", o.resources.cpus), scalar("mem", o.resources.mem), scalar("disk", o.resources.disk)];
    if !o.resources.ports.is_empty() {
        let ranges: Vec<Value> =
            o.resources.ports.ranges().iter().map(|(b, e)| json!({ "begin": b, "end": e })).collect();
        resources.push(json!({ "name": "ports", "role": "*", "ranges": ranges }));
    }
    let attributes: Vec<Value> = o.attributes.iter().map(|(k, v)| json!({ "name": k, "text": v })).collect();
    json!({
        "offer": {
            "id": o.id.to_string(),
            "agentId": o.agent_id.to_string(),
            "hostname": o.hostname,
            "resources": resources,
            "attributes": attributes,
        },
        "timestamp": u.timestamp,
        "reason": [u.reason],
    })
}

/// `GET /v2/queue?embed=lastUnusedOffers`: apps with instances still to launch, their backoff, and why
/// offers were turned down ("why is my app waiting"); with the embed, the last offers turned down.
#[utoipa::path(
    get,
    path = "/v2/queue",
    tag = "marathon",
    description = "Apps with instances still to launch, their backoff, and why offers were declined.",
    params(
        ("embed" = Option<String>, Query, description = "lastUnusedOffers adds the last offers declined"),
    ),
    responses(
        (status = 200, description = "`{\"queue\": [...]}`", body = Value),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn queue(State(api): State<Api>, RawQuery(q): RawQuery) -> Result<Json<Value>, ApiError> {
    let with_offers = pairs(q.as_deref()).iter().any(|(k, v)| k == "embed" && v == "lastUnusedOffers");
    let snapshot = api.marathon.snapshot().await?;
    let mut items = Vec::new();
    let apps: std::collections::HashMap<String, AppDefinition> = if snapshot.queue.is_empty() {
        Default::default()
    } else {
        api.apps.list().await?.into_iter().map(|a| (a.id.clone(), a)).collect()
    };
    for (id, entry) in &snapshot.queue {
        let Some(app) = apps.get(id) else { continue };
        let reasons: Vec<Value> = entry
            .waiting
            .declined
            .iter()
            .map(|(reason, n)| json!({ "reason": reason, "declined": n, "processed": entry.waiting.processed }))
            .collect();
        let mut item = json!({
            "app": app,
            "count": entry.count,
            // When the app last changed, which is when its instances started waiting.
            "since": app.version,
            "delay": { "timeLeftSeconds": entry.delay_left.ceil() as u64, "overdue": entry.delay_left <= 0.0 },
            "processedOffersSummary": {
                "processedOffersCount": entry.waiting.processed,
                "unusedOffersCount": entry.waiting.declined.values().sum::<u64>(),
                "rejectSummaryLastOffers": reasons,
            },
        });
        if with_offers {
            item["lastUnusedOffers"] = entry.waiting.last_unused.iter().map(unused_offer_json).collect();
        }
        items.push(item);
    }
    Ok(Json(json!({ "queue": items })))
}

/// `DELETE /v2/queue/{appId}/delay`: launch again without waiting out the backoff.
#[utoipa::path(
    delete,
    path = "/v2/queue/{app_id}/delay",
    tag = "marathon",
    description = "Launches an app's instances again without waiting out the backoff.",
    params(
        (
            "app_id" = String,
            Path,
            description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
        ),
    ),
    responses(
        (status = 204, description = "The delay is reset"),
        (status = 404, description = "No such app, or the path does not end in /delay", body = ErrorBody),
        (status = 422, description = "The app id is not valid", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn reset_delay(State(api): State<Api>, Path(rest): Path<String>) -> Result<StatusCode, ApiError> {
    let id = rest
        .trim_end_matches('/')
        .strip_suffix("/delay")
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "use /v2/queue/{appId}/delay"))?;
    let id = parse_id(id)?;
    api.apps.get(&id).await?.ok_or_else(|| ApiError::no_app(&id))?;
    api.marathon.reset_delay(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v2/deployments`: changes being rolled out, in Marathon's shape.
#[utoipa::path(
    get,
    path = "/v2/deployments",
    tag = "marathon",
    description = "The changes being rolled out.",
    responses(
        (status = 200, description = "A list of deployments", body = Value),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn deployments(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let snapshot = api.marathon.snapshot().await?;
    let list: Vec<Value> = snapshot
        .deployments
        .iter()
        .map(|d| {
            let action = json!({ "action": d.action, "app": d.app_id });
            json!({
                "id": d.id,
                "version": d.version,
                "affectedApps": [d.app_id],
                "affectedPods": [],
                "steps": [{ "actions": [action] }],
                "currentActions": [{ "action": d.action, "app": d.app_id, "readinessCheckResults": [] }],
                "currentStep": 1,
                "totalSteps": 1,
            })
        })
        .collect();
    Ok(Json(json!(list)))
}

/// `DELETE /v2/deployments/{id}`: without `force`, rolls the app back to its previous definition (a new
/// deployment); with `force=true`, only stops the deployment.
#[utoipa::path(
    delete,
    path = "/v2/deployments/{deployment_id}",
    tag = "marathon",
    description = "Rolls a deployment back or, with force=true, only stops it.",
    params(
        ("deployment_id" = String, Path, description = "The deployment's id"),
        ("force" = Option<bool>, Query, description = "Only stop the deployment, without rolling the app back"),
    ),
    responses(
        (status = 200, description = "Rolled back: `{\"version\", \"deploymentId\"}` of the rollback", body = Value),
        (status = 202, description = "Stopped (force=true): `{}`", body = Value),
        (status = 400, description = "A query parameter is not true or false", body = ErrorBody),
        (status = 404, description = "No such deployment", body = ErrorBody),
        (status = 422, description = "The previous definition cannot be restored", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn cancel_deployment(
    State(api): State<Api>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let force = flag(&pairs(q.as_deref()), "force")?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("DeploymentPlan {id} does not exist"));
    match api.marathon.cancel_deployment(id.clone(), force).await? {
        None => Err(not_found()),
        Some(None) => Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response()),
        Some(Some(outcome)) => Ok((StatusCode::OK, Json(changed(&outcome))).into_response()),
    }
}

/// `GET /v2/events`: Server-Sent Events in Marathon's format, optionally only the `event_type`s asked for.
///
/// Callers who may not read secrets (viewers) get environment values redacted, as in every other answer.
#[utoipa::path(
    get,
    path = "/v2/events",
    tag = "marathon",
    description = "Server-Sent Events in Marathon's format.",
    params(
        ("event_type" = Option<String>, Query, description = "Only events of this type (repeatable)"),
    ),
    responses(
        (status = 200, description = "An event stream", body = String, content_type = "text/event-stream"),
    )
)]
async fn events(
    State(api): State<Api>,
    RawQuery(q): RawQuery,
    principal: Option<axum::Extension<std::sync::Arc<keel_core::auth::Principal>>>,
) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let wanted: Vec<String> =
        pairs(q.as_deref()).into_iter().filter(|(k, _)| k == "event_type").map(|(_, v)| v).collect();
    let redact = principal.is_some_and(|p| !p.may(&keel_core::auth::Action::ReadSecrets));
    let stream = tokio_stream::wrappers::BroadcastStream::new(api.marathon.subscribe()).filter_map(move |e| {
        let keep = e.ok().filter(|e| wanted.is_empty() || wanted.iter().any(|w| w == e.event_type));
        std::future::ready(keep.map(|e| {
            let data = if redact {
                let mut data = e.data.clone();
                keel_core::gate::redact_secrets(&mut data);
                data.to_string()
            } else {
                e.data.to_string()
            };
            Ok::<_, std::convert::Infallible>(Event::default().event(e.event_type).data(data))
        }))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /v2/info`, in Marathon's shape: marathon-python needs `marathon_config`, `zookeeper_config` and
/// `http_config` to be objects. Keel keeps its state in its database, so there is no ZooKeeper to name.
#[utoipa::path(
    get,
    path = "/v2/info",
    tag = "marathon",
    description = "The framework's configuration, in Marathon's shape.",
    responses(
        (status = 200, description = "Marathon's info object", body = Value),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn info(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let framework_id = api.apps.framework_id().await?;
    let callbacks = api.callbacks.list().await?;
    let port = api.info.leader.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    let hostname = api.info.leader.rsplit_once(':').map(|(h, _)| h.to_owned());
    let mut body = json!({
        "name": "marathon",
        "version": env!("CARGO_PKG_VERSION"),
        "buildref": "keel",
        "elected": true,
        "leader": api.info.leader,
        "frameworkId": framework_id,
        "marathon_config": {
            "master": api.info.master,
            "framework_name": "marathon",
            "failover_timeout": 7 * 24 * 3600,
            "checkpoint": true,
            "ha": false,
            "hostname": hostname,
            "local_port_min": crate::edit::SERVICE_PORTS.start(),
            "local_port_max": crate::edit::SERVICE_PORTS.end(),
            "executor": "//cmd",
            "mesos_role": "*",
            "task_launch_timeout": 300000,
            "reconciliation_initial_delay": 15000,
            "reconciliation_interval": 600000,
            "features": [],
        },
        "zookeeper_config": {},
        "http_config": { "http_port": port },
    });
    if !callbacks.is_empty()
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert("event_subscriber".into(), json!({ "type": "http_callback", "http_endpoints": callbacks }));
    }
    Ok(Json(body))
}

/// `GET /v2/eventSubscriptions`: `{"callbackUrls": [...]}`.
#[utoipa::path(
    get,
    path = "/v2/eventSubscriptions",
    tag = "marathon",
    description = "The callback URLs events are POSTed to.",
    responses(
        (status = 200, description = "`{\"callbackUrls\": [...]}`", body = Value),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn list_subscriptions(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "callbackUrls": api.callbacks.list().await? })))
}

fn callback_url(q: Option<&str>) -> Result<String, ApiError> {
    param(&pairs(q), "callbackUrl")
        .map(str::to_owned)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "query parameter callbackUrl is required"))
}

impl From<CallbackError> for ApiError {
    fn from(e: CallbackError) -> ApiError {
        match e {
            CallbackError::BadUrl(_) | CallbackError::TooMany => {
                ApiError::invalid(vec![Violation { path: "/callbackUrl".into(), errors: vec![e.to_string()] }])
            }
            CallbackError::Store(e) => e.into(),
        }
    }
}

/// The answer to a subscription change, which is also the event Marathon publishes for it.
fn subscription_event(api: &Api, event_type: &'static str, url: &str) -> Value {
    let event = json!({
        "callbackUrl": url,
        "clientIp": null,
        "eventType": event_type,
        "timestamp": crate::store::new_version(),
    });
    api.marathon.publish(event_type, event.clone());
    event
}

/// `POST /v2/eventSubscriptions?callbackUrl=`: every event from now on is POSTed to the URL.
#[utoipa::path(
    post,
    path = "/v2/eventSubscriptions",
    tag = "marathon",
    description = "POSTs every event from now on to a callback URL.",
    params(
        ("callbackUrl" = Option<String>, Query, description = "The callback URL (required)"),
    ),
    responses(
        (status = 200, description = "The subscribe_event", body = Value),
        (status = 400, description = "callbackUrl is missing", body = ErrorBody),
        (
            status = 422,
            description = "The URL is not an absolute http(s) URL, or there are too many callbacks",
            body = ErrorBody
        ),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn subscribe(State(api): State<Api>, RawQuery(q): RawQuery) -> Result<Json<Value>, ApiError> {
    let url = callback_url(q.as_deref())?;
    api.callbacks.subscribe(&url).await?;
    Ok(Json(subscription_event(&api, "subscribe_event", &url)))
}

/// `DELETE /v2/eventSubscriptions?callbackUrl=`.
#[utoipa::path(
    delete,
    path = "/v2/eventSubscriptions",
    tag = "marathon",
    description = "Stops POSTing events to a callback URL.",
    params(
        ("callbackUrl" = Option<String>, Query, description = "The callback URL (required)"),
    ),
    responses(
        (status = 200, description = "The unsubscribe_event", body = Value),
        (status = 400, description = "callbackUrl is missing", body = ErrorBody),
        (status = 404, description = "No subscription for that URL", body = ErrorBody),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn unsubscribe(State(api): State<Api>, RawQuery(q): RawQuery) -> Result<Json<Value>, ApiError> {
    let url = callback_url(q.as_deref())?;
    if !api.callbacks.unsubscribe(&url).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no subscription for callbackUrl {url}")));
    }
    Ok(Json(subscription_event(&api, "unsubscribe_event", &url)))
}

/// When this process started serving, for `marathon.uptime.gauge.seconds`.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Marathon's `/metrics` (Dropwizard's JSON) and `/metrics/prometheus`, for `keel marathon` on its own
/// port. In `keel dev` the shared port's `/metrics` is the master's, so these are not mounted there.
pub fn metrics_router(api: Api) -> Router {
    STARTED.get_or_init(std::time::Instant::now);
    Router::new().route("/metrics", get(metrics)).route("/metrics/prometheus", get(metrics_prometheus)).with_state(api)
}

/// The gauges Keel can fill truthfully, under Marathon's names.
async fn gauges(api: &Api) -> Result<Vec<(&'static str, f64)>, ApiError> {
    let snapshot = api.marathon.snapshot().await?;
    let apps = api.apps.list().await?;
    let mut groups = std::collections::BTreeSet::new();
    for app in &apps {
        let mut path = app.id.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            groups.insert(parent.to_owned());
            path = parent;
        }
    }
    let count = |f: &dyn Fn(&Instance) -> bool| snapshot.instances.iter().filter(|i| f(i)).count() as f64;
    Ok(vec![
        ("marathon.apps.active.gauge", apps.len() as f64),
        ("marathon.groups.active.gauge", groups.len() as f64),
        ("marathon.deployments.active.gauge", snapshot.deployments.len() as f64),
        ("marathon.instances.running.gauge", count(&|i| i.state == TaskState::Running)),
        ("marathon.instances.staged.gauge", count(&|i| matches!(i.state, TaskState::Staging | TaskState::Starting))),
        ("marathon.uptime.gauge.seconds", STARTED.get().map_or(0.0, |t| t.elapsed().as_secs_f64())),
    ])
}

/// Marathon's JSON metrics, for a binary that serves them on a shared `/metrics` by content negotiation.
pub async fn json_metrics(api: Api) -> Response {
    STARTED.get_or_init(std::time::Instant::now);
    metrics(State(api)).await.into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "marathon",
    description = "Marathon's gauges as Dropwizard JSON.",
    responses(
        (status = 200, description = "Dropwizard metrics", body = Value),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn metrics(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let gauges: serde_json::Map<String, Value> =
        gauges(&api).await?.into_iter().map(|(name, v)| (name.to_owned(), json!({ "value": v }))).collect();
    Ok(Json(json!({
        "version": "4.0.0",
        "gauges": gauges,
        "counters": {},
        "histograms": {},
        "meters": {},
        "timers": {},
    })))
}

#[utoipa::path(
    get,
    path = "/metrics/prometheus",
    tag = "marathon",
    description = "Marathon's gauges in Prometheus's text format.",
    responses(
        (status = 200, description = "Prometheus text (version 0.0.4)", body = String, content_type = "text/plain"),
        (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
    )
)]
async fn metrics_prometheus(State(api): State<Api>) -> Result<Response, ApiError> {
    let mut out = String::new();
    for (name, v) in gauges(&api).await? {
        let name = name.replace(['.', '-'], "_");
        out.push_str(&format!("# TYPE {name} gauge\n{name} {v}\n"));
    }
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], out).into_response())
}

#[utoipa::path(
    get,
    path = "/ping",
    tag = "marathon",
    description = "Answers pong: the framework serves.",
    responses(
        (status = 200, description = "pong", body = String, content_type = "text/plain"),
    )
)]
async fn ping() -> &'static str {
    "pong"
}

#[utoipa::path(
    get,
    path = "/v2/leader",
    tag = "marathon",
    description = "The host:port of the leading (this) framework.",
    responses(
        (status = 200, description = "`{\"leader\": \"host:port\"}`", body = Value),
    )
)]
async fn leader(State(api): State<Api>) -> Json<Value> {
    Json(json!({ "leader": api.info.leader }))
}

/// Marathon's REST API as served by [`router`] and [`metrics_router`], generated from the handlers'
/// `#[utoipa::path]` attributes. The wildcard routes are described per concrete operation (see
/// `openapi_paths`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list,
        create,
        replace_many,
        patch_many,
        groups,
        create_group,
        groups_at,
        update_group,
        delete_group,
        show,
        replace,
        patch,
        remove,
        restart,
        openapi_paths::app_tasks,
        openapi_paths::kill_app_tasks,
        openapi_paths::kill_app_task,
        openapi_paths::app_versions,
        openapi_paths::app_version,
        all_tasks,
        delete_tasks,
        queue,
        reset_delay,
        events,
        deployments,
        cancel_deployment,
        info,
        list_subscriptions,
        subscribe,
        unsubscribe,
        leader,
        ping,
        metrics,
        metrics_prometheus,
    ),
    components(schemas(keel_core::gate::ErrorBody)),
    tags((name = "marathon", description = "Marathon's /v2 REST API"))
)]
pub struct MarathonApiDoc;

/// The OpenAPI 3 description of the services framework's REST API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    keel_core::openapi::with_refusals(<MarathonApiDoc as utoipa::OpenApi>::openapi())
}

/// The operations the wildcard routes (`/v2/apps/{*rest}`) serve besides the one their handler is annotated
/// with: an app id may contain slashes, so one handler dispatches on the end of the path, which OpenAPI path
/// templates cannot say. These functions only carry the descriptions.
mod openapi_paths {
    use keel_core::gate::ErrorBody;

    #[utoipa::path(
        get,
        path = "/v2/apps/{app_id}/tasks",
        tag = "marathon",
        description = "An app's tasks.",
        params(
            (
                "app_id" = String,
                Path,
                description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
            ),
        ),
        responses(
            (status = 200, description = "`{\"tasks\": [...]}`", body = Value),
            (status = 404, description = "No such app", body = ErrorBody),
            (status = 422, description = "The app id is not valid", body = ErrorBody),
            (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
        )
    )]
    #[allow(dead_code)]
    fn app_tasks() {}

    #[utoipa::path(
        delete,
        path = "/v2/apps/{app_id}/tasks",
        tag = "marathon",
        description = "Kills an app's tasks, optionally only those on one host.",
        params(
            (
                "app_id" = String,
                Path,
                description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
            ),
            ("host" = Option<String>, Query, description = "Only the tasks on this host"),
            (
                "scale" = Option<bool>,
                Query,
                description = "Also lower the app's instance count by as many tasks as are killed"
            ),
            (
                "wipe" = Option<bool>,
                Query,
                description = "Also forget the instances at once, without waiting for their end"
            ),
        ),
        responses(
            (
                status = 200,
                description = "`{\"tasks\": [killed]}`, or with scale the deployment that scales",
                body = Value
            ),
            (status = 400, description = "A query parameter is not true or false", body = ErrorBody),
            (status = 404, description = "No such app", body = ErrorBody),
            (status = 422, description = "The app id is not valid", body = ErrorBody),
            (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
        )
    )]
    #[allow(dead_code)]
    fn kill_app_tasks() {}

    #[utoipa::path(
        delete,
        path = "/v2/apps/{app_id}/tasks/{task_id}",
        tag = "marathon",
        description = "Kills one task of an app.",
        params(
            (
                "app_id" = String,
                Path,
                description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
            ),
            ("task_id" = String, Path, description = "The task's id"),
            (
                "scale" = Option<bool>,
                Query,
                description = "Also lower the app's instance count by as many tasks as are killed"
            ),
            (
                "wipe" = Option<bool>,
                Query,
                description = "Also forget the instances at once, without waiting for their end"
            ),
        ),
        responses(
            (
                status = 200,
                description = "`{\"task\": killed}`, or with scale the deployment that scales",
                body = Value
            ),
            (status = 400, description = "A query parameter is not true or false", body = ErrorBody),
            (status = 404, description = "The app has no such task", body = ErrorBody),
            (status = 422, description = "The app id is not valid", body = ErrorBody),
            (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
        )
    )]
    #[allow(dead_code)]
    fn kill_app_task() {}

    #[utoipa::path(
        get,
        path = "/v2/apps/{app_id}/versions",
        tag = "marathon",
        description = "The versions of an app's definition, newest first.",
        params(
            (
                "app_id" = String,
                Path,
                description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
            ),
        ),
        responses(
            (status = 200, description = "`{\"versions\": [...]}`", body = Value),
            (status = 404, description = "No such app", body = ErrorBody),
            (status = 422, description = "The app id is not valid", body = ErrorBody),
            (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
        )
    )]
    #[allow(dead_code)]
    fn app_versions() {}

    #[utoipa::path(
        get,
        path = "/v2/apps/{app_id}/versions/{version}",
        tag = "marathon",
        description = "One version of an app's definition.",
        params(
            (
                "app_id" = String,
                Path,
                description = "The app id without its leading slash, e.g. prod/web (it may hold slashes)"
            ),
            ("version" = String, Path, description = "The version, a timestamp as listed by /versions"),
        ),
        responses(
            (status = 200, description = "The app definition of that version", body = Value),
            (status = 404, description = "No such app or version", body = ErrorBody),
            (status = 422, description = "The app id is not valid", body = ErrorBody),
            (status = 503, description = "The framework is not running, or the store failed", body = ErrorBody),
        )
    )]
    #[allow(dead_code)]
    fn app_version() {}
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    /// The handlers' state on a fresh SQLite store. No master answers here: the scheduler runs but never
    /// gets offers.
    async fn test_api() -> (Api, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            keel_core::store::Store::connect(&format!("sqlite:{}", dir.path().join("k.db").display())).await.unwrap();
        let apps = AppStore::new(store);
        let token = tokio_util::sync::CancellationToken::new();
        let marathon = crate::scheduler::start("http://127.0.0.1:1", apps.clone(), token.clone()).await.unwrap();
        let callbacks = Callbacks::start(apps.clone(), &marathon, token).await.unwrap();
        let info = ServiceInfo { leader: "127.0.0.1:8080".into(), master: "http://127.0.0.1:1".into() };
        (Api { apps, marathon, callbacks, info }, dir)
    }

    async fn app_router() -> (Router, tempfile::TempDir) {
        let (api, dir) = test_api().await;
        (router(api), dir)
    }

    #[tokio::test]
    async fn metrics_count_apps_and_groups_in_both_formats() {
        let (api, _dir) = test_api().await;
        let r = router(api.clone()).merge(metrics_router(api));
        for id in ["/prod/web", "/prod/db", "/dev/web"] {
            let body = json!({"id": id, "cmd": "sleep 60", "instances": 0}).to_string();
            assert_eq!(call(&r, "POST", "/v2/apps", &body).await.0, StatusCode::CREATED);
        }
        let (status, _, m) = call(&r, "GET", "/metrics", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(m["gauges"]["marathon.apps.active.gauge"]["value"], 3.0);
        assert_eq!(m["gauges"]["marathon.groups.active.gauge"]["value"], 2.0);
        assert_eq!(m["gauges"]["marathon.instances.running.gauge"]["value"], 0.0);
        let req = Request::builder().uri("/metrics/prometheus").body(Body::empty()).unwrap();
        let resp = r.clone().oneshot(req).await.unwrap();
        let text = String::from_utf8(axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
        assert!(text.contains("# TYPE marathon_apps_active_gauge gauge\nmarathon_apps_active_gauge 3\n"), "{text}");
    }

    /// `{name}` → `{}`: axum's and OpenAPI's path parameters match by position, whatever their names.
    fn unnamed_params(path: &str) -> String {
        let mut out = String::new();
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

    /// Every route of [`router`] and [`metrics_router`] is in [`openapi`], and every described path outside
    /// the wildcard routes is routed. A wildcard route (`/v2/apps/{*rest}`) is described by the concrete paths
    /// under it (`/v2/apps/{app_id}/tasks`, ...).
    #[test]
    fn every_route_is_described() {
        let source = include_str!("api.rs");
        // Built so that this test's own text is not a match.
        let needle = concat!(".route", "(\"");
        let routes: Vec<&str> = source
            .match_indices(needle)
            .filter_map(|(at, _)| {
                let rest = &source[at + needle.len()..];
                rest.find('"').map(|end| &rest[..end])
            })
            .collect();
        for expected in ["/v2/apps", "/v2/apps/{*rest}", "/ping", "/metrics/prometheus"] {
            assert!(routes.contains(&expected), "the scan of api.rs missed {expected}: {routes:?}");
        }
        let doc = openapi();
        let described: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        // The part of a wildcard route before its `{*…}`, followed by `{`: `/v2/apps/{`.
        let wildcards: Vec<String> =
            routes.iter().filter_map(|r| r.find("{*").map(|at| format!("{}{{", &r[..at]))).collect();
        for route in &routes {
            let found = match route.find("{*") {
                Some(at) => described.iter().any(|d| d.starts_with(&format!("{}{{", &route[..at]))),
                None => described.iter().any(|d| unnamed_params(d) == unnamed_params(route)),
            };
            assert!(found, "route {route} is not described in openapi(): annotate its handler with #[utoipa::path]");
        }
        for path in &described {
            if wildcards.iter().any(|w| path.starts_with(w.as_str())) {
                continue;
            }
            assert!(
                routes.iter().any(|r| unnamed_params(r) == unnamed_params(path)),
                "openapi() describes {path}, which no route serves"
            );
        }
    }

    async fn call(r: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, HeaderMap, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = r.clone().oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn create_read_list_and_conflict() {
        let (r, _dir) = app_router().await;
        let (status, headers, body) =
            call(&r, "POST", "/v2/apps", r#"{"id": "prod/web", "cmd": "sleep 100", "labels": {"team": "a"}}"#).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers[header::LOCATION], "/v2/apps/prod/web");
        assert_eq!(body["id"], "/prod/web");
        assert_eq!(body["mem"], 128.0);
        assert!(body["version"].as_str().unwrap().ends_with('Z'));

        let (status, _, body) = call(&r, "POST", "/v2/apps", r#"{"id": "/prod/web", "cmd": "x"}"#).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["message"], "An app with id [/prod/web] already exists.");

        let (status, _, body) = call(&r, "GET", "/v2/apps//prod//web", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["app"]["cmd"], "sleep 100");

        call(&r, "POST", "/v2/apps", r#"{"id": "/dev/db", "cmd": "postgres"}"#).await;
        let (_, _, body) = call(&r, "GET", "/v2/apps?label=team==a", "").await;
        assert_eq!(body["apps"].as_array().unwrap().len(), 1);
        let (_, _, body) = call(&r, "GET", "/v2/apps?cmd=postgres", "").await;
        assert_eq!(body["apps"][0]["id"], "/dev/db");
        let (_, _, body) = call(&r, "GET", "/v2/apps?id=prod", "").await;
        assert_eq!(body["apps"][0]["id"], "/prod/web");
        let (_, _, body) = call(&r, "GET", "/v2/apps", "").await;
        assert_eq!(body["apps"].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn bad_input_answers_400_404_and_422_with_reasons() {
        let (r, _dir) = app_router().await;
        let (status, _, body) = call(&r, "POST", "/v2/apps", "{not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["message"].as_str().unwrap().starts_with("Invalid JSON"));

        let (status, _, body) = call(&r, "POST", "/v2/apps", r#"{"id": "/Web", "cmd": "x", "cpus": -2}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["message"], "Object is not valid");
        assert_eq!(body["details"][0]["path"], "/id");

        let (status, _, body) = call(&r, "POST", "/v2/apps", r#"{"id": "/web", "cmd": "x", "cpus": "lots"}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

        let two = r#"{"id": "/web", "cmd": "x", "healthChecks": [{"protocol": "TCP"}, {"protocol": "HTTP"}]}"#;
        let (status, _, body) = call(&r, "POST", "/v2/apps", two).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["details"][0]["path"], "/healthChecks");
        assert!(body["details"][0]["errors"][0].as_str().unwrap().contains("one health check per app"), "{body}");

        let (status, _, body) = call(&r, "GET", "/v2/apps/nope", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["message"], "App '/nope' does not exist");
        let (status, _, _) = call(&r, "DELETE", "/v2/apps/nope", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = call(&r, "PATCH", "/v2/apps/nope", r#"{"instances": 2}"#).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn put_patch_versions_and_delete() {
        let (r, _dir) = app_router().await;
        let (status, _, v1) = call(&r, "PUT", "/v2/apps/svc", r#"{"cmd": "sleep 1", "instances": 1}"#).await;
        assert_eq!(status, StatusCode::CREATED);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        // No master runs here, so the first deployment never ends: changes need force.
        let (status, _, locked) = call(&r, "PUT", "/v2/apps/svc", r#"{"cmd": "sleep 2", "instances": 1}"#).await;
        assert_eq!(status, StatusCode::CONFLICT, "{locked}");
        assert!(locked["deployments"][0]["id"].is_string());
        let (status, _, v2) = call(&r, "PUT", "/v2/apps/svc?force=true", r#"{"cmd": "sleep 2", "instances": 1}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(v1["version"], v2["version"]);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (status, _, _) = call(&r, "PATCH", "/v2/apps/svc?force=true", r#"{"instances": 3}"#).await;
        assert_eq!(status, StatusCode::OK);
        let (_, _, body) = call(&r, "GET", "/v2/apps/svc", "").await;
        assert_eq!((body["app"]["instances"].as_u64(), body["app"]["cmd"].as_str()), (Some(3), Some("sleep 2")));
        let info = &body["app"]["versionInfo"];
        assert_eq!(info["lastConfigChangeAt"], v2["version"], "scaling keeps the time of the last config change");
        assert_eq!(info["lastScalingAt"], body["app"]["version"]);
        let (status, _, restarted) = call(&r, "POST", "/v2/apps/svc/restart?force=true", "").await;
        assert_eq!(status, StatusCode::OK, "{restarted}");
        let (_, _, body) = call(&r, "GET", "/v2/apps/svc", "").await;
        assert_eq!(
            body["app"]["versionInfo"]["lastConfigChangeAt"], restarted["version"],
            "a restart is a config change"
        );
        let (status, _, _) = call(&r, "POST", "/v2/apps/nope/restart", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (_, _, versions) = call(&r, "GET", "/v2/apps/svc/versions", "").await;
        let versions = versions["versions"].as_array().unwrap().clone();
        assert_eq!(versions.len(), 4);
        let first = versions.last().unwrap().as_str().unwrap();
        let (status, _, old) = call(&r, "GET", &format!("/v2/apps/svc/versions/{first}"), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(old["cmd"], "sleep 1");

        let (status, _, _) = call(&r, "PATCH", "/v2/apps/svc?force=true", r#"{"backoffFactor": 0.1}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "an invalid patch is refused and stores nothing");
        let (status, _, _) = call(&r, "DELETE", "/v2/apps/svc?force=true", "").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = call(&r, "GET", "/v2/apps/svc/versions", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn lists_of_apps_and_groups() {
        let (r, _dir) = app_router().await;
        let (status, _, body) = call(
            &r,
            "PUT",
            "/v2/apps",
            r#"[{"id": "/prod/web", "cmd": "a"}, {"id": "/prod/db/main", "cmd": "b"}, {"id": "/dev", "cmd": "c"}]"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _, body) =
            call(&r, "PATCH", "/v2/apps?force=true", r#"[{"id": "/prod/web", "instances": 4}]"#).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, _, web) = call(&r, "GET", "/v2/apps/prod/web", "").await;
        assert_eq!((web["app"]["instances"].as_u64(), web["app"]["cmd"].as_str()), (Some(4), Some("a")));
        let (status, _, body) = call(&r, "PUT", "/v2/apps", r#"[{"cmd": "no id"}]"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

        let (_, _, root) = call(&r, "GET", "/v2/groups", "").await;
        assert_eq!(root["apps"][0]["id"], "/dev");
        assert_eq!(root["groups"][0]["id"], "/prod");
        assert_eq!(root["groups"][0]["apps"][0]["id"], "/prod/web");
        assert_eq!(root["groups"][0]["groups"][0]["id"], "/prod/db");
        let (status, _, _) = call(&r, "GET", "/v2/groups/nope", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, _, body) =
            call(&r, "POST", "/v2/groups", r#"{"id": "/team", "apps": [{"id": "api", "cmd": "x"}]}"#).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, _, _) = call(&r, "GET", "/v2/apps/team/api", "").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) = call(&r, "DELETE", "/v2/groups/prod?force=true", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, _, all) = call(&r, "GET", "/v2/apps", "").await;
        let ids: Vec<&str> = all["apps"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec!["/dev", "/team/api"]);
        let (status, _, _) = call(&r, "GET", "/v2/apps?embed=apps.tasks&embed=apps.counts", "").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) = call(&r, "DELETE", "/v2/apps/dev?force=maybe", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _, body) = call(&r, "DELETE", "/v2/apps/dev/tasks?wipe=maybe", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["message"], "query parameter wipe must be true or false, got 'maybe'");
        let (status, _, body) = call(&r, "DELETE", "/v2/apps/dev/tasks?wipe=True&scale=false", "").await;
        assert_eq!((status, &body["tasks"]), (StatusCode::OK, &json!([])));
    }

    #[tokio::test]
    async fn put_scales_partially_and_refuses_duplicate_keys_and_bad_ids() {
        let (r, _dir) = app_router().await;
        let (status, _, _) = call(&r, "POST", "/v2/apps", r#"{"id": "/web", "cmd": "sleep 100", "mem": 32}"#).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _, body) = call(&r, "PUT", "/v2/apps/web?force=true", r#"{"instances": 3}"#).await;
        assert_eq!(status, StatusCode::OK, "PUT is a partial update by default: {body}");
        let (_, _, app) = call(&r, "GET", "/v2/apps/web", "").await;
        assert_eq!((app["app"]["instances"].as_u64(), app["app"]["mem"].as_f64()), (Some(3), Some(32.0)));
        let (status, _, body) =
            call(&r, "PUT", "/v2/apps/web?force=true&partialUpdate=false", r#"{"instances": 3}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a full replacement needs a cmd: {body}");

        for (method, uri) in
            [("PUT", "/v2/apps/web?force=true"), ("PATCH", "/v2/apps/web?force=true"), ("POST", "/v2/apps")]
        {
            let (status, _, body) = call(&r, method, uri, r#"{"id": "/web", "cmd": "a", "cmd": "b"}"#).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{method} {uri}: {body}");
            assert!(body["details"][0]["errors"][0].as_str().unwrap().contains("duplicate key 'cmd'"), "{body}");
        }
        let deep = format!(r#"{{"id": "{}", "cmd": "x"}}"#, "/a".repeat(3000));
        let (status, _, body) = call(&r, "POST", "/v2/apps", &deep).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let long = format!(r#"{{"id": "/{}", "cmd": "x"}}"#, "a".repeat(100_000));
        let (status, _, _) = call(&r, "POST", "/v2/apps", &long).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, _, body) =
            call(&r, "POST", "/v2/apps", r#"{"id": "/huge", "cmd": "x", "backoffSeconds": 1e308}"#).await;
        assert_eq!(
            (status, body["details"][0]["path"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("/backoffSeconds"))
        );
        let (status, _, _) = call(&r, "GET", "/v2/groups", "").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn groups_scale_by_a_bounded_factor() {
        let (r, _dir) = app_router().await;
        for id in ["/g/a", "/g/sub/b", "/other"] {
            let body = json!({"id": id, "cmd": "x", "instances": 2}).to_string();
            assert_eq!(call(&r, "POST", "/v2/apps", &body).await.0, StatusCode::CREATED);
        }
        for bad in ["1e308", "-1", "1001"] {
            let (status, _, body) =
                call(&r, "PUT", "/v2/groups/g?force=true", &format!(r#"{{"scaleBy": {bad}}}"#)).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "scaleBy {bad}: {body}");
        }
        let (status, _, body) = call(&r, "PUT", "/v2/groups/g?force=true", r#"{"scaleBy": 1.5}"#).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let instances = |v: &Value| v["app"]["instances"].as_u64();
        assert_eq!(instances(&call(&r, "GET", "/v2/apps/g/a", "").await.2), Some(3));
        assert_eq!(instances(&call(&r, "GET", "/v2/apps/g/sub/b", "").await.2), Some(3), "subgroups scale too");
        assert_eq!(instances(&call(&r, "GET", "/v2/apps/other", "").await.2), Some(2), "other groups do not");
    }

    #[tokio::test]
    async fn ports_default_and_get_unique_service_ports() {
        let (r, _dir) = app_router().await;
        let (_, _, a) = call(&r, "POST", "/v2/apps", r#"{"id": "/a", "cmd": "x"}"#).await;
        assert_eq!(a["portDefinitions"], json!([{"port": 10000, "protocol": "tcp", "name": "default"}]));
        let (_, _, b) = call(
            &r,
            "POST",
            "/v2/apps",
            r#"{"id": "/b", "cmd": "x", "portDefinitions": [{"port": 0, "name": "http"}]}"#,
        )
        .await;
        assert_eq!(b["portDefinitions"][0]["port"], 10001);
        let (_, _, b) = call(&r, "GET", "/v2/apps/b", "").await;
        assert_eq!(b["app"]["portDefinitions"][0]["port"], 10001, "the port is stored, not recomputed");
    }

    /// Racing changes all pass through the actor: none is lost.
    #[tokio::test]
    async fn fifty_racing_patches_lose_no_update() {
        let (r, _dir) = app_router().await;
        let (status, _, _) = call(&r, "POST", "/v2/apps", r#"{"id": "/race", "cmd": "x", "instances": 0}"#).await;
        assert_eq!(status, StatusCode::CREATED);
        let patches = (0..50).map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let body = format!(r#"{{"labels": {{"k{i}": "v"}}, "env": {{}}}}"#);
                // Each patch adds one label to what is there: a lost update drops a label.
                let (_, _, cur) = call(&r, "GET", "/v2/apps/race", "").await;
                let mut labels = cur["app"]["labels"].as_object().cloned().unwrap_or_default();
                labels.insert(format!("k{i}"), json!("v"));
                let _ = body;
                let body = json!({ "labels": labels }).to_string();
                call(&r, "PATCH", "/v2/apps/race?force=true", &body).await.0
            })
        });
        for p in patches {
            assert_eq!(p.await.unwrap(), StatusCode::OK);
        }
        let (_, _, versions) = call(&r, "GET", "/v2/apps/race/versions", "").await;
        assert_eq!(versions["versions"].as_array().unwrap().len(), 51, "every patch is its own version");
        let (_, _, stored) = call(&r, "GET", "/v2/apps/race", "").await;
        let (_, _, latest) =
            call(&r, "GET", &format!("/v2/apps/race/versions/{}", stored["app"]["version"].as_str().unwrap()), "")
                .await;
        assert_eq!(stored["app"]["labels"], latest["labels"], "the store and the actor agree on the last write");
    }

    /// An app stored before ids were bounded (3,000 segments) neither crashes the start nor `/v2/groups`.
    #[tokio::test]
    async fn a_stored_app_with_an_unbounded_id_cannot_crash_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            keel_core::store::Store::connect(&format!("sqlite:{}", dir.path().join("k.db").display())).await.unwrap();
        let deep = "/a".repeat(3000);
        let definition = json!({"id": deep, "cmd": "x", "version": "2026-01-01T00:00:00.000Z"}).to_string();
        sqlx::query("INSERT INTO marathon_apps (id, version, definition) VALUES ($1, $2, $3)")
            .bind(&deep)
            .bind("2026-01-01T00:00:00.000Z")
            .bind(&definition)
            .execute(store.pool())
            .await
            .unwrap();
        let apps = AppStore::new(store);
        let token = tokio_util::sync::CancellationToken::new();
        let marathon = crate::scheduler::start("http://127.0.0.1:1", apps.clone(), token.clone()).await.unwrap();
        let callbacks = Callbacks::start(apps.clone(), &marathon, token).await.unwrap();
        let r = router(Api { apps, marathon, callbacks, info: ServiceInfo::default() });
        let (status, _, body) = call(&r, "GET", "/v2/groups", "").await;
        assert_eq!((status, &body["apps"]), (StatusCode::OK, &json!([])), "{body}");
    }

    #[tokio::test]
    async fn a_stopped_scheduler_answers_503_not_empty_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            keel_core::store::Store::connect(&format!("sqlite:{}", dir.path().join("k.db").display())).await.unwrap();
        let apps = AppStore::new(store);
        let token = tokio_util::sync::CancellationToken::new();
        let marathon = crate::scheduler::start("http://127.0.0.1:1", apps.clone(), token.clone()).await.unwrap();
        let callbacks = Callbacks::start(apps.clone(), &marathon, token.clone()).await.unwrap();
        let api = Api { apps, marathon: marathon.clone(), callbacks, info: ServiceInfo::default() };
        let r = router(api);
        token.cancel();
        for _ in 0..100 {
            if !marathon.is_running() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!marathon.is_running());
        for uri in ["/v2/apps", "/v2/tasks", "/v2/queue", "/v2/deployments", "/v2/groups"] {
            let (status, _, body) = call(&r, "GET", uri, "").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
            assert_eq!(body["message"], "the services framework is not running");
        }
        let (status, _, _) = call(&r, "POST", "/v2/apps", r#"{"id": "/x", "cmd": "x"}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn info_and_event_subscriptions_deliver_events_to_callbacks() {
        let (api, _dir) = test_api().await;
        let r = router(api);
        let (_, _, info) = call(&r, "GET", "/v2/info", "").await;
        for key in ["marathon_config", "zookeeper_config", "http_config"] {
            assert!(info[key].is_object(), "{key}: {info}");
        }
        assert_eq!(
            (info["leader"].as_str(), info["http_config"]["http_port"].as_u64()),
            (Some("127.0.0.1:8080"), Some(8080))
        );

        // A receiver on loopback that records what it is sent.
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let sink = got.clone();
        let receiver = Router::new().route(
            "/hook",
            axum::routing::post(move |Json(v): Json<Value>| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(v);
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, receiver).await });

        let (status, _, body) = call(&r, "POST", &format!("/v2/eventSubscriptions?callbackUrl={url}"), "").await;
        assert_eq!((status, body["eventType"].as_str()), (StatusCode::OK, Some("subscribe_event")), "{body}");
        let (_, _, list) = call(&r, "GET", "/v2/eventSubscriptions", "").await;
        assert_eq!(list["callbackUrls"], json!([url]));
        let (status, _, _) = call(&r, "POST", "/v2/eventSubscriptions?callbackUrl=file:///etc/passwd", "").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

        call(&r, "POST", "/v2/apps", r#"{"id": "/hooked", "cmd": "x", "instances": 0}"#).await;
        let mut seen = false;
        for _ in 0..200 {
            if got
                .lock()
                .unwrap()
                .iter()
                .any(|e| e["eventType"] == "api_post_event" && e["appDefinition"]["id"] == "/hooked")
            {
                seen = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(seen, "the callback got no api_post_event: {:?}", got.lock().unwrap());
        let (status, _, body) = call(&r, "DELETE", &format!("/v2/eventSubscriptions?callbackUrl={url}"), "").await;
        assert_eq!((status, body["eventType"].as_str()), (StatusCode::OK, Some("unsubscribe_event")));
        let (status, _, _) = call(&r, "DELETE", &format!("/v2/eventSubscriptions?callbackUrl={url}"), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        for i in 0..crate::callbacks::MAX_SUBSCRIPTIONS {
            let (status, _, _) =
                call(&r, "POST", &format!("/v2/eventSubscriptions?callbackUrl=http://127.0.0.1:9/{i}"), "").await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, _, body) =
            call(&r, "POST", "/v2/eventSubscriptions?callbackUrl=http://127.0.0.1:9/more", "").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "the number of callbacks is bounded: {body}");
    }
}
