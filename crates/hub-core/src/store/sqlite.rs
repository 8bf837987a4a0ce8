//! Embedded SQLite store (rusqlite, WAL). One writer connection and one reader connection, used
//! from blocking threads. Other processes (the admin CLI) may write the same file concurrently;
//! SQLite's file locks serialise them, `busy_timeout` waits them out.
//!
//! Durability: WAL with `synchronous=NORMAL` survives a killed process (the WAL write has reached
//! the OS before the commit returns); `HUB_SQLITE_SYNC=full` adds an fsync per commit for power loss.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::commits::{CommitCounters, CommitStats};
use super::iam::{Change, IamStore};
use super::{
    ApiKeyRow, CallStatus, CredentialRow, ProviderRow, Store, StoreError, UsageRecord, UserRow,
};
use crate::auth::Role;
use crate::providers::ProviderKind;

mod change; // admin changes as statements in one transaction (with their audit entry)
mod iam; // IamStore: teams, key policies, credential updates, audit log

mod ledger; // LedgerStore for SQLite: reservations, settlement, grants, verify, prices, reports
mod stmts; // the per-call statements, held for a transaction
use stmts::{Q, Stmts};

/// Schema migrations, applied in order; `PRAGMA user_version` is the index of the last applied.
const MIGRATIONS: &[&str] = &[
    // 1: foundation.
    r#"
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO settings (key, value) VALUES ('config_version', '1');
CREATE TABLE providers (
    kind          TEXT PRIMARY KEY,
    base_url      TEXT,
    region        TEXT,
    enabled       INTEGER NOT NULL DEFAULT 1,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE credentials (
    id            TEXT PRIMARY KEY,
    provider      TEXT NOT NULL,
    name          TEXT NOT NULL,
    ciphertext    TEXT NOT NULL,
    masked        TEXT NOT NULL,
    weight        INTEGER NOT NULL DEFAULT 100,
    enabled       INTEGER NOT NULL DEFAULT 1,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX credentials_provider ON credentials (provider);
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    team_id       TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id),
    digest_hex    TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    name          TEXT NOT NULL,
    team_id       TEXT,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER
);
CREATE TABLE usage_records (
    id                 TEXT PRIMARY KEY,
    created_at_ms      INTEGER NOT NULL,
    client_request_id  TEXT,
    principal          TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    team_id            TEXT,
    app                TEXT,
    ingress            TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    requested_model    TEXT NOT NULL,
    provider           TEXT,
    credential         TEXT,
    upstream_model     TEXT,
    stream             INTEGER NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cache_read_tokens  INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    images             INTEGER NOT NULL,
    estimated          INTEGER NOT NULL,
    latency_ms         INTEGER NOT NULL,
    ttfb_ms            INTEGER,
    status             TEXT NOT NULL,
    http_status        INTEGER NOT NULL,
    error_class        TEXT,
    error_message      TEXT,
    provider_cost      TEXT,
    attempts           INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX usage_created ON usage_records (created_at_ms);
CREATE INDEX usage_user_created ON usage_records (user_id, created_at_ms);
CREATE INDEX usage_app_created ON usage_records (app, created_at_ms);
"#,
    // 2: teams, per-key policies, audit log (identity and administration, store/sqlite/iam.rs).
    r#"
CREATE TABLE teams (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE api_key_policies (
    key_id TEXT PRIMARY KEY REFERENCES api_keys (id),
    policy TEXT NOT NULL
);
CREATE TABLE audit_log (
    id            TEXT PRIMARY KEY,
    at_ms         INTEGER NOT NULL,
    actor_user_id TEXT NOT NULL,
    actor_key_id  TEXT,
    action        TEXT NOT NULL,
    target        TEXT NOT NULL,
    team_id       TEXT,
    before_json   TEXT,
    after_json    TEXT
);
CREATE INDEX audit_at ON audit_log (at_ms);
"#,
    // 3: billing (issue 5): price book, cost on every record, credit ledger, roll-ups.
    r#"
CREATE TABLE prices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    provider      TEXT NOT NULL,
    model         TEXT NOT NULL,
    model_type    TEXT NOT NULL,
    terms         TEXT NOT NULL,
    source        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX prices_key ON prices (provider, model, model_type, id);
ALTER TABLE usage_records ADD COLUMN billing_mode TEXT;
ALTER TABLE usage_records ADD COLUMN price_version INTEGER;
ALTER TABLE usage_records ADD COLUMN cost_units INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN provider_cost_units INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN account TEXT;
ALTER TABLE usage_records ADD COLUMN reserved_units INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN shortfall_units INTEGER NOT NULL DEFAULT 0;
CREATE TABLE ledger_accounts (
    id            TEXT PRIMARY KEY,
    available     INTEGER NOT NULL DEFAULT 0 CHECK (available >= 0),
    reserved      INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE ledger_entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    available_delta INTEGER NOT NULL,
    reserved_delta  INTEGER NOT NULL,
    charged         INTEGER NOT NULL DEFAULT 0,
    request_id      TEXT,
    idem_key        TEXT NOT NULL UNIQUE,
    expires_at_ms   INTEGER,
    note            TEXT,
    created_at_ms   INTEGER NOT NULL
);
CREATE INDEX ledger_entries_account ON ledger_entries (account, id);
CREATE INDEX ledger_entries_request ON ledger_entries (request_id);
CREATE INDEX ledger_entries_expiry ON ledger_entries (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
CREATE TABLE reservations (
    request_id    TEXT PRIMARY KEY,
    account       TEXT NOT NULL,
    amount        INTEGER NOT NULL CHECK (amount >= 0),
    instance      TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    settled_at_ms INTEGER
);
CREATE INDEX reservations_open ON reservations (status, created_at_ms);
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    heartbeat_ms INTEGER NOT NULL
);
CREATE TABLE usage_rollup (
    bucket_ms           INTEGER NOT NULL,
    user_id             TEXT NOT NULL,
    team_id             TEXT NOT NULL,
    app                 TEXT NOT NULL,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    calls               INTEGER NOT NULL,
    success_calls       INTEGER NOT NULL,
    prompt_tokens       INTEGER NOT NULL,
    completion_tokens   INTEGER NOT NULL,
    images              INTEGER NOT NULL,
    cost_units          INTEGER NOT NULL,
    provider_cost_units INTEGER NOT NULL,
    PRIMARY KEY (bucket_ms, user_id, team_id, app, provider, model)
) WITHOUT ROWID;
CREATE INDEX usage_rollup_user ON usage_rollup (user_id, bucket_ms);
CREATE TABLE usage_rollup_day (
    bucket_ms           INTEGER NOT NULL,
    user_id             TEXT NOT NULL,
    team_id             TEXT NOT NULL,
    app                 TEXT NOT NULL,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    calls               INTEGER NOT NULL,
    success_calls       INTEGER NOT NULL,
    prompt_tokens       INTEGER NOT NULL,
    completion_tokens   INTEGER NOT NULL,
    images              INTEGER NOT NULL,
    cost_units          INTEGER NOT NULL,
    provider_cost_units INTEGER NOT NULL,
    PRIMARY KEY (bucket_ms, user_id, team_id, app, provider, model)
) WITHOUT ROWID;
CREATE INDEX usage_account_created ON usage_records (account, created_at_ms);
"#,
    // 4: per-key spend budgets are seeded from a key's records of the current period.
    r#"
CREATE INDEX usage_principal_created ON usage_records (principal, created_at_ms);
"#,
    // 5: no query reads usage_records by account (reports use the roll-ups, exports filter by
    // time/user/team/app, verify joins by id); the index only cost a b-tree insert and a WAL page
    // per usage write (BENCHMARKS.md).
    r#"
DROP INDEX IF EXISTS usage_account_created;
"#,
    // 6: day roll-ups in the configured report time zones (issue 5); delivered-so-far of a
    // reservation's stream, written by the heartbeat (charged if the instance dies).
    r#"
CREATE TABLE usage_rollup_zone_day (
    zone                TEXT NOT NULL,
    day                 INTEGER NOT NULL,
    user_id             TEXT NOT NULL,
    team_id             TEXT NOT NULL,
    app                 TEXT NOT NULL,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    calls               INTEGER NOT NULL,
    success_calls       INTEGER NOT NULL,
    prompt_tokens       INTEGER NOT NULL,
    completion_tokens   INTEGER NOT NULL,
    images              INTEGER NOT NULL,
    cost_units          INTEGER NOT NULL,
    provider_cost_units INTEGER NOT NULL,
    PRIMARY KEY (zone, day, user_id, team_id, app, provider, model)
) WITHOUT ROWID;
CREATE TABLE report_zones (
    zone        TEXT PRIMARY KEY,
    built_at_ms INTEGER NOT NULL
);
ALTER TABLE reservations ADD COLUMN delivered TEXT;
"#,
    // 7: cheaper per-call ledger writes (issue 9; same columns, same rows). `reservations` is
    // keyed by its request id alone (WITHOUT ROWID: one b-tree instead of a table plus its key's
    // index), and the open-reservation index holds open ones only, so settling a reservation
    // removes an index entry instead of moving it. `ledger_entries` drops AUTOINCREMENT: entries
    // are never deleted, so the largest id + 1 is already never reused, and every insert no
    // longer updates `sqlite_sequence`.
    r#"
CREATE TABLE reservations_v7 (
    request_id    TEXT PRIMARY KEY,
    account       TEXT NOT NULL,
    amount        INTEGER NOT NULL CHECK (amount >= 0),
    instance      TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    settled_at_ms INTEGER,
    delivered     TEXT
) WITHOUT ROWID;
INSERT INTO reservations_v7 (request_id, account, amount, instance, status, created_at_ms, settled_at_ms, delivered)
  SELECT request_id, account, amount, instance, status, created_at_ms, settled_at_ms, delivered FROM reservations;
DROP TABLE reservations;
ALTER TABLE reservations_v7 RENAME TO reservations;
CREATE INDEX reservations_open ON reservations (created_at_ms) WHERE status = 'open';
CREATE TABLE ledger_entries_v7 (
    id              INTEGER PRIMARY KEY,
    account         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    available_delta INTEGER NOT NULL,
    reserved_delta  INTEGER NOT NULL,
    charged         INTEGER NOT NULL DEFAULT 0,
    request_id      TEXT,
    idem_key        TEXT NOT NULL UNIQUE,
    expires_at_ms   INTEGER,
    note            TEXT,
    created_at_ms   INTEGER NOT NULL
);
INSERT INTO ledger_entries_v7 (id, account, kind, available_delta, reserved_delta, charged, request_id, idem_key,
    expires_at_ms, note, created_at_ms)
  SELECT id, account, kind, available_delta, reserved_delta, charged, request_id, idem_key, expires_at_ms, note,
    created_at_ms FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_v7 RENAME TO ledger_entries;
CREATE INDEX ledger_entries_account ON ledger_entries (account, id);
CREATE INDEX ledger_entries_request ON ledger_entries (request_id);
CREATE INDEX ledger_entries_expiry ON ledger_entries (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
"#,
    // 8: no query looks ledger entries up by `request_id`: a call's entries are found by their
    // idempotency keys (`capture:<request id>`, ...), which the UNIQUE index already orders; this
    // index cost every reservation and every settlement one more b-tree insert and WAL page.
    r#"
DROP INDEX IF EXISTS ledger_entries_request;
"#,
    // 9: one per-user index on usage records, not two. A key belongs to one user, so a key's
    // records are among its user's: a key's spend in a period (its budget's seed, read when the
    // key is loaded or shown, never per call) is read through `usage_user_created` and filtered
    // by key. With many users every per-user index costs each call a b-tree page of its own (a
    // WAL frame at commit, a page to checkpoint): dropping this one cut the bytes the store
    // writes per call by a quarter (21.2 to 15.9 KB) and its CPU per call by 9-23 % (two sets of
    // alternating runs) at 1,000 users (BENCHMARKS.md, "The store alone"). The price: a key's
    // spend reads all of its user's records of the period, not just that key's.
    r#"
DROP INDEX IF EXISTS usage_principal_created;
"#,
    // 10: the per-app index holds the records that have an app. Calls from the OpenAI and
    // Anthropic SDKs name none (`x-aigne-hub-client-did` is AIGNE's), and their NULL entries only
    // cost each of those calls a b-tree insert; the per-app export asks `app = ?`, which a
    // partial index on `app IS NOT NULL` serves.
    r#"
DROP INDEX IF EXISTS usage_app_created;
CREATE INDEX usage_app_created ON usage_records (app, created_at_ms) WHERE app IS NOT NULL;
"#,
    // 11: a reservation row lives while its hold is open. Settling a call deletes its row (the
    // capture entry and the usage record, whose `reserved_units` is the hold, already say what
    // the settlement did), so `reservations` holds the calls in flight only, and needs no index
    // of open holds: reconcile reads it whole. A call's hold costs one b-tree insert and one
    // delete, not two inserts, an update and a delete, and the table no longer grows by a row
    // per call (BENCHMARKS.md, seventeenth session). Holds reconcile releases or captures (an
    // instance died) move to `reconciled_holds`, which records them as the `reconciled` rows
    // did; `status` and `settled_at_ms` stay as columns, always `open` and NULL.
    r#"
CREATE TABLE reconciled_holds (
    request_id       TEXT PRIMARY KEY,
    account          TEXT NOT NULL,
    amount           INTEGER NOT NULL,
    instance         TEXT NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    reconciled_at_ms INTEGER NOT NULL,
    outcome          TEXT NOT NULL CHECK (outcome IN ('released', 'captured'))
) WITHOUT ROWID;
INSERT INTO reconciled_holds (request_id, account, amount, instance, created_at_ms, reconciled_at_ms, outcome)
  SELECT r.request_id, r.account, r.amount, r.instance, r.created_at_ms, COALESCE(r.settled_at_ms, r.created_at_ms),
    CASE WHEN EXISTS (SELECT 1 FROM ledger_entries e WHERE e.idem_key = 'capture:' || r.request_id)
      THEN 'captured' ELSE 'released' END
  FROM reservations r WHERE r.status = 'reconciled';
DELETE FROM reservations WHERE status <> 'open';
DROP INDEX IF EXISTS reservations_open;
"#,
    // 12: a stream's progress is two parts. Its record (who, what, at which price: ~1 KB of JSON)
    // goes to `hold_records` at the first heartbeat that finds it has delivered something, once;
    // each later beat writes only what moved (tokens, latency, cost: `progress`, ~150 bytes) into
    // its reservation row. Every beat used to rewrite the whole record into `reservations.delivered`:
    // a `WITHOUT ROWID` b-tree, whose rows are its keys, so rows of ~1 KB left four to a page and
    // spilled to overflow pages, which every key comparison on the way to a row read back. With
    // 5,000 streams open that was a quarter of the hub's CPU (BENCHMARKS.md, twenty-third and
    // twenty-fourth sessions), and every call's hold and claim walks the same b-tree.
    // `hold_records` is a rowid table: its key's index holds the ids only, and a record is read
    // by reconcile alone.
    r#"
CREATE TABLE hold_records (
    request_id TEXT PRIMARY KEY,
    record     TEXT NOT NULL
);
INSERT INTO hold_records (request_id, record)
  SELECT request_id, delivered FROM reservations WHERE delivered IS NOT NULL;
ALTER TABLE reservations DROP COLUMN delivered;
ALTER TABLE reservations ADD COLUMN progress TEXT;
"#,
];

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    /// Non-UTC report zones whose day roll-ups this store keeps (`set_report_zones`); read by
    /// the usage writer's transaction and by reports.
    report_zones: Arc<parking_lot::RwLock<Arc<Vec<crate::ledger::report::ReportZone>>>>,
    /// The hot-path writes (usage records, reservations), group-committed together by one thread.
    hot: tokio::sync::mpsc::UnboundedSender<HotOp>,
    /// What decides whether a write commits on its caller's thread (`submit`).
    pace: Arc<HotPace>,
    /// What that thread's commits did (`commit_stats`).
    commits: Arc<CommitCounters>,
    /// Stops the checkpoint thread when the last handle is dropped.
    _checkpointer: Arc<Checkpointer>,
}

/// A batch of hot-path writes, from the usage writer or the reservation writer.
enum HotOp {
    Usage {
        records: Vec<UsageRecord>,
        /// Answered with the records, handed back to the usage writer.
        done: tokio::sync::oneshot::Sender<(Vec<UsageRecord>, Result<(), StoreError>)>,
    },
    Reserve {
        reqs: Vec<crate::ledger::ReserveReq>,
        done: tokio::sync::oneshot::Sender<Result<Vec<crate::ledger::ReserveOutcome>, StoreError>>,
    },
}

/// A lone call's write commits on its caller's thread only when the store is idle: nothing is
/// queued for the writer thread and no commit ended in the last [`LONE_GAP`] (`submit`). Under
/// load commits follow each other closely (the next batch is queued while one commits), so
/// writes go to the thread and are group-committed.
///
/// Nor when the next commit may sync the disk, which takes milliseconds and would hold up every
/// other task of the caller's tokio worker: when the WAL is to start again from its beginning
/// (a checkpoint copied all of it, and the commit that starts it again syncs its new header), or
/// when it is within [`CHECKPOINT_MARGIN_FRAMES`] of the writer's own checkpoint (the commit that
/// crosses it copies the WAL and syncs both files). Those commits go to the writer thread.
struct HotPace {
    epoch: std::time::Instant,
    /// How long the store must have been quiet ([`LONE_GAP`]).
    gap_ns: u64,
    /// When the last commit ended (nanoseconds since `epoch`; `NEVER` before the first).
    last_end_ns: AtomicU64,
    /// Ops sent to the writer thread and not yet taken off its queue.
    queued: AtomicUsize,
    /// The hub's calls in flight (`Store::set_calls_in_flight`), if a hub set it.
    calls: std::sync::OnceLock<Arc<AtomicUsize>>,
    /// Frames in the WAL after the writer's last commit (its WAL hook, `count_wal_frames`).
    wal_frames: AtomicU32,
    /// Times the WAL has started again from its beginning (the WAL hook).
    restarts: AtomicU64,
    /// A checkpoint copied the whole WAL while `restarts` was this, so the next write
    /// transaction starts it again and syncs its header, unless `restarts` has moved past it
    /// since (`NEVER`: no checkpoint left it so).
    restart_due_at: AtomicU64,
    /// Frames in the WAL from which a commit may cross the writer's checkpoint threshold.
    inline_frames: u32,
}

const NEVER: u64 = u64::MAX;

/// How close (in WAL frames) to the writer's checkpoint threshold a commit stops being made on a
/// caller's thread: more than any one call's commit adds (~15 frames for a record with its
/// capture and roll-ups). At concurrency 1 the WAL fills to the threshold and starts again
/// (ARCHITECTURE.md, durability), so this share of its commits, ~1 %, goes to the writer thread.
const CHECKPOINT_MARGIN_FRAMES: u32 = 256;

/// How long the store must have been quiet for a lone call's write to commit on its caller's
/// thread. At concurrency 1 the gap between two commits is a round trip to the caller or the
/// upstream; under load the next commit starts at once.
const LONE_GAP: std::time::Duration = std::time::Duration::from_micros(20);

impl HotPace {
    /// `writer_frames`: the writer's checkpoint threshold (`CheckpointPolicy::writer_frames`).
    fn new(gap: std::time::Duration, writer_frames: u32) -> HotPace {
        HotPace {
            epoch: std::time::Instant::now(),
            gap_ns: u64::try_from(gap.as_nanos()).unwrap_or(u64::MAX),
            last_end_ns: AtomicU64::new(NEVER),
            queued: AtomicUsize::new(0),
            calls: std::sync::OnceLock::new(),
            wal_frames: AtomicU32::new(0),
            restarts: AtomicU64::new(0),
            restart_due_at: AtomicU64::new(NEVER),
            inline_frames: writer_frames.saturating_sub(CHECKPOINT_MARGIN_FRAMES),
        }
    }

    /// Whether the next commit may sync the WAL or the database file (see the type's doc).
    fn sync_ahead(&self) -> bool {
        let due = self.restart_due_at.load(Ordering::Acquire);
        (due != NEVER && self.restarts.load(Ordering::Acquire) <= due)
            || self.wal_frames.load(Ordering::Acquire) >= self.inline_frames
    }

    /// After a checkpoint that began when `restarts` was `before` and saw `log` frames in the
    /// WAL, `copied` of them copied: whether the WAL is now copied whole, which makes the next
    /// write transaction start it again. Not when frames were committed while it ran (the WAL
    /// holds more than it saw): then the WAL goes on, and under a steady stream of commits
    /// that is every checkpoint. Before the writer's first commit (the WAL a previous process
    /// left) its count says nothing, so a whole copy is taken at its word; a look that finds
    /// frames landed sets the flag right again.
    fn checkpointed(&self, before: u64, log: i64, copied: i64) {
        let frames = i64::from(self.wal_frames.load(Ordering::Acquire));
        let whole = log > 0 && copied == log && (frames == log || frames == 0);
        let due = if whole { before } else { NEVER };
        self.restart_due_at.store(due, Ordering::Release);
    }

    /// Whether the hub has no call in flight but (at most) the one writing.
    fn alone(&self) -> bool {
        self.calls
            .get()
            .is_some_and(|c| c.load(Ordering::Acquire) <= 1)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn committed(&self) {
        self.last_end_ns.store(self.now_ns(), Ordering::Release);
    }

    fn idle(&self) -> bool {
        if self.queued.load(Ordering::Acquire) != 0 || self.sync_ahead() {
            return false;
        }
        let last = self.last_end_ns.load(Ordering::Acquire);
        last == NEVER || self.now_ns().saturating_sub(last) >= self.gap_ns
    }
}

impl HotOp {
    /// Calls this op writes for: its records, or its reservations.
    fn calls(&self) -> usize {
        match self {
            HotOp::Usage { records, .. } => records.len(),
            HotOp::Reserve { reqs, .. } => reqs.len(),
        }
    }
}

/// The thread that writes the per-call rows. Every call writes twice (its reservation before
/// dispatch, its usage record with the capture after), and on one core the two group-commit
/// writers' batches used to take turns, each a transaction of its own with a handful of calls and
/// a blocking-pool hop. This thread takes whatever both writers have queued, runs it in ONE
/// transaction and commits once: fewer, larger commits, and the pages they share (the
/// accounts row, index edges, roll-up rows) are written to the WAL once per commit.
///
/// The writers' tasks are also what makes the batches large. Calls queueing their reservations
/// here directly (one op each, no task between) was measured and refused: the first call's op
/// wakes this thread before the other calls of the moment have queued theirs, so rounds shrink
/// (WAL bytes per call 4.5 → 5.2 KB) and CPU per call grows 10-15 % (`hub-bench store`, c=64,
/// BENCHMARKS.md, fourteenth session). The writer task runs after the request tasks that woke
/// it, so its batch already holds them.
///
/// A lone call's write on an idle store skips this thread (`SqliteStore::submit`).
fn run_hot_writer(
    conn: Arc<Mutex<Connection>>,
    zones: Arc<parking_lot::RwLock<Arc<Vec<crate::ledger::report::ReportZone>>>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<HotOp>,
    counters: Arc<CommitCounters>,
    pace: Arc<HotPace>,
) {
    let mut ops: Vec<HotOp> = Vec::with_capacity(64);
    while let Some(first) = rx.blocking_recv() {
        ops.push(first);
        // Woken by the first batch, let whoever else is runnable on this core go first: when
        // the hub shares one core with this thread, the request tasks queue more work meanwhile
        // and the commit carries it (measured: ~10 % more requests/s at concurrency 64 on one
        // core). With nothing else runnable, or a core of its own, this returns at once.
        std::thread::yield_now();
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        // Taken off the queue: a lone call's write may commit on its caller's thread again once
        // these are in (`SqliteStore::submit`).
        pace.queued.fetch_sub(ops.len(), Ordering::AcqRel);
        let mut guard = conn.lock();
        commit_ops(&mut guard, &mut ops, &zones, &counters, &pace);
        drop(guard);
    }
}

/// Commits `ops` in one transaction on `conn` (the writer connection, locked by the caller) and
/// answers each; `ops` is empty afterwards. Whether a transaction was committed (not when every
/// op failed).
fn commit_ops(
    conn: &mut Connection,
    ops: &mut Vec<HotOp>,
    zones: &parking_lot::RwLock<Arc<Vec<crate::ledger::report::ReportZone>>>,
    counters: &CommitCounters,
    pace: &HotPace,
) -> bool {
    // Read under the writer lock: `set_report_zones` changes it under the same lock.
    let zones = zones.read().clone();
    let mut committed = false;
    // A batch that fails is answered with its own error and the round runs again without it
    // (the failed transaction changed nothing), so one bad batch never fails another.
    loop {
        let started = std::time::Instant::now();
        match run_round(conn, ops, &zones) {
            Round::Committed(results) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                let (records, reservations) =
                    ops.iter().fold((0u64, 0u64), |(u, r), op| match op {
                        HotOp::Usage { records, .. } => (u + records.len() as u64, r),
                        HotOp::Reserve { reqs, .. } => (u, r + reqs.len() as u64),
                    });
                counters.committed(records, reservations, micros);
                for (op, r) in ops.drain(..).zip(results) {
                    answer(op, Ok(r));
                }
                committed = true;
                break;
            }
            Round::Failed(i, e) => {
                counters.failed(1);
                answer(ops.remove(i), Err(e));
                if ops.is_empty() {
                    break;
                }
            }
            Round::CommitFailed(e) => {
                counters.failed(ops.len() as u64);
                for op in ops.drain(..) {
                    answer(op, Err(e.clone()));
                }
                break;
            }
        }
    }
    pace.committed();
    committed
}

enum Round {
    Committed(Vec<HotDone>),
    /// Batch `i` failed; nothing was committed.
    Failed(usize, StoreError),
    CommitFailed(StoreError),
}

fn run_round(
    conn: &mut Connection,
    ops: &[HotOp],
    zones: &[crate::ledger::report::ReportZone],
) -> Round {
    // IMMEDIATE: reservations and settlements read balances they then write (another process
    // may write the file).
    let tx = match HotTx::begin(conn) {
        Ok(tx) => tx,
        Err(e) => return Round::CommitFailed(e),
    };
    let mut results = Vec::with_capacity(ops.len());
    let mut stmts = Stmts::new(tx.conn);
    for (i, op) in ops.iter().enumerate() {
        let r = match op {
            HotOp::Usage { records, .. } => {
                insert_usage_in_tx(&mut stmts, records, zones).map(|()| HotDone::Usage)
            }
            HotOp::Reserve { reqs, .. } => {
                ledger::reserve_in_tx(&mut stmts, reqs).map(HotDone::Reserve)
            }
        };
        match r {
            Ok(d) => results.push(d),
            Err(e) => return Round::Failed(i, e), // dropping `tx` rolls it back
        }
    }
    drop(stmts);
    match tx.commit() {
        Ok(()) => Round::Committed(results),
        Err(e) => Round::CommitFailed(e),
    }
}

/// The hot writer's transaction: `BEGIN IMMEDIATE`, `COMMIT` and `ROLLBACK` run as cached
/// prepared statements. rusqlite's `Transaction` runs them through `execute_batch`, which parses
/// the SQL text again for every transaction (~15k instructions per call at concurrency 1, where
/// every call has two transactions of its own). Dropped without `commit`, it rolls back.
struct HotTx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> HotTx<'c> {
    fn begin(conn: &'c Connection) -> Result<HotTx<'c>, StoreError> {
        run_cached(conn, "BEGIN IMMEDIATE")?;
        Ok(HotTx { conn, open: true })
    }

    fn commit(mut self) -> Result<(), StoreError> {
        run_cached(self.conn, "COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for HotTx<'_> {
    fn drop(&mut self) {
        // A failed COMMIT (SQLITE_BUSY, I/O) can leave the transaction open: end it, so the
        // next round begins on a clean connection.
        if self.open
            && !self.conn.is_autocommit()
            && let Err(e) = run_cached(self.conn, "ROLLBACK")
        {
            tracing::error!(error = %e, "rolling back a hot-path transaction failed");
        }
    }
}

fn run_cached(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut st| st.raw_execute())
        .map(drop)
        .map_err(db_err)
}

fn answer(op: HotOp, r: Result<HotDone, StoreError>) {
    match op {
        HotOp::Usage { records, done } => {
            let _ = done.send((records, r.map(drop)));
        }
        HotOp::Reserve { done, .. } => {
            let _ = done.send(r.and_then(|d| match d {
                HotDone::Reserve(out) => Ok(out),
                HotDone::Usage => Err(StoreError::Db("hot write answered wrongly".into())),
            }));
        }
    }
}

enum HotDone {
    Usage,
    Reserve(Vec<crate::ledger::ReserveOutcome>),
}

/// How often the checkpoint thread looks at the WAL, unless `HUB_SQLITE_CHECKPOINT_MS` says
/// otherwise. Short on purpose: under a steady stream of commits the WAL starts again only
/// through the writer's own checkpoint (`WRITER_AUTOCHECKPOINT_PAGES`), whose sync of the WAL runs
/// inside a commit and flushes everything written since this thread's last sync, so the interval
/// bounds that commit's wait. Measured at concurrency 1 (BENCHMARKS.md, sixteenth session): p99
/// 1.4-2.6 ms at 20 ms, 6.3-7.6 ms at 100 ms, 27-32 ms at 500 ms, set by the commits that carry
/// the writer's checkpoint (its sync of the WAL took 6-32 ms at 500 ms). Throughput at concurrency
/// 64 does not depend on it (fifteenth session).
const CHECKPOINT_EVERY_MS: u64 = 20;
/// At a look, the checkpoint thread copies the WAL once this many frames have been committed
/// since its last checkpoint (~4 MB of 4 KB pages; `HUB_SQLITE_CHECKPOINT_FRAMES`, 1 = at every
/// look with anything new, as before the sixteenth session), or `CHECKPOINT_AT_LEAST_EVERY_MS`
/// after its last checkpoint. A checkpoint that copies the whole WAL makes the next commit start
/// it again and sync its new header inside that commit (SQLite's guard against a torn restart):
/// copying at every look made a lightly loaded hub's commits carry up to 50 such syncs a second
/// (17-23 a second at ~1,000 calls a second; ~2 with this threshold, BENCHMARKS.md, sixteenth
/// session). Under a steady stream of commits the threshold is crossed at every look, as before.
const CHECKPOINT_PENDING_FRAMES: u64 = 1_000;
/// The longest the checkpoint thread goes without a checkpoint: it bounds the WAL a quiet hub
/// keeps (and how much a power loss can take under `synchronous=NORMAL`, whose WAL is synced at
/// checkpoints; `HUB_SQLITE_SYNC=full` syncs every commit), and copies frames other processes
/// (the admin CLI) committed, which the writer's count does not see.
const CHECKPOINT_AT_LEAST_EVERY_MS: u64 = 1_000;
/// The writer's own checkpoint (frames of WAL, ~80 MB; `count_wal_frames`). SQLite starts the WAL
/// again from its beginning only when every frame in it has been copied and a write transaction
/// then begins. With pauses between commits the checkpoint thread gets there. Under a steady
/// stream of commits it never does: frames land while it syncs. Then this is how the WAL starts
/// again: the commit that crosses it copies the few frames left and syncs the WAL and the
/// database file, ~2 ms at concurrency 1 with the 20 ms look, two to four times a second at
/// ~3,500 calls a second (BENCHMARKS.md, sixteenth session). Higher would make those commits
/// rarer and the WAL larger.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 20_000;

/// Checkpoints the WAL on its own thread and connection. SQLite's automatic checkpoint runs
/// inside the commit that crosses its threshold (1,000 pages): that commit copies every page and
/// syncs the WAL and the database file, and the request waiting for it pays milliseconds. Here
/// the copy and the syncs happen beside the writer (a PASSIVE checkpoint takes no write lock),
/// and a page written by many commits in a window is copied once.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// `written`: frames the writer has committed since the store opened (its WAL hook counts
    /// them, `count_wal_frames`). `pace` learns when a checkpoint leaves the WAL to start again.
    fn start(
        path: &Path,
        policy: CheckpointPolicy,
        written: Arc<AtomicU64>,
        pace: Arc<HotPace>,
    ) -> Result<Checkpointer, StoreError> {
        let conn = open_conn(path)?;
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Frames written when the last checkpoint began, and when it began. The first
                // look checkpoints whatever an earlier process left in the WAL.
                let mut seen = 0u64;
                let mut last: Option<std::time::Instant> = None;
                // Every look, and once more when the store closes (the sender dropped).
                loop {
                    let closing = !matches!(
                        rx.recv_timeout(policy.every),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    let now = written.load(Ordering::Acquire);
                    let due = closing
                        || now.saturating_sub(seen) >= policy.pending_frames
                        || last.is_none_or(|t| t.elapsed() >= policy.at_least_every);
                    if due {
                        seen = now;
                        last = Some(std::time::Instant::now());
                        checkpoint_passive(&conn, &pace);
                    }
                    if closing {
                        break;
                    }
                }
            })
            .map_err(|e| StoreError::Db(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// One look's checkpoint: copies what it can of the WAL into the database file without taking the
/// write lock, and tells `pace` whether it copied all of it (then the next commit starts the WAL
/// again and syncs its header).
fn checkpoint_passive(conn: &Connection, pace: &HotPace) {
    let before = pace.restarts.load(Ordering::Acquire);
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    }) {
        Ok((log, copied)) => pace.checkpointed(before, log, copied),
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
    }
}

/// When the checkpoint thread copies the WAL, and when the writer does it itself.
#[derive(Clone, Copy, Debug)]
struct CheckpointPolicy {
    /// How often the checkpoint thread looks (`CHECKPOINT_EVERY_MS`).
    every: std::time::Duration,
    /// Frames committed since the last checkpoint that make a look checkpoint
    /// (`CHECKPOINT_PENDING_FRAMES`).
    pending_frames: u64,
    /// The longest between two checkpoints (`CHECKPOINT_AT_LEAST_EVERY_MS`).
    at_least_every: std::time::Duration,
    /// Frames in the WAL at which the committing writer checkpoints (`WRITER_AUTOCHECKPOINT_PAGES`).
    writer_frames: u32,
}

impl CheckpointPolicy {
    fn from_env() -> CheckpointPolicy {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        CheckpointPolicy {
            every: std::time::Duration::from_millis(
                var("HUB_SQLITE_CHECKPOINT_MS").unwrap_or(CHECKPOINT_EVERY_MS),
            ),
            pending_frames: var("HUB_SQLITE_CHECKPOINT_FRAMES")
                .unwrap_or(CHECKPOINT_PENDING_FRAMES),
            at_least_every: std::time::Duration::from_millis(CHECKPOINT_AT_LEAST_EVERY_MS),
            writer_frames: WRITER_AUTOCHECKPOINT_PAGES,
        }
    }
}

/// Replaces SQLite's automatic checkpoint on the writer's connection with a WAL hook that does
/// the same (a PASSIVE checkpoint by the committing connection once the WAL holds
/// `writer_frames` frames; an error is logged, not returned, as SQLite's own hook ignores it: the
/// commit has happened) and also counts the frames each commit adds into `written`, for the
/// checkpoint thread, and keeps `pace`'s view of the WAL (its frames, its restarts, a restart
/// due after its own checkpoint).
fn count_wal_frames(
    conn: &mut Connection,
    writer_frames: u32,
    written: Arc<AtomicU64>,
    pace: Arc<HotPace>,
) -> Result<(), StoreError> {
    let threshold = i32::try_from(writer_frames).unwrap_or(i32::MAX);
    let mut after_last = 0i32;
    conn.wal_hook(Some(
        move |wal: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
            // Frames in the WAL after this commit; fewer than after the last one: it started again.
            let added = if frames >= after_last {
                frames - after_last
            } else {
                pace.restarts.fetch_add(1, Ordering::AcqRel);
                frames
            };
            after_last = frames;
            written.fetch_add(u64::try_from(added).unwrap_or(0), Ordering::Release);
            pace.wal_frames
                .store(u32::try_from(frames).unwrap_or(0), Ordering::Release);
            if frames >= threshold {
                let before = pace.restarts.load(Ordering::Acquire);
                match wal.checkpoint_v2(rusqlite::wal::CheckpointMode::PASSIVE) {
                    Ok((log, copied)) => pace.checkpointed(before, log.into(), copied.into()),
                    Err(e) => tracing::warn!(error = %e, "WAL checkpoint by the writer failed"),
                }
            }
            Ok(())
        },
    ))
    .map_err(db_err)
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn db_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(code, msg) = &e
        && code.code == rusqlite::ErrorCode::ConstraintViolation
    {
        return StoreError::Conflict(msg.clone().unwrap_or_else(|| "constraint violated".into()));
    }
    StoreError::Db(e.to_string())
}

/// Every connection opens through `hub-wal` (crates/hub-sqlite-vfs): SQLite's own VFS, except
/// that a commit's WAL frames reach the file in two writes instead of two per page (~1 µs of
/// kernel time each; a call's two commits write ~25 pages at concurrency 1). The files are
/// SQLite's format byte for byte. `HUB_SQLITE_WAL_COALESCE=off` opens with SQLite's VFS as it is.
fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let coalesce = !matches!(
        std::env::var("HUB_SQLITE_WAL_COALESCE").ok().as_deref(),
        Some("off" | "0" | "false")
    );
    let conn = if coalesce {
        let vfs = hub_sqlite_vfs::register().map_err(StoreError::Db)?;
        Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs)
    } else {
        Connection::open(path)
    }
    .map_err(db_err)?;
    let sync = match std::env::var("HUB_SQLITE_SYNC").ok().as_deref() {
        Some("full") => "FULL",
        _ => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;"
    ))
    .map_err(db_err)?;
    // The hot path alone names up to 18 statements (`Q`), held together for a transaction and
    // returned at its end, besides `BEGIN`/`COMMIT` and the admin writes'. rusqlite's default of
    // 16 would evict some at every round and compile them again.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(conn)
}

