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
}

impl AppStore {
    pub fn new(store: keel_core::store::Store) -> AppStore {
        AppStore { store }
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
    fn timestamps_look_like_marathons() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_795_398_421_123), "2026-11-23T01:47:01.123Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
