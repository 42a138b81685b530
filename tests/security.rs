//! Security end to end: the authorization matrix over HTTP and gRPC, the impostor agent and the framework
//! takeover refused, revocation seen by every process, and `keel dev` against a hostile web page.

mod common;

use std::time::{Duration, Instant};

use common::*;
use keel_core::api::{AgentInfo, FrameworkInfo};
use keel_core::client::Target;
use keel_core::proto;
use keel_core::scheduler::{self, DriverEvent};
use keel_core::task::TaskState;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

async fn status(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.unwrap().status().as_u16()
}

fn with(req: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// The gRPC outcome of opening a scheduler subscription: "ok" or the status code's name.
async fn grpc_subscribe(master: &Master, token: Option<&str>) -> String {
    let target = Target::new(master.url(), token.map(str::to_owned));
    let channel = target.connect().await.unwrap();
    let mut client = proto::scheduler_client::SchedulerClient::with_interceptor(channel, target.credential());
    let call = keel_core::convert::subscribe_to_proto(None, &FrameworkInfo::new("matrix"));
    match client.subscribe(futures::stream::iter(vec![call])).await {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}", s.code()),
    }
}

/// The gRPC outcome of registering an agent.
async fn grpc_register(master: &Master, token: Option<&str>) -> String {
    let target = Target::new(master.url(), token.map(str::to_owned));
    let channel = target.connect().await.unwrap();
    let mut client = proto::agent_service_client::AgentServiceClient::with_interceptor(channel, target.credential());
    let info = AgentInfo {
        id: None,
        hostname: "matrix".into(),
        resources: "cpus:0.1;mem:1".parse().unwrap(),
        attributes: vec![],
        docker: false,
    };
    let register = proto::AgentMessage {
        kind: Some(proto::agent_message::Kind::Register(proto::agent_message::Register {
            info: Some((&info).into()),
            tasks: vec![],
        })),
    };
    match client.attach(futures::stream::iter(vec![register])).await {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}", s.code()),
    }
}

/// Every role (and no credential, and a wrong one) against every class of endpoint, over HTTP on the
/// master and on a framework's own port, and over gRPC.
#[tokio::test]
async fn the_authorization_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let mdb = format!("sqlite:{}", dir.path().join("m.db").display());
    let marathon = FrameworkProc::start("marathon", &master, &mdb, &[], dir.path().join("marathon.log")).await;
    let mut principals: Vec<(&str, Option<String>)> = vec![("none", None), ("wrong", Some("keel_wrong".into()))];
    for role in ["viewer", "operator", "admin", "framework", "agent"] {
        let token = create_token(&db, role, &format!("m-{role}"), &[]);
        wait_token(&master.url(), &token).await;
        principals.push((role, Some(token)));
    }
    let http = reqwest::Client::new();
    let m = master.url();
    // Columns: master read, task output, admin, framework-port read, framework-port write, subscribe,
    // register an agent.
    let expected: [(&str, [&str; 7]); 7] = [
        ("none", ["401", "401", "401", "401", "401", "Unauthenticated", "Unauthenticated"]),
        ("wrong", ["401", "401", "401", "401", "401", "Unauthenticated", "Unauthenticated"]),
        ("viewer", ["200", "404", "403", "200", "403", "PermissionDenied", "PermissionDenied"]),
        ("operator", ["200", "404", "403", "200", "422", "PermissionDenied", "PermissionDenied"]),
        ("admin", ["200", "404", "200", "200", "422", "ok", "ok"]),
        ("framework", ["403", "404", "403", "403", "403", "ok", "PermissionDenied"]),
        ("agent", ["403", "403", "403", "403", "403", "PermissionDenied", "ok"]),
    ];
    for ((who, token), (row_who, want)) in principals.iter().zip(expected) {
        assert_eq!(*who, row_who);
        let t = token.as_deref();
        let got = [
            status(with(http.get(format!("{m}/master/state")), t)).await.to_string(),
            status(with(http.get(format!("{m}/master/tasks/nope/files/stdout")), t)).await.to_string(),
            status(with(http.get(format!("{m}/keel/v1/tokens")), t)).await.to_string(),
            status(with(http.get(format!("{}/v2/apps", marathon.url)), t)).await.to_string(),
            status(with(http.post(format!("{}/v2/apps", marathon.url)).json(&json!({})), t)).await.to_string(),
            grpc_subscribe(&master, t).await,
            grpc_register(&master, t).await,
        ];
        assert_eq!(got, want.map(str::to_owned), "role {who}");
    }
    // A framework token limited to a role may subscribe under that role only.
    let batch = create_token(&db, "framework", "batch-only", &["--framework-role", "batch"]);
    wait_token(&master.url(), &batch).await;
    assert_eq!(grpc_subscribe(&master, Some(&batch)).await, "PermissionDenied");
}

