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
    /// Typically: this process no longer leads, and the database refused its write.
    #[error(transparent)]
    Store(#[from] keel_core::store::StoreError),
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
        let (kind, term) = self.store.fence_args();
        let mut tx = self.store.pool().begin().await?;
        let mut rows = u64::MAX;
        for table in ["marathon_apps", "marathon_app_versions"] {
            let key = if table == "marathon_apps" { "id" } else { "id, version" };
            let sql = format!(
                "INSERT INTO {table} (id, version, definition) SELECT $1, $2, $3 WHERE {fence} \
                 ON CONFLICT ({key}) DO UPDATE SET version = excluded.version, definition = excluded.definition",
                fence = self.store.fence_condition(4)
            );
            let q = sqlx::query(&sql).bind(id.as_str()).bind(&version).bind(&json).bind(kind).bind(term);
            rows = rows.min(q.execute(&mut *tx).await?.rows_affected());
        }
        tx.commit().await?;
        Ok(self.store.written(rows).await?)
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
        let (kind, term) = self.store.fence_args();
        let fence = self.store.fence_condition(2);
        let mut tx = self.store.pool().begin().await?;
        let gone = sqlx::query(&format!("DELETE FROM marathon_apps WHERE id = $1 AND {fence}"))
            .bind(id.as_str())
            .bind(kind)
            .bind(term)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(&format!("DELETE FROM marathon_app_versions WHERE id = $1 AND {fence}"))
            .bind(id.as_str())
            .bind(kind)
            .bind(term)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.store.written(gone).await?;
        Ok(gone > 0)
    }

    /// The latest version any app has had, to issue later ones after a failover.
    pub async fn latest_version(&self) -> Result<Option<String>, AppStoreError> {
        let row = sqlx::query("SELECT MAX(version) FROM marathon_app_versions").fetch_one(self.store.pool()).await?;
        Ok(row.try_get::<Option<String>, _>(0)?)
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

/// What the services scheduler reads and writes. [`AppStore`] keeps it in the database; a simulation may
/// keep it in memory.
#[async_trait::async_trait]
pub trait ServiceStore: Send + Sync + 'static {
    async fn put(&self, id: &AppId, app: &AppDefinition) -> Result<(), AppStoreError>;
    async fn get(&self, id: &AppId) -> Result<Option<AppDefinition>, AppStoreError>;
    async fn list(&self) -> Result<Vec<AppDefinition>, AppStoreError>;
    async fn delete(&self, id: &AppId) -> Result<bool, AppStoreError>;
    async fn latest_version(&self) -> Result<Option<String>, AppStoreError>;
    async fn version(&self, id: &AppId, version: &str) -> Result<Option<AppDefinition>, AppStoreError>;
    async fn framework_id(&self) -> Result<Option<String>, AppStoreError>;
    async fn set_framework_id(&self, id: &str) -> Result<(), AppStoreError>;
    async fn put_instances(&self, records: &[InstanceRecord]) -> Result<(), AppStoreError>;
    async fn delete_instance(&self, task_id: &str) -> Result<(), AppStoreError>;
    async fn instances(&self) -> Result<Vec<InstanceRecord>, AppStoreError>;
    fn secrets(&self) -> &keel_core::secrets::Secrets;
}

#[async_trait::async_trait]
impl ServiceStore for AppStore {
    async fn put(&self, id: &AppId, app: &AppDefinition) -> Result<(), AppStoreError> {
        AppStore::put(self, id, app).await
    }
    async fn get(&self, id: &AppId) -> Result<Option<AppDefinition>, AppStoreError> {
        AppStore::get(self, id).await
    }
    async fn list(&self) -> Result<Vec<AppDefinition>, AppStoreError> {
        AppStore::list(self).await
    }
    async fn delete(&self, id: &AppId) -> Result<bool, AppStoreError> {
        AppStore::delete(self, id).await
    }
    async fn latest_version(&self) -> Result<Option<String>, AppStoreError> {
        AppStore::latest_version(self).await
    }
    async fn version(&self, id: &AppId, version: &str) -> Result<Option<AppDefinition>, AppStoreError> {
        AppStore::version(self, id, version).await
    }
    async fn framework_id(&self) -> Result<Option<String>, AppStoreError> {
        AppStore::framework_id(self).await
    }
    async fn set_framework_id(&self, id: &str) -> Result<(), AppStoreError> {
        AppStore::set_framework_id(self, id).await
    }
    async fn put_instances(&self, records: &[InstanceRecord]) -> Result<(), AppStoreError> {
        AppStore::put_instances(self, records).await
    }
    async fn delete_instance(&self, task_id: &str) -> Result<(), AppStoreError> {
        AppStore::delete_instance(self, task_id).await
    }
    async fn instances(&self) -> Result<Vec<InstanceRecord>, AppStoreError> {
        AppStore::instances(self).await
    }
    fn secrets(&self) -> &keel_core::secrets::Secrets {
        AppStore::secrets(self)
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
        let (kind, term) = self.store.fence_args();
        let rows = sqlx::query(&format!(
            "INSERT INTO marathon_framework (name, framework_id) SELECT 'marathon', $1 WHERE {fence} \
             ON CONFLICT (name) DO UPDATE SET framework_id = excluded.framework_id",
            fence = self.store.fence_condition(2)
        ))
        .bind(id)
        .bind(kind)
        .bind(term)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(self.store.written(rows).await?)
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
        let (kind, term) = self.store.fence_args();
        let rows = sqlx::query(&format!(
            "INSERT INTO marathon_event_subscriptions (callback_url, created_at) SELECT $1, $2 WHERE {fence} \
             ON CONFLICT (callback_url) DO NOTHING",
            fence = self.store.fence_condition(3)
        ))
        .bind(url)
        .bind(keel_core::store::now_millis())
        .bind(kind)
        .bind(term)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(self.store.written(rows).await?)
    }

