//! `POST /api/v2/chat`: the AIGNE invoke protocol (`@aigne/transport` `BaseClient.__invoke`).
//!
//! Request: `{input:{messages, tools, toolChoice, responseFormat, modelOptions:{model, ...},
//! outputFileType}, agent, options:{streaming, userContext, memories}}` (aigne-client-wire.md §4).
//! No `options.streaming` means JSON. `cacheConfig`, `outputFileType`, `agent`, `userContext` and
//! `memories` are accepted and have no effect.
//!
//! Response: the `ChatModelOutput` JSON, or SSE `data: {"delta":...}` frames in the order the
//! original sends them (modelOptions, model, text pieces, usage, json, toolCalls, then the full
//! output), mid-stream errors as `event: error`, no `[DONE]` (§5). Pure functions.

use hub_core::HubError;
use hub_core::types::{
    ChatRequest, ChatResponse, ContentPart, ImageSource, Message, ResponseFormat, Role,
    StreamEvent, Tool, ToolCall, ToolChoice, Usage,
};
use serde_json::{Map, Value, json};

use super::wire::{
    Credits, DEFAULT_CHAT_MODEL, Fields, check_model, error_message, file_object,
    model_with_provider, parse_object, sniff_image_mime, tool_calls_json, usage_json,
};

/// A parsed invoke call: the canonical request and what shapes the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct InvokeChat {
    pub request: ChatRequest,
    pub streaming: bool,
    pub meta: OutputMeta,
}

/// What rendering the answer needs to know about the request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputMeta {
    /// `responseFormat` asked for JSON: the output carries `json`, not `text`.
    pub json_mode: bool,
    /// `provider/model` when the caller pinned one.
    pub model_with_provider: Option<String>,
    /// `modelOptions.reasoningEffort` as sent upstream (echoed in the first stream chunk).
    pub reasoning_effort: Option<String>,
}

/// Extracts the model of a body for usage records, without failing.
pub fn peek_model(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    ["/input/modelOptions/model", "/model", "/input/model"]
        .iter()
        .find_map(|p| v.pointer(p).and_then(Value::as_str))
        .unwrap_or_default()
        .to_string()
}

/// The framework's `reasoningEffort` (a level, or a token budget mapped as `@aigne/openai` does).
fn reasoning_effort(v: &Value, param: &str) -> Result<Option<String>, HubError> {
    match v {
        Value::String(s) if matches!(s.as_str(), "minimal" | "low" | "medium" | "high") => {
            Ok(Some(s.clone()))
        }
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or(0.0);
            Ok(if n > 5000.0 {
                Some("high".into())
            } else if n > 1000.0 {
                Some("medium".into())
            } else if n > 500.0 {
                Some("low".into())
            } else if n > 0.0 {
                Some("minimal".into())
            } else {
                None
            })
        }
        _ => Err(HubError::invalid_param(
            param,
            "reasoningEffort must be minimal, low, medium, high or a token budget",
        )),
    }
}

/// One content part of a framework message.
fn parse_part(part: &Value, param: &str) -> Result<ContentPart, HubError> {
    let Some(obj) = part.as_object() else {
        return Err(HubError::invalid_param(
            param,
            "content parts must be objects",
        ));
    };
    let f = Fields::new(obj, param);
    let kind = f.str(&["type"])?.unwrap_or("");
    let mime = f.str(&["mimeType", "mime_type"])?;
    let not_image = |mime: &str| {
        HubError::invalid_param(
            &format!("{param}.mimeType"),
            format!("Unsupported file type `{mime}`: this hub accepts text and image parts."),
        )
    };
    match kind {
        "text" => Ok(ContentPart::Text {
            text: f
                .str(&["text"])?
                .ok_or_else(|| {
                    HubError::invalid_param(
                        &format!("{param}.text"),
                        "text parts need a string `text`",
                    )
                })?
                .to_string(),
        }),
        "file" => {
            let data = f.str(&["data"])?.ok_or_else(|| {
                HubError::invalid_param(&format!("{param}.data"), "file parts need `data` (base64)")
            })?;
            if data.starts_with("data:") {
                return Ok(ContentPart::Image {
                    source: ImageSource::from_url(data),
                    detail: None,
                });
            }
            let media_type = match mime {
                Some(m) if m.starts_with("image/") => m.to_string(),
                Some(m) => return Err(not_image(m)),
                None => sniff_image_mime(data)
                    .ok_or_else(|| {
                        HubError::invalid_param(
                            &format!("{param}.mimeType"),
                            "file parts need `mimeType` (the data is not a recognised image)",
                        )
                    })?
                    .to_string(),
            };
            Ok(ContentPart::Image {
                source: ImageSource::Base64 {
                    media_type,
                    data: data.to_string(),
                },
                detail: None,
            })
        }
        "url" => {
            if let Some(m) = mime.filter(|m| !m.starts_with("image/")) {
                return Err(not_image(m));
            }
            let url = f.str(&["url"])?.ok_or_else(|| {
                HubError::invalid_param(&format!("{param}.url"), "url parts need `url`")
            })?;
            Ok(ContentPart::Image {
                source: ImageSource::from_url(url),
                detail: None,
            })
        }
        "image_url" => {
            let url = obj
                .get("image_url")
                .or_else(|| obj.get("imageUrl"))
                .and_then(|v| v.get("url").and_then(Value::as_str).or_else(|| v.as_str()))
                .ok_or_else(|| {
                    HubError::invalid_param(
                        &format!("{param}.image_url"),
                        "image_url parts need `image_url.url`",
                    )
                })?;
            Ok(ContentPart::Image {
                source: ImageSource::from_url(url),
                detail: None,
            })
        }
        "local" => Err(HubError::invalid_param(
            &format!("{param}.type"),
            "`local` file parts name a path on the caller's machine, which the hub cannot read; send the file as a `file` part (base64).",
        )),
        other => Err(HubError::invalid_param(
            &format!("{param}.type"),
            format!(
                "Unsupported content part type `{other}`; expected text, file, url or image_url."
            ),
        )),
    }
}