/// A rogue agent that presents another credential with a real agent's id is refused and logged; the real
/// agent and its task are untouched.
#[tokio::test]
async fn an_impostor_agent_is_refused_and_the_real_one_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let real_token = create_token(&db, "agent", "rack1-agent", &[]);
    let rogue_token = create_token(&db, "agent", "rogue-agent", &[]);
    wait_token(&master.url(), &real_token).await;
    wait_token(&master.url(), &rogue_token).await;
    let agent = Agent::start_as(&master, &dir.path().join("agent"), "cpus:1;mem:256", &real_token).await;
    let mut fw = Framework::subscribe(&master, "fw", Duration::from_secs(60)).await;
    fw.launch(task("sleeper", "exec sleep 1000")).await;
    fw.wait_state("sleeper", TaskState::Running, LONG).await;

    let id = agent.agent_id().unwrap();
    let rogue_dir = dir.path().join("rogue");
    std::fs::create_dir_all(rogue_dir.join("meta")).unwrap();
    std::fs::write(rogue_dir.join("meta/agent_id"), &id).unwrap();
    let log = dir.path().join("rogue.log");
    let out = std::process::Command::new(KEEL)
        .args(["agent", "--master", &master.url(), "--work-dir", rogue_dir.to_str().unwrap()])
        .args(["--resources", "cpus:1;mem:256", "--no-docker"])
        .env("KEEL_TOKEN", &rogue_token)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("rogue.err")).unwrap())
        .status()
        .unwrap();
    let err = std::fs::read_to_string(dir.path().join("rogue.err")).unwrap();
    assert!(!out.success(), "the rogue agent kept running");
    assert!(err.contains("refused") && err.contains("another principal"), "{err}");

    fw.drain_for(Duration::from_secs(1)).await;
    let last = fw.last("sleeper").unwrap();
    assert_eq!(last.state, TaskState::Running, "the real agent's task was disturbed: {last:?}");
    let state = master.state().await;
    let agents = state["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["status"], "active");
    let master_log = std::fs::read_to_string(&master.proc.log).unwrap();
    assert!(master_log.contains("refused an agent registering with an id that belongs to another principal"));
    // The audit record reaches the store from a writer in the background.
    let denied = |audit: &Value| {
        audit.as_array().is_some_and(|records| {
            records
                .iter()
                .any(|r| r["principal"] == "rogue-agent" && r["action"] == "register agent" && r["outcome"] == "denied")
        })
    };
    wait_for("the refused registration in the audit record", LONG, || async {
        denied(&master.get("/keel/v1/audit").await.ok()?).then_some(())
    })
    .await;
}

