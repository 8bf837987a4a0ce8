//! OpenAI wire <-> canonical: parses `/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/images/generations` bodies and renders responses, stream chunks and errors. Pure functions,
//! table-tested, and the request parser never panics on any input.

use hub_core::HubError;
use hub_core::types::{
    ChatRequest, ChatResponse, ContentPart, EmbeddingsRequest, EmbeddingsResponse, ImageSource,
    ImagesRequest, ImagesResponse, Message, ModelInfo, ResponseFormat, Role, StreamEvent, Tool,
    ToolCall, ToolChoice, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
struct WireChatRequest {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    reasoning_effort: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<WireStreamOptions>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct WireStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunctionCall,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    function: WireFunctionDef,
}

#[derive(Deserialize)]
struct WireFunctionDef {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

/// Turns a serde error into a 400 that says what was wrong and where.
fn bad_json(e: serde_json::Error) -> HubError {
    let msg = e.to_string();
    if e.is_syntax() || e.is_eof() {
        HubError::invalid(format!(
            "We could not parse the JSON body of your request. ({msg}) The API expects a JSON payload."
        ))
    } else {
        HubError::invalid(format!("Invalid request body: {msg}"))
    }
}

/// Extracts the `model` of a body for records, without failing.
pub fn peek_model(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct M {
        #[serde(default)]
        model: Option<String>,
    }
    serde_json::from_slice::<M>(body)
        .ok()
        .and_then(|m| m.model)
        .unwrap_or_default()
}

fn parse_content(
    role: &str,
    content: Option<Value>,
    idx: usize,
) -> Result<(Vec<ContentPart>, bool), HubError> {
    let param = format!("messages[{idx}].content");
    match content {
        None | Some(Value::Null) => Ok((Vec::new(), false)),
        Some(Value::String(s)) => Ok((vec![ContentPart::Text { text: s }], true)),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "text" | "input_text" => {
                        let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                            HubError::invalid_param(
                                &format!("{param}[{j}].text"),
                                "text content parts need a string `text`",
                            )
                        })?;
                        out.push(ContentPart::Text {
                            text: text.to_string(),
                        });
                    }
                    "image_url" => {
                        let iu = part.get("image_url");
                        let url = iu
                            .and_then(|v| {
                                v.get("url").and_then(Value::as_str).or_else(|| v.as_str())
                            })
                            .ok_or_else(|| {
                                HubError::invalid_param(
                                    &format!("{param}[{j}].image_url"),
                                    "image_url content parts need `image_url.url`",
                                )
                            })?;
                        let detail = iu
                            .and_then(|v| v.get("detail"))
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        out.push(ContentPart::Image {
                            source: ImageSource::from_url(url),
                            detail,
                        });
                    }
                    other => {
                        return Err(HubError::invalid_param(
                            &format!("{param}[{j}].type"),
                            format!("Unsupported content part type `{other}` in a {role} message."),
                        ));
                    }
                }
            }
            Ok((out, false))
        }
        Some(_) => Err(HubError::invalid_param(
            &param,
            "`content` must be a string, an array of parts, or null",
        )),
    }
}

fn parse_tool_choice(v: Value) -> Result<ToolChoice, HubError> {
    match &v {
        Value::String(s) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            other => Err(HubError::invalid_param(
                "tool_choice",
                format!("Invalid tool_choice `{other}`"),
            )),
        },
        Value::Object(_) => v
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Function {
                name: n.to_string(),
            })
            .ok_or_else(|| {
                HubError::invalid_param("tool_choice", "tool_choice object needs `function.name`")
            }),
        _ => Err(HubError::invalid_param(
            "tool_choice",
            "tool_choice must be a string or an object",
        )),
    }
}

fn parse_response_format(v: Value) -> Result<ResponseFormat, HubError> {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let js = v.get("json_schema").ok_or_else(|| {
                HubError::invalid_param("response_format.json_schema", "json_schema is required")
            })?;
            Ok(ResponseFormat::JsonSchema {
                name: js
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("response")
                    .to_string(),
                schema: js.get("schema").cloned().unwrap_or_else(|| json!({})),
                strict: js.get("strict").and_then(Value::as_bool),
                description: js
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        }
        _ => Err(HubError::invalid_param(
            "response_format.type",
            "response_format.type must be one of text, json_object, json_schema",
        )),
    }
}

