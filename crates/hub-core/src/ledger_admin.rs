//! Prices, credits, billing settings and usage reports as the admin API and the CLI run them:
//! who may (scopes of `crate::iam`), what is valid (a 400 naming the field), and every change
//! committed with its audit entry in one transaction.
//!
//! Amounts cross this boundary as decimal text (`"12.5"`); JSON numbers are accepted and read
//! through their text, never through a float.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{ErrorKind, HubError};
use crate::hub::{BillingConfig, billing_keys, now_ms};
use crate::iam::{Actor, Scope, commit, entry, require_admin, require_all};
use crate::ledger::report::{ReportRow, totals};
use crate::ledger::{
    GrantKind, GrantOutcome, GrantReq, LedgerEntry, Quota, ReportQuery, UsageFilter, quota_of,
    team_account, user_account,
};
use crate::pricing::{BillingMode, Price, PriceBook, Rates, from_units, parse_amount, round};
use crate::providers::ProviderKind;
use crate::store::iam::{Applied, Change};
use crate::store::{Store, StoreError, UsageRecord};
use crate::types::ModelType;

fn store_err(e: StoreError) -> HubError {
    match e {
        StoreError::NotFound(m) => not_found(format!("not found: {m}")),
        StoreError::Conflict(m) => conflict(format!("conflict: {m}")),
        StoreError::Db(m) => {
            tracing::error!(error = %m, "store failure in an admin operation");
            HubError::internal("the database failed; see the server log")
        }
    }
}

fn not_found(msg: impl Into<String>) -> HubError {
    HubError::new(ErrorKind::NotFound, msg).with_code("not_found")
}

fn conflict(msg: impl Into<String>) -> HubError {
    HubError::new(ErrorKind::Conflict, msg).with_code("conflict")
}

fn bad(field: &str, msg: impl Into<String>) -> HubError {
    HubError::invalid_param(field, msg)
}

/// A decimal given as JSON text (`"0.15"`) or number (`0.15`, read through its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecimalIn(pub Decimal);

impl<'de> Deserialize<'de> for DecimalIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let text = match &v {
            serde_json::Value::String(s) => s.trim().to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => {
                return Err(serde::de::Error::custom(
                    "expected a decimal number or string",
                ));
            }
        };
        // `Decimal::from_str` rejects exponents; `from_scientific` reads `1e-7`.
        Decimal::from_str(&text)
            .or_else(|_| Decimal::from_scientific(&text))
            .map(DecimalIn)
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a decimal number")))
    }
}

fn parse_provider(field: &str, name: &str) -> Result<ProviderKind, HubError> {
    ProviderKind::from_name(name).ok_or_else(|| {
        let all: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.name()).collect();
        bad(
            field,
            format!("unknown provider `{name}` (known: {})", all.join(", ")),
        )
    })
}

