//! The session state a pooled MySQL client has set, as the server reports it, and the
//! statements that give a server connection that state. Pure.
//!
//! Switchyard turns on the server's session tracking on each pooled connection
//! ([`TRACKING`]): every OK then lists the system variables that changed and their new
//! values, a new default database, and whether anything else about the session changed.
//! So the state comes from the server, never from reading the client's SQL: a `SET NAMES`,
//! `SET SESSION sql_mode`, `SET autocommit`, `USE` or `COM_INIT_DB` is recorded whatever
//! its spelling, and replayed on another connection (`SET SESSION name = value, ...` and
//! COM_INIT_DB) when that connection's state differs. A state change the server reports
//! without naming it (a user variable, a temporary table, a named lock, a SQL-level
//! prepared statement), or a change to the tracking itself, cannot be replayed: the
//! client is pinned to its connection.

use std::collections::BTreeMap;

use super::CodecError;
use super::ok::{SessionChange, session_changes};

/// What switchyard runs on each new pooled connection so that OKs report state changes.
pub const TRACKING: &str = "SET SESSION session_track_schema = ON, session_track_state_change = ON, session_track_system_variables = '*'";

/// Variables the server reports but nobody sets: read-only, they change as a side effect
/// of what ran (MariaDB's `last_gtid` after each write), so there is nothing to carry.
const READ_ONLY: &[&str] = &[
    "last_gtid",
    "error_count",
    "warning_count",
    "in_transaction",
];

/// `SESSION_TRACK_STATE_CHANGE`: something about the session changed.
const STATE_CHANGE: u8 = 2;

/// The default database, and system variables as changed from a fresh connection's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// The default database (`None`: none was ever selected).
    pub schema: Option<String>,
    /// System variables changed, by name (lower case), with the value the server reported.
    pub variables: BTreeMap<String, String>,
}

/// What an OK's session state list said, beyond what [`SessionState::note`] recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Noted {
    /// The server reported a change it did not name, or the tracking itself changed:
    /// the session cannot move to another connection.
    pub unexplained: bool,
}

impl SessionState {
    /// The state of a session logged in to `database` (empty: none).
    pub fn logged_in_to(database: &str) -> Self {
        Self {
            schema: Some(database.to_string()).filter(|d| !d.is_empty()),
            variables: BTreeMap::new(),
        }
    }

    /// Records the changes of an OK's `session_state` list.
    pub fn note(&mut self, session_state: &[u8]) -> Result<Noted, CodecError> {
        let mut named = false;
        let mut changed = false;
        let mut unexplained = false;
        for change in session_changes(session_state)? {
            match change {
                SessionChange::SystemVariable { name, value } => {
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    if READ_ONLY.contains(&name.as_str()) {
                        named = true;
                        continue;
                    }
                    if name.starts_with("session_track") {
                        unexplained = true;
                    }
                    named = true;
                    let value = String::from_utf8_lossy(value).into_owned();
                    self.variables.insert(name, value);
                }
                SessionChange::Schema(schema) => {
                    named = true;
                    self.schema = Some(String::from_utf8_lossy(schema).into_owned());
                }
                SessionChange::Other { kind, .. } => changed |= kind == STATE_CHANGE,
            }
        }
        Ok(Noted {
            unexplained: unexplained || (changed && !named),
        })
    }

    /// What takes a connection in state `from` to this state: the database to select and
    /// a `SET` statement; `None` when that cannot be done (a connection's default
    /// database cannot be taken back to none, not even by a reset: only a fresh
    /// connection has none).
    ///
    /// A variable the connection changed and this state did not goes back to its value in
    /// `baseline` (what the login set: the character set variables) or else to its
    /// `DEFAULT` (the global value, what a new session starts with).
    pub fn replay_from(&self, from: &SessionState, baseline: &Baseline) -> Option<Replay> {
        let schema = match (&self.schema, &from.schema) {
            (mine, theirs) if mine == theirs => None,
            (Some(mine), _) => Some(mine.clone()),
            (None, _) => return None,
        };
        let mut assignments = Vec::new();
        for (name, value) in &self.variables {
            if from.variables.get(name) != Some(value) {
                assignments.push(format!(
                    "SESSION {} = {}",
                    identifier(name),
                    literal(name, value)
                ));
            }
        }
        for name in from.variables.keys() {
            if !self.variables.contains_key(name) {
                let value = match baseline.get(name) {
                    Some(value) => literal(name, value),
                    None => "DEFAULT".to_string(),
                };
                assignments.push(format!("SESSION {} = {value}", identifier(name)));
            }
        }
        let set = (!assignments.is_empty()).then(|| format!("SET {}", assignments.join(", ")));
        Some(Replay { schema, set })
    }
}

/// Variables whose value in a new session comes from its login rather than from the
/// global value (the character set the client's handshake named): read once per
/// connection ([`BASELINE_QUERY`]), so that "back to what it was" is not `DEFAULT`.
pub type Baseline = BTreeMap<String, String>;

/// The variables of a [`Baseline`], in the order of [`BASELINE_QUERY`]'s columns.
pub const BASELINE_VARIABLES: [&str; 4] = [
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
];

/// Reads a new session's [`BASELINE_VARIABLES`].
pub const BASELINE_QUERY: &str = "SELECT @@character_set_client, @@character_set_connection, @@character_set_results, @@collation_connection";

