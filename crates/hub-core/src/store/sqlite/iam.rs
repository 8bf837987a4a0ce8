//! `IamStore` for SQLite: teams, user changes, key policies, credential updates, audit log.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, bump_config, db_err, usage_from_row};
use crate::policy::KeyPolicy;
use crate::store::iam::{AuditEntry, AuditQuery, CredentialPatch, IamStore, TeamRow, UserPatch};
use crate::store::{ApiKeyRow, StoreError, UsageRecord};

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Db(format!("stored JSON is invalid: {e}"))
}

#[async_trait]
impl IamStore for SqliteStore {
    async fn insert_team(&self, row: &TeamRow) -> Result<(), StoreError> {
        let row = row.clone();
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            tx.execute(
                "INSERT INTO teams (id, name, created_at_ms) VALUES (?1, ?2, ?3)",
                params![row.id, row.name, row.created_at_ms],
            )
            .map_err(db_err)?;
            bump_config(&tx)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_teams(&self) -> Result<Vec<TeamRow>, StoreError> {
        self.read(|c| {
            let mut st = c
                .prepare("SELECT id, name, created_at_ms FROM teams ORDER BY created_at_ms, id")
                .map_err(db_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok(TeamRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at_ms: r.get(2)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn update_user(&self, id: &str, patch: &UserPatch) -> Result<(), StoreError> {
        let (id, patch) = (id.to_string(), patch.clone());
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM users WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            if exists.is_none() {
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
            bump_config(&tx)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn create_api_key(&self, row: &ApiKeyRow, policy: &KeyPolicy) -> Result<(), StoreError> {
        let row = row.clone();
        let policy = serde_json::to_string(policy).map_err(json_err)?;
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            tx.execute(
                "INSERT INTO api_keys (id, user_id, digest_hex, prefix, name, team_id, created_at_ms, expires_at_ms, revoked_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    row.id,
                    row.user_id,
                    row.digest_hex,
                    row.prefix,
                    row.name,
                    row.team_id,
                    row.created_at_ms,
                    row.expires_at_ms,
                    row.revoked_at_ms
                ],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO api_key_policies (key_id, policy) VALUES (?1, ?2)",
                params![row.id, policy],
            )
            .map_err(db_err)?;
            bump_config(&tx)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_key_policies(&self) -> Result<Vec<(String, KeyPolicy)>, StoreError> {
        let raw: Vec<(String, String)> = self
            .read(|c| {
                let mut st = c
                    .prepare("SELECT key_id, policy FROM api_key_policies")
                    .map_err(db_err)?;
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
            })
            .await?;
        raw.into_iter()
            .map(|(id, p)| Ok((id, serde_json::from_str(&p).map_err(json_err)?)))
            .collect()
    }

    async fn set_key_policy(&self, key_id: &str, policy: &KeyPolicy) -> Result<(), StoreError> {
        let key_id = key_id.to_string();
        let policy = serde_json::to_string(policy).map_err(json_err)?;
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM api_keys WHERE id = ?1", [&key_id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db_err)?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("api key {key_id}")));
            }
            tx.execute(
                "INSERT INTO api_key_policies (key_id, policy) VALUES (?1, ?2)
                 ON CONFLICT(key_id) DO UPDATE SET policy = excluded.policy",
                params![key_id, policy],
            )
            .map_err(db_err)?;
            bump_config(&tx)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn key_spend(&self, key_id: &str, from_ms: i64, to_ms: i64) -> Result<i64, StoreError> {
        let key_id = key_id.to_string();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT COALESCE(SUM(cost_units), 0) FROM usage_records
                 WHERE principal = ?1 AND created_at_ms >= ?2 AND created_at_ms < ?3",
            )
            .and_then(|mut st| st.query_row(params![key_id, from_ms, to_ms], |r| r.get(0)))
            .map_err(db_err)
        })
        .await
    }

    async fn update_credential(&self, id: &str, patch: &CredentialPatch) -> Result<(), StoreError> {
        let (id, patch) = (id.to_string(), patch.clone());
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM credentials WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db_err)?;
            if exists.is_none() {
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
            bump_config(&tx)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn rewrap_ciphertexts(
        &self,
        updates: &[(String, String, String)],
    ) -> Result<usize, StoreError> {
        let updates = updates.to_vec();
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let mut n = 0;
            for (id, old, new) in &updates {
                n += tx
                    .execute(
                        "UPDATE credentials SET ciphertext = ?3 WHERE id = ?1 AND ciphertext = ?2",
                        params![id, old, new],
                    )
                    .map_err(db_err)?;
            }
            bump_config(&tx)?;
            tx.commit().map_err(db_err)?;
            Ok(n)
        })
        .await
    }

    async fn list_usage_scoped(
        &self,
        user_id: Option<&str>,
        team_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let (user_id, team_id) = (user_id.map(str::to_string), team_id.map(str::to_string));
        self.read(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {} FROM usage_records
                     WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR team_id = ?2)
                     ORDER BY created_at_ms DESC, rowid DESC LIMIT ?3",
                    super::USAGE_COLUMNS
                ))
                .map_err(db_err)?;
            let rows = st
                .query_map(params![user_id, team_id, limit], usage_from_row)
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn insert_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        let e = e.clone();
        let before = e.before.as_ref().map(|v| v.to_string());
        let after = e.after.as_ref().map(|v| v.to_string());
        self.write(move |c| {
            c.execute(
                "INSERT INTO audit_log (id, at_ms, actor_user_id, actor_key_id, action, target, team_id, before_json, after_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![e.id, e.at_ms, e.actor_user_id, e.actor_key_id, e.action, e.target, e.team_id, before, after],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let q = q.clone();
        type Raw = (
            String,
            i64,
            String,
            Option<String>,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let raw: Vec<Raw> = self
            .read(move |c| {
                let mut st = c
                    .prepare(
                        "SELECT id, at_ms, actor_user_id, actor_key_id, action, target, team_id, before_json, after_json
                         FROM audit_log
                         WHERE (?1 IS NULL OR action = ?1) AND (?2 IS NULL OR actor_user_id = ?2)
                           AND (?3 IS NULL OR team_id = ?3) AND (?4 IS NULL OR at_ms >= ?4)
                         ORDER BY at_ms DESC, rowid DESC LIMIT ?5",
                    )
                    .map_err(db_err)?;
                let rows = st
                    .query_map(
                        params![q.action, q.actor_user_id, q.team_id, q.since_ms, q.limit.max(1)],
                        |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                                r.get(6)?,
                                r.get(7)?,
                                r.get(8)?,
                            ))
                        },
                    )
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
            })
            .await?;
        let parse = |s: Option<String>| -> Result<Option<serde_json::Value>, StoreError> {
            s.map(|s| serde_json::from_str(&s).map_err(json_err))
                .transpose()
        };
        raw.into_iter()
            .map(
                |(id, at_ms, actor_user_id, actor_key_id, action, target, team_id, b, a)| {
                    Ok(AuditEntry {
                        id,
                        at_ms,
                        actor_user_id,
                        actor_key_id,
                        action,
                        target,
                        team_id,
                        before: parse(b)?,
                        after: parse(a)?,
                    })
                },
            )
            .collect()
    }
}
