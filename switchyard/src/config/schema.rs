//! The TOML schema: what an operator may write, with its defaults.
//!
//! Every struct denies unknown keys so that a typo is an error instead of a silently ignored
//! setting. Durations are strings such as `"250ms"`, `"2s"` or `"1m"`.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Tokio worker threads; defaults to the number of CPUs.
    #[serde(default)]
    pub workers: Option<usize>,
    /// How long a graceful shutdown lets connections finish before closing them.
    #[serde(default = "defaults::shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
    /// The admin API; absent means no admin API.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Where clients connect.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Groups of servers that listeners and routes send traffic to.
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    /// Database users clients authenticate as when a postgres listener authenticates
    /// clients itself (`auth`).
    #[serde(default, rename = "user")]
    pub users: Vec<UserConfig>,
    /// Unix socket a `run --upgrade` process fetches the listening sockets from; relative to
    /// the config file's directory. Default: the config file's path plus `.upgrade.sock`.
    #[serde(default)]
    pub upgrade_socket: Option<std::path::PathBuf>,
}

/// The admin HTTP API (status, metrics, server state changes).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to bind; loopback by default so the API is never exposed by accident.
    #[serde(default = "defaults::admin_listen")]
    pub listen: String,
    /// Bearer token required for mutating calls: a literal, `env:VAR` or `file:PATH`.
    #[serde(default)]
    pub token: Option<String>,
}

/// Diagnostic and access logging.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `switchyard=debug`.
    #[serde(default = "defaults::log_level")]
    pub level: String,
    /// Where connection/access log lines go: `stdout`, `stderr`, `off` or a file path.
    #[serde(default = "defaults::log_access")]
    pub access: String,
    /// Format of access log lines.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: defaults::log_level(),
            access: defaults::log_access(),
            format: LogFormat::default(),
        }
    }
}

/// Access log line formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Plain `key=value` text.
    Text,
    /// Common Log Format (HTTP); text for other protocols.
    Clf,
    /// Combined Log Format (HTTP); text for other protocols.
    Combined,
}

/// Protocols a listener can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Bytes only.
    Tcp,
    /// HTTP/1.1 and HTTP/2.
    Http,
    /// PostgreSQL wire protocol.
    Postgres,
    /// MySQL/MariaDB wire protocol.
    Mysql,
    /// SMTP.
    Smtp,
}

impl Protocol {
    /// The name used in the config file and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Smtp => "smtp",
        }
    }
}

/// One listening socket and how its connections are handled.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in logs, metrics and socket handoff.
    pub name: String,
    /// `host:port` to bind, IPv4 or IPv6 (`[::1]:8080`).
    pub listen: String,
    /// The protocol spoken by clients.
    pub protocol: Protocol,
    /// The pool used when no route matches.
    #[serde(default)]
    pub pool: Option<String>,
    /// Client-side timeouts.
    #[serde(default)]
    pub timeouts: ListenerTimeouts,
    /// Most connections handled at once; further clients wait in the kernel's accept queue.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Accept a PROXY protocol header (v1 or v2) from a fronting balancer.
    #[serde(default)]
    pub proxy_protocol: Option<AcceptProxyProtocol>,
    /// Listen backlog (accept queue length).
    #[serde(default = "defaults::backlog")]
    pub backlog: u32,
    /// Routing rules; first match wins, else `pool`.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Terminate TLS from clients with these certificates (see the `tls` module).
    #[serde(default)]
    pub tls: Option<TlsServerConfig>,
    /// On `tcp` listeners: read the TLS ClientHello without terminating, route by its SNI
    /// (`routes` with `sni`) and forward the untouched bytes.
    #[serde(default)]
    pub tls_passthrough: bool,
    /// HTTP request limits and forwarding headers (`protocol = "http"` only).
    #[serde(default)]
    pub http: HttpListenerConfig,
    /// Database listeners: which servers' role this entry point sends to.
    #[serde(default)]
    pub role: ListenerRole,
    /// With `role = "replica"`: use the primary while no replica is up.
    #[serde(default = "defaults::replica_fallback")]
    pub replica_fallback: bool,
    /// Longest protocol messages accepted (postgres).
    #[serde(default)]
    pub limits: MessageLimits,
    /// Whether clients may or must use TLS (postgres); certificates come from `tls`.
    #[serde(default)]
    pub client_tls: Option<ClientTlsConfig>,
    /// How postgres clients authenticate; see [`ListenerConfig::postgres_auth`] for the
    /// default.
    #[serde(default)]
    pub auth: Option<PostgresAuth>,
}

