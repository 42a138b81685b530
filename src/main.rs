//! The `keel` command: runs a master, an agent, a one-shot task, or everything at once for development.

mod execute;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use keel_core::agent::containerizer::Composite;
use keel_core::agent::docker::DockerContainerizer;
use keel_core::agent::{self, AgentConfig, process::ProcessContainerizer};
use keel_core::master::{self, MasterConfig};
use keel_core::resources::{Resources, parse_attributes};
use keel_core::store::{Store, redact};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Keel: a small, fast cluster manager in the spirit of Apache Mesos.
///
/// A master pools the resources of agents and offers them to frameworks; agents run the tasks frameworks
/// launch. Everything a master serves (gRPC for agents and frameworks, the operator HTTP API) shares one
/// port.
#[derive(Parser)]
#[command(name = "keel", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a master.
    Master(MasterArgs),
    /// Run an agent that registers with a master and runs its tasks.
    Agent(AgentArgs),
    /// Run one command as a task on the cluster, print its status changes, and exit with its exit code.
    ///
    /// Exit codes: the task's own exit code when it ran; 143 when it was killed; 1 when it could not run
    /// (no offer fitted in time, invalid task, lost agent), with the reason on stderr.
    Execute(execute::ExecuteArgs),
    /// Run the services framework (Marathon-compatible REST API) against a master.
    Marathon(MarathonArgs),
    /// Run the cron jobs framework (Metronome- and Chronos-compatible REST APIs) against a master.
    ///
    /// Jobs fire on cron schedules (in any IANA time zone) or Chronos's ISO 8601 repeating intervals, or
    /// after their parent jobs succeed. Each scheduled instant runs at most once, also across restarts.
    Chronos(ChronosArgs),
    /// Run a master, one agent and both frameworks in one process on SQLite, for trying Keel out.
    Dev(DevArgs),
}

#[derive(Args)]
struct MarathonArgs {
    /// The master's address, such as http://127.0.0.1:5050.
    #[arg(long, env = "KEEL_MASTER")]
    master: String,
    /// Address to serve the REST API on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The store for apps: postgres://… or sqlite:PATH.
    #[arg(long, env = "KEEL_DATABASE_URL", default_value = "sqlite:.keel/marathon.db")]
    database_url: String,
    /// A deployment that makes no progress for this long is marked failed (and rolled back if the app has
    /// the label KEEL_ROLLBACK_ON_FAILURE=true).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    deployment_timeout: Duration,
}

#[derive(Args)]
struct ChronosArgs {
    /// The master's address, such as http://127.0.0.1:5050.
    #[arg(long, env = "KEEL_MASTER")]
    master: String,
    /// Address to serve the REST APIs on.
    #[arg(long, default_value = "127.0.0.1:4400")]
    listen: String,
    /// The store for jobs and run history: postgres://… or sqlite:PATH.
    #[arg(long, env = "KEEL_DATABASE_URL", default_value = "sqlite:.keel/chronos.db")]
    database_url: String,
}

#[derive(Args)]
struct MasterOptions {
    /// Address to listen on for gRPC and HTTP.
    #[arg(long, default_value = "127.0.0.1:5050", env = "KEEL_LISTEN")]
    listen: String,
    /// Where the default SQLite store lives.
    #[arg(long, default_value = ".keel", env = "KEEL_DATA_DIR")]
    data_dir: PathBuf,
    /// The store: postgres://USER:PASS@HOST/DB or sqlite:PATH. Default: sqlite:DATA_DIR/keel.db.
    #[arg(long, env = "KEEL_DATABASE_URL")]
    database_url: Option<String>,
    /// How long an agent may be silent before it is marked unreachable (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    agent_timeout: Duration,
    /// Rescind offers not answered within this (0 keeps them until answered).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    offer_timeout: Duration,
    /// A role's DRF weight, as ROLE=WEIGHT; repeat for more roles.
    #[arg(long = "role-weight", value_parser = parse_weight)]
    role_weights: Vec<(String, f64)>,
}

#[derive(Args)]
struct MasterArgs {
    #[command(flatten)]
    master: MasterOptions,
}

#[derive(Args)]
struct AgentArgs {
    /// The master's address, such as http://127.0.0.1:5050.
    #[arg(long, env = "KEEL_MASTER")]
    master: String,
    /// Where sandboxes and checkpoints live. Restarting with the same directory re-attaches to running tasks.
    #[arg(long, default_value = ".keel/agent", env = "KEEL_WORK_DIR")]
    work_dir: PathBuf,
    #[command(flatten)]
    resources: ResourceOptions,
}

