//! The scheduler actor on an injected clock: a test-driven clock takes it through a daylight-saving gap and
//! a restart, with no real waiting. No master answers, so no tick can start: each is recorded, then missed
//! once its starting deadline passes, which shows exactly which instants fired and how often.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_chronos::job::{ConcurrencyPolicy, Job, JobId, Run, RunStatus, ScheduleExpr, ScheduleSpec, Trigger};
use keel_chronos::scheduler::{self, ChronosHandle, Clock, ManualClock, PutMode};
use keel_chronos::store::JobStore;
use tokio_util::sync::CancellationToken;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Where nothing listens: the driver keeps retrying, and no offer ever comes.
const NO_MASTER: &str = "http://127.0.0.1:1";

/// Moves the clock in 30-second steps, letting the scheduler catch up after each.
async fn advance(clock: &ManualClock, chronos: &ChronosHandle, by: Duration) {
    let step = Duration::from_secs(30);
    let mut done = Duration::ZERO;
    while done < by {
        clock.advance(step);
        done += step;
        // Two round trips through the actor: the second is answered after a full pass at the new time.
        chronos.view(None).await.unwrap();
        chronos.view(None).await.unwrap();
    }
}

#[tokio::test]
async fn ticks_follow_the_injected_clock_through_a_dst_gap_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("k.db").display());
    let jobs = JobStore::new(keel_core::store::Store::connect(&url).await.unwrap());
    let id = JobId::parse("nightly").unwrap();

    // 00:00 in Berlin on the night the clocks skip 02:00-03:00.
    let clock = ManualClock::new(utc("2026-03-28T23:00:00Z"));
    let shutdown = CancellationToken::new();
    let chronos =
        scheduler::start(NO_MASTER, jobs.clone(), Clock::Manual(clock.clone()), shutdown.clone()).await.unwrap();
    let mut job = Job::new(id.clone());
    job.run.cmd = Some("backup".into());
    job.schedules.push(ScheduleSpec {
        id: "night".into(),
        expr: ScheduleExpr::Cron("30 2 * * *".into()),
        time_zone: "Europe/Berlin".into(),
        concurrency_policy: ConcurrencyPolicy::Forbid,
        starting_deadline_seconds: 60,
        enabled: true,
    });
    let mut paused = job.clone();
    chronos.put(job, PutMode::Create).await.unwrap();
    // A disabled job with the same schedule never fires.
    let mut minutely = paused.clone();
    paused.id = JobId::parse("paused").unwrap();
    paused.disabled = true;
    chronos.put(paused, PutMode::Create).await.unwrap();
    // A job every minute, for its history to outgrow what is kept.
    minutely.id = JobId::parse("minutely").unwrap();
    minutely.schedules[0].expr = ScheduleExpr::Cron("* * * * *".into());
    chronos.put(minutely, PutMode::Create).await.unwrap();
    let view = chronos.view(Some(id.clone())).await.unwrap();
    // 02:30 does not exist that night: the tick is at the first instant after the gap, 03:00 CEST.
    assert_eq!(view[0].next_runs, vec![Some(utc("2026-03-29T01:00:00Z"))]);

    advance(&clock, &chronos, Duration::from_secs(3 * 3600)).await;
    let runs = jobs.runs(&id, 100).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].scheduled_at, utc("2026-03-29T01:00:00Z").timestamp_millis());
    assert_eq!(runs[0].status, RunStatus::Missed);
    assert_eq!(runs[0].message, "missed: could not start within startingDeadlineSeconds");
    // Missed at its deadline by the injected clock (within one 30-second step).
    let finished = runs[0].finished_at.unwrap();
    let deadline = utc("2026-03-29T01:01:00Z").timestamp_millis();
    assert!((deadline..deadline + 30_000).contains(&finished), "{finished}");

    // Three hours of a job every minute: every tick counted, the history pruned to about 100 runs (it is
    // pruned every 10 minutes), the latest tick kept.
    let minutely = JobId::parse("minutely").unwrap();
    let stats = chronos.view(Some(minutely.clone())).await.unwrap()[0].stats.clone();
    assert!((178..=180).contains(&stats.missed_count), "{stats:?}");
    let kept = jobs.runs(&minutely, 1000).await.unwrap();
    assert!((100..=111).contains(&kept.len()), "{} runs kept", kept.len());
    assert_eq!(kept.iter().map(|r| r.scheduled_at).max(), Some(utc("2026-03-29T02:00:00Z").timestamp_millis()));

    // A restart: a new scheduler on the same store and clock.
    shutdown.cancel();
    let shutdown = CancellationToken::new();
    let chronos =
        scheduler::start(NO_MASTER, jobs.clone(), Clock::Manual(clock.clone()), shutdown.clone()).await.unwrap();
    advance(&clock, &chronos, Duration::from_secs(24 * 3600)).await;
    let mut ticks: Vec<i64> = jobs.runs(&id, 100).await.unwrap().iter().map(|r| r.scheduled_at).collect();
    ticks.sort_unstable();
    // The next night is an ordinary 02:30 CEST; the night before is not run again.
    assert_eq!(ticks, [utc("2026-03-29T01:00:00Z").timestamp_millis(), utc("2026-03-30T00:30:00Z").timestamp_millis()]);
    assert_eq!(chronos.view(Some(id)).await.unwrap()[0].stats.missed_count, 2);
    assert!(jobs.runs(&JobId::parse("paused").unwrap(), 100).await.unwrap().is_empty());
    shutdown.cancel();
}

