//! Where apps live: the current definition of each app and every earlier version, as JSON, in the same
//! database as the master's registry (PostgreSQL or SQLite, through `keel_core::store::Store`).

use sqlx::Row;

use crate::app::{AppDefinition, AppId};

#[derive(Debug, thiserror::Error)]
pub enum AppStoreError {
    #[error("app store query failed")]
    Query(#[from] sqlx::Error),
    #[error("stored app definition is corrupt")]
    Corrupt(#[from] serde_json::Error),
}

/// Apps and their version history.
#[derive(Clone)]
pub struct AppStore {
    store: keel_core::store::Store,
    secrets: keel_core::secrets::Secrets,
}

impl AppStore {
    pub fn new(store: keel_core::store::Store) -> AppStore {
        AppStore { store, secrets: keel_core::secrets::Secrets::none() }
    }

    /// This store, with the secrets apps' environments may name.
    pub fn with_secrets(mut self, secrets: keel_core::secrets::Secrets) -> AppStore {
        self.secrets = secrets;
        self
    }

    /// The secrets apps' environments may name.
    pub fn secrets(&self) -> &keel_core::secrets::Secrets {
        &self.secrets
    }

    /// Stores `app` as the current definition of its id and as a new version. `app.version` must be set.
    pub async fn put(&self, id: &AppId, app: &AppDefinition) -> Result<(), AppStoreError> {
        let json = serde_json::to_string(app)?;
        let version = app.version.clone().unwrap_or_default();
        let mut tx = self.store.pool().begin().await?;
        sqlx::query(
            "INSERT INTO marathon_apps (id, version, definition) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, definition = excluded.definition",
        )
        .bind(id.as_str())
        .bind(&version)
        .bind(&json)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO marathon_app_versions (id, version, definition) VALUES ($1, $2, $3) \
             ON CONFLICT (id, version) DO UPDATE SET definition = excluded.definition",
        )
        .bind(id.as_str())
        .bind(&version)
        .bind(&json)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get(&self, id: &AppId) -> Result<Option<AppDefinition>, AppStoreError> {
        let row = sqlx::query("SELECT definition FROM marathon_apps WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(self.store.pool())
            .await?;
        row.map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>(0)?)?)).transpose()
    }

    /// Every app, ordered by id.
    pub async fn list(&self) -> Result<Vec<AppDefinition>, AppStoreError> {
        let rows = sqlx::query("SELECT definition FROM marathon_apps ORDER BY id").fetch_all(self.store.pool()).await?;
        rows.iter().map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>(0)?)?)).collect()
    }

    /// Removes an app and its history; false when there was no such app.
    pub async fn delete(&self, id: &AppId) -> Result<bool, AppStoreError> {
        let mut tx = self.store.pool().begin().await?;
        let gone = sqlx::query("DELETE FROM marathon_apps WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM marathon_app_versions WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(gone > 0)
    }

    /// The app's versions, newest first.
    pub async fn versions(&self, id: &AppId) -> Result<Vec<String>, AppStoreError> {
        let rows = sqlx::query("SELECT version FROM marathon_app_versions WHERE id = $1 ORDER BY version DESC")
            .bind(id.as_str())
            .fetch_all(self.store.pool())
            .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
    }

    pub async fn version(&self, id: &AppId, version: &str) -> Result<Option<AppDefinition>, AppStoreError> {
        let row = sqlx::query("SELECT definition FROM marathon_app_versions WHERE id = $1 AND version = $2")
            .bind(id.as_str())
            .bind(version)
            .fetch_optional(self.store.pool())
            .await?;
        row.map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>(0)?)?)).transpose()
    }
}

/// A task the framework launched, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRecord {
    pub task_id: String,
    pub app_id: String,
    pub version: String,
    pub agent_id: String,
    pub host: String,
    pub ports: Vec<u16>,
    pub staged_at: i64,
    /// The agent's attributes, for placement constraints.
    pub attributes: Vec<(String, String)>,
}

impl AppStore {
    /// The framework id the master gave this framework, once it has one.
    pub async fn framework_id(&self) -> Result<Option<String>, AppStoreError> {
        let row = sqlx::query("SELECT framework_id FROM marathon_framework WHERE name = 'marathon'")
            .fetch_optional(self.store.pool())
            .await?;
        row.map(|r| Ok(r.try_get::<String, _>(0)?)).transpose()
    }

