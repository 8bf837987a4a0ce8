//! Billing in the engine: the in-memory billing configuration (mode, price book, settings), the
//! reservation before dispatch (`Hold`), and the cost put on every usage record. Settlement
//! itself happens in the store, in the transaction that writes the record.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::{CallContext, Hub, now_ms};
use crate::error::HubError;
use crate::ledger::{ReportZone, ReserveOutcome, ReserveReq, Starter, team_account, user_account};
use crate::pricing::{
    BillingMode, Price, PriceBook, PricingSettings, Rates, UNITS_PER_CREDIT, builtin_prices,
    from_units, to_units,
};
use crate::providers::ProviderKind;
use crate::router;
use crate::store::{CallStatus, Store, StoreError, StreamBeat, UsageRecord};
use crate::types::{ModelType, Usage};

/// Setting keys (the `settings` table; a running hub picks changes up within a second).
pub mod keys {
    pub const MODE: &str = "billing.mode";
    pub const MARGIN_PCT: &str = "billing.margin_pct";
    pub const BASE_CREDIT_PRICE: &str = "billing.base_credit_price";
    pub const MAX_OUTPUT_TOKENS: &str = "billing.max_output_tokens";
    pub const STARTER_CREDITS: &str = "billing.starter_credits";
    pub const STARTER_EXPIRY_DAYS: &str = "billing.starter_expiry_days";
    pub const PAYMENT_LINK: &str = "billing.payment_link";
    pub const CREDIT_PREFIX: &str = "billing.credit_prefix";
    /// Comma list of report time zones (IANA names or offsets) whose day roll-ups are kept.
    pub const REPORT_TIMEZONES: &str = "report.timezones";
    pub const ALL: &[&str] = &[
        MODE,
        MARGIN_PCT,
        BASE_CREDIT_PRICE,
        MAX_OUTPUT_TOKENS,
        STARTER_CREDITS,
        STARTER_EXPIRY_DAYS,
        PAYMENT_LINK,
        CREDIT_PREFIX,
        REPORT_TIMEZONES,
    ];
}

/// Billing defaults from the environment; stored settings override them.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingDefaults {
    /// `HUB_BILLING_MODE` (`internal` | `credits`).
    pub mode: BillingMode,
    /// `HUB_STARTER_CREDITS`: granted once to each new user account (credits mode).
    pub starter_credits: Decimal,
    /// `HUB_STARTER_EXPIRY_DAYS`: starter credits expire after this many days (none: never).
    pub starter_expiry_days: Option<u32>,
    /// `HUB_PAYMENT_LINK`: where a caller without credits can buy more (the 402's link).
    pub payment_link: Option<String>,
    /// `HUB_CREDIT_PREFIX`: shown before amounts (`$`).
    pub credit_prefix: String,
    /// `HUB_MAX_OUTPUT_TOKENS`: worst-case output for the reservation when a request sets no max.
    pub max_output_tokens: u32,
    /// `HUB_RECONCILE_WINDOW_SECS`: an open reservation older than this is released.
    pub reconcile_window: Duration,
    /// `HUB_HEARTBEAT_MS`: how often this instance proves it is alive; reservations of an
    /// instance silent for 5 beats are released by the others (or by the next start).
    pub heartbeat: Duration,
    /// `HUB_REPORT_TIMEZONES`: time zones (IANA names or offsets, comma list) whose day
    /// roll-ups are kept so that reports on whole days in them are fast (default: UTC).
    pub report_zones: Vec<ReportZone>,
}

impl Default for BillingDefaults {
    fn default() -> Self {
        BillingDefaults {
            mode: BillingMode::Internal,
            starter_credits: Decimal::ZERO,
            starter_expiry_days: None,
            payment_link: None,
            credit_prefix: String::new(),
            max_output_tokens: 4096,
            reconcile_window: Duration::from_secs(3600),
            heartbeat: Duration::from_secs(2),
            report_zones: vec![ReportZone::UTC],
        }
    }
}

