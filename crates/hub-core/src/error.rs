//! Errors: what went wrong upstream (`ProviderError`, classified by the provider module) and what the
//! caller is told (`HubError`, with exactly one status per kind). Ingress codecs render a `HubError`
//! in the caller's own format; nothing here knows about HTTP frameworks.

use std::time::Duration;

/// Class of an upstream failure, decided by the provider module that saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The provider rejected the hub's credential (401/403).
    Auth,
    /// Rate limited (429 and friends); retryable after a delay.
    RateLimited,
    /// The provider account is out of quota or credit (OpenAI `insufficient_quota`, 402); not retryable.
    QuotaExceeded,
    /// The provider says the request is invalid (400/422).
    InvalidRequest,
    /// The prompt does not fit the model's context window.
    ContextLength,
    /// The provider does not know the model (404).
    NotFound,
    /// Provider overloaded (529, 503 "overloaded").
    Overloaded,
    /// Provider-side failure (5xx).
    Server,
    /// No answer in time.
    Timeout,
    /// Could not connect.
    Connect,
    /// The provider answered something the hub cannot parse.
    Protocol,
    /// The provider does not offer this operation (e.g. embeddings on DeepSeek).
    Unsupported,
    /// The stream broke after it had started.
    StreamInterrupted,
    /// Content blocked by the provider's filter.
    ContentFilter,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Auth => "upstream_auth",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::QuotaExceeded => "upstream_quota",
            ErrorClass::InvalidRequest => "invalid_request",
            ErrorClass::ContextLength => "context_length",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Overloaded => "overloaded",
            ErrorClass::Server => "server_error",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Protocol => "protocol",
            ErrorClass::Unsupported => "unsupported",
            ErrorClass::StreamInterrupted => "stream_interrupted",
            ErrorClass::ContentFilter => "content_filter",
        }
    }

    /// Whether another attempt (another credential or provider) may succeed.
    pub fn retryable(self) -> bool {
        match self {
            ErrorClass::Auth
            | ErrorClass::RateLimited
            | ErrorClass::Overloaded
            | ErrorClass::Server
            | ErrorClass::Timeout
            | ErrorClass::Connect
            | ErrorClass::Protocol
            | ErrorClass::NotFound
            | ErrorClass::Unsupported => true,
            ErrorClass::QuotaExceeded
            | ErrorClass::InvalidRequest
            | ErrorClass::ContextLength
            | ErrorClass::StreamInterrupted
            | ErrorClass::ContentFilter => false,
        }
    }
}

/// A failure talking to a provider.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{class:?} (status {status:?}): {message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    /// Upstream HTTP status, when there was one.
    pub status: Option<u16>,
    /// The provider's message (never contains the credential).
    pub message: String,
    /// The provider's own error code/type, when it gave one.
    pub code: Option<String>,
    /// Delay the provider asked for (Retry-After, retry-after-ms, RetryInfo).
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> ProviderError {
        ProviderError {
            class,
            status: None,
            message: message.into(),
            code: None,
            retry_after: None,
        }
    }

    pub fn unsupported(what: &str) -> ProviderError {
        ProviderError::new(
            ErrorClass::Unsupported,
            format!("{what} is not supported by this provider"),
        )
    }

    pub fn with_status(mut self, status: u16) -> ProviderError {
        self.status = Some(status);
        self
    }

    /// Classifies a transport error of the upstream client.
    pub fn from_transport(err: &crate::upstream_http::TransportError) -> ProviderError {
        use crate::upstream_http::TransportKind;
        let class = match err.kind() {
            TransportKind::Timeout => ErrorClass::Timeout,
            TransportKind::Connect | TransportKind::Request => ErrorClass::Connect,
            TransportKind::Body => ErrorClass::StreamInterrupted,
        };
        // The client's errors name neither the URL nor a header, so no credential can leak here.
        ProviderError::new(class, format!("transport error: {err}"))
    }
}

