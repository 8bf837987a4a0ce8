//! Anthropic Messages mock (providers.md §3): `POST /v1/messages`, JSON and named-event SSE.
//!
//! Faithful to the recorded anthropic-sdk-python `tests/lib/streaming/fixtures/tool_use_response.txt`
//! and vercel/ai `packages/anthropic/src/__fixtures__/anthropic-{text.json,clear-thinking.1.chunks.txt,
//! message-delta-input-tokens.chunks.txt}`: `event:` equals `data.type`, `ping`s interleaved, no
//! `[DONE]`, thinking blocks open with empty `thinking`/`signature` and get one `signature_delta`,
//! `input_json_delta` starts with `""`, `message_delta.usage` is cumulative (and carries the input
//! counts), `input_tokens` excludes cache reads/writes, `event: error` after the 200, 529 overload.
//! Thinking signatures are real checks (`signatures.rs`): altered thinking or redacted blocks, or
//! a tool loop with thinking on whose assistant turn lost its thinking block, get Anthropic's 400.

use std::sync::Arc;

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::Usage;
use crate::native::{self, NativeRequest, Resolved};
use crate::openai_family::Frame;
use crate::server::{Shared, json_response, script_headers, sse_body};

use crate::signatures::{self, Block};

fn error_type(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalid_request_error", "Invalid request"),
        401 => ("authentication_error", "invalid x-api-key"),
        402 => (
            "billing_error",
            "Your credit balance is too low to access the Anthropic API.",
        ),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => ("not_found_error", "Not found"),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => (
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
        504 => ("timeout_error", "Request timed out"),
        529 => ("overloaded_error", "Overloaded"),
        _ => ("api_error", "Internal server error"),
    }
}

fn request_id(seq: u64) -> String {
    format!("req_mock{seq:020x}")
}

fn error_response(status: u16, message: Option<&str>, seq: u64) -> Response {
    let (kind, default) = error_type(status);
    let body = json!({"type": "error",
        "error": {"type": kind, "message": message.unwrap_or(default)},
        "request_id": request_id(seq)});
    json_response(status, &body)
}

fn with_common_headers(mut resp: Response, seq: u64) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id(seq)) {
        h.insert(HeaderName::from_static("request-id"), v);
    }
    h.insert(
        HeaderName::from_static("anthropic-ratelimit-requests-limit"),
        HeaderValue::from_static("4000"),
    );
    resp
}

pub(crate) async fn handle(shared: &Arc<Shared>, req: NativeRequest<'_>) -> Response {
    let seq = req.seq;
    let resp = messages(shared, &req).await;
    with_common_headers(resp, seq)
}