#[derive(Args)]
struct ResourceOptions {
    /// Resources to offer, e.g. "cpus:4;mem:8192;disk:20000;ports:[31000-32000]". Default: detected.
    #[arg(long)]
    resources: Option<String>,
    /// Attributes for placement constraints, e.g. "rack:r1;zone:a".
    #[arg(long, default_value = "")]
    attributes: String,
    /// The hostname to advertise. Default: this machine's.
    #[arg(long)]
    hostname: Option<String>,
    /// Do not run Docker tasks, even if a Docker engine is reachable.
    #[arg(long)]
    no_docker: bool,
    /// Keep Docker containers after their tasks end, for inspection (they are removed by default).
    #[arg(long)]
    keep_containers: bool,
}

#[derive(Args)]
struct DevArgs {
    #[command(flatten)]
    master: MasterOptions,
    #[command(flatten)]
    resources: ResourceOptions,
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("'{s}' is not a duration like 10s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit '{unit}' in '{s}': use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' must be a non-negative duration"))
}

fn parse_weight(s: &str) -> Result<(String, f64), String> {
    let (role, w) = s.split_once('=').ok_or_else(|| format!("'{s}' is not ROLE=WEIGHT"))?;
    let w: f64 = w.parse().map_err(|_| format!("weight '{w}' is not a number"))?;
    if !(w.is_finite() && w > 0.0) {
        return Err(format!("weight of role '{role}' must be positive"));
    }
    Ok((role.to_owned(), w))
}

impl MasterOptions {
    fn config(&self) -> MasterConfig {
        let agent_timeout = self.agent_timeout.max(Duration::from_millis(500));
        MasterConfig {
            agent_timeout,
            agent_heartbeat: agent_timeout / 5,
            offer_timeout: Some(self.offer_timeout).filter(|d| !d.is_zero()),
            recovery_grace: (agent_timeout * 2).max(Duration::from_secs(5)),
            role_weights: self.role_weights.clone(),
            ..MasterConfig::default()
        }
    }

    fn database_url(&self) -> Result<String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create data directory {}", self.data_dir.display()))?;
        Ok(format!("sqlite:{}", self.data_dir.join("keel.db").display()))
    }

    /// Opens the store, starts the master and binds its port; serving is left to [`Started::serve`], so
    /// that routes of built-in frameworks can join the master's.
    async fn start(&self, shutdown: &CancellationToken) -> Result<Started> {
        let url = self.database_url()?;
        let store = Store::connect(&url).await.with_context(|| format!("cannot open the store at {}", redact(&url)))?;
        info!(store = %redact(&url), "store ready");
        let (master, _actor) =
            master::start(self.config(), store.clone(), shutdown.clone()).await.context("cannot start the master")?;
        let listener =
            TcpListener::bind(&self.listen).await.with_context(|| format!("cannot listen on {}", self.listen))?;
        let addr = listener.local_addr()?.to_string();
        Ok(Started { store, master, listener, addr })
    }
}

/// A master whose port is bound but not yet served.
struct Started {
    store: Store,
    master: keel_core::master::MasterHandle,
    listener: TcpListener,
    addr: String,
}

impl Started {
    fn serve(
        self,
        extra: axum::Router,
        extras: keel_core::master::http::Extras,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let limits = keel_core::server::Limits::default();
        let router = keel_core::server::router_with(self.master, extra, extras, limits);
        tokio::spawn(keel_core::server::serve_with(self.listener, router, limits, shutdown.clone()))
    }
}

/// Starts the services framework on `store` against `master`; returns its REST routes and its API (for
/// Marathon's JSON metrics, which `keel dev` serves on the shared `/metrics`). `listen` is where its REST
/// API is reached, as `/v2/info` and `/v2/leader` report it.
async fn marathon_routes(
    master: &str,
    listen: &str,
    store: Store,
    deployment_timeout: Duration,
    health: &keel_core::health::Health,
    shutdown: &CancellationToken,
) -> Result<(axum::Router, keel_marathon::api::Api)> {
    let apps = keel_marathon::store::AppStore::new(store);
    let handle = keel_marathon::scheduler::start_with(master, apps.clone(), deployment_timeout, shutdown.clone())
        .await
        .context("cannot start the services framework")?;
    let callbacks = keel_marathon::callbacks::Callbacks::start(apps.clone(), &handle, shutdown.clone())
        .await
        .context("cannot load the event subscriptions")?;
    let probe = handle.clone();
    health.register("marathon", move || probe.is_running());
    let info = keel_marathon::api::ServiceInfo { leader: listen.to_owned(), master: master.to_owned() };
    let api = keel_marathon::api::Api { apps, marathon: handle, callbacks, info };
    Ok((keel_marathon::api::router(api.clone()), api))
}

