//! The durable usage writer: one task batches records from many requests into one transaction
//! (group commit) and tells each waiter when its record is committed. Callers await `commit`
//! before they send the end of a response, so a response that reached its caller is metered.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::hooks::UsageObserver;
use crate::metrics::Metrics;
use crate::store::{Store, UsageRecord};

const MAX_BATCH: usize = 512;
const QUEUE: usize = 65_536;

struct Job {
    /// `None`: a flush marker, answered once everything queued before it is committed.
    record: Option<UsageRecord>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct UsageWriter {
    /// `None`: the durable usage log is switched off for a benchmark (`HUB_BENCH_DISABLE=usage_log`);
    /// records are dropped and `commit` answers at once.
    tx: Option<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for UsageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UsageWriter")
    }
}

impl UsageWriter {
    /// Starts the writer; the returned handle ends when every `UsageWriter` clone is dropped and
    /// the queue is drained.
    pub fn start(store: Arc<dyn Store>) -> (UsageWriter, JoinHandle<()>) {
        UsageWriter::start_with_observer(store, None)
    }

    /// Like `start`; `observer` is told of every batch after it is committed.
    pub fn start_with_observer(
        store: Arc<dyn Store>,
        observer: Option<Arc<dyn UsageObserver>>,
    ) -> (UsageWriter, JoinHandle<()>) {
        Self::start_metered(store, observer, None)
    }

    /// Like `start_with_observer`; `metrics` gets the costs of every committed batch before its
    /// waiters are answered (so `/metrics` includes a call whose caller saw its end).
    pub(crate) fn start_metered(
        store: Arc<dyn Store>,
        observer: Option<Arc<dyn UsageObserver>>,
        metrics: Option<Arc<Metrics>>,
    ) -> (UsageWriter, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(run(store, rx, observer, metrics));
        (UsageWriter { tx: Some(tx) }, handle)
    }

    /// A writer that writes nothing: only for measuring what the usage log costs
    /// (`HUB_BENCH_DISABLE=usage_log`, see `switches`).
    pub fn off() -> UsageWriter {
        UsageWriter { tx: None }
    }

    /// Queues a record and waits until it is committed.
    pub async fn commit(&self, record: UsageRecord) -> Result<(), String> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        let (done, wait) = oneshot::channel();
        tx.send(Job {
            record: Some(record),
            done: Some(done),
        })
        .await
        .map_err(|_| "usage writer stopped".to_string())?;
        wait.await.map_err(|_| "usage writer stopped".to_string())?
    }

    /// Waits until every record queued before this call is committed.
    pub async fn flush(&self) -> Result<(), String> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        let (done, wait) = oneshot::channel();
        tx.send(Job {
            record: None,
            done: Some(done),
        })
        .await
        .map_err(|_| "usage writer stopped".to_string())?;
        wait.await.map_err(|_| "usage writer stopped".to_string())?
    }

    /// Queues a record without waiting (for paths with nobody left to answer, such as a caller
    /// that disconnected). It is still written; if the queue is full the send waits on a task.
    pub fn submit(&self, record: UsageRecord) {
        let Some(tx) = &self.tx else {
            return;
        };
        let job = Job {
            record: Some(record),
            done: None,
        };
        if let Err(mpsc::error::TrySendError::Full(job)) = tx.try_send(job) {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(job).await;
            });
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    observer: Option<Arc<dyn UsageObserver>>,
    metrics: Option<Arc<Metrics>>,
) {
    // Grown by the batches that come (to at most MAX_BATCH), not allocated for the largest
    // up front: an idle hub should not hold ~0.5 MB for them.
    let mut batch: Vec<Job> = Vec::new();
    let mut records: Vec<UsageRecord> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        records.clear();
        // Moved, not cloned: a job only needs its record until it is in the batch.
        records.extend(batch.iter_mut().filter_map(|j| j.record.take()));
        let mut result = Ok(());
        for attempt in 0..5u32 {
            if records.is_empty() {
                break;
            }
            let (back, r) = store.insert_usage_owned(std::mem::take(&mut records)).await;
            records = back;
            match r {
                Ok(()) => {
                    result = Ok(());
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, attempt, records = records.len(), "usage batch write failed");
                    result = Err(e.to_string());
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
            }
        }
        if result.is_ok()
            && let Some(m) = &metrics
        {
            m.settled(&records);
        }
        for job in batch.drain(..) {
            if let Some(done) = job.done {
                let _ = done.send(result.clone());
            }
        }
        // After the waiters are answered: the observer is never on a caller's path.
        if result.is_ok()
            && !records.is_empty()
            && let Some(obs) = &observer
        {
            obs.committed(&records);
        }
    }
}
