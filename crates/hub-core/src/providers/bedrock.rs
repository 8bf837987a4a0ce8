//! Amazon Bedrock Runtime (providers.md §4): Converse, ConverseStream (binary
//! `application/vnd.amazon.eventstream`, decoded with CRC checks by `aws-smithy-eventstream`),
//! InvokeModel for embeddings; every request SigV4-signed (`aws-sigv4`, service `bedrock`).
//!
//! Anatomy: model ids -> signing -> `impl Provider` -> error classification -> stream decoding ->
//! request building -> response/usage normalisation -> tests.
//!
//! Decisions:
//! - Credentials: access key id = `api_key`, secret = `secret_key`, optional `session_token`. A
//!   credential with an `api_key` and no secret is a Bedrock API key, sent as `Bearer`.
//! - Region: from the provider settings (default `us-east-1`); it is part of the signature scope.
//! - Bare Claude names (`claude-sonnet-4-5`) map to Bedrock ids through [`model_id_for`]; models
//!   that Bedrock serves only through cross-region inference profiles get the region's geo prefix
//!   (`us.`, `eu.`, `apac.`) at call time.
//! - Embeddings: Titan text (one input per call, looped) and Cohere embed (one batch call).
//! - Remote image URLs are rejected with a 400 (Converse takes bytes only); send `data:` URLs.
//! - Reasoning: `reasoningContent.reasoningText.{text,signature}` and `redactedContent` (base64)
//!   become reasoning blocks, both in responses and in stream deltas; with thinking on they go
//!   back unchanged, in order, before the assistant turn's text and `toolUse` blocks.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::event_stream::{HeaderValue as EsValue, Message as EsMessage};
use bytes::BytesMut;
use futures::StreamExt;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

use super::{EventStream, Provider, Upstream};
use crate::error::{ErrorClass, ProviderError, parse_retry_after};
use crate::types::{
    AssistantOutput, ChatRequest, ChatResponse, ContentPart, Embedding, EmbeddingsRequest,
    EmbeddingsResponse, FinishReason, GeneratedImage, ImageSource, ImagesRequest, ImagesResponse,
    Message, ReasoningBlock, Role, StreamEvent, ToolCall, ToolChoice, Usage,
};
use crate::upstream_http::Response;

/// The Bedrock provider module.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bedrock;

const DEFAULT_REGION: &str = "us-east-1";
const SIGNING_NAME: &str = "bedrock";

/// Bare Claude names -> Bedrock model ids, and whether the model is served only through a
/// cross-region inference profile. Longest prefix first.
const CLAUDE_IDS: &[(&str, &str, bool)] = &[
    (
        "claude-sonnet-4-5",
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        true,
    ),
    (
        "claude-haiku-4-5",
        "anthropic.claude-haiku-4-5-20251001-v1:0",
        true,
    ),
    (
        "claude-opus-4-1",
        "anthropic.claude-opus-4-1-20250805-v1:0",
        true,
    ),
    (
        "claude-opus-4",
        "anthropic.claude-opus-4-20250514-v1:0",
        true,
    ),
    (
        "claude-sonnet-4",
        "anthropic.claude-sonnet-4-20250514-v1:0",
        true,
    ),
    (
        "claude-3-7-sonnet",
        "anthropic.claude-3-7-sonnet-20250219-v1:0",
        true,
    ),
    (
        "claude-3-5-haiku",
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        false,
    ),
    (
        "claude-3-5-sonnet",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        false,
    ),
    (
        "claude-3-haiku",
        "anthropic.claude-3-haiku-20240307-v1:0",
        false,
    ),
    (
        "claude-3-opus",
        "anthropic.claude-3-opus-20240229-v1:0",
        false,
    ),
];

/// The Bedrock model id for a bare model name (`claude-sonnet-4-5` ->
/// `anthropic.claude-sonnet-4-5-20250929-v1:0`), or `None` when Bedrock does not serve it.
pub fn model_id_for(model: &str) -> Option<&'static str> {
    let m = model.to_ascii_lowercase();
    CLAUDE_IDS
        .iter()
        .find(|(prefix, _, _)| {
            m == *prefix
                || m.strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('-') && rest[1..].starts_with("20"))
        })
        .map(|(_, id, _)| *id)
}

/// Adds the region's geo prefix to ids Bedrock serves only through inference profiles.
fn invocation_id(model: &str, region: &str) -> String {
    let needs_profile = CLAUDE_IDS.iter().any(|(_, id, p)| *p && *id == model);
    if !needs_profile {
        return model.to_string();
    }
    let geo = match region.split('-').next() {
        Some("eu") => "eu",
        Some("ap") => "apac",
        _ => "us",
    };
    format!("{geo}.{model}")
}

/// Path segment encoding: everything but unreserved characters (`:` -> `%3A`, `/` -> `%2F`).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn region(up: &Upstream<'_>) -> String {
    up.settings
        .region
        .clone()
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_REGION.to_string())
}

