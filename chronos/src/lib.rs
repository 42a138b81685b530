//! Keel's cron jobs framework (issue #5): batch jobs on cron schedules or Chronos's ISO 8601 intervals, with
//! dependencies, retries, deadlines and run history, behind Metronome's `/v1/jobs` and Chronos's
//! `/scheduler` REST APIs.
//!
//! - [`schedule`]: fire times (cron in a time zone, repeating intervals), pure and DST-correct;
//! - [`job`]: the job and run model, with its rules;
//! - [`store`]: jobs, runs and counters in PostgreSQL or SQLite;
//! - [`scheduler`]: the framework actor that fires each tick exactly once;
//! - [`dependencies`]: when a job that runs after its parents is due a run, pure;
//! - [`pool`]: which pending run goes on which held offer, a pure step of the actor;
//! - [`runs`]: the open runs, their tasks and what changed since the last write, and what a failed attempt
//!   leads to;
//! - [`timers`]: the actor's queues of runs ordered by when something is due for them;
//! - [`forms`] and [`api`]: the JSON forms and REST endpoints.

pub mod api;
pub mod dependencies;
pub mod forms;
pub mod job;
pub mod pool;
pub mod runs;
pub mod schedule;
pub mod scheduler;
pub mod store;
pub mod timers;
