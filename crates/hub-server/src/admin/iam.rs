//! Teams, users and API keys (`/api/admin/{teams,users,keys}`), and the caller's own keys and
//! usage (`/api/me/*`). Thin: authorisation and auditing live in `hub_core::iam`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hub_core::iam::{self, CreatedKey, KeyView, NewKey, NewUser, UserUpdate};
use hub_core::policy::KeyPolicy;
use hub_core::store::iam::TeamRow;
use hub_core::store::{UsageRecord, UserRow};
use serde::Deserialize;

use super::applied;
use super::auth::{AdminCaller, AdminError, Body, Caller, ErrorBody, Query};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    pub name: String,
}

/// Teams visible to the caller.
#[utoipa::path(get, path = "/api/admin/teams", tag = "teams",
    responses((status = 200, body = [TeamRow]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_teams(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
) -> Result<Json<Vec<TeamRow>>, AdminError> {
    Ok(Json(
        iam::list_teams(st.hub.store().as_ref(), &c.actor).await?,
    ))
}

/// Creates a team (owner / admin without a team).
#[utoipa::path(post, path = "/api/admin/teams", tag = "teams", request_body = NewTeam,
    responses((status = 201, body = TeamRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_team(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Body(b): Body<NewTeam>,
) -> Result<(StatusCode, Json<TeamRow>), AdminError> {
    let t = iam::create_team(st.hub.store().as_ref(), &c.actor, &b.name).await?;
    applied(&st).await;
    Ok((StatusCode::CREATED, Json(t)))
}

/// Users visible to the caller (a team admin sees their team).
#[utoipa::path(get, path = "/api/admin/users", tag = "users",
    responses((status = 200, body = [UserRow]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_users(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
) -> Result<Json<Vec<UserRow>>, AdminError> {
    Ok(Json(
        iam::list_users(st.hub.store().as_ref(), &c.actor).await?,
    ))
}

/// Creates a user.
#[utoipa::path(post, path = "/api/admin/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = UserRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_user(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Body(b): Body<NewUser>,
) -> Result<(StatusCode, Json<UserRow>), AdminError> {
    let u = iam::create_user(st.hub.store().as_ref(), &c.actor, &b).await?;
    applied(&st).await;
    Ok((StatusCode::CREATED, Json(u)))
}

/// Changes a user's name, role or team.
#[utoipa::path(patch, path = "/api/admin/users/{id}", tag = "users", request_body = UserUpdate,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = UserRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_user(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(id): Path<String>,
    Body(b): Body<UserUpdate>,
) -> Result<Json<UserRow>, AdminError> {
    let u = iam::update_user(st.hub.store().as_ref(), &c.actor, &id, &b).await?;
    applied(&st).await;
    Ok(Json(u))
}

/// API keys visible to the caller (never the key itself).
#[utoipa::path(get, path = "/api/admin/keys", tag = "keys",
    responses((status = 200, body = [KeyView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_keys(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
) -> Result<Json<Vec<KeyView>>, AdminError> {
    Ok(Json(
        iam::list_keys(st.hub.store().as_ref(), &c.actor).await?,
    ))
}

/// Creates an API key for a user; the response is the only time the key is shown.
#[utoipa::path(post, path = "/api/admin/keys", tag = "keys", request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_key(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Body(b): Body<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), AdminError> {
    let k = iam::create_key(st.hub.store().as_ref(), &c.actor, &b).await?;
    applied(&st).await;
    Ok((StatusCode::CREATED, Json(k)))
}

/// Revokes a key, effective immediately.
#[utoipa::path(post, path = "/api/admin/keys/{id}/revoke", tag = "keys",
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_key(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, AdminError> {
    let k = iam::revoke_key(st.hub.store().as_ref(), &c.actor, &id).await?;
    applied(&st).await;
    Ok(Json(k))
}

/// Replaces a key's policy (models, surfaces, RPM, TPM, spend budget).
#[utoipa::path(put, path = "/api/admin/keys/{id}/policy", tag = "keys", request_body = KeyPolicy,
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_key_policy(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(id): Path<String>,
    Body(b): Body<KeyPolicy>,
) -> Result<Json<KeyView>, AdminError> {
    let k = iam::set_key_policy(st.hub.store().as_ref(), &c.actor, &id, &b).await?;
    applied(&st).await;
    Ok(Json(k))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    /// How many records (1 to 1000, default 100).
    pub limit: Option<u32>,
}

/// Usage records visible to the caller, newest first.
#[utoipa::path(get, path = "/api/admin/usage", tag = "usage", params(LimitQuery),
    responses((status = 200, body = [UsageRecord]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_usage(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<UsageRecord>>, AdminError> {
    Ok(Json(
        iam::list_usage(st.hub.store().as_ref(), &c.actor, q.limit.unwrap_or(100)).await?,
    ))
}

// ---------------------------------------------------------------------------------------------
// the caller's own

/// The caller's own API keys.
#[utoipa::path(get, path = "/api/me/keys", tag = "me",
    responses((status = 200, body = [KeyView]), (status = 401, body = ErrorBody)))]
pub async fn my_keys(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<Vec<KeyView>>, AdminError> {
    let keys = iam::list_keys(st.hub.store().as_ref(), &c.actor).await?;
    Ok(Json(
        keys.into_iter()
            .filter(|k| k.user_id == c.actor.user_id)
            .collect(),
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NewOwnKey {
    pub name: Option<String>,
    /// Expiry, milliseconds since the epoch.
    pub expires_at_ms: Option<i64>,
    pub policy: KeyPolicy,
}

/// Creates an API key for the caller (not guests); shown once.
#[utoipa::path(post, path = "/api/me/keys", tag = "me", request_body = NewOwnKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_my_key(
    State(st): State<AppState>,
    c: Caller,
    Body(b): Body<NewOwnKey>,
) -> Result<(StatusCode, Json<CreatedKey>), AdminError> {
    let new = NewKey {
        user_id: c.actor.user_id.clone(),
        name: b.name,
        team: None,
        expires_at_ms: b.expires_at_ms,
        policy: b.policy,
    };
    let k = iam::create_key(st.hub.store().as_ref(), &c.actor, &new).await?;
    applied(&st).await;
    Ok((StatusCode::CREATED, Json(k)))
}

/// Revokes one of the caller's own keys.
#[utoipa::path(post, path = "/api/me/keys/{id}/revoke", tag = "me",
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_my_key(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, AdminError> {
    let store = st.hub.store().as_ref();
    let own = iam::list_keys(store, &c.actor)
        .await?
        .into_iter()
        .any(|k| k.id == id && k.user_id == c.actor.user_id);
    if !own {
        return Err(AdminError(
            hub_core::HubError::new(hub_core::ErrorKind::NotFound, format!("no API key `{id}`"))
                .with_code("not_found"),
        ));
    }
    let k = iam::revoke_key(store, &c.actor, &id).await?;
    applied(&st).await;
    Ok(Json(k))
}

/// The caller's own usage records, newest first.
#[utoipa::path(get, path = "/api/me/usage", tag = "me", params(LimitQuery),
    responses((status = 200, body = [UsageRecord]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn my_usage(
    State(st): State<AppState>,
    c: Caller,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<UsageRecord>>, AdminError> {
    let own = iam::Actor {
        role: hub_core::auth::Role::Member,
        ..c.actor.clone()
    };
    Ok(Json(
        iam::list_usage(st.hub.store().as_ref(), &own, q.limit.unwrap_or(100)).await?,
    ))
}
