//! The gate every REST request passes, on every port: the checks against hostile web pages (Host, Origin,
//! content type), then who is asking ([`Auth`]) and whether they may ([`Principal::may`]), then the audit
//! record of writes, and the redaction of environment values for those who may not read them.
//!
//! Also here: the routes that belong to auth itself (`/keel/v1/whoami`, `/keel/v1/tokens`,
//! `/keel/v1/audit`, and the console's login, logout and session cookie).

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

use crate::audit::Audit;
use crate::auth::{Action, Auth, AuthError, Principal, Role};
use crate::store::{AuditRecord, now_millis};

/// The console's session cookie on plain HTTP.
pub const SESSION_COOKIE: &str = "keel_session";
/// The console's session cookie on TLS: the `__Host-` prefix makes browsers refuse one set by another
/// origin, or for a wider path or domain.
pub const SECURE_SESSION_COOKIE: &str = "__Host-keel_session";
/// What replaces a secret value for those who may not read it.
pub const REDACTED: &str = "[redacted]";
/// The largest response body the gate reads to redact it.
const MAX_REDACT: usize = 64 << 20;

/// The Host names a server answers to, against DNS rebinding.
#[derive(Clone, Debug, Default)]
pub struct HostPolicy {
    /// Check Host at all: on for servers on loopback addresses, which web pages reach by rebinding.
    pub enforce: bool,
    /// Extra host names (from `--allowed-origin`), lowercase, without port.
    pub hosts: Vec<String>,
    /// Origins allowed besides the server's own (`--allowed-origin`), e.g. `https://ops.example.com`.
    pub origins: Vec<String>,
}

impl HostPolicy {
    /// The policy for a server bound to `bind`, with the operator's `--allowed-origin` values. Host is
    /// checked on loopback addresses, which pages reach by DNS rebinding, and everywhere when auth is off
    /// (then nothing else stands in a rebinding page's way).
    pub fn for_bind(bind: IpAddr, allowed_origins: &[String], auth_off: bool) -> HostPolicy {
        let origins: Vec<String> =
            allowed_origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect();
        let mut hosts: Vec<String> = origins.iter().filter_map(|o| origin_host(o)).collect();
        if let Some(h) = machine_hostname() {
            hosts.push(h.to_ascii_lowercase());
        }
        HostPolicy { enforce: bind.is_loopback() || auth_off, hosts, origins }
    }

    /// Whether a request's Host names this server.
    pub fn host_allowed(&self, host: &str) -> bool {
        if !self.enforce {
            return true;
        }
        let name = strip_port(host).to_ascii_lowercase();
        let name = name.trim_start_matches('[').trim_end_matches(']');
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hosts.iter().any(|h| h == name)
    }

    /// Whether a request's Origin is this server itself (same host and port as its Host) or allowed.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        let Some(authority) = origin.split_once("://").map(|(_, a)| a) else { return false };
        host.is_some_and(|h| h.eq_ignore_ascii_case(authority))
    }
}

