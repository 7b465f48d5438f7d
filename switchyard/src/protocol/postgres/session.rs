//! One client session in session mode: startup, routing, a server of the listener's role,
//! the relayed authentication, then bytes both ways for the session's life.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::either::Either;

use super::PostgresHandler;
use super::auth::{Authenticated, authenticate_client, log_in_for};
use super::cancel::{CancelTarget, Registration};
use super::codec::Startup;
use super::errors::{fatal, sqlstate};
use super::split::SplitConfig;
use super::startup::{Opening, Refusal, ServerLink, StartupBytes, authenticate, read_opening};
use super::tls::{ClientStream, retries_with_tls, secure_server, server_host};
use super::transaction::{PooledClient, Served};
use crate::accept;
use crate::config::{ClientTlsMode, KeyFact, MessageLimits, PoolMode, PostgresAuth};
use crate::idle_lot::{Sleeper, Waking, Woken};
use crate::listener::{Accepted, Listener, ListenerSettings, Occupancy};
use crate::observe::{ConnectionRecord, Termination};
use crate::protocol::{
    client_destination, count_bytes, proxy_preamble, relay_database_session, session_termination,
};
use crate::relay::IdleLimit;
use crate::resolve::{LookupContext, ResolveError};
use crate::route::{Rewrites, RouteFacts};
use crate::tls::{Rewind, ServerTls, TlsInfo};
use crate::upstream::{
    ConnectError, LeaseError, Pool, RoleFilter, ServerRole, Stage, connect_role, connect_server,
    following_reloads, record_failure, wanted_role,
};
use crate::upstream::{Lease, Server, ServerStream};

/// Handles one client connection of a postgres listener to the end, logging one line.
/// The connection is taken apart before the future is made, so the future keeps its
/// parts once, not also the whole (its future lives as long as the client).
pub fn serve(
    handler: Arc<PostgresHandler>,
    connection: Accepted,
) -> impl Future<Output = ()> + Send {
    let Accepted {
        listener,
        settings,
        stream: client,
        peer,
        occupancy,
    } = connection;
    // Made before the future, which then keeps the record but not the peer's address, and
    // keeps the record and the occupancy once (a value captured and then moved into a
    // local would keep its room twice).
    let mut end = ConnectionEnd {
        record: crate::memory::lasting(|| ConnectionRecord::accepted(&listener.name, peer)),
        started: std::time::Instant::now(),
        occupancy,
    };
    async move {
        let admitted = session(&handler, &listener, &settings, client, &mut end.record);
        // Taken apart in this statement, so that the future a pooled client keeps holds
        // neither the login's outcome nor the match over it.
        let pooled = match admitted.await {
            Admitted::Pooled(client) => client,
            Admitted::Ended(outcome) => return end.finish(&handler.state.context, outcome),
        };
        // Served here, not inside `session`: that future is gone by now, so a pooled
        // client's future keeps the client and the wait for its next message, and nothing
        // laid out for the login. One box, which may doze in the idle lot as it is.
        let pooled = crate::memory::lasting(|| {
            Box::new(Pooled {
                client: *pooled,
                end,
            })
        });
        serve_pooled(pooled).await;
    }
}

/// What ends a connection: its log line, its accounting and its place on the listener.
struct ConnectionEnd {
    record: ConnectionRecord,
    started: std::time::Instant,
    occupancy: Occupancy,
}

impl ConnectionEnd {
    /// Logs the connection's line with `outcome` and gives its place up.
    fn finish(mut self, context: &crate::protocol::Context, outcome: Result<Termination, Refusal>) {
        let record = &mut self.record;
        let listener = self.occupancy.listener();
        record.termination = session_termination(outcome, listener, record.client, "postgres");
        record.finish(self.started);
        context.finish_connection(record);
        drop(self.occupancy);
    }
}

/// A transaction pool's client past its login, and what ends its connection: served on a
/// task while it is busy, dozing in its worker's idle lot (`idle_lot`), with no task,
/// once it has been idle for a while.
struct Pooled {
    client: PooledClient,
    end: ConnectionEnd,
}

