//! The hub's side of resilience: one pooled HTTP client per provider, per-provider timeouts, the
//! background re-check of credentials a provider rejected, the stream guard (idle timeout, total
//! deadline, in-flight gauge, health after the first byte), and the health/metrics views.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use arc_swap::ArcSwap;

use super::snapshot::Snapshot;
use super::{Hub, OpenError};
use crate::error::{ErrorClass, ProviderError};
use crate::health::{CredHealth, Effect, HealthReport, ProviderHealth};
use crate::providers::{CredentialSecret, EventStream, ProviderKind, Upstream};
use crate::store::UsageRecord;
use crate::timeouts::{TimeoutSettings, Timeouts};

/// The upstream clients: connection pools per provider, each with the provider's connect
/// timeout. HTTP/2 is negotiated by ALPN over TLS where the upstream speaks it (HTTP/1.1
/// otherwise); TLS by rustls with the built-in web roots plus `HUB_EXTRA_CA_FILE`. Proxies come
/// from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`), as reqwest reads
/// them. A provider's pools are rebuilt only when its connect timeout changes (stored timeouts).
///
/// An HTTP/2 upstream caps the streams open at once on one connection
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`, 100 to 256 at the big providers), and a pooled client keeps
/// every call to a host on its one HTTP/2 connection: calls past the cap wait, without an error,
/// until an earlier stream ends, which for long streams means minutes before a first byte. So an
/// HTTPS provider gets a pool per [`STREAMS_PER_POOL`] calls in flight (a `Lease` counts a call
/// until its response or stream is dropped), each with its own connection. Plain-HTTP upstreams
/// never speak HTTP/2 here (no prior knowledge), and HTTP/1.1 opens a connection per call in
/// flight anyway: they keep one pool.
pub(crate) struct Clients {
    extra_roots: Vec<reqwest::Certificate>,
    pools: ArcSwap<HashMap<ProviderKind, Arc<Pools>>>,
    /// For a kind without pools of its own (every kind has them; this keeps `lease` total).
    fallback: Arc<Pools>,
}

/// Calls in flight per pool of an HTTPS provider: the least `SETTINGS_MAX_CONCURRENT_STREAMS`
/// RFC 9113 (§6.5.2) asks servers to allow.
pub(crate) const STREAMS_PER_POOL: usize = 100;

/// One provider's pools, all with the same connect timeout. The first serves plain-HTTP base
/// URLs; HTTPS calls take the first pool with room, and a new one when all are full.
pub(crate) struct Pools {
    connect: Duration,
    shards: parking_lot::RwLock<Vec<Arc<Shard>>>,
}

struct Shard {
    client: reqwest::Client,
    in_flight: std::sync::atomic::AtomicUsize,
}

/// A provider's client for one call. Over HTTPS it holds a place in its pool until dropped: keep
/// it as long as the upstream response (or stream) is read.
pub(crate) struct Lease {
    shard: Arc<Shard>,
    counted: bool,
}

impl std::ops::Deref for Lease {
    type Target = reqwest::Client;
    fn deref(&self) -> &reqwest::Client {
        &self.shard.client
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.counted {
            self.shard
                .in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Shard {
    /// Takes a place if the pool has one.
    fn try_take(self: &Arc<Shard>) -> Option<Lease> {
        use std::sync::atomic::Ordering::Relaxed;
        self.in_flight
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < STREAMS_PER_POOL).then_some(n + 1)
            })
            .ok()
            .map(|_| Lease {
                shard: self.clone(),
                counted: true,
            })
    }
}

impl Pools {
    fn new(connect: Duration, extra_roots: &[reqwest::Certificate]) -> Result<Pools, OpenError> {
        let first = Arc::new(Shard {
            client: build_client(connect, extra_roots)?,
            in_flight: std::sync::atomic::AtomicUsize::new(0),
        });
        Ok(Pools {
            connect,
            shards: parking_lot::RwLock::new(vec![first]),
        })
    }

    /// The client for a call to `base_url` (see [`Clients`]).
    pub(crate) fn lease(&self, base_url: &str, extra_roots: &[reqwest::Certificate]) -> Lease {
        let shards = self.shards.read();
        if !is_https(base_url) {
            return Lease {
                shard: shards[0].clone(),
                counted: false,
            };
        }
        if let Some(l) = shards.iter().find_map(Shard::try_take) {
            return l;
        }
        drop(shards);
        let mut shards = self.shards.write();
        // Another call may have added a pool meanwhile.
        if let Some(l) = shards.iter().find_map(Shard::try_take) {
            return l;
        }
        match build_client(self.connect, extra_roots) {
            Ok(client) => {
                let shard = Arc::new(Shard {
                    client,
                    in_flight: std::sync::atomic::AtomicUsize::new(1),
                });
                shards.push(shard.clone());
                tracing::debug!(pools = shards.len(), "another upstream connection pool");
                Lease {
                    shard,
                    counted: true,
                }
            }
            // Built the same way as the first pool, so this does not happen; if it did, the call
            // shares a full pool (and may wait for a stream) rather than fail.
            Err(e) => {
                tracing::error!(error = %e, "cannot build another upstream client");
                let shard = shards[0].clone();
                shard
                    .in_flight
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Lease {
                    shard,
                    counted: true,
                }
            }
        }
    }

    /// Pools in use, and calls in flight on each (for tests and diagnostics).
    #[cfg(test)]
    fn in_flight(&self) -> Vec<usize> {
        self.shards
            .read()
            .iter()
            .map(|s| s.in_flight.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }
}

fn is_https(base_url: &str) -> bool {
    base_url
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
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
                let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
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
        let mut pools = HashMap::new();
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
    pub(crate) fn lease(&self, kind: ProviderKind, base_url: &str) -> Lease {
        match self.pools.load().get(&kind) {
            Some(p) => p.lease(base_url, &self.extra_roots),
            None => self.fallback.lease(base_url, &self.extra_roots),
        }
    }

    /// Rebuilds the pools whose connect timeout changed.
    pub(crate) fn refresh(
        &self,
        connect: impl Fn(ProviderKind) -> Duration,
    ) -> Result<(), OpenError> {
        let current = self.pools.load();
        if ProviderKind::ALL
            .iter()
            .all(|k| current.get(k).is_some_and(|p| p.connect == connect(*k)))
        {
            return Ok(());
        }
        let mut next = HashMap::new();
        for kind in ProviderKind::ALL {
            let c = connect(kind);
            let pools = match current.get(&kind) {
                Some(p) if p.connect == c => p.clone(),
                _ => Arc::new(Pools::new(c, &self.extra_roots)?),
            };
            next.insert(kind, pools);
        }
        self.pools.store(Arc::new(next));
        Ok(())
    }
}

fn build_client(
    connect: Duration,
    extra_roots: &[reqwest::Certificate],
) -> Result<reqwest::Client, OpenError> {
    let mut b = reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(connect)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .http2_adaptive_window(true);
    for c in extra_roots {
        b = b.add_root_certificate(c.clone());
    }
    b.build().map_err(|e| OpenError::Http(e.to_string()))
}

impl Hub {
    /// The client for one call to `kind` at `base_url` (see [`Clients`]): hold it while the
    /// response is read.
    pub(crate) fn client(&self, kind: ProviderKind, base_url: &str) -> Lease {
        self.inner.clients.lease(kind, base_url)
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
        let http = self.client(kind, &inst.base_url);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Result<Pools, String> {
        Pools::new(Duration::from_secs(1), &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn https_calls_past_a_pools_share_open_another_pool_and_return_their_place()
    -> Result<(), String> {
        let p = pools()?;
        let url = "https://api.example.com/v1";
        let first: Vec<Lease> = (0..STREAMS_PER_POOL).map(|_| p.lease(url, &[])).collect();
        assert_eq!(p.in_flight(), vec![STREAMS_PER_POOL]);
        let extra = p.lease(url, &[]);
        assert_eq!(p.in_flight(), vec![STREAMS_PER_POOL, 1]);
        // Two leases of different pools are different clients (each its own connections).
        assert!(!Arc::ptr_eq(&first[0].shard, &extra.shard));
        drop(first);
        assert_eq!(p.in_flight(), vec![0, 1]);
        // A freed place is taken before a later pool's.
        let again = p.lease("HTTPS://api.example.com/v1", &[]);
        assert_eq!(p.in_flight(), vec![1, 1]);
        drop((extra, again));
        assert_eq!(p.in_flight(), vec![0, 0]);
        Ok(())
    }

    #[test]
    fn plain_http_calls_share_one_pool_uncounted() -> Result<(), String> {
        let p = pools()?;
        let leases: Vec<Lease> = (0..STREAMS_PER_POOL * 2)
            .map(|_| p.lease("http://127.0.0.1:11434", &[]))
            .collect();
        assert_eq!(p.in_flight(), vec![0]);
        drop(leases);
        assert_eq!(p.in_flight(), vec![0]);
        Ok(())
    }

    #[test]
    fn concurrent_leases_never_overfill_a_pool() -> Result<(), String> {
        let p = Arc::new(pools()?);
        let held = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let p = p.clone();
                    s.spawn(move || {
                        (0..60)
                            .map(|_| p.lease("https://x.example", &[]))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect::<Vec<_>>()
        });
        let counts = p.in_flight();
        assert_eq!(counts.iter().sum::<usize>(), 480);
        assert!(counts.iter().all(|&n| n <= STREAMS_PER_POOL), "{counts:?}");
        assert_eq!(counts.len(), 5, "{counts:?}");
        drop(held);
        assert!(p.in_flight().iter().all(|&n| n == 0));
        Ok(())
    }
}
