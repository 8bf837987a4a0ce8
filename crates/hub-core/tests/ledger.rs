//! The ledger at the store level: reservations, settlement with the usage record, grants,
//! idempotency, starter credits under concurrency (also from two connections, as two processes
//! would), reconcile, expiry, and a property test that settlement never creates or destroys money.

use std::sync::Arc;

use hub_core::ledger::{
    GrantKind, GrantOutcome, GrantReq, LedgerStore, ReserveOutcome, ReserveReq, Starter,
    user_account,
};
use hub_core::store::sqlite::SqliteStore;
use hub_core::store::{Billing, CallStatus, Store, StreamBeat, StreamProgress, UsageRecord};
use proptest::prelude::*;

type R = Result<(), Box<dyn std::error::Error>>;

fn record(id: &str, account: &str, reserved: i64, cost: i64) -> UsageRecord {
    UsageRecord {
        id: id.into(),
        created_at_ms: 1_700_000_000_000,
        client_request_id: None,
        principal: "k".into(),
        user_id: account.trim_start_matches("user:").into(),
        team_id: None,
        app: None,
        ingress: "openai".into(),
        endpoint: "chat".into(),
        requested_model: "openai/gpt-4o-mini".into(),
        provider: Some("openai".into()),
        credential: None,
        upstream_model: Some("gpt-4o-mini".into()),
        stream: false,
        prompt_tokens: 10,
        completion_tokens: 5,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        images: 0,
        estimated: false,
        latency_ms: 1,
        ttfb_ms: None,
        status: CallStatus::Success,
        http_status: 200,
        error_class: None,
        error_message: None,
        provider_cost: None,
        attempts: 1,
        billing: Billing {
            mode: Some("credits".into()),
            price_version: Some(1),
            cost_units: cost,
            provider_cost_units: cost,
            account: Some(account.into()),
            reserved_units: reserved,
            shortfall_units: 0,
        },
    }
}

fn reserve(req: &str, account: &str, amount: i64) -> ReserveReq {
    ReserveReq {
        request_id: req.into(),
        account: account.into(),
        amount,
        instance: "me".into(),
        now_ms: 1,
        starter: None,
    }
}

/// A hold made by another instance at `at` (for reconcile's dead-instance cases).
fn held_by(req: &str, account: &str, amount: i64, instance: &str, at: i64) -> ReserveReq {
    ReserveReq {
        instance: instance.into(),
        now_ms: at,
        ..reserve(req, account, amount)
    }
}

fn grant(account: &str, amount: i64, key: &str) -> GrantReq {
    GrantReq {
        account: account.into(),
        kind: GrantKind::Grant,
        amount,
        idem_key: key.into(),
        expires_at_ms: None,
        note: None,
        now_ms: 1,
        starter: None,
    }
}

fn open() -> Result<(tempfile::TempDir, Arc<SqliteStore>), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("hub.db"))?);
    Ok((dir, store))
}

/// How many of the account's ledger entries are of this kind.
async fn entries_of_kind(
    store: &SqliteStore,
    acct: &str,
    kind: &str,
) -> Result<usize, Box<dyn std::error::Error>> {
    Ok(store
        .entries(acct)
        .await?
        .iter()
        .filter(|e| e.kind == kind)
        .count())
}

async fn assert_consistent(store: &SqliteStore) -> R {
    let rep = store.verify(10, 1_000_000).await?;
    assert!(rep.ok(), "{:#?}", rep.violations);
    // Money is conserved: everything granted is available, held, charged or expired.
    assert_eq!(
        rep.total_granted,
        rep.total_available + rep.total_reserved + rep.total_charged + rep.total_expired,
        "{rep:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn reserve_capture_release_and_refuse() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    assert_eq!(
        store.grant(&grant(&acct, 100, "g1")).await?,
        GrantOutcome::Applied
    );
    let out = store
        .reserve(&[
            reserve("r1", &acct, 60),
            reserve("r2", &acct, 60),
            reserve("r1", &acct, 1),
        ])
        .await?;
    // r2 would overdraw; a second reservation under the same request id is refused.
    assert_eq!(
        out,
        vec![
            ReserveOutcome::Reserved,
            ReserveOutcome::Insufficient { available: 40 },
            ReserveOutcome::Duplicate
        ]
    );
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (40, 60));
    // Capture 25 of the 60: 35 goes back.
    store.insert_usage(&[record("r1", &acct, 60, 25)]).await?;
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (75, 0));
    // A replayed record (same request id) settles nothing again.
    let mut again = record("r1", &acct, 60, 25);
    again.billing.cost_units = 70;
    store.insert_usage(&[again]).await?;
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (75, 0));
    assert_eq!(entries_of_kind(&store, &acct, "capture").await?, 1);
    assert_consistent(&store).await
}

