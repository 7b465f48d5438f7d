//! Socket options every proxied connection gets.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Disables Nagle (proxied request/response traffic must not wait 40 ms) and turns on
/// keepalive so dead peers behind NAT are noticed. Failures only cost performance.
pub fn tune_stream(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}
