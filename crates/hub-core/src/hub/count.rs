//! Prompt token counts (`/v1/messages/count_tokens`) without running the model.

use super::meter::fail;
use super::{CallContext, Hub};
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
    /// Counts the prompt tokens of `req` for the model it names. The caller's key must be allowed
    /// this surface and model (its RPM/TPM budget is not charged: nothing is generated), and the
    /// model must resolve to a configured provider (404 otherwise). No provider module exposes a counting endpoint yet, so
    /// the answer is always the hub's estimate, flagged `estimated` (tokenized on a blocking
    /// thread). The call leaves a usage record (endpoint `count_tokens`) with zero tokens: counting
    /// consumes nothing.
    pub async fn count_tokens(
        &self,
        ctx: &CallContext,
        req: ChatRequest,
    ) -> Result<TokenCount, HubError> {
        let mut rec = self.record(ctx, "count_tokens", &req.model, false);
        let result = match self
            .check_key_access(ctx, &req.model)
            .and_then(|()| self.candidates(&req.model))
        {
            Ok(c) if c.is_empty() => Err(HubError::model_not_found(&req.model)),
            Err(e) => Err(e),
            Ok(_) => tokio::task::spawn_blocking(move || tokenize::estimate_prompt(&req))
                .await
                .map(|input_tokens| TokenCount {
                    input_tokens,
                    estimated: true,
                })
                .map_err(|e| HubError::internal(format!("token counting failed: {e}"))),
        };
        if let Err(e) = &result {
            fail(&mut rec, e);
        }
        self.commit(rec).await?;
        result
    }

    /// The surface and model checks of the caller's key policy, without touching its rate limits.
    fn check_key_access(&self, ctx: &CallContext, model: &str) -> Result<(), HubError> {
        let snap = self.inner.snapshot.load();
        match snap.gates.get(&ctx.principal.key_id) {
            None => Ok(()),
            Some(gate) => crate::policy::check_access(
                &gate.policy,
                ctx.ingress,
                model,
                &self.inner.catalog,
                |k| snap.providers.contains_key(&k),
            ),
        }
    }
}