/// A settlement claims its hold by the amount its record says was reserved; when the record and
/// the hold disagree, the hold's own amount is what goes back, never the record's.
#[tokio::test]
async fn settlement_releases_the_held_amount_even_when_the_record_says_otherwise() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 100, "g1")).await?;
    store
        .reserve(&[reserve("a", &acct, 40), reserve("b", &acct, 30)])
        .await?;
    // "a" as its call reserved it; "b" claiming 5 although 30 are held.
    store
        .insert_usage(&[record("a", &acct, 40, 10), record("b", &acct, 5, 3)])
        .await?;
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (100 - 10 - 3, 0));
    // A record whose hold is gone (never made, or released by reconcile) finds nothing to claim.
    store.insert_usage(&[record("c", &acct, 20, 4)]).await?;
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (100 - 10 - 3 - 4, 0));
    assert_consistent(&store).await
}

/// A hold of nothing, settled at no cost, is still a settled reservation with its one capture
/// (found by the property test below: the settlement used to flip the hold to `settled` and
/// write no capture).
#[tokio::test]
async fn a_zero_hold_settled_at_zero_cost_has_its_capture() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 10, "g")).await?;
    assert_eq!(
        store.reserve(&[reserve("z", &acct, 0)]).await?,
        vec![ReserveOutcome::Reserved]
    );
    store.insert_usage(&[record("z", &acct, 0, 0)]).await?;
    assert_eq!(entries_of_kind(&store, &acct, "capture").await?, 1);
    assert_consistent(&store).await
}

/// A record that reserved, arriving after reconcile released its hold, settles with a capture of
/// nothing when it costs nothing (found by the property test below: it used to have none, and
/// `verify` reported a record that reserved credits without its capture).
#[tokio::test]
async fn a_record_whose_hold_was_released_still_gets_its_capture() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 731, "g")).await?;
    store.reserve(&[reserve("late", &acct, 1)]).await?;
    store.reconcile("me", 10, 5, 5).await?; // everything open counts as a dead instance's
    store.insert_usage(&[record("late", &acct, 1, 0)]).await?;
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (731, 0));
    assert_consistent(&store).await
}

#[tokio::test]
async fn a_cost_above_the_hold_never_overdraws() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 50, "g")).await?;
    store.reserve(&[reserve("r", &acct, 20)]).await?;
    // Costs 100: 20 held + 30 available = 50 charged, 50 written off.
    store.insert_usage(&[record("r", &acct, 20, 100)]).await?;
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (0, 0));
    let rec = store.list_usage(1).await?;
    assert_eq!(rec[0].billing.shortfall_units, 50);
    assert_consistent(&store).await
}

/// A batch applies its captures' movements to the account once, summed; a record in it whose
/// cost exceeds its hold is still charged against the balance as of its turn, which includes what
/// the batch's earlier records returned.
#[tokio::test]
async fn a_batch_charges_each_record_against_the_balance_its_predecessors_left() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    let other = user_account("v");
    store.grant(&grant(&acct, 100, "g")).await?;
    store.grant(&grant(&other, 10, "g2")).await?;
    store
        .reserve(&[
            reserve("a", &acct, 60),
            reserve("b", &acct, 40),
            reserve("o", &other, 10),
        ])
        .await?;
    // Nothing is available until "a" returns 55 of its 60: "b" (held 40, costs 120) can then
    // take 40 + 55 = 95, and 25 are written off. "o" is another account in the same batch.
    store
        .insert_usage(&[
            record("a", &acct, 60, 5),
            record("o", &other, 10, 4),
            record("b", &acct, 40, 120),
        ])
        .await?;
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (0, 0));
    let o = store.balance(&other).await?.ok_or("no account")?;
    assert_eq!((o.available, o.reserved), (6, 0));
    let shortfall: Vec<(String, i64)> = store
        .list_usage(10)
        .await?
        .into_iter()
        .map(|r| (r.id, r.billing.shortfall_units))
        .filter(|(_, s)| *s != 0)
        .collect();
    assert_eq!(shortfall, vec![("b".to_string(), 25)]);
    assert_consistent(&store).await
}

#[tokio::test]
async fn grants_and_adjustments_are_idempotent() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    assert_eq!(
        store.grant(&grant(&acct, 10, "k")).await?,
        GrantOutcome::Applied
    );
    assert_eq!(
        store.grant(&grant(&acct, 10, "k")).await?,
        GrantOutcome::Replayed
    );
    let mut adj = grant(&acct, -4, "adj1");
    adj.kind = GrantKind::Adjust;
    assert_eq!(store.grant(&adj).await?, GrantOutcome::Applied);
    assert_eq!(store.grant(&adj).await?, GrantOutcome::Replayed);
    let mut too_much = grant(&acct, -7, "adj2");
    too_much.kind = GrantKind::Adjust;
    assert_eq!(
        store.grant(&too_much).await?,
        GrantOutcome::Insufficient { available: 6 }
    );
    assert_eq!(store.balance(&acct).await?.map(|b| b.available), Some(6));
    assert_consistent(&store).await
}

