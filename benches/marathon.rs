//! Services framework benchmark (issue #4). Run with `cargo bench --bench marathon`; figures are printed and
//! written to `docs/benchmarks.md`.
//!
//! Deploys 1,000 apps × 10 instances across 1,000 simulated agents (the in-memory containerizer) behind a
//! real `keel master` process, and measures the time until all 10,000 tasks are RUNNING, then the p99 of
//! `GET /v2/apps?embed=apps.tasks` with them all running. Target: all RUNNING in under 5 s.

mod support;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let quick = std::env::var("KEEL_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (apps, per_app, agents) = if quick { (100, 10, 100) } else { (1000, 10, 1000) };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (deploy, p50, p99, bytes) = rt.block_on(async move {
        let master = support::MasterProcess::start();
        let shutdown = CancellationToken::new();
        let _agents = support::start_agents(&master.target, agents, "cpus:16;mem:16384;disk:0;ports:[31000-31999]", None, &shutdown);
        tokio::time::sleep(Duration::from_secs(2)).await;

        let dir = tempfile::tempdir().unwrap();
        let store = keel_core::store::Store::connect(&format!("sqlite:{}", dir.path().join("m.db").display())).await.unwrap();
        let (handle, router) = support::services(&master.url, store, &shutdown).await;
        let url = support::serve(router).await;

        let list: Vec<serde_json::Value> = (0..apps)
            .map(|i| serde_json::json!({"id": format!("/bench/app-{i}"), "cmd": "simulated", "cpus": 0.01, "mem": 1, "instances": per_app}))
            .collect();
        let client = reqwest::Client::new();
        let started = Instant::now();
        let resp = client.put(format!("{url}/v2/apps")).json(&list).send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap_or_default());
        println!("PUT /v2/apps with {apps} apps answered after {:?}", started.elapsed());
        support::wait_running(&handle, apps * per_app).await;
        let deploy = started.elapsed();

        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..50 {
            let t = Instant::now();
            let body = client.get(format!("{url}/v2/apps?embed=apps.tasks")).send().await.unwrap().bytes().await.unwrap();
            times.push(t.elapsed());
            bytes = body.len();
        }
        times.sort();
        shutdown.cancel();
        (deploy, times[times.len() / 2], times[times.len() * 99 / 100], bytes)
    });
    let n = apps * per_app;
    println!("{n} tasks RUNNING in {deploy:?}; GET /v2/apps?embed=apps.tasks p50 {p50:?}, p99 {p99:?} ({bytes} bytes)");
    let verdict = if deploy < Duration::from_secs(5) { "meets" } else { "MISSES" };
    let report = format!(
        "## Services framework (issue #4)\n\nRecorded by `cargo bench --bench marathon`{}: {apps} apps × {per_app} instances deployed with one `PUT /v2/apps`, on {agents} simulated agents (in-memory containerizer) behind a `keel master` process; the framework, its API and the agents share the benchmark process.\n\n| tasks | all RUNNING after | target | `GET /v2/apps?embed=apps.tasks` p50 / p99 (50 requests, {bytes} bytes) |\n|---|---|---|---|\n| {n} | {:.2} s | < 5 s ({verdict}) | {:.1} ms / {:.1} ms |\n",
        if quick { " in QUICK mode" } else { "" },
        deploy.as_secs_f64(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");
    keel_core::testing::write_report_section(std::path::Path::new(path), "marathon", &report)
        .expect("write docs/benchmarks.md");
    println!("wrote {path}");
}
