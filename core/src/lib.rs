//! Keel's core: the master, the agent, the allocator, the store and the scheduler API that every framework
//! (built in or not) uses. It knows nothing of the frameworks built on it.

pub mod agent;
pub mod allocator;
pub mod api;
pub mod audit;
pub mod auth;
pub mod client;
pub mod convert;
pub mod election;
pub mod gate;
pub mod health;
pub mod ids;
pub mod json;
pub mod master;
pub mod mesos;
pub mod openapi;
pub mod query;
pub mod resources;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod store;
pub mod task;
pub mod testing;
pub mod tls;
pub mod version;

/// The generated protobuf and gRPC types of `proto/keel.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("keel.v1");
}
