//! Anthropic Messages wire <-> canonical: parses `/v1/messages` and `/v1/messages/count_tokens`
//! bodies (providers.md §3.1) and renders messages, stream events (§3.3) and errors (§3.4). Pure
//! functions, table-tested, and the request parser never panics on any input.
//!
//! Mapping decisions (the canonical request is OpenAI-shaped):
//! - `system` (string or text blocks) becomes a leading system message.
//! - A user turn's `tool_result` blocks become canonical tool messages, in order, *before* the rest
//!   of that turn (Anthropic requires them first; OpenAI-family wires need tool messages right after
//!   the assistant's calls). `is_error` has no canonical home: it is dropped.
//! - `tool_use` blocks become the assistant's tool calls, `input` serialised as the arguments text;
//!   `thinking` blocks become the turn's reasoning text and, with their `signature`, its reasoning
//!   blocks; `redacted_thinking` becomes a redacted reasoning block. Providers that verify
//!   signatures (Anthropic, Bedrock) get the blocks back unchanged and in order; others use the text.
//! - `tool_choice` `auto|any|tool|none` -> auto / required / function / none;
//!   `disable_parallel_tool_use` -> `parallel_tool_calls: false`.
//! - `thinking: {"type":"enabled","budget_tokens":N}` -> `reasoning_effort` low (N < 4096),
//!   medium (N < 16384) or high; `adaptive` / `between_tools` leave it to the model.
//!   `output_config.effort` (low|medium|high|xhigh|max) wins over the budget (`xhigh`/`max` -> high).
//! - `output_config.format` (or the older top-level `output_format`) `{"type":"json_schema",
//!   "schema":…}` -> a strict JSON-schema response format named `response`.
//! - `top_k` has no canonical field; it rides in `extra` (forwarded to OpenAI-family upstreams,
//!   which accept it or reject it themselves). `metadata.user_id` -> `user`. Other top-level fields
//!   (`service_tier`, `container`, `mcp_servers`, ...) are accepted and ignored.
//! - Server tools (`{"type":"web_search_20250305",...}`) and `document` blocks are refused (400).

use hub_core::HubError;
use hub_core::types::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, ImageSource, Message, ReasoningBlock,
    ResponseFormat, Role, StreamEvent, Tool, ToolCall, ToolChoice, Usage,
};
use serde_json::{Map, Value, json};

/// Image media types Anthropic accepts.
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// A 400 naming the offending field the way Anthropic does (`messages.0.content: ...`).
fn field_err(path: &str, msg: impl std::fmt::Display) -> HubError {
    HubError::invalid_param(path, format!("{path}: {msg}"))
}

fn bad_json(e: &serde_json::Error) -> HubError {
    HubError::invalid(format!(
        "We could not parse the JSON body of your request. ({e}) The API expects a JSON payload."
    ))
}

fn get_str<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a str, HubError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(field_err(&format!("{path}.{key}"), "Field required")),
        Some(_) => Err(field_err(
            &format!("{path}.{key}"),
            "Input should be a valid string",
        )),
    }
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, HubError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| field_err(key, "Input should be a valid number")),
    }
}

fn opt_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, HubError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| field_err(key, "Input should be a valid non-negative integer")),
    }
}

/// The text of a `system` value: a string or an array of text blocks.
fn parse_system(v: &Value) -> Result<Option<String>, HubError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(blocks) => {
            let mut out = String::new();
            for (i, b) in blocks.iter().enumerate() {
                let path = format!("system.{i}");
                let obj = b
                    .as_object()
                    .ok_or_else(|| field_err(&path, "Input should be a text block object"))?;
                if obj.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(field_err(
                        &format!("{path}.type"),
                        "system blocks must be of type `text`",
                    ));
                }
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(get_str(obj, "text", &path)?);
            }
            Ok(Some(out))
        }
        _ => Err(field_err(
            "system",
            "Input should be a string or an array of text blocks",
        )),
    }
}

fn parse_image(obj: &Map<String, Value>, path: &str) -> Result<ContentPart, HubError> {
    let source = obj
        .get("source")
        .and_then(Value::as_object)
        .ok_or_else(|| field_err(&format!("{path}.source"), "Field required"))?;
    let spath = format!("{path}.source");
    let source = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media_type = get_str(source, "media_type", &spath)?;
            if !IMAGE_TYPES.contains(&media_type) {
                return Err(field_err(
                    &format!("{spath}.media_type"),
                    format!(
                        "Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp', not '{media_type}'"
                    ),
                ));
            }
            ImageSource::Base64 {
                media_type: media_type.to_string(),
                data: get_str(source, "data", &spath)?.to_string(),
            }
        }
        Some("url") => ImageSource::Url {
            url: get_str(source, "url", &spath)?.to_string(),
        },
        _ => {
            return Err(field_err(
                &format!("{spath}.type"),
                "image sources must be of type `base64` or `url`",
            ));
        }
    };
    Ok(ContentPart::Image {
        source,
        detail: None,
    })
}

/// The content of a `tool_result` block: a string or text/image blocks.
fn parse_tool_result_content(v: Option<&Value>, path: &str) -> Result<Vec<ContentPart>, HubError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![ContentPart::Text { text: s.clone() }]),
        Some(Value::Array(blocks)) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                let bpath = format!("{path}.{i}");
                let obj = b
                    .as_object()
                    .ok_or_else(|| field_err(&bpath, "Input should be a content block object"))?;
                match obj.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(ContentPart::Text {
                        text: get_str(obj, "text", &bpath)?.to_string(),
                    }),
                    Some("image") => out.push(parse_image(obj, &bpath)?),
                    _ => {
                        return Err(field_err(
                            &format!("{bpath}.type"),
                            "tool_result content blocks must be of type `text` or `image`",
                        ));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(field_err(
            path,
            "Input should be a string or an array of content blocks",
        )),
    }
}

