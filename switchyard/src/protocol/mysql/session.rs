//! One client session in session mode: the proxy's own greeting, the client's SSL upgrade
//! and HandshakeResponse41, routing, a server of the listener's role (over TLS per the
//! pool's `sslmode`), the server's authentication relayed ([`super::passthrough`]), then
//! bytes both ways for the session's life, unparsed but for `KILL`s ([`super::kill`]).

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::either::Either;

use super::MysqlHandler;
use super::auth::{caching_sha2, native};
use super::errors::{ClientLibrary, ProxyError};
use super::flags::capabilities as cap;
use super::handshake::Handshake;
use super::kill::KillRewrite;
use super::login::{Credential, Greeted, LoginError, LoginOptions, greet, login, retries_with_tls};
use super::ok::{OK, OkPacket};
use super::packet::{CodecError, PacketReader, write_packet};
use super::passthrough::{Broken, Moved, Outcome, Side, relay_login, switch_to_server};
use super::pooler::PooledLogin;
use super::proxy_auth::{self, Denied};
use super::response::{ClientHead, ClientReply, HandshakeResponse, parse_client_reply};
use super::transaction::PooledClient;
use crate::accept;
use crate::config::{ClientTlsMode, MysqlAuth, PoolMode};
use crate::listener::{Accepted, Listener, ListenerSettings};
use crate::observe::{ConnectionRecord, Termination};
use crate::protocol::{
    ClientStream, Refusal, client_destination, count_bytes, proxy_preamble, relay_database_session,
    session_termination,
};
use crate::relay::IdleLimit;
use crate::route::{Rewrites, RouteFacts};
use crate::tls::{Rewind, ServerTls, TlsInfo};
use crate::upstream::RoleFilter;
use crate::upstream::tx_pool::Pairing;
use crate::upstream::{
    ConnectError, LeaseError, Pool, Server, ServerRole, ServerStream, Stage, connect_role,
    connect_server, following_reloads, record_failure, server_host, wanted_role,
};

/// Capabilities that change how result packets read: a client that negotiated them
/// with the proxy cannot be relayed to a server that lacks them.
const FRAMING: u32 = cap::DEPRECATE_EOF | cap::SESSION_TRACK;

/// Handles one client connection of a mysql listener to the end, logging one line.
/// The connection is taken apart before the future is made, so the future keeps its
/// parts once, not also the whole (its future lives as long as the client).
pub fn serve(handler: Arc<MysqlHandler>, connection: Accepted) -> impl Future<Output = ()> + Send {
    let Accepted {
        listener,
        settings,
        stream,
        peer,
        occupancy,
    } = connection;
    // Boxed until the login opens it: a value the future captures keeps its room for the
    // client's life, and the box's 8 B is less than the stream's 40.
    let client = Box::new(stream);
    async move {
        let started = std::time::Instant::now();
        let mut record = ConnectionRecord::accepted(&listener.name, peer);
        let outcome = session(&handler, &listener, &settings, client, &mut record).await;
        record.termination = session_termination(outcome, &listener, peer, "mysql");
        record.finish(started);
        handler.state.context.finish_connection(&record);
        drop(occupancy);
    }
}

/// The client after its login packet: the stream (TLS or not), what was read from it, the
/// HandshakeResponse41 and its sequence id.
struct ClientLogin {
    stream: ClientStream,
    reader: PacketReader,
    response: HandshakeResponse,
    sequence: u8,
    tls: Option<TlsInfo>,
}

async fn session(
    handler: &MysqlHandler,
    listener: &Listener,
    settings: &ListenerSettings,
    client: Box<TcpStream>,
    record: &mut ConnectionRecord,
) -> Result<Termination, Refusal> {
    // Each phase boxed: this future is kept for the client's life, and a pooled client's
    // should be sized by its wait between transactions, not by its login or session mode.
    match Box::pin(log_in(handler, listener, settings, client, record)).await? {
        Admitted::Pooled(client) => Ok(super::transaction::serve(*client, record).await),
        Admitted::Session(start) => {
            Box::pin(session_mode(handler, listener, settings, *start, record)).await
        }
    }
}

