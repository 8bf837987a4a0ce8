//! `IamStore` for SQLite: teams, user changes, key policies, credential updates, audit log.

use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteStore, bump_config, db_err, usage_from_row};
use crate::policy::KeyPolicy;
use crate::store::iam::{
    Applied, AuditEntry, AuditFn, AuditQuery, Change, CredentialPatch, IamStore, TeamRow, UserPatch,
};
use crate::store::{ApiKeyRow, StoreError, UsageRecord};

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Db(format!("stored JSON is invalid: {e}"))
}

/// A key's spend in `[?2, ?3)`: read through the key's user (`usage_user_created`, migration 9),
/// as no index is kept per key.
pub(super) const KEY_SPEND_SQL: &str =
    "SELECT COALESCE(SUM(u.cost_units), 0) FROM api_keys k JOIN usage_records u
       ON u.user_id = k.user_id AND u.created_at_ms >= ?2 AND u.created_at_ms < ?3
       AND u.principal = k.id
     WHERE k.id = ?1";

#[async_trait]
impl IamStore for SqliteStore {
    async fn insert_team(&self, row: &TeamRow) -> Result<(), StoreError> {
        self.commit_audited(Change::InsertTeam(row.clone()), None)
            .await
            .map(drop)
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
        self.commit_audited(
            Change::UpdateUser {
                id: id.to_string(),
                patch: patch.clone(),
            },
            None,
        )
        .await
        .map(drop)
    }

    async fn create_api_key(&self, row: &ApiKeyRow, policy: &KeyPolicy) -> Result<(), StoreError> {
        self.commit_audited(
            Change::CreateApiKey {
                row: row.clone(),
                policy: policy.clone(),
            },
            None,
        )
        .await
        .map(drop)
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
        self.commit_audited(
            Change::SetKeyPolicy {
                key_id: key_id.to_string(),
                policy: policy.clone(),
            },
            None,
        )
        .await
        .map(drop)
    }

    async fn key_spend(&self, key_id: &str, from_ms: i64, to_ms: i64) -> Result<i64, StoreError> {
        let key_id = key_id.to_string();
        self.read(move |c| {
            c.prepare_cached(KEY_SPEND_SQL)
                .and_then(|mut st| st.query_row(params![key_id, from_ms, to_ms], |r| r.get(0)))
                .map_err(db_err)
        })
        .await
    }

    async fn update_credential(&self, id: &str, patch: &CredentialPatch) -> Result<(), StoreError> {
        self.commit_audited(
            Change::UpdateCredential {
                id: id.to_string(),
                patch: patch.clone(),
            },
            None,
        )
        .await
        .map(drop)
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
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            super::change::insert_audit(&tx, &e)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn commit_audited(
        &self,
        change: Change,
        audit: Option<AuditFn>,
    ) -> Result<Applied, StoreError> {
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let applied = super::change::apply(&tx, &change)?;
            if !applied.changed() {
                // Dropping the transaction rolls it back.
                return Ok(applied);
            }
            if let Some(audit) = audit {
                super::change::insert_audit(&tx, &audit(&applied))?;
            }
            tx.commit().map_err(db_err)?;
            Ok(applied)
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
                           AND (?6 IS NULL OR target = ?6) AND (?7 IS NULL OR at_ms < ?7)
                         ORDER BY at_ms DESC, rowid DESC LIMIT ?5",
                    )
                    .map_err(db_err)?;
                let rows = st
                    .query_map(
                        params![
                            q.action,
                            q.actor_user_id,
                            q.team_id,
                            q.since_ms,
                            q.limit.max(1),
                            q.target,
                            q.until_ms
                        ],
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
