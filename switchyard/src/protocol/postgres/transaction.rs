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

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::PostgresHandler;
use super::cancel::Registration;
use super::classify::Classification;
use super::codec::Startup;
use super::conversation::{Buffers, Conversation, Hold};
use super::errors::{fatal, sqlstate};
use super::frames::{self, FrameReader, Message};
use super::login::ServerCredential;
use super::pooler::{LeaseFailure, Parameters, Postgres, ServerConn, TxPool};
use super::settings::SessionSettings;
use super::split::{SplitConfig, Target};
use super::startup::Refusal;
use super::tls::ClientStream;
use crate::config::MessageLimits;
use crate::lazy_timer::LazyTimer;
use crate::listener::ListenerSettings;
use crate::observe::{ConnectionRecord, Termination};
use crate::on_wake::{Gate, Interruption};
use crate::upstream::tx_pool::{Member, Pairing};
use crate::upstream::{Pool, RoleFilter};

/// What woke a transaction's wait (see `Session::transaction`).
enum Woke {
    /// The server's socket was read.
    Server(std::io::Result<usize>),
    /// The client's socket was read.
    Client(std::io::Result<usize>),
    /// The server was cut or the proxy is stopping.
    Interrupted(Interruption),
}

/// What the client loop needs from the session that started it.
struct Client {
    /// The client's stream, after startup and authentication.
    pub stream: ClientStream,
    /// The client's place in the pool of server connections for its database and user
    /// (given up when the client leaves).
    pub member: Member<Postgres>,
    /// Which servers the client's transactions may run on (the listener's role).
    pub accept: RoleFilter,
    /// The listener's handler: its message size limits.
    pub handler: Arc<PostgresHandler>,
    /// Idle time allowed between transactions (`timeouts.client`; zero: no limit).
    pub idle: Duration,
    /// The client's cancel key, pointed at the connection it holds.
    pub cancel: Registration,
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

/// One transaction's hold on a server connection: the connection, and the state kept
/// about it (`conversation`).
struct Held {
    conn: ServerConn,
    hold: Hold,
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
struct Session {
    client: Client,
    reader: FrameReader,
    /// The client's side of the session, without the sockets.
    conv: Conversation,
    moved: Moved,
    /// The idle limit between transactions, and the time to doze: one lazy timer for the
    /// session, whose deadline every transaction moves later. None while dozing.
    idle_timer: Option<LazyTimer>,
    /// The last transaction's buffers, for the next (boxed: none while the client waits,
    /// and the session is part of what a dozing client keeps).
    buffers: Option<Box<Buffers>>,
}

impl Client {
    /// The pool of server connections for the client's database and user.
    fn pool(&self) -> &Arc<TxPool> {
        self.member.pool()
    }

    fn limits(&self) -> &MessageLimits {
        &self.handler.options.limits
    }

    /// Fires at hard shutdown: this worker's token (see `Context::hard_stop_here`), looked
    /// up rather than kept, as the client never leaves its worker.
    fn hard_stop(&self) -> CancellationToken {
        self.handler.state.context.hard_stop_here()
    }
}

/// What the wait between transactions ended with.
enum Next {
    /// The client's next message has come whole (the reader's next frame).
    Message,
    /// The client closed its connection.
    Closed,
    /// Nothing for [`PARK_AFTER`](crate::idle_lot::PARK_AFTER): time to doze, until
    /// the idle limit (if any).
    Doze(Option<Instant>),
}

/// The client's message that opens its next transaction, left in the reader when
/// [`Next::Message`] said it had come whole: it is taken with the transaction's other
/// messages once a connection is leased.
fn opening(reader: &FrameReader) -> Option<Message<'_>> {
    reader.peek_frame().ok().flatten()
}

/// How serving a pooled client stopped.
pub enum Served {
    /// The session ended: the termination reason for the log, or the refusal.
    Ended(Result<Termination, Refusal>),
    /// The client has been idle a while, holding no server connection and no buffer: it
    /// can wait without a task (`idle_lot`) until it sends again or `deadline` passes.
    Idle {
        /// The end of the idle limit between transactions (`timeouts.client`).
        deadline: Option<Instant>,
    },
}

impl Session {
    fn new(client: Client, settings: SessionSettings) -> Self {
        Self {
            reader: FrameReader::new(client.limits().message),
            conv: Conversation::new(settings),
            moved: Moved::default(),
            idle_timer: None,
            buffers: None,
            client,
        }
    }

