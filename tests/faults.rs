//! Fault tests across real network hosts. Each Keel process runs on a host of its own: a network namespace
//! with a veth pair into a switch namespace (a bridge), and PostgreSQL runs on the machine itself, reached
//! through the switch. The test then SIGKILLs leaders, cuts an agent off, cuts the leading master off the
//! database only, restarts PostgreSQL, kills a framework leader during a rolling deployment and just before a
//! cron tick, and `docker kill`s a task's container. After each fault it checks the invariants:
//! - every app converges back to its desired instances, and no deployment is left behind;
//! - no task id runs twice (each task appends its id to a file the hosts share);
//! - two masters never lead at once;
//! - every cron tick ran exactly once or is recorded as missed;
//! - the APIs and the console answer again.
//!
//! The test stands in for systemd (`Restart=always`): a process that exits is started again, as a standby.
//! It needs root (namespaces); under `CI=true` a machine without them fails the test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{KEEL, wait_for};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);
const APP_INSTANCES: usize = 4;
const AGENT_RESOURCES: &str = "cpus:8;mem:8192;disk:8192;ports:[31000-31999]";

/// Runs a command that must succeed.
fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A private network: a switch namespace with a bridge, the machine itself on it (PostgreSQL's side), and
/// one namespace per host. Removed, with every process in it, when dropped.
struct Net {
    tag: String,
    /// The third octet of 10.77.X.0/24 (hosts) and of 10.78.X.1 (the database's address).
    x: u8,
    switch: String,
    hosts: Vec<String>,
}

/// A host on the network.
#[derive(Clone)]
struct Host {
    ns: String,
    ip: String,
    /// Its port on the switch.
    port: String,
}

impl Net {
    /// The network, or `None` (said) where namespaces cannot be made outside CI.
    fn create() -> Option<Net> {
        let pid = std::process::id();
        let tag = format!("{:04x}", pid & 0xffff);
        let probe = format!("kf{tag}-probe");
        let ok = Command::new("ip").args(["netns", "add", &probe]).status().is_ok_and(|s| s.success());
        if !ok {
            assert!(!keel_core::testing::required(), "network namespaces are needed (root and iproute2) but CI=true");
            eprintln!("skipping the fault suite: cannot make network namespaces here (run as root)");
            return None;
        }
        sh(&["ip", "netns", "del", &probe]);
        let net = Net { tag: tag.clone(), x: 100 + (pid % 100) as u8, switch: format!("kf{tag}-sw"), hosts: vec![] };
        let sw = net.switch.as_str();
        sh(&["ip", "netns", "add", sw]);
        sh(&["ip", "-n", sw, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", sw, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", sw, "link", "set", "br0", "up"]);
        let me = net.machine_link();
        sh(&["ip", "link", "add", &me, "type", "veth", "peer", "name", "up0", "netns", sw]);
        sh(&["ip", "-n", sw, "link", "set", "up0", "master", "br0", "up"]);
        sh(&["ip", "addr", "add", &format!("10.77.{}.1/24", net.x), "dev", &me]);
        sh(&["ip", "addr", "add", &format!("{}/32", net.db_ip()), "dev", &me]);
        sh(&["ip", "link", "set", &me, "up"]);
        Some(net)
    }

    fn machine_link(&self) -> String {
        format!("kf{}m", self.tag)
    }

    /// Where PostgreSQL listens: an address of the machine that hosts reach through the switch, and that
    /// a host can be cut off from alone.
    fn db_ip(&self) -> String {
        format!("10.78.{}.1", self.x)
    }

    /// Adds host number `i` (1..=99), named `name`.
    fn host(&mut self, name: &str, i: u8) -> Host {
        let ns = format!("kf{}-{name}", self.tag);
        let port = format!("p{i}");
        let ip = format!("10.77.{}.{}", self.x, 10 + i);
        sh(&["ip", "netns", "add", &ns]);
        self.hosts.push(ns.clone());
        sh(&["ip", "-n", &self.switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        sh(&["ip", "-n", &self.switch, "link", "set", &port, "master", "br0", "up"]);
        sh(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &ns, "route", "add", &format!("{}/32", self.db_ip()), "via", &format!("10.77.{}.1", self.x)]);
        Host { ns, ip, port }
    }

    /// Cuts `host` off the network (its switch port goes down), or joins it again.
    fn link(&self, host: &Host, up: bool) {
        sh(&["ip", "-n", &self.switch, "link", "set", &host.port, if up { "up" } else { "down" }]);
    }

    /// Cuts `host` off the database only (its packets to it are dropped), or restores the route.
    fn database_route(&self, host: &Host, up: bool) {
        let db = format!("{}/32", self.db_ip());
        if up {
            sh(&["ip", "-n", &host.ns, "route", "replace", &db, "via", &format!("10.77.{}.1", self.x)]);
        } else {
            sh(&["ip", "-n", &host.ns, "route", "replace", "blackhole", &db]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let pids = Command::new("ip").args(["netns", "pids", ns]).output().map(|o| o.stdout).unwrap_or_default();
            for pid in String::from_utf8_lossy(&pids).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.switch]).status();
        let _ = Command::new("ip").args(["link", "del", &self.machine_link()]).status();
    }
}

/// A PostgreSQL server of the test's own, on the database address, so that it can be restarted.
struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    url: String,
}

impl Postgres {
    fn start(listen: &str) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|b| b.is_dir()).max())
            .expect("PostgreSQL's server binaries (Debian's postgresql package; .ci/test installs it)");
        let dir = tempfile::tempdir().unwrap();
        sh(&["chown", "postgres", dir.path().to_str().unwrap()]);
        let pg = Postgres { bin, dir, url: format!("postgres://postgres@{listen}:5432/postgres") };
        pg.as_postgres("initdb", &["-D", &pg.data(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        // The hosts connect from the test's private subnet.
        let hba = Path::new(&pg.data()).join("pg_hba.conf");
        let mut conf = std::fs::read_to_string(&hba).unwrap();
        conf.push_str("host all all 10.77.0.0/16 trust\nhost all all 10.78.0.0/16 trust\n");
        std::fs::write(&hba, conf).unwrap();
        let opts = format!(
            "-p 5432 -k {} -c listen_addresses={listen} -c fsync=off -c max_connections=200",
            pg.dir.path().display()
        );
        pg.as_postgres("pg_ctl", &["-D", &pg.data(), "-l", &pg.log(), "-w", "-o", &opts, "start"]);
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.path().join("server.log").display().to_string()
    }

    fn as_postgres(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut all = vec!["runuser", "-u", "postgres", "--", program.to_str().unwrap()];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// A fast restart: connections are closed, and the server is back when this returns.
    fn restart(&self) {
        // With its log file: a server started by pg_ctl would otherwise hold this process's pipes open.
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-l", &self.log(), "-m", "fast", "-w", "restart"]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", program.to_str().unwrap(), "-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A Keel process on a host, started again whenever it exits, as systemd's `Restart=always` would.
struct Service {
    name: String,
    host: Host,
    args: Vec<String>,
    token: String,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Service {
    fn spawn(&mut self) {
        let log = std::fs::File::options().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.host.ns, KEEL])
            .args(&self.args)
            .env("KEEL_TOKEN", &self.token)
            .env("KEEL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn keel in a namespace");
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL, as a crash would; the supervisor starts it again.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every service, and the thread that restarts those that exit.
struct Supervisor {
    services: Arc<Mutex<BTreeMap<String, Service>>>,
}

impl Supervisor {
    fn new() -> Supervisor {
        let s = Supervisor { services: Arc::default() };
        let services = Arc::downgrade(&s.services);
        std::thread::spawn(move || {
            while let Some(all) = services.upgrade() {
                for svc in all.lock().unwrap_or_else(PoisonError::into_inner).values_mut() {
                    let exited = match svc.child.as_mut() {
                        None => true,
                        Some(c) => c.try_wait().ok().flatten().is_some(),
                    };
                    if exited {
                        svc.spawn();
                    }
                }
                drop(all);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        s
    }

    fn add(&self, name: &str, host: &Host, args: &[&str], token: &str, dir: &Path) {
        let mut svc = Service {
            name: name.to_owned(),
            host: host.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            token: token.to_owned(),
            log: dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        };
        svc.spawn();
        self.services.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), svc);
    }

    fn kill(&self, name: &str) {
        self.services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(name)
            .expect("a service of that name")
            .kill();
    }

    fn starts(&self, name: &str) -> u32 {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)[name].starts
    }

    /// Kills everything and shows the logs' tails if the test is failing.
    fn stop(&self) {
        let mut all = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        for svc in all.values_mut() {
            svc.kill();
            if std::thread::panicking() {
                let log = std::fs::read_to_string(&svc.log).unwrap_or_default();
                eprintln!("---- last lines of {} ({} starts) ----", svc.name, svc.starts);
                for l in log.lines().rev().take(40).collect::<Vec<_>>().iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        all.clear();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes the Docker containers the agents under `dirs` started, when dropped (the agents are killed
/// before they could).
struct Containers(Vec<PathBuf>);

impl Drop for Containers {
    fn drop(&mut self) {
        for dir in &self.0 {
            let Ok(id) = std::fs::read_to_string(dir.join("meta/agent_id")) else { continue };
            // Best effort, and never a panic while unwinding: the engine may be gone.
            let filter = format!("label=keel.agent_id={}", id.trim());
            let Ok(out) = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() else { continue };
            for c in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", c]).output();
            }
        }
    }
}

/// The cluster under test, as its clients see it.
struct Cluster {
    http: reqwest::Client,
    token: String,
    masters: Vec<String>,
    marathons: Vec<String>,
    chronoses: Vec<String>,
    dir: PathBuf,
}

impl Cluster {
    async fn get(&self, url: impl AsRef<str>) -> Option<Value> {
        let r = self.http.get(url.as_ref()).bearer_auth(&self.token).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    async fn send(&self, method: reqwest::Method, url: &str, body: Value) -> (u16, Value) {
        let r = self.http.request(method, url).bearer_auth(&self.token).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Those of `urls` that say they are elected (`path`: where they say so), by index.
    async fn leading(&self, urls: &[String], path: &str) -> Vec<usize> {
        self.terms(urls, path).await.into_iter().map(|(i, _)| i).collect()
    }

    /// Those of `urls` that say they are elected, with their terms.
    async fn terms(&self, urls: &[String], path: &str) -> Vec<(usize, i64)> {
        let mut out = vec![];
        for (i, u) in urls.iter().enumerate() {
            if let Some(v) = self.get(&format!("{u}{path}")).await
                && v["elected"] == true
            {
                out.push((i, v["term"].as_i64().unwrap_or_default()));
            }
        }
        out
    }

    /// The one of `urls` that leads and serves: elected, and past recovering its state (its `/health`
    /// answers 200 as the leader, not as a standby or while starting).
    async fn leader(&self, urls: &[String], path: &str, what: &str) -> String {
        let i = wait_for(what, LONG, || async {
            let l = self.leading(urls, path).await;
            let health = self.get(format!("{}/health", urls[*l.first()?])).await?;
            (l.len() == 1 && health["standby"] != true).then(|| l[0])
        })
        .await;
        urls[i].clone()
    }

    async fn master(&self) -> String {
        self.leader(&self.masters, "/master/leader", "one master to lead").await
    }

    async fn marathon(&self) -> String {
        self.leader(&self.marathons, "/keel/v1/leader", "one services framework to lead").await
    }

    async fn chronos(&self) -> String {
        self.leader(&self.chronoses, "/keel/v1/leader", "one cron framework to lead").await
    }

    /// The app's running tasks `(id, host, version, healthy)` and whether a deployment runs, from the
    /// leading services framework.
    async fn app(&self, id: &str) -> Option<(Vec<(String, String, String)>, bool)> {
        let leader = self.leading(&self.marathons, "/keel/v1/leader").await;
        let url = self.marathons.get(*leader.first()?)?;
        let app = self.get(&format!("{url}/v2/apps/{id}?embed=apps.tasks&embed=apps.deployments")).await?;
        let tasks = app["app"]["tasks"].as_array()?;
        let running = tasks
            .iter()
            .filter(|t| t["state"] == "TASK_RUNNING")
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
                (s("id"), s("host"), s("version"))
            })
            .collect();
        Some((running, !app["app"]["deployments"].as_array()?.is_empty()))
    }

    /// Waits until `app` runs exactly `n` tasks, of its current version, with no deployment; answers them.
    async fn converged(&self, app: &str, n: usize, what: &str) -> Vec<(String, String, String)> {
        wait_for(&format!("{app} to converge to {n} running tasks ({what})"), LONG, || async {
            let (running, deploying) = self.app(app).await?;
            let leader = self.leading(&self.marathons, "/keel/v1/leader").await;
            let url = self.marathons.get(*leader.first()?)?;
            let version = self.get(&format!("{url}/v2/apps/{app}")).await?["app"]["version"].as_str()?.to_owned();
            (running.len() == n && !deploying && running.iter().all(|t| t.2 == version)).then_some(running)
        })
        .await
    }

    /// No task id was launched twice: each process task appended its id to `launches` when it started.
    fn no_task_ran_twice(&self) {
        for file in ["launches", "ticks"] {
            let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            let mut seen = BTreeSet::new();
            for id in text.lines() {
                assert!(seen.insert(id), "task {id} ran twice ({file}):\n{text}");
            }
        }
    }

    /// The APIs and the console answer through the leaders.
    async fn everything_answers(&self) {
        let master = self.master().await;
        for path in ["/master/state", "/keel/v1/summary", "/keel/v1/frameworks"] {
            wait_for(&format!("{path} to answer"), LONG, || self.get(format!("{master}{path}"))).await;
        }
        let ui = self.http.get(format!("{master}/ui/")).bearer_auth(&self.token).send().await.unwrap();
        assert_eq!(ui.status(), 200, "the console answers");
        // The console finds the frameworks among those registered with the master (`/keel/v1/frameworks`).
        for path in ["/ui/api/services/v2/apps", "/ui/api/jobs/v1/jobs"] {
            wait_for(&format!("the console's {path} to answer"), LONG, || self.get(format!("{master}{path}"))).await;
        }
        let marathon = self.marathon().await;
        wait_for("/v2/apps to answer", LONG, || self.get(format!("{marathon}/v2/apps"))).await;
        let chronos = self.chronos().await;
        wait_for("/v1/jobs to answer", LONG, || self.get(format!("{chronos}/v1/jobs"))).await;
    }

    /// Every tick of the `tick` job from the first to the last recorded is there once, and each task it
    /// launched ran once. Answers how many ticks there were, and how many were missed.
    async fn ticks_once(&self, every_ms: i64) -> (usize, usize) {
        let chronos = self.chronos().await;
        let body =
            wait_for("the tick job's runs", LONG, || self.get(format!("{chronos}/keel/v1/jobs/tick/runs?limit=1000")))
                .await;
        let mut at: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
        for r in body["runs"].as_array().unwrap() {
            let t = chrono::DateTime::parse_from_rfc3339(r["scheduledAt"].as_str().unwrap()).unwrap();
            at.entry(t.timestamp_millis()).or_default().push(r.clone());
        }
        for (t, runs) in &at {
            assert_eq!(runs.len(), 1, "tick {t} recorded {} times: {runs:#?}", runs.len());
            assert_eq!(t % every_ms, 0, "a tick off the schedule: {runs:#?}");
        }
        let (first, last) = (*at.keys().next().unwrap(), *at.keys().last().unwrap());
        let expected = ((last - first) / every_ms + 1) as usize;
        assert_eq!(at.len(), expected, "ticks are missing between {first} and {last}: {:?}", at.keys());
        let missed = at.values().filter(|r| r[0]["status"] == "MISSED").count();
        self.no_task_ran_twice();
        (at.len(), missed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_across_hosts_lose_nothing_and_converge() {
    let Some(mut net) = Net::create() else { return };
    let docker = common::docker_available();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pg = Postgres::start(&net.db_ip());
    let db = pg.url.clone();
    let token = common::create_token(&db, "admin", "faults", &[]);
    let _containers = Containers(vec![d.join("a1"), d.join("a2")]);
    let supervisor = Supervisor::new();
    let hosts: Vec<(&str, Host)> =
        [("m1", 1), ("m2", 2), ("a1", 3), ("a2", 4), ("s1", 5), ("s2", 6), ("c1", 7), ("c2", 8)]
            .into_iter()
            .map(|(name, i)| (name, net.host(name, i)))
            .collect();
    let host = |name: &str| hosts.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let url = |name: &str, port: u16| format!("http://{}:{port}", host(name).ip);
    let masters = vec![url("m1", 5050), url("m2", 5050)];
    let all_masters = masters.join(",");
    for (name, m) in [("m1", &masters[0]), ("m2", &masters[1])] {
        let listen = format!("{}:5050", host(name).ip);
        let args =
            ["master", "--listen", &listen, "--advertise-url", m, "--database-url", &db, "--agent-timeout", "5s"];
        supervisor.add(name, &host(name), &args, &token, d);
    }
    for name in ["a1", "a2"] {
        let work = d.join(name);
        let args = [
            "agent",
            "--master",
            &all_masters,
            "--work-dir",
            work.to_str().unwrap(),
            "--resources",
            AGENT_RESOURCES,
            "--hostname",
            name,
            "--default-user",
            "root",
        ];
        supervisor.add(name, &host(name), &args, &token, d);
    }
    let frameworks = |kind: &str, names: [&str; 2], port: u16| {
        let mut urls = vec![];
        for name in names {
            let (listen, me) = (format!("{}:{port}", host(name).ip), url(name, port));
            let args =
                [kind, "--master", &all_masters, "--listen", &listen, "--advertise-url", &me, "--database-url", &db];
            supervisor.add(name, &host(name), &args, &token, d);
            urls.push(me);
        }
        urls
    };
    let marathons = frameworks("marathon", ["s1", "s2"], 8080);
    let chronoses = frameworks("chronos", ["c1", "c2"], 4400);
    let c = Cluster {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
        token,
        masters,
        marathons,
        chronoses,
        dir: d.to_owned(),
    };

    // Desired state: a process app, a Docker app, and a job every 5 seconds.
    let launches = d.join("launches");
    let cmd = format!("echo $KEEL_TASK_ID >> {}; exec sleep 3600", launches.display());
    let web = json!({"id": "/web", "cmd": cmd, "cpus": 0.1, "mem": 16, "instances": APP_INSTANCES});
    let marathon = c.marathon().await;
    let (s, b) = c.send(reqwest::Method::POST, &format!("{marathon}/v2/apps"), web).await;
    assert_eq!(s, 201, "{b}");
    if docker {
        let dock = json!({"id": "/dock", "cmd": "exec sleep 3600", "cpus": 0.1, "mem": 16, "instances": 1,
            "container": {"type": "DOCKER", "docker": {"image": common::TEST_IMAGE}}});
        let (s, b) = c.send(reqwest::Method::POST, &format!("{marathon}/v2/apps"), dock).await;
        assert_eq!(s, 201, "{b}");
    }
    let ticks = d.join("ticks");
    let job = json!({"id": "tick", "run": {"cmd": format!("echo $KEEL_TASK_ID >> {}", ticks.display()), "cpus": 0.1, "mem": 16},
        "schedules": [{"id": "s", "cron": "*/5 * * * * *", "startingDeadlineSeconds": 60, "concurrencyPolicy": "ALLOW"}]});
    let chronos = c.chronos().await;
    let (s, b) = c.send(reqwest::Method::POST, &format!("{chronos}/v1/jobs"), job).await;
    assert_eq!(s, 201, "{b}");
    c.converged("web", APP_INSTANCES, "at the start").await;
    c.everything_answers().await;
    let mut report = vec![];

    eprintln!("fault suite: cluster up; 1. SIGKILL the leading master");
    // 1. SIGKILL the leading master. A master leads again with a higher term: the standby, or the killed
    // one restarted by its supervisor, whichever the database elects once the lease expires.
    let before = c.terms(&c.masters, "/master/leader").await;
    assert_eq!(before.len(), 1, "one master leads: {before:?}");
    let name = if before[0].0 == 0 { "m1" } else { "m2" };
    let t = Instant::now();
    supervisor.kill(name);
    let after = wait_for("a master to lead again", LONG, || async {
        let l = c.terms(&c.masters, "/master/leader").await;
        (l.len() == 1 && l[0].1 > before[0].1).then(|| l[0])
    })
    .await;
    report.push(format!("SIGKILL of the leading master: {} leads after {:?}", c.masters[after.0], t.elapsed()));
    let before = c.converged("web", APP_INSTANCES, "after the master's SIGKILL").await;
    c.no_task_ran_twice();

    eprintln!("fault suite: 2. an agent cut off");
    // 2. Cut an agent off the masters, then heal it. Its tasks run again on the other agent; when it
    // returns, the extra copies are killed.
    let on_a1 = before.iter().filter(|t| t.1 == "a1").count();
    let (cut, other) = if on_a1 > 0 { ("a1", "a2") } else { ("a2", "a1") };
    let t = Instant::now();
    net.link(&host(cut), false);
    wait_for("the cut-off agent's tasks to run on the other", LONG, || async {
        let (running, _) = c.app("web").await?;
        (running.iter().filter(|t| t.1 == other).count() >= APP_INSTANCES).then_some(())
    })
    .await;
    report.push(format!("agent {cut} cut off: its tasks ran on {other} after {:?} (agent timeout 5 s)", t.elapsed()));
    net.link(&host(cut), true);
    c.converged("web", APP_INSTANCES, "after the partition healed").await;
    c.no_task_ran_twice();

    eprintln!("fault suite: 3. the leading master cut off the database");
    // 3. Cut the leading master off the database only. It steps down before its lease can expire: two
    // masters never say they lead at once, sampled throughout.
    let leader = c.master().await;
    let (name, other) = if leader == c.masters[0] { ("m1", 1) } else { ("m2", 0) };
    let t = Instant::now();
    net.database_route(&host(name), false);
    let mut samples = 0;
    loop {
        let l = c.leading(&c.masters, "/master/leader").await;
        assert!(l.len() <= 1, "two masters lead at once: {l:?}");
        samples += 1;
        if l == [other] {
            break;
        }
        assert!(t.elapsed() < LONG, "no other master took over from the one cut off the database");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.push(format!(
        "leading master cut off the database: the other leads after {:?} ({samples} samples, never two)",
        t.elapsed()
    ));
    c.converged("web", APP_INSTANCES, "after the master lost the database").await;
    net.database_route(&host(name), true);
    c.everything_answers().await;

    eprintln!("fault suite: 4. PostgreSQL restarts");
    // 4. Restart PostgreSQL under the running cluster: a pause, then everything converges by itself.
    let t = Instant::now();
    pg.restart();
    c.everything_answers().await;
    c.converged("web", APP_INSTANCES, "after PostgreSQL restarted").await;
    report.push(format!("PostgreSQL restarted: everything answers and has converged after {:?}", t.elapsed()));
    c.no_task_ran_twice();

    eprintln!("fault suite: 5. the services framework's leader killed mid-deployment");
    // 5. SIGKILL the services framework's leader during a rolling deployment: the standby carries it on.
    let marathon = c.marathon().await;
    let name = if marathon == c.marathons[0] { "s1" } else { "s2" };
    // The new version listens after 2 s, and its health check holds each step of the deployment until then.
    let new_cmd =
        format!("echo $KEEL_TASK_ID >> {}; sleep 2; exec busybox httpd -f -p $PORT0 -h /tmp", launches.display());
    let change = json!({"cmd": new_cmd, "portDefinitions": [{"port": 0}], "healthChecks": [{"protocol": "TCP",
        "portIndex": 0, "gracePeriodSeconds": 30, "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 30}]});
    let (s, b) = c.send(reqwest::Method::PUT, &format!("{marathon}/v2/apps/web"), change).await;
    assert_eq!(s, 200, "{b}");
    let version = b["version"].as_str().unwrap().to_owned();
    wait_for("the deployment to be under way", LONG, || async {
        let (running, deploying) = c.app("web").await?;
        (deploying && running.iter().any(|t| t.2 == version)).then_some(())
    })
    .await;
    let t = Instant::now();
    supervisor.kill(name);
    let done = c.converged("web", APP_INSTANCES, "the deployment carried on by the standby").await;
    assert!(done.iter().all(|t| t.2 == version), "every task runs the new version: {done:?}");
    report.push(format!("services leader killed mid-deployment: finished by the standby {:?} later", t.elapsed()));
    c.no_task_ran_twice();

    eprintln!("fault suite: 6. the cron framework's leader killed before a tick");
    // 6. SIGKILL the cron framework's leader half a second before a tick.
    let chronos = c.chronos().await;
    let name = if chronos == c.chronoses[0] { "c1" } else { "c2" };
    let now = chrono::Utc::now().timestamp_millis();
    let next = (now / 5000 + 1) * 5000;
    let wait = if next - now > 600 { next - now - 500 } else { next - now + 4500 };
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    supervisor.kill(name);
    c.chronos().await;
    tokio::time::sleep(Duration::from_secs(12)).await;

    eprintln!("fault suite: 7. docker kill");
    // 7. `docker kill` a task's container from outside: it is replaced.
    if docker {
        let (running, _) =
            wait_for("the Docker app", LONG, || async { c.app("dock").await.filter(|a| a.0.len() == 1) }).await;
        let id = running[0].0.clone();
        let container = common::docker(&["ps", "-q", "--filter", &format!("label=keel.task_id={id}")]);
        assert!(!container.is_empty(), "the container of {id}");
        common::docker(&["kill", &container]);
        let t = Instant::now();
        wait_for("the killed container's task to be replaced", LONG, || async {
            let (running, _) = c.app("dock").await?;
            (running.len() == 1 && running[0].0 != id).then_some(())
        })
        .await;
        report.push(format!("docker kill of a task's container: replaced after {:?}", t.elapsed()));
    }

    // The invariants, once more, at the end.
    c.converged("web", APP_INSTANCES, "at the end").await;
    c.everything_answers().await;
    let (n, missed) = c.ticks_once(5000).await;
    report.push(format!("cron: {n} ticks, each recorded once, {missed} missed; no task launched twice"));
    for name in ["m1", "m2", "s1", "s2", "c1", "c2"] {
        report.push(format!("{name} started {} times", supervisor.starts(name)));
    }
    println!("fault suite:\n  {}", report.join("\n  "));
    supervisor.stop();
    drop(net);
}
