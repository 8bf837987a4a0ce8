//! Prometheus metrics: fixed-label counters and histograms on atomics (no lock on the hot path),
//! rendered in the text exposition format for `GET /metrics`.
//!
//! Labels are bounded on purpose: provider (the ten kinds + `none`), call status, error class (a
//! fixed list + `other`). Per-credential and per-model figures are in the admin health report.
//! The cost counters are the exception: they are labelled by model too, but a series exists only
//! once a call of that model cost something, which needs a price in the price book (so the label
//! set is bounded by the price book, not by what callers send).
//!
//! Costs are summed exactly (ledger units of 1e-10, `i128`) from the records the usage writer has
//! committed, in the writer's task before the callers are answered: a caller that saw the end of
//! its response finds its cost in `/metrics`, and the counters equal the sum of the committed
//! records. They become decimal text only when rendered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;
use rust_decimal::Decimal;

use crate::providers::ProviderKind;
use crate::store::commits::{BATCH_BUCKETS, COMMIT_US_BUCKETS, CommitStats};
use crate::store::{CallStatus, UsageRecord};

const NP: usize = ProviderKind::ALL.len() + 1;
const NONE: usize = ProviderKind::ALL.len();

fn provider_index(name: Option<&str>) -> usize {
    name.and_then(ProviderKind::from_name)
        .and_then(|k| ProviderKind::ALL.iter().position(|x| *x == k))
        .unwrap_or(NONE)
}

fn provider_label(i: usize) -> &'static str {
    ProviderKind::ALL.get(i).map_or("none", |k| k.name())
}

const STATUSES: [&str; 3] = ["success", "failed", "cancelled"];

fn status_index(s: CallStatus) -> usize {
    match s {
        CallStatus::Success => 0,
        CallStatus::Failed => 1,
        CallStatus::Cancelled => 2,
    }
}

/// Error classes with their own series; anything else is `other`.
const CLASSES: [&str; 27] = [
    "upstream_auth",
    "rate_limited",
    "upstream_quota",
    "invalid_request",
    "context_length",
    "not_found",
    "overloaded",
    "server_error",
    "timeout",
    "connect",
    "protocol",
    "unsupported",
    "stream_interrupted",
    "content_filter",
    "unauthenticated",
    "permission_denied",
    "model_not_found",
    "payload_too_large",
    "insufficient_credits",
    "upstream_error",
    "unavailable",
    "internal",
    "client_closed",
    "circuit_open",
    "credential_disabled",
    "deadline_exceeded",
    "other",
];

fn class_index(c: &str) -> usize {
    CLASSES
        .iter()
        .position(|x| *x == c)
        .unwrap_or(CLASSES.len() - 1)
}

const TOKEN_KINDS: [&str; 5] = [
    "prompt",
    "completion",
    "cache_read",
    "cache_write",
    "reasoning",
];

/// Bucket upper bounds in milliseconds.
const BUCKETS_MS: [u64; 14] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000,
];

struct Histogram {
    buckets: [AtomicU64; BUCKETS_MS.len()],
    sum_ms: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, ms: u64) {
        if let Some(i) = BUCKETS_MS.iter().position(|b| ms <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        write_histogram(
            out,
            name,
            labels,
            BUCKETS_MS.iter().map(|b| *b as f64 / 1000.0),
            self.buckets.iter().map(|b| b.load(Ordering::Relaxed)),
            self.count.load(Ordering::Relaxed),
            self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        );
    }
}

/// A metric's `# HELP` and `# TYPE` lines.
fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// A histogram's samples from per-bucket counts (`bounds` in order; what is above the last is
/// only in `count`): cumulative `_bucket` lines, `+Inf`, `_sum` and `_count`. `labels` is the
/// series' own labels, possibly empty.
fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: impl IntoIterator<Item = f64>,
    per_bucket: impl IntoIterator<Item = u64>,
    count: u64,
    sum: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cum = 0;
    for (b, n) in bounds.into_iter().zip(per_bucket) {
        cum += n;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braced = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braced} {sum}");
    let _ = writeln!(out, "{name}_count{braced} {count}");
}

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// Process-wide metrics of one hub.
pub struct Metrics {
    requests: [[AtomicU64; 3]; NP],
    errors: [AtomicU64; CLASSES.len()],
    latency: [Histogram; NP],
    ttft: [Histogram; NP],
    tokens: [[AtomicU64; TOKEN_KINDS.len()]; NP],
    /// Cost sums by billing mode, provider and model (see the module doc).
    costs: Mutex<BTreeMap<CostKey, CostSums>>,
    retries: [AtomicU64; NP],
    /// Upstream attempts by outcome (`ok`, `failed`).
    attempts: [[AtomicU64; 2]; NP],
    streams_in_flight: AtomicI64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| counters()),
            errors: counters(),
            latency: std::array::from_fn(|_| Histogram::new()),
            ttft: std::array::from_fn(|_| Histogram::new()),
            tokens: std::array::from_fn(|_| counters()),
            costs: Mutex::new(BTreeMap::new()),
            retries: counters(),
            attempts: std::array::from_fn(|_| counters()),
            streams_in_flight: AtomicI64::new(0),
        }
    }
}

