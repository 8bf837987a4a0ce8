//! Billing end to end, in-process: the real router and hub (temp data dir) on port 0, fed by a
//! hub-testkit OpenAI mock. Concurrency against one balance, 402 before any upstream traffic,
//! disconnect and mid-stream failure settling what was delivered (checked against the mock's own
//! counts), starter credits under concurrent first requests, internal-mode costing, live mode
//! switch, a non-streaming caller going away. Every test ends with the ledger's own `verify`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hub_core::Hub;
use hub_core::config::{EnvProvider, HubOptions};
use hub_core::hub::billing_keys;
use hub_core::ledger::{GrantKind, GrantReq, user_account};
use hub_core::pricing::{BillingMode, Price, Rates, from_units, to_units};
use hub_core::providers::{CredentialSecret, ProviderKind, Secret};
use hub_core::store::{CallStatus, UsageRecord};
use hub_core::types::ModelType;
use hub_testkit::{Flavor, MockServer, Script, Usage};
use rust_decimal::Decimal;
use serde_json::{Value, json};

mod common;

const KEY: &str = "sk-billing-test-key-0123456789";

struct Harness {
    _dir: tempfile::TempDir,
    hub: Hub,
    mock: MockServer,
    url: String,
    http: reqwest::Client,
    _served: common::Served,
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_default()
}

async fn harness(mode: BillingMode, starter: &str) -> Harness {
    harness_with(mode, starter, |_| {}).await
}

async fn harness_with(
    mode: BillingMode,
    starter: &str,
    configure: impl FnOnce(&mut HubOptions),
) -> Harness {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => unreachable!("tempdir: {e}"),
    };
    let mut opts = HubOptions::new(dir.path());
    opts.admin_key = Some(Secret::new(KEY));
    opts.env_providers = vec![EnvProvider {
        kind: ProviderKind::OpenAi,
        base_url: Some(mock.base_url()),
        region: None,
        credentials: vec![CredentialSecret::api_key("sk-test")],
    }];
    opts.billing.mode = mode;
    opts.billing.starter_credits = dec(starter);
    opts.billing.max_output_tokens = 50;
    opts.reload_interval = Duration::from_millis(100);
    configure(&mut opts);
    let hub = match Hub::open(opts).await {
        Ok(o) => o.hub,
        Err(e) => unreachable!("open: {e}"),
    };
    // A test model with round rates: 1 credit per 1M input tokens, 2 per 1M output tokens.
    let price = Price {
        version: 0,
        provider: ProviderKind::OpenAi,
        model: "bill-model".into(),
        model_type: ModelType::Chat,
        unit: Some(Rates {
            input: dec("0.0000005"),
            output: dec("0.000001"),
            ..Rates::default()
        }),
        margin_pct: None,
        rates: Rates {
            input: dec("0.000001"),
            output: dec("0.000002"),
            ..Rates::default()
        },
        source: "admin".into(),
        created_at_ms: 1,
        disabled: false,
    };
    if let Err(e) = hub.store().insert_prices(&[price]).await {
        unreachable!("price: {e}");
    }
    if let Err(e) = hub.reload_if_changed().await {
        unreachable!("reload: {e}");
    }
    let served = common::Served::start(hub.clone()).await;
    Harness {
        _dir: dir,
        hub,
        mock,
        url: served.base(),
        http: reqwest::Client::new(),
        _served: served,
    }
}

type R = Result<(), Box<dyn std::error::Error + Send + Sync>>;

impl Harness {
    async fn grant(&self, account: &str, credits: &str) -> R {
        self.hub
            .store()
            .grant(&GrantReq {
                account: account.into(),
                kind: GrantKind::Grant,
                amount: to_units(dec(credits)).ok_or("range")?,
                idem_key: format!("grant:{}", uuid::Uuid::new_v4()),
                expires_at_ms: None,
                note: None,
                now_ms: hub_core::hub::now_ms(),
                starter: None,
            })
            .await?;
        Ok(())
    }

