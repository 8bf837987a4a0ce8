//! Identity and administration: who may see and change what (scopes), and every admin operation
//! (teams, users, API keys and their policies, providers, credentials), each written to the audit
//! log with before/after images that never contain a secret. The admin HTTP API and the
//! `aigne-hub admin` CLI both call these functions; neither decides authorisation itself.
//!
//! Scopes: the owner, and an admin without a team, see and change everything; an admin of a team
//! (role admin with a team) sees and manages that team's users, keys and usage; members and guests
//! see only their own keys and usage (members may create and revoke their own keys).

use serde::{Deserialize, Serialize};

use crate::auth::{self, Principal, Role};
use crate::error::{ErrorKind, HubError};
use crate::hub::{now_ms, seal_credential};
use crate::policy::KeyPolicy;
use crate::providers::{CredentialSecret, ProviderKind, Secret};
use crate::store::iam::{
    Applied, AuditEntry, AuditQuery, Change, CredentialPatch, TeamRow, UserPatch,
};
use crate::store::{
    ApiKeyRow, CredentialRow, ProviderRow, Store, StoreError, UsageRecord, UserRow,
};
use crate::vault::Vault;

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    pub key_id: Option<String>,
    pub role: Role,
    pub team_id: Option<String>,
}

impl Actor {
    /// The command line, working on the data dir: acts as the owner.
    pub fn cli() -> Actor {
        Actor {
            user_id: "cli".to_string(),
            key_id: None,
            role: Role::Owner,
            team_id: None,
        }
    }

    pub fn from_principal(p: &Principal) -> Actor {
        Actor {
            user_id: p.user_id.clone(),
            key_id: Some(p.key_id.clone()),
            role: p.role,
            team_id: p.team_id.clone(),
        }
    }

    /// What this actor may see.
    pub fn scope(&self) -> Scope {
        match (self.role, &self.team_id) {
            (Role::Owner, _) | (Role::Admin, None) => Scope::All,
            (Role::Admin, Some(t)) => Scope::Team(t.clone()),
            (Role::Member | Role::Guest, _) => Scope::Own(self.user_id.clone()),
        }
    }

    /// Owner or admin (of everything or of a team): may use `/api/admin/*`.
    pub fn is_admin(&self) -> bool {
        self.role.is_admin()
    }
}

/// The data an actor may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Team(String),
    Own(String),
}

fn forbidden(msg: impl Into<String>) -> HubError {
    HubError::new(ErrorKind::PermissionDenied, msg).with_code("permission_denied")
}

fn not_found(msg: impl Into<String>) -> HubError {
    HubError::new(ErrorKind::NotFound, msg).with_code("not_found")
}

fn store_err(e: StoreError) -> HubError {
    match e {
        StoreError::NotFound(m) => not_found(format!("not found: {m}")),
        StoreError::Conflict(m) => {
            HubError::new(ErrorKind::Conflict, format!("conflict: {m}")).with_code("conflict")
        }
        StoreError::Db(m) => {
            tracing::error!(error = %m, "store failure in an admin operation");
            HubError::internal("the database failed; see the server log")
        }
    }
}

/// Requires the owner, or an admin of everything.
pub fn require_all(actor: &Actor) -> Result<(), HubError> {
    if actor.scope() == Scope::All {
        Ok(())
    } else {
        Err(forbidden(
            "This operation needs the owner or an admin role without a team.",
        ))
    }
}

/// Requires an owner or admin role (possibly of a team).
pub fn require_admin(actor: &Actor) -> Result<(), HubError> {
    if actor.is_admin() {
        Ok(())
    } else {
        Err(forbidden("This operation needs an owner or admin role."))
    }
}

