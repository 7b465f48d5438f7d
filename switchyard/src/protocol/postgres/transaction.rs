//! Transaction mode: a client holds a server connection from the first message of a
//! transaction until the server's ReadyForQuery says the session is idle (`I`) again;
//! `T` (in a transaction) and `E` (failed transaction) keep it. Boundaries come from that
//! status byte only, never from reading the SQL.
//!
//! While a connection is held, messages flow both ways as they arrive. The proxy keeps a
//! queue of the responses it expects, in order, because it changes the conversation:
//! - named prepared statements are renamed per server (see `statements`), prepared on a
//!   connection the first time a transaction there needs them (an injected Parse whose
//!   ParseComplete the client never sees), and a client's Parse of a statement the
//!   connection already has is answered by the proxy (a ParseComplete put in its place);
//! - the client's session settings are replayed (an injected simple query, answered to
//!   nobody) when a connection's settings differ from the client's.
//!
//! No session state crosses clients (`docs/architecture.md`, "The pooling invariant").
//! Every statement's session effects are noted (`classify::session_effects`: a sound
//! scan first, the parser when the scan cannot tell): `SET`s the proxy can replay follow
//! the client; state it cannot move pins the client to its connection, reset with `DISCARD
//! ALL` when the client leaves; and anything it cannot see — a function not known to be
//! free of session effects, a `DO` block, a ParameterStatus no recorded `SET` explains —
//! marks the connection unknown, so it is reset with `DISCARD ALL` before anyone uses it
//! again. A reset finishes before the client's first message is sent; a connection whose
//! reset fails is closed, never used.
//!
//! After an error in the extended protocol the server skips everything up to Sync; the
//! queue does the same. A client that leaves mid-transaction gets its connection rolled
//! back (or closed when a query is still running); a lost server ends the transaction
//! with an error and the client's next transaction starts on another connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::PostgresState;
use super::cancel::Registration;
use super::classify::{self, Classification, PinReason, SessionChange, SessionEffects};
use super::codec::Startup;
use super::errors::{fatal, sqlstate};
use super::frames::{self, Frame, FrameReader, Parse};
use super::login::ServerCredential;
use super::pooler::{LeaseFailure, ServerConn, TxPool};
use super::settings::{self, SessionSettings};
use super::split::{SplitConfig, SplitState, Target};
use super::startup::Refusal;
use super::statements::{ClientStatements, Statement};
use super::tls::ClientStream;
use crate::config::MessageLimits;
use crate::config::PostgresListener;
use crate::lazy_timer::LazyTimer;
use crate::listener::ListenerSettings;
use crate::observe::{ConnectionRecord, Termination};
use crate::upstream::tx_pool::Pairing;
use crate::upstream::{Pool, RoleFilter};

/// What the client loop needs from the session that started it.
struct Client<'a> {
    /// The client's stream, after startup and authentication.
    pub stream: ClientStream,
    /// The client's address (for balancing).
    pub address: SocketAddr,
    /// The pool of server connections for the client's database and user.
    pub pool: Arc<TxPool>,
    /// Which servers the client's transactions may run on (the listener's role).
    pub accept: RoleFilter,
    /// Message size limits.
    pub limits: &'a MessageLimits,
    /// Idle time allowed between transactions (`timeouts.client`; zero: no limit).
    pub idle: Duration,
    /// The client's cancel key, pointed at the connection it holds.
    pub cancel: Registration,
    /// The settings the client asked for at startup.
    pub settings: SessionSettings,
    /// Fires at hard shutdown: the session's own child of the process's token, so the
    /// checks in every wait lock this session's token, not one shared by all sessions.
    pub hard_stop: CancellationToken,
    /// The read/write split, when enabled.
    pub split: Option<Arc<SplitConfig>>,
    /// The usage of the client's tenant (a pool with `resolver`).
    pub tenant: Option<Arc<crate::accounting::Usage>>,
}

/// Bytes moved, for the connection log.
#[derive(Debug, Default, Clone, Copy)]
struct Moved {
    to_server: u64,
    to_client: u64,
}

/// A response the proxy expects from the server, in order.
#[derive(Debug)]
enum Expect {
    /// The answer to a client's message; `prepares` names the statement a Parse makes.
    Client(Kind, Option<String>),
    /// The answer to a message the proxy sent on its own; the client never sees it.
    Injected(Kind, Option<String>),
    /// A message the proxy answers itself, due at this place in the response stream.
    Synthetic(Frame),
}

/// Message kinds by what ends their answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    /// Sync, Query and FunctionCall: answered up to ReadyForQuery.
    UntilReady,
}

impl Kind {
    /// Whether a server message with `tag` ends the answer to a message of this kind.
    fn ended_by(self, tag: u8) -> bool {
        match self {
            Kind::Parse => tag == b'1',
            Kind::Bind => tag == b'2',
            Kind::Close => tag == b'3',
            Kind::Describe => matches!(tag, b'T' | b'n'),
            Kind::Execute => matches!(tag, b'C' | b'I' | b's'),
            Kind::UntilReady => tag == b'Z',
        }
    }
}