    /// Unsubscribes a callback URL; returns whether it was subscribed.
    pub async fn unsubscribe(&self, url: &str) -> Result<bool, AppStoreError> {
        let (kind, term) = self.store.fence_args();
        let done = sqlx::query(&format!(
            "DELETE FROM marathon_event_subscriptions WHERE callback_url = $1 AND {fence}",
            fence = self.store.fence_condition(2)
        ))
        .bind(url)
        .bind(kind)
        .bind(term)
        .execute(self.store.pool())
        .await?;
        self.store.written(done.rows_affected()).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records launched tasks, in one transaction.
    pub async fn put_instances(&self, records: &[InstanceRecord]) -> Result<(), AppStoreError> {
        let (kind, term) = self.store.fence_args();
        let sql = format!(
            "INSERT INTO marathon_instances (task_id, app_id, version, agent_id, host, ports, staged_at, attributes) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE {fence} ON CONFLICT (task_id) DO NOTHING",
            fence = self.store.fence_condition(9)
        );
        let mut tx = self.store.pool().begin().await?;
        let mut rows = u64::MAX;
        for r in records {
            let ports = r.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            let attributes = serde_json::to_string(&r.attributes)?;
            let done = sqlx::query(&sql)
                .bind(&r.task_id)
                .bind(&r.app_id)
                .bind(&r.version)
                .bind(&r.agent_id)
                .bind(&r.host)
                .bind(ports)
                .bind(r.staged_at)
                .bind(attributes)
                .bind(kind)
                .bind(term)
                .execute(&mut *tx)
                .await?;
            rows = rows.min(done.rows_affected());
        }
        tx.commit().await?;
        Ok(self.store.written(rows).await?)
    }

    pub async fn delete_instance(&self, task_id: &str) -> Result<(), AppStoreError> {
        let (kind, term) = self.store.fence_args();
        let rows = sqlx::query(&format!(
            "DELETE FROM marathon_instances WHERE task_id = $1 AND {fence}",
            fence = self.store.fence_condition(2)
        ))
        .bind(task_id)
        .bind(kind)
        .bind(term)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(self.store.written(rows).await?)
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

static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// A new app version: the time now as a [`timestamp`], later than every version this process issued before
/// or found stored ([`issue_versions_after`]), so that two changes within one millisecond do not share a
/// version (the second would overwrite the first in the history), and a new leader whose clock is behind
/// its predecessor's does not issue an earlier version than the app already has.
pub fn new_version() -> String {
    use std::sync::atomic::Ordering;
    let now = keel_core::store::now_millis();
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    let millis = if now > prev { now } else { LAST.fetch_add(1, Ordering::SeqCst) + 1 };
    timestamp(millis)
}

/// Makes [`new_version`] issue versions later than `version` (a stored one) from now on.
pub fn issue_versions_after(version: &str) {
    if let Some(millis) = parse_timestamp(version) {
        LAST.fetch_max(millis, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The milliseconds since the epoch of a [`timestamp`]; `None` for any other text.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 24 || [b[4], b[7], b[10], b[13], b[16], b[19], b[23]] != *b"--T::.Z" {
        return None;
    }
    let num = |r: std::ops::Range<usize>| {
        text.get(r)?.bytes().try_fold(0i64, |n, c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, m, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + m * 60 + sec) * 1000) + ms)
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
    fn versions_follow_the_stored_ones_and_timestamps_parse_back() {
        for millis in [0, 951_782_400_000, 1_795_398_421_123, 4_102_444_799_999] {
            assert_eq!(super::parse_timestamp(&timestamp(millis)), Some(millis));
        }
        for bad in [
            "",
            "2026-11-23T01:47:01Z",
            "2026-13-23T01:47:01.123Z",
            "2026-11-23 01:47:01.123Z",
            "x".repeat(24).as_str(),
        ] {
            assert_eq!(super::parse_timestamp(bad), None, "{bad}");
        }
        let future = timestamp(keel_core::store::now_millis() + 3_600_000);
        super::issue_versions_after(&future);
        assert!(super::new_version() > future, "a new leader's clock behind the stored versions");
    }

    #[test]
    fn timestamps_look_like_marathons() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_795_398_421_123), "2026-11-23T01:47:01.123Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
