//! Deterministic simulation of the leader election: candidates driven by the real decisions
//! (`keel_core::election::Tenure` and the constants of `election.rs`) against a model of the lease row,
//! under a seeded schedule of crashes, clean shutdowns, partitions from the database, the database going
//! away, message delays and losses, and clock drift. Simulated time, no network, no sleeping: a thousand
//! seeds take a few seconds.
//!
//! After each run it checks that two candidates never acted as leader at once, that terms only grow, and
//! that once the faults stop one candidate leads steadily. A failing seed is printed, and
//! `KEEL_SIM_SEED=N cargo test -p keel-core --test election_sim` replays exactly that run. `KEEL_SIM_SEEDS`
//! sets how many seeds run (1000 by default).
//!
//! What this covers: the election and its timing. The masters', agents' and frameworks' own work under a
//! simulator (turmoil) is not done yet; the fault suite (`tests/faults.rs`) runs them on real hosts.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use keel_core::election::{ACQUIRE_WAIT, LEASE_TTL, POLL, Renewal, Tenure, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CANDIDATES: usize = 3;
/// Faults start only before this.
const FAULTS_UNTIL: Duration = Duration::from_secs(20);
/// By then, one candidate leads, and it still does at the end.
const CALM_BY: Duration = Duration::from_secs(32);
const RUN_FOR: Duration = Duration::from_secs(40);
/// A livelock guard: no run needs nearly this many events.
const MAX_EVENTS: usize = 1_000_000;
/// How long a supervisor takes to restart a process that stepped down (and so exited).
const RESTART_AFTER_STEP_DOWN: Duration = Duration::from_millis(500);

/// Simulated real time, from the start of the run.
type T = Duration;

#[derive(Clone, Copy, Debug)]
enum Req {
    Acquire { holder: u64 },
    Renew { holder: u64, term: i64 },
    Resign { holder: u64, term: i64 },
}

#[derive(Clone, Copy, Debug)]
enum Resp {
    Acquired(Option<i64>),
    Renewed(bool),
}

#[derive(Clone, Copy, Debug)]
enum Event {
    /// A candidate's timer: ask for the lease, or renew it.
    Wake {
        c: usize,
        life: u64,
    },
    /// A request reaches the database.
    AtDb {
        c: usize,
        life: u64,
        id: u64,
        req: Req,
    },
    /// An answer reaches the candidate.
    Answer {
        c: usize,
        life: u64,
        id: u64,
        resp: Resp,
    },
    /// The candidate stops waiting for request `id`.
    Timeout {
        c: usize,
        life: u64,
        id: u64,
    },
    /// SIGKILL.
    Crash {
        c: usize,
    },
    /// A clean shutdown: stop acting, then resign.
    Shutdown {
        c: usize,
    },
    Restart {
        c: usize,
    },
}

