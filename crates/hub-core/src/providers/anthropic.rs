//! Anthropic Messages API (`POST /v1/messages`, providers.md §3).
//!
//! Anatomy: quirks -> `impl Provider` -> error classification -> stream decoding -> request
//! building -> response/usage normalisation -> tests.
//!
//! Decisions:
//! - `max_tokens` is required by Anthropic. When the caller sets none the hub sends the model's
//!   maximum output ([`default_max_tokens`]), so a reply is never cut short by the gateway.
//! - Anthropic has no `response_format`. `json_schema` / `json_object` are emulated with one forced
//!   tool (`json_response`, `input_schema` = the caller's schema); its input comes back to the
//!   caller as the message text (streamed as text deltas) with finish reason `stop`. Combined with
//!   caller tools this is rejected (400): a forced tool would keep the model from calling theirs.
//! - Images: base64 and remote URLs are both native (`source.type` `base64` / `url`).
//! - Reasoning: `reasoning_effort` enables extended thinking (`low` 1024, `medium` 4096, `high`
//!   16384 budget tokens). Thinking text streams as reasoning, `signature_delta` as the block's
//!   signature, `redacted_thinking` as a redacted block. With thinking on, an assistant turn's
//!   signed `thinking` and `redacted_thinking` blocks go back unchanged, in order, before its
//!   text and `tool_use` (Anthropic rejects a tool loop otherwise). Unsigned reasoning (from
//!   providers that sign nothing) is not sent: Anthropic rejects it. With thinking off no
//!   reasoning is sent (Anthropic rejects thinking in a final assistant turn then).

use futures::StreamExt;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{EventStream, Provider, Upstream};
use crate::error::{ErrorClass, ProviderError, parse_retry_after};
use crate::types::{
    AssistantOutput, ChatRequest, ChatResponse, ContentPart, FinishReason, ImageSource, Message,
    ReasoningBlock, ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, Usage,
};
use crate::upstream_http::Response;

/// The API version header every request carries.
pub const API_VERSION: &str = "2023-06-01";

/// Name of the forced tool that emulates JSON output.
const JSON_TOOL: &str = "json_response";

/// The Anthropic provider module.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anthropic;

/// `max_tokens` sent when the caller set none: the model's maximum output (Anthropic model
/// overview), 4096 for unknown models (every Claude model accepts it).
pub fn default_max_tokens(model: &str) -> u32 {
    let m = model.to_ascii_lowercase();
    if m.contains("opus-4-5")
        || m.contains("sonnet-4")
        || m.contains("haiku-4")
        || m.contains("3-7-sonnet")
    {
        64_000
    } else if m.contains("opus-4") {
        32_000
    } else if m.contains("3-5-") {
        8_192
    } else {
        4_096
    }
}

impl Anthropic {
    fn url(up: &Upstream<'_>) -> String {
        // The base is the origin (SDK convention); tolerate a configured `/v1` suffix.
        let base = up.base_url.trim_end_matches('/');
        if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        }
    }

    fn headers(up: &Upstream<'_>) -> Result<HeaderMap, ProviderError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        if let Some(key) = up.credential.api_key.as_ref() {
            let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
                ProviderError::new(ErrorClass::Auth, "credential contains invalid characters")
            })?;
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
        Ok(headers)
    }

    async fn post(up: &Upstream<'_>, body: &Value) -> Result<Response, ProviderError> {
        Self::post_to(up, Self::url(up), body).await
    }

    async fn post_to(
        up: &Upstream<'_>,
        url: String,
        body: &Value,
    ) -> Result<Response, ProviderError> {
        let url = super::endpoint_url(&url)?;
        let request = up.http.post(url).headers(Self::headers(up)?);
        super::send_post(request, super::json_bytes(body)?, classify_error).await
    }
}

#[async_trait::async_trait]
impl Provider for Anthropic {
    async fn chat(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let (body, json_mode) = build_body(up.model, req, false)?;
        let resp = Self::post(&up, &body).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        parse_response(&bytes, up.model, json_mode)
    }