/// A framework id belongs to the principal that created it: another one cannot subscribe with it (and so
/// cannot tear it down).
#[tokio::test]
async fn a_framework_cannot_be_taken_over_with_another_credential() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let owner = create_token(&db, "framework", "services", &[]);
    let thief = create_token(&db, "framework", "thief", &[]);
    wait_token(&master.url(), &owner).await;
    wait_token(&master.url(), &thief).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut info = FrameworkInfo::new("services");
    info.failover_timeout = Duration::from_secs(60);
    let (_h, mut events) =
        scheduler::start(Target::new(master.url(), Some(owner)), info.clone(), None, shutdown.clone());
    let id = match tokio::time::timeout(LONG, events.recv()).await.unwrap().unwrap() {
        DriverEvent::Event(keel_core::api::Event::Subscribed { framework_id, .. }) => framework_id,
        other => panic!("{other:?}"),
    };
    let (_t, mut thief_events) =
        scheduler::start(Target::new(master.url(), Some(thief)), info, Some(id.clone()), shutdown.clone());
    match tokio::time::timeout(LONG, thief_events.recv()).await.unwrap().unwrap() {
        DriverEvent::Stopped(reason) => assert!(reason.contains("another principal"), "{reason}"),
        other => panic!("the takeover was not refused: {other:?}"),
    }
    let state = master.state().await;
    let fw = state["frameworks"].as_array().unwrap().iter().find(|f| f["id"] == id.as_str()).cloned().unwrap();
    assert_eq!(fw["connected"], true, "{fw}");
    shutdown.cancel();
}

/// A revoked token is refused by the master and by a framework on its own port within a second.
#[tokio::test]
async fn revocation_reaches_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let mdb = format!("sqlite:{}", dir.path().join("m.db").display());
    let marathon = FrameworkProc::start("marathon", &master, &mdb, &[], dir.path().join("marathon.log")).await;
    let ops = create_token(&db, "operator", "ops", &[]);
    wait_token(&master.url(), &ops).await;
    let urls = [format!("{}/master/state", master.url()), format!("{}/v2/apps", marathon.url)];
    for url in &urls {
        assert_eq!(get(url, &ops).await.unwrap().status(), 200, "{url}");
    }
    let listed = std::process::Command::new(KEEL).args(["token", "list", "--database-url", &db]).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("ops") && listed.contains("operator") && !listed.contains(&ops), "{listed}");

    let revoked =
        std::process::Command::new(KEEL).args(["token", "revoke", "ops", "--database-url", &db]).status().unwrap();
    assert!(revoked.success());
    let at = Instant::now();
    for url in &urls {
        wait_for("the revoked token to be refused", LONG, || async {
            (get(url, &ops).await.ok()?.status() == 401).then_some(())
        })
        .await;
    }
    let took = at.elapsed();
    eprintln!("revocation seen by the master and the framework after {took:?}");
    assert!(took < Duration::from_millis(1500), "revocation took {took:?}");
}

/// What `keel dev` prints, once it has printed its login link.
async fn start_dev(dir: &std::path::Path) -> (Proc, String, String, String) {
    let dev = common::DevProc::start(dir, &[]).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dev.data.join("admin.token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.token must be readable by its owner only");
    (dev.proc, dev.base, dev.link, dev.token)
}

