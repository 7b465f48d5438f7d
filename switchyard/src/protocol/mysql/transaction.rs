//! Transaction mode for MySQL and MariaDB: a client holds a server connection from its
//! first command until the server's status flags (`SERVER_STATUS_IN_TRANS` of the last OK
//! or EOF) say no transaction is open; between transactions it holds none, and waits for
//! its next command reading into no buffer of its own.
//!
//! No session state crosses clients (`docs/architecture.md`, "The pooling invariant"):
//! - variables and the default database come from the server's session tracking
//!   ([`session_state`]) and are replayed on a connection whose state differs before the
//!   client's command runs; a change the server reports without naming it (a user
//!   variable, a temporary table, a named lock) pins the client to its connection, as do
//!   a cursor, COM_SET_OPTION and statements the classifier knows to pin;
//! - a connection a client leaves pinned, or in a transaction, is reset
//!   (COM_RESET_CONNECTION, tracking back on) before anyone else uses it, and closed when
//!   that fails;
//! - prepared statements of the binary protocol are the client's, by its own ids: each
//!   server connection prepares a text once (on demand, the reply cached and replayed to
//!   the next client preparing it), at most `max_prepared_statements` per connection, and
//!   COM_STMT_EXECUTE is rewritten with the connection's id and the client's parameter
//!   types (which the server keeps per statement, so another client's would otherwise be
//!   used); COM_STMT_SEND_LONG_DATA keeps the connection until the statement runs;
//! - `LAST_INSERT_ID()` answers the client's own last insert: before a command that reads
//!   it on a connection whose last insert id differs, `DO LAST_INSERT_ID(n)` sets it.
//!
//! `KILL [QUERY] <id>` works as in session mode while the target session holds a
//! connection (a query of it is running): its proxy connection id points at that
//! connection's thread from lease to release.
//!
//! Not supported in this mode (an ERR, the session goes on): COM_CHANGE_USER.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::classify::{
    Classification, SessionChange, SessionFunction, SessionQuery, classify_bytes,
    simple_session_query,
};
use super::err::ErrPacket;
use super::errors::{ClientLibrary, ProxyError};
use super::flags::{capabilities as cap, status};
use super::kill::{KillTable, Registration, rewrite_kill};
use super::local_result;
use super::ok::{OK, OkPacket};
use super::packet::{CodecError, Packet, PacketReader, encode_packet, packet};
use super::pooler::{LeaseFailure, Link, Mysql, ServerConn};
use super::query::{COM_QUERY, COM_QUIT, query};
use super::reply::{self, PrepareOk, Reply, Shape};
use super::session_state::SessionState;
use super::split;
use crate::config::MessageLimits;
use crate::observe::{ConnectionRecord, Termination};
use crate::protocol::ClientStream;
use crate::protocol::split::{SplitState, Target};
use crate::upstream::RoleFilter;
use crate::upstream::tx_pool::Member;

/// A pooled client after its login.
pub struct PooledClient<'a> {
    /// The client's stream.
    pub stream: ClientStream,
    /// What was read from it and not yet taken.
    pub reader: PacketReader,
    /// The capabilities the client and the proxy agreed on.
    pub capabilities: u32,
    /// Its membership of the (pool, database, user, shape) transaction pool.
    pub member: Member<Mysql>,
    /// Its address (for balancing).
    pub address: SocketAddr,
    /// The servers its transactions may run on (the listener's role).
    pub accept: RoleFilter,
    /// Message limits.
    pub limits: &'a MessageLimits,
    /// Idle time allowed between commands (zero: no limit).
    pub idle: Duration,
    /// Fires at hard shutdown (this worker's token: see `Context::hard_stop_here`).
    pub hard_stop: CancellationToken,
    /// The client's library, for error numbers.
    pub library: ClientLibrary,
    /// Proxy connection ids of live sessions, for `KILL`.
    pub kills: Arc<KillTable>,
    /// The client's connection id (the proxy's greeting gave it).
    pub connection_id: u32,
    /// The read/write split, when the pool has it on: `sticky_after_write`.
    pub split: Option<Option<Duration>>,
}

/// A statement the client prepared, by the client's id.
#[derive(Debug)]
struct ClientStatement {
    text: Bytes,
    /// What its text does, classified once at prepare (shared with each execute).
    class: Arc<Classification>,
    params: u16,
    /// The parameter types of the client's last execute that sent them.
    types: Option<Bytes>,
}

/// The client's side of the session.
struct Session<'a> {
    client: PooledClient<'a>,
    state: SessionState,
    last_insert_id: u64,
    /// The status flags of the last OK or EOF the client got.
    status: u16,
    statements: HashMap<u32, ClientStatement>,
    next_statement: u32,
    /// The session stays on its connection for the rest of its life.
    pinned: bool,
    /// The server connection while one is held; boxed, so that an idle client's session
    /// does not keep room for one (1.5 KB) between transactions.
    held: Option<Box<Held>>,
    /// The read/write split's state and `sticky_after_write`, when the pool splits.
    split: Option<(SplitState, Option<Duration>)>,
    /// What `ROW_COUNT()` returns after the client's last statement.
    row_count: i64,
    /// What `FOUND_ROWS()` returns after it.
    found_rows: u64,
    /// A `SET TRANSACTION …` for the client's next transaction, run before its next
    /// statement on whichever connection runs it.
    next_transaction: Option<String>,
    to_server: u64,
    to_client: u64,
}

