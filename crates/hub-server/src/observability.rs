//! Operational views: `GET /api/admin/health` (per provider, credential and model) and
//! `GET /metrics` (Prometheus text format). Both need the owner or an admin without a team (they
//! describe the whole hub): the original served its health page publicly, which told anyone which
//! providers and keys were failing.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::admin::auth::{AdminCaller, AdminError};

/// `GET /api/admin/health`.
pub async fn health(
    State(st): State<AppState>,
    AdminCaller(caller): AdminCaller,
) -> Result<Response, AdminError> {
    hub_core::iam::require_all(&caller.actor)?;
    Ok(axum::Json(st.hub.health_report()).into_response())
}

/// `GET /metrics`.
pub async fn metrics(
    State(st): State<AppState>,
    AdminCaller(caller): AdminCaller,
) -> Result<Response, AdminError> {
    hub_core::iam::require_all(&caller.actor)?;
    let mut resp = st.hub.metrics_text().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}
