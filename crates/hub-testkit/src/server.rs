//! The running mock: shared state, HTTP routing, control API.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, HeaderName};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt as _;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::errors::{Reject, canonical_body, reject_body};
use crate::openai_family::{self as fam, ChatCtx, Cutoff, Frame, ImageParams, Reply, TINY_PNG_B64};
use crate::{Flavor, Script, ToolCall, Usage};

/// Largest request body the mock reads.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Pause before a scripted connection drop so the bytes already written reach the client.
pub(crate) const ABORT_FLUSH: Duration = Duration::from_millis(10);

/// Start-up options of a mock server.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Bearer key the mock accepts (ignored by Ollama, which needs no auth).
    pub api_key: String,
    pub host: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// First-byte delay for requests whose script sets none.
    pub default_first_byte_delay_ms: u64,
    /// Delay between stream chunks for requests whose script sets none.
    pub default_chunk_delay_ms: u64,
    /// Keep at most this many recorded requests (oldest dropped first); None = unbounded.
    pub record_limit: Option<usize>,
    /// Bedrock: the AWS secret access key the mock verifies SigV4 signatures with (the access
    /// key id is `api_key`).
    pub aws_secret_key: String,
    /// Serve HTTPS with this certificate (the origin becomes `https://`); `None`: plain HTTP.
    pub tls: Option<MockTls>,
}

/// TLS of an HTTPS mock: a certificate chain and its key (PEM), and the protocols offered by
/// ALPN in order of preference (`["h2", "http/1.1"]`, or `["http/1.1"]` for an upstream that only
/// speaks HTTP/1.1).
#[derive(Clone, Debug)]
pub struct MockTls {
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub alpn: Vec<String>,
}

/// The AWS secret access key a Bedrock mock uses unless configured otherwise.
pub const DEFAULT_AWS_SECRET_KEY: &str = "mock-aws-secret-access-key";

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            api_key: "sk-test".to_owned(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            default_first_byte_delay_ms: 0,
            default_chunk_delay_ms: 0,
            record_limit: None,
            aws_secret_key: DEFAULT_AWS_SECRET_KEY.to_owned(),
            tls: None,
        }
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path including the query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Parsed JSON body; `Null` if the body was empty or not JSON.
    pub body: Value,
    /// The HTTP version the request came in with (`HTTP/1.1`, `HTTP/2.0`).
    #[serde(default)]
    pub version: String,
}

impl RecordedRequest {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Counters of a mock server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockStats {
    /// API requests received (control API excluded).
    pub requests: u64,
    pub streams_started: u64,
    /// Streams that ran to their scripted end (incl. a scripted mid-stream error event).
    pub streams_completed: u64,
    /// Streams whose body was dropped before the end: the client went away.
    pub streams_cancelled_by_client: u64,
    /// Completion-content chunks (text, reasoning, tool-call fragments) handed to the socket.
    pub chunks_sent: u64,
    /// Requests dropped while the mock was still waiting out their first-byte delay: the
    /// client closed the connection before any answer (a cancelled non-streaming call).
    pub requests_cancelled_by_client: u64,
    /// Connections accepted (HTTPS: counted once the TLS handshake completed). With HTTP/2 one
    /// connection carries many concurrent requests.
    pub connections: u64,
    /// HTTPS connections whose TLS handshake resumed an earlier session (no certificate sent).
    pub tls_resumed: u64,
}

pub(crate) struct Shared {
    pub(crate) flavor: Flavor,
    /// Bearer keys accepted now by the OpenAI-family flavors (initially `config.api_key`; see
    /// `set_accepted_keys`).
    pub(crate) accepted_keys: Mutex<Vec<String>>,
    pub(crate) origin: String,
    pub(crate) config: MockConfig,
    pub(crate) queue: Mutex<VecDeque<Arc<Script>>>,
    pub(crate) scenarios: Mutex<HashMap<String, Arc<Script>>>,
    pub(crate) records: Mutex<VecDeque<RecordedRequest>>,
    pub(crate) default_script: Arc<Script>,
    pub(crate) seq: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) streams_started: AtomicU64,
    pub(crate) streams_completed: AtomicU64,
    pub(crate) streams_cancelled: AtomicU64,
    pub(crate) chunks_sent: AtomicU64,
    pub(crate) requests_cancelled: AtomicU64,
    pub(crate) connections: Arc<AtomicU64>,
    pub(crate) tls_resumed: Arc<AtomicU64>,
}

