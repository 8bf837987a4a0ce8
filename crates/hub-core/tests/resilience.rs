//! Routing that keeps working when providers don't: the hub against hub-testkit mocks that inject
//! faults (429 storms with Retry-After, slow first byte, stalls mid-stream, connection refused, 5xx
//! bursts, a credential revoked and restored, a provider down and back). Each test checks what the
//! caller sees, how many upstream attempts the mocks counted, that every call left exactly one
//! usage record (no double charge; `attempts` on it), and that recovery needs no restart.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hub_core::auth::{Principal, Role};
use hub_core::config::{EnvProvider, HubOptions};
use hub_core::health::HealthConfig;
use hub_core::providers::{CredentialSecret, ProviderKind};
use hub_core::store::{CallStatus, UsageRecord};
use hub_core::timeouts::Timeouts;
use hub_core::types::{ChatRequest, Message, Role as MsgRole};
use hub_core::{CallContext, ErrorKind, Hub, HubError, StreamItem};
use hub_testkit::{Flavor, MockConfig, MockServer, Script};

struct Fixture {
    hub: Hub,
    _dir: tempfile::TempDir,
}

fn fast_health() -> HealthConfig {
    HealthConfig {
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(300),
        breaker_max_cooldown: Duration::from_millis(1200),
        auth_recheck_initial: Duration::from_millis(100),
        auth_recheck_max: Duration::from_millis(200),
        rate_limit_cooldown: Duration::from_millis(300),
        ..HealthConfig::default()
    }
}

fn fast_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(500),
        ttfb: Duration::from_millis(400),
        idle: Duration::from_millis(300),
        total: Duration::from_secs(5),
    }
}

fn env(kind: ProviderKind, base_url: String, keys: &[&str]) -> EnvProvider {
    EnvProvider {
        kind,
        base_url: Some(base_url),
        region: None,
        credentials: keys.iter().map(|k| CredentialSecret::api_key(*k)).collect(),
    }
}

async fn open(providers: Vec<EnvProvider>, tune: impl FnOnce(&mut HubOptions)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = HubOptions::new(dir.path());
    opts.env_providers = providers;
    opts.timeouts = fast_timeouts();
    opts.health = fast_health();
    tune(&mut opts);
    let hub = Hub::open(opts).await.unwrap().hub;
    Fixture { hub, _dir: dir }
}

fn ctx() -> CallContext {
    CallContext::new(
        Arc::new(Principal {
            key_id: "key_test".into(),
            user_id: "owner".into(),
            role: Role::Owner,
            team_id: None,
        }),
        "openai",
    )
}

fn req(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.to_string(),
        messages: vec![Message::text(MsgRole::User, "hello")],
        ..ChatRequest::default()
    }
}

async fn chat(hub: &Hub, model: &str) -> (String, Result<String, HubError>) {
    let c = ctx();
    let id = c.request_id.clone();
    let r = hub
        .chat(&c, req(model))
        .await
        .map(|r| r.output.content.unwrap_or_default());
    (id, r)
}

/// Runs a stream to its end: (request id, delivered text, the error item if it ended with one).
async fn stream(hub: &Hub, model: &str) -> (String, Result<(String, Option<HubError>), HubError>) {
    let c = ctx();
    let id = c.request_id.clone();
    let mut r = req(model);
    r.stream = true;
    let s = match hub.chat_stream(&c, r).await {
        Ok(s) => s,
        Err(e) => return (id, Err(e)),
    };
    let items: Vec<StreamItem> = s.collect().await;
    let mut text = String::new();
    let mut err = None;
    for it in items {
        match it {
            StreamItem::Event(hub_core::types::StreamEvent::TextDelta { text: t }) => {
                text.push_str(&t)
            }
            StreamItem::Error(e) => err = Some(e),
            _ => {}
        }
    }
    (id, Ok((text, err)))
}

async fn records(hub: &Hub) -> Vec<UsageRecord> {
    hub.store().list_usage(10_000).await.unwrap()
}