impl ListenerConfig {
    /// The client authentication in effect: as configured, else `scram-sha-256` when the
    /// config has `[[user]]` entries (the proxy can check passwords), else `passthrough`.
    pub fn postgres_auth(&self, config_has_users: bool) -> PostgresAuth {
        match self.auth {
            Some(auth) => auth,
            None if config_has_users => PostgresAuth::ScramSha256,
            None => PostgresAuth::Passthrough,
        }
    }

    /// The client TLS policy in effect: as configured, else `optional` when the listener
    /// has certificates and `disabled` when it has none.
    pub fn client_tls_mode(&self) -> ClientTlsMode {
        match (&self.client_tls, &self.tls) {
            (Some(client_tls), _) => client_tls.mode,
            (None, Some(_)) => ClientTlsMode::Optional,
            (None, None) => ClientTlsMode::Disabled,
        }
    }
}

/// A database listener's client TLS policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// Whether TLS is refused, offered or demanded.
    pub mode: ClientTlsMode,
}

/// Whether clients of a database listener may or must use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// TLS requests are answered "no"; sessions are plaintext.
    Disabled,
    /// TLS when the client asks for it, plaintext otherwise.
    Optional,
    /// Plaintext sessions are refused (FATAL 28000).
    Required,
}

/// How a postgres listener authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PostgresAuth {
    /// The server authenticates the client; the exchange is relayed.
    #[serde(rename = "passthrough")]
    Passthrough,
    /// SCRAM-SHA-256 against `[[user]]` (or `auth_query`); switchyard logs in to servers.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// md5 against a user's password or stored md5 hash.
    #[serde(rename = "md5")]
    Md5,
    /// The password in clear; only on listeners that require client TLS.
    #[serde(rename = "cleartext")]
    Cleartext,
    /// No password: any user name is accepted.
    #[serde(rename = "trust")]
    Trust,
}

impl PostgresAuth {
    /// The name used in the config file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passthrough => "passthrough",
            Self::ScramSha256 => "scram-sha-256",
            Self::Md5 => "md5",
            Self::Cleartext => "cleartext",
            Self::Trust => "trust",
        }
    }
}

/// A database user switchyard authenticates clients as: exactly one of `password`,
/// `scram_secret` and `md5`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name clients send in the startup.
    pub name: String,
    /// The password: a literal, `env:VAR` or `file:PATH`.
    #[serde(default)]
    pub password: Option<String>,
    /// PostgreSQL's stored `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    #[serde(default)]
    pub scram_secret: Option<String>,
    /// PostgreSQL's stored `md5<hex>` hash.
    #[serde(default)]
    pub md5: Option<String>,
    /// The password switchyard logs in to servers with, when it differs from what clients
    /// use: a literal, `env:VAR` or `file:PATH`.
    #[serde(default)]
    pub server_password: Option<String>,
}

/// Looks up users not in `[[user]]` on a server of the pool (as PgBouncer's `auth_query`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthQueryConfig {
    /// The user switchyard logs in as to run the query.
    pub user: String,
    /// Its password: a literal, `env:VAR` or `file:PATH`; absent for trust.
    #[serde(default)]
    pub password: Option<String>,
    /// The database to run the query in.
    #[serde(default = "defaults::check_database")]
    pub database: String,
    /// Takes the user name as `$1`; returns the name and the stored password (SCRAM
    /// secret, md5 hash or plain password).
    #[serde(default = "defaults::auth_query")]
    pub query: String,
}

