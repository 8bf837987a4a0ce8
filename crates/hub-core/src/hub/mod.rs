//! The engine: steps 2–7 of design.md §3 (authenticate, route, dispatch with fallback, meter,
//! record) for every ingress. Transport-free: hub-server and hub-node call these methods.
//!
//! `snapshot` builds the in-memory configuration (providers, credentials, keys); `dispatch` picks
//! candidates and retries; `meter` turns outcomes into usage records, committed before the caller
//! sees the end of a response.

mod billing;
mod budgets; // per-key spend budgets: live counters, admission, settlement
mod count;
mod dispatch;
mod meter;
mod pools; // upstream connection pools: per provider, per HTTPS origin
mod probe; // testing one credential against its provider
mod resilience;
mod snapshot;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures::Stream;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::FastMap;
use crate::auth::Principal;
use crate::config::{EnvProvider, HubOptions};
use crate::error::HubError;
use crate::health::Health;
use crate::hooks::{Cached, IdentityCache, IdentityResolver};
use crate::ledger::LedgerWriter;
use crate::metrics::Metrics;
use crate::providers::ProviderKind;
use crate::router::Catalog;
use crate::store::{Store, StoreError};
use crate::timeouts::{TimeoutOverrides, Timeouts};
use crate::types::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, ImagesRequest,
    ImagesResponse, ModelInfo, ModelType, StreamEvent, Usage,
};
use crate::usage::UsageWriter;
use crate::vault::{Vault, VaultError};

use billing::Demand;
pub use billing::{
    BillingConfig, BillingDefaults, keys as billing_keys, load_billing_config, parse_report_zones,
    seed_builtin_prices,
};
pub use count::TokenCount;
use dispatch::{Attempted, Op, OpOut};
use meter::{StreamMeter, apply_attempt, apply_usage, estimate_chat_usage, fail, metered_stream};
pub use probe::{CredentialTest, probe_model};
use snapshot::{Snapshot, bootstrap, load_snapshot};
pub use snapshot::{open_credential, open_store_and_vault, seal_credential};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new request id (UUID v7: time-ordered).
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Why the hub could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "cannot decrypt stored credential {id} ({provider}): {source}. Start with the master key it was written with (HUB_MASTER_KEY / HUB_MASTER_KEY_FILE / <data-dir>/master.key)."
    )]
    Undecryptable {
        id: String,
        provider: String,
        #[source]
        source: VaultError,
    },
    #[error("http client: {0}")]
    Http(String),
    #[error("{0}")]
    Config(&'static str),
}

/// With auth switched off for a benchmark, the principal every call runs as: the owner whose key
/// is `HUB_ADMIN_KEY` (required then, so records stay attributable).
fn unauthenticated_principal(
    opts: &HubOptions,
    snapshot: &Snapshot,
) -> Result<Option<Arc<Principal>>, OpenError> {
    if opts.switches.auth {
        return Ok(None);
    }
    opts.admin_key
        .as_ref()
        .and_then(|k| snapshot.keys.lookup(k.expose()))
        .map(Some)
        .ok_or(OpenError::Config(
            "HUB_BENCH_DISABLE=auth needs HUB_ADMIN_KEY (calls are attributed to that owner key)",
        ))
}

/// What the caller sent besides the body: identity and attribution.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub principal: Arc<Principal>,
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub app: Option<String>,
    /// `openai`, `anthropic`, `aigne`, `native`.
    pub ingress: &'static str,
    pub started: Instant,
    pub started_ms: i64,
}

impl CallContext {
    pub fn new(principal: Arc<Principal>, ingress: &'static str) -> CallContext {
        CallContext {
            principal,
            request_id: new_request_id(),
            client_request_id: None,
            app: None,
            ingress,
            started: Instant::now(),
            started_ms: now_ms(),
        }
    }
}

/// One call in flight (`Hub::call_started`), until dropped.
pub(crate) struct CallGuard(Arc<AtomicUsize>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One item of a metered stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    Event(StreamEvent),
    /// The stream ended and its usage record (and settlement) is committed: send the terminator
    /// now. `cost`: credits charged (credits mode) or provider cost (internal mode); `None` when
    /// the model has no price.
    Done {
        usage: Usage,
        cost: Option<rust_decimal::Decimal>,
    },
    /// The stream failed after it started (already recorded): render in the stream's format and end.
    Error(HubError),
}

pub type HubStream = Pin<Box<dyn Stream<Item = StreamItem> + Send>>;

