//! Keys shared by the database protocols (PostgreSQL, later MySQL): the role a listener
//! sends to, client TLS in the protocol, message limits, `[[user]]`, the pool keys of
//! transaction pooling and the read/write split, and the database health checks.

use std::time::Duration;

use serde::Deserialize;

use super::duration;
use super::report::ErrorSink;
use crate::key_path;

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
    /// Plaintext sessions are refused.
    Required,
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

/// The keys of a pool that database listeners read (written at the pool's top level):
/// replica lag, transaction pooling and the read/write split.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DatabasePool {
    /// Replicas lagging more than this (as the health check measures) take no replica
    /// traffic; absent means no limit.
    #[serde(default, with = "duration::option")]
    pub max_replica_lag: Option<Duration>,
    /// Send reads to replicas and the rest to the primary (routes may override).
    #[serde(default)]
    pub read_write_split: bool,
    /// Split: a client's reads go to the primary this long after its last write.
    #[serde(default, with = "duration::option")]
    pub sticky_after_write: Option<Duration>,
    /// Split: more function names whose calls make a `SELECT` a write.
    #[serde(default)]
    pub write_functions: Vec<String>,
    /// Where users not in `[[user]]` are looked up (PostgreSQL).
    #[serde(default)]
    pub auth_query: Option<AuthQueryConfig>,
    /// Whether a client keeps one server connection for its session, or shares server
    /// connections with other clients one transaction at a time.
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Transaction mode: server connections per (database, user) per server.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// Transaction mode: idle server connections kept open per (database, user) per
    /// server, so a burst does not wait for logins.
    #[serde(default)]
    pub min_idle: usize,
    /// Transaction mode: a server connection older than this is closed when it is next
    /// idle.
    #[serde(default = "defaults::server_lifetime", with = "duration")]
    pub server_lifetime: Duration,
    /// Transaction mode: an idle server connection unused this long is closed (down to
    /// `min_idle`).
    #[serde(default = "defaults::server_idle_timeout", with = "duration")]
    pub server_idle_timeout: Duration,
    /// Transaction mode: prepared statements kept per server connection; the least
    /// recently used is closed beyond it.
    #[serde(default = "defaults::max_prepared_statements")]
    pub max_prepared_statements: usize,
    /// Transaction mode: (database, user) pairs the pool keeps server connections for; a
    /// login for a new pair beyond it is refused (53300).
    #[serde(default = "defaults::max_transaction_pools")]
    pub max_transaction_pools: usize,
}

impl Default for DatabasePool {
    fn default() -> Self {
        Self {
            max_replica_lag: None,
            read_write_split: false,
            sticky_after_write: None,
            write_functions: Vec::new(),
            auth_query: None,
            pool_mode: PoolMode::default(),
            pool_size: defaults::pool_size(),
            min_idle: 0,
            server_lifetime: defaults::server_lifetime(),
            server_idle_timeout: defaults::server_idle_timeout(),
            max_prepared_statements: defaults::max_prepared_statements(),
            max_transaction_pools: defaults::max_transaction_pools(),
        }
    }
}

/// How database clients use server connections.
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

/// A database health check: log in and ask the server its role.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DatabaseCheck {
    /// User the check logs in as.
    #[serde(default = "defaults::check_user")]
    pub user: String,
    /// Database it connects to.
    #[serde(default = "defaults::check_database")]
    pub database: String,
    /// Password: a literal, `env:VAR` or `file:PATH`.
    #[serde(default)]
    pub password: Option<String>,
    /// What to do with established sessions when a server's role changes.
    #[serde(default)]
    pub on_role_change: OnRoleChange,
}

impl Default for DatabaseCheck {
    fn default() -> Self {
        Self {
            user: defaults::check_user(),
            database: defaults::check_database(),
            password: None,
            on_role_change: OnRoleChange::default(),
        }
    }
}

