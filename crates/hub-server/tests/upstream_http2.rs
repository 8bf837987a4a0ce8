//! Outbound HTTP/2 where the upstream speaks it: HTTPS mocks behind a private CA generated per
//! test (`hub_testkit::tls`), trusted through `HubOptions::extra_ca_pem` / `HUB_EXTRA_CA_FILE`.
//! A mock offering `h2` by ALPN sees HTTP/2 requests (non-streaming and streaming calls work); a
//! mock offering only `http/1.1` still works, over HTTP/1.1; without the extra CA the hub refuses
//! the upstream's certificate (verification is never off); more streams than one HTTP/2
//! connection carries start at once, on more connections.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use hub_core::Hub;
use hub_core::config::{EnvProvider, HubOptions};
use hub_core::providers::{CredentialSecret, ProviderKind, Secret};
use hub_testkit::{Flavor, MockConfig, MockServer, MockTls, Script};
use serde_json::{Value, json};

mod common;

const ADMIN: &str = "ahk_test_admin_key_0123456789abcdef";
const PROVIDER_KEY: &str = "sk-provider-secret-value-h2";

/// A private CA and a server certificate it signed for 127.0.0.1 / localhost: (CA PEM, TLS).
fn private_ca(alpn: &[&str]) -> (String, MockTls) {
    hub_testkit::tls::private_ca(alpn).unwrap()
}

async fn https_mock(flavor: Flavor, tls: MockTls) -> MockServer {
    let mock = MockServer::start_with_config(
        flavor,
        MockConfig {
            api_key: PROVIDER_KEY.to_string(),
            tls: Some(tls),
            ..MockConfig::default()
        },
    )
    .await;
    assert!(mock.base_url().starts_with("https://127.0.0.1:"));
    mock
}

struct Server {
    base: String,
    hub: Hub,
    _served: common::Served,
    _dir: tempfile::TempDir,
}

async fn start(providers: Vec<(ProviderKind, String)>, extra_ca: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = HubOptions::new(dir.path());
    opts.admin_key = Some(Secret::new(ADMIN));
    opts.env_providers = providers
        .into_iter()
        .map(|(kind, base)| EnvProvider {
            kind,
            base_url: Some(base),
            region: None,
            credentials: vec![CredentialSecret::api_key(PROVIDER_KEY)],
        })
        .collect();
    opts.timeouts.connect = Duration::from_secs(5);
    opts.extra_ca_pem = extra_ca.map(|p| p.as_bytes().to_vec());
    let hub = Hub::open(opts).await.unwrap().hub;
    let served = common::Served::start(hub.clone()).await;
    Server {
        base: served.base(),
        hub,
        _served: served,
        _dir: dir,
    }
}

