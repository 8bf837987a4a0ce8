//! Per-key policy: which models and ingress surfaces a key may use, and its request (RPM) and
//! token (TPM) rate limits, and its spend budget (enforced by `budget.rs` at reservation time). Checked once per call by the engine before dispatch, from memory.
//!
//! Limits are sliding 60-second windows kept in this process (`Limiter`). Token limits count the
//! actual usage of completed calls, and a call in flight holds a reservation of its estimate
//! (prompt estimate + `max_tokens`) until it settles, so a burst of concurrent calls cannot
//! overshoot the limit by more than the estimates undershoot. With several instances each keeps
//! its own windows (see ARCHITECTURE.md: shared limits are a scale-out gap).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::FastMap;
use crate::error::{ErrorKind, HubError};
use crate::providers::ProviderKind;
use crate::router::{self, Catalog, ModelRef};

/// The ingress surfaces a key can be limited to.
pub const SURFACES: &[&str] = &["openai", "anthropic", "aigne", "native"];

/// Length of the rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What one API key may do. Empty lists mean "no restriction".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyPolicy {
    /// Model patterns (`openai/*`, `*/gpt-4o*`, `gpt-4o-mini`); `*` matches any run of characters.
    pub models: Vec<String>,
    /// Ingress surfaces (`openai`, `anthropic`, `aigne`, `native`).
    pub surfaces: Vec<String>,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<u64>,
    /// Spend budget per calendar day or month (`budget.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::budget::Budget>,
}

impl KeyPolicy {
    pub fn is_unrestricted(&self) -> bool {
        self == &KeyPolicy::default()
    }

    /// Checks the fields: known surfaces, non-empty patterns, positive limits.
    pub fn validate(&self) -> Result<(), String> {
        for s in &self.surfaces {
            if !SURFACES.contains(&s.as_str()) {
                return Err(format!(
                    "unknown surface `{s}` (expected one of {})",
                    SURFACES.join(", ")
                ));
            }
        }
        if self.models.iter().any(|m| m.trim().is_empty()) {
            return Err("model patterns must not be empty".to_string());
        }
        if self.rpm == Some(0) {
            return Err("rpm must be at least 1".to_string());
        }
        if self.tpm == Some(0) {
            return Err("tpm must be at least 1".to_string());
        }
        if let Some(b) = &self.budget {
            b.validate()?;
        }
        Ok(())
    }
}

/// What the hot path knows about a key besides its principal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyGate {
    pub expires_at_ms: Option<i64>,
    pub policy: KeyPolicy,
}

/// `*` matches any run of characters (including `/`), `?` exactly one; everything else literally,
/// ASCII case-insensitively.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().map(|c| c.to_ascii_lowercase()).collect();
    let t: Vec<char> = text.chars().map(|c| c.to_ascii_lowercase()).collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether `model` (as the caller wrote it) is allowed by `patterns`.
///
/// A pattern without `/` names a model on any provider. A model pinned to a provider
/// (`openai/gpt-4o`, `openai:gpt-4o`) is checked as `provider/model`. A bare model (`gpt-4o`) may
/// be routed to several providers, so every provider that could serve it must be allowed: each
/// candidate is checked as `provider/upstream-model` and `provider/model`.
pub fn model_allowed(
    patterns: &[String],
    model: &str,
    catalog: &Catalog,
    configured: impl Fn(ProviderKind) -> bool,
) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let full_match = |provider: ProviderKind, model: &str| {
        let full = format!("{}/{model}", provider.name());
        patterns.iter().any(|p| glob_match(p, &full))
    };
    match router::parse_model(model) {
        ModelRef::Pinned { provider, model } => {
            full_match(provider, model)
                || patterns
                    .iter()
                    .any(|p| !p.contains('/') && glob_match(p, model))
        }
        ModelRef::Bare(bare) => {
            // A pattern without a provider names the model wherever it is served.
            if patterns
                .iter()
                .any(|p| !p.contains('/') && glob_match(p, bare))
            {
                return true;
            }
            match router::candidates(bare, catalog, configured) {
                Ok(cands) => cands.iter().all(|c| {
                    full_match(c.provider, &c.upstream_model) || full_match(c.provider, bare)
                }),
                // Nobody serves it: the router answers 404.
                Err(_) => false,
            }
        }
    }
}

