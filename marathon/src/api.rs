//! Marathon's `/v2/apps` endpoints over the app store: create, read, replace, patch, delete, list with
//! filters, and version history. Errors are JSON with a `message` (and `details` for 422), as Marathon's.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use keel_core::query::{pairs, param};
use serde::Deserialize;
use serde_json::{Value, json};

use axum::extract::RawQuery;
use axum::routing::{delete, post};
use keel_core::task::TaskState;

use crate::app::{AppDefinition, AppId, VersionInfo, Violation};
use crate::scheduler::{Instance, MarathonHandle, Snapshot};
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
}

/// Marathon's `/v2` routes (apps, tasks, queue delay, info) and `/ping`.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v2/apps", get(list).post(create).put(replace_many).patch(patch_many))
        .route("/v2/groups", get(groups).post(create_group))
        .route("/v2/groups/{*rest}", get(groups_at).delete(delete_group))
        .route("/v2/apps/{*rest}", get(show).put(replace).patch(patch).delete(remove).post(restart))
        .route("/v2/tasks", get(all_tasks))
        .route("/v2/tasks/delete", post(delete_tasks))
        .route("/v2/queue", get(queue))
        .route("/v2/queue/{*rest}", delete(reset_delay))
        .route("/v2/events", get(events))
        .route("/v2/deployments", get(deployments))
        .route("/v2/deployments/{id}", delete(cancel_deployment))
        .route("/v2/info", get(info))
        .route("/v2/leader", get(leader))
        .route("/ping", get(|| async { "pong" }))
        .with_state(api)
}

/// A boolean query parameter; a bad value answers 400.
fn flag(pairs: &[(String, String)], key: &str) -> Result<bool, ApiError> {
    keel_core::query::flag(pairs, key).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
}

/// The app as Marathon shows it: its definition plus counts, deployments, the last failure and, when
/// asked for, its tasks.
fn enrich(app: &AppDefinition, snapshot: &Snapshot, with_tasks: bool) -> Value {
    let tasks: Vec<&Instance> = snapshot.instances.iter().filter(|i| i.app_id == app.id).collect();
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
        if with_tasks {
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
    if let Some(d) = api.marathon.deployment_of(id.clone()).await {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            body: json!({
                "message": format!("App is locked by one or more deployments. Override with the option '?force=true'. View details at '/v2/deployments/{d}'."),
                "deployments": [{ "id": d }],
            }),
        });
    }
    Ok(())
}

/// The time now, also used as a new version: unique within this process.
fn now() -> String {
    crate::store::new_version()
}

/// Parses a body, telling malformed JSON (400) from well-formed JSON of the wrong shape (422).
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::invalid(vec![Violation { path: "/".into(), errors: vec![e.to_string()] }])
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid JSON: {e}"))
        }
    })
}

fn parse_id(raw: &str) -> Result<AppId, ApiError> {
    AppId::parse(raw).map_err(|e| ApiError::invalid(vec![Violation { path: "/id".into(), errors: vec![e] }]))
}

