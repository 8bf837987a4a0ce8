//! `hub.serve({host, port})`: hub-server's HTTP API, run on napi's tokio runtime inside the Node
//! process, sharing the hub (and so its configuration, key index and usage writer) with the
//! in-process API. Closing the server leaves the hub open.

use std::net::SocketAddr;

use hub_core::{Hub, HubError};
use hub_server::ServerOptions;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::errors::{hub_err, invalid};

/// A running HTTP server.
#[napi]
pub struct NativeServer {
    port: u32,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
}

pub(crate) async fn start(
    hub: Hub,
    host: &str,
    port: u32,
    max_body_bytes: Option<u32>,
) -> Result<NativeServer> {
    let port = u16::try_from(port)
        .map_err(|_| invalid(HubError::invalid_param("port", "port must be 0..=65535")))?;
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        invalid(HubError::invalid_param(
            "host",
            format!("host must be an IP address (e.g. 127.0.0.1), got `{host}`"),
        ))
    })?;
    let mut opts = ServerOptions::default();
    if let Some(max) = max_body_bytes {
        opts.max_body_bytes = max as usize;
    }
    // As `aigne-hub serve` (the open-files limit is process-wide: Node's own sockets share it).
    hub_server::prepare_process_to_serve();
    let (bound_tx, bound_rx) = oneshot::channel::<SocketAddr>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(hub_server::serve_open(
        hub,
        SocketAddr::new(ip, port),
        opts,
        move |addr| {
            let _ = bound_tx.send(addr);
        },
        async move {
            // Resolves on close(), or when the handle is dropped.
            let _ = stop_rx.await;
        },
    ));
    match bound_rx.await {
        Ok(addr) => Ok(NativeServer {
            port: u32::from(addr.port()),
            stop: Mutex::new(Some(stop_tx)),
            task: Mutex::new(Some(task)),
        }),
        Err(_) => {
            // The server ended before binding: report why.
            let why = match task.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => "the server stopped before it was bound".to_string(),
                Err(e) => e.to_string(),
            };
            Err(hub_err(&HubError::internal(format!(
                "cannot listen on {host}:{port}: {why}"
            ))))
        }
    }
}

#[napi]
impl NativeServer {
    /// The bound port (useful with port 0).
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Stops accepting connections and waits for in-flight requests to finish.
    #[napi]
    pub async fn close(&self) -> Result<()> {
        if let Some(stop) = self.stop.lock().take() {
            let _ = stop.send(());
        }
        let task = self.task.lock().take();
        if let Some(task) = task {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(hub_err(&HubError::internal(e.to_string()))),
                Err(e) => return Err(hub_err(&HubError::internal(e.to_string()))),
            }
        }
        Ok(())
    }
}
