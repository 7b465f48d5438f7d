//! Why a connection (or an HTTP request) ended: one list for every protocol, so that the
//! access log, the metrics and the docs' table say the same thing, and code decides on
//! values the compiler checks rather than on strings.

/// The end of a connection or request, as the access log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Termination {
    /// Normal end; the client closed first.
    ClientClosed,
    /// Normal end; the server closed first.
    ServerClosed,
    /// The client's socket failed (reset, broken pipe).
    ClientError,
    /// The server's socket failed.
    ServerError,
    /// No traffic from the client for its timeout.
    ClientTimeout,
    /// No traffic (or answer) from the server for its timeout.
    ServerTimeout,
    /// No traffic for the tunnel timeout.
    TunnelTimeout,
    /// The server was put in `maint`, or went down with `on_down = "shutdown_sessions"`.
    ServerCut,
    /// The proxy's `shutdown_timeout` ran out.
    Shutdown,
    /// A missing, slow or malformed PROXY protocol header.
    ProxyHeaderError,
    /// No route matched and the listener has no default `pool`.
    NoRoute,
    /// No server of the pool was available.
    NoServer,
    /// The pool's resolver (or the SSRF guard, for the address it answered) refused the
    /// routing key.
    ResolveRefused,
    /// The pool's resolver failed and had no stale answer to stand in.
    ResolverUnavailable,
    /// Every server was at `max_connections` and the queue was full.
    QueueFull,
    /// Every server (or pooled connection) stayed busy for the queue timeout.
    QueueTimeout,
    /// Every connect attempt (the retry too) failed.
    ConnectFailed,
    /// The TLS handshake with the server failed, or the server refused TLS that `sslmode`
    /// requires.
    ServerTlsFailed,
    /// The client's TLS handshake failed or timed out.
    TlsHandshakeFailed,
    /// No valid TLS ClientHello within the limits (`tls_passthrough`).
    ClientHelloError,
    /// A database client's TLS handshake failed, or direct TLS came without its ALPN.
    ClientTlsError,
    /// A plaintext session on a listener that requires client TLS.
    TlsRequired,
    /// The client had not logged in (TLS upgrade and authentication included; SMTP: no
    /// recipient routed to a server) within `timeouts.login`.
    LoginTimeout,
    /// The client's address already had `max_logins_per_address` logins in flight.
    TooManyLogins,
    /// A malformed startup packet or authentication message.
    BadStartup,
    /// A malformed protocol message after the startup.
    BadMessage,
    /// The connection carried a cancel request.
    Cancel,
    /// The server ended the startup with an error (e.g. a wrong password), relayed.
    ServerRefused,
    /// The server refused a login switchyard made itself (SMTP: a new server session could
    /// not be told the login of a client that authenticated).
    ServerLoginFailed,
    /// The server refused a plaintext login; with `sslmode = "allow"` the proxy tries
    /// again over TLS, so this never ends a connection by itself.
    PlaintextRefused,
    /// Proxy-side authentication failed (wrong password, unknown user).
    AuthFailed,
    /// The pool's `auth_query` could not be run.
    AuthQueryFailed,
    /// A pool already keeps `max_transaction_pools` (database, user) pairs.
    TooManyPools,
    /// The server connection broke between transactions; the client stayed.
    ServerLost,
    /// The server connection broke inside a transaction or a pinned session.
    ServerLostInTransaction,
    /// HTTP: the response was sent whole.
    Ok,
    /// HTTP: the client left before the response ended.
    ClientAborted,
    /// HTTP: a request the proxy refused as malformed.
    BadRequest,
    /// HTTP: a missing, repeated or invalid Host (or authority).
    BadHost,
    /// HTTP: the request head did not arrive within `timeouts.http_request`.
    RequestTimeout,
    /// HTTP: the request target is longer than `max_uri_bytes`.
    UriTooLong,
    /// HTTP: the request head is larger than `max_header_bytes` or has too many fields.
    HeadersTooLarge,
    /// HTTP: the request body is larger than `max_body_bytes`.
    BodyTooLarge,
    /// HTTP: a method the proxy does not forward (CONNECT).
    MethodNotAllowed,
    /// HTTP: the server failed or sent an invalid response.
    BadGateway,
    /// HTTP: an upgraded tunnel ended normally.
    TunnelClosed,
    /// HTTP: the upgrade of the client or server connection failed.
    UpgradeFailed,
}