async fn messages(shared: &Arc<Shared>, req: &NativeRequest<'_>) -> Response {
    let seq = req.seq;
    let path = req.uri.path().trim_end_matches('/');
    let counting = path == "/v1/messages/count_tokens";
    if !(req.method == Method::POST && (path == "/v1/messages" || counting)) {
        return error_response(404, Some("Not found"), seq);
    }
    if req.header("x-api-key") != Some(shared.config.api_key.as_str()) {
        return error_response(401, Some("invalid x-api-key"), seq);
    }
    if req.header("anthropic-version").is_none() {
        return error_response(400, Some("anthropic-version: header is required"), seq);
    }
    let body = &req.body;
    if !body.is_object() {
        return error_response(
            400,
            Some("There was an error parsing the body of your request."),
            seq,
        );
    }
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return error_response(400, Some("model: Field required"), seq);
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return error_response(400, Some("messages: Field required"), seq);
    };
    if counting {
        return count_tokens(shared, body, model, messages, seq).await;
    }
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return error_response(400, Some("max_tokens: Field required"), seq);
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            let msg = format!("messages.{i}.role: Input should be 'user' or 'assistant'");
            return error_response(400, Some(&msg), seq);
        }
        if let Some(blocks) = m.get("content").and_then(Value::as_array) {
            for b in blocks {
                if b.get("type").and_then(Value::as_str) == Some("tool_use")
                    && !b.get("input").is_some_and(Value::is_object)
                {
                    let msg = format!(
                        "messages.{i}.content: tool_use.input: Input should be a valid dictionary"
                    );
                    return error_response(400, Some(&msg), seq);
                }
            }
        }
    }
    if let Err(r) = check_thinking(body, messages) {
        return error_response(400, Some(&r.message), seq);
    }
    let script = shared.pick_script(Some(model));
    native::first_byte_delay(shared, &script).await;
    if let Some(err) = &script.error {
        let mut resp = match &err.body {
            Some(b) if !b.is_null() => json_response(err.status, b),
            _ => error_response(err.status, None, seq),
        };
        if let Some(secs) = err.retry_after {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        script_headers(&script, resp.headers_mut());
        return resp;
    }
    let prompt_chars = native::text_chars(&json!({"m": messages}))
        + native::text_chars(&json!({"s": body.get("system")}));
    let reply = Resolved::new(shared.flavor, script, prompt_chars, |i| {
        format!("toolu_mock{seq:08x}{i:02}")
    });
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let id = format!("msg_mock{seq:016x}");
    let mut resp = if stream {
        let frames = stream_frames(&reply, &id, model);
        let mut resp = Response::new(sse_body(
            Arc::clone(shared),
            frames,
            reply.chunk_delay_ms(shared),
        ));
        let h = resp.headers_mut();
        h.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        h.insert(
            axum::http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        resp
    } else if reply.script.drop_after_chunks.is_some() {
        native::aborted_json()
    } else {
        json_response(200, &message_json(&reply, &id, model))
    };
    script_headers(&reply.script, resp.headers_mut());
    resp
}

/// `POST /v1/messages/count_tokens` -> `{"input_tokens": N}`: N is the script's
/// `usage.prompt_tokens` when scripted, else the prompt estimate. Generation-only fields are
/// refused as the real endpoint does.
async fn count_tokens(
    shared: &Arc<Shared>,
    body: &Value,
    model: &str,
    messages: &[Value],
    seq: u64,
) -> Response {
    for field in [
        "max_tokens",
        "stream",
        "temperature",
        "top_p",
        "stop_sequences",
        "metadata",
    ] {
        if body.get(field).is_some() {
            let msg = format!("{field}: Extra inputs are not permitted");
            return error_response(400, Some(&msg), seq);
        }
    }
    let script = shared.pick_script(Some(model));
    native::first_byte_delay(shared, &script).await;
    if let Some(err) = &script.error {
        let mut resp = match &err.body {
            Some(b) if !b.is_null() => json_response(err.status, b),
            _ => error_response(err.status, None, seq),
        };
        script_headers(&script, resp.headers_mut());
        return resp;
    }
    let chars = native::text_chars(&json!({"m": messages}))
        + native::text_chars(&json!({"s": body.get("system")}));
    let n = script
        .usage
        .as_ref()
        .map_or_else(|| crate::server::approx_tokens(chars), |u| u.prompt_tokens);
    json_response(200, &json!({"input_tokens": n}))
}

/// Anthropic's thinking checks over the history (see [`signatures::check_history`]).
fn check_thinking(body: &Value, messages: &[Value]) -> Result<(), signatures::Rejection> {
    let thinking_on = matches!(
        body.pointer("/thinking/type").and_then(Value::as_str),
        Some("enabled" | "adaptive")
    );
    let turns: Vec<(usize, Vec<Block<'_>>)> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .map(|(i, m)| {
            let blocks = match m.get("content") {
                Some(Value::Array(blocks)) => blocks
                    .iter()
                    .map(|b| {
                        let s = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("");
                        match s("type") {
                            "thinking" => Block::Thinking {
                                text: s("thinking"),
                                signature: s("signature"),
                            },
                            "redacted_thinking" => Block::Redacted { data: s("data") },
                            "tool_use" => Block::ToolUse,
                            other => Block::Other(other),
                        }
                    })
                    .collect(),
                _ => vec![Block::Other("text")],
            };
            (i, blocks)
        })
        .collect();
    signatures::check_history(&turns, thinking_on)
}

fn stop_reason(finish: &str) -> &str {
    match finish {
        "stop" => "end_turn",
        "tool_calls" => "tool_use",
        "length" => "max_tokens",
        "content_filter" => "refusal",
        other => other,
    }
}

/// Usage in Anthropic's shape: `input_tokens` EXCLUDES cache reads and writes.
fn usage_json(u: &Usage) -> Value {
    json!({"input_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens + u.cache_write_tokens),
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "output_tokens": u.completion_tokens})
}

fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

fn message_json(reply: &Resolved, id: &str, model: &str) -> Value {
    let mut content = Vec::new();
    if let Some(r) = &reply.reasoning {
        content.push(json!({"type": "thinking", "thinking": r,
            "signature": signatures::thinking_signature(r)}));
    }
    if let Some(p) = &reply.script.redacted_reasoning {
        content.push(json!({"type": "redacted_thinking", "data": signatures::redacted_data(p)}));
    }
    if !reply.text.is_empty() {
        content.push(json!({"type": "text", "text": reply.text}));
    }
    for c in &reply.tool_calls {
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments)}));
    }
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("id".into(), id.into());
    body.insert("type".into(), "message".into());
    body.insert("role".into(), "assistant".into());
    body.insert("content".into(), Value::Array(content));
    body.insert(
        "stop_reason".into(),
        stop_reason(&reply.finish_reason).into(),
    );
    body.insert("stop_sequence".into(), Value::Null);
    if let Some(u) = &reply.usage {
        let mut usage = usage_json(u);
        if let Some(o) = usage.as_object_mut() {
            o.insert(
                "cache_creation".into(),
                json!({"ephemeral_5m_input_tokens": u.cache_write_tokens, "ephemeral_1h_input_tokens": 0}),
            );
            o.insert("service_tier".into(), "standard".into());
        }
        body.insert("usage".into(), usage);
    }
    Value::Object(body)
}

