//! The admin operations (teams, users, keys and policies, providers, credentials, usage, audit)
//! through `hub_core::iam`, the same functions the admin HTTP API and the `aigne-hub admin` CLI
//! call: the same validation, scopes and audit entries. Arguments and results are JSON with the
//! field names of the admin HTTP API. A write reloads this hub's configuration before it returns.

use hub_core::iam::{
    self, Actor, CredentialUpdate, NewCredential, NewKey, NewUser, ProviderSettingsIn, UserUpdate,
};
use hub_core::policy::KeyPolicy;
use hub_core::store::iam::AuditQuery;
use hub_core::{Hub, HubError};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn args<T: DeserializeOwned>(op: &str, v: Value) -> Result<T, HubError> {
    serde_json::from_value(v).map_err(|e| HubError::invalid(format!("{op}: {e}")))
}

/// Takes the string field `key` out of the arguments (the rest goes to an `iam` type that
/// denies unknown fields).
fn take_str(op: &str, v: &mut Value, key: &str) -> Result<String, HubError> {
    v.as_object_mut()
        .and_then(|m| m.remove(key))
        .and_then(|x| x.as_str().map(str::to_string))
        .ok_or_else(|| {
            HubError::invalid_param(key, format!("{op}: `{key}` (a string) is required"))
        })
}

fn out(v: &impl serde::Serialize) -> Result<String, HubError> {
    serde_json::to_string(v).map_err(|e| HubError::internal(e.to_string()))
}

async fn reload(hub: &Hub) -> Result<(), HubError> {
    hub.reload_if_changed()
        .await
        .map(|_| ())
        .map_err(|e| HubError::internal(format!("configuration reload failed: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Limit {
    limit: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuditArgs {
    limit: Option<u32>,
    action: Option<String>,
    actor_user_id: Option<String>,
    since_ms: Option<i64>,
}

/// Runs one admin operation as `actor`.
pub(crate) async fn run(
    hub: &Hub,
    actor: &Actor,
    op: &str,
    json_args: &str,
) -> Result<String, HubError> {
    let store = hub.store().as_ref();
    let mut v: Value = if json_args.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(json_args).map_err(|e| HubError::invalid(format!("{op}: {e}")))?
    };
    let result = match op {
        "team.create" => {
            let name = take_str(op, &mut v, "name")?;
            out(&iam::create_team(store, actor, &name).await?)
        }
        "team.list" => out(&iam::list_teams(store, actor).await?),
        "user.create" => out(&iam::create_user(store, actor, &args::<NewUser>(op, v)?).await?),
        "user.list" => out(&iam::list_users(store, actor).await?),
        "user.update" => {
            let id = take_str(op, &mut v, "id")?;
            out(&iam::update_user(store, actor, &id, &args::<UserUpdate>(op, v)?).await?)
        }
        "key.create" => out(&iam::create_key(store, actor, &args::<NewKey>(op, v)?).await?),
        "key.list" => out(&iam::list_keys(store, actor).await?),
        "key.revoke" => {
            let id = take_str(op, &mut v, "id")?;
            out(&iam::revoke_key(store, actor, &id).await?)
        }
        "key.policy" => {
            let id = take_str(op, &mut v, "id")?;
            let policy = v
                .as_object_mut()
                .and_then(|m| m.remove("policy"))
                .unwrap_or(Value::Null);
            let policy: KeyPolicy = args(op, policy)?;
            out(&iam::set_key_policy(store, actor, &id, &policy).await?)
        }
        "provider.add" => {
            let name = take_str(op, &mut v, "name")?;
            let kind = iam::parse_provider(&name)
                .map_err(|e| HubError::invalid_param("name", e.message))?;
            out(
                &iam::upsert_provider(store, actor, kind, &args::<ProviderSettingsIn>(op, v)?)
                    .await?,
            )
        }
        "provider.list" => out(&iam::list_providers(store, actor).await?),
        "provider.remove" => {
            let name = take_str(op, &mut v, "name")?;
            let kind = iam::parse_provider(&name)?;
            iam::delete_provider(store, actor, kind).await?;
            out(&json!({ "removed": kind.name() }))
        }
        "credential.add" => {
            let new: NewCredential = args(op, v)?;
            // `ciphertext` is not serialised: only the masked form leaves.
            out(&iam::add_credential(store, &hub.vault(), actor, &new).await?)
        }
        "credential.update" => {
            let id = take_str(op, &mut v, "id")?;
            let upd: CredentialUpdate = args(op, v)?;
            out(&iam::update_credential(store, &hub.vault(), actor, &id, &upd).await?)
        }
        "credential.list" => out(&iam::list_credentials(store, actor).await?),
        "credential.remove" => {
            let id = take_str(op, &mut v, "id")?;
            iam::delete_credential(store, actor, &id).await?;
            out(&json!({ "removed": id }))
        }
        "usage.list" => {
            let a: Limit = args(op, v)?;
            out(&iam::list_usage(store, actor, a.limit.unwrap_or(50)).await?)
        }
        "audit.list" => {
            let a: AuditArgs = args(op, v)?;
            let q = AuditQuery {
                limit: a.limit.unwrap_or(50),
                action: a.action,
                actor_user_id: a.actor_user_id,
                since_ms: a.since_ms,
                ..AuditQuery::default()
            };
            out(&iam::list_audit(store, actor, q).await?)
        }
        other => {
            return Err(HubError::invalid(format!(
                "unknown admin operation `{other}`; one of: team.create, team.list, user.create, \
                 user.list, user.update, key.create, key.list, key.revoke, key.policy, \
                 provider.add, provider.list, provider.remove, credential.add, \
                 credential.update, credential.list, credential.remove, usage.list, audit.list"
            )));
        }
    }?;
    if !op.ends_with(".list") {
        reload(hub).await?;
    }
    Ok(result)
}
