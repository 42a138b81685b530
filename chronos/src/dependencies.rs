//! The cron framework's dependencies: when a job that runs after its parents is due a run. Pure: the actor
//! keeps each job's latest success and each child's latest dependency run, and records the run this
//! decides on.

use std::collections::HashMap;

use crate::job::JobId;

/// The parent run that completes a child's set of parents, if every parent succeeded after `baseline`
/// (the child's last dependency run, or its last change): the latest of those successes, as
/// (parent, run id). The child's run is keyed by it ([`trigger_key`]), so the same successes can never
/// start the child twice, not even across a restart.
pub fn completed_by<'a>(
    parents: &'a [JobId],
    last_success: &'a HashMap<JobId, (i64, String)>,
    baseline: i64,
) -> Option<(&'a JobId, &'a str)> {
    let mut latest: Option<(&JobId, &(i64, String))> = None;
    for p in parents {
        let s = last_success.get(p).filter(|s| s.0 > baseline)?;
        if latest.is_none_or(|(_, l)| s.0 > l.0) {
            latest = Some((p, s));
        }
    }
    latest.map(|(p, (_, run))| (p, run.as_str()))
}

/// The trigger key of a child's run started by `parent`'s run `run`.
pub fn trigger_key(parent: &JobId, run: &str) -> String {
    format!("after:{parent}/{run}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{completed_by, trigger_key};
    use crate::job::JobId;

    fn id(s: &str) -> JobId {
        JobId::parse(s).unwrap()
    }

    #[test]
    fn a_child_is_due_once_every_parent_succeeded_since_its_baseline() {
        let parents = [id("a"), id("b")];
        let mut done = HashMap::new();
        assert_eq!(completed_by(&parents, &done, 0), None, "no parent has succeeded");
        done.insert(id("a"), (10, "a1".to_owned()));
        assert_eq!(completed_by(&parents, &done, 0), None, "b has not succeeded");
        done.insert(id("b"), (20, "b1".to_owned()));
        let (parent, run) = completed_by(&parents, &done, 0).unwrap();
        assert_eq!((parent.as_str(), run), ("b", "b1"), "the latest success completes the set");
        assert_eq!(trigger_key(parent, run), "after:b/b1");
        // Once the child ran (baseline 20), both parents must succeed again.
        assert_eq!(completed_by(&parents, &done, 20), None);
        done.insert(id("a"), (30, "a2".to_owned()));
        assert_eq!(completed_by(&parents, &done, 20), None, "b's success is older than the last run");
        done.insert(id("b"), (25, "b2".to_owned()));
        let (parent, run) = completed_by(&parents, &done, 20).unwrap();
        assert_eq!((parent.as_str(), run), ("a", "a2"));
        assert_eq!(completed_by(&[], &done, 0), None, "a job without parents is not a dependent job");
    }
}
