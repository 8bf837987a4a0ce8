//! ONE conformance suite, run against every provider's protocol-faithful mock through the
//! `Provider` trait (style.md §13). Each check is a generic async fn over a [`Case`]; the
//! `conformance!` macro expands every check into a `#[tokio::test]` per provider, so a failure
//! reads `conformance::anthropic::stream_tool_calls`.
//!
//! What a provider reports differs (Poe and Ollama report no cache or reasoning counts, Anthropic
//! and Bedrock no reasoning count, ...): the [`Case`] says so, and the suite asserts that whatever
//! a provider reports lands in the same canonical field, normalised per providers.md §12.1.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
#![expect(clippy::panic, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use hub_core::error::{ErrorClass, ErrorKind, HubError, ProviderError};
use hub_core::providers::{
    CredentialSecret, EventStream, ProviderKind, ProviderSettings, Secret, Upstream, implementation,
};
use hub_core::types::{
    ChatRequest, ChatResponse, ContentPart, EmbeddingsRequest, FinishReason, ImageSource,
    ImagesRequest, Message, ReasoningBlock, Role, StreamEvent, Tool, ToolCall, Usage,
};
use hub_testkit::{Flavor, MockServer, Script, Usage as MockUsage};
use serde_json::{Value, json};

/// One provider under test and what its wire reports.
#[derive(Clone, Copy)]
struct Case {
    kind: ProviderKind,
    flavor: Flavor,
    model: &'static str,
    reports_cached: bool,
    reports_cache_write: bool,
    reports_reasoning: bool,
    /// The provider tells how long to wait on 429 (Retry-After, RetryInfo); Bedrock does not.
    retry_hint: bool,
    /// The status the provider uses for "overloaded".
    overloaded_status: u16,
    /// The provider authenticates requests (local Ollama does not).
    authenticates: bool,
    embeddings_model: Option<&'static str>,
    images_model: Option<&'static str>,
    /// The provider counts prompt tokens itself (Anthropic, Gemini, Bedrock).
    counts_tokens: bool,
    /// A realistic "context too long" error: (status, body).
    context_error: fn() -> (u16, Value),
}

const TINY_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

struct Fixture {
    mock: MockServer,
    http: hub_core::upstream_http::Client,
    base_url: String,
    credential: CredentialSecret,
    settings: ProviderSettings,
}

impl Fixture {
    async fn new(case: Case) -> Fixture {
        let mock = MockServer::start(case.flavor).await;
        let credential = if case.kind == ProviderKind::Bedrock {
            CredentialSecret {
                api_key: Some(Secret::new(mock.api_key())),
                secret_key: Some(Secret::new(mock.aws_secret_key())),
                session_token: Some(Secret::new("mock-session-token")),
            }
        } else {
            CredentialSecret::api_key(mock.api_key())
        };
        Fixture {
            base_url: mock.base_url(),
            mock,
            http: hub_core::upstream_http::Client::new(Default::default())
                .unwrap_or_else(|e| unreachable!("the default client builds: {e}")),
            credential,
            settings: ProviderSettings {
                region: Some("us-west-2".into()),
                ..ProviderSettings::default()
            },
        }
    }

    fn up<'a>(&'a self, model: &'a str) -> Upstream<'a> {
        Upstream {
            http: &self.http,
            base_url: &self.base_url,
            credential: &self.credential,
            model,
            settings: &self.settings,
        }
    }

    async fn chat(&self, case: Case, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let imp = implementation(case.kind).unwrap();
        imp.chat(self.up(case.model), req).await
    }

    async fn stream(&self, case: Case, req: &ChatRequest) -> Result<EventStream, ProviderError> {
        let imp = implementation(case.kind).unwrap();
        imp.chat_stream(self.up(case.model), req).await
    }

    /// The JSON body of the last upstream request, as text.
    fn last_body(&self) -> String {
        self.mock.requests().last().unwrap().body.to_string()
    }
}

fn request(messages: Vec<Message>) -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        messages,
        ..ChatRequest::default()
    }
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Weather for a city".into()),
        parameters: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
        strict: None,
    }
}

/// Everything a stream produced until it ended or failed.
#[derive(Default, Debug)]
struct Collected {
    started: bool,
    text: String,
    reasoning: String,
    /// index -> (id, name, arguments)
    tools: BTreeMap<u32, (Option<String>, Option<String>, String)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    error: Option<ProviderError>,
    deltas_before_error: usize,
    /// Reasoning blocks as streamed: text up to each signature, and redacted blocks.
    reasoning_blocks: Vec<ReasoningBlock>,
    /// Reasoning text not yet closed by a signature.
    open_reasoning: String,
    tool_signatures: BTreeMap<u32, String>,
}