    /// Runs the session until the client leaves (the termination reason for the log; the
    /// bytes moved are in `moved`) or has been idle long enough to doze.
    async fn serve(&mut self, address: SocketAddr) -> Served {
        loop {
            // Between transactions: wait for the client's next message.
            match self.next_client_frame().await {
                Ok(Next::Message) => {}
                Ok(Next::Closed) => return Served::Ended(Ok(Termination::ClientClosed)),
                Ok(Next::Doze(deadline)) => return Served::Idle { deadline },
                Err(refusal) => return Served::Ended(Err(refusal)),
            };
            if opening(&self.reader).is_none_or(|first| first.tag() == b'X') {
                return Served::Ended(Ok(Termination::ClientClosed));
            }
            // Boxed: a transaction's future is large and lives only while it runs, so the
            // wait between transactions (where pooled clients spend their time) stays small.
            if let Some(ending) = Box::pin(self.transact(address)).await {
                return Served::Ended(ending);
            }
        }
    }

    /// Runs the transaction the client's next message opens, from the lease to the
    /// connection's return; `Some` when the session ends with it.
    async fn transact(&mut self, address: SocketAddr) -> Option<Ending> {
        let split = self.client.split.as_deref();
        let plan = opening(&self.reader).and_then(|first| self.conv.plan(split, first));
        if let Some((class, _)) = &plan {
            match self.answer_route_setting(class).await {
                Ok(true) => {
                    // Answered by the proxy: the message is done with.
                    let _ = self.reader.next_frame();
                    return None;
                }
                Ok(false) => {}
                Err(refusal) => return Some(Err(refusal)),
            }
        }
        let target = plan.as_ref().map(|(_, target)| *target);
        let conn = match self.lease(target, address).await {
            Ok(conn) => conn,
            Err(failure) => return Some(Err(self.refuse_lease(failure).await)),
        };
        self.client.cancel.retarget(&conn.link.cancel);
        let mut held = Held {
            conn,
            hold: Hold::new(
                self.buffers
                    .take()
                    .map(|buffers| *buffers)
                    .unwrap_or_default(),
            ),
        };
        held.hold.class = plan.map(|(class, _)| class);
        self.prepare(&mut held).await;
        let outcome = self.transaction(&mut held).await;
        if let Some(tenant) = &self.client.tenant {
            tenant
                .transactions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.client.cancel.untarget();
        match outcome {
            Ok(()) => {
                self.buffers = Some(Box::new(held.hold.take_buffers()));
                self.client.pool().give_back(held.conn);
                None
            }
            // The client stays: its next transaction gets a healthy connection.
            Err(Stop::ServerLost(_)) => {
                self.buffers = Some(Box::new(held.hold.take_buffers()));
                self.client.pool().discard(held.conn);
                None
            }
            Err(stop @ Stop::ServerLostInTransaction(_)) => {
                self.client.pool().discard(held.conn);
                Some(Err(stop.into()))
            }
            Err(stop @ (Stop::ClientClosed(_) | Stop::BadMessage(_) | Stop::Shutdown)) => {
                Some(self.leave(held, stop).await)
            }
        }
    }

    /// Reads the client's next whole message. Enforces the idle limit between
    /// transactions, and says when the client, idle for [`PARK_AFTER`] with no message
    /// partly read, may doze.
    ///
    /// [`PARK_AFTER`]: crate::idle_lot::PARK_AFTER
    async fn next_client_frame(&mut self) -> Result<Next, Refusal> {
        loop {
            match self.reader.peek_frame() {
                Ok(Some(_)) => return Ok(Next::Message),
                Ok(None) => {}
                Err(error) => return Err(self.malformed(error).await.into()),
            }
            // Zero (or beyond the clock's range): no limit.
            let idle = self.client.idle;
            let now = Instant::now();
            let deadline = now.checked_add(idle).filter(|_| !idle.is_zero());
            // A message partly read keeps the client awake: only the idle limit applies.
            let doze_at = (!self.reader.has_partial()).then(|| now + crate::idle_lot::PARK_AFTER);
            let wake_at = [deadline, doze_at].into_iter().flatten().min();
            // While the client sends nothing, the session holds no buffers: they are taken
            // again with its next message. One poll function for the read, the idle limit
            // and the hard stop: a `select!` over their futures was most of the future an
            // idle pooled client keeps.
            let hard_stop = self.client.hard_stop();
            let Self {
                client,
                reader,
                conv,
                buffers,
                idle_timer,
                ..
            } = self;
            let mut give_back = || {
                conv.to_client = Vec::new();
                *buffers = None;
            };
            let idle_timer = idle_timer.get_or_insert_with(LazyTimer::default);
            let mut hard_stop = std::pin::pin!(hard_stop.cancelled());
            let read = std::future::poll_fn(|cx| {
                if hard_stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(Refusal::from(Stop::Shutdown)));
                }
                if let Some(wake_at) = wake_at
                    && let Poll::Ready(now) = idle_timer.poll_until(cx, wake_at)
                {
                    if deadline.is_some_and(|deadline| now >= deadline) {
                        return Poll::Ready(Err(Refusal::new(
                            Termination::ClientTimeout,
                            "idle between transactions",
                        )));
                    }
                    // Not the idle limit: the time to doze.
                    return Poll::Ready(Ok(None));
                }
                reader
                    .poll_fill_idle(cx, &mut client.stream, &mut give_back)
                    .map(|read| Ok(Some(read)))
            })
            .await?;
            match read {
                None => {
                    // The timer goes too: the lot keeps the deadline.
                    self.idle_timer = None;
                    return Ok(Next::Doze(deadline));
                }
                Some(Ok(0) | Err(_)) => return Ok(Next::Closed),
                Some(Ok(n)) => self.moved.to_server += n as u64,
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

    /// `SET switchyard.route = ...` on its own, between transactions: answered by the
    /// proxy (see [`Conversation::answer_route_setting`]). True when answered.
    async fn answer_route_setting(&mut self, class: &Classification) -> Result<bool, Refusal> {
        if !self.conv.answer_route_setting(class) {
            return Ok(false);
        }
        self.flush_client().await?;
        Ok(true)
    }

    /// Leases a connection for the planned role: the listener's servers without a split;
    /// a primary, or a replica (the primary when no replica is up) with one. `address`
    /// is the client's, for balancing.
    async fn lease(
        &self,
        target: Option<Target>,
        address: SocketAddr,
    ) -> Result<ServerConn, LeaseFailure> {
        let client = &self.client;
        let role = target.map(Target::role);
        client
            .pool()
            .lease_for_role(address, client.accept, role, client.limits())
            .await
    }

    /// No connection for the client's transaction: FATAL with why, then the end.
    async fn refuse_lease(&mut self, failure: LeaseFailure) -> Refusal {
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
                return Refusal::new(Termination::ServerLoginFailed, error);
            }
        };
        let _ = crate::net::send_all(&mut self.client.stream, &fatal(code, &message)).await;
        let _ = self.client.stream.shutdown().await;
        Refusal::new(reason, message)
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
        if let Some(reset) = self.conv.reset_for(&mut held.conn.link.tracked) {
            let ok = reset_connection(&mut held.conn, &[reset]).await;
            Conversation::reset_done(&mut held.conn.link.tracked, ok);
            if !ok {
                tracing::warn!(server = %held.conn.server.name, "resetting a server connection failed; closing it");
                // Every client message is sent, and the first send fails.
                let _ = held.conn.link.stream.shutdown().await;
                return;
            }
        }
        self.conv
            .ready_connection(&mut held.hold, &mut held.conn.link.tracked);
    }