/// Which servers a database listener sends to, by the role its health checks found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerRole {
    /// Any up server, whatever its role.
    #[default]
    Any,
    /// Up servers that accept writes.
    Primary,
    /// Up read-only replicas (within the pool's `max_replica_lag`).
    Replica,
}

/// Longest messages a protocol front end reads whole, so a client cannot make it buffer
/// without bound: a startup packet is small; others may carry large values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageLimits {
    /// Bytes in a startup packet (StartupMessage, SSLRequest, CancelRequest).
    #[serde(default = "defaults::startup_message")]
    pub startup_message: usize,
    /// Bytes in any other message the proxy reads whole.
    #[serde(default = "defaults::message")]
    pub message: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            startup_message: defaults::startup_message(),
            message: defaults::message(),
        }
    }
}

/// What an HTTP listener accepts from clients and adds to requests it forwards.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerConfig {
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in a request; more gets 431.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Longest request target in bytes; longer gets 414.
    #[serde(default = "defaults::max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Largest request body in bytes; larger gets 413. Absent: no limit.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Also send an RFC 7239 `Forwarded` header (the `X-Forwarded-*` ones are always sent).
    #[serde(default)]
    pub forwarded: bool,
}

impl Default for HttpListenerConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            max_uri_bytes: defaults::max_uri_bytes(),
            max_body_bytes: None,
            forwarded: false,
        }
    }
}

/// What a listener does with an incoming PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptProxyProtocol {
    /// Every connection must start with a v1 or v2 header.
    Accept,
}

/// Timeouts on the client side of a listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTimeouts {
    /// Idle time allowed on a client connection (reset by traffic in either direction).
    #[serde(default = "defaults::idle", with = "duration")]
    pub client: Duration,
    /// Time allowed to receive a PROXY protocol header.
    #[serde(default = "defaults::proxy_header", with = "duration")]
    pub proxy_header: Duration,
    /// HTTP: time allowed to receive a complete request head once it starts (408 after).
    #[serde(default = "defaults::http_request", with = "duration")]
    pub http_request: Duration,
    /// HTTP: idle time allowed between requests on a keep-alive client connection.
    #[serde(default = "defaults::keep_alive", with = "duration")]
    pub keep_alive: Duration,
}

impl Default for ListenerTimeouts {
    fn default() -> Self {
        Self {
            client: defaults::idle(),
            proxy_header: defaults::proxy_header(),
            http_request: defaults::http_request(),
            keep_alive: defaults::keep_alive(),
        }
    }
}

/// A routing rule: when every given match key matches, use `pool`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The pool this route sends to.
    pub pool: String,
    /// HTTP Host (exact or `*.suffix`).
    #[serde(default)]
    pub host: Option<String>,
    /// HTTP path prefix.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// TLS SNI.
    #[serde(default)]
    pub sni: Option<String>,
    /// Database name (postgres/mysql).
    #[serde(default)]
    pub database: Option<String>,
    /// User name (postgres/mysql).
    #[serde(default)]
    pub user: Option<String>,
    /// Mail domain (smtp).
    #[serde(default)]
    pub domain: Option<String>,
    /// Client `application_name` (postgres), exact or glob.
    #[serde(default)]
    pub application_name: Option<String>,
    /// Common name of the client's TLS certificate, exact or glob.
    #[serde(default)]
    pub client_cn: Option<String>,
    /// Database name sent to the server instead of the client's (postgres).
    #[serde(default)]
    pub rewrite_database: Option<String>,
    /// User name sent to the server instead of the client's (postgres).
    #[serde(default)]
    pub rewrite_user: Option<String>,
    /// HTTP method (exact, case-sensitive as methods are).
    #[serde(default)]
    pub method: Option<String>,
    /// HTTP headers that must be present with these exact values (names case-insensitive).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// HTTP: header rules applied to requests this route forwards.
    #[serde(default)]
    pub request_headers: HeaderRules,
    /// HTTP: header rules applied to responses this route returns.
    #[serde(default)]
    pub response_headers: HeaderRules,
    /// Postgres: send reads to replicas and the rest to the primary; overrides the pool's.
    #[serde(default)]
    pub read_write_split: Option<bool>,
    /// Postgres split: a client's reads go to the primary this long after its last write
    /// (read-your-writes); overrides the pool's.
    #[serde(default, with = "duration::option")]
    pub sticky_after_write: Option<Duration>,
    /// Postgres split: more function names whose calls make a `SELECT` a write; replaces
    /// the pool's list.
    #[serde(default)]
    pub write_functions: Option<Vec<String>>,
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers to set, replacing any present.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Headers to append, keeping any present.
    #[serde(default)]
    pub add: std::collections::BTreeMap<String, String>,
}

