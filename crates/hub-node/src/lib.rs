//! AIGNE Hub as a native Node module: the same `Hub` the server runs, called in-process.
//!
//! Requests and responses cross the boundary as JSON text of hub-core's canonical types (one
//! `JSON.parse` on the JS side beats building objects field by field through Node-API); the
//! TypeScript wrapper in `js/native` turns them into objects and errors into `HubError`s.
//! Every fallible call returns a rejected promise or a thrown JS error, never a panic: async
//! functions run under napi's panic containment, sync ones are `catch_unwind`.

mod admin; // the admin operations of the CLI: providers, credentials, usage
mod errors; // HubError -> JS error with a stable code and the HTTP status
mod hooks; // resolveIdentity / onUsage: JS functions behind hub-core's hook traits
mod server; // hub.serve(): hub-server inside the Node process
mod stream; // pull-based stream handle: next() / cancel()

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hub_core::auth::{Principal, Role};
use hub_core::config::{HubOptions, MasterKeySource, providers_from_env};
use hub_core::hooks::Hooks;
use hub_core::iam::Actor;
use hub_core::providers::Secret;
use hub_core::types::{ChatRequest, EmbeddingsRequest, ImagesRequest, ModelType};
use hub_core::{CallContext, Hub, HubError};
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::errors::{closed, hub_err, invalid};
use crate::hooks::{JsIdentity, JsUsage, ResolveIdentityFn, UsageFn};

/// Options of `Hub.open`.
#[napi(object)]
pub struct OpenOptions {
    /// Data directory (SQLite database, master key file unless `masterKey*` says otherwise).
    pub data_dir: String,
    /// The master key itself (64 hex characters or base64 of 32 bytes).
    pub master_key: Option<String>,
    /// A file holding the master key (created 0600 if absent).
    pub master_key_file: Option<String>,
    /// This value becomes a valid owner API key.
    pub admin_key: Option<String>,
    /// Provider variables, read the way the server reads its environment
    /// (`OPENAI_API_KEY`, `OPENAI_BASE_URL`, `OPEN_ROUTER_API_KEY`, ...).
    pub env: Option<HashMap<String, String>>,
    /// Public URL of this hub (attribution headers).
    pub public_url: Option<String>,
    /// How long an identity from `resolveIdentity` is trusted (default 60 000 ms).
    pub identity_ttl_ms: Option<u32>,
    /// How long a token `resolveIdentity` rejected is remembered as invalid (default 5 000 ms).
    pub identity_negative_ttl_ms: Option<u32>,
    /// Upstream connect timeout (default 10 000 ms).
    pub connect_timeout_ms: Option<u32>,
    /// Upstream timeout of one attempt: a stream's first event or a whole non-streaming answer
    /// (default 300 000 ms; `HUB_TIMEOUT_TTFB_MS` in `env`).
    pub request_timeout_ms: Option<u32>,
    /// How often configuration written by other processes is picked up (default 500 ms).
    pub reload_interval_ms: Option<u32>,
}

/// A principal the host already authenticated (trusted: in-process code).
#[napi(object)]
pub struct PrincipalInput {
    pub user_id: String,
    /// `owner`, `admin`, `member` (default), `guest`.
    pub role: Option<String>,
    pub team_id: Option<String>,
    /// Recorded as the usage record's principal (default `external:<userId>`).
    pub key_id: Option<String>,
}

/// Who is calling, and attribution.
#[napi(object)]
pub struct CallAuth {
    /// An API key (the hub's own, or one `resolveIdentity` knows).
    pub api_key: Option<String>,
    pub principal: Option<PrincipalInput>,
    /// The calling app (recorded with usage).
    pub app: Option<String>,
    /// The caller's own request id (recorded with usage).
    pub request_id: Option<String>,
}

pub(crate) fn principal_from_input(p: PrincipalInput) -> std::result::Result<Principal, HubError> {
    if p.user_id.is_empty() {
        return Err(HubError::invalid_param(
            "principal.userId",
            "principal.userId must not be empty",
        ));
    }
    let role = match p.role.as_deref() {
        None => Role::Member,
        Some(r) => Role::parse(r).ok_or_else(|| {
            HubError::invalid_param(
                "principal.role",
                format!("unknown role `{r}`; one of owner, admin, member, guest"),
            )
        })?,
    };
    Ok(Principal {
        key_id: p
            .key_id
            .unwrap_or_else(|| format!("external:{}", p.user_id)),
        user_id: p.user_id,
        role,
        team_id: p.team_id,
    })
}