#[tokio::test]
async fn starter_credits_once_under_concurrent_first_requests() -> R {
    let (dir, store) = open()?;
    // A second connection to the same file stands in for a second process.
    let other = Arc::new(SqliteStore::open(&dir.path().join("hub.db"))?);
    let acct = user_account("newbie");
    let starter = Starter {
        amount: 1_000,
        expires_at_ms: None,
    };
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s: Arc<SqliteStore> = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let mut q = reserve(&format!("req{i}"), &acct, 10);
        q.starter = Some(starter.clone());
        tasks.push(tokio::spawn(async move { s.reserve(&[q]).await }));
    }
    // An admin grant racing the first requests must not skip or double the starter grant either.
    let mut g = grant(&acct, 5, "admin");
    g.starter = Some(starter.clone());
    store.grant(&g).await?;
    for t in tasks {
        assert_eq!(t.await??, vec![ReserveOutcome::Reserved]);
    }
    let entries = store.entries(&acct).await?;
    assert_eq!(entries.iter().filter(|e| e.kind == "starter").count(), 1);
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (1_000 + 5 - 400, 400));
    assert_consistent(&store).await
}

/// The request path's writes: concurrent calls' reservations through the reservation writer
/// (batched by value into the store: `reserve_owned`) each get their own outcome, the conditional
/// hold never lets one spend another's credit, a repeated request id is a duplicate, and the held
/// calls' usage batch (`insert_usage_owned`) settles them and comes back as it went.
/// A reservation batch and a usage batch, each one transaction, that take every branch of their
/// writes twice: the transaction's statements are prepared once and reused (`Stmts`), so each use
/// must find its statement reset by the one before and bound afresh.
#[tokio::test]
async fn one_transaction_takes_every_branch_twice() -> R {
    let (_d, store) = open()?;
    let a = user_account("a");
    store.grant(&grant(&a, 100, "g")).await?;
    let newcomer = |req: &str, who: &str| ReserveReq {
        starter: Some(Starter {
            amount: 50,
            expires_at_ms: None,
        }),
        ..reserve(req, &user_account(who), 20)
    };
    let out = store
        .reserve_owned(vec![
            reserve("a1", &a, 30),
            reserve("a2", &a, 30),
            reserve("a1", &a, 5),
            reserve("a2", &a, 5),
            reserve("a3", &a, 50),
            reserve("a4", &a, 41),
            newcomer("n1", "n"),
            newcomer("m1", "m"),
            reserve("b1", &user_account("b"), 1),
        ])
        .await?;
    let short = |available| ReserveOutcome::Insufficient { available };
    assert_eq!(
        out,
        vec![
            ReserveOutcome::Reserved,
            ReserveOutcome::Reserved,
            ReserveOutcome::Duplicate,
            ReserveOutcome::Duplicate,
            short(40),
            short(40),
            ReserveOutcome::Reserved,
            ReserveOutcome::Reserved,
            short(0),
        ]
    );
    let bal = |who: &str| {
        let (store, acct) = (store.clone(), user_account(who));
        async move {
            let b = store.balance(&acct).await?.ok_or("no account")?;
            Ok::<_, Box<dyn std::error::Error>>((b.available, b.reserved))
        }
    };
    assert_eq!(bal("a").await?, (40, 60));
    assert_eq!(bal("n").await?, (30, 20));
    assert_eq!(bal("b").await?, (0, 0));
    // Claimed as reserved (a1), claimed although the record names another amount (a2), no hold
    // at all (x1, x2: the balance is read), above hold and balance (n1, m1: written off), and a
    // replayed id (a1 again: skipped).
    let (_, r) = store
        .insert_usage_owned(vec![
            record("a1", &a, 30, 10),
            record("a2", &a, 5, 3),
            record("x1", &a, 0, 7),
            record("x2", &a, 0, 7),
            record("n1", &user_account("n"), 20, 100),
            record("m1", &user_account("m"), 20, 100),
            record("a1", &a, 30, 10),
        ])
        .await;
    r?;
    assert_eq!(bal("a").await?, (100 - 10 - 3 - 7 - 7, 0));
    assert_eq!(bal("n").await?, (0, 0));
    assert_eq!(bal("m").await?, (0, 0));
    assert_eq!(entries_of_kind(&store, &a, "capture").await?, 4);
    let mut shortfall: Vec<(String, i64)> = store
        .list_usage(10)
        .await?
        .into_iter()
        .map(|r| (r.id, r.billing.shortfall_units))
        .collect();
    shortfall.sort();
    assert_eq!(
        shortfall,
        [
            ("a1", 0),
            ("a2", 0),
            ("m1", 50),
            ("n1", 50),
            ("x1", 0),
            ("x2", 0)
        ]
        .map(|(id, s)| (id.to_string(), s))
    );
    assert_consistent(&store).await
}