    /// Runs one transaction from its first client message (the reader's next) until the
    /// connection is idle again. `Err` ends the session (the client left, the server was
    /// lost, a bad message).
    async fn transaction(&mut self, held: &mut Held) -> Result<(), Stop> {
        // Waited on once for the whole transaction, not made again for each message (a
        // cancellation future registers with its token when first polled), and looked at
        // only when it fires, not at each of the transaction's wake-ups (see `on_wake`).
        let (hard_stop, cut) = (self.client.hard_stop(), held.conn.cut.clone());
        let mut interrupted = crate::on_wake::cut_or_stop(&cut, &hard_stop);
        let (server_gate, client_gate) = (Gate::default(), Gate::default());
        // The client sent Terminate: what it sent before still runs and is answered, as
        // the server would do (a client may send its last statement and Terminate without
        // waiting in between), then the session ends; nothing more is read from it. Only
        // answers that will come are waited for (up to the last Query or Sync): the
        // server holds back what follows a Sync until the next one, which a client that
        // has left never sends.
        let mut leaving = false;
        loop {
            while !leaving {
                match self.reader.next_frame() {
                    Ok(Some(message)) if message.tag() == b'X' => leaving = true,
                    Ok(Some(message)) => {
                        let conn = &mut held.conn.link.tracked;
                        self.conv
                            .client_message(&mut held.hold, conn, message)
                            .map_err(|e| Stop::BadMessage(e.to_string()))?;
                    }
                    Ok(None) => break,
                    Err(error) => return Err(self.malformed(error).await),
                }
            }
            if !held.hold.to_server.is_empty() {
                let written =
                    crate::net::send_all(&mut held.conn.link.stream, &held.hold.to_server).await;
                held.hold.to_server.clear();
                if written.is_err() {
                    return self.server_lost(held, "server write failed").await;
                }
            }
            self.flush_client().await?;
            if leaving && held.hold.synced() {
                return Err(Stop::ClientClosed("Terminate".to_string()));
            }
            if self.conv.can_give_back(&held.hold) {
                return Ok(());
            }
            // The cut and the stop first once they fired (a load of a flag until then), so
            // that a long stream cannot hide them; then the server, so that what it
            // answers is taken before more is read from the client to send it (a server
            // blocked on writing to us reads nothing we send it); each socket only when it
            // woke the task (see `Gate`).
            let woke = std::future::poll_fn(|cx| {
                if interrupted.is_woken()
                    && let Poll::Ready(interruption) = Pin::new(&mut interrupted).poll(cx)
                {
                    return Poll::Ready(Woke::Interrupted(interruption));
                }
                let server = &mut held.conn.link;
                if let Poll::Ready(read) =
                    server_gate.poll(cx, |cx| server.reader.poll_fill(cx, &mut server.stream))
                {
                    return Poll::Ready(Woke::Server(read));
                }
                if !leaving {
                    let (reader, client) = (&mut self.reader, &mut self.client.stream);
                    if let Poll::Ready(read) =
                        client_gate.poll(cx, |cx| reader.poll_fill(cx, client))
                    {
                        return Poll::Ready(Woke::Client(read));
                    }
                }
                Pin::new(&mut interrupted).poll(cx).map(Woke::Interrupted)
            })
            .await;
            match woke {
                Woke::Server(Ok(0) | Err(_)) => {
                    return self.server_lost(held, "server closed the connection").await;
                }
                Woke::Server(Ok(n)) => {
                    self.moved.to_client += n as u64;
                    self.server_messages(held).await?;
                }
                Woke::Client(Ok(0) | Err(_)) => {
                    return Err(Stop::ClientClosed(
                        "client left mid-transaction".to_string(),
                    ));
                }
                Woke::Client(Ok(n)) => self.moved.to_server += n as u64,
                Woke::Interrupted(Interruption::Cut) => {
                    return self.server_lost(held, "server taken out of service").await;
                }
                Woke::Interrupted(Interruption::Stop) => return Err(Stop::Shutdown),
            }
        }
    }

