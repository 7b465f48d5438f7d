//! The read/write split decision: which server role runs a client's next statement, from
//! its [`Classification`] and the client's state. Pure (no I/O, time passed in) so that
//! every rule is unit-tested; one [`SplitState`] per client session.
//!
//! Rules, in order:
//! 1. A session pinned to its server connection (advisory lock, LISTEN, temp table, SQL
//!    PREPARE, WITH HOLD cursor) stays where the pin was taken, for the rest of its life.
//! 2. Inside an explicit transaction every statement goes where the transaction started.
//! 3. Writes (and statements that pin, and `BEGIN` without `READ ONLY`) go to the primary:
//!    no hint or override pulls a write to a replica — the replica would only refuse it.
//! 4. Reads (and `BEGIN READ ONLY`, which opens a transaction a replica can run) follow the
//!    statement's hint comment, else the session's `SET switchyard.route`, else go to the
//!    primary within `sticky_after_write` of the client's last write, else to a replica.
//!
//! A write inside a transaction counts for `sticky_after_write` from the transaction's end
//! (when its effects become visible), a write outside one from when it ran.

use std::time::{Duration, Instant};

use super::classify::{
    Access, Classification, RouteHint, RouteOverride, Rules, SessionChange, TxnCommand,
};
use crate::config::{CheckKind, PoolConfig, Protocol, RouteConfig};

/// The server role a statement goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The server that accepts writes.
    Primary,
    /// A read-only replica.
    Replica,
}

/// One client's split state: its session override, its last write, its open transaction
/// and its pin.
#[derive(Debug, Clone)]
pub struct SplitState {
    route: RouteOverride,
    last_write: Option<Instant>,
    transaction: Option<Transaction>,
    pinned: Option<Target>,
    /// Where the last [`SplitState::target`] sent its statement, for [`SplitState::after`].
    sent: Option<Target>,
}

/// An open explicit transaction.
#[derive(Debug, Clone, Copy)]
struct Transaction {
    target: Target,
    wrote: bool,
}

impl Default for SplitState {
    fn default() -> Self {
        Self::new()
    }
}

impl SplitState {
    /// A new session: automatic routing, no write yet, no transaction, not pinned.
    pub fn new() -> Self {
        Self {
            route: RouteOverride::Auto,
            last_write: None,
            transaction: None,
            pinned: None,
            sent: None,
        }
    }

    /// Where the statement classified as `c` goes. Call [`SplitState::after`] with the
    /// ReadyForQuery that ends it.
    pub fn target(
        &mut self,
        c: &Classification,
        now: Instant,
        sticky_after_write: Option<Duration>,
    ) -> Target {
        let target = self.decide(c, now, sticky_after_write);
        self.sent = Some(target);
        target
    }

    fn decide(
        &self,
        c: &Classification,
        now: Instant,
        sticky_after_write: Option<Duration>,
    ) -> Target {
        if let Some(pinned) = self.pinned {
            return pinned;
        }
        if let Some(transaction) = self.transaction {
            return transaction.target;
        }
        let opens_read_write =
            matches!(c.transaction, Some(TxnCommand::Begin { read_only: false }));
        if c.access == Access::Write || c.pins.is_some() || opens_read_write {
            return Target::Primary;
        }
        match (c.hint, self.route) {
            (Some(RouteHint::Primary), _) => Target::Primary,
            (Some(RouteHint::Replica), _) => Target::Replica,
            (None, RouteOverride::Primary) => Target::Primary,
            (None, RouteOverride::Replica) => Target::Replica,
            (None, RouteOverride::Auto) => {
                let sticky = sticky_after_write
                    .zip(self.last_write)
                    .is_some_and(|(window, last)| now.saturating_duration_since(last) < window);
                if sticky {
                    Target::Primary
                } else {
                    Target::Replica
                }
            }
        }
    }

