//! A harness for end-to-end tests: real `keel master` and `keel agent` processes on loopback ports, real
//! stores (SQLite and PostgreSQL), and an in-process framework speaking the scheduler API.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_core::api::{Call, Event, Filters, FrameworkInfo, Offer};
use keel_core::ids::TaskId;
use keel_core::scheduler::{self, DriverEvent, SchedulerHandle};
use keel_core::task::{CommandSpec, TaskSpec, TaskState, TaskStatus};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// A store to run a scenario against.
pub struct Backend {
    pub name: &'static str,
    pub url: String,
    _dir: tempfile::TempDir,
}

/// SQLite always; PostgreSQL when configured (and always under CI).
pub async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("keel.db").display());
    let mut out = vec![Backend { name: "sqlite", url, _dir: dir }];
    if let Some(url) = keel_core::testing::postgres_database().await {
        out.push(Backend { name: "postgres", url, _dir: tempfile::tempdir().unwrap() });
    }
    out
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process that is killed when dropped, with its log kept in a file and shown if the test fails.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `keel ARGS…` with its log in `log`.
    pub fn spawn(args: &[&str], log: PathBuf) -> Proc {
        Self::spawn_as(args, log, None)
    }

    /// Starts `keel ARGS…` presenting `token` (`KEEL_TOKEN`).
    pub fn spawn_as(args: &[&str], log: PathBuf, token: Option<&str>) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(KEEL);
        if let Some(t) = token {
            command.env("KEEL_TOKEN", t);
        }
        let child = command
            .args(args)
            .env("KEEL_LOG", "info,keel_core=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn keel");
        Proc { child, log }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- last lines of {} ----", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A `keel dev` process, once it has printed its one-time login link: its URL, the link, its admin token and
/// its data directory.
pub struct DevProc {
    pub proc: Proc,
    pub base: String,
    pub link: String,
    pub token: String,
    pub data: PathBuf,
}

impl DevProc {
    /// Starts `keel dev --listen … --data-dir DIR/data --no-docker EXTRA…`.
    pub async fn start(dir: &Path, extra: &[&str]) -> DevProc {
        let listen = format!("127.0.0.1:{}", free_port());
        let data = dir.join("data");
        let mut args = vec!["dev", "--listen", &listen, "--data-dir", data.to_str().unwrap(), "--no-docker"];
        args.extend_from_slice(extra);
        let proc = Proc::spawn(&args, dir.join("dev.log"));
        let log = proc.log.clone();
        let link = wait_for("keel dev's login link", Duration::from_secs(60), || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .find_map(|l| l.split_once("(this sign-in link works once): ").map(|(_, u)| u.trim().to_owned()))
        })
        .await;
        let token = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_owned();
        DevProc { proc, base: format!("http://{listen}"), link, token, data }
    }
}

/// A master process and where it keeps things.
pub struct Master {
    pub proc: Proc,
    pub port: u16,
    pub db_url: String,
    pub agent_timeout: String,
    /// An admin token in the master's store, which the harness presents everywhere.
    pub token: String,
    dir: PathBuf,
}