struct Scheduled {
    at: T,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    /// Earliest first, in a max-heap.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The lease row, as `Store::acquire_lease`, `renew_lease` and `resign_lease` change it, on the database's
/// clock (real time).
#[derive(Default)]
struct Lease {
    holder: Option<u64>,
    term: i64,
    expires: T,
}

impl Lease {
    fn answer(&mut self, req: Req, now: T) -> Option<Resp> {
        match req {
            Req::Acquire { holder } => {
                let free = self.holder.is_none() || self.expires < now || self.holder == Some(holder);
                if !free {
                    return Some(Resp::Acquired(None));
                }
                self.holder = Some(holder);
                self.term += 1;
                self.expires = now + LEASE_TTL;
                Some(Resp::Acquired(Some(self.term)))
            }
            Req::Renew { holder, term } => {
                let mine = self.holder == Some(holder) && self.term == term;
                if mine {
                    self.expires = now + LEASE_TTL;
                }
                Some(Resp::Renewed(mine))
            }
            Req::Resign { holder, term } => {
                if self.holder == Some(holder) && self.term == term {
                    self.expires = T::ZERO;
                }
                None
            }
        }
    }
}

enum Phase {
    Down,
    Standby,
    Leading(Tenure),
}

struct Candidate {
    /// Bumped at every crash and restart: events of an earlier life are dropped.
    life: u64,
    /// The lease holder this process names (its URL and nonce, in the real thing).
    holder: u64,
    /// Its monotonic clock runs `1 + drift` times as fast as real time.
    drift: f64,
    phase: Phase,
    /// The request it waits for: its id and when it was sent, on its own clock.
    pending: Option<(u64, Instant)>,
}

/// A time when `who` (a candidate, or `None`: everyone, the database being down) cannot reach the
/// database.
struct Partition {
    who: Option<usize>,
    from: T,
    to: T,
}

/// One term of one candidate, in real time.
#[derive(Debug, Clone, Copy)]
struct Reign {
    c: usize,
    term: i64,
    from: T,
    to: Option<T>,
}

struct Sim {
    rng: StdRng,
    base: Instant,
    now: T,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    lease: Lease,
    cands: Vec<Candidate>,
    partitions: Vec<Partition>,
    reigns: Vec<Reign>,
    next_holder: u64,
    next_id: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let cands = (0..CANDIDATES)
            .map(|i| Candidate {
                life: 0,
                holder: i as u64,
                drift: rng.random_range(-0.01..0.01),
                phase: Phase::Standby,
                pending: None,
            })
            .collect();
        let mut sim = Sim {
            rng,
            base: Instant::now(),
            now: T::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            lease: Lease::default(),
            cands,
            partitions: vec![],
            reigns: vec![],
            next_holder: CANDIDATES as u64,
            next_id: 0,
        };
        for c in 0..CANDIDATES {
            let at = ms(sim.rng.random_range(0..300));
            sim.at(at, Event::Wake { c, life: 0 });
        }
        let faults = sim.rng.random_range(0..8);
        for _ in 0..faults {
            let at = ms(sim.rng.random_range(0..FAULTS_UNTIL.as_millis() as u64));
            let c = sim.rng.random_range(0..CANDIDATES);
            match sim.rng.random_range(0..4) {
                0 => sim.at(at, Event::Crash { c }),
                1 => sim.at(at, Event::Shutdown { c }),
                2 => {
                    let to = at + ms(sim.rng.random_range(100..5_000));
                    sim.partitions.push(Partition { who: Some(c), from: at, to });
                }
                _ => {
                    let to = at + ms(sim.rng.random_range(100..4_000));
                    sim.partitions.push(Partition { who: None, from: at, to });
                }
            }
        }
        sim
    }

