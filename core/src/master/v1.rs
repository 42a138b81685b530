//! Mesos's v1 scheduler HTTP API, `POST /api/v1/scheduler`, beside Keel's gRPC one: both hand the same
//! domain calls to the [`MasterHandle`], so frameworks on either share the allocator and see one cluster.
//!
//! SUBSCRIBE answers 200 with a chunked RecordIO stream of events and a `Mesos-Stream-Id`; every other
//! call is its own POST carrying that id, answered 202 (or 400/403, as Mesos does). The JSON mapping is
//! [`crate::mesos`]; this module only keeps the streams and checks who may do what.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info};

use super::{Caller, MasterHandle};
use crate::audit::Audit;
use crate::auth::{Action, Principal, Role};
use crate::ids::FrameworkId;
use crate::mesos::{self, MasterInfo, Parsed};
use crate::store::{AuditRecord, now_millis};

/// The header that ties a call to its framework's event stream.
pub const STREAM_ID: &str = "mesos-stream-id";

/// At most this many events go into one chunk of the stream.
const EVENTS_PER_CHUNK: usize = 256;

/// The open event stream of a subscribed framework.
struct Stream {
    id: String,
    conn_id: u64,
    /// The principal that subscribed; calls must come from it. `None` when auth is off.
    principal: Option<String>,
}

/// The v1 API's state: the master, who the master is, and each framework's current stream. Cloned for
/// every request, so it is one shared pointer.
#[derive(Clone)]
pub struct V1(Arc<Shared>);

pub struct Shared {
    master: MasterHandle,
    info: MasterInfo,
    auth_off: bool,
    audit: Audit,
    streams: Mutex<HashMap<FrameworkId, Stream>>,
}

impl std::ops::Deref for V1 {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl V1 {
    pub fn new(master: MasterHandle, info: MasterInfo, gate: &crate::gate::Gate) -> V1 {
        V1(Arc::new(Shared {
            master,
            info,
            auth_off: gate.auth.is_off(),
            audit: gate.audit.clone(),
            streams: Mutex::default(),
        }))
    }
}

/// `POST /api/v1/scheduler`.
pub fn router(v1: V1) -> axum::Router {
    axum::Router::new().route("/api/v1/scheduler", axum::routing::post(scheduler)).with_state(v1)
}

/// `{"message": …}` with `status`, as every other API answers errors.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    super::http::ApiError(status, message.into()).into_response()
}

/// Whether the caller takes JSON answers (Mesos answers 406 otherwise).
fn accepts_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT) else { return true };
    let accept = accept.to_str().unwrap_or("").to_ascii_lowercase();
    accept
        .split(',')
        .map(|a| a.split(';').next().unwrap_or("").trim())
        .any(|a| matches!(a, "application/json" | "application/*" | "*/*" | ""))
}

#[utoipa::path(
    post,
    path = "/api/v1/scheduler",
    tag = "mesos",
    description = "Mesos's v1 scheduler API: SUBSCRIBE answers a RecordIO stream of events with a \
                   Mesos-Stream-Id header; every other call carries that header and answers 202.",
    request_body = serde_json::Value,
    responses(
        (status = 200, description = "SUBSCRIBE: the event stream (chunked RecordIO of JSON events)"),
        (status = 202, description = "The call was taken"),
        (status = 400, description = "A malformed call, or a missing or wrong Mesos-Stream-Id", body = crate::gate::ErrorBody),
        (status = 403, description = "The framework is not subscribed, or belongs to another principal", body = crate::gate::ErrorBody),
        (status = 406, description = "The caller does not accept JSON", body = crate::gate::ErrorBody),
    )
)]
pub(crate) async fn scheduler(
    State(v1): State<V1>,
    principal: Option<axum::Extension<Arc<Principal>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = principal.map(|p| p.0).unwrap_or_else(|| Arc::new(Principal::anonymous()));
    if !accepts_json(&headers) {
        return refuse(StatusCode::NOT_ACCEPTABLE, "Keel's v1 API answers application/json only");
    }
    let parsed = match mesos::parse_call(&body) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let stream_id = headers.get(STREAM_ID).map(|v| v.to_str().unwrap_or("?").to_owned());
    match parsed {
        Parsed::Subscribe { framework_id, info, principal } => {
            if stream_id.is_some() {
                return refuse(StatusCode::BAD_REQUEST, "a SUBSCRIBE call must not carry a Mesos-Stream-Id header");
            }
            subscribe(v1, who, framework_id, info, principal).await
        }
        Parsed::Call { framework_id, call, refused } => {
            let conn_id = match v1.check_stream(&framework_id, stream_id.as_deref(), &who) {
                Ok(c) => c,
                Err(refusal) => return refusal,
            };
            if !refused.is_empty() && v1.master.refuse_tasks(framework_id.clone(), conn_id, refused).await.is_err() {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "the master is not running");
            }
            match v1.master.call(framework_id, conn_id, call).await {
                Ok(()) => StatusCode::ACCEPTED.into_response(),
                Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        }
        Parsed::Ignored { framework_id, kind } => match v1.check_stream(&framework_id, stream_id.as_deref(), &who) {
            Ok(_) => {
                debug!(framework_id = %framework_id, call = kind, "call taken and ignored: Keel has nothing to do for it");
                StatusCode::ACCEPTED.into_response()
            }
            Err(refusal) => refusal,
        },
    }
}

