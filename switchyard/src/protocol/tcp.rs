//! `protocol = "tcp"`: optional PROXY header in, optional TLS termination (or SNI read
//! for passthrough), a server from the pool (over TLS when `upstream_tls` asks), bytes both
//! ways.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use tokio_util::either::Either;

use super::{Context, Frontend, Pools};
use crate::config::{ListenerConfig, ListenerOptions, Protocol, SslMode, TcpRoute};
use crate::listener::{Accepted, Handler, Listener, ListenerSettings};
use crate::observe::{ConnectionRecord, Termination};
use crate::relay::{IdleLimit, RelayCounters, relay, relay_streams, write_all};
use crate::route::{Matcher, RouteFacts, RouteRule, Routing};
use crate::tls::{Rewind, read_client_hello, secure_upstream};
use crate::upstream::{ConnectError, LeaseError, connect};

/// The `tcp` front end.
#[derive(Debug)]
pub struct Tcp {
    context: Arc<Context>,
}

impl Tcp {
    /// The front end of every `tcp` listener.
    pub fn new(context: &Arc<Context>) -> Self {
        Self {
            context: context.clone(),
        }
    }
}

impl Frontend for Tcp {
    fn protocol(&self) -> Protocol {
        Protocol::Tcp
    }

    fn handler(
        &self,
        listener: &ListenerConfig,
        pools: &Pools,
    ) -> Result<Arc<dyn Handler>, String> {
        let ListenerOptions::Tcp(options) = &listener.options else {
            return Err(format!(
                "listener `{}` is not a tcp listener",
                listener.name
            ));
        };
        Ok(Arc::new(TcpHandler {
            context: self.context.clone(),
            passthrough: options.tls_passthrough,
            routing: Routing::build(listener.pool.as_deref(), &options.routes, pools, |_, _| ())?,
        }))
    }
}

impl RouteRule for TcpRoute {
    fn pool(&self) -> &str {
        &self.pool
    }

    fn matcher(&self) -> Matcher {
        Matcher {
            sni: self.sni.clone(),
            ..Matcher::default()
        }
    }
}

/// What a `tcp` listener's connections share.
#[derive(Debug)]
struct TcpHandler {
    context: Arc<Context>,
    /// Read the ClientHello for its SNI and pass the TLS bytes through.
    passthrough: bool,
    routing: Routing<()>,
}