    async fn chat_stream(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<EventStream, ProviderError> {
        let (body, json_mode) = build_body(up.model, req, true)?;
        let resp = Self::post(&up, &body).await?;
        Ok(decode_stream(resp, up.model.to_string(), json_mode))
    }

    /// `POST /v1/messages/count_tokens` with the fields it takes -> `{"input_tokens": N}`.
    async fn count_tokens(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<u64, ProviderError> {
        let body = count_tokens_body(up.model, req)?;
        let url = format!("{}/count_tokens", Self::url(&up));
        let resp = Self::post_to(&up, url, &body).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        super::count_in(&bytes, "input_tokens", "count_tokens")
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Classifies an error response: status + `{"type":"error","error":{"type","message"}}`.
pub fn classify_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let kind = err
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                text.chars().take(500).collect()
            }
        });
    let spend_limit = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/details/error_code"))
        .and_then(Value::as_str)
        == Some("enforced_spend_limit_reached");
    let msg_l = message.to_ascii_lowercase();
    let class = match (status, kind.as_deref()) {
        (_, Some("overloaded_error")) | (529, _) | (503, _) => ErrorClass::Overloaded,
        (429, _) if spend_limit => ErrorClass::QuotaExceeded,
        (429, _) | (_, Some("rate_limit_error")) => ErrorClass::RateLimited,
        (401 | 403, _) | (_, Some("authentication_error" | "permission_error")) => ErrorClass::Auth,
        (402, _) | (_, Some("billing_error")) => ErrorClass::QuotaExceeded,
        (404, _) | (_, Some("not_found_error")) => ErrorClass::NotFound,
        (400 | 413, _)
            if msg_l.contains("prompt is too long") || msg_l.contains("context window") =>
        {
            ErrorClass::ContextLength
        }
        (400 | 413 | 422, _) => ErrorClass::InvalidRequest,
        (408 | 504, _) | (_, Some("timeout_error")) => ErrorClass::Timeout,
        _ => ErrorClass::Server,
    };
    ProviderError {
        class,
        status: Some(status),
        message,
        code: kind,
        retry_after: parse_retry_after(
            headers.get("retry-after").and_then(|v| v.to_str().ok()),
            headers.get("retry-after-ms").and_then(|v| v.to_str().ok()),
        ),
    }
}

