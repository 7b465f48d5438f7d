//! Named prepared statements in transaction mode.
//!
//! A client prepares a statement once and executes it in later transactions, which may run
//! on other server connections. So the proxy keeps each client's statements (its name →
//! the Parse that made it) and gives each distinct statement one server-side name derived
//! from its text and parameter types: every client preparing the same SQL shares it, and a
//! server connection that already has it needs no new Parse. Each server connection
//! remembers what it has prepared, up to a bound; the least recently used is closed first.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::classify::{SessionEffects, session_effects};
use super::frames::{Frame, Parse};

/// One statement as the servers know it.
#[derive(Debug)]
pub struct Statement {
    /// The name used on every server connection.
    pub server_name: String,
    /// The Parse that prepares it under that name.
    pub parse: Frame,
    /// The query text (for routing decisions).
    pub query: String,
    /// What running it does to the session: noted at each Bind, since each execution may
    /// run on another server connection. Worked out once, at the client's Parse.
    pub effects: SessionEffects,
}

/// The server-side name of a statement: a digest of its text and parameter types, so the
/// same SQL from any client maps to the same name and different SQL never does.
fn server_name(parse: &Parse<'_>) -> String {
    let mut digest = Sha256::new();
    digest.update(parse.query);
    digest.update([0]);
    digest.update(parse.types);
    let hash = digest.finalize();
    let mut name = String::with_capacity(3 + 32);
    name.push_str("sy_");
    // Hex by hand: one allocation per name, not one per byte.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in &hash[..16] {
        name.push(char::from(HEX[usize::from(byte >> 4)]));
        name.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    name
}

/// A client's named statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    /// Made at the first named statement: most pooled clients never prepare one, and the
    /// session is what an idle pooled client keeps (8 bytes instead of 48). The map and
    /// its statements last as the session does, so they come from the lasting heap
    /// (`memory`), though made while a transaction is served.
    #[allow(clippy::box_collection)] // the box is the point: see above
    by_name: Option<Box<HashMap<Vec<u8>, Arc<Statement>>>>,
}

impl ClientStatements {
    /// Records the client's Parse of a named statement (replacing one of the same name)
    /// and returns it as the servers will know it.
    pub fn prepare(&mut self, parse: &Parse<'_>) -> Arc<Statement> {
        let effects = session_effects(parse.query);
        crate::memory::lasting(|| {
            let server_name = server_name(parse);
            let statement = Arc::new(Statement {
                parse: parse.renamed(&server_name),
                query: String::from_utf8_lossy(parse.query).into_owned(),
                effects,
                server_name,
            });
            self.by_name
                .get_or_insert_default()
                .insert(parse.name.to_vec(), statement.clone());
            statement
        })
    }

    /// The client's statement called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.as_ref()?.get(name)
    }

    /// Forgets the client's statement `name` (Close).
    pub fn close(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.by_name.as_mut()?.remove(name)
    }

    /// How many statements the client has.
    pub fn len(&self) -> usize {
        self.by_name.as_ref().map_or(0, |by_name| by_name.len())
    }

    /// Whether the client has none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The statements one server connection has prepared, least recently used first out.
#[derive(Debug)]
pub struct ServerStatements {
    used: HashMap<String, u64>,
    clock: u64,
    capacity: usize,
}

impl ServerStatements {
    /// An empty set keeping at most `capacity` statements (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            used: HashMap::new(),
            clock: 0,
            capacity: capacity.max(1),
        }
    }

    /// Whether `name` is prepared here; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.clock += 1;
        match self.used.get_mut(name) {
            Some(last) => {
                *last = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared.
    pub fn insert(&mut self, name: &str) {
        self.clock += 1;
        self.used.insert(name.to_string(), self.clock);
    }

    /// Forgets the least recently used statements beyond the bound and returns them, to
    /// be closed on the server (between transactions, when none is in use).
    pub fn excess(&mut self) -> Vec<String> {
        let over = self.used.len().saturating_sub(self.capacity);
        if over == 0 {
            return Vec::new();
        }
        let mut by_age: Vec<(u64, String)> =
            self.used.iter().map(|(n, &t)| (t, n.clone())).collect();
        by_age.sort_unstable();
        let evicted: Vec<String> = by_age.into_iter().take(over).map(|(_, n)| n).collect();
        for name in &evicted {
            self.used.remove(name);
        }
        evicted
    }

    /// Forgets `name` (it was closed, or its Parse failed).
    pub fn remove(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// Forgets everything (the connection was reset with DISCARD ALL).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// How many statements are prepared.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &'static [u8], query: &'static [u8]) -> Parse<'static> {
        Parse {
            name,
            query,
            types: b"\x00\x00",
        }
    }

    #[test]
    fn the_same_sql_gets_the_same_server_name_from_any_client() {
        let (mut a, mut b) = (ClientStatements::default(), ClientStatements::default());
        let one = a.prepare(&parse(b"s1", b"SELECT 1"));
        let other = b.prepare(&parse(b"q", b"SELECT 1"));
        let different = b.prepare(&parse(b"r", b"SELECT 2"));
        assert_eq!(one.server_name, other.server_name);
        assert_ne!(one.server_name, different.server_name);
        assert!(one.server_name.len() < 63, "fits NAMEDATALEN");
        let typed = Parse {
            name: b"t",
            query: b"SELECT 1",
            types: b"\x00\x01\x00\x00\x00\x17",
        };
        assert_ne!(a.prepare(&typed).server_name, one.server_name);
        assert!(a.get(b"s1").is_some());
        assert!(a.close(b"s1").is_some());
        assert!(a.get(b"s1").is_none());
    }

    #[test]
    fn a_server_name_is_the_digest_in_lowercase_hex() {
        let digest = Sha256::new()
            .chain_update(b"SELECT 1")
            .chain_update([0])
            .chain_update(b"\x00\x00")
            .finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(server_name(&parse(b"s1", b"SELECT 1")), format!("sy_{hex}"));
    }

    #[test]
    fn a_server_connection_evicts_the_least_recently_used() {
        let mut set = ServerStatements::new(2);
        set.insert("a");
        set.insert("b");
        assert!(set.touch("a"));
        set.insert("c");
        assert_eq!(set.excess(), vec!["b".to_string()]);
        assert!(set.excess().is_empty());
        assert!(set.touch("a") && set.touch("c") && !set.touch("b"));
        set.remove("a");
        assert_eq!(set.len(), 1);
        set.clear();
        assert!(set.is_empty());
    }
}
