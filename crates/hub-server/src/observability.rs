//! Operational views: `GET /api/admin/health` (per provider, credential and model) and
//! `GET /metrics` (Prometheus text format). Both need the owner or an admin without a team (they
//! describe the whole hub): the original served its health page publicly, which told anyone which
//! providers and keys were failing.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::admin::auth::{AdminCaller, AdminError, ErrorBody};

/// Health learned from traffic, per provider, credential and model: state (breakers, cool-downs,
/// disabled credentials), last error, latency, success rate, and the provider's timeouts in force.
/// Owner or an admin without a team.
#[utoipa::path(get, path = "/api/admin/health", tag = "operations",
    responses((status = 200, body = hub_core::health::HealthReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn health(
    State(st): State<AppState>,
    AdminCaller(caller): AdminCaller,
) -> Result<Response, AdminError> {
    hub_core::iam::require_all(&caller.actor)?;
    Ok(axum::Json(st.hub.health_report()).into_response())
}

/// Prometheus metrics in the text exposition format (version 0.0.4): requests, errors by class,
/// latency and time-to-first-token histograms, tokens, cost (`aigne_hub_cost_total`,
/// `aigne_hub_provider_cost_usd_total`), retries, open circuits, streams in flight, and the
/// store's group commits (commits, calls per commit, commit time, failed batches). Owner or an
/// admin without a team (Prometheus sends the API key as a bearer credential).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
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