fn check_name(field: &str, v: &str) -> Result<String, HubError> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > 200 {
        return Err(HubError::invalid_param(
            field,
            format!("`{field}` must be 1 to 200 characters"),
        ));
    }
    Ok(v.to_string())
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The audit entry of a change (images built by the caller from types that carry no secret).
pub(crate) fn entry(
    actor: &Actor,
    action: &str,
    target: &str,
    team_id: Option<&str>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> AuditEntry {
    AuditEntry {
        id: uuid::Uuid::now_v7().to_string(),
        at_ms: now_ms(),
        actor_user_id: actor.user_id.clone(),
        actor_key_id: actor.key_id.clone(),
        action: action.to_string(),
        target: target.to_string(),
        team_id: team_id.map(str::to_string),
        before,
        after,
    }
}

/// Commits a change and its audit entry in one transaction: both or neither.
pub(crate) async fn commit(
    store: &dyn Store,
    change: Change,
    entry: AuditEntry,
) -> Result<Applied, HubError> {
    store
        .commit_audited(change, Some(Box::new(move |_| entry)))
        .await
        .map_err(store_err)
}

fn json<T: Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

// ---------------------------------------------------------------------------------------------
// teams and users

pub async fn create_team(
    store: &dyn Store,
    actor: &Actor,
    name: &str,
) -> Result<TeamRow, HubError> {
    require_all(actor)?;
    let row = TeamRow {
        id: new_id("team"),
        name: check_name("name", name)?,
        created_at_ms: now_ms(),
    };
    let e = entry(
        actor,
        "team.create",
        &row.id,
        Some(&row.id),
        None,
        json(&row),
    );
    commit(store, Change::InsertTeam(row.clone()), e).await?;
    Ok(row)
}

pub async fn list_teams(store: &dyn Store, actor: &Actor) -> Result<Vec<TeamRow>, HubError> {
    let teams = store.list_teams().await.map_err(store_err)?;
    Ok(match actor.scope() {
        Scope::All => teams,
        Scope::Team(t) => teams.into_iter().filter(|r| r.id == t).collect(),
        Scope::Own(_) => teams
            .into_iter()
            .filter(|r| Some(&r.id) == actor.team_id.as_ref())
            .collect(),
    })
}

/// Finds a team by id or by name.
pub async fn resolve_team(store: &dyn Store, id_or_name: &str) -> Result<TeamRow, HubError> {
    store
        .list_teams()
        .await
        .map_err(store_err)?
        .into_iter()
        .find(|t| t.id == id_or_name || t.name == id_or_name)
        .ok_or_else(|| {
            HubError::invalid_param("team", format!("no team `{id_or_name}`"))
                .with_code("team_not_found")
        })
}

/// A new user.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    /// Team id or name.
    pub team: Option<String>,
}

fn user_visible(scope: &Scope, u: &UserRow) -> bool {
    match scope {
        Scope::All => true,
        Scope::Team(t) => u.team_id.as_ref() == Some(t),
        Scope::Own(id) => &u.id == id,
    }
}

pub async fn create_user(
    store: &dyn Store,
    actor: &Actor,
    new: &NewUser,
) -> Result<UserRow, HubError> {
    require_admin(actor)?;
    let team_id = match &new.team {
        Some(t) => Some(resolve_team(store, t).await?.id),
        None => None,
    };
    let team_id = match actor.scope() {
        Scope::All => team_id,
        Scope::Team(t) => {
            if new.role.is_admin() {
                return Err(forbidden(
                    "A team admin can create members and guests only.",
                ));
            }
            if team_id.as_ref().is_some_and(|x| x != &t) {
                return Err(forbidden(
                    "A team admin can create users in their own team only.",
                ));
            }
            Some(t)
        }
        Scope::Own(_) => return Err(forbidden("Only admins create users.")),
    };
    if new.role == Role::Owner && actor.role != Role::Owner {
        return Err(forbidden("Only the owner can create another owner."));
    }
    let row = UserRow {
        id: new_id("user"),
        name: check_name("name", &new.name)?,
        role: new.role,
        team_id,
        created_at_ms: now_ms(),
    };
    let e = entry(
        actor,
        "user.create",
        &row.id,
        row.team_id.as_deref(),
        None,
        json(&row),
    );
    commit(store, Change::InsertUser(row.clone()), e).await?;
    Ok(row)
}

pub async fn list_users(store: &dyn Store, actor: &Actor) -> Result<Vec<UserRow>, HubError> {
    let scope = actor.scope();
    Ok(store
        .list_users()
        .await
        .map_err(store_err)?
        .into_iter()
        .filter(|u| user_visible(&scope, u))
        .collect())
}

async fn visible_user(store: &dyn Store, actor: &Actor, id: &str) -> Result<UserRow, HubError> {
    let scope = actor.scope();
    store
        .list_users()
        .await
        .map_err(store_err)?
        .into_iter()
        .find(|u| u.id == id && user_visible(&scope, u))
        .ok_or_else(|| not_found(format!("no user `{id}`")))
}

