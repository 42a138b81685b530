//! What the benchmarks share: a real master process and simulated agents.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keel_core::agent::{self, AgentConfig, memory::MemoryContainerizer};
use tokio_util::sync::CancellationToken;

/// A `keel master` process on a free loopback port, on SQLite in a temporary directory.
pub struct MasterProcess {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl MasterProcess {
    pub fn start() -> MasterProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["master", "--listen", &format!("127.0.0.1:{port}"), "--data-dir", dir.path().to_str().unwrap()])
            .args(["--agent-timeout", "60s", "--offer-timeout", "0"])
            .env("KEEL_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn keel master");
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        MasterProcess { child, url, _dir: dir }
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

impl Drop for MasterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `n` simulated agents against `url`.
pub fn start_agents(
    url: &str,
    n: usize,
    resources: &str,
    run_for: Option<Duration>,
    shutdown: &CancellationToken,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let containerizer = Arc::new(MemoryContainerizer::new(run_for));
    for i in 0..n {
        let mut config = AgentConfig::new(url, dir.path().join(format!("agent-{i}")), resources.parse().unwrap());
        config.hostname = format!("sim-{i}");
        config.checkpoint = false;
        tokio::spawn(agent::run(config, containerizer.clone(), shutdown.clone()));
    }
    dir
}
