//! Prices and money. Rates are `rust_decimal` (credits per token, or per image); amounts held by
//! the ledger are fixed-point `i64` in units of 1e-10 credit, so a reservation is one conditional
//! integer UPDATE on any SQL backend. Never a float.
//!
//! A rate is derived exactly as the original does (aigne-hub.md §6.2):
//! `rate = unitCost × (1 + margin/100) / baseCreditPrice`, rounded to 10 decimal places. The cost
//! of a call (§6.3) is `uncached prompt × input + completion × output + cache write × writeRate +
//! cache read × readRate` (+ images × image rate for image models), rounded to 10 places. Our
//! canonical `prompt_tokens` includes cache reads and writes, so they are taken out before the
//! input rate applies.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::FastMap;
use crate::providers::ProviderKind;
use crate::types::{ModelType, Usage};

/// Decimal places kept for money and rates.
pub const DP: u32 = 10;
/// Ledger units per credit (1e10).
pub const UNITS_PER_CREDIT: i64 = 10_000_000_000;

/// Rounds to 10 decimal places, half away from zero (BigNumber's default in the original).
pub fn round(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(DP, RoundingStrategy::MidpointAwayFromZero)
}

/// Credits -> ledger units (rounded to 10 places). `None` when out of range.
pub fn to_units(d: Decimal) -> Option<i64> {
    round(d)
        .checked_mul(Decimal::from(UNITS_PER_CREDIT))?
        .trunc()
        .to_i64()
}

/// Ledger units -> credits.
pub fn from_units(units: i64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(units), DP).normalize()
}

/// Parses a decimal amount given by an operator (`12.5`, `0.0000000001`); rejects more than 10
/// decimal places rather than silently rounding money.
pub fn parse_amount(s: &str) -> Result<Decimal, String> {
    let d: Decimal = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a decimal number"))?;
    if d.normalize().scale() > DP {
        return Err(format!("`{s}` has more than {DP} decimal places"));
    }
    to_units(d).ok_or_else(|| format!("`{s}` is out of range"))?;
    Ok(d)
}

/// Billing mode of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BillingMode {
    /// No balances; every call costed at provider cost and attributed (showback).
    #[default]
    Internal,
    /// Service provider: credit balances, reserve before / capture after every call.
    Credits,
}

impl BillingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingMode::Internal => "internal",
            BillingMode::Credits => "credits",
        }
    }

    pub fn parse(s: &str) -> Option<BillingMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "internal" => Some(BillingMode::Internal),
            "credits" | "credit" | "service_provider" => Some(BillingMode::Credits),
            _ => None,
        }
    }
}

/// Per-token (or per-image) amounts: either provider unit costs in USD, or rates in credits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    #[serde(default)]
    pub input: Decimal,
    #[serde(default)]
    pub output: Decimal,
    /// Cache read (hit) per token; the input rate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<Decimal>,
    /// Cache write (creation) per token; the input rate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<Decimal>,
    /// Per generated image (image models); the output rate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Decimal>,
    /// Per image by `quality|size`, `size` or `quality`, where it differs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_by: BTreeMap<String, Decimal>,
}

impl Rates {
    /// Each amount derived as `unit × (1 + margin/100) / base`, rounded to 10 places.
    pub fn derive(unit: &Rates, margin_pct: Decimal, base_credit_price: Decimal) -> Rates {
        let f = |u: Decimal| -> Decimal {
            if base_credit_price.is_zero() {
                return Decimal::ZERO;
            }
            round(u * (Decimal::ONE + margin_pct / Decimal::ONE_HUNDRED) / base_credit_price)
        };
        Rates {
            input: f(unit.input),
            output: f(unit.output),
            cache_read: unit.cache_read.map(f),
            cache_write: unit.cache_write.map(f),
            image: unit.image.map(f),
            image_by: unit
                .image_by
                .iter()
                .map(|(k, v)| (k.clone(), f(*v)))
                .collect(),
        }
    }

