//! One listening port for everything, as Mesos serves everything on 5050: gRPC (scheduler and agent
//! services) and HTTP (the operator API, and whatever routes the binary adds, such as frameworks' REST
//! APIs and the console) share it. HTTP/1 and HTTP/2 are told apart per connection.
//!
//! The accept loop is Keel's own rather than `axum::serve`, because that has no timeouts: a client that
//! connects and sends nothing, or half a request, would hold its connection (and a file descriptor)
//! forever. Here:
//! - a connection must show which protocol it speaks within [`Limits::header_read`];
//! - an HTTP/1 request's headers must arrive within the same time, also between keep-alive requests, so an
//!   idle connection is closed after it;
//! - a REST request must be read and answered within [`Limits::request`] (streams, whose bodies are the
//!   point, are exempt: gRPC streams and SSE answer at once and then stream);
//! - HTTP/2 connections (gRPC) are pinged, and closed when the peer stops answering;
//! - at most [`Limits::max_connections`] connections are open at once; more wait in the kernel's backlog.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::coalesce::Coalesce;
use crate::gate;
use crate::master::grpc::{AgentService, Authenticate, SchedulerService};
use crate::master::{MasterHandle, http};
use crate::proto::agent_service_server::AgentServiceServer;
use crate::proto::scheduler_server::SchedulerServer;
use tonic::service::interceptor::InterceptedService;

/// A server's TLS settings.
pub type TlsServerConfig = rustls::ServerConfig;

/// How long open streams get to finish after shutdown is asked for before connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The bounds the server puts on its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; the accept loop waits for one to close beyond this.
    pub max_connections: usize,
    /// Time to send the protocol preface or an HTTP/1 request's headers, and the most an HTTP/1
    /// connection may sit idle between requests.
    pub header_read: Duration,
    /// Time to send a REST request's whole body.
    pub request: Duration,
    /// The largest REST request body, in bytes.
    pub max_body: usize,
    /// Interval of HTTP/2 pings, and how long an unanswered one is waited for.
    pub h2_keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: default_max_connections(),
            header_read: Duration::from_secs(10),
            request: Duration::from_secs(60),
            max_body: 1 << 20,
            h2_keepalive: Duration::from_secs(20),
        }
    }
}

/// Raises the soft limit on open files to the hard one and keeps a quarter of it for everything that is
/// not a client connection (the store, agents' files, task pipes): at most 16,384 connections.
fn default_max_connections() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            1024
        } else {
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
            lim.rlim_cur
        }
    };
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    (soft / 4 * 3).clamp(64, 16_384)
}

/// Builds the router for a master: gRPC services, the operator API and `extra` routes.
pub fn router(master: MasterHandle, extra: Router) -> Router {
    router_with(master, extra, http::Extras::default(), Limits::default())
}

/// [`router`], with the operator API's `extras` and the request time limit of `limits` on the REST routes.
///
/// Every route is behind `extras.gate`: REST requests pass [`gate::protect`], and gRPC streams present
/// their credential as they open ([`Authenticate`]).
pub fn router_with(master: MasterHandle, extra: Router, extras: http::Extras, limits: Limits) -> Router {
    let gate = extras.gate.clone();
    let authenticate = Authenticate(gate.auth.clone());
    let scheduler = SchedulerServer::new(SchedulerService::with_auth(master.clone(), &gate.auth, gate.audit.clone()))
        .max_decoding_message_size(64 << 20);
    let agents = AgentServiceServer::new(AgentService::with_auth(master.clone(), &gate.auth, gate.audit.clone()))
        .max_decoding_message_size(64 << 20);
    let grpc = tonic::service::Routes::new(InterceptedService::new(scheduler, authenticate.clone()))
        .add_service(InterceptedService::new(agents, authenticate))
        .into_axum_router();
    let rest = http::router_with(master, extras)
        .merge(extra)
        .merge(gate::routes(gate.clone()))
        .merge(gate::login_routes(gate.clone()));
    rest_limits(gate::protect(rest, gate), limits).merge(grpc).fallback(http::not_found)
}

/// Puts the REST limits on `router`: a body must arrive whole within [`Limits::request`] (408 otherwise)
/// and be at most [`Limits::max_body`] bytes (413). The body is read before the handler runs, so a slow
/// client never holds a handler, and a slow handler is never mistaken for a slow client.
pub fn rest_limits(router: Router, limits: Limits) -> Router {
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| async move {
        match read_body(req, limits).await {
            Ok(req) => next.run(req).await,
            Err(refusal) => refusal,
        }
    }))
}

async fn read_body(req: Request, limits: Limits) -> Result<Request, Response> {
    let refuse = |status: StatusCode, message: String| {
        (status, axum::Json(serde_json::json!({ "message": message }))).into_response()
    };
    let too_large = || format!("the request body is larger than {} bytes", limits.max_body);
    let declared =
        req.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, too_large()));
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limits.request, axum::body::to_bytes(body, limits.max_body)).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        Ok(Err(e)) if e.to_string().contains("length limit") => Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, too_large())),
        Ok(Err(e)) => Err(refuse(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {:?}", limits.request),
        )),
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, with the default [`Limits`].
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    serve_with(listener, router, Limits::default(), shutdown).await
}

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_tls(listener, router, limits, None, shutdown).await
}

