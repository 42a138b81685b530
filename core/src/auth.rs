//! Who is asking, and may they? Tokens, principals and roles, and the one check every edge makes.
//!
//! A token is 32 random bytes (`keel_` and 43 base64url characters). The store keeps only its SHA-256
//! hash: tokens are long and random, so a fast hash is as good as a slow one and keeps checks cheap. Every
//! process keeps the active tokens' hashes in memory and reloads them from the store every
//! [`REFRESH`], so a check never touches the database and a revoked token stops working within a second.
//! A framework serving its REST API on its own port asks the master (`GET /keel/v1/whoami`) instead, and
//! keeps each answer for at most [`REMOTE_TTL`].
//!
//! The decisions ([`Principal::may`], [`parse_authorization`]) are pure; [`Auth`] holds the state.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::{Store, StoreError, TokenRecord};

/// How often the active tokens are reloaded.
pub const REFRESH: Duration = Duration::from_millis(500);
/// How long a framework trusts the master's answer about a credential: with [`REFRESH`], a revoked token
/// is refused everywhere within 750 ms.
pub const REMOTE_TTL: Duration = Duration::from_millis(250);
/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most console sessions kept at once; the oldest is dropped beyond it.
const MAX_SESSIONS: usize = 10_000;
/// Token names: what `keel token create --name` accepts.
pub const MAX_NAME: usize = 64;

/// What a token may do, from least to most for the operator roles; `framework` and `agent` are for
/// machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads everything except secret values.
    Viewer,
    /// Also writes apps, jobs, groups, deployments, tasks and runs.
    Operator,
    /// Everything: also manages tokens, tears down frameworks and manages agents.
    Admin,
    /// Subscribes to the scheduler API, under the roles its token allows.
    Framework,
    /// Registers agents.
    Agent,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Viewer, Role::Operator, Role::Admin, Role::Framework, Role::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Framework => "framework",
            Role::Agent => "agent",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role '{s}': use viewer, operator, admin, framework or agent"))
    }
}

/// What a request asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Read state (secret values redacted).
    Read,
    /// Read the values of apps' and jobs' environment variables.
    ReadSecrets,
    /// Change apps, jobs, groups, deployments, tasks and runs.
    Write,
    /// Manage tokens, read the audit record, tear down frameworks, manage agents.
    Admin,
    /// Subscribe a framework under this role.
    Subscribe(&'a str),
    /// Register an agent.
    RegisterAgent,
    /// Read a task's stdout or stderr (frameworks read their tasks' output too).
    ReadTaskOutput,
}

/// Who is asking: the name and role of a token (or of a process's own internal credential).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The framework roles a `framework` token may subscribe under; empty means any.
    pub framework_roles: Vec<String>,
}

impl Principal {
    pub fn new(name: impl Into<String>, role: Role) -> Principal {
        Principal { name: name.into(), role, framework_roles: Vec::new() }
    }

    /// Everyone, when auth is switched off (`--insecure-no-auth`).
    pub fn anonymous() -> Principal {
        Principal::new("anonymous", Role::Admin)
    }

    /// The authorization matrix.
    pub fn may(&self, action: &Action<'_>) -> bool {
        match (self.role, action) {
            (Role::Admin, _) => true,
            (Role::Viewer | Role::Operator, Action::Read) => true,
            (Role::Viewer | Role::Operator | Role::Framework, Action::ReadTaskOutput) => true,
            (Role::Operator, Action::ReadSecrets | Action::Write) => true,
            (Role::Framework, Action::Subscribe(role)) => {
                self.framework_roles.is_empty() || self.framework_roles.iter().any(|r| r == role)
            }
            (Role::Agent, Action::RegisterAgent) => true,
            _ => false,
        }
    }
}

/// A credential as a client presents it.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    /// `Bearer <token>` or `token=<token>`.
    Token(String),
    /// HTTP Basic: the principal's name and its token.
    Basic { user: String, token: String },
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::Token(_) => f.write_str("Token(***)"),
            Presented::Basic { user, .. } => write!(f, "Basic({user}, ***)"),
        }
    }
}

impl Presented {
    fn token(&self) -> &str {
        match self {
            Presented::Token(t) | Presented::Basic { token: t, .. } => t,
        }
    }
}

