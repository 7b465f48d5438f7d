//! The MySQL dialect of transaction pools (`upstream::tx_pool`): switchyard logs in to a
//! server itself (TLS per sslmode, the pool's user with the client's password) with the
//! capabilities and character set of the clients that share the connection, turns on
//! session tracking ([`session_state::TRACKING`]), and keeps per connection its session
//! state, its last insert id and the statements prepared on it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::flags::capabilities as cap;
use super::login::{Credential, LoginError, LoginOptions, ServerConnection, login};
use super::packet::{CodecError, write_packet};
use super::query::{QueryError, QueryResult, query};
use super::reply::{COM_RESET_CONNECTION, COM_STMT_CLOSE};
use super::session_state::{BASELINE_QUERY, BASELINE_VARIABLES, Baseline, SessionState, TRACKING};
use crate::config::MessageLimits;
use crate::upstream::tx_pool::{self, Dialect};
use crate::upstream::{Pool, Server, Stage, record_failure, server_host};

/// The MySQL dialect.
#[derive(Debug)]
pub struct Mysql;

/// The transaction pools of every (pool, database, user, shape).
pub type TxPools = tx_pool::TxPools<Mysql>;
/// Server connections for one (pool, database, user, shape).
pub type TxPool = tx_pool::TxPool<Mysql>;
/// A logged-in MySQL server connection of a transaction pool.
pub type ServerConn = tx_pool::ServerConn<Mysql>;
/// Why no server connection could be had.
pub type LeaseFailure = tx_pool::LeaseFailure<LoginError>;

/// The capabilities a client's session shares with its server connections, because they
/// change what the server sends or does (affected rows, framing, multi-statements, LOCAL
/// INFILE): clients that differ in them never share a connection.
pub const SHAPE: u32 = cap::FOUND_ROWS
    | cap::NO_SCHEMA
    | cap::ODBC
    | cap::LOCAL_FILES
    | cap::IGNORE_SPACE
    | cap::INTERACTIVE
    | cap::MULTI_STATEMENTS
    | cap::MULTI_RESULTS
    | cap::PS_MULTI_RESULTS
    | cap::DEPRECATE_EOF;

/// The shape of a client's connections: its capabilities in [`SHAPE`] and its character
/// set (which the login sets).
pub fn shape(capabilities: u32, charset: u8) -> u64 {
    u64::from(capabilities & SHAPE) | u64::from(charset) << 32
}

/// Login of a pooled connection: who, and in which shape.
#[derive(Debug, Clone)]
pub struct PooledLogin {
    /// The client's password (proxy-side authentication checked it).
    pub credential: Credential,
    /// The client's connection attributes (the server's processlist shows them).
    pub attributes: Vec<(String, String)>,
}

/// The MySQL side of a pooled server connection.
#[derive(Debug)]
pub struct Link {
    /// The logged-in connection.
    pub conn: ServerConnection<TcpStream>,
    /// Its session state, as changed from a fresh connection's.
    pub state: SessionState,
    /// What its login set (the character set variables).
    pub baseline: Baseline,
    /// The last `AUTO_INCREMENT` value its OKs reported (what `LAST_INSERT_ID()` returns).
    pub last_insert_id: u64,
    /// Statements prepared on it.
    pub statements: ServerStatements,
}

impl Link {
    /// Resets the session (COM_RESET_CONNECTION: transactions rolled back, variables,
    /// temporary tables, locks and prepared statements gone) and turns tracking back on.
    pub async fn reset(&mut self) -> Result<(), QueryError> {
        write_packet(&mut self.conn.stream, 0, &[COM_RESET_CONNECTION])
            .await
            .map_err(CodecError::Io)?;
        let reply = self.conn.reader.read(&mut self.conn.stream).await?;
        if reply.header() != Some(super::ok::OK) {
            return Err(QueryError::Unsupported("COM_RESET_CONNECTION refused"));
        }
        query(&mut self.conn, TRACKING).await?;
        // The default database outlives a reset.
        self.state.variables.clear();
        self.last_insert_id = 0;
        self.statements.clear();
        Ok(())
    }
}

impl Dialect for Mysql {
    type Link = Link;
    type Credential = PooledLogin;
    type LoginError = LoginError;
    const METRICS: &'static str = "mysql";
    type Shared = ();

    async fn login(
        tx_pool: &TxPool,
        pool: &Arc<Pool>,
        server: &Arc<Server>,
        (stream, _peer): (TcpStream, std::net::SocketAddr),
        credential: PooledLogin,
        limits: &MessageLimits,
    ) -> Result<Link, LeaseFailure> {
        let host = server_host(server);
        let options = LoginOptions {
            user: tx_pool.user.clone(),
            credential: credential.credential,
            database: Some(tx_pool.database.clone()).filter(|d| !d.is_empty()),
            capabilities: (cap::LOGIN & !SHAPE) | (tx_pool.shape as u32 & SHAPE),
            attributes: credential.attributes,
            max_packet: limits.message,
            charset: (tx_pool.shape >> 32) as u8,
        };
        let mut conn = match login(stream, pool.tls.as_deref(), &host, false, &options).await {
            Ok(conn) => conn,
            Err(LoginError::Tls { mode, error }) => {
                record_failure(pool, server, Stage::Tls, &error);
                return Err(tx_pool::LeaseFailure::Login(LoginError::Tls {
                    mode,
                    error,
                }));
            }
            Err(error) => return Err(tx_pool::LeaseFailure::Login(error)),
        };
        let capabilities = conn.session.capabilities;
        if capabilities & cap::SESSION_TRACK == 0 {
            return Err(tx_pool::LeaseFailure::Login(LoginError::Unsupported(
                format!(
                    "the server ({}) does not track session state (CLIENT_SESSION_TRACK): transaction pooling needs it",
                    conn.session.server_version
                ),
            )));
        }
        let failed = |error: QueryError| {
            tx_pool::LeaseFailure::Login(LoginError::Unsupported(format!(
                "turning on session tracking: {error}"
            )))
        };
        query(&mut conn, TRACKING).await.map_err(failed)?;
        let mut baseline = Baseline::new();
        if let QueryResult::Rows(rows) = query(&mut conn, BASELINE_QUERY).await.map_err(failed)?
            && let Some(row) = rows.rows.first()
        {
            for (name, value) in BASELINE_VARIABLES.iter().zip(row) {
                baseline.insert(name.to_string(), value.clone().unwrap_or_default());
            }
        }
        conn.reader.keep_lasting();
        Ok(Link {
            conn,
            state: SessionState::logged_in_to(&tx_pool.database),
            baseline,
            last_insert_id: 0,
            statements: ServerStatements::new(pool.database.max_prepared_statements),
        })
    }