/// Serves a pooled client until it ends or may doze, then parks it.
async fn serve_pooled(mut pooled: Box<Pooled>) {
    let address = pooled.end.record.client;
    match pooled.client.serve(address).await {
        Served::Idle { deadline } => {
            let stop = pooled.client.hard_stop();
            crate::idle_lot::park(pooled, deadline, &stop);
        }
        Served::Ended(outcome) => pooled.finish(outcome),
    }
}

impl Pooled {
    fn finish(self: Box<Self>, outcome: Result<Termination, Refusal>) {
        let Pooled { client, mut end } = *self;
        client.count_moved(&mut end.record);
        end.finish(&client.handler().state.context, outcome);
        // The client's socket closes after its line is logged, as for every connection.
        drop(client);
    }
}

impl Sleeper for Pooled {
    fn poll_stirred(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.client.poll_stirred(cx)
    }

    fn wake(self: Box<Self>, why: Woken) -> Waking {
        Box::pin(async move {
            match why {
                Woken::Stirred => serve_pooled(self).await,
                Woken::Deadline => self.finish(Err(Refusal::new(
                    Termination::ClientTimeout,
                    "idle between transactions",
                ))),
                Woken::Stop => self.finish(Err(Refusal::new(Termination::Shutdown, "hard stop"))),
            }
        })
    }
}

