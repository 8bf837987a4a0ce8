//! The reservation writer: reservations are writes on the hot path, so one task batches the
//! reservations of many concurrent requests into one transaction (group commit) and answers each
//! waiter with its own outcome. Each reservation is still its own conditional UPDATE, so a batch
//! never lets one request spend another's credit.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{ReserveOutcome, ReserveReq};
use crate::store::Store;

const MAX_BATCH: usize = 512;
const QUEUE: usize = 65_536;

struct Job {
    req: ReserveReq,
    done: oneshot::Sender<Result<ReserveOutcome, String>>,
}

/// Handle to the reservation task. Cheap to clone.
#[derive(Clone)]
pub struct LedgerWriter {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerWriter")
    }
}

impl LedgerWriter {
    /// Starts the task; it ends when every handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> (LedgerWriter, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (LedgerWriter { tx }, tokio::spawn(run(store, rx)))
    }

    /// Holds a reservation; answers when it is committed (or refused).
    pub async fn reserve(&self, req: ReserveReq) -> Result<ReserveOutcome, String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job { req, done })
            .await
            .map_err(|_| "ledger writer stopped".to_string())?;
        wait.await
            .map_err(|_| "ledger writer stopped".to_string())?
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Moved, not cloned, into the store's batch: the jobs keep only their answer channels.
        let (reqs, dones): (Vec<ReserveReq>, Vec<_>) =
            batch.drain(..).map(|j| (j.req, j.done)).unzip();
        // No retry: a failed transaction changed nothing, and each caller gets a clean error
        // before any upstream traffic.
        let n = reqs.len();
        match store.reserve_owned(reqs).await {
            Ok(outcomes) if outcomes.len() == n => {
                for (done, out) in dones.into_iter().zip(outcomes) {
                    let _ = done.send(Ok(out));
                }
            }
            Ok(_) => {
                for done in dones {
                    let _ = done.send(Err("reservation batch answered wrongly".to_string()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, n, "reservation batch failed");
                for done in dones {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
    }
}