/// Validates and stamps a definition with a new version, and with `versionInfo` carried over from
/// `previous`: a change of scale alone keeps `lastConfigChangeAt`.
fn prepare(mut app: AppDefinition, id: &AppId, previous: Option<&AppDefinition>) -> Result<AppDefinition, ApiError> {
    app.id = id.to_string();
    let problems = app.validate();
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let version = now();
    let config_changed_at = match previous {
        Some(p) if p.same_config(&app) => {
            p.version_info.as_ref().map_or_else(|| version.clone(), |i| i.last_config_change_at.clone())
        }
        _ => version.clone(),
    };
    app.version_info = Some(VersionInfo { last_scaling_at: version.clone(), last_config_change_at: config_changed_at });
    app.version = Some(version);
    Ok(app)
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

async fn list(State(api): State<Api>, RawQuery(q): RawQuery) -> Result<Json<Value>, ApiError> {
    let q = pairs(q.as_deref());
    let with_tasks = q.iter().any(|(k, v)| k == "embed" && (v == "apps.tasks" || v == "app.tasks"));
    let (id, cmd, label) = (param(&q, "id"), param(&q, "cmd"), param(&q, "label"));
    let all = api.apps.list().await?;
    let snapshot = api.marathon.snapshot().await;
    let chosen: Vec<Value> = all
        .iter()
        .filter(|a| id.is_none_or(|id| a.id.contains(id)))
        .filter(|a| cmd.is_none_or(|c| a.cmd.as_deref().is_some_and(|cmd| cmd.contains(c))))
        .filter(|a| label.is_none_or(|l| label_matches(a, l)))
        .map(|a| enrich(a, &snapshot, with_tasks))
        .collect();
    Ok(Json(json!({ "apps": chosen })))
}

async fn create(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let apps = &api.apps;
    let app: AppDefinition = parse_body(&body)?;
    let id = parse_id(&app.id)?;
    let app = prepare(app, &id, None)?;
    if apps.get(&id).await?.is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("An app with id [{id}] already exists.")));
    }
    apps.put(&id, &app).await?;
    let deployment = api.marathon.app_changed(id.clone(), Some(app.clone())).await;
    api.marathon.publish("api_post_event", json!({ "uri": "/v2/apps", "appDefinition": app }));
    tracing::info!(app_id = %id, version = ?app.version, "app created");
    let mut app = serde_json::to_value(&app).unwrap_or_default();
    if let Some(obj) = app.as_object_mut() {
        obj.insert("deployments".into(), json!([{ "id": deployment }]));
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

async fn show(State(api): State<Api>, Path(rest): Path<String>) -> Result<Json<Value>, ApiError> {
    let apps = &api.apps;
    match target(&rest)? {
        Target::App(id) => {
            let app = apps.get(&id).await?.ok_or_else(|| ApiError::no_app(&id))?;
            Ok(Json(json!({ "app": enrich(&app, &api.marathon.snapshot().await, true) })))
        }
        Target::Tasks(id) => {
            apps.get(&id).await?.ok_or_else(|| ApiError::no_app(&id))?;
            let snapshot = api.marathon.snapshot().await;
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

/// Stores a new definition of `id` (replacing it, or with `partial` merging the fields given into the
/// current one) and starts its deployment. Returns whether the app existed, its new version and the
/// deployment id.
async fn apply(
    api: &Api,
    id: &AppId,
    mut raw: Value,
    partial: bool,
    force: bool,
) -> Result<(bool, AppDefinition, String), ApiError> {
    check_locked(api, id, force).await?;
    let current = api.apps.get(id).await?;
    if partial {
        let Value::Object(changes) = raw else {
            return Err(ApiError::invalid(vec![Violation {
                path: "/".into(),
                errors: vec!["expected a JSON object".into()],
            }]));
        };
        let current = current.clone().ok_or_else(|| ApiError::no_app(id))?;
        let mut merged = serde_json::to_value(current).unwrap_or_default();
        if let Some(obj) = merged.as_object_mut() {
            obj.extend(changes);
        }
        raw = merged;
    }
    if let Some(obj) = raw.as_object_mut() {
        obj.insert("id".into(), Value::String(id.to_string()));
    }
    let app = prepare(parse_body(raw.to_string().as_bytes())?, id, current.as_ref())?;
    api.apps.put(id, &app).await?;
    let deployment = api.marathon.app_changed(id.clone(), Some(app.clone())).await;
    api.marathon.publish("api_post_event", json!({ "uri": format!("/v2/apps{id}"), "appDefinition": app }));
    tracing::info!(app_id = %id, version = ?app.version, existed = current.is_some(), "app definition changed");
    Ok((current.is_some(), app, deployment))
}

/// `PUT /v2/apps/{id}`: creates the app (201) or replaces its definition with a new version (200).
async fn replace(
    State(api): State<Api>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = app_target(&rest)?;
    let force = flag(&pairs(q.as_deref()), "force")?;
    let (existed, app, deployment) = apply(&api, &id, parse_body(&body)?, false, force).await?;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(json!({ "version": app.version, "deploymentId": deployment }))).into_response())
}

/// `PATCH /v2/apps/{id}`: changes only the fields given.
async fn patch(
    State(api): State<Api>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = app_target(&rest)?;
    let force = flag(&pairs(q.as_deref()), "force")?;
    let (_, app, deployment) = apply(&api, &id, parse_body(&body)?, true, force).await?;
    Ok(Json(json!({ "version": app.version, "deploymentId": deployment })))
}

/// `POST /v2/apps/{id}/restart?force=`: replaces every instance (as a rolling upgrade) with the same
/// definition, under a new version.
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
    check_locked(&api, &id, flag(&pairs(q.as_deref()), "force")?).await?;
    let mut app = api.apps.get(&id).await?.ok_or_else(|| ApiError::no_app(&id))?;
    let version = now();
    app.version = Some(version.clone());
    app.version_info = Some(VersionInfo { last_scaling_at: version.clone(), last_config_change_at: version.clone() });
    api.apps.put(&id, &app).await?;
    let deployment = api.marathon.app_changed(id.clone(), Some(app)).await;
    tracing::info!(app_id = %id, "app restart");
    Ok(Json(json!({ "version": version, "deploymentId": deployment })))
}

/// `PUT` or `PATCH /v2/apps` with a list: every app in it, each by its own `id`. All are validated before
/// any is stored.
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
    let mut version = None;
    let mut deployments = Vec::new();
    for (id, raw) in targets {
        let (_, app, deployment) = apply(&api, &id, raw, partial, true).await?;
        version = app.version;
        deployments.push(deployment);
    }
    Ok(Json(json!({ "version": version, "deploymentId": deployments.first() })))
}