impl Handler for TcpHandler {
    fn serve(
        self: Arc<Self>,
        connection: Accepted,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(serve(self, connection))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Handles one client connection to the end, logging one line when it closes. The
/// listener's settings are as of the accept: a later reload does not change it.
async fn serve(handler: Arc<TcpHandler>, connection: Accepted) {
    let started = std::time::Instant::now();
    let Accepted {
        listener,
        settings,
        stream,
        peer,
    } = connection;
    let mut record = ConnectionRecord::accepted(&listener.name, peer);
    record.termination = proxy(&handler, &listener, &settings, stream, &mut record).await;
    if !record.termination.is_normal() {
        tracing::debug!(listener = %listener.name, client = %record.client, reason = %record.termination, "connection ended");
    }
    record.finish(started);
    handler.context.access_log.log(&record);
}

async fn proxy(
    handler: &TcpHandler,
    listener: &Listener,
    settings: &ListenerSettings,
    client: TcpStream,
    record: &mut ConnectionRecord,
) -> Termination {
    let mut client = client;
    // The address the client reached: from its PROXY header, else looked up only when a
    // PROXY header is sent upstream (a syscall most connections do not need).
    let mut destination = None;
    let mut early_data = bytes::Bytes::new();
    if settings.config.proxy_protocol.is_some() {
        match super::read_proxy_header(listener, settings, &mut client, record).await {
            Ok(proxied) => {
                destination = proxied.destination;
                early_data = proxied.early_data;
            }
            Err(reason) => return reason,
        }
    }

    let mut passthrough_sni = None;
    if handler.passthrough {
        match Box::pin(read_client_hello(
            &mut client,
            std::mem::take(&mut early_data),
        ))
        .await
        {
            Ok((sni, bytes)) => {
                passthrough_sni = sni;
                early_data = bytes;
            }
            Err(error) => {
                listener.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(listener = %listener.name, client = %record.client, %error, "no TLS ClientHello");
                return Termination::ClientHelloError;
            }
        }
    }
    let (client, tls_info) = match &settings.tls {
        Some(tls) => {
            let prefix = std::mem::take(&mut early_data);
            // TLS state lives on the heap so that plaintext connections do not carry its
            // size in their task.
            match Box::pin(tls.accept(Rewind::new(prefix, client))).await {
                Ok((stream, info)) => (Either::Right(Box::new(stream)), Some(info)),
                Err(error) => {
                    listener.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(listener = %listener.name, client = %record.client, %error, "TLS handshake failed");
                    return Termination::TlsHandshakeFailed;
                }
            }
        }
        None => (Either::Left(client), None),
    };
    let client_socket = match &client {
        Either::Left(socket) => socket,
        Either::Right(tls) => tls.get_ref().0.get_ref(),
    };

    let facts = RouteFacts {
        sni: tls_info
            .as_ref()
            .and_then(|info| info.sni.as_deref())
            .or(passthrough_sni.as_deref()),
        ..RouteFacts::default()
    };
    let Some(mut pool) = handler.routing.pool(&facts).cloned() else {
        listener.stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(listener = %listener.name, client = %record.client, "no route");
        return Termination::NoRoute;
    };
    record.pool = Some(pool.name.clone());
    let mut attempt = connect(&pool, record.client).await;
    // A reload that replaced the pool after this connection was accepted drains the servers
    // it removed; when nothing else is left in the old pool, the new one takes the client.
    while matches!(attempt, Err(ConnectError::Lease(LeaseError::NoServer))) && pool.is_retired() {
        let settings = listener.settings();
        let now = settings.handler.as_any().downcast_ref::<TcpHandler>();
        let Some(current) = now.and_then(|now| now.routing.pool(&facts).cloned()) else {
            break;
        };
        pool = current;
        record.pool = Some(pool.name.clone());
        attempt = connect(&pool, record.client).await;
    }
    let upstream = match attempt {
        Ok(upstream) => upstream,
        Err(error) => {
            listener.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %listener.name, pool = %pool.name, client = %record.client, %error, "no server connection");
            return match error {
                ConnectError::Lease(LeaseError::NoServer) => Termination::NoServer,
                ConnectError::Lease(LeaseError::QueueFull) => Termination::QueueFull,
                ConnectError::Lease(LeaseError::QueueTimeout) => Termination::QueueTimeout,
                ConnectError::Failed { .. } => Termination::ConnectFailed,
            };
        }
    };
    let server = upstream.lease.server().clone();
    record.server = Some(server.name.clone());

    let destination =
        || destination.unwrap_or_else(|| client_socket.local_addr().unwrap_or(listener.address));
    let mut preamble = super::proxy_preamble(
        pool.send_proxy_protocol,
        record.client,
        destination,
        tls_info.as_ref(),
    );
    let plain_upstream = pool
        .tls
        .as_ref()
        .is_none_or(|tls| matches!(tls.mode(), SslMode::Disable | SslMode::Allow));
    let early = early_data.len() as u64;
    let count_early =
        |record: &mut ConnectionRecord| super::count_bytes(record, listener, &server, early, 0);

    let idle = IdleLimit::choose(
        settings.config.timeouts.client,
        pool.timeouts.server,
        pool.timeouts.tunnel,
    );
    let cut = server.session_token();
    let counters = RelayCounters {
        to_server: &[&server.stats.bytes_in, &listener.stats.bytes_in],
        to_client: &[&server.stats.bytes_out, &listener.stats.bytes_out],
    };
    let outcome = match client {
        // Plaintext both ways: the readiness-based relay.
        Either::Left(client) if plain_upstream => {
            preamble.extend_from_slice(&early_data);
            if !preamble.is_empty() {
                if write_all(&upstream.stream, &preamble, &()).await.is_err() {
                    return Termination::ServerError;
                }
                count_early(record);
            }
            relay(
                &client,
                &upstream.stream,
                idle,
                &cut,
                &handler.context.hard_stop,
                counters,
            )
            .await
        }
        client => {
            let mut server_stream = match Box::pin(secure_upstream(
                &pool,
                &server,
                upstream.stream,
                &preamble,
            ))
            .await
            {
                Ok(stream) => Box::new(stream),
                Err(error) => {
                    listener.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(listener = %listener.name, pool = %pool.name, server = %server.name, client = %record.client, %error, "no server connection");
                    // Like a failed connect, a failed handshake is a passive health check.
                    if pool.health.is_some()
                        && let Some(transition) = server.record_check(Err(format!("tls: {error}")))
                    {
                        crate::health::on_transition(&pool, &server, &transition);
                    }
                    return Termination::ServerTlsFailed;
                }
            };
            if !early_data.is_empty() {
                if crate::net::send_all(&mut server_stream, &early_data)
                    .await
                    .is_err()
                {
                    return Termination::ServerError;
                }
                count_early(record);
            }
            Box::pin(relay_streams(
                client,
                server_stream,
                idle,
                &cut,
                &handler.context.hard_stop,
                counters,
            ))
            .await
        }
    };
    record.bytes_in += outcome.bytes_in;
    record.bytes_out += outcome.bytes_out;
    outcome.termination
}
