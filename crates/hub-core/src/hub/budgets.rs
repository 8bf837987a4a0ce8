//! Per-key spend budgets in the engine: the live counters of every key that has a budget
//! (seeded from the store when the key loads), admission at reservation time, settlement when a
//! usage record is committed. The rules are `budget.rs`'s.

use std::sync::Arc;

use jiff::tz::TimeZone;

use super::{CallContext, Hub};
use crate::FastMap;
use crate::budget::{BudgetPermit, KeyBudget, period_at};
use crate::error::HubError;
use crate::policy::KeyGate;
use crate::store::{Store, StoreError, UsageRecord};

/// Live budgets by key id; only keys that have one.
pub(crate) type Budgets = FastMap<String, Arc<KeyBudget>>;

/// The budgets of the keys in `gates`: a key already live keeps its counter (a changed amount is
/// taken in place); a key new to this process is seeded with what its usage records of the
/// current period cost, and so is a live one whose period or time zone changed (in place, its
/// calls in flight still held).
pub(crate) async fn load_budgets(
    store: &dyn Store,
    old: &Budgets,
    gates: &FastMap<String, Arc<KeyGate>>,
    now_ms: i64,
) -> Result<Budgets, StoreError> {
    let mut out = Budgets::default();
    for (key_id, gate) in gates {
        let Some(b) = &gate.policy.budget else {
            continue;
        };
        let live = old.get(key_id);
        if let Some(live) = live
            && live.reconfigure(b)
        {
            out.insert(key_id.clone(), live.clone());
            continue;
        }
        let tz = b.zone().unwrap_or_else(|e| {
            // Validated when set; a zone missing from the database can only come from a
            // hand-edited row. Keep enforcing, in UTC.
            tracing::warn!(key = %key_id, error = %e, "budget time zone unknown; using UTC");
            TimeZone::UTC
        });
        let Some(period) = period_at(b.period, &tz, now_ms) else {
            tracing::error!(key = %key_id, "budget period out of range; budget not applied");
            continue;
        };
        let spent = store
            .key_spend(key_id, period.start_ms, period.end_ms)
            .await?;
        let kb = match live {
            Some(live) => {
                live.rebase(b, tz, period, spent);
                live.clone()
            }
            None => Arc::new(KeyBudget::new(b, tz, period, spent)),
        };
        out.insert(key_id.clone(), kb);
    }
    Ok(out)
}

impl Hub {
    /// The live budget of the caller's key, if it has one (keys without one pay one empty-map
    /// check when no key has a budget).
    pub(crate) fn key_budget(&self, ctx: &CallContext) -> Option<Arc<KeyBudget>> {
        if !self.inner.switches.limits {
            return None;
        }
        let all = self.inner.budgets.load();
        if all.is_empty() {
            return None;
        }
        all.get(&ctx.principal.key_id).cloned()
    }

    /// Admits a call whose cost is at most `worst` units against the key's budget.
    pub(crate) fn admit_budget(
        &self,
        budget: Arc<KeyBudget>,
        ctx: &CallContext,
        worst: i64,
    ) -> Result<BudgetPermit, HubError> {
        budget
            .admit(&ctx.request_id, ctx.started_ms, worst)
            .map_err(|r| r.into_error(super::now_ms()))?;
        Ok(BudgetPermit {
            budget,
            request_id: ctx.request_id.clone(),
        })
    }

    /// Settles a record's cost into its key's budget (once per request id; a request the budget
    /// never admitted settles nothing).
    pub(crate) fn settle_budget(&self, rec: &UsageRecord) {
        let all = self.inner.budgets.load();
        if all.is_empty() {
            return;
        }
        if let Some(b) = all.get(&rec.principal) {
            b.settle(&rec.id, rec.billing.cost_units);
        }
    }

    /// (spent, in flight) of a key's current budget period in this process, in units; `None`
    /// when the key has no budget here.
    pub fn budget_usage(&self, key_id: &str) -> Option<(i64, i64)> {
        let all = self.inner.budgets.load();
        all.get(key_id).map(|b| b.usage_at(super::now_ms()))
    }
}