/// `content`: a string, an array of parts, or absent.
pub(crate) fn parse_content(
    v: Option<&Value>,
    param: &str,
) -> Result<(Vec<ContentPart>, bool), HubError> {
    match v {
        None | Some(Value::Null) => Ok((Vec::new(), false)),
        Some(Value::String(s)) => Ok((vec![ContentPart::Text { text: s.clone() }], true)),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| parse_part(p, &format!("{param}[{j}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(|p| (p, false)),
        // A tool result the framework carries as an object: the model sees its JSON.
        Some(other @ Value::Object(_)) => Ok((
            vec![ContentPart::Text {
                text: other.to_string(),
            }],
            true,
        )),
        Some(_) => Err(HubError::invalid_param(
            param,
            "`content` must be a string or an array of parts",
        )),
    }
}

/// Tool calls of an earlier assistant turn (`arguments` an object, or JSON text).
pub(crate) fn parse_tool_calls(calls: &[Value], param: &str) -> Result<Vec<ToolCall>, HubError> {
    calls
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let p = format!("{param}[{k}]");
            let obj = c
                .as_object()
                .ok_or_else(|| HubError::invalid_param(&p, "tool calls must be objects"))?;
            let f = Fields::new(obj, &p);
            let id = f.str(&["id"])?.ok_or_else(|| {
                HubError::invalid_param(&format!("{p}.id"), "tool calls need `id`")
            })?;
            let func = f.object(&["function"])?.ok_or_else(|| {
                HubError::invalid_param(&format!("{p}.function"), "tool calls need `function`")
            })?;
            let fp = format!("{p}.function");
            let ff = Fields::new(func, &fp);
            let name = ff.str(&["name"])?.ok_or_else(|| {
                HubError::invalid_param(&format!("{fp}.name"), "tool calls need `function.name`")
            })?;
            let arguments = match func.get("arguments") {
                None | Some(Value::Null) => "{}".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            Ok(ToolCall {
                id: id.to_string(),
                name: name.to_string(),
                arguments,
                signature: None,
            })
        })
        .collect()
}

/// Parses framework messages (both the invoke protocol's and the legacy route's: `role` `agent` or
/// `assistant`, `toolCalls`/`tool_calls`, `toolCallId`/`tool_call_id`). `param` names the array in
/// errors (`input.messages`, `messages`).
pub(crate) fn parse_messages(messages: &[Value], param: &str) -> Result<Vec<Message>, HubError> {
    if messages.is_empty() {
        return Err(HubError::invalid_param(
            param,
            format!("`{param}` must contain at least one message"),
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let p = format!("{param}[{i}]");
        let obj = m
            .as_object()
            .ok_or_else(|| HubError::invalid_param(&p, "messages must be objects"))?;
        let f = Fields::new(obj, &p);
        let role = match f.str(&["role"])? {
            Some("system") => Role::System,
            Some("developer") => Role::Developer,
            Some("user") => Role::User,
            Some("agent" | "assistant") => Role::Assistant,
            Some("tool") => Role::Tool,
            other => {
                return Err(HubError::invalid_param(
                    &format!("{p}.role"),
                    format!(
                        "Invalid role `{}`; expected system, user, agent (assistant) or tool.",
                        other.unwrap_or("")
                    ),
                ));
            }
        };
        let (content, content_is_text) =
            parse_content(obj.get("content"), &format!("{p}.content"))?;
        let tool_calls = match f.array(&["toolCalls", "tool_calls"])? {
            Some(calls) => parse_tool_calls(calls, &format!("{p}.toolCalls"))?,
            None => Vec::new(),
        };
        let tool_call_id = f.str(&["toolCallId", "tool_call_id"])?.map(str::to_string);
        if role == Role::Tool && tool_call_id.is_none() {
            return Err(HubError::invalid_param(
                &format!("{p}.toolCallId"),
                "tool messages need `toolCallId`",
            ));
        }
        out.push(Message {
            role,
            content,
            content_is_text,
            tool_calls,
            tool_call_id,
            name: f.str(&["name"])?.map(str::to_string),
            reasoning: None,
            reasoning_blocks: Vec::new(),
        });
    }
    Ok(out)
}

pub(crate) fn parse_tools(tools: &[Value], param: &str) -> Result<Vec<Tool>, HubError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = format!("{param}[{i}]");
            let obj = t
                .as_object()
                .ok_or_else(|| HubError::invalid_param(&p, "tools must be objects"))?;
            let f = Fields::new(obj, &p);
            if f.str(&["type"])?.is_some_and(|k| k != "function") {
                return Err(HubError::invalid_param(
                    &format!("{p}.type"),
                    "only function tools are supported",
                ));
            }
            let fp = format!("{p}.function");
            let func = f
                .object(&["function"])?
                .ok_or_else(|| HubError::invalid_param(&fp, "tools need `function`"))?;
            let ff = Fields::new(func, &fp);
            Ok(Tool {
                name: ff
                    .str(&["name"])?
                    .ok_or_else(|| {
                        HubError::invalid_param(&format!("{fp}.name"), "tools need `function.name`")
                    })?
                    .to_string(),
                description: ff.str(&["description"])?.map(str::to_string),
                parameters: func.get("parameters").cloned().unwrap_or(Value::Null),
                strict: ff.bool(&["strict"])?,
            })
        })
        .collect()
}