/// A client past its own login: a transaction pool's, or a session-mode client still
/// without a server.
enum Admitted<'h, 'l> {
    Pooled(Box<PooledClient<'h>>),
    Session(Box<SessionStart<'l>>),
}

/// What session mode goes on with after the client's login.
struct SessionStart<'l> {
    client: ClientStream,
    client_reader: PacketReader,
    response: HandshakeResponse,
    tls_info: Option<TlsInfo>,
    pool: Arc<Pool>,
    rewrites: Rewrites,
    library: ClientLibrary,
    /// Still counted among the address's logins, under the login deadline.
    login: crate::login_gate::Login<'l>,
    /// The address the client reached as its PROXY header said; without one, the socket's
    /// is looked up only when a PROXY header goes upstream (a system call per login).
    proxied_destination: Option<std::net::SocketAddr>,
    /// The client's password when the proxy checked it (it logs in to the server itself).
    server_password: Option<String>,
    /// The sequence id of the next packet to the client.
    reply: u8,
    /// The connection id the proxy's greeting gave the client.
    connection_id: u32,
}

/// The login: the PROXY header, the proxy's greeting, the SSL upgrade, the client's
/// authentication (when the proxy checks it) and the route; a pooled client also joins
/// its transaction pool.
async fn log_in<'h, 'l>(
    handler: &'h MysqlHandler,
    listener: &'l Listener,
    settings: &ListenerSettings,
    client: Box<TcpStream>,
    record: &mut ConnectionRecord,
) -> Result<Admitted<'h, 'l>, Refusal> {
    let state = &handler.state;
    let options = &handler.options;
    let opened = accept::open(listener, settings, *client, record.client)
        .await
        .map_err(|reason| Refusal::new(reason, "bad PROXY protocol header"))?;
    record.client = opened.client;
    let proxied_destination = opened.proxied_destination;
    let mut client = opened.into_rewind();
    // Counted until the client has logged in; the deadline covers the TLS upgrade and the
    // authentication, but not the proxy's own wait for a server. A refused client gets
    // the ERR a busy MySQL server sends in place of its greeting.
    let (limit, timeout) = (
        settings.config.max_logins_per_address,
        settings.config.timeouts.login,
    );
    let Some(login) = listener.logins.begin(record.client.ip(), limit, timeout) else {
        let error = ProxyError::TooManyConnections;
        return Err(refuse(&mut client, 0, &error, Termination::TooManyLogins).await);
    };
    let mode = options.client_tls_mode(settings.tls.is_some());
    let offered = settings
        .tls
        .as_ref()
        .filter(|_| mode != ClientTlsMode::Disabled);
    let connection_id = state.next_connection_id();
    let greeting = Handshake::for_proxy(
        &options.server_version,
        connection_id,
        offered.is_some(),
        match options.auth {
            MysqlAuth::CachingSha2Password => caching_sha2::NAME,
            _ => native::NAME,
        },
    )
    .map_err(|e| Refusal::new(Termination::ServerError, format!("no randomness: {e}")))?;
    let greeted = tokio::time::timeout_at(
        login.deadline(),
        Box::pin(greet_client(
            client,
            &greeting,
            options.limits.startup_message,
            offered,
        )),
    )
    .await
    .map_err(|_| Refusal::new(Termination::LoginTimeout, "no login in time"))?;
    let ClientLogin {
        stream: mut client,
        reader: mut client_reader,
        response,
        sequence,
        tls: tls_info,
    } = greeted?;
    let mut reply = sequence.wrapping_add(1);
    let library = ClientLibrary::of(&response);
    if mode == ClientTlsMode::Required && tls_info.is_none() {
        let error = ProxyError::InsecureTransport;
        return Err(refuse(&mut client, reply, &error, Termination::TlsRequired).await);
    }
    if response.head.capabilities & cap::PLUGIN_AUTH == 0 {
        let error = ProxyError::AuthNotSupported;
        return Err(refuse(&mut client, reply, &error, Termination::BadStartup).await);
    }
    // A larger limit from here on: auth answers (an RSA-encrypted password) are small,
    // but the relay may start with bytes already read.
    client_reader.set_limit(options.limits.message);
    let server_password = match options.auth {
        MysqlAuth::Passthrough => None,
        method => {
            let users = state.users.load_full();
            let host = record.client.ip().to_string();
            let verifier = proxy_auth::Verifier {
                method,
                users: &users,
                greeting: &greeting,
                host: &host,
                secure: tls_info.is_some(),
                rsa: &state.rsa,
            };
            let checked = Box::pin(proxy_auth::authenticate(
                &mut client,
                &mut client_reader,
                &verifier,
                &response,
                sequence,
            ));
            let checked = tokio::time::timeout_at(login.deadline(), checked)
                .await
                .map_err(|_| Refusal::new(Termination::LoginTimeout, "no password in time"))?;
            match checked {
                Ok((password, next)) => {
                    reply = next;
                    Some(password)
                }
                Err((Denied::Refused { error, why }, next)) => {
                    let refused = refuse(&mut client, next, &error, Termination::AuthFailed).await;
                    return Err(Refusal::new(
                        refused.reason,
                        format!("{why}: {}", refused.detail),
                    ));
                }
                Err((Denied::Codec(CodecError::Io(error)), _)) => {
                    return Err(Refusal::new(Termination::ClientClosed, error));
                }
                Err((Denied::Codec(error), next)) => {
                    let error = ProxyError::MalformedPacket(error.to_string());
                    return Err(refuse(&mut client, next, &error, Termination::BadMessage).await);
                }
            }
        }
    };
    let Some((pool, rewrites)) = route(handler, &response, tls_info.as_ref()) else {
        let database = response.database.clone().unwrap_or_default();
        let error = ProxyError::UnknownDatabase(database);
        return Err(refuse(&mut client, reply, &error, Termination::NoRoute).await);
    };
    record.pool = Some(pool.name.as_str().into());
    if pool.database.pool_mode == PoolMode::Transaction
        && let Some(password) = server_password
    {
        drop(login);
        let start = pooled(PooledStart {
            handler,
            settings,
            client,
            client_reader,
            response: &response,
            pool: &pool,
            rewrites: &rewrites,
            password,
            reply,
            address: record.client,
            connection_id,
        });
        return Ok(Admitted::Pooled(Box::new(Box::pin(start).await?)));
    }
    Ok(Admitted::Session(Box::new(SessionStart {
        client,
        client_reader,
        response,
        tls_info,
        pool,
        rewrites,
        library,
        login,
        proxied_destination,
        server_password,
        reply,
        connection_id,
    })))
}

/// Session mode after the client's login: a server of the listener's role, its login
/// (relayed, or the proxy's own with the client's password), then bytes both ways.
async fn session_mode(
    handler: &MysqlHandler,
    listener: &Listener,
    settings: &ListenerSettings,
    start: SessionStart<'_>,
    record: &mut ConnectionRecord,
) -> Result<Termination, Refusal> {
    let state = &handler.state;
    let options = &handler.options;
    let SessionStart {
        mut client,
        mut client_reader,
        response,
        tls_info,
        pool,
        rewrites,
        library,
        mut login,
        proxied_destination,
        server_password,
        reply,
        connection_id,
    } = start;
    let reroute = || {
        let settings = listener.settings();
        let now = settings.handler_as::<MysqlHandler>();
        now.and_then(|now| route(now, &response, tls_info.as_ref()))
    };
    let client_address = record.client;
    let waiting_for_server = Instant::now();
    let wanted_of = |pool: &Pool| wanted_role(pool, options.role, options.replica_fallback);
    let ((pool, rewrites), attempt) = Box::pin(following_reloads(
        (pool, rewrites),
        |(pool, _)| pool,
        reroute,
        |(pool, _)| async move { connect_role(&pool, client_address, wanted_of(&pool)).await },
    ))
    .await;
    record.pool = Some(pool.name.as_str().into());
    let upstream = match attempt {
        Ok(upstream) => upstream,
        Err(error) => {
            let cant_connect = |on: &str, reason: String| ProxyError::CantConnect {
                library,
                on: on.to_string(),
                reason,
            };
            let (proxy_error, reason) = match &error {
                ConnectError::Lease(LeaseError::NoServer) => (
                    cant_connect(
                        &pool.name,
                        match wanted_of(&pool) {
                            None => "no server available",
                            Some(ServerRole::Replica) => "no replica available",
                            Some(_) => "no primary available",
                        }
                        .to_string(),
                    ),
                    Termination::NoServer,
                ),
                ConnectError::Lease(LeaseError::QueueFull) => {
                    (ProxyError::TooManyConnections, Termination::QueueFull)
                }
                ConnectError::Lease(LeaseError::QueueTimeout) => {
                    (ProxyError::TooManyConnections, Termination::QueueTimeout)
                }
                ConnectError::Failed { server, source } => (
                    cant_connect(server, source.to_string()),
                    Termination::ConnectFailed,
                ),
            };
            return Err(refuse(&mut client, reply, &proxy_error, reason).await);
        }
    };
    // The client is not charged for the time the proxy spent getting a server.
    login.excuse(waiting_for_server);
    let server = upstream.lease.server().clone();
    record.server = Some(server.name.as_str().into());
    let preamble = proxy_preamble(
        pool.send_proxy_protocol,
        record.client,
        || client_destination(proxied_destination, &client, listener),
        tls_info.as_ref(),
    );
    let mut upstream_stream = upstream.stream;
    let host = server_host(&server);
    let upstream = UpstreamLink {
        pool: &pool,
        server: &server,
        host: &host,
        preamble: &preamble,
        limit: options.limits.message,
        library,
    };
    if upstream_stream.write_all(&preamble).await.is_err() {
        let error = upstream.cant_connect("the server closed the connection".into());
        return Err(refuse(&mut client, reply, &error, Termination::ServerError).await);
    }
    let logged_in = match server_password {
        None => {
            let mut moved = Moved::default();
            let relayed = Box::pin(relayed_login(
                &mut client,
                &mut client_reader,
                upstream_stream,
                &upstream,
                response,
                &rewrites,
                (reply, login.deadline()),
                &mut moved,
            ))
            .await;
            count_bytes(record, listener, &server, moved.to_server, moved.to_client);
            relayed?
        }
        Some(password) => {
            Box::pin(own_login(
                &mut client,
                upstream_stream,
                &upstream,
                &response,
                &rewrites,
                password,
                reply,
            ))
            .await?
        }
    };
    drop(login);
    let (mut server_stream, mut server_reader, thread) = logged_in;
    // Nothing should follow the login's packets before the client's first command; pass
    // on whatever did, so the relay sees every byte.
    let late = client_reader.take_buffered();
    if !late.is_empty() {
        if server_stream.write_all(&late).await.is_err() {
            return Ok(Termination::ServerError);
        }
        count_bytes(record, listener, &server, late.len() as u64, 0);
    }
    let early = server_reader.take_buffered();
    if !early.is_empty() {
        if client.write_all(&early).await.is_err() {
            return Ok(Termination::ClientError);
        }
        count_bytes(record, listener, &server, 0, early.len() as u64);
    }
    let idle = IdleLimit::choose(
        settings.config.timeouts.client,
        pool.timeouts.server,
        pool.timeouts.tunnel,
    );
    let _kill = state.kills.register(connection_id, &server, thread);
    let mut kills = KillRewrite::new(&state.kills, &server);
    Ok(Box::pin(relay_database_session(
        &state.context,
        listener,
        &server,
        idle,
        client,
        server_stream,
        record,
        Some(&mut kills),
    ))
    .await)
}

/// What a client of a transaction pool starts with.
struct PooledStart<'h, 'a> {
    handler: &'h MysqlHandler,
    settings: &'a ListenerSettings,
    client: ClientStream,
    client_reader: PacketReader,
    response: &'a HandshakeResponse,
    pool: &'a Arc<Pool>,
    rewrites: &'a Rewrites,
    password: String,
    /// The sequence id of the OK that ends the client's login.
    reply: u8,
    address: std::net::SocketAddr,
    /// The connection id the proxy's greeting gave the client.
    connection_id: u32,
}

/// Joins the transaction pool of the client's (pool, database, user, shape) and tells the
/// client it is logged in: no server connection is needed until its first command.
async fn pooled<'h>(start: PooledStart<'h, '_>) -> Result<PooledClient<'h>, Refusal> {
    let PooledStart {
        handler,
        settings,
        mut client,
        client_reader,
        response,
        pool,
        rewrites,
        password,
        reply,
        address,
        connection_id,
    } = start;
    let options = &handler.options;
    let user = rewrites.user.as_ref().unwrap_or(&response.user);
    let database = rewrites
        .database
        .as_ref()
        .or(response.database.as_ref())
        .map_or("", String::as_str);
    let capabilities = response.head.capabilities;
    let login = PooledLogin {
        credential: Credential::Password(password),
        attributes: response.attributes.clone(),
    };
    let pairing = Pairing {
        database,
        user,
        shape: super::pooler::shape(capabilities, response.head.charset),
    };
    let member = match handler.state.tx_pools.join(pool, pairing, login) {
        Ok(member) => member,
        Err(full) => {
            let error = ProxyError::TooManyConnections;
            let refused = refuse(&mut client, reply, &error, Termination::TooManyPools).await;
            return Err(Refusal::new(
                refused.reason,
                format!("max_transaction_pools ({}) reached", full.limit),
            ));
        }
    };
    let ok = OkPacket {
        status: super::flags::status::AUTOCOMMIT,
        ..OkPacket::default()
    };
    if write_packet(&mut client, reply, &ok.encode(OK, capabilities))
        .await
        .is_err()
    {
        return Err(Refusal::new(
            Termination::ClientClosed,
            "gone before the OK",
        ));
    }
    let wanted = wanted_role(pool, options.role, options.replica_fallback);
    Ok(PooledClient {
        stream: client,
        reader: client_reader,
        capabilities,
        member,
        address,
        accept: RoleFilter::new(pool, wanted),
        limits: &options.limits,
        idle: settings.config.timeouts.client,
        hard_stop: handler.state.context.hard_stop_here(),
        library: ClientLibrary::of(response),
        kills: handler.state.kills.clone(),
        connection_id,
        split: pool
            .database
            .read_write_split
            .then_some(pool.database.sticky_after_write),
    })
}

/// What the server side of a login needs to know.
struct UpstreamLink<'a> {
    pool: &'a Arc<Pool>,
    server: &'a Arc<Server>,
    host: &'a str,
    /// The PROXY header sent first on every server connection (empty without one).
    preamble: &'a [u8],
    /// Longest packet read from the server during the login.
    limit: usize,
    /// The client's library, for the number of "can't connect".
    library: ClientLibrary,
}

