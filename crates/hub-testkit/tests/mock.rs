//! Black-box tests of the mock upstreams over real HTTP (reqwest).

#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected shapes")]

use std::time::Duration;

use futures::StreamExt as _;
use hub_testkit::{Flavor, MockServer, Script, ToolCall, Usage};
use serde_json::{Value, json};

/// A parsed SSE body.
#[derive(Debug, Default)]
struct Sse {
    /// `data:` payloads, in order (including `[DONE]`).
    data: Vec<String>,
    comments: Vec<String>,
}

impl Sse {
    fn parse(raw: &str) -> Sse {
        let mut sse = Sse::default();
        for block in raw.split("\n\n") {
            for line in block.lines() {
                if let Some(d) = line.strip_prefix("data: ") {
                    sse.data.push(d.to_owned());
                } else if let Some(c) = line.strip_prefix(':') {
                    sse.comments.push(c.trim().to_owned());
                }
            }
        }
        sse
    }

    /// JSON chunks (everything but `[DONE]`).
    fn chunks(&self) -> Vec<Value> {
        self.data
            .iter()
            .filter(|d| d.as_str() != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn done(&self) -> bool {
        self.data.last().map(String::as_str) == Some("[DONE]")
    }

    /// Concatenated `delta.content` strings.
    fn content(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    fn delta_field(&self, field: &str) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| c["choices"][0]["delta"][field].as_str().map(str::to_owned))
            .collect()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(mock: &MockServer, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.base_url()))
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn chat(mock: &MockServer, body: Value) -> (u16, Value) {
    let resp = post(mock, "/chat/completions", body).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn chat_stream(mock: &MockServer, mut body: Value) -> Sse {
    body["stream"] = json!(true);
    let resp = post(mock, "/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Sse::parse(&resp.text().await.unwrap())
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello to the mock please"}]})
}

#[test]
fn flavor_names_round_trip() {
    for f in Flavor::all_openai_family() {
        assert_eq!(Flavor::from_name(f.name()), Some(f));
    }
    assert_eq!(Flavor::from_name("nope"), None);
}

#[tokio::test]
async fn base_urls_per_flavor() {
    let expect = [
        (Flavor::OpenAi, "/v1"),
        (Flavor::DeepSeek, ""),
        (Flavor::Xai, "/v1"),
        (Flavor::OpenRouter, "/api/v1"),
        (Flavor::Doubao, "/api/v3"),
        (Flavor::Poe, "/v1"),
        (Flavor::Ollama, "/v1"),
    ];
    for (flavor, suffix) in expect {
        let mock = MockServer::start(flavor).await;
        assert!(mock.origin().starts_with("http://127.0.0.1:"));
        assert_eq!(mock.base_url(), format!("{}{suffix}", mock.origin()));
    }
}

#[tokio::test]
async fn non_stream_shapes_per_flavor() {
    for flavor in Flavor::all_openai_family() {
        let mock = MockServer::start(flavor).await;
        let (status, body) = chat(&mock, hello("m1")).await;
        assert_eq!(status, 200, "{flavor}: {body}");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "m1");
        let msg = &body["choices"][0]["message"];
        assert_eq!(msg["role"], "assistant");
        assert_eq!(
            msg["content"],
            format!("Hello from mock {}.", flavor.name()),
            "{flavor}"
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        let usage = &body["usage"];
        // "Say hello to the mock please" = 28 chars -> 7 tokens; reply has 4 words.
        assert_eq!(usage["prompt_tokens"], 7, "{flavor}: {usage}");
        assert_eq!(usage["completion_tokens"], 4, "{flavor}");
        assert_eq!(usage["total_tokens"], 11, "{flavor}");
        match flavor {
            Flavor::DeepSeek => {
                assert_eq!(usage["prompt_cache_miss_tokens"], 7);
                assert_eq!(usage["prompt_cache_hit_tokens"], 0);
            }
            Flavor::OpenRouter => {
                assert!(usage["cost"].is_number());
                assert!(usage["cost_details"].is_object());
                assert_eq!(body["provider"], "OpenAI");
                assert_eq!(body["choices"][0]["native_finish_reason"], "stop");
            }
            Flavor::Ollama | Flavor::Poe => {
                assert_eq!(usage.as_object().unwrap().len(), 3, "{flavor}: {usage}");
            }
            _ => {}
        }
        assert_eq!(mock.hits(), 1);
    }
}

#[tokio::test]
async fn usage_truth_rendered_per_flavor() {
    let truth = Usage::new(100, 50)
        .with_cached(40)
        .with_reasoning(30)
        .with_cache_write(5);
    for flavor in Flavor::all_openai_family() {
        let mock = MockServer::start(flavor).await;
        mock.push(
            Script::text("ok")
                .with_reasoning("thinking hard")
                .with_usage(truth.clone()),
        );
        let (_, body) = chat(&mock, hello("m")).await;
        let u = &body["usage"];
        assert_eq!(u["prompt_tokens"], 100, "{flavor}");
        assert_eq!(u["total_tokens"], 150, "{flavor}");
        match flavor {
            Flavor::Xai => {
                assert_eq!(u["completion_tokens"], 20);
                assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 30);
                assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 40);
            }
            Flavor::DeepSeek => {
                assert_eq!(u["completion_tokens"], 50);
                assert_eq!(u["prompt_cache_hit_tokens"], 40);
                assert_eq!(u["prompt_cache_miss_tokens"], 60);
                assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 30);
            }
            Flavor::OpenRouter => {
                assert_eq!(u["prompt_tokens_details"]["cache_write_tokens"], 5);
                assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 40);
            }
            Flavor::OpenAi | Flavor::Doubao => {
                assert_eq!(u["completion_tokens"], 50);
                assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 40);
                assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 30);
            }
            Flavor::Poe | Flavor::Ollama => {
                assert_eq!(u["completion_tokens"], 50);
                assert!(u.get("prompt_tokens_details").is_none());
            }
            Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock => {
                unreachable!("OpenAI family only")
            }
        }
        // Reasoning text placement.
        let msg = &body["choices"][0]["message"];
        match flavor {
            Flavor::DeepSeek | Flavor::Xai | Flavor::Doubao => {
                assert_eq!(msg["reasoning_content"], "thinking hard")
            }
            Flavor::OpenRouter | Flavor::Ollama => assert_eq!(msg["reasoning"], "thinking hard"),
            Flavor::OpenAi | Flavor::Poe => {
                assert!(msg.get("reasoning_content").is_none() && msg.get("reasoning").is_none())
            }
            Flavor::Anthropic | Flavor::Gemini | Flavor::Bedrock => {
                unreachable!("OpenAI family only")
            }
        }
    }
}