/// The commands that give a connection a client's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// The database to select (COM_INIT_DB).
    pub schema: Option<String>,
    /// The `SET` statement.
    pub set: Option<String>,
}

impl Replay {
    /// Whether nothing needs to run.
    pub fn is_empty(&self) -> bool {
        self.schema.is_none() && self.set.is_none()
    }
}

/// A variable name quoted as an identifier.
fn identifier(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A reported value as a literal the server reads back as the same value: numbers as they
/// are, text quoted — or as a hexadecimal string when it holds a backslash or a non-ASCII
/// byte, whose reading would depend on `sql_mode` and the connection's character set.
/// `character_set_results` reported empty was set to NULL.
fn literal(name: &str, value: &str) -> String {
    if name == "character_set_results" && value.is_empty() {
        return "NULL".to_string();
    }
    let numeric = !value.is_empty()
        && value
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || b == b'.' || (i == 0 && b == b'-'));
    if numeric {
        value.to_string()
    } else if value
        .bytes()
        .all(|b| b.is_ascii() && b != b'\\' && !b.is_ascii_control())
    {
        format!("'{}'", value.replace('\'', "''"))
    } else {
        let hex: String = value.bytes().map(|b| format!("{b:02X}")).collect();
        format!("X'{hex}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::lenenc::put_lenenc_bytes;

    fn entry(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        put_lenenc_bytes(&mut out, data);
        out
    }

    fn variable(name: &str, value: &str) -> Vec<u8> {
        let mut data = Vec::new();
        put_lenenc_bytes(&mut data, name.as_bytes());
        put_lenenc_bytes(&mut data, value.as_bytes());
        entry(0, &data)
    }

    fn schema(name: &str) -> Vec<u8> {
        let mut data = Vec::new();
        put_lenenc_bytes(&mut data, name.as_bytes());
        entry(1, &data)
    }

    #[test]
    fn named_changes_are_recorded_and_replayed() {
        let mut client = SessionState::default();
        let mut list = variable("autocommit", "OFF");
        list.extend(variable("sql_mode", "ANSI_QUOTES"));
        list.extend(variable("wait_timeout", "100"));
        list.extend(schema("shop"));
        list.extend(entry(STATE_CHANGE, b"1"));
        assert_eq!(client.note(&list).ok(), Some(Noted { unexplained: false }));
        let replay = client.replay_from(&SessionState::default(), &Baseline::new());
        assert_eq!(
            replay,
            Some(Replay {
                schema: Some("shop".into()),
                set: Some(
                    "SET SESSION `autocommit` = 'OFF', SESSION `sql_mode` = 'ANSI_QUOTES', SESSION `wait_timeout` = 100"
                        .into()
                ),
            })
        );
        assert_eq!(
            client
                .replay_from(&client, &Baseline::new())
                .map(|r| r.is_empty()),
            Some(true)
        );
    }

    #[test]
    fn read_only_variables_are_not_carried() {
        let mut state = SessionState::default();
        let mut list = variable("last_gtid", "0-1-5");
        list.extend(entry(STATE_CHANGE, b"1"));
        assert_eq!(state.note(&list).ok(), Some(Noted { unexplained: false }));
        assert_eq!(state, SessionState::default());
    }

    #[test]
    fn variables_only_the_connection_has_go_back_to_default() {
        let mut connection = SessionState::default();
        connection
            .note(&variable("time_zone", "+01:00"))
            .expect("parses");
        connection
            .note(&variable("character_set_client", "latin1"))
            .expect("parses");
        let baseline = Baseline::from([("character_set_client".into(), "utf8mb4".into())]);
        let replay = SessionState::default().replay_from(&connection, &baseline);
        assert_eq!(
            replay.and_then(|r| r.set),
            Some(
                "SET SESSION `character_set_client` = 'utf8mb4', SESSION `time_zone` = DEFAULT"
                    .into()
            )
        );
    }

    #[test]
    fn a_selected_database_cannot_be_unselected() {
        let mut connection = SessionState::default();
        connection.note(&schema("other")).expect("parses");
        assert_eq!(
            SessionState::default().replay_from(&connection, &Baseline::new()),
            None
        );
        let replay = SessionState::logged_in_to("app").replay_from(&connection, &Baseline::new());
        assert_eq!(replay.and_then(|r| r.schema), Some("app".into()));
    }

    #[test]
    fn unnamed_changes_and_tracking_changes_pin() {
        let mut state = SessionState::default();
        let noted = state.note(&entry(STATE_CHANGE, b"1")).expect("parses");
        assert!(noted.unexplained, "a user variable or temporary table");
        let noted = state
            .note(&variable("session_track_system_variables", ""))
            .expect("parses");
        assert!(noted.unexplained, "tracking switched off");
        assert!(state.note(&[0, 5, 1]).is_err(), "truncated list");
    }

    #[test]
    fn values_are_quoted_so_they_read_back_the_same() {
        assert_eq!(literal("x", "-1.5"), "-1.5");
        assert_eq!(literal("x", "it's"), "'it''s'");
        assert_eq!(literal("x", ""), "''");
        assert_eq!(literal("x", "a\\b"), "X'615C62'");
        assert_eq!(literal("x", "é"), "X'C3A9'");
        assert_eq!(literal("character_set_results", ""), "NULL");
        assert_eq!(identifier("we`ird"), "`we``ird`");
    }
}
