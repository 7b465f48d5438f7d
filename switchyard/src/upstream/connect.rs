//! Connecting to a pool's server, with a connect timeout, passive health and redispatch;
//! the same rule for every protocol: a failed connect or TLS handshake counts against the
//! server ([`record_failure`]), and a client whose pool a reload retired follows the
//! routing in force ([`following_reloads`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{Lease, LeaseError, Pool, Server, ServerFilter};
use crate::net::tune_socket;

/// Why no server connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No slot on any server.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// Every attempt failed; the last error is kept.
    #[error("connect to {server} failed: {source}")]
    Failed {
        /// The last server tried.
        server: String,
        /// Its error.
        source: io::Error,
    },
}

/// A live server connection and the slot it holds.
pub struct Upstream {
    /// The connected socket.
    pub stream: TcpStream,
    /// The slot; dropping it frees the server for another client.
    pub lease: Lease,
    /// The address actually connected to.
    pub peer: SocketAddr,
}

/// Connects to a server of `pool` for `client`, retrying on another server after a
/// failure (`retries` times). Failures count as passive health checks when the pool has
/// health checking.
pub async fn connect(pool: &Arc<Pool>, client: SocketAddr) -> Result<Upstream, ConnectError> {
    connect_matching(pool, client, &|_| true).await
}

/// `connect` among the servers `accept` admits (a database listener's role).
pub async fn connect_matching(
    pool: &Arc<Pool>,
    client: SocketAddr,
    accept: &ServerFilter<'_>,
) -> Result<Upstream, ConnectError> {
    let mut failed: Vec<Arc<Server>> = Vec::new();
    let mut last_error = None;
    for _attempt in 0..=pool.retries {
        let lease = match pool.lease_matching(client.ip(), &failed, accept).await {
            Ok(lease) => lease,
            // After a failed attempt, running out of servers reports the connect failure.
            Err(e) if last_error.is_none() => return Err(e.into()),
            Err(_) => break,
        };
        let server = lease.server().clone();
        match connect_server(&server, pool).await {
            Ok((stream, peer)) => {
                server.record_connect_success();
                server
                    .stats
                    .total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(Upstream {
                    stream,
                    lease,
                    peer,
                });
            }
            Err(error) => {
                record_failure(pool, &server, Stage::Connect, &error);
                last_error = Some((server.name.clone(), error));
                failed.push(server);
            }
        }
    }
    let (server, source) = last_error.unwrap_or_else(|| {
        (
            String::new(),
            io::Error::other("no connect attempt was made"),
        )
    });
    Err(ConnectError::Failed { server, source })
}

/// How long a resolved server that failed a connect or TLS handshake takes no new work.
const RESOLVED_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

/// Where reaching a server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The TCP connect.
    Connect,
    /// The TLS handshake (`upstream_tls`), in whatever form the protocol starts it.
    Tls,
}

/// Counts a failed connect or TLS handshake and, when the pool has health checking,
/// records it as a passive check (which may take the server down): the same for every
/// protocol.
pub fn record_failure(pool: &Pool, server: &Server, stage: Stage, error: &io::Error) {
    server
        .stats
        .connect_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let what = match stage {
        Stage::Connect => "connect",
        Stage::Tls => "tls",
    };
    tracing::warn!(pool = %pool.name, server = %server.name, %error, "{what} failed");
    if let (Some(resolver), Some(addr)) = (&pool.origin, server.address.socket()) {
        // A resolved server refusing connections may have moved: ask the resolver again.
        // No active check watches it, so it is held down for a while instead, and asked
        // about again when the hold ends.
        resolver.revalidate(addr, RESOLVED_HOLD);
        if let Some(transition) = server.hold_down(format!("{what}: {error}"), RESOLVED_HOLD) {
            super::on_transition(pool, server, &transition);
        }
    }
    if pool.health.is_some()
        && let Some(transition) = server.record_check(Err(format!("{what}: {error}")))
    {
        super::on_transition(pool, server, &transition);
    }
}

/// Whether a lease of `pool` failed only because a reload retired the pool (its servers
/// were removed or drained): the client should follow the routing in force now.
pub fn lost_to_reload(pool: &Pool, error: &LeaseError) -> bool {
    *error == LeaseError::NoServer && pool.is_retired()
}

/// Runs `attempt` on `route`'s pool; while it finds no server because a reload retired
/// that pool, again on the route the listener's routing gives now (`reroute`). A reload
/// drains the servers it removed only after the new routing is in place, so a client
/// accepted before it reaches a server of the new pools instead of being refused.
pub async fn following_reloads<R: Clone, T, F, Fut>(
    mut route: R,
    pool_of: impl Fn(&R) -> &Arc<Pool>,
    reroute: impl Fn() -> Option<R>,
    mut attempt: F,
) -> (R, Result<T, ConnectError>)
where
    F: FnMut(R) -> Fut,
    Fut: Future<Output = Result<T, ConnectError>>,
{
    loop {
        let result = attempt(route.clone()).await;
        let retired =
            matches!(&result, Err(ConnectError::Lease(e)) if lost_to_reload(pool_of(&route), e));
        if retired
            && let Some(next) =
                reroute().filter(|next| !Arc::ptr_eq(pool_of(next), pool_of(&route)))
        {
            route = next;
            continue;
        }
        return (route, result);
    }
}

/// One connect attempt to one server, bounded by the pool's connect timeout.
pub async fn connect_server(server: &Server, pool: &Pool) -> io::Result<(TcpStream, SocketAddr)> {
    let attempt = async {
        let mut last = None;
        for addr in server.address.resolve().await? {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    tune_socket(&stream);
                    return Ok((stream, addr));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no address")))
    };
    tokio::time::timeout(pool.timeouts.connect, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))?
}
