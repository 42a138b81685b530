//! End-to-end tests of the services framework: a real master, agent and `keel marathon` process, driven
//! through the Marathon REST API.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

struct Marathon {
    child: Child,
    url: String,
    port: u16,
    master: String,
    db: String,
    log: std::path::PathBuf,
}

impl Marathon {
    async fn start(master: &Master, db: &str, log: std::path::PathBuf) -> Marathon {
        Self::start_on(free_port(), &master.url(), db, log).await
    }

    async fn start_on(port: u16, master: &str, db: &str, log: std::path::PathBuf) -> Marathon {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(KEEL)
            .args(["marathon", "--master", master, "--listen", &format!("127.0.0.1:{port}"), "--database-url", db])
            .args(["--deployment-timeout", "4s"])
            .env("KEEL_LOG", "info,keel_marathon=debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let m = Marathon {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            master: master.into(),
            db: db.into(),
            log,
        };
        wait_for("marathon to answer /ping", LONG, || async {
            reqwest::get(format!("{}/ping", m.url)).await.ok().map(|_| ())
        })
        .await;
        m
    }

    async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log.with_extension("2.log");
        *self = Marathon::start_on(self.port, &self.master.clone(), &self.db.clone(), log).await;
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let mut req = client.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
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

impl Drop for Marathon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), std::fs::read_to_string(&self.log).unwrap_or_default());
        }
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

    let mut events = reqwest::get(format!("{}/v2/events?event_type=status_update_event", marathon.url)).await.unwrap();
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

    // Dropping the constraint lets it run; the event stream reports it. (The stuck deployment is
    // overridden with force.)
    let fixed = json!({"cmd": "sleep 300", "cpus": 0.1, "mem": 16});
    assert_eq!(marathon.send(Method::PUT, "/v2/apps/stuck", Some(fixed.clone())).await.0, 409);
    assert_eq!(marathon.send(Method::PUT, "/v2/apps/stuck?force=True", Some(fixed)).await.0, 200);
    marathon.running("/stuck", 1).await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while !seen.contains("\"taskStatus\":\"TASK_RUNNING\"") {
        let chunk =
            tokio::time::timeout_at(deadline, events.chunk()).await.expect("no TASK_RUNNING event").unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: status_update_event"), "{seen}");
    assert!(!seen.contains("api_post_event"), "the event_type filter holds: {seen}");
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
        let app = marathon.app("/svc").await;
        let tasks = app["tasks"].as_array().unwrap().clone();
        assert!(tasks.len() <= 3, "over capacity: {tasks:#?}");
        assert!(app["tasksHealthy"].as_u64().unwrap() >= 2 || healthy(&app) >= 2, "capacity dropped: {app:#}");
        let (_, d) = marathon.send(Method::GET, "/v2/deployments", None).await;
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
    let mut events = reqwest::get(format!("{}/v2/events?event_type=deployment_failed", marathon.url)).await.unwrap();
    let mut broken = v2.clone();
    broken["cmd"] = json!("exit 1");
    let (status, _) = marathon.send(Method::PUT, "/v2/apps/svc", Some(broken)).await;
    assert_eq!(status, 200);
    let mut seen = String::new();
    while !seen.contains("deployment_failed") {
        let chunk =
            tokio::time::timeout(LONG, events.chunk()).await.expect("no deployment_failed event").unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("no progress for 4s"), "{seen}");
    wait_for("the rollback to finish", LONG, || async {
        let app = marathon.app("/svc").await;
        let (_, d) = marathon.send(Method::GET, "/v2/deployments", None).await;
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
    let moved = json!({"cmd": "exec sleep 300", "cpus": 0.1, "mem": 16, "instances": 2,
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
