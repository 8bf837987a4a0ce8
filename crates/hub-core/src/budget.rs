//! Per-key spend budgets: an amount per calendar day or month in an IANA time zone, in the unit
//! the hub charges (credits in credits mode, provider list cost in internal mode).
//!
//! A call is admitted only if `spent in its period + worst cases of calls in flight + its own
//! worst case <= budget` (the worst case the credit reservation uses), so concurrent calls never
//! overshoot; its actual cost replaces its worst case when its usage record is committed
//! (`Hub::commit`, keyed by request id: exactly once). A call belongs to the period in which it
//! started (`CallContext::started_ms`, the record's `created_at_ms`), so the counter kept here
//! and the usage records it is re-seeded from after a restart agree to the unit.
//!
//! The counters are in this process, like the rate-limit windows (ARCHITECTURE.md: scale-out gap).

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};

use crate::FastMap;
use crate::error::{ErrorKind, HubError};
use crate::pricing::{from_units, parse_amount, to_units};

/// The calendar period a budget covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BudgetPeriod {
    /// From midnight to midnight in the budget's time zone.
    Day,
    /// From the first of the month at midnight to the first of the next, in the time zone.
    #[default]
    Month,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<BudgetPeriod> {
        match s.trim().to_ascii_lowercase().as_str() {
            "day" | "daily" => Some(BudgetPeriod::Day),
            "month" | "monthly" => Some(BudgetPeriod::Month),
            _ => None,
        }
    }
}

fn utc() -> String {
    "UTC".to_string()
}

/// A key's spend budget, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Budget {
    /// The most the key may spend per period: credits in credits mode, provider list cost
    /// (USD) in internal mode. A decimal string (`"25.50"`) or number; at most 10 decimal places.
    #[serde(deserialize_with = "amount")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "25.50"))]
    pub amount: Decimal,
    /// `day` or `month` (default).
    #[serde(default)]
    pub period: BudgetPeriod,
    /// IANA time zone the period's boundaries are in (`Asia/Tokyo`); default `UTC`.
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn amount<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum In {
        Text(String),
        Number(serde_json::Number),
    }
    let text = match In::deserialize(d)? {
        In::Text(s) => s,
        In::Number(n) => n.to_string(),
    };
    parse_amount(&text).map_err(serde::de::Error::custom)
}

impl Budget {
    /// Checks the amount (not negative, representable) and the time zone.
    pub fn validate(&self) -> Result<(), String> {
        if self.amount.is_sign_negative() && !self.amount.is_zero() {
            return Err("budget.amount must not be negative".to_string());
        }
        if to_units(self.amount).is_none() {
            return Err("budget.amount is out of range".to_string());
        }
        self.zone()?;
        Ok(())
    }

    /// The time zone.
    pub fn zone(&self) -> Result<TimeZone, String> {
        TimeZone::get(self.time_zone.trim()).map_err(|_| {
            format!(
                "budget.time_zone `{}` is not an IANA time zone (e.g. `UTC`, `Europe/Berlin`, `Asia/Tokyo`)",
                self.time_zone
            )
        })
    }

    /// The amount in ledger units (1e-10).
    pub fn limit_units(&self) -> i64 {
        to_units(self.amount).unwrap_or(i64::MAX)
    }
}

/// One budget period: `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start_ms: i64,
    pub end_ms: i64,
}

fn day_start(d: Date, tz: &TimeZone) -> Option<i64> {
    // `start_of_day` is the first instant of the date, also where midnight falls into a DST gap.
    let z = d.to_zoned_datetime(tz.clone()).ok()?.start_of_day().ok()?;
    Some(z.timestamp().as_millisecond())
}

/// The period of `period` in `tz` that contains the instant `at_ms`.
pub fn period_at(period: BudgetPeriod, tz: &TimeZone, at_ms: i64) -> Option<Period> {
    let date = Timestamp::from_millisecond(at_ms)
        .ok()?
        .to_zoned_datetime(tz.clone())
        .date();
    let (first, next) = match period {
        BudgetPeriod::Day => (date, date.tomorrow().ok()?),
        BudgetPeriod::Month => {
            let first = date.first_of_month();
            let (y, m) = if first.month() == 12 {
                (first.year().checked_add(1)?, 1)
            } else {
                (first.year(), first.month() + 1)
            };
            (first, Date::new(y, m, 1).ok()?)
        }
    };
    Some(Period {
        start_ms: day_start(first, tz)?,
        end_ms: day_start(next, tz)?,
    })
}

