//! The access log line of a connection (every protocol but HTTP, which logs requests).

use std::net::SocketAddr;

use serde::Serialize;

use super::Termination;
use super::line::{Line, OrDash};

/// One finished connection, as logged (with the time it is logged).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    /// Listener name.
    pub listener: Box<str>,
    /// Client address (after PROXY protocol, if any).
    pub client: SocketAddr,
    /// Pool name, if one was chosen.
    pub pool: Option<Box<str>>,
    /// Server name, if one was connected.
    pub server: Option<Box<str>>,
    /// The tenant usage is accounted to (a pool with `resolver`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Box<str>>,
    /// Connection lifetime in milliseconds.
    pub duration_ms: u64,
    /// Bytes from client to server.
    pub bytes_in: u64,
    /// Bytes from server to client.
    pub bytes_out: u64,
    /// Why it ended.
    pub termination: Termination,
}

impl ConnectionRecord {
    /// The record of a connection just accepted: nothing chosen or moved yet.
    pub fn accepted(listener: &str, client: SocketAddr) -> Self {
        Self {
            listener: listener.into(),
            client,
            pool: None,
            server: None,
            tenant: None,
            duration_ms: 0,
            bytes_in: 0,
            bytes_out: 0,
            // Until the connection says otherwise.
            termination: Termination::ClientClosed,
        }
    }

    /// Stamps the end of a connection accepted at `started`: its `duration_ms`.
    pub fn finish(&mut self, started: std::time::Instant) {
        self.duration_ms = started.elapsed().as_millis() as u64;
    }

    /// Writes the line: JSON, else `key=value` text (CLF has no shape for a connection).
    pub fn write(&self, line: &mut Line<'_>) {
        line.json_or_fields(
            self,
            format_args!(
                "listener={} client={} pool={} server={} duration_ms={} bytes_in={} bytes_out={} termination={}",
                self.listener,
                self.client,
                OrDash(self.pool.as_deref()),
                OrDash(self.server.as_deref()),
                self.duration_ms,
                self.bytes_in,
                self.bytes_out,
                self.termination
            ),
        );
    }
}