    /// Updates the state once the statement classified as `c` has run: `txn_status` is the
    /// ReadyForQuery status byte that followed (`I` idle, `T` in a transaction, `E` in a
    /// failed transaction). Transaction boundaries come from that byte, not from the SQL.
    pub fn after(&mut self, c: &Classification, txn_status: u8, now: Instant) {
        let sent = self.sent.take().unwrap_or(Target::Primary);
        let wrote = c.access == Access::Write && sent == Target::Primary;
        if c.pins.is_some() && self.pinned.is_none() {
            self.pinned = Some(sent);
        }
        for change in &c.session {
            match change {
                SessionChange::Route(route) => self.route = *route,
                SessionChange::ResetAll | SessionChange::DiscardAll => {
                    self.route = RouteOverride::Auto
                }
                _ => {}
            }
        }
        match (txn_status, self.transaction.as_mut()) {
            (b'T' | b'E', Some(transaction)) => transaction.wrote |= wrote,
            (b'T' | b'E', None) => {
                self.transaction = Some(Transaction {
                    target: sent,
                    wrote,
                })
            }
            (_, transaction) => {
                if wrote || transaction.is_some_and(|t| t.wrote) {
                    self.last_write = Some(now);
                }
                self.transaction = None;
            }
        }
    }

    /// The role the session is pinned to, if a pinning statement ran.
    pub fn pinned(&self) -> Option<Target> {
        self.pinned
    }
}

/// The split settings in force for a route: the route's keys, else its pool's.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitConfig {
    /// `read_write_split`.
    pub enabled: bool,
    /// `sticky_after_write`.
    pub sticky_after_write: Option<Duration>,
    /// The built-in write functions plus `write_functions`.
    pub rules: Rules,
}

impl SplitConfig {
    /// Resolves the settings of `route` (if one matched) over those of its `pool`.
    pub fn resolve(route: Option<&RouteConfig>, pool: &PoolConfig) -> Self {
        let write_functions = route
            .and_then(|r| r.write_functions.as_ref())
            .unwrap_or(&pool.write_functions);
        Self {
            enabled: route
                .and_then(|r| r.read_write_split)
                .unwrap_or(pool.read_write_split),
            sticky_after_write: route
                .and_then(|r| r.sticky_after_write)
                .or(pool.sticky_after_write),
            rules: Rules::new(write_functions),
        }
    }
}

/// Checks a route's split keys: postgres listeners only, function names well formed, and
/// a split needs a pool whose `postgres` health check knows the servers' roles. Reports
/// `(key, message)` pairs.
pub fn validate_route(
    protocol: Protocol,
    route: &RouteConfig,
    pool: Option<&PoolConfig>,
    report: &mut dyn FnMut(&str, String),
) {
    let keys = [
        ("read_write_split", route.read_write_split.is_some()),
        ("sticky_after_write", route.sticky_after_write.is_some()),
        ("write_functions", route.write_functions.is_some()),
    ];
    if protocol != Protocol::Postgres {
        for (key, _) in keys.iter().filter(|(_, set)| *set) {
            report(key, format!("`{key}` applies to postgres routes only"));
        }
        return;
    }
    if let Some(names) = &route.write_functions {
        validate_function_names(names, &mut |message| report("write_functions", message));
    }
    if route.read_write_split == Some(true)
        && let Some(pool) = pool
    {
        require_roles(pool, &mut |message| report("read_write_split", message));
    }
}

/// Checks a pool's split keys (see [`validate_route`]).
pub fn validate_pool(pool: &PoolConfig, report: &mut dyn FnMut(&str, String)) {
    validate_function_names(&pool.write_functions, &mut |message| {
        report("write_functions", message)
    });
    if pool.read_write_split {
        require_roles(pool, &mut |message| report("read_write_split", message));
    }
}

/// Function names are matched without their schema, as PostgreSQL stores them.
fn validate_function_names(names: &[String], report: &mut dyn FnMut(String)) {
    for name in names {
        if name.is_empty() || name.contains('.') || name.contains(char::is_whitespace) {
            report(format!(
                "`{name}` is not a function name (give the name without schema or arguments)"
            ));
        }
    }
}

/// The split sends by role, which only a `postgres` health check finds out.
fn require_roles(pool: &PoolConfig, report: &mut dyn FnMut(String)) {
    let checked = pool
        .health
        .as_ref()
        .is_some_and(|h| h.check == CheckKind::Postgres);
    if !checked {
        report(format!(
            "pool `{}` needs `health = {{ check = \"postgres\" }}` so that its servers' roles are known",
            pool.name
        ));
    }
}
