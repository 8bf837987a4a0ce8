//! Black-box tests of the native mocks (Anthropic, Gemini, Bedrock) over real HTTP: the
//! protocol rules a client must get right, checked from the wire (the provider modules are
//! checked against these mocks by hub-core's conformance suite).

#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected shapes")]

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::HeaderValue as EsValue;
use bytes::BytesMut;
use hub_testkit::{Flavor, MockServer, Script, Usage};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn anthropic_body(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn anthropic_requires_key_version_and_max_tokens() {
    let mock = MockServer::start(Flavor::Anthropic).await;
    let url = format!("{}/v1/messages", mock.base_url());
    let send = |key: Option<&str>, version: bool, body: Value| {
        let mut r = client().post(&url).json(&body);
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        if version {
            r = r.header("anthropic-version", "2023-06-01");
        }
        r.send()
    };
    let r = send(None, true, anthropic_body(false)).await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    let r = send(Some("sk-test"), false, anthropic_body(false))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut no_max = anthropic_body(false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let r = send(Some("sk-test"), true, no_max).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    mock.push(Script::error(529));
    let r = send(Some("sk-test"), true, anthropic_body(false))
        .await
        .unwrap();
    assert_eq!(r.status(), 529);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn anthropic_stream_names_events_pings_and_cumulative_usage() {
    let mock = MockServer::start(Flavor::Anthropic).await;
    mock.push(
        Script::text("one two")
            .with_reasoning("hmm")
            .with_usage(Usage::new(100, 7).with_cached(30).with_cache_write(10)),
    );
    let raw = client()
        .post(format!("{}/v1/messages", mock.base_url()))
        .header("x-api-key", "sk-test")
        .header("anthropic-version", "2023-06-01")
        .json(&anthropic_body(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut names = Vec::new();
    for block in raw.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut lines = block.lines();
        let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
        let data: Value =
            serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["type"], name, "event line equals data.type");
        if name == "message_start" {
            // input_tokens excludes cache reads and writes.
            assert_eq!(data["message"]["usage"]["input_tokens"], 60);
            assert_eq!(data["message"]["usage"]["cache_read_input_tokens"], 30);
        }
        if name == "message_delta" {
            assert_eq!(data["usage"]["output_tokens"], 7);
        }
        names.push(name.to_owned());
    }
    assert!(names.contains(&"ping".to_owned()));
    assert!(names.iter().any(|n| n == "content_block_delta"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(raw.contains("signature_delta"));
    assert!(!raw.contains("[DONE]"));
}

#[tokio::test]
async fn gemini_key_by_query_and_json_array_stream() {
    let mock = MockServer::start(Flavor::Gemini).await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let base = mock.base_url();
    let r = client()
        .post(format!(
            "{base}/models/gemini-2.5-flash:generateContent?key=wrong"
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["details"][0]["reason"], "API_KEY_INVALID");
    mock.push(Script::text("a b c").with_usage(Usage::new(5, 3)));
    let r = client()
        .post(format!(
            "{base}/models/gemini-2.5-flash:streamGenerateContent?key=sk-test"
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let chunks: Vec<Value> = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(chunks.len(), 4);
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 3);
    // Cumulative usage on every chunk.
    assert!(
        chunks
            .iter()
            .all(|c| c["usageMetadata"]["promptTokenCount"] == 5)
    );
    mock.push(Script::error(429).with_retry_after(7));
    let r = client()
        .post(format!("{base}/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", "sk-test")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    assert!(v.to_string().contains("\"retryDelay\":\"7s\""));
}

#[tokio::test]
async fn bedrock_rejects_unsigned_and_missigned_requests() {
    let mock = MockServer::start(Flavor::Bedrock).await;
    let url = format!(
        "{}/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse",
        mock.base_url()
    );
    let body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]});
    let r = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let forged = format!(
        "AWS4-HMAC-SHA256 Credential={}/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={}",
        mock.api_key(),
        "0".repeat(64)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A current x-amz-date, so the signature (not the clock) is what fails.
    let days = now / 86_400;
    let (y, m, d) = civil(days as i64);
    let secs = now % 86_400;
    let date = format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    let r = client()
        .post(&url)
        .header("authorization", forged)
        .header("x-amz-date", date)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("InvalidSignatureException")
    );
    // A Bedrock API key is accepted.
    let r = client()
        .post(&url)
        .bearer_auth(mock.api_key())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn bedrock_stream_frames_have_crcs_padding_and_usage_only_in_metadata() {
    let mock = MockServer::start(Flavor::Bedrock).await;
    mock.push(Script::text("x y").with_usage(Usage::new(9, 2)));
    let r = client()
        .post(format!(
            "{}/model/amazon.nova-lite-v1%3A0/converse-stream",
            mock.base_url()
        ))
        .bearer_auth(mock.api_key())
        .json(&json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let mut buf = BytesMut::from(&r.bytes().await.unwrap()[..]);
    let mut decoder = MessageFrameDecoder::new();
    let mut events = Vec::new();
    while let DecodedFrame::Complete(msg) = decoder.decode_frame(&mut buf).unwrap() {
        let kind = msg
            .headers()
            .iter()
            .find(|h| h.name().as_str() == ":event-type")
            .map(|h| match h.value() {
                EsValue::String(s) => s.as_str().to_owned(),
                _ => String::new(),
            })
            .unwrap();
        let payload: Value = serde_json::from_slice(msg.payload()).unwrap();
        assert!(payload["p"].as_str().is_some_and(|p| !p.is_empty()));
        if kind != "metadata" {
            assert!(payload.get("usage").is_none());
        }
        events.push((kind, payload));
    }
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"messageStart"));
    assert!(!kinds.contains(&"contentBlockStart"), "text gets no start");
    assert_eq!(&kinds[kinds.len() - 2..], &["messageStop", "metadata"]);
    assert_eq!(events.last().unwrap().1["usage"]["inputTokens"], 9);
}

/// (year, month, day) from days since 1970-01-01.
fn civil(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}