impl BillingDefaults {
    /// Reads the `HUB_*` billing variables through `get` (usually `std::env::var`).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<BillingDefaults, String> {
        let mut d = BillingDefaults::default();
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("HUB_BILLING_MODE") {
            d.mode = BillingMode::parse(&v).ok_or_else(|| {
                format!("HUB_BILLING_MODE must be internal or credits, got `{v}`")
            })?;
        }
        if let Some(v) = get("HUB_STARTER_CREDITS") {
            d.starter_credits = crate::pricing::parse_amount(&v)
                .map_err(|e| format!("HUB_STARTER_CREDITS: {e}"))?;
        }
        if let Some(v) = get("HUB_STARTER_EXPIRY_DAYS") {
            d.starter_expiry_days =
                Some(v.trim().parse().map_err(|_| {
                    format!("HUB_STARTER_EXPIRY_DAYS: `{v}` is not a number of days")
                })?);
        }
        d.payment_link = get("HUB_PAYMENT_LINK");
        if let Some(v) = get("HUB_CREDIT_PREFIX") {
            d.credit_prefix = v;
        }
        if let Some(v) = get("HUB_MAX_OUTPUT_TOKENS") {
            d.max_output_tokens = v
                .trim()
                .parse()
                .map_err(|_| format!("HUB_MAX_OUTPUT_TOKENS: `{v}` is not a number"))?;
        }
        if let Some(v) = get("HUB_RECONCILE_WINDOW_SECS") {
            d.reconcile_window = Duration::from_secs(
                v.trim()
                    .parse()
                    .map_err(|_| format!("HUB_RECONCILE_WINDOW_SECS: `{v}` is not a number"))?,
            );
        }
        if let Some(v) = get("HUB_REPORT_TIMEZONES") {
            d.report_zones =
                parse_report_zones(&v).map_err(|e| format!("HUB_REPORT_TIMEZONES: {e}"))?;
        }
        if let Some(v) = get("HUB_HEARTBEAT_MS") {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|_| format!("HUB_HEARTBEAT_MS: `{v}` is not a number"))?;
            d.heartbeat = Duration::from_millis(ms.max(50));
        }
        Ok(d)
    }
}

/// A comma list of report time zones (IANA names or UTC offsets).
pub fn parse_report_zones(s: &str) -> Result<Vec<ReportZone>, String> {
    let mut out: Vec<ReportZone> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let z = ReportZone::parse(part)?;
        if !out.contains(&z) {
            out.push(z);
        }
    }
    Ok(out)
}

/// Billing as the hot path sees it: swapped atomically on reload, never read from the database
/// per request.
#[derive(Debug, Clone)]
pub struct BillingConfig {
    pub mode: BillingMode,
    pub prices: PriceBook,
    pub pricing: PricingSettings,
    pub max_output_tokens: u32,
    /// Starter credits in ledger units (0: none) and their lifetime.
    pub starter_units: i64,
    pub starter_expiry_days: Option<u32>,
    pub payment_link: Option<String>,
    pub credit_prefix: String,
    /// Report time zones whose day roll-ups the store keeps.
    pub report_zones: Vec<ReportZone>,
}

impl BillingConfig {
    /// The starter grant for an account created now.
    pub fn starter(&self, now_ms: i64) -> Option<Starter> {
        (self.starter_units > 0).then(|| Starter {
            amount: self.starter_units,
            expires_at_ms: self
                .starter_expiry_days
                .map(|d| now_ms + i64::from(d) * 86_400_000),
        })
    }
}

/// Loads the billing configuration: stored settings over `defaults`, and the current prices.
pub async fn load_billing_config(
    store: &dyn Store,
    defaults: &BillingDefaults,
) -> Result<BillingConfig, StoreError> {
    let mut cfg = BillingConfig {
        mode: defaults.mode,
        prices: PriceBook::default(),
        pricing: PricingSettings::default(),
        max_output_tokens: defaults.max_output_tokens,
        starter_units: to_units(defaults.starter_credits).unwrap_or(0),
        starter_expiry_days: defaults.starter_expiry_days,
        payment_link: defaults.payment_link.clone(),
        credit_prefix: defaults.credit_prefix.clone(),
        report_zones: defaults.report_zones.clone(),
    };
    for key in keys::ALL {
        let Some(v) = store.get_setting(key).await? else {
            continue;
        };
        let bad = |what: &str| {
            tracing::warn!(setting = key, value = %v, "ignoring invalid {what}");
        };
        match *key {
            keys::MODE => match BillingMode::parse(&v) {
                Some(m) => cfg.mode = m,
                None => bad("billing mode"),
            },
            keys::MARGIN_PCT => match Decimal::from_str(v.trim()) {
                Ok(d) => cfg.pricing.margin_pct = d,
                Err(_) => bad("margin"),
            },
            keys::BASE_CREDIT_PRICE => match Decimal::from_str(v.trim()) {
                Ok(d) if d > Decimal::ZERO => cfg.pricing.base_credit_price = d,
                _ => bad("base credit price"),
            },
            keys::MAX_OUTPUT_TOKENS => match v.trim().parse() {
                Ok(n) => cfg.max_output_tokens = n,
                Err(_) => bad("token count"),
            },
            keys::STARTER_CREDITS => match crate::pricing::parse_amount(&v).ok().and_then(to_units)
            {
                Some(u) => cfg.starter_units = u,
                None => bad("amount"),
            },
            keys::STARTER_EXPIRY_DAYS => {
                cfg.starter_expiry_days = if v.trim().is_empty() || v.trim() == "0" {
                    None
                } else {
                    match v.trim().parse() {
                        Ok(d) => Some(d),
                        Err(_) => {
                            bad("number of days");
                            cfg.starter_expiry_days
                        }
                    }
                }
            }
            keys::PAYMENT_LINK => cfg.payment_link = Some(v.clone()).filter(|s| !s.is_empty()),
            keys::CREDIT_PREFIX => cfg.credit_prefix = v.clone(),
            keys::REPORT_TIMEZONES => match parse_report_zones(&v) {
                Ok(z) => cfg.report_zones = z,
                Err(_) => bad("time zone list"),
            },
            _ => {}
        }
    }
    cfg.prices = PriceBook::new(store.list_prices(false).await?);
    Ok(cfg)
}

