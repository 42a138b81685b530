//! End-to-end tests of the cron jobs framework: a real master, agent and `keel chronos` process, driven
//! through the Metronome and Chronos REST APIs, running real jobs. One test runs the framework in-process on
//! a test-driven clock instead, to let a minute of the framework's time pass at once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(40);
const AGENT_RESOURCES: &str = "cpus:4;mem:2048;disk:8192";

/// `keel chronos`, with the helpers these tests share.
struct Chronos(FrameworkProc);

impl std::ops::Deref for Chronos {
    type Target = FrameworkProc;
    fn deref(&self) -> &FrameworkProc {
        &self.0
    }
}

impl Chronos {
    async fn start(master: &Master, db: &str, log: std::path::PathBuf) -> Chronos {
        Chronos(FrameworkProc::start("chronos", master, db, &[], log).await)
    }

    /// Keel's full run history of a job, newest first.
    async fn runs(&self, job: &str) -> Vec<Value> {
        let path = format!("/keel/v1/jobs/{job}/runs?limit=1000");
        let (mut status, mut body) = self.send(Method::GET, &path, None).await;
        // A framework just elected (started, or restarted by a test) answers 503 while it recovers its state.
        let deadline = tokio::time::Instant::now() + LONG;
        while status == 503 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            (status, body) = self.send(Method::GET, &path, None).await;
        }
        assert_eq!(status, 200, "{body}");
        body["runs"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `job` has runs that satisfy `f`, and returns them.
    async fn wait_runs(&self, job: &str, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let what = format!("{job}: {what}");
        wait_for(&what, LONG, || async {
            let runs = self.runs(job).await;
            f(&runs).then_some(runs)
        })
        .await
    }
}

/// A master, an agent and `keel chronos` in a directory of their own, on `db` or else SQLite there.
async fn cluster(db: Option<&str>) -> (tempfile::TempDir, Master, Agent, Chronos) {
    let dir = tempfile::tempdir().unwrap();
    let db = db.map_or_else(|| format!("sqlite:{}", dir.path().join("keel.db").display()), str::to_owned);
    let master = Master::start(dir.path(), &db, "10s").await;
    let agent = Agent::start(&master, &dir.path().join("agent"), AGENT_RESOURCES).await;
    let chronos = Chronos::start(&master, &db, dir.path().join("chronos.log")).await;
    (dir, master, agent, chronos)
}

fn with_status<'a>(runs: &'a [Value], status: &str) -> Vec<&'a Value> {
    runs.iter().filter(|r| r["status"] == status).collect()
}

fn millis(ts: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts.as_str().unwrap()).unwrap().timestamp_millis()
}

#[tokio::test]
async fn a_job_fires_every_few_seconds_and_keeps_its_history_and_output() {
    let (_dir, _master, _agent, chronos) = cluster(None).await;

    let job = json!({
        "id": "tick",
        "run": {"cmd": "echo \"run $KEEL_RUN_ID at $KEEL_SCHEDULED_AT\"; echo to-stderr >&2", "cpus": 0.1, "mem": 32},
        "schedules": [{"id": "every2s", "cron": "*/2 * * * * *", "timezone": "Europe/Berlin"}]
    });
    let (status, body) = chronos.send(Method::POST, "/v1/jobs", Some(job)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["schedules"][0]["timezone"], "Europe/Berlin");

    let runs = chronos.wait_runs("tick", "3 successes", |r| with_status(r, "SUCCESS").len() >= 3).await;
    for r in with_status(&runs, "SUCCESS") {
        // Each run started soon after its scheduled instant (the benchmark measures how soon), on a
        // 2-second grid.
        let (scheduled, started) = (millis(&r["scheduledAt"]), millis(&r["startedAt"]));
        assert_eq!(scheduled % 2000, 0, "{r}");
        assert!((0..3000).contains(&(started - scheduled)), "lag {} ms: {r}", started - scheduled);
        assert_eq!(r["exitCode"], 0);
        assert_eq!(r["attempts"], 1);
        assert_eq!(r["taskIds"].as_array().unwrap().len(), 1);
    }
    // The output's tail arrives just after the run ends.
    let runs = chronos
        .wait_runs("tick", "output tails", |r| {
            with_status(r, "SUCCESS").iter().filter(|r| r["stderrTail"] == "to-stderr\n").count() >= 2
        })
        .await;
    let r = with_status(&runs, "SUCCESS").into_iter().find(|r| r["stderrTail"] == "to-stderr\n").unwrap();
    assert_eq!(r["stdoutTail"], format!("run {} at {}\n", r["id"].as_str().unwrap(), rfc3339_utc(&r["scheduledAt"])));
    let ids: Vec<&Value> = runs.iter().map(|r| &r["id"]).collect();
    let unique: std::collections::BTreeSet<String> = ids.iter().map(|v| v.to_string()).collect();
    assert_eq!(unique.len(), ids.len(), "no run twice");

    // Metronome's history embed and Chronos's counters agree.
    let (_, jobs) = chronos.send(Method::GET, "/v1/jobs?embed=history", None).await;
    let history = &jobs[0]["history"];
    assert!(history["successCount"].as_u64().unwrap() >= 3, "{history}");
    assert_eq!(history["failureCount"], 0);
    let (_, cjobs) = chronos.send(Method::GET, "/scheduler/jobs", None).await;
    assert!(cjobs[0]["successCount"].as_u64().unwrap() >= 3);
    assert_ne!(cjobs[0]["lastSuccess"], "");
}

