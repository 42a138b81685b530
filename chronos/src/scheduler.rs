//! The cron jobs scheduler: a framework that fires each job's ticks, exactly once each.
//!
//! One actor owns the jobs (desired state, from the store), their open runs, and the timers. It sleeps until
//! the next thing it must do (prepare a tick, fire it, retry a run, time one out); it never polls.
//!
//! A tick's life:
//! 1. **Prepare**, [`LOOKAHEAD`] before the instant: the run is inserted into the store (unique per job and
//!    instant, so a tick can never produce two runs) and offers are asked for.
//! 2. **Fire**, at the instant: the schedule's concurrency policy is applied, and the run launches on an
//!    offer already held, so nothing slow stands between the instant and the launch. Task ids are derived
//!    from the run and attempt, so a restarted framework knows which tasks to ask the master about.
//! 3. **Finish**: the outcome is written, with the tail of the task's output; then the update is
//!    acknowledged, and dependent jobs whose parents have all succeeded are started.
//!
//! After a restart, ticks missed while down are not replayed: the latest runs if it is within its starting
//! deadline, the rest are recorded as missed ([`crate::schedule::due`]). Open runs are reconciled with the
//! master and carry on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use keel_core::api::{Call, Event, Filters, FrameworkInfo, Offer};
use keel_core::ids::{AgentId, FrameworkId, TaskId};
use keel_core::resources::{Resources, Scalar};
use keel_core::scheduler::{self, DriverEvent, Link, SchedulerHandle};
use keel_core::task::{CommandSpec, DockerSpec, TaskSpec, TaskState, TaskStatus};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::dependencies;
use crate::job::{
    ConcurrencyPolicy, Job, JobError, JobId, JobStats, Run, RunStatus, ScheduleExpr, Trigger, check_dependencies,
};
use crate::pool;
use crate::runs::{self, AfterFailure, OpenRuns};
use crate::schedule::{Schedule, due};
use crate::store::{CronStore, JobStore, JobStoreError};
use crate::timers::{Key, Queue};

/// How long before a tick its run is recorded and offers are asked for.
pub const LOOKAHEAD: Duration = Duration::from_secs(2);
/// Missed ticks recorded one by one per schedule after downtime; older ones are only counted.
const MAX_MISSED_RECORDED: usize = 100;
/// Finished runs kept per job.
const HISTORY_KEPT: i64 = 100;
/// How often every job's old runs are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Jobs pruned per pass; passes follow each other a second apart until every job is done, so that pruning
/// 10,000 jobs never holds the scheduler up for long.
const PRUNE_BATCH: usize = 16;
/// The longest sleep, so that a jump of the system clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How long offers nobody needs are refused.
const IDLE_REFUSE: Duration = Duration::from_secs(5);
/// How a run's message marks a kill the scheduler asked for.
const STOPPING: &str = "stopping: ";
/// How often the tasks of runs not known to be running are reconciled with the master.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// Every how many reconciliation passes running tasks are asked about too (20 × 30 s = 10 min).
const FULL_RECONCILE_PASSES: u64 = 20;
/// How long a run's task may stay on an unreachable agent before the run gives it up as lost (and retries
/// or fails); the task is killed if the agent comes back.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(60);
/// How long a launched task may go without any update before the master is asked about it.
const LAUNCH_GRACE: Duration = Duration::from_secs(5);
/// How long runs wait for offers after a REVIVE before they revive again.
const REVIVE_AGAIN: Duration = Duration::from_secs(5);
/// How long offers are refused when held for runs that none of them fit.
const UNFIT_REFUSE: Duration = Duration::from_secs(2);
/// How long ticks wait after the store failed to record them.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Bytes of stdout and stderr kept per run.
const TAIL_BYTES: u64 = 4096;

/// The time the scheduler goes by: the system's, or one a test moves by hand.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    /// Tokio's clock, from `at` when it read `since`: a simulation pauses and advances it, and the cron
    /// schedule follows.
    Tokio {
        at: DateTime<Utc>,
        since: tokio::time::Instant,
    },
    /// Moves only when told to; the scheduler wakes whenever it moves.
    Manual(std::sync::Arc<ManualClock>),
}

/// A clock for tests: [`ManualClock::advance`] moves it and wakes the scheduler, which then does what has
/// come due, with no real waiting.
#[derive(Debug)]
pub struct ManualClock {
    now: std::sync::Mutex<DateTime<Utc>>,
    moved: tokio::sync::Notify,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> std::sync::Arc<ManualClock> {
        std::sync::Arc::new(ManualClock { now: std::sync::Mutex::new(at), moved: tokio::sync::Notify::new() })
    }

    pub fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("clock lock poisoned")
    }

    pub fn advance(&self, by: Duration) {
        {
            let mut now = self.now.lock().expect("clock lock poisoned");
            *now += TimeDelta::from_std(by).unwrap_or_default();
        }
        self.moved.notify_one();
    }
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { at, since } => *at + TimeDelta::from_std(since.elapsed()).unwrap_or_default(),
            Clock::Manual(m) => m.now(),
        }
    }

    /// How long until `t`, never negative.
    pub fn until(&self, t: DateTime<Utc>) -> Duration {
        (t - self.now()).to_std().unwrap_or_default()
    }

    /// Sleeps `d` of this clock's time: real time for the system clock; for a manual clock, until it
    /// moves (at once when `d` is zero).
    async fn sleep(&self, d: Duration) {
        match self {
            Clock::System | Clock::Tokio { .. } => tokio::time::sleep(d).await,
            Clock::Manual(_) if d.is_zero() => {}
            Clock::Manual(m) => m.moved.notified().await,
        }
    }
}

/// Explicit reconciliation answers still to come, per task. The master handles a framework's calls in order
/// and answers each task asked about once (or not at all, for an agent it is still waiting for), so the
/// answers to requests sent before a task's launch come first; an `UNKNOWN` among them only says that the
/// master had not seen the launch yet.
#[derive(Debug, Default)]
struct PendingAnswers {
    asked: HashMap<String, u32>,
    /// Of `asked`, those sent before the task was launched.
    before_launch: HashMap<String, u32>,
}

impl PendingAnswers {
    fn asked(&mut self, task: &str) {
        *self.asked.entry(task.to_owned()).or_default() += 1;
    }

    fn launched(&mut self, task: &str) {
        match self.asked.get(task) {
            Some(n) => self.before_launch.insert(task.to_owned(), *n),
            None => self.before_launch.remove(task),
        };
    }

    /// Counts an answer about `task` as received; true if it answers a request sent before the launch.
    fn answered(&mut self, task: &str) -> bool {
        fn take(counts: &mut HashMap<String, u32>, task: &str) -> bool {
            let Some(n) = counts.get_mut(task) else { return false };
            *n -= 1;
            if *n == 0 {
                counts.remove(task);
            }
            true
        }
        take(&mut self.asked, task);
        take(&mut self.before_launch, task)
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Why a change to jobs was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Invalid(#[from] JobError),
    #[error("job '{0}' does not exist")]
    NotFound(JobId),
    #[error("job '{0}' already exists")]
    Exists(JobId),
    #[error("job '{job}' has active runs; stop them first (stopCurrentJobRuns=true)")]
    ActiveRuns { job: JobId },
    #[error("job '{job}' is a parent of {children}; change those first")]
    HasChildren { job: JobId, children: String },
    #[error("run '{run}' of job '{job}' does not exist or has finished")]
    NoSuchRun { job: JobId, run: String },
    #[error("job '{job}' has no schedule '{schedule}'")]
    NoSuchSchedule { job: JobId, schedule: String },
    #[error("{0}")]
    Conflict(String),
    #[error("the store failed; nothing was changed")]
    Store(#[from] JobStoreError),
    #[error("the scheduler has stopped")]
    Stopped,
}

/// A job as the API shows it: the definition, counters, open runs and next fire times.
#[derive(Clone, Debug)]
pub struct JobView {
    pub job: Job,
    pub stats: JobStats,
    pub active_runs: Vec<Run>,
    /// Per schedule, in the job's order: the next fire time, if any.
    pub next_runs: Vec<Option<DateTime<Utc>>>,
}

/// A change to a job, applied inside the scheduler so that concurrent changes cannot overwrite each other.
pub type Edit = Box<dyn FnOnce(&mut Job) -> Result<(), ChangeError> + Send>;

enum Command {
    Put { job: Box<Job>, create: PutMode, reply: oneshot::Sender<Result<Job, ChangeError>> },
    Modify { id: JobId, edit: Edit, reply: oneshot::Sender<Result<Job, ChangeError>> },
    Delete { id: JobId, stop_runs: bool, reply: oneshot::Sender<Result<Job, ChangeError>> },
    RunNow { id: JobId, reply: oneshot::Sender<Result<Run, ChangeError>> },
    StopRun { id: JobId, run: String, reply: oneshot::Sender<Result<Run, ChangeError>> },
    KillAll { id: JobId, reply: oneshot::Sender<Result<usize, ChangeError>> },
    View { id: Option<JobId>, reply: oneshot::Sender<Vec<JobView>> },
    Tails { job: JobId, run: String, stdout: String, stderr: String },
}

/// A change of a job or a run, as `/keel/v1/jobs/events` streams it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// A job was created or changed.
    JobUpdated {
        #[serde(rename = "jobId")]
        job_id: JobId,
        at: String,
    },
    JobDeleted {
        #[serde(rename = "jobId")]
        job_id: JobId,
        at: String,
    },
    /// A run was recorded in a new state (or its output was).
    RunUpdated {
        #[serde(rename = "jobId")]
        job_id: JobId,
        #[serde(rename = "runId")]
        run_id: String,
        status: &'static str,
        at: String,
    },
    /// The tails of a finished run's output were stored.
    RunOutput {
        #[serde(rename = "jobId")]
        job_id: JobId,
        #[serde(rename = "runId")]
        run_id: String,
        at: String,
    },
}

impl JobEvent {
    /// The event's `type`, as the SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            JobEvent::JobUpdated { .. } => "job_updated",
            JobEvent::JobDeleted { .. } => "job_deleted",
            JobEvent::RunUpdated { .. } => "run_updated",
            JobEvent::RunOutput { .. } => "run_output",
        }
    }
}

