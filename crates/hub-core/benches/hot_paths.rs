//! Criterion benches for hub-core's hot pure code: stream decoding, request building, response
//! parsing, key lookup, vault, token counting, upstream clients and their TLS handshakes.
//! `cargo bench -p hub-core --bench hot_paths`.
//! (Price computation and Bedrock's event-stream decoding are added when those land.)

#![expect(clippy::unwrap_used, reason = "bench fixtures are known-good")]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hub_core::auth::{KeyIndex, Principal, Role, digest, generate_key};
use hub_core::providers::openai::{Variant, build_chat_body, decode_chunk, parse_chat_response};
use hub_core::types::{ChatRequest, Message, Role as MsgRole};
use hub_core::vault::Vault;

const TEXT_CHUNK: &str = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}],"usage":null}"#;
const USAGE_CHUNK: &str = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;
const RESPONSE: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}"#;

fn request() -> ChatRequest {
    ChatRequest {
        model: "openai/gpt-4o-mini".into(),
        messages: vec![
            Message::text(MsgRole::System, "You are a helpful assistant."),
            Message::text(MsgRole::User, "Say hello in three languages."),
        ],
        ..ChatRequest::default()
    }
}

fn stream_decoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("openai_stream_decode");
    let mut out = Vec::with_capacity(4);
    g.bench_function("text_chunk", |b| {
        b.iter(|| {
            let (mut started, mut finished) = (true, false);
            out.clear();
            decode_chunk(
                Variant::OpenAi,
                black_box(TEXT_CHUNK),
                &mut started,
                &mut finished,
                "gpt-4o",
                &mut out,
            )
            .unwrap()
        })
    });
    g.bench_function("usage_chunk", |b| {
        b.iter(|| {
            let (mut started, mut finished) = (true, false);
            out.clear();
            decode_chunk(
                Variant::OpenAi,
                black_box(USAGE_CHUNK),
                &mut started,
                &mut finished,
                "gpt-4o",
                &mut out,
            )
            .unwrap()
        })
    });
    g.finish();
}

/// An OpenAI stream's body as it arrives: 20 text chunks, the usage chunk and `[DONE]`, in
/// pieces of 1,400 bytes (a TCP segment's worth), cut wherever they fall.
fn sse_body_pieces() -> Vec<bytes::Bytes> {
    let mut body = String::new();
    for _ in 0..20 {
        body.push_str(&format!("data: {TEXT_CHUNK}\n\n"));
    }
    body.push_str(&format!("data: {USAGE_CHUNK}\n\ndata: [DONE]\n\n"));
    body.as_bytes()
        .chunks(1400)
        .map(bytes::Bytes::copy_from_slice)
        .collect()
}

/// SSE framing of one upstream stream (22 events): sse-stream, as the hub frames upstream
/// streams, and eventsource-stream, which it did before (for comparison).
fn sse_framing(c: &mut Criterion) {
    use futures::StreamExt;
    let pieces = sse_body_pieces();
    let feed = || futures::stream::iter(pieces.clone().into_iter().map(Ok::<_, std::io::Error>));
    let mut g = c.benchmark_group("sse_framing_22_events");
    g.bench_function("sse_stream", |b| {
        b.iter(|| {
            futures::executor::block_on(
                sse_stream::SseByteStream::new(feed())
                    .filter(|e| std::future::ready(e.as_ref().is_ok_and(|e| e.data.is_some())))
                    .count(),
            )
        })
    });
    g.bench_function("eventsource_stream", |b| {
        use eventsource_stream::Eventsource;
        b.iter(|| futures::executor::block_on(feed().eventsource().count()))
    });
    g.finish();
}

fn upstream_request_response(c: &mut Criterion) {
    let req = request();
    c.bench_function("openai_build_chat_body_to_vec", |b| {
        b.iter(|| {
            serde_json::to_vec(&build_chat_body(
                Variant::OpenAi,
                "gpt-4o-mini",
                black_box(&req),
                false,
            ))
            .unwrap()
        })
    });
    c.bench_function("openai_parse_chat_response", |b| {
        b.iter(|| {
            parse_chat_response(Variant::OpenAi, black_box(RESPONSE.as_bytes()), "gpt-4o").unwrap()
        })
    });
}

