//! Canonical request, response, stream event and usage types.
//!
//! Every ingress codec parses into these, every provider module converts from/to them, every egress
//! codec renders them. They are a superset of what the providers carry; provider-specific fields a
//! caller sent that have no canonical home ride in `extra` and are forwarded only to providers that
//! speak the same wire family.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    /// A remote URL (http/https).
    Url { url: String },
    /// Inline bytes, base64 encoded, with their media type (`image/png`, ...).
    Base64 { media_type: String, data: String },
}

impl ImageSource {
    /// Parses an OpenAI-style `image_url.url`, which is either a remote URL or a `data:` URL.
    pub fn from_url(url: &str) -> ImageSource {
        if let Some(rest) = url.strip_prefix("data:")
            && let Some((meta, data)) = rest.split_once(',')
            && let Some(media_type) = meta.strip_suffix(";base64")
        {
            return ImageSource::Base64 {
                media_type: media_type.to_string(),
                data: data.to_string(),
            };
        }
        ImageSource::Url {
            url: url.to_string(),
        }
    }

    /// Renders as an OpenAI-style URL (`data:` URL for inline bytes).
    pub fn to_url(&self) -> String {
        match self {
            ImageSource::Url { url } => url.clone(),
            ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        }
    }
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

/// A tool call the model made (arguments as the JSON text the model produced).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
    /// Opaque signature the provider attached to this call (Gemini `thoughtSignature` on the
    /// `functionCall` part); sent back unchanged on the same call in the next turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// One reasoning block of an assistant turn as the provider issued it. Signatures and redacted
/// data are opaque: they go back to the provider byte for byte, in order, before the turn's text
/// and tool calls (Anthropic and Bedrock reject a tool loop with thinking on otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReasoningBlock {
    /// Reasoning text and the provider's signature over it (Anthropic `thinking`, Bedrock
    /// `reasoningContent.reasoningText`). No signature when the provider gave none.
    Thinking {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    /// Encrypted reasoning (Anthropic `redacted_thinking.data`, Bedrock
    /// `reasoningContent.redactedContent`), base64 text.
    Redacted { data: String },
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(default)]
    pub content: Vec<ContentPart>,
    /// `true` when the caller sent `content` as a plain string (kept so that family providers get
    /// the same shape back).
    #[serde(default)]
    pub content_is_text: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Reasoning text of an earlier assistant turn (DeepSeek requires it back on tool-call turns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// The turn's reasoning blocks with their signatures (see [`ReasoningBlock`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasoning_blocks: Vec<ReasoningBlock>,
}

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            content: vec![ContentPart::Text { text: text.into() }],
            content_is_text: true,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
            reasoning: None,
            reasoning_blocks: Vec::new(),
        }
    }

    /// All text parts joined.
    pub fn joined_text(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            if let ContentPart::Text { text } = part {
                out.push_str(text);
            }
        }
        out
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments.
    #[serde(default)]
    pub parameters: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function { name: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
}

/// A chat request in canonical form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model string as the caller wrote it (`openai/gpt-4o-mini`, `gpt-4o`, ...).
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub tools: Vec<Tool>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// Upper bound on generated tokens (OpenAI `max_completion_tokens` / `max_tokens`).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    pub stream: bool,
    /// The caller asked for usage in the stream (OpenAI `stream_options.include_usage`). Usage is
    /// always requested upstream; this only decides whether the caller sees it.
    #[serde(default)]
    pub include_usage: bool,
    /// Fields the caller sent that have no canonical home (OpenAI-family wire names). Forwarded
    /// verbatim to OpenAI-family providers only.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// Why generation stopped, in OpenAI's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Error => "error",
        }
    }

    /// Maps an OpenAI-family `finish_reason` string.
    pub fn from_openai(s: &str) -> FinishReason {
        match s {
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            "error" => FinishReason::Error,
            _ => FinishReason::Stop,
        }
    }
}

