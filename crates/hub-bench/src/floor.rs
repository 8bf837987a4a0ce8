//! `hub-floor`: the floor under the hub's figures in `scripts/bench`. A bare pass-through HTTP/1.1
//! proxy on the stack the hub is built on (tokio's multi-thread runtime, hyper's HTTP/1.1 server,
//! hyper-util's pooled client, jemalloc with the hub's options, `TCP_NODELAY` both ways), with no
//! gateway logic at all: no JSON, no authentication, no routing, no metering. Every request is sent on, path, headers
//! and body unchanged, to the one upstream origin it was started with, and the answer streamed
//! back as it comes.
//!
//! Run where the hub runs (same CPU, same mock, same load), it measures what any proxy on this
//! machine pays to relay a call: the socket work, two HTTP/1.1 exchanges, and the scheduler's
//! wake-ups when a call crosses CPUs. The hub's "added" figures minus the floor's are what the
//! gateway itself adds; a target below the floor cannot be met by any code in the hub on that
//! machine and pinning.
//!
//! ```text
//! hub-floor --upstream http://127.0.0.1:PORT [--port 0]
//! ```
//! prints one line, `{"url":"http://127.0.0.1:PORT"}`, once it is listening. Only ever sends to
//! the origin it is given (scripts/bench gives the local mock).

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The hub's allocator, so the floor allocates as the hub does.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "hub-floor",
    about = "A bare HTTP/1.1 pass-through proxy: the floor under the hub's benchmark figures"
)]
struct Args {
    /// The upstream origin (`http://host:port`); a path in it is ignored: requests keep their own.
    #[arg(long)]
    upstream: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(long, default_value_t = 0)]
    port: u16,
}

type Body = BoxBody<Bytes, hyper::Error>;
type Upstream = Client<HttpConnector, Incoming>;

/// Where requests go: the scheme and authority of `--upstream`.
#[derive(Debug)]
struct Origin {
    scheme: hyper::http::uri::Scheme,
    authority: hyper::http::uri::Authority,
}

impl Origin {
    fn parse(s: &str) -> Result<Origin, String> {
        let uri: Uri = s.parse().map_err(|e| format!("--upstream {s}: {e}"))?;
        match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) if scheme == &hyper::http::uri::Scheme::HTTP => {
                Ok(Origin {
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                })
            }
            _ => Err(format!("--upstream {s}: an http://host:port origin")),
        }
    }

    /// The request's own path and query, on this origin.
    fn uri_for(&self, uri: &Uri) -> Result<Uri, hyper::http::Error> {
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = uri.path_and_query().cloned();
        Ok(Uri::from_parts(parts)?)
    }
}

/// What every connection shares: one pooled client and the origin it sends to.
struct Relay {
    client: Upstream,
    origin: Origin,
}

impl Relay {
    fn new(origin: Origin) -> Relay {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Relay {
            client: Client::builder(TokioExecutor::new()).build(connector),
            origin,
        }
    }
}

/// Relays one request. An upstream that cannot be reached is a 502 with the reason as text.
async fn relay(to: Arc<Relay>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let uri = match to.origin.uri_for(req.uri()) {
        Ok(uri) => uri,
        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, e.to_string())),
    };
    *req.uri_mut() = uri;
    // The client sets `host` from the URI; the caller's named this proxy.
    req.headers_mut().remove(hyper::header::HOST);
    match to.client.request(req).await {
        Ok(resp) => Ok(resp.map(|b| b.boxed())),
        Err(e) => Ok(text(StatusCode::BAD_GATEWAY, format!("upstream: {e}"))),
    }
}

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(msg))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp
}

