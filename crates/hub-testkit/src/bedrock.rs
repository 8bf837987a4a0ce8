//! Amazon Bedrock Runtime mock (providers.md §4): `POST /model/{id}/converse`,
//! `/converse-stream` (binary `application/vnd.amazon.eventstream`, real CRCs written by
//! `aws-smithy-eventstream`) and `/invoke` (Titan / Cohere embeddings).
//!
//! Every request's SigV4 signature is VERIFIED: the mock recomputes it with `aws-sigv4` from the
//! received method, raw path, signed headers and body, with the configured secret
//! (`MockConfig::aws_secret_key`; access key id = `api_key`), and answers a mismatch with
//! Bedrock's 403 `InvalidSignatureException`. A Bedrock API key (`Authorization: Bearer <api_key>`)
//! is accepted too. Stream payloads carry the random `p` padding; usage only in `metadata`;
//! text blocks get no `contentBlockStart`; errors use `x-amzn-ErrorType` + `{"message"}` and no
//! retry hint (a scripted `retry_after` is not rendered: Bedrock sends none). Shapes follow
//! vercel/ai `packages/amazon-bedrock/src/__fixtures__/amazon-bedrock-{text,tool-call.1,reasoning}`
//! and hadrian `tests/fixtures/providers/bedrock/{converse_streaming,bad_request}.json`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::event_stream::{Header, HeaderValue as EsValue, Message};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use crate::Usage;
use crate::native::{self, NativeRequest, Resolved};
use crate::openai_family::{self as fam, Frame};
use crate::server::{Shared, approx_tokens, json_response, script_headers, sse_body};

use crate::signatures::{self, Block};

fn error_code(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => (
            "ValidationException",
            "The provided model identifier is invalid.",
        ),
        401 | 403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => (
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
        ),
        408 => (
            "ModelTimeoutException",
            "Model has timed out in processing the request.",
        ),
        424 => ("ModelErrorException", "The model returned an error."),
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        503 => (
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        _ => (
            "InternalServerException",
            "The server encountered an internal error.",
        ),
    }
}

fn error_response(status: u16, code: &str, message: &str) -> Response {
    let mut resp = json_response(status, &json!({"message": message}));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{code}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-amzn-errortype"), v);
    }
    resp
}

fn request_id(seq: u64) -> String {
    format!(
        "{:08x}-0000-4000-8000-{seq:012x}",
        seq.wrapping_mul(2_654_435_761)
    )
}

pub(crate) async fn handle(shared: &Arc<Shared>, req: NativeRequest<'_>) -> Response {
    let seq = req.seq;
    let mut resp = route(shared, &req).await;
    if let Ok(v) = HeaderValue::from_str(&request_id(seq)) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-amzn-requestid"), v);
    }
    resp
}

async fn route(shared: &Arc<Shared>, req: &NativeRequest<'_>) -> Response {
    if let Err(resp) = verify_auth(shared, req) {
        return *resp;
    }
    let path = req.uri.path();
    let Some((model_enc, op)) = path
        .strip_prefix("/model/")
        .and_then(|rest| rest.rsplit_once('/'))
    else {
        return error_response(404, "UnknownOperationException", "");
    };
    if req.method != Method::POST {
        return error_response(404, "UnknownOperationException", "");
    }
    let model = percent_decode_str(model_enc)
        .decode_utf8_lossy()
        .into_owned();
    if !req.body.is_object() {
        return error_response(400, "SerializationException", "Invalid JSON body.");
    }
    match op {
        "converse" => converse(shared, req, &model, false).await,
        "converse-stream" => converse(shared, req, &model, true).await,
        "invoke" => invoke(shared, req, &model).await,
        "count-tokens" => count_tokens(shared, req, &model).await,
        _ => error_response(404, "UnknownOperationException", ""),
    }
}

// ---------------------------------------------------------------------------------------------
// SigV4 verification

