//! Benchmark (ignored by default): loads 10 million usage records through the real write path
//! (`insert_usage`: record + roll-up in one transaction, batches as the group-commit writer makes
//! them) and times the report queries. Figures go in BENCHMARKS.md.
//!
//! cargo test --release -p hub-core --test report_10m -- --ignored --nocapture
//! (`HUB_BENCH_ROWS` overrides the row count.)

use std::time::Instant;

use hub_core::ledger::report::{Dim, Period, ReportZone};
use hub_core::ledger::{LedgerStore, ReportQuery, UsageFilter};
use hub_core::store::sqlite::SqliteStore;
use hub_core::store::{Billing, CallStatus, Store, UsageRecord};

const DAY: i64 = 86_400_000;
const START: i64 = 1_767_225_600_000; // 2026-01-01T00:00Z

fn at(i: u64, n: u64) -> i64 {
    START + (i as i128 * (90 * DAY) as i128 / n.max(1) as i128) as i64
}

fn record(i: u64, n: u64) -> UsageRecord {
    let user = i % 1000;
    let model = i % 50;
    UsageRecord {
        id: format!("r{i:012}"),
        // 90 days, evenly spread
        created_at_ms: at(i, n),
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
    let path = dir.path().join("hub.db");
    let store = SqliteStore::open(&path)?;
    // A configured report zone (HUB_REPORT_TIMEZONES=UTC,Asia/Shanghai): its day roll-up is kept
    // by the write path too.
    let shanghai = ReportZone::parse("Asia/Shanghai")?;
    store
        .set_report_zones(&[ReportZone::UTC, shanghai.clone()])
        .await?;
    // The real write path (record + both roll-ups per commit, as the group-commit writer does).
    let real = n.min(
        std::env::var("HUB_BENCH_REAL_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000),
    );
    let t = Instant::now();
    let batch = 10_000u64;
    let mut i = 0;
    while i < real {
        let rows: Vec<UsageRecord> = (i..(i + batch).min(real)).map(|j| record(j, n)).collect();
        store.insert_usage(&rows).await?;
        i += batch;
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "write path: {real} usage records in {secs:.1} s = {:.0} records/s (batches of {batch}; record + 15-min, UTC-day and Asia/Shanghai-day roll-ups in each commit)",
        real as f64 / secs
    );
    // The rest generated in SQL with the same values (the write path above is what a hub runs;
    // this only makes a 10M-row database in minutes), roll-ups built from them.
    if n > real {
        let t = Instant::now();
        let conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;")?;
        let span = 90 * DAY;
        let mut lo = real;
        while lo < n {
            let hi = (lo + 1_000_000).min(n);
            conn.execute(
                &format!(
                    "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?2)
                     INSERT INTO usage_records (id, created_at_ms, principal, user_id, team_id, app, ingress, endpoint,
                       requested_model, provider, upstream_model, stream, prompt_tokens, completion_tokens,
                       cache_read_tokens, cache_write_tokens, reasoning_tokens, images, estimated, latency_ms, ttfb_ms,
                       status, http_status, attempts, billing_mode, price_version, cost_units, provider_cost_units)
                     SELECT printf('r%012d', i), {START} + i * {span} / {n}, 'key' || (i % 1000), 'user' || (i % 1000),
                       'team' || (i % 1000 % 20), 'app' || (i % 50), 'openai', 'chat', 'model' || (i % 50),
                       'provider' || (i % 50 % 10), 'model' || (i % 50), i % 2 = 0, 100 + i % 900, 10 + i % 500,
                       0, 0, 0, 0, 0, 300, 100, CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'success' END, 200, 1,
                       'internal', 1, 1000000 + (i % 1000) * 1000, 1000000
                     FROM s"
                ),
                rusqlite::params![lo as i64, hi as i64],
            )?;
            lo = hi;
        }
        for (table, width) in [
            ("usage_rollup", 15 * 60 * 1000i64),
            ("usage_rollup_day", DAY),
        ] {
            conn.execute(
                &format!(
                    "INSERT INTO {table} (bucket_ms, user_id, team_id, app, provider, model, calls, success_calls,
                       prompt_tokens, completion_tokens, images, cost_units, provider_cost_units)
                     SELECT (created_at_ms / {width}) * {width}, user_id, team_id, app, provider, upstream_model,
                       COUNT(*), SUM(status = 'success'), SUM(prompt_tokens), SUM(completion_tokens), SUM(images),
                       SUM(cost_units), SUM(provider_cost_units)
                     FROM usage_records WHERE id >= printf('r%012d', {real})
                     GROUP BY 1, 2, 3, 4, 5, 6
                     ON CONFLICT (bucket_ms, user_id, team_id, app, provider, model) DO UPDATE SET
                       calls = calls + excluded.calls, success_calls = success_calls + excluded.success_calls,
                       prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                       completion_tokens = completion_tokens + excluded.completion_tokens,
                       images = images + excluded.images, cost_units = cost_units + excluded.cost_units,
                       provider_cost_units = provider_cost_units + excluded.provider_cost_units"
                ),
                [],
            )?;
        }
        conn.execute_batch("ANALYZE;")?;
        eprintln!(
            "generated the other {} records and their roll-ups in {:.0} s",
            n - real,
            t.elapsed().as_secs_f64()
        );
        // The generated rows have no zone days: rebuild them from the 15-minute roll-up, as a
        // hub does when a zone is added to the setting.
        store.set_report_zones(&[]).await?;
        let t = Instant::now();
        let rep = store
            .set_report_zones(std::slice::from_ref(&shanghai))
            .await?;
        eprintln!(
            "rebuilt the Asia/Shanghai day roll-up ({} rows) from the 15-minute roll-up in {:.1} s",
            rep.rows,
            t.elapsed().as_secs_f64()
        );
    }
    let conn = rusqlite::Connection::open(&path)?;
    let count = |t: &str| -> rusqlite::Result<i64> {
        conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
    };
    eprintln!(
        "{n} usage records; roll-up rows: 15-min {}, day {}, Asia/Shanghai day {}",
        count("usage_rollup")?,
        count("usage_rollup_day")?,
        count("usage_rollup_zone_day")?
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
    let by_provider_month = |zone: &ReportZone| ReportQuery {
        group_by: vec![Dim::Provider],
        period: Some(Period::Month),
        zone: Some(zone.clone()),
        ..ReportQuery::default()
    };
    let q = by_provider_month(&shanghai);
    assert_eq!(store.report_source(&q), "usage_rollup_zone_day");
    let fast = time(
        "by provider x month, Asia/Shanghai (zone day roll-up)",
        || async { store.usage_report(&q).await },
    )
    .await?;
    let sh_month = ReportQuery {
        group_by: vec![Dim::User],
        period: Some(Period::Day),
        since_ms: Some(START + 30 * DAY - 8 * 3_600_000),
        until_ms: Some(START + 60 * DAY - 8 * 3_600_000),
        zone: Some(shanghai.clone()),
        ..ReportQuery::default()
    };
    assert_eq!(store.report_source(&sh_month), "usage_rollup_zone_day");
    time(
        "by user x day, one month, Asia/Shanghai (zone day roll-up)",
        || async { store.usage_report(&sh_month).await },
    )
    .await?;
    // The same report in a zone that is not configured reads the 15-minute roll-up.
    let plus8 = ReportZone::parse("+08:00")?;
    let q = by_provider_month(&plus8);
    assert_eq!(store.report_source(&q), "usage_rollup");
    let slow = time(
        "by provider x month, +08:00 not configured (15-min roll-up)",
        || async { store.usage_report(&q).await },
    )
    .await?;
    assert_eq!(fast, slow, "both roll-ups give the same report");
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
