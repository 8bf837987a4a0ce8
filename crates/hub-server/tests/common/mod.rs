//! Helpers shared by the server tests: a hub served in-process (`Served`), and the address the
//! `aigne-hub` binary prints (`listening_address`). Each test binary uses some of them.
#![allow(dead_code, reason = "each test binary uses some of these helpers")]

use std::net::SocketAddr;
use std::time::Duration;

use hub_core::Hub;
use tokio::io::AsyncBufReadExt;

/// A hub served by `hub_server::serve` in a background task on a free port of 127.0.0.1 (the hub
/// is closed when the server stops). Dropping it, or `stop`, begins a graceful shutdown.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server's task: it ends once every connection has closed.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub async fn start(hub: Hub) -> Served {
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(hub_server::serve(
            hub,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            hub_server::ServerOptions::default(),
            move |a| {
                let _ = addr_tx.send(a);
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        let addr = match addr_rx.await {
            Ok(a) => a,
            Err(_) => unreachable!("the server did not bind 127.0.0.1:0"),
        };
        Served {
            addr,
            stop: Some(stop_tx),
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the child's stdout (piped) until `aigne-hub serve` prints its address; returns it
/// (`http://127.0.0.1:PORT`). Fails the test if the hub exits or stays silent for 30 s first.
pub async fn listening_address(child: &mut tokio::process::Child) -> String {
    let Some(stdout) = child.stdout.take() else {
        unreachable!("the hub's stdout is not piped");
    };
    let mut lines = tokio::io::BufReader::new(stdout);
    for _ in 0..10 {
        let mut l = String::new();
        match tokio::time::timeout(Duration::from_secs(30), lines.read_line(&mut l)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => unreachable!("the hub's stdout is unreadable: {e}"),
            Err(_) => unreachable!("the hub printed nothing for 30 s"),
        }
        if let Some(rest) = l.trim().strip_prefix("aigne-hub listening on ") {
            return rest.to_string();
        }
    }
    unreachable!("the hub did not print its address")
}
