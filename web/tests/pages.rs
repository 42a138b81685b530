//! Every console page through `Router::oneshot`, with and without data, against the real master, services
//! and cron APIs served in this process (on SQLite, with no agents: apps and jobs exist, nothing runs).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use keel_core::auth::{Auth, Principal, Role};
use keel_core::client::Target;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The real APIs on one loopback port, as `keel dev` serves them (auth off), and the console over them.
struct Cluster {
    console: Router,
    base: String,
    _dir: tempfile::TempDir,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("k.db").display());
    let store = keel_core::store::Store::connect(&url).await.unwrap();
    let shutdown = CancellationToken::new();
    let (master, _) = keel_core::master::start(Default::default(), store.clone(), shutdown.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // No framework is subscribed (the schedulers point at a closed port): their APIs still answer.
    let apps = keel_marathon::store::AppStore::new(store.clone());
    let marathon = keel_marathon::scheduler::start("http://127.0.0.1:1", apps.clone(), shutdown.clone()).await.unwrap();
    let callbacks =
        keel_marathon::callbacks::Callbacks::start(apps.clone(), &marathon, shutdown.clone()).await.unwrap();
    let info = keel_marathon::api::ServiceInfo { leader: base.clone(), master: base.clone() };
    let jobs = keel_chronos::store::JobStore::new(store);
    let clock = keel_chronos::scheduler::Clock::System;
    let chronos =
        keel_chronos::scheduler::start("http://127.0.0.1:1", jobs.clone(), clock, shutdown.clone()).await.unwrap();
    let apis = keel_core::master::http::router(master)
        .merge(keel_marathon::api::router(keel_marathon::api::Api { apps, marathon, callbacks, info }))
        .merge(keel_chronos::api::router(keel_chronos::api::Api { jobs, chronos }));
    tokio::spawn(async move { axum::serve(listener, apis).await });
    let upstream = keel_web::Upstream::new(&Target::new(&base, None), Auth::off(), keel_web::same_port(&base));
    let console = keel_web::router(keel_web::Console::new(upstream, true));
    Cluster { console, base, _dir: dir, _shutdown: shutdown.drop_guard() }
}

struct Page {
    status: StatusCode,
    body: String,
}

async fn get_as(c: &Cluster, path: &str, role: Role) -> Page {
    let mut req = Request::get(path).body(Body::empty()).unwrap();
    req.extensions_mut().insert(Arc::new(Principal::new("someone", role)));
    let resp = c.console.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 8 << 20).await.unwrap();
    Page { status, body: String::from_utf8(bytes.to_vec()).unwrap() }
}

async fn get(c: &Cluster, path: &str) -> Page {
    get_as(c, path, Role::Operator).await
}

async fn api(c: &Cluster, method: &str, path: &str, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), format!("{}{path}", c.base));
    if !body.is_null() {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

async fn oneshot(c: &Cluster, req: Request<Body>) -> (StatusCode, Value) {
    let resp = c.console.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

const PAGES: [&str; 9] = [
    "/ui/",
    "/ui/agents",
    "/ui/frameworks",
    "/ui/tasks",
    "/ui/apps",
    "/ui/apps/new",
    "/ui/jobs",
    "/ui/jobs/new",
    "/ui/tasks?state=TASK_RUNNING&sort=-mem&page=3",
];

#[tokio::test]
async fn every_page_renders_without_data() {
    let c = cluster().await;
    for path in PAGES {
        let p = get(&c, path).await;
        assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.body);
        assert!(p.body.starts_with("<!DOCTYPE html>") && p.body.ends_with("</html>"), "{path}");
        assert!(!p.body.contains("class=\"error\""), "{path} shows an error: {}", p.body);
    }
    assert!(get(&c, "/ui/apps").await.body.contains("No apps yet"));
    assert!(get(&c, "/ui/jobs").await.body.contains("No jobs yet"));
    assert!(get(&c, "/ui/agents").await.body.contains("No agents yet"));
    assert!(get(&c, "/ui/tasks").await.body.contains("No tasks match"));
    assert!(get(&c, "/ui/").await.body.contains("Nothing has happened"));
    let missing = [
        ("/ui/apps/nope", "App '/nope' does not exist"),
        ("/ui/jobs/nope", "there is no job"),
        ("/ui/tasks/nope", "no task"),
    ];
    for (path, what) in missing {
        let p = get(&c, path).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{path}");
        assert!(p.body.contains(what), "{path} says why: {}", p.body);
    }
}

#[tokio::test]
async fn every_page_renders_with_data() {
    let c = cluster().await;
    let app = json!({"id": "/shop/web", "cmd": "exec sleep 3600", "cpus": 0.1, "mem": 32, "instances": 2});
    assert_eq!(api(&c, "POST", "/v2/apps", app).await.0, 201);
    assert_eq!(api(&c, "PUT", "/v2/apps/shop/web?force=true", json!({"cmd": "exec sleep 7200"})).await.0, 200);
    let job = json!({"id": "nightly", "run": {"cmd": "echo hi", "cpus": 0.1, "mem": 32, "disk": 0},
                     "schedules": [{"id": "default", "cron": "0 3 * * *", "timezone": "Europe/Paris"}]});
    assert_eq!(api(&c, "POST", "/v1/jobs", job).await.0, 201);
    let child = json!({"name": "report", "command": "echo report", "parents": ["nightly"], "cpus": 0.1, "mem": 32});
    assert!(api(&c, "POST", "/scheduler/dependency", child).await.0 < 300);

    let apps = get(&c, "/ui/apps").await.body;
    assert!(apps.contains("/shop/web") && apps.contains("0 of 2 running"), "{apps}");
    let page = get(&c, "/ui/apps/shop/web").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("exec sleep 7200") && page.body.contains("data-call=\"DELETE\""), "{}", page.body);
    // Two versions: their diff.
    let versions: Vec<String> =
        page.body.split("<option value=\"").skip(1).map(|s| s.split('"').next().unwrap().to_owned()).collect();
    assert!(versions.len() >= 2, "{versions:?}");
    let diff = get(&c, &format!("/ui/apps/shop/web?a={}&b={}", versions[1], versions[0])).await.body;
    assert!(diff.contains("<del>- ") && diff.contains("exec sleep 3600") && diff.contains("<ins>+ "), "{diff}");

    let jobs = get(&c, "/ui/jobs").await.body;
    assert!(jobs.contains("nightly") && jobs.contains("0 3 * * *") && jobs.contains("Europe/Paris"), "{jobs}");
    assert!(jobs.contains("<svg") && jobs.contains("aria-label=\"Job dependency graph\""), "{jobs}");
    let job = get(&c, "/ui/jobs/report").await;
    assert_eq!(job.status, StatusCode::OK);
    assert!(job.body.contains("never run") && job.body.contains("Run now"), "{}", job.body);
    let overview = get(&c, "/ui/").await.body;
    assert!(overview.contains("<span class=\"big\">1</span><span>apps</span>"), "{overview}");
    assert!(overview.contains("<span class=\"big\">2</span><span>jobs</span>"), "{overview}");

    // A viewer sees the same pages, without a single action.
    for path in ["/ui/apps", "/ui/apps/shop/web", "/ui/jobs", "/ui/jobs/nightly", "/ui/apps/new"] {
        let p = get_as(&c, path, Role::Viewer).await;
        assert_eq!(p.status, StatusCode::OK, "{path}");
        assert!(!p.body.contains("data-call"), "a viewer sees an action on {path}");
    }
}

