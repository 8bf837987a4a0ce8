//! The upstream HTTP client: hyper-util's pooled client over rustls, with proxies from the
//! environment. Providers send through it (`providers::Upstream::http`); `hub/pools.rs` decides
//! which client a call gets.
//!
//! Why not reqwest, which this replaced: reqwest 0.12 wraps hyper-util's client in a redirect
//! layer and a retry layer on every request, whatever the policy, and parses the request's URL
//! into a `url::Url` twice per call. That was ~24k instructions of a call's ~270k at concurrency
//! 64 (BENCHMARKS.md, twelfth session). Here a call is the hyper-util client's own work and
//! nothing else; what reqwest gave the hub is kept:
//! - TLS by rustls (ring), the built-in web roots plus extra roots (`HUB_EXTRA_CA_FILE`);
//! - HTTP/2 by ALPN, or by prior knowledge (`h2_only`, for an origin known to speak it);
//! - proxies from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, read by
//!   hyper-util's matcher as curl reads them): a `CONNECT` tunnel for `https://` upstreams, the
//!   request in absolute form to the proxy for `http://` ones;
//! - a connect timeout over the whole connection set-up (TCP, proxy tunnel, TLS);
//! - errors classed as connect, timeout, or a broken body.
//!
//! Redirects are not followed: a provider's API does not redirect, and a 3xx answer is an error
//! of the provider's (a misconfigured base URL), not a reason to send the caller's prompt and the
//! hub's key somewhere else.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use http::header::{ACCEPT, HeaderMap, HeaderValue, PROXY_AUTHORIZATION, USER_AGENT};
use http::{Method, StatusCode, Uri, Version};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
pub use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tower_service::Service;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The `user-agent` of upstream calls (a module may set its own).
const AGENT: &str = concat!("aigne-hub/", env!("CARGO_PKG_VERSION"));

/// Told about each new connection: `Some(negotiated h2)` once it is up, `None` if it failed. An
/// error refuses the connection before a byte of HTTP is written on it.
pub type OnConnect = Arc<dyn Fn(Option<bool>) -> Result<(), BoxError> + Send + Sync>;

/// How to build a [`Client`]; `ClientOptions::default()` is a client as a provider gets one before
/// its origin's protocol is known (10 s connect timeout, web roots, ALPN).
#[derive(Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Trusted besides the web roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// HTTP/2 by prior knowledge (ALPN offers only `h2`); otherwise `h2` and `http/1.1` by ALPN.
    pub h2_only: bool,
    pub on_connect: Option<OnConnect>,
    pub proxies: Proxies,
}

/// Where a client's proxy rules come from.
#[derive(Clone, Debug, Default)]
pub enum Proxies {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and their lower-case forms), read
    /// when the client is built.
    #[default]
    FromEnvironment,
    /// These rules, whatever the environment says.
    Rules(Arc<Matcher>),
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            extra_roots: Vec::new(),
            h2_only: false,
            on_connect: None,
            proxies: Proxies::FromEnvironment,
        }
    }
}

/// Certificates from a PEM bundle (`HUB_EXTRA_CA_FILE`).
pub fn roots_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// A pooled upstream client. Cheap to clone (one reference count).
#[derive(Clone)]
pub struct Client(Arc<Inner>);

struct Inner {
    hyper: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    /// `None` when no proxy variable is set, so a call never consults the matcher.
    proxy: Option<Arc<Matcher>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("proxy", &self.0.proxy.is_some())
            .finish_non_exhaustive()
    }
}

/// The proxy rules of the environment, if it names any proxy.
fn proxy_from_env() -> Option<Arc<Matcher>> {
    const VARS: [&str; 6] = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ];
    let any = VARS
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    any.then(|| Arc::new(Matcher::from_env()))
}