/// One transaction's hold on a server connection.
struct Held {
    conn: ServerConn,
    expected: VecDeque<Expect>,
    /// ReadyForQuery messages still due to the client.
    pending: usize,
    /// The last transaction status the server reported.
    status: u8,
    /// An error came since the last ReadyForQuery (the extended protocol skips to Sync).
    skipping: bool,
    /// Session changes run in the current transaction (applied when it commits).
    changes: Vec<SessionChange>,
    /// The current transaction failed at some point (its changes are void).
    failed: bool,
    /// What the read/write split made of the lease's first statement.
    class: Option<Classification>,
    /// The server sent a FATAL error (passed on as ERROR): it is closing.
    server_fatal: bool,
    /// Something ran that may have changed session state unseen (see the module
    /// documentation): the connection is reset before its next use.
    untracked: bool,
    to_server: Vec<u8>,
}

impl Held {
    /// A hold on `conn` using `buffers` (empty, kept from the session's last transaction).
    fn new(conn: ServerConn, buffers: Buffers) -> Self {
        Self {
            conn,
            expected: buffers.expected,
            pending: 0,
            status: b'I',
            skipping: false,
            changes: Vec::new(),
            failed: false,
            class: None,
            server_fatal: false,
            untracked: false,
            to_server: buffers.to_server,
        }
    }

    /// Gives up the buffers, emptied, for the session's next transaction; one grown past
    /// [`KEEP_BUFFER`] is let go, so a session going from transaction to transaction does
    /// not hold a large message's room (a session that waits lets go of them all, see
    /// `next_client_frame`).
    fn take_buffers(&mut self) -> Buffers {
        self.expected.clear();
        self.to_server.clear();
        if self.to_server.capacity() > KEEP_BUFFER {
            self.to_server = Vec::new();
        }
        Buffers {
            expected: std::mem::take(&mut self.expected),
            to_server: std::mem::take(&mut self.to_server),
        }
    }

    fn send(&mut self, frame: &[u8]) {
        self.to_server.extend_from_slice(frame);
    }

    /// Whether the transaction is over and the connection can go back.
    fn finished(&self) -> bool {
        self.pending == 0 && self.expected.is_empty() && self.status == b'I'
    }
}

/// The largest buffer of bytes to the server a session keeps from one transaction to the
/// next.
const KEEP_BUFFER: usize = 64 * 1024;

/// A transaction's buffers, kept by the session from one transaction to the next when the
/// client's next message is already there, so back-to-back transactions do not allocate
/// them anew; given back while the client makes the session wait.
#[derive(Debug, Default)]
struct Buffers {
    expected: VecDeque<Expect>,
    to_server: Vec<u8>,
}

/// How a session ended.
type Ending = Result<Termination, Refusal>;

/// Why a transaction stopped before its connection could go back. What becomes of the
/// connection and of the client is decided by matching on it, so every case is handled;
/// the connection log's termination reasons come from it ([`Stop::reason`]).
#[derive(Debug)]
enum Stop {
    /// The client left: Terminate, its connection closed, or it could not be written to.
    ClientClosed(String),
    /// The client sent a malformed message (it was told FATAL 08P01).
    BadMessage(String),
    /// Hard shutdown.
    Shutdown,
    /// The server connection broke with the client between statements of no
    /// transaction: the client was told and stays; its next transaction gets another.
    ServerLost(String),
    /// The server connection broke inside a transaction or a pinned session: the client
    /// was told FATAL and the session ends.
    ServerLostInTransaction(String),
}

impl Stop {
    /// The termination reason for the connection log.
    fn reason(&self) -> Termination {
        match self {
            Stop::ClientClosed(_) => Termination::ClientClosed,
            Stop::BadMessage(_) => Termination::BadMessage,
            Stop::Shutdown => Termination::Shutdown,
            Stop::ServerLost(_) => Termination::ServerLost,
            Stop::ServerLostInTransaction(_) => Termination::ServerLostInTransaction,
        }
    }
}

impl From<Stop> for Refusal {
    fn from(stop: Stop) -> Self {
        let reason = stop.reason();
        let detail = match stop {
            Stop::ClientClosed(detail)
            | Stop::BadMessage(detail)
            | Stop::ServerLost(detail)
            | Stop::ServerLostInTransaction(detail) => detail,
            Stop::Shutdown => "hard stop".to_string(),
        };
        Refusal { reason, detail }
    }
}

/// The client loop state that outlives one transaction.
struct Session<'a> {
    client: Client<'a>,
    reader: FrameReader,
    to_client: Vec<u8>,
    statements: ClientStatements,
    pinned: Option<PinReason>,
    moved: Moved,
    split: SplitState,
    /// The idle limit between transactions: one lazy timer for the session, whose deadline
    /// every transaction moves later.
    idle_timer: LazyTimer,
    /// The last transaction's buffers, for the next.
    buffers: Buffers,
}

impl<'a> Session<'a> {
    fn new(client: Client<'a>) -> Self {
        Self {
            reader: FrameReader::new(client.limits.message),
            to_client: Vec::new(),
            statements: ClientStatements::default(),
            pinned: None,
            moved: Moved::default(),
            split: SplitState::new(),
            idle_timer: LazyTimer::default(),
            buffers: Buffers::default(),
            client,
        }
    }

    /// Runs the session until the client leaves; returns the termination reason for the
    /// log (the bytes moved are in `moved`).
    async fn serve(&mut self) -> Ending {
        loop {
            // Between transactions: wait for the client's next message.
            let first = match self.next_client_frame().await? {
                Some(frame) => frame,
                None => return Ok(Termination::ClientClosed),
            };
            if first.tag() == b'X' {
                return Ok(Termination::ClientClosed);
            }
            // Boxed: a transaction's future is large and lives only while it runs, so the
            // wait between transactions (where pooled clients spend their time) stays small.
            if let Some(ending) = Box::pin(self.transact(first)).await {
                return ending;
            }
        }
    }

