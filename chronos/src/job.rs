//! The job model: what a job runs, when it runs, and what happened when it did. Plain types with their
//! rules as methods; the Metronome and Chronos JSON forms convert to and from them in [`crate::api`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::schedule::{CronSchedule, RepeatingInterval, Schedule, ScheduleError};

/// The longest job id accepted.
pub const MAX_JOB_ID_LEN: usize = 128;

/// A job's id: letters, digits, `.`, `_` and `-`, not starting with a dot. It is also the Chronos name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    pub fn parse(value: impl Into<String>) -> Result<JobId, JobError> {
        let value = value.into();
        let ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if value.is_empty() || value.len() > MAX_JOB_ID_LEN || value.starts_with('.') || !value.chars().all(ok) {
            return Err(JobError::BadId(value));
        }
        Ok(JobId(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = JobError;
    fn try_from(s: String) -> Result<JobId, JobError> {
        JobId::parse(s)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

/// Why a job definition cannot be accepted. Each maps to a 422 answer with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("invalid job id '{0}': use 1 to {MAX_JOB_ID_LEN} letters, digits, '.', '_' or '-', not starting with '.'")]
    BadId(String),
    #[error("schedule '{id}': {source}")]
    Schedule {
        id: String,
        #[source]
        source: ScheduleError,
    },
    #[error("job '{0}' has two schedules with the id '{1}'")]
    DuplicateSchedule(JobId, String),
    #[error("job '{job}' names an unknown parent '{parent}'")]
    UnknownParent { job: JobId, parent: JobId },
    #[error("dependency cycle: {}", .0.iter().map(JobId::as_str).collect::<Vec<_>>().join(" -> "))]
    Cycle(Vec<JobId>),
    #[error("job '{0}' needs a command or a Docker image")]
    NothingToRun(JobId),
    #[error("job '{0}': {1} must be a finite number >= 0")]
    BadResource(JobId, &'static str),
    #[error("job '{0}' asks for neither cpus nor mem")]
    NoResources(JobId),
    #[error("job '{0}': user '{1}' is not a user name (1 to 32 of a-z A-Z 0-9 . _ -)")]
    BadUser(JobId, String),
    #[error("job '{job}': {field} must be between {min} and {max} seconds, got {value}")]
    OutOfRange { job: JobId, field: &'static str, min: u64, max: u64, value: u64 },
}

/// What happens to a tick while an earlier run of the job is still active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConcurrencyPolicy {
    /// Runs side by side.
    #[default]
    Allow,
    /// The tick is skipped.
    Forbid,
    /// The active runs are killed and the tick runs.
    Replace,
}

impl ConcurrencyPolicy {
    pub fn parse(s: &str) -> Option<ConcurrencyPolicy> {
        match s.to_ascii_uppercase().as_str() {
            "ALLOW" => Some(ConcurrencyPolicy::Allow),
            "FORBID" => Some(ConcurrencyPolicy::Forbid),
            "REPLACE" => Some(ConcurrencyPolicy::Replace),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ConcurrencyPolicy::Allow => "ALLOW",
            ConcurrencyPolicy::Forbid => "FORBID",
            ConcurrencyPolicy::Replace => "REPLACE",
        }
    }
}

/// How a schedule names its fire times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ScheduleExpr {
    Cron(String),
    /// Chronos's `R[n]/start/period`.
    Iso8601(String),
}

impl ScheduleExpr {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        match self {
            ScheduleExpr::Cron(e) | ScheduleExpr::Iso8601(e) => e,
        }
    }
}

/// One schedule of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    pub id: String,
    pub expr: ScheduleExpr,
    /// An IANA zone name; empty is UTC.
    pub time_zone: String,
    pub concurrency_policy: ConcurrencyPolicy,
    /// A tick that cannot start within this counts as missed.
    pub starting_deadline_seconds: u64,
    pub enabled: bool,
}

impl ScheduleSpec {
    /// Parses the expression in its zone. `now` is the start of an interval that names none.
    pub fn compile(&self, now: DateTime<Utc>) -> Result<Schedule, ScheduleError> {
        match &self.expr {
            ScheduleExpr::Cron(e) => CronSchedule::parse(e, &self.time_zone).map(|c| Schedule::Cron(Box::new(c))),
            ScheduleExpr::Iso8601(e) => RepeatingInterval::parse(e, &self.time_zone, now).map(Schedule::Interval),
        }
    }

    pub fn starting_deadline(&self) -> Duration {
        Duration::from_secs(self.starting_deadline_seconds)
    }
}

/// The longest deadline or delay accepted: a year.
pub const MAX_SECONDS: u64 = 366 * 86_400;

/// The default starting deadline: Chronos's default epsilon.
pub const DEFAULT_STARTING_DEADLINE_SECONDS: u64 = 60;

