//! The registry part of the master: what becomes of each task an agent reports when it (re-)registers, and
//! of the tasks the master placed there that it no longer reports. Pure steps: the actor looks up what it
//! knows, asks, and carries out the answer (adopting, reviving, killing, declaring lost).

use crate::ids::AgentId;
use crate::task::TaskState;

/// What the master knows of the framework of a reported task.
#[derive(Clone, Copy, Debug)]
pub(super) enum Owner {
    /// Not in the registry (it was wiped, or the framework never subscribed to this master).
    Unknown,
    /// Torn down in an earlier life of the master.
    RemovedEarlier,
    /// Known; `torn_down` while its tasks are being killed.
    Known { torn_down: bool },
}

/// The master's record of a reported task.
#[derive(Clone, Copy, Debug)]
pub(super) struct Record<'a> {
    pub agent_id: &'a AgentId,
    pub state: TaskState,
    pub kill_requested: bool,
}

/// What to do with one reported task.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Plan {
    /// Ignore the report: the master knows the task on another agent.
    pub ignore: bool,
    /// Keep a placeholder for its unknown framework first, which gets the recovery grace to come back.
    pub placeholder: bool,
    /// Tell the agent to kill it.
    pub kill: bool,
    /// Bring the known task back to this live state, and tell its framework.
    pub revive: Option<TaskState>,
    /// Adopt a live task the master does not know (track its resources); `Some(true)` also tells its
    /// framework, which was told the agent's tasks were unreachable.
    pub adopt: Option<bool>,
    /// A finished task the master does not know: its final update is on its way from the agent, and
    /// answers any question about it.
    pub final_update_coming: bool,
}

/// The step for one task that agent `from` reports in `state`, given its framework and the master's record
/// of it; `was_unreachable` when the master had found the agent unreachable.
pub(super) fn on_reported(
    from: &AgentId,
    state: TaskState,
    owner: Owner,
    record: Option<Record<'_>>,
    was_unreachable: bool,
) -> Plan {
    if record.is_some_and(|r| r.agent_id != from) {
        return Plan { ignore: true, ..Plan::default() };
    }
    let torn_down = match owner {
        Owner::RemovedEarlier => return Plan { kill: true, ..Plan::default() },
        Owner::Unknown => false,
        Owner::Known { torn_down } => torn_down,
    };
    let placeholder = matches!(owner, Owner::Unknown);
    match record {
        Some(r) => {
            // The agent's queued updates carry every change, in order. Only a task the master itself marked
            // unreachable is brought back here, to the live state the agent reports; a terminal state
            // arrives as the agent's own update, which also frees the resources.
            let revive = ((r.state == TaskState::Unreachable || was_unreachable)
                && r.state != state
                && !state.is_terminal()
                && !r.state.is_terminal())
            .then_some(state);
            Plan { placeholder, kill: torn_down || r.kill_requested, revive, ..Plan::default() }
        }
        // A finished task the master does not know: its final update is on its way.
        None if state.is_terminal() => {
            Plan { placeholder, kill: torn_down, final_update_coming: true, ..Plan::default() }
        }
        None => Plan { placeholder, kill: torn_down, adopt: Some(was_unreachable), ..Plan::default() },
    }
}

#[cfg(test)]
mod tests {
    use super::{Owner, Plan, Record, on_reported};
    use crate::ids::AgentId;
    use crate::task::TaskState::{self, *};

    fn plan(state: TaskState, owner: Owner, record: Option<(TaskState, bool)>, was_unreachable: bool) -> Plan {
        let a = AgentId::parse("a").unwrap();
        let record = record.map(|(state, kill_requested)| Record { agent_id: &a, state, kill_requested });
        on_reported(&a, state, owner, record, was_unreachable)
    }

    const KNOWN: Owner = Owner::Known { torn_down: false };

    #[test]
    fn known_tasks_come_back_only_from_unreachable_and_requested_kills_are_sent_again() {
        assert_eq!(plan(Running, KNOWN, Some((Running, false)), false), Plan::default());
        assert_eq!(plan(Running, KNOWN, Some((Unreachable, false)), false).revive, Some(Running));
        assert_eq!(
            plan(Running, KNOWN, Some((Staging, false)), true).revive,
            Some(Running),
            "the agent was unreachable"
        );
        assert_eq!(plan(Running, KNOWN, Some((Staging, false)), false).revive, None, "its update will say so");
        assert_eq!(plan(Failed, KNOWN, Some((Unreachable, false)), false).revive, None, "an end comes as an update");
        assert_eq!(plan(Running, KNOWN, Some((Running, true)), false), Plan { kill: true, ..Plan::default() });
    }

    #[test]
    fn unknown_tasks_are_adopted_while_live_and_left_to_their_update_when_finished() {
        assert_eq!(plan(Running, KNOWN, None, false), Plan { adopt: Some(false), ..Plan::default() });
        assert_eq!(plan(Running, KNOWN, None, true), Plan { adopt: Some(true), ..Plan::default() });
        assert_eq!(plan(Finished, KNOWN, None, false), Plan { final_update_coming: true, ..Plan::default() });
        let unknown = plan(Running, Owner::Unknown, None, false);
        assert_eq!(unknown, Plan { placeholder: true, adopt: Some(false), ..Plan::default() });
    }

    #[test]
    fn tasks_of_torn_down_frameworks_are_killed_and_foreign_ones_ignored() {
        assert_eq!(plan(Running, Owner::RemovedEarlier, None, false), Plan { kill: true, ..Plan::default() });
        let torn_down = plan(Running, Owner::Known { torn_down: true }, None, false);
        assert_eq!(torn_down, Plan { kill: true, adopt: Some(false), ..Plan::default() });
        let (a, b) = (AgentId::parse("a").unwrap(), AgentId::parse("b").unwrap());
        let elsewhere = Record { agent_id: &b, state: Running, kill_requested: false };
        assert_eq!(on_reported(&a, Running, KNOWN, Some(elsewhere), false), Plan { ignore: true, ..Plan::default() });
    }
}
