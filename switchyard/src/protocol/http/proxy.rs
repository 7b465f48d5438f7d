//! One request, end to end: route it, lease a server, rewrite headers, send it, stream the
//! answer back, and log it when the response body ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use super::body::{BodyEnd, BodyTooLarge, Ending, ProxyBody, RequestBody, ResponseBody};
use super::client::{self, SendError};
use super::errors::{self, ProxyError};
use super::headers::{self, ConnectionFacts};
use super::log::RequestRecord;
use super::tunnel;
use crate::config::HttpVersion;
use crate::listener::{Listener, ListenerSettings};
use crate::route::RouteFacts;
use crate::runtime::Shared;
use crate::upstream::{LeaseError, Pool, Server};

/// What every request on one client connection shares.
pub struct ConnectionContext {
    /// Process-wide state (access log, shutdown).
    pub shared: Arc<Shared>,
    /// The listener the connection came in on.
    pub listener: Arc<Listener>,
    /// The listener's settings as of the accept.
    pub settings: Arc<ListenerSettings>,
    /// Client address, TLS and identity.
    pub facts: ConnectionFacts,
    /// Requests whose response has not ended yet (the head guard times idle only at 0).
    pub in_flight: Arc<super::guard::Activity>,
}

/// A request being proxied: what its log line needs, gathered along the way. It is
/// logged (and stops counting as in flight) exactly once: when finished, or when dropped
/// because the client went away before the response (status 499, as nginx logs it).
struct Exchange {
    ctx: Arc<ConnectionContext>,
    started: Instant,
    record: RequestRecord,
    received: Arc<AtomicU64>,
    server: Option<Arc<Server>>,
    logged: bool,
}

impl Exchange {
    fn finish(mut self, status: u16, bytes_out: u64, termination: &'static str) {
        self.log(status, bytes_out, termination);
    }

    fn log(&mut self, status: u16, bytes_out: u64, termination: &'static str) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        self.ctx.in_flight.end();
        let record = &mut self.record;
        record.status = status;
        record.bytes_out = bytes_out;
        record.termination = termination;
        record.bytes_in = self.received.load(Ordering::Relaxed);
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        let listener = &self.ctx.listener;
        let mut counters = vec![(&listener.stats.bytes_in, &listener.stats.bytes_out)];
        if let Some(server) = &self.server {
            counters.push((&server.stats.bytes_in, &server.stats.bytes_out));
        }
        for (bytes_in, bytes_out_counter) in counters {
            bytes_in.fetch_add(record.bytes_in, Ordering::Relaxed);
            bytes_out_counter.fetch_add(bytes_out, Ordering::Relaxed);
        }
        self.ctx.shared.http_metrics.record(
            &listener.name,
            record.pool.as_deref(),
            record.server.as_deref(),
            status,
            self.started.elapsed(),
        );
        let record = &mut self.record;
        // Only a log that writes needs the time stamp and the line.
        self.ctx.shared.access_log.log_with(|format| {
            record.time = crate::observe::ConnectionRecord::now_string();
            record.render(format)
        });
    }