    async fn flush_client(&mut self) -> Result<(), Stop> {
        if self.conv.to_client.is_empty() {
            return Ok(());
        }
        let written = crate::net::send_all(&mut self.client.stream, &self.conv.to_client).await;
        self.conv.to_client.clear();
        written.map_err(|e| Stop::ClientClosed(e.to_string()))
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
            let answered =
                self.conv
                    .server_message(&mut held.hold, &mut held.conn.link.tracked, frame);
            if answered {
                self.client
                    .pool()
                    .stats
                    .queries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if held.hold.server_fatal() {
                // The server is ending this session: nothing more goes to it, and the
                // client's next messages wait for another connection.
                return self.server_lost(held, "the server ended the session").await;
            }
        }
    }

    /// The server connection broke. Between statements of no transaction (the server
    /// was idle at its last ReadyForQuery, and the client holds no session state there),
    /// each answer the client waits for becomes an error and the client stays: its next
    /// transaction starts on another connection. Inside a transaction, or pinned, the
    /// client's session cannot be carried on truthfully: FATAL 08006 and the end.
    async fn server_lost(&mut self, held: &mut Held, detail: &str) -> Result<(), Stop> {
        tracing::warn!(server = %held.conn.server.name, detail, "server connection lost");
        let message = format!("server connection lost: {detail}");
        if !self.conv.can_continue_without(&held.hold) {
            self.conv
                .to_client
                .extend_from_slice(&fatal(sqlstate::CONNECTION_FAILURE, &message));
            self.flush_client().await?;
            return Err(Stop::ServerLostInTransaction(message));
        }
        self.conv.answer_lost(&held.hold, &message);
        self.flush_client().await?;
        Err(Stop::ServerLost(message))
    }

