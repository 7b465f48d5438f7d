//! `protocol = "tcp"`: optional PROXY header in, optional TLS termination (or SNI read
//! for passthrough), a server from the pool (over TLS when `upstream_tls` asks), bytes both
//! ways.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use tokio_util::either::Either;

use super::{Context, Frontend, Pools};
use crate::accept;
use crate::config::{KeyFact, ListenerConfig, ListenerOptions, Protocol, SslMode, TcpRoute};
use crate::listener::{Accepted, Handler, Listener, ListenerSettings, Serving};
use crate::observe::{ConnectionRecord, Termination};
use crate::relay::{IdleLimit, RelayCounters, relay, relay_streams, write_all};
use crate::resolve::{LookupContext, ResolveError};
use crate::route::{Matcher, RouteFacts, RouteRule, Routing};
use crate::upstream::{
    ConnectError, LeaseError, Stage, connect, following_reloads, record_failure,
};
use crate::upstream::{Lease, ServerStream, secure_upstream};

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
    fn serve(self: Arc<Self>, connection: Accepted) -> Serving {
        Box::pin(serve(self, connection))
    }
}

/// Handles one client connection to the end, logging one line when it closes. The
/// listener's settings are as of the accept: a later reload does not change it. The
/// connection is taken apart before the future is made, so the future (which lives as
/// long as the connection) keeps its parts once, not also the whole.
fn serve(handler: Arc<TcpHandler>, connection: Accepted) -> impl Future<Output = ()> + Send {
    let Accepted {
        listener,
        settings,
        stream,
        peer,
        occupancy,
    } = connection;
    let mut record = ConnectionRecord::accepted(&listener.name, peer);
    async move {
        let started = std::time::Instant::now();
        record.termination = proxy(&handler, &listener, &settings, stream, &mut record).await;
        if !record.termination.is_normal() {
            tracing::debug!(listener = %listener.name, client = %record.client, reason = %record.termination, "connection ended");
        }
        record.finish(started);
        handler.context.finish_connection(&record);
        drop(occupancy);
    }
}

/// Sets the connection up (boxed: its futures are needed only until the relay starts),
/// then relays with no more state than the relay's own.
async fn proxy(
    handler: &TcpHandler,
    listener: &Listener,
    settings: &ListenerSettings,
    client: TcpStream,
    record: &mut ConnectionRecord,
) -> Termination {
    let link = match Box::pin(establish(handler, listener, settings, client, record)).await {
        Ok(link) => link,
        Err(termination) => return termination,
    };
    let server = link.lease.server();
    let cut = server.session_token();
    let counters = RelayCounters {
        to_server: &[&server.stats.bytes_in, &listener.stats.bytes_in],
        to_client: &[&server.stats.bytes_out, &listener.stats.bytes_out],
    };
    let hard_stop = &handler.context.hard_stop;
    let outcome = match link.ends {
        // Plaintext both ways: the readiness-based relay.
        Ends::Sockets { client, server } => {
            relay(&client, &server, link.idle, &cut, hard_stop, counters, None).await
        }
        Ends::Streams { client, server } => {
            relay_streams(client, server, link.idle, &cut, hard_stop, counters, None).await
        }
    };
    record.bytes_in += outcome.bytes_in;
    record.bytes_out += outcome.bytes_out;
    outcome.termination
}

/// A connection set up for relaying.
struct Link {
    ends: Ends,
    /// The server's slot, held while the connection lasts.
    lease: Lease,
    idle: Option<IdleLimit>,
}

/// The two ends of a [`Link`].
enum Ends {
    /// Plaintext both ways: relayed on socket readiness.
    Sockets {
        client: TcpStream,
        server: TcpStream,
    },
    /// TLS on either side (boxed: a TLS stream's state is over a kilobyte).
    Streams {
        client: accept::ClientStream,
        server: Box<ServerStream>,
    },
}