/// `chat`, `embedding` or `image`.
pub fn parse_model_type(s: &str) -> Result<ModelType, HubError> {
    match s.trim() {
        "chat" => Ok(ModelType::Chat),
        "embedding" => Ok(ModelType::Embedding),
        "image" => Ok(ModelType::Image),
        other => Err(bad(
            "type",
            format!("`type` must be chat, embedding or image, got `{other}`"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// prices

const MILLION: i64 = 1_000_000;

fn per_million(d: Decimal) -> String {
    (d * Decimal::from(MILLION)).normalize().to_string()
}

/// Rates as shown: per 1M tokens (per image for `image`, `image_by`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RatesView {
    pub input: String,
    pub output: String,
    pub cache_read: Option<String>,
    pub cache_write: Option<String>,
    pub image: Option<String>,
    pub image_by: BTreeMap<String, String>,
}

impl RatesView {
    fn of(r: &Rates) -> RatesView {
        RatesView {
            input: per_million(r.input),
            output: per_million(r.output),
            cache_read: r.cache_read.map(per_million),
            cache_write: r.cache_write.map(per_million),
            image: r.image.map(|d| d.normalize().to_string()),
            image_by: r
                .image_by
                .iter()
                .map(|(k, v)| (k.clone(), v.normalize().to_string()))
                .collect(),
        }
    }
}

/// One price version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PriceView {
    pub version: i64,
    pub provider: String,
    pub model: String,
    /// `chat`, `embedding`, `image`.
    #[serde(rename = "type")]
    pub model_type: String,
    /// The provider's list cost in USD, when known.
    pub unit_cost: Option<RatesView>,
    /// Margin in percent the rates were derived with (`None`: rates set by hand).
    pub margin_pct: Option<String>,
    /// What a caller is charged, in credits.
    pub rates: RatesView,
    /// `builtin`, `admin`, `bulk`.
    pub source: String,
    pub created_at_ms: i64,
    /// A disabled version: the model has no price (calls to it cannot be billed).
    pub disabled: bool,
}

impl PriceView {
    pub fn of(p: &Price) -> PriceView {
        PriceView {
            version: p.version,
            provider: p.provider.name().to_string(),
            model: p.model.clone(),
            model_type: p.model_type.as_str().to_string(),
            unit_cost: p.unit.as_ref().map(RatesView::of),
            margin_pct: p.margin_pct.map(|m| m.normalize().to_string()),
            rates: RatesView::of(&p.rates),
            source: p.source.clone(),
            created_at_ms: p.created_at_ms,
            disabled: p.disabled,
        }
    }
}

/// Which prices to list.
#[derive(Debug, Clone, Default)]
pub struct PriceFilter {
    /// Every version, oldest first (default: the current version of each price).
    pub history: bool,
    pub provider: Option<String>,
    pub model: Option<String>,
}

pub async fn list_prices(
    store: &dyn Store,
    actor: &Actor,
    f: &PriceFilter,
) -> Result<Vec<PriceView>, HubError> {
    require_admin(actor)?;
    let provider = f
        .provider
        .as_deref()
        .map(|p| parse_provider("provider", p))
        .transpose()?;
    Ok(store
        .list_prices(f.history)
        .await
        .map_err(store_err)?
        .iter()
        .filter(|p| provider.is_none_or(|k| p.provider == k))
        .filter(|p| f.model.as_ref().is_none_or(|m| &p.model == m))
        .map(PriceView::of)
        .collect())
}

/// Rates as given: per 1M tokens, per image for `image`. Absent fields are zero (input, output)
/// or "same as input / output" (cache, image).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RatesIn {
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(default)]
    pub input: Option<DecimalIn>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(default)]
    pub output: Option<DecimalIn>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(default)]
    pub cache_read: Option<DecimalIn>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(default)]
    pub cache_write: Option<DecimalIn>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(default)]
    pub image: Option<DecimalIn>,
}

impl RatesIn {
    /// Per-token rates; `field` names the object in errors.
    pub fn to_rates(&self, field: &str) -> Result<Rates, HubError> {
        let check = |name: &str, v: Option<DecimalIn>| -> Result<Option<Decimal>, HubError> {
            match v {
                Some(DecimalIn(d)) if d < Decimal::ZERO => {
                    Err(bad(field, format!("`{field}.{name}` must not be negative")))
                }
                Some(DecimalIn(d)) if d > Decimal::from(MILLION) => {
                    Err(bad(field, format!("`{field}.{name}` is out of range")))
                }
                Some(DecimalIn(d)) => Ok(Some(d)),
                None => Ok(None),
            }
        };
        let m = Decimal::from(MILLION);
        let per_token = |d: Decimal| round(d / m);
        Ok(Rates {
            input: check("input", self.input)?.map_or(Decimal::ZERO, per_token),
            output: check("output", self.output)?.map_or(Decimal::ZERO, per_token),
            cache_read: check("cache_read", self.cache_read)?.map(per_token),
            cache_write: check("cache_write", self.cache_write)?.map(per_token),
            image: check("image", self.image)?,
            image_by: Default::default(),
        })
    }
}

/// A price to set (a new version; earlier versions stay).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PriceIn {
    pub provider: String,
    /// The provider's own model id (`gpt-4o-mini`; `openai/gpt-4o-mini` on OpenRouter).
    pub model: String,
    /// `chat` (default), `embedding`, `image`.
    #[serde(rename = "type", default)]
    pub model_type: Option<String>,
    /// The provider's cost in USD: the rates are derived with the margin
    /// (`unit × (1 + margin/100) / base credit price`).
    #[serde(default)]
    pub unit_cost: Option<RatesIn>,
    /// Rates in credits, set by hand (the unit cost, if any, is kept for reports).
    #[serde(default)]
    pub rates: Option<RatesIn>,
    /// Margin in percent for derived rates (default: the billing setting).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(default)]
    pub margin_pct: Option<DecimalIn>,
}

fn check_margin(field: &str, m: Decimal) -> Result<Decimal, HubError> {
    if m <= Decimal::from(-100) || m > Decimal::from(10_000) {
        return Err(bad(
            field,
            format!("`{field}` must be above -100 and at most 10000 (percent)"),
        ));
    }
    Ok(m)
}

fn price_target(p: &Price) -> String {
    format!(
        "{}:{}:{}",
        p.provider.name(),
        p.model_type.as_str(),
        p.model
    )
}