/// A server connection the client holds.
struct Held {
    conn: ServerConn,
    /// Something ran that may have changed the session unseen: reset before reuse.
    untracked: bool,
    /// COM_STMT_SEND_LONG_DATA was sent: the data waits on this connection.
    long_data: bool,
    /// The client's connection id points at this connection's thread while it is held,
    /// so that a `KILL QUERY` of it from another session reaches the running query.
    _kill: Registration,
}

/// Why a command could not be completed.
enum Broken {
    /// The client is gone or sent something that is not the protocol.
    Client(Termination),
    /// The server connection failed mid-command.
    Server(String),
}

impl From<std::io::Error> for Broken {
    fn from(_: std::io::Error) -> Self {
        Broken::Client(Termination::ClientClosed)
    }
}

/// What a command's reply held.
#[derive(Debug, Default)]
struct Replied {
    failed: bool,
    prepared: Option<PrepareOk>,
    /// The last result was a result set, of `rows` rows.
    result_set: bool,
    rows: u64,
    /// The last OK's affected rows.
    affected: i64,
}

/// Serves a pooled client to the end of its session. The session is made before the
/// future, which takes it whole: an `async fn` would keep its argument, the client, beside
/// the session that holds it, for the client's life.
pub fn serve<'a>(
    client: PooledClient<'a>,
    record: &'a mut ConnectionRecord,
) -> impl Future<Output = Termination> + Send + 'a {
    let database = client.member.pool().database.clone();
    let split = client.split.map(|sticky| (SplitState::new(), sticky));
    let mut session = Session {
        client,
        state: SessionState::logged_in_to(&database),
        last_insert_id: 0,
        status: status::AUTOCOMMIT,
        statements: HashMap::new(),
        next_statement: 1,
        pinned: false,
        held: None,
        split,
        row_count: -1,
        found_rows: 0,
        next_transaction: None,
        to_server: 0,
        to_client: 0,
    };
    async move {
        let end = session.run(record).await;
        // Boxed: it runs once, and its future would otherwise widen the one kept while
        // the client idles.
        Box::pin(session.leave()).await;
        record.bytes_in += session.to_server;
        record.bytes_out += session.to_client;
        end
    }
}

