//! The host's hooks as JS functions: `resolveIdentity(token)` behind hub-core's
//! `IdentityResolver`, `onUsage(batchJson)` behind its `UsageObserver`.
//!
//! Both are weak threadsafe functions: they never keep the Node process alive on their own.

use async_trait::async_trait;
use hub_core::auth::Principal;
use hub_core::hooks::{IdentityResolver, UsageObserver};
use hub_core::store::UsageRecord;
use hub_core::{ErrorKind, HubError};
use napi::Status;
use napi::bindgen_prelude::Promise;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};

use crate::{PrincipalInput, principal_from_input};

/// `(token: string) => Promise<string | null>`: JSON of a principal, or null for "not valid".
pub type ResolveIdentityFn =
    ThreadsafeFunction<String, Promise<Option<String>>, String, Status, false, true>;

/// `(batchJson: string) => void`.
pub type UsageFn = ThreadsafeFunction<String, (), String, Status, false, true>;

pub(crate) struct JsIdentity {
    f: ResolveIdentityFn,
}

impl JsIdentity {
    pub(crate) fn new(f: ResolveIdentityFn) -> JsIdentity {
        JsIdentity { f }
    }
}

fn resolver_failed(detail: impl std::fmt::Display) -> HubError {
    HubError::new(
        ErrorKind::Unavailable,
        format!("the identity resolver failed: {detail}"),
    )
    .with_code("identity_resolver_failed")
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PrincipalJson {
    user_id: String,
    role: Option<String>,
    team_id: Option<String>,
    key_id: Option<String>,
}

#[async_trait]
impl IdentityResolver for JsIdentity {
    async fn resolve(&self, token: &str) -> Result<Option<Principal>, HubError> {
        let promise = self
            .f
            .call_async_catch(token.to_string())
            .await
            .map_err(|e| resolver_failed(e.reason))?;
        let answer = promise.await.map_err(|e| resolver_failed(e.reason))?;
        let Some(json) = answer else {
            return Ok(None);
        };
        let p: PrincipalJson = serde_json::from_str(&json)
            .map_err(|e| resolver_failed(format!("bad principal: {e}")))?;
        principal_from_input(PrincipalInput {
            user_id: p.user_id,
            role: p.role,
            team_id: p.team_id,
            key_id: p.key_id,
        })
        .map(Some)
        .map_err(|e| resolver_failed(e.message))
    }
}

pub(crate) struct JsUsage {
    f: UsageFn,
}

impl JsUsage {
    pub(crate) fn new(f: UsageFn) -> JsUsage {
        JsUsage { f }
    }
}

impl UsageObserver for JsUsage {
    fn committed(&self, batch: &[UsageRecord]) {
        match serde_json::to_string(batch) {
            // Non-blocking on an unbounded queue: the writer task never waits for JS.
            Ok(json) => {
                let status = self.f.call(json, ThreadsafeFunctionCallMode::NonBlocking);
                if status != Status::Ok {
                    tracing::warn!(%status, "onUsage could not be called");
                }
            }
            Err(e) => tracing::warn!(error = %e, "usage batch could not be serialised"),
        }
    }
}
