//! Leader election on the store's leases (a row per kind, with a fencing term; see `Store::acquire_lease`).
//!
//! A process asks for the lease every [`POLL`] until it gets it, and meanwhile serves as a standby: its
//! port redirects to the leader ([`standby_router`]). The leader renews every [`RENEW_EVERY`]. When it has
//! not renewed for [`STEP_DOWN_AFTER`], well before the lease ([`LEASE_TTL`]) can expire for the others, it
//! steps down ([`Leadership::lost`]); the binary then exits, and its supervisor restarts it as a standby.
//! Its writes carry its term, so even a leader that had not noticed would be refused by the database. A
//! clean shutdown resigns the lease, so a standby takes over within one [`POLL`].
//!
//! The leader's decisions are the pure [`Tenure`]; `core/tests/election_sim.rs` plays them against a model
//! of the lease row under a thousand seeded schedules of faults.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::store::Store;

/// How long a lease runs without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How often the leader renews.
pub const RENEW_EVERY: Duration = Duration::from_millis(400);
/// How long the leader goes without a renewal before it steps down: less than the lease, so that it has
/// stopped before anyone else can lead.
pub const STEP_DOWN_AFTER: Duration = Duration::from_millis(1400);
/// How often a standby asks for the lease.
pub const POLL: Duration = Duration::from_millis(200);

/// Where this process stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Not leading; `leader` is who does, if anyone's lease runs.
    Standby {
        leader: Option<String>,
    },
    Leader {
        term: i64,
    },
}

/// Whether a leader whose last renewal succeeded at `last_ok` must step down at `now`. Pure.
pub fn must_step_down(last_ok: Instant, now: Instant) -> bool {
    now.saturating_duration_since(last_ok) >= STEP_DOWN_AFTER
}

/// How long a standby waits for the answer to a lease request.
pub const ACQUIRE_WAIT: Duration = Duration::from_millis(400);

/// What a renewal came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The database extended the lease.
    Granted,
    /// The lease is another's (or at another term).
    Refused,
    /// No answer in time, or an error: the renewal may or may not have landed.
    Failed,
}

/// Whether a leader goes on leading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Lead,
    StepDown(&'static str),
}

/// A leader's tenure, as a pure state machine driven by [`renew`]'s loop and by the deterministic
/// simulation (`core/tests/election_sim.rs`): when to renew, how long to wait for the answer, and when to
/// step down. Every instant is the leader's own monotonic clock.
#[derive(Clone, Debug)]
pub struct Tenure {
    pub term: i64,
    /// When the latest request the database granted was *sent*: the lease runs at least [`LEASE_TTL`] from
    /// the moment the database saw it, which is later. Counting from the answer would not be safe: an answer
    /// can come late.
    last_ok: Instant,
    /// Whether the database is across a network (PostgreSQL). SQLite is a file on this host: a slow renewal
    /// there is a busy writer, not a lost database, and another process can only take the lease after it
    /// expired, which the next renewal sees.
    networked: bool,
}

impl Tenure {
    /// The tenure of term `term`, won by a lease request sent at `asked_at`.
    pub fn new(term: i64, asked_at: Instant, networked: bool) -> Tenure {
        Tenure { term, last_ok: asked_at, networked }
    }

    /// The moment this leader must have stepped down by, unless a renewal is granted first.
    pub fn deadline(&self) -> Instant {
        self.last_ok + STEP_DOWN_AFTER
    }

    /// When to send the next renewal, given that the last answer (or timeout) came at `now`: after
    /// [`RENEW_EVERY`], never past the deadline.
    pub fn next_renewal(&self, now: Instant) -> Instant {
        let next = now + RENEW_EVERY;
        if self.networked { next.min(self.deadline()) } else { next }
    }

    /// Until when to wait for the answer to a renewal sent at `sent`: never past the deadline.
    pub fn answer_by(&self, sent: Instant) -> Instant {
        let by = sent + RENEW_EVERY;
        if self.networked { by.min(self.deadline()) } else { by }
    }

