//! Identity and access, in-process (`oneshot` on the real router, a real SQLite data dir, the
//! hub-testkit OpenAI mock upstream): the authorisation matrix of every `/api` route, tenant
//! isolation, revocation and expiry, per-key policy (models, surfaces, RPM, TPM), secrets never
//! leaking, the CLI against a running hub, and master-key rotation under load.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use hub_core::Hub;
use hub_core::auth::Role;
use hub_core::config::HubOptions;
use hub_core::iam::{self, Actor, NewKey, NewUser};
use hub_core::policy::KeyPolicy;
use hub_core::providers::Secret;
use hub_core::store::ApiKeyRow;
use hub_server::routes::app;
use hub_server::{AppState, ServerOptions};
use hub_testkit::{Flavor, MockServer, Script, Usage};
use serde_json::{Value, json};
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const OWNER_KEY: &str = "ahk_owner0000000000000000000000000000000000";

// ---------------------------------------------------------------------------------------------
// log capture: every tracing line of the process goes to LOGS (searched for secrets)

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = LogWriter(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(move || w.clone())
            .with_ansi(false)
            .try_init();
        buf
    })
    .clone()
}

// ---------------------------------------------------------------------------------------------
// harness

struct Env {
    _dir: tempfile::TempDir,
    opts: HubOptions,
    hub: Hub,
    app: Router,
    mock: MockServer,
    /// The provider key's plaintext (must never appear anywhere).
    provider_key: String,
    /// Every response body seen.
    seen: Mutex<Vec<u8>>,
    /// Id of the provider credential added at start.
    cred_id: String,
}

struct Resp {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

impl Env {
    async fn new() -> Result<Env, Box<dyn std::error::Error + Send + Sync>> {
        capture_logs();
        let dir = tempfile::tempdir()?;
        let provider_key = format!("sk-live-{}", uuid::Uuid::new_v4().simple());
        let mock = MockServer::start_with_key(Flavor::OpenAi, &provider_key).await;
        let mut opts = HubOptions::new(dir.path());
        opts.admin_key = Some(Secret::new(OWNER_KEY));
        opts.reload_interval = Duration::from_millis(100);
        let hub = Hub::open(opts.clone()).await?.hub;
        let app = app(AppState { hub: hub.clone() }, &ServerOptions::default());
        let env = Env {
            _dir: dir,
            opts,
            hub,
            app,
            mock,
            provider_key,
            seen: Mutex::new(Vec::new()),
            cred_id: String::new(),
        };
        let mut env = env;
        // The provider and its credential through the admin API, as an operator would.
        let r = env
            .call(
                Method::PUT,
                "/api/admin/providers/openai",
                Some(OWNER_KEY),
                Some(json!({"base_url": env.mock.base_url()})),
            )
            .await?;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let r = env
            .call(
                Method::POST,
                "/api/admin/credentials",
                Some(OWNER_KEY),
                Some(json!({"provider": "openai", "value": env.provider_key, "name": "main"})),
            )
            .await?;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        env.cred_id = r.body["id"].as_str().unwrap_or_default().to_string();
        Ok(env)
    }