/// What the caller is told. One status per kind, decided in `status()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's request is malformed or invalid.
    InvalidRequest,
    /// No or unknown credentials.
    Unauthenticated,
    /// Authenticated but not allowed.
    PermissionDenied,
    /// Unknown model or no provider serves it.
    ModelNotFound,
    /// Unknown route or object.
    NotFound,
    /// The object already exists (or changed meanwhile).
    Conflict,
    /// Body over the configured limit.
    PayloadTooLarge,
    /// Rate limited (by the hub or upstream with nobody else to serve).
    RateLimited,
    /// Not enough credits.
    InsufficientCredits,
    /// The API key's spend budget for the current period does not cover the call (429).
    BudgetExceeded,
    /// Upstream failed (bad gateway).
    Upstream,
    /// Upstream unavailable / overloaded.
    Unavailable,
    /// Upstream did not answer in time.
    Timeout,
    /// A bug or a store failure on our side.
    Internal,
}

/// An error the caller sees.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HubError {
    pub kind: ErrorKind,
    pub message: String,
    /// The offending parameter, for invalid requests.
    pub param: Option<String>,
    /// A machine code (`model_not_found`, `rate_limit_exceeded`, ...).
    pub code: Option<String>,
    /// The provider involved, for upstream errors.
    pub provider: Option<String>,
    pub retry_after: Option<Duration>,
    /// The class of the upstream failure behind this error, if any (recorded with usage).
    pub class: Option<ErrorClass>,
}

impl HubError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> HubError {
        HubError {
            kind,
            message: message.into(),
            param: None,
            code: None,
            provider: None,
            retry_after: None,
            class: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> HubError {
        HubError::new(ErrorKind::InvalidRequest, message)
    }

    pub fn invalid_param(param: &str, message: impl Into<String>) -> HubError {
        let mut e = HubError::invalid(message);
        e.param = Some(param.to_string());
        e
    }

    pub fn unauthenticated(message: impl Into<String>) -> HubError {
        HubError::new(ErrorKind::Unauthenticated, message).with_code("invalid_api_key")
    }

    pub fn model_not_found(model: &str) -> HubError {
        HubError::new(
            ErrorKind::ModelNotFound,
            format!("The model `{model}` does not exist or no configured provider serves it."),
        )
        .with_code("model_not_found")
        .with_param("model")
    }

    /// 402: not enough credits for this call (before any upstream traffic). `link` is where to buy
    /// more (the `billing.payment_link` setting; ingresses that render it as a field, such as the
    /// AIGNE `/api` one, read it from `Hub::billing().payment_link`).
    pub fn insufficient_credits(link: Option<String>) -> HubError {
        let message = match link {
            Some(l) => format!(
                "Hello, in order to continue using AI services, please first buy some credits in the link below. {l}"
            ),
            None => {
                "You do not have enough credits for this call. Ask an administrator to grant more."
                    .to_string()
            }
        };
        HubError::new(ErrorKind::InsufficientCredits, message).with_code("insufficient_quota")
    }

    pub fn internal(message: impl Into<String>) -> HubError {
        HubError::new(ErrorKind::Internal, message)
    }

    pub fn with_code(mut self, code: &str) -> HubError {
        self.code = Some(code.to_string());
        self
    }

    pub fn with_param(mut self, param: &str) -> HubError {
        self.param = Some(param.to_string());
        self
    }

    /// The HTTP status for this kind. Exhaustive on purpose: a new kind must choose its status.
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::InsufficientCredits => 402,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::ModelNotFound | ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RateLimited | ErrorKind::BudgetExceeded => 429,
            ErrorKind::Internal => 500,
            ErrorKind::Upstream => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }

    /// A short class name for usage records and metrics.
    pub fn class_name(&self) -> &'static str {
        if let Some(class) = self.class {
            return class.as_str();
        }
        match self.kind {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::InsufficientCredits => "insufficient_credits",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::Upstream => "upstream_error",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }

