//! Per-request behaviour of a mock: what to answer, how to stream it, how to fail.
//!
//! A [`Script`] is plain serde data so black-box tests can post it as JSON to
//! `POST /__mock/scripts`. Every field is optional; an empty script gives the flavor's default
//! reply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Normalised token counts ("the truth"); each flavor renders them in its own wire shape.
///
/// Semantics follow OpenAI: `prompt_tokens` includes `cached_tokens` and `cache_write_tokens`,
/// `completion_tokens` includes `reasoning_tokens`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// OpenRouter `usage.cost` in credits (USD). When absent OpenRouter renders a deterministic
    /// price (0.15 $/M prompt, 0.60 $/M completion). Ignored by other flavors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        }
    }

    #[must_use]
    pub fn with_cached(mut self, cached_tokens: u64) -> Usage {
        self.cached_tokens = cached_tokens;
        self
    }

    #[must_use]
    pub fn with_cache_write(mut self, cache_write_tokens: u64) -> Usage {
        self.cache_write_tokens = cache_write_tokens;
        self
    }

    #[must_use]
    pub fn with_reasoning(mut self, reasoning_tokens: u64) -> Usage {
        self.reasoning_tokens = reasoning_tokens;
        self
    }

    #[must_use]
    pub fn with_cost(mut self, cost: f64) -> Usage {
        self.cost = Some(cost);
        self
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// One function call the mock "model" makes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolCall {
    /// Call id; when empty the mock generates `call_mock_<n>`.
    pub id: String,
    pub name: String,
    /// Arguments as a JSON *string*, exactly as on the wire.
    pub arguments: String,
}

impl ToolCall {
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }
}