    async fn available(
        &self,
        account: &str,
    ) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self
            .hub
            .store()
            .balance(account)
            .await?
            .map_or(0, |b| b.available))
    }

    async fn chat(&self, body: &Value) -> Result<(u16, Value), reqwest::Error> {
        let resp = self
            .http
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    async fn record(&self, id: &str) -> Option<UsageRecord> {
        for _ in 0..100 {
            if let Ok(rows) = self.hub.store().list_usage(1000).await
                && let Some(r) = rows.into_iter().find(|r| r.id == id)
            {
                return Some(r);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    async fn verify(&self) -> R {
        let rep = self
            .hub
            .store()
            .verify(hub_core::hub::now_ms(), 3_600_000)
            .await?;
        assert!(rep.ok(), "{:#?}", rep.violations);
        assert_eq!(
            rep.total_granted,
            rep.total_available + rep.total_reserved + rep.total_charged + rep.total_expired,
            "{rep:#?}"
        );
        Ok(())
    }
}

fn body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
        "stream": stream,
    })
}

/// Worst case of `body()`: prompt bound (16 + 2 bytes) / 2 = 9 tokens × 1e-6 + 100 × 2e-6.
const WORST: &str = "0.000209";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_balance_for_k_calls_serves_at_most_k_of_20k_parallel_requests() -> R {
    let h = Arc::new(harness(BillingMode::Credits, "0").await);
    const K: usize = 5;
    // Each call really costs its worst case, so nothing is ever released for a later request.
    h.mock.register_scenario(
        "bill-model",
        Script::text("ok")
            .with_usage(Usage::new(9, 100))
            .with_first_byte_delay_ms(50),
    );
    let acct = user_account("owner");
    h.grant(&acct, &(dec(WORST) * Decimal::from(K as u64)).to_string())
        .await?;
    let mut tasks = Vec::new();
    for i in 0..20 * K {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.chat(&body("openai/bill-model", i % 2 == 0)).await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (status, v) = t.await??;
        match status {
            200 => ok += 1,
            402 => {
                refused += 1;
                if v.get("error").is_some() {
                    assert_eq!(v["error"]["code"], "insufficient_quota", "{v}");
                    assert_eq!(v["error"]["type"], "insufficient_quota", "{v}");
                }
            }
            s => return Err(format!("unexpected status {s}: {v}").into()),
        }
    }
    assert_eq!(ok, K, "served");
    assert_eq!(refused, 19 * K, "refused");
    assert_eq!(h.mock.hits(), K, "the refused never reached the upstream");
    let bal = h.hub.store().balance(&acct).await?.ok_or("no account")?;
    assert_eq!((bal.available, bal.reserved), (0, 0));
    h.verify().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starter_credits_are_granted_once_under_concurrent_first_requests() -> R {
    let h = Arc::new(harness(BillingMode::Credits, "1").await);
    h.mock.register_scenario(
        "bill-model",
        Script::text("ok").with_usage(Usage::new(9, 1)),
    );
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.chat(&body("openai/bill-model", false)).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await??.0, 200);
    }
    let acct = user_account("owner");
    let entries = h.hub.store().entries(&acct).await?;
    assert_eq!(entries.iter().filter(|e| e.kind == "starter").count(), 1);
    assert_eq!(entries.iter().filter(|e| e.kind == "capture").count(), 20);
    // 1 credit - 20 × (9 × 1e-6 + 1 × 2e-6)
    assert_eq!(from_units(h.available(&acct).await?), dec("0.99978"));
    h.verify().await
}

