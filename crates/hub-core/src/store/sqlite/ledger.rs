//! `LedgerStore` for SQLite. Every money write runs in an IMMEDIATE transaction of conditional
//! statements (`... WHERE available >= ?`, `DELETE ... WHERE request_id = ? AND amount = ?`,
//! `ON CONFLICT(idem_key) DO NOTHING`), the same statements a PostgreSQL backend runs; SQLite's
//! write lock serialises processes sharing the file, PostgreSQL's row locks would serialise
//! instances.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use super::{Q, SqliteStore, Stmts, USAGE_COLUMNS, db_err, kind_of, usage_from_row};
use crate::FastMap;
use crate::ledger::report::{BUCKET_MS, DAY_MS, Period, ReportZone, offset_sql};
use crate::ledger::{
    AccountBalance, GrantKind, GrantOutcome, GrantReq, LedgerEntry, LedgerStore, ReconcileReport,
    ReportQuery, ReportRow, ReserveOutcome, ReserveReq, Starter, UsageFilter, VerifyReport,
    ZoneRebuild, expiry,
};
use crate::pricing::Price;
use crate::store::iam::{Applied, Change, IamStore};
use crate::store::{StoreError, StreamBeat, StreamProgress, UsageRecord};
use crate::types::ModelType;

struct NewEntry<'a> {
    account: &'a str,
    kind: &'a str,
    available_delta: i64,
    reserved_delta: i64,
    charged: i64,
    request_id: Option<&'a str>,
    idem_key: &'a str,
    expires_at_ms: Option<i64>,
    note: Option<&'a str>,
    now_ms: i64,
}

/// Inserts an entry unless its idempotency key exists. Returns whether it was inserted.
fn insert_entry(s: &mut Stmts<'_>, e: &NewEntry<'_>) -> Result<bool, StoreError> {
    let n = s
        .get(Q::InsertEntry)?
        .execute(params![
            e.account,
            e.kind,
            e.available_delta,
            e.reserved_delta,
            e.charged,
            e.request_id,
            e.idem_key,
            e.expires_at_ms,
            e.note,
            e.now_ms
        ])
        .map_err(db_err)?;
    Ok(n == 1)
}

/// Creates the account if missing; a new user account gets its starter credits (once: the
/// entry's key is `starter:<user>`).
fn ensure_account(
    tx: &mut Stmts<'_>,
    account: &str,
    starter: Option<&Starter>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let created = tx
        .get(Q::EnsureAccount)?
        .execute(params![account, now_ms])
        .map_err(db_err)?;
    if created == 1
        && let Some(s) = starter
        && s.amount > 0
        && let Some(user) = account.strip_prefix("user:")
    {
        let key = format!("starter:{user}");
        let inserted = insert_entry(
            tx,
            &NewEntry {
                account,
                kind: "starter",
                available_delta: s.amount,
                reserved_delta: 0,
                charged: 0,
                request_id: None,
                idem_key: &key,
                expires_at_ms: s.expires_at_ms,
                note: Some("starter credits"),
                now_ms,
            },
        )?;
        if inserted {
            move_money(tx, account, s.amount, 0)?;
        }
    }
    Ok(())
}

/// Applies deltas to an account (the CHECK constraints refuse anything below zero).
fn move_money(
    tx: &mut Stmts<'_>,
    account: &str,
    available_delta: i64,
    reserved_delta: i64,
) -> Result<(), StoreError> {
    tx.get(Q::MoveMoney)?
        .execute(params![account, available_delta, reserved_delta])
        .map_err(db_err)?;
    Ok(())
}

/// The account movements of one usage batch's captures, summed per account and applied with one
/// `UPDATE` per account when the batch is written, not one per record (same transaction, so the
/// batch's entries and its balances still commit together). Every capture's deltas keep the
/// account within its CHECK constraints on their own (a capture returns unused hold, or charges
/// at most what was read as available), so their sum does too.
#[derive(Default)]
pub(super) struct AccountDeltas {
    pending: FastMap<String, (i64, i64)>,
}

impl AccountDeltas {
    fn add(
        &mut self,
        tx: &mut Stmts<'_>,
        account: &str,
        available: i64,
        reserved: i64,
    ) -> Result<(), StoreError> {
        if let Some((a, r)) = self.pending.get_mut(account) {
            if let (Some(a2), Some(r2)) = (a.checked_add(available), r.checked_add(reserved)) {
                (*a, *r) = (a2, r2);
                return Ok(());
            }
            // Sums that would overflow (never with real amounts): apply what is pending first.
            self.apply(tx)?;
        }
        self.pending
            .insert(account.to_string(), (available, reserved));
        Ok(())
    }

    /// Applies and forgets what is pending.
    pub(super) fn apply(&mut self, tx: &mut Stmts<'_>) -> Result<(), StoreError> {
        for (account, (available, reserved)) in self.pending.drain() {
            if available != 0 || reserved != 0 {
                move_money(tx, &account, available, reserved)?;
            }
        }
        Ok(())
    }
}

/// Deletes the heartbeats' record of a call whose hold is no longer open (there may be none).
fn delete_hold_record(tx: &mut Stmts<'_>, request_id: &str) -> Result<(), StoreError> {
    tx.get(Q::DeleteHoldRecord)?
        .execute([request_id])
        .map_err(db_err)?;
    Ok(())
}

