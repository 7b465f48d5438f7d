//! The read/write split decision, the same for every SQL protocol: which server role runs a
//! client's next statement, from what its classifier found ([`Statement`]) and the client's
//! state. Pure (no I/O, time passed in) so that every rule is unit-tested (in
//! `postgres/split.rs`, with PostgreSQL's classifier); one [`SplitState`] per client session.
//!
//! Rules, in order:
//! 1. A session pinned to its server connection (advisory lock, LISTEN, temp table, SQL
//!    PREPARE, WITH HOLD cursor; MySQL: named locks, user variables...) stays where the pin
//!    was taken, for the rest of its life.
//! 2. Inside an explicit transaction every statement goes where the transaction started.
//! 3. Writes (and statements that pin, and `BEGIN` without `READ ONLY`) go to the primary:
//!    no hint or override pulls a write to a replica — the replica would only refuse it.
//! 4. Reads (and `BEGIN READ ONLY`, which opens a transaction a replica can run) follow the
//!    statement's hint comment, else the session's `SET switchyard.route`, else go to the
//!    primary within `sticky_after_write` of the client's last write, else to a replica.
//!
//! A write inside a transaction counts for `sticky_after_write` from the transaction's end
//! (when its effects become visible), a write outside one from when it ran; a write that
//! failed counts too (the proxy cannot tell).
//!
//! Use: per statement (or batch), [`SplitState::target`] before sending and
//! [`SplitState::after`] with whether a transaction is open once it ran (the server says:
//! PostgreSQL's ReadyForQuery status, MySQL's `SERVER_STATUS_IN_TRANS`). A
//! `SET switchyard.route` the proxy answers itself goes through `after` too, so the
//! override takes effect.

use std::time::{Duration, Instant};

use super::sql::{Access, RouteHint, RouteOverride, TxnCommand};
use crate::upstream::ServerRole;

/// What the split needs to know of a statement, from the protocol's classifier.
pub trait Statement {
    /// Whether a replica may run it.
    fn access(&self) -> Access;
    /// The transaction-control statement it is, if any.
    fn transaction(&self) -> Option<TxnCommand>;
    /// Whether it pins the session to its connection.
    fn pins(&self) -> bool;
    /// Its leading comment's routing hint.
    fn hint(&self) -> Option<RouteHint>;
    /// The session route it leaves in force when it changes it (`SET switchyard.route`,
    /// or a reset of everything back to `Auto`).
    fn route(&self) -> Option<RouteOverride>;
}

/// The server role a statement goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The server that accepts writes.
    Primary,
    /// A read-only replica.
    Replica,
}

impl Target {
    /// The server role that runs it.
    pub fn role(self) -> ServerRole {
        match self {
            Target::Primary => ServerRole::Primary,
            Target::Replica => ServerRole::Replica,
        }
    }
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
        c: &impl Statement,
        now: Instant,
        sticky_after_write: Option<Duration>,
    ) -> Target {
        let target = self.decide(c, now, sticky_after_write);
        self.sent = Some(target);
        target
    }

    fn decide(
        &self,
        c: &impl Statement,
        now: Instant,
        sticky_after_write: Option<Duration>,
    ) -> Target {
        if let Some(pinned) = self.pinned {
            return pinned;
        }
        if let Some(transaction) = self.transaction {
            return transaction.target;
        }
        let opens_read_write = matches!(
            c.transaction(),
            Some(TxnCommand::Begin { read_only: false })
        );
        if c.access() == Access::Write || c.pins() || opens_read_write {
            return Target::Primary;
        }
        match (c.hint(), self.route) {
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

    /// Updates the state once the statement classified as `c` has run: `in_transaction` is
    /// what the server said after it (a transaction open, failed or not). Transaction
    /// boundaries come from the server, not from the SQL.
    pub fn after(&mut self, c: &impl Statement, in_transaction: bool, now: Instant) {
        let sent = self.sent.take().unwrap_or(Target::Primary);
        let wrote = c.access() == Access::Write && sent == Target::Primary;
        if c.pins() && self.pinned.is_none() {
            self.pinned = Some(sent);
        }
        if let Some(route) = c.route() {
            self.route = route;
        }
        match (in_transaction, self.transaction.as_mut()) {
            (true, Some(transaction)) => transaction.wrote |= wrote,
            (true, None) => {
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
