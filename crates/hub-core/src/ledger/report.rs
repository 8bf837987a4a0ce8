//! Usage and cost reports (from the roll-up table the usage writer maintains in the same commit
//! as each record), the caller's quota, and CSV export.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{AccountBalance, LedgerEntry};
use crate::pricing::from_units;
use crate::store::UsageRecord;

/// Roll-up bucket width: 15 minutes, so every real time-zone offset (all are multiples of 15
/// minutes) groups days and months exactly.
pub const BUCKET_MS: i64 = 15 * 60 * 1000;

/// A dimension to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dim {
    User,
    Team,
    App,
    Provider,
    Model,
}

impl Dim {
    pub fn parse(s: &str) -> Option<Dim> {
        Some(match s.trim() {
            "user" => Dim::User,
            "team" => Dim::Team,
            "app" => Dim::App,
            "provider" => Dim::Provider,
            "model" => Dim::Model,
            _ => return None,
        })
    }

    pub fn column(self) -> &'static str {
        match self {
            Dim::User => "user_id",
            Dim::Team => "team_id",
            Dim::App => "app",
            Dim::Provider => "provider",
            Dim::Model => "model",
        }
    }
}

/// A time grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        Some(match s.trim() {
            "hour" => Period::Hour,
            "day" => Period::Day,
            "month" => Period::Month,
            _ => return None,
        })
    }

    /// strftime pattern of a period label.
    pub fn pattern(self) -> &'static str {
        match self {
            Period::Hour => "%Y-%m-%dT%H:00",
            Period::Day => "%Y-%m-%d",
            Period::Month => "%Y-%m",
        }
    }
}

/// Parses a UTC offset: `UTC`, `Z`, `+08:00`, `-0530`, `+8` (signed: hours[:minutes]), or an
/// unsigned number of minutes east of UTC (`480`).
pub fn parse_tz_offset(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("utc") || t == "Z" || t.is_empty() {
        return Ok(0);
    }
    let bad = || format!("`{s}` is not a UTC offset like +08:00, -05:30 or UTC");
    let minutes = if let Some(rest) = t.strip_prefix(['+', '-']) {
        let sign = if t.starts_with('-') { -1 } else { 1 };
        let (h, m) = match rest.split_once(':') {
            Some((h, m)) => (h, m),
            None if rest.len() == 4 => rest.split_at(2),
            None => (rest, "0"),
        };
        let h: i32 = h.parse().map_err(|_| bad())?;
        let m: i32 = m.parse().map_err(|_| bad())?;
        if !(0..60).contains(&m) {
            return Err(bad());
        }
        sign * (h * 60 + m)
    } else {
        t.parse::<i32>().map_err(|_| bad())?
    };
    if minutes.abs() > 14 * 60 || minutes % 15 != 0 {
        return Err(format!(
            "{} (offsets are multiples of 15 minutes, at most ±14:00)",
            bad()
        ));
    }
    Ok(minutes)
}

/// One day, milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// A report time zone: a fixed UTC offset (`+08:00`, `UTC`) or an IANA zone (`Asia/Shanghai`,
/// `America/New_York`) whose offset follows its daylight-saving rules (jiff's tz database).
#[derive(Clone, PartialEq, Eq)]
pub enum ReportZone {
    /// Minutes east of UTC.
    Fixed(i32),
    Named(String, jiff::tz::TimeZone),
}

impl std::fmt::Debug for ReportZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

impl Default for ReportZone {
    fn default() -> Self {
        ReportZone::Fixed(0)
    }
}

impl std::str::FromStr for ReportZone {
    type Err = String;
    fn from_str(s: &str) -> Result<ReportZone, String> {
        ReportZone::parse(s)
    }
}

impl Serialize for ReportZone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.key())
    }
}

