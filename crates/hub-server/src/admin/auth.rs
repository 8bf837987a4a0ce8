//! Extractors of the `/api` routes: who is calling (`Caller`, any valid key; `AdminCaller`, owner or
//! admin), JSON bodies and query strings whose errors come out in the hub's error format
//! (`{"error":{"message","type"}}`). Other `/api/admin/*` handlers (health, metrics) use
//! `AdminCaller` too.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hub_core::HubError;
use hub_core::auth::Principal;
use hub_core::iam::Actor;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::errors::{ApiError, Format};
use crate::request::bearer;

/// An error of an `/api` route, rendered as `{"error":{"message","type"}}`.
#[derive(Debug)]
pub struct AdminError(pub HubError);

impl From<HubError> for AdminError {
    fn from(e: HubError) -> Self {
        AdminError(e)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        ApiError {
            error: self.0,
            format: Format::Hub,
            request_id: None,
        }
        .into_response()
    }
}

/// The error body of every `/api` route.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// Machine-readable kind: `invalid_api_key`, `permission_denied`, `not_found`, ...
    #[serde(rename = "type")]
    pub kind: String,
}

/// Any caller with a valid, unexpired, unrevoked API key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub actor: Actor,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let principal = st.hub.authenticate(bearer(&parts.headers))?;
        let actor = Actor::from_principal(&principal);
        Ok(Caller { principal, actor })
    }
}

/// A caller with the owner or admin role (of everything, or of a team).
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Caller);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, st).await?;
        hub_core::iam::require_admin(&caller.actor)?;
        Ok(AdminCaller(caller))
    }
}

/// A JSON body; malformed JSON or unknown fields are a 400 in the hub's format.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, st)
            .await
            .map_err(|rej| AdminError(crate::request::body_error(&rej)))?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| AdminError(HubError::invalid(format!("Invalid JSON body: {e}"))))
    }
}

/// A query string; invalid values are a 400 in the hub's format.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for Query<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, st)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| {
                AdminError(HubError::invalid(format!(
                    "Invalid query string: {}",
                    e.body_text()
                )))
            })
    }
}
