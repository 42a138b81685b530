//! Keel's scheduler API and the Rust driver of a framework: what a framework needs to run on a Keel master,
//! without the master, the agent or the store (those are `keel-core`, which re-exports these modules).
//!
//! - [`api`]: the scheduler and agent protocols as plain types (`Call`, `Event`, `Offer`, …);
//! - [`task`], [`resources`], [`ids`]: tasks and their states, resources, ids;
//! - [`scheduler`]: the driver, which subscribes, re-subscribes with the same id after a failure and sends
//!   calls; [`client::Target`] says which master (or masters) to reach, with what credential;
//! - [`convert`] and [`proto`]: the gRPC wire format.
//!
//! `examples/batch_files.rs` in Keel's repository is a whole framework on this driver.

pub mod api;
pub mod client;
pub mod convert;
pub mod ids;
pub mod resources;
pub mod scheduler;
pub mod task;

/// The generated protobuf and gRPC types of `proto/keel.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("keel.v1");
}