impl Session<'_> {
    async fn run(&mut self, record: &mut ConnectionRecord) -> Termination {
        loop {
            let command = match self.next_command().await {
                Ok(command) => command,
                Err(end) => return end,
            };
            let Some(&kind) = command.payload.first() else {
                return self.malformed("an empty command").await;
            };
            if kind == COM_QUIT {
                return Termination::ClientClosed;
            }
            // Boxed: this future is kept for the client's life, and would otherwise be as
            // large as the largest command's (about 20 KB) while the client idles.
            match Box::pin(self.command(kind, command.payload, record)).await {
                Ok(()) => {}
                Err(Broken::Client(end)) => return end,
                Err(Broken::Server(why)) => {
                    tracing::warn!(why, "server connection lost in a pooled session");
                    if let Some(held) = self.held.take() {
                        self.client.member.pool().discard(held.conn);
                    }
                    let error = ProxyError::CantConnect {
                        library: self.client.library,
                        on: self.client.member.pool().pool.clone(),
                        reason: format!("lost the server: {why}"),
                    };
                    let _ = self.client.stream.write_all(&error.packet(1)).await;
                    return if self.status & status::IN_TRANS != 0 || self.pinned {
                        Termination::ServerLostInTransaction
                    } else {
                        Termination::ServerLost
                    };
                }
            }
        }
    }

    /// Serves one command other than COM_QUIT, then gives the connection back if the
    /// session is between transactions.
    async fn command(
        &mut self,
        kind: u8,
        payload: Bytes,
        record: &mut ConnectionRecord,
    ) -> Result<(), Broken> {
        match kind {
            reply::COM_PING if self.held.is_none() => self.answer_ok().await,
            reply::COM_CHANGE_USER => {
                let message = "COM_CHANGE_USER is not supported by a transaction pool; reconnect as the other user";
                self.answer_err(1047, "08S01", message).await
            }
            reply::COM_STMT_CLOSE => {
                if let Some(id) = statement_id(&payload) {
                    self.statements.remove(&id);
                }
                Ok(())
            }
            reply::COM_RESET_CONNECTION => self.reset_session().await,
            reply::COM_STMT_PREPARE => self.prepare(payload, record).await,
            reply::COM_STMT_EXECUTE
            | reply::COM_STMT_SEND_LONG_DATA
            | reply::COM_STMT_RESET
            | reply::COM_STMT_FETCH => self.statement(payload, record).await,
            _ => {
                if kind == reply::COM_SET_OPTION {
                    self.pinned = true;
                }
                self.plain(payload, record).await
            }
        }?;
        self.release_if_idle().await;
        Ok(())
    }

    /// The client's next command; waits holding no buffer when no connection is held.
    async fn next_command(&mut self) -> Result<Packet, Termination> {
        let client = &mut self.client;
        loop {
            match client.reader.next_packet() {
                Ok(Some(packet)) => return Ok(packet),
                Ok(None) => {}
                Err(CodecError::Io(_)) => return Err(Termination::ClientClosed),
                Err(error) => {
                    let error = ProxyError::MalformedPacket(error.to_string());
                    let _ = client.stream.write_all(&error.packet(1)).await;
                    return Err(Termination::BadMessage);
                }
            }
            // One poll function for the read, the idle limit and the hard stop: a `select!`
            // over their futures was most of the future an idle pooled client keeps.
            let idle = client.idle;
            let mut timeout = std::pin::pin!(
                Instant::now()
                    .checked_add(idle)
                    .filter(|_| !idle.is_zero())
                    .map(tokio::time::sleep_until)
            );
            let mut hard_stop = std::pin::pin!(client.hard_stop.cancelled());
            let (reader, stream) = (&mut client.reader, &mut client.stream);
            let read = std::future::poll_fn(|cx| {
                if hard_stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(Termination::Shutdown));
                }
                if let Some(timeout) = timeout.as_mut().as_pin_mut()
                    && timeout.poll(cx).is_ready()
                {
                    return Poll::Ready(Err(Termination::ClientTimeout));
                }
                reader.poll_fill_idle(cx, stream, &mut || {}).map(Ok)
            })
            .await?;
            if !matches!(read, Ok(n) if n > 0) {
                return Err(Termination::ClientClosed);
            }
        }
    }

    async fn malformed(&mut self, what: &str) -> Termination {
        let error = ProxyError::MalformedPacket(what.to_string());
        let _ = self.client.stream.write_all(&error.packet(1)).await;
        Termination::BadMessage
    }

    /// Gives the connection back when the session is between transactions and holds
    /// nothing on it; one that ran something unseen is reset first.
    async fn release_if_idle(&mut self) {
        let Some(held) = &self.held else {
            return;
        };
        if self.pinned || held.long_data || self.status & status::IN_TRANS != 0 {
            return;
        }
        if let Some(held) = self.held.take() {
            let pool = self.client.member.pool();
            pool.stats
                .queries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let reset = held.untracked;
            self.put_back(held, reset).await;
        }
    }

    /// The end of the session: a connection still held is reset (a transaction rolled
    /// back, pinned state dropped) before it goes back.
    async fn leave(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let dirty =
            self.pinned || held.untracked || held.long_data || self.status & status::IN_TRANS != 0;
        self.put_back(held, dirty).await;
    }

    /// Gives `held`'s connection back to the pool, reset first when `reset`; one whose
    /// reset fails is closed, never reused.
    async fn put_back(&self, mut held: Box<Held>, reset: bool) {
        let pool = self.client.member.pool();
        if reset && held.conn.link.reset().await.is_err() {
            pool.discard(held.conn);
            return;
        }
        pool.give_back(held.conn);
    }

    /// COM_RESET_CONNECTION: the client's state is dropped (and the held connection's).
    async fn reset_session(&mut self) -> Result<(), Broken> {
        let database = self.client.member.pool().database.clone();
        self.state = SessionState::logged_in_to(&database);
        self.statements.clear();
        self.last_insert_id = 0;
        self.pinned = false;
        self.status = status::AUTOCOMMIT;
        if let Some(held) = self.held.take() {
            self.put_back(held, true).await;
        }
        self.answer_ok().await
    }

    /// Answers the command with an OK of the session's status.
    async fn answer_ok(&mut self) -> Result<(), Broken> {
        let ok = OkPacket {
            status: self.status & (status::AUTOCOMMIT | status::IN_TRANS),
            ..OkPacket::default()
        };
        let framed = packet(1, &ok.encode(OK, self.client.capabilities));
        self.write_client(&framed).await
    }

    /// Answers the command with an ERR.
    async fn answer_err(&mut self, code: u16, sqlstate: &str, message: &str) -> Result<(), Broken> {
        let err = ErrPacket {
            code,
            sqlstate: sqlstate.to_string(),
            message: message.to_string(),
        };
        let framed = packet(1, &err.encode());
        self.write_client(&framed).await
    }

    async fn write_client(&mut self, bytes: &[u8]) -> Result<(), Broken> {
        self.to_client += bytes.len() as u64;
        crate::net::send_all(&mut self.client.stream, bytes).await?;
        Ok(())
    }

    /// A connection of the split's `target` role (a replica target falls back to the
    /// primary while no replica is available), else of the listener's role.
    async fn lease(&self, target: Option<Target>) -> Result<ServerConn, LeaseFailure> {
        let client = &self.client;
        let role = target.map(Target::role);
        let pool = client.member.pool();
        pool.lease_for_role(client.address, client.accept, role, client.limits)
            .await
    }

    /// A server connection for the session's next command, in the session's state.
    /// `Ok(false)`: none could be had, and the client was told why.
    async fn hold(
        &mut self,
        record: &mut ConnectionRecord,
        class: &Classification,
    ) -> Result<bool, Broken> {
        if self.held.is_some() {
            return Ok(true);
        }
        let target = self
            .split
            .as_mut()
            .map(|(split, sticky)| split.target(class, std::time::Instant::now(), *sticky));
        let pool = self.client.member.pool().clone();
        // A connection that has a default database cannot serve a session that has
        // none: it is closed, and its place opens a new one; after as many closings as
        // the pool had connections, the client is told the pool is full.
        let mut closings_left = None;
        loop {
            let leased = self.lease(target).await;
            let mut conn = match leased {
                Ok(conn) => conn,
                Err(failure) => {
                    let error = lease_error(failure, self.client.library, &pool.pool);
                    tracing::debug!(pool = %pool.pool, error = %error.message, "no server connection for a pooled client");
                    self.write_client(&packet(1, &error.encode())).await?;
                    return Ok(false);
                }
            };
            match sync_state(&mut conn.link, &self.state).await {
                Ok(()) => {
                    record.server = Some(conn.server.name.as_str().into());
                    let thread = conn.link.conn.session.connection_id;
                    let kill = (self.client.kills).register(
                        self.client.connection_id,
                        &conn.server,
                        thread,
                    );
                    self.held = Some(Box::new(Held {
                        conn,
                        untracked: false,
                        long_data: false,
                        _kill: kill,
                    }));
                    return Ok(true);
                }
                Err(Unsynced::NeedsFresh) => {
                    pool.discard(conn);
                    let left = closings_left.get_or_insert_with(|| pool.connections());
                    if *left == 0 {
                        break;
                    }
                    *left -= 1;
                }
                Err(Unsynced::Failed(error)) => {
                    tracing::warn!(server = %conn.server.name, %error, "could not give a server connection the client's session state; closing it");
                    pool.discard(conn);
                    let err = ErrPacket {
                        code: super::errors::ER_UNKNOWN_ERROR,
                        sqlstate: "HY000".into(),
                        message: format!(
                            "switchyard could not restore the session's state: {error}"
                        ),
                    };
                    self.write_client(&packet(1, &err.encode())).await?;
                    return Ok(false);
                }
            }
        }
        let err = ProxyError::TooManyConnections.to_err();
        self.write_client(&packet(1, &err.encode())).await?;
        Ok(false)
    }

    /// A command relayed as is (COM_QUERY, COM_INIT_DB, COM_PING, COM_FIELD_LIST...); a
    /// COM_QUERY classified first: `SET switchyard.route` and `SELECT ROW_COUNT()` (and
    /// the like) between transactions are answered by the proxy.
    async fn plain(&mut self, payload: Bytes, record: &mut ConnectionRecord) -> Result<(), Broken> {
        let classified;
        let class = match payload[0] {
            COM_QUERY => {
                classified = classify_bytes(&payload[1..]);
                &classified
            }
            reply::COM_PING
            | reply::COM_INIT_DB
            | reply::COM_FIELD_LIST
            | reply::COM_STATISTICS => split::read_command(),
            _ => split::unknown_command(),
        };
        if payload[0] == COM_QUERY {
            if let Some(answered) = self.answer_route(class).await {
                return answered;
            }
            if self.held.is_none()
                && let Some(asked) = std::str::from_utf8(&payload[1..])
                    .ok()
                    .and_then(simple_session_query)
            {
                return self.answer_session_query(&asked).await;
            }
        }
        self.pinned |= class.pins.is_some();
        if !self.hold(record, class).await? {
            return Ok(());
        }
        self.before_statement(class).await?;
        let shape = Shape::of(payload[0]);
        let killing = match &self.held {
            Some(held) => rewrite_kill(&self.client.kills, &held.conn.server, &payload),
            None => None,
        };
        let replied = match killing {
            Some(rewritten) => self.exchange(&rewritten, shape, None).await?,
            None => self.exchange(&payload, shape, None).await?,
        };
        self.after_statement(class, &replied);
        Ok(())
    }

    /// `SET switchyard.route = …`, answered by the proxy (OK, or ERR 1231 for a value it
    /// does not know); `None` for any other statement.
    async fn answer_route(&mut self, class: &Classification) -> Option<Result<(), Broken>> {
        let change = class.session.iter().find_map(|change| match change {
            SessionChange::Route(_) | SessionChange::BadRoute(_) => Some(change.clone()),
            _ => None,
        })?;
        Some(match change {
            SessionChange::BadRoute(value) => {
                let message = format!(
                    "Variable 'switchyard.route' can't be set to the value of '{value}' (primary, replica or auto)"
                );
                self.answer_err(1231, "42000", &message).await
            }
            _ => {
                let in_transaction = self.status & status::IN_TRANS != 0;
                if let Some((split, _)) = &mut self.split {
                    split.after(class, in_transaction, std::time::Instant::now());
                }
                self.answer_ok().await
            }
        })
    }

    /// `SELECT LAST_INSERT_ID()`, `ROW_COUNT()` or `FOUND_ROWS()` alone, answered from the
    /// client's own last statement: the connection that ran it may since have run someone
    /// else's.
    async fn answer_session_query(&mut self, asked: &SessionQuery) -> Result<(), Broken> {
        let value = match asked.function {
            SessionFunction::LastInsertId => i64::try_from(self.last_insert_id).unwrap_or(i64::MAX),
            SessionFunction::RowCount => self.row_count,
            SessionFunction::FoundRows => i64::try_from(self.found_rows).unwrap_or(i64::MAX),
        };
        let status = self.status & (status::AUTOCOMMIT | status::IN_TRANS);
        let framed =
            local_result::single_integer(&asked.column, value, self.client.capabilities, status);
        self.row_count = -1;
        self.write_client(&framed).await
    }

    /// What runs on the held connection before the client's statement: a pending
    /// `SET TRANSACTION`, and the client's `LAST_INSERT_ID()` when the statement reads it.
    async fn before_statement(&mut self, class: &Classification) -> Result<(), Broken> {
        if let Some(next) = self.next_transaction.take()
            && let Some(held) = &mut self.held
        {
            query(&mut held.conn.link.conn, &next)
                .await
                .map_err(|e| Broken::Server(e.to_string()))?;
        }
        if class.session_functions.last_insert_id {
            self.carry_last_insert_id().await?;
        }
        Ok(())
    }

    /// Notes what the client's statement did: the split's state, what must be reset, a
    /// `SET TRANSACTION` to carry, `ROW_COUNT()` and `FOUND_ROWS()`.
    fn after_statement(&mut self, class: &Classification, replied: &Replied) {
        let in_transaction = self.status & status::IN_TRANS != 0;
        if let Some((split, _)) = &mut self.split {
            split.after(class, in_transaction, std::time::Instant::now());
        }
        if let Some(held) = &mut self.held {
            held.untracked |= class.untracked;
        }
        if let Some(next) = &class.next_transaction {
            self.next_transaction = Some(next.clone());
        }
        if !replied.failed {
            if replied.result_set {
                self.row_count = -1;
                self.found_rows = replied.rows;
            } else {
                self.row_count = replied.affected;
            }
        }
    }

    /// Sets the held connection's `LAST_INSERT_ID()` to the client's.
    async fn carry_last_insert_id(&mut self) -> Result<(), Broken> {
        let wanted = self.last_insert_id;
        let Some(held) = &mut self.held else {
            return Ok(());
        };
        if held.conn.link.last_insert_id == wanted {
            return Ok(());
        }
        let sql = format!("DO LAST_INSERT_ID({wanted})");
        query(&mut held.conn.link.conn, &sql)
            .await
            .map_err(|e| Broken::Server(e.to_string()))?;
        held.conn.link.last_insert_id = wanted;
        Ok(())
    }

    /// COM_STMT_PREPARE: answered from the held connection's statement of the same text
    /// when it has one, else prepared there; either way under a new id of the client's.
    async fn prepare(
        &mut self,
        payload: Bytes,
        record: &mut ConnectionRecord,
    ) -> Result<(), Broken> {
        // Preparing runs nothing: any connection the session's reads may use will do.
        if !self.hold(record, split::read_command()).await? {
            return Ok(());
        }
        let text = payload.slice(1..);
        let id = self.next_statement;
        let Some(held) = &mut self.held else {
            return Ok(());
        };
        let cached = held
            .conn
            .link
            .statements
            .get(&text)
            .map(|p| p.reply.clone());
        let (prepared, framed) = match cached {
            Some(reply) => {
                let ok = first_payload(&reply).and_then(|p| PrepareOk::parse(p).ok());
                (ok, reply.to_vec())
            }
            None => {
                let mut captured = Vec::new();
                let replied = self
                    .exchange(&payload, Shape::Prepare, Some(&mut captured))
                    .await?;
                if let (Some(ok), Some(held)) = (replied.prepared, &mut self.held) {
                    held.conn.link.statements.insert(
                        text.clone(),
                        ok.statement,
                        Bytes::from(captured),
                    );
                }
                (replied.prepared, Vec::new())
            }
        };
        let Some(ok) = prepared else {
            return Ok(());
        };
        self.next_statement = self.next_statement.wrapping_add(1).max(1);
        self.statements.insert(
            id,
            ClientStatement {
                class: Arc::new(classify_bytes(&text)),
                text,
                params: ok.params,
                types: None,
            },
        );
        if !framed.is_empty() {
            let mut framed = framed;
            set_statement_id(&mut framed, id);
            self.write_client(&framed).await?;
        }
        Ok(())
    }

    /// COM_STMT_EXECUTE, _SEND_LONG_DATA, _RESET and _FETCH: the client's statement,
    /// prepared on the held connection when it is not yet, its id rewritten.
    async fn statement(
        &mut self,
        payload: Bytes,
        record: &mut ConnectionRecord,
    ) -> Result<(), Broken> {
        let kind = payload[0];
        let Some(id) = statement_id(&payload) else {
            return Err(Broken::Client(
                self.malformed("a statement command without id").await,
            ));
        };
        if !self.statements.contains_key(&id) {
            let message = format!("Unknown prepared statement handler ({id}) given to switchyard");
            return self.answer_err(1243, "HY000", &message).await;
        }
        if kind == reply::COM_STMT_RESET && self.held.as_ref().is_none_or(|h| !h.long_data) {
            // Nothing of the statement waits on any connection.
            return self.answer_ok().await;
        }
        if kind == reply::COM_STMT_FETCH && !self.pinned {
            return self
                .answer_err(1421, "HY000", "The statement has no open cursor")
                .await;
        }
        let executed = match self.statements.get(&id) {
            Some(statement) if kind == reply::COM_STMT_EXECUTE => Some(statement.class.clone()),
            _ => None,
        };
        let class = executed.as_deref().unwrap_or(split::read_command());
        if kind == reply::COM_STMT_EXECUTE {
            self.pinned |= class.pins.is_some();
        }
        if !self.hold(record, class).await? {
            return Ok(());
        }
        let Some(server_id) = self.prepared_on_held(id).await? else {
            return Ok(());
        };
        let Some(statement) = self.statements.get_mut(&id) else {
            return Ok(());
        };
        let rewritten = match kind {
            reply::COM_STMT_EXECUTE => match rewrite_execute(&payload, server_id, statement) {
                Some(rewritten) => rewritten,
                None => {
                    return Err(Broken::Client(
                        self.malformed("a short COM_STMT_EXECUTE").await,
                    ));
                }
            },
            _ => {
                let mut rewritten = payload.to_vec();
                rewritten[1..5].copy_from_slice(&server_id.to_le_bytes());
                rewritten
            }
        };
        if kind == reply::COM_STMT_EXECUTE {
            // A cursor lives on the connection; its rows come with COM_STMT_FETCH.
            if payload.get(5).is_some_and(|flags| flags & 0x07 != 0) {
                self.pinned = true;
            }
            self.before_statement(class).await?;
        }
        if let Some(held) = &mut self.held {
            match kind {
                reply::COM_STMT_SEND_LONG_DATA => held.long_data = true,
                reply::COM_STMT_EXECUTE | reply::COM_STMT_RESET => held.long_data = false,
                _ => {}
            }
        }
        let replied = self.exchange(&rewritten, Shape::of(kind), None).await?;
        if kind == reply::COM_STMT_EXECUTE {
            self.after_statement(class, &replied);
        }
        Ok(())
    }

    /// The held connection's id for the client's statement `id`, preparing it there first
    /// when needed; `None` when the server refused (the client was told).
    async fn prepared_on_held(&mut self, id: u32) -> Result<Option<u32>, Broken> {
        let Some(statement) = self.statements.get(&id) else {
            return Ok(None);
        };
        let text = statement.text.clone();
        let Some(held) = &mut self.held else {
            return Ok(None);
        };
        if let Some(prepared) = held.conn.link.statements.get(&text) {
            return Ok(Some(prepared.id));
        }
        let mut command = Vec::with_capacity(text.len() + 1);
        command.push(reply::COM_STMT_PREPARE);
        command.extend_from_slice(&text);
        let link = &mut held.conn.link;
        let mut out = link.statements.take_closing();
        encode_packet(0, &command, &mut out);
        crate::net::send_all(&mut link.conn.stream, &out)
            .await
            .map_err(|e| Broken::Server(e.to_string()))?;
        let mut reply = Reply::new(Shape::Prepare, link.conn.session.capabilities);
        let mut captured = Vec::new();
        let mut prepared = None;
        let mut error = None;
        while !reply.done() {
            let packet = link
                .conn
                .reader
                .read(&mut link.conn.stream)
                .await
                .map_err(|e| Broken::Server(e.to_string()))?;
            match reply
                .feed(&packet.payload)
                .map_err(|e| Broken::Server(e.to_string()))?
            {
                reply::Packet::Prepared(ok) => prepared = Some(ok),
                reply::Packet::Err => error = Some(packet.payload.clone()),
                _ => {}
            }
            encode_packet(packet.sequence, &packet.payload, &mut captured);
        }
        match (prepared, error) {
            (Some(ok), _) => {
                link.statements
                    .insert(text, ok.statement, Bytes::from(captured));
                Ok(Some(ok.statement))
            }
            (None, Some(err)) => {
                self.write_client(&packet(1, &err)).await?;
                Ok(None)
            }
            (None, None) => Err(Broken::Server("no reply to a prepare".into())),
        }
    }

    /// Sends `command` on the held connection and relays the reply to the client,
    /// noting status flags and session changes on the way (a copy of what was relayed
    /// goes to `captured`).
    async fn exchange(
        &mut self,
        command: &[u8],
        shape: Shape,
        mut captured: Option<&mut Vec<u8>>,
    ) -> Result<Replied, Broken> {
        let client_caps = self.client.capabilities;
        let rename = (shape == Shape::Prepare).then_some(self.next_statement);
        let Some(held) = &mut self.held else {
            return Ok(Replied::default());
        };
        let link = &mut held.conn.link;
        let mut out = link.statements.take_closing();
        encode_packet(0, command, &mut out);
        self.to_server += command.len() as u64 + 4;
        crate::net::send_all(&mut link.conn.stream, &out)
            .await
            .map_err(|e| Broken::Server(e.to_string()))?;
        out.clear();
        let mut reply = Reply::new(shape, link.conn.session.capabilities);
        let mut replied = Replied::default();
        if reply.done() {
            return Ok(replied);
        }
        let lost = |e: &dyn std::fmt::Display| Broken::Server(e.to_string());
        loop {
            while let Some(packet) = link.conn.reader.next_packet().map_err(|e| lost(&e))? {
                let fed = reply.feed(&packet.payload).map_err(|e| lost(&e))?;
                let mut payload = packet.payload;
                let mut relayed = None;
                match fed {
                    reply::Packet::Ok(ok) => {
                        self.status = ok.status;
                        replied.affected = i64::try_from(ok.affected_rows).unwrap_or(i64::MAX);
                        if ok.last_insert_id != 0 {
                            self.last_insert_id = ok.last_insert_id;
                            link.last_insert_id = ok.last_insert_id;
                        }
                        if !ok.session_state.is_empty() {
                            let noted = self.state.note(&ok.session_state).map_err(|e| lost(&e))?;
                            link.state.note(&ok.session_state).map_err(|e| lost(&e))?;
                            self.pinned |= noted.unexplained;
                        }
                        if client_caps & cap::SESSION_TRACK == 0 {
                            payload = Bytes::from(ok.encode(payload[0], client_caps));
                        }
                    }
                    reply::Packet::Eof(eof) => {
                        self.status = eof.status;
                        // An EOF cannot say what changed: the session stays put.
                        self.pinned |= eof.status & status::SESSION_STATE_CHANGED != 0;
                    }
                    reply::Packet::Err => {
                        replied.failed = true;
                        if self.status & status::AUTOCOMMIT == 0 {
                            // A failed statement may have opened a transaction.
                            self.status |= status::IN_TRANS;
                        }
                    }
                    reply::Packet::Prepared(ok) => {
                        replied.prepared = Some(ok);
                        if let Some(id) = rename {
                            // The cache keeps the server's id; the client gets its own.
                            if let Some(captured) = captured.as_deref_mut() {
                                encode_packet(packet.sequence, &payload, captured);
                            }
                            let mut renamed = payload.to_vec();
                            renamed[1..5].copy_from_slice(&id.to_le_bytes());
                            relayed = Some(Bytes::from(renamed));
                        }
                    }
                    reply::Packet::LocalInfile => {
                        encode_packet(packet.sequence, &payload, &mut out);
                        self.to_client += out.len() as u64;
                        crate::net::send_all(&mut self.client.stream, &out).await?;
                        out.clear();
                        let sent = relay_local_infile(&mut self.client, link).await?;
                        self.to_server += sent;
                        continue;
                    }
                    reply::Packet::Data => {}
                }
                match relayed.take() {
                    Some(renamed) => {
                        encode_packet(packet.sequence, &renamed, &mut out);
                    }
                    None => {
                        if let Some(captured) = captured.as_deref_mut() {
                            encode_packet(packet.sequence, &payload, captured);
                        }
                        encode_packet(packet.sequence, &payload, &mut out);
                    }
                }
                if reply.done() {
                    replied.result_set = reply.result_set();
                    replied.rows = reply.rows();
                    self.to_client += out.len() as u64;
                    crate::net::send_all(&mut self.client.stream, &out).await?;
                    return Ok(replied);
                }
            }
            if !out.is_empty() {
                self.to_client += out.len() as u64;
                crate::net::send_all(&mut self.client.stream, &out).await?;
                out.clear();
            }
            let read = link.conn.reader.fill(&mut link.conn.stream);
            tokio::select! {
                read = read => match read {
                    Ok(0) => return Err(Broken::Server("the server closed the connection".into())),
                    Ok(_) => {}
                    Err(e) => return Err(lost(&e)),
                },
                () = held.conn.cut.cancelled() => return Err(Broken::Server("server taken out of service".into())),
                () = self.client.hard_stop.cancelled() => return Err(Broken::Client(Termination::Shutdown)),
            }
        }
    }
}

