//! High availability of the master: several `keel master` processes on one database elect one leader; the
//! others redirect to it; when it dies, a standby takes over, and agents and frameworks given every master
//! follow it without a task killed or launched twice. Run on PostgreSQL (required under CI) and SQLite.

mod common;

use std::time::{Duration, Instant};

use common::{Proc, create_token, free_port, wait_for};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

struct Masters {
    procs: Vec<Option<Proc>>,
    urls: Vec<String>,
    token: String,
    http: reqwest::Client,
}

impl Masters {
    fn start(dir: &std::path::Path, db: &str, n: usize) -> Masters {
        let token = create_token(db, "admin", "ha-admin", &[]);
        let mut procs = vec![];
        let mut urls = vec![];
        for i in 0..n {
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            // Advertised by name: standbys redirect there, not to the address they listen on.
            let url = format!("http://localhost:{port}");
            let args = [
                "master",
                "--listen",
                &listen,
                "--advertise-url",
                &url,
                "--database-url",
                db,
                "--agent-timeout",
                "10s",
            ];
            procs.push(Some(Proc::spawn(&args, dir.join(format!("master-{i}.log")))));
            urls.push(url);
        }
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Masters { procs, urls, token, http }
    }

    /// Which master says it is elected, by index.
    async fn leader(&self) -> Option<usize> {
        for (i, url) in self.urls.iter().enumerate() {
            if self.procs[i].is_none() {
                continue;
            }
            let Ok(r) = self.http.get(format!("{url}/master/leader")).send().await else { continue };
            if r.json::<Value>().await.ok()?["elected"] == true {
                return Some(i);
            }
        }
        None
    }

    async fn get(&self, i: usize, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.urls[i])).bearer_auth(&self.token).send().await.unwrap()
    }
}

#[tokio::test]
async fn one_master_leads_the_others_redirect_and_a_standby_takes_over() {
    for backend in common::backends().await {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Masters::start(dir.path(), &backend.url, 2);
        let first = wait_for("a leader", LONG, || m.leader()).await;
        let other = 1 - first;
        wait_for("the standby to know the leader", LONG, || async {
            let r = m.get(other, "/master/state").await;
            (r.status() == 307).then(|| r.headers()["location"].to_str().unwrap().to_owned())
        })
        .await;
        assert_eq!(m.get(first, "/master/state").await.status(), 200, "{}", backend.name);
        let r = m.get(other, "/v2/apps?x=1").await;
        assert_eq!(r.headers()["location"], format!("{}/v2/apps?x=1", m.urls[first]).as_str(), "{}", backend.name);
        let health: Value = m.get(other, "/health").await.json().await.unwrap();
        assert_eq!((health["standby"].clone(), health["leader"].clone()), (json!(true), json!(m.urls[first])));

        // An agent and the services framework, each given both masters.
        let all = m.urls.join(",");
        let work = dir.path().join("agent");
        let _agent = Proc::spawn_as(
            &[
                "agent",
                "--master",
                &all,
                "--work-dir",
                work.to_str().unwrap(),
                "--resources",
                "cpus:4;mem:4096;disk:1024;ports:[32000-32099]",
                "--default-user",
                "root",
            ],
            dir.path().join("agent.log"),
            Some(&m.token),
        );
        let mport = free_port();
        let marathon = format!("http://127.0.0.1:{mport}");
        let _marathon = Proc::spawn_as(
            &["marathon", "--master", &all, "--listen", &format!("127.0.0.1:{mport}"), "--database-url", &backend.url],
            dir.path().join("marathon.log"),
            Some(&m.token),
        );
        let app = json!({"id": "/web", "cmd": "exec sleep 3600", "cpus": 0.1, "mem": 16, "instances": 1});
        wait_for("the services framework to take the app", LONG, || async {
            let r = m.http.post(format!("{marathon}/v2/apps")).bearer_auth(&m.token).json(&app).send().await.ok()?;
            (r.status() == 201).then_some(())
        })
        .await;
        let tasks = || async {
            let r = m.http.get(format!("{marathon}/v2/apps/web/tasks")).bearer_auth(&m.token).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            Some(
                v["tasks"]
                    .as_array()?
                    .iter()
                    .map(|t| (t["id"].as_str().unwrap().to_owned(), t["state"].clone()))
                    .collect::<Vec<_>>(),
            )
        };
        let before = wait_for("the task to run", LONG, || async {
            tasks().await.filter(|t| t.len() == 1 && t[0].1 == "TASK_RUNNING")
        })
        .await;

        // SIGKILL the leader: the standby leads, and everyone follows it.
        m.procs[first].take().unwrap().kill();
        let killed = Instant::now();
        wait_for("the standby to lead", LONG, || async { (m.leader().await == Some(other)).then_some(()) }).await;
        let elected = killed.elapsed();
        wait_for("the agent and the framework to follow the new leader", LONG, || async {
            let s: Value = m.get(other, "/master/state").await.json().await.ok()?;
            let agent = s["agents"].as_array()?.iter().any(|a| a["status"] == "active");
            let framework =
                s["frameworks"].as_array()?.iter().any(|f| f["name"] == "marathon" && f["connected"] == true);
            let task =
                s["tasks"].as_array()?.iter().any(|t| t["id"] == before[0].0.as_str() && t["state"] == "TASK_RUNNING");
            (agent && framework && task).then_some(())
        })
        .await;
        let followed = killed.elapsed();
        println!("{}: elected after {elected:?}, agent, framework and task back after {followed:?}", backend.name);
        assert!(elected < Duration::from_secs(5), "{}: a standby took {elected:?} to lead", backend.name);

        // Nothing was killed or launched twice, and the new leader offers: a scale-up launches.
        assert_eq!(tasks().await.unwrap(), before, "{}: the same task, still running", backend.name);
        let r = m.http.put(format!("{marathon}/v2/apps/web")).bearer_auth(&m.token).json(&json!({"instances": 2}));
        assert_eq!(r.send().await.unwrap().status(), 200);
        let after = wait_for("the new leader to launch", LONG, || async {
            tasks().await.filter(|t| t.len() == 2 && t.iter().all(|t| t.1 == "TASK_RUNNING"))
        })
        .await;
        assert!(after.iter().any(|t| t.0 == before[0].0), "{}: the first task lives on", backend.name);
    }
}