#[tokio::test]
async fn concurrent_reservations_through_the_writer_hold_exactly_what_is_there() -> R {
    let (_d, store) = open()?;
    let acct = user_account("busy");
    store.grant(&grant(&acct, 1_000, "g")).await?;
    let (writer, _task) = hub_core::ledger::LedgerWriter::start(store.clone());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let w = writer.clone();
        let q = reserve(&format!("c{i}"), &acct, 30);
        tasks.push(tokio::spawn(async move { (i, w.reserve(q).await) }));
    }
    let mut held = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await? {
            (i, Ok(ReserveOutcome::Reserved)) => held.push(i),
            (_, Ok(ReserveOutcome::Insufficient { available })) => {
                assert!(available < 30, "refused with {available} available");
                refused += 1;
            }
            (i, other) => return Err(format!("call {i}: {other:?}").into()),
        }
    }
    assert_eq!((held.len(), refused), (33, 17));
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (10, 990));
    assert_eq!(
        store
            .reserve_owned(vec![reserve("c0", &acct, 1), reserve("extra", &acct, 10)])
            .await?,
        vec![ReserveOutcome::Duplicate, ReserveOutcome::Reserved]
    );
    let records: Vec<UsageRecord> = held
        .iter()
        .map(|i| record(&format!("c{i}"), &acct, 30, 20))
        .chain([record("extra", &acct, 10, 10)])
        .collect();
    let (back, r) = store.insert_usage_owned(records.clone()).await;
    r?;
    assert_eq!(back, records, "the batch comes back as it went");
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (1_000 - 33 * 20 - 10, 0));
    assert_consistent(&store).await
}

/// The stale-hold scan reads every open hold (the table holds the calls in flight only,
/// migration 11): a dead instance's hold is released even when it was made after the instance's
/// last beat, in its last moments, and so is the hold of an instance that never beat; a live
/// instance's never is, nor this instance's own.
#[tokio::test]
async fn a_dead_instances_newest_hold_is_released_and_a_live_ones_never() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 100, "g")).await?;
    store.heartbeat("dead", 1_000, &[]).await?;
    store
        .reserve(&[
            held_by("late", &acct, 30, "dead", 6_000),
            held_by("live", &acct, 20, "alive", 2_000),
            held_by("ghost", &acct, 5, "never-beat", 9_000),
            held_by("mine", &acct, 1, "me", 9_000),
        ])
        .await?;
    store.heartbeat("alive", 10_000, &[]).await?;
    // 'dead' last beat at 1 s: dead for a cutoff of 5 s, though its hold is from 6 s.
    let rep = store
        .reconcile("me", 10_000, 5_000, 10_000 - 60_000)
        .await?;
    assert_eq!((rep.released, rep.released_units), (2, 35));
    store.heartbeat("alive", 12_000, &[]).await?;
    let rep = store
        .reconcile("me", 14_000, 9_000, 14_000 - 60_000)
        .await?;
    assert_eq!(rep.released, 0, "a live instance's hold stays");
    let bal = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((bal.available, bal.reserved), (100 - 20 - 1, 20 + 1));
    assert_consistent(&store).await
}

/// A stream's heartbeat record as a beat would have it: `tokens` delivered, each costing 2.
fn beat(id: &str, acct: &str, tokens: u64, stored: bool) -> StreamBeat {
    let mut r = record(id, acct, 0, 2 * tokens as i64);
    r.stream = true;
    r.completion_tokens = tokens;
    r.estimated = true;
    r.latency_ms = 100 * tokens;
    r.status = CallStatus::Failed;
    r.error_class = Some("reconciled".into());
    StreamBeat { record: r, stored }
}

/// Rows of `hold_records` and the progress of a reservation, read as another process would.
fn hold_rows(
    dir: &tempfile::TempDir,
    id: &str,
) -> Result<(i64, Option<String>), Box<dyn std::error::Error>> {
    let c = rusqlite::Connection::open(dir.path().join("hub.db"))?;
    let n = c.query_row("SELECT COUNT(*) FROM hold_records", [], |r| r.get(0))?;
    let progress = c
        .query_row(
            "SELECT progress FROM reservations WHERE request_id = ?1",
            [id],
            |r| r.get(0),
        )
        .ok()
        .flatten();
    Ok((n, progress))
}

/// A stream's record is stored once, at the first beat that has one; later beats store its
/// progress only; reconcile lays the last progress over the record and captures that, and the
/// record leaves with the hold.
#[tokio::test]
async fn reconcile_captures_the_first_beats_record_at_the_last_beats_progress() -> R {
    let (dir, store) = open()?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 1_000, "g")).await?;
    store
        .reserve(&[held_by("s", &acct, 100, "dead", 1_000)])
        .await?;
    store
        .heartbeat("dead", 1_000, &[beat("s", &acct, 3, false)])
        .await?;
    assert_eq!(hold_rows(&dir, "s")?, (1, None));
    store
        .heartbeat("dead", 2_000, &[beat("s", &acct, 7, true)])
        .await?;
    let (n, progress) = hold_rows(&dir, "s")?;
    assert_eq!(n, 1);
    let progress: StreamProgress = serde_json::from_str(&progress.ok_or("no progress")?)?;
    assert_eq!(progress.completion_tokens, 7);
    // The record itself is the first beat's.
    let c = rusqlite::Connection::open(dir.path().join("hub.db"))?;
    let stored: String = c.query_row("SELECT record FROM hold_records", [], |r| r.get(0))?;
    let stored: UsageRecord = serde_json::from_str(&stored)?;
    assert_eq!(stored.completion_tokens, 3);

    let rep = store
        .reconcile("me", 10_000, 5_000, 10_000 - 60_000)
        .await?;
    assert_eq!((rep.captured, rep.captured_units), (1, 14));
    let rec = store
        .usage_records(&hub_core::ledger::UsageFilter::default())
        .await?;
    assert_eq!(rec.len(), 1);
    let mut want = beat("s", &acct, 7, true).record;
    want.billing.reserved_units = 100;
    assert_eq!(
        rec[0], want,
        "the first beat's record at the second beat's progress"
    );
    assert_eq!(hold_rows(&dir, "s")?.0, 0, "the record left with the hold");
    let bal = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((bal.available, bal.reserved), (1_000 - 14, 0));
    assert_consistent(&store).await
}

