//! The hub's side of resilience: one pooled HTTP client per provider, per-provider timeouts, the
//! background re-check of credentials a provider rejected, the stream guard (idle timeout, total
//! deadline, in-flight gauge, health after the first byte), and the health/metrics views.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{Hub, OpenError};
use crate::error::{ErrorClass, ProviderError};
use crate::health::{CredHealth, Effect, HealthReport, ProviderHealth};
use crate::providers::{CredentialSecret, EventStream, ProviderKind, Upstream};
use crate::store::UsageRecord;
use crate::timeouts::{TimeoutOverrides, Timeouts};

/// Builds one connection pool per provider (its own connect timeout; HTTP/2 negotiated by ALPN
/// over TLS where the provider speaks it, HTTP/1.1 otherwise; TLS by rustls). Proxies come from
/// the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`), as reqwest reads them.
pub(crate) fn build_clients(
    global: &Timeouts,
    per: &HashMap<ProviderKind, TimeoutOverrides>,
) -> Result<HashMap<ProviderKind, reqwest::Client>, OpenError> {
    let mut out = HashMap::new();
    for kind in ProviderKind::ALL {
        let t = global.with(per.get(&kind));
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(t.connect)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .http2_adaptive_window(true)
            .build()
            .map_err(|e| OpenError::Http(e.to_string()))?;
        out.insert(kind, client);
    }
    Ok(out)
}

impl Hub {
    /// The provider's connection pool.
    pub(crate) fn client(&self, kind: ProviderKind) -> &reqwest::Client {
        self.inner.clients.get(&kind).unwrap_or(&self.inner.http)
    }

    /// Timeouts for calls to `kind` (global with the provider's overrides).
    pub(crate) fn timeouts_for(&self, kind: ProviderKind) -> Timeouts {
        self.inner
            .timeouts
            .with(self.inner.provider_timeouts.get(&kind))
    }

    /// Re-checks a disabled credential in the background with exponential backoff until the
    /// provider accepts it again (then it is re-enabled), it disappears from configuration, or
    /// the hub closes.
    pub(crate) fn spawn_recheck(&self, kind: ProviderKind, cred_id: String) {
        let health = &self.inner.health;
        let ch = health.cred(&cred_id);
        if ch
            .rechecking
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let initial = health.cfg.auth_recheck_initial;
        let max = health.cfg.auth_recheck_max;
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut delay = initial;
            loop {
                // Sleep out the backoff, but check at once when the configuration changes (an
                // administrator replaced the key).
                let Some(version) = weak
                    .upgrade()
                    .map(|i| i.version.load(std::sync::atomic::Ordering::Acquire))
                else {
                    return;
                };
                let wake = tokio::time::Instant::now() + delay;
                loop {
                    let step = wake
                        .saturating_duration_since(tokio::time::Instant::now())
                        .min(Duration::from_secs(1));
                    if step.is_zero() {
                        break;
                    }
                    tokio::time::sleep(step).await;
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.version.load(std::sync::atomic::Ordering::Acquire) != version {
                        break;
                    }
                }
                let Some(inner) = weak.upgrade() else { return };
                let hub = Hub { inner };
                if !ch.is_disabled() {
                    break;
                }
                match hub.recheck_once(kind, &cred_id, &ch).await {
                    Some(true) => {
                        ch.enable();
                        tracing::info!(provider = kind.name(), credential = %cred_id, "credential accepted again; re-enabled");
                        break;
                    }
                    Some(false) => {
                        tracing::info!(provider = kind.name(), credential = %cred_id, next_check_ms = (delay * 2).min(max).as_millis() as u64, "credential still rejected");
                    }
                    None => {
                        // Gone from configuration: nothing left to protect.
                        ch.enable();
                        break;
                    }
                }
                delay = (delay * 2).min(max);
            }
            ch.rechecking
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// A credential was seen working (e.g. an administrator's test call): re-enable it.
    pub(crate) fn credential_accepted(&self, cred_id: &str) {
        let ch = self.inner.health.cred(cred_id);
        if ch.is_disabled() {
            ch.enable();
            tracing::info!(credential = %cred_id, "credential accepted again; re-enabled");
        }
    }

    /// One re-check: `Some(true)` accepted, `Some(false)` still rejected (or inconclusive),
    /// `None` the credential is no longer configured.
    async fn recheck_once(
        &self,
        kind: ProviderKind,
        cred_id: &str,
        ch: &CredHealth,
    ) -> Option<bool> {
        let snap = self.inner.snapshot.load_full();
        let inst = snap.providers.get(&kind)?.clone();
        let cred = inst.creds.iter().find(|c| c.id == cred_id)?;
        let model = ch.probe_model.lock().clone().unwrap_or_default();
        let up = Upstream {
            http: self.client(kind),
            base_url: &inst.base_url,
            credential: &cred.secret,
            model: &model,
            settings: &inst.settings,
        };
        let t = self.timeouts_for(kind);
        let result = tokio::time::timeout(t.ttfb.min(t.total), inst.imp.probe(up))
            .await
            .unwrap_or_else(|_| Err(ProviderError::new(ErrorClass::Timeout, "probe timed out")));
        Some(match result {
            Ok(()) => true,
            // The credential got past authentication: any answer about the request itself means
            // it is valid again. Transport and server trouble say nothing: check again later.
            Err(e) => match e.class {
                ErrorClass::Auth => false,
                ErrorClass::Server
                | ErrorClass::Overloaded
                | ErrorClass::Timeout
                | ErrorClass::Connect
                | ErrorClass::Protocol
                | ErrorClass::StreamInterrupted => false,
                ErrorClass::RateLimited
                | ErrorClass::QuotaExceeded
                | ErrorClass::InvalidRequest
                | ErrorClass::ContextLength
                | ErrorClass::NotFound
                | ErrorClass::Unsupported
                | ErrorClass::ContentFilter => true,
            },
        })
    }

    /// Per provider, credential and model: state, last error, latency, success rate. For admins
    /// only (`GET /api/admin/health`); never contains credential values.
    pub fn health_report(&self) -> HealthReport {
        let snap = self.inner.snapshot.load();
        let mut providers: Vec<(ProviderKind, Vec<(String, i64)>)> = snap
            .providers
            .values()
            .map(|p| {
                (
                    p.kind,
                    p.creds.iter().map(|c| (c.id.clone(), c.weight)).collect(),
                )
            })
            .collect();
        providers.sort_by_key(|(k, _)| *k);
        self.inner.health.report(&providers)
    }

    /// `GET /metrics` in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render(self.inner.health.open_circuits())
    }

