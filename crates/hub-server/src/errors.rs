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
        | ErrorKind::PayloadTooLarge
        | ErrorKind::Unauthenticated => "invalid_request_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::RateLimited => "rate_limit_exceeded",
        ErrorKind::InsufficientCredits => "insufficient_quota",
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
        let status =
            StatusCode::from_u16(self.error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match self.format {
            Format::OpenAi => openai_body(&self.error),
            Format::Hub => hub_body(&self.error),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        error_headers(&self.error, resp.headers_mut());
        if let Some(id) = self
            .request_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            resp.headers_mut().insert("x-request-id", id);
        }
        resp
    }
}