async fn replace_many(State(api): State<Api>, RawQuery(q): RawQuery, body: Bytes) -> Result<Json<Value>, ApiError> {
    change_many(api, q, body, false).await
}

async fn patch_many(State(api): State<Api>, RawQuery(q): RawQuery, body: Bytes) -> Result<Json<Value>, ApiError> {
    change_many(api, q, body, true).await
}

/// A group as Marathon shows it: its apps, and its subgroups, built from the apps' path ids.
fn group_tree(id: &str, apps: &[AppDefinition], snapshot: &Snapshot) -> Value {
    let prefix = if id == "/" { "/".to_owned() } else { format!("{id}/") };
    let mut direct = Vec::new();
    let mut children: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for app in apps.iter().filter(|a| a.id.starts_with(&prefix)) {
        match app.id[prefix.len()..].split_once('/') {
            None => direct.push(enrich(app, snapshot, false)),
            Some((child, _)) => {
                children.insert(format!("{prefix}{child}"));
            }
        }
    }
    let groups: Vec<Value> = children.iter().map(|c| group_tree(c, apps, snapshot)).collect();
    json!({ "id": id, "apps": direct, "groups": groups, "dependencies": [], "version": now() })
}

async fn groups(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let apps = api.apps.list().await?;
    Ok(Json(group_tree("/", &apps, &api.marathon.snapshot().await)))
}

async fn groups_at(State(api): State<Api>, Path(rest): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&rest)?;
    let apps = api.apps.list().await?;
    if !apps.iter().any(|a| AppId::parse(&a.id).is_ok_and(|a| a.is_in(id.as_str()))) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("Group '{id}' does not exist")));
    }
    Ok(Json(group_tree(id.as_str(), &apps, &api.marathon.snapshot().await)))
}

#[derive(Deserialize)]
struct GroupBody {
    id: String,
    #[serde(default)]
    apps: Vec<Value>,
}

/// `POST /v2/groups`: creates the group's apps (ids relative to the group are made absolute).
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
        let (_, app, d) = apply(&api, &id, raw, false, false).await?;
        deployment.get_or_insert(d);
        version = app.version;
    }
    Ok((StatusCode::CREATED, Json(json!({ "version": version, "deploymentId": deployment }))).into_response())
}

