//! Health of credentials, providers and models, learned from real traffic: circuit breakers,
//! rate-limit cool-downs, auth disablement (re-checked in the background by the hub), per-credential
//! usage counters, and the report behind `GET /api/admin/health`.
//!
//! The hot path only reads atomics (`admit`, `on_success`); locks are taken on failures and for the
//! last-error text. State is in memory per process (see ARCHITECTURE.md for the scale-out gap).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use crate::FastMap;
use crate::error::{ErrorClass, ProviderError};
use crate::providers::ProviderKind;

/// Tunables of health tracking (env `HUB_BREAKER_*`, `HUB_AUTH_RECHECK_*`, `HUB_RATE_LIMIT_*`).
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Consecutive failures that open a breaker.
    pub breaker_failures: u32,
    /// How long an open breaker rejects traffic before one half-open trial is let through; doubles
    /// after each failed trial up to `breaker_max_cooldown`.
    pub breaker_cooldown: Duration,
    pub breaker_max_cooldown: Duration,
    /// First delay before re-checking a credential the provider rejected (401/403); doubles after
    /// every failed check up to `auth_recheck_max`.
    pub auth_recheck_initial: Duration,
    pub auth_recheck_max: Duration,
    /// Cool-down after a 429 that carried no `Retry-After`.
    pub rate_limit_cooldown: Duration,
    /// Longest cool-down a provider's `Retry-After` may impose.
    pub max_retry_after: Duration,
    /// Cool-down after a quota/credit failure of a credential (OpenAI `insufficient_quota`).
    pub quota_cooldown: Duration,
    /// Percentage of its weight a rate-limited credential keeps until its next success.
    pub rate_limited_weight_percent: u8,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            breaker_max_cooldown: Duration::from_secs(300),
            auth_recheck_initial: Duration::from_secs(5),
            auth_recheck_max: Duration::from_secs(3 * 3600),
            rate_limit_cooldown: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(300),
            quota_cooldown: Duration::from_secs(60),
            rate_limited_weight_percent: 10,
        }
    }
}

/// Why something is not admitted right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Block {
    /// Cooling down after a 429 (or an overloaded answer with a delay).
    RateLimited,
    /// Circuit open after consecutive failures (or its one half-open trial is in flight).
    CircuitOpen,
    /// The provider rejected the credential; a background check re-enables it.
    Disabled,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A circuit breaker: closed -> open after N consecutive failures -> one half-open trial after the
/// cool-down -> closed on success, open again (longer) on failure.
#[derive(Default)]
pub(crate) struct Breaker {
    state: AtomicU8,
    consecutive: AtomicU32,
    /// Failed trials since the breaker last closed (the cool-down doubles per trial).
    reopenings: AtomicU32,
    /// Open: no traffic before this (ms since the registry's epoch). Half-open: when a stuck trial
    /// stops blocking the next one.
    until_ms: AtomicU64,
}

impl Breaker {
    /// Whether a call may go through now. In open state past the cool-down exactly one caller wins
    /// the half-open trial.
    fn admit(&self, now: u64, cooldown: u64) -> bool {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return true;
        }
        let until = self.until_ms.load(Ordering::Acquire);
        if now < until {
            return false;
        }
        // Past the cool-down (or a previous trial never reported): take the trial.
        if self
            .until_ms
            .compare_exchange(until, now + cooldown, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.state.store(HALF_OPEN, Ordering::Release);
            return true;
        }
        false
    }

    fn blocked_until(&self, now: u64) -> Option<u64> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return None;
        }
        let until = self.until_ms.load(Ordering::Acquire);
        (now < until).then_some(until)
    }

    fn on_success(&self) {
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.state.store(CLOSED, Ordering::Release);
            self.reopenings.store(0, Ordering::Release);
        }
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; returns true when this failure opened the breaker.
    fn on_failure(&self, now: u64, cfg: &HealthConfig) -> bool {
        let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let state = self.state.load(Ordering::Acquire);
        if state == HALF_OPEN || (state == CLOSED && n >= cfg.breaker_failures.max(1)) {
            let k = if state == HALF_OPEN {
                self.reopenings.fetch_add(1, Ordering::AcqRel) + 1
            } else {
                0
            };
            let base = cfg.breaker_cooldown.as_millis() as u64;
            let cooldown = base
                .saturating_mul(1u64 << k.min(16))
                .min(cfg.breaker_max_cooldown.as_millis() as u64)
                .max(base.min(1));
            self.until_ms.store(now + cooldown, Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
            return true;
        }
        false
    }

    fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            CLOSED => "closed",
            OPEN => "open",
            _ => "half_open",
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }
}

