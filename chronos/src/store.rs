//! Where jobs and their runs live, in the same database as the master's registry (PostgreSQL or SQLite,
//! through `keel_core::store::Store`).
//!
//! The runs table is what makes ticks exactly-once: a run is inserted before its task is launched, and
//! `(job_id, trigger_key)` is unique, so a scheduled instant can produce one run at most, across restarts.

use std::collections::HashMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::job::{Job, JobId, JobStats, Run, RunStatus, Trigger};

#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    #[error("job store query failed")]
    Query(#[from] sqlx::Error),
    #[error("stored job is corrupt")]
    Corrupt(#[from] serde_json::Error),
    #[error("stored run is corrupt: {0}")]
    BadRow(String),
    /// Typically: this process no longer leads, and the database refused its write.
    #[error(transparent)]
    Store(#[from] keel_core::store::StoreError),
}

/// Jobs, runs and counters.
#[derive(Clone)]
pub struct JobStore {
    store: keel_core::store::Store,
}

const RUN_COLUMNS: &str = "job_id, id, trigger_key, trigger_kind, scheduled_at, created_at, status, attempts, \
                           task_ids, started_at, finished_at, exit_code, message, stdout_tail, stderr_tail";

impl JobStore {
    pub fn new(store: keel_core::store::Store) -> JobStore {
        JobStore { store }
    }

    pub async fn put_job(&self, job: &Job) -> Result<(), JobStoreError> {
        let (kind, term) = self.store.fence_args();
        let rows = sqlx::query(&format!(
            "INSERT INTO chronos_jobs (id, definition) SELECT $1, $2 WHERE {fence} \
             ON CONFLICT (id) DO UPDATE SET definition = excluded.definition",
            fence = self.store.fence_condition(3)
        ))
        .bind(job.id.as_str())
        .bind(serde_json::to_string(job)?)
        .bind(kind)
        .bind(term)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(self.store.written(rows).await?)
    }

    /// Removes a job with its runs and counters; false when there was no such job.
    pub async fn delete_job(&self, id: &JobId) -> Result<bool, JobStoreError> {
        let (kind, term) = self.store.fence_args();
        let fence = self.store.fence_condition(2);
        let mut tx = self.store.pool().begin().await?;
        let mut gone = 0;
        for (table, key) in [("chronos_jobs", "id"), ("chronos_runs", "job_id"), ("chronos_stats", "job_id")] {
            let done = sqlx::query(&format!("DELETE FROM {table} WHERE {key} = $1 AND {fence}"))
                .bind(id.as_str())
                .bind(kind)
                .bind(term)
                .execute(&mut *tx)
                .await?;
            if table == "chronos_jobs" {
                gone = done.rows_affected();
            }
        }
        tx.commit().await?;
        self.store.written(gone).await?;
        Ok(gone > 0)
    }

    /// Every job, ordered by id.
    pub async fn jobs(&self) -> Result<Vec<Job>, JobStoreError> {
        let rows = sqlx::query("SELECT definition FROM chronos_jobs ORDER BY id").fetch_all(self.store.pool()).await?;
        rows.iter().map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>(0)?)?)).collect()
    }

    /// Inserts new runs in one transaction. Says, per run, whether it was new: false means a run with the
    /// same job and trigger key already exists, and nothing was written for it. A deposed leader's insert
    /// is an error ([`keel_core::store::StoreError::Fenced`]), never a false "already there".
    pub async fn insert_runs(&self, runs: &[Run]) -> Result<Vec<bool>, JobStoreError> {
        /// Rows per statement: one statement per row costs a round trip each, which 10,000 ticks at one
        /// instant cannot afford.
        const CHUNK: usize = 64;
        const COLUMNS: usize = 15;
        let (kind, term) = self.store.fence_args();
        let mut tx = self.store.pool().begin().await?;
        let mut out = Vec::with_capacity(runs.len());
        for chunk in runs.chunks(CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let params: Vec<String> = (1..=COLUMNS).map(|c| format!("${}", i * COLUMNS + c)).collect();
                    format!("({})", params.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO chronos_runs ({RUN_COLUMNS}) SELECT * FROM (VALUES {}) AS v WHERE {} \
                 ON CONFLICT DO NOTHING",
                values.join(", "),
                self.store.fence_condition(chunk.len() * COLUMNS + 1)
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = bind_run(q, r);
            }
            let q = q.bind(kind).bind(term);
            // Within a savepoint: if any row was there already, undo the chunk and insert row by row to
            // learn which.
            let mut chunk_tx = sqlx::Acquire::begin(&mut tx).await?;
            let inserted = q.execute(&mut *chunk_tx).await?.rows_affected() as usize;
            if inserted == chunk.len() {
                chunk_tx.commit().await?;
                out.extend(std::iter::repeat_n(true, chunk.len()));
                continue;
            }
            chunk_tx.rollback().await?;
            let one = format!(
                "INSERT INTO chronos_runs ({RUN_COLUMNS}) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 WHERE {} \
                 ON CONFLICT DO NOTHING",
                self.store.fence_condition(16)
            );
            for r in chunk {
                let n = bind_run(sqlx::query(&one), r).bind(kind).bind(term).execute(&mut *tx).await?.rows_affected();
                out.push(n > 0);
            }
        }
        tx.commit().await?;
        if out.contains(&false) {
            self.store.written(0).await?;
        }
        Ok(out)
    }

    /// Writes the mutable fields of runs, in one transaction. Finished runs also count towards their job's
    /// counters; `counted` says which of `runs` have just finished. A run counts once only: when it is still
    /// open in the store. So writing a batch again after an error (whose commit may have landed) never
    /// counts a run twice.
    pub async fn update_runs(&self, runs: &[(Run, bool)]) -> Result<(), JobStoreError> {
        let (kind, term) = self.store.fence_args();
        let update = |extra: &str| {
            format!(
                "UPDATE chronos_runs SET status = $3, attempts = $4, task_ids = $5, started_at = $6, \
                 finished_at = $7, exit_code = $8, message = $9, stdout_tail = $10, stderr_tail = $11 \
                 WHERE job_id = $1 AND id = $2 AND {}{extra}",
                self.store.fence_condition(12)
            )
        };
        let (update, finish) = (update(""), update(" AND status IN ('INITIAL', 'STARTING', 'ACTIVE')"));
        let count = format!(
            "INSERT INTO chronos_stats (job_id, success_count, error_count, missed_count, last_success, last_error) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE {} \
             ON CONFLICT (job_id) DO UPDATE SET \
               success_count = chronos_stats.success_count + excluded.success_count, \
               error_count = chronos_stats.error_count + excluded.error_count, \
               missed_count = chronos_stats.missed_count + excluded.missed_count, \
               last_success = COALESCE(excluded.last_success, chronos_stats.last_success), \
               last_error = COALESCE(excluded.last_error, chronos_stats.last_error)",
            self.store.fence_condition(7)
        );
        let mut tx = self.store.pool().begin().await?;
        let mut rows = u64::MAX;
        for (r, counted) in runs {
            let done = sqlx::query(if *counted { &finish } else { &update })
                .bind(r.job_id.as_str())
                .bind(&r.id)
                .bind(r.status.name())
                .bind(i64::from(r.attempts))
                .bind(serde_json::to_string(&r.task_ids)?)
                .bind(r.started_at)
                .bind(r.finished_at)
                .bind(r.exit_code.map(i64::from))
                .bind(&r.message)
                .bind(&r.stdout_tail)
                .bind(&r.stderr_tail)
                .bind(kind)
                .bind(term)
                .execute(&mut *tx)
                .await?;
            rows = rows.min(done.rows_affected());
            if *counted && done.rows_affected() > 0 {
                let at = r.finished_at.unwrap_or(r.created_at);
                let (s, e, m) = match r.status {
                    RunStatus::Success => (1, 0, 0),
                    RunStatus::Failed => (0, 1, 0),
                    RunStatus::Missed => (0, 0, 1),
                    _ => (0, 0, 0),
                };
                let done = sqlx::query(&count)
                    .bind(r.job_id.as_str())
                    .bind(s as i64)
                    .bind(e as i64)
                    .bind(m as i64)
                    .bind((s == 1).then_some(at))
                    .bind((e == 1).then_some(at))
                    .bind(kind)
                    .bind(term)
                    .execute(&mut *tx)
                    .await?;
                rows = rows.min(done.rows_affected());
            }
        }
        tx.commit().await?;
        Ok(self.store.written(rows).await?)
    }

    /// Stores the tails of a finished run's output.
    pub async fn set_tails(&self, job: &JobId, run: &str, stdout: &str, stderr: &str) -> Result<(), JobStoreError> {
        let (kind, term) = self.store.fence_args();
        let rows = sqlx::query(&format!(
            "UPDATE chronos_runs SET stdout_tail = $3, stderr_tail = $4 WHERE job_id = $1 AND id = $2 AND {}",
            self.store.fence_condition(5)
        ))
        .bind(job.as_str())
        .bind(run)
        .bind(stdout)
        .bind(stderr)
        .bind(kind)
        .bind(term)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(self.store.written(rows).await?)
    }

    /// Adds missed ticks beyond those recorded one by one to a job's counter.
    pub async fn add_missed(&self, job: &JobId, n: u64) -> Result<(), JobStoreError> {
        let (kind, term) = self.store.fence_args();
        let rows = sqlx::query(&format!(
            "INSERT INTO chronos_stats (job_id, success_count, error_count, missed_count) \
             SELECT $1, 0, 0, $2 WHERE {} \
             ON CONFLICT (job_id) DO UPDATE SET missed_count = chronos_stats.missed_count + excluded.missed_count",
            self.store.fence_condition(3)
        ))
        .bind(job.as_str())
        .bind(n as i64)
        .bind(kind)
        .bind(term)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(self.store.written(rows).await?)
    }

    /// Runs that have not finished.
    pub async fn open_runs(&self) -> Result<Vec<Run>, JobStoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM chronos_runs WHERE status IN ('INITIAL', 'STARTING', 'ACTIVE') ORDER BY scheduled_at"
        ))
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// A job's runs, newest first.
    pub async fn runs(&self, job: &JobId, limit: i64) -> Result<Vec<Run>, JobStoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM chronos_runs WHERE job_id = $1 ORDER BY created_at DESC, scheduled_at DESC LIMIT $2"
        ))
        .bind(job.as_str())
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// The run of `job` recorded for `trigger_key`, if any: where a write that may or may not have landed
    /// is looked for.
    pub async fn run_by_trigger(&self, job: &JobId, trigger_key: &str) -> Result<Option<Run>, JobStoreError> {
        let row =
            sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM chronos_runs WHERE job_id = $1 AND trigger_key = $2"))
                .bind(job.as_str())
                .bind(trigger_key)
                .fetch_optional(self.store.pool())
                .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    pub async fn run(&self, job: &JobId, id: &str) -> Result<Option<Run>, JobStoreError> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM chronos_runs WHERE job_id = $1 AND id = $2"))
            .bind(job.as_str())
            .bind(id)
            .fetch_optional(self.store.pool())
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// The latest recorded tick of each schedule of each job: where watching the schedule resumes.
    pub async fn last_ticks(&self) -> Result<HashMap<(JobId, String), i64>, JobStoreError> {
        let rows = sqlx::query(
            "SELECT job_id, trigger_kind, MAX(scheduled_at) FROM chronos_runs \
             WHERE trigger_kind LIKE 'schedule:%' GROUP BY job_id, trigger_kind",
        )
        .fetch_all(self.store.pool())
        .await?;
        let mut out = HashMap::new();
        for r in rows {
            let job = job_of(&r)?;
            if let Trigger::Schedule(sid) = Trigger::decode(&r.try_get::<String, _>(1)?) {
                out.insert((job, sid), r.try_get::<i64, _>(2)?);
            }
        }
        Ok(out)
    }

    /// Per job, its latest successful run: when it finished and its id. Dependent jobs start from it.
    pub async fn last_successes(&self) -> Result<HashMap<JobId, (i64, String)>, JobStoreError> {
        let rows = sqlx::query(
            "SELECT r.job_id, r.finished_at, r.id FROM chronos_runs r \
             JOIN (SELECT job_id, MAX(finished_at) AS f FROM chronos_runs WHERE status = 'SUCCESS' GROUP BY job_id) m \
             ON r.job_id = m.job_id AND r.finished_at = m.f WHERE r.status = 'SUCCESS'",
        )
        .fetch_all(self.store.pool())
        .await?;
        let mut out = HashMap::new();
        for r in rows {
            let job = job_of(&r)?;
            out.insert(job, (r.try_get::<i64, _>(1)?, r.try_get::<String, _>(2)?));
        }
        Ok(out)
    }

    /// Per job, when its latest run triggered by its parents was created.
    pub async fn last_dependency_runs(&self) -> Result<HashMap<JobId, i64>, JobStoreError> {
        let rows = sqlx::query(
            "SELECT job_id, MAX(created_at) FROM chronos_runs WHERE trigger_kind = 'parents' GROUP BY job_id",
        )
        .fetch_all(self.store.pool())
        .await?;
        let mut out = HashMap::new();
        for r in rows {
            let job = job_of(&r)?;
            out.insert(job, r.try_get::<i64, _>(1)?);
        }
        Ok(out)
    }

    pub async fn stats(&self) -> Result<HashMap<JobId, JobStats>, JobStoreError> {
        let rows = sqlx::query(
            "SELECT job_id, success_count, error_count, missed_count, last_success, last_error FROM chronos_stats",
        )
        .fetch_all(self.store.pool())
        .await?;
        let mut out = HashMap::new();
        for r in rows {
            let job = job_of(&r)?;
            out.insert(
                job,
                JobStats {
                    success_count: r.try_get::<i64, _>(1)? as u64,
                    error_count: r.try_get::<i64, _>(2)? as u64,
                    missed_count: r.try_get::<i64, _>(3)? as u64,
                    last_success: r.try_get(4)?,
                    last_error: r.try_get(5)?,
                },
            );
        }
        Ok(out)
    }

    /// Deletes finished runs of `job` beyond the newest `keep`, except the latest of each trigger (each
    /// schedule's latest tick is where watching it resumes after a restart).
    pub async fn prune(&self, job: &JobId, keep: i64) -> Result<u64, JobStoreError> {
        let (kind, term) = self.store.fence_args();
        let n = sqlx::query(&format!(
            "DELETE FROM chronos_runs WHERE job_id = $1 AND {} \
               AND status IN ('SUCCESS', 'FAILED', 'MISSED', 'SKIPPED') \
               AND id NOT IN (SELECT id FROM chronos_runs WHERE job_id = $1 ORDER BY created_at DESC, scheduled_at DESC LIMIT $2) \
               AND scheduled_at < (SELECT MAX(r2.scheduled_at) FROM chronos_runs r2 \
                                   WHERE r2.job_id = chronos_runs.job_id AND r2.trigger_kind = chronos_runs.trigger_kind)",
            self.store.fence_condition(3)
        ))
        .bind(job.as_str())
        .bind(keep)
        .bind(kind)
        .bind(term)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        self.store.written(n).await?;
        Ok(n)
    }

    /// The framework id the master gave this framework, once it has one.
    pub async fn framework_id(&self) -> Result<Option<String>, JobStoreError> {
        let row = sqlx::query("SELECT framework_id FROM chronos_framework WHERE name = 'chronos'")
            .fetch_optional(self.store.pool())
            .await?;
        row.map(|r| Ok(r.try_get::<String, _>(0)?)).transpose()
    }

    pub async fn set_framework_id(&self, id: &str) -> Result<(), JobStoreError> {
        let (kind, term) = self.store.fence_args();
        let rows = sqlx::query(&format!(
            "INSERT INTO chronos_framework (name, framework_id) SELECT 'chronos', $1 WHERE {} \
             ON CONFLICT (name) DO UPDATE SET framework_id = excluded.framework_id",
            self.store.fence_condition(2)
        ))
        .bind(id)
        .bind(kind)
        .bind(term)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(self.store.written(rows).await?)
    }
}