async fn record(hub: &Hub, id: &str) -> UsageRecord {
    let all = records(hub).await;
    let mine: Vec<UsageRecord> = all.into_iter().filter(|r| r.id == id).collect();
    assert_eq!(mine.len(), 1, "exactly one usage record for {id}");
    mine.into_iter().next().unwrap()
}

/// Every call left exactly one record (none twice, none missing).
async fn assert_one_record_each(hub: &Hub, ids: &[String]) {
    let all = records(hub).await;
    assert_eq!(all.len(), ids.len(), "one usage record per call");
    for id in ids {
        assert_eq!(all.iter().filter(|r| &r.id == id).count(), 1, "{id}");
    }
}

fn rate_limited() -> Script {
    Script::error(429).with_header("retry-after-ms", "400")
}

/// Polls `f` until it holds or `within` passes.
async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test]
async fn rate_limit_storm_honours_retry_after_and_recovers() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    let fx = open(
        vec![env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"])],
        |_| {},
    )
    .await;
    openai.push(rate_limited());
    let mut ids = Vec::new();

    // The first call meets the 429: the caller gets it, with the provider's delay.
    let (id, r) = chat(&fx.hub, "openai/gpt-4o-mini").await;
    ids.push(id.clone());
    let e = r.unwrap_err();
    assert_eq!(e.status(), 429);
    assert_eq!(e.retry_after, Some(Duration::from_millis(400)));
    assert_eq!(record(&fx.hub, &id).await.attempts, 1);
    assert_eq!(openai.hits(), 1);

    // A storm during the cool-down: answered at once with 429 + Retry-After; nothing reaches
    // the provider (no retry storm upstream).
    for _ in 0..20 {
        let (id, r) = chat(&fx.hub, "openai/gpt-4o-mini").await;
        ids.push(id.clone());
        let e = r.unwrap_err();
        assert_eq!(e.status(), 429);
        let after = e.retry_after.expect("Retry-After while cooling down");
        assert!(after <= Duration::from_secs(1), "{after:?}");
        assert_eq!(record(&fx.hub, &id).await.attempts, 0);
    }
    assert_eq!(openai.hits(), 1);

    // Providers rate-limit per model: another model on the same key is served meanwhile.
    let (id, r) = chat(&fx.hub, "openai/gpt-4o").await;
    ids.push(id);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(openai.hits(), 2);

    // After the delay the provider is used again without a restart.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (id, r) = chat(&fx.hub, "openai/gpt-4o-mini").await;
    ids.push(id.clone());
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(openai.hits(), 3);
    let rec = record(&fx.hub, &id).await;
    assert_eq!((rec.status, rec.attempts), (CallStatus::Success, 1));
    assert_one_record_each(&fx.hub, &ids).await;
}

#[tokio::test]
async fn rate_limited_provider_falls_back_and_is_skipped_while_cooling() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    let openrouter = MockServer::start(Flavor::OpenRouter).await;
    let fx = open(
        vec![
            env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"]),
            env(
                ProviderKind::OpenRouter,
                openrouter.base_url(),
                &["sk-test"],
            ),
        ],
        |_| {},
    )
    .await;
    openai.push(rate_limited());
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    assert!(r.is_ok(), "{r:?}");
    let rec = record(&fx.hub, &id).await;
    assert_eq!(rec.provider.as_deref(), Some("openrouter"));
    assert_eq!(rec.attempts, 2);
    assert_eq!((openai.hits(), openrouter.hits()), (1, 1));

    // While OpenAI cools down it is not tried at all.
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    assert!(r.is_ok());
    assert_eq!(record(&fx.hub, &id).await.attempts, 1);
    assert_eq!((openai.hits(), openrouter.hits()), (1, 2));

    // Then it is first again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    assert!(r.is_ok());
    assert_eq!(
        record(&fx.hub, &id).await.provider.as_deref(),
        Some("openai")
    );
    assert_eq!((openai.hits(), openrouter.hits()), (2, 2));
}