    /// The session ends while holding a connection: it goes back clean, or is closed.
    async fn leave(&mut self, mut held: Held, end: Stop) -> Ending {
        let pool = self.client.pool().clone();
        let clean = match self.conv.leaving_reset(&held.hold) {
            Some(reset) => reset_connection(&mut held.conn, &reset).await,
            None => false,
        };
        if clean {
            self.conv
                .left_clean(&held.hold, &mut held.conn.link.tracked);
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
pub struct Pooled {
    /// The routed pool.
    pub pool: Arc<Pool>,
    /// What switchyard logs in to servers with for this client's user.
    pub credential: ServerCredential,
    /// Which servers the client's transactions may run on (the listener's role).
    pub accept: RoleFilter,
    /// The read/write split, when the route or pool enables it.
    pub split: Option<Arc<SplitConfig>>,
    /// The usage of the client's tenant (a pool with `resolver`).
    pub tenant: Option<Arc<crate::accounting::Usage>>,
}

/// A transaction-mode client that was told it is logged in: its session, and its place
/// in the (database, user) pool. The caller keeps it for the client's life and serves it
/// by reference, so the future a pooled client waits in holds it once, beside nothing of
/// the login's (see `docs/benchmarks.md`, "Idle memory").
pub struct PooledClient {
    session: Session,
}

impl PooledClient {
    /// Serves the client's transactions until it leaves or may doze; `address` is the
    /// client's, for balancing (kept by the connection's record, not twice). The session's
    /// own future, not one around it: this is what a pooled client keeps while it waits.
    pub fn serve(&mut self, address: SocketAddr) -> impl Future<Output = Served> + Send + '_ {
        self.session.serve(address)
    }

    /// The handler of the listener the client came through.
    pub fn handler(&self) -> &Arc<PostgresHandler> {
        &self.session.client.handler
    }

    /// Ready once the dozing client has sent something or closed (see
    /// [`crate::idle_lot::Sleeper::poll_stirred`]).
    pub fn poll_stirred(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        crate::protocol::poll_stirred(&self.session.client.stream, cx)
    }

    /// The hard stop of the client's worker, which its lot watches while it dozes.
    pub fn hard_stop(&self) -> CancellationToken {
        self.session.client.hard_stop()
    }

    /// Adds the bytes the client's transactions moved to `record`.
    pub fn count_moved(&self, record: &mut ConnectionRecord) {
        record.bytes_in += self.session.moved.to_server;
        record.bytes_out += self.session.moved.to_client;
    }
}

/// Starts a transaction-mode session for a client that switchyard authenticated. The
/// client is told the parameters of the pool's latest server login, so its login waits
/// for no server connection (a client that connects per transaction would otherwise queue
/// behind the transactions of others before it could even begin). Only the first client
/// of a (database, user) leases a connection first: that login checks that the server
/// accepts the user and database (its refusal reaches the client as is) and learns the
/// parameters. Returns once the client is told it is logged in; its transactions are
/// [`PooledClient::serve`]'s.
pub async fn start(
    handler: &Arc<PostgresHandler>,
    listener: &ListenerSettings,
    stream: ClientStream,
    startup: Startup,
    pooled: Pooled,
    record: &mut ConnectionRecord,
) -> Result<PooledClient, Refusal> {
    let state = &handler.state;
    let database = startup.database().unwrap_or_default();
    let user = startup.param("user").unwrap_or_default();
    let limits = &handler.options.limits;
    let client = |stream, member, idle| Client {
        stream,
        member,
        accept: pooled.accept,
        handler: handler.clone(),
        idle,
        cancel: state.cancel.register_unbound(4),
        split: pooled.split.clone(),
        tenant: pooled.tenant.clone(),
    };
    let member = match state.tx_pools.join(
        &pooled.pool,
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
    let tx_pool = member.pool();
    let parameters = match tx_pool.shared.get() {
        Some(parameters) => parameters,
        // Boxed, like the refusal below: the session's future is kept for the client's life,
        // these run once.
        None => match Box::pin(first_lease(tx_pool, record, pooled.accept, limits)).await {
            Ok(parameters) => parameters,
            Err(failure) => {
                let settings = SessionSettings::default();
                let mut session = Session::new(client(stream, member, Duration::ZERO), settings);
                return Err(Box::pin(session.refuse_lease(failure)).await);
            }
        },
    };
    // What the session keeps for the client's life is made in the lasting heap (see
    // `memory`): a pooled client leaves its task and future when it dozes, so otherwise
    // these few small allocations would pin pages the login's own came and went in.
    let settings = crate::memory::lasting(|| SessionSettings::from_startup(&startup));
    let idle = listener.config.timeouts.client;
    let mut session =
        crate::memory::lasting(|| Session::new(client(stream, member, idle), settings));
    let key = &session.client.cancel;
    // The client's own startup values win over the server's defaults.
    let told = |out: &mut Vec<u8>| parameters.tell(&startup, out);
    let welcome = super::auth::welcome(told, key.pid, &key.key);
    if let Err(error) = crate::net::send_all(&mut session.client.stream, &welcome).await {
        return Err(Refusal::new(Termination::ClientClosed, error));
    }
    Ok(PooledClient { session })
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
) -> Result<Arc<Parameters>, LeaseFailure> {
    let conn = tx_pool.lease(record.client, accept, limits).await?;
    record.server = Some(conn.server.name.as_str().into());
    let parameters = conn.link.parameters.clone();
    tx_pool.give_back_unused(conn);
    Ok(parameters)
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
