//! How the console reaches the APIs it renders: the master's, and the frameworks' at the web UI URLs they
//! registered. Every call carries a credential of the person asking (an in-memory token for their
//! principal), so the console can read and do exactly what that person could with the APIs directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use keel_core::auth::{Auth, Principal, Role};
use keel_core::client::Target;
use serde_json::Value;

/// How long one API call may take before the page says the API did not answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The biggest answer the console reads from an API.
const MAX_ANSWER: usize = 64 << 20;

/// Which API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// The master's operator API (`/master/state`, `/keel/v1/...`).
    Master,
    /// The services framework's Marathon API (`/v2/...`).
    Services,
    /// The cron framework's Metronome, Chronos and Keel APIs.
    Jobs,
}

impl Service {
    pub fn parse(s: &str) -> Option<Service> {
        match s {
            "master" => Some(Service::Master),
            "services" => Some(Service::Services),
            "jobs" => Some(Service::Jobs),
            _ => None,
        }
    }

    /// The name the framework registers with the master.
    fn framework_name(self) -> Option<&'static str> {
        match self {
            Service::Master => None,
            Service::Services => Some("marathon"),
            Service::Jobs => Some("chronos"),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Service::Master => "the master",
            Service::Services => "the services framework",
            Service::Jobs => "the cron framework",
        }
    }
}

/// An API's refusal or silence, in words for the page.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The API's status, or 502/503 when it did not answer.
    pub status: StatusCode,
    pub message: String,
    /// Marathon's per-field validation errors: (JSON path, messages).
    pub details: Vec<(String, Vec<String>)>,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into(), details: vec![] }
    }

    /// What the API said, from its JSON error body (`message`, and Marathon's `details`).
    fn from_body(status: StatusCode, body: &[u8]) -> Failure {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let message = v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned());
        let details = v["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|e| {
                        let path = e["path"].as_str().unwrap_or("/").to_owned();
                        let errors = e["errors"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect())
                            .unwrap_or_default();
                        (path, errors)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Failure { status, message, details }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_u16())
    }
}

/// The web UI URL that the active, connected framework named `name` registered, if exactly one URL is
/// registered under that name: with two, the console does not guess which to trust with people's
/// credentials. Pure.
pub fn registered_url(state: &Value, name: &str) -> Result<String, String> {
    let mut urls: Vec<String> = state["frameworks"]
        .as_array()
        .into_iter()
        .flatten()
        // A disconnected framework's URL is most likely its dead leader's: its successor registers its own.
        .filter(|f| f["name"] == name && f["active"] == true && f["connected"] == true)
        .filter_map(|f| f["webui_url"].as_str())
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    urls.sort();
    urls.dedup();
    match urls.len() {
        0 => Err(format!("no framework named '{name}' has registered a web UI URL with the master")),
        1 => Ok(urls.remove(0)),
        _ => Err(format!(
            "frameworks named '{name}' registered different URLs ({}): the console will not guess; \
             pin one with keel master --services-url or --jobs-url",
            urls.join(", ")
        )),
    }
}

/// The console's way to the APIs; cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    master: String,
    auth: Auth,
    /// An in-memory token per principal the console has acted for.
    delegated: Mutex<HashMap<(String, Role), String>>,
    /// Where each framework's API is: given, or found among the frameworks registered with the master.
    fixed: HashMap<Service, String>,
    found: RwLock<HashMap<Service, String>>,
    /// The console's own credential, for the event streams.
    own: Option<String>,
}

impl Upstream {
    /// `master` is the master's address (and CA); `auth` makes credentials for the people the console acts
    /// for. `fixed` names frameworks' addresses that need no looking up (in `keel dev`, the master's own).
    pub fn new(master: &Target, auth: Auth, fixed: HashMap<Service, String>) -> Upstream {
        let own = (!auth.is_off()).then(|| auth.internal(Principal::new("keel:console", Role::Viewer)));
        Upstream {
            inner: Arc::new(Inner {
                // A framework's standby answers 307 to its leader: the console looks the leader up again
                // rather than follow (which would drop the credential on the way to another host).
                http: master.http_client_without_redirects(),
                master: master.url.trim_end_matches('/').to_owned(),
                auth,
                delegated: Mutex::default(),
                fixed,
                found: RwLock::default(),
                own,
            }),
        }
    }

    /// The credential that acts as `principal`; none when auth is off.
    fn token_for(&self, principal: Option<&Principal>) -> Option<String> {
        if self.inner.auth.is_off() {
            return None;
        }
        let p = principal?;
        let mut map = self.inner.delegated.lock().expect("lock poisoned");
        let key = (p.name.clone(), p.role);
        Some(map.entry(key).or_insert_with(|| self.inner.auth.internal(p.clone())).clone())
    }

    /// Where `service`'s API is, looking it up with the master when it is not known yet.
    pub async fn base(&self, service: Service) -> Result<String, Failure> {
        let Some(name) = service.framework_name() else { return Ok(self.inner.master.clone()) };
        if let Some(url) = self.inner.fixed.get(&service) {
            return Ok(url.clone());
        }
        if let Some(url) = self.inner.found.read().expect("lock poisoned").get(&service) {
            return Ok(url.clone());
        }
        // The frameworks alone: the whole state would copy every task, each time a framework is looked for.
        let list = Box::pin(self.get_with(Service::Master, "/keel/v1/frameworks", self.inner.own.clone())).await?;
        let url = registered_url(&list, name).map_err(|m| Failure::new(StatusCode::SERVICE_UNAVAILABLE, m))?;
        self.inner.found.write().expect("lock poisoned").insert(service, url.clone());
        Ok(url)
    }