async fn current_price(
    store: &dyn Store,
    key: &(ProviderKind, String, ModelType),
) -> Result<Option<Price>, HubError> {
    Ok(store
        .list_prices(false)
        .await
        .map_err(store_err)?
        .into_iter()
        .find(|p| &p.key() == key))
}

/// Commits new price versions with their audit entry; the entry's after image carries the
/// versions the store assigned.
#[expect(
    clippy::too_many_arguments,
    reason = "the audit entry's parts, each from a different caller; a struct would only rename them"
)]
async fn commit_prices(
    store: &dyn Store,
    actor: &Actor,
    action: &str,
    target: &str,
    change: Change,
    before: Option<serde_json::Value>,
    after: Vec<Price>,
    extra: Option<(&str, serde_json::Value)>,
) -> Result<Vec<PriceView>, HubError> {
    let e = entry(actor, action, target, None, before, None);
    let views = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let out = views.clone();
    let extra = extra.map(|(k, v)| (k.to_string(), v));
    store
        .commit_audited(
            change,
            Some(Box::new(move |applied: &Applied| {
                let ids: Vec<i64> = match applied {
                    Applied::Prices(ids) => ids.clone(),
                    Applied::Many(v) => v
                        .iter()
                        .flat_map(|a| match a {
                            Applied::Prices(ids) => ids.clone(),
                            _ => Vec::new(),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let shown: Vec<PriceView> = after
                    .iter()
                    .zip(ids)
                    .map(|(p, id)| {
                        PriceView::of(&Price {
                            version: id,
                            ..p.clone()
                        })
                    })
                    .collect();
                let mut img = serde_json::json!({ "prices": shown });
                if let Some((k, v)) = extra {
                    img[k] = v;
                }
                *out.lock() = shown;
                crate::store::iam::AuditEntry {
                    after: Some(img),
                    ..e
                }
            })),
        )
        .await
        .map_err(store_err)?;
    let v = views.lock().clone();
    Ok(v)
}

/// Sets the price of one model: a new version; history is never rewritten.
pub async fn set_price(
    store: &dyn Store,
    actor: &Actor,
    cfg: &BillingConfig,
    input: &PriceIn,
) -> Result<PriceView, HubError> {
    require_all(actor)?;
    let provider = parse_provider("provider", &input.provider)?;
    let model = input.model.trim();
    if model.is_empty() || model.chars().count() > 200 {
        return Err(bad("model", "`model` must be 1 to 200 characters"));
    }
    let ty = parse_model_type(input.model_type.as_deref().unwrap_or("chat"))?;
    let key = (provider, model.to_string(), ty);
    let before = current_price(store, &key).await?;
    let unit = input
        .unit_cost
        .as_ref()
        .map(|u| u.to_rates("unit_cost"))
        .transpose()?;
    let (unit, rates, margin) = match (unit, &input.rates) {
        (None, None) => {
            return Err(bad(
                "unit_cost",
                "give `unit_cost` (USD; rates derived with the margin) or `rates` (credits)",
            ));
        }
        (Some(unit), None) => {
            let margin = check_margin(
                "margin_pct",
                input
                    .margin_pct
                    .map_or(cfg.pricing.margin_pct, |DecimalIn(m)| m),
            )?;
            let rates = Rates::derive(&unit, margin, cfg.pricing.base_credit_price);
            (Some(unit), rates, Some(margin))
        }
        (unit, Some(r)) => {
            if input.margin_pct.is_some() {
                return Err(bad(
                    "margin_pct",
                    "`margin_pct` derives rates from `unit_cost`; it cannot go with explicit `rates`",
                ));
            }
            let unit = unit.or_else(|| before.as_ref().and_then(|p| p.unit.clone()));
            (unit, r.to_rates("rates")?, None)
        }
    };
    let price = Price {
        version: 0,
        provider,
        model: model.to_string(),
        model_type: ty,
        unit,
        margin_pct: margin,
        rates,
        source: "admin".to_string(),
        created_at_ms: now_ms(),
        disabled: false,
    };
    let target = price_target(&price);
    let before = before
        .as_ref()
        .map(PriceView::of)
        .and_then(|v| serde_json::to_value(v).ok());
    let views = commit_prices(
        store,
        actor,
        "price.set",
        &target,
        Change::InsertPrices(vec![price.clone()]),
        before,
        vec![price],
        None,
    )
    .await?;
    views
        .into_iter()
        .next()
        .ok_or_else(|| HubError::internal("the price was not stored"))
}

/// Disables the price whose current version is `version` (a disabled version is appended; the
/// history stays). `version` must be current: a stale one is a 409.
pub async fn disable_price(
    store: &dyn Store,
    actor: &Actor,
    version: i64,
) -> Result<PriceView, HubError> {
    require_all(actor)?;
    let all = store.list_prices(true).await.map_err(store_err)?;
    let Some(p) = all.iter().find(|p| p.version == version) else {
        return Err(not_found(format!("no price version {version}")));
    };
    let current = all
        .iter()
        .filter(|q| q.key() == p.key())
        .max_by_key(|q| q.version)
        .unwrap_or(p);
    if current.version != version {
        return Err(conflict(format!(
            "price version {version} is not current (the current version of {} is {})",
            price_target(p),
            current.version
        )));
    }
    if current.disabled {
        return Err(conflict(format!(
            "the price of {} is already disabled",
            price_target(p)
        )));
    }
    let off = Price {
        version: 0,
        disabled: true,
        source: "admin".to_string(),
        created_at_ms: now_ms(),
        ..current.clone()
    };
    let before = serde_json::to_value(PriceView::of(current)).ok();
    let views = commit_prices(
        store,
        actor,
        "price.disable",
        &price_target(current),
        Change::InsertPrices(vec![off.clone()]),
        before,
        vec![off],
        None,
    )
    .await?;
    views
        .into_iter()
        .next()
        .ok_or_else(|| HubError::internal("the price was not stored"))
}

/// A bulk re-price.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RepriceIn {
    /// Margin in percent.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub margin_pct: DecimalIn,
    /// Only this provider's prices (the margin setting is then left as it is).
    #[serde(default)]
    pub provider: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RepriceOut {
    pub margin_pct: String,
    /// Whether the margin setting (used for new derived prices) changed too.
    pub margin_setting_updated: bool,
    /// The new versions (prices whose rates did not change are left alone).
    pub repriced: Vec<PriceView>,
}

/// Re-derives every price with unit costs (of one provider, or all) with a new margin; without
/// a provider filter the margin setting changes too. All in one transaction with its audit entry.
pub async fn reprice(
    store: &dyn Store,
    actor: &Actor,
    cfg: &BillingConfig,
    input: &RepriceIn,
) -> Result<RepriceOut, HubError> {
    require_all(actor)?;
    let margin = check_margin("margin_pct", input.margin_pct.0)?.normalize();
    let provider = input
        .provider
        .as_deref()
        .map(|p| parse_provider("provider", p))
        .transpose()?;
    let book = PriceBook::new(store.list_prices(false).await.map_err(store_err)?);
    let changed: Vec<Price> =
        crate::pricing::reprice(&book, margin, cfg.pricing.base_credit_price, now_ms())
            .into_iter()
            .filter(|p| provider.is_none_or(|k| p.provider == k))
            .collect();
    let mut changes = Vec::new();
    if !changed.is_empty() {
        changes.push(Change::InsertPrices(changed.clone()));
    }
    let update_setting = provider.is_none() && cfg.pricing.margin_pct != margin;
    if update_setting {
        changes.push(Change::SetSetting {
            key: billing_keys::MARGIN_PCT.to_string(),
            value: margin.to_string(),
        });
    }
    if changes.is_empty() {
        return Ok(RepriceOut {
            margin_pct: margin.to_string(),
            margin_setting_updated: false,
            repriced: Vec::new(),
        });
    }
    let target = provider.map_or("*", |k| k.name()).to_string();
    let repriced = commit_prices(
        store,
        actor,
        "price.reprice",
        &target,
        Change::Many(changes),
        update_setting
            .then(|| serde_json::json!({ "margin_pct": cfg.pricing.margin_pct.to_string() })),
        changed,
        Some(("margin_pct", serde_json::json!(margin.to_string()))),
    )
    .await?;
    Ok(RepriceOut {
        margin_pct: margin.to_string(),
        margin_setting_updated: update_setting,
        repriced,
    })
}

// ---------------------------------------------------------------------------------------------
// credits

/// Whose balance: exactly one of a user or a team.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
pub struct AccountRef {
    /// User id.
    #[serde(default)]
    pub user: Option<String>,
    /// Team id or name (keys of a team draw on the team's balance).
    #[serde(default)]
    pub team: Option<String>,
}

/// A resolved ledger account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// `user:<id>` / `team:<id>`.
    pub id: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
}

/// Resolves and scope-checks an account: an admin of a team sees their team's account and their
/// members'; others nothing (404, as if it did not exist).
pub async fn resolve_account(
    store: &dyn Store,
    actor: &Actor,
    who: &AccountRef,
) -> Result<Account, HubError> {
    let acc = match (&who.user, &who.team) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(bad("user", "give exactly one of `user` and `team`"));
        }
        (Some(u), None) => {
            let row = store
                .list_users()
                .await
                .map_err(store_err)?
                .into_iter()
                .find(|r| &r.id == u)
                .ok_or_else(|| not_found(format!("no user `{u}`")))?;
            Account {
                id: user_account(&row.id),
                user_id: Some(row.id),
                team_id: row.team_id,
            }
        }
        (None, Some(t)) => {
            let team = crate::iam::resolve_team(store, t)
                .await
                .map_err(|_| not_found(format!("no team `{t}`")))?;
            Account {
                id: team_account(&team.id),
                user_id: None,
                team_id: Some(team.id),
            }
        }
    };
    let visible = match actor.scope() {
        Scope::All => true,
        Scope::Team(t) => acc.team_id.as_deref() == Some(t.as_str()),
        Scope::Own(u) => acc.user_id.as_deref() == Some(u.as_str()),
    };
    if !visible {
        return Err(not_found("no such account"));
    }
    Ok(acc)
}