impl UpstreamLink<'_> {
    /// "Can't connect" to this server, for `reason`.
    fn cant_connect(&self, reason: String) -> ProxyError {
        ProxyError::CantConnect {
            library: self.library,
            on: self.server.name.clone(),
            reason,
        }
    }
}

/// A logged-in server connection: the stream, what was read from it, its thread id.
type LoggedIn = (ServerStream, PacketReader, u32);

/// Passthrough: the server's greeting, TLS per the pool's sslmode, then the server's
/// authentication relayed ([`relay_login`]); `reply` is the sequence id of the next
/// packet to the client, with the deadline of the client's login.
#[allow(clippy::too_many_arguments)]
async fn relayed_login(
    client: &mut ClientStream,
    client_reader: &mut PacketReader,
    stream: TcpStream,
    upstream: &UpstreamLink<'_>,
    mut response: HandshakeResponse,
    rewrites: &Rewrites,
    (reply, login_deadline): (u8, Instant),
    moved: &mut Moved,
) -> Result<LoggedIn, Refusal> {
    let client_head = response.head;
    let greeted = tokio::time::timeout(
        upstream.pool.timeouts.connect,
        greet(
            stream,
            upstream.pool.tls.as_deref(),
            upstream.host,
            false,
            upstream.limit,
            |handshake| server_head(&client_head, handshake, rewrites, &response),
        ),
    )
    .await
    .unwrap_or_else(|_| Err(no_greeting()));
    let Greeted {
        stream: mut server_stream,
        reader: mut server_reader,
        handshake,
        head,
        sequence: to_server,
    } = match greeted {
        Ok(greeted) => greeted,
        Err(error) => return Err(login_failed(client, upstream, reply, error).await),
    };
    if let Some(error) = lacking(
        upstream,
        client_head.capabilities,
        handshake.capabilities,
        &handshake.server_version,
    ) {
        return Err(refuse(client, reply, &error, Termination::ServerError).await);
    }
    rewrite(&mut response, head, rewrites);
    let switch = switch_to_server(&handshake.auth_plugin, &handshake.scramble);
    let exchange = relay_login(
        Side {
            stream: client,
            reader: client_reader,
            sequence: reply,
        },
        Side {
            stream: &mut server_stream,
            reader: &mut server_reader,
            sequence: to_server,
        },
        &switch,
        response,
        moved,
    );
    match tokio::time::timeout_at(login_deadline, exchange).await {
        Err(_) => Err(Refusal::new(
            Termination::LoginTimeout,
            "no password in time",
        )),
        Ok(Err(Broken::Client(CodecError::Io(error)))) => {
            Err(Refusal::new(Termination::ClientClosed, error))
        }
        Ok(Err(Broken::Client(error))) => {
            let error = ProxyError::MalformedPacket(error.to_string());
            Err(refuse(client, 0, &error, Termination::BadMessage).await)
        }
        Ok(Err(Broken::Server(error))) => {
            let error = upstream.cant_connect(format!("lost the server during login: {error}"));
            Err(refuse(client, 0, &error, Termination::ServerError).await)
        }
        Ok(Ok(Outcome::Refused(err))) => Err(Refusal::new(Termination::ServerRefused, err)),
        Ok(Ok(Outcome::LoggedIn)) => Ok((server_stream, server_reader, handshake.connection_id)),
    }
}