/// An `event: error` that arrives after the 200.
fn stream_error(data: &str) -> ProviderError {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let kind = v
        .pointer("/error/type")
        .and_then(Value::as_str)
        .unwrap_or("api_error")
        .to_string();
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("upstream stream error")
        .to_string();
    let class = match kind.as_str() {
        "overloaded_error" => ErrorClass::Overloaded,
        "rate_limit_error" => ErrorClass::RateLimited,
        _ => ErrorClass::Server,
    };
    ProviderError {
        class,
        status: None,
        message,
        code: Some(kind),
        retry_after: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// `message_delta.usage` is cumulative: later values replace earlier ones field by field.
    fn merge(&mut self, later: &WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    fn reported(&self) -> bool {
        self.input_tokens.is_some() || self.output_tokens.is_some()
    }
}

/// providers.md §12.1: `input_tokens` excludes cache reads and writes; thinking is inside output.
fn normalise_usage(u: &WireUsage) -> Usage {
    let read = u.cache_read_input_tokens.unwrap_or(0);
    let write = u.cache_creation_input_tokens.unwrap_or(0);
    Usage {
        prompt_tokens: u.input_tokens.unwrap_or(0) + read + write,
        completion_tokens: u.output_tokens.unwrap_or(0),
        cache_read_tokens: read,
        cache_write_tokens: write,
        reasoning_tokens: 0,
        images: 0,
        estimated: !u.reported(),
    }
}

/// providers.md §12.2.
pub fn map_stop_reason(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// What a content block index carries, for routing its deltas.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call with its canonical index.
    Tool(u32),
    /// The JSON-mode tool: its input streams as text.
    JsonText,
    Other,
}

/// Stream decoding state machine over named SSE events.
struct StreamState {
    json_mode: bool,
    model: String,
    blocks: Vec<Block>,
    tools: u32,
    usage: WireUsage,
    stop_reason: Option<String>,
    started: bool,
    done: bool,
}

impl StreamState {
    fn new(model: String, json_mode: bool) -> StreamState {
        StreamState {
            json_mode,
            model,
            blocks: Vec::new(),
            tools: 0,
            usage: WireUsage::default(),
            stop_reason: None,
            started: false,
            done: false,
        }
    }

    fn set_block(&mut self, index: usize, block: Block) {
        if self.blocks.len() <= index {
            self.blocks.resize(index + 1, Block::Other);
        }
        self.blocks[index] = block;
    }

    fn block(&self, index: usize) -> Block {
        self.blocks.get(index).copied().unwrap_or(Block::Other)
    }

    /// Handles one event (`event:` name + `data`).
    fn on_event(
        &mut self,
        event: &str,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ProviderError> {
        if event == "error" {
            return Err(stream_error(data));
        }
        if event == "ping" || data.trim().is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            ProviderError::new(ErrorClass::Protocol, format!("malformed stream event: {e}"))
        })?;
        // The `event:` line equals `data.type`; trust the data.
        let kind = v.get("type").and_then(Value::as_str).unwrap_or(event);
        match kind {
            "message_start" => {
                let msg = v.get("message").cloned().unwrap_or(Value::Null);
                if let Some(u) = msg.get("usage")
                    && let Ok(u) = serde_json::from_value::<WireUsage>(u.clone())
                {
                    self.usage.merge(&u);
                }
                if !self.started {
                    self.started = true;
                    out.push(StreamEvent::Start {
                        id: msg
                            .get("id")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .unwrap_or_else(new_message_id),
                        model: msg
                            .get("model")
                            .and_then(Value::as_str)
                            .unwrap_or(&self.model)
                            .to_string(),
                    });
                }
            }
            "content_block_start" => {
                let index = index_of(&v);
                let cb = v.get("content_block").cloned().unwrap_or(Value::Null);
                match cb.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        self.set_block(index, Block::Text);
                        if let Some(t) = cb.get("text").and_then(Value::as_str)
                            && !t.is_empty()
                        {
                            out.push(StreamEvent::TextDelta {
                                text: t.to_string(),
                            });
                        }
                    }
                    Some("thinking") => self.set_block(index, Block::Thinking),
                    Some("redacted_thinking") => {
                        self.set_block(index, Block::Other);
                        if let Some(data) = cb.get("data").and_then(Value::as_str) {
                            out.push(StreamEvent::RedactedReasoning {
                                data: data.to_string(),
                            });
                        }
                    }
                    Some("tool_use") => {
                        let name = cb.get("name").and_then(Value::as_str).unwrap_or_default();
                        if self.json_mode && name == JSON_TOOL {
                            self.set_block(index, Block::JsonText);
                        } else {
                            let tool = self.tools;
                            self.tools += 1;
                            self.set_block(index, Block::Tool(tool));
                            out.push(StreamEvent::ToolCallDelta {
                                index: tool,
                                id: cb.get("id").and_then(Value::as_str).map(str::to_string),
                                name: Some(name.to_string()),
                                arguments: String::new(),
                            });
                        }
                    }
                    _ => self.set_block(index, Block::Other),
                }
            }
            "content_block_delta" => {
                let index = index_of(&v);
                let delta = v.get("delta").cloned().unwrap_or(Value::Null);
                let str_of = |k: &str| {
                    delta
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                match (delta.get("type").and_then(Value::as_str), self.block(index)) {
                    (Some("text_delta"), _) => {
                        let text = str_of("text");
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta { text });
                        }
                    }
                    (Some("thinking_delta"), _) => {
                        let text = str_of("thinking");
                        if !text.is_empty() {
                            out.push(StreamEvent::ReasoningDelta { text });
                        }
                    }
                    (Some("input_json_delta"), Block::Tool(tool)) => {
                        let arguments = str_of("partial_json");
                        if !arguments.is_empty() {
                            out.push(StreamEvent::ToolCallDelta {
                                index: tool,
                                id: None,
                                name: None,
                                arguments,
                            });
                        }
                    }
                    (Some("input_json_delta"), Block::JsonText) => {
                        let text = str_of("partial_json");
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta { text });
                        }
                    }
                    (Some("signature_delta"), Block::Thinking) => {
                        out.push(StreamEvent::ReasoningSignature {
                            signature: str_of("signature"),
                        });
                    }
                    // citations_delta and unknown blocks carry nothing canonical.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(r.to_string());
                }
                if let Some(u) = v.get("usage")
                    && let Ok(u) = serde_json::from_value::<WireUsage>(u.clone())
                {
                    self.usage.merge(&u);
                }
            }
            "message_stop" => {
                let mut reason = map_stop_reason(self.stop_reason.as_deref().unwrap_or("end_turn"));
                if self.json_mode && reason == FinishReason::ToolCalls && self.tools == 0 {
                    reason = FinishReason::Stop;
                }
                out.push(StreamEvent::Finish { reason });
                out.push(StreamEvent::Usage {
                    usage: normalise_usage(&self.usage),
                });
                self.done = true;
            }
            // content_block_stop and unknown event types.
            _ => {}
        }
        Ok(())
    }
}