/// Signs (or bearer-authenticates) a request; returns the headers to send.
fn auth_headers(
    up: &Upstream<'_>,
    url: &http::Uri,
    body: &[u8],
    accept: &'static str,
) -> Result<HeaderMap, ProviderError> {
    let auth_err = |m: &str| ProviderError::new(ErrorClass::Auth, m.to_string());
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("accept", HeaderValue::from_static(accept));
    let Some(key_id) = up.credential.api_key.as_ref() else {
        return Err(auth_err("no AWS credentials configured for Bedrock"));
    };
    let Some(secret) = up.credential.secret_key.as_ref() else {
        // A Bedrock API key.
        let mut v = HeaderValue::from_str(&format!("Bearer {}", key_id.expose()))
            .map_err(|_| auth_err("credential contains invalid characters"))?;
        v.set_sensitive(true);
        headers.insert(AUTHORIZATION, v);
        return Ok(headers);
    };
    // As the client sends `host`: the port only when it is not the scheme's default.
    let default_port = if url.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    let host = match (url.host(), url.port_u16()) {
        (Some(h), Some(p)) if p != default_port => format!("{h}:{p}"),
        (Some(h), _) => h.to_string(),
        (None, _) => {
            return Err(ProviderError::new(
                ErrorClass::Connect,
                "base URL has no host",
            ));
        }
    };
    let creds = Credentials::new(
        key_id.expose(),
        secret.expose(),
        up.credential
            .session_token
            .as_ref()
            .map(|t| t.expose().to_string()),
        None,
        "aigne-hub",
    );
    let identity: Identity = creds.into();
    let region = region(up);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name(SIGNING_NAME)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| auth_err(&format!("cannot sign: {e}")))?
        .into();
    let signed_headers = [
        ("content-type", "application/json"),
        ("host", host.as_str()),
    ];
    let uri = url.to_string();
    let signable = SignableRequest::new(
        "POST",
        &uri,
        signed_headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| auth_err(&format!("cannot sign: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| auth_err(&format!("cannot sign: {e}")))?
        .into_parts();
    for (name, value) in instructions.headers() {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| auth_err("signer produced an invalid header"))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| auth_err("credential contains invalid characters"))?;
        if name == AUTHORIZATION || name.as_str() == "x-amz-security-token" {
            value.set_sensitive(true);
        }
        headers.insert(name, value);
    }
    Ok(headers)
}

impl Bedrock {
    async fn post(
        up: &Upstream<'_>,
        model: &str,
        op: &str,
        body: &Value,
        accept: &'static str,
    ) -> Result<Response, ProviderError> {
        let url = format!(
            "{}/model/{}/{op}",
            up.base_url.trim_end_matches('/'),
            utf8_percent_encode(model, PATH_SEGMENT)
        );
        let url = super::endpoint_url(&url)?;
        let bytes = super::json_bytes(body)?;
        let headers = auth_headers(up, &url, &bytes, accept)?;
        super::send_post(up.http.post(url).headers(headers), bytes, classify_error).await
    }

    async fn post_json(
        up: &Upstream<'_>,
        model: &str,
        op: &str,
        body: &Value,
    ) -> Result<(Vec<u8>, HeaderMap), ProviderError> {
        let resp = Self::post(up, model, op, body, "application/json").await?;
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        Ok((bytes.to_vec(), headers))
    }
}

#[async_trait::async_trait]
impl Provider for Bedrock {
    async fn chat(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let body = build_body(req)?;
        let model = invocation_id(up.model, &region(&up));
        let (bytes, headers) = Self::post_json(&up, &model, "converse", &body).await?;
        parse_response(&bytes, up.model, request_id(&headers))
    }

