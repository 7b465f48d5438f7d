//! One client session in session mode: the proxy's own greeting, the client's SSL upgrade
//! and HandshakeResponse41, routing, a server of the listener's role (over TLS per the
//! pool's `sslmode`), the server's authentication relayed ([`super::passthrough`]), then
//! bytes both ways for the session's life, unparsed but for `KILL`s ([`super::kill`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::MysqlHandler;
use super::auth::native;
use super::errors::ProxyError;
use super::flags::capabilities as cap;
use super::handshake::Handshake;
use super::kill::KillRewrite;
use super::login::{Greeted, LoginError, greet};
use super::packet::{CodecError, PacketReader, write_packet};
use super::passthrough::{Broken, Moved, Outcome, Side, relay_login, switch_to_server};
use super::response::{ClientHead, ClientReply, HandshakeResponse, parse_client_reply};
use crate::accept;
use crate::config::ClientTlsMode;
use crate::listener::{Accepted, Listener, ListenerSettings};
use crate::observe::{ConnectionRecord, Termination};
use crate::protocol::{ClientStream, Refusal, count_bytes, proxy_preamble, relay_database_session};
use crate::relay::IdleLimit;
use crate::route::{Rewrites, RouteFacts};
use crate::tls::{Rewind, ServerTls, TlsInfo};
use crate::upstream::{
    ConnectError, LeaseError, Pool, ServerRole, Stage, connect_role, following_reloads,
    record_failure, server_host, wanted_role,
};

/// Capabilities that change how result packets read: a client that negotiated them
/// with the proxy cannot be relayed to a server that lacks them.
const FRAMING: u32 = cap::DEPRECATE_EOF | cap::SESSION_TRACK;

