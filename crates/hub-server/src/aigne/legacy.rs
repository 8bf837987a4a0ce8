//! `POST /api/v2/chat/completions` and `/api/v2/completions`: the original's legacy "AI Kit" body
//! (aigne-hub.md §2.3), camelCase (`maxTokens`, `toolCalls`, `responseFormat.jsonSchema`,
//! `prompt` xor `messages`). Unlike the original, which strips unknown keys, the snake_case OpenAI
//! names (`max_tokens`, `tool_choice`, `response_format`, ...) are accepted too, and other
//! snake_case OpenAI parameters are passed on as on `/v1`.
//!
//! Three answers, chosen by the request:
//! - `Accept: text/event-stream`: `data: {"delta":{"role","content","toolCalls"}}`,
//!   `data: {"usage":{"promptTokens","completionTokens","totalTokens"}}`, `data: {"error":{...}}`;
//!   no `[DONE]`; errors (even before the stream) come in-stream with status 200, as the original;
//! - `stream: true` otherwise: the text as plain bytes, ending with `ERROR: <message>` on failure;
//! - otherwise JSON `{"role":"assistant","text","content","toolCalls"?}`.
//!
//! Pure functions.

use hub_core::HubError;
use hub_core::types::{ChatRequest, ChatResponse, Message, Role, StreamEvent, ToolCall, Usage};
use serde_json::{Map, Value, json};

use super::invoke::{parse_messages, parse_response_format, parse_tool_choice, parse_tools};
use super::wire::{DEFAULT_CHAT_MODEL, Fields, error_body, parse_object, tool_calls_json};

/// Keys this codec reads (camelCase and their snake_case aliases); others that look like OpenAI
/// parameters (snake_case) are forwarded, camelCase strangers are ignored as the original does.
const KNOWN: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "stream",
    "temperature",
    "topP",
    "top_p",
    "presencePenalty",
    "presence_penalty",
    "frequencyPenalty",
    "frequency_penalty",
    "maxTokens",
    "max_tokens",
    "max_completion_tokens",
    "tools",
    "toolChoice",
    "tool_choice",
    "responseFormat",
    "response_format",
    "stop",
    "seed",
    "reasoningEffort",
    "reasoning_effort",
    "parallelToolCalls",
    "parallel_tool_calls",
    "user",
    "n",
    "stream_options",
    "streamOptions",
];

/// A parsed legacy call.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyChat {
    pub request: ChatRequest,
    /// `stream: true` in the body.
    pub stream: bool,
}

