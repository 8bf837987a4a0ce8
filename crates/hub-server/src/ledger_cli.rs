//! CLI for billing: `aigne-hub ledger verify`, `admin credits ...`, `admin billing ...`,
//! `admin price ...`, `admin usage report|export`. All work against the data dir of a running
//! server (balances live in the database; settings and prices bump the config version, which
//! the server polls).

use std::str::FromStr;
use std::sync::Arc;

use clap::{Args, Subcommand};
use hub_core::hub::{BillingConfig, BillingDefaults, load_billing_config, now_ms};
use hub_core::iam::Actor;
use hub_core::ledger::report::{
    Dim, EXPORT_HEADER, Period, ReportZone, csv_line, export_line, totals,
};
use hub_core::ledger::{
    GrantKind, LedgerStore, ReportQuery, UsageFilter, quota_of, team_account, user_account,
};
use hub_core::ledger_admin::{
    self, BillingPatch, CreditIn, DecimalIn, PriceIn, RatesIn, RepriceIn,
};
use hub_core::pricing::{from_units, parse_amount};
use hub_core::store::{Store, StoreError};
use rust_decimal::Decimal;

use crate::cli::{DataArgs, Out};

fn e(err: StoreError) -> String {
    err.to_string()
}

/// Billing defaults from the environment (`HUB_BILLING_MODE`, `HUB_STARTER_CREDITS`, ...).
pub fn billing_defaults() -> Result<BillingDefaults, String> {
    BillingDefaults::from_env(|k| std::env::var(k).ok())
}