/// A server's TLS settings: its certificate chain and key, and, for client certificates, the CA they must
/// chain to; `require_client_cert` refuses clients without one.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
    require_client_cert: bool,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = crate::tls::read_certs(cert)?;
    let key = crate::tls::read_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in crate::tls::read_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier.build().map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`serve_with`], with TLS on every connection when `tls` is given (HTTP/2, for gRPC, by ALPN).
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "TLS" } else { "plain" };
    info!(%addr, max_connections = limits.max_connections, scheme, "listening (gRPC and HTTP)");
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = tokio_util::task::TaskTracker::new();
    let mut saturated = false;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                saturated = false;
                p
            }
            Err(_) => {
                if !saturated {
                    warn!(max_connections = limits.max_connections, "connection limit reached: new ones wait");
                    saturated = true;
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: not fatal.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Scheduler and agent streams carry many small messages; Nagle's algorithm would hold each one back.
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_connection(tcp, acceptor, router, limits, shutdown).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await;
    Ok(())
}

/// The first bytes every HTTP/2 connection sends.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads (without consuming) until the connection has shown whether it starts with the HTTP/2 preface.
async fn is_http2(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    // `peek` leaves the socket readable, so a client that sent part of the preface is polled, with a
    // growing pause, rather than spun on.
    let mut pause = Duration::from_millis(5);
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

type ConnError = Box<dyn std::error::Error + Send + Sync>;

async fn serve_connection(
    tcp: TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    if let Some(acceptor) = acceptor {
        // The handshake gets the same time as a request's head.
        let stream = match tokio::time::timeout(limits.header_read, acceptor.accept(tcp)).await {
            Ok(r) => r?,
            Err(_) => return Err("no TLS handshake within the header read timeout".into()),
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        return serve_io(stream, h2, router, limits, shutdown).await;
    }
    let h2 = match tokio::time::timeout(limits.header_read, is_http2(&tcp)).await {
        Ok(r) => r?,
        Err(_) => return Err("no request within the header read timeout".into()),
    };
    serve_io(tcp, h2, router, limits, shutdown).await
}

async fn serve_io<I>(
    io: I,
    h2: bool,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), ConnError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The protocol is known, so the builder does not sniff it again; each has its own bounds.
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keepalive)
        .keep_alive_timeout(limits.h2_keepalive)
        .max_concurrent_streams(1024);
    if h2 {
        drive(builder.http2_only(), io, router, shutdown).await
    } else {
        // Pipelined requests get their answers in one write ([`Coalesce`]).
        drive(builder.http1_only(), Coalesce::new(io), router, shutdown).await
    }
}

/// Serves one connection with `builder` until it ends, or until `shutdown` and a grace period.
async fn drive<I>(
    builder: Builder<TokioExecutor>,
    io: I,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), ConnError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r?,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn start(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = rest_limits(
            Router::new()
                .route("/ping", axum::routing::get(|| async { "pong" }))
                .route("/echo", axum::routing::post(|body: axum::body::Bytes| async move { body })),
            limits,
        );
        let token = CancellationToken::new();
        tokio::spawn(serve_with(listener, router, limits, token.clone()));
        (addr, token)
    }

    fn quick() -> Limits {
        Limits {
            max_connections: 4,
            header_read: Duration::from_millis(300),
            request: Duration::from_millis(300),
            max_body: 1024,
            h2_keepalive: Duration::from_secs(5),
        }
    }

    async fn get_ping(addr: std::net::SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out)).await.unwrap().unwrap();
        out
    }

    /// Idle, silent and half-sent connections are closed, and do not keep others out.
    #[tokio::test]
    async fn idle_and_half_sent_connections_are_closed_and_free_their_slot() {
        let (addr, token) = start(quick()).await;
        // Fill every slot with connections that send nothing or half a request.
        let mut idle = Vec::new();
        for i in 0..4 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                c.write_all(b"GET /ping HTTP/1.1\r\nhost:").await.unwrap();
            }
            idle.push(c);
        }
        // The server closes each of them by itself.
        for mut c in idle {
            let mut buf = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
            assert!(r.is_ok(), "an idle connection was left open");
        }
        assert!(get_ping(addr).await.ends_with("pong"));
        token.cancel();
    }

    #[tokio::test]
    async fn a_body_that_never_comes_answers_408_in_json() {
        let (addr, token) = start(quick()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc").await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out)).await.unwrap().unwrap();
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.contains("\"message\""), "{out}");
        token.cancel();
    }

    #[tokio::test]
    async fn a_body_over_the_limit_answers_413_and_a_slow_handler_is_not_a_timeout() {
        let limits = quick();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            "done"
        };
        let router = rest_limits(
            Router::new()
                .route("/echo", axum::routing::post(|body: axum::body::Bytes| async move { body }))
                .route("/slow", axum::routing::post(slow)),
            limits,
        );
        let token = CancellationToken::new();
        tokio::spawn(serve_with(listener, router, limits, token.clone()));
        let ask = |req: String| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out)).await.unwrap().unwrap();
            out
        };
        let big = "x".repeat(2000);
        let out =
            ask(format!("POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2000\r\n\r\n{big}"))
                .await;
        assert!(out.starts_with("HTTP/1.1 413") && out.contains("larger than 1024 bytes"), "{out}");
        let out = ask(format!("POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n7d0\r\n{big}\r\n0\r\n\r\n")).await;
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        // The handler takes twice the request limit: that is not the client's fault.
        let out = ask("POST /slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".into()).await;
        assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("done"), "{out}");
        token.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_slot() {
        let limits = Limits { header_read: Duration::from_secs(30), ..quick() };
        let (addr, token) = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).contains("pong"));
            held.push(c);
        }
        let waiting = tokio::spawn(get_ping(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a fifth connection was served past the limit of 4");
        drop(held.pop());
        let out = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert!(out.ends_with("pong"));
        token.cancel();
    }
}