/// Prepared statements each connection keeps (see `open_conn`).
const STATEMENT_CACHE_CAPACITY: usize = 64;

impl SqliteStore {
    /// Opens (creating and migrating) the database file.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, CheckpointPolicy::from_env())
    }

    fn open_with(path: &Path, checkpoints: CheckpointPolicy) -> Result<SqliteStore, StoreError> {
        let mut writer = open_conn(path)?;
        let written = Arc::new(AtomicU64::new(0));
        let pace = Arc::new(HotPace::new(LONE_GAP, checkpoints.writer_frames));
        // Before the migrations, so that the hook knows the frames they leave in the WAL (and so
        // sees the WAL start again after them).
        count_wal_frames(
            &mut writer,
            checkpoints.writer_frames,
            written.clone(),
            pace.clone(),
        )?;
        migrate(&mut writer)?;
        let reader = open_conn(path)?;
        let writer = Arc::new(Mutex::new(writer));
        let report_zones: Arc<parking_lot::RwLock<Arc<Vec<crate::ledger::report::ReportZone>>>> =
            Arc::default();
        let (hot, hot_rx) = tokio::sync::mpsc::unbounded_channel();
        let commits = Arc::new(CommitCounters::default());
        {
            let (conn, zones, counters, pace) = (
                writer.clone(),
                report_zones.clone(),
                commits.clone(),
                pace.clone(),
            );
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || run_hot_writer(conn, zones, hot_rx, counters, pace))
                .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        }
        let checkpointer = Checkpointer::start(path, checkpoints, written, pace.clone())?;
        Ok(SqliteStore {
            writer,
            reader: Arc::new(Mutex::new(reader)),
            report_zones,
            hot,
            pace,
            commits,
            _checkpointer: Arc::new(checkpointer),
        })
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.writer.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|e| StoreError::Db(format!("blocking task failed: {e}")))?
    }

    /// Commits a write (usage records, reservations) and waits for its answer, which comes after
    /// the commit.
    ///
    /// Writes go to the writer thread, which commits them with whatever else is queued, except
    /// a lone call's write on an idle store (`submit`).
    async fn hot_write<T>(
        &self,
        op: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, StoreError>>) -> HotOp,
    ) -> Result<T, StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.submit(op(done)).is_err() {
            return Err(writer_stopped());
        }
        wait.await.map_err(|_| writer_stopped())?
    }

    /// Commits `op` here or queues it for the writer thread; it is answered through its own
    /// channel either way. Gives it back if the writer thread has stopped.
    ///
    /// One call's reservation, with nothing queued for the thread, no commit in the last
    /// [`LONE_GAP`] and the writer connection free, commits here, on the caller's thread, in the
    /// same transaction code. It stands between the call and its upstream (time to first byte,
    /// latency at low load), and handing it to the thread and back costs two thread switches,
    /// each a sleep and a wake-up, which on a virtual CPU cost more than the transaction: at
    /// concurrency 1 a billed call made 4.3 switches instead of 6.3 and used 159 instead of
    /// 171 µs of CPU (BENCHMARKS.md, twentieth session). A hold is a small transaction (its
    /// row and the account's), so committing it alone costs little.
    ///
    /// A usage record commits here only when its call is the only one in flight in the hub
    /// (`HotPace::alone`, the hub's count): then nothing could join its batch anyway, and
    /// concurrency 1 drops to the floor's 2 switches a call. Committed here whenever the store
    /// was idle, records made a hub under moderate load (64 calls to a 60 ms upstream, ~1,000
    /// calls/s) commit 2.3 calls a transaction instead of 6.4 and use a quarter more CPU a
    /// call: a record with its capture and roll-ups is most of the pages a call writes, and
    /// those batch. Without the gap, a loaded hub committed every call's write alone: the
    /// writers' tasks found one call queued at each turn, and CPU per call at concurrency 64
    /// more than doubled (40 → 91 µs).
    ///
    /// A commit that may sync the disk (`HotPace::sync_ahead`) goes to the thread whatever the
    /// op: a sync takes milliseconds, and on a caller's thread it would stall every task of that
    /// tokio worker.
    fn submit(&self, op: HotOp) -> Result<(), HotOp> {
        let lone = op.calls() == 1
            && match &op {
                HotOp::Reserve { .. } => true,
                HotOp::Usage { .. } => self.pace.alone(),
            };
        if lone
            && self.pace.idle()
            && let Some(mut conn) = self.writer.try_lock()
        {
            let zones = &self.report_zones;
            if commit_ops(&mut conn, &mut vec![op], zones, &self.commits, &self.pace) {
                self.commits.inline();
            }
            return Ok(());
        }
        self.pace.queued.fetch_add(1, Ordering::AcqRel);
        self.hot
            .send(op)
            .map_err(|tokio::sync::mpsc::error::SendError(op)| {
                self.pace.queued.fetch_sub(1, Ordering::AcqRel);
                op
            })
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&conn.lock()))
            .await
            .map_err(|e| StoreError::Db(format!("blocking task failed: {e}")))?
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Db("the writer thread stopped".into())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.execute_batch(sql).map_err(db_err)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

