//! End-to-end tests of the services framework: a real master, agent and `keel marathon` process, driven
//! through the Marathon REST API.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

/// `keel marathon`, with the helpers these tests share.
struct Marathon(FrameworkProc);

impl std::ops::Deref for Marathon {
    type Target = FrameworkProc;
    fn deref(&self) -> &FrameworkProc {
        &self.0
    }
}

impl Marathon {
    /// Starts the framework and waits until it leads and its scheduler answers: `/ping` answers before the
    /// election, and a write sent in between is refused 503.
    async fn start(master: &Master, db: &str, log: std::path::PathBuf) -> Marathon {
        let m = Marathon(FrameworkProc::start("marathon", master, db, &["--deployment-timeout", "4s"], log).await);
        wait_for("the services framework to lead", LONG, || async {
            (m.send(reqwest::Method::GET, "/v2/deployments", None).await.0 == 200).then_some(())
        })
        .await;
        m
    }

    async fn restart(&mut self) {
        self.0.restart_after(Duration::ZERO).await;
    }

    /// Waits until no deployment is in progress, as a careful client does before its next change.
    async fn settled(&self) {
        wait_for("deployments to finish", LONG, || async {
            let (_, d) = self.send(reqwest::Method::GET, "/v2/deployments", None).await;
            d.as_array()?.is_empty().then_some(())
        })
        .await;
    }

    async fn app(&self, id: &str) -> Value {
        self.send(reqwest::Method::GET, &format!("/v2/apps{id}"), None).await.1["app"].clone()
    }

    async fn running(&self, id: &str, n: usize) -> Vec<String> {
        let what = format!("{id} to have {n} running tasks");
        wait_for(&what, LONG, || async {
            let app = self.app(id).await;
            let tasks = app["tasks"].as_array()?;
            let running: Vec<String> = tasks
                .iter()
                .filter(|t| t["state"] == "TASK_RUNNING")
                .filter_map(|t| t["id"].as_str().map(str::to_owned))
                .collect();
            (running.len() == n && tasks.len() == n).then_some(running)
        })
        .await
    }
}

#[tokio::test]
async fn apps_are_deployed_scaled_healed_and_survive_a_framework_restart() {
    for backend in backends().await {
        let dir = tempfile::tempdir().unwrap();
        let master = Master::start(dir.path(), &backend.url, "10s").await;
        let agent = Agent::start(&master, &dir.path().join("agent"), "cpus:4;mem:1024;ports:[31000-31100]").await;
        let mut marathon = Marathon::start(&master, &backend.url, dir.path().join("marathon.log")).await;
        use reqwest::Method;

        let app = json!({"id": "/prod/web", "cmd": "echo $$ > pid; echo \"$PORT0 $HOST $MARATHON_APP_ID\" > env; exec sleep 300", "cpus": 0.1, "mem": 16, "instances": 2});
        let (status, body) = marathon.send(Method::POST, "/v2/apps", Some(app)).await;
        assert_eq!(status, 201, "[{}] {body}", backend.name);
        let tasks = marathon.running("/prod/web", 2).await;
        let app = marathon.app("/prod/web").await;
        assert_eq!(app["tasksRunning"], 2);
        let port = app["tasks"][0]["ports"][0].as_u64().unwrap();
        assert!((31000..=31100).contains(&port));
        // On its own port, the framework serves Marathon's /metrics.
        let (status, metrics) = marathon.send(Method::GET, "/metrics", None).await;
        assert_eq!(status, 200, "{metrics}");
        assert_eq!(metrics["gauges"]["marathon.instances.running.gauge"]["value"], 2.0, "{metrics}");
        assert_eq!(metrics["gauges"]["marathon.apps.active.gauge"]["value"], 1.0, "{metrics}");

        // A task that dies is replaced, and the failure is reported.
        let pid = task_pid(&agent, &tasks[0]).await;
        nix_kill(pid);
        wait_for("the failure to be recorded", LONG, || async {
            let app = marathon.app("/prod/web").await;
            (app["lastTaskFailure"]["taskId"] == tasks[0].as_str()).then_some(())
        })
        .await;
        let healed = marathon.running("/prod/web", 2).await;
        assert!(!healed.contains(&tasks[0]) && healed.contains(&tasks[1]), "{healed:?}");

        // Scale up, then down by killing a task with scale=true.
        marathon.settled().await;
        let (status, _) = marathon.send(Method::PATCH, "/v2/apps/prod/web", Some(json!({"instances": 3}))).await;
        assert_eq!(status, 200);
        let three = marathon.running("/prod/web", 3).await;
        let (status, body) =
            marathon.send(Method::DELETE, &format!("/v2/apps/prod/web/tasks/{}?scale=true", three[0]), None).await;
        assert_eq!(status, 200, "{body}");
        let two = marathon.running("/prod/web", 2).await;
        assert_eq!(marathon.app("/prod/web").await["instances"], 2);

        // Restarting the framework loses no app and kills no task.
        marathon.restart().await;
        let after = marathon.running("/prod/web", 2).await;
        let (mut a, mut b) = (two.clone(), after.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "[{}] the same tasks run after the restart", backend.name);

        // Deleting the app kills its tasks.
        marathon.settled().await;
        let (status, _) = marathon.send(Method::DELETE, "/v2/apps/prod/web", None).await;
        assert_eq!(status, 200);
        wait_for("the app's tasks to be gone", LONG, || async {
            master.state().await["tasks"].as_array()?.is_empty().then_some(())
        })
        .await;
        let (status, body) = marathon.send(Method::GET, "/v2/apps/prod/web", None).await;
        assert_eq!((status, body["message"].as_str()), (404, Some("App '/prod/web' does not exist")));
    }
}

