//! Upstream timeouts (global and per provider) and the health tunables, read from the environment:
//! `HUB_TIMEOUT_{CONNECT,TTFB,IDLE,TOTAL}_MS`, per provider `<PREFIX>_TIMEOUT_{..}_MS`
//! (`OPENAI_TIMEOUT_TTFB_MS`, `OPEN_ROUTER_TIMEOUT_IDLE_MS`, ...), and `HUB_BREAKER_*`,
//! `HUB_AUTH_RECHECK_*`, `HUB_RATE_LIMIT_COOLDOWN_MS`.
//!
//! Per-provider timeouts can also be stored (admin API `PUT /api/admin/providers/{name}/timeouts`,
//! CLI `aigne-hub admin provider timeouts`), as the setting `provider.<name>.timeouts`. Precedence
//! per field: stored > provider env > `HUB_TIMEOUT_*` env > default.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::HealthConfig;
use crate::providers::ProviderKind;

/// Timeouts of one upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Per attempt: until the first stream event, or until the whole answer of a non-streaming
    /// call (its first byte is the answer). Exceeded -> the next candidate is tried.
    pub ttfb: Duration,
    /// Between two stream events once the stream started. Exceeded -> the stream ends with an
    /// error event in the caller's format and is settled.
    pub idle: Duration,
    /// The whole call: every attempt, and the stream until its end.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            ttfb: Duration::from_secs(300),
            idle: Duration::from_secs(120),
            total: Duration::from_secs(900),
        }
    }
}

/// Per-provider overrides of [`Timeouts`]; unset fields use the global value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeoutOverrides {
    pub connect: Option<Duration>,
    pub ttfb: Option<Duration>,
    pub idle: Option<Duration>,
    pub total: Option<Duration>,
}

impl Timeouts {
    /// These timeouts with a provider's overrides applied.
    pub fn with(self, o: Option<&TimeoutOverrides>) -> Timeouts {
        let Some(o) = o else { return self };
        Timeouts {
            connect: o.connect.unwrap_or(self.connect),
            ttfb: o.ttfb.unwrap_or(self.ttfb),
            idle: o.idle.unwrap_or(self.idle),
            total: o.total.unwrap_or(self.total),
        }
    }
}

/// The longest timeout that can be stored (24 hours).
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// Per-provider timeouts as stored and as the admin API and CLI take them, in milliseconds; an
/// absent field keeps the environment's value (or the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimeoutSettings {
    /// TCP + TLS connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    /// Per attempt: until the first stream event, or the whole answer of a non-streaming call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<u64>,
    /// Between two stream events once the stream started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// The whole call: every attempt, and the stream until its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

impl TimeoutSettings {
    /// The setting key a provider's stored timeouts live under.
    pub fn key(kind: ProviderKind) -> String {
        format!("provider.{}.timeouts", kind.name())
    }

