//! The credit ledger: accounts, idempotent entries, reservations; the price book; usage reports.
//!
//! Money model (amounts are `i64` units of 1e-10 credit, see `crate::pricing`):
//! - An account has `available` and `reserved`. Money that moves (a grant, a capture, an
//!   adjustment, an expiry) is one ledger entry, so the balance `available + reserved` equals
//!   `Σ (available_delta + reserved_delta)` of its entries; a hold moves no money and is a
//!   reservation row, so `reserved = Σ` of the account's open reservations. `verify` proves both,
//!   which pins `available` too.
//! - **Reserve** (before the upstream call): one conditional UPDATE
//!   `available = available - x, reserved = reserved + x WHERE available >= x` and an open
//!   reservation keyed by request id (its key refuses a second hold while the first is open;
//!   request ids are the hub's own UUIDv7s, never reused). Atomic on any SQL database
//!   with any number of instances; no process-local lock involved. No ledger entry: the call's
//!   capture is its one entry.
//! - **Capture** (in the transaction that writes the usage record): claims the open reservation
//!   (deletes its row: a reservation row lives while its hold is open), charges the cost,
//!   returns the rest to `available`, one `capture` entry of what the call cost
//!   (`available_delta = -charged`). A cost above reservation + available is written off as
//!   `shortfall`, never overdrawn.
//! - **Reconcile** (after a crash): an open reservation whose instance died (or older than the
//!   window) is reconciled (its row moves to `reconciled_holds`); if its stream had delivered
//!   something by the instance's last heartbeat, the heartbeat's record of that part (stored
//!   once, with the progress of the last beat laid over it) is written and captured (the rest
//!   goes back), else all of it goes back to `available` (no entry: no money moved).
//! - Ledgers written before holds left the entries have `reserve` (-x/+x) and `release` (+x/-x)
//!   entries, and captures that also returned their hold (+x-cost/-x); each sums to the same
//!   across the two buckets, so they verify as they are.
//! - Every entry has a UNIQUE idempotency key (`capture:<req>`, `starter:<user>`,
//!   `grant:<key>`, `expire:<entry id>`, ...): a replay changes nothing.

pub mod expiry;
pub mod report;
mod writer;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::pricing::Price;
use crate::store::{StoreError, UsageRecord};

pub use report::{Quota, ReportQuery, ReportRow, ReportZone, UsageFilter};
pub use writer::LedgerWriter;

/// Ledger account of a user.
pub fn user_account(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// Ledger account of a team.
pub fn team_account(team_id: &str) -> String {
    format!("team:{team_id}")
}

/// Starter credits granted once, when a user's account is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Starter {
    pub amount: i64,
    pub expires_at_ms: Option<i64>,
}

/// A reservation to hold before an upstream call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveReq {
    /// The hub's request id: the reservation's key, and the usage record's id.
    pub request_id: String,
    pub account: String,
    pub amount: i64,
    /// The instance holding it (reconciled when that instance stops heart-beating).
    pub instance: String,
    pub now_ms: i64,
    /// Granted (idempotently, key `starter:<user>`) if this creates a user account.
    pub starter: Option<Starter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved,
    /// Not enough available; nothing changed.
    Insufficient {
        available: i64,
    },
    /// A reservation with this request id exists already; nothing changed.
    Duplicate,
}

