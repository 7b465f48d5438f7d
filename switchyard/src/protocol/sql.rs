//! What SQL statements do, for every SQL protocol's pooler and read/write split: the
//! protocol-neutral answers (where a statement may run, which transaction command it is, the
//! proxy's own route override and per-statement hint). Each protocol's classifier
//! (`postgres::classify`, `mysql::classify`) reads its own grammar and reports in these
//! terms, so the split's rules are written once.

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only: a replica can run it.
    Read,
    /// Writes, or could not be classified: the primary runs it.
    Write,
}

/// A transaction-control statement, for the split's transaction tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnCommand {
    /// `BEGIN`/`START TRANSACTION`. `read_only` is true for `READ ONLY` transactions a
    /// replica can run: not `SERIALIZABLE` ones, which a hot standby refuses.
    Begin {
        /// Whether the transaction may go to a replica.
        read_only: bool,
    },
    /// `COMMIT`/`END` (also `COMMIT AND CHAIN`; the status byte tells what follows).
    Commit,
    /// `ROLLBACK`/`ABORT`.
    Rollback,
}

/// The session override `SET switchyard.route = primary | replica | auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOverride {
    /// Every statement to the primary.
    Primary,
    /// Reads to a replica even within `sticky_after_write`; writes still to the primary.
    Replica,
    /// Back to classification (also `RESET switchyard.route` and `SET … TO DEFAULT`).
    Auto,
}

/// A per-statement routing hint from a leading comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteHint {
    /// `/* switchyard: primary */`
    Primary,
    /// `/* switchyard: replica */` (never pulls a write off the primary).
    Replica,
}

/// `switchyard: primary` or `switchyard: replica` (any case, any spacing) in a comment's
/// text (without its `/*`, `*/` or `--` markers): each protocol finds its leading
/// comments with its own lexical rules, the hint inside reads the same everywhere.
pub fn hint_in(comment: &str) -> Option<RouteHint> {
    let comment = comment.trim();
    let prefix = comment.get(..ROUTE_HINT_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ROUTE_HINT_PREFIX) {
        return None;
    }
    let value = comment.get(ROUTE_HINT_PREFIX.len()..)?.trim();
    if value.eq_ignore_ascii_case("primary") {
        Some(RouteHint::Primary)
    } else if value.eq_ignore_ascii_case("replica") {
        Some(RouteHint::Replica)
    } else {
        None
    }
}

/// What a hint comment starts with.
const ROUTE_HINT_PREFIX: &str = "switchyard:";
