//! The keys of `tcp` listeners: TLS passthrough and routes by SNI.

use serde::Deserialize;

use super::listener_keys::{ListenerKeys, Surroundings};
use super::report::ErrorSink;
use crate::key_path;

/// What only a `tcp` listener has.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TcpListener {
    /// Read the TLS ClientHello without terminating, route by its SNI and forward the
    /// untouched bytes.
    #[serde(default)]
    pub tls_passthrough: bool,
    /// Routing rules; first match wins, else the listener's `pool`.
    #[serde(default)]
    pub routes: Vec<TcpRoute>,
}

/// A TCP routing rule: the TLS server name decides (terminated or passed through).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    /// The pool this route sends to.
    pub pool: String,
    /// TLS SNI, exact or `*.suffix`.
    #[serde(default)]
    pub sni: Option<String>,
}

impl ListenerKeys for TcpListener {
    fn route_pools(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.pool.as_str()).collect()
    }

    /// Passthrough and termination exclude each other, and routes need a server name to
    /// route by.
    fn validate(&self, around: &Surroundings<'_>, i: usize, sink: &mut ErrorSink<'_>) {
        validate_listener(around.tls, self, i, sink);
    }
}

fn validate_listener(tls: bool, tcp: &TcpListener, i: usize, sink: &mut ErrorSink<'_>) {
    if tcp.tls_passthrough && tls {
        sink.at(
            &key_path!("listener", i, "tls_passthrough"),
            "only for `tcp` listeners without `tls`",
        );
    }
    if !tcp.tls_passthrough && !tls {
        for r in 0..tcp.routes.len() {
            sink.at(
                &key_path!("listener", i, "routes", r),
                "tcp listeners route (by `sni`) only with `tls` or `tls_passthrough = true`",
            );
        }
    }
}