/// Parses an OpenAI chat body into the canonical request.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, HubError> {
    let w: WireChatRequest = hub_core::json_from_slice(body).map_err(bad_json)?;
    if w.model.trim().is_empty() {
        return Err(HubError::invalid_param(
            "model",
            "`model` must not be empty",
        ));
    }
    if w.messages.is_empty() {
        return Err(HubError::invalid_param(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    if w.n.is_some_and(|n| n != 1) {
        return Err(HubError::invalid_param(
            "n",
            "Only n=1 is supported by this hub.",
        ));
    }
    let mut messages = Vec::with_capacity(w.messages.len());
    for (i, m) in w.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" | "function" => Role::Tool,
            other => {
                return Err(HubError::invalid_param(
                    &format!("messages[{i}].role"),
                    format!(
                        "Invalid role `{other}`; expected system, developer, user, assistant or tool."
                    ),
                ));
            }
        };
        let (content, content_is_text) = parse_content(&m.role, m.content, i)?;
        if role == Role::Tool && m.tool_call_id.is_none() {
            return Err(HubError::invalid_param(
                &format!("messages[{i}].tool_call_id"),
                "tool messages need `tool_call_id`",
            ));
        }
        let tool_calls = m
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.function.name,
                arguments: match c.function.arguments {
                    Some(Value::String(s)) => s,
                    Some(Value::Null) | None => "{}".to_string(),
                    Some(other) => other.to_string(),
                },
                signature: None,
            })
            .collect();
        messages.push(Message {
            role,
            content,
            content_is_text,
            tool_calls,
            tool_call_id: m.tool_call_id,
            name: m.name,
            reasoning: m.reasoning_content,
            reasoning_blocks: Vec::new(),
        });
    }
    let tools = w
        .tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(HubError::invalid_param(
                    &format!("tools[{i}].type"),
                    "only function tools are supported",
                ));
            }
            Ok(Tool {
                name: t.function.name,
                description: t.function.description,
                parameters: t.function.parameters.unwrap_or(Value::Null),
                strict: t.function.strict,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stop = match w.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(HubError::invalid_param(
                    "stop",
                    "stop must be a string or an array of strings",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(HubError::invalid_param(
                "stop",
                "stop must be a string or an array of strings",
            ));
        }
    };
    let stream = w.stream.unwrap_or(false);
    Ok(ChatRequest {
        model: w.model,
        messages,
        tools,
        tool_choice: w
            .tool_choice
            .filter(|v| !v.is_null())
            .map(parse_tool_choice)
            .transpose()?,
        parallel_tool_calls: w.parallel_tool_calls,
        response_format: w
            .response_format
            .filter(|v| !v.is_null())
            .map(parse_response_format)
            .transpose()?,
        max_tokens: w.max_completion_tokens.or(w.max_tokens),
        temperature: w.temperature,
        top_p: w.top_p,
        stop,
        seed: w.seed,
        presence_penalty: w.presence_penalty,
        frequency_penalty: w.frequency_penalty,
        reasoning_effort: w.reasoning_effort,
        user: w.user,
        stream,
        include_usage: stream
            && w.stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        extra: w.extra,
    })
}

#[derive(Deserialize)]
struct WireEmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

pub fn parse_embeddings(body: &[u8]) -> Result<EmbeddingsRequest, HubError> {
    let w: WireEmbeddingsRequest = serde_json::from_slice(body).map_err(bad_json)?;
    if w.model.trim().is_empty() {
        return Err(HubError::invalid_param(
            "model",
            "`model` must not be empty",
        ));
    }
    let valid = match &w.input {
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => {
            !a.is_empty()
                && a.iter()
                    .all(|v| v.is_string() || v.is_number() || v.is_array())
        }
        _ => false,
    };
    if !valid {
        return Err(HubError::invalid_param(
            "input",
            "`input` must be a non-empty string, array of strings, or array of token arrays",
        ));
    }
    if let Some(f) = &w.encoding_format
        && f != "float"
        && f != "base64"
    {
        return Err(HubError::invalid_param(
            "encoding_format",
            "encoding_format must be float or base64",
        ));
    }
    Ok(EmbeddingsRequest {
        model: w.model,
        input: w.input,
        dimensions: w.dimensions,
        encoding_format: w.encoding_format,
        user: w.user,
        extra: w.extra,
    })
}

#[derive(Deserialize)]
struct WireImagesRequest {
    #[serde(default)]
    model: Option<String>,
    prompt: String,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    quality: Option<String>,
    #[serde(default)]
    style: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// Model used when an image request names none (OpenAI's own default).
pub const DEFAULT_IMAGE_MODEL: &str = "openai/dall-e-2";

pub fn parse_images(body: &[u8]) -> Result<ImagesRequest, HubError> {
    let w: WireImagesRequest = serde_json::from_slice(body).map_err(bad_json)?;
    if w.prompt.trim().is_empty() {
        return Err(HubError::invalid_param(
            "prompt",
            "`prompt` must not be empty",
        ));
    }
    if w.n.is_some_and(|n| n == 0 || n > 10) {
        return Err(HubError::invalid_param("n", "n must be between 1 and 10"));
    }
    Ok(ImagesRequest {
        model: w
            .model
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_IMAGE_MODEL.to_string()),
        prompt: w.prompt,
        n: w.n,
        size: w.size,
        quality: w.quality,
        style: w.style,
        response_format: w.response_format,
        user: w.user,
        extra: w.extra,
    })
}

// Egress shapes. Serialised straight from borrowed fields (no intermediate `Value` tree: building
// one cost ~15k instructions per response, BENCHMARKS.md); `render_*` returning `Value` remain for
// callers and tests that want a tree.

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedOut,
    completion_tokens_details: ReasoningOut,
}