/// `KEEL_SCHEDULED_AT` as the task sees it (RFC 3339 in UTC with `+00:00`).
fn rfc3339_utc(ts: &Value) -> String {
    chrono::DateTime::parse_from_rfc3339(ts.as_str().unwrap()).unwrap().with_timezone(&chrono::Utc).to_rfc3339()
}

#[tokio::test]
async fn dependencies_concurrency_retries_and_timeouts() {
    let (dir, _master, _agent, chronos) = cluster(None).await;
    let trail = dir.path().join("trail");
    let trail = trail.to_str().unwrap();

    // A chain through the Chronos API: parent -> child -> grandchild, each appending its name. The parent's
    // own schedule starts in 2030; it runs when asked.
    let step = |name: &str| format!("echo {name} >> {trail}");
    let parent = json!({"name": "parent", "command": step("parent"), "schedule": "R1/2030-01-01T00:00:00Z/PT1H", "cpus": 0.1, "mem": 32, "disk": 1});
    let (s, b) = chronos.send(Method::POST, "/scheduler/iso8601", Some(parent)).await;
    assert_eq!(s, 204, "{b}");
    for (name, parent) in [("child", "parent"), ("grandchild", "child")] {
        let body = json!({"name": name, "command": step(name), "parents": [parent], "cpus": 0.1, "mem": 32, "disk": 1});
        let (s, b) = chronos.send(Method::POST, "/v1/scheduler/dependency", Some(body)).await;
        assert_eq!(s, 204, "{b}");
    }
    // A cycle is refused, as Chronos refuses a bad job, and changes nothing.
    let cyclic = json!({"name": "parent", "command": "true", "parents": ["grandchild"], "disk": 1});
    let (s, b) = chronos.send(Method::POST, "/scheduler/dependency", Some(cyclic)).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["message"].as_str().unwrap().starts_with("dependency cycle: "), "{b}");
    let read_trail = || std::fs::read_to_string(trail).unwrap_or_default();
    for round in 1..=2 {
        let (s, _) = chronos.send(Method::PUT, "/scheduler/job/parent", None).await;
        assert_eq!(s, 204);
        wait_for("the chain to finish", LONG, || async { (read_trail().lines().count() >= 3 * round).then_some(()) })
            .await;
    }
    // Children ran once per parent success, and always after it.
    let t = read_trail();
    assert_eq!(t, "parent\nchild\ngrandchild\nparent\nchild\ngrandchild\n");
    let csv = wait_for("the chain to be idle", LONG, || async {
        let csv = get(&format!("{}/scheduler/graph/csv", chronos.url), &chronos.token).await.ok()?.text().await.ok()?;
        csv.contains("node,grandchild,success,idle\n").then_some(csv)
    })
    .await;
    assert!(csv.contains("link,parent,child\n") && csv.contains("link,child,grandchild\n"), "{csv}");

    // FORBID: a tick while the long run is active is skipped.
    let forbid = json!({
        "id": "forbid", "run": {"cmd": "sleep 5", "cpus": 0.1, "mem": 32},
        "schedules": [{"id": "s", "cron": "*/2 * * * * *", "concurrencyPolicy": "FORBID"}]
    });
    assert_eq!(chronos.send(Method::POST, "/v1/jobs", Some(forbid)).await.0, 201);
    // REPLACE: a tick kills the active run and takes its place.
    let replace = json!({
        "id": "replace", "run": {"cmd": "sleep 30", "cpus": 0.1, "mem": 32},
        "schedules": [{"id": "s", "cron": "*/3 * * * * *", "concurrencyPolicy": "REPLACE"}]
    });
    assert_eq!(chronos.send(Method::POST, "/v1/jobs", Some(replace)).await.0, 201);
    // Retries: fails twice, then succeeds, within ON_FAILURE.
    let counter = dir.path().join("attempts");
    let flaky = format!("echo x >> {0}; [ $(wc -l < {0}) -ge 3 ]", counter.display());
    let retry =
        json!({"id": "flaky", "run": {"cmd": flaky, "cpus": 0.1, "mem": 32, "restart": {"policy": "ON_FAILURE"}}});
    assert_eq!(chronos.send(Method::POST, "/v1/jobs", Some(retry)).await.0, 201);
    let (s, run) = chronos.send(Method::POST, "/v1/jobs/flaky/runs", None).await;
    assert_eq!(s, 201, "{run}");
    // Chronos-style retries that run out: 1 + 2 attempts, then FAILED.
    let failing = json!({"name": "failing", "command": "exit 7", "schedule": "R0//PT1H", "retries": 2, "cpus": 0.1, "mem": 32, "disk": 1});
    assert_eq!(chronos.send(Method::POST, "/scheduler/iso8601", Some(failing)).await.0, 204);
    assert_eq!(chronos.send(Method::PUT, "/scheduler/job/failing", None).await.0, 204);
    // A timeout: activeDeadlineSeconds kills a run that goes on too long.
    let slow = json!({"id": "slow", "run": {"cmd": "sleep 60", "cpus": 0.1, "mem": 32, "restart": {"policy": "NEVER", "activeDeadlineSeconds": 2}}});
    assert_eq!(chronos.send(Method::POST, "/v1/jobs", Some(slow)).await.0, 201);
    assert_eq!(chronos.send(Method::POST, "/v1/jobs/slow/runs", None).await.0, 201);

    let runs = chronos.wait_runs("forbid", "a skipped tick", |r| !with_status(r, "SKIPPED").is_empty()).await;
    let skipped = with_status(&runs, "SKIPPED")[0];
    assert!(skipped["message"].as_str().unwrap().contains("FORBID"), "{skipped}");
    assert!(runs.iter().filter(|r| r["status"] == "ACTIVE" || r["status"] == "STARTING").count() <= 1);

    let runs = chronos.wait_runs("replace", "a replaced run", |r| !with_status(r, "FAILED").is_empty()).await;
    let replaced = with_status(&runs, "FAILED")[0];
    assert!(replaced["message"].as_str().unwrap().contains("replaced by run"), "{replaced}");

    let runs = chronos.wait_runs("flaky", "a success after retries", |r| !with_status(r, "SUCCESS").is_empty()).await;
    let ok = with_status(&runs, "SUCCESS")[0];
    assert_eq!(ok["attempts"], 3, "{ok}");
    assert_eq!(ok["taskIds"].as_array().unwrap().len(), 3);

    let runs = chronos.wait_runs("failing", "a failure", |r| !with_status(r, "FAILED").is_empty()).await;
    let failed = with_status(&runs, "FAILED")[0];
    assert_eq!((failed["attempts"].as_u64(), failed["exitCode"].as_i64()), (Some(3), Some(7)), "{failed}");

    let runs = chronos.wait_runs("slow", "a timeout", |r| !with_status(r, "FAILED").is_empty()).await;
    let timed_out = with_status(&runs, "FAILED")[0];
    assert!(timed_out["message"].as_str().unwrap().starts_with("timed out"), "{timed_out}");
    let took = millis(&timed_out["finishedAt"]) - millis(&timed_out["startedAt"]);
    assert!((1500..15_000).contains(&took), "killed after {took} ms");
    let (_, active) = chronos.send(Method::GET, "/v1/jobs/slow/runs", None).await;
    assert_eq!(active, json!([]));
}

