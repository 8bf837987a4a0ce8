//! Google Gemini API, native (providers.md §5): `models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse`, `:batchEmbedContents`; auth header `x-goog-api-key`.
//!
//! Anatomy: `impl Provider` -> error classification (google.rpc.Status) -> stream decoding ->
//! request building -> response/usage normalisation -> tests.
//!
//! Decisions:
//! - Gemini has no tool-call ids. The hub synthesises `call_<n>_<name>` (n = position in the
//!   turn): stable, unique within a turn, and a tool result is mapped back to its function by
//!   looking the id up in the conversation's earlier assistant turns (else by the message `name`).
//! - Remote image URLs are rejected with a 400: the Gemini API takes inline bytes (or its own
//!   file URIs), and the hub does not fetch arbitrary URLs on a caller's behalf. Send `data:` URLs.
//! - `images()` uses `generateContent` with `responseModalities: ["IMAGE"]` once per requested
//!   image and returns the inline bytes as `b64_json` (Gemini returns no URLs).
//! - `thoughtSignature` on a `functionCall` part becomes the tool call's `signature` (a
//!   `ToolCallSignature` event in streams) and is echoed on that call's part in later turns.
//! - Embeddings go through `batchEmbedContents` (100 inputs per call). Gemini reports no token
//!   usage for them; the usage is marked `estimated`.

use futures::StreamExt;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::Duration;

use super::{EventStream, Provider, Upstream};
use crate::error::{ErrorClass, ProviderError, parse_retry_after};
use crate::types::{
    AssistantOutput, ChatRequest, ChatResponse, ContentPart, Embedding, EmbeddingsRequest,
    EmbeddingsResponse, FinishReason, GeneratedImage, ImageSource, ImagesRequest, ImagesResponse,
    Message, ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, Usage,
};
use crate::upstream_http::Response;

/// The Gemini provider module.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gemini;

/// Inputs per `batchEmbedContents` call.
const EMBED_BATCH: usize = 100;

fn model_path(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

impl Gemini {
    fn headers(up: &Upstream<'_>) -> Result<HeaderMap, ProviderError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = up.credential.api_key.as_ref() {
            let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
                ProviderError::new(ErrorClass::Auth, "credential contains invalid characters")
            })?;
            value.set_sensitive(true);
            headers.insert("x-goog-api-key", value);
        }
        Ok(headers)
    }

    async fn post(
        up: &Upstream<'_>,
        method: &str,
        query: &str,
        body: &Value,
    ) -> Result<Response, ProviderError> {
        let url = format!(
            "{}/models/{}:{method}{query}",
            up.base_url.trim_end_matches('/'),
            model_path(up.model)
        );
        let url = super::endpoint_url(&url)?;
        let request = up.http.post(url).headers(Self::headers(up)?);
        super::send_post(request, super::json_bytes(body)?, classify_error).await
    }

    async fn post_json(
        up: &Upstream<'_>,
        method: &str,
        body: &Value,
    ) -> Result<Vec<u8>, ProviderError> {
        let resp = Self::post(up, method, "", body).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ProviderError::from_transport(&e))
    }
}

#[async_trait::async_trait]
impl Provider for Gemini {
    async fn chat(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let body = build_body(req)?;
        let bytes = Self::post_json(&up, "generateContent", &body).await?;
        parse_response(&bytes, up.model)
    }

