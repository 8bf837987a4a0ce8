//! The hub's side of resilience: the providers' connection pools, per-provider timeouts, the
//! background re-check of credentials a provider rejected, the stream guard (idle timeout, total
//! deadline, in-flight gauge, health after the first byte), and the health/metrics views.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use arc_swap::ArcSwap;

use super::pools::{Lease, Pools};
use super::snapshot::{ProviderInstance, Snapshot};
use super::{Hub, OpenError};
use crate::FastMap;
use crate::error::{ErrorClass, ProviderError};
use crate::health::{CredHealth, Effect, HealthReport, ProviderHealth};
use crate::providers::{CredentialSecret, EventStream, ProviderKind, Upstream};
use crate::store::UsageRecord;
use crate::timeouts::{TimeoutSettings, Timeouts};

/// The upstream clients: connection pools per provider (see [`super::pools`]), each with the
/// provider's connect timeout. HTTP/2 is negotiated by ALPN over TLS where the upstream speaks it
/// (HTTP/1.1 otherwise); TLS by rustls with the built-in web roots plus `HUB_EXTRA_CA_FILE`.
/// Proxies come from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`; see
/// [`crate::upstream_http`]). A provider's pools are rebuilt only when its connect timeout changes
/// (stored timeouts).
pub(crate) struct Clients {
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    pools: ArcSwap<FastMap<ProviderKind, Arc<Pools>>>,
    /// For a kind without pools of its own (every kind has them; this keeps `lease` total).
    fallback: Arc<Pools>,
}

impl Clients {
    /// `extra_ca_pem`: a PEM bundle of extra roots (at least one certificate).
    pub(crate) fn new(
        global: &Timeouts,
        connect: impl Fn(ProviderKind) -> Duration,
        extra_ca_pem: Option<&[u8]>,
    ) -> Result<Clients, OpenError> {
        let extra_roots = match extra_ca_pem {
            None => Vec::new(),
            Some(pem) => {
                let certs = crate::upstream_http::roots_from_pem(pem).map_err(|e| {
                    OpenError::Http(format!(
                        "HUB_EXTRA_CA_FILE: not a PEM certificate bundle: {e}"
                    ))
                })?;
                if certs.is_empty() {
                    return Err(OpenError::Config(
                        "HUB_EXTRA_CA_FILE: no certificate in the file",
                    ));
                }
                certs
            }
        };
        let mut pools = FastMap::default();
        for kind in ProviderKind::ALL {
            pools.insert(kind, Arc::new(Pools::new(connect(kind), &extra_roots)?));
        }
        Ok(Clients {
            fallback: Arc::new(Pools::new(global.connect, &extra_roots)?),
            extra_roots,
            pools: ArcSwap::from_pointee(pools),
        })
    }

    /// The client for one call to `kind` at `base_url`; hold it while the response is read.
    pub(crate) async fn lease(&self, kind: ProviderKind, base_url: &str) -> Lease {
        let pools = match self.pools.load().get(&kind) {
            Some(p) => p.clone(),
            None => self.fallback.clone(),
        };
        pools.lease(base_url).await
    }

    /// Rebuilds the pools whose connect timeout changed.
    pub(crate) fn refresh(
        &self,
        connect: impl Fn(ProviderKind) -> Duration,
    ) -> Result<(), OpenError> {
        let current = self.pools.load();
        if ProviderKind::ALL.iter().all(|k| {
            current
                .get(k)
                .is_some_and(|p| p.connect_timeout() == connect(*k))
        }) {
            return Ok(());
        }
        let mut next = FastMap::default();
        for kind in ProviderKind::ALL {
            let c = connect(kind);
            let pools = match current.get(&kind) {
                Some(p) if p.connect_timeout() == c => p.clone(),
                _ => Arc::new(Pools::new(c, &self.extra_roots)?),
            };
            next.insert(kind, pools);
        }
        self.pools.store(Arc::new(next));
        Ok(())
    }
}