#[tokio::test]
async fn a_framework_restart_neither_duplicates_nor_loses_a_tick() {
    for backend in backends().await {
        let (dir, _master, _agent, mut chronos) = cluster(Some(&backend.url)).await;
        let ticks = dir.path().join("ticks");
        let job = json!({
            "id": "ticker",
            "run": {"cmd": format!("echo $KEEL_SCHEDULED_AT >> {}", ticks.display()), "cpus": 0.1, "mem": 32},
            "schedules": [{"id": "s", "cron": "* * * * * *", "startingDeadlineSeconds": 60}]
        });
        // Just after it starts, a framework answers 503 while it recovers its state ("this instance was just
        // elected and is recovering its state; retry shortly"); seen in CI on a loaded machine. A 503 that
        // persists still fails.
        let (mut status, mut body) = chronos.send(Method::POST, "/v1/jobs", Some(job.clone())).await;
        for _ in 0..5 {
            if status != 503 {
                break;
            }
            eprintln!("POST /v1/jobs answered 503 ({body}); trying again, as the answer says");
            tokio::time::sleep(Duration::from_secs(1)).await;
            (status, body) = chronos.send(Method::POST, "/v1/jobs", Some(job.clone())).await;
        }
        assert_eq!(status, 201, "{body}");
        // A chain in the middle of a run when the framework dies: the child must finish, once.
        let chain = dir.path().join("chain");
        let parent =
            json!({"id": "etl", "run": {"cmd": format!("echo etl >> {}", chain.display()), "cpus": 0.1, "mem": 32}});
        let child = json!({"id": "report", "dependencies": [{"id": "etl"}],
            "run": {"cmd": format!("sleep 4; echo report >> {}", chain.display()), "cpus": 0.1, "mem": 32}});
        assert_eq!(chronos.send(Method::POST, "/v1/jobs", Some(parent)).await.0, 201);
        assert_eq!(chronos.send(Method::POST, "/v1/jobs", Some(child)).await.0, 201);
        chronos.wait_runs("ticker", "3 successes", |r| with_status(r, "SUCCESS").len() >= 3).await;
        assert_eq!(chronos.send(Method::POST, "/v1/jobs/etl/runs", None).await.0, 201);
        chronos.wait_runs("report", "a running child", |r| r.iter().any(|r| r["status"] == "ACTIVE")).await;

        chronos.0.restart_after(Duration::from_secs(4)).await;

        chronos.wait_runs("report", "the child's success", |r| !with_status(r, "SUCCESS").is_empty()).await;
        chronos.wait_runs("ticker", "3 more successes", |r| with_status(r, "SUCCESS").len() >= 8).await;
        // Stop the schedule and let the last runs finish, so that every tick has its outcome.
        let off = json!({"cron": "* * * * * *", "startingDeadlineSeconds": 60, "enabled": false});
        assert_eq!(chronos.send(Method::PUT, "/v1/jobs/ticker/schedules/s", Some(off)).await.0, 200);
        wait_for("the ticker's runs to end", LONG, || async {
            let (_, active) = chronos.send(Method::GET, "/v1/jobs/ticker/runs", None).await;
            (active == json!([])).then_some(())
        })
        .await;
        let after = chronos.runs("ticker").await;

        // Every instant from the first tick to the last is accounted for exactly once: run, or missed.
        let fired = std::fs::read_to_string(&ticks).unwrap();
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for line in fired.lines() {
            *counts.entry(chrono::DateTime::parse_from_rfc3339(line).unwrap().timestamp_millis()).or_default() += 1;
        }
        assert!(counts.values().all(|n| *n == 1), "{} ran a tick twice: {fired}", backend.name);
        let finished: BTreeMap<i64, String> = chronos
            .runs("ticker")
            .await
            .iter()
            .filter(|r| ["SUCCESS", "MISSED", "SKIPPED"].contains(&r["status"].as_str().unwrap()))
            .map(|r| (millis(&r["scheduledAt"]), r["status"].as_str().unwrap().to_owned()))
            .collect();
        let (first, last) = (*finished.keys().next().unwrap(), *finished.keys().last().unwrap());
        let gaps: Vec<i64> =
            (0..=(last - first) / 1000).map(|i| first + i * 1000).filter(|t| !finished.contains_key(t)).collect();
        assert!(gaps.is_empty(), "{}: ticks neither run nor missed: {gaps:?}\n{after:#?}", backend.name);
        assert!(
            finished.values().any(|s| s == "MISSED"),
            "{}: the downtime's ticks are recorded as missed",
            backend.name
        );
        // Only the latest tick of the downtime ran late; the rest did not storm in.
        let late: Vec<(&i64, &String)> =
            finished.iter().filter(|(t, s)| *s == "SUCCESS" && !counts.contains_key(t)).collect();
        assert!(late.is_empty(), "{}: success without output: {late:?}", backend.name);
        for (t, s) in &finished {
            assert_eq!(s == "SUCCESS", counts.contains_key(t), "{}: tick {t} is {s}", backend.name);
        }
        let chain_out = std::fs::read_to_string(&chain).unwrap();
        assert_eq!(chain_out, "etl\nreport\n", "{}: the chain ran once, in order", backend.name);
        let report = chronos.runs("report").await;
        assert_eq!(report.len(), 1, "{}: {report:#?}", backend.name);
    }
}