/// A Docker image to run the job in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerImage {
    pub image: String,
    pub force_pull_image: bool,
}

/// What one run of a job executes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    /// A shell command; with a Docker image it replaces the image's command.
    pub cmd: Option<String>,
    /// Arguments, when there is no `cmd`: the first is the program.
    pub args: Vec<String>,
    pub docker: Option<DockerImage>,
    pub cpus: f64,
    pub mem: f64,
    pub disk: f64,
    pub env: BTreeMap<String, String>,
    pub task_kill_grace_period_seconds: Option<u64>,
    /// The longest wait between two attempts of a run.
    pub max_launch_delay_seconds: u64,
    /// The user the run's task runs as; `None`: the agent's default.
    #[serde(default)]
    pub user: Option<String>,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            cmd: None,
            args: vec![],
            docker: None,
            cpus: 1.0,
            mem: 128.0,
            disk: 0.0,
            env: BTreeMap::new(),
            task_kill_grace_period_seconds: None,
            max_launch_delay_seconds: 3600,
            user: None,
        }
    }
}

/// A job, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: JobId,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub run: RunSpec,
    pub schedules: Vec<ScheduleSpec>,
    /// The job runs after all of these have succeeded (Chronos's dependent jobs).
    pub parents: Vec<JobId>,
    /// How many times a failed run is tried again; `None` retries until the active deadline.
    pub retries: Option<u32>,
    /// A run still going this long after its first launch is killed and marked failed (timed out).
    pub active_deadline_seconds: Option<u64>,
    pub disabled: bool,
    pub owner: String,
    pub owner_name: String,
    /// Milliseconds since the epoch of the last change; ticks before it are never run.
    pub updated_at: i64,
}

impl Job {
    /// A job with the defaults.
    pub fn new(id: JobId) -> Job {
        Job {
            id,
            description: String::new(),
            labels: BTreeMap::new(),
            run: RunSpec::default(),
            schedules: vec![],
            parents: vec![],
            retries: Some(0),
            active_deadline_seconds: None,
            disabled: false,
            owner: String::new(),
            owner_name: String::new(),
            updated_at: 0,
        }
    }

    /// Checks everything that does not depend on other jobs, and compiles the schedules.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<Vec<Schedule>, JobError> {
        let id = || self.id.clone();
        if self.run.cmd.as_deref().is_none_or(|c| c.trim().is_empty())
            && self.run.args.is_empty()
            && self.run.docker.as_ref().is_none_or(|d| d.image.trim().is_empty())
        {
            return Err(JobError::NothingToRun(id()));
        }
        for (name, v) in [("cpus", self.run.cpus), ("mem", self.run.mem), ("disk", self.run.disk)] {
            if !v.is_finite() || v < 0.0 {
                return Err(JobError::BadResource(id(), name));
            }
        }
        if self.run.cpus == 0.0 && self.run.mem == 0.0 {
            return Err(JobError::NoResources(id()));
        }
        let range = |field: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(JobError::OutOfRange { job: id(), field, min, max, value })
            }
        };
        if let Some(d) = self.active_deadline_seconds {
            range("activeDeadlineSeconds", d, 1, MAX_SECONDS)?;
        }
        if let Some(g) = self.run.task_kill_grace_period_seconds {
            range("taskKillGracePeriodSeconds", g, 0, 86_400)?;
        }
        range("maxLaunchDelay", self.run.max_launch_delay_seconds, 1, MAX_SECONDS)?;
        if let Some(u) = &self.run.user
            && !keel_core::task::valid_user(u)
        {
            return Err(JobError::BadUser(id(), u.chars().take(64).collect()));
        }
        for s in &self.schedules {
            range("startingDeadlineSeconds", s.starting_deadline_seconds, 1, MAX_SECONDS)?;
        }
        let mut seen = BTreeSet::new();
        let mut compiled = Vec::with_capacity(self.schedules.len());
        for s in &self.schedules {
            if !seen.insert(s.id.as_str()) {
                return Err(JobError::DuplicateSchedule(id(), s.id.clone()));
            }
            compiled.push(s.compile(now).map_err(|source| JobError::Schedule { id: s.id.clone(), source })?);
        }
        Ok(compiled)
    }

    /// The delay before attempt `attempt` (2 is the first retry): 1 s, doubling, capped at the run's
    /// `maxLaunchDelay`.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(2).min(30);
        Duration::from_secs((1u64 << exp).min(self.run.max_launch_delay_seconds.max(1)))
    }

    /// Whether a run that has made `attempts` attempts may try again.
    pub fn may_retry(&self, attempts: u32) -> bool {
        self.retries.is_none_or(|r| attempts <= r)
    }
}