#[tokio::test]
async fn internal_mode_costs_every_call_at_provider_list_price() -> R {
    let h = harness(BillingMode::Internal, "0").await;
    h.mock.register_scenario(
        "gpt-4o-mini",
        Script::text("hello").with_usage(Usage::new(1000, 500)),
    );
    let resp = h
        .http
        .post(format!("{}/v1/chat/completions", h.url))
        .bearer_auth(KEY)
        .json(&body("openai/gpt-4o-mini", false))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .ok_or("no request id")?
        .to_string();
    let rec = h.record(&id).await.ok_or("no record")?;
    // $0.15/M in, $0.60/M out (data/prices.json): 1000 × 0.15e-6 + 500 × 0.6e-6
    assert_eq!(from_units(rec.billing.cost_units), dec("0.00045"));
    assert_eq!(rec.billing.provider_cost_units, rec.billing.cost_units);
    assert_eq!(rec.billing.mode.as_deref(), Some("internal"));
    assert!(rec.billing.price_version.is_some());
    assert_eq!(rec.billing.account, None, "no balances in internal mode");
    // Reports see it at once (roll-up written in the same commit).
    let rows = h
        .hub
        .store()
        .usage_report(&hub_core::ledger::ReportQuery {
            group_by: vec![hub_core::ledger::report::Dim::Model],
            ..Default::default()
        })
        .await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].keys, vec!["gpt-4o-mini".to_string()]);
    assert_eq!(rows[0].cost_units, rec.billing.cost_units);
    h.verify().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_credits_mode_is_live_and_refuses_before_upstream() -> R {
    let h = harness(BillingMode::Internal, "0").await;
    h.mock.register_scenario(
        "bill-model",
        Script::text("ok").with_usage(Usage::new(9, 1)),
    );
    assert_eq!(h.chat(&body("openai/bill-model", false)).await?.0, 200);
    // Another process (the admin CLI) flips the stored setting; the hub notices by itself.
    h.hub
        .store()
        .set_setting(billing_keys::MODE, "credits")
        .await?;
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = h.chat(&body("openai/bill-model", false)).await?.0;
        if status == 402 {
            break;
        }
    }
    assert_eq!(status, 402);
    let hits = h.mock.hits();
    assert_eq!(h.chat(&body("openai/bill-model", true)).await?.0, 402);
    assert_eq!(
        h.mock.hits(),
        hits,
        "a stream refused before any upstream traffic too"
    );
    h.verify().await
}

