//! Configuration: the TOML schema, loading with precise error reports, and validation.
//!
//! `schema` holds what every listener has, `pool` what every pool and health check has;
//! `tcp`, `http`, `postgres`, `mysql`, `smtp` and `database` (what the database protocols
//! share) hold what only their protocol has, with the rules it must follow. A key the
//! protocol does not read is an error with its line (see `keys`). This module depends on
//! nothing of the proxy above it, and its own modules import only those below them:
//! `report` (the errors) at the bottom, `schema` (the whole file) above every part of it,
//! `validate` and `load` on top.

pub mod accounting;
pub mod database;
pub mod duration;
pub mod http;
mod keys;
mod listener_keys;
pub mod load;
pub mod mysql;
mod pool;
pub mod postgres;
mod protocols;
pub mod report;
pub mod resolver;
mod schema;
pub mod smtp;
pub mod tcp;
mod validate;

pub use accounting::{AccountingConfig, SinkConfig, SinkKind};
pub use database::{
    AuthQueryConfig, ClientTlsConfig, ClientTlsMode, DatabaseCheck, DatabasePool, ListenerRole,
    MessageLimits, MysqlCheck, OnRoleChange, PoolMode, UserConfig,
};
pub use http::{
    HeaderRules, HttpCheck, HttpListener, HttpOptions, HttpPool, HttpRoute, HttpVersion,
    StatusRange, UpstreamKeepAlive,
};
pub use listener_keys::ListenerKeys;
pub use load::{ResourceCheck, default_path, load_file, load_file_with, load_str, load_str_with};
pub use mysql::{MysqlAuth, MysqlListener, MysqlRoute};
pub use pool::*;
pub use postgres::{PostgresAuth, PostgresListener, PostgresRoute};
pub use protocols::{ListenerOptions, Protocol};
pub use report::{ConfigError, ConfigErrors};
pub use resolver::{CacheConfig, KeyFact, KeyTemplate, ResolverConfig, ResolverKind};
pub use schema::*;
pub use smtp::{SmtpListener, SmtpOptions, SmtpPool, SmtpRoute, StartTls};
pub use tcp::{TcpListener, TcpRoute};