/// A change to a user, as the API takes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserUpdate {
    pub name: Option<String>,
    pub role: Option<Role>,
    /// Team id or name; `""` removes the user from their team.
    pub team: Option<String>,
}

pub async fn update_user(
    store: &dyn Store,
    actor: &Actor,
    id: &str,
    upd: &UserUpdate,
) -> Result<UserRow, HubError> {
    require_admin(actor)?;
    let before = visible_user(store, actor, id).await?;
    let team_id = match upd.team.as_deref() {
        None => None,
        Some("") => Some(None),
        Some(t) => Some(Some(resolve_team(store, t).await?.id)),
    };
    if let Scope::Team(t) = actor.scope() {
        if upd.role.is_some_and(Role::is_admin) || before.role.is_admin() {
            return Err(forbidden(
                "A team admin cannot grant or change admin roles.",
            ));
        }
        if team_id.as_ref().is_some_and(|x| x.as_ref() != Some(&t)) {
            return Err(forbidden(
                "A team admin cannot move users out of their team.",
            ));
        }
    }
    if (upd.role == Some(Role::Owner) || before.role == Role::Owner) && actor.role != Role::Owner {
        return Err(forbidden("Only the owner can change owners."));
    }
    let patch = UserPatch {
        name: upd
            .name
            .as_deref()
            .map(|n| check_name("name", n))
            .transpose()?,
        role: upd.role,
        team_id,
    };
    let mut after = before.clone();
    if let Some(n) = &patch.name {
        after.name = n.clone();
    }
    if let Some(r) = patch.role {
        after.role = r;
    }
    if let Some(t) = &patch.team_id {
        after.team_id = t.clone();
    }
    let e = entry(
        actor,
        "user.update",
        id,
        after.team_id.as_deref().or(before.team_id.as_deref()),
        json(&before),
        json(&after),
    );
    let change = Change::UpdateUser {
        id: id.to_string(),
        patch,
    };
    commit(store, change, e).await?;
    Ok(after)
}

// ---------------------------------------------------------------------------------------------
// API keys

/// An API key as shown: never the key or its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyView {
    pub id: String,
    pub user_id: String,
    pub team_id: Option<String>,
    pub name: String,
    /// The first characters, for recognition.
    pub prefix: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    pub policy: KeyPolicy,
    /// The spend budget's current period (when the policy has a budget): spent, remaining and
    /// when it resets, from the key's usage records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_status: Option<crate::budget::BudgetStatus>,
}

fn key_view(row: &ApiKeyRow, policy: KeyPolicy, now: i64) -> KeyView {
    let status = if row.revoked_at_ms.is_some() {
        "revoked"
    } else if row.expires_at_ms.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    };
    KeyView {
        id: row.id.clone(),
        user_id: row.user_id.clone(),
        team_id: row.team_id.clone(),
        name: row.name.clone(),
        prefix: row.prefix.clone(),
        created_at_ms: row.created_at_ms,
        expires_at_ms: row.expires_at_ms,
        revoked_at_ms: row.revoked_at_ms,
        status: status.to_string(),
        policy,
        budget_status: None,
    }
}

/// Fills in `budget_status` of a key whose policy has a budget: one indexed sum over the key's
/// usage records of the current period.
async fn with_budget_status(
    store: &dyn Store,
    mut view: KeyView,
    now: i64,
) -> Result<KeyView, HubError> {
    let Some(b) = &view.policy.budget else {
        return Ok(view);
    };
    let tz = b.zone().unwrap_or(jiff::tz::TimeZone::UTC);
    if let Some(p) = crate::budget::period_at(b.period, &tz, now) {
        let spent = store
            .key_spend(&view.id, p.start_ms, p.end_ms)
            .await
            .map_err(store_err)?;
        view.budget_status = Some(crate::budget::BudgetStatus::new(b, &tz, p, spent));
    }
    Ok(view)
}

/// A new key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewKey {
    pub user_id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Team id or name; default: the user's team.
    #[serde(default)]
    pub team: Option<String>,
    /// Expiry, milliseconds since the epoch.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    #[serde(default)]
    pub policy: KeyPolicy,
}

/// A key just created: the only time its value is shown.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedKey {
    /// The key itself. Shown once; only its digest is stored.
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