#[tokio::test]
async fn stream_shapes_per_flavor() {
    for flavor in Flavor::all_openai_family() {
        for include_usage in [false, true] {
            let mock = MockServer::start(flavor).await;
            let mut req = hello("m2");
            if include_usage {
                req["stream_options"] = json!({"include_usage": true});
            }
            let sse = chat_stream(&mock, req).await;
            let ctx = format!("{flavor} include_usage={include_usage}");
            assert!(sse.done(), "{ctx}: no [DONE]");
            let chunks = sse.chunks();
            assert!(
                chunks
                    .iter()
                    .all(|c| c["object"] == "chat.completion.chunk"),
                "{ctx}"
            );
            assert_eq!(
                chunks[0]["choices"][0]["delta"]["role"], "assistant",
                "{ctx}: first chunk has the role"
            );
            assert_eq!(
                sse.content(),
                format!("Hello from mock {}.", flavor.name()),
                "{ctx}"
            );
            let finish: Vec<&Value> = chunks
                .iter()
                .filter(|c| c["choices"][0]["finish_reason"].is_string())
                .collect();
            assert_eq!(finish.len(), 1, "{ctx}");
            assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
            let with_usage: Vec<&Value> =
                chunks.iter().filter(|c| c["usage"].is_object()).collect();
            match flavor {
                Flavor::DeepSeek => {
                    assert!(sse.comments.iter().any(|c| c == "keep-alive"), "{ctx}");
                    // Usage rides on the finish chunk, choices non-empty.
                    assert_eq!(with_usage.len(), 1, "{ctx}");
                    assert_eq!(with_usage[0]["choices"][0]["finish_reason"], "stop");
                    assert!(with_usage[0]["usage"]["prompt_cache_hit_tokens"].is_number());
                    assert!(
                        chunks[..chunks.len() - 1]
                            .iter()
                            .all(|c| c.get("usage") == Some(&Value::Null))
                    );
                }
                Flavor::OpenRouter => {
                    assert!(
                        sse.comments.iter().any(|c| c == "OPENROUTER PROCESSING"),
                        "{ctx}"
                    );
                    // Always usage, in the last chunk, with cost.
                    assert_eq!(with_usage.len(), 1, "{ctx}");
                    let last = chunks.last().unwrap();
                    assert!(last["usage"]["cost"].is_number(), "{ctx}");
                    assert_eq!(last["provider"], "OpenAI");
                    assert!(chunks.iter().all(|c| c["provider"] == "OpenAI"));
                }
                _ => {
                    if include_usage {
                        assert_eq!(with_usage.len(), 1, "{ctx}");
                        let last = chunks.last().unwrap();
                        assert_eq!(last["choices"], json!([]), "{ctx}");
                        assert_eq!(last["usage"]["completion_tokens"], 4, "{ctx}");
                        if matches!(flavor, Flavor::OpenAi | Flavor::Doubao | Flavor::Poe) {
                            assert!(
                                chunks[..chunks.len() - 1]
                                    .iter()
                                    .all(|c| c.get("usage") == Some(&Value::Null)),
                                "{ctx}"
                            );
                        }
                    } else {
                        assert!(with_usage.is_empty(), "{ctx}");
                        assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{ctx}");
                    }
                }
            }
            if flavor == Flavor::Xai {
                // finish_reason/logprobs keys only on the final choice chunk.
                for c in &chunks {
                    if let Some(choice) = c["choices"].get(0)
                        && choice.get("finish_reason").is_none()
                    {
                        assert!(choice.get("logprobs").is_none());
                    }
                }
                let without: usize = chunks
                    .iter()
                    .filter(|c| {
                        c["choices"]
                            .get(0)
                            .is_some_and(|ch| ch.get("finish_reason").is_none())
                    })
                    .count();
                assert!(without >= 4, "{ctx}");
            }
            if flavor == Flavor::Ollama {
                assert_eq!(finish[0]["choices"][0]["delta"], json!({}));
            }
            assert_eq!(mock.stats().streams_started, 1);
        }
    }
}