/// A grant or an adjustment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditIn {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
    /// Decimal credits (at most 10 decimal places); signed for an adjustment.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub amount: DecimalIn,
    /// Replaying the same key changes nothing (default: a fresh key).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Why (required for an adjustment).
    #[serde(default)]
    pub reason: Option<String>,
    /// Grants only: what is left of the grant expires after this many days.
    #[serde(default)]
    pub expires_days: Option<u32>,
}

/// The outcome of a grant or adjustment.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditOut {
    pub account: String,
    /// `grant` or `adjust`.
    pub kind: String,
    pub amount: String,
    pub idempotency_key: String,
    /// The key was used before: nothing changed.
    pub replayed: bool,
    /// Available balance now.
    pub available: String,
}

/// Grants credits (positive) or adjusts a balance (signed, never below zero); idempotent by key.
pub async fn credit(
    store: &dyn Store,
    actor: &Actor,
    cfg: &BillingConfig,
    kind: GrantKind,
    input: &CreditIn,
) -> Result<CreditOut, HubError> {
    require_all(actor)?;
    let acc = resolve_account(
        store,
        actor,
        &AccountRef {
            user: input.user.clone(),
            team: input.team.clone(),
        },
    )
    .await?;
    let d = parse_amount(&input.amount.0.to_string()).map_err(|m| bad("amount", m))?;
    let units =
        crate::pricing::to_units(d).ok_or_else(|| bad("amount", "`amount` is out of range"))?;
    match kind {
        GrantKind::Grant if units <= 0 => {
            return Err(bad(
                "amount",
                "the `amount` of a grant must be positive (adjust to take credits away)",
            ));
        }
        GrantKind::Adjust if units == 0 => {
            return Err(bad(
                "amount",
                "the `amount` of an adjustment must not be zero",
            ));
        }
        _ => {}
    }
    if kind == GrantKind::Adjust && input.expires_days.is_some() {
        return Err(bad("expires_days", "only grants expire"));
    }
    let reason = input
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string);
    if kind == GrantKind::Adjust && reason.is_none() {
        return Err(bad("reason", "an adjustment needs a `reason`"));
    }
    if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(bad("reason", "`reason` is at most 500 characters"));
    }
    let key = match input.idempotency_key.as_deref().map(str::trim) {
        Some(k) if k.is_empty() || k.len() > 200 => {
            return Err(bad(
                "idempotency_key",
                "`idempotency_key` must be 1 to 200 characters",
            ));
        }
        Some(k) => k.to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let now = now_ms();
    let req = GrantReq {
        account: acc.id.clone(),
        kind,
        amount: units,
        idem_key: format!("{}:{key}", kind.as_str()),
        expires_at_ms: input.expires_days.map(|d| now + i64::from(d) * 86_400_000),
        note: reason.clone(),
        now_ms: now,
        starter: acc.user_id.as_ref().and_then(|_| cfg.starter(now)),
    };
    let action = format!("credits.{}", kind.as_str());
    let e = entry(actor, &action, &acc.id, acc.team_id.as_deref(), None, None);
    let img = serde_json::json!({
        "amount": from_units(units).to_string(),
        "idempotency_key": key,
        "reason": reason,
        "expires_at_ms": req.expires_at_ms,
    });
    let applied = store
        .commit_audited(
            Change::Grant(req),
            Some(Box::new(move |a: &Applied| {
                let (b, af) = match a {
                    Applied::Grant {
                        available_before,
                        available_after,
                        ..
                    } => (*available_before, *available_after),
                    _ => (0, 0),
                };
                let mut after = img;
                after["available"] = serde_json::json!(from_units(af).to_string());
                crate::store::iam::AuditEntry {
                    before: Some(serde_json::json!({ "available": from_units(b).to_string() })),
                    after: Some(after),
                    ..e
                }
            })),
        )
        .await
        .map_err(store_err)?;
    let Applied::Grant {
        outcome,
        available_after,
        ..
    } = applied
    else {
        return Err(HubError::internal("the grant was not applied"));
    };
    match outcome {
        GrantOutcome::Insufficient { available } => Err(HubError::new(
            ErrorKind::Conflict,
            format!(
                "{} has only {} available; an adjustment cannot take it below zero",
                acc.id,
                from_units(available)
            ),
        )
        .with_code("insufficient_credits")),
        GrantOutcome::Applied | GrantOutcome::Replayed => Ok(CreditOut {
            account: acc.id,
            kind: kind.as_str().to_string(),
            amount: from_units(units).to_string(),
            idempotency_key: key,
            replayed: outcome == GrantOutcome::Replayed,
            available: from_units(available_after).to_string(),
        }),
    }
}