/// An instant as RFC 3339 with the zone's offset (`2026-12-01T00:00:00+09:00`).
pub fn local_rfc3339(tz: &TimeZone, at_ms: i64) -> String {
    match Timestamp::from_millisecond(at_ms) {
        Ok(ts) => ts
            .to_zoned_datetime(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
        Err(_) => at_ms.to_string(),
    }
}

/// A budget's state as shown on a key (`/api/admin/keys`, `/api/me/keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetStatus {
    /// Spent in the current period (costs of the usage records of calls started in it).
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "3.25"))]
    pub spent: Decimal,
    /// `amount - spent`, never below zero.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "22.25"))]
    pub remaining: Decimal,
    /// Start of the current period, RFC 3339 in the budget's time zone.
    pub period_start: String,
    /// When the budget resets (end of the current period), RFC 3339 in the budget's time zone.
    pub resets_at: String,
    /// `resets_at` in milliseconds since the epoch.
    pub resets_at_ms: i64,
}

impl BudgetStatus {
    /// The status of `budget` for the period containing `now_ms`, with `spent_units` spent in it.
    pub fn new(budget: &Budget, tz: &TimeZone, p: Period, spent_units: i64) -> BudgetStatus {
        let spent = from_units(spent_units);
        let remaining = (budget.amount - spent).max(Decimal::ZERO).normalize();
        BudgetStatus {
            spent,
            remaining,
            period_start: local_rfc3339(tz, p.start_ms),
            resets_at: local_rfc3339(tz, p.end_ms),
            resets_at_ms: p.end_ms,
        }
    }
}

/// Spend and worst cases in flight of one period.
#[derive(Debug, Clone, Copy)]
struct Slot {
    period: Period,
    spent: i64,
    in_flight: i64,
}

impl Slot {
    fn new(period: Period, spent: i64) -> Slot {
        Slot {
            period,
            spent,
            in_flight: 0,
        }
    }
}

#[derive(Debug)]
struct State {
    budget: Budget,
    limit: i64,
    tz: TimeZone,
    cur: Slot,
    /// The period just before `cur`: a call that started in it may be admitted or settle after
    /// the period rolled.
    prev: Option<Slot>,
    /// Calls admitted and not yet settled: request id -> (their period's start, worst case).
    calls: FastMap<String, (i64, i64)>,
}

impl State {
    /// Moves `cur` forward when `at_ms` is past its end.
    fn roll(&mut self, at_ms: i64) {
        if at_ms < self.cur.period.end_ms {
            return;
        }
        let Some(p) = period_at(self.budget.period, &self.tz, at_ms) else {
            return;
        };
        let old = self.cur;
        self.prev = (p.start_ms == old.period.end_ms).then_some(old);
        self.cur = Slot::new(p, 0);
        // Calls of periods older than `prev` can no longer be settled anywhere.
        let keep = [
            Some(self.cur.period.start_ms),
            self.prev.map(|s| s.period.start_ms),
        ];
        self.calls
            .retain(|_, (start, _)| keep.contains(&Some(*start)));
    }

    fn slot_mut(&mut self, start_ms: i64) -> Option<&mut Slot> {
        if self.cur.period.start_ms == start_ms {
            return Some(&mut self.cur);
        }
        self.prev.as_mut().filter(|s| s.period.start_ms == start_ms)
    }
}

/// Why a call was refused: enough to build the caller's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub budget: Budget,
    pub spent: i64,
    pub in_flight: i64,
    pub worst: i64,
    pub resets_at_ms: i64,
    pub resets_at: String,
}

