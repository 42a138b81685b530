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
        principal: Some("agent-1".into()),
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
        principal: Some("fw-1".into()),
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

/// Tokens: one active per name; revoking frees the name; only hashes are stored. The first principal of an
/// agent or framework id stays its owner.
#[tokio::test]
async fn tokens_audit_and_owners() {
    use keel_core::auth::Role;
    use keel_core::store::{AuditRecord, TokenRecord};
    for (store, _dir) in stores().await {
        let backend = store.backend();
        let token = |id: &str, name: &str| TokenRecord {
            id: id.into(),
            name: name.into(),
            role: Role::Framework,
            framework_roles: vec!["a".into(), "b".into()],
            hash: format!("hash-{id}"),
            created_at: 1,
            revoked_at: None,
        };
        store.create_token(&token("t1", "ops")).await.unwrap();
        assert!(store.create_token(&token("t2", "ops")).await.is_err(), "{backend:?}: two active 'ops'");
        assert_eq!(store.active_tokens().await.unwrap(), vec![token("t1", "ops")], "{backend:?}");
        assert_eq!(store.revoke_token("ops", 5).await.unwrap().as_deref(), Some("t1"));
        assert_eq!(store.revoke_token("ops", 6).await.unwrap(), None);
        assert!(store.active_tokens().await.unwrap().is_empty());
        store.create_token(&token("t2", "ops")).await.unwrap();
        let all = store.tokens().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].revoked_at, Some(5));

        let rec = |at: i64| AuditRecord {
            at,
            principal: "ops".into(),
            action: "POST /v2/apps".into(),
            target: "/v2/apps".into(),
            outcome: "ok".into(),
            status: 201,
        };
        store.append_audit(&[rec(1), rec(2), rec(3)]).await.unwrap();
        let newest = store.audit(2, None).await.unwrap();
        assert_eq!(newest.iter().map(|r| r.at).collect::<Vec<_>>(), [3, 2], "{backend:?}");
        assert_eq!(store.audit(10, Some(2)).await.unwrap(), vec![rec(1)]);

        let mut a = agent("owned");
        store.put_agent(&a).await.unwrap();
        a.principal = Some("rogue".into());
        store.put_agent(&a).await.unwrap();
        let stored = store.agents().await.unwrap().into_iter().find(|r| r.id.as_str() == "owned").unwrap();
        assert_eq!(stored.principal.as_deref(), Some("agent-1"), "{backend:?}: the owner changed");
        let mut f = framework("owned-fw");
        store.put_framework(&f).await.unwrap();
        f.principal = Some("rogue".into());
        store.put_framework(&f).await.unwrap();
        let stored = store.frameworks().await.unwrap().into_iter().find(|r| r.id.as_str() == "owned-fw").unwrap();
        assert_eq!(stored.principal.as_deref(), Some("fw-1"));
    }
}

#[tokio::test]
async fn the_audit_record_is_trimmed_to_the_newest() {
    use keel_core::store::AuditRecord;
    for (store, _dir) in stores().await {
        let rec = |at: i64| AuditRecord {
            at,
            principal: "-".into(),
            action: "POST /x".into(),
            target: "/x".into(),
            outcome: "denied".into(),
            status: 401,
        };
        store.append_audit(&(1..=10).map(rec).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(store.trim_audit(3).await.unwrap(), 7, "{:?}", store.backend());
        let left: Vec<i64> = store.audit(100, None).await.unwrap().iter().map(|r| r.at).collect();
        assert_eq!(left, [10, 9, 8]);
    }
}

/// Secrets are stored sealed, replaced in place, listed by name only, and bounded in name and size.
#[tokio::test]
async fn secrets_round_trip_sealed_and_bounded() {
    use keel_core::secrets::{self, SecretKey, Secrets};
    for (store, dir) in stores().await {
        let (key, _) = SecretKey::load_or_create(&dir.path().join("secrets.key")).unwrap();
        secrets::put(&store, &key, "db", "one").await.unwrap();
        secrets::put(&store, &key, "db", "two").await.unwrap();
        assert!(secrets::put(&store, &key, "bad name", "x").await.is_err());
        assert!(secrets::put(&store, &key, "big", &"x".repeat(secrets::MAX_VALUE + 1)).await.is_err());
        let names: Vec<String> = secrets::list(&store).await.unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["db"], "{:?}", store.backend());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let open = Secrets::start(store.clone(), key, shutdown.clone()).await.unwrap();
        assert_eq!(open.get("db").as_deref(), Some("two"));
        shutdown.cancel();
        assert!(secrets::delete(&store, "db").await.unwrap());
        assert!(!secrets::delete(&store, "db").await.unwrap());
    }
}

