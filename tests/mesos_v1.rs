//! Mesos's v1 scheduler HTTP API (`POST /api/v1/scheduler`) against a real master and agent: every call
//! type, the bad inputs Mesos answers 400/403 to, a v1 framework beside a gRPC one on the same
//! allocator, and a v1 framework whose connection drops mid-stream.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const LONG: Duration = Duration::from_secs(20);

/// A v1 framework spoken to in raw JSON, as a Mesos client would.
struct V1 {
    url: String,
    auth: String,
    http: reqwest::Client,
    stream_id: String,
    framework_id: String,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every event received, in order.
    seen: Vec<Value>,
    reader: tokio::task::JoinHandle<()>,
}

fn basic(user: &str, secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}")))
}

fn subscribe_call(name: &str, framework_id: Option<&str>, role: &str) -> Value {
    let mut info = json!({ "user": "root", "name": name, "failover_timeout": 60.0, "role": role });
    let mut call = json!({ "type": "SUBSCRIBE", "subscribe": { "framework_info": info.clone() } });
    if let Some(id) = framework_id {
        info["id"] = json!({ "value": id });
        call = json!({ "type": "SUBSCRIBE", "framework_id": { "value": id }, "subscribe": { "framework_info": info } });
    }
    call
}

impl V1 {
    /// SUBSCRIBEs and waits for SUBSCRIBED, checking the stream is what Mesos clients expect.
    async fn subscribe(master: &Master, auth: &str, call: Value) -> V1 {
        let url = format!("{}/api/v1/scheduler", master.url());
        let http = reqwest::Client::new();
        let resp = http
            .post(&url)
            .header("authorization", auth)
            .header("accept", "application/json")
            .json(&call)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "SUBSCRIBE: {:?}", resp.text().await);
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        let stream_id = resp.headers()["mesos-stream-id"].to_str().unwrap().to_owned();
        assert!(!stream_id.is_empty());
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut resp = resp;
            let mut buf: Vec<u8> = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.extend_from_slice(&chunk);
                // RecordIO: "<length>\n<json>".
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let len: usize = std::str::from_utf8(&buf[..nl]).unwrap().parse().expect("a RecordIO length");
                    if buf.len() < nl + 1 + len {
                        break;
                    }
                    let event: Value = serde_json::from_slice(&buf[nl + 1..nl + 1 + len]).expect("a JSON event");
                    buf.drain(..nl + 1 + len);
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        let mut v1 =
            V1 { url, auth: auth.into(), http, stream_id, framework_id: String::new(), events, seen: vec![], reader };
        let first = v1.next_event().await.expect("SUBSCRIBED");
        assert_eq!(first["type"], "SUBSCRIBED", "the first event is SUBSCRIBED: {first}");
        let sub = &first["subscribed"];
        assert!(sub["heartbeat_interval_seconds"].as_f64().unwrap() > 0.0);
        assert_eq!(sub["master_info"]["port"], master.port);
        assert_eq!(sub["master_info"]["version"], "1.11.0");
        v1.framework_id = sub["framework_id"]["value"].as_str().unwrap().to_owned();
        v1
    }

    async fn next_event(&mut self) -> Option<Value> {
        let e = tokio::time::timeout(LONG, self.events.recv()).await.expect("an event within 20 s")?;
        self.seen.push(e.clone());
        Some(e)
    }

    /// The next event that `pick` holds for, within 20 s; others are kept in `seen`.
    async fn wait(&mut self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            let next = next.unwrap_or_else(|_| panic!("no {what} within 20 s; seen: {:#?}", self.seen));
            match next {
                Some(e) if pick(&e) => {
                    self.seen.push(e.clone());
                    return e;
                }
                Some(e) => self.seen.push(e),
                None => panic!("the stream ended waiting for {what}; seen: {:#?}", self.seen),
            }
        }
    }

    async fn offer(&mut self) -> Value {
        let e = self.wait("OFFERS", |e| e["type"] == "OFFERS").await;
        e["offers"]["offers"][0].clone()
    }

    async fn update(&mut self, task: &str, state: &str) -> Value {
        let e = self
            .wait(&format!("{task} {state}"), |e| {
                e["type"] == "UPDATE"
                    && e["update"]["status"]["task_id"]["value"] == task
                    && e["update"]["status"]["state"] == state
            })
            .await;
        e["update"]["status"].clone()
    }

    /// POSTs a call with this stream's id; returns the status and the body.
    async fn post(&self, call: Value, stream_id: Option<&str>) -> (u16, String) {
        let mut req = self.http.post(&self.url).header("authorization", &self.auth).json(&call);
        if let Some(s) = stream_id {
            req = req.header("mesos-stream-id", s);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn call(&self, mut call: Value) {
        call["framework_id"] = json!({ "value": self.framework_id });
        let (status, body) = self.post(call.clone(), Some(&self.stream_id)).await;
        assert_eq!(status, 202, "{call}: {body}");
    }

    async fn ack(&self, status: &Value) {
        self.call(json!({ "type": "ACKNOWLEDGE", "acknowledge": {
            "agent_id": status["agent_id"], "task_id": status["task_id"], "uuid": status["uuid"] } }))
            .await;
    }
}

fn task_info(id: &str, offer: &Value, cpus: f64, command: &str) -> Value {
    json!({
        "name": id, "task_id": { "value": id }, "agent_id": offer["agent_id"],
        "resources": [
            { "name": "cpus", "type": "SCALAR", "scalar": { "value": cpus } },
            { "name": "mem", "type": "SCALAR", "scalar": { "value": 32 } },
        ],
        "command": { "value": command },
    })
}

fn launch(offer: &Value, tasks: Vec<Value>) -> Value {
    json!({ "type": "ACCEPT", "accept": {
        "offer_ids": [offer["id"]],
        "operations": [{ "type": "LAUNCH", "launch": { "task_infos": tasks } }],
        "filters": { "refuse_seconds": 1 } } })
}

#[tokio::test]
async fn a_v1_framework_launches_kills_reconciles_and_tears_down_beside_a_grpc_one() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backends().await;
    let db = &backends[0].url;
    let master = Master::start(dir.path(), db, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:2;mem:1024;ports:[31000-31009]").await;
    // The framework's own principal and secret, as pymesos sends them: HTTP Basic.
    let secret = create_token(db, "framework", "v1fw", &["--framework-role", "batch"]);
    wait_token(&master.url(), &secret).await;
    let auth = basic("v1fw", &secret);
    let mut fw = V1::subscribe(&master, &auth, subscribe_call("v1-test", None, "batch")).await;

    let offer = fw.offer().await;
    assert_eq!(offer["framework_id"]["value"], fw.framework_id.as_str());
    let names: Vec<&str> = offer["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cpus", "mem", "ports"]);
    assert_eq!(offer["resources"][0]["type"], "SCALAR");
    assert_eq!(offer["resources"][2]["ranges"]["range"][0], json!({ "begin": 31000, "end": 31009 }));
    assert_eq!(offer["attributes"][0], json!({ "name": "rack", "type": "TEXT", "text": { "value": "r1" } }));

    // One task runs long, one finishes, one asks for a custom executor and one for more than offered.
    let mut with_executor = task_info("custom", &offer, 0.1, "true");
    with_executor["executor"] = json!({ "executor_id": { "value": "e1" }, "command": { "value": "./my-executor" } });
    let tasks = vec![
        task_info("long", &offer, 1.5, "exec sleep 60"),
        task_info("short", &offer, 0.1, "echo done"),
        with_executor,
        task_info("huge", &offer, 64.0, "true"),
    ];
    fw.call(launch(&offer, tasks)).await;
    let custom = fw.update("custom", "TASK_ERROR").await;
    assert_eq!(custom["reason"], "REASON_TASK_INVALID");
    assert_eq!(custom["source"], "SOURCE_MASTER");
    assert!(custom["message"].as_str().unwrap().contains("custom executor"), "{custom}");
    let huge = fw.update("huge", "TASK_ERROR").await;
    assert!(huge["message"].as_str().unwrap().contains("left"), "{huge}");
    for task in ["long", "short"] {
        let running = fw.update(task, "TASK_RUNNING").await;
        assert!(running["uuid"].is_string() && running["agent_id"]["value"].is_string(), "{running}");
        assert!(running["timestamp"].as_f64().unwrap() > 1.7e9);
        fw.ack(&running).await;
    }
    let done = fw.update("short", "TASK_FINISHED").await;
    fw.ack(&done).await;

    // A gRPC framework on the same master shares the allocator: only what the v1 task left is offered.
    // The v1 framework stops taking offers and hands back those it holds.
    fw.call(json!({ "type": "SUPPRESS" })).await;
    let held: Vec<Value> = fw
        .seen
        .iter()
        .filter(|e| e["type"] == "OFFERS")
        .flat_map(|e| e["offers"]["offers"].as_array().cloned().unwrap_or_default())
        .map(|o| o["id"].clone())
        .collect();
    fw.call(json!({ "type": "DECLINE", "decline": { "offer_ids": held } })).await;
    let mut grpc = Framework::subscribe(&master, "grpc-neighbour", Duration::from_secs(60)).await;
    grpc.pump_until("an offer", LONG, |f| !f.offers.is_empty()).await;
    let cpus = grpc.offers[0].resources.cpus.as_f64();
    assert!(cpus <= 0.5 + 1e-9, "the gRPC framework was offered {cpus} cpus while the v1 task holds 1.5 of 2");
    let offer_ids = grpc.offers.drain(..).map(|o| o.id).collect();
    let refuse = Some(Duration::from_secs(120));
    grpc.call(keel_core::api::Call::Decline { offer_ids, filters: keel_core::api::Filters { refuse } }).await;

    // Explicit reconciliation answers with the task's state; an unknown task is answered too.
    fw.call(json!({ "type": "RECONCILE", "reconcile": { "tasks": [
        { "task_id": { "value": "long" } }, { "task_id": { "value": "never-launched" } } ] } }))
        .await;
    let reconciled = fw.update("long", "TASK_RUNNING").await;
    assert_eq!(reconciled["reason"], "REASON_RECONCILIATION");
    fw.wait("never-launched answered", |e| {
        e["update"]["status"]["task_id"]["value"] == "never-launched"
            && ["TASK_LOST", "TASK_UNKNOWN", "TASK_GONE", "TASK_DROPPED"]
                .contains(&e["update"]["status"]["state"].as_str().unwrap_or(""))
    })
    .await;

    // REVIVE brings offers back; DECLINE, REQUEST and MESSAGE are taken.
    fw.call(json!({ "type": "REVIVE" })).await;
    let offer = fw.offer().await;
    fw.call(
        json!({ "type": "DECLINE", "decline": { "offer_ids": [offer["id"]], "filters": { "refuse_seconds": 30 } } }),
    )
    .await;
    fw.call(json!({ "type": "REQUEST", "request": { "requests": [] } })).await;
    fw.call(json!({ "type": "MESSAGE", "message": { "agent_id": offer["agent_id"],
        "executor_id": { "value": "long" }, "data": "aGk=" } }))
        .await;

    // KILL, then TEARDOWN: the stream ends and the framework is gone.
    fw.call(json!({ "type": "KILL", "kill": { "task_id": { "value": "long" } } })).await;
    let killed = fw.update("long", "TASK_KILLED").await;
    fw.ack(&killed).await;
    fw.call(json!({ "type": "TEARDOWN" })).await;
    let deadline = tokio::time::Instant::now() + LONG;
    while tokio::time::timeout_at(deadline, fw.events.recv()).await.expect("the stream ends after TEARDOWN").is_some() {
    }
    wait_for("the framework to be removed", LONG, || async {
        let state = master.state().await;
        let fws = state["frameworks"].as_array()?.clone();
        (!fws.iter().any(|f| f["id"] == fw.framework_id.as_str())).then_some(())
    })
    .await;
    let (status, body) =
        fw.post(json!({ "type": "REVIVE", "framework_id": { "value": fw.framework_id } }), Some(&fw.stream_id)).await;
    assert_eq!(status, 403, "a call after TEARDOWN: {body}");
    grpc.shutdown.cancel();
}