/// Proxy-side authentication: switchyard logs in to the server itself as the (rewritten)
/// user with `password`, TLS per the pool's sslmode (`allow` retrying over TLS after the
/// server refused the plaintext login), then tells the client OK at sequence `reply`.
async fn own_login(
    client: &mut ClientStream,
    stream: TcpStream,
    upstream: &UpstreamLink<'_>,
    response: &HandshakeResponse,
    rewrites: &Rewrites,
    password: String,
    reply: u8,
) -> Result<LoggedIn, Refusal> {
    let options = LoginOptions {
        user: rewrites
            .user
            .clone()
            .unwrap_or_else(|| response.user.clone()),
        credential: Credential::Password(password),
        database: rewrites
            .database
            .clone()
            .or_else(|| response.database.clone()),
        capabilities: response.head.capabilities & !cap::SSL,
        attributes: response.attributes.clone(),
        max_packet: upstream.limit,
        charset: response.head.charset,
    };
    let tls = upstream.pool.tls.as_deref();
    let attempt = |stream, retry| {
        let options = &options;
        async move {
            tokio::time::timeout(
                upstream.pool.timeouts.connect,
                login(stream, tls, upstream.host, retry, options),
            )
            .await
            .unwrap_or_else(|_| Err(no_greeting()))
        }
    };
    let mut logged_in = attempt(stream, false).await;
    if let Err(refused) = &logged_in
        && retries_with_tls(tls, refused)
    {
        let retried = async {
            let (mut stream, _) = connect_server(upstream.server, upstream.pool).await?;
            stream.write_all(upstream.preamble).await?;
            Ok::<_, std::io::Error>(stream)
        };
        logged_in = match retried.await {
            Ok(stream) => attempt(stream, true).await,
            Err(error) => Err(LoginError::Io(error)),
        };
    }
    let connection = match logged_in {
        Ok(connection) => connection,
        Err(error) => return Err(login_failed(client, upstream, reply, error).await),
    };
    let session = &connection.session;
    let client_capabilities = response.head.capabilities;
    if let Some(error) = lacking(
        upstream,
        client_capabilities,
        session.server_capabilities,
        &session.server_version,
    ) {
        return Err(refuse(client, reply, &error, Termination::ServerError).await);
    }
    let ok = OkPacket {
        affected_rows: 0,
        last_insert_id: 0,
        status: session.status,
        warnings: 0,
        info: String::new(),
        session_state: Vec::new(),
    };
    if write_packet(client, reply, &ok.encode(OK, client_capabilities))
        .await
        .is_err()
    {
        return Err(Refusal::new(
            Termination::ClientClosed,
            "gone before the OK",
        ));
    }
    let thread = session.connection_id;
    Ok((connection.stream, connection.reader, thread))
}