    fn store(&self) -> &dyn hub_core::store::Store {
        self.hub.store().as_ref()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Result<Resp, Box<dyn std::error::Error + Send + Sync>> {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&b)?))?,
            None => req.body(Body::empty())?,
        };
        let resp = self.app.clone().oneshot(req).await?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.extend_from_slice(&bytes);
            seen.push(b'\n');
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(Resp {
            status,
            retry_after,
            body,
        })
    }

    async fn chat(
        &self,
        key: &str,
        model: &str,
    ) -> Result<Resp, Box<dyn std::error::Error + Send + Sync>> {
        self.call(
            Method::POST,
            "/v1/chat/completions",
            Some(key),
            Some(json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await
    }
}

async fn user(
    env: &Env,
    name: &str,
    role: Role,
    team: Option<&str>,
) -> Result<String, hub_core::HubError> {
    Ok(iam::create_user(
        env.store(),
        &Actor::cli(),
        &NewUser {
            name: name.into(),
            role,
            team: team.map(str::to_string),
        },
    )
    .await?
    .id)
}

async fn key(
    env: &Env,
    user_id: &str,
    policy: KeyPolicy,
) -> Result<(String, String), hub_core::HubError> {
    let k = iam::create_key(
        env.store(),
        &Actor::cli(),
        &NewKey {
            user_id: user_id.into(),
            policy,
            ..NewKey::default()
        },
    )
    .await?;
    Ok((k.view.id, k.key))
}

async fn reload(env: &Env) -> TestResult {
    env.hub.reload_if_changed().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// authorisation matrix

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Owner,
    Admin,
    TeamAdminA,
    MemberA,
    GuestA,
    MemberB,
    NoKey,
    BadKey,
    Revoked,
    Expired,
}

const EVERYONE: &[Who] = &[
    Who::Owner,
    Who::Admin,
    Who::TeamAdminA,
    Who::MemberA,
    Who::GuestA,
    Who::MemberB,
    Who::NoKey,
    Who::BadKey,
    Who::Revoked,
    Who::Expired,
];

/// The world of the matrix: two teams with users and keys, and usage on both sides.
struct World {
    team_a: String,
    team_b: String,
    owner_user: String,
    admin: (String, String, String),
    team_admin_a: (String, String, String),
    member_a: (String, String, String),
    member_a2: (String, String, String),
    guest_a: (String, String, String),
    member_b: (String, String, String),
    team_admin_b: (String, String, String),
    revoked_key: String,
    expired_key: String,
}

impl World {
    fn key(&self, who: Who) -> Option<String> {
        Some(match who {
            Who::Owner => OWNER_KEY.to_string(),
            Who::Admin => self.admin.2.clone(),
            Who::TeamAdminA => self.team_admin_a.2.clone(),
            Who::MemberA => self.member_a.2.clone(),
            Who::GuestA => self.guest_a.2.clone(),
            Who::MemberB => self.member_b.2.clone(),
            Who::NoKey => return None,
            Who::BadKey => "ahk_notakey0000000000000000000000000000000".to_string(),
            Who::Revoked => self.revoked_key.clone(),
            Who::Expired => self.expired_key.clone(),
        })
    }

    /// Ids (users, keys, teams) that `who` must never see.
    fn foreign(&self, who: Who) -> Vec<String> {
        let all_a = [
            &self.team_admin_a,
            &self.member_a,
            &self.member_a2,
            &self.guest_a,
        ];
        let all_b = [&self.member_b, &self.team_admin_b];
        let ids = |v: &[&(String, String, String)]| -> Vec<String> {
            v.iter()
                .flat_map(|(u, k, _)| [u.clone(), k.clone()])
                .collect()
        };
        match who {
            Who::TeamAdminA => {
                // The other team. (The audit log names the global admins who changed this team.)
                let mut v = ids(&all_b);
                v.push(self.team_b.clone());
                v
            }
            Who::MemberA | Who::GuestA => {
                let me = if who == Who::MemberA {
                    &self.member_a
                } else {
                    &self.guest_a
                };
                let mut v: Vec<String> = ids(&all_a)
                    .into_iter()
                    .filter(|x| x != &me.0 && x != &me.1)
                    .collect();
                v.extend(ids(&all_b));
                v.push(self.team_b.clone());
                v.push(self.admin.0.clone());
                v
            }
            Who::MemberB => {
                let mut v = ids(&all_a);
                v.push(self.team_a.clone());
                v.push(self.team_admin_b.0.clone());
                v.push(self.team_admin_b.1.clone());
                v
            }
            _ => Vec::new(),
        }
    }
}

async fn world(env: &Env) -> Result<World, Box<dyn std::error::Error + Send + Sync>> {
    let cli = Actor::cli();
    let team_a = iam::create_team(env.store(), &cli, "team-a").await?.id;
    let team_b = iam::create_team(env.store(), &cli, "team-b").await?.id;
    let mk = async |name: &str,
                    role: Role,
                    team: Option<&str>|
           -> Result<(String, String, String), hub_core::HubError> {
        let u = user(env, name, role, team).await?;
        let (kid, k) = key(env, &u, KeyPolicy::default()).await?;
        Ok((u, kid, k))
    };
    let admin = mk("admin", Role::Admin, None).await?;
    let team_admin_a = mk("ta-a", Role::Admin, Some(&team_a)).await?;
    let member_a = mk("m-a", Role::Member, Some(&team_a)).await?;
    let member_a2 = mk("m-a2", Role::Member, Some(&team_a)).await?;
    let guest_a = mk("g-a", Role::Guest, Some(&team_a)).await?;
    let member_b = mk("m-b", Role::Member, Some(&team_b)).await?;
    let team_admin_b = mk("ta-b", Role::Admin, Some(&team_b)).await?;
    let (revoked_id, revoked_key) = key(env, &member_a.0, KeyPolicy::default()).await?;
    iam::revoke_key(env.store(), &cli, &revoked_id).await?;
    // An expired key: written directly (the API refuses expiries in the past).
    let expired_key = hub_core::auth::generate_key();
    env.store()
        .create_api_key(
            &ApiKeyRow {
                id: "key_expired".into(),
                user_id: member_a.0.clone(),
                digest_hex: hex_digest(&expired_key),
                prefix: hub_core::auth::key_prefix(&expired_key),
                name: "expired".into(),
                team_id: Some(team_a.clone()),
                created_at_ms: 1,
                expires_at_ms: Some(2),
                revoked_at_ms: None,
            },
            &KeyPolicy::default(),
        )
        .await?;
    let owner_user = env
        .store()
        .list_users()
        .await?
        .into_iter()
        .find(|u| u.role == Role::Owner)
        .map(|u| u.id)
        .unwrap_or_default();
    reload(env).await?;
    // Usage on both sides.
    for k in [&member_a.2, &member_a2.2, &member_b.2, &team_admin_b.2] {
        let r = env.chat(k, "openai/gpt-4o-mini").await?;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    Ok(World {
        team_a,
        team_b,
        owner_user,
        admin,
        team_admin_a,
        member_a,
        member_a2,
        guest_a,
        member_b,
        team_admin_b,
        revoked_key,
        expired_key,
    })
}

fn hex_digest(key: &str) -> String {
    hub_core::auth::digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Expected status of `who` on a route of class `class`.
fn expected(class: &str, who: Who) -> u16 {
    let unauth = matches!(who, Who::NoKey | Who::BadKey | Who::Revoked | Who::Expired);
    if unauth {
        return 401;
    }
    let global = matches!(who, Who::Owner | Who::Admin);
    let team_admin = who == Who::TeamAdminA;
    match class {
        // Owner / global admin only.
        "global_read" => {
            if global {
                200
            } else {
                403
            }
        }
        "global_create" => {
            if global {
                201
            } else {
                403
            }
        }
        "global_write" => {
            if global {
                200
            } else {
                403
            }
        }
        // Admins, scoped to their team.
        "admin_read" => {
            if global || team_admin {
                200
            } else {
                403
            }
        }
        "admin_create" => {
            if global || team_admin {
                201
            } else {
                403
            }
        }
        "admin_write" => {
            if global || team_admin {
                200
            } else {
                403
            }
        }
        // Any valid key.
        "me_read" => 200,
        "me_create" => {
            if who == Who::GuestA {
                403
            } else {
                201
            }
        }
        _ => 0,
    }
}

#[tokio::test]
async fn authorisation_matrix_and_tenant_isolation() -> TestResult {
    let env = Env::new().await?;
    let w = world(&env).await?;
    let mut checked = 0;
    for &who in EVERYONE {
        let k = w.key(who);
        let k = k.as_deref();
        // A fresh user in team A and a fresh key of member A (targets of writes).
        let target_user = user(&env, "target", Role::Member, Some(&w.team_a)).await?;
        let (target_key, _) = key(&env, &w.member_a.0, KeyPolicy::default()).await?;
        let (own_key, _) = match who {
            Who::MemberA => key(&env, &w.member_a.0, KeyPolicy::default()).await?,
            Who::GuestA => key(&env, &w.guest_a.0, KeyPolicy::default()).await?,
            Who::MemberB => key(&env, &w.member_b.0, KeyPolicy::default()).await?,
            Who::TeamAdminA => key(&env, &w.team_admin_a.0, KeyPolicy::default()).await?,
            Who::Admin => key(&env, &w.admin.0, KeyPolicy::default()).await?,
            _ => key(&env, &w.owner_user, KeyPolicy::default()).await?,
        };
        reload(&env).await?;
        let new_key_user = match who {
            Who::TeamAdminA => w.member_a.0.clone(),
            _ => w.member_a2.0.clone(),
        };
        // A price whose current version the row below may disable.
        let price = hub_core::ledger_admin::set_price(
            env.store(),
            &Actor::cli(),
            &env.hub.billing(),
            &serde_json::from_value(json!({
                "provider": "openai", "model": format!("matrix-{who:?}"), "rates": {"input": "1", "output": "2"}
            }))?,
        )
        .await?
        .version;
        let rows: Vec<(Method, String, Option<Value>, &str)> = vec![
            (
                Method::POST,
                format!("/api/admin/credentials/{}/test", env.cred_id),
                None,
                "global_read",
            ),
            (
                Method::GET,
                "/api/admin/providers".into(),
                None,
                "global_read",
            ),
            (
                Method::PUT,
                "/api/admin/providers/deepseek".into(),
                Some(json!({"base_url": "http://127.0.0.1:9/v1", "enabled": false})),
                "global_write",
            ),
            (
                Method::GET,
                "/api/admin/credentials".into(),
                None,
                "global_read",
            ),
            (
                Method::POST,
                "/api/admin/credentials".into(),
                Some(
                    json!({"provider": "deepseek", "value": "sk-deepseek-matrix-secret-1", "enabled": false}),
                ),
                "global_create",
            ),
            (
                Method::POST,
                "/api/admin/teams".into(),
                Some(json!({"name": format!("t-{}", uuid::Uuid::new_v4())})),
                "global_create",
            ),
            (Method::GET, "/api/admin/teams".into(), None, "admin_read"),
            (Method::GET, "/api/admin/users".into(), None, "admin_read"),
            (
                Method::POST,
                "/api/admin/users".into(),
                Some(json!({"name": "new", "role": "member", "team": w.team_a})),
                "admin_create",
            ),
            (
                Method::PATCH,
                format!("/api/admin/users/{target_user}"),
                Some(json!({"name": "renamed"})),
                "admin_write",
            ),
            (Method::GET, "/api/admin/keys".into(), None, "admin_read"),
            (
                Method::POST,
                "/api/admin/keys".into(),
                Some(json!({"user_id": new_key_user, "policy": {"rpm": 5}})),
                "admin_create",
            ),
            (
                Method::PUT,
                format!("/api/admin/keys/{target_key}/policy"),
                Some(json!({"models": ["openai/*"]})),
                "admin_write",
            ),
            (
                Method::POST,
                format!("/api/admin/keys/{target_key}/revoke"),
                None,
                "admin_write",
            ),
            (Method::GET, "/api/admin/usage".into(), None, "admin_read"),
            (Method::GET, "/api/admin/audit".into(), None, "admin_read"),
            (Method::GET, "/api/me/keys".into(), None, "me_read"),
            (
                Method::POST,
                "/api/me/keys".into(),
                Some(json!({"name": "mine"})),
                "me_create",
            ),
            (
                Method::POST,
                format!("/api/me/keys/{own_key}/revoke"),
                None,
                "me_read",
            ),
            (Method::GET, "/api/me/usage".into(), None, "me_read"),
            // prices, credits, billing, reports (issue 6's billing half)
            (Method::GET, "/api/admin/prices".into(), None, "admin_read"),
            (
                Method::POST,
                "/api/admin/prices".into(),
                Some(
                    json!({"provider": "openai", "model": "m-new", "unit_cost": {"input": "0.5", "output": "1.5"}}),
                ),
                "global_create",
            ),
            (
                Method::DELETE,
                format!("/api/admin/prices/{price}"),
                None,
                "global_write",
            ),
            (
                Method::POST,
                "/api/admin/prices/reprice".into(),
                Some(json!({"margin_pct": "3", "provider": "deepseek"})),
                "global_write",
            ),
            (
                Method::POST,
                "/api/admin/credits/grant".into(),
                Some(json!({"user": w.member_a2.0, "amount": "1"})),
                "global_write",
            ),
            (
                Method::POST,
                "/api/admin/credits/adjust".into(),
                Some(json!({"user": w.member_a2.0, "amount": "-0.25", "reason": "matrix"})),
                "global_write",
            ),
            (
                Method::GET,
                format!("/api/admin/credits/balance?user={}", w.member_a.0),
                None,
                "admin_read",
            ),
            (
                Method::GET,
                format!("/api/admin/credits/entries?team={}", w.team_a),
                None,
                "admin_read",
            ),
            (Method::GET, "/api/admin/billing".into(), None, "admin_read"),
            (
                Method::PATCH,
                "/api/admin/billing".into(),
                Some(json!({"credit_prefix": "$"})),
                "global_write",
            ),
            (
                Method::GET,
                "/api/admin/usage/report?by=user,team,provider&period=day&tz=%2B08:00".into(),
                None,
                "admin_read",
            ),
            (
                Method::GET,
                "/api/admin/usage/report?by=user&format=csv".into(),
                None,
                "admin_read",
            ),
            (
                Method::GET,
                "/api/admin/usage/records?limit=2".into(),
                None,
                "admin_read",
            ),
            (
                Method::GET,
                "/api/admin/usage/export".into(),
                None,
                "admin_read",
            ),
            (
                Method::GET,
                format!("/api/admin/audit?target={}", w.team_a),
                None,
                "admin_read",
            ),
            (Method::GET, "/api/me/quota".into(), None, "me_read"),
            (
                Method::GET,
                "/api/me/usage/report?by=user,team&period=month".into(),
                None,
                "me_read",
            ),
        ];
        for (method, path, body, class) in rows {
            let r = env.call(method.clone(), &path, k, body).await?;
            let want = expected(class, who);
            assert_eq!(
                r.status.as_u16(),
                want,
                "{who:?} {method} {path}: {:.300}",
                r.body.to_string()
            );
            if want >= 400 {
                // Errors in the hub's format.
                assert!(
                    r.body["error"]["message"].is_string(),
                    "{who:?} {method} {path}: {}",
                    r.body
                );
                assert!(
                    r.body["error"]["type"].is_string(),
                    "{who:?} {method} {path}: {}",
                    r.body
                );
            }
            let text = r.body.to_string();
            for f in w.foreign(who) {
                // Ids appear as JSON strings.
                assert!(
                    !text.contains(&format!("\"{f}\"")),
                    "{who:?} {method} {path} leaked {f}: {text:.300}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, EVERYONE.len() * 37);

    // Cross-tenant writes are refused as if the object did not exist.
    let ta = w.key(Who::TeamAdminA);
    let r = env
        .call(
            Method::POST,
            &format!("/api/admin/keys/{}/revoke", w.member_b.1),
            ta.as_deref(),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = env
        .call(
            Method::PATCH,
            &format!("/api/admin/users/{}", w.member_b.0),
            ta.as_deref(),
            Some(json!({"name": "x"})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = env
        .call(
            Method::POST,
            "/api/admin/keys",
            ta.as_deref(),
            Some(json!({"user_id": w.member_b.0})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // Another tenant's balance, entries and usage do not exist for a team admin.
    for path in [
        format!("/api/admin/credits/balance?team={}", w.team_b),
        format!("/api/admin/credits/balance?user={}", w.member_b.0),
        format!("/api/admin/credits/entries?user={}", w.member_b.0),
    ] {
        let r = env.call(Method::GET, &path, ta.as_deref(), None).await?;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.body);
    }
    for path in [
        format!("/api/admin/usage/report?team={}", w.team_b),
        format!("/api/admin/usage/records?team={}", w.team_b),
        format!("/api/admin/usage/export?team={}", w.team_b),
    ] {
        let r = env.call(Method::GET, &path, ta.as_deref(), None).await?;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
    }
    let r = env
        .call(
            Method::GET,
            &format!("/api/me/usage/report?user={}", w.member_b.0),
            w.key(Who::MemberA).as_deref(),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // A team admin's report and export hold their team's users only.
    let r = env
        .call(
            Method::GET,
            "/api/admin/usage/report?by=user",
            ta.as_deref(),
            None,
        )
        .await?;
    let users: BTreeSet<String> = r.body["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| u["group"]["user"].as_str().unwrap_or("-").to_string())
        .collect();
    assert!(
        users.contains(&w.member_a.0) && users.contains(&w.member_a2.0),
        "{users:?}"
    );
    assert!(!users.contains(&w.member_b.0), "{users:?}");
    let r = env
        .call(Method::GET, "/api/admin/usage/export", ta.as_deref(), None)
        .await?;
    let csv = r.body.as_str().unwrap_or_default().to_string();
    assert!(
        csv.contains(&w.member_a.0) && !csv.contains(&w.member_b.0),
        "{csv}"
    );
    // A member's report is their own.
    let r = env
        .call(
            Method::GET,
            "/api/me/usage/report?by=user",
            w.key(Who::MemberA).as_deref(),
            None,
        )
        .await?;
    let rows = r.body["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{}", r.body);
    assert_eq!(rows[0]["group"]["user"], json!(w.member_a.0));
    // A team admin cannot grant credits (money is created by the owner / global admins only).
    let r = env
        .call(
            Method::POST,
            "/api/admin/credits/grant",
            ta.as_deref(),
            Some(json!({"team": w.team_a, "amount": "5"})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // A team admin cannot make admins, nor users in another team.
    let r = env
        .call(
            Method::POST,
            "/api/admin/users",
            ta.as_deref(),
            Some(json!({"name": "x", "role": "admin"})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = env
        .call(
            Method::POST,
            "/api/admin/users",
            ta.as_deref(),
            Some(json!({"name": "x", "role": "member", "team": w.team_b})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let mb = w.key(Who::MemberB);
    let r = env
        .call(
            Method::POST,
            &format!("/api/me/keys/{}/revoke", w.member_a.1),
            mb.as_deref(),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // The member B key of the world is still active (nothing above revoked it).
    assert_eq!(
        env.chat(&w.member_b.2, "openai/gpt-4o-mini").await?.status,
        StatusCode::OK
    );

    // What a team admin sees is exactly their team.
    let r = env
        .call(Method::GET, "/api/admin/users", ta.as_deref(), None)
        .await?;
    let teams: BTreeSet<String> = r
        .body
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| u["team_id"].as_str().unwrap_or("-").to_string())
        .collect();
    assert_eq!(teams, BTreeSet::from([w.team_a.clone()]));
    let r = env
        .call(Method::GET, "/api/admin/usage", ta.as_deref(), None)
        .await?;
    let users: BTreeSet<String> = r
        .body
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| u["user_id"].as_str().unwrap_or("-").to_string())
        .collect();
    assert!(
        users.contains(&w.member_a.0) && users.contains(&w.member_a2.0),
        "{users:?}"
    );
    // A member's usage is their own only.
    let r = env
        .call(
            Method::GET,
            "/api/me/usage",
            w.key(Who::MemberA).as_deref(),
            None,
        )
        .await?;
    let rows = r.body.as_array().cloned().unwrap_or_default();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|u| u["user_id"] == json!(w.member_a.0)));
    // The owner sees every side.
    let r = env
        .call(Method::GET, "/api/admin/usage", Some(OWNER_KEY), None)
        .await?;
    let users: BTreeSet<String> = r
        .body
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| u["user_id"].as_str().unwrap_or("-").to_string())
        .collect();
    assert!(users.contains(&w.member_b.0) && users.contains(&w.member_a.0));
    Ok(())
}

#[tokio::test]
async fn every_api_route_is_in_the_openapi_document() -> TestResult {
    let env = Env::new().await?;
    let r = env
        .call(Method::GET, "/api/openapi.json", None, None)
        .await?;
    assert_eq!(r.status, StatusCode::OK);
    let paths = r.body["paths"].as_object().cloned().unwrap_or_default();
    let want: &[(&str, &[&str])] = &[
        ("/api/admin/teams", &["get", "post"]),
        ("/api/admin/users", &["get", "post"]),
        ("/api/admin/users/{id}", &["patch"]),
        ("/api/admin/keys", &["get", "post"]),
        ("/api/admin/keys/{id}/revoke", &["post"]),
        ("/api/admin/keys/{id}/policy", &["put"]),
        ("/api/admin/usage", &["get"]),
        ("/api/admin/audit", &["get"]),
        ("/api/admin/providers", &["get"]),
        ("/api/admin/providers/{name}", &["put", "delete"]),
        ("/api/admin/providers/{name}/timeouts", &["get", "put"]),
        ("/api/admin/credentials", &["get", "post"]),
        ("/api/admin/credentials/{id}", &["patch", "delete"]),
        ("/api/admin/credentials/{id}/test", &["post"]),
        ("/api/me/keys", &["get", "post"]),
        ("/api/me/keys/{id}/revoke", &["post"]),
        ("/api/me/usage", &["get"]),
        ("/api/admin/health", &["get"]),
        ("/metrics", &["get"]),
        ("/api/admin/prices", &["get", "post"]),
        ("/api/admin/prices/{version}", &["delete"]),
        ("/api/admin/prices/reprice", &["post"]),
        ("/api/admin/credits/grant", &["post"]),
        ("/api/admin/credits/adjust", &["post"]),
        ("/api/admin/credits/balance", &["get"]),
        ("/api/admin/credits/entries", &["get"]),
        ("/api/admin/billing", &["get", "patch"]),
        ("/api/admin/usage/report", &["get"]),
        ("/api/admin/usage/records", &["get"]),
        ("/api/admin/usage/export", &["get"]),
        ("/api/me/quota", &["get"]),
        ("/api/me/usage/report", &["get"]),
    ];
    for (path, methods) in want {
        for m in *methods {
            assert!(
                paths.get(*path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} missing from the document"
            );
        }
    }
    assert_eq!(
        paths.len(),
        want.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    assert!(r.body["components"]["schemas"]["KeyPolicy"].is_object());
    // The operational routes carry their response schemas.
    assert!(r.body["components"]["schemas"]["HealthReport"].is_object());
    assert_eq!(
        r.body["paths"]["/api/admin/health"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/HealthReport"
    );
    assert!(
        r.body["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            .get("text/plain; version=0.0.4")
            .is_some(),
        "{}",
        r.body["paths"]["/metrics"]
    );
    Ok(())
}

#[tokio::test]
async fn revocation_and_expiry_take_effect_immediately() -> TestResult {
    let env = Env::new().await?;
    let u = user(&env, "m", Role::Member, None).await?;
    let r = env
        .call(
            Method::POST,
            "/api/admin/keys",
            Some(OWNER_KEY),
            Some(json!({"user_id": u, "expires_at_ms": hub_core::hub::now_ms() + 1500})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (kid, k) = (
        r.body["id"].as_str().unwrap_or_default().to_string(),
        r.body["key"].as_str().unwrap_or_default().to_string(),
    );
    assert!(k.starts_with("ahk_") && r.body["prefix"].as_str().is_some_and(|p| k.starts_with(p)));
    assert_eq!(
        env.chat(&k, "openai/gpt-4o-mini").await?.status,
        StatusCode::OK
    );
    // The key is never shown again, nor its digest.
    let listed = env
        .call(Method::GET, "/api/admin/keys", Some(OWNER_KEY), None)
        .await?
        .body
        .to_string();
    assert!(!listed.contains(&k) && !listed.contains(&hex_digest(&k)) && listed.contains(&kid));
    // Expiry: refused once the time has passed, with no reload in between.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = env.chat(&k, "openai/gpt-4o-mini").await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    let (kid2, k2) = key(&env, &u, KeyPolicy::default()).await?;
    reload(&env).await?;
    assert_eq!(
        env.chat(&k2, "openai/gpt-4o-mini").await?.status,
        StatusCode::OK
    );
    let r = env
        .call(
            Method::POST,
            &format!("/api/admin/keys/{kid2}/revoke"),
            Some(OWNER_KEY),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "revoked");
    // The very next request is refused.
    assert_eq!(
        env.chat(&k2, "openai/gpt-4o-mini").await?.status,
        StatusCode::UNAUTHORIZED
    );
    let r = env
        .call(
            Method::POST,
            &format!("/api/admin/keys/{kid2}/revoke"),
            Some(OWNER_KEY),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // The audit log has both, with who did it.
    let r = env
        .call(
            Method::GET,
            "/api/admin/audit?action=key.revoke",
            Some(OWNER_KEY),
            None,
        )
        .await?;
    let entries = r.body.as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{}", r.body);
    assert_eq!(entries[0]["target"], json!(kid2));
    assert_eq!(entries[0]["actor_user_id"], json!("owner"));
    assert_eq!(entries[0]["before"]["status"], "active");
    assert_eq!(entries[0]["after"]["status"], "revoked");
    Ok(())
}

#[tokio::test]
async fn bad_admin_input_is_a_400_in_the_hub_format() -> TestResult {
    let env = Env::new().await?;
    let cases: &[(Method, &str, &str)] = &[
        (Method::POST, "/api/admin/users", "{not json"),
        (
            Method::POST,
            "/api/admin/users",
            r#"{"name":"x","role":"emperor"}"#,
        ),
        (
            Method::POST,
            "/api/admin/users",
            r#"{"name":"","role":"member"}"#,
        ),
        (
            Method::POST,
            "/api/admin/keys",
            r#"{"user_id":"owner","policy":{"surfaces":["ftp"]}}"#,
        ),
        (
            Method::POST,
            "/api/admin/keys",
            r#"{"user_id":"owner","policy":{"rpm":0}}"#,
        ),
        (
            Method::POST,
            "/api/admin/keys",
            r#"{"user_id":"owner","unknown":1}"#,
        ),
        (
            Method::POST,
            "/api/admin/credentials",
            r#"{"provider":"openai","value":"  "}"#,
        ),
        (
            Method::POST,
            "/api/admin/credentials",
            r#"{"provider":"nope","value":"x"}"#,
        ),
        (
            Method::PUT,
            "/api/admin/providers/openai",
            r#"{"base_url":"ftp://x"}"#,
        ),
        (Method::GET, "/api/admin/usage?limit=abc", ""),
    ];
    for (m, path, body) in cases {
        let req = Request::builder()
            .method(m.clone())
            .uri(*path)
            .header("authorization", format!("Bearer {OWNER_KEY}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))?;
        let resp = env.app.clone().oneshot(req).await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
        let v: Value = serde_json::from_slice(&bytes)?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{m} {path} {body}: {v}");
        assert!(
            v["error"]["message"].is_string() && v["error"]["type"].is_string(),
            "{v}"
        );
    }
    let r = env
        .call(
            Method::PUT,
            "/api/admin/providers/nope",
            Some(OWNER_KEY),
            Some(json!({})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// per-key policy

#[tokio::test]
async fn bad_billing_input_is_a_400_never_a_500() -> TestResult {
    let env = Env::new().await?;
    let o = Some(OWNER_KEY);
    let cases: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::POST, "/api/admin/prices", Some(json!({}))),
        (
            Method::POST,
            "/api/admin/prices",
            Some(json!({"provider": "nope", "model": "x", "rates": {}})),
        ),
        (
            Method::POST,
            "/api/admin/prices",
            Some(json!({"provider": "openai", "model": "x"})),
        ),
        (
            Method::POST,
            "/api/admin/prices",
            Some(json!({"provider": "openai", "model": " ", "rates": {}})),
        ),
        (
            Method::POST,
            "/api/admin/prices",
            Some(json!({"provider": "openai", "model": "x", "rates": {"input": "-1"}})),
        ),
        (
            Method::POST,
            "/api/admin/prices",
            Some(json!({"provider": "openai", "model": "x", "rates": {"input": "abc"}})),
        ),
        (
            Method::POST,
            "/api/admin/prices",
            Some(json!({"provider": "openai", "model": "x", "rates": {"input": true}})),
        ),
        (
            Method::POST,
            "/api/admin/prices",
            Some(json!({"provider": "openai", "model": "x", "type": "video", "rates": {}})),
        ),
        (
            Method::POST,
            "/api/admin/prices",
            Some(json!({"provider": "openai", "model": "x", "rates": {}, "margin_pct": "5"})),
        ),
        (
            Method::POST,
            "/api/admin/prices",
            Some(json!({"provider": "openai", "model": "x", "unit_cost": {"input": "1e400"}})),
        ),
        (Method::DELETE, "/api/admin/prices/abc", None),
        (
            Method::POST,
            "/api/admin/prices/reprice",
            Some(json!({"margin_pct": "-100"})),
        ),
        (
            Method::POST,
            "/api/admin/prices/reprice",
            Some(json!({"margin_pct": "x"})),
        ),
        (
            Method::POST,
            "/api/admin/prices/reprice",
            Some(json!({"margin_pct": "5", "provider": "nope"})),
        ),
        (
            Method::POST,
            "/api/admin/credits/grant",
            Some(json!({"user": "owner", "team": "t", "amount": "1"})),
        ),
        (
            Method::POST,
            "/api/admin/credits/grant",
            Some(json!({"amount": "1"})),
        ),
        (
            Method::POST,
            "/api/admin/credits/grant",
            Some(json!({"user": "owner", "amount": "0"})),
        ),
        (
            Method::POST,
            "/api/admin/credits/grant",
            Some(json!({"user": "owner", "amount": "-1"})),
        ),
        (
            Method::POST,
            "/api/admin/credits/grant",
            Some(json!({"user": "owner", "amount": "1.00000000001"})),
        ),
        (
            Method::POST,
            "/api/admin/credits/grant",
            Some(json!({"user": "owner", "amount": "99999999999999999999"})),
        ),
        (
            Method::POST,
            "/api/admin/credits/grant",
            Some(json!({"user": "owner", "amount": "1", "idempotency_key": ""})),
        ),
        (
            Method::POST,
            "/api/admin/credits/adjust",
            Some(json!({"user": "owner", "amount": "-1"})),
        ),
        (
            Method::POST,
            "/api/admin/credits/adjust",
            Some(json!({"user": "owner", "amount": "1", "reason": "r", "expires_days": 3})),
        ),
        (Method::GET, "/api/admin/credits/balance", None),
        (
            Method::GET,
            "/api/admin/credits/balance?user=a&team=b",
            None,
        ),
        (
            Method::GET,
            "/api/admin/credits/entries?user=owner&limit=abc",
            None,
        ),
        (Method::PATCH, "/api/admin/billing", Some(json!({}))),
        (
            Method::PATCH,
            "/api/admin/billing",
            Some(json!({"mode": "free"})),
        ),
        (
            Method::PATCH,
            "/api/admin/billing",
            Some(json!({"base_credit_price": "0"})),
        ),
        (
            Method::PATCH,
            "/api/admin/billing",
            Some(json!({"payment_link": "ftp://x"})),
        ),
        (
            Method::PATCH,
            "/api/admin/billing",
            Some(json!({"unknown": 1})),
        ),
        (Method::GET, "/api/admin/usage/report?by=color", None),
        (Method::GET, "/api/admin/usage/report?period=week", None),
        (Method::GET, "/api/admin/usage/report?tz=Mars", None),
        (Method::GET, "/api/admin/usage/report?since=yesterday", None),
        (
            Method::GET,
            "/api/admin/usage/report?since=2026-02-01&until=2026-01-01",
            None,
        ),
        (Method::GET, "/api/admin/usage/report?format=xml", None),
        (Method::GET, "/api/admin/usage/report?nope=1", None),
        (Method::GET, "/api/admin/usage/records?limit=0", None),
        (Method::GET, "/api/admin/usage/records?limit=5000", None),
        (Method::GET, "/api/admin/usage/records?cursor=garbage", None),
        (Method::GET, "/api/admin/usage/export?limit=5", None),
        (Method::GET, "/api/admin/audit?until_ms=abc", None),
        (Method::GET, "/api/me/usage/report?period=x", None),
    ];
    for (method, path, body) in cases {
        let r = env.call(method.clone(), path, o, body.clone()).await?;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body:?}: {}",
            r.body
        );
        assert!(
            r.body["error"]["message"].is_string(),
            "{method} {path}: {}",
            r.body
        );
        assert!(
            r.body["error"]["type"].is_string(),
            "{method} {path}: {}",
            r.body
        );
    }
    // Well-formed but impossible: not found / conflict, still in the hub's format.
    let r = env
        .call(Method::DELETE, "/api/admin/prices/999999", o, None)
        .await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = env
        .call(
            Method::GET,
            "/api/admin/credits/balance?user=nobody",
            o,
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = env
        .call(
            Method::POST,
            "/api/admin/credits/adjust",
            o,
            Some(json!({"user": "owner", "amount": "-1000000", "reason": "too much"})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.body["error"]["message"].is_string());
    // None of the refused requests left an audit entry.
    let r = env
        .call(Method::GET, "/api/admin/audit?limit=1000", o, None)
        .await?;
    let actions: BTreeSet<String> = r
        .body
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        actions,
        BTreeSet::from([
            "provider.create".to_string(),
            "credential.create".to_string()
        ]),
        "{}",
        r.body
    );
    Ok(())
}

/// A usage record as the usage writer stores it (via JSON: every field named once).
fn usage_record(
    i: usize,
    app: &str,
    model: &str,
) -> Result<hub_core::store::UsageRecord, serde_json::Error> {
    serde_json::from_value(json!({
        "id": format!("req_{i:06}"),
        "created_at_ms": 1_767_225_600_000_i64 + (i as i64 / 3) * 1000,
        "client_request_id": null,
        "principal": "key_x",
        "user_id": "owner",
        "team_id": null,
        "app": app,
        "ingress": "openai",
        "endpoint": "chat",
        "requested_model": model,
        "provider": "openai",
        "credential": null,
        "upstream_model": model,
        "stream": false,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "images": 0,
        "estimated": false,
        "latency_ms": 3,
        "ttfb_ms": null,
        "status": "success",
        "http_status": 200,
        "error_class": null,
        "error_message": null,
        "provider_cost": null,
        "attempts": 1
    }))
}

#[tokio::test]
async fn usage_csv_is_escaped_streamed_and_records_page_without_gaps() -> TestResult {
    let env = Env::new().await?;
    let evil_app = "=HYPERLINK(\"http://x\",\"y\")";
    let evil_model = "a,b \"q\"\nline";
    let n = 4_500; // more than two export pages
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(usage_record(
            i,
            if i == 7 { evil_app } else { "app" },
            if i == 8 { evil_model } else { "gpt-4o-mini" },
        )?);
        if batch.len() == 1000 {
            env.store().insert_usage(&batch).await?;
            batch.clear();
        }
    }
    env.store().insert_usage(&batch).await?;
    let r = env
        .call(
            Method::GET,
            "/api/admin/usage/export?since=2026-01-01&until=2026-01-02",
            Some(OWNER_KEY),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::OK);
    let csv = r.body.as_str().unwrap_or_default().to_string();
    assert!(csv.starts_with("timestamp_ms,request_id,"), "{:.200}", csv);
    // Formula cells are neutralised; quotes doubled; commas and newlines quoted.
    assert!(
        csv.contains("\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""),
        "formula cell not escaped"
    );
    assert!(
        csv.contains("\"a,b \"\"q\"\"\nline\""),
        "quoted cell not escaped"
    );
    // Every record exactly once, in order, across the export's pages.
    let ids: Vec<&str> = csv
        .split("\r\n")
        .filter_map(|l| l.split(',').nth(1))
        .filter(|id| id.starts_with("req_"))
        .collect();
    assert_eq!(ids.len(), n);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "order or duplicates");
    // Records page by cursor with no gap or repeat.
    let mut seen = Vec::new();
    let mut path =
        "/api/admin/usage/records?since=2026-01-01&until=2026-01-02&limit=1000".to_string();
    loop {
        let r = env.call(Method::GET, &path, Some(OWNER_KEY), None).await?;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        for rec in r.body["records"].as_array().into_iter().flatten() {
            seen.push(rec["id"].as_str().unwrap_or_default().to_string());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => {
                path = format!(
                    "/api/admin/usage/records?since=2026-01-01&until=2026-01-02&limit=1000&cursor={c}"
                )
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), n);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), n);
    // The report over the same day: totals match, CSV has the TOTAL row.
    let r = env
        .call(
            Method::GET,
            "/api/admin/usage/report?by=app&since=2026-01-01&until=2026-01-02",
            Some(OWNER_KEY),
            None,
        )
        .await?;
    assert_eq!(r.body["totals"]["calls"], json!(n), "{}", r.body);
    assert_eq!(r.body["totals"]["prompt_tokens"], json!(n * 10));
    let r = env
        .call(
            Method::GET,
            "/api/admin/usage/report?by=app&since=2026-01-01&until=2026-01-02&format=csv",
            Some(OWNER_KEY),
            None,
        )
        .await?;
    let csv = r.body.as_str().unwrap_or_default().to_string();
    assert!(csv.starts_with("app,calls,"), "{csv}");
    assert!(csv.contains(&format!("TOTAL,{n},")), "{csv}");
    assert!(csv.contains("\"'=HYPERLINK("), "{csv}");
    Ok(())
}

#[tokio::test]
async fn rpm_limit_is_exact_and_says_when_to_retry() -> TestResult {
    let env = Env::new().await?;
    let u = user(&env, "m", Role::Member, None).await?;
    let (_, k) = key(
        &env,
        &u,
        KeyPolicy {
            rpm: Some(3),
            ..KeyPolicy::default()
        },
    )
    .await?;
    let (_, other) = key(
        &env,
        &u,
        KeyPolicy {
            rpm: Some(3),
            ..KeyPolicy::default()
        },
    )
    .await?;
    reload(&env).await?;
    for i in 0..3 {
        let r = env.chat(&k, "openai/gpt-4o-mini").await?;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {}", r.body);
    }
    let r = env.chat(&k, "openai/gpt-4o-mini").await?;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
    let secs: u64 = r.retry_after.as_deref().unwrap_or("").parse()?;
    assert!((1..=60).contains(&secs), "{secs}");
    // The refused call reached no provider, and another key has its own window.
    assert_eq!(env.mock.hits(), 3);
    assert_eq!(
        env.chat(&other, "openai/gpt-4o-mini").await?.status,
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn tpm_limit_counts_actual_usage_at_the_boundary() -> TestResult {
    let env = Env::new().await?;
    let model = "tpm-model";
    env.mock
        .register_scenario(model, Script::text("ok").with_usage(Usage::new(10, 5)));
    let body = json!({"model": format!("openai/{model}"), "messages": [{"role": "user", "content": "hi"}]});
    let req = hub_server::openai::codec::parse_chat(&serde_json::to_vec(&body)?)?;
    let estimate = hub_core::tokenize::estimate_prompt(&req);
    // Two calls of 15 actual tokens, then exactly room for a third call's estimate.
    let tpm = 30 + estimate;
    let u = user(&env, "m", Role::Member, None).await?;
    let (_, k) = key(
        &env,
        &u,
        KeyPolicy {
            tpm: Some(tpm),
            ..KeyPolicy::default()
        },
    )
    .await?;
    reload(&env).await?;
    for i in 0..3 {
        let r = env.chat(&k, &format!("openai/{model}")).await?;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {}", r.body);
    }
    let r = env.chat(&k, &format!("openai/{model}")).await?;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
    assert!(r.retry_after.is_some());
    assert_eq!(env.mock.hits(), 3);
    // A request larger than the whole budget (its max_tokens) is refused outright.
    let (_, k2) = key(
        &env,
        &u,
        KeyPolicy {
            tpm: Some(100),
            ..KeyPolicy::default()
        },
    )
    .await?;
    reload(&env).await?;
    let r = env
        .call(Method::POST, "/v1/chat/completions", Some(&k2), Some(json!({"model": "openai/gpt-4o-mini", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]})))
        .await?;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    Ok(())
}

#[tokio::test]
async fn models_and_surfaces_are_enforced() -> TestResult {
    let env = Env::new().await?;
    let u = user(&env, "m", Role::Member, None).await?;
    let (_, k) = key(
        &env,
        &u,
        KeyPolicy {
            models: vec!["openai/gpt-4o-mini*".into()],
            ..KeyPolicy::default()
        },
    )
    .await?;
    let (_, anth) = key(
        &env,
        &u,
        KeyPolicy {
            surfaces: vec!["anthropic".into()],
            ..KeyPolicy::default()
        },
    )
    .await?;
    reload(&env).await?;
    assert_eq!(
        env.chat(&k, "openai/gpt-4o-mini").await?.status,
        StatusCode::OK
    );
    let r = env.chat(&k, "openai/gpt-4o").await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "model_not_allowed");
    let r = env.chat(&anth, "openai/gpt-4o-mini").await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "surface_not_allowed");
    assert_eq!(env.mock.hits(), 1);
    // Refused calls are recorded against the key.
    let usage = env.store().list_usage(10).await?;
    assert_eq!(usage.iter().filter(|r| r.http_status == 403).count(), 2);
    Ok(())
}

#[tokio::test]
async fn credential_test_calls_the_provider_with_that_credential_only() -> TestResult {
    let env = Env::new().await?;
    let r = env
        .call(
            Method::POST,
            &format!("/api/admin/credentials/{}/test", env.cred_id),
            Some(OWNER_KEY),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["model"], "gpt-4.1-nano");
    assert_eq!(env.mock.hits(), 1);
    assert_eq!(env.mock.requests()[0].body["model"], "gpt-4.1-nano");
    // A wrong key, disabled: tested anyway, reported as an auth failure, no fallback to the good one.
    let r = env
        .call(
            Method::POST,
            "/api/admin/credentials",
            Some(OWNER_KEY),
            Some(json!({"provider": "openai", "value": "sk-wrong-0000000000", "enabled": false})),
        )
        .await?;
    let bad = r.body["id"].as_str().unwrap_or_default().to_string();
    let r = env
        .call(
            Method::POST,
            &format!("/api/admin/credentials/{bad}/test"),
            Some(OWNER_KEY),
            Some(json!({"model": "gpt-4o-mini"})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (
            r.body["ok"].clone(),
            r.body["error_class"].clone(),
            r.body["model"].clone()
        ),
        (json!(false), json!("upstream_auth"), json!("gpt-4o-mini"))
    );
    assert_eq!(env.mock.hits(), 2);
    let r = env
        .call(
            Method::POST,
            "/api/admin/credentials/nope/test",
            Some(OWNER_KEY),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = env
        .call(
            Method::POST,
            &format!("/api/admin/credentials/{bad}/test"),
            Some(OWNER_KEY),
            Some(json!({"modle": "x"})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let audit = env
        .call(
            Method::GET,
            "/api/admin/audit?action=credential.test",
            Some(OWNER_KEY),
            None,
        )
        .await?;
    assert_eq!(audit.body.as_array().map(Vec::len), Some(2));
    Ok(())
}

#[tokio::test]
async fn a_surface_limited_key_works_on_its_surface() -> TestResult {
    let env = Env::new().await?;
    let u = user(&env, "m", Role::Member, None).await?;
    let (_, k) = key(
        &env,
        &u,
        KeyPolicy {
            surfaces: vec!["anthropic".into()],
            ..KeyPolicy::default()
        },
    )
    .await?;
    reload(&env).await?;
    let body = json!({"model": "openai/gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let r = env
        .call(Method::POST, "/v1/messages", Some(&k), Some(body))
        .await?;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = env.chat(&k, "openai/gpt-4o-mini").await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn a_member_cannot_mint_a_wider_key_than_their_own() -> TestResult {
    let env = Env::new().await?;
    let u = user(&env, "m", Role::Member, None).await?;
    let narrow = KeyPolicy {
        models: vec!["openai/gpt-4o-mini".into()],
        rpm: Some(5),
        ..KeyPolicy::default()
    };
    let r = env
        .call(Method::POST, "/api/admin/keys", Some(OWNER_KEY), Some(json!({"user_id": u, "policy": narrow, "expires_at_ms": hub_core::hub::now_ms() + 3_600_000})))
        .await?;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (k, exp) = (
        r.body["key"].as_str().unwrap_or_default().to_string(),
        r.body["expires_at_ms"].as_i64(),
    );
    // No policy asked: the new key inherits the calling key's policy and expiry.
    let r = env
        .call(Method::POST, "/api/me/keys", Some(&k), Some(json!({})))
        .await?;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["policy"], serde_json::to_value(&narrow)?);
    assert_eq!(r.body["expires_at_ms"].as_i64(), exp);
    let k2 = r.body["key"].as_str().unwrap_or_default().to_string();
    reload(&env).await?;
    assert_eq!(
        env.chat(&k2, "openai/gpt-4o").await?.status,
        StatusCode::FORBIDDEN
    );
    // A different policy, or a later expiry, does not widen it.
    let r = env
        .call(
            Method::POST,
            "/api/me/keys",
            Some(&k),
            Some(json!({"policy": {"models": ["*"]}})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let later = exp.unwrap_or_default() + 86_400_000;
    let r = env
        .call(
            Method::POST,
            "/api/me/keys",
            Some(&k),
            Some(json!({"expires_at_ms": later})),
        )
        .await?;
    assert_eq!(r.body["expires_at_ms"].as_i64(), exp);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// secrets

#[tokio::test]
async fn provider_keys_never_leak() -> TestResult {
    let logs = capture_logs();
    let env = Env::new().await?;
    let second = format!("sk-second-{}", uuid::Uuid::new_v4().simple());
    // Exercise every path that touches a credential: add, list, update value, use, fail, delete.
    let r = env
        .call(
            Method::POST,
            "/api/admin/credentials",
            Some(OWNER_KEY),
            Some(json!({"provider": "openai", "value": second, "weight": 1})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        r.body["masked"].as_str().map(|m| (
            m.starts_with(&second[..4]),
            m.ends_with(&second[second.len() - 4..])
        )),
        Some((true, true))
    );
    env.call(Method::GET, "/api/admin/credentials", Some(OWNER_KEY), None)
        .await?;
    let r = env
        .call(
            Method::PATCH,
            &format!("/api/admin/credentials/{id}"),
            Some(OWNER_KEY),
            Some(json!({"value": format!("{second}-v2"), "weight": 2})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for _ in 0..4 {
        // The second credential is wrong for the mock: the hub retries with the right one.
        let r = env.chat(OWNER_KEY, "openai/gpt-4o-mini").await?;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // Every read route of the admin API, captured with the rest.
    for path in [
        "/api/admin/audit",
        "/api/admin/audit?action=credential.update",
        "/api/admin/usage",
        "/api/admin/usage/records",
        "/api/admin/usage/export",
        "/api/admin/usage/report?by=user,provider,model&period=hour",
        "/api/admin/usage/report?by=provider&format=csv",
        "/api/admin/prices",
        "/api/admin/billing",
        "/api/admin/providers",
        "/api/admin/users",
        "/api/admin/keys",
        "/api/admin/teams",
        "/api/admin/health",
        "/api/me/keys",
        "/api/me/usage",
        "/api/me/usage/report?by=provider",
        "/api/me/quota",
    ] {
        let r = env.call(Method::GET, path, Some(OWNER_KEY), None).await?;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    let r = env
        .call(
            Method::POST,
            "/api/admin/credits/grant",
            Some(OWNER_KEY),
            Some(json!({"user": "owner", "amount": "2", "reason": "leak test"})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = env
        .call(
            Method::DELETE,
            &format!("/api/admin/credentials/{id}"),
            Some(OWNER_KEY),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    env.hub.close().await;

    let mut files = Vec::new();
    for entry in std::fs::read_dir(env.opts.data_dir.clone())? {
        let p = entry?.path();
        if p.is_file() {
            files.push((p.display().to_string(), std::fs::read(&p)?));
        }
    }
    assert!(files.iter().any(|(p, _)| p.ends_with("hub.db")));
    let logs = logs.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(!logs.is_empty(), "log capture is not working");
    let responses = env.seen.lock().map(|s| s.clone()).unwrap_or_default();
    for secret in [
        env.provider_key.as_str(),
        second.as_str(),
        &format!("{second}-v2"),
    ] {
        let needle = secret.as_bytes();
        let find = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        for (p, bytes) in &files {
            assert!(!find(bytes), "{secret} found in {p}");
        }
        assert!(!find(&logs), "{secret} found in the logs");
        assert!(!find(&responses), "{secret} found in a response");
    }
    // The test can fail: the mock did receive the key.
    let sent = env.mock.requests().iter().any(|r| {
        r.header("authorization")
            .is_some_and(|h| h.contains(&env.provider_key))
    });
    assert!(sent);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CLI

struct Lines(Vec<String>);

impl hub_server::cli::Out for Lines {
    fn line(&mut self, s: &str) {
        self.0.push(s.to_string());
    }
}

#[tokio::test]
async fn cli_creates_users_and_keys_that_a_running_hub_accepts() -> TestResult {
    use hub_server::admin_cli::{IamCommand, KeyCommand, TeamCommand, UserCommand, run};
    let env = Env::new().await?;
    let mut out = Lines(Vec::new());
    run(
        &env.opts,
        IamCommand::Team(TeamCommand::Create { name: "ops".into() }),
        &mut out,
    )
    .await?;
    let team = out.0.pop().unwrap_or_default();
    assert!(team.starts_with("team_"));
    run(
        &env.opts,
        IamCommand::User(UserCommand::Create {
            name: "ci".into(),
            role: "member".into(),
            team: Some("ops".into()),
        }),
        &mut out,
    )
    .await?;
    let user_id = out.0.pop().unwrap_or_default();
    assert!(user_id.starts_with("user_"));
    run(
        &env.opts,
        IamCommand::Key(KeyCommand::Create {
            user: user_id.clone(),
            name: None,
            team: None,
            models: vec!["openai/*".into()],
            surfaces: vec![],
            rpm: Some(2),
            tpm: None,
            expires_in_days: Some(30),
            budget: Default::default(),
        }),
        &mut out,
    )
    .await?;
    let k = out.0.pop().unwrap_or_default();
    assert!(k.starts_with("ahk_"), "{k}");
    // The running hub notices by itself (reload interval 100 ms) within a second.
    let mut ok = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if env.chat(&k, "openai/gpt-4o-mini").await?.status == StatusCode::OK {
            ok = true;
            break;
        }
    }
    assert!(ok, "the CLI's key did not work within a second");
    let r = env.chat(&k, "deepseek/deepseek-chat").await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Listing shows the key's prefix and policy, never the key.
    run(
        &env.opts,
        IamCommand::Key(KeyCommand::List { json: true }),
        &mut out,
    )
    .await?;
    let listed = out.0.pop().unwrap_or_default();
    assert!(
        !listed.contains(&k) && listed.contains(&k[..12]) && listed.contains("\"rpm\": 2"),
        "{listed}"
    );
    let kid = serde_json::from_str::<Value>(&listed)?
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["user_id"] == json!(user_id))
                .map(|x| x["id"].as_str().unwrap_or_default().to_string())
        })
        .unwrap_or_default();
    run(
        &env.opts,
        IamCommand::Key(KeyCommand::Revoke { id: kid }),
        &mut out,
    )
    .await?;
    let mut refused = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if env.chat(&k, "openai/gpt-4o-mini").await?.status == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "the CLI's revocation did not take effect within a second"
    );
    run(
        &env.opts,
        IamCommand::Audit(hub_server::admin_cli::AuditCommand::List {
            limit: 50,
            action: None,
            actor: None,
            target: None,
            since_ms: None,
            until_ms: None,
            json: false,
        }),
        &mut out,
    )
    .await?;
    let audit = out.0.join("\n");
    for action in ["team.create", "user.create", "key.create", "key.revoke"] {
        assert!(
            audit.contains(action),
            "{action} not in the audit log:\n{audit}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn cli_billing_changes_are_audited_and_seen_by_the_api() -> TestResult {
    use hub_server::ledger_cli::{self, CreditsCommand, PriceCommand, Who};
    let env = Env::new().await?;
    let store = env.hub.store().clone();
    let mut out = Lines(Vec::new());
    ledger_cli::price(
        store.clone(),
        PriceCommand::Set {
            provider: "openai".into(),
            model: "cli-model".into(),
            model_type: "chat".into(),
            input: "2".into(),
            output: "4".into(),
            cache_read: None,
            cache_write: None,
            image: None,
            unit_cost: true,
        },
        &mut out,
    )
    .await?;
    let version: i64 = out
        .0
        .last()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert!(version > 0, "{:?}", out.0);
    ledger_cli::price(
        store.clone(),
        PriceCommand::Reprice {
            margin: "10".into(),
            provider: Some("openai".into()),
        },
        &mut out,
    )
    .await?;
    // The re-price made a newer version: the one printed is stale now.
    let stale = ledger_cli::price(store.clone(), PriceCommand::Disable { version }, &mut out).await;
    assert!(stale.is_err_and(|e| e.contains("not current")));
    let who = Who {
        user: Some("owner".into()),
        team: None,
    };
    ledger_cli::credits(
        store.clone(),
        CreditsCommand::Grant {
            who: who.clone(),
            amount: "3".into(),
            expires_days: None,
            idempotency_key: Some("cli-1".into()),
            note: None,
        },
        &mut out,
    )
    .await?;
    let no_reason = ledger_cli::credits(
        store.clone(),
        CreditsCommand::Adjust {
            who: who.clone(),
            amount: "-1".into(),
            idempotency_key: None,
            note: None,
        },
        &mut out,
    )
    .await;
    assert!(no_reason.is_err_and(|e| e.contains("reason")));
    // The API sees the CLI's changes, with the CLI as the actor.
    env.hub.reload_if_changed().await?;
    let r = env
        .call(
            Method::GET,
            "/api/admin/prices?provider=openai&model=cli-model",
            Some(OWNER_KEY),
            None,
        )
        .await?;
    assert_eq!(r.body[0]["margin_pct"], json!("10"), "{}", r.body);
    assert_eq!(r.body[0]["rates"]["input"], json!("2.2"), "{}", r.body);
    let r = env
        .call(
            Method::GET,
            "/api/admin/audit?actor=cli",
            Some(OWNER_KEY),
            None,
        )
        .await?;
    let actions: Vec<&str> = r
        .body
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["credits.grant", "price.reprice", "price.set"],
        "{}",
        r.body
    );
    let r = env
        .call(
            Method::GET,
            "/api/admin/credits/balance?user=owner",
            Some(OWNER_KEY),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["available"].as_str().is_some());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// master-key rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_key_rotation_under_load_loses_no_request() -> TestResult {
    let env = Arc::new(Env::new().await?);
    let old_id = env.hub.vault().key_id().to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (env, stop) = (env.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match env.chat(OWNER_KEY, "openai/gpt-4o-mini").await {
                    Ok(r) if r.status == StatusCode::OK => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = hub_core::keyring::rotate(&env.opts).await?;
    assert_eq!(report.old_key_id, old_id);
    assert_eq!(report.rewrapped, 1);
    // The running hub picks the new key up by itself.
    let mut switched = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if env.hub.vault().key_id() == report.new_key_id {
            switched = true;
            break;
        }
    }
    assert!(switched, "the running hub did not load the new master key");
    // A credential added now is sealed with the new key, and used.
    let r = env
        .call(
            Method::POST,
            "/api/admin/credentials",
            Some(OWNER_KEY),
            Some(json!({"provider": "openai", "value": env.provider_key, "name": "after"})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await?;
        assert!(
            failed.is_empty(),
            "requests failed during rotation: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 10, "too little load: {total}");
    // Every credential decrypts with the key files alone, and is under the new key.
    let vault = hub_core::keyring::load_vault(&env.opts)?;
    assert_eq!(vault.key_id(), report.new_key_id);
    let rows = env.store().list_credentials().await?;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(
            hub_core::vault::Vault::key_id_of(&row.ciphertext),
            Some(report.new_key_id.as_str())
        );
        let s = hub_core::hub::open_credential(&vault, row)?;
        assert_eq!(
            s.api_key.map(|k| k.expose().to_string()),
            Some(env.provider_key.clone())
        );
    }
    // A fresh start with the rotated files works; without the new key it refuses, naming the key.
    assert!(report.retired_path.exists());
    let mut o = env.opts.clone();
    o.admin_key = None;
    let h = Hub::open(o.clone()).await?;
    h.hub.close().await;
    o.master_key = Some(hub_core::config::MasterKeySource::Value(Secret::new(
        "11".repeat(32),
    )));
    let err = Hub::open(o)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("cannot decrypt stored credential") && err.contains(&report.new_key_id),
        "{err}"
    );
    Ok(())
}

/// The document is serialised once at start-up and served as its JSON text: the type must say so,
/// and two fetches must agree.
#[tokio::test]
async fn the_openapi_document_is_served_as_json() -> TestResult {
    let env = Env::new().await?;
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let req = Request::builder()
            .uri("/api/openapi.json")
            .body(Body::empty())?;
        let resp = env.app.clone().oneshot(req).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        bodies.push(axum::body::to_bytes(resp.into_body(), usize::MAX).await?);
    }
    assert_eq!(bodies[0], bodies[1]);
    let doc: Value = serde_json::from_slice(&bodies[0])?;
    assert_eq!(doc["info"]["title"], "AIGNE Hub admin API");
    Ok(())
}
