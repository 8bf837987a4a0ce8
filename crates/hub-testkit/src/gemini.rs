//! Gemini API mock (providers.md §5): `POST /v1beta/models/{model}:{generateContent,
//! streamGenerateContent,embedContent,batchEmbedContents}`.
//!
//! Faithful to vercel/ai `packages/google/src/__fixtures__/google-{text,tool-call,429-retry-info,
//! image-gemini-3.1-flash-image}` and the simonw/llm-gemini#97 SSE capture: key by
//! `x-goog-api-key` header or `?key=`; `?alt=sse` streams `data:` chunks (no `event:`, no
//! `[DONE]`, EOF after the chunk with `finishReason`), without it one JSON array; every chunk
//! carries cumulative `usageMetadata`; `candidatesTokenCount` excludes thoughts, `totalTokenCount`
//! includes them; function calls arrive whole with `finishReason: "STOP"`; thought parts only
//! when `thinkingConfig.includeThoughts`; errors are google.rpc.Status with the retry hint in
//! `RetryInfo.retryDelay` (a scripted `retry_after` goes there, not in a header).

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::Usage;
use crate::native::{self, NativeRequest, Resolved};
use crate::openai_family::{self as fam, Frame, TINY_PNG_B64};
use crate::server::{Shared, json_response, script_headers, sse_body};

fn rpc_status(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("INVALID_ARGUMENT", "Request contains an invalid argument."),
        401 => (
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        ),
        403 => ("PERMISSION_DENIED", "The caller does not have permission"),
        404 => ("NOT_FOUND", "Requested entity was not found."),
        429 => (
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
        ),
        503 => (
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        ),
        504 => (
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
        ),
        _ => (
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        ),
    }
}

fn error_body(status: u16, message: Option<&str>, retry_after: Option<u64>) -> Value {
    let (rpc, default) = rpc_status(status);
    let mut err = json!({"code": status, "message": message.unwrap_or(default), "status": rpc});
    let mut details = Vec::new();
    if status == 429 {
        details.push(json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]}));
    }
    if let Some(secs) = retry_after {
        details.push(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s")}));
    }
    if !details.is_empty()
        && let Some(o) = err.as_object_mut()
    {
        o.insert("details".into(), Value::Array(details));
    }
    json!({"error": err})
}

fn error_response(status: u16, message: Option<&str>) -> Response {
    json_response(status, &error_body(status, message, None))
}

fn bad_key() -> Response {
    json_response(
        400,
        &json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]}}),
    )
}

pub(crate) async fn handle(shared: &Arc<Shared>, req: NativeRequest<'_>) -> Response {
    let path = req.uri.path().trim_end_matches('/');
    let Some(rest) = path.strip_prefix("/v1beta/models/") else {
        return error_response(404, Some(&format!("Method not found: {path}")));
    };
    let Some((model, method)) = rest.rsplit_once(':') else {
        return error_response(404, Some(&format!("Method not found: {path}")));
    };
    let model = model.strip_prefix("models/").unwrap_or(model);
    let key = req
        .header("x-goog-api-key")
        .or_else(|| req.query_param("key"));
    match key {
        None => {
            return error_response(
                403,
                Some(
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                ),
            );
        }
        Some(k) if k != shared.config.api_key => return bad_key(),
        Some(_) => {}
    }
    if req.method != Method::POST {
        return error_response(404, Some(&format!("Method not found: {path}")));
    }
    if !req.body.is_object() {
        return error_response(400, Some("Invalid JSON payload received."));
    }
    match method {
        "generateContent" => generate(shared, &req, model, None).await,
        "streamGenerateContent" => {
            let sse = req.query_param("alt") == Some("sse");
            generate(shared, &req, model, Some(sse)).await
        }
        "embedContent" | "batchEmbedContents" => embed(shared, &req, model, method).await,
        "countTokens" => count_tokens(shared, &req, model).await,
        _ => error_response(404, Some(&format!("Method not found: {method}"))),
    }
}