/// Seeds the price book from the built-in list prices: a model with no price gets one; a model
/// whose current price is still the built-in one gets a new version when the list changed. An
/// admin's own price is never touched. Returns how many versions were added.
pub async fn seed_builtin_prices(
    store: &dyn Store,
    pricing: &PricingSettings,
) -> Result<usize, StoreError> {
    // The current version of every price, disabled ones included: a price an admin disabled
    // is theirs, and the seed must not bring it back.
    let current: std::collections::HashMap<_, Price> = store
        .list_prices(false)
        .await?
        .into_iter()
        .map(|p| (p.key(), p))
        .collect();
    let now = now_ms();
    let fresh: Vec<Price> = builtin_prices(pricing)
        .into_iter()
        .filter(|b| match current.get(&b.key()) {
            None => true,
            Some(p) => p.source == "builtin" && !p.disabled && !p.same_terms(b),
        })
        .map(|mut p| {
            p.created_at_ms = now;
            p
        })
        .collect();
    if !fresh.is_empty() {
        store.insert_prices(&fresh).await?;
    }
    Ok(fresh.len())
}

/// What a call may cost at most, before it is made.
pub(crate) enum Demand<'a> {
    Chat {
        prompt_tokens: u64,
        max_output: Option<u32>,
    },
    Embeddings {
        tokens: u64,
    },
    Images {
        prompt_tokens: u64,
        n: u32,
        quality: Option<&'a str>,
        size: Option<&'a str>,
    },
}

impl Demand<'_> {
    fn model_type(&self) -> ModelType {
        match self {
            Demand::Chat { .. } => ModelType::Chat,
            Demand::Embeddings { .. } => ModelType::Embedding,
            Demand::Images { .. } => ModelType::Image,
        }
    }

    /// Worst-case cost at these rates.
    fn worst(&self, r: &Rates, default_max_output: u32) -> Decimal {
        let d = Decimal::from;
        match self {
            Demand::Chat {
                prompt_tokens,
                max_output,
            } => {
                d(*prompt_tokens) * r.max_prompt_rate()
                    + Decimal::from(max_output.unwrap_or(default_max_output)) * r.output
            }
            Demand::Embeddings { tokens } => d(*tokens) * r.max_prompt_rate(),
            Demand::Images {
                prompt_tokens,
                n,
                quality,
                size,
            } => {
                // The same rate settlement applies to these images: exact, not a guess.
                d(*prompt_tokens) * r.max_prompt_rate()
                    + Decimal::from(*n) * r.image_rate(*quality, *size)
            }
        }
    }
}

/// A cheap upper bound of an embeddings input's tokens (bytes / 2; token-id inputs counted).
pub(crate) fn embeddings_upper_bound(req: &crate::types::EmbeddingsRequest) -> u64 {
    use serde_json::Value;
    fn walk(v: &Value) -> u64 {
        match v {
            Value::String(s) => (s.len() as u64).div_ceil(2).max(1),
            Value::Array(items) => items.iter().map(walk).sum(),
            Value::Number(_) => 1,
            _ => 0,
        }
    }
    walk(&req.input)
}

/// Ledger units, rounded up (a reservation never holds less than the worst case).
fn units_ceil(d: Decimal) -> Option<i64> {
    d.checked_mul(Decimal::from(UNITS_PER_CREDIT))?
        .ceil()
        .to_i64()
}

/// The billing side of one call: how it is charged, and the credit held for it. While armed
/// (credit held, not yet settled), dropping it — the caller went away before a non-streaming
/// answer — records the call as cancelled at zero cost, which releases the whole hold.
pub(crate) struct Hold {
    pub(crate) mode: BillingMode,
    pub(crate) model_type: ModelType,
    pub(crate) account: Option<String>,
    pub(crate) reserved: i64,
    /// The highest-priced candidate's price (charged if the serving provider has no price).
    pub(crate) fallback: Option<Arc<Price>>,
    pub(crate) quality: Option<String>,
    pub(crate) size: Option<String>,
    /// Boxed: a stream's meter and its heartbeat entry each carry a `Hold`, and an unarmed one
    /// should not cost a whole inline record per open stream.
    armed: Option<Box<(Hub, UsageRecord)>>,
    /// The call's worst case held against its key's spend budget (released if never settled).
    budget: Option<crate::budget::BudgetPermit>,
}

