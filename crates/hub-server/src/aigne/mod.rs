//! The AIGNE Hub ingress: what existing AIGNE framework apps and tools (`@aigne/aigne-hub`,
//! `@aigne/cli`, `@blocklet/aigne-hub`) speak to the original hub (aigne-hub.md §2, §10;
//! aigne-client-wire.md).
//!
//! - `invoke`: `POST /api/v2/chat`, the AIGNE invoke protocol (JSON and `delta` SSE).
//! - `legacy`: `POST /api/v2/chat/completions` and `/api/v2/completions` (camelCase "AI Kit" body,
//!   its SSE `delta`/`usage`/`error` chunks, plain-bytes `stream:true`, JSON).
//! - `media`: `/api/v2/image`, `/api/v2/image/generations`, `/api/v2/embeddings`.
//! - `info`: `/api/ai/models`, `/api/v2/status`, `/api/user/info`, `/__blocklet__.js`.
//! - `wire`: what they share (model strings, usage, tool calls, error bodies).
//!
//! Codecs are pure and table-tested; `handlers` are thin (authenticate, parse, call the hub,
//! render) and every call goes through the same auth, routing, metering and recording as `/v1`.

pub mod handlers;
pub mod info;
pub mod invoke;
pub mod legacy;
pub mod media;
pub mod wire;
