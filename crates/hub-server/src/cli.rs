//! The `aigne-hub` command line. `serve` runs the hub; `admin ...` changes configuration in the
//! data dir directly (a running server notices within a second).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use hub_core::Hub;
use hub_core::config::{HubOptions, MasterKeySource, providers_from_env};
use hub_core::hub::open_store_and_vault;
use hub_core::iam::{self, Actor};
use hub_core::providers::{ProviderKind, Secret};
use hub_core::store::Store;
use hub_core::switches::BenchSwitches;
use hub_core::vault::Vault;

#[derive(Parser, Debug)]
#[command(
    name = "aigne-hub",
    version,
    about = "AIGNE Hub: a self-hosted AI gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Change configuration in a data dir (works while `serve` runs).
    Admin(AdminArgs),
    /// The credit ledger (`ledger verify`).
    Ledger(crate::ledger_cli::LedgerArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data directory (SQLite database, master key).
    #[arg(long, env = "HUB_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long, env = "HUB_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "HUB_PORT", default_value_t = 8090)]
    pub port: u16,
    #[command(flatten)]
    pub data: DataArgs,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "HUB_MAX_BODY_BYTES", default_value_t = 30 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Public URL of this hub (attribution, links).
    #[arg(long, env = "HUB_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// BENCHMARKING ONLY: comma list of parts to switch off (`auth`, `limits`, `usage_log`) to measure what
    /// they cost. Everything is on unless named here. Never for a real hub.
    #[arg(long, env = "HUB_BENCH_DISABLE", hide = true, default_value = "")]
    pub bench_disable: String,
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Providers.
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Provider credentials (stored encrypted, shown masked).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Usage records, reports and CSV export.
    #[command(subcommand)]
    Usage(UsageCommand),
    /// Users, teams, API keys, audit log, master-key rotation.
    #[command(flatten)]
    Iam(crate::admin_cli::IamCommand),
    /// Credit balances: grant, adjust, balance, entries.
    #[command(subcommand)]
    Credits(crate::ledger_cli::CreditsCommand),
    /// Billing mode and settings.
    #[command(subcommand)]
    Billing(crate::ledger_cli::BillingCommand),
    /// The price book.
    #[command(subcommand)]
    Price(crate::ledger_cli::PriceCommand),
}

