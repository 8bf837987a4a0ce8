//! Providers and credentials (`/api/admin/{providers,credentials}`), and the audit log. Owner and
//! admins without a team only; credential values are sealed on the way in and never returned.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hub_core::iam::{self, CredentialUpdate, NewCredential, ProviderSettingsIn};
use hub_core::store::iam::{AuditEntry, AuditQuery};
use hub_core::store::{CredentialRow, ProviderRow};
use hub_core::timeouts::{ProviderTimeouts, TimeoutSettings};
use serde::Deserialize;

use super::applied;
use super::auth::{AdminCaller, AdminError, Body, ErrorBody, Query};
use crate::AppState;

/// Configured providers.
#[utoipa::path(get, path = "/api/admin/providers", tag = "providers",
    responses((status = 200, body = [ProviderRow]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_providers(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
) -> Result<Json<Vec<ProviderRow>>, AdminError> {
    Ok(Json(
        iam::list_providers(st.hub.store().as_ref(), &c.actor).await?,
    ))
}

/// Adds or updates a provider: enabled, base URL, region.
#[utoipa::path(put, path = "/api/admin/providers/{name}", tag = "providers", request_body = ProviderSettingsIn,
    params(("name" = String, Path, description = "provider: openai, anthropic, bedrock, google, deepseek, ollama, openrouter, xai, doubao, poe")),
    responses((status = 200, body = ProviderRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_provider(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(name): Path<String>,
    Body(b): Body<ProviderSettingsIn>,
) -> Result<Json<ProviderRow>, AdminError> {
    iam::require_all(&c.actor)?;
    let kind = iam::parse_provider(&name)?;
    let row = iam::upsert_provider(st.hub.store().as_ref(), &c.actor, kind, &b).await?;
    applied(&st).await;
    Ok(Json(row))
}

/// Removes a provider and its credentials.
#[utoipa::path(delete, path = "/api/admin/providers/{name}", tag = "providers",
    params(("name" = String, Path, description = "provider")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_provider(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(name): Path<String>,
) -> Result<StatusCode, AdminError> {
    iam::require_all(&c.actor)?;
    let kind = iam::parse_provider(&name)?;
    iam::delete_provider(st.hub.store().as_ref(), &c.actor, kind).await?;
    applied(&st).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A provider's timeouts: stored, and in force (stored > the provider's env > `HUB_TIMEOUT_*` >
/// default). The provider need not be configured.
#[utoipa::path(get, path = "/api/admin/providers/{name}/timeouts", tag = "providers",
    params(("name" = String, Path, description = "provider")),
    responses((status = 200, body = ProviderTimeouts), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_provider_timeouts(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(name): Path<String>,
) -> Result<Json<ProviderTimeouts>, AdminError> {
    iam::require_all(&c.actor)?;
    let kind = iam::parse_provider(&name)?;
    Ok(Json(timeouts_view(&st, kind).await?))
}

/// Replaces a provider's stored timeouts (milliseconds, 1 to 86400000; connect and first-byte no
/// longer than total). An absent field uses the environment's value; `{}` clears them all. Every
/// running server applies them within a second.
#[utoipa::path(put, path = "/api/admin/providers/{name}/timeouts", tag = "providers", request_body = TimeoutSettings,
    params(("name" = String, Path, description = "provider")),
    responses((status = 200, body = ProviderTimeouts), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_provider_timeouts(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(name): Path<String>,
    Body(b): Body<TimeoutSettings>,
) -> Result<Json<ProviderTimeouts>, AdminError> {
    iam::require_all(&c.actor)?;
    let kind = iam::parse_provider(&name)?;
    iam::set_provider_timeouts(st.hub.store().as_ref(), &c.actor, kind, &b).await?;
    applied(&st).await;
    Ok(Json(timeouts_view(&st, kind).await?))
}

async fn timeouts_view(
    st: &AppState,
    kind: hub_core::providers::ProviderKind,
) -> Result<ProviderTimeouts, AdminError> {
    st.hub.provider_timeouts(kind).await.map_err(|e| {
        tracing::error!(error = %e, "reading stored timeouts failed");
        AdminError(hub_core::HubError::internal(
            "the stored timeouts could not be read",
        ))
    })
}

/// Credentials, masked (first 4 + last 4).
#[utoipa::path(get, path = "/api/admin/credentials", tag = "credentials",
    responses((status = 200, body = [CredentialRow]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_credentials(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
) -> Result<Json<Vec<CredentialRow>>, AdminError> {
    Ok(Json(
        iam::list_credentials(st.hub.store().as_ref(), &c.actor).await?,
    ))
}

/// Adds a credential (sealed with the vault; the response shows it masked).
#[utoipa::path(post, path = "/api/admin/credentials", tag = "credentials", request_body = NewCredential,
    responses((status = 201, body = CredentialRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_credential(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Body(b): Body<NewCredential>,
) -> Result<(StatusCode, Json<CredentialRow>), AdminError> {
    let vault = st.hub.vault();
    let row = iam::add_credential(st.hub.store().as_ref(), &vault, &c.actor, &b).await?;
    applied(&st).await;
    Ok((StatusCode::CREATED, Json(row)))
}

/// Updates a credential: name, weight, enabled, or a new value.
#[utoipa::path(patch, path = "/api/admin/credentials/{id}", tag = "credentials", request_body = CredentialUpdate,
    params(("id" = String, Path, description = "credential id")),
    responses((status = 200, body = CredentialRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_credential(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(id): Path<String>,
    Body(b): Body<CredentialUpdate>,
) -> Result<Json<CredentialRow>, AdminError> {
    let vault = st.hub.vault();
    let row = iam::update_credential(st.hub.store().as_ref(), &vault, &c.actor, &id, &b).await?;
    applied(&st).await;
    Ok(Json(row))
}

/// Deletes a credential.
#[utoipa::path(delete, path = "/api/admin/credentials/{id}", tag = "credentials",
    params(("id" = String, Path, description = "credential id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_credential(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    iam::delete_credential(st.hub.store().as_ref(), &c.actor, &id).await?;
    applied(&st).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TestCredentialIn {
    /// The model to call (default: the provider's cheapest known chat model).
    pub model: Option<String>,
}

/// Tests a credential (enabled or not) with one short call to its provider; never falls back.
#[utoipa::path(post, path = "/api/admin/credentials/{id}/test", tag = "credentials", request_body(content = TestCredentialIn, description = "optional; an empty body is allowed"),
    params(("id" = String, Path, description = "credential id")),
    responses((status = 200, body = hub_core::hub::CredentialTest), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn test_credential(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Path(id): Path<String>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<hub_core::hub::CredentialTest>, AdminError> {
    iam::require_all(&c.actor)?;
    let body = body.map_err(|rej| AdminError(crate::request::body_error(&rej)))?;
    let input: TestCredentialIn = if body.iter().all(u8::is_ascii_whitespace) {
        TestCredentialIn::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            AdminError(hub_core::HubError::invalid(format!(
                "Invalid JSON body: {e}"
            )))
        })?
    };
    Ok(Json(
        iam::test_credential(&st.hub, &c.actor, &id, input.model.as_deref()).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// How many entries (1 to 1000, default 100).
    pub limit: Option<u32>,
    /// Only this action (`key.revoke`, `credential.update`, ...).
    pub action: Option<String>,
    /// Only this actor (user id).
    pub actor: Option<String>,
    /// Only entries about this object (a user, key, credential, provider, price or account id).
    pub target: Option<String>,
    /// Only entries at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only entries before this time (ms since the epoch).
    pub until_ms: Option<i64>,
}

/// The audit log of admin mutations, newest first (a team admin sees their team's).
#[utoipa::path(get, path = "/api/admin/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = [AuditEntry]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_audit(
    State(st): State<AppState>,
    AdminCaller(c): AdminCaller,
    Query(q): Query<AuditParams>,
) -> Result<Json<Vec<AuditEntry>>, AdminError> {
    let query = AuditQuery {
        limit: q.limit.unwrap_or(100),
        action: q.action,
        actor_user_id: q.actor,
        team_id: None,
        since_ms: q.since_ms,
        target: q.target,
        until_ms: q.until_ms,
    };
    Ok(Json(
        iam::list_audit(st.hub.store().as_ref(), &c.actor, query).await?,
    ))
}