/// This machine's host name, if it has one.
pub fn machine_hostname() -> Option<String> {
    hostname::get().ok()?.into_string().ok().filter(|h| !h.is_empty())
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn origin_host(origin: &str) -> Option<String> {
    let authority = origin.split_once("://")?.1;
    Some(strip_port(authority).trim_start_matches('[').trim_end_matches(']').to_owned())
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Anyone: health, the login pages, the API description.
    Public,
    Read,
    /// A task's output: frameworks read their tasks' too.
    TaskOutput,
    Write,
    Admin,
    /// Mesos's v1 scheduler API: any principal gets in; the handler checks that it may subscribe, and that
    /// each later call comes from the principal that subscribed.
    Scheduler,
}

/// Which class a request is in. Pure.
pub fn classify(method: &Method, path: &str) -> Class {
    const PUBLIC: [&str; 8] =
        ["/", "/health", "/ping", "/openapi.json", "/login", "/logout", "/keel/v1/whoami", "/master/leader"];
    if PUBLIC.contains(&path) {
        return Class::Public;
    }
    let admin = path.starts_with("/keel/v1/tokens")
        || path.starts_with("/keel/v1/audit")
        // Marathon's abdication.
        || (path == "/v2/leader" && method == Method::DELETE);
    if admin {
        return Class::Admin;
    }
    if path == "/api/v1/scheduler" && *method == Method::POST {
        return Class::Scheduler;
    }
    if is_safe(method) {
        if path.starts_with("/master/tasks/") && path.contains("/files/") { Class::TaskOutput } else { Class::Read }
    } else {
        Class::Write
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a content type is JSON (`application/json`, or any `+json` type), as writes must be.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The gate of one port; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    pub auth: Auth,
    pub hosts: HostPolicy,
    pub audit: Audit,
    /// The token table, on the master's port only (frameworks' ports send token management there).
    pub tokens: Option<crate::store::Store>,
    /// The session cookie is marked `Secure` (the port serves TLS).
    pub secure_cookie: bool,
    /// Where `/` sends a signed-in browser, if this port has a web UI.
    pub landing: Option<String>,
}

/// The CSRF token of the session a request came with, for pages to embed; writes made with a session
/// cookie must send it back in the [`CSRF_HEADER`] header.
#[derive(Clone, Debug)]
pub struct Csrf(pub String);

/// The header that carries a session's CSRF token on writes.
pub const CSRF_HEADER: &str = "x-csrf-token";

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": message.into() }))).into_response()
}

fn unauthorized(e: &AuthError) -> Response {
    let status = match e {
        AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut r = refuse(status, e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        // Basic first: httplib2 (Chronos's client) answers the first challenge it can.
        r.headers_mut().append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"keel\""));
        r.headers_mut().append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"keel\""));
    }
    r
}

/// [`unauthorized`] without the `WWW-Authenticate` challenges.
fn quiet_unauthorized(e: &AuthError) -> Response {
    let mut r = unauthorized(e);
    r.headers_mut().remove(header::WWW_AUTHENTICATE);
    r
}

/// The value of cookie `name`; none when it is sent twice (a cookie planted by another site on this host,
/// beside the real one, must not pick the session).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found =
        headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).filter_map(
            |c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then_some(v)
            },
        );
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