/// Reads a streamed response until `content_chunks` chunks carrying text arrived, then drops it.
async fn read_then_drop(
    h: &Harness,
    content_chunks: usize,
) -> Result<(String, usize), Box<dyn std::error::Error + Send + Sync>> {
    let resp = h
        .http
        .post(format!("{}/v1/chat/completions", h.url))
        .bearer_auth(KEY)
        .json(&body("openai/bill-model", true))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .ok_or("no request id")?
        .to_string();
    let mut seen = 0;
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        // Text chunks only (the first chunk may carry the role with empty content).
        seen = buf.matches("\"content\":\"hello\"").count()
            + buf.matches("\"content\":\" hello\"").count();
        if seen >= content_chunks {
            break;
        }
    }
    drop(body);
    Ok((id, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_settles_what_was_delivered() -> R {
    let h = harness(BillingMode::Credits, "0").await;
    let acct = user_account("owner");
    h.grant(&acct, "1").await?;
    let words = vec!["hello"; 40].join(" ");
    h.mock.register_scenario(
        "bill-model",
        Script::text(words)
            .with_chunk_delay_ms(25)
            .with_usage(Usage::new(9, 40)),
    );
    let (id, seen) = read_then_drop(&h, 5).await?;
    let rec = h.record(&id).await.ok_or("no record")?;
    // The upstream connection is closed when the hub drops the stream; wait for the mock to see it.
    for _ in 0..100 {
        if h.mock.stats().streams_cancelled_by_client == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = h.mock.stats();
    assert_eq!(rec.status, CallStatus::Cancelled, "{rec:?} {stats:?}");
    assert!(rec.estimated, "the provider's usage never came: {rec:?}");
    // Each chunk is one o200k token ("hello" / " hello"): what was charged lies between what the
    // client saw and what the upstream sent, and is far below the full 40.
    assert!(
        rec.completion_tokens as usize >= seen && rec.completion_tokens <= stats.chunks_sent as u64,
        "charged {} tokens; client saw {seen}, mock sent {}",
        rec.completion_tokens,
        stats.chunks_sent
    );
    assert!(
        stats.chunks_sent < 40,
        "the upstream was cancelled ({} sent)",
        stats.chunks_sent
    );
    assert_eq!(stats.streams_cancelled_by_client, 1);
    // Charged exactly prompt × 1e-6 + completion × 2e-6; the rest of the hold went back.
    let cost = Decimal::from(rec.prompt_tokens) * dec("0.000001")
        + Decimal::from(rec.completion_tokens) * dec("0.000002");
    assert_eq!(from_units(rec.billing.cost_units), cost);
    assert_eq!(from_units(h.available(&acct).await?), dec("1") - cost);
    h.verify().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mid_stream_failure_settles_what_was_delivered() -> R {
    let h = harness(BillingMode::Credits, "0").await;
    let acct = user_account("owner");
    h.grant(&acct, "1").await?;
    let words = vec!["hello"; 20].join(" ");
    h.mock.register_scenario(
        "bill-model",
        Script::text(words)
            .with_error_after_chunks(3)
            .with_usage(Usage::new(9, 20)),
    );
    let resp = h
        .http
        .post(format!("{}/v1/chat/completions", h.url))
        .bearer_auth(KEY)
        .json(&body("openai/bill-model", true))
        .send()
        .await?;
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .ok_or("no request id")?
        .to_string();
    let text = resp.text().await?;
    assert!(text.contains("\"error\""), "{text}");
    let rec = h.record(&id).await.ok_or("no record")?;
    assert_eq!(rec.status, CallStatus::Failed);
    assert_eq!(h.mock.stats().chunks_sent, 3);
    assert_eq!(
        rec.completion_tokens, 3,
        "what the mock delivered, one token a chunk"
    );
    let cost = Decimal::from(rec.prompt_tokens) * dec("0.000001") + dec("0.000006");
    assert_eq!(from_units(rec.billing.cost_units), cost);
    assert_eq!(from_units(h.available(&acct).await?), dec("1") - cost);
    h.verify().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_before_output_releases_everything() -> R {
    let h = harness(BillingMode::Credits, "0").await;
    let acct = user_account("owner");
    h.grant(&acct, "1").await?;
    h.mock.register_scenario("bill-model", Script::error(500));
    let (status, _) = h.chat(&body("openai/bill-model", false)).await?;
    assert_eq!(status, 502);
    let (status, _) = h.chat(&body("openai/bill-model", true)).await?;
    assert_eq!(status, 502);
    let bal = h.hub.store().balance(&acct).await?.ok_or("no account")?;
    assert_eq!((from_units(bal.available), bal.reserved), (dec("1"), 0));
    h.verify().await
}

/// A non-streaming caller that goes away mid-call: the hub cancels the upstream call (the slow
/// mock sees its connection closed before it answered), releases the whole reservation, and
/// writes exactly one usage record saying the client cancelled and nothing was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streaming_caller_that_goes_away_cancels_upstream_and_is_charged_nothing() -> R {
    let h = harness(BillingMode::Credits, "0").await;
    let acct = user_account("owner");
    h.grant(&acct, "1").await?;
    h.mock.register_scenario(
        "bill-model",
        Script::text("too late")
            .with_first_byte_delay_ms(3_000)
            .with_usage(Usage::new(9, 2)),
    );
    let call = {
        let (http, url) = (h.http.clone(), h.url.clone());
        tokio::spawn(async move {
            http.post(format!("{url}/v1/chat/completions"))
                .bearer_auth(KEY)
                .header("x-request-id", "client-gone-1")
                .json(&body("openai/bill-model", false))
                .send()
                .await
        })
    };
    // The call is upstream (reserved, mock waiting) ...
    for _ in 0..200 {
        if h.mock.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.mock.hits(), 1, "the call reached the mock");
    let held = h.hub.store().balance(&acct).await?.ok_or("no account")?;
    assert!(
        held.reserved > 0,
        "a reservation is held while the call runs"
    );
    // ... when the caller drops its connection.
    call.abort();
    let _ = call.await;
    for _ in 0..200 {
        if h.mock.stats().requests_cancelled_by_client == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        h.mock.stats().requests_cancelled_by_client,
        1,
        "the hub closed the upstream connection before the mock answered"
    );
    for _ in 0..200 {
        if !h.hub.store().list_usage(100).await?.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let any late writer finish before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let records = h.hub.store().list_usage(100).await?;
    assert_eq!(records.len(), 1, "exactly one usage record: {records:#?}");
    let rec = &records[0];
    assert_eq!(rec.client_request_id.as_deref(), Some("client-gone-1"));
    assert_eq!(rec.status, CallStatus::Cancelled);
    assert_eq!(rec.error_class.as_deref(), Some("client_closed"));
    assert!(
        rec.error_message
            .as_deref()
            .is_some_and(|m| m.contains("client cancelled") && m.contains("nothing was delivered")),
        "{rec:?}"
    );
    assert_eq!((rec.prompt_tokens, rec.completion_tokens), (0, 0));
    assert_eq!(rec.billing.cost_units, 0);
    assert!(rec.billing.reserved_units > 0);
    let after = h.hub.store().balance(&acct).await?.ok_or("no account")?;
    assert_eq!(after.reserved, 0, "the reservation was released");
    assert_eq!(from_units(after.available), dec("1"), "nothing charged");
    let entries = h.hub.store().entries(&acct).await?;
    let captures: Vec<_> = entries.iter().filter(|e| e.kind == "capture").collect();
    assert_eq!(captures.len(), 1, "{entries:#?}");
    assert_eq!(captures[0].charged, 0);
    assert_eq!(captures[0].request_id.as_deref(), Some(rec.id.as_str()));
    h.verify().await
}

/// Report time zones: the configured ones (HUB_REPORT_TIMEZONES -> `BillingDefaults`) are built
/// when the hub opens; changing the stored setting (`admin billing set --report-timezones`)
/// rebuilds while the hub runs; reports in the zone agree with the 15-minute roll-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_time_zones_follow_the_setting() -> R {
    use hub_core::ledger::report::{Dim, Period, ReportZone};
    use hub_core::ledger::{ReportQuery, ZoneRebuild};
    let shanghai = ReportZone::parse("Asia/Shanghai")?;
    let paris = ReportZone::parse("Europe/Paris")?;
    let h = harness_with(BillingMode::Internal, "0", |o| {
        o.billing.report_zones =
            hub_core::hub::parse_report_zones("UTC, Asia/Shanghai").unwrap_or_default();
    })
    .await;
    h.mock.register_scenario(
        "bill-model",
        Script::text("hi").with_usage(Usage::new(9, 2)),
    );
    for _ in 0..3 {
        assert_eq!(h.chat(&body("openai/bill-model", false)).await?.0, 200);
    }
    // Asking the store for what the hub configured changes nothing: it was built at open.
    let same = h
        .hub
        .store()
        .set_report_zones(&[ReportZone::UTC, shanghai.clone()])
        .await?;
    assert_eq!(same, ZoneRebuild::default());
    let q = |z: &ReportZone| ReportQuery {
        group_by: vec![Dim::Model],
        period: Some(Period::Day),
        zone: Some(z.clone()),
        ..ReportQuery::default()
    };
    let rows = h.hub.store().usage_report(&q(&shanghai)).await?;
    assert_eq!(rows.iter().map(|r| r.calls).sum::<i64>(), 3, "{rows:?}");

    // The stored setting overrides the environment; the running hub applies it on reload.
    h.hub
        .store()
        .set_setting(billing_keys::REPORT_TIMEZONES, "Europe/Paris")
        .await?;
    // The hub's own reloader (every 500 ms) may have applied it first; either way it is applied.
    h.hub.reload_if_changed().await?;
    assert_eq!(h.hub.billing().report_zones, vec![paris.clone()]);
    let same = h
        .hub
        .store()
        .set_report_zones(std::slice::from_ref(&paris))
        .await?;
    assert_eq!(
        same,
        ZoneRebuild::default(),
        "Paris built, Shanghai dropped by the hub"
    );
    let rows = h.hub.store().usage_report(&q(&paris)).await?;
    assert_eq!(rows.iter().map(|r| r.calls).sum::<i64>(), 3, "{rows:?}");
    let rows = h.hub.store().usage_report(&q(&shanghai)).await?;
    assert_eq!(
        rows.iter().map(|r| r.calls).sum::<i64>(),
        3,
        "falls back: {rows:?}"
    );
    Ok(())
}