    /// Rate of one image of the given quality and size.
    pub fn image_rate(&self, quality: Option<&str>, size: Option<&str>) -> Decimal {
        let keys = [
            match (quality, size) {
                (Some(q), Some(s)) => Some(format!("{q}|{s}")),
                _ => None,
            },
            size.map(str::to_string),
            quality.map(str::to_string),
        ];
        for k in keys.into_iter().flatten() {
            if let Some(r) = self.image_by.get(&k) {
                return *r;
            }
        }
        self.image.unwrap_or(self.output)
    }

    /// The highest per-image rate (worst case when the request names no size/quality we know).
    pub fn max_image_rate(&self) -> Decimal {
        self.image_by
            .values()
            .copied()
            .chain([self.image.unwrap_or(self.output)])
            .max()
            .unwrap_or_default()
    }

    /// The highest per-token prompt rate (cache writes may cost more than plain input).
    pub fn max_prompt_rate(&self) -> Decimal {
        [Some(self.input), self.cache_read, self.cache_write]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or_default()
    }

    /// Cost of a call with this usage (aigne-hub.md §6.3), rounded to 10 places.
    pub fn cost(
        &self,
        model_type: ModelType,
        u: &Usage,
        quality: Option<&str>,
        size: Option<&str>,
    ) -> Decimal {
        let d = Decimal::from;
        let cached = u.cache_read_tokens.saturating_add(u.cache_write_tokens);
        let uncached = u.prompt_tokens.saturating_sub(cached);
        let mut total = d(uncached) * self.input
            + d(u.cache_write_tokens) * self.cache_write.unwrap_or(self.input)
            + d(u.cache_read_tokens) * self.cache_read.unwrap_or(self.input);
        total += match model_type {
            ModelType::Image => d(u.images) * self.image_rate(quality, size),
            ModelType::Chat | ModelType::Embedding => d(u.completion_tokens) * self.output,
        };
        round(total)
    }
}

/// One version of the price of a (provider, model, type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// The price version (row id in the price book); 0 before it is stored.
    #[serde(default)]
    pub version: i64,
    pub provider: ProviderKind,
    pub model: String,
    pub model_type: ModelType,
    /// Provider list cost in USD (per token / per image), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Rates>,
    /// Margin in percent the rates were derived with (None: rates set by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_pct: Option<Decimal>,
    /// What a caller is charged, in credits.
    pub rates: Rates,
    /// `builtin`, `admin`, `bulk`.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub created_at_ms: i64,
    /// A disabled version: from it on the model has no price (history is kept; setting a price
    /// again appends an enabled version).
    #[serde(default)]
    pub disabled: bool,
}

impl Price {
    /// Key of this price in the book.
    pub fn key(&self) -> (ProviderKind, String, ModelType) {
        (self.provider, self.model.clone(), self.model_type)
    }

    /// Same charging terms (ignoring version and time)?
    pub fn same_terms(&self, other: &Price) -> bool {
        self.unit == other.unit && self.rates == other.rates && self.margin_pct == other.margin_pct
    }
}

/// Pricing preferences (stored settings).
#[derive(Debug, Clone, PartialEq)]
pub struct PricingSettings {
    /// Target profit margin in percent (original default 2).
    pub margin_pct: Decimal,
    /// USD per credit (original default 1: 1 credit = 1 USD).
    pub base_credit_price: Decimal,
}

impl Default for PricingSettings {
    fn default() -> Self {
        PricingSettings {
            margin_pct: Decimal::from(2),
            base_credit_price: Decimal::ONE,
        }
    }
}

#[derive(Deserialize)]
struct PriceFile {
    providers: FastMap<String, Vec<PriceFileEntry>>,
}

/// A built-in price: USD per 1M tokens (as providers publish them), per image in USD.
#[derive(Deserialize)]
struct PriceFileEntry {
    id: String,
    #[serde(rename = "type")]
    model_type: ModelType,
    #[serde(default)]
    input: Decimal,
    #[serde(default)]
    output: Decimal,
    #[serde(default)]
    cache_read: Option<Decimal>,
    #[serde(default)]
    cache_write: Option<Decimal>,
    #[serde(default)]
    image: Option<Decimal>,
    #[serde(default)]
    image_by: BTreeMap<String, Decimal>,
}

