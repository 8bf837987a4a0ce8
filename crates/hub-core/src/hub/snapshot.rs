//! The in-memory configuration: providers with decrypted credentials and smooth weighted round
//! robin, the API-key index, and start-up bootstrap (owner user and key).

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{OpenError, now_ms};
use crate::FastMap;
use crate::auth::{self, KeyIndex, Principal, Role};
use crate::config::{EnvProvider, HubOptions};
use crate::policy::KeyGate;
use crate::providers::{self, CredentialSecret, Provider, ProviderKind, ProviderSettings, Secret};
use crate::store::sqlite::SqliteStore;
use crate::store::{ApiKeyRow, CredentialRow, Store, StoreError, UserRow};
use crate::timeouts::TimeoutSettings;
use crate::vault::{Vault, VaultError};

/// A credential ready to use.
pub(crate) struct CredEntry {
    pub(crate) id: String,
    pub(crate) secret: CredentialSecret,
    pub(crate) weight: i64,
}

/// A configured provider with its credentials.
pub(crate) struct ProviderInstance {
    pub(crate) kind: ProviderKind,
    pub(crate) base_url: String,
    pub(crate) settings: ProviderSettings,
    pub(crate) imp: Arc<dyn Provider>,
    pub(crate) creds: Vec<CredEntry>,
    /// Smooth weighted round robin state (nginx): one `current` per credential.
    pub(crate) swrr: Mutex<Vec<i64>>,
}

impl ProviderInstance {
    /// Order in which to try this provider's credentials for one call: the SWRR pick first.
    #[cfg(test)]
    pub(crate) fn credential_order(&self) -> Vec<usize> {
        self.credential_order_with(|i| self.creds[i].weight)
    }

    /// SWRR over the given effective weights (health lowers a rate-limited credential's weight and
    /// gives unusable ones 0): the pick first, then the other usable ones, then the unusable ones.
    pub(crate) fn credential_order_with(&self, weight: impl Fn(usize) -> i64) -> Vec<usize> {
        let n = self.creds.len();
        if n <= 1 {
            return (0..n).collect();
        }
        let w: Vec<i64> = (0..n).map(weight).collect();
        let total: i64 = w.iter().filter(|x| **x > 0).sum();
        if total <= 0 {
            return (0..n).collect();
        }
        let mut cur = self.swrr.lock();
        let mut best: Option<usize> = None;
        for i in 0..n {
            if w[i] <= 0 {
                continue;
            }
            cur[i] += w[i];
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        let best = best.unwrap_or(0);
        cur[best] -= total;
        let mut order = vec![best];
        order.extend((0..n).filter(|&i| i != best && w[i] > 0));
        order.extend((0..n).filter(|&i| w[i] <= 0));
        order
    }
}

/// Everything the hot path reads, swapped atomically on reload.
pub(crate) struct Snapshot {
    pub(crate) providers: FastMap<ProviderKind, Arc<ProviderInstance>>,
    pub(crate) keys: KeyIndex,
    /// Expiry and policy of every key in `keys`, by key id.
    pub(crate) gates: FastMap<String, Arc<KeyGate>>,
    /// Per-provider timeouts stored by an administrator (`provider.<name>.timeouts`).
    pub(crate) stored_timeouts: FastMap<ProviderKind, crate::timeouts::TimeoutOverrides>,
}

/// Opens the store and vault of a data dir without starting a hub (admin CLI).
pub fn open_store_and_vault(opts: &HubOptions) -> Result<(Arc<dyn Store>, Vault), OpenError> {
    create_data_dir(&opts.data_dir)?;
    let vault = crate::keyring::load_vault(opts)?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&opts.data_dir.join("hub.db"))?);
    Ok((store, vault))
}