/// The login: the PROXY header, the TLS upgrade, the startup, the route (and its resolver)
/// and the client's authentication, under the login deadline.
async fn log_in<'a>(
    handler: &PostgresHandler,
    listener: &'a Listener,
    settings: &ListenerSettings,
    client: TcpStream,
    record: &mut ConnectionRecord,
) -> Result<LoggedIn<'a>, Refusal> {
    let state = &handler.state;
    let options = &handler.options;
    let limits = &options.limits;
    let opened = accept::open(listener, settings, client, record.client)
        .await
        .map_err(|reason| Refusal::new(reason, "bad PROXY protocol header"))?;
    record.client = opened.client;
    let proxied_destination = opened.proxied_destination;
    let mut client = opened.into_rewind();
    // Counted until the client has logged in; the deadline covers the TLS upgrade and the
    // authentication, but not the proxy's own wait for a server.
    let (limit, timeout) = (
        settings.config.max_logins_per_address,
        settings.config.timeouts.login,
    );
    let Some(login) = listener.logins.begin(record.client.ip(), limit, timeout) else {
        let code = sqlstate::TOO_MANY_CONNECTIONS;
        let message = "too many connections logging in from this address".to_string();
        return Err(refuse(&mut client, code, Termination::TooManyLogins, message).await);
    };
    let mode = options.client_tls_mode(settings.tls.is_some());
    let offered = settings
        .tls
        .as_ref()
        .filter(|_| mode != ClientTlsMode::Disabled);
    let opened = tokio::time::timeout_at(
        login.deadline(),
        Box::pin(open_client(client, limits, offered)),
    )
    .await
    .map_err(|_| Refusal::new(Termination::LoginTimeout, "no startup packet in time"))?;
    let (mut client, opening, tls_info) = opened?;
    let startup = match opening {
        Opening::Startup(startup) => startup,
        Opening::Cancel { pid, key } => {
            state.cancel.cancel(pid, &key).await;
            return Err(Refusal::new(Termination::Cancel, "cancel request"));
        }
        Opening::StartTls => {
            return Err(Refusal::new(Termination::BadStartup, "a second SSLRequest"));
        }
    };
    if mode == ClientTlsMode::Required && tls_info.is_none() {
        let code = sqlstate::INVALID_AUTHORIZATION;
        return Err(refuse(
            &mut client,
            code,
            Termination::TlsRequired,
            "SSL required".into(),
        )
        .await);
    }
    let routed = route(handler, &startup, tls_info.as_ref());
    let Some((pool, mut rewrites, split)) = routed else {
        let message = format!(
            "no route for database \"{}\" and user \"{}\"",
            startup.database().unwrap_or_default(),
            startup.param("user").unwrap_or_default()
        );
        let code = sqlstate::INVALID_CATALOG_NAME;
        return Err(refuse(&mut client, code, Termination::NoRoute, message).await);
    };
    // A pool with `resolver`: the servers (and rewrites) come from the answer for the key.
    let pool = if pool.resolver.is_some() {
        let lookup = LookupContext {
            protocol: "postgres",
            listener: &listener.name,
            client: Some(record.client),
        };
        let sni = tls_info.as_ref().and_then(|tls| tls.sni.as_deref());
        let fact = |fact| match fact {
            KeyFact::Database => startup.database(),
            KeyFact::User => startup.param("user"),
            KeyFact::Sni => sni,
            _ => None,
        };
        match Box::pin(pool.resolve(fact, &lookup)).await {
            Ok(resolved) => {
                record.tenant = resolved.tenant().map(Box::from);
                if let Some(answer) = &resolved.answer {
                    rewrites.database = answer.rewrite_database.clone().or(rewrites.database);
                    rewrites.user = answer.rewrite_user.clone().or(rewrites.user);
                }
                resolved.pool
            }
            Err(error) => {
                record.pool = Some(pool.name.as_str().into());
                let (code, reason) = match &error {
                    ResolveError::NoKey | ResolveError::NoRoute(_) => {
                        (sqlstate::INVALID_CATALOG_NAME, Termination::NoRoute)
                    }
                    ResolveError::Refused { .. } => {
                        (sqlstate::INVALID_AUTHORIZATION, Termination::ResolveRefused)
                    }
                    ResolveError::Unavailable(_) => (
                        sqlstate::CANNOT_CONNECT_NOW,
                        Termination::ResolverUnavailable,
                    ),
                };
                let message = match &error {
                    ResolveError::Unavailable(_) => "routing is unavailable".to_string(),
                    ResolveError::Refused { .. } => "this database is refused".to_string(),
                    _ => format!(
                        "no route for database \"{}\"",
                        startup.database().unwrap_or_default()
                    ),
                };
                tracing::info!(listener = %listener.name, pool = %pool.name, client = %record.client, %error, "session not resolved");
                return Err(refuse(&mut client, code, reason, message).await);
            }
        }
    } else {
        pool
    };
    // Kept for the client's life (see `memory`).
    record.pool = crate::memory::lasting(|| Some(pool.name.as_str().into()));
    let users = state.users.load_full();
    let transaction_mode = pool.database.pool_mode == PoolMode::Transaction;
    let method = match options.auth(users.has_users()) {
        // Shared server connections are logged in by switchyard: it must know the client.
        PostgresAuth::Passthrough if transaction_mode => PostgresAuth::ScramSha256,
        method => method,
    };
    let authenticated = match method {
        PostgresAuth::Passthrough => None,
        method => {
            let exchange = Box::pin(authenticate_client(
                &mut client,
                &startup,
                method,
                &users,
                &pool,
                tls_info.is_some(),
                limits,
            ));
            match tokio::time::timeout_at(login.deadline(), exchange).await {
                Ok(outcome) => Some(outcome?),
                Err(_) => return Err(login_timed_out(&mut client).await),
            }
        }
    };
    Ok(LoggedIn {
        client,
        startup,
        pool,
        rewrites,
        split,
        authenticated,
        tls_info,
        proxied_destination,
        login,
    })
}

/// A client past its login: what the transaction pool or the relayed session go on with.
struct LoggedIn<'a> {
    client: ClientStream,
    startup: Startup,
    pool: Arc<Pool>,
    rewrites: Rewrites,
    split: Arc<SplitConfig>,
    authenticated: Option<Authenticated>,
    tls_info: Option<TlsInfo>,
    /// The address the client reached as its PROXY header said. Without one, the socket's
    /// own is looked up only when a PROXY header goes upstream: a pooled client never
    /// needs it, and it is a system call per login.
    proxied_destination: Option<std::net::SocketAddr>,
    login: crate::login_gate::Login<'a>,
}

/// Where a logged-in client goes.
enum Admitted {
    /// A transaction pool's client, told it is logged in: the caller serves it.
    Pooled(Box<PooledClient>),
    /// The session ran to its end (session mode), or the login failed.
    Ended(Result<Termination, Refusal>),
}