impl Hold {
    /// Its pricing terms, unarmed (pricing a copy never records anything).
    fn terms(&self) -> Hold {
        Hold {
            mode: self.mode,
            model_type: self.model_type,
            account: self.account.clone(),
            reserved: self.reserved,
            fallback: self.fallback.clone(),
            quality: self.quality.clone(),
            size: self.size.clone(),
            budget: None,
            armed: None,
        }
    }

    /// The record it was armed with, moved out, which disarms it: from here the caller must
    /// commit the record, or hand it to something that records the call when dropped (a
    /// stream's meter), with no await in between.
    pub(crate) fn take_armed(&mut self) -> Option<UsageRecord> {
        self.armed.take().map(|armed| armed.1)
    }

    fn free(mode: BillingMode, model_type: ModelType) -> Hold {
        Hold {
            mode,
            model_type,
            account: None,
            reserved: 0,
            fallback: None,
            quality: None,
            size: None,
            armed: None,
            budget: None,
        }
    }
}

/// What a stream has delivered so far: updated by its meter per chunk (in memory only), read by
/// the heartbeat, which persists it with the stream's reservation so that a restart after a
/// crash charges the delivered part.
#[derive(Default)]
pub(crate) struct Delivered {
    /// Delivered output text not counted yet, while the provider has sent no usage.
    pub(crate) output: String,
    /// The tokens of the text delivered before `output`, which a heartbeat counted and dropped:
    /// each beat counts the text up to the last point where it can be cut (`tokenize::cut`)
    /// once, and keeps only what follows. Beats used to copy and count all of a stream's output
    /// again, and an open stream kept all of it until its end.
    pub(crate) counted: u64,
    /// Bytes of output delivered in all (`output` and what was counted).
    len: usize,
    /// Usage as the provider reported it.
    pub(crate) usage: Option<Usage>,
    /// What the last successful heartbeat persisted (and so that the store has the record).
    persisted: Option<DeliveredMark>,
}

impl Delivered {
    /// More output delivered.
    pub(crate) fn push(&mut self, text: &str) {
        self.output.push_str(text);
        self.len += text.len();
    }
}

/// `(bytes of output delivered, usage)`: changes whenever more is delivered.
type DeliveredMark = (usize, Option<Usage>);

/// Streams whose progress one heartbeat transaction persists (`Hub::ledger_upkeep`).
pub(crate) const HEARTBEAT_STREAMS: usize = 256;

/// The longest a heartbeat waits between two of its transactions ([`beat_gap`]).
const BEAT_GAP_MAX: Duration = Duration::from_millis(50);

/// How long a heartbeat of `batches` transactions waits between two of them: its transactions
/// spread over at most half the interval (`every`), at most [`BEAT_GAP_MAX`] apart.
///
/// A beat persists the progress of every open stream that moved, and with 5,000 streams open its
/// ~20 transactions, back to back, took the hub's one core whole for ~50–100 ms every 2 s (the
/// streams' text counted, their JSON written, their rows updated): every other call in flight
/// waited that long, which showed as the tail latency of plain calls served beside the streams
/// (BENCHMARKS.md, twenty-sixth session). Spread out, the same work comes one transaction at a
/// time with the core free between, and the beat still ends before the next begins.
pub(crate) fn beat_gap(batches: usize, every: Duration) -> Duration {
    match u32::try_from(batches.saturating_sub(1)).unwrap_or(u32::MAX) {
        0 => Duration::ZERO,
        gaps => (every / 2 / gaps).min(BEAT_GAP_MAX),
    }
}

/// Runs `beat` on `items` in slices of `per` (the last may be shorter), waiting `gap` between two.
async fn paced<'a, T, F, Fut>(
    items: &'a [T],
    per: usize,
    gap: Duration,
    mut beat: F,
) -> Result<(), StoreError>
where
    F: FnMut(&'a [T]) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    for (i, batch) in items.chunks(per).enumerate() {
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        beat(batch).await?;
    }
    Ok(())
}

/// A stream holding a reservation, as the heartbeat sees it.
pub(crate) struct InFlight {
    pub(crate) delivered: Arc<parking_lot::Mutex<Delivered>>,
    /// Its usage record so far (identity, provider, model; no usage yet), shared with the
    /// stream's meter: one copy per open stream, not two.
    record: Arc<UsageRecord>,
    req: Arc<crate::types::ChatRequest>,
    /// o200k estimate of the prompt, computed at the first heartbeat that needs it.
    prompt_estimate: std::sync::OnceLock<u64>,
    terms: Hold,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(armed) = self.armed.take() {
            let (hub, mut rec) = *armed;
            rec.status = CallStatus::Cancelled;
            rec.http_status = 499;
            rec.error_class = Some("client_closed".to_string());
            rec.error_message = Some(
                "client cancelled: the caller closed the connection before the answer; the upstream call was cancelled and nothing was delivered"
                    .to_string(),
            );
            rec.billing = crate::store::Billing {
                mode: Some(self.mode.as_str().to_string()),
                price_version: None,
                cost_units: 0,
                provider_cost_units: 0,
                account: self.account.clone(),
                reserved_units: self.reserved,
                shortfall_units: 0,
            };
            hub.settle_budget(&rec);
            hub.inner.writer.submit(rec);
        }
    }
}