impl Shared {
    pub(crate) fn pick_script(&self, model: Option<&str>) -> Arc<Script> {
        if let Some(model) = model {
            let scenarios = self.scenarios.lock();
            if let Some(script) = scenarios.get(model) {
                return Arc::clone(script);
            }
        }
        self.queue
            .lock()
            .pop_front()
            .unwrap_or_else(|| Arc::clone(&self.default_script))
    }

    fn record(&self, rec: RecordedRequest) {
        if self.config.record_limit == Some(0) {
            return;
        }
        let mut records = self.records.lock();
        if let Some(limit) = self.config.record_limit {
            while records.len() >= limit {
                records.pop_front();
            }
        }
        records.push_back(rec);
    }

    fn stats(&self) -> MockStats {
        MockStats {
            requests: self.requests.load(Ordering::Relaxed),
            streams_started: self.streams_started.load(Ordering::Relaxed),
            streams_completed: self.streams_completed.load(Ordering::Relaxed),
            streams_cancelled_by_client: self.streams_cancelled.load(Ordering::Relaxed),
            chunks_sent: self.chunks_sent.load(Ordering::Relaxed),
            requests_cancelled_by_client: self.requests_cancelled.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            tls_resumed: self.tls_resumed.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        self.queue.lock().clear();
        self.scenarios.lock().clear();
        self.records.lock().clear();
        for counter in [
            &self.requests,
            &self.streams_started,
            &self.streams_completed,
            &self.streams_cancelled,
            &self.chunks_sent,
            &self.requests_cancelled,
            &self.connections,
            &self.tls_resumed,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// A running mock upstream bound to a local port; shut down on drop.
pub struct MockServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("flavor", &self.shared.flavor)
            .field("addr", &self.addr)
            .finish()
    }
}

impl MockServer {
    /// Starts a mock on 127.0.0.1 with a free port, accepting the key `sk-test`.
    pub async fn start(flavor: Flavor) -> MockServer {
        Self::start_with_config(flavor, MockConfig::default()).await
    }

    pub async fn start_with_key(flavor: Flavor, api_key: &str) -> MockServer {
        let config = MockConfig {
            api_key: api_key.to_owned(),
            ..MockConfig::default()
        };
        Self::start_with_config(flavor, config).await
    }

    #[expect(
        clippy::expect_used,
        reason = "test helper: failing to bind a loopback port means the test host is broken; \
                  use try_start_with_config to handle it"
    )]
    pub async fn start_with_config(flavor: Flavor, config: MockConfig) -> MockServer {
        Self::try_start_with_config(flavor, config)
            .await
            .expect("hub-testkit: cannot bind mock server")
    }

