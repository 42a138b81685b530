//! The store conformance suite: one set of checks, run against SQLite and PostgreSQL alike.

use keel_core::ids::{AgentId, FrameworkId};
use keel_core::store::{AgentRecord, Backend, FrameworkRecord, Store, StoreError};
use keel_core::testing;

/// Every backend available here: SQLite always, PostgreSQL when configured (required under CI).
async fn stores() -> Vec<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::connect(&format!("sqlite:{}", dir.path().join("keel.db").display())).await.unwrap();
    let mut out = vec![(sqlite, dir)];
    if let Some(url) = testing::postgres_database().await {
        out.push((Store::connect(&url).await.unwrap(), tempfile::tempdir().unwrap()));
    }
    out
}

fn agent(id: &str) -> AgentRecord {
    AgentRecord {
        id: AgentId::parse(id).unwrap(),
        hostname: format!("{id}.example"),
        resources: "cpus:4;mem:1024;disk:10;ports:[31000-31010]".parse().unwrap(),
        attributes: vec![("rack".into(), "r1".into()), ("zone".into(), "a".into())],
        registered_at: 1_700_000_000_000,
    }
}

fn framework(id: &str) -> FrameworkRecord {
    FrameworkRecord {
        id: FrameworkId::parse(id).unwrap(),
        name: "marathon".into(),
        role: "prod".into(),
        failover_timeout_seconds: 604800.5,
        webui_url: "http://x".into(),
        registered_at: 1_700_000_000_001,
        removed_at: None,
    }
}

#[tokio::test]
async fn agents_round_trip_and_update_in_place() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        assert!(store.agents().await.unwrap().is_empty(), "{backend:?}");
        store.put_agent(&agent("a2")).await.unwrap();
        store.put_agent(&agent("a1")).await.unwrap();
        let mut changed = agent("a1");
        changed.resources = "cpus:8;mem:2048".parse().unwrap();
        changed.registered_at = 5; // registration time is kept from the first insert
        store.put_agent(&changed).await.unwrap();
        let agents = store.agents().await.unwrap();
        assert_eq!(agents.len(), 2, "{backend:?}");
        assert_eq!(agents[0].id.as_str(), "a1", "{backend:?}: ordered by id");
        assert_eq!(agents[0].resources, changed.resources, "{backend:?}");
        assert_eq!(agents[0].registered_at, 1_700_000_000_000, "{backend:?}");
        assert_eq!(agents[1], agent("a2"), "{backend:?}");
        store.remove_agent(&AgentId::parse("a2").unwrap()).await.unwrap();
        assert_eq!(store.agents().await.unwrap().len(), 1, "{backend:?}");
    }
}

#[tokio::test]
async fn frameworks_round_trip_and_removal_is_remembered() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        store.put_framework(&framework("f1")).await.unwrap();
        store.put_framework(&framework("f2")).await.unwrap();
        assert_eq!(store.frameworks().await.unwrap(), vec![framework("f1"), framework("f2")], "{backend:?}");
        store.remove_framework(&FrameworkId::parse("f1").unwrap(), 42).await.unwrap();
        let all = store.frameworks().await.unwrap();
        assert_eq!(all[0].removed_at, Some(42), "{backend:?}");
        assert_eq!(all[1].removed_at, None, "{backend:?}");
    }
}

#[tokio::test]
async fn data_survives_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![format!("sqlite:{}", dir.path().join("k.db").display())];
    if let Some(url) = testing::postgres_database().await {
        urls.push(url);
    }
    for url in urls {
        let store = Store::connect(&url).await.unwrap();
        store.put_framework(&framework("f1")).await.unwrap();
        store.close().await;
        // Migrations run again on connect and must be idempotent.
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(store.frameworks().await.unwrap(), vec![framework("f1")]);
    }
}

#[tokio::test]
async fn bad_urls_and_corrupt_rows_are_errors_not_panics() {
    assert!(matches!(Store::connect("mysql://x").await, Err(StoreError::BadUrl(_))));
    let err = Store::connect("postgres://nobody@127.0.0.1:1/none").await.unwrap_err();
    assert!(matches!(err, StoreError::Connect { .. }), "{err}");
    assert!(!err.to_string().contains("secret"));

    for (store, _dir) in stores().await {
        sqlx::query("INSERT INTO agents (id, hostname, resources, attributes, registered_at) VALUES ('bad/id', 'h', 'cpus:1', '', 0)")
            .execute(store.pool())
            .await
            .unwrap();
        let err = store.agents().await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{:?}: {err}", store.backend());
        assert!(store.backend() == Backend::Sqlite || store.backend() == Backend::Postgres);
    }
}