    async fn chat_stream(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<EventStream, ProviderError> {
        let body = build_body(req)?;
        let model = invocation_id(up.model, &region(&up));
        let resp = Self::post(
            &up,
            &model,
            "converse-stream",
            &body,
            "application/vnd.amazon.eventstream",
        )
        .await?;
        let id = request_id(resp.headers());
        Ok(decode_stream(resp, up.model.to_string(), id))
    }

    /// `CountTokens` (`POST /model/{modelId}/count-tokens`, `{"input":{"converse":{messages,
    /// system}}}` -> `{"inputTokens": N}`). It takes bare foundation-model ids only (inference
    /// profiles and models without counting are a `ValidationException`; the hub then estimates).
    async fn count_tokens(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<u64, ProviderError> {
        let full = build_body(req)?;
        let mut converse = Map::new();
        for key in ["messages", "system"] {
            if let Some(v) = full.get(key) {
                converse.insert(key.into(), v.clone());
            }
        }
        let body = json!({"input": {"converse": Value::Object(converse)}});
        let (bytes, _) = Self::post_json(&up, up.model, "count-tokens", &body).await?;
        super::count_in(&bytes, "inputTokens", "CountTokens")
    }

    /// Amazon Nova Canvas / Titan Image Generator v2 through InvokeModel (`TEXT_IMAGE`); the
    /// images come back as base64 (`b64_json`), Bedrock has no URLs.
    async fn images(
        &self,
        up: Upstream<'_>,
        req: &ImagesRequest,
    ) -> Result<ImagesResponse, ProviderError> {
        let body = image_body(up.model, req)?;
        let (bytes, _) = Self::post_json(&up, up.model, "invoke", &body).await?;
        parse_image_response(&bytes, up.model)
    }

    async fn embeddings(
        &self,
        up: Upstream<'_>,
        req: &EmbeddingsRequest,
    ) -> Result<EmbeddingsResponse, ProviderError> {
        let texts: Vec<&str> = match &req.input {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) if items.iter().all(Value::is_string) => {
                items.iter().filter_map(Value::as_str).collect()
            }
            _ => {
                return Err(ProviderError::new(
                    ErrorClass::InvalidRequest,
                    "Bedrock embeddings take text input only (a string or an array of strings)",
                ));
            }
        };
        let protocol_err = |e: serde_json::Error| {
            ProviderError::new(
                ErrorClass::Protocol,
                format!("malformed embeddings response: {e}"),
            )
        };
        let mut data = Vec::with_capacity(texts.len());
        let mut prompt_tokens = 0u64;
        if up.model.starts_with("cohere.embed") {
            let mut body = json!({"texts": texts, "input_type": "search_document"});
            if let (Some(d), Some(o)) = (req.dimensions, body.as_object_mut()) {
                o.insert("output_dimension".into(), json!(d));
            }
            let (bytes, headers) = Self::post_json(&up, up.model, "invoke", &body).await?;
            let v: Value = serde_json::from_slice(&bytes).map_err(protocol_err)?;
            let vectors = v
                .get("embeddings")
                .and_then(|e| e.get("float").or(Some(e)))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for e in vectors {
                data.push(Embedding {
                    index: data.len() as u32,
                    embedding: e,
                });
            }
            prompt_tokens += header_count(&headers);
        } else if up.model.starts_with("amazon.titan-embed") {
            // Titan takes one input per call.
            for &text in &texts {
                let mut body = json!({"inputText": text});
                if let Some(o) = body.as_object_mut() {
                    if let Some(d) = req.dimensions {
                        o.insert("dimensions".into(), json!(d));
                    }
                    if up.model.contains("text-v2") {
                        o.insert("normalize".into(), json!(true));
                    }
                }
                let (bytes, headers) = Self::post_json(&up, up.model, "invoke", &body).await?;
                let v: Value = serde_json::from_slice(&bytes).map_err(protocol_err)?;
                prompt_tokens += v
                    .get("inputTextTokenCount")
                    .and_then(Value::as_u64)
                    .unwrap_or_else(|| header_count(&headers));
                data.push(Embedding {
                    index: data.len() as u32,
                    embedding: v.get("embedding").cloned().unwrap_or(Value::Array(vec![])),
                });
            }
        } else {
            return Err(ProviderError::new(
                ErrorClass::InvalidRequest,
                format!(
                    "`{}` is not a Bedrock embedding model the hub knows (amazon.titan-embed-*, cohere.embed-*)",
                    up.model
                ),
            ));
        }
        if data.len() != texts.len() {
            return Err(ProviderError::new(
                ErrorClass::Protocol,
                format!("asked for {} embeddings, got {}", texts.len(), data.len()),
            ));
        }
        if req.encoding_format.as_deref() == Some("base64") {
            for e in &mut data {
                e.embedding = super::embedding_as_base64(std::mem::take(&mut e.embedding));
            }
        }
        Ok(EmbeddingsResponse {
            model: up.model.to_string(),
            data,
            usage: Usage {
                prompt_tokens,
                estimated: prompt_tokens == 0,
                ..Usage::default()
            },
            cost: None,
        })
    }
}

fn header_count(headers: &HeaderMap) -> u64 {
    headers
        .get("x-amzn-bedrock-input-token-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The error code: `x-amzn-ErrorType` first, else body `code` / `__type`; stripped after `:` and
/// up to `#` (smithy `json_errors.rs`).
fn error_code(headers: &HeaderMap, body: &Value) -> Option<String> {
    let raw = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            body.get("code")
                .or_else(|| body.get("__type"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })?;
    let raw = raw.split(':').next().unwrap_or(&raw);
    let raw = raw.rsplit('#').next().unwrap_or(raw);
    Some(raw.to_string())
}

fn class_for(code: &str, status: u16, message: &str) -> ErrorClass {
    let msg_l = message.to_ascii_lowercase();
    let code_l = code.to_ascii_lowercase();
    match code_l.trim_end_matches("exception") {
        "validation"
            if msg_l.contains("too long")
                || msg_l.contains("too many tokens")
                || msg_l.contains("context")
                || msg_l.contains("exceeds the maximum") =>
        {
            ErrorClass::ContextLength
        }
        "validation" => ErrorClass::InvalidRequest,
        "accessdenied"
        | "unrecognizedclient"
        | "invalidsignature"
        | "expiredtoken"
        | "incompletesignature"
        | "missingauthenticationtoken"
        | "signaturedoesnotmatch" => ErrorClass::Auth,
        "resourcenotfound" => ErrorClass::NotFound,
        "throttling" => ErrorClass::RateLimited,
        "servicequotaexceeded" => ErrorClass::QuotaExceeded,
        "modelnotready" | "serviceunavailable" => ErrorClass::Overloaded,
        "modeltimeout" => ErrorClass::Timeout,
        "modelerror" | "internalserver" | "modelstreamerror" => ErrorClass::Server,
        _ => match status {
            400 | 413 | 422 => ErrorClass::InvalidRequest,
            401 | 403 => ErrorClass::Auth,
            404 => ErrorClass::NotFound,
            408 | 504 => ErrorClass::Timeout,
            429 => ErrorClass::RateLimited,
            503 => ErrorClass::Overloaded,
            _ => ErrorClass::Server,
        },
    }
}

/// Classifies an HTTP error (`x-amzn-ErrorType` + `{"message"}`).
pub fn classify_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = error_code(headers, &v);
    let message = ["message", "Message", "errorMessage"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    ProviderError {
        class: class_for(code.as_deref().unwrap_or(""), status, &message),
        status: Some(status),
        message,
        code,
        retry_after: parse_retry_after(
            headers.get("retry-after").and_then(|v| v.to_str().ok()),
            None,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Usage, stop reasons, responses

/// providers.md §12.1: `inputTokens` excludes cache reads/writes; the canonical prompt includes them.
fn normalise_usage(u: Option<&Value>) -> Usage {
    let Some(u) = u else {
        return Usage {
            estimated: true,
            ..Usage::default()
        };
    };
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let read = n("cacheReadInputTokens");
    let write = n("cacheWriteInputTokens");
    Usage {
        prompt_tokens: n("inputTokens") + read + write,
        completion_tokens: n("outputTokens"),
        cache_read_tokens: read,
        cache_write_tokens: write,
        reasoning_tokens: 0,
        images: 0,
        estimated: u.get("inputTokens").is_none() && u.get("outputTokens").is_none(),
    }
}

/// providers.md §12.2.
pub fn map_stop_reason(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn new_id() -> String {
    format!("bedrock-{}", uuid::Uuid::new_v4().simple())
}

/// Parses a Converse response.
pub fn parse_response(
    bytes: &[u8],
    model: &str,
    request_id: Option<String>,
) -> Result<ChatResponse, ProviderError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        ProviderError::new(ErrorClass::Protocol, format!("malformed response: {e}"))
    })?;
    let mut output = AssistantOutput::default();
    let mut text = String::new();
    let mut reasoning = String::new();
    for block in v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(tu) = block.get("toolUse") {
            output.tool_calls.push(ToolCall {
                id: tu
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                name: tu
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                arguments: tu
                    .get("input")
                    .cloned()
                    .unwrap_or_else(|| json!({}))
                    .to_string(),
                signature: None,
            });
        } else if let Some(rt) = block.pointer("/reasoningContent/reasoningText") {
            let t = rt.get("text").and_then(Value::as_str).unwrap_or_default();
            reasoning.push_str(t);
            output.reasoning_blocks.push(ReasoningBlock::Thinking {
                text: t.to_string(),
                signature: rt
                    .get("signature")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            });
        } else if let Some(data) = block
            .pointer("/reasoningContent/redactedContent")
            .and_then(Value::as_str)
        {
            output.reasoning_blocks.push(ReasoningBlock::Redacted {
                data: data.to_string(),
            });
        }
    }
    output.content = (!text.is_empty() || output.tool_calls.is_empty()).then_some(text);
    output.reasoning = (!reasoning.is_empty()).then_some(reasoning);
    Ok(ChatResponse {
        id: request_id.unwrap_or_else(new_id),
        model: model.to_string(),
        created: super::openai::unix_now(),
        finish_reason: map_stop_reason(
            v.get("stopReason")
                .and_then(Value::as_str)
                .unwrap_or("end_turn"),
        ),
        output,
        usage: normalise_usage(v.get("usage")),
        provider_cost: None,
        cost: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Streaming

fn header_str<'a>(msg: &'a EsMessage, name: &str) -> Option<&'a str> {
    msg.headers().iter().find_map(|h| {
        if h.name().as_str() != name {
            return None;
        }
        match h.value() {
            EsValue::String(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

struct StreamState {
    model: String,
    id: Option<String>,
    started: bool,
    /// contentBlockIndex -> tool index
    tool_blocks: Vec<(u64, u32)>,
    tools: u32,
    stop_reason: Option<String>,
    usage: Option<Value>,
}

impl StreamState {
    fn on_message(
        &mut self,
        msg: &EsMessage,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ProviderError> {
        let payload: Value = serde_json::from_slice(msg.payload()).unwrap_or(Value::Null);
        match header_str(msg, ":message-type") {
            Some("exception") => {
                let code = header_str(msg, ":exception-type").unwrap_or("internalServerException");
                let message = payload
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("Bedrock stream exception")
                    .to_string();
                return Err(ProviderError {
                    class: class_for(code, 0, &message),
                    status: None,
                    message,
                    code: Some(code.to_string()),
                    retry_after: None,
                });
            }
            Some("error") => {
                let code = header_str(msg, ":error-code").unwrap_or("error");
                let message = header_str(msg, ":error-message").unwrap_or("Bedrock stream error");
                return Err(ProviderError {
                    class: ErrorClass::Server,
                    status: None,
                    message: message.to_string(),
                    code: Some(code.to_string()),
                    retry_after: None,
                });
            }
            _ => {}
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: self.id.clone().unwrap_or_else(new_id),
                model: self.model.clone(),
            });
        }
        let block = payload.get("contentBlockIndex").and_then(Value::as_u64);
        match header_str(msg, ":event-type").unwrap_or_default() {
            "contentBlockStart" => {
                if let Some(tu) = payload.pointer("/start/toolUse") {
                    let index = self.tools;
                    self.tools += 1;
                    self.tool_blocks.push((block.unwrap_or(0), index));
                    out.push(StreamEvent::ToolCallDelta {
                        index,
                        id: tu
                            .get("toolUseId")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        name: tu.get("name").and_then(Value::as_str).map(str::to_string),
                        arguments: String::new(),
                    });
                }
            }
            "contentBlockDelta" => {
                let delta = payload.get("delta").cloned().unwrap_or(Value::Null);
                if let Some(t) = delta.get("text").and_then(Value::as_str) {
                    if !t.is_empty() {
                        out.push(StreamEvent::TextDelta {
                            text: t.to_string(),
                        });
                    }
                } else if let Some(args) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
                    let b = block.unwrap_or(0);
                    let index = self
                        .tool_blocks
                        .iter()
                        .find(|(blk, _)| *blk == b)
                        .map(|(_, i)| *i)
                        .ok_or_else(|| {
                            ProviderError::new(
                                ErrorClass::Protocol,
                                "tool input delta without a tool block",
                            )
                        })?;
                    if !args.is_empty() {
                        out.push(StreamEvent::ToolCallDelta {
                            index,
                            id: None,
                            name: None,
                            arguments: args.to_string(),
                        });
                    }
                } else if let Some(rc) = delta.get("reasoningContent") {
                    if let Some(r) = rc.get("text").and_then(Value::as_str)
                        && !r.is_empty()
                    {
                        out.push(StreamEvent::ReasoningDelta {
                            text: r.to_string(),
                        });
                    }
                    if let Some(sig) = rc.get("signature").and_then(Value::as_str) {
                        out.push(StreamEvent::ReasoningSignature {
                            signature: sig.to_string(),
                        });
                    }
                    if let Some(data) = rc.get("redactedContent").and_then(Value::as_str) {
                        out.push(StreamEvent::RedactedReasoning {
                            data: data.to_string(),
                        });
                    }
                }
            }
            "messageStop" => {
                self.stop_reason = Some(
                    payload
                        .get("stopReason")
                        .and_then(Value::as_str)
                        .unwrap_or("end_turn")
                        .to_string(),
                );
            }
            "metadata" => self.usage = payload.get("usage").cloned(),
            // messageStart, contentBlockStop, unknown events.
            _ => {}
        }
        Ok(())
    }

    fn finish(&self, out: &mut Vec<StreamEvent>) -> bool {
        let Some(reason) = &self.stop_reason else {
            return false;
        };
        out.push(StreamEvent::Finish {
            reason: map_stop_reason(reason),
        });
        out.push(StreamEvent::Usage {
            usage: normalise_usage(self.usage.as_ref()),
        });
        true
    }
}

fn decode_stream(resp: Response, model: String, id: Option<String>) -> EventStream {
    let mut bytes = resp.bytes_stream();
    let stream = async_stream::stream! {
        let mut state = StreamState { model, id, started: false, tool_blocks: Vec::new(), tools: 0, stop_reason: None, usage: None };
        let mut decoder = MessageFrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new(); // taken before yielding: no buffer kept between chunks
        while let Some(chunk) = bytes.next().await {
            match chunk {
                Ok(c) => buf.extend_from_slice(&c),
                Err(e) => {
                    yield Err(ProviderError::new(ErrorClass::StreamInterrupted, format!("stream broke: {}", ProviderError::from_transport(&e).message)));
                    return;
                }
            }
            loop {
                match decoder.decode_frame(&mut buf) {
                    Ok(DecodedFrame::Complete(msg)) => {
                        let result = state.on_message(&msg, &mut out);
                        for ev in std::mem::take(&mut out) {
                            yield Ok(ev);
                        }
                        if let Err(e) = result {
                            yield Err(e);
                            return;
                        }
                    }
                    Ok(DecodedFrame::Incomplete) => break,
                    Err(e) => {
                        // Includes CRC mismatches.
                        yield Err(ProviderError::new(ErrorClass::Protocol, format!("bad event-stream frame: {e}")));
                        return;
                    }
                }
            }
        }
        if state.finish(&mut out) {
            for ev in std::mem::take(&mut out) {
                yield Ok(ev);
            }
        } else {
            yield Err(ProviderError::new(
                ErrorClass::StreamInterrupted,
                "upstream closed the stream before messageStop",
            ));
        }
    };
    Box::pin(stream)
}

// ---------------------------------------------------------------------------------------------
// Request building

fn image_format(media_type: &str) -> Option<&'static str> {
    match media_type {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

fn blocks_of(m: &Message) -> Result<Vec<Value>, ProviderError> {
    let mut out = Vec::with_capacity(m.content.len());
    for p in &m.content {
        match p {
            ContentPart::Text { text } if text.is_empty() => {}
            ContentPart::Text { text } => out.push(json!({"text": text})),
            ContentPart::Image {
                source: ImageSource::Base64 { media_type, data },
                ..
            } => {
                let Some(format) = image_format(media_type) else {
                    return Err(ProviderError::new(
                        ErrorClass::InvalidRequest,
                        format!("Bedrock takes png, jpeg, gif or webp images, not {media_type}"),
                    ));
                };
                out.push(json!({"image": {"format": format, "source": {"bytes": data}}}));
            }
            ContentPart::Image {
                source: ImageSource::Url { .. },
                ..
            } => {
                return Err(ProviderError::new(
                    ErrorClass::InvalidRequest,
                    "Bedrock cannot fetch remote image URLs; send the image inline as a \
                     data:<mime>;base64,<bytes> URL",
                ));
            }
        }
    }
    Ok(out)
}

/// An assistant turn's signed reasoning as Converse `reasoningContent` blocks, in order
/// (unsigned reasoning is not sent: Bedrock's Claude models reject it).
fn reasoning_blocks(m: &Message) -> Vec<Value> {
    m.reasoning_blocks
        .iter()
        .filter_map(|b| match b {
            ReasoningBlock::Thinking {
                text,
                signature: Some(sig),
            } if !sig.is_empty() => Some(
                json!({"reasoningContent": {"reasoningText": {"text": text, "signature": sig}}}),
            ),
            ReasoningBlock::Thinking { .. } => None,
            ReasoningBlock::Redacted { data } => {
                Some(json!({"reasoningContent": {"redactedContent": data}}))
            }
        })
        .collect()
}

fn messages_to_wire(
    messages: &[Message],
    thinking_on: bool,
) -> Result<(Vec<Value>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in messages {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                let t = m.joined_text();
                if !t.is_empty() {
                    system.push(json!({"text": t}));
                }
                continue;
            }
            Role::User => ("user", blocks_of(m)?),
            Role::Assistant => {
                let mut blocks = if thinking_on {
                    reasoning_blocks(m)
                } else {
                    Vec::new()
                };
                blocks.extend(blocks_of(m)?);
                for c in &m.tool_calls {
                    let input = match serde_json::from_str::<Value>(&c.arguments) {
                        Ok(v @ Value::Object(_)) => v,
                        _ if c.arguments.trim().is_empty() => json!({}),
                        _ => {
                            return Err(ProviderError::new(
                                ErrorClass::InvalidRequest,
                                format!(
                                    "tool call `{}` has arguments that are not a JSON object",
                                    c.id
                                ),
                            ));
                        }
                    };
                    blocks.push(
                        json!({"toolUse": {"toolUseId": c.id, "name": c.name, "input": input}}),
                    );
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let text = m.joined_text();
                let content = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => json!([{"json": v}]),
                    _ => json!([{"text": text}]),
                };
                (
                    "user",
                    vec![
                        json!({"toolResult": {"toolUseId": m.tool_call_id.clone().unwrap_or_default(),
                        "content": content, "status": "success"}}),
                    ],
                )
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((r, last)) if *r == role => last.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }
    let messages = out
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, messages))
}

/// Whether InvokeModel of `model` generates images with the `TEXT_IMAGE` body.
fn is_image_model(model: &str) -> bool {
    let bare = model.rsplit('/').next().unwrap_or(model);
    bare.starts_with("amazon.nova-canvas") || bare.starts_with("amazon.titan-image-generator")
}

/// The InvokeModel body of Nova Canvas / Titan Image Generator v2: `taskType: TEXT_IMAGE`,
/// `textToImageParams` (`text`, optional `negativeText` from `extra.negative_prompt`),
/// `imageGenerationConfig` (`numberOfImages` 1-5, `width`/`height` from `size`, `quality`
/// `premium` for `hd`/`high`/`premium` else `standard`, optional `seed` / `cfgScale` from `extra`).
pub fn image_body(model: &str, req: &ImagesRequest) -> Result<Value, ProviderError> {
    let bad = |m: String| ProviderError::new(ErrorClass::InvalidRequest, m);
    if !is_image_model(model) {
        return Err(bad(format!(
            "`{model}` does not generate images on this hub; Bedrock image generation takes              amazon.nova-canvas-v1:0 or amazon.titan-image-generator-v2:0"
        )));
    }
    if req.prompt.trim().is_empty() {
        return Err(bad("prompt must not be empty".into()));
    }
    let n = req.n.unwrap_or(1);
    if !(1..=5).contains(&n) {
        return Err(bad(format!(
            "n must be between 1 and 5 for Bedrock image models, not {n}"
        )));
    }
    let (width, height) = match req.size.as_deref() {
        None | Some("auto") => (1024u32, 1024u32),
        Some(s) => s
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .ok_or_else(|| {
                bad(format!(
                    "size must be WIDTHxHEIGHT (e.g. 1024x1024), not `{s}`"
                ))
            })?,
    };
    let quality = match req.quality.as_deref() {
        Some("hd" | "high" | "premium") => "premium",
        _ => "standard",
    };
    let mut params = Map::new();
    params.insert("text".into(), json!(req.prompt));
    if let Some(neg) = req.extra.get("negative_prompt").and_then(Value::as_str) {
        params.insert("negativeText".into(), json!(neg));
    }
    let mut config = Map::new();
    config.insert("numberOfImages".into(), json!(n));
    config.insert("width".into(), json!(width));
    config.insert("height".into(), json!(height));
    config.insert("quality".into(), json!(quality));
    if let Some(seed) = req.extra.get("seed").and_then(Value::as_u64) {
        config.insert("seed".into(), json!(seed));
    }
    if let Some(cfg) = req.extra.get("cfg_scale").and_then(Value::as_f64) {
        config.insert("cfgScale".into(), json!(cfg));
    }
    Ok(
        json!({"taskType": "TEXT_IMAGE", "textToImageParams": params,
        "imageGenerationConfig": config}),
    )
}

/// `{"images": [base64, ...], "error": "..."}` -> images; an `error` with no image is a refusal
/// (content filter).
pub fn parse_image_response(bytes: &[u8], model: &str) -> Result<ImagesResponse, ProviderError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        ProviderError::new(
            ErrorClass::Protocol,
            format!("malformed image response: {e}"),
        )
    })?;
    let data: Vec<GeneratedImage> = v
        .get("images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|b64| GeneratedImage {
            b64_json: Some(b64.to_string()),
            url: None,
            revised_prompt: None,
        })
        .collect();
    if data.is_empty() {
        let reason = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the model returned no image");
        return Err(ProviderError::new(
            ErrorClass::ContentFilter,
            reason.to_string(),
        ));
    }
    Ok(ImagesResponse {
        created: super::openai::unix_now(),
        model: model.to_string(),
        usage: Usage {
            images: data.len() as u64,
            ..Usage::default()
        },
        data,
        cost: None,
    })
}

/// Builds a Converse request body.
pub fn build_body(req: &ChatRequest) -> Result<Value, ProviderError> {
    let budget = req.reasoning_effort.as_deref().and_then(|e| match e {
        "low" | "minimal" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16_384),
        _ => None,
    });
    let (system, messages) = messages_to_wire(&req.messages, budget.is_some())?;
    let mut body = Map::new();
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    let mut inference = Map::new();
    if let Some(m) = req.max_tokens {
        inference.insert("maxTokens".into(), json!(m));
    }
    if let Some(t) = req.temperature {
        inference.insert("temperature".into(), json!(t));
    }
    if let Some(t) = req.top_p {
        inference.insert("topP".into(), json!(t));
    }
    if !req.stop.is_empty() {
        inference.insert("stopSequences".into(), json!(req.stop));
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if !req.tools.is_empty() && req.tool_choice != Some(ToolChoice::None) {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let schema = if t.parameters.is_null() {
                    json!({"type":"object","properties":{}})
                } else {
                    t.parameters.clone()
                };
                let mut spec = json!({"name": t.name, "inputSchema": {"json": schema}});
                if let (Some(d), Some(o)) = (&t.description, spec.as_object_mut()) {
                    o.insert("description".into(), json!(d));
                }
                json!({"toolSpec": spec})
            })
            .collect();
        let mut config = json!({"tools": tools});
        let choice = match &req.tool_choice {
            Some(ToolChoice::Required) => Some(json!({"any": {}})),
            Some(ToolChoice::Function { name }) => Some(json!({"tool": {"name": name}})),
            _ => None,
        };
        if let (Some(c), Some(o)) = (choice, config.as_object_mut()) {
            o.insert("toolChoice".into(), c);
        }
        body.insert("toolConfig".into(), config);
    }
    if let Some(budget) = budget {
        body.insert(
            "additionalModelRequestFields".into(),
            json!({"thinking": {"type": "enabled", "budget_tokens": budget}}),
        );
    }
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::read_message_from;
    use base64::Engine as _;

