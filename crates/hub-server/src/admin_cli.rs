//! `aigne-hub admin user|team|key|audit|rotate-master-key`: identity and access from the command
//! line, against the data dir (a running server notices within a second). Authorisation and
//! auditing are `hub_core::iam`'s; the CLI acts as the owner (`Actor::cli`).

use clap::Subcommand;
use hub_core::auth::Role;
use hub_core::budget::{Budget, BudgetPeriod};
use hub_core::config::HubOptions;
use hub_core::hub::{now_ms, open_store_and_vault};
use hub_core::iam::{self, Actor, NewKey, NewUser};
use hub_core::policy::KeyPolicy;
use hub_core::pricing::parse_amount;
use hub_core::store::iam::AuditQuery;

use crate::cli::Out;

#[derive(Subcommand, Debug)]
pub enum IamCommand {
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// Teams (tenants).
    #[command(subcommand)]
    Team(TeamCommand),
    /// API keys (stored hashed; a new key is printed once).
    #[command(subcommand)]
    Key(KeyCommand),
    /// The audit log of admin changes.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Re-encrypts every stored credential under a new master key, without downtime.
    RotateMasterKey,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Creates a user and prints its id.
    Create {
        #[arg(long)]
        name: String,
        /// owner, admin, member or guest.
        #[arg(long, default_value = "member")]
        role: String,
        /// Team id or name.
        #[arg(long)]
        team: Option<String>,
    },
    /// Lists users.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TeamCommand {
    /// Creates a team and prints its id.
    Create {
        #[arg(long)]
        name: String,
    },
    /// Lists teams.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Creates an API key and prints it (once).
    Create {
        /// User id.
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: Option<String>,
        /// Team id or name (default: the user's team).
        #[arg(long)]
        team: Option<String>,
        /// Allowed model pattern (`openai/*`, `*/gpt-4o*`); repeat or separate with commas.
        #[arg(long = "models", value_delimiter = ',')]
        models: Vec<String>,
        /// Allowed ingress surfaces: openai, anthropic, aigne, native.
        #[arg(long = "surfaces", value_delimiter = ',')]
        surfaces: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Expires after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        budget: BudgetArgs,
    },
    /// Sets (or with --clear removes) a key's spend budget; the rest of its policy is kept.
    SetBudget {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        budget: BudgetArgs,
        /// Remove the budget.
        #[arg(long, conflicts_with = "budget")]
        clear: bool,
    },
    /// Lists keys (prefix, status and policy; never the key).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revokes a key.
    Revoke {
        #[arg(long)]
        id: String,
    },
}

/// A spend budget on the command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BudgetArgs {
    /// Spend budget per period: credits in credits mode, provider cost (USD) in internal mode.
    #[arg(long = "budget", value_name = "DECIMAL")]
    pub budget: Option<String>,
    /// The budget's period: day or month.
    #[arg(long = "budget-period", value_name = "day|month", requires = "budget")]
    pub budget_period: Option<String>,
    /// IANA time zone of the period's boundaries (default UTC), e.g. Asia/Tokyo.
    #[arg(long = "budget-tz", value_name = "ZONE", requires = "budget")]
    pub budget_tz: Option<String>,
}

impl BudgetArgs {
    /// The budget, checked (amount, period, zone); `None` without `--budget`.
    pub fn parse(&self) -> Result<Option<Budget>, String> {
        let Some(amount) = &self.budget else {
            return Ok(None);
        };
        let amount = parse_amount(amount).map_err(|e| format!("--budget: {e}"))?;
        let period = match &self.budget_period {
            Some(p) => BudgetPeriod::parse(p)
                .ok_or_else(|| format!("--budget-period must be day or month, got `{p}`"))?,
            None => BudgetPeriod::Month,
        };
        let b = Budget {
            amount,
            period,
            time_zone: self.budget_tz.clone().unwrap_or_else(|| "UTC".to_string()),
        };
        b.validate()?;
        Ok(Some(b))
    }
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Newest entries first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only this action (`key.revoke`, ...).
        #[arg(long)]
        action: Option<String>,
        /// Only this actor (user id; `cli` for the command line).
        #[arg(long)]
        actor: Option<String>,
        /// Only entries about this object (user, key, credential, provider, price, account).
        #[arg(long)]
        target: Option<String>,
        /// Only entries at or after this time (epoch milliseconds).
        #[arg(long)]
        since_ms: Option<i64>,
        /// Only entries before this time (epoch milliseconds).
        #[arg(long)]
        until_ms: Option<i64>,
        #[arg(long)]
        json: bool,
    },
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map_err(|e| e.to_string())
}