#[tokio::test]
async fn bad_schedules_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("keel.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let chronos = Chronos::start(&master, &db, dir.path().join("chronos.log")).await;
    let with = |cron: &str, tz: &str| json!({"id": "j", "run": {"cmd": "true"}, "schedules": [{"id": "s", "cron": cron, "timezone": tz}]});
    let (s, b) = chronos.send(Method::POST, "/v1/jobs", Some(with("0 25 * * *", "UTC"))).await;
    assert_eq!(s, 422, "{b}");
    assert!(b["message"].as_str().unwrap().contains("invalid cron expression '0 25 * * *'"), "{b}");
    let (s, b) = chronos.send(Method::POST, "/v1/jobs", Some(with("0 2 * * *", "Europe/Atlantis"))).await;
    assert_eq!(s, 422, "{b}");
    assert!(b["message"].as_str().unwrap().contains("unknown time zone 'Europe/Atlantis'"), "{b}");
    let bad_iso = json!({"name": "j", "command": "true", "schedule": "R/2026-01-01T00:00:00Z/PT0S"});
    let (s, b) = chronos.send(Method::POST, "/scheduler/iso8601", Some(bad_iso)).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["message"].as_str().unwrap().contains("period"), "{b}");
    // Nothing was stored.
    assert_eq!(chronos.send(Method::GET, "/v1/jobs", None).await.1, json!([]));

    // With no agent, no tick can start: each is missed once its starting deadline passes.
    let stuck = json!({"id": "stuck", "run": {"cmd": "true"}, "schedules": [{"id": "s", "cron": "*/2 * * * * *", "startingDeadlineSeconds": 1}]});
    assert_eq!(chronos.send(Method::POST, "/v1/jobs", Some(stuck)).await.0, 201);
    let runs = chronos.wait_runs("stuck", "2 missed ticks", |r| with_status(r, "MISSED").len() >= 2).await;
    for r in with_status(&runs, "MISSED") {
        assert_eq!(r["message"], "missed: could not start within startingDeadlineSeconds", "{r}");
        assert_eq!(r["attempts"], 0);
    }
    let (_, history) = chronos.send(Method::GET, "/keel/v1/jobs/stuck/runs", None).await;
    assert!(history["missedCount"].as_u64().unwrap() >= 2, "{history}");
}