/// `20261128T025000Z` -> time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || !s.ends_with('Z') || s.as_bytes().get(8) != Some(&b'T') {
        return None;
    }
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(4, 6)?, n(6, 8)?);
    let (hh, mm, ss) = (n(9, 11)?, n(11, 13)?, n(13, 15)?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

fn deny(code: &str, message: &str) -> Box<Response> {
    Box::new(error_response(403, code, message))
}

fn verify_auth(shared: &Shared, req: &NativeRequest<'_>) -> Result<(), Box<Response>> {
    let Some(auth) = req.header("authorization") else {
        return Err(deny(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    if let Some(token) = auth.strip_prefix("Bearer ") {
        // Bedrock API key.
        return if token == shared.config.api_key {
            Ok(())
        } else {
            Err(deny(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ))
        };
    }
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(deny(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential' parameter.",
        ));
    };
    let field = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let (Some(credential), Some(signed_headers), Some(signature)) = (
        field("Credential"),
        field("SignedHeaders"),
        field("Signature"),
    ) else {
        return Err(deny(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature'.",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, _date, region, service, terminator] = scope.as_slice() else {
        return Err(deny(
            "IncompleteSignatureException",
            "Credential scope is malformed.",
        ));
    };
    if *key_id != shared.config.api_key {
        return Err(deny(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if *service != "bedrock" || *terminator != "aws4_request" {
        return Err(deny(
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.",
        ));
    }
    let Some(time) = req.header("x-amz-date").and_then(parse_amz_date) else {
        return Err(deny(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    let skew = SystemTime::now()
        .duration_since(time)
        .unwrap_or_else(|e| e.duration());
    if skew > Duration::from_secs(300) {
        return Err(deny("InvalidSignatureException", "Signature expired."));
    }
    let token = req.header("x-amz-security-token").map(str::to_owned);
    // Recompute over the headers the client says it signed (the signer adds date and token).
    let mut headers: Vec<(&str, &str)> = Vec::new();
    for name in signed_headers.split(';') {
        if name == "x-amz-date" || name == "x-amz-security-token" {
            continue;
        }
        match req.header(name) {
            Some(v) => headers.push((name, v)),
            None => {
                return Err(deny(
                    "InvalidSignatureException",
                    &format!("Signed header {name} is missing."),
                ));
            }
        }
    }
    let host = req.header("host").unwrap_or("localhost");
    let path_and_query = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path().to_owned(), |p| p.as_str().to_owned());
    let url = format!("http://{host}{path_and_query}");
    let identity: Identity = Credentials::new(
        shared.config.api_key.clone(),
        shared.config.aws_secret_key.clone(),
        token,
        None,
        "hub-mock",
    )
    .into();
    let computed = (|| {
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("bedrock")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .ok()?
            .into();
        let signable = SignableRequest::new(
            req.method.as_str(),
            url.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(req.bytes),
        )
        .ok()?;
        let (_, signature) = sign(signable, &params).ok()?.into_parts();
        Some(signature)
    })();
    if computed.as_deref() != Some(signature) {
        return Err(deny(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Converse

async fn scripted(shared: &Shared, model: &str) -> Result<Arc<crate::Script>, Response> {
    let script = shared.pick_script(Some(model));
    native::first_byte_delay(shared, &script).await;
    if let Some(err) = &script.error {
        let (code, message) = error_code(err.status);
        let mut resp = match &err.body {
            Some(b) if !b.is_null() => {
                let mut r = json_response(err.status, b);
                if let Ok(v) = HeaderValue::from_str(code) {
                    r.headers_mut()
                        .insert(HeaderName::from_static("x-amzn-errortype"), v);
                }
                r
            }
            _ => error_response(err.status, code, message),
        };
        script_headers(&script, resp.headers_mut());
        return Err(resp);
    }
    Ok(script)
}

fn validate(body: &Value) -> Result<&Vec<Value>, Box<Response>> {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(Box::new(error_response(
            400,
            "ValidationException",
            "1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null",
        )));
    };
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(Box::new(error_response(
                400,
                "ValidationException",
                &format!(
                    "1 validation error detected: Value '{role}' at 'messages.{}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]",
                    i + 1
                ),
            )));
        }
    }
    if messages
        .first()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        != Some("user")
    {
        return Err(Box::new(error_response(
            400,
            "ValidationException",
            "A conversation must start with a user message. Try again with a conversation that starts with a user message.",
        )));
    }
    Ok(messages)
}

/// `CountTokens`: `{"input":{"converse":{messages,system}}}` -> `{"inputTokens": N}` (N is the
/// script's `usage.prompt_tokens` when scripted, else the prompt estimate). Like Bedrock, it
/// takes bare foundation-model ids only: inference profiles are a `ValidationException`.
async fn count_tokens(shared: &Arc<Shared>, req: &NativeRequest<'_>, model: &str) -> Response {
    let Some(converse) = req.body.pointer("/input/converse") else {
        return error_response(
            400,
            "ValidationException",
            "1 validation error detected: Value null at 'input' failed to satisfy constraint: Member must not be null",
        );
    };
    if ["us.", "eu.", "apac.", "global."]
        .iter()
        .any(|p| model.starts_with(p))
    {
        return error_response(
            400,
            "ValidationException",
            "The provided model doesn't support counting tokens.",
        );
    }
    let messages = match validate(converse) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let script = match scripted(shared, model).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let chars = native::text_chars(&json!({"m": messages, "s": converse.get("system")}));
    let n = script
        .usage
        .as_ref()
        .map_or_else(|| approx_tokens(chars), |u| u.prompt_tokens);
    let mut resp = json_response(200, &json!({"inputTokens": n}));
    script_headers(&script, resp.headers_mut());
    resp
}

/// The thinking checks Claude on Bedrock applies (see [`signatures::check_history`]), over
/// Converse blocks: `reasoningContent.reasoningText` / `reasoningContent.redactedContent`.
fn check_thinking(body: &Value, messages: &[Value]) -> Result<(), signatures::Rejection> {
    let thinking_on = body
        .pointer("/additionalModelRequestFields/thinking/type")
        .and_then(Value::as_str)
        == Some("enabled");
    let turns: Vec<(usize, Vec<Block<'_>>)> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .map(|(i, m)| {
            let blocks = m
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|b| {
                    if let Some(rt) = b.pointer("/reasoningContent/reasoningText") {
                        let s = |k: &str| rt.get(k).and_then(Value::as_str).unwrap_or("");
                        Block::Thinking {
                            text: s("text"),
                            signature: s("signature"),
                        }
                    } else if let Some(d) = b.pointer("/reasoningContent/redactedContent") {
                        Block::Redacted {
                            data: d.as_str().unwrap_or(""),
                        }
                    } else if b.get("toolUse").is_some() {
                        Block::ToolUse
                    } else if b.get("text").is_some() {
                        Block::Other("text")
                    } else {
                        Block::Other("unknown")
                    }
                })
                .collect();
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
        "content_filter" => "content_filtered",
        other => other,
    }
}

/// Bedrock `TokenUsage`: `inputTokens` excludes cache reads and writes.
fn usage_json(u: &Usage) -> Value {
    let input = u
        .prompt_tokens
        .saturating_sub(u.cached_tokens + u.cache_write_tokens);
    json!({"inputTokens": input, "outputTokens": u.completion_tokens,
        "totalTokens": u.prompt_tokens + u.completion_tokens,
        "cacheReadInputTokens": u.cached_tokens, "cacheWriteInputTokens": u.cache_write_tokens,
        "cacheReadInputTokenCount": u.cached_tokens, "cacheWriteInputTokenCount": u.cache_write_tokens,
        "serverToolUsage": {}})
}

fn tool_input(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

async fn converse(
    shared: &Arc<Shared>,
    req: &NativeRequest<'_>,
    model: &str,
    stream: bool,
) -> Response {
    let body = &req.body;
    let messages = match validate(body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    if let Err(r) = check_thinking(body, messages) {
        // Bedrock passes the model's own complaint through (recorded via LiteLLM).
        return error_response(
            400,
            "ValidationException",
            &format!("The model returned the following errors: {}", r.message),
        );
    }
    let script = match scripted(shared, model).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let prompt_chars = native::text_chars(&json!({"m": messages, "s": body.get("system")}));
    let seq = req.seq;
    let reply = Resolved::new(shared.flavor, script, prompt_chars, |i| {
        format!("tooluse_mock{seq:08x}{i:02}")
    });
    let mut resp = if stream {
        let frames = stream_frames(&reply, seq);
        let mut resp = Response::new(sse_body(
            Arc::clone(shared),
            frames,
            reply.chunk_delay_ms(shared),
        ));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.amazon.eventstream"),
        );
        resp
    } else if reply.script.drop_after_chunks.is_some() {
        native::aborted_json()
    } else {
        let mut content = Vec::new();
        if let Some(r) = &reply.reasoning {
            content.push(json!({"reasoningContent": {"reasoningText": {
                "signature": signatures::thinking_signature(r), "text": r}}}));
        }
        if let Some(p) = &reply.script.redacted_reasoning {
            content.push(
                json!({"reasoningContent": {"redactedContent": signatures::redacted_data(p)}}),
            );
        }
        if !reply.text.is_empty() {
            content.push(json!({"text": reply.text}));
        }
        for c in &reply.tool_calls {
            content.push(json!({"toolUse": {"toolUseId": c.id, "name": c.name, "input": tool_input(&c.arguments)}}));
        }
        let mut v = json!({"metrics": {"latencyMs": 493},
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop_reason(&reply.finish_reason)});
        if let (Some(u), Some(o)) = (&reply.usage, v.as_object_mut()) {
            o.insert("usage".into(), usage_json(u));
        }
        json_response(200, &v)
    };
    script_headers(&reply.script, resp.headers_mut());
    resp
}

/// A random-looking, deterministic `p` padding (Bedrock pads every event payload).
fn padding(n: u64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let len = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59) as usize + 1;
    ALPHABET
        .iter()
        .cycle()
        .take(len)
        .map(|&b| char::from(b))
        .collect()
}

fn frame(headers: Vec<Header>, payload: &Value) -> Bytes {
    let msg = Message::new_from_parts(headers, Bytes::from(payload.to_string()));
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    // Writing to a Vec cannot fail for well-formed headers.
    let _ = write_message_to(&msg, &mut buf);
    Bytes::from(buf)
}

fn event_frame(event_type: &'static str, mut payload: Value, n: u64) -> Bytes {
    if let Some(o) = payload.as_object_mut() {
        o.insert("p".into(), padding(n).into());
    }
    frame(
        vec![
            Header::new(":event-type", EsValue::String(event_type.into())),
            Header::new(":content-type", EsValue::String("application/json".into())),
            Header::new(":message-type", EsValue::String("event".into())),
        ],
        &payload,
    )
}

fn exception_frame(kind: &str, payload: &Value) -> Bytes {
    frame(
        vec![
            Header::new(":exception-type", EsValue::String(kind.to_owned().into())),
            Header::new(":content-type", EsValue::String("application/json".into())),
            Header::new(":message-type", EsValue::String("exception".into())),
        ],
        payload,
    )
}

struct Frames {
    frames: Vec<Frame>,
    n: u64,
    content_sent: usize,
    limit: usize,
}

impl Frames {
    fn push(&mut self, event_type: &'static str, payload: Value) {
        self.n += 1;
        self.frames.push(Frame::Data {
            bytes: event_frame(event_type, payload, self.n),
            content: false,
        });
    }

    fn content(&mut self, payload: Value) -> bool {
        if self.content_sent >= self.limit {
            return false;
        }
        self.content_sent += 1;
        self.n += 1;
        self.frames.push(Frame::Data {
            bytes: event_frame("contentBlockDelta", payload, self.n),
            content: true,
        });
        true
    }
}

fn stream_frames(reply: &Resolved, seq: u64) -> Vec<Frame> {
    let cutoff = reply.cutoff();
    let mut f = Frames {
        frames: Vec::new(),
        n: seq * 1000,
        content_sent: 0,
        limit: cutoff.map_or(usize::MAX, |(n, _)| n),
    };
    f.push("messageStart", json!({"role": "assistant"}));
    let mut index = 0u64;
    let mut cut = false;
    if let Some(r) = &reply.reasoning {
        for piece in fam::split_text(r, None) {
            if !f.content(
                json!({"contentBlockIndex": index, "delta": {"reasoningContent": {"text": piece}}}),
            ) {
                cut = true;
                break;
            }
        }
        if !cut {
            f.push(
                "contentBlockDelta",
                json!({"contentBlockIndex": index,
                "delta": {"reasoningContent": {"signature": signatures::thinking_signature(r)}}}),
            );
            f.push("contentBlockStop", json!({"contentBlockIndex": index}));
            index += 1;
        }
    }
    if !cut && let Some(p) = &reply.script.redacted_reasoning {
        f.push(
            "contentBlockDelta",
            json!({"contentBlockIndex": index,
            "delta": {"reasoningContent": {"redactedContent": signatures::redacted_data(p)}}}),
        );
        f.push("contentBlockStop", json!({"contentBlockIndex": index}));
        index += 1;
    }
    if !cut && !reply.text.is_empty() {
        // Text blocks get no contentBlockStart.
        for piece in reply.text_pieces() {
            if !f.content(json!({"contentBlockIndex": index, "delta": {"text": piece}})) {
                cut = true;
                break;
            }
        }
        if !cut {
            f.push("contentBlockStop", json!({"contentBlockIndex": index}));
            index += 1;
        }
    }
    if !cut {
        'calls: for c in &reply.tool_calls {
            f.push(
                "contentBlockStart",
                json!({"contentBlockIndex": index,
                "start": {"toolUse": {"toolUseId": c.id, "name": c.name}}}),
            );
            for piece in native::arg_pieces(&c.arguments) {
                if !f.content(
                    json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}),
                ) {
                    cut = true;
                    break 'calls;
                }
            }
            f.push("contentBlockStop", json!({"contentBlockIndex": index}));
            index += 1;
        }
    }
    if cut || cutoff.is_some() {
        match cutoff {
            Some((_, true)) => {
                let (kind, payload) = match &reply.script.stream_error_body {
                    Some(b) => (
                        "modelStreamErrorException",
                        b.get("error").cloned().unwrap_or_else(|| b.clone()),
                    ),
                    None => (
                        "modelStreamErrorException",
                        json!({"message": "Model Stream Error", "originalStatusCode": 500,
                            "originalMessage": "The model stream failed."}),
                    ),
                };
                f.frames.push(Frame::Data {
                    bytes: exception_frame(kind, &payload),
                    content: false,
                });
            }
            _ => f.frames.push(Frame::Abort),
        }
        return f.frames;
    }
    f.push(
        "messageStop",
        json!({"stopReason": stop_reason(&reply.finish_reason)}),
    );
    let mut meta = json!({"metrics": {"latencyMs": 493}});
    if let (Some(u), Some(o)) = (&reply.usage, meta.as_object_mut()) {
        // Usage arrives only here.
        o.insert("usage".into(), usage_json(u));
    }
    f.push("metadata", meta);
    f.frames
}

// ---------------------------------------------------------------------------------------------
// InvokeModel (embeddings)

fn vector(text: &str, dims: usize) -> Value {
    Value::Array(
        fam::embedding_vector(text, dims)
            .into_iter()
            .map(|x| Value::from(f64::from(x)))
            .collect(),
    )
}

/// Nova Canvas / Titan Image Generator v2 `TEXT_IMAGE` -> `{"images": [base64, ...]}`.
fn images_response(script: &crate::Script, body: &Value) -> Response {
    if body.get("taskType").and_then(Value::as_str) != Some("TEXT_IMAGE") {
        return error_response(
            400,
            "ValidationException",
            "Malformed input request: #/taskType: TEXT_IMAGE is the only task type served here, please reformat your input and try again.",
        );
    }
    let text = body
        .pointer("/textToImageParams/text")
        .and_then(Value::as_str)
        .unwrap_or("");
    if text.is_empty() {
        return error_response(
            400,
            "ValidationException",
            "Malformed input request: #/textToImageParams: required key [text] not found, please reformat your input and try again.",
        );
    }
    let n = body
        .pointer("/imageGenerationConfig/numberOfImages")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if !(1..=5).contains(&n) {
        return error_response(
            400,
            "ValidationException",
            &format!(
                "Malformed input request: #/imageGenerationConfig/numberOfImages: {n} is not in [1, 5], please reformat your input and try again."
            ),
        );
    }
    let b64 = script.image_b64.as_deref().unwrap_or(fam::TINY_PNG_B64);
    let images: Vec<&str> = (0..n).map(|_| b64).collect();
    json_response(200, &json!({"images": images}))
}

async fn invoke(shared: &Arc<Shared>, req: &NativeRequest<'_>, model: &str) -> Response {
    let body = &req.body;
    let script = match scripted(shared, model).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let dims_of = |key: &str| {
        script
            .embedding_dims
            .or_else(|| {
                body.get(key)
                    .and_then(Value::as_u64)
                    .and_then(|d| usize::try_from(d).ok())
            })
            .unwrap_or(8)
    };
    if model.starts_with("amazon.nova-canvas") || model.starts_with("amazon.titan-image-generator")
    {
        let mut resp = images_response(&script, body);
        script_headers(&script, resp.headers_mut());
        return resp;
    }
    let (v, tokens) = if model.starts_with("amazon.titan-embed") {
        let Some(text) = body.get("inputText").and_then(Value::as_str) else {
            return error_response(
                400,
                "ValidationException",
                "Malformed input request: #: required key [inputText] not found, please reformat your input and try again.",
            );
        };
        let tokens = approx_tokens(text.chars().count());
        let e = vector(text, dims_of("dimensions"));
        (
            json!({"embedding": e.clone(), "inputTextTokenCount": tokens, "embeddingsByType": {"float": e}}),
            tokens,
        )
    } else if model.starts_with("cohere.embed") {
        let Some(texts) = body.get("texts").and_then(Value::as_array) else {
            return error_response(
                400,
                "ValidationException",
                "Malformed input request: #: required key [texts] not found, please reformat your input and try again.",
            );
        };
        let dims = dims_of("output_dimension");
        let texts: Vec<&str> = texts.iter().filter_map(Value::as_str).collect();
        let tokens = texts.iter().map(|t| approx_tokens(t.chars().count())).sum();
        let embeddings: Vec<Value> = texts.iter().map(|t| vector(t, dims)).collect();
        (
            json!({"id": format!("mock-{}", req.seq), "response_type": "embeddings_floats",
                "embeddings": embeddings, "texts": texts}),
            tokens,
        )
    } else {
        return error_response(
            400,
            "ValidationException",
            "The provided model doesn't support on-demand throughput in this mock.",
        );
    };
    let mut resp = json_response(200, &v);
    resp.headers_mut().insert(
        HeaderName::from_static("x-amzn-bedrock-input-token-count"),
        HeaderValue::from(tokens),
    );
    script_headers(&script, resp.headers_mut());
    resp
}
