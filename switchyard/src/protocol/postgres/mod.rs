//! `protocol = "postgres"`: the PostgreSQL wire protocol (v3.0 and v3.2).
//!
//! The proxy owns the startup: it answers SSLRequest/GSSENCRequest, routes on the
//! StartupMessage (database, user, application_name), picks a server of the listener's
//! role, relays authentication or authenticates the client itself and logs in to the server
//! (`auth`, `login`), issues its own cancel keys, and reports failures as PostgreSQL errors
//! with a SQLSTATE. In session mode a client is bound to one server connection for its
//! life; in transaction mode (`pooler`, `transaction`) clients share server connections
//! one transaction at a time.

pub mod auth;
pub mod auth_cache;
pub mod cancel;
mod check;
pub mod classify;
pub mod codec;
pub(crate) mod conversation;
pub mod errors;
pub mod frames;
pub mod login;
pub mod pooler;
pub mod quiet;
pub mod scanner;
pub mod session;
pub mod settings;
pub mod split;
pub mod startup;
pub mod statements;
pub mod tls;
pub mod transaction;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

pub use cancel::CancelTable;
pub use pooler::TxPools;

use super::{Context, Frontend, Pools};
use crate::config::{
    CheckKind, Config, DatabasePool, ListenerConfig, ListenerOptions, PoolMode, PostgresListener,
    PostgresRoute, Protocol,
};
use crate::health::Check;
use crate::listener::{Accepted, Handler, Serving};
use crate::route::{Matcher, Rewrites, RouteRule, Routing};
use crate::upstream::Pool;
use crate::upstream::tx_metrics::TxPoolMetrics;
use split::SplitConfig;

/// The `postgres` front end.
#[derive(Debug)]
pub struct Postgres {
    state: Arc<PostgresState>,
}

/// What every postgres listener shares across the process.
#[derive(Debug)]
pub struct PostgresState {
    /// Shutdown tokens and the access log.
    pub context: Arc<Context>,
    /// Cancel keys issued to every session.
    pub cancel: Arc<CancelTable>,
    /// `[[user]]` and `auth_query` lookups of listeners that authenticate clients.
    pub users: ArcSwap<auth::Users>,
    /// Server connections shared by transaction-mode clients.
    pub tx_pools: Arc<TxPools>,
    /// Each pool's split settings with the keys they came from: kept across reloads that
    /// do not change them, since their classifier caches results.
    splits: Mutex<HashMap<String, (DatabasePool, Arc<SplitConfig>)>>,
}

impl Postgres {
    /// The front end of every `postgres` listener.
    pub fn new(context: &Arc<Context>) -> Self {
        Self {
            state: Arc::new(PostgresState {
                context: context.clone(),
                cancel: Arc::default(),
                users: ArcSwap::default(),
                tx_pools: Arc::default(),
                splits: Mutex::default(),
            }),
        }
    }
}

impl PostgresState {
    /// The split settings of `pool` as last configured.
    fn split_of(&self, pool: &Pool) -> Arc<SplitConfig> {
        let splits = self.splits.lock().unwrap_or_else(|e| e.into_inner());
        match splits.get(&pool.name) {
            Some((keys, split)) if *keys == pool.database => split.clone(),
            _ => Arc::new(SplitConfig::for_pool(&pool.database)),
        }
    }
}

impl Frontend for Postgres {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }

    fn handler(
        &self,
        listener: &ListenerConfig,
        pools: &Pools,
    ) -> Result<Arc<dyn Handler>, String> {
        let ListenerOptions::Postgres(options) = &listener.options else {
            return Err(format!(
                "listener `{}` is not a postgres listener",
                listener.name
            ));
        };
        let state = &self.state;
        let routing = Routing::build(
            listener.pool.as_deref(),
            &options.routes,
            pools,
            |route, pool| {
                let on_pool = state.split_of(pool);
                RouteExtra {
                    rewrites: Rewrites {
                        database: route.rewrite_database.clone(),
                        user: route.rewrite_user.clone(),
                    },
                    split: if route.overrides_split() {
                        Arc::new(on_pool.with_route(route))
                    } else {
                        on_pool
                    },
                }
            },
        )?;
        let default_split = routing.default.as_ref().map(|pool| state.split_of(pool));
        Ok(Arc::new(PostgresHandler {
            state: state.clone(),
            options: options.clone(),
            routing,
            default_split,
        }))
    }

    fn configure(&self, config: &Config) -> Result<(), String> {
        let users = auth::Users::from_config(config)?;
        self.state.users.store(Arc::new(users));
        let mut splits = self.state.splits.lock().unwrap_or_else(|e| e.into_inner());
        let kept: HashMap<String, (DatabasePool, Arc<SplitConfig>)> = config
            .pools
            .iter()
            .map(|pool| {
                let split = match splits.get(&pool.name) {
                    Some((keys, split)) if *keys == pool.database => split.clone(),
                    _ => Arc::new(SplitConfig::for_pool(&pool.database)),
                };
                (pool.name.clone(), (pool.database.clone(), split))
            })
            .collect();
        *splits = kept;
        Ok(())
    }

    fn pool_status(&self, pool: &str) -> serde_json::Map<String, serde_json::Value> {
        self.state.tx_pools.pool_status(pool)
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(TxPoolMetrics::of(&self.state.tx_pools)));
    }

    fn checks(&self) -> Vec<(CheckKind, Arc<dyn Check>)> {
        vec![(CheckKind::Postgres, Arc::new(check::PostgresCheck))]
    }
}

impl RouteRule for PostgresRoute {
    fn pool(&self) -> &str {
        &self.pool
    }

    fn matcher(&self) -> Matcher {
        Matcher {
            database: self.database.clone(),
            user: self.user.clone(),
            application_name: self.application_name.clone(),
            sni: self.sni.clone(),
            client_cn: self.client_cn.clone(),
            ..Matcher::default()
        }
    }
}

/// What a route does to the sessions it takes.
#[derive(Debug)]
pub struct RouteExtra {
    /// Database and user names sent to the server instead of the client's.
    pub rewrites: Rewrites,
    /// The read/write split settings in force.
    pub split: Arc<SplitConfig>,
}

/// What a `postgres` listener's connections share.
#[derive(Debug)]
pub struct PostgresHandler {
    /// What every postgres listener shares.
    pub state: Arc<PostgresState>,
    /// The listener's keys (role, client TLS, limits, auth).
    pub options: PostgresListener,
    /// Routes with their rewrites and split settings.
    pub routing: Routing<RouteExtra>,
    /// The split settings of the default pool.
    pub default_split: Option<Arc<SplitConfig>>,
}

impl Handler for PostgresHandler {
    fn serve(self: Arc<Self>, connection: Accepted) -> Serving {
        Box::pin(session::serve(self, connection))
    }

    /// A transaction pool's client leaves its task when it dozes (`session`), and what it
    /// keeps is made in the lasting heap where it is made; a session-mode client keeps its
    /// task for its life.
    fn lasting_tasks(&self) -> bool {
        !self
            .routing
            .pools()
            .any(|pool| pool.database.pool_mode == PoolMode::Transaction)
    }

    /// PostgreSQL's own words; libpq shows them also as the answer to its SSLRequest.
    fn at_capacity(&self, _tls: bool) -> Vec<u8> {
        errors::fatal(
            errors::sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        )
    }
}
