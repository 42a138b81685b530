//! Elections on the store's leases, with real stores: one leader at a time, a takeover after a leader's
//! lease is taken (or it resigns), and a leader that finds its lease gone steps down.

use std::time::{Duration, Instant};

use keel_core::election::{Election, LEASE_TTL, Standing};
use keel_core::store::Store;
use tokio_util::sync::CancellationToken;

async fn stores() -> Vec<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::connect(&format!("sqlite:{}", dir.path().join("keel.db").display())).await.unwrap();
    let mut out = vec![(sqlite, dir)];
    if let Some(url) = keel_core::testing::postgres_database().await {
        out.push((Store::connect(&url).await.unwrap(), tempfile::tempdir().unwrap()));
    }
    out
}

#[tokio::test]
async fn one_leads_a_standby_takes_over_and_a_deposed_leader_steps_down() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        let shutdown = CancellationToken::new();
        let a = Election::new(store.clone(), "test", "http://a").lead(&shutdown).await.expect("a leads");
        // b stands by, knowing a leads.
        let b = Election::new(store.clone(), "test", "http://b");
        let mut standing = b.watch();
        let b_shutdown = shutdown.child_token();
        let b_lead = tokio::spawn({
            let s = b_shutdown.clone();
            async move { b.lead(&s).await }
        });
        let told = tokio::time::timeout(
            Duration::from_secs(5),
            standing.wait_for(|s| matches!(s, Standing::Standby { leader: Some(_) })),
        )
        .await
        .expect("b learns who leads")
        .unwrap()
        .clone();
        assert_eq!(told, Standing::Standby { leader: Some("http://a".into()) }, "{backend:?}");
        // Another process with a's URL (a restart of a, or a mistake) is another candidate: it waits too.
        let twin = Election::new(store.clone(), "test", "http://a");
        let twin_lead = tokio::spawn({
            let s = b_shutdown.clone();
            async move { twin.lead(&s).await }
        });
        // a keeps its lease past its TTL by renewing it.
        tokio::time::sleep(LEASE_TTL + Duration::from_millis(500)).await;
        assert!(!b_lead.is_finished(), "{backend:?}: b must not lead while a renews");
        assert!(!twin_lead.is_finished(), "{backend:?}: nor may a process that shares a's URL");
        twin_lead.abort();
        // a resigns: b leads within moments, with a higher term.
        let a_term = a.term;
        let resigned = Instant::now();
        a.resign().await;
        let b = tokio::time::timeout(Duration::from_secs(2), b_lead).await.expect("b takes over").unwrap().unwrap();
        assert!(resigned.elapsed() < Duration::from_millis(1000), "{backend:?}: {:?}", resigned.elapsed());
        assert!(b.term > a_term, "{backend:?}");
        // Someone takes b's lease behind its back (as after a partition): b notices and steps down.
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE kind = 'test'").execute(store.pool()).await.unwrap();
        assert!(store.acquire_lease("test", "http://c", 60_000).await.unwrap().is_some());
        let lost = b.lost();
        tokio::time::timeout(Duration::from_secs(2), lost.cancelled()).await.expect("b steps down");
        shutdown.cancel();
    }
}
