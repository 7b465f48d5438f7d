//! The keys of `mysql` listeners: role, client TLS (the in-protocol SSL upgrade), limits,
//! the greeting's version string, authentication and routes by database, user, SNI or
//! client certificate.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::database::{
    self, ClientTlsConfig, ClientTlsMode, DatabaseListener, ListenerRole, MessageLimits,
};
use super::listener_keys::{ListenerKeys, Surroundings};
use super::report::ErrorSink;

/// What only a `mysql` listener has.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MysqlListener {
    /// Which servers' role this entry point sends to.
    #[serde(default)]
    pub role: ListenerRole,
    /// With `role = "replica"`: use the primary while no replica is up.
    #[serde(default = "defaults::replica_fallback")]
    pub replica_fallback: bool,
    /// Longest packets the proxy reads whole (the handshake and authentication).
    #[serde(default)]
    pub limits: MessageLimits,
    /// Whether clients may or must use TLS; certificates come from `tls`.
    #[serde(default)]
    pub client_tls: Option<ClientTlsConfig>,
    /// The version string of the proxy's own greeting: clients read features from it, so
    /// it should be the backends'.
    #[serde(default = "defaults::server_version")]
    pub server_version: String,
    /// How clients authenticate.
    #[serde(default)]
    pub auth: MysqlAuth,
    /// Routing rules; first match wins, else the listener's `pool`.
    #[serde(default)]
    pub routes: Vec<MysqlRoute>,
}

impl Default for MysqlListener {
    fn default() -> Self {
        Self {
            role: ListenerRole::default(),
            replica_fallback: defaults::replica_fallback(),
            limits: MessageLimits::default(),
            client_tls: None,
            server_version: defaults::server_version(),
            auth: MysqlAuth::default(),
            routes: Vec::new(),
        }
    }
}

impl MysqlListener {
    /// The client TLS policy in effect, given whether the listener has certificates.
    pub fn client_tls_mode(&self, has_certificates: bool) -> ClientTlsMode {
        database::client_tls_mode(self.client_tls.as_ref(), has_certificates)
    }
}

/// How a mysql listener authenticates clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum MysqlAuth {
    /// The server authenticates the client: the proxy hands the client the server's
    /// scramble in an AuthSwitchRequest and relays the exchange.
    #[default]
    #[serde(rename = "passthrough")]
    Passthrough,
    /// `mysql_native_password` against `[[user]]` passwords; switchyard logs in to servers.
    #[serde(rename = "mysql_native_password")]
    MysqlNativePassword,
    /// `caching_sha2_password` against `[[user]]` passwords (the fast path, else full
    /// authentication over TLS or with switchyard's RSA key); switchyard logs in to servers.
    #[serde(rename = "caching_sha2_password")]
    CachingSha2Password,
}

/// A MySQL routing rule: when every given match key matches the login, use `pool`, with
/// the rewrites it names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlRoute {
    /// The pool this route sends to.
    pub pool: String,
    /// Database name (the HandshakeResponse41's, empty when none), exact or glob.
    #[serde(default)]
    pub database: Option<String>,
    /// User name, exact or glob.
    #[serde(default)]
    pub user: Option<String>,
    /// TLS SNI, exact or `*.suffix`.
    #[serde(default)]
    pub sni: Option<String>,
    /// Common name of the client's TLS certificate, exact or glob.
    #[serde(default)]
    pub client_cn: Option<String>,
    /// Connection attributes the login must carry, name → value (exact or glob), e.g.
    /// `{ program_name = "reporting" }`: the client tells what it is, as PostgreSQL's
    /// `application_name` does.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Database name sent to the server instead of the client's.
    #[serde(default)]
    pub rewrite_database: Option<String>,
    /// User name sent to the server instead of the client's.
    #[serde(default)]
    pub rewrite_user: Option<String>,
}

