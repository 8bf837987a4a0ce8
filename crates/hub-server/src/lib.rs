//! AIGNE Hub HTTP server: the routes table, thin handlers, ingress/egress codecs and the CLI.

pub mod admin; // /api/admin/* and /api/me/* (admin API), /api/openapi.json
pub mod admin_cli; // admin user|team|key|audit|rotate-master-key
pub mod aigne; // AIGNE Hub ingress (`/api/v2/*`, `/api/ai/models`, `/api/user/info`, discovery)
pub mod anthropic; // Anthropic-compatible ingress (/v1/messages)
pub mod cli; // `aigne-hub` command line: serve, admin
pub mod errors; // HubError -> the caller's error format
pub mod ledger_cli; // `ledger verify`, `admin credits|billing|price`, usage report/export
mod listen; // the accept loop: HTTP/1.1 or HTTP/2 per connection, graceful shutdown
pub mod observability; // admin health report, Prometheus metrics
pub mod openai; // OpenAI-compatible ingress
pub mod request; // bearer token, call context, body limits
pub mod routes; // the route table

use std::net::SocketAddr;

use hub_core::Hub;

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    pub hub: Hub,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request body accepted (default 30 MB, as the original).
    pub max_body_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_body_bytes: 30 * 1024 * 1024,
        }
    }
}

/// What a process does once before it serves (`aigne-hub serve`, the Node module's `serve()`),
/// not every server a test starts: builds the tokenizer's rank table on a blocking thread (every
/// chat call estimates its prompt's tokens for the limits, and the first caller should not wait
/// for it), and raises the open-files limit. Needs a tokio runtime.
pub fn prepare_process_to_serve() {
    tokio::task::spawn_blocking(hub_core::tokenize::warm);
    raise_open_files_limit();
}

/// Raises this process's soft limit on open files to its hard limit, as a server that holds
/// thousands of connections needs: an open stream holds up to two (the caller's, and the
/// upstream's unless it shares an HTTP/2 connection).
/// Service managers commonly start processes with a soft limit of 1,024 (systemd's default, with a
/// hard limit of 524,288), which would refuse connections past ~500 streams. Logs what it did,
/// and warns when the limit stays low. Not Unix: nothing to do.
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        // Linux's default `fs.nr_open`: a soft limit above it is refused even when the hard limit
        // is unlimited; macOS refuses anything above `kern.maxfilesperproc` (10,240 by default).
        const CEILINGS: [u64; 3] = [1 << 20, 65_536, 10_240];
        const WARN_BELOW: u64 = 4_096;
        let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
        // `None`: unlimited.
        let mut now = current;
        if let Some(cur) = current {
            for ceiling in CEILINGS {
                let target = maximum.map_or(ceiling, |max| max.min(ceiling));
                if target <= cur {
                    continue;
                }
                let new = Rlimit {
                    current: Some(target),
                    maximum,
                };
                if setrlimit(Resource::Nofile, new).is_ok() {
                    tracing::info!(from = cur, to = target, "raised the open-files limit");
                    now = Some(target);
                    break;
                }
            }
        }
        if let Some(n) = now
            && n < WARN_BELOW
        {
            tracing::warn!(
                limit = n,
                "the open-files limit is low: an open stream holds up to two connections, so \
                 only about {} streams can be open at once; raise the hard limit (LimitNOFILE=, \
                 ulimit -Hn)",
                n / 2
            );
        }
    }
}

/// Binds `addr` and serves until `shutdown` resolves, then closes the hub. `on_bound` is called
/// with the bound address (port 0 picks a free port).
pub async fn serve(
    hub: Hub,
    addr: SocketAddr,
    opts: ServerOptions,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_open(hub.clone(), addr, opts, on_bound, shutdown).await?;
    hub.close().await;
    Ok(())
}

/// `serve`, leaving the hub open when the server stops: for a host that owns the hub and serves
/// HTTP from it only for a while (the Node module's `hub.serve()`).
pub async fn serve_open(
    hub: Hub,
    addr: SocketAddr,
    opts: ServerOptions,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    on_bound(listener.local_addr()?);
    let app = routes::app(AppState { hub: hub.clone() }, &opts);
    listen::serve(listener, app, shutdown).await;
    Ok(())
}
