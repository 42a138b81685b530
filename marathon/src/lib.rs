//! Keel's services framework, compatible with Marathon's `/v2` REST API (issue #4).
//!
//! The app model with Marathon's defaults and validation ([`app`]), its store with version history and the
//! launched instances ([`store`]), placement constraints ([`placement`]), changes of definitions as a pure step
//! ([`edit`]), deployment planning ([`deployment`]: a rolling upgrade's step, pure), the scheduler that
//! keeps instances running and rolls out deployments ([`scheduler`]), and the `/v2` endpoints over them, with the queue,
//! events (SSE) and groups ([`api`]).

pub mod api;
pub mod app;
pub mod callbacks;
pub mod deployment;
pub mod edit;
pub mod placement;
pub mod reconciliation;
pub mod scheduler;
pub mod store;
