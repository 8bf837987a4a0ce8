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
