//! The job store on SQLite and PostgreSQL alike: what exactly-once ticks and restarts rely on.

use keel_chronos::job::{Job, JobId, Run, RunStatus, Trigger};
use keel_chronos::store::JobStore;
use keel_core::store::Store;

async fn stores() -> Vec<(&'static str, JobStore, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::connect(&format!("sqlite:{}", dir.path().join("k.db").display())).await.unwrap();
    let mut out = vec![("sqlite", JobStore::new(sqlite), dir)];
    if let Some(url) = keel_core::testing::postgres_database().await {
        out.push(("postgres", JobStore::new(Store::connect(&url).await.unwrap()), tempfile::tempdir().unwrap()));
    }
    out
}

fn id(s: &str) -> JobId {
    JobId::parse(s).unwrap()
}

fn tick(job: &str, schedule: &str, at: i64) -> Run {
    Run::new(id(job), Trigger::Schedule(schedule.into()), at.to_string(), at, at - 2000)
}

#[tokio::test]
async fn a_tick_is_recorded_once() {
    for (name, store, _dir) in stores().await {
        let first = tick("a", "s", 60_000);
        let again = tick("a", "s", 60_000);
        let other_job = tick("b", "s", 60_000);
        assert_eq!(store.insert_runs(&[first.clone(), other_job]).await.unwrap(), [true, true], "{name}");
        // The same job and instant: refused, and the stored run is untouched.
        let mut changed = again.clone();
        changed.message = "second".into();
        assert_eq!(store.insert_runs(&[changed, tick("a", "s", 120_000)]).await.unwrap(), [false, true], "{name}");
        let stored = store.run(&id("a"), &first.id).await.unwrap().unwrap();
        assert_eq!(stored, first, "{name}");
        assert_eq!(store.open_runs().await.unwrap().len(), 3, "{name}");
    }
}

#[tokio::test]
async fn outcomes_count_and_close_runs() {
    for (name, store, _dir) in stores().await {
        let mut ok = tick("a", "s", 60_000);
        let mut failed = tick("a", "s", 120_000);
        let mut missed = tick("a", "s", 180_000);
        store.insert_runs(&[ok.clone(), failed.clone(), missed.clone()]).await.unwrap();
        ok.status = RunStatus::Success;
        ok.attempts = 1;
        ok.task_ids = vec![ok.task_id(1)];
        ok.started_at = Some(60_010);
        ok.finished_at = Some(61_000);
        ok.exit_code = Some(0);
        ok.stdout_tail = "hello\n".into();
        failed.status = RunStatus::Failed;
        failed.finished_at = Some(125_000);
        failed.exit_code = Some(3);
        missed.status = RunStatus::Missed;
        missed.finished_at = Some(190_000);
        store.update_runs(&[(ok.clone(), true), (failed.clone(), true), (missed.clone(), true)]).await.unwrap();
        assert!(store.open_runs().await.unwrap().is_empty(), "{name}");
        assert_eq!(store.run(&id("a"), &ok.id).await.unwrap().unwrap(), ok, "{name}");
        store.add_missed(&id("a"), 7).await.unwrap();
        let stats = store.stats().await.unwrap()[&id("a")].clone();
        assert_eq!((stats.success_count, stats.error_count, stats.missed_count), (1, 1, 8), "{name}");
        assert_eq!((stats.last_success, stats.last_error), (Some(61_000), Some(125_000)), "{name}");
        assert_eq!(store.last_successes().await.unwrap()[&id("a")], (61_000, ok.id.clone()), "{name}");
        let history = store.runs(&id("a"), 10).await.unwrap();
        assert_eq!(history.len(), 3, "{name}");
        store.set_tails(&id("a"), &failed.id, "out", "err").await.unwrap();
        let f = store.run(&id("a"), &failed.id).await.unwrap().unwrap();
        assert_eq!((f.stdout_tail.as_str(), f.stderr_tail.as_str()), ("out", "err"), "{name}");
    }
}

#[tokio::test]
async fn pruning_keeps_where_each_schedule_resumes() {
    for (name, store, _dir) in stores().await {
        // A frequent schedule, a daily one with one old tick, and manual runs.
        let mut runs = vec![tick("a", "daily", 1_000)];
        runs.extend((1..=20).map(|i| tick("a", "often", 10_000 + i * 1000)));
        runs.push(Run::new(id("a"), Trigger::Manual, "manual:1".into(), 50_000, 50_000));
        store.insert_runs(&runs).await.unwrap();
        let done: Vec<(Run, bool)> = runs
            .iter()
            .cloned()
            .map(|mut r| {
                r.status = RunStatus::Success;
                r.finished_at = Some(r.scheduled_at + 10);
                (r, true)
            })
            .collect();
        store.update_runs(&done).await.unwrap();
        let deleted = store.prune(&id("a"), 5).await.unwrap();
        assert!(deleted >= 15, "{name}: pruned {deleted}");
        let ticks = store.last_ticks().await.unwrap();
        assert_eq!(ticks[&(id("a"), "daily".to_owned())], 1_000, "{name}: the daily schedule's latest tick is kept");
        assert_eq!(ticks[&(id("a"), "often".to_owned())], 30_000, "{name}");
        assert_eq!(store.stats().await.unwrap()[&id("a")].success_count, 22, "{name}: counters are not pruned");
    }
}

