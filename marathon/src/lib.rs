//! Keel's services framework, compatible with Marathon's `/v2` REST API (issue #4).
//!
//! Built so far: the app model with Marathon's defaults and validation ([`app`]), its store with version
//! history ([`store`]), and the app CRUD endpoints ([`api`]). Not built yet: the scheduler that launches and
//! keeps instances alive, deployments, health, queue, events, groups. See the README's status table.

pub mod api;
pub mod app;
pub mod store;