/// Reads an `Authorization` value: `Bearer T`, DC/OS's `token=T`, or `Basic base64(name:T)`.
pub fn parse_authorization(value: &str) -> Option<Presented> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').map_or((value, ""), |(s, r)| (s, r.trim()));
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Some(Presented::Token(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, token) = text.split_once(':')?;
        return Some(Presented::Basic { user: user.to_owned(), token: token.to_owned() });
    }
    if let Some(t) = value.strip_prefix("token=") {
        let t = t.trim().trim_matches('"');
        return (!t.is_empty()).then(|| Presented::Token(t.to_owned()));
    }
    None
}

/// A new random token.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("keel_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A short random id, for token records and sessions' public handles.
pub fn generate_id(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The hash the store keeps of a token.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a token name: 1 to 64 of letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(()) } else { Err(format!("token name '{name}' must be 1 to {MAX_NAME} of A-Z a-z 0-9 - _ .")) }
}

/// Why a credential was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this API needs a credential: send 'Authorization: Bearer <token>'")]
    Missing,
    #[error("the credential is not valid (unknown, revoked or malformed)")]
    Invalid,
    #[error("cannot check the credential right now: {0}")]
    Unavailable(String),
}

/// A one-time login code's principal, and the token it was made for (if any).
type LoginCode = (Arc<Principal>, Option<String>);
/// A remote answer and when it was fetched.
type RemoteAnswer = (Instant, Result<Arc<Principal>, AuthError>);

struct Session {
    principal: Arc<Principal>,
    /// The token the session was opened with: revoking it ends the session.
    token_hash: Option<String>,
    expires: Instant,
    /// What a write made with this session's cookie must also carry (`X-CSRF-Token`).
    csrf: String,
}

enum Mode {
    /// Auth is off: everyone is [`Principal::anonymous`].
    Off,
    /// Tokens are checked against this process's copy of the store's table.
    Local,
    /// Tokens are checked by asking the master.
    Remote { master: crate::client::Target, client: reqwest::Client },
}

struct Inner {
    mode: Mode,
    /// Active stored tokens, by hash.
    stored: RwLock<HashMap<String, Arc<Principal>>>,
    /// This process's own credentials (`keel dev`'s agent and frameworks), by hash; never stored.
    internal: RwLock<HashMap<String, Arc<Principal>>>,
    /// Console sessions, by the hash of their cookie.
    sessions: Mutex<HashMap<String, Session>>,
    /// One-time login codes (the URL `keel dev` prints), by hash.
    login_codes: Mutex<HashMap<String, LoginCode>>,
    /// Remote answers, by the hash of the presented header, with when they were fetched.
    remote_cache: Mutex<HashMap<String, RemoteAnswer>>,
}

/// Checks credentials; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner.mode {
            Mode::Off => "Auth(off)",
            Mode::Local => "Auth(local)",
            Mode::Remote { .. } => "Auth(remote)",
        })
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth::off()
    }
}

impl Auth {
    fn with_mode(mode: Mode) -> Auth {
        Auth {
            inner: Arc::new(Inner {
                mode,
                stored: RwLock::default(),
                internal: RwLock::default(),
                sessions: Mutex::default(),
                login_codes: Mutex::default(),
                remote_cache: Mutex::default(),
            }),
        }
    }

    /// No checks: every request is [`Principal::anonymous`].
    pub fn off() -> Auth {
        Auth::with_mode(Mode::Off)
    }

