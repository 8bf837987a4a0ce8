//! `HUB_BENCH_DISABLE` switches over a real socket: everything is on by default, and each switch
//! turns off exactly its part (the benchmark's feature-cost table depends on that).

#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected shapes")]
#![expect(clippy::panic, reason = "tests fail loudly on unexpected outcomes")]

use std::net::SocketAddr;

use hub_core::Hub;
use hub_core::config::{EnvProvider, HubOptions};
use hub_core::hub::OpenError;
use hub_core::providers::{CredentialSecret, ProviderKind, Secret};
use hub_core::switches::BenchSwitches;
use hub_testkit::{Flavor, MockServer};
use serde_json::json;

mod common;
use common::Served;

const ADMIN_KEY: &str = "ahk_benchswitchestestkey0000000000000000000000";

fn options(dir: &std::path::Path, mock: &MockServer, disable: &str) -> HubOptions {
    let mut opts = HubOptions::new(dir);
    opts.admin_key = Some(Secret::new(ADMIN_KEY));
    opts.env_providers = vec![EnvProvider {
        kind: ProviderKind::OpenAi,
        base_url: Some(mock.base_url()),
        region: None,
        credentials: vec![CredentialSecret::api_key("sk-test")],
    }];
    opts.switches = BenchSwitches::from_disable_list(disable).unwrap();
    opts
}

async fn chat(addr: SocketAddr, key: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn everything_is_on_by_default() {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::open(options(dir.path(), &mock, "")).await.unwrap().hub;
    let mut served = Served::start(hub.clone()).await;
    let addr = served.addr;
    assert_eq!(chat(addr, None).await, 401);
    assert_eq!(chat(addr, Some("ahk_wrong")).await, 401);
    assert_eq!(chat(addr, Some(ADMIN_KEY)).await, 200);
    // The record is committed before the response is sent.
    assert_eq!(hub.store().list_usage(10).await.unwrap().len(), 1);
    served.stop();
}

#[tokio::test]
async fn auth_and_usage_log_switch_off_only_their_part() {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::open(options(dir.path(), &mock, "auth,usage_log"))
        .await
        .unwrap()
        .hub;
    let mut served = Served::start(hub.clone()).await;
    let addr = served.addr;
    assert_eq!(chat(addr, None).await, 200);
    assert_eq!(chat(addr, Some(ADMIN_KEY)).await, 200);
    hub.close().await;
    assert!(hub.store().list_usage(10).await.unwrap().is_empty());
    assert_eq!(mock.hits(), 2);
    served.stop();

    // usage_log alone: auth still refuses a caller without a key, and records are still skipped.
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::open(options(dir.path(), &mock, "usage_log"))
        .await
        .unwrap()
        .hub;
    let mut served = Served::start(hub.clone()).await;
    let addr = served.addr;
    assert_eq!(chat(addr, None).await, 401);
    assert_eq!(chat(addr, Some(ADMIN_KEY)).await, 200);
    hub.close().await;
    assert!(hub.store().list_usage(10).await.unwrap().is_empty());
    served.stop();
}

#[tokio::test]
async fn auth_off_needs_an_admin_key_to_attribute_calls_to() {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), &mock, "auth");
    opts.admin_key = None;
    match Hub::open(opts).await {
        Err(OpenError::Config(msg)) => assert!(msg.contains("HUB_ADMIN_KEY"), "{msg}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("opened without an admin key"),
    }
}

/// A key limited to one request a minute: its second call is refused unless `limits` is off.
async fn rate_limited_key(hub: &Hub) -> String {
    let owner = hub.authenticate(ADMIN_KEY).unwrap();
    let created = hub_core::iam::create_key(
        hub.store().as_ref(),
        &hub_core::iam::Actor::cli(),
        &hub_core::iam::NewKey {
            user_id: owner.user_id.clone(),
            name: Some("bench-limited".into()),
            team: None,
            expires_at_ms: None,
            policy: hub_core::policy::KeyPolicy {
                rpm: Some(1),
                ..Default::default()
            },
        },
    )
    .await
    .unwrap();
    hub.reload_if_changed().await.unwrap();
    created.key
}

#[tokio::test]
async fn limits_switch_skips_the_key_policy() {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::open(options(dir.path(), &mock, "")).await.unwrap().hub;
    let key = rate_limited_key(&hub).await;
    let mut served = Served::start(hub.clone()).await;
    let addr = served.addr;
    assert_eq!(chat(addr, Some(&key)).await, 200);
    assert_eq!(chat(addr, Some(&key)).await, 429);
    served.stop();

    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::open(options(dir.path(), &mock, "limits"))
        .await
        .unwrap()
        .hub;
    let key = rate_limited_key(&hub).await;
    let mut served = Served::start(hub.clone()).await;
    let addr = served.addr;
    assert_eq!(chat(addr, Some(&key)).await, 200);
    assert_eq!(chat(addr, Some(&key)).await, 200);
    // Auth is still on.
    assert_eq!(chat(addr, Some("ahk_wrong")).await, 401);
    served.stop();
}

/// Credits mode, the owner's account funded with 100 credits; one call; the owner's ledger
/// entry kinds, oldest first, and what the call's usage record says it reserved.
async fn credits_call_entry_kinds(mock: &MockServer, disable: &str) -> (Vec<String>, i64) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), mock, disable);
    opts.billing.mode = hub_core::pricing::BillingMode::Credits;
    let hub = Hub::open(opts).await.unwrap().hub;
    let owner = hub.authenticate(ADMIN_KEY).unwrap();
    let account = hub_core::ledger::user_account(&owner.user_id);
    hub.store()
        .grant(&hub_core::ledger::GrantReq {
            account: account.clone(),
            kind: hub_core::ledger::GrantKind::Grant,
            amount: hub_core::pricing::to_units(100.into()).unwrap(),
            idem_key: "bench-grant".into(),
            expires_at_ms: None,
            note: None,
            now_ms: hub_core::hub::now_ms(),
            starter: None,
        })
        .await
        .unwrap();
    let mut served = Served::start(hub.clone()).await;
    let addr = served.addr;
    assert_eq!(chat(addr, Some(ADMIN_KEY)).await, 200);
    served.stop();
    hub.close().await;
    let entries = hub.store().entries(&account).await.unwrap();
    let capture = entries.iter().find(|e| e.kind == "capture").unwrap();
    assert!(capture.charged > 0, "the call is charged either way");
    let records = hub.store().list_usage(10).await.unwrap();
    assert_eq!(records.len(), 1);
    (
        entries.into_iter().map(|e| e.kind).collect(),
        records[0].billing.reserved_units,
    )
}

#[tokio::test]
async fn reservation_switch_skips_only_the_hold() {
    let mock = MockServer::start(Flavor::OpenAi).await;
    // A hold is a reservation row, not a ledger entry: the call's record says what it held.
    let (kinds, held) = credits_call_entry_kinds(&mock, "").await;
    assert_eq!(kinds, ["grant", "capture"]);
    assert!(held > 0, "a hold before dispatch");
    let (kinds, held) = credits_call_entry_kinds(&mock, "reservation").await;
    assert_eq!(kinds, ["grant", "capture"]);
    assert_eq!(held, 0, "no hold");
}