/// What the cron scheduler reads and writes, with [`JobStore`]'s meaning for each call. [`JobStore`] keeps
/// it in the database; a simulation may keep it in memory.
#[async_trait::async_trait]
pub trait CronStore: Send + Sync + 'static {
    async fn put_job(&self, job: &Job) -> Result<(), JobStoreError>;
    async fn delete_job(&self, id: &JobId) -> Result<bool, JobStoreError>;
    async fn jobs(&self) -> Result<Vec<Job>, JobStoreError>;
    async fn insert_runs(&self, runs: &[Run]) -> Result<Vec<bool>, JobStoreError>;
    async fn update_runs(&self, runs: &[(Run, bool)]) -> Result<(), JobStoreError>;
    async fn set_tails(&self, job: &JobId, run: &str, stdout: &str, stderr: &str) -> Result<(), JobStoreError>;
    async fn add_missed(&self, job: &JobId, n: u64) -> Result<(), JobStoreError>;
    async fn open_runs(&self) -> Result<Vec<Run>, JobStoreError>;
    async fn run_by_trigger(&self, job: &JobId, trigger_key: &str) -> Result<Option<Run>, JobStoreError>;
    async fn run(&self, job: &JobId, id: &str) -> Result<Option<Run>, JobStoreError>;
    async fn last_ticks(&self) -> Result<HashMap<(JobId, String), i64>, JobStoreError>;
    async fn last_successes(&self) -> Result<HashMap<JobId, (i64, String)>, JobStoreError>;
    async fn last_dependency_runs(&self) -> Result<HashMap<JobId, i64>, JobStoreError>;
    async fn stats(&self) -> Result<HashMap<JobId, JobStats>, JobStoreError>;
    async fn prune(&self, job: &JobId, keep: i64) -> Result<u64, JobStoreError>;
    async fn framework_id(&self) -> Result<Option<String>, JobStoreError>;
    async fn set_framework_id(&self, id: &str) -> Result<(), JobStoreError>;
}