/// The last failure seen, without secrets (provider messages are already masked by the provider;
/// the credential value itself is redacted again before it is stored).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LastError {
    pub class: &'static str,
    pub status: Option<u16>,
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Call counters and latency of one subject (credential, provider or model).
#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    latency_sum_ms: AtomicU64,
    last_latency_ms: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// Whether the most recent call succeeded.
    last_ok: AtomicBool,
    last_error: Mutex<Option<LastError>>,
}

impl Stats {
    fn success(&self, latency_ms: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.successes.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(latency_ms, Ordering::Relaxed);
        self.last_latency_ms.store(latency_ms, Ordering::Relaxed);
        self.last_ok.store(true, Ordering::Relaxed);
    }

    fn failure(&self, err: LastError) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.last_ok.store(false, Ordering::Relaxed);
        *self.last_error.lock() = Some(err);
    }

    fn tokens(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }

    fn report(&self) -> StatsReport {
        let requests = self.requests.load(Ordering::Relaxed);
        let successes = self.successes.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        StatsReport {
            requests,
            successes,
            failures,
            success_rate: (requests > 0).then(|| successes as f64 / requests as f64),
            avg_latency_ms: (successes > 0)
                .then(|| self.latency_sum_ms.load(Ordering::Relaxed) / successes),
            last_latency_ms: (successes > 0).then(|| self.last_latency_ms.load(Ordering::Relaxed)),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
        }
    }
}

/// Cool-downs per upstream model (providers rate-limit per model: a 429 on one model says nothing
/// about another). The hot path reads one atomic unless some cool-down is running.
#[derive(Default)]
pub(crate) struct Cooldowns {
    /// The latest end of any cool-down (ms since epoch).
    any_until: AtomicU64,
    by_model: Mutex<FastMap<String, u64>>,
}

impl Cooldowns {
    fn until(&self, model: &str, now: u64) -> Option<u64> {
        if now >= self.any_until.load(Ordering::Acquire) {
            return None;
        }
        self.by_model
            .lock()
            .get(model)
            .copied()
            .filter(|u| *u > now)
    }

    fn set(&self, model: &str, until: u64, now: u64) {
        let mut m = self.by_model.lock();
        if m.len() >= 64 {
            m.retain(|_, u| *u > now);
        }
        let e = m.entry(model.to_string()).or_insert(0);
        *e = (*e).max(until);
        self.any_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Running cool-downs: (model, remaining ms), soonest first.
    fn running(&self, now: u64) -> Vec<(String, u64)> {
        if now >= self.any_until.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut v: Vec<(String, u64)> = self
            .by_model
            .lock()
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(m, u)| (m.clone(), u - now))
            .collect();
        v.sort_by_key(|(_, r)| *r);
        v
    }
}

/// Health of one credential.
#[derive(Default)]
pub(crate) struct CredHealth {
    pub(crate) breaker: Breaker,
    /// No traffic before this (ms since epoch): quota cool-down (account-wide).
    cooldown_until_ms: AtomicU64,
    /// Rate-limit cool-downs, per upstream model.
    model_cooldowns: Cooldowns,
    /// Rejected by the provider (401/403); a background check re-enables it.
    disabled: AtomicBool,
    /// A re-check task is running for this credential.
    pub(crate) rechecking: AtomicBool,
    /// Down-weighted after a 429, until the next success.
    penalised: AtomicBool,
    /// Upstream model to re-check with (the one that failed).
    pub(crate) probe_model: Mutex<Option<String>>,
    pub(crate) stats: Stats,
}

