//! Token estimates with a real tokenizer (o200k_base, the GPT-4o family's): a call's prompt
//! estimate for the token limits, and usage when a provider reports none (records so estimated
//! are flagged).

use crate::types::{ChatRequest, ContentPart};

/// Loads the tokenizer's tables (~25 MB, ~0.1 s of CPU) now, so the first call that counts tokens
/// does not wait for them. Blocking: `serve` runs it on a blocking thread at start-up.
pub fn warm() {
    let _ = tiktoken_rs::o200k_base_singleton();
}

/// Tokens of a text.
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

/// Estimated prompt tokens of a chat request: message texts plus OpenAI's per-message overhead
/// (3 tokens a message, 3 for the reply priming), tool names/schemas and ~85 per image.
pub fn estimate_prompt(req: &ChatRequest) -> u64 {
    let mut total = 3u64;
    for m in &req.messages {
        total += 3;
        for part in &m.content {
            match part {
                ContentPart::Text { text } => total += count(text),
                ContentPart::Image { .. } => total += 85,
            }
        }
        for call in &m.tool_calls {
            total += count(&call.name) + count(&call.arguments);
        }
    }
    for tool in &req.tools {
        total += count(&tool.name) + count(&tool.parameters.to_string());
        if let Some(d) = &tool.description {
            total += count(d);
        }
    }
    total
}

/// A cheap upper bound of prompt tokens without running the tokenizer (bytes / 2, at least one a
/// message); for reservations on the hot path.
pub fn prompt_upper_bound(req: &ChatRequest) -> u64 {
    let mut bytes = 0usize;
    for m in &req.messages {
        bytes += 16;
        for part in &m.content {
            match part {
                ContentPart::Text { text } => bytes += text.len(),
                ContentPart::Image { .. } => bytes += 2 * 1600,
            }
        }
        for call in &m.tool_calls {
            bytes += call.name.len() + call.arguments.len();
        }
    }
    for t in &req.tools {
        bytes += t.name.len()
            + t.parameters.to_string().len()
            + t.description.as_ref().map_or(0, String::len);
    }
    (bytes as u64).div_ceil(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Message, Role};

    #[test]
    fn counts_real_tokens() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![Message::text(Role::User, "hello world")],
            ..ChatRequest::default()
        };
        let est = estimate_prompt(&req);
        assert_eq!(est, 3 + 3 + 2);
        assert!(prompt_upper_bound(&req) >= est);
    }
}
