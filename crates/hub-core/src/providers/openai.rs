//! The OpenAI Chat Completions family: OpenAI, DeepSeek, xAI, OpenRouter, Doubao (Ark v3), Poe and
//! Ollama's `/v1` surface share one wire (providers.md §1–2); each is a [`Variant`] whose quirks
//! (§6–11) are decided here and nowhere else.
//!
//! Anatomy: variant + quirks -> `impl Provider` -> error classification -> stream decoding ->
//! request building -> response/usage normalisation -> tests.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{EventStream, Provider, ProviderKind, Upstream};
use crate::error::{ErrorClass, ProviderError, parse_retry_after};
use crate::types::{
    AssistantOutput, ChatRequest, ChatResponse, ContentPart, Embedding, EmbeddingsRequest,
    EmbeddingsResponse, FinishReason, GeneratedImage, ImagesRequest, ImagesResponse, Message,
    ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, Usage,
};
use crate::upstream_http::Response;

/// A provider of the OpenAI family and its quirks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    OpenAi,
    DeepSeek,
    Xai,
    OpenRouter,
    Doubao,
    Poe,
    Ollama,
}

impl Variant {
    pub fn for_kind(kind: ProviderKind) -> Option<Variant> {
        Some(match kind {
            ProviderKind::OpenAi => Variant::OpenAi,
            ProviderKind::DeepSeek => Variant::DeepSeek,
            ProviderKind::Xai => Variant::Xai,
            ProviderKind::OpenRouter => Variant::OpenRouter,
            ProviderKind::Doubao => Variant::Doubao,
            ProviderKind::Poe => Variant::Poe,
            ProviderKind::Ollama => Variant::Ollama,
            ProviderKind::Anthropic | ProviderKind::Bedrock | ProviderKind::Google => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::OpenAi => "openai",
            Variant::DeepSeek => "deepseek",
            Variant::Xai => "xai",
            Variant::OpenRouter => "openrouter",
            Variant::Doubao => "doubao",
            Variant::Poe => "poe",
            Variant::Ollama => "ollama",
        }
    }

    /// OpenAI's o-series and gpt-5 reject `max_tokens`; the others read `max_tokens`.
    fn max_tokens_field(self) -> &'static str {
        match self {
            Variant::OpenAi => "max_completion_tokens",
            _ => "max_tokens",
        }
    }

    /// Field name for reasoning text sent back on assistant turns (None: do not send it back).
    fn reasoning_input_field(self) -> Option<&'static str> {
        match self {
            // DeepSeek thinking mode requires reasoning_content back on tool-call turns (providers.md §6).
            Variant::DeepSeek => Some("reasoning_content"),
            _ => None,
        }
    }

    fn supports_embeddings(self) -> bool {
        matches!(
            self,
            Variant::OpenAi | Variant::OpenRouter | Variant::Doubao | Variant::Ollama
        )
    }

    fn supports_images(self) -> bool {
        matches!(self, Variant::OpenAi | Variant::Xai | Variant::Doubao)
    }
}

/// The OpenAI-family provider module.
#[derive(Debug, Clone)]
pub struct OpenAiFamily {
    variant: Variant,
}

impl OpenAiFamily {
    pub fn new(variant: Variant) -> OpenAiFamily {
        OpenAiFamily { variant }
    }

    fn headers(&self, up: &Upstream<'_>) -> Result<HeaderMap, ProviderError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = up
            .credential
            .api_key
            .as_ref()
            .filter(|k| !k.expose().is_empty())
        {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    ProviderError::new(ErrorClass::Auth, "credential contains invalid characters")
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        if self.variant == Variant::OpenRouter {
            // App attribution (providers.md §8).
            let referer = up
                .settings
                .public_url
                .as_deref()
                .unwrap_or("https://github.com/AIGNE-io/aigne-hub");
            let title = up.settings.app_title.as_deref().unwrap_or("AIGNE Hub");
            if let Ok(v) = HeaderValue::from_str(referer) {
                headers.insert("http-referer", v);
            }
            if let Ok(v) = HeaderValue::from_str(title) {
                headers.insert("x-title", v.clone());
                headers.insert("x-openrouter-title", v);
            }
        }
        Ok(headers)
    }

    async fn post(
        &self,
        up: &Upstream<'_>,
        path: &str,
        body: &Value,
    ) -> Result<Response, ProviderError> {
        let url = super::endpoint_url(&format!("{}{}", up.base_url, path))?;
        let request = up.http.post(url).headers(self.headers(up)?);
        let variant = self.variant;
        super::send_post(
            request,
            super::json_bytes(body)?,
            |status, headers, body| classify_error(variant, status, headers, body),
        )
        .await
    }
}

#[async_trait::async_trait]
impl Provider for OpenAiFamily {
    async fn chat(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let body = build_chat_body(self.variant, up.model, req, false);
        let resp = self.post(&up, "/chat/completions", &body).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        parse_chat_response(self.variant, &bytes, up.model)
    }