    fn at(&mut self, at: T, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled { at, seq: self.seq, event });
    }

    /// Candidate `c`'s clock at real time `t`.
    fn local(&self, c: usize, t: T) -> Instant {
        self.base + t.mul_f64(1.0 + self.cands[c].drift)
    }

    /// The first real time at which candidate `c`'s clock reads `i` or later.
    fn real(&self, c: usize, i: Instant) -> T {
        let mut t = i.saturating_duration_since(self.base).div_f64(1.0 + self.cands[c].drift);
        while self.local(c, t) < i {
            t += Duration::from_nanos(1);
        }
        t.max(self.now)
    }

    fn cut_off(&self, c: usize, t: T) -> bool {
        self.partitions.iter().any(|p| p.who.is_none_or(|w| w == c) && p.from <= t && t < p.to)
    }

    /// A one-way trip: its delay, or `None` when the message is lost.
    fn trip(&mut self) -> Option<T> {
        if self.now >= FAULTS_UNTIL {
            return Some(ms(self.rng.random_range(0..20)));
        }
        if self.rng.random_bool(0.03) {
            return None;
        }
        if self.rng.random_bool(0.1) {
            Some(ms(self.rng.random_range(0..1_500)))
        } else {
            Some(ms(self.rng.random_range(0..20)))
        }
    }

    fn send(&mut self, c: usize, req: Req) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let life = self.cands[c].life;
        if !self.cut_off(c, self.now)
            && let Some(d) = self.trip()
        {
            self.at(self.now + d, Event::AtDb { c, life, id, req });
        }
        id
    }

    fn wake_at(&mut self, c: usize, local: Instant) {
        let at = self.real(c, local);
        let life = self.cands[c].life;
        self.at(at, Event::Wake { c, life });
    }

    fn end_reign(&mut self, c: usize) {
        if let Some(r) = self.reigns.iter_mut().rev().find(|r| r.c == c && r.to.is_none()) {
            r.to = Some(self.now);
        }
    }

    /// The process ends (crash, shutdown, or the exit after a step-down) and comes back after `after`.
    fn down(&mut self, c: usize, after: T) {
        self.end_reign(c);
        let cand = &mut self.cands[c];
        cand.phase = Phase::Down;
        cand.pending = None;
        cand.life += 1;
        self.at(self.now + after, Event::Restart { c });
    }

    fn step(&mut self, event: Event) {
        let live = |s: &Sim, c: usize, life: u64| s.cands[c].life == life && !matches!(s.cands[c].phase, Phase::Down);
        match event {
            Event::Wake { c, life } if live(self, c, life) => {
                let now = self.local(c, self.now);
                let cand = &self.cands[c];
                let (req, by) = match &cand.phase {
                    Phase::Leading(t) => (Req::Renew { holder: cand.holder, term: t.term }, t.answer_by(now)),
                    _ => (Req::Acquire { holder: cand.holder }, now + ACQUIRE_WAIT),
                };
                let id = self.send(c, req);
                self.cands[c].pending = Some((id, now));
                let at = self.real(c, by);
                self.at(at, Event::Timeout { c, life, id });
            }
            Event::AtDb { c, life, id, req } => {
                // The database acts on what reaches it, whether or not the sender still waits.
                if self.cut_off(c, self.now) {
                    return;
                }
                if let Some(resp) = self.lease.answer(req, self.now)
                    && let Some(d) = self.trip()
                    && !self.cut_off(c, self.now + d)
                {
                    self.at(self.now + d, Event::Answer { c, life, id, resp });
                }
            }
            Event::Answer { c, life, id, resp } if live(self, c, life) => {
                let Some((pending, sent)) = self.cands[c].pending else { return };
                if pending != id {
                    return;
                }
                self.cands[c].pending = None;
                self.answered(c, sent, Some(resp));
            }
            Event::Timeout { c, life, id } if live(self, c, life) => {
                let Some((pending, sent)) = self.cands[c].pending else { return };
                if pending != id {
                    return;
                }
                self.cands[c].pending = None;
                self.answered(c, sent, None);
            }
            Event::Crash { c } if !matches!(self.cands[c].phase, Phase::Down) => {
                let after = ms(self.rng.random_range(100..3_000));
                self.down(c, after);
            }
            Event::Shutdown { c } if !matches!(self.cands[c].phase, Phase::Down) => {
                // Stop acting first, then resign.
                if let Phase::Leading(t) = &self.cands[c].phase {
                    let req = Req::Resign { holder: self.cands[c].holder, term: t.term };
                    self.end_reign(c);
                    self.send(c, req);
                }
                let after = ms(self.rng.random_range(100..3_000));
                self.down(c, after);
            }
            Event::Restart { c } if matches!(self.cands[c].phase, Phase::Down) => {
                let cand = &mut self.cands[c];
                cand.phase = Phase::Standby;
                cand.holder = self.next_holder;
                self.next_holder += 1;
                let life = cand.life;
                self.at(self.now, Event::Wake { c, life });
            }
            _ => {}
        }
    }

    /// The answer to candidate `c`'s request sent at `sent` (its clock), or `None` if it gave up waiting.
    fn answered(&mut self, c: usize, sent: Instant, resp: Option<Resp>) {
        let now = self.local(c, self.now);
        let phase = std::mem::replace(&mut self.cands[c].phase, Phase::Standby);
        match (phase, resp) {
            (Phase::Leading(mut t), resp) => {
                let renewal = match resp {
                    Some(Resp::Renewed(true)) => Renewal::Granted,
                    Some(Resp::Renewed(false)) => Renewal::Refused,
                    _ => Renewal::Failed,
                };
                match t.renewed(sent, renewal, now) {
                    Verdict::Lead => {
                        let next = t.next_renewal(now);
                        self.cands[c].phase = Phase::Leading(t);
                        self.wake_at(c, next);
                    }
                    // The binary exits; its supervisor restarts it.
                    Verdict::StepDown(_) => self.down(c, RESTART_AFTER_STEP_DOWN),
                }
            }
            (_, Some(Resp::Acquired(Some(term)))) => {
                let t = Tenure::new(term, sent, true);
                let next = t.next_renewal(now);
                self.cands[c].phase = Phase::Leading(t);
                self.reigns.push(Reign { c, term, from: self.now, to: None });
                self.wake_at(c, next);
            }
            _ => self.wake_at(c, now + POLL),
        }
    }

    fn run(mut self) -> Result<Vec<Reign>, String> {
        let mut events = 0;
        while let Some(s) = self.queue.pop() {
            if s.at > RUN_FOR {
                break;
            }
            events += 1;
            if events > MAX_EVENTS {
                return Err(format!("more than {MAX_EVENTS} events by {:?}: a livelock", self.now));
            }
            self.now = s.at;
            self.step(s.event);
        }
        Ok(self.reigns)
    }
}