fn key_lookup(c: &mut Criterion) {
    let mut idx = KeyIndex::default();
    let mut keys = Vec::new();
    for i in 0..1000 {
        let k = generate_key();
        idx.insert(
            digest(&k),
            Principal {
                key_id: format!("key{i}"),
                user_id: format!("user{i}"),
                role: Role::Member,
                team_id: None,
            },
        );
        keys.push(k);
    }
    let hit = keys[500].clone();
    let miss = generate_key();
    c.bench_function("key_lookup_hit_1000_keys", |b| {
        b.iter(|| idx.lookup(black_box(&hit)).unwrap())
    });
    c.bench_function("key_lookup_miss_1000_keys", |b| {
        b.iter(|| idx.lookup(black_box(&miss)))
    });
}

fn vault(c: &mut Criterion) {
    let v = Vault::new([7u8; 32]);
    let secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUV";
    let sealed = v.encrypt(secret, "cred_123").unwrap();
    c.bench_function("vault_encrypt", |b| {
        b.iter(|| v.encrypt(black_box(secret), "cred_123").unwrap())
    });
    c.bench_function("vault_decrypt", |b| {
        b.iter(|| v.decrypt(black_box(&sealed), "cred_123").unwrap())
    });
}

/// Token counting: the prompt estimate every call makes when its key has a TPM limit, and a
/// 10 KB document; tiktoken-rs's own count of the same texts for reference.
fn token_counts(c: &mut Criterion) {
    let req = request();
    let doc = include_str!("../../../ARCHITECTURE.md");
    let doc = &doc[..doc.floor_char_boundary(10_000)];
    hub_core::tokenize::warm();
    let reference = tiktoken_rs::o200k_base_singleton();
    c.bench_function("estimate_prompt_short_chat", |b| {
        b.iter(|| hub_core::tokenize::estimate_prompt(black_box(&req)))
    });
    c.bench_function("count_10kb_document", |b| {
        b.iter(|| hub_core::tokenize::count(black_box(doc)))
    });
    c.bench_function("tiktoken_rs_count_10kb_document", |b| {
        b.iter(|| reference.encode_ordinary(black_box(doc)).len())
    });
}

/// Building an upstream client (each provider's pools, each origin, each new HTTP/2 shard builds
/// one), and a new client's first call to a local HTTPS origin another client reached before:
/// its TLS handshake (client and server both in this process) and one request.
fn upstream_clients(c: &mut Criterion) {
    use hub_core::upstream_http::{Client, ClientOptions, roots_from_pem};
    c.bench_function("upstream_client_new", |b| {
        b.iter(|| Client::new(black_box(ClientOptions::default())).unwrap())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mock, ca) = rt
        .block_on(hub_testkit::tls::https_mock(
            hub_testkit::Flavor::OpenAi,
            &["h2", "http/1.1"],
        ))
        .unwrap();
    let opts = ClientOptions {
        extra_roots: roots_from_pem(ca.as_bytes()).unwrap(),
        ..ClientOptions::default()
    };
    let models: http::Uri = format!("{}/models", mock.base_url()).parse().unwrap();
    let mut auth = http::HeaderMap::new();
    auth.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Bearer sk-test"),
    );
    let call = || {
        rt.block_on(async {
            let client = Client::new(opts.clone()).unwrap();
            let r = client
                .get(models.clone())
                .headers(auth.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), http::StatusCode::OK);
            r.bytes().await.unwrap()
        })
    };
    call();
    c.bench_function("upstream_new_client_first_https_call", |b| b.iter(call));
}

criterion_group!(
    benches,
    stream_decoding,
    sse_framing,
    upstream_request_response,
    key_lookup,
    vault,
    token_counts,
    upstream_clients
);
criterion_main!(benches);
