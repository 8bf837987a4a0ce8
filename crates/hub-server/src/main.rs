//! `aigne-hub`: run the hub, or administer its data dir.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use hub_server::cli::{self, Cli, Command, Out};
use hub_server::ledger_cli::Failure;

/// jemalloc instead of glibc's malloc: the request path allocates many small, short-lived objects
/// (JSON values, headers, records), and glibc's malloc/free was ~17 % of the hub's instructions per
/// request (BENCHMARKS.md). jemalloc rather than mimalloc, which the hub used before, for what a
/// burst leaves behind: pages freed when thousands of streams' handlers return stayed resident
/// under mimalloc, which purges only when later frees happen and open streams make few, while
/// jemalloc's background thread gives them back within a second (`.cargo/config.toml`; 5,000 open
/// streams in ~186 MB instead of ~212, BENCHMARKS.md, twenty-third session). The `jemalloc`
/// feature (on by default) chooses it; without it the system allocator serves, which heap
/// profilers (heaptrack, valgrind) can see.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

#[cfg(all(test, feature = "jemalloc", target_os = "linux"))]
mod tests {
    use std::io::Read;
    use std::time::{Duration, Instant};

    /// The options `.cargo/config.toml` compiles in are the ones the binary runs with.
    #[test]
    fn jemalloc_runs_with_the_compiled_in_options() -> Result<(), tikv_jemalloc_ctl::Error> {
        assert!(tikv_jemalloc_ctl::opt::background_thread::read()?);
        let conf = tikv_jemalloc_ctl::config::malloc_conf::read()?;
        assert!(
            conf.contains("dirty_decay_ms:1000") && conf.contains("muzzy_decay_ms:0"),
            "compiled-in options: {conf}"
        );
        Ok(())
    }

    /// This process's resident set in KB, read without allocating (an allocation could purge
    /// in the foreground, which is not what is tested).
    fn rss_kb() -> u64 {
        let mut buf = [0u8; 4096];
        let Ok(mut f) = std::fs::File::open("/proc/self/status") else {
            return 0;
        };
        let n = f.read(&mut buf).unwrap_or(0);
        let status = std::str::from_utf8(&buf[..n]).unwrap_or("");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// What scenario 4 of the benchmarks depends on: a burst of allocations freed between
    /// long-lived ones (handlers returning while their streams stay open) is given back to the
    /// system while the process allocates nothing more. Without the background thread, freed
    /// pages are purged only as later allocations tick the allocator's clock.
    #[test]
    fn pages_freed_in_a_burst_are_returned_while_the_process_idles() {
        const BLOCKS: usize = 20_000;
        let mut kept = Vec::with_capacity(BLOCKS);
        let mut burst = Vec::with_capacity(BLOCKS);
        for i in 0..BLOCKS {
            kept.push(vec![i as u8; 512]);
            burst.push(vec![i as u8; 4096]);
        }
        let burst_kb = (BLOCKS * 4096 / 1024) as u64;
        let before = rss_kb();
        assert!(
            before > burst_kb,
            "resident {before} KB with the burst allocated"
        );
        drop(burst);
        let start = Instant::now();
        let mut now = rss_kb();
        while before - now.min(before) < burst_kb * 3 / 4
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
            now = rss_kb();
        }
        assert!(
            before - now.min(before) >= burst_kb * 3 / 4,
            "resident {before} KB before the burst was freed, {now} KB {:?} after",
            start.elapsed()
        );
        assert_eq!(kept.len(), BLOCKS);
    }
}
