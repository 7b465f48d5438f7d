//! `protocol = "http"`: an HTTP/1.1 and HTTP/2 (ALPN `h2` over TLS, h2c prior knowledge in
//! clear) reverse proxy on hyper.
//!
//! Data path: the client stream (after an optional PROXY header and, with `tls`, the TLS
//! handshake) goes through [`guard`]
//! (strict framing checks, request and keep-alive clocks), then hyper's server (HTTP/1.1
//! or HTTP/2 by the connection preface); each request is routed, rewritten and sent by
//! [`proxy`] over a pooled server connection from [`client`]; bodies stream both ways
//! ([`body`]); upgrades become byte tunnels ([`tunnel`]); each request is logged
//! ([`log`]) and counted ([`metrics`]).
//!
//! [`serve_connection`] is generic over the client stream: plain TCP, or TLS with what the
//! handshake told (SNI, ALPN, client certificate) in [`ConnectionFacts`].

pub mod body;
mod check;
pub mod client;
pub mod errors;
pub mod guard;
pub mod headers;
pub mod log;
pub mod metrics;
mod park;
pub mod proxy;
pub mod scanner;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

pub use headers::ConnectionFacts;
pub use metrics::RequestMetrics;

use super::{Context, Frontend, Pools};
use crate::accept;
use crate::config::{
    HeaderRules, HttpOptions, HttpRoute, ListenerConfig, ListenerOptions, Protocol,
};
use crate::health::Check;
use crate::idle_lot::PARK_AFTER;
use crate::listener::{Accepted, Handler, Listener, ListenerSettings, Serving};
use crate::observe::Termination;
use crate::route::{Matcher, RouteRule, Routing};

/// The `http` front end: what every HTTP listener shares (the request metrics).
#[derive(Debug)]
pub struct Http {
    context: Arc<Context>,
    metrics: Arc<RequestMetrics>,
}

impl Http {
    /// The front end of every `http` listener.
    pub fn new(context: &Arc<Context>) -> Self {
        Self {
            context: context.clone(),
            metrics: Arc::default(),
        }
    }
}

impl Frontend for Http {
    fn protocol(&self) -> Protocol {
        Protocol::Http
    }

    fn handler(
        &self,
        listener: &ListenerConfig,
        pools: &Pools,
    ) -> Result<Arc<dyn Handler>, String> {
        let ListenerOptions::Http(options) = &listener.options else {
            return Err(format!(
                "listener `{}` is not an http listener",
                listener.name
            ));
        };
        let routing = Routing::build(
            listener.pool.as_deref(),
            &options.routes,
            pools,
            |route, _| RouteRules {
                request: route.request_headers.clone(),
                response: route.response_headers.clone(),
            },
        )?;
        Ok(Arc::new(HttpHandler {
            context: self.context.clone(),
            metrics: self.metrics.clone(),
            options: options.http.clone(),
            routing,
        }))
    }

    /// `http_responses`: the pool's responses by status class, in all and per server.
    fn pool_status(&self, pool: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut status = serde_json::Map::new();
        if let Some(responses) = self.metrics.responses(pool)
            && let Ok(value) = serde_json::to_value(responses)
        {
            status.insert("http_responses".to_string(), value);
        }
        status
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    fn checks(&self) -> Vec<(crate::config::CheckKind, Arc<dyn Check>)> {
        vec![(
            crate::config::CheckKind::Http,
            Arc::new(check::HttpHealthCheck),
        )]
    }
}

impl RouteRule for HttpRoute {
    fn pool(&self) -> &str {
        &self.pool
    }

    fn matcher(&self) -> Matcher {
        Matcher {
            host: self.host.clone(),
            path_prefix: self.path_prefix.clone(),
            sni: self.sni.clone(),
            method: self.method.clone(),
            headers: self.headers.clone(),
            ..Matcher::default()
        }
    }
}

/// What a route does to the requests it takes and their responses.
#[derive(Debug)]
pub struct RouteRules {
    /// Applied to requests.
    pub request: HeaderRules,
    /// Applied to responses.
    pub response: HeaderRules,
}

/// What an `http` listener's connections share.
#[derive(Debug)]
pub struct HttpHandler {
    /// Shutdown tokens and the access log.
    pub context: Arc<Context>,
    /// Request counters and durations.
    pub metrics: Arc<RequestMetrics>,
    /// Request limits and forwarding headers.
    pub options: HttpOptions,
    /// Routes with their header rules.
    pub routing: Routing<RouteRules>,
}

impl Handler for HttpHandler {
    fn serve(self: Arc<Self>, connection: Accepted) -> Serving {
        Box::pin(serve(self, connection))
    }

