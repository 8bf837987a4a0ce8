//! What the hot-path writer's group commits did: how many, how many calls each carried, how long
//! each took, and how many batches failed. Counted on the writer's thread once per commit (a few
//! relaxed atomic adds, never per call), read by `GET /metrics`. An operator sees from them
//! whether the durable usage log keeps up (commit time) and how well it batches (calls per
//! commit); the benchmarks read the same series.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the calls-per-commit buckets (usage records plus reservations in one commit).
pub const BATCH_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];
/// Upper bounds of the commit-time buckets, in microseconds.
pub const COMMIT_US_BUCKETS: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000,
];

/// The writer's counters (shared with the store handle that reads them).
#[derive(Debug, Default)]
pub struct CommitCounters {
    commits: AtomicU64,
    usage_records: AtomicU64,
    reservations: AtomicU64,
    failed_batches: AtomicU64,
    batch: [AtomicU64; BATCH_BUCKETS.len() + 1],
    commit_us: [AtomicU64; COMMIT_US_BUCKETS.len() + 1],
    commit_us_sum: AtomicU64,
    inline: AtomicU64,
}

/// A reading of [`CommitCounters`]. Bucket arrays are per bucket (not cumulative); the last
/// entry counts what is above the largest bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed.
    pub commits: u64,
    /// Usage records those commits wrote.
    pub usage_records: u64,
    /// Reservation requests those commits answered (held or refused).
    pub reservations: u64,
    /// Batches answered with an error (their transaction rolled back; nothing of them was written).
    pub failed_batches: u64,
    /// Commits by calls carried, per [`BATCH_BUCKETS`] bound, then above the last.
    pub batch: Vec<u64>,
    /// Commits by time from the transaction's start to its commit, per [`COMMIT_US_BUCKETS`]
    /// bound, then above the last.
    pub commit_us: Vec<u64>,
    /// The sum of those times, in microseconds.
    pub commit_us_sum: u64,
    /// Of `commits`, those a lone call's write (its reservation, or its usage record when it
    /// was the hub's only call in flight) made on its own thread, the store being idle (the
    /// rest are the writer thread's group commits).
    pub inline_commits: u64,
}

fn bucket(bounds: &[u64], v: u64) -> usize {
    bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len())
}

impl CommitCounters {
    /// One committed transaction carrying `usage_records` records and `reservations`
    /// reservation requests, `micros` from its start to its commit.
    pub fn committed(&self, usage_records: u64, reservations: u64, micros: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.usage_records
            .fetch_add(usage_records, Ordering::Relaxed);
        self.reservations.fetch_add(reservations, Ordering::Relaxed);
        let calls = usage_records.saturating_add(reservations);
        self.batch[bucket(&BATCH_BUCKETS, calls)].fetch_add(1, Ordering::Relaxed);
        self.commit_us[bucket(&COMMIT_US_BUCKETS, micros)].fetch_add(1, Ordering::Relaxed);
        self.commit_us_sum.fetch_add(micros, Ordering::Relaxed);
    }

    /// The commit just counted was made on its caller's thread.
    pub fn inline(&self) {
        self.inline.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` batches answered with an error.
    pub fn failed(&self, n: u64) {
        self.failed_batches.fetch_add(n, Ordering::Relaxed);
    }

    pub fn read(&self) -> CommitStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CommitStats {
            commits: load(&self.commits),
            usage_records: load(&self.usage_records),
            reservations: load(&self.reservations),
            failed_batches: load(&self.failed_batches),
            batch: self.batch.iter().map(load).collect(),
            commit_us: self.commit_us.iter().map(load).collect(),
            commit_us_sum: load(&self.commit_us_sum),
            inline_commits: load(&self.inline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_land_in_their_buckets() {
        let c = CommitCounters::default();
        c.committed(1, 0, 40); // 1 call, <= 50 µs
        c.committed(3, 2, 120); // 5 calls (<= 8), <= 250 µs
        c.committed(600, 0, 2_000_000); // above both last bounds
        c.failed(2);
        let s = c.read();
        assert_eq!(
            (s.commits, s.usage_records, s.reservations, s.failed_batches),
            (3, 604, 2, 2)
        );
        assert_eq!(s.batch, vec![1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s.commit_us, vec![1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s.commit_us_sum, 2_000_160);
    }
}