impl<'de> Deserialize<'de> for ReportZone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ReportZone, D::Error> {
        let s = String::deserialize(d)?;
        ReportZone::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl ReportZone {
    pub const UTC: ReportZone = ReportZone::Fixed(0);

    /// `UTC`, a UTC offset (see `parse_tz_offset`), or an IANA time zone name.
    pub fn parse(s: &str) -> Result<ReportZone, String> {
        let t = s.trim();
        if let Ok(m) = parse_tz_offset(t) {
            return Ok(ReportZone::Fixed(m));
        }
        if t.starts_with(['+', '-']) || t.chars().all(|c| c.is_ascii_digit()) {
            return parse_tz_offset(t).map(ReportZone::Fixed);
        }
        match jiff::tz::TimeZone::get(t) {
            Ok(tz) => Ok(ReportZone::Named(
                tz.iana_name().unwrap_or(t).to_string(),
                tz,
            )),
            Err(_) => Err(format!(
                "`{s}` is not a time zone: use an IANA name (Europe/Paris, America/New_York) or a UTC offset (+08:00, UTC)"
            )),
        }
    }

    /// Its canonical name: `UTC`, `+08:00`, `-05:30`, or the IANA name.
    pub fn key(&self) -> String {
        match self {
            ReportZone::Fixed(0) => "UTC".to_string(),
            ReportZone::Fixed(m) => {
                let sign = if *m < 0 { '-' } else { '+' };
                format!("{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60)
            }
            ReportZone::Named(name, _) => name.clone(),
        }
    }

    pub fn is_utc(&self) -> bool {
        *self == ReportZone::UTC
    }

    /// Offset from UTC at an instant, milliseconds.
    pub fn offset_ms_at(&self, utc_ms: i64) -> i64 {
        match self {
            ReportZone::Fixed(m) => i64::from(*m) * 60_000,
            ReportZone::Named(_, tz) => match jiff::Timestamp::from_millisecond(utc_ms) {
                Ok(ts) => i64::from(tz.to_offset(ts).seconds()) * 1000,
                Err(_) => 0,
            },
        }
    }

    /// The local date of an instant, as days since 1970-01-01.
    pub fn local_day(&self, utc_ms: i64) -> i64 {
        (utc_ms + self.offset_ms_at(utc_ms)).div_euclid(DAY_MS)
    }

    /// The first instant of a local date (days since 1970-01-01): local midnight, or the end of
    /// a daylight-saving gap that swallows midnight.
    pub fn day_start_ms(&self, local_day: i64) -> i64 {
        match self {
            ReportZone::Fixed(m) => local_day * DAY_MS - i64::from(*m) * 60_000,
            ReportZone::Named(_, tz) => {
                let (y, m, d) = civil_from_days(local_day);
                let zoned = i16::try_from(y)
                    .ok()
                    .and_then(|y| jiff::civil::Date::new(y, m as i8, d as i8).ok())
                    .and_then(|date| date.to_zoned_datetime(tz.clone()).ok());
                match zoned {
                    Some(z) => z.timestamp().as_millisecond(),
                    None => local_day * DAY_MS,
                }
            }
        }
    }

    /// The instant of a local wall-clock time (milliseconds since 1970 as if the wall clock
    /// were UTC). A time skipped by a DST gap maps past the gap, a repeated one to its first
    /// occurrence (RFC 5545 "compatible").
    pub fn from_wall_ms(&self, wall_ms: i64) -> i64 {
        match self {
            ReportZone::Fixed(m) => wall_ms - i64::from(*m) * 60_000,
            ReportZone::Named(_, tz) => {
                let day = wall_ms.div_euclid(DAY_MS);
                let (y, m, d) = civil_from_days(day);
                let ms = wall_ms.rem_euclid(DAY_MS);
                let zoned = i16::try_from(y).ok().and_then(|y| {
                    jiff::civil::DateTime::new(
                        y,
                        m as i8,
                        d as i8,
                        (ms / 3_600_000) as i8,
                        (ms / 60_000 % 60) as i8,
                        (ms / 1000 % 60) as i8,
                        (ms % 1000 * 1_000_000) as i32,
                    )
                    .ok()?
                    .to_zoned_datetime(tz.clone())
                    .ok()
                });
                zoned.map_or(wall_ms, |z| z.timestamp().as_millisecond())
            }
        }
    }

    /// Whether an instant is the first instant of its local day.
    pub fn is_day_start(&self, utc_ms: i64) -> bool {
        self.day_start_ms(self.local_day(utc_ms)) == utc_ms
    }

    /// The zone's offsets over `[from_ms, to_ms)`: `(start, offset_ms)` pieces, the first
    /// starting at `from_ms`, each in force until the next one starts.
    pub fn offsets_between(&self, from_ms: i64, to_ms: i64) -> Vec<(i64, i64)> {
        let mut out = vec![(from_ms, self.offset_ms_at(from_ms))];
        if let ReportZone::Named(_, tz) = self
            && let Ok(start) = jiff::Timestamp::from_millisecond(from_ms)
        {
            for t in tz.following(start) {
                let at = t.timestamp().as_millisecond();
                if at >= to_ms {
                    break;
                }
                let off = i64::from(t.offset().seconds()) * 1000;
                if out.last().is_some_and(|(_, o)| *o != off) {
                    out.push((at, off));
                }
            }
        }
        out
    }

    /// Whether every offset and transition over `[from_ms, to_ms)` falls on the 15-minute grid of
    /// the roll-up (true of every zone's rules since the 1970s), so that its 15-minute buckets
    /// group into this zone's days exactly.
    pub fn fits_buckets(&self, from_ms: i64, to_ms: i64) -> bool {
        self.offsets_between(from_ms, to_ms)
            .iter()
            .enumerate()
            .all(|(i, (at, off))| off % BUCKET_MS == 0 && (i == 0 || at % BUCKET_MS == 0))
    }
}

/// SQL: the zone's offset (ms) at `col`, a CASE over the pieces of `offsets_between`.
pub fn offset_sql(pieces: &[(i64, i64)], col: &str) -> String {
    match pieces {
        [] => "0".to_string(),
        [(_, off)] => off.to_string(),
        _ => {
            let mut s = String::from("CASE");
            for w in pieces.windows(2) {
                s.push_str(&format!(" WHEN {col} < {} THEN {}", w[1].0, w[0].1));
            }
            let last = pieces.last().map_or(0, |p| p.1);
            s.push_str(&format!(" ELSE {last} END"));
            s
        }
    }
}

/// A report over the roll-ups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportQuery {
    pub group_by: Vec<Dim>,
    pub period: Option<Period>,
    /// Offset of the caller's time zone from UTC, minutes (used when `zone` is absent).
    pub tz_offset_minutes: i32,
    /// The caller's time zone (IANA name or offset, DST-correct); overrides `tz_offset_minutes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ReportZone>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub app: Option<String>,
}

impl ReportQuery {
    /// The zone periods and day bounds are read in.
    pub fn zone(&self) -> ReportZone {
        self.zone
            .clone()
            .unwrap_or(ReportZone::Fixed(self.tz_offset_minutes))
    }
}

/// One group of a report (the totals row has every key `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    pub period: Option<String>,
    /// Values of `group_by`, in order (`""` where absent).
    pub keys: Vec<String>,
    pub calls: i64,
    pub success_calls: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub images: i64,
    pub cost_units: i64,
    pub provider_cost_units: i64,
}