impl Gate {
    fn cookie_name(&self) -> &'static str {
        if self.secure_cookie { SECURE_SESSION_COOKIE } else { SESSION_COOKIE }
    }

    /// The session cookie a request authenticates with: only when it has no `Authorization` header.
    fn session_cookie<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        if headers.contains_key(header::AUTHORIZATION) {
            return None;
        }
        cookie(headers, self.cookie_name())
    }

    /// Who sent `headers`: the `Authorization` header, else the session cookie.
    pub async fn principal(&self, headers: &HeaderMap) -> Result<Arc<Principal>, AuthError> {
        if let Some(a) = headers.get(header::AUTHORIZATION) {
            return self.auth.authenticate(Some(a.to_str().map_err(|_| AuthError::Invalid)?)).await;
        }
        if let Some(c) = cookie(headers, self.cookie_name()) {
            return self.auth.session(c).ok_or(AuthError::Invalid);
        }
        self.auth.authenticate(None).await
    }

    /// The checks before a request reaches a handler: who asks (once known), and the answer if refused.
    async fn admit(&self, req: &axum::http::request::Parts) -> (Option<Arc<Principal>>, Result<(), Response>) {
        match self.check(req).await {
            Ok(p) => (p, Ok(())),
            Err((p, refusal)) => (p, Err(refusal)),
        }
    }

    #[allow(clippy::result_large_err)]
    async fn check(
        &self,
        req: &axum::http::request::Parts,
    ) -> Result<Option<Arc<Principal>>, (Option<Arc<Principal>>, Response)> {
        let headers = &req.headers;
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(req.uri.authority().map(|a| a.as_str()));
        if let Some(h) = host
            && !self.hosts.host_allowed(h)
        {
            return Err((
                None,
                refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "host '{h}' is not this server's (DNS rebinding protection): list it with --allowed-origin"
                    ),
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("null");
            if !self.hosts.origin_allowed(origin, host) {
                return Err((
                    None,
                    refuse(
                        StatusCode::FORBIDDEN,
                        format!("cross-origin request from '{origin}' refused: list the origin with --allowed-origin"),
                    ),
                ));
            }
        }
        let method = &req.method;
        let path = req.uri.path();
        if !is_safe(method) && path != "/login" && path != "/logout" {
            let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
            let has_body = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .map_or(headers.contains_key(header::TRANSFER_ENCODING), |n| n.trim() != "0");
            match content_type {
                Some(ct) if !is_json(ct) => {
                    return Err((
                        None,
                        refuse(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            format!("writes must be JSON: Content-Type '{ct}' is not application/json"),
                        ),
                    ));
                }
                None if has_body => {
                    return Err((
                        None,
                        refuse(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "writes must be JSON: send Content-Type: application/json",
                        ),
                    ));
                }
                _ => {}
            }
        }
        let class = classify(method, path);
        if class == Class::Public {
            return Ok(None);
        }
        let principal = self.principal(headers).await.map_err(|e| {
            // A browser whose session ended gets no challenge: it would pop up the browser's own
            // password dialog instead of the console's sign-in page.
            let refusal =
                if self.session_cookie(headers).is_some() { quiet_unauthorized(&e) } else { unauthorized(&e) };
            (None, refusal)
        })?;
        if matches!(class, Class::Write | Class::Admin | Class::Scheduler)
            && let Some(session) = self.session_cookie(headers)
        {
            let expected = self.auth.session_csrf(session);
            let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if expected.is_none() || sent != expected.as_deref() {
                let refusal = refuse(
                    StatusCode::FORBIDDEN,
                    format!("a write with a session cookie must carry the session's CSRF token in {CSRF_HEADER}"),
                );
                return Err((Some(principal), refusal));
            }
        }
        let (action, what) = match class {
            Class::Scheduler => return Ok(Some(principal)),
            Class::Read => (Action::Read, "read"),
            Class::TaskOutput => (Action::ReadTaskOutput, "read task output"),
            Class::Write => (Action::Write, "write"),
            _ => (Action::Admin, "use admin endpoints"),
        };
        if !principal.may(&action) {
            let refusal =
                refuse(StatusCode::FORBIDDEN, format!("'{}' (role {}) may not {what}", principal.name, principal.role));
            return Err((Some(principal), refusal));
        }
        Ok(Some(principal))
    }

    fn audit(&self, principal: Option<&Principal>, method: &Method, path: &str, status: StatusCode) {
        let outcome = match status.as_u16() {
            401 | 403 => "denied",
            s if s >= 400 => "failed",
            _ => "ok",
        };
        self.audit.record(AuditRecord {
            at: now_millis(),
            principal: principal.map_or_else(|| "-".to_owned(), |p| p.name.clone()),
            action: format!("{method} {}", truncate(path)),
            target: truncate(path),
            outcome: outcome.to_owned(),
            status: i64::from(status.as_u16()),
        });
    }
}

/// At most 256 characters of a path, for the audit record.
fn truncate(path: &str) -> String {
    if path.len() <= 256 {
        return path.to_owned();
    }
    let mut end = 256;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

/// Puts `gate` in front of every route of `router`.
pub fn protect(router: Router, gate: Gate) -> Router {
    // Shared, not cloned, by every request.
    let gate = Arc::new(gate);
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let gate = gate.clone();
        async move { guard(&gate, req, next).await }
    }))
}

