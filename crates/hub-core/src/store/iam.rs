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
}

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
    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
}