impl CredHealth {
    /// Effective SWRR weight.
    pub(crate) fn weight(&self, configured: i64, cfg: &HealthConfig) -> i64 {
        if self.penalised.load(Ordering::Relaxed) {
            (configured * i64::from(cfg.rate_limited_weight_percent) / 100).max(1)
        } else {
            configured
        }
    }

    pub(crate) fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    /// Re-enables a credential the background check found valid again.
    pub(crate) fn enable(&self) {
        self.disabled.store(false, Ordering::Release);
        self.breaker.on_success();
    }
}

/// Health of one provider (all its credentials).
#[derive(Default)]
pub(crate) struct ProviderHealth {
    pub(crate) breaker: Breaker,
    /// Cool-down after an overloaded answer that named a delay, per upstream model.
    model_cooldowns: Cooldowns,
    pub(crate) stats: Stats,
}

/// Upper bound on tracked (provider, model) pairs: pinned model names come from callers.
const MAX_MODELS: usize = 2048;

/// The registry: health by credential id, provider and (provider, upstream model).
pub struct Health {
    pub(crate) cfg: HealthConfig,
    epoch: Instant,
    creds: RwLock<FastMap<String, Arc<CredHealth>>>,
    providers: RwLock<FastMap<ProviderKind, Arc<ProviderHealth>>>,
    models: RwLock<FastMap<(ProviderKind, String), Arc<Stats>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Health")
    }
}

/// What one attempt's failure means for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try this provider's next credential.
    Credential,
    /// Try the next provider.
    Provider,
    /// The caller's answer: do not retry.
    Stop,
}

/// Decides where a failed attempt goes next (before the first byte reached the caller).
pub(crate) fn next_after(err: &ProviderError) -> Next {
    // A provider 402 (payment required) is never retried, as in the original.
    if err.status == Some(402) {
        return Next::Stop;
    }
    match err.class {
        ErrorClass::Auth | ErrorClass::RateLimited | ErrorClass::QuotaExceeded => Next::Credential,
        ErrorClass::Overloaded
        | ErrorClass::Server
        | ErrorClass::Timeout
        | ErrorClass::Connect
        | ErrorClass::Protocol
        | ErrorClass::NotFound
        | ErrorClass::Unsupported
        // Nothing reached the caller yet: a stream that broke before its first event is retried.
        | ErrorClass::StreamInterrupted => Next::Provider,
        ErrorClass::InvalidRequest | ErrorClass::ContextLength | ErrorClass::ContentFilter => {
            Next::Stop
        }
    }
}

/// Whether a failure says something about the health of the provider/credential (the caller's own
/// errors and "model unknown here" do not).
fn counts_against(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::Overloaded
            | ErrorClass::Server
            | ErrorClass::Timeout
            | ErrorClass::Connect
            | ErrorClass::Protocol
            | ErrorClass::StreamInterrupted
    )
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// What happened to a credential after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    /// Disabled now: start a background re-check.
    Disabled,
}

impl Health {
    pub fn new(cfg: HealthConfig) -> Health {
        Health {
            cfg,
            epoch: Instant::now(),
            creds: RwLock::new(FastMap::default()),
            providers: RwLock::new(FastMap::default()),
            models: RwLock::new(FastMap::default()),
        }
    }