pub(crate) fn parse_tool_choice(v: &Value, param: &str) -> Result<ToolChoice, HubError> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(HubError::invalid_param(
                param,
                format!("Invalid toolChoice `{other}`; expected auto, none, required or a tool."),
            )),
        },
        Value::Object(_) => v
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Function {
                name: n.to_string(),
            })
            .ok_or_else(|| {
                HubError::invalid_param(param, "a toolChoice object needs `function.name`")
            }),
        _ => Err(HubError::invalid_param(
            param,
            "toolChoice must be a string or a tool",
        )),
    }
}

/// `responseFormat` (camelCase `jsonSchema`, or OpenAI's `json_schema`).
pub(crate) fn parse_response_format(
    v: &Map<String, Value>,
    param: &str,
) -> Result<ResponseFormat, HubError> {
    let f = Fields::new(v, param);
    match f.str(&["type"])? {
        Some("text") | None => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let sp = format!("{param}.jsonSchema");
            let js = f.object(&["jsonSchema", "json_schema"])?.ok_or_else(|| {
                HubError::invalid_param(&sp, "json_schema response formats need `jsonSchema`")
            })?;
            let jf = Fields::new(js, &sp);
            Ok(ResponseFormat::JsonSchema {
                name: jf.str(&["name"])?.unwrap_or("output").to_string(),
                schema: js.get("schema").cloned().unwrap_or_else(|| json!({})),
                strict: jf.bool(&["strict"])?,
                description: jf.str(&["description"])?.map(str::to_string),
            })
        }
        Some(other) => Err(HubError::invalid_param(
            &format!("{param}.type"),
            format!(
                "Invalid responseFormat type `{other}`; expected text, json_object or json_schema."
            ),
        )),
    }
}

