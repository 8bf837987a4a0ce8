//! Wire rendering for the OpenAI-family flavors: chat (JSON and SSE), usage, embeddings,
//! images, models. Shapes follow providers.md sections 1, 2, 6-11 and the recorded payloads cited
//! in the crate README.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::{Flavor, ToolCall, Usage};

/// Per-response identity shared by every chunk of one completion.
pub(crate) struct ChatCtx<'a> {
    pub flavor: Flavor,
    pub id: String,
    pub created: u64,
    pub model: &'a str,
    /// `stream_options.include_usage` was true.
    pub include_usage: bool,
    /// OpenAI adds an `obfuscation` padding field to chunks unless
    /// `stream_options.include_obfuscation` is false.
    pub include_obfuscation: bool,
}

/// The resolved content of one reply.
pub(crate) struct Reply<'a> {
    pub text: &'a str,
    /// Number of stream pieces for `text` (None: one per word).
    pub text_chunks: Option<usize>,
    pub reasoning: Option<&'a str>,
    pub tool_calls: Vec<ToolCall>,
    /// None: send no usage.
    pub usage: Option<Usage>,
    pub finish_reason: &'a str,
}

/// Where a stream stops early.
#[derive(Clone, Debug)]
pub(crate) enum Cutoff {
    /// Run to completion.
    None,
    /// Abort the connection after N content chunks.
    Drop(usize),
    /// Send the mid-stream error event (with this error object, or the flavor's) after N
    /// content chunks.
    Error(usize, Option<Value>),
    /// Send nothing after N content chunks; keep the connection open.
    Stall(usize),
}

/// One unit of an SSE body.
pub(crate) enum Frame {
    /// `: comment\n\n` keep-alive line.
    Comment(&'static str),
    /// `data: ...\n\n`; `content` marks chunks that carry completion content.
    Data { bytes: Bytes, content: bool },
    /// Abruptly close the connection.
    Abort,
    /// Send nothing more, holding the connection open until the client goes away.
    Stall,
}

pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

const FINGERPRINT_OPENAI: &str = "fp_mock0openai";
const FINGERPRINT_DEEPSEEK: &str = "fp_mock_prod0820_fp8_kvcache";
const FINGERPRINT_XAI: &str = "fp_mock2a885414";
const FINGERPRINT_OPENROUTER: &str = "fp_mockdb64b059";
const FINGERPRINT_OLLAMA: &str = "fp_ollama";

/// The id of a completion for a flavor, from a per-server sequence number.
pub(crate) fn completion_id(flavor: Flavor, seq: u64, created: u64) -> String {
    match flavor {
        Flavor::OpenAi | Flavor::Poe | Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock => {
            format!("chatcmpl-mock{seq:016x}")
        }
        Flavor::DeepSeek | Flavor::Xai => uuid_like(seq),
        Flavor::OpenRouter => format!("gen-{created}-mock{seq:012x}"),
        Flavor::Doubao => format!("0217{created}{seq:020}"),
        Flavor::Ollama => format!("chatcmpl-{}", seq % 1000),
    }
}

fn uuid_like(seq: u64) -> String {
    let mixed = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (mixed >> 32) as u32,
        (mixed >> 16) as u16,
        (mixed & 0xfff) as u16,
        ((mixed >> 20) & 0xfff) as u16,
        seq & 0xffff_ffff_ffff
    )
}