#[tokio::test]
async fn wiped_tasks_are_expunged_at_once_and_are_no_failures() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:4;mem:1024;ports:[31000-31100]").await;
    let marathon = Marathon::start(&master, &db, dir.path().join("marathon.log")).await;
    // The tasks ignore SIGTERM, so a kill takes the grace period; a long backoff would show a failure.
    let app = json!({"id": "/wipe", "cmd": "trap '' TERM; sleep 300", "cpus": 0.1, "mem": 16, "instances": 2,
                     "taskKillGracePeriodSeconds": 5, "backoffSeconds": 600});
    assert_eq!(marathon.send(Method::POST, "/v2/apps", Some(app)).await.0, 201);
    let tasks = marathon.running("/wipe", 2).await;
    marathon.settled().await;

    let (status, body) =
        marathon.send(Method::DELETE, &format!("/v2/apps/wipe/tasks/{}?wipe=true", tasks[0]), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task"]["id"], tasks[0].as_str());
    // Expunged at once, while the task itself is still in its grace period.
    let app = marathon.app("/wipe").await;
    assert!(app["tasks"].as_array().unwrap().iter().all(|t| t["id"] != tasks[0].as_str()), "{app:#}");
    assert!(
        master.state().await["tasks"].as_array().unwrap().iter().any(|t| t["id"] == tasks[0].as_str()),
        "the wiped task is still shutting down"
    );
    // Replaced at once (no backoff), and no failure is recorded.
    let replaced = marathon.running("/wipe", 2).await;
    assert!(!replaced.contains(&tasks[0]), "{replaced:?}");
    let app = marathon.app("/wipe").await;
    assert!(app.get("lastTaskFailure").is_none(), "{app:#}");

    // With scale=true the wiped instances are not replaced.
    let (status, body) = marathon.send(Method::DELETE, "/v2/apps/wipe/tasks?wipe=True&scale=true", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["deploymentId"].is_string() && body["version"].is_string(),
        "a scaling kill answers its deployment: {body}"
    );
    let app = marathon.app("/wipe").await;
    assert_eq!((app["instances"].as_u64(), app["tasks"].as_array().map(Vec::len)), (Some(0), Some(0)), "{app:#}");
    wait_for("the wiped tasks to end", LONG, || async {
        master.state().await["tasks"].as_array()?.is_empty().then_some(())
    })
    .await;
    let app = marathon.app("/wipe").await;
    assert!(app.get("lastTaskFailure").is_none() && app["tasks"] == json!([]), "{app:#}");
}

/// The complete events in a Server-Sent Events stream read so far: their type and data.
fn sse_events(stream: &str) -> Vec<(String, Value)> {
    let complete = stream.rsplit_once("\n\n").map_or("", |(done, _)| done);
    complete
        .split("\n\n")
        .filter_map(|e| {
            let kind = e.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = serde_json::from_str(e.lines().find_map(|l| l.strip_prefix("data: "))?).ok()?;
            Some((kind.to_owned(), data))
        })
        .collect()
}

