//! Live reload: re-read the config file, validate it fully, and apply the difference in place.
//!
//! Pools and servers are matched by name (servers also by address), listeners by name and
//! address. Whatever is unchanged keeps its object, so health, counters, operator states and
//! sessions carry over. Replaced and removed things are retired, not cut: established
//! connections hold their own `Arc`s of the pool, server and listener settings they started
//! with and run on until they end.

use std::collections::HashMap;
use std::fmt;
use std::net::TcpListener;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::load_file;
use super::{Shared, spawn_listener};
use crate::config::{Config, ConfigErrors, ListenerConfig, PoolConfig};
use crate::listener::Listener;
use crate::upstream::{AdminState, Pool};

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum ReloadError {
    /// The file is invalid.
    Invalid(ConfigErrors),
    /// The file is valid but could not be applied (a new listener cannot bind).
    Refused(Vec<String>),
}

impl ReloadError {
    /// Every problem, one line each (`FILE:LINE: key: message` for an invalid file).
    pub fn errors(&self) -> Vec<String> {
        match self {
            Self::Invalid(errors) => errors.0.iter().map(ToString::to_string).collect(),
            Self::Refused(errors) => errors.clone(),
        }
    }
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(errors) => write!(
                f,
                "the config file has {} error(s); configuration unchanged",
                errors.0.len()
            ),
            Self::Refused(_) => write!(
                f,
                "the new configuration cannot be applied; configuration unchanged"
            ),
        }
    }
}

impl std::error::Error for ReloadError {}

/// Names added, removed and changed by a reload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// New names.
    pub added: Vec<String>,
    /// Names that are gone (drained, not cut).
    pub removed: Vec<String>,
    /// Names whose settings changed.
    pub changed: Vec<String>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// What a reload changed: the answer of `POST /api/v1/reload` and `ctl reload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadSummary {
    /// Whether anything changed at all.
    pub changed: bool,
    /// Pools by name.
    pub pools: Changes,
    /// Servers as `pool/server`.
    pub servers: Changes,
    /// Listeners by name.
    pub listeners: Changes,
    /// Other settings applied live, e.g. `log.level`.
    pub settings: Vec<String>,
    /// Changes that were not applied and why (most need a restart).
    pub not_applied: Vec<String>,
}

/// Re-reads the config file the process was started with and applies the difference.
/// An invalid file, or one whose new listeners cannot bind, changes nothing. The outcome
/// is logged (every error at error level).
pub async fn reload(shared: &Arc<Shared>) -> Result<ReloadSummary, ReloadError> {
    let mut applied = shared.applied.lock().await;
    let result = load_file(&shared.config_path)
        .map_err(ReloadError::Invalid)
        .and_then(|config| {
            let summary = apply(shared, &applied, &config)?;
            *applied = config;
            Ok(summary)
        });
    match &result {
        Ok(summary) => {
            let summary_json = serde_json::to_string(summary).unwrap_or_default();
            tracing::info!(summary = %summary_json, "configuration reloaded");
            for note in &summary.not_applied {
                tracing::warn!("reload: {note}");
            }
        }
        Err(error) => {
            tracing::error!("reload refused: {error}");
            for line in error.errors() {
                tracing::error!("{line}");
            }
        }
    }
    result
}

fn apply(shared: &Arc<Shared>, old: &Config, new: &Config) -> Result<ReloadSummary, ReloadError> {
    let mut summary = ReloadSummary::default();
    let old_listeners: HashMap<&str, &ListenerConfig> =
        old.listeners.iter().map(|l| (l.name.as_str(), l)).collect();

    // Bind every new socket first: if one cannot bind, nothing has changed yet.
    let mut sockets: HashMap<&str, TcpListener> = HashMap::new();
    let mut bind_errors = Vec::new();
    for config in &new.listeners {
        let rebind = old_listeners
            .get(config.name.as_str())
            .is_none_or(|old| old.listen != config.listen);
        if rebind {
            match Listener::bind_socket(config) {
                Ok(socket) => {
                    sockets.insert(&config.name, socket);
                }
                Err(error) => bind_errors.push(error.to_string()),
            }
        }
    }
    if !bind_errors.is_empty() {
        return Err(ReloadError::Refused(bind_errors));
    }
    shared
        .registry
        .configure(new)
        .map_err(|e| ReloadError::Refused(vec![e]))?;

    let (resolvers, replaced_resolvers) =
        crate::resolve::build(&new.resolvers, Some(&shared.resolvers()))
            .map_err(|e| ReloadError::Refused(vec![e]))?;
    let pools = apply_pools(shared, old, new, &resolvers, &mut summary)?;
    shared.resolvers.store(Arc::new(resolvers));
    shared.start_resolvers();
    for resolver in &replaced_resolvers {
        resolver.stop();
    }
    // Usage is delivered at every reload too, without holding the reload up.
    let accounting = shared.context.accounting.clone();
    tokio::spawn(async move { accounting.flush().await });
    apply_listeners(
        shared,
        &old_listeners,
        new,
        &pools.by_name,
        sockets,
        &mut summary,
    );
    for pool in &pools.retired {
        pool.retire();
    }
    // Only now, with the new routing in place and the old pools retired, do removed servers
    // stop taking work: a request still routed to an old pool that finds none of its
    // servers left then sees the pool retired and follows the new routing (draining them
    // earlier answered such requests 503).
    for server in &pools.removed_servers {
        server.set_admin_state(AdminState::Drain);
    }
    // Checks restart for new and rebuilt pools only; a kept server keeps its health.
    for pool in &pools.fresh {
        shared.spawn_checks(pool);
    }
    apply_settings(old, new, &mut summary);
    summary.changed = !(summary.pools.is_empty()
        && summary.servers.is_empty()
        && summary.listeners.is_empty()
        && summary.settings.is_empty());
    Ok(summary)
}

