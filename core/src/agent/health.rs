//! Health checks, run by the agent beside each task that has one, so that no central scheduler has to
//! probe every task (Marathon's own health checks overloaded its leader).
//!
//! A checker probes the task every `interval`, each probe bounded by `timeout`. Failures inside the grace
//! period after the task starts are ignored, and the first success ends the grace period. The checker
//! reports only changes of health; after `max_consecutive_failures` failures in a row it asks the agent to
//! kill the task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::containerizer::{ContainerRecord, Containerizer, LaunchRequest};
use super::{Input, Key};
use crate::task::{HealthCheck, HealthCheckKind};

/// What a checker tells the agent.
pub(super) enum Verdict {
    Healthy(bool, String),
    /// Too many failures in a row: kill the task.
    Kill(String),
}

pub(super) struct Probe {
    pub key: Key,
    pub check: HealthCheck,
    pub port: Option<u16>,
    pub record: ContainerRecord,
    pub request: LaunchRequest,
}

/// Runs a checker until `cancel` fires or it asks for a kill.
pub(super) fn spawn(
    probe: Probe,
    containerizer: Arc<dyn Containerizer>,
    inputs: mpsc::Sender<Input>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let started = Instant::now();
        let check = &probe.check;
        let mut healthy: Option<bool> = None;
        let mut in_grace = true;
        let mut failures = 0u32;
        let mut next = tokio::time::sleep(check.interval.min(Duration::from_secs(1)));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = next => {}
            }
            let result = match tokio::time::timeout(check.timeout, run(&probe, containerizer.as_ref())).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", check.timeout)),
            };
            let verdict = match result {
                Ok(()) => {
                    in_grace = false;
                    failures = 0;
                    (healthy != Some(true)).then(|| {
                        healthy = Some(true);
                        Verdict::Healthy(true, "health check passed".into())
                    })
                }
                Err(_) if in_grace && started.elapsed() < check.grace_period => None,
                Err(why) => {
                    in_grace = false;
                    failures += 1;
                    if check.max_consecutive_failures > 0 && failures >= check.max_consecutive_failures {
                        Some(Verdict::Kill(format!("killed after {failures} consecutive failed health checks: {why}")))
                    } else if healthy != Some(false) {
                        healthy = Some(false);
                        Some(Verdict::Healthy(false, format!("health check failed: {why}")))
                    } else {
                        None
                    }
                }
            };
            if let Some(verdict) = verdict {
                let kill = matches!(verdict, Verdict::Kill(_));
                if inputs.send(Input::Health { key: probe.key.clone(), verdict }).await.is_err() || kill {
                    return;
                }
            }
            next = tokio::time::sleep(check.interval);
        }
    });
}

async fn run(probe: &Probe, containerizer: &dyn Containerizer) -> Result<(), String> {
    match &probe.check.kind {
        HealthCheckKind::Tcp { .. } => {
            let port = probe.port.ok_or("the task has no such port")?;
            TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| format!("cannot connect to port {port}: {e}"))
        }
        HealthCheckKind::Http { path, .. } => {
            let port = probe.port.ok_or("the task has no such port")?;
            let code = http_get(port, path).await.map_err(|e| format!("GET {path} on port {port}: {e}"))?;
            if (200..400).contains(&code) { Ok(()) } else { Err(format!("GET {path} on port {port} answered {code}")) }
        }
        HealthCheckKind::Command { command } => {
            match containerizer.run_check(&probe.record, &probe.request, command).await {
                Ok(0) => Ok(()),
                Ok(code) => Err(format!("command exited with status {code}")),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// A minimal HTTP/1.0 GET; returns the status code.
async fn http_get(port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: keel-health-check\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_get_reads_the_status_code() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in [200, 503] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                s.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
            }
        });
        assert_eq!(http_get(port, "/").await.unwrap(), 200);
        assert_eq!(http_get(port, "/").await.unwrap(), 503);
    }
}