/// A balance as shown.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BalanceView {
    pub account: String,
    pub available: String,
    /// Held by calls in flight.
    pub reserved: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub quota: Quota,
    pub credit_prefix: String,
}

/// The balance and quota of an account (the spend projection uses its user's spend, or the
/// team's members' for a team account).
pub async fn balance_of(
    store: &dyn Store,
    cfg: &BillingConfig,
    acc: &Account,
) -> Result<BalanceView, HubError> {
    let bal = store.balance(&acc.id).await.map_err(store_err)?;
    let quota = quota_of(
        store,
        &acc.id,
        acc.user_id.as_deref().unwrap_or(""),
        now_ms(),
    )
    .await
    .map_err(store_err)?;
    Ok(BalanceView {
        account: acc.id.clone(),
        available: from_units(bal.as_ref().map_or(0, |b| b.available)).to_string(),
        reserved: from_units(bal.as_ref().map_or(0, |b| b.reserved)).to_string(),
        quota,
        credit_prefix: cfg.credit_prefix.clone(),
    })
}

/// The account a caller's key draws on: its team's if it has one, else its user's.
pub fn own_account(actor: &Actor) -> Account {
    match &actor.team_id {
        Some(t) => Account {
            id: team_account(t),
            user_id: Some(actor.user_id.clone()),
            team_id: Some(t.clone()),
        },
        None => Account {
            id: user_account(&actor.user_id),
            user_id: Some(actor.user_id.clone()),
            team_id: None,
        },
    }
}