/// One key's sliding windows.
#[derive(Debug, Default)]
struct Window {
    /// Start times of admitted requests within the window.
    requests: VecDeque<Instant>,
    /// Completed calls' tokens, by completion time.
    tokens: VecDeque<(Instant, u64)>,
    tokens_in_window: u64,
    /// Estimates of calls in flight.
    reserved: u64,
}

impl Window {
    fn expire(&mut self, now: Instant) {
        while let Some(&t) = self.requests.front() {
            if now.duration_since(t) >= WINDOW {
                self.requests.pop_front();
            } else {
                break;
            }
        }
        while let Some(&(t, n)) = self.tokens.front() {
            if now.duration_since(t) >= WINDOW {
                self.tokens.pop_front();
                self.tokens_in_window -= n;
            } else {
                break;
            }
        }
    }
}

/// Rate-limit windows of every key, in this process.
#[derive(Debug, Default)]
pub struct Limiter {
    windows: Mutex<FastMap<String, Arc<Mutex<Window>>>>,
}

/// A call admitted under a token limit: holds its reservation until `settle` (or drop, which
/// releases it as if no tokens were used).
#[derive(Debug)]
pub struct Permit {
    window: Option<Arc<Mutex<Window>>>,
    reserved: u64,
}

impl Permit {
    /// A permit that tracks nothing (the key has no token limit).
    pub fn none() -> Permit {
        Permit {
            window: None,
            reserved: 0,
        }
    }

    /// Replaces the reservation with the call's actual tokens.
    pub fn settle(mut self, tokens: u64) {
        self.settle_at(tokens, Instant::now());
    }