    async fn chat_stream(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<EventStream, ProviderError> {
        let body = build_body(req)?;
        let resp = Self::post(&up, "streamGenerateContent", "?alt=sse", &body).await?;
        Ok(decode_stream(resp, up.model.to_string()))
    }

    /// `models/{model}:countTokens` over the whole `generateContentRequest` (system instruction
    /// and tools count too) -> `{"totalTokens": N}`.
    async fn count_tokens(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<u64, ProviderError> {
        let mut inner = build_body(req)?;
        if let Some(o) = inner.as_object_mut() {
            o.insert(
                "model".into(),
                json!(format!("models/{}", model_path(up.model))),
            );
        }
        let bytes = Self::post_json(
            &up,
            "countTokens",
            &json!({"generateContentRequest": inner}),
        )
        .await?;
        super::count_in(&bytes, "totalTokens", "countTokens")
    }

    async fn embeddings(
        &self,
        up: Upstream<'_>,
        req: &EmbeddingsRequest,
    ) -> Result<EmbeddingsResponse, ProviderError> {
        let texts: Vec<String> = match &req.input {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => {
                return Err(ProviderError::new(
                    ErrorClass::InvalidRequest,
                    "Gemini embeddings take text input only (a string or an array of strings)",
                ));
            }
        };
        let model = format!("models/{}", model_path(up.model));
        let mut data = Vec::with_capacity(texts.len());
        for batch in texts.chunks(EMBED_BATCH) {
            let requests: Vec<Value> = batch
                .iter()
                .map(|t| {
                    let mut r = json!({"model": model, "content": {"parts": [{"text": t}]}});
                    if let (Some(d), Some(o)) = (req.dimensions, r.as_object_mut()) {
                        o.insert("outputDimensionality".into(), json!(d));
                    }
                    r
                })
                .collect();
            let bytes =
                Self::post_json(&up, "batchEmbedContents", &json!({"requests": requests})).await?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::new(
                    ErrorClass::Protocol,
                    format!("malformed embeddings response: {e}"),
                )
            })?;
            let embeddings = v
                .get("embeddings")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if embeddings.len() != batch.len() {
                return Err(ProviderError::new(
                    ErrorClass::Protocol,
                    format!(
                        "asked for {} embeddings, got {}",
                        batch.len(),
                        embeddings.len()
                    ),
                ));
            }
            for e in embeddings {
                data.push(Embedding {
                    index: data.len() as u32,
                    embedding: e.get("values").cloned().unwrap_or(Value::Array(vec![])),
                });
            }
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
                estimated: true,
                ..Usage::default()
            },
            cost: None,
        })
    }

    async fn images(
        &self,
        up: Upstream<'_>,
        req: &ImagesRequest,
    ) -> Result<ImagesResponse, ProviderError> {
        let n = req.n.unwrap_or(1).clamp(1, 4);
        let body = json!({
            "contents": [{"role": "user", "parts": [{"text": req.prompt}]}],
            "generationConfig": {"responseModalities": ["IMAGE"]},
        });
        let mut data = Vec::new();
        let mut usage = Usage::default();
        for _ in 0..n {
            let bytes = Self::post_json(&up, "generateContent", &body).await?;
            let r = parse_response(&bytes, up.model)?;
            usage.prompt_tokens += r.usage.prompt_tokens;
            usage.completion_tokens += r.usage.completion_tokens;
            for url in r.output.images {
                if let ImageSource::Base64 { data: b64, .. } = ImageSource::from_url(&url) {
                    data.push(GeneratedImage {
                        b64_json: Some(b64),
                        url: None,
                        revised_prompt: r.output.content.clone().filter(|t| !t.is_empty()),
                    });
                }
            }
        }
        if data.is_empty() {
            return Err(ProviderError::new(
                ErrorClass::InvalidRequest,
                "the model returned no image (is it an image-output model?)",
            ));
        }
        usage.images = data.len() as u64;
        Ok(ImagesResponse {
            created: super::openai::unix_now(),
            model: up.model.to_string(),
            data,
            usage,
            cost: None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// `RetryInfo.retryDelay` ("34.4s") from google.rpc.Status details.
fn retry_delay(err: &Value) -> Option<Duration> {
    err.get("details")?.as_array()?.iter().find_map(|d| {
        let t = d.get("@type")?.as_str()?;
        if !t.ends_with("google.rpc.RetryInfo") {
            return None;
        }
        let secs: f64 = d
            .get("retryDelay")?
            .as_str()?
            .strip_suffix('s')?
            .parse()
            .ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_millis((secs * 1000.0) as u64))
    })
}

/// Classifies a google.rpc.Status error (`{"error":{code,message,status,details}}`).
pub fn classify_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // Errors may come wrapped in an array (JSON-array streaming).
    let err = parsed
        .get("error")
        .or_else(|| parsed.get(0).and_then(|v| v.get("error")))
        .cloned()
        .unwrap_or(Value::Null);
    classify_status(status, &err, headers)
}

fn classify_status(status: u16, err: &Value, headers: &HeaderMap) -> ProviderError {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let rpc = err
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_string);
    let reason_invalid_key = err
        .get("details")
        .and_then(Value::as_array)
        .is_some_and(|d| {
            d.iter()
                .any(|x| x.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
        });
    let msg_l = message.to_ascii_lowercase();
    let class = match (status, rpc.as_deref()) {
        _ if reason_invalid_key || msg_l.contains("api key not valid") => ErrorClass::Auth,
        (401 | 403, _) | (_, Some("UNAUTHENTICATED" | "PERMISSION_DENIED")) => ErrorClass::Auth,
        (400, _)
            if (msg_l.contains("token count") || msg_l.contains("tokens"))
                && msg_l.contains("exceed") =>
        {
            ErrorClass::ContextLength
        }
        (429, _) | (_, Some("RESOURCE_EXHAUSTED")) => ErrorClass::RateLimited,
        (404, _) | (_, Some("NOT_FOUND")) => ErrorClass::NotFound,
        (503, _) | (_, Some("UNAVAILABLE")) => ErrorClass::Overloaded,
        (504, _) | (_, Some("DEADLINE_EXCEEDED")) => ErrorClass::Timeout,
        (400 | 413 | 422, _) => ErrorClass::InvalidRequest,
        _ => ErrorClass::Server,
    };
    let retry_after = retry_delay(err).or_else(|| {
        parse_retry_after(
            headers.get("retry-after").and_then(|v| v.to_str().ok()),
            None,
        )
    });
    ProviderError {
        class,
        status: (status != 0).then_some(status),
        message,
        code: rpc,
        retry_after,
    }
}

// ---------------------------------------------------------------------------------------------
// Usage, finish reasons, response parts

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
    #[serde(default)]
    tool_use_prompt_token_count: Option<u64>,
}