impl ReportRow {
    pub fn add(&mut self, o: &ReportRow) {
        self.calls += o.calls;
        self.success_calls += o.success_calls;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.images += o.images;
        self.cost_units += o.cost_units;
        self.provider_cost_units += o.provider_cost_units;
    }
}

/// The sum of report rows.
pub fn totals(rows: &[ReportRow]) -> ReportRow {
    let mut t = ReportRow::default();
    for r in rows {
        t.add(r);
    }
    t
}

/// Raw records to export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageFilter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub app: Option<String>,
    pub limit: Option<u32>,
    /// Keyset paging: only records after this `(created_at_ms, id)`, in the export order
    /// (`created_at_ms`, then `id`).
    #[serde(default)]
    pub after: Option<(i64, String)>,
}

/// A caller's quota (the original's `/usage/quota`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Everything ever granted (grants, starter, positive adjustments).
    pub total: Decimal,
    /// Everything charged.
    pub used: Decimal,
    /// Available now (reserved in-flight amounts excluded).
    pub remaining: Decimal,
    /// `remaining` / average daily spend over the last 30 days; `None` when nothing was spent.
    pub estimated_days_remaining: Option<Decimal>,
}

/// Quota from an account's entries and its recent spend.
pub fn quota(
    balance: Option<&AccountBalance>,
    entries: &[LedgerEntry],
    spent_last_30d: i64,
) -> Quota {
    let total: i64 = entries
        .iter()
        .filter(|e| {
            matches!(e.kind.as_str(), "grant" | "starter" | "adjust") && e.available_delta > 0
        })
        .map(|e| e.available_delta)
        .sum();
    let used: i64 = entries.iter().map(|e| e.charged).sum();
    let remaining = balance.map_or(0, |b| b.available);
    let estimated_days_remaining = (spent_last_30d > 0).then(|| {
        let per_day = from_units(spent_last_30d) / Decimal::from(30);
        (from_units(remaining) / per_day).round_dp(1)
    });
    Quota {
        total: from_units(total),
        used: from_units(used),
        remaining: from_units(remaining),
        estimated_days_remaining,
    }
}