#[derive(Serialize)]
struct CachedOut {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningOut {
    reasoning_tokens: u64,
}

impl From<&Usage> for UsageOut {
    fn from(u: &Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total(),
            prompt_tokens_details: CachedOut {
                cached_tokens: u.cache_read_tokens,
            },
            completion_tokens_details: ReasoningOut {
                reasoning_tokens: u.reasoning_tokens,
            },
        }
    }
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionOut<'a>,
}

impl<'a> From<&'a ToolCall> for ToolCallOut<'a> {
    fn from(c: &'a ToolCall) -> Self {
        ToolCallOut {
            index: None,
            id: Some(&c.id),
            kind: Some("function"),
            function: FunctionOut {
                name: Some(&c.name),
                arguments: &c.arguments,
            },
        }
    }
}

#[derive(Serialize)]
struct ImageUrlOut<'a> {
    url: &'a str,
}

#[derive(Serialize)]
struct ImagePartOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    image_url: ImageUrlOut<'a>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<ImagePartOut<'a>>,
    refusal: (),
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    message: MessageOut<'a>,
    logprobs: (),
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatCompletionOut<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [ChoiceOut<'a>; 1],
    usage: UsageOut,
}

fn chat_completion_out(resp: &ChatResponse) -> ChatCompletionOut<'_> {
    ChatCompletionOut {
        id: &resp.id,
        object: "chat.completion",
        created: resp.created,
        model: &resp.model,
        choices: [ChoiceOut {
            index: 0,
            message: MessageOut {
                role: "assistant",
                content: resp.output.content.as_deref(),
                reasoning_content: resp.output.reasoning.as_deref(),
                tool_calls: resp
                    .output
                    .tool_calls
                    .iter()
                    .map(ToolCallOut::from)
                    .collect(),
                images: resp
                    .output
                    .images
                    .iter()
                    .map(|u| ImagePartOut {
                        kind: "image_url",
                        image_url: ImageUrlOut { url: u },
                    })
                    .collect(),
                refusal: (),
            },
            logprobs: (),
            finish_reason: resp.finish_reason.as_str(),
        }],
        usage: UsageOut::from(&resp.usage),
    }
}

/// OpenAI's usage object from canonical usage.
pub fn usage_json(u: &Usage) -> Value {
    serde_json::to_value(UsageOut::from(u)).unwrap_or(Value::Null)
}

/// The `chat.completion` object as a JSON tree (see [`render_chat_bytes`] for the response path).
pub fn render_chat(resp: &ChatResponse) -> Value {
    serde_json::to_value(chat_completion_out(resp)).unwrap_or(Value::Null)
}

/// The `chat.completion` object, serialised (what the handler sends).
pub fn render_chat_bytes(resp: &ChatResponse) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, &chat_completion_out(resp))?;
    Ok(out)
}

#[derive(Serialize)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallOut<'a>; 1]>,
}

impl DeltaOut<'_> {
    const EMPTY: DeltaOut<'static> = DeltaOut {
        role: None,
        content: None,
        reasoning_content: None,
        tool_calls: None,
    };
}

#[derive(Serialize)]
struct ChunkChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: (),
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [ChunkChoiceOut<'a>; 1],
    /// `Some(None)`: `"usage": null` (sent on content chunks when the caller asked for usage).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<()>>,
}

