//! A batch framework in one file, on Keel's own Rust driver (the `keel-driver` crate, `core/driver`): it counts the lines,
//! words and bytes of every file in a directory, one task per file, as many at once as the offers hold,
//! and collects each task's answer from its stdout through the master's files API.
//!
//! ```text
//! keel dev &                                   # prints the admin token's path
//! cargo run --example batch_files -- --master http://127.0.0.1:5050 \
//!     --token "$(head -n1 ~/.local/share/keel/admin.token)" /etc/ssl/certs
//! ```
//!
//! It exits 0 when every file was counted, and 1 (naming the files) when a task failed. The tasks run
//! `wc` on the agent, so the directory must be readable there (with `keel dev`, it is the same machine).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use keel_driver::api::{Call, Event, Filters, FrameworkInfo, Offer};
use keel_driver::client::Target;
use keel_driver::ids::TaskId;
use keel_driver::resources::Resources;
use keel_driver::scheduler::{self, DriverEvent, SchedulerHandle};
use keel_driver::task::{CommandSpec, TaskSpec, TaskState};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Counts the lines, words and bytes of every file in a directory, one Keel task per file")]
struct Args {
    /// The master's URL.
    #[arg(long, default_value = "http://127.0.0.1:5050", env = "KEEL_MASTER")]
    master: String,
    /// A token that may subscribe a framework (an admin or framework token).
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    token: String,
    /// What each task asks for.
    #[arg(long, default_value = "cpus:0.1;mem:32")]
    task_resources: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// The directory whose files to count.
    dir: PathBuf,
}

/// Where the batch is: files not launched yet, tasks running, and the answers collected.
struct Batch {
    pending: VecDeque<PathBuf>,
    running: BTreeMap<TaskId, PathBuf>,
    counted: BTreeMap<PathBuf, String>,
    failed: BTreeMap<PathBuf, String>,
    per_task: Resources,
}

impl Batch {
    fn done(&self) -> bool {
        self.pending.is_empty() && self.running.is_empty()
    }

    /// The tasks that fit in `offer`, one per pending file.
    fn fill(&mut self, offer: &Offer) -> Vec<TaskSpec> {
        let mut left = offer.resources.clone();
        let mut tasks = Vec::new();
        while left.contains(&self.per_task) {
            let Some(file) = self.pending.pop_front() else { break };
            left.subtract(&self.per_task);
            let id = TaskId::parse(format!(
                "wc-{}-{}",
                self.running.len() + self.counted.len() + self.failed.len(),
                uuid::Uuid::new_v4().simple()
            ))
            .expect("a valid task id");
            tasks.push(TaskSpec {
                id: id.clone(),
                name: format!("wc {}", file.display()),
                resources: self.per_task.clone(),
                // The file's name is passed as an argument, never pasted into a shell command.
                command: CommandSpec {
                    value: "wc".into(),
                    shell: false,
                    arguments: vec![file.display().to_string()],
                    env: Default::default(),
                },
                labels: Default::default(),
                kill_grace: None,
                container: None,
                health_check: None,
                user: None,
            });
            self.running.insert(id, file);
        }
        tasks
    }
}

/// A finished task's stdout, read through the master (`GET /master/tasks/{id}/files/stdout`).
async fn stdout_of(http: &reqwest::Client, args: &Args, task: &TaskId) -> Result<String> {
    let url = format!("{}/master/tasks/{task}/files/stdout", args.master.trim_end_matches('/'));
    let resp = http.get(&url).bearer_auth(&args.token).send().await?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    let body: serde_json::Value = resp.json().await?;
    Ok(body["data"].as_str().unwrap_or("").trim().to_owned())
}

async fn run(
    args: &Args,
    driver: &SchedulerHandle,
    events: &mut tokio::sync::mpsc::Receiver<DriverEvent>,
    batch: &mut Batch,
) -> Result<()> {
    let http = reqwest::Client::new();
    while !batch.done() {
        let Some(event) = events.recv().await else { bail!("the driver stopped") };
        match event {
            DriverEvent::Event(Event::Subscribed { framework_id, .. }) => {
                eprintln!("subscribed as {framework_id}; {} files to count", batch.pending.len());
            }
            DriverEvent::Event(Event::Offers(offers)) => {
                for offer in offers {
                    let tasks = batch.fill(&offer);
                    let call = if tasks.is_empty() {
                        Call::Decline {
                            offer_ids: vec![offer.id],
                            filters: Filters { refuse: Some(Duration::from_secs(30)) },
                        }
                    } else {
                        eprintln!("launching {} tasks on {}", tasks.len(), offer.hostname);
                        Call::Accept { offer_ids: vec![offer.id], tasks, filters: Filters::default() }
                    };
                    driver.call(call).await?;
                }
            }
            DriverEvent::Event(Event::Update(status)) => {
                if let (Some(uuid), Some(agent_id)) = (status.uuid.clone(), status.agent_id.clone()) {
                    driver.call(Call::Acknowledge { agent_id, task_id: status.task_id.clone(), uuid }).await?;
                }
                if !status.state.is_terminal() {
                    continue;
                }
                let Some(file) = batch.running.remove(&status.task_id) else { continue };
                if status.state == TaskState::Finished {
                    let out =
                        stdout_of(&http, args, &status.task_id).await.unwrap_or_else(|e| format!("(no output: {e})"));
                    batch.counted.insert(file, out);
                } else {
                    batch.failed.insert(file, format!("{} {}", status.state, status.message));
                }
                if batch.pending.is_empty() {
                    driver.call(Call::Suppress).await?;
                }
            }
            DriverEvent::Event(Event::Error(message)) => bail!("the master refused a call: {message}"),
            DriverEvent::Stopped(why) => bail!("the driver stopped: {why}"),
            DriverEvent::Disconnected(why) => eprintln!("disconnected ({why}); the driver reconnects"),
            DriverEvent::Event(_) => {}
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("cannot read {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} has no files to count", args.dir.display());
    }
    let per_task: Resources = args.task_resources.parse().map_err(|e| anyhow::anyhow!("--task-resources: {e}"))?;
    let mut batch = Batch {
        pending: files.into(),
        running: BTreeMap::new(),
        counted: BTreeMap::new(),
        failed: BTreeMap::new(),
        per_task,
    };

    let shutdown = CancellationToken::new();
    let target = Target::new(args.master.clone(), Some(args.token.clone()));
    let (driver, mut events) = scheduler::start(target, FrameworkInfo::new("batch-files"), None, shutdown.clone());
    let outcome =
        tokio::time::timeout(Duration::from_secs(args.timeout), run(&args, &driver, &mut events, &mut batch)).await;
    // The batch is over either way: TEARDOWN tells the master to forget the framework and kill what runs.
    let _ = driver.call(Call::Teardown).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    match outcome {
        Err(_) => bail!(
            "not done within {} s: {} files still pending or running",
            args.timeout,
            batch.pending.len() + batch.running.len()
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    for (file, counts) in &batch.counted {
        println!("{}\t{counts}", file.display());
    }
    if !batch.failed.is_empty() {
        for (file, why) in &batch.failed {
            eprintln!("FAILED {}: {why}", file.display());
        }
        std::process::exit(1);
    }
    eprintln!("counted {} files", batch.counted.len());
    Ok(())
}