/// Appends the canonical messages of one Anthropic message.
fn parse_message(v: &Value, i: usize, out: &mut Vec<Message>) -> Result<(), HubError> {
    let path = format!("messages.{i}");
    let obj = v
        .as_object()
        .ok_or_else(|| field_err(&path, "Input should be a message object"))?;
    let role = match get_str(obj, "role", &path)? {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(field_err(
                &format!("{path}.role"),
                format!(
                    "Input should be 'user' or 'assistant', not '{other}' (the system prompt is the top-level `system` field)"
                ),
            ));
        }
    };
    let cpath = format!("{path}.content");
    let blocks = match obj.get("content") {
        Some(Value::String(s)) => {
            out.push(Message::text(role, s.clone()));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        None | Some(Value::Null) => return Err(field_err(&cpath, "Field required")),
        Some(_) => {
            return Err(field_err(
                &cpath,
                "Input should be a string or an array of content blocks",
            ));
        }
    };
    let mut msg = Message {
        role,
        content: Vec::new(),
        content_is_text: false,
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
        reasoning: None,
        reasoning_blocks: Vec::new(),
    };
    let mut tool_results = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bpath = format!("{cpath}.{j}");
        let bobj = b
            .as_object()
            .ok_or_else(|| field_err(&bpath, "Input should be a content block object"))?;
        let kind = bobj.get("type").and_then(Value::as_str).unwrap_or("");
        let wrong_role = |allowed: &str| {
            field_err(
                &format!("{bpath}.type"),
                format!("`{kind}` blocks are only allowed in {allowed} messages"),
            )
        };
        match kind {
            "text" => msg.content.push(ContentPart::Text {
                text: get_str(bobj, "text", &bpath)?.to_string(),
            }),
            "image" if role == Role::User => msg.content.push(parse_image(bobj, &bpath)?),
            "image" => return Err(wrong_role("user")),
            "tool_result" if role == Role::User => {
                let id = get_str(bobj, "tool_use_id", &bpath)?;
                let content =
                    parse_tool_result_content(bobj.get("content"), &format!("{bpath}.content"))?;
                tool_results.push(Message {
                    role: Role::Tool,
                    content_is_text: matches!(bobj.get("content"), Some(Value::String(_))),
                    content,
                    tool_calls: Vec::new(),
                    tool_call_id: Some(id.to_string()),
                    name: None,
                    reasoning: None,
                    reasoning_blocks: Vec::new(),
                });
            }
            "tool_result" => return Err(wrong_role("user")),
            "tool_use" if role == Role::Assistant => {
                let input = match bobj.get("input") {
                    Some(v @ Value::Object(_)) => v.to_string(),
                    None | Some(Value::Null) => "{}".to_string(),
                    Some(_) => {
                        return Err(field_err(
                            &format!("{bpath}.input"),
                            "Input should be an object",
                        ));
                    }
                };
                msg.tool_calls.push(ToolCall {
                    id: get_str(bobj, "id", &bpath)?.to_string(),
                    name: get_str(bobj, "name", &bpath)?.to_string(),
                    arguments: input,
                    signature: None,
                });
            }
            "tool_use" => return Err(wrong_role("assistant")),
            "thinking" if role == Role::Assistant => {
                let text = get_str(bobj, "thinking", &bpath)?;
                let signature = match bobj.get("signature") {
                    Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    None | Some(Value::Null | Value::String(_)) => None,
                    Some(_) => {
                        return Err(field_err(
                            &format!("{bpath}.signature"),
                            "Input should be a valid string",
                        ));
                    }
                };
                msg.reasoning.get_or_insert_with(String::new).push_str(text);
                msg.reasoning_blocks.push(ReasoningBlock::Thinking {
                    text: text.to_string(),
                    signature,
                });
            }
            "redacted_thinking" if role == Role::Assistant => {
                let data = get_str(bobj, "data", &bpath)?;
                msg.reasoning_blocks.push(ReasoningBlock::Redacted {
                    data: data.to_string(),
                });
            }
            "thinking" | "redacted_thinking" => return Err(wrong_role("assistant")),
            "document" => {
                return Err(field_err(
                    &format!("{bpath}.type"),
                    "`document` blocks are not supported by this hub",
                ));
            }
            other => {
                return Err(field_err(
                    &format!("{bpath}.type"),
                    format!(
                        "Unsupported content block type `{other}`; expected text, image, tool_use, tool_result or thinking"
                    ),
                ));
            }
        }
    }
    let had_results = !tool_results.is_empty();
    out.extend(tool_results);
    // A turn that was only tool results leaves no empty user message behind.
    if !(had_results && msg.content.is_empty()) {
        out.push(msg);
    }
    Ok(())
}

fn parse_tools(v: &Value) -> Result<Vec<Tool>, HubError> {
    let arr = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => return Err(field_err("tools", "Input should be a valid list")),
    };
    let mut out = Vec::with_capacity(arr.len());
    for (i, t) in arr.iter().enumerate() {
        let path = format!("tools.{i}");
        let obj = t
            .as_object()
            .ok_or_else(|| field_err(&path, "Input should be a tool object"))?;
        match obj.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(other) => {
                return Err(field_err(
                    &format!("{path}.type"),
                    format!(
                        "Server tool `{other}` is not supported by this hub; only custom tools with an `input_schema` are"
                    ),
                ));
            }
        }
        let schema = match obj.get("input_schema") {
            Some(s @ Value::Object(_)) => s.clone(),
            None | Some(Value::Null) => {
                return Err(field_err(&format!("{path}.input_schema"), "Field required"));
            }
            Some(_) => {
                return Err(field_err(
                    &format!("{path}.input_schema"),
                    "Input should be a JSON schema object",
                ));
            }
        };
        out.push(Tool {
            name: get_str(obj, "name", &path)?.to_string(),
            description: obj
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            parameters: schema,
            strict: obj.get("strict").and_then(Value::as_bool),
        });
    }
    Ok(out)
}

/// `tool_choice` and whether parallel tool use was disabled.
fn parse_tool_choice(v: &Value) -> Result<(Option<ToolChoice>, Option<bool>), HubError> {
    if v.is_null() {
        return Ok((None, None));
    }
    let obj = v
        .as_object()
        .ok_or_else(|| field_err("tool_choice", "Input should be an object"))?;
    let choice = match obj.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => ToolChoice::Function {
            name: get_str(obj, "name", "tool_choice")?.to_string(),
        },
        _ => {
            return Err(field_err(
                "tool_choice.type",
                "Input should be 'auto', 'any', 'tool' or 'none'",
            ));
        }
    };
    let parallel = obj
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disabled| !disabled);
    Ok((Some(choice), parallel))
}