/// Starts the cron jobs framework on `store` against `master`; returns its REST routes.
async fn chronos_routes(
    master: &str,
    store: Store,
    health: &keel_core::health::Health,
    shutdown: &CancellationToken,
) -> Result<axum::Router> {
    let jobs = keel_chronos::store::JobStore::new(store);
    let clock = keel_chronos::scheduler::Clock::System;
    let handle = keel_chronos::scheduler::start(master, jobs.clone(), clock, shutdown.clone())
        .await
        .context("cannot start the cron jobs framework")?;
    let probe = handle.clone();
    health.register("chronos", move || probe.is_running());
    Ok(keel_chronos::api::router(keel_chronos::api::Api { jobs, chronos: handle }))
}

/// Serves a framework's routes alone on `listen`, with `/health` for its parts and the same connection
/// limits as the master's port.
async fn serve_framework(
    listen: &str,
    name: &str,
    routes: axum::Router,
    health: keel_core::health::Health,
    shutdown: &CancellationToken,
) -> Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    println!("keel {name} listening on http://{}", listener.local_addr()?);
    let limits = keel_core::server::Limits::default();
    let health_route = axum::routing::get(move || {
        let (up, body) = health.report(|_| true);
        let status = if up { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
        std::future::ready((status, axum::Json(body)))
    });
    let routes = routes.route("/health", health_route).fallback(keel_core::master::http::not_found);
    let routes = keel_core::server::rest_limits(routes, limits);
    keel_core::server::serve_with(listener, routes, limits, shutdown.clone()).await?;
    Ok(())
}

/// Exits the process, non-zero, once a part of it has stopped without being asked to: its supervisor
/// (systemd, a container runtime) then restarts it, and it recovers from the store. `/health` names the
/// part, and its APIs answer 503, for the moment before the exit.
fn exit_when_a_part_stops(health: keel_core::health::Health, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stopped = health.stopped();
            if stopped.is_empty() || shutdown.is_cancelled() {
                continue;
            }
            tracing::error!(parts = ?stopped, "a part of this process stopped: exiting so that it is restarted");
            tokio::time::sleep(EXIT_GRACE).await;
            if !shutdown.is_cancelled() {
                eprintln!("error: {} stopped unexpectedly", stopped.join(", "));
                std::process::exit(EXIT_PART_STOPPED);
            }
        }
    });
}

/// How long `/health` shows a stopped part before the process exits.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The exit code when a part stopped on its own (EX_SOFTWARE).
const EXIT_PART_STOPPED: i32 = 70;

/// Opens a framework's own store, creating the directory of a SQLite file.
async fn open_store(url: &str) -> Result<Store> {
    if let Some(dir) = url.strip_prefix("sqlite:").and_then(|p| std::path::Path::new(p).parent()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Store::connect(url).await.with_context(|| format!("cannot open the store at {}", redact(url)))
}

impl ResourceOptions {
    fn agent_config(&self, master: &str, work_dir: PathBuf) -> Result<AgentConfig> {
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("cannot create work directory {}", work_dir.display()))?;
        let resources: Resources = match &self.resources {
            Some(r) => r.parse().with_context(|| format!("invalid --resources '{r}'"))?,
            None => agent::detect_resources(&work_dir),
        };
        if resources.cpus.milli() == 0 && resources.mem.milli() == 0 {
            bail!("--resources must offer some cpus or mem");
        }
        let mut config = AgentConfig::new(master, work_dir, resources);
        config.attributes = parse_attributes(&self.attributes)
            .with_context(|| format!("invalid --attributes '{}'", self.attributes))?;
        if let Some(h) = &self.hostname {
            config.hostname = h.clone();
        }
        Ok(config)
    }

    /// Processes always; Docker when an engine answers (DOCKER_HOST or the default socket).
    async fn containerizer(&self) -> Composite {
        let docker = if self.no_docker {
            info!("Docker disabled by --no-docker");
            None
        } else {
            match DockerContainerizer::connect(self.keep_containers).await {
                Ok(d) => {
                    info!("Docker engine reachable: Docker tasks enabled");
                    Some(d)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no Docker engine reachable: this agent runs processes only");
                    None
                }
            }
        };
        Composite { process: ProcessContainerizer::new(), docker }
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("shutting down");
        token.cancel();
    });
}