#[derive(Args, Debug)]
pub struct LedgerArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The database to check instead of `<data-dir>/hub.db`: `sqlite:///abs/path/hub.db`,
    /// `sqlite://relative/hub.db`, `sqlite:hub.db` or a plain path. This build has no
    /// PostgreSQL backend: a `postgres://` URL is refused (exit code 2).
    #[arg(long, global = true)]
    pub database: Option<String>,
    #[command(subcommand)]
    pub command: LedgerCommand,
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Proves the ledger: balance = Σ entries for every account; every capture has exactly one
    /// usage record and vice versa; no open reservation older than the window. Exits non-zero
    /// on any violation.
    Verify {
        /// Oldest an open reservation may be, seconds (default `HUB_RECONCILE_WINDOW_SECS`, 3600).
        #[arg(long)]
        window_secs: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CreditsCommand {
    /// Grants credits to a user (or team); idempotent by `--idempotency-key`.
    Grant {
        #[command(flatten)]
        who: Who,
        /// Decimal credits, e.g. 10 or 0.5 (at most 10 decimal places).
        #[arg(long)]
        amount: String,
        /// The grant expires (what is left of it) after this many days.
        #[arg(long)]
        expires_days: Option<u32>,
        /// Replaying the same key changes nothing (default: a fresh key).
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        note: Option<String>,
    },
    /// Corrects a balance up or down (never below zero); idempotent by `--idempotency-key`.
    Adjust {
        #[command(flatten)]
        who: Who,
        /// Signed decimal credits, e.g. -2.5.
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Why (required).
        #[arg(long = "reason", alias = "note")]
        note: Option<String>,
    },
    /// Prints the available balance as a decimal (`--json`: available, reserved, quota).
    Balance {
        #[command(flatten)]
        who: Who,
        #[arg(long)]
        json: bool,
    },
    /// Ledger entries of an account, oldest first.
    Entries {
        #[command(flatten)]
        who: Who,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct Who {
    /// User id.
    #[arg(long, conflicts_with = "team", required_unless_present = "team")]
    pub user: Option<String>,
    /// Team id (keys of a team draw on the team's balance).
    #[arg(long)]
    pub team: Option<String>,
}

impl Who {
    fn account(&self) -> String {
        match (&self.user, &self.team) {
            (_, Some(t)) => team_account(t),
            (Some(u), None) => user_account(u),
            (None, None) => String::new(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum BillingCommand {
    /// Shows the billing settings in force.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Changes billing settings (a running server applies them within a second).
    Set {
        /// internal | credits
        #[arg(long)]
        mode: Option<String>,
        /// Target margin in percent used to derive rates from provider cost.
        #[arg(long)]
        margin: Option<String>,
        /// USD per credit.
        #[arg(long)]
        base_credit_price: Option<String>,
        /// Credits granted once to every new user (0: none).
        #[arg(long)]
        starter_credits: Option<String>,
        /// Starter credits expire after this many days (0: never).
        #[arg(long)]
        starter_expiry_days: Option<u32>,
        /// Where a caller out of credits can buy more (the 402's link; empty to clear).
        #[arg(long)]
        payment_link: Option<String>,
        /// Shown before amounts, e.g. `$`.
        #[arg(long)]
        credit_prefix: Option<String>,
        /// Worst-case output tokens reserved when a request sets no max.
        #[arg(long)]
        max_output_tokens: Option<u32>,
        /// Report time zones whose day roll-ups are kept (comma list of IANA names or offsets,
        /// e.g. `UTC,Asia/Shanghai`); the server rebuilds new ones from the 15-minute roll-up.
        #[arg(long)]
        report_timezones: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PriceCommand {
    /// Current prices (credits and provider cost per 1M tokens; per image).
    List {
        /// Every version, oldest first.
        #[arg(long)]
        history: bool,
        #[arg(long)]
        json: bool,
    },
    /// Sets the price of one model (a new version; history is kept).
    Set {
        #[arg(long)]
        provider: String,
        /// The provider's own model id (`gpt-4o-mini`, `openai/gpt-4o-mini` on OpenRouter).
        #[arg(long)]
        model: String,
        /// chat | embedding | image
        #[arg(long = "type", default_value = "chat")]
        model_type: String,
        /// Per 1M tokens.
        #[arg(long, default_value = "0")]
        input: String,
        #[arg(long, default_value = "0")]
        output: String,
        #[arg(long)]
        cache_read: Option<String>,
        #[arg(long)]
        cache_write: Option<String>,
        /// Per image.
        #[arg(long)]
        image: Option<String>,
        /// The amounts are the provider's cost in USD; rates are derived with the margin.
        /// Without it they are the rates in credits.
        #[arg(long)]
        unit_cost: bool,
    },
    /// Re-derives every rate that has a provider cost with a new margin (bulk re-price); without
    /// `--provider` the margin setting changes too.
    Reprice {
        /// Margin in percent.
        #[arg(long, allow_hyphen_values = true)]
        margin: String,
        /// Only this provider's prices.
        #[arg(long)]
        provider: Option<String>,
    },
    /// Disables a price: appends a disabled version (the model then has no price; history stays).
    Disable {
        /// The current version of the price (`price list`).
        #[arg(long)]
        version: i64,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Group by: comma list of user, team, app, provider, model.
    #[arg(long, default_value = "")]
    pub by: String,
    /// hour | day | month
    #[arg(long)]
    pub period: Option<String>,
    /// Time zone for periods and dates: an IANA name (`Asia/Shanghai`, `America/New_York`,
    /// daylight saving included) or a UTC offset (`+08:00`, `-05:30`, `UTC`).
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// From (inclusive): `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM` in `--tz`, or epoch milliseconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Until (exclusive), same forms.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub app: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// CSV (RFC 4180; the only format, accepted for clarity).
    #[arg(long)]
    pub csv: bool,
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub app: Option<String>,
    #[arg(long)]
    pub limit: Option<u32>,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD[THH:MM[:SS]]` in the given offset, or epoch milliseconds.
pub fn parse_time(s: &str, tz_offset_minutes: i32) -> Result<i64, String> {
    let t = s.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    let bad =
        || format!("`{s}` is not a date (YYYY-MM-DD, YYYY-MM-DDTHH:MM) or epoch milliseconds");
    let (date, time) = t.split_once(['T', ' ']).unwrap_or((t, "00:00"));
    let dp: Vec<&str> = date.split('-').collect();
    let tp: Vec<&str> = time.split(':').collect();
    if dp.len() != 3 || tp.len() < 2 || tp.len() > 3 {
        return Err(bad());
    }
    let n = |v: &str| v.parse::<i64>().map_err(|_| bad());
    let (y, mo, d) = (n(dp[0])?, n(dp[1])?, n(dp[2])?);
    let (h, mi) = (n(tp[0])?, n(tp[1])?);
    let sec = if tp.len() == 3 { n(tp[2])? } else { 0 };
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..60).contains(&sec)
    {
        return Err(bad());
    }
    let local = ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60_000 + sec * 1000;
    Ok(local - i64::from(tz_offset_minutes) * 60_000)
}

/// A CLI failure with its process exit code (1: the check failed or an error; 2: the command
/// cannot run as asked, like a usage error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit_code: u8,
    pub message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            exit_code: 1,
            message,
        }
    }
}

fn usage_failure(message: String) -> Failure {
    Failure {
        exit_code: 2,
        message,
    }
}

/// The SQLite file a `--database` URL names. `sqlite:///abs` is an absolute path,
/// `sqlite://rel` and `sqlite:rel` relative ones (as sqlx reads them); `?...` options are
/// ignored; a directory means its `hub.db`. A PostgreSQL URL is refused: this build has no
/// PostgreSQL backend.
pub fn sqlite_path_of(url: &str) -> Result<std::path::PathBuf, Failure> {
    let u = url.trim();
    let scheme = u.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    let path = match scheme.as_deref() {
        Some("postgres" | "postgresql") => {
            return Err(usage_failure(
                "--database: this build has no PostgreSQL backend yet (only SQLite); \
                 pass a sqlite:// URL or --data-dir"
                    .to_string(),
            ));
        }
        Some("sqlite") => {
            let rest = &u["sqlite:".len()..];
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            rest.split_once('?').map_or(rest, |(p, _)| p)
        }
        // No scheme (or a Windows drive letter): a plain path.
        Some(s) if s.len() > 1 && u.contains("://") => {
            return Err(usage_failure(format!(
                "--database: unsupported URL scheme `{s}` (use sqlite:///path/to/hub.db)"
            )));
        }
        _ => u,
    };
    if path.is_empty() || path == ":memory:" {
        return Err(usage_failure(format!(
            "--database: `{url}` names no database file"
        )));
    }
    let path = std::path::PathBuf::from(path);
    Ok(if path.is_dir() {
        path.join("hub.db")
    } else {
        path
    })
}

/// `YYYY-MM-DD[THH:MM[:SS]]` as a wall-clock time in `zone` (a date: the first instant of that
/// day there, DST included), or epoch milliseconds.
pub fn parse_time_in(s: &str, zone: &ReportZone) -> Result<i64, String> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    let wall = parse_time(s, 0)?;
    Ok(if wall.rem_euclid(86_400_000) == 0 {
        zone.day_start_ms(wall.div_euclid(86_400_000))
    } else {
        zone.from_wall_ms(wall)
    })
}

/// `aigne-hub ledger ...`
pub async fn ledger(args: LedgerArgs, out: &mut dyn Out) -> Result<(), Failure> {
    let defaults = billing_defaults()?;
    let path = match &args.database {
        Some(url) => sqlite_path_of(url)?,
        None => args.data.data_dir.join("hub.db"),
    };
    // Read the ledger only: no master key needed, and nothing is created where none exists.
    if !path.is_file() {
        return Err(format!("no hub database at {}", path.display()).into());
    }
    let store = hub_core::store::sqlite::SqliteStore::open(&path).map_err(e)?;
    match args.command {
        LedgerCommand::Verify { window_secs, json } => {
            let window_ms = window_secs
                .map(|s| s as i64 * 1000)
                .unwrap_or(defaults.reconcile_window.as_millis() as i64);
            let rep = store.verify(now_ms(), window_ms).await.map_err(e)?;
            if json {
                out.line(&serde_json::to_string_pretty(&rep).map_err(|e| e.to_string())?);
            } else {
                out.line(&format!(
                    "accounts {}  entries {}  usage records {}  captures {}  open reservations {}  reconciled {}",
                    rep.accounts, rep.entries, rep.usage_records, rep.captures, rep.open_reservations, rep.reconciled_reservations
                ));
                out.line(&format!(
                    "granted {}  charged {}  expired {}  written off {}  available {}  reserved {}",
                    from_units(rep.total_granted),
                    from_units(rep.total_charged),
                    from_units(rep.total_expired),
                    from_units(rep.total_shortfall),
                    from_units(rep.total_available),
                    from_units(rep.total_reserved)
                ));
                for v in &rep.violations {
                    out.line(&format!("VIOLATION: {v}"));
                }
                out.line(if rep.ok() {
                    "ledger OK"
                } else {
                    "ledger INCONSISTENT"
                });
            }
            if !rep.ok() {
                return Err(
                    format!("ledger verify found {} violation(s)", rep.violations.len()).into(),
                );
            }
            Ok(())
        }
    }
}

/// `aigne-hub admin credits ...`
pub async fn credits(
    store: Arc<dyn Store>,
    cmd: CreditsCommand,
    out: &mut dyn Out,
) -> Result<(), String> {
    let defaults = billing_defaults()?;
    let cfg = load_billing_config(store.as_ref(), &defaults)
        .await
        .map_err(e)?;
    let now = now_ms();
    match cmd {
        CreditsCommand::Grant {
            who,
            amount,
            expires_days,
            idempotency_key,
            note,
        } => {
            let input = credit_in(&who, &amount, idempotency_key, note, expires_days)?;
            report_credit(store.as_ref(), &cfg, GrantKind::Grant, &input, out).await
        }
        CreditsCommand::Adjust {
            who,
            amount,
            idempotency_key,
            note,
        } => {
            let input = credit_in(&who, &amount, idempotency_key, note, None)?;
            report_credit(store.as_ref(), &cfg, GrantKind::Adjust, &input, out).await
        }
        CreditsCommand::Balance { who, json } => {
            let account = who.account();
            let bal = store.balance(&account).await.map_err(e)?;
            if json {
                let quota = quota_of(
                    store.as_ref(),
                    &account,
                    who.user.as_deref().unwrap_or(""),
                    now,
                )
                .await
                .map_err(e)?;
                out.line(&serde_json::to_string_pretty(&serde_json::json!({
                    "account": account,
                    "available": from_units(bal.as_ref().map_or(0, |b| b.available)).to_string(),
                    "reserved": from_units(bal.as_ref().map_or(0, |b| b.reserved)).to_string(),
                    "quota": quota,
                    "creditPrefix": cfg.credit_prefix,
                })).map_err(|e| e.to_string())?);
            } else {
                out.line(&from_units(bal.map_or(0, |b| b.available)).to_string());
            }
            Ok(())
        }
        CreditsCommand::Entries { who, json } => {
            let entries = store.entries(&who.account()).await.map_err(e)?;
            if json {
                out.line(&serde_json::to_string_pretty(&entries).map_err(|e| e.to_string())?);
            } else {
                for x in entries {
                    out.line(&format!(
                        "{}\t{}\t{}\tavailable {}\treserved {}\tcharged {}\t{}",
                        x.id,
                        x.created_at_ms,
                        x.kind,
                        from_units(x.available_delta),
                        from_units(x.reserved_delta),
                        from_units(x.charged),
                        x.idem_key
                    ));
                }
            }
            Ok(())
        }
    }
}

fn credit_in(
    who: &Who,
    amount: &str,
    idempotency_key: Option<String>,
    reason: Option<String>,
    expires_days: Option<u32>,
) -> Result<CreditIn, String> {
    Ok(CreditIn {
        user: who.user.clone(),
        team: who.team.clone(),
        amount: DecimalIn(parse_amount(amount)?),
        idempotency_key,
        reason,
        expires_days,
    })
}

/// A grant or adjustment as the owner (`Actor::cli`), audited like the API's.
async fn report_credit(
    store: &dyn Store,
    cfg: &BillingConfig,
    kind: GrantKind,
    input: &CreditIn,
    out: &mut dyn Out,
) -> Result<(), String> {
    let r = ledger_admin::credit(store, &Actor::cli(), cfg, kind, input)
        .await
        .map_err(|e| e.message)?;
    if r.replayed {
        out.line(&format!(
            "{} already applied (key {}); nothing changed",
            r.kind, r.idempotency_key
        ));
    } else {
        out.line(&format!(
            "{} {} to {}; available now {}",
            r.kind, r.amount, r.account, r.available
        ));
    }
    Ok(())
}

/// `aigne-hub admin billing ...`
pub async fn billing(
    store: Arc<dyn Store>,
    cmd: BillingCommand,
    out: &mut dyn Out,
) -> Result<(), String> {
    let defaults = billing_defaults()?;
    match cmd {
        BillingCommand::Show { json } => {
            let cfg = load_billing_config(store.as_ref(), &defaults)
                .await
                .map_err(e)?;
            let v = serde_json::json!({
                "mode": cfg.mode.as_str(),
                "margin_pct": cfg.pricing.margin_pct.to_string(),
                "base_credit_price": cfg.pricing.base_credit_price.to_string(),
                "max_output_tokens": cfg.max_output_tokens,
                "starter_credits": from_units(cfg.starter_units).to_string(),
                "starter_expiry_days": cfg.starter_expiry_days,
                "payment_link": cfg.payment_link,
                "credit_prefix": cfg.credit_prefix,
                "prices": cfg.prices.len(),
                "report_timezones": cfg.report_zones.iter().map(|z| z.key()).collect::<Vec<_>>().join(","),
            });
            if json {
                out.line(&serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
            } else if let Some(m) = v.as_object() {
                for (k, v) in m {
                    out.line(&format!("{k}\t{v}"));
                }
            }
            Ok(())
        }
        BillingCommand::Set {
            mode,
            margin,
            base_credit_price,
            starter_credits,
            starter_expiry_days,
            payment_link,
            credit_prefix,
            max_output_tokens,
            report_timezones,
        } => {
            let dec = |name: &str, v: Option<String>| -> Result<Option<DecimalIn>, String> {
                v.map(|v| {
                    Decimal::from_str(v.trim())
                        .map(DecimalIn)
                        .map_err(|_| format!("--{name} `{v}` is not a number"))
                })
                .transpose()
            };
            let patch = BillingPatch {
                mode,
                margin_pct: dec("margin", margin)?,
                base_credit_price: dec("base-credit-price", base_credit_price)?,
                starter_credits: dec("starter-credits", starter_credits)?,
                starter_expiry_days,
                payment_link,
                credit_prefix,
                max_output_tokens,
                report_timezones,
            };
            if patch
                .settings()
                .is_err_and(|e| e.message == "nothing to change")
            {
                return Err("nothing to set; see `aigne-hub admin billing set --help`".into());
            }
            let cfg = load_billing_config(store.as_ref(), &defaults)
                .await
                .map_err(e)?;
            let sets = ledger_admin::update_billing(store.as_ref(), &Actor::cli(), &cfg, &patch)
                .await
                .map_err(|e| e.message)?;
            for (k, v) in &sets {
                out.line(&format!("{k} = {v}"));
            }
            Ok(())
        }
    }
}

fn per_million(d: Decimal) -> String {
    (d * Decimal::from(1_000_000)).normalize().to_string()
}

/// `aigne-hub admin price ...`
pub async fn price(
    store: Arc<dyn Store>,
    cmd: PriceCommand,
    out: &mut dyn Out,
) -> Result<(), String> {
    let defaults = billing_defaults()?;
    let cfg = load_billing_config(store.as_ref(), &defaults)
        .await
        .map_err(e)?;
    match cmd {
        PriceCommand::List { history, json } => {
            let prices = store.list_prices(history).await.map_err(e)?;
            if json {
                out.line(&serde_json::to_string_pretty(&prices).map_err(|e| e.to_string())?);
            } else {
                out.line("version\tprovider\tmodel\ttype\tinput/1M\toutput/1M\tcache read/1M\tcache write/1M\timage\tcost input/1M\tcost output/1M\tmargin%\tsource");
                for p in prices {
                    let u = p.unit.clone().unwrap_or_default();
                    out.line(&format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        p.version,
                        p.provider,
                        p.model,
                        p.model_type.as_str(),
                        per_million(p.rates.input),
                        per_million(p.rates.output),
                        p.rates.cache_read.map(per_million).unwrap_or_default(),
                        p.rates.cache_write.map(per_million).unwrap_or_default(),
                        p.rates
                            .image
                            .map(|d| d.normalize().to_string())
                            .unwrap_or_default(),
                        p.unit
                            .as_ref()
                            .map(|_| per_million(u.input))
                            .unwrap_or_default(),
                        p.unit
                            .as_ref()
                            .map(|_| per_million(u.output))
                            .unwrap_or_default(),
                        p.margin_pct.map(|m| m.to_string()).unwrap_or_default(),
                        p.source
                    ));
                }
            }
            Ok(())
        }
        PriceCommand::Set {
            provider,
            model,
            model_type,
            input,
            output,
            cache_read,
            cache_write,
            image,
            unit_cost,
        } => {
            let num = |name: &str, v: &str| -> Result<DecimalIn, String> {
                Decimal::from_str(v.trim())
                    .map(DecimalIn)
                    .map_err(|_| format!("--{name} `{v}` is not a number"))
            };
            let given = RatesIn {
                input: Some(num("input", &input)?),
                output: Some(num("output", &output)?),
                cache_read: cache_read
                    .as_deref()
                    .map(|v| num("cache-read", v))
                    .transpose()?,
                cache_write: cache_write
                    .as_deref()
                    .map(|v| num("cache-write", v))
                    .transpose()?,
                image: image.as_deref().map(|v| num("image", v)).transpose()?,
            };
            let (unit_cost, rates) = if unit_cost {
                (Some(given), None)
            } else {
                (None, Some(given))
            };
            let p = ledger_admin::set_price(
                store.as_ref(),
                &Actor::cli(),
                &cfg,
                &PriceIn {
                    provider,
                    model,
                    model_type: Some(model_type),
                    unit_cost,
                    rates,
                    margin_pct: None,
                },
            )
            .await
            .map_err(|e| e.message)?;
            out.line(&format!(
                "price of {}/{} ({}) set: version {}",
                p.provider, p.model, p.model_type, p.version
            ));
            Ok(())
        }
        PriceCommand::Disable { version } => {
            let p = ledger_admin::disable_price(store.as_ref(), &Actor::cli(), version)
                .await
                .map_err(|e| e.message)?;
            out.line(&format!(
                "price of {}/{} ({}) disabled: version {}",
                p.provider, p.model, p.model_type, p.version
            ));
            Ok(())
        }
        PriceCommand::Reprice { margin, provider } => {
            let m = Decimal::from_str(margin.trim())
                .map_err(|_| format!("--margin `{margin}` is not a number"))?;
            let r = ledger_admin::reprice(
                store.as_ref(),
                &Actor::cli(),
                &cfg,
                &RepriceIn {
                    margin_pct: DecimalIn(m),
                    provider,
                },
            )
            .await
            .map_err(|e| e.message)?;
            out.line(&format!(
                "re-priced {} model(s) with margin {}%",
                r.repriced.len(),
                r.margin_pct
            ));
            Ok(())
        }
    }
}

/// `aigne-hub admin usage report ...`
pub async fn report(store: Arc<dyn Store>, a: ReportArgs, out: &mut dyn Out) -> Result<(), String> {
    let zone = ReportZone::parse(&a.tz).map_err(|e| format!("--tz: {e}"))?;
    let mut group_by = Vec::new();
    for d in a.by.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        group_by.push(Dim::parse(d).ok_or_else(|| {
            format!("--by: unknown dimension `{d}` (user, team, app, provider, model)")
        })?);
    }
    let period = a
        .period
        .as_deref()
        .map(|p| {
            Period::parse(p)
                .ok_or_else(|| format!("--period must be hour, day or month, got `{p}`"))
        })
        .transpose()?;
    let q = ReportQuery {
        group_by: group_by.clone(),
        period,
        tz_offset_minutes: match zone {
            ReportZone::Fixed(m) => m,
            ReportZone::Named(..) => 0,
        },
        since_ms: a
            .since
            .as_deref()
            .map(|s| parse_time_in(s, &zone))
            .transpose()?,
        until_ms: a
            .until
            .as_deref()
            .map(|s| parse_time_in(s, &zone))
            .transpose()?,
        zone: Some(zone.clone()),
        user_id: a.user,
        team_id: a.team,
        app: a.app,
    };
    let rows = store.usage_report(&q).await.map_err(e)?;
    let total = totals(&rows);
    if a.json {
        let v = serde_json::json!({"rows": rows, "totals": total});
        out.line(&serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let mut header: Vec<String> = Vec::new();
    if period.is_some() {
        header.push("period".into());
    }
    header.extend(group_by.iter().map(|d| format!("{d:?}").to_lowercase()));
    header.extend(
        [
            "calls",
            "success",
            "prompt_tokens",
            "completion_tokens",
            "images",
            "cost",
            "provider_cost",
        ]
        .map(String::from),
    );
    let line = |cells: Vec<String>| {
        if a.csv {
            csv_line(&cells).trim_end().to_string()
        } else {
            cells.join("\t")
        }
    };
    out.line(&line(header));
    let render = |r: &hub_core::ledger::ReportRow, label: Option<&str>| {
        let mut c: Vec<String> = Vec::new();
        if period.is_some() {
            c.push(
                label
                    .map(str::to_string)
                    .unwrap_or_else(|| r.period.clone().unwrap_or_default()),
            );
        }
        for (i, _) in group_by.iter().enumerate() {
            c.push(if label.is_some() {
                String::new()
            } else {
                r.keys.get(i).cloned().unwrap_or_default()
            });
        }
        c.extend([
            r.calls.to_string(),
            r.success_calls.to_string(),
            r.prompt_tokens.to_string(),
            r.completion_tokens.to_string(),
            r.images.to_string(),
            from_units(r.cost_units).to_string(),
            from_units(r.provider_cost_units).to_string(),
        ]);
        c
    };
    for r in &rows {
        out.line(&line(render(r, None)));
    }
    // With groups, a totals row; without, the single row already is the total.
    if period.is_some() || !group_by.is_empty() || rows.is_empty() {
        out.line(&line(render(&total, Some("TOTAL"))));
    }
    Ok(())
}

/// `aigne-hub admin usage export --csv ...`
pub async fn export(store: Arc<dyn Store>, a: ExportArgs, out: &mut dyn Out) -> Result<(), String> {
    let zone = ReportZone::parse(&a.tz).map_err(|e| format!("--tz: {e}"))?;
    let f = UsageFilter {
        since_ms: a
            .since
            .as_deref()
            .map(|s| parse_time_in(s, &zone))
            .transpose()?,
        until_ms: a
            .until
            .as_deref()
            .map(|s| parse_time_in(s, &zone))
            .transpose()?,
        user_id: a.user,
        team_id: a.team,
        app: a.app,
        limit: a.limit,
        after: None,
    };
    let records = store.usage_records(&f).await.map_err(e)?;
    let mut buf = csv_line(EXPORT_HEADER);
    for r in &records {
        buf.push_str(&export_line(r));
    }
    // One write: `Out::line` adds the final newline, so strip ours.
    out.line(buf.trim_end_matches(['\r', '\n']));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_in_the_given_zone() {
        assert_eq!(parse_time("1970-01-01", 0), Ok(0));
        assert_eq!(parse_time("2026-01-01", 0), Ok(1_767_225_600_000));
        assert_eq!(parse_time("2026-01-01T08:00", 480), Ok(1_767_225_600_000));
        assert_eq!(parse_time("2024-02-29T12:30:15", 0), Ok(1_709_209_815_000));
        assert_eq!(parse_time("1700000000000", 0), Ok(1_700_000_000_000));
        assert!(parse_time("2026-13-01", 0).is_err());
        assert!(parse_time("yesterday", 0).is_err());
    }

    #[test]
    fn dates_parse_in_an_iana_zone_with_daylight_saving() {
        let ny = ReportZone::parse("America/New_York").unwrap_or_default();
        // EST (-05:00) in January, EDT (-04:00) in July.
        assert_eq!(
            parse_time_in("2026-01-01", &ny),
            Ok(1_767_225_600_000 + 5 * 3_600_000)
        );
        assert_eq!(
            parse_time_in("2026-07-01T12:30", &ny),
            parse_time("2026-07-01T12:30", -240)
        );
        // 02:30 on 2026-03-08 does not exist there: it means 03:30 EDT.
        assert_eq!(
            parse_time_in("2026-03-08T02:30", &ny),
            parse_time("2026-03-08T03:30", -240)
        );
        assert_eq!(parse_time_in("1700000000000", &ny), Ok(1_700_000_000_000));
        let fixed = ReportZone::parse("+08:00").unwrap_or_default();
        assert_eq!(
            parse_time_in("2026-01-01T08:00", &fixed),
            Ok(1_767_225_600_000)
        );
    }
}