#[tokio::test]
async fn a_docker_job_runs_in_its_image() {
    if !docker_available() {
        return;
    }
    let (_dir, _master, _agent, chronos) = cluster(None).await;
    // Through the Chronos API, with a container and an environment variable.
    let job = json!({
        "name": "in-docker", "command": "echo \"$GREETING from $(cat /etc/hostname | wc -c) bytes of hostname\"; exit 0",
        "schedule": "R1/2030-01-01T00:00:00Z/PT1H", "cpus": 0.1, "mem": 32, "disk": 1,
        "container": {"type": "DOCKER", "image": TEST_IMAGE},
        "environmentVariables": [{"name": "GREETING", "value": "hello"}]
    });
    let (s, b) = chronos.send(Method::POST, "/scheduler/iso8601", Some(job)).await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(chronos.send(Method::PUT, "/scheduler/job/in-docker", None).await.0, 204);
    let runs = chronos
        .wait_runs("in-docker", "a success with its output", |r| {
            r.iter().any(|r| {
                r["status"] == "SUCCESS" && r["stdoutTail"].as_str().is_some_and(|o| o.starts_with("hello from"))
            })
        })
        .await;
    let task = runs[0]["taskIds"][0].as_str().unwrap().to_owned();
    // The container was the task's, and it is gone once the task ended.
    assert_eq!(docker(&["ps", "-aq", "--filter", &format!("label=keel.task_id={task}")]), "");
    let (_, job) = chronos.send(Method::GET, "/scheduler/job/in-docker", None).await;
    assert_eq!(job["container"]["image"], TEST_IMAGE);
    assert_eq!(job["successCount"], 1);
}

