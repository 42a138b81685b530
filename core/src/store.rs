//! The store: what the master must remember across restarts, in PostgreSQL (production) or SQLite (the
//! embedded default).
//!
//! Both backends go through sqlx's `Any` driver with the same SQL, so there is one implementation and one
//! conformance suite (`core/tests/store.rs`) run against both. Migrations live per backend in
//! `migrations/postgres/` and `migrations/sqlite/` at the top of the repository.
//!
//! Only rarely-changing facts are stored: the agent registry and framework ids. Tasks are not: agents hold
//! them and report them when they re-register, so a restarted master rebuilds its task table from the
//! agents themselves.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Row;
use sqlx::{AnyPool, any::AnyPoolOptions};

use crate::ids::{AgentId, FrameworkId, IdError};
use crate::resources::{ResourceError, Resources, parse_attributes};

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database url '{0}': use postgres://… or sqlite:PATH")]
    BadUrl(String),
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the {backend} store")]
    Migrate {
        backend: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("store query failed: {what}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
    /// The write carried a term that no longer holds the lease: this process is not the leader any more.
    #[error("refused a write of a deposed {kind} leader (term {term})")]
    Fenced { kind: &'static str, term: i64 },
}

impl From<IdError> for StoreError {
    fn from(e: IdError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl From<ResourceError> for StoreError {
    fn from(e: ResourceError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

fn query_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// Milliseconds since the Unix epoch, the store's time unit.
pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A registered agent, as the master remembers it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    pub id: AgentId,
    pub hostname: String,
    pub resources: Resources,
    pub attributes: Vec<(String, String)>,
    pub registered_at: i64,
    /// The principal that first registered this id; only it may register it again.
    pub principal: Option<String>,
}

/// A framework, as the master remembers it.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameworkRecord {
    pub id: FrameworkId,
    pub name: String,
    pub role: String,
    pub failover_timeout_seconds: f64,
    pub webui_url: String,
    pub registered_at: i64,
    /// When it was torn down; a removed framework cannot subscribe again.
    pub removed_at: Option<i64>,
    /// The principal that created this id; only it may subscribe with it.
    pub principal: Option<String>,
}

/// A token as the store keeps it: never the token itself, only its hash.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: crate::auth::Role,
    pub framework_roles: Vec<String>,
    pub hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// One audited write.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub principal: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub status: i64,
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The lease a leader's registry writes are fenced by: (kind, term).
    fence: Option<(&'static str, i64)>,
}

/// Who holds a lease, as the database says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: String,
    pub term: i64,
    /// How long it still runs, by the database's clock (negative: expired).
    pub remaining_ms: i64,
}

/// Whether a failed SQLite migration lost a race with another process (the database was locked, or the
/// other applied the same migration first), rather than failing for good.
fn raced(e: &StoreError) -> bool {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&s.to_string());
        source = s.source();
    }
    ["database is locked", "busy", "already exists", "duplicate column", "UNIQUE constraint failed: _sqlx_migrations"]
        .iter()
        .any(|m| text.contains(m))
}

/// How many times SQLite's migrations are tried before the store gives up (see [`Store::connect`]).
const MIGRATE_ATTEMPTS: u64 = 10;

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite:PATH`, created if missing) and applies migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            let with_mode = if rest.contains("mode=") || rest == ":memory:" {
                url.to_owned()
            } else if rest.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, with_mode)
        } else {
            return Err(StoreError::BadUrl(url.to_owned()));
        };
        // SQLite has one writer; more connections only contend for its lock.
        let max = if backend == Backend::Sqlite { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // With WAL, NORMAL syncs at checkpoints rather than every commit: a crash of Keel
                        // loses nothing, a power cut may lose the last commits. Production runs PostgreSQL.
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| StoreError::Connect { url: redact(&url), source })?;
        let store = Store { pool, backend, fence: None };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // PostgreSQL's migrations hold an advisory lock; SQLite's take none, so two processes starting on a
        // fresh file at once (a master and a framework sharing `keel dev`'s database) can both try to apply
        // the same migration (or switch to WAL), and one fails. Its next attempt finds the work done.
        let mut attempt = 1;
        loop {
            match self.migrate_once().await {
                Ok(()) => return Ok(()),
                Err(e) if self.backend == Backend::Sqlite && attempt < MIGRATE_ATTEMPTS && raced(&e) => {
                    tracing::info!(attempt, error = %e, "migration raced another process; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn migrate_once(&self) -> Result<(), StoreError> {
        let (migrator, name) = match self.backend {
            Backend::Postgres => (&POSTGRES_MIGRATIONS, "postgres"),
            Backend::Sqlite => {
                sqlx::query("PRAGMA journal_mode=WAL").execute(&self.pool).await.map_err(query_err("enable WAL"))?;
                (&SQLITE_MIGRATIONS, "sqlite")
            }
        };
        migrator.run(&self.pool).await.map_err(|source| StoreError::Migrate { backend: name, source })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for frameworks that keep their own tables in the same database.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The database's clock, in milliseconds since the Unix epoch, as SQL: leases are timed by it alone, so
    /// the hosts' clocks do not matter.
    fn now_sql(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    /// This store, with every registry write fenced by lease `kind` at `term`: the database refuses the
    /// write once another process holds the lease.
    pub fn fenced(&self, kind: &'static str, term: i64) -> Store {
        Store { fence: Some((kind, term)), ..self.clone() }
    }

    /// On PostgreSQL the fence reads the lease row `FOR SHARE`: a new leader's acquisition then waits for the
    /// write to commit, or the write sees the new term (under READ COMMITTED a plain read would not see an
    /// acquisition that commits while the write is in flight). SQLite has one writer at a time.
    fn fence_lock(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        }
    }

    /// What a fenced write binds to the two parameters of [`Store::fence_condition`]: the lease's kind and
    /// the term this process holds it at (`""` and 0 when unfenced).
    pub fn fence_args(&self) -> (&'static str, i64) {
        self.fence.unwrap_or(("", 0))
    }

    /// The condition every fenced write adds to its `WHERE`: true while the lease is still at this process's
    /// term (or when this store is not fenced). It binds [`Store::fence_args`] to `$n` and `$n+1`. A deposed
    /// leader's write then changes no row: the database refuses it, whatever the leader believes.
    pub fn fence_condition(&self, n: usize) -> String {
        format!(
            "(${n} = '' OR EXISTS (SELECT 1 FROM leases WHERE kind = ${n} AND term = ${m}{lock}))",
            m = n + 1,
            lock = self.fence_lock()
        )
    }

    /// After a fenced write (or transaction) of which a statement changed `rows` rows: none may mean that
    /// the database refused it, because another process leads now. Call it after the transaction: on SQLite
    /// the pool has one connection.
    pub async fn written(&self, rows: u64) -> Result<(), StoreError> {
        if rows == 0 { self.check_fence().await } else { Ok(()) }
    }

    /// Whether a write that changed no row was refused by the fence (rather than finding nothing to change).
    pub async fn check_fence(&self) -> Result<(), StoreError> {
        let Some((kind, term)) = self.fence else { return Ok(()) };
        match self.lease(kind).await? {
            Some(l) if l.term == term => Ok(()),
            _ => Err(StoreError::Fenced { kind, term }),
        }
    }

    /// Takes lease `kind` for `holder` for `ttl_ms`, when it is free, expired, or already `holder`'s (a
    /// restarted holder takes its lease back at once); the term goes up either way. Answers the new term, or
    /// `None` while another holder's lease runs.
    pub async fn acquire_lease(&self, kind: &str, holder: &str, ttl_ms: i64) -> Result<Option<i64>, StoreError> {
        let now = self.now_sql();
        let sql = format!(
            "INSERT INTO leases (kind, holder, term, expires_at) VALUES ($1, $2, 1, {now} + $3) \
             ON CONFLICT (kind) DO UPDATE SET holder = excluded.holder, term = leases.term + 1, \
             expires_at = excluded.expires_at \
             WHERE leases.expires_at < {now} OR leases.holder = excluded.holder \
             RETURNING term"
        );
        sqlx::query_scalar(&sql)
            .bind(kind)
            .bind(holder)
            .bind(ttl_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err("acquire lease"))
    }

    /// Extends `holder`'s lease at `term`; false when it is not theirs any more.
    pub async fn renew_lease(&self, kind: &str, holder: &str, term: i64, ttl_ms: i64) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE leases SET expires_at = {} + $4 WHERE kind = $1 AND holder = $2 AND term = $3",
            self.now_sql()
        );
        let done = sqlx::query(&sql)
            .bind(kind)
            .bind(holder)
            .bind(term)
            .bind(ttl_ms)
            .execute(&self.pool)
            .await
            .map_err(query_err("renew lease"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease up at once, so that a standby takes over without waiting for it to expire.
    pub async fn resign_lease(&self, kind: &str, holder: &str, term: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE kind = $1 AND holder = $2 AND term = $3")
            .bind(kind)
            .bind(holder)
            .bind(term)
            .execute(&self.pool)
            .await
            .map_err(query_err("resign lease"))?;
        Ok(())
    }

    /// Who holds lease `kind`, if anyone ever did.
    pub async fn lease(&self, kind: &str) -> Result<Option<LeaseView>, StoreError> {
        let sql = format!("SELECT holder, term, expires_at - {} FROM leases WHERE kind = $1", self.now_sql());
        let row = sqlx::query(&sql).bind(kind).fetch_optional(&self.pool).await.map_err(query_err("read lease"))?;
        let Some(r) = row else { return Ok(None) };
        let c = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
        Ok(Some(LeaseView {
            holder: r.try_get(0).map_err(c)?,
            term: r.try_get(1).map_err(c)?,
            remaining_ms: r.try_get(2).map_err(c)?,
        }))
    }

    pub async fn put_agent(&self, a: &AgentRecord) -> Result<(), StoreError> {
        let attributes = a.attributes.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(";");
        let (kind, term) = self.fence_args();
        let done = sqlx::query(&format!(
            "INSERT INTO agents (id, hostname, resources, attributes, registered_at, principal) \
             SELECT $1, $2, $3, $4, $5, $6 \
             WHERE {fence} \
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, resources = excluded.resources, \
             attributes = excluded.attributes, principal = COALESCE(agents.principal, excluded.principal)",
            fence = self.fence_condition(7)
        ))
        .bind(a.id.as_str())
        .bind(&a.hostname)
        .bind(a.resources.to_string())
        .bind(attributes)
        .bind(a.registered_at)
        .bind(a.principal.as_deref())
        .bind(kind)
        .bind(term)
        .execute(&self.pool)
        .await
        .map_err(query_err("put agent"))?;
        self.written(done.rows_affected()).await
    }

    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, hostname, resources, attributes, registered_at, principal FROM agents ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(query_err("list agents"))?;
        rows.iter()
            .map(|r| {
                let get = |i| r.try_get::<String, _>(i).map_err(|e| StoreError::Corrupt(e.to_string()));
                Ok(AgentRecord {
                    id: AgentId::parse(get(0)?)?,
                    hostname: get(1)?,
                    resources: get(2)?.parse()?,
                    attributes: parse_attributes(&get(3)?)?,
                    registered_at: r.try_get(4).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    principal: r.try_get(5).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                })
            })
            .collect()
    }

    pub async fn remove_agent(&self, id: &AgentId) -> Result<(), StoreError> {
        let (kind, term) = self.fence_args();
        let done =
            sqlx::query(&format!("DELETE FROM agents WHERE id = $1 AND {fence}", fence = self.fence_condition(2)))
                .bind(id.as_str())
                .bind(kind)
                .bind(term)
                .execute(&self.pool)
                .await
                .map_err(query_err("remove agent"))?;
        self.written(done.rows_affected()).await
    }

    pub async fn put_framework(&self, f: &FrameworkRecord) -> Result<(), StoreError> {
        let (kind, term) = self.fence_args();
        let done = sqlx::query(&format!(
            "INSERT INTO frameworks \
             (id, name, role, failover_timeout_seconds, webui_url, registered_at, removed_at, principal) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
             WHERE {fence} \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, role = excluded.role, \
             failover_timeout_seconds = excluded.failover_timeout_seconds, webui_url = excluded.webui_url, \
             removed_at = excluded.removed_at, principal = COALESCE(frameworks.principal, excluded.principal)",
            fence = self.fence_condition(9)
        ))
        .bind(f.id.as_str())
        .bind(&f.name)
        .bind(&f.role)
        .bind(f.failover_timeout_seconds)
        .bind(&f.webui_url)
        .bind(f.registered_at)
        .bind(f.removed_at)
        .bind(f.principal.as_deref())
        .bind(kind)
        .bind(term)
        .execute(&self.pool)
        .await
        .map_err(query_err("put framework"))?;
        self.written(done.rows_affected()).await
    }

    /// Every framework ever registered, removed ones included.
    pub async fn frameworks(&self) -> Result<Vec<FrameworkRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, role, failover_timeout_seconds, webui_url, registered_at, removed_at, principal \
             FROM frameworks ORDER BY registered_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("list frameworks"))?;
        rows.iter()
            .map(|r| {
                let c = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
                Ok(FrameworkRecord {
                    id: FrameworkId::parse(r.try_get::<String, _>(0).map_err(c)?)?,
                    name: r.try_get(1).map_err(c)?,
                    role: r.try_get(2).map_err(c)?,
                    failover_timeout_seconds: r.try_get(3).map_err(c)?,
                    webui_url: r.try_get(4).map_err(c)?,
                    registered_at: r.try_get(5).map_err(c)?,
                    removed_at: r.try_get(6).map_err(c)?,
                    principal: r.try_get(7).map_err(c)?,
                })
            })
            .collect()
    }

    /// Marks a framework torn down.
    pub async fn remove_framework(&self, id: &FrameworkId, at: i64) -> Result<(), StoreError> {
        let (kind, term) = self.fence_args();
        let done = sqlx::query(&format!(
            "UPDATE frameworks SET removed_at = $1 WHERE id = $2 AND {fence}",
            fence = self.fence_condition(3)
        ))
        .bind(at)
        .bind(id.as_str())
        .bind(kind)
        .bind(term)
        .execute(&self.pool)
        .await
        .map_err(query_err("remove framework"))?;
        self.written(done.rows_affected()).await
    }

    /// Stores a new token's record; fails when an active token already has its name.
    pub async fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let taken: Option<String> = sqlx::query_scalar("SELECT id FROM tokens WHERE name = $1 AND revoked_at IS NULL")
            .bind(&t.name)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err("look up token name"))?;
        if let Some(id) = taken {
            return Err(StoreError::Conflict(format!("an active token named '{}' exists ({id})", t.name)));
        }
        sqlx::query(
            "INSERT INTO tokens (id, name, role, framework_roles, hash, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(t.role.as_str())
        .bind(t.framework_roles.join(","))
        .bind(&t.hash)
        .bind(t.created_at)
        .execute(&self.pool)
        .await
        .map_err(query_err("create token"))?;
        Ok(())
    }

    /// Every token record, revoked ones included, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.select_tokens(
            "SELECT id, name, role, framework_roles, hash, created_at, revoked_at FROM tokens \
             ORDER BY created_at, id",
        )
        .await
    }

    /// The tokens that work.
    pub async fn active_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.select_tokens(
            "SELECT id, name, role, framework_roles, hash, created_at, revoked_at FROM tokens \
             WHERE revoked_at IS NULL",
        )
        .await
    }

    async fn select_tokens(&self, sql: &'static str) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await.map_err(query_err("list tokens"))?;
        rows.iter()
            .map(|r| {
                let c = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
                let roles: String = r.try_get(3).map_err(c)?;
                Ok(TokenRecord {
                    id: r.try_get(0).map_err(c)?,
                    name: r.try_get(1).map_err(c)?,
                    role: r.try_get::<String, _>(2).map_err(c)?.parse().map_err(StoreError::Corrupt)?,
                    framework_roles: roles.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
                    hash: r.try_get(4).map_err(c)?,
                    created_at: r.try_get(5).map_err(c)?,
                    revoked_at: r.try_get(6).map_err(c)?,
                })
            })
            .collect()
    }

    /// Revokes the active token with this id or name; returns its id, or `None` if there was none.
    pub async fn revoke_token(&self, id_or_name: &str, at: i64) -> Result<Option<String>, StoreError> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM tokens WHERE (id = $1 OR name = $1) AND revoked_at IS NULL")
                .bind(id_or_name)
                .fetch_optional(&self.pool)
                .await
                .map_err(query_err("look up token"))?;
        let Some(id) = id else { return Ok(None) };
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2")
            .bind(at)
            .bind(&id)
            .execute(&self.pool)
            .await
            .map_err(query_err("revoke token"))?;
        Ok(Some(id))
    }

    /// Appends audit records.
    pub async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(query_err("begin audit"))?;
        for a in records {
            sqlx::query(
                "INSERT INTO audit (at, principal, action, target, outcome, status) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(a.at)
            .bind(&a.principal)
            .bind(&a.action)
            .bind(&a.target)
            .bind(&a.outcome)
            .bind(a.status)
            .execute(&mut *tx)
            .await
            .map_err(query_err("append audit"))?;
        }
        tx.commit().await.map_err(query_err("commit audit"))
    }

    /// Deletes all but the newest `keep` audit records.
    pub async fn trim_audit(&self, keep: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - $1")
            .bind(keep)
            .execute(&self.pool)
            .await
            .map_err(query_err("trim audit"))?;
        Ok(done.rows_affected())
    }

    /// The newest audit records first, at most `limit`, older than `before` (milliseconds) if given.
    pub async fn audit(&self, limit: i64, before: Option<i64>) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, principal, action, target, outcome, status FROM audit WHERE at < $1 \
             ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("read audit"))?;
        rows.iter()
            .map(|r| {
                let c = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
                Ok(AuditRecord {
                    at: r.try_get(0).map_err(c)?,
                    principal: r.try_get(1).map_err(c)?,
                    action: r.try_get(2).map_err(c)?,
                    target: r.try_get(3).map_err(c)?,
                    outcome: r.try_get(4).map_err(c)?,
                    status: r.try_get(5).map_err(c)?,
                })
            })
            .collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Hides the passwords of a database URL (`user:PASSWORD@` and `?password=` or `sslpassword=` query
/// values) before it reaches a log or an error.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => match base[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{}:***{}", &base[..s + 3], user, &base[at..]),
            None => base.to_owned(),
        },
        _ => base.to_owned(),
    };
    let Some(query) = query else { return base };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(super::redact("sqlite:/x"), "sqlite:/x");
        assert_eq!(
            super::redact("postgres://h/db?user=u&password=secret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(super::redact("postgres://u:p@h/db?sslpassword=k"), "postgres://u:***@h/db?sslpassword=***");
    }
}