#[derive(Subcommand, Debug)]
pub enum ProviderCommand {
    /// Add or update a provider.
    Add {
        /// openai, anthropic, bedrock, google, deepseek, ollama, openrouter, xai, doubao, poe
        #[arg(long)]
        name: String,
        #[arg(long)]
        base_url: Option<String>,
        #[arg(long)]
        region: Option<String>,
        /// Add it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List providers.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a provider and its credentials.
    Remove {
        #[arg(long)]
        name: String,
    },
    /// Show or change a provider's stored timeouts (milliseconds). Fields not given keep their
    /// stored value; `--clear` drops every stored value first (the environment's apply again).
    /// Running servers apply the change within a second.
    Timeouts {
        #[arg(long)]
        name: String,
        #[arg(long)]
        connect_ms: Option<u64>,
        #[arg(long)]
        ttfb_ms: Option<u64>,
        #[arg(long)]
        idle_ms: Option<u64>,
        #[arg(long)]
        total_ms: Option<u64>,
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CredentialCommand {
    /// Add a credential. `--value -` reads it from standard input (keeps it out of shell history).
    Add {
        #[arg(long)]
        provider: String,
        #[arg(long, env = "HUB_CREDENTIAL_VALUE", hide_env_values = true)]
        value: String,
        /// Secret access key (Bedrock).
        #[arg(long, env = "HUB_CREDENTIAL_SECRET", hide_env_values = true)]
        secret: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 100)]
        weight: u32,
    },
    /// List credentials (masked).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a credential.
    Remove {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsageCommand {
    /// Newest usage records first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Usage and cost grouped by user, team, app, provider, model and hour/day/month, with totals.
    Report(crate::ledger_cli::ReportArgs),
    /// Usage records as CSV (RFC 4180).
    Export(crate::ledger_cli::ExportArgs),
}

/// Everything the hub reads from the environment at start.
pub fn hub_options(data_dir: PathBuf, public_url: Option<String>) -> HubOptions {
    let mut opts = HubOptions::new(data_dir);
    opts.master_key = std::env::var("HUB_MASTER_KEY")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| MasterKeySource::Value(Secret::new(v)))
        .or_else(|| {
            std::env::var("HUB_MASTER_KEY_FILE")
                .ok()
                .filter(|v| !v.is_empty())
                .map(|p| MasterKeySource::File(PathBuf::from(p)))
        });
    opts.admin_key = std::env::var("HUB_ADMIN_KEY")
        .ok()
        .filter(|v| !v.is_empty())
        .map(Secret::new);
    opts.env_providers = providers_from_env(|k| std::env::var(k).ok());
    opts.public_url = public_url;
    opts
}

/// Timeouts, health tunables and upstream TLS roots from the environment (`HUB_TIMEOUT_*_MS`,
/// `<PREFIX>_TIMEOUT_*_MS`, `HUB_BREAKER_*`, `HUB_AUTH_RECHECK_*`, `HUB_EXTRA_CA_FILE`, ...). Bad
/// values stop the start.
pub fn resilience_from_env(opts: &mut HubOptions) -> Result<(), String> {
    let (timeouts, per) = hub_core::timeouts::timeouts_from_env(|k| std::env::var(k).ok())?;
    opts.timeouts = timeouts;
    opts.provider_timeouts = per;
    opts.health = hub_core::timeouts::health_from_env(|k| std::env::var(k).ok())?;
    opts.extra_ca_pem = hub_core::timeouts::extra_ca_from_env(|k| std::env::var(k).ok())?;
    Ok(())
}

/// Output lines for the operator (stdout), kept apart from logs (stderr).
pub trait Out {
    fn line(&mut self, s: &str);
}

/// Runs `serve`. Prints the listening address, and the owner key when one was just created.
pub async fn serve(args: ServeArgs, out: &mut dyn Out) -> Result<(), String> {
    let mut opts = hub_options(args.data.data_dir.clone(), args.public_url.clone());
    resilience_from_env(&mut opts)?;
    opts.billing = crate::ledger_cli::billing_defaults()?;
    opts.switches = BenchSwitches::from_disable_list(&args.bench_disable)?;
    let opened = Hub::open(opts).await.map_err(|e| e.to_string())?;
    if let Some(key) = &opened.new_owner_key {
        out.line(&format!("owner API key (shown once, store it now): {key}"));
    }
    let providers: Vec<&str> = opened
        .hub
        .configured_providers()
        .iter()
        .map(|p| p.name())
        .collect();
    tracing::info!(providers = ?providers, data_dir = %args.data.data_dir.display(), "hub opened");
    crate::prepare_process_to_serve();
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .map_err(|e| format!("invalid --host/--port: {e}"))?;
    crate::serve(
        opened.hub,
        addr,
        crate::ServerOptions {
            max_body_bytes: args.max_body_bytes,
        },
        |a| out.line(&format!("aigne-hub listening on http://{a}")),
        shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

fn parse_provider(name: &str) -> Result<ProviderKind, String> {
    ProviderKind::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown provider `{name}`; one of: {}", names.join(", "))
    })
}

fn read_value(v: String) -> Result<String, String> {
    if v == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| e.to_string())?;
        Ok(s.trim().to_string())
    } else {
        Ok(v)
    }
}

/// Runs an `admin` command against the data dir.
pub async fn admin(args: AdminArgs, out: &mut dyn Out) -> Result<(), String> {
    let opts = hub_options(args.data.data_dir.clone(), None);
    if let AdminCommand::Iam(cmd) = args.command {
        return crate::admin_cli::run(&opts, cmd, out).await;
    }
    let (store, vault) = open_store_and_vault(&opts).map_err(|e| e.to_string())?;
    run_admin(store, &vault, args.command, out).await
}