/// Inserts records (a replayed id is skipped), settles each in the same transaction, and adds
/// them to the roll-ups (summed per batch).
fn insert_usage_in_tx(
    stmts: &mut Stmts<'_>,
    records: &[UsageRecord],
    zones: &[crate::ledger::report::ReportZone],
) -> Result<(), StoreError> {
    let mut rollups = ledger::RollupBatch::default();
    let mut deltas = ledger::AccountDeltas::default();
    for r in records {
        let inserted = stmts
            .get(Q::InsertUsage)?
            .execute(params![
                r.id,
                r.created_at_ms,
                r.client_request_id,
                r.principal,
                r.user_id,
                r.team_id,
                r.app,
                r.ingress,
                r.endpoint,
                r.requested_model,
                r.provider,
                r.credential,
                r.upstream_model,
                r.stream as i64,
                r.prompt_tokens as i64,
                r.completion_tokens as i64,
                r.cache_read_tokens as i64,
                r.cache_write_tokens as i64,
                r.reasoning_tokens as i64,
                r.images as i64,
                r.estimated as i64,
                r.latency_ms as i64,
                r.ttfb_ms.map(|v| v as i64),
                r.status.as_str(),
                r.http_status as i64,
                r.error_class,
                r.error_message,
                r.provider_cost,
                r.attempts as i64,
                r.billing.mode,
                r.billing.price_version,
                r.billing.cost_units,
                r.billing.provider_cost_units,
                r.billing.account,
                r.billing.reserved_units,
            ])
            .map_err(db_err)?;
        // A replayed record (same id) settles nothing and counts nothing again.
        if inserted == 1 {
            ledger::settle_in_tx(stmts, r, &mut deltas)?;
            rollups.add(r, zones);
        }
    }
    deltas.apply(stmts)?;
    rollups.write(stmts, zones)?;
    Ok(())
}

