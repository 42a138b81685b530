//! The `keel` command: runs a master, an agent, a one-shot task, or everything at once for development.

mod execute;

/// mimalloc rather than glibc's allocator: the master allocates and frees many small objects per message
/// across threads, where glibc's spent a fifth of the master's time (see ARCHITECTURE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run a master (and its web console, at /ui/).
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
    /// Run a master, one agent, both frameworks and the web console in one process on SQLite, for trying Keel out.
    ///
    /// Auth is on: the first start makes an admin token in DATA_DIR/admin.token (readable by you only),
    /// and every start prints a link that signs a browser in once.
    Dev(DevArgs),
    /// Create, list and revoke API tokens, in the master's store.
    ///
    /// Roles: viewer (reads everything but secret values), operator (also writes apps, jobs, tasks and
    /// runs), admin (everything, also tokens and agents), framework (subscribes to the scheduler API),
    /// agent (registers agents). The store keeps only a hash of each token; a revoked token stops working
    /// within a second everywhere.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Store, list and delete the secrets that apps' environments name (Marathon's `secrets`).
    ///
    /// Values are sealed (ChaCha20-Poly1305) with the key in --secrets-key-file (made if missing) and
    /// reach only the environments of the tasks that name them, never an answer or a log.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Store (or replace) the secret NAME, reading its value from stdin.
    Put {
        name: String,
        #[command(flatten)]
        store: StoreOptions,
        #[command(flatten)]
        key: SecretsKeyOption,
    },
    /// List the stored secrets' names (never their values).
    List {
        #[command(flatten)]
        store: StoreOptions,
    },
    /// Delete the secret NAME.
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreOptions,
    },
}

#[derive(Args, Clone)]
struct SecretsKeyOption {
    /// The key secrets are sealed with (base64 of 32 bytes; made, readable by its owner only, if missing).
    /// Default: DATA_DIR/secrets.key.
    #[arg(long, env = "KEEL_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
}

impl SecretsKeyOption {
    fn key(&self, data_dir: &std::path::Path) -> Result<keel_core::secrets::SecretKey> {
        let path = self.secrets_key_file.clone().unwrap_or_else(|| data_dir.join("secrets.key"));
        let (key, made) = keel_core::secrets::SecretKey::load_or_create(&path).map_err(anyhow::Error::msg)?;
        if made {
            eprintln!("made a new secrets key in {} (keep it: the secrets cannot be read without it)", path.display());
        }
        Ok(key)
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (only this once) on stdout.
    Create {
        /// viewer, operator, admin, framework or agent.
        #[arg(long)]
        role: String,
        /// The principal's name (letters, digits, - _ .); one active token per name. Default: ROLE-RANDOM.
        #[arg(long)]
        name: Option<String>,
        /// For framework tokens: a role the framework may subscribe under; repeat for more. Default: any.
        #[arg(long = "framework-role")]
        framework_roles: Vec<String>,
        #[command(flatten)]
        store: StoreOptions,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[command(flatten)]
        store: StoreOptions,
    },
    /// Revoke the active token with this id or name.
    Revoke {
        id_or_name: String,
        #[command(flatten)]
        store: StoreOptions,
    },
}

/// The credential a client presents to the master: `KEEL_TOKEN`, or `--token-file`.
#[derive(Args, Clone)]
pub(crate) struct Credentials {
    /// A file whose first line is the token to present to the master. The KEEL_TOKEN environment variable
    /// gives the token itself instead.
    #[arg(long, env = "KEEL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that the master's TLS certificate must chain to, for an https:// master.
    #[arg(long, env = "KEEL_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) to present to a master that verifies clients (--client-ca-cert).
    #[arg(long, requires = "tls_client_key")]
    tls_client_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-client-cert.
    #[arg(long, requires = "tls_client_cert")]
    tls_client_key: Option<PathBuf>,
}

impl Credentials {
    /// The master at `url`, with this token and CA.
    pub(crate) fn target(&self, url: &str) -> Result<keel_core::client::Target> {
        let ca = match &self.ca_cert {
            Some(path) => Some(keel_core::tls::read_ca(path).map_err(anyhow::Error::msg)?),
            None => None,
        };
        if ca.is_some() && !keel_core::agent::normalize_url(url).starts_with("https://") {
            bail!("--ca-cert is given but the master's address {url} is not https://");
        }
        let identity = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(cert), Some(key)) => {
                keel_core::tls::read_certs(cert).map_err(anyhow::Error::msg)?;
                keel_core::tls::read_key(key).map_err(anyhow::Error::msg)?;
                let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
                Some((read(cert)?, read(key)?))
            }
            _ => None,
        };
        Ok(keel_core::client::Target::new(url, self.token()?).with_ca(ca).with_identity(identity))
    }

    pub(crate) fn token(&self) -> Result<Option<String>> {
        if let Ok(t) = std::env::var("KEEL_TOKEN")
            && !t.trim().is_empty()
        {
            return Ok(Some(t.trim().to_owned()));
        }
        match &self.token_file {
            Some(path) => Ok(Some(keel_core::auth::read_token_file(path).map_err(anyhow::Error::msg)?)),
            None => Ok(None),
        }
    }
}

/// TLS on a serving port.
#[derive(Args, Clone)]
struct TlsOptions {
    /// Serve gRPC and HTTP over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Verify client certificates (mTLS) against this CA (PEM). Clients without one are still served
    /// (tokens authenticate them); a certificate that does not chain to it is refused.
    #[arg(long, requires = "tls_cert")]
    client_ca_cert: Option<PathBuf>,
    /// Refuse clients without a certificate from --client-ca-cert (mTLS required).
    #[arg(long, requires = "client_ca_cert")]
    require_client_cert: bool,
}