impl Refusal {
    /// 429 `budget_exceeded`, Retry-After = whole seconds until the period resets (at least 1).
    pub fn into_error(self, now_ms: i64) -> HubError {
        let b = &self.budget;
        let per = format!("per {} ({})", b.period.as_str(), b.time_zone);
        let message = if self.worst > b.limit_units() {
            format!(
                "This request may cost up to {}, more than this API key's whole spend budget of {} {per}. Lower max_tokens or ask an administrator to raise the budget.",
                from_units(self.worst),
                b.amount.normalize()
            )
        } else {
            format!(
                "This API key's spend budget of {} {per} does not cover this request: spent {}, {} held by calls in flight, and this request may cost up to {}. The budget resets at {}.",
                b.amount.normalize(),
                from_units(self.spent),
                from_units(self.in_flight),
                from_units(self.worst),
                self.resets_at
            )
        };
        let mut e = HubError::new(ErrorKind::BudgetExceeded, message).with_code("budget_exceeded");
        let ms = (self.resets_at_ms - now_ms).max(0) as u64;
        e.retry_after = Some(Duration::from_secs(ms.div_ceil(1000).max(1)));
        e
    }
}

/// The live budget of one key in this process.
#[derive(Debug)]
pub struct KeyBudget {
    state: Mutex<State>,
}

impl KeyBudget {
    /// A budget for the period `period` (from `period_at`) with `spent` units already spent in it
    /// (the sum of the key's usage records of that period).
    pub fn new(budget: &Budget, tz: TimeZone, period: Period, spent: i64) -> KeyBudget {
        KeyBudget {
            state: Mutex::new(State {
                budget: budget.clone(),
                limit: budget.limit_units(),
                tz,
                cur: Slot::new(period, spent),
                prev: None,
                calls: FastMap::default(),
            }),
        }
    }

    /// Takes a changed amount in place. `false` when the period or time zone changed: the
    /// periods differ, so the caller re-seeds it (`rebase`).
    pub fn reconfigure(&self, budget: &Budget) -> bool {
        let mut s = self.state.lock();
        if s.budget.period != budget.period || s.budget.time_zone != budget.time_zone {
            return false;
        }
        s.limit = budget.limit_units();
        s.budget = budget.clone();
        true
    }

    /// Moves to a new period definition (period or time zone changed) with `spent` read from the
    /// store for `period`. Calls in flight keep their worst cases held and settle into the new
    /// period: their records are not written yet (settlement comes first), so the seed cannot
    /// include them.
    pub fn rebase(&self, budget: &Budget, tz: TimeZone, period: Period, spent: i64) {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let held: i64 = s.calls.values().map(|(_, w)| *w).sum();
        for call in s.calls.values_mut() {
            call.0 = period.start_ms;
        }
        s.limit = budget.limit_units();
        s.budget = budget.clone();
        s.tz = tz;
        s.prev = None;
        s.cur = Slot {
            period,
            spent,
            in_flight: held,
        };
    }

    /// Admits call `request_id`, started at `at_ms`, whose cost is at most `worst` units.
    pub fn admit(&self, request_id: &str, at_ms: i64, worst: i64) -> Result<(), Refusal> {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        s.roll(at_ms);
        let in_prev =
            at_ms < s.cur.period.start_ms && s.prev.is_some_and(|p| at_ms >= p.period.start_ms);
        let slot = match s.prev.as_mut() {
            Some(p) if in_prev => p,
            _ => &mut s.cur,
        };
        let needed = slot
            .spent
            .saturating_add(slot.in_flight)
            .saturating_add(worst);
        if needed > s.limit {
            return Err(Refusal {
                budget: s.budget.clone(),
                spent: slot.spent,
                in_flight: slot.in_flight,
                worst,
                resets_at_ms: slot.period.end_ms,
                resets_at: local_rfc3339(&s.tz, slot.period.end_ms),
            });
        }
        slot.in_flight += worst;
        let start = slot.period.start_ms;
        s.calls.insert(request_id.to_string(), (start, worst));
        Ok(())
    }

    /// Replaces the worst case of `request_id` with its actual cost. Only the first settlement
    /// (or release) of a request counts.
    pub fn settle(&self, request_id: &str, cost: i64) {
        let mut s = self.state.lock();
        let Some((start, worst)) = s.calls.remove(request_id) else {
            return;
        };
        if let Some(slot) = s.slot_mut(start) {
            slot.in_flight -= worst;
            slot.spent = slot.spent.saturating_add(cost.max(0));
        }
    }

