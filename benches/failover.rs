//! Failover benchmark (issue #12). Run with `cargo bench --bench failover`; figures are printed and written to
//! `docs/benchmarks.md`.
//!
//! Two `keel master` processes on one store, with 5 simulated agents and a framework (the scheduler driver)
//! given both masters: the leading master is SIGKILLed 10 times (and restarted as a standby after each), and
//! the time until the framework gets offers from the new leader is measured. Then two `keel marathon`
//! processes: their leader is SIGKILLed 10 times, and the time until the standby answers `GET /v2/apps` is
//! measured. Target: under 3 s each. The store is SQLite (both processes of a kind share its file); the
//! election is the same SQL on PostgreSQL.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_core::api::{Call, Event, Filters, FrameworkInfo};
use keel_core::client::Target;
use keel_core::scheduler::{self, DriverEvent};
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 10;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keel")
}

/// Whether the process at `url` says it leads (`leader_path`).
async fn elected(http: &reqwest::Client, url: &str, leader_path: &str) -> bool {
    let Ok(r) = http.get(format!("{url}{leader_path}")).send().await else { return false };
    r.json::<serde_json::Value>().await.is_ok_and(|v| v["elected"] == true)
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stats(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    (d[d.len() / 2], d[d.len() - 1])
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (masters, services) = rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}", dir.path().join("keel.db").display());
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let ports = [free_port(), free_port()];
        let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let master = |i: usize| {
            let listen = format!("127.0.0.1:{}", ports[i]);
            spawn(&[
                "master",
                "--listen",
                &listen,
                "--database-url",
                &db,
                "--insecure-no-auth",
                "--agent-timeout",
                "10s",
            ])
        };
        let mut procs = vec![master(0)];
        wait_until("the first master to lead", || elected(&http, &urls[0], "/master/leader")).await;
        procs.push(master(1));
        let target = Target::new(urls.join(","), None);
        let shutdown = CancellationToken::new();
        let _agents = support::start_agents(&target, 5, "cpus:4;mem:4096;disk:0;ports:[31000-31099]", None, &shutdown);
        let (driver, mut events) =
            scheduler::start(target.clone(), FrameworkInfo::new("bench-failover"), None, shutdown.clone());

        let mut masters = vec![];
        for round in 0..ROUNDS {
            // Both up, one leading, offers flowing.
            wait_until("a standby", || async {
                !elected(&http, &urls[0], "/master/leader").await || !elected(&http, &urls[1], "/master/leader").await
            })
            .await;
            let leader = if elected(&http, &urls[0], "/master/leader").await { 0 } else { 1 };
            while let Ok(e) = events.try_recv() {
                drop(e);
            }
            procs[leader].kill().unwrap();
            procs[leader].wait().unwrap();
            let killed = Instant::now();
            loop {
                let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
                    .await
                    .expect("offers after a failover");
                if let Some(DriverEvent::Event(Event::Offers(offers))) = event {
                    masters.push(killed.elapsed());
                    // Hand them back at once, so that the next leader offers them again.
                    let offer_ids = offers.into_iter().map(|o| o.id).collect();
                    driver
                        .call(Call::Decline { offer_ids, filters: Filters { refuse: Some(Duration::ZERO) } })
                        .await
                        .ok();
                    break;
                }
            }
            println!("master failover {}: offers again after {:?}", round + 1, masters[round]);
            procs[leader] = master(leader);
        }
        shutdown.cancel();

        // The services framework: two instances, the leader killed ROUNDS times.
        let mdb = format!("sqlite:{}", dir.path().join("marathon.db").display());
        let mports = [free_port(), free_port()];
        let murls: Vec<String> = mports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let all = urls.join(",");
        let marathon = |i: usize| {
            let listen = format!("127.0.0.1:{}", mports[i]);
            spawn(&["marathon", "--master", &all, "--listen", &listen, "--database-url", &mdb])
        };
        let mut mprocs = vec![marathon(0)];
        wait_until("the first services framework to lead", || elected(&http, &murls[0], "/keel/v1/leader")).await;
        mprocs.push(marathon(1));
        let mut services = vec![];
        for round in 0..ROUNDS {
            wait_until("a standing-by services framework", || async {
                let a = http.get(format!("{}/v2/apps", murls[0])).send().await.is_ok_and(|r| r.status() == 307);
                let b = http.get(format!("{}/v2/apps", murls[1])).send().await.is_ok_and(|r| r.status() == 307);
                a || b
            })
            .await;
            let leader = if elected(&http, &murls[0], "/keel/v1/leader").await { 0 } else { 1 };
            let standby = 1 - leader;
            mprocs[leader].kill().unwrap();
            mprocs[leader].wait().unwrap();
            let killed = Instant::now();
            wait_until("the standby to serve /v2/apps", || async {
                // Any token passes a master without auth; without one, frameworks answer 401.
                let r = http.get(format!("{}/v2/apps", murls[standby])).bearer_auth("bench").send().await;
                r.is_ok_and(|r| r.status() == 200)
            })
            .await;
            services.push(killed.elapsed());
            println!("services framework failover {}: /v2/apps served after {:?}", round + 1, services[round]);
            mprocs[leader] = marathon(leader);
        }
        for mut p in procs.into_iter().chain(mprocs) {
            let _ = p.kill();
            let _ = p.wait();
        }
        (masters, services)
    });
    let (mp50, mmax) = stats(masters);
    let (sp50, smax) = stats(services);
    let verdict = |d: Duration| if d < Duration::from_secs(3) { "meets" } else { "MISSES" };
    println!(
        "master: offers again p50 {mp50:?}, max {mmax:?}; services framework: /v2/apps p50 {sp50:?}, max {smax:?}"
    );
    let report = format!(
        "## Failover (issue #12)\n\nRecorded by `cargo bench --bench failover`: {ROUNDS} SIGKILLs of the leading `keel master` (two, on one SQLite store, with 5 simulated agents and a framework given both), and {ROUNDS} of the leading `keel marathon` (two instances). Default settings: a 2 s lease, renewed every 400 ms, asked for every 200 ms.\n\n| from SIGKILL of the leader to | p50 | max | target |\n|---|---|---|---|\n| the framework getting offers from the new leading master | {:.2} s | {:.2} s | < 3 s ({}) |\n| the services framework's standby serving `GET /v2/apps` | {:.2} s | {:.2} s | < 3 s ({}) |\n",
        mp50.as_secs_f64(),
        mmax.as_secs_f64(),
        verdict(mmax),
        sp50.as_secs_f64(),
        smax.as_secs_f64(),
        verdict(smax),
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");
    keel_core::testing::write_report_section(std::path::Path::new(path), "failover", &report)
        .expect("write docs/benchmarks.md");
    println!("wrote {path}");
}
