//! The resource allocator: hierarchical, weighted Dominant Resource Fairness, as in Mesos.
//!
//! It is pure: no I/O, no clock (the caller passes `now`), no channels. The master tells it what exists
//! (agents, frameworks, what is in use) and asks [`Allocator::allocate`] for a plan: which agent's
//! unallocated resources to offer to which framework.
//!
//! Each allocation pass walks the agents that have something to offer. For each, it picks the role with the
//! lowest weighted dominant share, then the framework in that role with the lowest dominant share that is
//! active, not suppressed and has no decline filter on that agent, and gives it everything the agent has
//! left. Shares are updated after each agent, so one pass spreads agents fairly. Frameworks that could
//! never be chosen (inactive or suppressed) are kept out of the ordered sets, so a pass costs about
//! `agents × log(frameworks)`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::ids::{AgentId, FrameworkId};
use crate::resources::Resources;

/// Below these an agent's leftovers are not worth offering (Mesos's minimums).
const MIN_CPUS_MILLI: i64 = 10;
const MIN_MEM_MILLI: i64 = 32_000;

/// A dominant share, ordered totally so it can key an ordered set.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Share(f64);

impl Eq for Share {}
impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The scalar parts of resources that shares are computed over.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Scalars([i64; 3]);

impl Scalars {
    fn of(r: &Resources) -> Scalars {
        Scalars([r.cpus.milli(), r.mem.milli(), r.disk.milli()])
    }
    fn add(&mut self, o: Scalars) {
        for i in 0..3 {
            self.0[i] += o.0[i];
        }
    }
    fn sub(&mut self, o: Scalars) {
        for i in 0..3 {
            self.0[i] = (self.0[i] - o.0[i]).max(0);
        }
    }
    fn share(&self, total: &Scalars) -> f64 {
        (0..3).filter(|&i| total.0[i] > 0).map(|i| self.0[i] as f64 / total.0[i] as f64).fold(0.0, f64::max)
    }
}

struct AgentSlot {
    total: Resources,
    available: Resources,
    active: bool,
}

impl AgentSlot {
    fn offerable(&self) -> bool {
        self.active && (self.available.cpus.milli() >= MIN_CPUS_MILLI || self.available.mem.milli() >= MIN_MEM_MILLI)
    }
}

struct FrameworkSlot {
    role: String,
    allocated: Scalars,
    active: bool,
    suppressed: bool,
    /// Agents whose resources this framework declined, until when.
    filters: HashMap<AgentId, Instant>,
}

impl FrameworkSlot {
    fn eligible(&self) -> bool {
        self.active && !self.suppressed
    }
}

#[derive(Default)]
struct RoleSlot {
    allocated: Scalars,
    /// Eligible frameworks of the role, lowest share first.
    queue: BTreeSet<(Share, FrameworkId)>,
}

/// Resources of one agent to offer to one framework.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub resources: Resources,
}

/// Per-framework numbers for the operator API.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameworkShare {
    pub dominant_share: f64,
    pub suppressed: bool,
}

#[derive(Default)]
pub struct Allocator {
    total: Scalars,
    agents: BTreeMap<AgentId, AgentSlot>,
    frameworks: HashMap<FrameworkId, FrameworkSlot>,
    roles: BTreeMap<String, RoleSlot>,
    weights: HashMap<String, f64>,
}

impl Allocator {
    pub fn new() -> Allocator {
        Allocator::default()
    }

    /// Sets a role's weight (1 by default): a role with weight 2 is entitled to twice the share.
    pub fn set_weight(&mut self, role: &str, weight: f64) {
        self.weights.insert(role.to_owned(), if weight.is_finite() && weight > 0.0 { weight } else { 1.0 });
    }

    fn weight(&self, role: &str) -> f64 {
        self.weights.get(role).copied().unwrap_or(1.0)
    }

    fn share_of(&self, id: &FrameworkId) -> Share {
        Share(self.frameworks.get(id).map_or(0.0, |f| f.allocated.share(&self.total)))
    }

    fn role_share(&self, role: &str) -> Share {
        Share(self.roles.get(role).map_or(0.0, |r| r.allocated.share(&self.total)) / self.weight(role))
    }

    fn dequeue(&mut self, id: &FrameworkId) {
        let share = self.share_of(id);
        if let Some(f) = self.frameworks.get(id)
            && let Some(role) = self.roles.get_mut(&f.role)
        {
            role.queue.remove(&(share, id.clone()));
        }
    }

    fn enqueue(&mut self, id: &FrameworkId) {
        let share = self.share_of(id);
        if let Some(f) = self.frameworks.get(id)
            && f.eligible()
        {
            self.roles.entry(f.role.clone()).or_default().queue.insert((share, id.clone()));
        }
    }

