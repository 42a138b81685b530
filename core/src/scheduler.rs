//! The framework side of the scheduler API: a driver that subscribes to the master, re-subscribes with the
//! same framework id whenever the stream breaks (a master restart, a dropped connection), and hands the
//! framework domain events. Keel's own frameworks and `keel execute` use it exactly as an outside framework
//! would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{Call, Event, FrameworkInfo};
use crate::convert::{call_to_proto, subscribe_to_proto};
use crate::ids::FrameworkId;
use crate::proto;
use crate::proto::scheduler_client::SchedulerClient;

/// What the driver tells the framework.
#[derive(Clone, Debug, PartialEq)]
pub enum DriverEvent {
    /// An event from the master. `Event::Subscribed` comes first on every (re)connection.
    Event(Event),
    /// The stream broke; the driver is reconnecting.
    Disconnected(String),
    /// The driver gave up for good: the framework was torn down, or the master refused it.
    Stopped(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("not subscribed to the master right now")]
    NotConnected,
}

struct Connection {
    framework_id: FrameworkId,
    calls: mpsc::Sender<proto::Call>,
}

/// Sends calls on the current subscription; cheap to clone.
#[derive(Clone)]
pub struct SchedulerHandle {
    current: Arc<Mutex<Option<Connection>>>,
    framework_id: Arc<Mutex<Option<FrameworkId>>>,
    /// Set by [`SchedulerHandle::teardown`]: the stream closing after it is expected, not a fault.
    stopping: Arc<AtomicBool>,
}

impl SchedulerHandle {
    /// Sends a call. Calls made while disconnected fail; the framework reconciles after re-subscribing.
    pub async fn call(&self, call: Call) -> Result<(), DriverError> {
        let (fid, tx) = {
            let current = self.current.lock().expect("lock poisoned");
            let c = current.as_ref().ok_or(DriverError::NotConnected)?;
            (c.framework_id.clone(), c.calls.clone())
        };
        tx.send(call_to_proto(&fid, &call)).await.map_err(|_| DriverError::NotConnected)
    }

    /// Tears the framework down (its tasks are killed) and stops the driver from re-subscribing.
    pub async fn teardown(&self) -> Result<(), DriverError> {
        self.call(Call::Teardown).await?;
        // Only once the call is on its way is the stream's end expected rather than a fault.
        self.stopping.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The framework id, once the master has assigned one.
    pub fn framework_id(&self) -> Option<FrameworkId> {
        self.framework_id.lock().expect("lock poisoned").clone()
    }
}

/// Starts a driver for a framework; `framework_id` re-subscribes an existing one.
pub fn start(
    master: impl Into<crate::client::Target>,
    info: FrameworkInfo,
    framework_id: Option<FrameworkId>,
    shutdown: CancellationToken,
) -> (SchedulerHandle, mpsc::Receiver<DriverEvent>) {
    let handle = SchedulerHandle {
        current: Arc::default(),
        framework_id: Arc::new(Mutex::new(framework_id)),
        stopping: Arc::default(),
    };
    let (events, rx) = mpsc::channel(crate::master::CONNECTION_BUFFER);
    tokio::spawn(drive(master.into(), info, handle.clone(), events, shutdown));
    (handle, rx)
}

async fn drive(
    master: crate::client::Target,
    info: FrameworkInfo,
    handle: SchedulerHandle,
    events: mpsc::Sender<DriverEvent>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = subscribe_once(&master, &info, &handle, &events);
        let outcome = tokio::select! {
            o = attempt => o,
            _ = shutdown.cancelled() => return,
        };
        *handle.current.lock().expect("lock poisoned") = None;
        if handle.stopping.load(Ordering::SeqCst) {
            let _ = events.send(DriverEvent::Stopped("torn down".into())).await;
            return;
        }
        match outcome {
            Outcome::Fatal(reason) => {
                warn!(%reason, "scheduler driver stopped");
                let _ = events.send(DriverEvent::Stopped(reason)).await;
                return;
            }
            Outcome::Broken { reason, was_subscribed } => {
                if was_subscribed {
                    backoff = Duration::from_millis(100);
                    info!(%reason, "lost subscription; re-subscribing");
                }
                // Another master may lead now (or this one was a standby).
                master.rotate();
                if events.send(DriverEvent::Disconnected(reason)).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(master.max_backoff());
    }
}

enum Outcome {
    Fatal(String),
    Broken { reason: String, was_subscribed: bool },
}

async fn subscribe_once(
    master: &crate::client::Target,
    info: &FrameworkInfo,
    handle: &SchedulerHandle,
    events: &mpsc::Sender<DriverEvent>,
) -> Outcome {
    let broken = |reason: String| Outcome::Broken { reason, was_subscribed: false };
    let mut client = match master.connect().await {
        Ok(c) => SchedulerClient::with_interceptor(c, master.credential()).max_decoding_message_size(64 << 20),
        Err(e) => return broken(format!("cannot connect to {}: {e}", master.current_url())),
    };
    let (tx, rx) = mpsc::channel(crate::master::CONNECTION_BUFFER);
    let fid = handle.framework_id();
    if tx.send(subscribe_to_proto(fid.as_ref(), info)).await.is_err() {
        return broken("call channel closed".into());
    }
    let mut stream = match client.subscribe(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
            ) =>
        {
            return Outcome::Fatal(status.message().to_owned());
        }
        Err(status) => return broken(format!("subscribe failed: {}", status.message())),
    };
    let mut subscribed = false;
    while let Some(item) = stream.next().await {
        let event = match item
            .map_err(|s| s.message().to_owned())
            .and_then(|e| Event::try_from(e).map_err(|e| e.to_string()))
        {
            Ok(e) => e,
            Err(reason) => return Outcome::Broken { reason, was_subscribed: subscribed },
        };
        if let Event::Subscribed { framework_id, .. } = &event {
            subscribed = true;
            *handle.framework_id.lock().expect("lock poisoned") = Some(framework_id.clone());
            *handle.current.lock().expect("lock poisoned") =
                Some(Connection { framework_id: framework_id.clone(), calls: tx.clone() });
        }
        if events.send(DriverEvent::Event(event)).await.is_err() {
            return Outcome::Fatal("the framework stopped listening".into());
        }
    }
    Outcome::Broken { reason: "the master closed the stream".into(), was_subscribed: subscribed }
}