impl TlsOptions {
    fn config(&self) -> Result<Option<Arc<keel_core::server::TlsServerConfig>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let config = keel_core::server::tls_config(cert, key, self.client_ca_cert.as_deref(), self.require_client_cert)
            .map_err(anyhow::Error::msg)
            .context("cannot set up TLS")?;
        Ok(Some(config))
    }
}

/// Says where a server listens, and warns when tokens would cross the network in clear.
fn announce(what: &str, local: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if !tls && !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "{what} serves plain HTTP on a non-loopback address: tokens cross the network in clear (use --tls-cert)");
    }
    format!("{scheme}://{local}")
}

/// What guards a port against web pages.
#[derive(Args, Clone)]
struct WebOptions {
    /// An origin (scheme://host[:port]) allowed to call this port from a browser, whose host is also
    /// accepted in Host headers; repeat for more. A server on a loopback address answers only to
    /// loopback names and IP addresses otherwise (DNS rebinding protection).
    #[arg(long = "allowed-origin", value_parser = parse_origin)]
    allowed_origins: Vec<String>,
    /// The largest REST request body, in bytes (larger ones answer 413). 1 KiB to 64 MiB.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..=64 << 20))]
    max_body_bytes: u32,
}

impl WebOptions {
    fn limits(&self) -> keel_core::server::Limits {
        keel_core::server::Limits { max_body: self.max_body_bytes as usize, ..keel_core::server::Limits::default() }
    }
}

fn parse_origin(s: &str) -> Result<String, String> {
    match s.split_once("://") {
        Some((scheme, host)) if matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/') => {
            Ok(s.to_owned())
        }
        _ => Err(format!("'{s}' is not an origin like https://ops.example.com or http://localhost:3000")),
    }
}

#[derive(Args, Clone)]
struct StoreOptions {
    /// Where the default SQLite store lives.
    #[arg(long, default_value = ".keel", env = "KEEL_DATA_DIR")]
    data_dir: PathBuf,
    /// The store: postgres://USER:PASS@HOST/DB or sqlite:PATH. Default: sqlite:DATA_DIR/keel.db.
    #[arg(long, env = "KEEL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

impl StoreOptions {
    fn database_url(&self) -> Result<String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create data directory {}", self.data_dir.display()))?;
        Ok(format!("sqlite:{}", self.data_dir.join("keel.db").display()))
    }

    async fn open(&self) -> Result<Store> {
        let url = self.database_url()?;
        Store::connect(&url).await.with_context(|| format!("cannot open the store at {}", redact(&url)))
    }
}

/// What a framework run on its own needs: its master, and how its own port is served.
#[derive(Args)]
struct FrameworkOptions {
    /// The master's address, such as http://127.0.0.1:5050; several, comma-separated, to follow whichever leads.
    #[arg(long, env = "KEEL_MASTER")]
    master: String,
    #[command(flatten)]
    credentials: Credentials,
    #[command(flatten)]
    web: WebOptions,
    #[command(flatten)]
    tls: TlsOptions,
    /// The URL this instance registers as the framework's web UI and standbys redirect to while it leads.
    /// Default: http(s)://LISTEN, with this machine's name for an unspecified address. Each instance must
    /// advertise its own URL.
    #[arg(long, value_parser = parse_origin, env = "KEEL_ADVERTISE_URL")]
    advertise_url: Option<String>,
}

#[derive(Args)]
struct MarathonArgs {
    /// The key of the secrets apps name (see `keel secret`); without it, apps that name secrets are refused.
    #[arg(long, env = "KEEL_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    #[command(flatten)]
    framework: FrameworkOptions,
    /// Address to serve the REST API on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The store for apps: postgres://… or sqlite:PATH.
    #[arg(long, env = "KEEL_DATABASE_URL", hide_env_values = true, default_value = "sqlite:.keel/marathon.db")]
    database_url: String,
    /// A deployment that makes no progress for this long is marked failed (and rolled back if the app has
    /// the label KEEL_ROLLBACK_ON_FAILURE=true).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    deployment_timeout: Duration,
}

#[derive(Args)]
struct ChronosArgs {
    #[command(flatten)]
    framework: FrameworkOptions,
    /// Address to serve the REST APIs on.
    #[arg(long, default_value = "127.0.0.1:4400")]
    listen: String,
    /// The store for jobs and run history: postgres://… or sqlite:PATH.
    #[arg(long, env = "KEEL_DATABASE_URL", hide_env_values = true, default_value = "sqlite:.keel/chronos.db")]
    database_url: String,
}

