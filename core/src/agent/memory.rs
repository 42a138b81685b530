//! The in-memory containerizer: tasks that run no process. It stands in for real work in benchmarks and
//! scale tests of the master, so that what is measured is Keel and not `fork`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::containerizer::{ContainerError, ContainerRecord, Containerizer, LaunchRequest, Termination};
use crate::ids::AgentId;

/// Simulated tasks: each "runs" for `run_for` and exits 0, or runs until killed when `run_for` is `None`.
pub struct MemoryContainerizer {
    run_for: Option<Duration>,
    kills: Mutex<HashMap<String, Arc<Notify>>>,
}

impl MemoryContainerizer {
    pub fn new(run_for: Option<Duration>) -> Self {
        MemoryContainerizer { run_for, kills: Mutex::new(HashMap::new()) }
    }

    fn notify(&self, id: &str) -> Arc<Notify> {
        self.kills.lock().expect("lock poisoned").entry(id.to_owned()).or_default().clone()
    }
}

#[async_trait]
impl Containerizer for MemoryContainerizer {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<ContainerRecord, ContainerError> {
        let id = format!("{}/{}", req.framework_id, req.task.id);
        self.notify(&id);
        Ok(ContainerRecord::Memory { id })
    }

    async fn wait(&self, record: &ContainerRecord) -> Termination {
        let ContainerRecord::Memory { id } = record else { return Termination::default() };
        let killed = self.notify(id);
        let result = match self.run_for {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep(d) => Termination::exited(0),
                _ = killed.notified() => Termination { signal: Some(15), ..Default::default() },
            },
            None => {
                killed.notified().await;
                Termination { signal: Some(15), ..Default::default() }
            }
        };
        self.kills.lock().expect("lock poisoned").remove(id);
        result
    }

    async fn kill(&self, record: &ContainerRecord, _grace: Duration) -> Result<(), ContainerError> {
        if let ContainerRecord::Memory { id } = record {
            self.notify(id).notify_one();
        }
        Ok(())
    }

    async fn recover(
        &self,
        _agent_id: Option<&AgentId>,
        _work_dir: &std::path::Path,
        _records: &[ContainerRecord],
    ) -> Result<(), ContainerError> {
        Ok(())
    }
}
