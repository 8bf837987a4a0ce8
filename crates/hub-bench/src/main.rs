//! `hub-bench`: the load clients `scripts/bench` needs beyond wrk.
//!
//! - `stream`: C workers each send streaming chat requests back to back for a fixed time and time
//!   every one: time to first body byte, total time, and the gaps between SSE events as they
//!   arrive (the pacing the caller sees). Prints one JSON object of percentiles (µs).
//! - `hold`: opens N long streams at once, waits until every one has its first byte, then samples
//!   the hub's RSS and CPU (from /proc/<pid>) for a window while they are all open, and reports.
//!
//! - `store`: a billed call's two database writes (reservation, usage record with settlement and
//!   roll-ups) through hub-core's own writers, without HTTP (`store.rs`).
//!
//! Only ever talks to the URL it is given (scripts/bench gives 127.0.0.1).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use futures::StreamExt as _;
use serde_json::{Value, json};

mod store;

#[derive(Parser, Debug)]
#[command(name = "hub-bench", about = "Streaming load clients for scripts/bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Back-to-back streaming requests from C workers; TTFB, total and pacing percentiles.
    Stream(StreamArgs),
    /// N long streams open at once; the hub's RSS and CPU while they are open.
    Hold(HoldArgs),
    /// Exactly N requests (for instruction counts under callgrind), C at a time.
    Count(CountArgs),
    /// A billed call's database writes without HTTP: calls/s, CPU and bytes written per call.
    Store(store::StoreArgs),
}

#[derive(Args, Debug)]
struct CountArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Streaming requests instead of plain JSON ones.
    #[arg(long)]
    stream: bool,
}

#[derive(Args, Debug, Clone)]
struct Target {
    /// Chat completions URL (hub or mock).
    #[arg(long)]
    url: String,
    /// Bearer key.
    #[arg(long, default_value = "sk-test")]
    key: String,
    /// A file of bearer keys, one per line, used in turn instead of `--key` (many users' calls,
    /// as a shared hub sees them: each user's limits, balance and roll-ups are its own).
    #[arg(long)]
    keys_file: Option<std::path::PathBuf>,
    /// The keys read from `keys_file` (or `key` alone).
    #[arg(skip)]
    keys: Vec<String>,
    /// Model to ask for.
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
}

#[derive(Args, Debug)]
struct StreamArgs {
    #[command(flatten)]
    target: Target,
    /// Concurrent workers (one connection each, kept alive).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds to run (after one warm-up request per worker).
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
}

#[derive(Args, Debug)]
struct HoldArgs {
    #[command(flatten)]
    target: Target,
    /// Streams to hold open at once.
    #[arg(long, default_value_t = 5000)]
    streams: usize,
    /// Pid of the hub to sample.
    #[arg(long)]
    hub_pid: u32,
    /// Seconds to sample once every stream is open.
    #[arg(long, default_value_t = 10.0)]
    window_s: f64,
    /// Give up waiting for all streams to open after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    open_timeout_s: f64,
    /// A file to create once every stream is open (or the open timeout passed), so a script can
    /// load the hub while the streams are open (scripts/bench, scenario 7).
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
}

fn client(max_conns: usize) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_conns)
        .pool_idle_timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| format!("http client: {e}"))
}

fn body(model: &str) -> Vec<u8> {
    chat_body(model, true)
}

fn chat_body(model: &str, stream: bool) -> Vec<u8> {
    let mut body = json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello."}],
    });
    if stream {
        // The hub always asks its upstream for the usage chunk (it meters every stream); asking
        // for it here too makes the mock send the same events to both targets, so a stream's
        // total time through the hub and directly compare like for like (without it the hub's
        // upstream stream is one paced event longer than the direct one).
        body["stream_options"] = json!({"include_usage": true});
    }
    body.to_string().into_bytes()
}

/// One non-streaming request, read to the end.
impl Target {
    /// Reads `keys_file` (when given) into `keys`.
    fn load_keys(&mut self) -> Result<(), String> {
        self.keys = match &self.keys_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            None => vec![self.key.clone()],
        };
        if self.keys.is_empty() {
            return Err("the keys file holds no key".to_string());
        }
        Ok(())
    }

    /// The key of the `n`th request: the keys in turn.
    fn key(&self, n: usize) -> &str {
        &self.keys[n % self.keys.len()]
    }
}