/// A ledger entry as shown (amounts in credits).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntryView {
    pub id: i64,
    /// `grant`, `starter`, `adjust`, `capture`, `expire` (ledgers from before holds left the
    /// entries also have `reserve` and `release`)
    pub kind: String,
    pub available_delta: String,
    pub reserved_delta: String,
    pub charged: String,
    pub request_id: Option<String>,
    pub idempotency_key: String,
    pub expires_at_ms: Option<i64>,
    pub note: Option<String>,
    pub created_at_ms: i64,
}

impl EntryView {
    fn of(e: &LedgerEntry) -> EntryView {
        EntryView {
            id: e.id,
            kind: e.kind.clone(),
            available_delta: from_units(e.available_delta).to_string(),
            reserved_delta: from_units(e.reserved_delta).to_string(),
            charged: from_units(e.charged).to_string(),
            request_id: e.request_id.clone(),
            idempotency_key: e.idem_key.clone(),
            expires_at_ms: e.expires_at_ms,
            note: e.note.clone(),
            created_at_ms: e.created_at_ms,
        }
    }
}

/// One page of an account's entries, oldest first.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntriesPage {
    pub account: String,
    pub entries: Vec<EntryView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

pub async fn entries_page(
    store: &dyn Store,
    acc: &Account,
    after: Option<i64>,
    limit: u32,
) -> Result<EntriesPage, HubError> {
    let limit = limit.clamp(1, 1000);
    let mut rows = store
        .entries_page(&acc.id, after.unwrap_or(0), limit + 1)
        .await
        .map_err(store_err)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok(EntriesPage {
        account: acc.id.clone(),
        next_after: more.then(|| rows.last().map_or(0, |e| e.id)),
        entries: rows.iter().map(EntryView::of).collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// billing settings

/// The billing settings in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BillingView {
    /// `internal` or `credits`.
    pub mode: String,
    pub margin_pct: String,
    /// USD per credit.
    pub base_credit_price: String,
    pub max_output_tokens: u32,
    pub starter_credits: String,
    pub starter_expiry_days: Option<u32>,
    pub payment_link: Option<String>,
    pub credit_prefix: String,
    /// Current prices in the book.
    pub prices: usize,
}

impl BillingView {
    pub fn of(cfg: &BillingConfig) -> BillingView {
        BillingView {
            mode: cfg.mode.as_str().to_string(),
            margin_pct: cfg.pricing.margin_pct.normalize().to_string(),
            base_credit_price: cfg.pricing.base_credit_price.normalize().to_string(),
            max_output_tokens: cfg.max_output_tokens,
            starter_credits: from_units(cfg.starter_units).to_string(),
            starter_expiry_days: cfg.starter_expiry_days,
            payment_link: cfg.payment_link.clone(),
            credit_prefix: cfg.credit_prefix.clone(),
            prices: cfg.prices.len(),
        }
    }
}

/// A change to the billing settings (absent fields stay).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BillingPatch {
    /// `internal` or `credits`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Margin in percent for derived rates (re-price to apply it to existing prices).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(default)]
    pub margin_pct: Option<DecimalIn>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(default)]
    pub base_credit_price: Option<DecimalIn>,
    /// Credits granted once to every new user (0: none).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(default)]
    pub starter_credits: Option<DecimalIn>,
    /// 0: never.
    #[serde(default)]
    pub starter_expiry_days: Option<u32>,
    /// `""` clears it.
    #[serde(default)]
    pub payment_link: Option<String>,
    #[serde(default)]
    pub credit_prefix: Option<String>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Comma list of IANA time zones whose day roll-ups reports keep (`Asia/Shanghai,UTC`).
    #[serde(default)]
    pub report_timezones: Option<String>,
}