    /// Turns a provider failure into what the caller sees, naming the provider.
    pub fn from_provider(provider: &str, err: &ProviderError) -> HubError {
        let (kind, message, code) = match err.class {
            ErrorClass::Auth => (
                ErrorKind::Upstream,
                format!("{provider} rejected the hub's credential: {}", err.message),
                Some("upstream_auth_error"),
            ),
            ErrorClass::RateLimited => (
                ErrorKind::RateLimited,
                format!("{provider} is rate limiting requests: {}", err.message),
                Some("rate_limit_exceeded"),
            ),
            ErrorClass::QuotaExceeded => (
                ErrorKind::RateLimited,
                format!("{provider} quota exhausted: {}", err.message),
                Some("insufficient_quota"),
            ),
            ErrorClass::InvalidRequest => (
                ErrorKind::InvalidRequest,
                format!("{provider} rejected the request: {}", err.message),
                err.code.as_deref(),
            ),
            ErrorClass::ContextLength => (
                ErrorKind::InvalidRequest,
                format!("{provider}: {}", err.message),
                Some("context_length_exceeded"),
            ),
            ErrorClass::NotFound => (
                ErrorKind::ModelNotFound,
                format!("{provider} does not serve this model: {}", err.message),
                Some("model_not_found"),
            ),
            ErrorClass::Overloaded => (
                ErrorKind::Unavailable,
                format!(
                    "{provider} is overloaded, please try again later: {}",
                    err.message
                ),
                Some("provider_overloaded"),
            ),
            ErrorClass::Server | ErrorClass::Protocol | ErrorClass::StreamInterrupted => (
                ErrorKind::Upstream,
                format!("{provider} service error: {}", err.message),
                Some("upstream_error"),
            ),
            ErrorClass::Connect => (
                ErrorKind::Upstream,
                format!("could not reach {provider}: {}", err.message),
                Some("upstream_unreachable"),
            ),
            ErrorClass::Timeout => (
                ErrorKind::Timeout,
                format!("{provider} did not answer in time"),
                Some("upstream_timeout"),
            ),
            ErrorClass::Unsupported => (
                ErrorKind::InvalidRequest,
                format!("{provider}: {}", err.message),
                Some("unsupported_operation"),
            ),
            ErrorClass::ContentFilter => (
                ErrorKind::InvalidRequest,
                format!("{provider} blocked the content: {}", err.message),
                Some("content_filter"),
            ),
        };
        HubError {
            kind,
            message,
            param: None,
            code: code.map(str::to_string),
            provider: Some(provider.to_string()),
            retry_after: err.retry_after,
            class: Some(err.class),
        }
    }
}

/// Parses `Retry-After` (seconds or HTTP date) and `retry-after-ms` header values.
pub fn parse_retry_after(
    retry_after: Option<&str>,
    retry_after_ms: Option<&str>,
) -> Option<Duration> {
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_millis(ms as u64));
    }
    let v = retry_after?.trim();
    if let Ok(secs) = v.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_millis((secs * 1000.0) as u64));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_stable() {
        assert_eq!(HubError::model_not_found("x").status(), 404);
        assert_eq!(HubError::unauthenticated("x").status(), 401);
        let rl = HubError::from_provider(
            "openai",
            &ProviderError::new(ErrorClass::RateLimited, "slow down"),
        );
        assert_eq!(rl.status(), 429);
        let srv =
            HubError::from_provider("openai", &ProviderError::new(ErrorClass::Server, "boom"));
        assert_eq!(srv.status(), 502);
        assert!(srv.message.contains("openai"));
        let t = HubError::from_provider("xai", &ProviderError::new(ErrorClass::Timeout, ""));
        assert_eq!(t.status(), 504);
        let o = HubError::from_provider("xai", &ProviderError::new(ErrorClass::Overloaded, ""));
        assert_eq!(o.status(), 503);
    }

    #[test]
    fn retry_after_parses() {
        assert_eq!(
            parse_retry_after(Some("2"), None),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(Some("1.5"), None),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after(Some("x"), Some("250")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), None),
            None
        );
        assert_eq!(parse_retry_after(None, None), None);
    }
}
