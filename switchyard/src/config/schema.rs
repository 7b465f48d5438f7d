//! The TOML schema: what an operator may write, with its defaults.
//!
//! Every struct denies unknown keys so that a typo is an error instead of a silently ignored
//! setting. Durations are strings such as `"250ms"`, `"2s"` or `"1m"`.

use std::time::Duration;

use serde::Deserialize;

use super::database::UserConfig;
use super::duration;
use super::pool::PoolConfig;
use super::protocols::{ListenerOptions, Protocol};

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

/// Default values, named so the schema documentation and the code agree.
mod defaults {
    use std::time::Duration;

    /// A client connection is given the idle time of a server connection.
    pub use crate::config::pool::defaults::idle;

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
    pub fn proxy_header() -> Duration {
        Duration::from_secs(3)
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
