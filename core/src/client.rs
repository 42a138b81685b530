//! How agents, frameworks and `keel execute` reach the master: its address, the credential they present
//! (gRPC metadata `authorization: Bearer …`) and, for `https://` addresses, the CA that the master's
//! certificate must chain to.

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A master to talk to, the token to present, and the CA to verify it with.
#[derive(Clone, Default)]
pub struct Target {
    /// `http://host:port` or `https://host:port` (a bare `host:port` is taken as http).
    pub url: String,
    pub token: Option<String>,
    /// PEM of the CA that signed the master's certificate (`--ca-cert`).
    pub ca: Option<Arc<Vec<u8>>>,
    /// PEM of a client certificate and its key, for a master that verifies clients (mTLS).
    pub identity: Option<Arc<(Vec<u8>, Vec<u8>)>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = if self.token.is_some() { "***" } else { "none" };
        write!(f, "Target({}, token: {token})", self.url)
    }
}

impl Target {
    pub fn new(url: impl Into<String>, token: Option<String>) -> Target {
        Target { url: crate::agent::normalize_url(&url.into()), token, ca: None, identity: None }
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
        self.url.starts_with("https://")
    }

    /// An HTTP client for the master's REST API that trusts the same CA.
    pub fn http_client(&self) -> reqwest::Client {
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
        b.build().unwrap_or_default()
    }

    /// The interceptor that adds this target's credential to every call.
    pub fn credential(&self) -> Credential {
        let value = self.token.as_ref().and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok());
        Credential(value)
    }

    /// A channel to the master, over TLS for an `https://` address.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(self.url.clone())?;
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