    /// Like [`MockServer::start_with_config`] but reports bind errors.
    pub async fn try_start_with_config(
        flavor: Flavor,
        config: MockConfig,
    ) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(SocketAddr::new(config.host, config.port)).await?;
        let addr = listener.local_addr()?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let origin = format!("{scheme}://{addr}");
        let acceptor = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let connections = Arc::new(AtomicU64::new(0));
        let tls_resumed = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            flavor,
            accepted_keys: Mutex::new(vec![config.api_key.clone()]),
            origin,
            config,
            queue: Mutex::new(VecDeque::new()),
            scenarios: Mutex::new(HashMap::new()),
            records: Mutex::new(VecDeque::new()),
            default_script: Arc::new(Script::default()),
            seq: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            streams_started: AtomicU64::new(0),
            streams_completed: AtomicU64::new(0),
            streams_cancelled: AtomicU64::new(0),
            chunks_sent: AtomicU64::new(0),
            requests_cancelled: AtomicU64::new(0),
            connections: Arc::clone(&connections),
            tls_resumed: Arc::clone(&tls_resumed),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (tx, rx) = oneshot::channel::<()>();
        let stop = async move {
            let _ = rx.await;
        };
        // The accept loops only end on shutdown; an error there has no one to report to.
        match acceptor {
            Some(acceptor) => {
                let listener = TlsListener {
                    tcp: listener,
                    acceptor,
                    connections,
                    tls_resumed,
                };
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await;
                });
            }
            None => {
                let listener = listener.tap_io(move |tcp| {
                    connections.fetch_add(1, Ordering::Relaxed);
                    // Best effort: a socket that refuses NODELAY still works, only slower.
                    let _ = tcp.set_nodelay(true);
                });
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await;
                });
            }
        }
        Ok(MockServer {
            shared,
            addr,
            shutdown: Some(tx),
        })
    }

    pub fn flavor(&self) -> Flavor {
        self.shared.flavor
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn origin(&self) -> String {
        self.shared.origin.clone()
    }

    /// The base URL a client is configured with (`/chat/completions` is appended to it).
    pub fn base_url(&self) -> String {
        format!("{}{}", self.shared.origin, self.shared.flavor.base_path())
    }

    pub fn api_key(&self) -> &str {
        &self.shared.config.api_key
    }

    /// The AWS secret access key (Bedrock; the access key id is [`MockServer::api_key`]).
    pub fn aws_secret_key(&self) -> &str {
        &self.shared.config.aws_secret_key
    }

    /// Replaces the bearer keys the OpenAI-family flavors accept (a key revoked and restored at the
    /// provider).
    pub fn set_accepted_keys(&self, keys: &[&str]) {
        *self.shared.accepted_keys.lock() = keys.iter().map(|k| (*k).to_owned()).collect();
    }

    /// Queues a script; the next API request consumes it (FIFO).
    pub fn push(&self, script: Script) {
        self.shared.queue.lock().push_back(Arc::new(script));
    }

    /// Every request whose `model` equals `model` uses this script (not consumed; takes
    /// precedence over the queue).
    pub fn register_scenario(&self, model: &str, script: Script) {
        self.shared
            .scenarios
            .lock()
            .insert(model.to_owned(), Arc::new(script));
    }

    /// Every request received, in order (control API excluded).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.records.lock().iter().cloned().collect()
    }

    /// Number of API requests received (control API excluded).
    pub fn hits(&self) -> usize {
        usize::try_from(self.shared.requests.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// Clears queue, scenarios, records and counters.
    pub fn reset(&self) {
        self.shared.reset();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn json_response(status: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Headers every response of a flavor carries.
fn flavor_headers(shared: &Shared, headers: &mut HeaderMap, request_id: &str, hit: u64) {
    match shared.flavor {
        Flavor::OpenAi | Flavor::Doubao => {
            if let Ok(v) = HeaderValue::from_str(request_id) {
                headers.insert(HeaderName::from_static("x-request-id"), v);
            }
            if shared.flavor == Flavor::OpenAi {
                headers.insert(
                    HeaderName::from_static("openai-processing-ms"),
                    HeaderValue::from_static("1"),
                );
            }
        }
        Flavor::Poe => {
            let remaining = 499 - (hit.saturating_sub(1) % 500);
            headers.insert(
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderValue::from_static("500"),
            );
            headers.insert(
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderValue::from(remaining),
            );
            headers.insert(
                HeaderName::from_static("x-ratelimit-reset-requests"),
                HeaderValue::from_static("60"),
            );
        }
        _ => {}
    }
}

pub(crate) fn script_headers(script: &Script, headers: &mut HeaderMap) {
    for (k, v) in &script.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.insert(name, value);
        }
    }
}

/// Accepts TCP connections and completes the TLS handshake before handing them to the HTTP
/// server (which then speaks HTTP/2 if the client negotiated `h2`). Handshakes are done one at a
/// time: enough for a test upstream.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    connections: Arc<AtomicU64>,
    tls_resumed: Arc<AtomicU64>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            // A client that refuses the certificate ends its handshake; wait for the next one.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                self.connections.fetch_add(1, Ordering::Relaxed);
                if tls.get_ref().1.handshake_kind()
                    == Some(tokio_rustls::rustls::HandshakeKind::Resumed)
                {
                    self.tls_resumed.fetch_add(1, Ordering::Relaxed);
                }
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn tls_acceptor(tls: &MockTls) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let certs = CertificateDer::pem_slice_iter(tls.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("mock TLS certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| bad(format!("mock TLS key: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad(e.to_string()))?;
    cfg.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The single entry point: control API under `/__mock/`, everything else is the upstream API.
async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if parts.uri.path().starts_with("/__mock/") {
        return control(&shared, &parts.method, parts.uri.path(), body).await;
    }
    let hit = shared.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let bytes = to_bytes(body, MAX_BODY).await.unwrap_or_default();
    let parsed: Option<Value> = if bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    let body_value = parsed.unwrap_or(Value::Null);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    if shared.config.record_limit != Some(0) {
        shared.record(RecordedRequest {
            method: parts.method.as_str().to_owned(),
            path: path_and_query,
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body_value.clone(),
            version: format!("{:?}", parts.version),
        });
    }

    let flavor = shared.flavor;
    if !flavor.is_openai_family() {
        let req = crate::native::NativeRequest {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            bytes: &bytes,
            body: body_value,
            seq,
        };
        return crate::native::handle(&shared, req).await;
    }
    let request_id = match flavor {
        Flavor::Doubao => format!("0217{}{seq:020}", now_secs()),
        _ => format!("req_mock{seq:016x}"),
    };
    let mut resp = route(
        &shared,
        &parts.method,
        parts.uri.path(),
        &parts.headers,
        body_value,
        seq,
        &request_id,
    )
    .await;
    flavor_headers(&shared, resp.headers_mut(), &request_id, hit);
    resp
}

#[derive(Clone, Copy)]
enum Endpoint {
    Chat,
    Embeddings,
    Images,
    Models,
}

fn endpoint(flavor: Flavor, method: &Method, path: &str) -> Option<Endpoint> {
    let base = flavor.base_path();
    let rest = path
        .strip_prefix(base)
        .filter(|r| r.starts_with('/'))
        .or_else(|| {
            // DeepSeek also serves the `/v1` alias.
            (flavor == Flavor::DeepSeek)
                .then(|| path.strip_prefix("/v1"))
                .flatten()
        })?;
    let rest = rest.trim_end_matches('/');
    match (method, rest) {
        (&Method::POST, "/chat/completions") => Some(Endpoint::Chat),
        (&Method::POST, "/embeddings") if flavor.supports_embeddings() => {
            Some(Endpoint::Embeddings)
        }
        (&Method::POST, "/images/generations") if flavor.supports_images() => {
            Some(Endpoint::Images)
        }
        (&Method::GET, "/models") if flavor.supports_models() => Some(Endpoint::Models),
        _ => None,
    }
}

fn reject(shared: &Shared, r: Reject<'_>, request_id: &str) -> Response {
    let (status, body) = reject_body(shared.flavor, r, request_id);
    json_response(status, &body)
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Value,
    seq: u64,
    request_id: &str,
) -> Response {
    let flavor = shared.flavor;
    let Some(ep) = endpoint(flavor, method, path) else {
        return reject(shared, Reject::NoRoute(method.as_str(), path), request_id);
    };
    if flavor.requires_auth() {
        let auth = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let presented = auth.and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
        if !shared.accepted_keys.lock().iter().any(|k| k == presented) {
            let hint = key_hint(presented);
            return reject(shared, Reject::Auth { key_hint: &hint }, request_id);
        }
    }
    if matches!(ep, Endpoint::Models) {
        let extra: Vec<String> = shared.scenarios.lock().keys().cloned().collect();
        return match fam::models_json(flavor, &extra) {
            Some(v) => json_response(200, &v),
            None => reject(shared, Reject::NoRoute(method.as_str(), path), request_id),
        };
    }
    if !body.is_object() {
        return reject(shared, Reject::BadJson, request_id);
    }
    match ep {
        Endpoint::Chat => chat(shared, body, seq, request_id).await,
        Endpoint::Embeddings => embeddings(shared, body, request_id).await,
        Endpoint::Images => images(shared, body, request_id).await,
        Endpoint::Models => reject(shared, Reject::NoRoute(method.as_str(), path), request_id),
    }
}

/// `sk-te***st`-style redaction as providers print it.
fn key_hint(key: &str) -> String {
    if key.is_empty() {
        return String::new();
    }
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "****".to_owned() + &chars.iter().rev().take(2).rev().collect::<String>();
    }
    let head: String = chars.iter().take(3).collect();
    let tail: String = chars.iter().skip(chars.len() - 4).collect();
    format!("{head}***{tail}")
}

/// Sleeps the first-byte delay, then returns the scripted error response if any.
async fn preamble(
    shared: &Shared,
    script: &Script,
    model: &str,
    request_id: &str,
) -> Option<Response> {
    let delay = script
        .first_byte_delay_ms
        .unwrap_or(shared.config.default_first_byte_delay_ms);
    if delay > 0 {
        // Dropped during the delay (the client closed the connection): counted.
        struct Waiting<'a>(&'a AtomicU64, bool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mut waiting = Waiting(&shared.requests_cancelled, false);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        waiting.1 = true;
    }
    let error = script.error.as_ref()?;
    let body = match &error.body {
        Some(b) if !b.is_null() => b.clone(),
        _ => canonical_body(shared.flavor, error.status, model, request_id),
    };
    let mut resp = json_response(error.status, &body);
    if let Some(secs) = error.retry_after {
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    script_headers(script, resp.headers_mut());
    Some(resp)
}

/// ceil(chars / 4), at least 1.
pub(crate) fn approx_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

fn message_chars(messages: &[Value]) -> usize {
    let mut total = 0;
    for m in messages {
        match m.get("content") {
            Some(Value::String(s)) => total += s.chars().count(),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(Value::String(s)) = p.get("text") {
                        total += s.chars().count();
                    }
                }
            }
            _ => {}
        }
    }
    total
}

