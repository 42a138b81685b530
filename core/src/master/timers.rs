//! The master's timers, as a pure decision: from how the agents, frameworks, outstanding offers and file
//! reads stand at `now`, what is due. The actor (`state.rs`, `Master::periodic`) gathers the inputs and
//! carries out the answer; nothing here reads a clock or touches a connection. Every list comes sorted, so
//! the same state always yields the same effects in the same order.

use std::time::{Duration, Instant};

use super::MasterConfig;
use crate::ids::{AgentId, FrameworkId, OfferId};

/// How long an agent has to answer a file read.
pub(super) const FILE_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An agent, as its liveness timer sees it.
pub(super) struct AgentClock {
    pub id: AgentId,
    /// Known from the store after a master restart and not yet re-registered: it gets the longer grace.
    pub recovering: bool,
    pub unreachable: bool,
    pub last_seen: Instant,
}

/// A framework, as its failover timer sees it.
pub(super) struct FrameworkClock {
    pub id: FrameworkId,
    pub removed: bool,
    pub connected: bool,
    /// When a disconnected framework's tasks are torn down.
    pub failover_deadline: Option<Instant>,
}

/// When the master last did its periodic work.
pub(super) struct Marks {
    pub last_heartbeat: Instant,
    pub last_full_allocation: Instant,
    /// Something changed that calls for an allocation pass now.
    pub allocation_due: bool,
}

/// What is due at `now`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Due {
    /// Agents silent for longer than their timeout.
    pub unreachable: Vec<AgentId>,
    /// Disconnected frameworks whose failover timeout passed: torn down.
    pub expired: Vec<FrameworkId>,
    /// File reads no agent answered in time.
    pub stale_reads: Vec<u64>,
    /// Offers outstanding for longer than the offer timeout: rescinded.
    pub stale_offers: Vec<OfferId>,
    /// A heartbeat to every connected framework.
    pub heartbeat: bool,
    /// A full allocation pass (with filters expired first).
    pub allocate: bool,
}

