//! The web console: server-rendered pages (`/ui/...`) over the master's and the frameworks' public APIs.
//!
//! - Pages read through [`upstream::Upstream`], as the signed-in person: the console shows only what that
//!   person could read with the APIs directly.
//! - Actions go from the browser through `/ui/api/{master|services|jobs}/...`, which forwards them unchanged,
//!   again as that person; the port's gate has already checked the role and the session's CSRF token.
//! - Pages stay live through `/ui/events` ([`live`]): which topics changed, coalesced; the page fetches
//!   itself again and swaps its live regions.
//!
//! `core` knows nothing of this crate; the binary merges [`router`] into a port behind `gate::protect`.

pub mod live;
pub mod pages;
pub mod upstream;
pub mod view;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use axum::{Extension, Router};
use keel_core::auth::{Action, Principal};
use keel_core::gate::Csrf;
use maud::Markup;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::pages::Ctx;
pub use crate::upstream::{Service, Upstream};

const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");

/// The console of one port; cheap to clone.
#[derive(Clone)]
pub struct Console {
    upstream: Upstream,
    hub: live::Hub,
    open: bool,
}

impl Console {
    /// A console reading through `upstream`; `open` says auth is off on this port.
    pub fn new(upstream: Upstream, open: bool) -> Console {
        Console { upstream, hub: live::Hub::default(), open }
    }

    /// Starts following the APIs' event streams, until `shutdown`.
    pub fn start(self, shutdown: &CancellationToken) -> Console {
        self.hub.start(&self.upstream, shutdown);
        self
    }
}

type Who = Option<Extension<Arc<Principal>>>;

/// The console's routes, to be merged into a port's router before its gate.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/agents", get(agents))
        .route("/ui/frameworks", get(frameworks))
        .route("/ui/tasks", get(tasks))
        .route("/ui/tasks/{id}", get(task))
        .route("/ui/tasks/{id}/tail", get(tail))
        .route("/ui/apps", get(apps))
        .route("/ui/apps/new", get(new_app))
        .route("/ui/apps/{*id}", get(app))
        .route("/ui/jobs", get(jobs))
        .route("/ui/jobs/new", get(new_job))
        .route("/ui/jobs/{id}", get(job))
        .route("/ui/events", get(events))
        .route("/ui/assets/console.css", get(|| async { asset(CSS, "text/css; charset=utf-8") }))
        .route("/ui/assets/console.js", get(|| async { asset(JS, "text/javascript; charset=utf-8") }))
        .route("/ui/api/{service}/{*rest}", any(proxy))
        .with_state(console)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r
}

fn ctx(console: &Console, who: &Who, csrf: Option<Extension<Csrf>>) -> Ctx {
    let p = who.as_ref().map(|Extension(p)| p.clone()).unwrap_or_else(|| Arc::new(Principal::anonymous()));
    Ctx {
        name: p.name.clone(),
        role: p.role.to_string(),
        may_write: p.may(&Action::Write),
        csrf: csrf.map(|Extension(Csrf(c))| c),
        open: console.open,
    }
}

fn principal(who: &Who) -> Option<&Principal> {
    who.as_ref().map(|Extension(p)| p.as_ref())
}

/// A page: complete HTML, never cached (it shows live state).
fn page(markup: Markup) -> Response {
    page_with(StatusCode::OK, markup)
}

fn page_with(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, axum::response::Html(markup.into_string())).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(serde::Deserialize, Default)]
struct ListQuery {
    sort: Option<String>,
    page: Option<String>,
    state: Option<String>,
    agent: Option<String>,
    framework: Option<String>,
}

/// A page number from a query string: 1 when absent or not a number.
fn page_number(raw: &Option<String>) -> usize {
    raw.as_deref().and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).clamp(1, 1_000_000)
}