fn key_visible(scope: &Scope, k: &ApiKeyRow, users: &[UserRow]) -> bool {
    match scope {
        Scope::All => true,
        Scope::Team(t) => {
            k.team_id.as_ref() == Some(t)
                || users
                    .iter()
                    .any(|u| u.id == k.user_id && u.team_id.as_ref() == Some(t))
        }
        Scope::Own(id) => &k.user_id == id,
    }
}

pub async fn create_key(
    store: &dyn Store,
    actor: &Actor,
    new: &NewKey,
) -> Result<CreatedKey, HubError> {
    new.policy
        .validate()
        .map_err(|m| HubError::invalid_param("policy", m))?;
    let user = visible_user(store, actor, &new.user_id)
        .await
        .map_err(|_| not_found(format!("no user `{}`", new.user_id)))?;
    if actor.role == Role::Guest {
        return Err(forbidden("Guests cannot create API keys."));
    }
    if user.role == Role::Owner && actor.role != Role::Owner {
        return Err(forbidden("Only the owner can create keys for an owner."));
    }
    if user.role == Role::Admin && !matches!(actor.scope(), Scope::All) && user.id != actor.user_id
    {
        return Err(forbidden(
            "Only the owner or an admin can create keys for an admin.",
        ));
    }
    let team_id = match &new.team {
        Some(t) => Some(resolve_team(store, t).await?.id),
        None => user.team_id.clone(),
    };
    match actor.scope() {
        Scope::All => {}
        Scope::Team(t) => {
            if team_id.as_ref() != Some(&t) {
                return Err(forbidden(
                    "A team admin creates keys in their own team only.",
                ));
            }
        }
        Scope::Own(_) => {
            if team_id != user.team_id {
                return Err(forbidden("Your keys belong to your own team."));
            }
        }
    }
    if let Some(exp) = new.expires_at_ms
        && exp <= now_ms()
    {
        return Err(HubError::invalid_param(
            "expires_at_ms",
            "the expiry must be in the future",
        ));
    }
    let (policy, expires_at_ms) = bounded_by_caller(store, actor, new).await?;
    let key = auth::generate_key();
    let row = ApiKeyRow {
        id: new_id("key"),
        user_id: user.id.clone(),
        digest_hex: hex::encode(auth::digest(&key)),
        prefix: auth::key_prefix(&key),
        name: match &new.name {
            Some(n) => check_name("name", n)?,
            None => format!("{} key", user.name),
        },
        team_id,
        created_at_ms: now_ms(),
        expires_at_ms,
        revoked_at_ms: None,
    };
    // The key does not exist yet: its budget status is that of an unspent period.
    let view =
        with_budget_status(store, key_view(&row, policy.clone(), now_ms()), now_ms()).await?;
    let e = entry(
        actor,
        "key.create",
        &row.id,
        row.team_id.as_deref(),
        None,
        json(&view),
    );
    commit(store, Change::CreateApiKey { row, policy }, e).await?;
    Ok(CreatedKey { key, view })
}

/// A key made by a member or guest with their key can be no wider than that key: it inherits the
/// calling key's policy (a different, non-empty policy is refused) and expires no later. Otherwise
/// per-key restrictions would be escaped by minting a fresh key. Admins set policies freely.
async fn bounded_by_caller(
    store: &dyn Store,
    actor: &Actor,
    new: &NewKey,
) -> Result<(KeyPolicy, Option<i64>), HubError> {
    let (Some(key_id), false) = (&actor.key_id, actor.is_admin()) else {
        return Ok((new.policy.clone(), new.expires_at_ms));
    };
    let Some(caller) = list_keys(store, actor)
        .await?
        .into_iter()
        .find(|k| &k.id == key_id)
    else {
        return Err(forbidden("The key making this request is not yours."));
    };
    if caller.policy.budget.is_some() {
        // Each key has its own budget: a fresh key would be a fresh budget.
        return Err(forbidden(
            "A key with a spend budget cannot create keys; ask an admin.",
        ));
    }
    let policy = if new.policy.is_unrestricted() || new.policy == caller.policy {
        caller.policy
    } else if caller.policy.is_unrestricted() {
        new.policy.clone()
    } else {
        return Err(forbidden(
            "A new key cannot have a different policy than the key creating it; ask an admin.",
        ));
    };
    let expires = match (new.expires_at_ms, caller.expires_at_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok((policy, expires))
}

pub async fn list_keys(store: &dyn Store, actor: &Actor) -> Result<Vec<KeyView>, HubError> {
    let scope = actor.scope();
    let users = store.list_users().await.map_err(store_err)?;
    let mut policies: std::collections::HashMap<String, KeyPolicy> = store
        .list_key_policies()
        .await
        .map_err(store_err)?
        .into_iter()
        .collect();
    let now = now_ms();
    let views: Vec<KeyView> = store
        .list_api_keys()
        .await
        .map_err(store_err)?
        .iter()
        .filter(|k| key_visible(&scope, k, &users))
        .map(|k| key_view(k, policies.remove(&k.id).unwrap_or_default(), now))
        .collect();
    let mut out = Vec::with_capacity(views.len());
    for v in views {
        out.push(with_budget_status(store, v, now).await?);
    }
    Ok(out)
}

async fn visible_key(store: &dyn Store, actor: &Actor, id: &str) -> Result<KeyView, HubError> {
    list_keys(store, actor)
        .await?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| not_found(format!("no API key `{id}`")))
}

