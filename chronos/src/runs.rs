//! The cron framework's open runs: every run that has not finished, which task belongs to which run, and
//! what changed since the last write. A finished run leaves the open ones at once but is kept until its
//! outcome is written ([`OpenRuns::written`]), so that a failed write loses nothing. What a run's failed
//! attempt leads to ([`after_failure`]) is a pure decision.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::job::{Job, Run, RunStatus, RunTransitionError};
use crate::timers::Key;

/// Open runs and runs finished but not yet written. Ordered maps: what a pass over them does depends on
/// nothing but their contents.
#[derive(Default)]
pub struct OpenRuns {
    open: BTreeMap<Key, Run>,
    /// Finished runs not written yet.
    finished: BTreeMap<Key, Run>,
    /// Runs changed since the last write: whether each just finished (its outcome is counted when written).
    dirty: BTreeMap<Key, bool>,
    /// Which run each task belongs to.
    by_task: BTreeMap<String, Key>,
}

/// What a failed attempt leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Another attempt, after this delay.
    Retry(Duration),
    /// The run fails.
    Fail,
}

/// What a failed attempt of `run` leads to: another one, after the job's retry delay, if the job allows it
/// and is not disabled, and the task was not killed on purpose; otherwise the run fails. `job` is `None`
/// when the job is gone.
pub fn after_failure(job: Option<&Job>, run: &Run, killed_on_purpose: bool) -> AfterFailure {
    match job {
        Some(job) if !killed_on_purpose && !job.disabled && job.may_retry(run.attempts) => {
            AfterFailure::Retry(job.retry_delay(run.attempts + 1))
        }
        _ => AfterFailure::Fail,
    }
}

impl OpenRuns {
    /// Holds an open run, with the tasks it may have: those it launched, its current attempt's and the next
    /// one's (which it may have launched just before a restart).
    pub fn open(&mut self, run: Run) {
        let key = (run.job_id.clone(), run.id.clone());
        for t in run.task_ids.iter().cloned().chain([run.task_id(run.attempts.max(1)), run.task_id(run.attempts + 1)]) {
            self.by_task.insert(t, key.clone());
        }
        self.open.insert(key, run);
    }

    pub fn get(&self, key: &Key) -> Option<&Run> {
        self.open.get(key)
    }

    pub fn get_mut(&mut self, key: &Key) -> Option<&mut Run> {
        self.open.get_mut(key)
    }

    /// An open run, or one finished and not yet written.
    pub fn held_mut(&mut self, key: &Key) -> Option<&mut Run> {
        self.open.get_mut(key).or_else(|| self.finished.get_mut(key))
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.open.contains_key(key)
    }

