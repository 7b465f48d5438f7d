//! The admin HTTP API: health, Prometheus metrics, status, stats (JSON and CSV), the
//! dashboard page, server state changes and reload. Every request passes [`Access`] first,
//! which keeps other web pages out (see `access`).

mod access;
pub mod client;
mod csv;
mod dashboard;
mod metrics;
mod resolvers;
mod stats;
mod status;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::net::AcceptFailures;
use crate::runtime::Shared;
use crate::upstream::AdminState;

pub use access::Access;
pub use stats::Stats;
pub use status::{ListenerStatus, PoolStatus, ResolvedKey, ResolvedSetStatus, ServerStatus};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// How long a connection may take to send a request head (the first, or the next on a
/// kept-alive connection) before it is closed: a client that sends part of a head and
/// stops must not hold an admin connection (and its task) for ever.
const REQUEST_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin API until `stop` fires (the runtime's `AdminService`), to the
/// requests its `allowed_hosts` and access rules let through.
pub fn service(
    listener: TcpListener,
    shared: Arc<Shared>,
    config: &crate::config::AdminConfig,
    stop: CancellationToken,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(serve(
        listener,
        shared,
        Access::new(&config.allowed_hosts),
        stop,
    ))
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    access: Access,
    stop: CancellationToken,
) {
    if shared.admin_token.is_none()
        && let Ok(address) = listener.local_addr()
    {
        let who = if address.ip().is_loopback() {
            "any local process"
        } else {
            "anyone who can connect to it"
        };
        tracing::warn!(%address, "the admin API has no token: its mutating calls (server state, reload) are open to {who}; set [admin] token to require one");
    }
    let access = Arc::new(access);
    let failures = AcceptFailures::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    failures.succeeded("admin");
                    accepted
                }
                Err(error) => {
                    failures.failed("admin", &error).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        // The address the client reached: what its `Host` must name.
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let (shared, access) = (shared.clone(), access.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                let verdict = access.check(local, &request);
                async move {
                    Ok::<_, Infallible>(match verdict {
                        Ok(()) => route(&shared, request).await,
                        Err(denied) => {
                            tracing::warn!(client = %peer, method = %request.method(), path = %request.uri().path(), reason = %denied, "admin API refused a request");
                            error(denied.status(), &denied.to_string())
                        }
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    reply(status, "application/json", body)
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

/// The path's segments, percent-decoded (a pool or server name may hold any character, and
/// the dashboard encodes them); `None` when one is not valid UTF-8 once decoded.
fn segments(path: &str) -> Option<Vec<String>> {
    path.trim_matches('/')
        .split('/')
        .map(|segment| {
            let mut bytes = Vec::with_capacity(segment.len());
            let mut rest = segment.as_bytes();
            while let Some((&byte, tail)) = rest.split_first() {
                let escaped = (byte == b'%')
                    .then(|| tail.get(..2))
                    .flatten()
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match escaped {
                    Some(decoded) => {
                        bytes.push(decoded);
                        rest = &tail[2..];
                    }
                    None => {
                        bytes.push(byte);
                        rest = tail;
                    }
                }
            }
            String::from_utf8(bytes).ok()
        })
        .collect()
}

async fn route(shared: &Arc<Shared>, request: Request<Incoming>) -> Reply {
    let Some(segments) = segments(request.uri().path()) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if request.method() == Method::GET
        && let [page] = segments.as_slice()
        && let Some(page) = dashboard::asset(page)
    {
        return page;
    }
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["health"]) => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, ["metrics"]) => match metrics::render(shared) {
            Ok(text) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed"),
        },
        (&Method::GET, ["api", "v1", "pools"]) => json(StatusCode::OK, &status::pools(shared)),
        (&Method::GET, ["api", "v1", "listeners"]) => {
            json(StatusCode::OK, &status::listeners(shared))
        }
        (&Method::GET, ["api", "v1", "stats"]) => json(StatusCode::OK, &stats::snapshot(shared)),
        (&Method::GET, ["api", "v1", "stats.csv"]) => reply(
            StatusCode::OK,
            "text/csv; charset=utf-8; header=present",
            csv::render(&stats::snapshot(shared)),
        ),
        (&Method::POST, ["api", "v1", "pools", pool, "servers", server, "state"]) => {
            let (pool, server) = (pool.to_string(), server.to_string());
            if let Some(denied) = authorize(shared, &request) {
                return denied;
            }
            set_state(shared, &pool, &server, request).await
        }
        (&Method::GET, ["api", "v1", "tenants"]) => {
            json(StatusCode::OK, &resolvers::tenants(shared))
        }
        (&Method::GET, ["api", "v1", "resolvers", name, "keys", key]) => {
            match resolvers::lookup(shared, name, key).await {
                Some(value) => json(StatusCode::OK, &value),
                None => error(StatusCode::NOT_FOUND, "no such resolver"),
            }
        }
        (&Method::DELETE, ["api", "v1", "resolvers", name, "keys", key]) => {
            let (name, key) = (name.to_string(), key.to_string());
            if let Some(denied) = authorize(shared, &request) {
                return denied;
            }
            match resolvers::purge(shared, &name, &key).await {
                Some(Ok(cached)) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "resolver": name, "key": key, "was_cached": cached }),
                ),
                Some(Err(e)) => error(StatusCode::BAD_GATEWAY, &e),
                None => error(StatusCode::NOT_FOUND, "no such resolver"),
            }
        }
        (&Method::POST, ["api", "v1", "reload"]) => {
            if let Some(denied) = authorize(shared, &request) {
                return denied;
            }
            match crate::runtime::reload(shared).await {
                Ok(summary) => json(StatusCode::OK, &summary),
                Err(refused) => json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({
                        "error": refused.to_string(),
                        "errors": refused.errors(),
                    }),
                ),
            }
        }
        (_, ["health" | "metrics"] | ["api", "v1", "pools" | "listeners" | "reload"])
        | (_, ["api", "v1", "stats" | "stats.csv"])
        | (_, ["api", "v1", "pools", _, "servers", _, "state"])
        | (_, ["api", "v1", "resolvers", _, "keys", _])
        | (_, ["api", "v1", "tenants"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Checks the bearer token of a mutating call; `Some` is the refusal to send.
fn authorize(shared: &Shared, request: &Request<Incoming>) -> Option<Reply> {
    let expected = shared.admin_token.as_deref()?;
    let presented = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        None
    } else {
        let mut denied = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        if let Ok(value) = "Bearer".parse() {
            denied
                .headers_mut()
                .insert(hyper::header::WWW_AUTHENTICATE, value);
        }
        Some(denied)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateChange {
    state: String,
}

async fn set_state(
    shared: &Shared,
    pool_name: &str,
    server_name: &str,
    request: Request<Incoming>,
) -> Reply {
    let Some(pool) = shared.pool(pool_name) else {
        return error(StatusCode::NOT_FOUND, &format!("no pool `{pool_name}`"));
    };
    let Some(server) = pool.server(server_name) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no server `{server_name}` in pool `{pool_name}`"),
        );
    };
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "unreadable or too large body"),
    };
    let change: StateChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"state\": \"ready|drain|maint\"}}: {e}"),
            );
        }
    };
    let Some(state) = AdminState::parse(&change.state) else {
        return error(
            StatusCode::BAD_REQUEST,
            "state must be ready, drain or maint",
        );
    };
    server.set_admin_state(state);
    pool.wake_queue();
    tracing::info!(pool = %pool.name, server = %server.name, state = %change.state, "server state changed by admin API");
    json(StatusCode::OK, &status::server(server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded_one_by_one() {
        let decoded = |path: &str| segments(path).map(|s| s.join("|"));
        assert_eq!(decoded("/"), Some(String::new()));
        assert_eq!(
            decoded("/api/v1/stats.csv"),
            Some("api|v1|stats.csv".into())
        );
        assert_eq!(
            decoded("/api/v1/pools/app/servers/127.0.0.1%3A5432/state"),
            Some("api|v1|pools|app|servers|127.0.0.1:5432|state".into())
        );
        // An encoded slash stays inside its segment.
        assert_eq!(decoded("/a%2Fb/c"), Some("a/b|c".into()));
        assert_eq!(decoded("/caf%C3%A9%20bar"), Some("café bar".into()));
        // Malformed escapes are kept as they are; invalid UTF-8 is refused.
        assert_eq!(decoded("/100%/%zz/%4"), Some("100%|%zz|%4".into()));
        assert_eq!(decoded("/%ff"), None);
        assert_eq!(decoded("/%C3"), None);
    }

    #[test]
    fn names_encoded_by_the_client_decode_to_themselves() {
        for name in ["app1", "[::1]:5432", "a b/c%41", "ünï", "w,\"2\"", ""] {
            let encoded = client::path_segment(name);
            assert!(!encoded.contains(['/', ' ', '[', ':']), "{encoded}");
            let path = format!("/api/v1/pools/{encoded}/servers");
            let decoded = segments(&path).expect("valid");
            assert_eq!(decoded.get(3).map(String::as_str), Some(name), "{path}");
        }
    }
}