#[tokio::test]
async fn stream_reasoning_and_xai_usage_arithmetic() {
    let mock = MockServer::start(Flavor::Xai).await;
    mock.push(
        Script::text("Hi there")
            .with_reasoning("First, the user")
            .with_usage(Usage::new(12, 229).with_reasoning(228).with_cached(2)),
    );
    let mut req = hello("grok-3-mini");
    req["stream_options"] = json!({"include_usage": true});
    let sse = chat_stream(&mock, req).await;
    assert_eq!(sse.delta_field("reasoning_content"), "First, the user");
    assert_eq!(sse.content(), "Hi there");
    let usage = sse.chunks().last().unwrap()["usage"].clone();
    assert_eq!(usage["completion_tokens"], 1);
    assert_eq!(usage["total_tokens"], 241);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 228);

    // DeepSeek: reasoning deltas first with content null.
    let mock = MockServer::start(Flavor::DeepSeek).await;
    mock.push(Script::text("Answer").with_reasoning("We think"));
    let sse = chat_stream(&mock, hello("deepseek-reasoner")).await;
    let chunks = sse.chunks();
    let first_reasoning = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["reasoning_content"].as_str() == Some("We"))
        .unwrap();
    assert_eq!(
        first_reasoning["choices"][0]["delta"]["content"],
        Value::Null
    );
    assert_eq!(sse.delta_field("reasoning_content"), "We think");
    assert_eq!(sse.content(), "Answer");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 2);

    // OpenRouter / Ollama: `reasoning`.
    for flavor in [Flavor::OpenRouter, Flavor::Ollama] {
        let mock = MockServer::start(flavor).await;
        mock.push(Script::text("x").with_reasoning("deep thought"));
        let sse = chat_stream(&mock, hello("m")).await;
        assert_eq!(sse.delta_field("reasoning"), "deep thought", "{flavor}");
    }
}