/// `reasoning_effort` from `thinking` (a budget maps to low < 4096 <= medium < 16384 <= high;
/// `adaptive` / `between_tools` let the model decide, so none is set).
fn parse_thinking(v: &Value) -> Result<Option<String>, HubError> {
    if v.is_null() {
        return Ok(None);
    }
    let obj = v
        .as_object()
        .ok_or_else(|| field_err("thinking", "Input should be an object"))?;
    match obj.get("type").and_then(Value::as_str) {
        Some("enabled") => {
            let budget = obj
                .get("budget_tokens")
                .and_then(Value::as_u64)
                .ok_or_else(|| field_err("thinking.budget_tokens", "Field required"))?;
            let effort = if budget < 4096 {
                "low"
            } else if budget < 16384 {
                "medium"
            } else {
                "high"
            };
            Ok(Some(effort.to_string()))
        }
        Some("disabled" | "adaptive" | "between_tools") => Ok(None),
        _ => Err(field_err(
            "thinking.type",
            "Input should be 'enabled', 'disabled', 'adaptive' or 'between_tools'",
        )),
    }
}

/// `output_config` (`effort`, `format`) or the older top-level `output_format`: the reasoning
/// effort (`xhigh` and `max` become `high`, the most the canonical scale has) and a JSON schema
/// the answer must follow.
fn parse_output_config(
    obj: &Map<String, Value>,
) -> Result<(Option<String>, Option<ResponseFormat>), HubError> {
    let config = match obj.get("output_config") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => Some(c),
        Some(_) => return Err(field_err("output_config", "Input should be an object")),
    };
    let effort = match config.and_then(|c| c.get("effort")) {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) => match e.as_str() {
            "low" | "medium" | "high" => Some(e.clone()),
            "xhigh" | "max" => Some("high".to_string()),
            _ => {
                return Err(field_err(
                    "output_config.effort",
                    "Input should be 'low', 'medium', 'high', 'xhigh' or 'max'",
                ));
            }
        },
        Some(_) => {
            return Err(field_err(
                "output_config.effort",
                "Input should be a valid string",
            ));
        }
    };
    let (path, format) = match config.and_then(|c| c.get("format")) {
        Some(f) if !f.is_null() => ("output_config.format", Some(f)),
        _ => (
            "output_format",
            obj.get("output_format").filter(|f| !f.is_null()),
        ),
    };
    let format = match format {
        None => None,
        Some(f) => {
            if f.get("type").and_then(Value::as_str) != Some("json_schema") {
                return Err(field_err(
                    &format!("{path}.type"),
                    "Input should be 'json_schema'",
                ));
            }
            match f.get("schema") {
                Some(schema @ Value::Object(_)) => Some(ResponseFormat::JsonSchema {
                    name: "response".to_string(),
                    schema: schema.clone(),
                    strict: Some(true),
                    description: None,
                }),
                _ => return Err(field_err(&format!("{path}.schema"), "Field required")),
            }
        }
    };
    Ok((effort, format))
}

/// What kind of body is being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `POST /v1/messages`: `max_tokens` required, `stream` honoured.
    Messages,
    /// `POST /v1/messages/count_tokens`: no `max_tokens`, never streamed.
    CountTokens,
}

/// Parses an Anthropic Messages body into the canonical request.
pub fn parse_messages(body: &[u8], kind: Body) -> Result<ChatRequest, HubError> {
    let root: Value = hub_core::json_from_slice(body).map_err(|e| bad_json(&e))?;
    let Value::Object(obj) = root else {
        return Err(HubError::invalid("The request body must be a JSON object."));
    };
    let model = get_str(&obj, "model", "")
        .map_err(|_| field_err("model", "Field required (a non-empty string)"))?;
    if model.trim().is_empty() {
        return Err(field_err("model", "must not be empty"));
    }
    let max_tokens = match (obj.get("max_tokens"), kind) {
        (None | Some(Value::Null), Body::Messages) => {
            return Err(field_err("max_tokens", "Field required"));
        }
        (None | Some(Value::Null), Body::CountTokens) => None,
        (Some(v), _) => match v.as_u64() {
            Some(n) if n >= 1 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => {
                return Err(field_err(
                    "max_tokens",
                    "Input should be an integer greater than or equal to 1",
                ));
            }
        },
    };
    let wire_messages = match obj.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(field_err("messages", "at least one message is required"));
        }
        None | Some(Value::Null) => return Err(field_err("messages", "Field required")),
        Some(_) => return Err(field_err("messages", "Input should be a valid list")),
    };
    let mut messages = Vec::with_capacity(wire_messages.len() + 1);
    if let Some(system) = obj.get("system").map(parse_system).transpose()?.flatten() {
        messages.push(Message::text(Role::System, system));
    }
    for (i, m) in wire_messages.iter().enumerate() {
        parse_message(m, i, &mut messages)?;
    }
    let tools = obj
        .get("tools")
        .map(parse_tools)
        .transpose()?
        .unwrap_or_default();
    let (tool_choice, parallel_tool_calls) = obj
        .get("tool_choice")
        .map(parse_tool_choice)
        .transpose()?
        .unwrap_or((None, None));
    let stop = match obj.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| field_err("stop_sequences", "Input should be a list of strings"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(field_err(
                "stop_sequences",
                "Input should be a list of strings",
            ));
        }
    };
    let stream = match (obj.get("stream"), kind) {
        (_, Body::CountTokens) | (None | Some(Value::Null), _) => false,
        (Some(Value::Bool(b)), _) => *b,
        (Some(_), _) => return Err(field_err("stream", "Input should be a valid boolean")),
    };
    let user = match obj.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => m.get("user_id").and_then(Value::as_str).map(str::to_string),
        Some(_) => return Err(field_err("metadata", "Input should be an object")),
    };
    let thinking_effort = obj
        .get("thinking")
        .map(parse_thinking)
        .transpose()?
        .flatten();
    let (effort, response_format) = parse_output_config(&obj)?;
    let mut extra = Map::new();
    if let Some(k) = opt_u64(&obj, "top_k")? {
        extra.insert("top_k".into(), json!(k));
    }
    Ok(ChatRequest {
        model: model.to_string(),
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        max_tokens,
        temperature: opt_f64(&obj, "temperature")?,
        top_p: opt_f64(&obj, "top_p")?,
        stop,
        seed: None,
        presence_penalty: None,
        frequency_penalty: None,
        reasoning_effort: effort.or(thinking_effort),
        user,
        stream,
        // Anthropic streams always carry usage (`message_delta`).
        include_usage: stream,
        extra,
    })
}