/// Creates a token in the store at `db_url` with `keel token create`; returns it.
pub fn create_token(db_url: &str, role: &str, name: &str, extra: &[&str]) -> String {
    let out = Command::new(KEEL)
        .args(["token", "create", "--database-url", db_url, "--role", role, "--name", name])
        .args(extra)
        .output()
        .expect("run keel token create");
    assert!(out.status.success(), "keel token create failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Waits until the server at `base` knows `token` (a new token is seen within half a second).
pub async fn wait_token(base: &str, token: &str) {
    wait_for("a new token to be seen", Duration::from_secs(10), || async {
        (get(&format!("{base}/keel/v1/whoami"), token).await.ok()?.status() == 200).then_some(())
    })
    .await;
}

/// `req` with `token` as a bearer token.
pub fn authed(req: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    req.bearer_auth(token)
}

/// GET `url` presenting `token`.
pub async fn get(url: &str, token: &str) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new().get(url).bearer_auth(token).send().await
}

impl Master {
    pub async fn start(dir: &Path, db_url: &str, agent_timeout: &str) -> Master {
        Self::start_on(dir, free_port(), db_url, agent_timeout).await
    }

    pub async fn start_on(dir: &Path, port: u16, db_url: &str, agent_timeout: &str) -> Master {
        Self::start_with(dir, port, db_url, agent_timeout, &[]).await
    }

    /// Starts a master with extra command-line arguments.
    pub async fn start_with(dir: &Path, port: u16, db_url: &str, agent_timeout: &str, extra: &[&str]) -> Master {
        let token = create_token(db_url, "admin", &format!("test-admin-{}", uuid::Uuid::new_v4().simple()), &[]);
        Self::start_with_token(dir, port, db_url, agent_timeout, extra, token).await
    }

    async fn start_with_token(
        dir: &Path,
        port: u16,
        db_url: &str,
        agent_timeout: &str,
        extra: &[&str],
        token: String,
    ) -> Master {
        let listen = format!("127.0.0.1:{port}");
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let mut args = vec!["master", "--listen", &listen, "--database-url", db_url, "--agent-timeout", agent_timeout];
        args.extend_from_slice(extra);
        let proc = Proc::spawn(&args, dir.join(format!("master-{n}.log")));
        let m = Master {
            proc,
            port,
            db_url: db_url.into(),
            agent_timeout: agent_timeout.into(),
            token,
            dir: dir.to_owned(),
        };
        wait_for("master to serve /health", Duration::from_secs(20), || async { m.get("/health").await.ok() }).await;
        m
    }

    /// Kills the master and starts a new one on the same port and store.
    pub async fn restart(&mut self) {
        self.proc.kill();
        let (db, timeout, token) = (self.db_url.clone(), self.agent_timeout.clone(), self.token.clone());
        *self = Master::start_with_token(&self.dir, self.port, &db, &timeout, &[], token).await;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The master's address with the harness's admin token, for in-process drivers.
    pub fn target(&self) -> keel_core::client::Target {
        keel_core::client::Target::new(self.url(), Some(self.token.clone()))
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let resp = get(&format!("{}{path}", self.url()), &self.token).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    pub async fn state(&self) -> serde_json::Value {
        self.get("/master/state").await.expect("GET /master/state")
    }
}

/// An agent process.
pub struct Agent {
    pub proc: Proc,
    pub work_dir: PathBuf,
    token: String,
    master: String,
    resources: String,
    extra: Vec<String>,
}

impl Agent {
    pub async fn start(master: &Master, work_dir: &Path, resources: &str) -> Agent {
        Self::start_with(master, work_dir, resources, &[]).await
    }

    /// Starts an agent that presents `token` rather than the harness's admin token.
    pub async fn start_as(master: &Master, work_dir: &Path, resources: &str, token: &str) -> Agent {
        let a = Self::spawn(&master.url(), token, work_dir, resources, &[]);
        a.wait_registered(master).await;
        a
    }

    /// Starts an agent with extra command-line arguments.
    pub async fn start_with(master: &Master, work_dir: &Path, resources: &str, extra: &[&str]) -> Agent {
        let mut a = Self::spawn(&master.url(), &master.token, work_dir, resources, extra);
        a.extra = extra.iter().map(|s| s.to_string()).collect();
        a.wait_registered(master).await;
        a
    }

    fn spawn(master: &str, token: &str, work_dir: &Path, resources: &str, extra: &[&str]) -> Agent {
        std::fs::create_dir_all(work_dir).unwrap();
        let n = std::fs::read_dir(work_dir.parent().unwrap()).map(|d| d.count()).unwrap_or(0);
        let log = work_dir.parent().unwrap().join(format!("agent-{n}.log"));
        let mut args = vec!["agent", "--master", master, "--work-dir", work_dir.to_str().unwrap()];
        args.extend(["--resources", resources, "--attributes", "rack:r1"]);
        if !extra.contains(&"--default-user") {
            // The tests' directories are private to root, so tasks run as root unless a test says otherwise.
            args.extend(["--default-user", "root"]);
        }
        args.extend_from_slice(extra);
        let proc = Proc::spawn_as(&args, log, Some(token));
        Agent {
            proc,
            work_dir: work_dir.to_owned(),
            token: token.into(),
            master: master.into(),
            resources: resources.into(),
            extra: vec![],
        }
    }

    pub fn agent_id(&self) -> Option<String> {
        std::fs::read_to_string(self.work_dir.join("meta/agent_id")).ok()
    }

    pub async fn wait_registered(&self, master: &Master) {
        wait_for("agent to be active", Duration::from_secs(20), || async {
            let id = self.agent_id()?;
            let state = master.get("/master/state").await.ok()?;
            state["agents"].as_array()?.iter().find(|a| a["id"] == id.as_str() && a["status"] == "active").map(|_| ())
        })
        .await;
    }

    /// Kills the agent (SIGKILL) and starts it again on the same work directory.
    pub async fn restart(&mut self, master: &Master) {
        self.proc.kill();
        let extra = self.extra.clone();
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        *self = Self::spawn(&self.master, &self.token, &self.work_dir, &self.resources, &args);
        self.extra = extra;
        self.wait_registered(master).await;
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A task running `command` under sh.
pub fn task(id: &str, command: &str) -> TaskSpec {
    TaskSpec {
        id: TaskId::parse(id).unwrap(),
        name: id.into(),
        resources: "cpus:0.1;mem:16".parse().unwrap(),
        command: CommandSpec { value: command.into(), shell: true, ..Default::default() },
        labels: Default::default(),
        kill_grace: None,
        container: None,
        health_check: None,
        user: None,
    }
}

/// An in-process framework, driven by the test.
pub struct Framework {
    pub handle: SchedulerHandle,
    pub events: mpsc::Receiver<DriverEvent>,
    pub shutdown: CancellationToken,
    /// Offers seen and not used yet.
    pub offers: Vec<Offer>,
    /// Every update received, in order.
    pub updates: Vec<TaskStatus>,
    pub errors: Vec<String>,
    pub failures: Vec<String>,
    pub subscriptions: usize,
    /// Offers rescinded by the master.
    pub rescinded: Vec<String>,
    /// Acknowledge every update as it arrives (the default).
    pub auto_ack: bool,
}

impl Framework {
    pub async fn subscribe(master: &Master, name: &str, failover: Duration) -> Framework {
        let mut info = FrameworkInfo::new(name);
        info.failover_timeout = failover;
        let shutdown = CancellationToken::new();
        let (handle, events) = scheduler::start(master.target(), info, None, shutdown.clone());
        let mut f = Framework {
            handle,
            events,
            shutdown,
            offers: vec![],
            updates: vec![],
            errors: vec![],
            failures: vec![],
            subscriptions: 0,
            rescinded: vec![],
            auto_ack: true,
        };
        f.pump_until("SUBSCRIBED", Duration::from_secs(10), |f| f.subscriptions > 0).await;
        f
    }

    pub fn id(&self) -> String {
        self.handle.framework_id().unwrap().to_string()
    }

    /// Handles events until `done` holds: records them and acknowledges every update.
    pub async fn pump_until(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&Framework) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("timed out after {timeout:?} waiting for {what}; updates so far: {:#?}", self.updates)
                })
                .expect("driver stopped");
            self.record(event).await;
        }
    }

    /// Records every event that arrives within `window`, so that a test can assert on what did (or did
    /// not) happen in it.
    pub async fn drain_for(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(event) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            self.record(event.expect("driver stopped")).await;
        }
    }

    async fn record(&mut self, event: DriverEvent) {
        match event {
            DriverEvent::Event(Event::Subscribed { .. }) => {
                // Offers from before are void on a new subscription.
                self.offers.clear();
                self.subscriptions += 1;
            }
            DriverEvent::Event(Event::Offers(o)) => self.offers.extend(o),
            DriverEvent::Event(Event::Rescind(id)) => {
                self.offers.retain(|o| o.id != id);
                self.rescinded.push(id.to_string());
            }
            DriverEvent::Event(Event::Update(s)) => {
                if let (true, Some(uuid), Some(agent_id)) = (self.auto_ack, &s.uuid, &s.agent_id) {
                    let ack = Call::Acknowledge {
                        agent_id: agent_id.clone(),
                        task_id: s.task_id.clone(),
                        uuid: uuid.clone(),
                    };
                    let _ = self.handle.call(ack).await;
                }
                self.updates.push(s);
            }
            DriverEvent::Event(Event::Failure { agent_id }) => self.failures.push(agent_id.to_string()),
            DriverEvent::Event(Event::Error(m)) => self.errors.push(m),
            DriverEvent::Event(Event::Heartbeat) => {}
            DriverEvent::Disconnected(_) => self.offers.clear(),
            DriverEvent::Stopped(reason) => self.errors.push(format!("stopped: {reason}")),
        }
    }

    /// Waits for an offer that fits `spec` and launches it there.
    pub async fn launch(&mut self, spec: TaskSpec) -> Offer {
        let fits = |f: &Framework| f.offers.iter().any(|o| o.resources.contains(&spec.resources));
        self.pump_until("an offer that fits", Duration::from_secs(15), fits).await;
        let i = self.offers.iter().position(|o| o.resources.contains(&spec.resources)).unwrap();
        let offer = self.offers.remove(i);
        let call = Call::Accept {
            offer_ids: vec![offer.id.clone()],
            tasks: vec![spec],
            filters: Filters { refuse: Some(Duration::ZERO) },
        };
        self.handle.call(call).await.unwrap();
        offer
    }

    /// The latest update of a task, if any.
    pub fn last(&self, task: &str) -> Option<&TaskStatus> {
        self.updates.iter().rev().find(|s| s.task_id.as_str() == task)
    }

    /// Waits until the task's latest update is in `state`.
    pub async fn wait_state(&mut self, task: &str, state: TaskState, timeout: Duration) -> TaskStatus {
        let what = format!("{task} to be {state}");
        self.pump_until(&what, timeout, |f| f.last(task).is_some_and(|s| s.state == state)).await;
        self.last(task).unwrap().clone()
    }

    /// Waits until the task's latest update satisfies `pred`.
    pub async fn wait_state_where(
        &mut self,
        task: &str,
        timeout: Duration,
        pred: impl Fn(&TaskStatus) -> bool,
    ) -> TaskStatus {
        let what = format!("an update of {task} that matches");
        self.pump_until(&what, timeout, |f| f.last(task).is_some_and(&pred)).await;
        self.last(task).unwrap().clone()
    }

    pub async fn call(&self, call: Call) {
        self.handle.call(call).await.unwrap();
    }
}

