//! `GET /api/admin/health` and `GET /metrics` over real sockets (admin only, no secrets), an idle
//! stream ended with an OpenAI error event, and outbound calls through `HTTPS_PROXY` (the real
//! binary, a tiny local CONNECT proxy; no real provider is contacted).

#![expect(clippy::unwrap_used, reason = "tests")]

use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_core::Hub;
use hub_core::auth::{self, Role};
use hub_core::config::{EnvProvider, HubOptions};
use hub_core::providers::{CredentialSecret, ProviderKind, Secret};
use hub_core::store::{ApiKeyRow, UserRow};
use hub_testkit::{Flavor, MockServer, Script};
use serde_json::{Value, json};

mod common;

const ADMIN: &str = "ahk_test_admin_key_0123456789abcdef";
const PROVIDER_KEY: &str = "sk-provider-secret-value-42";

struct Server {
    base: String,
    hub: Hub,
    _served: common::Served,
    _dir: tempfile::TempDir,
}

async fn start(mock: &MockServer, tune: impl FnOnce(&mut HubOptions)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = HubOptions::new(dir.path());
    opts.admin_key = Some(Secret::new(ADMIN));
    opts.env_providers = vec![EnvProvider {
        kind: ProviderKind::OpenAi,
        base_url: Some(mock.base_url()),
        region: None,
        credentials: vec![CredentialSecret::api_key(PROVIDER_KEY)],
    }];
    tune(&mut opts);
    let hub = Hub::open(opts).await.unwrap().hub;
    let served = common::Served::start(hub.clone()).await;
    Server {
        base: served.base(),
        hub,
        _served: served,
        _dir: dir,
    }
}

async fn member_key(hub: &Hub) -> String {
    let store = hub.store();
    store
        .insert_user(&UserRow {
            id: "member".into(),
            name: "member".into(),
            role: Role::Member,
            team_id: None,
            created_at_ms: 0,
        })
        .await
        .unwrap();
    let key = auth::generate_key();
    store
        .insert_api_key(&ApiKeyRow {
            id: "key_member".into(),
            user_id: "member".into(),
            digest_hex: hex_digest(&key),
            prefix: auth::key_prefix(&key),
            name: "member".into(),
            team_id: None,
            created_at_ms: 0,
            expires_at_ms: None,
            revoked_at_ms: None,
        })
        .await
        .unwrap();
    // The hub's own reloader (every 500 ms) may have loaded the key first; either way it is loaded.
    hub.reload_if_changed().await.unwrap();
    key
}