async fn overview(State(c): State<Console>, who: Who, csrf: Option<Extension<Csrf>>) -> Response {
    let p = principal(&who);
    let (state, apps, jobs) = tokio::join!(
        c.upstream.get(Service::Master, "/keel/v1/summary", p),
        c.upstream.get(Service::Services, "/v2/apps", p),
        c.upstream.get(Service::Jobs, "/v1/jobs", p),
    );
    let feed = c.hub.feed();
    let o = pages::Overview {
        state,
        apps: apps.map(|v| v["apps"].as_array().map_or(0, Vec::len)),
        jobs: jobs.map(|v| v.as_array().map_or(0, Vec::len)),
        feed: &feed,
    };
    page(pages::overview(&ctx(&c, &who, csrf), &o))
}

/// A page that shows one list of the master's state.
type StatePage = fn(&Ctx, &Result<Value, upstream::Failure>, usize) -> Markup;

async fn state_page(c: Console, who: Who, csrf: Option<Extension<Csrf>>, q: ListQuery, render: StatePage) -> Response {
    let state = c.upstream.get(Service::Master, "/master/state", principal(&who)).await;
    page(render(&ctx(&c, &who, csrf), &state, page_number(&q.page)))
}

async fn agents(
    State(c): State<Console>,
    who: Who,
    csrf: Option<Extension<Csrf>>,
    Query(q): Query<ListQuery>,
) -> Response {
    state_page(c, who, csrf, q, pages::agents).await
}

async fn frameworks(
    State(c): State<Console>,
    who: Who,
    csrf: Option<Extension<Csrf>>,
    Query(q): Query<ListQuery>,
) -> Response {
    // The frameworks alone, with their task counts: the whole state would copy every task.
    let list = c.upstream.get(Service::Master, "/keel/v1/frameworks", principal(&who)).await;
    page(pages::frameworks(&ctx(&c, &who, csrf), &list, page_number(&q.page)))
}

async fn tasks(
    State(c): State<Console>,
    who: Who,
    csrf: Option<Extension<Csrf>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let state = c.upstream.get(Service::Master, "/master/state", principal(&who)).await;
    let filter = pages::TaskFilter {
        state: q.state.unwrap_or_default(),
        agent: q.agent.unwrap_or_default(),
        framework: q.framework.unwrap_or_default(),
        sort: q.sort,
        page: page_number(&q.page),
    };
    page(pages::tasks(&ctx(&c, &who, csrf), &state, &filter))
}

#[derive(serde::Deserialize, Default)]
struct TaskQuery {
    framework_id: Option<String>,
}

/// The last this much of each output file is shown when a task's page opens.
const TAIL_BYTES: u64 = 16 * 1024;

async fn task(
    State(c): State<Console>,
    who: Who,
    csrf: Option<Extension<Csrf>>,
    Path(id): Path<String>,
    Query(q): Query<TaskQuery>,
) -> Response {
    let fw = q.framework_id.unwrap_or_default();
    let p = principal(&who);
    let fq = if fw.is_empty() { String::new() } else { format!("framework_id={}&", pages::segment(&fw)) };
    let tid = pages::segment(&id);
    let detail_path = format!("/keel/v1/tasks/{tid}?{fq}");
    let stdout_path = format!("/master/tasks/{tid}/files/stdout?{fq}length={TAIL_BYTES}");
    let stderr_path = format!("/master/tasks/{tid}/files/stderr?{fq}length={TAIL_BYTES}");
    let (detail, stdout, stderr) = tokio::join!(
        c.upstream.get(Service::Master, &detail_path, p),
        c.upstream.get(Service::Master, &stdout_path, p),
        c.upstream.get(Service::Master, &stderr_path, p),
    );
    let status = match &detail {
        Err(f) if f.status == StatusCode::NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    };
    let outputs = [("stdout", stdout), ("stderr", stderr)];
    page_with(status, pages::task(&ctx(&c, &who, csrf), &id, &fw, &detail, &outputs))
}

#[derive(serde::Deserialize, Default)]
struct TailQuery {
    framework_id: Option<String>,
    stdout: Option<u64>,
    stderr: Option<u64>,
}

