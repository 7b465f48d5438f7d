//! The TOML schema: what an operator may write, with its defaults.
//!
//! Every struct denies unknown keys so that a typo is an error instead of a silently ignored
//! setting. Durations are strings such as `"250ms"`, `"2s"` or `"1m"`.

use std::time::Duration;

use serde::Deserialize;

use super::database::{DatabaseCheck, DatabasePool, MysqlCheck, UserConfig};
use super::duration;
use super::http::{HttpCheck, HttpPool};
use super::protocols::ListenerOptions;

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
    /// Database users clients authenticate as when a postgres or mysql listener
    /// authenticates clients itself (`auth`).
    #[serde(default, rename = "user")]
    pub users: Vec<UserConfig>,
    /// Usage per tenant, for billing.
    #[serde(default)]
    pub accounting: Option<super::accounting::AccountingConfig>,
    /// Sources of servers decided at run time, for pools with `resolver`.
    #[serde(default, rename = "resolver")]
    pub resolvers: Vec<super::resolver::ResolverConfig>,
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
    /// Host names (`host` or `host:port`) requests may carry in `Host` besides the admin
    /// listener's own address: requests naming anything else are refused, which keeps
    /// DNS-rebinding pages out.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
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
    /// Every protocol.
    pub const ALL: [Protocol; 5] = [
        Protocol::Tcp,
        Protocol::Http,
        Protocol::Postgres,
        Protocol::Mysql,
        Protocol::Smtp,
    ];

    /// Whether clients log in before their traffic is relayed (a handshake and
    /// authentication the proxy takes part in; for SMTP the conversation the proxy holds
    /// until the envelope chooses a server), so `timeouts.login` and
    /// `max_logins_per_address` apply.
    pub fn has_login(self) -> bool {
        matches!(self, Protocol::Postgres | Protocol::Mysql | Protocol::Smtp)
    }

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

/// One listening socket and how its connections are handled: the keys every listener
/// has, and in `options` those of its protocol. The loader reads both from the same table
/// and reports a key neither reads (see `keys`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ListenerConfig {
    /// Unique name, used in logs, metrics and socket handoff.
    pub name: String,
    /// `host:port` to bind, IPv4 or IPv6 (`[::1]:8080`); port 0 takes a free one.
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
    /// Protocols with a login: connections from one client address still logging in at
    /// once; 0 for no limit. Bounds what one host can hold with silent sockets.
    #[serde(default = "defaults::max_logins_per_address")]
    pub max_logins_per_address: u32,
    /// Listen backlog (accept queue length).
    #[serde(default = "defaults::backlog")]
    pub backlog: u32,
    /// How many workers (the first ones) accept and serve this listener's connections;
    /// all of them by default. Fewer trade the other cores for fewer wake-ups: a
    /// transaction pool on a machine it shares with its database spends less CPU per
    /// transaction on one worker, as PgBouncer's one thread does.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Terminate TLS from clients with these certificates (see the `tls` module).
    #[serde(default)]
    pub tls: Option<TlsServerConfig>,
    /// The keys of the listener's protocol, read by the loader after `protocol`.
    #[serde(skip)]
    pub options: ListenerOptions,
}

impl ListenerConfig {
    /// The pools this listener sends to: its `pool`, then its routes' pools.
    pub fn pools(&self) -> Vec<&str> {
        let routes = self.options.keys_of_protocol().route_pools();
        self.pool.iter().map(String::as_str).chain(routes).collect()
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
    /// Protocols with a login (see [`Protocol::has_login`]): time from accept to the end
    /// of authentication (SMTP: to the first recipient routed to a server), TLS upgrade
    /// included, so silent clients cannot hold descriptors.
    #[serde(default = "defaults::login", with = "duration")]
    pub login: Duration,
}

impl Default for ListenerTimeouts {
    fn default() -> Self {
        Self {
            client: defaults::idle(),
            proxy_header: defaults::proxy_header(),
            http_request: defaults::http_request(),
            keep_alive: defaults::keep_alive(),
            login: defaults::login(),
        }
    }
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

/// A group of interchangeable servers: the keys every pool has, and the keys the
/// listeners of a protocol read (`http`, `database`), all written at the pool's top level.
/// The loader reads each group from the same table, reports a key none reads, and a key
/// of a group that no listener using the pool reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// The servers; empty for a pool with `resolver`.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
    /// The resolver that gives this pool's servers per routing key, instead of `servers`.
    #[serde(default)]
    pub resolver: Option<String>,
    /// The routing key template (`{host}`, `{sni}`, `{database}`, `{user}`, `{domain}`).
    #[serde(default)]
    pub key: Option<String>,
    /// A regex the key must match; its named group `key` is what is looked up.
    #[serde(default)]
    pub key_pattern: Option<String>,
    /// TLS to the servers, with libpq `sslmode` semantics; absent means plaintext.
    #[serde(default)]
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// The keys HTTP listeners read, set by the loader.
    #[serde(skip)]
    pub http: HttpPool,
    /// The keys database listeners read, set by the loader.
    #[serde(skip)]
    pub database: DatabasePool,
    /// The keys SMTP listeners read, set by the loader.
    #[serde(skip)]
    pub smtp: super::smtp::SmtpPool,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
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

impl CheckKind {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Postgres => "postgres",
            CheckKind::Mysql => "mysql",
            CheckKind::Smtp => "smtp",
        }
    }
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

/// Active and passive health checking of a pool's servers: the keys every check has, and
/// in `options` those of its kind, read by the loader from the same table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// The keys of the check's kind, set by the loader.
    #[serde(skip)]
    pub options: CheckOptions,
}

/// The keys only one kind of check has.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum CheckOptions {
    /// A TCP connect (and the TLS handshake with `upstream_tls`).
    #[default]
    Tcp,
    /// An HTTP request.
    Http(HttpCheck),
    /// A PostgreSQL login and role query.
    Postgres(DatabaseCheck),
    /// A MySQL login and role query.
    Mysql(MysqlCheck),
    /// An SMTP banner, EHLO (and STARTTLS with `upstream_tls.starttls`), QUIT.
    Smtp,
}

impl HealthConfig {
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
    /// SMTP: upgrade with STARTTLS after the server's EHLO, instead of TLS from the first
    /// byte.
    #[serde(default)]
    pub starttls: bool,
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
    pub fn tls_handshake() -> Duration {
        Duration::from_secs(10)
    }
    pub fn http_request() -> Duration {
        Duration::from_secs(10)
    }
    pub fn login() -> Duration {
        Duration::from_secs(15)
    }
    pub fn max_logins_per_address() -> u32 {
        1000
    }
    pub fn keep_alive() -> Duration {
        Duration::from_secs(60)
    }
}
