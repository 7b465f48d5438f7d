//! A transaction-mode client's session settings: the startup parameters it asked for and
//! the `SET`s it ran outside a transaction. Server connections are shared, so these are
//! re-applied on whichever connection runs the client's next transaction, unless that
//! connection already has exactly these settings (most clients share them).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use super::codec::Startup;

/// Marks a server connection whose settings are unknown (a SET the proxy could not track
/// ran on it): whoever uses it next resets it first.
pub const UNKNOWN: u64 = u64::MAX;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// Settings as statements to replay, by parameter name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSettings {
    statements: BTreeMap<String, String>,
    id: u64,
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
            let statement = format!("SET {} TO {}", identifier(name), literal(value));
            settings
                .statements
                .insert(name.to_ascii_lowercase(), statement);
        }
        settings.rehash();
        settings
    }

    /// Records `SET name ...` (the statement as the client wrote it).
    pub fn set(&mut self, name: &str, statement: &str) {
        self.statements
            .insert(name.to_ascii_lowercase(), statement.to_string());
        self.rehash();
    }

    /// Records `RESET name`.
    pub fn reset(&mut self, name: &str) {
        self.statements.remove(&name.to_ascii_lowercase());
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

    /// The SQL that takes a connection from any settings to these.
    pub fn apply_sql(&self) -> String {
        let mut sql = String::from("RESET ALL");
        for statement in self.statements.values() {
            sql.push_str("; ");
            sql.push_str(statement.trim().trim_end_matches(';'));
        }
        sql
    }

    fn rehash(&mut self) {
        self.id = if self.statements.is_empty() {
            0
        } else {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.statements.hash(&mut hasher);
            match hasher.finish() {
                0 | UNKNOWN => 1,
                id => id,
            }
        };
    }
}

/// `name` as a quoted SQL identifier.
fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a quoted SQL string literal, read the same whatever
/// `standard_conforming_strings` is: an `E''` literal when it has backslashes.
pub fn literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
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
            settings.apply_sql(),
            "RESET ALL; SET \"application_name\" TO 'it''s'; SET \"client_encoding\" TO 'UTF8'"
        );
        assert_ne!(settings.id(), 0);
        let again = SessionSettings::from_startup(&startup);
        assert_eq!(settings.id(), again.id(), "equal settings share an id");
    }

    #[test]
    fn set_and_reset_change_the_id() {
        let mut settings = SessionSettings::default();
        assert_eq!(settings.id(), 0);
        settings.set("search_path", "SET search_path TO a, b;");
        let with_path = settings.id();
        assert!(with_path != 0 && with_path != UNKNOWN);
        assert_eq!(settings.apply_sql(), "RESET ALL; SET search_path TO a, b");
        settings.set("Search_Path", "SET search_path TO c");
        assert_ne!(settings.id(), with_path);
        settings.reset("SEARCH_PATH");
        assert_eq!(settings.id(), 0);
        settings.set("x.y", "SET x.y = 1");
        settings.reset_all();
        assert_eq!(settings.apply_sql(), "RESET ALL");
        assert_eq!(literal("a\\b'"), "E'a\\\\b'''");
        assert_eq!(identifier("a\"b"), "\"a\"\"b\"");
    }
}