/// The error of a server greeting that did not come in time.
fn no_greeting() -> LoginError {
    LoginError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no greeting from the server in time",
    ))
}

/// The refusal of a client whose server login failed, after telling the client (the
/// server's own ERR when it refused, else "can't connect").
async fn login_failed(
    client: &mut ClientStream,
    upstream: &UpstreamLink<'_>,
    reply: u8,
    error: LoginError,
) -> Refusal {
    let reason = match &error {
        LoginError::Tls { error: io, .. } => {
            record_failure(upstream.pool, upstream.server, Stage::Tls, io);
            Termination::ServerTlsFailed
        }
        LoginError::TlsUnavailable(_) => Termination::ServerTlsFailed,
        LoginError::Server(_) => Termination::ServerRefused,
        _ => Termination::ServerError,
    };
    let err = error.to_client(upstream.library, &upstream.server.name);
    let packet = super::packet::packet(reply, &err.encode());
    let _ = client.write_all(&packet).await;
    let _ = client.shutdown().await;
    Refusal::new(reason, error)
}

/// The error for a server lacking capabilities the client negotiated with the proxy that
/// change how results read, or plugin authentication; `None` when it has them.
fn lacking(
    upstream: &UpstreamLink<'_>,
    client: u32,
    server: u32,
    version: &str,
) -> Option<ProxyError> {
    let missing = client & FRAMING & !server;
    (missing != 0 || server & cap::PLUGIN_AUTH == 0).then(|| {
        upstream.cant_connect(format!(
            "the server ({version}) lacks capabilities the client negotiated ({missing:#x}) or plugin authentication"
        ))
    })
}