/// Anthropic's message id for a response: the upstream's own when it is already an Anthropic id,
/// else `msg_` + the hub's request id.
pub fn message_id(upstream_id: &str, request_id: &str) -> String {
    if upstream_id.starts_with("msg_") {
        upstream_id.to_string()
    } else {
        let mut id = String::with_capacity(4 + request_id.len());
        id.push_str("msg_");
        id.extend(request_id.chars().filter(|c| *c != '-'));
        id
    }
}

/// Anthropic's `stop_reason` for a canonical finish reason (providers.md §12.2, reversed). Which
/// stop sequence matched is not known canonically, so `stop_sequence` is never produced.
pub fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Error => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// Anthropic's usage object: `input_tokens` EXCLUDES cache reads and writes (providers.md §3.2).
pub fn usage_json(u: &Usage) -> Value {
    let cached = u.cache_read_tokens.saturating_add(u.cache_write_tokens);
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(cached),
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "output_tokens": u.completion_tokens,
    })
}

/// A tool call's `input` object from the arguments text. Empty arguments are `{}`; text that is not
/// a JSON object (a broken upstream) is passed on as a JSON string rather than lost.
pub fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::String(arguments.to_string()),
    }
}

/// A reasoning block as Anthropic's `thinking` / `redacted_thinking` content block.
pub fn reasoning_block_json(b: &ReasoningBlock) -> Value {
    match b {
        ReasoningBlock::Thinking { text, signature } => {
            json!({"type": "thinking", "thinking": text, "signature": signature.as_deref().unwrap_or("")})
        }
        ReasoningBlock::Redacted { data } => json!({"type": "redacted_thinking", "data": data}),
    }
}

/// A complete response as Anthropic's `message` object. Images a model returned inline have no
/// place in an Anthropic message and are not rendered.
pub fn render_message(resp: &ChatResponse, id: &str) -> Value {
    let mut content = Vec::with_capacity(2 + resp.output.tool_calls.len());
    if resp.output.reasoning_blocks.is_empty() {
        // Reasoning from a provider that signs nothing (DeepSeek, xAI, ...).
        if let Some(r) = resp.output.reasoning.as_deref().filter(|r| !r.is_empty()) {
            content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
        }
    }
    for b in &resp.output.reasoning_blocks {
        content.push(reasoning_block_json(b));
    }
    if let Some(t) = resp.output.content.as_deref().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in &resp.output.tool_calls {
        content.push(
            json!({"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments)}),
        );
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": stop_reason(resp.finish_reason),
        "stop_sequence": null,
        "usage": usage_json(&resp.usage),
    })
}

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// The kind of the content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    Thinking,
    Redacted,
    /// A tool call, by its canonical index.
    ToolUse(u32),
}

/// Renders canonical stream events as Anthropic's named SSE events. A content block opens each time
/// the kind switches or a new tool call starts, and closes before the next one opens.
///
/// Usage: canonical usage arrives only at the end, so `message_start` carries the hub's prompt
/// estimate as `input_tokens` (0 output), and `message_delta` carries the final, cumulative
/// numbers (`input_tokens`, cache reads/writes and `output_tokens`), as Anthropic's newer API does.
#[derive(Debug, Clone)]
pub struct EventWriter {
    /// Message id used when the upstream's is not an Anthropic id.
    request_id: String,
    /// Model reported when the upstream names none.
    model: String,
    input_estimate: u64,
    started: bool,
    open: Option<(u32, BlockKind)>,
    next_index: u32,
    /// Anthropic block index of each canonical tool call seen so far.
    tool_blocks: Vec<(u32, u32)>,
    stop_reason: &'static str,
}

impl EventWriter {
    pub fn new(request_id: &str, model: &str, input_estimate: u64) -> EventWriter {
        EventWriter {
            request_id: request_id.to_string(),
            model: model.to_string(),
            input_estimate,
            started: false,
            open: None,
            next_index: 0,
            tool_blocks: Vec::new(),
            stop_reason: "end_turn",
        }
    }

