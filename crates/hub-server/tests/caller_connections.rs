//! The caller side's connections (src/listen.rs): HTTP/1.1 and HTTP/2 with prior knowledge on one
//! port, chosen by peeking at the first bytes, including when those arrive in pieces; graceful
//! shutdown lets streams in flight on both kinds finish, closes idle connections (and ones that
//! have not sent a byte), and `serve` returns.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::time::Duration;

use hub_core::Hub;
use hub_core::config::{EnvProvider, HubOptions};
use hub_core::providers::{CredentialSecret, ProviderKind, Secret};
use hub_testkit::{Flavor, MockServer, Script};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

struct Server {
    addr: SocketAddr,
    served: common::Served,
    _dir: tempfile::TempDir,
}

const ADMIN: &str = "ahk_test_admin_key_0123456789abcdef";
const PROVIDER_KEY: &str = "sk-provider-secret-caller-conns";

async fn start() -> Server {
    start_with(None).await
}

/// A hub; with `upstream`, an OpenAI provider at that base URL and an admin key.
async fn start_with(upstream: Option<String>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = HubOptions::new(dir.path());
    if let Some(base) = upstream {
        opts.admin_key = Some(Secret::new(ADMIN));
        opts.env_providers = vec![EnvProvider {
            kind: ProviderKind::OpenAi,
            base_url: Some(base),
            region: None,
            credentials: vec![CredentialSecret::api_key(PROVIDER_KEY)],
        }];
    }
    let hub = Hub::open(opts).await.unwrap().hub;
    let served = common::Served::start(hub).await;
    Server {
        addr: served.addr,
        served,
        _dir: dir,
    }
}

#[tokio::test]
async fn http1_and_http2_with_prior_knowledge_share_the_port() {
    let s = start().await;
    let url = format!("http://{}/healthz", s.addr);

    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let resp = h1.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["status"],
        "ok"
    );

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..3 {
        let resp = h2.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(
            resp.json::<serde_json::Value>().await.unwrap()["status"],
            "ok"
        );
    }
}

/// "P" could begin the HTTP/2 preface or `POST`/`PUT`/`PATCH`: the server waits for more.
#[tokio::test]
async fn an_http1_head_whose_first_byte_arrives_alone_is_served() {
    let s = start().await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let head =
        b"POST /healthz HTTP/1.1\r\nHost: hub\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    tcp.write_all(&head[..1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    tcp.write_all(&head[1..]).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    // /healthz is GET only: a routed answer (405) shows the head was read whole, as HTTP/1.1.
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
}

#[tokio::test]
async fn an_http2_preface_that_arrives_in_pieces_is_served_as_http2() {
    let s = start().await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(&PREFACE[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    tcp.write_all(&PREFACE[10..]).await.unwrap();
    tcp.write_all(&EMPTY_SETTINGS).await.unwrap();
    // An HTTP/2 server's first frame is its SETTINGS.
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame[3], 4, "frame type SETTINGS, got {frame:?}");
    assert_eq!(&frame[5..9], &[0, 0, 0, 0], "on stream 0");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_of_both_kinds_and_serve_returns() {
    let mut s = start().await;
    let url = format!("http://{}/healthz", s.addr);
    // An idle HTTP/1.1 keep-alive connection and an idle HTTP/2 connection, each after a request.
    let mut h1 = TcpStream::connect(s.addr).await.unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = h1.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    assert_eq!(h2.get(&url).send().await.unwrap().status(), 200);
    // And a connection that has not sent a byte yet.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    s.served.stop();
    let served = tokio::time::timeout(Duration::from_secs(5), &mut s.served.task)
        .await
        .expect("serve returns once its connections have closed")
        .unwrap();
    served.unwrap();
    // The kept-alive HTTP/1.1 connection was closed by the server.
    let n = tokio::time::timeout(Duration::from_secs(2), h1.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    let n = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    // And nothing listens any more.
    assert!(TcpStream::connect(s.addr).await.is_err());
}

/// Shutdown while a stream is in flight on an HTTP/1.1 connection and on an HTTP/2 one: both
/// streams are delivered whole, then `serve` returns.
#[tokio::test]
async fn shutdown_lets_streams_in_flight_finish_on_both_kinds() {
    let mock = MockServer::start_with_key(Flavor::OpenAi, PROVIDER_KEY).await;
    mock.register_scenario(
        "slow",
        Script::text("one two three four five six")
            .with_chunks(6)
            .with_chunk_delay_ms(100),
    );
    let mut s = start_with(Some(mock.base_url())).await;
    let url = format!("http://{}/v1/chat/completions", s.addr);
    let body = serde_json::json!({
        "model": "openai/slow",
        "stream": true,
        "messages": [{"role": "user", "content": "count"}],
    });
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut streams = Vec::new();
    for client in [h1, h2] {
        let resp = client
            .post(&url)
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(tokio::spawn(async move { resp.text().await }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.served.stop();
    for stream in streams {
        let text = stream
            .await
            .unwrap()
            .expect("the stream is delivered whole");
        assert!(text.contains("six"), "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }
    tokio::time::timeout(Duration::from_secs(5), &mut s.served.task)
        .await
        .expect("serve returns once the streams are done")
        .unwrap()
        .unwrap();
}
