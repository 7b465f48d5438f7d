//! The PostgreSQL dialect of transaction pools (`upstream::tx_pool`): how switchyard logs
//! in on a new server connection (TLS per sslmode, then the startup and authentication as
//! the pool's user), and what a logged-in connection keeps — its cancel key, the
//! parameters the server reported, the statements prepared on it, the session settings
//! applied.

use std::sync::{Arc, Mutex};

use super::cancel::{CancelTarget, ServerKey};
use super::codec::{PROTOCOL_3_0, Startup};
use super::conversation::Tracked;
use super::frames::ServerFrameReader;
use super::login::{LoggedIn, LoginError, ServerCredential, login};
use super::tls::{secure_server, server_host};
use crate::config::MessageLimits;
use crate::upstream::tx_pool::{self, Dialect};
use crate::upstream::{Pool, Server, ServerStream, Stage, record_failure};

/// The PostgreSQL dialect.
#[derive(Debug)]
pub struct Postgres;

/// The transaction pools of every (pool, database, user).
pub type TxPools = tx_pool::TxPools<Postgres>;
/// Server connections for one (pool, database, user).
pub type TxPool = tx_pool::TxPool<Postgres>;
/// A logged-in PostgreSQL server connection of a transaction pool.
pub type ServerConn = tx_pool::ServerConn<Postgres>;
/// Why no server connection could be had.
pub type LeaseFailure = tx_pool::LeaseFailure<LoginError>;

/// The parameters a server reported at login, as the pool's new clients are told them:
/// their ParameterStatus messages are made once, at the login, and each client's login
/// copies them with its own startup values in place of the server's. A pooled login does
/// this for every client, and a client that connects per transaction for each one.
#[derive(Debug)]
pub struct Parameters {
    /// Each parameter's name, and where its message ends in `messages`.
    ends: Vec<(String, usize)>,
    /// The ParameterStatus messages, one after the other, as the server sent them.
    messages: Vec<u8>,
}

impl Parameters {
    /// The parameters `reported` at a login, in the order they came.
    pub fn new(reported: &[(String, String)]) -> Self {
        let mut messages = Vec::new();
        let ends = reported
            .iter()
            .map(|(name, value)| {
                super::auth::put_parameter_status(&mut messages, name, value);
                (name.clone(), messages.len())
            })
            .collect();
        Self { ends, messages }
    }

    /// Appends the ParameterStatus messages a client whose startup is `startup` is told:
    /// the server's, with the client's own value of each parameter its startup set.
    pub fn tell(&self, startup: &Startup, out: &mut Vec<u8>) {
        let mut copied = 0;
        let mut start = 0;
        for (name, end) in &self.ends {
            if let Some(own) = startup.param(name) {
                out.extend_from_slice(&self.messages[copied..start]);
                super::auth::put_parameter_status(out, name, own);
                copied = *end;
            }
            start = *end;
        }
        out.extend_from_slice(&self.messages[copied..]);
    }
}

/// What a PostgreSQL transaction pool keeps besides its connections.
#[derive(Debug, Default)]
pub struct PoolParameters {
    /// The parameters the server reported at the latest login: what a new client is
    /// told, so that its login waits for no server connection.
    latest: Mutex<Option<Arc<Parameters>>>,
}