    /// Runs the transaction `first` opens, from the lease to the connection's return;
    /// `Some` when the session ends with it.
    async fn transact(&mut self, first: Frame) -> Option<Ending> {
        let plan = self.plan(&first);
        if let Some((class, _)) = &plan {
            match self.answer_route_setting(class).await {
                Ok(true) => return None,
                Ok(false) => {}
                Err(refusal) => return Some(Err(refusal)),
            }
        }
        let conn = match self.lease(plan.as_ref().map(|(_, target)| *target)).await {
            Ok(conn) => conn,
            Err(failure) => return Some(self.refuse_lease(failure).await),
        };
        self.client.cancel.retarget(&conn.link.cancel);
        let mut held = Held::new(conn, std::mem::take(&mut self.buffers));
        held.class = plan.map(|(class, _)| class);
        self.prepare(&mut held).await;
        let outcome = self.transaction(&mut held, first).await;
        if let Some(tenant) = &self.client.tenant {
            tenant
                .transactions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.client.cancel.untarget();
        match outcome {
            Ok(()) => {
                self.buffers = held.take_buffers();
                self.client.pool.give_back(held.conn);
                None
            }
            // The client stays: its next transaction gets a healthy connection.
            Err(Stop::ServerLost(_)) => {
                self.buffers = held.take_buffers();
                self.client.pool.discard(held.conn);
                None
            }
            Err(stop @ Stop::ServerLostInTransaction(_)) => {
                self.client.pool.discard(held.conn);
                Some(Err(stop.into()))
            }
            Err(stop @ (Stop::ClientClosed(_) | Stop::BadMessage(_) | Stop::Shutdown)) => {
                Some(self.leave(held, stop).await)
            }
        }
    }

    /// Reads the client's next whole message; `None` when it closed. Enforces the idle
    /// limit between transactions.
    async fn next_client_frame(&mut self) -> Result<Option<Frame>, Refusal> {
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(error) => return Err(self.malformed(error).await.into()),
            }
            // Zero (or beyond the clock's range): no limit.
            let idle = self.client.idle;
            let now = Instant::now();
            let deadline = now.checked_add(idle).filter(|_| !idle.is_zero());
            // While the client sends nothing, the session holds no buffers: they are taken
            // again with its next message.
            let (to_client, buffers) = (&mut self.to_client, &mut self.buffers);
            let read = self.reader.fill_idle(&mut self.client.stream, || {
                *to_client = Vec::new();
                *buffers = Buffers::default();
            });
            let read = tokio::select! {
                read = read => read,
                _ = self.idle_timer.until(deadline.unwrap_or(now)), if deadline.is_some() => {
                    return Err(Refusal::new(Termination::ClientTimeout, "idle between transactions"));
                }
                () = self.client.hard_stop.cancelled() => {
                    return Err(Stop::Shutdown.into());
                }
            };
            match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.moved.to_server += n as u64,
            }
        }
    }

    /// A malformed client message: FATAL 08P01, then the end.
    async fn malformed(&mut self, error: impl std::fmt::Display) -> Stop {
        let message = format!("invalid message: {error}");
        let _ = crate::net::send_all(
            &mut self.client.stream,
            &fatal(sqlstate::PROTOCOL_VIOLATION, &message),
        )
        .await;
        Stop::BadMessage(message)
    }

    /// With the read/write split on: classifies the statement that opens a lease (a
    /// simple query, a Parse, or the Bind of a named statement; anything else is unknown
    /// and goes to the primary) and decides the server role.
    fn plan(&mut self, first: &Frame) -> Option<(Classification, Target)> {
        let split = self.client.split.clone()?;
        let sql = match first.tag() {
            b'Q' => frames::query_text(first.body()).ok(),
            b'P' => Parse::read(first.body()).ok().map(|parse| parse.query),
            b'B' => frames::bind_statement(first.body())
                .ok()
                .and_then(|name| self.statements.get(name))
                .map(|statement| statement.query.as_bytes()),
            _ => None,
        };
        let class = match sql.map(std::str::from_utf8) {
            Some(Ok(text)) => split.classifier.classify(text),
            _ => Classification::unknown(None),
        };
        let now = std::time::Instant::now();
        let target = self.split.target(&class, now, split.sticky_after_write);
        Some((class, target))
    }

    /// `SET switchyard.route = ...` on its own, between transactions: answered by the
    /// proxy (the session's routing changes; no server is involved). True when answered.
    async fn answer_route_setting(&mut self, class: &Classification) -> Result<bool, Refusal> {
        let [change] = class.session.as_slice() else {
            return Ok(false);
        };
        let answer = match change {
            SessionChange::Route(_) => {
                self.split.after(class, false, std::time::Instant::now());
                Frame::new(b'C', b"SET\0")
            }
            SessionChange::BadRoute(value) => frames::error(
                "22023",
                &format!(
                    "invalid value for parameter \"switchyard.route\": \"{value}\" (primary, replica or auto)"
                ),
            ),
            _ => return Ok(false),
        };
        self.to_client.extend_from_slice(&answer.0);
        self.to_client
            .extend_from_slice(&frames::ready_for_query(b'I').0);
        self.flush_client().await?;
        Ok(true)
    }

    /// Leases a connection for the planned role: the listener's servers without a split;
    /// a primary, or a replica (the primary when no replica is up) with one.
    async fn lease(&self, target: Option<Target>) -> Result<ServerConn, LeaseFailure> {
        let client = &self.client;
        let role = target.map(Target::role);
        client
            .pool
            .lease_for_role(client.address, client.accept, role, client.limits)
            .await
    }

    /// No connection for the client's transaction: FATAL with why, then the end.
    async fn refuse_lease(&mut self, failure: LeaseFailure) -> Ending {
        let (code, reason, message) = match failure {
            LeaseFailure::QueueTimeout => (
                sqlstate::TOO_MANY_CONNECTIONS,
                Termination::QueueTimeout,
                "no server connection free within the queue timeout".to_string(),
            ),
            LeaseFailure::NoServer => (
                sqlstate::CANNOT_CONNECT_NOW,
                Termination::NoServer,
                "no server available".to_string(),
            ),
            LeaseFailure::Connect(error) => (
                sqlstate::CONNECTION_FAILURE,
                Termination::ConnectFailed,
                format!("could not connect to the server: {error}"),
            ),
            LeaseFailure::Login(error) => {
                let _ = crate::net::send_all(&mut self.client.stream, &error.to_client()).await;
                return Err(Refusal::new(Termination::ServerLoginFailed, error));
            }
        };
        let _ = crate::net::send_all(&mut self.client.stream, &fatal(code, &message)).await;
        let _ = self.client.stream.shutdown().await;
        Err(Refusal::new(reason, message))
    }

    /// Readies a freshly leased connection for this client: resets it when it holds another
    /// client's settings or unknown state, closes statements beyond the connection's bound
    /// and replays the client's settings.
    ///
    /// The reset runs to its end before any message of the client is sent, so no statement
    /// of the client can run on a connection whose reset failed (a statement timeout the
    /// last client set could cancel it): such a connection is closed instead, and the
    /// client's transaction ends as on a lost connection, its next one on another.
    async fn prepare(&self, held: &mut Held) {
        let settings = &self.client.settings;
        let reset = match held.conn.link.applied {
            0 => None,
            applied if applied == settings.id() => None,
            settings::UNKNOWN => {
                // DISCARD ALL deallocates every prepared statement.
                held.conn.link.prepared.clear();
                Some(settings::RESET)
            }
            _ => Some(settings::RESET_SETTINGS),
        };
        if let Some(reset) = reset {
            if !reset_connection(&mut held.conn, &[reset]).await {
                tracing::warn!(server = %held.conn.server.name, "resetting a server connection failed; closing it");
                held.conn.link.applied = settings::UNKNOWN;
                // Nothing answered in the server's place either: every client message
                // is sent, and the first send fails.
                held.conn.link.prepared.clear();
                let _ = held.conn.link.stream.shutdown().await;
                return;
            }
            held.conn.link.applied = 0;
        }
        for name in held.conn.link.prepared.excess() {
            held.send(&frames::statement_message(b'C', &name).0);
            held.expected.push_back(Expect::Injected(Kind::Close, None));
            held.send(&frames::sync().0);
            held.expected
                .push_back(Expect::Injected(Kind::UntilReady, None));
        }
        if held.conn.link.applied != settings.id() {
            if let Some(sql) = settings.replay_sql() {
                held.send(&frames::query(&sql).0);
                held.expected
                    .push_back(Expect::Injected(Kind::UntilReady, None));
            }
            held.conn.link.applied = settings.id();
        }
    }

    /// Runs one transaction from its first client message until the connection is idle
    /// again. `Err` ends the session (the client left, the server was lost, a bad message).
    async fn transaction(&mut self, held: &mut Held, first: Frame) -> Result<(), Stop> {
        self.client_message(held, first)?;
        loop {
            loop {
                match self.reader.next_frame() {
                    Ok(Some(frame)) => {
                        if frame.tag() == b'X' {
                            return Err(Stop::ClientClosed("Terminate".to_string()));
                        }
                        self.client_message(held, frame)?;
                    }
                    Ok(None) => break,
                    Err(error) => return Err(self.malformed(error).await),
                }
            }
            if !held.to_server.is_empty() {
                let written =
                    crate::net::send_all(&mut held.conn.link.stream, &held.to_server).await;
                held.to_server.clear();
                if written.is_err() {
                    return self.server_lost(held, "server write failed").await;
                }
            }
            self.flush_client().await?;
            if held.finished() && self.pinned.is_none() {
                return Ok(());
            }
            tokio::select! {
                read = self.reader.fill(&mut self.client.stream) => match read {
                    Ok(0) | Err(_) => return Err(Stop::ClientClosed("client left mid-transaction".to_string())),
                    Ok(n) => self.moved.to_server += n as u64,
                },
                read = held.conn.link.reader.fill(&mut held.conn.link.stream) => match read {
                    Ok(0) | Err(_) => return self.server_lost(held, "server closed the connection").await,
                    Ok(n) => {
                        self.moved.to_client += n as u64;
                        self.server_messages(held).await?;
                    }
                },
                () = held.conn.cut.cancelled() => return self.server_lost(held, "server taken out of service").await,
                () = self.client.hard_stop.cancelled() => return Err(Stop::Shutdown),
            }
        }
    }

    async fn flush_client(&mut self) -> Result<(), Stop> {
        if self.to_client.is_empty() {
            return Ok(());
        }
        let written = crate::net::send_all(&mut self.client.stream, &self.to_client).await;
        self.to_client.clear();
        written.map_err(|e| Stop::ClientClosed(e.to_string()))
    }

    /// One client message while a connection is held: rename, inject, queue, forward.
    fn client_message(&mut self, held: &mut Held, frame: Frame) -> Result<(), Stop> {
        let bad = |e: super::codec::CodecError| Stop::BadMessage(e.to_string());
        if held.skipping {
            // The server discards everything up to Sync after an error; so do we.
            if frame.tag() == b'S' {
                held.skipping = false;
                held.pending += 1;
                held.expected
                    .push_back(Expect::Client(Kind::UntilReady, None));
            }
            held.send(&frame.0);
            return Ok(());
        }
        match frame.tag() {
            b'Q' => {
                let sql = frames::query_text(frame.body()).map_err(bad)?;
                self.note_sql(held, sql);
                held.pending += 1;
                held.expected
                    .push_back(Expect::Client(Kind::UntilReady, None));
                held.send(&frame.0);
            }
            b'P' => {
                let parse = Parse::read(frame.body()).map_err(bad)?;
                if parse.name.is_empty() {
                    // Run by the Bind and Execute that follow, on this connection.
                    self.note_sql(held, parse.query);
                    held.expected.push_back(Expect::Client(Kind::Parse, None));
                    held.send(&frame.0);
                } else {
                    let statement = self.statements.prepare(&parse);
                    if held.conn.link.prepared.touch(&statement.server_name) {
                        // Already there: answer in its place.
                        held.expected.push_back(Expect::Synthetic(parse_complete()));
                    } else {
                        // Counted as prepared from now on, so the rest of the batch does
                        // not prepare it again; forgotten if the Parse fails.
                        held.conn.link.prepared.insert(&statement.server_name);
                        held.expected.push_back(Expect::Client(
                            Kind::Parse,
                            Some(statement.server_name.clone()),
                        ));
                        held.send(&statement.parse.0);
                    }
                }
            }
            b'B' => {
                let name = frames::bind_statement(frame.body()).map_err(bad)?;
                match self.statements.get(name).cloned() {
                    Some(statement) => {
                        // A named statement runs wherever it is bound, maybe in a later
                        // transaction on another connection than its Parse.
                        self.note_effects(held, &statement.effects);
                        ensure_prepared(held, &statement);
                        let renamed = frames::bind_renamed(frame.body(), &statement.server_name)
                            .map_err(bad)?;
                        held.send(&renamed.0);
                    }
                    None => held.send(&frame.0),
                }
                held.expected.push_back(Expect::Client(Kind::Bind, None));
            }
            b'D' => {
                let (target, name) = frames::target(frame.body()).map_err(bad)?;
                match (target, self.statements.get(name)) {
                    (b'S', Some(statement)) if !name.is_empty() => {
                        ensure_prepared(held, statement);
                        held.send(&frames::statement_message(b'D', &statement.server_name).0);
                    }
                    _ => held.send(&frame.0),
                }
                held.expected
                    .push_back(Expect::Client(Kind::Describe, None));
            }
            b'C' => {
                let (target, name) = frames::target(frame.body()).map_err(bad)?;
                let closed = (target == b'S' && !name.is_empty())
                    .then(|| self.statements.close(name))
                    .flatten();
                match closed {
                    Some(statement) => {
                        // Other clients' copies are prepared again where needed.
                        held.conn.link.prepared.remove(&statement.server_name);
                        held.send(&frames::statement_message(b'C', &statement.server_name).0);
                    }
                    None => held.send(&frame.0),
                }
                held.expected.push_back(Expect::Client(Kind::Close, None));
            }
            b'E' => {
                held.expected.push_back(Expect::Client(Kind::Execute, None));
                held.send(&frame.0);
            }
            b'S' | b'F' => {
                // A FunctionCall names its function by OID: what it does is unknown.
                held.untracked |= frame.tag() == b'F';
                held.pending += 1;
                held.expected
                    .push_back(Expect::Client(Kind::UntilReady, None));
                held.send(&frame.0);
            }
            // Flush, COPY data/done/fail, and anything else the server judges.
            _ => held.send(&frame.0),
        }
        self.emit_synthetic(held);
        Ok(())
    }

    /// Notes what the statement text `sql` does to the session (see [`Self::note_effects`]).
    fn note_sql(&mut self, held: &mut Held, sql: &[u8]) {
        if self.pinned.is_some() {
            // The connection is the client's until it leaves, then reset whatever it holds.
            return;
        }
        self.note_effects(held, &classify::session_effects(sql));
    }

    /// Notes what a statement about to run does to the session: changes to replay later,
    /// state that ties the client to this connection, and effects nobody can see, for
    /// which the connection is reset before its next use.
    fn note_effects(&mut self, held: &mut Held, effects: &SessionEffects) {
        if self.pinned.is_some() {
            return;
        }
        let pin = match effects.pins {
            Some(reason) => Some(reason),
            // The proxy cannot read this client's text as the server will.
            None if !self.client.settings.readable() => Some(PinReason::Unreadable),
            None => None,
        };
        if let Some(reason) = pin {
            tracing::debug!(?reason, "client pinned to its server connection");
            self.pinned = Some(reason);
            return;
        }
        held.changes.extend(effects.changes.iter().cloned());
        held.untracked |= effects.untracked;
    }

    /// Handles the server's whole messages that have arrived.
    async fn server_messages(&mut self, held: &mut Held) -> Result<(), Stop> {
        loop {
            let frame = match held.conn.link.reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(error) => {
                    let detail = format!("bad message from the server: {error}");
                    return self.server_lost(held, &detail).await;
                }
            };
            self.server_message(held, frame);
            if held.server_fatal {
                // The server is ending this session: nothing more goes to it, and the
                // client's next messages wait for another connection.
                return self.server_lost(held, "the server ended the session").await;
            }
        }
    }

    fn server_message(&mut self, held: &mut Held, frame: Frame) {
        let tag = frame.tag();
        if tag == b'E' {
            self.server_error(held, frame);
            return;
        }
        let Some(front) = held.expected.front() else {
            // Notices, notifications, parameter changes between answers.
            if tag == b'S' {
                Self::parameter_status(held, &frame);
            }
            self.to_client.extend_from_slice(&frame.0);
            return;
        };
        let (kind, injected) = match front {
            Expect::Client(kind, _) => (*kind, false),
            Expect::Injected(kind, _) => (*kind, true),
            Expect::Synthetic(_) => (Kind::UntilReady, false),
        };
        if tag == b'S' && !injected {
            Self::parameter_status(held, &frame);
        }
        if !injected {
            self.to_client.extend_from_slice(&frame.0);
        }
        if !kind.ended_by(tag) {
            return;
        }
        held.expected.pop_front();
        if tag == b'Z' {
            let status = frame.body().first().copied().unwrap_or(b'I');
            self.ready(held, status, injected);
        }
        self.emit_synthetic(held);
    }

    /// The backstop for what no statement showed: the server reports a change of a
    /// reported parameter (`application_name`, `client_encoding`, `DateStyle`, `TimeZone`,
    /// `IntervalStyle`, `standard_conforming_strings`, `is_superuser`,
    /// `session_authorization`, `search_path` from PostgreSQL 18...) while a client's
    /// statements run. One no recorded `SET`, `RESET`, `RESET ALL` or `DISCARD ALL` of this
    /// transaction explains (a function or trigger set it, or a `SET LOCAL` that ends with
    /// the transaction: resetting for those costs a reset, never a leak) marks the
    /// connection for a reset before its next use.
    fn parameter_status(held: &mut Held, frame: &Frame) {
        let body = frame.body();
        let name = body.split(|&b| b == 0).next().unwrap_or_default();
        let explained = held.changes.iter().any(|change| match change {
            SessionChange::Set { name: set, .. } | SessionChange::Reset { name: set } => {
                set.as_bytes().eq_ignore_ascii_case(name)
            }
            SessionChange::ResetAll | SessionChange::DiscardAll => true,
            SessionChange::Route(_) | SessionChange::BadRoute(_) => false,
        });
        if !explained && !held.untracked {
            tracing::debug!(
                parameter = %String::from_utf8_lossy(name),
                "the server reported a parameter change no statement explains; the connection will be reset"
            );
            held.untracked = true;
        }
    }

    /// ReadyForQuery: the server is between transactions (`I`) or in one (`T`, `E`).
    fn ready(&mut self, held: &mut Held, status: u8, injected: bool) {
        held.status = status;
        held.skipping = false;
        if injected {
            return;
        }
        held.pending = held.pending.saturating_sub(1);
        self.client
            .pool
            .stats
            .queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(class) = &held.class {
            self.split
                .after(class, status != b'I', std::time::Instant::now());
        }
        match status {
            b'E' => held.failed = true,
            b'I' => {
                let changes = std::mem::take(&mut held.changes);
                // Unknown stays unknown until a reset: a later transaction of the same
                // lease recording its own changes does not make the connection known.
                let unknown = std::mem::take(&mut held.untracked)
                    || held.conn.link.applied == settings::UNKNOWN;
                if held.failed {
                    held.failed = false;
                    if unknown || !changes.is_empty() {
                        // Rolled back, but the connection may hold part of them (advisory
                        // locks taken in a failed transaction stay, for one).
                        held.conn.link.applied = settings::UNKNOWN;
                    }
                    return;
                }
                let settings = &mut self.client.settings;
                for change in changes {
                    match change {
                        SessionChange::Set { name, statement } => settings.set(&name, &statement),
                        SessionChange::Reset { name } => settings.reset(&name),
                        SessionChange::ResetAll => settings.reset_all(),
                        SessionChange::DiscardAll => {
                            settings.reset_all();
                            // The server deallocated every prepared statement.
                            held.conn.link.prepared.clear();
                        }
                        SessionChange::Route(_) | SessionChange::BadRoute(_) => {}
                    }
                }
                held.conn.link.applied = if unknown {
                    settings::UNKNOWN
                } else {
                    settings.id()
                };
            }
            _ => {}
        }
    }

    /// An ErrorResponse: it answers the message at the front of the queue; outside a
    /// simple query the server then skips to Sync, and so does the queue.
    fn server_error(&mut self, held: &mut Held, frame: Frame) {
        if let Some(Expect::Injected(Kind::UntilReady, _)) = held.expected.front() {
            let field = |f| super::errors::error_field(frame.body(), f).unwrap_or_default();
            let (code, message) = (field(b'C'), field(b'M'));
            tracing::warn!(code, message, "replaying session settings failed");
            held.conn.link.applied = settings::UNKNOWN;
            return;
        }
        // A server closing on its own (terminated, restarting) says FATAL; when the client can
        // go on without this connection it gets an ERROR instead (see `server_lost`).
        let frame = match frames::downgrade_fatal(frame.body()) {
            Some(downgraded) if self.can_continue_without(held) => {
                held.server_fatal = true;
                downgraded
            }
            _ => frame,
        };
        held.failed = true;
        match held.expected.front() {
            Some(Expect::Client(Kind::UntilReady, _)) | None => {
                self.to_client.extend_from_slice(&frame.0);
                return;
            }
            _ => {}
        }
        self.to_client.extend_from_slice(&frame.0);
        // The failed message and everything up to the next Sync are skipped by the
        // server: statements they were to prepare are not there.
        while let Some(front) = held.expected.front() {
            match front {
                Expect::Client(Kind::UntilReady, _) | Expect::Injected(Kind::UntilReady, _) => {
                    return;
                }
                Expect::Client(_, Some(name)) | Expect::Injected(_, Some(name)) => {
                    held.conn.link.prepared.remove(name);
                }
                _ => {}
            }
            held.expected.pop_front();
        }
        held.skipping = true;
    }

    /// Sends the proxy's own answers that are due now.
    fn emit_synthetic(&mut self, held: &mut Held) {
        while let Some(Expect::Synthetic(_)) = held.expected.front() {
            if let Some(Expect::Synthetic(frame)) = held.expected.pop_front() {
                self.to_client.extend_from_slice(&frame.0);
            }
        }
    }

    /// Whether the client's session survives losing its server connection: the server was
    /// between transactions at its last ReadyForQuery and holds no pinned state.
    fn can_continue_without(&self, held: &Held) -> bool {
        held.status == b'I' && self.pinned.is_none()
    }

    /// The server connection broke. Between statements of no transaction (the server
    /// was idle at its last ReadyForQuery, and the client holds no session state there),
    /// each answer the client waits for becomes an error and the client stays: its next
    /// transaction starts on another connection. Inside a transaction, or pinned, the
    /// client's session cannot be carried on truthfully: FATAL 08006 and the end.
    async fn server_lost(&mut self, held: &mut Held, detail: &str) -> Result<(), Stop> {
        tracing::warn!(server = %held.conn.server.name, detail, "server connection lost");
        let message = format!("server connection lost: {detail}");
        if !self.can_continue_without(held) {
            self.to_client
                .extend_from_slice(&fatal(sqlstate::CONNECTION_FAILURE, &message));
            self.flush_client().await?;
            return Err(Stop::ServerLostInTransaction(message));
        }
        for answer in 0..held.pending {
            // The server's own (downgraded) FATAL already answered the first.
            if answer > 0 || !held.server_fatal {
                let error = frames::error(sqlstate::CONNECTION_FAILURE, &message);
                self.to_client.extend_from_slice(&error.0);
            }
            self.to_client
                .extend_from_slice(&frames::ready_for_query(b'I').0);
        }
        self.flush_client().await?;
        Err(Stop::ServerLost(message))
    }

    /// The session ends while holding a connection: it goes back clean, or is closed.
    async fn leave(&mut self, mut held: Held, end: Stop) -> Ending {
        let pool = self.client.pool.clone();
        let mut reset = Vec::new();
        if held.status != b'I' {
            reset.push("ROLLBACK");
        }
        if self.pinned.is_some() {
            reset.push(settings::RESET);
        }
        let clean = held.pending == 0
            && held.expected.is_empty()
            && reset_connection(&mut held.conn, &reset).await;
        if clean {
            if self.pinned.is_some() {
                held.conn.link.prepared.clear();
                held.conn.link.applied = 0;
            } else if held.untracked {
                // The rollback undoes settings, not everything an unseen effect may leave.
                held.conn.link.applied = settings::UNKNOWN;
            }
            pool.give_back(held.conn);
        } else {
            pool.discard(held.conn);
        }
        match end {
            Stop::ClientClosed(_) => Ok(end.reason()),
            _ => Err(end.into()),
        }
    }
}