/// Checks that every parent exists and that the parents form no cycle, for `jobs` as they would be.
pub fn check_dependencies<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Result<(), JobError> {
    let parents: HashMap<&JobId, &[JobId]> = jobs.into_iter().map(|j| (&j.id, j.parents.as_slice())).collect();
    for (job, ps) in &parents {
        if let Some(p) = ps.iter().find(|p| !parents.contains_key(p)) {
            return Err(JobError::UnknownParent { job: (*job).clone(), parent: p.clone() });
        }
    }
    // Depth-first search with colours; the path on the stack is the cycle when a grey node is met again.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        Grey,
        Black,
    }
    let mut colour: HashMap<&JobId, Colour> = HashMap::new();
    let mut ids: Vec<&JobId> = parents.keys().copied().collect();
    ids.sort();
    for start in ids {
        if colour.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(&JobId, usize)> = vec![(start, 0)];
        colour.insert(start, Colour::Grey);
        while let Some((node, next)) = stack.last_mut() {
            let ps = parents[*node];
            if *next == ps.len() {
                colour.insert(*node, Colour::Black);
                stack.pop();
                continue;
            }
            let p = &ps[*next];
            *next += 1;
            match colour.get(p) {
                Some(Colour::Black) => {}
                Some(Colour::Grey) => {
                    let from = stack.iter().position(|(n, _)| *n == p).unwrap_or(0);
                    let mut cycle: Vec<JobId> = stack[from..].iter().map(|(n, _)| (*n).clone()).collect();
                    cycle.reverse();
                    cycle.insert(0, p.clone());
                    return Err(JobError::Cycle(cycle));
                }
                None => {
                    colour.insert(p, Colour::Grey);
                    stack.push((p, 0));
                }
            }
        }
    }
    Ok(())
}

/// Where a run is in its life.
///
/// ```text
/// INITIAL ─▶ STARTING ─▶ ACTIVE ─▶ SUCCESS
///    │          ▲  │        │ └───▶ FAILED (no retries left, killed, timed out)
///    │          └──┴────────┘ (a retry)
///    └─▶ MISSED (could not start within the starting deadline) | SKIPPED (FORBID while another runs)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Initial,
    Starting,
    Active,
    Success,
    Failed,
    Missed,
    Skipped,
}

/// An illegal change of a run's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal run transition from {from:?} to {to:?}")]
pub struct RunTransitionError {
    pub from: RunStatus,
    pub to: RunStatus,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Success | RunStatus::Failed | RunStatus::Missed | RunStatus::Skipped)
    }

    /// Whether the run holds (or is about to hold) a task.
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Starting | RunStatus::Active)
    }

    pub fn transition(self, to: RunStatus) -> Result<RunStatus, RunTransitionError> {
        use RunStatus::*;
        let legal = match (self, to) {
            (a, b) if a == b => !a.is_terminal(),
            (Initial, Starting | Missed | Skipped | Failed) => true,
            (Starting, Active | Success | Failed | Starting) => true,
            (Active, Success | Failed | Starting) => true,
            _ => false,
        };
        if legal { Ok(to) } else { Err(RunTransitionError { from: self, to }) }
    }

    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Initial => "INITIAL",
            RunStatus::Starting => "STARTING",
            RunStatus::Active => "ACTIVE",
            RunStatus::Success => "SUCCESS",
            RunStatus::Failed => "FAILED",
            RunStatus::Missed => "MISSED",
            RunStatus::Skipped => "SKIPPED",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        use RunStatus::*;
        [Initial, Starting, Active, Success, Failed, Missed, Skipped].into_iter().find(|r| r.name() == s)
    }
}

/// What made a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    Schedule(String),
    Manual,
    /// All parents succeeded; the key is the trigger key of the parent run that completed the set.
    Parents,
}

impl Trigger {
    pub fn encode(&self) -> String {
        match self {
            Trigger::Schedule(id) => format!("schedule:{id}"),
            Trigger::Manual => "manual".into(),
            Trigger::Parents => "parents".into(),
        }
    }

    pub fn decode(s: &str) -> Trigger {
        match s.strip_prefix("schedule:") {
            Some(id) => Trigger::Schedule(id.to_owned()),
            None if s == "parents" => Trigger::Parents,
            None => Trigger::Manual,
        }
    }
}

/// One run of a job: a tick, a manual start, or a dependency firing, with every attempt it made.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub id: String,
    pub job_id: JobId,
    /// Unique per job: the scheduled instant (milliseconds) for a scheduled tick. A second run with the same
    /// key is impossible, which is what makes ticks exactly-once.
    pub trigger_key: String,
    pub trigger: Trigger,
    /// Milliseconds since the epoch.
    pub scheduled_at: i64,
    pub created_at: i64,
    pub status: RunStatus,
    pub attempts: u32,
    pub task_ids: Vec<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub message: String,
    pub stdout_tail: String,
    pub stderr_tail: String,
}

