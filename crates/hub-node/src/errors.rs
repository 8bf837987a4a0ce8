//! `HubError` -> JS error. The reason is `HUB_ERROR:` + JSON `{code, status, message, ...}`; the
//! TypeScript wrapper turns it into a `HubError` with `code` and `status` properties.
//!
//! `code` is stable and chosen here, one per `ErrorKind` (exhaustive: a new kind must choose);
//! `status` is hub-core's HTTP status for the kind, so the in-process API and the HTTP API agree.

use hub_core::{ErrorKind, HubError};
use serde_json::json;

/// Prefix of the reason of every error this module raises on purpose.
pub(crate) const PREFIX: &str = "HUB_ERROR:";

pub(crate) fn code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest => "INVALID_REQUEST",
        ErrorKind::Unauthenticated => "UNAUTHENTICATED",
        ErrorKind::PermissionDenied => "PERMISSION_DENIED",
        ErrorKind::ModelNotFound => "MODEL_NOT_FOUND",
        ErrorKind::NotFound => "NOT_FOUND",
        ErrorKind::Conflict => "CONFLICT",
        ErrorKind::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
        ErrorKind::RateLimited => "RATE_LIMITED",
        ErrorKind::InsufficientCredits => "INSUFFICIENT_CREDITS",
        ErrorKind::BudgetExceeded => "BUDGET_EXCEEDED",
        ErrorKind::Upstream => "UPSTREAM_ERROR",
        ErrorKind::Unavailable => "UPSTREAM_UNAVAILABLE",
        ErrorKind::Timeout => "UPSTREAM_TIMEOUT",
        ErrorKind::Internal => "INTERNAL",
    }
}

fn raise(code: &str, status: u16, e: &HubError) -> napi::Error {
    let body = json!({
        "code": code,
        "status": status,
        "message": e.message,
        "type": e.class_name(),
        "param": e.param,
        "upstreamCode": e.code,
        "provider": e.provider,
        "retryAfterMs": e.retry_after.map(|d| d.as_millis() as u64),
    });
    napi::Error::from_reason(format!("{PREFIX}{body}"))
}

/// The JS error for a hub error.
pub(crate) fn hub_err(e: &HubError) -> napi::Error {
    raise(code(e.kind), e.status(), e)
}

/// The caller's own mistake (bad JSON, bad option).
pub(crate) fn invalid(e: HubError) -> napi::Error {
    hub_err(&e)
}

/// A call on a hub after `close()`.
pub(crate) fn closed() -> napi::Error {
    raise(
        "HUB_CLOSED",
        503,
        &HubError::new(ErrorKind::Unavailable, "the hub is closed"),
    )
}