/// Balance algorithms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceAlgorithm {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest active connections relative to weight.
    LeastConn,
    /// Power of two random choices.
    Random,
    /// Weighted rendezvous hashing of the client address.
    SourceHash,
}

/// A group of interchangeable servers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name.
    pub name: String,
    /// How a server is chosen.
    #[serde(default)]
    pub balance: BalanceAlgorithm,
    /// Active health checking; absent means servers are only checked passively.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// Server-side timeouts.
    #[serde(default)]
    pub timeouts: PoolTimeouts,
    /// Clients allowed to wait for a free server slot at once; more are refused.
    #[serde(default = "defaults::max_queue")]
    pub max_queue: usize,
    /// Connect attempts on another server after a failed connect (redispatch).
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// Send a PROXY protocol header to servers.
    #[serde(default)]
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
    /// Time over which a server coming back (health down to up, or drain/maint to ready)
    /// ramps from a small share to its full weight, so that a cold replica is not flooded;
    /// absent or `"0s"` gives it its full share at once.
    #[serde(default, with = "duration::option")]
    pub slow_start: Option<Duration>,
    /// Replicas lagging more than this behind their primary (as the `postgres` and `mysql`
    /// checks measure) take no replica traffic; absent means no limit.
    #[serde(default, with = "duration::option")]
    pub max_replica_lag: Option<Duration>,
    /// The servers.
    pub servers: Vec<ServerConfig>,
    /// TLS to the servers, with libpq `sslmode` semantics; absent means plaintext.
    #[serde(default)]
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// HTTP version spoken to servers by HTTP listeners.
    #[serde(default)]
    pub http_version: HttpVersion,
    /// HTTP: keep the client's `Host` header; `false` sends the server address instead.
    #[serde(default = "defaults::preserve_host")]
    pub preserve_host: bool,
    /// HTTP: the keep-alive connections kept to each server.
    #[serde(default)]
    pub keep_alive: UpstreamKeepAlive,
    /// Postgres: send reads to replicas and the rest to the primary (routes may override).
    #[serde(default)]
    pub read_write_split: bool,
    /// Postgres split: a client's reads go to the primary this long after its last write.
    #[serde(default, with = "duration::option")]
    pub sticky_after_write: Option<Duration>,
    /// Postgres split: more function names whose calls make a `SELECT` a write.
    #[serde(default)]
    pub write_functions: Vec<String>,
    /// Postgres: where users not in `[[user]]` are looked up.
    #[serde(default)]
    pub auth_query: Option<AuthQueryConfig>,
    /// PostgreSQL: whether a client keeps one server connection for its session, or
    /// shares server connections with other clients one transaction at a time.
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// PostgreSQL transaction mode: server connections per (database, user) per server.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// PostgreSQL transaction mode: idle server connections kept open per (database,
    /// user) per server, so a burst does not wait for logins.
    #[serde(default)]
    pub min_idle: usize,
    /// PostgreSQL transaction mode: a server connection older than this is closed when it
    /// is next idle.
    #[serde(default = "defaults::server_lifetime", with = "duration")]
    pub server_lifetime: Duration,
    /// PostgreSQL transaction mode: an idle server connection unused this long is closed
    /// (down to `min_idle`).
    #[serde(default = "defaults::server_idle_timeout", with = "duration")]
    pub server_idle_timeout: Duration,
    /// PostgreSQL transaction mode: prepared statements kept per server connection; the
    /// least recently used is closed beyond it.
    #[serde(default = "defaults::max_prepared_statements")]
    pub max_prepared_statements: usize,
    /// PostgreSQL transaction mode: (database, user) pairs the pool keeps server
    /// connections for; a login for a new pair beyond it is refused (53300).
    #[serde(default = "defaults::max_transaction_pools")]
    pub max_transaction_pools: usize,
}