/// Runs one identity/access command against the data dir of `opts`.
pub async fn run(opts: &HubOptions, cmd: IamCommand, out: &mut dyn Out) -> Result<(), String> {
    if let IamCommand::RotateMasterKey = cmd {
        let report = hub_core::keyring::rotate(opts)
            .await
            .map_err(|e| e.to_string())?;
        out.line(&format!(
            "master key rotated: {} -> {}; {} credential(s) re-encrypted; the previous key is kept at {} until you remove it",
            report.old_key_id,
            report.new_key_id,
            report.rewrapped,
            report.retired_path.display()
        ));
        return Ok(());
    }
    let (store, _vault) = open_store_and_vault(opts).map_err(|e| e.to_string())?;
    let store = store.as_ref();
    let actor = Actor::cli();
    let e = |e: hub_core::HubError| e.message;
    match cmd {
        IamCommand::RotateMasterKey => {}
        IamCommand::User(UserCommand::Create { name, role, team }) => {
            let role = Role::parse(&role).ok_or_else(|| {
                format!("--role must be owner, admin, member or guest, got `{role}`")
            })?;
            let u = iam::create_user(store, &actor, &NewUser { name, role, team })
                .await
                .map_err(e)?;
            out.line(&u.id);
        }
        IamCommand::User(UserCommand::List { json }) => {
            let users = iam::list_users(store, &actor).await.map_err(e)?;
            if json {
                out.line(&to_json(&users)?);
            } else {
                for u in users {
                    out.line(&format!(
                        "{}\t{}\t{}\t{}",
                        u.id,
                        u.name,
                        u.role.as_str(),
                        u.team_id.as_deref().unwrap_or("-")
                    ));
                }
            }
        }
        IamCommand::Team(TeamCommand::Create { name }) => {
            let t = iam::create_team(store, &actor, &name).await.map_err(e)?;
            out.line(&t.id);
        }
        IamCommand::Team(TeamCommand::List { json }) => {
            let teams = iam::list_teams(store, &actor).await.map_err(e)?;
            if json {
                out.line(&to_json(&teams)?);
            } else {
                for t in teams {
                    out.line(&format!("{}\t{}", t.id, t.name));
                }
            }
        }
        IamCommand::Key(KeyCommand::Create {
            user,
            name,
            team,
            models,
            surfaces,
            rpm,
            tpm,
            expires_in_days,
            budget,
        }) => {
            let new = NewKey {
                user_id: user,
                name,
                team,
                expires_at_ms: expires_in_days.map(|d| now_ms() + i64::from(d) * 86_400_000),
                policy: KeyPolicy {
                    models: models.into_iter().map(|m| m.trim().to_string()).collect(),
                    surfaces: surfaces.into_iter().map(|s| s.trim().to_string()).collect(),
                    rpm,
                    tpm,
                    budget: budget.parse()?,
                },
            };
            let k = iam::create_key(store, &actor, &new).await.map_err(e)?;
            out.line(&k.key);
        }
        IamCommand::Key(KeyCommand::SetBudget { id, budget, clear }) => {
            let new = budget.parse()?;
            if new.is_none() && !clear {
                return Err("give --budget DECIMAL (or --clear to remove the budget)".to_string());
            }
            let current = iam::list_keys(store, &actor)
                .await
                .map_err(e)?
                .into_iter()
                .find(|k| k.id == id)
                .ok_or_else(|| format!("no API key `{id}`"))?;
            let policy = KeyPolicy {
                budget: new,
                ..current.policy
            };
            let k = iam::set_key_policy(store, &actor, &id, &policy)
                .await
                .map_err(e)?;
            match (&k.policy.budget, &k.budget_status) {
                (Some(b), Some(st)) => out.line(&format!(
                    "key {id}: budget {} per {} ({}), spent {}, resets at {}",
                    b.amount.normalize(),
                    b.period.as_str(),
                    b.time_zone,
                    st.spent,
                    st.resets_at
                )),
                _ => out.line(&format!("key {id}: no budget")),
            }
        }
        IamCommand::Key(KeyCommand::List { json }) => {
            let keys = iam::list_keys(store, &actor).await.map_err(e)?;
            if json {
                out.line(&to_json(&keys)?);
            } else {
                for k in keys {
                    let budget = match (&k.policy.budget, &k.budget_status) {
                        (Some(b), Some(st)) => format!(
                            "\tbudget {}/{} {} left",
                            b.amount.normalize(),
                            b.period.as_str(),
                            st.remaining
                        ),
                        _ => String::new(),
                    };
                    out.line(&format!(
                        "{}\t{}…\t{}\t{}\t{}{budget}",
                        k.id, k.prefix, k.user_id, k.status, k.name
                    ));
                }
            }
        }
        IamCommand::Key(KeyCommand::Revoke { id }) => {
            iam::revoke_key(store, &actor, &id).await.map_err(e)?;
            out.line(&format!("key {id} revoked"));
        }
        IamCommand::Audit(AuditCommand::List {
            limit,
            action,
            actor: by,
            target,
            since_ms,
            until_ms,
            json,
        }) => {
            let q = AuditQuery {
                limit,
                action,
                actor_user_id: by,
                target,
                since_ms,
                until_ms,
                team_id: None,
            };
            let entries = iam::list_audit(store, &actor, q).await.map_err(e)?;
            if json {
                out.line(&to_json(&entries)?);
            } else {
                for a in entries {
                    out.line(&format!(
                        "{}\t{}\t{}\t{}",
                        a.at_ms, a.actor_user_id, a.action, a.target
                    ));
                }
            }
        }
    }
    Ok(())
}