/// Counts a stream as in flight until dropped.
pub(crate) struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.streams_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// One settled call (its usage record).
    pub fn observe_record(&self, r: &UsageRecord) {
        let p = provider_index(r.provider.as_deref());
        self.requests[p][status_index(r.status)].fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &r.error_class {
            self.errors[class_index(c)].fetch_add(1, Ordering::Relaxed);
        }
        self.latency[p].observe(r.latency_ms);
        if r.stream
            && let Some(t) = r.ttfb_ms
        {
            self.ttft[p].observe(t);
        }
        let t = &self.tokens[p];
        for (i, n) in [
            r.prompt_tokens,
            r.completion_tokens,
            r.cache_read_tokens,
            r.cache_write_tokens,
            r.reasoning_tokens,
        ]
        .into_iter()
        .enumerate()
        {
            if n > 0 {
                t[i].fetch_add(n, Ordering::Relaxed);
            }
        }
        if r.attempts > 1 {
            self.retries[p].fetch_add(u64::from(r.attempts - 1), Ordering::Relaxed);
        }
    }

    /// Records just committed by the usage writer: their costs (see the module doc).
    pub(crate) fn settled(&self, batch: &[UsageRecord]) {
        let mut costs = self.costs.lock();
        for r in batch {
            let reported = r
                .provider_cost
                .as_deref()
                .and_then(|c| c.trim().parse::<Decimal>().ok())
                .filter(|d| !d.is_zero());
            let b = &r.billing;
            if b.cost_units == 0 && b.provider_cost_units == 0 && reported.is_none() {
                continue;
            }
            let key = CostKey {
                mode: b.mode.clone().unwrap_or_else(|| "none".to_string()),
                provider: provider_label(provider_index(r.provider.as_deref())),
                model: r
                    .upstream_model
                    .clone()
                    .unwrap_or_else(|| r.requested_model.clone()),
            };
            let sums = costs.entry(key).or_default();
            sums.cost_units += i128::from(b.cost_units);
            sums.provider_cost_units += i128::from(b.provider_cost_units);
            if let Some(d) = reported {
                // A provider reporting an absurd amount must not take the writer down.
                sums.reported_usd = sums
                    .reported_usd
                    .checked_add(d)
                    .unwrap_or(sums.reported_usd);
            }
        }
    }

    /// One upstream attempt.
    pub(crate) fn observe_attempt(&self, provider: ProviderKind, ok: bool) {
        let p = provider_index(Some(provider.name()));
        self.attempts[p][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stream_started(self: &Arc<Self>) -> InFlight {
        self.streams_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn streams_in_flight(&self) -> i64 {
        self.streams_in_flight.load(Ordering::Relaxed)
    }

    /// The text exposition format. `open_circuits` = (providers, credentials) with an open breaker.
    pub fn render(&self, open_circuits: (u64, u64)) -> String {
        let mut o = String::with_capacity(16 * 1024);
        head(
            &mut o,
            "aigne_hub_requests_total",
            "counter",
            "Calls settled, by the provider that served them and outcome.",
        );
        for p in 0..NP {
            for (s, status) in STATUSES.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "aigne_hub_requests_total{{provider=\"{}\",status=\"{status}\"}} {}",
                    provider_label(p),
                    self.requests[p][s].load(Ordering::Relaxed)
                );
            }
        }
        head(
            &mut o,
            "aigne_hub_errors_total",
            "counter",
            "Failed or cancelled calls by error class.",
        );
        for (i, c) in CLASSES.iter().enumerate() {
            let _ = writeln!(
                o,
                "aigne_hub_errors_total{{class=\"{c}\"}} {}",
                self.errors[i].load(Ordering::Relaxed)
            );
        }
        head(
            &mut o,
            "aigne_hub_request_duration_seconds",
            "histogram",
            "Call latency, from receipt to settlement.",
        );
        for p in 0..NP {
            self.latency[p].render(
                &mut o,
                "aigne_hub_request_duration_seconds",
                &format!("provider=\"{}\"", provider_label(p)),
            );
        }
        head(
            &mut o,
            "aigne_hub_time_to_first_token_seconds",
            "histogram",
            "Streams: time until the first upstream event (incl. retries).",
        );
        for p in 0..NP {
            self.ttft[p].render(
                &mut o,
                "aigne_hub_time_to_first_token_seconds",
                &format!("provider=\"{}\"", provider_label(p)),
            );
        }
        head(
            &mut o,
            "aigne_hub_tokens_total",
            "counter",
            "Tokens metered, by provider and kind.",
        );
        for p in 0..NP {
            for (i, k) in TOKEN_KINDS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "aigne_hub_tokens_total{{provider=\"{}\",kind=\"{k}\"}} {}",
                    provider_label(p),
                    self.tokens[p][i].load(Ordering::Relaxed)
                );
            }
        }
        self.render_costs(&mut o);
        head(
            &mut o,
            "aigne_hub_retries_total",
            "counter",
            "Extra upstream attempts (fallbacks), by the provider that finally served.",
        );
        for p in 0..NP {
            let _ = writeln!(
                o,
                "aigne_hub_retries_total{{provider=\"{}\"}} {}",
                provider_label(p),
                self.retries[p].load(Ordering::Relaxed)
            );
        }
        head(
            &mut o,
            "aigne_hub_upstream_attempts_total",
            "counter",
            "Upstream attempts by provider and result.",
        );
        for p in 0..NONE {
            for (i, r) in ["ok", "failed"].iter().enumerate() {
                let _ = writeln!(
                    o,
                    "aigne_hub_upstream_attempts_total{{provider=\"{}\",result=\"{r}\"}} {}",
                    provider_label(p),
                    self.attempts[p][i].load(Ordering::Relaxed)
                );
            }
        }
        head(
            &mut o,
            "aigne_hub_open_circuits",
            "gauge",
            "Circuit breakers currently open or half-open.",
        );
        let _ = writeln!(
            o,
            "aigne_hub_open_circuits{{scope=\"provider\"}} {}",
            open_circuits.0
        );
        let _ = writeln!(
            o,
            "aigne_hub_open_circuits{{scope=\"credential\"}} {}",
            open_circuits.1
        );
        head(
            &mut o,
            "aigne_hub_streams_in_flight",
            "gauge",
            "Streams currently being delivered.",
        );
        let _ = writeln!(
            o,
            "aigne_hub_streams_in_flight {}",
            self.streams_in_flight()
        );
        o
    }

    fn render_costs(&self, o: &mut String) {
        let costs = self.costs.lock().clone();
        head(
            o,
            "aigne_hub_cost_total",
            "counter",
            "What the hub's calls cost, from the price book, as settled on their usage records: \
             credits charged in mode=\"credits\", the provider's list cost in USD in mode=\"internal\".",
        );
        for (k, v) in costs.iter().filter(|(_, v)| v.cost_units != 0) {
            let _ = writeln!(
                o,
                "aigne_hub_cost_total{{mode=\"{}\",provider=\"{}\",model=\"{}\"}} {}",
                escape(&k.mode),
                k.provider,
                escape(&k.model),
                units_text(v.cost_units)
            );
        }
        head(
            o,
            "aigne_hub_provider_cost_usd_total",
            "counter",
            "The providers' list cost of the hub's calls in USD (price book unit costs), in every billing mode.",
        );
        let mut provider_cost: BTreeMap<(&str, &str), i128> = BTreeMap::new();
        for (k, v) in &costs {
            *provider_cost.entry((k.provider, &k.model)).or_default() += v.provider_cost_units;
        }
        for ((p, m), units) in provider_cost.into_iter().filter(|(_, u)| *u != 0) {
            let _ = writeln!(
                o,
                "aigne_hub_provider_cost_usd_total{{provider=\"{p}\",model=\"{}\"}} {}",
                escape(m),
                units_text(units)
            );
        }
        head(
            o,
            "aigne_hub_provider_reported_cost_usd_total",
            "counter",
            "Cost the providers themselves reported (e.g. OpenRouter's usage.cost), in USD.",
        );
        let mut reported: BTreeMap<(&str, &str), Decimal> = BTreeMap::new();
        for (k, v) in &costs {
            let sum = reported.entry((k.provider, &k.model)).or_default();
            *sum = sum.checked_add(v.reported_usd).unwrap_or(*sum);
        }
        for ((p, m), usd) in reported.into_iter().filter(|(_, d)| !d.is_zero()) {
            let _ = writeln!(
                o,
                "aigne_hub_provider_reported_cost_usd_total{{provider=\"{p}\",model=\"{}\"}} {}",
                escape(m),
                usd.normalize()
            );
        }
    }
}