/// (status, body text) of one chat call.
async fn chat(base: &str, model: &str, stream: bool) -> (u16, String) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(ADMIN)
        .json(&json!({"model": model, "stream": stream,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn versions(mock: &MockServer) -> Vec<String> {
    mock.requests().into_iter().map(|r| r.version).collect()
}

/// A hub with OpenAI at an HTTPS mock offering h2 (and http/1.1) and DeepSeek at one offering
/// only http/1.1: (h2 mock, http/1.1 mock, hub).
async fn h2_and_http1_upstreams() -> (MockServer, MockServer, Server) {
    let (ca_h2, tls_h2) = private_ca(&["h2", "http/1.1"]);
    let (ca_h1, tls_h1) = private_ca(&["http/1.1"]);
    let h2 = https_mock(Flavor::OpenAi, tls_h2).await;
    let h1 = https_mock(Flavor::DeepSeek, tls_h1).await;
    let bundle = format!("{ca_h2}{ca_h1}");
    let srv = start(
        vec![
            (ProviderKind::OpenAi, h2.base_url()),
            (ProviderKind::DeepSeek, h1.base_url()),
        ],
        Some(&bundle),
    )
    .await;
    (h2, h1, srv)
}

#[tokio::test]
async fn upstreams_that_offer_h2_get_http2_and_http1_only_upstreams_still_work() {
    let (h2, h1, srv) = h2_and_http1_upstreams().await;

    h2.push(Script::text("over h2"));
    let (status, body) = chat(&srv.base, "openai/gpt-4o-mini", false).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "over h2");
    h2.push(Script::text("streamed over h2").with_chunks(3));
    let (status, body) = chat(&srv.base, "openai/gpt-4o-mini", true).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"content\":\"strea\""), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(versions(&h2), vec!["HTTP/2.0", "HTTP/2.0"]);

    h1.push(Script::text("over http/1.1"));
    let (status, body) = chat(&srv.base, "deepseek/deepseek-chat", false).await;
    assert_eq!(status, 200, "{body}");
    h1.push(Script::text("streamed over http/1.1").with_chunks(3));
    let (status, body) = chat(&srv.base, "deepseek/deepseek-chat", true).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(versions(&h1), vec!["HTTP/1.1", "HTTP/1.1"]);

    // One pooled client per provider: concurrent streams to the h2 upstream share its one
    // connection; HTTP/1.1 needs a connection per request in flight.
    for mock in [&h2, &h1] {
        mock.register_scenario(
            "slow",
            Script::text("a b c d")
                .with_chunks(4)
                .with_chunk_delay_ms(150),
        );
    }
    let calls = (0..6).flat_map(|_| {
        [
            chat(&srv.base, "openai/slow", true),
            chat(&srv.base, "deepseek/slow", true),
        ]
    });
    for (status, body) in futures::future::join_all(calls).await {
        assert_eq!(status, 200, "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    }
    assert_eq!(h2.stats().requests, 8);
    // The first call learned by ALPN that the upstream speaks HTTP/2 (its connection); every
    // later one shares one HTTP/2 connection, opened by prior knowledge.
    assert_eq!(
        h2.stats().connections,
        2,
        "h2 multiplexes over one pooled connection"
    );
    assert!(h1.stats().connections > 1, "{:?}", h1.stats());
    assert!(versions(&h2).iter().all(|v| v == "HTTP/2.0"));

    let usage = srv.hub.store().list_usage(100).await.unwrap();
    assert_eq!(usage.len(), 16);
    assert!(
        usage.iter().all(|r| r.status.as_str() == "success"),
        "{usage:?}"
    );
}

#[tokio::test]
async fn a_private_ca_is_not_trusted_unless_configured() {
    let (_ca, tls) = private_ca(&["h2", "http/1.1"]);
    let mock = https_mock(Flavor::OpenAi, tls).await;
    let srv = start(vec![(ProviderKind::OpenAi, mock.base_url())], None).await;
    let (status, body) = chat(&srv.base, "openai/gpt-4o-mini", false).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(mock.hits(), 0, "no request got past the handshake");
    // A file that holds no certificate is refused at start, not ignored.
    let dir = tempfile::tempdir().unwrap();
    let mut opts = HubOptions::new(dir.path());
    opts.extra_ca_pem = Some(b"not a certificate".to_vec());
    let err = Hub::open(opts).await.err().expect("refused");
    assert!(err.to_string().contains("HUB_EXTRA_CA_FILE"), "{err}");
}

#[tokio::test]
async fn the_binary_trusts_hub_extra_ca_file() {
    let (ca, tls) = private_ca(&["h2", "http/1.1"]);
    let mock = https_mock(Flavor::OpenAi, tls).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("private-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_aigne-hub"))
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HUB_ADMIN_KEY", ADMIN)
        .env("OPENAI_API_KEY", PROVIDER_KEY)
        .env("OPENAI_BASE_URL", mock.base_url())
        .env("HUB_EXTRA_CA_FILE", &ca_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = common::listening_address(&mut child).await;
    mock.push(Script::text("hello"));
    let (status, body) = chat(&base, "openai/gpt-4o-mini", false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(versions(&mock), vec!["HTTP/2.0"]);
    let _ = child.kill().await;
}

/// An HTTP/2 upstream caps the streams open at once on one connection
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`: 200 for the mock, as hyper's server default; 100 to 256
/// at real providers). A client that keeps every call to a host on its one HTTP/2 connection
/// queues the calls past the cap until an earlier stream ends: with long streams a call waits
/// minutes for its first byte. The hub leases a pool per 100 calls in flight instead: every
/// stream starts at once, on a few connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_one_h2_connection_allows_all_start_at_once() {
    let (ca, tls) = private_ca(&["h2", "http/1.1"]);
    let mock = https_mock(Flavor::OpenAi, tls).await;
    let srv = start(vec![(ProviderKind::OpenAi, mock.base_url())], Some(&ca)).await;
    // Streams of ~4 s: the first chunk at once, then one a second.
    mock.register_scenario(
        "long",
        Script::text("a b c d e")
            .with_chunks(5)
            .with_chunk_delay_ms(1000),
    );
    const N: usize = 230;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(N)
        .build()
        .unwrap();
    // One call every 4 ms (~1 s in all), as traffic arrives: each finds the pooled connection
    // already up, so without a pool per 100 streams all of them would share it.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..N {
        let (client, base) = (client.clone(), srv.base.clone());
        calls.spawn(async move {
            let started = std::time::Instant::now();
            let r = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(ADMIN)
                .json(&json!({"model": "openai/long", "stream": true,
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            // The hub answers once the upstream's first chunk is in.
            let first = started.elapsed();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            (status, first, body)
        });
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    let mut firsts: Vec<Duration> = Vec::new();
    while let Some(r) = calls.join_next().await {
        let (status, first, body) = r.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        firsts.push(first);
    }
    firsts.sort();
    let slowest = *firsts.last().unwrap();
    assert!(
        slowest < Duration::from_millis(1500),
        "every stream should start at once, not wait for an earlier one to end (~4 s); the \
         slowest waited {slowest:?} ({} over 1 s; p50 {:?}); mock {:?}",
        firsts.iter().filter(|d| d.as_secs() >= 1).count(),
        firsts[N / 2],
        mock.stats()
    );
    let stats = mock.stats();
    assert_eq!(stats.streams_completed, N as u64);
    assert!(versions(&mock).iter().all(|v| v == "HTTP/2.0"));
    // A connection per 100 streams in flight, and the first call's, which learned the protocol.
    assert_eq!(stats.connections, N.div_ceil(100) as u64 + 1, "{stats:?}");
}

/// A burst of calls to a cold upstream: a client offering h2 and http/1.1 by ALPN cannot know the
/// upstream speaks HTTP/2 before a connection is up, so each call used to open its own TLS
/// connection (thousands in a big burst; all but one per pool closed again once one had
/// negotiated h2). The first call now learns the protocol and the rest wait for its connection:
/// one connection per 100 calls, and the learning call's. An upstream offering only http/1.1
/// still gets a connection per call in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_opens_a_connection_per_pool_not_per_call() {
    let (h2, h1, srv) = h2_and_http1_upstreams().await;
    for mock in [&h2, &h1] {
        mock.register_scenario(
            "burst",
            Script::text("a b c")
                .with_chunks(3)
                .with_chunk_delay_ms(300),
        );
    }
    const N: usize = 150;
    const N1: usize = 20;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(N + N1)
        .build()
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..N + N1 {
        let (client, base) = (client.clone(), srv.base.clone());
        let model = if i < N {
            "openai/burst"
        } else {
            "deepseek/burst"
        };
        calls.spawn(async move {
            let r = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(ADMIN)
                .json(&json!({"model": model, "stream": true,
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
    }
    while let Some(r) = calls.join_next().await {
        let (status, body) = r.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    }
    let stats = h2.stats();
    assert_eq!(stats.streams_completed, N as u64, "{stats:?}");
    assert!(versions(&h2).iter().all(|v| v == "HTTP/2.0"));
    assert_eq!(stats.connections, N.div_ceil(100) as u64 + 1, "{stats:?}");
    let stats = h1.stats();
    assert_eq!(stats.streams_completed, N1 as u64, "{stats:?}");
    assert!(versions(&h1).iter().all(|v| v == "HTTP/1.1"));
    assert!(stats.connections > 1, "{stats:?}");
}
