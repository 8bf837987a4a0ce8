//! Criterion benches for the OpenAI ingress codec (the per-request JSON work of the hub):
//! request parse, response render, stream chunk translation. `cargo bench -p hub-server --bench codec`.

#![expect(clippy::unwrap_used, reason = "bench fixtures are known-good")]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hub_core::providers::openai::{Variant, parse_chat_response};
use hub_core::types::{StreamEvent, Usage};
use hub_server::openai::codec::{self, ChunkWriter};

const REQUEST: &str = r#"{"model":"openai/gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in three languages."}],"temperature":0.2,"max_tokens":256}"#;
const RESPONSE: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}"#;

fn ingress(c: &mut Criterion) {
    c.bench_function("openai_parse_chat_request", |b| {
        b.iter(|| codec::parse_chat(black_box(REQUEST.as_bytes())).unwrap())
    });
    let resp = parse_chat_response(Variant::OpenAi, RESPONSE.as_bytes(), "gpt-4o").unwrap();
    c.bench_function("openai_render_chat_response_to_vec", |b| {
        b.iter(|| serde_json::to_vec(&codec::render_chat(black_box(&resp))).unwrap())
    });
}

fn chunks(c: &mut Criterion) {
    let mut w = ChunkWriter {
        id: "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG".into(),
        model: "gpt-4o-2024-08-06".into(),
        created: 1_741_570_283,
        include_usage: true,
    };
    let text = StreamEvent::TextDelta {
        text: " world".into(),
    };
    c.bench_function("openai_chunk_writer_text_delta", |b| {
        b.iter(|| w.event(black_box(&text)).unwrap())
    });
    let usage = Usage {
        prompt_tokens: 19,
        completion_tokens: 10,
        ..Usage::default()
    };
    c.bench_function("openai_chunk_writer_done_with_usage", |b| {
        b.iter(|| w.done(black_box(&usage)))
    });
}

criterion_group!(benches, ingress, chunks);
criterion_main!(benches);