/// providers.md §12.1: prompt includes cached; completion = candidates + thoughts.
fn normalise_usage(u: Option<&WireUsage>) -> Usage {
    let Some(u) = u else {
        return Usage {
            estimated: true,
            ..Usage::default()
        };
    };
    let thoughts = u.thoughts_token_count.unwrap_or(0);
    Usage {
        prompt_tokens: u.prompt_token_count.unwrap_or(0)
            + u.tool_use_prompt_token_count.unwrap_or(0),
        completion_tokens: u.candidates_token_count.unwrap_or(0) + thoughts,
        cache_read_tokens: u.cached_content_token_count.unwrap_or(0),
        cache_write_tokens: 0,
        reasoning_tokens: thoughts,
        images: 0,
        estimated: u.prompt_token_count.is_none() && u.candidates_token_count.is_none(),
    }
}

/// providers.md §12.2 (a `functionCall` part turns `STOP` into `tool_calls`).
pub fn map_finish_reason(reason: &str, has_calls: bool) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "LANGUAGE" => FinishReason::ContentFilter,
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" => {
            FinishReason::Error
        }
        _ if has_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// The synthesised id of the `n`th function call of a turn.
fn call_id(n: usize, name: &str) -> String {
    format!("call_{n}_{name}")
}

/// A blocked prompt comes back with no candidates and a `promptFeedback.blockReason`.
fn blocked(v: &Value) -> Option<ProviderError> {
    let reason = v.pointer("/promptFeedback/blockReason")?.as_str()?;
    if v.get("candidates")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty())
    {
        return None;
    }
    Some(ProviderError {
        class: ErrorClass::ContentFilter,
        status: None,
        message: format!("the prompt was blocked ({reason})"),
        code: Some(reason.to_string()),
        retry_after: None,
    })
}