fn available_of(tx: &mut Stmts<'_>, account: &str) -> Result<i64, StoreError> {
    Ok(tx
        .get(Q::AvailableOf)?
        .query_row([account], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(db_err)?
        .unwrap_or(0))
}

/// Claims a call's reservation for its settlement: deletes its row, so only one settlement can
/// claim it (a reservation row lives while its hold is open; migration 11). Returns the amount
/// it held, or `None` when there is none (never held, or released by reconcile).
///
/// The record carries the amount its call reserved, so the usual claim is one conditional
/// delete by key, with that amount in the condition. Only when it touches nothing (no hold, or
/// one of another amount, which would be a bug to survive rather than trust) does the claim read
/// the row: a read, then the delete by key. The write transaction holds SQLite's one write lock
/// from its first statement, so nothing settles the row in between. (`DELETE ... RETURNING`
/// would be one statement, but SQLite runs it through an ephemeral table: BENCHMARKS.md,
/// "Instruction counts".)
fn claim_reservation(tx: &mut Stmts<'_>, r: &UsageRecord) -> Result<Option<i64>, StoreError> {
    let claimed = tx
        .get(Q::ClaimReservation)?
        .execute(params![r.id, r.billing.reserved_units])
        .map_err(db_err)?;
    if claimed == 1 {
        return Ok(Some(r.billing.reserved_units));
    }
    let held: Option<i64> = tx
        .get(Q::HeldAmount)?
        .query_row([&r.id], |row| row.get(0))
        .optional()
        .map_err(db_err)?;
    if held.is_some() {
        tx.get(Q::DeleteReservation)?
            .execute([&r.id])
            .map_err(db_err)?;
    }
    Ok(held)
}

/// Settles a just-inserted usage record (same transaction): claims its open reservation,
/// charges the cost, returns the rest; exactly one `capture` entry per settled call.
pub(super) fn settle_in_tx(
    tx: &mut Stmts<'_>,
    r: &UsageRecord,
    deltas: &mut AccountDeltas,
) -> Result<(), StoreError> {
    let Some(account) = r.billing.account.as_deref() else {
        return Ok(());
    };
    let now_ms = crate::hub::now_ms();
    let held = claim_reservation(tx, r)?;
    let reserved = held.unwrap_or(0);
    let cost = r.billing.cost_units.max(0);
    if held.is_none() && cost == 0 && r.billing.reserved_units <= 0 {
        // Nothing held, owed or reserved: the record is its own zero-cost marker. Anything else
        // gets its capture, even of nothing: a claimed hold (of 0, say) is settled by one, and a
        // record that reserved keeps its capture when reconcile released the hold before it came.
        return Ok(());
    }
    // Never overdraw: what exceeds reservation + available is written off (and flagged). A cost
    // within the hold (the usual case) is charged from it as it is; only a cost above it, or a
    // call without a hold, needs the balance, and the account, which it may not have yet.
    let charged = if held.is_some() && cost <= reserved {
        cost
    } else {
        // The balance is read as of this record: the batch's earlier captures are applied first.
        deltas.apply(tx)?;
        ensure_account(tx, account, None, now_ms)?;
        let available = available_of(tx, account)?;
        cost.min(reserved.saturating_add(available))
    };
    let shortfall = cost - charged;
    let key = format!("capture:{}", r.id);
    let inserted = insert_entry(
        tx,
        &NewEntry {
            account,
            kind: "capture",
            // What the call cost the account, net of its hold (taken and returned): the entry
            // records the money that moved, the hold is the reservation row's.
            available_delta: -charged,
            reserved_delta: 0,
            charged,
            request_id: Some(&r.id),
            idem_key: &key,
            expires_at_ms: None,
            note: (shortfall > 0)
                .then_some("cost above reservation and balance; shortfall written off"),
            now_ms,
        },
    )?;
    if !inserted {
        // Settled before (cannot happen with a fresh record id; kept as a guard).
        return Err(StoreError::Conflict(format!(
            "request {} settled twice",
            r.id
        )));
    }
    deltas.add(tx, account, reserved - charged, -reserved)?;
    if held.is_some() && r.stream {
        // A stream's hold may have a heartbeat's record (migration 12); only streams have one.
        delete_hold_record(tx, &r.id)?;
    }
    if shortfall > 0 {
        tx.get(Q::Shortfall)?
            .execute(params![r.id, shortfall])
            .map_err(db_err)?;
    }
    Ok(())
}

/// Roll-up rows of one group-commit batch, summed in memory and written with one UPSERT per
/// distinct row, not one per record: the 15-minute bucket (any zone, any range), the UTC day,
/// and the day in each configured report time zone. A row's key borrows its names from the
/// batch's records, which outlive it: summing a record allocates nothing, where an owned key
/// copied five strings per roll-up for each record (BENCHMARKS.md, eighteenth session).
#[derive(Default)]
pub(super) struct RollupBatch<'r> {
    rows: FastMap<RollKey<'r>, Sums>,
}

/// Which roll-up a row belongs to: 15-minute, UTC day, or a zone's day (its index).
#[derive(Hash, PartialEq, Eq, Clone, Copy)]
enum Grain {
    Quarter,
    UtcDay,
    ZoneDay(usize),
}

#[derive(Hash, PartialEq, Eq)]
struct RollKey<'r> {
    grain: Grain,
    /// Bucket start (ms) for `Quarter` / `UtcDay`; the local date (days since 1970) for `ZoneDay`.
    bucket: i64,
    user: &'r str,
    team: &'r str,
    app: &'r str,
    provider: &'r str,
    model: &'r str,
}

#[derive(Default)]
struct Sums {
    calls: i64,
    success_calls: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    images: i64,
    cost_units: i64,
    provider_cost_units: i64,
}

impl<'r> RollupBatch<'r> {
    /// Counts a newly inserted record (`zones`: the configured non-UTC report zones).
    pub(super) fn add(&mut self, r: &'r UsageRecord, zones: &[ReportZone]) {
        let model = r.upstream_model.as_deref().unwrap_or(&r.requested_model);
        let success = i64::from(r.status == crate::store::CallStatus::Success);
        let at = r.created_at_ms;
        let grains = [
            (Grain::Quarter, at.div_euclid(BUCKET_MS) * BUCKET_MS),
            (Grain::UtcDay, at.div_euclid(DAY_MS) * DAY_MS),
        ]
        .into_iter()
        .chain(
            zones
                .iter()
                .enumerate()
                .map(|(i, z)| (Grain::ZoneDay(i), z.local_day(at))),
        );
        for (grain, bucket) in grains {
            let s = self
                .rows
                .entry(RollKey {
                    grain,
                    bucket,
                    user: &r.user_id,
                    team: r.team_id.as_deref().unwrap_or_default(),
                    app: r.app.as_deref().unwrap_or_default(),
                    provider: r.provider.as_deref().unwrap_or_default(),
                    model,
                })
                .or_default();
            s.calls += 1;
            s.success_calls += success;
            s.prompt_tokens += r.prompt_tokens as i64;
            s.completion_tokens += r.completion_tokens as i64;
            s.images += r.images as i64;
            s.cost_units += r.billing.cost_units;
            s.provider_cost_units += r.billing.provider_cost_units;
        }
    }