/// The error a client gets for a failed lease.
fn lease_error(failure: LeaseFailure, library: ClientLibrary, pool: &str) -> ErrPacket {
    let cant_connect = |reason: String| ProxyError::CantConnect {
        library,
        on: pool.to_string(),
        reason,
    };
    match failure {
        LeaseFailure::QueueTimeout => ProxyError::TooManyConnections.to_err(),
        LeaseFailure::NoServer => cant_connect("no server available".into()).to_err(),
        LeaseFailure::Connect(error) => cant_connect(error.to_string()).to_err(),
        LeaseFailure::Login(error) => error.to_client(library, pool),
    }
}

/// Relays the file a LOCAL INFILE request asked for: the client's packets up to an empty
/// one. Returns the bytes sent.
async fn relay_local_infile(client: &mut PooledClient<'_>, link: &mut Link) -> Result<u64, Broken> {
    let mut sent = 0;
    loop {
        let packet = match client.reader.read(&mut client.stream).await {
            Ok(packet) => packet,
            Err(CodecError::Io(_)) => return Err(Broken::Client(Termination::ClientClosed)),
            Err(_) => return Err(Broken::Client(Termination::BadMessage)),
        };
        let mut out = Vec::with_capacity(packet.payload.len() + 4);
        encode_packet(packet.sequence, &packet.payload, &mut out);
        crate::net::send_all(&mut link.conn.stream, &out)
            .await
            .map_err(|e| Broken::Server(e.to_string()))?;
        sent += out.len() as u64;
        if packet.payload.is_empty() {
            return Ok(sent);
        }
    }
}