fn index_of(v: &Value) -> usize {
    v.get("index")
        .and_then(Value::as_u64)
        .and_then(|i| usize::try_from(i).ok())
        .unwrap_or(0)
}

fn decode_stream(resp: Response, model: String, json_mode: bool) -> EventStream {
    let events = super::sse_events(resp);
    let stream = async_stream::stream! {
        let mut events = std::pin::pin!(events);
        let mut state = StreamState::new(model, json_mode);
        let mut out = Vec::new(); // taken before yielding: no buffer kept between chunks
        while let Some(item) = events.next().await {
            let event = match item {
                Ok(ev) => ev,
                Err(e) => {
                    yield Err(ProviderError::new(ErrorClass::StreamInterrupted, format!("stream broke: {e}")));
                    return;
                }
            };
            let result = state.on_event(super::sse_name(&event), super::sse_data(&event), &mut out);
            for ev in std::mem::take(&mut out) {
                yield Ok(ev);
            }
            if let Err(e) = result {
                yield Err(e);
                return;
            }
            if state.done {
                return;
            }
        }
        yield Err(ProviderError::new(
            ErrorClass::StreamInterrupted,
            "upstream closed the stream before message_stop",
        ));
    };
    Box::pin(stream)
}

// ---------------------------------------------------------------------------------------------
// Request building

fn image_block(source: &ImageSource) -> Value {
    match source {
        ImageSource::Base64 { media_type, data } => {
            json!({"type":"image","source":{"type":"base64","media_type": media_type,"data": data}})
        }
        ImageSource::Url { url } => json!({"type":"image","source":{"type":"url","url": url}}),
    }
}

fn content_blocks(m: &Message) -> Vec<Value> {
    m.content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text { text } if text.is_empty() => None,
            ContentPart::Text { text } => Some(json!({"type":"text","text": text})),
            ContentPart::Image { source, .. } => Some(image_block(source)),
        })
        .collect()
}

/// Tool arguments as the object Anthropic wants (`input`). Unparseable text is an error: sending
/// `{}` would silently change what the model said.
fn tool_input(call: &ToolCall) -> Result<Value, ProviderError> {
    if call.arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(&call.arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(ProviderError::new(
            ErrorClass::InvalidRequest,
            format!(
                "tool call `{}` has arguments that are not a JSON object; Anthropic needs an object",
                call.id
            ),
        )),
    }
}

