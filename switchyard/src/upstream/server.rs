//! A backend server: its static settings, operator state, health, counters and sessions.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::ServerAddress;
use super::{Health, HealthTracker, Transition};
use crate::config::ServerConfig;
use crate::tally::{Carried, Tally};

/// What the operator asked for a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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

/// A database server's role, as its health check last found it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// Not known: no database check, or none has answered yet.
    #[default]
    Unknown,
    /// Accepts writes.
    Primary,
    /// A read-only replica (in recovery).
    Replica,
}

/// How far a replica is behind its primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ReplicaLag {
    /// WAL received but not yet replayed.
    pub bytes: u64,
    /// Time since the last replayed transaction's commit (0 when fully caught up).
    pub seconds: f64,
}

/// Counters kept per server, read by the API and the metrics exporter.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Sessions holding a slot on this server now.
    pub active: AtomicUsize,
    /// Sessions ever established.
    pub total: AtomicU64,
    /// Bytes sent by clients to this server.
    pub bytes_in: Tally,
    /// Bytes sent by this server to clients.
    pub bytes_out: Tally,
    /// Failed connect attempts.
    pub connect_errors: AtomicU64,
    /// Idle connections kept for reuse (HTTP/1.1 keep-alive), parked ones included.
    pub idle: AtomicUsize,
    /// Idle connections kept as bare sockets, their protocol state dropped until reused.
    pub parked: AtomicUsize,
    /// Health checks that passed.
    pub checks_passed: AtomicU64,
    /// Health checks that failed.
    pub checks_failed: AtomicU64,
    /// How long the last active check took, in microseconds plus one (0 before the first):
    /// a check that slows down warns of a server about to fail it.
    check_micros: AtomicU64,
}

impl ServerStats {
    /// The counters that only grow (connections, bytes in and out, connect errors, checks
    /// passed and failed), for a binary upgrade to carry over.
    pub fn cumulative(&self) -> [&dyn Carried; 6] {
        [
            &self.total,
            &self.bytes_in,
            &self.bytes_out,
            &self.connect_errors,
            &self.checks_passed,
            &self.checks_failed,
        ]
    }
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
    // Whether `health` says down, readable without its lock: every lease asks.
    down: AtomicBool,
    // Until when a server no active check watches stays down after a failure ([`hold_down`]).
    held_until: Mutex<Option<Instant>>,
    sessions: Mutex<CancellationToken>,
    // `slow_start`, and when the server last came back (health down to up, or back to
    // ready): together they give the weight ramp.
    slow_start: Mutex<Duration>,
    returned_at: Mutex<Option<Instant>>,
    // Role and replica lag from the last database check.
    role: Mutex<(ServerRole, Option<ReplicaLag>)>,
    // When health or the operator state last changed (or the server was built).
    state_changed: Mutex<Instant>,
    admin_changed: tokio::sync::Notify,
    /// Idle server connections a protocol keeps for reuse (HTTP keep-alive), created by the
    /// protocol on first use; it lives here so that a reload, which keeps the server, keeps
    /// them too.
    pub idle_connections: ProtocolState,
}

/// State a protocol attaches to a server, typed by that protocol (`Any`).
#[derive(Default)]
pub struct ProtocolState(pub std::sync::OnceLock<std::sync::Arc<dyn std::any::Any + Send + Sync>>);

impl std::fmt::Debug for ProtocolState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "ProtocolState(set)"
        } else {
            "ProtocolState(unset)"
        })
    }
}

/// `max_connections` value standing for "no limit".
const NO_LIMIT: usize = usize::MAX;

/// The share of its weight a returning server starts with: small, so a cold replica is not
/// flooded, but never zero, so it gets some traffic to warm up on.
const RAMP_FLOOR: f64 = 1.0 / 20.0;