impl BillingPatch {
    /// The settings to store, validated.
    pub fn settings(&self) -> Result<Vec<(&'static str, String)>, HubError> {
        let mut sets = Vec::new();
        if let Some(m) = &self.mode {
            let m = BillingMode::parse(m).ok_or_else(|| {
                bad(
                    "mode",
                    format!("`mode` must be internal or credits, got `{m}`"),
                )
            })?;
            sets.push((billing_keys::MODE, m.as_str().to_string()));
        }
        if let Some(DecimalIn(m)) = self.margin_pct {
            let m = check_margin("margin_pct", m)?;
            sets.push((billing_keys::MARGIN_PCT, m.normalize().to_string()));
        }
        if let Some(DecimalIn(d)) = self.base_credit_price {
            if d <= Decimal::ZERO {
                return Err(bad(
                    "base_credit_price",
                    "`base_credit_price` must be positive",
                ));
            }
            sets.push((billing_keys::BASE_CREDIT_PRICE, d.normalize().to_string()));
        }
        if let Some(DecimalIn(d)) = self.starter_credits {
            let d = parse_amount(&d.to_string()).map_err(|m| bad("starter_credits", m))?;
            if d < Decimal::ZERO || crate::pricing::to_units(d).is_none() {
                return Err(bad(
                    "starter_credits",
                    "`starter_credits` must be zero or a positive amount",
                ));
            }
            sets.push((billing_keys::STARTER_CREDITS, d.normalize().to_string()));
        }
        if let Some(v) = self.starter_expiry_days {
            sets.push((billing_keys::STARTER_EXPIRY_DAYS, v.to_string()));
        }
        if let Some(v) = &self.payment_link {
            let v = v.trim();
            if !(v.is_empty() || v.starts_with("http://") || v.starts_with("https://")) {
                return Err(bad("payment_link", "`payment_link` must be an http(s) URL"));
            }
            sets.push((billing_keys::PAYMENT_LINK, v.to_string()));
        }
        if let Some(v) = &self.credit_prefix {
            if v.chars().count() > 16 {
                return Err(bad(
                    "credit_prefix",
                    "`credit_prefix` is at most 16 characters",
                ));
            }
            sets.push((billing_keys::CREDIT_PREFIX, v.clone()));
        }
        if let Some(v) = self.max_output_tokens {
            if v == 0 {
                return Err(bad(
                    "max_output_tokens",
                    "`max_output_tokens` must be positive",
                ));
            }
            sets.push((billing_keys::MAX_OUTPUT_TOKENS, v.to_string()));
        }
        if let Some(v) = &self.report_timezones {
            let zones = crate::hub::parse_report_zones(v)
                .map_err(|e| bad("report_timezones", format!("`report_timezones`: {e}")))?;
            let list = zones.iter().map(|z| z.key()).collect::<Vec<_>>().join(",");
            sets.push((billing_keys::REPORT_TIMEZONES, list));
        }
        if sets.is_empty() {
            return Err(HubError::invalid("nothing to change"));
        }
        Ok(sets)
    }
}

