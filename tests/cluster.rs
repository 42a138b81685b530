//! End-to-end tests of the core: real master and agent processes, real tasks, real stores.

mod common;

use std::time::Duration;

use common::*;
use keel_core::api::{Call, Filters};
use keel_core::ids::{OfferId, TaskId};
use keel_core::task::TaskState;

const LONG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn tasks_run_as_processes_and_report_exit_codes_logs_and_kills() {
    for backend in backends().await {
        let dir = tempfile::tempdir().unwrap();
        let master = Master::start(dir.path(), &backend.url, "10s").await;
        let agent = Agent::start(&master, &dir.path().join("agent"), "cpus:2;mem:512;ports:[31000-31100]").await;
        let mut fw = Framework::subscribe(&master, "test", Duration::from_secs(60)).await;

        fw.launch(task("ok", "echo to-stdout; echo to-stderr >&2; test \"$GREETING\" = hi")).await;
        let mut with_env = task("env", "test \"$GREETING\" = hi");
        with_env.command.env.insert("GREETING".into(), "hi".into());
        fw.launch(with_env).await;
        fw.launch(task("three", "exit 3")).await;
        fw.launch(task("sleeper", "echo $$ > pid; exec sleep 60")).await;
        let mut stubborn = task("stubborn", "trap '' TERM; echo $$ > pid; while true; do sleep 0.1; done");
        stubborn.kill_grace = Some(Duration::from_millis(500));
        fw.launch(stubborn).await;

        let failed = fw.wait_state("ok", TaskState::Failed, LONG).await;
        assert_eq!(failed.exit_code, Some(1), "[{}] GREETING is unset for this task", backend.name);
        assert_eq!(fw.wait_state("env", TaskState::Finished, LONG).await.exit_code, Some(0));
        let three = fw.wait_state("three", TaskState::Failed, LONG).await;
        assert_eq!(three.exit_code, Some(3));
        assert!(three.message.contains("status 3"), "{}", three.message);
        assert_eq!(sandbox_file(&agent, &fw.id(), "ok", "stdout"), "to-stdout\n");
        assert_eq!(sandbox_file(&agent, &fw.id(), "ok", "stderr"), "to-stderr\n");

        fw.wait_state("sleeper", TaskState::Running, LONG).await;
        let pid = task_pid(&agent, "sleeper").await;
        assert!(alive(pid));
        fw.call(Call::Kill { task_id: TaskId::parse("sleeper").unwrap(), agent_id: None }).await;
        fw.wait_state("sleeper", TaskState::Killed, LONG).await;
        assert!(!alive(pid), "the task's process is gone after TASK_KILLED");

        // SIGTERM is ignored, so only the SIGKILL after the grace period ends it.
        fw.wait_state("stubborn", TaskState::Running, LONG).await;
        let pid = task_pid(&agent, "stubborn").await;
        let started = std::time::Instant::now();
        fw.call(Call::Kill { task_id: TaskId::parse("stubborn").unwrap(), agent_id: None }).await;
        fw.wait_state("stubborn", TaskState::Killed, LONG).await;
        assert!(started.elapsed() >= Duration::from_millis(500), "killed before the grace period ended");
        assert!(!alive(pid));

        let state = master.state().await;
        assert_eq!(state["agents"][0]["attributes"]["rack"], "r1");
        assert_eq!(state["frameworks"][0]["name"], "test");
        let metrics = get(&format!("{}/metrics", master.url()), &master.token).await.unwrap().text().await.unwrap();
        assert!(metrics.contains("keel_master_tasks_launched_total 5"), "{metrics}");
    }
}