#[tokio::test]
async fn rate_limited_credential_hands_over_to_the_next_one() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    openai.set_accepted_keys(&["sk-one", "sk-two"]);
    let fx = open(
        vec![env(
            ProviderKind::OpenAi,
            openai.base_url(),
            &["sk-one", "sk-two"],
        )],
        |_| {},
    )
    .await;
    openai.push(rate_limited());
    let (id, r) = chat(&fx.hub, "openai/gpt-4o-mini").await;
    assert!(r.is_ok(), "{r:?}");
    let rec = record(&fx.hub, &id).await;
    assert_eq!(rec.attempts, 2);
    assert_eq!(rec.credential.as_deref(), Some("env:openai:2"));
    // The rate-limited credential rests; the other serves.
    for _ in 0..3 {
        let (id, _) = chat(&fx.hub, "openai/gpt-4o-mini").await;
        let rec = record(&fx.hub, &id).await;
        assert_eq!(
            (rec.credential.as_deref(), rec.attempts),
            (Some("env:openai:2"), 1)
        );
    }
    assert_eq!(openai.hits(), 5);
    let report = fx.hub.health_report();
    let cred = &report.providers[0].credentials[0];
    assert_eq!(cred.state, "cooling_down");
    assert_eq!(cred.effective_weight, 10, "a 429 lowers the weight");
}

#[tokio::test]
async fn slow_first_byte_moves_to_the_next_provider() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    let openrouter = MockServer::start(Flavor::OpenRouter).await;
    let fx = open(
        vec![
            env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"]),
            env(
                ProviderKind::OpenRouter,
                openrouter.base_url(),
                &["sk-test"],
            ),
        ],
        |_| {},
    )
    .await;
    // Streaming: OpenAI sends nothing for 3 s; the TTFB limit is 400 ms.
    openai.push(Script::text("late").with_first_byte_delay_ms(3000));
    let started = Instant::now();
    let (id, r) = stream(&fx.hub, "gpt-4o").await;
    let (text, err) = r.unwrap();
    assert!(err.is_none(), "{err:?}");
    assert!(!text.is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    let rec = record(&fx.hub, &id).await;
    assert_eq!(
        (rec.provider.as_deref(), rec.attempts, rec.status),
        (Some("openrouter"), 2, CallStatus::Success)
    );
    assert_eq!((openai.hits(), openrouter.hits()), (1, 1));

    // Non-streaming too.
    openai.push(Script::text("late").with_first_byte_delay_ms(3000));
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    assert!(r.is_ok());
    assert_eq!(record(&fx.hub, &id).await.attempts, 2);
    assert_eq!((openai.hits(), openrouter.hits()), (2, 2));
}

#[tokio::test]
async fn total_deadline_bounds_all_attempts() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    let openrouter = MockServer::start(Flavor::OpenRouter).await;
    let fx = open(
        vec![
            env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"]),
            env(
                ProviderKind::OpenRouter,
                openrouter.base_url(),
                &["sk-test"],
            ),
        ],
        |o| {
            o.timeouts.ttfb = Duration::from_millis(400);
            o.timeouts.total = Duration::from_millis(600);
        },
    )
    .await;
    openai.push(Script::text("late").with_first_byte_delay_ms(3000));
    openrouter.push(Script::text("late").with_first_byte_delay_ms(3000));
    let started = Instant::now();
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    let took = started.elapsed();
    let e = r.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert_eq!(e.status(), 504);
    assert!(took >= Duration::from_millis(550), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let rec = record(&fx.hub, &id).await;
    assert_eq!((rec.attempts, rec.status), (2, CallStatus::Failed));
    assert_eq!(rec.error_class.as_deref(), Some("timeout"));
}

