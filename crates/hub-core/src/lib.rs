//! AIGNE Hub core: the domain, free of any HTTP-server framework and of napi.

pub mod auth; // API keys (stored hashed), principals, roles
pub mod budget; // per-key spend budgets per calendar day/month in an IANA time zone
pub mod config; // start-up options, provider credentials from env
pub mod error; // ProviderError (upstream, classified) and HubError (what the caller sees)
pub mod health; // credential/provider/model health: breakers, cool-downs, report
pub mod hooks; // host hooks: identity resolver for unknown tokens (TTL-cached), usage observer
pub mod hub; // the engine: authenticate, route, dispatch with fallback, meter, record
pub mod iam; // scopes and admin operations (teams, users, keys, providers, credentials), audited
pub mod keyring; // master-key files (current, next, retired) and rotation without downtime
pub mod ledger; // credit ledger (reserve / capture / release), price book and reports behind a trait
pub mod ledger_admin; // prices, credits, billing settings, usage reports: scoped, validated, audited
pub mod metrics; // Prometheus counters and histograms (atomics)
pub mod policy; // per-key policy: allowed models and surfaces, RPM/TPM limits
pub mod pricing; // decimal rates, cost formula, built-in list prices, fixed-point money
pub mod providers; // one module per wire protocol behind one trait
pub mod router; // model string -> ordered candidates; built-in catalog
pub mod store; // persistence trait; sqlite backend
pub mod switches; // HUB_BENCH_DISABLE: benchmarking switches (all on by default)
pub mod timeouts; // upstream timeouts and health tunables from env
pub mod tokenize; // real-tokenizer estimates when a provider reports no usage
pub mod types; // canonical request/response/stream/usage types
pub mod upstream_http; // the upstream client: hyper-util's pool, rustls, proxies from the environment
pub mod usage; // durable usage writer with group commit
pub mod vault; // AES-256-GCM envelope for provider credentials

pub use error::{ErrorClass, ErrorKind, HubError, ProviderError};
pub use hub::{CallContext, Hub, HubStream, Opened, StreamItem};

/// The maps a call looks things up in (keys, gates, prices, routes, limits, health, the store's
/// per-batch sums): std's `HashMap` hashed with foldhash instead of SipHash. A call makes ~20
/// such lookups, and SipHash took ~4.8k instructions of each call at concurrency 64 (1.7 %;
/// BENCHMARKS.md, twelfth session). foldhash is seeded per process, so a caller still cannot aim
/// keys at one bucket.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// `serde_json::from_slice`, with the bytes' UTF-8 checked once up front. `from_slice` checks each
/// string of the document on its own (~100 instructions a string, ~40 strings in a chat call's
/// request and response: 1.6 % of a call at concurrency 64); `from_str` trusts a `&str`. Bytes that
/// are not UTF-8 go to `from_slice`, so the error (and its position) is the same as before.
pub fn json_from_slice<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::from_str(s),
        Err(_) => serde_json::from_slice(bytes),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_from_slice_reads_as_from_slice_does_and_fails_the_same_way() {
        let v: Result<serde_json::Value, _> = super::json_from_slice(br#"{"a":["b\u00e9",1]}"#);
        assert_eq!(v.ok(), Some(serde_json::json!({"a": ["bé", 1]})));
        for bad in [&b"{\"a\":\"\xff\"}"[..], b"{\"a\":", b"{\"a\" 1}", b""] {
            let ours = super::json_from_slice::<serde_json::Value>(bad).map_err(|e| e.to_string());
            let theirs =
                serde_json::from_slice::<serde_json::Value>(bad).map_err(|e| e.to_string());
            assert!(ours.is_err(), "{bad:?}");
            assert_eq!(ours, theirs, "{bad:?}");
        }
    }
}