/// The hub's calls in flight: chat (plain and streamed), embeddings and images, from the call's
/// start to its settlement (a stream's until its meter drops).
pub fn render_calls_in_flight(o: &mut String, calls: usize) {
    head(
        o,
        "aigne_hub_calls_in_flight",
        "gauge",
        "Calls currently in flight (chat, streams, embeddings, images).",
    );
    let _ = writeln!(o, "aigne_hub_calls_in_flight {calls}");
}

/// The hot-path writer's group commits (`Store::commit_stats`), appended to the exposition:
/// commits, the calls and failed batches they carried, and two histograms, calls per commit and
/// seconds per commit.
pub fn render_commits(o: &mut String, s: &CommitStats) {
    head(
        o,
        "aigne_hub_store_commits_total",
        "counter",
        "Group commits of the durable usage log and the credit reservations (one transaction each).",
    );
    let _ = writeln!(o, "aigne_hub_store_commits_total {}", s.commits);
    head(
        o,
        "aigne_hub_store_inline_commits_total",
        "counter",
        "Of those commits, the ones a lone call's write made on its caller's thread, the store being idle.",
    );
    let _ = writeln!(
        o,
        "aigne_hub_store_inline_commits_total {}",
        s.inline_commits
    );
    head(
        o,
        "aigne_hub_store_committed_total",
        "counter",
        "What those commits wrote: usage records, and reservation requests answered.",
    );
    let _ = writeln!(
        o,
        "aigne_hub_store_committed_total{{kind=\"usage_record\"}} {}",
        s.usage_records
    );
    let _ = writeln!(
        o,
        "aigne_hub_store_committed_total{{kind=\"reservation\"}} {}",
        s.reservations
    );
    head(
        o,
        "aigne_hub_store_failed_batches_total",
        "counter",
        "Batches answered with an error; their transaction rolled back.",
    );
    let _ = writeln!(
        o,
        "aigne_hub_store_failed_batches_total {}",
        s.failed_batches
    );
    let calls = s.usage_records + s.reservations;
    head(
        o,
        "aigne_hub_store_commit_calls",
        "histogram",
        "Calls (usage records plus reservations) per group commit.",
    );
    write_histogram(
        o,
        "aigne_hub_store_commit_calls",
        "",
        BATCH_BUCKETS.iter().map(|b| *b as f64),
        s.batch.iter().copied(),
        s.commits,
        calls as f64,
    );
    head(
        o,
        "aigne_hub_store_commit_seconds",
        "histogram",
        "Time from a group commit's BEGIN to its COMMIT.",
    );
    write_histogram(
        o,
        "aigne_hub_store_commit_seconds",
        "",
        COMMIT_US_BUCKETS.iter().map(|us| *us as f64 / 1e6),
        s.commit_us.iter().copied(),
        s.commits,
        s.commit_us_sum as f64 / 1e6,
    );
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CostKey {
    mode: String,
    provider: &'static str,
    model: String,
}

#[derive(Debug, Clone, Default)]
struct CostSums {
    /// Ledger units (1e-10) of `Billing::cost_units`.
    cost_units: i128,
    /// Ledger units (1e-10 USD) of `Billing::provider_cost_units`.
    provider_cost_units: i128,
    /// `UsageRecord::provider_cost`, summed.
    reported_usd: Decimal,
}

/// Ledger units as exact decimal text (`1234500000` -> `0.12345`).
fn units_text(units: i128) -> String {
    match Decimal::try_from_i128_with_scale(units, crate::pricing::DP) {
        Ok(d) => d.normalize().to_string(),
        // Beyond 96 bits (about 7.9e18 credits): only then a float.
        Err(_) => format!("{:e}", units as f64 / 1e10),
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new();
        h.observe(10);
        h.observe(300);
        h.observe(10_000_000);
        let mut s = String::new();
        h.render(&mut s, "x", "p=\"a\"");
        assert!(s.contains("x_bucket{p=\"a\",le=\"0.025\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{p=\"a\",le=\"0.5\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{p=\"a\",le=\"600\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{p=\"a\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{p=\"a\"} 3\n"), "{s}");
    }

    fn record(
        mode: &str,
        provider: &str,
        model: &str,
        cost: i64,
        provider_cost: i64,
    ) -> UsageRecord {
        UsageRecord {
            id: "r".into(),
            created_at_ms: 0,
            client_request_id: None,
            principal: "k".into(),
            user_id: "u".into(),
            team_id: None,
            app: None,
            ingress: "openai".into(),
            endpoint: "chat".into(),
            requested_model: model.into(),
            provider: Some(provider.into()),
            credential: None,
            upstream_model: Some(model.into()),
            stream: false,
            prompt_tokens: 0,
            completion_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            images: 0,
            estimated: false,
            latency_ms: 0,
            ttfb_ms: None,
            status: CallStatus::Success,
            http_status: 200,
            error_class: None,
            error_message: None,
            provider_cost: None,
            attempts: 1,
            billing: crate::store::Billing {
                mode: Some(mode.into()),
                cost_units: cost,
                provider_cost_units: provider_cost,
                ..Default::default()
            },
        }
    }

    #[test]
    fn costs_are_summed_exactly_and_rendered_as_decimals() {
        let m = Metrics::default();
        // 0.1 + 0.2 credits: exact, unlike f64.
        m.settled(&[
            record("credits", "openai", "gpt-4o", 1_000_000_000, 3),
            record("credits", "openai", "gpt-4o", 2_000_000_000, 4),
            record("internal", "anthropic", "claude-\"x\"", 5, 5),
            record("credits", "openai", "free-model", 0, 0),
        ]);
        let mut reported = record("credits", "openrouter", "openai/gpt-4o", 0, 0);
        reported.provider_cost = Some("0.000123".into());
        m.settled(&[reported]);
        let s = m.render((0, 0));
        assert!(
            s.contains(
                "aigne_hub_cost_total{mode=\"credits\",provider=\"openai\",model=\"gpt-4o\"} 0.3\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("aigne_hub_cost_total{mode=\"internal\",provider=\"anthropic\",model=\"claude-\\\"x\\\"\"} 0.0000000005\n"),
            "{s}"
        );
        assert!(
            s.contains("aigne_hub_provider_cost_usd_total{provider=\"openai\",model=\"gpt-4o\"} 0.0000000007\n"),
            "{s}"
        );
        assert!(
            s.contains("aigne_hub_provider_reported_cost_usd_total{provider=\"openrouter\",model=\"openai/gpt-4o\"} 0.000123\n"),
            "{s}"
        );
        assert!(
            !s.contains("free-model"),
            "a call that cost nothing adds no series: {s}"
        );
    }

    #[test]
    fn commit_histograms_are_cumulative_with_their_sums() {
        let c = crate::store::commits::CommitCounters::default();
        c.committed(1, 0, 40);
        c.committed(3, 2, 120);
        c.committed(10, 6, 3_000);
        c.committed(0, 1, 30);
        c.inline();
        c.failed(1);
        let mut o = String::new();
        render_commits(&mut o, &c.read());
        for line in [
            "aigne_hub_store_commits_total 4",
            "aigne_hub_store_inline_commits_total 1",
            "aigne_hub_store_committed_total{kind=\"usage_record\"} 14",
            "aigne_hub_store_committed_total{kind=\"reservation\"} 9",
            "aigne_hub_store_failed_batches_total 1",
            "aigne_hub_store_commit_calls_bucket{le=\"1\"} 2",
            "aigne_hub_store_commit_calls_bucket{le=\"4\"} 2",
            "aigne_hub_store_commit_calls_bucket{le=\"8\"} 3",
            "aigne_hub_store_commit_calls_bucket{le=\"16\"} 4",
            "aigne_hub_store_commit_calls_bucket{le=\"+Inf\"} 4",
            "aigne_hub_store_commit_calls_sum 23",
            "aigne_hub_store_commit_calls_count 4",
            "aigne_hub_store_commit_seconds_bucket{le=\"0.00005\"} 2",
            "aigne_hub_store_commit_seconds_bucket{le=\"0.00025\"} 3",
            "aigne_hub_store_commit_seconds_bucket{le=\"0.001\"} 3",
            "aigne_hub_store_commit_seconds_bucket{le=\"0.005\"} 4",
            "aigne_hub_store_commit_seconds_sum 0.00319",
            "aigne_hub_store_commit_seconds_count 4",
            "# TYPE aigne_hub_store_commit_seconds histogram",
        ] {
            assert!(o.lines().any(|l| l == line), "no `{line}` in\n{o}");
        }
    }

    #[test]
    fn in_flight_guard_decrements() {
        let m = Arc::new(Metrics::default());
        {
            let _a = m.stream_started();
            let _b = m.stream_started();
            assert_eq!(m.streams_in_flight(), 2);
        }
        assert_eq!(m.streams_in_flight(), 0);
    }
}