/// A run whose agent stays unreachable for 60 s of the scheduler's clock is given up as lost, and its task
/// is killed when the agent comes back. The master and agent are real; the framework runs in this process on
/// a test-driven clock, so the minute passes at once.
#[tokio::test]
async fn a_run_on_an_agent_unreachable_for_a_minute_fails_and_its_task_is_killed_on_return() {
    use keel_chronos::job::{Job, JobId, RunStatus};
    use keel_chronos::scheduler::{self, Clock, ManualClock};
    use keel_chronos::store::JobStore;

    // The framework logs into the test's output, shown if it fails.
    let _ =
        tracing_subscriber::fmt().with_env_filter("keel_chronos=debug,keel_core=debug").with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("keel.db").display());
    let master = Master::start(dir.path(), &db, "2s").await;
    let mut agent = Agent::start(&master, &dir.path().join("agent"), AGENT_RESOURCES).await;
    let chronos_db = format!("sqlite:{}", dir.path().join("chronos.db").display());
    let jobs = JobStore::new(keel_core::store::Store::connect(&chronos_db).await.unwrap());
    let clock = ManualClock::new(chrono::Utc::now());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let chronos =
        scheduler::start(master.target(), jobs.clone(), Clock::Manual(clock.clone()), shutdown.clone()).await.unwrap();
    let id = JobId::parse("stranded").unwrap();
    let mut job = Job::new(id.clone());
    job.run.cmd = Some("echo $$ > pid; exec sleep 300".into());
    job.run.cpus = 0.1;
    job.run.mem = 16.0;
    chronos.put(job, keel_chronos::scheduler::PutMode::Create).await.unwrap();
    let run = chronos.run_now(id.clone()).await.unwrap();
    let running = wait_for("the run to be active", LONG, || async {
        let runs = jobs.runs(&id, 10).await.ok()?;
        runs.into_iter().find(|r| r.id == run.id && r.status == RunStatus::Active)
    })
    .await;
    let pid = task_pid(&agent, &running.task_ids[0]).await;

    agent.proc.kill();
    wait_for("the master to find the agent unreachable", LONG, || async {
        (master.state().await["agents"][0]["status"] == "unreachable").then_some(())
    })
    .await;
    // The update reaches the framework right after; a round trip through its actor lets it in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    chronos.view(None).await.unwrap();
    let mut waited = Duration::ZERO;
    let failed = loop {
        let r = jobs.runs(&id, 10).await.unwrap().into_iter().find(|r| r.id == run.id).unwrap();
        if r.status != RunStatus::Active {
            break r;
        }
        assert!(waited <= Duration::from_secs(120), "still {:?} after {waited:?}: {r:#?}", r.status);
        clock.advance(Duration::from_secs(30));
        waited += Duration::from_secs(30);
        chronos.view(None).await.unwrap();
        chronos.view(None).await.unwrap();
    };
    assert_eq!(failed.status, RunStatus::Failed, "{failed:#?}");
    assert!(failed.message.contains("unreachable for 60 s"), "{}", failed.message);
    assert!(waited >= Duration::from_secs(60), "given up after only {waited:?}");
    assert!(alive(pid), "the task outlives its agent");

    agent.restart(&master).await;
    wait_for("the lost task to be killed", LONG, || async { (!alive(pid)).then_some(()) }).await;
    shutdown.cancel();
}