#[tokio::test]
async fn a_killed_agent_is_reported_and_a_restarted_one_reattaches() {
    for backend in backends().await {
        let dir = tempfile::tempdir().unwrap();
        let master = Master::start(dir.path(), &backend.url, "2s").await;
        let mut agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
        let mut fw = Framework::subscribe(&master, "test", Duration::from_secs(60)).await;
        fw.launch(task("svc", "echo $$ > pid; exec sleep 60")).await;
        fw.wait_state("svc", TaskState::Running, LONG).await;
        let pid = task_pid(&agent, "svc").await;

        agent.proc.kill();
        let unreachable = fw.wait_state("svc", TaskState::Unreachable, Duration::from_secs(10)).await;
        assert_eq!(unreachable.reason.as_deref(), Some("REASON_AGENT_UNREACHABLE"), "[{}]", backend.name);
        assert_eq!(fw.failures, vec![agent.agent_id().unwrap()]);
        let state = master.state().await;
        assert_eq!(state["agents"][0]["status"], "unreachable");
        assert!(alive(pid), "losing the agent does not kill its task");

        agent.restart(&master).await;
        let back = fw.wait_state("svc", TaskState::Running, LONG).await;
        assert_eq!(back.reason.as_deref(), Some("REASON_AGENT_REREGISTERED"));
        assert!(alive(pid), "the same process is still running");

        // The re-attached agent is not the task's parent any more, and can still kill it.
        fw.call(Call::Kill { task_id: TaskId::parse("svc").unwrap(), agent_id: None }).await;
        fw.wait_state("svc", TaskState::Killed, LONG).await;
        assert!(!alive(pid));
    }
}

#[tokio::test]
async fn a_restarted_agent_reports_the_exit_code_of_a_task_that_ended_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let mut agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let mut fw = Framework::subscribe(&master, "test", Duration::from_secs(60)).await;
    fw.launch(task("short", "echo $$ > pid; echo run >> runs; sleep 2; exit 7")).await;
    fw.wait_state("short", TaskState::Running, LONG).await;
    let pid = task_pid(&agent, "short").await;
    agent.restart(&master).await;
    assert!(alive(pid), "restarting the agent did not restart or kill the task");
    let done = fw.wait_state("short", TaskState::Failed, LONG).await;
    assert_eq!(done.exit_code, Some(7));
    assert!(!fw.updates.iter().any(|u| u.state == TaskState::Unreachable), "the agent was back before its timeout");
    assert_eq!(sandbox_file(&agent, &fw.id(), "short", "runs"), "run\n", "the task ran exactly once");
}