impl PoolParameters {
    /// The parameters the server reported at the latest login, once one succeeded.
    pub fn get(&self) -> Option<Arc<Parameters>> {
        lock(&self.latest).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The PostgreSQL side of a pooled server connection.
#[derive(Debug)]
pub struct Link {
    /// The stream to the server.
    pub stream: ServerStream,
    /// Bytes read from the server not yet taken as messages.
    pub reader: ServerFrameReader,
    /// The server's cancel key for this connection and where cancel requests go; shared
    /// with the cancel key of the client holding it.
    pub cancel: Arc<ServerKey>,
    /// The parameters the server reported at login, as the pool's clients are told them
    /// (shared with the pool's latest, when this login is the latest).
    pub parameters: Arc<Parameters>,
    /// Its session state as the pooler tracks it: the statements prepared on it and the
    /// settings applied.
    pub tracked: Tracked,
}

impl Dialect for Postgres {
    type Link = Link;
    type Credential = ServerCredential;
    type LoginError = LoginError;
    const METRICS: &'static str = "pg";
    type Shared = PoolParameters;

    async fn login(
        tx_pool: &TxPool,
        pool: &Arc<Pool>,
        server: &Arc<Server>,
        (stream, peer): (tokio::net::TcpStream, std::net::SocketAddr),
        credential: ServerCredential,
        limits: &MessageLimits,
    ) -> Result<Link, LeaseFailure> {
        let host = server_host(server);
        let tls = pool.tls.as_deref();
        let mut stream = secure_server(tls, &host, stream, &[], false)
            .await
            .map_err(|e| {
                record_failure(pool, server, Stage::Tls, &e);
                LeaseFailure::Connect(e)
            })?;
        let mut startup = Startup {
            version: PROTOCOL_3_0,
            params: Vec::new(),
        };
        startup.set_param("user", &tx_pool.user);
        startup.set_param("database", &tx_pool.database);
        let logged_in: LoggedIn = login(&mut stream, &startup, &credential, limits)
            .await
            .map_err(tx_pool::LeaseFailure::Login)?;
        let parameters = Arc::new(Parameters::new(&logged_in.parameters));
        *lock(&tx_pool.shared.latest) = Some(parameters.clone());
        Ok(Link {
            stream,
            reader: ServerFrameReader::lasting(limits.message),
            cancel: Arc::new(ServerKey::new(
                CancelTarget {
                    server: peer,
                    connect_timeout: pool.timeouts.connect,
                    tls: pool.tls.clone(),
                    host,
                    preamble: Vec::new(),
                },
                logged_in.process_id,
                logged_in.secret_key,
            )),
            parameters,
            tracked: Tracked::new(pool.database.max_prepared_statements),
        })
    }

    fn socket(link: &mut Link) -> &mut tokio::net::TcpStream {
        match &mut link.stream {
            tokio_util::either::Either::Left(tcp) => tcp,
            tokio_util::either::Either::Right(tls) => tls.get_mut().0,
        }
    }

    fn clean(link: &Link) -> bool {
        !link.reader.has_partial()
    }

    fn set_limit(link: &mut Link, limit: usize) {
        link.reader.set_limit(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client is told at a pooled login is what the server told the pool's
    /// login, with the client's own startup values in place (first, middle and last).
    #[test]
    fn parameters_are_told_with_the_clients_own_values() {
        let pair = |name: &str, value: &str| (name.to_string(), value.to_string());
        let reported = [
            pair("application_name", "first"),
            pair("client_encoding", "UTF8"),
            pair("DateStyle", "ISO, MDY"),
            pair("TimeZone", "UTC"),
        ];
        let parameters = Parameters::new(&reported);
        let told = |params: &[(String, String)]| {
            let startup = Startup {
                version: PROTOCOL_3_0,
                params: params.to_vec(),
            };
            let mut out = Vec::new();
            parameters.tell(&startup, &mut out);
            out
        };
        let expected = |values: &[(String, String)]| {
            let mut out = Vec::new();
            super::super::auth::put_parameter_statuses(&mut out, values);
            out
        };
        assert_eq!(told(&[pair("user", "app")]), expected(&reported));
        let own = [
            pair("TimeZone", "Europe/Paris"),
            pair("user", "app"),
            pair("application_name", "pgbench"),
            pair("client_encoding", "LATIN1"),
        ];
        assert_eq!(
            told(&own),
            expected(&[
                pair("application_name", "pgbench"),
                pair("client_encoding", "LATIN1"),
                pair("DateStyle", "ISO, MDY"),
                pair("TimeZone", "Europe/Paris"),
            ])
        );
    }

    /// The keys `load_str` reports for a config with a postgres listener (`listener`
    /// keys) over a pool with `pool` keys, or none when it loads.
    fn errors(listener: &str, pool: &str) -> Vec<String> {
        let pool = format!("{pool}\nservers = [ {{ address = \"127.0.0.1:5432\" }} ]");
        keys(&crate::testing::postgres_config(
            listener,
            &pool,
            "[[user]]\nname = \"app\"\npassword = \"pw\"",
        ))
    }

    /// The keys of the errors loading `text` gives.
    fn keys(text: &str) -> Vec<String> {
        match crate::testing::load_config(text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| e.key.clone()).collect(),
        }
    }

    #[test]
    fn pooling_keys_are_checked() {
        assert!(
            errors(
                "",
                "pool_mode = \"transaction\"\npool_size = 5\nmin_idle = 2"
            )
            .is_empty()
        );
        assert_eq!(errors("", "pool_size = 0"), ["pool[0].pool_size"]);
        assert_eq!(
            errors("", "pool_size = 2\nmin_idle = 3"),
            ["pool[0].min_idle"]
        );
        assert_eq!(
            errors("", "max_prepared_statements = 0"),
            ["pool[0].max_prepared_statements"]
        );
        assert_eq!(
            errors("", "pool_mode = \"statement\""),
            ["pool[0].pool_mode"]
        );
        assert_eq!(
            errors("auth = \"passthrough\"", "pool_mode = \"transaction\""),
            ["listener[0].auth"],
            "switchyard must know the client to log in for it"
        );
    }

    #[test]
    fn transaction_pools_serve_postgres_listeners_only() {
        let text = r#"
[[listener]]
name = "tcp"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "pg"

[[pool]]
name = "pg"
pool_mode = "transaction"
servers = [ { address = "127.0.0.1:5432" } ]
"#;
        assert_eq!(keys(text), ["pool[0].pool_mode"]);
    }
}
