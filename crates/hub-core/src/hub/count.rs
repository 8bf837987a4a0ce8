//! Prompt token counts (`/v1/messages/count_tokens`) without running the model.

use std::sync::Arc;

use super::meter::fail;
use super::snapshot::ProviderInstance;
use super::{CallContext, Hub};
use crate::error::{ErrorClass, HubError};
use crate::providers::Upstream;
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
    /// model must resolve to a configured provider (404 otherwise). The first candidate provider
    /// whose module can count (Anthropic, Gemini, Bedrock) is asked once, with its first
    /// available credential, within its time-to-first-byte limit; any other provider, or any
    /// failure of that call, gives the hub's estimate, flagged `estimated` (tokenized on a blocking
    /// thread). The call leaves a usage record (endpoint `count_tokens`) with zero tokens: counting
    /// consumes nothing and is not charged. Counting failures do not touch credential health.
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
            Ok(candidates) => match self.count_upstream(&candidates, &req).await {
                Some(input_tokens) => Ok(TokenCount {
                    input_tokens,
                    estimated: false,
                }),
                None => tokio::task::spawn_blocking(move || tokenize::estimate_prompt(&req))
                    .await
                    .map(|input_tokens| TokenCount {
                        input_tokens,
                        estimated: true,
                    })
                    .map_err(|e| HubError::internal(format!("token counting failed: {e}"))),
            },
        };
        if let Err(e) = &result {
            fail(&mut rec, e);
        }
        self.commit(rec).await?;
        result
    }

    /// The provider's own count, from the first candidate that can count; `None` when none can or
    /// the call failed.
    async fn count_upstream(
        &self,
        candidates: &[(Arc<ProviderInstance>, String)],
        req: &ChatRequest,
    ) -> Option<u64> {
        let health = &self.inner.health;
        for (inst, upstream_model) in candidates {
            let Some(cred) = inst
                .creds
                .iter()
                .find(|c| health.cred_available(&health.cred(&c.id), upstream_model))
            else {
                continue;
            };
            let http = self.client(inst.kind, &inst.base_url).await;
            let up = Upstream {
                http: &http,
                base_url: &inst.base_url,
                credential: &cred.secret,
                model: upstream_model,
                settings: &inst.settings,
            };
            let limit = self.timeouts_for(inst.kind).ttfb;
            let result = tokio::time::timeout(limit, inst.imp.count_tokens(up, req)).await;
            match result {
                Ok(Ok(n)) => return Some(n),
                Ok(Err(e)) if e.class == ErrorClass::Unsupported => continue,
                Ok(Err(e)) => {
                    tracing::info!(provider = inst.kind.name(), class = e.class.as_str(), status = ?e.status, "upstream token count failed; answering with the estimate");
                    return None;
                }
                Err(_) => {
                    tracing::info!(
                        provider = inst.kind.name(),
                        "upstream token count timed out; answering with the estimate"
                    );
                    return None;
                }
            }
        }
        None
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
