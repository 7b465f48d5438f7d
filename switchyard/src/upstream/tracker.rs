//! The rise/fall state machine shared by active checks and passive observation.

use super::{Pool, Server};
use crate::config::OnDown;
use serde::{Deserialize, Serialize};

/// A server's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet: treated as up until the first check says otherwise.
    Unchecked,
    /// Passing checks.
    Up,
    /// Failing checks: takes no new work.
    Down,
}

/// A change of health worth logging and acting on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Health before.
    pub from: Health,
    /// Health after.
    pub to: Health,
    /// The check result that caused it.
    pub reason: String,
}

/// Counts consecutive results and flips health after `fall` failures or `rise` successes.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    health: Health,
    fall: u32,
    rise: u32,
    successes: u32,
    failures: u32,
    last_result: Option<String>,
}

impl HealthTracker {
    /// A tracker for a server that has not been checked.
    pub fn new(fall: u32, rise: u32) -> Self {
        Self {
            health: Health::Unchecked,
            fall: fall.max(1),
            rise: rise.max(1),
            successes: 0,
            failures: 0,
            last_result: None,
        }
    }

    /// Changes `fall` and `rise` (a reload) without forgetting the current health.
    pub fn set_thresholds(&mut self, fall: u32, rise: u32) {
        self.fall = fall.max(1);
        self.rise = rise.max(1);
    }

    /// Starts from a health another process determined (a binary upgrade), so that a
    /// down server stays down until `rise` checks pass here too.
    pub fn seed(&mut self, health: Health) {
        self.health = health;
        self.successes = 0;
        self.failures = 0;
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// The last result, `"ok"` or the failure reason.
    pub fn last_result(&self) -> Option<&str> {
        self.last_result.as_deref()
    }

    /// Whether results have started to disagree with the current health.
    pub fn in_transition(&self) -> bool {
        match self.health {
            Health::Unchecked => false,
            Health::Up => self.failures > 0,
            Health::Down => self.successes > 0,
        }
    }

    /// Clears failures counted against an up server (a connect went through).
    pub fn clear_failures_if_up(&mut self) {
        if self.health != Health::Down {
            self.failures = 0;
        }
    }

    /// Records one result; the first result decides an unchecked server's health outright.
    pub fn record(&mut self, result: Result<(), String>) -> Option<Transition> {
        let before = self.health;
        let reason = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.clone(),
        };
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if before == Health::Unchecked
                    || (before == Health::Down && self.successes >= self.rise)
                {
                    self.health = Health::Up;
                }
            }
            Err(_) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if before == Health::Unchecked
                    || (before == Health::Up && self.failures >= self.fall)
                {
                    self.health = Health::Down;
                }
            }
        }
        self.last_result = Some(reason.clone());
        (self.health != before).then(|| {
            self.successes = 0;
            self.failures = 0;
            Transition {
                from: before,
                to: self.health,
                reason,
            }
        })
    }
}

/// Logs a health change and applies its consequences.
pub fn on_transition(pool: &Pool, server: &Server, transition: &Transition) {
    match transition.to {
        Health::Down => {
            tracing::warn!(pool = %pool.name, server = %server.name, reason = %transition.reason, "server is down");
            if pool
                .health
                .as_ref()
                .is_some_and(|h| h.on_down == OnDown::ShutdownSessions)
            {
                server.cut_sessions();
            }
        }
        Health::Up => {
            tracing::info!(pool = %pool.name, server = %server.name, "server is up");
        }
        Health::Unchecked => {}
    }
    // Queued clients may now have a server (or none): let them look again.
    pool.wake_queue();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Result<(), String> {
        Err("refused".into())
    }

    #[test]
    fn first_result_decides_unchecked() {
        let mut t = HealthTracker::new(3, 2);
        assert_eq!(t.record(fail()).map(|t| t.to), Some(Health::Down));
        let mut t = HealthTracker::new(3, 2);
        assert_eq!(t.record(Ok(())).map(|t| t.to), Some(Health::Up));
    }

    #[test]
    fn fall_and_rise_need_consecutive_results() {
        let mut t = HealthTracker::new(3, 2);
        t.record(Ok(()));
        assert!(t.record(fail()).is_none());
        assert!(t.in_transition());
        assert!(t.record(fail()).is_none());
        assert!(
            t.record(Ok(())).is_none(),
            "a success resets the failure count"
        );
        assert!(!t.in_transition());
        assert!(t.record(fail()).is_none());
        assert!(t.record(fail()).is_none());
        assert_eq!(t.record(fail()).map(|t| t.to), Some(Health::Down));
        assert!(t.record(Ok(())).is_none());
        assert!(t.in_transition());
        assert_eq!(t.record(Ok(())).map(|t| t.to), Some(Health::Up));
        assert_eq!(t.last_result(), Some("ok"));
    }
}