    /// Writes the summed rows (same transaction as the records): an `UPDATE` of the row by its
    /// key, and an `INSERT` only when it touched nothing (the bucket's first call for that user,
    /// team, app, provider and model). Most rows exist, and an `INSERT ... ON CONFLICT DO UPDATE`
    /// looks the key up twice (the conflict, then the update) where the `UPDATE` looks it up
    /// once. The transaction holds the write lock, so no row appears between the two; a plain
    /// `INSERT` (no `ON CONFLICT`) makes an `UPDATE` that missed its row an error, not a silent
    /// double cost. The statements are the transaction's (`Stmts`): with many users a batch
    /// writes a row per call and roll-up, and each statement is taken from rusqlite's cache once
    /// per transaction, not once per row.
    pub(super) fn write(self, tx: &mut Stmts<'_>, zones: &[ReportZone]) -> Result<(), StoreError> {
        let zone_keys: Vec<String> = zones.iter().map(ReportZone::key).collect();
        for (k, s) in &self.rows {
            let row = params![
                k.bucket,
                k.user,
                k.team,
                k.app,
                k.provider,
                k.model,
                s.calls,
                s.success_calls,
                s.prompt_tokens,
                s.completion_tokens,
                s.images,
                s.cost_units,
                s.provider_cost_units,
            ];
            let mut with_zone: Vec<&dyn rusqlite::ToSql>;
            let ((update, insert), row) = match k.grain {
                Grain::Quarter => ((Q::QuarterUpdate, Q::QuarterInsert), row),
                Grain::UtcDay => ((Q::DayUpdate, Q::DayInsert), row),
                Grain::ZoneDay(i) => {
                    // The batch was summed with `zones`, so the index names one of them.
                    let Some(zone) = zone_keys.get(i) else {
                        return Err(StoreError::Db(format!(
                            "roll-up zone {i} is not configured"
                        )));
                    };
                    with_zone = row.to_vec();
                    with_zone.push(zone);
                    ((Q::ZoneDayUpdate, Q::ZoneDayInsert), with_zone.as_slice())
                }
            };
            if tx.get(update)?.execute(row).map_err(db_err)? == 0 {
                tx.get(insert)?.execute(row).map_err(db_err)?;
            }
        }
        Ok(())
    }
}

/// (Re)builds a zone's day roll-up from the exact 15-minute roll-up (same transaction).
fn rebuild_zone_days(tx: &Transaction<'_>, zone: &ReportZone) -> Result<u64, StoreError> {
    let key = zone.key();
    tx.execute("DELETE FROM usage_rollup_zone_day WHERE zone = ?1", [&key])
        .map_err(db_err)?;
    let range: (Option<i64>, Option<i64>) = tx
        .query_row(
            "SELECT MIN(bucket_ms), MAX(bucket_ms) FROM usage_rollup",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db_err)?;
    let (Some(lo), Some(hi)) = range else {
        return Ok(0);
    };
    let hi = hi + BUCKET_MS;
    if !zone.fits_buckets(lo, hi) {
        return Err(StoreError::Conflict(format!(
            "time zone {key} has offsets off the 15-minute grid within the usage history, so its days cannot be built from the 15-minute roll-up"
        )));
    }
    let offset = offset_sql(&zone.offsets_between(lo, hi), "bucket_ms");
    let n = tx
        .execute(
            &format!(
                "INSERT INTO usage_rollup_zone_day (zone, day, user_id, team_id, app, provider, model, calls, success_calls,
                   prompt_tokens, completion_tokens, images, cost_units, provider_cost_units)
                 SELECT ?1, (bucket_ms + {offset}) / {DAY_MS}, user_id, team_id, app, provider, model, SUM(calls),
                   SUM(success_calls), SUM(prompt_tokens), SUM(completion_tokens), SUM(images), SUM(cost_units),
                   SUM(provider_cost_units)
                 FROM usage_rollup GROUP BY 2, 3, 4, 5, 6, 7"
            ),
            [&key],
        )
        .map_err(db_err)?;
    Ok(n as u64)
}

/// The open holds `reconcile` releases: older than the window (`?3`), or held by another instance
/// that is dead (no heartbeat since `?2`, or unknown). Runs every heartbeat under the writer's
/// lock and reads `reservations` whole: since migration 11 it holds the calls in flight only
/// (a settled call's row is deleted), so there is no index of open holds to keep per call. The
/// live instances are read once (`NOT IN`), not looked up per hold as a join would: ~85 ns a
/// hold against ~170 ns at 100,000 holds; the join took 0.6 ms at 5,000 (BENCHMARKS.md,
/// seventeenth session).
pub(super) const STALE_HOLDS_SQL: &str =
    "SELECT r.request_id, r.account, r.amount, r.progress, r.instance, r.created_at_ms FROM reservations r
     WHERE r.created_at_ms < ?3 OR (r.instance != ?1 AND r.instance NOT IN
       (SELECT id FROM instances WHERE heartbeat_ms >= ?2 AND id IS NOT NULL))";

/// An open hold `reconcile` found stale (`STALE_HOLDS_SQL`'s row).
struct StaleHold {
    request_id: String,
    account: String,
    amount: i64,
    /// The last heartbeat's progress of its stream (JSON), over the record the first stored.
    progress: Option<String>,
    instance: String,
    created_at_ms: i64,
}