    fn settle_at(&mut self, tokens: u64, now: Instant) {
        if let Some(w) = self.window.take() {
            let mut w = w.lock();
            w.reserved = w.reserved.saturating_sub(self.reserved);
            if tokens > 0 {
                w.tokens.push_back((now, tokens));
                w.tokens_in_window += tokens;
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(w) = self.window.take() {
            let mut w = w.lock();
            w.reserved = w.reserved.saturating_sub(self.reserved);
        }
    }
}

fn rate_limited(message: String, retry_after: Duration) -> HubError {
    let mut e = HubError::new(ErrorKind::RateLimited, message).with_code("rate_limit_exceeded");
    // Whole seconds, at least one: what the Retry-After header will say.
    let secs = retry_after.as_millis().div_ceil(1000).max(1) as u64;
    e.retry_after = Some(Duration::from_secs(secs));
    e
}

impl Limiter {
    fn window(&self, key_id: &str) -> Arc<Mutex<Window>> {
        let mut map = self.windows.lock();
        if let Some(w) = map.get(key_id) {
            return w.clone();
        }
        let w = Arc::new(Mutex::new(Window::default()));
        map.insert(key_id.to_string(), w.clone());
        w
    }

    /// Admits one request of `key_id` now, or says when to retry.
    pub fn admit(
        &self,
        key_id: &str,
        policy: &KeyPolicy,
        estimate: u64,
    ) -> Result<Permit, HubError> {
        self.admit_at(key_id, policy, estimate, Instant::now())
    }

    fn admit_at(
        &self,
        key_id: &str,
        policy: &KeyPolicy,
        estimate: u64,
        now: Instant,
    ) -> Result<Permit, HubError> {
        if policy.rpm.is_none() && policy.tpm.is_none() {
            return Ok(Permit::none());
        }
        let arc = self.window(key_id);
        let mut w = arc.lock();
        w.expire(now);
        if let Some(rpm) = policy.rpm
            && w.requests.len() >= rpm as usize
        {
            let oldest = w.requests.front().copied().unwrap_or(now);
            let wait = WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(rate_limited(
                format!(
                    "Rate limit reached for this API key: {rpm} requests per minute. Please retry after the time in the Retry-After header."
                ),
                wait,
            ));
        }
        let mut reserved = 0;
        if let Some(tpm) = policy.tpm {
            let used = w.tokens_in_window + w.reserved;
            if used + estimate > tpm {
                // When enough completed tokens leave the window (in-flight reservations are
                // unknown: at least a second).
                let need = used + estimate - tpm;
                let mut freed = 0;
                let mut wait = Duration::from_secs(1);
                for &(t, n) in &w.tokens {
                    freed += n;
                    if freed >= need {
                        wait = WINDOW.saturating_sub(now.duration_since(t));
                        break;
                    }
                }
                let why = if estimate > tpm {
                    format!(
                        "This request needs about {estimate} tokens, more than this API key's limit of {tpm} tokens per minute."
                    )
                } else {
                    format!(
                        "Rate limit reached for this API key: {tpm} tokens per minute (used {used}, this request needs about {estimate}). Please retry after the time in the Retry-After header."
                    )
                };
                return Err(rate_limited(why, wait));
            }
            w.reserved += estimate;
            reserved = estimate;
        }
        w.requests.push_back(now);
        Ok(Permit {
            window: policy.tpm.map(|_| arc.clone()),
            reserved,
        })
    }

    /// Drops windows of keys that no longer exist (called on configuration reload).
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.windows.lock().retain(|k, _| live(k));
    }
}

/// Checks what does not depend on the call's size: surface and model.
pub fn check_access(
    policy: &KeyPolicy,
    ingress: &str,
    model: &str,
    catalog: &Catalog,
    configured: impl Fn(ProviderKind) -> bool,
) -> Result<(), HubError> {
    if !policy.surfaces.is_empty() && !policy.surfaces.iter().any(|s| s == ingress) {
        return Err(HubError::new(
            ErrorKind::PermissionDenied,
            format!(
                "This API key may not be used on the `{ingress}` API (allowed: {}).",
                policy.surfaces.join(", ")
            ),
        )
        .with_code("surface_not_allowed"));
    }
    if !model_allowed(&policy.models, model, catalog, configured) {
        return Err(HubError::new(
            ErrorKind::PermissionDenied,
            format!("This API key may not use the model `{model}`."),
        )
        .with_code("model_not_allowed")
        .with_param("model"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("openai/*", "openai/gpt-4o", true),
            ("openai/*", "openrouter/openai/gpt-4o", false),
            ("*/gpt-4o*", "openai/gpt-4o-mini", true),
            ("*/gpt-4o*", "openrouter/openai/gpt-4o", true),
            ("*/gpt-4o*", "openai/gpt-4.1", false),
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4o", "gpt-4o-mini", false),
            ("GPT-4O*", "gpt-4o-mini", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "", true),
            ("", "x", false),
            ("**a", "bba", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), *want, "{p} vs {t}");
        }
    }

    #[test]
    fn models_pinned_and_bare() {
        let cat = Catalog::builtin();
        let all = |_: ProviderKind| true;
        let only_openai = |k: ProviderKind| k == ProviderKind::OpenAi;
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(model_allowed(&p(&[]), "anything", &cat, all));
        assert!(model_allowed(&p(&["openai/*"]), "openai/gpt-4o", &cat, all));
        assert!(model_allowed(&p(&["openai/*"]), "openai:gpt-4o", &cat, all));
        assert!(!model_allowed(
            &p(&["openai/*"]),
            "deepseek/deepseek-chat",
            &cat,
            all
        ));
        // A bare model that OpenRouter could also serve is refused unless OpenRouter is allowed too.
        assert!(!model_allowed(&p(&["openai/*"]), "gpt-4o", &cat, all));
        assert!(model_allowed(
            &p(&["openai/*"]),
            "gpt-4o",
            &cat,
            only_openai
        ));
        assert!(model_allowed(&p(&["*/gpt-4o*"]), "gpt-4o", &cat, all));
        assert!(model_allowed(&p(&["gpt-4o"]), "gpt-4o", &cat, all));
        assert!(!model_allowed(&p(&["gpt-4o"]), "gpt-4o-mini", &cat, all));
    }

    #[test]
    fn rpm_is_exact_at_the_boundary_and_slides() {
        let lim = Limiter::default();
        let pol = KeyPolicy {
            rpm: Some(3),
            ..KeyPolicy::default()
        };
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(
                lim.admit_at("k", &pol, 0, t0 + Duration::from_secs(i))
                    .is_ok()
            );
        }
        let e = lim
            .admit_at("k", &pol, 0, t0 + Duration::from_secs(10))
            .err();
        let e = e.map(|e| (e.status(), e.code.clone(), e.retry_after));
        assert_eq!(
            e,
            Some((
                429,
                Some("rate_limit_exceeded".into()),
                Some(Duration::from_secs(50))
            ))
        );
        // Another key is not affected.
        assert!(lim.admit_at("other", &pol, 0, t0).is_ok());
        // The first request leaves the window at t0+60s.
        assert!(
            lim.admit_at("k", &pol, 0, t0 + Duration::from_millis(59_999))
                .is_err()
        );
        assert!(
            lim.admit_at("k", &pol, 0, t0 + Duration::from_secs(60))
                .is_ok()
        );
    }