    /// A settled call: metrics and per-credential token counts.
    pub(crate) fn observe(&self, rec: &UsageRecord) {
        self.inner.metrics.observe_record(rec);
        if let Some(c) = &rec.credential {
            self.inner
                .health
                .on_tokens(c, rec.prompt_tokens, rec.completion_tokens);
        }
    }
}

/// The secret values of a credential (to redact them from anything stored).
pub(crate) fn secret_values(s: &CredentialSecret) -> Vec<&str> {
    [
        s.api_key.as_ref(),
        s.secret_key.as_ref(),
        s.session_token.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|s| s.expose())
    .collect()
}

/// What a stream guard needs to know about the attempt that started the stream.
pub(crate) struct StreamGuard {
    pub(crate) hub: Hub,
    pub(crate) provider: Arc<ProviderHealth>,
    pub(crate) cred: Arc<CredHealth>,
    pub(crate) cred_id: String,
    /// Redacted from stored error messages.
    pub(crate) secret: CredentialSecret,
    pub(crate) kind: ProviderKind,
    pub(crate) model: String,
    pub(crate) idle: Duration,
    pub(crate) deadline: Instant,
}

/// Wraps an upstream stream (after its first event): an idle gap longer than `idle`, or the
/// call's total deadline, ends it with a `Timeout` error item (the meter records it and the egress
/// renders it in the caller's format); failures after the first byte count against health.
pub(crate) fn guard_stream(mut upstream: EventStream, g: StreamGuard) -> EventStream {
    let in_flight = g.hub.inner.metrics.stream_started();
    Box::pin(async_stream::stream! {
        let _in_flight = in_flight;
        loop {
            let now = Instant::now();
            let wait = g.idle.min(g.deadline.saturating_duration_since(now));
            let err = match tokio::time::timeout(wait, upstream.next()).await {
                Ok(Some(Ok(ev))) => {
                    yield Ok(ev);
                    continue;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => e,
                Err(_) if wait < g.idle => ProviderError::new(
                    ErrorClass::Timeout,
                    "the call's total deadline passed while streaming",
                ),
                Err(_) => ProviderError::new(
                    ErrorClass::Timeout,
                    format!("no data from upstream for {} ms", g.idle.as_millis()),
                ),
            };
            // Close the upstream connection before the error is settled and delivered.
            drop(upstream);
            let health = &g.hub.inner.health;
            let effect = health.on_failure(
                &g.provider,
                &g.cred,
                g.kind,
                &g.model,
                &err,
                &secret_values(&g.secret),
                super::now_ms(),
            );
            if effect == Effect::Disabled {
                g.hub.spawn_recheck(g.kind, g.cred_id.clone());
            }
            yield Err(err);
            return;
        }
    })
}
