//! Which parts of a process are alive, for `GET /health`. Each long-lived part (the master's actor, an
//! agent, a framework's actor) registers a probe under its name; `/health` answers 200 only while every
//! probe says the part runs, and names each part with its state either way. A part that has stopped is
//! never reported as fine, and the binary exits non-zero when one does, so that its supervisor restarts it
//! from the store (see `src/main.rs`).

use std::sync::{Arc, Mutex};

type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

/// The registry of probes; cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    probes: Arc<Mutex<Vec<(String, Probe)>>>,
}

impl Health {
    /// Registers `probe`, which answers whether the part called `name` still runs.
    pub fn register(&self, name: impl Into<String>, probe: impl Fn() -> bool + Send + Sync + 'static) {
        self.probes.lock().expect("health lock").push((name.into(), Arc::new(probe)));
    }

    /// Every registered part and whether it runs, in registration order.
    pub fn check(&self) -> Vec<(String, bool)> {
        let probes: Vec<(String, Probe)> = self.probes.lock().expect("health lock").clone();
        probes.into_iter().map(|(name, probe)| (name, probe())).collect()
    }

    /// `/health`'s answer: whether every part runs, and the body
    /// `{"status": "ok"|"failing", "components": [{"name", "state": "running"|"stopped"}]}`. `also` may
    /// lower a part's state with what the caller checked itself (the master's actor answering, say).
    pub fn report(&self, also: impl Fn(&str) -> bool) -> (bool, serde_json::Value) {
        let parts: Vec<(String, bool)> =
            self.check().into_iter().map(|(name, up)| (name.clone(), up && also(&name))).collect();
        let up = parts.iter().all(|(_, up)| *up);
        let components: Vec<serde_json::Value> = parts
            .iter()
            .map(|(name, up)| serde_json::json!({ "name": name, "state": if *up { "running" } else { "stopped" } }))
            .collect();
        (up, serde_json::json!({ "status": if up { "ok" } else { "failing" }, "components": components }))
    }

    /// The names of the parts that have stopped.
    pub fn stopped(&self) -> Vec<String> {
        self.check().into_iter().filter(|(_, up)| !up).map(|(name, _)| name).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn a_stopped_part_is_named() {
        let health = Health::default();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        health.register("marathon", move || flag.load(Ordering::SeqCst));
        health.register("chronos", || true);
        assert!(health.stopped().is_empty());
        up.store(false, Ordering::SeqCst);
        assert_eq!(health.stopped(), ["marathon"]);
        assert_eq!(health.check(), [("marathon".to_owned(), false), ("chronos".to_owned(), true)]);
    }
}
