//! The accept loop: each caller connection served with hyper's HTTP/1.1 or HTTP/2 (prior
//! knowledge) connection, chosen by peeking at its first bytes, with graceful shutdown.
//!
//! Why not `axum::serve`: it serves through hyper-util's protocol-detecting builder, which reads
//! the first 24 bytes itself and hands them back to hyper's HTTP/1.1 connection as a separate
//! first read. hyper parses those 24 bytes, finds the head incomplete, and reserves room for the
//! next read while they are still in its buffer, so the buffer's `Vec` doubles: every caller
//! connection kept a 16 KB read buffer instead of 8 KB (heaptrack, BENCHMARKS.md "Memory per open
//! stream"). Peeking leaves the bytes in the socket; hyper reads the whole head at once.

use std::future::Future;
use std::pin::{Pin, pin};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What an HTTP/2 connection with prior knowledge (RFC 9113 §3.3) starts with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, asks every open
/// connection to finish (HTTP/1.1: after its current response; HTTP/2: GOAWAY) and returns when
/// all have closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // Finalised once: each connection gets a cheap clone of the finished route table.
    let app = app.with_state::<()>(());
    // Shutdown drops `stop_rx`, so `closed()` on `stop_tx` (and on each connection's clone of it)
    // resolves; each connection holds a receiver of `open_tx`, whose `closed()` resolves once the
    // last connection is done.
    let (stop_tx, stop_rx) = watch::channel(());
    let (open_tx, open_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(stop_rx);
    });
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = stop_tx.closed() => break,
        };
        // TCP_NODELAY: a head+body written in two segments must not wait for a delayed ACK
        // (design.md §8).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let service = TowerToHyperService::new(app.clone());
        let stop = stop_tx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            serve_connection(tcp, service, stop).await;
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}

async fn serve_connection(
    tcp: TcpStream,
    service: TowerToHyperService<Router>,
    stop: watch::Sender<()>,
) {
    let h2 = tokio::select! {
        h2 = starts_with_h2_preface(&tcp) => match h2 {
            Ok(h2) => h2,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed before its first request");
                return;
            }
        },
        // Shutting down before the caller sent a byte: nothing is in flight, close.
        () = stop.closed() => return,
    };
    let io = TokioIo::new(tcp);
    if h2 {
        // Boxed: an HTTP/2 connection's state is more than twice an HTTP/1.1 one's, and inline
        // it would size every connection's task (most callers speak HTTP/1.1).
        Box::pin(serve_h2(io, service, &stop)).await;
    } else {
        let conn = pin!(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
        );
        until_done(conn, &stop, |c| c.graceful_shutdown()).await;
    }
}

async fn serve_h2(
    io: TokioIo<TcpStream>,
    service: TowerToHyperService<Router>,
    stop: &watch::Sender<()>,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.enable_connect_protocol();
    let conn = pin!(builder.serve_connection(io, service));
    until_done(conn, stop, |c| c.graceful_shutdown()).await;
}

/// Drives a connection to its end; when shutdown begins first, asks it to finish (`graceful`,
/// once) and goes on driving it until it has. The connection is pinned by the caller: moved in
/// by value, it would be stored twice in this future's state (as the argument and as the pinned
/// local), in every connection's task.
async fn until_done<C, E>(
    mut conn: Pin<&mut C>,
    stop: &watch::Sender<()>,
    graceful: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let done = tokio::select! {
        done = conn.as_mut() => done,
        () = stop.closed() => {
            graceful(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = done {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

/// Whether the connection's first bytes are HTTP/2's preface, without consuming them. Any
/// HTTP/1.x request differs from it by its fourth byte at the latest, so the answer usually comes
/// from the first segment. A caller that sends the preface's start and then stalls is re-peeked
/// every few milliseconds, for up to 10 s.
async fn starts_with_h2_preface(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            // Closed before a byte (hyper sees the EOF and ends quietly), or not the preface.
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "stalled inside the HTTP/2 preface",
            ));
        }
        // A partial preface: peek returns the same bytes at once until more arrive.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An accept error. Per-connection errors (the caller reset it before it was accepted) are
/// skipped; running out of descriptors or memory is waited out (1 s), as the connections that
/// hold them close.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_testkit::returned_size;

    /// Every open caller connection is a task holding this future's state, 5,000 of them in the
    /// open-streams benchmark (BENCHMARKS.md). It should be an HTTP/1.1 connection and little more:
    /// it was 3.4 KB when the HTTP/2 branch was inline and connections were moved by value.
    #[test]
    fn a_connection_task_is_an_http1_connection_and_little_more() {
        type Service = TowerToHyperService<Router>;
        type Args = (TcpStream, Service, watch::Sender<()>);
        let task = returned_size(&|(t, s, stop): Args| serve_connection(t, s, stop));
        let h1 = std::mem::size_of::<
            hyper::server::conn::http1::UpgradeableConnection<TokioIo<TcpStream>, Service>,
        >();
        let h2 = std::mem::size_of::<
            hyper::server::conn::http2::Connection<TokioIo<TcpStream>, Service, TokioExecutor>,
        >();
        assert!(
            task < h1 + 512,
            "connection task {task} B, HTTP/1.1 connection {h1} B"
        );
        assert!(
            task < h2,
            "connection task {task} B, HTTP/2 connection {h2} B"
        );
    }
}
