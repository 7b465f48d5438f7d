//! Listening sockets: binding, the accept loop, and the connection limit.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ListenerConfig, Protocol};
use crate::upstream::Pool;

/// Counters kept per listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections being handled now.
    pub active: AtomicUsize,
    /// Connections accepted.
    pub total: AtomicU64,
    /// Bytes from clients.
    pub bytes_in: AtomicU64,
    /// Bytes to clients.
    pub bytes_out: AtomicU64,
    /// Connections closed before reaching a server (bad PROXY header, no server, ...).
    pub failed: AtomicU64,
}

/// A bound listener and everything a connection handler needs from it.
#[derive(Debug)]
pub struct Listener {
    /// Name from the config.
    pub name: String,
    /// The protocol spoken.
    pub protocol: Protocol,
    /// The address actually bound (port 0 resolved).
    pub address: SocketAddr,
    /// Its config.
    pub config: ListenerConfig,
    /// The default pool.
    pub pool: Arc<Pool>,
    /// Counters.
    pub stats: ListenerStats,
    socket: std::sync::Mutex<Option<TcpListener>>,
}

impl Listener {
    /// Binds the socket; errors name the listener and address.
    pub fn bind(config: &ListenerConfig, pool: Arc<Pool>) -> io::Result<Self> {
        let requested: SocketAddr = config.listen.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad address {}", config.listen),
            )
        })?;
        let socket = bind_socket(requested, config.backlog).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("listener `{}` cannot bind {requested}: {e}", config.name),
            )
        })?;
        let address = socket.local_addr()?;
        Ok(Self {
            name: config.name.clone(),
            protocol: config.protocol,
            address,
            config: config.clone(),
            pool,
            stats: ListenerStats::default(),
            socket: std::sync::Mutex::new(Some(socket)),
        })
    }

    /// Accepts connections until `stop` fires, handing each to `handle` on its own task.
    /// With `max_connections`, accepting pauses at the limit so further clients wait in
    /// the kernel's accept queue instead of being refused.
    pub async fn accept_loop<F, Fut>(
        self: Arc<Self>,
        stop: CancellationToken,
        tasks: TaskTracker,
        handle: F,
    ) where
        F: Fn(Arc<Self>, TcpStream, SocketAddr) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(socket) = self.socket.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let limit = self
            .config
            .max_connections
            .map(|n| Arc::new(Semaphore::new(n)));
        loop {
            let permit = match &limit {
                Some(limit) => tokio::select! {
                    permit = limit.clone().acquire_owned() => permit.ok(),
                    () = stop.cancelled() => break,
                },
                None => None,
            };
            let accepted = tokio::select! {
                accepted = socket.accept() => accepted,
                () = stop.cancelled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    self.stats.total.fetch_add(1, Ordering::Relaxed);
                    self.stats.active.fetch_add(1, Ordering::Relaxed);
                    let connection = handle(self.clone(), stream, peer);
                    let listener = self.clone();
                    tasks.spawn(async move {
                        connection.await;
                        listener.stats.active.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
                Err(error) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    tracing::error!(listener = %self.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::info!(listener = %self.name, "stopped accepting");
    }
}

fn bind_socket(address: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        // `[::]` serves IPv4 too, as operators expect from a wildcard.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}