async fn run_agent(config: AgentConfig, containerizer: Composite, shutdown: CancellationToken) -> Result<()> {
    info!(master = %config.master, work_dir = %config.work_dir.display(), resources = %config.resources, "starting agent");
    agent::run(config, Arc::new(containerizer), shutdown).await.context("agent failed")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Execute(args) => execute::run(args).await,
        other => run(other).await.map(|()| 0),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    match command {
        Command::Master(args) => {
            let started = args.master.start(&shutdown).await?;
            println!("keel master listening on http://{}", started.addr);
            let extras = keel_core::master::http::Extras::default();
            exit_when_a_part_stops(extras.health.clone(), shutdown.clone());
            started.serve(axum::Router::new(), extras, &shutdown).await??;
        }
        Command::Marathon(args) => {
            let store = open_store(&args.database_url).await?;
            let health = keel_core::health::Health::default();
            let (routes, api) =
                marathon_routes(&args.master, &args.listen, store, args.deployment_timeout, &health, &shutdown).await?;
            let routes = routes.merge(keel_marathon::api::metrics_router(api));
            exit_when_a_part_stops(health.clone(), shutdown.clone());
            serve_framework(&args.listen, "marathon", routes, health, &shutdown).await?;
        }
        Command::Chronos(args) => {
            let store = open_store(&args.database_url).await?;
            let health = keel_core::health::Health::default();
            let routes = chronos_routes(&args.master, store, &health, &shutdown).await?;
            let routes = routes.route("/ping", axum::routing::get(|| async { "pong" }));
            exit_when_a_part_stops(health.clone(), shutdown.clone());
            serve_framework(&args.listen, "chronos", routes, health, &shutdown).await?;
        }
        Command::Agent(args) => {
            let config = args.resources.agent_config(&args.master, args.work_dir)?;
            let containerizer = args.resources.containerizer().await;
            run_agent(config, containerizer, shutdown).await?;
        }
        Command::Dev(args) => {
            let started = args.master.start(&shutdown).await?;
            let addr = started.addr.clone();
            let timeout = keel_marathon::scheduler::DEFAULT_DEPLOYMENT_TIMEOUT;
            let mut extras = keel_core::master::http::Extras::default();
            let (marathon, api) =
                marathon_routes(&addr, &addr, started.store.clone(), timeout, &extras.health, &shutdown).await?;
            let chronos = chronos_routes(&addr, started.store.clone(), &extras.health, &shutdown).await?;
            // Marathon clients read Marathon's JSON metrics at `/metrics`; Prometheus gets the master's text.
            extras.json_metrics = Some(std::sync::Arc::new(move || {
                Box::pin(keel_marathon::api::json_metrics(api.clone())) as futures::future::BoxFuture<'static, _>
            }));
            let config = args.resources.agent_config(&addr, args.master.data_dir.join("agent"))?;
            let containerizer = args.resources.containerizer().await;
            let agent_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let agent_flag = agent_up.clone();
            extras.health.register("agent", move || agent_flag.load(std::sync::atomic::Ordering::SeqCst));
            exit_when_a_part_stops(extras.health.clone(), shutdown.clone());
            let server = started.serve(marathon.merge(chronos), extras, &shutdown);
            let agent_shutdown = shutdown.clone();
            let agent = tokio::spawn(async move {
                let result = run_agent(config, containerizer, agent_shutdown).await;
                if let Err(e) = &result {
                    tracing::error!("the agent stopped: {e:#}");
                }
                agent_up.store(false, std::sync::atomic::Ordering::SeqCst);
                result
            });
            println!("Keel is running at http://{addr}");
            println!("  cluster state: http://{addr}/master/state");
            println!("  apps (Marathon API): http://{addr}/v2/apps");
            println!("  jobs (Metronome API): http://{addr}/v1/jobs  (Chronos API: http://{addr}/scheduler/jobs)");
            println!(
                "  try:           cargo run -- execute --master http://{addr} --name hello --command 'echo hello'"
            );
            server.await??;
            agent.await??;
        }
        Command::Execute(_) => unreachable!("handled in main"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn weights() {
        assert_eq!(parse_weight("prod=2").unwrap(), ("prod".into(), 2.0));
        assert!(parse_weight("prod").is_err());
        assert!(parse_weight("prod=0").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
