//! Which part of an expiring grant is still unused. Spending draws on the grant that expires
//! first (grants without expiry last), so a user never loses credit they could have spent first.
//! Pure: computed from the account's entries when a grant expires (rare), never on the hot path.

use super::LedgerEntry;

/// A grant bucket while replaying.
struct Bucket {
    id: i64,
    left: i64,
    expires_at_ms: Option<i64>,
}

/// The unused remainder of grant entry `grant_id` when it expires, replaying `entries` (one
/// account, oldest first). Spending (`charged` of captures, negative adjustments) draws on live
/// buckets by earliest expiry; an `expire:<id>` entry empties its own bucket.
pub fn unused_of_grant(entries: &[LedgerEntry], grant_id: i64) -> i64 {
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut target_expiry = None;
    for e in entries {
        if e.id == grant_id {
            target_expiry = e.expires_at_ms;
        }
    }
    let cutoff = target_expiry.unwrap_or(i64::MAX);
    for e in entries {
        if e.created_at_ms >= cutoff && e.id != grant_id {
            break;
        }
        let is_grant =
            matches!(e.kind.as_str(), "grant" | "starter" | "adjust") && e.available_delta > 0;
        if is_grant {
            buckets.push(Bucket {
                id: e.id,
                left: e.available_delta,
                expires_at_ms: e.expires_at_ms,
            });
            continue;
        }
        if e.kind == "expire" {
            if let Some(id) = e
                .idem_key
                .strip_prefix("expire:")
                .and_then(|s| s.parse::<i64>().ok())
                && let Some(b) = buckets.iter_mut().find(|b| b.id == id)
            {
                b.left = 0;
            }
            continue;
        }
        let spent = match e.kind.as_str() {
            "capture" => e.charged,
            "adjust" => -e.available_delta,
            _ => 0,
        };
        draw(&mut buckets, spent, e.created_at_ms);
    }
    buckets
        .iter()
        .find(|b| b.id == grant_id)
        .map_or(0, |b| b.left.max(0))
}

fn draw(buckets: &mut [Bucket], mut amount: i64, at_ms: i64) {
    if amount <= 0 {
        return;
    }
    let mut order: Vec<usize> = (0..buckets.len())
        .filter(|&i| buckets[i].left > 0 && buckets[i].expires_at_ms.is_none_or(|x| x > at_ms))
        .collect();
    order.sort_by_key(|&i| (buckets[i].expires_at_ms.unwrap_or(i64::MAX), buckets[i].id));
    for i in order {
        let take = amount.min(buckets[i].left);
        buckets[i].left -= take;
        amount -= take;
        if amount == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        id: i64,
        kind: &str,
        avail: i64,
        charged: i64,
        exp: Option<i64>,
        at: i64,
    ) -> LedgerEntry {
        LedgerEntry {
            id,
            account: "user:u".into(),
            kind: kind.into(),
            available_delta: avail,
            reserved_delta: 0,
            charged,
            request_id: None,
            idem_key: format!("k{id}"),
            expires_at_ms: exp,
            note: None,
            created_at_ms: at,
        }
    }

    #[test]
    fn spending_draws_on_the_earliest_expiry_first() {
        let es = vec![
            entry(1, "grant", 100, 0, None, 1),        // bought, never expires
            entry(2, "starter", 50, 0, Some(1000), 2), // starter, expires at 1000
            entry(3, "capture", -30, 30, None, 3),
            entry(4, "grant", 40, 0, Some(500), 4), // expires before the starter
            entry(5, "capture", -60, 60, None, 5),
        ];
        // capture 3 (30) takes from the starter (the only expiring grant then): starter 20 left.
        // capture 5 (60) takes grant 4 (expires first, 40) then the starter (20): starter 0 left.
        assert_eq!(unused_of_grant(&es, 4), 0);
        assert_eq!(unused_of_grant(&es, 2), 0);
        // The grant without expiry is drawn on last: untouched.
        assert_eq!(unused_of_grant(&es, 1), 100);
    }

    #[test]
    fn spending_after_expiry_does_not_draw_on_the_expired_grant() {
        let es = vec![
            entry(1, "starter", 50, 0, Some(10), 1),
            entry(2, "capture", -20, 20, None, 5),
            entry(3, "grant", 100, 0, None, 20),
            entry(4, "capture", -70, 70, None, 30),
        ];
        assert_eq!(unused_of_grant(&es, 1), 30);
    }

    #[test]
    fn an_expired_grant_is_not_expired_twice() {
        let mut es = vec![entry(1, "starter", 50, 0, Some(10), 1)];
        let mut exp = entry(2, "expire", -50, 0, None, 11);
        exp.idem_key = "expire:1".into();
        es.push(exp);
        assert_eq!(
            unused_of_grant(&es, 1),
            50,
            "as of its own expiry it had 50 left"
        );
    }
}