pub async fn revoke_key(store: &dyn Store, actor: &Actor, id: &str) -> Result<KeyView, HubError> {
    // Anyone may revoke a key they can see (a guest their own, e.g. when it leaked).
    let before = visible_key(store, actor, id).await?;
    if before.revoked_at_ms.is_some() {
        return Err(HubError::new(
            ErrorKind::Conflict,
            format!("API key `{id}` is already revoked"),
        )
        .with_code("conflict"));
    }
    let at = now_ms();
    let after = KeyView {
        revoked_at_ms: Some(at),
        status: "revoked".to_string(),
        ..before.clone()
    };
    let e = entry(
        actor,
        "key.revoke",
        id,
        after.team_id.as_deref(),
        json(&before),
        json(&after),
    );
    let change = Change::RevokeApiKey {
        id: id.to_string(),
        at_ms: at,
    };
    commit(store, change, e).await?;
    Ok(after)
}

pub async fn set_key_policy(
    store: &dyn Store,
    actor: &Actor,
    id: &str,
    policy: &KeyPolicy,
) -> Result<KeyView, HubError> {
    require_admin(actor)?;
    policy
        .validate()
        .map_err(|m| HubError::invalid_param("policy", m))?;
    let before = visible_key(store, actor, id).await?;
    let after = with_budget_status(
        store,
        KeyView {
            policy: policy.clone(),
            budget_status: None,
            ..before.clone()
        },
        now_ms(),
    )
    .await?;
    let e = entry(
        actor,
        "key.policy",
        id,
        after.team_id.as_deref(),
        json(&before),
        json(&after),
    );
    let change = Change::SetKeyPolicy {
        key_id: id.to_string(),
        policy: policy.clone(),
    };
    commit(store, change, e).await?;
    Ok(after)
}

// ---------------------------------------------------------------------------------------------
// providers and credentials (owner / global admin only)

/// A provider's settings, as the API takes them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderSettingsIn {
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

pub fn parse_provider(name: &str) -> Result<ProviderKind, HubError> {
    ProviderKind::from_name(name).ok_or_else(|| {
        let all: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.name()).collect();
        not_found(format!(
            "unknown provider `{name}` (known: {})",
            all.join(", ")
        ))
    })
}

pub async fn upsert_provider(
    store: &dyn Store,
    actor: &Actor,
    kind: ProviderKind,
    s: &ProviderSettingsIn,
) -> Result<ProviderRow, HubError> {
    require_all(actor)?;
    if let Some(u) = &s.base_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err(HubError::invalid_param(
            "base_url",
            format!("`base_url` must be an http(s) URL, got `{u}`"),
        ));
    }
    let before = store
        .list_providers()
        .await
        .map_err(store_err)?
        .into_iter()
        .find(|p| p.kind == kind);
    let row = ProviderRow {
        kind,
        base_url: s.base_url.clone().filter(|u| !u.is_empty()),
        region: s.region.clone().filter(|r| !r.is_empty()),
        enabled: s.enabled,
        created_at_ms: before.as_ref().map_or_else(now_ms, |b| b.created_at_ms),
    };
    let action = if before.is_some() {
        "provider.update"
    } else {
        "provider.create"
    };
    let e = entry(
        actor,
        action,
        kind.name(),
        None,
        before.as_ref().and_then(json),
        json(&row),
    );
    commit(store, Change::UpsertProvider(row.clone()), e).await?;
    Ok(row)
}

