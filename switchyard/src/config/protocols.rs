//! The protocols the config knows, each named once: which type holds the keys of its
//! listeners, and which pool keys only its listeners read. Adding a protocol's keys is a
//! module of its own (like `http.rs`) and a line here.

use serde::Deserialize;
use toml_edit::Item;

use super::database::DatabasePool;
use super::http::{HttpListener, HttpPool};
use super::keys;
use super::listener_keys::ListenerKeys;
use super::mysql::MysqlListener;
use super::pool::PoolConfig;
use super::postgres::PostgresListener;
use super::report::{ErrorSink, section};
use super::smtp::{SmtpListener, SmtpPool};
use super::tcp::TcpListener;

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

macro_rules! listener_protocols {
    ($($variant:ident => $options:ty),* $(,)?) => {
        /// The keys only one protocol's listeners have.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ListenerOptions {
            $(
                /// The keys of this protocol's listeners.
                $variant($options),
            )*
        }

        impl ListenerOptions {
            /// The keys `protocol`'s listeners have, or `None` when it has no listeners in
            /// this build.
            pub(super) fn keys(protocol: Protocol) -> Option<&'static [&'static str]> {
                match protocol {
                    $(Protocol::$variant => Some(keys::of::<$options>()),)*
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }

            /// Reads the keys of `protocol`'s listeners from a listener's table; `None`
            /// when they do not parse (reported) or the protocol has no listeners.
            pub(super) fn read(
                protocol: Protocol,
                item: &Item,
                at: &[&str],
                sink: &mut ErrorSink<'_>,
            ) -> Option<Self> {
                match protocol {
                    $(Protocol::$variant => section::<$options>(item, at, sink).map(Self::$variant),)*
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }

            /// The rules' view of the keys.
            pub fn keys_of_protocol(&self) -> &dyn ListenerKeys {
                match self {
                    $(Self::$variant(options) => options,)*
                }
            }
        }
    };
}

listener_protocols! {
    Tcp => TcpListener,
    Http => HttpListener,
    Postgres => PostgresListener,
    Mysql => MysqlListener,
    Smtp => SmtpListener,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self::Tcp(TcpListener::default())
    }
}

/// Pool keys that only some protocols' listeners read: `(protocols, keys, who)`. Such a
/// key written on a pool whose listeners are all of other protocols would do nothing.
pub fn pool_groups() -> [(&'static [Protocol], &'static [&'static str], &'static str); 3] {
    [
        (&[Protocol::Http], keys::of::<HttpPool>(), "http listeners"),
        (
            &[Protocol::Postgres, Protocol::Mysql],
            keys::of::<DatabasePool>(),
            "database listeners",
        ),
        (&[Protocol::Smtp], keys::of::<SmtpPool>(), "smtp listeners"),
    ]
}

/// Keys of a pool's `upstream_tls` that only some protocols' listeners read:
/// `(protocols, key, who)`, as [`pool_groups`] for the pool's own keys. SMTP's `starttls`
/// on a pool of other listeners would do nothing (they speak TLS from the first byte, or
/// upgrade in their own protocol).
pub fn upstream_tls_groups() -> [(&'static [Protocol], &'static str, &'static str); 1] {
    [(&[Protocol::Smtp], "starttls", "smtp listeners")]
}

/// Reads the pool keys of every protocol group from a pool's table.
pub(super) fn read_pool_groups(
    pool: &mut PoolConfig,
    item: &Item,
    at: &[&str],
    sink: &mut ErrorSink<'_>,
) -> Option<()> {
    pool.http = section::<HttpPool>(item, at, sink)?;
    pool.database = section::<DatabasePool>(item, at, sink)?;
    pool.smtp = section::<SmtpPool>(item, at, sink)?;
    Some(())
}
