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
pub mod client;
pub mod errors;
pub mod guard;
pub mod headers;
pub mod log;
pub mod metrics;
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use headers::ConnectionFacts;
pub use metrics::RequestMetrics;

use crate::config::RouteConfig;
use crate::listener::{Listener, ListenerSettings};
use crate::proxy_protocol::{self, ProxyHeader};
use crate::runtime::Shared;
use crate::tls::Rewind;

/// Handles one accepted TCP connection: the PROXY header if the listener expects one, the
/// TLS handshake if it terminates TLS, then HTTP until the client or the proxy closes it.
pub async fn serve(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    settings: Arc<ListenerSettings>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let mut facts = ConnectionFacts::new(peer);
    let mut early = Bytes::new();
    if settings.config.proxy_protocol.is_some() {
        match proxy_protocol::read_header(&mut client, settings.config.timeouts.proxy_header).await
        {
            Ok((header, rest)) => {
                if let ProxyHeader::Proxied(addrs) = header {
                    facts.client = addrs.source;
                }
                early = rest;
            }
            Err(error) => {
                listener.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(listener = %listener.name, client = %peer, %error, "bad PROXY protocol header");
                return;
            }
        }
    }
    let Some(tls) = settings.tls.clone() else {
        serve_connection(shared, listener, settings, client, early, facts).await;
        return;
    };
    match tls.accept(Rewind::new(early, client)).await {
        Ok((stream, info)) => {
            facts.tls = Some(info);
            serve_connection(shared, listener, settings, stream, Bytes::new(), facts).await;
        }
        Err(error) => {
            listener.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %listener.name, client = %facts.client, %error, "TLS handshake failed");
        }
    }
}

/// At shutdown (and binary upgrade), how long an idle HTTP/1.1 connection is given for a
/// next request, whose response then says `Connection: close`. Closing it at once races
/// with a request the client is sending right then: lost, and not safely retryable. A client
/// in the middle of a conversation sends within this; an idle one is closed after it.
const SHUTDOWN_IDLE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The ALPN protocols an `http` listener offers when its `tls` names none: HTTP/2 first.
pub const DEFAULT_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// Fills in the ALPN lists HTTP needs when `alpn` is not set: `tls` on `http` listeners
/// offers [`DEFAULT_ALPN`] (clients get HTTP/2 without configuration), and `upstream_tls`
/// on pools that `http` listeners use offers the pool's `http_version` (`h2` or
/// `http/1.1`), so that an HTTPS server speaking both knows which one is coming. Route
/// `host` patterns are put in the form request authorities are compared in (A-labels, no
/// trailing dot; see [`crate::authority::route_pattern`]); one that cannot be is left for
/// [`validate_route`] to report.
pub fn apply_defaults(config: &mut crate::config::Config) {
    let mut http_pools = std::collections::HashSet::new();
    for listener in &mut config.listeners {
        if listener.protocol != crate::config::Protocol::Http {
            continue;
        }
        if let Some(tls) = &mut listener.tls
            && tls.alpn.is_empty()
        {
            tls.alpn = DEFAULT_ALPN.iter().map(|p| p.to_string()).collect();
        }
        for host in listener.routes.iter_mut().filter_map(|r| r.host.as_mut()) {
            if let Ok(pattern) = crate::authority::route_pattern(host) {
                *host = pattern;
            }
        }
        http_pools.extend(listener.pool.iter().cloned());
        http_pools.extend(listener.routes.iter().map(|route| route.pool.clone()));
    }
    for pool in &mut config.pools {
        if !http_pools.contains(&pool.name) {
            continue;
        }
        if let Some(tls) = &mut pool.upstream_tls
            && tls.alpn.is_empty()
        {
            let alpn = match pool.http_version {
                crate::config::HttpVersion::Http1 => "http/1.1",
                crate::config::HttpVersion::Http2 => "h2",
            };
            tls.alpn = vec![alpn.to_string()];
        }
    }
}

