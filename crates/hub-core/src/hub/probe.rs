//! Testing one stored credential against its provider (the admin API's "test" button): a short
//! chat to a cheap model with exactly that credential, no fallback, no usage record (the call is an
//! administrator's check, not a caller's request; it is audited instead).

use std::time::Instant;

use serde::Serialize;

use super::Hub;
use super::snapshot::open_credential;
use crate::error::{ErrorKind, HubError};
use crate::providers::{self, ProviderKind, ProviderSettings, Upstream};
use crate::types::{ChatRequest, Message, Role};

/// The model a credential is tested with when none is given: the cheapest chat model we know of
/// for the provider (until per-model prices decide it).
pub fn probe_model(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "gpt-4.1-nano",
        ProviderKind::Anthropic => "claude-3-5-haiku-latest",
        ProviderKind::Bedrock => "us.amazon.nova-lite-v1:0",
        ProviderKind::Google => "gemini-2.5-flash-lite",
        ProviderKind::DeepSeek => "deepseek-chat",
        ProviderKind::Ollama => "llama3.2",
        ProviderKind::OpenRouter => "openai/gpt-4o-mini",
        ProviderKind::Xai => "grok-3-mini",
        ProviderKind::Doubao => "doubao-seed-1-6-250615",
        ProviderKind::Poe => "gpt-5-mini",
    }
}

/// Outcome of a credential test.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CredentialTest {
    pub credential_id: String,
    pub provider: String,
    pub model: String,
    /// The provider answered the call.
    pub ok: bool,
    pub latency_ms: u64,
    /// The failure class (`upstream_auth`, `rate_limited`, `connect`, ...), when not ok.
    pub error_class: Option<String>,
    /// The provider's message (never contains the credential), when not ok.
    pub error: Option<String>,
}

impl Hub {
    /// Calls the credential's provider once with that credential (enabled or not).
    pub async fn test_credential(
        &self,
        credential_id: &str,
        model: Option<&str>,
    ) -> Result<CredentialTest, HubError> {
        let row = self
            .inner
            .store
            .list_credentials()
            .await
            .map_err(|e| HubError::internal(format!("listing credentials failed: {e}")))?
            .into_iter()
            .find(|c| c.id == credential_id)
            .ok_or_else(|| {
                HubError::new(
                    ErrorKind::NotFound,
                    format!("no credential `{credential_id}`"),
                )
                .with_code("not_found")
            })?;
        let secret = open_credential(&self.vault(), &row).map_err(|e| {
            HubError::internal(format!("credential {credential_id} does not decrypt: {e}"))
        })?;
        let kind = row.provider;
        let Some(imp) = providers::implementation(kind) else {
            return Err(HubError::invalid(format!(
                "the provider `{kind}` is not built into this version"
            )));
        };
        // Base URL and settings as the live configuration has them, else the provider's defaults.
        let (base_url, settings) = match self.inner.snapshot.load().providers.get(&kind) {
            Some(inst) => (inst.base_url.clone(), inst.settings.clone()),
            None => {
                let stored = self
                    .inner
                    .store
                    .list_providers()
                    .await
                    .map_err(|e| HubError::internal(format!("listing providers failed: {e}")))?
                    .into_iter()
                    .find(|p| p.kind == kind);
                (
                    stored
                        .as_ref()
                        .and_then(|p| p.base_url.clone())
                        .unwrap_or_else(|| kind.default_base_url().to_string())
                        .trim_end_matches('/')
                        .to_string(),
                    ProviderSettings {
                        region: stored.and_then(|p| p.region),
                        ..ProviderSettings::default()
                    },
                )
            }
        };
        let model = model
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| probe_model(kind))
            .to_string();
        let req = ChatRequest {
            model: model.clone(),
            messages: vec![Message::text(Role::User, "Reply with OK.")],
            max_tokens: Some(16),
            ..ChatRequest::default()
        };
        let http = self.client(kind, &base_url).await;
        let up = Upstream {
            http: &http,
            base_url: &base_url,
            credential: &secret,
            model: &model,
            settings: &settings,
        };
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.timeouts_for(kind)
                .ttfb
                .min(std::time::Duration::from_secs(30)),
            imp.chat(up, &req),
        )
        .await;
        let latency_ms = started.elapsed().as_millis() as u64;
        if matches!(result, Ok(Ok(_))) {
            // A credential the provider rejected earlier works again: use it now.
            self.credential_accepted(&row.id);
        }
        let (ok, class, error) = match result {
            Ok(Ok(_)) => (true, None, None),
            Ok(Err(e)) => (false, Some(e.class.as_str().to_string()), Some(e.message)),
            Err(_) => (
                false,
                Some("timeout".to_string()),
                Some("no answer in time".to_string()),
            ),
        };
        Ok(CredentialTest {
            credential_id: row.id,
            provider: kind.name().to_string(),
            model,
            ok,
            latency_ms,
            error_class: class,
            error,
        })
    }
}