/// Parses a `/api/v2/chat` body.
pub fn parse_chat(body: &[u8]) -> Result<InvokeChat, HubError> {
    let root = parse_object(body)?;
    let rf = Fields::new(&root, "");
    let input = rf
        .object(&["input"])?
        .ok_or_else(|| HubError::invalid_param("input", "`input` is required"))?;
    let f = Fields::new(input, "input");
    let empty = Map::new();
    let model_options = f.object(&["modelOptions"])?.unwrap_or(&empty);
    let mo = Fields::new(model_options, "input.modelOptions");
    // Resolution order of the original: modelOptions.model, body.model, input.model, default.
    let (model, model_param) = if let Some(m) = mo.str(&["model"])? {
        (m, "input.modelOptions.model")
    } else if let Some(m) = rf.str(&["model"])? {
        (m, "model")
    } else if let Some(m) = f.str(&["model"])? {
        (m, "input.model")
    } else {
        (DEFAULT_CHAT_MODEL, "input.modelOptions.model")
    };
    let model = check_model(model, model_param)?;
    let messages = parse_messages(
        f.array(&["messages"])?.ok_or_else(|| {
            HubError::invalid_param("input.messages", "`input.messages` is required")
        })?,
        "input.messages",
    )?;
    let tools = match f.array(&["tools"])? {
        Some(t) => parse_tools(t, "input.tools")?,
        None => Vec::new(),
    };
    let tool_choice = f
        .value(&["toolChoice", "tool_choice"])
        .map(|(_, v)| parse_tool_choice(v, "input.toolChoice"))
        .transpose()?;
    let response_format = f
        .object(&["responseFormat", "response_format"])?
        .map(|v| parse_response_format(v, "input.responseFormat"))
        .transpose()?;
    let json_mode = matches!(
        response_format,
        Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
    );
    let reasoning = mo
        .value(&["reasoningEffort", "reasoning_effort"])
        .map(|(_, v)| reasoning_effort(v, "input.modelOptions.reasoningEffort"))
        .transpose()?
        .flatten();
    // The framework sends `parallelToolCalls: true` by default; providers reject it without tools.
    let parallel_tool_calls = if tools.is_empty() {
        None
    } else {
        mo.bool(&["parallelToolCalls", "parallel_tool_calls"])?
    };
    let streaming = match rf.object(&["options"])? {
        Some(o) => Fields::new(o, "options")
            .bool(&["streaming"])?
            .unwrap_or(false),
        None => false,
    };
    let request = ChatRequest {
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        max_tokens: mo.u32_in(&["maxTokens", "max_tokens", "maxOutputTokens"], 1, u32::MAX)?,
        temperature: mo.f64_in(&["temperature"], 0.0, 2.0)?,
        top_p: mo.f64_in(&["topP", "top_p"], 0.0, 1.0)?,
        stop: mo.stop()?,
        seed: mo.i64(&["seed"])?,
        presence_penalty: mo.f64_in(&["presencePenalty", "presence_penalty"], -2.0, 2.0)?,
        frequency_penalty: mo.f64_in(&["frequencyPenalty", "frequency_penalty"], -2.0, 2.0)?,
        reasoning_effort: reasoning.clone(),
        user: None,
        stream: streaming,
        include_usage: false,
        extra: Map::new(),
        model: model.clone(),
    };
    Ok(InvokeChat {
        request,
        streaming,
        meta: OutputMeta {
            json_mode,
            model_with_provider: model_with_provider(&model),
            reasoning_effort: reasoning,
        },
    })
}

/// The model's JSON answer as an object, when it is one.
fn json_output(text: &str) -> Option<Value> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|s| s.strip_suffix("```"))
        .unwrap_or(t);
    match serde_json::from_str::<Value>(t.trim()) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

/// What the model answered, from a response or accumulated from a stream.
struct Answer<'a> {
    text: Option<&'a str>,
    thoughts: Option<&'a str>,
    tool_calls: &'a [ToolCall],
    images: &'a [String],
    model: &'a str,
    usage: &'a Usage,
}

/// The full `ChatModelOutput` (the JSON answer, and the last chunk of a stream).
fn output_json(meta: &OutputMeta, a: &Answer<'_>, call_id: &str, credits: &Credits) -> Value {
    let mut o = Map::new();
    match a.text.filter(|t| !t.is_empty()) {
        Some(t) if meta.json_mode => match json_output(t) {
            Some(j) => {
                o.insert("json".into(), j);
            }
            None => {
                o.insert("text".into(), json!(t));
            }
        },
        Some(t) => {
            o.insert("text".into(), json!(t));
        }
        None => {}
    }
    if let Some(t) = a.thoughts.filter(|t| !t.is_empty()) {
        o.insert("thoughts".into(), json!(t));
    }
    if !a.tool_calls.is_empty() {
        o.insert("toolCalls".into(), tool_calls_json(a.tool_calls, true));
    }
    if !a.images.is_empty() {
        o.insert(
            "files".into(),
            Value::Array(a.images.iter().map(|i| file_object(i)).collect()),
        );
    }
    o.insert("model".into(), json!(a.model));
    o.insert("usage".into(), usage_json(a.usage, Some(call_id), credits));
    if let Some(m) = &meta.model_with_provider {
        o.insert("modelWithProvider".into(), json!(m));
    }
    Value::Object(o)
}

