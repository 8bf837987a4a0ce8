//! Upstream timeouts (global and per provider) and the health tunables, read from the environment:
//! `HUB_TIMEOUT_{CONNECT,TTFB,IDLE,TOTAL}_MS`, per provider `<PREFIX>_TIMEOUT_{..}_MS`
//! (`OPENAI_TIMEOUT_TTFB_MS`, `OPEN_ROUTER_TIMEOUT_IDLE_MS`, ...), and `HUB_BREAKER_*`,
//! `HUB_AUTH_RECHECK_*`, `HUB_RATE_LIMIT_COOLDOWN_MS`.

use std::collections::HashMap;
use std::time::Duration;

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