#[derive(Args)]
struct MasterOptions {
    /// Address to listen on for gRPC and HTTP.
    #[arg(long, default_value = "127.0.0.1:5050", env = "KEEL_LISTEN")]
    listen: String,
    /// The URL other masters' standbys redirect to while this one leads, such as http://10.0.0.1:5050.
    /// Default: http(s)://LISTEN, with this machine's name for an unspecified address. Each master must
    /// advertise its own URL.
    #[arg(long, value_parser = parse_origin, env = "KEEL_ADVERTISE_URL")]
    advertise_url: Option<String>,
    #[command(flatten)]
    store: StoreOptions,
    #[command(flatten)]
    web: WebOptions,
    #[command(flatten)]
    tls: TlsOptions,
    /// Serve without authentication: anyone who can reach the port may run commands on every agent. For a
    /// closed test network only; a warning says so at start and every minute.
    #[arg(long)]
    insecure_no_auth: bool,
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
    /// Where the console reaches the services framework's API, such as https://marathon.internal:8080.
    /// Without it, the console uses the web UI URL that the framework named "marathon" registered (and
    /// refuses to guess when two registered different URLs). Pin it in production: any framework token can
    /// register under that name.
    #[arg(long, value_parser = parse_origin)]
    services_url: Option<String>,
    /// Where the console reaches the cron framework's API; as --services-url, for the framework named "chronos".
    #[arg(long, value_parser = parse_origin)]
    jobs_url: Option<String>,
    /// PEM certificates (a CA bundle) the console trusts when it calls this master and the frameworks over
    /// TLS, besides the system's.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

#[derive(Args)]
struct AgentArgs {
    /// The master's address, such as http://127.0.0.1:5050; several, comma-separated, to follow whichever leads.
    #[arg(long, env = "KEEL_MASTER")]
    master: String,
    #[command(flatten)]
    credentials: Credentials,
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
    /// The user that process tasks naming no user run as. Default for `keel agent` run as root: nobody
    /// (tasks run as root only if you name root, here or in the task); otherwise, the agent's own user.
    /// Docker tasks that name no user run as their image's user.
    #[arg(long)]
    default_user: Option<String>,
    /// The only users tasks may run as, comma-separated (e.g. nobody,www-data); a task naming another
    /// fails with the reason. Default: any user a task names.
    #[arg(long, value_delimiter = ',')]
    allowed_users: Vec<String>,
}

#[derive(Args)]
struct DevArgs {
    #[command(flatten)]
    master: MasterOptions,
    #[command(flatten)]
    resources: ResourceOptions,
    /// Serve over TLS with a throwaway CA and certificate made for this machine (kept in DATA_DIR/tls,
    /// so clients can trust DATA_DIR/tls/ca.pem), for trying TLS out. Production uses --tls-cert.
    #[arg(long, conflicts_with = "tls_cert")]
    tls: bool,
    #[command(flatten)]
    secrets: SecretsKeyOption,
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

    /// Opens the store, starts the master and binds its port; serving is left to [`Started::serve`], so
    /// that routes of built-in frameworks can join the master's. `dev` makes the admin token of `keel dev`
    /// if there is none.
    async fn start(
        &self,
        shutdown: &CancellationToken,
        dev: bool,
        tls: Option<Arc<keel_core::server::TlsServerConfig>>,
    ) -> Result<Started> {
        let url = self.store.database_url()?;
        let store = self.store.open().await?;
        info!(store = %redact(&url), "store ready");
        let admin_token = if dev && !self.insecure_no_auth {
            Some(ensure_admin_token(&store, &self.store.data_dir.join("admin.token")).await?)
        } else {
            None
        };
        let auth = if self.insecure_no_auth {
            warn_insecure(shutdown.clone());
            keel_core::auth::Auth::off()
        } else {
            let auth = keel_core::auth::Auth::local(store.clone(), shutdown.clone())
                .await
                .context("cannot load the tokens")?;
            if !dev && store.active_tokens().await.map(|t| t.is_empty()).unwrap_or(false) {
                tracing::warn!(
                    "no tokens exist yet, so nothing can use this master: create one with \
                     `keel token create --role admin --name admin` (same --database-url)"
                );
            }
            auth
        };
        let listener =
            TcpListener::bind(&self.listen).await.with_context(|| format!("cannot listen on {}", self.listen))?;
        let local = listener.local_addr()?;
        let url = announce("the master", local, tls.is_some());
        let gate = keel_core::gate::Gate {
            auth,
            hosts: keel_core::gate::HostPolicy::for_bind(local.ip(), &self.web.allowed_origins, self.insecure_no_auth),
            audit: keel_core::audit::Audit::start(store.clone(), shutdown.clone()),
            tokens: Some(store.clone()),
            secure_cookie: tls.is_some(),
            landing: Some("/ui/".into()),
        };
        let limits = self.web.limits();
        // The port serves from now on; until this process leads, it redirects to the master that does.
        let me = self.advertise_url.clone().unwrap_or_else(|| public_url(&local.to_string(), tls.is_some()));
        // The election has a pool of its own: renewals never wait behind the master's work.
        let lease_store = self.store.open().await?;
        let election = keel_core::election::Election::new(lease_store, "master", &me);
        let standing = election.watch();
        let slot: RouterSlot = Arc::default();
        let standby = keel_core::election::standby_router(standing.clone(), me.clone(), "/master/leader");
        let server = tokio::spawn(keel_core::server::serve_tls(
            listener,
            dispatch(slot.clone(), standby),
            limits,
            tls.clone(),
            shutdown.clone(),
        ));
        let Some(leadership) = election.lead(shutdown).await else {
            info!("stopped while standing by");
            std::process::exit(0);
        };
        step_down_when_lost(&leadership);
        let fenced = store.fenced("master", leadership.term);
        let (master, _actor) =
            master::start(self.config(), fenced, shutdown.clone()).await.context("cannot start the master")?;
        // Agents and frameworks may attach at once; the routes of `keel dev`'s frameworks join in `serve`.
        let mesos = keel_core::mesos::MasterInfo::for_addr(local);
        let early = keel_core::master::http::Extras { gate: gate.clone(), mesos: mesos.clone(), ..Default::default() };
        *slot.write().expect("lock poisoned") =
            Some(keel_core::server::router_with(master.clone(), axum::Router::new(), early, limits));
        Ok(Started {
            store,
            master,
            server,
            slot,
            standing,
            me,
            leadership,
            addr: local.to_string(),
            mesos,
            url,
            gate,
            admin_token,
            limits,
        })
    }
}

/// The files of `keel dev --tls`.
struct DevCertificates {
    cert: PathBuf,
    key: PathBuf,
    ca_pem: Vec<u8>,
}

/// A throwaway CA and a server certificate it signed, for localhost, 127.0.0.1, ::1, this machine's name
/// and the address `listen` names; made once in `dir` and kept, so clients trust `dir/ca.pem` across
/// restarts.
fn dev_certificates(dir: &std::path::Path, listen: &str) -> Result<DevCertificates> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let (cert, key, ca_path) = (dir.join("server.pem"), dir.join("server.key"), dir.join("ca.pem"));
    if !(cert.exists() && key.exists() && ca_path.exists()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Keel dev CA (throwaway)");
        let ca = ca_params.self_signed(&ca_key)?;
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        if let Some(h) = keel_core::gate::machine_hostname() {
            names.push(h);
        }
        if let Some((host, _)) = listen.rsplit_once(':') {
            let host = host.trim_matches(['[', ']']).to_owned();
            if !names.contains(&host) && !host.is_empty() && host != "0.0.0.0" && host != "::" {
                names.push(host);
            }
        }
        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, "keel dev");
        let server = params.signed_by(&server_key, &ca, &ca_key)?;
        write_private(&key, server_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert, server.pem()).with_context(|| format!("cannot write {}", cert.display()))?;
        std::fs::write(&ca_path, ca.pem()).with_context(|| format!("cannot write {}", ca_path.display()))?;
        info!(ca = %ca_path.display(), "made a throwaway CA and server certificate for keel dev --tls");
    }
    let ca_pem = std::fs::read(&ca_path).with_context(|| format!("cannot read {}", ca_path.display()))?;
    Ok(DevCertificates { cert, key, ca_pem })
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Logs, at start and then every minute, that anyone may use this master.
fn warn_insecure(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => tracing::warn!(
                    "auth is OFF (--insecure-no-auth): anyone who can reach this port can run commands on every agent"
                ),
            }
        }
    });
}

