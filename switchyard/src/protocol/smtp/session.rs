//! One client's SMTP session: the conversation the proxy holds, and the relay of each
//! transaction to the server its first recipient routes to.
//!
//! Commands are taken one at a time from what the client sent (pipelined or not) and each
//! gets exactly one reply, in order: the proxy's own, or the server's reply to the same
//! command forwarded byte for byte. Replies are written when the proxy needs more from the
//! client, so a pipelined group is answered in one write.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use smtp_proto::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::SmtpHandler;
use super::command::{self, Line};
use super::data::{DotStuffer, EndScanner, Refusal, Scan};
use super::log::MessageRecord;
use super::reply;
use super::sasl;
use super::server::{self, Begun, Failure, Opening, ServerSession};
use crate::accept::{self, Opened, TlsClient};
use crate::config::{KeyFact, StartTls};
use crate::listener::{Accepted, Listener, ListenerSettings};
use crate::login_gate::Login;
use crate::observe::{ConnectionRecord, Termination};
use crate::resolve::{LookupContext, ResolveError};
use crate::route::RouteFacts;
use crate::tls::{Rewind, ServerTls};
use crate::upstream::{Pool, Resolved};

/// Largest read from a client at once: a message streams through in pieces this size.
const READ_CHUNK: usize = 64 * 1024;

/// A client connection: plaintext (the bytes read with a PROXY header first), or TLS
/// (implicit, or after STARTTLS).
type ClientStream = Either<Rewind<TcpStream>, Box<TlsClient>>;

/// Handles one client connection to the end: one access log line per message, and one
/// for the connection. The connection is taken apart before the future is made, so the
/// future (which lives as long as the session) keeps its parts once, not also the whole.
pub fn serve(handler: Arc<SmtpHandler>, connection: Accepted) -> impl Future<Output = ()> + Send {
    let Accepted {
        listener,
        settings,
        stream,
        peer,
        occupancy,
    } = connection;
    let mut record = ConnectionRecord::accepted(&listener.name, peer);
    async move {
        let started = Instant::now();
        record.termination = match accept::open(&listener, &settings, stream, peer).await {
            Ok(opened) => converse(&handler, &listener, &settings, opened, &mut record).await,
            Err(termination) => termination,
        };
        if !record.termination.is_normal() {
            tracing::debug!(listener = %listener.name, client = %record.client, reason = %record.termination, "smtp session ended");
        }
        record.finish(started);
        handler.context.finish_connection(&record);
        drop(occupancy);
    }
}

/// The session of a client whose connection is open (past any PROXY header): admitted by
/// the listener's login gate, its TLS terminated when the listener speaks it from the
/// first byte, then the conversation.
async fn converse(
    handler: &SmtpHandler,
    listener: &Listener,
    settings: &ListenerSettings,
    opened: Opened,
    record: &mut ConnectionRecord,
) -> Termination {
    record.client = opened.client;
    let destination = opened.destination(listener);
    let options = &handler.options;
    let tls = settings.tls.clone();
    let implicit = tls.as_ref().filter(|_| options.implicit_tls);
    // The SMTP "login": counted and due from the accept until the envelope has chosen a
    // server (see `Session::login`).
    let (limit, timeout) = (
        settings.config.max_logins_per_address,
        settings.config.timeouts.login,
    );
    let Some(login) = listener.logins.begin(record.client.ip(), limit, timeout) else {
        let detail = "too many connections from its address before their envelope";
        refused(listener, record.client, detail);
        // An implicit TLS client reads nothing before its handshake, which the proxy does
        // not spend on a refused client: it is just closed.
        if implicit.is_none() {
            let mut client = opened.into_rewind();
            let refusal = format!(
                "421 4.7.0 {} Error: too many connections from your address\r\n",
                handler.hostname
            );
            let _ = client.write_all(refusal.as_bytes()).await;
            let _ = client.shutdown().await;
        }
        return Termination::TooManyLogins;
    };
    let client = match implicit {
        Some(tls) => match within_login(Some(&login), opened.terminate_tls(listener, tls)).await {
            Ok(Ok((stream, _))) => Either::Right(stream),
            Ok(Err(termination)) => return termination,
            Err(termination) => {
                refused(listener, record.client, LOGIN_TIMED_OUT);
                return termination;
            }
        },
        None => Either::Left(opened.into_rewind()),
    };
    let secure = matches!(client, Either::Right(_));
    let starttls = if secure {
        None
    } else {
        tls.filter(|_| options.starttls != StartTls::Off)
    };
    let mut session = Session {
        handler,
        listener,
        record,
        client: Some(client),
        starttls,
        secure,
        destination,
        login: Some(login),
        authenticated: None,
        input: Vec::new(),
        output: Vec::new(),
        idle: settings.config.timeouts.client,
        helo: None,
        esmtp: false,
        transaction: None,
        upstream: None,
    };
    let termination = session.run().await;
    session.close_upstream().await;
    termination
}

/// Counts and logs a client the proxy refuses to go on with.
fn refused(listener: &Listener, client: std::net::SocketAddr, detail: &str) {
    listener.stats.failed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(listener = %listener.name, %client, detail, "smtp client refused");
}

/// Why a client past its login deadline is refused, for the log.
const LOGIN_TIMED_OUT: &str = "no envelope within timeouts.login";