/// The `mysql` health check: log in and ask the server whether it is read-only and, for a
/// replica, how far behind it is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MysqlCheck {
    /// User the check logs in as: an account that may run `SHOW VARIABLES` and
    /// `SHOW REPLICA STATUS` (no default: MySQL has no user every server has).
    pub user: String,
    /// Database it connects to; none by default.
    #[serde(default)]
    pub database: Option<String>,
    /// Password: a literal, `env:VAR` or `file:PATH`.
    #[serde(default)]
    pub password: Option<String>,
    /// What to do with established sessions when a server's role changes.
    #[serde(default)]
    pub on_role_change: OnRoleChange,
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

/// A pool as the database rules read it.
pub struct PoolView<'a> {
    /// Its `name`.
    pub name: &'a str,
    /// Its database keys.
    pub database: &'a DatabasePool,
    /// Whether it has a database health check, the only thing that tells servers' roles.
    pub knows_roles: bool,
}

/// The message naming what a role-based feature needs from `pool`.
pub fn roles_needed(pool: &str) -> String {
    format!(
        "pool `{pool}` needs a database health check (`health = {{ check = \"postgres\" }}` or `\"mysql\"`) so that its servers' roles are known"
    )
}

/// Checks a database listener's role (against `pools`), client TLS and limits.
pub fn validate_listener(
    pools: &[PoolView<'_>],
    i: usize,
    database: &DatabaseListener<'_>,
    sink: &mut ErrorSink<'_>,
) {
    if client_tls_mode(database.client_tls, database.tls) != ClientTlsMode::Disabled
        && !database.tls
    {
        sink.at(
            &key_path!("listener", i, "client_tls"),
            "needs `tls` with the certificates to offer",
        );
    }
    for (key, value) in [
        ("startup_message", database.limits.startup_message),
        ("message", database.limits.message),
    ] {
        if value < 1024 {
            sink.at(
                &key_path!("listener", i, "limits", key),
                "must be at least 1024 bytes",
            );
        }
    }
    if database.role == ListenerRole::Any {
        return;
    }
    for name in database.pools {
        let known = pools.iter().any(|p| p.name == *name && p.knows_roles);
        if !known {
            sink.at(&key_path!("listener", i, "role"), roles_needed(name));
        }
    }
}

/// The pools a database listener sends to: its `pool`, then those of its routes.
pub fn listener_pools<'a>(
    pool: Option<&'a String>,
    routes: impl Iterator<Item = &'a String>,
) -> Vec<&'a String> {
    pool.into_iter().chain(routes).collect()
}

/// What the database rules need to know of a database listener, whatever its protocol.
pub struct DatabaseListener<'a> {
    /// `role`.
    pub role: ListenerRole,
    /// `client_tls`.
    pub client_tls: Option<&'a ClientTlsConfig>,
    /// `limits`.
    pub limits: &'a MessageLimits,
    /// Whether it has `tls` certificates.
    pub tls: bool,
    /// The pools it routes to (its `pool` and its routes').
    pub pools: &'a [&'a String],
}

/// The client TLS policy in effect: as configured, else `optional` when the listener has
/// certificates and `disabled` when it has none.
pub fn client_tls_mode(
    configured: Option<&ClientTlsConfig>,
    has_certificates: bool,
) -> ClientTlsMode {
    match (configured, has_certificates) {
        (Some(client_tls), _) => client_tls.mode,
        (None, true) => ClientTlsMode::Optional,
        (None, false) => ClientTlsMode::Disabled,
    }
}