/// The admin token of `keel dev`, in `path` (mode 0600): the one there if the store still knows it,
/// otherwise a new one (an older `admin` token is revoked).
async fn ensure_admin_token(store: &Store, path: &std::path::Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(token) = keel_core::auth::read_token_file(path) {
        let hash = keel_core::auth::hash_token(&token);
        if store.active_tokens().await?.iter().any(|t| t.hash == hash) {
            return Ok(token);
        }
    }
    if store.revoke_token("admin", keel_core::store::now_millis()).await?.is_some() {
        tracing::warn!(path = %path.display(), "the stored admin token did not match this file: revoked it and made a new one");
    }
    let (record, token) = keel_core::gate::new_token(store, "admin", "admin", Vec::new()).await?;
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    writeln!(file, "{token}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    info!(id = %record.id, path = %path.display(), "created the admin token");
    Ok(token)
}

/// The router a port serves, once there is one (a standby's answers until then).
type RouterSlot = Arc<std::sync::RwLock<Option<axum::Router>>>;

/// A router that passes each request to the one in `slot`, or to `standby` while it is empty.
fn dispatch(slot: RouterSlot, standby: axum::Router) -> axum::Router {
    use tower::ServiceExt;
    axum::Router::new().fallback_service(tower::service_fn(move |req: axum::extract::Request| {
        let router = slot.read().expect("lock poisoned").clone().unwrap_or_else(|| standby.clone());
        router.oneshot(req)
    }))
}

/// Exits the process (code 70, so that its supervisor restarts it as a standby) the moment it may no longer
/// act as the leader: it stops acting before its lease can expire for the others.
fn step_down_when_lost(leadership: &keel_core::election::Leadership) {
    let lost = leadership.lost();
    tokio::spawn(async move {
        lost.cancelled().await;
        tracing::error!("lost the leadership: exiting, to restart as a standby");
        std::process::exit(70);
    });
}

/// A process whose port is served (a standby's answers until it leads and installs its routes) and which
/// leads its kind.
struct Candidacy {
    slot: RouterSlot,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    leadership: keel_core::election::Leadership,
    local: std::net::SocketAddr,
    /// The URL it advertises to standbys.
    me: String,
    standing: tokio::sync::watch::Receiver<keel_core::election::Standing>,
}

/// Binds `listen`, serves a standby's answers on it, and waits until this process leads `kind` among the
/// processes on the database at `db_url`.
#[allow(clippy::too_many_arguments)]
async fn stand_for(
    kind: &'static str,
    listen: &str,
    tls: Option<Arc<keel_core::server::TlsServerConfig>>,
    db_url: &str,
    limits: keel_core::server::Limits,
    leader: (&'static str, keel_core::election::LeaderBody),
    advertise: Option<String>,
    shutdown: &CancellationToken,
) -> Result<Candidacy> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let me = advertise.unwrap_or_else(|| public_url(&local.to_string(), tls.is_some()));
    // The election has a pool of its own: renewals never wait behind the framework's work.
    let election = keel_core::election::Election::new(open_store(db_url).await?, kind, &me);
    let standing = election.watch();
    let slot: RouterSlot = Arc::default();
    let standby = keel_core::election::standby_router_with(standing.clone(), me.clone(), leader.0, leader.1);
    let server = tokio::spawn(keel_core::server::serve_tls(
        listener,
        dispatch(slot.clone(), standby),
        limits,
        tls,
        shutdown.clone(),
    ));
    let Some(leadership) = election.lead(shutdown).await else {
        info!(kind, "stopped while standing by");
        std::process::exit(0);
    };
    step_down_when_lost(&leadership);
    Ok(Candidacy { slot, server, leadership, local, me, standing })
}

/// Marathon's `/v2/leader`: `{"leader": "host:port"}`.
fn marathon_leader_json(standing: &keel_core::election::Standing, me: &str) -> serde_json::Value {
    let strip = |u: &str| u.split_once("://").map_or(u, |(_, rest)| rest).to_owned();
    match standing {
        keel_core::election::Standing::Leader { .. } => serde_json::json!({ "leader": strip(me) }),
        keel_core::election::Standing::Standby { leader } => {
            serde_json::json!({ "leader": leader.as_deref().map(strip) })
        }
    }
}

/// A master that leads, whose port serves a standby's answers until [`Started::serve`].
struct Started {
    store: Store,
    master: keel_core::master::MasterHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    slot: RouterSlot,
    standing: tokio::sync::watch::Receiver<keel_core::election::Standing>,
    /// The URL this master advertises to standbys.
    me: String,
    leadership: keel_core::election::Leadership,
    addr: String,
    /// Who this master is, as Mesos's v1 API tells frameworks.
    mesos: keel_core::mesos::MasterInfo,
    /// `http://ADDR` or `https://ADDR`.
    url: String,
    gate: keel_core::gate::Gate,
    limits: keel_core::server::Limits,
    /// `keel dev`'s admin token.
    admin_token: Option<String>,
}

impl Started {
    /// Serves the master's routes and `extra` on its port; resigns the lease when `shutdown` comes.
    fn serve(
        self,
        extra: axum::Router,
        mut extras: keel_core::master::http::Extras,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let limits = self.limits;
        extras.gate = self.gate;
        extras.mesos = self.mesos;
        let (standing, me) = (self.standing, self.me);
        let leader = axum::Router::new().route(
            "/master/leader",
            axum::routing::get(move || {
                std::future::ready(axum::Json(keel_core::election::leader_json(&standing.borrow(), &me)))
            }),
        );
        let router = keel_core::server::router_with(self.master, extra.merge(leader), extras, limits);
        *self.slot.write().expect("lock poisoned") = Some(router);
        let (leadership, shutdown, server) = (self.leadership, shutdown.clone(), self.server);
        tokio::spawn(async move {
            shutdown.cancelled().await;
            // Stop serving first, then hand over: nothing acts for this process once a standby leads.
            let served = server.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            leadership.resign().await;
            served
        })
    }
}

/// The URL others reach a framework's port `listen` at, as it registers it with the master (its web UI
/// URL, which the master's console follows): an unspecified address becomes this machine's name.
fn public_url(listen: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen, ""));
    let host = match host.trim_start_matches('[').trim_end_matches(']') {
        "" | "0.0.0.0" | "::" => keel_core::gate::machine_hostname().unwrap_or_else(|| "localhost".into()),
        _ => host.to_owned(),
    };
    format!("{scheme}://{host}:{port}")
}