#[tokio::test]
async fn jobs_and_the_framework_id_persist() {
    for (name, store, _dir) in stores().await {
        let mut job = Job::new(id("nightly"));
        job.run.cmd = Some("backup".into());
        store.put_job(&job).await.unwrap();
        job.description = "changed".into();
        store.put_job(&job).await.unwrap();
        store.put_job(&Job::new(id("another"))).await.unwrap();
        let jobs = store.jobs().await.unwrap();
        assert_eq!(jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["another", "nightly"], "{name}");
        assert_eq!(jobs[1], job, "{name}");
        store.insert_runs(&[tick("nightly", "s", 1000)]).await.unwrap();
        assert!(store.delete_job(&id("nightly")).await.unwrap(), "{name}");
        assert!(!store.delete_job(&id("nightly")).await.unwrap(), "{name}");
        assert!(store.open_runs().await.unwrap().is_empty(), "{name}: a deleted job's runs go with it");
        assert_eq!(store.framework_id().await.unwrap(), None, "{name}");
        store.set_framework_id("fw-1").await.unwrap();
        store.set_framework_id("fw-2").await.unwrap();
        assert_eq!(store.framework_id().await.unwrap().as_deref(), Some("fw-2"), "{name}");
    }
}

/// Once another instance leads, the database refuses every write of the deposed one. An insert of a tick is
/// then an error, never a "the run exists already" that would make the caller skip it.
#[tokio::test]
async fn a_deposed_leaders_writes_are_refused_by_the_database() {
    use keel_chronos::store::JobStoreError;
    use keel_core::store::StoreError;
    fn refused<T: std::fmt::Debug>(r: Result<T, JobStoreError>) -> bool {
        matches!(r, Err(JobStoreError::Store(StoreError::Fenced { .. })))
    }
    let dir = tempfile::tempdir().unwrap();
    let mut raws = vec![Store::connect(&format!("sqlite:{}", dir.path().join("k.db").display())).await.unwrap()];
    if let Some(url) = keel_core::testing::postgres_database().await {
        raws.push(Store::connect(&url).await.unwrap());
    }
    for raw in raws {
        let backend = raw.backend();
        let t1 = raw.acquire_lease("chronos", "http://a", 60_000).await.unwrap().unwrap();
        let a = JobStore::new(raw.fenced("chronos", t1));
        a.put_job(&Job::new(id("nightly"))).await.unwrap();
        let first = tick("nightly", "s", 60_000);
        assert_eq!(a.insert_runs(std::slice::from_ref(&first)).await.unwrap(), [true], "{backend:?}");
        a.set_framework_id("fw-1").await.unwrap();

        raw.resign_lease("chronos", "http://a", t1).await.unwrap();
        let t2 = raw.acquire_lease("chronos", "http://b", 60_000).await.unwrap().unwrap();
        let many: Vec<Run> = (2..100).map(|i| tick("nightly", "s", i * 60_000)).collect();
        assert!(refused(a.insert_runs(&many).await), "{backend:?}: a batch");
        assert!(refused(a.insert_runs(&[tick("nightly", "s", 6_000_000)]).await), "{backend:?}: one");
        assert!(refused(a.insert_runs(std::slice::from_ref(&first)).await), "{backend:?}: an existing one");
        let mut done = first.clone();
        done.status = RunStatus::Success;
        done.finished_at = Some(61_000);
        assert!(refused(a.update_runs(&[(done.clone(), true)]).await), "{backend:?}");
        assert!(refused(a.set_tails(&id("nightly"), &first.id, "out", "err").await), "{backend:?}");
        assert!(refused(a.add_missed(&id("nightly"), 3).await), "{backend:?}");
        assert!(refused(a.put_job(&Job::new(id("other"))).await), "{backend:?}");
        assert!(refused(a.delete_job(&id("nightly")).await), "{backend:?}");
        assert!(refused(a.set_framework_id("fw-2").await), "{backend:?}");

        let b = JobStore::new(raw.fenced("chronos", t2));
        assert_eq!(b.open_runs().await.unwrap(), vec![first.clone()], "{backend:?}: nothing was written");
        assert!(b.stats().await.unwrap().is_empty(), "{backend:?}");
        assert_eq!(b.jobs().await.unwrap().len(), 1, "{backend:?}");
        assert_eq!(b.framework_id().await.unwrap().as_deref(), Some("fw-1"), "{backend:?}");
        // The new leader's writes pass, and a tick it finds recorded is "not new", not an error.
        assert_eq!(b.insert_runs(&[first.clone(), tick("nightly", "s", 120_000)]).await.unwrap(), [false, true]);
        b.update_runs(&[(done, true)]).await.unwrap();
        assert_eq!(b.stats().await.unwrap()[&id("nightly")].success_count, 1, "{backend:?}");
        assert_eq!(b.prune(&id("nightly"), 100).await.unwrap(), 0, "{backend:?}");
    }
}

/// Writing a finished run again (after an error whose commit may have landed) counts it once, and a run is
/// found by its trigger, where an ambiguous insert is looked for.
#[tokio::test]
async fn a_finished_run_written_twice_counts_once() {
    for (name, store, _dir) in stores().await {
        let run = Run::new(id("child"), Trigger::Parents, "after:parent/r1".into(), 1000, 1000);
        assert_eq!(store.run_by_trigger(&id("child"), "after:parent/r1").await.unwrap(), None, "{name}");
        store.insert_runs(std::slice::from_ref(&run)).await.unwrap();
        assert_eq!(store.run_by_trigger(&id("child"), "after:parent/r1").await.unwrap().as_ref(), Some(&run));
        let mut done = run.clone();
        done.status = RunStatus::Success;
        done.finished_at = Some(2000);
        store.update_runs(&[(done.clone(), true)]).await.unwrap();
        store.update_runs(&[(done.clone(), true)]).await.unwrap();
        assert_eq!(store.stats().await.unwrap()[&id("child")].success_count, 1, "{name}");
        assert_eq!(store.run(&id("child"), &run.id).await.unwrap(), Some(done), "{name}");
    }
}
