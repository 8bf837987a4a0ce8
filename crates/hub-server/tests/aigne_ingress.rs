//! The AIGNE ingress in-process: the real router and hub (temp data dir) on port 0, fed by a
//! hub-testkit OpenAI mock. Golden request/response shapes of every AIGNE route (aigne-hub.md §2,
//! aigne-client-wire.md), and what each call leaves in the usage records.

use hub_core::Hub;
use hub_core::config::{EnvProvider, HubOptions};
use hub_core::hub::{BillingDefaults, now_ms};
use hub_core::ledger::{GrantKind, GrantOutcome, GrantReq, user_account};
use hub_core::pricing::BillingMode;
use hub_core::providers::{CredentialSecret, ProviderKind, Secret};
use hub_core::store::UsageRecord;
use hub_testkit::{Flavor, MockServer, Script, Usage};
use serde_json::{Value, json};

mod common;

const KEY: &str = "sk-aigne-ingress-test-key";
const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

struct Harness {
    _dir: tempfile::TempDir,
    hub: Hub,
    mock: MockServer,
    url: String,
    http: reqwest::Client,
    _served: common::Served,
}

async fn harness() -> Harness {
    harness_with(BillingDefaults::default()).await
}

/// A hub in credits mode: no starter credits, a payment link, `$` prefix.
async fn credits_harness() -> Harness {
    harness_with(BillingDefaults {
        mode: BillingMode::Credits,
        payment_link: Some("https://pay.example/buy".into()),
        credit_prefix: "$".into(),
        ..BillingDefaults::default()
    })
    .await
}

async fn harness_with(billing: BillingDefaults) -> Harness {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => unreachable!("tempdir: {e}"),
    };
    let mut opts = HubOptions::new(dir.path());
    opts.admin_key = Some(Secret::new(KEY));
    opts.billing = billing;
    opts.env_providers = vec![EnvProvider {
        kind: ProviderKind::OpenAi,
        base_url: Some(mock.base_url()),
        region: None,
        credentials: vec![CredentialSecret::api_key("sk-test")],
    }];
    let hub = match Hub::open(opts).await {
        Ok(o) => o.hub,
        Err(e) => unreachable!("open: {e}"),
    };
    let served = common::Served::start(hub.clone()).await;
    Harness {
        _dir: dir,
        hub,
        mock,
        url: served.base(),
        http: reqwest::Client::new(),
        _served: served,
    }
}

impl Harness {
    /// POST as `@aigne/aigne-hub` does (bearer key, URI-encoded app DID).
    async fn post(&self, path: &str, body: &Value, accept: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(KEY)
            .header("x-aigne-hub-client-did", "%40aigne%2Faigne-hub%3Atest-host")
            .header("x-request-id", "client-req-7")
            .json(body);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        match req.send().await {
            Ok(r) => r,
            Err(e) => unreachable!("request failed: {e}"),
        }
    }

    async fn get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        match req.send().await {
            Ok(r) => r,
            Err(e) => unreachable!("request failed: {e}"),
        }
    }

    async fn record(&self, id: &str) -> UsageRecord {
        let recs = self.hub.store().list_usage(200).await.unwrap_or_default();
        match recs.into_iter().find(|r| r.id == id) {
            Some(r) => r,
            None => unreachable!("no usage record {id}"),
        }
    }

    fn upstream(&self, model: &str) -> Value {
        self.mock
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.body.get("model").and_then(Value::as_str) == Some(model))
            .map(|r| r.body)
            .unwrap_or(Value::Null)
    }
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json::<Value>().await.unwrap_or(Value::Null)
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The `data:` payloads (and `event:` names) of an SSE body.
fn frames(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let mut event = None;
            let mut data = String::new();
            for line in f.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (event, data)
        })
        .collect()
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

/// The body `@aigne/aigne-hub` 0.10.16 sends (aigne-client-wire.md §4).
fn invoke_body(model: &str, streaming: bool) -> Value {
    let mut options = json!({"userContext": {}, "memories": []});
    if streaming {
        options["streaming"] = json!(true);
    }
    json!({
        "input": {
            "messages": [{"role": "user", "content": "say hello to the hub"}],
            "modelOptions": {"cacheConfig": {"autoBreakpoints": {"lastMessage": true}}, "model": model},
            "outputFileType": "url",
        },
        "agent": "$CHAT_MODEL",
        "options": options,
    })
}