/// Whether `pool` asks the resolver that `resolvers` has under its resolver's name (a
/// pool whose resolver was rebuilt is rebuilt too, even if its own keys did not change).
fn same_resolver(pool: &Pool, resolvers: &crate::resolve::Resolvers) -> bool {
    match &pool.resolver {
        None => true,
        Some(own) => resolvers
            .get(&own.resolver.name)
            .is_some_and(|r| Arc::ptr_eq(r, &own.resolver)),
    }
}

/// The outcome of swapping in the new pool set.
struct PoolSwap {
    /// Every pool in service now.
    by_name: HashMap<String, Arc<Pool>>,
    /// Pools added or rebuilt: their health checks must start.
    fresh: Vec<Arc<Pool>>,
    /// Old pools replaced or removed: to be retired once nothing new can reach them.
    retired: Vec<Arc<Pool>>,
    /// Servers left out of the new pools: drained once the old pools are retired.
    removed_servers: Vec<Arc<crate::upstream::Server>>,
}

/// Builds the new pool set and swaps it in. Unchanged pools are kept as they are; changed
/// pools are rebuilt around the servers they keep.
fn apply_pools(
    shared: &Shared,
    old: &Config,
    new: &Config,
    resolvers: &crate::resolve::Resolvers,
    summary: &mut ReloadSummary,
) -> Result<PoolSwap, ReloadError> {
    let current = shared.pools();
    let old_configs: HashMap<&str, &PoolConfig> =
        old.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut list = Vec::new();
    let mut fresh = Vec::new();
    let mut retired = Vec::new();
    for config in &new.pools {
        let previous = current.iter().find(|p| p.name == config.name);
        let old_config = old_configs.get(config.name.as_str());
        let pool = match (previous, old_config) {
            (Some(previous), Some(old_config))
                if *old_config == config && same_resolver(previous, resolvers) =>
            {
                list.push(previous.clone());
                continue;
            }
            (Some(previous), Some(old_config)) => {
                summary.pools.changed.push(config.name.clone());
                diff_servers(old_config, config, &mut summary.servers);
                retired.push(previous.clone());
                Pool::rebuild(config, Some(previous))
            }
            _ => {
                summary.pools.added.push(config.name.clone());
                for server in &config.servers {
                    summary.servers.added.push(format!(
                        "{}/{}",
                        config.name,
                        server.display_name()
                    ));
                }
                Pool::new(config)
            }
        };
        // Validation has checked every server address and resolver name, which is all
        // that can fail here.
        let pool = pool
            .and_then(|pool| pool.with_resolver(config, resolvers))
            .map_err(|e| ReloadError::Refused(vec![e]))?;
        let pool = Arc::new(pool);
        fresh.push(pool.clone());
        list.push(pool);
    }
    for previous in current.iter() {
        if new.pools.iter().all(|p| p.name != previous.name) {
            summary.pools.removed.push(previous.name.clone());
            for server in &previous.servers {
                summary
                    .servers
                    .removed
                    .push(format!("{}/{}", previous.name, server.name));
            }
            retired.push(previous.clone());
        }
    }
    // A server left out of the new pools takes no new work, not even from clients still
    // queued in a retired pool; its sessions finish on their own.
    let mut removed_servers = Vec::new();
    for old_pool in &retired {
        for server in &old_pool.servers {
            let kept = list
                .iter()
                .any(|p| p.servers.iter().any(|s| Arc::ptr_eq(s, server)));
            if !kept {
                removed_servers.push(server.clone());
            }
        }
    }
    let by_name = list.iter().map(|p| (p.name.clone(), p.clone())).collect();
    shared.pools.store(Arc::new(list));
    Ok(PoolSwap {
        by_name,
        fresh,
        retired,
        removed_servers,
    })
}