async fn one_plain(
    http: &reqwest::Client,
    t: &Target,
    n: usize,
    body: &[u8],
) -> Result<(), String> {
    let resp = http
        .post(&t.url)
        .bearer_auth(t.key(n))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&text)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    Ok(())
}

async fn run_count(a: CountArgs) -> Result<Value, String> {
    let http = client(a.concurrency)?;
    let body = Arc::new(chat_body(&a.target.model, a.stream));
    let target = Arc::new(a.target);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(a.concurrency);
    for _ in 0..a.concurrency.max(1) {
        let (http, target, body, next) = (http.clone(), target.clone(), body.clone(), next.clone());
        let (n, stream) = (a.requests, a.stream);
        workers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = if stream {
                    one_stream(&http, &target, i, &body, || {})
                        .await
                        .map(|_| ())
                } else {
                    one_plain(&http, &target, i, &body).await
                };
                if let Err(e) = r {
                    errors.push(e);
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for w in workers {
        errors.extend(w.await.map_err(|e| format!("worker: {e}"))?);
    }
    Ok(json!({
        "requests": a.requests,
        "seconds": started.elapsed().as_secs_f64(),
        "errors": errors.len(),
        "first_error": errors.first(),
    }))
}

/// One stream, timed.
#[derive(Debug, Default)]
struct Timing {
    ttfb_us: u64,
    total_us: u64,
    /// Gaps between arrivals that carried at least one complete SSE event.
    gaps_us: Vec<u64>,
    events: usize,
}

/// Sends one streaming request and reads it to the end. `on_first_byte` runs once.
async fn one_stream(
    http: &reqwest::Client,
    t: &Target,
    n: usize,
    body: &[u8],
    on_first_byte: impl FnOnce(),
) -> Result<Timing, String> {
    let t0 = Instant::now();
    let resp = http
        .post(&t.url)
        .bearer_auth(t.key(n))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        return Err(format!(
            "status {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    let mut body = resp.bytes_stream();
    let mut timing = Timing::default();
    let mut first = Some(on_first_byte);
    let mut last_event: Option<Instant> = None;
    let mut prev_byte = 0u8;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let now = Instant::now();
        let chunk = chunk.map_err(|e| format!("body: {e}"))?;
        if let Some(f) = first.take() {
            timing.ttfb_us = micros(now - t0);
            f();
        }
        // Count event terminators ("\n\n"), including one split across two reads.
        let mut n = 0;
        for &b in chunk.iter() {
            if b == b'\n' && prev_byte == b'\n' {
                n += 1;
            }
            prev_byte = b;
        }
        if n > 0 {
            if let Some(l) = last_event {
                timing.gaps_us.push(micros(now - l));
            }
            last_event = Some(now);
            timing.events += n;
        }
        tail.extend_from_slice(&chunk[chunk.len().saturating_sub(32)..]);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 32);
        }
    }
    timing.total_us = micros(t0.elapsed());
    if !String::from_utf8_lossy(&tail).contains("[DONE]") {
        return Err("stream ended without [DONE]".to_string());
    }
    Ok(timing)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// p50/p90/p99/p99.9/max of a sample, in µs.
fn percentiles(mut v: Vec<u64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)]
    };
    json!({
        "n": v.len(),
        "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999),
        "max": v[v.len() - 1],
    })
}