    #[test]
    fn tpm_counts_usage_and_reservations() {
        let lim = Limiter::default();
        let pol = KeyPolicy {
            tpm: Some(100),
            ..KeyPolicy::default()
        };
        let t0 = Instant::now();
        // Two in flight reserving 40 each: a third of 40 does not fit, one of 20 does.
        let mut a = lim.admit_at("k", &pol, 40, t0).ok();
        let b = lim.admit_at("k", &pol, 40, t0).ok();
        assert!(a.is_some() && b.is_some());
        assert!(lim.admit_at("k", &pol, 40, t0).is_err());
        let c = lim.admit_at("k", &pol, 20, t0);
        assert!(c.is_ok());
        drop(c); // released: nothing used
        // `a` actually used 10: 10 + 40 reserved = 50 used, so 50 fits exactly, 51 does not.
        if let Some(p) = a.as_mut() {
            p.settle_at(10, t0 + Duration::from_secs(5));
        }
        drop(a);
        assert!(lim.admit_at("k", &pol, 51, t0).is_err());
        let d = lim.admit_at("k", &pol, 50, t0);
        assert!(d.is_ok());
        drop(d);
        drop(b);
        // Only the 10 used tokens remain, until t0+65s.
        let full = lim
            .admit_at("k", &pol, 95, t0 + Duration::from_secs(6))
            .err()
            .and_then(|e| e.retry_after);
        assert_eq!(full, Some(Duration::from_secs(59)));
        assert!(
            lim.admit_at("k", &pol, 95, t0 + Duration::from_secs(65))
                .is_ok()
        );
        // A request larger than the whole limit is refused outright.
        assert!(lim.admit_at("fresh", &pol, 101, t0).is_err());
    }

    #[test]
    fn surfaces_and_validation() {
        let cat = Catalog::builtin();
        let pol = KeyPolicy {
            surfaces: vec!["anthropic".into()],
            ..KeyPolicy::default()
        };
        let e = check_access(&pol, "openai", "gpt-4o", &cat, |_| true).err();
        assert_eq!(e.map(|e| e.status()), Some(403));
        assert!(check_access(&pol, "anthropic", "gpt-4o", &cat, |_| true).is_ok());
        assert!(
            KeyPolicy {
                surfaces: vec!["ftp".into()],
                ..KeyPolicy::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            KeyPolicy {
                rpm: Some(0),
                ..KeyPolicy::default()
            }
            .validate()
            .is_err()
        );
    }
}