fn diff_servers(old: &PoolConfig, new: &PoolConfig, servers: &mut Changes) {
    let label = |name: &str| format!("{}/{name}", new.name);
    for server in &new.servers {
        match old
            .servers
            .iter()
            .find(|s| s.display_name() == server.display_name())
        {
            None => servers.added.push(label(server.display_name())),
            Some(before) if before != server => servers.changed.push(label(server.display_name())),
            Some(_) => {}
        }
    }
    for server in &old.servers {
        if new
            .servers
            .iter()
            .all(|s| s.display_name() != server.display_name())
        {
            servers.removed.push(label(server.display_name()));
        }
    }
}

/// Adds, updates and closes listeners; every kept listener takes its (possibly rebuilt)
/// pools for new connections.
fn apply_listeners(
    shared: &Arc<Shared>,
    old_configs: &HashMap<&str, &ListenerConfig>,
    new: &Config,
    pools: &HashMap<String, Arc<Pool>>,
    mut sockets: HashMap<&str, TcpListener>,
    summary: &mut ReloadSummary,
) {
    let current = shared.listeners();
    let mut list = Vec::new();
    let mut started = Vec::new();
    for config in &new.listeners {
        let handler = || match shared.registry.handler(config, pools) {
            Ok(handler) => Some(handler),
            Err(error) => {
                // Validation guarantees the pools exist.
                tracing::error!(listener = %config.name, %error, "cannot build the listener");
                None
            }
        };
        let previous = current.iter().find(|l| l.name == config.name);
        let old_config = old_configs.get(config.name.as_str());
        if let Some(socket) = sockets.remove(config.name.as_str()) {
            let Some(handler) = handler() else { continue };
            match Listener::with_socket(config, handler, socket) {
                Ok(listener) => {
                    let listener = Arc::new(listener);
                    if previous.is_some() {
                        summary.listeners.changed.push(config.name.clone());
                    } else {
                        summary.listeners.added.push(config.name.clone());
                    }
                    started.push(listener.clone());
                    list.push(listener);
                }
                Err(error) => {
                    tracing::error!(listener = %config.name, %error, "cannot start listener");
                }
            }
            continue;
        }
        let (Some(listener), Some(old_config)) = (previous, old_config) else {
            continue;
        };
        if *old_config != config {
            summary.listeners.changed.push(config.name.clone());
            for (what, differs) in [
                ("protocol", old_config.protocol != config.protocol),
                ("backlog", old_config.backlog != config.backlog),
                ("workers", old_config.workers != config.workers),
            ] {
                if differs {
                    summary.not_applied.push(format!(
                        "listener `{}`: a new {what} needs a restart (or a new listen address)",
                        config.name
                    ));
                }
            }
        }
        // A listener keeps its protocol until a restart (or a new address).
        if old_config.protocol == config.protocol
            && let Some(handler) = handler()
        {
            listener.update(config, handler);
        }
        list.push(listener.clone());
    }
    for previous in current.iter() {
        if !list.iter().any(|l| Arc::ptr_eq(l, previous)) {
            if new.listeners.iter().all(|l| l.name != previous.name) {
                summary.listeners.removed.push(previous.name.clone());
            }
            previous.close();
        }
    }
    shared.listeners.store(Arc::new(list));
    for listener in &started {
        spawn_listener(shared, listener);
    }
}

/// Settings outside pools and listeners: the log level and shutdown timeout apply live,
/// the rest waits for a restart.
fn apply_settings(old: &Config, new: &Config, summary: &mut ReloadSummary) {
    if old.log.level != new.log.level {
        match crate::observe::set_log_level(&new.log.level) {
            Ok(()) => summary.settings.push("log.level".into()),
            Err(why) => summary.not_applied.push(format!("log.level: {why}")),
        }
    }
    if old.shutdown_timeout != new.shutdown_timeout {
        summary.settings.push("shutdown_timeout".into());
    }
    if old.users != new.users {
        summary.settings.push("user".into());
    }
    let restart_only = [
        ("workers", old.workers != new.workers),
        ("admin", old.admin != new.admin),
        ("log.access", old.log.access != new.log.access),
        ("log.format", old.log.format != new.log.format),
        ("upgrade_socket", old.upgrade_socket != new.upgrade_socket),
    ];
    for (what, differs) in restart_only {
        if differs {
            summary
                .not_applied
                .push(format!("{what}: a change needs a restart"));
        }
    }
}
