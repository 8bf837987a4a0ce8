//! Admin changes as statements inside one transaction (`IamStore::commit_audited`), shared by the
//! plain store methods (`upsert_provider`, `insert_team`, ...) so each change has one
//! implementation whether or not it is audited.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{bump_config, db_err, insert_api_key_row};
use crate::store::StoreError;
use crate::store::iam::{Applied, AuditEntry, Change};

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Db(format!("stored JSON is invalid: {e}"))
}

fn exists(tx: &Transaction<'_>, sql: &str, id: &str) -> Result<bool, StoreError> {
    Ok(tx
        .query_row(sql, [id], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(db_err)?
        .is_some())
}

/// Applies one change. Configuration changes bump the config version (other processes reload);
/// ledger changes do not.
pub(super) fn apply(tx: &Transaction<'_>, change: &Change) -> Result<Applied, StoreError> {
    let applied = match change {
        Change::InsertTeam(row) => {
            tx.execute(
                "INSERT INTO teams (id, name, created_at_ms) VALUES (?1, ?2, ?3)",
                params![row.id, row.name, row.created_at_ms],
            )
            .map_err(db_err)?;
            Applied::Done
        }
        Change::InsertUser(row) => {
            tx.execute(
                "INSERT INTO users (id, name, role, team_id, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.id, row.name, row.role.as_str(), row.team_id, row.created_at_ms],
            )
            .map_err(db_err)?;
            Applied::Done
        }
        Change::UpdateUser { id, patch } => {
            if !exists(tx, "SELECT 1 FROM users WHERE id = ?1", id)? {
                return Err(StoreError::NotFound(format!("user {id}")));
            }
            if let Some(name) = &patch.name {
                tx.execute(
                    "UPDATE users SET name = ?2 WHERE id = ?1",
                    params![id, name],
                )
                .map_err(db_err)?;
            }
            if let Some(role) = patch.role {
                tx.execute(
                    "UPDATE users SET role = ?2 WHERE id = ?1",
                    params![id, role.as_str()],
                )
                .map_err(db_err)?;
            }
            if let Some(team) = &patch.team_id {
                tx.execute(
                    "UPDATE users SET team_id = ?2 WHERE id = ?1",
                    params![id, team],
                )
                .map_err(db_err)?;
            }
            Applied::Done
        }
        Change::CreateApiKey { row, policy } => {
            let policy = serde_json::to_string(policy).map_err(json_err)?;
            insert_api_key_row(tx, row)?;
            tx.execute(
                "INSERT INTO api_key_policies (key_id, policy) VALUES (?1, ?2)",
                params![row.id, policy],
            )
            .map_err(db_err)?;
            Applied::Done
        }
        Change::RevokeApiKey { id, at_ms } => {
            let n = tx
                .execute(
                    "UPDATE api_keys SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                    params![id, at_ms],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("active api key {id}")));
            }
            Applied::Done
        }
        Change::SetKeyPolicy { key_id, policy } => {
            if !exists(tx, "SELECT 1 FROM api_keys WHERE id = ?1", key_id)? {
                return Err(StoreError::NotFound(format!("api key {key_id}")));
            }
            let policy = serde_json::to_string(policy).map_err(json_err)?;
            tx.execute(
                "INSERT INTO api_key_policies (key_id, policy) VALUES (?1, ?2)
                 ON CONFLICT(key_id) DO UPDATE SET policy = excluded.policy",
                params![key_id, policy],
            )
            .map_err(db_err)?;
            Applied::Done
        }
        Change::UpsertProvider(row) => {
            tx.execute(
                "INSERT INTO providers (kind, base_url, region, enabled, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(kind) DO UPDATE SET base_url = excluded.base_url, region = excluded.region, enabled = excluded.enabled",
                params![row.kind.name(), row.base_url, row.region, row.enabled as i64, row.created_at_ms],
            )
            .map_err(db_err)?;
            Applied::Done
        }
        Change::DeleteProvider(kind) => {
            let n = tx
                .execute("DELETE FROM providers WHERE kind = ?1", [kind.name()])
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("provider {kind}")));
            }
            tx.execute("DELETE FROM credentials WHERE provider = ?1", [kind.name()])
                .map_err(db_err)?;
            Applied::Done
        }
        Change::InsertCredential(row) => {
            tx.execute(
                "INSERT INTO credentials (id, provider, name, ciphertext, masked, weight, enabled, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    row.id,
                    row.provider.name(),
                    row.name,
                    row.ciphertext,
                    row.masked,
                    row.weight as i64,
                    row.enabled as i64,
                    row.created_at_ms
                ],
            )
            .map_err(db_err)?;
            Applied::Done
        }
        Change::UpdateCredential { id, patch } => {
            if !exists(tx, "SELECT 1 FROM credentials WHERE id = ?1", id)? {
                return Err(StoreError::NotFound(format!("credential {id}")));
            }
            if let Some(name) = &patch.name {
                tx.execute(
                    "UPDATE credentials SET name = ?2 WHERE id = ?1",
                    params![id, name],
                )
                .map_err(db_err)?;
            }
            if let Some(w) = patch.weight {
                tx.execute(
                    "UPDATE credentials SET weight = ?2 WHERE id = ?1",
                    params![id, w as i64],
                )
                .map_err(db_err)?;
            }
            if let Some(en) = patch.enabled {
                tx.execute(
                    "UPDATE credentials SET enabled = ?2 WHERE id = ?1",
                    params![id, en as i64],
                )
                .map_err(db_err)?;
            }
            if let Some((ct, masked)) = &patch.sealed {
                tx.execute(
                    "UPDATE credentials SET ciphertext = ?2, masked = ?3 WHERE id = ?1",
                    params![id, ct, masked],
                )
                .map_err(db_err)?;
            }
            Applied::Done
        }
        Change::DeleteCredential(id) => {
            let n = tx
                .execute("DELETE FROM credentials WHERE id = ?1", [id])
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("credential {id}")));
            }
            Applied::Done
        }
        Change::SetSetting { key, value } => {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(db_err)?;
            Applied::Done
        }
        Change::InsertPrices(prices) => {
            Applied::Prices(super::ledger::insert_prices_tx(tx, prices)?)
        }
        Change::Grant(req) => return super::ledger::grant_tx(tx, req),
        Change::Nothing => return Ok(Applied::Done),
        Change::Many(changes) => {
            let mut out = Vec::with_capacity(changes.len());
            for c in changes {
                out.push(apply(tx, c)?);
            }
            return Ok(Applied::Many(out));
        }
    };
    bump_config(tx)?;
    Ok(applied)
}

pub(super) fn insert_audit(tx: &Transaction<'_>, e: &AuditEntry) -> Result<(), StoreError> {
    let before = e.before.as_ref().map(|v| v.to_string());
    let after = e.after.as_ref().map(|v| v.to_string());
    tx.execute(
        "INSERT INTO audit_log (id, at_ms, actor_user_id, actor_key_id, action, target, team_id, before_json, after_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![e.id, e.at_ms, e.actor_user_id, e.actor_key_id, e.action, e.target, e.team_id, before, after],
    )
    .map_err(db_err)?;
    Ok(())
}