struct Inner {
    store: Arc<dyn Store>,
    /// Re-read from the key files on every reload (master-key rotation, keyring.rs).
    vault: ArcSwap<Vault>,
    /// Where the master key comes from (data dir + key source), for those re-reads.
    key_opts: HubOptions,
    snapshot: ArcSwap<Snapshot>,
    writer: UsageWriter,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    reloader: Mutex<Option<JoinHandle<()>>>,
    env_providers: Vec<EnvProvider>,
    /// One upstream connection pool per provider.
    clients: resilience::Clients,
    catalog: Catalog,
    public_url: Option<String>,
    version: AtomicI64,
    /// Per-key rate-limit windows (policy.rs); outlive snapshots.
    limiter: crate::policy::Limiter,
    /// Live spend budgets of the keys that have one (budget.rs); carried across reloads.
    budgets: ArcSwap<budgets::Budgets>,
    /// Serialises reloads, so an older snapshot never replaces a newer one.
    reload_lock: tokio::sync::Mutex<()>,
    identity: Option<Arc<dyn IdentityResolver>>,
    identity_cache: IdentityCache,
    timeouts: Timeouts,
    provider_timeouts: FastMap<ProviderKind, TimeoutOverrides>,
    health: Health,
    metrics: Arc<Metrics>,
    billing: ArcSwap<billing::BillingConfig>,
    billing_defaults: billing::BillingDefaults,
    ledger: LedgerWriter,
    ledger_task: Mutex<Option<JoinHandle<()>>>,
    upkeep: Mutex<Option<JoinHandle<()>>>,
    /// Streams holding a reservation, by request id: the heartbeat persists what each has
    /// delivered (billing.rs).
    in_flight: Mutex<FastMap<String, Arc<billing::InFlight>>>,
    /// Calls in flight: `chat`, `embeddings` and `images` while they run, a stream until its
    /// meter is dropped (`CallGuard`). The store reads it (`Store::set_calls_in_flight`).
    calls: Arc<AtomicUsize>,
    /// This process's id in the ledger (its reservations are released if it stops beating).
    instance: String,
    /// `Some` only when auth is switched off for a benchmark (`HUB_BENCH_DISABLE=auth`): every
    /// call runs as this principal (the `HUB_ADMIN_KEY` owner).
    unauthenticated_as: Option<Arc<Principal>>,
    /// Benchmarking switches (`HUB_BENCH_DISABLE`); all on by default.
    switches: crate::switches::BenchSwitches,
}

/// The hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

/// Result of opening: the hub, and the owner key when one was generated now (print it once).
pub struct Opened {
    pub hub: Hub,
    pub new_owner_key: Option<String>,
}