/// Canonical messages -> (system blocks, Anthropic messages). System/developer messages go to the
/// top-level `system`; tool results become user `tool_result` blocks; consecutive messages of the
/// same role are merged (Anthropic wants user/assistant alternation).
fn messages_to_wire(
    messages: &[Message],
    thinking_on: bool,
) -> Result<(Vec<Value>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in messages {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                let text = m.joined_text();
                if !text.is_empty() {
                    system.push(json!({"type":"text","text": text}));
                }
                continue;
            }
            Role::User => ("user", content_blocks(m)),
            Role::Assistant => {
                let mut blocks = if thinking_on {
                    reasoning_blocks(m)
                } else {
                    Vec::new()
                };
                blocks.extend(content_blocks(m));
                for call in &m.tool_calls {
                    blocks.push(json!({"type":"tool_use","id": call.id,"name": call.name,
                        "input": tool_input(call)?}));
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let mut content: Vec<Value> = content_blocks(m);
                if content.is_empty() {
                    content.push(json!({"type":"text","text":""}));
                }
                let only_text = m
                    .content
                    .iter()
                    .all(|p| matches!(p, ContentPart::Text { .. }));
                let content = if only_text {
                    Value::String(m.joined_text())
                } else {
                    Value::Array(content)
                };
                let id = m.tool_call_id.clone().unwrap_or_default();
                (
                    "user",
                    vec![json!({"type":"tool_result","tool_use_id": id,"content": content})],
                )
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((last_role, last)) if *last_role == role => last.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }
    // Tool results must come first in their user message: put them before text merged in after.
    let messages = out
        .into_iter()
        .map(|(role, mut blocks)| {
            if role == "user" {
                blocks.sort_by_key(|b| {
                    u8::from(b.get("type").and_then(Value::as_str) != Some("tool_result"))
                });
            }
            json!({"role": role, "content": blocks})
        })
        .collect();
    Ok((system, messages))
}

/// An assistant turn's signed reasoning as Anthropic content blocks, in order.
fn reasoning_blocks(m: &Message) -> Vec<Value> {
    m.reasoning_blocks
        .iter()
        .filter_map(|b| match b {
            ReasoningBlock::Thinking {
                text,
                signature: Some(sig),
            } if !sig.is_empty() => {
                Some(json!({"type":"thinking","thinking": text,"signature": sig}))
            }
            ReasoningBlock::Thinking { .. } => None,
            ReasoningBlock::Redacted { data } => {
                Some(json!({"type":"redacted_thinking","data": data}))
            }
        })
        .collect()
}

fn thinking_budget(effort: &str) -> Option<u32> {
    match effort {
        "low" | "minimal" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16_384),
        _ => None,
    }
}

/// The `count_tokens` body: the Messages body without the generation-only fields, which the
/// endpoint refuses.
pub fn count_tokens_body(model: &str, req: &ChatRequest) -> Result<Value, ProviderError> {
    let (mut body, _) = build_body(model, req, false)?;
    if let Some(o) = body.as_object_mut() {
        o.retain(|k, _| {
            matches!(
                k.as_str(),
                "model" | "messages" | "system" | "tools" | "tool_choice" | "thinking"
            )
        });
    }
    Ok(body)
}

/// Builds the request body. Returns it and whether JSON mode is emulated with the forced tool.
pub fn build_body(
    model: &str,
    req: &ChatRequest,
    stream: bool,
) -> Result<(Value, bool), ProviderError> {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    let max_tokens = req.max_tokens.unwrap_or_else(|| default_max_tokens(model));
    body.insert("max_tokens".into(), json!(max_tokens));

    let json_schema = match &req.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some((
            json!({"type":"object"}),
            "Respond with a JSON object.".to_string(),
        )),
        Some(ResponseFormat::JsonSchema {
            schema,
            description,
            name,
            ..
        }) => Some((
            schema.clone(),
            description
                .clone()
                .unwrap_or_else(|| format!("Respond with JSON matching the `{name}` schema.")),
        )),
    };
    let json_mode = json_schema.is_some();
    let mut tools: Vec<Value> = req
        .tools
        .iter()
        .map(|t| {
            let mut o = Map::new();
            o.insert("name".into(), json!(t.name));
            if let Some(d) = &t.description {
                o.insert("description".into(), json!(d));
            }
            o.insert(
                "input_schema".into(),
                if t.parameters.is_null() {
                    json!({"type":"object","properties":{}})
                } else {
                    t.parameters.clone()
                },
            );
            Value::Object(o)
        })
        .collect();
    if let Some((schema, description)) = json_schema {
        if !tools.is_empty() {
            return Err(ProviderError::new(
                ErrorClass::InvalidRequest,
                "Anthropic has no response_format; the hub emulates JSON output with a forced tool, \
                 which cannot be combined with your own tools. Drop response_format or tools.",
            ));
        }
        tools.push(json!({"name": JSON_TOOL, "description": description, "input_schema": schema}));
        body.insert("tools".into(), Value::Array(tools));
        body.insert(
            "tool_choice".into(),
            json!({"type":"tool","name": JSON_TOOL}),
        );
    } else if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        if let Some(tc) = &req.tool_choice {
            let mut choice = match tc {
                ToolChoice::None => json!({"type":"none"}),
                ToolChoice::Auto => json!({"type":"auto"}),
                ToolChoice::Required => json!({"type":"any"}),
                ToolChoice::Function { name } => json!({"type":"tool","name": name}),
            };
            if req.parallel_tool_calls == Some(false)
                && !matches!(tc, ToolChoice::None)
                && let Some(o) = choice.as_object_mut()
            {
                o.insert("disable_parallel_tool_use".into(), json!(true));
            }
            body.insert("tool_choice".into(), choice);
        } else if req.parallel_tool_calls == Some(false) {
            body.insert(
                "tool_choice".into(),
                json!({"type":"auto","disable_parallel_tool_use": true}),
            );
        }
    }
    let thinking = req.reasoning_effort.as_deref().and_then(thinking_budget);
    if let Some(budget) = thinking {
        // The budget must stay below max_tokens (and at least 1024).
        let budget = budget.min(max_tokens.saturating_sub(1)).max(1024);
        if budget < max_tokens && !json_mode {
            body.insert(
                "thinking".into(),
                json!({"type":"enabled","budget_tokens": budget}),
            );
        }
    }
    let thinking_on = body.contains_key("thinking");
    let (system, messages) = messages_to_wire(&req.messages, thinking_on)?;
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    // Extended thinking does not accept temperature/top_p changes.
    if !thinking_on {
        if let Some(t) = req.temperature {
            body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
        }
        if let Some(t) = req.top_p {
            body.insert("top_p".into(), json!(t));
        }
    }
    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(req.stop));
    }
    if let Some(u) = &req.user {
        body.insert("metadata".into(), json!({"user_id": u}));
    }
    if stream {
        body.insert("stream".into(), Value::Bool(true));
    }
    Ok((Value::Object(body), json_mode))
}