async fn collect(mut stream: EventStream) -> Collected {
    let mut c = Collected::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(StreamEvent::Start { .. }) => c.started = true,
            Ok(StreamEvent::TextDelta { text }) => {
                c.deltas_before_error += 1;
                c.text.push_str(&text);
            }
            Ok(StreamEvent::ReasoningDelta { text }) => {
                c.reasoning.push_str(&text);
                c.open_reasoning.push_str(&text);
            }
            Ok(StreamEvent::ReasoningSignature { signature }) => {
                c.reasoning_blocks.push(ReasoningBlock::Thinking {
                    text: std::mem::take(&mut c.open_reasoning),
                    signature: Some(signature),
                });
            }
            Ok(StreamEvent::RedactedReasoning { data }) => {
                c.reasoning_blocks.push(ReasoningBlock::Redacted { data });
            }
            Ok(StreamEvent::ToolCallSignature { index, signature }) => {
                c.tool_signatures.insert(index, signature);
            }
            Ok(StreamEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            }) => {
                let entry = c.tools.entry(index).or_default();
                if id.is_some() {
                    entry.0 = id;
                }
                if name.is_some() {
                    entry.1 = name;
                }
                entry.2.push_str(&arguments);
            }
            Ok(StreamEvent::Finish { reason }) => c.finish = Some(reason),
            Ok(StreamEvent::Usage { usage }) => c.usage = Some(usage),
            Err(e) => {
                c.error = Some(e);
                break;
            }
        }
    }
    c
}

fn user(text: &str) -> Message {
    Message::text(Role::User, text)
}

// ---------------------------------------------------------------------------------------------
// The checks

async fn plain_chat(case: Case) {
    let f = Fixture::new(case).await;
    f.mock.push(Script::text("Hello there, friend."));
    let r = f
        .chat(case, &request(vec![user("Say hello")]))
        .await
        .unwrap();
    assert_eq!(r.output.content.as_deref(), Some("Hello there, friend."));
    assert_eq!(r.finish_reason, FinishReason::Stop);
    assert!(r.usage.completion_tokens > 0, "{:?}", r.usage);
    assert!(r.usage.prompt_tokens > 0, "{:?}", r.usage);
    assert!(f.last_body().contains("Say hello"));
}

async fn multi_turn_with_system(case: Case) {
    let f = Fixture::new(case).await;
    f.mock.push(Script::text("Paris."));
    let req = request(vec![
        Message::text(Role::System, "You are terse-sys."),
        user("first-question"),
        Message::text(Role::Assistant, "first-answer"),
        user("second-question"),
    ]);
    let r = f.chat(case, &req).await.unwrap();
    assert_eq!(r.output.content.as_deref(), Some("Paris."));
    let body = f.last_body();
    for needle in [
        "You are terse-sys.",
        "first-question",
        "first-answer",
        "second-question",
    ] {
        assert!(body.contains(needle), "{needle} missing from {body}");
    }
    // The turns keep their order.
    let pos = |n: &str| body.find(n).unwrap();
    assert!(pos("first-question") < pos("first-answer"));
    assert!(pos("first-answer") < pos("second-question"));
}

async fn tools_round_trip(case: Case) {
    let f = Fixture::new(case).await;
    f.mock.push(Script::tool_calls([hub_testkit::ToolCall::new(
        "",
        "get_weather",
        r#"{"city":"Paris"}"#,
    )]));
    let mut req = request(vec![user("Weather in Paris?")]);
    req.tools = vec![weather_tool()];
    let r = f.chat(case, &req).await.unwrap();
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.output.tool_calls.len(), 1);
    let call = r.output.tool_calls[0].clone();
    assert_eq!(call.name, "get_weather");
    assert!(!call.id.is_empty());
    let args: Value = serde_json::from_str(&call.arguments).unwrap();
    assert_eq!(args, json!({"city":"Paris"}));
    assert!(f.last_body().contains("get_weather"));

    // Send the call and its result back.
    let mut assistant = Message::text(Role::Assistant, "");
    assistant.content.clear();
    assistant.tool_calls = vec![call.clone()];
    let mut result = Message::text(Role::Tool, "18C and sunny");
    result.tool_call_id = Some(call.id.clone());
    req.messages.push(assistant);
    req.messages.push(result);
    f.mock.push(Script::text("It is 18C."));
    let r = f.chat(case, &req).await.unwrap();
    assert_eq!(r.output.content.as_deref(), Some("It is 18C."));
    let body = f.last_body();
    assert!(body.contains("18C and sunny"), "{body}");
    assert!(body.contains("Paris"), "{body}");
}

