//! The admin HTTP API: health, Prometheus metrics, status, server state changes and reload.
//! Every request passes [`Access`] first, which keeps web pages out (see `access`).

mod access;
pub mod client;
mod metrics;
mod status;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::runtime::Shared;
use crate::upstream::AdminState;

pub use access::Access;
pub use status::{ListenerStatus, PoolStatus, ServerStatus};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

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
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
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

async fn route(shared: &Arc<Shared>, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
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
        (&Method::POST, ["api", "v1", "pools", pool, "servers", server, "state"]) => {
            let (pool, server) = (pool.to_string(), server.to_string());
            if let Some(denied) = authorize(shared, &request) {
                return denied;
            }
            set_state(shared, &pool, &server, request).await
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
        | (_, ["api", "v1", "pools", _, "servers", _, "state"]) => {
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