// ---------------------------------------------------------------------------------------------
// Responses

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Parses a non-streaming Messages response.
pub fn parse_response(
    bytes: &[u8],
    model: &str,
    json_mode: bool,
) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = crate::json_from_slice(bytes).map_err(|e| {
        ProviderError::new(ErrorClass::Protocol, format!("malformed response: {e}"))
    })?;
    let mut output = AssistantOutput::default();
    let mut text = String::new();
    let mut reasoning = String::new();
    for block in &wire.content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                let t = block.get("thinking").and_then(Value::as_str).unwrap_or("");
                reasoning.push_str(t);
                output.reasoning_blocks.push(ReasoningBlock::Thinking {
                    text: t.to_string(),
                    signature: block
                        .get("signature")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                });
            }
            Some("redacted_thinking") => {
                if let Some(data) = block.get("data").and_then(Value::as_str) {
                    output.reasoning_blocks.push(ReasoningBlock::Redacted {
                        data: data.to_string(),
                    });
                }
            }
            Some("tool_use") => {
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                if json_mode && name == JSON_TOOL {
                    text.push_str(&input.to_string());
                } else {
                    output.tool_calls.push(ToolCall {
                        id: block
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        name: name.to_string(),
                        arguments: input.to_string(),
                        signature: None,
                    });
                }
            }
            _ => {}
        }
    }
    let has_text = !text.is_empty();
    output.content = (has_text || output.tool_calls.is_empty()).then_some(text);
    output.reasoning = (!reasoning.is_empty()).then_some(reasoning);
    let mut finish_reason = map_stop_reason(wire.stop_reason.as_deref().unwrap_or("end_turn"));
    if json_mode && finish_reason == FinishReason::ToolCalls && output.tool_calls.is_empty() {
        finish_reason = FinishReason::Stop;
    }
    let usage = normalise_usage(&wire.usage.unwrap_or_default());
    Ok(ChatResponse {
        id: wire.id.unwrap_or_else(new_message_id),
        model: wire.model.unwrap_or_else(|| model.to_string()),
        created: super::openai::unix_now(),
        output,
        finish_reason,
        usage,
        provider_cost: None,
        cost: None,
    })
}

fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Message {
        Message::text(Role::User, text)
    }

    #[test]
    fn system_goes_top_level_and_tool_results_merge() {
        let mut assistant = Message::text(Role::Assistant, "");
        assistant.content.clear();
        assistant.tool_calls = vec![
            ToolCall {
                id: "toolu_1".into(),
                name: "a".into(),
                arguments: "{\"x\":1}".into(),
                signature: None,
            },
            ToolCall {
                id: "toolu_2".into(),
                name: "b".into(),
                arguments: String::new(),
                signature: None,
            },
        ];
        let mut r1 = Message::text(Role::Tool, "one");
        r1.tool_call_id = Some("toolu_1".into());
        let mut r2 = Message::text(Role::Tool, "two");
        r2.tool_call_id = Some("toolu_2".into());
        let req = ChatRequest {
            messages: vec![
                Message::text(Role::System, "Be terse."),
                user("hi"),
                assistant,
                r1,
                r2,
            ],
            ..ChatRequest::default()
        };
        let (b, json_mode) = build_body("claude-sonnet-4-5", &req, false).unwrap_or_default();
        assert!(!json_mode);
        assert_eq!(b["system"][0]["text"], json!("Be terse."));
        assert_eq!(b["max_tokens"], json!(64_000));
        assert_eq!(b["messages"].as_array().map(Vec::len), Some(3));
        assert_eq!(b["messages"][1]["content"][0]["input"], json!({"x":1}));
        assert_eq!(b["messages"][1]["content"][1]["input"], json!({}));
        let results = &b["messages"][2]["content"];
        assert_eq!(results[0]["tool_use_id"], json!("toolu_1"));
        assert_eq!(results[1]["content"], json!("two"));
        assert!(b.get("stream").is_none());
    }

    #[test]
    fn json_schema_is_a_forced_tool_and_conflicts_with_tools() {
        let mut req = ChatRequest {
            messages: vec![user("give json")],
            response_format: Some(ResponseFormat::JsonSchema {
                name: "thing".into(),
                schema: json!({"type":"object","properties":{"a":{"type":"string"}}}),
                strict: None,
                description: None,
            }),
            ..ChatRequest::default()
        };
        let (b, json_mode) = build_body("claude-3-5-haiku", &req, true).unwrap_or_default();
        assert!(json_mode);
        assert_eq!(b["tool_choice"]["name"], json!(JSON_TOOL));
        assert_eq!(b["max_tokens"], json!(8192));
        let resp = br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"tool_use","id":"toolu_9","name":"json_response","input":{"a":"b"}}],"stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":4}}"#;
        let r = parse_response(resp, "m", true);
        let r = r.ok().map(|r| (r.output.content, r.finish_reason));
        assert_eq!(
            r,
            Some((Some("{\"a\":\"b\"}".to_string()), FinishReason::Stop))
        );
        req.tools = vec![crate::types::Tool {
            name: "t".into(),
            description: None,
            parameters: Value::Null,
            strict: None,
        }];
        let e = build_body("m", &req, false).err().map(|e| e.class);
        assert_eq!(e, Some(ErrorClass::InvalidRequest));
    }

    #[test]
    fn usage_excludes_cache_on_the_wire_and_includes_it_canonically() {
        let body = br#"{"model":"claude-sonnet-4-5-20250929","id":"msg_01VdEjxAP5ahtHKrrRdNBteQ","type":"message","role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"text","text":"Hello! I'm doing well"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":3,"cache_read_input_tokens":5,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":29,"service_tier":"standard"}}"#;
        let r = parse_response(body, "m", false);
        let Ok(r) = r else { unreachable!() };
        assert_eq!(r.usage.prompt_tokens, 20);
        assert_eq!(r.usage.cache_read_tokens, 5);
        assert_eq!(r.usage.cache_write_tokens, 3);
        assert_eq!(r.usage.completion_tokens, 29);
        assert_eq!(r.output.reasoning.as_deref(), Some("hmm"));
        assert_eq!(r.finish_reason, FinishReason::Stop);
    }

    #[test]
    fn recorded_tool_use_stream_decodes() {
        // anthropic-sdk-python tests/lib/streaming/fixtures/tool_use_response.txt (abridged).
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_019Q1hrJbZG26Fb9BQhrkHEr","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":377,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"I'll check."}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01NRLabsLyVHZPKxbKvkfSMn","name":"get_weather","caller":{"type":"direct"},"input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"locati"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"on\": \"Paris\"}"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":65}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ];
        let mut state = StreamState::new("m".into(), false);
        let mut out = Vec::new();
        for (name, data) in events {
            assert!(state.on_event(name, data, &mut out).is_ok(), "{name}");
        }
        assert!(state.done);
        assert!(
            matches!(&out[0], StreamEvent::Start { model, .. } if model == "claude-sonnet-4-20250514")
        );
        assert!(matches!(&out[1], StreamEvent::TextDelta { text } if text == "I'll check."));
        let args: String = out
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments,
                    ..
                } => Some(arguments.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(args, "{\"location\": \"Paris\"}");
        assert!(out.contains(&StreamEvent::Finish {
            reason: FinishReason::ToolCalls
        }));
        assert!(out.iter().any(|e| matches!(e, StreamEvent::Usage { usage } if usage.prompt_tokens == 377 && usage.completion_tokens == 65)));
    }

    #[test]
    fn signed_thinking_goes_back_first_and_only_with_thinking_on() {
        let mut assistant = Message::text(Role::Assistant, "Let me check.");
        assistant.reasoning = Some("ab".into());
        assistant.reasoning_blocks = vec![
            ReasoningBlock::Thinking {
                text: "ab".into(),
                signature: Some("SIG".into()),
            },
            ReasoningBlock::Thinking {
                text: "unsigned".into(),
                signature: None,
            },
            ReasoningBlock::Redacted { data: "ENC".into() },
        ];
        assistant.tool_calls = vec![ToolCall {
            id: "toolu_1".into(),
            name: "f".into(),
            arguments: "{}".into(),
            signature: None,
        }];
        let mut result = Message::text(Role::Tool, "ok");
        result.tool_call_id = Some("toolu_1".into());
        let mut req = ChatRequest {
            messages: vec![user("q"), assistant, result],
            reasoning_effort: Some("low".into()),
            max_tokens: Some(4096),
            ..ChatRequest::default()
        };
        let (b, _) = build_body("claude-sonnet-4-5", &req, false).unwrap_or_default();
        assert_eq!(
            b["messages"][1]["content"],
            json!([
                {"type":"thinking","thinking":"ab","signature":"SIG"},
                {"type":"redacted_thinking","data":"ENC"},
                {"type":"text","text":"Let me check."},
                {"type":"tool_use","id":"toolu_1","name":"f","input":{}}
            ])
        );
        req.reasoning_effort = None;
        let (b, _) = build_body("claude-sonnet-4-5", &req, false).unwrap_or_default();
        assert_eq!(b["messages"][1]["content"][0]["type"], json!("text"));

        // Responses and streams keep the blocks and their signatures.
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"thinking","thinking":"hmm","signature":"S1"},{"type":"redacted_thinking","data":"R1"},{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}"#;
        let r = parse_response(body, "m", false)
            .ok()
            .map(|r| r.output.reasoning_blocks);
        assert_eq!(
            r,
            Some(vec![
                ReasoningBlock::Thinking {
                    text: "hmm".into(),
                    signature: Some("S1".into())
                },
                ReasoningBlock::Redacted { data: "R1".into() }
            ])
        );
        let mut state = StreamState::new("m".into(), false);
        let mut out = Vec::new();
        for (name, data) in [
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"S1"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"R1"}}"#,
            ),
        ] {
            assert!(state.on_event(name, data, &mut out).is_ok());
        }
        assert_eq!(
            out,
            vec![
                StreamEvent::ReasoningDelta { text: "hmm".into() },
                StreamEvent::ReasoningSignature {
                    signature: "S1".into()
                },
                StreamEvent::RedactedReasoning { data: "R1".into() },
            ]
        );
    }

    #[test]
    fn stream_error_event_and_error_table() {
        let mut state = StreamState::new("m".into(), false);
        let r = state.on_event(
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &mut Vec::new(),
        );
        assert_eq!(r.err().map(|e| e.class), Some(ErrorClass::Overloaded));
        let h = HeaderMap::new();
        let cases: Vec<(u16, &str, ErrorClass)> = vec![
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
                ErrorClass::ContextLength,
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#,
                ErrorClass::InvalidRequest,
            ),
            (
                401,
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
                ErrorClass::Auth,
            ),
            (
                429,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#,
                ErrorClass::RateLimited,
            ),
            (
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                ErrorClass::Overloaded,
            ),
            (
                500,
                r#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#,
                ErrorClass::Server,
            ),
            (
                404,
                r#"{"type":"error","error":{"type":"not_found_error","message":"model: x"}}"#,
                ErrorClass::NotFound,
            ),
        ];
        for (status, body, class) in cases {
            assert_eq!(
                classify_error(status, &h, body.as_bytes()).class,
                class,
                "{status} {body}"
            );
        }
    }
}
