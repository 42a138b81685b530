-- The cron jobs framework (chronos/): jobs, every run with its outcome, counters, and the framework id.
CREATE TABLE chronos_jobs (
    id         TEXT PRIMARY KEY,
    definition TEXT NOT NULL            -- the job as JSON (keel_chronos::job::Job)
);

-- One row per tick, manual start or dependency firing. (job_id, trigger_key) is unique: a scheduled
-- instant can never produce a second run, whatever restarts in between.
CREATE TABLE chronos_runs (
    job_id       TEXT NOT NULL,
    id           TEXT NOT NULL,
    trigger_key  TEXT NOT NULL,         -- the scheduled instant in milliseconds, for a tick
    trigger_kind TEXT NOT NULL,         -- schedule:ID | manual | parents
    scheduled_at BIGINT NOT NULL,       -- milliseconds since the Unix epoch, as every time here
    created_at   BIGINT NOT NULL,
    status       TEXT NOT NULL,         -- INITIAL STARTING ACTIVE SUCCESS FAILED MISSED SKIPPED
    attempts     BIGINT NOT NULL,
    task_ids     TEXT NOT NULL,         -- JSON array
    started_at   BIGINT,
    finished_at  BIGINT,
    exit_code    BIGINT,
    message      TEXT NOT NULL,
    stdout_tail  TEXT NOT NULL,
    stderr_tail  TEXT NOT NULL,
    PRIMARY KEY (job_id, id),
    UNIQUE (job_id, trigger_key)
);
CREATE INDEX chronos_runs_status ON chronos_runs (status);
CREATE INDEX chronos_runs_job_created ON chronos_runs (job_id, created_at);

CREATE TABLE chronos_stats (
    job_id        TEXT PRIMARY KEY,
    success_count BIGINT NOT NULL,
    error_count   BIGINT NOT NULL,
    missed_count  BIGINT NOT NULL,
    last_success  BIGINT,
    last_error    BIGINT
);

CREATE TABLE chronos_framework (
    name         TEXT PRIMARY KEY,      -- always 'chronos'
    framework_id TEXT NOT NULL
);