/// A hostile page cannot write through an operator's browser; the login link works once; logout ends the
/// session; viewers see environment values redacted; writes are audited.
#[tokio::test]
async fn keel_dev_against_a_hostile_page() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, base, link, admin) = start_dev(dir.path()).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    wait_for("keel dev to be healthy", LONG, || async {
        (http.get(format!("{base}/health")).send().await.ok()?.status() == 200).then_some(())
    })
    .await;
    let app = json!({"id": "/web", "cmd": "exec sleep 1000", "cpus": 0.01, "mem": 16, "instances": 0,
                     "env": {"PASSWORD": "hunter2"}});

    // A cross-origin form post (text/plain) is refused, even with a valid credential; so are a foreign
    // Origin and a rebound Host.
    let plain = http.post(format!("{base}/v2/apps")).header("content-type", "text/plain").body(app.to_string());
    assert_eq!(status(plain.bearer_auth(&admin)).await, 415);
    let foreign = http.post(format!("{base}/v2/apps")).header("origin", "http://evil.example").json(&app);
    assert_eq!(status(foreign.bearer_auth(&admin)).await, 403);
    let rebound = http.get(format!("{base}/v2/apps")).header("host", "evil.example");
    assert_eq!(status(rebound.bearer_auth(&admin)).await, 403);
    assert_eq!(status(http.post(format!("{base}/v2/apps")).json(&app)).await, 401);
    let apps: Value =
        http.get(format!("{base}/v2/apps")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(apps["apps"], json!([]), "a refused write created an app");

    // The login link works once, and logging out ends the session.
    let first = http.get(&link).send().await.unwrap();
    assert_eq!(first.status(), 303);
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(status(http.get(&link)).await, 401, "the login link worked twice");
    assert_eq!(status(http.get(format!("{base}/v2/apps")).header("cookie", &session)).await, 200);
    // A write with the session cookie must carry the session's CSRF token, which the console's pages embed.
    let csrf_app = json!({"id": "/csrf", "cmd": "exec sleep 1000", "cpus": 0.01, "mem": 16, "instances": 0});
    let bare = http.post(format!("{base}/v2/apps")).header("cookie", &session).json(&csrf_app);
    assert_eq!(status(bare).await, 403, "a session write without the CSRF token");
    let forged = http.post(format!("{base}/v2/apps")).header("cookie", &session).header("x-csrf-token", "guess");
    assert_eq!(status(forged.json(&csrf_app)).await, 403, "a session write with a wrong CSRF token");
    let page = http.get(format!("{base}/ui/")).header("cookie", &session).send().await.unwrap().text().await.unwrap();
    let csrf = page.split("name=\"csrf-token\" content=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
    let good = http.post(format!("{base}/v2/apps")).header("cookie", &session).header("x-csrf-token", csrf);
    assert_eq!(status(good.json(&csrf_app)).await, 201, "a session write with the page's CSRF token");
    assert_eq!(status(http.post(format!("{base}/logout")).header("cookie", &session)).await, 303);
    assert_eq!(status(http.get(format!("{base}/v2/apps")).header("cookie", &session)).await, 401);
    // The login form takes the token.
    let form = http.post(format!("{base}/login")).form(&[("token", admin.as_str())]).send().await.unwrap();
    assert_eq!(form.status(), 303);

    // Environment values: the operator sees them, a viewer does not (nor on the event stream).
    let created: Value = http
        .post(format!("{base}/keel/v1/tokens"))
        .bearer_auth(&admin)
        .json(&json!({"name": "watcher", "role": "viewer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let viewer = created["token"].as_str().unwrap().to_owned();
    wait_token(&base, &viewer).await;
    let mut events = http.get(format!("{base}/v2/events")).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(http.post(format!("{base}/v2/apps")).bearer_auth(&admin).json(&app).send().await.unwrap().status(), 201);
    let seen: Value =
        http.get(format!("{base}/v2/apps/web")).bearer_auth(&viewer).send().await.unwrap().json().await.unwrap();
    assert_eq!(seen["app"]["env"]["PASSWORD"], keel_core::gate::REDACTED);
    let full: Value =
        http.get(format!("{base}/v2/apps/web")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(full["app"]["env"]["PASSWORD"], "hunter2");
    let mut stream = String::new();
    while !stream.contains("PASSWORD") {
        let chunk = tokio::time::timeout(LONG, events.chunk()).await.unwrap().unwrap().unwrap();
        stream.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!stream.contains("hunter2"), "a viewer's event stream showed a secret: {stream}");
    assert_eq!(status(http.post(format!("{base}/v2/apps")).bearer_auth(&viewer).json(&app)).await, 403);

    // The audit record: every write, with its principal and outcome; admins only. Records reach the store
    // from a writer in the background, so the newest may take a moment.
    assert_eq!(status(http.get(format!("{base}/keel/v1/audit")).bearer_auth(&viewer)).await, 403);
    let has = |audit: &Value, principal: &str, outcome: &str, status: u16| {
        audit.as_array().unwrap().iter().any(|r| {
            r["principal"] == principal
                && r["action"] == "POST /v2/apps"
                && r["outcome"] == outcome
                && r["status"] == status
        })
    };
    let complete = |audit: &Value| {
        has(audit, "admin", "ok", 201) && has(audit, "watcher", "denied", 403) && has(audit, "-", "denied", 401)
    };
    let read = || async {
        http.get(format!("{base}/keel/v1/audit"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let recorded = tokio::time::timeout(LONG, async {
        loop {
            let audit = read().await;
            if complete(&audit) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(recorded.is_ok(), "{}", read().await);
}

/// Tasks run as the user they name, else as the agent's --default-user; an unknown user fails the task
/// with the reason; a container runs as the user its task names.
#[tokio::test]
async fn tasks_run_as_the_user_they_name() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // The sandboxes must be reachable by the task's user.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let allowed = ["--allowed-users", "nobody,root,no-such-user,65534"];
    let extra = ["--default-user", "nobody", allowed[0], allowed[1]];
    let agent = Agent::start_with(&master, &dir.path().join("agent"), "cpus:2;mem:512", &extra).await;
    let mut fw = Framework::subscribe(&master, "users", Duration::from_secs(60)).await;
    let run = |id: &str, user: Option<&str>| {
        let mut t = task(id, "id -u; touch mine");
        t.user = user.map(str::to_owned);
        t
    };
    for t in [
        run("unnamed", None),
        run("as-root", Some("root")),
        run("ghost", Some("no-such-user")),
        run("daemon", Some("daemon")),
    ] {
        fw.launch(t).await;
    }
    let refused = fw.wait_state("daemon", TaskState::Failed, LONG).await;
    assert!(refused.message.contains("not allowed on this agent"), "{refused:?}");
    fw.wait_state("unnamed", TaskState::Finished, LONG).await;
    fw.wait_state("as-root", TaskState::Finished, LONG).await;
    let ghost = fw.wait_state("ghost", TaskState::Failed, LONG).await;
    assert!(ghost.message.contains("unknown user 'no-such-user'"), "{ghost:?}");
    let fid = fw.id();
    let uid = |t: &str| sandbox_file(&agent, &fid, t, "stdout").trim().to_owned();
    assert_eq!(uid("unnamed"), "65534", "a task naming no user runs as --default-user");
    assert_eq!(uid("as-root"), "0");
    if docker_available() {
        let mut t = docker_task("in-container", "id -u");
        t.user = Some("65534".into());
        fw.launch(t).await;
        fw.wait_state("in-container", TaskState::Finished, LONG).await;
        assert_eq!(uid("in-container"), "65534");
    }
}

/// A CA and a certificate it signed for 127.0.0.1, written to `dir`: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let paths = (dir.join(format!("{name}-ca.pem")), dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// TLS on the one port: an agent and a framework reach the master over TLS (the framework serving TLS
/// itself), and a client that trusts another CA is refused.
#[tokio::test]
async fn a_cluster_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path(), "server");
    let (wrong_ca, _, _) = certificates(dir.path(), "other");
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let admin = create_token(&db, "admin", "tls-admin", &[]);
    let port = free_port();
    let master = format!("https://127.0.0.1:{port}");
    let (cert_s, key_s, ca_s) = (cert.to_str().unwrap(), key.to_str().unwrap(), ca.to_str().unwrap());
    let listen = format!("127.0.0.1:{port}");
    let _master = Proc::spawn(
        &[
            "master",
            "--listen",
            &listen,
            "--database-url",
            &db,
            "--tls-cert",
            cert_s,
            "--tls-key",
            key_s,
            "--ca-cert",
            ca_s,
        ],
        dir.path().join("master.log"),
    );
    let pem = std::fs::read(&ca).unwrap();
    let http =
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap()).build().unwrap();
    let state = || async {
        http.get(format!("{master}/master/state")).bearer_auth(&admin).send().await.ok()?.json::<Value>().await.ok()
    };
    wait_for("the master to answer over TLS", LONG, state).await;
    // Plain HTTP on the TLS port gets nothing.
    let plain = reqwest::get(format!("http://{listen}/health")).await.map(|r| r.status().is_success());
    assert!(!plain.unwrap_or(false), "plain HTTP was served on the TLS port");

    let work = dir.path().join("agent");
    let _agent = Proc::spawn_as(
        &["agent", "--master", &master, "--ca-cert", ca_s, "--work-dir", work.to_str().unwrap()],
        dir.path().join("agent.log"),
        Some(&admin),
    );
    wait_for("the agent to register over TLS", LONG, || async {
        (state().await?["agents"].as_array()?.iter().any(|a| a["status"] == "active")).then_some(())
    })
    .await;

    let mport = free_port();
    let marathon = format!("https://127.0.0.1:{mport}");
    let mdb = format!("sqlite:{}", dir.path().join("m.db").display());
    let mlisten = format!("127.0.0.1:{mport}");
    let _marathon = Proc::spawn_as(
        &["marathon", "--master", &master, "--ca-cert", ca_s, "--listen", &mlisten, "--database-url", &mdb]
            .into_iter()
            .chain(["--tls-cert", cert_s, "--tls-key", key_s])
            .collect::<Vec<_>>(),
        dir.path().join("marathon.log"),
        Some(&admin),
    );
    let app = json!({"id": "/tls", "cmd": "exec sleep 1000", "cpus": 0.01, "mem": 16, "instances": 1});
    wait_for("the framework to take an app over TLS", LONG, || async {
        let r = http.post(format!("{marathon}/v2/apps")).bearer_auth(&admin).json(&app).send().await.ok()?;
        (r.status() == 201).then_some(())
    })
    .await;
    wait_for("the app's task to run", LONG, || async {
        let a: Value =
            http.get(format!("{marathon}/v2/apps/tls")).bearer_auth(&admin).send().await.ok()?.json().await.ok()?;
        (a["app"]["tasksRunning"] == 1).then_some(())
    })
    .await;
    // The master's console reaches the framework over TLS, at the URL it registered.
    let page = http.get(format!("{master}/ui/apps")).bearer_auth(&admin).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("href=\"/ui/apps/tls\"") && page.contains("1 of 1 running"), "{page}");

    // A master that verifies client certificates takes an agent that presents one from its CA, and refuses
    // one from another CA.
    let (client_ca, client_cert, client_key) = certificates(dir.path(), "client");
    let (_, rogue_cert, rogue_key) = certificates(dir.path(), "rogue");
    let mtls_port = free_port();
    let mtls_listen = format!("127.0.0.1:{mtls_port}");
    let mtls_db = format!("sqlite:{}", dir.path().join("mtls.db").display());
    let mtls_admin = create_token(&mtls_db, "admin", "mtls-admin", &[]);
    let _mtls_master = Proc::spawn(
        &["master", "--listen", &mtls_listen, "--database-url", &mtls_db, "--tls-cert", cert_s, "--tls-key", key_s]
            .into_iter()
            .chain(["--client-ca-cert", client_ca.to_str().unwrap(), "--require-client-cert"])
            .collect::<Vec<_>>(),
        dir.path().join("mtls-master.log"),
    );
    let mtls = format!("https://{mtls_listen}");
    let identity = [std::fs::read(&client_cert).unwrap(), b"\n".to_vec(), std::fs::read(&client_key).unwrap()].concat();
    let with_cert = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    let agents = || async {
        let s: Value = with_cert
            .get(format!("{mtls}/master/state"))
            .bearer_auth(&mtls_admin)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(s["agents"].as_array()?.len())
    };
    wait_for("the mTLS master", LONG, agents).await;
    let agent_with = |name: &str, cert: &std::path::Path, key: &std::path::Path| {
        let work = dir.path().join(name);
        Proc::spawn_as(
            &["agent", "--master", &mtls, "--ca-cert", ca_s, "--work-dir", work.to_str().unwrap()]
                .into_iter()
                .chain(["--tls-client-cert", cert.to_str().unwrap(), "--tls-client-key", key.to_str().unwrap()])
                .collect::<Vec<_>>(),
            dir.path().join(format!("{name}.log")),
            Some(&mtls_admin),
        )
    };
    let _good = agent_with("good-agent", &client_cert, &client_key);
    wait_for("the agent with a good client certificate", LONG, || async { (agents().await? == 1).then_some(()) }).await;
    let _bad = agent_with("bad-agent", &rogue_cert, &rogue_key);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agents().await, Some(1), "an agent with a certificate from another CA registered");
    // Certificates are required there: a client without one is refused in the handshake.
    let refused = http.get(format!("{mtls}/health")).send().await;
    assert!(refused.is_err(), "a client without a certificate was served: {refused:?}");

    // A client that trusts another CA does not get through.
    let out = std::process::Command::new(KEEL)
        .args(["execute", "--master", &master, "--ca-cert", wrong_ca.to_str().unwrap(), "--name", "x"])
        .args(["--command", "true", "--offer-wait", "3s"])
        .env("KEEL_TOKEN", &admin)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a client with the wrong CA ran a task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("TASK_RUNNING"), "{stdout}");
}

/// A secret stored with `keel secret put` reaches the environment of the task that names it, and nothing
/// else: not the app as the API shows it, not the store in clear.
#[tokio::test]
async fn secrets_reach_only_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, base, _link, admin) = start_dev(dir.path()).await;
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let put = |name: &str, value: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(KEEL)
            .args(["secret", "put", name, "--data-dir", data.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    };
    let app = json!({"id": "/vault", "cmd": "echo \"pw=$DB_PASS\"; exec sleep 1000", "cpus": 0.01, "mem": 16,
                     "env": {"DB_PASS": {"secret": "db"}}, "secrets": {"db": {"source": "db-password"}}});
    // Not stored yet: refused with the reason.
    let refused = http.post(format!("{base}/v2/apps")).bearer_auth(&admin).json(&app).send().await.unwrap();
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("keel secret put db-password"));

    put("db-password", "hunter2\n");
    let created = wait_for("the secret to be seen", LONG, || async {
        let r = http.post(format!("{base}/v2/apps")).bearer_auth(&admin).json(&app).send().await.ok()?;
        (r.status() == 201).then_some(())
    });
    created.await;
    let state_of = || async {
        http.get(format!("{base}/v2/apps/vault?embed=app.tasks"))
            .bearer_auth(&admin)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    let shown = wait_for("the task to run", LONG, || async {
        let text = state_of().await?;
        text.contains("\"tasksRunning\":1").then_some(text)
    })
    .await;
    assert!(!shown.contains("hunter2"), "the API showed a secret: {shown}");
    let answer: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(answer["app"]["env"]["DB_PASS"], json!({"secret": "db"}));
    let task_id = answer["app"]["tasks"][0]["id"].as_str().unwrap().to_owned();
    let out = wait_for("the task's output", LONG, || async {
        let r: Value = http
            .get(format!("{base}/master/tasks/{task_id}/files/stdout"))
            .bearer_auth(&admin)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        r["data"].as_str().filter(|d| d.contains("pw=")).map(str::to_owned)
    })
    .await;
    assert_eq!(out.trim(), "pw=hunter2", "the task got the secret without the newline echo added");
    let listed = std::process::Command::new(KEEL)
        .args(["secret", "list", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("db-password") && !listed.contains("hunter2"), "{listed}");
    let db = std::fs::read(data.join("keel.db")).unwrap();
    let wal = std::fs::read(data.join("keel.db-wal")).unwrap_or_default();
    let needle = b"hunter2";
    assert!(
        !db.windows(needle.len()).chain(wal.windows(needle.len())).any(|w| w == needle),
        "the store holds the secret in clear"
    );
}