async fn chat(shared: &Arc<Shared>, body: Value, seq: u64, request_id: &str) -> Response {
    let flavor = shared.flavor;
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return reject(shared, Reject::Missing("model"), request_id);
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return reject(shared, Reject::Missing("messages"), request_id);
    };
    let script = shared.pick_script(Some(model));
    if let Some(resp) = preamble(shared, &script, model, request_id).await {
        return resp;
    }
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let tool_calls: Vec<ToolCall> = script
        .tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: if c.id.is_empty() {
                format!("call_mock_{seq}_{i}")
            } else {
                c.id.clone()
            },
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        })
        .collect();
    let text = match &script.text {
        Some(t) => t.as_str(),
        None if !tool_calls.is_empty() => "",
        None => flavor.default_text(),
    };
    let reasoning = script.reasoning.as_deref();
    let usage = if script.omit_usage {
        None
    } else if let Some(u) = &script.usage {
        Some(u.clone())
    } else {
        let reasoning_tokens = reasoning.map_or(0, fam::word_count);
        let tool_tokens: u64 = tool_calls
            .iter()
            .map(|c| approx_tokens(c.arguments.chars().count()))
            .sum();
        let completion = (fam::word_count(text) + reasoning_tokens + tool_tokens).max(1);
        Some(
            Usage::new(approx_tokens(message_chars(messages)), completion)
                .with_reasoning(reasoning_tokens),
        )
    };
    let finish_reason = match &script.finish_reason {
        Some(f) => f.as_str(),
        None if !tool_calls.is_empty() => "tool_calls",
        None => "stop",
    };
    let created = now_secs();
    let ctx = ChatCtx {
        flavor,
        id: fam::completion_id(flavor, seq, created),
        created,
        model,
        include_usage,
        include_obfuscation: body
            .pointer("/stream_options/include_obfuscation")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    };
    let reply = Reply {
        text,
        text_chunks: script.chunks,
        reasoning,
        tool_calls,
        usage,
        finish_reason,
    };

    if !stream {
        if script.drop_after_chunks.is_some() {
            // Headers, then an aborted body.
            let aborted = futures::stream::once(async {
                tokio::time::sleep(ABORT_FLUSH).await;
                Err::<Bytes, std::io::Error>(std::io::Error::other("mock: scripted drop"))
            });
            let mut resp = Response::new(Body::from_stream(aborted));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return resp;
        }
        let mut resp = json_response(200, &fam::chat_json(&ctx, &reply));
        if flavor == Flavor::OpenRouter
            && let Ok(v) = HeaderValue::from_str(&ctx.id)
        {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-generation-id"), v);
        }
        script_headers(&script, resp.headers_mut());
        return resp;
    }

    let cutoff = match (
        script.drop_after_chunks,
        script.error_after_chunks,
        script.stall_after_chunks,
    ) {
        (Some(n), _, _) => Cutoff::Drop(n),
        (None, Some(n), _) => Cutoff::Error(n, script.stream_error_body.clone()),
        (None, None, Some(n)) => Cutoff::Stall(n),
        (None, None, None) => Cutoff::None,
    };
    let frames = fam::chat_stream_frames(&ctx, &reply, &cutoff, request_id);
    let delay = script
        .chunk_delay_ms
        .unwrap_or(shared.config.default_chunk_delay_ms);
    let mut resp = Response::new(sse_body(Arc::clone(shared), frames, delay));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    if flavor == Flavor::OpenRouter
        && let Ok(v) = HeaderValue::from_str(&ctx.id)
    {
        headers.insert(HeaderName::from_static("x-generation-id"), v);
    }
    script_headers(&script, headers);
    resp
}