/// Handles one client connection of a mysql listener to the end, logging one line.
pub async fn serve(handler: Arc<MysqlHandler>, connection: Accepted) {
    let started = std::time::Instant::now();
    let Accepted {
        listener,
        settings,
        stream: client,
        peer,
    } = connection;
    let mut record = ConnectionRecord::accepted(&listener.name, peer);
    record.termination = match session(&handler, &listener, &settings, client, &mut record).await {
        Ok(termination) => termination,
        Err(refusal) => {
            // A bad PROXY header was counted and logged where it was read.
            if !matches!(
                refusal.reason,
                Termination::ClientClosed | Termination::ProxyHeaderError
            ) {
                listener.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(listener = %listener.name, client = %peer, reason = %refusal.reason, detail = %refusal.detail, "mysql session refused");
            }
            refusal.reason
        }
    };
    record.finish(started);
    handler.state.context.access_log.log(&record);
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
    client: TcpStream,
    record: &mut ConnectionRecord,
) -> Result<Termination, Refusal> {
    let state = &handler.state;
    let options = &handler.options;
    let opened = accept::open(listener, settings, client, record.client)
        .await
        .map_err(|reason| Refusal::new(reason, "bad PROXY protocol header"))?;
    record.client = opened.client;
    let destination = opened.destination(listener);
    let client = opened.into_rewind();
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
        native::NAME,
    )
    .map_err(|e| Refusal::new(Termination::ServerError, format!("no randomness: {e}")))?;
    let login = tokio::time::timeout(
        settings.config.timeouts.client,
        greet_client(client, &greeting, options.limits.startup_message, offered),
    )
    .await
    .map_err(|_| Refusal::new(Termination::ClientTimeout, "no login in time"))?;
    let ClientLogin {
        stream: mut client,
        reader: mut client_reader,
        mut response,
        sequence,
        tls: tls_info,
    } = login?;
    let reply = sequence.wrapping_add(1);
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
    let Some((pool, rewrites)) = route(handler, &response, tls_info.as_ref()) else {
        let database = response.database.clone().unwrap_or_default();
        let error = ProxyError::UnknownDatabase(database);
        return Err(refuse(&mut client, reply, &error, Termination::NoRoute).await);
    };
    record.pool = Some(pool.name.clone());

    let reroute = || {
        let settings = listener.settings();
        let now = settings.handler_as::<MysqlHandler>();
        now.and_then(|now| route(now, &response, tls_info.as_ref()))
    };
    let client_address = record.client;
    let wanted_of = |pool: &Pool| wanted_role(pool, options.role, options.replica_fallback);
    let ((pool, rewrites), attempt) = following_reloads(
        (pool, rewrites),
        |(pool, _)| pool,
        reroute,
        |(pool, _)| async move { connect_role(&pool, client_address, wanted_of(&pool)).await },
    )
    .await;
    record.pool = Some(pool.name.clone());
    let upstream = match attempt {
        Ok(upstream) => upstream,
        Err(error) => {
            let (proxy_error, reason) = match &error {
                ConnectError::Lease(LeaseError::NoServer) => (
                    ProxyError::CantConnect(match wanted_of(&pool) {
                        None => "no server available".to_string(),
                        Some(ServerRole::Replica) => "no replica available".to_string(),
                        Some(_) => "no primary available".to_string(),
                    }),
                    Termination::NoServer,
                ),
                ConnectError::Lease(LeaseError::QueueFull) => {
                    (ProxyError::TooManyConnections, Termination::QueueFull)
                }
                ConnectError::Lease(LeaseError::QueueTimeout) => {
                    (ProxyError::TooManyConnections, Termination::QueueTimeout)
                }
                ConnectError::Failed { .. } => (
                    ProxyError::CantConnect(error.to_string()),
                    Termination::ConnectFailed,
                ),
            };
            return Err(refuse(&mut client, reply, &proxy_error, reason).await);
        }
    };
    let server = upstream.lease.server().clone();
    record.server = Some(server.name.clone());
    let preamble = proxy_preamble(
        pool.send_proxy_protocol,
        record.client,
        || destination,
        tls_info.as_ref(),
    );
    let mut upstream_stream = upstream.stream;
    if upstream_stream.write_all(&preamble).await.is_err() {
        let error = ProxyError::CantConnect("the server closed the connection".into());
        return Err(refuse(&mut client, reply, &error, Termination::ServerError).await);
    }
    let host = server_host(&server);
    let client_head = response.head;
    let greeted = tokio::time::timeout(
        pool.timeouts.connect,
        greet(
            upstream_stream,
            pool.tls.as_deref(),
            &host,
            false,
            options.limits.message,
            |handshake| server_head(&client_head, handshake, &rewrites, &response),
        ),
    )
    .await
    .unwrap_or_else(|_| {
        Err(LoginError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no greeting from the server in time",
        )))
    });
    let Greeted {
        stream: mut server_stream,
        reader: mut server_reader,
        handshake,
        head,
        sequence: to_server,
    } = match greeted {
        Ok(greeted) => greeted,
        Err(error) => {
            let reason = match &error {
                LoginError::Tls { error: io, .. } => {
                    record_failure(&pool, &server, Stage::Tls, io);
                    Termination::ServerTlsFailed
                }
                LoginError::TlsUnavailable(_) => Termination::ServerTlsFailed,
                LoginError::Server(_) => Termination::ServerRefused,
                _ => Termination::ServerError,
            };
            let packet = super::packet::packet(reply, &error.to_client().encode());
            let _ = client.write_all(&packet).await;
            let _ = client.shutdown().await;
            return Err(Refusal::new(reason, error));
        }
    };
    let missing = client_head.capabilities & FRAMING & !handshake.capabilities;
    if missing != 0 || handshake.capabilities & cap::PLUGIN_AUTH == 0 {
        let error = ProxyError::CantConnect(format!(
            "the server ({}) lacks capabilities the client negotiated ({missing:#x}) or plugin authentication",
            handshake.server_version
        ));
        return Err(refuse(&mut client, reply, &error, Termination::ServerError).await);
    }
    rewrite(&mut response, head, &rewrites);
    let switch = switch_to_server(&handshake.auth_plugin, &handshake.scramble);
    let mut moved = Moved::default();
    let exchange = relay_login(
        Side {
            stream: &mut client,
            reader: &mut client_reader,
            sequence: reply,
        },
        Side {
            stream: &mut server_stream,
            reader: &mut server_reader,
            sequence: to_server,
        },
        &switch,
        response,
        &mut moved,
    );
    let outcome = tokio::time::timeout(settings.config.timeouts.client, exchange).await;
    count_bytes(record, listener, &server, moved.to_server, moved.to_client);
    match outcome {
        Err(_) => {
            return Err(Refusal::new(
                Termination::ClientTimeout,
                "no password in time",
            ));
        }
        Ok(Err(Broken::Client(CodecError::Io(error)))) => {
            return Err(Refusal::new(Termination::ClientClosed, error));
        }
        Ok(Err(Broken::Client(error))) => {
            let error = ProxyError::MalformedPacket(error.to_string());
            return Err(refuse(&mut client, 0, &error, Termination::BadMessage).await);
        }
        Ok(Err(Broken::Server(error))) => {
            let error = ProxyError::CantConnect(format!("lost the server during login: {error}"));
            return Err(refuse(&mut client, 0, &error, Termination::ServerError).await);
        }
        Ok(Ok(Outcome::Refused(err))) => {
            return Err(Refusal::new(Termination::ServerRefused, err));
        }
        Ok(Ok(Outcome::LoggedIn)) => {}
    }
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
    let _kill = state
        .kills
        .register(connection_id, &server, handshake.connection_id);
    let mut kills = KillRewrite::new(&state.kills, &server);
    Ok(relay_database_session(
        &state.context,
        listener,
        &server,
        idle,
        client,
        server_stream,
        record,
        Some(&mut kills),
    )
    .await)
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
        stream: Either::Right(stream),
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
