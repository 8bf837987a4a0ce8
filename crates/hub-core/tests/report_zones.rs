//! Reports in IANA time zones (daylight saving included): the day roll-up kept for a configured
//! zone (maintained per group-commit batch, or rebuilt from the 15-minute roll-up when the zone
//! is added) and the 15-minute fallback give identical results, equal to a brute-force grouping
//! of the raw records with jiff, on random data dense around DST transition days.

use std::collections::BTreeMap;

use hub_core::ledger::report::{Dim, Period, ReportZone};
use hub_core::ledger::{LedgerStore, ReportQuery, ReportRow};
use hub_core::store::sqlite::SqliteStore;
use hub_core::store::{Billing, CallStatus, Store, UsageRecord};

type R = Result<(), Box<dyn std::error::Error>>;

const DAY: i64 = 86_400_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn record(i: usize, at: i64, rng: &mut Rng) -> UsageRecord {
    let model = rng.below(3);
    UsageRecord {
        id: format!("r{i:08}"),
        created_at_ms: at,
        client_request_id: None,
        principal: "k".into(),
        user_id: format!("user{}", rng.below(4)),
        team_id: None,
        app: Some(format!("app{}", rng.below(2))),
        ingress: "openai".into(),
        endpoint: "chat".into(),
        requested_model: format!("model{model}"),
        provider: Some(format!("provider{}", model % 2)),
        credential: None,
        upstream_model: Some(format!("model{model}")),
        stream: false,
        prompt_tokens: rng.below(1000),
        completion_tokens: rng.below(500),
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        images: 0,
        estimated: false,
        latency_ms: 1,
        ttfb_ms: None,
        status: if rng.below(10) == 0 {
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
            price_version: None,
            cost_units: rng.below(1_000_000) as i64,
            provider_cost_units: rng.below(1_000_000) as i64,
            account: None,
            reserved_units: 0,
            shortfall_units: 0,
        },
    }
}

fn jiff_zone(z: &ReportZone) -> jiff::tz::TimeZone {
    match z {
        ReportZone::Named(_, tz) => tz.clone(),
        ReportZone::Fixed(m) => match jiff::tz::Offset::from_seconds(m * 60) {
            Ok(o) => o.to_time_zone(),
            Err(e) => unreachable!("offset: {e}"),
        },
    }
}

/// The report computed from the raw records, independently of the roll-ups.
fn brute_force(records: &[UsageRecord], z: &ReportZone, q: &ReportQuery) -> Vec<ReportRow> {
    let tz = jiff_zone(z);
    let mut groups: BTreeMap<(Option<String>, Vec<String>), ReportRow> = BTreeMap::new();
    for r in records {
        if q.since_ms.is_some_and(|s| r.created_at_ms < s)
            || q.until_ms.is_some_and(|u| r.created_at_ms >= u)
        {
            continue;
        }
        let Ok(ts) = jiff::Timestamp::from_millisecond(r.created_at_ms) else {
            continue;
        };
        let date = ts.to_zoned_datetime(tz.clone()).date();
        let period = q.period.map(|p| match p {
            Period::Day => format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day()),
            Period::Month => format!("{:04}-{:02}", date.year(), date.month()),
            Period::Hour => unreachable!("not compared"),
        });
        let keys: Vec<String> = q
            .group_by
            .iter()
            .map(|d| match d {
                Dim::User => r.user_id.clone(),
                Dim::Team => r.team_id.clone().unwrap_or_default(),
                Dim::App => r.app.clone().unwrap_or_default(),
                Dim::Provider => r.provider.clone().unwrap_or_default(),
                Dim::Model => r.upstream_model.clone().unwrap_or_default(),
            })
            .collect();
        let row = groups
            .entry((period.clone(), keys.clone()))
            .or_insert_with(|| ReportRow {
                period,
                keys,
                ..ReportRow::default()
            });
        row.calls += 1;
        row.success_calls += i64::from(r.status == CallStatus::Success);
        row.prompt_tokens += r.prompt_tokens as i64;
        row.completion_tokens += r.completion_tokens as i64;
        row.cost_units += r.billing.cost_units;
        row.provider_cost_units += r.billing.provider_cost_units;
    }
    groups.into_values().collect()
}