/// How many events a `/keel/v1/jobs/events` reader may fall behind before it is told it lagged.
pub const EVENT_BUFFER: usize = 4096;

/// Talks to the scheduler actor; cheap to clone.
#[derive(Clone)]
pub struct ChronosHandle {
    tx: mpsc::Sender<Command>,
    events: tokio::sync::broadcast::Sender<JobEvent>,
}

impl ChronosHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ChangeError>>) -> Command,
    ) -> Result<T, ChangeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| ChangeError::Stopped)?;
        rx.await.map_err(|_| ChangeError::Stopped)?
    }

    /// Creates or replaces a job: validated against the other jobs, stored, then scheduled.
    pub async fn put(&self, job: Job, create: PutMode) -> Result<Job, ChangeError> {
        self.ask(|reply| Command::Put { job: Box::new(job), create, reply }).await
    }

    /// Changes a job in place: `edit` sees the current definition, and the result is validated and saved
    /// as one step.
    pub async fn modify(&self, id: JobId, edit: Edit) -> Result<Job, ChangeError> {
        self.ask(|reply| Command::Modify { id, edit, reply }).await
    }

    pub async fn delete(&self, id: JobId, stop_runs: bool) -> Result<Job, ChangeError> {
        self.ask(|reply| Command::Delete { id, stop_runs, reply }).await
    }

    /// Starts a run of the job now, whatever its schedule.
    pub async fn run_now(&self, id: JobId) -> Result<Run, ChangeError> {
        self.ask(|reply| Command::RunNow { id, reply }).await
    }

    pub async fn stop_run(&self, id: JobId, run: String) -> Result<Run, ChangeError> {
        self.ask(|reply| Command::StopRun { id, run, reply }).await
    }

    /// Kills every active run of the job; says how many.
    pub async fn kill_all(&self, id: JobId) -> Result<usize, ChangeError> {
        self.ask(|reply| Command::KillAll { id, reply }).await
    }

    /// Every job, or the one named. An error only when the actor has stopped: never an empty list then.
    pub async fn view(&self, id: Option<JobId>) -> Result<Vec<JobView>, ChangeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::View { id, reply }).await.map_err(|_| ChangeError::Stopped)?;
        rx.await.map_err(|_| ChangeError::Stopped)
    }

    /// Whether the actor still runs.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Every change of a job or a run from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }
}

/// A job with its compiled schedules and where each stands.
struct Entry {
    job: Job,
    schedules: Vec<Schedule>,
    /// Per schedule: the next tick not yet prepared.
    next: Vec<Option<DateTime<Utc>>>,
}

/// The actor.
struct Chronos {
    store: Arc<dyn CronStore>,
    driver: SchedulerHandle,
    clock: Clock,
    /// The master's HTTP address and credential, for reading the tails of task output (none: not read).
    master: Option<keel_core::client::Target>,
    http: reqwest::Client,
    /// Bounds the reads of output tails in flight, so that a burst of finished runs does not flood the master.
    tail_reads: std::sync::Arc<tokio::sync::Semaphore>,
    me: mpsc::Sender<Command>,
    jobs: BTreeMap<JobId, Entry>,
    stats: HashMap<JobId, JobStats>,
    /// Ticks to prepare: (instant, job, schedule index).
    timers: BTreeSet<(DateTime<Utc>, JobId, usize)>,
    /// Prepared ticks waiting for their instant.
    to_fire: Queue,
    /// Runs that have not finished, with their tasks and what changed since the last write.
    runs: OpenRuns,
    /// Runs waiting for an offer, by when they became due.
    pending: Queue,
    /// Runs waiting out a retry backoff, by when it ends.
    retries: Queue,
    /// Runs with an active deadline, by when it passes.
    deadlines: Queue,
    /// Runs recorded before a restart but maybe never launched, waiting for the master's answer about their
    /// first task: if it does not know it, the run launches (`true`) or counts as missed (`false`).
    recovering: HashMap<(JobId, String), bool>,
    /// Tasks killed on purpose, and why: their run fails with this and is not retried.
    kill_reasons: HashMap<String, String>,
    /// Offers held for an imminent tick.
    held: Vec<Offer>,
    /// First tasks of prepared ticks, built ahead so that firing only sends them.
    prebuilt: HashMap<Key, TaskSpec>,
    /// Acknowledgements to send once the changes they confirm are written.
    acks: Vec<Call>,
    /// Per job, its latest success: (finished at, run id).
    last_success: HashMap<JobId, (i64, String)>,
    /// Per job, when its latest dependency run was created.
    last_dependency_run: HashMap<JobId, i64>,
    suppressed: bool,
    /// When offers were last revived, and whether any came since.
    revived_at: Option<DateTime<Utc>>,
    offered: bool,
    subscribed: bool,
    next_prune: DateTime<Utc>,
    /// The last job pruned in the current round, if one is under way.
    prune_cursor: Option<JobId>,
    /// Dependent jobs whose run could not be recorded; tried again on the next reconciliation pass.
    retry_children: BTreeSet<JobId>,
    /// Runs whose task's agent became unreachable, and since when (milliseconds).
    unreachable: BTreeMap<Key, i64>,
    next_reconcile: DateTime<Utc>,
    /// Reconciliation passes so far, for the periodic pass over running tasks.
    reconcile_passes: u64,
    /// Reconciliation answers still to come on this connection.
    answers: PendingAnswers,
    /// Tasks asked about since subscribing and not heard of since: asked again on each pass, running or
    /// not (a question, or its answer, may have been lost with a connection).
    unconfirmed: BTreeSet<String>,
    /// Set when the store failed to record ticks: they are tried again then.
    store_retry_at: Option<DateTime<Utc>>,
    events: tokio::sync::broadcast::Sender<JobEvent>,
}