/// Leases: one holder at a time, a term that rises on every acquisition, renewals only by the holder, and
/// a deposed holder's registry writes refused by the database itself.
#[tokio::test]
async fn leases_elect_one_holder_and_fence_the_deposed() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        assert_eq!(store.lease("master").await.unwrap(), None, "{backend:?}");
        let t1 = store.acquire_lease("master", "http://a", 60_000).await.unwrap().expect("a free lease is taken");
        assert_eq!(store.acquire_lease("master", "http://b", 60_000).await.unwrap(), None, "{backend:?}: b must wait");
        let view = store.lease("master").await.unwrap().unwrap();
        assert_eq!((view.holder.as_str(), view.term), ("http://a", t1), "{backend:?}");
        assert!(view.remaining_ms > 50_000, "{backend:?}: {view:?}");
        assert!(store.renew_lease("master", "http://a", t1, 60_000).await.unwrap(), "{backend:?}");
        assert!(!store.renew_lease("master", "http://b", t1, 60_000).await.unwrap(), "{backend:?}");
        // Another kind is another election.
        assert!(store.acquire_lease("marathon", "http://b", 60_000).await.unwrap().is_some(), "{backend:?}");

        // a's writes pass while it holds the lease.
        let a = store.fenced("master", t1);
        a.put_agent(&agent("a1")).await.unwrap();
        a.put_framework(&framework("f1")).await.unwrap();

        // a resigns; b takes over with a higher term; a is fenced out.
        store.resign_lease("master", "http://a", t1).await.unwrap();
        let t2 = store.acquire_lease("master", "http://b", 60_000).await.unwrap().expect("a resigned lease is free");
        assert!(t2 > t1, "{backend:?}: {t2} > {t1}");
        assert!(!store.renew_lease("master", "http://a", t1, 60_000).await.unwrap(), "{backend:?}");
        for refused in [
            a.put_agent(&agent("a2")).await,
            a.put_framework(&framework("f2")).await,
            a.remove_framework(&FrameworkId::parse("f1").unwrap(), 5).await,
            a.remove_agent(&AgentId::parse("a1").unwrap()).await,
        ] {
            assert!(matches!(refused, Err(StoreError::Fenced { kind: "master", .. })), "{backend:?}: {refused:?}");
        }
        assert_eq!(store.agents().await.unwrap().len(), 1, "{backend:?}: the deposed leader wrote nothing");
        assert_eq!(store.frameworks().await.unwrap()[0].removed_at, None, "{backend:?}");
        let b = store.fenced("master", t2);
        b.put_agent(&agent("a2")).await.unwrap();
        assert_eq!(store.agents().await.unwrap().len(), 2, "{backend:?}");

        // An expired lease is free; a restarted holder takes its own back at once, with a new term.
        assert!(store.renew_lease("master", "http://b", t2, -1).await.unwrap());
        let t3 = store.acquire_lease("master", "http://c", 60_000).await.unwrap().expect("an expired lease is free");
        let t4 = store.acquire_lease("master", "http://c", 60_000).await.unwrap().expect("its holder takes it back");
        assert!(t4 > t3 && t3 > t2, "{backend:?}");
    }
}

/// A master and a framework started at once on a fresh SQLite file (as `keel dev`'s processes, or a test's,
/// share one) both migrate it; neither may fail because the other got there first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_at_once_on_a_fresh_sqlite_file_both_open_it() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("fresh.db").display());
        let opens: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn({
                    let url = url.clone();
                    async move { Store::connect(&url).await.map(|_| ()) }
                })
            })
            .collect();
        for open in opens {
            if let Err(e) = open.await.unwrap() {
                panic!("round {round}: {e}: {:?}", std::error::Error::source(&e));
            }
        }
    }
}