async fn image_input(case: Case) {
    let f = Fixture::new(case).await;
    f.mock.push(Script::text("A pixel."));
    let msg = Message {
        role: Role::User,
        content: vec![
            ContentPart::Text {
                text: "What is this?".into(),
            },
            ContentPart::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: TINY_PNG.into(),
                },
                detail: None,
            },
        ],
        content_is_text: false,
        tool_calls: vec![],
        tool_call_id: None,
        name: None,
        reasoning: None,
        reasoning_blocks: vec![],
    };
    let r = f.chat(case, &request(vec![msg])).await.unwrap();
    assert_eq!(r.output.content.as_deref(), Some("A pixel."));
    let body = f.last_body();
    assert!(body.contains(TINY_PNG), "image bytes not sent: {body}");
    // `image/png` (most) or `"format":"png"` (Bedrock).
    assert!(body.contains("png"), "media type not sent: {body}");
}

async fn stream_text(case: Case) {
    let f = Fixture::new(case).await;
    f.mock
        .push(Script::text("one two three four five").with_usage(MockUsage::new(11, 5)));
    let s = f.stream(case, &request(vec![user("count")])).await.unwrap();
    let c = collect(s).await;
    assert!(c.error.is_none(), "{:?}", c.error);
    assert!(c.started);
    assert_eq!(c.text, "one two three four five");
    assert!(c.deltas_before_error >= 2, "text came in one piece");
    assert_eq!(c.finish, Some(FinishReason::Stop));
    let u = c.usage.unwrap();
    assert_eq!((u.prompt_tokens, u.completion_tokens), (11, 5));
    assert_eq!(f.mock.stats().streams_completed, 1);
}

