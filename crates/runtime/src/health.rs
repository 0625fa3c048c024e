//! Liveness (`/health`) and readiness (`/ready`).
//!
//! A server registers named checks and flips them as its dependencies come and go.
//! `/health` answers 200 while the process can do useful work (UP or DEGRADED) and 503
//! when a check is DOWN; `/ready` answers 200 only once the server has said it is
//! ready and no check is DOWN. Both bodies list every check with its detail.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// The state of one check, and of the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthState {
    /// Working.
    Up,
    /// Working, with something wrong that callers should know (stale data, a peer down).
    Degraded,
    /// Not working.
    Down,
}

/// One named check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The state.
    pub status: HealthState,
    /// What the state means now.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The body of `/health` and `/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// The worst state of any check.
    pub status: HealthState,
    /// Whether the server has said it is ready.
    pub ready: bool,
    /// Every check by name.
    pub checks: BTreeMap<String, Check>,
}

#[derive(Debug, Default)]
struct Inner {
    ready: bool,
    checks: BTreeMap<String, Check>,
}

/// The health of one server, shared by its parts.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<RwLock<Inner>>,
}

impl Health {
    /// A server that is not ready yet and has no checks.
    pub fn new() -> Self {
        Health::default()
    }

    /// Says whether the server is ready to take traffic.
    pub fn set_ready(&self, ready: bool) {
        self.write(|inner| inner.ready = ready);
    }

    /// Sets a named check.
    pub fn set(&self, name: &str, status: HealthState, detail: impl Into<String>) {
        let check = Check {
            status,
            detail: detail.into(),
        };
        self.write(|inner| {
            inner.checks.insert(name.to_owned(), check);
        });
    }

    /// The report as `/health` shows it.
    pub fn report(&self) -> HealthReport {
        let inner = self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let status = inner
            .checks
            .values()
            .map(|check| check.status)
            .max()
            .unwrap_or(HealthState::Up);
        HealthReport {
            status,
            ready: inner.ready,
            checks: inner.checks.clone(),
        }
    }

    fn write(&self, change: impl FnOnce(&mut Inner)) {
        let mut inner = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_check_decides_the_state() {
        let health = Health::new();
        assert_eq!(health.report().status, HealthState::Up);
        health.set("git", HealthState::Degraded, "serving the last good commit");
        health.set("store", HealthState::Up, "");
        assert_eq!(health.report().status, HealthState::Degraded);
        health.set("store", HealthState::Down, "unreachable");
        assert_eq!(health.report().status, HealthState::Down);
        health.set("store", HealthState::Up, "");
        assert_eq!(health.report().status, HealthState::Degraded);
    }
}
