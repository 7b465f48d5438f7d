//! A transaction-mode client's session settings: the startup parameters it asked for and
//! the `SET`s it ran outside a transaction. Server connections are shared, so these are
//! re-applied on whichever connection runs the client's next transaction, unless that
//! connection already has exactly these settings (most clients share them).

use std::hash::BuildHasher;

use super::codec::Startup;
use super::scanner;

/// Marks a server connection whose session state is unknown (something the proxy could
/// not track ran on it): whoever uses it next resets it with [`RESET`] first.
pub const UNKNOWN: u64 = u64::MAX;

/// Takes a connection in an unknown state back to a fresh one's: session authorization
/// and role, every setting, prepared statements, cursors, `LISTEN`, advisory locks,
/// temporary objects, sequence state. It cannot run inside a transaction block, so it is
/// sent alone, on an idle connection.
pub const RESET: &str = "DISCARD ALL";

/// Takes a connection from another client's known settings back to the server's defaults.
/// `RESET ALL` leaves the role and session authorization alone, so those are reset first
/// (the proxy pins clients that change them, but a connection must not depend on that).
pub const RESET_SETTINGS: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL";

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// Settings as statements to replay, by parameter name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSettings {
    /// (lower-case name, statement), sorted by name: a client has a handful, and a sorted
    /// vector keeps them in one small allocation (a `BTreeMap` node is 544 bytes, kept by
    /// every pooled client for its life).
    statements: Vec<(String, String)>,
    id: u64,
    /// The startup asked for a client-only `client_encoding` or for
    /// `standard_conforming_strings` off: the proxy cannot read the client's statements as
    /// the server will.
    unreadable: bool,
}

impl SessionSettings {
    /// The settings a client's StartupMessage asks for (application_name,
    /// client_encoding, DateStyle...).
    pub fn from_startup(startup: &Startup) -> Self {
        let mut settings = Self::default();
        for (name, value) in &startup.params {
            if NOT_SETTINGS.contains(&name.as_str()) || name.starts_with("_pq_.") {
                continue;
            }
            let lower = name.to_ascii_lowercase();
            settings.unreadable |= match lower.as_str() {
                "client_encoding" => !scanner::readable_encoding(value),
                "standard_conforming_strings" => !scanner::conforming_strings(value),
                _ => false,
            };
            // Written in place: every pooled login comes this way.
            let mut statement = String::with_capacity(name.len() + value.len() + 16);
            statement.push_str("SET ");
            push_identifier(&mut statement, name);
            statement.push_str(" TO ");
            push_literal(&mut statement, value);
            settings.insert(lower, statement);
        }
        settings.statements.shrink_to_fit();
        settings.rehash();
        settings
    }

    /// Records `SET name ...` (the statement as the client wrote it).
    pub fn set(&mut self, name: &str, statement: &str) {
        self.insert(name.to_ascii_lowercase(), statement.to_string());
        self.rehash();
    }

    /// Records `RESET name`.
    pub fn reset(&mut self, name: &str) {
        if let Ok(at) = self.position(&name.to_ascii_lowercase()) {
            self.statements.remove(at);
        }
        self.rehash();
    }

    /// Records `RESET ALL` / `DISCARD ALL`: back to the server's defaults.
    pub fn reset_all(&mut self) {
        self.statements.clear();
        self.rehash();
    }

    /// Identifies these settings: two clients with equal settings have the same id; 0 is
    /// the server's defaults (what a fresh connection has).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The statements [`Self::replay_sql`] joins, one per parameter (for checks that the
    /// replay holds only what the client asked for).
    pub fn statements(&self) -> impl Iterator<Item = &str> {
        self.statements
            .iter()
            .map(|(_, statement)| statement.as_str())
    }

    /// Whether the proxy reads this client's statements as the server does (see
    /// `scanner`); a client it cannot read is pinned to its connection.
    pub fn readable(&self) -> bool {
        !self.unreadable
    }

    /// The SQL that takes a connection from the server's defaults to these settings;
    /// `None` for the defaults themselves. Sent apart from the reset before it, so that a
    /// statement here that fails cannot undo the reset (a query string is one transaction).
    pub fn replay_sql(&self) -> Option<String> {
        let mut statements = self.statements();
        let mut sql = statements.next()?.trim().trim_end_matches(';').to_string();
        for statement in statements {
            sql.push_str("; ");
            sql.push_str(statement.trim().trim_end_matches(';'));
        }
        Some(sql)
    }

    /// Where `name` is, or would be inserted.
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.statements
            .binary_search_by(|(known, _)| known.as_str().cmp(name))
    }

    /// Sets `name`'s statement, replacing the one it had.
    fn insert(&mut self, name: String, statement: String) {
        match self.position(&name) {
            Ok(at) => self.statements[at].1 = statement,
            Err(at) => self.statements.insert(at, (name, statement)),
        }
    }

    fn rehash(&mut self) {
        // SipHash under a key drawn once per process. Under a fixed key (`DefaultHasher`'s
        // is zero) a client could search offline for settings whose id equals another
        // client's of the same pool, and then one of them would run on a connection
        // holding the other's settings (a `search_path`...) as if they were its own.
        // With a secret key, ids of different settings meet by chance only, one in 2^64.
        static KEY: std::sync::LazyLock<std::hash::RandomState> =
            std::sync::LazyLock::new(std::hash::RandomState::new);
        self.id = if self.statements.is_empty() {
            0
        } else {
            match KEY.hash_one(&self.statements) {
                0 | UNKNOWN => 1,
                id => id,
            }
        };
    }
}