    /// Every field 1 ms ..= 24 h; connect and first-byte no longer than total when both are set.
    /// The error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (name, v) in [
            ("connect_ms", self.connect_ms),
            ("ttfb_ms", self.ttfb_ms),
            ("idle_ms", self.idle_ms),
            ("total_ms", self.total_ms),
        ] {
            if let Some(ms) = v
                && !(1..=MAX_TIMEOUT_MS).contains(&ms)
            {
                return Err((
                    name,
                    format!("`{name}` must be 1 to {MAX_TIMEOUT_MS} milliseconds, got {ms}"),
                ));
            }
        }
        if let Some(total) = self.total_ms {
            for (name, v) in [("connect_ms", self.connect_ms), ("ttfb_ms", self.ttfb_ms)] {
                if let Some(ms) = v
                    && ms > total
                {
                    return Err((
                        name,
                        format!("`{name}` ({ms}) cannot be longer than `total_ms` ({total})"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn overrides(&self) -> TimeoutOverrides {
        let d = |v: Option<u64>| v.map(Duration::from_millis);
        TimeoutOverrides {
            connect: d(self.connect_ms),
            ttfb: d(self.ttfb_ms),
            idle: d(self.idle_ms),
            total: d(self.total_ms),
        }
    }

    /// All four fields set: the timeouts in force.
    pub fn of(t: &Timeouts) -> TimeoutSettings {
        let ms = |d: Duration| Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        TimeoutSettings {
            connect_ms: ms(t.connect),
            ttfb_ms: ms(t.ttfb),
            idle_ms: ms(t.idle),
            total_ms: ms(t.total),
        }
    }
}

/// A provider's timeouts (`GET/PUT /api/admin/providers/{name}/timeouts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderTimeouts {
    pub provider: String,
    /// Stored by an administrator (absent fields: not stored).
    pub stored: TimeoutSettings,
    /// In force now: stored > the provider's env > `HUB_TIMEOUT_*` > default.
    pub effective: TimeoutSettings,
}

fn millis(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<Duration>, String> {
    match get(name) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
            _ => Err(format!(
                "{name} must be a positive number of milliseconds, got `{v}`"
            )),
        },
    }
}

fn overrides(
    get: &impl Fn(&str) -> Option<String>,
    prefix: &str,
) -> Result<TimeoutOverrides, String> {
    Ok(TimeoutOverrides {
        connect: millis(get, &format!("{prefix}_TIMEOUT_CONNECT_MS"))?,
        ttfb: millis(get, &format!("{prefix}_TIMEOUT_TTFB_MS"))?,
        idle: millis(get, &format!("{prefix}_TIMEOUT_IDLE_MS"))?,
        total: millis(get, &format!("{prefix}_TIMEOUT_TOTAL_MS"))?,
    })
}

/// Global timeouts and per-provider overrides from an environment lookup.
pub fn timeouts_from_env(
    get: impl Fn(&str) -> Option<String>,
) -> Result<(Timeouts, HashMap<ProviderKind, TimeoutOverrides>), String> {
    let global = Timeouts::default().with(Some(&overrides(&get, "HUB")?));
    let mut per = HashMap::new();
    for kind in ProviderKind::ALL {
        let o = overrides(&get, kind.env_prefix())?;
        if o != TimeoutOverrides::default() {
            per.insert(kind, o);
        }
    }
    Ok((global, per))
}

/// `HUB_EXTRA_CA_FILE`: the PEM bundle of extra root certificates for upstream TLS, read from
/// the file it names (unset: none).
pub fn extra_ca_from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Vec<u8>>, String> {
    match get("HUB_EXTRA_CA_FILE").filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(path) => std::fs::read(path.trim())
            .map(Some)
            .map_err(|e| format!("HUB_EXTRA_CA_FILE `{path}`: {e}")),
    }
}

/// Health tunables from an environment lookup (unset: defaults).
pub fn health_from_env(get: impl Fn(&str) -> Option<String>) -> Result<HealthConfig, String> {
    let mut cfg = HealthConfig::default();
    if let Some(v) = get("HUB_BREAKER_FAILURES").filter(|v| !v.trim().is_empty()) {
        cfg.breaker_failures = v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("HUB_BREAKER_FAILURES must be a positive integer, got `{v}`"))?;
    }
    let set = |d: &mut Duration, name: &str| -> Result<(), String> {
        if let Some(v) = millis(&get, name)? {
            *d = v;
        }
        Ok(())
    };
    set(&mut cfg.breaker_cooldown, "HUB_BREAKER_COOLDOWN_MS")?;
    set(&mut cfg.breaker_max_cooldown, "HUB_BREAKER_MAX_COOLDOWN_MS")?;
    set(&mut cfg.auth_recheck_initial, "HUB_AUTH_RECHECK_MS")?;
    set(&mut cfg.auth_recheck_max, "HUB_AUTH_RECHECK_MAX_MS")?;
    set(&mut cfg.rate_limit_cooldown, "HUB_RATE_LIMIT_COOLDOWN_MS")?;
    set(&mut cfg.quota_cooldown, "HUB_QUOTA_COOLDOWN_MS")?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_global_and_provider_timeouts() {
        let env: HashMap<&str, &str> = [
            ("HUB_TIMEOUT_TTFB_MS", "1500"),
            ("HUB_TIMEOUT_IDLE_MS", "700"),
            ("OPEN_ROUTER_TIMEOUT_TTFB_MS", "9000"),
        ]
        .into_iter()
        .collect();
        let (g, per) = timeouts_from_env(|k| env.get(k).map(|v| v.to_string())).unwrap_or_default();
        assert_eq!(g.ttfb, Duration::from_millis(1500));
        assert_eq!(g.idle, Duration::from_millis(700));
        assert_eq!(g.connect, Timeouts::default().connect);
        let or = g.with(per.get(&ProviderKind::OpenRouter));
        assert_eq!(or.ttfb, Duration::from_millis(9000));
        assert_eq!(or.idle, Duration::from_millis(700));
        assert_eq!(per.len(), 1);
    }

    #[test]
    fn stored_settings_are_validated() {
        let ok = TimeoutSettings {
            ttfb_ms: Some(500),
            total_ms: Some(500),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        assert!(TimeoutSettings::default().validate().is_ok());
        for (bad, field) in [
            (
                TimeoutSettings {
                    idle_ms: Some(0),
                    ..Default::default()
                },
                "idle_ms",
            ),
            (
                TimeoutSettings {
                    connect_ms: Some(MAX_TIMEOUT_MS + 1),
                    ..Default::default()
                },
                "connect_ms",
            ),
            (
                TimeoutSettings {
                    ttfb_ms: Some(900),
                    total_ms: Some(800),
                    ..Default::default()
                },
                "ttfb_ms",
            ),
        ] {
            assert_eq!(bad.validate().err().map(|e| e.0), Some(field), "{bad:?}");
        }
        // Stored over env over global, field by field.
        let env = TimeoutOverrides {
            ttfb: Some(Duration::from_secs(9)),
            idle: Some(Duration::from_secs(8)),
            ..Default::default()
        };
        let stored = TimeoutSettings {
            ttfb_ms: Some(250),
            ..Default::default()
        };
        let t = Timeouts::default()
            .with(Some(&env))
            .with(Some(&stored.overrides()));
        assert_eq!(t.ttfb, Duration::from_millis(250));
        assert_eq!(t.idle, Duration::from_secs(8));
        assert_eq!(t.total, Timeouts::default().total);
        let unknown = serde_json::from_str::<TimeoutSettings>(r#"{"ttfb":5}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn rejects_nonsense() {
        let bad = timeouts_from_env(|k| (k == "HUB_TIMEOUT_TOTAL_MS").then(|| "soon".to_string()));
        assert!(bad.is_err_and(|e| e.contains("HUB_TIMEOUT_TOTAL_MS")));
        let zero = health_from_env(|k| (k == "HUB_BREAKER_FAILURES").then(|| "0".to_string()));
        assert!(zero.is_err());
        let ok = health_from_env(|k| (k == "HUB_BREAKER_COOLDOWN_MS").then(|| "250".to_string()));
        assert_eq!(
            ok.map(|c| c.breaker_cooldown).ok(),
            Some(Duration::from_millis(250))
        );
    }
}