/// Settling a stream deletes its heartbeat record; a beat gathered before the settlement and
/// written after it stores nothing; a hold released by reconcile takes its record too.
#[tokio::test]
async fn a_heartbeat_record_lives_exactly_as_long_as_its_hold() -> R {
    let (dir, store) = open()?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 1_000, "g")).await?;
    store.heartbeat("me", 1, &[]).await?;
    store
        .reserve(&[reserve("a", &acct, 100), reserve("b", &acct, 100)])
        .await?;
    store
        .heartbeat("me", 2, &[beat("a", &acct, 3, false)])
        .await?;
    assert_eq!(hold_rows(&dir, "a")?.0, 1);
    let mut done = record("a", &acct, 100, 40);
    done.stream = true;
    store.insert_usage(&[done]).await?;
    assert_eq!(hold_rows(&dir, "a")?.0, 0, "settling deleted it");
    // Late beats of the settled stream: neither a record nor progress lands.
    store
        .heartbeat(
            "me",
            3,
            &[beat("a", &acct, 5, false), beat("a", &acct, 6, true)],
        )
        .await?;
    assert_eq!(hold_rows(&dir, "a")?.0, 0);
    assert_consistent(&store).await?;
    // A hold reconcile releases (too old) takes its record with it... unless it is captured:
    // this one has a record, so it is captured for its progress.
    store
        .heartbeat("me", 4, &[beat("b", &acct, 2, false)])
        .await?;
    let rep = store.reconcile("me", 10, 5, 1_000).await?;
    assert_eq!((rep.captured, rep.captured_units), (1, 4));
    assert_eq!(hold_rows(&dir, "b")?.0, 0);
    // A released one with a record whose account does not match (not trusted) goes too.
    store.reserve(&[reserve("c", &acct, 50)]).await?;
    store
        .heartbeat("me", 5, &[beat("c", &user_account("other"), 2, false)])
        .await?;
    assert_eq!(hold_rows(&dir, "c")?.0, 1);
    let rep = store.reconcile("me", 10, 5, 1_000).await?;
    assert_eq!((rep.released, rep.released_units), (1, 50));
    assert_eq!(hold_rows(&dir, "c")?.0, 0);
    assert_consistent(&store).await
}

/// `verify` reports a heartbeat record whose hold is gone.
#[tokio::test]
async fn verify_reports_a_heartbeat_record_without_its_hold() -> R {
    let (dir, store) = open()?;
    let c = rusqlite::Connection::open(dir.path().join("hub.db"))?;
    c.execute(
        "INSERT INTO hold_records (request_id, record) VALUES ('orphan', '{}')",
        [],
    )?;
    let rep = store.verify(10, 1_000_000).await?;
    assert!(
        rep.violations
            .iter()
            .any(|m| m
                .contains("request orphan: a heartbeat's record of its stream outlived its hold")),
        "{:?}",
        rep.violations
    );
    Ok(())
}

#[tokio::test]
async fn reconcile_releases_what_a_dead_instance_held() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 100, "g")).await?;
    store.heartbeat("dead", 1_000, &[]).await?;
    store.heartbeat("alive", 10_000, &[]).await?;
    store
        .reserve(&[
            held_by("a", &acct, 30, "dead", 1_000),
            held_by("b", &acct, 20, "alive", 9_000),
        ])
        .await?;
    // Window of 60 s; 'dead' last beat at 1 s, stale before 5 s.
    let rep = store
        .reconcile("me", 10_000, 5_000, 10_000 - 60_000)
        .await?;
    assert_eq!((rep.released, rep.released_units), (1, 30));
    // Replaying the reconcile changes nothing.
    let rep = store
        .reconcile("me", 10_000, 5_000, 10_000 - 60_000)
        .await?;
    assert_eq!(rep.released, 0);
    let bal = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((bal.available, bal.reserved), (80, 20));
    // The live one settles normally.
    store.insert_usage(&[record("b", &acct, 20, 5)]).await?;
    // A late record for the reconciled request is charged from available, once.
    store.insert_usage(&[record("a", &acct, 30, 7)]).await?;
    let bal = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((bal.available, bal.reserved), (100 - 5 - 7, 0));
    // Verify flags a reservation older than the window.
    let mut c = reserve("c", &acct, 1);
    c.now_ms = 0;
    store.reserve(&[c]).await?;
    let rep = store.verify(120_000, 60_000).await?;
    assert_eq!(rep.violations.len(), 1, "{:?}", rep.violations);
    Ok(())
}

