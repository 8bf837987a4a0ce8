//! `aigne-hub serve` raises its soft open-files limit to the hard limit: each open stream holds
//! up to two connections, and service managers commonly start processes with a soft limit of
//! 1,024. Started here with a soft limit of 256, the hub holds 400 idle connections and still
//! answers on a new one.

#![cfg(target_os = "linux")]
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

const ADMIN: &str = "ahk_test_admin_key_0123456789abcdef";

/// The soft and hard "Max open files" of a process, from /proc.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (fields[0].to_string(), fields[1].to_string())
}

async fn get_healthz(base: &str) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn serve_raises_a_low_open_files_limit() {
    // Can this process give a child more than 256 at all?
    let (_, hard) = open_files_limits(std::process::id());
    if hard != "unlimited" && hard.parse::<u64>().unwrap() <= 512 {
        eprintln!("skipped: the hard open-files limit here is {hard}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -Sn 256 && exec "$0" serve --port 0 --data-dir "$1""#)
        .arg(env!("CARGO_BIN_EXE_aigne-hub"))
        .arg(dir.path().join("data"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HUB_ADMIN_KEY", ADMIN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let base = common::listening_address(&mut child).await;
    let (soft, hard) = open_files_limits(pid);
    let expected = if hard == "unlimited" {
        (1u64 << 20).to_string()
    } else {
        hard.parse::<u64>().unwrap().min(1 << 20).to_string()
    };
    assert_eq!(
        soft, expected,
        "soft limit raised to the hard limit ({hard})"
    );

    // More connections than the limit it was started with.
    let addr = base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Let the hub accept them all before asking on one more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_healthz(&base).await, 200);
    drop(held);
    let _ = child.kill().await;
}
