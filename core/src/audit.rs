//! The audit record: every write, allowed or not, with who asked, what, on what, and how it ended. Each
//! record goes to the log at once (target `keel::audit`) and to the store in batches, from a writer task,
//! so that a slow store never holds a request.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{AuditRecord, Store, StoreError};

/// Records waiting for the writer; past this, records reach the log only (and a warning says so).
const QUEUE: usize = 4096;
/// The most records written in one transaction.
const BATCH: usize = 256;
/// The records kept; older ones are deleted every [`TRIM_EVERY`] batches, so that a flood of refused
/// requests cannot fill the store.
const KEEP: i64 = 1_000_000;
const TRIM_EVERY: u64 = 100;

/// Where audit records go; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    writer: Option<mpsc::Sender<AuditRecord>>,
    store: Option<Store>,
}

impl Audit {
    /// Records to the log only.
    pub fn log_only() -> Audit {
        Audit::default()
    }

    /// Records to the log and to `store`, until `shutdown` (what is queued then is still written).
    pub fn start(store: Store, shutdown: CancellationToken) -> Audit {
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(QUEUE);
        let writer_store = store.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut batches = 0u64;
            loop {
                let first = tokio::select! {
                    r = rx.recv() => r,
                    _ = shutdown.cancelled() => { rx.close(); rx.recv().await }
                };
                let Some(first) = first else { return };
                batch.push(first);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                if let Err(e) = write(&writer_store, &batch).await {
                    warn!(error = %e, records = batch.len(), "cannot store audit records (they are in the log)");
                }
                batch.clear();
                batches += 1;
                if batches % TRIM_EVERY == 0
                    && let Err(e) = writer_store.trim_audit(KEEP).await
                {
                    warn!(error = %e, "cannot trim the audit record");
                }
            }
        });
        Audit { writer: Some(tx), store: Some(store) }
    }

    /// Records one write.
    pub fn record(&self, r: AuditRecord) {
        info!(target: "keel::audit", principal = %r.principal, action = %r.action, target = %r.target,
            outcome = %r.outcome, status = r.status, "audit");
        if let Some(tx) = &self.writer
            && tx.try_send(r).is_err()
        {
            warn!("audit queue full: a record reached the log only");
        }
    }

    /// The store records go to, if any.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// The newest records first (`limit` at most), older than `before` if given.
    pub async fn read(&self, limit: i64, before: Option<i64>) -> Result<Vec<AuditRecord>, StoreError> {
        match &self.store {
            Some(s) => s.audit(limit, before).await,
            None => Ok(Vec::new()),
        }
    }
}

async fn write(store: &Store, batch: &[AuditRecord]) -> Result<(), StoreError> {
    // One retry covers a connection that broke under the pool; more would only hold the queue.
    match store.append_audit(batch).await {
        Ok(()) => Ok(()),
        Err(_) => store.append_audit(batch).await,
    }
}
