//! How agents, frameworks and `keel execute` reach the master: its address and the credential they
//! present (gRPC metadata `authorization: Bearer …`).

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

/// A master to talk to, and the token to present.
#[derive(Clone, Default)]
pub struct Target {
    /// `http://host:port` (a bare `host:port` is taken as http).
    pub url: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = if self.token.is_some() { "***" } else { "none" };
        write!(f, "Target({}, token: {token})", self.url)
    }
}

impl Target {
    pub fn new(url: impl Into<String>, token: Option<String>) -> Target {
        Target { url: crate::agent::normalize_url(&url.into()), token }
    }

    /// The interceptor that adds this target's credential to every call.
    pub fn credential(&self) -> Credential {
        let value = self.token.as_ref().and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok());
        Credential(value)
    }

    /// A channel to the master (connected lazily by the first call's `ready`).
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_shared(self.url.clone())?.connect().await
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