/// Changes billing settings (one transaction with its audit entry); returns what was stored.
pub async fn update_billing(
    store: &dyn Store,
    actor: &Actor,
    cfg: &BillingConfig,
    patch: &BillingPatch,
) -> Result<Vec<(&'static str, String)>, HubError> {
    require_all(actor)?;
    let sets = patch.settings()?;
    let mut stored = Vec::new();
    for key in billing_keys::ALL {
        stored.push((
            key.to_string(),
            store.get_setting(key).await.map_err(store_err)?,
        ));
    }
    let before = serde_json::to_value(BillingView::of(cfg)).ok();
    let after: serde_json::Map<String, serde_json::Value> = sets
        .iter()
        .map(|(k, v)| ((*k).to_string(), serde_json::json!(v)))
        .collect();
    let changes = sets
        .iter()
        .map(|(k, v)| Change::SetSetting {
            key: (*k).to_string(),
            value: v.clone(),
        })
        .collect();
    let e = entry(
        actor,
        "billing.update",
        "billing",
        None,
        before,
        Some(serde_json::Value::Object(after)),
    );
    commit(store, Change::Many(changes), e).await?;
    Ok(sets)
}

// ---------------------------------------------------------------------------------------------
// usage reports

/// Restricts a report or record filter to what the actor may see: a team admin their team, a
/// member or guest their own; asking for another tenant's data is a 403.
fn scope_filter(
    actor: &Actor,
    user_id: &mut Option<String>,
    team_id: &mut Option<String>,
) -> Result<(), HubError> {
    let refuse = || {
        HubError::new(
            ErrorKind::PermissionDenied,
            "You can see your own tenant's usage only.",
        )
        .with_code("permission_denied")
    };
    match actor.scope() {
        Scope::All => {}
        Scope::Team(t) => {
            if team_id.as_ref().is_some_and(|x| x != &t) {
                return Err(refuse());
            }
            *team_id = Some(t);
        }
        Scope::Own(u) => {
            if user_id.as_ref().is_some_and(|x| x != &u) {
                return Err(refuse());
            }
            *user_id = Some(u);
        }
    }
    Ok(())
}

/// A report row as shown (amounts in credits; in internal mode, USD at provider cost).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportRowView {
    /// Period label in the report's time zone (`2026-01-31`, `2026-01`, `2026-01-31T13:00`).
    pub period: Option<String>,
    /// Values of the grouping dimensions, by dimension name.
    pub group: BTreeMap<String, String>,
    pub calls: i64,
    pub success_calls: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub images: i64,
    pub cost: String,
    pub provider_cost: String,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportView {
    pub rows: Vec<ReportRowView>,
    pub totals: ReportRowView,
    /// The time zone of periods and dates, minutes east of UTC.
    pub tz_offset_minutes: i32,
}

fn row_view(q: &ReportQuery, r: &ReportRow) -> ReportRowView {
    ReportRowView {
        period: r.period.clone(),
        group: q
            .group_by
            .iter()
            .zip(&r.keys)
            .map(|(d, k)| (d.column().trim_end_matches("_id").to_string(), k.clone()))
            .collect(),
        calls: r.calls,
        success_calls: r.success_calls,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        images: r.images,
        cost: from_units(r.cost_units).to_string(),
        provider_cost: from_units(r.provider_cost_units).to_string(),
    }
}

/// A usage report within the actor's scope.
pub async fn usage_report(
    store: &dyn Store,
    actor: &Actor,
    mut q: ReportQuery,
) -> Result<ReportView, HubError> {
    scope_filter(actor, &mut q.user_id, &mut q.team_id)?;
    let rows = store.usage_report(&q).await.map_err(store_err)?;
    let total = totals(&rows);
    Ok(ReportView {
        rows: rows.iter().map(|r| row_view(&q, r)).collect(),
        totals: ReportRowView {
            period: None,
            group: BTreeMap::new(),
            ..row_view(&q, &total)
        },
        tz_offset_minutes: q.tz_offset_minutes,
    })
}

/// Usage records within the actor's scope, oldest first, one page (`f.limit`, after `f.after`).
pub async fn usage_records(
    store: &dyn Store,
    actor: &Actor,
    mut f: UsageFilter,
) -> Result<Vec<UsageRecord>, HubError> {
    scope_filter(actor, &mut f.user_id, &mut f.team_id)?;
    store.usage_records(&f).await.map_err(store_err)
}

/// Checks a filter against the actor's scope without reading (for streamed exports).
pub fn scoped_filter(actor: &Actor, mut f: UsageFilter) -> Result<UsageFilter, HubError> {
    scope_filter(actor, &mut f.user_id, &mut f.team_id)?;
    Ok(f)
}
