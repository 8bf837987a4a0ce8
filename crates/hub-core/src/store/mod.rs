//! Persistence behind one trait. `sqlite` is the embedded default; a PostgreSQL backend implements
//! the same trait for scale-out. Every operation must hold with several processes on one database:
//! no process-local lock stands in for atomicity (the admin CLI writes while `serve` runs).

pub mod commits; // the hot-path writer's group commits, for /metrics
pub mod iam; // teams, key policies, credential updates, audit log
pub mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::providers::ProviderKind;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Db(String),
    /// A unique constraint would be violated.
    #[error("conflict: {0}")]
    Conflict(String),
    /// No such row.
    #[error("not found: {0}")]
    NotFound(String),
}

/// A configured provider (the provider's identity is its kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderRow {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: ProviderKind,
    /// Overrides the default base URL.
    pub base_url: Option<String>,
    pub region: Option<String>,
    pub enabled: bool,
    pub created_at_ms: i64,
}

/// A stored credential. `ciphertext` is the vault envelope of the secret JSON; only the masked
/// form is ever shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CredentialRow {
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub provider: ProviderKind,
    pub name: String,
    #[serde(skip_serializing)]
    pub ciphertext: String,
    pub masked: String,
    pub weight: u32,
    pub enabled: bool,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserRow {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub team_id: Option<String>,
    pub created_at_ms: i64,
}

/// An API key as stored: digest and prefix only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRow {
    pub id: String,
    pub user_id: String,
    /// Hex SHA-256 of the key.
    #[serde(skip_serializing)]
    pub digest_hex: String,
    pub prefix: String,
    pub name: String,
    pub team_id: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// Outcome of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CallStatus {
    Success,
    Failed,
    /// The caller went away before the end; what was delivered is metered.
    Cancelled,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Success => "success",
            CallStatus::Failed => "failed",
            CallStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> CallStatus {
        match s {
            "success" => CallStatus::Success,
            "cancelled" => CallStatus::Cancelled,
            _ => CallStatus::Failed,
        }
    }
}

/// One record per call, success or failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRecord {
    /// The hub's request id (also the `x-request-id` response header).
    pub id: String,
    pub created_at_ms: i64,
    /// The caller's own `x-request-id`, if it sent one.
    pub client_request_id: Option<String>,
    /// API key id.
    pub principal: String,
    pub user_id: String,
    pub team_id: Option<String>,
    /// Calling app (`x-aigne-hub-client-did`), if known.
    pub app: Option<String>,
    /// Which API the caller spoke: `openai`, `anthropic`, `aigne`, `native`.
    pub ingress: String,
    /// `chat`, `embeddings`, `images`.
    pub endpoint: String,
    pub requested_model: String,
    pub provider: Option<String>,
    pub credential: Option<String>,
    pub upstream_model: Option<String>,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub images: u64,
    /// Token counts were estimated by the hub (the provider reported none).
    pub estimated: bool,
    pub latency_ms: u64,
    /// Time to the first byte from upstream (streams) or to the full response.
    pub ttfb_ms: Option<u64>,
    pub status: CallStatus,
    pub http_status: u16,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    /// Cost the provider itself reported (OpenRouter), decimal text.
    pub provider_cost: Option<String>,
    /// Number of upstream attempts made for this call.
    pub attempts: u32,
    /// Cost, price version and settlement of this call (see `crate::ledger`).
    #[serde(default)]
    pub billing: Billing,
}

/// What a call cost and how it was settled. Amounts are ledger units (1e-10 credit).
///
/// When `account` is set, the store settles the call in the same transaction that writes the
/// record: it captures `cost_units` from the reservation of this request id (held under the
/// record's id), releases the rest, and writes exactly one `capture` ledger entry. A record
/// replayed with the same id changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Billing {
    /// `internal` or `credits`; `None` for calls made before billing existed.
    pub mode: Option<String>,
    /// The price-book version that priced this call (`None`: no price known).
    pub price_version: Option<i64>,
    /// Credits charged (credits mode) or the provider's list cost in USD (internal mode).
    pub cost_units: i64,
    /// The provider's list cost in USD, when its unit costs are known.
    pub provider_cost_units: i64,
    /// Ledger account settled (`user:<id>` / `team:<id>`), credits mode only.
    pub account: Option<String>,
    /// Amount reserved before the call.
    pub reserved_units: i64,
    /// Part of the cost that exceeded reservation + available balance and was written off.
    pub shortfall_units: i64,
}

/// What a stream's heartbeat record changes from one beat to the next: its usage so far, its
/// latency and what that usage costs. The rest of the record (who called, which model, at which
/// price terms, flagged `reconciled`) is fixed once the stream has started, so a store keeps it
/// once and this beside it (`LedgerStore::heartbeat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamProgress {
    #[serde(rename = "p")]
    pub prompt_tokens: u64,
    #[serde(rename = "c")]
    pub completion_tokens: u64,
    #[serde(rename = "cr", default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    #[serde(rename = "cw", default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    #[serde(rename = "r", default, skip_serializing_if = "is_zero")]
    pub reasoning_tokens: u64,
    #[serde(rename = "e")]
    pub estimated: bool,
    #[serde(rename = "l")]
    pub latency_ms: u64,
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub price_version: Option<i64>,
    #[serde(rename = "u")]
    pub cost_units: i64,
    #[serde(rename = "pu", default, skip_serializing_if = "is_zero_i64")]
    pub provider_cost_units: i64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

