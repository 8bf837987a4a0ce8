//! Reasoning signatures as the real APIs treat them: the mock signs what it issues and, like
//! Anthropic and Bedrock, rejects history that comes back altered, or (with thinking on) a tool
//! loop whose assistant turn lost its thinking block. Gemini's `thoughtSignature` on function-call
//! parts is checked the same way.
//!
//! A signature is `base64(SHA-256(domain || text))`, so any change to the text or the signature is
//! detected. Redacted data is `base64(payload || first 16 bytes of SHA-256(domain || payload))`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use sha2::{Digest, Sha256};

const THINKING: &[u8] = b"hub-testkit thinking v1\0";
const REDACTED: &[u8] = b"hub-testkit redacted v1\0";
const CALL: &[u8] = b"hub-testkit thought-signature v1\0";

fn digest(domain: &[u8], text: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(text);
    h.finalize().into()
}

/// The signature of a thinking block with `text`.
pub(crate) fn thinking_signature(text: &str) -> String {
    B64.encode(digest(THINKING, text.as_bytes()))
}

pub(crate) fn thinking_signature_ok(text: &str, signature: &str) -> bool {
    signature == thinking_signature(text)
}

/// Opaque redacted-reasoning data (base64) wrapping `payload`.
pub(crate) fn redacted_data(payload: &str) -> String {
    let mut bytes = payload.as_bytes().to_vec();
    bytes.extend_from_slice(&digest(REDACTED, payload.as_bytes())[..16]);
    B64.encode(bytes)
}

pub(crate) fn redacted_data_ok(data: &str) -> bool {
    let Ok(bytes) = B64.decode(data) else {
        return false;
    };
    if bytes.len() < 16 {
        return false;
    }
    let (payload, tag) = bytes.split_at(bytes.len() - 16);
    digest(REDACTED, payload)[..16] == *tag
}

/// Gemini's `thoughtSignature` for a function call (name and arguments as issued).
pub(crate) fn call_signature(name: &str, args: &Value) -> String {
    B64.encode(digest(CALL, format!("{name}\0{args}").as_bytes()))
}

/// One assistant content block, reduced to what the checks need.
pub(crate) enum Block<'a> {
    Thinking {
        text: &'a str,
        signature: &'a str,
    },
    Redacted {
        data: &'a str,
    },
    ToolUse,
    /// Any other block, by its type name.
    Other(&'a str),
}

/// Where a check failed: (message index, block index) and what Anthropic says about it.
pub(crate) struct Rejection {
    pub message: String,
}

const MUST_START: &str = "When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this requirement, disable `thinking`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking";

/// Anthropic's checks over assistant turns (`turns`: message index and its blocks, in order):
/// every thinking signature and redacted block must be one the mock issued for that content,
/// and with thinking on, the last assistant turn, when it used tools, must start with one.
pub(crate) fn check_history(
    turns: &[(usize, Vec<Block<'_>>)],
    thinking_on: bool,
) -> Result<(), Rejection> {
    for (i, blocks) in turns {
        for (j, b) in blocks.iter().enumerate() {
            match b {
                Block::Thinking { text, signature } if !thinking_signature_ok(text, signature) => {
                    return Err(Rejection {
                        message: format!(
                            "messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                        ),
                    });
                }
                Block::Redacted { data } if !redacted_data_ok(data) => {
                    return Err(Rejection {
                        message: format!(
                            "messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block"
                        ),
                    });
                }
                _ => {}
            }
        }
    }
    if thinking_on
        && let Some((i, blocks)) = turns.last()
        && blocks.iter().any(|b| matches!(b, Block::ToolUse))
    {
        let found = match blocks.first() {
            Some(Block::Thinking { .. } | Block::Redacted { .. }) => None,
            Some(Block::ToolUse) => Some("tool_use"),
            Some(Block::Other(kind)) => Some(*kind),
            None => Some("nothing"),
        };
        if let Some(found) = found {
            return Err(Rejection {
                message: format!(
                    "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{found}`. {MUST_START}"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_detect_any_change() {
        let sig = thinking_signature("let me think");
        assert!(thinking_signature_ok("let me think", &sig));
        assert!(!thinking_signature_ok("let me think!", &sig));
        assert!(!thinking_signature_ok("let me think", "EqQBCgIYAhIM"));
        let data = redacted_data("secret");
        assert!(redacted_data_ok(&data));
        assert!(!redacted_data_ok(&B64.encode(b"secret0123456789abcdef")));
        assert!(!redacted_data_ok("not base64!"));
    }

    #[test]
    fn a_tool_turn_without_thinking_is_rejected_only_with_thinking_on() {
        let turns = vec![(1, vec![Block::ToolUse])];
        let e = check_history(&turns, true).err().map(|r| r.message);
        assert!(e.is_some_and(|m| m.starts_with(
            "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`."
        )));
        assert!(check_history(&turns, false).is_ok());
        let sig = thinking_signature("t");
        let ok = vec![(
            1,
            vec![
                Block::Thinking {
                    text: "t",
                    signature: &sig,
                },
                Block::ToolUse,
            ],
        )];
        assert!(check_history(&ok, true).is_ok());
    }
}
