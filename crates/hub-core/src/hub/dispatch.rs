//! Candidates and attempts: tries providers (and credentials) in order until one answers; failures
//! before the first byte move on when another attempt may succeed.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use super::Hub;
use super::snapshot::ProviderInstance;
use crate::error::{ErrorClass, ErrorKind, HubError, ProviderError};
use crate::providers::{EventStream, Provider, ProviderKind, Upstream};
use crate::router;
use crate::types::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, ImagesRequest,
    ImagesResponse, StreamEvent,
};

/// What a call resolved to (recorded with usage).
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempted {
    pub(crate) provider: Option<ProviderKind>,
    pub(crate) credential: Option<String>,
    pub(crate) upstream_model: Option<String>,
    pub(crate) attempts: u32,
    pub(crate) ttfb_ms: Option<u64>,
}

/// An operation to dispatch to a provider.
pub(crate) enum Op<'a> {
    Chat(&'a ChatRequest),
    Stream(&'a ChatRequest),
    Embeddings(&'a EmbeddingsRequest),
    Images(&'a ImagesRequest),
}

pub(crate) enum OpOut {
    Chat(ChatResponse),
    /// The stream and its first event (already awaited).
    Stream(EventStream, StreamEvent),
    Embeddings(EmbeddingsResponse),
    Images(ImagesResponse),
}

impl Hub {
    pub(crate) fn candidates(
        &self,
        model: &str,
    ) -> Result<Vec<(Arc<ProviderInstance>, String)>, HubError> {
        let snap = self.inner.snapshot.load();
        match router::candidates(model, &self.inner.catalog, |k| snap.providers.contains_key(&k)) {
            Ok(c) => Ok(c
                .into_iter()
                .filter_map(|c| snap.providers.get(&c.provider).map(|p| (p.clone(), c.upstream_model)))
                .collect()),
            Err(Some(kind)) => Err(HubError::new(
                ErrorKind::ModelNotFound,
                format!(
                    "The provider `{}` is not configured on this hub, so the model `{model}` is unavailable.",
                    kind.name()
                ),
            )
            .with_code("model_not_found")
            .with_param("model")),
            Err(None) => Err(HubError::model_not_found(model)),
        }
    }

    /// Whether `model` resolves to at least one configured provider, without calling it (the
    /// AIGNE `/api/v2/status?model=` probe).
    pub fn check_model(&self, model: &str) -> Result<(), HubError> {
        self.candidates(model).map(|_| ())
    }

    /// Tries candidates (and credentials) in order until one answers. A credential-specific
    /// failure (auth, rate limit, quota) tries the provider's next credential; another retryable
    /// failure moves to the next provider; anything else is the caller's answer.
    pub(crate) async fn dispatch(
        &self,
        model: &str,
        op: Op<'_>,
        attempted: &mut Attempted,
    ) -> Result<OpOut, HubError> {
        let candidates = self.candidates(model)?;
        let mut last: Option<HubError> = None;
        let started = Instant::now();
        'providers: for (inst, upstream_model) in &candidates {
            for ci in inst.credential_order() {
                let cred = &inst.creds[ci];
                attempted.attempts += 1;
                attempted.provider = Some(inst.kind);
                attempted.credential = Some(cred.id.clone());
                attempted.upstream_model = Some(upstream_model.clone());
                let up = Upstream {
                    http: &self.inner.http,
                    base_url: &inst.base_url,
                    credential: &cred.secret,
                    model: upstream_model,
                    settings: &inst.settings,
                };
                let result = tokio::time::timeout(
                    self.inner.request_timeout,
                    call(inst.imp.as_ref(), up, &op),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::new(ErrorClass::Timeout, "no answer in time"))
                });
                match result {
                    Ok(out) => {
                        attempted.ttfb_ms = Some(started.elapsed().as_millis() as u64);
                        return Ok(out);
                    }
                    Err(e) => {
                        tracing::warn!(provider = inst.kind.name(), credential = %cred.id, class = e.class.as_str(), status = ?e.status, "upstream attempt failed");
                        let credential_specific = matches!(
                            e.class,
                            ErrorClass::Auth | ErrorClass::RateLimited | ErrorClass::QuotaExceeded
                        );
                        let retryable = e.class.retryable();
                        last = Some(HubError::from_provider(inst.kind.name(), &e));
                        if !retryable && !credential_specific {
                            break 'providers;
                        }
                        if !credential_specific {
                            continue 'providers;
                        }
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| HubError::model_not_found(model)))
    }
}

pub(crate) async fn call(
    imp: &dyn Provider,
    up: Upstream<'_>,
    op: &Op<'_>,
) -> Result<OpOut, ProviderError> {
    match op {
        Op::Chat(req) => imp.chat(up, req).await.map(OpOut::Chat),
        Op::Stream(req) => {
            let mut s = imp.chat_stream(up, req).await?;
            match s.next().await {
                Some(Ok(first)) => Ok(OpOut::Stream(s, first)),
                Some(Err(e)) => Err(e),
                None => Err(ProviderError::new(
                    ErrorClass::StreamInterrupted,
                    "upstream sent an empty stream",
                )),
            }
        }
        Op::Embeddings(req) => imp.embeddings(up, req).await.map(OpOut::Embeddings),
        Op::Images(req) => imp.images(up, req).await.map(OpOut::Images),
    }
}
