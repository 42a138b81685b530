//! The cron framework's timers: runs ordered by when something is due for them (a tick to fire, a pending
//! run to give up on, a retry, a deadline), each at most once. Pure data: the actor sleeps until the first
//! is due and pops what is.

use std::collections::{BTreeSet, HashMap};

use crate::job::JobId;

/// A run's key: its job and id.
pub type Key = (JobId, String);

/// Runs ordered by a time (milliseconds), each at most once, with an index by run.
#[derive(Default)]
pub struct Queue {
    order: BTreeSet<(i64, JobId, String)>,
    at: HashMap<Key, i64>,
}

impl Queue {
    /// Puts `key` at `t`, moving it if it was there already.
    pub fn insert(&mut self, key: Key, t: i64) {
        if let Some(old) = self.at.insert(key.clone(), t) {
            self.order.remove(&(old, key.0.clone(), key.1.clone()));
        }
        self.order.insert((t, key.0, key.1));
    }

    pub fn remove(&mut self, key: &Key) -> bool {
        match self.at.remove(key) {
            Some(t) => self.order.remove(&(t, key.0.clone(), key.1.clone())),
            None => false,
        }
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.at.contains_key(key)
    }

    pub fn first(&self) -> Option<&(i64, JobId, String)> {
        self.order.first()
    }

    /// The first run due at or before `now`, taken out.
    pub fn pop_due(&mut self, now: i64) -> Option<(i64, Key)> {
        let (t, job, run) = self.order.first().filter(|(t, ..)| *t <= now)?.clone();
        let key = (job, run);
        self.remove(&key);
        Some((t, key))
    }

    pub fn iter(&self) -> impl Iterator<Item = &(i64, JobId, String)> {
        self.order.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn remove_job(&mut self, job: &JobId) {
        self.order.retain(|(_, j, _)| j != job);
        self.at.retain(|(j, _), _| j != job);
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;
    use crate::job::JobId;

    fn key(job: &str, run: &str) -> (JobId, String) {
        (JobId::parse(job).unwrap(), run.to_owned())
    }

    #[test]
    fn runs_come_out_in_time_order_once_due_and_a_run_is_queued_once() {
        let mut q = Queue::default();
        q.insert(key("a", "1"), 30);
        q.insert(key("b", "1"), 10);
        q.insert(key("a", "2"), 20);
        // Queued again: moved, not duplicated.
        q.insert(key("a", "1"), 5);
        assert_eq!(q.iter().count(), 3);
        assert_eq!(q.first().map(|f| f.0), Some(5));
        assert_eq!(q.pop_due(4), None, "nothing is due before its time");
        assert_eq!(q.pop_due(25), Some((5, key("a", "1"))));
        assert_eq!(q.pop_due(25), Some((10, key("b", "1"))));
        assert_eq!(q.pop_due(25), Some((20, key("a", "2"))));
        assert_eq!(q.pop_due(25), None);
        assert!(q.is_empty());
    }

    #[test]
    fn removing_a_run_or_a_job_leaves_the_rest() {
        let mut q = Queue::default();
        q.insert(key("a", "1"), 1);
        q.insert(key("a", "2"), 2);
        q.insert(key("b", "1"), 3);
        assert!(q.remove(&key("a", "2")));
        assert!(!q.remove(&key("a", "2")), "removed once");
        q.remove_job(&JobId::parse("a").unwrap());
        assert!(!q.contains(&key("a", "1")) && q.contains(&key("b", "1")));
        assert_eq!(q.pop_due(10), Some((3, key("b", "1"))));
    }
}