/// A tick whose record landed although the store answered an error (so the actor does not know it) is
/// reloaded and fired, never skipped as "already recorded": here it is written behind the actor's back
/// before its instant, and must still be handled (missed, as no master answers) rather than left INITIAL.
#[tokio::test]
async fn a_tick_recorded_by_an_ambiguous_write_is_reloaded_and_fired() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("k.db").display());
    let jobs = JobStore::new(keel_core::store::Store::connect(&url).await.unwrap());
    let id = JobId::parse("ambiguous").unwrap();
    let clock = ManualClock::new(utc("2026-06-01T00:00:00Z"));
    let shutdown = CancellationToken::new();
    let chronos =
        scheduler::start(NO_MASTER, jobs.clone(), Clock::Manual(clock.clone()), shutdown.clone()).await.unwrap();
    let mut job = Job::new(id.clone());
    job.run.cmd = Some("true".into());
    job.schedules.push(ScheduleSpec {
        id: "s".into(),
        expr: ScheduleExpr::Cron("5 0 * * *".into()),
        time_zone: "UTC".into(),
        concurrency_policy: ConcurrencyPolicy::Allow,
        starting_deadline_seconds: 60,
        enabled: true,
    });
    chronos.put(job, PutMode::Create).await.unwrap();
    let tick = utc("2026-06-01T00:05:00Z").timestamp_millis();
    let earlier_try = Run::new(id.clone(), Trigger::Schedule("s".into()), tick.to_string(), tick, tick - 60_000);
    assert_eq!(jobs.insert_runs(std::slice::from_ref(&earlier_try)).await.unwrap(), [true]);

    advance(&clock, &chronos, Duration::from_secs(10 * 60)).await;
    let runs = jobs.runs(&id, 10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].id, earlier_try.id);
    assert_eq!(runs[0].status, RunStatus::Missed, "the tick was handled, not skipped: {runs:#?}");
    shutdown.cancel();
}

/// Ticks that passed while no scheduler ran are recorded as missed at the restart, and counted in the
/// stored statistics as well as in the actor's (they are stored finished, so no later update counts them).
#[tokio::test]
async fn ticks_missed_while_down_are_counted_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("k.db").display());
    let jobs = JobStore::new(keel_core::store::Store::connect(&url).await.unwrap());
    let id = JobId::parse("hourly").unwrap();
    let clock = ManualClock::new(utc("2026-06-01T00:00:30Z"));
    let shutdown = CancellationToken::new();
    let chronos =
        scheduler::start(NO_MASTER, jobs.clone(), Clock::Manual(clock.clone()), shutdown.clone()).await.unwrap();
    let mut job = Job::new(id.clone());
    job.run.cmd = Some("report".into());
    job.schedules.push(ScheduleSpec {
        id: "h".into(),
        expr: ScheduleExpr::Cron("0 * * * *".into()),
        time_zone: "UTC".into(),
        concurrency_policy: ConcurrencyPolicy::Allow,
        starting_deadline_seconds: 60,
        enabled: true,
    });
    chronos.put(job, PutMode::Create).await.unwrap();
    shutdown.cancel();
    // Down for good before the clock moves: the actor no longer answers.
    while chronos.view(None).await.is_ok() {
        tokio::task::yield_now().await;
    }

    // Down from 00:00:30 to 05:00:30: the 01:00 to 04:00 ticks are missed; 05:00 is within its deadline.
    clock.advance(Duration::from_secs(5 * 3600));
    let shutdown = CancellationToken::new();
    let chronos =
        scheduler::start(NO_MASTER, jobs.clone(), Clock::Manual(clock.clone()), shutdown.clone()).await.unwrap();
    assert_eq!(chronos.view(Some(id.clone())).await.unwrap()[0].stats.missed_count, 4);
    assert_eq!(jobs.stats().await.unwrap()[&id].missed_count, 4, "the store counts them too");
    let missed = jobs.runs(&id, 100).await.unwrap().into_iter().filter(|r| r.status == RunStatus::Missed).count();
    assert_eq!(missed, 4);
    shutdown.cancel();
}
