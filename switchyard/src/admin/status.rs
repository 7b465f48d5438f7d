//! JSON views of pools, servers and listeners for `/api/v1/*` (the dashboard's stats
//! included) and `ctl status`. Fields added after the first release default when absent,
//! so that `ctl` reads a proxy of an older build.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::runtime::Shared;
use crate::upstream::Server;

/// A server as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Name.
    pub name: String,
    /// Address as configured.
    pub address: String,
    /// `up`, `down`, `drain` or `maint` (operator states win over health).
    pub state: String,
    /// Health: `unchecked`, `up` or `down`.
    pub health: String,
    /// Operator state: `ready`, `drain` or `maint`.
    pub admin_state: String,
    /// Backup server.
    pub backup: bool,
    /// Weight, as configured.
    pub weight: u32,
    /// Weight the balancer uses now: below `weight` while the server ramps up after
    /// coming back (`slow_start`), so operators can see when it takes its full share.
    pub effective_weight: f64,
    /// Active sessions.
    pub active: usize,
    /// `max_connections`: the most sessions it takes at once; `None` is no limit.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Sessions ever.
    pub total: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Failed connects.
    pub connect_errors: u64,
    /// Health checks passed (active and passive).
    #[serde(default)]
    pub checks_passed: u64,
    /// Health checks failed (active and passive).
    #[serde(default)]
    pub checks_failed: u64,
    /// Last check result.
    pub check: Option<String>,
    /// How long the last active check took, in milliseconds: a check that slows down warns
    /// of a server about to fail it.
    #[serde(default)]
    pub check_duration_ms: Option<f64>,
    /// Seconds since health or the operator state last changed (or since the server was
    /// configured): tells a flapping server from one down for hours.
    #[serde(default)]
    pub state_age_seconds: f64,
    /// Role from the database check: `unknown`, `primary` or `replica`.
    #[serde(default)]
    pub role: String,
    /// A replica's lag (bytes and seconds behind its primary).
    #[serde(default)]
    pub replica_lag: Option<crate::upstream::ReplicaLag>,
}

/// A pool as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Name.
    pub name: String,
    /// Clients waiting for a slot.
    pub queued: usize,
    /// Clients that waited `timeouts.queue` without getting a slot.
    #[serde(default)]
    pub queue_timeouts: u64,
    /// Clients refused because the queue was full.
    #[serde(default)]
    pub queue_full: u64,
    /// Clients refused because no server was available.
    #[serde(default)]
    pub no_server: u64,
    /// Servers.
    pub servers: Vec<ServerStatus>,
    /// For a pool with `resolver`: the server sets answers route to now, each with the
    /// keys routed there lately (and their tenants) and its servers' state and sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<ResolvedSetStatus>,
    /// What the protocols of the pool's listeners add (PostgreSQL: `transaction_pools`,
    /// per database and user).
    #[serde(flatten)]
    pub protocol: serde_json::Map<String, serde_json::Value>,
}

/// A server set of a pool with `resolver`, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedSetStatus {
    /// Keys routed to these servers lately whose cached answer still names them (at most
    /// 16), most recent first.
    pub keys: Vec<ResolvedKey>,
    /// The servers, their state and sessions.
    pub servers: Vec<ServerStatus>,
}

/// A routing key and the tenant its answer names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedKey {
    /// The key looked up.
    pub key: String,
    /// The answer's `tenant`, if it names one (usage goes to the key otherwise).
    pub tenant: Option<String>,
}

/// A listener as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerStatus {
    /// Name.
    pub name: String,
    /// Bound address.
    pub address: String,
    /// Protocol.
    pub protocol: String,
    /// Active connections.
    pub active: usize,
    /// `max_connections`: the most connections it serves at once; `None` is no limit.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Connections accepted.
    pub total: u64,
    /// Connections closed before reaching a server (bad PROXY header, TLS handshake,
    /// no server, ...).
    #[serde(default)]
    pub failed: u64,
    /// Bytes from clients.
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes to clients.
    #[serde(default)]
    pub bytes_out: u64,
    /// Whether it terminates TLS.
    #[serde(default)]
    pub tls: bool,
}

fn name_of<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One server's status.
pub fn server(server: &Server) -> ServerStatus {
    let now = std::time::Instant::now();
    let admin_state = server.admin_state();
    let health = server.health();
    let state = match (admin_state, health) {
        (crate::upstream::AdminState::Ready, crate::upstream::Health::Down) => "down".to_string(),
        (crate::upstream::AdminState::Ready, _) => "up".to_string(),
        (other, _) => name_of(&other),
    };
    ServerStatus {
        name: server.name.clone(),
        address: server.address.to_string(),
        state,
        health: name_of(&health),
        admin_state: name_of(&admin_state),
        backup: server.backup(),
        weight: server.weight(),
        effective_weight: server.effective_weight(now),
        active: server.active(),
        max_connections: server.max_connections(),
        total: server.stats.total.load(Ordering::Relaxed),
        bytes_in: server.stats.bytes_in.get(),
        bytes_out: server.stats.bytes_out.get(),
        connect_errors: server.stats.connect_errors.load(Ordering::Relaxed),
        checks_passed: server.stats.checks_passed.load(Ordering::Relaxed),
        checks_failed: server.stats.checks_failed.load(Ordering::Relaxed),
        check: server.last_check(),
        check_duration_ms: server
            .last_check_duration()
            .map(|took| took.as_secs_f64() * 1000.0),
        state_age_seconds: now
            .saturating_duration_since(server.state_changed_at())
            .as_secs_f64(),
        role: name_of(&server.role()),
        replica_lag: server.replica_lag(),
    }
}

/// Every pool's status.
pub fn pools(shared: &Shared) -> Vec<PoolStatus> {
    shared
        .pools()
        .iter()
        .map(|pool| PoolStatus {
            name: pool.name.clone(),
            queued: pool.stats.queued.load(Ordering::Relaxed),
            queue_timeouts: pool.stats.queue_timeouts.load(Ordering::Relaxed),
            queue_full: pool.stats.queue_full.load(Ordering::Relaxed),
            no_server: pool.stats.no_server.load(Ordering::Relaxed),
            servers: pool.servers.iter().map(|s| server(s)).collect(),
            resolved: pool.resolver.as_ref().map_or_else(Vec::new, |resolver| {
                resolver
                    .in_use()
                    .into_iter()
                    .map(|set| ResolvedSetStatus {
                        keys: set
                            .keys
                            .into_iter()
                            .map(|(key, tenant)| ResolvedKey { key, tenant })
                            .collect(),
                        servers: set.pool.servers.iter().map(|s| server(s)).collect(),
                    })
                    .collect()
            }),
            protocol: shared
                .registry
                .frontends()
                .iter()
                .flat_map(|frontend| frontend.pool_status(&pool.name))
                .collect(),
        })
        .collect()
}

/// Every listener's status.
pub fn listeners(shared: &Shared) -> Vec<ListenerStatus> {
    shared
        .listeners()
        .iter()
        .map(|l| {
            let settings = l.settings();
            ListenerStatus {
                name: l.name.clone(),
                address: l.address.to_string(),
                protocol: l.protocol.as_str().to_string(),
                active: l.stats.active.load(Ordering::Relaxed),
                max_connections: settings.config.max_connections,
                total: l.stats.total.load(Ordering::Relaxed),
                failed: l.stats.failed.load(Ordering::Relaxed),
                bytes_in: l.stats.bytes_in.get(),
                bytes_out: l.stats.bytes_out.get(),
                tls: settings.tls.is_some(),
            }
        })
        .collect()
}