/// What kind of balance change an operator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantKind {
    /// Credits granted (bought, given); may expire.
    Grant,
    /// A correction, positive or negative (never below zero available).
    Adjust,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Grant => "grant",
            GrantKind::Adjust => "adjust",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantReq {
    pub account: String,
    pub kind: GrantKind,
    /// Signed for adjustments; positive for grants.
    pub amount: i64,
    /// Unique: the same key again is a replay and changes nothing.
    pub idem_key: String,
    pub expires_at_ms: Option<i64>,
    pub note: Option<String>,
    pub now_ms: i64,
    /// Applied if this creates a user account (so an admin grant never skips the starter grant).
    pub starter: Option<Starter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOutcome {
    Applied,
    /// An entry with this idempotency key exists; nothing changed.
    Replayed,
    /// A negative adjustment larger than the available balance; nothing changed.
    Insufficient {
        available: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBalance {
    pub account: String,
    pub available: i64,
    pub reserved: i64,
}

/// One ledger entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: i64,
    pub account: String,
    pub kind: String,
    pub available_delta: i64,
    pub reserved_delta: i64,
    pub charged: i64,
    pub request_id: Option<String>,
    pub idem_key: String,
    pub expires_at_ms: Option<i64>,
    pub note: Option<String>,
    pub created_at_ms: i64,
}

/// Result of `verify`: the invariants of design.md §4, checked over the whole ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub accounts: u64,
    pub entries: u64,
    pub usage_records: u64,
    pub captures: u64,
    pub open_reservations: u64,
    pub reconciled_reservations: u64,
    /// Σ available over accounts (units).
    pub total_available: i64,
    pub total_reserved: i64,
    /// Σ of grant, starter and adjust entries.
    pub total_granted: i64,
    pub total_charged: i64,
    pub total_shortfall: i64,
    pub total_expired: i64,
    /// Each violation, human readable. Empty = the ledger is consistent.
    pub violations: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What `set_report_zones` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRebuild {
    /// Zones built from the 15-minute roll-up now.
    pub built: Vec<String>,
    /// Zones whose rows were dropped.
    pub dropped: Vec<String>,
    /// Day rows written by the builds.
    pub rows: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub released: u64,
    pub released_units: i64,
    /// Streams captured for what they had delivered by their last heartbeat (rest released).
    pub captured: u64,
    pub captured_units: i64,
}

/// The ledger, price book and reports, as the store implements them. Every write is a
/// transaction of conditional statements that holds with several processes on one database.
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Holds many reservations in one transaction (group commit); one outcome per request.
    async fn reserve(&self, batch: &[ReserveReq]) -> Result<Vec<ReserveOutcome>, StoreError>;
    /// `reserve` taking the batch by value (the reservation writer's form), so a store that
    /// passes it to another thread need not copy it. The default borrows it.
    async fn reserve_owned(
        &self,
        batch: Vec<ReserveReq>,
    ) -> Result<Vec<ReserveOutcome>, StoreError> {
        self.reserve(&batch).await
    }
    /// A grant or adjustment, idempotent by key.
    async fn grant(&self, req: &GrantReq) -> Result<GrantOutcome, StoreError>;
    async fn balance(&self, account: &str) -> Result<Option<AccountBalance>, StoreError>;
    /// Entries of one account, oldest first.
    async fn entries(&self, account: &str) -> Result<Vec<LedgerEntry>, StoreError>;
    /// At most `limit` entries of one account with an id above `after_id`, oldest first.
    async fn entries_page(
        &self,
        account: &str,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        Ok(self
            .entries(account)
            .await?
            .into_iter()
            .filter(|e| e.id > after_id)
            .take(limit as usize)
            .collect())
    }
    /// Checks every invariant; `window_ms`: how old an open reservation may be.
    async fn verify(&self, now_ms: i64, window_ms: i64) -> Result<VerifyReport, StoreError>;
    /// Reconciles (moves to `reconciled_holds`) every open reservation held by an instance other than
    /// `me` whose heartbeat is older than `stale_before_ms`, and every open reservation created
    /// before `older_than_ms`: one whose stream had delivered something by its last heartbeat is
    /// captured for that part (its record written, the rest released); any other is released.
    async fn reconcile(
        &self,
        me: &str,
        now_ms: i64,
        stale_before_ms: i64,
        older_than_ms: i64,
    ) -> Result<ReconcileReport, StoreError>;
    /// Records that instance `id` is alive, and what its streams holding reservations have
    /// delivered so far: for each, the usage record to write (estimated, flagged `reconciled`)
    /// if this instance dies before settling it. A stream's record is stored whole once (a beat
    /// that has not `stored` it); later beats store its `StreamProgress`, which reconcile lays
    /// over it. Nothing is stored for a stream whose hold is no longer open. One transaction.
    async fn heartbeat(
        &self,
        id: &str,
        now_ms: i64,
        streams: &[crate::store::StreamBeat],
    ) -> Result<(), StoreError>;
    /// Expires what is left of grants whose expiry passed (entries keyed `expire:<grant id>`).
    /// Returns the number of grants expired.
    async fn expire_grants(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Appends price versions (and bumps the config version); returns their version ids.
    async fn insert_prices(&self, prices: &[Price]) -> Result<Vec<i64>, StoreError>;
    /// The current version of every price, or every version when `history`.
    async fn list_prices(&self, history: bool) -> Result<Vec<Price>, StoreError>;

    /// The report time zones (besides UTC) whose day roll-ups the store keeps, maintained with
    /// every usage batch. A zone new to the store is built from the 15-minute roll-up; a zone
    /// no longer listed loses its rows. Reports in other zones read the 15-minute roll-up.
    async fn set_report_zones(
        &self,
        zones: &[report::ReportZone],
    ) -> Result<ZoneRebuild, StoreError>;
    /// Usage and cost grouped by the query's dimensions, from the roll-up table.
    async fn usage_report(&self, q: &ReportQuery) -> Result<Vec<ReportRow>, StoreError>;
    /// Raw usage records matching a filter, oldest first.
    async fn usage_records(&self, f: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError>;
    /// Charged in `[since_ms, now)` by one user (for the quota projection).
    async fn charged_since(&self, user_id: &str, since_ms: i64) -> Result<i64, StoreError>;
}

/// The quota of an account (what `/usage/quota` answers): granted, used, remaining, and days
/// left at the user's average daily spend over the last 30 days.
pub async fn quota_of(
    store: &dyn crate::store::Store,
    account: &str,
    user_id: &str,
    now_ms: i64,
) -> Result<Quota, StoreError> {
    let balance = store.balance(account).await?;
    let entries = store.entries(account).await?;
    let spent = store
        .charged_since(user_id, now_ms - 30 * 86_400_000)
        .await?;
    Ok(report::quota(balance.as_ref(), &entries, spent))
}
