//! End-to-end tests of the Docker containerizer and of health checks, against this machine's real Docker
//! engine and a locally built busybox image.

mod common;

use std::time::Duration;

use common::*;
use keel_core::api::Call;
use keel_core::ids::TaskId;
use keel_core::task::{DockerSpec, HealthCheck, HealthCheckKind, Network, PortMapping, TaskState};

const LONG: Duration = Duration::from_secs(30);

async fn cluster(dir: &std::path::Path, resources: &str) -> (Master, Agent) {
    let db = format!("sqlite:{}", dir.join("k.db").display());
    let master = Master::start(dir, &db, "10s").await;
    let agent = Agent::start(&master, &dir.join("agent"), resources).await;
    (master, agent)
}

fn containers_of(task: &str) -> String {
    docker(&["ps", "-a", "-q", "--filter", &format!("label=keel.task_id={task}")])
}

#[tokio::test]
async fn containers_report_exit_codes_logs_memory_kills_and_kill_grace() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (master, agent) = cluster(dir.path(), "cpus:2;mem:1024").await;
    let mut fw = Framework::subscribe(&master, "docker-test", Duration::from_secs(60)).await;

    fw.launch(docker_task("five", "echo out; echo err >&2; exit 5")).await;
    let five = fw.wait_state("five", TaskState::Failed, LONG).await;
    assert_eq!(five.exit_code, Some(5));
    assert_eq!(sandbox_file(&agent, &fw.id(), "five", "stdout"), "out\n");
    assert_eq!(sandbox_file(&agent, &fw.id(), "five", "stderr"), "err\n");
    let logs = master.get("/master/tasks/five/files/stdout").await.unwrap();
    assert_eq!(logs["data"], "out\n");
    assert_eq!(logs["size"], 4);
    let tail = master.get("/master/tasks/five/files/stderr?length=2").await.unwrap();
    assert_eq!((tail["data"].as_str(), tail["offset"].as_u64()), (Some("r\n"), Some(2)));
    assert!(containers_of("five").is_empty(), "ended containers are removed");

    // dd fills a 64 MiB buffer at once, so the 16 MiB limit is hit in milliseconds however loaded the
    // machine is (`tail` growing its buffer under a CPU quota once took 69 s).
    let mut hog = docker_task("hog", "dd if=/dev/zero of=/dev/null bs=64M count=4");
    hog.resources = "cpus:0.5;mem:16".parse().unwrap();
    fw.launch(hog).await;
    let hog = fw.wait_state("hog", TaskState::Failed, LONG).await;
    assert!(hog.message.contains("OOM"), "{}", hog.message);
    assert_eq!(hog.exit_code, Some(137));

    let mut sleeper = docker_task("sleeper", "trap 'echo got TERM; sleep 30' TERM; echo ready; sleep 60 & wait");
    sleeper.kill_grace = Some(Duration::from_secs(1));
    sleeper.labels.insert("team".into(), "infra".into());
    fw.launch(sleeper).await;
    fw.wait_state("sleeper", TaskState::Running, LONG).await;
    // The shell must have installed its trap before the kill, or it would die of TERM
    // (as PID 1 it would in fact ignore it) without the line this test looks for.
    wait_for("the trap to be installed", LONG, || async {
        sandbox_file(&agent, &fw.id(), "sleeper", "stdout").contains("ready").then_some(())
    })
    .await;
    let id = containers_of("sleeper");
    assert!(!id.is_empty());
    let labels = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"keel.framework_id\"}} {{index .Config.Labels \"team\"}} {{.HostConfig.Memory}} {{.HostConfig.CpuQuota}}",
        &id,
    ]);
    assert_eq!(labels, format!("{} infra {} 10000", fw.id(), 16 * 1024 * 1024));
    let started = std::time::Instant::now();
    fw.call(Call::Kill { task_id: TaskId::parse("sleeper").unwrap(), agent_id: None }).await;
    fw.wait_state("sleeper", TaskState::Killed, LONG).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the container ignored TERM, so only the kill after the grace period stops it"
    );
    wait_for("the container to be removed", LONG, || async { containers_of("sleeper").is_empty().then_some(()) }).await;
    assert!(sandbox_file(&agent, &fw.id(), "sleeper", "stdout").contains("got TERM"));
}