/// The pool a transaction-mode client draws from, and on whose behalf.
pub struct Pooled<'a> {
    /// The routed pool.
    pub pool: &'a Arc<Pool>,
    /// What switchyard logs in to servers with for this client's user.
    pub credential: ServerCredential,
    /// Which servers the client's transactions may run on (the listener's role).
    pub accept: RoleFilter,
    /// The read/write split, when the route or pool enables it.
    pub split: Option<Arc<SplitConfig>>,
    /// The usage of the client's tenant (a pool with `resolver`).
    pub tenant: Option<Arc<crate::accounting::Usage>>,
}

/// Starts a transaction-mode session for a client that switchyard authenticated. The
/// client is told the parameters of the pool's latest server login, so its login waits
/// for no server connection (a client that connects per transaction would otherwise queue
/// behind the transactions of others before it could even begin). Only the first client
/// of a (database, user) leases a connection first: that login checks that the server
/// accepts the user and database (its refusal reaches the client as is) and learns the
/// parameters.
pub async fn start(
    state: &PostgresState,
    listener: &ListenerSettings,
    options: &PostgresListener,
    stream: ClientStream,
    startup: &Startup,
    pooled: Pooled<'_>,
    record: &mut ConnectionRecord,
) -> Result<Termination, Refusal> {
    let database = startup.database().unwrap_or_default();
    let user = startup.param("user").unwrap_or_default();
    let limits = &options.limits;
    let address = record.client;
    let client = |stream, pool, settings, idle| Client {
        stream,
        address,
        pool,
        accept: pooled.accept,
        limits,
        idle,
        cancel: state.cancel.register_unbound(4),
        settings,
        hard_stop: state.context.hard_stop.child_token(),
        split: pooled.split.clone(),
        tenant: pooled.tenant.clone(),
    };
    let member = match state.tx_pools.join(
        pooled.pool,
        Pairing {
            database,
            user,
            shape: 0,
        },
        pooled.credential,
    ) {
        Ok(member) => member,
        Err(full) => {
            let mut stream = stream;
            let message = format!(
                "too many (database, user) pairs in pool \"{}\" (max_transaction_pools = {})",
                pooled.pool.name, full.limit
            );
            let _ = crate::net::send_all(
                &mut stream,
                &fatal(sqlstate::TOO_MANY_CONNECTIONS, &message),
            )
            .await;
            return Err(Refusal::new(Termination::TooManyPools, message));
        }
    };
    let tx_pool = member.pool().clone();
    let parameters = match tx_pool.shared.get() {
        Some(parameters) => parameters,
        // Boxed, like the refusal below: the session's future is kept for the client's life,
        // these run once.
        None => match Box::pin(first_lease(&tx_pool, record, pooled.accept, limits)).await {
            Ok(parameters) => parameters,
            Err(failure) => {
                let settings = SessionSettings::default();
                let mut session = Session::new(client(stream, tx_pool, settings, Duration::ZERO));
                return Box::pin(session.refuse_lease(failure)).await;
            }
        },
    };
    let settings = SessionSettings::from_startup(startup);
    // The client's own startup values win over the server's defaults.
    let parameters: Vec<(String, String)> = parameters
        .iter()
        .map(|(name, value)| {
            let value = startup.param(name).unwrap_or(value);
            (name.clone(), value.to_string())
        })
        .collect();
    let idle = listener.config.timeouts.client;
    let mut session = Session::new(client(stream, tx_pool, settings, idle));
    let key = &session.client.cancel;
    let welcome = super::auth::welcome(&parameters, key.pid, &key.key);
    if let Err(error) = crate::net::send_all(&mut session.client.stream, &welcome).await {
        return Err(Refusal::new(Termination::ClientClosed, error));
    }
    let ending = session.serve().await;
    let moved = session.moved;
    drop(member);
    record.bytes_in += moved.to_server;
    record.bytes_out += moved.to_client;
    ending
}