#[tokio::test]
async fn expiry_takes_only_the_unused_part() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    let now = hub_core::hub::now_ms();
    let mut starter = grant(&acct, 100, "s");
    starter.now_ms = now;
    starter.expires_at_ms = Some(now + 60_000);
    store.grant(&starter).await?;
    let mut bought = grant(&acct, 50, "bought");
    bought.now_ms = now;
    store.grant(&bought).await?;
    store.reserve(&[reserve("r", &acct, 70)]).await?;
    store.insert_usage(&[record("r", &acct, 70, 60)]).await?;
    assert_eq!(store.expire_grants(now + 30_000).await?, 0, "not yet");
    assert_eq!(store.expire_grants(now + 61_000).await?, 1);
    assert_eq!(store.expire_grants(now + 90_000).await?, 0, "never twice");
    // 60 spent from the starter (it expires first): 40 of it expires, the 50 bought stay.
    assert_eq!(store.balance(&acct).await?.map(|b| b.available), Some(50));
    assert_consistent(&store).await
}

#[derive(Debug, Clone)]
enum Op {
    Grant(u8, i64),
    Reserve(u8, i64),
    /// Settle the n-th reservation made so far, with this cost (may exceed the hold).
    Settle(usize, i64),
    /// Settle several in one usage batch (its captures' account movements are summed).
    SettleBatch(Vec<(usize, i64)>),
    /// Replay the n-th settlement.
    Replay(usize),
    Adjust(u8, i64),
    Reconcile,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 1i64..1_000).prop_map(|(a, x)| Op::Grant(a, x)),
        (0u8..3, 0i64..800).prop_map(|(a, x)| Op::Reserve(a, x)),
        (0usize..40, 0i64..1_200).prop_map(|(i, c)| Op::Settle(i, c)),
        proptest::collection::vec((0usize..40, 0i64..1_200), 2..6).prop_map(Op::SettleBatch),
        (0usize..40).prop_map(Op::Replay),
        (0u8..3, -500i64..500).prop_map(|(a, x)| Op::Adjust(a, x)),
        Just(Op::Reconcile),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever happens, in any order: no account goes negative, balance = Σ entries, every
    /// capture has its record, and granted = available + reserved + charged + expired.
    #[test]
    fn settlement_never_creates_or_destroys_money(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let res: R = rt.block_on(async {
            let (_d, store) = open()?;
            let acct = |a: u8| user_account(&format!("u{a}"));
            let mut reservations: Vec<(String, String, i64)> = Vec::new();
            let mut settled: Vec<UsageRecord> = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Grant(a, x) => {
                        store.grant(&grant(&acct(a), x, &format!("g{n}"))).await?;
                    }
                    Op::Reserve(a, x) => {
                        let id = format!("r{n}");
                        if store.reserve(&[reserve(&id, &acct(a), x)]).await? == vec![ReserveOutcome::Reserved] {
                            reservations.push((id, acct(a), x));
                        }
                    }
                    Op::Settle(i, cost) => {
                        if let Some((id, a, held)) = reservations.get(i % reservations.len().max(1)).cloned() {
                            let rec = record(&id, &a, held, cost);
                            store.insert_usage(std::slice::from_ref(&rec)).await?;
                            settled.push(rec);
                        }
                    }
                    Op::SettleBatch(picks) => {
                        let mut batch: Vec<UsageRecord> = Vec::new();
                        for (i, cost) in picks {
                            if let Some((id, a, held)) = reservations.get(i % reservations.len().max(1)).cloned()
                                && !batch.iter().any(|r| r.id == id)
                            {
                                batch.push(record(&id, &a, held, cost));
                            }
                        }
                        store.insert_usage(&batch).await?;
                        settled.extend(batch);
                    }
                    Op::Replay(i) => {
                        if let Some(rec) = settled.get(i % settled.len().max(1)).cloned() {
                            store.insert_usage(&[rec]).await?;
                        }
                    }
                    Op::Adjust(a, x) if x != 0 => {
                        let mut g = grant(&acct(a), x, &format!("a{n}"));
                        g.kind = GrantKind::Adjust;
                        store.grant(&g).await?;
                    }
                    Op::Adjust(..) => {}
                    Op::Reconcile => {
                        // Everything open is treated as held by a dead instance.
                        store.reconcile("me", 10, 5, 5).await?;
                    }
                }
                assert_consistent(&store).await?;
            }
            Ok(())
        });
        prop_assert!(res.is_ok(), "{:?}", res.err().map(|e| e.to_string()));
    }
}

