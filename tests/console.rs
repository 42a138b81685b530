//! The web console in a real headless browser: Debian's chromium, driven through chromedriver with
//! fantoccini, against a running `keel dev`. Under `CI=true` a missing browser is a failure.
//!
//! `KEEL_SCREENSHOTS=DIR cargo test --test console screenshots -- --ignored` (what `.ci/screenshots` runs)
//! saves the main pages as PNG files in DIR.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Proc, free_port, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// chromedriver, and a browser session on it; both end when dropped.
struct Browser {
    client: Client,
    _driver: Proc,
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .chain([PathBuf::from("/usr/lib/chromium").join(n)])
            .find(|p| p.is_file())
    })
}

impl Browser {
    async fn start(dir: &Path) -> Option<Browser> {
        let (Some(driver), Some(chrome)) =
            (find_program(&["chromedriver"]), find_program(&["chromium", "chromium-browser", "google-chrome"]))
        else {
            assert!(!keel_core::testing::required(), "chromium and chromedriver are missing but CI=true: run .ci/test");
            eprintln!("skipping: chromium or chromedriver is not installed (.ci/test installs them)");
            return None;
        };
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start chromedriver");
        let driver = Proc { child, log };
        let url = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", LONG, || async { reqwest::get(format!("{url}/status")).await.ok().map(|_| ()) }).await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chrome,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--lang=en-US", format!("--user-data-dir={}", dir.join("chrome").display())],
            }),
        );
        // chromedriver is on loopback: plain HTTP, no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector).capabilities(caps).connect(&url).await.expect("a browser session");
        Some(Browser { client, _driver: driver })
    }
}

/// A running `keel dev`, its URL and admin token.
struct Dev {
    _proc: Proc,
    base: String,
    token: String,
    link: String,
    data: PathBuf,
    http: reqwest::Client,
}

