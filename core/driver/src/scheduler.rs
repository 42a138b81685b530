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
    calls: Arc<dyn CallSink>,
}

/// Where a subscription's calls go.
#[async_trait::async_trait]
pub trait CallSink: Send + Sync + 'static {
    /// Sends one call of framework `framework_id` (as SUBSCRIBED named it); an error means the
    /// subscription is gone.
    async fn send(&self, framework_id: &FrameworkId, call: Call) -> Result<(), DriverError>;
}

#[async_trait::async_trait]
impl CallSink for mpsc::Sender<Call> {
    async fn send(&self, _: &FrameworkId, call: Call) -> Result<(), DriverError> {
        mpsc::Sender::send(self, call).await.map_err(|_| DriverError::NotConnected)
    }
}

/// The gRPC stream's calls, encoded by the caller, so that the caller's pace is what the stream carries
/// (encoding on the stream's side let a framework queue calls faster than the master took them, and the
/// master's memory grew with the queue).
#[async_trait::async_trait]
impl CallSink for mpsc::Sender<crate::proto::Call> {
    async fn send(&self, framework_id: &FrameworkId, call: Call) -> Result<(), DriverError> {
        mpsc::Sender::send(self, call_to_proto(framework_id, &call)).await.map_err(|_| DriverError::NotConnected)
    }
}

/// One subscription to a master: where the framework's calls go, and the events that come back (an
/// error, or the stream's end, breaks the subscription).
pub struct Session {
    pub calls: Arc<dyn CallSink>,
    pub events: futures::stream::BoxStream<'static, Result<Event, String>>,
}

/// Why a subscription could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    /// The master refused the framework for good (a bad request, or no credential for it).
    Refused(String),
    /// Worth trying again: the master is away, or is not the leader.
    Unavailable(String),
}

/// How a driver reaches the master: over gRPC ([`crate::client::Target`]), or, in a test, over channels
/// to a master in the same process.
#[async_trait::async_trait]
pub trait Link: Send + Sync + 'static {
    /// Subscribes the framework (again, with its id, once it has one).
    async fn subscribe(
        &self,
        framework_id: Option<FrameworkId>,
        info: &FrameworkInfo,
    ) -> Result<Session, SubscribeError>;
    /// The subscription broke or was refused: another master may lead now.
    fn failed(&self) {}
    /// The longest wait between two subscriptions.
    fn max_backoff(&self) -> Duration {
        Duration::from_secs(30)
    }
    /// Where the master is, for logs.
    fn describe(&self) -> String;
}

#[async_trait::async_trait]
impl Link for crate::client::Target {
    async fn subscribe(
        &self,
        framework_id: Option<FrameworkId>,
        info: &FrameworkInfo,
    ) -> Result<Session, SubscribeError> {
        let mut client = match self.connect().await {
            Ok(c) => SchedulerClient::with_interceptor(c, self.credential()).max_decoding_message_size(64 << 20),
            Err(e) => {
                return Err(SubscribeError::Unavailable(format!("cannot connect to {}: {e}", self.current_url())));
            }
        };
        let (tx, rx) = mpsc::channel(crate::api::CONNECTION_BUFFER);
        if tx.send(subscribe_to_proto(framework_id.as_ref(), info)).await.is_err() {
            return Err(SubscribeError::Unavailable("call channel closed".into()));
        }
        let calls = ReceiverStream::new(rx);
        let stream = match client.subscribe(calls).await {
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
                return Err(SubscribeError::Refused(status.message().to_owned()));
            }
            Err(status) => return Err(SubscribeError::Unavailable(format!("subscribe failed: {}", status.message()))),
        };
        let events = stream
            .map(|item| {
                item.map_err(|s| s.message().to_owned()).and_then(|e| Event::try_from(e).map_err(|e| e.to_string()))
            })
            .boxed();
        Ok(Session { calls: Arc::new(tx), events })
    }

    fn failed(&self) {
        self.rotate();
    }

    fn max_backoff(&self) -> Duration {
        crate::client::Target::max_backoff(self)
    }

    fn describe(&self) -> String {
        self.current_url().to_owned()
    }
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
        tx.send(&fid, call).await
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
    start_on(Arc::new(master.into()), info, framework_id, shutdown)
}

/// [`start`], over any [`Link`] to the master.
pub fn start_on(
    link: Arc<dyn Link>,
    info: FrameworkInfo,
    framework_id: Option<FrameworkId>,
    shutdown: CancellationToken,
) -> (SchedulerHandle, mpsc::Receiver<DriverEvent>) {
    let handle = SchedulerHandle {
        current: Arc::default(),
        framework_id: Arc::new(Mutex::new(framework_id)),
        stopping: Arc::default(),
    };
    let (events, rx) = mpsc::channel(crate::api::CONNECTION_BUFFER);
    tokio::spawn(drive(link, info, handle.clone(), events, shutdown));
    (handle, rx)
}

async fn drive(
    link: Arc<dyn Link>,
    info: FrameworkInfo,
    handle: SchedulerHandle,
    events: mpsc::Sender<DriverEvent>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = subscribe_once(link.as_ref(), &info, &handle, &events);
        let outcome = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            o = attempt => o,
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
                link.failed();
                if events.send(DriverEvent::Disconnected(reason)).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(link.max_backoff());
    }
}

enum Outcome {
    Fatal(String),
    Broken { reason: String, was_subscribed: bool },
}

async fn subscribe_once(
    link: &dyn Link,
    info: &FrameworkInfo,
    handle: &SchedulerHandle,
    events: &mpsc::Sender<DriverEvent>,
) -> Outcome {
    let Session { calls, events: mut stream } = match link.subscribe(handle.framework_id(), info).await {
        Ok(s) => s,
        Err(SubscribeError::Refused(reason)) => return Outcome::Fatal(reason),
        Err(SubscribeError::Unavailable(reason)) => return Outcome::Broken { reason, was_subscribed: false },
    };
    let mut subscribed = false;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(e) => e,
            Err(reason) => return Outcome::Broken { reason, was_subscribed: subscribed },
        };
        if let Event::Subscribed { framework_id, .. } = &event {
            subscribed = true;
            *handle.framework_id.lock().expect("lock poisoned") = Some(framework_id.clone());
            *handle.current.lock().expect("lock poisoned") =
                Some(Connection { framework_id: framework_id.clone(), calls: calls.clone() });
        }
        if events.send(DriverEvent::Event(event)).await.is_err() {
            return Outcome::Fatal("the framework stopped listening".into());
        }
    }
    Outcome::Broken { reason: format!("{} closed the stream", link.describe()), was_subscribed: subscribed }
}