/// What the timers call for at `now`. Pure.
pub(super) fn due(
    now: Instant,
    config: &MasterConfig,
    marks: &Marks,
    agents: impl IntoIterator<Item = AgentClock>,
    frameworks: impl IntoIterator<Item = FrameworkClock>,
    reads: impl IntoIterator<Item = (u64, Instant)>,
    offers: impl IntoIterator<Item = (OfferId, Instant)>,
) -> Due {
    let since = |t: Instant| now.saturating_duration_since(t);
    // Agents expected back after a master restart get the longer recovery grace.
    let recovering_timeout = config.agent_timeout.max(config.recovery_grace);
    let mut unreachable: Vec<AgentId> = agents
        .into_iter()
        .filter(|a| {
            let limit = if a.recovering { recovering_timeout } else { config.agent_timeout };
            !a.unreachable && since(a.last_seen) > limit
        })
        .map(|a| a.id)
        .collect();
    let mut expired: Vec<FrameworkId> = frameworks
        .into_iter()
        .filter(|f| !f.removed && !f.connected && f.failover_deadline.is_some_and(|d| now >= d))
        .map(|f| f.id)
        .collect();
    let mut stale_reads: Vec<u64> =
        reads.into_iter().filter(|(_, t)| since(*t) > FILE_READ_TIMEOUT).map(|(id, _)| id).collect();
    let mut stale_offers: Vec<OfferId> = match config.offer_timeout {
        Some(limit) => offers.into_iter().filter(|(_, t)| since(*t) > limit).map(|(id, _)| id).collect(),
        None => vec![],
    };
    unreachable.sort();
    expired.sort();
    stale_reads.sort_unstable();
    stale_offers.sort();
    Due {
        unreachable,
        expired,
        stale_reads,
        stale_offers,
        heartbeat: since(marks.last_heartbeat) >= config.framework_heartbeat,
        allocate: marks.allocation_due || since(marks.last_full_allocation) >= config.allocation_interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, recovering: bool, unreachable: bool, last_seen: Instant) -> AgentClock {
        AgentClock { id: AgentId::parse(id).unwrap(), recovering, unreachable, last_seen }
    }

    fn framework(id: &str, connected: bool, deadline: Option<Instant>) -> FrameworkClock {
        FrameworkClock { id: FrameworkId::parse(id).unwrap(), removed: false, connected, failover_deadline: deadline }
    }

    #[test]
    fn silent_agents_become_unreachable_after_their_timeout_recovering_ones_after_the_grace() {
        let t0 = Instant::now();
        let config = MasterConfig {
            agent_timeout: Duration::from_secs(5),
            recovery_grace: Duration::from_secs(30),
            ..MasterConfig::default()
        };
        let marks = Marks { last_heartbeat: t0, last_full_allocation: t0, allocation_due: false };
        let now = t0 + Duration::from_secs(10);
        let agents = [
            agent("b-silent", false, false, t0),
            agent("a-silent", false, false, t0 + Duration::from_secs(4)),
            agent("fresh", false, false, t0 + Duration::from_secs(6)),
            agent("recovering", true, false, t0),
            agent("already", false, true, t0),
        ];
        let due = due(now, &config, &marks, agents, [], [], []);
        let ids: Vec<String> = due.unreachable.iter().map(|a| a.to_string()).collect();
        assert_eq!(ids, ["a-silent", "b-silent"], "sorted, and neither the fresh, the recovering nor the known");
        let later = t0 + Duration::from_secs(31);
        let due = super::due(later, &config, &marks, [agent("recovering", true, false, t0)], [], [], []);
        assert_eq!(due.unreachable.len(), 1, "past the recovery grace");
    }

    #[test]
    fn frameworks_offers_reads_heartbeats_and_allocations_fall_due() {
        let t0 = Instant::now();
        let config = MasterConfig {
            offer_timeout: Some(Duration::from_secs(30)),
            framework_heartbeat: Duration::from_secs(15),
            allocation_interval: Duration::from_secs(1),
            ..MasterConfig::default()
        };
        let now = t0 + Duration::from_secs(40);
        let marks =
            Marks { last_heartbeat: t0 + Duration::from_secs(30), last_full_allocation: now, allocation_due: false };
        let mut removed = framework("removed", false, Some(t0));
        removed.removed = true;
        let frameworks = [
            framework("gone", false, Some(t0 + Duration::from_secs(40))),
            framework("waiting", false, Some(t0 + Duration::from_secs(41))),
            framework("connected", true, Some(t0)),
            removed,
        ];
        let offers =
            [(OfferId::parse("old").unwrap(), t0), (OfferId::parse("new").unwrap(), t0 + Duration::from_secs(20))];
        let due = due(now, &config, &marks, [], frameworks, [(2, t0 + Duration::from_secs(35)), (1, t0)], offers);
        assert_eq!(due.expired, [FrameworkId::parse("gone").unwrap()], "at its deadline, not before");
        assert_eq!(due.stale_reads, [1]);
        assert_eq!(due.stale_offers, [OfferId::parse("old").unwrap()]);
        assert!(!due.heartbeat && !due.allocate);

        let marks =
            Marks { last_heartbeat: t0 + Duration::from_secs(25), last_full_allocation: now, allocation_due: true };
        let due = super::due(now, &config, &marks, [], [], [], []);
        assert!(due.heartbeat && due.allocate);
        let without = MasterConfig { offer_timeout: None, ..MasterConfig::default() };
        let due = super::due(now, &without, &marks, [], [], [], [(OfferId::parse("old").unwrap(), t0)]);
        assert!(due.stale_offers.is_empty(), "no offer timeout: offers stay");
        // A clock that went backwards (an instant after `now`) is not due, and does not panic.
        let future = now + Duration::from_secs(100);
        let marks = Marks { last_heartbeat: future, last_full_allocation: future, allocation_due: false };
        let due = super::due(now, &config, &marks, [agent("x", false, false, future)], [], [(1, future)], []);
        assert_eq!(due, Due::default());
    }
}