/// The rustls configurations the process's clients use: one per set of extra roots and ALPN
/// offer, built by the first client that asks and shared by every later one, and with it the
/// configuration's TLS session cache. A new connection to an origin that another client (another
/// HTTP/2 shard, pool or hub) already reached resumes that session instead of running a full
/// handshake and verifying the certificate chain again. A resumed session was verified against
/// the same roots, since the roots are part of the key. (Building a configuration is cheap, ~3 µs:
/// the web roots are borrowed; the session cache is the point. BENCHMARKS.md, fourteenth
/// session.)
fn tls_config(
    extra_roots: &[CertificateDer<'static>],
    h2_only: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    type Built = (
        Vec<CertificateDer<'static>>,
        bool,
        Arc<rustls::ClientConfig>,
    );
    // A handful of entries at most (the process's roots, each ALPN offer); tests add a few.
    static CONFIGS: parking_lot::Mutex<Vec<Built>> = parking_lot::Mutex::new(Vec::new());
    let mut configs = CONFIGS.lock();
    if let Some((_, _, c)) = configs
        .iter()
        .find(|(roots, h2, _)| roots.as_slice() == extra_roots && *h2 == h2_only)
    {
        return Ok(c.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for c in extra_roots {
        roots
            .add(c.clone())
            .map_err(|e| format!("an extra root certificate is not usable: {e}"))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = if h2_only {
        vec![b"h2".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let tls = Arc::new(tls);
    configs.push((extra_roots.to_vec(), h2_only, tls.clone()));
    Ok(tls)
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, String> {
        let tls = tls_config(&opts.extra_roots, opts.h2_only)?;

        let proxy = match opts.proxies {
            Proxies::FromEnvironment => proxy_from_env(),
            Proxies::Rules(m) => Some(m),
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(opts.connect_timeout));
        let via = ProxyConnector {
            tcp,
            proxy: proxy.clone(),
        };
        // `https://` over TLS, `http://` in the clear; the ALPN offer is the configuration's.
        let https = HttpsConnector::from((via, tls));
        let connector = Connector {
            https,
            timeout: opts.connect_timeout,
            on_connect: opts.on_connect,
        };
        let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_adaptive_window(true)
            .http2_only(opts.h2_only)
            .build(connector);
        Ok(Client(Arc::new(Inner { hyper, proxy })))
    }

    pub fn post(&self, uri: Uri) -> RequestBuilder<'_> {
        self.request(Method::POST, uri)
    }

    pub fn get(&self, uri: Uri) -> RequestBuilder<'_> {
        self.request(Method::GET, uri)
    }

    fn request(&self, method: Method, uri: Uri) -> RequestBuilder<'_> {
        RequestBuilder {
            client: self,
            method,
            uri,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }
}

/// One request being built.
pub struct RequestBuilder<'c> {
    client: &'c Client,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl RequestBuilder<'_> {
    /// Sets these headers (each replaces one of the same name already set).
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        if self.headers.is_empty() {
            // The usual case (one set of headers per call): moved, not re-inserted.
            self.headers = headers;
        } else {
            self.headers.extend(headers);
        }
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub async fn send(self) -> Result<Response, TransportError> {
        let mut req = http::Request::new(Full::new(self.body));
        *req.method_mut() = self.method;
        *req.headers_mut() = self.headers;
        // What reqwest sent when a module set none (`accept`), and who is calling: some API edges
        // refuse a request without a user agent.
        let h = req.headers_mut();
        if !h.contains_key(ACCEPT) {
            h.insert(ACCEPT, HeaderValue::from_static("*/*"));
        }
        if !h.contains_key(USER_AGENT) {
            h.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        }
        // A request to an http:// upstream through a proxy goes to the proxy in absolute form,
        // with the proxy's credentials (an https:// one is tunnelled; see `ProxyConnector`).
        if let Some(m) = &self.client.0.proxy
            && self.uri.scheme() == Some(&http::uri::Scheme::HTTP)
            && let Some(auth) = m.intercept(&self.uri).and_then(|i| i.basic_auth().cloned())
        {
            req.headers_mut().insert(PROXY_AUTHORIZATION, auth);
        }
        *req.uri_mut() = self.uri;
        match self.client.0.hyper.request(req).await {
            Ok(resp) => Ok(Response(resp)),
            Err(e) => Err(TransportError::of_request(e)),
        }
    }
}

/// An upstream's answer; its body is read with [`Response::bytes`] or [`Response::bytes_stream`].
#[derive(Debug)]
pub struct Response(http::Response<Incoming>);

impl Response {
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.0.headers()
    }

    pub fn version(&self) -> Version {
        self.0.version()
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, TransportError> {
        self.0
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(TransportError::of_body)
    }

    /// The body as it arrives.
    pub fn bytes_stream(
        self,
    ) -> impl Stream<Item = Result<Bytes, TransportError>> + Send + Unpin + 'static {
        BodyDataStream::new(self.0.into_body()).map_err(TransportError::of_body)
    }
}

/// What went wrong between the hub and an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// No connection (refused, DNS, TLS, proxy).
    Connect,
    /// The connection was not up within the connect timeout.
    Timeout,
    /// The request could not be sent or its answer's head not read.
    Request,
    /// The answer's body broke off.
    Body,
}

#[derive(Debug)]
pub struct TransportError {
    kind: TransportKind,
    source: BoxError,
}

/// The connection set-up ran past the connect timeout.
#[derive(Debug)]
struct ConnectTimedOut(Duration);

impl fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no connection within {:?}", self.0)
    }
}

