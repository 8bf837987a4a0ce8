//! Prompt token counts (`/v1/messages/count_tokens`) without running the model.

use super::Hub;
use crate::error::HubError;
use crate::tokenize;
use crate::types::ChatRequest;

/// The prompt tokens of a request, and whether they are the hub's estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCount {
    pub input_tokens: u64,
    /// `true` when the hub estimated the count (o200k_base tokenizer plus OpenAI's per-message
    /// overhead) instead of asking the provider.
    pub estimated: bool,
}

impl Hub {
    /// Counts the prompt tokens of `req` for the model it names. The model must resolve to a
    /// configured provider (404 otherwise). No provider module exposes a counting endpoint yet, so
    /// the answer is always the hub's estimate, flagged `estimated`; CPU-bound (run it off the
    /// async workers for large prompts).
    pub fn count_tokens(&self, req: &ChatRequest) -> Result<TokenCount, HubError> {
        if self.candidates(&req.model)?.is_empty() {
            return Err(HubError::model_not_found(&req.model));
        }
        Ok(TokenCount {
            input_tokens: tokenize::estimate_prompt(req),
            estimated: true,
        })
    }
}
