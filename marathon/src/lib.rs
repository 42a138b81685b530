//! Keel's services framework, compatible with Marathon's `/v2` REST API (issue #4).
//!
//! Built so far: the app model with Marathon's defaults and validation ([`app`]), its store with version
//! history ([`store`]), placement constraints ([`placement`]), the scheduler that keeps instances running
//! ([`scheduler`]) and the `/v2` endpoints over them ([`api`]). Not built yet: deployments (rolling
//! upgrades, rollback, deadlines), the queue and its "why is my app waiting" view, events (SSE), groups.

pub mod api;
pub mod app;
pub mod placement;
pub mod scheduler;
pub mod store;