/// Records a hold reconcile settled (`outcome`: `released`, or `captured` for what its stream
/// had delivered); its row has left `reservations`.
fn record_reconciled(
    tx: &rusqlite::Transaction<'_>,
    h: &StaleHold,
    now_ms: i64,
    outcome: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO reconciled_holds (request_id, account, amount, instance, created_at_ms, reconciled_at_ms, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (request_id) DO NOTHING",
        params![h.request_id, h.account, h.amount, h.instance, h.created_at_ms, now_ms, outcome],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Holds each reservation of a batch (one conditional UPDATE each), in the caller's transaction.
pub(super) fn reserve_in_tx(
    tx: &mut Stmts<'_>,
    batch: &[ReserveReq],
) -> Result<Vec<ReserveOutcome>, StoreError> {
    batch.iter().map(|q| reserve_one(tx, q)).collect()
}

fn reserve_one(tx: &mut Stmts<'_>, q: &ReserveReq) -> Result<ReserveOutcome, StoreError> {
    // The reservation row first: its key refuses a second hold under the same request id, so no
    // separate lookup is needed.
    let inserted = tx
        .get(Q::InsertReservation)?
        .execute(params![
            q.request_id,
            q.account,
            q.amount,
            q.instance,
            q.now_ms
        ])
        .map_err(db_err)?;
    if inserted == 0 {
        return Ok(ReserveOutcome::Duplicate);
    }
    // The one conditional update that keeps available >= 0 under any concurrency.
    let hold = |tx: &mut Stmts<'_>| -> Result<usize, StoreError> {
        tx.get(Q::Hold)?
            .execute(params![q.account, q.amount])
            .map_err(db_err)
    };
    let mut n = hold(tx)?;
    if n == 0 {
        // Not enough, or no account yet: a user's first call creates it, with its starter
        // credits, and tries again. (Creating it up front would be a statement on every call.)
        ensure_account(tx, &q.account, q.starter.as_ref(), q.now_ms)?;
        n = hold(tx)?;
    }
    if n == 0 {
        // Refused: the row just inserted goes again, so the request id is free to retry.
        tx.get(Q::DeleteReservation)?
            .execute([&q.request_id])
            .map_err(db_err)?;
        return Ok(ReserveOutcome::Insufficient {
            available: available_of(tx, &q.account)?,
        });
    }
    // No ledger entry: a hold moves no money. The reservation row is its record (`verify`
    // checks `reserved` against the open ones), and the call's capture is its one entry.
    Ok(ReserveOutcome::Reserved)
}

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerEntry> {
    Ok(LedgerEntry {
        id: r.get(0)?,
        account: r.get(1)?,
        kind: r.get(2)?,
        available_delta: r.get(3)?,
        reserved_delta: r.get(4)?,
        charged: r.get(5)?,
        request_id: r.get(6)?,
        idem_key: r.get(7)?,
        expires_at_ms: r.get(8)?,
        note: r.get(9)?,
        created_at_ms: r.get(10)?,
    })
}

const ENTRY_COLUMNS: &str = "id, account, kind, available_delta, reserved_delta, charged, request_id, idem_key, expires_at_ms, note, created_at_ms";

fn entries_of(c: &rusqlite::Connection, account: &str) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE account = ?1 ORDER BY id"
        ))
        .map_err(db_err)?;
    let rows = st.query_map([account], entry_from_row).map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