/// Reservations and settlements of many concurrent calls go through the store's one writer
/// thread, interleaved in shared transactions: every call is held once and settled once, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interleaved_reservations_and_settlements_stay_exact() -> R {
    let (_d, store) = open()?;
    let acct = user_account("busy");
    store.grant(&grant(&acct, 100_000, "g")).await?;
    let mut tasks = Vec::new();
    for i in 0..300i64 {
        let s = store.clone();
        let acct = acct.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("call{i}");
            let out = s.reserve(&[reserve(&id, &acct, 100)]).await?;
            assert_eq!(out, vec![ReserveOutcome::Reserved]);
            tokio::task::yield_now().await;
            s.insert_usage(&[record(&id, &acct, 100, i % 90)]).await?;
            Ok::<_, hub_core::store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let charged: i64 = (0..300i64).map(|i| i % 90).sum();
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (100_000 - charged, 0));
    let entries = store.entries(&acct).await?;
    // One entry per call, its capture; the holds were reservation rows.
    assert_eq!(entries.iter().filter(|e| e.kind == "capture").count(), 300);
    assert_eq!(entries.len(), 301, "the grant and 300 captures");
    assert_consistent(&store).await
}

/// A batch that fails inside the writer's shared transaction is answered with its own error; a
/// batch queued beside it still commits.
#[tokio::test]
async fn a_failing_batch_does_not_fail_its_neighbours() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 1_000, "g")).await?;
    // An entry already holding `capture:poison` makes the settlement of record `poison` fail.
    store.grant(&grant(&acct, 1, "capture:poison")).await?;
    for round in 0..20 {
        let poison = [record("poison", &acct, 0, 5)];
        let good = [reserve(&format!("good{round}"), &acct, 10)];
        let (bad, ok) = tokio::join!(store.insert_usage(&poison), store.reserve(&good));
        assert!(bad.is_err(), "the poisoned batch must fail");
        assert_eq!(ok?, vec![ReserveOutcome::Reserved]);
    }
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (1_001 - 200, 200));
    // A failed batch taken by value comes back whole: the usage writer retries with it.
    let poison = vec![record("poison", &acct, 0, 5)];
    let (back, r) = store.insert_usage_owned(poison.clone()).await;
    assert!(r.is_err(), "the poisoned batch must fail");
    assert_eq!(back, poison);
    Ok(())
}

/// A refused reservation leaves nothing behind: the same request id can hold once funds arrive.
#[tokio::test]
async fn a_refused_reservation_can_be_retried_under_the_same_id() -> R {
    let (_d, store) = open()?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 5, "g1")).await?;
    assert_eq!(
        store.reserve(&[reserve("r", &acct, 10)]).await?,
        vec![ReserveOutcome::Insufficient { available: 5 }]
    );
    assert_eq!(store.verify(10, 1_000_000).await?.open_reservations, 0);
    store.grant(&grant(&acct, 5, "g2")).await?;
    assert_eq!(
        store.reserve(&[reserve("r", &acct, 10)]).await?,
        vec![ReserveOutcome::Reserved]
    );
    assert_eq!(
        store.reserve(&[reserve("r", &acct, 1)]).await?,
        vec![ReserveOutcome::Duplicate]
    );
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (0, 10));
    assert_consistent(&store).await
}

/// `verify` finds a record's capture by its idempotency key (`capture:<request id>`; no index on
/// the entries' request id is kept for it): a billed record whose capture is gone is reported.
#[tokio::test]
async fn verify_reports_a_billed_record_without_its_capture() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hub.db");
    let store = SqliteStore::open(&path)?;
    let acct = user_account("u");
    store.grant(&grant(&acct, 100, "g")).await?;
    store
        .reserve(&[reserve("a", &acct, 50), reserve("b", &acct, 20)])
        .await?;
    store
        .insert_usage(&[record("a", &acct, 50, 10), record("b", &acct, 20, 5)])
        .await?;
    assert_consistent(&store).await?;
    let c = rusqlite::Connection::open(&path)?;
    assert_eq!(
        c.execute(
            "DELETE FROM ledger_entries WHERE idem_key = 'capture:a'",
            []
        )?,
        1
    );
    let rep = store.verify(10, 1_000_000).await?;
    assert!(
        rep.violations
            .iter()
            .any(|v| v == "usage record a has no capture"),
        "{:?}",
        rep.violations
    );
    assert!(
        !rep.violations.iter().any(|v| v.contains("record b")),
        "{:?}",
        rep.violations
    );
    Ok(())
}