    /// Checks tokens against `store`'s, reloaded every [`REFRESH`] until `shutdown`.
    pub async fn local(store: Store, shutdown: CancellationToken) -> Result<Auth, StoreError> {
        let auth = Auth::with_mode(Mode::Local);
        auth.load(&store.active_tokens().await?);
        let refreshing = auth.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match store.active_tokens().await {
                    Ok(tokens) => {
                        failing = false;
                        refreshing.load(&tokens);
                    }
                    Err(e) if !failing => {
                        failing = true;
                        warn!(error = %e, "cannot reload tokens: revocations are not seen until the store answers");
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(auth)
    }

    /// Checks tokens by asking the master (its `/keel/v1/whoami`).
    /// Checks tokens by asking the master (its `/keel/v1/whoami`): the one that leads, among several.
    pub fn remote(master: &crate::client::Target) -> Auth {
        Auth::with_mode(Mode::Remote { master: master.clone(), client: master.http_client_without_redirects() })
    }

    pub fn is_off(&self) -> bool {
        matches!(self.inner.mode, Mode::Off)
    }

    fn load(&self, tokens: &[TokenRecord]) {
        let map = tokens
            .iter()
            .map(|t| {
                let p = Principal { name: t.name.clone(), role: t.role, framework_roles: t.framework_roles.clone() };
                (t.hash.clone(), Arc::new(p))
            })
            .collect();
        *self.inner.stored.write().expect("lock poisoned") = map;
    }

    /// A credential for this process's own use, known only in memory; returns the token.
    pub fn internal(&self, principal: Principal) -> String {
        let token = generate_token();
        self.inner.internal.write().expect("lock poisoned").insert(hash_token(&token), Arc::new(principal));
        token
    }

    fn lookup(&self, hash: &str) -> Option<Arc<Principal>> {
        if let Some(p) = self.inner.stored.read().expect("lock poisoned").get(hash) {
            return Some(p.clone());
        }
        self.inner.internal.read().expect("lock poisoned").get(hash).cloned()
    }

    /// Checks a presented credential against this process's tables, without waiting on anything: the
    /// check gRPC and local HTTP make. A remote `Auth` answers from its cache only.
    pub fn check(&self, authorization: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        match &self.inner.mode {
            Mode::Off => Ok(Arc::new(Principal::anonymous())),
            Mode::Local => self.check_local(authorization),
            Mode::Remote { .. } => {
                let key = hash_token(authorization.unwrap_or(""));
                let cache = self.inner.remote_cache.lock().expect("lock poisoned");
                match cache.get(&key) {
                    Some((at, answer)) if at.elapsed() < REMOTE_TTL => answer.clone(),
                    _ => Err(AuthError::Unavailable("not cached".into())),
                }
            }
        }
    }

    fn check_local(&self, authorization: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        let presented = parse_authorization(authorization.ok_or(AuthError::Missing)?).ok_or(AuthError::Invalid)?;
        let principal = self.lookup(&hash_token(presented.token())).ok_or(AuthError::Invalid)?;
        if let Presented::Basic { user, .. } = &presented
            && user != &principal.name
        {
            return Err(AuthError::Invalid);
        }
        Ok(principal)
    }

    /// Checks a presented credential; a remote `Auth` asks the master when its cached answer is older than
    /// [`REMOTE_TTL`].
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        let Mode::Remote { master, client } = &self.inner.mode else {
            return self.check(authorization);
        };
        if authorization.is_none() {
            return Err(AuthError::Missing);
        }
        match self.check(authorization) {
            Err(AuthError::Unavailable(_)) => {}
            // A cached answer, refusals included: a bad token costs the master one question per REMOTE_TTL.
            answer => return answer,
        }
        let key = hash_token(authorization.unwrap_or(""));
        let answer = ask_leader(client, master, authorization).await;
        if !matches!(answer, Err(AuthError::Unavailable(_))) {
            let mut cache = self.inner.remote_cache.lock().expect("lock poisoned");
            if cache.len() >= MAX_SESSIONS {
                cache.retain(|_, (at, _)| at.elapsed() < REMOTE_TTL);
            }
            if cache.len() < MAX_SESSIONS {
                cache.insert(key, (Instant::now(), answer.clone()));
            }
        }
        answer
    }

    /// A one-time login code for `principal`, for a URL such as `/?token=CODE`.
    pub fn login_code(&self, principal: Principal) -> String {
        let code = generate_token();
        self.inner.login_codes.lock().expect("lock poisoned").insert(hash_token(&code), (Arc::new(principal), None));
        code
    }

    /// A one-time login code that signs in as `token`'s principal, for as long as `token` is valid.
    pub fn login_code_for(&self, token: &str) -> Option<String> {
        let hash = hash_token(token);
        let principal = self.lookup(&hash)?;
        let code = generate_token();
        self.inner.login_codes.lock().expect("lock poisoned").insert(hash_token(&code), (principal, Some(hash)));
        Some(code)
    }

    /// Opens a console session for a one-time login code, which is then spent; returns the session's
    /// cookie value. Only codes: a link must never carry a long-lived token.
    pub fn open_session_with_code(&self, code: &str) -> Result<(String, Arc<Principal>), AuthError> {
        let found = self.inner.login_codes.lock().expect("lock poisoned").remove(&hash_token(code));
        let (principal, token_hash) = found.ok_or(AuthError::Invalid)?;
        Ok(self.new_session(principal, token_hash))
    }

    /// Opens a console session for a token (the login form); returns the session's cookie value.
    pub fn open_session_with_token(&self, token: &str) -> Result<(String, Arc<Principal>), AuthError> {
        let hash = hash_token(token);
        let (principal, token_hash) = match self.lookup(&hash) {
            Some(p) => (p, Some(hash)),
            None if self.is_off() => (Arc::new(Principal::anonymous()), None),
            None => return Err(AuthError::Invalid),
        };
        Ok(self.new_session(principal, token_hash))
    }

    fn new_session(&self, principal: Arc<Principal>, token_hash: Option<String>) -> (String, Arc<Principal>) {
        let cookie = generate_token();
        let mut sessions = self.inner.sessions.lock().expect("lock poisoned");
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires > Instant::now());
            if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) {
                sessions.remove(&oldest);
            }
        }
        let session = Session {
            principal: principal.clone(),
            token_hash,
            expires: Instant::now() + SESSION_TTL,
            csrf: generate_token(),
        };
        sessions.insert(hash_token(&cookie), session);
        (cookie, principal)
    }

    /// The principal of a console session, if it is open and the token it came from is still valid.
    pub fn session(&self, cookie: &str) -> Option<Arc<Principal>> {
        let key = hash_token(cookie);
        let mut sessions = self.inner.sessions.lock().expect("lock poisoned");
        let s = sessions.get(&key)?;
        let token_valid = s.token_hash.as_ref().is_none_or(|h| self.lookup(h).is_some());
        if s.expires <= Instant::now() || !token_valid {
            sessions.remove(&key);
            return None;
        }
        Some(s.principal.clone())
    }

    /// The CSRF token of an open session: pages embed it, and writes with the session's cookie must send
    /// it back in `X-CSRF-Token`.
    pub fn session_csrf(&self, cookie: &str) -> Option<String> {
        self.session(cookie)?;
        self.inner.sessions.lock().expect("lock poisoned").get(&hash_token(cookie)).map(|s| s.csrf.clone())
    }

    /// Ends a console session.
    pub fn close_session(&self, cookie: &str) -> bool {
        self.inner.sessions.lock().expect("lock poisoned").remove(&hash_token(cookie)).is_some()
    }
}