fn create_data_dir(path: &Path) -> Result<(), OpenError> {
    let err = |source| OpenError::DataDir {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Secret JSON stored (encrypted) for a credential.
#[derive(serde::Serialize, serde::Deserialize)]
struct SecretJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_token: Option<String>,
}

/// Encrypts a credential for storage, bound to its id.
pub fn seal_credential(
    vault: &Vault,
    id: &str,
    secret: &CredentialSecret,
) -> Result<String, VaultError> {
    let json = serde_json::to_string(&SecretJson {
        api_key: secret.api_key.as_ref().map(|s| s.expose().to_string()),
        secret_key: secret.secret_key.as_ref().map(|s| s.expose().to_string()),
        session_token: secret
            .session_token
            .as_ref()
            .map(|s| s.expose().to_string()),
    })
    .map_err(|_| VaultError::Corrupt)?;
    vault.encrypt(&json, id)
}

/// Decrypts a stored credential.
pub fn open_credential(vault: &Vault, row: &CredentialRow) -> Result<CredentialSecret, VaultError> {
    let json = vault.decrypt(&row.ciphertext, &row.id)?;
    let s: SecretJson = serde_json::from_str(&json).map_err(|_| VaultError::Corrupt)?;
    Ok(CredentialSecret {
        api_key: s.api_key.map(Secret::new),
        secret_key: s.secret_key.map(Secret::new),
        session_token: s.session_token.map(Secret::new),
    })
}

/// Builds the in-memory snapshot from the store (+ env providers).
pub(crate) async fn load_snapshot(
    store: &dyn Store,
    vault: &Vault,
    env: &[EnvProvider],
    public_url: &Option<String>,
) -> Result<Snapshot, OpenError> {
    let provider_rows = store.list_providers().await?;
    let cred_rows = store.list_credentials().await?;
    let mut creds_by: FastMap<ProviderKind, Vec<CredEntry>> = FastMap::default();
    for row in &cred_rows {
        let secret = open_credential(vault, row).map_err(|source| OpenError::Undecryptable {
            id: row.id.clone(),
            provider: row.provider.name().to_string(),
            source,
        })?;
        if row.enabled {
            creds_by.entry(row.provider).or_default().push(CredEntry {
                id: row.id.clone(),
                secret,
                weight: i64::from(row.weight.max(1)),
            });
        }
    }
    let mut providers = FastMap::default();
    let mut consider = |kind: ProviderKind,
                        base: Option<String>,
                        region: Option<String>,
                        creds: Vec<CredEntry>| {
        let Some(imp) = providers::implementation(kind) else {
            tracing::warn!(
                provider = kind.name(),
                "provider configured but not built into this version; ignored"
            );
            return;
        };
        if creds.is_empty() && !kind.credential_optional() {
            return;
        }
        let creds = if creds.is_empty() {
            vec![CredEntry {
                id: format!("{}:none", kind.name()),
                secret: CredentialSecret::none(),
                weight: 1,
            }]
        } else {
            creds
        };
        let n = creds.len();
        providers.insert(
            kind,
            Arc::new(ProviderInstance {
                kind,
                base_url: base
                    .unwrap_or_else(|| kind.base_url_for(region.as_deref()))
                    .trim_end_matches('/')
                    .to_string(),
                settings: ProviderSettings {
                    region,
                    public_url: public_url.clone(),
                    app_title: Some("AIGNE Hub".to_string()),
                },
                imp,
                creds,
                swrr: Mutex::new(vec![0; n]),
            }),
        );
    };
    // Stored providers: their stored credentials, else the env ones (env is the fallback, as in the original).
    let mut seen = Vec::new();
    for row in &provider_rows {
        seen.push(row.kind);
        if !row.enabled {
            continue;
        }
        let envp = env.iter().find(|e| e.kind == row.kind);
        let mut creds = creds_by.remove(&row.kind).unwrap_or_default();
        if creds.is_empty()
            && let Some(e) = envp
        {
            creds = env_creds(e);
        }
        let base = row
            .base_url
            .clone()
            .or_else(|| envp.and_then(|e| e.base_url.clone()));
        let region = row
            .region
            .clone()
            .or_else(|| envp.and_then(|e| e.region.clone()));
        consider(row.kind, base, region, creds);
    }
    for e in env {
        if seen.contains(&e.kind) {
            continue;
        }
        let mut creds = creds_by.remove(&e.kind).unwrap_or_default();
        if creds.is_empty() {
            creds = env_creds(e);
        }
        consider(e.kind, e.base_url.clone(), e.region.clone(), creds);
    }
    // Stored credentials of providers with no provider row use the default base URL.
    for (kind, creds) in creds_by {
        if !seen.contains(&kind) {
            consider(kind, None, None, creds);
        }
    }

    let now = now_ms();
    let users: FastMap<String, UserRow> = store
        .list_users()
        .await?
        .into_iter()
        .map(|u| (u.id.clone(), u))
        .collect();
    let mut policies: FastMap<String, crate::policy::KeyPolicy> =
        store.list_key_policies().await?.into_iter().collect();
    let mut gates = FastMap::default();
    let mut keys = KeyIndex::default();
    for k in store.list_api_keys().await? {
        if k.revoked_at_ms.is_some() || k.expires_at_ms.is_some_and(|e| e <= now) {
            continue;
        }
        let Some(user) = users.get(&k.user_id) else {
            continue;
        };
        let Ok(bytes) = hex::decode(&k.digest_hex) else {
            continue;
        };
        let Ok(digest) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            continue;
        };
        keys.insert(
            digest,
            Principal {
                key_id: k.id.clone(),
                user_id: user.id.clone(),
                role: user.role,
                team_id: k.team_id.clone().or_else(|| user.team_id.clone()),
            },
        );
        gates.insert(
            k.id.clone(),
            Arc::new(KeyGate {
                expires_at_ms: k.expires_at_ms,
                policy: policies.remove(&k.id).unwrap_or_default(),
            }),
        );
    }
    Ok(Snapshot {
        providers,
        keys,
        gates,
        stored_timeouts: load_stored_timeouts(store).await?,
    })
}