impl Run {
    /// A new run in INITIAL. Scheduled runs get ids from their instant, so the same tick always has the
    /// same id.
    pub fn new(job_id: JobId, trigger: Trigger, trigger_key: String, scheduled_at: i64, now: i64) -> Run {
        let when = DateTime::<Utc>::from_timestamp_millis(scheduled_at).unwrap_or_default();
        let suffix = short_hash(&format!("{job_id}/{trigger_key}"));
        Run {
            id: format!("{}{suffix}", when.format("%Y%m%d%H%M%S")),
            job_id,
            trigger_key,
            trigger,
            scheduled_at,
            created_at: now,
            status: RunStatus::Initial,
            attempts: 0,
            task_ids: vec![],
            started_at: None,
            finished_at: None,
            exit_code: None,
            message: String::new(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        }
    }

    /// The task id of attempt `attempt`: derived, so a restarted framework knows which task to ask about.
    pub fn task_id(&self, attempt: u32) -> String {
        format!("{}.{}.{attempt}", self.job_id, self.id)
    }
}

/// Five letters from a stable hash (FNV-1a), as in Metronome's run ids (`20160712215634qWzRw`).
fn short_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..5)
        .map(|i| {
            let idx = ((h >> (i * 11)) % ALPHABET.len() as u64) as usize;
            ALPHABET[idx] as char
        })
        .collect()
}

/// A job's counters, as Chronos shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobStats {
    pub success_count: u64,
    pub error_count: u64,
    pub missed_count: u64,
    pub last_success: Option<i64>,
    pub last_error: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, parents: &[&str]) -> Job {
        let mut j = Job::new(JobId::parse(id).unwrap());
        j.parents = parents.iter().map(|p| JobId::parse(*p).unwrap()).collect();
        j
    }

    #[test]
    fn ids() {
        assert!(JobId::parse("prod.backup-db_2").is_ok());
        for bad in ["", ".x", "a b", "a/b", &"x".repeat(129)] {
            assert!(JobId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cycles_are_found_and_named() {
        let ok = [job("a", &[]), job("b", &["a"]), job("c", &["a", "b"])];
        assert_eq!(check_dependencies(&ok), Ok(()));
        let cyclic = [job("a", &["c"]), job("b", &["a"]), job("c", &["b"])];
        let e = check_dependencies(&cyclic).unwrap_err();
        assert!(matches!(&e, JobError::Cycle(c) if c.len() == 4), "{e}");
        assert!(e.to_string().starts_with("dependency cycle: "), "{e}");
        let selfish = [job("a", &["a"])];
        assert_eq!(check_dependencies(&selfish).unwrap_err().to_string(), "dependency cycle: a -> a");
        let orphan = [job("a", &["ghost"])];
        assert!(matches!(check_dependencies(&orphan), Err(JobError::UnknownParent { .. })));
    }

    #[test]
    fn run_transitions() {
        use RunStatus::*;
        assert!(Initial.transition(Starting).is_ok());
        assert!(Starting.transition(Active).is_ok());
        assert!(Active.transition(Starting).is_ok(), "a retry");
        assert!(Active.transition(Success).is_ok());
        assert!(Initial.transition(Skipped).is_ok());
        assert!(Success.transition(Failed).is_err());
        assert!(Missed.transition(Starting).is_err());
        assert!(Active.transition(Initial).is_err());
        assert!(Success.transition(Success).is_err(), "a terminal run never changes");
    }

    #[test]
    fn retry_backoff_doubles_up_to_the_cap() {
        let mut j = job("a", &[]);
        j.run.max_launch_delay_seconds = 5;
        let delays: Vec<u64> = (2..=6).map(|a| j.retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        j.retries = Some(2);
        assert!(j.may_retry(1) && j.may_retry(2) && !j.may_retry(3));
        j.retries = None;
        assert!(j.may_retry(1000));
    }

    #[test]
    fn scheduled_runs_have_stable_ids() {
        let id = JobId::parse("a").unwrap();
        let t = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let r1 = Run::new(id.clone(), Trigger::Schedule("s".into()), t.to_string(), t, 5);
        let r2 = Run::new(id.clone(), Trigger::Schedule("s".into()), t.to_string(), t, 9);
        assert_eq!(r1.id, r2.id);
        assert!(r1.id.starts_with("20260101000000"), "{}", r1.id);
        assert_eq!(r1.task_id(2), format!("a.{}.2", r1.id));
        assert!(keel_core::ids::TaskId::parse(r1.task_id(1)).is_ok());
    }
}