/// Why a connection could not be given a session's state.
enum Unsynced {
    /// It has a default database and the session none: only a new connection will do.
    NeedsFresh,
    /// A command failed.
    Failed(String),
}

/// Gives `link` the session state `wanted`: the default database and the variables,
/// after a reset when the connection's database cannot be taken back.
async fn sync_state(link: &mut Link, wanted: &SessionState) -> Result<(), Unsynced> {
    let replay = wanted
        .replay_from(&link.state, &link.baseline)
        .ok_or(Unsynced::NeedsFresh)?;
    if replay.is_empty() {
        return Ok(());
    }
    if let Some(schema) = &replay.schema {
        let mut command = vec![reply::COM_INIT_DB];
        command.extend_from_slice(schema.as_bytes());
        super::packet::write_packet(&mut link.conn.stream, 0, &command)
            .await
            .map_err(|e| Unsynced::Failed(e.to_string()))?;
        let answer = link
            .conn
            .reader
            .read(&mut link.conn.stream)
            .await
            .map_err(|e| Unsynced::Failed(e.to_string()))?;
        if answer.header() != Some(OK) {
            return Err(Unsynced::Failed(format!("USE {schema} was refused")));
        }
    }
    if let Some(set) = &replay.set {
        query(&mut link.conn, set)
            .await
            .map_err(|e| Unsynced::Failed(e.to_string()))?;
    }
    link.state = wanted.clone();
    Ok(())
}