/// Serves HTTP on any client stream (plain TCP now, TLS once the TLS front end hands its
/// streams here); `early` holds bytes already read from it.
pub async fn serve_connection<S>(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    settings: Arc<ListenerSettings>,
    stream: S,
    early: Bytes,
    facts: ConnectionFacts,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &settings.config;
    let activity = Arc::new(guard::Activity::default());
    let guarded = guard::Guard::new(
        stream,
        early,
        scanner::HeadLimits {
            max_header_bytes: config.http.max_header_bytes,
            max_headers: config.http.max_headers,
            max_uri_bytes: config.http.max_uri_bytes,
        },
        guard::Clocks {
            http_request: config.timeouts.http_request,
            keep_alive: config.timeouts.keep_alive,
        },
        activity.clone(),
    );
    // Over TLS the client said in ALPN which protocol it speaks; without ALPN (and in
    // clear) the connection preface tells.
    let mut builder = match facts.tls.as_ref().and_then(|tls| tls.alpn.as_deref()) {
        Some(b"h2") => auto::Builder::new(TokioExecutor::new()).http2_only(),
        Some(b"http/1.1") => auto::Builder::new(TokioExecutor::new()).http1_only(),
        _ => auto::Builder::new(TokioExecutor::new()),
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        // The guard keeps the head clock (and answers 408); hyper's would close silently.
        .header_read_timeout(None)
        // The guard enforces the configured limits; hyper's buffer must not refuse first.
        .max_buf_size(config.http.max_header_bytes.max(8192) + 8192)
        .max_headers(config.http.max_headers + 1);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.http.max_header_bytes).unwrap_or(u32::MAX));
    let hard_stop = shared.hard_stop.clone();
    let client = facts.client;
    let context = Arc::new(proxy::ConnectionContext {
        shared: shared.clone(),
        listener: listener.clone(),
        settings: settings.clone(),
        facts,
        in_flight: activity.clone(),
        metrics: metrics::MetricHandles::default(),
        response_timer: std::sync::Mutex::new(None),
    });
    let service = service_fn(move |request| {
        // Boxed: a request's future is large, and hyper moves the one it is given.
        let response = Box::pin(proxy::handle(context.clone(), request));
        async move { Ok::<_, std::convert::Infallible>(response.await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(guarded), service);
    tokio::pin!(connection);
    let accepted = tokio::time::Instant::now();
    let keep_alive = settings.config.timeouts.keep_alive;
    // Polled only when what it waits on fires, not on each of the connection's wake-ups.
    let wind_down = crate::on_wake::OnWake::new(async {
        tokio::select! {
            // An idle HTTP/1.1 connection is closed after its next response, not while its
            // client may be sending on it; one that stays idle through the grace is closed.
            () = async {
                shared.accepting_stopped().await;
                tokio::select! {
                    () = activity.serving_or_opaque() => {}
                    () = tokio::time::sleep(SHUTDOWN_IDLE_GRACE) => {}
                }
            } => {}
            () = activity.idle_beyond(keep_alive, accepted) => {}
        }
    });
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = wind_down => {
            // Shutdown, or an idle HTTP/2 connection: finish what is in flight, take no more.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                () = hard_stop.cancelled() => return,
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(listener = %listener.name, %error, "client connection ended with an error");
    }
    if let Some(status) = activity.refused() {
        log_refusal(&shared, &listener, client, status);
    }
}

/// Logs the request the framing guard refused (or timed out) as an access log line.
fn log_refusal(shared: &Shared, listener: &Listener, client: SocketAddr, status: u16) {
    let termination = match status {
        408 => "request_timeout",
        414 => "uri_too_long",
        431 => "headers_too_large",
        _ => "bad_request",
    };
    listener.stats.failed.fetch_add(1, Ordering::Relaxed);
    shared.http_metrics.record(
        &metrics::MetricHandles::default(),
        &listener.name,
        None,
        None,
        status,
        std::time::Duration::ZERO,
    );
    shared.access_log.log_with(|format| {
        log::RequestRecord {
            status,
            termination,
            ..log::RequestRecord::new(&listener.name, client)
        }
        .render(format)
    });
}

/// Reports HTTP limits too small to serve ordinary requests: `report(key, message)`.
pub fn validate_listener(
    http: &crate::config::HttpListenerConfig,
    report: &mut dyn FnMut(&'static str, String),
) {
    if http.max_header_bytes < 1024 {
        report("max_header_bytes", "must be at least 1024".into());
    }
    if http.max_headers == 0 {
        report("max_headers", "must be at least 1".into());
    }
    if http.max_uri_bytes < 16 {
        report("max_uri_bytes", "must be at least 16".into());
    }
}

/// Reports problems in the HTTP keys of a route: `report(key, message)`.
pub fn validate_route(route: &RouteConfig, report: &mut dyn FnMut(&'static str, String)) {
    if let Some(host) = &route.host
        && let Err(message) = crate::authority::route_pattern(host)
    {
        report("host", message);
    }
    if let Some(method) = &route.method
        && hyper::Method::from_bytes(method.as_bytes()).is_err()
    {
        report("method", format!("`{method}` is not a valid HTTP method"));
    }
    for name in route.headers.keys() {
        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            report("headers", format!("`{name}` is not a valid header name"));
        }
    }
    headers::validate_rules(&route.request_headers, &mut |m| {
        report("request_headers", m)
    });
    headers::validate_rules(&route.response_headers, &mut |m| {
        report("response_headers", m)
    });
}