#[tokio::test]
async fn bridge_ports_are_reachable_and_http_health_follows_the_server() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (master, _agent) = cluster(dir.path(), &format!("cpus:2;mem:1024;ports:[{port}-{port}]")).await;
    let mut fw = Framework::subscribe(&master, "docker-test", Duration::from_secs(60)).await;

    let mut web = docker_task("web", "httpd -p 8080 -h /www; sleep 4; killall httpd; sleep 60");
    web.resources = format!("cpus:0.2;mem:32;ports:[{port}-{port}]").parse().unwrap();
    web.container = Some(DockerSpec {
        image: TEST_IMAGE.into(),
        network: Network::Bridge,
        port_mappings: vec![PortMapping { host_port: port, container_port: 8080, protocol: "tcp".into() }],
        ..Default::default()
    });
    web.health_check = Some(HealthCheck {
        kind: HealthCheckKind::Http { path: "/index.html".into(), port_index: 0 },
        grace_period: Duration::from_secs(10),
        interval: Duration::from_millis(500),
        timeout: Duration::from_secs(1),
        max_consecutive_failures: 0,
    });
    fw.launch(web).await;
    fw.pump_until("web to be healthy", LONG, |f| f.last("web").is_some_and(|s| s.healthy == Some(true))).await;
    let body = reqwest::get(format!("http://127.0.0.1:{port}/index.html")).await.unwrap().text().await.unwrap();
    assert_eq!(body, "hello from keel-test\n");
    let unhealthy = fw.wait_state_where("web", LONG, |s| s.healthy == Some(false)).await;
    assert_eq!(unhealthy.state, TaskState::Running);
    assert!(unhealthy.message.contains("health check failed"), "{}", unhealthy.message);
    let state = master.state().await;
    assert_eq!(state["tasks"][0]["healthy"], false);
    fw.call(Call::Kill { task_id: TaskId::parse("web").unwrap(), agent_id: None }).await;
    fw.wait_state("web", TaskState::Killed, LONG).await;
}

#[tokio::test]
async fn a_restarted_agent_reattaches_to_its_containers_and_removes_orphans() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (master, mut agent) = cluster(dir.path(), "cpus:2;mem:1024").await;
    let mut fw = Framework::subscribe(&master, "docker-test", Duration::from_secs(60)).await;
    fw.launch(docker_task("svc", "while true; do echo tick; sleep 0.2; done")).await;
    fw.wait_state("svc", TaskState::Running, LONG).await;
    let id = containers_of("svc");
    let agent_id = agent.agent_id().unwrap();
    // A container of this agent (its sandbox is in the agent's work directory) that no checkpoint names.
    let sandbox = std::fs::canonicalize(&agent.work_dir).unwrap().join("sandboxes/fw/orphan");
    std::fs::create_dir_all(&sandbox).unwrap();
    let orphan = docker(&[
        "run",
        "-d",
        "-v",
        &format!("{}:/mnt/mesos/sandbox", sandbox.display()),
        "--label",
        &format!("keel.agent_id={agent_id}"),
        "--label",
        "keel.task_id=orphan",
        TEST_IMAGE,
        "sleep",
        "60",
    ]);
    assert!(!orphan.is_empty());
    let updates_before = fw.updates.len();

    agent.restart(&master).await;
    let gone = || async { docker(&["ps", "-a", "-q", "--no-trunc", "--filter", &format!("id={orphan}")]).is_empty() };
    wait_for("the orphan container to be removed", LONG, || async { gone().await.then_some(()) }).await;
    assert_eq!(containers_of("svc"), id, "the task's container was neither restarted nor replaced");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &id]), "true");
    fw.drain_for(Duration::from_secs(2)).await;
    assert!(
        fw.updates[updates_before..].iter().all(|u| u.state == TaskState::Running),
        "{:#?}",
        &fw.updates[updates_before..]
    );

    // Killed behind Keel's back: the task fails within seconds.
    docker(&["kill", &id]);
    let failed = fw.wait_state("svc", TaskState::Failed, Duration::from_secs(10)).await;
    assert_eq!(failed.exit_code, Some(137));
}