    /// Milliseconds since the registry's epoch (monotonic).
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn to_instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    pub(crate) fn cred(&self, id: &str) -> Arc<CredHealth> {
        if let Some(c) = self.creds.read().get(id) {
            return c.clone();
        }
        self.creds
            .write()
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub(crate) fn provider(&self, kind: ProviderKind) -> Arc<ProviderHealth> {
        if let Some(p) = self.providers.read().get(&kind) {
            return p.clone();
        }
        self.providers.write().entry(kind).or_default().clone()
    }

    fn model(&self, kind: ProviderKind, model: &str) -> Option<Arc<Stats>> {
        let key = (kind, model.to_string());
        if let Some(m) = self.models.read().get(&key) {
            return Some(m.clone());
        }
        let mut w = self.models.write();
        if w.len() >= MAX_MODELS && !w.contains_key(&key) {
            return None;
        }
        Some(w.entry(key).or_default().clone())
    }

    /// Is the provider usable for `model` now? `Err` carries why not and until when.
    pub(crate) fn admit_provider(
        &self,
        p: &ProviderHealth,
        model: &str,
    ) -> Result<(), (Block, Instant)> {
        let now = self.now();
        if let Some(until) = p.model_cooldowns.until(model, now) {
            return Err((Block::RateLimited, self.to_instant(until)));
        }
        if !p
            .breaker
            .admit(now, self.cfg.breaker_cooldown.as_millis() as u64)
        {
            let until = p.breaker.blocked_until(now).unwrap_or(now);
            return Err((Block::CircuitOpen, self.to_instant(until)));
        }
        Ok(())
    }

    fn cred_cooling(&self, c: &CredHealth, model: &str, now: u64) -> Option<u64> {
        let account = c.cooldown_until_ms.load(Ordering::Acquire);
        let model = c.model_cooldowns.until(model, now);
        match (now < account, model) {
            (true, Some(m)) => Some(m.max(account)),
            (true, None) => Some(account),
            (false, m) => m,
        }
    }

    /// Is the credential usable for `model` now? (Takes the half-open trial when its breaker
    /// allows one.)
    pub(crate) fn admit_cred(&self, c: &CredHealth, model: &str) -> Result<(), (Block, Instant)> {
        let now = self.now();
        if c.is_disabled() {
            return Err((
                Block::Disabled,
                self.to_instant(now) + self.cfg.auth_recheck_initial,
            ));
        }
        if let Some(until) = self.cred_cooling(c, model, now) {
            return Err((Block::RateLimited, self.to_instant(until)));
        }
        if !c
            .breaker
            .admit(now, self.cfg.breaker_cooldown.as_millis() as u64)
        {
            let until = c.breaker.blocked_until(now).unwrap_or(now);
            return Err((Block::CircuitOpen, self.to_instant(until)));
        }
        Ok(())
    }

    /// Whether the credential could be picked for `model` now, without taking a half-open trial.
    pub(crate) fn cred_available(&self, c: &CredHealth, model: &str) -> bool {
        let now = self.now();
        !c.is_disabled()
            && self.cred_cooling(c, model, now).is_none()
            && c.breaker.blocked_until(now).is_none()
    }

    /// A successful attempt (first byte / whole answer arrived).
    pub(crate) fn on_success(
        &self,
        p: &ProviderHealth,
        c: &CredHealth,
        kind: ProviderKind,
        model: &str,
        latency_ms: u64,
    ) {
        p.breaker.on_success();
        c.breaker.on_success();
        if c.penalised.load(Ordering::Relaxed) {
            c.penalised.store(false, Ordering::Relaxed);
        }
        p.stats.success(latency_ms);
        c.stats.success(latency_ms);
        if let Some(m) = self.model(kind, model) {
            m.success(latency_ms);
        }
    }

    /// A failed attempt. `secret` is redacted from the stored message.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; a struct would only rename the arguments"
    )]
    pub(crate) fn on_failure(
        &self,
        p: &ProviderHealth,
        c: &CredHealth,
        kind: ProviderKind,
        model: &str,
        err: &ProviderError,
        secrets: &[&str],
        wall_now_ms: i64,
    ) -> Effect {
        let now = self.now();
        let mut message = err.message.clone();
        for s in secrets.iter().filter(|s| s.len() >= 4) {
            message = message.replace(s, &crate::providers::mask(s));
        }
        let last = LastError {
            class: err.class.as_str(),
            status: err.status,
            message: truncate(message, 500),
            at_ms: wall_now_ms,
        };
        c.stats.failure(last.clone());
        p.stats.failure(last.clone());
        if let Some(m) = self.model(kind, model) {
            m.failure(last);
        }
        let retry_after = err
            .retry_after
            .map(|d| d.min(self.cfg.max_retry_after).as_millis() as u64);
        let mut effect = Effect::None;
        match err.class {
            ErrorClass::Auth if !c.disabled.swap(true, Ordering::AcqRel) => {
                *c.probe_model.lock() = Some(model.to_string());
                effect = Effect::Disabled;
            }
            ErrorClass::RateLimited => {
                let d = retry_after.unwrap_or(self.cfg.rate_limit_cooldown.as_millis() as u64);
                c.model_cooldowns.set(model, now + d, now);
                c.penalised.store(true, Ordering::Relaxed);
            }
            ErrorClass::QuotaExceeded => {
                let d = retry_after.unwrap_or(self.cfg.quota_cooldown.as_millis() as u64);
                c.cooldown_until_ms.fetch_max(now + d, Ordering::AcqRel);
            }
            class if counts_against(class) => {
                if class == ErrorClass::Overloaded
                    && let Some(d) = retry_after
                {
                    p.model_cooldowns.set(model, now + d, now);
                }
                c.breaker.on_failure(now, &self.cfg);
                if p.breaker.on_failure(now, &self.cfg) {
                    tracing::warn!(
                        provider = kind.name(),
                        "circuit opened after consecutive failures"
                    );
                }
            }
            _ => {}
        }
        effect
    }

    pub(crate) fn on_tokens(&self, credential: &str, prompt: u64, completion: u64) {
        if let Some(c) = self.creds.read().get(credential) {
            c.stats.tokens(prompt, completion);
        }
    }

    /// Number of open (or half-open) breakers.
    pub fn open_circuits(&self) -> (u64, u64) {
        let providers = self
            .providers
            .read()
            .values()
            .filter(|p| p.breaker.is_open())
            .count() as u64;
        let creds = self
            .creds
            .read()
            .values()
            .filter(|c| c.breaker.is_open())
            .count() as u64;
        (providers, creds)
    }

    fn cred_state(&self, c: &CredHealth, now: u64) -> (&'static str, Option<u64>) {
        if c.is_disabled() {
            return ("disabled", None);
        }
        let account = c.cooldown_until_ms.load(Ordering::Acquire);
        if now < account {
            return ("cooling_down", Some(account - now));
        }
        if let Some((_, r)) = c.model_cooldowns.running(now).first() {
            return ("cooling_down", Some(*r));
        }
        match c.breaker.state_name() {
            "closed" => ("ok", None),
            s => (s, c.breaker.blocked_until(now).map(|u| u - now)),
        }
    }

    /// The health report for the configured providers and credentials.
    pub(crate) fn report(&self, providers: &[(ProviderKind, Vec<(String, i64)>)]) -> HealthReport {
        let now = self.now();
        let mut out = Vec::new();
        for (kind, creds) in providers {
            let p = self.provider(*kind);
            let mut credentials = Vec::new();
            let mut any_ok = false;
            let mut min_wait: Option<u64> = None;
            for (id, weight) in creds {
                let c = self.cred(id);
                let (state, retry_in_ms) = self.cred_state(&c, now);
                any_ok |= state == "ok";
                if let Some(w) = retry_in_ms {
                    min_wait = Some(min_wait.map_or(w, |m| m.min(w)));
                }
                credentials.push(CredentialReport {
                    id: id.clone(),
                    state,
                    retry_in_ms,
                    weight: *weight,
                    effective_weight: c.weight(*weight, &self.cfg),
                    breaker: c.breaker.state_name(),
                    cooling_models: cooling(&c.model_cooldowns, now),
                    stats: c.stats.report(),
                });
            }
            let (state, retry_in_ms) = if let Some((_, r)) = p.model_cooldowns.running(now).first()
            {
                ("cooling_down", Some(*r))
            } else if p.breaker.state_name() != "closed" {
                (
                    p.breaker.state_name(),
                    p.breaker.blocked_until(now).map(|u| u - now),
                )
            } else if !any_ok && !creds.is_empty() {
                ("unavailable", min_wait)
            } else {
                ("ok", None)
            };
            let models = self
                .models
                .read()
                .iter()
                .filter(|((k, _), _)| k == kind)
                .map(|((_, m), s)| {
                    let stats = s.report();
                    let state = if s.last_ok.load(Ordering::Relaxed) {
                        "ok"
                    } else {
                        "failing"
                    };
                    ModelReport {
                        model: m.clone(),
                        state,
                        stats,
                    }
                })
                .collect::<Vec<_>>();
            let mut models = models;
            models.sort_by(|a, b| a.model.cmp(&b.model));
            out.push(ProviderReport {
                provider: kind.name(),
                state,
                retry_in_ms,
                breaker: p.breaker.state_name(),
                cooling_models: cooling(&p.model_cooldowns, now),
                stats: p.stats.report(),
                credentials,
                models,
                timeouts: None,
            });
        }
        HealthReport { providers: out }
    }
}