/// The share of its weight a server gets `elapsed` after it came back, for a `slow_start`
/// of `length`: linear from `RAMP_FLOOR` to 1, then 1.
fn ramp_fraction(elapsed: Duration, length: Duration) -> f64 {
    if elapsed >= length {
        return 1.0;
    }
    let progress = elapsed.as_secs_f64() / length.as_secs_f64();
    RAMP_FLOOR + (1.0 - RAMP_FLOOR) * progress
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Server {
    /// Builds a server from its (validated) config; `slow_start` is its weight ramp after
    /// coming back. A new server does not ramp: nothing says it is cold.
    pub fn new(
        config: &ServerConfig,
        fall: u32,
        rise: u32,
        slow_start: Duration,
    ) -> Result<Self, String> {
        Ok(Self::at(
            ServerAddress::parse(&config.address)?,
            config,
            fall,
            rise,
            slow_start,
        ))
    }

    /// A server of a resolver's answer: its address already resolved and pinned.
    pub fn resolved(name: &str, address: ServerAddress, weight: u32) -> Self {
        let config = ServerConfig {
            name: Some(name.to_string()),
            address: String::new(),
            weight,
            max_connections: None,
            backup: false,
            slow_start: None,
        };
        Self::at(address, &config, 1, 1, Duration::ZERO)
    }

    fn at(
        address: ServerAddress,
        config: &ServerConfig,
        fall: u32,
        rise: u32,
        slow_start: Duration,
    ) -> Self {
        Self {
            name: config.display_name().to_string(),
            address,
            weight: AtomicU32::new(config.weight),
            backup: AtomicBool::new(config.backup),
            max_connections: AtomicUsize::new(config.max_connections.unwrap_or(NO_LIMIT)),
            stats: ServerStats::default(),
            admin_state: AtomicU8::new(0),
            health: Mutex::new(HealthTracker::new(fall, rise)),
            down: AtomicBool::new(false),
            held_until: Mutex::new(None),
            sessions: Mutex::new(CancellationToken::new()),
            slow_start: Mutex::new(slow_start),
            returned_at: Mutex::new(None),
            role: Mutex::new((ServerRole::Unknown, None)),
            state_changed: Mutex::new(Instant::now()),
            admin_changed: tokio::sync::Notify::new(),
            idle_connections: ProtocolState::default(),
        }
    }

    /// Applies a reloaded config of the same server (same name and address) in place, so
    /// that its health, counters, operator state and sessions carry over.
    pub fn update(&self, config: &ServerConfig, fall: u32, rise: u32, slow_start: Duration) {
        self.weight.store(config.weight, Ordering::Release);
        self.backup.store(config.backup, Ordering::Release);
        self.max_connections.store(
            config.max_connections.unwrap_or(NO_LIMIT),
            Ordering::Release,
        );
        self.tracker().set_thresholds(fall, rise);
        *lock(&self.slow_start) = slow_start;
    }

    /// Share of traffic, as configured.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Acquire)
    }

    /// Share of traffic at `now`: the configured weight, scaled down while the server
    /// ramps up after coming back (`slow_start`). Every balance algorithm reads this one,
    /// so a ramp applies whatever the pool's algorithm.
    pub fn effective_weight(&self, now: Instant) -> f64 {
        let weight = f64::from(self.weight());
        let returned_at = *lock(&self.returned_at);
        match returned_at {
            Some(at) => {
                weight * ramp_fraction(now.saturating_duration_since(at), *lock(&self.slow_start))
            }
            None => weight,
        }
    }

    /// Starts the weight ramp: the server came back at `at`.
    fn returned(&self, at: Instant) {
        *lock(&self.returned_at) = Some(at);
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
        self.change_health(|tracker| *tracker = HealthTracker::new(fall, rise));
    }

    /// The operator state.
    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin_state.load(Ordering::Acquire))
    }

    /// Changes the operator state; `Maint` also cuts established sessions, and going back
    /// to `Ready` starts the weight ramp.
    pub fn set_admin_state(&self, state: AdminState) {
        let previous = AdminState::from_u8(self.admin_state.swap(state as u8, Ordering::AcqRel));
        self.admin_changed.notify_waiters();
        if previous != state {
            self.state_changed_now();
        }
        match state {
            AdminState::Maint => self.cut_sessions(),
            AdminState::Ready if previous != AdminState::Ready => self.returned(Instant::now()),
            _ => {}
        }
    }

    /// Takes over the operator state, health and database role another process had for
    /// this server (a binary upgrade), without the side effects of a change: nothing is cut
    /// or ramped. Without the role, a listener that needs a primary would refuse logins
    /// until this process's first database check of the server, up to an interval later.
    pub fn inherit_state(
        &self,
        admin: AdminState,
        health: Health,
        (role, lag): (ServerRole, Option<ReplicaLag>),
    ) {
        if self.admin_state.swap(admin as u8, Ordering::AcqRel) != admin as u8 {
            self.state_changed_now();
        }
        if health != Health::Unchecked {
            self.change_health(|tracker| tracker.seed(health));
        }
        if role != ServerRole::Unknown {
            self.record_role(role, lag);
        }
    }

    /// Completes at the next operator state change (idle connections to a server put in
    /// drain or maint are closed then).
    pub fn admin_state_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.admin_changed.notified()
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

    /// When health or the operator state last changed (or the server was built, if neither
    /// has): the dashboard's "since", telling a flapping server from a long-dead one.
    pub fn state_changed_at(&self) -> Instant {
        *lock(&self.state_changed)
    }

    fn state_changed_now(&self) {
        *lock(&self.state_changed) = Instant::now();
    }

    /// How long the last active health check took; `None` before the first.
    pub fn last_check_duration(&self) -> Option<Duration> {
        let stored = self.stats.check_micros.load(Ordering::Relaxed);
        stored.checked_sub(1).map(Duration::from_micros)
    }

    /// Records an active health check that took `took`, as `record_check` does.
    pub fn record_active_check(
        &self,
        result: Result<(), String>,
        took: Duration,
    ) -> Option<Transition> {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.stats
            .check_micros
            .store(micros.saturating_add(1), Ordering::Relaxed);
        self.record_check(result)
    }

    /// Records a health check (active or passive) and returns the state change, if any.
    pub fn record_check(&self, result: Result<(), String>) -> Option<Transition> {
        let counter = if result.is_ok() {
            &self.stats.checks_passed
        } else {
            &self.stats.checks_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let transition = self.change_health(|tracker| tracker.record(result));
        if transition
            .as_ref()
            .is_some_and(|t| t.from == Health::Down && t.to == Health::Up)
        {
            self.returned(Instant::now());
        }
        transition
    }

    /// The role the last database check found.
    pub fn role(&self) -> ServerRole {
        lock(&self.role).0
    }

    /// A replica's lag as last measured; `None` for other roles.
    pub fn replica_lag(&self) -> Option<ReplicaLag> {
        lock(&self.role).1
    }

    /// Records what a database check found; returns the previous role when a known role
    /// changed (a promotion, or a primary back as a replica), which may cut sessions.
    pub fn record_role(&self, role: ServerRole, lag: Option<ReplicaLag>) -> Option<ServerRole> {
        let previous = std::mem::replace(&mut *lock(&self.role), (role, lag)).0;
        (previous != ServerRole::Unknown && previous != role).then_some(previous)
    }

    /// Records a successful connect: clears the passive failure count of an up server.
    pub fn record_connect_success(&self) {
        self.tracker().clear_failures_if_up();
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, HealthTracker> {
        lock(&self.health)
    }

    /// Changes the health tracker, keeping the lock-free `down` in step with it.
    fn change_health<R>(&self, change: impl FnOnce(&mut HealthTracker) -> R) -> R {
        let mut tracker = self.tracker();
        let before = tracker.health();
        let result = change(&mut tracker);
        let after = tracker.health();
        self.down.store(after == Health::Down, Ordering::Release);
        drop(tracker);
        if after != before {
            self.state_changed_now();
        }
        result
    }

    /// Whether new work may go to this server (ignoring its connection limit).
    pub fn is_available(&self) -> bool {
        self.admin_state() == AdminState::Ready
            && (!self.down.load(Ordering::Acquire) || self.hold_over())
            && self.weight() > 0
    }

    /// Takes down, for `hold`, a server no active check watches (a resolver's), after a
    /// failure seen in traffic: clients meanwhile are not sent to it one after another,
    /// and it comes back by itself when the hold is over, for the next connection to
    /// try it again.
    pub fn hold_down(&self, reason: String, hold: Duration) -> Option<Transition> {
        *lock(&self.held_until) = Some(Instant::now() + hold);
        self.record_check(Err(reason))
    }

    /// Whether the server was held down and the hold is over: it is then back (unchecked).
    fn hold_over(&self) -> bool {
        let mut held = lock(&self.held_until);
        match *held {
            Some(until) if Instant::now() >= until => {
                *held = None;
                drop(held);
                self.change_health(|tracker| tracker.seed(Health::Unchecked));
                true
            }
            _ => false,
        }
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
    /// It is the server's own token, shared by its sessions (cheaper per request than a
    /// child token of it): watch it, never cancel it.
    pub fn session_token(&self) -> CancellationToken {
        lock(&self.sessions).clone()
    }

    /// Cuts every established session of this server.
    pub fn cut_sessions(&self) {
        let mut token = lock(&self.sessions);
        token.cancel();
        *token = CancellationToken::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(weight: u32, slow_start: Duration) -> Server {
        let config = ServerConfig {
            name: Some("s".into()),
            address: "127.0.0.1:1000".into(),
            weight,
            max_connections: None,
            backup: false,
            slow_start: None,
        };
        Server::new(&config, 1, 1, slow_start).expect("valid test server")
    }

    #[test]
    fn ramp_is_linear_from_the_floor_to_one() {
        let length = Duration::from_secs(10);
        assert_eq!(ramp_fraction(Duration::ZERO, length), RAMP_FLOOR);
        let half = ramp_fraction(Duration::from_secs(5), length);
        assert!((half - (RAMP_FLOOR + 1.0) / 2.0).abs() < 1e-9, "{half}");
        assert!(ramp_fraction(Duration::from_secs(2), length) < half);
        assert_eq!(ramp_fraction(length, length), 1.0);
        assert_eq!(ramp_fraction(Duration::from_secs(60), length), 1.0);
        assert_eq!(
            ramp_fraction(Duration::ZERO, Duration::ZERO),
            1.0,
            "no ramp"
        );
    }

    #[test]
    fn a_new_server_has_its_full_weight_at_once() {
        let s = server(4, Duration::from_secs(30));
        assert_eq!(s.effective_weight(Instant::now()), 4.0);
    }

    #[test]
    fn back_to_ready_ramps_the_weight() {
        let s = server(4, Duration::from_secs(30));
        s.set_admin_state(AdminState::Drain);
        s.set_admin_state(AdminState::Ready);
        let start = (*lock(&s.returned_at)).expect("ramp started");
        assert_eq!(s.effective_weight(start), 4.0 * RAMP_FLOOR);
        let mid = s.effective_weight(start + Duration::from_secs(15));
        assert!((mid - 4.0 * (RAMP_FLOOR + 1.0) / 2.0).abs() < 1e-9, "{mid}");
        assert_eq!(s.effective_weight(start + Duration::from_secs(30)), 4.0);
        s.set_admin_state(AdminState::Ready);
        assert_eq!(
            *lock(&s.returned_at),
            Some(start),
            "ready to ready is no return"
        );
    }

    #[test]
    fn health_down_to_up_ramps_but_the_first_up_does_not() {
        let s = server(2, Duration::from_secs(30));
        s.record_check(Ok(()));
        assert_eq!(*lock(&s.returned_at), None, "unchecked to up");
        s.record_check(Err("refused".into()));
        s.record_check(Ok(()));
        let start = (*lock(&s.returned_at)).expect("ramp started");
        assert_eq!(s.effective_weight(start), 2.0 * RAMP_FLOOR);
    }

    #[test]
    fn state_changes_and_check_durations_are_kept() {
        let s = server(1, Duration::ZERO);
        let built = s.state_changed_at();
        assert_eq!(s.last_check_duration(), None);
        s.record_active_check(Ok(()), Duration::from_millis(3));
        assert_eq!(s.last_check_duration(), Some(Duration::from_millis(3)));
        let up = s.state_changed_at();
        assert!(up >= built, "unchecked to up is a change");
        s.record_check(Ok(()));
        assert_eq!(s.state_changed_at(), up, "up to up is none");
        s.set_admin_state(AdminState::Ready);
        assert_eq!(s.state_changed_at(), up, "ready to ready is none");
        s.set_admin_state(AdminState::Drain);
        assert!(s.state_changed_at() >= up);
        s.record_active_check(Err("slow".into()), Duration::MAX);
        assert!(
            s.last_check_duration().is_some(),
            "a huge duration is kept, saturated"
        );
    }

    #[test]
    fn a_held_server_is_down_until_the_hold_is_over() {
        let s = server(1, Duration::ZERO);
        let down = s.hold_down("connect: refused".into(), Duration::from_secs(60));
        assert_eq!(down.map(|t| t.to), Some(Health::Down));
        assert!(!s.is_available());
        *lock(&s.held_until) = Some(Instant::now());
        assert!(s.is_available());
        assert_eq!(s.health(), Health::Unchecked);
        assert_eq!(s.last_check().as_deref(), Some("connect: refused"));
    }

    #[test]
    fn without_slow_start_a_returning_server_gets_its_full_weight() {
        let s = server(3, Duration::ZERO);
        s.set_admin_state(AdminState::Maint);
        s.set_admin_state(AdminState::Ready);
        assert_eq!(s.effective_weight(Instant::now()), 3.0);
    }
}