/// How often a tail looks for more output: soon after output came, less often while none does.
const TAIL_FAST: std::time::Duration = std::time::Duration::from_millis(250);
const TAIL_SLOW: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a tail stands in each file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Offsets {
    stdout: u64,
    stderr: u64,
}

impl Offsets {
    /// As an SSE event id, which a reconnecting browser sends back in `Last-Event-ID`.
    fn id(self) -> String {
        format!("{}:{}", self.stdout, self.stderr)
    }

    fn parse(id: &str) -> Option<Offsets> {
        let (o, e) = id.split_once(':')?;
        Some(Offsets { stdout: o.parse().ok()?, stderr: e.parse().ok()? })
    }
}

/// `GET /ui/tasks/{id}/tail?stdout=N&stderr=M`: one stream of server-sent `output` events, each
/// `{"file", "data"}` with what stdout or stderr gained after those offsets, read through the master's files
/// API, as `tail -f` does (one stream for both files: a browser has few connections per host). It ends
/// (`end` event) once the task has ended, or is gone, and everything was sent.
async fn tail(
    State(c): State<Console>,
    who: Who,
    Path(id): Path<String>,
    Query(q): Query<TailQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let principal = who.map(|Extension(p)| p);
    let fq = q.framework_id.map(|f| format!("framework_id={}&", pages::segment(&f))).unwrap_or_default();
    let tid = pages::segment(&id);
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(Offsets::parse);
    let from = resumed.unwrap_or(Offsets { stdout: q.stdout.unwrap_or(0), stderr: q.stderr.unwrap_or(0) });
    let read_path = {
        let (tid, fq) = (tid.clone(), fq.clone());
        move |file: &str, offset: u64| format!("/master/tasks/{tid}/files/{file}?{fq}offset={offset}&length=65536")
    };
    let task_path = format!("/keel/v1/tasks/{tid}?{fq}");
    struct Tail {
        at: Offsets,
        wait: std::time::Duration,
        done: bool,
    }
    let start = Tail { at: from, wait: std::time::Duration::ZERO, done: false };
    let stream = futures::stream::unfold(start, move |mut t| {
        let (c, principal, read_path, task_path) = (c.clone(), principal.clone(), read_path.clone(), task_path.clone());
        async move {
            if t.done {
                return None;
            }
            loop {
                tokio::time::sleep(t.wait).await;
                let p = principal.as_deref();
                let (out_path, err_path) = (read_path("stdout", t.at.stdout), read_path("stderr", t.at.stderr));
                let (out, err) = tokio::join!(
                    c.upstream.get(Service::Master, &out_path, p),
                    c.upstream.get(Service::Master, &err_path, p),
                );
                let mut events = vec![];
                let mut failed = None;
                for (file, chunk, offset) in [("stdout", out, &mut t.at.stdout), ("stderr", err, &mut t.at.stderr)] {
                    match chunk {
                        Ok(chunk) => {
                            let data = chunk["data"].as_str().unwrap_or("");
                            if !data.is_empty() {
                                *offset = chunk["offset"].as_u64().unwrap_or(*offset) + data.len() as u64;
                                events.push(serde_json::json!({"file": file, "data": data}));
                            }
                        }
                        Err(f) if f.status == StatusCode::NOT_FOUND => {}
                        Err(f) => failed = Some(f),
                    }
                }
                if let Some(f) = failed {
                    t.done = true;
                    return Some((Ok(Event::default().event("failure").data(f.to_string())), t));
                }
                if !events.is_empty() {
                    t.wait = TAIL_FAST;
                    let ev = Event::default().event("output").id(t.at.id()).data(Value::from(events).to_string());
                    return Some((Ok::<_, std::convert::Infallible>(ev), t));
                }
                let task = c.upstream.get(Service::Master, &task_path, p).await;
                let ended = match &task {
                    Ok(d) => d["state"].as_str().is_some_and(is_terminal),
                    Err(f) => f.status == StatusCode::NOT_FOUND,
                };
                if ended {
                    t.done = true;
                    return Some((Ok(Event::default().event("end").data("the task has ended")), t));
                }
                t.wait = (t.wait * 2).clamp(TAIL_FAST, TAIL_SLOW);
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// Whether the master's name of a state is a terminal one (the core's rule, not a list of our own).
fn is_terminal(state: &str) -> bool {
    keel_core::task::TaskState::try_from(state.to_owned()).is_ok_and(|s| s.is_terminal())
}

async fn apps(
    State(c): State<Console>,
    who: Who,
    csrf: Option<Extension<Csrf>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let p = principal(&who);
    let (apps, queue) = tokio::join!(
        c.upstream.get(Service::Services, "/v2/apps?embed=apps.deployments&embed=apps.counts", p),
        c.upstream.get(Service::Services, "/v2/queue", p),
    );
    let queue = queue.unwrap_or(Value::Null);
    page(pages::apps(&ctx(&c, &who, csrf), &apps, &queue, q.sort.as_deref(), page_number(&q.page)))
}

async fn new_app(State(c): State<Console>, who: Who, csrf: Option<Extension<Csrf>>) -> Response {
    page(pages::new_app(&ctx(&c, &who, csrf)))
}

#[derive(serde::Deserialize, Default)]
struct DiffQuery {
    a: Option<String>,
    b: Option<String>,
}

async fn app(
    State(c): State<Console>,
    who: Who,
    csrf: Option<Extension<Csrf>>,
    Path(id): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Response {
    let id = format!("/{}", id.trim_matches('/'));
    let p = principal(&who);
    let path = pages::urlencode(&id);
    let (app_path, versions_path) =
        (format!("/v2/apps{path}?embed=app.deployments"), format!("/v2/apps{path}/versions"));
    let (app, versions, queue, deployments) = tokio::join!(
        c.upstream.get(Service::Services, &app_path, p),
        c.upstream.get(Service::Services, &versions_path, p),
        c.upstream.get(Service::Services, "/v2/queue", p),
        c.upstream.get(Service::Services, "/v2/deployments", p),
    );
    let deployments: Vec<Value> = deployments
        .ok()
        .and_then(|d| d.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["affectedApps"].as_array().is_some_and(|a| a.iter().any(|x| x == id.as_str())))
        .collect();
    let app = app.map(|mut v| v["app"].take());
    let mut versions: Vec<String> = versions
        .ok()
        .and_then(|v| {
            v["versions"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        })
        .unwrap_or_default();
    versions.sort_by(|a, b| b.cmp(a));
    let queue = queue.ok().and_then(|q| {
        q["queue"].as_array().and_then(|items| items.iter().find(|i| i["app"]["id"] == id.as_str()).cloned())
    });
    let diff = match q {
        DiffQuery { a: Some(a), b: Some(b) } if versions.contains(&a) && versions.contains(&b) => {
            let pa = format!("/v2/apps{path}/versions/{}", pages::segment(&a));
            let pb = format!("/v2/apps{path}/versions/{}", pages::segment(&b));
            let (va, vb) =
                tokio::join!(c.upstream.get(Service::Services, &pa, p), c.upstream.get(Service::Services, &pb, p));
            let pretty = |v: Result<Value, upstream::Failure>| {
                v.map(|v| serde_json::to_string_pretty(&pages::definition(&v)).unwrap_or_default())
                    .unwrap_or_else(|f| f.to_string())
            };
            Some((a, b, view::diff(&pretty(va), &pretty(vb))))
        }
        _ => None,
    };
    let status = match &app {
        Err(f) if f.status == StatusCode::NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    };
    let page_data = pages::AppPage { id: &id, app, versions, queue, diff, deployments };
    page_with(status, pages::app(&ctx(&c, &who, csrf), &page_data))
}

const JOB_EMBEDS: &str = "embed=activeRuns&embed=schedules&embed=historySummary&embed=keel";

async fn jobs(
    State(c): State<Console>,
    who: Who,
    csrf: Option<Extension<Csrf>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let jobs = c.upstream.get(Service::Jobs, &format!("/v1/jobs?{JOB_EMBEDS}"), principal(&who)).await;
    page(pages::jobs(&ctx(&c, &who, csrf), &jobs, page_number(&q.page)))
}

async fn new_job(State(c): State<Console>, who: Who, csrf: Option<Extension<Csrf>>) -> Response {
    page(pages::new_job(&ctx(&c, &who, csrf)))
}

async fn job(State(c): State<Console>, who: Who, csrf: Option<Extension<Csrf>>, Path(id): Path<String>) -> Response {
    let p = principal(&who);
    let jid = pages::segment(&id);
    let (all_path, history_path) = (format!("/v1/jobs?{JOB_EMBEDS}"), format!("/keel/v1/jobs/{jid}/runs?limit=50"));
    let (all, history) =
        tokio::join!(c.upstream.get(Service::Jobs, &all_path, p), c.upstream.get(Service::Jobs, &history_path, p));
    let (job, all) = match all {
        Ok(v) => {
            let all: Vec<Value> = v.as_array().cloned().unwrap_or_default();
            let job = all.iter().find(|j| j["id"] == id.as_str()).cloned().ok_or_else(|| upstream::Failure {
                status: StatusCode::NOT_FOUND,
                message: format!("there is no job '{id}'"),
                details: vec![],
            });
            (job, all)
        }
        Err(f) => (Err(f), vec![]),
    };
    let status = match &job {
        Err(f) if f.status == StatusCode::NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    };
    let page_data = pages::JobPage { id: &id, job, history, all };
    page_with(status, pages::job(&ctx(&c, &who, csrf), &page_data))
}

/// `GET /ui/events`: a `change` event naming the topics that changed, at most one per
/// [`live::COALESCE`]; nothing at all while nothing changes.
async fn events(State(c): State<Console>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let rx = c.hub.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let batch = live::next_batch(&mut rx).await?;
        Some((Ok::<_, std::convert::Infallible>(Event::default().event("change").data(batch.names())), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// The largest body the console forwards.
const MAX_FORWARD: usize = 2 << 20;

/// `ANY /ui/api/{master|services|jobs}/{path}`: the request, forwarded to that API as the signed-in
/// person; its answer comes back unchanged. The console can do nothing the API would not let them do.
async fn proxy(
    State(c): State<Console>,
    who: Who,
    Path((service, _)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Response {
    let Some(svc) = Service::parse(&service) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"message": format!("no API '{service}': master, services or jobs")})),
        )
            .into_response();
    };
    // The raw path after `/ui/api/{service}`, not the decoded one: what the browser asked for is what the
    // API gets.
    let rest = match req.uri().path().splitn(4, '/').nth(3).and_then(|r| r.split_once('/')) {
        Some((_, rest)) => format!("/{rest}"),
        None => "/".to_owned(),
    };
    let path = match q {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    let method = req.method().as_str().to_owned();
    let body = match axum::body::to_bytes(req.into_body(), MAX_FORWARD).await {
        Ok(b) if b.is_empty() => None,
        Ok(b) => Some(b.to_vec()),
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(serde_json::json!({"message": "the body is too large"})),
            )
                .into_response();
        }
    };
    match c.upstream.forward(svc, &method, &path, body, principal(&who)).await {
        Ok((status, bytes)) => {
            let mut r = (status, bytes).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(f) => (f.status, axum::Json(serde_json::json!({"message": f.message}))).into_response(),
    }
}

/// Where `keel dev` finds its frameworks: on its own port.
pub fn same_port(url: &str) -> HashMap<Service, String> {
    let url = url.trim_end_matches('/').to_owned();
    HashMap::from([(Service::Services, url.clone()), (Service::Jobs, url)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_offsets_round_trip_through_event_ids() {
        let o = Offsets { stdout: 12, stderr: 3 };
        assert_eq!(Offsets::parse(&o.id()), Some(o));
        for bad in ["", "12", "a:b", "1:2:3", "-1:0"] {
            assert_eq!(Offsets::parse(bad), None, "{bad}");
        }
    }
}