impl Dev {
    async fn start(dir: &Path) -> Dev {
        let dev = common::DevProc::start(dir, &["--resources", "cpus:4;mem:4096;disk:8192;ports:[31000-31999]"]).await;
        let (base, token) = (dev.base, dev.token);
        let http = reqwest::Client::new();
        wait_for("keel dev to be healthy with its agent", LONG, || async {
            let s: Value =
                http.get(format!("{base}/master/state")).bearer_auth(&token).send().await.ok()?.json().await.ok()?;
            (s["agents"].as_array()?.len() == 1 && s["frameworks"].as_array()?.len() == 2).then_some(())
        })
        .await;
        Dev { _proc: dev.proc, base, token, link: dev.link, data: dev.data, http }
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// Signs the browser in through the one-time link `keel dev` prints.
async fn sign_in(b: &Browser, dev: &Dev) {
    b.client.goto(&dev.link).await.unwrap();
    let url = b.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/ui/", "the login link lands on the console");
}

/// Marks the page, so that a later check can tell it was not reloaded.
async fn mark(b: &Browser) {
    b.client.execute("window.__keelMark = 42;", vec![]).await.unwrap();
}

async fn still_marked(b: &Browser) -> bool {
    b.client.execute("return window.__keelMark === 42;", vec![]).await.unwrap() == json!(true)
}

/// The text of the first element matching `css`, or "" when there is none.
async fn text(b: &Browser, css: &str) -> String {
    let v = b
        .client
        .execute("const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", vec![json!(css)])
        .await
        .unwrap();
    v.as_str().unwrap_or_default().to_owned()
}

async fn wait_text(b: &Browser, what: &str, css: &str, want: impl Fn(&str) -> bool) -> String {
    wait_for(what, LONG, || async {
        let t = text(b, css).await;
        want(&t).then_some(t)
    })
    .await
}

async fn fill(b: &Browser, css: &str, value: &str) {
    let e = b.client.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn set_value(b: &Browser, css: &str, value: &str) {
    b.client
        .execute("document.querySelector(arguments[0]).value = arguments[1];", vec![json!(css), json!(value)])
        .await
        .unwrap();
}

async fn click(b: &Browser, css: &str) {
    b.client.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

/// The fields of an app's definition (what the editor round-trips) as the API answers them.
async fn definition(dev: &Dev, id: &str) -> serde_json::Map<String, Value> {
    let (_, v) = dev.api(reqwest::Method::GET, &format!("/v2/apps{id}"), None).await;
    let mut app = v["app"].as_object().cloned().unwrap();
    for k in keel_web::pages::COMPUTED.iter().chain(&["version"]) {
        app.remove(*k);
    }
    app
}

#[tokio::test]
async fn apps_are_created_scaled_and_edited_live() {
    let dir = tempfile::tempdir().unwrap();
    let Some(b) = Browser::start(dir.path()).await else { return };
    let dev = Dev::start(dir.path()).await;
    sign_in(&b, &dev).await;

    // Create from the form; a bad id is refused with the API's message next to the field.
    b.client.goto(&format!("{}/ui/apps/new", dev.base)).await.unwrap();
    fill(&b, "#f-id", "/Bad App!").await;
    fill(&b, "#f-cmd", "exec sleep 3600").await;
    click(&b, "form.app-form button[type=submit]").await;
    let err = wait_text(&b, "the id's validation message", ".field-error[data-path='/id']", |t| !t.is_empty()).await;
    assert!(err.to_lowercase().contains("id") || err.contains("path"), "message next to the id field: {err}");
    fill(&b, "#f-id", "/web").await;
    fill(&b, "#f-mem", "16").await;
    fill(&b, "#f-cpus", "0.05").await;
    click(&b, "form.app-form button[type=submit]").await;
    wait_for("the app's page", LONG, || async {
        (b.client.current_url().await.ok()?.path() == "/ui/apps/web").then_some(())
    })
    .await;

    // Its instance comes up without a reload.
    mark(&b).await;
    wait_text(&b, "one instance running", "#running", |t| t == "1").await;
    assert!(still_marked(&b).await, "the page updated in place");

    // Scale to 2: the count follows, without a reload.
    fill(&b, "#scale", "2").await;
    click(&b, "form[data-number='instances'] button[type=submit]").await;
    wait_text(&b, "two instances running", "#running", |t| t == "2").await;
    assert_eq!(text(&b, "#desired").await, "2");
    assert!(still_marked(&b).await, "scaling updated the page in place");

    // Edit the JSON: every field the API returned before is still there after.
    let before = definition(&dev, "/web").await;
    let shown = b.client.execute("return document.querySelector('#definition').value;", vec![]).await.unwrap();
    let mut edited: Value = serde_json::from_str(shown.as_str().unwrap()).unwrap();
    edited["env"] = json!({"GREETING": "hello"});
    edited["labels"] = json!({"team": "web"});
    set_value(&b, "#definition", &serde_json::to_string_pretty(&edited).unwrap()).await;
    click(&b, "form.editor button[type=submit]").await;
    let after = wait_for("the edit to be saved", LONG, || async {
        let d = definition(&dev, "/web").await;
        (d.get("env") == Some(&json!({"GREETING": "hello"}))).then_some(d)
    })
    .await;
    for (k, v) in &before {
        assert!(after.contains_key(k), "field {k} was dropped by the edit");
        if k != "env" && k != "labels" {
            assert_eq!(after.get(k), Some(v), "field {k} changed although it was not edited");
        }
    }
    assert_eq!(after["labels"], json!({"team": "web"}));

    // A bad edit: the API's validation message is shown by the editor (once the edit's deployment is
    // done: until then the API answers that the app is locked).
    wait_for("the edit's deployment to finish", LONG, || async {
        let (_, d) = dev.api(reqwest::Method::GET, "/v2/deployments", None).await;
        d.as_array()?.is_empty().then_some(())
    })
    .await;
    b.client.goto(&format!("{}/ui/apps/web", dev.base)).await.unwrap();
    let mut bad = edited.clone();
    bad["cpus"] = json!(-1);
    set_value(&b, "#definition", &bad.to_string()).await;
    click(&b, "form.editor button[type=submit]").await;
    let msg = wait_text(&b, "the editor's validation message", "form.editor .field-error", |t| !t.is_empty()).await;
    assert!(msg.contains("cpus"), "the API's message names the field: {msg}");
    assert_eq!(definition(&dev, "/web").await["cpus"], after["cpus"], "the bad edit changed nothing");
}

#[tokio::test]
async fn jobs_preview_run_now_and_show_history_with_output() {
    let dir = tempfile::tempdir().unwrap();
    let Some(b) = Browser::start(dir.path()).await else { return };
    let dev = Dev::start(dir.path()).await;
    sign_in(&b, &dev).await;
    b.client.goto(&format!("{}/ui/jobs/new", dev.base)).await.unwrap();
    fill(&b, "#j-id", "report").await;
    fill(&b, "#j-cmd", "echo report-output-line").await;
    fill(&b, "#j-mem", "16").await;
    fill(&b, "#j-tz", "America/New_York").await;
    fill(&b, "#j-cron", "30 6 * * *").await;
    let preview = wait_text(&b, "five fire times", "#preview", |t| t.contains("America/New_York")).await;
    let times = b
        .client
        .execute("return document.querySelectorAll('#preview ol.fire-times li').length;", vec![])
        .await
        .unwrap();
    assert_eq!(times, json!(5), "{preview}");
    assert!(preview.contains("T06:30:00-05:00") || preview.contains("T06:30:00-04:00"), "local times: {preview}");
    click(&b, "form.job-form button[type=submit]").await;
    wait_for("the job's page", LONG, || async {
        (b.client.current_url().await.ok()?.path() == "/ui/jobs/report").then_some(())
    })
    .await;
    mark(&b).await;
    click(&b, "button[data-url$='/runs']").await;
    let history = wait_text(&b, "the run in the history with its output", "#job-history", |t| {
        t.contains("success") && t.contains("report-output-line")
    })
    .await;
    assert!(history.contains("0"), "exit code shown: {history}");
    assert!(still_marked(&b).await, "the history updated in place");
}

#[tokio::test]
async fn agents_and_live_task_output() {
    let dir = tempfile::tempdir().unwrap();
    let Some(b) = Browser::start(dir.path()).await else { return };
    let dev = Dev::start(dir.path()).await;
    sign_in(&b, &dev).await;

    b.client.goto(&format!("{}/ui/agents", dev.base)).await.unwrap();
    let agents = text(&b, "#agents").await;
    assert!(agents.contains("4.00"), "the agent's cpus: {agents}");
    assert!(agents.contains("4.0 GiB"), "the agent's memory: {agents}");
    assert!(agents.contains("running") || agents.contains("active"), "its status: {agents}");

    let app = json!({"id": "/talker", "cmd": "echo first-line; sleep 6; echo after-open-line; echo err-after-open >&2; exec sleep 3600",
                     "cpus": 0.05, "mem": 16, "instances": 1});
    assert_eq!(dev.api(reqwest::Method::POST, "/v2/apps", Some(app)).await.0, 201);
    let task = wait_for("the task to run", LONG, || async {
        let (_, v) = dev.api(reqwest::Method::GET, "/v2/apps/talker/tasks", None).await;
        let t = v["tasks"].as_array()?.first()?.clone();
        (t["state"] == "TASK_RUNNING").then(|| t["id"].as_str().unwrap().to_owned())
    })
    .await;
    b.client.goto(&format!("{}/ui/tasks/{task}", dev.base)).await.unwrap();
    let first = text(&b, "pre#stdout").await;
    assert!(!first.contains("after-open-line"), "the line is printed after the page opened: {first}");
    mark(&b).await;
    wait_text(&b, "the line printed after the page opened", "pre#stdout", |t| t.contains("after-open-line")).await;
    wait_text(&b, "stderr, on the same stream", "pre#stderr", |t| t.contains("err-after-open")).await;
    assert!(still_marked(&b).await, "the output tailed in place");
    let history = text(&b, "#task-summary").await;
    assert!(history.contains("staging") && history.contains("running"), "status history: {history}");
}

#[tokio::test]
async fn viewers_see_no_actions_and_logout_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let Some(b) = Browser::start(dir.path()).await else { return };
    let dev = Dev::start(dir.path()).await;
    let app = json!({"id": "/web", "cmd": "exec sleep 3600", "cpus": 0.05, "mem": 16, "instances": 0});
    assert_eq!(dev.api(reqwest::Method::POST, "/v2/apps", Some(app)).await.0, 201);
    let db = format!("sqlite:{}", dev.data.join("keel.db").display());
    let viewer = common::create_token(&db, "viewer", "watcher", &[]);
    common::wait_token(&dev.base, &viewer).await;

    // Unsigned, a page sends the browser to the login form, and back after signing in.
    b.client.goto(&format!("{}/ui/apps/web", dev.base)).await.unwrap();
    assert_eq!(b.client.current_url().await.unwrap().path(), "/login");
    fill(&b, "input[name=token]", &viewer).await;
    click(&b, "form[action='/login'] button").await;
    wait_for("the app page", LONG, || async {
        (b.client.current_url().await.ok()?.path() == "/ui/apps/web").then_some(())
    })
    .await;
    let buttons = b
        .client
        .execute("return document.querySelectorAll('button[data-call], form[data-call]').length;", vec![])
        .await
        .unwrap();
    assert_eq!(buttons, json!(0), "a viewer sees no action");
    assert!(text(&b, ".who").await.contains("viewer"));
    // Even a forged call from the page is refused by the API.
    let status = b
        .client
        .execute_async(
            "fetch('/ui/api/services/v2/apps/web', {method: 'DELETE', headers: {'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}}).then(r => arguments[0](r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403), "a viewer's write through the console");

    click(&b, ".who form button").await;
    wait_for("the login form", LONG, || async {
        (b.client.current_url().await.ok()?.path() == "/login").then_some(())
    })
    .await;
    b.client.goto(&format!("{}/ui/", dev.base)).await.unwrap();
    assert_eq!(b.client.current_url().await.unwrap().path(), "/login", "signed out: the session has ended");
}

/// Saves the main pages as PNG files in `KEEL_SCREENSHOTS` (run by `.ci/screenshots`).
#[tokio::test]
#[ignore = "writes docs/screenshots: run by .ci/screenshots"]
async fn screenshots() {
    let out = PathBuf::from(std::env::var("KEEL_SCREENSHOTS").expect("KEEL_SCREENSHOTS names the directory"));
    std::fs::create_dir_all(&out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = Browser::start(dir.path()).await.expect("a browser");
    let dev = Dev::start(dir.path()).await;
    sign_in(&b, &dev).await;
    let post = |path: &'static str, body: Value| {
        let dev = &dev;
        async move { assert!(dev.api(reqwest::Method::POST, path, Some(body)).await.0 < 300) }
    };
    post("/v2/apps", json!({"id": "/shop/web", "cmd": "while true; do echo serving request $RANDOM; sleep 1; done", "cpus": 0.1, "mem": 64, "instances": 3})).await;
    post("/v2/apps", json!({"id": "/shop/worker", "cmd": "exec sleep 3600", "cpus": 0.2, "mem": 128, "instances": 2}))
        .await;
    post("/v2/apps", json!({"id": "/batch/big", "cmd": "exec sleep 3600", "cpus": 64, "mem": 64, "instances": 1}))
        .await;
    post(
        "/v1/jobs",
        json!({"id": "extract", "run": {"cmd": "echo extracted 120 rows", "cpus": 0.1, "mem": 32, "disk": 0},
        "schedules": [{"id": "default", "cron": "0 2 * * *", "timezone": "Europe/Paris"}]}),
    )
    .await;
    post(
        "/scheduler/dependency",
        json!({"name": "load", "command": "echo loaded", "parents": ["extract"], "cpus": 0.1, "mem": 32}),
    )
    .await;
    post("/v1/jobs/extract/runs", json!({})).await;
    let (_, v) = wait_for("the web app's tasks", LONG, || async {
        let r = dev.api(reqwest::Method::GET, "/v2/apps/shop/web/tasks", None).await;
        (r.1["tasks"].as_array()?.len() == 3 && r.1["tasks"][0]["state"] == "TASK_RUNNING").then_some(r)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let task = v["tasks"][0]["id"].as_str().unwrap().to_owned();
    for (name, path) in [
        ("overview", "/ui/".to_owned()),
        ("apps", "/ui/apps".to_owned()),
        ("app", "/ui/apps/shop/web".to_owned()),
        ("jobs", "/ui/jobs".to_owned()),
        ("job", "/ui/jobs/load".to_owned()),
        ("task", format!("/ui/tasks/{task}")),
    ] {
        b.client.goto(&format!("{}{path}", dev.base)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        let png = b.client.screenshot().await.unwrap();
        std::fs::write(out.join(format!("{name}.png")), png).unwrap();
        println!("saved {}", out.join(format!("{name}.png")).display());
    }
}

/// `keel master` serves the console too, and reaches frameworks that run as processes of their own at the
/// web UI URLs they registered; actions through it are the caller's, checked by the frameworks.
#[tokio::test]
async fn the_master_console_reaches_frameworks_on_their_own_ports() {
    let dir = tempfile::tempdir().unwrap();
    let db = |name: &str| format!("sqlite:{}", dir.path().join(name).display());
    let master = common::Master::start(dir.path(), &db("master.db"), "10s").await;
    let marathon =
        common::FrameworkProc::start("marathon", &master, &db("marathon.db"), &[], dir.path().join("marathon.log"))
            .await;
    let chronos =
        common::FrameworkProc::start("chronos", &master, &db("chronos.db"), &[], dir.path().join("chronos.log")).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let token = master.token.clone();

    // Through the master's console, as the caller: the app is created on the services framework's port.
    let app = json!({"id": "/web", "cmd": "exec sleep 3600", "cpus": 0.1, "mem": 16, "instances": 0});
    wait_for("the services framework to register its URL", LONG, || async {
        let r = http
            .post(format!("{}/ui/api/services/v2/apps", master.url()))
            .bearer_auth(&token)
            .json(&app)
            .send()
            .await
            .ok()?;
        (r.status() == 201).then_some(())
    })
    .await;
    assert_eq!(
        http.get(format!("{}/v2/apps/web", marathon.url)).bearer_auth(&token).send().await.unwrap().status(),
        200
    );
    let job = json!({"id": "nightly", "run": {"cmd": "echo hi", "cpus": 0.1, "mem": 16, "disk": 0}});
    let r = http.post(format!("{}/v1/jobs", chronos.url)).bearer_auth(&token).json(&job).send().await.unwrap();
    assert_eq!(r.status(), 201);

    let page = |path: &'static str| {
        let (http, token, base) = (&http, &token, master.url());
        async move { http.get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap().text().await.unwrap() }
    };
    assert!(page("/ui/apps").await.contains("href=\"/ui/apps/web\""));
    let jobs = wait_for("the jobs page to list the job", LONG, || async {
        Some(page("/ui/jobs").await).filter(|p| p.contains("nightly"))
    })
    .await;
    assert!(!jobs.contains("class=\"error\""), "{jobs}");
    let frameworks = page("/ui/frameworks").await;
    assert!(frameworks.contains(&marathon.url) && frameworks.contains(&chronos.url), "web UI links: {frameworks}");

    // Without a credential: a browser goes to the login form; an API client gets 401.
    let browser = http.get(format!("{}/ui/apps", master.url())).header("accept", "text/html").send().await.unwrap();
    assert_eq!(browser.status(), 303);
    assert_eq!(browser.headers()["location"], "/login?next=%2Fui%2Fapps");
    assert_eq!(http.get(format!("{}/ui/apps", master.url())).send().await.unwrap().status(), 401);
    let viewer = common::create_token(&db("master.db"), "viewer", "watcher", &[]);
    common::wait_token(&master.url(), &viewer).await;
    let r =
        http.delete(format!("{}/ui/api/services/v2/apps/web", master.url())).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(r.status(), 403, "a viewer cannot write through the console");
}
