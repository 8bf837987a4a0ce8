//! The Anthropic ingress in-process: the real router and hub (temp data dir) on port 0, fed by a
//! hub-testkit OpenAI mock. Checks the wire shapes an Anthropic client sees and what is recorded.

use futures::StreamExt;
use hub_core::auth::Role;
use hub_core::config::{EnvProvider, HubOptions};
use hub_core::iam::{self, Actor, NewKey, NewUser};
use hub_core::policy::KeyPolicy;
use hub_core::providers::{CredentialSecret, ProviderKind, Secret};
use hub_core::store::UsageRecord;
use hub_core::{ErrorKind, Hub, HubError};
use hub_testkit::{Flavor, MockServer, Script, Usage};
use serde_json::{Value, json};

mod common;

const KEY: &str = "sk-anthropic-ingress-test-key";

struct Harness {
    _dir: tempfile::TempDir,
    hub: Hub,
    mock: MockServer,
    url: String,
    http: reqwest::Client,
    _served: common::Served,
}

async fn harness() -> Harness {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => unreachable!("tempdir: {e}"),
    };
    let mut opts = HubOptions::new(dir.path());
    opts.admin_key = Some(Secret::new(KEY));
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
    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_as(KEY, path, body).await
    }

    async fn post_as(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        match self
            .http
            .post(format!("{}{path}", self.url))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => unreachable!("request failed: {e}"),
        }
    }

    async fn record(&self, id: &str) -> UsageRecord {
        let recs = self.hub.store().list_usage(100).await.unwrap_or_default();
        match recs.into_iter().find(|r| r.id == id) {
            Some(r) => r,
            None => unreachable!("no usage record {id}"),
        }
    }
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json::<Value>().await.unwrap_or(Value::Null)
}

fn request_id(r: &reqwest::Response) -> String {
    let id = r
        .headers()
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(!id.is_empty(), "no request-id header");
    id
}