/// The caller's context: a principal given directly, or one resolved from the API key.
pub(crate) async fn call_context(
    hub: &Hub,
    auth: CallAuth,
) -> std::result::Result<CallContext, HubError> {
    let principal = match (auth.principal, auth.api_key) {
        (Some(p), None) => Arc::new(principal_from_input(p)?),
        (None, Some(key)) => hub.identify(&key).await?,
        (None, None) => hub.identify("").await?,
        (Some(_), Some(_)) => {
            return Err(HubError::invalid(
                "give either apiKey or principal, not both",
            ));
        }
    };
    let mut ctx = CallContext::new(principal, "native");
    ctx.app = auth.app;
    ctx.client_request_id = auth.request_id;
    Ok(ctx)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json)
        .map_err(|e| invalid(HubError::invalid(format!("invalid {what} request: {e}"))))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| hub_err(&HubError::internal(e.to_string())))
}

fn ms(v: Option<u32>, default: Duration) -> Duration {
    v.map(|v| Duration::from_millis(u64::from(v)))
        .unwrap_or(default)
}

/// The hub, open on a data dir.
#[napi]
pub struct NativeHub {
    hub: Hub,
    closed: Arc<AtomicBool>,
    /// The owner API key generated when this data dir was first opened (shown once).
    new_owner_key: Option<String>,
}

impl NativeHub {
    fn live(&self) -> Result<&Hub> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        Ok(&self.hub)
    }
}