/// Usage in the flavor's wire shape (providers.md 12.1, inverse direction).
pub(crate) fn usage_json(flavor: Flavor, u: &Usage) -> Value {
    let total = u.prompt_tokens + u.completion_tokens;
    match flavor {
        Flavor::OpenAi => {
            let mut prompt_details = json!({"cached_tokens": u.cached_tokens, "audio_tokens": 0});
            if u.cache_write_tokens > 0
                && let Some(obj) = prompt_details.as_object_mut()
            {
                obj.insert("cache_write_tokens".to_owned(), u.cache_write_tokens.into());
            }
            json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "total_tokens": total, "prompt_tokens_details": prompt_details,
                "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
        }
        Flavor::DeepSeek => json!({"prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens, "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "prompt_cache_hit_tokens": u.cached_tokens,
            "prompt_cache_miss_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens)}),
        Flavor::Xai => json!({"prompt_tokens": u.prompt_tokens,
            // xAI: completion_tokens EXCLUDES reasoning, total includes it.
            "completion_tokens": u.completion_tokens.saturating_sub(u.reasoning_tokens),
            "total_tokens": total,
            "prompt_tokens_details": {"text_tokens": u.prompt_tokens, "audio_tokens": 0,
                "image_tokens": 0, "cached_tokens": u.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
            "num_sources_used": 0,
            "cost_in_usd_ticks": total * 5000}),
        Flavor::OpenRouter => {
            let prompt_cost = u.prompt_tokens as f64 * 0.15e-6;
            let completion_cost = u.completion_tokens as f64 * 0.6e-6;
            let cost = u.cost.unwrap_or(prompt_cost + completion_cost);
            json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "total_tokens": total,
                "prompt_tokens_details": {"cached_tokens": u.cached_tokens,
                    "cache_write_tokens": u.cache_write_tokens, "audio_tokens": 0, "video_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens, "image_tokens": 0},
                "cost": cost, "is_byok": false,
                "cost_details": {"upstream_inference_cost": null,
                    "upstream_inference_prompt_cost": prompt_cost,
                    "upstream_inference_completions_cost": completion_cost}})
        }
        Flavor::Doubao => json!({"prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens, "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens}}),
        Flavor::Poe | Flavor::Ollama | Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock => {
            json!({"prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens, "total_tokens": total})
        }
    }
}

fn tool_calls_json(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect(),
    )
}

/// Non-streaming `chat.completion` body.
pub(crate) fn chat_json(ctx: &ChatCtx<'_>, reply: &Reply<'_>) -> Value {
    let flavor = ctx.flavor;
    let content = if reply.text.is_empty() && !reply.tool_calls.is_empty() {
        Value::Null
    } else {
        Value::from(reply.text)
    };
    let mut message = Map::new();
    message.insert("role".to_owned(), "assistant".into());
    message.insert("content".to_owned(), content);
    match flavor {
        Flavor::OpenAi => {
            message.insert("refusal".to_owned(), Value::Null);
            message.insert("annotations".to_owned(), json!([]));
        }
        Flavor::Xai => {
            message.insert("refusal".to_owned(), Value::Null);
        }
        Flavor::OpenRouter => {
            message.insert("refusal".to_owned(), Value::Null);
            message.insert(
                "reasoning".to_owned(),
                reply.reasoning.map_or(Value::Null, Value::from),
            );
        }
        _ => {}
    }
    if let Some(reasoning) = reply.reasoning {
        match flavor {
            Flavor::DeepSeek | Flavor::Xai | Flavor::Doubao => {
                message.insert("reasoning_content".to_owned(), reasoning.into());
            }
            Flavor::Ollama => {
                message.insert("reasoning".to_owned(), reasoning.into());
            }
            _ => {}
        }
    }
    if !reply.tool_calls.is_empty() {
        message.insert("tool_calls".to_owned(), tool_calls_json(&reply.tool_calls));
    }
    let mut choice = Map::new();
    choice.insert("index".to_owned(), 0.into());
    choice.insert("message".to_owned(), Value::Object(message));
    choice.insert("finish_reason".to_owned(), reply.finish_reason.into());
    match flavor {
        Flavor::OpenAi | Flavor::DeepSeek | Flavor::Doubao => {
            choice.insert("logprobs".to_owned(), Value::Null);
        }
        Flavor::OpenRouter => {
            choice.insert("logprobs".to_owned(), Value::Null);
            choice.insert(
                "native_finish_reason".to_owned(),
                reply.finish_reason.into(),
            );
        }
        _ => {}
    }
    let mut body = envelope(ctx, "chat.completion");
    body.insert(
        "choices".to_owned(),
        Value::Array(vec![Value::Object(choice)]),
    );
    if let Some(usage) = &reply.usage {
        body.insert("usage".to_owned(), usage_json(flavor, usage));
    }
    Value::Object(body)
}

/// Top-level fields shared by the completion body and every chunk.
fn envelope(ctx: &ChatCtx<'_>, object: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".to_owned(), ctx.id.as_str().into());
    m.insert("object".to_owned(), object.into());
    m.insert("created".to_owned(), ctx.created.into());
    m.insert("model".to_owned(), ctx.model.into());
    match ctx.flavor {
        Flavor::OpenAi => {
            m.insert("system_fingerprint".to_owned(), FINGERPRINT_OPENAI.into());
            m.insert("service_tier".to_owned(), "default".into());
        }
        Flavor::DeepSeek => {
            m.insert("system_fingerprint".to_owned(), FINGERPRINT_DEEPSEEK.into());
        }
        Flavor::Xai => {
            m.insert("system_fingerprint".to_owned(), FINGERPRINT_XAI.into());
        }
        Flavor::OpenRouter => {
            m.insert("provider".to_owned(), "OpenAI".into());
            m.insert(
                "system_fingerprint".to_owned(),
                FINGERPRINT_OPENROUTER.into(),
            );
        }
        Flavor::Doubao => {
            m.insert("service_tier".to_owned(), "default".into());
        }
        Flavor::Ollama => {
            m.insert("system_fingerprint".to_owned(), FINGERPRINT_OLLAMA.into());
        }
        Flavor::Poe | Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock => {}
    }
    m
}

/// A piece of streamed completion content.
enum Piece<'a> {
    Reasoning(&'a str),
    Content(&'a str),
    /// First fragment of a tool call: id, type, name and the first slice of arguments.
    ToolStart {
        index: usize,
        call: &'a ToolCall,
        args: &'a str,
    },
    ToolArgs {
        index: usize,
        args: &'a str,
    },
}

/// Splits text into stream pieces: `n` roughly equal pieces, or one per word (each word keeps
/// its leading whitespace, like real token deltas).
pub(crate) fn split_text(text: &str, n: Option<usize>) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    match n {
        Some(n) if n >= 1 => split_even(text, n),
        _ => {
            let mut out = Vec::new();
            let mut start = 0;
            let mut in_word = false;
            for (i, ch) in text.char_indices() {
                let ws = ch.is_whitespace();
                if !ws {
                    in_word = true;
                } else if in_word {
                    out.push(&text[start..i]);
                    start = i;
                    in_word = false;
                }
            }
            if start < text.len() {
                out.push(&text[start..]);
            }
            out
        }
    }
}

fn split_even(text: &str, n: usize) -> Vec<&str> {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let chars = bounds.len() - 1;
    let n = n.min(chars).max(1);
    (0..n)
        .filter_map(|k| {
            let from = *bounds.get(chars * k / n)?;
            let to = *bounds.get(chars * (k + 1) / n)?;
            text.get(from..to)
        })
        .collect()
}

/// Words in a text (default completion-token count).
pub(crate) fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn pieces<'a>(flavor: Flavor, reply: &'a Reply<'a>) -> Vec<Piece<'a>> {
    let mut out = Vec::new();
    if let Some(reasoning) = reply.reasoning
        && !matches!(flavor, Flavor::OpenAi | Flavor::Poe)
    {
        out.extend(
            split_text(reasoning, None)
                .into_iter()
                .map(Piece::Reasoning),
        );
    }
    out.extend(
        split_text(reply.text, reply.text_chunks)
            .into_iter()
            .map(Piece::Content),
    );
    // xAI and Ollama deliver each tool call whole in one chunk (recorded xai-tool-call.chunks.txt,
    // ollama openai/openai.go); the others fragment the arguments.
    let whole = matches!(flavor, Flavor::Xai | Flavor::Ollama);
    for (index, call) in reply.tool_calls.iter().enumerate() {
        if whole {
            out.push(Piece::ToolStart {
                index,
                call,
                args: &call.arguments,
            });
        } else {
            out.push(Piece::ToolStart {
                index,
                call,
                args: "",
            });
            let parts = call.arguments.chars().count().clamp(1, 4);
            out.extend(
                split_text(&call.arguments, Some(parts))
                    .into_iter()
                    .map(|args| Piece::ToolArgs { index, args }),
            );
        }
    }
    out
}

fn piece_delta(flavor: Flavor, piece: &Piece<'_>, has_reasoning: bool) -> Map<String, Value> {
    let mut d = Map::new();
    let role_every = matches!(flavor, Flavor::OpenRouter | Flavor::Ollama);
    if role_every {
        d.insert("role".to_owned(), "assistant".into());
    }
    match piece {
        Piece::Content(text) => {
            d.insert("content".to_owned(), (*text).into());
            if flavor == Flavor::DeepSeek && has_reasoning {
                d.insert("reasoning_content".to_owned(), Value::Null);
            }
        }
        Piece::Reasoning(text) => match flavor {
            Flavor::DeepSeek => {
                d.insert("content".to_owned(), Value::Null);
                d.insert("reasoning_content".to_owned(), (*text).into());
            }
            Flavor::Xai => {
                d.insert("reasoning_content".to_owned(), (*text).into());
            }
            Flavor::Doubao => {
                d.insert("content".to_owned(), "".into());
                d.insert("reasoning_content".to_owned(), (*text).into());
            }
            Flavor::OpenRouter | Flavor::Ollama => {
                d.insert("content".to_owned(), "".into());
                d.insert("reasoning".to_owned(), (*text).into());
            }
            Flavor::OpenAi | Flavor::Poe | Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock => {
            }
        },
        Piece::ToolStart { index, call, args } => {
            if role_every {
                d.insert("content".to_owned(), Value::Null);
            }
            d.insert(
                "tool_calls".to_owned(),
                json!([{"index": index, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": args}}]),
            );
        }
        Piece::ToolArgs { index, args } => {
            if role_every {
                d.insert("content".to_owned(), Value::Null);
            }
            d.insert(
                "tool_calls".to_owned(),
                json!([{"index": index, "function": {"arguments": args}}]),
            );
        }
    }
    d
}

/// What goes in the top-level `usage` slot of a chunk.
enum UsageSlot {
    Absent,
    Null,
    Value(Value),
}

fn chunk(
    ctx: &ChatCtx<'_>,
    delta: Option<Map<String, Value>>,
    finish: Option<&str>,
    usage: UsageSlot,
) -> Bytes {
    let flavor = ctx.flavor;
    let mut body = envelope(ctx, "chat.completion.chunk");
    let choices = match delta {
        None => Vec::new(),
        Some(delta) => {
            let mut c = Map::new();
            c.insert("index".to_owned(), 0.into());
            c.insert("delta".to_owned(), Value::Object(delta));
            // xAI omits finish_reason/logprobs until the final chunk.
            if flavor != Flavor::Xai || finish.is_some() {
                c.insert(
                    "finish_reason".to_owned(),
                    finish.map_or(Value::Null, Value::from),
                );
            }
            match flavor {
                Flavor::OpenAi | Flavor::DeepSeek | Flavor::Doubao => {
                    c.insert("logprobs".to_owned(), Value::Null);
                }
                Flavor::OpenRouter => {
                    c.insert("logprobs".to_owned(), Value::Null);
                    c.insert(
                        "native_finish_reason".to_owned(),
                        finish.map_or(Value::Null, Value::from),
                    );
                }
                _ => {}
            }
            vec![Value::Object(c)]
        }
    };
    body.insert("choices".to_owned(), Value::Array(choices));
    if flavor == Flavor::OpenAi && ctx.include_obfuscation {
        body.insert("obfuscation".to_owned(), "mOck".into());
    }
    match usage {
        UsageSlot::Absent => {}
        UsageSlot::Null => {
            body.insert("usage".to_owned(), Value::Null);
        }
        UsageSlot::Value(v) => {
            body.insert("usage".to_owned(), v);
        }
    }
    data_bytes(&Value::Object(body))
}

pub(crate) fn data_bytes(value: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    // Serializing a Value cannot fail.
    let _ = serde_json::to_writer(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// The SSE frames of a streamed completion, per flavor.
pub(crate) fn chat_stream_frames(
    ctx: &ChatCtx<'_>,
    reply: &Reply<'_>,
    cutoff: &Cutoff,
    request_id: &str,
) -> Vec<Frame> {
    let flavor = ctx.flavor;
    let has_reasoning =
        reply.reasoning.is_some() && !matches!(flavor, Flavor::OpenAi | Flavor::Poe);
    let pieces = pieces(flavor, reply);
    let mut frames = Vec::with_capacity(pieces.len() + 6);
    let plain_slot = || match flavor {
        Flavor::DeepSeek => UsageSlot::Null,
        Flavor::OpenAi | Flavor::Doubao | Flavor::Poe if ctx.include_usage => UsageSlot::Null,
        _ => UsageSlot::Absent,
    };

    match flavor {
        Flavor::DeepSeek => frames.push(Frame::Comment(": keep-alive\n\n")),
        Flavor::OpenRouter => frames.push(Frame::Comment(": OPENROUTER PROCESSING\n\n")),
        _ => {}
    }

    // Opening chunk carrying the role.
    let first_is_text = matches!(pieces.first(), Some(Piece::Content(_)));
    // xAI puts the role on the first content delta (recorded xai-tool-call.chunks.txt); OpenAI
    // puts it on the first tool-call fragment (recorded openai-python tool-call stream).
    let first_is_tool = matches!(pieces.first(), Some(Piece::ToolStart { .. }));
    let merge_role_into_first = match flavor {
        Flavor::Xai => !pieces.is_empty(),
        Flavor::OpenAi => first_is_tool,
        _ => false,
    };
    match flavor {
        _ if merge_role_into_first => {}
        Flavor::DeepSeek => {
            let mut d = Map::new();
            d.insert("role".to_owned(), "assistant".into());
            if has_reasoning {
                d.insert("content".to_owned(), Value::Null);
                d.insert("reasoning_content".to_owned(), "".into());
            } else {
                d.insert("content".to_owned(), "".into());
            }
            frames.push(Frame::Data {
                bytes: chunk(ctx, Some(d), None, plain_slot()),
                content: false,
            });
            frames.push(Frame::Comment(": keep-alive\n\n"));
        }
        _ => {
            let mut d = Map::new();
            d.insert("role".to_owned(), "assistant".into());
            let tool_only = !first_is_text && !reply.tool_calls.is_empty() && !has_reasoning;
            d.insert(
                "content".to_owned(),
                if tool_only { Value::Null } else { "".into() },
            );
            if flavor == Flavor::OpenAi {
                d.insert("refusal".to_owned(), Value::Null);
            }
            frames.push(Frame::Data {
                bytes: chunk(ctx, Some(d), None, plain_slot()),
                content: false,
            });
        }
    }

    let (limit, stop_error) = match cutoff {
        Cutoff::None => (usize::MAX, None),
        Cutoff::Drop(n) => (*n, None),
        Cutoff::Error(n, body) => (*n, Some(body)),
        Cutoff::Stall(n) => (*n, None),
    };
    for (i, piece) in pieces.iter().enumerate() {
        if i >= limit {
            break;
        }
        let mut d = piece_delta(flavor, piece, has_reasoning);
        if merge_role_into_first && i == 0 {
            d.insert("role".to_owned(), "assistant".into());
            if flavor == Flavor::OpenAi {
                d.insert("content".to_owned(), Value::Null);
                d.insert("refusal".to_owned(), Value::Null);
            }
        }
        frames.push(Frame::Data {
            bytes: chunk(ctx, Some(d), None, plain_slot()),
            content: true,
        });
    }

    match cutoff {
        Cutoff::None => {}
        Cutoff::Drop(_) => {
            frames.push(Frame::Abort);
            return frames;
        }
        Cutoff::Stall(_) => {
            frames.push(Frame::Stall);
            return frames;
        }
        Cutoff::Error(..) => {
            let error_obj = match stop_error.and_then(|b| b.as_ref()) {
                Some(Value::Object(obj)) if obj.len() == 1 && obj.contains_key("error") => {
                    obj.get("error").cloned().unwrap_or(Value::Null)
                }
                Some(other) => other.clone(),
                None => crate::errors::stream_error_object(flavor, request_id),
            };
            let event = match flavor {
                Flavor::OpenRouter => {
                    let mut body = envelope(ctx, "chat.completion.chunk");
                    body.insert("error".to_owned(), error_obj);
                    body.insert(
                        "choices".to_owned(),
                        json!([{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                            "native_finish_reason": "error", "logprobs": null}]),
                    );
                    Value::Object(body)
                }
                _ => json!({"error": error_obj}),
            };
            frames.push(Frame::Data {
                bytes: data_bytes(&event),
                content: false,
            });
            return frames;
        }
    }

    let usage = reply.usage.as_ref().map(|u| usage_json(flavor, u));
    let finish = reply.finish_reason;
    match flavor {
        Flavor::DeepSeek => {
            let mut d = Map::new();
            d.insert("content".to_owned(), "".into());
            if has_reasoning {
                d.insert("reasoning_content".to_owned(), Value::Null);
            }
            let slot = usage.map_or(UsageSlot::Null, UsageSlot::Value);
            frames.push(Frame::Data {
                bytes: chunk(ctx, Some(d), Some(finish), slot),
                content: false,
            });
        }
        Flavor::OpenRouter => {
            let mut d = Map::new();
            d.insert("content".to_owned(), "".into());
            d.insert("role".to_owned(), "assistant".into());
            frames.push(Frame::Data {
                bytes: chunk(ctx, Some(d.clone()), Some(finish), UsageSlot::Absent),
                content: false,
            });
            // Usage is always sent, in a trailing chunk with an empty delta (recorded
            // hadrian openrouter/chat_completion_streaming.json).
            if let Some(usage) = usage {
                frames.push(Frame::Data {
                    bytes: chunk(ctx, Some(d), None, UsageSlot::Value(usage)),
                    content: false,
                });
            }
        }
        _ => {
            let mut d = Map::new();
            if flavor == Flavor::Doubao {
                d.insert("content".to_owned(), "".into());
                d.insert("role".to_owned(), "assistant".into());
            }
            frames.push(Frame::Data {
                bytes: chunk(ctx, Some(d), Some(finish), plain_slot()),
                content: false,
            });
            if ctx.include_usage
                && let Some(usage) = usage
            {
                frames.push(Frame::Data {
                    bytes: chunk(ctx, None, None, UsageSlot::Value(usage)),
                    content: false,
                });
            }
        }
    }
    frames.push(Frame::Data {
        bytes: Bytes::from_static(DONE),
        content: false,
    });
    frames
}

/// Deterministic pseudo-embedding for one input.
pub(crate) fn embedding_vector(input: &str, dims: usize) -> Vec<f32> {
    // FNV-1a seed, then a xorshift sequence: cheap, stable across runs.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in input.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (0..dims)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            ((h % 20_000) as f32 / 10_000.0) - 1.0
        })
        .collect()
}

/// Inputs of an embeddings request as strings (token arrays are rendered as their numbers).
pub(crate) fn embedding_inputs(input: &Value) -> Option<Vec<String>> {
    match input {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_number) => Some(vec![input.to_string()]),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ),
        _ => None,
    }
}

pub(crate) fn embeddings_json(
    flavor: Flavor,
    model: &str,
    inputs: &[String],
    dims: usize,
    base64: bool,
    prompt_tokens: u64,
) -> Value {
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(input, dims);
            let embedding = if base64 {
                let mut raw = Vec::with_capacity(vector.len() * 4);
                for x in &vector {
                    raw.extend_from_slice(&x.to_le_bytes());
                }
                Value::from(base64::engine::general_purpose::STANDARD.encode(raw))
            } else {
                Value::Array(
                    vector
                        .into_iter()
                        .map(|x| Value::from(f64::from(x)))
                        .collect(),
                )
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut body = json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}});
    if flavor == Flavor::Doubao
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert("id".to_owned(), format!("0217{prompt_tokens:020}").into());
        obj.insert("created".to_owned(), crate::server::now_secs().into());
    }
    body
}