#[tokio::test]
async fn restarting_the_master_loses_nothing_and_kills_nothing() {
    for backend in backends().await {
        let dir = tempfile::tempdir().unwrap();
        let mut master = Master::start(dir.path(), &backend.url, "10s").await;
        let agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
        let mut fw = Framework::subscribe(&master, "survivor", Duration::from_secs(60)).await;
        let framework_id = fw.id();
        fw.launch(task("svc", "echo $$ > pid; exec sleep 60")).await;
        fw.wait_state("svc", TaskState::Running, LONG).await;
        let pid = task_pid(&agent, "svc").await;

        master.restart().await;
        agent.wait_registered(&master).await;
        fw.pump_until("re-subscription", LONG, |f| f.subscriptions == 2).await;
        assert_eq!(fw.id(), framework_id, "[{}] the framework keeps its id", backend.name);

        let state = master.state().await;
        assert_eq!(state["agents"].as_array().unwrap().len(), 1);
        assert_eq!(state["agents"][0]["id"], agent.agent_id().unwrap().as_str());
        assert_eq!(state["frameworks"][0]["id"], framework_id.as_str());
        assert_eq!(state["frameworks"][0]["connected"], true);
        let tasks = state["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 1, "{state:#}");
        assert_eq!(tasks[0]["id"], "svc");
        assert_eq!(tasks[0]["state"], "TASK_RUNNING");
        assert!(alive(pid));

        // The new master still controls the cluster: it offers, launches and kills.
        fw.call(Call::Revive).await;
        fw.launch(task("after", "true")).await;
        fw.wait_state("after", TaskState::Finished, LONG).await;
        fw.call(Call::Kill { task_id: TaskId::parse("svc").unwrap(), agent_id: None }).await;
        fw.wait_state("svc", TaskState::Killed, LONG).await;
        assert!(!alive(pid));
    }
}

#[tokio::test]
async fn a_framework_past_its_failover_timeout_is_torn_down() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let mut fw = Framework::subscribe(&master, "short-lived", Duration::from_secs(1)).await;
    fw.launch(task("svc", "echo $$ > pid; exec sleep 60")).await;
    fw.wait_state("svc", TaskState::Running, LONG).await;
    let pid = task_pid(&agent, "svc").await;
    let id = fw.id();
    drop(fw);
    wait_for("the task to be killed", LONG, || async { (!alive(pid)).then_some(()) }).await;
    wait_for("the framework to be gone", LONG, || async {
        let state = master.state().await;
        state["frameworks"].as_array().unwrap().is_empty().then_some(())
    })
    .await;

    // Its id cannot come back.
    let mut info = keel_core::api::FrameworkInfo::new("again");
    info.failover_timeout = Duration::from_secs(1);
    let token = tokio_util::sync::CancellationToken::new();
    let (_h, mut events) = keel_core::scheduler::start(
        master.target(),
        info,
        Some(keel_core::ids::FrameworkId::parse(id).unwrap()),
        token,
    );
    match tokio::time::timeout(LONG, events.recv()).await.unwrap().unwrap() {
        keel_core::scheduler::DriverEvent::Stopped(reason) => assert!(reason.contains("torn down"), "{reason}"),
        other => panic!("expected the subscription to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn reconciliation_reports_known_and_unknown_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let mut fw = Framework::subscribe(&master, "test", Duration::from_secs(60)).await;
    fw.launch(task("svc", "exec sleep 30")).await;
    fw.wait_state("svc", TaskState::Running, LONG).await;
    fw.updates.clear();
    fw.call(Call::Reconcile { tasks: vec![] }).await;
    let implicit = fw.wait_state("svc", TaskState::Running, LONG).await;
    assert_eq!(implicit.reason.as_deref(), Some("REASON_RECONCILIATION"));
    fw.call(Call::Reconcile { tasks: vec![(TaskId::parse("ghost").unwrap(), None)] }).await;
    fw.wait_state("ghost", TaskState::Unknown, LONG).await;
    fw.call(Call::Kill { task_id: TaskId::parse("svc").unwrap(), agent_id: None }).await;
    fw.wait_state("svc", TaskState::Killed, LONG).await;
}

#[tokio::test]
async fn bad_calls_get_clear_errors_and_harm_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;

    // Raw gRPC: a stream that does not start with SUBSCRIBE, or subscribes without a name, is refused.
    use keel_core::proto;
    let target = master.target();
    let channel = target.connect().await.unwrap();
    let mut client = proto::scheduler_client::SchedulerClient::with_interceptor(channel.clone(), target.credential());
    let not_subscribe = proto::Call { r#type: proto::call::Type::Revive.into(), ..Default::default() };
    let err = client.subscribe(futures::stream::iter(vec![not_subscribe])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("SUBSCRIBE"), "{}", err.message());
    let nameless = keel_core::convert::subscribe_to_proto(None, &keel_core::api::FrameworkInfo::new(" "));
    let err = client.subscribe(futures::stream::iter(vec![nameless])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("framework name"), "{}", err.message());
    let mut agents = proto::agent_service_client::AgentServiceClient::with_interceptor(channel, target.credential());
    let heartbeat =
        proto::AgentMessage { kind: Some(proto::agent_message::Kind::Heartbeat(proto::agent_message::Heartbeat {})) };
    let err = agents.attach(futures::stream::iter(vec![heartbeat])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let mut fw = Framework::subscribe(&master, "test", Duration::from_secs(60)).await;
    // An unknown offer: the tasks are dropped, with the reason.
    let bogus = Call::Accept {
        offer_ids: vec![OfferId::parse("nope").unwrap()],
        tasks: vec![task("t1", "true")],
        filters: Filters::default(),
    };
    fw.call(bogus).await;
    let dropped = fw.wait_state("t1", TaskState::Dropped, LONG).await;
    assert!(dropped.message.contains("offer nope is unknown"), "{}", dropped.message);

    // More than was offered: the task is refused, and the offer's resources come back.
    let mut greedy = task("t2", "true");
    greedy.resources = "cpus:64;mem:16".parse().unwrap();
    fw.pump_until("an offer", LONG, |f| !f.offers.is_empty()).await;
    let offer = fw.offers.remove(0);
    fw.call(Call::Accept {
        offer_ids: vec![offer.id.clone()],
        tasks: vec![greedy],
        filters: Filters { refuse: Some(Duration::ZERO) },
    })
    .await;
    let error = fw.wait_state("t2", TaskState::Error, LONG).await;
    assert!(error.message.contains("needs cpus:64"), "{}", error.message);

    // The same offer twice: the second use is refused.
    fw.call(Call::Accept {
        offer_ids: vec![offer.id.clone()],
        tasks: vec![task("t3", "true")],
        filters: Filters::default(),
    })
    .await;
    fw.wait_state("t3", TaskState::Dropped, LONG).await;

    // Unknown tasks and malformed calls answer with ERROR events.
    fw.call(Call::Kill { task_id: TaskId::parse("ghost").unwrap(), agent_id: None }).await;
    fw.pump_until("an ERROR for the unknown task", LONG, |f| f.errors.iter().any(|e| e.contains("no such task"))).await;
    let mut raw_tx = None;
    {
        // A call with no ACCEPT body, sent on a raw stream, gets an ERROR event on it.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(keel_core::convert::subscribe_to_proto(None, &keel_core::api::FrameworkInfo::new("raw")))
            .await
            .unwrap();
        let mut events = client.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let first = events.message().await.unwrap().unwrap();
        let raw_id = first.subscribed.unwrap().framework_id;
        tx.send(proto::Call {
            framework_id: raw_id.clone(),
            r#type: proto::call::Type::Accept.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        tx.send(proto::Call { framework_id: raw_id, r#type: 42, ..Default::default() }).await.unwrap();
        let mut messages = vec![];
        while messages.len() < 2 {
            let e = events.message().await.unwrap().unwrap();
            if e.r#type() == proto::event::Type::Error {
                messages.push(e.error.unwrap().message);
            }
        }
        assert_eq!(messages, vec!["accept is missing".to_string(), "unknown or unspecified call type".to_string()]);
        raw_tx.replace(tx);
    }

    // None of it hurt the master: it still launches work.
    fw.call(Call::Revive).await;
    fw.launch(task("fine", "true")).await;
    fw.wait_state("fine", TaskState::Finished, LONG).await;
    assert_eq!(master.get("/health").await.unwrap()["status"], "ok");
    drop(raw_tx);
}

#[tokio::test]
async fn keel_execute_exits_with_the_task_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let url = master.url();
    let execute = |args: Vec<&str>| {
        let mut cmd = std::process::Command::new(KEEL);
        cmd.arg("execute").arg("--master").arg(&url).env("KEEL_TOKEN", &master.token).args(args);
        cmd.output().unwrap()
    };
    let ok = execute(vec!["--name", "hello", "--command", "echo hello"]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("TASK_RUNNING") && stdout.contains("TASK_FINISHED"), "{stdout}");

    let failed = execute(vec!["--name", "fail", "--command", "exit 42", "--env", "A=1"]);
    assert_eq!(failed.status.code(), Some(42));

    let too_big =
        execute(vec!["--name", "big", "--command", "true", "--resources", "cpus:100;mem:1", "--offer-wait", "2s"]);
    assert_eq!(too_big.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&too_big.stderr);
    assert!(stderr.contains("no offer could fit cpus:100"), "{stderr}");

    let bad = execute(vec!["--name", "bad", "--command", "true", "--resources", "cpus:lots"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid --resources"));

    // Every one-shot framework tore itself down.
    let state = master.state().await;
    assert!(state["frameworks"].as_array().unwrap().is_empty(), "{state:#}");
}

#[tokio::test]
async fn updates_are_retried_until_acknowledged_and_stay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let mut fw = Framework::subscribe(&master, "slow-acker", Duration::from_secs(60)).await;
    fw.auto_ack = false;
    fw.launch(task("quick", "sleep 0.2")).await;
    // RUNNING is re-sent (the agent retries every 2 s) and FINISHED waits behind it, unacknowledged.
    fw.pump_until("RUNNING twice", LONG, |f| f.updates.iter().filter(|u| u.task_id.as_str() == "quick").count() >= 2)
        .await;
    let quick: Vec<_> = fw.updates.iter().filter(|u| u.task_id.as_str() == "quick").cloned().collect();
    assert!(quick.iter().all(|u| u.state == TaskState::Running), "{quick:#?}");
    assert_eq!(quick[0].uuid, quick[1].uuid, "a retry is the same update");
    let running = quick[0].clone();
    fw.call(Call::Acknowledge {
        agent_id: running.agent_id.unwrap(),
        task_id: running.task_id,
        uuid: running.uuid.unwrap(),
    })
    .await;
    fw.auto_ack = true;
    fw.wait_state("quick", TaskState::Finished, LONG).await;
}

#[tokio::test]
async fn unanswered_offers_are_rescinded_and_declines_are_filtered_until_revive() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start_with(dir.path(), free_port(), &db, "10s", &["--offer-timeout", "1s"]).await;
    let _agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let mut fw = Framework::subscribe(&master, "hoarder", Duration::from_secs(60)).await;
    fw.pump_until("an offer", LONG, |f| !f.offers.is_empty()).await;
    let first = fw.offers[0].id.to_string();
    fw.pump_until("the offer to be rescinded", LONG, |f| f.rescinded.contains(&first)).await;
    fw.pump_until("a new offer", LONG, |f| !f.offers.is_empty()).await;

    // Declined for a minute: nothing more comes from that agent...
    let offer = fw.offers.remove(0);
    fw.call(Call::Decline { offer_ids: vec![offer.id], filters: Filters { refuse: Some(Duration::from_secs(60)) } })
        .await;
    let quiet =
        tokio::time::timeout(Duration::from_secs(3), fw.pump_until("no offer", LONG, |f| !f.offers.is_empty())).await;
    assert!(quiet.is_err(), "the declined agent was offered again within its filter");
    // ...until the framework revives.
    fw.call(Call::Revive).await;
    fw.pump_until("an offer after REVIVE", LONG, |f| !f.offers.is_empty()).await;
    // SUPPRESS stops offers until the next REVIVE.
    fw.call(Call::Suppress).await;
    let offer = fw.offers.remove(0);
    fw.call(Call::Decline { offer_ids: vec![offer.id], filters: Filters { refuse: Some(Duration::ZERO) } }).await;
    let quiet =
        tokio::time::timeout(Duration::from_secs(2), fw.pump_until("no offer", LONG, |f| !f.offers.is_empty())).await;
    assert!(quiet.is_err(), "a suppressed framework got an offer");
    let state = master.state().await;
    assert_eq!(state["frameworks"][0]["suppressed"], true);
}

#[tokio::test]
async fn a_framework_that_comes_back_within_its_failover_timeout_keeps_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let mut fw = Framework::subscribe(&master, "flaky", Duration::from_secs(30)).await;
    fw.launch(task("svc", "echo $$ > pid; exec sleep 60")).await;
    fw.wait_state("svc", TaskState::Running, LONG).await;
    let pid = task_pid(&agent, "svc").await;
    let id = fw.id();
    drop(fw);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut info = keel_core::api::FrameworkInfo::new("flaky");
    info.failover_timeout = Duration::from_secs(30);
    let token = tokio_util::sync::CancellationToken::new();
    let (handle, mut events) = keel_core::scheduler::start(
        master.target(),
        info,
        Some(keel_core::ids::FrameworkId::parse(&id).unwrap()),
        token.clone(),
    );
    match tokio::time::timeout(LONG, events.recv()).await.unwrap().unwrap() {
        keel_core::scheduler::DriverEvent::Event(keel_core::api::Event::Subscribed { framework_id, .. }) => {
            assert_eq!(framework_id.as_str(), id)
        }
        other => panic!("expected SUBSCRIBED, got {other:?}"),
    }
    handle.call(Call::Reconcile { tasks: vec![] }).await.unwrap();
    loop {
        let e = tokio::time::timeout(LONG, events.recv()).await.unwrap().unwrap();
        if let keel_core::scheduler::DriverEvent::Event(keel_core::api::Event::Update(s)) = e {
            assert_eq!((s.task_id.as_str(), s.state), ("svc", TaskState::Running));
            break;
        }
    }
    assert!(alive(pid));
    token.cancel();
}

#[tokio::test]
async fn a_task_that_ends_while_its_agent_is_down_is_reported_once_and_frees_its_resources() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let mut agent = Agent::start(&master, &dir.path().join("agent"), "cpus:1;mem:256").await;
    let mut fw = Framework::subscribe(&master, "test", Duration::from_secs(60)).await;
    fw.launch(task("brief", "sleep 1; exit 7")).await;
    fw.wait_state("brief", TaskState::Running, LONG).await;

    // A process group that claims this agent, in a sandbox of its work directory, but is in no checkpoint
    // (as if the agent died mid-launch).
    let sandbox = std::fs::canonicalize(&agent.work_dir).unwrap().join("sandboxes/fw/lost");
    let mut stray = std::process::Command::new("sleep")
        .arg("60")
        .env("KEEL_AGENT_ID", agent.agent_id().unwrap())
        .env("KEEL_SANDBOX", &sandbox)
        .process_group(0)
        .spawn()
        .unwrap();

    agent.proc.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.restart(&master).await;
    let failed = fw.wait_state("brief", TaskState::Failed, LONG).await;
    assert_eq!(failed.exit_code, Some(7));
    wait_for("the stray process group to be killed", LONG, || async { (!alive(stray.id() as i32)).then_some(()) })
        .await;
    let _ = stray.wait();
    wait_for("the task's resources to be free", LONG, || async {
        let state = master.state().await;
        (state["agents"][0]["used_resources"]["cpus"] == 0.0 && state["tasks"].as_array()?.is_empty()).then_some(())
    })
    .await;
    // Re-registering again reports nothing new: no phantom TASK_LOST for the finished task.
    let before = fw.updates.len();
    agent.restart(&master).await;
    fw.drain_for(Duration::from_secs(2)).await;
    assert!(!fw.updates[before..].iter().any(|u| u.state == TaskState::Lost), "{:#?}", &fw.updates[before..]);
}

#[tokio::test]
async fn the_version_is_mesos_numeric_one_and_names_the_commit_and_keels_own() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("k.db").display());
    let master = Master::start(dir.path(), &db, "10s").await;
    let doc = master.get("/version").await.unwrap();
    // Clients split it and parse each part with int().
    let parts: Vec<u32> = doc["version"].as_str().unwrap().split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts, [1, 11, 0], "{doc}");
    assert_eq!(doc["keel_version"], env!("CARGO_PKG_VERSION"));
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(head) = head {
        assert_eq!(doc["git_sha"], head.as_str(), "the binary names the commit it was built from");
        assert!(doc["build_time"].as_i64().unwrap() > 1_700_000_000, "{doc}");
        assert!(doc["build_date"].as_str().unwrap().starts_with("20"), "{doc}");
    }
    let anonymous = reqwest::get(format!("{}/version", master.url())).await.unwrap();
    assert_eq!(anonymous.status(), 401, "every API needs a credential");
}
