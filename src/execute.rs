//! `keel execute`: a one-shot framework, like `mesos execute`. It subscribes, waits for an offer that fits,
//! launches one task, prints its status changes, acknowledges them, and exits with the task's exit code.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use keel_core::api::{Call, Event, Filters, FrameworkInfo};
use keel_core::ids::TaskId;
use keel_core::resources::Resources;
use keel_core::scheduler::{self, DriverEvent};
use keel_core::task::{CommandSpec, DockerSpec, TaskSpec, TaskState};
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ExecuteArgs {
    /// The master's address, such as http://127.0.0.1:5050; several, comma-separated, to follow whichever leads.
    #[arg(long, env = "KEEL_MASTER")]
    master: String,
    #[command(flatten)]
    credentials: super::Credentials,
    /// The task's name; its id is the name plus a random suffix.
    #[arg(long)]
    name: String,
    /// The shell command to run (under sh -c). With --docker-image it replaces the image's command and is
    /// optional.
    #[arg(long, required_unless_present = "docker_image")]
    command: Option<String>,
    /// Run the task in a container of this Docker image.
    #[arg(long)]
    docker_image: Option<String>,
    /// Pull the image even if the agent has it.
    #[arg(long, requires = "docker_image")]
    force_pull: bool,
    /// What the task needs.
    #[arg(long, default_value = "cpus:0.1;mem:32")]
    resources: String,
    /// An environment variable for the task, as KEY=VALUE; repeat for more.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// The user to run the task as (default: the agent's --default-user).
    #[arg(long)]
    user: Option<String>,
    /// The role to take resources from.
    #[arg(long, default_value = "*")]
    role: String,
    /// Give up if no offer fits within this long.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    offer_wait: Duration,
    /// Time between SIGTERM and SIGKILL when the task is killed.
    #[arg(long, value_parser = super::parse_duration)]
    kill_grace: Option<Duration>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("'{s}' has an empty variable name"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Makes a task id from a free-form name.
fn task_id(name: &str) -> Result<TaskId> {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).take(120).collect();
    let clean = clean.trim_start_matches('.');
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    Ok(TaskId::parse(format!("{}-{suffix}", if clean.is_empty() { "task" } else { clean }))?)
}

/// The process exit code for a task's final state.
fn exit_code(state: TaskState, exit: Option<i32>) -> u8 {
    match state {
        TaskState::Finished => 0,
        TaskState::Failed => exit.map_or(1, |c| u8::try_from(c).unwrap_or(1).max(1)),
        TaskState::Killed => 143,
        _ => 1,
    }
}

pub async fn run(args: ExecuteArgs) -> Result<u8> {
    let resources: Resources =
        args.resources.parse().with_context(|| format!("invalid --resources '{}'", args.resources))?;
    let spec = TaskSpec {
        id: task_id(&args.name)?,
        name: args.name.clone(),
        resources,
        command: CommandSpec {
            value: args.command.clone().unwrap_or_default(),
            shell: true,
            arguments: vec![],
            env: args.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        },
        labels: BTreeMap::new(),
        kill_grace: args.kill_grace,
        container: args.docker_image.as_ref().map(|image| DockerSpec {
            image: image.clone(),
            force_pull: args.force_pull,
            ..Default::default()
        }),
        health_check: None,
        user: args.user.clone(),
    };
    spec.validate()?;
    let mut info = FrameworkInfo::new(format!("keel-execute {}", args.name));
    info.role = args.role.clone();
    // Survive a master restart or a dropped connection while the task runs.
    info.failover_timeout = Duration::from_secs(60);
    let shutdown = CancellationToken::new();
    let target = args.credentials.target(&args.master)?;
    let (driver, mut events) = scheduler::start(target, info, None, shutdown.clone());
    let result = drive(&args, &spec, &driver, &mut events).await;
    let _ = driver.teardown().await;
    // Let the teardown reach the master before the stream closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    result
}

async fn drive(
    args: &ExecuteArgs,
    spec: &TaskSpec,
    driver: &scheduler::SchedulerHandle,
    events: &mut tokio::sync::mpsc::Receiver<DriverEvent>,
) -> Result<u8> {
    let deadline = tokio::time::Instant::now() + args.offer_wait;
    let mut launched = false;
    let mut largest: Option<Resources> = None;
    let mut interrupted = false;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = tokio::time::sleep_until(deadline), if !launched => {
                match &largest {
                    Some(r) => bail!("no offer could fit {} within {:?}; the largest offer was {r}", spec.resources, args.offer_wait),
                    None => bail!("no offer arrived within {:?}: is an agent registered with {}?", args.offer_wait, args.master),
                }
            }
            _ = tokio::signal::ctrl_c(), if launched && !interrupted => {
                interrupted = true;
                eprintln!("interrupted: killing task {}", spec.id);
                let _ = driver.call(Call::Kill { task_id: spec.id.clone(), agent_id: None }).await;
                continue;
            }
        };
        let Some(event) = event else { bail!("the scheduler driver stopped") };
        match event {
            DriverEvent::Event(Event::Subscribed { framework_id, .. }) => {
                eprintln!("subscribed as framework {framework_id}");
                if launched {
                    let _ = driver.call(Call::Reconcile { tasks: vec![(spec.id.clone(), None)] }).await;
                }
            }
            DriverEvent::Event(Event::Offers(offers)) => {
                let (fit, rest): (Vec<_>, Vec<_>) =
                    offers.into_iter().partition(|o| !launched && o.resources.contains(&spec.resources));
                if let Some(offer) = fit.first() {
                    launched = true;
                    println!("launching task {} on agent {} ({})", spec.id, offer.agent_id, offer.hostname);
                    let call = Call::Accept {
                        offer_ids: vec![offer.id.clone()],
                        tasks: vec![spec.clone()],
                        filters: Filters::default(),
                    };
                    driver.call(call).await.context("cannot send ACCEPT")?;
                }
                let mut decline: Vec<_> = fit.iter().skip(1).map(|o| o.id.clone()).collect();
                for o in rest {
                    if largest.as_ref().is_none_or(|l| o.resources.cpus > l.cpus || o.resources.mem > l.mem) {
                        largest = Some(o.resources.clone());
                    }
                    decline.push(o.id);
                }
                if !decline.is_empty() {
                    let _ = driver
                        .call(Call::Decline {
                            offer_ids: decline,
                            filters: Filters { refuse: Some(Duration::from_secs(if launched { 3600 } else { 1 })) },
                        })
                        .await;
                }
                if launched {
                    let _ = driver.call(Call::Suppress).await;
                }
            }
            DriverEvent::Event(Event::Update(status)) if status.task_id == spec.id => {
                let mut line = format!("task {}: {}", status.task_id, status.state);
                if !status.message.is_empty() {
                    line.push_str(&format!(" ({})", status.message));
                }
                println!("{line}");
                if let (Some(uuid), Some(agent_id)) = (&status.uuid, &status.agent_id) {
                    let _ = driver
                        .call(Call::Acknowledge {
                            agent_id: agent_id.clone(),
                            task_id: status.task_id.clone(),
                            uuid: uuid.clone(),
                        })
                        .await;
                }
                if status.state.is_terminal() {
                    let code = exit_code(status.state, status.exit_code);
                    if !matches!(status.state, TaskState::Finished | TaskState::Failed | TaskState::Killed) {
                        eprintln!("error: the task could not run: {} ({})", status.message, status.state);
                    }
                    return Ok(code);
                }
            }
            DriverEvent::Event(Event::Error(message)) => bail!("the master reported an error: {message}"),
            DriverEvent::Event(_) => {}
            DriverEvent::Disconnected(reason) => eprintln!("warning: {reason}; reconnecting"),
            DriverEvent::Stopped(reason) => bail!("the master refused this framework: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(TaskState::Finished, Some(0)), 0);
        assert_eq!(exit_code(TaskState::Failed, Some(3)), 3);
        assert_eq!(exit_code(TaskState::Failed, None), 1);
        assert_eq!(exit_code(TaskState::Killed, None), 143);
        assert_eq!(exit_code(TaskState::Lost, None), 1);
    }

    #[test]
    fn task_ids_are_made_safe() {
        assert!(task_id("my job/with spaces").unwrap().as_str().starts_with("my-job-with-spaces-"));
        assert!(task_id("...").unwrap().as_str().starts_with("task-"));
    }
}
