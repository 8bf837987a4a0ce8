//! `hub-mock`: serve one or all mock upstreams until killed.
//!
//! Prints one JSON line `{"<flavor>": {"origin": "...", "base_url": "..."}, ...}` on stdout.

use std::io::Write as _;
use std::net::IpAddr;

use clap::Parser;
use hub_testkit::{Flavor, MockConfig, MockServer};

#[derive(Parser, Debug)]
#[command(
    name = "hub-mock",
    about = "Protocol-faithful mock upstreams for AIGNE Hub"
)]
struct Args {
    /// Flavor to serve: openai, deepseek, xai, openrouter, doubao, poe, ollama, anthropic, gemini, bedrock.
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    flavor: Option<Flavor>,
    /// Serve all ten flavors, each on its own port (order of `Flavor::all()`).
    #[arg(long)]
    all: bool,
    /// Port (0 = any free port). With --all, flavors take PORT, PORT+1, ... unless 0.
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Bearer key the mocks accept (Ollama accepts any).
    #[arg(long, default_value = "sk-test")]
    api_key: String,
    /// AWS secret access key the Bedrock mock verifies SigV4 with (access key id = --api-key).
    #[arg(long, default_value = hub_testkit::DEFAULT_AWS_SECRET_KEY)]
    aws_secret_key: String,
    /// Default first-byte delay for requests whose script sets none.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Default delay between stream chunks.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Keep at most N recorded requests per mock (0 = record nothing).
    #[arg(long, default_value_t = 10_000)]
    record_limit: usize,
    /// Serve HTTPS, offering HTTP/2 and HTTP/1.1 by ALPN, with a server certificate from a
    /// private CA made at start; the CA is written to DIR/ca.pem (give it to the hub as
    /// HUB_EXTRA_CA_FILE). Without it: plain HTTP.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let flavors: Vec<Flavor> = match args.flavor {
        Some(f) if !args.all => vec![f],
        _ => Flavor::all().to_vec(),
    };
    let tls = match &args.tls_dir {
        None => None,
        Some(dir) => {
            let (ca, tls) = hub_testkit::tls::private_ca(&["h2", "http/1.1"])
                .map_err(|e| std::io::Error::other(format!("cannot make the certificates: {e}")))?;
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join("ca.pem"), ca)?;
            Some(tls)
        }
    };
    let mut servers = Vec::with_capacity(flavors.len());
    for (i, flavor) in flavors.into_iter().enumerate() {
        let port = if args.port == 0 {
            0
        } else {
            u16::try_from(i)
                .ok()
                .and_then(|i| args.port.checked_add(i))
                .ok_or_else(|| std::io::Error::other("port out of range"))?
        };
        let config = MockConfig {
            api_key: args.api_key.clone(),
            host: args.host,
            port,
            default_first_byte_delay_ms: args.latency_ms,
            default_chunk_delay_ms: args.chunk_delay_ms,
            record_limit: Some(args.record_limit),
            aws_secret_key: args.aws_secret_key.clone(),
            tls: tls.clone(),
        };
        servers.push(MockServer::try_start_with_config(flavor, config).await?);
    }
    let mut map = serde_json::Map::new();
    for s in &servers {
        map.insert(
            s.flavor().name().to_owned(),
            serde_json::json!({"origin": s.origin(), "base_url": s.base_url()}),
        );
    }
    print_line(&serde_json::Value::Object(map).to_string())?;
    wait_for_signal().await;
    drop(servers);
    Ok(())
}

#[expect(
    clippy::print_stdout,
    reason = "the binary's contract is one JSON line on stdout"
)]
fn print_line(line: &str) -> std::io::Result<()> {
    println!("{line}");
    std::io::stdout().flush()
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
