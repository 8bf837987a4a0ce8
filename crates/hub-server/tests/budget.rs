//! Per-key spend budgets end to end: the real router and hub (temp data dir) on port 0, fed by a
//! hub-testkit OpenAI mock whose usage makes each call cost exactly its worst case, so the
//! boundary is exact. Keys are made through the admin API and the CLI as an operator would.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hub_core::Hub;
use hub_core::budget::{Budget, BudgetPeriod, period_at};
use hub_core::config::{EnvProvider, HubOptions};
use hub_core::pricing::{BillingMode, Price, Rates, to_units};
use hub_core::providers::{CredentialSecret, ProviderKind, Secret};
use hub_core::types::ModelType;
use hub_testkit::{Flavor, MockServer, Script, Usage};
use rust_decimal::Decimal;
use serde_json::{Value, json};

mod common;

const OWNER: &str = "sk-budget-owner-key-0123456789";
const MODEL: &str = "budget-model";
const MAX_TOKENS: u64 = 10;

type R = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_default()
}

struct Server {
    hub: Hub,
    url: String,
    http: reqwest::Client,
    served: common::Served,
}

impl Server {
    /// Opens a hub on `dir` (internal or credits mode) serving `mock` as OpenAI, with the test
    /// model priced at 1e-6 per input and 2e-6 per output token (provider cost and credits).
    async fn start(dir: &Path, mock: &MockServer, mode: BillingMode) -> Server {
        let mut opts = HubOptions::new(dir);
        opts.admin_key = Some(Secret::new(OWNER));
        opts.env_providers = vec![EnvProvider {
            kind: ProviderKind::OpenAi,
            base_url: Some(mock.base_url()),
            region: None,
            credentials: vec![CredentialSecret::api_key("sk-test")],
        }];
        opts.billing.mode = mode;
        opts.billing.starter_credits = dec("1000");
        opts.reload_interval = Duration::from_millis(100);
        let hub = match Hub::open(opts).await {
            Ok(o) => o.hub,
            Err(e) => unreachable!("open: {e}"),
        };
        let rates = Rates {
            input: dec("0.000001"),
            output: dec("0.000002"),
            ..Rates::default()
        };
        let price = Price {
            version: 0,
            provider: ProviderKind::OpenAi,
            model: MODEL.into(),
            model_type: ModelType::Chat,
            unit: Some(rates.clone()),
            margin_pct: None,
            rates,
            source: "admin".into(),
            created_at_ms: 1,
            disabled: false,
        };
        let priced = hub
            .store()
            .list_prices(false)
            .await
            .map(|ps| ps.iter().any(|p| p.model == MODEL))
            .unwrap_or(false);
        if !priced && let Err(e) = hub.store().insert_prices(&[price]).await {
            unreachable!("price: {e}");
        }
        if let Err(e) = hub.reload_if_changed().await {
            unreachable!("reload: {e}");
        }
        let served = common::Served::start(hub.clone()).await;
        Server {
            hub,
            url: served.base(),
            http: reqwest::Client::new(),
            served,
        }
    }

    /// Stops serving and closes the hub (usage flushed), as a shutdown does.
    async fn stop(mut self) {
        self.served.stop();
        let _ = (&mut self.served.task).await;
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Option<String>, Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, retry, v))
    }

    async fn post(
        &self,
        path: &str,
        key: &str,
        body: &Value,
    ) -> Result<(u16, Option<String>, Value), reqwest::Error> {
        self.send(reqwest::Method::POST, path, key, Some(body))
            .await
    }

    /// A member and a key for them with `policy`: (key id, key).
    async fn member_key(
        &self,
        policy: Value,
    ) -> Result<(String, String), Box<dyn std::error::Error + Send + Sync>> {
        let (s, _, u) = self
            .post(
                "/api/admin/users",
                OWNER,
                &json!({"name": "spender", "role": "member"}),
            )
            .await?;
        assert_eq!(s, 201, "{u}");
        let (s, _, k) = self
            .post(
                "/api/admin/keys",
                OWNER,
                &json!({"user_id": u["id"], "policy": policy}),
            )
            .await?;
        assert_eq!(s, 201, "{k}");
        let id = k["id"].as_str().unwrap_or_default().to_string();
        let key = k["key"].as_str().unwrap_or_default().to_string();
        Ok((id, key))
    }
}

