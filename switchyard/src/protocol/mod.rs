//! Protocol front ends: what happens on a client connection after accept.

pub mod postgres;
pub mod tcp;

use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use crate::listener::Listener;
use crate::observe::ConnectionRecord;
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
        counter.fetch_add(to_server, Ordering::Relaxed);
    }
    for counter in [&server.stats.bytes_out, &listener.stats.bytes_out] {
        counter.fetch_add(to_client, Ordering::Relaxed);
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