fn is_snake(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses a legacy completions body.
pub fn parse(body: &[u8]) -> Result<LegacyChat, HubError> {
    let root = parse_object(body)?;
    let f = Fields::new(&root, "");
    let model = f
        .str(&["model"])?
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or(DEFAULT_CHAT_MODEL)
        .to_string();
    let messages = match (f.str(&["prompt"])?, f.array(&["messages"])?) {
        (Some(_), Some(_)) => {
            return Err(HubError::invalid_param(
                "prompt",
                "Send either `prompt` or `messages`, not both.",
            ));
        }
        (Some(p), None) => vec![Message::text(Role::User, p)],
        (None, Some(m)) => parse_messages(m, "messages")?,
        (None, None) => {
            return Err(HubError::invalid_param(
                "messages",
                "One of `prompt` or `messages` is required.",
            ));
        }
    };
    if f.u32_in(&["n"], 1, 1).is_err() {
        return Err(HubError::invalid_param(
            "n",
            "Only n=1 is supported by this hub.",
        ));
    }
    let tools = match f.array(&["tools"])? {
        Some(t) => parse_tools(t, "tools")?,
        None => Vec::new(),
    };
    let tool_choice = f
        .value(&["toolChoice", "tool_choice"])
        .map(|(k, v)| parse_tool_choice(v, k))
        .transpose()?;
    let response_format = match f.value(&["responseFormat", "response_format"]) {
        None => None,
        Some((k, Value::Object(o))) => Some(parse_response_format(o, k)?),
        Some((k, _)) => {
            return Err(HubError::invalid_param(
                k,
                "responseFormat must be an object",
            ));
        }
    };
    let stream = f.bool(&["stream"])?.unwrap_or(false);
    let parallel_tool_calls = if tools.is_empty() {
        None
    } else {
        f.bool(&["parallelToolCalls", "parallel_tool_calls"])?
    };
    let extra: Map<String, Value> = root
        .iter()
        .filter(|(k, _)| !KNOWN.contains(&k.as_str()) && is_snake(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let request = ChatRequest {
        model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        max_tokens: f.u32_in(
            &["maxTokens", "max_completion_tokens", "max_tokens"],
            1,
            u32::MAX,
        )?,
        temperature: f.f64_in(&["temperature"], 0.0, 2.0)?,
        top_p: f.f64_in(&["topP", "top_p"], 0.0, 1.0)?,
        stop: f.stop()?,
        seed: f.i64(&["seed"])?,
        presence_penalty: f.f64_in(&["presencePenalty", "presence_penalty"], -2.0, 2.0)?,
        frequency_penalty: f.f64_in(&["frequencyPenalty", "frequency_penalty"], -2.0, 2.0)?,
        reasoning_effort: f
            .str(&["reasoningEffort", "reasoning_effort"])?
            .map(str::to_string),
        user: f.str(&["user"])?.map(str::to_string),
        stream,
        include_usage: false,
        extra,
    };
    Ok(LegacyChat { request, stream })
}

/// The JSON answer: `{"role":"assistant","text","content","toolCalls"?}` (no usage, as the original).
pub fn render_json(resp: &ChatResponse) -> Value {
    let content = resp.output.content.clone().unwrap_or_default();
    let mut o = Map::new();
    o.insert("role".into(), json!("assistant"));
    o.insert("text".into(), json!(content));
    o.insert("content".into(), json!(content));
    if !resp.output.tool_calls.is_empty() {
        o.insert(
            "toolCalls".into(),
            tool_calls_json(&resp.output.tool_calls, false),
        );
    }
    Value::Object(o)
}

fn frame(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// An error as the legacy SSE shape sends it (also before the stream started, with status 200).
pub fn sse_error(e: &HubError, link: Option<&str>) -> String {
    frame(&error_body(e, link))
}

/// Renders a hub stream in one of the two streaming shapes.
#[derive(Debug, Clone)]
pub struct LegacyStream {
    /// `true`: SSE chunks; `false`: plain text bytes.
    pub sse: bool,
    calls: Vec<ToolCall>,
}

impl LegacyStream {
    pub fn new(sse: bool) -> LegacyStream {
        LegacyStream {
            sse,
            calls: Vec::new(),
        }
    }

    pub fn event(&mut self, ev: &StreamEvent) -> Option<String> {
        match ev {
            StreamEvent::TextDelta { text } if !text.is_empty() => Some(if self.sse {
                frame(&json!({"delta": {"role": "assistant", "content": text, "toolCalls": []}}))
            } else {
                text.clone()
            }),
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
            _ => None,
        }
    }

    /// The end: the usage chunk, then the accumulated tool calls (SSE); nothing for plain text.
    pub fn done(&self, usage: &Usage) -> String {
        if !self.sse {
            return String::new();
        }
        let mut out = frame(&json!({"usage": {
            "promptTokens": usage.prompt_tokens,
            "completionTokens": usage.completion_tokens,
            "totalTokens": usage.total(),
        }}));
        let calls: Vec<ToolCall> = self
            .calls
            .iter()
            .filter(|c| !c.id.is_empty() || !c.name.is_empty())
            .cloned()
            .collect();
        if !calls.is_empty() {
            out.push_str(&frame(
                &json!({"delta": {"role": "assistant", "toolCalls": tool_calls_json(&calls, false)}}),
            ));
        }
        out
    }

    pub fn error(&self, e: &HubError) -> String {
        if self.sse {
            sse_error(e, None)
        } else {
            format!("ERROR: {}", super::wire::error_message(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::types::{AssistantOutput, FinishReason, ResponseFormat, ToolChoice};
    use proptest::prelude::*;

    fn ok(body: &str) -> LegacyChat {
        match parse(body.as_bytes()) {
            Ok(r) => r,
            Err(e) => unreachable!("{body}: {e}"),
        }
    }

    /// The legacy camelCase body of aigne-hub.md §2.3.
    #[test]
    fn parses_the_camel_case_body() {
        let r = ok(
            r#"{"model":"openai/gpt-4o-mini","stream":true,"temperature":0.5,"topP":0.9,"maxTokens":64,
            "presencePenalty":0.1,"frequencyPenalty":0.2,
            "messages":[{"role":"system","content":"be terse"},
              {"role":"user","content":[{"type":"text","text":"what?"},{"type":"image_url","imageUrl":{"url":"data:image/png;base64,iVBOR"}}]},
              {"role":"assistant","content":null,"toolCalls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
              {"role":"tool","content":"42","toolCallId":"c1"}],
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
            "toolChoice":{"type":"function","function":{"name":"f"}},
            "responseFormat":{"type":"json_schema","jsonSchema":{"name":"o","schema":{"type":"object"}}}}"#,
        );
        let q = &r.request;
        assert!(r.stream);
        assert_eq!(q.max_tokens, Some(64));
        assert_eq!(q.top_p, Some(0.9));
        assert_eq!(q.presence_penalty, Some(0.1));
        assert_eq!(q.messages.len(), 4);
        assert_eq!(q.messages[2].tool_calls[0].arguments, r#"{"a":1}"#);
        assert_eq!(q.messages[3].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(
            q.tool_choice,
            Some(ToolChoice::Function { name: "f".into() })
        );
        assert!(matches!(
            q.response_format,
            Some(ResponseFormat::JsonSchema { .. })
        ));
        assert!(q.extra.is_empty());
    }

    /// The original silently dropped these; here they count.
    #[test]
    fn accepts_snake_case_openai_parameters() {
        let r = ok(
            r#"{"prompt":"hi","max_tokens":9,"top_p":0.5,"tool_choice":"none","presence_penalty":1,
            "response_format":{"type":"json_object"},"logit_bias":{"50256":-100},"someCamelThing":1}"#,
        );
        let q = &r.request;
        assert_eq!(q.model, DEFAULT_CHAT_MODEL);
        assert_eq!(q.messages, vec![Message::text(Role::User, "hi")]);
        assert_eq!(q.max_tokens, Some(9));
        assert_eq!(q.top_p, Some(0.5));
        assert_eq!(q.tool_choice, Some(ToolChoice::None));
        assert_eq!(q.presence_penalty, Some(1.0));
        assert_eq!(q.response_format, Some(ResponseFormat::JsonObject));
        assert_eq!(q.extra.get("logit_bias"), Some(&json!({"50256": -100})));
        assert!(!q.extra.contains_key("someCamelThing"));
        assert!(!r.stream);
    }

    #[test]
    fn rejects_bad_bodies() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"prompt":"a","messages":[{"role":"user","content":"b"}]}"#,
                "prompt",
            ),
            (r#"{"model":"m"}"#, "messages"),
            (r#"{"messages":[]}"#, "messages"),
            (r#"{"prompt":"a","temperature":3}"#, "temperature"),
            (r#"{"prompt":"a","maxTokens":0}"#, "maxTokens"),
            (r#"{"prompt":"a","n":2}"#, "n"),
            (
                r#"{"messages":[{"role":"tool","content":"x"}]}"#,
                "messages[0].toolCallId",
            ),
            (r#"{"prompt":"a","stream":"yes"}"#, "stream"),
        ];
        for (body, param) in cases {
            let got = parse(body.as_bytes()).err().and_then(|e| e.param);
            assert_eq!(got.as_deref(), Some(*param), "{body}");
        }
    }

    /// Goldens: the three answer shapes.
    #[test]
    fn renders_the_legacy_shapes() {
        let resp = ChatResponse {
            id: "x".into(),
            model: "m".into(),
            created: 0,
            output: AssistantOutput {
                content: Some("hi".into()),
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "f".into(),
                    arguments: r#"{"a":1}"#.into(),
                    signature: None,
                }],
                ..AssistantOutput::default()
            },
            finish_reason: FinishReason::ToolCalls,
            usage: Usage::default(),
            provider_cost: None,
            cost: None,
        };
        assert_eq!(
            render_json(&resp),
            json!({"role":"assistant","text":"hi","content":"hi",
                   "toolCalls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]})
        );

        let mut s = LegacyStream::new(true);
        let mut out = String::new();
        for ev in [
            StreamEvent::Start {
                id: "x".into(),
                model: "m".into(),
            },
            StreamEvent::TextDelta { text: "Hel".into() },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: Some("c1".into()),
                name: Some("f".into()),
                arguments: "{}".into(),
            },
        ] {
            if let Some(f) = s.event(&ev) {
                out.push_str(&f);
            }
        }
        out.push_str(&s.done(&Usage {
            prompt_tokens: 2,
            completion_tokens: 3,
            ..Usage::default()
        }));
        assert_eq!(
            out,
            concat!(
                "data: {\"delta\":{\"content\":\"Hel\",\"role\":\"assistant\",\"toolCalls\":[]}}\n\n",
                "data: {\"usage\":{\"completionTokens\":3,\"promptTokens\":2,\"totalTokens\":5}}\n\n",
                "data: {\"delta\":{\"role\":\"assistant\",\"toolCalls\":[{\"function\":{\"arguments\":\"{}\",\"name\":\"f\"},\"id\":\"c1\",\"type\":\"function\"}]}}\n\n",
            )
        );
        assert_eq!(
            s.error(&HubError::invalid("boom")),
            "data: {\"error\":{\"message\":\"boom\",\"type\":\"invalid_request\"}}\n\n"
        );

        let mut p = LegacyStream::new(false);
        assert_eq!(
            p.event(&StreamEvent::TextDelta { text: "Hel".into() })
                .as_deref(),
            Some("Hel")
        );
        assert_eq!(p.done(&Usage::default()), "");
        assert_eq!(p.error(&HubError::invalid("boom")), "ERROR: boom");
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parser_never_panics_on_jsonish_input(s in r#"\{("prompt":("a"|1),?|"messages":\[(\{"role":"(user|assistant|tool|x)"(,"content":(null|"a"|1|\[\{"type":"(text|image_url)"(,"text":"a"|,"imageUrl":\{"url":"x"\})?\}\]))?(,"toolCallId":"c")?\},?){0,2}\],?|"n":(1|2),?|"maxTokens":(0|5|"x"),?|"tool_choice":("auto"|1),?|"responseFormat":(1|\{"type":"(json_schema|x)"\}),?){0,4}\}"#) {
            let _ = parse(s.as_bytes());
        }
    }
}
