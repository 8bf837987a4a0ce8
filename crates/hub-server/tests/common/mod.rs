//! Helpers shared by the tests that run the `aigne-hub` binary.

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

/// Reads the child's stdout (piped) until `aigne-hub serve` prints its address; returns it
/// (`http://127.0.0.1:PORT`). Fails the test if the hub exits or stays silent for 30 s first.
pub async fn listening_address(child: &mut tokio::process::Child) -> String {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = tokio::io::BufReader::new(stdout);
    let mut base = None;
    for _ in 0..10 {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), lines.read_line(&mut l))
            .await
            .expect("the hub prints within 30 s")
            .expect("stdout readable");
        if n == 0 {
            break;
        }
        if let Some(rest) = l.trim().strip_prefix("aigne-hub listening on ") {
            base = Some(rest.to_string());
            break;
        }
    }
    base.expect("the hub printed its address")
}
