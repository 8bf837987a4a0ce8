//! Renders a `HubError` in each caller's own format. The only place statuses and error bodies are
//! turned into HTTP; handlers return `Result<_, ApiError>`.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hub_core::{ErrorKind, HubError};
use serde_json::json;

/// Which API shape the error is rendered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"error":{"message","type","param","code"}}` (`/v1/*` OpenAI routes).
    OpenAi,
    /// `{"error":{"message","type"}}` (`/api/*` and everything else).
    Hub,
    /// `{"type":"error","error":{"type","message"},"request_id"}` (`/v1/messages*`).
    Anthropic,
}

/// An error on its way to the caller, with the request id it belongs to.
#[derive(Debug)]
pub struct ApiError {
    pub error: HubError,
    pub format: Format,
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn openai(error: HubError) -> ApiError {
        ApiError {
            error,
            format: Format::OpenAi,
            request_id: None,
        }
    }

    pub fn anthropic(error: HubError) -> ApiError {
        ApiError {
            error,
            format: Format::Anthropic,
            request_id: None,
        }
    }

    pub fn with_request_id(mut self, id: &str) -> ApiError {
        self.request_id = Some(id.to_string());
        self
    }
}

/// OpenAI's `type` for each kind.
pub fn openai_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest
        | ErrorKind::ModelNotFound
        | ErrorKind::NotFound
        | ErrorKind::Conflict
        | ErrorKind::PayloadTooLarge
        | ErrorKind::Unauthenticated => "invalid_request_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::RateLimited => "rate_limit_exceeded",
        ErrorKind::InsufficientCredits | ErrorKind::BudgetExceeded => "insufficient_quota",
        ErrorKind::Upstream | ErrorKind::Unavailable | ErrorKind::Timeout => "upstream_error",
        ErrorKind::Internal => "server_error",
    }
}

/// The JSON body of an error in OpenAI's shape.
pub fn openai_body(e: &HubError) -> serde_json::Value {
    json!({"error": {
        "message": e.message,
        "type": openai_type(e.kind),
        "param": e.param,
        "code": e.code,
    }})
}

/// Anthropic's error `type` and HTTP status for each kind. The status is the hub's one
/// (`HubError::status`) except for an overloaded or unavailable upstream, which Anthropic signals
/// with 529 `overloaded_error` (its SDKs raise `OverloadedError` for it and retry).
pub fn anthropic_type_and_status(e: &HubError) -> (&'static str, u16) {
    let status = e.status();
    let ty = match e.kind {
        ErrorKind::InvalidRequest | ErrorKind::Conflict => "invalid_request_error",
        ErrorKind::Unauthenticated => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::ModelNotFound | ErrorKind::NotFound => "not_found_error",
        ErrorKind::PayloadTooLarge => "request_too_large",
        ErrorKind::RateLimited | ErrorKind::BudgetExceeded => "rate_limit_error",
        ErrorKind::InsufficientCredits => "billing_error",
        ErrorKind::Upstream | ErrorKind::Internal => "api_error",
        ErrorKind::Unavailable => return ("overloaded_error", 529),
        ErrorKind::Timeout => "timeout_error",
    };
    (ty, status)
}

/// The JSON body of an error in Anthropic's shape (`request_id` when known, as Anthropic sends it).
pub fn anthropic_body(e: &HubError, request_id: Option<&str>) -> serde_json::Value {
    let (ty, _) = anthropic_type_and_status(e);
    let mut body = json!({"type": "error", "error": {"type": ty, "message": e.message}});
    if let (Some(id), Some(obj)) = (request_id, body.as_object_mut()) {
        obj.insert("request_id".into(), json!(id));
    }
    body
}

fn hub_body(e: &HubError) -> serde_json::Value {
    json!({"error": {"message": e.message, "type": e.code.as_deref().unwrap_or_else(|| e.class_name())}})
}

/// Headers every error carries: Retry-After where known.
pub fn error_headers(e: &HubError, headers: &mut HeaderMap) {
    if let Some(after) = e.retry_after {
        let secs = after.as_millis().div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            headers.insert("retry-after", v);
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self.format {
            Format::OpenAi => (self.error.status(), openai_body(&self.error)),
            Format::Hub => (self.error.status(), hub_body(&self.error)),
            Format::Anthropic => (
                anthropic_type_and_status(&self.error).1,
                anthropic_body(&self.error, self.request_id.as_deref()),
            ),
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(body)).into_response();
        error_headers(&self.error, resp.headers_mut());
        if let Some(id) = self
            .request_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            if self.format == Format::Anthropic {
                // Anthropic's own header (the SDK exposes it as `_request_id`).
                resp.headers_mut().insert("request-id", id.clone());
            }
            resp.headers_mut().insert("x-request-id", id);
        }
        resp
    }
}