impl Hub {
    /// Opens the hub on a data dir: store, vault (refusing undecryptable credentials), bootstrap,
    /// snapshot, usage writer.
    pub async fn open(opts: HubOptions) -> Result<Opened, OpenError> {
        let (store, vault) = open_store_and_vault(&opts)?;
        let new_owner_key = bootstrap(store.as_ref(), opts.admin_key.as_ref()).await?;
        let version = store.config_version().await?;
        let snapshot = load_snapshot(
            store.as_ref(),
            &vault,
            &opts.env_providers,
            &opts.public_url,
        )
        .await?;
        let clients = resilience::Clients::new(
            &opts.timeouts,
            |k| {
                opts.timeouts
                    .with(opts.provider_timeouts.get(&k))
                    .with(snapshot.stored_timeouts.get(&k))
                    .connect
            },
            opts.extra_ca_pem.as_deref(),
        )?;
        let unauthenticated_as = unauthenticated_principal(&opts, &snapshot)?;
        let key_budgets = budgets::load_budgets(
            store.as_ref(),
            &budgets::Budgets::default(),
            &snapshot.gates,
            now_ms(),
        )
        .await?;
        for part in opts.switches.disabled() {
            tracing::warn!(
                part,
                "HUB_BENCH_DISABLE: switched OFF for benchmarking; never run a real hub like this"
            );
        }
        let mut key_opts = HubOptions::new(opts.data_dir.clone());
        key_opts.master_key = opts.master_key.clone();
        let metrics = Arc::new(Metrics::default());
        let (writer, writer_task) = if opts.switches.usage_log {
            let (w, t) = UsageWriter::start_metered(
                store.clone(),
                opts.hooks.usage.clone(),
                Some(metrics.clone()),
            );
            (w, Some(t))
        } else {
            (UsageWriter::off(), None)
        };
        let pricing = load_billing_config(store.as_ref(), &opts.billing)
            .await?
            .pricing;
        seed_builtin_prices(store.as_ref(), &pricing).await?;
        let billing_cfg = load_billing_config(store.as_ref(), &opts.billing).await?;
        let (ledger, ledger_task) = LedgerWriter::start(store.clone());
        let calls = Arc::new(AtomicUsize::new(0));
        store.set_calls_in_flight(calls.clone());
        let inner = Arc::new(Inner {
            store,
            vault: ArcSwap::from_pointee(vault),
            key_opts,
            snapshot: ArcSwap::from_pointee(snapshot),
            writer,
            writer_task: Mutex::new(writer_task),
            reloader: Mutex::new(None),
            env_providers: opts.env_providers,
            clients,
            catalog: Catalog::builtin(),
            public_url: opts.public_url,
            version: AtomicI64::new(version),
            limiter: crate::policy::Limiter::default(),
            budgets: ArcSwap::from_pointee(key_budgets),
            reload_lock: tokio::sync::Mutex::new(()),
            identity: opts.hooks.identity.clone(),
            identity_cache: IdentityCache::new(
                opts.hooks.identity_ttl,
                opts.hooks.identity_negative_ttl,
            ),
            timeouts: opts.timeouts,
            provider_timeouts: opts.provider_timeouts.into_iter().collect(),
            health: Health::new(opts.health),
            metrics,
            billing: ArcSwap::from_pointee(billing_cfg),
            billing_defaults: opts.billing,
            ledger,
            ledger_task: Mutex::new(Some(ledger_task)),
            upkeep: Mutex::new(None),
            in_flight: Mutex::new(FastMap::default()),
            calls,
            instance: format!("inst_{}", uuid::Uuid::new_v4().simple()),
            unauthenticated_as,
            switches: opts.switches,
        });
        let hub = Hub { inner };
        let zones = hub.billing().report_zones.clone();
        hub.apply_report_zones(&zones).await?;
        // Reservations a stopped instance left open are released before we serve.
        hub.ledger_upkeep(true).await?;
        hub.spawn_ledger_upkeep();
        hub.spawn_reloader(opts.reload_interval);
        Ok(Opened { hub, new_owner_key })
    }