impl std::error::Error for ConnectTimedOut {}

impl TransportError {
    fn of_request(e: hyper_util::client::legacy::Error) -> TransportError {
        let timed_out =
            std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |c| {
                c.source()
            })
            .any(|c| c.is::<ConnectTimedOut>());
        let kind = if timed_out {
            TransportKind::Timeout
        } else if e.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Request
        };
        TransportError {
            kind,
            source: Box::new(e),
        }
    }

    fn of_body(e: hyper::Error) -> TransportError {
        TransportError {
            kind: TransportKind::Body,
            source: Box::new(e),
        }
    }

    pub fn kind(&self) -> TransportKind {
        self.kind
    }
}

/// The error and its causes, joined (hyper's errors say little at the top: "client error
/// (Connect)"). No URL or header is part of any of them.
impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        let mut cause = self.source.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl std::error::Error for TransportError {}

/// The whole connector: TLS over [`ProxyConnector`], the connect timeout, and the `on_connect`
/// report.
#[derive(Clone)]
struct Connector {
    https: HttpsConnector<ProxyConnector>,
    timeout: Duration,
    on_connect: Option<OnConnect>,
}

type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl Service<Uri> for Connector {
    type Response = MaybeHttpsStream<Conn>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.https.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.https.call(dst);
        let (timeout, on_connect) = (self.timeout, self.on_connect.clone());
        Box::pin(async move {
            let connected = tokio::time::timeout(timeout, connecting)
                .await
                .unwrap_or_else(|_| Err(Box::new(ConnectTimedOut(timeout))));
            let conn = match connected {
                Ok(conn) => conn,
                Err(e) => {
                    if let Some(report) = &on_connect {
                        let _ = report(None);
                    }
                    return Err(e);
                }
            };
            if let Some(report) = &on_connect {
                report(Some(conn.connected().is_negotiated_h2()))?;
            }
            Ok(conn)
        })
    }
}

/// TCP to the upstream, or through the environment's proxy: a `CONNECT` tunnel for `https://`,
/// or a connection to the proxy itself for `http://` (the request then goes in absolute form).
#[derive(Clone)]
struct ProxyConnector {
    tcp: HttpConnector,
    proxy: Option<Arc<Matcher>>,
}