/// Parses a non-streaming `GenerateContentResponse`.
/// The `thoughtSignature` of a part (Gemini 2.5+/3 sign function-call parts; 3 rejects a tool
/// loop whose calls come back without it).
fn thought_signature(part: &Value) -> Option<String> {
    part.get("thoughtSignature")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

pub fn parse_response(bytes: &[u8], model: &str) -> Result<ChatResponse, ProviderError> {
    let v: Value = crate::json_from_slice(bytes).map_err(|e| {
        ProviderError::new(ErrorClass::Protocol, format!("malformed response: {e}"))
    })?;
    if let Some(e) = blocked(&v) {
        return Err(e);
    }
    let cand = v.pointer("/candidates/0").cloned().unwrap_or(Value::Null);
    let mut output = AssistantOutput::default();
    let mut text = String::new();
    let mut reasoning = String::new();
    let parts = cand
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for part in &parts {
        if let Some(call) = part.get("functionCall") {
            let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
            output.tool_calls.push(ToolCall {
                id: call_id(output.tool_calls.len(), name),
                name: name.to_string(),
                arguments: call
                    .get("args")
                    .cloned()
                    .unwrap_or_else(|| json!({}))
                    .to_string(),
                signature: thought_signature(part),
            });
        } else if let Some(data) = part.get("inlineData") {
            let mime = data
                .get("mimeType")
                .and_then(Value::as_str)
                .unwrap_or("image/png");
            let b64 = data.get("data").and_then(Value::as_str).unwrap_or_default();
            output.images.push(format!("data:{mime};base64,{b64}"));
        } else if let Some(t) = part.get("text").and_then(Value::as_str) {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                reasoning.push_str(t);
            } else {
                text.push_str(t);
            }
        }
    }
    let finish_reason = map_finish_reason(
        cand.get("finishReason")
            .and_then(Value::as_str)
            .unwrap_or("STOP"),
        !output.tool_calls.is_empty(),
    );
    output.content = (!text.is_empty() || output.tool_calls.is_empty()).then_some(text);
    output.reasoning = (!reasoning.is_empty()).then_some(reasoning);
    let wire_usage: Option<WireUsage> = v
        .get("usageMetadata")
        .and_then(|u| serde_json::from_value(u.clone()).ok());
    Ok(ChatResponse {
        id: v
            .get("responseId")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(new_response_id),
        model: v
            .get("modelVersion")
            .and_then(Value::as_str)
            .unwrap_or(model)
            .to_string(),
        created: super::openai::unix_now(),
        output,
        finish_reason,
        usage: normalise_usage(wire_usage.as_ref()),
        provider_cost: None,
        cost: None,
    })
}

fn new_response_id() -> String {
    format!("gen-{}", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------------
// Streaming

struct StreamState {
    model: String,
    started: bool,
    calls: usize,
    usage: Option<WireUsage>,
    finish: Option<String>,
}

impl StreamState {
    /// One `data:` chunk (a whole `GenerateContentResponse`).
    fn on_chunk(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if data.trim().is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            ProviderError::new(ErrorClass::Protocol, format!("malformed stream chunk: {e}"))
        })?;
        if let Some(err) = v.get("error") {
            let status = err
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0);
            let mut e = classify_status(status, err, &HeaderMap::new());
            e.status = None;
            return Err(e);
        }
        if let Some(e) = blocked(&v) {
            return Err(e);
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: v
                    .get("responseId")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(new_response_id),
                model: v
                    .get("modelVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(&self.model)
                    .to_string(),
            });
        }
        let cand = v.pointer("/candidates/0");
        if let Some(parts) = cand
            .and_then(|c| c.pointer("/content/parts"))
            .and_then(Value::as_array)
        {
            for part in parts {
                if let Some(call) = part.get("functionCall") {
                    // Function calls arrive whole in one chunk.
                    let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
                    out.push(StreamEvent::ToolCallDelta {
                        index: self.calls as u32,
                        id: Some(call_id(self.calls, name)),
                        name: Some(name.to_string()),
                        arguments: call
                            .get("args")
                            .cloned()
                            .unwrap_or_else(|| json!({}))
                            .to_string(),
                    });
                    if let Some(signature) = thought_signature(part) {
                        out.push(StreamEvent::ToolCallSignature {
                            index: self.calls as u32,
                            signature,
                        });
                    }
                    self.calls += 1;
                } else if let Some(t) = part.get("text").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    let text = t.to_string();
                    if part.get("thought").and_then(Value::as_bool) == Some(true) {
                        out.push(StreamEvent::ReasoningDelta { text });
                    } else {
                        out.push(StreamEvent::TextDelta { text });
                    }
                }
            }
        }
        if let Some(r) = cand
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
        {
            self.finish = Some(r.to_string());
        }
        // Cumulative: the last one wins.
        if let Some(u) = v
            .get("usageMetadata")
            .and_then(|u| serde_json::from_value(u.clone()).ok())
        {
            self.usage = Some(u);
        }
        Ok(())
    }

    /// At EOF: the finish (if a chunk carried one) and the last usage.
    fn finish(&self, out: &mut Vec<StreamEvent>) -> bool {
        let Some(reason) = &self.finish else {
            return false;
        };
        out.push(StreamEvent::Finish {
            reason: map_finish_reason(reason, self.calls > 0),
        });
        out.push(StreamEvent::Usage {
            usage: normalise_usage(self.usage.as_ref()),
        });
        true
    }
}