fn user(text: &str) -> Value {
    json!({"model": "openai/gpt-4o-mini", "max_tokens": 64, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn json_message_from_an_openai_upstream() {
    let h = harness().await;
    h.mock
        .push(Script::text("Hello from the mock.").with_usage(Usage::new(30, 5).with_cached(10)));
    let mut body = user("Hi");
    body["system"] = json!("Be terse.");
    body["stop_sequences"] = json!(["END"]);
    let r = h.post("/v1/messages", &body).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v = json_of(r).await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert!(
        v["id"].as_str().unwrap_or_default().starts_with("msg_"),
        "{v}"
    );
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Hello from the mock."}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10, "output_tokens": 5})
    );
    // what went upstream: OpenAI's wire, system first, stop and max tokens carried
    let up = h.mock.requests()[0].body.clone();
    assert_eq!(up["model"], "gpt-4o-mini");
    assert_eq!(
        up["messages"][0],
        json!({"role": "system", "content": "Be terse."})
    );
    assert_eq!(up["messages"][1], json!({"role": "user", "content": "Hi"}));
    assert_eq!(up["stop"], json!(["END"]));
    let rec = h.record(&id).await;
    assert_eq!(rec.ingress, "anthropic");
    assert_eq!(rec.endpoint, "chat");
    assert_eq!(rec.provider.as_deref(), Some("openai"));
    assert_eq!((rec.prompt_tokens, rec.completion_tokens), (30, 5));
    assert_eq!(rec.cache_read_tokens, 10);
    assert!(!rec.stream);
}

#[tokio::test]
async fn tool_round_trip_in_both_directions() {
    let h = harness().await;
    h.mock
        .push(Script::new().with_tool_call("call_7", "get_weather", r#"{"city":"Paris"}"#));
    let body = json!({
        "model": "openai/gpt-4o-mini", "max_tokens": 64,
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Lyon"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12C"}, {"type": "text", "text": "Now Paris."}]},
        ],
    });
    // Claude Code adds `?beta=true`
    let r = h.post("/v1/messages?beta=true", &body).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"],
        json!([{"type": "tool_use", "id": "call_7", "name": "get_weather", "input": {"city": "Paris"}}])
    );
    let up = h.mock.requests()[0].body.clone();
    assert_eq!(up["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(up["tools"][0]["function"]["parameters"]["type"], "object");
    assert_eq!(
        up["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    let msgs = up["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(msgs.len(), 4, "{up}");
    assert_eq!(msgs[1]["tool_calls"][0]["id"], "toolu_1");
    assert_eq!(
        msgs[1]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Lyon"}"#
    );
    assert_eq!(msgs[2]["role"], "tool");
    assert_eq!(msgs[2]["tool_call_id"], "toolu_1");
    assert_eq!(msgs[2]["content"], "12C");
    assert_eq!(msgs[3], json!({"role": "user", "content": "Now Paris."}));
}

/// Reads an SSE body into (event, data) pairs.
async fn sse_events(r: reqwest::Response) -> Vec<(String, Value)> {
    use eventsource_stream::Eventsource;
    let mut out = Vec::new();
    let mut s = r.bytes_stream().eventsource();
    while let Some(ev) = s.next().await {
        match ev {
            Ok(ev) => {
                let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                assert_eq!(data["type"], json!(ev.event), "event name != data.type");
                out.push((ev.event, data));
            }
            Err(e) => unreachable!("bad SSE: {e}"),
        }
    }
    out
}

#[tokio::test]
async fn stream_renders_anthropic_events_and_records_before_message_stop() {
    let h = harness().await;
    h.mock.push(
        Script::text("alpha beta gamma")
            .with_chunks(3)
            .with_usage(Usage::new(40, 3)),
    );
    let mut body = user("Count.");
    body["stream"] = json!(true);
    let r = h.post("/v1/messages", &body).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let id = request_id(&r);
    let evs = sse_events(r).await;
    let names: Vec<&str> = evs.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names[1], "content_block_start");
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let text: String = evs
        .iter()
        .filter(|(e, _)| e == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(text, "alpha beta gamma");
    assert!(
        evs.iter()
            .filter(|(e, _)| e == "content_block_delta")
            .count()
            >= 3,
        "chunks merged"
    );
    let start_usage = &evs[0].1["message"]["usage"];
    assert!(
        start_usage["input_tokens"].as_u64().unwrap_or(0) > 0,
        "{start_usage}"
    );
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 3);
    assert_eq!(delta["usage"]["input_tokens"], 40);
    // committed before the terminator was sent
    let rec = h.record(&id).await;
    assert_eq!(rec.ingress, "anthropic");
    assert!(rec.stream);
    assert_eq!((rec.prompt_tokens, rec.completion_tokens), (40, 3));
}

#[tokio::test]
async fn stream_tool_calls_get_one_block_each() {
    let h = harness().await;
    h.mock.push(
        Script::new()
            .with_text("Checking.")
            .with_tool_call("call_a", "get_weather", r#"{"city":"Paris"}"#)
            .with_tool_call("call_b", "get_time", r#"{"tz":"Europe/Paris"}"#),
    );
    let mut body = user("Weather and time?");
    body["stream"] = json!(true);
    body["tools"] = json!([
        {"name": "get_weather", "input_schema": {"type": "object"}},
        {"name": "get_time", "input_schema": {"type": "object"}},
    ]);
    let r = h.post("/v1/messages", &body).await;
    assert_eq!(r.status(), 200);
    let evs = sse_events(r).await;
    let starts: Vec<&Value> = evs
        .iter()
        .filter(|(e, _)| e == "content_block_start")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(starts.len(), 3, "{evs:?}");
    assert_eq!(starts[0]["content_block"]["type"], "text");
    assert_eq!(starts[1]["content_block"]["id"], "call_a");
    assert_eq!(starts[1]["index"], 1);
    assert_eq!(starts[2]["content_block"]["name"], "get_time");
    assert_eq!(starts[2]["index"], 2);
    for idx in 1..=2 {
        let args: String = evs
            .iter()
            .filter(|(e, d)| e == "content_block_delta" && d["index"] == idx)
            .map(|(_, d)| {
                d["delta"]["partial_json"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert!(
            serde_json::from_str::<Value>(&args).is_ok_and(|v| v.is_object()),
            "{args}"
        );
    }
    // every block is stopped exactly once, in order, before the next starts
    let mut open: Option<u64> = None;
    for (e, d) in &evs {
        match e.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "block opened while another is open");
                open = d["index"].as_u64();
            }
            "content_block_delta" => assert_eq!(open, d["index"].as_u64()),
            "content_block_stop" => {
                assert_eq!(open, d["index"].as_u64());
                open = None;
            }
            _ => {}
        }
    }
    assert_eq!(evs[evs.len() - 2].1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn mid_stream_error_is_an_error_event() {
    let h = harness().await;
    h.mock.push(
        Script::text("one two three four")
            .with_chunks(4)
            .with_error_after_chunks(2),
    );
    let mut body = user("x");
    body["stream"] = json!(true);
    let r = h.post("/v1/messages", &body).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let evs = sse_events(r).await;
    let last = &evs[evs.len() - 1];
    assert_eq!(last.0, "error", "{evs:?}");
    assert!(last.1["error"]["type"].is_string());
    assert!(
        last.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("openai"))
    );
    assert!(!evs.iter().any(|(e, _)| e == "message_stop"));
    let rec = h.record(&id).await;
    assert_eq!(rec.status.as_str(), "failed");
}

#[tokio::test]
async fn errors_in_anthropic_shape() {
    let h = harness().await;
    // 401: no key
    let r = h
        .http
        .post(format!("{}/v1/messages", h.url))
        .json(&user("x"))
        .send()
        .await;
    let r = match r {
        Ok(r) => r,
        Err(e) => unreachable!("{e}"),
    };
    assert_eq!(r.status(), 401);
    let id = request_id(&r);
    let v = json_of(r).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["request_id"], json!(id));
    // 400: max_tokens missing, with a record of the rejected call
    let r = h
        .post(
            "/v1/messages",
            &json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let id = request_id(&r);
    let v = json_of(r).await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["message"], "max_tokens: Field required");
    assert_eq!(v["request_id"], json!(id));
    assert_eq!(h.record(&id).await.http_status, 400);
    // 400: not JSON
    let r = match h
        .http
        .post(format!("{}/v1/messages", h.url))
        .header("x-api-key", KEY)
        .body("{nope")
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => unreachable!("{e}"),
    };
    assert_eq!(r.status(), 400);
    assert_eq!(json_of(r).await["error"]["type"], "invalid_request_error");
    // 404: unknown provider
    let mut body = user("x");
    body["model"] = json!("nosuch/model");
    let r = h.post("/v1/messages", &body).await;
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error"]["type"], "not_found_error");
    // 429 with retry-after from upstream
    h.mock.push(Script::error(429).with_retry_after(7));
    let r = h.post("/v1/messages", &user("x")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("7")
    );
    assert_eq!(json_of(r).await["error"]["type"], "rate_limit_error");
    // unknown sub-route: Anthropic-shaped 404
    let r = h.post("/v1/messages/nope", &user("x")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error"]["type"], "not_found_error");
    // the upstream was called exactly once (the 429)
    assert_eq!(h.mock.hits(), 1);
}

#[tokio::test]
async fn count_tokens_answers_with_the_marked_estimate() {
    let h = harness().await;
    let body = json!({"model": "openai/gpt-4o-mini", "system": "S", "messages": [{"role": "user", "content": "hello world"}]});
    let r = h.post("/v1/messages/count_tokens", &body).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    assert_eq!(
        r.headers()
            .get("x-aigne-hub-estimated")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let v = json_of(r).await;
    // o200k: "S" = 1, "hello world" = 2; 3 per message + 3 for priming
    assert_eq!(v, json!({"input_tokens": 3 + (3 + 1) + (3 + 2)}));
    // recorded, but nothing was consumed
    let rec = h.record(&id).await;
    assert_eq!(
        (rec.endpoint.as_str(), rec.requested_model.as_str()),
        ("count_tokens", "openai/gpt-4o-mini")
    );
    assert_eq!((rec.prompt_tokens, rec.completion_tokens), (0, 0));
    assert_eq!(rec.status.as_str(), "success");
    let mut unknown = body.clone();
    unknown["model"] = json!("nosuch/model");
    let r = h.post("/v1/messages/count_tokens", &unknown).await;
    assert_eq!(r.status(), 404);
    assert_eq!(h.record(&request_id(&r)).await.http_status, 404);
    assert_eq!(json_of(r).await["error"]["type"], "not_found_error");
    assert_eq!(h.mock.hits(), 0, "counting must not call the upstream");
}

/// A key of a member with `policy`.
async fn policy_key(h: &Harness, policy: KeyPolicy) -> String {
    let store = h.hub.store().as_ref();
    let user = iam::create_user(
        store,
        &Actor::cli(),
        &NewUser {
            name: format!("m-{}", uuid::Uuid::new_v4().simple()),
            role: Role::Member,
            team: None,
        },
    )
    .await;
    let user = match user {
        Ok(u) => u.id,
        Err(e) => unreachable!("create user: {e}"),
    };
    let key = iam::create_key(
        store,
        &Actor::cli(),
        &NewKey {
            user_id: user,
            policy,
            ..NewKey::default()
        },
    )
    .await;
    let key = match key {
        Ok(k) => k.key,
        Err(e) => unreachable!("create key: {e}"),
    };
    if let Err(e) = h.hub.reload_if_changed().await {
        unreachable!("reload: {e}");
    }
    key
}

#[tokio::test]
async fn key_policy_applies_to_messages_and_count_tokens() {
    let h = harness().await;
    let openai_only = policy_key(
        &h,
        KeyPolicy {
            surfaces: vec!["openai".into()],
            ..KeyPolicy::default()
        },
    )
    .await;
    let mini_only = policy_key(
        &h,
        KeyPolicy {
            models: vec!["openai/gpt-4o-mini*".into()],
            ..KeyPolicy::default()
        },
    )
    .await;
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let r = h.post_as(&openai_only, path, &user("x")).await;
        assert_eq!(r.status(), 403, "{path}");
        let v = json_of(r).await;
        assert_eq!(v["error"]["type"], "permission_error", "{path}: {v}");
        let mut body = user("x");
        body["model"] = json!("openai/gpt-4o");
        let r = h.post_as(&mini_only, path, &body).await;
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(json_of(r).await["error"]["type"], "permission_error");
    }
    let r = h
        .post_as(&mini_only, "/v1/messages/count_tokens", &user("x"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.mock.hits(), 0);
}

#[test]
fn overloaded_is_529_for_anthropic_callers() {
    use axum::response::IntoResponse;
    let resp =
        hub_server::errors::ApiError::anthropic(HubError::new(ErrorKind::Unavailable, "busy"))
            .into_response();
    assert_eq!(resp.status().as_u16(), 529);
}