/// Sends the proxy's greeting and reads the client's answer, taking the connection to
/// TLS when the client sends an SSLRequest and `tls` (the listener's, when it offers TLS)
/// is set. Malformed packets get ERR 1156.
async fn greet_client(
    client: Rewind<TcpStream>,
    greeting: &Handshake,
    limit: usize,
    tls: Option<&Arc<ServerTls>>,
) -> Result<ClientLogin, Refusal> {
    let mut client = client;
    let mut reader = PacketReader::new(limit);
    write_packet(&mut client, 0, &greeting.encode())
        .await
        .map_err(|e| Refusal::new(Termination::ClientClosed, e))?;
    let first = read_client(&mut reader, &mut client).await?;
    let reply = match parse_client_reply(&first.payload) {
        Ok(reply) => reply,
        Err(error) => return Err(malformed(&mut client, first.next(), &error).await),
    };
    let response = match reply {
        ClientReply::Response(response) => {
            return Ok(ClientLogin {
                stream: Either::Left(client),
                reader,
                response,
                sequence: first.sequence,
                tls: None,
            });
        }
        ClientReply::SslRequest(_) => first,
    };
    let Some(tls) = tls else {
        let error = CodecError::Malformed("SSLRequest, and TLS was not offered");
        return Err(malformed(&mut client, response.next(), &error).await);
    };
    // Clients send their ClientHello right behind the SSLRequest: what was read of it
    // goes to the TLS handshake first.
    let (rest, socket) = client.into_parts();
    let mut early = reader.take_buffered();
    early.extend_from_slice(&rest);
    let client = Rewind::new(early.freeze(), socket);
    let (mut stream, info) = tls
        .accept(client)
        .await
        .map_err(|e| Refusal::new(Termination::ClientTlsError, e))?;
    let packet = read_client(&mut reader, &mut stream).await?;
    let response = match HandshakeResponse::parse(&packet.payload) {
        Ok(response) => response,
        Err(error) => return Err(malformed(&mut stream, packet.next(), &error).await),
    };
    Ok(ClientLogin {
        stream: Either::Right(Box::new(stream)),
        reader,
        response,
        sequence: packet.sequence,
        tls: Some(info),
    })
}