#[tokio::test]
async fn stall_mid_stream_ends_with_an_error_event_and_is_settled() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    let fx = open(
        vec![env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"])],
        |_| {},
    )
    .await;
    // First chunk at once, then 5 s between chunks; the idle limit is 300 ms.
    openai.push(
        Script::text("one two three four")
            .with_chunks(4)
            .with_chunk_delay_ms(5000),
    );
    let started = Instant::now();
    let (id, r) = stream(&fx.hub, "openai/gpt-4o-mini").await;
    let (_, err) = r.unwrap();
    let took = started.elapsed();
    let e = err.expect("the stream ends with an error item");
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert!(took < Duration::from_millis(2000), "{took:?}");
    let rec = record(&fx.hub, &id).await;
    assert_eq!(rec.status, CallStatus::Failed);
    assert_eq!(rec.error_class.as_deref(), Some("timeout"));
    assert_eq!(rec.attempts, 1);
    assert!(rec.prompt_tokens > 0, "what was delivered is metered");
    assert_eq!(openai.hits(), 1);
    // The upstream connection was closed, not left hanging.
    assert!(
        eventually(Duration::from_secs(2), || openai
            .stats()
            .streams_cancelled_by_client
            == 1)
        .await
    );
    // The next stream works (no restart).
    let (_, r) = stream(&fx.hub, "openai/gpt-4o-mini").await;
    let (text, err) = r.unwrap();
    assert!(err.is_none() && !text.is_empty());
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn connection_refused_falls_over_then_opens_the_circuit_and_recovers() {
    let port = free_port();
    let dead = format!("http://127.0.0.1:{port}/v1");
    let openrouter = MockServer::start(Flavor::OpenRouter).await;
    let fx = open(
        vec![
            env(ProviderKind::OpenAi, dead, &["sk-test"]),
            env(
                ProviderKind::OpenRouter,
                openrouter.base_url(),
                &["sk-test"],
            ),
        ],
        |_| {},
    )
    .await;
    let mut ids = Vec::new();
    // A bare model is served by the next provider.
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    ids.push(id.clone());
    assert!(r.is_ok(), "{r:?}");
    let rec = record(&fx.hub, &id).await;
    assert_eq!(
        (rec.provider.as_deref(), rec.attempts),
        (Some("openrouter"), 2)
    );

    // Pinned to the dead provider: 502 naming it.
    let (id, r) = chat(&fx.hub, "openai/gpt-4o").await;
    ids.push(id);
    let e = r.unwrap_err();
    assert_eq!(e.status(), 502);
    assert_eq!(e.code.as_deref(), Some("upstream_unreachable"));
    assert!(e.message.contains("openai"));

    // Third consecutive failure opens the circuit; afterwards the call fails fast with 503.
    let (id, _) = chat(&fx.hub, "openai/gpt-4o").await;
    ids.push(id);
    let (id, r) = chat(&fx.hub, "openai/gpt-4o").await;
    ids.push(id.clone());
    let e = r.unwrap_err();
    assert_eq!((e.status(), e.code.as_deref()), (503, Some("circuit_open")));
    assert!(e.retry_after.is_some());
    assert_eq!(record(&fx.hub, &id).await.attempts, 0);
    // The bare model skips the open provider: one attempt only.
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    ids.push(id.clone());
    assert!(r.is_ok());
    assert_eq!(record(&fx.hub, &id).await.attempts, 1);
    let report = fx.hub.health_report();
    let p = report
        .providers
        .iter()
        .find(|p| p.provider == "openai")
        .unwrap();
    assert_eq!(p.breaker, "open");
    assert!(
        fx.hub
            .metrics_text()
            .contains("aigne_hub_open_circuits{scope=\"provider\"} 1")
    );

    // The provider comes back on the same address; after the cool-down the half-open trial
    // succeeds and the circuit closes, without a restart.
    let back = MockServer::start_with_config(
        Flavor::OpenAi,
        MockConfig {
            port,
            ..MockConfig::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (id, r) = chat(&fx.hub, "openai/gpt-4o").await;
    ids.push(id.clone());
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(record(&fx.hub, &id).await.attempts, 1);
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    ids.push(id.clone());
    assert!(r.is_ok());
    assert_eq!(
        record(&fx.hub, &id).await.provider.as_deref(),
        Some("openai")
    );
    assert_eq!(back.hits(), 2);
    assert_one_record_each(&fx.hub, &ids).await;
}

#[tokio::test]
async fn server_error_burst_is_absorbed_by_fallback_and_the_circuit() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    let openrouter = MockServer::start(Flavor::OpenRouter).await;
    let fx = open(
        vec![
            env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"]),
            env(
                ProviderKind::OpenRouter,
                openrouter.base_url(),
                &["sk-test"],
            ),
        ],
        |_| {},
    )
    .await;
    for _ in 0..10 {
        openai.push(Script::error(500));
    }
    let mut ids = Vec::new();
    // Every caller gets an answer; OpenAI is tried until its circuit opens (3 failures).
    for _ in 0..6 {
        let (id, r) = chat(&fx.hub, "gpt-4o").await;
        ids.push(id);
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(
        openai.hits(),
        3,
        "open circuit: no more attempts at a failing provider"
    );
    assert_eq!(openrouter.hits(), 6);
    let attempts: Vec<u32> = {
        let all = records(&fx.hub).await;
        ids.iter()
            .map(|id| all.iter().find(|r| &r.id == id).unwrap().attempts)
            .collect()
    };
    assert_eq!(attempts, vec![2, 2, 2, 1, 1, 1]);
    assert_one_record_each(&fx.hub, &ids).await;

    // Half-open trial after the cool-down: still failing -> open again, longer.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, r) = chat(&fx.hub, "gpt-4o").await;
    assert!(r.is_ok());
    assert_eq!(openai.hits(), 4);
    let (_, r) = chat(&fx.hub, "gpt-4o").await;
    assert!(r.is_ok());
    assert_eq!(openai.hits(), 4, "re-opened after the failed trial");

    // The burst ends; the next trial closes the circuit.
    openai.reset();
    tokio::time::sleep(Duration::from_millis(650)).await;
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    assert!(r.is_ok());
    assert_eq!(
        record(&fx.hub, &id).await.provider.as_deref(),
        Some("openai")
    );
    let (id, _) = chat(&fx.hub, "gpt-4o").await;
    assert_eq!(
        record(&fx.hub, &id).await.provider.as_deref(),
        Some("openai")
    );
    assert_eq!(openai.hits(), 2);
}

#[tokio::test]
async fn credential_revoked_then_restored_is_disabled_and_comes_back() {
    let key_a = "sk-aaaaaaaaaaaaaaaaaaaa-first";
    let key_b = "sk-bbbbbbbbbbbbbbbbbbbb-second";
    let openai = MockServer::start(Flavor::OpenAi).await;
    openai.set_accepted_keys(&[key_b]);
    let fx = open(
        vec![env(
            ProviderKind::OpenAi,
            openai.base_url(),
            &[key_a, key_b],
        )],
        |_| {},
    )
    .await;
    // The first call meets the revoked key, and is served by the other one.
    let (id, r) = chat(&fx.hub, "openai/gpt-4o-mini").await;
    assert!(r.is_ok(), "{r:?}");
    let rec = record(&fx.hub, &id).await;
    assert_eq!(
        (rec.credential.as_deref(), rec.attempts),
        (Some("env:openai:2"), 2)
    );
    // While disabled it is never used for traffic.
    for _ in 0..4 {
        let (id, r) = chat(&fx.hub, "openai/gpt-4o-mini").await;
        assert!(r.is_ok());
        let rec = record(&fx.hub, &id).await;
        assert_eq!(
            (rec.credential.as_deref(), rec.attempts),
            (Some("env:openai:2"), 1)
        );
    }
    let report = fx.hub.health_report();
    let a = &report.providers[0].credentials[0];
    assert_eq!((a.id.as_str(), a.state), ("env:openai:1", "disabled"));
    assert_eq!(a.stats.last_error.as_ref().unwrap().class, "upstream_auth");
    let json = serde_json::to_string(&report).unwrap();
    assert!(
        !json.contains("aaaaaaaaaaaa") && !json.contains("bbbbbbbbbbbb"),
        "{json}"
    );

    // The background re-check keeps probing (with backoff) while the key is still revoked.
    let probes_before = openai.hits();
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        openai.hits() > probes_before,
        "re-checks run in the background"
    );
    assert_eq!(
        fx.hub.health_report().providers[0].credentials[0].state,
        "disabled"
    );

    // The key becomes valid again: re-enabled by itself, and used again.
    openai.set_accepted_keys(&[key_a, key_b]);
    assert!(
        eventually(Duration::from_secs(3), || fx.hub.health_report().providers
            [0]
        .credentials[0]
            .state
            == "ok")
        .await
    );
    let mut used_a = 0;
    for _ in 0..4 {
        let (id, r) = chat(&fx.hub, "openai/gpt-4o-mini").await;
        assert!(r.is_ok());
        let rec = record(&fx.hub, &id).await;
        assert_eq!(rec.attempts, 1);
        if rec.credential.as_deref() == Some("env:openai:1") {
            used_a += 1;
        }
    }
    assert_eq!(used_a, 2, "equal weights alternate again");
}

#[tokio::test]
async fn only_credential_revoked_fails_fast_until_it_is_valid_again() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    openai.set_accepted_keys(&["sk-other"]);
    let fx = open(
        vec![env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"])],
        |o| {
            o.health.auth_recheck_initial = Duration::from_millis(150);
            o.health.auth_recheck_max = Duration::from_millis(150);
        },
    )
    .await;
    let (_, r) = chat(&fx.hub, "openai/gpt-4o-mini").await;
    let e = r.unwrap_err();
    assert_eq!(
        (e.status(), e.code.as_deref()),
        (502, Some("upstream_auth_error"))
    );
    let (id, r) = chat(&fx.hub, "openai/gpt-4o-mini").await;
    let e = r.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("credential_disabled"));
    assert_eq!(record(&fx.hub, &id).await.attempts, 0);
    openai.set_accepted_keys(&["sk-test"]);
    let mut ok = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if chat(&fx.hub, "openai/gpt-4o-mini").await.1.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the credential came back by itself");
}

#[tokio::test]
async fn provider_402_and_caller_errors_are_not_retried() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    let openrouter = MockServer::start(Flavor::OpenRouter).await;
    let fx = open(
        vec![
            env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"]),
            env(
                ProviderKind::OpenRouter,
                openrouter.base_url(),
                &["sk-test"],
            ),
        ],
        |_| {},
    )
    .await;
    // The caller's own error (400 from the provider) is the caller's answer.
    openai.push(Script::error(400));
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    assert_eq!(r.unwrap_err().status(), 400);
    assert_eq!(record(&fx.hub, &id).await.attempts, 1);
    assert_eq!((openai.hits(), openrouter.hits()), (1, 0));

    // A provider 402 is never retried elsewhere (as the original).
    openai.push(Script::error(402));
    let (id, r) = chat(&fx.hub, "gpt-4o").await;
    assert!(r.is_err());
    assert_eq!(record(&fx.hub, &id).await.attempts, 1);
    assert_eq!((openai.hits(), openrouter.hits()), (2, 0));
}