fn verify_in(
    c: &rusqlite::Connection,
    now_ms: i64,
    window_ms: i64,
) -> Result<VerifyReport, StoreError> {
    let mut rep = VerifyReport::default();
    let one = |sql: &str| -> Result<i64, StoreError> {
        c.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .map(|v| v.unwrap_or(0))
            .map_err(db_err)
    };
    rep.accounts = one("SELECT COUNT(*) FROM ledger_accounts")? as u64;
    rep.entries = one("SELECT COUNT(*) FROM ledger_entries")? as u64;
    rep.usage_records = one("SELECT COUNT(*) FROM usage_records")? as u64;
    rep.captures = one("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'capture'")? as u64;
    rep.open_reservations = one("SELECT COUNT(*) FROM reservations")? as u64;
    rep.reconciled_reservations = one("SELECT COUNT(*) FROM reconciled_holds")? as u64;
    rep.total_available = one("SELECT SUM(available) FROM ledger_accounts")?;
    rep.total_reserved = one("SELECT SUM(reserved) FROM ledger_accounts")?;
    rep.total_granted = one(
        "SELECT SUM(available_delta) FROM ledger_entries WHERE kind IN ('grant', 'starter', 'adjust')",
    )?;
    rep.total_charged = one("SELECT SUM(charged) FROM ledger_entries")?;
    rep.total_shortfall = one("SELECT SUM(shortfall_units) FROM usage_records")?;
    rep.total_expired =
        -one("SELECT SUM(available_delta) FROM ledger_entries WHERE kind = 'expire'")?;
    let mut v = Vec::new();
    let mut q = |sql: &str,
                 f: &dyn Fn(&rusqlite::Row<'_>) -> rusqlite::Result<String>|
     -> Result<(), StoreError> {
        let mut st = c.prepare(sql).map_err(db_err)?;
        let rows = st.query_map([], |r| f(r)).map_err(db_err)?;
        for row in rows.take(1000) {
            v.push(row.map_err(db_err)?);
        }
        Ok(())
    };
    // 1. balance (available + reserved) = Σ entries for every account (and no account without
    //    entries holding money). Holds are not entries (check 2 pins `reserved` to the open
    //    reservations), so `available` is pinned too. Entries written before holds stopped being
    //    entries (`reserve` -x/+x, `release` +x/-x, a capture's hold returned) sum to nothing
    //    across the two buckets, so old ledgers pass the same check.
    q(
        "SELECT a.id, a.available, a.reserved, COALESCE(SUM(e.available_delta + e.reserved_delta), 0)
         FROM ledger_accounts a LEFT JOIN ledger_entries e ON e.account = a.id
         GROUP BY a.id HAVING a.available + a.reserved != COALESCE(SUM(e.available_delta + e.reserved_delta), 0)",
        &|r| {
            Ok(format!(
                "account {}: balance {} (available {} + reserved {}) but entries sum to {}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?.saturating_add(r.get::<_, i64>(2)?),
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?
            ))
        },
    )?;
    q(
        "SELECT DISTINCT e.account FROM ledger_entries e LEFT JOIN ledger_accounts a ON a.id = e.account WHERE a.id IS NULL",
        &|r| {
            Ok(format!(
                "entries for missing account {}",
                r.get::<_, String>(0)?
            ))
        },
    )?;
    q(
        "SELECT id, available, reserved FROM ledger_accounts WHERE available < 0 OR reserved < 0",
        &|r| Ok(format!("account {} is negative", r.get::<_, String>(0)?)),
    )?;
    // 2. reserved = Σ open reservations.
    q(
        "SELECT a.id, a.reserved, COALESCE((SELECT SUM(amount) FROM reservations r WHERE r.account = a.id), 0) AS held
         FROM ledger_accounts a WHERE a.reserved != held",
        &|r| {
            Ok(format!(
                "account {}: reserved {} but open reservations hold {}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?
            ))
        },
    )?;
    // ... and a heartbeat's record of a stream belongs to an open hold: settling or
    // reconciling the hold deletes it (migration 12).
    q(
        "SELECT h.request_id FROM hold_records h
         WHERE NOT EXISTS (SELECT 1 FROM reservations r WHERE r.request_id = h.request_id)",
        &|r| {
            Ok(format!(
                "request {}: a heartbeat's record of its stream outlived its hold",
                r.get::<_, String>(0)?
            ))
        },
    )?;
    // 3. every capture has exactly one usage record (same id, same account, same amount) ...
    q(
        "SELECT e.request_id, e.charged, u.id, u.cost_units - u.shortfall_units, u.account, e.account
         FROM ledger_entries e LEFT JOIN usage_records u ON u.id = e.request_id
         WHERE e.kind = 'capture' AND (u.id IS NULL OR u.cost_units - u.shortfall_units != e.charged OR u.account IS NOT e.account)",
        &|r| {
            Ok(match r.get::<_, Option<String>>(2)? {
                None => format!("capture for request {} has no usage record", r.get::<_, String>(0)?),
                Some(id) => format!(
                    "capture for request {id} charged {} but its record says {} (account {:?} vs {})",
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?
                ),
            })
        },
    )?;
    // ... and every usage record that reserved or cost credits has exactly one capture.
    q(
        "SELECT u.id FROM usage_records u
         WHERE u.account IS NOT NULL AND (u.reserved_units > 0 OR u.cost_units > 0)
           AND NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.idem_key = 'capture:' || u.id)",
        &|r| {
            Ok(format!(
                "usage record {} has no capture",
                r.get::<_, String>(0)?
            ))
        },
    )?;
    q(
        "SELECT request_id, COUNT(*) FROM ledger_entries WHERE kind = 'capture' GROUP BY request_id HAVING COUNT(*) > 1",
        &|r| {
            Ok(format!(
                "request {} captured more than once",
                r.get::<_, String>(0)?
            ))
        },
    )?;
    // 4. holds: none is still held for a call already captured (settling a call deletes its
    //    hold in the capture's transaction), and each hold reconcile captured has its capture,
    //    for the same account.
    q(
        "SELECT r.request_id FROM reservations r
         WHERE EXISTS (SELECT 1 FROM ledger_entries e WHERE e.idem_key = 'capture:' || r.request_id)",
        &|r| {
            Ok(format!(
                "reservation {} is still held but its call was captured",
                r.get::<_, String>(0)?
            ))
        },
    )?;
    q(
        "SELECT h.request_id FROM reconciled_holds h WHERE h.outcome = 'captured' AND NOT EXISTS
           (SELECT 1 FROM ledger_entries e WHERE e.idem_key = 'capture:' || h.request_id AND e.account = h.account)",
        &|r| {
            Ok(format!(
                "reservation {} (reconciled, captured) has no capture",
                r.get::<_, String>(0)?
            ))
        },
    )?;
    // 5. nothing stays reserved past the window.
    let cutoff = now_ms - window_ms;
    let mut st = c
        .prepare("SELECT request_id, created_at_ms FROM reservations WHERE created_at_ms < ?1 LIMIT 1000")
        .map_err(db_err)?;
    let rows = st
        .query_map([cutoff], |r| {
            Ok(format!(
                "reservation {} open for {} s (window {} s)",
                r.get::<_, String>(0)?,
                (now_ms - r.get::<_, i64>(1)?) / 1000,
                window_ms / 1000
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        v.push(row.map_err(db_err)?);
    }
    rep.violations = v;
    Ok(rep)
}

fn price_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Price> {
    let id: i64 = r.get(0)?;
    let provider = kind_of(&r.get::<_, String>(1)?)?;
    let model: String = r.get(2)?;
    let ty: String = r.get(3)?;
    let terms: String = r.get(4)?;
    let source: String = r.get(5)?;
    let created_at_ms: i64 = r.get(6)?;
    let model_type = match ty.as_str() {
        "embedding" => ModelType::Embedding,
        "image" => ModelType::Image,
        _ => ModelType::Chat,
    };
    let t: Terms = serde_json::from_str(&terms).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Price {
        version: id,
        provider,
        model,
        model_type,
        unit: t.unit,
        margin_pct: t.margin_pct,
        rates: t.rates,
        source,
        created_at_ms,
        disabled: t.disabled,
    })
}

/// The JSON stored per price version (decimals as strings).
#[derive(serde::Serialize, serde::Deserialize)]
struct Terms {
    #[serde(default)]
    unit: Option<crate::pricing::Rates>,
    #[serde(default)]
    margin_pct: Option<rust_decimal::Decimal>,
    rates: crate::pricing::Rates,
    /// A disabled version: the model has no price from it on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    disabled: bool,
}

/// Appends price versions inside a transaction; returns their version ids.
pub(super) fn insert_prices_tx(
    tx: &rusqlite::Transaction<'_>,
    prices: &[Price],
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::with_capacity(prices.len());
    for p in prices {
        let terms = serde_json::to_string(&Terms {
            unit: p.unit.clone(),
            margin_pct: p.margin_pct,
            rates: p.rates.clone(),
            disabled: p.disabled,
        })
        .map_err(|e| StoreError::Db(e.to_string()))?;
        tx.execute(
            "INSERT INTO prices (provider, model, model_type, terms, source, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![p.provider.name(), p.model, p.model_type.as_str(), terms, p.source, p.created_at_ms],
        )
        .map_err(db_err)?;
        ids.push(tx.last_insert_rowid());
    }
    Ok(ids)
}

/// A grant or adjustment inside a transaction. `Insufficient` and `Replayed` change nothing the
/// caller keeps: `commit_audited` rolls such a transaction back.
pub(super) fn grant_tx(
    tx: &rusqlite::Transaction<'_>,
    req: &GrantReq,
) -> Result<Applied, StoreError> {
    let tx = &mut Stmts::new(tx);
    ensure_account(tx, &req.account, req.starter.as_ref(), req.now_ms)?;
    let available = available_of(tx, &req.account)?;
    let done = |outcome, after| Applied::Grant {
        outcome,
        available_before: available,
        available_after: after,
    };
    if req.amount < 0 && available + req.amount < 0 {
        return Ok(done(GrantOutcome::Insufficient { available }, available));
    }
    if req.kind == GrantKind::Grant && req.amount <= 0 {
        return Err(StoreError::Conflict("a grant must be positive".into()));
    }
    let inserted = insert_entry(
        tx,
        &NewEntry {
            account: &req.account,
            kind: req.kind.as_str(),
            available_delta: req.amount,
            reserved_delta: 0,
            charged: 0,
            request_id: None,
            idem_key: &req.idem_key,
            expires_at_ms: req.expires_at_ms,
            note: req.note.as_deref(),
            now_ms: req.now_ms,
        },
    )?;
    if !inserted {
        return Ok(done(GrantOutcome::Replayed, available));
    }
    move_money(tx, &req.account, req.amount, 0)?;
    Ok(done(GrantOutcome::Applied, available + req.amount))
}

fn filter_sql(
    since: Option<i64>,
    until: Option<i64>,
    user: &Option<String>,
    team: &Option<String>,
    app: &Option<String>,
    time_col: &str,
) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut w = vec!["1 = 1".to_string()];
    let mut p: Vec<Value> = Vec::new();
    if let Some(s) = since {
        p.push(Value::Integer(s));
        w.push(format!("{time_col} >= ?{}", p.len()));
    }
    if let Some(u) = until {
        p.push(Value::Integer(u));
        w.push(format!("{time_col} < ?{}", p.len()));
    }
    for (col, v) in [("user_id", user), ("team_id", team), ("app", app)] {
        if let Some(v) = v {
            p.push(Value::Text(v.clone()));
            w.push(format!("{col} = ?{}", p.len()));
        }
    }
    (w.join(" AND "), p)
}

/// The roll-up a report reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rollup {
    /// UTC days (`usage_rollup_day`).
    UtcDay,
    /// Days of a configured report zone (`usage_rollup_zone_day`).
    ZoneDay,
    /// 15-minute buckets (`usage_rollup`): any zone, any range.
    Quarter,
}