/// The client's next packet; one over the limit or out of sequence gets ERR 1156.
async fn read_client<S>(
    reader: &mut PacketReader,
    client: &mut S,
) -> Result<super::packet::Packet, Refusal>
where
    S: tokio::io::AsyncRead + AsyncWrite + Unpin,
{
    match reader.read(client).await {
        Ok(packet) => Ok(packet),
        Err(CodecError::Io(error)) => Err(Refusal::new(Termination::ClientClosed, error)),
        Err(error) => Err(malformed(client, 2, &error).await),
    }
}

/// Answers a malformed packet with ERR 1156 and ends the session.
async fn malformed<C: AsyncWrite + Unpin>(
    client: &mut C,
    sequence: u8,
    error: &CodecError,
) -> Refusal {
    let error = ProxyError::MalformedPacket(error.to_string());
    refuse(client, sequence, &error, Termination::BadStartup).await
}

/// Sends `error` as an ERR packet and ends the session.
async fn refuse<C: AsyncWrite + Unpin>(
    client: &mut C,
    sequence: u8,
    error: &ProxyError,
    reason: Termination,
) -> Refusal {
    let _ = client.write_all(&error.packet(sequence)).await;
    let _ = client.shutdown().await;
    Refusal::new(reason, error.message())
}

/// The head of the HandshakeResponse41 sent to the server: what the client negotiated
/// with the proxy that the server offers, without TLS (the pool's sslmode decides that),
/// with a database when one is sent.
fn server_head(
    client: &ClientHead,
    handshake: &Handshake,
    rewrites: &Rewrites,
    response: &HandshakeResponse,
) -> ClientHead {
    let mut capabilities =
        client.capabilities & handshake.capabilities & !(cap::SSL | cap::CONNECT_WITH_DB)
            | cap::REQUIRED
            | cap::LONG_PASSWORD;
    let database = rewrites.database.as_ref().or(response.database.as_ref());
    if database.is_some() && handshake.capabilities & cap::CONNECT_WITH_DB != 0 {
        capabilities |= cap::CONNECT_WITH_DB;
    }
    ClientHead {
        capabilities,
        max_packet: client.max_packet,
        charset: client.charset,
        mariadb_capabilities: 0,
    }
}

