//! What every handler needs from a request: the bearer token, the call context (request id,
//! app attribution), and the body within its limit.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use hub_core::auth::Principal;
use hub_core::{CallContext, ErrorKind, Hub, HubError};

/// `Authorization: Bearer <key>` (or `x-api-key: <key>`, as Anthropic SDKs send it).
pub fn bearer(headers: &HeaderMap) -> &str {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Some(rest) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return rest.trim();
        }
        return "";
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("")
}

/// The caller's principal: the hub's own keys, then (on a miss) the embedding host's identity
/// resolver, if one is installed (its answers are cached; see `Hub::identify`).
pub async fn authenticate(hub: &Hub, headers: &HeaderMap) -> Result<Arc<Principal>, HubError> {
    hub.identify(bearer(headers)).await
}

/// Decodes `%XX` escapes (the AIGNE client URI-encodes its DID header).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Builds the call context from headers: the hub's request id, the caller's `x-request-id`, and
/// the calling app (`x-aigne-hub-client-did`).
pub fn call_context(
    principal: Arc<Principal>,
    headers: &HeaderMap,
    ingress: &'static str,
) -> CallContext {
    let mut ctx = CallContext::new(principal, ingress);
    ctx.client_request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string);
    ctx.app = headers
        .get("x-aigne-hub-client-did")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(|v| percent_decode(v).chars().take(300).collect());
    ctx
}

/// A body the server refused to read.
///
/// A body that was read is dropped by its handler as soon as it is parsed: its bytes share the
/// connection's read buffer, and while a call holds them (a stream, until its first upstream
/// event) hyper must take a second buffer for its next read, 8 KB more per call in flight.
pub fn body_error(rej: &BytesRejection) -> HubError {
    if rej.status().as_u16() == 413 {
        HubError::new(
            ErrorKind::PayloadTooLarge,
            "Request body is larger than this hub accepts.",
        )
        .with_code("request_too_large")
    } else {
        HubError::invalid(format!("Could not read the request body: {rej}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(
            percent_decode("%40aigne%2Faigne-hub%3Ahost"),
            "@aigne/aigne-hub:host"
        );
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
        assert_eq!(percent_decode("%"), "%");
    }
}
