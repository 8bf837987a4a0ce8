//! Every admin change and its audit entry are one transaction: a change that fails leaves no
//! entry and no change; an entry that cannot be written undoes the change; every change that
//! happened has exactly one entry, with no secret in its images. Also the billing operations of
//! `ledger_admin` (prices, credits, settings) under the same rule.

use std::str::FromStr;
use std::sync::Arc;

use hub_core::hub::{BillingDefaults, load_billing_config};
use hub_core::iam::{self, Actor, CredentialUpdate, NewCredential, NewKey, NewUser};
use hub_core::ledger::{GrantKind, LedgerStore};
use hub_core::ledger_admin::{
    self, BillingPatch, CreditIn, DecimalIn, PriceIn, RatesIn, RepriceIn,
};
use hub_core::store::Store;
use hub_core::store::iam::{AuditEntry, AuditQuery, Change, IamStore, TeamRow};
use hub_core::store::sqlite::SqliteStore;
use hub_core::vault::Vault;
use rust_decimal::Decimal;

type R = Result<(), Box<dyn std::error::Error>>;

fn open() -> Result<(tempfile::TempDir, Arc<SqliteStore>), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("hub.db"))?);
    Ok((dir, store))
}

async fn audit(store: &SqliteStore) -> Result<Vec<AuditEntry>, Box<dyn std::error::Error>> {
    Ok(store
        .list_audit(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .await?)
}

fn dec(s: &str) -> DecimalIn {
    DecimalIn(Decimal::from_str(s).unwrap_or_default())
}

#[tokio::test]
async fn a_failed_change_leaves_no_entry_and_no_change() -> R {
    let (_d, store) = open()?;
    let cli = Actor::cli();
    iam::create_team(store.as_ref(), &cli, "a").await?;
    assert_eq!(audit(&store).await?.len(), 1);
    // Same name: the UNIQUE constraint refuses it.
    assert!(iam::create_team(store.as_ref(), &cli, "a").await.is_err());
    let u = iam::create_user(
        store.as_ref(),
        &cli,
        &NewUser {
            name: "m".into(),
            role: hub_core::auth::Role::Member,
            team: None,
        },
    )
    .await?;
    let k = iam::create_key(
        store.as_ref(),
        &cli,
        &NewKey {
            user_id: u.id.clone(),
            ..NewKey::default()
        },
    )
    .await?;
    iam::revoke_key(store.as_ref(), &cli, &k.view.id).await?;
    let err = iam::revoke_key(store.as_ref(), &cli, &k.view.id).await;
    assert!(err.is_err(), "a second revocation is refused");
    // A credential for a provider that does not exist: refused before any write.
    let vault = Vault::new([7; 32]);
    let bad = NewCredential {
        provider: "nope".into(),
        value: "sk-never-stored-0000".into(),
        secret: None,
        name: None,
        weight: 100,
        enabled: true,
    };
    assert!(
        iam::add_credential(store.as_ref(), &vault, &cli, &bad)
            .await
            .is_err()
    );
    let actions: Vec<String> = audit(&store)
        .await?
        .into_iter()
        .rev()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        ["team.create", "user.create", "key.create", "key.revoke"],
        "one entry per change that happened, none for the refused ones"
    );
    assert_eq!(store.list_teams().await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_entry_that_cannot_be_written_undoes_its_change() -> R {
    let (_d, store) = open()?;
    iam::create_team(store.as_ref(), &Actor::cli(), "first").await?;
    let taken = audit(&store).await?.remove(0).id;
    // The change succeeds on its own; its entry collides with an existing entry's id.
    let team = TeamRow {
        id: "team_x".into(),
        name: "second".into(),
        created_at_ms: 1,
    };
    let res = store
        .commit_audited(
            Change::InsertTeam(team),
            Some(Box::new(move |_| AuditEntry {
                id: taken,
                at_ms: 1,
                actor_user_id: "cli".into(),
                actor_key_id: None,
                action: "team.create".into(),
                target: "team_x".into(),
                team_id: None,
                before: None,
                after: None,
            })),
        )
        .await;
    assert!(res.is_err(), "{res:?}");
    assert!(
        store.list_teams().await?.iter().all(|t| t.id != "team_x"),
        "the team must not exist without its audit entry"
    );
    assert_eq!(audit(&store).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn credential_images_are_masked() -> R {
    let (_d, store) = open()?;
    let cli = Actor::cli();
    let vault = Vault::new([9; 32]);
    let secret = "sk-audit-plaintext-1234567890";
    let row = iam::add_credential(
        store.as_ref(),
        &vault,
        &cli,
        &NewCredential {
            provider: "openai".into(),
            value: secret.into(),
            secret: None,
            name: None,
            weight: 100,
            enabled: true,
        },
    )
    .await?;
    let rotated = "sk-audit-rotated-0987654321";
    iam::update_credential(
        store.as_ref(),
        &vault,
        &cli,
        &row.id,
        &CredentialUpdate {
            value: Some(rotated.into()),
            weight: Some(5),
            ..CredentialUpdate::default()
        },
    )
    .await?;
    let entries = audit(&store).await?;
    assert_eq!(entries.len(), 2);
    let text = serde_json::to_string(&entries)?;
    for s in [secret, rotated] {
        assert!(!text.contains(s), "plaintext in the audit log: {text}");
        assert!(!text.contains(&s[8..20]), "a slice of the plaintext leaked");
    }
    assert!(!text.contains("v1:"), "ciphertext in the audit log");
    let upd = &entries[0];
    assert_eq!(upd.action, "credential.update");
    assert_eq!(
        upd.after.as_ref().map(|a| a["weight"].clone()),
        Some(5.into())
    );
    assert_ne!(
        upd.before.as_ref().map(|b| b["masked"].clone()),
        upd.after.as_ref().map(|a| a["masked"].clone())
    );
    Ok(())
}

#[tokio::test]
async fn credits_are_audited_once_and_refusals_change_nothing() -> R {
    let (_d, store) = open()?;
    let cli = Actor::cli();
    let cfg = load_billing_config(store.as_ref(), &BillingDefaults::default()).await?;
    let u = iam::create_user(
        store.as_ref(),
        &cli,
        &NewUser {
            name: "payer".into(),
            role: hub_core::auth::Role::Member,
            team: None,
        },
    )
    .await?;
    let grant = CreditIn {
        user: Some(u.id.clone()),
        team: None,
        amount: dec("10.5"),
        idempotency_key: Some("g1".into()),
        reason: None,
        expires_days: None,
    };
    let first = ledger_admin::credit(store.as_ref(), &cli, &cfg, GrantKind::Grant, &grant).await?;
    assert!(!first.replayed);
    let again = ledger_admin::credit(store.as_ref(), &cli, &cfg, GrantKind::Grant, &grant).await?;
    assert!(again.replayed, "same key: a replay");
    // Taking more than is available: refused, nothing written.
    let too_much = CreditIn {
        amount: dec("-11"),
        idempotency_key: Some("a1".into()),
        reason: Some("refund".into()),
        ..grant.clone()
    };
    let err = ledger_admin::credit(store.as_ref(), &cli, &cfg, GrantKind::Adjust, &too_much).await;
    assert!(err.is_err());
    // An adjustment without a reason is bad input.
    let no_reason = CreditIn {
        amount: dec("-1"),
        reason: None,
        ..grant.clone()
    };
    let err = ledger_admin::credit(store.as_ref(), &cli, &cfg, GrantKind::Adjust, &no_reason)
        .await
        .err()
        .map(|e| e.status());
    assert_eq!(err, Some(400));
    let ok = CreditIn {
        amount: dec("-0.5"),
        idempotency_key: Some("a2".into()),
        reason: Some("goodwill correction".into()),
        ..grant.clone()
    };
    let adj = ledger_admin::credit(store.as_ref(), &cli, &cfg, GrantKind::Adjust, &ok).await?;
    assert_eq!(adj.available, "10");
    let credits: Vec<AuditEntry> = audit(&store)
        .await?
        .into_iter()
        .filter(|e| e.action.starts_with("credits."))
        .collect();
    assert_eq!(credits.len(), 2, "{credits:#?}");
    assert_eq!(credits[0].action, "credits.adjust");
    assert_eq!(
        credits[0].before.as_ref().map(|b| b["available"].clone()),
        Some("10.5".into())
    );
    assert_eq!(
        credits[0].after.as_ref().map(|a| a["available"].clone()),
        Some("10".into())
    );
    assert_eq!(
        credits[0].after.as_ref().map(|a| a["reason"].clone()),
        Some("goodwill correction".into())
    );
    let entries = store
        .entries(&hub_core::ledger::user_account(&u.id))
        .await?;
    assert_eq!(entries.len(), 2, "one grant, one adjustment: {entries:#?}");
    Ok(())
}

#[tokio::test]
async fn prices_keep_their_history_and_disable_by_current_version() -> R {
    let (_d, store) = open()?;
    let cli = Actor::cli();
    let cfg = load_billing_config(store.as_ref(), &BillingDefaults::default()).await?;
    let set = PriceIn {
        provider: "openai".into(),
        model: "audit-model".into(),
        model_type: None,
        unit_cost: Some(RatesIn {
            input: Some(dec("1")),
            output: Some(dec("2")),
            ..RatesIn::default()
        }),
        rates: None,
        margin_pct: Some(dec("50")),
    };
    let v1 = ledger_admin::set_price(store.as_ref(), &cli, &cfg, &set).await?;
    assert_eq!(v1.rates.input, "1.5");
    assert_eq!(v1.rates.output, "3");
    assert_eq!(
        v1.unit_cost.as_ref().map(|u| u.input.clone()),
        Some("1".into())
    );
    let v2 = ledger_admin::set_price(
        store.as_ref(),
        &cli,
        &cfg,
        &PriceIn {
            unit_cost: None,
            margin_pct: None,
            rates: Some(RatesIn {
                input: Some(dec("4")),
                output: Some(dec("8")),
                ..RatesIn::default()
            }),
            ..set.clone()
        },
    )
    .await?;
    assert!(v2.version > v1.version);
    assert_eq!(
        v2.unit_cost.as_ref().map(|u| u.output.clone()),
        Some("2".into()),
        "explicit rates keep the known unit cost"
    );
    // A stale version cannot be disabled; the current one can, once.
    let stale = ledger_admin::disable_price(store.as_ref(), &cli, v1.version).await;
    assert_eq!(stale.err().map(|e| e.status()), Some(409));
    let off = ledger_admin::disable_price(store.as_ref(), &cli, v2.version).await?;
    assert!(off.disabled);
    let twice = ledger_admin::disable_price(store.as_ref(), &cli, off.version).await;
    assert_eq!(twice.err().map(|e| e.status()), Some(409));
    let cfg = load_billing_config(store.as_ref(), &BillingDefaults::default()).await?;
    assert!(
        cfg.prices
            .get(
                hub_core::providers::ProviderKind::OpenAi,
                "audit-model",
                hub_core::types::ModelType::Chat
            )
            .is_none(),
        "a disabled price is no price"
    );
    let history: Vec<_> = store
        .list_prices(true)
        .await?
        .into_iter()
        .filter(|p| p.model == "audit-model")
        .collect();
    assert_eq!(history.len(), 3, "history is never rewritten");
    // Each version's audit entry names the version the store gave it.
    let entries = audit(&store).await?;
    let versions: Vec<i64> = entries
        .iter()
        .filter(|e| e.action.starts_with("price."))
        .filter_map(|e| e.after.as_ref()?["prices"][0]["version"].as_i64())
        .collect();
    assert_eq!(versions, [off.version, v2.version, v1.version]);
    Ok(())
}

#[tokio::test]
async fn reprice_by_provider_and_settings_are_one_audited_change() -> R {
    let (_d, store) = open()?;
    let cli = Actor::cli();
    let cfg = load_billing_config(store.as_ref(), &BillingDefaults::default()).await?;
    for (provider, model) in [("openai", "m1"), ("anthropic", "m2")] {
        ledger_admin::set_price(
            store.as_ref(),
            &cli,
            &cfg,
            &PriceIn {
                provider: provider.into(),
                model: model.into(),
                model_type: None,
                unit_cost: Some(RatesIn {
                    input: Some(dec("1")),
                    output: Some(dec("1")),
                    ..RatesIn::default()
                }),
                rates: None,
                margin_pct: Some(dec("0")),
            },
        )
        .await?;
    }
    let out = ledger_admin::reprice(
        store.as_ref(),
        &cli,
        &cfg,
        &RepriceIn {
            margin_pct: dec("20"),
            provider: Some("anthropic".into()),
        },
    )
    .await?;
    assert_eq!(out.repriced.len(), 1);
    assert_eq!(out.repriced[0].rates.input, "1.2");
    assert!(
        !out.margin_setting_updated,
        "a filtered re-price keeps the setting"
    );
    let cfg = load_billing_config(store.as_ref(), &BillingDefaults::default()).await?;
    let m1 = cfg
        .prices
        .get(
            hub_core::providers::ProviderKind::OpenAi,
            "m1",
            hub_core::types::ModelType::Chat,
        )
        .map(|p| p.rates.input);
    assert_eq!(m1, Decimal::from_str("0.000001").ok(), "openai untouched");
    // Settings: bad input is refused whole; a good patch is one entry.
    let bad = BillingPatch {
        mode: Some("credits".into()),
        base_credit_price: Some(dec("0")),
        ..BillingPatch::default()
    };
    let err = ledger_admin::update_billing(store.as_ref(), &cli, &cfg, &bad).await;
    assert_eq!(err.err().map(|e| e.status()), Some(400));
    assert_eq!(store.get_setting("billing.mode").await?, None);
    let good = BillingPatch {
        mode: Some("credits".into()),
        credit_prefix: Some("$".into()),
        ..BillingPatch::default()
    };
    ledger_admin::update_billing(store.as_ref(), &cli, &cfg, &good).await?;
    assert_eq!(
        store.get_setting("billing.mode").await?.as_deref(),
        Some("credits")
    );
    let e = audit(&store).await?.remove(0);
    assert_eq!(e.action, "billing.update");
    assert_eq!(
        e.before.as_ref().map(|b| b["mode"].clone()),
        Some("internal".into())
    );
    assert_eq!(
        e.after.as_ref().map(|a| a["billing.mode"].clone()),
        Some("credits".into())
    );
    Ok(())
}

#[tokio::test]
async fn the_audit_log_filters_by_target_and_time() -> R {
    let (_d, store) = open()?;
    let cli = Actor::cli();
    let a = iam::create_team(store.as_ref(), &cli, "a").await?;
    let b = iam::create_team(store.as_ref(), &cli, "b").await?;
    let by_target = iam::list_audit(
        store.as_ref(),
        &cli,
        AuditQuery {
            limit: 10,
            target: Some(b.id.clone()),
            ..AuditQuery::default()
        },
    )
    .await?;
    assert_eq!(by_target.len(), 1);
    assert_eq!(by_target[0].target, b.id);
    let all = audit(&store).await?;
    let first_at = all.iter().map(|e| e.at_ms).min().unwrap_or(0);
    let before_all = iam::list_audit(
        store.as_ref(),
        &cli,
        AuditQuery {
            limit: 10,
            until_ms: Some(first_at),
            ..AuditQuery::default()
        },
    )
    .await?;
    assert!(before_all.is_empty());
    let none = iam::list_audit(
        store.as_ref(),
        &cli,
        AuditQuery {
            limit: 10,
            target: Some(a.id.clone()),
            actor_user_id: Some("someone-else".into()),
            ..AuditQuery::default()
        },
    )
    .await?;
    assert!(none.is_empty());
    Ok(())
}