/// The ledger the previous versions wrote: a `reserve` entry per hold (available -x, reserved
/// +x), a capture that also returned its hold (available +x-cost, reserved -x), a `release`
/// entry when reconcile returned one. Holds are no longer entries; such a ledger still verifies,
/// also where a hold taken the old way settles or is released the new way.
#[tokio::test]
async fn a_ledger_written_with_hold_entries_still_verifies() -> R {
    let (dir, store) = open()?;
    let acct = user_account("old");
    store.grant(&grant(&acct, 1_000, "g")).await?;
    for id in ["settled-old", "released-old", "settled-new", "released-new"] {
        assert_eq!(
            store.reserve(&[reserve(id, &acct, 100)]).await?,
            vec![ReserveOutcome::Reserved]
        );
    }
    store
        .insert_usage(&[record("settled-old", &acct, 100, 30)])
        .await?;
    // Rewritten as the previous version wrote them, through a second connection as another
    // process would.
    {
        let c = rusqlite::Connection::open(dir.path().join("hub.db"))?;
        c.busy_timeout(std::time::Duration::from_secs(5))?;
        for id in ["settled-old", "released-old", "settled-new", "released-new"] {
            c.execute(
                "INSERT INTO ledger_entries (account, kind, available_delta, reserved_delta, charged, request_id, idem_key, created_at_ms)
                 VALUES (?1, 'reserve', -100, 100, 0, ?2, 'reserve:' || ?2, 1)",
                [&acct, id],
            )?;
        }
        c.execute(
            "UPDATE ledger_entries SET available_delta = 100 - charged, reserved_delta = -100
             WHERE idem_key = 'capture:settled-old'",
            [],
        )?;
        // Released by reconcile (migration 11 moved such rows to `reconciled_holds`).
        c.execute(
            "INSERT INTO reconciled_holds (request_id, account, amount, instance, created_at_ms, reconciled_at_ms, outcome)
             SELECT request_id, account, amount, instance, created_at_ms, 1, 'released' FROM reservations
             WHERE request_id = 'released-old'",
            [],
        )?;
        c.execute(
            "DELETE FROM reservations WHERE request_id = 'released-old'",
            [],
        )?;
        c.execute(
            "INSERT INTO ledger_entries (account, kind, available_delta, reserved_delta, charged, request_id, idem_key, created_at_ms)
             VALUES (?1, 'release', 100, -100, 0, 'released-old', 'release:released-old', 1)",
            [&acct],
        )?;
        c.execute(
            "UPDATE ledger_accounts SET available = available + 100, reserved = reserved - 100 WHERE id = ?1",
            [&acct],
        )?;
    }
    assert_consistent(&store).await?;
    // Holds taken the old way, settled and released by this version.
    store
        .insert_usage(&[record("settled-new", &acct, 100, 45)])
        .await?;
    let rep = store.reconcile("me", 10, 5, 5).await?;
    assert_eq!(rep.released, 1, "{rep:?}");
    assert_consistent(&store).await?;
    let b = store.balance(&acct).await?.ok_or("no account")?;
    assert_eq!((b.available, b.reserved), (1_000 - 30 - 45, 0));
    Ok(())
}

/// `verify` finds an account whose balance its entries do not explain, a `reserved` that the
/// open reservations do not explain, a hold still open for a captured call, and a hold
/// reconcile captured without its capture.
#[tokio::test]
async fn verify_reports_balances_the_entries_and_holds_do_not_explain() -> R {
    let (dir, store) = open()?;
    let acct = user_account("v");
    store.grant(&grant(&acct, 1_000, "g")).await?;
    store.reserve(&[reserve("a", &acct, 100)]).await?;
    store.reserve(&[reserve("b", &acct, 100)]).await?;
    store.insert_usage(&[record("a", &acct, 100, 30)]).await?;
    assert_consistent(&store).await?;
    let c = rusqlite::Connection::open(dir.path().join("hub.db"))?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    let violations = |store: Arc<SqliteStore>| async move {
        Ok::<_, Box<dyn std::error::Error>>(store.verify(10, 1_000_000).await?.violations)
    };

    c.execute(
        "UPDATE ledger_accounts SET available = available + 1 WHERE id = ?1",
        [&acct],
    )?;
    let v = violations(store.clone()).await?;
    assert!(v.iter().any(|m| m.contains("but entries sum to")), "{v:#?}");
    // Money moved from available to reserved without a hold: the balance still sums, the
    // open reservations do not.
    c.execute(
        "UPDATE ledger_accounts SET available = available - 11, reserved = reserved + 10 WHERE id = ?1",
        [&acct],
    )?;
    let v = violations(store.clone()).await?;
    assert!(
        v.iter().any(|m| m.contains("but open reservations hold")),
        "{v:#?}"
    );
    assert!(
        !v.iter().any(|m| m.contains("but entries sum to")),
        "{v:#?}"
    );
    c.execute(
        "UPDATE ledger_accounts SET reserved = reserved - 10, available = available + 10 WHERE id = ?1",
        [&acct],
    )?;
    assert_consistent(&store).await?;

    // A hold still open for a call already captured (settling deletes the hold).
    c.execute(
        "INSERT INTO reservations (request_id, account, amount, instance, status, created_at_ms)
         VALUES ('a', ?1, 0, 'me', 'open', 1)",
        [&acct],
    )?;
    let v = violations(store.clone()).await?;
    assert!(
        v.iter()
            .any(|m| m.contains("reservation a is still held but its call was captured")),
        "{v:#?}"
    );
    c.execute("DELETE FROM reservations WHERE request_id = 'a'", [])?;
    assert_consistent(&store).await?;
    // A hold reconcile captured, without its capture.
    c.execute(
        "INSERT INTO reconciled_holds (request_id, account, amount, instance, created_at_ms, reconciled_at_ms, outcome)
         VALUES ('gone', ?1, 100, 'dead', 1, 2, 'captured')",
        [&acct],
    )?;
    let v = violations(store.clone()).await?;
    assert!(
        v.iter()
            .any(|m| m.contains("reservation gone (reconciled, captured) has no capture")),
        "{v:#?}"
    );
    Ok(())
}