impl V1 {
    /// The connection a call belongs to, or the answer Mesos gives when it does not.
    #[allow(clippy::result_large_err)]
    fn check_stream(&self, fid: &FrameworkId, stream_id: Option<&str>, who: &Principal) -> Result<u64, Response> {
        let Some(stream_id) = stream_id else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "every call but SUBSCRIBE must carry the Mesos-Stream-Id header",
            ));
        };
        let streams = self.streams.lock().expect("lock poisoned");
        let Some(stream) = streams.get(fid) else {
            return Err(refuse(StatusCode::FORBIDDEN, format!("framework {fid} is not subscribed to this master")));
        };
        if stream.principal.as_deref().is_some_and(|p| p != who.name) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("framework {fid} was subscribed by another principal than '{}'", who.name),
            ));
        }
        if stream.id != stream_id {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("the Mesos-Stream-Id does not match framework {fid}'s current stream"),
            ));
        }
        Ok(stream.conn_id)
    }

    fn audit(&self, who: &Principal, target: &str, outcome: &str) {
        self.audit.record(AuditRecord {
            at: now_millis(),
            principal: who.name.clone(),
            action: "subscribe (v1)".into(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            status: 0,
        });
    }
}

async fn subscribe(
    v1: V1,
    who: Arc<Principal>,
    framework_id: Option<FrameworkId>,
    info: crate::api::FrameworkInfo,
    named: Option<String>,
) -> Response {
    let target = framework_id.as_ref().map_or_else(|| format!("new framework {}", info.name), |f| f.to_string());
    if !v1.auth_off && named.as_deref().is_some_and(|n| !n.is_empty() && n != who.name) {
        v1.audit(&who, &target, "denied");
        return refuse(
            StatusCode::FORBIDDEN,
            format!("framework_info.principal does not match the credential's principal '{}'", who.name),
        );
    }
    if !who.may(&Action::Subscribe(&info.role)) {
        v1.audit(&who, &target, "denied");
        return refuse(
            StatusCode::FORBIDDEN,
            format!("'{}' (role {}) may not subscribe a framework in role '{}'", who.name, who.role, info.role),
        );
    }
    let owner = (!v1.auth_off).then(|| Caller { name: who.name.clone(), admin: who.role == Role::Admin });
    let role = info.role.clone();
    let sub = match v1.master.subscribe(framework_id, info, owner).await {
        Ok(sub) => sub,
        Err(e) => {
            v1.audit(&who, &target, if matches!(e, super::MasterError::Forbidden(_)) { "denied" } else { "failed" });
            return super::http::ApiError::from(e).into_response();
        }
    };
    v1.audit(&who, &target, "ok");
    let stream_id = uuid::Uuid::new_v4().to_string();
    let fid = sub.framework_id.clone();
    info!(framework_id = %fid, principal = %who.name, "framework subscribed over the v1 HTTP API");
    v1.streams.lock().expect("lock poisoned").insert(
        fid.clone(),
        Stream { id: stream_id.clone(), conn_id: sub.conn_id, principal: (!v1.auth_off).then(|| who.name.clone()) },
    );
    let closer = Closer { v1: v1.clone(), fid, conn_id: sub.conn_id };
    let info = v1.info.clone();
    let records = ReceiverStream::new(sub.events).ready_chunks(EVENTS_PER_CHUNK).map(move |events| {
        let _ = &closer; // Dropped with the stream: the framework is then disconnected.
        let mut chunk = Vec::new();
        for e in &events {
            mesos::write_record(&mut chunk, e, &info, &role);
        }
        Ok::<_, std::convert::Infallible>(Bytes::from(chunk))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(STREAM_ID, stream_id)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(records))
        .unwrap_or_else(|_| refuse(StatusCode::INTERNAL_SERVER_ERROR, "cannot build the event stream"))
}

/// Tells the master a v1 framework's stream is gone, when the stream's body is dropped (the client went
/// away, or the master closed the stream), and forgets the stream unless a newer one replaced it.
struct Closer {
    v1: V1,
    fid: FrameworkId,
    conn_id: u64,
}

impl Drop for Closer {
    fn drop(&mut self) {
        let mut streams = self.v1.streams.lock().expect("lock poisoned");
        if streams.get(&self.fid).is_some_and(|s| s.conn_id == self.conn_id) {
            streams.remove(&self.fid);
        }
        drop(streams);
        let (master, fid, conn_id) = (self.v1.master.clone(), self.fid.clone(), self.conn_id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { master.framework_disconnected(fid, conn_id).await });
        }
    }
}