    /// Adds a framework or updates its role and activity.
    pub fn add_framework(&mut self, id: &FrameworkId, role: &str, active: bool) {
        self.dequeue(id);
        match self.frameworks.get_mut(id) {
            Some(f) => {
                if f.role != role {
                    let alloc = f.allocated;
                    let old = std::mem::replace(&mut f.role, role.to_owned());
                    if let Some(r) = self.roles.get_mut(&old) {
                        r.allocated.sub(alloc);
                    }
                    self.roles.entry(role.to_owned()).or_default().allocated.add(alloc);
                }
                f.active = active;
            }
            None => {
                self.frameworks.insert(
                    id.clone(),
                    FrameworkSlot {
                        role: role.to_owned(),
                        allocated: Scalars::default(),
                        active,
                        suppressed: false,
                        filters: HashMap::new(),
                    },
                );
                self.roles.entry(role.to_owned()).or_default();
            }
        }
        self.enqueue(id);
    }

    /// Forgets a framework. Resources it still holds come back through [`Allocator::recover`].
    pub fn remove_framework(&mut self, id: &FrameworkId) {
        self.dequeue(id);
        if let Some(f) = self.frameworks.remove(id)
            && let Some(r) = self.roles.get_mut(&f.role)
        {
            r.allocated.sub(f.allocated);
        }
    }

    /// Marks a framework connected (offers flow) or disconnected (they stop).
    pub fn set_framework_active(&mut self, id: &FrameworkId, active: bool) {
        self.dequeue(id);
        if let Some(f) = self.frameworks.get_mut(id) {
            f.active = active;
        }
        self.enqueue(id);
    }

    /// Stops offers to a framework until it revives.
    pub fn suppress(&mut self, id: &FrameworkId) {
        self.dequeue(id);
        if let Some(f) = self.frameworks.get_mut(id) {
            f.suppressed = true;
        }
    }

    /// Clears a framework's filters and suppression.
    pub fn revive(&mut self, id: &FrameworkId) {
        self.dequeue(id);
        if let Some(f) = self.frameworks.get_mut(id) {
            f.suppressed = false;
            f.filters.clear();
        }
        self.enqueue(id);
    }

    /// Refuses `agent`'s resources to `framework` until `until`.
    pub fn filter(&mut self, framework: &FrameworkId, agent: &AgentId, until: Instant) {
        if let Some(f) = self.frameworks.get_mut(framework) {
            f.filters.insert(agent.clone(), until);
        }
    }

    /// Adds an agent, or updates its total resources keeping what is in use.
    pub fn add_agent(&mut self, id: &AgentId, total: &Resources) {
        match self.agents.get_mut(id) {
            Some(a) => {
                let used = a.total.minus(&a.available);
                self.total.sub(Scalars::of(&a.total));
                a.total = total.clone();
                a.available = total.minus(&used);
                a.active = true;
            }
            None => {
                self.agents
                    .insert(id.clone(), AgentSlot { total: total.clone(), available: total.clone(), active: true });
            }
        }
        self.total.add(Scalars::of(total));
        self.refresh_queues();
    }

    /// Stops offering an agent's resources (it disconnected or is unreachable); its tasks keep theirs.
    pub fn set_agent_active(&mut self, id: &AgentId, active: bool) {
        if let Some(a) = self.agents.get_mut(id) {
            a.active = active;
        }
    }