fn ms(n: u64) -> T {
    Duration::from_millis(n)
}

/// The invariants of one run's reigns; `Err` says which broke.
fn check(reigns: &[Reign]) -> Result<(), String> {
    let mut sorted = reigns.to_vec();
    sorted.sort_by_key(|r| r.from);
    let mut last: Option<Reign> = None;
    for r in &sorted {
        if let Some(l) = last {
            let ended = l.to.unwrap_or(RUN_FOR);
            if r.from < ended {
                return Err(format!("two leaders at once: {l:?} and {r:?}"));
            }
            if r.term <= l.term {
                return Err(format!("a term did not grow: {l:?} then {r:?}"));
            }
        }
        last = Some(*r);
    }
    match sorted.last() {
        Some(r) if r.to.is_none() && r.from <= CALM_BY => Ok(()),
        other => Err(format!("no steady leader from {CALM_BY:?} on, once the faults stopped: last reign {other:?}")),
    }
}

fn run_seed(seed: u64) -> Result<Vec<Reign>, String> {
    let reigns = Sim::new(seed).run()?;
    check(&reigns)?;
    Ok(reigns)
}

#[test]
fn a_thousand_seeded_runs_never_have_two_leaders_and_always_settle() {
    if let Ok(seed) = std::env::var("KEEL_SIM_SEED") {
        let seed: u64 = seed.parse().expect("KEEL_SIM_SEED is a number");
        match run_seed(seed) {
            Ok(reigns) => println!("seed {seed}: ok; reigns {reigns:#?}"),
            Err(e) => panic!("seed {seed}: {e}"),
        }
        return;
    }
    let seeds: u64 = std::env::var("KEEL_SIM_SEEDS").map_or(1000, |s| s.parse().expect("KEEL_SIM_SEEDS is a number"));
    let mut failed = vec![];
    let (mut reigns, mut gaps) = (0usize, vec![]);
    for seed in 0..seeds {
        match run_seed(seed) {
            Ok(r) => {
                reigns += r.len();
                // From a reign's end to the next reign's start: how long the cluster was leaderless.
                gaps.extend(r.windows(2).filter_map(|w| w[0].to.map(|end| w[1].from.saturating_sub(end))));
            }
            Err(e) => failed.push(format!("seed {seed}: {e}")),
        }
    }
    gaps.sort();
    let p = |q: f64| gaps.get(((gaps.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    println!(
        "{seeds} seeds, {reigns} reigns; leaderless between reigns p50 {:?}, p99 {:?}, max {:?}",
        p(0.5),
        p(0.99),
        gaps.last().copied().unwrap_or_default()
    );
    assert!(
        failed.is_empty(),
        "{} of {seeds} seeds failed (replay one with KEEL_SIM_SEED=N cargo test -p keel-core --test election_sim -- --nocapture):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// The same seed plays the same run.
#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 77, 901] {
        let a = format!("{:?}", Sim::new(seed).run());
        let b = format!("{:?}", Sim::new(seed).run());
        assert_eq!(a, b, "seed {seed}");
    }
}

/// The checker is not blind: overlapping reigns, a term going back, and no settled leader are caught.
#[test]
fn the_checker_catches_broken_runs() {
    let r = |c, term, from: u64, to: Option<u64>| Reign { c, term, from: ms(from), to: to.map(ms) };
    assert!(check(&[r(0, 1, 0, Some(2_000)), r(1, 2, 1_999, None)]).unwrap_err().contains("two leaders"));
    assert!(check(&[r(0, 2, 0, Some(2_000)), r(1, 2, 2_500, None)]).unwrap_err().contains("term"));
    assert!(check(&[r(0, 1, 0, Some(2_000))]).unwrap_err().contains("no steady leader"));
    assert!(check(&[r(0, 1, 0, Some(2_000)), r(1, 2, 35_000, None)]).unwrap_err().contains("no steady leader"));
    assert!(check(&[r(0, 1, 0, Some(2_000)), r(1, 2, 4_000, None)]).is_ok());
}
