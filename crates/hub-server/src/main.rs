//! `aigne-hub`: run the hub, or administer its data dir.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use hub_server::cli::{self, Cli, Command, Out};
use hub_server::ledger_cli::Failure;

/// mimalloc instead of glibc malloc: the request path allocates many small, short-lived objects
/// (JSON values, headers, records), and glibc's malloc/free was ~17 % of the hub's instructions per
/// request (BENCHMARKS.md). The `mimalloc` feature (on by default) chooses it; without it the
/// system allocator serves, which heap profilers (heaptrack, valgrind) can see.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Stdout;

impl Out for Stdout {
    #[expect(clippy::print_stdout, reason = "operator-facing output of the CLI")]
    fn line(&mut self, s: &str) {
        println!("{s}");
        let _ = std::io::stdout().flush();
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aigne-hub: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = Stdout;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => cli::serve(args, &mut out).await.map_err(Failure::from),
            Command::Admin(args) => cli::admin(args, &mut out).await.map_err(Failure::from),
            Command::Ledger(args) => hub_server::ledger_cli::ledger(args, &mut out).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("aigne-hub: {}", f.message);
            ExitCode::from(f.exit_code)
        }
    }
}