impl Drop for Framework {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Reads a pid that a task wrote into its sandbox.
pub async fn task_pid(agent: &Agent, task: &str) -> i32 {
    wait_for("the task's pid file", Duration::from_secs(10), || async {
        let sandboxes = agent.work_dir.join("sandboxes");
        for fw in std::fs::read_dir(&sandboxes).ok()?.flatten() {
            if let Ok(pid) = std::fs::read_to_string(fw.path().join(task).join("pid")) {
                return pid.trim().parse().ok();
            }
        }
        None
    })
    .await
}

/// The contents of a sandbox file of a task.
pub fn sandbox_file(agent: &Agent, framework: &str, task: &str, file: &str) -> String {
    std::fs::read_to_string(agent.work_dir.join("sandboxes").join(framework).join(task).join(file)).unwrap_or_default()
}

/// Whether this machine's Docker engine answers. Under `CI=true` a missing engine fails the test; elsewhere
/// the test says it is skipped. Also builds the local test image when it is missing.
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !keel_core::testing::required(),
            "the Docker engine is not reachable but CI=true: Docker tests must run"
        );
        eprintln!("skipping: the Docker engine is not reachable");
        return false;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/busybox-image");
    let built = Command::new("bash").arg(script).arg(TEST_IMAGE).status().is_ok_and(|s| s.success());
    assert!(built, "cannot build {TEST_IMAGE} (is Debian's busybox-static installed?)");
    true
}