async fn guard(gate: &Gate, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let class = classify(&method, &path);
    // The v1 scheduler API audits its subscriptions itself, as the gRPC one does, not each call.
    let write = !is_safe(&method) && !matches!(class, Class::Public | Class::Scheduler);
    let (mut parts, body) = req.into_parts();
    let (principal, admitted) = gate.admit(&parts).await;
    let (principal, mut response) = match admitted {
        Err(refusal) if refusal.status() == StatusCode::UNAUTHORIZED && is_page_load(&method, &parts.headers) => {
            // A person in a browser, not signed in: to the login form, and back here after.
            let back = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let next: String = form_urlencoded::byte_serialize(back.as_bytes()).collect();
            (principal, Redirect::to(&format!("/login?next={next}")).into_response())
        }
        Err(refusal) => (principal, refusal),
        Ok(()) => {
            if let Some(p) = &principal {
                parts.extensions.insert(p.clone());
            }
            if let Some(csrf) = gate.session_cookie(&parts.headers).and_then(|c| gate.auth.session_csrf(c)) {
                parts.extensions.insert(Csrf(csrf));
            }
            let response = json_rejection(next.run(Request::from_parts(parts, body)).await).await;
            // The v1 event stream never ends and carries no environment: it is not read to be redacted.
            let redact = class != Class::Scheduler && principal.as_ref().is_some_and(|p| !p.may(&Action::ReadSecrets));
            let response = if redact { redact_response(response).await } else { response };
            (principal, response)
        }
    };
    if write || (!is_safe(&method) && response.status() == StatusCode::FORBIDDEN) {
        gate.audit(principal.as_deref(), &method, &path, response.status());
    }
    let h = response.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it, browsers send `Origin: null` on the console's own form posts.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    );
    response
}

/// Whether a request is a browser loading a page (it asks for HTML first), rather than an API client.
fn is_page_load(method: &Method, headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    *method == Method::GET && accept.starts_with("text/html")
}

/// Where to go after signing in: a path on this server (never another site's URL), else `/`.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        // No control characters or spaces either: browsers drop tabs and newlines from URLs, so `/\t/evil`
        // would become `//evil`.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.bytes().any(|b| b <= 0x20 || b == 0x7f)
                && n.len() <= 2048 =>
        {
            n
        }
        _ => "/",
    }
}

/// An extractor's refusal (a bad query string or path) comes as plain text: answer it as JSON, as every
/// other error is.
async fn json_rejection(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/plain"));
    if !(response.status().is_client_error() && plain) {
        return response;
    }
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    refuse(status, String::from_utf8_lossy(&text).into_owned())
}

async fn redact_response(response: Response) -> Response {
    let is_json_body = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(is_json);
    if !is_json_body {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_REDACT).await else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "the answer was too large to redact");
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    redact_secrets(&mut value);
    let out = serde_json::to_vec(&value).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(out))
}

/// Replaces environment values with [`REDACTED`], wherever they are in `v`: Marathon's and Metronome's
/// `env` objects (a `{"secret": …}` reference is kept; it names, it does not tell) and Chronos's
/// `environmentVariables` lists.
pub fn redact_secrets(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match (k.as_str(), &mut *child) {
                    ("env", Value::Object(env)) => {
                        for value in env.values_mut() {
                            if !value.is_object() {
                                *value = Value::String(REDACTED.into());
                            }
                        }
                    }
                    ("environmentVariables", Value::Array(list)) => {
                        for item in list {
                            if let Some(value) = item.get_mut("value") {
                                *value = Value::String(REDACTED.into());
                            }
                        }
                    }
                    _ => redact_secrets(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

/// The routes of auth itself, to be merged into a port's router before [`protect`].
pub fn routes(gate: Gate) -> Router {
    Router::new()
        .route("/keel/v1/whoami", get(whoami))
        .route("/keel/v1/tokens", get(list_tokens).post(create_token))
        .route("/keel/v1/tokens/{id}", delete(revoke_token))
        .route("/keel/v1/audit", get(read_audit))
        .with_state(gate)
}

/// The console's login routes (`/`, `/login`, `/logout`); only the master's port has them.
pub fn login_routes(gate: Gate) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .with_state(gate)
}

fn principal_json(p: &Principal) -> Value {
    json!({ "name": p.name, "role": p.role.as_str(), "framework_roles": p.framework_roles })
}

/// `GET /keel/v1/whoami`: the caller's principal, or 401. Frameworks on their own ports check their
/// callers' credentials here.
#[utoipa::path(
    get,
    path = "/keel/v1/whoami",
    tag = "keel",
    description = "The caller's principal: name, role and framework roles.",
    responses(
        (status = 200, description = "Who the credential is", body = serde_json::Value),
        (status = 401, description = "The credential is missing or not valid", body = ErrorBody),
    )
)]
async fn whoami(State(gate): State<Gate>, headers: HeaderMap) -> Response {
    match gate.principal(&headers).await {
        Ok(p) => axum::Json(principal_json(&p)).into_response(),
        Err(e) => unauthorized(&e),
    }
}

