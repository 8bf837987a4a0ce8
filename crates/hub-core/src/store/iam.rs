//! Persistence of identity and administration: teams, users' changes, per-key policies, credential
//! updates, compare-and-swap re-encryption (master-key rotation) and the audit log. A supertrait of
//! `Store`, so every backend provides it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{ApiKeyRow, StoreError};
use crate::auth::Role;
use crate::policy::KeyPolicy;

/// A team (tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TeamRow {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
}

/// A change to a user; `None` leaves the field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    pub name: Option<String>,
    pub role: Option<Role>,
    /// `Some(None)` removes the user from their team.
    pub team_id: Option<Option<String>>,
}

/// A change to a credential; `None` leaves the field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialPatch {
    pub name: Option<String>,
    pub weight: Option<u32>,
    pub enabled: Option<bool>,
    /// New sealed value and its masked form.
    pub sealed: Option<(String, String)>,
}

/// One admin mutation: who, what, when, before and after (secrets never included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: String,
    pub at_ms: i64,
    /// User id of the actor (`cli` for the command line).
    pub actor_user_id: String,
    /// API key the actor used, if any.
    pub actor_key_id: Option<String>,
    /// `user.create`, `key.revoke`, `credential.update`, ...
    pub action: String,
    /// Id of the object changed.
    pub target: String,
    pub team_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub before: Option<serde_json::Value>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub after: Option<serde_json::Value>,
}

/// Which audit entries to list (newest first).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub limit: u32,
    pub action: Option<String>,
    pub actor_user_id: Option<String>,
    pub team_id: Option<String>,
    pub since_ms: Option<i64>,
    /// Only entries about this object (`target`).
    pub target: Option<String>,
    /// Only entries before this time (exclusive).
    pub until_ms: Option<i64>,
}

/// A change an admin makes, committed by `IamStore::commit_audited` in one transaction with its
/// audit entry: either both are stored or neither.
#[derive(Debug, Clone)]
pub enum Change {
    InsertTeam(TeamRow),
    InsertUser(super::UserRow),
    UpdateUser {
        id: String,
        patch: UserPatch,
    },
    /// A key and its policy.
    CreateApiKey {
        row: ApiKeyRow,
        policy: KeyPolicy,
    },
    /// `NotFound` unless the key exists and is not revoked.
    RevokeApiKey {
        id: String,
        at_ms: i64,
    },
    SetKeyPolicy {
        key_id: String,
        policy: KeyPolicy,
    },
    UpsertProvider(super::ProviderRow),
    /// The provider and its credentials.
    DeleteProvider(crate::providers::ProviderKind),
    InsertCredential(super::CredentialRow),
    UpdateCredential {
        id: String,
        patch: CredentialPatch,
    },
    DeleteCredential(String),
    SetSetting {
        key: String,
        value: String,
    },
    /// New price versions (history is never rewritten).
    InsertPrices(Vec<crate::pricing::Price>),
    /// A credit grant or adjustment (idempotent by key).
    Grant(crate::ledger::GrantReq),
    /// No stored change: only the audit entry (a credential test, a master-key rotation).
    Nothing,
    /// Several changes, all or none.
    Many(Vec<Change>),
}

/// What a committed change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// Version ids of inserted prices.
    Prices(Vec<i64>),
    Grant {
        outcome: crate::ledger::GrantOutcome,
        /// Available balance of the account before and after (units).
        available_before: i64,
        available_after: i64,
    },
    Many(Vec<Applied>),
}

impl Applied {
    /// Whether anything changed (a replayed or refused grant changes nothing, and is neither
    /// committed nor audited).
    pub fn changed(&self) -> bool {
        match self {
            Applied::Done | Applied::Prices(_) => true,
            Applied::Grant { outcome, .. } => *outcome == crate::ledger::GrantOutcome::Applied,
            Applied::Many(v) => v.iter().all(Applied::changed),
        }
    }
}

/// Builds the audit entry of a change from what it did; called inside the transaction.
pub type AuditFn = Box<dyn FnOnce(&Applied) -> AuditEntry + Send>;

#[async_trait]
pub trait IamStore: Send + Sync {
    async fn insert_team(&self, row: &TeamRow) -> Result<(), StoreError>;
    async fn list_teams(&self) -> Result<Vec<TeamRow>, StoreError>;
    async fn update_user(&self, id: &str, patch: &UserPatch) -> Result<(), StoreError>;

    /// Inserts a key and its policy in one transaction.
    async fn create_api_key(&self, row: &ApiKeyRow, policy: &KeyPolicy) -> Result<(), StoreError>;
    async fn list_key_policies(&self) -> Result<Vec<(String, KeyPolicy)>, StoreError>;
    async fn set_key_policy(&self, key_id: &str, policy: &KeyPolicy) -> Result<(), StoreError>;
    /// What a key spent (sum of its records' `cost_units`) on calls started in `[from_ms, to_ms)`:
    /// the seed of its spend budget.
    async fn key_spend(&self, key_id: &str, from_ms: i64, to_ms: i64) -> Result<i64, StoreError>;

    async fn update_credential(&self, id: &str, patch: &CredentialPatch) -> Result<(), StoreError>;
    /// Replaces ciphertexts `(id, old, new)` only where the row still holds `old`, in one
    /// transaction. Returns how many rows were replaced.
    async fn rewrap_ciphertexts(
        &self,
        updates: &[(String, String, String)],
    ) -> Result<usize, StoreError>;

    /// Newest usage records, optionally of one user or one team.
    async fn list_usage_scoped(
        &self,
        user_id: Option<&str>,
        team_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<super::UsageRecord>, StoreError>;

    async fn insert_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Applies a change and, in the same transaction, its audit entry (when `audit` is given).
    /// A change that fails leaves neither; a change that changes nothing (a replayed grant) is
    /// rolled back and not audited.
    async fn commit_audited(
        &self,
        change: Change,
        audit: Option<AuditFn>,
    ) -> Result<Applied, StoreError>;
    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
}
