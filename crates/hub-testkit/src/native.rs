//! Plumbing shared by the native flavors (Anthropic, Gemini, Bedrock): the request as received,
//! dispatch, and the script resolved into one reply with the same defaults as the OpenAI family.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use crate::openai_family::{self as fam};
use crate::server::{ABORT_FLUSH, Shared, approx_tokens};
use crate::{Flavor, Script, ToolCall, Usage};

/// One API request to a native flavor, as received.
pub(crate) struct NativeRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// Raw body bytes (Bedrock verifies its signature over them).
    pub bytes: &'a Bytes,
    /// The body parsed as JSON (`Null` if empty or not JSON).
    pub body: Value,
    pub seq: u64,
}

impl NativeRequest<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Value of a query parameter (first occurrence, not percent-decoded beyond `%3A`-free ids).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.uri.query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

pub(crate) async fn handle(shared: &Arc<Shared>, req: NativeRequest<'_>) -> Response {
    match shared.flavor {
        Flavor::Anthropic => crate::anthropic::handle(shared, req).await,
        Flavor::Gemini => crate::gemini::handle(shared, req).await,
        Flavor::Bedrock => crate::bedrock::handle(shared, req).await,
        _ => {
            crate::server::json_response(500, &serde_json::json!({"error": "not a native flavor"}))
        }
    }
}

/// A script resolved into what the "model" answers.
pub(crate) struct Resolved {
    pub script: Arc<Script>,
    pub text: String,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// None when the script omits usage.
    pub usage: Option<Usage>,
    /// OpenAI-vocabulary finish reason (`stop`, `tool_calls`, `length`, ...), or the script's own.
    pub finish_reason: String,
}

impl Resolved {
    /// Resolves `script` with the family's defaults: default text, usage from `prompt_chars`.
    pub fn new(
        flavor: Flavor,
        script: Arc<Script>,
        prompt_chars: usize,
        tool_id: impl Fn(usize) -> String,
    ) -> Resolved {
        let tool_calls: Vec<ToolCall> = script
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| ToolCall {
                id: if c.id.is_empty() {
                    tool_id(i)
                } else {
                    c.id.clone()
                },
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect();
        let text = match &script.text {
            Some(t) => t.clone(),
            None if !tool_calls.is_empty() => String::new(),
            None => flavor.default_text().to_owned(),
        };
        let reasoning = script.reasoning.clone();
        let usage = if script.omit_usage {
            None
        } else if let Some(u) = &script.usage {
            Some(u.clone())
        } else {
            let reasoning_tokens = reasoning.as_deref().map_or(0, fam::word_count);
            let tool_tokens: u64 = tool_calls
                .iter()
                .map(|c| approx_tokens(c.arguments.chars().count()))
                .sum();
            let completion = (fam::word_count(&text) + reasoning_tokens + tool_tokens).max(1);
            Some(
                Usage::new(approx_tokens(prompt_chars), completion)
                    .with_reasoning(reasoning_tokens),
            )
        };
        let finish_reason = match &script.finish_reason {
            Some(f) => f.clone(),
            None if !tool_calls.is_empty() => "tool_calls".to_owned(),
            None => "stop".to_owned(),
        };
        Resolved {
            script,
            text,
            reasoning,
            tool_calls,
            usage,
            finish_reason,
        }
    }

    pub fn text_pieces(&self) -> Vec<&str> {
        fam::split_text(&self.text, self.script.chunks)
    }

    pub fn chunk_delay_ms(&self, shared: &Shared) -> u64 {
        self.script
            .chunk_delay_ms
            .unwrap_or(shared.config.default_chunk_delay_ms)
    }

    /// Where the stream stops early: (content chunks allowed, true = error event / false = drop).
    pub fn cutoff(&self) -> Option<(usize, bool)> {
        match (
            self.script.drop_after_chunks,
            self.script.error_after_chunks,
        ) {
            (Some(n), _) => Some((n, false)),
            (None, Some(n)) => Some((n, true)),
            (None, None) => None,
        }
    }
}

/// Arguments of a tool call split into stream pieces (at most 4, like the family).
pub(crate) fn arg_pieces(arguments: &str) -> Vec<&str> {
    let parts = arguments.chars().count().clamp(1, 4);
    fam::split_text(arguments, Some(parts))
}

/// Sleeps the scripted first-byte delay.
pub(crate) async fn first_byte_delay(shared: &Shared, script: &Script) {
    let delay = script
        .first_byte_delay_ms
        .unwrap_or(shared.config.default_first_byte_delay_ms);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

/// A non-streaming body that is cut after the headers (`drop_after_chunks` on a JSON call).
pub(crate) fn aborted_json() -> Response {
    let aborted = futures::stream::once(async {
        tokio::time::sleep(ABORT_FLUSH).await;
        Err::<Bytes, std::io::Error>(std::io::Error::other("mock: scripted drop"))
    });
    let mut resp = Response::new(Body::from_stream(aborted));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Text length of every `"text"` string anywhere in a JSON value (prompt size estimate).
pub(crate) fn text_chars(v: &Value) -> usize {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                ("text" | "content" | "system", Value::String(s)) => s.chars().count(),
                (_, other) => text_chars(other),
            })
            .sum(),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        _ => 0,
    }
}
