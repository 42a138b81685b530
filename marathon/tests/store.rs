//! The app store on SQLite and PostgreSQL alike.

use keel_core::store::Store;
use keel_marathon::app::{AppDefinition, AppId};
use keel_marathon::store::AppStore;

async fn stores() -> Vec<(AppStore, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = vec![(
        AppStore::new(Store::connect(&format!("sqlite:{}", dir.path().join("k.db").display())).await.unwrap()),
        dir,
    )];
    if let Some(url) = keel_core::testing::postgres_database().await {
        out.push((AppStore::new(Store::connect(&url).await.unwrap()), tempfile::tempdir().unwrap()));
    }
    out
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
