//! Protocol-faithful mock upstreams for all ten providers (OpenAI, DeepSeek, xAI,
//! OpenRouter, Doubao/Ark, Poe, Ollama `/v1`; Anthropic, Gemini, Bedrock), scriptable per test, plus
//! the `hub-mock` binary.
//!
//! ```no_run
//! # async fn demo() {
//! use hub_testkit::{Flavor, MockServer, Script, Usage};
//! let mock = MockServer::start(Flavor::DeepSeek).await;
//! mock.push(Script::text("hi there").with_usage(Usage::new(10, 2)));
//! // point the gateway at mock.base_url() with key "sk-test" ...
//! assert_eq!(mock.hits(), 0);
//! # }
//! ```

mod anthropic; // Anthropic Messages wire
mod bedrock; // Bedrock Runtime wire, SigV4 verification, event-stream framing
mod errors; // canonical error bodies per flavor
pub mod flavor; // Flavor enum: names, base paths, capabilities
mod gemini; // Gemini API wire
mod native; // shared plumbing of the native (non-OpenAI) flavors
mod openai_family; // wire rendering (chat JSON/SSE, usage, embeddings, images, models)
pub mod script; // Script: per-request behaviour, serde data
mod server; // MockServer, routing, control API
mod signatures; // reasoning signatures the mocks issue and verify
pub mod tls; // private CA + server certificate for HTTPS mocks

pub use flavor::Flavor;
pub use script::{Script, ScriptError, ToolCall, Usage};
pub use server::{
    DEFAULT_AWS_SECRET_KEY, MockConfig, MockServer, MockStats, MockTls, RecordedRequest,
};

/// The size of what `f` returns, without calling it: for tests that bound the state of a future
/// (`size_of` of an `async fn`'s future, from a closure taking the function's arguments).
pub fn returned_size<A, R>(_: &impl FnOnce(A) -> R) -> usize {
    std::mem::size_of::<R>()
}
