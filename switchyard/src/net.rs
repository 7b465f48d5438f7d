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