/// The JSON answer of a non-streaming call.
pub fn render_output(
    resp: &ChatResponse,
    meta: &OutputMeta,
    call_id: &str,
    credits: &Credits,
) -> Value {
    let answer = Answer {
        text: resp.output.content.as_deref(),
        thoughts: resp.output.reasoning.as_deref(),
        tool_calls: &resp.output.tool_calls,
        images: &resp.output.images,
        model: &resp.model,
        usage: &resp.usage,
    };
    output_json(meta, &answer, call_id, credits)
}

fn frame(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn json_delta(v: Value) -> String {
    frame(&json!({"delta": {"json": v}}))
}

/// Renders a hub stream as AIGNE `delta` frames, accumulating what the final output needs.
#[derive(Debug, Clone, Default)]
pub struct StreamWriter {
    pub meta: OutputMeta,
    model: String,
    text: String,
    thoughts: String,
    calls: Vec<ToolCall>,
}

impl StreamWriter {
    pub fn new(meta: OutputMeta) -> StreamWriter {
        StreamWriter {
            meta,
            ..StreamWriter::default()
        }
    }

    /// The first frame (`modelOptions`, as the framework's chat models open their streams).
    pub fn open(&self) -> String {
        let mut mo = Map::new();
        if let Some(r) = &self.meta.reasoning_effort {
            mo.insert("reasoningEffort".into(), json!(r));
        }
        json_delta(json!({"modelOptions": Value::Object(mo)}))
    }

    /// The frame for one event, if it shows.
    pub fn event(&mut self, ev: &StreamEvent) -> Option<String> {
        match ev {
            StreamEvent::Start { model, .. } => {
                self.model = model.clone();
                Some(json_delta(json!({"model": model})))
            }
            StreamEvent::TextDelta { text } => {
                self.text.push_str(text);
                // JSON answers are sent whole at the end, as the framework does in JSON mode.
                (!self.meta.json_mode && !text.is_empty())
                    .then(|| frame(&json!({"delta": {"text": {"text": text}}})))
            }
            StreamEvent::ReasoningDelta { text } => {
                self.thoughts.push_str(text);
                (!text.is_empty()).then(|| frame(&json!({"delta": {"text": {"thoughts": text}}})))
            }
            StreamEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                let i = *index as usize;
                if self.calls.len() <= i {
                    self.calls.resize_with(i + 1, || ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                        signature: None,
                    });
                }
                let call = &mut self.calls[i];
                if let Some(id) = id {
                    call.id = id.clone();
                }
                if let Some(n) = name {
                    call.name.push_str(n);
                }
                call.arguments.push_str(arguments);
                None
            }
            // Usage is sent once, at the end, from the recorded (final) figures.
            StreamEvent::Finish { .. } | StreamEvent::Usage { .. } => None,
            // The AIGNE wire has no place for reasoning signatures or encrypted reasoning.
            StreamEvent::ReasoningSignature { .. }
            | StreamEvent::RedactedReasoning { .. }
            | StreamEvent::ToolCallSignature { .. } => None,
        }
    }

    /// The end of a successful stream: usage, the JSON answer, tool calls, then the full output.
    pub fn done(&self, usage: &Usage, call_id: &str, credits: &Credits) -> String {
        let calls: Vec<ToolCall> = self
            .calls
            .iter()
            .filter(|c| !c.id.is_empty() || !c.name.is_empty())
            .cloned()
            .collect();
        let mut out = json_delta(json!({"usage": {
            "inputTokens": usage.prompt_tokens,
            "outputTokens": usage.completion_tokens,
        }}));
        let answer = Answer {
            text: Some(&self.text),
            thoughts: Some(&self.thoughts),
            tool_calls: &calls,
            images: &[],
            model: &self.model,
            usage,
        };
        let full = output_json(&self.meta, &answer, call_id, credits);
        if let Some(j) = full.get("json") {
            out.push_str(&json_delta(json!({"json": j})));
        }
        if let Some(c) = full.get("toolCalls") {
            out.push_str(&json_delta(json!({"toolCalls": c})));
        }
        out.push_str(&json_delta(full));
        out
    }

    /// A mid-stream error: the client's `EventStreamParser` throws its message.
    pub fn error(e: &HubError) -> String {
        format!(
            "event: error\ndata: {}\n\n",
            json!({"message": error_message(e)})
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::types::{AssistantOutput, FinishReason};
    use proptest::prelude::*;

    fn ok(body: &str) -> InvokeChat {
        match parse_chat(body.as_bytes()) {
            Ok(r) => r,
            Err(e) => unreachable!("{body}: {e}"),
        }
    }

    /// The bodies recorded from `@aigne/aigne-hub` 0.10.16 (aigne-client-wire.md §4).
    #[test]
    fn parses_what_the_client_sends() {
        let r = ok(
            r#"{"input":{"messages":[{"role":"user","content":"acc-ains-b6d5a9 say hello to the hub"}],
                "modelOptions":{"cacheConfig":{"autoBreakpoints":{"lastMessage":true}},"model":"openai/gpt-4o-mini"},
                "outputFileType":"url"},"agent":"$CHAT_MODEL","options":{"userContext":{},"memories":[]}}"#,
        );
        assert!(!r.streaming, "no `streaming` key means JSON");
        assert_eq!(r.request.model, "openai/gpt-4o-mini");
        assert_eq!(
            r.request.messages,
            vec![Message::text(
                Role::User,
                "acc-ains-b6d5a9 say hello to the hub"
            )]
        );
        assert_eq!(
            r.meta.model_with_provider.as_deref(),
            Some("openai/gpt-4o-mini")
        );
        let s = ok(
            r#"{"input":{"messages":[{"role":"user","content":"x"}],"modelOptions":{"model":"openai/gpt-4o-mini","temperature":0.3,"topP":0.9}},
                "agent":"$CHAT_MODEL","options":{"streaming":true,"userContext":{},"memories":[]}}"#,
        );
        assert!(s.streaming && s.request.stream);
        assert_eq!(s.request.temperature, Some(0.3));
        assert_eq!(s.request.top_p, Some(0.9));

        let t = ok(r#"{"input":{"messages":[
                {"role":"system","content":"You are terse."},
                {"role":"user","content":[{"type":"text","text":"probe two describe"},{"mimeType":"image/png","type":"file","data":"iVBORw0KGgo"}]},
                {"role":"agent","toolCalls":[{"id":"call_9c0df99a15c7","type":"function","function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},
                {"role":"tool","content":"18C and sunny","toolCallId":"call_9c0df99a15c7"}],
              "tools":[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
              "toolChoice":"auto",
              "modelOptions":{"model":"openai/gpt-4o-mini","parallelToolCalls":true,"reasoningEffort":2000}},
              "options":{"streaming":false}}"#);
        let m = &t.request.messages;
        assert_eq!(m[0].role, Role::System);
        assert_eq!(
            m[1].content[1],
            ContentPart::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBORw0KGgo".into()
                },
                detail: None
            }
        );
        assert_eq!(m[2].role, Role::Assistant);
        assert_eq!(m[2].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(m[3].tool_call_id.as_deref(), Some("call_9c0df99a15c7"));
        assert_eq!(t.request.tools[0].name, "get_weather");
        assert_eq!(t.request.tool_choice, Some(ToolChoice::Auto));
        assert_eq!(t.request.parallel_tool_calls, Some(true));
        assert_eq!(t.request.reasoning_effort.as_deref(), Some("medium"));
    }

    #[test]
    fn model_resolution_follows_the_original() {
        let m = |b: &str| ok(b).request.model;
        assert_eq!(
            m(r#"{"input":{"messages":[{"role":"user","content":"x"}]},"model":"xai/grok-4"}"#),
            "xai/grok-4"
        );
        assert_eq!(
            m(
                r#"{"input":{"model":"deepseek/deepseek-chat","messages":[{"role":"user","content":"x"}]}}"#
            ),
            "deepseek/deepseek-chat"
        );
        assert_eq!(
            m(r#"{"input":{"messages":[{"role":"user","content":"x"}]}}"#),
            DEFAULT_CHAT_MODEL
        );
        // parallelToolCalls without tools is not sent upstream (providers reject it).
        let r = ok(
            r#"{"input":{"messages":[{"role":"user","content":"x"}],"modelOptions":{"parallelToolCalls":true}}}"#,
        );
        assert_eq!(r.request.parallel_tool_calls, None);
    }

    #[test]
    fn json_response_formats() {
        let r = ok(r#"{"input":{"messages":[{"role":"user","content":"x"}],
            "responseFormat":{"type":"json_schema","jsonSchema":{"name":"out","schema":{"type":"object"},"strict":true}}}}"#);
        assert!(r.meta.json_mode);
        assert!(matches!(
            r.request.response_format,
            Some(ResponseFormat::JsonSchema { ref name, strict: Some(true), .. }) if name == "out"
        ));
        let r = ok(
            r#"{"input":{"messages":[{"role":"user","content":"x"}],"responseFormat":{"type":"text"}}}"#,
        );
        assert!(!r.meta.json_mode);
    }

    #[test]
    fn rejects_invalid_bodies_naming_the_param() {
        let cases: &[(&str, Option<&str>)] = &[
            ("{", None),
            ("[]", None),
            (r#"{"options":{}}"#, Some("input")),
            (r#"{"input":{}}"#, Some("input.messages")),
            (r#"{"input":{"messages":[]}}"#, Some("input.messages")),
            (
                r#"{"input":{"messages":[{"role":"robot","content":"x"}]}}"#,
                Some("input.messages[0].role"),
            ),
            (
                r#"{"input":{"messages":[{"role":"tool","content":"x"}]}}"#,
                Some("input.messages[0].toolCallId"),
            ),
            (
                r#"{"input":{"messages":[{"role":"user","content":[{"type":"local","path":"/etc/passwd"}]}]}}"#,
                Some("input.messages[0].content[0].type"),
            ),
            (
                r#"{"input":{"messages":[{"role":"user","content":[{"type":"file","data":"JVBERi0","mimeType":"application/pdf"}]}]}}"#,
                Some("input.messages[0].content[0].mimeType"),
            ),
            (
                r#"{"input":{"messages":[{"role":"user","content":"x"}],"modelOptions":{"model":"nosuch/model"}}}"#,
                Some("input.modelOptions.model"),
            ),
            (
                r#"{"input":{"messages":[{"role":"user","content":"x"}],"modelOptions":{"temperature":"hot"}}}"#,
                Some("input.modelOptions.temperature"),
            ),
            (
                r#"{"input":{"messages":[{"role":"user","content":"x"}]},"options":{"streaming":"yes"}}"#,
                Some("options.streaming"),
            ),
            (
                r#"{"input":{"messages":[{"role":"user","content":"x"}],"toolChoice":"sometimes"}}"#,
                Some("input.toolChoice"),
            ),
        ];
        for (body, param) in cases {
            match parse_chat(body.as_bytes()) {
                Ok(_) => unreachable!("accepted {body}"),
                Err(e) => {
                    assert_eq!(e.status(), 400, "{body}");
                    assert_eq!(e.param.as_deref(), *param, "{body}: {e}");
                }
            }
        }
        let e = parse_chat(br#"{"input":{"messages":[{"role":"user","content":"x"}],"modelOptions":{"model":"nosuch/model"}}}"#).err();
        assert!(e.is_some_and(
            |e| e.message == "Invalid model format: nosuch/model, should be {provider}/{model}"
        ));
    }

    fn response(content: Option<&str>, calls: Vec<ToolCall>) -> ChatResponse {
        ChatResponse {
            id: "chatcmpl-1".into(),
            model: "gpt-4o-mini-2024-07-18".into(),
            created: 1,
            output: AssistantOutput {
                content: content.map(str::to_string),
                reasoning: Some("hmm".into()),
                tool_calls: calls,
                images: Vec::new(),
                reasoning_blocks: Vec::new(),
            },
            finish_reason: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 5,
                cache_read_tokens: 2,
                ..Usage::default()
            },
            provider_cost: None,
            cost: None,
        }
    }

    /// Golden: the ChatModelOutput JSON (aigne-hub.md §2.4, aigne-client-wire.md §5).
    #[test]
    fn renders_the_chat_model_output() {
        let meta = OutputMeta {
            json_mode: false,
            model_with_provider: Some("openai/gpt-4o-mini".into()),
            reasoning_effort: None,
        };
        let v = render_output(
            &response(
                None,
                vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                    signature: None,
                }],
            ),
            &meta,
            "req-1",
            &Credits::default(),
        );
        assert_eq!(
            v,
            json!({
                "thoughts": "hmm",
                "toolCalls": [{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":{"city":"Paris"}}}],
                "model": "gpt-4o-mini-2024-07-18",
                "usage": {"inputTokens":12,"outputTokens":5,"cacheCreationInputTokens":0,"cacheReadInputTokens":2,"modelCallId":"req-1"},
                "modelWithProvider": "openai/gpt-4o-mini",
            })
        );
        let json_meta = OutputMeta {
            json_mode: true,
            ..OutputMeta::default()
        };
        let v = render_output(
            &response(Some("```json\n{\"a\":1}\n```"), Vec::new()),
            &json_meta,
            "req-2",
            &Credits::default(),
        );
        assert_eq!(v["json"], json!({"a":1}));
        assert!(v.get("text").is_none() && v.get("modelWithProvider").is_none());
        let v = render_output(
            &response(Some("hello"), Vec::new()),
            &OutputMeta::default(),
            "req-3",
            &Credits::default(),
        );
        assert_eq!(v["text"], json!("hello"));
    }

    /// Golden: the SSE frames of a streamed tool call, in the original's order.
    #[test]
    fn renders_stream_frames_in_order() {
        let mut w = StreamWriter::new(OutputMeta {
            model_with_provider: Some("openai/gpt-4o-mini".into()),
            ..OutputMeta::default()
        });
        let mut out = w.open();
        for ev in [
            StreamEvent::Start {
                id: "c".into(),
                model: "gpt-4o-mini".into(),
            },
            StreamEvent::TextDelta { text: "Hel".into() },
            StreamEvent::TextDelta { text: "lo".into() },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: "{\"a\"".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: ":1}".into(),
            },
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
            },
        ] {
            if let Some(f) = w.event(&ev) {
                out.push_str(&f);
            }
        }
        out.push_str(&w.done(
            &Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                ..Usage::default()
            },
            "req-9",
            &Credits::default(),
        ));
        let want = [
            r#"data: {"delta":{"json":{"modelOptions":{}}}}"#,
            r#"data: {"delta":{"json":{"model":"gpt-4o-mini"}}}"#,
            r#"data: {"delta":{"text":{"text":"Hel"}}}"#,
            r#"data: {"delta":{"text":{"text":"lo"}}}"#,
            r#"data: {"delta":{"json":{"usage":{"inputTokens":3,"outputTokens":4}}}}"#,
            r#"data: {"delta":{"json":{"toolCalls":[{"function":{"arguments":{"a":1},"name":"f"},"id":"call_1","type":"function"}]}}}"#,
            r#"data: {"delta":{"json":{"model":"gpt-4o-mini","modelWithProvider":"openai/gpt-4o-mini","text":"Hello","toolCalls":[{"function":{"arguments":{"a":1},"name":"f"},"id":"call_1","type":"function"}],"usage":{"cacheCreationInputTokens":0,"cacheReadInputTokens":0,"inputTokens":3,"modelCallId":"req-9","outputTokens":4}}}}"#,
        ];
        let got: Vec<&str> = out.split("\n\n").filter(|s| !s.is_empty()).collect();
        assert_eq!(got, want);
        assert_eq!(
            StreamWriter::error(&HubError::invalid("boom")),
            "event: error\ndata: {\"message\":\"boom\"}\n\n"
        );
    }

    #[test]
    fn json_mode_streams_the_answer_whole() {
        let mut w = StreamWriter::new(OutputMeta {
            json_mode: true,
            ..OutputMeta::default()
        });
        assert!(
            w.event(&StreamEvent::TextDelta {
                text: "{\"a\":".into()
            })
            .is_none()
        );
        assert!(
            w.event(&StreamEvent::TextDelta { text: "2}".into() })
                .is_none()
        );
        let end = w.done(&Usage::default(), "r", &Credits::default());
        assert!(
            end.contains(r#"data: {"delta":{"json":{"json":{"a":2}}}}"#),
            "{end}"
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_chat(&bytes);
            let _ = peek_model(&bytes);
        }

        #[test]
        fn parser_never_panics_on_jsonish_input(s in r#"\{"input":\{"messages":\[(\{"role":"(user|agent|tool|system|x)"(,"content":(null|"[a-z]{0,4}"|5|\{\}|\[\{"type":"(text|file|url|local|image_url|x)"(,"text":"a"|,"data":"iVBORw0KGgo"|,"url":"https://x"|,"mimeType":"(image/png|text/plain)")?\}\]))?(,"toolCalls":\[\{"id":"a","function":\{"name":"f","arguments":(null|"\{\}"|\{\}|1)\}\}\])?(,"toolCallId":"c")?\},?){0,3}\](,"modelOptions":\{"model":"(openai/m|x/y|m|)"(,"reasoningEffort":(1|"low"|true))?(,"temperature":(1|"a"|9))?\})?(,"toolChoice":("auto"|\{"function":\{\}\}|1))?\}(,"options":\{"streaming":(true|1)\})?\}"#) {
            let _ = parse_chat(s.as_bytes());
        }
    }
}