#[napi]
impl NativeHub {
    /// Opens the hub. `resolveIdentity(token)` is asked about API keys the hub does not know
    /// (resolving to a JSON principal or null); `onUsage(batchJson)` is told of every committed
    /// batch of usage records.
    #[napi(
        factory,
        ts_args_type = "options: OpenOptions, resolveIdentity?: ((token: string) => Promise<string | null>) | undefined | null, onUsage?: ((batchJson: string) => void) | undefined | null"
    )]
    pub async fn open(
        options: OpenOptions,
        resolve_identity: Option<ResolveIdentityFn>,
        on_usage: Option<UsageFn>,
    ) -> Result<NativeHub> {
        let mut opts = HubOptions::new(PathBuf::from(&options.data_dir));
        if options.data_dir.is_empty() {
            return Err(invalid(HubError::invalid_param(
                "dataDir",
                "dataDir is required",
            )));
        }
        opts.master_key = match (options.master_key, options.master_key_file) {
            (Some(v), None) => Some(MasterKeySource::Value(Secret::new(v))),
            (None, Some(f)) => Some(MasterKeySource::File(PathBuf::from(f))),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(invalid(HubError::invalid(
                    "give either masterKey or masterKeyFile, not both",
                )));
            }
        };
        opts.admin_key = options.admin_key.filter(|k| !k.is_empty()).map(Secret::new);
        let env = options.env.unwrap_or_default();
        opts.env_providers = providers_from_env(|k| env.get(k).cloned());
        opts.public_url = options.public_url;
        // Timeouts and health tunables as the server reads them (`HUB_TIMEOUT_*_MS`, ...).
        let (timeouts, per_provider) =
            hub_core::timeouts::timeouts_from_env(|k| env.get(k).cloned())
                .map_err(|e| invalid(HubError::invalid(e)))?;
        opts.timeouts = timeouts;
        opts.provider_timeouts = per_provider;
        opts.health = hub_core::timeouts::health_from_env(|k| env.get(k).cloned())
            .map_err(|e| invalid(HubError::invalid(e)))?;
        opts.extra_ca_pem = hub_core::timeouts::extra_ca_from_env(|k| env.get(k).cloned())
            .map_err(|e| invalid(HubError::invalid(e)))?;
        opts.timeouts.connect = ms(options.connect_timeout_ms, opts.timeouts.connect);
        opts.timeouts.ttfb = ms(options.request_timeout_ms, opts.timeouts.ttfb);
        opts.reload_interval = ms(options.reload_interval_ms, opts.reload_interval);
        let defaults = Hooks::default();
        opts.hooks = Hooks {
            identity: resolve_identity.map(|f| Arc::new(JsIdentity::new(f)) as _),
            identity_ttl: ms(options.identity_ttl_ms, defaults.identity_ttl),
            identity_negative_ttl: ms(
                options.identity_negative_ttl_ms,
                defaults.identity_negative_ttl,
            ),
            usage: on_usage.map(|f| Arc::new(JsUsage::new(f)) as _),
        };
        let opened = Hub::open(opts)
            .await
            .map_err(|e| hub_err(&HubError::internal(format!("cannot open the hub: {e}"))))?;
        Ok(NativeHub {
            hub: opened.hub,
            closed: Arc::new(AtomicBool::new(false)),
            new_owner_key: opened.new_owner_key,
        })
    }

    /// The owner API key created when the data dir was initialised by this open, else null.
    #[napi(getter)]
    pub fn new_owner_key(&self) -> Option<String> {
        self.new_owner_key.clone()
    }

    /// Flushes usage and stops background work. Later calls fail with `HUB_CLOSED`.
    #[napi]
    pub async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.hub.close().await;
        Ok(())
    }

    /// Non-streaming chat: canonical `ChatRequest` JSON in, canonical `ChatResponse` JSON out,
    /// metered and recorded before it resolves.
    #[napi]
    pub async fn chat(&self, request: String, auth: CallAuth) -> Result<String> {
        let hub = self.live()?.clone();
        let mut req: ChatRequest = parse("chat", &request)?;
        req.stream = false;
        let ctx = call_context(&hub, auth).await.map_err(|e| hub_err(&e))?;
        let resp = hub.chat(&ctx, req).await.map_err(|e| hub_err(&e))?;
        to_json(&resp)
    }

    /// A streaming chat. Nothing happens until the first `next()`, which authenticates, routes
    /// and waits for the first upstream event.
    #[napi(catch_unwind)]
    pub fn chat_stream(&self, request: String, auth: CallAuth) -> Result<stream::NativeStream> {
        let hub = self.live()?.clone();
        let mut req: ChatRequest = parse("chat", &request)?;
        req.stream = true;
        Ok(stream::NativeStream::pending(hub, auth, req))
    }

    #[napi]
    pub async fn embeddings(&self, request: String, auth: CallAuth) -> Result<String> {
        let hub = self.live()?.clone();
        let req: EmbeddingsRequest = parse("embeddings", &request)?;
        let ctx = call_context(&hub, auth).await.map_err(|e| hub_err(&e))?;
        let resp = hub.embeddings(&ctx, req).await.map_err(|e| hub_err(&e))?;
        to_json(&resp)
    }

    #[napi]
    pub async fn images(&self, request: String, auth: CallAuth) -> Result<String> {
        let hub = self.live()?.clone();
        let req: ImagesRequest = parse("images", &request)?;
        let ctx = call_context(&hub, auth).await.map_err(|e| hub_err(&e))?;
        let resp = hub.images(&ctx, req).await.map_err(|e| hub_err(&e))?;
        to_json(&resp)
    }

    /// Models callers can use (`chat`, `embedding`, `image`, or all), as JSON.
    #[napi(catch_unwind)]
    pub fn models(&self, model_type: Option<String>) -> Result<String> {
        let hub = self.live()?;
        let t = match model_type.as_deref() {
            None => None,
            Some("chat") => Some(ModelType::Chat),
            Some("embedding") => Some(ModelType::Embedding),
            Some("image") => Some(ModelType::Image),
            Some(other) => {
                return Err(invalid(HubError::invalid_param(
                    "type",
                    format!("unknown model type `{other}`; one of chat, embedding, image"),
                )));
            }
        };
        to_json(&hub.models(t))
    }

    /// Providers configured and usable now.
    #[napi(catch_unwind)]
    pub fn configured_providers(&self) -> Result<Vec<String>> {
        Ok(self
            .live()?
            .configured_providers()
            .iter()
            .map(|p| p.name().to_string())
            .collect())
    }

    /// Forgets every identity `resolveIdentity` answered.
    #[napi(catch_unwind)]
    pub fn clear_identity_cache(&self) -> Result<()> {
        self.live()?.clear_identity_cache();
        Ok(())
    }

    /// Runs an admin operation (`user.create`, `credential.list`, ...) with JSON arguments, as
    /// `actor` (default: the owner, as the CLI acts), with the admin API's scopes and audit.
    #[napi]
    pub async fn admin(
        &self,
        op: String,
        args: String,
        actor: Option<PrincipalInput>,
    ) -> Result<String> {
        let hub = self.live()?.clone();
        let actor = match actor {
            None => Actor {
                user_id: "native".to_string(),
                key_id: None,
                role: Role::Owner,
                team_id: None,
            },
            Some(p) => Actor::from_principal(&principal_from_input(p).map_err(|e| hub_err(&e))?),
        };
        admin::run(&hub, &actor, &op, &args)
            .await
            .map_err(|e| hub_err(&e))
    }

    /// Serves the hub's HTTP API (the same server as `aigne-hub serve`) from this process.
    #[napi]
    pub async fn serve(
        &self,
        host: String,
        port: u32,
        max_body_bytes: Option<u32>,
    ) -> Result<server::NativeServer> {
        let hub = self.live()?.clone();
        server::start(hub, &host, port, max_body_bytes).await
    }
}