/// How PostgreSQL clients use server connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// One server connection per client session (relayed authentication allowed).
    #[default]
    Session,
    /// Server connections shared between clients; a client holds one from the first
    /// message of a transaction until the server reports the session idle.
    Transaction,
}

/// HTTP versions spoken to servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HttpVersion {
    /// HTTP/1.1 with a keep-alive connection pool per server.
    #[default]
    #[serde(rename = "1.1")]
    Http1,
    /// HTTP/2 (prior knowledge, cleartext): one multiplexed connection per server.
    #[serde(rename = "2")]
    Http2,
}

/// Reuse of HTTP/1.1 server connections.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamKeepAlive {
    /// Idle connections kept per server; 0 closes each after its request.
    #[serde(default = "defaults::max_idle")]
    pub max_idle: usize,
    /// How long an idle connection is kept.
    #[serde(default = "defaults::keep_alive", with = "duration")]
    pub idle_timeout: Duration,
    /// Requests sent over one connection before it is closed.
    #[serde(default = "defaults::max_requests")]
    pub max_requests: u32,
}

impl Default for UpstreamKeepAlive {
    fn default() -> Self {
        Self {
            max_idle: defaults::max_idle(),
            idle_timeout: defaults::keep_alive(),
            max_requests: defaults::max_requests(),
        }
    }
}

/// PROXY protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    /// Human-readable v1.
    V1,
    /// Binary v2.
    V2,
}

/// Timeouts on the server side of a pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTimeouts {
    /// Time allowed to establish a server connection.
    #[serde(default = "defaults::connect", with = "duration")]
    pub connect: Duration,
    /// Idle time allowed on a server connection (reset by traffic in either direction).
    #[serde(default = "defaults::idle", with = "duration")]
    pub server: Duration,
    /// Time a client may wait for a server slot when every server is at `max_connections`.
    #[serde(default = "defaults::queue", with = "duration")]
    pub queue: Duration,
    /// Idle time for an established tunnel; replaces `client` and `server` when set.
    #[serde(default, with = "duration::option")]
    pub tunnel: Option<Duration>,
}

impl Default for PoolTimeouts {
    fn default() -> Self {
        Self {
            connect: defaults::connect(),
            server: defaults::idle(),
            queue: defaults::queue(),
            tunnel: None,
        }
    }
}

/// One backend server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Unique within the pool; defaults to the address.
    #[serde(default)]
    pub name: Option<String>,
    /// `host:port`; host names are resolved at each connect.
    pub address: String,
    /// Relative share of traffic (0 to 256; 0 takes no new traffic).
    #[serde(default = "defaults::weight")]
    pub weight: u32,
    /// Most concurrent connections; more clients wait in the pool queue.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Takes traffic only while no non-backup server is up.
    #[serde(default)]
    pub backup: bool,
    /// Overrides the pool's `slow_start` for this server (e.g. one that warms a larger
    /// cache); `"0s"` turns the ramp off for it.
    #[serde(default, with = "duration::option")]
    pub slow_start: Option<Duration>,
}

impl ServerConfig {
    /// The server's name: the configured one, else its address.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.address)
    }

    /// The ramp this server gets when it comes back: its own `slow_start`, else the pool's;
    /// zero means none.
    pub fn effective_slow_start(&self, pool: &PoolConfig) -> Duration {
        self.slow_start.or(pool.slow_start).unwrap_or_default()
    }
}

/// Health check kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP request expecting a 2xx or 3xx status.
    Http,
    /// PostgreSQL startup and role query.
    Postgres,
    /// MySQL handshake and role query.
    Mysql,
    /// SMTP greeting and EHLO.
    Smtp,
}

