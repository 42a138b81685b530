//! Console benchmark (issue #11). Run with `cargo bench --bench console`; figures are printed and written
//! to `docs/benchmarks.md`.
//!
//! 1,000 apps × 10 instances RUNNING on 1,000 simulated agents (the in-memory containerizer) behind a real
//! `keel master` process, with the services and cron frameworks' APIs in this process; then each main console
//! page is rendered 30 times through the console's router, and its server time (which includes reading the
//! APIs over HTTP) and its size before compression are measured. Targets: under 100 ms and under 200 KB.

mod support;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let quick = std::env::var("KEEL_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (apps, per_app, agents) = if quick { (100, 10, 100) } else { (1000, 10, 1000) };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows = rt.block_on(async move {
        let master = support::MasterProcess::start();
        let shutdown = CancellationToken::new();
        let _agents = support::start_agents(&master.target, agents, "cpus:16;mem:16384;disk:0;ports:[31000-31999]", None, &shutdown);
        tokio::time::sleep(Duration::from_secs(2)).await;

        let dir = tempfile::tempdir().unwrap();
        let store = keel_core::store::Store::connect(&format!("sqlite:{}", dir.path().join("c.db").display())).await.unwrap();
        let (handle, services) = support::services(&master.url, store.clone(), &shutdown).await;
        let jobs = keel_chronos::store::JobStore::new(store);
        let chronos = keel_chronos::scheduler::start(&master.url, jobs.clone(), keel_chronos::scheduler::Clock::System, shutdown.clone())
            .await
            .unwrap();
        let url = support::serve(services.merge(keel_chronos::api::router(keel_chronos::api::Api { jobs, chronos }))).await;

        let list: Vec<serde_json::Value> = (0..apps)
            .map(|i| serde_json::json!({"id": format!("/bench/app-{i:04}"), "cmd": "simulated", "cpus": 0.01, "mem": 1, "instances": per_app}))
            .collect();
        let client = reqwest::Client::new();
        let resp = client.put(format!("{url}/v2/apps")).json(&list).send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap_or_default());
        let total = apps * per_app;
        let started = Instant::now();
        support::wait_running(&handle, total).await;
        println!("{total} tasks RUNNING after {:?}", started.elapsed());

        let mut fixed = std::collections::HashMap::new();
        fixed.insert(keel_web::Service::Services, url.clone());
        fixed.insert(keel_web::Service::Jobs, url.clone());
        let upstream = keel_web::Upstream::new(&master.target, keel_core::auth::Auth::off(), fixed);
        let console = keel_web::router(keel_web::Console::new(upstream, true));
        let state: serde_json::Value = client.get(format!("{}/master/state", master.url)).send().await.unwrap().json().await.unwrap();
        let task = state["tasks"][0]["id"].as_str().unwrap().to_owned();
        let pages = [
            ("overview", "/ui/".to_owned()),
            ("apps", "/ui/apps".to_owned()),
            ("apps, page 10, by memory", "/ui/apps?sort=-mem&page=10".to_owned()),
            ("one app (10 instances)", format!("/ui/apps/bench/app-{:04}", apps / 2)),
            ("tasks", "/ui/tasks".to_owned()),
            ("tasks, running, page 100", "/ui/tasks?state=TASK_RUNNING&page=100".to_owned()),
            ("agents", "/ui/agents".to_owned()),
            ("one task", format!("/ui/tasks/{task}")),
        ];
        let mut rows = vec![];
        for (name, path) in pages {
            let mut times = vec![];
            let mut bytes = 0;
            for _ in 0..30 {
                let t = Instant::now();
                let req = axum::http::Request::get(&path).body(axum::body::Body::empty()).unwrap();
                let resp = console.clone().oneshot(req).await.unwrap();
                assert!(resp.status().is_success(), "{path}: {}", resp.status());
                let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
                times.push(t.elapsed());
                bytes = body.len();
            }
            times.sort();
            let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
            println!("{name:<28} p50 {:>7.1} ms  p99 {:>7.1} ms  {:>7} bytes", ms(p50), ms(p99), bytes);
            rows.push((name, p50, p99, bytes));
        }
        shutdown.cancel();
        rows
    });
    let mut table = String::new();
    for (name, p50, p99, bytes) in &rows {
        let time = if *p99 < Duration::from_millis(100) { "meets" } else { "MISSES" };
        let size = if *bytes < 200 * 1024 { "meets" } else { "MISSES" };
        table.push_str(&format!(
            "| {name} | {:.1} ms | {:.1} ms ({time}) | {:.1} KB ({size}) |\n",
            ms(*p50),
            ms(*p99),
            *bytes as f64 / 1024.0
        ));
    }
    let report = format!(
        "## Console (issue #11)\n\nRecorded by `cargo bench --bench console`{}: {apps} apps × {per_app} instances RUNNING on {agents} simulated agents behind a `keel master` process, the frameworks' APIs and the agents in the benchmark process. Each page is rendered 30 times through the console's router; the time includes reading the master's and the frameworks' APIs over HTTP. Targets: under 100 ms on the server, under 200 KB before compression.\n\n| page | p50 | p99 | size |\n|---|---|---|---|\n{table}",
        if quick { " in QUICK mode" } else { "" },
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");
    keel_core::testing::write_report_section(std::path::Path::new(path), "console", &report)
        .expect("write docs/benchmarks.md");
    println!("wrote {path}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