/// Accepts and serves connections on `listener` until the process ends.
async fn serve(listener: TcpListener, origin: Origin) {
    let to = Arc::new(Relay::new(origin));
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("hub-floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let to = to.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| relay(to.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let origin = match Origin::parse(&args.upstream) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hub-floor: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // As the hub's: a worker per CPU this process may run on.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hub-floor: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(SocketAddr::new(args.host, args.port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("hub-floor: bind: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let url = match listener.local_addr() {
            Ok(a) => format!("http://{a}"),
            Err(e) => {
                eprintln!("hub-floor: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{}", serde_json::json!({ "url": url }))
            .and_then(|()| out.flush())
            .is_err()
        {
            return std::process::ExitCode::FAILURE;
        }
        drop(out);
        serve(listener, origin).await;
        std::process::ExitCode::SUCCESS
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use hub_testkit::{Flavor, MockServer};

    async fn floor_before(mock: &MockServer) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let origin = Origin::parse(&mock.origin()).unwrap();
        tokio::spawn(serve(listener, origin));
        url
    }

    fn chat(stream: bool) -> serde_json::Value {
        serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Say hello."}],
            "stream": stream,
        })
    }

    /// A plain call and a streamed one come back through the floor as the mock sent them, and the
    /// mock saw the caller's path, key and body.
    #[tokio::test]
    async fn relays_calls_and_streams_unchanged() {
        let mock = MockServer::start(Flavor::OpenAi).await;
        let floor = floor_before(&mock).await;
        let http = reqwest::Client::new();
        for stream in [false, true] {
            let send = |base: String| {
                http.post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(mock.api_key())
                    .json(&chat(stream))
                    .send()
            };
            let via = send(floor.clone()).await.unwrap();
            assert_eq!(via.status(), 200);
            let ct = via.headers().get("content-type").cloned();
            let via_body = via.text().await.unwrap_or_default();
            let direct = send(mock.origin()).await.unwrap();
            assert_eq!(ct, direct.headers().get("content-type").cloned());
            let direct_body = direct.text().await.unwrap_or_default();
            // The mock numbers its responses; all else is the same.
            let strip = |s: &str| {
                s.split("chatcmpl-mock")
                    .map(|p| p.trim_start_matches(|c: char| c.is_ascii_digit()))
                    .collect::<Vec<_>>()
                    .join("")
            };
            assert!(!via_body.is_empty());
            assert_eq!(strip(&via_body), strip(&direct_body), "stream={stream}");
            if stream {
                assert!(via_body.contains("data: [DONE]"), "{via_body}");
            }
        }
        let seen = mock.requests();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0].path, "/v1/chat/completions");
        assert_eq!(
            seen[0].header("authorization"),
            Some(format!("Bearer {}", mock.api_key()).as_str())
        );
        // Each call through the floor (0, 2) reached the mock as the direct one after it (1, 3).
        for (via, direct) in [(&seen[0], &seen[1]), (&seen[2], &seen[3])] {
            assert_eq!(via.path, direct.path);
            assert_eq!(via.body, direct.body);
            assert_eq!(via.header("host"), direct.header("host"));
        }
    }

    /// An upstream that is not there is a 502 naming the failure, not a hang or a dropped
    /// connection.
    #[tokio::test]
    async fn an_unreachable_upstream_is_a_502() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(listener, Origin::parse(&origin).unwrap()));
        let resp = reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        assert!(
            resp.text()
                .await
                .unwrap_or_default()
                .starts_with("upstream: ")
        );
    }

    #[test]
    fn the_upstream_must_be_a_plain_http_origin() {
        assert!(Origin::parse("http://127.0.0.1:8080/v1").is_ok());
        assert!(Origin::parse("https://api.openai.com").is_err());
        assert!(Origin::parse("127.0.0.1:8080").is_err());
        let o = Origin::parse("http://127.0.0.1:8080/v1").unwrap();
        let uri: Uri = "/v1/chat/completions?x=1".parse().unwrap();
        assert_eq!(
            o.uri_for(&uri).map(|u| u.to_string()).ok().as_deref(),
            Some("http://127.0.0.1:8080/v1/chat/completions?x=1")
        );
    }
}