/// Logs the client in, then starts its transaction-mode session or runs its session-mode
/// one. Each phase is boxed: a client's future is kept for the client's life, and should
/// be sized by what it needs then, not by the login's.
async fn session(
    handler: &Arc<PostgresHandler>,
    listener: &Listener,
    settings: &ListenerSettings,
    client: TcpStream,
    record: &mut ConnectionRecord,
) -> Admitted {
    let state = &handler.state;
    let options = &handler.options;
    let logged_in = match Box::pin(log_in(handler, listener, settings, client, record)).await {
        Ok(logged_in) => logged_in,
        Err(refusal) => return Admitted::Ended(Err(refusal)),
    };
    // The next phase is made in a block of its own and awaited after it: a `LoggedIn` that
    // was ever borrowed keeps its 512 bytes in this future until it goes out of scope,
    // even once every field is moved out, and this future is part of a pooled client's.
    let next: Pin<Box<dyn Future<Output = Admitted> + Send + '_>> = {
        let logged_in = logged_in;
        let transaction_mode = logged_in.pool.database.pool_mode == PoolMode::Transaction;
        match logged_in {
            LoggedIn {
                client,
                startup,
                pool,
                rewrites,
                split,
                login,
                authenticated: Some(Authenticated { user, credential }),
                tls_info,
                proxied_destination: _,
            } if transaction_mode => {
                // Logged in: no longer counted among the address's logins. What the login
                // leaves is freed now, not kept for the client's life.
                drop((login, user, tls_info));
                let startup = {
                    let mut startup = startup;
                    rewrites.apply(&mut startup);
                    startup
                };
                let wanted = wanted_role(&pool, options.role, options.replica_fallback);
                let pooled = super::transaction::Pooled {
                    accept: RoleFilter::new(&pool, wanted),
                    pool,
                    credential,
                    split: split.enabled.then_some(split),
                    tenant: record
                        .tenant
                        .as_ref()
                        .map(|tenant| state.context.accounting.tenant(tenant)),
                };
                Box::pin(async move {
                    let started = super::transaction::start(
                        handler, settings, client, startup, pooled, record,
                    );
                    match started.await {
                        Ok(client) => Admitted::Pooled(Box::new(client)),
                        Err(refusal) => Admitted::Ended(Err(refusal)),
                    }
                })
            }
            logged_in => {
                // Boxed, as is the connection phase below: this future lives as long as the
                // session, and keeps room for what it captured.
                let logged_in = Box::new(logged_in);
                Box::pin(async move {
                    // Boxed: the server's connection and startup run once; the relay's future
                    // lives as long as the session and keeps only what the relay needs.
                    let connected = Box::pin(connect_session(
                        handler, listener, settings, *logged_in, record,
                    ));
                    let session = match connected.await {
                        Ok(session) => session,
                        Err(refusal) => return Admitted::Ended(Err(refusal)),
                    };
                    Admitted::Ended(Ok(session.relay(handler, listener, record).await))
                })
            }
        }
    };
    next.await
}

/// A session-mode client whose server accepted its startup: what the relay needs, and
/// what must live as long as the session (the server's slot, the client's cancel key).
struct ConnectedSession {
    client: ClientStream,
    server_stream: ServerStream,
    server: Arc<Server>,
    idle: Option<IdleLimit>,
    /// The server's slot, freed when the session ends.
    _lease: Lease,
    /// The client's cancel key, registered for the session's life.
    _cancel_key: Option<Registration>,
}

impl ConnectedSession {
    /// Bytes both ways until either side closes. The session is taken apart before the
    /// future is made, which holds its parts once (an `async fn` would keep `self` beside
    /// them).
    fn relay<'a>(
        self,
        handler: &'a PostgresHandler,
        listener: &'a Listener,
        record: &'a mut ConnectionRecord,
    ) -> impl Future<Output = Termination> + Send + 'a {
        let Self {
            client,
            server_stream,
            server,
            idle,
            _lease: lease,
            _cancel_key: cancel_key,
        } = self;
        async move {
            let termination = relay_database_session(
                &handler.state.context,
                listener,
                &server,
                idle,
                client,
                server_stream,
                record,
                None,
            )
            .await;
            drop((lease, cancel_key));
            termination
        }
    }
}