/// Runs `work` within the login's deadline while there is a login (a client past it ends
/// with `login_timeout`), else as it is.
async fn within_login<T>(
    login: Option<&Login<'_>>,
    work: impl Future<Output = T>,
) -> Result<T, Termination> {
    match login {
        Some(login) => tokio::time::timeout_at(login.deadline(), work)
            .await
            .map_err(|_| Termination::LoginTimeout),
        None => Ok(work.await),
    }
}

/// A mail transaction, from MAIL FROM to its final reply.
struct Transaction {
    /// The MAIL command line as the client sent it, replayed to the server.
    mail: Vec<u8>,
    /// The sender address.
    from: String,
    /// The pool the first recipient routed to (for a pool with `resolver`, the pool of
    /// its answer), once one has; later recipients must route to the same.
    route: Option<Arc<Pool>>,
    /// Recipients the server accepted.
    recipients: u32,
    /// BDAT bytes so far.
    size: u64,
    /// Set while BDAT chunks go to a server without `CHUNKING` as a `DATA` body.
    stuffer: Option<DotStuffer>,
    started: Instant,
}

/// The server connection in use and the route that chose it (a reload may have moved it
/// to another pool: the route is what later transactions compare).
struct Upstream {
    route: Arc<Pool>,
    session: ServerSession,
}

/// A client whose AUTH a server accepted.
struct Authenticated {
    /// That server's pool: every transaction of the session goes there.
    pool: Arc<Pool>,
    /// The name it logged in as, read from the exchange (`None` if that showed none): a
    /// later server session is told it with `XCLIENT LOGIN`.
    login: Option<String>,
}

/// Whether the session goes on after a command.
enum Flow {
    Continue,
    Quit,
}

struct Session<'a> {
    handler: &'a SmtpHandler,
    listener: &'a Listener,
    record: &'a mut ConnectionRecord,
    /// `None` only during the STARTTLS handshake.
    client: Option<ClientStream>,
    /// The certificates STARTTLS upgrades with, while it is offered.
    starttls: Option<Arc<ServerTls>>,
    /// Whether the client's connection is TLS.
    secure: bool,
    /// The address the client reached.
    destination: std::net::SocketAddr,
    /// The SMTP "login", from the accept until the envelope has chosen a server (the
    /// first RCPT opened on one): the greeting, EHLO, STARTTLS, AUTH and MAIL. It counts
    /// against `max_logins_per_address` and must end within `timeouts.login` (time spent
    /// waiting for servers excused); `None` once over.
    login: Option<Login<'a>>,
    /// Set once a server accepted the client's AUTH.
    authenticated: Option<Authenticated>,
    /// Client bytes read and not yet taken.
    input: Vec<u8>,
    /// Replies not yet written.
    output: Vec<u8>,
    idle: Duration,
    helo: Option<String>,
    esmtp: bool,
    transaction: Option<Transaction>,
    upstream: Option<Upstream>,
}

