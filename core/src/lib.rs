//! Keel's core: the master, the agent, the allocator, the store and the scheduler API that every framework
//! (built in or not) uses. It knows nothing of the frameworks built on it.

pub mod agent;
pub mod allocator;
pub mod audit;
pub mod auth;
mod coalesce;
pub mod election;
pub mod gate;
pub mod health;
pub mod json;
pub mod master;
pub mod mesos;
pub mod openapi;
pub mod query;
pub mod secrets;
pub mod server;
pub mod store;
pub mod testing;
pub mod tls;
pub mod version;

// The scheduler API, its types and the driver live in their own crate, which frameworks depend on
// without the master, the agent or the store; they are re-exported under their old paths.
pub use keel_driver::{api, client, convert, ids, proto, resources, scheduler, task};