    /// The answer to the renewal sent at `sent`, known at `now`.
    pub fn renewed(&mut self, sent: Instant, renewal: Renewal, now: Instant) -> Verdict {
        match renewal {
            Renewal::Granted => self.last_ok = self.last_ok.max(sent),
            Renewal::Refused => return Verdict::StepDown("the lease is another's"),
            Renewal::Failed => {}
        }
        if self.networked && must_step_down(self.last_ok, now) {
            return Verdict::StepDown("no renewal was granted in time, and the lease may soon expire");
        }
        Verdict::Lead
    }
}

/// One process's candidacy for lease `kind`. Give it a store of its own (a pool no other work waits in), so
/// that a busy process never misses a renewal.
pub struct Election {
    store: Store,
    kind: &'static str,
    /// This process's advertised URL: what standbys redirect to.
    me: String,
    /// What the lease row names: the URL and a nonce of this process, so that no other process (a
    /// restart of this one, or one given the same URL by mistake) passes for it.
    holder: String,
    status: watch::Sender<Standing>,
}

impl Election {
    pub fn new(store: Store, kind: &'static str, me: &str) -> Election {
        let status = watch::channel(Standing::Standby { leader: None }).0;
        let me = me.trim_end_matches('/').to_owned();
        let holder = format!("{me} {}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Election { store, kind, me, holder, status }
    }

    /// Where this process stands, as it changes.
    pub fn watch(&self) -> watch::Receiver<Standing> {
        self.status.subscribe()
    }

    /// Waits until this process leads (`None` if `shutdown` comes first); meanwhile [`Election::watch`] says
    /// who does.
    pub async fn lead(self, shutdown: &CancellationToken) -> Option<Leadership> {
        let mut told: Option<Option<String>> = None;
        loop {
            let asked_at = Instant::now();
            match tokio::time::timeout(
                ACQUIRE_WAIT,
                self.store.acquire_lease(self.kind, &self.holder, LEASE_TTL.as_millis() as i64),
            )
            .await
            {
                Ok(Ok(Some(term))) => {
                    info!(kind = self.kind, term, me = %self.me, "elected leader");
                    let _ = self.status.send(Standing::Leader { term });
                    let networked = self.store.backend() == crate::store::Backend::Postgres;
                    return Some(Leadership::start(self, Tenure::new(term, asked_at, networked), shutdown));
                }
                Ok(Ok(None)) => {
                    let leader = match self.store.lease(self.kind).await {
                        // A lease of this URL that is not this process's is an earlier run's (or a
                        // twin's): never redirect to ourselves.
                        Ok(Some(l)) if l.remaining_ms > 0 && holder_url(&l.holder) != self.me => {
                            Some(holder_url(&l.holder).to_owned())
                        }
                        _ => None,
                    };
                    if told.as_ref() != Some(&leader) {
                        info!(kind = self.kind, leader = leader.as_deref().unwrap_or("none yet"), "standing by");
                        told = Some(leader.clone());
                    }
                    let _ = self.status.send(Standing::Standby { leader });
                }
                Ok(Err(e)) => warn!(kind = self.kind, error = %e, "cannot ask for the lease; standing by"),
                Err(_) => warn!(kind = self.kind, "the store did not answer the lease request in time; standing by"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// This process leads until [`Leadership::lost`] fires or it resigns.
pub struct Leadership {
    pub term: i64,
    lost: CancellationToken,
    stop: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
    election: std::sync::Arc<Election>,
}

impl Leadership {
    fn start(election: Election, tenure: Tenure, shutdown: &CancellationToken) -> Leadership {
        let election = std::sync::Arc::new(election);
        let (lost, stop) = (CancellationToken::new(), shutdown.child_token());
        let term = tenure.term;
        let renewer = tokio::spawn(renew(election.clone(), tenure, lost.clone(), stop.clone()));
        Leadership { term, lost, stop, renewer, election }
    }

    /// Fires when this process may no longer act as the leader.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Gives the lease up at once, so that a standby takes over within one [`POLL`].
    pub async fn resign(self) {
        self.stop.cancel();
        let _ = self.renewer.await;
        let e = &self.election;
        match tokio::time::timeout(Duration::from_secs(1), e.store.resign_lease(e.kind, &e.holder, self.term)).await {
            Ok(Ok(())) => info!(kind = e.kind, term = self.term, "resigned the lease"),
            Ok(Err(err)) => warn!(kind = e.kind, error = %err, "could not resign the lease; it expires by itself"),
            Err(_) => warn!(kind = e.kind, "could not resign the lease in time; it expires by itself"),
        }
    }
}

async fn renew(e: std::sync::Arc<Election>, mut tenure: Tenure, lost: CancellationToken, stop: CancellationToken) {
    let (term, ttl) = (tenure.term, LEASE_TTL.as_millis() as i64);
    let mut now = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(tenure.next_renewal(now))) => {}
        }
        let sent = Instant::now();
        let by = tokio::time::Instant::from_std(tenure.answer_by(sent));
        let renewal = match tokio::time::timeout_at(by, e.store.renew_lease(e.kind, &e.holder, term, ttl)).await {
            Ok(Ok(true)) => Renewal::Granted,
            Ok(Ok(false)) => Renewal::Refused,
            Ok(Err(err)) => {
                warn!(kind = e.kind, error = %err, "cannot renew the lease");
                Renewal::Failed
            }
            Err(_) => {
                warn!(kind = e.kind, "the store did not answer the renewal in time");
                Renewal::Failed
            }
        };
        now = Instant::now();
        if let Verdict::StepDown(why) = tenure.renewed(sent, renewal, now) {
            error!(kind = e.kind, term, after = ?STEP_DOWN_AFTER, "{why}: stepping down");
            lost.cancel();
            return;
        }
    }
}

/// The advertised URL in a lease's holder (`URL NONCE`).
fn holder_url(holder: &str) -> &str {
    holder.split_once(' ').map_or(holder, |(url, _)| url)
}

/// Who leads, for `GET {leader path}`: `{"leader": URL or null, "elected": this process leads}`.
pub fn leader_json(standing: &Standing, me: &str) -> serde_json::Value {
    match standing {
        Standing::Leader { term } => json!({ "leader": me, "elected": true, "term": term }),
        Standing::Standby { leader } => json!({ "leader": leader, "elected": false }),
    }
}

/// What a standby's port answers: `/health` (200: a healthy standby, naming the leader), `leader_path` (who
/// leads), and anything else a 307 to the same path and query on the leader, or 503 while no leader is
/// known. gRPC calls get 503 too (an `UNAVAILABLE` status): clients try the next master.
pub fn standby_router(status: watch::Receiver<Standing>, me: String, leader_path: &'static str) -> Router {
    standby_router_with(status, me, leader_path, leader_json)
}

/// How a process says who leads.
pub type LeaderBody = fn(&Standing, &str) -> serde_json::Value;

/// [`standby_router`], answering `leader_path` with `render` (Marathon's `/v2/leader` has its own shape).
pub fn standby_router_with(
    status: watch::Receiver<Standing>,
    me: String,
    leader_path: &'static str,
    render: LeaderBody,
) -> Router {
    Router::new().fallback(move |req: Request| {
        let standing = status.borrow().clone();
        let me = me.clone();
        async move { standby_answer(&standing, &me, leader_path, render, &req) }
    })
}

fn standby_answer(standing: &Standing, me: &str, leader_path: &str, render: LeaderBody, req: &Request) -> Response {
    let path = req.uri().path();
    let leader = match standing {
        Standing::Standby { leader } => leader.clone(),
        Standing::Leader { .. } => None,
    };
    if path == leader_path {
        return axum::Json(render(standing, me)).into_response();
    }
    let starting = matches!(standing, Standing::Leader { .. });
    if path == "/health" {
        if starting {
            // Elected, still recovering its state: not yet serving, so not yet healthy.
            let body = json!({ "status": "starting", "standby": false, "leader": me });
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        }
        return axum::Json(json!({ "status": "standby", "standby": true, "leader": leader })).into_response();
    }
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    match leader {
        Some(l) if !grpc => {
            let to = format!("{l}{}", req.uri().path_and_query().map_or("/", |p| p.as_str()));
            let mut r =
                (StatusCode::TEMPORARY_REDIRECT, axum::Json(json!({ "message": format!("not the leader: {l} is") })))
                    .into_response();
            if let Ok(v) = HeaderValue::from_str(&to) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        _ => {
            let message = match leader {
                Some(l) => format!("not the leader: {l} is"),
                None if starting => {
                    "this instance was just elected and is recovering its state; retry shortly".to_owned()
                }
                None => "no leader is elected yet; retry shortly".to_owned(),
            };
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "message": message }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_steps_down_before_its_lease_can_expire() {
        let t = Instant::now();
        assert!(!must_step_down(t, t + Duration::from_millis(1399)));
        assert!(must_step_down(t, t + STEP_DOWN_AFTER));
        assert!(STEP_DOWN_AFTER + RENEW_EVERY <= LEASE_TTL, "the last renewal's answer may take RENEW_EVERY");
    }

    #[test]
    fn a_tenure_renews_in_time_and_counts_from_when_it_asked() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Tenure::new(7, t0, true);
        assert_eq!(t.deadline(), t0 + STEP_DOWN_AFTER);
        // Renewals wait RENEW_EVERY, and neither a renewal nor its answer goes past the deadline.
        assert_eq!(t.next_renewal(t0), t0 + RENEW_EVERY);
        assert_eq!(t.next_renewal(t0 + ms(1300)), t.deadline());
        assert_eq!(t.answer_by(t0 + ms(1200)), t.deadline());
        // A grant counts from when the renewal was sent, however late its answer comes.
        assert_eq!(t.renewed(t0 + ms(400), Renewal::Granted, t0 + ms(790)), Verdict::Lead);
        assert_eq!(t.deadline(), t0 + ms(400) + STEP_DOWN_AFTER);
        // An older grant answered later moves nothing back.
        assert_eq!(t.renewed(t0 + ms(100), Renewal::Granted, t0 + ms(800)), Verdict::Lead);
        assert_eq!(t.deadline(), t0 + ms(400) + STEP_DOWN_AFTER);
        assert_eq!(t.renewed(t0 + ms(1200), Renewal::Failed, t0 + ms(1600)), Verdict::Lead);
        assert!(matches!(t.renewed(t0 + ms(1600), Renewal::Failed, t0 + ms(1800)), Verdict::StepDown(_)));
        assert!(matches!(Tenure::new(1, t0, true).renewed(t0, Renewal::Refused, t0), Verdict::StepDown(_)));
        // On SQLite (a file on this host) a slow renewal is a busy writer: only a refusal ends the tenure.
        let mut local = Tenure::new(1, t0, false);
        assert_eq!(local.renewed(t0, Renewal::Failed, t0 + ms(5000)), Verdict::Lead);
        assert_eq!(local.next_renewal(t0 + ms(5000)), t0 + ms(5000) + RENEW_EVERY);
    }

    #[test]
    fn standbys_redirect_to_the_leader() {
        let standby = Standing::Standby { leader: Some("http://m1:5050".into()) };
        let req = |path: &str, grpc: bool| {
            let mut b = Request::get(path);
            if grpc {
                b = b.header("content-type", "application/grpc");
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        let r =
            standby_answer(&standby, "http://m2:5050", "/master/leader", leader_json, &req("/master/state?x=1", false));
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(r.headers()["location"], "http://m1:5050/master/state?x=1");
        let r = standby_answer(
            &standby,
            "http://m2:5050",
            "/master/leader",
            leader_json,
            &req("/keel.Scheduler/Subscribe", true),
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            standby_answer(&standby, "", "/master/leader", leader_json, &req("/health", false)).status(),
            StatusCode::OK
        );
        let none = Standing::Standby { leader: None };
        assert_eq!(
            standby_answer(&none, "", "/master/leader", leader_json, &req("/v2/apps", false)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(leader_json(&Standing::Leader { term: 3 }, "http://me")["elected"], true);
        // Elected but not yet serving: not healthy, and nothing is served or redirected.
        let starting = Standing::Leader { term: 3 };
        for path in ["/health", "/v2/apps"] {
            let r = standby_answer(&starting, "http://me", "/master/leader", leader_json, &req(path, false));
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
    }
}