#[tokio::test]
async fn discovery_and_catalog_are_public() {
    let h = harness().await;
    let r = h.get("/__blocklet__.js?type=json", None).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(
        v["componentMountPoints"][0]["did"],
        json!("z8ia3xzq2tMq8CRHfaXj1BTYJyYnEcHbqP8cJ")
    );
    assert_eq!(v["componentMountPoints"][0]["mountPoint"], json!("/"));
    let r = h.get("/__blocklet__.js", None).await;
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("application/javascript"), "{ct}");

    let v = json_of(h.get("/api/ai/models?type=chat", None).await).await;
    let list = v.as_array().cloned().unwrap_or_default();
    let mini = list
        .iter()
        .find(|m| m["model"] == json!("gpt-4o-mini"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        mini,
        json!({"key":"openai/gpt-4o-mini","model":"gpt-4o-mini","type":"chat","provider":"openai",
               "providerDisplayName":"OpenAI","input_credits_per_token":"0","output_credits_per_token":"0",
               "modelMetadata":null,"status":{"available":true}})
    );
    assert!(list.iter().all(|m| m["type"] == json!("chat")));
    let emb = json_of(h.get("/api/ai/models?type=embedding", None).await).await;
    assert!(
        emb.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|m| m["type"] == json!("embedding")))
    );
    let alias = json_of(h.get("/api/ai-providers/models?type=chat", None).await).await;
    assert_eq!(alias, v);
    let video = json_of(h.get("/api/ai/models?type=video", None).await).await;
    assert_eq!(video, json!([]));
}

#[tokio::test]
async fn invoke_chat_json_golden() {
    let h = harness().await;
    h.mock.register_scenario(
        "m-json",
        Script::text("Hello from the hub").with_usage(Usage::new(11, 4).with_cached(2)),
    );
    let r = h
        .post("/api/v2/chat", &invoke_body("openai/m-json", false), None)
        .await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v = json_of(r).await;
    assert_eq!(
        v,
        json!({
            "text": "Hello from the hub",
            "model": "m-json",
            "usage": {"inputTokens": 11, "outputTokens": 4, "cacheCreationInputTokens": 0,
                      "cacheReadInputTokens": 2, "modelCallId": id},
            "modelWithProvider": "openai/m-json",
        })
    );
    // The client's extras (cacheConfig, outputFileType, agent, userContext, memories) are not sent on.
    let up = h.upstream("m-json");
    assert_eq!(
        up["messages"],
        json!([{"role": "user", "content": "say hello to the hub"}])
    );
    for k in [
        "cacheConfig",
        "cache_config",
        "outputFileType",
        "agent",
        "parallel_tool_calls",
    ] {
        assert!(up.get(k).is_none(), "{k} reached the provider: {up}");
    }
    let rec = h.record(&id).await;
    assert_eq!(rec.ingress, "aigne");
    assert_eq!(rec.app.as_deref(), Some("@aigne/aigne-hub:test-host"));
    assert_eq!(rec.client_request_id.as_deref(), Some("client-req-7"));
    assert_eq!(rec.requested_model, "openai/m-json");
    assert_eq!((rec.prompt_tokens, rec.completion_tokens), (11, 4));
}