/// Starts the cron jobs framework against `master`. It runs until `shutdown`.
pub async fn start(
    master: impl Into<keel_core::client::Target>,
    store: JobStore,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<ChronosHandle, JobStoreError> {
    start_with(master, store, clock, "", shutdown).await
}

/// [`start`], with the URL of the REST API (the framework's web UI URL, which the master's console uses to
/// reach it; empty when it has none).
pub async fn start_with(
    master: impl Into<keel_core::client::Target>,
    store: JobStore,
    clock: Clock,
    webui_url: &str,
    shutdown: CancellationToken,
) -> Result<ChronosHandle, JobStoreError> {
    let master: keel_core::client::Target = master.into();
    let tails = Some(master.clone());
    start_on(Arc::new(master), Arc::new(store), clock, webui_url, tails, shutdown).await
}

/// Starts the cron jobs framework over any link to the master, with any store. `tails` is where the
/// tails of finished tasks' output are read (none: they are not). It runs until `shutdown`.
pub async fn start_on(
    link: Arc<dyn Link>,
    store: Arc<dyn CronStore>,
    clock: Clock,
    webui_url: &str,
    tails: Option<keel_core::client::Target>,
    shutdown: CancellationToken,
) -> Result<ChronosHandle, JobStoreError> {
    let framework_id = store.framework_id().await?.and_then(|id| FrameworkId::parse(id).ok());
    let mut info = FrameworkInfo::new("chronos");
    info.webui_url = webui_url.to_owned();
    info.failover_timeout = Duration::from_secs(7 * 24 * 3600);
    let (stats, last_success, last_dependency_run) =
        (store.stats().await?, store.last_successes().await?, store.last_dependency_runs().await?);
    let (driver, events) = scheduler::start_on(link, info, framework_id, shutdown.clone());
    let (tx, rx) = mpsc::channel(1024);
    let now = clock.now();
    let mut c = Chronos {
        store: store.clone(),
        driver,
        clock,
        http: tails.as_ref().map(keel_core::client::Target::http_client).unwrap_or_default(),
        master: tails,
        tail_reads: std::sync::Arc::new(tokio::sync::Semaphore::new(8)),
        me: tx.clone(),
        jobs: BTreeMap::new(),
        stats,
        timers: BTreeSet::new(),
        to_fire: Queue::default(),
        runs: OpenRuns::default(),
        pending: Queue::default(),
        retries: Queue::default(),
        deadlines: Queue::default(),
        recovering: HashMap::new(),
        kill_reasons: HashMap::new(),
        held: vec![],
        prebuilt: HashMap::new(),
        acks: vec![],
        last_success,
        last_dependency_run,
        suppressed: false,
        revived_at: None,
        offered: false,
        subscribed: false,
        next_prune: now + TimeDelta::from_std(PRUNE_EVERY).unwrap_or_default(),
        prune_cursor: None,
        retry_children: BTreeSet::new(),
        unreachable: BTreeMap::new(),
        next_reconcile: now + TimeDelta::from_std(RECONCILE_EVERY).unwrap_or_default(),
        reconcile_passes: 0,
        answers: PendingAnswers::default(),
        unconfirmed: BTreeSet::new(),
        store_retry_at: None,
        events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
    };
    c.recover(now).await?;
    let job_events = c.events.clone();
    tokio::spawn(c.run(events, rx, shutdown));
    Ok(ChronosHandle { tx, events: job_events })
}

impl Chronos {
    /// Loads jobs and open runs, and settles the ticks that fell while nobody watched.
    async fn recover(&mut self, now: DateTime<Utc>) -> Result<(), JobStoreError> {
        for job in self.store.jobs().await? {
            match job.validate(now) {
                Ok(schedules) => {
                    let n = schedules.len();
                    self.jobs.insert(job.id.clone(), Entry { job, schedules, next: vec![None; n] });
                }
                Err(e) => warn!(job_id = %job.id, error = %e, "stored job no longer validates; not scheduling it"),
            }
        }
        let open = self.store.open_runs().await?;
        for run in open {
            let key = (run.job_id.clone(), run.id.clone());
            if let (Some(reason), Some(task)) = (run.message.strip_prefix(STOPPING), run.task_ids.last()) {
                self.kill_reasons.insert(task.clone(), reason.to_owned());
            }
            let deadline = self.jobs.get(&run.job_id).and_then(|e| e.job.active_deadline_seconds);
            if let (Some(start), Some(d)) = (run.started_at, deadline) {
                self.deadlines.insert(key.clone(), start.saturating_add(d as i64 * 1000));
            }
            // A run may have launched its next attempt just before the restart: `open` knows that task too.
            self.runs.open(run);
        }
        // Runs recorded but not known to have launched, whose moment has passed: the master says whether
        // they launched. Scheduled ones are grouped by schedule, for the downtime rule below.
        let now_ms = millis(now);
        let mut stale: HashMap<(JobId, String), Vec<(i64, String)>> = HashMap::new();
        for r in self.runs.values().filter(|r| r.status == RunStatus::Initial && r.scheduled_at <= now_ms) {
            match &r.trigger {
                Trigger::Schedule(sid) => {
                    stale.entry((r.job_id.clone(), sid.clone())).or_default().push((r.scheduled_at, r.id.clone()))
                }
                _ => {
                    self.recovering.insert((r.job_id.clone(), r.id.clone()), true);
                }
            }
        }
        let last_ticks = self.store.last_ticks().await?;
        let mut created = Vec::new();
        let mut missed_extra: Vec<(JobId, u64)> = Vec::new();
        for (id, entry) in &mut self.jobs {
            for (i, (spec, schedule)) in entry.job.schedules.iter().zip(&entry.schedules).enumerate() {
                let since_change = from_millis(entry.job.updated_at);
                let last = last_ticks.get(&(id.clone(), spec.id.clone())).map(|ms| from_millis(*ms));
                let after = last.map_or(since_change, |l| l.max(since_change));
                if !entry.job.disabled && spec.enabled {
                    let d = due(schedule, after, now, spec.starting_deadline(), MAX_MISSED_RECORDED);
                    for t in &d.missed {
                        let mut r = tick_run(id, &spec.id, *t, millis(now));
                        r.status = RunStatus::Missed;
                        r.finished_at = Some(millis(now));
                        r.message = "missed: Keel was not running at the scheduled time".into();
                        created.push(r);
                    }
                    if d.missed_total > d.missed.len() as u64 {
                        missed_extra.push((id.clone(), d.missed_total - d.missed.len() as u64));
                    }
                    if d.missed_total > 0 {
                        info!(job_id = %id, schedule = %spec.id, missed = d.missed_total, "ticks missed while down are not replayed");
                    }
                    if let Some(t) = d.run {
                        info!(job_id = %id, schedule = %spec.id, scheduled = %t, "running the latest missed tick");
                        created.push(tick_run(id, &spec.id, t, millis(now)));
                    }
                    // Of the ticks recorded before the restart and never launched, only the newest may still
                    // run, and only if no newer tick runs and it is within its starting deadline.
                    if let Some(mut list) = stale.remove(&(id.clone(), spec.id.clone())) {
                        list.sort();
                        let newest = list.last().map(|(t, _)| *t);
                        for (t, run) in list {
                            let in_time = now_ms - t <= spec.starting_deadline_seconds as i64 * 1000;
                            let may_run = d.run.is_none() && Some(t) == newest && in_time;
                            self.recovering.insert((id.clone(), run), may_run);
                        }
                    }
                }
                entry.next[i] = schedule.next_after(after.max(now));
            }
        }
        let inserted = self.store.insert_runs(&created).await?;
        // Missed ticks are stored finished: count them here, as no update will finish them.
        let mut missed: BTreeMap<JobId, u64> = missed_extra.into_iter().collect();
        for (r, new) in created.into_iter().zip(inserted) {
            if !new {
                continue;
            }
            if r.status == RunStatus::Missed {
                *missed.entry(r.job_id.clone()).or_default() += 1;
            } else {
                self.to_fire.insert((r.job_id.clone(), r.id.clone()), r.scheduled_at);
                self.runs.open(r);
            }
        }
        for (id, n) in missed {
            self.store.add_missed(&id, n).await?;
            self.stats.entry(id).or_default().missed_count += n;
        }
        // Prepared ticks whose instant has not come: fire them when it does.
        for ((job, sid), list) in stale {
            // A schedule that was removed or disabled: its stale ticks are missed.
            debug!(job_id = %job, schedule = %sid, ticks = list.len(), "stale ticks of an inactive schedule");
            for (_, run) in list {
                self.recovering.insert((job.clone(), run), false);
            }
        }
        let waiting: Vec<(i64, JobId, String)> = self
            .runs
            .values()
            .filter(|r| r.status == RunStatus::Initial && r.scheduled_at > now_ms)
            .map(|r| (r.scheduled_at, r.job_id.clone(), r.id.clone()))
            .collect();
        for (t, job, run) in waiting {
            self.to_fire.insert((job, run), t);
        }
        self.rebuild_timers();
        // Dependent jobs whose parents all succeeded before the restart, and that have not run for it.
        let children: Vec<JobId> =
            self.jobs.values().filter(|e| !e.job.parents.is_empty()).map(|e| e.job.id.clone()).collect();
        for child in children {
            self.maybe_start_child(&child).await;
        }
        info!(jobs = self.jobs.len(), open_runs = self.runs.len(), "cron jobs framework starting");
        Ok(())
    }

    fn rebuild_timers(&mut self) {
        self.timers.clear();
        let ids: Vec<JobId> = self.jobs.keys().cloned().collect();
        for id in ids {
            self.add_timers(&id);
        }
    }

    /// Sets the timers of one job from its schedules' next ticks.
    fn add_timers(&mut self, id: &JobId) {
        let Some(e) = self.jobs.get(id) else { return };
        if e.job.disabled {
            return;
        }
        for (i, (spec, next)) in e.job.schedules.iter().zip(&e.next).enumerate() {
            if let (true, Some(t)) = (spec.enabled, next) {
                self.timers.insert((*t, id.clone(), i));
            }
        }
    }

    fn remove_timers(&mut self, id: &JobId) {
        if let Some(e) = self.jobs.get(id) {
            for (i, next) in e.next.iter().enumerate() {
                if let Some(t) = next {
                    self.timers.remove(&(*t, id.clone(), i));
                }
            }
        }
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<DriverEvent>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        loop {
            let sleep = self.next_wake().map_or(MAX_SLEEP, |t| self.clock.until(t).min(MAX_SLEEP));
            // Biased, so that a run depends only on what happens, not on a random draw (a simulation
            // replays its runs exactly). Events and commands take turns: after each event, one waiting
            // command is taken.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.flush().await;
                    return;
                }
                e = events.recv() => match e {
                    Some(e) => {
                        self.event(e).await;
                        // Take what else is ready, so a burst of updates is written in one transaction.
                        for _ in 0..512 {
                            match events.try_recv() {
                                Ok(e) => self.event(e).await,
                                Err(_) => break,
                            }
                        }
                        if let Ok(c) = commands.try_recv() {
                            self.command(c).await;
                        }
                    }
                    None => return,
                },
                c = commands.recv() => match c {
                    Some(c) => self.command(c).await,
                    None => return,
                },
                _ = self.clock.sleep(sleep) => {}
            }
            self.wake().await;
            self.flush().await;
        }
    }

    /// The earliest moment something is due.
    fn next_wake(&self) -> Option<DateTime<Utc>> {
        let lookahead = TimeDelta::from_std(LOOKAHEAD).unwrap_or_default();
        [
            self.timers.first().map(|(t, ..)| (*t - lookahead).max(self.store_retry_at.unwrap_or(*t - lookahead))),
            self.to_fire.first().map(|(t, ..)| from_millis(*t)),
            self.retries.first().map(|(t, ..)| from_millis(*t)),
            self.deadlines.first().map(|(t, ..)| from_millis(*t)),
            self.pending_deadline(),
            Some(self.next_prune),
            Some(self.next_reconcile),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the first pending scheduled run passes its starting deadline.
    fn pending_deadline(&self) -> Option<DateTime<Utc>> {
        self.pending
            .iter()
            .filter_map(|(_, job, run)| {
                let r = self.runs.get(&(job.clone(), run.clone())).filter(|r| r.attempts == 0)?;
                let deadline = self.starting_deadline(r)?;
                Some(from_millis(r.scheduled_at) + TimeDelta::from_std(deadline).ok()?)
            })
            .min()
    }

    fn starting_deadline(&self, run: &Run) -> Option<Duration> {
        let Trigger::Schedule(sid) = &run.trigger else { return None };
        let entry = self.jobs.get(&run.job_id)?;
        entry.job.schedules.iter().find(|s| &s.id == sid).map(|s| s.starting_deadline())
    }

    /// Does whatever is due now.
    async fn wake(&mut self) {
        let now = self.clock.now();
        self.prepare(now).await;
        // A run past its starting deadline is missed before the next tick fires, so that it does not count
        // as active against a FORBID.
        self.expire_pending(now);
        self.fire(now).await;
        let now_ms = millis(now);
        while let Some((t, key)) = self.retries.pop_due(now_ms) {
            if self.runs.contains(&key) {
                self.pending.insert(key, t);
            }
        }
        while let Some((_, (job, run))) = self.deadlines.pop_due(now_ms) {
            self.time_out(&job, &run).await;
        }
        if now >= self.next_reconcile {
            self.next_reconcile = now + TimeDelta::from_std(RECONCILE_EVERY).unwrap_or_default();
            self.reconcile_unsure().await;
        }
        if now >= self.next_prune {
            self.prune(now).await;
        }
        self.launch().await;
        self.manage_offers().await;
    }

    /// Prunes the history of the next few jobs, and says when to go on.
    async fn prune(&mut self, now: DateTime<Utc>) {
        let start = self.prune_cursor.take();
        let batch: Vec<JobId> = match &start {
            Some(after) => self.jobs.range::<JobId, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => self.jobs.range::<JobId, _>(..),
        }
        .take(PRUNE_BATCH)
        .map(|(id, _)| id.clone())
        .collect();
        for id in &batch {
            match self.store.prune(id, HISTORY_KEPT).await {
                Ok(n) if n > 0 => debug!(job_id = %id, runs = n, "old runs pruned"),
                Ok(_) => {}
                Err(e) => warn!(job_id = %id, error = %e, "cannot prune run history"),
            }
        }
        let wait = if batch.len() == PRUNE_BATCH {
            self.prune_cursor = batch.last().cloned();
            Duration::from_secs(1)
        } else {
            PRUNE_EVERY
        };
        self.next_prune = now + TimeDelta::from_std(wait).unwrap_or_default();
    }

    /// Asks the master about tasks whose state is not known for sure: those of runs recorded before a
    /// restart, and those launched but not yet reported running (a launch or its answer may be lost). An
    /// unknown task is then handled as lost, or, for a run that never launched, as never started.
    async fn reconcile_unsure(&mut self) {
        if !self.subscribed {
            return;
        }
        let mut tasks: Vec<(TaskId, Option<AgentId>)> = Vec::new();
        // Every FULL_RECONCILE_PASSES passes, running tasks too, so that none stays ACTIVE once the master
        // no longer knows it (Marathon's `reconciliation_interval`).
        self.reconcile_passes = self.reconcile_passes.wrapping_add(1);
        let full = self.reconcile_passes % FULL_RECONCILE_PASSES == 0;
        for (key, run) in self.runs.iter() {
            let task = if self.recovering.contains_key(key) {
                Some(run.task_id(1))
            } else if (run.status == RunStatus::Starting
                || (run.status == RunStatus::Active
                    && (full || run.task_ids.last().is_some_and(|t| self.unconfirmed.contains(t)))))
                && !self.is_pending(run)
            {
                run.task_ids.last().cloned()
            } else {
                None
            };
            if let Some(t) = task.and_then(|t| TaskId::parse(t).ok()) {
                tasks.push((t, None));
            }
        }
        if !tasks.is_empty() {
            debug!(tasks = tasks.len(), "reconciling tasks not known to be running");
            self.reconcile(tasks).await;
        }
        // Kills asked for and not yet answered (one sent while disconnected is lost): send them again.
        let stopping: Vec<String> = self
            .runs
            .values()
            .filter(|r| r.message.starts_with(STOPPING) && r.status.is_active() && !self.is_pending(r))
            .filter_map(|r| r.task_ids.last().cloned())
            .collect();
        for task in stopping.into_iter().filter_map(|t| TaskId::parse(t).ok()) {
            self.call(Call::Kill { task_id: task, agent_id: None }).await;
        }
        // Tasks on agents unreachable for too long are given up as lost, and killed should the agent return.
        let now = millis(self.clock.now());
        let grace = UNREACHABLE_GRACE.as_millis() as i64;
        let lost: Vec<Key> =
            self.unreachable.iter().filter(|(_, since)| now - **since >= grace).map(|(k, _)| k.clone()).collect();
        for key in lost {
            self.unreachable.remove(&key);
            let Some(task) = self.runs.get(&key).and_then(|r| r.task_ids.last().cloned()) else { continue };
            warn!(job_id = %key.0, run_id = %key.1, task_id = %task, "the task's agent has been unreachable too long; the task counts as lost");
            if let Ok(task_id) = TaskId::parse(&task) {
                self.call(Call::Kill { task_id, agent_id: None }).await;
            }
            let msg = format!("its agent was unreachable for {} s", UNREACHABLE_GRACE.as_secs());
            self.task_ended(&key, &task, TaskState::Lost, msg, None).await;
        }
        for child in std::mem::take(&mut self.retry_children) {
            self.maybe_start_child(&child).await;
        }
    }

    /// Records the runs of ticks within [`LOOKAHEAD`], so that they exist before their instant.
    async fn prepare(&mut self, now: DateTime<Utc>) {
        if self.store_retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.store_retry_at = None;
        let horizon = now + TimeDelta::from_std(LOOKAHEAD).unwrap_or_default();
        let mut runs = Vec::new();
        // What this pass took and added, to undo it if the ticks cannot be recorded.
        let mut popped = Vec::new();
        let mut added = Vec::new();
        while let Some((t, job, i)) = self.timers.first().cloned() {
            if t > horizon {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.jobs.get_mut(&job) else { continue };
            let (Some(schedule), Some(spec)) = (entry.schedules.get(i), entry.job.schedules.get(i)) else { continue };
            popped.push((t, job.clone(), i));
            let next = schedule.next_after(t);
            entry.next[i] = next;
            if let Some(n) = next {
                self.timers.insert((n, job.clone(), i));
                added.push((n, job.clone(), i));
            }
            runs.push(tick_run(&job, &spec.id, t, millis(now)));
        }
        if runs.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let result = self.store.insert_runs(&runs).await;
        debug!(ticks = runs.len(), took_ms = started.elapsed().as_millis() as u64, "ticks recorded");
        match result {
            Ok(inserted) => {
                for (r, new) in runs.into_iter().zip(inserted) {
                    let key = (r.job_id.clone(), r.id.clone());
                    if self.runs.contains(&key) {
                        // Two schedules of one job at the same instant.
                        debug!(job_id = %r.job_id, run_id = %r.id, "tick already recorded");
                        continue;
                    }
                    if !new {
                        // Recorded before: by an earlier pass whose commit landed although the store answered
                        // an error, or before a restart. Reload and look, never guess: a run that never
                        // started is this tick's, and fires now; one that did is not fired twice.
                        match self.store.run(&r.job_id, &r.id).await {
                            Ok(Some(stored)) if stored.status == RunStatus::Initial => {
                                info!(job_id = %r.job_id, run_id = %r.id, "tick found recorded by an earlier try; firing it");
                            }
                            Ok(_) => {
                                debug!(job_id = %r.job_id, run_id = %r.id, "tick already recorded");
                                continue;
                            }
                            Err(e) => {
                                // Runs from before a restart are loaded at start, so one this process does
                                // not know was recorded by its own earlier, ambiguous try and never fired.
                                warn!(job_id = %r.job_id, run_id = %r.id, error = %e, "cannot read a recorded tick; firing it as this pass's");
                            }
                        }
                    }
                    self.to_fire.insert(key.clone(), r.scheduled_at);
                    if let Some(Ok(spec)) = self.jobs.get(&key.0).map(|e| task_spec(&e.job, &r, 1)) {
                        self.prebuilt.insert(key.clone(), spec);
                    }
                    self.runs.open(r);
                }
            }
            Err(e) => {
                // Nothing was recorded, so nothing may launch yet: try again shortly. Ticks recorded late
                // still fire, or count as missed past their starting deadline.
                warn!(error = %e, ticks = runs.len(), "cannot record ticks; retrying");
                for timer in &added {
                    self.timers.remove(timer);
                }
                // Popped in time order: the first of each schedule is where it resumes.
                for (t, job, i) in popped.into_iter().rev() {
                    if let Some(next) = self.jobs.get_mut(&job).and_then(|e| e.next.get_mut(i)) {
                        *next = Some(t);
                    }
                    self.timers.insert((t, job, i));
                }
                self.store_retry_at = Some(now + TimeDelta::from_std(STORE_RETRY).unwrap_or_default());
            }
        }
    }

    /// Fires the prepared ticks whose instant has come.
    async fn fire(&mut self, now: DateTime<Utc>) {
        let now_ms = millis(now);
        // Runs that hold or may hold a task, per job, for FORBID and REPLACE: built once, when first needed,
        // so that 10,000 ticks at one instant cost 10,000 look-ups rather than 10,000 scans.
        let mut busy: Option<HashMap<JobId, Vec<String>>> = None;
        while let Some((t, key)) = self.to_fire.pop_due(now_ms) {
            let (job, run_id) = key.clone();
            let Some(run) = self.runs.get(&key) else { continue };
            let Some(entry) = self.jobs.get(&job) else {
                self.finish(&key, RunStatus::Skipped, "skipped: the job was deleted".into(), None);
                continue;
            };
            let policy = match &run.trigger {
                Trigger::Schedule(sid) => match entry.job.schedules.iter().find(|s| &s.id == sid) {
                    Some(s) if s.enabled => s.concurrency_policy,
                    _ => {
                        let msg = "skipped: the schedule was disabled or removed".to_owned();
                        self.finish(&key, RunStatus::Skipped, msg, None);
                        continue;
                    }
                },
                _ => ConcurrencyPolicy::Allow,
            };
            if entry.job.disabled {
                self.finish(&key, RunStatus::Skipped, "skipped: the job is disabled".into(), None);
                continue;
            }
            // Fired late (a stall, a restart, a late answer from the master): past its deadline it is missed.
            if self.starting_deadline(run).is_some_and(|d| now_ms >= t.saturating_add(d.as_millis() as i64)) {
                warn!(job_id = %job, run_id = %run_id, late_ms = now_ms - t, "tick fired past its starting deadline; missed");
                let msg = "missed: could not start within startingDeadlineSeconds".to_owned();
                self.finish(&key, RunStatus::Missed, msg, None);
                continue;
            }
            if policy != ConcurrencyPolicy::Allow {
                let busy = busy.get_or_insert_with(|| self.busy_runs());
                let others: Vec<Key> = busy
                    .get(&job)
                    .into_iter()
                    .flatten()
                    .filter(|r| **r != run_id)
                    .map(|r| (job.clone(), r.clone()))
                    .filter(|k| self.runs.contains(k))
                    .collect();
                if let Some(first) = others.first() {
                    if policy == ConcurrencyPolicy::Forbid {
                        let msg = format!("skipped: run {} is still active (concurrencyPolicy FORBID)", first.1);
                        info!(job_id = %job, run_id = %run_id, "{msg}");
                        self.finish(&key, RunStatus::Skipped, msg, None);
                        continue;
                    }
                    for other in &others {
                        let reason = format!("replaced by run {run_id} (concurrencyPolicy REPLACE)");
                        info!(job_id = %job, run_id = %other.1, "{reason}");
                        self.stop(other, reason).await;
                    }
                }
            }
            debug!(job_id = %job, run_id = %run_id, lag_ms = now_ms - t, "tick fired");
            if let Some(busy) = &mut busy {
                busy.entry(job.clone()).or_default().push(run_id.clone());
            }
            self.pending.insert(key, t);
        }
    }

    /// Per job, its runs that hold a task, wait for one, or may hold one (recorded before a restart and
    /// not yet answered for by the master).
    fn busy_runs(&self) -> HashMap<JobId, Vec<String>> {
        let mut busy: HashMap<JobId, Vec<String>> = HashMap::new();
        for (key, r) in self.runs.iter() {
            if r.status.is_active() || self.pending.contains(key) || self.recovering.contains_key(key) {
                busy.entry(r.job_id.clone()).or_default().push(r.id.clone());
            }
        }
        busy
    }

    /// Whether the run waits for an offer or a retry: it holds no live task.
    fn is_pending(&self, r: &Run) -> bool {
        let key = (r.job_id.clone(), r.id.clone());
        self.pending.contains(&key) || self.retries.contains(&key)
    }

    /// Marks scheduled runs that could not start within their starting deadline as missed.
    fn expire_pending(&mut self, now: DateTime<Utc>) {
        let expired: Vec<(i64, JobId, String)> = self
            .pending
            .iter()
            .filter(|(_, job, run)| {
                let Some(r) = self.runs.get(&(job.clone(), run.clone())) else { return true };
                r.attempts == 0
                    && self.starting_deadline(r).is_some_and(|d| {
                        now >= from_millis(r.scheduled_at) + TimeDelta::from_std(d).unwrap_or_default()
                    })
            })
            .cloned()
            .collect();
        for (_, job, run) in expired {
            let key = (job, run);
            self.pending.remove(&key);
            if self.runs.contains(&key) {
                warn!(job_id = %key.0, run_id = %key.1, "no offer fitted within the starting deadline; tick missed");
                self.finish(
                    &key,
                    RunStatus::Missed,
                    "missed: could not start within startingDeadlineSeconds".into(),
                    None,
                );
            }
        }
    }

    /// Launches pending runs on the offers held: places them all first (cheap), then builds and sends
    /// each offer's tasks in turn, so that the first launch does not wait for the last task to be built.
    async fn launch(&mut self) {
        if self.pending.is_empty() || self.held.is_empty() {
            return;
        }
        let mut unbuildable = Vec::new();
        let mut wanted: Vec<(Key, u32)> = Vec::new();
        let mut needs = Vec::new();
        for (_, job, run_id) in self.pending.iter() {
            let key = (job.clone(), run_id.clone());
            let (Some(entry), Some(run)) = (self.jobs.get(job), self.runs.get(&key)) else {
                unbuildable.push((key, "the job was deleted".to_owned()));
                continue;
            };
            let resources = match self.prebuilt.get(&key).filter(|_| run.attempts == 0) {
                Some(spec) => spec.resources.clone(),
                None => match resources(&entry.job) {
                    Ok(r) => r,
                    Err(e) => {
                        unbuildable.push((key, format!("cannot build the task: {e}")));
                        continue;
                    }
                },
            };
            needs.push(pool::Need { resources, docker: entry.job.run.docker.is_some() });
            wanted.push((key, run.attempts + 1));
        }
        let held: Vec<pool::Held> =
            self.held.iter().map(|o| pool::Held { resources: o.resources.clone(), docker: o.docker }).collect();
        let mut placed: Vec<Vec<(Key, u32)>> = pool::place(&held, &needs)
            .into_iter()
            .map(|on| on.into_iter().map(|k| wanted[k].clone()).collect())
            .collect();
        let any = placed.iter().any(|on| !on.is_empty());
        for (key, reason) in unbuildable {
            self.pending.remove(&key);
            self.finish(&key, RunStatus::Failed, reason, None);
        }
        if !any {
            return;
        }
        // Retries must be written before they launch: their task id depends on the attempt count. If the
        // write fails, they stay pending for a later pass.
        let retries: Vec<(Run, bool)> = placed
            .iter()
            .flatten()
            .filter(|(_, attempt)| *attempt > 1)
            .filter_map(|(key, attempt)| {
                let mut run = self.runs.get(key)?.clone();
                run.task_ids.push(run.task_id(*attempt));
                run.attempts = *attempt;
                Some((run, false))
            })
            .collect();
        if !retries.is_empty()
            && let Err(e) = self.store.update_runs(&retries).await
        {
            warn!(error = %e, "cannot record retries; they launch on a later pass");
            for p in &mut placed {
                p.retain(|(_, attempt)| *attempt == 1);
            }
        }
        let offers = std::mem::take(&mut self.held);
        let mut launched = 0;
        // Every offer's tasks go out first; the runs are booked after, so that the last offer does not
        // wait for the bookkeeping of all the others.
        let mut sent_batches = Vec::new();
        for (offer, runs) in offers.into_iter().zip(placed) {
            if runs.is_empty() {
                self.held.push(offer);
                continue;
            }
            let mut tasks = Vec::with_capacity(runs.len());
            let mut started = Vec::with_capacity(runs.len());
            for (key, attempt) in runs {
                let spec = match self.prebuilt.remove(&key).filter(|_| attempt == 1) {
                    Some(spec) => Ok(spec),
                    None => match (self.jobs.get(&key.0), self.runs.get(&key)) {
                        (Some(e), Some(run)) => task_spec(&e.job, run, attempt),
                        _ => Err("the job was deleted".to_owned()),
                    },
                };
                match spec {
                    Ok(spec) => {
                        started.push((key, spec.id.to_string(), attempt));
                        tasks.push(spec);
                    }
                    Err(e) => {
                        self.pending.remove(&key);
                        self.finish(&key, RunStatus::Failed, format!("cannot build the task: {e}"), None);
                    }
                }
            }
            if tasks.is_empty() {
                continue;
            }
            debug!(agent = %offer.hostname, tasks = tasks.len(), "launching");
            launched += tasks.len();
            self.call(Call::Accept {
                offer_ids: vec![offer.id],
                tasks,
                filters: Filters { refuse: Some(Duration::ZERO) },
            })
            .await;
            // A run's start is when its first task was handed to the master.
            sent_batches.push((started, millis(self.clock.now())));
        }
        for (started, sent) in sent_batches {
            for (key, task, attempt) in started {
                self.started(key, task, attempt, sent);
            }
        }
        info!(tasks = launched, "launched");
    }

    /// Books a task just launched for its run.
    fn started(&mut self, key: Key, task: String, attempt: u32, sent: i64) {
        self.pending.remove(&key);
        self.answers.launched(&task);
        // A launch not heard of within LAUNCH_GRACE is asked about then, not only at the next pass: the
        // launch, or its updates, may have been lost.
        let soon = from_millis(sent) + TimeDelta::from_std(LAUNCH_GRACE).unwrap_or_default();
        self.next_reconcile = self.next_reconcile.min(soon);
        if self.runs.started(&key, task, attempt, sent) == Some(true)
            && let Some(d) = self.jobs.get(&key.0).and_then(|e| e.job.active_deadline_seconds)
        {
            self.deadlines.insert(key.clone(), sent.saturating_add(d as i64 * 1000));
        }
    }

    /// Whether offers are wanted now: something is pending or about to fire.
    fn wants_offers(&self) -> bool {
        !self.pending.is_empty() || !self.to_fire.is_empty()
    }

    async fn revive(&mut self) {
        self.suppressed = false;
        self.offered = false;
        self.revived_at = Some(self.clock.now());
        self.call(Call::Revive).await;
    }

    /// Revives when offers are needed; otherwise returns held offers and suppresses, so an idle scheduler
    /// costs the master nothing.
    async fn manage_offers(&mut self) {
        if !self.subscribed {
            return;
        }
        if self.wants_offers() {
            // Revived again when no offer came for a while after a REVIVE: it, or the offers it brought,
            // may have been lost with a connection.
            let now = self.clock.now();
            let unanswered = !self.offered
                && self.revived_at.is_some_and(|at| now >= at + TimeDelta::from_std(REVIVE_AGAIN).unwrap_or_default());
            if self.suppressed || unanswered {
                self.revive().await;
            }
            // Offers still held here fit no pending run; keep them only for a tick about to fire.
            let horizon = millis(self.clock.now()) + LOOKAHEAD.as_millis() as i64;
            if !self.held.is_empty() && self.to_fire.first().is_none_or(|(t, ..)| *t > horizon) {
                let ids = self.held.drain(..).map(|o| o.id).collect();
                self.call(Call::Decline { offer_ids: ids, filters: Filters { refuse: Some(UNFIT_REFUSE) } }).await;
            }
        } else {
            if !self.held.is_empty() {
                let ids = self.held.drain(..).map(|o| o.id).collect();
                self.call(Call::Decline { offer_ids: ids, filters: Filters { refuse: Some(IDLE_REFUSE) } }).await;
            }
            if !self.suppressed {
                self.suppressed = true;
                self.call(Call::Suppress).await;
            }
        }
    }

    /// Asks the master about these tasks, counting the answers to come.
    async fn reconcile(&mut self, tasks: Vec<(TaskId, Option<AgentId>)>) {
        for (t, _) in &tasks {
            self.answers.asked(t.as_str());
        }
        self.call(Call::Reconcile { tasks }).await;
    }

    async fn call(&self, call: Call) {
        if let Err(e) = self.driver.call(call).await {
            // Launches, kills and reconciliations are sent again by later passes; see `reconcile_unsure`.
            debug!(error = %e, "call not sent");
        }
    }

    async fn event(&mut self, e: DriverEvent) {
        match e {
            DriverEvent::Event(Event::Subscribed { framework_id, .. }) => {
                info!(framework_id = %framework_id, "subscribed");
                if let Err(e) = self.store.set_framework_id(framework_id.as_str()).await {
                    warn!(error = %e, "cannot store the framework id");
                }
                self.subscribed = true;
                self.held.clear();
                // Learn the real state of every task an open run may have started.
                let known: Vec<(TaskId, Option<AgentId>)> =
                    self.runs.tasks().filter_map(|t| TaskId::parse(t).ok()).map(|t| (t, None)).collect();
                self.answers = PendingAnswers::default();
                self.unconfirmed = known.iter().map(|(t, _)| t.to_string()).collect();
                if !known.is_empty() {
                    self.reconcile(known).await;
                }
                self.call(Call::Reconcile { tasks: vec![] }).await;
                self.revive().await;
            }
            DriverEvent::Event(Event::Offers(offers)) => {
                self.offered = true;
                self.held.extend(offers);
                self.launch().await;
            }
            DriverEvent::Event(Event::Rescind(id)) => self.held.retain(|o| o.id != id),
            DriverEvent::Event(Event::Update(status)) => self.update(status).await,
            DriverEvent::Event(Event::Error(message)) => warn!(%message, "master reported an error"),
            DriverEvent::Disconnected(_) => {
                self.subscribed = false;
                self.held.clear();
            }
            DriverEvent::Stopped(reason) => warn!(%reason, "scheduler driver stopped"),
            _ => {}
        }
    }

    async fn update(&mut self, status: TaskStatus) {
        if let (Some(uuid), Some(agent_id)) = (&status.uuid, &status.agent_id) {
            // Sent after the change this update causes is written (see `flush`).
            self.acks.push(Call::Acknowledge {
                agent_id: agent_id.clone(),
                task_id: status.task_id.clone(),
                uuid: uuid.clone(),
            });
        }
        self.unconfirmed.remove(status.task_id.as_str());
        let is_answer = status.reason.as_deref() == Some(keel_core::task::reason::RECONCILIATION);
        if is_answer && self.answers.answered(status.task_id.as_str()) && status.state == TaskState::Unknown {
            debug!(task_id = %status.task_id, "ignoring an answer to a reconciliation asked before the launch");
            return;
        }
        let tid = status.task_id.to_string();
        let Some(key) = self.runs.run_of(&tid).cloned() else {
            if !status.state.is_terminal() && status.state != TaskState::Unknown {
                warn!(task_id = %tid, "unknown task reported; killing it");
                self.call(Call::Kill { task_id: status.task_id.clone(), agent_id: status.agent_id.clone() }).await;
            }
            return;
        };
        let Some(run) = self.runs.get(&key) else {
            // The run has finished; a late or repeated update changes nothing.
            self.runs.forget_task(&tid);
            return;
        };
        let attempt = tid.rsplit('.').next().and_then(|a| a.parse::<u32>().ok()).unwrap_or(0);
        if attempt == 1 && status.state != TaskState::Unknown {
            // The master knows the first task of a run recorded before the restart: it did launch.
            self.recovering.remove(&key);
        }
        if status.state == TaskState::Unknown {
            // Only the current attempt matters; an attempt that was never launched is unknown, as expected.
            if attempt == 1
                && let Some(may_run) = self.recovering.remove(&key)
            {
                if may_run {
                    // Fired like any tick, so that its concurrency policy applies.
                    info!(job_id = %key.0, run_id = %key.1, "a run recorded before the restart never launched; firing it");
                    self.to_fire.insert(key.clone(), run.scheduled_at);
                } else {
                    self.finish(
                        &key,
                        RunStatus::Missed,
                        "missed: Keel was not running at the scheduled time".into(),
                        None,
                    );
                }
            } else if attempt == run.attempts && run.status.is_active() && !self.is_pending(run) {
                self.task_ended(&key, &tid, TaskState::Lost, "the master does not know the task".into(), None).await;
            }
            return;
        }
        if attempt > run.attempts {
            // An attempt launched just before a restart: adopt it.
            self.runs.adopt(&key, &tid, attempt);
            self.to_fire.remove(&key);
            self.pending.remove(&key);
            self.retries.remove(&key);
        }
        if self.runs.get(&key).is_some_and(|r| self.is_pending(r)) {
            // The current attempt already ended and the run waits for its next: this is a repeat.
            return;
        }
        let Some(run) = self.runs.get_mut(&key) else { return };
        if attempt != run.attempts {
            return;
        }
        if status.state == TaskState::Unreachable {
            let now = millis(self.clock.now());
            self.unreachable.entry(key.clone()).or_insert(now);
        } else {
            self.unreachable.remove(&key);
        }
        match status.state {
            TaskState::Running => self.runs.running(&key),
            s if s.is_terminal() => {
                self.task_ended(&key, &tid, s, status.message, status.exit_code).await;
            }
            _ => {}
        }
    }

    /// A task of `key` ended in `state`: the run succeeds, retries, or fails.
    async fn task_ended(
        &mut self,
        key: &(JobId, String),
        task: &str,
        state: TaskState,
        message: String,
        exit_code: Option<i32>,
    ) {
        self.fetch_tails(key, task);
        if state == TaskState::Finished {
            self.finish(key, RunStatus::Success, String::new(), exit_code.or(Some(0)));
            self.maybe_start_dependents(&key.0).await;
            return;
        }
        let Some(run) = self.runs.get(key) else { return };
        let reason = self.kill_reasons.remove(task);
        let what = if message.is_empty() { state.name().to_owned() } else { format!("{}: {message}", state.name()) };
        match runs::after_failure(self.jobs.get(&key.0).map(|e| &e.job), run, reason.is_some()) {
            AfterFailure::Retry(delay) => {
                let at = millis(self.clock.now()) + delay.as_millis() as i64;
                info!(job_id = %key.0, run_id = %key.1, task_id = %task, attempt = run.attempts, delay_ms = delay.as_millis() as u64, "attempt failed ({what}); retrying");
                self.runs.retrying(key, &what, exit_code);
                self.retries.insert(key.clone(), at);
            }
            AfterFailure::Fail => {
                let message = reason.unwrap_or(what);
                self.finish(key, RunStatus::Failed, message, exit_code);
            }
        }
    }

    /// Ends a run: it leaves memory, and its outcome is written on the next flush.
    fn finish(&mut self, key: &(JobId, String), status: RunStatus, message: String, exit_code: Option<i32>) {
        let now = millis(self.clock.now());
        let run = match self.runs.finish(key, status, message, exit_code, now) {
            None => return,
            Some(Err(e)) => {
                warn!(job_id = %key.0, run_id = %key.1, error = %e, "run transition refused");
                return;
            }
            Some(Ok(run)) => run.clone(),
        };
        match status {
            RunStatus::Success => {
                info!(job_id = %key.0, run_id = %key.1, attempts = run.attempts, "run succeeded");
                self.last_success.insert(key.0.clone(), (now, run.id.clone()));
            }
            RunStatus::Failed => warn!(job_id = %key.0, run_id = %key.1, reason = %run.message, "run failed"),
            _ => {}
        }
        self.pending.remove(key);
        self.to_fire.remove(key);
        self.retries.remove(key);
        self.deadlines.remove(key);
        self.recovering.remove(key);
        self.unreachable.remove(key);
        self.prebuilt.remove(key);
        // Kept until written; `flush` drops it from memory.
        self.count(&run);
    }

    fn count(&mut self, run: &Run) {
        let s = self.stats.entry(run.job_id.clone()).or_default();
        let at = run.finished_at;
        match run.status {
            RunStatus::Success => {
                s.success_count += 1;
                s.last_success = at;
            }
            RunStatus::Failed => {
                s.error_count += 1;
                s.last_error = at;
            }
            RunStatus::Missed => s.missed_count += 1,
            _ => {}
        }
    }
}

/// How [`ChronosHandle::put`] treats an existing job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// The job must not exist (Metronome's POST).
    Create,
    /// The job must exist (Metronome's PUT).
    Replace,
    /// Either (Chronos's POST).
    Upsert,
}

impl Chronos {
    /// Writes changed runs in one transaction, then sends the acknowledgements they allow.
    async fn flush(&mut self) {
        let batch = self.runs.to_write();
        if batch.is_empty() {
            for ack in std::mem::take(&mut self.acks) {
                self.call(ack).await;
            }
            return;
        }
        match self.store.update_runs(&batch).await {
            Ok(()) => {
                self.runs.written();
                let at = self.now_text();
                for (run, _) in &batch {
                    let _ = self.events.send(JobEvent::RunUpdated {
                        job_id: run.job_id.clone(),
                        run_id: run.id.clone(),
                        status: run.status.name(),
                        at: at.clone(),
                    });
                }
                for ack in std::mem::take(&mut self.acks) {
                    self.call(ack).await;
                }
            }
            Err(e) => {
                // Unacknowledged updates are sent again by their agents; the write is retried then.
                warn!(error = %e, runs = batch.len(), "cannot write run changes; retrying");
                self.acks.clear();
            }
        }
    }

    /// Kills the run's task, or ends the run if it has none running.
    async fn stop(&mut self, key: &(JobId, String), reason: String) {
        let Some(run) = self.runs.get(key) else { return };
        let waiting = self.is_pending(run) || run.status == RunStatus::Initial;
        match run.task_ids.last().filter(|_| run.status.is_active() && !waiting).cloned() {
            Some(task) => {
                // Written with the run, so that a restart still knows the kill was meant.
                if let Some(run) = self.runs.get_mut(key) {
                    run.message = format!("{STOPPING}{reason}");
                    self.runs.touch(key);
                }
                self.kill_reasons.insert(task.clone(), reason);
                if let Ok(task_id) = TaskId::parse(&task) {
                    self.call(Call::Kill { task_id, agent_id: None }).await;
                }
            }
            None => self.finish(key, RunStatus::Failed, reason, None),
        }
    }

    async fn time_out(&mut self, job: &JobId, run: &str) {
        let key = (job.clone(), run.to_owned());
        let Some(deadline) = self.jobs.get(job).and_then(|e| e.job.active_deadline_seconds) else { return };
        if self.runs.contains(&key) {
            warn!(job_id = %job, run_id = %run, deadline_seconds = deadline, "run timed out; killing it");
            self.stop(&key, format!("timed out: still running after activeDeadlineSeconds ({deadline} s)")).await;
        }
    }

    /// Reads the tail of the task's stdout and stderr from the master, in the background.
    fn fetch_tails(&self, key: &(JobId, String), task: &str) {
        let Some(master) = self.master.clone() else { return };
        let (http, me) = (self.http.clone(), self.me.clone());
        let (job, run, task) = (key.0.clone(), key.1.clone(), task.to_owned());
        let permits = self.tail_reads.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire().await else { return };
            let read = |file: &'static str| {
                let url = format!("{}/master/tasks/{task}/files/{file}?length={TAIL_BYTES}", master.current_url());
                let mut req = http.get(url);
                if let Some(t) = &master.token {
                    req = req.bearer_auth(t);
                }
                async move {
                    let resp = req.send().await.ok()?.error_for_status().ok()?;
                    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
                    body["data"].as_str().map(str::to_owned)
                }
            };
            let (stdout, stderr) = tokio::join!(read("stdout"), read("stderr"));
            let (stdout, stderr) = (stdout.unwrap_or_default(), stderr.unwrap_or_default());
            if !stdout.is_empty() || !stderr.is_empty() {
                let _ = me.send(Command::Tails { job, run, stdout, stderr }).await;
            }
        });
    }

    /// A run of `parent` succeeded: start each dependent job whose parents have now all succeeded.
    async fn maybe_start_dependents(&mut self, parent: &JobId) {
        let children: Vec<JobId> =
            self.jobs.values().filter(|e| e.job.parents.contains(parent)).map(|e| e.job.id.clone()).collect();
        for child in children {
            self.maybe_start_child(&child).await;
        }
    }

    /// Starts a run of `child` if every parent succeeded since its last dependency run (or since it was
    /// last changed). The run's key is that of the parent run that completed the set, so the same set of
    /// successes can never start it twice, not even across a restart.
    async fn maybe_start_child(&mut self, child: &JobId) {
        let Some(entry) = self.jobs.get(child) else { return };
        if entry.job.parents.is_empty() || entry.job.disabled {
            return;
        }
        let baseline = self.last_dependency_run.get(child).copied().unwrap_or(i64::MIN).max(entry.job.updated_at);
        let Some((parent, parent_run)) = dependencies::completed_by(&entry.job.parents, &self.last_success, baseline)
        else {
            return;
        };
        // Keyed by the parent run that completed the set: the same successes can never start it twice.
        let trigger_key = dependencies::trigger_key(parent, parent_run);
        let parent = parent.clone();
        let now = millis(self.clock.now());
        let run = Run::new(child.clone(), Trigger::Parents, trigger_key, now, now);
        match self.store.insert_runs(std::slice::from_ref(&run)).await {
            Ok(v) if v.first() == Some(&true) => {
                info!(job_id = %child, run_id = %run.id, after = %parent, "all parents succeeded; starting the dependent job");
                self.last_dependency_run.insert(child.clone(), now);
                self.start_pending(run, now);
            }
            Ok(_) => {
                // Recorded before, perhaps by an earlier try whose commit landed although the store answered
                // an error: reload and look. A run this process does not hold and that never started is
                // this one, and starts now.
                match self.store.run_by_trigger(child, &run.trigger_key).await {
                    Ok(Some(stored)) if stored.status == RunStatus::Initial && !self.holds(&stored) => {
                        info!(job_id = %child, run_id = %stored.id, "dependent run found recorded by an earlier try; starting it");
                        self.last_dependency_run.insert(child.clone(), now);
                        self.start_pending(stored, now);
                    }
                    Ok(_) => {
                        debug!(job_id = %child, "dependent run already recorded");
                        self.last_dependency_run.insert(child.clone(), now);
                    }
                    // Not marked as handled: the retry looks again.
                    Err(e) => {
                        warn!(job_id = %child, error = %e, "cannot read the recorded dependent run; trying again shortly");
                        self.retry_children.insert(child.clone());
                    }
                }
            }
            Err(e) => {
                warn!(job_id = %child, error = %e, "cannot record the dependent run; trying again shortly");
                self.retry_children.insert(child.clone());
            }
        }
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Put { job, create, reply } => {
                let result = self.put(*job, create).await;
                self.job_changed(&result, false);
                let _ = reply.send(result);
            }
            Command::Modify { id, edit, reply } => {
                let result = match self.jobs.get(&id) {
                    None => Err(ChangeError::NotFound(id)),
                    Some(e) => {
                        let mut job = e.job.clone();
                        match edit(&mut job) {
                            Ok(()) => {
                                job.id = id;
                                self.put(job, PutMode::Replace).await
                            }
                            Err(err) => Err(err),
                        }
                    }
                };
                self.job_changed(&result, false);
                let _ = reply.send(result);
            }
            Command::Delete { id, stop_runs, reply } => {
                let result = self.delete(&id, stop_runs).await;
                self.job_changed(&result, true);
                let _ = reply.send(result);
            }
            Command::RunNow { id, reply } => {
                let _ = reply.send(self.run_now(&id).await);
            }
            Command::StopRun { id, run, reply } => {
                let key = (id.clone(), run.clone());
                let Some(r) = self.runs.get(&key).cloned() else {
                    let _ = reply.send(Err(ChangeError::NoSuchRun { job: id, run }));
                    return;
                };
                self.stop(&key, "stopped by request".into()).await;
                let _ = reply.send(Ok(r));
            }
            Command::KillAll { id, reply } => {
                if !self.jobs.contains_key(&id) {
                    let _ = reply.send(Err(ChangeError::NotFound(id)));
                    return;
                }
                let keys: Vec<(JobId, String)> = self.runs.of_job(&id).map(|(k, _)| k.clone()).collect();
                for k in &keys {
                    self.stop(k, "killed by request".into()).await;
                }
                let _ = reply.send(Ok(keys.len()));
            }
            Command::View { id, reply } => {
                let views = self
                    .jobs
                    .values()
                    .filter(|e| id.as_ref().is_none_or(|i| &e.job.id == i))
                    .map(|e| {
                        let mut active_runs: Vec<Run> =
                            self.runs.values().filter(|r| r.job_id == e.job.id).cloned().collect();
                        active_runs.sort_by_key(|r| r.created_at);
                        let enabled = |i: usize| !e.job.disabled && e.job.schedules[i].enabled;
                        JobView {
                            job: e.job.clone(),
                            stats: self.stats.get(&e.job.id).cloned().unwrap_or_default(),
                            active_runs,
                            next_runs: e.next.iter().enumerate().map(|(i, n)| n.filter(|_| enabled(i))).collect(),
                        }
                    })
                    .collect();
                let _ = reply.send(views);
            }
            Command::Tails { job, run, stdout, stderr } => {
                let key = (job, run);
                if let Some(r) = self.runs.held_mut(&key) {
                    r.stdout_tail = stdout;
                    r.stderr_tail = stderr;
                    self.runs.touch(&key);
                } else {
                    match self.store.set_tails(&key.0, &key.1, &stdout, &stderr).await {
                        Ok(_) => {
                            let (job_id, run_id, at) = (key.0, key.1, self.now_text());
                            let _ = self.events.send(JobEvent::RunOutput { job_id, run_id, at });
                        }
                        Err(e) => {
                            warn!(job_id = %key.0, run_id = %key.1, error = %e, "cannot store the output of a run")
                        }
                    }
                }
            }
        }
    }

    fn now_text(&self) -> String {
        self.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// Tells `/keel/v1/jobs/events` readers of a job that was saved or deleted.
    fn job_changed(&self, result: &Result<Job, ChangeError>, deleted: bool) {
        let Ok(job) = result else { return };
        let (job_id, at) = (job.id.clone(), self.now_text());
        let event = if deleted { JobEvent::JobDeleted { job_id, at } } else { JobEvent::JobUpdated { job_id, at } };
        let _ = self.events.send(event);
    }

    async fn put(&mut self, mut job: Job, mode: PutMode) -> Result<Job, ChangeError> {
        let now = self.clock.now();
        let exists = self.jobs.contains_key(&job.id);
        match (mode, exists) {
            (PutMode::Create, true) => return Err(ChangeError::Exists(job.id)),
            (PutMode::Replace, false) => return Err(ChangeError::NotFound(job.id)),
            _ => {}
        }
        for s in &mut job.schedules {
            if let (ScheduleExpr::Iso8601(e), Ok(tz)) = (&mut s.expr, crate::schedule::parse_time_zone(&s.time_zone)) {
                *e = pin_start(e, now, tz);
            }
        }
        let schedules = job.validate(now)?;
        // Only edges out of this job can close a cycle or name a missing parent.
        if !job.parents.is_empty() {
            let others = self.jobs.values().map(|e| &e.job).filter(|j| j.id != job.id);
            check_dependencies(others.chain(std::iter::once(&job)))?;
        }
        job.updated_at = millis(now);
        self.store.put_job(&job).await?;
        info!(job_id = %job.id, schedules = job.schedules.len(), parents = job.parents.len(), created = !exists, "job saved");
        let next = schedules.iter().map(|s| s.next_after(now)).collect();
        self.prebuilt.retain(|(j, _), _| j != &job.id);
        self.remove_timers(&job.id);
        self.jobs.insert(job.id.clone(), Entry { job: job.clone(), schedules, next });
        self.add_timers(&job.id);
        Ok(job)
    }

    async fn delete(&mut self, id: &JobId, stop_runs: bool) -> Result<Job, ChangeError> {
        let Some(entry) = self.jobs.get(id) else { return Err(ChangeError::NotFound(id.clone())) };
        let children: Vec<String> =
            self.jobs.values().filter(|e| e.job.parents.contains(id)).map(|e| e.job.id.to_string()).collect();
        if !children.is_empty() {
            return Err(ChangeError::HasChildren { job: id.clone(), children: children.join(", ") });
        }
        let job = entry.job.clone();
        let open: Vec<(JobId, String)> = self.runs.of_job(id).map(|(k, _)| k.clone()).collect();
        let active = open.iter().any(|k| self.runs.get(k).is_some_and(|r| r.status != RunStatus::Initial));
        if active && !stop_runs {
            return Err(ChangeError::ActiveRuns { job: id.clone() });
        }
        self.store.delete_job(id).await?;
        for k in &open {
            if let Some(task) = self.runs.get(k).and_then(|r| r.task_ids.last().cloned())
                && let Ok(task_id) = TaskId::parse(&task)
            {
                self.call(Call::Kill { task_id, agent_id: None }).await;
            }
            self.runs.drop_open(k);
        }
        self.pending.remove_job(id);
        self.to_fire.remove_job(id);
        self.retries.remove_job(id);
        self.deadlines.remove_job(id);
        self.recovering.retain(|(j, _), _| j != id);
        self.prebuilt.retain(|(j, _), _| j != id);
        self.remove_timers(id);
        self.jobs.remove(id);
        self.stats.remove(id);
        self.last_success.remove(id);
        self.last_dependency_run.remove(id);
        info!(job_id = %id, runs_stopped = open.len(), "job deleted");
        Ok(job)
    }

    async fn run_now(&mut self, id: &JobId) -> Result<Run, ChangeError> {
        if !self.jobs.contains_key(id) {
            return Err(ChangeError::NotFound(id.clone()));
        }
        let now = millis(self.clock.now());
        let key = format!("manual:{}", uuid::Uuid::new_v4());
        let run = Run::new(id.clone(), Trigger::Manual, key, now, now);
        let run = match self.store.insert_runs(std::slice::from_ref(&run)).await {
            Ok(_) => run,
            // The commit may have landed all the same: reload and look. Found, the run is this request's and
            // starts; not found, nothing was written and the caller may try again.
            Err(e) => match self.store.run_by_trigger(id, &run.trigger_key).await {
                Ok(Some(stored)) => stored,
                Ok(None) => return Err(e.into()),
                Err(_) => {
                    // Neither answer is known. If it landed, the next start of the framework adopts it as an
                    // open run.
                    warn!(job_id = %id, run_id = %run.id, error = %e, "cannot tell whether a requested run was recorded");
                    return Err(e.into());
                }
            },
        };
        info!(job_id = %id, run_id = %run.id, "run started by request");
        self.start_pending(run.clone(), now);
        Ok(run)
    }

    /// Whether this process holds `run` already (open or just finished).
    fn holds(&self, run: &Run) -> bool {
        let key = (run.job_id.clone(), run.id.clone());
        self.runs.holds(&key)
    }

    /// Takes a recorded run that waits for an offer.
    fn start_pending(&mut self, run: Run, now: i64) {
        let key = (run.job_id.clone(), run.id.clone());
        self.pending.insert(key, now);
        self.runs.open(run);
    }
}

