//! When to ask the master about this framework's tasks, as a pure step over `now`.
//!
//! After subscribing, the framework asks about every task it knows, and asks again (1 s, doubling to 30 s)
//! about those still unanswered: a master that has just restarted answers only once the task's agent is
//! back, and a question or its answer can be lost with a connection. On top of that, every
//! [`FULL_INTERVAL`] it asks about all its tasks, as Marathon's `reconciliation_interval` does, so no task
//! stays in a state the master no longer reports.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel_core::ids::{AgentId, TaskId};

/// The first wait before unanswered tasks are asked about again.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two askings about unanswered tasks.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a launched task may go without any update before the master is asked about it: the launch
/// (or every answer to it) may have been lost.
const LAUNCH_GRACE: Duration = Duration::from_secs(5);
/// How often every task is asked about (Marathon's `reconciliation_interval` default).
pub const FULL_INTERVAL: Duration = Duration::from_secs(600);

/// What to ask the master now.
#[derive(Debug, Default, PartialEq)]
pub struct Ask {
    /// Tasks to ask about by id.
    pub explicit: Vec<(TaskId, Option<AgentId>)>,
    /// Also ask about every task the master knows of this framework.
    pub implicit: bool,
}

/// The tasks asked about and not yet answered, and when to ask next.
#[derive(Debug)]
pub struct Reconciliation {
    unanswered: HashMap<TaskId, Option<AgentId>>,
    retry: Duration,
    next_retry: Instant,
    next_full: Instant,
}

impl Reconciliation {
    pub fn new(now: Instant) -> Reconciliation {
        Reconciliation {
            unanswered: HashMap::new(),
            retry: FIRST_RETRY,
            next_retry: now,
            next_full: now + FULL_INTERVAL,
        }
    }

    /// Subscribed (again): ask about every task in `known` now, and implicitly about the rest.
    pub fn subscribed(&mut self, known: Vec<(TaskId, Option<AgentId>)>, now: Instant) -> Ask {
        self.unanswered = known.iter().cloned().collect();
        self.retry = FIRST_RETRY;
        self.next_retry = now + self.retry;
        self.next_full = now + FULL_INTERVAL;
        Ask { explicit: known, implicit: true }
    }

    /// Tasks were just launched: unless an update about one comes first, the master is asked about it
    /// after [`LAUNCH_GRACE`] (and again, less and less often, until one does).
    pub fn launched(&mut self, tasks: impl IntoIterator<Item = (TaskId, Option<AgentId>)>, now: Instant) {
        let waiting = !self.unanswered.is_empty();
        self.unanswered.extend(tasks);
        if !waiting && !self.unanswered.is_empty() {
            self.retry = LAUNCH_GRACE;
            self.next_retry = now + LAUNCH_GRACE;
        }
    }

    /// Any update about `task` answers for it.
    pub fn answered(&mut self, task: &TaskId) {
        self.unanswered.remove(task);
    }

    /// Whether the periodic pass over every task is due.
    pub fn full_due(&self, now: Instant) -> bool {
        now >= self.next_full
    }

    /// What to ask now, given the tasks now `known` (for the periodic pass).
    pub fn due(&mut self, now: Instant, known: impl FnOnce() -> Vec<(TaskId, Option<AgentId>)>) -> Option<Ask> {
        if now >= self.next_full {
            self.next_full = now + FULL_INTERVAL;
            let all = known();
            self.unanswered = all.iter().cloned().collect();
            self.retry = FIRST_RETRY;
            self.next_retry = now + self.retry;
            return Some(Ask { explicit: all, implicit: true });
        }
        if self.unanswered.is_empty() || now < self.next_retry {
            return None;
        }
        self.retry = (self.retry * 2).min(MAX_RETRY);
        self.next_retry = now + self.retry;
        let mut explicit: Vec<(TaskId, Option<AgentId>)> =
            self.unanswered.iter().map(|(t, a)| (t.clone(), a.clone())).collect();
        explicit.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Some(Ask { explicit, implicit: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str) -> TaskId {
        TaskId::parse(id).unwrap()
    }

    #[test]
    fn unanswered_tasks_are_asked_again_with_backoff_until_answered() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Reconciliation::new(t0);
        let first = r.subscribed(vec![(t("a"), None), (t("b"), None)], t0);
        assert_eq!((first.explicit.len(), first.implicit), (2, true));
        assert_eq!(r.due(t0, Vec::new), None, "not again at once");
        let again = r.due(t0 + s(1), Vec::new).unwrap();
        assert_eq!((again.explicit.len(), again.implicit), (2, false));
        r.answered(&t("a"));
        assert_eq!(r.due(t0 + s(2), Vec::new), None, "the wait doubled to 2 s");
        assert_eq!(r.due(t0 + s(3), Vec::new).unwrap().explicit, vec![(t("b"), None)]);
        // The wait doubles up to 30 s.
        let mut at = t0 + s(3);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let next = (1..=60).map(|d| at + s(d)).find(|when| r.due(*when, Vec::new).is_some()).unwrap();
            waits.push((next - at).as_secs());
            at = next;
        }
        assert_eq!(waits, [4, 8, 16, 30, 30, 30]);
        r.answered(&t("b"));
        assert_eq!(r.due(at + s(60), Vec::new), None, "nothing left to ask");
    }

    #[test]
    fn a_launched_task_not_heard_of_is_asked_about() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Reconciliation::new(t0);
        r.subscribed(vec![], t0);
        r.launched([(t("a"), None), (t("b"), None)], t0);
        r.answered(&t("a"));
        assert_eq!(r.due(t0 + s(4), Vec::new), None, "a launch takes a moment");
        assert_eq!(r.due(t0 + s(5), Vec::new).unwrap().explicit, vec![(t("b"), None)], "b was never heard of");
        r.answered(&t("b"));
        assert_eq!(r.due(t0 + s(60), Vec::new), None);
    }

    #[test]
    fn every_task_is_asked_about_periodically() {
        let t0 = Instant::now();
        let mut r = Reconciliation::new(t0);
        r.subscribed(vec![], t0);
        assert_eq!(r.due(t0 + FULL_INTERVAL - Duration::from_secs(1), Vec::new), None);
        let ask = r.due(t0 + FULL_INTERVAL, || vec![(t("c"), None)]).unwrap();
        assert_eq!((ask.explicit, ask.implicit), (vec![(t("c"), None)], true));
    }
}