#[tokio::test]
async fn invoke_chat_stream_golden() {
    let h = harness().await;
    h.mock.register_scenario(
        "m-stream",
        Script::text("one two three")
            .with_chunks(3)
            .with_usage(Usage::new(7, 3)),
    );
    let r = h
        .post("/api/v2/chat", &invoke_body("openai/m-stream", true), None)
        .await;
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let id = request_id(&r);
    let text = r.text().await.unwrap_or_default();
    let fs = frames(&text);
    assert!(fs.iter().all(|(e, _)| e.is_none()), "{text}");
    assert!(!text.contains("[DONE]"));
    let data: Vec<Value> = fs.iter().map(|(_, d)| parse(d)).collect();
    assert_eq!(data[0], json!({"delta": {"json": {"modelOptions": {}}}}));
    assert_eq!(data[1]["delta"]["json"]["model"], json!("m-stream"));
    let pieces: String = data
        .iter()
        .filter_map(|d| d.pointer("/delta/text/text").and_then(Value::as_str))
        .collect();
    assert_eq!(pieces, "one two three");
    let n = data.len();
    assert_eq!(
        data[n - 2],
        json!({"delta": {"json": {"usage": {"inputTokens": 7, "outputTokens": 3}}}})
    );
    assert_eq!(
        data[n - 1],
        json!({"delta": {"json": {
            "text": "one two three",
            "model": "m-stream",
            "usage": {"inputTokens": 7, "outputTokens": 3, "cacheCreationInputTokens": 0,
                      "cacheReadInputTokens": 0, "modelCallId": id},
            "modelWithProvider": "openai/m-stream",
        }}})
    );
    // The record was committed before the final frame went out.
    let rec = h.record(&id).await;
    assert!(rec.stream);
    assert_eq!(rec.completion_tokens, 3);
}

#[tokio::test]
async fn invoke_chat_tool_calls_and_files() {
    let h = harness().await;
    h.mock.register_scenario(
        "m-tools",
        Script::new().with_tool_call("call_1", "get_weather", r#"{"city":"Paris"}"#),
    );
    let body = json!({
        "input": {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "describe"},
                                             {"mimeType": "image/png", "type": "file", "data": PNG_B64}]},
                {"role": "agent", "toolCalls": [{"id": "call_0", "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
                {"role": "tool", "content": "18C and sunny", "toolCallId": "call_0"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "toolChoice": "auto",
            "modelOptions": {"model": "openai/m-tools", "parallelToolCalls": true},
        },
        "agent": "$CHAT_MODEL",
        "options": {"streaming": false},
    });
    let v = json_of(h.post("/api/v2/chat", &body, None).await).await;
    assert_eq!(
        v["toolCalls"],
        json!([{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}])
    );
    let up = h.upstream("m-tools");
    assert_eq!(
        up["messages"][1]["content"][1]["image_url"]["url"],
        json!(format!("data:image/png;base64,{PNG_B64}"))
    );
    assert_eq!(up["messages"][2]["role"], json!("assistant"));
    assert_eq!(
        up["messages"][2]["tool_calls"][0]["function"]["arguments"],
        json!(r#"{"city":"Rome"}"#)
    );
    assert_eq!(up["messages"][3]["tool_call_id"], json!("call_0"));
    assert_eq!(up["tool_choice"], json!("auto"));
    assert_eq!(up["parallel_tool_calls"], json!(true));

    // Streamed: the tool calls come whole, with object arguments, before the full output.
    let mut sbody = body.clone();
    sbody["options"] = json!({"streaming": true});
    let text = h
        .post("/api/v2/chat", &sbody, None)
        .await
        .text()
        .await
        .unwrap_or_default();
    let data: Vec<Value> = frames(&text).iter().map(|(_, d)| parse(d)).collect();
    let n = data.len();
    assert_eq!(
        data[n - 2]["delta"]["json"]["toolCalls"][0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
    assert_eq!(
        data[n - 1]["delta"]["json"]["toolCalls"],
        data[n - 2]["delta"]["json"]["toolCalls"]
    );
}

#[tokio::test]
async fn invoke_chat_errors() {
    let h = harness().await;
    // No key: 401 in the hub's shape, no record.
    let r = match h
        .http
        .post(format!("{}/api/v2/chat", h.url))
        .json(&invoke_body("openai/x", false))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => unreachable!("{e}"),
    };
    assert_eq!(r.status(), 401);
    let v = json_of(r).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("User not authenticated")),
        "{v}"
    );
    assert!(v["error"]["type"].is_string());

    let r = h
        .post("/api/v2/chat", &invoke_body("nosuch/model", false), None)
        .await;
    assert_eq!(r.status(), 400);
    let id = request_id(&r);
    assert_eq!(
        json_of(r).await,
        json!({"error": {"message": "Invalid model format: nosuch/model, should be {provider}/{model}",
                         "type": "invalid_request"}})
    );
    let rec = h.record(&id).await;
    assert_eq!(rec.http_status, 400);
    assert_eq!(rec.ingress, "aigne");

    // Upstream rate limit before the stream starts: a real status and a JSON body, even when
    // streaming was asked for (the client throws the message).
    h.mock
        .register_scenario("m-429", Script::error(429).with_retry_after(3));
    let r = h
        .post("/api/v2/chat", &invoke_body("openai/m-429", true), None)
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("3")
    );
    let v = json_of(r).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("openai"))
    );

    // After the stream started: `event: error` with the message.
    h.mock.register_scenario(
        "m-mid",
        Script::text("a b c d e")
            .with_chunks(5)
            .with_error_after_chunks(2),
    );
    let text = h
        .post("/api/v2/chat", &invoke_body("openai/m-mid", true), None)
        .await
        .text()
        .await
        .unwrap_or_default();
    let fs = frames(&text);
    let last = fs.last().cloned().unwrap_or_default();
    assert_eq!(last.0.as_deref(), Some("error"), "{text}");
    assert!(parse(&last.1)["message"].is_string());
}