/// Token usage, normalised (providers.md §12.1): `prompt_tokens` includes cache reads and writes,
/// `completion_tokens` includes reasoning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Images generated (image endpoints).
    #[serde(default)]
    pub images: u64,
    /// `true` when the hub estimated these counts because the provider reported none.
    #[serde(default)]
    pub estimated: bool,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// The assistant's reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssistantOutput {
    pub content: Option<String>,
    pub reasoning: Option<String>,
    /// Reasoning blocks with signatures, in the order the provider sent them (`reasoning` is
    /// their text joined).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasoning_blocks: Vec<ReasoningBlock>,
    pub tool_calls: Vec<ToolCall>,
    /// Images the model returned inline (data URLs or URLs), e.g. OpenRouter image output.
    pub images: Vec<String>,
}

/// A complete (non-streamed) chat response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub id: String,
    /// Upstream model id as the provider reported it.
    pub model: String,
    pub created: i64,
    pub output: AssistantOutput,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// Cost the provider itself reported (OpenRouter `usage.cost`), as a decimal string.
    pub provider_cost: Option<String>,
    /// What this call cost, set by the hub after metering: credits charged (credits mode) or the
    /// provider's list cost in USD (internal mode). `None` from provider modules.
    #[serde(default)]
    pub cost: Option<rust_decimal::Decimal>,
}

/// One normalised stream event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The response has started (id and upstream model).
    Start {
        id: String,
        model: String,
    },
    TextDelta {
        text: String,
    },
    ReasoningDelta {
        text: String,
    },
    /// The signature of the reasoning block streamed so far; it ends that block (the next
    /// reasoning delta starts a new one).
    ReasoningSignature {
        signature: String,
    },
    /// A whole redacted (encrypted) reasoning block.
    RedactedReasoning {
        data: String,
    },
    /// The provider's signature of tool call `index` (Gemini `thoughtSignature`).
    ToolCallSignature {
        index: u32,
        signature: String,
    },
    /// A tool call fragment. `id` and `name` are set on the first fragment of a call.
    ToolCallDelta {
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    Finish {
        reason: FinishReason,
    },
    Usage {
        usage: Usage,
    },
}

/// Input of an embeddings call: OpenAI's union (`"text"`, `["a","b"]`, `[1,2]`, `[[1,2]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Value,
    #[serde(default)]
    pub dimensions: Option<u32>,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl EmbeddingsRequest {
    /// The input texts (token-id inputs are counted, not decoded).
    pub fn texts(&self) -> Vec<&str> {
        match &self.input {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    pub index: u32,
    /// A float array, or a base64 string when `encoding_format` is `base64`.
    pub embedding: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    pub model: String,
    pub data: Vec<Embedding>,
    pub usage: Usage,
    /// Cost of the call, set by the hub (see `ChatResponse::cost`).
    #[serde(default)]
    pub cost: Option<rust_decimal::Decimal>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImagesRequest {
    pub model: String,
    pub prompt: String,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub quality: Option<String>,
    #[serde(default)]
    pub style: Option<String>,
    #[serde(default)]
    pub response_format: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// One generated image: `b64_json` or `url`, plus what the provider said of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratedImage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagesResponse {
    pub created: i64,
    pub model: String,
    pub data: Vec<GeneratedImage>,
    pub usage: Usage,
    /// Cost of the call, set by the hub (see `ChatResponse::cost`).
    #[serde(default)]
    pub cost: Option<rust_decimal::Decimal>,
}

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    Chat,
    Embedding,
    Image,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Chat => "chat",
            ModelType::Embedding => "embedding",
            ModelType::Image => "image",
        }
    }
}

/// A model the hub can serve, as listed to callers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// `provider/model`.
    pub id: String,
    pub provider: String,
    pub model: String,
    pub model_type: ModelType,
    pub display_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_round_trip() {
        let src = ImageSource::from_url("data:image/png;base64,iVBOR");
        assert_eq!(
            src,
            ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "iVBOR".into()
            }
        );
        assert_eq!(src.to_url(), "data:image/png;base64,iVBOR");
        let remote = ImageSource::from_url("https://x/y.png");
        assert_eq!(remote.to_url(), "https://x/y.png");
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(
            FinishReason::from_openai("tool_calls"),
            FinishReason::ToolCalls
        );
        assert_eq!(FinishReason::from_openai("length"), FinishReason::Length);
        assert_eq!(FinishReason::from_openai("stop"), FinishReason::Stop);
        assert_eq!(FinishReason::from_openai("error"), FinishReason::Error);
    }
}