#[async_trait::async_trait]
impl CronStore for JobStore {
    async fn put_job(&self, job: &Job) -> Result<(), JobStoreError> {
        JobStore::put_job(self, job).await
    }
    async fn delete_job(&self, id: &JobId) -> Result<bool, JobStoreError> {
        JobStore::delete_job(self, id).await
    }
    async fn jobs(&self) -> Result<Vec<Job>, JobStoreError> {
        JobStore::jobs(self).await
    }
    async fn insert_runs(&self, runs: &[Run]) -> Result<Vec<bool>, JobStoreError> {
        JobStore::insert_runs(self, runs).await
    }
    async fn update_runs(&self, runs: &[(Run, bool)]) -> Result<(), JobStoreError> {
        JobStore::update_runs(self, runs).await
    }
    async fn set_tails(&self, job: &JobId, run: &str, stdout: &str, stderr: &str) -> Result<(), JobStoreError> {
        JobStore::set_tails(self, job, run, stdout, stderr).await
    }
    async fn add_missed(&self, job: &JobId, n: u64) -> Result<(), JobStoreError> {
        JobStore::add_missed(self, job, n).await
    }
    async fn open_runs(&self) -> Result<Vec<Run>, JobStoreError> {
        JobStore::open_runs(self).await
    }
    async fn run_by_trigger(&self, job: &JobId, trigger_key: &str) -> Result<Option<Run>, JobStoreError> {
        JobStore::run_by_trigger(self, job, trigger_key).await
    }
    async fn run(&self, job: &JobId, id: &str) -> Result<Option<Run>, JobStoreError> {
        JobStore::run(self, job, id).await
    }
    async fn last_ticks(&self) -> Result<HashMap<(JobId, String), i64>, JobStoreError> {
        JobStore::last_ticks(self).await
    }
    async fn last_successes(&self) -> Result<HashMap<JobId, (i64, String)>, JobStoreError> {
        JobStore::last_successes(self).await
    }
    async fn last_dependency_runs(&self) -> Result<HashMap<JobId, i64>, JobStoreError> {
        JobStore::last_dependency_runs(self).await
    }
    async fn stats(&self) -> Result<HashMap<JobId, JobStats>, JobStoreError> {
        JobStore::stats(self).await
    }
    async fn prune(&self, job: &JobId, keep: i64) -> Result<u64, JobStoreError> {
        JobStore::prune(self, job, keep).await
    }
    async fn framework_id(&self) -> Result<Option<String>, JobStoreError> {
        JobStore::framework_id(self).await
    }
    async fn set_framework_id(&self, id: &str) -> Result<(), JobStoreError> {
        JobStore::set_framework_id(self, id).await
    }
}