/// Starts the services framework on `store` against `master`; returns its REST routes and its API (for
/// Marathon's JSON metrics, which `keel dev` serves on the shared `/metrics`). `listen` is where its REST
/// API is reached, as `/v2/info` and `/v2/leader` report it.
#[allow(clippy::too_many_arguments)]
async fn marathon_routes(
    master: &keel_core::client::Target,
    listen: &str,
    store: Store,
    secrets: keel_core::secrets::Secrets,
    deployment_timeout: Duration,
    webui_url: &str,
    health: &keel_core::health::Health,
    shutdown: &CancellationToken,
) -> Result<(axum::Router, keel_marathon::api::Api)> {
    let apps = keel_marathon::store::AppStore::new(store).with_secrets(secrets);
    let handle =
        keel_marathon::scheduler::start_with(master, apps.clone(), deployment_timeout, webui_url, shutdown.clone())
            .await
            .context("cannot start the services framework")?;
    let callbacks = keel_marathon::callbacks::Callbacks::start(apps.clone(), &handle, shutdown.clone())
        .await
        .context("cannot load the event subscriptions")?;
    let probe = handle.clone();
    health.register("marathon", move || probe.is_running());
    let info = keel_marathon::api::ServiceInfo { leader: listen.to_owned(), master: master.url.clone() };
    let api = keel_marathon::api::Api { apps, marathon: handle, callbacks, info };
    Ok((keel_marathon::api::router(api.clone()), api))
}

/// Starts the cron jobs framework on `store` against `master`; returns its REST routes.
async fn chronos_routes(
    master: &keel_core::client::Target,
    store: Store,
    webui_url: &str,
    health: &keel_core::health::Health,
    shutdown: &CancellationToken,
) -> Result<axum::Router> {
    let jobs = keel_chronos::store::JobStore::new(store);
    let clock = keel_chronos::scheduler::Clock::System;
    let handle = keel_chronos::scheduler::start_with(master, jobs.clone(), clock, webui_url, shutdown.clone())
        .await
        .context("cannot start the cron jobs framework")?;
    let probe = handle.clone();
    health.register("chronos", move || probe.is_running());
    Ok(keel_chronos::api::router(keel_chronos::api::Api { jobs, chronos: handle }))
}