/// What happens to established sessions when their server goes down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDown {
    /// Leave them; they end on their own.
    #[default]
    None,
    /// Close them at once.
    ShutdownSessions,
}

/// What happens to established sessions when their server's role changes (a replica is
/// promoted, or a primary comes back as a replica).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRoleChange {
    /// Leave them.
    None,
    /// Close them at once, so clients reconnect to a server of the role they asked for.
    #[default]
    ShutdownSessions,
}

/// Active and passive health checking of a pool's servers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// The kind of check.
    pub check: CheckKind,
    /// Time between checks of a server in a steady state.
    #[serde(default = "defaults::check_interval", with = "duration")]
    pub interval: Duration,
    /// Time between checks while a server is changing state; defaults to interval / 4.
    #[serde(default, with = "duration::option")]
    pub fast_interval: Option<Duration>,
    /// Time allowed for one check; defaults to the smaller of interval and 2s.
    #[serde(default, with = "duration::option")]
    pub timeout: Option<Duration>,
    /// Consecutive failures that take an up server down.
    #[serde(default = "defaults::fall")]
    pub fall: u32,
    /// Consecutive successes that bring a down server up.
    #[serde(default = "defaults::rise")]
    pub rise: u32,
    /// What to do with established sessions when a server goes down.
    #[serde(default)]
    pub on_down: OnDown,
    /// HTTP path for `http` checks.
    #[serde(default = "defaults::check_path")]
    pub path: String,
    /// HTTP Host header for `http` checks; defaults to the server address.
    #[serde(default)]
    pub host: Option<String>,
    /// User a database check logs in as; see [`HealthConfig::check_user`].
    #[serde(default)]
    pub user: Option<String>,
    /// Database a database check connects to; see [`HealthConfig::check_database`].
    #[serde(default)]
    pub database: Option<String>,
    /// Password for the check user: a literal, `env:VAR` or `file:PATH`.
    #[serde(default)]
    pub password: Option<String>,
    /// What to do with established sessions when a server's role changes.
    #[serde(default)]
    pub on_role_change: OnRoleChange,
    /// HTTP method for `http` checks.
    #[serde(default = "defaults::check_method")]
    pub method: String,
    /// Statuses an `http` check accepts, as `"200-399"` or `"204"`.
    #[serde(default = "defaults::check_status")]
    pub expect_status: String,
    /// Text the body of an `http` check's response must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
}

impl HealthConfig {
    /// The user a database check logs in as: `user`, else `postgres` (the `mysql` check
    /// has no default: validation asks for a user).
    pub fn check_user(&self) -> &str {
        self.user.as_deref().unwrap_or("postgres")
    }

    /// The database a database check connects to: `database`, else `postgres` for the
    /// `postgres` check and none for the `mysql` check.
    pub fn check_database(&self) -> Option<&str> {
        match (&self.database, self.check) {
            (Some(database), _) => Some(database),
            (None, CheckKind::Postgres) => Some("postgres"),
            (None, _) => None,
        }
    }

    /// Effective check timeout.
    pub fn effective_timeout(&self) -> Duration {
        self.timeout
            .unwrap_or_else(|| self.interval.min(Duration::from_secs(2)))
    }

    /// Effective interval while a server is between states.
    pub fn effective_fast_interval(&self) -> Duration {
        self.fast_interval
            .unwrap_or_else(|| (self.interval / 4).max(Duration::from_millis(50)))
    }
}

/// A listener's TLS termination. Paths are relative to the config file's directory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// Certificate/key pairs; the SNI name picks one by the names in the certificate, the
    /// first is the default for clients without (or, unless `strict_sni`, with an unknown) SNI.
    pub certs: Vec<CertPair>,
    /// ALPN protocols offered, in the server's order of preference (e.g. `h2`, `http/1.1`).
    #[serde(default)]
    pub alpn: Vec<String>,
    /// PEM file of CAs that sign client certificates (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<std::path::PathBuf>,
    /// Whether clients must present a certificate signed by `client_ca`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Refuse the handshake when the client's SNI names no certificate.
    #[serde(default)]
    pub strict_sni: bool,
    /// Time allowed for the client's TLS handshake.
    #[serde(default = "defaults::tls_handshake", with = "duration")]
    pub handshake_timeout: Duration,
}