/// Asks the masters in turn, from the current one, until one that leads answers (a standby answers 307 or
/// 503, and the credential must not follow a redirect elsewhere).
async fn ask_leader(
    client: &reqwest::Client,
    master: &crate::client::Target,
    authorization: Option<&str>,
) -> Result<Arc<Principal>, AuthError> {
    let mut answer = Err(AuthError::Unavailable("no master answered".into()));
    for _ in 0..master.masters().len() {
        let whoami = format!("{}/keel/v1/whoami", master.current_url());
        answer = ask_master(client, &whoami, authorization).await;
        match &answer {
            Err(AuthError::Unavailable(_)) => master.rotate(),
            _ => return answer,
        }
    }
    answer
}

async fn ask_master(
    client: &reqwest::Client,
    whoami: &str,
    authorization: Option<&str>,
) -> Result<Arc<Principal>, AuthError> {
    let mut req = client.get(whoami).timeout(Duration::from_secs(5));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.map_err(|e| AuthError::Unavailable(format!("the master did not answer: {e}")))?;
    match resp.status().as_u16() {
        200 => {}
        401 => return Err(AuthError::Invalid),
        s => return Err(AuthError::Unavailable(format!("the master answered {s}"))),
    }
    let body: serde_json::Value =
        resp.json().await.map_err(|e| AuthError::Unavailable(format!("unreadable answer from the master: {e}")))?;
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let role = body["role"].as_str().and_then(|r| r.parse().ok());
    let Some(role) = role else {
        return Err(AuthError::Unavailable("the master's answer has no role".into()));
    };
    let framework_roles = body["framework_roles"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    debug!(%name, %role, "credential checked with the master");
    Ok(Arc::new(Principal { name, role, framework_roles }))
}

/// What a client process presents: `KEEL_TOKEN`, or the first line of a token file.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role) -> Principal {
        Principal::new("p", role)
    }

    #[test]
    fn the_matrix() {
        use Action::*;
        let actions = [Read, ReadSecrets, Write, Admin, Subscribe("*"), RegisterAgent, ReadTaskOutput];
        let expect = |role: Role| -> Vec<bool> { actions.iter().map(|a| p(role).may(a)).collect() };
        assert_eq!(expect(Role::Viewer), [true, false, false, false, false, false, true]);
        assert_eq!(expect(Role::Operator), [true, true, true, false, false, false, true]);
        assert_eq!(expect(Role::Admin), [true, true, true, true, true, true, true]);
        assert_eq!(expect(Role::Framework), [false, false, false, false, true, false, true]);
        assert_eq!(expect(Role::Agent), [false, false, false, false, false, true, false]);
    }

    #[test]
    fn framework_tokens_are_limited_to_their_roles() {
        let f = Principal { framework_roles: vec!["batch".into()], ..p(Role::Framework) };
        assert!(f.may(&Action::Subscribe("batch")));
        assert!(!f.may(&Action::Subscribe("*")));
        assert!(p(Role::Framework).may(&Action::Subscribe("anything")));
    }

    #[test]
    fn authorization_headers() {
        assert_eq!(parse_authorization("Bearer abc"), Some(Presented::Token("abc".into())));
        assert_eq!(parse_authorization("bearer  abc "), Some(Presented::Token("abc".into())));
        assert_eq!(parse_authorization("token=abc"), Some(Presented::Token("abc".into())));
        let basic = format!("Basic {}", STANDARD.encode("ops:keel_x"));
        assert_eq!(parse_authorization(&basic), Some(Presented::Basic { user: "ops".into(), token: "keel_x".into() }));
        assert_eq!(parse_authorization("Basic !!!"), None);
        assert_eq!(parse_authorization("Bearer"), None);
        assert_eq!(parse_authorization("Digest x"), None);
        assert_eq!(parse_authorization("token="), None);
    }

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert!(a.starts_with("keel_") && a.len() == 48, "{a}");
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
        assert!(!format!("{:?}", Presented::Token(a.clone())).contains(&a));
    }

    #[test]
    fn names() {
        assert!(check_name("ops-team_1.x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a:b").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    fn local_with(tokens: &[(&str, Role)]) -> (Auth, Vec<String>) {
        let auth = Auth::with_mode(Mode::Local);
        let secrets: Vec<String> = tokens.iter().map(|_| generate_token()).collect();
        let records: Vec<TokenRecord> = tokens
            .iter()
            .zip(&secrets)
            .map(|((name, role), t)| TokenRecord {
                id: generate_id("tok_"),
                name: (*name).into(),
                role: *role,
                framework_roles: vec![],
                hash: hash_token(t),
                created_at: 0,
                revoked_at: None,
            })
            .collect();
        auth.load(&records);
        (auth, secrets)
    }

    #[test]
    fn checks_bearer_and_basic_and_refuses_the_rest() {
        let (auth, t) = local_with(&[("ops", Role::Operator)]);
        assert_eq!(auth.check(Some(&format!("Bearer {}", t[0]))).unwrap().name, "ops");
        assert_eq!(auth.check(Some(&format!("token={}", t[0]))).unwrap().role, Role::Operator);
        let basic = |u: &str| format!("Basic {}", STANDARD.encode(format!("{u}:{}", t[0])));
        assert!(auth.check(Some(&basic("ops"))).is_ok());
        assert_eq!(auth.check(Some(&basic("admin"))), Err(AuthError::Invalid));
        assert_eq!(auth.check(None), Err(AuthError::Missing));
        assert_eq!(auth.check(Some("Bearer keel_nope")), Err(AuthError::Invalid));
        // A reload without the token (revoked) refuses it at once.
        auth.load(&[]);
        assert_eq!(auth.check(Some(&format!("Bearer {}", t[0]))), Err(AuthError::Invalid));
    }

    #[test]
    fn login_codes_work_once_and_sessions_end_with_logout_or_their_token() {
        let (auth, t) = local_with(&[("admin", Role::Admin)]);
        let code = auth.login_code(Principal::new("admin", Role::Admin));
        let (cookie, who) = auth.open_session_with_code(&code).unwrap();
        assert_eq!(who.name, "admin");
        assert!(auth.open_session_with_code(&code).is_err(), "a login code works once");
        assert!(auth.open_session_with_code(&t[0]).is_err(), "a token is not a login code");
        assert!(auth.session(&cookie).is_some());
        assert!(auth.close_session(&cookie));
        assert!(auth.session(&cookie).is_none());
        // A session opened with a token ends when the token is revoked.
        let (cookie, _) = auth.open_session_with_token(&t[0]).unwrap();
        assert!(auth.session(&cookie).is_some());
        auth.load(&[]);
        assert!(auth.session(&cookie).is_none());
    }

    #[test]
    fn internal_credentials_work_without_the_store() {
        let (auth, _) = local_with(&[]);
        let t = auth.internal(Principal::new("keel:agent", Role::Agent));
        auth.load(&[]);
        assert_eq!(auth.check(Some(&format!("Bearer {t}"))).unwrap().name, "keel:agent");
    }

    #[test]
    fn off_lets_everyone_in_as_anonymous() {
        assert_eq!(Auth::off().check(None).unwrap().name, "anonymous");
    }
}