#[tokio::test]
async fn legacy_completions_golden() {
    let h = harness().await;
    h.mock.register_scenario(
        "m-legacy",
        Script::text("Hi there")
            .with_chunks(2)
            .with_usage(Usage::new(5, 2)),
    );
    // JSON, camelCase and snake_case parameters both count.
    let body = json!({"model": "openai/m-legacy", "messages": [{"role": "user", "content": "hi"}],
                      "maxTokens": 20, "top_p": 0.5, "presence_penalty": 0.25, "logit_bias": {"1": 2}});
    let r = h.post("/api/v2/chat/completions", &body, None).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    assert_eq!(
        json_of(r).await,
        json!({"role": "assistant", "text": "Hi there", "content": "Hi there"})
    );
    let up = h.upstream("m-legacy");
    assert_eq!(up["top_p"], json!(0.5));
    assert_eq!(up["presence_penalty"], json!(0.25));
    assert_eq!(up["logit_bias"], json!({"1": 2}));
    assert!(
        up["max_tokens"] == json!(20) || up["max_completion_tokens"] == json!(20),
        "{up}"
    );
    assert_eq!(h.record(&id).await.ingress, "aigne");

    // SSE (Accept: text/event-stream), `prompt` instead of messages, on /api/v2/completions.
    let body = json!({"model": "openai/m-legacy", "prompt": "hi"});
    let r = h
        .post("/api/v2/completions", &body, Some("text/event-stream"))
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap_or_default();
    let data: Vec<Value> = frames(&text).iter().map(|(_, d)| parse(d)).collect();
    let content = data[0]["delta"]["content"].clone();
    assert!(content.is_string(), "{text}");
    assert_eq!(
        data[0],
        json!({"delta": {"role": "assistant", "content": content, "toolCalls": []}})
    );
    let joined: String = data
        .iter()
        .filter_map(|d| d.pointer("/delta/content").and_then(Value::as_str))
        .collect();
    assert_eq!(joined, "Hi there");
    assert_eq!(
        data.last().cloned().unwrap_or_default(),
        json!({"usage": {"promptTokens": 5, "completionTokens": 2, "totalTokens": 7}})
    );
    assert!(!text.contains("[DONE]"));

    // stream:true without SSE: plain bytes.
    let body = json!({"model": "openai/m-legacy", "prompt": "hi", "stream": true});
    let r = h.post("/api/v2/chat/completions", &body, None).await;
    assert_eq!(r.text().await.unwrap_or_default(), "Hi there");

    // SSE callers get errors in-stream, status 200 (aigne-hub.md §2.7).
    let body = json!({"model": "openai/m-legacy", "prompt": "a", "messages": [{"role": "user", "content": "b"}]});
    let r = h
        .post("/api/v2/chat/completions", &body, Some("text/event-stream"))
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap_or_default();
    let data: Vec<Value> = frames(&text).iter().map(|(_, d)| parse(d)).collect();
    assert_eq!(data[0]["error"]["type"], json!("invalid_request"));
    // ... and plain JSON callers get the status.
    let r = h.post("/api/v2/chat/completions", &body, None).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn images_golden() {
    let h = harness().await;
    h.mock
        .register_scenario("img-a", Script::new().with_image_b64(PNG_B64));
    let body = json!({"input": {"prompt": "a red pixel", "outputFileType": "url",
                                "modelOptions": {"model": "openai/img-a"}},
                      "agent": "$CHAT_MODEL", "options": {"streaming": false}});
    let r = h.post("/api/v2/image", &body, None).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    assert_eq!(
        json_of(r).await,
        json!({"images": [{"type": "file", "data": PNG_B64, "mimeType": "image/png"}],
               "usage": {"inputTokens": 0, "outputTokens": 0},
               "model": "img-a", "modelWithProvider": "openai/img-a"})
    );
    let rec = h.record(&id).await;
    assert_eq!((rec.images, rec.endpoint.as_str()), (1, "images"));

    let body = json!({"model": "openai/img-a", "prompt": "a red pixel", "n": 1,
                      "size": "256x256", "quality": "hd", "style": "vivid"});
    let v = json_of(h.post("/api/v2/image/generations", &body, None).await).await;
    let item = json!({"base64": PNG_B64, "b64_json": PNG_B64, "b64Json": PNG_B64});
    assert_eq!(v["images"], json!([item]));
    assert_eq!(v["data"], v["images"]);
    assert_eq!(v["model"], json!("img-a"));
    assert!(v["usage"].is_object());
    let up = h.upstream("img-a");
    assert_eq!(
        up["quality"],
        json!("hd"),
        "quality is passed on, not dropped"
    );
    assert_eq!(up["style"], json!("vivid"));

    let r = h
        .post(
            "/api/v2/image/generations",
            &json!({"prompt": "x", "image": "data:..."}),
            None,
        )
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn embeddings_accept_both_shapes() {
    let h = harness().await;
    let flat = json!({"model": "openai/text-embedding-3-small", "input": ["a", "b"]});
    let r = h.post("/api/v2/embeddings", &flat, None).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["embeddings"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        v["modelWithProvider"],
        json!("openai/text-embedding-3-small")
    );
    assert!(v["usage"]["inputTokens"].as_u64().is_some_and(|n| n > 0));

    let invoke = json!({"input": {"input": "hello", "modelOptions": {"model": "openai/text-embedding-3-small"}},
                        "options": {}});
    let v = json_of(h.post("/api/v2/embeddings", &invoke, None).await).await;
    assert_eq!(v["data"][0]["index"], json!(0));
    assert!(v["data"][0]["embedding"].is_array());
}

#[tokio::test]
async fn status_and_user_info() {
    let h = harness().await;
    assert_eq!(
        json_of(h.get("/api/v2/status", None).await).await,
        json!({"available": true})
    );
    assert_eq!(
        json_of(
            h.get("/api/v2/status?model=openai/gpt-4o-mini", Some(KEY))
                .await
        )
        .await,
        json!({"available": true})
    );
    let v = json_of(
        h.get("/api/v2/status?model=anthropic/claude-haiku-4-5", None)
            .await,
    )
    .await;
    assert_eq!(v["available"], json!(false));
    assert_eq!(v["code"], json!(404));
    assert!(v["error"].as_str().is_some_and(|m| m.contains("anthropic")));

    let r = h.get("/api/user/info", None).await;
    assert_eq!(r.status(), 401);
    let v = json_of(h.get("/api/user/info", Some(KEY)).await).await;
    assert_eq!(v["enableCredit"], json!(false));
    assert_eq!(v["creditBalance"], Value::Null);
    assert!(v["user"]["did"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test]
async fn credits_mode_402_then_charged() {
    let h = credits_harness().await;
    h.mock.register_scenario(
        "gpt-4o-mini",
        Script::text("paid answer").with_usage(Usage::new(1000, 500)),
    );
    let body = invoke_body("openai/gpt-4o-mini", false);

    // No credits: 402 NOT_ENOUGH with the buy link, before any upstream traffic.
    let r = h.post("/api/v2/chat", &body, None).await;
    assert_eq!(r.status(), 402);
    let v = json_of(r).await;
    assert_eq!(v["error"]["type"], json!("NOT_ENOUGH"));
    assert_eq!(v["error"]["link"], json!("https://pay.example/buy"));
    assert!(v["error"]["timestamp"].is_string());
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("https://pay.example/buy"))
    );
    assert_eq!(h.mock.hits(), 0);

    // Legacy SSE callers get it in-stream.
    let r = h
        .post(
            "/api/v2/chat/completions",
            &json!({"model": "openai/gpt-4o-mini", "prompt": "hi"}),
            Some("text/event-stream"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap_or_default();
    assert!(text.contains(r#""type":"NOT_ENOUGH""#), "{text}");

    // Status and user info say so too.
    let v = json_of(
        h.get("/api/v2/status?model=openai/gpt-4o-mini", Some(KEY))
            .await,
    )
    .await;
    assert_eq!(
        (
            v["available"].clone(),
            v["code"].clone(),
            v["type"].clone(),
            v["link"].clone()
        ),
        (
            json!(false),
            json!(402),
            json!("NOT_ENOUGH"),
            json!("https://pay.example/buy")
        )
    );
    let info = json_of(h.get("/api/user/info", Some(KEY)).await).await;
    assert_eq!(info["enableCredit"], json!(true));
    assert_eq!(info["creditBalance"]["balance"], json!("0"));
    assert_eq!(info["paymentLink"], json!("https://pay.example/buy"));
    assert_eq!(info["creditPrefix"], json!("$"));

    // Catalog: priced models with their rates as strings; unpriced ones are not offered.
    let models = json_of(h.get("/api/ai/models?type=chat", None).await).await;
    let list = models.as_array().cloned().unwrap_or_default();
    let mini = list
        .iter()
        .find(|m| m["key"] == json!("openai/gpt-4o-mini"))
        .cloned()
        .unwrap_or(Value::Null);
    let rate = mini["input_credits_per_token"].as_str().unwrap_or_default();
    assert!(rate.parse::<f64>().is_ok_and(|r| r > 0.0), "{mini}");
    assert!(mini["output_credits_per_token"].is_string());

    // Grant credits; the call goes through and reports what it cost.
    let did = info["user"]["did"].as_str().unwrap_or_default().to_string();
    let granted = h
        .hub
        .store()
        .grant(&GrantReq {
            account: user_account(&did),
            kind: GrantKind::Grant,
            amount: 5 * hub_core::pricing::UNITS_PER_CREDIT,
            idem_key: "aigne-test-grant".into(),
            expires_at_ms: None,
            note: None,
            now_ms: now_ms(),
            starter: None,
        })
        .await;
    assert!(matches!(granted, Ok(GrantOutcome::Applied)), "{granted:?}");
    let r = h.post("/api/v2/chat", &body, None).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    let credits = v["usage"]["aigneHubCredits"].as_f64().unwrap_or_default();
    assert!(credits > 0.0, "{v}");
    assert_eq!(v["usage"]["creditPrefix"], json!("$"));
    let info = json_of(h.get("/api/user/info", Some(KEY)).await).await;
    let balance: f64 = info["creditBalance"]["balance"]
        .as_str()
        .and_then(|b| b.parse().ok())
        .unwrap_or_default();
    assert!(
        (balance - (5.0 - credits)).abs() < 1e-6,
        "{info} after {credits}"
    );
    assert_eq!(info["creditBalance"]["grantCount"], json!(1));

    // Streamed: the final frame carries the cost.
    let text = h
        .post(
            "/api/v2/chat",
            &invoke_body("openai/gpt-4o-mini", true),
            None,
        )
        .await
        .text()
        .await
        .unwrap_or_default();
    let data: Vec<Value> = frames(&text).iter().map(|(_, d)| parse(d)).collect();
    let last = data.last().cloned().unwrap_or_default();
    assert!(
        last["delta"]["json"]["usage"]["aigneHubCredits"]
            .as_f64()
            .is_some_and(|c| c > 0.0),
        "{text}"
    );
}
