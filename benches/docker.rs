//! Docker launch overhead (issue #3). Run with `cargo bench --bench docker`; figures are printed and
//! written to `docs/benchmarks.md`.
//!
//! Measures, for the same local image and command, the time from an ACCEPT sent to the master until the
//! framework receives TASK_RUNNING, against a plain `docker run -d` measured in the same run. Target: the
//! ratio is at most 1.10 (Docker's own container start is the floor).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_core::api::{Call, Event, Filters, FrameworkInfo};
use keel_core::ids::TaskId;
use keel_core::scheduler::{self, DriverEvent};
use keel_core::task::{CommandSpec, DockerSpec, TaskSpec, TaskState};
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "keel-test/busybox:latest";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn docker(args: &[&str]) -> bool {
    Command::new("docker").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// One `docker run -d` of the same container Keel creates: same image, command, limits, labels and sandbox
/// mount.
fn docker_run_once(i: usize, mount: &str) -> Duration {
    let name = format!("keel-bench-baseline-{i}");
    let args = [
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--memory",
        "32m",
        "--memory-swap",
        "32m",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "10000",
        "-v",
        mount,
        "--label",
        "keel.task_id=baseline",
        "--entrypoint",
        "/bin/sh",
        IMAGE,
        "-c",
        "sleep 30",
    ];
    let start = Instant::now();
    assert!(docker(&args), "docker run failed");
    let elapsed = start.elapsed();
    docker(&["rm", "-f", &name]);
    elapsed
}

/// Launches through Keel and runs the baseline alternately, so both see the same machine.
async fn measure(n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let keel = env!("CARGO_BIN_EXE_keel");
    let _master = Kill(
        Command::new(keel)
            .args(["master", "--listen", &format!("127.0.0.1:{port}"), "--data-dir", dir.path().to_str().unwrap()])
            .arg("--insecure-no-auth")
            .env("KEEL_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let _agent = Kill(
        Command::new(keel)
            .args([
                "agent",
                "--master",
                &url,
                "--work-dir",
                dir.path().join("agent").to_str().unwrap(),
                "--resources",
                "cpus:4;mem:4096",
                "--default-user",
                "root",
            ])
            .env("KEEL_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let shutdown = CancellationToken::new();
    let (driver, mut events) = scheduler::start(&url, FrameworkInfo::new("bench-docker"), None, shutdown.clone());
    let sandbox = tempfile::tempdir().unwrap();
    let mount = format!("{}:/mnt/mesos/sandbox:rw", sandbox.path().display());
    let mut baseline = Vec::new();
    let mut times = Vec::new();
    let mut offers = Vec::new();
    for i in 0..n {
        baseline.push(docker_run_once(i, &mount));
        let id = TaskId::parse(format!("c{i}")).unwrap();
        let spec = TaskSpec {
            id: id.clone(),
            name: "bench".into(),
            resources: "cpus:0.1;mem:32".parse().unwrap(),
            command: CommandSpec { value: "sleep 30".into(), shell: true, ..Default::default() },
            labels: Default::default(),
            kill_grace: Some(Duration::from_secs(1)),
            container: Some(DockerSpec { image: IMAGE.into(), ..Default::default() }),
            health_check: None,
            user: None,
        };
        let mut sent: Option<Instant> = None;
        loop {
            if sent.is_none() && !offers.is_empty() {
                let offer: keel_core::api::Offer = offers.remove(0);
                sent = Some(Instant::now());
                let call = Call::Accept {
                    offer_ids: vec![offer.id],
                    tasks: vec![spec.clone()],
                    filters: Filters { refuse: Some(Duration::ZERO) },
                };
                driver.call(call).await.unwrap();
            }
            match events.recv().await.expect("driver stopped") {
                DriverEvent::Event(Event::Offers(o)) => offers.extend(o),
                DriverEvent::Event(Event::Rescind(o)) => offers.retain(|x| x.id != o),
                DriverEvent::Event(Event::Update(s)) => {
                    if let (Some(uuid), Some(agent_id)) = (s.uuid.clone(), s.agent_id.clone()) {
                        driver.call(Call::Acknowledge { agent_id, task_id: s.task_id.clone(), uuid }).await.unwrap();
                    }
                    if s.task_id == id && s.state == TaskState::Running {
                        times.push(sent.unwrap().elapsed());
                        break;
                    }
                    assert!(!s.state.is_terminal() || s.task_id != id, "task ended: {} {}", s.state, s.message);
                }
                _ => {}
            }
        }
        driver.call(Call::Kill { task_id: id, agent_id: None }).await.unwrap();
    }
    let _ = driver.teardown().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.cancel();
    (baseline, times)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    assert!(docker(&["info"]), "the Docker engine is not reachable");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/busybox-image");
    assert!(Command::new("bash").arg(script).status().is_ok_and(|s| s.success()), "cannot build {IMAGE}");
    let n = if std::env::var("KEEL_BENCH_QUICK").is_ok_and(|v| v == "1") { 5 } else { 31 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (baseline, keel) = rt.block_on(measure(n));
    let (docker_run, keel_launch) = (median(baseline), median(keel));
    let ratio = keel_launch.as_secs_f64() / docker_run.as_secs_f64();
    println!(
        "docker run -d: median {docker_run:?}; keel ACCEPT to TASK_RUNNING: median {keel_launch:?}; ratio {ratio:.2}"
    );
    let verdict = if ratio <= 1.10 { "meets" } else { "MISSES" };
    let report = format!(
        "## Docker launch overhead (issue #3)\n\nRecorded by `cargo bench --bench docker`: {n} sequential launches of `sleep 30`, alternating with the baseline, in the local busybox image on this machine's Docker engine, against `docker run -d` of the same container (host networking, 0.1 cpu quota, 32 MB memory limit, labels and the sandbox mount Keel sets).\n\n| `docker run -d` (median) | Keel: ACCEPT → TASK_RUNNING (median) | ratio | target |\n|---|---|---|---|\n| {:.1} ms | {:.1} ms | {ratio:.2} | <= 1.10 ({verdict}) |\n",
        docker_run.as_secs_f64() * 1e3,
        keel_launch.as_secs_f64() * 1e3
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");
    keel_core::testing::write_report_section(std::path::Path::new(path), "docker", &report)
        .expect("write docs/benchmarks.md");
    println!("wrote {path}");
}