fn nix_kill(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

#[tokio::test]
async fn waiting_apps_say_why_events_stream_and_unhealthy_tasks_are_replaced() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:4;mem:1024;ports:[31000-31100]").await;
    let marathon = Marathon::start(&master, &db, dir.path().join("marathon.log")).await;

    let wanted = ["status_update_event", "deployment_info", "deployment_step_success", "deployment_success"];
    let query: Vec<String> = wanted.iter().map(|w| format!("event_type={w}")).collect();
    let mut events = get(&format!("{}/v2/events?{}", marathon.url, query.join("&")), &marathon.token).await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");

    // A constraint no agent meets: the app waits, and the queue says why.
    let stuck = json!({"id": "/stuck", "cmd": "sleep 300", "cpus": 0.1, "mem": 16, "constraints": [["hostname", "LIKE", "nowhere-.*"]]});
    assert_eq!(marathon.send(Method::POST, "/v2/apps", Some(stuck)).await.0, 201);
    let entry = wait_for("the queue to explain the wait", LONG, || async {
        let (_, q) = marathon.send(Method::GET, "/v2/queue", None).await;
        let entry = q["queue"].as_array()?.iter().find(|e| e["app"]["id"] == "/stuck")?.clone();
        let reasons = entry["processedOffersSummary"]["rejectSummaryLastOffers"].as_array()?.clone();
        reasons.iter().any(|r| r["reason"] == "UnfulfilledConstraint").then_some(entry)
    })
    .await;
    assert_eq!(entry["count"], 1);
    // An app that accepts only reserved resources waits too: Keel's agents offer unreserved ones.
    let reserved =
        json!({"id": "/reserved", "cmd": "sleep 300", "cpus": 0.1, "mem": 16, "acceptedResourceRoles": ["production"]});
    assert_eq!(marathon.send(Method::POST, "/v2/apps", Some(reserved)).await.0, 201);
    wait_for("the queue to name the role", LONG, || async {
        let (_, q) = marathon.send(Method::GET, "/v2/queue", None).await;
        let entry = q["queue"].as_array()?.iter().find(|e| e["app"]["id"] == "/reserved")?.clone();
        let reasons = entry["processedOffersSummary"]["rejectSummaryLastOffers"].as_array()?.clone();
        reasons.iter().any(|r| r["reason"] == "UnfulfilledRole" && r["declined"].as_u64() > Some(0)).then_some(())
    })
    .await;
    assert_eq!(marathon.send(Method::DELETE, "/v2/apps/reserved?force=true", None).await.0, 200);

    // Dropping the constraint lets it run; the event stream reports it. (The stuck deployment is
    // overridden with force.)
    // PUT merges what it is given, as Marathon's does: the constraint is dropped by naming none.
    let fixed = json!({"cmd": "sleep 300", "cpus": 0.1, "mem": 16, "constraints": []});
    assert_eq!(marathon.send(Method::PUT, "/v2/apps/stuck", Some(fixed.clone())).await.0, 409);
    let (status, body) = marathon.send(Method::PUT, "/v2/apps/stuck?force=True", Some(fixed)).await;
    assert_eq!(status, 200);
    let deployment = body["deploymentId"].as_str().unwrap().to_owned();
    marathon.running("/stuck", 1).await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + LONG;
    let finished = |seen: &str| {
        let events = sse_events(seen);
        events.iter().any(|(kind, e)| kind == "deployment_success" && e["id"] == deployment.as_str())
            && events.iter().any(|(kind, e)| kind == "status_update_event" && e["taskStatus"] == "TASK_RUNNING")
    };
    while !finished(&seen) {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .unwrap_or_else(|_| panic!("no TASK_RUNNING or deployment_success event in {seen}"))
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: status_update_event"), "{seen}");
    assert!(!seen.contains("api_post_event"), "the event_type filter holds: {seen}");
    // The deployment was announced when it started, its step reported done, then the deployment.
    let events = sse_events(&seen);
    let of_deployment = |kind: &str| -> Option<(usize, Value)> {
        events
            .iter()
            .position(|(k, e)| k == kind && e["plan"]["id"] == deployment.as_str())
            .map(|i| (i, events[i].1.clone()))
    };
    let (started, info) = of_deployment("deployment_info").expect("a deployment_info event");
    let (stepped, step) = of_deployment("deployment_step_success").expect("a deployment_step_success event");
    let (done, _) = of_deployment("deployment_success").expect("a deployment_success event");
    assert!(started < stepped && stepped < done, "{seen}");
    let action = json!({"actions": [{"action": "RestartApplication", "app": "/stuck"}]});
    for e in [&info, &step] {
        assert_eq!(e["currentStep"], action, "{e}");
        assert_eq!(e["plan"]["steps"], json!([action]), "{e}");
        assert!(e["timestamp"].is_string() && e["plan"]["version"].is_string(), "{e}");
    }
    let (_, q) = marathon.send(Method::GET, "/v2/queue", None).await;
    assert!(q["queue"].as_array().unwrap().is_empty(), "{q}");

    // requirePorts: the task gets exactly the host port the app names.
    let fixed_port = json!({"id": "/fixed", "cmd": "exec sleep 300", "cpus": 0.1, "mem": 16, "requirePorts": true,
                            "portDefinitions": [{"port": 31050}]});
    assert_eq!(marathon.send(Method::POST, "/v2/apps", Some(fixed_port)).await.0, 201);
    marathon.running("/fixed", 1).await;
    assert_eq!(marathon.app("/fixed").await["tasks"][0]["ports"], json!([31050]));

    // A task that fails its health checks is killed by its agent and replaced.
    let flaky = json!({
        "id": "/flaky", "cmd": "touch healthy; sleep 2; rm healthy; exec sleep 300", "cpus": 0.1, "mem": 16,
        "healthChecks": [{"protocol": "COMMAND", "command": {"value": "test -f healthy"}, "gracePeriodSeconds": 0,
                          "intervalSeconds": 1, "timeoutSeconds": 2, "maxConsecutiveFailures": 2}]
    });
    assert_eq!(marathon.send(Method::POST, "/v2/apps", Some(flaky)).await.0, 201);
    let first = marathon.running("/flaky", 1).await;
    wait_for("the unhealthy task to be replaced", LONG, || async {
        let app = marathon.app("/flaky").await;
        let failure = &app["lastTaskFailure"];
        let replaced = app["tasks"].as_array()?.iter().any(|t| t["id"] != first[0].as_str());
        (failure["taskId"] == first[0].as_str() && failure["state"] == "TASK_KILLED" && replaced).then_some(())
    })
    .await;
    let (_, q) = marathon.send(Method::GET, "/v2/apps/flaky", None).await;
    assert!(q["app"]["lastTaskFailure"]["message"].as_str().unwrap().contains("health checks"), "{q}");
}

#[tokio::test]
async fn rolling_upgrades_keep_capacity_and_failing_deployments_roll_back() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:4;mem:1024;ports:[31000-31100]").await;
    let marathon = Marathon::start(&master, &db, dir.path().join("marathon.log")).await;
    let health = json!([{"protocol": "COMMAND", "command": {"value": "true"}, "gracePeriodSeconds": 0, "intervalSeconds": 1, "timeoutSeconds": 2, "maxConsecutiveFailures": 3}]);
    let v1 = json!({"id": "/svc", "cmd": "exec sleep 300", "cpus": 0.1, "mem": 16, "instances": 2, "env": {"V": "1"},
                    "healthChecks": health, "labels": {"KEEL_ROLLBACK_ON_FAILURE": "true"},
                    "upgradeStrategy": {"minimumHealthCapacity": 1.0, "maximumOverCapacity": 0.5}});
    assert_eq!(marathon.send(Method::POST, "/v2/apps", Some(v1.clone())).await.0, 201);
    let healthy =
        |app: &Value| app["tasks"].as_array().map_or(0, |t| t.iter().filter(|t| t["state"] == "TASK_RUNNING").count());
    wait_for("v1 to be deployed", LONG, || async {
        let (_, d) = marathon.send(Method::GET, "/v2/deployments", None).await;
        (d.as_array()?.is_empty() && marathon.app("/svc").await["tasksHealthy"] == 2).then_some(())
    })
    .await;
    let old: Vec<String> = marathon.app("/svc").await["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    // Every task view shows the agents' health reports as Marathon's healthCheckResults.
    let (_, by_app) = marathon.send(Method::GET, "/v2/apps/svc/tasks", None).await;
    let (_, all) = marathon.send(Method::GET, "/v2/tasks", None).await;
    let (_, embedded) = marathon.send(Method::GET, "/v2/apps?embed=apps.tasks", None).await;
    for tasks in [&by_app["tasks"], &all["tasks"], &embedded["apps"][0]["tasks"]] {
        assert_eq!(tasks.as_array().unwrap().len(), 2, "{tasks:#}");
        for t in tasks.as_array().unwrap() {
            let r = &t["healthCheckResults"][0];
            assert_eq!((&r["alive"], &r["consecutiveFailures"], &r["instanceId"]), (&json!(true), &json!(0), &t["id"]));
            assert!(r["firstSuccess"].as_str().is_some_and(|s| s.ends_with('Z')), "{t:#}");
        }
    }

    // Upgrade: never fewer than 2 healthy instances, never more than 3 instances.
    let mut v2 = v1.clone();
    v2["env"]["V"] = json!("2");
    let (status, body) = marathon.send(Method::PUT, "/v2/apps/svc", Some(v2.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["deploymentId"].is_string());
    let (status, body) = marathon.send(Method::PUT, "/v2/apps/svc", Some(v2.clone())).await;
    assert_eq!(status, 409, "a change during a deployment needs force: {body}");
    assert!(body["message"].as_str().unwrap().contains("locked by one or more deployments"));
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        // Deployments first: an app read after the deployment list shows at least that much progress.
        let (_, d) = marathon.send(Method::GET, "/v2/deployments", None).await;
        let app = marathon.app("/svc").await;
        let tasks = app["tasks"].as_array().unwrap().clone();
        assert!(tasks.len() <= 3, "over capacity: {tasks:#?}");
        assert!(app["tasksHealthy"].as_u64().unwrap() >= 2 || healthy(&app) >= 2, "capacity dropped: {app:#}");
        if d.as_array().unwrap().is_empty() {
            let ids: Vec<&str> = tasks.iter().filter_map(|t| t["id"].as_str()).collect();
            assert!(ids.iter().all(|id| !old.iter().any(|o| o == id)), "old tasks remain: {ids:?}");
            assert_eq!(ids.len(), 2);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the upgrade did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A version that never becomes healthy: the deployment fails after its timeout and is rolled back, and
    // the v2 instances serve throughout.
    let mut events =
        get(&format!("{}/v2/events?event_type=deployment_failed", marathon.url), &marathon.token).await.unwrap();
    let mut broken = v2.clone();
    broken["cmd"] = json!("exit 1");
    let (status, _) = marathon.send(Method::PUT, "/v2/apps/svc", Some(broken)).await;
    assert_eq!(status, 200);
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while !seen.contains("deployment_failed") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("no deployment_failed event")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("no progress for 4s"), "{seen}");
    wait_for("the rollback to finish", LONG, || async {
        let (_, d) = marathon.send(Method::GET, "/v2/deployments", None).await;
        let app = marathon.app("/svc").await;
        (app["cmd"] == "exec sleep 300" && d.as_array()?.is_empty() && app["tasksHealthy"] == 2).then_some(())
    })
    .await;

    // A restart replaces every instance, keeping capacity like any upgrade.
    let before: Vec<String> = marathon.app("/svc").await["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let (status, body) = marathon.send(Method::POST, "/v2/apps/svc/restart", None).await;
    assert_eq!(status, 200, "{body}");
    marathon.settled().await;
    let ids = marathon.running("/svc", 2).await;
    assert!(ids.iter().all(|id| !before.contains(id)), "all replaced: {ids:?} {before:?}");

    // Cancelling a deployment without force rolls it back too.
    let mut big = v2.clone();
    big["cpus"] = json!(100);
    let (_, body) = marathon.send(Method::PUT, "/v2/apps/svc", Some(big)).await;
    let id = body["deploymentId"].as_str().unwrap().to_owned();
    let (status, _) = marathon.send(Method::DELETE, &format!("/v2/deployments/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(marathon.app("/svc").await["cpus"], 0.1);
    // Both a cancelled deployment and one replaced by a forced change end with deployment_failed.
    let mut stuck = v2.clone();
    stuck["cpus"] = json!(50);
    let (_, body) = marathon.send(Method::PUT, "/v2/apps/svc?force=true", Some(stuck)).await;
    let replaced = body["deploymentId"].as_str().unwrap().to_owned();
    let mut wider = v2.clone();
    wider["mem"] = json!(100_000);
    let (status, body) = marathon.send(Method::PUT, "/v2/apps/svc?force=true", Some(wider)).await;
    assert_eq!(status, 200, "{body}");
    let expected = [
        (id, "cancelled and rolled back".to_owned()),
        (replaced, format!("replaced by deployment {}", body["deploymentId"].as_str().unwrap())),
    ];
    let failed = |seen: &str| -> Vec<(String, String)> {
        sse_events(seen)
            .into_iter()
            .map(|(_, data)| {
                (data["id"].as_str().unwrap_or("").to_owned(), data["reason"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + LONG;
    while !expected.iter().all(|e| failed(&seen).contains(e)) {
        // The stream's keep-alives arrive as chunks too: the deadline covers the whole wait.
        let chunk = tokio::time::timeout_at(deadline, events.chunk()).await;
        let chunk = chunk.unwrap_or_else(|_| panic!("expected {expected:?} in the deployment_failed events: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    let (status, body) = marathon.send(Method::DELETE, "/v2/deployments/nope", None).await;
    assert_eq!((status, body["message"].as_str()), (404, Some("DeploymentPlan nope does not exist")));
}

#[tokio::test]
async fn tasks_of_a_lost_agent_move_to_another() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "2s").await;
    let mut doomed = Agent::start_with(
        &master,
        &dir.path().join("a1"),
        "cpus:2;mem:512;ports:[31000-31010]",
        &["--hostname", "host-a"],
    )
    .await;
    let _survivor = Agent::start_with(
        &master,
        &dir.path().join("a2"),
        "cpus:2;mem:512;ports:[31100-31110]",
        &["--hostname", "host-b"],
    )
    .await;
    let marathon = Marathon::start(&master, &db, dir.path().join("marathon.log")).await;
    let app = json!({"id": "/spread", "cmd": "exec sleep 300", "cpus": 0.1, "mem": 16, "instances": 2,
                     "constraints": [["hostname", "UNIQUE"]],
                     "unreachableStrategy": {"inactiveAfterSeconds": 1, "expungeAfterSeconds": 600}});
    assert_eq!(marathon.send(Method::POST, "/v2/apps", Some(app)).await.0, 201);
    marathon.running("/spread", 2).await;
    let hosts = |app: &Value| -> Vec<String> {
        let mut h: Vec<String> =
            app["tasks"].as_array().unwrap().iter().map(|t| t["host"].as_str().unwrap().to_owned()).collect();
        h.sort();
        h
    };
    assert_eq!(hosts(&marathon.app("/spread").await), vec!["host-a", "host-b"], "UNIQUE spreads them");

    // With host-a gone, UNIQUE cannot place the replacement: the app waits, and says so.
    doomed.proc.kill();
    let entry = wait_for("the replacement to wait on the constraint", LONG, || async {
        let (_, q) = marathon.send(Method::GET, "/v2/queue", None).await;
        let e = q["queue"].as_array()?.iter().find(|e| e["app"]["id"] == "/spread")?.clone();
        e["processedOffersSummary"]["rejectSummaryLastOffers"]
            .as_array()?
            .iter()
            .any(|r| r["reason"] == "UnfulfilledConstraint")
            .then_some(e)
    })
    .await;
    assert_eq!(entry["count"], 1);

    // Without the constraint, the lost task moves to host-b.
    let moved = json!({"cmd": "exec sleep 300", "cpus": 0.1, "mem": 16, "instances": 2, "constraints": [],
                       "unreachableStrategy": {"inactiveAfterSeconds": 1, "expungeAfterSeconds": 600}});
    assert_eq!(marathon.send(Method::PUT, "/v2/apps/spread?force=true", Some(moved)).await.0, 200);
    wait_for("two tasks running on host-b", LONG, || async {
        let app = marathon.app("/spread").await;
        let running: Vec<&Value> = app["tasks"].as_array()?.iter().filter(|t| t["state"] == "TASK_RUNNING").collect();
        (running.len() == 2 && running.iter().all(|t| t["host"] == "host-b")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_docker_app_on_agents_without_docker_waits_and_says_why() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let _agent =
        Agent::start_with(&master, &dir.path().join("agent"), "cpus:2;mem:512;ports:[31000-31010]", &["--no-docker"])
            .await;
    let marathon = Marathon::start(&master, &db, dir.path().join("marathon.log")).await;
    let app = json!({"id": "/boxed", "cpus": 0.1, "mem": 16, "container": {"type": "DOCKER", "docker": {"image": "keel-test/busybox"}}});
    assert_eq!(marathon.send(Method::POST, "/v2/apps", Some(app)).await.0, 201);
    wait_for("the queue to say there is no Docker", LONG, || async {
        let (_, q) = marathon.send(Method::GET, "/v2/queue", None).await;
        let e = q["queue"].as_array()?.iter().find(|e| e["app"]["id"] == "/boxed")?.clone();
        e["processedOffersSummary"]["rejectSummaryLastOffers"]
            .as_array()?
            .iter()
            .any(|r| r["reason"] == "NoDockerOnAgent")
            .then_some(())
    })
    .await;
    assert!(master.state().await["tasks"].as_array().unwrap().is_empty(), "nothing was launched where it cannot run");
}

#[tokio::test]
async fn a_docker_app_serves_passes_its_health_check_and_its_container_goes_when_scaled_to_zero() {
    use reqwest::Method;
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let port = free_port();
    let _agent =
        Agent::start(&master, &dir.path().join("agent"), &format!("cpus:2;mem:512;ports:[{port}-{port}]")).await;
    let marathon = Marathon::start(&master, &db, dir.path().join("marathon.log")).await;
    let app = json!({
        "id": "/boxed/web", "cmd": "exec httpd -f -p $PORT0 -h /www", "cpus": 0.1, "mem": 32,
        "container": {"type": "DOCKER", "docker": {"image": TEST_IMAGE}},
        "healthChecks": [{"protocol": "MESOS_HTTP", "path": "/index.html", "portIndex": 0, "gracePeriodSeconds": 30,
                          "intervalSeconds": 1, "timeoutSeconds": 2, "maxConsecutiveFailures": 3}]
    });
    let (status, body) = marathon.send(Method::POST, "/v2/apps", Some(app)).await;
    assert_eq!(status, 201, "{body}");
    let task = wait_for("the container to run and be healthy", LONG, || async {
        let app = marathon.app("/boxed/web").await;
        let t = app["tasks"].as_array()?.first()?.clone();
        let healthy = t["state"] == "TASK_RUNNING" && t["healthCheckResults"][0]["alive"] == true;
        (healthy && app["tasksHealthy"] == 1).then_some(t)
    })
    .await;
    assert_eq!(task["ports"], json!([port]));
    let body = reqwest::get(format!("http://127.0.0.1:{port}/index.html")).await.unwrap().text().await.unwrap();
    assert_eq!(body, "hello from keel-test\n");
    let id = task["id"].as_str().unwrap().to_owned();
    let by_label = format!("label=keel.task_id={id}");
    let container = docker(&["ps", "-q", "--filter", &by_label]);
    assert!(!container.is_empty(), "no running container labelled with {id}");
    assert_eq!(docker(&["inspect", "-f", "{{index .Config.Image}}", &container]), TEST_IMAGE);

    marathon.settled().await;
    let (status, body) = marathon.send(Method::PATCH, "/v2/apps/boxed/web", Some(json!({"instances": 0}))).await;
    assert_eq!(status, 200, "{body}");
    marathon.settled().await;
    wait_for("the app to have no tasks", LONG, || async {
        marathon.app("/boxed/web").await["tasks"].as_array()?.is_empty().then_some(())
    })
    .await;
    wait_for("the container to be gone", LONG, || async {
        docker(&["ps", "-a", "-q", "--filter", &by_label]).is_empty().then_some(())
    })
    .await;
    assert!(marathon.app("/boxed/web").await.get("lastTaskFailure").is_none(), "a scale-down is no failure");
}