impl Hub {
    /// The billing configuration in force now.
    pub fn billing(&self) -> Arc<BillingConfig> {
        self.inner.billing.load_full()
    }

    /// Prefix to show before credit amounts (the original's `creditPrefix`).
    pub fn credit_prefix(&self) -> String {
        self.inner.billing.load().credit_prefix.clone()
    }

    /// Records a call refused before dispatch (402, unpriced model) and hands the error back.
    pub(crate) async fn rejected(
        &self,
        ctx: &CallContext,
        endpoint: &str,
        model: &str,
        stream: bool,
        e: HubError,
    ) -> HubError {
        self.record_rejected(ctx, endpoint, model, stream, &e).await;
        e
    }

    /// Reserves the worst-case cost of a call before any upstream traffic (credits mode), or
    /// just prepares its costing (internal mode). 402 when the balance does not cover it. A key
    /// with a spend budget is checked first, against the same worst case in the unit the hub
    /// charges (credit rates, or provider unit costs in internal mode): 429 `budget_exceeded`.
    pub(crate) async fn reserve(
        &self,
        ctx: &CallContext,
        model: &str,
        endpoint: &str,
        stream: bool,
        demand: Demand<'_>,
    ) -> Result<Hold, HubError> {
        let cfg = self.inner.billing.load();
        let ty = demand.model_type();
        let mut hold = Hold::free(cfg.mode, ty);
        if let Demand::Images { quality, size, .. } = &demand {
            hold.quality = quality.map(str::to_string);
            hold.size = size.map(str::to_string);
        }
        let candidates = {
            let snap = self.inner.snapshot.load();
            router::candidates(model, &self.inner.catalog, |k| {
                snap.providers.contains_key(&k)
            })
        };
        let Ok(candidates) = candidates else {
            return Ok(hold); // dispatch reports the unknown model
        };
        let budget = self.key_budget(ctx);
        let mut worst: Option<(Decimal, Arc<Price>)> = None;
        // Internal mode with a budget: the worst case at provider unit costs.
        let mut worst_unit: Option<Decimal> = None;
        for c in &candidates {
            if let Some(p) = cfg.prices.get(c.provider, &c.upstream_model, ty) {
                let w = demand.worst(&p.rates, cfg.max_output_tokens);
                if worst.as_ref().is_none_or(|(x, _)| w > *x) {
                    worst = Some((w, p.clone()));
                }
                if budget.is_some()
                    && let Some(u) = &p.unit
                {
                    let w = demand.worst(u, cfg.max_output_tokens);
                    worst_unit = Some(worst_unit.map_or(w, |x| x.max(w)));
                }
            }
        }
        hold.fallback = worst.as_ref().map(|(_, p)| p.clone());
        if let Some(budget) = budget {
            let w = match cfg.mode {
                BillingMode::Credits => worst.as_ref().map(|(w, _)| *w),
                BillingMode::Internal => worst_unit,
            };
            let Some(w) = w else {
                // An unpriced call would cost nothing against the budget: not a way around it.
                return Err(HubError::invalid_param(
                    "model",
                    format!("The model `{model}` has no price on this hub, so this API key's spend budget cannot be applied to it. Ask an administrator to set one."),
                )
                .with_code("model_not_priced"));
            };
            let w = units_ceil(w).ok_or_else(|| {
                HubError::invalid("the worst-case cost of this request is out of range")
            })?;
            hold.budget = Some(self.admit_budget(budget, ctx, w)?);
        }
        if cfg.mode == BillingMode::Internal {
            return Ok(hold);
        }
        let Some((worst, _)) = worst else {
            return Err(HubError::invalid_param(
                "model",
                format!("The model `{model}` has no price on this hub, so it cannot be billed. Ask an administrator to set one."),
            )
            .with_code("model_not_priced"));
        };
        let account = match &ctx.principal.team_id {
            Some(t) => team_account(t),
            None => user_account(&ctx.principal.user_id),
        };
        let amount = units_ceil(worst).ok_or_else(|| {
            HubError::invalid("the worst-case cost of this request is out of range")
        })?;
        hold.account = Some(account.clone());
        if !self.inner.switches.reservation {
            // Benchmarking only (HUB_BENCH_DISABLE=reservation): nothing held; the record's
            // settlement still charges the cost (never beyond the balance).
            return Ok(hold);
        }
        let now = now_ms();
        let starter = if ctx.principal.team_id.is_none() {
            cfg.starter(now)
        } else {
            None
        };
        let outcome = self
            .inner
            .ledger
            .reserve(ReserveReq {
                request_id: ctx.request_id.clone(),
                account,
                amount,
                instance: self.inner.instance.clone(),
                now_ms: now,
                starter,
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "reservation failed");
                HubError::internal(
                    "credits could not be reserved for this call; nothing was sent upstream",
                )
            })?;
        match outcome {
            ReserveOutcome::Reserved => {
                hold.reserved = amount;
                hold.armed = Some(Box::new((
                    self.clone(),
                    self.record(ctx, endpoint, model, stream),
                )));
                Ok(hold)
            }
            ReserveOutcome::Insufficient { available } => {
                tracing::debug!(needed = amount, available, "not enough credits");
                Err(HubError::insufficient_credits(cfg.payment_link.clone()))
            }
            ReserveOutcome::Duplicate => Err(HubError::invalid(format!(
                "request id {} was used before",
                ctx.request_id
            ))),
        }
    }

    /// Prices a call's usage and puts cost, price version and settlement on its record; the
    /// store settles it in the record's own transaction. Returns the cost: credits charged
    /// (credits mode) or the provider's list cost (internal mode).
    pub(crate) fn charge(
        &self,
        rec: &mut UsageRecord,
        hold: &mut Hold,
        usage: &Usage,
    ) -> Option<Decimal> {
        hold.armed = None;
        let cfg = self.inner.billing.load();
        let served = rec
            .provider
            .as_deref()
            .and_then(ProviderKind::from_name)
            .zip(rec.upstream_model.as_deref())
            .and_then(|(p, m)| cfg.prices.get(p, m, hold.model_type).cloned());
        let price = served.or_else(|| hold.fallback.clone());
        let (q, s) = (hold.quality.as_deref(), hold.size.as_deref());
        let (cost, provider_cost, version) = match &price {
            Some(p) => {
                let provider_cost = p
                    .unit
                    .as_ref()
                    .map_or(Decimal::ZERO, |u| u.cost(hold.model_type, usage, q, s));
                let cost = match hold.mode {
                    BillingMode::Credits => p.rates.cost(hold.model_type, usage, q, s),
                    BillingMode::Internal => provider_cost,
                };
                (cost, provider_cost, (p.version > 0).then_some(p.version))
            }
            None => (Decimal::ZERO, Decimal::ZERO, None),
        };
        let cost_units = to_units(cost).unwrap_or(i64::MAX);
        rec.billing = crate::store::Billing {
            mode: Some(hold.mode.as_str().to_string()),
            price_version: version,
            cost_units,
            provider_cost_units: to_units(provider_cost).unwrap_or(0),
            account: hold.account.clone(),
            reserved_units: hold.reserved,
            shortfall_units: 0,
        };
        price.map(|_| from_units(cost_units))
    }

    /// Registers a stream holding a reservation for the heartbeat (nothing when none is held).
    pub(crate) fn track_stream(
        &self,
        record: &Arc<UsageRecord>,
        req: &Arc<crate::types::ChatRequest>,
        hold: &Hold,
        delivered: &Arc<parking_lot::Mutex<Delivered>>,
    ) {
        if hold.reserved > 0 {
            self.inner.in_flight.lock().insert(
                record.id.clone(),
                Arc::new(InFlight {
                    delivered: delivered.clone(),
                    record: Arc::clone(record),
                    req: req.clone(),
                    prompt_estimate: std::sync::OnceLock::new(),
                    terms: hold.terms(),
                }),
            );
        }
    }

    /// Forgets a stream (settled: its own record carries its usage now).
    pub(crate) fn untrack_stream(&self, request_id: &str) {
        self.inner.in_flight.lock().remove(request_id);
    }

    /// For each of `streams` whose delivered part changed since the last beat: the record to
    /// write if this instance dies now (usage so far, estimated, priced, flagged `reconciled`),
    /// and beside it the stream with the mark to remember once it is persisted.
    ///
    /// The output's tokens are counted from the last cut on (`Delivered::counted`), and only
    /// the text after it is copied out of the lock: counting and copying all of it at every beat
    /// took time that grew with everything every stream had delivered.
    fn delivered_so_far(
        &self,
        streams: &[Arc<InFlight>],
    ) -> (Vec<StreamBeat>, Vec<(Arc<InFlight>, DeliveredMark)>) {
        let mut beats = Vec::new();
        let mut marks = Vec::new();
        for f in streams {
            let (output, counted, usage, mark, stored) = {
                let d = f.delivered.lock();
                let mark = (d.len, d.usage);
                if d.persisted == Some(mark) || (mark.0 == 0 && mark.1.is_none()) {
                    continue; // unchanged, or nothing delivered yet (released if it dies)
                }
                (
                    d.output.clone(),
                    d.counted,
                    d.usage,
                    mark,
                    d.persisted.is_some(),
                )
            };
            let usage = match usage {
                Some(u) if u.prompt_tokens > 0 || u.completion_tokens > 0 => Usage {
                    estimated: true,
                    ..u
                },
                _ => Usage {
                    prompt_tokens: *f
                        .prompt_estimate
                        .get_or_init(|| crate::tokenize::estimate_prompt(&f.req)),
                    completion_tokens: {
                        let at = crate::tokenize::cut(&output);
                        let before = counted + crate::tokenize::count(&output[..at]);
                        if at > 0 {
                            // Counted up to the cut: drop that part, unless the stream ended
                            // (its meter took the output) since it was copied.
                            let mut d = f.delivered.lock();
                            if d.counted == counted && d.output.len() >= at {
                                d.output = d.output[at..].to_string();
                                d.counted = before;
                            }
                        }
                        before + crate::tokenize::count(&output[at..])
                    },
                    estimated: true,
                    ..Usage::default()
                },
            };
            let mut rec = UsageRecord::clone(&f.record);
            super::meter::apply_usage(&mut rec, &usage);
            rec.latency_ms = (now_ms() - rec.created_at_ms).max(0) as u64;
            rec.status = CallStatus::Failed;
            rec.error_class = Some("reconciled".to_string());
            rec.error_message = Some(
                "the hub stopped mid-stream; charged for what was delivered up to its last heartbeat (estimated)"
                    .to_string(),
            );
            let mut terms = f.terms.terms();
            self.charge(&mut rec, &mut terms, &usage);
            beats.push(StreamBeat {
                record: rec,
                stored,
            });
            marks.push((f.clone(), mark));
        }
        (beats, marks)
    }

    /// Reloads the billing configuration (settings and prices) from the store.
    pub(crate) async fn reload_billing(&self) -> Result<(), StoreError> {
        let cfg =
            load_billing_config(self.inner.store.as_ref(), &self.inner.billing_defaults).await?;
        let old = self.inner.billing.load_full();
        if cfg.report_zones != old.report_zones {
            // Rebuilt from the 15-minute roll-up; usage writes wait for it (one transaction).
            if let Err(e) = self.apply_report_zones(&cfg.report_zones).await {
                tracing::error!(error = %e, "report time zones could not be applied; reports in them read the 15-minute roll-up");
            }
        }
        self.inner.billing.store(Arc::new(cfg));
        Ok(())
    }

    /// Makes the store keep day roll-ups for these report zones (building new ones now).
    pub(crate) async fn apply_report_zones(&self, zones: &[ReportZone]) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let rep = self.inner.store.set_report_zones(zones).await?;
        if !rep.built.is_empty() || !rep.dropped.is_empty() {
            tracing::info!(
                built = ?rep.built,
                dropped = ?rep.dropped,
                rows = rep.rows,
                ms = started.elapsed().as_millis() as u64,
                "report time zones: day roll-ups rebuilt from the 15-minute roll-up"
            );
        }
        Ok(())
    }

    /// Background upkeep: heartbeat, release reservations of dead instances, expire grants.
    pub(crate) fn spawn_ledger_upkeep(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.billing_defaults.heartbeat;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let hub = Hub { inner };
                if let Err(e) = hub.ledger_upkeep(n.is_multiple_of(30)).await {
                    tracing::error!(error = %e, "ledger upkeep failed");
                }
                n += 1;
            }
        });
        *self.inner.upkeep.lock() = Some(task);
    }

    /// One round of upkeep (also run once at open, before serving).
    pub(crate) async fn ledger_upkeep(&self, expire: bool) -> Result<(), StoreError> {
        let store = self.inner.store.as_ref();
        let d = &self.inner.billing_defaults;
        let now = now_ms();
        // The streams' progress goes out [`HEARTBEAT_STREAMS`] at a time, each batch a
        // transaction of its own that also beats for the instance: what a beat holds in memory
        // (records, their JSON, the transaction's pages) and how long it holds the write lock no
        // longer grow with the streams open. With 5,000 streams open, one transaction of every
        // stream's record put the hub's peak RSS at 237 MB, batches at 225 (BENCHMARKS.md,
        // twenty-first session).
        // The transactions are spread over the first half of the interval (`beat_gap`).
        let streams: Vec<Arc<InFlight>> = self.inner.in_flight.lock().values().cloned().collect();
        if streams.is_empty() {
            store.heartbeat(&self.inner.instance, now, &[]).await?;
        }
        let gap = beat_gap(streams.len().div_ceil(HEARTBEAT_STREAMS), d.heartbeat);
        paced(&streams, HEARTBEAT_STREAMS, gap, |batch| async move {
            let (beats, marks) = self.delivered_so_far(batch);
            store.heartbeat(&self.inner.instance, now, &beats).await?;
            for (f, mark) in marks {
                f.delivered.lock().persisted = Some(mark);
            }
            Ok(())
        })
        .await?;
        let stale_before = now - 5 * d.heartbeat.as_millis() as i64;
        let older_than = now - d.reconcile_window.as_millis() as i64;
        let rep = store
            .reconcile(&self.inner.instance, now, stale_before, older_than)
            .await?;
        if rep.released > 0 {
            tracing::warn!(
                released = rep.released,
                credits = %from_units(rep.released_units),
                "released reservations left open by a stopped instance (flagged `reconciled`)"
            );
        }
        if expire {
            let n = store.expire_grants(now).await?;
            if n > 0 {
                tracing::info!(grants = n, "expired grants");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_spreads_over_at_most_half_its_interval() {
        let every = Duration::from_secs(2);
        assert_eq!(beat_gap(0, every), Duration::ZERO);
        assert_eq!(beat_gap(1, every), Duration::ZERO);
        // Two transactions: as far apart as the cap allows.
        assert_eq!(beat_gap(2, every), BEAT_GAP_MAX);
        // 5,000 streams: 20 transactions, 19 gaps of 50 ms (1 s / 19 is more).
        assert_eq!(
            beat_gap(5_000usize.div_ceil(HEARTBEAT_STREAMS), every),
            BEAT_GAP_MAX
        );
        // 100,000 streams: 391 transactions within the first second.
        let n = 100_000usize.div_ceil(HEARTBEAT_STREAMS);
        let gap = beat_gap(n, every);
        assert!(gap > Duration::ZERO && gap < BEAT_GAP_MAX, "{gap:?}");
        assert!(gap * (n as u32 - 1) <= every / 2, "{gap:?} x {n}");
        // A short interval (tests beat every 100 ms) keeps its beats inside it too.
        let short = Duration::from_millis(100);
        assert!(beat_gap(20, short) * 19 <= short / 2);
        assert_eq!(beat_gap(usize::MAX, every), every / 2 / u32::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn a_beats_transactions_are_gap_apart_and_cover_every_stream() -> Result<(), StoreError> {
        let items: Vec<usize> = (0..600).collect();
        let start = tokio::time::Instant::now();
        let seen = parking_lot::Mutex::new(Vec::new());
        paced(&items, 256, Duration::from_millis(40), |batch| {
            let seen = &seen;
            async move {
                seen.lock().push((start.elapsed(), batch.len(), batch[0]));
                Ok(())
            }
        })
        .await?;
        let ms = Duration::from_millis;
        assert_eq!(
            *seen.lock(),
            vec![(ms(0), 256, 0), (ms(40), 256, 256), (ms(80), 88, 512)]
        );
        // No gap: back to back, as before.
        let t = tokio::time::Instant::now();
        paced(&items, 256, Duration::ZERO, |_| async { Ok(()) }).await?;
        assert_eq!(t.elapsed(), Duration::ZERO);
        // A failed transaction ends the beat there.
        let mut calls = 0;
        let failed = paced(&items, 256, ms(1), |_| {
            calls += 1;
            let n = calls;
            async move {
                if n == 2 {
                    Err(StoreError::Db("disk full".into()))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(failed.is_err());
        assert_eq!(calls, 2);
        Ok(())
    }

    #[test]
    fn env_defaults_parse_and_reject_nonsense() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let d = BillingDefaults::from_env(env(&[
            ("HUB_BILLING_MODE", "credits"),
            ("HUB_STARTER_CREDITS", "1.5"),
            ("HUB_STARTER_EXPIRY_DAYS", "30"),
            ("HUB_MAX_OUTPUT_TOKENS", "100"),
        ]));
        let d = d.unwrap_or_default();
        assert_eq!(d.mode, BillingMode::Credits);
        assert_eq!(d.starter_credits, Decimal::new(15, 1));
        assert_eq!(d.starter_expiry_days, Some(30));
        assert_eq!(d.max_output_tokens, 100);
        assert!(BillingDefaults::from_env(env(&[("HUB_BILLING_MODE", "free")])).is_err());
        assert!(BillingDefaults::from_env(env(&[("HUB_STARTER_CREDITS", "1e-20")])).is_err());
    }

    #[test]
    fn worst_case_covers_every_prompt_rate_and_the_output_cap() {
        let r = Rates {
            input: Decimal::new(1, 6),
            output: Decimal::new(2, 6),
            cache_write: Some(Decimal::new(125, 8)),
            ..Rates::default()
        };
        let w = Demand::Chat {
            prompt_tokens: 100,
            max_output: None,
        }
        .worst(&r, 50);
        // 100 × 1.25e-6 + 50 × 2e-6
        assert_eq!(w, Decimal::new(225, 6));
        let w = Demand::Chat {
            prompt_tokens: 100,
            max_output: Some(10),
        }
        .worst(&r, 50);
        assert_eq!(w, Decimal::new(145, 6));
        assert_eq!(units_ceil(Decimal::new(1, 11)), Some(1));
    }
}