#[tokio::test]
async fn stream_failing_before_the_first_event_is_retried_elsewhere() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    let openrouter = MockServer::start(Flavor::OpenRouter).await;
    let fx = open(
        vec![
            env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"]),
            env(
                ProviderKind::OpenRouter,
                openrouter.base_url(),
                &["sk-test"],
            ),
        ],
        |_| {},
    )
    .await;
    openai.push(Script::error(503));
    let (id, r) = stream(&fx.hub, "gpt-4o").await;
    let (text, err) = r.unwrap();
    assert!(err.is_none() && !text.is_empty());
    let rec = record(&fx.hub, &id).await;
    assert_eq!(
        (rec.provider.as_deref(), rec.attempts),
        (Some("openrouter"), 2)
    );
    let m = fx.hub.metrics_text();
    assert!(
        m.contains("aigne_hub_retries_total{provider=\"openrouter\"} 1"),
        "{m}"
    );
    assert!(m.contains("aigne_hub_streams_in_flight 0"), "{m}");
    assert!(m.contains("aigne_hub_calls_in_flight 0"), "{m}");
    assert!(
        m.contains("aigne_hub_upstream_attempts_total{provider=\"openai\",result=\"failed\"} 1"),
        "{m}"
    );
}

/// `/metrics` counts a call in flight from its start until it settles: a stream until it is
/// dropped, a plain call while it waits for its upstream.
#[tokio::test]
async fn calls_in_flight_are_counted_until_they_settle() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    // The fixture's time limits, with room for a stream held between chunks.
    let fx = open(
        vec![env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"])],
        |o| {
            o.timeouts.idle = Duration::from_secs(10);
            o.timeouts.total = Duration::from_secs(20);
        },
    )
    .await;
    let gauge = |hub: &Hub| {
        let m = hub.metrics_text();
        let line = m
            .lines()
            .find(|l| l.starts_with("aigne_hub_calls_in_flight "))
            .map(str::to_string);
        (hub.calls_in_flight(), line)
    };
    assert_eq!(
        gauge(&fx.hub),
        (0, Some("aigne_hub_calls_in_flight 0".into()))
    );
    // A stream whose next chunk is 5 s away stays in flight while it is held.
    openai.push(
        Script::text("one two three")
            .with_chunks(3)
            .with_chunk_delay_ms(5000),
    );
    let mut r = req("openai/gpt-4o-mini");
    r.stream = true;
    let mut s = fx.hub.chat_stream(&ctx(), r).await.unwrap();
    assert!(s.next().await.is_some(), "the first chunk");
    assert_eq!(
        gauge(&fx.hub),
        (1, Some("aigne_hub_calls_in_flight 1".into()))
    );
    // A plain call whose upstream answers in 200 ms (the first-byte limit is 400), beside it.
    openai.push(Script::text("late").with_first_byte_delay_ms(200));
    let hub = fx.hub.clone();
    let plain = tokio::spawn(async move { chat(&hub, "openai/gpt-4o-mini").await });
    assert!(
        eventually(Duration::from_secs(2), || fx.hub.calls_in_flight() == 2).await,
        "the plain call is counted while it waits"
    );
    let (_, answer) = plain.await.unwrap();
    assert_eq!(answer.unwrap(), "late");
    assert_eq!(fx.hub.calls_in_flight(), 1, "the plain call settled");
    // A dropped stream settles what was delivered; its call ends with its settlement.
    drop(s);
    assert!(
        eventually(Duration::from_secs(2), || fx.hub.calls_in_flight() == 0).await,
        "the dropped stream settled"
    );
    assert_eq!(
        gauge(&fx.hub),
        (0, Some("aigne_hub_calls_in_flight 0".into()))
    );
}