impl Termination {
    /// Every termination, in the order of the docs' table.
    pub const ALL: [Termination; 47] = [
        Self::ClientClosed,
        Self::ServerClosed,
        Self::ClientError,
        Self::ServerError,
        Self::ClientTimeout,
        Self::ServerTimeout,
        Self::TunnelTimeout,
        Self::ServerCut,
        Self::Shutdown,
        Self::ProxyHeaderError,
        Self::NoRoute,
        Self::NoServer,
        Self::ResolveRefused,
        Self::ResolverUnavailable,
        Self::QueueFull,
        Self::QueueTimeout,
        Self::ConnectFailed,
        Self::ServerTlsFailed,
        Self::TlsHandshakeFailed,
        Self::ClientHelloError,
        Self::ClientTlsError,
        Self::TlsRequired,
        Self::LoginTimeout,
        Self::TooManyLogins,
        Self::BadStartup,
        Self::BadMessage,
        Self::Cancel,
        Self::ServerRefused,
        Self::ServerLoginFailed,
        Self::PlaintextRefused,
        Self::AuthFailed,
        Self::AuthQueryFailed,
        Self::TooManyPools,
        Self::ServerLost,
        Self::ServerLostInTransaction,
        Self::Ok,
        Self::ClientAborted,
        Self::BadRequest,
        Self::BadHost,
        Self::RequestTimeout,
        Self::UriTooLong,
        Self::HeadersTooLarge,
        Self::BodyTooLarge,
        Self::MethodNotAllowed,
        Self::BadGateway,
        Self::TunnelClosed,
        Self::UpgradeFailed,
    ];

    /// The name in the access log and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ServerClosed => "server_closed",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
            Self::ClientTimeout => "client_timeout",
            Self::ServerTimeout => "server_timeout",
            Self::TunnelTimeout => "tunnel_timeout",
            Self::ServerCut => "server_cut",
            Self::Shutdown => "shutdown",
            Self::ProxyHeaderError => "proxy_header_error",
            Self::NoRoute => "no_route",
            Self::NoServer => "no_server",
            Self::ResolveRefused => "resolve_refused",
            Self::ResolverUnavailable => "resolver_unavailable",
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::ConnectFailed => "connect_failed",
            Self::ServerTlsFailed => "server_tls_failed",
            Self::TlsHandshakeFailed => "tls_handshake_failed",
            Self::ClientHelloError => "client_hello_error",
            Self::ClientTlsError => "client_tls_error",
            Self::TlsRequired => "tls_required",
            Self::LoginTimeout => "login_timeout",
            Self::TooManyLogins => "too_many_logins",
            Self::BadStartup => "bad_startup",
            Self::BadMessage => "bad_message",
            Self::Cancel => "cancel",
            Self::ServerRefused => "server_refused",
            Self::ServerLoginFailed => "server_login_failed",
            Self::PlaintextRefused => "plaintext_refused",
            Self::AuthFailed => "auth_failed",
            Self::AuthQueryFailed => "auth_query_failed",
            Self::TooManyPools => "too_many_pools",
            Self::ServerLost => "server_lost",
            Self::ServerLostInTransaction => "server_lost_in_transaction",
            Self::Ok => "ok",
            Self::ClientAborted => "client_aborted",
            Self::BadRequest => "bad_request",
            Self::BadHost => "bad_host",
            Self::RequestTimeout => "request_timeout",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BadGateway => "bad_gateway",
            Self::TunnelClosed => "tunnel_closed",
            Self::UpgradeFailed => "upgrade_failed",
        }
    }

    /// Whether the connection ended the way connections end: a side closed it (nothing to
    /// count as failed or to warn about).
    pub fn is_normal(self) -> bool {
        matches!(
            self,
            Self::ClientClosed | Self::ServerClosed | Self::Ok | Self::TunnelClosed
        )
    }
}

impl From<crate::on_wake::Interruption> for Termination {
    /// A connection's wait cut short from outside it: its server was taken out of
    /// service, or the proxy stops.
    fn from(interruption: crate::on_wake::Interruption) -> Self {
        match interruption {
            crate::on_wake::Interruption::Cut => Self::ServerCut,
            crate::on_wake::Interruption::Stop => Self::Shutdown,
        }
    }
}

impl std::fmt::Display for Termination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Termination {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in the first column of the docs' termination table.
    fn documented() -> Vec<String> {
        let docs = include_str!("../../../docs/configuration.md");
        let table = docs
            .split("| termination | meaning |")
            .nth(1)
            .expect("the termination table in docs/configuration.md");
        table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .filter_map(|line| line.split('`').nth(1).map(str::to_string))
            .collect()
    }

    #[test]
    fn the_docs_table_lists_every_termination_once_in_order() {
        let names: Vec<String> = Termination::ALL
            .iter()
            .map(|t| t.as_str().to_string())
            .collect();
        assert_eq!(documented(), names);
    }
}