/// A certificate chain and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    /// PEM certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: std::path::PathBuf,
}

/// Client certificate policy for mutual TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for and verified if sent.
    Optional,
    /// A verified certificate is required.
    Required,
}

/// libpq's `sslmode`, with the same meaning for every protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plaintext first; TLS only when the server refuses plaintext.
    Allow,
    /// TLS when the server offers it, else plaintext; no verification.
    #[default]
    Prefer,
    /// TLS, encrypted but not verified.
    Require,
    /// TLS with the chain verified; any host name.
    VerifyCa,
    /// TLS with the chain and the host name (DNS or IP SAN) verified.
    VerifyFull,
}

impl SslMode {
    /// The name used in the config file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection attempt asks a database server for TLS in its protocol
    /// (PostgreSQL's SSLRequest, MySQL's): `allow` only on its retry after the server
    /// refused plaintext (`retry`), `disable` never, the others always.
    pub fn asks_for_tls(self, retry: bool) -> bool {
        match self {
            SslMode::Disable => false,
            SslMode::Allow => retry,
            SslMode::Prefer | SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => true,
        }
    }
}

/// A pool's TLS to its servers. Paths are relative to the config file's directory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// When and how strictly TLS is used.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM CAs for `verify-ca`/`verify-full`; default: the Mozilla root set.
    #[serde(default)]
    pub root_cert: Option<std::path::PathBuf>,
    /// Server name to send and verify instead of the server's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM client certificate chain for mutual TLS to the servers.
    #[serde(default)]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<std::path::PathBuf>,
    /// ALPN protocols offered to servers.
    #[serde(default)]
    pub alpn: Vec<String>,
}

/// Default values, named so the schema documentation and the code agree.
mod defaults {
    use std::time::Duration;

    pub fn shutdown_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn admin_listen() -> String {
        "127.0.0.1:9900".into()
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn log_access() -> String {
        "stdout".into()
    }
    pub fn backlog() -> u32 {
        4096
    }
    pub fn idle() -> Duration {
        Duration::from_secs(600)
    }
    pub fn proxy_header() -> Duration {
        Duration::from_secs(3)
    }
    pub fn connect() -> Duration {
        Duration::from_secs(3)
    }
    pub fn queue() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_queue() -> usize {
        1024
    }
    pub fn retries() -> u32 {
        1
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn check_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub fn fall() -> u32 {
        3
    }
    pub fn rise() -> u32 {
        2
    }
    pub fn check_path() -> String {
        "/".into()
    }
    pub fn tls_handshake() -> Duration {
        Duration::from_secs(10)
    }
    pub fn check_method() -> String {
        "GET".into()
    }
    pub fn check_status() -> String {
        "200-399".into()
    }
    pub fn max_header_bytes() -> usize {
        32 * 1024
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_uri_bytes() -> usize {
        8 * 1024
    }
    pub fn http_request() -> Duration {
        Duration::from_secs(10)
    }
    pub fn keep_alive() -> Duration {
        Duration::from_secs(60)
    }
    pub fn preserve_host() -> bool {
        true
    }
    pub fn max_idle() -> usize {
        1024
    }
    pub fn pool_size() -> usize {
        20
    }
    pub fn server_lifetime() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn server_idle_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn max_prepared_statements() -> usize {
        200
    }
    pub fn max_transaction_pools() -> usize {
        1000
    }
    pub fn max_requests() -> u32 {
        1000
    }
    pub fn check_database() -> String {
        "postgres".into()
    }
    pub fn replica_fallback() -> bool {
        true
    }
    pub fn startup_message() -> usize {
        10_000
    }
    pub fn message() -> usize {
        1 << 30
    }
    pub fn auth_query() -> String {
        "SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into()
    }
}