/// Two instances of each framework on one database: one of each leads, the other redirects to it; when the
/// services framework's leader dies, its standby serves the same apps, and their tasks keep running.
#[tokio::test]
async fn each_framework_elects_one_leader_and_a_standby_takes_over() {
    for backend in common::backends().await {
        let dir = tempfile::tempdir().unwrap();
        let m = Masters::start(dir.path(), &backend.url, 1);
        wait_for("the master to lead", LONG, || m.leader()).await;
        let work = dir.path().join("agent");
        let _agent = Proc::spawn_as(
            &[
                "agent",
                "--master",
                &m.urls[0],
                "--work-dir",
                work.to_str().unwrap(),
                "--resources",
                "cpus:4;mem:4096;disk:1024;ports:[32100-32199]",
                "--default-user",
                "root",
            ],
            dir.path().join("agent.log"),
            Some(&m.token),
        );
        let start = |kind: &'static str, i: usize| {
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            let args = [kind, "--master", &m.urls[0], "--listen", &listen, "--database-url", &backend.url];
            (
                Some(Proc::spawn_as(&args, dir.path().join(format!("{kind}-{i}.log")), Some(&m.token))),
                format!("http://{listen}"),
            )
        };
        let mut marathons = vec![start("marathon", 0)];
        wait_for("the first services framework to lead", LONG, || async {
            let r = m.http.get(format!("{}/keel/v1/leader", marathons[0].1)).send().await.ok()?;
            (r.json::<Value>().await.ok()?["elected"] == true).then_some(())
        })
        .await;
        marathons.push(start("marathon", 1));
        let chronos = [start("chronos", 0), start("chronos", 1)];
        let (leader, standby) = (marathons[0].1.clone(), marathons[1].1.clone());
        let r = wait_for("the standby to redirect", LONG, || async {
            let r = m.http.get(format!("{standby}/v2/apps")).bearer_auth(&m.token).send().await.ok()?;
            (r.status() == 307).then_some(r)
        })
        .await;
        assert_eq!(r.headers()["location"], format!("{leader}/v2/apps").as_str(), "{}", backend.name);
        let said: Value = m.http.get(format!("{standby}/v2/leader")).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            said["leader"],
            leader.trim_start_matches("http://"),
            "{}: Marathon's /v2/leader shape",
            backend.name
        );
        // One cron framework leads too.
        let elected = wait_for("one cron framework to lead", LONG, || async {
            let mut n = 0;
            for (_, url) in &chronos {
                let v: Value = m.http.get(format!("{url}/keel/v1/leader")).send().await.ok()?.json().await.ok()?;
                n += usize::from(v["elected"] == true);
            }
            (n == 1).then_some(n)
        })
        .await;
        assert_eq!(elected, 1);

        let app = json!({"id": "/web", "cmd": "exec sleep 3600", "cpus": 0.1, "mem": 16, "instances": 1});
        let r = m.http.post(format!("{leader}/v2/apps")).bearer_auth(&m.token).json(&app).send().await.unwrap();
        assert_eq!(r.status(), 201, "{}", backend.name);
        let tasks = |url: String| {
            let (http, token) = (m.http.clone(), m.token.clone());
            async move {
                let r = http.get(format!("{url}/v2/apps/web/tasks")).bearer_auth(&token).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                let t = v["tasks"].as_array()?.first()?.clone();
                (t["state"] == "TASK_RUNNING").then(|| t["id"].as_str().unwrap().to_owned())
            }
        };
        let task = wait_for("the task to run", LONG, || tasks(leader.clone())).await;

        marathons[0].0.take().unwrap().kill();
        let killed = Instant::now();
        let after = wait_for("the standby to serve the app's running task", LONG, || tasks(standby.clone())).await;
        println!(
            "{}: the services framework's standby served /v2/apps {:?} after the SIGKILL",
            backend.name,
            killed.elapsed()
        );
        assert_eq!(after, task, "{}: the same task, not a replacement", backend.name);
    }
}

