//! Benchmark (ignored by default): loads 10 million usage records through the real write path
//! (`insert_usage`: record + roll-up in one transaction, batches as the group-commit writer makes
//! them) and times the report queries. Figures go in BENCHMARKS.md.
//!
//! cargo test --release -p hub-core --test report_10m -- --ignored --nocapture
//! (`HUB_BENCH_ROWS` overrides the row count.)

use std::time::Instant;

use hub_core::ledger::report::{Dim, Period};
use hub_core::ledger::{LedgerStore, ReportQuery, UsageFilter};
use hub_core::store::sqlite::SqliteStore;
use hub_core::store::{Billing, CallStatus, Store, UsageRecord};

const DAY: i64 = 86_400_000;
const START: i64 = 1_767_225_600_000; // 2026-01-01T00:00Z

fn record(i: u64) -> UsageRecord {
    let user = i % 1000;
    let model = i % 50;
    UsageRecord {
        id: format!("r{i:012}"),
        // 90 days, evenly spread
        created_at_ms: START + (i as i64 * 7_777) % (90 * DAY),
        client_request_id: None,
        principal: format!("key{user}"),
        user_id: format!("user{user}"),
        team_id: Some(format!("team{}", user % 20)),
        app: Some(format!("app{}", i % 50)),
        ingress: "openai".into(),
        endpoint: "chat".into(),
        requested_model: format!("model{model}"),
        provider: Some(format!("provider{}", model % 10)),
        credential: None,
        upstream_model: Some(format!("model{model}")),
        stream: i.is_multiple_of(2),
        prompt_tokens: 100 + i % 900,
        completion_tokens: 10 + i % 500,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        images: 0,
        estimated: false,
        latency_ms: 300,
        ttfb_ms: Some(100),
        status: if i.is_multiple_of(50) {
            CallStatus::Failed
        } else {
            CallStatus::Success
        },
        http_status: 200,
        error_class: None,
        error_message: None,
        provider_cost: None,
        attempts: 1,
        billing: Billing {
            mode: Some("internal".into()),
            price_version: Some(1),
            cost_units: 1_000_000 + (i % 1000) as i64 * 1000,
            provider_cost_units: 1_000_000,
            account: None,
            reserved_units: 0,
            shortfall_units: 0,
        },
    }
}

async fn time<T>(name: &str, f: impl AsyncFn() -> T) -> T {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        out = Some(f().await);
        best = best.min(t.elapsed().as_secs_f64() * 1000.0);
    }
    eprintln!("{name:<58} {best:>9.1} ms (best of 3)");
    match out {
        Some(o) => o,
        None => unreachable!("ran three times"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: loads 10 million usage rows (minutes); run with --ignored --nocapture"]
async fn report_queries_on_10_million_usage_rows() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::var("HUB_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir_in(std::env::var("HUB_BENCH_DIR").unwrap_or_else(|_| ".".into()))?;
    let store = SqliteStore::open(&dir.path().join("hub.db"))?;
    let t = Instant::now();
    let batch = 10_000u64;
    let mut i = 0;
    while i < n {
        let rows: Vec<UsageRecord> = (i..(i + batch).min(n)).map(record).collect();
        store.insert_usage(&rows).await?;
        i += batch;
    }
    let load = t.elapsed().as_secs_f64();
    eprintln!(
        "loaded {n} usage records in {load:.1} s ({:.0} rows/s, batches of {batch}, record + roll-up per commit)",
        n as f64 / load
    );
    let month = ReportQuery {
        since_ms: Some(START + 30 * DAY),
        until_ms: Some(START + 60 * DAY),
        ..ReportQuery::default()
    };
    let rows = time("totals over everything", || async {
        store.usage_report(&ReportQuery::default()).await
    })
    .await?;
    assert_eq!(rows.iter().map(|r| r.calls).sum::<i64>(), n as i64);
    time("by model, all time", || async {
        store
            .usage_report(&ReportQuery {
                group_by: vec![Dim::Model],
                ..ReportQuery::default()
            })
            .await
    })
    .await?;
    time("by provider x month, UTC+08:00", || async {
        store
            .usage_report(&ReportQuery {
                group_by: vec![Dim::Provider],
                period: Some(Period::Month),
                tz_offset_minutes: 480,
                ..ReportQuery::default()
            })
            .await
    })
    .await?;
    time(
        "by user x day, one month (1000 users x 30 days)",
        || async {
            store
                .usage_report(&ReportQuery {
                    group_by: vec![Dim::User],
                    period: Some(Period::Day),
                    ..month.clone()
                })
                .await
        },
    )
    .await?;
    time("one user by hour, one month", || async {
        store
            .usage_report(&ReportQuery {
                period: Some(Period::Hour),
                user_id: Some("user7".into()),
                ..month.clone()
            })
            .await
    })
    .await?;
    time("by team x app, one month", || async {
        store
            .usage_report(&ReportQuery {
                group_by: vec![Dim::Team, Dim::App],
                ..month.clone()
            })
            .await
    })
    .await?;
    time("quota: one user's spend over 30 days", || async {
        store.charged_since("user7", START + 60 * DAY).await
    })
    .await?;
    time("export: one user's records for one day", || async {
        store
            .usage_records(&UsageFilter {
                user_id: Some("user7".into()),
                since_ms: Some(START + 40 * DAY),
                until_ms: Some(START + 41 * DAY),
                ..UsageFilter::default()
            })
            .await
    })
    .await?;
    time("newest 50 records (admin usage list)", || async {
        store.list_usage(50).await
    })
    .await?;
    Ok(())
}