/// The client's login as the server gets it: the server-side head, the route's rewrites.
fn rewrite(response: &mut HandshakeResponse, head: ClientHead, rewrites: &Rewrites) {
    response.head = head;
    if let Some(database) = &rewrites.database {
        response.database = Some(database.clone());
    }
    if let Some(user) = &rewrites.user {
        response.user = user.clone();
    }
    if head.capabilities & cap::CONNECT_WITH_DB == 0 {
        response.database = None;
    }
    if head.capabilities & cap::CONNECT_ATTRS == 0 {
        response.attributes.clear();
    }
}

/// Picks the pool from the login (and the client's TLS), with the matching route's
/// rewrites.
fn route(
    handler: &MysqlHandler,
    response: &HandshakeResponse,
    tls: Option<&TlsInfo>,
) -> Option<(Arc<Pool>, Rewrites)> {
    let routing = &handler.routing;
    let facts = RouteFacts {
        database: Some(response.database.as_deref().unwrap_or_default()),
        user: Some(&response.user),
        sni: tls.and_then(|tls| tls.sni.as_deref()),
        client_cn: tls
            .and_then(|tls| tls.client_cert.as_ref())
            .and_then(|cert| cert.common_name.as_deref()),
        attributes: Some(&response.attributes),
        ..RouteFacts::default()
    };
    match routing.route(&facts) {
        Some(route) => Some((route.pool.clone(), route.extra.clone())),
        None => routing
            .default
            .clone()
            .map(|pool| (pool, Rewrites::default())),
    }
}