async fn run_admin(
    store: Arc<dyn Store>,
    vault: &Vault,
    cmd: AdminCommand,
    out: &mut dyn Out,
) -> Result<(), String> {
    let e = |e: hub_core::store::StoreError| e.to_string();
    // Changes go through `hub_core::iam` as the owner, audited like the API's.
    let h = |e: hub_core::HubError| e.message;
    let cli = Actor::cli();
    match cmd {
        AdminCommand::Provider(ProviderCommand::Add {
            name,
            base_url,
            region,
            disabled,
        }) => {
            let kind = parse_provider(&name)?;
            let settings = iam::ProviderSettingsIn {
                base_url,
                region,
                enabled: !disabled,
            };
            iam::upsert_provider(store.as_ref(), &cli, kind, &settings)
                .await
                .map_err(h)?;
            out.line(&format!("provider {kind} saved"));
        }
        AdminCommand::Provider(ProviderCommand::List { json }) => {
            let rows = store.list_providers().await.map_err(e)?;
            if json {
                out.line(&serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
            } else {
                for r in rows {
                    out.line(&format!(
                        "{}\t{}\t{}",
                        r.kind,
                        if r.enabled { "enabled" } else { "disabled" },
                        r.base_url.as_deref().unwrap_or(r.kind.default_base_url())
                    ));
                }
            }
        }
        AdminCommand::Provider(ProviderCommand::Timeouts {
            name,
            connect_ms,
            ttfb_ms,
            idle_ms,
            total_ms,
            clear,
        }) => {
            use hub_core::timeouts::TimeoutSettings;
            let kind = parse_provider(&name)?;
            let key = TimeoutSettings::key(kind);
            let stored = store
                .get_setting(&key)
                .await
                .map_err(e)?
                .and_then(|v| serde_json::from_str::<TimeoutSettings>(&v).ok())
                .unwrap_or_default();
            let changing = clear
                || [connect_ms, ttfb_ms, idle_ms, total_ms]
                    .iter()
                    .any(Option::is_some);
            let shown = if changing {
                let base = if clear {
                    TimeoutSettings::default()
                } else {
                    stored
                };
                let next = TimeoutSettings {
                    connect_ms: connect_ms.or(base.connect_ms),
                    ttfb_ms: ttfb_ms.or(base.ttfb_ms),
                    idle_ms: idle_ms.or(base.idle_ms),
                    total_ms: total_ms.or(base.total_ms),
                };
                hub_core::iam::set_provider_timeouts(
                    store.as_ref(),
                    &hub_core::iam::Actor::cli(),
                    kind,
                    &next,
                )
                .await
                .map_err(|e| e.message)?
            } else {
                stored
            };
            out.line(&serde_json::to_string(&shown).map_err(|e| e.to_string())?);
        }
        AdminCommand::Provider(ProviderCommand::Remove { name }) => {
            let kind = parse_provider(&name)?;
            iam::delete_provider(store.as_ref(), &cli, kind)
                .await
                .map_err(h)?;
            out.line(&format!("provider {kind} removed"));
        }
        AdminCommand::Credential(CredentialCommand::Add {
            provider,
            value,
            secret,
            name,
            weight,
        }) => {
            let new = iam::NewCredential {
                provider,
                value: read_value(value)?,
                secret,
                name,
                weight,
                enabled: true,
            };
            let row = iam::add_credential(store.as_ref(), vault, &cli, &new)
                .await
                .map_err(h)?;
            out.line(&format!(
                "credential {} added to {} ({})",
                row.id, row.provider, row.masked
            ));
        }
        AdminCommand::Credential(CredentialCommand::List { json }) => {
            let rows = store.list_credentials().await.map_err(e)?;
            if json {
                out.line(&serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
            } else {
                for r in rows {
                    out.line(&format!(
                        "{}\t{}\t{}\t{}\tweight {}",
                        r.id, r.provider, r.name, r.masked, r.weight
                    ));
                }
            }
        }
        AdminCommand::Credential(CredentialCommand::Remove { id }) => {
            iam::delete_credential(store.as_ref(), &cli, &id)
                .await
                .map_err(h)?;
            out.line(&format!("credential {id} removed"));
        }
        AdminCommand::Iam(cmd) => {
            return Err(format!(
                "{cmd:?} runs through `admin` (it needs the data dir options)"
            ));
        }
        AdminCommand::Credits(c) => return crate::ledger_cli::credits(store, c, out).await,
        AdminCommand::Billing(c) => return crate::ledger_cli::billing(store, c, out).await,
        AdminCommand::Price(c) => return crate::ledger_cli::price(store, c, out).await,
        AdminCommand::Usage(UsageCommand::Report(a)) => {
            return crate::ledger_cli::report(store, a, out).await;
        }
        AdminCommand::Usage(UsageCommand::Export(a)) => {
            return crate::ledger_cli::export(store, a, out).await;
        }
        AdminCommand::Usage(UsageCommand::List { limit, json }) => {
            let rows = store.list_usage(limit).await.map_err(e)?;
            if json {
                out.line(&serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
            } else {
                for r in rows {
                    out.line(&format!(
                        "{}\t{}\t{}\t{}\t{}\tin {} out {}\t{} ms",
                        r.id,
                        r.status.as_str(),
                        r.requested_model,
                        r.provider.as_deref().unwrap_or("-"),
                        r.http_status,
                        r.prompt_tokens,
                        r.completion_tokens,
                        r.latency_ms
                    ));
                }
            }
        }
    }
    Ok(())
}
