//! Live pages: the console follows the APIs' event streams (the master's `/keel/v1/events`, Marathon's
//! `/v2/events`, the cron framework's `/keel/v1/jobs/events`) and tells open pages which topics changed,
//! coalesced, so a burst of 10,000 task updates costs a browser a few repaints. Pages then fetch
//! themselves again. Nothing runs while nothing happens: no polling, on either side.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::upstream::{Service, Upstream};

/// What changed, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Topics(pub u8);

impl Topics {
    pub const TASKS: Topics = Topics(1);
    pub const AGENTS: Topics = Topics(2);
    pub const FRAMEWORKS: Topics = Topics(4);
    pub const APPS: Topics = Topics(8);
    pub const JOBS: Topics = Topics(16);
    pub const FEED: Topics = Topics(32);
    const NAMES: [(Topics, &'static str); 6] = [
        (Topics::TASKS, "tasks"),
        (Topics::AGENTS, "agents"),
        (Topics::FRAMEWORKS, "frameworks"),
        (Topics::APPS, "apps"),
        (Topics::JOBS, "jobs"),
        (Topics::FEED, "feed"),
    ];

    pub fn union(self, other: Topics) -> Topics {
        Topics(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Space-separated names, as pages list the topics they show (`data-topics`).
    pub fn names(self) -> String {
        Topics::NAMES.iter().filter(|(t, _)| self.0 & t.0 != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(" ")
    }
}

/// One line of the overview's feed.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedItem {
    /// When, as the API said it (RFC 3339, or seconds since the epoch).
    pub at: String,
    /// `ok`, `warn`, `bad` or `info`: the line's state, also said in words.
    pub tone: &'static str,
    pub text: String,
    /// A console page about it.
    pub link: Option<String>,
}

/// How many feed lines the console keeps.
const FEED_KEPT: usize = 50;

/// The fields of an event's data the console reads. The rest is skipped without being built, so the hub
/// costs little even when the master sends 100,000 task updates a minute; each field takes any JSON, so
/// an unexpected type costs that field only.
#[derive(Debug, Default, serde::Deserialize)]
pub struct EventData {
    at: Option<Value>,
    state: Option<Value>,
    task_id: Option<Value>,
    hostname: Option<Value>,
    agent_id: Option<Value>,
    name: Option<Value>,
    status: Option<Value>,
    #[serde(rename = "jobId")]
    job_id: Option<Value>,
    #[serde(rename = "runId")]
    run_id: Option<Value>,
    plan: Option<Value>,
}

impl EventData {
    /// An event's data; anything but a JSON object reads as no fields.
    pub fn parse(data: &str) -> EventData {
        serde_json::from_str(data).unwrap_or_default()
    }
}

/// A field's text, or "" when it is missing or not a string.
fn text(v: &Option<Value>) -> String {
    v.as_ref().and_then(Value::as_str).unwrap_or("").to_owned()
}

/// What an event from `service` named `kind` with `data` changes, and the feed line it makes. Pure.
pub fn classify(service: Service, kind: &str, data: &EventData) -> (Topics, Option<FeedItem>) {
    let at = data.at.as_ref().and_then(Value::as_f64).map(|t| format!("{t:.3}")).unwrap_or_else(|| text(&data.at));
    let item = |tone, text: String, link: Option<String>| Some(FeedItem { at: at.clone(), tone, text, link });
    match (service, kind) {
        (Service::Master, "task_updated") => {
            let state = text(&data.state);
            let tone = crate::view::tone(&state).0;
            let id = text(&data.task_id);
            let text = format!("task {id} is {}", state.trim_start_matches("TASK_").to_lowercase());
            (
                Topics::TASKS.union(Topics::APPS).union(Topics::AGENTS).union(Topics::FEED),
                item(tone, text, Some(format!("/ui/tasks/{}", crate::pages::segment(&id)))),
            )
        }
        (Service::Master, "agent_registered" | "agent_disconnected" | "agent_unreachable") => {
            let (tone, what) = match kind {
                "agent_registered" => ("ok", "registered"),
                "agent_disconnected" => ("warn", "disconnected"),
                _ => ("bad", "is unreachable"),
            };
            let text = format!("agent {} ({}) {what}", text(&data.hostname), text(&data.agent_id));
            (Topics::AGENTS.union(Topics::FEED), item(tone, text, Some("/ui/agents".into())))
        }
        (Service::Master, k) if k.starts_with("framework_") => {
            let what = k.trim_start_matches("framework_");
            let tone = if what == "subscribed" { "ok" } else { "warn" };
            let text = format!("framework {} {what}", text(&data.name));
            (Topics::FRAMEWORKS.union(Topics::FEED), item(tone, text, Some("/ui/frameworks".into())))
        }
        (Service::Services, "deployment_success" | "deployment_failed") => {
            let ok = kind == "deployment_success";
            let plan = data.plan.as_ref().unwrap_or(&Value::Null);
            // A destroyed app is only in the plan's original.
            let target = &plan["target"]["apps"];
            let apps =
                if target.as_array().is_some_and(|a| !a.is_empty()) { target } else { &plan["original"]["apps"] };
            let apps: Vec<String> =
                apps.as_array().into_iter().flatten().filter_map(|a| a["id"].as_str().map(str::to_owned)).collect();
            let text = format!("deployment {} {}", if ok { "succeeded" } else { "failed" }, apps.join(", "));
            let link = apps.first().map(|a| format!("/ui/apps{}", crate::pages::urlencode(a)));
            (Topics::APPS.union(Topics::FEED), item(if ok { "ok" } else { "bad" }, text, link))
        }
        (Service::Services, _) => (Topics::APPS, None),
        (Service::Jobs, "run_updated") => {
            let status = text(&data.status);
            let tone = crate::view::tone(&status).0;
            let job = text(&data.job_id);
            let text = format!("job {job}: run {} {}", text(&data.run_id), status.to_lowercase());
            (
                Topics::JOBS.union(Topics::FEED),
                item(tone, text, Some(format!("/ui/jobs/{}", crate::pages::segment(&job)))),
            )
        }
        (Service::Jobs, _) => (Topics::JOBS, None),
        // The stream fell behind: anything may have changed.
        (_, "lagged") => (Topics(0xff), None),
        _ => (Topics::default(), None),
    }
}

/// The changes the console has seen, for open pages; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    changes: broadcast::Sender<Topics>,
    feed: Arc<Mutex<VecDeque<FeedItem>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub { changes: broadcast::channel(1024).0, feed: Arc::default() }
    }
}

impl Hub {
    /// Follows the three event streams until `shutdown`, reconnecting when one drops.
    pub fn start(&self, upstream: &Upstream, shutdown: &CancellationToken) {
        for (service, path) in [
            (Service::Master, "/keel/v1/events"),
            (Service::Services, "/v2/events"),
            (Service::Jobs, "/keel/v1/jobs/events"),
        ] {
            let (hub, upstream, shutdown) = (self.clone(), upstream.clone(), shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = hub.follow(upstream, service, path) => {}
                }
            });
        }
    }

    async fn follow(&self, upstream: Upstream, service: Service, path: &'static str) {
        let mut wait = Duration::from_millis(250);
        let mut told = false;
        loop {
            match upstream.stream(service, path).await {
                Ok(resp) => {
                    info!(stream = path, "console following {}'s events", service.label());
                    wait = Duration::from_millis(250);
                    told = false;
                    // Whatever happened while we were away: pages fetch themselves again.
                    self.publish(Topics(0xff), None);
                    self.read(service, resp).await;
                    if service != Service::Master {
                        upstream.forget();
                    }
                }
                Err(e) if !told => {
                    debug!(stream = path, error = %e, "console cannot follow events yet; retrying");
                    told = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Reads one SSE connection until it ends.
    async fn read(&self, service: Service, mut resp: reqwest::Response) {
        let mut parser = SseParser::default();
        // Streams send a keep-alive comment every 15 s: one silent for longer is dead.
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout(SILENT, resp.chunk()).await {
            for (kind, data) in parser.push(&chunk) {
                let (topics, item) = classify(service, &kind, &EventData::parse(&data));
                self.publish(topics, item);
            }
        }
    }

    fn publish(&self, topics: Topics, item: Option<FeedItem>) {
        if let Some(item) = item {
            let mut feed = self.feed.lock().expect("lock poisoned");
            if feed.len() == FEED_KEPT {
                feed.pop_back();
            }
            feed.push_front(item);
        }
        if !topics.is_empty() {
            let _ = self.changes.send(topics);
        }
    }

    /// The feed, newest first.
    pub fn feed(&self) -> Vec<FeedItem> {
        self.feed.lock().expect("lock poisoned").iter().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Topics> {
        self.changes.subscribe()
    }
}

/// How long an event stream may stay silent before the console reconnects.
const SILENT: Duration = Duration::from_secs(45);

/// How long the console gathers changes before it tells a page.
pub const COALESCE: Duration = Duration::from_millis(300);

/// The next batch of changes for one page: waits for a change, then gathers for [`COALESCE`]. `None`
/// when the hub is gone.
pub async fn next_batch(rx: &mut broadcast::Receiver<Topics>) -> Option<Topics> {
    let first = match rx.recv().await {
        Ok(t) => t,
        Err(broadcast::error::RecvError::Lagged(_)) => Topics(0xff),
        Err(broadcast::error::RecvError::Closed) => return None,
    };
    tokio::time::sleep(COALESCE).await;
    let mut all = first;
    loop {
        match rx.try_recv() {
            Ok(t) => all = all.union(t),
            Err(broadcast::error::TryRecvError::Lagged(_)) => all = Topics(0xff),
            Err(_) => return Some(all),
        }
    }
}

/// Splits a server-sent event stream into (event name, data). Pure.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
}

/// The longest event the console reads; a longer line is dropped.
const MAX_LINE: usize = 4 << 20;

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buf.extend_from_slice(bytes);
        let mut out = vec![];
        // The whole lines are read in place and dropped from the buffer at once.
        let mut at = 0;
        while let Some(nl) = self.buf[at..].iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.buf[at..at + nl]);
            at += nl + 1;
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                if !self.data.is_empty() {
                    let kind =
                        if self.event.is_empty() { "message".to_owned() } else { std::mem::take(&mut self.event) };
                    out.push((kind, std::mem::take(&mut self.data)));
                }
                self.event.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = v.trim_start().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        self.buf.drain(..at);
        if self.buf.len() > MAX_LINE {
            self.buf.clear();
            self.data.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sse_is_split_into_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: task_updated\ndata: {\"a\":").is_empty());
        let got = p.push(b"1}\n\n:keepalive\n\ndata: x\ndata: y\n\n");
        assert_eq!(got, vec![("task_updated".into(), "{\"a\":1}".into()), ("message".into(), "x\ny".into())]);
    }

    #[test]
    fn events_name_their_topics_and_feed_lines() {
        let data = |v: Value| EventData::parse(&v.to_string());
        let (t, item) = classify(
            Service::Master,
            "task_updated",
            &data(json!({"task_id": "web.1", "state": "TASK_FAILED", "at": 1.5})),
        );
        assert_eq!(t.0 & Topics::TASKS.0, Topics::TASKS.0);
        let item = item.unwrap();
        assert_eq!((item.tone, item.text.as_str()), ("bad", "task web.1 is failed"));
        let (t, item) = classify(Service::Jobs, "job_updated", &data(json!({"jobId": "j"})));
        assert_eq!((t, item), (Topics::JOBS, None));
        let (_, item) =
            classify(Service::Jobs, "run_updated", &data(json!({"jobId": "j", "runId": 7, "status": "FAILED"})));
        assert_eq!(item.unwrap().text, "job j: run  failed", "a field of another type reads as missing, not the rest");
        let plan = json!({"plan": {"target": {"apps": []}, "original": {"apps": [{"id": "/web"}]}}});
        let (_, item) = classify(Service::Services, "deployment_success", &data(plan));
        let item = item.unwrap();
        assert_eq!((item.text.as_str(), item.link.as_deref()), ("deployment succeeded /web", Some("/ui/apps/web")));
        assert_eq!(classify(Service::Master, "task_updated", &EventData::parse("[1]")).1.unwrap().text, "task  is ");
        assert_eq!(Topics::TASKS.union(Topics::APPS).names(), "tasks apps");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_batch() {
        let hub = Hub::default();
        let mut rx = hub.subscribe();
        for _ in 0..10_000 {
            hub.publish(Topics::TASKS, None);
        }
        hub.publish(Topics::APPS, None);
        let batch = next_batch(&mut rx).await.unwrap();
        assert_eq!(batch.0 & (Topics::TASKS.0 | Topics::APPS.0), Topics::TASKS.0 | Topics::APPS.0);
        assert!(tokio::time::timeout(Duration::from_secs(5), next_batch(&mut rx)).await.is_err(), "nothing more");
    }
}