fn decode_stream(resp: Response, model: String) -> EventStream {
    let events = super::sse_events(resp);
    let stream = async_stream::stream! {
        let mut events = std::pin::pin!(events);
        let mut state = StreamState { model, started: false, calls: 0, usage: None, finish: None };
        let mut out = Vec::new(); // taken before yielding: no buffer kept between chunks
        while let Some(item) = events.next().await {
            let event = match item {
                Ok(ev) => ev,
                Err(e) => {
                    yield Err(ProviderError::new(ErrorClass::StreamInterrupted, format!("stream broke: {e}")));
                    return;
                }
            };
            let result = state.on_chunk(super::sse_data(&event), &mut out);
            for ev in std::mem::take(&mut out) {
                yield Ok(ev);
            }
            if let Err(e) = result {
                yield Err(e);
                return;
            }
        }
        // The stream ends at EOF after the chunk carrying finishReason.
        if state.finish(&mut out) {
            for ev in std::mem::take(&mut out) {
                yield Ok(ev);
            }
        } else {
            yield Err(ProviderError::new(
                ErrorClass::StreamInterrupted,
                "upstream closed the stream before a finish reason",
            ));
        }
    };
    Box::pin(stream)
}

// ---------------------------------------------------------------------------------------------
// Request building

/// Removes JSON-Schema keywords Gemini's OpenAPI-subset schema rejects.
fn gemini_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "$schema" | "additionalProperties" | "strict")
                })
                .map(|(k, v)| (k.clone(), gemini_schema(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(gemini_schema).collect()),
        other => other.clone(),
    }
}

fn parts_of(m: &Message) -> Result<Vec<Value>, ProviderError> {
    let mut parts = Vec::with_capacity(m.content.len());
    for p in &m.content {
        match p {
            ContentPart::Text { text } if text.is_empty() => {}
            ContentPart::Text { text } => parts.push(json!({"text": text})),
            ContentPart::Image {
                source: ImageSource::Base64 { media_type, data },
                ..
            } => parts.push(json!({"inlineData": {"mimeType": media_type, "data": data}})),
            ContentPart::Image {
                source: ImageSource::Url { .. },
                ..
            } => {
                return Err(ProviderError::new(
                    ErrorClass::InvalidRequest,
                    "Gemini cannot fetch remote image URLs; send the image inline as a \
                     data:<mime>;base64,<bytes> URL",
                ));
            }
        }
    }
    Ok(parts)
}

/// The function name behind a tool result: the earlier assistant call with that id, else the
/// message's `name`, else the synthesised id's suffix (`call_<n>_<name>`).
fn function_name_for(messages: &[Message], m: &Message) -> Option<String> {
    let id = m.tool_call_id.as_deref();
    if let Some(id) = id {
        for prev in messages {
            if let Some(c) = prev.tool_calls.iter().find(|c| c.id == id) {
                return Some(c.name.clone());
            }
        }
    }
    if let Some(n) = &m.name {
        return Some(n.clone());
    }
    let rest = id?.strip_prefix("call_")?;
    let (_, name) = rest.split_once('_')?;
    Some(name.to_string())
}

