//! The offers part of the master: every outstanding offer, indexed by agent and by framework, and the
//! sequence their ids come from. Bookkeeping only (no I/O, no clock of its own): the actor decides when an
//! offer is made, taken or rescinded; this keeps the three indexes in step, so that an offer is always
//! found from its id, its agent and its framework, or from none of them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::api::Offer;
use crate::ids::{AgentId, FrameworkId, OfferId};

pub(super) struct OfferBook {
    /// Prefix of this master incarnation's offer ids, so ids never repeat across restarts.
    epoch: String,
    next: u64,
    /// Each offer, and when it was made (for the offer timeout).
    outstanding: BTreeMap<OfferId, (Offer, Instant)>,
    by_agent: BTreeMap<AgentId, BTreeSet<OfferId>>,
    by_framework: BTreeMap<FrameworkId, BTreeSet<OfferId>>,
}

impl OfferBook {
    pub(super) fn new(epoch: String) -> OfferBook {
        OfferBook {
            epoch,
            next: 0,
            outstanding: BTreeMap::new(),
            by_agent: BTreeMap::new(),
            by_framework: BTreeMap::new(),
        }
    }

    /// Records `offer` (whose id is replaced by the next of this book's) as made at `now`; answers it.
    pub(super) fn make(&mut self, mut offer: Offer, now: Instant) -> Offer {
        self.next += 1;
        offer.id = OfferId::sequential(&self.epoch, self.next);
        self.by_agent.entry(offer.agent_id.clone()).or_default().insert(offer.id.clone());
        self.by_framework.entry(offer.framework_id.clone()).or_default().insert(offer.id.clone());
        self.outstanding.insert(offer.id.clone(), (offer.clone(), now));
        offer
    }

    pub(super) fn get(&self, id: &OfferId) -> Option<&Offer> {
        self.outstanding.get(id).map(|(o, _)| o)
    }

    /// Removes an offer (accepted, declined or rescinded) from every index.
    pub(super) fn take(&mut self, id: &OfferId) -> Option<Offer> {
        let (offer, _) = self.outstanding.remove(id)?;
        remove_from(&mut self.by_agent, &offer.agent_id, id);
        remove_from(&mut self.by_framework, &offer.framework_id, id);
        Some(offer)
    }

    pub(super) fn of_agent(&self, agent_id: &AgentId) -> Vec<OfferId> {
        self.by_agent.get(agent_id).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    pub(super) fn of_framework(&self, framework_id: &FrameworkId) -> Vec<OfferId> {
        self.by_framework.get(framework_id).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    pub(super) fn count_of_framework(&self, framework_id: &FrameworkId) -> usize {
        self.by_framework.get(framework_id).map_or(0, BTreeSet::len)
    }

    /// The offers made of one agent's resources.
    pub(super) fn on_agent(&self, agent_id: &AgentId) -> impl Iterator<Item = &Offer> {
        self.by_agent.get(agent_id).into_iter().flatten().filter_map(|id| self.get(id))
    }

    /// Every offer's id and when it was made, for the timers.
    pub(super) fn made_at(&self) -> impl Iterator<Item = (OfferId, Instant)> + '_ {
        self.outstanding.iter().map(|(id, (_, at))| (id.clone(), *at))
    }

    pub(super) fn len(&self) -> usize {
        self.outstanding.len()
    }
}

fn remove_from<K: Ord>(index: &mut BTreeMap<K, BTreeSet<OfferId>>, key: &K, id: &OfferId) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OfferBook;
    use crate::api::Offer;
    use crate::ids::{AgentId, FrameworkId, OfferId};

    fn offer(framework: &str, agent: &str) -> Offer {
        Offer {
            id: OfferId::sequential("x", 0),
            framework_id: FrameworkId::parse(framework).unwrap(),
            agent_id: AgentId::parse(agent).unwrap(),
            hostname: agent.into(),
            resources: "cpus:1;mem:64".parse().unwrap(),
            attributes: vec![],
            docker: false,
        }
    }

    #[test]
    fn an_offer_is_found_by_id_agent_and_framework_until_taken_from_all() {
        let now = std::time::Instant::now();
        let mut book = OfferBook::new("e".into());
        let a = book.make(offer("f1", "a1"), now);
        let b = book.make(offer("f1", "a2"), now);
        let c = book.make(offer("f2", "a1"), now);
        assert_eq!([&a.id, &b.id, &c.id].map(|i| i.to_string()), ["e-O1", "e-O2", "e-O3"]);
        let (f1, a1) = (FrameworkId::parse("f1").unwrap(), AgentId::parse("a1").unwrap());
        assert_eq!(book.of_agent(&a1), vec![a.id.clone(), c.id.clone()]);
        assert_eq!(book.of_framework(&f1), vec![a.id.clone(), b.id.clone()]);
        assert_eq!(book.on_agent(&a1).count(), 2);
        assert_eq!(book.take(&a.id).map(|o| o.agent_id), Some(a1.clone()));
        assert_eq!(book.take(&a.id), None, "an offer is taken once");
        assert_eq!(book.of_agent(&a1), vec![c.id.clone()]);
        assert_eq!(book.count_of_framework(&f1), 1);
        assert_eq!(book.len(), 2);
        book.take(&b.id);
        book.take(&c.id);
        assert!(book.by_agent.is_empty() && book.by_framework.is_empty() && book.made_at().next().is_none());
        // Ids keep counting after offers are gone: none is ever reused.
        assert_eq!(book.make(offer("f1", "a1"), now).id.to_string(), "e-O4");
    }
}