    fn start(&mut self, out: &mut String, upstream_id: &str, model: Option<&str>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": message_id(upstream_id, &self.request_id),
            "type": "message",
            "role": "assistant",
            "model": model.filter(|m| !m.is_empty()).unwrap_or(&self.model),
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {
                "input_tokens": self.input_estimate,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        });
        out.push_str(&sse(
            "message_start",
            &json!({"type": "message_start", "message": message}),
        ));
    }

    fn close(&mut self, out: &mut String) {
        if let Some((index, _)) = self.open.take() {
            out.push_str(&sse(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// Opens a block of `kind` unless it is the one already open; returns its index.
    fn ensure_block(&mut self, out: &mut String, kind: BlockKind, block: Value) -> u32 {
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        out.push_str(&sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn delta(out: &mut String, index: u32, delta: Value) {
        out.push_str(&sse(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }

    /// The SSE text for one canonical event (`None` when it shows nothing to the caller yet).
    pub fn event(&mut self, ev: &StreamEvent) -> Option<String> {
        let mut out = String::new();
        match ev {
            StreamEvent::Start { id, model } => self.start(&mut out, id, Some(model)),
            _ => self.start(&mut out, "", None),
        }
        match ev {
            StreamEvent::Start { .. } => {}
            StreamEvent::TextDelta { text } => {
                if !text.is_empty() {
                    let index = self.ensure_block(
                        &mut out,
                        BlockKind::Text,
                        json!({"type": "text", "text": ""}),
                    );
                    Self::delta(&mut out, index, json!({"type": "text_delta", "text": text}));
                }
            }
            StreamEvent::ReasoningDelta { text } => {
                if !text.is_empty() {
                    let index = self.ensure_block(
                        &mut out,
                        BlockKind::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                    );
                    Self::delta(
                        &mut out,
                        index,
                        json!({"type": "thinking_delta", "thinking": text}),
                    );
                }
            }
            StreamEvent::ToolCallDelta {
                index: call,
                id,
                name,
                arguments,
            } => {
                let known = self
                    .tool_blocks
                    .iter()
                    .find(|(c, _)| c == call)
                    .map(|(_, b)| *b);
                let index = match known {
                    // Providers stream calls one after another; a fragment of an earlier call
                    // (never seen in practice) still goes to that call's block.
                    Some(b) => b,
                    None => {
                        let id = id.clone().unwrap_or_else(|| {
                            format!("toolu_{}_{call}", message_id("", &self.request_id))
                        });
                        let block = json!({"type": "tool_use", "id": id, "name": name.as_deref().unwrap_or(""), "input": {}});
                        let b = self.ensure_block(&mut out, BlockKind::ToolUse(*call), block);
                        self.tool_blocks.push((*call, b));
                        b
                    }
                };
                if !arguments.is_empty() {
                    Self::delta(
                        &mut out,
                        index,
                        json!({"type": "input_json_delta", "partial_json": arguments}),
                    );
                }
            }
            StreamEvent::ReasoningSignature { signature } => {
                // One `signature_delta` just before the thinking block's `content_block_stop`.
                let index = self.ensure_block(
                    &mut out,
                    BlockKind::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                );
                Self::delta(
                    &mut out,
                    index,
                    json!({"type": "signature_delta", "signature": signature}),
                );
                self.close(&mut out);
            }
            StreamEvent::RedactedReasoning { data } => {
                // Sent whole in its `content_block_start`, as Anthropic does.
                self.ensure_block(
                    &mut out,
                    BlockKind::Redacted,
                    json!({"type": "redacted_thinking", "data": data}),
                );
                self.close(&mut out);
            }
            // Gemini's call signatures have no place in Anthropic's `tool_use` block.
            StreamEvent::ToolCallSignature { .. } => {}
            StreamEvent::Finish { reason } => self.stop_reason = stop_reason(*reason),
            // The final usage comes with `done`.
            StreamEvent::Usage { .. } => {}
        }
        (!out.is_empty()).then_some(out)
    }

    /// The end of a successful stream (its usage record is committed): closes the open block, then
    /// `message_delta` with the stop reason and final usage, then `message_stop`.
    pub fn done(&mut self, usage: &Usage) -> String {
        let mut out = String::new();
        self.start(&mut out, "", None);
        self.close(&mut out);
        out.push_str(&sse(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                "usage": usage_json(usage),
            }),
        ));
        out.push_str(&sse("message_stop", &json!({"type": "message_stop"})));
        out
    }

    /// A mid-stream error as Anthropic sends one (`event: error`; the SDK raises on it).
    pub fn error(&self, e: &HubError) -> String {
        sse(
            "error",
            &crate::errors::anthropic_body(e, Some(&self.request_id)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::types::AssistantOutput;
    use proptest::prelude::*;

    fn parse(body: &str) -> ChatRequest {
        match parse_messages(body.as_bytes(), Body::Messages) {
            Ok(r) => r,
            Err(e) => unreachable!("{e}"),
        }
    }

    #[test]
    fn parses_a_full_request() {
        let r = parse(
            r#"{"model":"openai/gpt-4o-mini","max_tokens":1024,
            "system":[{"type":"text","text":"You are terse.","cache_control":{"type":"ephemeral"}},{"type":"text","text":"Be kind."}],
            "messages":[
              {"role":"user","content":[{"type":"text","text":"Describe"},
                 {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR"}},
                 {"type":"image","source":{"type":"url","url":"https://x/y.png"}}]},
              {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"sig"},
                 {"type":"redacted_thinking","data":"xx"},
                 {"type":"text","text":"Let me check."},
                 {"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"city":"Paris"}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":"18C","is_error":false},
                 {"type":"text","text":"And tomorrow?"}]}],
            "tools":[{"name":"get_weather","description":"d","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],
            "tool_choice":{"type":"any","disable_parallel_tool_use":true},
            "thinking":{"type":"enabled","budget_tokens":2048},
            "temperature":0.7,"top_p":0.9,"top_k":40,"stop_sequences":["END"],"stream":true,
            "metadata":{"user_id":"u-1"},"service_tier":"auto"}"#,
        );
        assert_eq!(r.model, "openai/gpt-4o-mini");
        assert_eq!(r.max_tokens, Some(1024));
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            vec![
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::User
            ]
        );
        assert_eq!(r.messages[0].joined_text(), "You are terse.\nBe kind.");
        assert!(matches!(
            &r.messages[1].content[1],
            ContentPart::Image { source: ImageSource::Base64 { media_type, data }, .. }
                if media_type == "image/png" && data == "iVBOR"
        ));
        assert!(matches!(
            &r.messages[1].content[2],
            ContentPart::Image { source: ImageSource::Url { url }, .. } if url == "https://x/y.png"
        ));
        let a = &r.messages[2];
        assert_eq!(a.reasoning.as_deref(), Some("hmm"));
        assert_eq!(
            a.reasoning_blocks,
            vec![
                ReasoningBlock::Thinking {
                    text: "hmm".into(),
                    signature: Some("sig".into())
                },
                ReasoningBlock::Redacted { data: "xx".into() }
            ]
        );
        assert_eq!(a.joined_text(), "Let me check.");
        assert_eq!(a.tool_calls.len(), 1);
        assert_eq!(a.tool_calls[0].id, "toolu_01");
        assert_eq!(a.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("toolu_01"));
        assert_eq!(r.messages[3].joined_text(), "18C");
        assert!(r.messages[3].content_is_text);
        assert_eq!(r.messages[4].joined_text(), "And tomorrow?");
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.tools[0].parameters["type"], "object");
        assert_eq!(r.tool_choice, Some(ToolChoice::Required));
        assert_eq!(r.parallel_tool_calls, Some(false));
        assert_eq!(r.reasoning_effort.as_deref(), Some("low"));
        assert_eq!(r.temperature, Some(0.7));
        assert_eq!(r.top_p, Some(0.9));
        assert_eq!(r.extra.get("top_k"), Some(&json!(40)));
        assert!(!r.extra.contains_key("service_tier"));
        assert_eq!(r.stop, vec!["END".to_string()]);
        assert!(r.stream && r.include_usage);
        assert_eq!(r.user.as_deref(), Some("u-1"));
    }

    #[test]
    fn plain_string_content_and_tool_only_turns() {
        let r = parse(
            r#"{"model":"m","max_tokens":5,"system":"S","messages":[
              {"role":"user","content":"hi"},
              {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}},{"type":"tool_use","id":"t2","name":"g"}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                                        {"type":"tool_result","tool_use_id":"t2"}]}]}"#,
        );
        assert_eq!(r.messages.len(), 5);
        assert!(r.messages[1].content_is_text);
        assert_eq!(r.messages[1].joined_text(), "hi");
        assert_eq!(r.messages[2].tool_calls[1].arguments, "{}");
        assert!(r.messages[2].content.is_empty());
        assert_eq!(r.messages[3].role, Role::Tool);
        assert_eq!(r.messages[3].joined_text(), "ab");
        assert_eq!(r.messages[4].tool_call_id.as_deref(), Some("t2"));
        assert!(!r.stream && !r.include_usage);
        assert_eq!(r.tool_choice, None);
    }

    #[test]
    fn tool_choices_and_thinking_budgets_map() {
        let cases = [
            (r#"{"type":"auto"}"#, Some(ToolChoice::Auto), None),
            (r#"{"type":"none"}"#, Some(ToolChoice::None), None),
            (
                r#"{"type":"tool","name":"f","disable_parallel_tool_use":false}"#,
                Some(ToolChoice::Function { name: "f".into() }),
                Some(true),
            ),
        ];
        for (tc, want, parallel) in cases {
            let r = parse(&format!(
                r#"{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":"x"}}],"tool_choice":{tc}}}"#
            ));
            assert_eq!(r.tool_choice, want, "{tc}");
            assert_eq!(r.parallel_tool_calls, parallel, "{tc}");
        }
        for (budget, effort) in [(1024, "low"), (8000, "medium"), (32000, "high")] {
            let r = parse(&format!(
                r#"{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":"x"}}],"thinking":{{"type":"enabled","budget_tokens":{budget}}}}}"#
            ));
            assert_eq!(r.reasoning_effort.as_deref(), Some(effort));
        }
        let r = parse(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"disabled"}}"#,
        );
        assert_eq!(r.reasoning_effort, None);
        let r = parse(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"adaptive"},
                "output_config":{"effort":"max","format":{"type":"json_schema","schema":{"type":"object"}}}}"#,
        );
        assert_eq!(r.reasoning_effort.as_deref(), Some("high"));
        assert!(matches!(
            r.response_format,
            Some(ResponseFormat::JsonSchema { ref name, ref schema, strict: Some(true), .. })
                if name == "response" && schema["type"] == "object"
        ));
        let r = parse(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],
                "thinking":{"type":"enabled","budget_tokens":20000},"output_config":{"effort":"low"},
                "output_format":{"type":"json_schema","schema":{"type":"object"}}}"#,
        );
        assert_eq!(r.reasoning_effort.as_deref(), Some("low"));
        assert!(r.response_format.is_some());
    }

    #[test]
    fn rejects_invalid_requests_naming_the_field() {
        let ok_msgs = r#""messages":[{"role":"user","content":"x"}]"#;
        let cases: Vec<(String, Option<&str>)> = vec![
            ("{not json".into(), None),
            ("[1]".into(), None),
            (format!(r#"{{"max_tokens":5,{ok_msgs}}}"#), Some("model")),
            (
                format!(r#"{{"model":"","max_tokens":5,{ok_msgs}}}"#),
                Some("model"),
            ),
            (format!(r#"{{"model":"m",{ok_msgs}}}"#), Some("max_tokens")),
            (
                format!(r#"{{"model":"m","max_tokens":0,{ok_msgs}}}"#),
                Some("max_tokens"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":"5",{ok_msgs}}}"#),
                Some("max_tokens"),
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[]}"#.into(),
                Some("messages"),
            ),
            (r#"{"model":"m","max_tokens":5}"#.into(), Some("messages")),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"x"}]}"#
                    .into(),
                Some("messages.0.role"),
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":5}]}"#.into(),
                Some("messages.0.content"),
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user"}]}"#.into(),
                Some("messages.0.content"),
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"video"}]}]}"#.into(),
                Some("messages.0.content.0.type"),
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text"}]}]}"#.into(),
                Some("messages.0.content.0.text"),
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_use","id":"a","name":"f","input":{}}]}]}"#.into(),
                Some("messages.0.content.0.type"),
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"tool_result","tool_use_id":"a"}]}]}"#.into(),
                Some("messages.0.content.0.type"),
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"a","name":"f","input":[1]}]}]}"#.into(),
                Some("messages.0.content.0.input"),
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/bmp","data":"x"}}]}]}"#.into(),
                Some("messages.0.content.0.source.media_type"),
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"document","source":{}}]}]}"#.into(),
                Some("messages.0.content.0.type"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":5,{ok_msgs},"tools":[{{"name":"f"}}]}}"#),
                Some("tools.0.input_schema"),
            ),
            (
                format!(
                    r#"{{"model":"m","max_tokens":5,{ok_msgs},"tools":[{{"type":"web_search_20250305","name":"web_search"}}]}}"#
                ),
                Some("tools.0.type"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":5,{ok_msgs},"tool_choice":{{"type":"all"}}}}"#),
                Some("tool_choice.type"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":5,{ok_msgs},"tool_choice":{{"type":"tool"}}}}"#),
                Some("tool_choice.name"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":5,{ok_msgs},"stop_sequences":"END"}}"#),
                Some("stop_sequences"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":5,{ok_msgs},"temperature":"hot"}}"#),
                Some("temperature"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":5,{ok_msgs},"stream":"yes"}}"#),
                Some("stream"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":5,{ok_msgs},"thinking":{{"type":"enabled"}}}}"#),
                Some("thinking.budget_tokens"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":5,{ok_msgs},"system":5}}"#),
                Some("system"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":5,{ok_msgs},"output_config":{{"effort":"huge"}}}}"#),
                Some("output_config.effort"),
            ),
            (
                format!(
                    r#"{{"model":"m","max_tokens":5,{ok_msgs},"output_config":{{"format":{{"type":"json_schema"}}}}}}"#
                ),
                Some("output_config.format.schema"),
            ),
            (
                format!(r#"{{"model":"m","max_tokens":5,{ok_msgs},"output_format":{{"type":"xml"}}}}"#),
                Some("output_format.type"),
            ),
        ];
        for (body, param) in &cases {
            match parse_messages(body.as_bytes(), Body::Messages) {
                Ok(_) => unreachable!("accepted {body}"),
                Err(e) => {
                    assert_eq!(e.status(), 400, "{body}");
                    assert_eq!(e.param.as_deref(), *param, "{body}: {e}");
                    if let Some(p) = param {
                        assert!(e.message.starts_with(p), "{body}: {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn count_tokens_bodies_need_no_max_tokens_and_never_stream() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}"#;
        assert!(parse_messages(body, Body::Messages).is_err());
        let r = parse_messages(body, Body::CountTokens);
        assert!(matches!(r, Ok(r) if !r.stream && r.max_tokens.is_none()));
    }

    fn response(output: AssistantOutput, finish: FinishReason, usage: Usage) -> ChatResponse {
        ChatResponse {
            id: "chatcmpl-1".into(),
            model: "gpt-4o-mini-2024-07-18".into(),
            created: 1,
            output,
            finish_reason: finish,
            usage,
            provider_cost: None,
            cost: None,
        }
    }

    #[test]
    fn renders_messages_as_anthropic_does() {
        let resp = response(
            AssistantOutput {
                content: Some("Checking.".into()),
                reasoning: Some("think".into()),
                tool_calls: vec![
                    ToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris"}"#.into(),
                        signature: None,
                    },
                    ToolCall {
                        id: "call_2".into(),
                        name: "now".into(),
                        arguments: String::new(),
                        signature: None,
                    },
                ],
                images: Vec::new(),
                reasoning_blocks: Vec::new(),
            },
            FinishReason::ToolCalls,
            Usage {
                prompt_tokens: 100,
                completion_tokens: 20,
                cache_read_tokens: 30,
                cache_write_tokens: 10,
                ..Usage::default()
            },
        );
        let v = render_message(&resp, "msg_abc");
        assert_eq!(
            v,
            json!({
                "id": "msg_abc", "type": "message", "role": "assistant", "model": "gpt-4o-mini-2024-07-18",
                "content": [
                    {"type": "thinking", "thinking": "think", "signature": ""},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 60, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 30, "output_tokens": 20},
            })
        );
    }

    #[test]
    fn stop_reasons_ids_and_inputs_map() {
        assert_eq!(stop_reason(FinishReason::Stop), "end_turn");
        assert_eq!(stop_reason(FinishReason::Length), "max_tokens");
        assert_eq!(stop_reason(FinishReason::ToolCalls), "tool_use");
        assert_eq!(stop_reason(FinishReason::ContentFilter), "refusal");
        assert_eq!(message_id("msg_01X", "r"), "msg_01X");
        assert_eq!(message_id("chatcmpl-9", "0190-ab"), "msg_0190ab");
        assert_eq!(tool_input("  "), json!({}));
        assert_eq!(tool_input(r#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(tool_input("{broken"), json!("{broken"));
        let resp = response(
            AssistantOutput {
                content: Some(String::new()),
                ..AssistantOutput::default()
            },
            FinishReason::Length,
            Usage::default(),
        );
        let v = render_message(&resp, "msg_1");
        assert_eq!(v["content"], json!([]));
        assert_eq!(v["stop_reason"], "max_tokens");
    }

    /// Splits SSE text into (event, data) pairs, checking the framing.
    fn events(text: &str) -> Vec<(String, Value)> {
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split_terminator("\n\n")
            .map(|frame| {
                let (ev, data) = frame.split_once('\n').unwrap_or_default();
                let ev = ev.strip_prefix("event: ").unwrap_or_default().to_string();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap_or_default())
                        .unwrap_or_default();
                assert_eq!(data["type"], json!(ev), "{frame}");
                (ev, data)
            })
            .collect()
    }

    #[test]
    fn stream_events_open_a_block_per_kind_and_per_tool_call() {
        let mut w = EventWriter::new("0190-req", "openai/gpt-4o-mini", 42);
        let evs = [
            StreamEvent::Start {
                id: "chatcmpl-1".into(),
                model: "gpt-4o-mini".into(),
            },
            StreamEvent::ReasoningDelta { text: "hm".into() },
            StreamEvent::TextDelta { text: "".into() },
            StreamEvent::TextDelta { text: "Hi".into() },
            StreamEvent::TextDelta {
                text: " there".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: "".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: "{\"a\"".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: ":1}".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                id: Some("call_2".into()),
                name: Some("g".into()),
                arguments: "{}".into(),
            },
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
            },
            StreamEvent::Usage {
                usage: Usage::default(),
            },
        ];
        let mut text = String::new();
        for ev in &evs {
            if let Some(t) = w.event(ev) {
                text.push_str(&t);
            }
        }
        text.push_str(&w.done(&Usage {
            prompt_tokens: 50,
            completion_tokens: 7,
            cache_read_tokens: 8,
            ..Usage::default()
        }));
        let got = events(&text);
        let names: Vec<&str> = got.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let start = &got[0].1["message"];
        assert_eq!(start["id"], "msg_0190req");
        assert_eq!(start["model"], "gpt-4o-mini");
        assert_eq!(start["usage"]["input_tokens"], 42);
        assert_eq!(start["content"], json!([]));
        assert_eq!(
            got[1].1["content_block"],
            json!({"type":"thinking","thinking":"","signature":""})
        );
        assert_eq!(
            got[2].1["delta"],
            json!({"type":"thinking_delta","thinking":"hm"})
        );
        assert_eq!(got[4].1["index"], 1);
        assert_eq!(
            got[6].1["delta"],
            json!({"type":"text_delta","text":" there"})
        );
        assert_eq!(
            got[8].1,
            json!({"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"call_1","name":"f","input":{}}})
        );
        assert_eq!(
            got[10].1["delta"],
            json!({"type":"input_json_delta","partial_json":":1}"})
        );
        assert_eq!(got[12].1["content_block"]["id"], "call_2");
        assert_eq!(got[14].1["index"], 3);
        assert_eq!(
            got[15].1,
            json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},
                   "usage":{"input_tokens":42,"cache_creation_input_tokens":0,"cache_read_input_tokens":8,"output_tokens":7}})
        );
    }

    #[test]
    fn signatures_and_redacted_thinking_render_as_anthropic_does() {
        let mut w = EventWriter::new("req-1", "m", 3);
        let mut text = String::new();
        for ev in [
            StreamEvent::ReasoningDelta { text: "a".into() },
            StreamEvent::ReasoningDelta { text: "b".into() },
            StreamEvent::ReasoningSignature {
                signature: "SIG1".into(),
            },
            StreamEvent::RedactedReasoning { data: "ENC".into() },
            StreamEvent::ReasoningDelta { text: "c".into() },
            StreamEvent::ReasoningSignature {
                signature: "SIG2".into(),
            },
            StreamEvent::TextDelta { text: "hi".into() },
        ] {
            text.push_str(&w.event(&ev).unwrap_or_default());
        }
        text.push_str(&w.done(&Usage::default()));
        let evs = events(&text);
        let shape: Vec<String> = evs
            .iter()
            .filter(|(e, _)| e != "message_start" && e != "message_delta" && e != "message_stop")
            .map(|(e, d)| match e.as_str() {
                "content_block_start" => format!("start {} {}", d["index"], d["content_block"]),
                "content_block_delta" => format!("delta {} {}", d["index"], d["delta"]),
                _ => format!("stop {}", d["index"]),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                r#"start 0 {"signature":"","thinking":"","type":"thinking"}"#,
                r#"delta 0 {"thinking":"a","type":"thinking_delta"}"#,
                r#"delta 0 {"thinking":"b","type":"thinking_delta"}"#,
                r#"delta 0 {"signature":"SIG1","type":"signature_delta"}"#,
                "stop 0",
                r#"start 1 {"data":"ENC","type":"redacted_thinking"}"#,
                "stop 1",
                r#"start 2 {"signature":"","thinking":"","type":"thinking"}"#,
                r#"delta 2 {"thinking":"c","type":"thinking_delta"}"#,
                r#"delta 2 {"signature":"SIG2","type":"signature_delta"}"#,
                "stop 2",
                r#"start 3 {"text":"","type":"text"}"#,
                r#"delta 3 {"text":"hi","type":"text_delta"}"#,
                "stop 3",
            ]
        );
        // JSON: the blocks in order, signatures as received, before the text.
        let mut resp = response(
            AssistantOutput {
                content: Some("hi".into()),
                reasoning: Some("abc".into()),
                reasoning_blocks: vec![
                    ReasoningBlock::Thinking {
                        text: "ab".into(),
                        signature: Some("SIG1".into()),
                    },
                    ReasoningBlock::Redacted { data: "ENC".into() },
                ],
                ..AssistantOutput::default()
            },
            FinishReason::Stop,
            Usage::default(),
        );
        let m = render_message(&resp, "msg_1");
        assert_eq!(
            m["content"],
            json!([
                {"type": "thinking", "thinking": "ab", "signature": "SIG1"},
                {"type": "redacted_thinking", "data": "ENC"},
                {"type": "text", "text": "hi"}
            ])
        );
        resp.output.reasoning_blocks.clear();
        let m = render_message(&resp, "msg_1");
        assert_eq!(
            m["content"][0],
            json!({"type": "thinking", "thinking": "abc", "signature": ""})
        );
    }

    #[test]
    fn stream_without_start_or_content_is_still_well_formed() {
        let mut w = EventWriter::new("r1", "openai/m", 0);
        let text = w.done(&Usage::default());
        let names: Vec<String> = events(&text).into_iter().map(|(e, _)| e).collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
        let mut w = EventWriter::new("r2", "openai/m", 0);
        let t = w
            .event(&StreamEvent::TextDelta { text: "x".into() })
            .unwrap_or_default();
        let got = events(&t);
        assert_eq!(got[0].1["message"]["model"], "openai/m");
        assert_eq!(got[1].0, "content_block_start");
        let err = w.error(&HubError::new(hub_core::ErrorKind::Unavailable, "busy"));
        let got = events(&err);
        assert_eq!(got[0].0, "error");
        assert_eq!(
            got[0].1["error"],
            json!({"type":"overloaded_error","message":"busy"})
        );
    }

    proptest! {
        #[test]
        fn request_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_messages(&bytes, Body::Messages);
            let _ = parse_messages(&bytes, Body::CountTokens);
        }

        #[test]
        fn request_parser_never_panics_on_jsonish_input(s in r#"\{"model":"[a-z/]{0,8}"(,"max_tokens":(0|5|-1|"x"|99999999999))?,"messages":\[(\{"role":"(user|assistant|system)","content":(null|"[a-z]{0,4}"|\[(\{"type":"(text|image|tool_use|tool_result|thinking|x)"(,"text":"a"|,"thinking":"t"|,"id":"i","name":"n","input":(\{\}|1)|,"tool_use_id":"i","content":(\[\{"type":"text","text":"r"\}\]|5)|,"source":\{"type":"(base64|url)","media_type":"image/png","data":"x","url":"u"\})?\},?){0,3}\]|5)\},?){0,3}\](,"tools":\[\{"name":"f"(,"input_schema":\{\})?\}\])?(,"tool_choice":\{"type":"(auto|any|tool|none)"\})?(,"system":("s"|\[\{"type":"text","text":"s"\}\]|1))?\}"#) {
            let _ = parse_messages(s.as_bytes(), Body::Messages);
        }

        #[test]
        fn event_writer_output_is_well_formed(kinds in proptest::collection::vec(0u8..6, 0..40)) {
            let mut w = EventWriter::new("r", "m", 1);
            let mut text = String::new();
            for (i, k) in kinds.iter().enumerate() {
                let ev = match k {
                    0 => StreamEvent::TextDelta { text: "t".into() },
                    1 => StreamEvent::ReasoningDelta { text: "r".into() },
                    2 => StreamEvent::ToolCallDelta { index: (i % 3) as u32, id: None, name: None, arguments: "{".into() },
                    3 => StreamEvent::Finish { reason: FinishReason::Stop },
                    4 => StreamEvent::Start { id: String::new(), model: String::new() },
                    _ => StreamEvent::Usage { usage: Usage::default() },
                };
                if let Some(t) = w.event(&ev) {
                    text.push_str(&t);
                }
            }
            let t = w.done(&Usage::default());
            text.push_str(&t);
            // well-formed: one message_start first, blocks opened one at a time with increasing
            // indices and each stopped once, deltas only into the open block (or an earlier tool
            // call's), message_delta then message_stop last
            let evs = events(&text);
            prop_assert_eq!(evs[0].0.as_str(), "message_start");
            prop_assert_eq!(evs.iter().filter(|(e, _)| e == "message_start").count(), 1);
            let n = evs.len();
            prop_assert_eq!(evs[n - 2].0.as_str(), "message_delta");
            prop_assert_eq!(evs[n - 1].0.as_str(), "message_stop");
            let mut open: Option<u64> = None;
            let mut next = 0u64;
            for (e, d) in &evs[1..n - 2] {
                let index = d["index"].as_u64();
                match e.as_str() {
                    "content_block_start" => {
                        prop_assert!(open.is_none());
                        prop_assert_eq!(index, Some(next));
                        open = index;
                        next += 1;
                    }
                    "content_block_delta" => {
                        let tool = d["delta"]["type"] == "input_json_delta";
                        prop_assert!(index == open || (tool && index < Some(next)));
                    }
                    "content_block_stop" => {
                        prop_assert_eq!(index, open);
                        open = None;
                    }
                    other => prop_assert!(false, "unexpected {}", other),
                }
            }
            prop_assert!(open.is_none());
        }
    }
}