    /// Forgets where the frameworks were found (one subscribed again, maybe elsewhere).
    pub fn forget(&self) {
        self.inner.found.write().expect("lock poisoned").clear();
    }

    /// `GET path` on `service`, as `principal`.
    pub async fn get(&self, service: Service, path: &str, principal: Option<&Principal>) -> Result<Value, Failure> {
        self.get_with(service, path, self.token_for(principal)).await
    }

    async fn get_with(&self, service: Service, path: &str, token: Option<String>) -> Result<Value, Failure> {
        let (status, body) = self.call(service, "GET", path, None, token).await?;
        if !status.is_success() {
            return Err(Failure::from_body(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            Failure::new(
                StatusCode::BAD_GATEWAY,
                format!("{} answered {path} with something not JSON: {e}", service.label()),
            )
        })
    }

    /// Sends a request to `service` as `principal` and answers its status and body, whatever they are.
    pub async fn forward(
        &self,
        service: Service,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        principal: Option<&Principal>,
    ) -> Result<(StatusCode, Vec<u8>), Failure> {
        self.call(service, method, path, body, self.token_for(principal)).await
    }

    /// [`Self::call_once`]; when a framework answers that it moved (a redirect: the URL found is a standby's
    /// now), the URL is forgotten and the call made once more at the leader looked up again.
    async fn call(
        &self,
        service: Service,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<String>,
    ) -> Result<(StatusCode, Vec<u8>), Failure> {
        for _ in 0..2 {
            let answer = self.call_once(service, method, path, body.clone(), token.clone()).await?;
            if service == Service::Master || !answer.0.is_redirection() {
                return Ok(answer);
            }
            self.moved(service);
        }
        Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is changing leaders; try again in a moment", service.label()),
        ))
    }

    /// `service` may have moved (it did not answer, or answered from a standby): a framework's URL is looked
    /// up again next time. The master's is given, never looked up.
    fn moved(&self, service: Service) {
        if service != Service::Master {
            self.forget();
        }
    }

    async fn call_once(
        &self,
        service: Service,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<String>,
    ) -> Result<(StatusCode, Vec<u8>), Failure> {
        let base = self.base(service).await?;
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| Failure::new(StatusCode::METHOD_NOT_ALLOWED, "unsupported method"))?;
        let mut req = self.inner.http.request(method, format!("{base}{path}")).timeout(CALL_TIMEOUT);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| {
            self.moved(service);
            Failure::new(StatusCode::BAD_GATEWAY, format!("{} did not answer: {e}", service.label()))
        })?;
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut resp = resp;
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            Failure::new(StatusCode::BAD_GATEWAY, format!("{} broke off its answer: {e}", service.label()))
        })? {
            if out.len() + chunk.len() > MAX_ANSWER {
                return Err(Failure::new(
                    StatusCode::BAD_GATEWAY,
                    format!("{}'s answer is too large", service.label()),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok((status, out))
    }

    /// Opens `service`'s event stream at `path` with the console's own credential.
    pub async fn stream(&self, service: Service, path: &str) -> Result<reqwest::Response, Failure> {
        let base = self.base(service).await?;
        // A stream has no overall deadline (the client's is for calls); `live` notices a silent one.
        let forever = Duration::from_secs(10 * 365 * 24 * 3600);
        let mut req =
            self.inner.http.get(format!("{base}{path}")).header("accept", "text/event-stream").timeout(forever);
        if let Some(t) = &self.inner.own {
            req = req.bearer_auth(t);
        }
        // Whatever keeps the stream from opening may be a stale URL (the leader moved).
        let resp = req.send().await.map_err(|e| {
            self.moved(service);
            Failure::new(StatusCode::BAD_GATEWAY, format!("{} did not answer: {e}", service.label()))
        })?;
        if !resp.status().is_success() {
            self.moved(service);
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = resp.bytes().await.unwrap_or_default();
            return Err(Failure::from_body(status, &body));
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_framework_url_is_trusted_only_when_unambiguous() {
        let fw = |name: &str, url: &str, active: bool| json!({"name": name, "webui_url": url, "active": active, "connected": true});
        let state = json!({"frameworks": [fw("marathon", "http://a:8080/", true), fw("chronos", "http://b:8081", true),
                                          fw("marathon", "http://old:1", false)]});
        assert_eq!(registered_url(&state, "marathon"), Ok("http://a:8080".into()));
        let two = json!({"frameworks": [fw("marathon", "http://a:8080", true), fw("marathon", "http://evil:1", true)]});
        assert!(registered_url(&two, "marathon").unwrap_err().contains("will not guess"));
        let odd = json!({"frameworks": [fw("marathon", "javascript:alert(1)", true)]});
        assert!(registered_url(&odd, "marathon").is_err());
        assert!(registered_url(&json!({}), "chronos").is_err());
        // A disconnected framework's URL is its dead leader's, most likely: not trusted.
        let gone = json!({"frameworks": [{"name": "chronos", "webui_url": "http://old:1", "active": true, "connected": false}]});
        assert!(registered_url(&gone, "chronos").is_err());
    }
}
