//! Connecting to a pool's server, with a connect timeout, passive health and redispatch.

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
                record_connect_failure(pool, &server, &error);
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

/// Counts a failed connect and, when the pool has health checking, records it as a
/// passive check (which may take the server down).
pub fn record_connect_failure(pool: &Pool, server: &Server, error: &io::Error) {
    server
        .stats
        .connect_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(pool = %pool.name, server = %server.name, %error, "connect failed");
    if pool.health.is_some()
        && let Some(transition) = server.record_check(Err(format!("connect: {error}")))
    {
        crate::health::on_transition(pool, server, &transition);
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
