//! The Anthropic-compatible ingress (`/v1/messages`, `/v1/messages/count_tokens`): codec (pure)
//! and thin handlers. Routes to any provider; errors in Anthropic's shape.

pub mod codec;
pub mod handlers;
