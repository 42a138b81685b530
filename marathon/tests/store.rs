//! The app store on SQLite and PostgreSQL alike.

use keel_core::store::Store;
use keel_marathon::app::{AppDefinition, AppId};
use keel_marathon::store::{AppStore, InstanceRecord};

async fn backends() -> Vec<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = vec![(Store::connect(&format!("sqlite:{}", dir.path().join("k.db").display())).await.unwrap(), dir)];
    if let Some(url) = keel_core::testing::postgres_database().await {
        out.push((Store::connect(&url).await.unwrap(), tempfile::tempdir().unwrap()));
    }
    out
}

async fn stores() -> Vec<(AppStore, tempfile::TempDir)> {
    backends().await.into_iter().map(|(store, dir)| (AppStore::new(store), dir)).collect()
}

fn instance(task: &str) -> InstanceRecord {
    InstanceRecord {
        task_id: task.into(),
        app_id: "/web".into(),
        version: "2026-01-01T00:00:00.000Z".into(),
        agent_id: "agent-1".into(),
        host: "h1".into(),
        ports: vec![31000],
        staged_at: 1_795_398_421_123,
        attributes: Vec::new(),
    }
}

/// Once another instance leads, the database refuses every write of the deposed one: each is an error,
/// and nothing is written.
#[tokio::test]
async fn a_deposed_leaders_writes_are_refused_by_the_database() {
    use keel_core::store::StoreError;
    use keel_marathon::store::AppStoreError;
    let refused = |r: Result<(), AppStoreError>| matches!(r, Err(AppStoreError::Store(StoreError::Fenced { .. })));
    for (raw, _dir) in backends().await {
        let backend = raw.backend();
        let t1 = raw.acquire_lease("marathon", "http://a", 60_000).await.unwrap().unwrap();
        let a = AppStore::new(raw.fenced("marathon", t1));
        let id = AppId::parse("/web").unwrap();
        a.put(&id, &app("/web", "v1", "2026-01-01T00:00:00.000Z")).await.unwrap();
        a.put_instances(&[instance("web.1")]).await.unwrap();
        a.set_framework_id("fw-1").await.unwrap();
        a.subscribe("http://hook/1").await.unwrap();

        raw.resign_lease("marathon", "http://a", t1).await.unwrap();
        let t2 = raw.acquire_lease("marathon", "http://b", 60_000).await.unwrap().unwrap();
        assert!(refused(a.put(&id, &app("/web", "v2", "2026-01-02T00:00:00.000Z")).await), "{backend:?}");
        assert!(refused(a.delete(&id).await.map(|_| ())), "{backend:?}");
        assert!(refused(a.put_instances(&[instance("web.2")]).await), "{backend:?}");
        assert!(refused(a.delete_instance("web.1").await), "{backend:?}");
        assert!(refused(a.set_framework_id("fw-2").await), "{backend:?}");
        assert!(refused(a.subscribe("http://hook/2").await), "{backend:?}");
        assert!(refused(a.unsubscribe("http://hook/1").await.map(|_| ())), "{backend:?}");

        let b = AppStore::new(raw.fenced("marathon", t2));
        assert_eq!(b.get(&id).await.unwrap().unwrap().cmd.as_deref(), Some("v1"), "{backend:?}");
        assert_eq!(b.versions(&id).await.unwrap().len(), 1, "{backend:?}");
        assert_eq!(b.instances().await.unwrap(), vec![instance("web.1")], "{backend:?}");
        assert_eq!(b.framework_id().await.unwrap().as_deref(), Some("fw-1"), "{backend:?}");
        assert_eq!(b.subscriptions().await.unwrap(), ["http://hook/1"], "{backend:?}");
        // The new leader's writes pass; a write that finds nothing to change is no refusal.
        b.put(&id, &app("/web", "v2", "2026-01-02T00:00:00.000Z")).await.unwrap();
        b.delete_instance("gone").await.unwrap();
        assert!(!b.unsubscribe("http://hook/never").await.unwrap());
    }
}

fn app(id: &str, cmd: &str, version: &str) -> AppDefinition {
    let mut a: AppDefinition = serde_json::from_value(serde_json::json!({ "id": id, "cmd": cmd })).unwrap();
    a.version = Some(version.into());
    a
}

#[tokio::test]
async fn apps_and_versions_round_trip() {
    for (store, _dir) in stores().await {
        let id = AppId::parse("/prod/web").unwrap();
        store.put(&id, &app("/prod/web", "v1", "2026-01-01T00:00:00.000Z")).await.unwrap();
        store.put(&id, &app("/prod/web", "v2", "2026-01-02T00:00:00.000Z")).await.unwrap();
        store.put(&AppId::parse("/a").unwrap(), &app("/a", "a", "2026-01-01T00:00:00.000Z")).await.unwrap();
        assert_eq!(store.get(&id).await.unwrap().unwrap().cmd.as_deref(), Some("v2"));
        let ids: Vec<String> = store.list().await.unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, vec!["/a", "/prod/web"]);
        assert_eq!(store.versions(&id).await.unwrap(), vec!["2026-01-02T00:00:00.000Z", "2026-01-01T00:00:00.000Z"]);
        assert_eq!(store.version(&id, "2026-01-01T00:00:00.000Z").await.unwrap().unwrap().cmd.as_deref(), Some("v1"));
        assert!(store.delete(&id).await.unwrap());
        assert!(!store.delete(&id).await.unwrap());
        assert!(store.get(&id).await.unwrap().is_none());
        assert!(store.versions(&id).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn instances_keep_their_agent_attributes() {
    for (store, _dir) in stores().await {
        let record = |task: &str, attributes: &[(&str, &str)]| InstanceRecord {
            task_id: task.into(),
            app_id: "/web".into(),
            version: "2026-01-01T00:00:00.000Z".into(),
            agent_id: "agent-1".into(),
            host: "h1".into(),
            ports: vec![31000, 31001],
            staged_at: 1_795_398_421_123,
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let with = record("web.1", &[("rack", "r1"), ("zone", "eu,west \"2\"")]);
        let without = record("web.2", &[]);
        store.put_instances(&[with.clone(), without.clone()]).await.unwrap();
        assert_eq!(store.instances().await.unwrap(), vec![with, without]);
        store.delete_instance("web.1").await.unwrap();
        assert_eq!(store.instances().await.unwrap().len(), 1);
    }
}