    #[test]
    fn nova_canvas_bodies_responses_and_prices() {
        let req = ImagesRequest {
            model: "bedrock/amazon.nova-canvas-v1:0".into(),
            prompt: "a red cube".into(),
            n: Some(2),
            size: Some("1280x720".into()),
            quality: Some("hd".into()),
            extra: [
                ("negative_prompt".to_string(), json!("blur")),
                ("seed".to_string(), json!(7)),
            ]
            .into_iter()
            .collect(),
            ..ImagesRequest::default()
        };
        let b = image_body("amazon.nova-canvas-v1:0", &req).ok();
        assert_eq!(
            b,
            Some(json!({"taskType": "TEXT_IMAGE",
                "textToImageParams": {"text": "a red cube", "negativeText": "blur"},
                "imageGenerationConfig": {"numberOfImages": 2, "width": 1280, "height": 720,
                    "quality": "premium", "seed": 7}}))
        );
        let class = |model: &str, r: &ImagesRequest| image_body(model, r).err().map(|e| e.class);
        assert_eq!(class("amazon.titan-image-generator-v2:0", &req), None);
        assert_eq!(
            class("amazon.nova-lite-v1:0", &req),
            Some(ErrorClass::InvalidRequest)
        );
        let too_many = ImagesRequest {
            n: Some(6),
            ..req.clone()
        };
        assert_eq!(
            class("amazon.nova-canvas-v1:0", &too_many),
            Some(ErrorClass::InvalidRequest)
        );
        let bad_size = ImagesRequest {
            size: Some("big".into()),
            ..req.clone()
        };
        assert_eq!(
            class("amazon.nova-canvas-v1:0", &bad_size),
            Some(ErrorClass::InvalidRequest)
        );

        let r = parse_image_response(br#"{"images":["aGk=","aGk="],"error":null}"#, "m").ok();
        assert_eq!(r.map(|r| (r.data.len(), r.usage.images)), Some((2, 2)));
        let e = parse_image_response(
            br#"{"images":[],"error":"This request has been blocked by our content filters."}"#,
            "m",
        );
        assert_eq!(e.err().map(|e| e.class), Some(ErrorClass::ContentFilter));

        // Metered per image at the list price (Nova Canvas: $0.04 standard, $0.06 premium <= 1024;
        // $0.06 / $0.08 at 2048).
        let book = crate::pricing::PriceBook::new(crate::pricing::builtin_prices(
            &crate::pricing::PricingSettings::default(),
        ));
        let unit = |model: &str, q: Option<&str>, s: Option<&str>| {
            book.get(
                super::super::ProviderKind::Bedrock,
                model,
                crate::types::ModelType::Image,
            )
            .and_then(|p| p.unit.as_ref().map(|u| u.image_rate(q, s)))
            .map(|d| d.to_string())
        };
        let nova = "amazon.nova-canvas-v1:0";
        assert_eq!(unit(nova, None, Some("1024x1024")).as_deref(), Some("0.04"));
        assert_eq!(
            unit(nova, Some("hd"), Some("1024x1024")).as_deref(),
            Some("0.06")
        );
        assert_eq!(
            unit(nova, Some("hd"), Some("2048x2048")).as_deref(),
            Some("0.08")
        );
        let titan = "amazon.titan-image-generator-v2:0";
        assert_eq!(
            unit(titan, Some("standard"), Some("512x512")).as_deref(),
            Some("0.008")
        );
    }

    #[test]
    fn bare_claude_names_map_to_bedrock_ids_with_profiles() {
        assert_eq!(
            model_id_for("claude-sonnet-4-5"),
            Some("anthropic.claude-sonnet-4-5-20250929-v1:0")
        );
        assert_eq!(
            model_id_for("claude-3-5-haiku-20241022"),
            Some("anthropic.claude-3-5-haiku-20241022-v1:0")
        );
        assert_eq!(model_id_for("claude-sonnet-4-5-nope"), None);
        assert_eq!(model_id_for("gpt-4o"), None);
        assert_eq!(
            invocation_id("anthropic.claude-sonnet-4-5-20250929-v1:0", "eu-west-1"),
            "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"
        );
        assert_eq!(
            invocation_id("anthropic.claude-3-haiku-20240307-v1:0", "us-east-1"),
            "anthropic.claude-3-haiku-20240307-v1:0"
        );
        assert_eq!(
            utf8_percent_encode("us.anthropic.claude-3-5-haiku-20241022-v1:0", PATH_SEGMENT)
                .to_string(),
            "us.anthropic.claude-3-5-haiku-20241022-v1%3A0"
        );
    }

    #[test]
    fn golden_exception_frame_decodes_with_crc() {
        // vercel/ai packages/amazon-bedrock/src/__fixtures__/model-stream-error-exception.eventstream.base64.txt
        let b64 = "AAAA3QAAAGfHkZB6DTptZXNzYWdlLXR5cGUHAAlleGNlcHRpb24POmV4Y2VwdGlvbi10eXBlBwAZbW9kZWxTdHJlYW1FcnJvckV4Y2VwdGlvbg06Y29udGVudC10eXBlBwAQYXBwbGljYXRpb24vanNvbnsibWVzc2FnZSI6Ik1vZGVsIFN0cmVhbSBFcnJvciIsIm9yaWdpbmFsU3RhdHVzQ29kZSI6NTAwLCJvcmlnaW5hbE1lc3NhZ2UiOiJUaGUgbW9kZWwgc3RyZWFtIGZhaWxlZC4ifVczQxM=";
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        assert_eq!(raw.len(), 221);
        let Ok(msg) = read_message_from(&raw[..]) else {
            unreachable!("golden frame must decode")
        };
        let mut state = StreamState {
            model: "m".into(),
            id: None,
            started: false,
            tool_blocks: Vec::new(),
            tools: 0,
            stop_reason: None,
            usage: None,
        };
        let e = state.on_message(&msg, &mut Vec::new()).err();
        assert_eq!(e.as_ref().map(|e| e.class), Some(ErrorClass::Server));
        assert_eq!(e.map(|e| e.message), Some("Model Stream Error".to_string()));
        // A flipped payload byte fails the message CRC.
        let mut bad = raw.clone();
        bad[150] ^= 1;
        assert!(read_message_from(&bad[..]).is_err());
    }

    #[test]
    fn recorded_reasoning_response_parses() {
        // vercel/ai packages/amazon-bedrock/src/__fixtures__/amazon-bedrock-reasoning.json
        let body = br#"{"metrics":{"latencyMs":2202},"output":{"message":{"role":"assistant","content":[{"reasoningContent":{"reasoningText":{"signature":"EvYBCkgI","text":"Let me count"}}},{"text":"There are **3** r's"}]}},"stopReason":"end_turn","usage":{"inputTokens":51,"outputTokens":78,"totalTokens":129,"cacheReadInputTokens":0,"cacheWriteInputTokens":0,"cacheReadInputTokenCount":0,"cacheWriteInputTokenCount":0,"serverToolUsage":{}}}"#;
        let Ok(r) = parse_response(body, "m", None) else {
            unreachable!()
        };
        assert_eq!(r.output.reasoning.as_deref(), Some("Let me count"));
        assert_eq!(r.output.content.as_deref(), Some("There are **3** r's"));
        assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), (51, 78));
    }

    #[test]
    fn recorded_error_headers_classify() {
        // hadrian tests/fixtures/providers/bedrock/bad_request.json
        let mut h = HeaderMap::new();
        h.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(
                "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            ),
        );
        let e = classify_error(
            400,
            &h,
            br#"{"message":"The provided model identifier is invalid."}"#,
        );
        assert_eq!(e.class, ErrorClass::InvalidRequest);
        assert_eq!(e.code.as_deref(), Some("ValidationException"));
        let e = classify_error(
            400,
            &h,
            br#"{"message":"Input is too long for requested model."}"#,
        );
        assert_eq!(e.class, ErrorClass::ContextLength);
        let e = classify_error(
            429,
            &HeaderMap::new(),
            br#"{"__type":"com.amazon.coral.availability#ThrottlingException","message":"Too many requests, please wait before trying again."}"#,
        );
        assert_eq!(e.class, ErrorClass::RateLimited);
    }
}
