//! Candidates and attempts: tries providers (and credentials) in order until one answers; failures
//! before the first byte move on when another attempt may succeed. Health decides who is tried
//! (breakers, cool-downs, disabled credentials) and learns from every attempt; timeouts bound each
//! attempt (first byte) and the whole call (total deadline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::Hub;
use super::resilience::{StreamGuard, guard_stream, secret_values};
use super::snapshot::ProviderInstance;
use crate::error::{ErrorClass, ErrorKind, HubError, ProviderError};
use crate::health::{Block, Effect, Next, next_after};
use crate::providers::{EventStream, Provider, ProviderKind, Upstream};
use crate::router;
use crate::types::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, ImagesRequest,
    ImagesResponse, StreamEvent,
};

/// What a call resolved to (recorded with usage).
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempted {
    pub(crate) provider: Option<ProviderKind>,
    pub(crate) credential: Option<String>,
    pub(crate) upstream_model: Option<String>,
    pub(crate) attempts: u32,
    pub(crate) ttfb_ms: Option<u64>,
}

/// An operation to dispatch to a provider.
pub(crate) enum Op<'a> {
    Chat(&'a ChatRequest),
    Stream(&'a ChatRequest),
    Embeddings(&'a EmbeddingsRequest),
    Images(&'a ImagesRequest),
}

pub(crate) enum OpOut {
    Chat(ChatResponse),
    /// The stream and its first event (already awaited).
    Stream(EventStream, StreamEvent),
    Embeddings(EmbeddingsResponse),
    Images(ImagesResponse),
}

/// Candidates that were skipped without an attempt, and why (for the error when nobody could be
/// tried).
#[derive(Default)]
struct Skipped {
    reason: Option<Block>,
    provider: Option<ProviderKind>,
    until: Option<Instant>,
}

impl Skipped {
    fn note(&mut self, kind: ProviderKind, block: Block, until: Instant) {
        // Prefer the reason that clears soonest: a cool-down over an open circuit over a disabled
        // credential.
        let rank = |b: Block| match b {
            Block::RateLimited => 0,
            Block::CircuitOpen => 1,
            Block::Disabled => 2,
        };
        let better = match self.reason {
            None => true,
            Some(r) => {
                rank(block) < rank(r) || (rank(block) == rank(r) && Some(until) < self.until)
            }
        };
        if better {
            self.reason = Some(block);
            self.provider = Some(kind);
            self.until = Some(until);
        }
    }

    fn error(&self, model: &str) -> Option<HubError> {
        let reason = self.reason?;
        let provider = self.provider.map_or("the provider", |p| p.name());
        let retry = self
            .until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .map(|d| d.max(Duration::from_secs(1)));
        let mut e = match reason {
            Block::RateLimited => HubError::new(
                ErrorKind::RateLimited,
                format!(
                    "{provider} is rate limiting requests for `{model}` and no other provider can serve it now; retry after the indicated delay"
                ),
            )
            .with_code("rate_limit_exceeded"),
            Block::CircuitOpen => HubError::new(
                ErrorKind::Unavailable,
                format!(
                    "{provider} is failing repeatedly (circuit open) and no other provider can serve `{model}` now"
                ),
            )
            .with_code("circuit_open"),
            Block::Disabled => HubError::new(
                ErrorKind::Upstream,
                format!(
                    "{provider} rejected every credential configured on this hub; they are re-checked in the background"
                ),
            )
            .with_code("credential_disabled"),
        };
        e.provider = self.provider.map(|p| p.name().to_string());
        e.retry_after = retry.filter(|_| reason != Block::Disabled);
        Some(e)
    }
}

impl Hub {
    pub(crate) fn candidates(
        &self,
        model: &str,
    ) -> Result<Vec<(Arc<ProviderInstance>, String)>, HubError> {
        let snap = self.inner.snapshot.load();
        match router::candidates(model, &self.inner.catalog, |k| snap.providers.contains_key(&k)) {
            Ok(c) => Ok(c
                .into_iter()
                .filter_map(|c| snap.providers.get(&c.provider).map(|p| (p.clone(), c.upstream_model)))
                .collect()),
            Err(Some(kind)) => Err(HubError::new(
                ErrorKind::ModelNotFound,
                format!(
                    "The provider `{}` is not configured on this hub, so the model `{model}` is unavailable.",
                    kind.name()
                ),
            )
            .with_code("model_not_found")
            .with_param("model")),
            Err(None) => Err(HubError::model_not_found(model)),
        }
    }

    /// Whether `model` resolves to at least one configured provider, without calling it (the
    /// AIGNE `/api/v2/status?model=` probe).
    pub fn check_model(&self, model: &str) -> Result<(), HubError> {
        self.candidates(model).map(|_| ())
    }

    /// Tries candidates (and credentials) in order until one answers, within the total deadline.
    /// A credential-specific failure (auth, rate limit, quota) tries the provider's next
    /// credential; another retryable failure moves to the next provider; the caller's own errors
    /// and a provider 402 are the caller's answer. Unhealthy providers/credentials are skipped.
    pub(crate) async fn dispatch(
        &self,
        model: &str,
        op: Op<'_>,
        attempted: &mut Attempted,
    ) -> Result<OpOut, HubError> {
        let candidates = self.candidates(model)?;
        let health = &self.inner.health;
        let started = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut last: Option<HubError> = None;
        let mut skipped = Skipped::default();
        'providers: for (inst, upstream_model) in &candidates {
            let t = self.timeouts_for(inst.kind);
            // The first candidate's total bounds the call (a later provider cannot extend it).
            let deadline = *deadline.get_or_insert(started + t.total);
            let ph = health.provider(inst.kind);
            if let Err((block, until)) = health.admit_provider(&ph, upstream_model) {
                skipped.note(inst.kind, block, until);
                continue;
            }
            let weights: Vec<(usize, Arc<crate::health::CredHealth>)> = (0..inst.creds.len())
                .map(|i| (i, health.cred(&inst.creds[i].id)))
                .collect();
            let order = inst.credential_order_with(|i| {
                let c = &weights[i].1;
                if health.cred_available(c, upstream_model) {
                    c.weight(inst.creds[i].weight, &health.cfg)
                } else {
                    0
                }
            });
            for ci in order {
                let cred = &inst.creds[ci];
                let ch = &weights[ci].1;
                if let Err((block, until)) = health.admit_cred(ch, upstream_model) {
                    skipped.note(inst.kind, block, until);
                    continue;
                }
                let now = Instant::now();
                if now >= deadline {
                    last = Some(deadline_error(inst.kind));
                    break 'providers;
                }
                let remaining = deadline - now;
                let limit = t.ttfb.min(remaining);
                attempted.attempts += 1;
                attempted.provider = Some(inst.kind);
                attempted.credential = Some(cred.id.clone());
                attempted.upstream_model = Some(upstream_model.clone());
                let http = self.client(inst.kind, &inst.base_url).await;
                let up = Upstream {
                    http: &http,
                    base_url: &inst.base_url,
                    credential: &cred.secret,
                    model: upstream_model,
                    settings: &inst.settings,
                };
                let attempt_started = Instant::now();
                let result = tokio::time::timeout(limit, call(inst.imp.as_ref(), up, &op))
                    .await
                    .unwrap_or_else(|_| {
                        let what = if limit < t.ttfb {
                            "the call's total deadline passed before the first byte"
                        } else {
                            "no first byte within the time limit"
                        };
                        Err(ProviderError::new(ErrorClass::Timeout, what))
                    });
                let latency_ms = attempt_started.elapsed().as_millis() as u64;
                match result {
                    Ok(out) => {
                        self.inner.metrics.observe_attempt(inst.kind, true);
                        health.on_success(&ph, ch, inst.kind, upstream_model, latency_ms);
                        attempted.ttfb_ms = Some(started.elapsed().as_millis() as u64);
                        let out = match out {
                            OpOut::Stream(s, first) => OpOut::Stream(
                                guard_stream(
                                    s,
                                    StreamGuard {
                                        hub: self.clone(),
                                        provider: ph.clone(),
                                        cred: ch.clone(),
                                        inst: inst.clone(),
                                        cred_index: ci,
                                        model: upstream_model.clone(),
                                        idle: t.idle,
                                        deadline,
                                        lease: http,
                                    },
                                ),
                                first,
                            ),
                            other => other,
                        };
                        return Ok(out);
                    }
                    Err(e) => {
                        self.inner.metrics.observe_attempt(inst.kind, false);
                        tracing::warn!(provider = inst.kind.name(), credential = %cred.id, class = e.class.as_str(), status = ?e.status, latency_ms, "upstream attempt failed");
                        let secrets = secret_values(&cred.secret);
                        let effect = health.on_failure(
                            &ph,
                            ch,
                            inst.kind,
                            upstream_model,
                            &e,
                            &secrets,
                            super::now_ms(),
                        );
                        if effect == Effect::Disabled {
                            tracing::warn!(provider = inst.kind.name(), credential = %cred.id, "credential rejected by the provider; disabled until a background re-check passes");
                            self.spawn_recheck(inst.kind, cred.id.clone());
                        }
                        last = Some(HubError::from_provider(inst.kind.name(), &e));
                        match next_after(&e) {
                            Next::Stop => break 'providers,
                            Next::Provider => continue 'providers,
                            Next::Credential => {}
                        }
                    }
                }
            }
        }
        // Nothing answered. If no attempt was even made, say why (cool-down, open circuit,
        // disabled credentials) instead of a generic error.
        match last {
            Some(e) => {
                // When the last failure was a rate limit but other candidates were skipped for a
                // cool-down, the earliest of those is the useful Retry-After.
                if e.retry_after.is_none()
                    && e.kind == ErrorKind::RateLimited
                    && let Some(s) = skipped.error(model)
                {
                    let mut e = e;
                    e.retry_after = s.retry_after;
                    return Err(e);
                }
                Err(e)
            }
            None => Err(skipped
                .error(model)
                .unwrap_or_else(|| HubError::model_not_found(model))),
        }
    }
}

fn deadline_error(kind: ProviderKind) -> HubError {
    let mut e = HubError::from_provider(
        kind.name(),
        &ProviderError::new(ErrorClass::Timeout, "the call's total deadline passed"),
    );
    e.code = Some("deadline_exceeded".to_string());
    e
}

pub(crate) async fn call(
    imp: &dyn Provider,
    up: Upstream<'_>,
    op: &Op<'_>,
) -> Result<OpOut, ProviderError> {
    match op {
        Op::Chat(req) => imp.chat(up, req).await.map(OpOut::Chat),
        Op::Stream(req) => {
            let mut s = imp.chat_stream(up, req).await?;
            match s.next().await {
                Some(Ok(first)) => Ok(OpOut::Stream(s, first)),
                Some(Err(e)) => Err(e),
                None => Err(ProviderError::new(
                    ErrorClass::StreamInterrupted,
                    "upstream sent an empty stream",
                )),
            }
        }
        Op::Embeddings(req) => imp.embeddings(up, req).await.map(OpOut::Embeddings),
        Op::Images(req) => imp.images(up, req).await.map(OpOut::Images),
    }
}