fn bump_config(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE settings SET value = CAST(value AS INTEGER) + 1 WHERE key = 'config_version'",
        [],
    )
    .map_err(db_err)?;
    Ok(())
}

fn kind_of(s: &str) -> rusqlite::Result<ProviderKind> {
    ProviderKind::from_name(s).ok_or_else(|| {
        rusqlite::Error::InvalidColumnType(0, s.to_string(), rusqlite::types::Type::Text)
    })
}

fn usage_from_row(r: &Row<'_>) -> rusqlite::Result<UsageRecord> {
    Ok(UsageRecord {
        id: r.get(0)?,
        created_at_ms: r.get(1)?,
        client_request_id: r.get(2)?,
        principal: r.get(3)?,
        user_id: r.get(4)?,
        team_id: r.get(5)?,
        app: r.get(6)?,
        ingress: r.get(7)?,
        endpoint: r.get(8)?,
        requested_model: r.get(9)?,
        provider: r.get(10)?,
        credential: r.get(11)?,
        upstream_model: r.get(12)?,
        stream: r.get::<_, i64>(13)? != 0,
        prompt_tokens: r.get::<_, i64>(14)? as u64,
        completion_tokens: r.get::<_, i64>(15)? as u64,
        cache_read_tokens: r.get::<_, i64>(16)? as u64,
        cache_write_tokens: r.get::<_, i64>(17)? as u64,
        reasoning_tokens: r.get::<_, i64>(18)? as u64,
        images: r.get::<_, i64>(19)? as u64,
        estimated: r.get::<_, i64>(20)? != 0,
        latency_ms: r.get::<_, i64>(21)? as u64,
        ttfb_ms: r.get::<_, Option<i64>>(22)?.map(|v| v as u64),
        status: CallStatus::parse(&r.get::<_, String>(23)?),
        http_status: r.get::<_, i64>(24)? as u16,
        error_class: r.get(25)?,
        error_message: r.get(26)?,
        provider_cost: r.get(27)?,
        attempts: r.get::<_, i64>(28)? as u32,
        billing: super::Billing {
            mode: r.get(29)?,
            price_version: r.get(30)?,
            cost_units: r.get(31)?,
            provider_cost_units: r.get(32)?,
            account: r.get(33)?,
            reserved_units: r.get(34)?,
            shortfall_units: r.get(35)?,
        },
    })
}