/// Serves a framework's routes alone on `listen`, with `/health` for its parts and the same connection
/// limits as the master's port.
///
/// Its callers' credentials are checked by the master (`/keel/v1/whoami`), and its writes audited in its
/// own store.
#[allow(clippy::too_many_arguments)]
async fn serve_framework(
    candidacy: Candidacy,
    name: &str,
    routes: axum::Router,
    health: keel_core::health::Health,
    master: &keel_core::client::Target,
    store: Store,
    web: &WebOptions,
    tls: bool,
    shutdown: &CancellationToken,
) -> Result<()> {
    let local = candidacy.local;
    println!("keel {name} leading on {}", announce(name, local, tls));
    let gate = keel_core::gate::Gate {
        auth: keel_core::auth::Auth::remote(master),
        hosts: keel_core::gate::HostPolicy::for_bind(local.ip(), &web.allowed_origins, false),
        audit: keel_core::audit::Audit::start(store, shutdown.clone()),
        tokens: None,
        secure_cookie: tls,
        landing: None,
    };
    let limits = web.limits();
    let health_route = axum::routing::get(move || {
        let (up, body) = health.report(|_| true);
        let status = if up { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
        std::future::ready((status, axum::Json(body)))
    });
    let (standing, me) = (candidacy.standing.clone(), candidacy.me.clone());
    let leader = axum::routing::get(move || {
        std::future::ready(axum::Json(keel_core::election::leader_json(&standing.borrow(), &me)))
    });
    let routes = routes.route("/health", health_route).merge(keel_core::gate::routes(gate.clone()));
    let routes = keel_core::gate::protect(routes, gate).fallback(keel_core::master::http::not_found);
    let routes = keel_core::server::rest_limits(routes, limits).route("/keel/v1/leader", leader);
    *candidacy.slot.write().expect("lock poisoned") = Some(routes);
    shutdown.cancelled().await;
    // Stop serving first, then hand over: nothing acts for this process once a standby leads.
    let served = candidacy.server.await;
    candidacy.leadership.resign().await;
    served??;
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

async fn token_command(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create { role, name, framework_roles, store } => {
            let store = store.open().await?;
            let name = name.unwrap_or_else(|| keel_core::auth::generate_id(&format!("{role}-")));
            let (record, token) = keel_core::gate::new_token(&store, &name, &role, framework_roles).await?;
            eprintln!(
                "created token {} named '{}' with role {}; it is shown only now",
                record.id, record.name, record.role
            );
            println!("{token}");
        }
        TokenCommand::List { store } => {
            let store = store.open().await?;
            println!("{:<18} {:<24} {:<10} {:<20} {:<8} FRAMEWORK ROLES", "ID", "NAME", "ROLE", "CREATED", "STATE");
            for t in store.tokens().await? {
                let created = chrono_like(t.created_at);
                let state = if t.revoked_at.is_some() { "revoked" } else { "active" };
                let roles = if t.framework_roles.is_empty() { "-".to_owned() } else { t.framework_roles.join(",") };
                println!("{:<18} {:<24} {:<10} {:<20} {:<8} {roles}", t.id, t.name, t.role, created, state);
            }
        }
        TokenCommand::Revoke { id_or_name, store } => {
            let store = store.open().await?;
            match store.revoke_token(&id_or_name, keel_core::store::now_millis()).await? {
                Some(id) => eprintln!("revoked {id}; every process refuses it within a second"),
                None => bail!("no active token with id or name '{id_or_name}'"),
            }
        }
    }
    Ok(())
}

async fn secret_command(command: SecretCommand) -> Result<()> {
    match command {
        SecretCommand::Put { name, store, key } => {
            keel_core::secrets::check_name(&name).map_err(anyhow::Error::msg)?;
            let key = key.key(&store.data_dir)?;
            let mut value = String::new();
            use std::io::Read;
            std::io::stdin()
                .take(keel_core::secrets::MAX_VALUE as u64 + 2)
                .read_to_string(&mut value)
                .context("cannot read the secret's value from stdin")?;
            // One trailing newline (from `echo` or a terminal) is not part of the value.
            let value = value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value);
            let store = store.open().await?;
            keel_core::secrets::put(&store, &key, &name, value).await.map_err(anyhow::Error::msg)?;
            eprintln!("stored secret '{name}' ({} bytes)", value.len());
        }
        SecretCommand::List { store } => {
            let store = store.open().await?;
            for (name, at) in keel_core::secrets::list(&store).await? {
                println!("{name:<40} {}", chrono_like(at));
            }
        }
        SecretCommand::Delete { name, store } => {
            let store = store.open().await?;
            if !keel_core::secrets::delete(&store, &name).await? {
                bail!("no secret named '{name}'");
            }
            eprintln!("deleted secret '{name}'");
        }
    }
    Ok(())
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
fn chrono_like(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |d| d.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// Opens a framework's own store, creating the directory of a SQLite file.
async fn open_store(url: &str) -> Result<Store> {
    if let Some(dir) = url.strip_prefix("sqlite:").and_then(|p| std::path::Path::new(p).parent()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Store::connect(url).await.with_context(|| format!("cannot open the store at {}", redact(url)))
}

impl ResourceOptions {
    /// The agent's settings; `dev` keeps the agent's own user as the default task user.
    fn agent_config(&self, master: &keel_core::client::Target, work_dir: PathBuf, dev: bool) -> Result<AgentConfig> {
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
        let root = nix::unistd::geteuid().is_root();
        config.default_user = match &self.default_user {
            Some(u) => Some(u.clone()),
            None if root && !dev => Some("nobody".into()),
            None => None,
        };
        for u in &self.allowed_users {
            if !keel_core::task::valid_user(u) {
                bail!("--allowed-users: '{u}' is not a user name");
            }
        }
        config.allowed_users = self.allowed_users.clone();
        if let Some(u) = &config.default_user {
            if !config.allowed_users.is_empty() && !config.allowed_users.contains(u) {
                bail!("--default-user '{u}' is not among --allowed-users");
            }
            if !keel_core::task::valid_user(u) {
                bail!("--default-user '{u}' is not a user name");
            }
            if nix::unistd::User::from_name(u).ok().flatten().is_none() {
                bail!("--default-user '{u}' is not a user on this machine");
            }
            info!(user = %u, "process tasks that name no user run as {u}");
        } else if root {
            tracing::warn!("process tasks that name no user run as root: pass --default-user to change that");
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
    info!(master = ?config.master, work_dir = %config.work_dir.display(), resources = %config.resources, "starting agent");
    agent::run(config, Arc::new(containerizer), shutdown).await.context("agent failed")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    keel_core::version::set_build(keel_core::version::Build {
        git_sha: env!("KEEL_GIT_SHA"),
        commit_time: env!("KEEL_COMMIT_TIME").parse().unwrap_or(0),
    });
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
            let started = args.master.start(&shutdown, false, args.master.tls.config()?).await?;
            println!("keel master listening on {}", started.url);
            println!("  console: {}/ui/", started.url);
            let extras = keel_core::master::http::Extras::default();
            exit_when_a_part_stops(extras.health.clone(), shutdown.clone());
            let doc = keel_core::openapi::route(keel_core::openapi::finish(keel_core::openapi::master()));
            // The console finds the frameworks at the web UI URLs they register.
            let mut pinned = std::collections::HashMap::new();
            if let Some(u) = &args.services_url {
                pinned.insert(keel_web::Service::Services, u.clone());
            }
            if let Some(u) = &args.jobs_url {
                pinned.insert(keel_web::Service::Jobs, u.clone());
            }
            let ca = match &args.ca_cert {
                Some(path) => Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?),
                None => None,
            };
            let upstream = keel_web::Upstream::new(
                &keel_core::client::Target::new(&started.url, None).with_ca(ca),
                started.gate.auth.clone(),
                pinned,
            );
            let console = keel_web::Console::new(upstream, args.master.insecure_no_auth).start(&shutdown);
            started.serve(doc.merge(keel_web::router(console)), extras, &shutdown).await??;
        }
        Command::Marathon(args) => {
            let store = open_store(&args.database_url).await?;
            let tls = args.framework.tls.config()?;
            let tls_on = tls.is_some();
            let candidacy = stand_for(
                "marathon",
                &args.listen,
                tls,
                &args.database_url,
                args.framework.web.limits(),
                ("/v2/leader", marathon_leader_json),
                args.framework.advertise_url.clone(),
                &shutdown,
            )
            .await?;
            let health = keel_core::health::Health::default();
            let target = args.framework.credentials.target(&args.framework.master)?;
            let secrets = match &args.secrets_key_file {
                Some(path) => {
                    let key = keel_core::secrets::SecretKey::load(path).map_err(anyhow::Error::msg)?;
                    keel_core::secrets::Secrets::start(store.clone(), key, shutdown.clone()).await?
                }
                None => keel_core::secrets::Secrets::none(),
            };
            // Its writes carry its term: once another instance leads, the database refuses them.
            let (routes, api) = marathon_routes(
                &target,
                &candidacy.local.to_string(),
                store.fenced("marathon", candidacy.leadership.term),
                secrets,
                args.deployment_timeout,
                &candidacy.me.clone(),
                &health,
                &shutdown,
            )
            .await?;
            let routes = routes.merge(keel_marathon::api::metrics_router(api));
            let mut doc = keel_core::openapi::framework_port();
            doc.merge(keel_marathon::api::openapi());
            let routes = routes.merge(keel_core::openapi::route(keel_core::openapi::finish(doc)));
            exit_when_a_part_stops(health.clone(), shutdown.clone());
            serve_framework(
                candidacy,
                "marathon",
                routes,
                health,
                &target,
                store,
                &args.framework.web,
                tls_on,
                &shutdown,
            )
            .await?;
        }
        Command::Chronos(args) => {
            let store = open_store(&args.database_url).await?;
            let tls = args.framework.tls.config()?;
            let tls_on = tls.is_some();
            let candidacy = stand_for(
                "chronos",
                &args.listen,
                tls,
                &args.database_url,
                args.framework.web.limits(),
                ("/keel/v1/leader", keel_core::election::leader_json),
                args.framework.advertise_url.clone(),
                &shutdown,
            )
            .await?;
            let health = keel_core::health::Health::default();
            let target = args.framework.credentials.target(&args.framework.master)?;
            let url = candidacy.me.clone();
            let fenced = store.fenced("chronos", candidacy.leadership.term);
            let routes = chronos_routes(&target, fenced, &url, &health, &shutdown).await?;
            let routes = routes.route("/ping", axum::routing::get(|| async { "pong" }));
            let mut doc = keel_core::openapi::framework_port();
            doc.merge(keel_core::openapi::ping());
            doc.merge(keel_chronos::api::openapi());
            let routes = routes.merge(keel_core::openapi::route(keel_core::openapi::finish(doc)));
            exit_when_a_part_stops(health.clone(), shutdown.clone());
            serve_framework(
                candidacy,
                "chronos",
                routes,
                health,
                &target,
                store,
                &args.framework.web,
                tls_on,
                &shutdown,
            )
            .await?;
        }
        Command::Token(command) => token_command(command).await?,
        Command::Secret(command) => secret_command(command).await?,
        Command::Agent(args) => {
            let target = args.credentials.target(&args.master)?;
            let config = args.resources.agent_config(&target, args.work_dir, false)?;
            let containerizer = args.resources.containerizer().await;
            run_agent(config, containerizer, shutdown).await?;
        }
        Command::Dev(args) => {
            use keel_core::auth::{Principal, Role};
            use keel_core::client::Target;
            if args.master.tls.tls_cert.is_some() {
                bail!("keel dev makes its own certificate: use --tls rather than --tls-cert");
            }
            let (tls, ca) = if args.tls {
                let files = dev_certificates(&args.master.store.data_dir.join("tls"), &args.master.listen)?;
                let config =
                    keel_core::server::tls_config(&files.cert, &files.key, None, false).map_err(anyhow::Error::msg)?;
                (Some(config), Some(files.ca_pem))
            } else {
                (None, None)
            };
            let started = args.master.start(&shutdown, true, tls).await?;
            let addr = started.addr.clone();
            let base = started.url.clone();
            let auth = started.gate.auth.clone();
            // The parts in this process present credentials that exist only in its memory.
            let internal = |name: &str, role: Role| {
                Target::new(&base, Some(auth.internal(Principal::new(name, role)))).with_ca(ca.clone())
            };
            let timeout = keel_marathon::scheduler::DEFAULT_DEPLOYMENT_TIMEOUT;
            let mut extras = keel_core::master::http::Extras::default();
            let marathon_target = internal("keel:marathon", Role::Framework);
            let key = args.secrets.key(&args.master.store.data_dir)?;
            let secrets = keel_core::secrets::Secrets::start(started.store.clone(), key, shutdown.clone()).await?;
            // The frameworks in this process write under the master's term.
            let fenced = started.store.fenced("master", started.leadership.term);
            let (marathon, api) = marathon_routes(
                &marathon_target,
                &addr,
                fenced.clone(),
                secrets,
                timeout,
                &base,
                &extras.health,
                &shutdown,
            )
            .await?;
            let chronos_target = internal("keel:chronos", Role::Framework);
            let chronos = chronos_routes(&chronos_target, fenced, &base, &extras.health, &shutdown).await?;
            // Marathon clients read Marathon's JSON metrics at `/metrics`; Prometheus gets the master's text.
            extras.json_metrics = Some(std::sync::Arc::new(move || {
                Box::pin(keel_marathon::api::json_metrics(api.clone())) as futures::future::BoxFuture<'static, _>
            }));
            let config = args.resources.agent_config(
                &internal("keel:agent", Role::Agent),
                args.master.store.data_dir.join("agent"),
                true,
            )?;
            let admin_token = started.admin_token.clone();
            let token_path = args.master.store.data_dir.join("admin.token");
            let containerizer = args.resources.containerizer().await;
            let agent_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let agent_flag = agent_up.clone();
            extras.health.register("agent", move || agent_flag.load(std::sync::atomic::Ordering::SeqCst));
            exit_when_a_part_stops(extras.health.clone(), shutdown.clone());
            let mut doc = keel_core::openapi::master();
            doc.merge(keel_marathon::api::openapi());
            doc.merge(keel_chronos::api::openapi());
            let doc = keel_core::openapi::route(keel_core::openapi::finish(doc));
            let upstream = keel_web::Upstream::new(
                &Target::new(&base, None).with_ca(ca.clone()),
                auth.clone(),
                keel_web::same_port(&base),
            );
            let console = keel_web::Console::new(upstream, args.master.insecure_no_auth).start(&shutdown);
            let routes = marathon.merge(chronos).merge(doc).merge(keel_web::router(console));
            let server = started.serve(routes, extras, &shutdown);
            let agent_shutdown = shutdown.clone();
            let agent = tokio::spawn(async move {
                let result = run_agent(config, containerizer, agent_shutdown).await;
                if let Err(e) = &result {
                    tracing::error!("the agent stopped: {e:#}");
                }
                agent_up.store(false, std::sync::atomic::Ordering::SeqCst);
                result
            });
            println!("Keel is running at {base}");
            let (cacert, ca_flag) = if args.tls {
                let ca = args.master.store.data_dir.join("tls").join("ca.pem");
                (format!(" --cacert {}", ca.display()), format!(" --ca-cert {}", ca.display()))
            } else {
                (String::new(), String::new())
            };
            if let Some(token) = &admin_token {
                let code = auth.login_code_for(token).unwrap_or_default();
                let file = token_path.display();
                println!("  console (this sign-in link works once): {base}/?token={code}");
                println!("  admin token:   {file}  (every API needs it)");
                println!(
                    "  cluster state: curl{cacert} -H \"Authorization: Bearer $(cat {file})\" {base}/master/state"
                );
                println!("  apps (Marathon API): {base}/v2/apps");
                println!("  jobs (Metronome API): {base}/v1/jobs  (Chronos API: {base}/scheduler/jobs)");
                println!(
                    "  try:           KEEL_TOKEN_FILE={file} keel execute --master {base}{ca_flag} --name hello --command 'echo hello'"
                );
            } else {
                println!("  auth is OFF (--insecure-no-auth)");
            }
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
    fn out_of_range_limits_are_refused() {
        let parse = |args: &[&str]| Cli::try_parse_from(["keel", "master"].iter().chain(args));
        assert!(parse(&["--max-body-bytes", "10"]).is_err());
        assert!(parse(&["--max-body-bytes", "1000000000"]).is_err());
        assert!(parse(&["--max-body-bytes", "65536"]).is_ok());
        assert!(parse(&["--allowed-origin", "evil.example"]).is_err());
        assert!(parse(&["--require-client-cert"]).is_err(), "needs --client-ca-cert");
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