/// Writes `calls` (body, stream id) as POSTs to the v1 API in one write on one connection, and returns the
/// status of each answer, in the order they came.
async fn pipeline(base: &str, auth: &str, calls: &[(&str, &str)]) -> Vec<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = String::new();
    for (body, stream_id) in calls {
        out += &format!(
            "POST /api/v1/scheduler HTTP/1.1\r\nhost: {addr}\r\nauthorization: {auth}\r\ncontent-type: application/json\r\nmesos-stream-id: {stream_id}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
    }
    tcp.write_all(out.as_bytes()).await.unwrap();
    let (mut buf, mut statuses) = (Vec::new(), Vec::new());
    while statuses.len() < calls.len() {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk)).await.expect("answers").unwrap();
        assert!(n > 0, "the connection closed after {statuses:?}");
        buf.extend_from_slice(&chunk[..n]);
        // Take every whole answer: its head, then a body of its content-length.
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            let Some(head_end) = text.find("\r\n\r\n") else { break };
            let head = &text[..head_end];
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if buf.len() < head_end + 4 + length {
                break;
            }
            statuses.push(head.split(' ').nth(1).unwrap().parse().unwrap());
            buf.drain(..head_end + 4 + length);
        }
    }
    statuses
}

#[tokio::test]
async fn bad_v1_calls_are_refused_with_the_answer_mesos_gives() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backends().await;
    let db = &backends[0].url;
    let master = Master::start(dir.path(), db, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let url = format!("{}/api/v1/scheduler", master.url());
    let http = reqwest::Client::new();
    let admin = format!("Bearer {}", master.token);
    let raw = |body: &'static str, auth: Option<String>| {
        let mut req = http.post(&url).header("content-type", "application/json").body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req
    };
    // No credential, then a wrong one.
    assert_eq!(raw("{}", None).send().await.unwrap().status(), 401);
    assert_eq!(raw("{}", Some(basic("v1fw", "keel_wrong"))).send().await.unwrap().status(), 401);
    // Malformed JSON and an unknown call type: 400 with a JSON message that says so.
    for (body, says) in
        [("{not json", "not valid JSON"), (r#"{"type":"FROBNICATE","framework_id":{"value":"x"}}"#, "FROBNICATE")]
    {
        let resp = raw(body, Some(admin.clone())).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let message = resp.json::<Value>().await.unwrap()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{message}");
    }
    // A framework token may subscribe only in its roles.
    let secret = create_token(db, "framework", "v1fw", &["--framework-role", "batch"]);
    wait_token(&master.url(), &secret).await;
    let auth = basic("v1fw", &secret);
    let resp =
        http.post(&url).header("authorization", &auth).json(&subscribe_call("x", None, "prod")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    // It may not claim another principal in its FrameworkInfo either.
    let mut other = subscribe_call("x", None, "batch");
    other["subscribe"]["framework_info"]["principal"] = json!("someone-else");
    assert_eq!(http.post(&url).header("authorization", &auth).json(&other).send().await.unwrap().status(), 403);
    // A SUBSCRIBE carrying a stream id; a client that takes no JSON.
    let resp = http
        .post(&url)
        .header("authorization", &auth)
        .header("mesos-stream-id", "x")
        .json(&subscribe_call("x", None, "batch"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http
        .post(&url)
        .header("authorization", &auth)
        .header("accept", "application/x-protobuf")
        .json(&subscribe_call("x", None, "batch"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 406);

    let mut fw = V1::subscribe(&master, &auth, subscribe_call("bad-input", None, "batch")).await;
    let revive = json!({ "type": "REVIVE", "framework_id": { "value": fw.framework_id } });
    // No stream id: 400; a wrong one: 400; an unknown framework: 403; another principal's framework: 403.
    assert_eq!(fw.post(revive.clone(), None).await.0, 400);
    let (status, body) = fw.post(revive.clone(), Some("not-the-stream")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Mesos-Stream-Id"), "{body}");
    let unknown = json!({ "type": "REVIVE", "framework_id": { "value": "no-such-framework" } });
    assert_eq!(fw.post(unknown, Some(&fw.stream_id)).await.0, 403);
    let resp = http
        .post(&url)
        .header("authorization", &admin)
        .header("mesos-stream-id", &fw.stream_id)
        .json(&revive)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "another principal may not call for this framework");
    // Calls pipelined on one connection, as Mesos's scheduler library sends them, are answered in order.
    let revive_text = revive.to_string();
    let pipelined: Vec<(&str, &str)> =
        vec![(&revive_text, &fw.stream_id), (&revive_text, "not-the-stream"), ("{not json", &fw.stream_id)];
    let answers = pipeline(&master.url(), &auth, &pipelined).await;
    assert_eq!(answers, [202, 400, 400]);
    // An operation Keel does not perform: 400 naming it.
    let offer = fw.offer().await;
    let mut reserve = launch(&offer, vec![]);
    reserve["accept"]["operations"] = json!([{ "type": "RESERVE", "reserve": { "resources": [] } }]);
    reserve["framework_id"] = json!({ "value": fw.framework_id });
    let (status, body) = fw.post(reserve, Some(&fw.stream_id)).await;
    assert_eq!(status, 400);
    assert!(body.contains("RESERVE"), "{body}");
    // An unknown offer: taken (202), and its tasks are dropped with REASON_INVALID_OFFERS.
    let bogus = json!({ "id": { "value": "no-such-offer" }, "agent_id": offer["agent_id"] });
    fw.call(launch(&bogus, vec![task_info("orphan", &offer, 0.1, "true")])).await;
    let dropped = fw.wait("orphan refused", |e| e["update"]["status"]["task_id"]["value"] == "orphan").await;
    assert_eq!(dropped["update"]["status"]["reason"], "REASON_INVALID_OFFERS", "{dropped}");
    // More than offered: TASK_ERROR, and the offer's resources come back.
    fw.call(launch(&offer, vec![task_info("greedy", &offer, 8.0, "true")])).await;
    let greedy = fw.update("greedy", "TASK_ERROR").await;
    assert_eq!(greedy["reason"], "REASON_TASK_INVALID");
    fw.reader.abort();
}

#[tokio::test]
async fn a_v1_framework_whose_connection_drops_resubscribes_and_keeps_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backends().await;
    let master = Master::start(dir.path(), &backends[0].url, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let auth = format!("Bearer {}", master.token);
    let mut fw = V1::subscribe(&master, &auth, subscribe_call("failover", None, "*")).await;
    let offer = fw.offer().await;
    fw.call(launch(&offer, vec![task_info("keeper", &offer, 0.5, "exec sleep 60")])).await;
    let running = fw.update("keeper", "TASK_RUNNING").await;
    fw.ack(&running).await;

    // The connection is cut mid-stream (the reader and its body are dropped).
    let (old_stream, id) = (fw.stream_id.clone(), fw.framework_id.clone());
    fw.reader.abort();
    drop(fw);
    let mut again = V1::subscribe(&master, &auth, subscribe_call("failover", Some(&id), "*")).await;
    assert_eq!(again.framework_id, id, "re-subscribing keeps the framework id");
    assert_ne!(again.stream_id, old_stream, "each subscription has its own stream id");
    let revive = json!({ "type": "REVIVE", "framework_id": { "value": id } });
    assert_eq!(again.post(revive, Some(&old_stream)).await.0, 400, "the old stream id no longer works");
    // Implicit reconciliation reports the task still running; the agent still runs it.
    again.call(json!({ "type": "RECONCILE", "reconcile": { "tasks": [] } })).await;
    again.update("keeper", "TASK_RUNNING").await;
    let state = master.state().await;
    let fw_state = state["frameworks"].as_array().unwrap().iter().find(|f| f["id"] == id.as_str()).unwrap().clone();
    assert_eq!(fw_state["connected"], true, "{fw_state}");
    again.call(json!({ "type": "KILL", "kill": { "task_id": { "value": "keeper" } } })).await;
    again.update("keeper", "TASK_KILLED").await;
    again.reader.abort();
}

#[tokio::test]
async fn the_operator_endpoints_answer_in_mesos_shape_at_every_path_mesos_tools_call() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backends().await;
    let master = Master::start(dir.path(), &backends[0].url, "10s").await;
    let agent = Agent::start(&master, &dir.path().join("agent"), "cpus:2;mem:1024;ports:[31000-31009]").await;
    let agent_id = agent.agent_id().unwrap();
    let mut fw = Framework::subscribe(&master, "mesos-shaped", Duration::from_secs(60)).await;
    fw.launch(task("first", "exec sleep 60")).await;
    fw.wait_state("first", keel_core::task::TaskState::Running, LONG).await;
    fw.launch(task("second", "true")).await;
    fw.wait_state("second", keel_core::task::TaskState::Finished, LONG).await;
    let fid = fw.id();

    for path in ["/master/state", "/master/state.json", "/state.json", "/state", "/master/state/"] {
        let s = master.get(path).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(s["version"], "1.11.0", "{path}");
        assert_eq!(s["keel_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(s["activated_slaves"], 1.0);
        assert!(s["leader"].as_str().unwrap().starts_with("master@127.0.0.1:"), "{}", s["leader"]);
        assert_eq!(s["leader_info"]["port"], master.port);
        assert!(s["hostname"].is_string() && s["start_time"].as_f64().unwrap() > 1.7e9);
        assert_eq!(s["elected_time"], s["start_time"]);
        let slave = &s["slaves"][0];
        assert_eq!((slave["id"].as_str(), slave["active"].as_bool()), (Some(agent_id.as_str()), Some(true)));
        assert!(slave["pid"].as_str().unwrap().starts_with("slave(1)@"), "{slave}");
        assert_eq!(slave["resources"], json!({ "cpus": 2.0, "mem": 1024.0, "disk": 0.0, "ports": "[31000-31009]" }));
        assert_eq!(slave["used_resources"]["cpus"], 0.1);
        assert_eq!(slave["attributes"], json!({ "rack": "r1" }));
        let f = s["frameworks"].as_array().unwrap().iter().find(|f| f["id"] == fid.as_str()).unwrap();
        assert_eq!((f["name"].as_str(), f["active"].as_bool()), (Some("mesos-shaped"), Some(true)));
        assert!(f["webui_url"].is_string());
        let live = f["tasks"].as_array().unwrap();
        let first = live.iter().find(|t| t["id"] == "first").expect("the running task is among the framework's tasks");
        assert_eq!((first["executor_id"].as_str(), first["slave_id"].as_str()), (Some(""), Some(agent_id.as_str())));
        assert_eq!(first["state"], "TASK_RUNNING");
        let states: Vec<&str> =
            first["statuses"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
        assert_eq!(states.first(), Some(&"TASK_STAGING"));
        assert_eq!(states.last(), Some(&"TASK_RUNNING"));
        assert!(first["statuses"][0]["timestamp"].as_f64().unwrap() > 1.7e9);
        // Keel's own fields stay beside: the flat task list.
        assert!(s["tasks"].as_array().unwrap().iter().any(|t| t["id"] == "first"));
    }
    for path in ["/master/slaves", "/slaves", "/master/slaves/"] {
        let s = master.get(path).await.unwrap();
        assert_eq!(s["slaves"][0]["id"], agent_id.as_str(), "{path}");
        assert!(s["recovered_slaves"].is_array());
    }
    let none = master.get("/master/slaves?slave_id=nope").await.unwrap();
    assert_eq!(none["slaves"], json!([]));
    for path in ["/master/frameworks", "/frameworks/", &format!("/frameworks?framework_id={fid}")] {
        let s = master.get(path).await.unwrap();
        let f = s["frameworks"].as_array().unwrap().iter().find(|f| f["id"] == fid.as_str()).expect(path).clone();
        assert!(f["tasks"].is_array() && f["completed_tasks"].is_array(), "{path}: {f}");
        assert_eq!(f["active"], true);
    }
    // Tasks: live and completed, newest first by default, paged with limit (-1: all) and offset.
    let all = master.get("/master/tasks?limit=-1").await.unwrap();
    let ids: Vec<&str> = all["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["second", "first"], "{all:#}");
    let asc = master.get("/tasks/?order=asc&limit=1").await.unwrap();
    assert_eq!(asc["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(asc["tasks"][0]["id"], "first");
    let page = master.get("/tasks?order=asc&offset=1").await.unwrap();
    assert_eq!(page["tasks"][0]["id"], "second");
    assert_eq!(page["tasks"][0]["state"], "TASK_FINISHED");
    let only = master.get("/master/tasks?task_id=first").await.unwrap();
    assert_eq!(only["tasks"].as_array().unwrap().len(), 1);
    for bad in ["/master/tasks?limit=-2", "/master/tasks?order=sideways", "/master/tasks?limit=x"] {
        let resp = get(&format!("{}{bad}", master.url()), &master.token).await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        assert!(resp.json::<Value>().await.unwrap()["message"].is_string());
    }
    assert_eq!(
        reqwest::get(format!("{}/state.json", master.url())).await.unwrap().status(),
        401,
        "a credential is needed"
    );
    // Keel's own cheap views, which the console and probes use instead of the whole state: the frameworks
    // with their counts, not their tasks, and the health counts.
    let list = master.get("/keel/v1/frameworks").await.unwrap();
    let f = list["frameworks"].as_array().unwrap().iter().find(|f| f["id"] == fid.as_str()).expect("listed").clone();
    assert_eq!(
        (f["name"].as_str(), f["active"].as_bool(), f["tasks"].as_u64()),
        (Some("mesos-shaped"), Some(true), Some(1))
    );
    assert!(f["webui_url"].is_string(), "{f}");
    let health = master.get("/health").await.unwrap();
    assert_eq!((health["status"].as_str(), health["agents"].as_u64()), (Some("ok"), Some(1)), "{health}");
    assert!(health["frameworks"].as_u64().unwrap() >= 1, "{health}");
    fw.shutdown.cancel();
}

#[tokio::test]
async fn a_task_group_runs_under_the_default_executor_and_a_custom_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backends().await;
    let master = Master::start(dir.path(), &backends[0].url, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let auth = format!("Bearer {}", master.token);
    let mut fw = V1::subscribe(&master, &auth, subscribe_call("groups", None, "*")).await;
    let offer = fw.offer().await;
    let group = |executor: &str, tasks: Vec<Value>| {
        json!({ "type": "LAUNCH_GROUP", "launch_group": {
            "executor": { "type": executor, "executor_id": { "value": format!("{executor}-executor") } },
            "task_group": { "tasks": tasks } } })
    };
    let accept = json!({ "type": "ACCEPT", "accept": {
        "offer_ids": [offer["id"]],
        "operations": [
            group("DEFAULT", vec![task_info("g1", &offer, 0.1, "echo one"), task_info("g2", &offer, 0.1, "echo two")]),
            group("CUSTOM", vec![task_info("g3", &offer, 0.1, "echo three")]),
        ] } });
    fw.call(accept).await;
    let refused = fw.update("g3", "TASK_ERROR").await;
    assert!(refused["message"].as_str().unwrap().contains("DEFAULT executor"), "{refused}");
    // Each update waits for the one before it to be acknowledged: every one is, as it comes.
    let mut finished = std::collections::BTreeSet::new();
    while finished.len() < 2 {
        let e = fw.wait("the group's updates", |e| e["type"] == "UPDATE").await;
        let status = &e["update"]["status"];
        if status["uuid"].is_string() {
            fw.ack(status).await;
        }
        if status["state"] == "TASK_FINISHED" {
            finished.insert(status["task_id"]["value"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(finished.into_iter().collect::<Vec<_>>(), ["g1", "g2"]);
    fw.reader.abort();
}