    /// Polls the store's config version and reloads when another process changed configuration.
    fn spawn_reloader(&self, every: Duration) {
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let hub = Hub { inner };
                if let Err(e) = hub.reload_if_changed().await {
                    tracing::error!(error = %e, "configuration reload failed; keeping the previous configuration");
                }
            }
        });
        *self.inner.reloader.lock() = Some(task);
    }

    /// Reloads configuration if the store's version moved. Returns whether it reloaded.
    pub async fn reload_if_changed(&self) -> Result<bool, OpenError> {
        let _serial = self.inner.reload_lock.lock().await;
        let v = self.inner.store.config_version().await?;
        if v == self.inner.version.load(Ordering::Acquire) {
            return Ok(false);
        }
        match crate::keyring::load_vault(&self.inner.key_opts) {
            Ok(v) => self.inner.vault.store(Arc::new(v)),
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the master key files failed; keeping the keys in memory")
            }
        }
        let snap = load_snapshot(
            self.inner.store.as_ref(),
            &self.inner.vault.load(),
            &self.inner.env_providers,
            &self.inner.public_url,
        )
        .await?;
        self.inner
            .limiter
            .retain(|key_id| snap.gates.contains_key(key_id));
        // Before the snapshot: a key never serves a call without the budget it was given.
        let key_budgets = budgets::load_budgets(
            self.inner.store.as_ref(),
            &self.inner.budgets.load(),
            &snap.gates,
            now_ms(),
        )
        .await?;
        self.inner.budgets.store(Arc::new(key_budgets));
        self.inner.snapshot.store(Arc::new(snap));
        if let Err(e) = self.refresh_clients() {
            tracing::error!(error = %e, "rebuilding upstream clients failed; keeping the previous ones");
        }
        self.reload_billing().await?;
        self.inner.version.store(v, Ordering::Release);
        tracing::info!(version = v, "configuration reloaded");
        Ok(true)
    }

    /// Stops background tasks and flushes queued usage records.
    pub async fn close(&self) {
        if let Some(t) = self.inner.reloader.lock().take() {
            t.abort();
        }
        if let Some(t) = self.inner.upkeep.lock().take() {
            t.abort();
        }
        // Everything queued so far (including records of cancelled streams) is committed.
        let flushed = tokio::time::timeout(Duration::from_secs(10), self.inner.writer.flush())
            .await
            .unwrap_or_else(|_| Err("timed out".to_string()));
        if let Err(e) = flushed {
            tracing::error!(error = %e, "usage flush at close failed");
        }
        let _ = self.inner.writer_task.lock().take();
        let _ = self.inner.ledger_task.lock().take();
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The vault as of the last reload.
    pub fn vault(&self) -> Arc<Vault> {
        self.inner.vault.load_full()
    }

    /// Is the store reachable?
    pub async fn ready(&self) -> bool {
        self.inner.store.ping().await.is_ok()
    }

    /// Resolves a bearer token to a principal, from memory: the hub's own keys, then identities
    /// the host's resolver answered recently. Never calls the resolver (see `identify`).
    pub fn authenticate(&self, token: &str) -> Result<Arc<Principal>, HubError> {
        if let Some(p) = &self.inner.unauthenticated_as {
            return Ok(p.clone());
        }
        if token.is_empty() {
            return Err(HubError::unauthenticated(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            ));
        }
        if let Some(own) = self.own_key(token) {
            return own;
        }
        match self.inner.identity_cache.get(token) {
            Cached::Known(p) => Ok(p),
            Cached::Invalid | Cached::Miss => Err(Self::incorrect_key()),
        }
    }

    /// One of the hub's own keys: its principal, or why it is refused (expired). `None`: not a
    /// key of this hub.
    fn own_key(&self, token: &str) -> Option<Result<Arc<Principal>, HubError>> {
        let snap = self.inner.snapshot.load();
        let principal = snap.keys.lookup(token)?;
        if let Some(exp) = snap
            .gates
            .get(&principal.key_id)
            .and_then(|g| g.expires_at_ms)
            && exp <= now_ms()
        {
            return Some(Err(HubError::unauthenticated("This API key has expired.")));
        }
        Some(Ok(principal))
    }

    /// Applies the caller's key policy (surface, model, RPM, TPM) before dispatch. `estimate` (the
    /// call's token estimate) is computed only when the key has a token limit.
    fn admit(
        &self,
        ctx: &CallContext,
        model: &str,
        estimate: impl FnOnce() -> u64,
    ) -> Result<crate::policy::Permit, HubError> {
        if !self.inner.switches.limits {
            return Ok(crate::policy::Permit::none());
        }
        let snap = self.inner.snapshot.load();
        let Some(gate) = snap.gates.get(&ctx.principal.key_id) else {
            return Ok(crate::policy::Permit::none());
        };
        let pol = &gate.policy;
        crate::policy::check_access(pol, ctx.ingress, model, &self.inner.catalog, |k| {
            snap.providers.contains_key(&k)
        })?;
        let estimate = if pol.tpm.is_some() { estimate() } else { 0 };
        self.inner
            .limiter
            .admit(&ctx.principal.key_id, pol, estimate)
    }

    /// `admit`, recording a refused call as failed (the caller is known).
    async fn admit_or_record(
        &self,
        ctx: &CallContext,
        endpoint: &str,
        model: &str,
        stream: bool,
        estimate: impl FnOnce() -> u64,
    ) -> Result<crate::policy::Permit, HubError> {
        match self.admit(ctx, model, estimate) {
            Ok(p) => Ok(p),
            Err(e) => {
                self.record_rejected(ctx, endpoint, model, stream, &e).await;
                Err(e)
            }
        }
    }

    fn incorrect_key() -> HubError {
        HubError::unauthenticated("Incorrect API key provided.")
    }

    /// `authenticate`, and on a miss the host's identity resolver (when one is installed); its
    /// answer, valid or not, is cached for the configured TTL. A token that is cached or one of
    /// the hub's own keys never reaches the resolver.
    pub async fn identify(&self, token: &str) -> Result<Arc<Principal>, HubError> {
        if token.is_empty() {
            return self.authenticate(token);
        }
        if let Some(own) = self.own_key(token) {
            return own;
        }
        match self.inner.identity_cache.get(token) {
            Cached::Known(p) => return Ok(p),
            Cached::Invalid => return Err(Self::incorrect_key()),
            Cached::Miss => {}
        }
        let Some(resolver) = &self.inner.identity else {
            return Err(Self::incorrect_key());
        };
        match resolver.resolve(token).await? {
            Some(p) => {
                let p = Arc::new(p);
                self.inner.identity_cache.put(token, Some(p.clone()));
                Ok(p)
            }
            None => {
                self.inner.identity_cache.put(token, None);
                Err(Self::incorrect_key())
            }
        }
    }

    /// Forgets every identity the resolver answered (e.g. after the host revoked a token).
    pub fn clear_identity_cache(&self) {
        self.inner.identity_cache.clear();
    }

    /// Providers currently configured and usable.
    pub fn configured_providers(&self) -> Vec<ProviderKind> {
        let mut v: Vec<ProviderKind> = self
            .inner
            .snapshot
            .load()
            .providers
            .keys()
            .copied()
            .collect();
        v.sort();
        v
    }

    /// Models callers can use, as `provider/model`.
    pub fn models(&self, model_type: Option<ModelType>) -> Vec<ModelInfo> {
        self.inner
            .catalog
            .list(&self.configured_providers(), model_type)
    }

    /// Counts a call in flight until the guard is dropped.
    fn call_started(&self) -> CallGuard {
        self.inner.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.inner.calls.clone())
    }

    /// Calls in flight now (`call_started`): `/metrics`' `aigne_hub_calls_in_flight`.
    pub fn calls_in_flight(&self) -> usize {
        self.inner.calls.load(Ordering::Acquire)
    }

    /// Non-streaming chat, metered and recorded before it returns.
    pub async fn chat(
        &self,
        ctx: &CallContext,
        req: ChatRequest,
    ) -> Result<ChatResponse, HubError> {
        let _call = self.call_started();
        let permit = self
            .admit_or_record(ctx, "chat", &req.model, false, || chat_estimate(&req))
            .await?;
        let demand = Demand::Chat {
            prompt_tokens: crate::tokenize::prompt_upper_bound(&req),
            max_output: req.max_tokens,
        };
        let mut hold = match self.reserve(ctx, &req.model, "chat", false, demand).await {
            Ok(h) => h,
            Err(e) => return Err(self.rejected(ctx, "chat", &req.model, false, e).await),
        };
        let mut att = Attempted::default();
        let result = self.dispatch(&req.model, Op::Chat(&req), &mut att).await;
        let mut rec = self.record_after_dispatch(&mut hold, ctx, "chat", &req.model, false);
        apply_attempt(&mut rec, &att);
        match result {
            Ok(OpOut::Chat(mut resp)) => {
                if resp.usage.estimated {
                    resp.usage = estimate_chat_usage(&req, &resp);
                }
                apply_usage(&mut rec, &resp.usage);
                rec.provider_cost = resp.provider_cost.clone();
                permit.settle(resp.usage.prompt_tokens + resp.usage.completion_tokens);
                resp.cost = self.charge(&mut rec, &mut hold, &resp.usage);
                self.commit(rec).await?;
                Ok(resp)
            }
            Ok(_) => Err(HubError::internal(
                "provider returned the wrong kind of result",
            )),
            Err(e) => {
                fail(&mut rec, &e);
                self.charge(&mut rec, &mut hold, &Usage::default());
                self.commit(rec).await?;
                Err(e)
            }
        }
    }

    /// Streaming chat. Returns after the first upstream event (so fallback covers time to first
    /// token); the stream's final item comes only after its usage record is committed.
    pub async fn chat_stream(
        &self,
        ctx: &CallContext,
        req: ChatRequest,
    ) -> Result<HubStream, HubError> {
        let call = self.call_started();
        let permit = self
            .admit_or_record(ctx, "chat", &req.model, true, || chat_estimate(&req))
            .await?;
        let demand = Demand::Chat {
            prompt_tokens: crate::tokenize::prompt_upper_bound(&req),
            max_output: req.max_tokens,
        };
        let mut hold = match self.reserve(ctx, &req.model, "chat", true, demand).await {
            Ok(h) => h,
            Err(e) => return Err(self.rejected(ctx, "chat", &req.model, true, e).await),
        };
        let mut att = Attempted::default();
        let result = self.dispatch(&req.model, Op::Stream(&req), &mut att).await;
        let mut rec = self.record_after_dispatch(&mut hold, ctx, "chat", &req.model, true);
        apply_attempt(&mut rec, &att);
        let (upstream, first) = match result {
            Ok(OpOut::Stream(s, first)) => (s, first),
            Ok(_) => {
                return Err(HubError::internal(
                    "provider returned the wrong kind of result",
                ));
            }
            Err(e) => {
                fail(&mut rec, &e);
                self.charge(&mut rec, &mut hold, &Usage::default());
                // Boxed, as `record_rejected`: inline it would size every stream's handler state.
                Box::pin(self.commit(rec)).await?;
                return Err(e);
            }
        };
        let provider = att
            .provider
            .map(|p| p.name().to_string())
            .unwrap_or_default();
        let req = Arc::new(req);
        let delivered = Arc::default();
        let rec = Arc::new(rec);
        self.track_stream(&rec, &req, &hold, &delivered);
        let meter = StreamMeter {
            hub: self.clone(),
            started: ctx.started,
            req,
            record: Some(rec),
            delivered,
            permit: Some(permit),
            hold,
            _call: call,
        };
        Ok(Box::pin(metered_stream(meter, upstream, first, provider)))
    }

    pub async fn embeddings(
        &self,
        ctx: &CallContext,
        req: EmbeddingsRequest,
    ) -> Result<EmbeddingsResponse, HubError> {
        let _call = self.call_started();
        let permit = self
            .admit_or_record(ctx, "embeddings", &req.model, false, || {
                req.texts().iter().map(|t| crate::tokenize::count(t)).sum()
            })
            .await?;
        let demand = Demand::Embeddings {
            tokens: billing::embeddings_upper_bound(&req),
        };
        let mut hold = match self
            .reserve(ctx, &req.model, "embeddings", false, demand)
            .await
        {
            Ok(h) => h,
            Err(e) => return Err(self.rejected(ctx, "embeddings", &req.model, false, e).await),
        };
        let mut att = Attempted::default();
        let result = self
            .dispatch(&req.model, Op::Embeddings(&req), &mut att)
            .await;
        let mut rec = self.record_after_dispatch(&mut hold, ctx, "embeddings", &req.model, false);
        apply_attempt(&mut rec, &att);
        match result {
            Ok(OpOut::Embeddings(mut resp)) => {
                if resp.usage.estimated {
                    resp.usage.prompt_tokens =
                        req.texts().iter().map(|t| crate::tokenize::count(t)).sum();
                }
                apply_usage(&mut rec, &resp.usage);
                permit.settle(resp.usage.prompt_tokens + resp.usage.completion_tokens);
                resp.cost = self.charge(&mut rec, &mut hold, &resp.usage);
                self.commit(rec).await?;
                Ok(resp)
            }
            Ok(_) => Err(HubError::internal(
                "provider returned the wrong kind of result",
            )),
            Err(e) => {
                fail(&mut rec, &e);
                self.charge(&mut rec, &mut hold, &Usage::default());
                self.commit(rec).await?;
                Err(e)
            }
        }
    }

    pub async fn images(
        &self,
        ctx: &CallContext,
        req: ImagesRequest,
    ) -> Result<ImagesResponse, HubError> {
        let _call = self.call_started();
        let permit = self
            .admit_or_record(ctx, "images", &req.model, false, || 0)
            .await?;
        let demand = Demand::Images {
            prompt_tokens: (req.prompt.len() as u64).div_ceil(2),
            n: req.n.unwrap_or(1),
            quality: req.quality.as_deref(),
            size: req.size.as_deref(),
        };
        let mut hold = match self.reserve(ctx, &req.model, "images", false, demand).await {
            Ok(h) => h,
            Err(e) => return Err(self.rejected(ctx, "images", &req.model, false, e).await),
        };
        let mut att = Attempted::default();
        let result = self.dispatch(&req.model, Op::Images(&req), &mut att).await;
        let mut rec = self.record_after_dispatch(&mut hold, ctx, "images", &req.model, false);
        apply_attempt(&mut rec, &att);
        match result {
            Ok(OpOut::Images(mut resp)) => {
                apply_usage(&mut rec, &resp.usage);
                permit.settle(resp.usage.prompt_tokens + resp.usage.completion_tokens);
                resp.cost = self.charge(&mut rec, &mut hold, &resp.usage);
                self.commit(rec).await?;
                Ok(resp)
            }
            Ok(_) => Err(HubError::internal(
                "provider returned the wrong kind of result",
            )),
            Err(e) => {
                fail(&mut rec, &e);
                self.charge(&mut rec, &mut hold, &Usage::default());
                self.commit(rec).await?;
                Err(e)
            }
        }
    }
}

/// Tokens a chat call may use: the prompt estimate plus the output cap, if the caller set one.
fn chat_estimate(req: &ChatRequest) -> u64 {
    crate::tokenize::estimate_prompt(req) + u64::from(req.max_tokens.unwrap_or(0))
}
