//! Keel's services framework, compatible with Marathon's `/v2` REST API (issue #4).
//!
//! The app model with Marathon's defaults and validation ([`app`]), its store with version history and the
//! launched instances ([`store`]), changes of definitions as a pure step ([`edit`]), and the scheduler that
//! keeps instances running and rolls out deployments ([`scheduler`]). The scheduler's decisions are pure
//! parts: the apps with their launch delays ([`apps`]), the instances with what converging an app needs
//! ([`instances`]), deployment planning ([`deployment`]: a rolling upgrade's step) and placement
//! ([`placement`]: constraints, and the task that fits an offer). The `/v2` endpoints over them, with the
//! queue, events (SSE) and groups, are in [`api`].

pub mod api;
pub mod app;
pub mod apps;
pub mod callbacks;
pub mod deployment;
pub mod edit;
pub mod instances;
pub mod placement;
pub mod reconciliation;
pub mod scheduler;
pub mod store;