/// `models/{model}:countTokens` over `contents` or a whole `generateContentRequest` ->
/// `{"totalTokens": N, "promptTokensDetails": [...]}`. N is the script's `usage.prompt_tokens`
/// when scripted, else the prompt estimate.
async fn count_tokens(shared: &Arc<Shared>, req: &NativeRequest<'_>, model: &str) -> Response {
    let body = req.body.get("generateContentRequest").unwrap_or(&req.body);
    let contents = match validate(body) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let script = match scripted_error(shared, model).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let chars = native::text_chars(&json!({"c": contents, "s": body.get("systemInstruction")}));
    let n = script
        .usage
        .as_ref()
        .map_or_else(|| crate::server::approx_tokens(chars), |u| u.prompt_tokens);
    let mut resp = json_response(
        200,
        &json!({"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]}),
    );
    script_headers(&script, resp.headers_mut());
    resp
}

async fn scripted_error(shared: &Shared, model: &str) -> Result<Arc<crate::Script>, Response> {
    let script = shared.pick_script(Some(model));
    native::first_byte_delay(shared, &script).await;
    if let Some(err) = &script.error {
        let mut resp = match &err.body {
            Some(b) if !b.is_null() => json_response(err.status, b),
            _ => json_response(err.status, &error_body(err.status, None, err.retry_after)),
        };
        script_headers(&script, resp.headers_mut());
        return Err(resp);
    }
    Ok(script)
}

fn validate(body: &Value) -> Result<&Vec<Value>, Box<Response>> {
    let Some(contents) = body.get("contents").and_then(Value::as_array) else {
        return Err(Box::new(error_response(
            400,
            Some("* GenerateContentRequest.contents: contents is not specified\n"),
        )));
    };
    for c in contents {
        let role = c.get("role").and_then(Value::as_str).unwrap_or("user");
        if role != "user" && role != "model" {
            return Err(Box::new(error_response(
                400,
                Some("Please use a valid role: user, model."),
            )));
        }
        for p in c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(fr) = p.get("functionResponse")
                && fr
                    .get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                return Err(Box::new(error_response(
                    400,
                    Some(
                        "* GenerateContentRequest.contents.parts.function_response.name: Name cannot be empty.\n",
                    ),
                )));
            }
        }
    }
    Ok(contents)
}

