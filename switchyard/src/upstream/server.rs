//! A backend server: its static settings, operator state, health, counters and sessions.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::ServerAddress;
use crate::config::ServerConfig;
use crate::health::{Health, HealthTracker, Transition};

/// What the operator asked for a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new work.
    Ready,
    /// Takes no new work; established sessions finish on their own.
    Drain,
    /// Takes no new work; established sessions are cut.
    Maint,
}

impl AdminState {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Drain,
            2 => Self::Maint,
            _ => Self::Ready,
        }
    }

    /// Parses the names used by the API and `ctl`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ready" => Some(Self::Ready),
            "drain" => Some(Self::Drain),
            "maint" => Some(Self::Maint),
            _ => None,
        }
    }
}

/// Counters kept per server, read by the API and the metrics exporter.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Sessions holding a slot on this server now.
    pub active: AtomicUsize,
    /// Sessions ever established.
    pub total: AtomicU64,
    /// Bytes sent by clients to this server.
    pub bytes_in: AtomicU64,
    /// Bytes sent by this server to clients.
    pub bytes_out: AtomicU64,
    /// Failed connect attempts.
    pub connect_errors: AtomicU64,
    /// Health checks that passed.
    pub checks_passed: AtomicU64,
    /// Health checks that failed.
    pub checks_failed: AtomicU64,
}

/// One backend server of a pool.
#[derive(Debug)]
pub struct Server {
    /// Name, unique in its pool.
    pub name: String,
    /// Where to connect.
    pub address: ServerAddress,
    /// Counters.
    pub stats: ServerStats,
    // Weight, backup and limit change in place on reload, so that the server keeps its
    // state, counters and sessions; `NO_LIMIT` stands for an unlimited `max_connections`.
    weight: AtomicU32,
    backup: AtomicBool,
    max_connections: AtomicUsize,
    admin_state: AtomicU8,
    health: Mutex<HealthTracker>,
    sessions: Mutex<CancellationToken>,
}

/// `max_connections` value standing for "no limit".
const NO_LIMIT: usize = usize::MAX;

impl Server {
    /// Builds a server from its (validated) config.
    pub fn new(config: &ServerConfig, fall: u32, rise: u32) -> Result<Self, String> {
        Ok(Self {
            name: config.display_name().to_string(),
            address: ServerAddress::parse(&config.address)?,
            weight: AtomicU32::new(config.weight),
            backup: AtomicBool::new(config.backup),
            max_connections: AtomicUsize::new(config.max_connections.unwrap_or(NO_LIMIT)),
            stats: ServerStats::default(),
            admin_state: AtomicU8::new(0),
            health: Mutex::new(HealthTracker::new(fall, rise)),
            sessions: Mutex::new(CancellationToken::new()),
        })
    }

    /// Applies a reloaded config of the same server (same name and address) in place, so
    /// that its health, counters, operator state and sessions carry over.
    pub fn update(&self, config: &ServerConfig, fall: u32, rise: u32) {
        self.weight.store(config.weight, Ordering::Release);
        self.backup.store(config.backup, Ordering::Release);
        self.max_connections.store(
            config.max_connections.unwrap_or(NO_LIMIT),
            Ordering::Release,
        );
        self.tracker().set_thresholds(fall, rise);
    }

    /// Share of traffic.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Acquire)
    }

    /// Whether it only takes traffic while no primary server is up.
    pub fn backup(&self) -> bool {
        self.backup.load(Ordering::Acquire)
    }

    /// Connection limit; `None` is unlimited.
    pub fn max_connections(&self) -> Option<usize> {
        match self.max_connections.load(Ordering::Acquire) {
            NO_LIMIT => None,
            max => Some(max),
        }
    }

    /// Forgets the health learned so far (its pool stopped checking it): the server is
    /// treated as up again instead of staying down with nothing left to revive it.
    pub fn reset_health(&self, fall: u32, rise: u32) {
        *self.tracker() = HealthTracker::new(fall, rise);
    }

    /// The operator state.
    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin_state.load(Ordering::Acquire))
    }

    /// Changes the operator state; `Maint` also cuts established sessions.
    pub fn set_admin_state(&self, state: AdminState) {
        self.admin_state.store(state as u8, Ordering::Release);
        if state == AdminState::Maint {
            self.cut_sessions();
        }
    }

    /// The health as last determined.
    pub fn health(&self) -> Health {
        self.tracker().health()
    }

    /// Whether health checking is between states (so checks run at the fast interval).
    pub fn health_in_transition(&self) -> bool {
        self.tracker().in_transition()
    }

    /// The last check's outcome text, for the API.
    pub fn last_check(&self) -> Option<String> {
        self.tracker().last_result().map(str::to_string)
    }

    /// Records a health check (active or passive) and returns the state change, if any.
    pub fn record_check(&self, result: Result<(), String>) -> Option<Transition> {
        let counter = if result.is_ok() {
            &self.stats.checks_passed
        } else {
            &self.stats.checks_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.tracker().record(result)
    }

    /// Records a successful connect: clears the passive failure count of an up server.
    pub fn record_connect_success(&self) {
        self.tracker().clear_failures_if_up();
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, HealthTracker> {
        // A poisoned lock only means a panic elsewhere; the tracker itself stays consistent.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether new work may go to this server (ignoring its connection limit).
    pub fn is_available(&self) -> bool {
        self.admin_state() == AdminState::Ready
            && self.health() != Health::Down
            && self.weight() > 0
    }

    /// Takes a connection slot if the limit allows.
    pub fn try_take_slot(&self) -> bool {
        match self.max_connections() {
            None => {
                self.stats.active.fetch_add(1, Ordering::AcqRel);
                true
            }
            Some(max) => self
                .stats
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        }
    }

    /// Returns a slot taken with `try_take_slot`.
    pub fn release_slot(&self) {
        self.stats.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Sessions currently holding a slot.
    pub fn active(&self) -> usize {
        self.stats.active.load(Ordering::Acquire)
    }

    /// A token cancelled when this server's sessions must be cut (maint, shutdown_sessions).
    pub fn session_token(&self) -> CancellationToken {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .child_token()
    }

    /// Cuts every established session of this server.
    pub fn cut_sessions(&self) {
        let mut token = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        token.cancel();
        *token = CancellationToken::new();
    }
}
