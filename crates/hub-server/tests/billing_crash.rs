//! kill -9 with calls in flight: the real `aigne-hub` binary in credits mode under a load of
//! streaming and non-streaming calls is killed mid-load and restarted. Every response the client
//! received complete has its usage record and capture; the reservations of the dead process are
//! released (flagged `reconciled`); `aigne-hub ledger verify` passes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hub_core::ledger::LedgerStore;
use hub_core::store::CallStatus;
use hub_core::store::sqlite::SqliteStore;
use hub_testkit::{Flavor, MockServer, Script, Usage};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_aigne-hub");
const KEY: &str = "sk-crash-test-key-0123456789abcdef";

type R = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn cmd(data: &Path, mock: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HUB_DATA_DIR", data)
        .env("HUB_ADMIN_KEY", KEY)
        .env("OPENAI_API_KEY", "sk-test")
        .env("OPENAI_BASE_URL", mock)
        .env("HUB_BILLING_MODE", "credits")
        .env("HUB_HEARTBEAT_MS", "100")
        .env("HUB_LOG", "warn");
    c
}

fn admin(
    data: &Path,
    mock: &str,
    args: &[&str],
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let out = cmd(data, mock).args(args).output()?;
    if !out.status.success() {
        return Err(format!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts `serve` on a free port; returns the child and its base URL.
fn serve(
    data: &Path,
    mock: &str,
) -> Result<(Child, String), Box<dyn std::error::Error + Send + Sync>> {
    let mut child = cmd(data, mock)
        .args(["serve", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("aigne-hub listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30))?;
    Ok((child, url))
}

async fn one_call(http: &reqwest::Client, url: &str, stream: bool) -> Option<String> {
    let resp = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({
            "model": "openai/crash-model",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50,
            "stream": stream,
        }))
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    let id = resp
        .headers()
        .get("x-request-id")?
        .to_str()
        .ok()?
        .to_string();
    let text = resp.text().await.ok()?;
    // Complete: the whole JSON, or the stream's terminator.
    let complete = if stream {
        text.contains("data: [DONE]")
    } else {
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .is_some_and(|v| v["choices"][0]["message"]["content"].is_string())
    };
    complete.then_some(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_load_loses_no_completed_response_and_leaves_nothing_reserved() -> R {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let base = mock.base_url();
    mock.register_scenario(
        "crash-model",
        Script::text("one two three four five six")
            .with_chunk_delay_ms(15)
            .with_usage(Usage::new(9, 6)),
    );
    let dir = tempfile::tempdir()?;
    let data = dir.path();
    admin(
        data,
        &base,
        &[
            "admin",
            "price",
            "set",
            "--provider",
            "openai",
            "--model",
            "crash-model",
            "--input",
            "1",
            "--output",
            "2",
        ],
    )?;
    let (mut child, url) = serve(data, &base)?;
    // Granted from another process while `serve` runs (the owner exists once it has started).
    admin(
        data,
        &base,
        &[
            "admin", "credits", "grant", "--user", "owner", "--amount", "100",
        ],
    )?;
    let http = reqwest::Client::new();
    let completed: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..16 {
        let (http, url, completed, stop) =
            (http.clone(), url.clone(), completed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(id) = one_call(&http, &url, (w + i).is_multiple_of(2)).await
                    && let Ok(mut c) = completed.lock()
                {
                    c.push(id);
                }
                i += 1;
            }
        }));
    }
    // Let the load run, then kill -9 with calls in flight.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let completed = completed.lock().map_err(|_| "poisoned")?.clone();
    assert!(
        completed.len() >= 10,
        "the load ran ({} completed)",
        completed.len()
    );

    // Restart: the dead instance's open reservations are released within a few heartbeats.
    let (mut child, _url) = serve(data, &base)?;
    let store = SqliteStore::open(&data.join("hub.db"))?;
    let mut rep = store.verify(hub_core::hub::now_ms(), 3_600_000).await?;
    for _ in 0..100 {
        if rep.open_reservations == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rep = store.verify(hub_core::hub::now_ms(), 3_600_000).await?;
    }
    assert_eq!(rep.open_reservations, 0, "{rep:#?}");
    assert!(rep.ok(), "{:#?}", rep.violations);
    // Calls were in flight at the kill: their holds were released and flagged.
    assert!(rep.reconciled_reservations > 0, "{rep:#?}");
    eprintln!(
        "{} responses completed before the kill; {} reservations reconciled after restart",
        completed.len(),
        rep.reconciled_reservations
    );

    // Every response the client received complete has its record and its capture.
    let records = store
        .usage_records(&hub_core::ledger::UsageFilter::default())
        .await?;
    let entries = store.entries("user:owner").await?;
    for id in &completed {
        let rec = records.iter().find(|r| &r.id == id);
        let rec = rec.ok_or_else(|| format!("completed response {id} has no usage record"))?;
        assert_eq!(rec.status, CallStatus::Success, "{rec:?}");
        assert!(rec.billing.cost_units > 0);
        let captures = entries
            .iter()
            .filter(|e| e.kind == "capture" && e.request_id.as_deref() == Some(id.as_str()))
            .count();
        assert_eq!(captures, 1, "completed response {id}");
    }
    child.kill()?;
    child.wait()?;
    let out = admin(data, &base, &["ledger", "verify", "--window-secs", "3600"])?;
    assert!(out.contains("ledger OK"), "{out}");
    Ok(())
}

/// `aigne-hub ledger verify --database URL`: SQLite URLs and plain paths read that database (not
/// the data dir's); a PostgreSQL URL is refused with exit code 2, since this build has no
/// PostgreSQL backend; a missing database is an error, not a fresh empty ledger.
#[test]
fn ledger_verify_reads_the_database_a_url_names_and_refuses_postgres() -> R {
    let mock = "http://127.0.0.1:9"; // never called
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("a");
    let other = dir.path().join("b");
    std::fs::create_dir_all(&other)?;
    // A ledger with 7 credits granted (the user must exist: `serve` bootstraps the owner, the
    // CLI can create one).
    let user = admin(&data, mock, &["admin", "user", "create", "--name", "U1"])?;
    admin(
        &data,
        mock,
        &[
            "admin",
            "credits",
            "grant",
            "--user",
            user.trim(),
            "--amount",
            "7",
        ],
    )?;
    let db = data.join("hub.db");
    let run = |args: &[&str]| cmd(&other, mock).args(args).output();
    for url in [
        format!("sqlite://{}", db.display()),
        format!("sqlite://{}?mode=ro", db.display()),
        format!("sqlite:{}", db.display()),
        db.display().to_string(),
        format!("sqlite://{}", data.display()), // a directory: its hub.db
    ] {
        let out = run(&["ledger", "verify", "--database", &url])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{url}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("ledger OK"), "{url}: {stdout}");
        assert!(
            stdout.contains("granted 7"),
            "{url} read the other database: {stdout}"
        );
    }
    // `--data-dir` still works (and is what HUB_DATA_DIR says by default).
    let out = run(&[
        "ledger",
        "verify",
        "--data-dir",
        &data.display().to_string(),
    ])?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("granted 7"));

    for url in [
        "postgres://hub:pw@localhost/hub",
        "postgresql://localhost/hub",
    ] {
        let out = run(&["ledger", "verify", "--database", url])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("no PostgreSQL backend"), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing pretends to have verified");
    }
    let out = run(&["ledger", "verify", "--database", "mysql://localhost/hub"])?;
    assert_eq!(out.status.code(), Some(2));
    // A database that does not exist is an error, and is not created.
    let missing = dir.path().join("nope").join("hub.db");
    let out = run(&[
        "ledger",
        "verify",
        "--database",
        &format!("sqlite://{}", missing.display()),
    ])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no hub database"));
    assert!(!missing.exists());
    Ok(())
}

/// kill -9 mid-stream: the heartbeats had persisted what the stream delivered (the meter's count
/// of output tokens, the prompt estimate: the record at the first beat, the progress at later
/// ones, as the chunks come 250 ms apart); the restart captures exactly that part as an
/// estimated record flagged `reconciled`, releases the rest, and releases a non-streaming call's
/// whole reservation (nothing known delivered). Verify passes; nothing stays reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_stream_charges_what_the_last_heartbeat_saw_delivered() -> R {
    let mock = MockServer::start(Flavor::OpenAi).await;
    let base = mock.base_url();
    // One token per chunk ("hello" / " hello"), 5 chunks, then the upstream stalls.
    mock.register_scenario(
        "crash-model",
        Script::text(vec!["hello"; 40].join(" "))
            .with_chunk_delay_ms(250)
            .with_stall_after_chunks(5)
            .with_usage(Usage::new(9, 40)),
    );
    mock.register_scenario(
        "slow-model",
        Script::text("too late").with_first_byte_delay_ms(60_000),
    );
    let dir = tempfile::tempdir()?;
    let data = dir.path();
    for model in ["crash-model", "slow-model"] {
        admin(
            data,
            &base,
            &[
                "admin",
                "price",
                "set",
                "--provider",
                "openai",
                "--model",
                model,
                "--input",
                "1",
                "--output",
                "2",
            ],
        )?;
    }
    let (mut child, url) = serve(data, &base)?;
    admin(
        data,
        &base,
        &[
            "admin", "credits", "grant", "--user", "owner", "--amount", "1",
        ],
    )?;
    let http = reqwest::Client::new();
    // A non-streaming call waiting on its upstream, holding a reservation.
    let slow = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            http.post(format!("{url}/v1/chat/completions"))
                .bearer_auth(KEY)
                .json(&json!({
                    "model": "openai/slow-model",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 50,
                }))
                .send()
                .await
        })
    };
    let resp = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({
            "model": "openai/crash-model",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50,
            "stream": true,
        }))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .ok_or("no request id")?
        .to_string();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while text.matches("hello").count() < 5 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await?
            .ok_or("stream ended")??;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Wait for a heartbeat (every 100 ms) to persist the 5 delivered tokens, then kill -9.
    let db = rusqlite::Connection::open(data.join("hub.db"))?;
    let mut persisted = None;
    let mut first = None;
    for _ in 0..100 {
        let row = db
            .query_row(
                "SELECT h.record, r.progress FROM reservations r
                 JOIN hold_records h ON h.request_id = r.request_id WHERE r.request_id = ?1",
                [&id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
            )
            .ok();
        if let Some((record, progress)) = row {
            let mut rec: hub_core::store::UsageRecord = serde_json::from_str(&record)?;
            first.get_or_insert(rec.completion_tokens);
            if let Some(p) = progress {
                serde_json::from_str::<hub_core::store::StreamProgress>(&p)?.apply(&mut rec);
            }
            if rec.completion_tokens == 5 {
                persisted = Some(rec);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let persisted = persisted.ok_or("no heartbeat persisted the delivered part")?;
    assert!(
        first.is_some_and(|n| n < 5),
        "the record was stored before the last chunk, and the later beats wrote progress: {first:?}"
    );
    assert_eq!(mock.hits(), 2, "both calls are upstream");
    let sent = mock.stats().chunks_sent;
    child.kill()?; // SIGKILL
    child.wait()?;
    drop(body);
    let _ = slow.await;
    assert_eq!(sent, 5, "the mock delivered 5 chunks and stalled");

    // Restart: reconciled at start, or within a few heartbeats once the dead one is stale.
    let (mut child, _url) = serve(data, &base)?;
    let store = SqliteStore::open(&data.join("hub.db"))?;
    let mut rep = store.verify(hub_core::hub::now_ms(), 3_600_000).await?;
    for _ in 0..100 {
        if rep.open_reservations == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rep = store.verify(hub_core::hub::now_ms(), 3_600_000).await?;
    }
    assert!(rep.ok(), "{:#?}", rep.violations);
    assert_eq!(rep.open_reservations, 0, "{rep:#?}");
    assert_eq!(rep.reconciled_reservations, 2, "{rep:#?}");
    let records = store
        .usage_records(&hub_core::ledger::UsageFilter::default())
        .await?;
    assert_eq!(
        records.len(),
        1,
        "only the stream left a record: {records:#?}"
    );
    let rec = &records[0];
    assert_eq!(rec.id, id);
    assert_eq!(
        rec.completion_tokens, sent,
        "charged what the mock delivered"
    );
    assert_eq!(rec.prompt_tokens, persisted.prompt_tokens);
    assert!(rec.prompt_tokens > 0);
    assert!(rec.estimated);
    assert_eq!(rec.status, CallStatus::Failed);
    assert_eq!(rec.error_class.as_deref(), Some("reconciled"));
    // 1 credit per 1M input tokens, 2 per 1M output tokens.
    let cost = hub_core::pricing::to_units(
        rust_decimal::Decimal::from(rec.prompt_tokens) * rust_decimal::Decimal::new(1, 6)
            + rust_decimal::Decimal::from(sent) * rust_decimal::Decimal::new(2, 6),
    )
    .ok_or("range")?;
    assert_eq!(rec.billing.cost_units, cost);
    let entries = store.entries("user:owner").await?;
    let captures: Vec<_> = entries.iter().filter(|e| e.kind == "capture").collect();
    assert_eq!(captures.len(), 1, "{entries:#?}");
    assert_eq!(captures[0].charged, cost);
    assert_eq!(captures[0].request_id.as_deref(), Some(id.as_str()));
    // Holds, and a hold going back, are reservation rows, not ledger entries: the
    // non-streaming call's hold went back whole, which the balance shows.
    assert!(
        entries
            .iter()
            .all(|e| e.kind != "release" && e.kind != "reserve"),
        "{entries:#?}"
    );
    let bal = store.balance("user:owner").await?.ok_or("no account")?;
    assert_eq!(bal.reserved, 0);
    assert_eq!(
        bal.available,
        hub_core::pricing::UNITS_PER_CREDIT - cost,
        "1 credit granted, the delivered part charged"
    );
    child.kill()?;
    child.wait()?;
    let out = admin(data, &base, &["ledger", "verify", "--window-secs", "3600"])?;
    assert!(out.contains("ledger OK"), "{out}");
    Ok(())
}
