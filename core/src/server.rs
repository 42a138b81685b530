//! One listening port for everything, as Mesos serves everything on 5050: gRPC (scheduler and agent
//! services) and HTTP (the operator API, and whatever routes the binary adds, such as frameworks' REST
//! APIs and the console) share it. HTTP/1 and HTTP/2 are told apart per connection.

use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::master::grpc::{AgentService, SchedulerService};
use crate::master::{MasterHandle, http};
use crate::proto::agent_service_server::AgentServiceServer;
use crate::proto::scheduler_server::SchedulerServer;

/// How long open streams get to finish after shutdown is asked for before connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Builds the router for a master: gRPC services, the operator API and `extra` routes.
pub fn router(master: MasterHandle, extra: Router) -> Router {
    let grpc = tonic::service::Routes::new(
        SchedulerServer::new(SchedulerService::new(master.clone())).max_decoding_message_size(64 << 20),
    )
    .add_service(AgentServiceServer::new(AgentService::new(master.clone())).max_decoding_message_size(64 << 20))
    .into_axum_router();
    http::router(master).merge(extra).merge(grpc).fallback(http::not_found)
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, "listening (gRPC and HTTP)");
    let graceful = shutdown.clone();
    // Scheduler and agent streams carry many small messages; Nagle's algorithm would hold each one back.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(async move { graceful.cancelled().await });
    tokio::select! {
        r = server => r,
        // Long-lived streams would hold a graceful shutdown open forever.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => Ok(()),
    }
}