/// The built-in list prices (data/prices.json), with rates derived from `settings`.
pub fn builtin_prices(settings: &PricingSettings) -> Vec<Price> {
    prices_from_json(include_str!("../data/prices.json"), settings).unwrap_or_default()
}

/// Parses a price file (USD per 1M tokens; per image in USD).
pub fn prices_from_json(text: &str, settings: &PricingSettings) -> Result<Vec<Price>, String> {
    let file: PriceFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let per_token = |v: Decimal| round(v / Decimal::from(1_000_000));
    let mut out = Vec::new();
    for (name, entries) in file.providers {
        let provider = ProviderKind::from_name(&name)
            .ok_or_else(|| format!("unknown provider {name} in prices"))?;
        for e in entries {
            let unit = Rates {
                input: per_token(e.input),
                output: per_token(e.output),
                cache_read: e.cache_read.map(per_token),
                cache_write: e.cache_write.map(per_token),
                image: e.image,
                image_by: e.image_by,
            };
            out.push(Price {
                version: 0,
                provider,
                model: e.id,
                model_type: e.model_type,
                rates: Rates::derive(&unit, settings.margin_pct, settings.base_credit_price),
                unit: Some(unit),
                margin_pct: Some(settings.margin_pct),
                source: "builtin".to_string(),
                created_at_ms: 0,
                disabled: false,
            });
        }
    }
    out.sort_by_key(Price::key);
    Ok(out)
}

/// The current price of every (provider, model, type), in memory (no reads on the hot path).
/// Keyed by (provider, type), then by model, so a call looks its price up by the model's `&str`
/// (a single key of all three would need an owned `String` built for every lookup).
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    current: FastMap<(ProviderKind, ModelType), FastMap<String, Arc<Price>>>,
}

impl PriceBook {
    pub fn new(prices: impl IntoIterator<Item = Price>) -> PriceBook {
        let mut current: FastMap<(ProviderKind, ModelType), FastMap<String, Arc<Price>>> =
            FastMap::default();
        for p in prices {
            let models = current.entry((p.provider, p.model_type)).or_default();
            if models
                .get(&p.model)
                .is_none_or(|old| old.version <= p.version)
            {
                models.insert(p.model.clone(), Arc::new(p));
            }
        }
        // A disabled current version means no price.
        for models in current.values_mut() {
            models.retain(|_, p| !p.disabled);
        }
        current.retain(|_, models| !models.is_empty());
        PriceBook { current }
    }

    pub fn get(&self, provider: ProviderKind, model: &str, ty: ModelType) -> Option<&Arc<Price>> {
        self.current.get(&(provider, ty))?.get(model)
    }