/// The statement id of a COM_STMT_* command.
fn statement_id(payload: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = payload.get(1..5)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// The payload of the first packet of framed bytes.
fn first_payload(framed: &[u8]) -> Option<&[u8]> {
    let length = usize::from(*framed.first()?)
        | usize::from(*framed.get(1)?) << 8
        | usize::from(*framed.get(2)?) << 16;
    framed.get(4..4 + length)
}

/// Puts `id` in the first packet of a framed prepare reply.
fn set_statement_id(framed: &mut [u8], id: u32) {
    if let Some(slot) = framed.get_mut(5..9) {
        slot.copy_from_slice(&id.to_le_bytes());
    }
}

/// COM_STMT_EXECUTE with the server's statement id and, when the client sent no types
/// (it did with an earlier execute), the client's last types; types sent are kept.
/// `None` for a payload too short for the statement's parameters.
fn rewrite_execute(
    payload: &[u8],
    server_id: u32,
    statement: &mut ClientStatement,
) -> Option<Vec<u8>> {
    let params = usize::from(statement.params);
    let head = payload.get(5..10)?;
    let mut out = Vec::with_capacity(payload.len() + 1 + 2 * params);
    out.push(reply::COM_STMT_EXECUTE);
    out.extend_from_slice(&server_id.to_le_bytes());
    out.extend_from_slice(head);
    if params == 0 {
        out.extend_from_slice(payload.get(10..)?);
        return Some(out);
    }
    let bound_at = 10 + params.div_ceil(8);
    out.extend_from_slice(payload.get(10..bound_at)?);
    let bound = *payload.get(bound_at)?;
    if bound == 1 {
        let types = payload.get(bound_at + 1..bound_at + 1 + 2 * params)?;
        statement.types = Some(Bytes::copy_from_slice(types));
        out.extend_from_slice(payload.get(bound_at..)?);
    } else if let Some(types) = &statement.types {
        out.push(1);
        out.extend_from_slice(types);
        out.extend_from_slice(payload.get(bound_at + 1..)?);
    } else {
        out.extend_from_slice(payload.get(bound_at..)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(params: u16) -> ClientStatement {
        ClientStatement {
            text: Bytes::from_static(b"select ?"),
            class: Arc::new(classify_bytes(b"select ?")),
            params,
            types: None,
        }
    }

    #[test]
    fn execute_gets_the_server_id_and_the_clients_last_types() {
        let mut s = statement(1);
        // id 7, no cursor, 1 iteration, null bitmap 0, types bound: LONGLONG, value 5.
        let first = [
            0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 8, 0, 5, 0, 0, 0, 0, 0, 0, 0,
        ];
        let out = rewrite_execute(&first, 42, &mut s).expect("rewritten");
        assert_eq!(&out[1..5], &42u32.to_le_bytes());
        assert_eq!(&out[5..], &first[5..]);
        assert_eq!(s.types.as_deref(), Some(&[8u8, 0][..]));
        // The next execute sends no types: they are put back.
        let second = [
            0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0,
        ];
        let out = rewrite_execute(&second, 42, &mut s).expect("rewritten");
        assert_eq!(&out[10..], &[0, 1, 8, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
        assert!(rewrite_execute(&second[..10], 42, &mut s).is_none());
        assert!(rewrite_execute(&[0x17, 1], 42, &mut statement(0)).is_none());
    }

    #[test]
    fn prepare_replies_are_renumbered() {
        let mut framed = packet(1, &[0, 9, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(first_payload(&framed).map(|p| p.len()), Some(12));
        set_statement_id(&mut framed, 3);
        assert_eq!(&framed[5..9], &[3, 0, 0, 0]);
        assert!(first_payload(&[5, 0]).is_none());
    }
}