/// Session mode: a server connection of the client's own and its startup (relayed, or
/// switchyard's login with the client's credential); the relay is
/// [`ConnectedSession::relay`], so that nothing of this phase is kept for the session.
async fn connect_session(
    handler: &PostgresHandler,
    listener: &Listener,
    settings: &ListenerSettings,
    logged_in: LoggedIn<'_>,
    record: &mut ConnectionRecord,
) -> Result<ConnectedSession, Refusal> {
    let state = &handler.state;
    let options = &handler.options;
    let limits = &options.limits;
    let LoggedIn {
        mut client,
        mut startup,
        pool,
        rewrites,
        split,
        authenticated,
        tls_info,
        proxied_destination,
        mut login,
    } = logged_in;
    let reroute = || {
        let settings = listener.settings();
        let now = settings.handler_as::<PostgresHandler>();
        now.and_then(|now| route(now, &startup, tls_info.as_ref()))
    };
    let client_address = record.client;
    let waiting_for_server = Instant::now();
    let wanted_of = |pool: &Pool| wanted_role(pool, options.role, options.replica_fallback);
    let ((pool, rewrites, _), attempt) = Box::pin(following_reloads(
        (pool, rewrites, split),
        |(pool, _, _)| pool,
        reroute,
        |(pool, _, _)| async move { connect_role(&pool, client_address, wanted_of(&pool)).await },
    ))
    .await;
    record.pool = Some(pool.name.as_str().into());
    let wanted = wanted_of(&pool);
    rewrites.apply(&mut startup);
    let upstream = match attempt {
        Ok(upstream) => upstream,
        Err(error) => {
            let (code, reason, message) = match &error {
                ConnectError::Lease(LeaseError::NoServer) => (
                    sqlstate::CANNOT_CONNECT_NOW,
                    Termination::NoServer,
                    match wanted {
                        None => "no server available".to_string(),
                        Some(ServerRole::Replica) => "no replica available".to_string(),
                        Some(_) => "no primary available".to_string(),
                    },
                ),
                ConnectError::Lease(LeaseError::QueueFull | LeaseError::QueueTimeout) => (
                    sqlstate::TOO_MANY_CONNECTIONS,
                    Termination::QueueFull,
                    format!("no server slot free: {error}"),
                ),
                ConnectError::Failed { .. } => (
                    sqlstate::CONNECTION_FAILURE,
                    Termination::ConnectFailed,
                    format!("could not connect to the server: {error}"),
                ),
            };
            return Err(refuse(&mut client, code, reason, message).await);
        }
    };
    let server = upstream.lease.server().clone();
    record.server = Some(server.name.as_str().into());
    let preamble = proxy_preamble(
        pool.send_proxy_protocol,
        record.client,
        || client_destination(proxied_destination, &client, listener),
        tls_info.as_ref(),
    );
    let host = server_host(&server);
    let tls = pool.tls.as_deref();
    let link = |stream: &ServerStream| ServerLink {
        table: &state.cancel,
        cancel: CancelTarget {
            server: upstream.peer,
            connect_timeout: pool.timeouts.connect,
            tls: pool.tls.clone(),
            host: host.clone(),
            preamble: preamble.clone(),
        },
        encrypted: matches!(stream, Either::Right(_)),
        may_retry: retries_with_tls(tls, stream),
    };
    let secured = Box::pin(secure_server(tls, &host, upstream.stream, &preamble, false));
    let mut server_stream = match secured.await {
        Ok(stream) => stream,
        Err(error) => {
            record_failure(&pool, &server, Stage::Tls, &error);
            return Err(refuse_tls(&mut client, &error).await);
        }
    };
    // The client is not charged for the time the proxy spent getting a server.
    login.excuse(waiting_for_server);
    let first_link = link(&server_stream);
    let first_startup = Box::pin(server_startup(
        &mut client,
        &mut server_stream,
        &startup,
        authenticated.as_ref(),
        limits,
        first_link,
    ));
    let Ok(mut outcome) = tokio::time::timeout_at(login.deadline(), first_startup).await else {
        return Err(login_timed_out(&mut client).await);
    };
    if let Err(Refusal {
        reason: Termination::PlaintextRefused,
        detail: refused,
    }) = &outcome
    {
        // sslmode=allow: the server refused plaintext; once more, asking for TLS.
        let retried = Box::pin(async {
            let (stream, _) = connect_server(&server, &pool).await?;
            secure_server(tls, &host, stream, &preamble, true).await
        });
        server_stream = match retried.await {
            Ok(stream) => stream,
            Err(error) => {
                let error = std::io::Error::new(
                    error.kind(),
                    format!("plaintext refused ({refused}), then {error}"),
                );
                return Err(refuse_tls(&mut client, &error).await);
            }
        };
        let retry_link = link(&server_stream);
        let retried_startup = Box::pin(server_startup(
            &mut client,
            &mut server_stream,
            &startup,
            authenticated.as_ref(),
            limits,
            retry_link,
        ));
        outcome = match tokio::time::timeout_at(login.deadline(), retried_startup).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(login_timed_out(&mut client).await),
        };
    }
    let (cancel_key, startup_bytes) = outcome?;
    drop(login);
    count_bytes(
        record,
        listener,
        &server,
        startup_bytes.to_server,
        startup_bytes.to_client,
    );
    let idle = IdleLimit::choose(
        settings.config.timeouts.client,
        pool.timeouts.server,
        pool.timeouts.tunnel,
    );
    Ok(ConnectedSession {
        client,
        server_stream,
        server,
        idle,
        _lease: upstream.lease,
        _cancel_key: cancel_key,
    })
}