#[derive(Serialize)]
struct UsageChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [(); 0],
    usage: UsageOut,
}

/// Renders stream events as OpenAI chunks; holds the ids and what the caller asked for.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    pub id: String,
    pub model: String,
    pub created: i64,
    pub include_usage: bool,
}

/// `data: <json>\n\n`.
fn sse_data(value: &impl Serialize) -> String {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut out, value).is_err() {
        // Unreachable for these shapes (string keys, no maps); never send half an event.
        return String::new();
    }
    out.extend_from_slice(b"\n\n");
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_default()
}

impl ChunkWriter {
    fn chunk(&self, delta: DeltaOut<'_>, finish_reason: Option<&'static str>) -> String {
        sse_data(&ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: [ChunkChoiceOut {
                index: 0,
                delta,
                logprobs: (),
                finish_reason,
            }],
            usage: self.include_usage.then_some(None),
        })
    }

    /// The SSE text for one event (`None` when the event is not shown to an OpenAI caller).
    pub fn event(&mut self, ev: &StreamEvent) -> Option<String> {
        match ev {
            StreamEvent::Start { id, model } => {
                self.id = id.clone();
                self.model = model.clone();
                Some(self.chunk(
                    DeltaOut {
                        role: Some("assistant"),
                        content: Some(""),
                        ..DeltaOut::EMPTY
                    },
                    None,
                ))
            }
            StreamEvent::TextDelta { text } => Some(self.chunk(
                DeltaOut {
                    content: Some(text),
                    ..DeltaOut::EMPTY
                },
                None,
            )),
            StreamEvent::ReasoningDelta { text } => Some(self.chunk(
                DeltaOut {
                    reasoning_content: Some(text),
                    ..DeltaOut::EMPTY
                },
                None,
            )),
            StreamEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => Some(self.chunk(
                DeltaOut {
                    tool_calls: Some([ToolCallOut {
                        index: Some(*index),
                        id: id.as_deref(),
                        kind: id.as_ref().map(|_| "function"),
                        function: FunctionOut {
                            name: name.as_deref(),
                            arguments,
                        },
                    }]),
                    ..DeltaOut::EMPTY
                },
                None,
            )),
            StreamEvent::Finish { reason } => {
                Some(self.chunk(DeltaOut::EMPTY, Some(reason.as_str())))
            }
            // Shown once, at the end, and only if the caller asked for it.
            StreamEvent::Usage { .. } => None,
            // OpenAI's chat wire has no place for reasoning signatures or encrypted reasoning.
            StreamEvent::ReasoningSignature { .. }
            | StreamEvent::RedactedReasoning { .. }
            | StreamEvent::ToolCallSignature { .. } => None,
        }
    }

    /// The end of a successful stream: the usage chunk if asked for, then `[DONE]`.
    pub fn done(&self, usage: &Usage) -> String {
        let mut out = String::new();
        if self.include_usage {
            out.push_str(&sse_data(&UsageChunkOut {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: [],
                usage: UsageOut::from(usage),
            }));
        }
        out.push_str("data: [DONE]\n\n");
        out
    }

    /// A mid-stream error, as OpenAI sends one (the SDK raises on it).
    pub fn error(&self, e: &HubError) -> String {
        format!("data: {}\n\n", crate::errors::openai_body(e))
    }
}

pub fn render_embeddings(resp: &EmbeddingsResponse) -> Value {
    json!({
        "object": "list",
        "data": resp.data.iter().map(|e| json!({"object":"embedding","index": e.index,"embedding": e.embedding})).collect::<Vec<_>>(),
        "model": resp.model,
        "usage": {"prompt_tokens": resp.usage.prompt_tokens, "total_tokens": resp.usage.prompt_tokens},
    })
}

pub fn render_images(resp: &ImagesResponse) -> Value {
    json!({
        "created": resp.created,
        "data": resp.data,
        "usage": {
            "input_tokens": resp.usage.prompt_tokens,
            "output_tokens": resp.usage.completion_tokens,
            "total_tokens": resp.usage.total(),
        },
    })
}

