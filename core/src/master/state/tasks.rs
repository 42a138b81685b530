//! The tasks part of the master: what a status update from an agent does to the task it names. A pure step:
//! the actor looks the task up, asks [`on_update`], and carries out the answer (forwarding, acknowledging,
//! freeing resources, killing).

use crate::ids::AgentId;
use crate::task::{TaskState, TaskStatus, TransitionError};

/// What the master knows of the task an update names.
#[derive(Clone, Copy, Debug)]
pub(super) enum Known<'a> {
    /// A live task, or one that ended and waits for its last update's acknowledgement.
    Task { agent_id: &'a AgentId, state: TaskState },
    /// Completed: its final update was acknowledged (or needed none).
    Completed,
    /// Not known at all (after a failover, an update can arrive before the agent re-registers it).
    Unknown,
}

/// What to do with one update.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Update {
    /// A retry that crossed the acknowledgement of the task's final update, or news of a task the master
    /// gave up on: acknowledge it so the agent stops, tell no one, and kill the task if it says it runs.
    /// Recreating the task would keep it in the master for ever, as the agent has already let go.
    Completed { kill: bool },
    /// The task runs on another agent: ignore the update.
    OtherAgent { owner: AgentId },
    /// The update would move the task backwards or out of a terminal state: drop it, acknowledged.
    Illegal(TransitionError),
    /// The task moves to `next` (it is created first when unknown). `finished`: it just ended, so its
    /// resources are free. `complete`: nothing will acknowledge this final update (no uuid, or the
    /// framework was torn down), so the task is done with now. `track`: the update created a live task
    /// (after a failover, an agent that reported the task finished still sends its queued updates, the
    /// older ones first), which must be counted among its agent's tasks like any other, so that it is
    /// found lost if the agent comes back without it; untracked, it would stay live for ever.
    Apply { next: TaskState, finished: bool, complete: bool, track: bool },
}

/// The step: what an update `status` from agent `from` does to the task, given what is `known` of it and
/// whether its framework was torn down.
pub(super) fn on_update(known: Known<'_>, from: &AgentId, status: &TaskStatus, framework_removed: bool) -> Update {
    let before = match known {
        Known::Completed => return Update::Completed { kill: !status.state.is_terminal() },
        Known::Task { agent_id, .. } if agent_id != from => return Update::OtherAgent { owner: agent_id.clone() },
        Known::Task { state, .. } => state,
        // A new task starts in the state it is reported in; an update can never create an "unknown" one.
        Known::Unknown if status.state == TaskState::Unknown => {
            return Update::Illegal(TransitionError { from: TaskState::Unknown, to: TaskState::Unknown });
        }
        Known::Unknown => status.state,
    };
    match before.transition(status.state) {
        Err(e) => Update::Illegal(e),
        Ok(next) => Update::Apply {
            next,
            finished: next.is_terminal() && !before.is_terminal(),
            complete: next.is_terminal() && (framework_removed || status.uuid.is_none()),
            track: matches!(known, Known::Unknown) && !next.is_terminal(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{Known, Update, on_update};
    use crate::ids::{AgentId, TaskId};
    use crate::task::{Source, TaskState, TaskStatus};

    fn update(state: TaskState, uuid: bool) -> TaskStatus {
        TaskStatus {
            task_id: TaskId::parse("t").unwrap(),
            state,
            message: String::new(),
            source: Source::Agent,
            reason: None,
            agent_id: None,
            uuid: uuid.then(|| "u".to_owned()),
            timestamp: 0.0,
            exit_code: None,
            healthy: None,
        }
    }

    #[test]
    fn an_update_moves_its_task_forward_and_a_final_one_frees_it() {
        let a = AgentId::parse("a").unwrap();
        let known = |state| Known::Task { agent_id: &a, state };
        let running = on_update(known(TaskState::Staging), &a, &update(TaskState::Running, true), false);
        assert_eq!(running, Update::Apply { next: TaskState::Running, finished: false, complete: false, track: false });
        // A final update waits for its acknowledgement, unless none can come.
        let failed = on_update(known(TaskState::Running), &a, &update(TaskState::Failed, true), false);
        assert_eq!(failed, Update::Apply { next: TaskState::Failed, finished: true, complete: false, track: false });
        let lost = on_update(known(TaskState::Running), &a, &update(TaskState::Lost, false), false);
        assert_eq!(lost, Update::Apply { next: TaskState::Lost, finished: true, complete: true, track: false });
        let torn_down = on_update(known(TaskState::Running), &a, &update(TaskState::Killed, true), true);
        assert_eq!(torn_down, Update::Apply { next: TaskState::Killed, finished: true, complete: true, track: false });
        // The same final update again (a retry) frees nothing twice.
        let again = on_update(known(TaskState::Failed), &a, &update(TaskState::Failed, true), false);
        assert_eq!(again, Update::Apply { next: TaskState::Failed, finished: false, complete: false, track: false });
    }

    #[test]
    fn stale_foreign_and_illegal_updates_change_nothing() {
        let (a, b) = (AgentId::parse("a").unwrap(), AgentId::parse("b").unwrap());
        let on_b = Known::Task { agent_id: &b, state: TaskState::Running };
        assert_eq!(
            on_update(on_b, &a, &update(TaskState::Failed, true), false),
            Update::OtherAgent { owner: b.clone() }
        );
        let finished = Known::Task { agent_id: &a, state: TaskState::Finished };
        assert!(matches!(on_update(finished, &a, &update(TaskState::Running, true), false), Update::Illegal(_)));
        // After completion: a stale final update is only acknowledged; one that says the task runs kills it.
        assert_eq!(
            on_update(Known::Completed, &a, &update(TaskState::Killed, true), false),
            Update::Completed { kill: false }
        );
        assert_eq!(
            on_update(Known::Completed, &a, &update(TaskState::Running, true), false),
            Update::Completed { kill: true }
        );
    }

    #[test]
    fn an_unknown_task_is_learnt_from_its_update_but_never_as_unknown() {
        let a = AgentId::parse("a").unwrap();
        // A live task learnt this way is counted among its agent's tasks; a finished one is not.
        let running = on_update(Known::Unknown, &a, &update(TaskState::Running, true), false);
        assert_eq!(running, Update::Apply { next: TaskState::Running, finished: false, complete: false, track: true });
        let failed = on_update(Known::Unknown, &a, &update(TaskState::Failed, true), false);
        assert_eq!(failed, Update::Apply { next: TaskState::Failed, finished: false, complete: false, track: false });
        assert!(matches!(on_update(Known::Unknown, &a, &update(TaskState::Unknown, true), false), Update::Illegal(_)));
    }
}