    /// Answers with the proxy's own error response and logs the request.
    fn fail(self, error: ProxyError, json: bool) -> Response<ProxyBody> {
        let response = errors::response(error, json);
        let length = hyper::body::Body::size_hint(response.body())
            .exact()
            .unwrap_or(0);
        self.finish(error.status().as_u16(), length, error.reason());
        response
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.log(499, 0, "client_aborted");
    }
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Proxies one request; never fails (errors become the proxy's own responses).
pub async fn handle(
    ctx: Arc<ConnectionContext>,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    ctx.in_flight.begin();
    let (mut parts, body) = request.into_parts();
    let host = header_text(&parts.headers, header::HOST)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let received = Arc::new(AtomicU64::new(0));
    let mut exchange = Exchange {
        started: Instant::now(),
        record: RequestRecord {
            time: String::new(),
            listener: ctx.listener.name.clone(),
            client: ctx.facts.client,
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.to_string(), |p| p.to_string()),
            protocol: protocol_name(parts.version),
            host: host.clone(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
            ttfb_ms: None,
            pool: None,
            server: None,
            termination: "",
            request_id: None,
            referer: header_text(&parts.headers, header::REFERER),
            user_agent: header_text(&parts.headers, header::USER_AGENT),
        },
        received: received.clone(),
        ctx: ctx.clone(),
        server: None,
        logged: false,
    };
    let http = &ctx.settings.config.http;
    let json = errors::wants_json(&parts.headers);

    // Framing the proxy must not pass on ambiguously (the head guard already refuses most
    // of it on HTTP/1.1 before the request gets here).
    if parts.headers.contains_key(header::TRANSFER_ENCODING)
        && parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        return exchange.fail(ProxyError::BadRequest, json);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(limit), Some(length)) = (http.max_body_bytes, declared)
        && length > limit
    {
        return exchange.fail(ProxyError::BodyTooLarge, json);
    }

    let facts = RouteFacts {
        host: host.as_deref(),
        path: Some(parts.uri.path()),
        method: Some(parts.method.as_str()),
        headers: Some(&parts.headers),
        ..RouteFacts::default()
    };
    let route = ctx.settings.routing.route(&facts);
    let Some(mut pool) = route
        .map(|r| &r.pool)
        .or(ctx.settings.routing.default.as_ref())
        .cloned()
    else {
        return exchange.fail(ProxyError::NoRoute, json);
    };
    let rules = route.map(|r| &r.rule);

    // Headers: hop-by-hop out, forwarding and identity in, then the route's rules.
    let upgrade = parts.version == Version::HTTP_11 && headers::is_upgrade(&parts.headers);
    let wants_trailers = parts
        .headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    if wants_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers::set_client_cert_headers(&mut parts.headers, ctx.facts.identity.as_ref());
    headers::add_forwarding(
        &mut parts.headers,
        &ctx.facts,
        host.as_deref(),
        http.forwarded,
    );
    exchange.record.request_id = Some(headers::ensure_request_id(&mut parts.headers));
    if let Some(rules) = rules {
        headers::apply_rules(&mut parts.headers, &rules.request_headers);
    }

    let client_upgrade = upgrade
        .then(|| parts.extensions.remove::<OnUpgrade>())
        .flatten();
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let mut request =
        Request::from_parts(parts, RequestBody::new(body, received, http.max_body_bytes));

    // Lease a server, send, and on a connect failure try once more elsewhere.
    let mut failed: Vec<Arc<Server>> = Vec::new();
    let (response, connection, lease, cut) = loop {
        exchange.record.pool = Some(pool.name.clone());
        let lease = match pool.lease(ctx.facts.client.ip(), &failed).await {
            Ok(lease) => lease,
            Err(LeaseError::NoServer) if pool.is_retired() => {
                // A reload replaced the pool after this connection was accepted.
                let current = ctx.listener.settings();
                match current.routing.pool(&RouteFacts {
                    host: host.as_deref(),
                    path: Some(request.uri().path()),
                    method: Some(request.method().as_str()),
                    headers: Some(request.headers()),
                    ..RouteFacts::default()
                }) {
                    Some(next) if !Arc::ptr_eq(next, &pool) => {
                        pool = next.clone();
                        continue;
                    }
                    _ => return exchange.fail(ProxyError::NoServer, json),
                }
            }
            Err(LeaseError::NoServer) if !failed.is_empty() => {
                return exchange.fail(ProxyError::BadGateway, json);
            }
            Err(LeaseError::NoServer) => {
                return exchange.fail(ProxyError::NoServer, json);
            }
            Err(LeaseError::QueueFull | LeaseError::QueueTimeout) => {
                return exchange.fail(ProxyError::Queue, json);
            }
        };
        let server = lease.server().clone();
        // Taken with the lease, so that `maint` from now on cuts this request.
        let cut = server.session_token();
        exchange.record.server = Some(server.name.clone());
        exchange.server = Some(server.clone());
        prepare_for_server(&mut request, &pool, &server, host.as_deref());
        let limit = pool.timeouts.server;
        let send = client::send(&pool, &server, request);
        // `"0s"` means no limit.
        let sending = async move {
            if limit.is_zero() {
                Ok(send.await)
            } else {
                tokio::time::timeout(limit, send).await
            }
        };
        let sent = tokio::select! {
            sent = sending => sent,
            () = cut.cancelled() => return exchange.fail(ProxyError::BadGateway, json),
        };
        match sent {
            Err(_) => return exchange.fail(ProxyError::GatewayTimeout, json),
            Ok(Ok((response, connection))) => break (response, connection, lease, cut),
            Ok(Err(SendError::Connect(_, back))) => {
                failed.push(server);
                if !idempotent || failed.len() > pool.retries as usize {
                    return exchange.fail(ProxyError::BadGateway, json);
                }
                request = *back;
            }
            Ok(Err(SendError::Exchange(error))) => {
                let too_large = std::error::Error::source(&error)
                    .is_some_and(|cause| cause.is::<BodyTooLarge>());
                tracing::debug!(listener = %ctx.listener.name, pool = %pool.name, server = %server.name, %error, "exchange failed");
                let error = if too_large {
                    ProxyError::BodyTooLarge
                } else {
                    ProxyError::BadGateway
                };
                return exchange.fail(error, json);
            }
        }
    };
    exchange.record.ttfb_ms = Some(exchange.started.elapsed().as_millis() as u64);

    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_some();
    headers::remove_hop_by_hop(&mut parts.headers, switching);
    if let Some(rules) = rules {
        headers::apply_rules(&mut parts.headers, &rules.response_headers);
    }
    parts.version = Version::HTTP_11;

    if switching && let Some(client_upgrade) = client_upgrade {
        let Some(server_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return exchange.fail(ProxyError::BadGateway, json);
        };
        drop(body);
        let idle = pool.timeouts.tunnel.unwrap_or(pool.timeouts.server);
        let ctx_done = ctx.clone();
        tokio::spawn(async move {
            let (termination, bytes_in, bytes_out) =
                tunnel::run(client_upgrade, server_upgrade, idle, cut, &ctx_done.shared).await;
            drop(lease);
            exchange.received.fetch_add(bytes_in, Ordering::Relaxed);
            exchange.finish(101, bytes_out, termination);
        });
        return Response::from_parts(
            parts,
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
    }

    let server = lease.server().clone();
    let keep_alive = pool.keep_alive.clone();
    let mut connection = Some(connection);
    let mut lease = Some(lease);
    let mut exchange = Some(exchange);
    let on_end = Box::new(move |end: BodyEnd| {
        if end.ending == Ending::Complete
            && let Some(connection) = connection.take()
        {
            client::give_back(&server, &keep_alive, connection);
        }
        drop(lease.take());
        if let Some(exchange) = exchange.take() {
            exchange.finish(status.as_u16(), end.bytes, end.ending.reason());
        }
    });
    let body = ResponseBody::new(body, pool.timeouts.server, cut, on_end);
    Response::from_parts(parts, body.boxed_unsync())
}

/// Points the request at `server`: URI form and version for the pool's HTTP version, and
/// `Host` per `preserve_host`.
fn prepare_for_server(
    request: &mut Request<RequestBody>,
    pool: &Pool,
    server: &Server,
    host: Option<&str>,
) {
    // The common case, an HTTP/1.1 request in origin form with a Host kept as it is,
    // needs no rewriting at all.
    let host = match host {
        Some(host) if pool.preserve_host => host.to_string(),
        _ => server.address.to_string(),
    };
    let path = |request: &Request<RequestBody>| {
        request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string()
    };
    match pool.http_version {
        HttpVersion::Http1 => {
            *request.version_mut() = Version::HTTP_11;
            if request.uri().authority().is_some()
                && let Ok(uri) = Uri::try_from(path(request))
            {
                *request.uri_mut() = uri;
            }
            let keep = pool.preserve_host && request.headers().contains_key(header::HOST);
            if !keep && let Ok(value) = HeaderValue::from_str(&host) {
                request.headers_mut().insert(header::HOST, value);
            }
        }
        HttpVersion::Http2 => {
            *request.version_mut() = Version::HTTP_2;
            request.headers_mut().remove(header::HOST);
            if let Ok(uri) = Uri::try_from(format!("http://{host}{}", path(request))) {
                *request.uri_mut() = uri;
            }
        }
    }
}