impl StreamProgress {
    /// The moving part of `rec`.
    pub fn of(rec: &UsageRecord) -> StreamProgress {
        StreamProgress {
            prompt_tokens: rec.prompt_tokens,
            completion_tokens: rec.completion_tokens,
            cache_read_tokens: rec.cache_read_tokens,
            cache_write_tokens: rec.cache_write_tokens,
            reasoning_tokens: rec.reasoning_tokens,
            estimated: rec.estimated,
            latency_ms: rec.latency_ms,
            price_version: rec.billing.price_version,
            cost_units: rec.billing.cost_units,
            provider_cost_units: rec.billing.provider_cost_units,
        }
    }

    /// Brings a record kept from an earlier beat up to this one.
    pub fn apply(&self, rec: &mut UsageRecord) {
        rec.prompt_tokens = self.prompt_tokens;
        rec.completion_tokens = self.completion_tokens;
        rec.cache_read_tokens = self.cache_read_tokens;
        rec.cache_write_tokens = self.cache_write_tokens;
        rec.reasoning_tokens = self.reasoning_tokens;
        rec.estimated = self.estimated;
        rec.latency_ms = self.latency_ms;
        rec.billing.price_version = self.price_version;
        rec.billing.cost_units = self.cost_units;
        rec.billing.provider_cost_units = self.provider_cost_units;
    }
}

/// One stream's part of a heartbeat: its record as of now, to be written if this instance dies
/// before settling it (usage so far, estimated, priced, flagged `reconciled`).
#[derive(Debug, Clone)]
pub struct StreamBeat {
    pub record: UsageRecord,
    /// An earlier beat stored this stream's record, so only its progress
    /// (`StreamProgress::of(&record)`) needs writing.
    pub stored: bool,
}

/// The persistence trait (with the ledger, price book and reports of `crate::ledger`).
#[async_trait]
pub trait Store: iam::IamStore + crate::ledger::LedgerStore + Send + Sync + 'static {
    /// Cheap reachability check (`/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Monotonic counter bumped by every configuration write; instances poll it to reload.
    async fn config_version(&self) -> Result<i64, StoreError>;

    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;

    async fn upsert_provider(&self, row: &ProviderRow) -> Result<(), StoreError>;
    async fn list_providers(&self) -> Result<Vec<ProviderRow>, StoreError>;
    async fn delete_provider(&self, kind: ProviderKind) -> Result<(), StoreError>;

    async fn insert_credential(&self, row: &CredentialRow) -> Result<(), StoreError>;
    async fn list_credentials(&self) -> Result<Vec<CredentialRow>, StoreError>;
    async fn delete_credential(&self, id: &str) -> Result<(), StoreError>;
    /// Replaces ciphertexts (master-key rotation), all in one transaction.
    async fn replace_ciphertexts(&self, updates: &[(String, String)]) -> Result<(), StoreError>;

    async fn insert_user(&self, row: &UserRow) -> Result<(), StoreError>;
    async fn list_users(&self) -> Result<Vec<UserRow>, StoreError>;
    /// One user by id (`None` when there is no such user).
    async fn get_user(&self, id: &str) -> Result<Option<UserRow>, StoreError>;

    /// Inserts a key; `Conflict` if the digest exists.
    async fn insert_api_key(&self, row: &ApiKeyRow) -> Result<(), StoreError>;
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError>;
    async fn revoke_api_key(&self, id: &str, at_ms: i64) -> Result<(), StoreError>;

    /// Writes a batch of usage records in one transaction (group commit). Idempotent by id: a
    /// record whose id exists is left as it is.
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError>;
    /// `insert_usage` taking the batch by value and handing it back with the outcome (the usage
    /// writer keeps its records for the metrics and the observer, and retries with them), so a
    /// store that passes the batch to another thread need not copy it. The default borrows it.
    async fn insert_usage_owned(
        &self,
        records: Vec<UsageRecord>,
    ) -> (Vec<UsageRecord>, Result<(), StoreError>) {
        let r = self.insert_usage(&records).await;
        (records, r)
    }
    /// Newest first.
    async fn list_usage(&self, limit: u32) -> Result<Vec<UsageRecord>, StoreError>;

    /// What the hot-path writer's group commits did so far (`GET /metrics`), for a store that
    /// group-commits; `None` for one that does not count them.
    fn commit_stats(&self) -> Option<commits::CommitStats> {
        None
    }

    /// The hub's count of calls in flight, which a group-committing store may read to commit a
    /// lone call's usage record at once rather than hand it to its writer. The first hub to
    /// open over a store sets it; a store that does not use it ignores it.
    fn set_calls_in_flight(&self, _calls: std::sync::Arc<std::sync::atomic::AtomicUsize>) {}
}