#[tokio::test]
async fn actions_are_forwarded_to_the_apis() {
    let c = cluster().await;
    let app = json!({"id": "/web", "cmd": "exec sleep 3600", "cpus": 0.1, "mem": 32, "instances": 0});
    let req = Request::post("/ui/api/services/v2/apps")
        .header("content-type", "application/json")
        .body(Body::from(app.to_string()))
        .unwrap();
    assert_eq!(oneshot(&c, req).await.0, StatusCode::CREATED);
    assert_eq!(api(&c, "GET", "/v2/apps/web", Value::Null).await.0, 200);
    // The API's refusal comes back unchanged.
    let bad = Request::put("/ui/api/services/v2/apps/web").body(Body::from(r#"{"cpus": -1}"#)).unwrap();
    let (status, body) = oneshot(&c, bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["details"][0]["path"], "/cpus");
    let preview = "/ui/api/jobs/keel/v1/schedule/preview?cron=0%203%20*%20*%20*&timezone=Europe/Paris&count=5";
    let (_, body) = oneshot(&c, Request::get(preview).body(Body::empty()).unwrap()).await;
    assert_eq!(body["next"].as_array().map(Vec::len), Some(5), "{body}");
    let nowhere = Request::get("/ui/api/elsewhere/x").body(Body::empty()).unwrap();
    assert_eq!(oneshot(&c, nowhere).await.0, StatusCode::NOT_FOUND);
    let tail = Request::get("/ui/tasks/x/tail/etc-passwd").body(Body::empty()).unwrap();
    assert_eq!(oneshot(&c, tail).await.0, StatusCode::NOT_FOUND);
    for asset in ["/ui/assets/console.css", "/ui/assets/console.js"] {
        let resp = c.console.clone().oneshot(Request::get(asset).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{asset}");
    }
}

/// The frameworks page reads the master's `/keel/v1/frameworks`, where a framework's `tasks` is a count.
#[test]
fn the_frameworks_page_shows_each_frameworks_task_count() {
    let ctx =
        keel_web::pages::Ctx { name: "ops".into(), role: "admin".into(), may_write: true, csrf: None, open: false };
    let list = json!({ "frameworks": [
        { "id": "fw-1", "name": "marathon", "role": "*", "active": true, "connected": true, "tasks": 37,
          "offers": 2, "dominant_share": 0.25, "webui_url": "http://127.0.0.1:8080" },
        { "id": "fw-2", "name": "chronos", "role": "*", "active": true, "connected": false, "tasks": 0,
          "offers": 0, "dominant_share": 0.0, "webui_url": "" },
    ]});
    let html = keel_web::pages::frameworks(&ctx, &Ok(list), 1).into_string();
    assert!(html.contains(r#"<a href="/ui/tasks?framework=fw-1">37</a>"#), "{html}");
    assert!(html.contains(r#"<a href="/ui/tasks?framework=fw-2">0</a>"#), "{html}");
    assert!(html.contains("25.0 %") && html.contains("disconnected"), "{html}");
}