/// The server side of the startup: the relayed authentication, or (when switchyard
/// authenticated the client itself) switchyard's own login with the client's credential.
async fn server_startup<C, S>(
    client: &mut C,
    server: &mut S,
    startup: &Startup,
    authenticated: Option<&Authenticated>,
    limits: &MessageLimits,
    link: ServerLink<'_>,
) -> Result<(Option<Registration>, StartupBytes), Refusal>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    match authenticated {
        None => authenticate(client, server, startup, limits, link).await,
        Some(auth) => log_in_for(client, server, startup, &auth.credential, limits, link).await,
    }
}

/// Reads the client's opening packets, taking the connection to TLS when the client asks
/// (SSLRequest answered `S`) or starts with a TLS ClientHello (PostgreSQL 17 direct TLS,
/// which must negotiate ALPN `postgresql`). `tls` is the listener's, when it offers TLS.
async fn open_client(
    client: Rewind<TcpStream>,
    limits: &MessageLimits,
    tls: Option<&Arc<ServerTls>>,
) -> Result<(ClientStream, Opening, Option<TlsInfo>), Refusal> {
    let mut client = client;
    let Some(tls) = tls else {
        let opening = read_plain_opening(&mut client, limits, false).await?;
        return Ok((Either::Left(client), opening, None));
    };
    let mut first = [0u8; 1];
    let first = match client.buffered().first() {
        Some(&byte) => Some(byte),
        None => match client.get_ref().peek(&mut first).await {
            Ok(1) => Some(first[0]),
            _ => None,
        },
    };
    let direct = first == Some(TLS_HANDSHAKE);
    if !direct {
        match read_plain_opening(&mut client, limits, true).await? {
            Opening::StartTls => {}
            opening => return Ok((Either::Left(client), opening, None)),
        }
    }
    let (mut stream, info) = tls
        .accept(client)
        .await
        .map_err(|e| Refusal::new(Termination::ClientTlsError, e))?;
    if direct && info.alpn.as_deref() != Some(b"postgresql".as_slice()) {
        return Err(Refusal::new(
            Termination::ClientTlsError,
            "direct TLS without ALPN `postgresql`",
        ));
    }
    let opening = read_opening(&mut stream, limits, false).await?;
    Ok((Either::Right(Box::new(stream)), opening, Some(info)))
}