/// Counts a stream as cancelled if it is dropped before reaching its scripted end.
struct StreamGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl StreamGuard {
    fn new(shared: Arc<Shared>) -> StreamGuard {
        shared.streams_started.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            shared,
            finished: false,
        }
    }

    fn complete(&mut self) {
        self.finished = true;
        self.shared
            .streams_completed
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A scripted abort is neither completed nor cancelled by the client.
    fn aborted(&mut self) {
        self.finished = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared
                .streams_cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(crate) fn sse_body(shared: Arc<Shared>, frames: Vec<Frame>, delay_ms: u64) -> Body {
    let stream = async_stream::stream! {
        let mut guard = StreamGuard::new(Arc::clone(&shared));
        let delay = Duration::from_millis(delay_ms);
        let mut first_data = true;
        let n = frames.len();
        for (i, frame) in frames.into_iter().enumerate() {
            // The last frame completes the stream when it is handed over: the code between two
            // suspension points runs in one poll, so the count and the hand-over happen together.
            // A client that stops reading once it has the last frame (the hub stops at `[DONE]`
            // and, over HTTP/2, resets the stream) must not count as one that went away early.
            let last = i + 1 == n;
            match frame {
                Frame::Comment(text) => {
                    if last {
                        guard.complete();
                    }
                    yield Ok::<Bytes, std::io::Error>(Bytes::from_static(text.as_bytes()));
                }
                Frame::Data { bytes, content } => {
                    if !first_data && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    first_data = false;
                    if last {
                        guard.complete();
                    }
                    yield Ok(bytes);
                    // Polled again: the previous chunk was taken by the connection.
                    if content {
                        shared.chunks_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Frame::Stall => {
                    // Dropped when the client goes away (counted as cancelled by the guard).
                    std::future::pending::<()>().await;
                }
                Frame::Abort => {
                    // Let the connection flush what was written, then cut it.
                    tokio::time::sleep(ABORT_FLUSH).await;
                    guard.aborted();
                    yield Err(std::io::Error::other("mock: scripted connection drop"));
                    return;
                }
            }
        }
        if !guard.finished {
            guard.complete();
        }
    };
    Body::from_stream(stream)
}

async fn embeddings(shared: &Arc<Shared>, body: Value, request_id: &str) -> Response {
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return reject(shared, Reject::Missing("model"), request_id);
    };
    let Some(inputs) = body.get("input").and_then(fam::embedding_inputs) else {
        return reject(shared, Reject::Missing("input"), request_id);
    };
    let script = shared.pick_script(Some(model));
    if let Some(resp) = preamble(shared, &script, model, request_id).await {
        return resp;
    }
    let dims = script
        .embedding_dims
        .or_else(|| {
            body.get("dimensions")
                .and_then(Value::as_u64)
                .and_then(|d| usize::try_from(d).ok())
        })
        .unwrap_or(8);
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let prompt_tokens = match &script.usage {
        Some(u) => u.prompt_tokens,
        None => inputs
            .iter()
            .map(|s| approx_tokens(s.chars().count()))
            .sum(),
    };
    let v = fam::embeddings_json(shared.flavor, model, &inputs, dims, base64, prompt_tokens);
    let mut resp = json_response(200, &v);
    script_headers(&script, resp.headers_mut());
    resp
}

async fn images(shared: &Arc<Shared>, body: Value, request_id: &str) -> Response {
    let flavor = shared.flavor;
    let Some(prompt) = body.get("prompt").and_then(Value::as_str) else {
        return reject(shared, Reject::Missing("prompt"), request_id);
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(match flavor {
            Flavor::Xai => "grok-2-image",
            Flavor::Doubao => "doubao-seedream-4-0-250828",
            _ => "dall-e-2",
        });
    let response_format = body.get("response_format").and_then(Value::as_str);
    // GPT image models reject `response_format` (recorded gpt-image-response-format-error.json).
    if flavor == Flavor::OpenAi && model.starts_with("gpt-image") && response_format.is_some() {
        return reject(shared, Reject::UnknownParam("response_format"), request_id);
    }
    let script = shared.pick_script(Some(model));
    if let Some(resp) = preamble(shared, &script, model, request_id).await {
        return resp;
    }
    let default_url = format!("{}/__mock/image.png", shared.origin);
    let b64 = if script.image_b64.is_some() {
        true
    } else if script.image_url.is_some() {
        false
    } else {
        match response_format {
            Some("b64_json") => true,
            Some(_) => false,
            None => flavor == Flavor::OpenAi && model.starts_with("gpt-image"),
        }
    };
    let n = body
        .get("n")
        .and_then(Value::as_u64)
        .map_or(1, |n| n.clamp(1, 10) as usize);
    let params = ImageParams {
        model,
        prompt,
        n,
        size: body.get("size").and_then(Value::as_str),
        b64,
        b64_payload: script.image_b64.as_deref().unwrap_or(TINY_PNG_B64),
        url: script.image_url.as_deref().unwrap_or(&default_url),
        created: now_secs(),
    };
    let mut resp = json_response(200, &fam::images_json(flavor, &params));
    script_headers(&script, resp.headers_mut());
    resp
}

#[derive(Deserialize)]
struct ScenarioBody {
    model: String,
    #[serde(default)]
    script: Script,
}

async fn control(shared: &Arc<Shared>, method: &Method, path: &str, body: Body) -> Response {
    let bytes = to_bytes(body, MAX_BODY).await.unwrap_or_default();
    let bad = |msg: String| json_response(400, &json!({"error": msg}));
    match (method, path.trim_end_matches('/')) {
        (&Method::POST, "/__mock/scripts") => {
            // One script, or an array of scripts pushed in order.
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Array(items)) => {
                    let mut scripts = Vec::with_capacity(items.len());
                    for item in items {
                        match serde_json::from_value::<Script>(item) {
                            Ok(s) => scripts.push(Arc::new(s)),
                            Err(e) => return bad(format!("invalid script: {e}")),
                        }
                    }
                    let pushed = scripts.len();
                    shared.queue.lock().extend(scripts);
                    json_response(200, &json!({"ok": true, "pushed": pushed}))
                }
                Ok(v) => match serde_json::from_value::<Script>(v) {
                    Ok(s) => {
                        shared.queue.lock().push_back(Arc::new(s));
                        json_response(200, &json!({"ok": true, "pushed": 1}))
                    }
                    Err(e) => bad(format!("invalid script: {e}")),
                },
                Err(e) => bad(format!("invalid JSON: {e}")),
            }
        }
        (&Method::POST, "/__mock/scenarios") => {
            match serde_json::from_slice::<ScenarioBody>(&bytes) {
                Ok(s) => {
                    shared.scenarios.lock().insert(s.model, Arc::new(s.script));
                    json_response(200, &json!({"ok": true}))
                }
                Err(e) => bad(format!("invalid scenario: {e}")),
            }
        }
        (&Method::GET, "/__mock/requests") => {
            let records: Vec<RecordedRequest> = shared.records.lock().iter().cloned().collect();
            match serde_json::to_value(records) {
                Ok(v) => json_response(200, &v),
                Err(e) => json_response(500, &json!({"error": e.to_string()})),
            }
        }
        (&Method::GET, "/__mock/stats") => match serde_json::to_value(shared.stats()) {
            Ok(v) => json_response(200, &v),
            Err(e) => json_response(500, &json!({"error": e.to_string()})),
        },
        (&Method::POST, "/__mock/reset") => {
            shared.reset();
            json_response(200, &json!({"ok": true}))
        }
        (&Method::GET, "/__mock/health") => json_response(
            200,
            &json!({"ok": true, "flavor": shared.flavor.name(),
                "base_url": format!("{}{}", shared.origin, shared.flavor.base_path())}),
        ),
        (&Method::GET, "/__mock/image.png") => {
            use base64::Engine as _;
            let png = base64::engine::general_purpose::STANDARD
                .decode(TINY_PNG_B64)
                .unwrap_or_default();
            let mut resp = Response::new(Body::from(png));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
            resp
        }
        _ => json_response(
            404,
            &json!({"error": format!("unknown control route {method} {path}")}),
        ),
    }
}
