//! Protocol front ends: what happens on a client connection after accept.

pub mod http;
pub mod mysql;
pub mod postgres;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::config::ProxyProtocolVersion;
use crate::listener::{Listener, ListenerSettings};
use crate::observe::ConnectionRecord;
use crate::proxy_protocol::{self, ProxyHeader};
use crate::relay::{IdleLimit, RelayCounters, relay};
use crate::runtime::Shared;
use crate::upstream::Server;

/// Adds bytes a front end moved itself (a PROXY header's payload, a database startup) to
/// the connection's record and to the server's and listener's counters.
pub fn count_bytes(
    record: &mut ConnectionRecord,
    listener: &Listener,
    server: &Server,
    to_server: u64,
    to_client: u64,
) {
    record.bytes_in += to_server;
    record.bytes_out += to_client;
    for counter in [&server.stats.bytes_in, &listener.stats.bytes_in] {
        counter.add(to_server);
    }
    for counter in [&server.stats.bytes_out, &listener.stats.bytes_out] {
        counter.add(to_client);
    }
}

/// Relays an established session until either side ends it, the server's sessions are cut
/// or the proxy's shutdown runs out; counts the bytes and returns the termination.
pub async fn relay_session(
    shared: &Shared,
    listener: &Listener,
    server: &Server,
    idle: Option<IdleLimit>,
    client: &TcpStream,
    upstream: &TcpStream,
    record: &mut ConnectionRecord,
) -> &'static str {
    let cut = server.session_token();
    let outcome = relay(
        client,
        upstream,
        idle,
        &cut,
        &shared.hard_stop,
        RelayCounters {
            to_server: &[&server.stats.bytes_in, &listener.stats.bytes_in],
            to_client: &[&server.stats.bytes_out, &listener.stats.bytes_out],
        },
    )
    .await;
    record.bytes_in += outcome.bytes_in;
    record.bytes_out += outcome.bytes_out;
    outcome.termination.as_str()
}

/// What a PROXY header said: the address the client reached (if proxied) and the bytes
/// read after the header.
pub struct ProxiedConnection {
    /// The destination the fronting balancer saw; `None` for a LOCAL header.
    pub destination: Option<SocketAddr>,
    /// Client bytes read past the header.
    pub early_data: Bytes,
}

/// Reads the PROXY header a listener with `proxy_protocol` requires, taking the client
/// address it carries into `record`. A bad header is counted, logged and `Err`.
pub async fn read_proxy_header(
    listener: &Listener,
    settings: &ListenerSettings,
    client: &mut TcpStream,
    record: &mut ConnectionRecord,
) -> Result<ProxiedConnection, &'static str> {
    match proxy_protocol::read_header(client, settings.config.timeouts.proxy_header).await {
        Ok((header, early_data)) => {
            let mut destination = None;
            if let ProxyHeader::Proxied(addrs) = header {
                record.client = addrs.source;
                destination = Some(addrs.destination);
            }
            Ok(ProxiedConnection {
                destination,
                early_data,
            })
        }
        Err(error) => {
            listener.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %listener.name, client = %record.client, %error, "bad PROXY protocol header");
            Err("proxy_header_error")
        }
    }
}

/// The PROXY header a pool sends its servers ahead of the client's bytes (empty without
/// `send_proxy_protocol`); `destination` is only looked up when one is sent, and a v2 header
/// carries the client's TLS facts (`tls`) as TLVs.
pub fn proxy_preamble(
    version: Option<ProxyProtocolVersion>,
    source: SocketAddr,
    destination: impl FnOnce() -> SocketAddr,
    tls: Option<&crate::tls::TlsInfo>,
) -> Vec<u8> {
    match version {
        Some(ProxyProtocolVersion::V1) => proxy_protocol::encode_v1(source, destination()),
        Some(ProxyProtocolVersion::V2) => {
            let tlvs = tls.map(crate::tls::proxy_v2_tlvs).unwrap_or_default();
            proxy_protocol::encode_v2_with_tlvs(source, destination(), &tlvs)
        }
        None => Vec::new(),
    }
}