/// [`read_opening`] on the client's socket, through a small buffer: each packet comes in
/// one `recv`, and a read that empties the socket tells the runtime so, which spares the
/// `recv` that would only find nothing yet when the client next speaks (a client waits
/// for each answer of the startup). Bytes read past the opening (a ClientHello sent
/// without waiting for `S`, a query sent with the startup) are put back in front of the
/// stream.
async fn read_plain_opening(
    client: &mut Rewind<TcpStream>,
    limits: &MessageLimits,
    offer_tls: bool,
) -> Result<Opening, Refusal> {
    let mut buffered = tokio::io::BufReader::with_capacity(OPENING_BUFFER, &mut *client);
    let opening = read_opening(&mut buffered, limits, offer_tls).await;
    let past = bytes::Bytes::copy_from_slice(buffered.buffer());
    client.unread(past);
    opening
}

/// What one read of the opening asks for: a usual StartupMessage (under 200 bytes) whole.
const OPENING_BUFFER: usize = 512;

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// Ends the session after TLS to the server failed.
async fn refuse_tls<C: AsyncWrite + Unpin>(client: &mut C, error: &std::io::Error) -> Refusal {
    let message = format!("could not connect to the server: {error}");
    refuse(
        client,
        sqlstate::CONNECTION_FAILURE,
        Termination::ServerTlsFailed,
        message,
    )
    .await
}

/// Sends a FATAL ErrorResponse and ends the session.
/// Ends a login that ran past `timeouts.login` once the client's startup had come (it
/// speaks the protocol, so it gets PostgreSQL's error).
async fn login_timed_out<C: AsyncWrite + Unpin>(client: &mut C) -> Refusal {
    let code = sqlstate::PROTOCOL_VIOLATION;
    let message = "login timeout: authentication did not finish in time".to_string();
    refuse(client, code, Termination::LoginTimeout, message).await
}

async fn refuse<C: AsyncWrite + Unpin>(
    client: &mut C,
    code: &str,
    reason: Termination,
    message: String,
) -> Refusal {
    let _ = client.write_all(&fatal(code, &message)).await;
    let _ = client.shutdown().await;
    Refusal::new(reason, message)
}

impl Rewrites {
    /// Applies the rewrites to the startup the server will be sent.
    fn apply(&self, startup: &mut Startup) {
        if let Some(database) = &self.database {
            startup.set_param("database", database);
        }
        if let Some(user) = &self.user {
            // The database defaulted to the user name: keep the name the client meant.
            if startup.param("database").is_none()
                && let Some(original) = startup.param("user").map(str::to_string)
            {
                startup.set_param("database", &original);
            }
            startup.set_param("user", user);
        }
    }
}

/// Picks the pool from the startup parameters (and the client's TLS), with the matching
/// route's rewrites of `database`/`user` and read/write split settings.
fn route(
    handler: &PostgresHandler,
    startup: &Startup,
    tls: Option<&TlsInfo>,
) -> Option<(Arc<Pool>, Rewrites, Arc<SplitConfig>)> {
    let routing = &handler.routing;
    let facts = RouteFacts {
        database: startup.database(),
        user: startup.param("user"),
        application_name: startup.param("application_name"),
        sni: tls.and_then(|tls| tls.sni.as_deref()),
        client_cn: tls
            .and_then(|tls| tls.client_cert.as_ref())
            .and_then(|cert| cert.common_name.as_deref()),
        ..RouteFacts::default()
    };
    match routing.route(&facts) {
        Some(route) => Some((
            route.pool.clone(),
            route.extra.rewrites.clone(),
            route.extra.split.clone(),
        )),
        None => routing
            .default
            .clone()
            .zip(handler.default_split.clone())
            .map(|(pool, split)| (pool, Rewrites::default(), split)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a dozing pooled client keeps is one box of this (see `docs/benchmarks.md`,
    /// "Idle memory"): it must fit mimalloc's 512-byte class, not the 640-byte one above.
    #[test]
    fn a_dozing_client_fits_in_512_bytes() {
        let size = std::mem::size_of::<Pooled>();
        assert!(size <= 512, "Pooled is {size} bytes");
    }
}