fn hex_digest(key: &str) -> String {
    auth::digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn health_and_metrics_are_admin_only_and_hold_no_secrets() {
    let mock = MockServer::start_with_key(Flavor::OpenAi, PROVIDER_KEY).await;
    let srv = start(&mock, |_| {}).await;
    let http = client();
    // One successful and one rate-limited call, so there is something to report.
    mock.push(Script::text("hello there"));
    mock.push(Script::error(429).with_header("retry-after-ms", "5000"));
    for _ in 0..2 {
        let _ = http
            .post(format!("{}/v1/chat/completions", srv.base))
            .bearer_auth(ADMIN)
            .json(&json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
    }

    let member = member_key(&srv.hub).await;
    let mut bodies = Vec::new();
    for path in ["/api/admin/health", "/metrics"] {
        let url = format!("{}{path}", srv.base);
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a key");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
        let r = http.get(&url).bearer_auth(&member).send().await.unwrap();
        assert_eq!(r.status(), 403, "{path} with a member key");
        let r = http.get(&url).bearer_auth(ADMIN).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} with an admin key");
        let text = r.text().await.unwrap();
        assert!(!text.contains("provider-secret-value"), "{path}: {text}");
        bodies.push(text);
    }
    let health: Value = serde_json::from_str(&bodies[0]).unwrap();
    let p = &health["providers"][0];
    assert_eq!(p["provider"], "openai");
    let c = &p["credentials"][0];
    assert_eq!(c["id"], "env:openai:1");
    assert_eq!(c["state"], "cooling_down");
    assert_eq!(c["stats"]["requests"], 2);
    assert_eq!(c["stats"]["success_rate"], 0.5);
    assert_eq!(c["stats"]["last_error"]["status"], 429);
    assert!(c["stats"]["avg_latency_ms"].is_u64());
    assert_eq!(p["models"][0]["model"], "gpt-4o-mini");
    assert_eq!(p["models"][0]["state"], "failing");

    let m = &bodies[1];
    assert!(
        m.contains("aigne_hub_requests_total{provider=\"openai\",status=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("aigne_hub_requests_total{provider=\"openai\",status=\"failed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("aigne_hub_errors_total{class=\"rate_limited\"} 1"),
        "{m}"
    );
    assert!(m.contains("# TYPE aigne_hub_request_duration_seconds histogram"));
    assert!(
        m.contains("aigne_hub_request_duration_seconds_count{provider=\"openai\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("aigne_hub_tokens_total{provider=\"openai\",kind=\"completion\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn an_idle_stream_ends_with_an_openai_error_event() {
    let mock = MockServer::start_with_key(Flavor::OpenAi, PROVIDER_KEY).await;
    let srv = start(&mock, |o| o.timeouts.idle = Duration::from_millis(300)).await;
    mock.push(
        Script::text("one two three")
            .with_chunks(3)
            .with_chunk_delay_ms(5000),
    );
    let started = std::time::Instant::now();
    let r = client()
        .post(format!("{}/v1/chat/completions", srv.base))
        .bearer_auth(ADMIN)
        .json(&json!({"model": "openai/gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let last = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .next_back()
        .unwrap();
    let ev: Value = serde_json::from_str(last).unwrap();
    assert!(
        ev["error"]["message"].as_str().unwrap().contains("openai"),
        "{body}"
    );
    assert!(!body.contains("[DONE]"), "{body}");
    let usage = srv.hub.store().list_usage(10).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].error_class.as_deref(), Some("timeout"));
}

/// A minimal forward proxy: records the first request line of each connection and answers 502.
fn spawn_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            if reader.read_line(&mut line).is_ok() {
                s.lock().unwrap().push(line.trim().to_string());
            }
            let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (port, seen)
}

#[tokio::test]
async fn outbound_calls_go_through_https_proxy() {
    let (proxy_port, seen) = spawn_proxy();
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_aigne-hub"))
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HUB_ADMIN_KEY", ADMIN)
        .env("OPENAI_API_KEY", PROVIDER_KEY)
        // A name that never resolves: only the proxy can make the connection.
        .env("OPENAI_BASE_URL", "https://api.openai.invalid/v1")
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{proxy_port}"))
        .env("HUB_TIMEOUT_CONNECT_MS", "2000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = common::listening_address(&mut child).await;
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(ADMIN)
        .json(&json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "the tunnel was refused, so the upstream is unreachable"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec!["CONNECT api.openai.invalid:443 HTTP/1.1".to_string()]
    );
    let _ = child.kill().await;
}

/// `aigne_hub_cost_total` / `aigne_hub_provider_cost_usd_total` samples of a `/metrics` text, by
/// (metric, mode or "", provider, model), exact decimals.
fn cost_samples(
    text: &str,
) -> std::collections::BTreeMap<(String, String, String, String), rust_decimal::Decimal> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        if name != "aigne_hub_cost_total" && name != "aigne_hub_provider_cost_usd_total" {
            continue;
        }
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('}').trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        out.insert(
            (
                name.to_string(),
                label("mode"),
                label("provider"),
                label("model"),
            ),
            value.parse().unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn cost_counters_equal_the_sum_of_the_usage_records() {
    use hub_core::hub::billing_keys;
    use hub_core::pricing::{BillingMode, from_units};
    use hub_testkit::Usage;

    let mock = MockServer::start_with_key(Flavor::OpenAi, PROVIDER_KEY).await;
    let srv = start(&mock, |o| {
        o.billing.mode = BillingMode::Credits;
        o.billing.starter_credits = "1000".parse().unwrap();
        o.billing.max_output_tokens = 100;
    })
    .await;
    let http = client();
    let call = |model: &'static str, stream: bool| {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", srv.base);
        async move {
            let r = http
                .post(url)
                .bearer_auth(ADMIN)
                .json(&json!({"model": model, "stream": stream,
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let _ = r.text().await.unwrap();
            status
        }
    };
    // Credits mode: two models at list price (built-in price book), stream and not, one failure.
    mock.push(Script::text("one").with_usage(Usage::new(1234, 56)));
    assert_eq!(call("openai/gpt-4o-mini", false).await, 200);
    mock.push(Script::text("two three").with_usage(Usage::new(777, 9)));
    assert_eq!(call("openai/gpt-4o-mini", true).await, 200);
    mock.push(Script::text("four").with_usage(Usage::new(100_003, 17)));
    assert_eq!(call("openai/gpt-4o", false).await, 200);
    mock.push(Script::error(400));
    assert_eq!(call("openai/gpt-4o", false).await, 400);
    // Internal mode (switched live): the provider's list cost.
    srv.hub
        .store()
        .set_setting(billing_keys::MODE, "internal")
        .await
        .unwrap();
    srv.hub.reload_if_changed().await.unwrap();
    mock.push(Script::text("five").with_usage(Usage::new(31, 7)));
    assert_eq!(call("openai/gpt-4o-mini", false).await, 200);

    let text = http
        .get(format!("{}/metrics", srv.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("# TYPE aigne_hub_cost_total counter"),
        "{text}"
    );
    let got = cost_samples(&text);

    let mut want = std::collections::BTreeMap::new();
    for r in srv.hub.store().list_usage(100).await.unwrap() {
        let model = r.upstream_model.clone().unwrap_or_default();
        let provider = r.provider.clone().unwrap_or_default();
        let b = &r.billing;
        if b.cost_units != 0 {
            *want
                .entry((
                    "aigne_hub_cost_total".to_string(),
                    b.mode.clone().unwrap(),
                    provider.clone(),
                    model.clone(),
                ))
                .or_insert(rust_decimal::Decimal::ZERO) += from_units(b.cost_units);
        }
        if b.provider_cost_units != 0 {
            *want
                .entry((
                    "aigne_hub_provider_cost_usd_total".to_string(),
                    String::new(),
                    provider,
                    model,
                ))
                .or_insert(rust_decimal::Decimal::ZERO) += from_units(b.provider_cost_units);
        }
    }
    let modes: std::collections::BTreeSet<&str> = want.keys().map(|k| k.1.as_str()).collect();
    assert!(
        modes.contains("credits") && modes.contains("internal"),
        "{want:?}"
    );
    assert_eq!(want.len(), 5, "{want:?}");
    assert_eq!(got, want, "{text}");

    // The store's group commits: every record the calls wrote went through one, and each credit
    // call's reservation too (four calls in credits mode; the internal-mode one holds nothing).
    let records = srv.hub.store().list_usage(100).await.unwrap().len() as u64;
    assert_eq!(records, 5);
    let sample = |line: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(
        sample("aigne_hub_store_committed_total{kind=\"usage_record\"} "),
        Some(records),
        "{text}"
    );
    assert_eq!(
        sample("aigne_hub_store_committed_total{kind=\"reservation\"} "),
        Some(4),
        "{text}"
    );
    let commits = sample("aigne_hub_store_commits_total ").unwrap_or(0);
    assert!((1..=9).contains(&commits), "{text}");
    assert_eq!(sample("aigne_hub_store_commit_calls_count "), Some(commits));
    assert_eq!(
        sample("aigne_hub_store_commit_calls_sum "),
        Some(records + 4)
    );
    assert_eq!(
        sample("aigne_hub_store_commit_seconds_count "),
        Some(commits)
    );
    assert_eq!(sample("aigne_hub_store_failed_batches_total "), Some(0));
    // The calls came one after another, so the store was idle at each write and each call was
    // the only one in flight: their reservations and records committed on the callers'
    // threads (all nine, or a few fewer where the heartbeat held the writer connection).
    let inline = sample("aigne_hub_store_inline_commits_total ").unwrap_or(0);
    assert!((5..=9).contains(&inline) && inline <= commits, "{text}");
}

async fn put_timeouts(srv: &Server, key: &str, provider: &str, body: Value) -> (u16, Value) {
    let r = client()
        .put(format!(
            "{}/api/admin/providers/{provider}/timeouts",
            srv.base
        ))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// One non-streaming call; (status, how long it took).
async fn timed_call(srv: &Server) -> (u16, Duration) {
    let started = std::time::Instant::now();
    let r = client()
        .post(format!("{}/v1/chat/completions", srv.base))
        .bearer_auth(ADMIN)
        .json(&json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let _ = r.text().await;
    (status, started.elapsed())
}

#[tokio::test]
async fn provider_timeouts_changed_through_the_api_and_cli_apply_to_a_running_server() {
    let mock = MockServer::start_with_key(Flavor::OpenAi, PROVIDER_KEY).await;
    // The provider's env says 20 s to the first byte; every answer here takes 3 s.
    let srv = start(&mock, |o| {
        o.provider_timeouts.insert(
            ProviderKind::OpenAi,
            hub_core::timeouts::TimeoutOverrides {
                ttfb: Some(Duration::from_secs(20)),
                ..Default::default()
            },
        );
    })
    .await;
    mock.register_scenario(
        "gpt-4o-mini",
        Script::text("late").with_first_byte_delay_ms(3000),
    );

    // Nonsense is refused with the field named; nothing is stored.
    for (body, param) in [
        (json!({"ttfb_ms": 0}), Some("ttfb_ms")),
        (json!({"idle_ms": 86_400_001u64}), Some("idle_ms")),
        (json!({"ttfb_ms": 5000, "total_ms": 1000}), Some("ttfb_ms")),
        (json!({"ttfb_ms": "soon"}), None),
        (json!({"ttfb_ms": -5}), None),
        (json!({"first_byte": 5}), None),
    ] {
        let (status, err) = put_timeouts(&srv, ADMIN, "openai", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {err}");
        assert!(err["error"]["message"].is_string(), "{err}");
        if let Some(p) = param {
            assert!(
                err["error"]["message"].as_str().unwrap().contains(p),
                "{err}"
            );
        }
    }
    assert_eq!(put_timeouts(&srv, ADMIN, "nosuch", json!({})).await.0, 404);
    let member = member_key(&srv.hub).await;
    assert_eq!(
        put_timeouts(&srv, &member, "openai", json!({"ttfb_ms": 1}))
            .await
            .0,
        403
    );

    // Through the API: stored beats the env, and the stalled mock now times out at 400 ms.
    let (status, view) = put_timeouts(&srv, ADMIN, "openai", json!({"ttfb_ms": 400})).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["stored"], json!({"ttfb_ms": 400}));
    assert_eq!(view["effective"]["ttfb_ms"], 400);
    assert_eq!(view["effective"]["connect_ms"], 10_000);
    let (status, took) = timed_call(&srv).await;
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    let health: Value = client()
        .get(format!("{}/api/admin/health", srv.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["providers"][0]["timeouts"]["ttfb_ms"], 400,
        "{health}"
    );

    // Through the CLI, a separate process writing to the data dir: noticed within a second.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aigne-hub"))
        .args([
            "admin",
            "provider",
            "timeouts",
            "--name",
            "openai",
            "--ttfb-ms",
            "1200",
        ])
        .env("HUB_DATA_DIR", srv._dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"ttfb_ms": 1200}));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, took) = timed_call(&srv).await;
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(1150) && took < Duration::from_millis(2800),
        "{took:?}"
    );

    // Cleared: the env's 20 s applies again and the slow answer gets through.
    let (status, view) = put_timeouts(&srv, ADMIN, "openai", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(view["effective"]["ttfb_ms"], 20_000);
    let (status, took) = timed_call(&srv).await;
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(2900), "{took:?}");

    let audit: Vec<String> = srv
        .hub
        .store()
        .list_audit(&hub_core::store::iam::AuditQuery {
            limit: 10,
            action: Some("provider.timeouts".into()),
            ..hub_core::store::iam::AuditQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.actor_user_id)
        .collect();
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert!(audit.contains(&"cli".to_string()), "{audit:?}");
}