fn event(name: &str, data: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut buf, data);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// Builds the frames; content deltas count toward the scripted cutoff.
struct Frames {
    frames: Vec<Frame>,
    content_sent: usize,
    limit: usize,
}

impl Frames {
    fn push(&mut self, name: &str, data: &Value) {
        self.frames.push(Frame::Data {
            bytes: event(name, data),
            content: false,
        });
    }

    /// Pushes a content delta; false once the cutoff is reached (nothing pushed).
    fn content(&mut self, data: &Value) -> bool {
        if self.content_sent >= self.limit {
            return false;
        }
        self.content_sent += 1;
        self.frames.push(Frame::Data {
            bytes: event("content_block_delta", data),
            content: true,
        });
        if self.content_sent == 1 {
            // Pings appear anywhere (recorded streams interleave them).
            self.push("ping", &json!({"type": "ping"}));
        }
        true
    }
}

fn stream_frames(reply: &Resolved, id: &str, model: &str) -> Vec<Frame> {
    let cutoff = reply.cutoff();
    let mut f = Frames {
        frames: Vec::new(),
        content_sent: 0,
        limit: cutoff.map_or(usize::MAX, |(n, _)| n),
    };
    let mut start_usage = reply.usage.as_ref().map(usage_json);
    if let Some(Value::Object(u)) = start_usage.as_mut() {
        u.insert("output_tokens".into(), 1.into());
    }
    let mut message = json!({"id": id, "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null, "stop_sequence": null});
    if let (Some(u), Some(m)) = (start_usage, message.as_object_mut()) {
        m.insert("usage".into(), u);
    }
    f.push(
        "message_start",
        &json!({"type": "message_start", "message": message}),
    );
    f.push("ping", &json!({"type": "ping"}));

    let mut index = 0usize;
    let mut cut = false;
    if let Some(r) = &reply.reasoning {
        f.push(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        );
        for piece in crate::openai_family::split_text(r, None) {
            if !f.content(&json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "thinking_delta", "thinking": piece}}))
            {
                cut = true;
                break;
            }
        }
        if !cut {
            f.push(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "signature_delta", "signature": signatures::thinking_signature(r)}}),
            );
            f.push(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
            index += 1;
        }
    }
    if !cut && let Some(p) = &reply.script.redacted_reasoning {
        // Redacted thinking comes whole in its content_block_start.
        f.push(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "redacted_thinking", "data": signatures::redacted_data(p)}}),
        );
        f.push(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
        index += 1;
    }
    if !cut && !reply.text.is_empty() {
        f.push(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "text", "text": ""}}),
        );
        for piece in reply.text_pieces() {
            if !f.content(&json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": piece}}))
            {
                cut = true;
                break;
            }
        }
        if !cut {
            f.push(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
            index += 1;
        }
    }
    if !cut {
        'calls: for c in &reply.tool_calls {
            f.push(
                "content_block_start",
                &json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}}),
            );
            f.push(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": ""}}),
            );
            for piece in native::arg_pieces(&c.arguments) {
                if !f.content(&json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}))
                {
                    cut = true;
                    break 'calls;
                }
            }
            f.push(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
            index += 1;
        }
    }
    if cut || cutoff.is_some() {
        match cutoff {
            Some((_, true)) => {
                let error = match &reply.script.stream_error_body {
                    Some(Value::Object(o)) if o.contains_key("error") => {
                        o.get("error").cloned().unwrap_or(Value::Null)
                    }
                    Some(other) => other.clone(),
                    None => json!({"type": "overloaded_error", "message": "Overloaded"}),
                };
                f.push("error", &json!({"type": "error", "error": error}));
            }
            _ => f.frames.push(Frame::Abort),
        }
        return f.frames;
    }
    let mut delta = json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason(&reply.finish_reason), "stop_sequence": null}});
    if let (Some(u), Some(d)) = (&reply.usage, delta.as_object_mut()) {
        // Cumulative; the newer API repeats the input counts here.
        d.insert("usage".into(), usage_json(u));
    }
    f.push("message_delta", &delta);
    f.push("message_stop", &json!({"type": "message_stop"}));
    f.frames
}