/// Columns read by `usage_from_row`, in order.
pub(crate) const USAGE_COLUMNS: &str = "id, created_at_ms, client_request_id, principal, user_id, team_id, app, ingress, endpoint,
    requested_model, provider, credential, upstream_model, stream, prompt_tokens, completion_tokens,
    cache_read_tokens, cache_write_tokens, reasoning_tokens, images, estimated, latency_ms, ttfb_ms,
    status, http_status, error_class, error_message, provider_cost, attempts,
    billing_mode, price_version, cost_units, provider_cost_units, account, reserved_units, shortfall_units";

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
            .await
    }

    async fn config_version(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT CAST(value AS INTEGER) FROM settings WHERE key = 'config_version'",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)
        })
        .await
    }

    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.read(move |c| {
            c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.commit_audited(
            Change::SetSetting {
                key: key.to_string(),
                value: value.to_string(),
            },
            None,
        )
        .await
        .map(drop)
    }

    async fn upsert_provider(&self, row: &ProviderRow) -> Result<(), StoreError> {
        self.commit_audited(Change::UpsertProvider(row.clone()), None)
            .await
            .map(drop)
    }

    async fn list_providers(&self) -> Result<Vec<ProviderRow>, StoreError> {
        self.read(|c| {
            let mut st = c
                .prepare("SELECT kind, base_url, region, enabled, created_at_ms FROM providers ORDER BY kind")
                .map_err(db_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok(ProviderRow {
                        kind: kind_of(&r.get::<_, String>(0)?)?,
                        base_url: r.get(1)?,
                        region: r.get(2)?,
                        enabled: r.get::<_, i64>(3)? != 0,
                        created_at_ms: r.get(4)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn delete_provider(&self, kind: ProviderKind) -> Result<(), StoreError> {
        self.commit_audited(Change::DeleteProvider(kind), None)
            .await
            .map(drop)
    }

    async fn insert_credential(&self, row: &CredentialRow) -> Result<(), StoreError> {
        self.commit_audited(Change::InsertCredential(row.clone()), None)
            .await
            .map(drop)
    }

    async fn list_credentials(&self) -> Result<Vec<CredentialRow>, StoreError> {
        self.read(|c| {
            let mut st = c
                .prepare(
                    "SELECT id, provider, name, ciphertext, masked, weight, enabled, created_at_ms FROM credentials ORDER BY created_at_ms, id",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok(CredentialRow {
                        id: r.get(0)?,
                        provider: kind_of(&r.get::<_, String>(1)?)?,
                        name: r.get(2)?,
                        ciphertext: r.get(3)?,
                        masked: r.get(4)?,
                        weight: r.get::<_, i64>(5)?.max(0) as u32,
                        enabled: r.get::<_, i64>(6)? != 0,
                        created_at_ms: r.get(7)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn delete_credential(&self, id: &str) -> Result<(), StoreError> {
        self.commit_audited(Change::DeleteCredential(id.to_string()), None)
            .await
            .map(drop)
    }

    async fn replace_ciphertexts(&self, updates: &[(String, String)]) -> Result<(), StoreError> {
        let updates = updates.to_vec();
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            for (id, ct) in &updates {
                tx.execute(
                    "UPDATE credentials SET ciphertext = ?2 WHERE id = ?1",
                    params![id, ct],
                )
                .map_err(db_err)?;
            }
            bump_config(&tx)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn insert_user(&self, row: &UserRow) -> Result<(), StoreError> {
        self.commit_audited(Change::InsertUser(row.clone()), None)
            .await
            .map(drop)
    }

    async fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.read(|c| {
            let mut st = c
                .prepare("SELECT id, name, role, team_id, created_at_ms FROM users ORDER BY created_at_ms, id")
                .map_err(db_err)?;
            let rows = st.query_map([], user_row).map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn get_user(&self, id: &str) -> Result<Option<UserRow>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, role, team_id, created_at_ms FROM users WHERE id = ?1",
                params![id],
                user_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn insert_api_key(&self, row: &ApiKeyRow) -> Result<(), StoreError> {
        let row = row.clone();
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            insert_api_key_row(&tx, &row)?;
            bump_config(&tx)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        self.read(|c| {
            let mut st = c
                .prepare(
                    "SELECT id, user_id, digest_hex, prefix, name, team_id, created_at_ms, expires_at_ms, revoked_at_ms
                     FROM api_keys ORDER BY created_at_ms, id",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok(ApiKeyRow {
                        id: r.get(0)?,
                        user_id: r.get(1)?,
                        digest_hex: r.get(2)?,
                        prefix: r.get(3)?,
                        name: r.get(4)?,
                        team_id: r.get(5)?,
                        created_at_ms: r.get(6)?,
                        expires_at_ms: r.get(7)?,
                        revoked_at_ms: r.get(8)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn revoke_api_key(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        self.commit_audited(
            Change::RevokeApiKey {
                id: id.to_string(),
                at_ms,
            },
            None,
        )
        .await
        .map(drop)
    }

    fn set_calls_in_flight(&self, calls: Arc<AtomicUsize>) {
        // A second hub over the same store keeps the first one's count.
        let _ = self.pace.calls.set(calls);
    }

    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        self.insert_usage_owned(records.to_vec()).await.1
    }

    async fn insert_usage_owned(
        &self,
        records: Vec<UsageRecord>,
    ) -> (Vec<UsageRecord>, Result<(), StoreError>) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if let Err(op) = self.submit(HotOp::Usage { records, done }) {
            let records = match op {
                HotOp::Usage { records, .. } => records,
                HotOp::Reserve { .. } => Vec::new(),
            };
            return (records, Err(writer_stopped()));
        }
        // The writer thread answers every op it takes; without an answer it stopped, and the
        // records went with it (a caller that retries has nothing left to retry with).
        wait.await
            .unwrap_or_else(|_| (Vec::new(), Err(writer_stopped())))
    }

    async fn list_usage(&self, limit: u32) -> Result<Vec<UsageRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {USAGE_COLUMNS} FROM usage_records ORDER BY created_at_ms DESC, rowid DESC LIMIT ?1"
                ))
                .map_err(db_err)?;
            let rows = st.query_map([limit], usage_from_row).map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    fn commit_stats(&self) -> Option<CommitStats> {
        Some(self.commits.read())
    }
}

/// Inserts one `api_keys` row (the key's policy, if any, is the caller's to write).
pub(super) fn insert_api_key_row(
    tx: &rusqlite::Transaction<'_>,
    row: &ApiKeyRow,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO api_keys (id, user_id, digest_hex, prefix, name, team_id, created_at_ms, expires_at_ms, revoked_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            row.id,
            row.user_id,
            row.digest_hex,
            row.prefix,
            row.name,
            row.team_id,
            row.created_at_ms,
            row.expires_at_ms,
            row.revoked_at_ms
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Maps a `users` row (id, name, role, team_id, created_at_ms).
fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    let role: String = r.get(2)?;
    Ok(UserRow {
        id: r.get(0)?,
        name: r.get(1)?,
        role: Role::parse(&role).unwrap_or(Role::Guest),
        team_id: r.get(3)?,
        created_at_ms: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            created_at_ms: 1,
            client_request_id: None,
            principal: "k".into(),
            user_id: "u".into(),
            team_id: None,
            app: Some("app".into()),
            ingress: "openai".into(),
            endpoint: "chat".into(),
            requested_model: "openai/gpt-4o-mini".into(),
            provider: Some("openai".into()),
            credential: Some("c".into()),
            upstream_model: Some("gpt-4o-mini".into()),
            stream: true,
            prompt_tokens: 10,
            completion_tokens: 5,
            cache_read_tokens: 2,
            cache_write_tokens: 0,
            reasoning_tokens: 1,
            images: 0,
            estimated: false,
            latency_ms: 12,
            ttfb_ms: Some(3),
            status: CallStatus::Success,
            http_status: 200,
            error_class: None,
            error_message: None,
            provider_cost: Some("0.95".into()),
            attempts: 1,
            billing: crate::store::Billing::default(),
        }
    }

    #[tokio::test]
    async fn usage_round_trips_and_is_idempotent() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        store.insert_usage(&[record("a"), record("b")]).await?;
        // Replaying a record changes nothing.
        let mut changed = record("a");
        changed.prompt_tokens = 999;
        store.insert_usage(&[changed]).await?;
        let rows = store.list_usage(10).await?;
        assert_eq!(rows.len(), 2);
        let a = rows.iter().find(|r| r.id == "a");
        assert_eq!(a, Some(&record("a")));
        Ok(())
    }

    fn index_names(c: &Connection, table: &str) -> Result<Vec<String>, StoreError> {
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 ORDER BY name")
            .map_err(db_err)?;
        st.query_map([table], |r| r.get::<_, String>(0))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)
    }

    /// The planner's steps for `sql`, joined with "; ".
    fn query_plan(c: &Connection, sql: &str) -> Result<String, StoreError> {
        let mut st = c
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .map_err(db_err)?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(3))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(rows.join("; "))
    }

    /// Every usage write pays one b-tree insert (and a WAL page at commit) per index on
    /// usage_records, so each index must have a reader: newest-first lists (`usage_created`),
    /// per-user and per-app exports (`usage_user_created`, `usage_app_created`, which holds only
    /// records with an app; migration 10), and a key's budget period, read through its user's
    /// index (`usage_user_created`; migration 9). The planner shows them in use, and no index
    /// beyond them exists.
    #[tokio::test]
    async fn usage_indexes_are_the_ones_queries_use() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        let c = store.reader.lock();
        assert_eq!(
            index_names(&c, "usage_records")?,
            [
                "sqlite_autoindex_usage_records_1",
                "usage_app_created",
                "usage_created",
                "usage_user_created"
            ]
        );
        let plan = |sql: &str| query_plan(&c, sql);
        let newest =
            plan("SELECT id FROM usage_records ORDER BY created_at_ms DESC, rowid DESC LIMIT 50")?;
        assert!(newest.contains("usage_created"), "{newest}");
        let by_user = plan(
            "SELECT id FROM usage_records WHERE created_at_ms >= 1 AND created_at_ms < 2 AND user_id = 'u' ORDER BY created_at_ms, rowid",
        )?;
        assert!(by_user.contains("usage_user_created"), "{by_user}");
        let by_app = plan(
            "SELECT id FROM usage_records WHERE created_at_ms >= 1 AND created_at_ms < 2 AND app = 'a' ORDER BY created_at_ms, rowid",
        )?;
        assert!(by_app.contains("usage_app_created"), "{by_app}");
        // Records without an app (the OpenAI and Anthropic SDKs' calls) stay out of it.
        let app_index: String = c
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'usage_app_created'",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        assert!(app_index.ends_with("WHERE app IS NOT NULL"), "{app_index}");
        let by_key = plan(
            &iam::KEY_SPEND_SQL
                .replace("?1", "'k'")
                .replace("?2", "1")
                .replace("?3", "2"),
        )?;
        assert!(
            by_key.contains("USING INDEX usage_user_created"),
            "{by_key}"
        );
        Ok(())
    }

    /// `reconcile` reads every open hold at every heartbeat, under the writer's lock: the live
    /// instances are read once for the whole scan, not looked up for each hold.
    #[test]
    fn the_stale_hold_scan_reads_the_live_instances_once() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        let c = store.reader.lock();
        let sql = ledger::STALE_HOLDS_SQL
            .replace("?1", "'me'")
            .replace("?2", "5000")
            .replace("?3", "1");
        let plan = query_plan(&c, &sql)?;
        assert!(
            plan.starts_with("SCAN r") && plan.contains("LIST SUBQUERY"),
            "{plan}"
        );
        assert!(!plan.contains("SEARCH"), "{plan}");
        Ok(())
    }

    /// A call of user `u` billed in credits: it reserved 100 and cost `cost`.
    fn billed(id: &str, cost: i64) -> UsageRecord {
        let mut r = record(id);
        r.user_id = "u".into();
        r.billing = crate::store::Billing {
            mode: Some("credits".into()),
            cost_units: cost,
            account: Some("user:u".into()),
            reserved_units: 100,
            ..Default::default()
        };
        r
    }

    /// `user:u`'s (available, reserved), and that `verify` passes with these (open holds,
    /// captures).
    async fn assert_ledger(
        store: &SqliteStore,
        balance: (i64, i64),
        open_and_captures: (u64, u64),
    ) -> Result<(), StoreError> {
        use crate::ledger::LedgerStore as _;
        let b = store
            .balance("user:u")
            .await?
            .ok_or_else(|| StoreError::NotFound("account".into()))?;
        assert_eq!((b.available, b.reserved), balance);
        let rep = store.verify(10, 1_000_000).await?;
        assert!(rep.violations.is_empty(), "{rep:#?}");
        assert_eq!((rep.open_reservations, rep.captures), open_and_captures);
        Ok(())
    }

    /// A grant of `amount` to `user:u` under `idem_key`.
    fn grant(idem_key: &str, amount: i64) -> crate::ledger::GrantReq {
        crate::ledger::GrantReq {
            account: "user:u".into(),
            kind: crate::ledger::GrantKind::Grant,
            amount,
            idem_key: idem_key.into(),
            expires_at_ms: None,
            note: None,
            now_ms: 1,
            starter: None,
        }
    }

    /// A hold of 100 on `user:u` for request `id`.
    fn hold(id: &str) -> crate::ledger::ReserveReq {
        crate::ledger::ReserveReq {
            request_id: id.into(),
            account: "user:u".into(),
            amount: 100,
            instance: "me".into(),
            now_ms: 1,
            starter: None,
        }
    }

    /// The first column of a query's rows, read through the store's reader.
    fn strings(store: &SqliteStore, sql: &str) -> Result<Vec<String>, StoreError> {
        let c = store.reader.lock();
        let mut st = c.prepare(sql).map_err(db_err)?;
        let rows = st.query_map([], |r| r.get(0)).map_err(db_err)?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(db_err)
    }

    /// A reservation row lives while its hold is open (migration 11): settling a call deletes
    /// it, so the table `reconcile` reads whole at every heartbeat holds the calls in flight
    /// only, and no index of open holds is kept.
    #[tokio::test]
    async fn reservations_hold_the_calls_in_flight_only() -> Result<(), StoreError> {
        use crate::ledger::{LedgerStore as _, ReserveOutcome};
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        store.grant(&grant("g", 1_000)).await?;
        let held = store.reserve(&[hold("a"), hold("b"), hold("c")]).await?;
        assert_eq!(held, vec![ReserveOutcome::Reserved; 3]);
        // A second hold under an open one's id is refused.
        assert_eq!(
            store.reserve(&[hold("a")]).await?,
            vec![ReserveOutcome::Duplicate]
        );
        store
            .insert_usage(&[billed("a", 30), billed("b", 30)])
            .await?;
        assert_eq!(
            strings(&store, "SELECT request_id FROM reservations")?,
            vec!["c".to_string()]
        );
        let indexes = strings(
            &store,
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'reservations'
               AND name NOT LIKE 'sqlite_autoindex%'",
        )?;
        assert!(indexes.is_empty(), "no index of open holds: {indexes:?}");
        assert_ledger(&store, (1_000 - 60 - 100, 100), (1, 2)).await
    }

    /// The writer counts what its group commits carried (`commit_stats`, `GET /metrics`), and a
    /// batch that fails is counted as failed, not as written.
    #[tokio::test]
    async fn the_writer_counts_its_commits_and_failed_batches() -> Result<(), StoreError> {
        use crate::ledger::LedgerStore as _;
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        let stats = || store.commit_stats().unwrap_or_default();
        assert_eq!(stats().commits, 0);
        store.grant(&grant("g", 1_000)).await?;
        store.reserve(&[hold("a"), hold("b"), hold("c")]).await?;
        store
            .insert_usage(&[billed("a", 30), billed("b", 30)])
            .await?;
        let s = stats();
        assert_eq!(
            (s.usage_records, s.reservations, s.failed_batches),
            (2, 3, 0)
        );
        // Each commit is in one bucket of each histogram, and the calls add up.
        assert!((1..=2).contains(&s.commits), "{s:?}");
        assert_eq!(s.batch.iter().sum::<u64>(), s.commits);
        assert_eq!(s.commit_us.iter().sum::<u64>(), s.commits);
        assert!(s.commit_us_sum > 0, "{s:?}");
        // A record whose capture key is taken fails its batch: nothing of it is written.
        store.grant(&grant("capture:z", 1)).await?;
        let failed = store.insert_usage(&[billed("z", 10)]).await;
        assert!(matches!(failed, Err(StoreError::Conflict(_))), "{failed:?}");
        let after = stats();
        assert_eq!(
            (after.commits, after.usage_records, after.failed_batches),
            (s.commits, 2, 1)
        );
        assert_eq!(
            strings(&store, "SELECT id FROM usage_records WHERE id = 'z'")?.len(),
            0
        );
        Ok(())
    }

    /// When a write may commit on its caller's thread: nothing queued for the writer thread, and
    /// no commit in the last gap (a store that never committed is idle).
    #[test]
    fn the_store_is_idle_when_nothing_is_queued_and_no_commit_is_recent() {
        let long = HotPace::new(std::time::Duration::from_secs(3_600), u32::MAX);
        assert!(long.idle(), "a store that never committed is idle");
        long.committed();
        assert!(!long.idle(), "a commit within the gap");
        let none = HotPace::new(std::time::Duration::ZERO, 5_000);
        none.committed();
        assert!(none.idle(), "the gap has passed");
        none.queued.fetch_add(1, Ordering::AcqRel);
        assert!(!none.idle(), "an op is queued for the writer thread");
        none.queued.fetch_sub(1, Ordering::AcqRel);
        assert!(none.idle());
        // A checkpoint that copied the whole WAL: the next commit starts it again (and syncs),
        // until the WAL hook has seen it start again.
        none.wal_frames.store(40, Ordering::Release);
        none.checkpointed(0, 40, 40);
        assert!(!none.idle(), "the WAL is to start again");
        none.restarts.fetch_add(1, Ordering::AcqRel);
        assert!(none.idle(), "it started again");
        none.checkpointed(1, 40, 38);
        assert!(none.idle(), "frames left to copy: the WAL goes on");
        none.wal_frames.store(46, Ordering::Release);
        none.checkpointed(1, 40, 40);
        assert!(
            none.idle(),
            "frames committed while the checkpoint ran: the WAL goes on"
        );
        none.wal_frames.store(0, Ordering::Release);
        none.checkpointed(1, 0, 0);
        assert!(none.idle(), "an empty WAL does not start again");
        none.checkpointed(1, 40, 40);
        assert!(
            !none.idle(),
            "a WAL left by another process, copied before the writer's first commit"
        );
        none.checkpointed(1, 40, 39);
        assert!(none.idle(), "the next look sets it right");
        // Near the writer's own checkpoint (5,000 frames here).
        none.wal_frames
            .store(5_000 - CHECKPOINT_MARGIN_FRAMES - 1, Ordering::Release);
        assert!(none.idle());
        none.wal_frames
            .store(5_000 - CHECKPOINT_MARGIN_FRAMES, Ordering::Release);
        assert!(
            !none.idle(),
            "the next commits may cross the writer's checkpoint"
        );
    }

    /// A lone reservation on an idle store commits on the caller's thread, and so does a usage
    /// record when the hub counts its call as the only one in flight; other records and batches
    /// go to the writer thread; both leave the same rows and ledger.
    #[tokio::test]
    async fn a_lone_reservation_commits_on_its_callers_thread_the_rest_on_the_writers()
    -> Result<(), StoreError> {
        use crate::ledger::LedgerStore as _;
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        // No checkpoint thread look in the test's time: one that copies the whole WAL sends
        // the next commit to the writer thread (`a_commit_that_may_sync_goes_to_the_writer_thread`).
        let store = SqliteStore::open_with(&dir.path().join("hub.db"), no_looks())?;
        let stats = || store.commit_stats().unwrap_or_default();
        let quiet = || tokio::time::sleep(std::time::Duration::from_millis(5));
        store.grant(&grant("g", 1_000)).await?;
        quiet().await;
        store.reserve(&[hold("a")]).await?;
        quiet().await;
        let s = stats();
        assert_eq!((s.commits, s.inline_commits), (1, 1), "{s:?}");
        quiet().await;
        store.insert_usage(&[billed("a", 30)]).await?;
        let s = stats();
        assert_eq!((s.commits, s.inline_commits), (2, 1), "{s:?}");
        quiet().await;
        store.reserve(&[hold("b"), hold("c")]).await?;
        quiet().await;
        store
            .insert_usage(&[billed("b", 30), billed("c", 30)])
            .await?;
        let s = stats();
        assert_eq!((s.commits, s.inline_commits), (4, 1), "{s:?}");
        assert_eq!((s.usage_records, s.reservations), (3, 3));
        // With the hub's count of calls in flight: a lone call's record commits on its thread,
        // one of two calls in flight goes to the writer thread.
        let calls = Arc::new(AtomicUsize::new(1));
        store.set_calls_in_flight(calls.clone());
        quiet().await;
        store.reserve(&[hold("d")]).await?;
        quiet().await;
        store.insert_usage(&[billed("d", 30)]).await?;
        assert_eq!(stats().inline_commits, 3, "{:?}", stats());
        calls.store(2, Ordering::Release);
        quiet().await;
        store.reserve(&[hold("e")]).await?;
        quiet().await;
        store.insert_usage(&[billed("e", 30)]).await?;
        let s = stats();
        assert_eq!((s.commits, s.inline_commits), (8, 4), "{s:?}");
        assert_ledger(&store, (850, 0), (0, 5)).await?;
        Ok(())
    }

    /// A checkpoint policy whose thread never looks while a test runs (it checkpoints once, as
    /// the store closes).
    fn no_looks() -> CheckpointPolicy {
        let hour = std::time::Duration::from_secs(3_600);
        CheckpointPolicy {
            every: hour,
            pending_frames: u64::MAX,
            at_least_every: hour,
            writer_frames: WRITER_AUTOCHECKPOINT_PAGES,
        }
    }

    /// A lone write does not commit on its caller's thread when that commit may sync the disk:
    /// right after a checkpoint copied the whole WAL (the commit starts it again and syncs its
    /// header), and near the writer's own checkpoint threshold (the commit that crosses it
    /// copies the WAL and syncs both files). Such a commit goes to the writer thread, and lone
    /// writes commit inline again once it is done.
    #[tokio::test]
    async fn a_commit_that_may_sync_goes_to_the_writer_thread() -> Result<(), StoreError> {
        use crate::ledger::LedgerStore as _;
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let path = dir.path().join("hub.db");
        // Lone commits inline below 60 frames of WAL; the writer checkpoints at 1,060.
        let store = SqliteStore::open_with(
            &path,
            CheckpointPolicy {
                writer_frames: CHECKPOINT_MARGIN_FRAMES + 60,
                ..no_looks()
            },
        )?;
        let inline = || store.commit_stats().unwrap_or_default().inline_commits;
        let quiet = || tokio::time::sleep(std::time::Duration::from_millis(1));
        let restarts = || store.pace.restarts.load(Ordering::Acquire);
        store.grant(&grant("g", 1_000_000)).await?;
        // The migrations filled the WAL past the 60 frames: the first write starts it again
        // after a checkpoint that copies it all, as the checkpoint thread's look does.
        let other = open_conn(&path)?;
        checkpoint_passive(&other, &store.pace);
        quiet().await;
        store.reserve(&[hold("a")]).await?;
        assert_eq!(
            (inline(), restarts()),
            (0, 1),
            "the WAL started again on the thread"
        );
        quiet().await;
        store.reserve(&[hold("b")]).await?;
        assert_eq!(inline(), 1, "an idle store, a WAL far from any checkpoint");
        checkpoint_passive(&other, &store.pace);
        quiet().await;
        store.reserve(&[hold("c")]).await?;
        assert_eq!(
            (inline(), restarts()),
            (1, 2),
            "after a whole copy: to the thread"
        );
        // Lone holds until the WAL nears the writer's threshold, crosses it (the writer's
        // checkpoint copies it all) and starts again.
        let mut went_inline = 0;
        let mut near = 0;
        for i in 0..2_000 {
            if restarts() == 3 {
                break;
            }
            let frames = store.pace.wal_frames.load(Ordering::Acquire);
            let before = inline();
            quiet().await;
            store.reserve(&[hold(&format!("h{i}"))]).await?;
            if inline() > before {
                went_inline += 1;
                assert!(frames < 60, "{frames} frames in the WAL: committed inline");
            } else {
                near += 1;
                assert!(
                    frames >= 60 || restarts() == 3,
                    "{frames} frames in the WAL: went to the thread"
                );
            }
        }
        assert_eq!(
            restarts(),
            3,
            "the writer's checkpoint started the WAL again"
        );
        assert!(
            went_inline > 5 && near > 100,
            "{went_inline} inline, {near} not"
        );
        let before = inline();
        quiet().await;
        store.reserve(&[hold("z")]).await?;
        assert_eq!(
            inline(),
            before + 1,
            "inline again once the WAL started again"
        );
        Ok(())
    }

    /// Under a steady stream of lone commits (concurrency 1) the checkpoint thread's looks copy
    /// all they see while more frames land: the WAL goes on, nothing is to sync, and the
    /// commits stay on their callers' threads. (Taking every such checkpoint for a whole copy
    /// sent nine in ten of them to the writer thread.)
    #[tokio::test]
    async fn a_steady_stream_of_lone_commits_stays_inline_while_the_checkpoint_thread_works()
    -> Result<(), StoreError> {
        use crate::ledger::LedgerStore as _;
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open_with(
            &dir.path().join("hub.db"),
            CheckpointPolicy {
                every: std::time::Duration::from_millis(5),
                pending_frames: 1,
                ..no_looks()
            },
        )?;
        store.grant(&grant("g", 1_000_000)).await?;
        let started = std::time::Instant::now();
        let mut calls = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(400) {
            // Past the lone gap, as a caller's next call is at concurrency 1.
            std::thread::sleep(std::time::Duration::from_micros(40));
            store.reserve(&[hold(&format!("h{calls}"))]).await?;
            calls += 1;
        }
        let s = store.commit_stats().unwrap_or_default();
        assert_eq!(s.commits, calls, "{s:?}");
        assert!(calls > 100, "{calls} calls in 400 ms");
        assert!(
            s.inline_commits * 4 >= calls * 3,
            "{} of {calls} lone commits inline",
            s.inline_commits
        );
        Ok(())
    }

    /// Lone reservations from many tasks at once race for the writer connection with the writer
    /// thread's batches: every call is held once and settled once, whichever thread commits it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn lone_reservations_racing_the_writer_thread_settle_every_call_once()
    -> Result<(), StoreError> {
        use crate::ledger::LedgerStore as _;
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        store.grant(&grant("g", 100_000)).await?;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            calls.spawn(async move {
                let id = format!("call{i}");
                if i % 7 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                store.reserve(&[hold(&id)]).await?;
                tokio::task::yield_now().await;
                store.insert_usage(&[billed(&id, 10)]).await
            });
        }
        while let Some(done) = calls.join_next().await {
            done.map_err(|e| StoreError::Db(e.to_string()))??;
        }
        let s = store.commit_stats().unwrap_or_default();
        assert_eq!(
            (s.usage_records, s.reservations, s.failed_batches),
            (200, 200, 0)
        );
        assert!(
            s.commits > s.inline_commits,
            "some batches went to the thread: {s:?}"
        );
        assert_ledger(&store, (100_000 - 2_000, 0), (0, 200)).await?;
        Ok(())
    }

    /// Migration 11 on a database of migration 10: open holds stay, settled ones leave, and the
    /// ones reconcile flagged move to `reconciled_holds` as released or captured; the ledger
    /// verifies, and the open hold then settles as any other.
    #[tokio::test]
    async fn migration_11_keeps_open_holds_and_moves_reconciled_ones() -> Result<(), StoreError> {
        use crate::ledger::LedgerStore as _;
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let path = dir.path().join("hub.db");
        {
            let c = Connection::open(&path).map_err(db_err)?;
            for sql in &MIGRATIONS[..10] {
                c.execute_batch(sql).map_err(db_err)?;
            }
            // One account: 1,000 granted; a hold of 100 open (`open`), one settled at 30
            // (`settled`), one released by reconcile (`released`), one reconcile captured at 20
            // (`captured`). Balance 1,000 - 30 - 20 = 950, of which 100 reserved.
            c.execute_batch(
                "PRAGMA user_version = 10;
                 INSERT INTO ledger_accounts (id, available, reserved, created_at_ms) VALUES ('user:u', 850, 100, 1);
                 INSERT INTO ledger_entries (account, kind, available_delta, reserved_delta, charged, request_id, idem_key, created_at_ms) VALUES
                   ('user:u', 'grant', 1000, 0, 0, NULL, 'g', 1),
                   ('user:u', 'capture', -30, 0, 30, 'settled', 'capture:settled', 2),
                   ('user:u', 'capture', -20, 0, 20, 'captured', 'capture:captured', 3);
                 INSERT INTO reservations (request_id, account, amount, instance, status, created_at_ms, settled_at_ms) VALUES
                   ('open', 'user:u', 100, 'i1', 'open', 4, NULL),
                   ('settled', 'user:u', 100, 'i1', 'settled', 2, 2),
                   ('released', 'user:u', 100, 'i2', 'reconciled', 1, 5),
                   ('captured', 'user:u', 100, 'i2', 'reconciled', 3, 3);",
            )
            .map_err(db_err)?;
            // Their usage records, as that version wrote them with their captures.
            c.execute_batch(
                "INSERT INTO usage_records (id, created_at_ms, principal, user_id, ingress, endpoint, requested_model,
                   stream, prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
                   images, estimated, latency_ms, status, http_status, billing_mode, cost_units, account, reserved_units)
                 VALUES ('settled', 2, 'k', 'u', 'openai', 'chat', 'm', 0, 1, 1, 0, 0, 0, 0, 0, 1, 'success', 200,
                         'credits', 30, 'user:u', 100),
                        ('captured', 3, 'k', 'u', 'openai', 'chat', 'm', 1, 1, 1, 0, 0, 0, 0, 1, 1, 'success', 200,
                         'credits', 20, 'user:u', 100);",
            )
            .map_err(db_err)?;
        }
        let store = SqliteStore::open(&path)?;
        let rep = store.verify(10, 1_000_000).await?;
        assert!(rep.violations.is_empty(), "{rep:#?}");
        assert_eq!((rep.open_reservations, rep.reconciled_reservations), (1, 2));
        assert_eq!(
            strings(
                &store,
                "SELECT request_id || ' ' || outcome || ' ' || reconciled_at_ms FROM reconciled_holds
                 ORDER BY request_id"
            )?,
            vec!["captured captured 3".to_string(), "released released 5".to_string()]
        );
        assert_eq!(
            strings(&store, "SELECT request_id FROM reservations")?,
            vec!["open".to_string()]
        );
        // The open hold settles as any other.
        store.insert_usage(&[billed("open", 40)]).await?;
        assert_ledger(&store, (1_000 - 30 - 20 - 40, 0), (0, 3)).await
    }

    /// Migration 12 on a database of migration 11: a hold's heartbeat record moves from its row
    /// to `hold_records`, and a restart's reconcile still captures what it says was delivered.
    #[tokio::test]
    async fn migration_12_moves_heartbeat_records_out_of_the_holds() -> Result<(), StoreError> {
        use crate::ledger::LedgerStore as _;
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let path = dir.path().join("hub.db");
        let mut delivered = billed("streamed", 25);
        delivered.stream = true;
        delivered.billing.reserved_units = 0;
        let json = serde_json::to_string(&delivered).map_err(|e| StoreError::Db(e.to_string()))?;
        {
            let c = Connection::open(&path).map_err(db_err)?;
            for sql in &MIGRATIONS[..11] {
                c.execute_batch(sql).map_err(db_err)?;
            }
            c.execute_batch(
                "PRAGMA user_version = 11;
                 INSERT INTO ledger_accounts (id, available, reserved, created_at_ms) VALUES ('user:u', 800, 200, 1);
                 INSERT INTO ledger_entries (account, kind, available_delta, reserved_delta, charged, request_id, idem_key, created_at_ms) VALUES
                   ('user:u', 'grant', 1000, 0, 0, NULL, 'g', 1);
                 INSERT INTO reservations (request_id, account, amount, instance, status, created_at_ms) VALUES
                   ('plain', 'user:u', 100, 'dead', 'open', 1);",
            )
            .map_err(db_err)?;
            c.execute(
                "INSERT INTO reservations (request_id, account, amount, instance, status, created_at_ms, delivered)
                 VALUES ('streamed', 'user:u', 100, 'dead', 'open', 1, ?1)",
                [&json],
            )
            .map_err(db_err)?;
        }
        let store = SqliteStore::open(&path)?;
        assert_eq!(
            strings(&store, "SELECT request_id FROM hold_records")?,
            vec!["streamed".to_string()]
        );
        let rep = store.verify(10, 1_000_000).await?;
        assert!(rep.violations.is_empty(), "{rep:#?}");
        let rep = store.reconcile("me", 10, 5, 0).await?;
        assert_eq!((rep.captured, rep.captured_units), (1, 25));
        assert_eq!((rep.released, rep.released_units), (1, 100));
        assert!(strings(&store, "SELECT request_id FROM hold_records")?.is_empty());
        assert_ledger(&store, (1_000 - 25, 0), (0, 1)).await
    }

    /// The per-app export reads the partial per-app index (migration 10): records of that app,
    /// in order, and none of another app's or of calls that named no app.
    #[tokio::test]
    async fn app_export_finds_the_apps_records_only() -> Result<(), StoreError> {
        use crate::ledger::{LedgerStore as _, report::UsageFilter};
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        let rec = |id: &str, app: Option<&str>, at: i64| {
            let mut r = record(id);
            r.app = app.map(str::to_string);
            r.created_at_ms = at;
            r
        };
        store
            .insert_usage(&[
                rec("r1", Some("a"), 10),
                rec("r2", None, 11),
                rec("r3", Some("b"), 12),
                rec("r4", Some("a"), 13),
                rec("r5", None, 14),
            ])
            .await?;
        let filter = UsageFilter {
            since_ms: Some(0),
            until_ms: Some(100),
            app: Some("a".into()),
            ..UsageFilter::default()
        };
        let ids: Vec<String> = store
            .usage_records(&filter)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["r1", "r4"]);
        Ok(())
    }

    /// A key's spend is its own records' cost in `[from, to)`: not its user's other keys', not
    /// another user's, not outside the period; a key that does not exist spent nothing.
    #[tokio::test]
    async fn key_spend_sums_one_keys_records_in_the_period() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        for (user, key) in [("u1", "k1"), ("u1", "k2"), ("u2", "k3")] {
            store.writer.lock().execute_batch(&format!(
                "INSERT OR IGNORE INTO users (id, name, role, created_at_ms) VALUES ('{user}', '{user}', 'member', 0);
                 INSERT INTO api_keys (id, user_id, digest_hex, prefix, name, created_at_ms)
                   VALUES ('{key}', '{user}', 'digest-{key}', 'ahk_', '{key}', 0);"
            )).map_err(db_err)?;
        }
        let rec = |id: &str, user: &str, key: &str, at: i64, cost: i64| {
            let mut r = record(id);
            r.user_id = user.to_string();
            r.created_at_ms = at;
            r.principal = key.to_string();
            r.billing.cost_units = cost;
            r
        };
        store
            .insert_usage(&[
                rec("r1", "u1", "k1", 100, 5),
                rec("r2", "u1", "k1", 199, 7),
                rec("r3", "u1", "k1", 200, 1_000), // at `to`: the next period
                rec("r4", "u1", "k1", 99, 1_000),  // before `from`
                rec("r5", "u1", "k2", 150, 1_000), // the same user's other key
                rec("r6", "u2", "k3", 150, 1_000), // another user's key
            ])
            .await?;
        assert_eq!(store.key_spend("k1", 100, 200).await?, 12);
        assert_eq!(store.key_spend("k2", 100, 200).await?, 1_000);
        assert_eq!(store.key_spend("k1", 300, 400).await?, 0);
        assert_eq!(store.key_spend("nope", 0, 1_000).await?, 0);
        Ok(())
    }

    /// Every connection of the store (writer, reader, checkpointer) opens through the `hub-wal`
    /// VFS, whose commits are two WAL writes instead of two per page.
    #[tokio::test]
    async fn store_connections_open_through_the_coalescing_wal_vfs() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        assert!(hub_sqlite_vfs::serves(&store.writer.lock()));
        assert!(hub_sqlite_vfs::serves(&store.reader.lock()));
        let other = open_conn(&dir.path().join("hub.db"))?; // as the checkpointer opens its own
        assert!(hub_sqlite_vfs::serves(&other));
        let plain = Connection::open(dir.path().join("hub.db")).map_err(db_err)?;
        assert!(!hub_sqlite_vfs::serves(&plain));
        Ok(())
    }

    /// Every reservation and settlement inserts a ledger entry into each of its b-trees, so the
    /// same rule holds for `ledger_entries`: entries by account (`ledger_entries_account`), due
    /// expiries (`ledger_entries_expiry`), and a call's entries by their idempotency keys (the
    /// UNIQUE index), which is how `verify` finds a record's capture.
    #[tokio::test]
    async fn ledger_entry_indexes_are_the_ones_queries_use() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        let c = store.reader.lock();
        assert_eq!(
            index_names(&c, "ledger_entries")?,
            [
                "ledger_entries_account",
                "ledger_entries_expiry",
                "sqlite_autoindex_ledger_entries_1"
            ]
        );
        let plan = query_plan(
            &c,
            "SELECT u.id FROM usage_records u
             WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.idem_key = 'capture:' || u.id)",
        )?;
        assert!(plan.contains("sqlite_autoindex_ledger_entries_1"), "{plan}");
        Ok(())
    }

    #[tokio::test]
    async fn config_writes_bump_the_version_across_connections() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let path = dir.path().join("hub.db");
        let a = SqliteStore::open(&path)?;
        let b = SqliteStore::open(&path)?;
        let v0 = a.config_version().await?;
        b.upsert_provider(&ProviderRow {
            kind: ProviderKind::OpenAi,
            base_url: Some("http://x/v1".into()),
            region: None,
            enabled: true,
            created_at_ms: 1,
        })
        .await?;
        assert!(a.config_version().await? > v0);
        assert_eq!(a.list_providers().await?.len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn get_user_finds_one_user_or_none() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        for (id, name, role) in [("u1", "Ann", Role::Member), ("u2", "Bo", Role::Admin)] {
            store
                .insert_user(&UserRow {
                    id: id.into(),
                    name: name.into(),
                    role,
                    team_id: Some("t".into()),
                    created_at_ms: 7,
                })
                .await?;
        }
        let bo = store.get_user("u2").await?;
        assert_eq!(
            bo.as_ref().map(|u| (u.name.as_str(), u.role)),
            Some(("Bo", Role::Admin))
        );
        assert_eq!(bo.and_then(|u| u.team_id), Some("t".into()));
        assert!(store.get_user("nobody").await?.is_none());
        Ok(())
    }

    /// The WAL is checkpointed by the store's own thread while the store is open, not by the
    /// commit that crosses SQLite's 1,000-page threshold (the writer's threshold is far above).
    #[tokio::test]
    async fn the_wal_is_checkpointed_beside_the_writer() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let path = dir.path().join("hub.db");
        let store = SqliteStore::open(&path)?;
        // SQLite's own automatic checkpoint is replaced by the writer's WAL hook.
        let sqlite_own: i64 = store
            .writer
            .lock()
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .map_err(db_err)?;
        assert_eq!(sqlite_own, 0);
        let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let before = size();
        for b in 0..20 {
            let batch: Vec<UsageRecord> = (0..100).map(|i| record(&format!("r{b}-{i}"))).collect();
            store.insert_usage(&batch).await?;
        }
        // ~2,000 records are far below the writer's threshold: only the checkpoint thread can
        // have copied them into the database file.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while size() < before + 256 * 1024 {
            assert!(
                std::time::Instant::now() < deadline,
                "database file still {} bytes (was {before}): nothing checkpointed",
                size()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(store.list_usage(5000).await?.len(), 2000);
        Ok(())
    }

    /// Opens a store with the given checkpoint policy, lets the checkpoint thread's first look
    /// (which copies what an earlier process left) pass, writes 2,000 usage records in 20
    /// commits, and returns how many bytes the database file grew by within `window`.
    async fn db_growth(
        policy: CheckpointPolicy,
        window: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let path = dir.path().join("hub.db");
        let store = SqliteStore::open_with(&path, policy)?;
        tokio::time::sleep(policy.every * 5).await;
        let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let before = size();
        for b in 0..20 {
            let batch: Vec<UsageRecord> = (0..100).map(|i| record(&format!("r{b}-{i}"))).collect();
            store.insert_usage(&batch).await?;
        }
        let deadline = std::time::Instant::now() + window;
        while std::time::Instant::now() < deadline && size() < before + 256 * 1024 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let grown = size().saturating_sub(before);
        assert_eq!(store.list_usage(5000).await?.len(), 2000);
        Ok(grown)
    }

    const NEVER: std::time::Duration = std::time::Duration::from_secs(3600);

    /// The checkpoint thread copies once enough frames are pending, or when its longest wait is
    /// up, and not before; the writer copies itself at its own threshold.
    #[tokio::test]
    async fn checkpoints_come_from_pending_frames_the_longest_wait_or_the_writer()
    -> Result<(), StoreError> {
        let quiet = CheckpointPolicy {
            every: std::time::Duration::from_millis(10),
            pending_frames: u64::MAX,
            at_least_every: NEVER,
            writer_frames: u32::MAX,
        };
        let window = std::time::Duration::from_millis(500);
        // Nothing asks for a checkpoint: nothing reaches the database file.
        let none = db_growth(quiet, window).await?;
        assert!(
            none < 256 * 1024,
            "grew {none} bytes with every checkpoint off"
        );
        // 2,000 records are far more than 50 frames: the next look copies them.
        let pending = db_growth(
            CheckpointPolicy {
                pending_frames: 50,
                ..quiet
            },
            window,
        )
        .await?;
        assert!(
            pending >= 256 * 1024,
            "grew only {pending} bytes with 50 pending frames"
        );
        // No frame threshold, but a look at most 200 ms after the last checkpoint.
        let waited = db_growth(
            CheckpointPolicy {
                at_least_every: std::time::Duration::from_millis(200),
                ..quiet
            },
            std::time::Duration::from_secs(3),
        )
        .await?;
        assert!(
            waited >= 256 * 1024,
            "grew only {waited} bytes with a 200 ms longest wait"
        );
        // The checkpoint thread idle; the committing writer copies once the WAL holds 50 frames.
        let writer = db_growth(
            CheckpointPolicy {
                writer_frames: 50,
                ..quiet
            },
            window,
        )
        .await?;
        assert!(
            writer >= 256 * 1024,
            "grew only {writer} bytes with the writer's threshold at 50"
        );
        Ok(())
    }

    /// The writer's WAL hook counts the frames each commit adds, also across the WAL starting
    /// again from its beginning.
    #[test]
    fn the_writer_counts_the_frames_it_commits() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let mut conn = open_conn(&dir.path().join("hub.db"))?;
        let written = Arc::new(AtomicU64::new(0));
        let pace = Arc::new(HotPace::new(LONE_GAP, u32::MAX));
        count_wal_frames(&mut conn, u32::MAX, written.clone(), pace.clone())?;
        conn.execute_batch("CREATE TABLE t (x BLOB)")
            .map_err(db_err)?;
        let frames = |conn: &Connection| -> Result<(i64, i64), StoreError> {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .map_err(db_err)
        };
        for round in 0..3 {
            let start = written.load(Ordering::Acquire);
            for i in 0..10 {
                conn.execute("INSERT INTO t VALUES (zeroblob(?1))", [1000 + i * 3000])
                    .map_err(db_err)?;
            }
            // The WAL holds exactly what was committed since it started (again).
            let (log, copied) = frames(&conn)?;
            assert_eq!(
                log, copied,
                "round {round}: a checkpoint with no reader copies all"
            );
            let log = u64::try_from(log).unwrap_or(0);
            assert!(
                log > 10,
                "round {round}: {log} frames for 10 inserts of up to 28 KB"
            );
            let now = written.load(Ordering::Acquire);
            assert_eq!(
                pace.wal_frames.load(Ordering::Acquire),
                u32::try_from(log).unwrap_or(0),
                "round {round}: the frames in the WAL"
            );
            assert_eq!(
                pace.restarts.load(Ordering::Acquire),
                round,
                "round {round}: times the WAL started again"
            );
            if round == 0 {
                // The first WAL also holds the table's creation, a commit of its own.
                assert!(start > 0, "the table's creation counted no frame");
                assert_eq!(now, log);
            } else {
                // Each later round's first insert started the WAL again.
                assert_eq!(now - start, log, "round {round}");
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn duplicate_key_digest_conflicts() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("hub.db"))?;
        store
            .insert_user(&UserRow {
                id: "u".into(),
                name: "n".into(),
                role: Role::Owner,
                team_id: None,
                created_at_ms: 1,
            })
            .await?;
        let key = ApiKeyRow {
            id: "k1".into(),
            user_id: "u".into(),
            digest_hex: "ab".into(),
            prefix: "ahk_".into(),
            name: "n".into(),
            team_id: None,
            created_at_ms: 1,
            expires_at_ms: None,
            revoked_at_ms: None,
        };
        store.insert_api_key(&key).await?;
        let mut dup = key.clone();
        dup.id = "k2".into();
        assert!(matches!(
            store.insert_api_key(&dup).await,
            Err(StoreError::Conflict(_))
        ));
        Ok(())
    }
}