/// A 1x1 transparent PNG, the default image payload.
pub(crate) const TINY_PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

pub(crate) struct ImageParams<'a> {
    pub model: &'a str,
    pub prompt: &'a str,
    pub n: usize,
    pub size: Option<&'a str>,
    /// Return `b64_json` (else `url`).
    pub b64: bool,
    pub b64_payload: &'a str,
    pub url: &'a str,
    pub created: u64,
}

pub(crate) fn images_json(flavor: Flavor, p: &ImageParams<'_>) -> Value {
    let item = |i: usize| -> Value {
        let mut m = Map::new();
        if p.b64 {
            m.insert("b64_json".to_owned(), p.b64_payload.into());
        } else if p.n > 1 {
            m.insert("url".to_owned(), format!("{}?i={i}", p.url).into());
        } else {
            m.insert("url".to_owned(), p.url.into());
        }
        match flavor {
            Flavor::Doubao => {
                m.insert("size".to_owned(), p.size.unwrap_or("2048x2048").into());
            }
            Flavor::Xai => {
                m.insert("revised_prompt".to_owned(), p.prompt.into());
            }
            Flavor::OpenAi if p.model.starts_with("dall-e-3") => {
                m.insert("revised_prompt".to_owned(), p.prompt.into());
            }
            _ => {}
        }
        Value::Object(m)
    };
    let data: Vec<Value> = (0..p.n).map(item).collect();
    match flavor {
        Flavor::Doubao => {
            let tokens = 4096 * p.n as u64;
            json!({"model": p.model, "created": p.created, "data": data,
                "usage": {"generated_images": p.n, "output_tokens": tokens, "total_tokens": tokens}})
        }
        // xAI returns only `data` (providers.md 9).
        Flavor::Xai => json!({"data": data}),
        _ => {
            let mut body = json!({"created": p.created, "data": data});
            if p.model.starts_with("gpt-image")
                && let Some(obj) = body.as_object_mut()
            {
                let text_tokens = (p.prompt.chars().count() as u64).div_ceil(4).max(1);
                let output = 272 * p.n as u64;
                obj.insert(
                    "usage".to_owned(),
                    json!({"input_tokens": text_tokens,
                    "input_tokens_details": {"image_tokens": 0, "text_tokens": text_tokens},
                    "output_tokens": output, "total_tokens": text_tokens + output}),
                );
                obj.insert("size".to_owned(), p.size.unwrap_or("1024x1024").into());
                obj.insert("output_format".to_owned(), "png".into());
                obj.insert("quality".to_owned(), "medium".into());
                obj.insert("background".to_owned(), "opaque".into());
            }
            body
        }
    }
}

