//! The route table. Paths only: handlers live with their ingress.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hub_core::{ErrorKind, HubError};
use serde_json::json;

use crate::aigne::handlers as aigne;
use crate::anthropic::handlers as anthropic;
use crate::errors::{ApiError, Format};
use crate::openai::handlers as oai;
use crate::{AppState, ServerOptions};

pub fn app(state: AppState, opts: &ServerOptions) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/chat/completions", post(oai::chat_completions))
        .route("/v1/embeddings", post(oai::embeddings))
        .route("/v1/images/generations", post(oai::images))
        .route("/v1/models", get(oai::models))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        // AIGNE Hub (the original's API, for existing AIGNE apps and tools)
        .route("/__blocklet__.js", get(aigne::blocklet))
        .route("/api/v2/chat", post(aigne::chat))
        .route("/api/v2/chat/completions", post(aigne::completions))
        .route("/api/v2/completions", post(aigne::completions))
        .route("/api/v2/image", post(aigne::image_invoke))
        .route("/api/v2/image/generations", post(aigne::image_generations))
        .route("/api/v2/embeddings", post(aigne::embeddings))
        .route("/api/v2/status", get(aigne::status))
        .route("/api/ai/models", get(aigne::models))
        // The original mounts its catalog router twice (`/api/ai` and `/api/ai-providers`);
        // `@blocklet/aigne-hub` reads the second.
        .route("/api/ai-providers/models", get(aigne::models))
        .route("/api/user/info", get(aigne::user_info))
        // /api/admin/*, /api/me/*, /api/openapi.json, and the admin-only operations
        // (/api/admin/health, /metrics): registered with their OpenAPI annotations in admin/mod.rs.
        .merge(crate::admin::router())
        .fallback(not_found)
        .layer(axum::middleware::map_response(ensure_request_id))
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .with_state(state)
}

/// Every response carries an `x-request-id`: the call's own id where a handler set one, else a
/// fresh one, so any response can be quoted in a support request.
async fn ensure_request_id(mut resp: Response) -> Response {
    if !resp.headers().contains_key("x-request-id")
        && let Ok(v) = axum::http::HeaderValue::from_str(&hub_core::hub::new_request_id())
    {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(st): State<AppState>) -> Response {
    if st.hub.ready().await {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store unreachable"})),
        )
            .into_response()
    }
}

async fn not_found(uri: Uri) -> Response {
    let e = HubError::new(ErrorKind::NotFound, format!("No route for {}", uri.path()))
        .with_code("not_found");
    let format = if uri.path().starts_with("/v1/messages") {
        Format::Anthropic
    } else if uri.path().starts_with("/v1/") {
        Format::OpenAi
    } else {
        Format::Hub
    };
    ApiError {
        error: e,
        format,
        request_id: None,
    }
    .into_response()
}
