//! The operator HTTP API: `/master/state`, `/health` and `/metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{MasterError, MasterHandle};

/// The operator routes, to be merged into the server's router.
pub fn router(master: MasterHandle) -> Router {
    Router::new()
        .route("/master/state", get(state))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
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
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
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