/// A day roll-up when the range is whole days in the report's zone (UTC days, or the days kept
/// for a configured zone; about 100 times fewer rows), else the 15-minute one (exact for every
/// zone: offsets and DST transitions fall on its 15-minute grid). Both give the same figures.
fn rollup_for(q: &ReportQuery, built: &[ReportZone]) -> Rollup {
    let zone = q.zone();
    let whole_days = |t: Option<i64>| t.is_none_or(|t| zone.is_day_start(t));
    let days = q.period != Some(Period::Hour) && whole_days(q.since_ms) && whole_days(q.until_ms);
    if days && zone.is_utc() {
        Rollup::UtcDay
    } else if days && built.contains(&zone) {
        Rollup::ZoneDay
    } else {
        Rollup::Quarter
    }
}

fn quarter_range(c: &rusqlite::Connection) -> Result<(Option<i64>, Option<i64>), StoreError> {
    c.query_row(
        "SELECT MIN(bucket_ms), MAX(bucket_ms) FROM usage_rollup",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .map_err(db_err)
}

impl SqliteStore {
    /// The roll-up table `usage_report` reads for a query (for tests and benchmarks).
    pub fn report_source(&self, q: &ReportQuery) -> &'static str {
        match rollup_for(q, &self.report_zones.read()) {
            Rollup::UtcDay => "usage_rollup_day",
            Rollup::ZoneDay => "usage_rollup_zone_day",
            Rollup::Quarter => "usage_rollup",
        }
    }
}

#[async_trait]
impl LedgerStore for SqliteStore {
    async fn reserve(&self, batch: &[ReserveReq]) -> Result<Vec<ReserveOutcome>, StoreError> {
        self.reserve_owned(batch.to_vec()).await
    }

    async fn reserve_owned(
        &self,
        reqs: Vec<ReserveReq>,
    ) -> Result<Vec<ReserveOutcome>, StoreError> {
        self.hot_write(|done| super::HotOp::Reserve { reqs, done })
            .await
    }

    async fn grant(&self, req: &GrantReq) -> Result<GrantOutcome, StoreError> {
        match self
            .commit_audited(Change::Grant(req.clone()), None)
            .await?
        {
            Applied::Grant { outcome, .. } => Ok(outcome),
            other => Err(StoreError::Db(format!("a grant applied as {other:?}"))),
        }
    }