/// `thoughtSignature` checks: a signature on a `functionCall` part must be the one the mock issued
/// for that call; Gemini 3 models also reject function calls of the current turn (the model turns
/// after the last user message that is not only function responses) that come back without one.
fn check_signatures(contents: &[Value], model: &str) -> Result<(), String> {
    let current_turn_start = contents
        .iter()
        .rposition(|c| {
            c.get("role").and_then(Value::as_str).unwrap_or("user") == "user"
                && c.get("parts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|p| p.get("functionResponse").is_none())
        })
        .unwrap_or(0);
    let strict = model.contains("gemini-3");
    let mut position = 0usize;
    for (i, c) in contents.iter().enumerate() {
        if c.get("role").and_then(Value::as_str) != Some("model") {
            continue;
        }
        for p in c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(call) = p.get("functionCall") else {
                continue;
            };
            position += 1;
            let name = call.get("name").and_then(Value::as_str).unwrap_or("");
            let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
            match p.get("thoughtSignature").and_then(Value::as_str) {
                Some(sig) if sig != crate::signatures::call_signature(name, &args) => {
                    return Err("Thought signature is not valid.".to_string());
                }
                None if strict && i > current_turn_start => {
                    return Err(format!(
                        "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{name}` , position {position}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn finish_reason(f: &str) -> String {
    match f {
        "stop" | "tool_calls" => "STOP".to_owned(),
        "length" => "MAX_TOKENS".to_owned(),
        "content_filter" => "SAFETY".to_owned(),
        other => other.to_ascii_uppercase(),
    }
}

/// `usageMetadata` for `candidates` + `thoughts` tokens so far (the truth at the end).
fn usage_metadata(u: &Usage, candidates: u64, thoughts: u64, image: bool) -> Value {
    let mut m = Map::new();
    m.insert("promptTokenCount".into(), u.prompt_tokens.into());
    m.insert("candidatesTokenCount".into(), candidates.into());
    m.insert(
        "totalTokenCount".into(),
        (u.prompt_tokens + candidates + thoughts).into(),
    );
    m.insert(
        "promptTokensDetails".into(),
        json!([{"modality": "TEXT", "tokenCount": u.prompt_tokens}]),
    );
    if u.cached_tokens > 0 {
        m.insert("cachedContentTokenCount".into(), u.cached_tokens.into());
        m.insert(
            "cacheTokensDetails".into(),
            json!([{"modality": "TEXT", "tokenCount": u.cached_tokens}]),
        );
    }
    if thoughts > 0 {
        m.insert("thoughtsTokenCount".into(), thoughts.into());
    }
    if image {
        m.insert(
            "candidatesTokensDetails".into(),
            json!([{"modality": "IMAGE", "tokenCount": candidates}]),
        );
    }
    Value::Object(m)
}

struct Gen<'a> {
    reply: Resolved,
    model: &'a str,
    response_id: String,
    include_thoughts: bool,
    image: bool,
}

impl Gen<'_> {
    fn chunk(&self, parts: Vec<Value>, finish: bool, usage: Option<Value>) -> Value {
        let mut cand = Map::new();
        cand.insert("content".into(), json!({"parts": parts, "role": "model"}));
        if finish {
            cand.insert(
                "finishReason".into(),
                finish_reason(&self.reply.finish_reason).into(),
            );
            if !self.reply.tool_calls.is_empty() {
                cand.insert(
                    "finishMessage".into(),
                    "Model generated function call(s).".into(),
                );
            }
        }
        cand.insert("index".into(), 0.into());
        let mut body = Map::new();
        body.insert("candidates".into(), json!([Value::Object(cand)]));
        if let Some(u) = usage {
            body.insert("usageMetadata".into(), u);
        }
        body.insert("modelVersion".into(), self.model.into());
        body.insert("responseId".into(), self.response_id.as_str().into());
        Value::Object(body)
    }

    fn call_parts(&self) -> Vec<Value> {
        self.reply
            .tool_calls
            .iter()
            .map(|c| {
                let args = serde_json::from_str::<Value>(&c.arguments)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                let sig = crate::signatures::call_signature(&c.name, &args);
                json!({"functionCall": {"name": c.name, "args": args}, "thoughtSignature": sig})
            })
            .collect()
    }

    fn truth(&self) -> Option<(Usage, u64, u64)> {
        self.reply.usage.as_ref().map(|u| {
            let thoughts = u.reasoning_tokens;
            (
                u.clone(),
                u.completion_tokens.saturating_sub(thoughts),
                thoughts,
            )
        })
    }

    fn whole(&self) -> Value {
        let mut parts = Vec::new();
        if self.include_thoughts
            && let Some(r) = &self.reply.reasoning
        {
            parts.push(json!({"text": r, "thought": true}));
        }
        if self.image {
            let b64 = self
                .reply
                .script
                .image_b64
                .as_deref()
                .unwrap_or(TINY_PNG_B64);
            parts.push(json!({"inlineData": {"mimeType": "image/png", "data": b64}}));
        }
        if !self.reply.text.is_empty() {
            parts.push(json!({"text": self.reply.text}));
        }
        parts.extend(self.call_parts());
        let usage = self
            .truth()
            .map(|(u, c, t)| usage_metadata(&u, c, t, self.image));
        self.chunk(parts, true, usage)
    }

    /// The stream's chunks: (JSON, carries content).
    fn chunks(&self) -> Vec<(Value, bool)> {
        let truth = self.truth();
        let mut out = Vec::new();
        let mut sent_words = 0u64;
        let mut thought_words = 0u64;
        let cumulative = |cand: u64, th: u64| {
            truth
                .as_ref()
                .map(|(u, c, t)| usage_metadata(u, cand.min(*c), th.min(*t), false))
        };
        if self.include_thoughts
            && let Some(r) = &self.reply.reasoning
        {
            for piece in fam::split_text(r, None) {
                thought_words += fam::word_count(piece);
                out.push((
                    self.chunk(
                        vec![json!({"text": piece, "thought": true})],
                        false,
                        cumulative(0, thought_words),
                    ),
                    true,
                ));
            }
        }
        for piece in self.reply.text_pieces() {
            sent_words += fam::word_count(piece);
            out.push((
                self.chunk(
                    vec![json!({"text": piece})],
                    false,
                    cumulative(sent_words, thought_words),
                ),
                true,
            ));
        }
        let calls = self.call_parts();
        let final_usage = truth
            .as_ref()
            .map(|(u, c, t)| usage_metadata(u, *c, *t, false));
        if calls.is_empty() {
            // The final chunk often carries an empty text part.
            out.push((
                self.chunk(vec![json!({"text": ""})], true, final_usage),
                false,
            ));
        } else {
            // Function calls arrive whole, in the chunk with the finish reason.
            out.push((self.chunk(calls, true, final_usage), true));
        }
        out
    }
}

async fn generate(
    shared: &Arc<Shared>,
    req: &NativeRequest<'_>,
    model: &str,
    stream: Option<bool>,
) -> Response {
    let body = &req.body;
    let contents = match validate(body) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    if let Err(message) = check_signatures(contents, model) {
        return error_response(400, Some(&message));
    }
    let script = match scripted_error(shared, model).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let prompt_chars =
        native::text_chars(&json!({"c": contents, "s": body.get("systemInstruction")}));
    let seq = req.seq;
    let image = body
        .pointer("/generationConfig/responseModalities")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|x| x.as_str() == Some("IMAGE")));
    let include_thoughts = body
        .pointer("/generationConfig/thinkingConfig/includeThoughts")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut reply = Resolved::new(shared.flavor, script, prompt_chars, |_| String::new());
    if image && reply.script.text.is_none() {
        reply.text = String::new();
    }
    let gen_ = Gen {
        reply,
        model,
        response_id: format!("mockResp{seq:012x}"),
        include_thoughts,
        image,
    };
    let mut resp = match stream {
        None if gen_.reply.script.drop_after_chunks.is_some() => native::aborted_json(),
        None => json_response(200, &gen_.whole()),
        Some(sse) => stream_response(shared, &gen_, sse),
    };
    script_headers(&gen_.reply.script, resp.headers_mut());
    resp
}

fn stream_error_object(reply: &Resolved) -> Value {
    match &reply.script.stream_error_body {
        Some(Value::Object(o)) if o.contains_key("error") => Value::Object(o.clone()),
        Some(other) => json!({"error": other}),
        None => error_body(500, None, None),
    }
}

fn stream_response(shared: &Arc<Shared>, g: &Gen<'_>, sse: bool) -> Response {
    let chunks = g.chunks();
    let cutoff = g.reply.cutoff();
    let limit = cutoff.map_or(usize::MAX, |(n, _)| n);
    let mut frames = Vec::new();
    let mut content_sent = 0usize;
    let mut first = true;
    let mut push = |frames: &mut Vec<Frame>, v: &Value, content: bool| {
        let bytes = if sse {
            fam::data_bytes(v)
        } else {
            // One JSON array streamed element by element: `[{…}\n,\r\n{…}\n]`.
            let mut buf = Vec::new();
            buf.extend_from_slice(if first { b"[" } else { b",\r\n" });
            let _ = serde_json::to_writer(&mut buf, v);
            buf.push(b'\n');
            Bytes::from(buf)
        };
        first = false;
        frames.push(Frame::Data { bytes, content });
    };
    for (chunk, content) in chunks {
        if content && content_sent >= limit {
            break;
        }
        if content {
            content_sent += 1;
        }
        push(&mut frames, &chunk, content);
    }
    match cutoff {
        Some((_, true)) => {
            let err = stream_error_object(&g.reply);
            push(&mut frames, &err, false);
        }
        Some((_, false)) => frames.push(Frame::Abort),
        None => {}
    }
    if !sse && !matches!(cutoff, Some((_, false))) {
        frames.push(Frame::Data {
            bytes: Bytes::from_static(b"]"),
            content: false,
        });
    }
    let mut resp = Response::new(sse_body(
        Arc::clone(shared),
        frames,
        g.reply.chunk_delay_ms(shared),
    ));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if sse {
            "text/event-stream"
        } else {
            "application/json; charset=UTF-8"
        }),
    );
    resp
}