async fn stream_tool_calls(case: Case) {
    let f = Fixture::new(case).await;
    f.mock.push(Script::tool_calls([
        hub_testkit::ToolCall::new("", "get_weather", r#"{"city":"Paris","unit":"celsius"}"#),
        hub_testkit::ToolCall::new("", "get_time", r#"{"tz":"Europe/Paris"}"#),
    ]));
    let mut req = request(vec![user("Weather and time in Paris?")]);
    req.tools = vec![
        weather_tool(),
        Tool {
            name: "get_time".into(),
            description: None,
            parameters: json!({"type":"object","properties":{"tz":{"type":"string"}}}),
            strict: None,
        },
    ];
    let s = f.stream(case, &req).await.unwrap();
    let c = collect(s).await;
    assert!(c.error.is_none(), "{:?}", c.error);
    assert_eq!(c.finish, Some(FinishReason::ToolCalls));
    assert_eq!(c.tools.len(), 2, "{:?}", c.tools);
    let calls: Vec<_> = c.tools.values().collect();
    assert_eq!(calls[0].1.as_deref(), Some("get_weather"));
    assert_eq!(calls[1].1.as_deref(), Some("get_time"));
    assert!(
        calls
            .iter()
            .all(|c| c.0.as_deref().is_some_and(|id| !id.is_empty()))
    );
    let a0: Value = serde_json::from_str(&calls[0].2).unwrap();
    let a1: Value = serde_json::from_str(&calls[1].2).unwrap();
    assert_eq!(a0, json!({"city":"Paris","unit":"celsius"}));
    assert_eq!(a1, json!({"tz":"Europe/Paris"}));
    assert!(c.usage.is_some());
}

async fn usage_normalisation(case: Case) {
    // The truth: 100 prompt tokens of which 30 cache reads and 10 cache writes; 50 completion
    // tokens of which 20 reasoning. Every provider renders it in its own wire shape.
    let truth = MockUsage::new(100, 50)
        .with_cached(30)
        .with_cache_write(10)
        .with_reasoning(20);
    let check = |u: Usage, how: &str| {
        assert_eq!(u.prompt_tokens, 100, "{how} prompt {u:?}");
        assert_eq!(u.completion_tokens, 50, "{how} completion {u:?}");
        assert_eq!(
            u.cache_read_tokens,
            if case.reports_cached { 30 } else { 0 },
            "{how} cache read {u:?}"
        );
        assert_eq!(
            u.cache_write_tokens,
            if case.reports_cache_write { 10 } else { 0 },
            "{how} cache write {u:?}"
        );
        assert_eq!(
            u.reasoning_tokens,
            if case.reports_reasoning { 20 } else { 0 },
            "{how} reasoning {u:?}"
        );
        assert!(!u.estimated, "{how}");
    };
    let f = Fixture::new(case).await;
    f.mock.push(
        Script::text("ok")
            .with_reasoning("thinking hard")
            .with_usage(truth.clone()),
    );
    let r = f.chat(case, &request(vec![user("hi")])).await.unwrap();
    check(r.usage, "json");
    f.mock.push(
        Script::text("ok")
            .with_reasoning("thinking hard")
            .with_usage(truth),
    );
    let c = collect(f.stream(case, &request(vec![user("hi")])).await.unwrap()).await;
    assert!(c.error.is_none(), "{:?}", c.error);
    check(c.usage.unwrap(), "stream");
}

/// Asserts the provider's classification and what the caller is told.
fn assert_caller_sees(case: Case, e: &ProviderError, class: ErrorClass, status: u16) {
    assert_eq!(e.class, class, "{e:?}");
    let h = HubError::from_provider(case.kind.name(), e);
    assert_eq!(h.status(), status, "{h:?}");
    assert!(h.message.contains(case.kind.name()), "{}", h.message);
}

async fn error_auth(case: Case) {
    if !case.authenticates {
        return;
    }
    let f = Fixture::new(case).await;
    let wrong = if case.kind == ProviderKind::Bedrock {
        CredentialSecret {
            api_key: Some(Secret::new(f.mock.api_key())),
            secret_key: Some(Secret::new("not-the-secret")),
            session_token: None,
        }
    } else {
        CredentialSecret::api_key("sk-wrong-key-0000")
    };
    let imp = implementation(case.kind).unwrap();
    let up = Upstream {
        credential: &wrong,
        ..f.up(case.model)
    };
    let e = imp.chat(up, &request(vec![user("hi")])).await.unwrap_err();
    assert_caller_sees(case, &e, ErrorClass::Auth, 502);
    assert!(!e.message.contains("not-the-secret"));
    let e = imp
        .chat_stream(up, &request(vec![user("hi")]))
        .await
        .err()
        .unwrap();
    assert_eq!(e.class, ErrorClass::Auth);
}

async fn error_rate_limit(case: Case) {
    let f = Fixture::new(case).await;
    f.mock.push(Script::error(429).with_retry_after(2));
    let e = f.chat(case, &request(vec![user("hi")])).await.unwrap_err();
    assert_caller_sees(case, &e, ErrorClass::RateLimited, 429);
    let expected = case.retry_hint.then_some(Duration::from_secs(2));
    assert_eq!(e.retry_after, expected);
    assert_eq!(
        HubError::from_provider(case.kind.name(), &e).retry_after,
        expected
    );
    // Same on a stream (before the first byte).
    f.mock.push(Script::error(429).with_retry_after(2));
    let e = f
        .stream(case, &request(vec![user("hi")]))
        .await
        .err()
        .unwrap();
    assert_eq!(e.class, ErrorClass::RateLimited);
}

async fn error_overloaded(case: Case) {
    let f = Fixture::new(case).await;
    f.mock.push(Script::error(case.overloaded_status));
    let e = f.chat(case, &request(vec![user("hi")])).await.unwrap_err();
    assert_caller_sees(case, &e, ErrorClass::Overloaded, 503);
    assert!(e.class.retryable());
}

async fn error_context_length(case: Case) {
    let f = Fixture::new(case).await;
    let (status, body) = (case.context_error)();
    f.mock.push(Script::new().with_error(status, body));
    let e = f
        .chat(case, &request(vec![user("very long")]))
        .await
        .unwrap_err();
    assert_caller_sees(case, &e, ErrorClass::ContextLength, 400);
    let h = HubError::from_provider(case.kind.name(), &e);
    assert_eq!(h.kind, ErrorKind::InvalidRequest);
    assert_eq!(h.code.as_deref(), Some("context_length_exceeded"));
    assert!(!e.class.retryable());
}

async fn error_server(case: Case) {
    let f = Fixture::new(case).await;
    f.mock.push(Script::error(500));
    let e = f.chat(case, &request(vec![user("hi")])).await.unwrap_err();
    assert_caller_sees(case, &e, ErrorClass::Server, 502);
    assert!(e.class.retryable());
}

async fn error_mid_stream(case: Case) {
    let f = Fixture::new(case).await;
    f.mock
        .push(Script::text("alpha beta gamma delta epsilon").with_error_after_chunks(2));
    let c = collect(f.stream(case, &request(vec![user("hi")])).await.unwrap()).await;
    let e = c.error.expect("a mid-stream error");
    assert!(c.started);
    assert_eq!(c.text, "alpha beta");
    assert!(
        matches!(
            e.class,
            ErrorClass::Server | ErrorClass::Overloaded | ErrorClass::StreamInterrupted
        ),
        "{e:?}"
    );
    let h = HubError::from_provider(case.kind.name(), &e);
    assert!(matches!(h.status(), 502 | 503), "{h:?}");
}

async fn stream_dropped(case: Case) {
    let f = Fixture::new(case).await;
    f.mock
        .push(Script::text("alpha beta gamma delta").with_drop_after_chunks(1));
    let c = collect(f.stream(case, &request(vec![user("hi")])).await.unwrap()).await;
    let e = c
        .error
        .expect("a broken stream is an error, not a short success");
    assert_eq!(e.class, ErrorClass::StreamInterrupted, "{e:?}");
    assert_eq!(c.finish, None);
}

async fn stream_cancel(case: Case) {
    let f = Fixture::new(case).await;
    f.mock
        .push(Script::text("a b c d e f g h i j k l m n o p").with_chunk_delay_ms(50));
    let mut s = f.stream(case, &request(vec![user("hi")])).await.unwrap();
    // Read until the first content, then walk away.
    loop {
        match s.next().await {
            Some(Ok(StreamEvent::TextDelta { .. })) => break,
            Some(Ok(_)) => {}
            other => panic!("stream ended early: {other:?}"),
        }
    }
    drop(s);
    for _ in 0..100 {
        if f.mock.stats().streams_cancelled_by_client == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = f.mock.stats();
    assert_eq!(stats.streams_cancelled_by_client, 1, "{stats:?}");
    assert_eq!(stats.streams_completed, 0);
}

async fn embeddings(case: Case) {
    let f = Fixture::new(case).await;
    let imp = implementation(case.kind).unwrap();
    let Some(model) = case.embeddings_model else {
        let req = EmbeddingsRequest {
            model: "x".into(),
            input: json!("hi"),
            dimensions: None,
            encoding_format: None,
            user: None,
            extra: Default::default(),
        };
        let e = imp.embeddings(f.up("x"), &req).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Unsupported);
        assert_eq!(
            f.mock.hits(),
            0,
            "an unsupported call must not reach the upstream"
        );
        return;
    };
    let req = EmbeddingsRequest {
        model: model.into(),
        input: json!(["first text", "second text"]),
        dimensions: Some(16),
        encoding_format: None,
        user: None,
        extra: Default::default(),
    };
    let r = imp.embeddings(f.up(model), &req).await.unwrap();
    assert_eq!(r.data.len(), 2);
    for (i, e) in r.data.iter().enumerate() {
        assert_eq!(e.index as usize, i);
        assert_eq!(e.embedding.as_array().unwrap().len(), 16);
    }
    assert_ne!(r.data[0].embedding, r.data[1].embedding);
}

async fn images(case: Case) {
    let f = Fixture::new(case).await;
    let imp = implementation(case.kind).unwrap();
    let model = case.images_model.unwrap_or("x");
    let req = ImagesRequest {
        model: model.into(),
        prompt: "a red square".into(),
        n: Some(1),
        ..ImagesRequest::default()
    };
    let result = imp.images(f.up(model), &req).await;
    if case.images_model.is_none() {
        assert_eq!(result.unwrap_err().class, ErrorClass::Unsupported);
        assert_eq!(f.mock.hits(), 0);
        return;
    }
    let r = result.unwrap();
    assert_eq!(r.data.len(), 1);
    let img = &r.data[0];
    assert!(img.b64_json.is_some() || img.url.is_some());
    assert!(r.usage.images >= 1, "{:?}", r.usage);
}

/// The provider's own prompt-token count (Anthropic `count_tokens`, Gemini `countTokens`, Bedrock
/// `CountTokens`): the mock answers the scripted count, so only the provider's number can match;
/// others are unsupported without a request. An upstream failure is an error (the hub then
/// answers with its estimate).
async fn count_tokens(case: Case) {
    let f = Fixture::new(case).await;
    let imp = implementation(case.kind).unwrap();
    let mut req = request(vec![
        Message::text(Role::System, "Be terse-sys."),
        user("How many tokens is this?"),
    ]);
    req.tools = vec![weather_tool()];
    req.max_tokens = Some(100);
    f.mock
        .push(Script::text("never generated").with_usage(MockUsage::new(4242, 1)));
    let result = imp.count_tokens(f.up(case.model), &req).await;
    if !case.counts_tokens {
        assert_eq!(result.unwrap_err().class, ErrorClass::Unsupported);
        assert_eq!(f.mock.hits(), 0);
        return;
    }
    assert_eq!(result.unwrap(), 4242);
    let body = f.last_body();
    assert!(body.contains("How many tokens is this?"), "{body}");
    assert!(body.contains("Be terse-sys."), "{body}");
    f.mock.push(Script::error(500));
    assert!(imp.count_tokens(f.up(case.model), &req).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Reasoning signatures (Anthropic, Bedrock: thinking blocks; Gemini: thoughtSignature on calls)

/// The first turn of a tool loop with thinking on: the reasoning blocks and tool calls the
/// provider returned, from a JSON call or reassembled from a stream.
async fn first_thinking_turn(
    f: &Fixture,
    case: Case,
    req: &ChatRequest,
    stream: bool,
) -> (Vec<ReasoningBlock>, Vec<ToolCall>) {
    if !stream {
        let r = f.chat(case, req).await.unwrap();
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        return (r.output.reasoning_blocks, r.output.tool_calls);
    }
    let c = collect(f.stream(case, req).await.unwrap()).await;
    assert!(c.error.is_none(), "{:?}", c.error);
    assert_eq!(c.finish, Some(FinishReason::ToolCalls));
    assert!(
        c.open_reasoning.is_empty(),
        "reasoning without its signature"
    );
    let calls = c
        .tools
        .iter()
        .map(|(i, (id, name, args))| ToolCall {
            id: id.clone().unwrap_or_default(),
            name: name.clone().unwrap_or_default(),
            arguments: args.clone(),
            signature: c.tool_signatures.get(i).cloned(),
        })
        .collect();
    (c.reasoning_blocks, calls)
}

/// The follow-up request: the assistant turn as returned plus the tool's result.
fn follow_up(
    mut req: ChatRequest,
    blocks: Vec<ReasoningBlock>,
    calls: Vec<ToolCall>,
) -> ChatRequest {
    let mut assistant = Message::text(Role::Assistant, "");
    assistant.content.clear();
    assistant.reasoning_blocks = blocks;
    let mut result = Message::text(Role::Tool, "18C and sunny");
    result.tool_call_id = Some(calls[0].id.clone());
    assistant.tool_calls = calls;
    req.messages.push(assistant);
    req.messages.push(result);
    req
}

async fn rejected(f: &Fixture, case: Case, req: &ChatRequest, needle: &str) {
    let hits = f.mock.hits();
    let e = f.chat(case, req).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::InvalidRequest, "{e:?}");
    assert!(e.message.contains(needle), "{needle} not in {}", e.message);
    assert_eq!(f.mock.hits(), hits + 1);
}

/// Anthropic and Bedrock: extended thinking + a tool loop. The thinking and redacted blocks come
/// back with their signatures and go out again unchanged and in order; the mock (like the real
/// API) rejects the follow-up without them or with them altered.
async fn thinking_signatures_round_trip(case: Case, stream: bool) {
    let f = Fixture::new(case).await;
    let thought = "The user wants the weather. I will call get_weather.";
    f.mock.push(
        Script::tool_calls([hub_testkit::ToolCall::new(
            "",
            "get_weather",
            r#"{"city":"Paris"}"#,
        )])
        .with_reasoning(thought)
        .with_redacted_reasoning("encrypted reasoning"),
    );
    let mut req = request(vec![user("Weather in Paris?")]);
    req.tools = vec![weather_tool()];
    req.reasoning_effort = Some("low".into());
    req.max_tokens = Some(4096);
    let (blocks, calls) = first_thinking_turn(&f, case, &req, stream).await;
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    let ReasoningBlock::Thinking {
        text,
        signature: Some(signature),
    } = &blocks[0]
    else {
        panic!("first block is not signed thinking: {blocks:?}")
    };
    assert_eq!(text, thought);
    assert!(matches!(&blocks[1], ReasoningBlock::Redacted { data } if !data.is_empty()));
    let signature = signature.clone();
    let req = follow_up(req, blocks, calls);

    f.mock.push(Script::text("It is 18C."));
    let r = f.chat(case, &req).await.unwrap();
    assert_eq!(r.output.content.as_deref(), Some("It is 18C."));
    let body = f.last_body();
    let (sig_at, text_at) = (body.find(&signature).unwrap(), body.find(thought).unwrap());
    let tool_at = body.find("get_weather").unwrap();
    assert!(body.find("18C and sunny").is_some());
    assert!(
        text_at < tool_at && sig_at < tool_at,
        "thinking must precede the tool call: {body}"
    );

    // What the real API does with a history that lost or altered its thinking.
    let mut stripped = req.clone();
    stripped.messages[1].reasoning_blocks.clear();
    rejected(
        &f,
        case,
        &stripped,
        "Expected `thinking` or `redacted_thinking`, but found `tool_use`",
    )
    .await;
    let mut altered = req.clone();
    if let ReasoningBlock::Thinking { signature, .. } = &mut altered.messages[1].reasoning_blocks[0]
    {
        *signature = Some(format!("{}x", signature.clone().unwrap_or_default()));
    }
    rejected(
        &f,
        case,
        &altered,
        "Invalid `signature` in `thinking` block",
    )
    .await;
    let mut edited = req.clone();
    if let ReasoningBlock::Thinking { text, .. } = &mut edited.messages[1].reasoning_blocks[0] {
        text.push_str(" (edited)");
    }
    rejected(&f, case, &edited, "Invalid `signature` in `thinking` block").await;
    // With thinking off, nothing is sent back and nothing is checked.
    let mut off = stripped.clone();
    off.reasoning_effort = None;
    f.mock.push(Script::text("ok"));
    assert!(f.chat(case, &off).await.is_ok());
}

/// Gemini 3: the `thoughtSignature` of a function call comes back on the call and goes out on
/// the same part; the mock (like the real API) rejects the call without it or with another.
async fn call_signatures_round_trip(case: Case, stream: bool) {
    let f = Fixture::new(case).await;
    f.mock.push(Script::tool_calls([hub_testkit::ToolCall::new(
        "",
        "get_weather",
        r#"{"city":"Paris"}"#,
    )]));
    let mut req = request(vec![user("Weather in Paris?")]);
    req.tools = vec![weather_tool()];
    let (blocks, calls) = first_thinking_turn(&f, case, &req, stream).await;
    assert!(blocks.is_empty());
    let signature = calls[0].signature.clone().expect("call signature");
    let req = follow_up(req, blocks, calls);
    f.mock.push(Script::text("It is 18C."));
    let r = f.chat(case, &req).await.unwrap();
    assert_eq!(r.output.content.as_deref(), Some("It is 18C."));
    let sent: Value = serde_json::from_str(&f.last_body()).unwrap();
    assert_eq!(
        sent["contents"][1]["parts"][0]["thoughtSignature"],
        json!(signature)
    );

    let mut stripped = req.clone();
    stripped.messages[1].tool_calls[0].signature = None;
    rejected(&f, case, &stripped, "missing a thought_signature").await;
    let mut altered = req.clone();
    altered.messages[1].tool_calls[0].signature = Some(format!("{signature}x"));
    rejected(&f, case, &altered, "Thought signature is not valid").await;
}

// ---------------------------------------------------------------------------------------------
// The providers

fn openai_context() -> (u16, Value) {
    (
        400,
        json!({"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 210000 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}),
    )
}

fn deepseek_context() -> (u16, Value) {
    (
        400,
        json!({"error":{"message":"This model's maximum context length is 131072 tokens. However, you requested 210000 tokens (210000 in the messages, 0 in the completion). Please reduce the length of the messages or completion.","type":"invalid_request_error","param":null,"code":"invalid_request_error"}}),
    )
}

fn xai_context() -> (u16, Value) {
    (
        400,
        json!({"code":"Client specified an invalid argument","error":"This model's maximum prompt length is 131072 but the request contains 210000 tokens."}),
    )
}

fn openrouter_context() -> (u16, Value) {
    (
        400,
        json!({"error":{"code":400,"message":"This endpoint's maximum context length is 128000 tokens. However, you requested about 210000 tokens (210000 of text input). Please reduce the length of either one, or use the \"middle-out\" transform to compress your prompt automatically."}}),
    )
}

fn doubao_context() -> (u16, Value) {
    (
        400,
        json!({"error":{"code":"InvalidParameter","message":"The request failed because the input exceeds the model's context length. Request id: 021700000000000000000","param":"messages","type":"BadRequest"}}),
    )
}

fn poe_context() -> (u16, Value) {
    (
        400,
        json!({"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}),
    )
}

fn ollama_context() -> (u16, Value) {
    (
        400,
        json!({"error":{"message":"the input length exceeds the context length","type":"invalid_request_error","param":null,"code":null}}),
    )
}

fn anthropic_context() -> (u16, Value) {
    (
        400,
        json!({"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}),
    )
}

fn gemini_context() -> (u16, Value) {
    (
        400,
        json!({"error":{"code":400,"message":"The input token count (1210000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}),
    )
}

const fn family(
    kind: ProviderKind,
    flavor: Flavor,
    model: &'static str,
    context_error: fn() -> (u16, Value),
) -> Case {
    Case {
        kind,
        flavor,
        model,
        reports_cached: true,
        reports_cache_write: false,
        reports_reasoning: true,
        retry_hint: true,
        overloaded_status: 503,
        authenticates: true,
        embeddings_model: None,
        images_model: None,
        counts_tokens: false,
        context_error,
    }
}

const OPENAI: Case = Case {
    reports_cache_write: true,
    embeddings_model: Some("text-embedding-3-small"),
    images_model: Some("gpt-image-1"),
    ..family(
        ProviderKind::OpenAi,
        Flavor::OpenAi,
        "gpt-4o-mini",
        openai_context,
    )
};
const DEEPSEEK: Case = family(
    ProviderKind::DeepSeek,
    Flavor::DeepSeek,
    "deepseek-chat",
    deepseek_context,
);
const XAI: Case = Case {
    images_model: Some("grok-2-image"),
    ..family(ProviderKind::Xai, Flavor::Xai, "grok-3-mini", xai_context)
};
const OPENROUTER: Case = Case {
    reports_cache_write: true,
    embeddings_model: Some("openai/text-embedding-3-small"),
    ..family(
        ProviderKind::OpenRouter,
        Flavor::OpenRouter,
        "openai/gpt-4o-mini",
        openrouter_context,
    )
};
const DOUBAO: Case = Case {
    embeddings_model: Some("doubao-embedding-text-240715"),
    images_model: Some("doubao-seedream-4-0-250828"),
    ..family(
        ProviderKind::Doubao,
        Flavor::Doubao,
        "doubao-seed-1-6-250615",
        doubao_context,
    )
};
const POE: Case = Case {
    reports_cached: false,
    reports_reasoning: false,
    ..family(ProviderKind::Poe, Flavor::Poe, "GPT-4o", poe_context)
};
const OLLAMA: Case = Case {
    reports_cached: false,
    reports_reasoning: false,
    authenticates: false,
    embeddings_model: Some("nomic-embed-text"),
    ..family(
        ProviderKind::Ollama,
        Flavor::Ollama,
        "llama3.2",
        ollama_context,
    )
};
const ANTHROPIC: Case = Case {
    reports_cache_write: true,
    reports_reasoning: false,
    overloaded_status: 529,
    counts_tokens: true,
    ..family(
        ProviderKind::Anthropic,
        Flavor::Anthropic,
        "claude-sonnet-4-5",
        anthropic_context,
    )
};

const GEMINI: Case = Case {
    embeddings_model: Some("gemini-embedding-001"),
    images_model: Some("gemini-2.5-flash-image"),
    counts_tokens: true,
    ..family(
        ProviderKind::Google,
        Flavor::Gemini,
        "gemini-2.5-flash",
        gemini_context,
    )
};

fn bedrock_context() -> (u16, Value) {
    (
        400,
        json!({"message":"Input is too long for requested model."}),
    )
}

const BEDROCK: Case = Case {
    reports_cache_write: true,
    reports_reasoning: false,
    retry_hint: false,
    embeddings_model: Some("amazon.titan-embed-text-v2:0"),
    images_model: Some("amazon.nova-canvas-v1:0"),
    counts_tokens: true,
    ..family(
        ProviderKind::Bedrock,
        Flavor::Bedrock,
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        bedrock_context,
    )
};

macro_rules! conformance {
    ($($module:ident => $case:expr;)*) => {$(
        mod $module {
            use super::*;
            #[tokio::test] async fn plain_chat() { super::plain_chat($case).await }
            #[tokio::test] async fn multi_turn_with_system() { super::multi_turn_with_system($case).await }
            #[tokio::test] async fn tools_round_trip() { super::tools_round_trip($case).await }
            #[tokio::test] async fn image_input() { super::image_input($case).await }
            #[tokio::test] async fn stream_text() { super::stream_text($case).await }
            #[tokio::test] async fn stream_tool_calls() { super::stream_tool_calls($case).await }
            #[tokio::test] async fn usage_normalisation() { super::usage_normalisation($case).await }
            #[tokio::test] async fn error_auth() { super::error_auth($case).await }
            #[tokio::test] async fn error_rate_limit() { super::error_rate_limit($case).await }
            #[tokio::test] async fn error_overloaded() { super::error_overloaded($case).await }
            #[tokio::test] async fn error_context_length() { super::error_context_length($case).await }
            #[tokio::test] async fn error_server() { super::error_server($case).await }
            #[tokio::test] async fn error_mid_stream() { super::error_mid_stream($case).await }
            #[tokio::test] async fn stream_dropped() { super::stream_dropped($case).await }
            #[tokio::test] async fn stream_cancel() { super::stream_cancel($case).await }
            #[tokio::test] async fn embeddings() { super::embeddings($case).await }
            #[tokio::test] async fn images() { super::images($case).await }
            #[tokio::test] async fn count_tokens() { super::count_tokens($case).await }
        }
    )*};
}

conformance! {
    openai => OPENAI;
    deepseek => DEEPSEEK;
    xai => XAI;
    openrouter => OPENROUTER;
    doubao => DOUBAO;
    poe => POE;
    ollama => OLLAMA;
    anthropic => ANTHROPIC;
    gemini => GEMINI;
    bedrock => BEDROCK;
}

macro_rules! signatures {
    ($($module:ident => $check:ident, $case:expr;)*) => {$(
        mod $module {
            use super::*;
            #[tokio::test] async fn round_trip() { super::$check($case, false).await }
            #[tokio::test] async fn round_trip_stream() { super::$check($case, true).await }
        }
    )*};
}

mod signatures {
    use super::*;
    signatures! {
        anthropic => thinking_signatures_round_trip, ANTHROPIC;
        bedrock => thinking_signatures_round_trip, BEDROCK;
        gemini => call_signatures_round_trip, Case { model: "gemini-3-pro-preview", ..GEMINI };
    }
}

/// Every provider is in the suite.
#[test]
fn every_provider_is_covered() {
    let covered = [
        OPENAI, DEEPSEEK, XAI, OPENROUTER, DOUBAO, POE, OLLAMA, ANTHROPIC, GEMINI, BEDROCK,
    ];
    for kind in ProviderKind::ALL {
        assert!(
            covered.iter().any(|c| c.kind == kind),
            "{kind} has no conformance case"
        );
    }
}
