//! What the benchmarks share: a real master process and simulated agents.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keel_core::agent::{self, AgentConfig, memory::MemoryContainerizer};
use keel_core::client::Target;
use tokio_util::sync::CancellationToken;

/// A `keel master` process on a free loopback port, on SQLite in a temporary directory.
pub struct MasterProcess {
    child: Child,
    pub url: String,
    /// The address with the credential and CA to reach it.
    pub target: Target,
    _dir: tempfile::TempDir,
}

impl MasterProcess {
    /// A master without auth or TLS (`--insecure-no-auth`): the engine alone.
    pub fn start() -> MasterProcess {
        Self::launch(false)
    }

    /// A master as production runs it: tokens checked on every stream, TLS on the port.
    pub fn start_secure() -> MasterProcess {
        Self::launch(true)
    }

    fn launch(secure: bool) -> MasterProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = dir.path().to_str().unwrap().to_owned();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .args(["master", "--listen", &format!("127.0.0.1:{port}"), "--data-dir", &data])
            .args(["--agent-timeout", "60s", "--offer-timeout", "0"])
            .env("KEEL_LOG", "warn")
            .stdout(Stdio::null());
        let target = if secure {
            let out = Command::new(env!("CARGO_BIN_EXE_keel"))
                .args(["token", "create", "--data-dir", &data, "--role", "admin", "--name", "bench"])
                .output()
                .expect("keel token create");
            let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            let ca = certificates(dir.path());
            command.args(["--tls-cert", &format!("{data}/server.pem"), "--tls-key", &format!("{data}/server.key")]);
            Target::new(format!("https://127.0.0.1:{port}"), Some(token)).with_ca(Some(ca))
        } else {
            command.arg("--insecure-no-auth");
            Target::new(format!("http://127.0.0.1:{port}"), None)
        };
        let child = command.spawn().expect("spawn keel master");
        let url = target.url.clone();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        MasterProcess { child, url, target, _dir: dir }
    }

    /// CPU time the master process has used so far (user and system), from `/proc`.
    pub fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }

    pub fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        kb / 1024.0
    }
}

/// CPU time process `pid` has used so far (user and system), from `/proc`; zero when it cannot be read.
pub fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: the fields counted here come after its closing parenthesis.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    // Linux reports in USER_HZ, which is 100 on every architecture Keel builds for.
    Duration::from_millis(ticks * 10)
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 in `dir` (server.pem, server.key); returns the CA's PEM.
fn certificates(dir: &std::path::Path) -> Vec<u8> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    ca.pem().into_bytes()
}

/// Starts `n` simulated agents against `target`.
pub fn start_agents(
    target: &Target,
    n: usize,
    resources: &str,
    run_for: Option<Duration>,
    shutdown: &CancellationToken,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let containerizer = Arc::new(MemoryContainerizer::new(run_for));
    for i in 0..n {
        let mut config = AgentConfig::new(target, dir.path().join(format!("agent-{i}")), resources.parse().unwrap());
        config.hostname = format!("sim-{i}");
        config.checkpoint = false;
        tokio::spawn(agent::run(config, containerizer.clone(), shutdown.clone()));
    }
    dir
}

/// The services framework against `master`, on `store`: its handle and its `/v2` routes (not served).
pub async fn services(
    master: &str,
    store: keel_core::store::Store,
    shutdown: &CancellationToken,
) -> (keel_marathon::scheduler::MarathonHandle, axum::Router) {
    let apps = keel_marathon::store::AppStore::new(store);
    let handle = keel_marathon::scheduler::start(master, apps.clone(), shutdown.clone()).await.unwrap();
    let callbacks = keel_marathon::callbacks::Callbacks::start(apps.clone(), &handle, shutdown.clone()).await.unwrap();
    let info = keel_marathon::api::ServiceInfo::default();
    let api = keel_marathon::api::Api { apps, marathon: handle.clone(), callbacks, info };
    (handle, keel_marathon::api::router(api))
}

/// Serves `router` on a free loopback port; answers its URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    url
}

/// Waits until `total` instances of the services framework run (at most 10 minutes).
pub async fn wait_running(handle: &keel_marathon::scheduler::MarathonHandle, total: usize) {
    let started = std::time::Instant::now();
    loop {
        let snapshot = handle.snapshot().await.unwrap();
        let running = snapshot.instances.iter().filter(|i| i.state == keel_core::task::TaskState::Running).count();
        if running >= total {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "only {running} of {total} running after 10 minutes");
        // Each look copies every instance, so look rarely enough not to slow the scheduler down.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
