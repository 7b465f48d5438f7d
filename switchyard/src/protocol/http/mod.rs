//! `protocol = "http"`: an HTTP/1.1 and HTTP/2 (h2c prior knowledge) reverse proxy on
//! hyper.
//!
//! Data path: the client stream (after an optional PROXY header) goes through [`guard`]
//! (strict framing checks, request and keep-alive clocks), then hyper's server (HTTP/1.1
//! or HTTP/2 by the connection preface); each request is routed, rewritten and sent by
//! [`proxy`] over a pooled server connection from [`client`]; bodies stream both ways
//! ([`body`]); upgrades become byte tunnels ([`tunnel`]); each request is logged
//! ([`log`]) and counted ([`metrics`]).
//!
//! [`serve_connection`] is generic over the client stream so the TLS front end can pass its
//! stream and what it learned (TLS, client certificate) in [`ConnectionFacts`].

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

pub use headers::{ClientIdentity, ConnectionFacts};
pub use metrics::RequestMetrics;

use crate::config::RouteConfig;
use crate::listener::{Listener, ListenerSettings};
use crate::proxy_protocol::{self, ProxyHeader};
use crate::runtime::Shared;

/// Handles one accepted TCP connection: the PROXY header if the listener expects one, then
/// HTTP until the client or the proxy closes it.
pub async fn serve(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    settings: Arc<ListenerSettings>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let mut facts = ConnectionFacts {
        client: peer,
        tls: false,
        identity: None,
    };
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
    serve_connection(shared, listener, settings, client, early, facts).await;
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
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
    });
    let service = service_fn(move |request| {
        let context = context.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy::handle(context, request).await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(guarded), service);
    tokio::pin!(connection);
    let accepted = tokio::time::Instant::now();
    let keep_alive = settings.config.timeouts.keep_alive;
    let wind_down = async {
        tokio::select! {
            () = shared.accepting_stopped() => {}
            () = activity.idle_beyond(keep_alive, accepted) => {}
        }
    };
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
    let mut record = log::RequestRecord {
        time: String::new(),
        listener: listener.name.clone(),
        client,
        method: "-".into(),
        path: "-".into(),
        protocol: "HTTP/1.1",
        host: None,
        status,
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0,
        ttfb_ms: None,
        pool: None,
        server: None,
        termination,
        request_id: None,
        referer: None,
        user_agent: None,
    };
    listener.stats.failed.fetch_add(1, Ordering::Relaxed);
    shared.http_metrics.record(
        &listener.name,
        None,
        None,
        status,
        std::time::Duration::ZERO,
    );
    shared.access_log.log_with(|format| {
        record.time = crate::observe::ConnectionRecord::now_string();
        record.render(format)
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