/// An interval with no start (`R1//PT24H`) starts at the next whole second; the start is written into the
/// expression, as Chronos does, so that a restart does not start it again.
fn pin_start(expr: &str, now: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    let mut parts = expr.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(r), Some(""), Some(period)) => {
            let start = DateTime::from_timestamp(now.timestamp() + 1, 0).unwrap_or(now);
            // Written as wall-clock time in the schedule's zone, which is how a named zone reads it.
            format!("{r}/{}/{period}", start.with_timezone(&tz).format("%Y-%m-%dT%H:%M:%S%:z"))
        }
        _ => expr.to_owned(),
    }
}

/// The run of a scheduled tick at `t`.
fn tick_run(job: &JobId, schedule: &str, t: DateTime<Utc>, now: i64) -> Run {
    Run::new(job.clone(), Trigger::Schedule(schedule.to_owned()), millis(t).to_string(), millis(t), now)
}

/// What one task of `job` needs.
fn resources(job: &Job) -> Result<Resources, String> {
    let scalar = |v: f64| Scalar::from_f64(v).map_err(|e| e.to_string());
    Ok(Resources {
        cpus: scalar(job.run.cpus)?,
        mem: scalar(job.run.mem)?,
        disk: scalar(job.run.disk)?,
        ..Default::default()
    })
}