/// Checks a pool's database keys: bounds that make sense, the split's needs, function
/// names well formed.
pub fn validate_pool(pool: &PoolView<'_>, i: usize, sink: &mut ErrorSink<'_>) {
    let db = pool.database;
    let positive = [
        ("pool_size", db.pool_size),
        ("max_prepared_statements", db.max_prepared_statements),
        ("max_transaction_pools", db.max_transaction_pools),
    ];
    for (key, value) in positive {
        if value == 0 {
            sink.at(&key_path!("pool", i, key), "must be at least 1");
        }
    }
    if db.min_idle > db.pool_size {
        sink.at(
            &key_path!("pool", i, "min_idle"),
            format!("must not exceed pool_size ({})", db.pool_size),
        );
    }
    validate_function_names(&db.write_functions, &mut |message| {
        sink.at(&key_path!("pool", i, "write_functions"), message)
    });
    if db.read_write_split {
        if db.pool_mode != PoolMode::Transaction {
            sink.at(
                &key_path!("pool", i, "read_write_split"),
                "the split chooses a server per transaction: it needs `pool_mode = \"transaction\"`",
            );
        } else if !pool.knows_roles {
            sink.at(
                &key_path!("pool", i, "read_write_split"),
                roles_needed(pool.name),
            );
        }
    }
    if let Some(query) = &db.auth_query {
        if query.user.is_empty() {
            sink.at(
                &key_path!("pool", i, "auth_query", "user"),
                "must not be empty",
            );
        }
        if let Some(Err(e)) = query.password.as_deref().map(crate::secret::resolve) {
            sink.at(&key_path!("pool", i, "auth_query", "password"), e);
        }
        if !query.query.contains("$1") {
            sink.at(
                &key_path!("pool", i, "auth_query", "query"),
                "must take the user name as $1",
            );
        }
    }
}

/// Function names are matched without their schema, as PostgreSQL stores them.
pub fn validate_function_names(names: &[String], report: &mut dyn FnMut(String)) {
    for name in names {
        if name.is_empty() || name.contains('.') || name.contains(char::is_whitespace) {
            report(format!(
                "`{name}` is not a function name (give the name without schema or arguments)"
            ));
        }
    }
}

/// Checks a database health check's password resolves.
pub fn validate_check(password: Option<&str>, i: usize, sink: &mut ErrorSink<'_>) {
    if let Some(Err(e)) = password.map(crate::secret::resolve) {
        sink.at(&key_path!("pool", i, "health", "password"), e);
    }
}

/// Checks `[[user]]` entries: unique names, exactly one secret, secrets that resolve and
/// parse.
pub fn validate_users(users: &[UserConfig], sink: &mut ErrorSink<'_>) {
    let mut seen = std::collections::HashSet::new();
    for (i, user) in users.iter().enumerate() {
        if user.name.is_empty() {
            sink.at(&key_path!("user", i, "name"), "must not be empty");
        } else if !seen.insert(user.name.as_str()) {
            sink.at(
                &key_path!("user", i, "name"),
                format!("user `{}` is defined twice", user.name),
            );
        }
        let given = [
            user.password.is_some(),
            user.scram_secret.is_some(),
            user.md5.is_some(),
        ];
        if given.iter().filter(|set| **set).count() != 1 {
            sink.at(
                &key_path!("user", i),
                "needs exactly one of `password`, `scram_secret`, `md5`",
            );
        }
        for (key, value) in [
            ("password", &user.password),
            ("server_password", &user.server_password),
        ] {
            if let Some(Err(e)) = value.as_deref().map(crate::secret::resolve) {
                sink.at(&key_path!("user", i, key), e);
            }
        }
        if let Some(Err(e)) = user
            .scram_secret
            .as_deref()
            .map(crate::auth::scram::ScramSecret::parse)
        {
            sink.at(
                &key_path!("user", i, "scram_secret"),
                format!("{e} (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"),
            );
        }
        if user
            .md5
            .as_deref()
            .is_some_and(|hash| !crate::auth::md5::is_stored(hash))
        {
            sink.at(
                &key_path!("user", i, "md5"),
                "must be `md5` followed by 32 lowercase hex digits",
            );
        }
    }
}

/// Default values, named so the schema documentation and the code agree.
mod defaults {
    use std::time::Duration;

    pub fn startup_message() -> usize {
        10_000
    }
    pub fn message() -> usize {
        1 << 30
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
    pub fn check_user() -> String {
        "postgres".into()
    }
    pub fn check_database() -> String {
        "postgres".into()
    }
    pub fn auth_query() -> String {
        "SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into()
    }
}
