//! Secrets for tasks' environments: stored sealed (ChaCha20-Poly1305, a random nonce per write, the name as
//! associated data) under a 32-byte key that lives outside the store, in a file only its owner reads.
//! A framework keeps the opened values in memory, reloaded every [`REFRESH`], and puts them only into the
//! environments of the tasks that name them: never into an answer or a log.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::store::{Store, StoreError, now_millis};

/// How often a framework reloads the secrets.
pub const REFRESH: Duration = Duration::from_secs(2);
/// The largest secret value, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;

/// The key secrets are sealed with.
#[derive(Clone)]
pub struct SecretKey(Arc<Key>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// Reads the key in `path` (base64 of 32 bytes), making one (mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<(SecretKey, bool), String> {
        if path.exists() {
            return SecretKey::load(path).map(|k| (k, false));
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        writeln!(f, "{}", STANDARD.encode(bytes)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok((SecretKey(Arc::new(*Key::from_slice(&bytes))), true))
    }

    /// Reads the key in `path`.
    pub fn load(path: &Path) -> Result<SecretKey, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| format!("{} is not a secrets key (base64 of 32 bytes)", path.display()))?;
        if bytes.len() != 32 {
            return Err(format!("{} is not a secrets key (base64 of 32 bytes)", path.display()));
        }
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            warn!(path = %path.display(), "the secrets key can be read by others than its owner: chmod 600 it");
        }
        Ok(SecretKey(Arc::new(*Key::from_slice(&bytes))))
    }

    fn seal(&self, name: &str, value: &str) -> (String, String) {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let cipher = ChaCha20Poly1305::new(&self.0);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value.as_bytes(), aad: name.as_bytes() })
            .expect("sealing a bounded value cannot fail");
        (STANDARD.encode(nonce), STANDARD.encode(sealed))
    }

    fn open(&self, name: &str, nonce: &str, sealed: &str) -> Result<String, String> {
        let bad = || format!("secret '{name}' cannot be opened with this key (another key, or a damaged row)");
        let nonce = STANDARD.decode(nonce).map_err(|_| bad())?;
        let sealed = STANDARD.decode(sealed).map_err(|_| bad())?;
        if nonce.len() != 12 {
            return Err(bad());
        }
        let cipher = ChaCha20Poly1305::new(&self.0);
        let plain = cipher
            .decrypt(Nonce::from_slice(&nonce), Payload { msg: &sealed, aad: name.as_bytes() })
            .map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

/// Checks a secret's name: 1 to 128 of letters, digits, `-`, `_`, `.` and `/`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok { Ok(()) } else { Err(format!("secret name '{name}' must be 1 to 128 of A-Z a-z 0-9 - _ . /")) }
}

fn query_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// Stores (or replaces) a secret.
pub async fn put(store: &Store, key: &SecretKey, name: &str, value: &str) -> Result<(), String> {
    check_name(name)?;
    if value.len() > MAX_VALUE {
        return Err(format!("a secret is at most {MAX_VALUE} bytes"));
    }
    let (nonce, sealed) = key.seal(name, value);
    sqlx::query(
        "INSERT INTO secrets (name, nonce, ciphertext, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
         updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(nonce)
    .bind(sealed)
    .bind(now_millis())
    .execute(store.pool())
    .await
    .map_err(|e| query_err("put secret")(e).to_string())?;
    Ok(())
}

/// The names of the stored secrets, with when each was last written.
pub async fn list(store: &Store) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = sqlx::query("SELECT name, updated_at FROM secrets ORDER BY name")
        .fetch_all(store.pool())
        .await
        .map_err(query_err("list secrets"))?;
    rows.iter()
        .map(|r| {
            let c = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
            Ok((r.try_get(0).map_err(c)?, r.try_get(1).map_err(c)?))
        })
        .collect()
}

/// Deletes a secret; whether there was one.
pub async fn delete(store: &Store, name: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM secrets WHERE name = $1")
        .bind(name)
        .execute(store.pool())
        .await
        .map_err(query_err("delete secret"))?;
    Ok(done.rows_affected() > 0)
}

async fn open_all(store: &Store, key: &SecretKey) -> Result<HashMap<String, String>, StoreError> {
    let rows = sqlx::query("SELECT name, nonce, ciphertext FROM secrets")
        .fetch_all(store.pool())
        .await
        .map_err(query_err("read secrets"))?;
    let mut out = HashMap::new();
    for r in rows {
        let c = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
        let (name, nonce, sealed): (String, String, String) =
            (r.try_get(0).map_err(c)?, r.try_get(1).map_err(c)?, r.try_get(2).map_err(c)?);
        match key.open(&name, &nonce, &sealed) {
            Ok(v) => {
                out.insert(name, v);
            }
            Err(e) => warn!(error = %e, "secret skipped"),
        }
    }
    Ok(out)
}

/// The opened secrets a framework may put into tasks' environments; cheap to clone.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Arc<RwLock<HashMap<String, String>>>,
    enabled: bool,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} values)", self.values.read().map(|v| v.len()).unwrap_or(0))
    }
}

impl Secrets {
    /// No secrets key: apps that name secrets are refused.
    pub fn none() -> Secrets {
        Secrets::default()
    }

    /// Opens the secrets in `store` with `key`, and reloads them every [`REFRESH`] until `shutdown`.
    pub async fn start(store: Store, key: SecretKey, shutdown: CancellationToken) -> Result<Secrets, StoreError> {
        let secrets = Secrets { values: Arc::new(RwLock::new(open_all(&store, &key).await?)), enabled: true };
        let values = secrets.values.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match open_all(&store, &key).await {
                    Ok(v) => *values.write().expect("lock poisoned") = v,
                    Err(e) => warn!(error = %e, "cannot reload secrets; the last ones read stay in use"),
                }
            }
        });
        Ok(secrets)
    }

    /// Whether this framework has a secrets key at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A secret's value, if it is stored.
    pub fn get(&self, name: &str) -> Option<String> {
        self.values.read().expect("lock poisoned").get(name).cloned()
    }

    /// A handle holding exactly `values`, for tests.
    pub fn fixed(values: HashMap<String, String>) -> Secrets {
        Secrets { values: Arc::new(RwLock::new(values)), enabled: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let (key, made) = SecretKey::load_or_create(&dir.path().join("k")).unwrap();
        assert!(made);
        let (again, made) = SecretKey::load_or_create(&dir.path().join("k")).unwrap();
        assert!(!made);
        let (nonce, sealed) = key.seal("db", "hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(again.open("db", &nonce, &sealed).unwrap(), "hunter2");
        assert!(key.open("other-name", &nonce, &sealed).is_err(), "a ciphertext moved to another name opened");
        let (other, _) = SecretKey::load_or_create(&dir.path().join("k2")).unwrap();
        assert!(other.open("db", &nonce, &sealed).is_err());
        assert_ne!(key.seal("db", "hunter2").0, nonce, "nonces repeat");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("k")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!format!("{key:?}").contains(&STANDARD.encode(key.0.as_slice())));
    }

    #[test]
    fn names() {
        assert!(check_name("db/password-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
    }
}