impl ListenerKeys for MysqlListener {
    fn route_pools(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.pool.as_str()).collect()
    }

    /// The database rules: role, client TLS, limits.
    fn validate(&self, around: &Surroundings<'_>, i: usize, sink: &mut ErrorSink<'_>) {
        let pools = database::listener_pools(around.pool, self.routes.iter().map(|r| &r.pool));
        let database = DatabaseListener {
            role: self.role,
            client_tls: self.client_tls.as_ref(),
            limits: &self.limits,
            tls: around.tls,
            pools: &pools,
        };
        database::validate_listener(around.pools, i, &database, sink);
        if self.auth != MysqlAuth::Passthrough
            && !around.users.iter().any(|user| user.password.is_some())
        {
            sink.at(
                &crate::key_path!("listener", i, "auth"),
                "proxy-side authentication needs `[[user]]` entries with a `password`",
            );
        }
        let pooling = pools
            .iter()
            .filter_map(|name| around.pools.iter().find(|p| p.name == *name))
            .find(|p| p.database.pool_mode == database::PoolMode::Transaction);
        if let Some(pooling) = pooling
            && self.auth == MysqlAuth::Passthrough
        {
            sink.at(
                &crate::key_path!("listener", i, "auth"),
                format!(
                    "pool `{}` pools transactions: switchyard logs in to its servers itself, so clients must authenticate to switchyard (`mysql_native_password` or `caching_sha2_password`, not `passthrough`)",
                    pooling.name
                ),
            );
        }
        for (r, route) in self.routes.iter().enumerate() {
            if route.attributes.keys().any(String::is_empty) {
                sink.at(
                    &crate::key_path!("listener", i, "routes", r, "attributes"),
                    "attribute names must not be empty",
                );
            }
        }
        if self.server_version.is_empty() || self.server_version.contains('\0') {
            sink.at(
                &crate::key_path!("listener", i, "server_version"),
                "must be a non-empty version string without NUL",
            );
        }
    }
}

/// Default values, named so the schema documentation and the code agree.
mod defaults {
    pub fn replica_fallback() -> bool {
        true
    }

    pub fn server_version() -> String {
        "8.0.36-switchyard".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{ListenerOptions, MysqlAuth, load_str};

    fn config(keys: &str) -> String {
        format!(
            "[[listener]]\nname = \"m\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"mysql\"\npool = \"p\"\n{keys}\n\n\
             [[pool]]\nname = \"p\"\nservers = [ {{ address = \"127.0.0.1:3306\" }} ]\n"
        )
    }

    #[test]
    fn mysql_listener_keys_and_their_rules() {
        let text = config(
            "server_version = \"10.11.6-MariaDB\"\n\
             [[listener.routes]]\ndatabase = \"db-*\"\nuser = \"app\"\npool = \"p\"\nrewrite_database = \"abc\"\n\
             attributes = { program_name = \"report*\", _client_name = \"libmariadb\" }\n",
        );
        let loaded = load_str(Path::new("t.toml"), &text).expect("valid");
        let ListenerOptions::Mysql(mysql) = &loaded.listeners[0].options else {
            panic!("mysql keys");
        };
        assert_eq!(mysql.server_version, "10.11.6-MariaDB");
        assert_eq!(mysql.auth, MysqlAuth::Passthrough);
        assert_eq!(mysql.routes[0].rewrite_database.as_deref(), Some("abc"));
        assert_eq!(
            mysql.routes[0].attributes["program_name"], "report*",
            "{:?}",
            mysql.routes[0].attributes
        );
        for (keys, said) in [
            (
                "auth = \"mysql_native_password\"",
                "`[[user]]` entries with a `password`",
            ),
            ("role = \"primary\"", "database health check"),
            ("client_tls = { mode = \"required\" }", "needs `tls`"),
            ("server_version = \"\"", "non-empty version string"),
            (
                "[[listener.routes]]\napplication_name = \"x\"\npool = \"p\"",
                "application_name",
            ),
            ("http = { max_header_bytes = 1 }", "http"),
            (
                "[[listener.routes]]\nattributes = { \"\" = \"x\" }\npool = \"p\"",
                "attribute names must not be empty",
            ),
        ] {
            let error = load_str(Path::new("t.toml"), &config(keys))
                .expect_err(keys)
                .to_string();
            assert!(error.contains(said), "{keys}: {error}");
        }
    }
}