    /// Records resources in use by a task that the allocator did not hand out (one recovered after a
    /// master restart).
    pub fn track_used(&mut self, framework: &FrameworkId, agent: &AgentId, resources: &Resources) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.available.subtract(resources);
        }
        self.charge(framework, Scalars::of(resources), true);
    }

    /// Gives back resources a framework held on an agent: a declined or rescinded offer, an unused part of an
    /// accepted one, or a finished task.
    pub fn recover(&mut self, framework: &FrameworkId, agent: &AgentId, resources: &Resources) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.available.add(resources);
            if !a.total.contains(&a.available) {
                // Never more than the agent has, even if a caller recovers twice.
                let total = a.total.clone();
                a.available = Resources {
                    cpus: a.available.cpus.min(total.cpus),
                    mem: a.available.mem.min(total.mem),
                    disk: a.available.disk.min(total.disk),
                    ports: total.ports.difference(&total.ports.difference(&a.available.ports)),
                };
            }
        }
        self.charge(framework, Scalars::of(resources), false);
    }

    fn charge(&mut self, framework: &FrameworkId, amount: Scalars, add: bool) {
        self.dequeue(framework);
        if let Some(f) = self.frameworks.get_mut(framework) {
            let role = self.roles.entry(f.role.clone()).or_default();
            if add {
                f.allocated.add(amount);
                role.allocated.add(amount);
            } else {
                f.allocated.sub(amount);
                role.allocated.sub(amount);
            }
        }
        self.enqueue(framework);
    }

    /// Shares depend on the cluster total, so a change in it re-sorts every queue.
    fn refresh_queues(&mut self) {
        let ids: Vec<FrameworkId> = self.frameworks.keys().cloned().collect();
        for role in self.roles.values_mut() {
            role.queue.clear();
        }
        for id in ids {
            self.enqueue(&id);
        }
    }

    /// One allocation pass: hands each agent's unallocated resources to the framework DRF picks for it.
    pub fn allocate(&mut self, now: Instant) -> Vec<Allocation> {
        let mut out = Vec::new();
        if self.roles.values().all(|r| r.queue.is_empty()) {
            return out;
        }
        let mut role_order: BTreeSet<(Share, String)> = self
            .roles
            .iter()
            .filter(|(_, r)| !r.queue.is_empty())
            .map(|(n, _)| (self.role_share(n), n.clone()))
            .collect();
        let agent_ids: Vec<AgentId> =
            self.agents.iter().filter(|(_, a)| a.offerable()).map(|(id, _)| id.clone()).collect();
        for agent_id in agent_ids {
            let Some(chosen) = self.pick(&role_order, &agent_id, now) else { continue };
            let role = self.frameworks[&chosen].role.clone();
            let Some(agent) = self.agents.get_mut(&agent_id) else { continue };
            let resources = std::mem::take(&mut agent.available);
            role_order.remove(&(self.role_share(&role), role.clone()));
            self.charge(&chosen, Scalars::of(&resources), true);
            role_order.insert((self.role_share(&role), role));
            out.push(Allocation { framework_id: chosen, agent_id, resources });
        }
        out
    }

    fn pick(&self, role_order: &BTreeSet<(Share, String)>, agent: &AgentId, now: Instant) -> Option<FrameworkId> {
        for (_, role) in role_order {
            for (_, id) in &self.roles[role].queue {
                let f = &self.frameworks[id];
                if f.filters.get(agent).is_some_and(|until| now < *until) {
                    continue;
                }
                return Some(id.clone());
            }
        }
        None
    }

    /// What is not allocated on an agent.
    pub fn available(&self, agent: &AgentId) -> Option<&Resources> {
        self.agents.get(agent).map(|a| &a.available)
    }

    pub fn framework_share(&self, id: &FrameworkId) -> Option<FrameworkShare> {
        self.frameworks
            .get(id)
            .map(|f| FrameworkShare { dominant_share: f.allocated.share(&self.total), suppressed: f.suppressed })
    }

    /// Drops expired decline filters; call now and then so they do not accumulate.
    pub fn expire_filters(&mut self, now: Instant) {
        for f in self.frameworks.values_mut() {
            f.filters.retain(|_, until| now < *until);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn agent(n: usize) -> AgentId {
        AgentId::parse(format!("a{n}")).unwrap()
    }
    fn fw(n: &str) -> FrameworkId {
        FrameworkId::parse(n).unwrap()
    }
    fn res(s: &str) -> Resources {
        s.parse().unwrap()
    }

    fn cluster(agents: usize, per_agent: &str) -> Allocator {
        let mut a = Allocator::new();
        for i in 0..agents {
            a.add_agent(&agent(i), &res(per_agent));
        }
        a
    }

    fn count(allocs: &[Allocation], f: &str) -> usize {
        allocs.iter().filter(|a| a.framework_id.as_str() == f).count()
    }

    #[test]
    fn offers_everything_an_agent_has() {
        let mut a = cluster(1, "cpus:4;mem:1024;ports:[31000-31010]");
        a.add_framework(&fw("f"), "*", true);
        let allocs = a.allocate(Instant::now());
        assert_eq!(
            allocs,
            vec![Allocation {
                framework_id: fw("f"),
                agent_id: agent(0),
                resources: res("cpus:4;mem:1024;ports:[31000-31010]")
            }]
        );
        assert!(a.allocate(Instant::now()).is_empty(), "nothing is offered twice");
    }

    #[test]
    fn drf_spreads_agents_evenly_between_equal_frameworks() {
        let mut a = cluster(10, "cpus:1;mem:100");
        a.add_framework(&fw("f1"), "*", true);
        a.add_framework(&fw("f2"), "*", true);
        let allocs = a.allocate(Instant::now());
        assert_eq!(count(&allocs, "f1"), 5);
        assert_eq!(count(&allocs, "f2"), 5);
    }

    #[test]
    fn drf_favours_the_framework_with_the_lower_dominant_share() {
        let mut a = cluster(4, "cpus:1;mem:100");
        a.add_framework(&fw("big"), "*", true);
        a.add_framework(&fw("small"), "*", true);
        // "big" already uses half the cluster through recovered tasks filling agents 0 and 1.
        a.track_used(&fw("big"), &agent(0), &res("cpus:1;mem:100"));
        a.track_used(&fw("big"), &agent(1), &res("cpus:1;mem:100"));
        let allocs = a.allocate(Instant::now());
        // After agent 2, small's share (1/4) is still below big's (1/2), so it gets agent 3 too.
        assert_eq!(count(&allocs, "small"), 2);
        assert_eq!(count(&allocs, "big"), 0);
    }

    #[test]
    fn role_weights_scale_entitlement() {
        let mut a = cluster(9, "cpus:1;mem:100");
        a.set_weight("heavy", 2.0);
        a.add_framework(&fw("h"), "heavy", true);
        a.add_framework(&fw("l"), "light", true);
        let allocs = a.allocate(Instant::now());
        assert_eq!(count(&allocs, "h"), 6);
        assert_eq!(count(&allocs, "l"), 3);
    }

    #[test]
    fn decline_filters_hold_until_they_expire_or_revive() {
        let t0 = Instant::now();
        let mut a = cluster(1, "cpus:1;mem:100");
        a.add_framework(&fw("f"), "*", true);
        let offer = a.allocate(t0).remove(0);
        a.recover(&offer.framework_id, &offer.agent_id, &offer.resources);
        a.filter(&fw("f"), &agent(0), t0 + Duration::from_secs(5));
        assert!(a.allocate(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(a.allocate(t0 + Duration::from_secs(6)).len(), 1);
        let offer = a.allocate(t0).pop();
        assert!(offer.is_none());
    }

    #[test]
    fn a_filtered_agent_goes_to_the_next_framework() {
        let t0 = Instant::now();
        let mut a = cluster(1, "cpus:1;mem:100");
        a.add_framework(&fw("f1"), "*", true);
        a.add_framework(&fw("f2"), "*", true);
        a.filter(&fw("f1"), &agent(0), t0 + Duration::from_secs(5));
        a.filter(&fw("f2"), &agent(0), t0 + Duration::from_secs(5));
        assert!(a.allocate(t0).is_empty());
        a.revive(&fw("f2"));
        assert_eq!(a.allocate(t0)[0].framework_id, fw("f2"));
    }

    #[test]
    fn suppressed_and_inactive_frameworks_get_nothing() {
        let mut a = cluster(2, "cpus:1;mem:100");
        a.add_framework(&fw("s"), "*", true);
        a.add_framework(&fw("i"), "*", false);
        a.suppress(&fw("s"));
        assert!(a.allocate(Instant::now()).is_empty());
        a.revive(&fw("s"));
        assert_eq!(count(&a.allocate(Instant::now()), "s"), 2);
    }

    #[test]
    fn rescinded_offers_come_back() {
        let mut a = cluster(1, "cpus:2;mem:100;ports:[1-10]");
        a.add_framework(&fw("f"), "*", true);
        let offer = a.allocate(Instant::now()).remove(0);
        // The framework launches a task with part of the offer; the rest is recovered.
        let used = res("cpus:0.5;mem:10;ports:[3-3]");
        a.recover(&offer.framework_id, &offer.agent_id, &offer.resources.minus(&used));
        assert_eq!(a.available(&agent(0)).unwrap(), &res("cpus:1.5;mem:90;ports:[1-2,4-10]"));
        a.recover(&offer.framework_id, &offer.agent_id, &used);
        a.recover(&offer.framework_id, &offer.agent_id, &used);
        assert_eq!(
            a.available(&agent(0)).unwrap(),
            &res("cpus:2;mem:100;ports:[1-10]"),
            "recovering twice never exceeds the total"
        );
        assert_eq!(a.framework_share(&fw("f")).unwrap().dominant_share, 0.0);
    }

    #[test]
    fn inactive_agents_are_not_offered_and_leftovers_below_minimum_are_kept() {
        let mut a = cluster(2, "cpus:1;mem:100");
        a.add_framework(&fw("f"), "*", true);
        a.set_agent_active(&agent(0), false);
        a.track_used(&fw("f"), &agent(1), &res("cpus:0.995;mem:99"));
        assert!(a.allocate(Instant::now()).is_empty());
    }

    #[test]
    fn agent_resize_keeps_usage() {
        let mut a = cluster(1, "cpus:4;mem:100");
        a.add_framework(&fw("f"), "*", true);
        a.track_used(&fw("f"), &agent(0), &res("cpus:1;mem:10"));
        a.add_agent(&agent(0), &res("cpus:8;mem:100"));
        assert_eq!(a.available(&agent(0)).unwrap(), &res("cpus:7;mem:90"));
    }
}