/// `DELETE /v2/groups/{id}`: deletes every app in the group.
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
        api.apps.delete(&id).await?;
        let d = api.marathon.app_changed(id.clone(), None).await;
        deployment.get_or_insert(d);
        api.marathon.publish("app_terminated_event", json!({ "appId": id }));
    }
    Ok(Json(json!({ "version": now(), "deploymentId": deployment })))
}

async fn remove(
    State(api): State<Api>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = pairs(q.as_deref());
    match target(&rest)? {
        Target::App(id) => {
            if api.apps.get(&id).await?.is_none() {
                return Err(ApiError::no_app(&id));
            }
            check_locked(&api, &id, flag(&q, "force")?).await?;
            api.apps.delete(&id).await?;
            let deployment = api.marathon.app_changed(id.clone(), None).await;
            api.marathon.publish("app_terminated_event", json!({ "appId": id }));
            tracing::info!(app_id = %id, "app deleted");
            Ok(Json(json!({ "version": now(), "deploymentId": deployment })))
        }
        Target::Task(id, task) => {
            let (scale, wipe) = (flag(&q, "scale")?, flag(&q, "wipe")?);
            let snapshot = api.marathon.snapshot().await;
            if !snapshot.instances.iter().any(|i| i.id == task && i.app_id == id.as_str()) {
                return Err(ApiError::new(StatusCode::NOT_FOUND, format!("Task '{task}' does not exist")));
            }
            let killed = api.marathon.kill(vec![task], scale, wipe).await;
            Ok(Json(json!({ "task": killed.first() })))
        }
        Target::Tasks(id) => {
            api.apps.get(&id).await?.ok_or_else(|| ApiError::no_app(&id))?;
            let (scale, wipe) = (flag(&q, "scale")?, flag(&q, "wipe")?);
            let host = param(&q, "host");
            let snapshot = api.marathon.snapshot().await;
            let ids: Vec<String> = snapshot
                .instances
                .iter()
                .filter(|i| i.app_id == id.as_str() && host.is_none_or(|h| i.host == h))
                .map(|i| i.id.clone())
                .collect();
            let killed = api.marathon.kill(ids, scale, wipe).await;
            Ok(Json(json!({ "tasks": killed })))
        }
        _ => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "versions cannot be deleted")),
    }
}

async fn all_tasks(State(api): State<Api>) -> Json<Value> {
    let snapshot = api.marathon.snapshot().await;
    Json(json!({ "tasks": snapshot.instances }))
}

#[derive(Deserialize)]
struct TaskIds {
    ids: Vec<String>,
}

/// `POST /v2/tasks/delete?scale=&wipe=`: kills the listed tasks of any apps.
async fn delete_tasks(State(api): State<Api>, RawQuery(q): RawQuery, body: Bytes) -> Result<Json<Value>, ApiError> {
    let q = pairs(q.as_deref());
    let (scale, wipe) = (flag(&q, "scale")?, flag(&q, "wipe")?);
    let TaskIds { ids } = parse_body(&body)?;
    let killed = api.marathon.kill(ids, scale, wipe).await;
    Ok(Json(json!({ "tasks": killed })))
}

/// `GET /v2/queue`: apps with instances still to launch, their backoff, and why offers were turned down
/// ("why is my app waiting").
async fn queue(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let snapshot = api.marathon.snapshot().await;
    let mut items = Vec::new();
    for (id, entry) in &snapshot.queue {
        let Ok(app_id) = AppId::parse(id) else { continue };
        let Some(app) = api.apps.get(&app_id).await? else { continue };
        let reasons: Vec<Value> = entry
            .waiting
            .declined
            .iter()
            .map(|(reason, n)| json!({ "reason": reason, "declined": n, "processed": entry.waiting.processed }))
            .collect();
        items.push(json!({
            "app": app,
            "count": entry.count,
            "delay": { "timeLeftSeconds": entry.delay_left.ceil() as u64, "overdue": entry.delay_left <= 0.0 },
            "processedOffersSummary": {
                "processedOffersCount": entry.waiting.processed,
                "unusedOffersCount": entry.waiting.declined.values().sum::<u64>(),
                "rejectSummaryLastOffers": reasons,
            },
        }));
    }
    Ok(Json(json!({ "queue": items })))
}