/// The image Docker tests run, built locally by `.ci/busybox-image`.
pub const TEST_IMAGE: &str = "keel-test/busybox:latest";

/// Runs `docker` with `args` and returns its trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("run docker");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A task that runs `command` in the test image.
pub fn docker_task(id: &str, command: &str) -> TaskSpec {
    let mut t = task(id, command);
    t.container = Some(keel_core::task::DockerSpec { image: TEST_IMAGE.into(), ..Default::default() });
    t
}

/// A framework process (`keel marathon` or `keel chronos`) on a port of its own, killed when dropped, with
/// its log shown if the test fails.
pub struct FrameworkProc {
    child: Child,
    pub url: String,
    port: u16,
    kind: &'static str,
    master: String,
    /// The token it presents to the master, and the harness presents to it.
    pub token: String,
    db: String,
    extra: Vec<String>,
    log: PathBuf,
}

impl FrameworkProc {
    /// Starts `keel KIND --master … --listen … --database-url DB EXTRA…` and waits for it to answer `/ping`.
    pub async fn start(kind: &'static str, master: &Master, db: &str, extra: &[&str], log: PathBuf) -> FrameworkProc {
        let extra = extra.iter().map(|s| s.to_string()).collect();
        Self::start_on(kind, free_port(), &master.url(), &master.token, db, extra, log).await
    }

    async fn start_on(
        kind: &'static str,
        port: u16,
        master: &str,
        token: &str,
        db: &str,
        extra: Vec<String>,
        log: PathBuf,
    ) -> FrameworkProc {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(KEEL)
            .env("KEEL_TOKEN", token)
            .args([kind, "--master", master, "--listen", &format!("127.0.0.1:{port}"), "--database-url", db])
            .args(&extra)
            .env("KEEL_LOG", format!("info,keel_{kind}=debug"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let f = FrameworkProc {
            child,
            url,
            port,
            kind,
            master: master.into(),
            token: token.into(),
            db: db.into(),
            extra,
            log,
        };
        wait_for(&format!("{kind} to answer /ping"), Duration::from_secs(40), || async {
            reqwest::get(format!("{}/ping", f.url)).await.ok().map(|_| ())
        })
        .await;
        f
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills it, and `down` later starts it again on the same port and store.
    pub async fn restart_after(&mut self, down: Duration) {
        self.kill();
        tokio::time::sleep(down).await;
        let log = self.log.with_extension("2.log");
        let (master, db, extra) = (self.master.clone(), self.db.clone(), self.extra.clone());
        let token = self.token.clone();
        *self = Self::start_on(self.kind, self.port, &master, &token, &db, extra, log).await;
    }

    /// Sends a request with an optional JSON body; answers the status and the JSON body (null if none).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for FrameworkProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}
