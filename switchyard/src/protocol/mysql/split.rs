//! MySQL's classification in the terms of the shared read/write split
//! (`protocol::split`), and the classification the pooler gives commands that carry no
//! SQL of their own.

use std::sync::LazyLock;

use super::classify::{Classification, SessionChange};
use crate::protocol::split::Statement;
use crate::protocol::sql::{Access, RouteHint, RouteOverride, TxnCommand};

impl Statement for Classification {
    fn access(&self) -> Access {
        self.access
    }

    fn transaction(&self) -> Option<TxnCommand> {
        self.transaction
    }

    fn pins(&self) -> bool {
        self.pins.is_some()
    }

    fn hint(&self) -> Option<RouteHint> {
        self.hint
    }

    fn route(&self) -> Option<RouteOverride> {
        self.session.iter().rev().find_map(|change| match change {
            SessionChange::Route(route) => Some(*route),
            _ => None,
        })
    }
}

/// A command without SQL text that reads at most (COM_PING, COM_INIT_DB, COM_FIELD_LIST,
/// COM_STATISTICS): it may go wherever the session's reads go. Made once: commands ask
/// for it on the hot path.
pub fn read_command() -> &'static Classification {
    static READ: LazyLock<Classification> = LazyLock::new(|| super::classify::classify(""));
    &READ
}

/// A command the proxy cannot read (anything else): the primary runs it, and it may have
/// changed the session unseen.
pub fn unknown_command() -> &'static Classification {
    static UNKNOWN: LazyLock<Classification> = LazyLock::new(|| Classification::unknown(None));
    &UNKNOWN
}