async fn run_stream(a: StreamArgs) -> Result<Value, String> {
    let http = client(a.concurrency)?;
    let body = Arc::new(body(&a.target.model));
    let target = Arc::new(a.target);
    // Warm-up: one request per worker opens its connection.
    let warm = futures::future::join_all(
        (0..a.concurrency).map(|w| one_stream(&http, &target, w, &body, || {})),
    )
    .await;
    if let Some(Err(e)) = warm.into_iter().find(Result::is_err) {
        return Err(format!("warm-up failed: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration_s);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(a.concurrency);
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..a.concurrency {
        let (http, target, body, next) = (http.clone(), target.clone(), body.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut errors = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match one_stream(&http, &target, i, &body, || {}).await {
                    Ok(t) => done.push(t),
                    Err(e) => errors.push(e),
                }
            }
            (done, errors)
        }));
    }
    let (mut ttfb, mut total, mut gaps, mut errors) = (vec![], vec![], vec![], vec![]);
    let mut events = 0usize;
    for w in workers {
        let (done, errs) = w.await.map_err(|e| format!("worker: {e}"))?;
        for t in done {
            ttfb.push(t.ttfb_us);
            total.push(t.total_us);
            events += t.events;
            gaps.extend(t.gaps_us);
        }
        errors.extend(errs);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let streams = ttfb.len();
    Ok(json!({
        "concurrency": a.concurrency,
        "seconds": elapsed,
        "streams": streams,
        "streams_per_s": streams as f64 / elapsed,
        "events_per_stream": if streams > 0 { events as f64 / streams as f64 } else { 0.0 },
        "errors": errors.len(),
        "first_error": errors.first(),
        "ttfb_us": percentiles(ttfb),
        "total_us": percentiles(total),
        "gap_us": percentiles(gaps),
    }))
}

/// utime+stime (clock ticks) and VmRSS / VmHWM (kB) of a process.
struct ProcSample {
    cpu_ticks: u64,
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
}

fn proc_sample(pid: u32) -> Result<ProcSample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let field = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        cpu_ticks: field(14) + field(15),
        rss_kb: kb("VmRSS:"),
        hwm_kb: kb("VmHWM:"),
        threads: kb("Threads:"),
    })
}

/// Clock ticks per second for /proc/<pid>/stat (USER_HZ; 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

async fn run_hold(a: HoldArgs) -> Result<Value, String> {
    let http = client(a.streams)?;
    let body = Arc::new(body(&a.target.model));
    let target = Arc::new(a.target);
    let before = proc_sample(a.hub_pid)?;
    let opened = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(a.streams);
    for i in 0..a.streams {
        let (http, target, body, opened) =
            (http.clone(), target.clone(), body.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            one_stream(&http, &target, i, &body, || {
                opened.fetch_add(1, Ordering::Relaxed);
            })
            .await
        }));
    }
    let open_deadline = t0 + Duration::from_secs_f64(a.open_timeout_s);
    while opened.load(Ordering::Relaxed) < a.streams && Instant::now() < open_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_open_s = t0.elapsed().as_secs_f64();
    let open_at_start = opened.load(Ordering::Relaxed);
    if let Some(path) = &a.ready_file {
        std::fs::write(path, format!("{open_at_start}\n"))
            .map_err(|e| format!("ready file {}: {e}", path.display()))?;
    }
    let s0 = proc_sample(a.hub_pid)?;
    let w0 = Instant::now();
    let mut max_rss = s0.rss_kb;
    while w0.elapsed().as_secs_f64() < a.window_s {
        tokio::time::sleep(Duration::from_millis(250)).await;
        max_rss = max_rss.max(proc_sample(a.hub_pid)?.rss_kb);
    }
    let s1 = proc_sample(a.hub_pid)?;
    let window = w0.elapsed().as_secs_f64();
    let finished_during_window = tasks.iter().filter(|t| t.is_finished()).count();
    let (mut ok, mut errors) = (0usize, Vec::new());
    for t in tasks {
        match t.await {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    Ok(json!({
        "streams": a.streams,
        "opened": open_at_start,
        "seconds_to_open_all": all_open_s,
        "finished_before_window_end": finished_during_window,
        "window_s": window,
        "hub_rss_idle_mb": before.rss_kb as f64 / 1024.0,
        "hub_rss_open_max_mb": max_rss as f64 / 1024.0,
        "hub_rss_open_end_mb": s1.rss_kb as f64 / 1024.0,
        "hub_vmhwm_mb": s1.hwm_kb as f64 / 1024.0,
        "hub_threads": s1.threads,
        "hub_cpu_pct_while_open": (s1.cpu_ticks.saturating_sub(s0.cpu_ticks)) as f64 / TICKS_PER_S / window * 100.0,
        "completed_ok": ok,
        "errors": errors.len(),
        "first_error": errors.first(),
    }))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hub-bench: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let result: Result<Value, String> = match cli.command {
            Command::Stream(mut a) => {
                a.target.load_keys()?;
                run_stream(a).await
            }
            Command::Hold(mut a) => {
                a.target.load_keys()?;
                run_hold(a).await
            }
            Command::Count(mut a) => {
                a.target.load_keys()?;
                run_count(a).await
            }
            Command::Store(a) => store::run_store(a).await,
        };
        result
    });
    match result {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hub-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