impl Hub {
    /// The client for one call to `kind` at `base_url` (see [`Clients`]): hold it while the
    /// response is read.
    pub(crate) async fn client(&self, kind: ProviderKind, base_url: &str) -> Lease {
        self.inner.clients.lease(kind, base_url).await
    }

    /// Timeouts for calls to `kind`, field by field: stored (admin API / CLI) > the provider's
    /// env > `HUB_TIMEOUT_*` > default.
    pub(crate) fn timeouts_for(&self, kind: ProviderKind) -> Timeouts {
        let snap = self.inner.snapshot.load();
        self.timeouts_in(&snap, kind)
    }

    fn timeouts_in(&self, snap: &Snapshot, kind: ProviderKind) -> Timeouts {
        self.inner
            .timeouts
            .with(self.inner.provider_timeouts.get(&kind))
            .with(snap.stored_timeouts.get(&kind))
    }

    /// After a reload: pools whose connect timeout changed are rebuilt.
    pub(crate) fn refresh_clients(&self) -> Result<(), OpenError> {
        let snap = self.inner.snapshot.load();
        self.inner
            .clients
            .refresh(|k| self.timeouts_in(&snap, k).connect)
    }

    /// A provider's timeouts: what is stored, and what is in force.
    pub async fn provider_timeouts(
        &self,
        kind: ProviderKind,
    ) -> Result<crate::timeouts::ProviderTimeouts, crate::store::StoreError> {
        let stored = self
            .inner
            .store
            .get_setting(&TimeoutSettings::key(kind))
            .await?
            .and_then(|t| serde_json::from_str::<TimeoutSettings>(&t).ok())
            .unwrap_or_default();
        Ok(crate::timeouts::ProviderTimeouts {
            provider: kind.name().to_string(),
            stored,
            effective: TimeoutSettings::of(&self.timeouts_for(kind)),
        })
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
        let http = self.client(kind, &inst.base_url).await;
        let up = Upstream {
            http: &http,
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
        let mut report = self.inner.health.report(&providers);
        for p in &mut report.providers {
            if let Some(kind) = ProviderKind::from_name(p.provider) {
                p.timeouts = Some(TimeoutSettings::of(&self.timeouts_in(&snap, kind)));
            }
        }
        report
    }

    /// `GET /metrics` in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut o = self.inner.metrics.render(self.inner.health.open_circuits());
        crate::metrics::render_calls_in_flight(&mut o, self.calls_in_flight());
        if let Some(s) = self.store().commit_stats() {
            crate::metrics::render_commits(&mut o, &s);
        }
        o
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
    /// The provider and, by index, the credential serving the stream (its id, and its secret to
    /// redact from stored error messages): shared, not copied into every open stream.
    pub(crate) inst: Arc<ProviderInstance>,
    pub(crate) cred_index: usize,
    pub(crate) model: String,
    pub(crate) idle: Duration,
    pub(crate) deadline: Instant,
    /// The call's place in its upstream pool, held until the stream is dropped.
    pub(crate) lease: Lease,
}

/// Wraps an upstream stream (after its first event): an idle gap longer than `idle`, or the
/// call's total deadline, ends it with a `Timeout` error item (the meter records it and the egress
/// renders it in the caller's format); failures after the first byte count against health.
pub(crate) fn guard_stream(mut upstream: EventStream, g: StreamGuard) -> EventStream {
    let in_flight = g.hub.inner.metrics.stream_started();
    Box::pin(async_stream::stream! {
        let _in_flight = in_flight;
        // Moved in by name: the body reads only some of `g`'s fields, and the stream captures
        // just those, so an unread field would be dropped here, before the stream runs.
        let _lease = g.lease;
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
            let credential = &g.inst.creds[g.cred_index];
            let effect = health.on_failure(
                &g.provider,
                &g.cred,
                g.inst.kind,
                &g.model,
                &err,
                &secret_values(&credential.secret),
                super::now_ms(),
            );
            if effect == Effect::Disabled {
                g.hub.spawn_recheck(g.inst.kind, credential.id.clone());
            }
            yield Err(err);
            return;
        }
    })
}