/// The chat body every test sends, and its worst case: the prompt upper bound at the input rate
/// plus `max_tokens` at the output rate. The mock reports exactly that usage, so each call costs
/// exactly its worst case.
fn chat_body() -> Value {
    json!({
        "model": format!("openai/{MODEL}"),
        "messages": [{"role": "user", "content": "spend a little"}],
        "max_tokens": MAX_TOKENS,
    })
}

fn worst_case() -> Result<(u64, Decimal), Box<dyn std::error::Error + Send + Sync>> {
    let req = hub_server::openai::codec::parse_chat(&serde_json::to_vec(&chat_body())?)?;
    let ub = hub_core::tokenize::prompt_upper_bound(&req);
    let w = Decimal::from(ub) * dec("0.000001") + Decimal::from(MAX_TOKENS) * dec("0.000002");
    Ok((ub, w))
}

fn exact_usage(mock: &MockServer, ub: u64, delay_ms: u64) {
    mock.register_scenario(
        MODEL,
        Script::text("spent")
            .with_usage(Usage::new(ub, MAX_TOKENS))
            .with_first_byte_delay_ms(delay_ms),
    );
}

fn budget_json(amount: Decimal, period: &str, tz: &str) -> Value {
    json!({"budget": {"amount": amount.normalize().to_string(), "period": period, "time_zone": tz}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_k_worst_cases_serves_k_calls_and_refuses_the_next_before_upstream() -> R {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir()?;
    let s = Server::start(dir.path(), &mock, BillingMode::Internal).await;
    let (ub, worst) = worst_case()?;
    exact_usage(&mock, ub, 0);
    let k = 3;
    let (key_id, key) = s
        .member_key(budget_json(worst * Decimal::from(k), "month", "UTC"))
        .await?;
    for i in 0..k {
        let (st, _, v) = s.post("/v1/chat/completions", &key, &chat_body()).await?;
        assert_eq!(st, 200, "call {i}: {v}");
    }
    let (st, retry, v) = s.post("/v1/chat/completions", &key, &chat_body()).await?;
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert_eq!(v["error"]["code"], "budget_exceeded");
    // Retry-After: seconds until the first of next month, UTC.
    let b = Budget {
        amount: Decimal::ONE,
        period: BudgetPeriod::Month,
        time_zone: "UTC".into(),
    };
    let now = hub_core::hub::now_ms();
    let end = period_at(b.period, &b.zone()?, now)
        .map(|p| p.end_ms)
        .unwrap_or(0);
    let retry: i64 = retry.as_deref().unwrap_or("").parse()?;
    assert!((retry - (end - now) / 1000).abs() <= 2, "{retry} vs {end}");
    // The refused call never reached the provider.
    assert_eq!(mock.hits(), k);
    assert_eq!(
        s.hub.budget_usage(&key_id),
        Some((to_units(worst * Decimal::from(k)).unwrap_or(-1), 0))
    );
    // The key shows it, to its owner and to an admin.
    let (st, _, mine) = s
        .send(reqwest::Method::GET, "/api/me/keys", &key, None)
        .await?;
    assert_eq!(st, 200, "{mine}");
    let status = &mine[0]["budget_status"];
    assert_eq!(
        dec(status["spent"].as_str().unwrap_or("")),
        worst * Decimal::from(k)
    );
    assert_eq!(status["remaining"], "0");
    assert_eq!(status["resets_at_ms"], json!(end));
    assert!(
        status["resets_at"]
            .as_str()
            .is_some_and(|r| r.ends_with("T00:00:00+00:00"))
    );
    let (_, _, all) = s
        .send(reqwest::Method::GET, "/api/admin/keys", OWNER, None)
        .await?;
    let listed = all
        .as_array()
        .and_then(|a| a.iter().find(|x| x["id"] == json!(key_id)).cloned())
        .unwrap_or_default();
    assert_eq!(listed["budget_status"], *status);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_parallel_calls_never_overshoot_the_budget() -> R {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir()?;
    // Credits mode: the budget is in credits, checked before the credit reservation.
    let s = Arc::new(Server::start(dir.path(), &mock, BillingMode::Credits).await);
    let (ub, worst) = worst_case()?;
    // Every call is in flight at once (the mock waits before its first byte).
    exact_usage(&mock, ub, 400);
    let k = 5;
    let budget = worst * Decimal::from(k);
    let (key_id, key) = s
        .member_key(budget_json(budget, "day", "Europe/Berlin"))
        .await?;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (s, key) = (s.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            s.post("/v1/chat/completions", &key, &chat_body())
                .await
                .map(|(st, _, _)| st)
                .unwrap_or(0)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await? {
            200 => ok += 1,
            429 => refused += 1,
            other => unreachable!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, refused), (k, 20 - k));
    assert_eq!(mock.hits(), k);
    let spent: i64 = s
        .hub
        .store()
        .list_usage(100)
        .await?
        .iter()
        .filter(|r| r.principal == key_id)
        .map(|r| r.billing.cost_units)
        .sum();
    assert_eq!(spent, to_units(budget).unwrap_or(-1));
    assert_eq!(s.hub.budget_usage(&key_id), Some((spent, 0)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spend_survives_a_restart() -> R {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir()?;
    let (ub, worst) = worst_case()?;
    exact_usage(&mock, ub, 0);
    let s = Server::start(dir.path(), &mock, BillingMode::Internal).await;
    let (key_id, key) = s
        .member_key(budget_json(
            worst * Decimal::from(2),
            "month",
            "America/New_York",
        ))
        .await?;
    for _ in 0..2 {
        assert_eq!(
            s.post("/v1/chat/completions", &key, &chat_body()).await?.0,
            200
        );
    }
    s.stop().await;
    // A new process on the same data dir: the period's spend is read back from the records.
    let s = Server::start(dir.path(), &mock, BillingMode::Internal).await;
    assert_eq!(
        s.hub.budget_usage(&key_id),
        Some((to_units(worst * Decimal::from(2)).unwrap_or(-1), 0))
    );
    let (st, _, v) = s.post("/v1/chat/completions", &key, &chat_body()).await?;
    assert_eq!(st, 429, "{v}");
    assert_eq!(mock.hits(), 2);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_budget_rolls_over_at_midnight_in_its_own_zone() -> R {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir()?;
    let (ub, worst) = worst_case()?;
    exact_usage(&mock, ub, 0);
    let s = Server::start(dir.path(), &mock, BillingMode::Internal).await;
    // One call a day, in Tokyo and in UTC.
    let (_, tokyo_key) = s
        .member_key(budget_json(worst, "day", "Asia/Tokyo"))
        .await?;
    let (_, utc_key) = s.member_key(budget_json(worst, "day", "UTC")).await?;
    // The clock is the call's start time: Tokyo's midnight two days from now (15:00 UTC).
    let tokyo = Budget {
        amount: Decimal::ONE,
        period: BudgetPeriod::Day,
        time_zone: "Asia/Tokyo".into(),
    }
    .zone()?;
    let midnight = period_at(
        BudgetPeriod::Day,
        &tokyo,
        hub_core::hub::now_ms() + 2 * 86_400_000,
    )
    .map(|p| p.start_ms)
    .ok_or("period")?;
    let call = |key: &str, at_ms: i64| {
        let principal = s.hub.authenticate(key);
        let hub = s.hub.clone();
        async move {
            let mut ctx = hub_core::CallContext::new(principal?, "openai");
            ctx.started_ms = at_ms;
            let req = hub_server::openai::codec::parse_chat(&serde_json::to_vec(&chat_body())?)?;
            hub.chat(&ctx, req)
                .await
                .map(|_| 200)
                .or_else(|e| Ok::<u16, Box<dyn std::error::Error + Send + Sync>>(e.status()))
        }
    };
    for key in [&tokyo_key, &utc_key] {
        assert_eq!(call(key, midnight - 2_000).await?, 200);
        assert_eq!(call(key, midnight - 1_000).await?, 429);
    }
    // A new day in Tokyo; still the same day in UTC.
    assert_eq!(call(&tokyo_key, midnight).await?, 200);
    assert_eq!(call(&tokyo_key, midnight + 1_000).await?, 429);
    assert_eq!(call(&utc_key, midnight).await?, 429);
    assert_eq!(mock.hits(), 3);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ingress_refuses_in_its_own_format_before_upstream() -> R {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir()?;
    let s = Server::start(dir.path(), &mock, BillingMode::Internal).await;
    let (_, key) = s
        .member_key(budget_json(Decimal::ZERO, "month", "UTC"))
        .await?;
    let chat =
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let openai: [(&str, Value); 3] = [
        ("/v1/chat/completions", chat.clone()),
        (
            "/v1/embeddings",
            json!({"model": "openai/text-embedding-3-small", "input": "hi"}),
        ),
        (
            "/v1/images/generations",
            json!({"model": "openai/dall-e-3", "prompt": "a cat"}),
        ),
    ];
    for (path, body) in &openai {
        let (st, retry, v) = s.post(path, &key, body).await?;
        assert_eq!(st, 429, "{path}: {v}");
        assert_eq!(v["error"]["type"], "insufficient_quota", "{path}");
        assert_eq!(v["error"]["code"], "budget_exceeded", "{path}");
        assert!(retry.is_some(), "{path}");
    }
    let (st, retry, v) = s
        .post(
            "/v1/messages",
            &key,
            &json!({"model": "openai/gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await?;
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("budget"))
    );
    assert!(retry.is_some());
    let invoke = json!({
        "input": {"messages": [{"role": "user", "content": "hi"}], "modelOptions": {"model": "openai/gpt-4o-mini"}},
        "agent": "$CHAT_MODEL",
        "options": {},
    });
    for (path, body) in [("/api/v2/chat", invoke), ("/api/v2/chat/completions", chat)] {
        let (st, _, v) = s.post(path, &key, &body).await?;
        assert_eq!(st, 429, "{path}: {v}");
        assert_eq!(v["error"]["type"], "budget_exceeded", "{path}");
        assert!(v["error"]["message"].is_string(), "{path}");
    }
    assert_eq!(mock.hits(), 0);
    // A budget cannot be dodged through a model without a price.
    let (st, _, v) = s
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "openai/unpriced-model", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await?;
    assert_eq!(
        (st, &v["error"]["code"]),
        (400, &json!("model_not_priced")),
        "{v}"
    );
    assert_eq!(mock.hits(), 0);
    s.stop().await;
    Ok(())
}

struct Lines(Vec<String>);

impl hub_server::cli::Out for Lines {
    fn line(&mut self, s: &str) {
        self.0.push(s.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_admin_api_set_show_and_change_a_budget() -> R {
    use hub_server::admin_cli::{BudgetArgs, IamCommand, KeyCommand, UserCommand, run};
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir()?;
    let s = Server::start(dir.path(), &mock, BillingMode::Internal).await;
    let mut opts = HubOptions::new(dir.path());
    opts.admin_key = Some(Secret::new(OWNER));
    let mut out = Lines(Vec::new());
    run(
        &opts,
        IamCommand::User(UserCommand::Create {
            name: "ci".into(),
            role: "member".into(),
            team: None,
        }),
        &mut out,
    )
    .await?;
    let user = out.0.pop().unwrap_or_default();
    let create = |budget: &str, period: Option<&str>, tz: Option<&str>| {
        IamCommand::Key(KeyCommand::Create {
            user: user.clone(),
            name: None,
            team: None,
            models: vec![],
            surfaces: vec![],
            rpm: None,
            tpm: None,
            expires_in_days: None,
            budget: BudgetArgs {
                budget: Some(budget.into()),
                budget_period: period.map(str::to_string),
                budget_tz: tz.map(str::to_string),
            },
        })
    };
    // Bad input is refused with the reason.
    for (b, p, tz) in [
        ("-1", None, None),
        ("abc", None, None),
        ("1", Some("week"), None),
        ("1", None, Some("Mars/Olympus")),
    ] {
        let e = run(&opts, create(b, p, tz), &mut out)
            .await
            .err()
            .unwrap_or_default();
        assert!(!e.is_empty(), "{b} {p:?} {tz:?} was accepted");
    }
    run(
        &opts,
        create("2.5", Some("day"), Some("Europe/Berlin")),
        &mut out,
    )
    .await?;
    let key = out.0.pop().unwrap_or_default();
    // The running hub picks the CLI's key up by itself, with its budget.
    let mut served = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (st, _, _) = s.post("/v1/chat/completions", &key, &chat_body()).await?;
        if st == 200 {
            served += 1;
            break;
        }
    }
    assert_eq!(served, 1, "the CLI's key did not work within two seconds");
    let find = |all: &Value| {
        all.as_array()
            .and_then(|a| a.iter().find(|k| k["user_id"] == json!(user)).cloned())
            .unwrap_or_default()
    };
    let (_, _, all) = s
        .send(reqwest::Method::GET, "/api/admin/keys", OWNER, None)
        .await?;
    let k = find(&all);
    assert_eq!(
        k["policy"]["budget"],
        json!({"amount": "2.5", "period": "day", "time_zone": "Europe/Berlin"})
    );
    let spent = dec(k["budget_status"]["spent"].as_str().unwrap_or(""));
    assert!(spent > Decimal::ZERO, "{k}");
    assert_eq!(
        dec(k["budget_status"]["remaining"].as_str().unwrap_or("")),
        dec("2.5") - spent
    );
    let resets = k["budget_status"]["resets_at"].as_str().unwrap_or("");
    assert!(
        resets.ends_with("T00:00:00+01:00") || resets.ends_with("T00:00:00+02:00"),
        "{resets}"
    );
    let id = k["id"].as_str().unwrap_or_default().to_string();
    // Changed through the admin API (the whole policy), audited like any policy change.
    let path = format!("/api/admin/keys/{id}/policy");
    let (st, _, v) = s
        .send(
            reqwest::Method::PUT,
            &path,
            OWNER,
            Some(&json!({"budget": {"amount": 7, "time_zone": "Asia/Tokyo"}})),
        )
        .await?;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["policy"]["budget"],
        json!({"amount": "7", "period": "month", "time_zone": "Asia/Tokyo"})
    );
    assert!(
        v["budget_status"]["resets_at"]
            .as_str()
            .is_some_and(|r| r.ends_with("+09:00"))
    );
    let (st, _, v) = s
        .send(
            reqwest::Method::PUT,
            &path,
            OWNER,
            Some(&json!({"budget": {"amount": "1", "time_zone": "Nowhere/City"}})),
        )
        .await?;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Nowhere/City"))
    );
    assert!(v["error"]["type"].is_string());
    // A member cannot escape their budget by minting a fresh key with it.
    let (st, _, v) = s.post("/api/me/keys", &key, &json!({})).await?;
    assert_eq!(st, 403, "{v}");
    // The CLI changes and removes it.
    run(
        &opts,
        IamCommand::Key(KeyCommand::SetBudget {
            id: id.clone(),
            budget: BudgetArgs {
                budget: Some("0".into()),
                budget_period: None,
                budget_tz: None,
            },
            clear: false,
        }),
        &mut out,
    )
    .await?;
    assert!(
        out.0
            .pop()
            .unwrap_or_default()
            .contains("budget 0 per month (UTC)")
    );
    s.hub.reload_if_changed().await?;
    let (st, _, v) = s.post("/v1/chat/completions", &key, &chat_body()).await?;
    assert_eq!(
        (st, &v["error"]["code"]),
        (429, &json!("budget_exceeded")),
        "{v}"
    );
    run(
        &opts,
        IamCommand::Key(KeyCommand::SetBudget {
            id: id.clone(),
            budget: BudgetArgs::default(),
            clear: true,
        }),
        &mut out,
    )
    .await?;
    assert!(out.0.pop().unwrap_or_default().contains("no budget"));
    s.hub.reload_if_changed().await?;
    assert_eq!(
        s.post("/v1/chat/completions", &key, &chat_body()).await?.0,
        200
    );
    let (_, _, all) = s
        .send(reqwest::Method::GET, "/api/admin/keys", OWNER, None)
        .await?;
    let k = find(&all);
    assert!(
        k.get("budget_status").is_none() && k["policy"].get("budget").is_none(),
        "{k}"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_settle_at_their_end_and_a_disconnect_spends_what_was_delivered() -> R {
    use futures::StreamExt;
    use hub_core::store::CallStatus;
    let mock = MockServer::start(Flavor::OpenAi).await;
    let dir = tempfile::tempdir()?;
    let s = Server::start(dir.path(), &mock, BillingMode::Internal).await;
    let (ub, worst) = worst_case()?;
    exact_usage(&mock, ub, 0);
    let mut body = chat_body();
    body["stream"] = json!(true);
    let (key_id, key) = s
        .member_key(budget_json(worst * Decimal::from(2), "month", "UTC"))
        .await?;
    for i in 0..2 {
        let (st, _, v) = s.post("/v1/chat/completions", &key, &body).await?;
        assert_eq!(st, 200, "stream {i}: {v}");
        assert!(v.as_str().is_some_and(|t| t.contains("[DONE]")), "{v}");
    }
    // The third is refused before it starts: a JSON error, not a stream.
    let (st, retry, v) = s.post("/v1/chat/completions", &key, &body).await?;
    assert_eq!(
        (st, &v["error"]["code"]),
        (429, &json!("budget_exceeded")),
        "{v}"
    );
    assert!(retry.is_some());
    assert_eq!(mock.hits(), 2);
    assert_eq!(
        s.hub.budget_usage(&key_id),
        Some((to_units(worst * Decimal::from(2)).unwrap_or(-1), 0))
    );

    // A stream its caller leaves after a few chunks: what was delivered is spent, the rest of
    // its worst case is free again.
    let words = vec!["hello"; 40].join(" ");
    mock.register_scenario(
        MODEL,
        Script::text(words)
            .with_chunk_delay_ms(50)
            .with_usage(Usage::new(ub, MAX_TOKENS)),
    );
    let (left_id, left) = s.member_key(budget_json(worst, "month", "UTC")).await?;
    let resp = s
        .http
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(&left)
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk?));
        if seen.matches("hello").count() >= 3 {
            break;
        }
    }
    drop(stream);
    let mut rec = None;
    for _ in 0..100 {
        rec = s
            .hub
            .store()
            .list_usage(100)
            .await?
            .into_iter()
            .find(|r| r.principal == left_id && r.status == CallStatus::Cancelled);
        if rec.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rec = rec.ok_or("no cancelled record")?;
    let cost = rec.billing.cost_units;
    assert!(cost > 0 && cost < to_units(worst).unwrap_or(0), "{rec:?}");
    assert_eq!(s.hub.budget_usage(&left_id), Some((cost, 0)));
    // What is left no longer covers a whole worst case.
    let (st, _, v) = s.post("/v1/chat/completions", &left, &chat_body()).await?;
    assert_eq!(st, 429, "{v}");
    s.stop().await;
    Ok(())
}
