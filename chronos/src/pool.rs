//! The cron framework's offer pool: which pending run goes on which held offer. A pure step: the actor
//! holds the offers and the runs; this decides, and the actor launches what it decided.

use keel_core::resources::Resources;

/// One held offer, as placement sees it.
#[derive(Clone, Debug)]
pub struct Held {
    pub resources: Resources,
    /// Whether its agent runs Docker tasks.
    pub docker: bool,
}

/// What one pending run's task needs.
#[derive(Clone, Debug)]
pub struct Need {
    pub resources: Resources,
    /// Whether it runs in a Docker container.
    pub docker: bool,
}

/// Places the needs, in their order, on the offers. Each goes on the first offer it fits, counting round
/// robin from the offer after the last one used, so that tasks spread over the agents rather than piling
/// onto the first, and each offer's launch is small enough to go out soon. A need that fits nowhere is left
/// for a later offer. Answers, for each offer, the indexes of the needs placed on it.
pub fn place(offers: &[Held], needs: &[Need]) -> Vec<Vec<usize>> {
    let n = offers.len();
    let mut left: Vec<Resources> = offers.iter().map(|o| o.resources.clone()).collect();
    let mut placed = vec![Vec::new(); n];
    let mut next = 0;
    for (k, need) in needs.iter().enumerate() {
        let fits = |i: &usize| left[*i].contains(&need.resources) && (!need.docker || offers[*i].docker);
        let Some(i) = (0..n).map(|j| (next + j) % n).find(fits) else { continue };
        next = i + 1;
        left[i].subtract(&need.resources);
        placed[i].push(k);
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::{Held, Need, place};

    fn held(r: &str, docker: bool) -> Held {
        Held { resources: r.parse().unwrap(), docker }
    }

    fn need(r: &str, docker: bool) -> Need {
        Need { resources: r.parse().unwrap(), docker }
    }

    #[test]
    fn runs_spread_over_the_offers_round_robin() {
        let offers = [held("cpus:4;mem:1024", false), held("cpus:4;mem:1024", false), held("cpus:4;mem:1024", false)];
        let needs = vec![need("cpus:1;mem:64", false); 5];
        assert_eq!(place(&offers, &needs), vec![vec![0, 3], vec![1, 4], vec![2]]);
    }

    #[test]
    fn what_fits_nowhere_waits_and_what_is_left_is_counted() {
        let offers = [held("cpus:1;mem:128", false), held("cpus:2;mem:128", false)];
        // The second offer takes the big one; the third fits only where room is left.
        let needs = [
            need("cpus:1;mem:64", false),
            need("cpus:2;mem:64", false),
            need("cpus:1;mem:64", false),
            need("cpus:8;mem:64", false),
        ];
        assert_eq!(place(&offers, &needs), vec![vec![0], vec![1]]);
        let needs = [need("cpus:0.5;mem:64", false), need("cpus:0.5;mem:64", false), need("cpus:0.5;mem:64", false)];
        assert_eq!(place(&offers, &needs), vec![vec![0, 2], vec![1]]);
    }

    #[test]
    fn docker_runs_go_only_where_docker_is() {
        let offers = [held("cpus:4;mem:1024", false), held("cpus:4;mem:1024", true)];
        let needs = [need("cpus:1;mem:64", true), need("cpus:1;mem:64", true), need("cpus:1;mem:64", false)];
        assert_eq!(place(&offers, &needs), vec![vec![2], vec![0, 1]]);
        assert_eq!(place(&offers[..1], &needs[..1]), vec![Vec::<usize>::new()]);
        assert!(place(&[], &needs).is_empty());
    }
}