fn bind_run<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    r: &'q Run,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(r.job_id.as_str())
        .bind(&r.id)
        .bind(&r.trigger_key)
        .bind(r.trigger.encode())
        .bind(r.scheduled_at)
        .bind(r.created_at)
        .bind(r.status.name())
        .bind(i64::from(r.attempts))
        .bind(serde_json::to_string(&r.task_ids).unwrap_or_else(|_| "[]".into()))
        .bind(r.started_at)
        .bind(r.finished_at)
        .bind(r.exit_code.map(i64::from))
        .bind(&r.message)
        .bind(&r.stdout_tail)
        .bind(&r.stderr_tail)
}

/// The job id in a row's first column.
fn job_of(r: &AnyRow) -> Result<JobId, JobStoreError> {
    JobId::parse(r.try_get::<String, _>(0)?).map_err(|e| JobStoreError::BadRow(e.to_string()))
}

fn run_from_row(r: &AnyRow) -> Result<Run, JobStoreError> {
    let bad = |what: &str| JobStoreError::BadRow(what.to_owned());
    let status: String = r.try_get(6)?;
    let task_ids: String = r.try_get(8)?;
    Ok(Run {
        job_id: job_of(r)?,
        id: r.try_get(1)?,
        trigger_key: r.try_get(2)?,
        trigger: Trigger::decode(&r.try_get::<String, _>(3)?),
        scheduled_at: r.try_get(4)?,
        created_at: r.try_get(5)?,
        status: RunStatus::parse(&status).ok_or_else(|| bad(&format!("unknown status {status}")))?,
        attempts: u32::try_from(r.try_get::<i64, _>(7)?).map_err(|_| bad("attempts"))?,
        task_ids: serde_json::from_str(&task_ids)?,
        started_at: r.try_get(9)?,
        finished_at: r.try_get(10)?,
        exit_code: r.try_get::<Option<i64>, _>(11)?.map(|c| c as i32),
        message: r.try_get(12)?,
        stdout_tail: r.try_get(13)?,
        stderr_tail: r.try_get(14)?,
    })
}