    pub fn len(&self) -> usize {
        self.current.values().map(FastMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Every current price, sorted by key.
    pub fn all(&self) -> Vec<Arc<Price>> {
        let mut v: Vec<Arc<Price>> = self
            .current
            .values()
            .flat_map(|models| models.values().cloned())
            .collect();
        v.sort_by_key(|p| p.key());
        v
    }
}

/// Re-derives the rates of every price that has unit costs with a new margin (bulk re-price, the
/// original's `mode: 'margin'`). Returns only the prices whose rates change.
pub fn reprice(
    book: &PriceBook,
    margin_pct: Decimal,
    base_credit_price: Decimal,
    now_ms: i64,
) -> Vec<Price> {
    book.all()
        .into_iter()
        .filter_map(|p| {
            let unit = p.unit.as_ref()?;
            let rates = Rates::derive(unit, margin_pct, base_credit_price);
            if rates == p.rates && p.margin_pct == Some(margin_pct) {
                return None;
            }
            Some(Price {
                version: 0,
                rates,
                margin_pct: Some(margin_pct),
                source: "bulk".to_string(),
                created_at_ms: now_ms,
                ..(*p).clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap_or_default()
    }

    #[test]
    fn rate_derivation_matches_the_original() {
        // rate = unitCost × (1 + margin%) / baseCreditPrice, toFixed(10)
        let cases = [
            // (unit, margin, base, rate)
            ("0.0000025", "2", "1", "0.00000255"),
            ("0.00000015", "2", "1", "0.000000153"),
            ("0.00000015", "0", "1", "0.00000015"),
            ("0.000001", "20", "0.5", "0.0000024"),
            // rounding at the 10th place, half away from zero
            ("0.00000000015", "0", "1", "0.0000000002"),
            ("0.00000000014", "0", "1", "0.0000000001"),
            ("0.000000001234", "2", "3", "0.0000000004"),
            ("0.04", "2", "1", "0.0408"),
        ];
        for (unit, margin, base, want) in cases {
            let u = Rates {
                input: dec(unit),
                ..Rates::default()
            };
            let r = Rates::derive(&u, dec(margin), dec(base));
            assert_eq!(
                r.input,
                dec(want),
                "unit {unit} margin {margin} base {base}"
            );
        }
    }

    #[test]
    fn cost_formula_table() {
        let rates = Rates {
            input: dec("0.000003"),
            output: dec("0.000015"),
            cache_read: Some(dec("0.0000003")),
            cache_write: Some(dec("0.00000375")),
            image: Some(dec("0.04")),
            image_by: [("hd|1024x1024".to_string(), dec("0.08"))].into(),
        };
        let u = |p, c, cr, cw, img| Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cache_read_tokens: cr,
            cache_write_tokens: cw,
            images: img,
            ..Usage::default()
        };
        type Case<'a> = (
            &'a str,
            ModelType,
            Usage,
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "nothing",
                ModelType::Chat,
                u(0, 0, 0, 0, 0),
                None,
                None,
                "0",
            ),
            // 1000 × 0.000003 + 500 × 0.000015
            (
                "plain",
                ModelType::Chat,
                u(1000, 500, 0, 0, 0),
                None,
                None,
                "0.0105",
            ),
            // prompt includes the cache: (1000-600-100) × 3e-6 + 600 × 3e-7 + 100 × 3.75e-6 + 10 × 1.5e-5
            (
                "cached",
                ModelType::Chat,
                u(1000, 10, 600, 100, 0),
                None,
                None,
                "0.001605",
            ),
            // a provider reporting cache > prompt never goes negative
            (
                "cache over prompt",
                ModelType::Chat,
                u(10, 0, 20, 0, 0),
                None,
                None,
                "0.000006",
            ),
            (
                "embedding",
                ModelType::Embedding,
                u(1_000_000, 0, 0, 0, 0),
                None,
                None,
                "3",
            ),
            (
                "image default",
                ModelType::Image,
                u(0, 0, 0, 0, 2),
                None,
                None,
                "0.08",
            ),
            (
                "image hd",
                ModelType::Image,
                u(10, 0, 0, 0, 1),
                Some("hd"),
                Some("1024x1024"),
                "0.08003",
            ),
        ];
        for (name, ty, usage, q, s, want) in cases {
            assert_eq!(rates.cost(ty, &usage, q, s), dec(want), "{name}");
        }
    }

    #[test]
    fn cost_without_cache_rates_uses_the_input_rate() {
        let rates = Rates {
            input: dec("0.000001"),
            output: dec("0.000002"),
            ..Rates::default()
        };
        let usage = Usage {
            prompt_tokens: 100,
            completion_tokens: 7,
            cache_read_tokens: 40,
            ..Usage::default()
        };
        assert_eq!(
            rates.cost(ModelType::Chat, &usage, None, None),
            dec("0.000114")
        );
    }

    #[test]
    fn units_round_trip_at_ten_places() {
        assert_eq!(to_units(dec("1")), Some(UNITS_PER_CREDIT));
        assert_eq!(to_units(dec("0.0000000001")), Some(1));
        assert_eq!(to_units(dec("0.00000000005")), Some(1));
        assert_eq!(to_units(dec("0.00000000004")), Some(0));
        assert_eq!(from_units(12_345), dec("0.0000012345"));
        assert_eq!(
            from_units(to_units(dec("123.456")).unwrap_or(0)),
            dec("123.456")
        );
        assert_eq!(to_units(dec("1e20")), None);
        assert!(parse_amount("0.00000000001").is_err());
        assert!(parse_amount("x").is_err());
        assert_eq!(parse_amount(" 2.5 "), Ok(dec("2.5")));
    }

    #[test]
    fn builtin_prices_load_and_cover_the_ten_providers() {
        let prices = builtin_prices(&PricingSettings::default());
        let mut providers: Vec<ProviderKind> = prices.iter().map(|p| p.provider).collect();
        providers.dedup();
        assert_eq!(providers.len(), ProviderKind::ALL.len(), "{providers:?}");
        let book = PriceBook::new(prices);
        let p = book.get(ProviderKind::OpenAi, "gpt-4o-mini", ModelType::Chat);
        let p = p.map(|p| (p.rates.input, p.unit.as_ref().map(|u| u.input)));
        // $0.15 / 1M tokens, +2 % margin
        assert_eq!(p, Some((dec("0.000000153"), Some(dec("0.00000015")))));
    }

    #[test]
    fn the_book_holds_each_models_latest_version_and_drops_disabled_ones() {
        let prices = builtin_prices(&PricingSettings::default());
        let base = prices
            .iter()
            .find(|p| p.provider == ProviderKind::OpenAi && p.model == "gpt-4o-mini")
            .cloned();
        assert!(base.is_some(), "gpt-4o-mini is in the built-in book");
        let Some(base) = base else { return };
        let version = |v: i64, rate: &str, disabled: bool| Price {
            version: v,
            rates: Rates {
                input: dec(rate),
                ..base.rates.clone()
            },
            disabled,
            ..base.clone()
        };
        let other_type = Price {
            model_type: ModelType::Embedding,
            ..version(9, "0.9", false)
        };
        let other_provider = Price {
            provider: ProviderKind::OpenRouter,
            ..version(9, "0.8", false)
        };
        let gone = Price {
            model: "retired".into(),
            ..version(1, "0.1", false)
        };
        let gone_disabled = Price {
            model: "retired".into(),
            ..version(2, "0.1", true)
        };
        // Versions arrive in any order; the highest wins.
        let book = PriceBook::new([
            version(3, "0.3", false),
            version(1, "0.1", false),
            version(2, "0.2", false),
            other_type,
            other_provider,
            gone_disabled,
            gone,
        ]);
        let input =
            |p: ProviderKind, m: &str, t: ModelType| book.get(p, m, t).map(|p| p.rates.input);
        assert_eq!(
            input(ProviderKind::OpenAi, "gpt-4o-mini", ModelType::Chat),
            Some(dec("0.3"))
        );
        assert_eq!(
            input(ProviderKind::OpenAi, "gpt-4o-mini", ModelType::Embedding),
            Some(dec("0.9"))
        );
        assert_eq!(
            input(ProviderKind::OpenRouter, "gpt-4o-mini", ModelType::Chat),
            Some(dec("0.8"))
        );
        // A disabled latest version hides the model, even with an older enabled one.
        assert_eq!(
            input(ProviderKind::OpenAi, "retired", ModelType::Chat),
            None
        );
        assert_eq!(input(ProviderKind::OpenAi, "gpt-4o", ModelType::Chat), None);
        assert_eq!(book.len(), 3);
        let keys: Vec<_> = book.all().iter().map(|p| p.key()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 3);
        assert!(!book.is_empty());
        assert!(PriceBook::new([version(5, "0.5", true)]).is_empty());
    }

    #[test]
    fn reprice_changes_only_what_moves() {
        let book = PriceBook::new(builtin_prices(&PricingSettings::default()));
        assert!(reprice(&book, dec("2"), Decimal::ONE, 1).is_empty());
        let changed = reprice(&book, dec("10"), Decimal::ONE, 1);
        assert!(!changed.is_empty());
        let p = changed
            .iter()
            .find(|p| p.provider == ProviderKind::OpenAi && p.model == "gpt-4o")
            .map(|p| p.rates.input);
        assert_eq!(p, Some(dec("0.00000275")));
    }
}