#[tokio::test]
async fn tool_call_streaming_is_index_keyed() {
    let args = r#"{"city":"Paris","unit":"celsius"}"#;
    for flavor in Flavor::all_openai_family() {
        let mock = MockServer::start(flavor).await;
        let script = Script::tool_calls([
            ToolCall::new("call_1", "get_weather", args),
            ToolCall::new("call_2", "get_time", r#"{"tz":"CET"}"#),
        ]);
        mock.push(script.clone());
        let sse = chat_stream(&mock, hello("m")).await;
        let chunks = sse.chunks();
        let mut assembled: Vec<(String, String, String)> = Vec::new();
        let mut fragments = 0;
        for c in &chunks {
            let Some(calls) = c["choices"][0]["delta"]["tool_calls"].as_array() else {
                continue;
            };
            for call in calls {
                fragments += 1;
                let index = call["index"].as_u64().unwrap() as usize;
                if index == assembled.len() {
                    // First fragment carries id, type and name.
                    assert_eq!(call["type"], "function", "{flavor}");
                    assembled.push((
                        call["id"].as_str().unwrap().to_owned(),
                        call["function"]["name"].as_str().unwrap().to_owned(),
                        String::new(),
                    ));
                } else {
                    assert!(
                        call.get("id").is_none(),
                        "{flavor}: id only on first fragment"
                    );
                }
                assembled[index].2 += call["function"]["arguments"].as_str().unwrap_or("");
            }
        }
        assert_eq!(assembled.len(), 2, "{flavor}");
        assert_eq!(
            assembled[0],
            ("call_1".into(), "get_weather".into(), args.into())
        );
        assert_eq!(assembled[1].2, r#"{"tz":"CET"}"#);
        if !matches!(flavor, Flavor::Xai | Flavor::Ollama) {
            assert!(fragments > 4, "{flavor}: arguments split across deltas");
        }
        if flavor == Flavor::OpenAi {
            // Recorded OpenAI shape: the role rides on the first tool-call fragment.
            let first = &chunks[0]["choices"][0]["delta"];
            assert_eq!(first["role"], "assistant");
            assert_eq!(first["content"], Value::Null);
            assert_eq!(first["tool_calls"][0]["id"], "call_1");
            assert!(chunks.iter().all(|c| c["obfuscation"].is_string()));
        }
        let finish = chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str())
            .unwrap();
        assert_eq!(finish, "tool_calls", "{flavor}");
        assert!(sse.done());

        // Non-stream: content null, tool_calls whole.
        mock.push(script);
        let (_, body) = chat(&mock, hello("m")).await;
        let msg = &body["choices"][0]["message"];
        assert_eq!(msg["content"], Value::Null, "{flavor}");
        assert_eq!(msg["tool_calls"][0]["function"]["arguments"], args);
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    }
}

#[tokio::test]
async fn scripted_errors_and_retry_after() {
    let mock = MockServer::start(Flavor::OpenAi).await;
    mock.push(Script::error(429).with_retry_after(7));
    let resp = post(&mock, "/chat/completions", hello("gpt-4o")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    // Custom body, returned before any stream byte.
    mock.push(Script::new().with_error(503, json!({"error": {"message": "busy"}})));
    let mut req = hello("gpt-4o");
    req["stream"] = json!(true);
    let resp = post(&mock, "/chat/completions", req).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["message"],
        "busy"
    );

    // Canonical shapes per flavor.
    let cases: [(Flavor, u16, &str, Value); 7] = [
        (
            Flavor::OpenAi,
            400,
            "/error/code",
            json!("context_length_exceeded"),
        ),
        (
            Flavor::DeepSeek,
            402,
            "/error/message",
            json!("Insufficient Balance"),
        ),
        (Flavor::Xai, 500, "/error/type", json!("server_error")),
        (Flavor::OpenRouter, 429, "/error/code", json!(429)),
        (Flavor::Doubao, 429, "/error/type", json!("TooManyRequests")),
        (
            Flavor::Poe,
            429,
            "/error/code",
            json!("rate_limit_exceeded"),
        ),
        (Flavor::Ollama, 404, "/error/type", json!("not_found_error")),
    ];
    for (flavor, status, pointer, expected) in cases {
        let mock = MockServer::start(flavor).await;
        mock.push(Script::error(status));
        let (got, body) = chat(&mock, hello("m")).await;
        assert_eq!(got, status, "{flavor}");
        assert_eq!(body.pointer(pointer), Some(&expected), "{flavor}: {body}");
    }
}

#[tokio::test]
async fn auth_and_bad_requests() {
    for flavor in Flavor::all_openai_family() {
        let mock = MockServer::start(flavor).await;
        let resp = client()
            .post(format!("{}/chat/completions", mock.base_url()))
            .bearer_auth("wrong-key-123456")
            .json(&hello("m"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        if flavor == Flavor::Ollama {
            assert_eq!(status, 200, "ollama needs no auth");
        } else {
            assert_eq!(status, 401, "{flavor}");
            match flavor {
                Flavor::Xai => {
                    assert_eq!(body["code"], "Client specified an invalid argument");
                    assert!(
                        body["error"]
                            .as_str()
                            .unwrap()
                            .starts_with("Incorrect API key")
                    );
                }
                Flavor::OpenRouter => assert_eq!(body["error"]["code"], 401),
                Flavor::Doubao => {
                    assert_eq!(body["error"]["code"], "AuthenticationError");
                    assert!(
                        body["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("Request id: ")
                    );
                }
                _ => assert!(body["error"]["message"].is_string(), "{flavor}"),
            }
        }
        // Not JSON -> 400.
        let resp = client()
            .post(format!("{}/chat/completions", mock.base_url()))
            .bearer_auth("sk-test")
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{flavor}");
        // Missing messages -> 400.
        let (status, _) = chat(&mock, json!({"model": "m"})).await;
        assert_eq!(status, 400, "{flavor}");
        let (status, _) = chat(&mock, json!({"messages": []})).await;
        assert_eq!(status, 400, "{flavor}");
    }
    // Custom key.
    let mock = MockServer::start_with_key(Flavor::OpenAi, "sk-other").await;
    let (status, body) = chat(&mock, hello("m")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&hello("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You didn't provide")
    );
}

#[tokio::test]
async fn drop_after_chunks_closes_without_done() {
    let mock = MockServer::start(Flavor::OpenAi).await;
    mock.push(Script::text("one two three four five six").with_drop_after_chunks(2));
    let mut req = hello("m");
    req["stream"] = json!(true);
    let resp = post(&mock, "/chat/completions", req).await;
    assert_eq!(resp.status(), 200);
    let mut raw = String::new();
    let mut stream = resp.bytes_stream();
    let mut errored = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => raw.push_str(std::str::from_utf8(&b).unwrap()),
            Err(_) => {
                errored = true;
                break;
            }
        }
    }
    assert!(errored, "connection must be cut abruptly");
    let sse = Sse::parse(&raw);
    assert!(!sse.done());
    assert_eq!(sse.content(), "one two");
    let stats = mock.stats();
    assert_eq!(stats.chunks_sent, 2);
    assert_eq!(stats.streams_cancelled_by_client, 0);
}

#[tokio::test]
async fn error_after_chunks_per_flavor() {
    for flavor in Flavor::all_openai_family() {
        let mock = MockServer::start(flavor).await;
        mock.push(Script::text("a b c d e").with_error_after_chunks(2));
        let sse = chat_stream(&mock, hello("m")).await;
        assert!(!sse.done(), "{flavor}");
        assert_eq!(sse.content(), "a b", "{flavor}");
        let last = sse.chunks().last().unwrap().clone();
        assert!(last["error"].is_object(), "{flavor}: {last}");
        match flavor {
            Flavor::OpenRouter => {
                assert_eq!(last["choices"][0]["finish_reason"], "error");
                assert_eq!(last["error"]["code"], "server_error");
            }
            Flavor::Doubao => assert!(last["error"]["code"].is_string()),
            _ => assert!(last["error"]["message"].is_string()),
        }
    }
    let mock = MockServer::start(Flavor::OpenAi).await;
    mock.push(
        Script::text("a b c")
            .with_error_after_chunks(1)
            .with_stream_error_body(json!({"error": {"message": "boom", "type": "server_error"}})),
    );
    let sse = chat_stream(&mock, hello("m")).await;
    assert_eq!(sse.chunks().last().unwrap()["error"]["message"], "boom");
}

#[tokio::test]
async fn client_cancellation_is_counted() {
    let mock = MockServer::start(Flavor::OpenAi).await;
    mock.push(Script::text("w ".repeat(40)).with_chunk_delay_ms(20));
    let mut req = hello("m");
    req["stream"] = json!(true);
    let resp = post(&mock, "/chat/completions", req).await;
    let mut stream = resp.bytes_stream();
    let mut seen = 0;
    while let Some(item) = stream.next().await {
        seen += item.unwrap().len();
        if seen > 600 {
            break;
        }
    }
    drop(stream);
    let mut stats = mock.stats();
    for _ in 0..100 {
        stats = mock.stats();
        if stats.streams_cancelled_by_client == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.streams_started, 1);
    assert_eq!(stats.streams_cancelled_by_client, 1, "{stats:?}");
    assert_eq!(stats.streams_completed, 0);
    assert!(stats.chunks_sent < 40, "{stats:?}");

    // A stream read to the end counts as completed.
    let before = mock.stats().chunks_sent;
    mock.push(Script::text("done now"));
    let sse = chat_stream(&mock, hello("m")).await;
    assert!(sse.done());
    let stats = mock.stats();
    assert_eq!(stats.streams_completed, 1);
    assert_eq!(stats.streams_cancelled_by_client, 1);
    assert_eq!(stats.chunks_sent, before + 2);
}

#[tokio::test]
async fn non_stream_drop_cuts_the_body() {
    let mock = MockServer::start(Flavor::DeepSeek).await;
    mock.push(Script::new().with_drop_after_chunks(0));
    let resp = post(&mock, "/chat/completions", hello("deepseek-chat")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err());
}

#[test]
fn script_json_schema_round_trips() {
    assert_eq!(serde_json::to_value(Script::default()).unwrap(), json!({}));
    let script: Script = serde_json::from_value(json!({
        "text": "hi", "chunks": 2, "reasoning": "r",
        "tool_calls": [{"id": "c1", "name": "f", "arguments": "{}"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "cached_tokens": 1,
                  "cache_write_tokens": 0, "reasoning_tokens": 1, "cost": 0.5},
        "omit_usage": false, "finish_reason": "length",
        "first_byte_delay_ms": 1, "chunk_delay_ms": 2,
        "error": {"status": 429, "body": {"error": {"message": "x"}}, "retry_after": 3},
        "drop_after_chunks": 4, "error_after_chunks": 5, "stream_error_body": {"message": "m"},
        "embedding_dims": 16, "image_b64": "QUJD", "image_url": "http://x/y.png",
        "headers": {"x-extra": "1"}
    }))
    .unwrap();
    let built = Script::text("hi")
        .with_chunks(2)
        .with_reasoning("r")
        .with_tool_call("c1", "f", "{}")
        .with_usage(
            Usage::new(5, 3)
                .with_cached(1)
                .with_reasoning(1)
                .with_cost(0.5),
        )
        .with_finish_reason("length")
        .with_first_byte_delay_ms(1)
        .with_chunk_delay_ms(2)
        .with_error(429, json!({"error": {"message": "x"}}))
        .with_retry_after(3)
        .with_drop_after_chunks(4)
        .with_error_after_chunks(5)
        .with_stream_error_body(json!({"message": "m"}))
        .with_embedding_dims(16)
        .with_image_b64("QUJD")
        .with_image_url("http://x/y.png")
        .with_header("x-extra", "1");
    assert_eq!(script, built);
    let back: Script = serde_json::from_value(serde_json::to_value(&built).unwrap()).unwrap();
    assert_eq!(back, built);
}

#[tokio::test]
async fn finish_reason_override_and_latency() {
    let mock = MockServer::start(Flavor::OpenAi).await;
    mock.push(
        Script::text("cut")
            .with_finish_reason("length")
            .with_first_byte_delay_ms(150),
    );
    let t0 = std::time::Instant::now();
    let (_, body) = chat(&mock, hello("m")).await;
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn scenarios_by_model_and_fifo_queue() {
    let mock = MockServer::start(Flavor::OpenRouter).await;
    mock.register_scenario("anthropic/claude-3.5-sonnet", Script::text("from scenario"));
    mock.push(Script::text("first"));
    mock.push(Script::text("second"));
    let content = |b: &Value| {
        b["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (_, b) = chat(&mock, hello("anthropic/claude-3.5-sonnet")).await;
    assert_eq!(content(&b), "from scenario");
    let (_, b) = chat(&mock, hello("openai/gpt-4o-mini")).await;
    assert_eq!(content(&b), "first");
    let (_, b) = chat(&mock, hello("anthropic/claude-3.5-sonnet")).await;
    assert_eq!(content(&b), "from scenario");
    let (_, b) = chat(&mock, hello("openai/gpt-4o-mini")).await;
    assert_eq!(content(&b), "second");
    let (_, b) = chat(&mock, hello("openai/gpt-4o-mini")).await;
    assert_eq!(content(&b), "Hello from mock openrouter.");
    assert_eq!(mock.hits(), 5);
}

#[tokio::test]
async fn recorded_requests_and_headers() {
    let mock = MockServer::start(Flavor::OpenRouter).await;
    client()
        .post(format!("{}/chat/completions?x=1", mock.base_url()))
        .bearer_auth("sk-test")
        .header("HTTP-Referer", "https://hub.example")
        .header("X-Title", "AIGNE Hub")
        .json(&hello("openai/gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/api/v1/chat/completions?x=1");
    assert_eq!(r.header("http-referer"), Some("https://hub.example"));
    assert_eq!(r.header("x-title"), Some("AIGNE Hub"));
    assert_eq!(r.header("AUTHORIZATION"), Some("Bearer sk-test"));
    assert_eq!(r.body["model"], "openai/gpt-4o-mini");
}

#[tokio::test]
async fn poe_headers_and_omit_usage() {
    let mock = MockServer::start(Flavor::Poe).await;
    mock.push(Script::text("hi").without_usage());
    let resp = post(&mock, "/chat/completions", hello("GPT-4o")).await;
    assert_eq!(resp.headers()["x-ratelimit-limit-requests"], "500");
    assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "499");
    assert!(resp.headers().contains_key("x-ratelimit-reset-requests"));
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("usage").is_none());
    // Stream with include_usage but omit_usage: no usage chunk.
    mock.push(Script::text("hi").without_usage());
    let mut req = hello("GPT-4o");
    req["stream_options"] = json!({"include_usage": true});
    let sse = chat_stream(&mock, req).await;
    assert!(sse.chunks().iter().all(|c| !c["usage"].is_object()));
    assert!(sse.done());
}

#[tokio::test]
async fn embeddings_images_models() {
    // Embeddings where supported.
    for flavor in Flavor::all_openai_family() {
        let mock = MockServer::start(flavor).await;
        let resp = post(
            &mock,
            "/embeddings",
            json!({"model": "emb", "input": ["hello world", "bye"]}),
        )
        .await;
        if flavor.supports_embeddings() {
            assert_eq!(resp.status(), 200, "{flavor}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["object"], "list");
            assert_eq!(body["data"].as_array().unwrap().len(), 2);
            assert_eq!(body["data"][1]["index"], 1);
            assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);
            assert_eq!(body["usage"]["prompt_tokens"], 4); // ceil(11/4) + ceil(3/4)
            assert_eq!(body["usage"]["total_tokens"], 4);
        } else {
            assert_eq!(resp.status(), 404, "{flavor}");
        }
    }
    let mock = MockServer::start(Flavor::OpenAi).await;
    mock.push(Script::new().with_embedding_dims(4));
    let resp = post(
        &mock,
        "/embeddings",
        json!({"model": "text-embedding-3-small", "input": "hi", "encoding_format": "base64"}),
    )
    .await;
    let body: Value = resp.json().await.unwrap();
    let b64 = body["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(b64.len(), 24, "4 f32 = 16 bytes = 24 base64 chars");
    let resp = post(
        &mock,
        "/embeddings",
        json!({"model": "m", "input": "hi", "dimensions": 3}),
    )
    .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 3);

    // Images.
    for flavor in Flavor::all_openai_family() {
        let mock = MockServer::start(flavor).await;
        let resp = post(
            &mock,
            "/images/generations",
            json!({"prompt": "a cat", "n": 2}),
        )
        .await;
        if !flavor.supports_images() {
            assert_eq!(resp.status(), 404, "{flavor}");
            continue;
        }
        assert_eq!(resp.status(), 200, "{flavor}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 2);
        let url = body["data"][0]["url"].as_str().unwrap();
        assert!(url.starts_with(&mock.origin()), "{flavor}");
        let png = client().get(url).send().await.unwrap();
        assert_eq!(png.headers()["content-type"], "image/png");
        if flavor == Flavor::Doubao {
            assert_eq!(body["usage"]["generated_images"], 2);
        } else if flavor == Flavor::OpenAi {
            assert!(body["created"].is_number());
        }
    }
    let mock = MockServer::start(Flavor::OpenAi).await;
    let resp = post(
        &mock,
        "/images/generations",
        json!({"model": "gpt-image-1", "prompt": "x"}),
    )
    .await;
    let body: Value = resp.json().await.unwrap();
    assert!(body["data"][0]["b64_json"].is_string());
    assert!(body["usage"]["total_tokens"].is_number());
    let resp = post(
        &mock,
        "/images/generations",
        json!({"model": "gpt-image-1", "prompt": "x", "response_format": "url"}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    mock.push(Script::new().with_image_b64("QUJD"));
    let resp = post(
        &mock,
        "/images/generations",
        json!({"model": "dall-e-3", "prompt": "x"}),
    )
    .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"][0]["b64_json"], "QUJD");

    // Models.
    for flavor in Flavor::all_openai_family() {
        let mock = MockServer::start(flavor).await;
        mock.register_scenario("my-model", Script::text("x"));
        let resp = client()
            .get(format!("{}/models", mock.base_url()))
            .bearer_auth("sk-test")
            .send()
            .await
            .unwrap();
        if flavor == Flavor::Doubao {
            assert_eq!(resp.status(), 404);
            continue;
        }
        assert_eq!(resp.status(), 200, "{flavor}");
        let body: Value = resp.json().await.unwrap();
        let ids: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&"my-model"), "{flavor}: {ids:?}");
    }
}

#[tokio::test]
async fn control_api_over_http() {
    let mock = MockServer::start(Flavor::Doubao).await;
    let http = client();
    let origin = mock.origin();
    let r = http
        .post(format!("{origin}/__mock/scripts"))
        .json(&json!({"text": "scripted via http", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{origin}/__mock/scenarios"))
        .json(&json!({"model": "ep-123", "script": {"error": {"status": 429, "retry_after": 2}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, b) = chat(&mock, hello("doubao-seed-1-6")).await;
    assert_eq!(b["choices"][0]["message"]["content"], "scripted via http");
    assert_eq!(b["usage"]["total_tokens"], 5);
    let resp = post(&mock, "/chat/completions", hello("ep-123")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");

    let reqs: Vec<Value> = http
        .get(format!("{origin}/__mock/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1]["body"]["model"], "ep-123");
    assert_eq!(reqs[0]["path"], "/api/v3/chat/completions");
    let stats: Value = http
        .get(format!("{origin}/__mock/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"], 2);
    for key in [
        "streams_started",
        "streams_completed",
        "streams_cancelled_by_client",
        "chunks_sent",
    ] {
        assert!(stats[key].is_number(), "{key}");
    }
    let r = http
        .post(format!("{origin}/__mock/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(mock.requests().is_empty());
    let (status, _) = chat(&mock, hello("ep-123")).await;
    assert_eq!(status, 200, "scenario cleared by reset");
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn chunks_option_controls_piece_count() {
    let mock = MockServer::start(Flavor::OpenAi).await;
    mock.push(Script::text("abcdefghijkl").with_chunks(3));
    let sse = chat_stream(&mock, hello("m")).await;
    let pieces: Vec<String> = sse
        .chunks()
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(pieces, vec!["abcd", "efgh", "ijkl"]);
    assert_eq!(mock.stats().chunks_sent, 3);
}

#[tokio::test]
async fn binary_serves_all_flavors() {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hub-mock"))
        .args(["--all", "--api-key", "sk-bin"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let map: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(map.as_object().unwrap().len(), 10);
    for f in Flavor::all() {
        assert!(map[f.name()]["base_url"].is_string(), "{f} missing");
    }
    assert!(
        map["gemini"]["base_url"]
            .as_str()
            .unwrap()
            .ends_with("/v1beta")
    );
    let base = map["deepseek"]["base_url"].as_str().unwrap();
    assert_eq!(base, map["deepseek"]["origin"].as_str().unwrap());
    let resp = client()
        .post(format!("{base}/chat/completions"))
        .bearer_auth("sk-bin")
        .json(&hello("deepseek-chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        map["openrouter"]["base_url"]
            .as_str()
            .unwrap()
            .ends_with("/api/v1")
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
