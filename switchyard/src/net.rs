//! Socket options every proxied connection gets.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Disables Nagle (proxied request/response traffic must not wait 40 ms) and turns on
/// keepalive so dead peers behind NAT are noticed. Set on listening sockets, the options
/// are inherited by every accepted connection at no per-connection cost. Failures only
/// cost performance, so they are ignored.
pub fn tune_socket<'s>(socket: impl Into<SockRef<'s>>) {
    let socket = socket.into();
    let _ = socket.set_tcp_nodelay(true);
    let _ = socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(Duration::from_secs(60)));
}

/// Moves `stream` to the calling task's runtime: its readiness is from now on reported by
/// this worker's reactor instead of the one that registered it, so reading it no longer
/// wakes this worker from another thread. The socket is duplicated and registered here,
/// and the old descriptor deregistered and closed; the connection itself is untouched.
pub fn move_to_this_worker(stream: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let duplicate: std::net::TcpStream = SockRef::from(&*stream).try_clone()?.into();
    *stream = tokio::net::TcpStream::from_std(duplicate)?;
    Ok(())
}