    /// Drops the worst case of `request_id` without spending (it ended without a record).
    pub fn release(&self, request_id: &str) {
        let mut s = self.state.lock();
        if let Some((start, worst)) = s.calls.remove(request_id)
            && let Some(slot) = s.slot_mut(start)
        {
            slot.in_flight -= worst;
        }
    }

    /// (spent, in flight) of the period containing `at_ms`, rolling forward if it is past.
    pub fn usage_at(&self, at_ms: i64) -> (i64, i64) {
        let mut s = self.state.lock();
        s.roll(at_ms);
        (s.cur.spent, s.cur.in_flight)
    }
}

/// A call admitted under a budget: releases its worst case if it ends without being settled.
#[derive(Debug)]
pub struct BudgetPermit {
    pub(crate) budget: std::sync::Arc<KeyBudget>,
    pub(crate) request_id: String,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget.release(&self.request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(amount: &str, period: BudgetPeriod, tz: &str) -> Budget {
        Budget {
            amount: amount.parse().unwrap_or_default(),
            period,
            time_zone: tz.to_string(),
        }
    }

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>()
            .map(|t| t.as_millisecond())
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn periods_follow_the_zone_and_its_dst_rules() {
        let tokyo = TimeZone::get("Asia/Tokyo").ok();
        let ny = TimeZone::get("America/New_York").ok();
        let (Some(tokyo), Some(ny)) = (tokyo, ny) else {
            unreachable!("bundled zones");
        };
        // 2026-03-31T20:00Z is already April 1st in Tokyo.
        let p = period_at(BudgetPeriod::Month, &tokyo, ms("2026-03-31T20:00:00Z"));
        assert_eq!(
            p,
            Some(Period {
                start_ms: ms("2026-03-31T15:00:00Z"),
                end_ms: ms("2026-04-30T15:00:00Z"),
            })
        );
        let p = period_at(BudgetPeriod::Day, &tokyo, ms("2026-03-31T14:59:59.999Z"));
        assert_eq!(p.map(|p| p.end_ms), Some(ms("2026-03-31T15:00:00Z")));
        // New York springs forward on 2026-03-08: that day has 23 hours.
        let p = period_at(BudgetPeriod::Day, &ny, ms("2026-03-08T12:00:00Z"));
        assert_eq!(
            p,
            Some(Period {
                start_ms: ms("2026-03-08T05:00:00Z"),
                end_ms: ms("2026-03-09T04:00:00Z"),
            })
        );
        // December rolls into January of the next year.
        let p = period_at(BudgetPeriod::Month, &ny, ms("2026-12-15T00:00:00Z"));
        assert_eq!(p.map(|p| p.end_ms), Some(ms("2027-01-01T05:00:00Z")));
        assert_eq!(
            local_rfc3339(&tokyo, ms("2026-03-31T15:00:00Z")),
            "2026-04-01T00:00:00+09:00"
        );
    }

    #[test]
    fn validation_and_amount_forms() {
        let ok: Result<Budget, _> =
            serde_json::from_str(r#"{"amount": 12.5, "time_zone": "Europe/Berlin"}"#);
        let ok = ok.map(|b| (b.amount, b.period));
        assert_eq!(ok.ok(), Some((Decimal::new(125, 1), BudgetPeriod::Month)));
        let b: Result<Budget, _> = serde_json::from_str(r#"{"amount": "0.5", "period": "day"}"#);
        assert_eq!(b.map(|b| b.time_zone).ok(), Some("UTC".to_string()));
        assert!(serde_json::from_str::<Budget>(r#"{"amount": "1e-20"}"#).is_err());
        assert!(serde_json::from_str::<Budget>(r#"{"amount": "1", "period": "week"}"#).is_err());
        assert!(
            budget("1", BudgetPeriod::Day, "Mars/Olympus")
                .validate()
                .is_err()
        );
        assert!(budget("-1", BudgetPeriod::Day, "UTC").validate().is_err());
        assert!(budget("0", BudgetPeriod::Day, "UTC").validate().is_ok());
    }

    fn live(b: &Budget, at: i64, spent: i64) -> KeyBudget {
        let tz = b.zone().unwrap_or(TimeZone::UTC);
        let p = period_at(b.period, &tz, at).unwrap_or(Period {
            start_ms: 0,
            end_ms: 0,
        });
        KeyBudget::new(b, tz, p, spent)
    }

    #[test]
    fn admits_exactly_up_to_the_budget_counting_calls_in_flight() {
        let b = budget("0.0000000100", BudgetPeriod::Day, "UTC"); // 100 units
        let t = ms("2026-05-05T10:00:00Z");
        let kb = live(&b, t, 10);
        // 10 spent: three calls of worst 30 fit exactly, a fourth of 1 does not.
        for id in ["a", "b", "c"] {
            assert!(kb.admit(id, t, 30).is_ok(), "{id}");
        }
        let r = kb.admit("d", t, 1).err();
        assert_eq!(r.as_ref().map(|r| (r.spent, r.in_flight)), Some((10, 90)));
        // `a` cost 20 (10 less than its worst case): 10 free now.
        kb.settle("a", 20);
        kb.settle("a", 20); // a second settlement is ignored
        assert!(kb.admit("e", t, 11).is_err());
        assert!(kb.admit("e", t, 10).is_ok());
        // A released call frees its whole worst case.
        kb.release("b");
        assert_eq!(kb.usage_at(t), (30, 40)); // c and e in flight
        let e = kb.admit("f", t, 31).err().map(|r| r.into_error(t));
        let e = e.map(|e| (e.status(), e.code, e.retry_after));
        assert_eq!(
            e,
            Some((
                429,
                Some("budget_exceeded".to_string()),
                Some(Duration::from_secs(14 * 3600))
            ))
        );
    }

    #[test]
    fn rolls_over_at_local_midnight_and_settles_late_calls_into_their_own_period() {
        let b = budget("0.0000000100", BudgetPeriod::Day, "Asia/Tokyo");
        // 23:59:59 in Tokyo on May 5th, then the first millisecond of May 6th.
        let before = ms("2026-05-05T14:59:59Z");
        let after = ms("2026-05-05T15:00:00Z");
        let kb = live(&b, before, 0);
        assert!(kb.admit("late", before, 60).is_ok());
        assert!(kb.admit("x", before, 41).is_err());
        // The new day starts empty, even with `late` still in flight.
        assert!(kb.admit("new", after, 100).is_ok());
        assert!(kb.admit("new2", after, 1).is_err());
        // A call that started before midnight but is admitted after it counts in May 5th.
        assert!(kb.admit("straggler", before + 500, 40).is_ok());
        assert!(kb.admit("straggler2", before + 600, 1).is_err());
        kb.settle("late", 60);
        kb.settle("new", 70);
        assert_eq!(kb.usage_at(after), (70, 0));
        // Two days on: everything is fresh again.
        let later = ms("2026-05-07T01:00:00Z");
        assert_eq!(kb.usage_at(later), (0, 0));
        kb.settle("straggler", 40); // its period is gone: nothing to settle into
        assert_eq!(kb.usage_at(later), (0, 0));
    }

    #[test]
    fn a_changed_period_keeps_calls_in_flight_held_and_settles_them() {
        let t = ms("2026-05-05T10:00:00Z");
        let kb = live(&budget("0.0000000100", BudgetPeriod::Day, "UTC"), t, 0);
        assert!(kb.admit("a", t, 30).is_ok());
        let month = budget("0.0000000100", BudgetPeriod::Month, "Asia/Tokyo");
        assert!(!kb.reconfigure(&month));
        let tz = month.zone().unwrap_or(TimeZone::UTC);
        let p = period_at(month.period, &tz, t).unwrap_or(Period {
            start_ms: 0,
            end_ms: 0,
        });
        kb.rebase(&month, tz, p, 50);
        assert_eq!(kb.usage_at(t), (50, 30));
        assert!(kb.admit("b", t, 21).is_err());
        kb.settle("a", 7);
        assert_eq!(kb.usage_at(t), (57, 0));
        // Only the amount changed: taken in place.
        assert!(kb.reconfigure(&budget("0.0000000060", BudgetPeriod::Month, "Asia/Tokyo")));
        assert!(kb.admit("c", t, 4).is_err());
        assert!(kb.admit("c", t, 3).is_ok());
    }
}