fn cooling(c: &Cooldowns, now: u64) -> Vec<CoolingModel> {
    c.running(now)
        .into_iter()
        .map(|(model, retry_in_ms)| CoolingModel { model, retry_in_ms })
        .collect()
}

/// A model cooling down after a 429 (or an overloaded answer with a delay).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CoolingModel {
    pub model: String,
    pub retry_in_ms: u64,
}

/// `GET /api/admin/health`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthReport {
    pub providers: Vec<ProviderReport>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderReport {
    pub provider: &'static str,
    /// `ok`, `cooling_down`, `open`, `half_open`, `unavailable` (no credential usable now).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    pub breaker: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cooling_models: Vec<CoolingModel>,
    pub stats: StatsReport,
    pub credentials: Vec<CredentialReport>,
    pub models: Vec<ModelReport>,
    /// The timeouts in force for this provider (stored > env > default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<crate::timeouts::TimeoutSettings>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CredentialReport {
    /// Credential id (never the value).
    pub id: String,
    /// `ok`, `cooling_down`, `disabled`, `open`, `half_open`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    pub weight: i64,
    pub effective_weight: i64,
    pub breaker: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cooling_models: Vec<CoolingModel>,
    pub stats: StatsReport,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelReport {
    /// The provider's own model id.
    pub model: String,
    /// `ok` or `failing`.
    pub state: &'static str,
    pub stats: StatsReport,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsReport {
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg_latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_latency_ms: Option<u64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            breaker_failures: 3,
            breaker_cooldown: Duration::from_millis(100),
            breaker_max_cooldown: Duration::from_millis(1000),
            ..HealthConfig::default()
        }
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let c = cfg();
        let b = Breaker::default();
        assert!(b.admit(0, 100));
        assert!(!b.on_failure(0, &c));
        assert!(!b.on_failure(1, &c));
        assert!(b.on_failure(2, &c), "third consecutive failure opens");
        assert!(!b.admit(50, 100), "open during the cool-down");
        assert_eq!(b.blocked_until(50), Some(102));
        assert!(b.admit(102, 100), "one half-open trial after the cool-down");
        assert!(!b.admit(103, 100), "only one trial at a time");
        b.on_success();
        assert!(b.admit(104, 100));
        assert!(!b.is_open());
    }

    #[test]
    fn failed_trial_reopens_longer() {
        let c = cfg();
        let b = Breaker::default();
        for t in 0..3 {
            b.on_failure(t, &c);
        }
        assert!(b.admit(200, 100));
        assert!(b.on_failure(200, &c), "a failed trial re-opens");
        // Cool-down doubled: 200 ms.
        assert!(!b.admit(399, 100));
        assert!(b.admit(400, 100));
    }

    #[test]
    fn success_resets_the_count() {
        let c = cfg();
        let b = Breaker::default();
        b.on_failure(0, &c);
        b.on_failure(0, &c);
        b.on_success();
        assert!(!b.on_failure(0, &c));
        assert!(!b.on_failure(0, &c));
        assert!(b.on_failure(0, &c));
    }

    #[test]
    fn routing_decisions() {
        let e = |class, status: Option<u16>| {
            let mut e = ProviderError::new(class, "x");
            e.status = status;
            next_after(&e)
        };
        assert_eq!(e(ErrorClass::Auth, Some(401)), Next::Credential);
        assert_eq!(e(ErrorClass::RateLimited, Some(429)), Next::Credential);
        assert_eq!(e(ErrorClass::QuotaExceeded, Some(429)), Next::Credential);
        assert_eq!(e(ErrorClass::QuotaExceeded, Some(402)), Next::Stop);
        assert_eq!(e(ErrorClass::Server, Some(402)), Next::Stop);
        assert_eq!(e(ErrorClass::Server, Some(500)), Next::Provider);
        assert_eq!(e(ErrorClass::Connect, None), Next::Provider);
        assert_eq!(e(ErrorClass::Timeout, None), Next::Provider);
        assert_eq!(e(ErrorClass::Overloaded, Some(529)), Next::Provider);
        assert_eq!(e(ErrorClass::InvalidRequest, Some(400)), Next::Stop);
        assert_eq!(e(ErrorClass::ContextLength, Some(400)), Next::Stop);
    }

    #[test]
    fn rate_limit_cools_and_down_weights_until_success() {
        let h = Health::new(cfg());
        let p = h.provider(ProviderKind::OpenAi);
        let c = h.cred("a");
        let mut err = ProviderError::new(ErrorClass::RateLimited, "slow down").with_status(429);
        err.retry_after = Some(Duration::from_secs(60));
        h.on_failure(&p, &c, ProviderKind::OpenAi, "m", &err, &[], 0);
        assert_eq!(
            h.admit_cred(&c, "m").map_err(|e| e.0),
            Err(Block::RateLimited)
        );
        assert!(
            h.admit_cred(&c, "other").is_ok(),
            "rate limits are per model"
        );
        assert_eq!(c.weight(100, &h.cfg), 10);
        assert!(
            h.admit_provider(&p, "m").is_ok(),
            "a 429 is the credential's"
        );
        h.on_success(&p, &c, ProviderKind::OpenAi, "m", 5);
        assert_eq!(c.weight(100, &h.cfg), 100);
    }

    #[test]
    fn auth_disables_once_and_redacts() {
        let h = Health::new(cfg());
        let p = h.provider(ProviderKind::OpenAi);
        let c = h.cred("a");
        let err =
            ProviderError::new(ErrorClass::Auth, "bad key sk-secret-value-123").with_status(401);
        let first = h.on_failure(
            &p,
            &c,
            ProviderKind::OpenAi,
            "m",
            &err,
            &["sk-secret-value-123"],
            0,
        );
        assert_eq!(first, Effect::Disabled);
        let again = h.on_failure(
            &p,
            &c,
            ProviderKind::OpenAi,
            "m",
            &err,
            &["sk-secret-value-123"],
            0,
        );
        assert_eq!(again, Effect::None);
        assert_eq!(h.admit_cred(&c, "m").map_err(|e| e.0), Err(Block::Disabled));
        let report = h.report(&[(ProviderKind::OpenAi, vec![("a".to_string(), 100)])]);
        let text = serde_json::to_string(&report).unwrap_or_default();
        assert!(!text.contains("secret-value"), "{text}");
        assert!(text.contains("\"disabled\""));
        c.enable();
        assert!(h.admit_cred(&c, "m").is_ok());
    }
}