/// The task of attempt `attempt` of `run`.
fn task_spec(job: &Job, run: &Run, attempt: u32) -> Result<TaskSpec, String> {
    let id = TaskId::parse(run.task_id(attempt)).map_err(|e| e.to_string())?;
    let resources = resources(job)?;
    let mut env = job.run.env.clone();
    env.insert("CHRONOS_JOB_NAME".into(), job.id.to_string());
    env.insert("KEEL_JOB_ID".into(), job.id.to_string());
    env.insert("KEEL_RUN_ID".into(), run.id.clone());
    env.insert("KEEL_SCHEDULED_AT".into(), from_millis(run.scheduled_at).to_rfc3339());
    env.insert("MESOS_TASK_ID".into(), id.to_string());
    let (value, shell, arguments) = match (&job.run.cmd, job.run.args.split_first()) {
        (Some(cmd), _) if !cmd.trim().is_empty() => (cmd.clone(), true, vec![]),
        (_, Some((program, rest))) => (program.clone(), false, rest.to_vec()),
        _ => (String::new(), true, vec![]),
    };
    let spec = TaskSpec {
        id,
        name: job.id.to_string(),
        resources,
        command: CommandSpec { value, shell, arguments, env },
        labels: job.labels.clone(),
        kill_grace: job.run.task_kill_grace_period_seconds.map(Duration::from_secs),
        container: job.run.docker.as_ref().map(|d| DockerSpec {
            image: d.image.clone(),
            force_pull: d.force_pull_image,
            ..Default::default()
        }),
        health_check: None,
        user: job.run.user.clone(),
    };
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciliation_answers_asked_before_a_launch_are_told_apart() {
        let mut a = PendingAnswers::default();
        // Asked twice before the launch (on subscribing, then in a periodic pass), once after it.
        a.asked("j.r.1");
        a.asked("j.r.1");
        a.launched("j.r.1");
        a.asked("j.r.1");
        assert_eq!([a.answered("j.r.1"), a.answered("j.r.1"), a.answered("j.r.1")], [true, true, false]);
        assert!(!a.answered("j.r.1"), "an answer nobody asked for is not stale");
        // A task never asked about before its launch: every answer counts.
        a.launched("j.r.2");
        a.asked("j.r.2");
        assert!(!a.answered("j.r.2"));
        // A relaunch under the same id (a recovered run fired after its answer) starts afresh.
        a.asked("j.r.3");
        a.launched("j.r.3");
        assert!(a.answered("j.r.3"));
        a.launched("j.r.3");
        a.asked("j.r.3");
        assert!(!a.answered("j.r.3"));
        assert!(a.asked.is_empty() && a.before_launch.is_empty(), "{a:?}");
    }

    #[test]
    fn an_interval_without_a_start_starts_at_the_next_second_in_its_zone() {
        let now = DateTime::parse_from_rfc3339("2026-07-01T10:00:00.300Z").unwrap().with_timezone(&Utc);
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let pinned = pin_start("R1//PT24H", now, berlin);
        assert_eq!(pinned, "R1/2026-07-01T12:00:01+02:00/PT24H");
        let s = crate::schedule::RepeatingInterval::parse(&pinned, "Europe/Berlin", now).unwrap();
        assert_eq!(s.start, DateTime::parse_from_rfc3339("2026-07-01T10:00:01Z").unwrap());
        assert_eq!(pin_start("R/2026-01-01T00:00:00Z/PT1H", now, berlin), "R/2026-01-01T00:00:00Z/PT1H");
    }

    #[tokio::test]
    async fn a_manual_clock_moves_when_told_and_wakes_its_sleeper() {
        let base = DateTime::parse_from_rfc3339("2026-03-29T00:59:59Z").unwrap().with_timezone(&Utc);
        let manual = ManualClock::new(base);
        let clock = Clock::Manual(manual.clone());
        assert_eq!(clock.until(base + TimeDelta::hours(1)), Duration::from_secs(3600));
        clock.sleep(Duration::ZERO).await;
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep(Duration::from_secs(3600)).await }
        });
        manual.advance(Duration::from_secs(3600));
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap();
        assert_eq!(clock.now(), base + TimeDelta::hours(1));
        assert_eq!(clock.until(base), Duration::ZERO);
    }
}
