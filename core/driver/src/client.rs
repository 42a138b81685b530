//! How agents, frameworks and `keel execute` reach the master: its address, the credential they present
//! (gRPC metadata `authorization: Bearer …`) and, for `https://` addresses, the CA that the master's
//! certificate must chain to.

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Accepts `host:port` as well as a full URL.
pub fn normalize_url(url: &str) -> String {
    if url.contains("://") {
        url.trim_end_matches('/').to_owned()
    } else {
        format!("http://{}", url.trim_end_matches('/'))
    }
}

/// A master to talk to (or several, one of which leads), the token to present, and the CA to verify it
/// with.
#[derive(Clone, Default)]
pub struct Target {
    /// `http://host:port` or `https://host:port` (a bare `host:port` is taken as http): the first master.
    pub url: String,
    /// Every master given (`a,b,c`), in order; gRPC connections go to the current one and move on to the next
    /// when it fails or is a standby ([`Target::rotate`]).
    masters: Arc<Vec<String>>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    pub token: Option<String>,
    /// PEM of the CA that signed the master's certificate (`--ca-cert`).
    pub ca: Option<Arc<Vec<u8>>>,
    /// PEM of a client certificate and its key, for a master that verifies clients (mTLS).
    pub identity: Option<Arc<(Vec<u8>, Vec<u8>)>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = if self.token.is_some() { "***" } else { "none" };
        write!(f, "Target({}, token: {token})", self.masters.join(","))
    }
}

impl Target {
    /// `url` may list several masters, comma-separated: the client follows whichever leads.
    pub fn new(url: impl Into<String>, token: Option<String>) -> Target {
        let url = url.into();
        let mut masters: Vec<String> =
            url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(normalize_url).collect();
        if masters.is_empty() {
            masters.push(normalize_url(&url));
        }
        Target {
            url: masters[0].clone(),
            masters: Arc::new(masters),
            current: Arc::default(),
            token,
            ca: None,
            identity: None,
        }
    }

    /// The master gRPC connections go to now.
    pub fn current_url(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.masters.get(i % self.masters.len().max(1)).map_or(self.url.as_str(), String::as_str)
    }

    /// The longest wait between reconnections: short with several masters, where a failover is expected and
    /// a standby's refusal costs little, so that clients reach a new leader within moments of its election.
    pub fn max_backoff(&self) -> std::time::Duration {
        if self.masters.len() > 1 { std::time::Duration::from_millis(300) } else { std::time::Duration::from_secs(2) }
    }

    /// Moves on to the next master, after the current one failed or turned out not to lead.
    pub fn rotate(&self) {
        if self.masters.len() > 1 {
            self.current.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// This target, verifying the master with the CA in `pem`.
    pub fn with_ca(mut self, pem: Option<Vec<u8>>) -> Target {
        self.ca = pem.map(Arc::new);
        self
    }

    /// This target, presenting a client certificate (PEM) and its key.
    pub fn with_identity(mut self, identity: Option<(Vec<u8>, Vec<u8>)>) -> Target {
        self.identity = identity.map(Arc::new);
        self
    }

    fn is_tls(&self) -> bool {
        self.current_url().starts_with("https://")
    }

    /// An HTTP client for the master's REST API that trusts the same CA.
    pub fn http_client(&self) -> reqwest::Client {
        self.http_client_builder().build().unwrap_or_default()
    }

    /// [`Target::http_client`], answering redirects rather than following them (a standby's 307 must not
    /// carry a credential to wherever it points).
    pub fn http_client_without_redirects(&self) -> reqwest::Client {
        self.http_client_builder().redirect(reqwest::redirect::Policy::none()).build().unwrap_or_default()
    }

    /// Every master given.
    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    fn http_client_builder(&self) -> reqwest::ClientBuilder {
        let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5));
        // Every certificate of the bundle: a file may hold a chain, or several CAs.
        for cert in
            self.ca.as_deref().and_then(|pem| reqwest::Certificate::from_pem_bundle(pem).ok()).unwrap_or_default()
        {
            b = b.add_root_certificate(cert);
        }
        if let Some(id) = &self.identity {
            let pem = [id.0.as_slice(), b"\n", id.1.as_slice()].concat();
            match reqwest::Identity::from_pem(&pem) {
                Ok(identity) => b = b.identity(identity),
                Err(e) => tracing::warn!(error = %e, "the client certificate cannot be used for HTTP"),
            }
        }
        b
    }

    /// The interceptor that adds this target's credential to every call.
    pub fn credential(&self) -> Credential {
        let value = self.token.as_ref().and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok());
        Credential(value)
    }

    /// A channel to the master, over TLS for an `https://` address.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        // A master that dies without closing its connections (a crashed host, a partition) is noticed within
        // seconds, not after TCP's minutes: clients then move on to another master.
        let mut endpoint = Endpoint::from_shared(self.current_url().to_owned())?
            .connect_timeout(std::time::Duration::from_secs(2))
            .http2_keep_alive_interval(std::time::Duration::from_secs(2))
            .keep_alive_timeout(std::time::Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(std::time::Duration::from_secs(10)));
        if self.is_tls() {
            let mut tls = ClientTlsConfig::new();
            if let Some(pem) = &self.ca {
                tls = tls.ca_certificate(Certificate::from_pem(pem.as_slice()));
            }
            if let Some(id) = &self.identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(&id.0, &id.1));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        endpoint.connect().await
    }
}

impl From<&str> for Target {
    fn from(url: &str) -> Target {
        Target::new(url, None)
    }
}

impl From<&String> for Target {
    fn from(url: &String) -> Target {
        Target::new(url.as_str(), None)
    }
}

impl From<String> for Target {
    fn from(url: String) -> Target {
        Target::new(url, None)
    }
}

impl From<&Target> for Target {
    fn from(t: &Target) -> Target {
        t.clone()
    }
}

/// Adds `authorization` metadata to each call.
#[derive(Clone)]
pub struct Credential(Option<MetadataValue<Ascii>>);

impl Interceptor for Credential {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_masters_are_tried_in_turn() {
        let t = Target::new("m1:5050, https://m2:5050/,", None);
        assert_eq!(t.url, "http://m1:5050");
        assert_eq!(t.current_url(), "http://m1:5050");
        t.rotate();
        assert_eq!(t.current_url(), "https://m2:5050");
        t.clone().rotate();
        assert_eq!(t.current_url(), "http://m1:5050", "clones share the position");
        let one = Target::new("http://only:1", None);
        one.rotate();
        assert_eq!(one.current_url(), "http://only:1");
        assert_eq!(format!("{t:?}"), "Target(http://m1:5050,https://m2:5050, token: none)");
    }
}