    pub async fn set_framework_id(&self, id: &str) -> Result<(), AppStoreError> {
        sqlx::query(
            "INSERT INTO marathon_framework (name, framework_id) VALUES ('marathon', $1) \
             ON CONFLICT (name) DO UPDATE SET framework_id = excluded.framework_id",
        )
        .bind(id)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// The callback URLs subscribed to events, oldest first.
    pub async fn subscriptions(&self) -> Result<Vec<String>, AppStoreError> {
        let rows =
            sqlx::query("SELECT callback_url FROM marathon_event_subscriptions ORDER BY created_at, callback_url")
                .fetch_all(self.store.pool())
                .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
    }

    /// Subscribes a callback URL; subscribing one twice changes nothing.
    pub async fn subscribe(&self, url: &str) -> Result<(), AppStoreError> {
        sqlx::query(
            "INSERT INTO marathon_event_subscriptions (callback_url, created_at) VALUES ($1, $2) \
             ON CONFLICT (callback_url) DO NOTHING",
        )
        .bind(url)
        .bind(keel_core::store::now_millis())
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Unsubscribes a callback URL; returns whether it was subscribed.
    pub async fn unsubscribe(&self, url: &str) -> Result<bool, AppStoreError> {
        let done = sqlx::query("DELETE FROM marathon_event_subscriptions WHERE callback_url = $1")
            .bind(url)
            .execute(self.store.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records launched tasks, in one transaction.
    pub async fn put_instances(&self, records: &[InstanceRecord]) -> Result<(), AppStoreError> {
        let mut tx = self.store.pool().begin().await?;
        for r in records {
            let ports = r.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            let attributes = serde_json::to_string(&r.attributes)?;
            sqlx::query(
                "INSERT INTO marathon_instances (task_id, app_id, version, agent_id, host, ports, staged_at, attributes) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (task_id) DO NOTHING",
            )
            .bind(&r.task_id)
            .bind(&r.app_id)
            .bind(&r.version)
            .bind(&r.agent_id)
            .bind(&r.host)
            .bind(ports)
            .bind(r.staged_at)
            .bind(attributes)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_instance(&self, task_id: &str) -> Result<(), AppStoreError> {
        sqlx::query("DELETE FROM marathon_instances WHERE task_id = $1")
            .bind(task_id)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    pub async fn instances(&self) -> Result<Vec<InstanceRecord>, AppStoreError> {
        let rows = sqlx::query(
            "SELECT task_id, app_id, version, agent_id, host, ports, staged_at, attributes FROM marathon_instances \
             ORDER BY task_id",
        )
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let ports: String = r.try_get(5)?;
                let attributes: String = r.try_get(7)?;
                Ok(InstanceRecord {
                    task_id: r.try_get(0)?,
                    app_id: r.try_get(1)?,
                    version: r.try_get(2)?,
                    agent_id: r.try_get(3)?,
                    host: r.try_get(4)?,
                    ports: ports.split(',').filter_map(|p| p.parse().ok()).collect(),
                    staged_at: r.try_get(6)?,
                    // Records from before the column existed have none.
                    attributes: if attributes.is_empty() { Vec::new() } else { serde_json::from_str(&attributes)? },
                })
            })
            .collect()
    }
}

/// A new app version: the time now as a [`timestamp`], later than every version this process issued before,
/// so that two changes within one millisecond do not share a version (the second would overwrite the first
/// in the history).
pub fn new_version() -> String {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = keel_core::store::now_millis();
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    let millis = if now > prev { now } else { LAST.fetch_add(1, Ordering::SeqCst) + 1 };
    timestamp(millis)
}

/// Milliseconds since the epoch as Marathon's timestamp: `YYYY-MM-DDTHH:MM:SS.sssZ`.
pub fn timestamp(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn versions_are_unique_within_a_millisecond() {
        let versions: Vec<String> = (0..1000).map(|_| super::new_version()).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    }

    #[test]
    fn timestamps_look_like_marathons() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_795_398_421_123), "2026-11-23T01:47:01.123Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