fn sorted(mut rows: Vec<ReportRow>) -> Vec<ReportRow> {
    rows.sort_by(|a, b| (&a.period, &a.keys).cmp(&(&b.period, &b.keys)));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_day_rollups_and_the_15_minute_fallback_agree_across_dst() -> R {
    let names = [
        "America/New_York",
        "Europe/London",
        "Australia/Lord_Howe", // a 30-minute DST shift
        "Asia/Kolkata",        // +05:30, no DST
        "America/Santiago",    // DST starts at midnight: that day begins at 01:00
        "Asia/Kathmandu",      // +05:45
        "+08:00",
    ];
    let zones: Vec<ReportZone> = names
        .iter()
        .map(|n| ReportZone::parse(n))
        .collect::<Result<_, _>>()?;
    // 2025-01-01 .. 2027-01-01, plus dense clusters around every transition of every zone.
    let (lo, hi) = (1_735_689_600_000i64, 1_798_761_600_000i64);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut times: Vec<i64> = (0..3000)
        .map(|_| lo + rng.below((hi - lo) as u64) as i64)
        .collect();
    let mut transitions = Vec::new();
    for z in &zones {
        for (at, _) in z.offsets_between(lo, hi).into_iter().skip(1) {
            transitions.push(at);
            for _ in 0..60 {
                times.push(at - 2 * DAY + rng.below(4 * DAY as u64) as i64);
            }
        }
    }
    assert!(
        transitions.len() >= 16,
        "DST transitions in range: {}",
        transitions.len()
    );
    times.sort_unstable();
    let records: Vec<UsageRecord> = times
        .iter()
        .enumerate()
        .map(|(i, t)| record(i, *t, &mut rng))
        .collect();

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hub.db");
    let kept = SqliteStore::open(&path)?;
    // The first zones are configured before any traffic (kept by the write path) ...
    kept.set_report_zones(&zones[..4]).await?;
    let mut i = 0;
    while i < records.len() {
        // Batches of random size, as the group-commit writer makes them.
        let n = 1 + rng.below(200) as usize;
        let end = (i + n).min(records.len());
        kept.insert_usage(&records[i..end]).await?;
        i = end;
    }
    // ... the others are added later (rebuilt from the 15-minute roll-up); a replayed batch
    // counts nothing twice.
    kept.insert_usage(&records[..50]).await?;
    let rebuilt = kept.set_report_zones(&zones).await?;
    assert_eq!(rebuilt.built.len(), names.len() - 4, "{rebuilt:?}");
    assert!(
        rebuilt.rows > 0 && rebuilt.dropped.is_empty(),
        "{rebuilt:?}"
    );
    // Another store on the same file that keeps no zone days: always the 15-minute roll-up.
    let fallback = SqliteStore::open(&path)?;

    let mut compared = 0;
    for z in &zones {
        let tz = jiff_zone(z);
        let day_start = |t: i64| z.day_start_ms(z.local_day(t));
        // Whole-day ranges: everything, a year, and the days around each transition.
        let mut ranges: Vec<(Option<i64>, Option<i64>)> = vec![
            (None, None),
            (Some(day_start(lo + 200 * DAY)), None),
            (
                Some(day_start(lo + 10 * DAY)),
                Some(day_start(lo + 375 * DAY)),
            ),
        ];
        for (at, _) in z.offsets_between(lo, hi).into_iter().skip(1) {
            let d = z.local_day(at);
            ranges.push((Some(z.day_start_ms(d - 1)), Some(z.day_start_ms(d + 2))));
            ranges.push((Some(z.day_start_ms(d)), Some(z.day_start_ms(d + 1))));
        }
        for (since_ms, until_ms) in ranges {
            for (period, group_by) in [
                (Some(Period::Day), vec![Dim::User]),
                (Some(Period::Month), vec![Dim::Provider]),
                (None, vec![Dim::Model, Dim::App]),
                (Some(Period::Day), vec![]),
            ] {
                let q = ReportQuery {
                    group_by,
                    period,
                    zone: Some(z.clone()),
                    since_ms,
                    until_ms,
                    ..ReportQuery::default()
                };
                assert_eq!(
                    kept.report_source(&q),
                    "usage_rollup_zone_day",
                    "{z:?} {q:?}"
                );
                assert_eq!(fallback.report_source(&q), "usage_rollup", "{z:?} {q:?}");
                let a = sorted(kept.usage_report(&q).await?);
                let b = sorted(fallback.usage_report(&q).await?);
                let want = brute_force(&records, z, &q);
                assert_eq!(a, want, "zone-day roll-up, {z:?} {q:?}");
                assert_eq!(b, want, "15-minute roll-up, {z:?} {q:?}");
                compared += 1;
            }
        }
        // A day that DST makes 23 or 25 hours long is one day in the report.
        let _ = tz;
    }
    assert!(compared > 200, "{compared} reports compared");

    // Dropping a zone from the setting drops its rows; its reports fall back (same results).
    kept.set_report_zones(&zones[1..]).await?;
    let q = ReportQuery {
        period: Some(Period::Day),
        zone: Some(zones[0].clone()),
        ..ReportQuery::default()
    };
    assert_eq!(kept.report_source(&q), "usage_rollup");
    assert_eq!(
        sorted(kept.usage_report(&q).await?),
        brute_force(&records, &zones[0], &q)
    );
    Ok(())
}

#[test]
fn zones_parse_and_know_their_day_starts() -> R {
    let ny = ReportZone::parse("America/New_York")?;
    assert_eq!(ny.key(), "America/New_York");
    assert_eq!(ReportZone::parse("+08:00")?.key(), "+08:00");
    assert_eq!(ReportZone::parse("UTC")?, ReportZone::UTC);
    assert_eq!(ReportZone::parse("-0530")?.key(), "-05:30");
    assert!(ReportZone::parse("Mars/Olympus_Mons").is_err());
    assert!(ReportZone::parse("+08:07").is_err());
    // 2026-03-08 is 23 hours long in New York; 2026-11-01 is 25.
    let mar7 = 20_519; // days since 1970 of 2026-03-07
    assert_eq!(ny.day_start_ms(mar7 + 1) - ny.day_start_ms(mar7), DAY);
    assert_eq!(
        ny.day_start_ms(mar7 + 2) - ny.day_start_ms(mar7 + 1),
        23 * 3_600_000
    );
    let oct31 = mar7 + 238;
    assert_eq!(
        ny.day_start_ms(oct31 + 2) - ny.day_start_ms(oct31 + 1),
        25 * 3_600_000
    );
    // Santiago: DST begins at midnight (2026-09-06), so that day starts at 01:00 local.
    let scl = ReportZone::parse("America/Santiago")?;
    let sep6 = 20_702;
    let start = scl.day_start_ms(sep6);
    assert_eq!(scl.local_day(start), sep6);
    assert_eq!(scl.local_day(start - 1), sep6 - 1);
    assert!(scl.is_day_start(start));
    Ok(())
}