/// Stores a provider's timeouts (replacing what was stored; an absent field falls back to the
/// environment). Running servers apply them at their next reload (within a second); a changed
/// connect timeout rebuilds that provider's connection pool.
pub async fn set_provider_timeouts(
    store: &dyn Store,
    actor: &Actor,
    kind: ProviderKind,
    t: &crate::timeouts::TimeoutSettings,
) -> Result<crate::timeouts::TimeoutSettings, HubError> {
    use crate::timeouts::TimeoutSettings;
    require_all(actor)?;
    t.validate()
        .map_err(|(field, msg)| HubError::invalid_param(field, msg))?;
    let key = TimeoutSettings::key(kind);
    let before = store
        .get_setting(&key)
        .await
        .map_err(store_err)?
        .and_then(|v| serde_json::from_str::<TimeoutSettings>(&v).ok());
    let text = serde_json::to_string(t)
        .map_err(|e| HubError::internal(format!("timeouts could not be encoded: {e}")))?;
    let e = entry(
        actor,
        "provider.timeouts",
        kind.name(),
        None,
        before.as_ref().and_then(json),
        json(t),
    );
    let change = Change::SetSetting {
        key: key.clone(),
        value: text,
    };
    commit(store, change, e).await?;
    Ok(*t)
}

pub async fn delete_provider(
    store: &dyn Store,
    actor: &Actor,
    kind: ProviderKind,
) -> Result<(), HubError> {
    require_all(actor)?;
    let before = store
        .list_providers()
        .await
        .map_err(store_err)?
        .into_iter()
        .find(|p| p.kind == kind);
    let e = entry(
        actor,
        "provider.delete",
        kind.name(),
        None,
        before.as_ref().and_then(json),
        None,
    );
    commit(store, Change::DeleteProvider(kind), e).await?;
    Ok(())
}

/// A new credential. The value is sealed before it reaches the store and never returned.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewCredential {
    pub provider: String,
    /// The API key (the access key id for Bedrock).
    pub value: String,
    /// Bedrock's secret access key.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_weight() -> u32 {
    100
}

/// A change to a credential.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CredentialUpdate {
    pub name: Option<String>,
    pub weight: Option<u32>,
    pub enabled: Option<bool>,
    /// A new value (replaces the secret).
    pub value: Option<String>,
    pub secret: Option<String>,
}

fn check_weight(w: u32) -> Result<u32, HubError> {
    if (1..=10_000).contains(&w) {
        Ok(w)
    } else {
        Err(HubError::invalid_param(
            "weight",
            "`weight` must be 1 to 10000",
        ))
    }
}

fn sealed(
    vault: &Vault,
    id: &str,
    value: &str,
    secret: Option<&str>,
) -> Result<(String, String), HubError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(HubError::invalid_param(
            "value",
            "the credential value is empty",
        ));
    }
    let secret = CredentialSecret {
        api_key: Some(Secret::new(value)),
        secret_key: secret.map(Secret::new),
        session_token: None,
    };
    let masked = secret
        .api_key
        .as_ref()
        .map(Secret::masked)
        .unwrap_or_default();
    let ct = seal_credential(vault, id, &secret).map_err(|e| {
        tracing::error!(error = %e, "sealing a credential failed");
        HubError::internal("the credential could not be encrypted")
    })?;
    Ok((ct, masked))
}

pub async fn add_credential(
    store: &dyn Store,
    vault: &Vault,
    actor: &Actor,
    new: &NewCredential,
) -> Result<CredentialRow, HubError> {
    require_all(actor)?;
    let kind = parse_provider(&new.provider)
        .map_err(|e| HubError::invalid_param("provider", e.message))?;
    let id = new_id("cred");
    let (ciphertext, masked) = sealed(vault, &id, &new.value, new.secret.as_deref())?;
    let row = CredentialRow {
        id: id.clone(),
        provider: kind,
        name: match &new.name {
            Some(n) => check_name("name", n)?,
            None => format!("{kind} key"),
        },
        ciphertext,
        masked,
        weight: check_weight(new.weight)?,
        enabled: new.enabled,
        created_at_ms: now_ms(),
    };
    let e = entry(actor, "credential.create", &id, None, None, json(&row));
    commit(store, Change::InsertCredential(row.clone()), e).await?;
    Ok(row)
}