    async fn balance(&self, account: &str) -> Result<Option<AccountBalance>, StoreError> {
        let account = account.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT id, available, reserved FROM ledger_accounts WHERE id = ?1",
                [&account],
                |r| {
                    Ok(AccountBalance {
                        account: r.get(0)?,
                        available: r.get(1)?,
                        reserved: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn entries(&self, account: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        let account = account.to_string();
        self.read(move |c| entries_of(c, &account)).await
    }

    async fn entries_page(
        &self,
        account: &str,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let account = account.to_string();
        self.read(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE account = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
                ))
                .map_err(db_err)?;
            let rows = st
                .query_map(params![account, after_id, limit], entry_from_row)
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn verify(&self, now_ms: i64, window_ms: i64) -> Result<VerifyReport, StoreError> {
        // One read transaction: a consistent snapshot even while `serve` writes.
        self.read(move |c| {
            c.execute_batch("BEGIN").map_err(db_err)?;
            let rep = verify_in(c, now_ms, window_ms);
            let _ = c.execute_batch("COMMIT");
            rep
        })
        .await
    }

    async fn reconcile(
        &self,
        me: &str,
        now_ms: i64,
        stale_before_ms: i64,
        older_than_ms: i64,
    ) -> Result<ReconcileReport, StoreError> {
        let me = me.to_string();
        let report_zones = self.report_zones.clone();
        self.write(move |c| {
            let zones = report_zones.read().clone();
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let stale: Vec<StaleHold> = {
                let mut st = tx.prepare(STALE_HOLDS_SQL).map_err(db_err)?;
                let rows = st
                    .query_map(params![me, stale_before_ms, older_than_ms], |r| {
                        Ok(StaleHold {
                            request_id: r.get(0)?,
                            account: r.get(1)?,
                            amount: r.get(2)?,
                            progress: r.get(3)?,
                            instance: r.get(4)?,
                            created_at_ms: r.get(5)?,
                        })
                    })
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?
            };
            let mut rep = ReconcileReport::default();
            for h in stale {
                // A stream that had delivered something by its last heartbeat: its record (as
                // the heartbeats left it: estimated, flagged `reconciled`) is written and settled
                // now, which charges the delivered part and returns the rest.
                // (Looked up for a stale hold alone: a join in the scan, which runs at every
                // beat and almost always finds none, had SQLite build a Bloom filter of every
                // stream's record first.)
                let record: Option<String> = tx
                    .query_row(
                        "SELECT record FROM hold_records WHERE request_id = ?1",
                        [&h.request_id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?;
                if let Some(mut rec) = record
                    .as_deref()
                    .and_then(|j| serde_json::from_str::<UsageRecord>(j).ok())
                    .filter(|r| {
                        r.id == h.request_id
                            && r.billing.account.as_deref() == Some(h.account.as_str())
                    })
                {
                    // The last beat's progress, when it came after the record's.
                    if let Some(p) = h
                        .progress
                        .as_deref()
                        .and_then(|j| serde_json::from_str::<StreamProgress>(j).ok())
                    {
                        p.apply(&mut rec);
                    }
                    rec.billing.reserved_units = h.amount;
                    super::insert_usage_in_tx(
                        &mut Stmts::new(&tx),
                        std::slice::from_ref(&rec),
                        &zones,
                    )?;
                    // Settling it claimed (deleted) the hold and captured what was delivered;
                    // a hold still there was not settled (the record existed already).
                    let captured: Option<i64> = tx
                        .query_row(
                            "SELECT charged FROM ledger_entries WHERE idem_key = 'capture:' || ?1
                               AND NOT EXISTS (SELECT 1 FROM reservations WHERE request_id = ?1)",
                            [&h.request_id],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(db_err)?;
                    if let Some(charged) = captured {
                        record_reconciled(&tx, &h, now_ms, "captured")?;
                        rep.captured += 1;
                        rep.captured_units += charged;
                        continue;
                    }
                }
                let n = tx
                    .execute(
                        "DELETE FROM reservations WHERE request_id = ?1",
                        [&h.request_id],
                    )
                    .map_err(db_err)?;
                if n == 0 {
                    continue;
                }
                delete_hold_record(&mut Stmts::new(&tx), &h.request_id)?;
                // The hold goes back; no ledger entry, as no money moved (`reconciled_holds`
                // records it). Deleting the row above makes this happen once.
                record_reconciled(&tx, &h, now_ms, "released")?;
                move_money(&mut Stmts::new(&tx), &h.account, h.amount, -h.amount)?;
                rep.released += 1;
                rep.released_units += h.amount;
            }
            tx.commit().map_err(db_err)?;
            Ok(rep)
        })
        .await
    }

    async fn heartbeat(
        &self,
        id: &str,
        now_ms: i64,
        streams: &[StreamBeat],
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        // (request id, the record's JSON if not stored yet, else the progress's JSON).
        let mut beats = Vec::with_capacity(streams.len());
        for b in streams {
            let json = if b.stored {
                serde_json::to_string(&StreamProgress::of(&b.record))
            } else {
                serde_json::to_string(&b.record)
            };
            let json = json.map_err(|e| StoreError::Db(e.to_string()))?;
            beats.push((b.record.id.clone(), b.stored, json));
        }
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            tx.execute(
                "INSERT INTO instances (id, heartbeat_ms) VALUES (?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
                params![id, now_ms],
            )
            .map_err(db_err)?;
            {
                // A record only for a hold still open: a stream settled since its beat was
                // gathered has claimed its row, and nothing would delete a record stored now.
                let mut record = tx
                    .prepare_cached(
                        "INSERT INTO hold_records (request_id, record)
                         SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM reservations WHERE request_id = ?1)
                         ON CONFLICT (request_id) DO UPDATE SET record = excluded.record",
                    )
                    .map_err(db_err)?;
                let mut progress = tx
                    .prepare_cached("UPDATE reservations SET progress = ?2 WHERE request_id = ?1")
                    .map_err(db_err)?;
                for (req, stored, json) in &beats {
                    if *stored {
                        progress.execute(params![req, json]).map_err(db_err)?;
                    } else if record.execute(params![req, json]).map_err(db_err)? == 1 {
                        // The record is as of now; no earlier progress lies over it.
                        progress
                            .execute(params![req, None::<&str>])
                            .map_err(db_err)?;
                    }
                }
            }
            // Forget instances gone for a day.
            tx.execute(
                "DELETE FROM instances WHERE heartbeat_ms < ?1",
                [now_ms - 86_400_000],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn expire_grants(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let due: Vec<(i64, String)> = {
                let mut st = tx
                    .prepare(
                        "SELECT g.id, g.account FROM ledger_entries g
                         WHERE g.expires_at_ms IS NOT NULL AND g.expires_at_ms <= ?1 AND g.available_delta > 0
                           AND NOT EXISTS (SELECT 1 FROM ledger_entries x WHERE x.idem_key = 'expire:' || g.id)
                         ORDER BY g.expires_at_ms, g.id",
                    )
                    .map_err(db_err)?;
                let rows = st
                    .query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?
            };
            let mut n = 0;
            for (grant_id, account) in due {
                let entries = entries_of(&tx, &account)?;
                let unused = expiry::unused_of_grant(&entries, grant_id);
                // What is reserved in flight stays; only available credit can expire.
                let stmts = &mut Stmts::new(&tx);
                let amount = unused.min(available_of(stmts, &account)?).max(0);
                let key = format!("expire:{grant_id}");
                if insert_entry(
                    stmts,
                    &NewEntry {
                        account: &account,
                        kind: "expire",
                        available_delta: -amount,
                        reserved_delta: 0,
                        charged: 0,
                        request_id: None,
                        idem_key: &key,
                        expires_at_ms: None,
                        note: Some("unused part of an expired grant"),
                        now_ms,
                    },
                )? {
                    move_money(stmts, &account, -amount, 0)?;
                    n += 1;
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(n)
        })
        .await
    }

    async fn insert_prices(&self, prices: &[Price]) -> Result<Vec<i64>, StoreError> {
        match self
            .commit_audited(Change::InsertPrices(prices.to_vec()), None)
            .await?
        {
            Applied::Prices(ids) => Ok(ids),
            other => Err(StoreError::Db(format!("prices applied as {other:?}"))),
        }
    }

    async fn list_prices(&self, history: bool) -> Result<Vec<Price>, StoreError> {
        self.read(move |c| {
            let sql = if history {
                "SELECT id, provider, model, model_type, terms, source, created_at_ms FROM prices ORDER BY id"
            } else {
                "SELECT p.id, p.provider, p.model, p.model_type, p.terms, p.source, p.created_at_ms FROM prices p
                 WHERE p.id = (SELECT MAX(q.id) FROM prices q WHERE q.provider = p.provider AND q.model = p.model AND q.model_type = p.model_type)
                 ORDER BY p.provider, p.model, p.model_type"
            };
            let mut st = c.prepare(sql).map_err(db_err)?;
            let rows = st.query_map([], price_from_row).map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn set_report_zones(&self, zones: &[ReportZone]) -> Result<ZoneRebuild, StoreError> {
        let mut wanted: Vec<ReportZone> = Vec::new();
        for z in zones {
            if !z.is_utc() && !wanted.contains(z) {
                wanted.push(z.clone());
            }
        }
        let current = self.report_zones.clone();
        self.write(move |c| {
            let now = crate::hub::now_ms();
            // Zones leaving stop being read before their rows go.
            {
                let mut cur = current.write();
                let kept: Vec<ReportZone> =
                    cur.iter().filter(|z| wanted.contains(z)).cloned().collect();
                *cur = Arc::new(kept);
            }
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let stored: Vec<String> = {
                let mut st = tx
                    .prepare("SELECT zone FROM report_zones")
                    .map_err(db_err)?;
                let rows = st.query_map([], |r| r.get(0)).map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?
            };
            let mut rep = ZoneRebuild::default();
            for old in &stored {
                if !wanted.iter().any(|z| &z.key() == old) {
                    tx.execute("DELETE FROM usage_rollup_zone_day WHERE zone = ?1", [old])
                        .map_err(db_err)?;
                    tx.execute("DELETE FROM report_zones WHERE zone = ?1", [old])
                        .map_err(db_err)?;
                    rep.dropped.push(old.clone());
                }
            }
            for z in &wanted {
                let key = z.key();
                if stored.contains(&key) {
                    continue;
                }
                rep.rows += rebuild_zone_days(&tx, z)?;
                tx.execute(
                    "INSERT INTO report_zones (zone, built_at_ms) VALUES (?1, ?2)",
                    params![key, now],
                )
                .map_err(db_err)?;
                rep.built.push(key);
            }
            tx.commit().map_err(db_err)?;
            // New zones are read once their rows are committed.
            *current.write() = Arc::new(wanted);
            Ok(rep)
        })
        .await
    }

    async fn usage_report(&self, q: &ReportQuery) -> Result<Vec<ReportRow>, StoreError> {
        let q = q.clone();
        let built = self.report_zones.read().clone();
        self.read(move |c| {
            let zone = q.zone();
            let (table, since, until, label_expr, zone_key) = match rollup_for(&q, &built) {
                Rollup::UtcDay => ("usage_rollup_day", q.since_ms, q.until_ms, "bucket_ms / 1000".to_string(), None),
                Rollup::ZoneDay => (
                    "usage_rollup_zone_day",
                    q.since_ms.map(|t| zone.local_day(t)),
                    q.until_ms.map(|t| zone.local_day(t)),
                    "day * 86400".to_string(),
                    Some(zone.key()),
                ),
                Rollup::Quarter => {
                    // The zone's offsets over what the query can touch (the data's range when
                    // open-ended), as a CASE on the bucket start.
                    let (lo, hi) = match (q.since_ms, q.until_ms) {
                        (Some(a), Some(b)) => (a, b),
                        (a, b) => {
                            let (min, max) = quarter_range(c)?;
                            (a.or(min).unwrap_or(0), b.or(max.map(|m| m + BUCKET_MS)).unwrap_or(0))
                        }
                    };
                    let offset = offset_sql(&zone.offsets_between(lo, hi.max(lo)), "bucket_ms");
                    ("usage_rollup", q.since_ms, q.until_ms, format!("(bucket_ms + {offset}) / 1000"), None)
                }
            };
            let time_col = if zone_key.is_some() { "day" } else { "bucket_ms" };
            let (mut where_sql, mut params) =
                filter_sql(since, until, &q.user_id, &q.team_id, &q.app, time_col);
            if let Some(z) = zone_key {
                params.push(rusqlite::types::Value::Text(z));
                where_sql.push_str(&format!(" AND zone = ?{}", params.len()));
            }
            let period_expr = q.period.map(|p: Period| {
                format!("strftime('{}', {label_expr}, 'unixepoch')", p.pattern())
            });
            let mut select: Vec<String> = Vec::new();
            select.push(period_expr.clone().unwrap_or_else(|| "NULL".to_string()));
            for d in &q.group_by {
                select.push(d.column().to_string());
            }
            let group: Vec<String> = (1..=select.len()).skip(usize::from(period_expr.is_none())).map(|i| i.to_string()).collect();
            let sql = format!(
                "SELECT {}, SUM(calls), SUM(success_calls), SUM(prompt_tokens), SUM(completion_tokens), SUM(images),
                   SUM(cost_units), SUM(provider_cost_units)
                 FROM {table} WHERE {where_sql} {} ORDER BY {}",
                select.join(", "),
                if group.is_empty() { String::new() } else { format!("GROUP BY {}", group.join(", ")) },
                if group.is_empty() { "1".to_string() } else { group.join(", ") },
            );
            let mut st = c.prepare(&sql).map_err(db_err)?;
            let n = q.group_by.len();
            let rows = st
                .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    let mut keys = Vec::with_capacity(n);
                    for i in 0..n {
                        keys.push(r.get::<_, Option<String>>(1 + i)?.unwrap_or_default());
                    }
                    let g = |i: usize| -> rusqlite::Result<i64> { Ok(r.get::<_, Option<i64>>(1 + n + i)?.unwrap_or(0)) };
                    Ok(ReportRow {
                        period: r.get(0)?,
                        keys,
                        calls: g(0)?,
                        success_calls: g(1)?,
                        prompt_tokens: g(2)?,
                        completion_tokens: g(3)?,
                        images: g(4)?,
                        cost_units: g(5)?,
                        provider_cost_units: g(6)?,
                    })
                })
                .map_err(db_err)?;
            let rows: Vec<ReportRow> = rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?;
            // An empty filter still yields one all-NULL row from SUM(): drop it.
            Ok(rows.into_iter().filter(|r| r.calls > 0).collect())
        })
        .await
    }

    async fn usage_records(&self, f: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError> {
        let f = f.clone();
        self.read(move |c| {
            let (where_sql, params) =
                filter_sql(f.since_ms, f.until_ms, &f.user_id, &f.team_id, &f.app, "created_at_ms");
            let (where_sql, params) = match &f.after {
                Some((ms, id)) => {
                    let mut params = params;
                    params.push(rusqlite::types::Value::Integer(*ms));
                    params.push(rusqlite::types::Value::Text(id.clone()));
                    let n = params.len();
                    (
                        format!(
                            "{where_sql} AND (created_at_ms > ?{} OR (created_at_ms = ?{} AND id > ?{n}))",
                            n - 1,
                            n - 1
                        ),
                        params,
                    )
                }
                None => (where_sql, params),
            };
            let limit = f.limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
            let sql = format!(
                "SELECT {USAGE_COLUMNS} FROM usage_records WHERE {where_sql} ORDER BY created_at_ms, id{limit}"
            );
            let mut st = c.prepare(&sql).map_err(db_err)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(params.iter()), usage_from_row)
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn charged_since(&self, user_id: &str, since_ms: i64) -> Result<i64, StoreError> {
        let user = user_id.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT COALESCE(SUM(cost_units), 0) FROM usage_rollup WHERE user_id = ?1 AND bucket_ms >= ?2",
                params![user, since_ms.div_euclid(BUCKET_MS) * BUCKET_MS],
                |r| r.get(0),
            )
            .map_err(db_err)
        })
        .await
    }
}
