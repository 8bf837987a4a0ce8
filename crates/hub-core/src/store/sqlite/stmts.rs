//! The per-call statements (usage records, their settlement, reservations, roll-ups) by name, and
//! the set of them one transaction holds.

use rusqlite::Connection;

use super::db_err;
use crate::store::StoreError;

/// The roll-up `UPDATE`s' sums (parameters 7-13).
macro_rules! rollup_sums_set {
    () => {
        "calls = calls + ?7, success_calls = success_calls + ?8, prompt_tokens = prompt_tokens + ?9, \
         completion_tokens = completion_tokens + ?10, images = images + ?11, cost_units = cost_units + ?12, \
         provider_cost_units = provider_cost_units + ?13"
    };
}

/// The 15-minute and UTC-day roll-up `INSERT`s after their table's name.
macro_rules! rollup_insert_tail {
    () => {
        "(bucket_ms, user_id, team_id, app, provider, model, calls, success_calls, prompt_tokens, \
         completion_tokens, images, cost_units, provider_cost_units) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    };
}

/// The statements of the per-call writes (usage records, their settlement, reservations,
/// roll-ups), by name.
#[derive(Clone, Copy)]
pub(super) enum Q {
    InsertUsage,
    Shortfall,
    InsertEntry,
    EnsureAccount,
    MoveMoney,
    AvailableOf,
    ClaimReservation,
    HeldAmount,
    InsertReservation,
    Hold,
    DeleteReservation,
    DeleteHoldRecord,
    QuarterUpdate,
    QuarterInsert,
    DayUpdate,
    DayInsert,
    ZoneDayUpdate,
    ZoneDayInsert,
}

impl Q {
    const COUNT: usize = Q::ZoneDayInsert as usize + 1;

    fn sql(self) -> &'static str {
        match self {
            Q::InsertUsage => {
                "INSERT INTO usage_records (id, created_at_ms, client_request_id, principal, user_id, team_id, app, ingress,
                   endpoint, requested_model, provider, credential, upstream_model, stream, prompt_tokens,
                   completion_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, images, estimated,
                   latency_ms, ttfb_ms, status, http_status, error_class, error_message, provider_cost, attempts,
                   billing_mode, price_version, cost_units, provider_cost_units, account, reserved_units)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
                         ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35)
                 ON CONFLICT(id) DO NOTHING"
            }
            Q::Shortfall => "UPDATE usage_records SET shortfall_units = ?2 WHERE id = ?1",
            Q::InsertEntry => {
                "INSERT INTO ledger_entries (account, kind, available_delta, reserved_delta, charged, request_id, idem_key,
                   expires_at_ms, note, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(idem_key) DO NOTHING"
            }
            Q::EnsureAccount => {
                "INSERT INTO ledger_accounts (id, available, reserved, created_at_ms) VALUES (?1, 0, 0, ?2)
                 ON CONFLICT(id) DO NOTHING"
            }
            Q::MoveMoney => {
                "UPDATE ledger_accounts SET available = available + ?2, reserved = reserved + ?3 WHERE id = ?1"
            }
            Q::AvailableOf => "SELECT available FROM ledger_accounts WHERE id = ?1",
            Q::ClaimReservation => "DELETE FROM reservations WHERE request_id = ?1 AND amount = ?2",
            Q::HeldAmount => "SELECT amount FROM reservations WHERE request_id = ?1",
            Q::InsertReservation => {
                "INSERT INTO reservations (request_id, account, amount, instance, status, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, 'open', ?5) ON CONFLICT (request_id) DO NOTHING"
            }
            Q::Hold => {
                "UPDATE ledger_accounts SET available = available - ?2, reserved = reserved + ?2
                 WHERE id = ?1 AND available >= ?2"
            }
            Q::DeleteReservation => "DELETE FROM reservations WHERE request_id = ?1",
            Q::DeleteHoldRecord => "DELETE FROM hold_records WHERE request_id = ?1",
            Q::QuarterUpdate => concat!(
                "UPDATE usage_rollup SET ",
                rollup_sums_set!(),
                " WHERE bucket_ms = ?1 AND user_id = ?2 AND team_id = ?3 AND app = ?4 AND provider = ?5 AND model = ?6"
            ),
            Q::QuarterInsert => concat!("INSERT INTO usage_rollup ", rollup_insert_tail!()),
            Q::DayUpdate => concat!(
                "UPDATE usage_rollup_day SET ",
                rollup_sums_set!(),
                " WHERE bucket_ms = ?1 AND user_id = ?2 AND team_id = ?3 AND app = ?4 AND provider = ?5 AND model = ?6"
            ),
            Q::DayInsert => concat!("INSERT INTO usage_rollup_day ", rollup_insert_tail!()),
            Q::ZoneDayUpdate => concat!(
                "UPDATE usage_rollup_zone_day SET ",
                rollup_sums_set!(),
                " WHERE day = ?1 AND user_id = ?2 AND team_id = ?3 AND app = ?4 AND provider = ?5 AND model = ?6 AND zone = ?14"
            ),
            Q::ZoneDayInsert => {
                "INSERT INTO usage_rollup_zone_day (day, user_id, team_id, app, provider, model, calls, success_calls,
                   prompt_tokens, completion_tokens, images, cost_units, provider_cost_units, zone)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            }
        }
    }
}

/// The per-call statements of one transaction, each taken from rusqlite's statement cache at its
/// first use and kept until the transaction ends, not taken and returned at every use. A cache
/// round trip trims, hashes and compares the statement's whole text, copies it into the key it
/// stores, and clears the bindings on return, and a call uses five to eight of these statements:
/// ~8k instructions a call at concurrency 64, 3.6 % of the hub's (BENCHMARKS.md, fifteenth
/// session). A group commit's calls now share each statement's one round trip. A statement held
/// here is reset after every use (`execute`, `query_row`), so holding it blocks neither `COMMIT`
/// nor `ROLLBACK`; each use binds all its parameters again.
pub(super) struct Stmts<'c> {
    pub(super) conn: &'c Connection,
    held: [Option<rusqlite::CachedStatement<'c>>; Q::COUNT],
}

impl<'c> Stmts<'c> {
    pub(super) fn new(conn: &'c Connection) -> Stmts<'c> {
        Stmts {
            conn,
            held: [const { None }; Q::COUNT],
        }
    }

    /// The statement, prepared (or taken from the cache) on its first use in this transaction.
    pub(super) fn get(&mut self, q: Q) -> Result<&mut rusqlite::CachedStatement<'c>, StoreError> {
        let slot = &mut self.held[q as usize];
        if slot.is_none() {
            *slot = Some(self.conn.prepare_cached(q.sql()).map_err(db_err)?);
        }
        let Some(st) = slot.as_mut() else {
            unreachable!("filled just above")
        };
        Ok(st)
    }
}