/// An HTTP error returned before any response byte.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScriptError {
    pub status: u16,
    /// Full JSON body. When absent (or null) the flavor's canonical error body for `status` is
    /// used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Seconds, sent as the `Retry-After` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// What the mock does for one request. See the crate README for the JSON schema.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Script {
    /// Reply text. Default: `Hello from mock <flavor>.`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Number of stream pieces the text is split into (default: one per word).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<usize>,
    /// Reasoning text, rendered per flavor (not rendered by OpenAI, only counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// A redacted (encrypted) reasoning block after the reasoning: Anthropic `redacted_thinking`,
    /// Bedrock `redactedContent`. The mock wraps this payload in data it can verify later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redacted_reasoning: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Normalised usage. Default: prompt = ceil(chars of messages / 4), completion = words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Send no usage at all (Poe does this in reality).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub omit_usage: bool,
    /// Override of the finish reason (`stop` / `tool_calls` by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Delay before the response (headers included). Default: the server's default latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_delay_ms: Option<u64>,
    /// Sleep between stream chunks. Default: the server's default chunk delay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ScriptError>,
    /// Write N content chunks then abort the connection (no `[DONE]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_after_chunks: Option<usize>,
    /// Write N content chunks then the flavor's mid-stream error event, then end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_after_chunks: Option<usize>,
    /// Write N content chunks then send nothing more, holding the connection open (OpenAI
    /// family streams): a stream stalled upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_after_chunks: Option<usize>,
    /// The error object of the mid-stream error event (`{"error": X}` is unwrapped to `X`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_error_body: Option<Value>,
    /// Embedding vector length (default: the request's `dimensions`, else 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_dims: Option<usize>,
    /// Image payload returned as `b64_json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_b64: Option<String>,
    /// Image URL returned as `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// Extra response headers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl Script {
    /// An empty script: the flavor's default reply.
    pub fn new() -> Script {
        Script::default()
    }

    /// A reply with the given text.
    pub fn text(text: impl Into<String>) -> Script {
        Script {
            text: Some(text.into()),
            ..Script::default()
        }
    }

    /// An error reply with the flavor's canonical body for `status`.
    pub fn error(status: u16) -> Script {
        Script {
            error: Some(ScriptError {
                status,
                body: None,
                retry_after: None,
            }),
            ..Script::default()
        }
    }

    /// A reply that calls the given tools.
    pub fn tool_calls(calls: impl IntoIterator<Item = ToolCall>) -> Script {
        Script::new().with_tool_calls(calls)
    }

    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Script {
        self.text = Some(text.into());
        self
    }

    #[must_use]
    pub fn with_chunks(mut self, chunks: usize) -> Script {
        self.chunks = Some(chunks);
        self
    }

    #[must_use]
    pub fn with_reasoning(mut self, reasoning: impl Into<String>) -> Script {
        self.reasoning = Some(reasoning.into());
        self
    }

    #[must_use]
    pub fn with_redacted_reasoning(mut self, payload: impl Into<String>) -> Script {
        self.redacted_reasoning = Some(payload.into());
        self
    }

    #[must_use]
    pub fn with_tool_calls(mut self, calls: impl IntoIterator<Item = ToolCall>) -> Script {
        self.tool_calls.extend(calls);
        self
    }

    #[must_use]
    pub fn with_tool_call(
        mut self,
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Script {
        self.tool_calls.push(ToolCall::new(id, name, arguments));
        self
    }

    #[must_use]
    pub fn with_usage(mut self, usage: Usage) -> Script {
        self.usage = Some(usage);
        self
    }

    #[must_use]
    pub fn without_usage(mut self) -> Script {
        self.omit_usage = true;
        self
    }

    #[must_use]
    pub fn with_finish_reason(mut self, finish_reason: impl Into<String>) -> Script {
        self.finish_reason = Some(finish_reason.into());
        self
    }

    #[must_use]
    pub fn with_first_byte_delay_ms(mut self, ms: u64) -> Script {
        self.first_byte_delay_ms = Some(ms);
        self
    }

    #[must_use]
    pub fn with_chunk_delay_ms(mut self, ms: u64) -> Script {
        self.chunk_delay_ms = Some(ms);
        self
    }

    /// Fail with `status` and this body (pass `Value::Null` for the canonical body).
    #[must_use]
    pub fn with_error(mut self, status: u16, body: Value) -> Script {
        let retry_after = self.error.as_ref().and_then(|e| e.retry_after);
        self.error = Some(ScriptError {
            status,
            body: (!body.is_null()).then_some(body),
            retry_after,
        });
        self
    }

    /// Fail with `status` and the flavor's canonical body.
    #[must_use]
    pub fn with_error_status(self, status: u16) -> Script {
        self.with_error(status, Value::Null)
    }

    /// Add a `Retry-After` header (seconds) to the scripted error (429 if none set yet).
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Script {
        let error = self.error.get_or_insert(ScriptError {
            status: 429,
            body: None,
            retry_after: None,
        });
        error.retry_after = Some(seconds);
        self
    }

    #[must_use]
    pub fn with_drop_after_chunks(mut self, chunks: usize) -> Script {
        self.drop_after_chunks = Some(chunks);
        self
    }

    #[must_use]
    pub fn with_stall_after_chunks(mut self, chunks: usize) -> Script {
        self.stall_after_chunks = Some(chunks);
        self
    }

    #[must_use]
    pub fn with_error_after_chunks(mut self, chunks: usize) -> Script {
        self.error_after_chunks = Some(chunks);
        self
    }

    #[must_use]
    pub fn with_stream_error_body(mut self, body: Value) -> Script {
        self.stream_error_body = Some(body);
        self
    }

    #[must_use]
    pub fn with_embedding_dims(mut self, dims: usize) -> Script {
        self.embedding_dims = Some(dims);
        self
    }

    #[must_use]
    pub fn with_image_b64(mut self, b64: impl Into<String>) -> Script {
        self.image_b64 = Some(b64.into());
        self
    }

    #[must_use]
    pub fn with_image_url(mut self, url: impl Into<String>) -> Script {
        self.image_url = Some(url.into());
        self
    }

    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Script {
        self.headers.insert(name.into(), value.into());
        self
    }
}
