//! The OpenAI-compatible ingress (`/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/images/generations`, `/v1/models`): codec (pure) and thin handlers.

pub mod codec;
pub mod handlers;
