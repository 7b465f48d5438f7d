//! The keys of `postgres` listeners: role, client TLS, limits, authentication and routes
//! by database, user, application, SNI or client certificate.

use std::time::Duration;

use serde::Deserialize;

use super::database::{
    self, ClientTlsConfig, ClientTlsMode, DatabaseListener, ListenerRole, MessageLimits, PoolMode,
};
use super::duration;
use super::listener_keys::{ListenerKeys, Surroundings};
use super::report::ErrorSink;
use crate::key_path;

/// What only a `postgres` listener has.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PostgresListener {
    /// Which servers' role this entry point sends to.
    #[serde(default)]
    pub role: ListenerRole,
    /// With `role = "replica"`: use the primary while no replica is up.
    #[serde(default = "defaults::replica_fallback")]
    pub replica_fallback: bool,
    /// Longest protocol messages accepted.
    #[serde(default)]
    pub limits: MessageLimits,
    /// Whether clients may or must use TLS; certificates come from `tls`.
    #[serde(default)]
    pub client_tls: Option<ClientTlsConfig>,
    /// How clients authenticate; see [`PostgresListener::auth`] for the default.
    #[serde(default)]
    pub auth: Option<PostgresAuth>,
    /// Routing rules; first match wins, else the listener's `pool`.
    #[serde(default)]
    pub routes: Vec<PostgresRoute>,
}

impl Default for PostgresListener {
    fn default() -> Self {
        Self {
            role: ListenerRole::default(),
            replica_fallback: defaults::replica_fallback(),
            limits: MessageLimits::default(),
            client_tls: None,
            auth: None,
            routes: Vec::new(),
        }
    }
}

impl PostgresListener {
    /// The client authentication in effect: as configured, else `scram-sha-256` when the
    /// config has `[[user]]` entries (the proxy can check passwords), else `passthrough`.
    pub fn auth(&self, config_has_users: bool) -> PostgresAuth {
        match self.auth {
            Some(auth) => auth,
            None if config_has_users => PostgresAuth::ScramSha256,
            None => PostgresAuth::Passthrough,
        }
    }

    /// The client TLS policy in effect, given whether the listener has certificates.
    pub fn client_tls_mode(&self, has_certificates: bool) -> ClientTlsMode {
        database::client_tls_mode(self.client_tls.as_ref(), has_certificates)
    }
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

/// A PostgreSQL routing rule: when every given match key matches the startup, use `pool`,
/// with the rewrites and split settings it names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresRoute {
    /// The pool this route sends to.
    pub pool: String,
    /// Database name, exact or glob.
    #[serde(default)]
    pub database: Option<String>,
    /// User name, exact or glob.
    #[serde(default)]
    pub user: Option<String>,
    /// Client `application_name`, exact or glob.
    #[serde(default)]
    pub application_name: Option<String>,
    /// TLS SNI, exact or `*.suffix`.
    #[serde(default)]
    pub sni: Option<String>,
    /// Common name of the client's TLS certificate, exact or glob.
    #[serde(default)]
    pub client_cn: Option<String>,
    /// Database name sent to the server instead of the client's.
    #[serde(default)]
    pub rewrite_database: Option<String>,
    /// User name sent to the server instead of the client's.
    #[serde(default)]
    pub rewrite_user: Option<String>,
    /// Send reads to replicas and the rest to the primary; overrides the pool's.
    #[serde(default)]
    pub read_write_split: Option<bool>,
    /// Split: a client's reads go to the primary this long after its last write
    /// (read-your-writes); overrides the pool's.
    #[serde(default, with = "duration::option")]
    pub sticky_after_write: Option<Duration>,
    /// Split: more function names whose calls make a `SELECT` a write; replaces the
    /// pool's list.
    #[serde(default)]
    pub write_functions: Option<Vec<String>>,
}

impl PostgresRoute {
    /// Whether the route names any split key (and so needs split settings of its own).
    pub fn overrides_split(&self) -> bool {
        self.read_write_split.is_some()
            || self.sticky_after_write.is_some()
            || self.write_functions.is_some()
    }
}

impl ListenerKeys for PostgresListener {
    fn route_pools(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.pool.as_str()).collect()
    }

    /// The database rules, its `auth`, and its routes' split keys.
    fn validate(&self, around: &Surroundings<'_>, i: usize, sink: &mut ErrorSink<'_>) {
        validate_listener(around, i, self, sink);
    }
}

fn validate_listener(
    around: &Surroundings<'_>,
    i: usize,
    postgres: &PostgresListener,
    sink: &mut ErrorSink<'_>,
) {
    let pools = database::listener_pools(around.pool, postgres.routes.iter().map(|r| &r.pool));
    let database = DatabaseListener {
        role: postgres.role,
        client_tls: postgres.client_tls.as_ref(),
        limits: &postgres.limits,
        tls: around.tls,
        pools: &pools,
    };
    database::validate_listener(around.pools, i, &database, sink);
    let pool = |name: &str| around.pools.iter().find(|p| p.name == name);
    if let Some(auth) = postgres.auth {
        if auth == PostgresAuth::Cleartext
            && postgres.client_tls_mode(around.tls) != ClientTlsMode::Required
        {
            sink.at(
                &key_path!("listener", i, "auth"),
                "`cleartext` sends passwords in clear: it needs `client_tls = { mode = \"required\" }`",
            );
        }
        let queried = pools
            .iter()
            .any(|name| pool(name).is_some_and(|p| p.database.auth_query.is_some()));
        let checks_passwords = !matches!(auth, PostgresAuth::Trust | PostgresAuth::Passthrough);
        if checks_passwords && around.users.is_empty() && !queried {
            sink.at(
                &key_path!("listener", i, "auth"),
                format!(
                    "`{}` needs `[[user]]` entries or an `auth_query` on the listener's pools",
                    auth.as_str()
                ),
            );
        }
        if auth == PostgresAuth::Passthrough {
            let pooling = pools
                .iter()
                .filter_map(|name| pool(name))
                .find(|p| p.database.pool_mode == PoolMode::Transaction);
            if let Some(pooling) = pooling {
                sink.at(
                    &key_path!("listener", i, "auth"),
                    format!(
                        "pool `{}` pools transactions: switchyard logs in to its servers itself, so clients must authenticate to switchyard (not `passthrough`)",
                        pooling.name
                    ),
                );
            }
        }
    }
    for (r, route) in postgres.routes.iter().enumerate() {
        if let Some(names) = &route.write_functions {
            database::validate_function_names(names, &mut |message| {
                sink.at(
                    &key_path!("listener", i, "routes", r, "write_functions"),
                    message,
                )
            });
        }
        if route.read_write_split == Some(true)
            && let Some(pool) = pool(&route.pool)
            && !pool.knows_roles
        {
            sink.at(
                &key_path!("listener", i, "routes", r, "read_write_split"),
                database::roles_needed(pool.name),
            );
        }
    }
}

/// Default values, named so the schema documentation and the code agree.
mod defaults {
    pub fn replica_fallback() -> bool {
        true
    }
}
