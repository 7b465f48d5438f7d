//! The MySQL/MariaDB client/server protocol: packets, the handshake, authentication, the
//! proxy's own errors, and switchyard logging in to a server as a client.
//!
//! The codecs are hand-written rather than taken from a driver crate because the proxy
//! must control the packets byte by byte: it answers the handshake itself (its own
//! HandshakeV10, the in-protocol SSL upgrade), rewrites the client's HandshakeResponse41
//! (database, user, capabilities), relays everything else untouched, enforces its own size
//! limits before buffering, and must turn every malformed packet into an ERR packet rather
//! than a panic. Parsers are pure functions over byte slices, one message per module, so
//! fuzz targets can drive them; crypto comes from well-kept crates (`sha1`, `sha2`,
//! `ed25519-dalek`, `rsa`).
//!
//! The listener front end ([`session`]) owns the handshake: its own greeting, the client's
//! SSL upgrade, routing on the HandshakeResponse41, then the server's authentication
//! relayed ([`passthrough`]) and the session's bytes copied unparsed. The `mysql` health
//! check uses [`login`] and [`query`].

pub mod auth;
pub mod auth_switch;
pub mod check;
pub mod classify;
pub mod eof;
pub mod err;
pub mod errors;
pub mod flags;
pub mod handshake;
pub mod kill;
pub mod lenenc;
pub mod local_result;
pub mod login;
pub mod ok;
pub mod packet;
pub mod passthrough;
pub mod pooler;
pub mod proxy_auth;
pub mod query;
pub mod reply;
pub mod response;
pub mod session;
pub mod session_state;
pub mod split;
#[cfg(test)]
mod testdata;
pub mod transaction;

pub use packet::{CodecError, Packet, PacketReader};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arc_swap::ArcSwap;

use super::{Context, Frontend, Pools};
use crate::config::{
    CheckKind, Config, ListenerConfig, ListenerOptions, MysqlListener, MysqlRoute, Protocol,
};
use crate::health::Check;
use crate::listener::{Accepted, Handler, Serving};
use crate::route::{Matcher, Rewrites, RouteRule, Routing};
use crate::upstream::tx_metrics::TxPoolMetrics;

/// The `mysql` front end.
#[derive(Debug)]
pub struct Mysql {
    state: Arc<MysqlState>,
}

/// What every mysql listener shares across the process.
#[derive(Debug)]
pub struct MysqlState {
    /// Shutdown tokens and the access log.
    pub context: Arc<Context>,
    /// The last connection id given to a client in the proxy's greeting.
    last_connection_id: AtomicU32,
    /// Proxy connection ids of live sessions, for `KILL`.
    pub kills: Arc<kill::KillTable>,
    /// `[[user]]`, for listeners that authenticate clients themselves.
    pub users: ArcSwap<proxy_auth::MysqlUsers>,
    /// The RSA key of `caching_sha2_password` full authentication over plaintext.
    pub rsa: proxy_auth::ServerRsaKey,
    /// Server connections shared by the clients of transaction pools.
    pub tx_pools: Arc<pooler::TxPools>,
}

impl MysqlState {
    /// A connection id for the next client's greeting (never 0, which clients read as
    /// "none").
    pub fn next_connection_id(&self) -> u32 {
        loop {
            let id = self
                .last_connection_id
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if id != 0 {
                return id;
            }
        }
    }
}

impl Mysql {
    /// The front end of every `mysql` listener.
    pub fn new(context: &Arc<Context>) -> Self {
        Self {
            state: Arc::new(MysqlState {
                context: context.clone(),
                last_connection_id: AtomicU32::new(0),
                kills: Arc::default(),
                users: ArcSwap::default(),
                rsa: proxy_auth::ServerRsaKey::default(),
                tx_pools: Arc::default(),
            }),
        }
    }
}

impl Frontend for Mysql {
    fn protocol(&self) -> Protocol {
        Protocol::Mysql
    }

    fn handler(
        &self,
        listener: &ListenerConfig,
        pools: &Pools,
    ) -> Result<Arc<dyn Handler>, String> {
        let ListenerOptions::Mysql(options) = &listener.options else {
            return Err(format!(
                "listener `{}` is not a mysql listener",
                listener.name
            ));
        };
        let routing = Routing::build(
            listener.pool.as_deref(),
            &options.routes,
            pools,
            |route, _| Rewrites {
                database: route.rewrite_database.clone(),
                user: route.rewrite_user.clone(),
            },
        )?;
        Ok(Arc::new(MysqlHandler {
            state: self.state.clone(),
            options: options.clone(),
            routing,
        }))
    }

    fn configure(&self, config: &Config) -> Result<(), String> {
        let users = proxy_auth::MysqlUsers::from_config(config)?;
        self.state.users.store(Arc::new(users));
        Ok(())
    }

    fn pool_status(&self, pool: &str) -> serde_json::Map<String, serde_json::Value> {
        self.state.tx_pools.pool_status(pool)
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(TxPoolMetrics::of(&self.state.tx_pools)));
    }

    fn checks(&self) -> Vec<(CheckKind, Arc<dyn Check>)> {
        vec![(CheckKind::Mysql, Arc::new(check::MysqlHealthCheck))]
    }
}

impl RouteRule for MysqlRoute {
    fn pool(&self) -> &str {
        &self.pool
    }

    fn matcher(&self) -> Matcher {
        Matcher {
            database: self.database.clone(),
            user: self.user.clone(),
            sni: self.sni.clone(),
            client_cn: self.client_cn.clone(),
            attributes: self.attributes.clone(),
            ..Matcher::default()
        }
    }
}

/// What a `mysql` listener's connections share.
#[derive(Debug)]
pub struct MysqlHandler {
    /// What every mysql listener shares.
    pub state: Arc<MysqlState>,
    /// The listener's keys (role, client TLS, limits, version string).
    pub options: MysqlListener,
    /// Routes with their rewrites.
    pub routing: Routing<Rewrites>,
}

impl Handler for MysqlHandler {
    fn serve(self: Arc<Self>, connection: Accepted) -> Serving {
        Box::pin(session::serve(self, connection))
    }

    /// ER_CON_COUNT_ERROR in place of the greeting, as a full MySQL server sends it (TLS
    /// starts after the greeting).
    fn at_capacity(&self, _tls: bool) -> Vec<u8> {
        errors::ProxyError::TooManyConnections.packet(0)
    }
}