/// Every provider's stored timeouts. A value that does not parse or validate (written by hand into
/// the database) is ignored with a warning: the environment's timeouts apply.
pub(crate) async fn load_stored_timeouts(
    store: &dyn Store,
) -> Result<FastMap<ProviderKind, crate::timeouts::TimeoutOverrides>, OpenError> {
    let mut out = FastMap::default();
    for kind in ProviderKind::ALL {
        let Some(text) = store.get_setting(&TimeoutSettings::key(kind)).await? else {
            continue;
        };
        match serde_json::from_str::<TimeoutSettings>(&text) {
            Ok(t) if t.validate().is_ok() => {
                if t != TimeoutSettings::default() {
                    out.insert(kind, t.overrides());
                }
            }
            _ => tracing::warn!(
                provider = kind.name(),
                "stored timeouts are not valid; using the environment's"
            ),
        }
    }
    Ok(out)
}

fn env_creds(e: &EnvProvider) -> Vec<CredEntry> {
    e.credentials
        .iter()
        .enumerate()
        .map(|(i, c)| CredEntry {
            id: format!("env:{}:{}", e.kind.name(), i + 1),
            secret: c.clone(),
            weight: 100,
        })
        .collect()
}

/// Ensures an owner user and a usable owner key. Returns a newly generated key (shown once).
pub(crate) async fn bootstrap(
    store: &dyn Store,
    admin_key: Option<&Secret>,
) -> Result<Option<String>, StoreError> {
    let users = store.list_users().await?;
    let owner_id = match users.iter().find(|u| u.role == Role::Owner) {
        Some(u) => u.id.clone(),
        None => {
            let row = UserRow {
                id: "owner".to_string(),
                name: "owner".to_string(),
                role: Role::Owner,
                team_id: None,
                created_at_ms: now_ms(),
            };
            match store.insert_user(&row).await {
                Ok(()) | Err(StoreError::Conflict(_)) => row.id,
                Err(e) => return Err(e),
            }
        }
    };
    let keys = store.list_api_keys().await?;
    if let Some(admin) = admin_key {
        let digest_hex = hex::encode(auth::digest(admin.expose()));
        if !keys
            .iter()
            .any(|k| k.digest_hex == digest_hex && k.revoked_at_ms.is_none())
        {
            let row = ApiKeyRow {
                id: format!("key_{}", uuid::Uuid::new_v4().simple()),
                user_id: owner_id,
                digest_hex,
                prefix: auth::key_prefix(admin.expose()),
                name: "HUB_ADMIN_KEY".to_string(),
                team_id: None,
                created_at_ms: now_ms(),
                expires_at_ms: None,
                revoked_at_ms: None,
            };
            match store.insert_api_key(&row).await {
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(None);
    }
    if !keys.is_empty() {
        return Ok(None);
    }
    let key = auth::generate_key();
    store
        .insert_api_key(&ApiKeyRow {
            id: format!("key_{}", uuid::Uuid::new_v4().simple()),
            user_id: owner_id,
            digest_hex: hex::encode(auth::digest(&key)),
            prefix: auth::key_prefix(&key),
            name: "owner (first start)".to_string(),
            team_id: None,
            created_at_ms: now_ms(),
            expires_at_ms: None,
            revoked_at_ms: None,
        })
        .await?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swrr_follows_weights() {
        let inst = ProviderInstance {
            kind: ProviderKind::OpenAi,
            base_url: String::new(),
            settings: ProviderSettings::default(),
            imp: Arc::new(providers::openai::OpenAiFamily::new(
                providers::openai::Variant::OpenAi,
            )),
            creds: vec![
                CredEntry {
                    id: "a".into(),
                    secret: CredentialSecret::none(),
                    weight: 5,
                },
                CredEntry {
                    id: "b".into(),
                    secret: CredentialSecret::none(),
                    weight: 1,
                },
                CredEntry {
                    id: "c".into(),
                    secret: CredentialSecret::none(),
                    weight: 1,
                },
            ],
            swrr: Mutex::new(vec![0; 3]),
        };
        let picks: Vec<usize> = (0..7).map(|_| inst.credential_order()[0]).collect();
        // nginx's classic sequence for weights 5,1,1: a a b a c a a
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(inst.credential_order().len(), 3);
    }
}
