//! `hub-bench store`: the per-call database writes of a billed call, without HTTP.
//!
//! Every call of a hub in credits mode writes twice through the same path: its reservation
//! (`LedgerWriter::reserve`, before the upstream call) and its usage record, which settles the
//! reservation and adds to the roll-ups (`UsageWriter::commit`, before the caller sees the end).
//! This drives exactly those two writers of `hub-core` against a fresh SQLite store, from C tasks
//! at once (so the writer thread group-commits as it does under load), with the calls of N users
//! in turn, and reports calls/s, this process's CPU time per call (/proc/self/stat) and the bytes
//! written per call (/proc/self/io `wchar`: WAL frames and checkpoint copies).
//!
//! Without the network, the load generator and the HTTP stack, what is left is the store's own
//! cost, which makes small storage changes measurable on a noisy machine; `scripts/bench` stays
//! the end-to-end figure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Args;
use hub_core::ledger::{ReserveOutcome, ReserveReq};
use hub_core::store::{Billing, CallStatus, Store, UsageRecord};
use hub_core::usage::UsageWriter;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Users whose calls take turns (each its own account, key, roll-up rows and index pages).
    #[arg(long, default_value_t = 1)]
    users: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Calls before the measurement (the database grows to a realistic size first).
    #[arg(long, default_value_t = 20_000)]
    warmup: u64,
    /// Calls measured.
    #[arg(long, default_value_t = 50_000)]
    calls: u64,
    /// The database directory (default: a new temporary one, removed at the end).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// SQL run on the database once it is created, before any call (a schema experiment, e.g.
    /// `DROP INDEX usage_principal_created`).
    #[arg(long)]
    sql: Option<String>,
}

/// Credits each user's account starts with: enough for every call.
const FUNDING: i64 = 1 << 60;
/// What each call holds and what it costs, as a chat call priced from the built-in book does.
const HOLD: i64 = 25_087_410;
const COST: i64 = 29_070;

/// The process's CPU so far (utime+stime, through `proc_sample`) and bytes written (`wchar`).
fn cpu_now() -> Result<(u64, u64), String> {
    let ticks = crate::proc_sample(std::process::id())?.cpu_ticks;
    let io = std::fs::read_to_string("/proc/self/io").map_err(|e| format!("/proc/self/io: {e}"))?;
    let wchar = io
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or("/proc/self/io: no wchar")?;
    Ok((ticks, wchar))
}

/// One user's ids: its key's calls are the user's, settled against its account.
struct Caller {
    user: String,
    key: String,
    account: String,
}

fn callers(n: usize) -> Vec<Caller> {
    let simple = || hub_core::hub::new_request_id().replace('-', "");
    (0..n.max(1))
        .map(|_| {
            let user = format!("user_{}", simple());
            Caller {
                key: format!("key_{}", simple()),
                account: format!("user:{user}"),
                user,
            }
        })
        .collect()
}

fn record(c: &Caller, id: String, started_ms: i64) -> UsageRecord {
    UsageRecord {
        id,
        created_at_ms: started_ms,
        client_request_id: None,
        principal: c.key.clone(),
        user_id: c.user.clone(),
        team_id: None,
        app: None,
        ingress: "openai".into(),
        endpoint: "chat".into(),
        requested_model: "openai/gpt-4o-mini".into(),
        provider: Some("openai".into()),
        credential: Some("env:openai:1".into()),
        upstream_model: Some("gpt-4o-mini".into()),
        stream: false,
        prompt_tokens: 3,
        completion_tokens: 4,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        images: 0,
        estimated: false,
        latency_ms: 9,
        ttfb_ms: Some(5),
        status: CallStatus::Success,
        http_status: 200,
        error_class: None,
        error_message: None,
        provider_cost: None,
        attempts: 1,
        billing: Billing {
            mode: Some("credits".into()),
            price_version: Some(1),
            cost_units: COST,
            provider_cost_units: 28_500,
            account: Some(c.account.clone()),
            reserved_units: HOLD,
            shortfall_units: 0,
        },
    }
}

/// One call's two writes, as the hub makes them.
async fn call(
    ledger: &hub_core::ledger::LedgerWriter,
    usage: &UsageWriter,
    caller: &Caller,
) -> Result<(), String> {
    let id = hub_core::hub::new_request_id();
    let started = hub_core::hub::now_ms();
    let held = ledger
        .reserve(ReserveReq {
            request_id: id.clone(),
            account: caller.account.clone(),
            amount: HOLD,
            instance: "inst_bench".into(),
            now_ms: started,
            starter: None,
        })
        .await?;
    if held != ReserveOutcome::Reserved {
        return Err(format!("reservation refused: {held:?}"));
    }
    usage.commit(record(caller, id, started)).await
}

async fn run_calls(
    ledger: Arc<hub_core::ledger::LedgerWriter>,
    usage: Arc<UsageWriter>,
    callers: Arc<Vec<Caller>>,
    concurrency: usize,
    calls: u64,
) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (ledger, usage, callers, next) =
            (ledger.clone(), usage.clone(), callers.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= calls {
                    return Ok::<(), String>(());
                }
                let caller = &callers[n as usize % callers.len()];
                call(&ledger, &usage, caller).await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("task: {e}"))??;
    }
    Ok(())
}

pub async fn run_store(a: StoreArgs) -> Result<Value, String> {
    let tmp;
    let dir = match &a.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
            tmp.path().to_path_buf()
        }
    };
    let store: Arc<dyn Store> = Arc::new(
        hub_core::store::sqlite::SqliteStore::open(&dir.join("hub.db"))
            .map_err(|e| e.to_string())?,
    );
    if let Some(sql) = &a.sql {
        rusqlite::Connection::open(dir.join("hub.db"))
            .and_then(|c| c.execute_batch(sql))
            .map_err(|e| format!("--sql: {e}"))?;
    }
    let callers = Arc::new(callers(a.users));
    for c in callers.iter() {
        store
            .grant(&hub_core::ledger::GrantReq {
                account: c.account.clone(),
                kind: hub_core::ledger::GrantKind::Grant,
                amount: FUNDING,
                idem_key: format!("bench-funding:{}", c.user),
                expires_at_ms: None,
                note: None,
                now_ms: hub_core::hub::now_ms(),
                starter: None,
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    let (ledger, _lh) = hub_core::ledger::LedgerWriter::start(store.clone());
    let (usage, _uh) = UsageWriter::start(store.clone());
    let (ledger, usage) = (Arc::new(ledger), Arc::new(usage));
    run_calls(
        ledger.clone(),
        usage.clone(),
        callers.clone(),
        a.concurrency,
        a.warmup,
    )
    .await?;
    let (ticks0, written0) = cpu_now()?;
    let t0 = Instant::now();
    run_calls(ledger, usage, callers, a.concurrency, a.calls).await?;
    let secs = t0.elapsed().as_secs_f64();
    let (ticks1, written1) = cpu_now()?;
    let calls = a.calls.max(1) as f64;
    Ok(json!({
        "users": a.users,
        "concurrency": a.concurrency,
        "warmup": a.warmup,
        "calls": a.calls,
        "seconds": secs,
        "calls_per_s": calls / secs,
        "cpu_us_per_call": (ticks1 - ticks0) as f64 / crate::TICKS_PER_S * 1e6 / calls,
        "written_bytes_per_call": (written1 - written0) as f64 / calls,
        "sql": a.sql,
    }))
}