/// `DELETE /v2/queue/{appId}/delay`: launch again without waiting out the backoff.
async fn reset_delay(State(api): State<Api>, Path(rest): Path<String>) -> Result<StatusCode, ApiError> {
    let id = rest
        .trim_end_matches('/')
        .strip_suffix("/delay")
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "use /v2/queue/{appId}/delay"))?;
    let id = parse_id(id)?;
    api.apps.get(&id).await?.ok_or_else(|| ApiError::no_app(&id))?;
    api.marathon.reset_delay(id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v2/deployments`: changes being rolled out, in Marathon's shape.
async fn deployments(State(api): State<Api>) -> Json<Value> {
    let snapshot = api.marathon.snapshot().await;
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
    Json(json!(list))
}

/// `DELETE /v2/deployments/{id}`: without `force`, rolls the app back to its previous definition (a new
/// deployment); with `force=true`, only stops the deployment.
async fn cancel_deployment(
    State(api): State<Api>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let force = flag(&pairs(q.as_deref()), "force")?;
    let snapshot = api.marathon.snapshot().await;
    let Some(d) = snapshot.deployments.iter().find(|d| d.id == id) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("DeploymentPlan {id} does not exist")));
    };
    let app_id = d.app_id.clone();
    let Some(restore) = api.marathon.cancel_deployment(id.clone(), force).await else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("DeploymentPlan {id} does not exist")));
    };
    if force {
        return Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response());
    }
    let version = now();
    let deployment = match restore {
        Some(mut previous) => {
            previous.version = Some(version.clone());
            api.apps.put(&app_id, &previous).await?;
            api.marathon.app_changed(app_id, Some(previous)).await
        }
        None => {
            api.apps.delete(&app_id).await?;
            api.marathon.app_changed(app_id, None).await
        }
    };
    Ok((StatusCode::OK, Json(json!({ "deploymentId": deployment, "version": version }))).into_response())
}

/// `GET /v2/events`: Server-Sent Events in Marathon's format, optionally only the `event_type`s asked for.
async fn events(State(api): State<Api>, RawQuery(q): RawQuery) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let wanted: Vec<String> =
        pairs(q.as_deref()).into_iter().filter(|(k, _)| k == "event_type").map(|(_, v)| v).collect();
    let stream =
        tokio_stream::wrappers::BroadcastStream::new(api.marathon.subscribe()).filter_map(move |e| {
            let keep = e.ok().filter(|e| wanted.is_empty() || wanted.iter().any(|w| w == e.event_type));
            std::future::ready(keep.map(|e| {
                Ok::<_, std::convert::Infallible>(Event::default().event(e.event_type).data(e.data.to_string()))
            }))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn info() -> Json<Value> {
    Json(json!({
        "name": "marathon",
        "version": env!("CARGO_PKG_VERSION"),
        "elected": true,
        "frameworkId": null,
        "leader": null,
        "http_config": {},
        "marathon_config": { "framework_name": "marathon" },
    }))
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
    let snapshot = api.marathon.snapshot().await;
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

async fn metrics_prometheus(State(api): State<Api>) -> Result<Response, ApiError> {
    let mut out = String::new();
    for (name, v) in gauges(&api).await? {
        let name = name.replace(['.', '-'], "_");
        out.push_str(&format!("# TYPE {name} gauge\n{name} {v}\n"));
    }
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], out).into_response())
}

async fn leader() -> Json<Value> {
    Json(json!({ "leader": "keel" }))
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
        let marathon = crate::scheduler::start("http://127.0.0.1:1", apps.clone(), token).await.unwrap();
        (Api { apps, marathon }, dir)
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
}
