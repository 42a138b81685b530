//! The operator HTTP API: `/master/state`, `/health` and `/metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use axum::extract::{Path, Query};

use super::{FileRequest, MasterError, MasterHandle};
use crate::ids::{FrameworkId, TaskId};

/// The operator routes, to be merged into the server's router.
pub fn router(master: MasterHandle) -> Router {
    Router::new()
        .route("/master/state", get(state))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/master/tasks/{task_id}/files/{file}", get(read_file))
        .with_state(master)
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
async fn read_file(
    State(master): State<MasterHandle>,
    Path((task_id, file)): Path<(String, String)>,
    Query(q): Query<FileQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let bad = |e: crate::ids::IdError| ApiError(StatusCode::BAD_REQUEST, e.to_string());
    let request = FileRequest {
        framework_id: q.framework_id.map(FrameworkId::parse).transpose().map_err(bad)?,
        task_id: TaskId::parse(task_id).map_err(bad)?,
        file,
        offset: q.offset,
        length: q.length.unwrap_or(64 * 1024),
    };
    Ok(Json(master.read_file(request).await?))
}

async fn state(State(master): State<MasterHandle>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(master.state().await?))
}

async fn health(State(master): State<MasterHandle>) -> Result<impl IntoResponse, ApiError> {
    // Asking the actor proves it is alive and not wedged.
    let state = master.state().await?;
    Ok(Json(json!({ "status": "ok", "agents": state.agents.len(), "frameworks": state.frameworks.len() })))
}

async fn metrics(State(master): State<MasterHandle>) -> Result<impl IntoResponse, ApiError> {
    let text = master.metrics().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// The JSON 404 for any path nobody serves.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no such endpoint: {}", uri.path()))
}