fn contents(messages: &[Message]) -> Result<(Vec<Value>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in messages {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                system.extend(parts_of(m)?);
                continue;
            }
            Role::User => ("user", parts_of(m)?),
            Role::Assistant => {
                let mut parts = parts_of(m)?;
                for c in &m.tool_calls {
                    let args = match serde_json::from_str::<Value>(&c.arguments) {
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
                    let mut part = json!({"functionCall": {"name": c.name, "args": args}});
                    if let (Some(sig), Some(o)) = (&c.signature, part.as_object_mut()) {
                        o.insert("thoughtSignature".into(), json!(sig));
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            Role::Tool => {
                let Some(name) = function_name_for(messages, m) else {
                    return Err(ProviderError::new(
                        ErrorClass::InvalidRequest,
                        "a tool result's tool_call_id matches no earlier tool call; Gemini needs \
                         the function name",
                    ));
                };
                let text = m.joined_text();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    Ok(other) => json!({"result": other}),
                    Err(_) => json!({"result": text}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
        };
        if parts.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((r, last)) if *r == role => last.extend(parts),
            _ => out.push((role, parts)),
        }
    }
    let contents = out
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    Ok((system, contents))
}

fn thinking_budget(effort: &str) -> Option<i64> {
    match effort {
        "none" => Some(0),
        "minimal" | "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24_576),
        _ => None,
    }
}

/// Builds a `GenerateContentRequest`.
pub fn build_body(req: &ChatRequest) -> Result<Value, ProviderError> {
    let (system, contents) = contents(&req.messages)?;
    let mut body = Map::new();
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    body.insert("contents".into(), Value::Array(contents));
    if !req.tools.is_empty() && req.tool_choice != Some(ToolChoice::None) {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut d = Map::new();
                d.insert("name".into(), json!(t.name));
                if let Some(desc) = &t.description {
                    d.insert("description".into(), json!(desc));
                }
                if !t.parameters.is_null() {
                    d.insert("parameters".into(), gemini_schema(&t.parameters));
                }
                Value::Object(d)
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        let config = match &req.tool_choice {
            None | Some(ToolChoice::Auto) => None,
            Some(ToolChoice::None) => Some(json!({"mode": "NONE"})),
            Some(ToolChoice::Required) => Some(json!({"mode": "ANY"})),
            Some(ToolChoice::Function { name }) => {
                Some(json!({"mode": "ANY", "allowedFunctionNames": [name]}))
            }
        };
        if let Some(c) = config {
            body.insert("toolConfig".into(), json!({"functionCallingConfig": c}));
        }
    }
    let mut cfg = Map::new();
    if let Some(m) = req.max_tokens {
        cfg.insert("maxOutputTokens".into(), json!(m));
    }
    if let Some(t) = req.temperature {
        cfg.insert("temperature".into(), json!(t));
    }
    if let Some(t) = req.top_p {
        cfg.insert("topP".into(), json!(t));
    }
    if !req.stop.is_empty() {
        cfg.insert("stopSequences".into(), json!(req.stop));
    }
    if let Some(s) = req.seed {
        cfg.insert("seed".into(), json!(s));
    }
    if let Some(p) = req.presence_penalty {
        cfg.insert("presencePenalty".into(), json!(p));
    }
    if let Some(p) = req.frequency_penalty {
        cfg.insert("frequencyPenalty".into(), json!(p));
    }
    match &req.response_format {
        Some(ResponseFormat::JsonObject) => {
            cfg.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            cfg.insert("responseMimeType".into(), json!("application/json"));
            cfg.insert("responseSchema".into(), gemini_schema(schema));
        }
        Some(ResponseFormat::Text) | None => {}
    }
    if let Some(budget) = req.reasoning_effort.as_deref().and_then(thinking_budget) {
        cfg.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": budget, "includeThoughts": budget > 0}),
        );
    }
    if !cfg.is_empty() {
        body.insert("generationConfig".into(), Value::Object(cfg));
    }
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_results_map_back_by_name_and_merge() {
        let mut assistant = Message::text(Role::Assistant, "");
        assistant.content.clear();
        assistant.tool_calls = vec![
            ToolCall {
                id: "call_0_get_weather".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
                signature: None,
            },
            ToolCall {
                id: "xyz".into(),
                name: "get_time".into(),
                arguments: "{}".into(),
                signature: None,
            },
        ];
        let mut r1 = Message::text(Role::Tool, "18C");
        r1.tool_call_id = Some("call_0_get_weather".into());
        let mut r2 = Message::text(Role::Tool, "{\"time\":\"noon\"}");
        r2.tool_call_id = Some("xyz".into());
        let req = ChatRequest {
            messages: vec![
                Message::text(Role::System, "terse"),
                Message::text(Role::User, "hi"),
                assistant,
                r1,
                r2,
            ],
            ..ChatRequest::default()
        };
        let b = build_body(&req).unwrap_or_default();
        assert_eq!(b["systemInstruction"]["parts"][0]["text"], json!("terse"));
        assert_eq!(b["contents"][1]["role"], json!("model"));
        assert_eq!(
            b["contents"][1]["parts"][0]["functionCall"]["args"],
            json!({"city":"Paris"})
        );
        let fr = &b["contents"][2]["parts"];
        assert_eq!(fr[0]["functionResponse"]["name"], json!("get_weather"));
        assert_eq!(
            fr[0]["functionResponse"]["response"],
            json!({"result":"18C"})
        );
        assert_eq!(fr[1]["functionResponse"]["name"], json!("get_time"));
        assert_eq!(
            fr[1]["functionResponse"]["response"],
            json!({"time":"noon"})
        );
    }

    #[test]
    fn remote_image_urls_are_a_clear_400() {
        let req = ChatRequest {
            messages: vec![Message {
                role: Role::User,
                content: vec![ContentPart::Image {
                    source: ImageSource::Url {
                        url: "https://example.com/cat.png".into(),
                    },
                    detail: None,
                }],
                content_is_text: false,
                tool_calls: vec![],
                tool_call_id: None,
                name: None,
                reasoning: None,
                reasoning_blocks: Vec::new(),
            }],
            ..ChatRequest::default()
        };
        let e = build_body(&req).err();
        assert_eq!(e.map(|e| e.class), Some(ErrorClass::InvalidRequest));
    }

    #[test]
    fn recorded_tool_call_response_parses() {
        // vercel/ai packages/google/src/__fixtures__/google-tool-call.json
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"weather","args":{"location":"San Francisco"}},"thoughtSignature":"EskgCsYg"}]},"finishReason":"STOP","index":0,"finishMessage":"Model generated function call(s)."}],"usageMetadata":{"promptTokenCount":29,"candidatesTokenCount":15,"totalTokenCount":937,"promptTokensDetails":[{"modality":"TEXT","tokenCount":29}],"thoughtsTokenCount":893},"modelVersion":"gemini-3-pro-preview","responseId":"m36LaZGyCLz1xs0PtNSB-QU"}"#;
        let Ok(r) = parse_response(body, "m") else {
            unreachable!()
        };
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.output.tool_calls[0].id, "call_0_weather");
        assert_eq!(r.usage.prompt_tokens, 29);
        assert_eq!(r.usage.completion_tokens, 15 + 893);
        assert_eq!(r.usage.reasoning_tokens, 893);
        assert_eq!(r.id, "m36LaZGyCLz1xs0PtNSB-QU");
    }

    #[test]
    fn recorded_429_carries_the_retry_delay() {
        // vercel/ai packages/google/src/__fixtures__/google-429-retry-info.json (as quoted in providers.md §5.5)
        let body = br#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"34.4s"}]}}"#;
        let e = classify_error(429, &HeaderMap::new(), body);
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_millis(34_400)));
        let bad_key = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        assert_eq!(
            classify_error(400, &HeaderMap::new(), bad_key).class,
            ErrorClass::Auth
        );
        let overloaded = br#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#;
        assert_eq!(
            classify_error(503, &HeaderMap::new(), overloaded).class,
            ErrorClass::Overloaded
        );
    }

    #[test]
    fn recorded_stream_chunks_decode_with_cumulative_usage() {
        // simonw/llm-gemini#97 (providers.md §5.4), abridged.
        let chunks = [
            r#"{"candidates": [{"content": {"parts": [{"text": "Here you go!"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 5,"candidatesTokenCount": 39,"totalTokenCount": 230,"thoughtsTokenCount": 186},"modelVersion": "models/gemini-2.5-flash-preview-05-20","responseId": "AdVRaMmDCYekqtsPrb_-iAw"}"#,
            r#"{"candidates": [{"content": {"parts": [{"text": " Ciao"}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 5,"candidatesTokenCount": 44,"totalTokenCount": 235,"thoughtsTokenCount": 186},"modelVersion": "models/gemini-2.5-flash-preview-05-20","responseId": "AdVRaMmDCYekqtsPrb_-iAw"}"#,
        ];
        let mut state = StreamState {
            model: "m".into(),
            started: false,
            calls: 0,
            usage: None,
            finish: None,
        };
        let mut out = Vec::new();
        for c in chunks {
            assert!(state.on_chunk(c, &mut out).is_ok());
        }
        assert!(state.finish(&mut out));
        let text: String = out
            .iter()
            .filter_map(|e| match e {
                StreamEvent::TextDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Here you go! Ciao");
        assert!(out.iter().any(|e| matches!(e, StreamEvent::Usage { usage } if usage.completion_tokens == 44 + 186 && usage.reasoning_tokens == 186)));
    }
}