/// The token store, which only the master's port has (frameworks on their own ports have no
/// [`Audit`] store either).
fn token_store(gate: &Gate) -> Result<&crate::store::Store, Box<Response>> {
    gate.tokens.as_ref().ok_or_else(|| Box::new(refuse(StatusCode::NOT_FOUND, "tokens are managed on the master")))
}

#[utoipa::path(
    get,
    path = "/keel/v1/tokens",
    tag = "keel",
    description = "Every token's id, name, role and dates (never the token). Admins only.",
    responses(
        (status = 200, description = "The tokens", body = serde_json::Value),
        (status = 404, description = "Tokens are managed on the master", body = crate::gate::ErrorBody),
        (status = 503, description = "The store did not answer", body = crate::gate::ErrorBody),
    )
)]
async fn list_tokens(State(gate): State<Gate>) -> Response {
    let store = match token_store(&gate) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match store.tokens().await {
        Ok(tokens) => axum::Json(tokens.iter().map(token_json).collect::<Vec<_>>()).into_response(),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn token_json(t: &crate::store::TokenRecord) -> Value {
    json!({
        "id": t.id, "name": t.name, "role": t.role.as_str(), "framework_roles": t.framework_roles,
        "created_at": t.created_at, "revoked_at": t.revoked_at,
    })
}

/// A new token, as `POST /keel/v1/tokens` takes it.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// The principal's name: 1 to 64 of A-Z a-z 0-9 - _ .
    name: String,
    /// viewer, operator, admin, framework or agent
    role: String,
    /// For framework tokens: the roles it may subscribe under (any when empty).
    #[serde(default)]
    framework_roles: Vec<String>,
}

/// `POST /keel/v1/tokens` `{"name", "role", "framework_roles"}`: answers the new token, once.
#[utoipa::path(
    post,
    path = "/keel/v1/tokens",
    tag = "keel",
    description = "Makes a token; the answer shows it, once. Admins only.",
    request_body(content = NewToken, content_type = "application/json"),
    responses(
        (status = 201, description = "The token, with its record", body = serde_json::Value),
        (status = 404, description = "Tokens are managed on the master", body = crate::gate::ErrorBody),
        (status = 409, description = "An active token has that name", body = crate::gate::ErrorBody),
        (status = 422, description = "A bad name, role or framework role", body = crate::gate::ErrorBody),
        (status = 503, description = "The store did not answer", body = crate::gate::ErrorBody),
    )
)]
async fn create_token(State(gate): State<Gate>, body: axum::body::Bytes) -> Response {
    let store = match token_store(&gate) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let new: NewToken = match crate::json::parse_strict(&body)
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
    {
        Ok(n) => n,
        Err(e) => return refuse(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    match new_token(store, &new.name, &new.role, new.framework_roles).await {
        Ok((record, token)) => {
            let mut body = token_json(&record);
            body["token"] = Value::String(token);
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        Err(TokenError::Invalid(m)) => refuse(StatusCode::UNPROCESSABLE_ENTITY, m),
        Err(TokenError::Store(crate::store::StoreError::Conflict(m))) => refuse(StatusCode::CONFLICT, m),
        Err(TokenError::Store(e)) => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[utoipa::path(
    delete,
    path = "/keel/v1/tokens/{id}",
    tag = "keel",
    description = "Revokes the active token with this id or name; every process refuses it within a second.",
    params(("id" = String, Path, description = "The token's id or name")),
    responses(
        (status = 200, description = "The revoked token's id", body = serde_json::Value),
        (status = 404, description = "No such active token", body = crate::gate::ErrorBody),
        (status = 503, description = "The store did not answer", body = crate::gate::ErrorBody),
    )
)]
async fn revoke_token(State(gate): State<Gate>, Path(id): Path<String>) -> Response {
    let store = match token_store(&gate) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match store.revoke_token(&id, now_millis()).await {
        Ok(Some(id)) => axum::Json(json!({ "revoked": id })).into_response(),
        Ok(None) => refuse(StatusCode::NOT_FOUND, format!("no active token '{id}'")),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Makes a token and stores its hash; returns the record and the token (which is not kept).
pub async fn new_token(
    store: &crate::store::Store,
    name: &str,
    role: &str,
    framework_roles: Vec<String>,
) -> Result<(crate::store::TokenRecord, String), TokenError> {
    crate::auth::check_name(name).map_err(TokenError::Invalid)?;
    let role: Role = role.parse().map_err(TokenError::Invalid)?;
    if !framework_roles.is_empty() && role != Role::Framework {
        return Err(TokenError::Invalid("framework roles apply to framework tokens only".into()));
    }
    if framework_roles.len() > 100 {
        return Err(TokenError::Invalid("at most 100 framework roles".into()));
    }
    for r in &framework_roles {
        if r.is_empty() || r.len() > 64 || r.contains(',') || r.chars().any(char::is_whitespace) {
            return Err(TokenError::Invalid(format!("framework role '{r}' must be 1 to 64 characters, no comma")));
        }
    }
    let token = crate::auth::generate_token();
    let record = crate::store::TokenRecord {
        id: crate::auth::generate_id("tok_"),
        name: name.to_owned(),
        role,
        framework_roles,
        hash: crate::auth::hash_token(&token),
        created_at: now_millis(),
        revoked_at: None,
    };
    store.create_token(&record).await?;
    Ok((record, token))
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

/// `GET /keel/v1/audit?limit=N&before=MILLIS`: the newest records first.
#[utoipa::path(
    get,
    path = "/keel/v1/audit",
    tag = "keel",
    description = "The audit record, newest first. Admins only.",
    params(
        ("limit" = Option<i64>, Query, description = "At most this many records, 1 to 10000 (default 100)"),
        ("before" = Option<i64>, Query, description = "Only records older than this (milliseconds since the epoch)"),
    ),
    responses(
        (status = 200, description = "The records", body = serde_json::Value),
        (status = 400, description = "A bad query", body = crate::gate::ErrorBody),
        (status = 422, description = "limit out of range", body = crate::gate::ErrorBody),
        (status = 503, description = "The store did not answer", body = crate::gate::ErrorBody),
    )
)]
async fn read_audit(State(gate): State<Gate>, Query(q): Query<AuditQuery>) -> Response {
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "limit must be 1 to 10000");
    }
    match gate.audit.read(limit, q.before).await {
        Ok(records) => axum::Json(records).into_response(),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A redirect to `to` that sets the session cookie to `value` for `max_age` seconds (0 clears it).
fn redirect_with_cookie(gate: &Gate, to: &str, value: &str, max_age: u64) -> Response {
    let mut r = Redirect::to(to).into_response();
    r.headers_mut().insert(header::SET_COOKIE, session_cookie(gate, value, max_age));
    r
}

fn session_cookie(gate: &Gate, value: &str, max_age: u64) -> HeaderValue {
    let secure = if gate.secure_cookie { "; Secure" } else { "" };
    let name = gate.cookie_name();
    let c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[derive(serde::Deserialize)]
struct HomeQuery {
    token: Option<String>,
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{title} · Keel</title></head>\
         <body><h1>{title}</h1>{body}</body></html>"
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `GET /`: exchanges a one-time login URL (`/?token=…`) for a session cookie; otherwise shows who is
/// signed in, or sends the browser to the login form.
#[utoipa::path(
    get,
    path = "/",
    tag = "console",
    description = "The console. With `?token=CODE` (the one-time link keel dev prints), opens a session.",
    params(("token" = Option<String>, Query, description = "A one-time login code")),
    responses(
        (status = 200, description = "The console", body = String, content_type = "text/html"),
        (status = 303, description = "To the console with a session, or to the login form"),
        (status = 401, description = "A used or unknown login code", body = String, content_type = "text/html"),
    )
)]
async fn home(State(gate): State<Gate>, Query(q): Query<HomeQuery>, headers: HeaderMap) -> Response {
    if let Some(code) = q.token {
        return match gate.auth.open_session_with_code(&code) {
            Ok((cookie, _)) => {
                let to = gate.landing.as_deref().unwrap_or("/");
                redirect_with_cookie(&gate, to, &cookie, crate::auth::SESSION_TTL.as_secs())
            }
            Err(_) => (
                StatusCode::UNAUTHORIZED,
                page("Sign in", "<p>That login link has been used or is not valid.</p><p><a href=/login>Sign in with a token</a></p>"),
            )
                .into_response(),
        };
    }
    match cookie(&headers, gate.cookie_name()).and_then(|c| gate.auth.session(c)) {
        Some(_) if gate.landing.is_some() => Redirect::to(gate.landing.as_deref().unwrap_or("/")).into_response(),
        Some(p) => page(
            "Keel",
            &format!(
                "<p>Signed in as <b>{}</b> ({}).</p><form method=post action=/logout><button>Sign out</button></form>",
                escape(&p.name),
                p.role
            ),
        )
        .into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

fn login_form_html(next: &str) -> String {
    format!(
        "<form method=post action=/login><input type=hidden name=next value=\"{}\"><p><label>Token \
         <input type=password name=token autocomplete=off autofocus></label></p><p><button>Sign in</button></p></form>",
        escape(next)
    )
}

#[utoipa::path(
    get,
    path = "/login",
    tag = "console",
    description = "The login form.",
    responses((status = 200, description = "The form", body = String, content_type = "text/html"))
)]
async fn login_form(Query(q): Query<LoginQuery>) -> Html<String> {
    page("Sign in", &login_form_html(safe_next(q.next.as_deref())))
}

/// The login form's field.
#[derive(serde::Deserialize, utoipa::ToSchema)]
struct LoginForm {
    /// A token.
    token: String,
    /// Where to go once signed in: a path on this server.
    next: Option<String>,
}

/// `POST /login` (a form with `token`): opens a session.
#[utoipa::path(
    post,
    path = "/login",
    tag = "console",
    description = "Opens a console session for a token (a form field `token`).",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in: a session cookie, and to the console"),
        (status = 401, description = "Not a valid token", body = String, content_type = "text/html"),
        (status = 403, description = "A foreign Origin", body = crate::gate::ErrorBody),
    )
)]
async fn login(State(gate): State<Gate>, body: axum::body::Bytes) -> Response {
    let form: Option<LoginForm> = serde_urlencoded_form(&body);
    let next = safe_next(form.as_ref().and_then(|f| f.next.as_deref())).to_owned();
    match form.map(|f| gate.auth.open_session_with_token(f.token.trim())) {
        Some(Ok((cookie, _))) => {
            let to = if next == "/" { gate.landing.clone().unwrap_or(next) } else { next };
            redirect_with_cookie(&gate, &to, &cookie, crate::auth::SESSION_TTL.as_secs())
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            page("Sign in", &format!("<p>That token is not valid.</p>{}", login_form_html(&next))),
        )
            .into_response(),
    }
}

fn serde_urlencoded_form(body: &[u8]) -> Option<LoginForm> {
    let field = |name: &str| form_urlencoded::parse(body).find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    Some(LoginForm { token: field("token")?, next: field("next") })
}

/// `POST /logout`: ends the session.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "console",
    description = "Ends the console session.",
    responses(
        (status = 303, description = "Signed out, to the login form"),
        (status = 403, description = "A foreign Origin", body = crate::gate::ErrorBody),
    )
)]
async fn logout(State(gate): State<Gate>, headers: HeaderMap) -> Response {
    if let Some(c) = cookie(&headers, gate.cookie_name()) {
        gate.auth.close_session(c);
    }
    redirect_with_cookie(&gate, "/login", "", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(classify(&Method::GET, "/health"), Class::Public);
        assert_eq!(classify(&Method::GET, "/v2/apps"), Class::Read);
        assert_eq!(classify(&Method::POST, "/v2/apps"), Class::Write);
        assert_eq!(classify(&Method::DELETE, "/v1/jobs/x"), Class::Write);
        assert_eq!(classify(&Method::GET, "/keel/v1/audit"), Class::Admin);
        assert_eq!(classify(&Method::POST, "/keel/v1/tokens"), Class::Admin);
        assert_eq!(classify(&Method::DELETE, "/v2/leader"), Class::Admin);
        assert_eq!(classify(&Method::GET, "/v2/leader"), Class::Read);
        assert_eq!(classify(&Method::GET, "/master/tasks/t1/files/stdout"), Class::TaskOutput);
        assert_eq!(classify(&Method::POST, "/api/v1/scheduler"), Class::Scheduler);
        assert_eq!(classify(&Method::GET, "/api/v1/scheduler"), Class::Read);
    }

    #[test]
    fn after_signing_in_only_this_server() {
        assert_eq!(safe_next(Some("/ui/apps?page=2")), "/ui/apps?page=2");
        for bad in
            ["//evil.example/x", "https://evil.example", "/\\evil.example", "ui", "", "/\t/evil.example", "/\n/x"]
        {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        for bad in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "json"] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_on_loopback_refuse_rebinding() {
        let p = HostPolicy::for_bind("127.0.0.1".parse().unwrap(), &["https://ops.example.com".into()], false);
        for ok in ["127.0.0.1:5050", "localhost:5050", "[::1]:5050", "ops.example.com", "10.0.0.1"] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.com:5050", "127.0.0.1.evil.com", "localhost.evil.com"] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
        let open = HostPolicy::for_bind("0.0.0.0".parse().unwrap(), &[], false);
        assert!(open.host_allowed("keel.internal:5050"));
        let unauthenticated = HostPolicy::for_bind("0.0.0.0".parse().unwrap(), &[], true);
        assert!(!unauthenticated.host_allowed("evil.example:5050"));
        assert!(unauthenticated.host_allowed("10.1.2.3:5050"));
    }

    #[test]
    fn origins() {
        let p = HostPolicy::for_bind("127.0.0.1".parse().unwrap(), &["https://ops.example.com/".into()], false);
        assert!(p.origin_allowed("http://127.0.0.1:5050", Some("127.0.0.1:5050")));
        assert!(p.origin_allowed("https://ops.example.com", Some("127.0.0.1:5050")));
        assert!(!p.origin_allowed("http://evil.com", Some("127.0.0.1:5050")));
        assert!(!p.origin_allowed("null", Some("127.0.0.1:5050")));
        assert!(!p.origin_allowed("http://127.0.0.1:5051", Some("127.0.0.1:5050")));
    }

    #[test]
    fn redaction_hides_env_values_but_not_secret_references() {
        let mut v = json!({
            "apps": [{ "id": "/a", "env": { "PASSWORD": "hunter2", "DB": { "secret": "db" } }, "cmd": "x" }],
            "environmentVariables": [{ "name": "K", "value": "v" }],
            "run": { "env": { "T": "t" } },
        });
        redact_secrets(&mut v);
        assert_eq!(v["apps"][0]["env"]["PASSWORD"], REDACTED);
        assert_eq!(v["apps"][0]["env"]["DB"], json!({ "secret": "db" }));
        assert_eq!(v["environmentVariables"][0]["value"], REDACTED);
        assert_eq!(v["environmentVariables"][0]["name"], "K");
        assert_eq!(v["run"]["env"]["T"], REDACTED);
        assert_eq!(v["apps"][0]["cmd"], "x");
    }
}

/// The description of auth's own routes and the console's login.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(whoami, list_tokens, create_token, revoke_token, read_audit),
    components(schemas(ErrorBody, NewToken, LoginForm)),
    tags((name = "keel", description = "Keel's own API"))
)]
pub struct GateApiDoc;

/// The description of the console's sign-in routes (the master's port only).
#[derive(utoipa::OpenApi)]
#[openapi(paths(home, login_form, login, logout), tags((name = "console", description = "The console's sign-in")))]
pub struct LoginApiDoc;

/// The JSON body of every error answer, for the API description.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub message: String,
}
