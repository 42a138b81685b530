//! Marathon's HTTP callback event subscriptions (`/v2/eventSubscriptions`): every event on the bus is
//! POSTed as JSON to each subscribed URL.
//!
//! Each callback has its own bounded queue and delivery task, so a slow or dead receiver delays and
//! loses only its own events: when its queue is full, new events for it are dropped (and counted in the
//! log), and each event is tried a bounded number of times. Subscriptions are kept in the store, so they
//! survive a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::scheduler::{MarathonEvent, MarathonHandle};
use crate::store::{AppStore, AppStoreError};

/// Events waiting for one callback before new ones are dropped.
pub const QUEUE: usize = 1024;
/// Tries per event, the first included.
pub const ATTEMPTS: u32 = 3;
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before the second try; it doubles for each one after.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// The longest callback URL accepted.
const MAX_URL_LEN: usize = 2048;
/// The most callbacks subscribed at once: each costs a task and a queue.
pub const MAX_SUBSCRIPTIONS: usize = 100;

/// Why a callback URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("callbackUrl must be an absolute http or https URL of at most {MAX_URL_LEN} characters: {0}")]
    BadUrl(String),
    #[error("at most {MAX_SUBSCRIPTIONS} callbacks may be subscribed; unsubscribe one first")]
    TooMany,
    #[error(transparent)]
    Store(#[from] AppStoreError),
}

/// The subscribed callbacks and their delivery tasks; cheap to clone.
#[derive(Clone)]
pub struct Callbacks {
    store: AppStore,
    client: reqwest::Client,
    /// Each callback's queue. Dropping a sender ends its delivery task.
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Arc<serde_json::Value>>>>>,
    /// Held across a subscription change, so that the store and the queues change in the same order.
    changing: Arc<tokio::sync::Mutex<()>>,
    shutdown: CancellationToken,
}

/// Checks that `url` is an absolute http(s) URL, and returns it as given.
pub fn check_url(url: &str) -> Result<String, CallbackError> {
    let ok = url.len() <= MAX_URL_LEN
        && reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if ok { Ok(url.to_owned()) } else { Err(CallbackError::BadUrl(url.chars().take(200).collect())) }
}

impl Callbacks {
    /// Loads the subscriptions and starts delivering the events of `marathon` to them.
    pub async fn start(
        store: AppStore,
        marathon: &MarathonHandle,
        shutdown: CancellationToken,
    ) -> Result<Callbacks, AppStoreError> {
        let client = reqwest::Client::builder().timeout(POST_TIMEOUT).build().unwrap_or_default();
        let callbacks =
            Callbacks { store, client, queues: Arc::default(), changing: Arc::default(), shutdown: shutdown.clone() };
        for url in callbacks.store.subscriptions().await? {
            callbacks.add_queue(&url);
        }
        let mut events = marathon.subscribe();
        let fan_out = callbacks.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = events.recv() => e,
                };
                match event {
                    Ok(MarathonEvent { data, .. }) => fan_out.dispatch(Arc::new(data)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "event callbacks fell behind the event bus")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(callbacks)
    }

    /// The subscribed URLs.
    pub async fn list(&self) -> Result<Vec<String>, AppStoreError> {
        self.store.subscriptions().await
    }

    /// Subscribes `url` (idempotent).
    pub async fn subscribe(&self, url: &str) -> Result<(), CallbackError> {
        let url = check_url(url)?;
        let _changing = self.changing.lock().await;
        let full = {
            let queues = self.queues.lock().expect("callback queues lock");
            queues.len() >= MAX_SUBSCRIPTIONS && !queues.contains_key(&url)
        };
        if full {
            return Err(CallbackError::TooMany);
        }
        self.store.subscribe(&url).await?;
        self.add_queue(&url);
        info!(callback_url = %url, "event subscription added");
        Ok(())
    }

    /// Unsubscribes `url`; returns whether it was subscribed.
    pub async fn unsubscribe(&self, url: &str) -> Result<bool, CallbackError> {
        let _changing = self.changing.lock().await;
        let existed = self.store.unsubscribe(url).await?;
        self.queues.lock().expect("callback queues lock").remove(url);
        if existed {
            info!(callback_url = %url, "event subscription removed");
        }
        Ok(existed)
    }

    fn add_queue(&self, url: &str) {
        let mut queues = self.queues.lock().expect("callback queues lock");
        if queues.contains_key(url) {
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        queues.insert(url.to_owned(), tx);
        tokio::spawn(deliver(self.client.clone(), url.to_owned(), rx, self.shutdown.clone()));
    }

    fn dispatch(&self, event: Arc<serde_json::Value>) {
        let queues = self.queues.lock().expect("callback queues lock");
        for (url, tx) in queues.iter() {
            if tx.try_send(event.clone()).is_err() {
                warn!(callback_url = %url, "callback queue full: event dropped");
            }
        }
    }
}

/// Sends each event of `rx` to `url`, trying each up to [`ATTEMPTS`] times.
async fn deliver(
    client: reqwest::Client,
    url: String,
    mut rx: mpsc::Receiver<Arc<serde_json::Value>>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = rx.recv() => match e { Some(e) => e, None => return },
        };
        let body = event.to_string();
        let mut wait = RETRY_AFTER;
        for attempt in 1..=ATTEMPTS {
            let sent = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => debug!(callback_url = %url, status = %r.status(), attempt, "callback refused an event"),
                Err(e) => debug!(callback_url = %url, error = %e, attempt, "callback unreachable"),
            }
            if attempt == ATTEMPTS {
                warn!(callback_url = %url, event_type = ?event.get("eventType"), "event not delivered after {ATTEMPTS} tries");
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_are_taken() {
        assert!(check_url("http://127.0.0.1:9000/events").is_ok());
        assert!(check_url("https://hooks.example/x?y=1").is_ok());
        for bad in ["", "/relative", "file:///etc/passwd", "gopher://x", "http://", "not a url"] {
            assert!(check_url(bad).is_err(), "{bad:?}");
        }
        assert!(check_url(&format!("http://x/{}", "a".repeat(3000))).is_err());
    }
}