async fn credential(store: &dyn Store, id: &str) -> Result<CredentialRow, HubError> {
    store
        .list_credentials()
        .await
        .map_err(store_err)?
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| not_found(format!("no credential `{id}`")))
}

pub async fn update_credential(
    store: &dyn Store,
    vault: &Vault,
    actor: &Actor,
    id: &str,
    upd: &CredentialUpdate,
) -> Result<CredentialRow, HubError> {
    require_all(actor)?;
    let before = credential(store, id).await?;
    let patch = CredentialPatch {
        name: upd
            .name
            .as_deref()
            .map(|n| check_name("name", n))
            .transpose()?,
        weight: upd.weight.map(check_weight).transpose()?,
        enabled: upd.enabled,
        sealed: match &upd.value {
            Some(v) => Some(sealed(vault, id, v, upd.secret.as_deref())?),
            None => None,
        },
    };
    let mut after = before.clone();
    if let Some(n) = &patch.name {
        after.name = n.clone();
    }
    if let Some(w) = patch.weight {
        after.weight = w;
    }
    if let Some(en) = patch.enabled {
        after.enabled = en;
    }
    if let Some((ct, masked)) = &patch.sealed {
        after.ciphertext = ct.clone();
        after.masked = masked.clone();
    }
    // `CredentialRow` serialises without its ciphertext: the images hold the masked value only.
    let e = entry(
        actor,
        "credential.update",
        id,
        None,
        json(&before),
        json(&after),
    );
    let change = Change::UpdateCredential {
        id: id.to_string(),
        patch,
    };
    commit(store, change, e).await?;
    Ok(after)
}

pub async fn delete_credential(store: &dyn Store, actor: &Actor, id: &str) -> Result<(), HubError> {
    require_all(actor)?;
    let before = credential(store, id).await?;
    let e = entry(actor, "credential.delete", id, None, json(&before), None);
    commit(store, Change::DeleteCredential(id.to_string()), e).await?;
    Ok(())
}

pub async fn list_credentials(
    store: &dyn Store,
    actor: &Actor,
) -> Result<Vec<CredentialRow>, HubError> {
    require_all(actor)?;
    store.list_credentials().await.map_err(store_err)
}

pub async fn list_providers(
    store: &dyn Store,
    actor: &Actor,
) -> Result<Vec<ProviderRow>, HubError> {
    require_all(actor)?;
    store.list_providers().await.map_err(store_err)
}

// ---------------------------------------------------------------------------------------------
// usage and audit

/// Newest usage records the actor may see.
pub async fn list_usage(
    store: &dyn Store,
    actor: &Actor,
    limit: u32,
) -> Result<Vec<UsageRecord>, HubError> {
    let limit = limit.clamp(1, 1000);
    let (user, team) = match actor.scope() {
        Scope::All => (None, None),
        Scope::Team(t) => (None, Some(t)),
        Scope::Own(u) => (Some(u), None),
    };
    store
        .list_usage_scoped(user.as_deref(), team.as_deref(), limit)
        .await
        .map_err(store_err)
}

pub async fn list_audit(
    store: &dyn Store,
    actor: &Actor,
    mut q: AuditQuery,
) -> Result<Vec<AuditEntry>, HubError> {
    require_admin(actor)?;
    if let Scope::Team(t) = actor.scope() {
        q.team_id = Some(t);
    }
    q.limit = q.limit.clamp(1, 1000);
    store.list_audit(&q).await.map_err(store_err)
}

/// Records an operation that is not a store mutation of this module (e.g. master-key rotation).
pub async fn record(
    store: &dyn Store,
    actor: &Actor,
    action: &str,
    target: &str,
    after: Option<serde_json::Value>,
) -> Result<(), HubError> {
    let e = entry(actor, action, target, None, None, after);
    commit(store, Change::Nothing, e).await?;
    Ok(())
}

/// Tests a credential against its provider (owner / global admin), and audits the test.
pub async fn test_credential(
    hub: &crate::Hub,
    actor: &Actor,
    id: &str,
    model: Option<&str>,
) -> Result<crate::hub::CredentialTest, HubError> {
    require_all(actor)?;
    let outcome = hub.test_credential(id, model).await?;
    let e = entry(actor, "credential.test", id, None, None, json(&outcome));
    commit(hub.store().as_ref(), Change::Nothing, e).await?;
    Ok(outcome)
}
