//! Start-up configuration: data dir, master key source, provider credentials from the environment
//! (as the original reads them: `OPENAI_API_KEY`, `OPEN_ROUTER_API_KEY`, ... comma lists rotate; a
//! `<NAME>_BASE_URL` overrides the base URL).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::health::HealthConfig;
use crate::hooks::Hooks;
use crate::providers::{CredentialSecret, ProviderKind, Secret};
use crate::switches::BenchSwitches;
use crate::timeouts::{TimeoutOverrides, Timeouts};

/// Where the master key comes from.
#[derive(Clone)]
pub enum MasterKeySource {
    /// The key itself (`HUB_MASTER_KEY`: 64 hex chars or base64 of 32 bytes).
    Value(Secret),
    /// A file holding it (`HUB_MASTER_KEY_FILE`); created 0600 if absent.
    File(PathBuf),
}

impl std::fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterKeySource::Value(_) => f.write_str("MasterKeySource::Value(<redacted>)"),
            MasterKeySource::File(p) => write!(f, "MasterKeySource::File({})", p.display()),
        }
    }
}

/// A provider configured through the environment.
#[derive(Debug, Clone)]
pub struct EnvProvider {
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    pub region: Option<String>,
    /// One entry per credential of the comma list.
    pub credentials: Vec<CredentialSecret>,
}

/// Options for opening a hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub data_dir: PathBuf,
    /// `None`: `<data_dir>/master.key`.
    pub master_key: Option<MasterKeySource>,
    /// `HUB_ADMIN_KEY`: this value becomes a valid owner key.
    pub admin_key: Option<Secret>,
    pub env_providers: Vec<EnvProvider>,
    /// Public URL of this hub (attribution headers, links).
    pub public_url: Option<String>,
    /// How often to look for configuration written by other processes.
    pub reload_interval: Duration,
    /// Identity resolver and usage observer of an embedding host.
    pub hooks: Hooks,
    /// Upstream timeouts (connect, first byte, stream idle, total); see `timeouts.rs`.
    pub timeouts: Timeouts,
    /// Per-provider overrides of `timeouts`.
    pub provider_timeouts: HashMap<ProviderKind, TimeoutOverrides>,
    /// Circuit breakers, cool-downs, credential re-checks.
    pub health: HealthConfig,
    /// Billing defaults (`HUB_BILLING_MODE`, ...); stored settings override them.
    pub billing: crate::hub::BillingDefaults,
    /// Benchmarking switches (`HUB_BENCH_DISABLE`); all on by default.
    pub switches: BenchSwitches,
    /// `HUB_EXTRA_CA_FILE`: PEM certificates the upstream clients trust in addition to the
    /// built-in web roots (an upstream behind a private CA, e.g. a company gateway). Verification
    /// is never switched off.
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl HubOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> HubOptions {
        HubOptions {
            data_dir: data_dir.into(),
            master_key: None,
            admin_key: None,
            env_providers: Vec::new(),
            public_url: None,
            reload_interval: Duration::from_millis(500),
            hooks: Hooks::default(),
            timeouts: Timeouts::default(),
            provider_timeouts: HashMap::new(),
            health: HealthConfig::default(),
            billing: crate::hub::BillingDefaults::default(),
            switches: BenchSwitches::default(),
            extra_ca_pem: None,
        }
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads provider credentials from an environment lookup function (usually `std::env::var`).
pub fn providers_from_env(get: impl Fn(&str) -> Option<String>) -> Vec<EnvProvider> {
    let mut out = Vec::new();
    for kind in ProviderKind::ALL {
        let prefix = kind.env_prefix();
        let base_url = get(&format!("{prefix}_BASE_URL")).filter(|v| !v.trim().is_empty());
        let credentials: Vec<CredentialSecret> = if kind == ProviderKind::Bedrock {
            // Parallel comma lists, as the original reads them.
            let ids = get("AWS_ACCESS_KEY_ID")
                .map(|v| split_list(&v))
                .unwrap_or_default();
            let secrets = get("AWS_SECRET_ACCESS_KEY")
                .map(|v| split_list(&v))
                .unwrap_or_default();
            let tokens = get("AWS_SESSION_TOKEN")
                .map(|v| split_list(&v))
                .unwrap_or_default();
            ids.iter()
                .zip(secrets.iter())
                .enumerate()
                .map(|(i, (id, secret))| CredentialSecret {
                    api_key: Some(Secret::new(id.clone())),
                    secret_key: Some(Secret::new(secret.clone())),
                    session_token: tokens.get(i).map(|t| Secret::new(t.clone())),
                })
                .collect()
        } else {
            get(&format!("{prefix}_API_KEY"))
                .map(|v| split_list(&v))
                .unwrap_or_default()
                .into_iter()
                .map(CredentialSecret::api_key)
                .collect()
        };
        let region = if kind == ProviderKind::Bedrock {
            get("AWS_REGION").and_then(|v| split_list(&v).into_iter().next())
        } else {
            None
        };
        let configured =
            !credentials.is_empty() || (kind.credential_optional() && base_url.is_some());
        if configured {
            out.push(EnvProvider {
                kind,
                base_url,
                region,
                credentials,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn reads_comma_lists_and_base_urls() {
        let env: HashMap<&str, &str> = [
            ("OPENAI_API_KEY", "sk-a, sk-b,"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:1/v1"),
            ("OPEN_ROUTER_API_KEY", "sk-or"),
            ("OLLAMA_BASE_URL", "http://127.0.0.1:2/v1"),
            ("DEEPSEEK_BASE_URL", "http://x"),
        ]
        .into_iter()
        .collect();
        let got = providers_from_env(|k| env.get(k).map(|v| v.to_string()));
        let kinds: Vec<ProviderKind> = got.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            vec![
                ProviderKind::OpenAi,
                ProviderKind::Ollama,
                ProviderKind::OpenRouter
            ]
        );
        assert_eq!(got[0].credentials.len(), 2);
        assert_eq!(got[0].base_url.as_deref(), Some("http://127.0.0.1:1/v1"));
        // Ollama needs no key; DeepSeek with a base URL but no key is not configured.
        assert!(got[1].credentials.is_empty());
    }
}