/// The heartbeat persists every open stream's progress, more streams than one of its
/// transactions takes (256): each open reservation has its stream's record of what it delivered.
#[tokio::test]
async fn the_heartbeat_persists_the_progress_of_every_open_stream_in_batches() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    let fx = open(
        vec![env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"])],
        |o| {
            o.timeouts.connect = Duration::from_secs(10);
            o.timeouts.ttfb = Duration::from_secs(30);
            o.timeouts.idle = Duration::from_secs(30);
            o.timeouts.total = Duration::from_secs(60);
            o.billing.mode = hub_core::pricing::BillingMode::Credits;
            o.billing.starter_credits = "1000".parse().unwrap();
            o.billing.heartbeat = Duration::from_millis(50);
        },
    )
    .await;
    const STREAMS: usize = 300;
    // Each stream's first text comes 1.5 s after its start, the next 1.5 s later: all are
    // open, each with something delivered, for a while.
    for _ in 0..STREAMS {
        openai.push(
            Script::text("one two three")
                .with_chunks(3)
                .with_chunk_delay_ms(1_500),
        );
    }
    let open_one = |hub: Hub| async move {
        let mut r = req("openai/gpt-4o-mini");
        r.stream = true;
        let mut s = hub.chat_stream(&ctx(), r).await.unwrap();
        // Up to the first text: delivered, which is what a heartbeat persists.
        loop {
            match s.next().await {
                Some(StreamItem::Event(hub_core::types::StreamEvent::TextDelta { .. })) => {
                    return s;
                }
                Some(StreamItem::Event(_)) => {}
                other => unreachable!("the stream ended before its first text: {other:?}"),
            }
        }
    };
    let open_streams =
        futures::future::join_all((0..STREAMS).map(|_| open_one(fx.hub.clone()))).await;
    let db = rusqlite::Connection::open(fx._dir.path().join("hub.db")).unwrap();
    let counts = |db: &rusqlite::Connection| -> (i64, i64) {
        db.query_row(
            "SELECT (SELECT COUNT(*) FROM reservations), (SELECT COUNT(*) FROM hold_records)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    while counts(&db).1 < STREAMS as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        counts(&db),
        (STREAMS as i64, STREAMS as i64),
        "every open hold carries its stream's progress"
    );
    drop(open_streams);
    assert!(
        eventually(Duration::from_secs(5), || fx.hub.calls_in_flight() == 0).await,
        "the dropped streams settled"
    );
}

/// A stream whose provider reports no usage is charged its output's o200k count. With credit
/// held, the heartbeats count its output as it comes (up to a cut, `tokenize::cut`) and keep
/// only the rest; the record at its end has the count of the whole text all the same, and the
/// beats had stored the stream's record and then its progress.
#[tokio::test]
async fn a_stream_counted_by_its_heartbeats_is_charged_the_count_of_its_whole_text() {
    let openai = MockServer::start(Flavor::OpenAi).await;
    let fx = open(
        vec![env(ProviderKind::OpenAi, openai.base_url(), &["sk-test"])],
        |o| {
            o.billing.mode = hub_core::pricing::BillingMode::Credits;
            o.billing.starter_credits = "1000".parse().unwrap();
            o.billing.heartbeat = Duration::from_millis(50);
        },
    )
    .await;
    let text = "Streaming answers don't stop: 12345 items, 3.14 pies!\n\nΕλληνικά, \
                русский, 中文 text and emoji 🎉  with  double  spaces, code `let x = 42;`\n\
                and a last line";
    openai.push(
        Script::text(text)
            .with_chunks(12)
            .with_chunk_delay_ms(60)
            .without_usage(),
    );
    let db = rusqlite::Connection::open(fx._dir.path().join("hub.db")).unwrap();
    let run = tokio::spawn({
        let hub = fx.hub.clone();
        async move { stream(&hub, "openai/gpt-4o-mini").await }
    });
    // Mid-stream: the record stored once, then a later beat's progress beside it.
    let mut seen_progress = false;
    while !run.is_finished() {
        let progress: Option<String> = db
            .query_row(
                "SELECT r.progress FROM reservations r JOIN hold_records h USING (request_id)",
                [],
                |r| r.get(0),
            )
            .ok()
            .flatten();
        seen_progress |= progress.is_some();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (id, out) = run.await.unwrap();
    let (delivered, err) = out.unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_eq!(delivered, text);
    assert!(
        seen_progress,
        "a beat after the first wrote the stream's progress"
    );
    let rec = record(&fx.hub, &id).await;
    assert!(rec.estimated);
    assert_eq!(rec.completion_tokens, hub_core::tokenize::count(text));
    let left: i64 = db
        .query_row("SELECT COUNT(*) FROM hold_records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "settling the stream deleted its record");
}