/// `GET /models` body (None: the flavor has no listing).
pub(crate) fn models_json(flavor: Flavor, extra: &[String]) -> Option<Value> {
    let (defaults, owner): (&[&str], &str) = match flavor {
        Flavor::OpenAi => (
            &[
                "gpt-4o",
                "gpt-4o-mini",
                "text-embedding-3-small",
                "gpt-image-1",
            ],
            "system",
        ),
        Flavor::DeepSeek => (&["deepseek-chat", "deepseek-reasoner"], "deepseek"),
        Flavor::Xai => (&["grok-4", "grok-3-mini", "grok-2-image"], "xai"),
        Flavor::OpenRouter => (&["openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet"], ""),
        Flavor::Doubao | Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock => return None,
        Flavor::Poe => (&["GPT-4o", "Claude-Sonnet-4", "Gemini-2.5-Pro"], "poe"),
        Flavor::Ollama => (&["llama3.2:latest", "qwen3:0.6b"], "library"),
    };
    let ids = defaults.iter().map(|s| (*s).to_owned()).chain(
        extra
            .iter()
            .filter(|e| !defaults.contains(&e.as_str()))
            .cloned(),
    );
    let created = 1_715_367_049u64;
    let data: Vec<Value> = ids
        .map(|id| match flavor {
            Flavor::OpenRouter => {
                let name = id.clone();
                json!({"id": id, "canonical_slug": name, "name": name, "created": created,
                    "context_length": 128000,
                    "architecture": {"modality": "text->text", "input_modalities": ["text"],
                        "output_modalities": ["text"], "tokenizer": "GPT"},
                    "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},
                    "top_provider": {"context_length": 128000, "max_completion_tokens": 16384,
                        "is_moderated": true},
                    "supported_parameters": ["max_tokens", "temperature", "tools", "tool_choice",
                        "stream_options", "response_format"]})
            }
            _ => json!({"id": id, "object": "model", "created": created, "owned_by": owner}),
        })
        .collect();
    Some(match flavor {
        Flavor::OpenRouter => json!({"data": data}),
        _ => json!({"object": "list", "data": data}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_words_keeps_leading_space() {
        assert_eq!(
            split_text("Hello from  mock.", None),
            vec!["Hello", " from", "  mock."]
        );
        assert_eq!(split_text(" lead", None), vec![" lead"]);
        assert!(split_text("", None).is_empty());
    }

    #[test]
    fn split_even_covers_text() {
        let parts = split_text("abcdefghij", Some(3));
        assert_eq!(parts.concat(), "abcdefghij");
        assert_eq!(parts.len(), 3);
        let parts = split_text("héllo wörld", Some(4));
        assert_eq!(parts.concat(), "héllo wörld");
        assert_eq!(parts.len(), 4);
        assert_eq!(split_text("ab", Some(5)), vec!["a", "b"]);
    }

    #[test]
    fn xai_usage_excludes_reasoning() {
        let u = Usage::new(12, 229).with_reasoning(228).with_cached(2);
        let v = usage_json(Flavor::Xai, &u);
        assert_eq!(v["completion_tokens"], 1);
        assert_eq!(v["total_tokens"], 241);
        assert_eq!(v["prompt_tokens_details"]["cached_tokens"], 2);
    }
}
