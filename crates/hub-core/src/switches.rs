//! Benchmarking switches: turn one costly part of the request path OFF, to measure what it costs
//! (BENCHMARKS.md, scenario 5).
//!
//! Everything is ON by default and in production. Only `HUB_BENCH_DISABLE=<comma list>` (read by
//! `aigne-hub serve`) turns parts off, and the hub logs a warning naming each part at start-up.
//! A name this build does not know is refused, so a benchmark can never silently measure a switch
//! that does nothing.
//!
//! | name          | what is skipped                                                          |
//! |---------------|---------------------------------------------------------------------------|
//! | `auth`        | the API-key lookup: every call is attributed to the `HUB_ADMIN_KEY` owner |
//! | `limits`      | the per-key policy check (allowed models/surfaces, RPM/TPM windows)       |
//! | `reservation` | the credit hold before dispatch (credits mode); settlement still charges  |
//! | `usage_log`   | the durable usage record (no write, no wait for the group commit)         |

/// Which costly parts of the request path are on. `Default`: all on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchSwitches {
    /// Resolve the caller's API key (off: every call runs as the `HUB_ADMIN_KEY` owner).
    pub auth: bool,
    /// Apply the key's policy (models, surfaces, RPM/TPM limits) before dispatch.
    pub limits: bool,
    /// Reserve the call's worst-case cost before dispatch (credits mode; internal mode reserves
    /// nothing either way). Off: the record's settlement still charges the cost.
    pub reservation: bool,
    /// Commit a usage record per call before the caller sees the end of the response.
    pub usage_log: bool,
}

impl Default for BenchSwitches {
    fn default() -> Self {
        BenchSwitches {
            auth: true,
            limits: true,
            reservation: true,
            usage_log: true,
        }
    }
}

/// Names `HUB_BENCH_DISABLE` accepts in this build.
pub const SWITCH_NAMES: &[&str] = &["auth", "limits", "reservation", "usage_log"];

impl BenchSwitches {
    /// Parses `HUB_BENCH_DISABLE` (comma list of [`SWITCH_NAMES`]; empty = everything on).
    pub fn from_disable_list(list: &str) -> Result<BenchSwitches, String> {
        let mut s = BenchSwitches::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "auth" => s.auth = false,
                "limits" => s.limits = false,
                "reservation" => s.reservation = false,
                "usage_log" => s.usage_log = false,
                other => {
                    return Err(format!(
                        "HUB_BENCH_DISABLE: unknown switch `{other}`; this build knows: {}",
                        SWITCH_NAMES.join(", ")
                    ));
                }
            }
        }
        Ok(s)
    }

    /// Names of the parts switched off.
    pub fn disabled(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.auth {
            v.push("auth");
        }
        if !self.limits {
            v.push("limits");
        }
        if !self.reservation {
            v.push("reservation");
        }
        if !self.usage_log {
            v.push("usage_log");
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_on_unless_named() {
        assert_eq!(
            BenchSwitches::from_disable_list(""),
            Ok(BenchSwitches::default())
        );
        let s = BenchSwitches::from_disable_list(" usage_log , auth,limits,reservation")
            .unwrap_or_default();
        assert!(!s.auth && !s.limits && !s.reservation && !s.usage_log);
        assert_eq!(
            s.disabled(),
            vec!["auth", "limits", "reservation", "usage_log"]
        );
        let only_log = BenchSwitches::from_disable_list("usage_log").unwrap_or_default();
        assert!(only_log.auth && only_log.limits && only_log.reservation && !only_log.usage_log);
    }

    #[test]
    fn unknown_names_are_refused() {
        let e = BenchSwitches::from_disable_list("auth,reservations")
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("`reservations`") && e.contains("auth, limits, reservation, usage_log"),
            "{e}"
        );
    }
}