    /// Whether the run is open, or finished and not yet written.
    pub fn holds(&self, key: &Key) -> bool {
        self.open.contains_key(key) || self.finished.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Run)> {
        self.open.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &Run> {
        self.open.values()
    }

    /// The open runs of job `id`.
    pub fn of_job<'a>(&'a self, id: &'a crate::job::JobId) -> impl Iterator<Item = (&'a Key, &'a Run)> + 'a {
        self.open.iter().filter(move |(k, _)| &k.0 == id)
    }

    /// The run a task belongs to.
    pub fn run_of(&self, task: &str) -> Option<&Key> {
        self.by_task.get(task)
    }

    /// Every task a run may hold, for reconciliation.
    pub fn tasks(&self) -> impl Iterator<Item = &String> {
        self.by_task.keys()
    }

    /// Forgets a task whose run is gone: a late or repeated update about it changes nothing.
    pub fn forget_task(&mut self, task: &str) {
        self.by_task.remove(task);
    }

    /// Marks a run changed: it is written on the next flush.
    pub fn touch(&mut self, key: &Key) {
        if self.open.contains_key(key) || self.finished.contains_key(key) {
            self.dirty.entry(key.clone()).or_insert(false);
        }
    }

    /// Attempt `attempt` of run `key` was sent as `task` at `sent` (milliseconds). Answers whether the run
    /// started with it (its first attempt), `None` if the run is not open.
    pub fn started(&mut self, key: &Key, task: String, attempt: u32, sent: i64) -> Option<bool> {
        self.by_task.insert(task.clone(), key.clone());
        let run = self.open.get_mut(key)?;
        run.status = run.status.transition(RunStatus::Starting).unwrap_or(run.status);
        run.attempts = attempt;
        if !run.task_ids.contains(&task) {
            run.task_ids.push(task);
        }
        let first = run.started_at.is_none();
        if first {
            run.started_at = Some(sent);
        }
        if attempt == 1 {
            self.dirty.entry(key.clone()).or_insert(false);
        }
        Some(first)
    }

    /// An attempt the master reports, later than the run's latest (launched just before a restart): the
    /// run adopts it.
    pub fn adopt(&mut self, key: &Key, task: &str, attempt: u32) {
        let Some(run) = self.open.get_mut(key) else { return };
        run.attempts = attempt;
        if !run.task_ids.iter().any(|t| t == task) {
            run.task_ids.push(task.to_owned());
        }
        run.status = run.status.transition(RunStatus::Starting).unwrap_or(run.status);
        self.dirty.entry(key.clone()).or_insert(false);
    }

    /// The run's task runs.
    pub fn running(&mut self, key: &Key) {
        let Some(run) = self.open.get_mut(key) else { return };
        if run.status != RunStatus::Active {
            run.status = run.status.transition(RunStatus::Active).unwrap_or(run.status);
            self.dirty.entry(key.clone()).or_insert(false);
        }
    }

    /// The run's latest attempt failed with `message`, and another follows.
    pub fn retrying(&mut self, key: &Key, message: &str, exit_code: Option<i32>) {
        let Some(run) = self.open.get_mut(key) else { return };
        run.status = run.status.transition(RunStatus::Starting).unwrap_or(run.status);
        run.exit_code = exit_code;
        run.message = format!("attempt {} failed: {message}", run.attempts);
        self.dirty.entry(key.clone()).or_insert(false);
    }

    /// Ends an open run at `now` (milliseconds) with `status`: it leaves the open runs and is written on
    /// the next flush. Answers the finished run; `None` if no such run is open. A transition the run's
    /// status does not allow is refused, and the run stays open.
    pub fn finish(
        &mut self,
        key: &Key,
        status: RunStatus,
        message: String,
        exit_code: Option<i32>,
        now: i64,
    ) -> Option<Result<&Run, RunTransitionError>> {
        let mut run = self.open.remove(key)?;
        match run.status.transition(status) {
            Ok(s) => run.status = s,
            Err(e) => {
                self.open.insert(key.clone(), run);
                return Some(Err(e));
            }
        }
        run.finished_at = Some(now);
        if !message.is_empty() || status == RunStatus::Success {
            run.message = message;
        }
        if exit_code.is_some() {
            run.exit_code = exit_code;
        }
        self.dirty.insert(key.clone(), true);
        self.finished.insert(key.clone(), run);
        self.finished.get(key).map(Ok)
    }

    /// Drops an open run without an outcome (its job is deleted).
    pub fn drop_open(&mut self, key: &Key) -> Option<Run> {
        self.dirty.remove(key);
        self.open.remove(key)
    }

    /// The changed runs to write, each with whether it just finished; empty if nothing changed.
    pub fn to_write(&self) -> Vec<(Run, bool)> {
        self.dirty
            .iter()
            .filter_map(|(k, finished)| {
                self.open.get(k).or_else(|| self.finished.get(k)).map(|r| (r.clone(), *finished))
            })
            .collect()
    }

    /// The changes answered by [`OpenRuns::to_write`] are written: finished runs, and their tasks, are
    /// forgotten.
    pub fn written(&mut self) {
        self.dirty.clear();
        for (_, run) in std::mem::take(&mut self.finished) {
            for t in
                run.task_ids.iter().cloned().chain([run.task_id(run.attempts.max(1)), run.task_id(run.attempts + 1)])
            {
                self.by_task.remove(&t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobId, Trigger};

    fn run(id: &str) -> Run {
        let mut r = Run::new(JobId::parse("backup").unwrap(), Trigger::Manual, id.into(), 0, 0);
        r.id = id.into();
        r
    }

    fn key(id: &str) -> Key {
        (JobId::parse("backup").unwrap(), id.into())
    }

    #[test]
    fn a_finished_run_is_kept_until_written_then_forgotten_with_its_tasks() {
        let mut runs = OpenRuns::default();
        runs.open(run("r1"));
        assert_eq!(runs.run_of("backup.r1.1"), Some(&key("r1")), "its first attempt's task is known at once");
        assert_eq!(runs.started(&key("r1"), "backup.r1.1".into(), 1, 100), Some(true));
        assert_eq!(runs.started(&key("r1"), "backup.r1.2".into(), 2, 200), Some(false), "started once");
        assert_eq!(runs.get(&key("r1")).unwrap().started_at, Some(100));
        runs.running(&key("r1"));

        let done = runs.finish(&key("r1"), RunStatus::Success, String::new(), Some(0), 300).unwrap().unwrap();
        assert_eq!((done.status, done.finished_at), (RunStatus::Success, Some(300)));
        assert!(!runs.contains(&key("r1")) && runs.holds(&key("r1")));
        runs.held_mut(&key("r1")).unwrap().stdout_tail = "ok".into();

        let batch = runs.to_write();
        assert_eq!(batch.len(), 1);
        assert!(batch[0].1, "counted as just finished");
        assert_eq!(batch[0].0.stdout_tail, "ok");
        // A failed write keeps everything for the next try.
        assert_eq!(runs.to_write().len(), 1);
        runs.written();
        assert!(runs.to_write().is_empty());
        assert!(!runs.holds(&key("r1")));
        assert_eq!(runs.run_of("backup.r1.2"), None);
        assert_eq!(runs.run_of("backup.r1.3"), None, "nor the next attempt it might have launched");
    }

    #[test]
    fn a_transition_the_status_does_not_allow_is_refused_and_the_run_stays_open() {
        let mut runs = OpenRuns::default();
        runs.open(run("r1"));
        runs.started(&key("r1"), "backup.r1.1".into(), 1, 100);
        assert!(runs.finish(&key("r1"), RunStatus::Missed, "late".into(), None, 200).unwrap().is_err());
        assert!(runs.contains(&key("r1")));
        assert!(runs.finish(&key("other"), RunStatus::Failed, String::new(), None, 0).is_none());
        runs.retrying(&key("r1"), "TASK_FAILED", Some(3));
        let r = runs.get(&key("r1")).unwrap();
        assert_eq!(
            (r.status, r.exit_code, r.message.as_str()),
            (RunStatus::Starting, Some(3), "attempt 1 failed: TASK_FAILED")
        );
        runs.adopt(&key("r1"), "backup.r1.2", 2);
        assert_eq!(runs.get(&key("r1")).unwrap().task_ids, vec!["backup.r1.1", "backup.r1.2"]);
        assert_eq!(runs.drop_open(&key("r1")).map(|r| r.attempts), Some(2));
        assert!(runs.to_write().is_empty(), "a dropped run is not written");
    }

    #[test]
    fn a_failed_attempt_is_retried_only_when_the_job_allows_it() {
        let mut job = Job::new(JobId::parse("backup").unwrap());
        job.retries = Some(1);
        let mut r = run("r1");
        r.attempts = 1;
        assert!(matches!(after_failure(Some(&job), &r, false), AfterFailure::Retry(_)));
        assert_eq!(after_failure(Some(&job), &r, true), AfterFailure::Fail, "killed on purpose");
        assert_eq!(after_failure(None, &r, false), AfterFailure::Fail, "the job is gone");
        r.attempts = 2;
        assert_eq!(after_failure(Some(&job), &r, false), AfterFailure::Fail, "no attempts left");
        r.attempts = 1;
        job.disabled = true;
        assert_eq!(after_failure(Some(&job), &r, false), AfterFailure::Fail, "disabled");
    }
}