    fn at_capacity(&self, tls: bool) -> Vec<u8> {
        if tls {
            return Vec::new();
        }
        let body = "too many connections\n";
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Handles one accepted TCP connection: the PROXY header if the listener expects one, the
/// TLS handshake if it terminates TLS, then HTTP until the client or the proxy closes it.
fn serve(handler: Arc<HttpHandler>, connection: Accepted) -> impl Future<Output = ()> + Send {
    // Boxed, and made before the future: the accept stage runs once, and a connection's
    // future should be sized by what it keeps for its life, not by the handshake nor by
    // the accepted connection it took apart.
    let Accepted {
        listener,
        settings,
        stream,
        peer,
        occupancy,
    } = connection;
    let opening = Box::pin(open(handler, listener, settings, stream, peer));
    async move {
        let Some((context, stream, early)) = opening.await else {
            return;
        };
        serve_connection(context, stream, early).await;
        drop(occupancy);
    }
}

/// The accept stage: the PROXY header, the TLS handshake; then what every request of the
/// connection shares, its stream, and the bytes already read from it. `None`: the stage
/// failed (and said so).
async fn open(
    handler: Arc<HttpHandler>,
    listener: Arc<Listener>,
    settings: Arc<ListenerSettings>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(Arc<proxy::ConnectionContext>, accept::ClientStream, Bytes)> {
    let opened = accept::open(&listener, &settings, stream, peer)
        .await
        .ok()?;
    let mut facts = ConnectionFacts::new(opened.client);
    let (stream, tls, early) = opened.into_client_stream(&listener, &settings).await.ok()?;
    facts.tls = tls.map(Box::new);
    // What the connection's requests share lasts as long as it does (see `memory`).
    let context = crate::memory::lasting(|| {
        Arc::new(proxy::ConnectionContext {
            handler,
            listener,
            settings,
            facts,
            in_flight: guard::Activity::default(),
            response_timer: std::sync::Mutex::new(None),
            accepted: tokio::time::Instant::now(),
        })
    });
    Some((context, stream, early))
}

/// At shutdown (and binary upgrade), how long an idle HTTP/1.1 connection is given for a
/// next request, whose response then says `Connection: close`. Closing it at once races
/// with a request the client is sending right then: lost, and not safely retryable. A client
/// in the middle of a conversation sends within this; an idle one is closed after it.
const SHUTDOWN_IDLE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves HTTP on a client's stream; `early` holds bytes already read from it.
///
/// A connection alternates between two phases. Serving: a hyper connection (its buffers,
/// the framing guard, the shutdown watch) in a box of its own. Parked (see `park`): only
/// the stream, what every request of the connection shares, and the wait for the
/// client's next bytes. Most keep-alive connections spend their life parked, so that
/// phase is what decides the memory an idle client costs.
fn serve_connection(
    context: Arc<proxy::ConnectionContext>,
    stream: accept::ClientStream,
    early: Bytes,
) -> impl Future<Output = ()> + Send {
    // Made before the future and used in place by it, so the stream is laid out once in
    // the future a parked connection keeps (an `async fn` keeps its arguments besides).
    let (mut stream, mut early) = (Some(stream), early);
    async move {
        // Not `while let`: its scrutinee would be kept, as large as the stream, in the
        // future for the whole loop.
        loop {
            let Some(serving) = stream.take() else { break };
            // Boxed: the serving phase's future is most of a busy connection's memory, and
            // a parked connection lets go of it.
            let served = Box::pin(serve_until_parked(
                &context,
                serving,
                std::mem::take(&mut early),
            ));
            let Some(parked) = served.await else { break };
            context.drop_response_timer();
            let parked = stream.insert(parked);
            if !park::wait(parked, &context, &mut early).await {
                drop(stream.take());
            }
        }
        if let Some(status) = context.in_flight.refused() {
            log_refusal(
                &context.handler,
                &context.listener,
                context.facts.client,
                status,
            );
        }
    }
}

/// Serves `stream` with a hyper connection until it ends: `Some(stream)` when the guard
/// parked it (idle for [`PARK_AFTER`]), `None` when the connection is over.
async fn serve_until_parked(
    context: &Arc<proxy::ConnectionContext>,
    stream: accept::ClientStream,
    early: Bytes,
) -> Option<accept::ClientStream> {
    let handler = &context.handler;
    let config = &context.settings.config;
    let activity = &context.in_flight;
    let limits = scanner::HeadLimits {
        max_header_bytes: handler.options.max_header_bytes,
        max_headers: handler.options.max_headers,
        max_uri_bytes: handler.options.max_uri_bytes,
    };
    let clocks = guard::Clocks {
        http_request: config.timeouts.http_request,
        keep_alive: config.timeouts.keep_alive,
        park_after: PARK_AFTER,
    };
    // Over TLS the client said in ALPN which protocol it speaks; without ALPN (and in
    // clear) the connection preface tells.
    let alpn = context
        .facts
        .tls
        .as_ref()
        .and_then(|tls| tls.alpn.as_deref());
    let mut builder = match alpn {
        Some(b"h2") => auto::Builder::new(TokioExecutor::new()).http2_only(),
        Some(b"http/1.1") => auto::Builder::new(TokioExecutor::new()).http1_only(),
        _ => auto::Builder::new(TokioExecutor::new()),
    };
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        // The guard keeps the head clock (and answers 408); hyper's would close silently.
        .header_read_timeout(None)
        // The guard enforces the configured limits; hyper's buffer must not refuse first.
        .max_buf_size(handler.options.max_header_bytes.max(8192) + 8192);
    // The guard refuses a head with more header lines than the limit before hyper reads
    // it. Within its default, hyper parses on the stack; given any limit of its own it
    // allocates two arrays of that many entries for every request.
    if handler.options.max_headers > HYPER_DEFAULT_MAX_HEADERS {
        http1.max_headers(handler.options.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(handler.options.max_header_bytes).unwrap_or(u32::MAX));
    let service_context = context.clone();
    let service = service_fn(move |request| {
        // Boxed: a request's future is large, and hyper moves the one it is given.
        let response = Box::pin(proxy::handle(service_context.clone(), request));
        async move { Ok::<_, std::convert::Infallible>(response.await) }
    });
    let park_slot = guard::ParkSlot::default();
    let guarded = guard::Guard::new(
        stream,
        early,
        limits,
        clocks,
        context.clone(),
        park_slot.clone(),
    );
    let keep_alive = config.timeouts.keep_alive;
    // In a block: hyper lets go of the guard when its connection is dropped at the end of
    // it, and a parked stream is then in the slot.
    let result = {
        let mut connection =
            std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(guarded), service));
        // Polled only when what it waits on fires, not on each of the connection's wake-ups.
        let wind_down = crate::on_wake::OnWake::new(async {
            tokio::select! {
                // An idle HTTP/1.1 connection is closed after its next response, not while
                // its client may be sending on it; one that stays idle through the grace is
                // closed.
                () = async {
                    handler.context.stopping.cancelled().await;
                    tokio::select! {
                        () = activity.serving_or_opaque() => {}
                        () = tokio::time::sleep(SHUTDOWN_IDLE_GRACE) => {}
                    }
                } => {}
                () = activity.idle_beyond(keep_alive, context.accepted) => {}
            }
        });
        tokio::select! {
            result = connection.as_mut() => result,
            () = wind_down => {
                // Shutdown, or an idle HTTP/2 connection: finish what is in flight, take no
                // more.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection.as_mut() => result,
                    () = handler.context.hard_stop.cancelled() => return None,
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(listener = %context.listener.name, %error, "client connection ended with an error");
    }
    park_slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// The header lines hyper's HTTP/1 parser holds without a limit set (`hyper::proto::h1::role`).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Logs the request the framing guard refused (or timed out) as an access log line.
fn log_refusal(handler: &HttpHandler, listener: &Listener, client: SocketAddr, status: u16) {
    let termination = match status {
        408 => Termination::RequestTimeout,
        414 => Termination::UriTooLong,
        431 => Termination::HeadersTooLarge,
        _ => Termination::BadRequest,
    };
    listener.stats.failed.fetch_add(1, Ordering::Relaxed);
    handler.metrics.record(
        &listener.name,
        None,
        None,
        status,
        std::time::Duration::ZERO,
    );
    handler.context.access_log.log_with(|line| {
        log::RequestRecord {
            status,
            termination,
            ..log::RequestRecord::new(&listener.name, client)
        }
        .write(line)
    });
}
