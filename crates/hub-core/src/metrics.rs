//! Prometheus metrics: fixed-label counters and histograms on atomics (no lock on the hot path),
//! rendered in the text exposition format for `GET /metrics`.
//!
//! Labels are bounded on purpose: provider (the ten kinds + `none`), call status, error class (a
//! fixed list + `other`). Per-credential and per-model figures are in the admin health report.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::providers::ProviderKind;
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
        let mut cum = 0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            cum += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{}\"}} {cum}",
                *b as f64 / 1000.0
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
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
    /// Provider-reported cost, in billionths of a USD.
    provider_cost_nano: [AtomicU64; NP],
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
            provider_cost_nano: counters(),
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
        if let Some(cost) = r
            .provider_cost
            .as_deref()
            .and_then(|c| c.parse::<f64>().ok())
            && cost.is_finite()
            && cost > 0.0
        {
            self.provider_cost_nano[p].fetch_add((cost * 1e9) as u64, Ordering::Relaxed);
        }
        if r.attempts > 1 {
            self.retries[p].fetch_add(u64::from(r.attempts - 1), Ordering::Relaxed);
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
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
        };
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
        head(
            &mut o,
            "aigne_hub_provider_cost_usd_total",
            "counter",
            "Cost reported by providers that report one (e.g. OpenRouter), in USD.",
        );
        for p in 0..NP {
            let _ = writeln!(
                o,
                "aigne_hub_provider_cost_usd_total{{provider=\"{}\"}} {}",
                provider_label(p),
                self.provider_cost_nano[p].load(Ordering::Relaxed) as f64 / 1e9
            );
        }
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