async fn embed(
    shared: &Arc<Shared>,
    req: &NativeRequest<'_>,
    model: &str,
    method: &str,
) -> Response {
    let body = &req.body;
    let requests: Vec<Value> = if method == "embedContent" {
        vec![body.clone()]
    } else {
        match body.get("requests").and_then(Value::as_array) {
            Some(r) if !r.is_empty() => r.clone(),
            _ => {
                return error_response(
                    400,
                    Some("* BatchEmbedContentsRequest.requests: requests is not specified\n"),
                );
            }
        }
    };
    if requests.len() > 100 {
        return error_response(
            400,
            Some(
                "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n",
            ),
        );
    }
    let script = match scripted_error(shared, model).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let mut out = Vec::with_capacity(requests.len());
    for r in &requests {
        let Some(parts) = r.pointer("/content/parts").and_then(Value::as_array) else {
            return error_response(
                400,
                Some("* EmbedContentRequest.content: content is not specified\n"),
            );
        };
        let text: String = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        let dims = script
            .embedding_dims
            .or_else(|| {
                r.get("outputDimensionality")
                    .and_then(Value::as_u64)
                    .and_then(|d| usize::try_from(d).ok())
            })
            .unwrap_or(8);
        let values: Vec<Value> = fam::embedding_vector(&text, dims)
            .into_iter()
            .map(|x| Value::from(f64::from(x)))
            .collect();
        out.push(json!({"values": values}));
    }
    let v = if method == "embedContent" {
        json!({"embedding": out.into_iter().next().unwrap_or(Value::Null)})
    } else {
        json!({"embeddings": out})
    };
    let mut resp = json_response(200, &v);
    script_headers(&script, resp.headers_mut());
    resp
}