    async fn chat_stream(
        &self,
        up: Upstream<'_>,
        req: &ChatRequest,
    ) -> Result<EventStream, ProviderError> {
        let body = build_chat_body(self.variant, up.model, req, true);
        let resp = self.post(&up, "/chat/completions", &body).await?;
        Ok(decode_stream(self.variant, resp, up.model.to_string()))
    }

    async fn embeddings(
        &self,
        up: Upstream<'_>,
        req: &EmbeddingsRequest,
    ) -> Result<EmbeddingsResponse, ProviderError> {
        if !self.variant.supports_embeddings() {
            return Err(ProviderError::unsupported("embeddings"));
        }
        let mut body = Map::new();
        for (k, v) in &req.extra {
            body.insert(k.clone(), v.clone());
        }
        body.insert("model".into(), Value::String(up.model.to_string()));
        body.insert("input".into(), req.input.clone());
        if let Some(d) = req.dimensions {
            body.insert("dimensions".into(), json!(d));
        }
        if let Some(f) = &req.encoding_format {
            body.insert("encoding_format".into(), json!(f));
        }
        if let Some(u) = &req.user {
            body.insert("user".into(), json!(u));
        }
        let resp = self.post(&up, "/embeddings", &Value::Object(body)).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        parse_embeddings(self.variant, &bytes, up.model)
    }