/// Appends `name` as a quoted SQL identifier.
fn push_identifier(out: &mut String, name: &str) {
    out.push('"');
    push_doubling(out, name, '"');
    out.push('"');
}

/// `value` as a quoted SQL string literal (see [`push_literal`]).
pub fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    push_literal(&mut out, value);
    out
}

/// Appends `value` as a quoted SQL string literal, read the same whatever
/// `standard_conforming_strings` is: an `E''` literal when it has backslashes.
fn push_literal(out: &mut String, value: &str) {
    if value.contains('\\') {
        out.push_str("E'");
        for (at, piece) in value.split('\\').enumerate() {
            if at > 0 {
                out.push_str("\\\\");
            }
            push_doubling(out, piece, '\'');
        }
    } else {
        out.push('\'');
        push_doubling(out, value, '\'');
    }
    out.push('\'');
}

/// Appends `text` with each `quote` written twice (SQL's escape inside quotes).
fn push_doubling(out: &mut String, text: &str, quote: char) {
    for (at, piece) in text.split(quote).enumerate() {
        if at > 0 {
            out.push(quote);
            out.push(quote);
        }
        out.push_str(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_parameters_become_quoted_set_statements() {
        let mut startup = Startup {
            version: crate::protocol::postgres::codec::PROTOCOL_3_0,
            params: Vec::new(),
        };
        startup.set_param("user", "app");
        startup.set_param("database", "db");
        startup.set_param("application_name", "it's");
        startup.set_param("client_encoding", "UTF8");
        startup.set_param("_pq_.x", "1");
        let settings = SessionSettings::from_startup(&startup);
        assert_eq!(
            settings.replay_sql().as_deref(),
            Some("SET \"application_name\" TO 'it''s'; SET \"client_encoding\" TO 'UTF8'")
        );
        assert_ne!(settings.id(), 0);
        assert!(settings.readable());
        let again = SessionSettings::from_startup(&startup);
        assert_eq!(settings.id(), again.id(), "equal settings share an id");
        // Not the fixed-key hash, which anyone could search for settings of a given id.
        let mut fixed = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&settings.statements, &mut fixed);
        assert_ne!(settings.id(), std::hash::Hasher::finish(&fixed));
    }

    #[test]
    fn quoting_doubles_quotes_and_backslashes_anywhere() {
        for text in [
            "",
            "a",
            "'",
            "\"",
            "\\",
            "''",
            "a'b\"c\\d",
            "\\'",
            "'\\",
            "x\\\\y",
            "é'ü\\",
        ] {
            let literal_expected = if text.contains('\\') {
                format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
            } else {
                format!("'{}'", text.replace('\'', "''"))
            };
            assert_eq!(literal(text), literal_expected, "{text:?}");
            let mut identifier = String::new();
            push_identifier(&mut identifier, text);
            assert_eq!(
                identifier,
                format!("\"{}\"", text.replace('"', "\"\"")),
                "{text:?}"
            );
        }
    }

    #[test]
    fn set_and_reset_change_the_id() {
        let mut settings = SessionSettings::default();
        assert_eq!(settings.id(), 0);
        settings.set("search_path", "SET search_path TO a, b;");
        let with_path = settings.id();
        assert!(with_path != 0 && with_path != UNKNOWN);
        assert_eq!(
            settings.replay_sql().as_deref(),
            Some("SET search_path TO a, b")
        );
        settings.set("Search_Path", "SET search_path TO c");
        assert_ne!(settings.id(), with_path);
        settings.reset("SEARCH_PATH");
        assert_eq!(settings.id(), 0);
        settings.set("x.y", "SET x.y = 1");
        settings.reset_all();
        assert_eq!(settings.replay_sql(), None);
        assert_eq!(literal("a\\b'"), "E'a\\\\b'''");
        let mut identifier = String::new();
        push_identifier(&mut identifier, "a\"b");
        assert_eq!(identifier, "\"a\"\"b\"");
    }

    /// A startup the scanner cannot read as the server will marks the client.
    #[test]
    fn startups_the_proxy_cannot_read() {
        let startup = |name: &str, value: &str| {
            let mut startup = Startup {
                version: crate::protocol::postgres::codec::PROTOCOL_3_0,
                params: Vec::new(),
            };
            startup.set_param("user", "app");
            startup.set_param(name, value);
            SessionSettings::from_startup(&startup)
        };
        assert!(!startup("client_encoding", "SJIS").readable());
        assert!(!startup("standard_conforming_strings", "off").readable());
        assert!(startup("client_encoding", "UTF8").readable());
        assert!(startup("standard_conforming_strings", "on").readable());
    }
}