impl Service<Uri> for ProxyConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Connecting<Conn>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let intercept = self.proxy.as_ref().and_then(|m| m.intercept(&dst));
        Box::pin(async move {
            let Some(proxy) = intercept else {
                let io = tcp.call(dst).await?;
                return Ok(Conn { io, forward: false });
            };
            if proxy.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
                return Err("only http:// proxies are supported (the proxy URL's scheme)".into());
            }
            if dst.scheme() == Some(&http::uri::Scheme::HTTPS) {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), tcp);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                poll_fn(|cx| tunnel.poll_ready(cx)).await?;
                let io = tunnel.call(dst).await?;
                Ok(Conn { io, forward: false })
            } else {
                let io = tcp.call(proxy.uri().clone()).await?;
                Ok(Conn { io, forward: true })
            }
        })
    }
}

/// A TCP connection; `forward` when it is to a proxy that forwards plain-HTTP requests.
struct Conn {
    io: TokioIo<TcpStream>,
    forward: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.forward)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server on a local port: records each connection's request head and answers `reply`
    /// (raw bytes), then closes.
    async fn server(reply: impl Into<Bytes>) -> (u16, Arc<Mutex<Vec<String>>>) {
        let reply: Bytes = reply.into();
        let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
            unreachable!("a local port");
        };
        let port = listener.local_addr().map_or(0, |a| a.port());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heads = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (heads, reply) = (heads.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if let Ok(mut h) = heads.lock() {
                        h.push(String::from_utf8_lossy(&head).into_owned());
                    }
                    let _ = sock.write_all(&reply).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (port, seen)
    }

    fn client(opts: ClientOptions) -> Client {
        match Client::new(opts) {
            Ok(c) => c,
            Err(e) => unreachable!("the client builds: {e}"),
        }
    }

    /// A client that goes direct, whatever the environment says.
    fn direct() -> ClientOptions {
        ClientOptions {
            proxies: Proxies::Rules(Arc::new(Matcher::builder().build())),
            ..ClientOptions::default()
        }
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap_or_default()
    }

    fn through(proxy: &str, no: &str) -> ClientOptions {
        ClientOptions {
            proxies: Proxies::Rules(Arc::new(Matcher::builder().all(proxy).no(no).build())),
            ..ClientOptions::default()
        }
    }

    fn heads(seen: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        seen.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The one request head a server saw, lower-cased.
    fn one_head(seen: &Arc<Mutex<Vec<String>>>) -> String {
        let h = heads(seen);
        assert_eq!(h.len(), 1, "{h:?}");
        h[0].to_ascii_lowercase()
    }

    /// The proxy credentials of `http://user:pw@...`, as sent (lower-cased): base64("user:pw").
    const USER_PW: &str = "proxy-authorization: basic dxnlcjpwdw==";

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

    #[tokio::test]
    async fn an_http_upstream_is_asked_through_the_proxy_in_absolute_form_with_its_credentials()
    -> Result<(), TransportError> {
        let (port, seen) = server(OK).await;
        let c = client(through(&format!("http://user:pw@127.0.0.1:{port}"), ""));
        // A name that never resolves: only the proxy can answer.
        let r = c
            .post(uri("http://upstream.invalid/v1/chat/completions?x=1"))
            .body("{}")
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(&r.bytes().await?[..], b"ok");
        let head = one_head(&seen);
        assert!(
            head.starts_with("post http://upstream.invalid/v1/chat/completions?x=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(USER_PW), "{head}");
        assert!(head.contains("host: upstream.invalid\r\n"), "{head}");
        assert!(head.contains("accept: */*\r\n"), "{head}");
        assert!(head.contains(&format!("user-agent: {AGENT}\r\n")), "{head}");
        Ok(())
    }

    #[tokio::test]
    async fn an_https_upstream_is_tunnelled_through_the_proxy_with_connect() {
        let (port, seen) = server("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
        let c = client(through(&format!("http://user:pw@127.0.0.1:{port}"), ""));
        let sent = c
            .post(uri("https://upstream.invalid/v1/messages"))
            .send()
            .await;
        let Err(e) = sent else {
            unreachable!("a proxy that refuses the tunnel fails the call");
        };
        assert_eq!(e.kind(), TransportKind::Connect, "{e}");
        let head = one_head(&seen);
        assert!(
            head.starts_with("connect upstream.invalid:443 http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(USER_PW), "{head}");
        // Nothing of the request itself reaches the proxy.
        assert!(!head.contains("/v1/messages"), "{head}");
    }

    #[tokio::test]
    async fn a_proxy_reached_over_tls_is_refused_with_a_clear_error() {
        let (port, seen) = server(OK).await;
        let c = client(through(&format!("https://127.0.0.1:{port}"), ""));
        let sent = c
            .get(uri("https://upstream.invalid/v1/models"))
            .send()
            .await;
        let Err(e) = sent else {
            unreachable!("an https:// proxy is not used");
        };
        assert_eq!(e.kind(), TransportKind::Connect, "{e}");
        assert!(e.to_string().contains("only http:// proxies"), "{e}");
        assert!(heads(&seen).is_empty(), "nothing was sent to it");
    }

    #[tokio::test]
    async fn a_host_in_no_proxy_is_called_directly() -> Result<(), TransportError> {
        let (proxy, via_proxy) = server(OK).await;
        let (direct, seen) = server(OK).await;
        let c = client(through(&format!("http://127.0.0.1:{proxy}"), "127.0.0.1"));
        let r = c
            .get(uri(&format!("http://127.0.0.1:{direct}/v1/models")))
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(heads(&via_proxy).is_empty());
        let h = heads(&seen);
        assert!(
            h.len() == 1 && h[0].starts_with("GET /v1/models HTTP/1.1\r\n"),
            "{h:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_modules_own_accept_and_user_agent_are_sent_as_they_are() -> Result<(), TransportError>
    {
        let (port, seen) = server(OK).await;
        let c = client(direct());
        let mut own = HeaderMap::new();
        own.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.amazon.eventstream"),
        );
        own.insert(USER_AGENT, HeaderValue::from_static("its-own/1"));
        c.post(uri(&format!(
            "http://127.0.0.1:{port}/model/m/converse-stream"
        )))
        .headers(own)
        .send()
        .await?;
        let head = one_head(&seen);
        assert!(
            head.contains("accept: application/vnd.amazon.eventstream\r\n"),
            "{head}"
        );
        assert!(head.contains("user-agent: its-own/1\r\n"), "{head}");
        assert_eq!(head.matches("accept:").count(), 1, "{head}");
        assert_eq!(head.matches("user-agent:").count(), 1, "{head}");
        Ok(())
    }

    #[tokio::test]
    async fn a_connection_not_up_within_the_connect_timeout_is_a_timeout() {
        // Accepts TCP but never answers the TLS handshake.
        let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
            unreachable!("a local port");
        };
        let port = listener.local_addr().map_or(0, |a| a.port());
        let held = tokio::spawn(async move {
            let mut socks = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                socks.push(s);
            }
        });
        let c = client(ClientOptions {
            connect_timeout: Duration::from_millis(200),
            ..direct()
        });
        let started = std::time::Instant::now();
        let sent = c
            .get(uri(&format!("https://127.0.0.1:{port}/v1/models")))
            .send()
            .await;
        let Err(e) = sent else {
            unreachable!("no TLS, no answer");
        };
        assert_eq!(e.kind(), TransportKind::Timeout, "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_that_names_no_url() {
        let port = {
            let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
                unreachable!("a local port");
            };
            l.local_addr().map_or(0, |a| a.port())
        };
        let c = client(direct());
        let sent = c
            .post(uri(&format!(
                "http://127.0.0.1:{port}/v1beta/models/m:generateContent?key=sekrit-value"
            )))
            .send()
            .await;
        let Err(e) = sent else {
            unreachable!("nothing listens there");
        };
        assert_eq!(e.kind(), TransportKind::Connect, "{e}");
        let said = crate::error::ProviderError::from_transport(&e);
        assert_eq!(said.class, crate::error::ErrorClass::Connect);
        assert!(said.message.contains("refused"), "{}", said.message);
        assert!(!said.message.contains("sekrit"), "{}", said.message);
        assert!(
            !said.message.contains("generateContent"),
            "{}",
            said.message
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_a_body_error() -> Result<(), TransportError> {
        let (port, _) = server("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":").await;
        let c = client(direct());
        let r = c
            .get(uri(&format!("http://127.0.0.1:{port}/v1/models")))
            .send()
            .await?;
        let Err(e) = r.bytes().await else {
            unreachable!("the body ended early");
        };
        assert_eq!(e.kind(), TransportKind::Body, "{e}");
        assert_eq!(
            crate::error::ProviderError::from_transport(&e).class,
            crate::error::ErrorClass::StreamInterrupted
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_redirect_is_answered_not_followed() -> Result<(), TransportError> {
        let (target, followed) = server(OK).await;
        let reply = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{target}/elsewhere\r\n\
             content-length: 0\r\n\r\n"
        )
        .into_bytes();
        let (port, _) = server(reply).await;
        let c = client(direct());
        let r = c
            .post(uri(&format!("http://127.0.0.1:{port}/v1/chat/completions")))
            .body("{}")
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert!(heads(&followed).is_empty());
        Ok(())
    }

    /// Clients built apart (each shard, origin and hub has its own) share their TLS
    /// configuration and so its session cache: a later client's first connection to an origin an
    /// earlier one reached resumes that session, with no certificate sent or verified. A client
    /// that offers other ALPN protocols has a configuration of its own.
    #[tokio::test]
    async fn a_later_client_resumes_the_tls_session_of_an_earlier_one() -> Result<(), String> {
        let (mock, ca) =
            hub_testkit::tls::https_mock(hub_testkit::Flavor::OpenAi, &["h2", "http/1.1"])
                .await
                .map_err(|e| e.to_string())?;
        let roots = roots_from_pem(ca.as_bytes())?;
        let models = uri(&format!("{}/models", mock.base_url()));
        for (n, h2_only) in [(1, false), (2, false), (3, false), (4, true)] {
            let c = client(ClientOptions {
                extra_roots: roots.clone(),
                h2_only,
                ..direct()
            });
            let mut auth = HeaderMap::new();
            auth.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_static("Bearer sk-test"),
            );
            let r = c
                .get(models.clone())
                .headers(auth)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(r.status(), StatusCode::OK);
            // Read to the end: the session ticket came before the answer.
            r.bytes().await.map_err(|e| e.to_string())?;
            let stats = mock.stats();
            assert_eq!(stats.connections, n, "a new client, a new connection");
            // The first client ran a full handshake; the next two resumed its session; the
            // HTTP/2-only client, with a configuration of its own, ran a full handshake again.
            assert_eq!(
                stats.tls_resumed,
                [0, 1, 2, 2][n as usize - 1],
                "client {n}"
            );
        }
        Ok(())
    }

    #[test]
    fn roots_come_from_a_pem_bundle_and_garbage_is_refused() {
        let Ok((ca, _)) = hub_testkit::tls::private_ca(&["h2"]) else {
            unreachable!("a test CA");
        };
        let two = format!("{ca}\n{ca}");
        assert_eq!(roots_from_pem(two.as_bytes()).map(|r| r.len()), Ok(2));
        assert_eq!(
            roots_from_pem(b"no certificate here").map(|r| r.len()),
            Ok(0)
        );
        assert!(
            roots_from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        let built = Client::new(ClientOptions {
            extra_roots: roots_from_pem(ca.as_bytes()).unwrap_or_default(),
            ..ClientOptions::default()
        });
        assert!(built.is_ok());
    }
}