/// Everything before the relay: PROXY header, TLS or SNI, route, resolver, a server
/// connection (over TLS when the pool asks), and the bytes the server must see first.
async fn establish(
    handler: &TcpHandler,
    listener: &Listener,
    settings: &ListenerSettings,
    client: TcpStream,
    record: &mut ConnectionRecord,
) -> Result<Link, Termination> {
    let mut opened = match accept::open(listener, settings, client, record.client).await {
        Ok(opened) => opened,
        Err(termination) => return Err(termination),
    };
    record.client = opened.client;
    let proxied_destination = opened.proxied_destination;
    let mut passthrough_sni = None;
    if handler.passthrough {
        match opened.read_server_name(listener).await {
            Ok(sni) => passthrough_sni = sni,
            Err(termination) => return Err(termination),
        }
    }
    let (client, tls_info, early_data) = opened.into_client_stream(listener, settings).await?;
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
    let Some(pool) = handler.routing.pool(&facts).cloned() else {
        listener.stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(listener = %listener.name, client = %record.client, "no route");
        return Err(Termination::NoRoute);
    };
    // A pool with `resolver`: the servers come from the answer for the connection's SNI.
    let pool = if pool.resolver.is_some() {
        let lookup = LookupContext {
            protocol: "tcp",
            listener: &listener.name,
            client: Some(record.client),
        };
        let fact = |fact| match fact {
            KeyFact::Sni => facts.sni,
            _ => None,
        };
        match Box::pin(pool.resolve(fact, &lookup)).await {
            Ok(resolved) => {
                record.tenant = resolved.tenant().map(Box::from);
                resolved.pool
            }
            Err(error) => {
                record.pool = Some(pool.name.as_str().into());
                listener.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(listener = %listener.name, pool = %pool.name, client = %record.client, %error, "connection not resolved");
                return Err(match error {
                    ResolveError::NoKey | ResolveError::NoRoute(_) => Termination::NoRoute,
                    ResolveError::Refused { .. } => Termination::ResolveRefused,
                    ResolveError::Unavailable(_) => Termination::ResolverUnavailable,
                });
            }
        }
    } else {
        pool
    };
    let reroute = || {
        let settings = listener.settings();
        let now = settings.handler_as::<TcpHandler>();
        now.and_then(|now| now.routing.pool(&facts).cloned())
    };
    let client_address = record.client;
    let (pool, attempt) = Box::pin(following_reloads(
        pool,
        |pool| pool,
        reroute,
        |pool| async move { connect(&pool, client_address).await },
    ))
    .await;
    record.pool = Some(pool.name.as_str().into());
    let upstream = match attempt {
        Ok(upstream) => upstream,
        Err(error) => {
            listener.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %listener.name, pool = %pool.name, client = %record.client, %error, "no server connection");
            return Err(match error {
                ConnectError::Lease(LeaseError::NoServer) => Termination::NoServer,
                ConnectError::Lease(LeaseError::QueueFull) => Termination::QueueFull,
                ConnectError::Lease(LeaseError::QueueTimeout) => Termination::QueueTimeout,
                ConnectError::Failed { .. } => Termination::ConnectFailed,
            });
        }
    };
    let server = upstream.lease.server().clone();
    record.server = Some(server.name.as_str().into());

    let destination = || accept::destination(proxied_destination, client_socket, listener);
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
    let ends = match client {
        Either::Left(client) if plain_upstream => {
            preamble.extend_from_slice(&early_data);
            if !preamble.is_empty() {
                if write_all(&upstream.stream, &preamble).await.is_err() {
                    return Err(Termination::ServerError);
                }
                count_early(record);
            }
            Ends::Sockets {
                client,
                server: upstream.stream,
            }
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
                    record_failure(&pool, &server, Stage::Tls, &error);
                    return Err(Termination::ServerTlsFailed);
                }
            };
            if !early_data.is_empty() {
                if crate::net::send_all(&mut server_stream, &early_data)
                    .await
                    .is_err()
                {
                    return Err(Termination::ServerError);
                }
                count_early(record);
            }
            Ends::Streams {
                client,
                server: server_stream,
            }
        }
    };
    Ok(Link {
        ends,
        lease: upstream.lease,
        idle,
    })
}