    fn socket(link: &mut Link) -> &mut TcpStream {
        match &mut link.conn.stream {
            tokio_util::either::Either::Left(tcp) => tcp,
            tokio_util::either::Either::Right(tls) => tls.get_mut().0,
        }
    }

    fn clean(link: &Link) -> bool {
        !link.conn.reader.has_partial()
    }

    fn set_limit(link: &mut Link, limit: usize) {
        link.conn.reader.set_limit(limit);
    }
}

/// A statement prepared on a server connection.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Its id on the server.
    pub id: u32,
    /// The server's reply to the prepare, framed (the first packet carries the id): a
    /// client preparing the same text is answered with it, under its own id.
    pub reply: Bytes,
    last_used: u64,
}

/// The statements prepared on one server connection, by text, at most `cap` of them: one
/// server statement per distinct text whoever prepared it, the least recently used closed
/// beyond the cap.
#[derive(Debug)]
pub struct ServerStatements {
    by_text: HashMap<Bytes, Prepared>,
    cap: usize,
    clock: u64,
    /// Server ids evicted and not yet closed on the server (COM_STMT_CLOSE has no reply,
    /// so they are sent ahead of the next command).
    closing: Vec<u32>,
}

impl ServerStatements {
    /// Room for `cap` statements.
    pub fn new(cap: usize) -> Self {
        Self {
            by_text: HashMap::new(),
            cap: cap.max(1),
            clock: 0,
            closing: Vec::new(),
        }
    }

    /// The statement prepared for `text`, marked used.
    pub fn get(&mut self, text: &[u8]) -> Option<&Prepared> {
        self.clock += 1;
        let clock = self.clock;
        let prepared = self.by_text.get_mut(text)?;
        prepared.last_used = clock;
        Some(prepared)
    }

    /// Records a statement the server prepared; the least recently used one goes beyond
    /// the cap (to be closed, see [`ServerStatements::take_closing`]).
    pub fn insert(&mut self, text: Bytes, id: u32, reply: Bytes) {
        self.clock += 1;
        while self.by_text.len() >= self.cap {
            let Some(oldest) = self
                .by_text
                .iter()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(text, _)| text.clone())
            else {
                break;
            };
            if let Some(evicted) = self.by_text.remove(&oldest) {
                self.closing.push(evicted.id);
            }
        }
        let prepared = Prepared {
            id,
            reply,
            last_used: self.clock,
        };
        if let Some(replaced) = self.by_text.insert(text, prepared) {
            self.closing.push(replaced.id);
        }
    }

    /// COM_STMT_CLOSE packets for the statements evicted since the last call.
    pub fn take_closing(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for id in self.closing.drain(..) {
            let mut payload = vec![COM_STMT_CLOSE];
            payload.extend_from_slice(&id.to_le_bytes());
            super::packet::encode_packet(0, &payload, &mut out);
        }
        out
    }

    /// Forgets every statement (the session was reset: the server closed them).
    pub fn clear(&mut self) {
        self.by_text.clear();
        self.closing.clear();
    }

    /// Statements prepared now.
    pub fn len(&self) -> usize {
        self.by_text.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_text.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_capped_least_recently_used_first() {
        let mut statements = ServerStatements::new(2);
        statements.insert(Bytes::from_static(b"a"), 1, Bytes::new());
        statements.insert(Bytes::from_static(b"b"), 2, Bytes::new());
        assert_eq!(statements.get(b"a").map(|p| p.id), Some(1));
        statements.insert(Bytes::from_static(b"c"), 3, Bytes::new());
        assert_eq!(statements.len(), 2);
        assert!(statements.get(b"b").is_none(), "b was least recently used");
        let closing = statements.take_closing();
        assert_eq!(closing, [5, 0, 0, 0, COM_STMT_CLOSE, 2, 0, 0, 0]);
        assert!(statements.take_closing().is_empty());
    }

    #[test]
    fn shape_keeps_framing_capabilities_and_charset() {
        let a = shape(cap::PROXY, 45);
        let b = shape(cap::PROXY & !cap::DEPRECATE_EOF, 45);
        assert_ne!(a, b);
        assert_ne!(a, shape(cap::PROXY, 33));
        assert_eq!(a, shape(cap::PROXY | cap::SSL, 45), "TLS is per client");
    }
}