/// One CSV field, RFC 4180: quoted when it holds a comma, quote, CR or LF; quotes doubled. A
/// field starting with `=`, `+`, `-`, `@` (spreadsheet formula) is prefixed with `'` so opening
/// the export cannot run a formula a caller planted in, say, an app name.
pub fn csv_field(s: &str) -> String {
    let guarded;
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err() {
        guarded = format!("'{s}");
        guarded.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One CSV line (CRLF-terminated, as RFC 4180).
pub fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut out = fields
        .iter()
        .map(|f| csv_field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    out
}

/// Header of the usage export.
pub const EXPORT_HEADER: &[&str] = &[
    "timestamp_ms",
    "request_id",
    "user_id",
    "team_id",
    "app",
    "endpoint",
    "requested_model",
    "provider",
    "upstream_model",
    "status",
    "http_status",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "images",
    "estimated",
    "billing_mode",
    "price_version",
    "cost",
    "provider_cost",
    "latency_ms",
];

/// One export line for a record.
pub fn export_line(r: &UsageRecord) -> String {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    csv_line(&[
        r.created_at_ms.to_string(),
        r.id.clone(),
        r.user_id.clone(),
        s(&r.team_id),
        s(&r.app),
        r.endpoint.clone(),
        r.requested_model.clone(),
        s(&r.provider),
        s(&r.upstream_model),
        r.status.as_str().to_string(),
        r.http_status.to_string(),
        r.prompt_tokens.to_string(),
        r.completion_tokens.to_string(),
        r.cache_read_tokens.to_string(),
        r.cache_write_tokens.to_string(),
        r.images.to_string(),
        r.estimated.to_string(),
        s(&r.billing.mode),
        r.billing
            .price_version
            .map(|v| v.to_string())
            .unwrap_or_default(),
        from_units(r.billing.cost_units).to_string(),
        from_units(r.billing.provider_cost_units).to_string(),
        r.latency_ms.to_string(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_escapes_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-12.5"), "-12.5");
        assert_eq!(csv_line(&["a", "b,c", ""]), "a,\"b,c\",\r\n");
    }

    #[test]
    fn tz_offsets_parse() {
        assert_eq!(parse_tz_offset("UTC"), Ok(0));
        assert_eq!(parse_tz_offset("+08:00"), Ok(480));
        assert_eq!(parse_tz_offset("-05:30"), Ok(-330));
        assert_eq!(parse_tz_offset("+0545"), Ok(345));
        assert_eq!(parse_tz_offset("+8"), Ok(480));
        assert_eq!(parse_tz_offset("480"), Ok(480), "unsigned: minutes");
        assert!(parse_tz_offset("+08:07").is_err());
        assert!(parse_tz_offset("+15:00").is_err());
        assert!(parse_tz_offset("Europe/Paris").is_err());
    }

    #[test]
    fn quota_projects_days_left() {
        let grant = LedgerEntry {
            id: 1,
            account: "user:u".into(),
            kind: "grant".into(),
            available_delta: 100 * crate::pricing::UNITS_PER_CREDIT,
            reserved_delta: 0,
            charged: 0,
            request_id: None,
            idem_key: "g".into(),
            expires_at_ms: None,
            note: None,
            created_at_ms: 0,
        };
        let mut cap = grant.clone();
        cap.id = 2;
        cap.kind = "capture".into();
        cap.available_delta = -40 * crate::pricing::UNITS_PER_CREDIT;
        cap.charged = 40 * crate::pricing::UNITS_PER_CREDIT;
        let bal = AccountBalance {
            account: "user:u".into(),
            available: 60 * crate::pricing::UNITS_PER_CREDIT,
            reserved: 0,
        };
        let q = quota(
            Some(&bal),
            &[grant, cap],
            30 * crate::pricing::UNITS_PER_CREDIT,
        );
        assert_eq!(q.total, Decimal::from(100));
        assert_eq!(q.used, Decimal::from(40));
        assert_eq!(q.remaining, Decimal::from(60));
        assert_eq!(q.estimated_days_remaining, Some(Decimal::from(60)));
    }
}