pub fn render_models(models: &[ModelInfo]) -> Value {
    json!({
        "object": "list",
        "data": models.iter().map(|m| json!({"id": m.id, "object": "model", "created": 0, "owned_by": m.provider})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::types::FinishReason;
    use proptest::prelude::*;

    #[test]
    fn parses_a_full_request() {
        let body = br#"{"model":"openai/gpt-4o-mini","messages":[
            {"role":"system","content":"You are terse."},
            {"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBOR","detail":"auto"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"18C"}],
          "tools":[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object"}}}],
          "tool_choice":"auto","max_tokens":5,"stop":"\n","stream":true,"stream_options":{"include_usage":true},
          "response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"},"strict":true}},
          "logit_bias":{"1":2}}"#;
        let r = parse_chat(body);
        let r = match r {
            Ok(r) => r,
            Err(e) => unreachable!("{e}"),
        };
        assert_eq!(r.messages.len(), 4);
        assert!(
            matches!(&r.messages[1].content[1], ContentPart::Image { source: ImageSource::Base64 { media_type, .. }, .. } if media_type == "image/png")
        );
        assert_eq!(
            r.messages[2].tool_calls[0].arguments,
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(r.tool_choice, Some(ToolChoice::Auto));
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert!(r.stream && r.include_usage);
        assert!(matches!(
            r.response_format,
            Some(ResponseFormat::JsonSchema {
                strict: Some(true),
                ..
            })
        ));
        assert!(r.extra.contains_key("logit_bias"));
        assert!(!r.extra.contains_key("model"));
    }

    #[test]
    fn rejects_invalid_requests_with_params() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"{not json", None),
            (br#"{"model":"m","messages":"hi"}"#, None),
            (br#"{"model":"m","messages":[]}"#, Some("messages")),
            (
                br#"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
            ),
            (
                br#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
                Some("messages[0].role"),
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                Some("messages[0].content"),
            ),
            (
                br#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                Some("messages[0].tool_call_id"),
            ),
            (
                br#"{"model":"m","n":2,"messages":[{"role":"user","content":"x"}]}"#,
                Some("n"),
            ),
            (
                br#"{"model":"m","tool_choice":7,"messages":[{"role":"user","content":"x"}]}"#,
                Some("tool_choice"),
            ),
            (br#"{"messages":[{"role":"user","content":"x"}]}"#, None),
        ];
        for (body, param) in cases {
            match parse_chat(body) {
                Ok(_) => unreachable!("accepted {}", String::from_utf8_lossy(body)),
                Err(e) => {
                    assert_eq!(e.status(), 400, "{}", String::from_utf8_lossy(body));
                    assert_eq!(
                        e.param.as_deref(),
                        *param,
                        "{}",
                        String::from_utf8_lossy(body)
                    );
                }
            }
        }
    }

    #[test]
    fn include_usage_only_counts_on_streams() {
        let r = parse_chat(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#);
        assert!(matches!(r, Ok(r) if !r.include_usage && !r.stream));
    }

    #[test]
    fn chunks_strip_usage_unless_asked() {
        let mut w = ChunkWriter {
            id: "x".into(),
            model: "m".into(),
            created: 1,
            include_usage: false,
        };
        assert!(
            w.event(&StreamEvent::Usage {
                usage: Usage::default()
            })
            .is_none()
        );
        let c = w
            .event(&StreamEvent::TextDelta { text: "hi".into() })
            .unwrap_or_default();
        assert!(!c.contains("usage"));
        assert_eq!(w.done(&Usage::default()), "data: [DONE]\n\n");
        w.include_usage = true;
        let c = w
            .event(&StreamEvent::Finish {
                reason: FinishReason::Stop,
            })
            .unwrap_or_default();
        assert!(c.contains(r#""usage":null"#));
        let d = w.done(&Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            ..Usage::default()
        });
        assert!(
            d.contains(r#""choices":[]"#)
                && d.contains(r#""total_tokens":7"#)
                && d.ends_with("data: [DONE]\n\n")
        );
    }

    proptest! {
        #[test]
        fn request_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_chat(&bytes);
            let _ = parse_embeddings(&bytes);
            let _ = parse_images(&bytes);
            let _ = peek_model(&bytes);
        }

        #[test]
        fn request_parser_never_panics_on_jsonish_input(s in r#"\{"model":"[a-z/]{0,8}","messages":\[(\{"role":"(user|tool|assistant|x)","content":(null|"[a-z]{0,4}"|\[\{"type":"(text|image_url|x)"(,"text":"a"|,"image_url":\{"url":"data:x;base64,"\})?\}\]|5)(,"tool_calls":\[\{"id":"a","function":\{"name":"f","arguments":(null|"\{\}"|\{\})\}\}\])?\},?){0,3}\](,"stop":(5|"x"|\["a",1\]))?(,"n":[0-3])?\}"#) {
            let _ = parse_chat(s.as_bytes());
        }
    }
}