/// The first lease of a (database, user) pool: the server's answer to the login (a refusal
/// reaches the client as is) and the parameters it reports, which later clients are told
/// without a lease. A function of its own so that the server connection (1.3 KB) is never
/// laid out in the future a pooled client keeps for its life.
async fn first_lease(
    tx_pool: &Arc<TxPool>,
    record: &mut ConnectionRecord,
    accept: RoleFilter,
    limits: &MessageLimits,
) -> Result<Arc<[(String, String)]>, LeaseFailure> {
    let conn = tx_pool.lease(record.client, accept, limits).await?;
    record.server = Some(conn.server.name.clone());
    let parameters = Arc::from(conn.link.parameters.as_slice());
    tx_pool.give_back_unused(conn);
    Ok(parameters)
}

/// Prepares `statement` on the held connection first if it is not there yet.
fn ensure_prepared(held: &mut Held, statement: &Statement) {
    if held.conn.link.prepared.touch(&statement.server_name) {
        return;
    }
    held.conn.link.prepared.insert(&statement.server_name);
    held.send(&statement.parse.0);
    held.expected.push_back(Expect::Injected(
        Kind::Parse,
        Some(statement.server_name.clone()),
    ));
}

/// ParseComplete, answered by the proxy for every Parse of a statement the connection
/// has: a static message, not a new buffer each time.
fn parse_complete() -> Frame {
    Frame(bytes::Bytes::from_static(b"1\0\0\0\x04"))
}

/// Runs `statements` (ROLLBACK, DISCARD ALL) on a connection nobody holds, one simple
/// query each; true when all succeeded and the server is idle after them.
async fn reset_connection(conn: &mut ServerConn, statements: &[&str]) -> bool {
    if statements.is_empty() {
        return true;
    }
    let mut out = Vec::new();
    for sql in statements {
        out.extend_from_slice(&frames::query(sql).0);
    }
    let run = async {
        crate::net::send_all(&mut conn.link.stream, &out)
            .await
            .ok()?;
        let mut due = statements.len();
        let mut ok = true;
        while due > 0 {
            while let Some(frame) = conn.link.reader.next_frame().ok()? {
                match frame.tag() {
                    b'E' => ok = false,
                    b'Z' => {
                        due -= 1;
                        if due == 0 {
                            return Some(ok && frame.body().first() == Some(&b'I'));
                        }
                    }
                    _ => {}
                }
            }
            if conn.link.reader.fill(&mut conn.link.stream).await.ok()? == 0 {
                return None;
            }
        }
        Some(ok)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), run).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_static_parse_complete_is_a_framed_parse_complete() {
        assert_eq!(super::parse_complete(), super::Frame::new(b'1', &[]));
    }
}