/// With Keel's default `unreachableStrategy`, a task on an agent that died runs again elsewhere as soon as
/// the master finds the agent unreachable; when the agent comes back, the extra copy is killed.
#[tokio::test]
async fn a_dead_agents_task_runs_again_elsewhere_and_the_extra_copy_goes_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = common::Master::start(dir.path(), &db, "2s").await;
    let resources = "cpus:2;mem:512;ports:[31200-31210]";
    let mut a = common::Agent::start_with(&master, &dir.path().join("a"), resources, &["--hostname", "host-a"]).await;
    let mut b = common::Agent::start_with(&master, &dir.path().join("b"), resources, &["--hostname", "host-b"]).await;
    let marathon = common::FrameworkProc::start("marathon", &master, &db, &[], dir.path().join("marathon.log")).await;
    let http = reqwest::Client::new();
    let app = json!({"id": "/svc", "cmd": "exec sleep 600", "cpus": 0.1, "mem": 16, "instances": 1});
    let r = http.post(format!("{}/v2/apps", marathon.url)).bearer_auth(&master.token).json(&app).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let running = || async {
        let r = http.get(format!("{}/v2/apps/svc/tasks", marathon.url)).bearer_auth(&master.token).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        let mut t: Vec<(String, String)> = v["tasks"]
            .as_array()?
            .iter()
            .filter(|t| t["state"] == "TASK_RUNNING")
            .map(|t| (t["id"].as_str().unwrap().to_owned(), t["host"].as_str().unwrap().to_owned()))
            .collect();
        t.sort();
        Some(t)
    };
    let first = wait_for("the task to run", LONG, || async { running().await.filter(|t| t.len() == 1) }).await;
    let (doomed, other) = if first[0].1 == "host-a" { (&mut a, "host-b") } else { (&mut b, "host-a") };
    doomed.proc.kill();
    let killed = Instant::now();
    let moved = wait_for("a copy running on the other agent", LONG, || async {
        running().await.filter(|t| t.iter().any(|(_, h)| h == other))
    })
    .await;
    println!("running again on {other} {:?} after its agent died (agent timeout 2 s)", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(12), "took {:?}", killed.elapsed());
    assert!(moved.iter().all(|(id, _)| *id != first[0].0), "a new task, not the unreachable one");

    // The agent comes back with its task: it is reported again, and one of the two copies is killed.
    doomed.restart(&master).await;
    let original = first[0].0.clone();
    let settled = wait_for("the original reported again, and one copy left", LONG, || async {
        let s = master.state().await;
        let all = s["tasks"].as_array()?.iter().chain(s["completed_tasks"].as_array()?.iter());
        let reported_again = all.filter(|t| t["id"] == original.as_str()).any(|t| t["state"] != "TASK_UNREACHABLE");
        let t = running().await?;
        (reported_again && t.len() == 1).then_some(t)
    })
    .await;
    println!("after the agent came back, one copy runs: {settled:?}");
}