#[tokio::test]
async fn pull_failures_and_agents_without_docker_are_reported() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let _with = Agent::start(&master, &dir.path().join("with-docker"), "cpus:1;mem:256").await;
    let mut fw = Framework::subscribe(&master, "docker-test", Duration::from_secs(60)).await;
    let mut missing = docker_task("missing", "true");
    missing.container.as_mut().unwrap().image = "keel-test/no-such-image:v1".into();
    fw.launch(missing).await;
    let failed = fw.wait_state("missing", TaskState::Failed, LONG).await;
    assert!(failed.message.contains("cannot pull image keel-test/no-such-image:v1"), "{}", failed.message);
    assert_eq!(failed.reason.as_deref(), Some("REASON_CONTAINER_LAUNCH_FAILED"));

    // An agent without Docker: its offers say so, and a Docker task launched there is refused.
    let dir2 = tempfile::tempdir().unwrap();
    let master2 = Master::start(dir2.path(), &format!("sqlite:{}", dir2.path().join("k.db").display()), "10s").await;
    let _without = Agent::start_with(&master2, &dir2.path().join("agent"), "cpus:1;mem:256", &["--no-docker"]).await;
    let mut fw2 = Framework::subscribe(&master2, "docker-test", Duration::from_secs(60)).await;
    fw2.launch(docker_task("nodocker", "true")).await;
    let refused = fw2.wait_state("nodocker", TaskState::Error, LONG).await;
    assert!(refused.message.contains("no reachable Docker engine"), "{}", refused.message);
    assert_eq!(master2.state().await["agents"][0]["docker"], false);
}

#[tokio::test]
async fn keel_execute_runs_docker_images() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (master, _agent) = cluster(dir.path(), "cpus:1;mem:256").await;
    let out = std::process::Command::new(KEEL)
        .env("KEEL_TOKEN", &master.token)
        .args([
            "execute",
            "--master",
            &master.url(),
            "--name",
            "img",
            "--docker-image",
            TEST_IMAGE,
            "--command",
            "exit 9",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn failing_command_health_checks_get_a_process_task_killed() {
    // The TCP half serves with busybox httpd, which the Docker set-up installs.
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (master, _agent) = cluster(dir.path(), &format!("cpus:2;mem:512;ports:[{port}-{port}]")).await;
    let mut fw = Framework::subscribe(&master, "health-test", Duration::from_secs(60)).await;

    let mut flaky = task("flaky", "touch healthy; sleep 2; rm healthy; sleep 60");
    flaky.health_check = Some(HealthCheck {
        kind: HealthCheckKind::Command { command: "test -f healthy".into() },
        grace_period: Duration::ZERO,
        interval: Duration::from_millis(300),
        timeout: Duration::from_secs(2),
        max_consecutive_failures: 3,
    });
    fw.launch(flaky).await;
    fw.pump_until("flaky to be healthy", LONG, |f| f.last("flaky").is_some_and(|s| s.healthy == Some(true))).await;
    let killed = fw.wait_state("flaky", TaskState::Killed, LONG).await;
    assert_eq!(killed.healthy, Some(false));
    assert!(killed.message.contains("3 consecutive failed health checks"), "{}", killed.message);
    assert!(
        fw.updates
            .iter()
            .any(|u| u.task_id.as_str() == "flaky" && u.healthy == Some(false) && u.state == TaskState::Running)
    );

    // A TCP check on a process that listens on its offered port.
    let mut server = task("server", "exec busybox httpd -f -p \"127.0.0.1:$PORT\"");
    server.resources = format!("cpus:0.1;mem:16;ports:[{port}-{port}]").parse().unwrap();
    server.command.env.insert("PORT".into(), port.to_string());
    server.health_check = Some(HealthCheck {
        kind: HealthCheckKind::Tcp { port_index: 0 },
        grace_period: Duration::from_secs(5),
        interval: Duration::from_millis(300),
        timeout: Duration::from_secs(1),
        max_consecutive_failures: 0,
    });
    fw.launch(server).await;
    fw.pump_until("server to be healthy", LONG, |f| f.last("server").is_some_and(|s| s.healthy == Some(true))).await;
    fw.call(Call::Kill { task_id: TaskId::parse("server").unwrap(), agent_id: None }).await;
    fw.wait_state("server", TaskState::Killed, LONG).await;
}
