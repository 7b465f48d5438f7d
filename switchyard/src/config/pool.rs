//! A pool: the keys every pool has (its servers, balance, queue and timeouts, its health
//! check, its TLS to the servers) and in fields of their own the keys only some
//! protocols' listeners read, defined with those protocols.

use std::time::Duration;

use serde::Deserialize;

use super::database::{DatabaseCheck, DatabasePool, MysqlCheck, PoolView};
use super::duration;
use super::http::{HttpCheck, HttpPool};

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

impl<'a> From<&'a PoolConfig> for PoolView<'a> {
    fn from(pool: &'a PoolConfig) -> Self {
        Self {
            name: &pool.name,
            database: &pool.database,
            knows_roles: pool.health.as_ref().is_some_and(|h| {
                matches!(
                    h.options,
                    CheckOptions::Postgres(_) | CheckOptions::Mysql(_)
                )
            }),
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
pub(super) mod defaults {
    use std::time::Duration;

    pub fn connect() -> Duration {
        Duration::from_secs(3)
    }
    pub fn idle() -> Duration {
        Duration::from_secs(600)
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
}