    async fn images(
        &self,
        up: Upstream<'_>,
        req: &ImagesRequest,
    ) -> Result<ImagesResponse, ProviderError> {
        if !self.variant.supports_images() {
            return Err(ProviderError::unsupported("image generation"));
        }
        let mut body = Map::new();
        for (k, v) in &req.extra {
            body.insert(k.clone(), v.clone());
        }
        body.insert("model".into(), json!(up.model));
        body.insert("prompt".into(), json!(req.prompt));
        if let Some(n) = req.n {
            body.insert("n".into(), json!(n));
        }
        // xAI takes no size/quality/style (providers.md §9).
        if self.variant != Variant::Xai {
            if let Some(v) = &req.size {
                body.insert("size".into(), json!(v));
            }
            if let Some(v) = &req.quality {
                body.insert("quality".into(), json!(v));
            }
            if let Some(v) = &req.style {
                body.insert("style".into(), json!(v));
            }
        }
        if let Some(v) = &req.response_format {
            body.insert("response_format".into(), json!(v));
        }
        if let Some(v) = &req.user {
            body.insert("user".into(), json!(v));
        }
        let resp = self
            .post(&up, "/images/generations", &Value::Object(body))
            .await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::from_transport(&e))?;
        parse_images(&bytes, up.model)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Classifies an upstream error response (status + body) of any family member.
pub fn classify_error(
    variant: Variant,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> ProviderError {
    let (message, code) = error_message(body);
    let message = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message
    };
    let code_l = code.as_deref().unwrap_or("").to_ascii_lowercase();
    let msg_l = message.to_ascii_lowercase();
    let class = match status {
        400 | 422 | 413 => {
            if code_l.contains("context_length")
                || msg_l.contains("maximum context length")
                || msg_l.contains("context length")
                // xAI: "This model's maximum prompt length is 131072 but the request contains …".
                || msg_l.contains("maximum prompt length")
            {
                ErrorClass::ContextLength
            } else if msg_l.contains("api key")
                && (msg_l.contains("incorrect") || msg_l.contains("invalid"))
            {
                // xAI answers a bad key with 400 and the flat error shape (providers.md §9).
                ErrorClass::Auth
            } else {
                ErrorClass::InvalidRequest
            }
        }
        401 => ErrorClass::Auth,
        403 => {
            if variant == Variant::OpenRouter && msg_l.contains("moderat") {
                ErrorClass::ContentFilter
            } else {
                ErrorClass::Auth
            }
        }
        402 => ErrorClass::QuotaExceeded,
        404 => ErrorClass::NotFound,
        408 | 504 => ErrorClass::Timeout,
        429 => {
            if code_l.contains("insufficient_quota") {
                ErrorClass::QuotaExceeded
            } else {
                ErrorClass::RateLimited
            }
        }
        503 | 529 => ErrorClass::Overloaded,
        409 | 500..=599 => ErrorClass::Server,
        _ => ErrorClass::Server,
    };
    let retry_after = parse_retry_after(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        headers.get("retry-after-ms").and_then(|v| v.to_str().ok()),
    );
    ProviderError {
        class,
        status: Some(status),
        message,
        code,
        retry_after,
    }
}

/// Extracts (message, code) from the family's error shapes: `{"error":{message,type,code}}`,
/// OpenRouter's numeric code, xAI's flat `{"code","error"}`, Ollama's `{"error":"…"}`.
fn error_message(body: &[u8]) -> (String, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        return (truncate(text.trim(), 500), None);
    };
    let code_of = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    match v.get("error") {
        Some(Value::Object(err)) => {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let code = code_of(err.get("code")).or_else(|| code_of(err.get("type")));
            (truncate(&message, 1000), code)
        }
        Some(Value::String(s)) => (truncate(s, 1000), code_of(v.get("code"))),
        _ => {
            let message = v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            (truncate(&message, 1000), code_of(v.get("code")))
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// An error object that arrives inside a 200 stream (OpenAI, OpenRouter, Doubao).
fn stream_error(err: &Value) -> ProviderError {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| err.as_str())
        .unwrap_or("upstream stream error")
        .to_string();
    let code = match err.get("code").or_else(|| err.get("type")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let code_l = code.as_deref().unwrap_or("").to_ascii_lowercase();
    let class = if code_l.contains("rate") || code_l == "429" {
        ErrorClass::RateLimited
    } else if code_l.contains("overload") {
        ErrorClass::Overloaded
    } else {
        ErrorClass::Server
    };
    ProviderError {
        class,
        status: None,
        message,
        code,
        retry_after: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCallDelta>>,
}

#[derive(Deserialize)]
struct WireToolCallDelta {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Turns one decoded SSE data payload into events. Returns `Ok(true)` at `[DONE]`.
/// (Public for the criterion benches.)
pub fn decode_chunk(
    variant: Variant,
    data: &str,
    started: &mut bool,
    finished: &mut bool,
    fallback_model: &str,
    out: &mut Vec<StreamEvent>,
) -> Result<bool, ProviderError> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(true);
    }
    if data.is_empty() {
        return Ok(false);
    }
    let chunk: WireChunk = serde_json::from_str(data).map_err(|e| {
        ProviderError::new(ErrorClass::Protocol, format!("malformed stream chunk: {e}"))
    })?;
    if let Some(err) = &chunk.error {
        return Err(stream_error(err));
    }
    if !*started {
        *started = true;
        out.push(StreamEvent::Start {
            id: chunk.id.clone().unwrap_or_else(new_completion_id),
            model: chunk
                .model
                .clone()
                .unwrap_or_else(|| fallback_model.to_string()),
        });
    }
    for choice in &chunk.choices {
        if let Some(delta) = &choice.delta {
            if let Some(r) = delta
                .reasoning_content
                .as_ref()
                .or(delta.reasoning.as_ref())
                && !r.is_empty()
            {
                out.push(StreamEvent::ReasoningDelta { text: r.clone() });
            }
            if let Some(c) = &delta.content
                && !c.is_empty()
            {
                out.push(StreamEvent::TextDelta { text: c.clone() });
            }
            if let Some(calls) = &delta.tool_calls {
                for (pos, call) in calls.iter().enumerate() {
                    let (name, arguments) = match &call.function {
                        Some(f) => (f.name.clone(), f.arguments.clone().unwrap_or_default()),
                        None => (None, String::new()),
                    };
                    out.push(StreamEvent::ToolCallDelta {
                        index: call.index.unwrap_or(pos as u32),
                        id: call.id.clone(),
                        name,
                        arguments,
                    });
                }
            }
        }
        if let Some(reason) = &choice.finish_reason {
            if reason == "error" {
                // OpenRouter ends a failed generation this way (providers.md §8).
                return Err(ProviderError::new(
                    ErrorClass::Server,
                    "generation failed upstream",
                ));
            }
            *finished = true;
            out.push(StreamEvent::Finish {
                reason: FinishReason::from_openai(reason),
            });
        }
    }
    if let Some(usage) = &chunk.usage {
        out.push(StreamEvent::Usage {
            usage: normalise_usage(variant, usage),
        });
    }
    Ok(false)
}

fn decode_stream(variant: Variant, resp: Response, model: String) -> EventStream {
    Box::pin(ChunkStream::new(super::sse_events(resp), variant, model))
}

/// An OpenAI-family SSE body as stream events: a plain state machine, not an `async_stream`
/// generator, because every open stream holds one. The generator kept its locals of four yield
/// points apart (1,296 bytes); this is the SSE reader and a few fields (the test
/// `an_open_streams_decoder_stays_small` bounds it).
struct ChunkStream<S> {
    events: S,
    variant: Variant,
    /// The model to report when a chunk names none.
    model: String,
    started: bool,
    finished: bool,
    /// Nothing more comes from upstream: what is pending (and `failed`) is all that is left.
    ended: bool,
    /// The events of the last chunk not yet yielded. Replaced by an empty one once drained, so
    /// that no buffer stays allocated while the stream waits for its next chunk.
    pending: std::vec::IntoIter<StreamEvent>,
    /// A decoding error, yielded after `pending`; the stream ends with it.
    failed: Option<ProviderError>,
}

impl<S> ChunkStream<S> {
    fn new(events: S, variant: Variant, model: String) -> ChunkStream<S> {
        ChunkStream {
            events,
            variant,
            model,
            started: false,
            finished: false,
            ended: false,
            pending: Vec::new().into_iter(),
            failed: None,
        }
    }
}

impl<S> futures::Stream for ChunkStream<S>
where
    S: futures::Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Unpin,
{
    type Item = Result<StreamEvent, ProviderError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if let Some(ev) = this.pending.next() {
                return Poll::Ready(Some(Ok(ev)));
            }
            this.pending = Vec::new().into_iter();
            if let Some(e) = this.failed.take() {
                this.ended = true;
                return Poll::Ready(Some(Err(e)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match std::task::ready!(this.events.poll_next_unpin(cx)) {
                Some(Ok(event)) => {
                    let mut out = Vec::new();
                    match decode_chunk(
                        this.variant,
                        super::sse_data(&event),
                        &mut this.started,
                        &mut this.finished,
                        &this.model,
                        &mut out,
                    ) {
                        Ok(done) => this.ended = done,
                        Err(e) => {
                            this.ended = true;
                            this.failed = Some(e);
                        }
                    }
                    this.pending = out.into_iter();
                }
                Some(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ProviderError::new(
                        ErrorClass::StreamInterrupted,
                        format!("stream broke: {e}"),
                    ))));
                }
                None => {
                    this.ended = true;
                    if this.finished {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(ProviderError::new(
                        ErrorClass::StreamInterrupted,
                        "upstream closed the stream before it finished",
                    ))));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request building

/// Builds the upstream body. Usage is always requested on streams.
pub fn build_chat_body(variant: Variant, model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut body = Map::with_capacity(8 + req.extra.len());
    for (k, v) in &req.extra {
        body.insert(k.clone(), v.clone());
    }
    body.insert("model".into(), Value::String(model.to_string()));
    body.insert(
        "messages".into(),
        Value::Array(
            req.messages
                .iter()
                .map(|m| message_to_wire(variant, m))
                .collect(),
        ),
    );
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), json!(t.name));
                if let Some(d) = &t.description {
                    f.insert("description".into(), json!(d));
                }
                f.insert(
                    "parameters".into(),
                    if t.parameters.is_null() {
                        json!({"type":"object","properties":{}})
                    } else {
                        t.parameters.clone()
                    },
                );
                if let Some(s) = t.strict {
                    f.insert("strict".into(), json!(s));
                }
                json!({"type": "function", "function": Value::Object(f)})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = &req.tool_choice {
        body.insert(
            "tool_choice".into(),
            match tc {
                ToolChoice::None => json!("none"),
                ToolChoice::Auto => json!("auto"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Function { name } => {
                    json!({"type":"function","function":{"name": name}})
                }
            },
        );
    }
    if let Some(p) = req.parallel_tool_calls {
        body.insert("parallel_tool_calls".into(), json!(p));
    }
    if let Some(rf) = &req.response_format {
        body.insert("response_format".into(), response_format_to_wire(rf));
    }
    if let Some(m) = req.max_tokens {
        body.insert(variant.max_tokens_field().into(), json!(m));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(t) = req.top_p {
        body.insert("top_p".into(), json!(t));
    }
    if !req.stop.is_empty() {
        body.insert("stop".into(), json!(req.stop));
    }
    if let Some(s) = req.seed {
        body.insert("seed".into(), json!(s));
    }
    if let Some(p) = req.presence_penalty {
        body.insert("presence_penalty".into(), json!(p));
    }
    if let Some(p) = req.frequency_penalty {
        body.insert("frequency_penalty".into(), json!(p));
    }
    if let Some(r) = &req.reasoning_effort {
        body.insert("reasoning_effort".into(), json!(r));
    }
    if let Some(u) = &req.user {
        body.insert("user".into(), json!(u));
    }
    body.insert("stream".into(), Value::Bool(stream));
    if stream {
        // Always ask for usage; the egress strips the extra chunk when the caller did not ask.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    } else {
        body.remove("stream_options");
    }
    Value::Object(body)
}

fn response_format_to_wire(rf: &ResponseFormat) -> Value {
    match rf {
        ResponseFormat::Text => json!({"type":"text"}),
        ResponseFormat::JsonObject => json!({"type":"json_object"}),
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
            description,
        } => {
            let mut js = Map::new();
            js.insert("name".into(), json!(name));
            js.insert("schema".into(), schema.clone());
            if let Some(s) = strict {
                js.insert("strict".into(), json!(s));
            }
            if let Some(d) = description {
                js.insert("description".into(), json!(d));
            }
            json!({"type":"json_schema","json_schema": Value::Object(js)})
        }
    }
}

fn content_to_wire(m: &Message) -> Value {
    let only_text = m
        .content
        .iter()
        .all(|p| matches!(p, ContentPart::Text { .. }));
    if only_text && (m.content_is_text || m.content.len() <= 1) {
        return Value::String(m.joined_text());
    }
    Value::Array(
        m.content
            .iter()
            .map(|p| match p {
                ContentPart::Text { text } => json!({"type":"text","text": text}),
                ContentPart::Image { source, detail } => {
                    let mut iu = Map::new();
                    iu.insert("url".into(), Value::String(source.to_url()));
                    if let Some(d) = detail {
                        iu.insert("detail".into(), json!(d));
                    }
                    json!({"type":"image_url","image_url": Value::Object(iu)})
                }
            })
            .collect(),
    )
}

fn message_to_wire(variant: Variant, m: &Message) -> Value {
    let mut obj = Map::with_capacity(4);
    obj.insert("role".into(), Value::String(m.role.as_str().to_string()));
    match m.role {
        Role::Assistant => {
            if m.content.is_empty() && !m.tool_calls.is_empty() {
                obj.insert("content".into(), Value::Null);
            } else {
                obj.insert("content".into(), content_to_wire(m));
            }
            if !m.tool_calls.is_empty() {
                obj.insert(
                    "tool_calls".into(),
                    Value::Array(
                        m.tool_calls
                            .iter()
                            .map(|c| json!({"id": c.id, "type":"function","function":{"name": c.name, "arguments": c.arguments}}))
                            .collect(),
                    ),
                );
                if let (Some(field), Some(r)) = (variant.reasoning_input_field(), &m.reasoning) {
                    obj.insert(field.into(), json!(r));
                }
            }
        }
        Role::Tool => {
            obj.insert("content".into(), content_to_wire(m));
            if let Some(id) = &m.tool_call_id {
                obj.insert("tool_call_id".into(), json!(id));
            }
        }
        Role::System | Role::Developer | Role::User => {
            obj.insert("content".into(), content_to_wire(m));
        }
    }
    if let Some(n) = &m.name {
        obj.insert("name".into(), json!(n));
    }
    Value::Object(obj)
}

// ---------------------------------------------------------------------------------------------
// Responses and usage

#[derive(Deserialize, Default)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<WireCompletionDetails>,
    /// DeepSeek.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
    /// OpenRouter: the cost it charged, in USD.
    #[serde(default)]
    cost: Option<serde_json::Number>,
}

#[derive(Deserialize, Default)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct WireCompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// Normalises family usage (providers.md §12.1).
fn normalise_usage(variant: Variant, u: &WireUsage) -> Usage {
    let reasoning = u
        .completion_tokens_details
        .as_ref()
        .and_then(|d| d.reasoning_tokens)
        .unwrap_or(0);
    let mut completion = u.completion_tokens.unwrap_or(0);
    if variant == Variant::Xai {
        // xAI's completion_tokens exclude reasoning; total includes it.
        completion += reasoning;
    }
    let cached_detail = u
        .prompt_tokens_details
        .as_ref()
        .and_then(|d| d.cached_tokens);
    let cache_read = match variant {
        Variant::DeepSeek => u.prompt_cache_hit_tokens.or(cached_detail).unwrap_or(0),
        _ => cached_detail.unwrap_or(0),
    };
    Usage {
        prompt_tokens: u.prompt_tokens.unwrap_or(0),
        completion_tokens: completion,
        cache_read_tokens: cache_read,
        cache_write_tokens: u
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cache_write_tokens)
            .unwrap_or(0),
        reasoning_tokens: reasoning,
        images: 0,
        estimated: false,
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    images: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
}

/// Parses a non-streaming chat body. Returns `Ok(None)` usage when the provider gave none.
pub fn parse_chat_response(
    variant: Variant,
    bytes: &[u8],
    model: &str,
) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = crate::json_from_slice(bytes).map_err(|e| {
        ProviderError::new(ErrorClass::Protocol, format!("malformed response: {e}"))
    })?;
    if let Some(err) = &wire.error {
        return Err(stream_error(err));
    }
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ProviderError::new(ErrorClass::Protocol, "response has no choices"))?;
    let mut output = AssistantOutput::default();
    if let Some(msg) = choice.message {
        output.content = match msg.content {
            Some(Value::String(s)) => Some(s),
            Some(Value::Array(parts)) => Some(
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<String>(),
            ),
            _ => None,
        };
        output.reasoning = msg
            .reasoning_content
            .or(msg.reasoning)
            .filter(|r| !r.is_empty());
        output.tool_calls = msg
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| ToolCall {
                id: c.id.unwrap_or_else(new_call_id),
                name: c.function.name,
                arguments: match c.function.arguments {
                    Some(Value::String(s)) => s,
                    Some(Value::Null) | None => "{}".to_string(),
                    // Some servers (Ollama native) send an object; keep it as JSON text.
                    Some(other) => other.to_string(),
                },
                signature: None,
            })
            .collect();
        output.images = msg
            .images
            .unwrap_or_default()
            .iter()
            .filter_map(|i| {
                i.pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
    }
    let finish_reason = match choice.finish_reason.as_deref() {
        Some(r) => FinishReason::from_openai(r),
        None if !output.tool_calls.is_empty() => FinishReason::ToolCalls,
        None => FinishReason::Stop,
    };
    let provider_cost = wire
        .usage
        .as_ref()
        .and_then(|u| u.cost.as_ref())
        .map(|c| c.to_string());
    let has_usage = wire
        .usage
        .as_ref()
        .is_some_and(|u| u.prompt_tokens.is_some() || u.completion_tokens.is_some());
    let mut usage = wire
        .usage
        .as_ref()
        .map(|u| normalise_usage(variant, u))
        .unwrap_or_default();
    if !has_usage {
        // Marked so the engine estimates it (Poe may send none).
        usage.estimated = true;
    }
    Ok(ChatResponse {
        id: wire.id.unwrap_or_else(new_completion_id),
        model: wire.model.unwrap_or_else(|| model.to_string()),
        created: wire.created.unwrap_or_else(unix_now),
        output,
        finish_reason,
        usage,
        provider_cost,
        cost: None,
    })
}

#[derive(Deserialize)]
struct WireEmbeddings {
    #[serde(default)]
    data: Vec<WireEmbedding>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    index: Option<u32>,
    embedding: Value,
}

fn parse_embeddings(
    variant: Variant,
    bytes: &[u8],
    model: &str,
) -> Result<EmbeddingsResponse, ProviderError> {
    let wire: WireEmbeddings = serde_json::from_slice(bytes).map_err(|e| {
        ProviderError::new(
            ErrorClass::Protocol,
            format!("malformed embeddings response: {e}"),
        )
    })?;
    let mut usage = wire
        .usage
        .as_ref()
        .map(|u| normalise_usage(variant, u))
        .unwrap_or_default();
    if wire.usage.as_ref().and_then(|u| u.prompt_tokens).is_none() {
        usage.estimated = true;
    }
    Ok(EmbeddingsResponse {
        model: wire.model.unwrap_or_else(|| model.to_string()),
        data: wire
            .data
            .into_iter()
            .enumerate()
            .map(|(i, e)| Embedding {
                index: e.index.unwrap_or(i as u32),
                embedding: e.embedding,
            })
            .collect(),
        usage,
        cost: None,
    })
}

#[derive(Deserialize)]
struct WireImages {
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    data: Vec<GeneratedImage>,
    #[serde(default)]
    usage: Option<Value>,
}

fn parse_images(bytes: &[u8], model: &str) -> Result<ImagesResponse, ProviderError> {
    let wire: WireImages = serde_json::from_slice(bytes).map_err(|e| {
        ProviderError::new(
            ErrorClass::Protocol,
            format!("malformed images response: {e}"),
        )
    })?;
    let count = wire.data.len() as u64;
    let tokens = |key: &str| {
        wire.usage
            .as_ref()
            .and_then(|u| u.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let usage = Usage {
        prompt_tokens: tokens("input_tokens"),
        completion_tokens: tokens("output_tokens"),
        images: wire
            .usage
            .as_ref()
            .and_then(|u| u.get("generated_images"))
            .and_then(Value::as_u64)
            .unwrap_or(count),
        ..Usage::default()
    };
    Ok(ImagesResponse {
        created: wire.created.unwrap_or_else(unix_now),
        model: wire.model.unwrap_or_else(|| model.to_string()),
        data: wire.data,
        usage,
        cost: None,
    })
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn new_completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

fn new_call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ImageSource;

    /// Every open stream holds its decoder for as long as it is open; 5,000 streams multiply it
    /// (BENCHMARKS.md, open streams). As an `async_stream` generator it was 1,296 bytes.
    #[test]
    fn an_open_streams_decoder_stays_small() {
        let decoder = hub_testkit::returned_size(&|(v, r, m): (Variant, Response, String)| {
            ChunkStream::new(super::super::sse_events(r), v, m)
        });
        let sse = hub_testkit::returned_size(&super::super::sse_events);
        assert!(
            decoder < sse + 200,
            "decoder {decoder} B over an SSE reader of {sse} B"
        );
    }

    fn req() -> ChatRequest {
        ChatRequest {
            model: "openai/gpt-4o-mini".into(),
            messages: vec![Message::text(Role::User, "hi")],
            stream: false,
            ..ChatRequest::default()
        }
    }

    #[test]
    fn body_asks_for_usage_on_streams_only() {
        let b = build_chat_body(Variant::OpenAi, "gpt-4o-mini", &req(), true);
        assert_eq!(b["stream_options"]["include_usage"], json!(true));
        assert_eq!(b["model"], json!("gpt-4o-mini"));
        let b = build_chat_body(Variant::OpenAi, "gpt-4o-mini", &req(), false);
        assert!(b.get("stream_options").is_none());
    }

    #[test]
    fn max_tokens_field_per_variant() {
        let mut r = req();
        r.max_tokens = Some(64);
        assert_eq!(
            build_chat_body(Variant::OpenAi, "m", &r, false)["max_completion_tokens"],
            json!(64)
        );
        assert_eq!(
            build_chat_body(Variant::DeepSeek, "m", &r, false)["max_tokens"],
            json!(64)
        );
    }

    #[test]
    fn deepseek_gets_reasoning_back_only_on_tool_call_turns() {
        let mut r = req();
        let mut with_tools = Message::text(Role::Assistant, "");
        with_tools.content.clear();
        with_tools.reasoning = Some("thought".into());
        with_tools.tool_calls = vec![ToolCall {
            id: "c1".into(),
            name: "f".into(),
            arguments: "{}".into(),
            signature: None,
        }];
        let mut plain = Message::text(Role::Assistant, "answer");
        plain.reasoning = Some("thought".into());
        r.messages = vec![with_tools, plain];
        let b = build_chat_body(Variant::DeepSeek, "m", &r, false);
        assert_eq!(b["messages"][0]["reasoning_content"], json!("thought"));
        assert_eq!(b["messages"][0]["content"], Value::Null);
        assert!(b["messages"][1].get("reasoning_content").is_none());
        let b = build_chat_body(Variant::OpenAi, "m", &r, false);
        assert!(b["messages"][0].get("reasoning_content").is_none());
    }

    #[test]
    fn images_render_as_image_url_parts() {
        let mut r = req();
        r.messages = vec![Message {
            role: Role::User,
            content: vec![
                ContentPart::Text {
                    text: "what".into(),
                },
                ContentPart::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "AAAA".into(),
                    },
                    detail: Some("low".into()),
                },
            ],
            content_is_text: false,
            tool_calls: vec![],
            tool_call_id: None,
            name: None,
            reasoning: None,
            reasoning_blocks: Vec::new(),
        }];
        let b = build_chat_body(Variant::OpenAi, "m", &r, false);
        assert_eq!(
            b["messages"][0]["content"][1]["image_url"]["url"],
            json!("data:image/png;base64,AAAA")
        );
        assert_eq!(
            b["messages"][0]["content"][1]["image_url"]["detail"],
            json!("low")
        );
    }

    #[test]
    fn usage_normalisation_table() {
        // (variant, wire usage, expected prompt, completion, cache_read, reasoning)
        type Case = (Variant, Value, (u64, u64, u64, u64));
        let cases: Vec<Case> = vec![
            (
                Variant::OpenAi,
                json!({"prompt_tokens":22,"completion_tokens":301,"prompt_tokens_details":{"cached_tokens":5},"completion_tokens_details":{"reasoning_tokens":192}}),
                (22, 301, 5, 192),
            ),
            (
                Variant::Xai,
                json!({"prompt_tokens":12,"completion_tokens":1,"total_tokens":241,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":228}}),
                (12, 229, 2, 228),
            ),
            (
                Variant::DeepSeek,
                json!({"prompt_tokens":18,"completion_tokens":345,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":315},"prompt_cache_hit_tokens":7,"prompt_cache_miss_tokens":11}),
                (18, 345, 7, 315),
            ),
            (
                Variant::Ollama,
                json!({"prompt_tokens":26,"completion_tokens":282,"total_tokens":308}),
                (26, 282, 0, 0),
            ),
        ];
        for (variant, wire, (p, c, cr, r)) in cases {
            let u: WireUsage = serde_json::from_value(wire).unwrap_or_default();
            let n = normalise_usage(variant, &u);
            assert_eq!(
                (
                    n.prompt_tokens,
                    n.completion_tokens,
                    n.cache_read_tokens,
                    n.reasoning_tokens
                ),
                (p, c, cr, r),
                "{variant:?}"
            );
        }
    }

    #[test]
    fn parses_tool_call_response_and_marks_missing_usage() {
        let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"GPT-4o","choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}}]}"#;
        let r = parse_chat_response(Variant::Poe, body, "GPT-4o");
        let r = match r {
            Ok(r) => r,
            Err(e) => unreachable!("{e}"),
        };
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.output.tool_calls[0].arguments, "{\"city\":\"Paris\"}");
        assert!(r.usage.estimated);
    }

    #[test]
    fn openrouter_cost_is_kept_as_decimal_text() {
        let body = br#"{"id":"gen-1","model":"anthropic/claude-3.5-sonnet","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":194,"completion_tokens":2,"total_tokens":196,"cost":0.95}}"#;
        let r = parse_chat_response(Variant::OpenRouter, body, "m");
        assert_eq!(
            r.ok().and_then(|r| r.provider_cost),
            Some("0.95".to_string())
        );
    }

    #[test]
    fn stream_chunks_decode() {
        let mut started = false;
        let mut finished = false;
        let mut out = Vec::new();
        let chunks = [
            r#"{"id":"c1","model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":null,"reasoning_content":"We"},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c1","model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c1","model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}],"usage":{"prompt_tokens":18,"completion_tokens":3,"prompt_cache_hit_tokens":4,"completion_tokens_details":{"reasoning_tokens":1}}}"#,
        ];
        for c in chunks {
            let r = decode_chunk(
                Variant::DeepSeek,
                c,
                &mut started,
                &mut finished,
                "m",
                &mut out,
            );
            assert!(matches!(r, Ok(false)));
        }
        assert!(matches!(
            decode_chunk(
                Variant::DeepSeek,
                "[DONE]",
                &mut started,
                &mut finished,
                "m",
                &mut out
            ),
            Ok(true)
        ));
        assert_eq!(out.len(), 5);
        assert!(matches!(&out[0], StreamEvent::Start { id, .. } if id == "c1"));
        assert!(matches!(&out[1], StreamEvent::ReasoningDelta { text } if text == "We"));
        assert!(matches!(&out[2], StreamEvent::TextDelta { text } if text == "Hi"));
        assert!(matches!(
            &out[3],
            StreamEvent::Finish {
                reason: FinishReason::Stop
            }
        ));
        assert!(
            matches!(&out[4], StreamEvent::Usage { usage } if usage.cache_read_tokens == 4 && usage.prompt_tokens == 18)
        );
    }

    fn sse(data: &str) -> Result<sse_stream::Sse, sse_stream::Error> {
        Ok(sse_stream::Sse {
            event: None,
            data: Some(data.to_string()),
            id: None,
            retry: None,
        })
    }

    fn over(
        events: Vec<Result<sse_stream::Sse, sse_stream::Error>>,
    ) -> ChunkStream<impl futures::Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Unpin>
    {
        // Polled past its end only if the decoder did not stop where it should.
        let after = futures::stream::poll_fn(|_| -> std::task::Poll<Option<_>> {
            unreachable!("the upstream was read past the end of the stream")
        });
        ChunkStream::new(
            futures::stream::iter(events).chain(after),
            Variant::OpenAi,
            "m".into(),
        )
    }

    const CHUNK: &str = r#"{"id":"c","object":"chat.completion.chunk","model":"gpt","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}"#;

    /// The decoder yields a chunk's events in order, then what ends the stream (`[DONE]`, or an
    /// error chunk after the events before it) exactly once, and never reads upstream after it.
    #[test]
    fn the_decoder_ends_where_the_stream_ends() {
        let run = |events| {
            futures::executor::block_on(async move {
                let mut s = over(events);
                let mut got = Vec::new();
                while let Some(item) = s.next().await {
                    got.push(item.map_err(|e| e.class));
                }
                assert!(s.next().await.is_none(), "nothing after the end");
                got
            })
        };
        let done = run(vec![sse(CHUNK), sse("[DONE]")]);
        assert!(
            matches!(&done[..], [Ok(StreamEvent::Start { .. }), Ok(StreamEvent::TextDelta { text })] if text == "hi"),
            "{done:?}"
        );
        let failed = run(vec![
            sse(CHUNK),
            sse(r#"{"error":{"message":"boom","type":"server_error"}}"#),
        ]);
        assert!(
            matches!(
                &failed[..],
                [
                    Ok(StreamEvent::Start { .. }),
                    Ok(StreamEvent::TextDelta { .. }),
                    Err(ErrorClass::Server)
                ]
            ),
            "{failed:?}"
        );
    }

    #[test]
    fn stream_error_chunks_become_errors() {
        let mut s = false;
        let mut f = false;
        let mut out = Vec::new();
        let r = decode_chunk(
            Variant::OpenAi,
            r#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
            &mut s,
            &mut f,
            "m",
            &mut out,
        );
        assert!(
            matches!(r, Err(e) if e.class == ErrorClass::Server && e.message.contains("server had an error"))
        );
        let r = decode_chunk(
            Variant::OpenRouter,
            r#"{"id":"g","object":"chat.completion.chunk","error":{"code":"server_error","message":"boom"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#,
            &mut s,
            &mut f,
            "m",
            &mut out,
        );
        assert!(matches!(r, Err(e) if e.message == "boom"));
    }

    #[test]
    fn error_classification_table() {
        let h = HeaderMap::new();
        let cases: Vec<(Variant, u16, &str, ErrorClass)> = vec![
            (
                Variant::OpenAi,
                401,
                r#"{"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
                ErrorClass::Auth,
            ),
            (
                Variant::OpenAi,
                429,
                r#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
                ErrorClass::QuotaExceeded,
            ),
            (
                Variant::OpenAi,
                429,
                r#"{"error":{"message":"Rate limit reached","type":"tokens","code":"rate_limit_exceeded"}}"#,
                ErrorClass::RateLimited,
            ),
            (
                Variant::OpenAi,
                400,
                r#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
                ErrorClass::ContextLength,
            ),
            (
                Variant::Xai,
                400,
                r#"{"code":"Client specified an invalid argument","error":"Incorrect API key provided: xa***"}"#,
                ErrorClass::Auth,
            ),
            (
                Variant::OpenRouter,
                402,
                r#"{"error":{"code":402,"message":"Insufficient credits"}}"#,
                ErrorClass::QuotaExceeded,
            ),
            (
                Variant::Doubao,
                404,
                r#"{"error":{"code":"InvalidEndpointOrModel.NotFound","message":"not found","param":"model","type":"NotFound"}}"#,
                ErrorClass::NotFound,
            ),
            (
                Variant::DeepSeek,
                503,
                r#"{"error":{"message":"Server Overloaded"}}"#,
                ErrorClass::Overloaded,
            ),
            (
                Variant::Ollama,
                500,
                r#"{"error":"the model failed to generate a response"}"#,
                ErrorClass::Server,
            ),
            (
                Variant::OpenAi,
                502,
                "<html>bad gateway</html>",
                ErrorClass::Server,
            ),
        ];
        for (variant, status, body, class) in cases {
            let e = classify_error(variant, status, &h, body.as_bytes());
            assert_eq!(e.class, class, "{variant:?} {status} {body}");
            assert!(!e.message.is_empty());
        }
        let e = classify_error(Variant::Ollama, 500, &h, br#"{"error":"the model failed"}"#);
        assert_eq!(e.message, "the model failed");
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        let e = classify_error(Variant::OpenAi, 429, &h, b"{}");
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(3)));
    }
}
