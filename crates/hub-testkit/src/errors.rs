//! Canonical error bodies per flavor and status (providers.md 1.4, 6, 7, 8, 9, 10, 11).

use serde_json::{Value, json};

use crate::Flavor;

/// Why the mock itself rejects a request (as opposed to a scripted error).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reject<'a> {
    /// Missing or wrong bearer key (401).
    Auth { key_hint: &'a str },
    /// Body is not JSON (400).
    BadJson,
    /// A required field is missing (400).
    Missing(&'a str),
    /// A parameter is not accepted (400).
    UnknownParam(&'a str),
    /// Route does not exist for this flavor (404): method, path.
    NoRoute(&'a str, &'a str),
}

/// The error body a flavor sends for one of the mock's own rejections.
pub(crate) fn reject_body(flavor: Flavor, reject: Reject<'_>, request_id: &str) -> (u16, Value) {
    match reject {
        Reject::Auth { key_hint } => (401, auth_body(flavor, key_hint, request_id)),
        Reject::BadJson => (
            400,
            shaped(
                flavor,
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
                None,
                None,
                request_id,
            ),
        ),
        Reject::Missing(field) => {
            let message = format!("Missing required parameter: '{field}'.");
            (
                400,
                shaped(
                    flavor,
                    400,
                    &message,
                    Some(field),
                    Some("missing_required_parameter"),
                    request_id,
                ),
            )
        }
        Reject::UnknownParam(field) => {
            let message = format!("Unknown parameter: '{field}'.");
            (
                400,
                shaped(
                    flavor,
                    400,
                    &message,
                    Some(field),
                    Some("unknown_parameter"),
                    request_id,
                ),
            )
        }
        Reject::NoRoute(method, path) => {
            let message = format!("Invalid URL ({method} {path})");
            (404, shaped(flavor, 404, &message, None, None, request_id))
        }
    }
}

fn auth_body(flavor: Flavor, key_hint: &str, request_id: &str) -> Value {
    match flavor {
        Flavor::OpenAi if key_hint.is_empty() => json!({"error": {
            "message": "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/API-keys.",
            "type": "invalid_request_error", "param": null, "code": null}}),
        Flavor::OpenAi | Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock => json!({"error": {
            "message": format!("Incorrect API key provided: {key_hint}. You can find your API key at https://platform.openai.com/account/api-keys."),
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
        Flavor::DeepSeek => json!({"error": {
            "message": format!("Authentication Fails, Your api key: {key_hint} is invalid"),
            "type": "authentication_error", "param": null, "code": "invalid_request_error"}}),
        Flavor::Xai => json!({
            "code": "Client specified an invalid argument",
            "error": format!("Incorrect API key provided: {key_hint}. You can obtain an API key from https://console.x.ai.")}),
        Flavor::OpenRouter => {
            json!({"error": {"message": "No auth credentials found", "code": 401}})
        }
        Flavor::Doubao => json!({"error": {
            "code": "AuthenticationError",
            "message": format!("The API key or AK/SK in the request is missing or invalid. Request id: {request_id}"),
            "param": "", "type": "Unauthorized"}}),
        Flavor::Poe => json!({"error": {
            "message": "Invalid API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        Flavor::Ollama => json!({"error": {
            "message": "unauthorized", "type": "api_error", "param": null, "code": null}}),
    }
}

/// The flavor's canonical error body for `status` (used when a script gives no body).
pub(crate) fn canonical_body(flavor: Flavor, status: u16, model: &str, request_id: &str) -> Value {
    if status == 401 {
        return auth_body(flavor, "sk-***", request_id);
    }
    match flavor {
        // Native flavors render their own bodies (anthropic.rs, gemini.rs, bedrock.rs).
        Flavor::OpenAi | Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock => {
            openai_canonical(status, model)
        }
        Flavor::DeepSeek => {
            let (message, kind) = match status {
                400 => (
                    "Invalid format: the request body format is invalid",
                    "invalid_request_error",
                ),
                402 => ("Insufficient Balance", "unknown_error"),
                422 => ("Invalid Parameters", "invalid_request_error"),
                429 => ("Rate Limit Reached", "rate_limit_error"),
                503 => ("Server Overloaded", "server_error"),
                _ if status >= 500 => ("Server Error", "server_error"),
                _ => ("Request failed", "invalid_request_error"),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": "invalid_request_error"}})
        }
        Flavor::Xai => match status {
            400 | 403 | 404 | 422 => {
                let code = match status {
                    403 => "The caller does not have permission to execute the specified operation",
                    404 => "Some requested entity was not found",
                    _ => "Client specified an invalid argument",
                };
                let error = if status == 404 {
                    format!(
                        "The model {model} does not exist or your team does not have access to it."
                    )
                } else if status == 403 {
                    "Your team does not have permission to use this model.".to_owned()
                } else {
                    "This model's maximum prompt length is 131072 but the request contains 140000 tokens.".to_owned()
                };
                json!({"code": code, "error": error})
            }
            _ => openai_canonical(status, model),
        },
        Flavor::OpenRouter => {
            let (message, metadata) = match status {
                400 => ("Invalid request".to_owned(), None),
                402 => (
                    "Insufficient credits. Add more using https://openrouter.ai/settings/credits"
                        .to_owned(),
                    None,
                ),
                403 => (
                    format!(
                        "{model} requires moderation on OpenAI. Your input was flagged for \"harassment\"."
                    ),
                    Some(json!({"reasons": ["harassment"], "flagged_input": "…",
                                "provider_name": "OpenAI", "model_slug": model})),
                ),
                404 => (format!("No endpoints found for {model}."), None),
                408 => ("Timed out".to_owned(), None),
                429 => (
                    format!("{model} is temporarily rate-limited upstream. Please retry shortly."),
                    Some(
                        json!({"raw": format!("{model} is temporarily rate-limited upstream."),
                                "provider_name": "OpenAI"}),
                    ),
                ),
                502 => (
                    "Provider returned error".to_owned(),
                    Some(json!({"raw": "upstream connect error", "provider_name": "OpenAI"})),
                ),
                503 => (
                    "No endpoints found that can handle the requested parameters.".to_owned(),
                    Some(json!({})),
                ),
                _ => ("Internal Server Error".to_owned(), None),
            };
            let mut error = json!({"code": status, "message": message});
            if let (Some(metadata), Some(obj)) = (metadata, error.as_object_mut()) {
                obj.insert("metadata".to_owned(), metadata);
            }
            json!({"error": error})
        }
        Flavor::Doubao => {
            let (code, kind, message, param) = match status {
                400 => (
                    "InvalidParameter",
                    "BadRequest",
                    "A parameter specified in the request is not valid".to_owned(),
                    "messages",
                ),
                403 => (
                    "AccessDenied",
                    "Forbidden",
                    "The request failed because you do not have access to the requested resource.".to_owned(),
                    "",
                ),
                404 => (
                    "InvalidEndpointOrModel.NotFound",
                    "NotFound",
                    format!("The model or endpoint {model} does not exist or you do not have access to it."),
                    "",
                ),
                429 => (
                    "RateLimitExceeded.EndpointRPMExceeded",
                    "TooManyRequests",
                    "The request has exceeded the rate limit of requests per minute (RPM) for the endpoint.".to_owned(),
                    "",
                ),
                503 => (
                    "ServerOverloaded",
                    "ServiceUnavailable",
                    "The service is currently unable to handle additional requests due to server overload.".to_owned(),
                    "",
                ),
                _ => (
                    "InternalServiceError",
                    "InternalServiceError",
                    "The service encountered an unexpected internal error.".to_owned(),
                    "",
                ),
            };
            json!({"error": {"code": code, "message": format!("{message} Request id: {request_id}"),
                             "param": param, "type": kind}})
        }
        Flavor::Poe => {
            let (message, kind, code) = match status {
                400 => (
                    format!("Model '{model}' does not exist"),
                    "invalid_request_error",
                    "model_not_found",
                ),
                402 => (
                    "You do not have enough points to complete this request".to_owned(),
                    "insufficient_points",
                    "insufficient_points",
                ),
                403 => (
                    "You do not have access to this bot".to_owned(),
                    "permission_error",
                    "permission_denied",
                ),
                404 => ("Not found".to_owned(), "not_found_error", "not_found"),
                429 => (
                    "Rate limit exceeded".to_owned(),
                    "rate_limit_error",
                    "rate_limit_exceeded",
                ),
                503 => (
                    "Service temporarily unavailable".to_owned(),
                    "server_error",
                    "overloaded",
                ),
                _ => (
                    "Internal server error".to_owned(),
                    "server_error",
                    "internal_error",
                ),
            };
            json!({"error": {"message": message, "type": kind, "code": code}})
        }
        Flavor::Ollama => {
            let (message, kind) = match status {
                400 => ("invalid request".to_owned(), "invalid_request_error"),
                404 => (
                    format!("model \"{model}\" not found, try pulling it first"),
                    "not_found_error",
                ),
                _ => (
                    "the model failed to generate a response".to_owned(),
                    "api_error",
                ),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
    }
}

fn openai_canonical(status: u16, model: &str) -> Value {
    match status {
        400 => json!({"error": {
            "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130532 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
        403 => {
            json!({"error": {"message": format!("You are not allowed to sample from this model: {model}"),
            "type": "invalid_request_error", "param": null, "code": null}})
        }
        404 => {
            json!({"error": {"message": format!("The model `{model}` does not exist or you do not have access to it."),
            "type": "invalid_request_error", "param": null, "code": "model_not_found"}})
        }
        429 => json!({"error": {
            "message": format!("Rate limit reached for {model} on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2s. Visit https://platform.openai.com/account/rate-limits to learn more."),
            "type": "tokens", "param": null, "code": "rate_limit_exceeded"}}),
        503 => {
            json!({"error": {"message": "The engine is currently overloaded, please try again later.",
            "type": "server_error", "param": null, "code": null}})
        }
        _ if status >= 500 => json!({"error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error", "param": null, "code": null}}),
        _ => json!({"error": {"message": format!("Request failed with status {status}"),
            "type": "invalid_request_error", "param": null, "code": null}}),
    }
}

/// A flavor-shaped body with a specific message (used for the mock's own rejections).
fn shaped(
    flavor: Flavor,
    status: u16,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
    request_id: &str,
) -> Value {
    match flavor {
        Flavor::OpenAi
        | Flavor::DeepSeek
        | Flavor::Anthropic
        | Flavor::Gemini
        | Flavor::Bedrock => json!({"error": {
            "message": message, "type": "invalid_request_error", "param": param,
            "code": code.map_or(Value::Null, Value::from)}}),
        Flavor::Xai => json!({
            "code": if status == 404 { "Some requested entity was not found" } else { "Client specified an invalid argument" },
            "error": message}),
        Flavor::OpenRouter => json!({"error": {"code": status, "message": message}}),
        Flavor::Doubao => {
            let (code, kind) = match (status, code) {
                (404, _) => ("NotFound", "NotFound"),
                (_, Some("missing_required_parameter")) => ("MissingParameter", "BadRequest"),
                _ => ("InvalidParameter", "BadRequest"),
            };
            json!({"error": {"code": code, "message": format!("{message} Request id: {request_id}"),
                "param": param.unwrap_or(""), "type": kind}})
        }
        Flavor::Poe => json!({"error": {"message": message,
            "type": if status == 404 { "not_found_error" } else { "invalid_request_error" },
            "code": code.unwrap_or(if status == 404 { "not_found" } else { "invalid_request" })}}),
        Flavor::Ollama => json!({"error": {"message": message,
            "type": if status == 404 { "not_found_error" } else { "invalid_request_error" },
            "param": null, "code": null}}),
    }
}

/// The error object of a mid-stream error event (the part under `"error"`).
pub(crate) fn stream_error_object(flavor: Flavor, request_id: &str) -> Value {
    match flavor {
        Flavor::OpenRouter => json!({"code": "server_error",
            "message": "Provider disconnected unexpectedly"}),
        Flavor::Doubao => json!({"code": "InternalServiceError",
            "message": format!("The service encountered an unexpected internal error. Request id: {request_id}"),
            "param": "", "type": "InternalServiceError"}),
        Flavor::Ollama => json!({"message": "the model failed to generate a response",
            "type": "api_error", "param": null, "code": null}),
        _ => {
            json!({"message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error"})
        }
    }
}