impl Session<'_> {
    async fn run(&mut self) -> Termination {
        let greeting = format!("220 {} ESMTP\r\n", self.handler.hostname);
        self.reply(greeting.as_bytes());
        loop {
            let line = match self.next_command().await {
                Ok(Some(line)) => line,
                Ok(None) => return Termination::ClientClosed,
                Err(termination) => return termination,
            };
            match self.command(&line).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => {
                    return match self.flush().await {
                        Ok(()) => Termination::ClientClosed,
                        Err(termination) => termination,
                    };
                }
                Err(termination) => {
                    let _ = self.flush().await;
                    return termination;
                }
            }
        }
    }

    /// Queues a reply to the client (written before the proxy next reads from it).
    fn reply(&mut self, bytes: &[u8]) {
        let code = bytes
            .get(..3)
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| digits.parse::<u16>().ok())
            .unwrap_or(500);
        self.handler
            .metrics
            .reply(&self.listener.name, reply::class(code));
        self.output.extend_from_slice(bytes);
    }

    async fn flush(&mut self) -> Result<(), Termination> {
        if self.output.is_empty() {
            return Ok(());
        }
        let Some(client) = self.client.as_mut() else {
            return Err(Termination::ClientError);
        };
        let write = async {
            client.write_all(&self.output).await?;
            client.flush().await
        };
        match tokio::time::timeout(self.idle, write).await {
            Ok(Ok(())) => {
                self.record.bytes_out += self.output.len() as u64;
                self.listener.stats.bytes_out.add(self.output.len() as u64);
                self.output.clear();
                Ok(())
            }
            Ok(Err(_)) => Err(Termination::ClientError),
            Err(_) => Err(Termination::ClientTimeout),
        }
    }

    /// Reads more from the client after writing the replies queued; `false` at its end.
    /// Waiting for a command (`between_commands`), a graceful shutdown ends the session
    /// with `421 4.3.2`. A client silent for `timeouts.client`, or still without an
    /// envelope at the login's deadline, gets `421 4.4.2`.
    async fn fill(&mut self, between_commands: bool) -> Result<bool, Termination> {
        self.flush().await?;
        let context = &self.handler.context;
        let Some(client) = self.client.as_mut() else {
            return Err(Termination::ClientError);
        };
        let idle = tokio::time::Instant::now() + self.idle;
        let login = self.login.as_ref().map(Login::deadline);
        let deadline = login.map_or(idle, |login| login.min(idle));
        let start = self.input.len();
        self.input.resize(start + READ_CHUNK, 0);
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, client.read(&mut self.input[start..])) => read,
            () = context.stopping.cancelled(), if between_commands => {
                self.input.truncate(start);
                let bye = format!("421 4.3.2 {} Service shutting down, closing connection\r\n", self.handler.hostname);
                self.reply(bye.as_bytes());
                let _ = self.flush().await;
                return Err(Termination::Shutdown);
            }
            () = context.hard_stop.cancelled() => {
                self.input.truncate(start);
                return Err(Termination::Shutdown);
            }
        };
        match read {
            Ok(Ok(n)) => {
                self.input.truncate(start + n);
                self.record.bytes_in += n as u64;
                self.listener.stats.bytes_in.add(n as u64);
                Ok(n > 0)
            }
            Ok(Err(_)) => {
                self.input.truncate(start);
                Err(Termination::ClientError)
            }
            Err(_) => {
                self.input.truncate(start);
                let bye = format!(
                    "421 4.4.2 {} Error: timeout exceeded\r\n",
                    self.handler.hostname
                );
                self.reply(bye.as_bytes());
                let _ = self.flush().await;
                if login.is_some_and(|login| login <= idle) {
                    self.refused(LOGIN_TIMED_OUT);
                    Err(Termination::LoginTimeout)
                } else {
                    Err(Termination::ClientTimeout)
                }
            }
        }
    }

    /// The next command line; `None` when the client closed between commands.
    async fn next_command(&mut self) -> Result<Option<Vec<u8>>, Termination> {
        loop {
            match command::frame(&self.input) {
                Line::Complete(len) => return Ok(Some(self.input.drain(..len).collect())),
                Line::TooLong => {
                    self.reply(b"500 5.5.2 Error: line too long\r\n");
                    let _ = self.flush().await;
                    self.refused("command line longer than 512 bytes");
                    return Err(Termination::BadMessage);
                }
                Line::Incomplete => {
                    if !self.fill(true).await? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Counts and logs a client the proxy refuses to go on with.
    fn refused(&self, detail: &str) {
        refused(self.listener, self.record.client, detail);
    }

    async fn command(&mut self, line: &[u8]) -> Result<Flow, Termination> {
        let request = match command::parse(line) {
            Ok(request) => request,
            Err(error) => {
                self.reply(command::refusal(&error).as_bytes());
                return Ok(Flow::Continue);
            }
        };
        // A server reading a body made of BDAT chunks would take any other command as
        // text: the message is abandoned, its server connection closed.
        let converting = self
            .transaction
            .as_ref()
            .is_some_and(|t| t.stuffer.is_some());
        if converting
            && !matches!(
                request,
                Request::Bdat { .. }
                    | Request::Noop { .. }
                    | Request::Help { .. }
                    | Request::Vrfy { .. }
                    | Request::Expn { .. }
            )
        {
            self.drop_upstream();
            self.transaction = None;
        }
        let needs_tls = matches!(
            request,
            Request::Mail { .. }
                | Request::Rcpt { .. }
                | Request::Data
                | Request::Bdat { .. }
                | Request::Auth { .. }
        );
        if needs_tls && !self.secure && self.handler.options.starttls == StartTls::Required {
            if let Request::Bdat { chunk_size, .. } = request {
                self.discard(chunk_size as u64).await?;
            }
            self.reply(b"530 5.7.0 Must issue a STARTTLS command first\r\n");
            return Ok(Flow::Continue);
        }
        match request {
            Request::Ehlo { host } | Request::Helo { host } => {
                let esmtp = line
                    .get(..4)
                    .is_some_and(|verb| verb.eq_ignore_ascii_case(b"EHLO"));
                self.end_transaction().await?;
                self.helo = Some(host.into_owned());
                self.esmtp = esmtp;
                let answer = if esmtp && self.starttls.is_some() {
                    self.handler.ehlo_starttls.clone()
                } else if esmtp && self.secure && self.handler.auth_pool().is_some() {
                    self.handler.ehlo_auth.clone()
                } else if esmtp {
                    self.handler.ehlo.clone()
                } else {
                    format!("250 {}\r\n", self.handler.hostname)
                };
                self.reply(answer.as_bytes());
            }
            Request::Mail { from } => {
                let max = self.handler.options.max_message_bytes;
                if self.helo.is_none() {
                    self.reply(b"503 5.5.1 Error: send HELO/EHLO first\r\n");
                } else if self.transaction.is_some() {
                    self.reply(b"503 5.5.1 Error: nested MAIL command\r\n");
                } else if from.size as u64 > max {
                    self.reply(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n");
                } else {
                    self.transaction = Some(Transaction {
                        mail: line.to_vec(),
                        from: from.address.into_owned(),
                        route: None,
                        recipients: 0,
                        size: 0,
                        stuffer: None,
                        started: Instant::now(),
                    });
                    self.reply(b"250 2.1.0 Ok\r\n");
                }
            }
            Request::Rcpt { to } => self.recipient(line, &to.address).await?,
            Request::Data => self.data(line).await?,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(line, chunk_size as u64, is_last).await?,
            Request::Rset => {
                if self.open_upstream_transaction().is_some() {
                    self.relay_command(line).await?;
                } else {
                    self.reply(b"250 2.0.0 Ok\r\n");
                }
                self.transaction = None;
            }
            Request::Noop { .. } => self.reply(b"250 2.0.0 Ok\r\n"),
            Request::Quit => {
                self.reply(b"221 2.0.0 Bye\r\n");
                return Ok(Flow::Quit);
            }
            Request::Vrfy { .. } | Request::Expn { .. } => {
                self.reply(b"502 5.5.1 Error: command not available\r\n");
            }
            Request::Help { .. } => self.reply(b"214 2.0.0 See RFC 5321\r\n"),
            Request::StartTls => return self.start_tls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                self.authenticate(line, mechanism, initial_response.as_bytes())
                    .await?;
            }
            Request::Lhlo { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                self.reply(b"502 5.5.1 Error: command not implemented\r\n");
            }
        }
        Ok(Flow::Continue)
    }

    /// STARTTLS: `220`, then the handshake with the listener's certificates. Whatever the
    /// client sent after the command in clear is dropped, never executed (CVE-2011-0411),
    /// and the session starts over: EHLO again, no transaction, a new server session.
    async fn start_tls(&mut self) -> Result<Flow, Termination> {
        let Some(tls) = self.starttls.take() else {
            self.reply(b"502 5.5.1 Error: command not offered\r\n");
            return Ok(Flow::Continue);
        };
        self.end_transaction().await?;
        self.close_upstream().await;
        self.reply(b"220 2.0.0 Ready to start TLS\r\n");
        self.flush().await?;
        if !self.input.is_empty() {
            tracing::debug!(listener = %self.listener.name, client = %self.record.client, bytes = self.input.len(), "dropped what was pipelined after STARTTLS");
            self.input.clear();
        }
        let Some(Either::Left(plain)) = self.client.take() else {
            return Err(Termination::ClientError);
        };
        // Bytes a PROXY header read brought along were taken as commands long ago; none
        // may follow into the handshake.
        let (_, socket) = plain.into_parts();
        let handshake = Box::pin(tls.accept(Rewind::new(bytes::Bytes::new(), socket)));
        let handshake = within_login(self.login.as_ref(), handshake).await;
        let Ok(handshake) = handshake else {
            self.refused(LOGIN_TIMED_OUT);
            return Err(Termination::LoginTimeout);
        };
        match handshake {
            Ok((stream, _)) => {
                self.client = Some(Either::Right(Box::new(stream)));
                self.secure = true;
                self.helo = None;
                self.esmtp = false;
                Ok(Flow::Continue)
            }
            Err(error) => {
                self.listener.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(listener = %self.listener.name, client = %self.record.client, %error, "STARTTLS handshake failed");
                Err(Termination::TlsHandshakeFailed)
            }
        }
    }

    /// The upstream session when the current transaction is open on it.
    fn open_upstream_transaction(&mut self) -> Option<&mut Upstream> {
        let open = self
            .transaction
            .as_ref()
            .is_some_and(|transaction| transaction.route.is_some());
        if open { self.upstream.as_mut() } else { None }
    }

    /// Ends the transaction in progress (EHLO/HELO resets it): the server's too, with
    /// RSET, its reply not passed on.
    async fn end_transaction(&mut self) -> Result<(), Termination> {
        if let Some(upstream) = self.open_upstream_transaction() {
            let reset = upstream.session.conversation.command(b"RSET\r\n").await;
            if let Err(failure) = reset {
                tracing::debug!(listener = %self.listener.name, detail = %failure.detail, "server lost at RSET");
                self.drop_upstream();
            }
        }
        self.transaction = None;
        Ok(())
    }

    /// A server that failed mid-session: the client is told (`421`) and the session ends.
    fn lost(&mut self, failure: &Failure) -> Termination {
        tracing::warn!(listener = %self.listener.name, client = %self.record.client, reason = %failure.termination, detail = %failure.detail, "smtp server session lost");
        let bye = format!(
            "421 4.4.2 {} Error: connection to the mail server lost\r\n",
            self.handler.hostname
        );
        self.reply(bye.as_bytes());
        self.drop_upstream();
        match failure.termination {
            Termination::ServerTimeout => Termination::ServerTimeout,
            _ if self.transaction.is_some() => Termination::ServerLostInTransaction,
            _ => Termination::ServerLost,
        }
    }

    async fn recipient(&mut self, line: &[u8], address: &str) -> Result<(), Termination> {
        if self.transaction.is_none() {
            self.reply(b"503 5.5.1 Error: need MAIL command\r\n");
            return Ok(());
        }
        let domain = command::domain_of(address);
        let facts = RouteFacts {
            domain: domain.as_deref(),
            ..RouteFacts::default()
        };
        let routed = match &self.authenticated {
            Some(authenticated) => Some(authenticated.pool.clone()),
            None => self.handler.routing.pool(&facts).cloned(),
        };
        let Some(pool) = routed else {
            let answer = format!("550 5.7.1 <{address}>: Relay access denied\r\n");
            self.reply(answer.as_bytes());
            return Ok(());
        };
        let Some(resolved) = self.resolve(pool, domain.as_deref(), address).await else {
            return Ok(());
        };
        let route = self.transaction.as_ref().and_then(|t| t.route.clone());
        let answer = match route {
            Some(route) if !Arc::ptr_eq(&route, &resolved.pool) => {
                let answer = format!(
                    "451 4.3.0 <{address}>: served by another server; send it in another transaction\r\n"
                );
                self.reply(answer.as_bytes());
                return Ok(());
            }
            Some(_) => self.relay_command(line).await?,
            None => {
                let Some(answer) = self.begin_on(resolved.pool.clone(), line).await? else {
                    return Ok(());
                };
                // The connection's usage goes to the tenant of the answer that chose the
                // server (its last transaction's, when they differ).
                if let Some(tenant) = resolved.tenant() {
                    self.record.tenant = Some(tenant.into());
                }
                answer
            }
        };
        if answer.is_positive()
            && let Some(transaction) = &mut self.transaction
        {
            transaction.recipients += 1;
        }
        Ok(())
    }

    /// Where a recipient's transaction goes: `pool` itself, or for a pool with `resolver`
    /// the pool of the answer for the recipient's domain (`{domain}`), so that recipients
    /// whose domains are answered with the same servers share a transaction. `None` when
    /// the lookup gave none; the RCPT's answer is queued: `550 5.7.1` for no route or a
    /// refused domain, `451 4.3.0` when the resolver is unavailable (the client retries).
    async fn resolve(
        &mut self,
        pool: Arc<Pool>,
        domain: Option<&str>,
        address: &str,
    ) -> Option<Resolved> {
        let lookup = LookupContext {
            protocol: "smtp",
            listener: &self.listener.name,
            client: Some(self.record.client),
        };
        let fact = |fact| match fact {
            KeyFact::Domain => domain,
            _ => None,
        };
        let since = tokio::time::Instant::now();
        let resolved = pool.resolve(fact, &lookup).await;
        self.excuse(since);
        let error = match resolved {
            Ok(resolved) => return Some(resolved),
            Err(error) => error,
        };
        tracing::info!(listener = %self.listener.name, pool = %pool.name, client = %self.record.client, %error, "recipient not resolved");
        let answer = match error {
            ResolveError::Unavailable(_) => {
                format!("451 4.3.0 <{address}>: Temporary lookup failure\r\n")
            }
            ResolveError::Refused { .. } => {
                format!("550 5.7.1 <{address}>: Recipient address rejected: Access denied\r\n")
            }
            ResolveError::NoKey | ResolveError::NoRoute(_) => {
                format!("550 5.7.1 <{address}>: Relay access denied\r\n")
            }
        };
        self.reply(answer.as_bytes());
        None
    }

    /// Opens the transaction on a server of `pool` (the session there is kept from the
    /// last transaction when it went to the same route) with the client's MAIL and its
    /// first RCPT `rcpt`, in one write when the server offers PIPELINING, and queues the
    /// answer to the RCPT: the server's reply to it once the transaction is open (returned,
    /// `None` otherwise), else the server's refusal of MAIL. Once open, the envelope has
    /// chosen its server: the login is over. A server closing at MAIL (`421`) is let go.
    async fn begin_on(
        &mut self,
        pool: Arc<Pool>,
        rcpt: &[u8],
    ) -> Result<Option<reply::Reply>, Termination> {
        self.connect_to(&pool).await?;
        let (Some(transaction), Some(upstream)) = (&self.transaction, &mut self.upstream) else {
            return Err(Termination::ServerLost);
        };
        let since = tokio::time::Instant::now();
        let pipelining = upstream.session.pipelining;
        let begun = upstream
            .session
            .conversation
            .begin(&transaction.mail, rcpt, pipelining)
            .await;
        self.excuse(since);
        match begun.map_err(|failure| self.lost(&failure))? {
            Begun::Open(answer, bytes) => {
                self.reply(&bytes);
                if let Some(transaction) = &mut self.transaction {
                    transaction.route = Some(pool);
                }
                self.login = None;
                Ok(Some(answer))
            }
            Begun::Refused(answer, bytes) => {
                self.reply(&bytes);
                if answer.is_closing() {
                    self.drop_upstream();
                }
                Ok(None)
            }
        }
    }

    /// Makes the server session one of `pool`'s: the one open when it is, else a new one
    /// (the old one ended with QUIT). A failure is answered `421` and ends the session.
    async fn connect_to(&mut self, pool: &Arc<Pool>) -> Result<(), Termination> {
        let reuse = self
            .upstream
            .as_ref()
            .is_some_and(|upstream| Arc::ptr_eq(&upstream.route, pool));
        if !reuse {
            self.close_upstream().await;
            let helo = self.helo.clone().unwrap_or_default();
            let login = self.authenticated.as_ref().map(|a| a.login.as_deref());
            let opening = Opening {
                hostname: &self.handler.hostname,
                client: self.record.client,
                helo: &helo,
                esmtp: self.esmtp,
                destination: self.destination,
                login: login.flatten(),
            };
            let listener = self.listener;
            let route = pool.clone();
            let reroute = move || {
                let settings = listener.settings();
                let now = settings.handler_as::<SmtpHandler>();
                now.and_then(|now| {
                    now.routing
                        .routes
                        .iter()
                        .find(|r| r.pool.name == route.name)
                        .map(|r| r.pool.clone())
                        .or_else(|| now.routing.default.clone())
                })
            };
            let since = tokio::time::Instant::now();
            let opened = match login {
                Some(None) => Err(Failure::login_not_carried(
                    "its AUTH exchange showed no login name",
                )),
                _ => server::open(pool.clone(), reroute, &opening).await,
            };
            self.excuse(since);
            match opened {
                Ok(session) => {
                    self.record.pool = Some(session.pool.name.as_str().into());
                    self.record.server = Some(session.server.name.as_str().into());
                    self.upstream = Some(Upstream {
                        route: pool.clone(),
                        session,
                    });
                }
                Err(failure) => {
                    self.listener.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(listener = %self.listener.name, pool = %pool.name, client = %self.record.client, reason = %failure.termination, detail = %failure.detail, "no smtp server session");
                    self.reply(failure.reply(&self.handler.hostname).as_bytes());
                    return Err(failure.termination);
                }
            }
        }
        Ok(())
    }

    /// AUTH (PLAIN or LOGIN), only over TLS: relayed to a server of the listener's `pool`
    /// (no recipient has chosen one yet), challenges and responses line for line. Once the
    /// server accepts, every transaction of the session goes to that server session: an
    /// authenticated client submits through the server it logged in to. Should that
    /// session end (a refused message closes it), the next one of the pool is told the
    /// name the client logged in as with `XCLIENT LOGIN`, or is not opened.
    async fn authenticate(
        &mut self,
        line: &[u8],
        mechanism: u64,
        initial_response: &[u8],
    ) -> Result<(), Termination> {
        let name = match mechanism {
            smtp_proto::AUTH_PLAIN => "PLAIN",
            smtp_proto::AUTH_LOGIN => "LOGIN",
            _ => {
                self.reply(b"504 5.5.4 Unrecognized authentication type\r\n");
                return Ok(());
            }
        };
        let pool = self.handler.auth_pool().cloned();
        let refusal: Option<&[u8]> = if !self.secure {
            Some(b"538 5.7.11 Encryption required for requested authentication mechanism\r\n")
        } else if self.authenticated.is_some() {
            Some(b"503 5.5.1 Error: already authenticated\r\n")
        } else if self.transaction.is_some() || self.helo.is_none() {
            Some(b"503 5.5.1 Error: AUTH comes after EHLO and before MAIL\r\n")
        } else if pool.is_none() {
            Some(b"502 5.5.1 Error: command not offered\r\n")
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.reply(refusal);
            return Ok(());
        }
        let Some(pool) = pool else {
            return Ok(());
        };
        self.connect_to(&pool).await?;
        let offered = self.upstream.as_ref().is_some_and(|upstream| {
            upstream
                .session
                .auth
                .split_ascii_whitespace()
                .any(|m| m.eq_ignore_ascii_case(name))
        });
        if !offered {
            self.reply(b"504 5.5.4 Error: the mail server does not offer this mechanism\r\n");
            return Ok(());
        }
        // The name is in the client's first response: on the AUTH line, or the line after
        // the first 334.
        let mut login =
            (!initial_response.is_empty()).then(|| sasl::login_name(mechanism, initial_response));
        let mut answer = self.relay_command(line).await?;
        while answer.code == 334 {
            let Some(response) = self.next_command().await? else {
                return Err(Termination::ClientClosed);
            };
            login.get_or_insert_with(|| sasl::login_name(mechanism, &response));
            self.send_upstream(&response).await?;
            answer = self.relay_reply().await?.0;
        }
        if answer.code == 235 {
            self.authenticated = Some(Authenticated {
                pool,
                login: login.flatten(),
            });
        }
        Ok(())
    }

    /// Whether the transaction may send its message now; if not, the reply saying why is
    /// queued.
    fn ready_for_message(&mut self) -> bool {
        match &self.transaction {
            None => {
                self.reply(b"503 5.5.1 Error: need MAIL command\r\n");
                false
            }
            Some(transaction) if transaction.route.is_none() || transaction.recipients == 0 => {
                self.reply(b"554 5.5.1 Error: no valid recipients\r\n");
                false
            }
            Some(_) => self.upstream.is_some(),
        }
    }

    async fn data(&mut self, line: &[u8]) -> Result<(), Termination> {
        if !self.ready_for_message() {
            return Ok(());
        }
        let answer = self.relay_command(line).await?;
        if answer.code != 354 {
            return Ok(());
        }
        let max = self.handler.options.max_message_bytes;
        let mut scanner = EndScanner::default();
        let mut size = 0u64;
        loop {
            if self.input.is_empty() && !self.fill(false).await? {
                self.drop_upstream();
                return Err(Termination::ClientAborted);
            }
            let (body, end, refusal) = match scanner.scan(&self.input) {
                Scan::Body => (self.input.len(), false, None),
                Scan::End(n) => (n, true, None),
                Scan::Refused(at, why) => (at, false, Some(why)),
            };
            size += body as u64;
            // The body's final `.CRLF` is not message content.
            let refusal = match refusal {
                None if size > max + 3 => Some(MessageRefusal::TooBig),
                None => None,
                Some(refusal) => Some(refusal.into()),
            };
            let chunk: Vec<u8> = self.input.drain(..body).collect();
            if let Some(refusal) = refusal {
                // The server never sees the end of this body: closing its connection
                // makes it discard the message.
                self.drop_upstream();
                if !end {
                    self.skip_body(scanner).await?;
                }
                self.refuse_message(refusal, size).await;
                return Ok(());
            }
            self.send_upstream(&chunk).await?;
            if end {
                break;
            }
        }
        self.final_reply(size.saturating_sub(3)).await
    }

    /// Reads a refused DATA body to its end, dropping it.
    async fn skip_body(&mut self, scanner: EndScanner) -> Result<(), Termination> {
        let mut skipper = scanner.skipper();
        loop {
            if let Some(n) = skipper.skip(&self.input) {
                self.input.drain(..n);
                return Ok(());
            }
            self.input.clear();
            if !self.fill(false).await? {
                return Err(Termination::ClientAborted);
            }
        }
    }

    /// Sends a command line to the server of the transaction and queues its reply for the
    /// client.
    async fn relay_command(&mut self, line: &[u8]) -> Result<reply::Reply, Termination> {
        let (answer, bytes) = self.ask(line).await?;
        self.reply(&bytes);
        Ok(answer)
    }

    /// Sends a command line to the server of the transaction; its reply and the reply's
    /// bytes.
    async fn ask(&mut self, line: &[u8]) -> Result<(reply::Reply, Vec<u8>), Termination> {
        let Some(upstream) = self.upstream.as_mut() else {
            return Err(Termination::ServerLost);
        };
        let since = tokio::time::Instant::now();
        let asked = upstream.session.conversation.command(line).await;
        self.excuse(since);
        asked.map_err(|failure| self.lost(&failure))
    }

    /// Moves the login's deadline by the time since `since`, spent waiting for a server:
    /// that is the proxy's time, not the client's.
    fn excuse(&mut self, since: tokio::time::Instant) {
        if let Some(login) = &mut self.login {
            login.excuse(since);
        }
    }

    /// Sends bytes to the server of the transaction.
    async fn send_upstream(&mut self, bytes: &[u8]) -> Result<(), Termination> {
        let Some(upstream) = self.upstream.as_mut() else {
            return Err(Termination::ServerLost);
        };
        match upstream.session.conversation.send(bytes).await {
            Ok(()) => Ok(()),
            Err(failure) => Err(self.lost(&failure)),
        }
    }

    /// Passes on the server's next reply (to a command already sent); returns its code
    /// and bytes.
    async fn relay_reply(&mut self) -> Result<(reply::Reply, Vec<u8>), Termination> {
        let Some(upstream) = self.upstream.as_mut() else {
            return Err(Termination::ServerLost);
        };
        let since = tokio::time::Instant::now();
        let replied = upstream.session.conversation.reply().await;
        self.excuse(since);
        match replied {
            Ok((answer, bytes)) => {
                self.reply(&bytes);
                Ok((answer, bytes))
            }
            Err(failure) => Err(self.lost(&failure)),
        }
    }

    /// Passes on the server's final reply to a message and logs the message.
    async fn final_reply(&mut self, size: u64) -> Result<(), Termination> {
        let (answer, bytes) = self.relay_reply().await?;
        self.finish_message(answer.code, reply::queue_id(&bytes), size);
        Ok(())
    }

    /// A BDAT chunk: passed to the server with its command by byte count; to a server
    /// without `CHUNKING`, the chunks become one `DATA` body (dot-stuffed), the proxy
    /// answering every chunk but the last itself.
    async fn bdat(&mut self, line: &[u8], chunk: u64, last: bool) -> Result<(), Termination> {
        if !self.ready_for_message() {
            return self.discard(chunk).await;
        }
        let max = self.handler.options.max_message_bytes;
        let size = self.transaction.as_ref().map_or(0, |t| t.size) + chunk;
        if size > max {
            self.discard(chunk).await?;
            self.refuse_message(MessageRefusal::TooBig, size).await;
            return Ok(());
        }
        let Some(upstream) = self.upstream.as_mut() else {
            return Err(Termination::ServerLost);
        };
        let chunking = upstream.session.chunking;
        let converting = self
            .transaction
            .as_ref()
            .is_some_and(|t| t.stuffer.is_some());
        let opened = if chunking {
            upstream
                .session
                .conversation
                .send(line)
                .await
                .map(|()| None)
        } else if converting {
            Ok(None)
        } else {
            upstream
                .session
                .conversation
                .command(b"DATA\r\n")
                .await
                .map(Some)
        };
        match opened {
            Err(failure) => return Err(self.lost(&failure)),
            Ok(Some((answer, bytes))) if answer.code != 354 => {
                self.discard(chunk).await?;
                self.reply(&bytes);
                return Ok(());
            }
            Ok(Some(_)) => {
                if let Some(transaction) = &mut self.transaction {
                    transaction.stuffer = Some(DotStuffer::default());
                }
            }
            Ok(None) => {}
        }
        let mut left = chunk;
        let mut stuffed = Vec::new();
        while left > 0 {
            if self.input.is_empty() && !self.fill(false).await? {
                self.drop_upstream();
                return Err(Termination::ClientAborted);
            }
            let n = self
                .input
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            left -= n as u64;
            let piece: Vec<u8> = self.input.drain(..n).collect();
            let stuffer = self.transaction.as_mut().and_then(|t| t.stuffer.as_mut());
            let out = match stuffer {
                None => piece,
                Some(stuffer) => {
                    stuffed.clear();
                    if let Err(refusal) = stuffer.stuff(&piece, &mut stuffed) {
                        self.discard(left).await?;
                        self.refuse_message(refusal.into(), size).await;
                        return Ok(());
                    }
                    std::mem::take(&mut stuffed)
                }
            };
            self.send_upstream(&out).await?;
        }
        let Some(transaction) = self.transaction.as_mut() else {
            return Ok(());
        };
        transaction.size = size;
        let tail = transaction.stuffer.as_ref().map(DotStuffer::finish);
        match (tail, last) {
            (None, true) => self.final_reply(size).await,
            (Some(tail), true) => {
                self.send_upstream(tail).await?;
                self.final_reply(size).await
            }
            (Some(_), false) => {
                self.reply(format!("250 2.0.0 {chunk} octets received\r\n").as_bytes());
                Ok(())
            }
            (None, false) => self.relay_reply().await.map(drop),
        }
    }

    /// Reads and drops `len` bytes of a BDAT chunk the proxy refuses.
    async fn discard(&mut self, mut len: u64) -> Result<(), Termination> {
        while len > 0 {
            if self.input.is_empty() && !self.fill(false).await? {
                return Err(Termination::ClientAborted);
            }
            let n = self
                .input
                .len()
                .min(usize::try_from(len).unwrap_or(usize::MAX));
            self.input.drain(..n);
            len -= n as u64;
        }
        Ok(())
    }

    /// Refuses the transaction's message: the server drops it (RSET between BDAT chunks;
    /// its connection closed when it is reading a body, so that it never sees an end),
    /// the client is told why, and the message is logged.
    async fn refuse_message(&mut self, refusal: MessageRefusal, size: u64) {
        let in_body = self
            .transaction
            .as_ref()
            .is_some_and(|t| t.stuffer.is_some());
        if in_body {
            self.drop_upstream();
        } else if let Some(upstream) = self.open_upstream_transaction()
            && upstream
                .session
                .conversation
                .command(b"RSET\r\n")
                .await
                .is_err()
        {
            self.drop_upstream();
        }
        self.reply(refusal.reply());
        self.finish_message(refusal.code(), None, size);
    }

    /// Counts and logs the transaction's message with its final reply, and ends the
    /// transaction.
    fn finish_message(&mut self, code: u16, queue_id: Option<String>, size: u64) {
        let Some(transaction) = self.transaction.take() else {
            return;
        };
        // A message the server accepted counts for the tenant of the answer that routed
        // its transaction (set at its first recipient).
        if (200..300).contains(&code)
            && transaction
                .route
                .as_ref()
                .is_some_and(|p| p.origin.is_some())
            && let Some(tenant) = &self.record.tenant
        {
            self.handler.context.accounting.tenant(tenant).add_message();
        }
        let pool = self.record.pool.clone();
        self.handler.metrics.message(
            &self.listener.name,
            pool.as_deref().unwrap_or("-"),
            reply::class(code),
            transaction.recipients,
            size,
        );
        let record = MessageRecord {
            listener: self.listener.name.clone(),
            kind: "smtp_message",
            client: self.record.client,
            helo: self.helo.clone().unwrap_or_default(),
            from: transaction.from,
            recipients: transaction.recipients,
            size,
            pool,
            server: self.record.server.clone(),
            reply: code,
            queue_id,
            duration_ms: transaction.started.elapsed().as_millis() as u64,
        };
        self.handler
            .context
            .access_log
            .log_with(|line| record.write(line));
    }

    /// Drops the server connection at once (its server discards an unfinished message).
    fn drop_upstream(&mut self) {
        if let Some(upstream) = self.upstream.take() {
            account(&upstream.session);
        }
    }

    /// Ends the server session with QUIT.
    async fn close_upstream(&mut self) {
        if let Some(mut upstream) = self.upstream.take() {
            upstream.session.conversation.quit().await;
            account(&upstream.session);
        }
    }
}

/// Adds a server session's bytes to its server's counters.
fn account(session: &ServerSession) {
    session
        .server
        .stats
        .bytes_in
        .add(session.conversation.bytes_out);
    session
        .server
        .stats
        .bytes_out
        .add(session.conversation.bytes_in);
}

/// Why the proxy refuses a message.
#[derive(Debug, Clone, Copy)]
enum MessageRefusal {
    TooBig,
    LineTooLong,
    BareLineEnd,
}

impl From<Refusal> for MessageRefusal {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::LineTooLong => Self::LineTooLong,
            Refusal::BareLineEnd => Self::BareLineEnd,
        }
    }
}

impl MessageRefusal {
    fn code(self) -> u16 {
        match self {
            Self::TooBig => 552,
            Self::LineTooLong | Self::BareLineEnd => 554,
        }
    }

    fn reply(self) -> &'static [u8] {
        match self {
            Self::TooBig => b"552 5.3.4 Message size exceeds fixed maximum message size\r\n",
            Self::LineTooLong => b"554 5.6.0 Error: message line longer than 1000 bytes\r\n",
            Self::BareLineEnd => b"554 5.6.0 Error: bare CR or LF in message text\r\n",
        }
    }
}
