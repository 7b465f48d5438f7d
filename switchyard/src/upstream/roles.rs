//! Which servers of a database pool a client may use: those of a role (as health checks
//! found it), replicas only within the pool's `max_replica_lag`.
//!
//! A plain value rather than a closure, so a client waiting for a pooled connection can
//! leave it in the pool's queue and whoever frees a connection can ask it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{ConnectError, Pool, Server, ServerRole, Upstream, connect_matching};
use crate::config::ListenerRole;

/// The servers a client of one role may be given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoleFilter {
    /// The role wanted; `None` takes any server.
    wanted: Option<ServerRole>,
    /// Replicas lagging more than this many seconds are refused; `None`: no limit.
    max_lag: Option<f64>,
}

impl RoleFilter {
    /// Servers of `pool` that serve `wanted` (any server for `None`).
    pub fn new(pool: &Pool, wanted: Option<ServerRole>) -> Self {
        Self::with_lag(pool.database.max_replica_lag, wanted)
    }

    fn with_lag(max_lag: Option<Duration>, wanted: Option<ServerRole>) -> Self {
        Self {
            wanted,
            max_lag: max_lag.map(|lag| lag.as_secs_f64()),
        }
    }

    /// Whether `server` serves the wanted role: its role matches and, for a replica, its
    /// lag is within the limit. Availability (health, drain, maint) is not looked at.
    pub fn admits(&self, server: &Server) -> bool {
        match self.wanted {
            None => true,
            Some(ServerRole::Replica) => {
                server.role() == ServerRole::Replica
                    && self.max_lag.is_none_or(|max| {
                        server.replica_lag().is_some_and(|lag| lag.seconds <= max)
                    })
            }
            Some(role) => server.role() == role,
        }
    }

    /// Whether `server` serves the wanted role and can take new work now.
    pub fn admits_available(&self, server: &Server) -> bool {
        server.is_available() && self.admits(server)
    }
}

/// The role a session of a listener of `role` must get now; `None` is any. A replica
/// listener falls back to the primary while no replica is up, when allowed.
pub fn wanted_role(pool: &Pool, role: ListenerRole, fallback: bool) -> Option<ServerRole> {
    match role {
        ListenerRole::Any => None,
        ListenerRole::Primary => Some(ServerRole::Primary),
        ListenerRole::Replica => {
            let replica = RoleFilter::new(pool, Some(ServerRole::Replica));
            let replica_up = pool.any_available(&|s: &Server| replica.admits(s));
            if replica_up || !fallback {
                Some(ServerRole::Replica)
            } else {
                Some(ServerRole::Primary)
            }
        }
    }
}

/// Connects to a server of `pool` that serves `wanted` (any server for `None`).
pub async fn connect_role(
    pool: &Arc<Pool>,
    client: SocketAddr,
    wanted: Option<ServerRole>,
) -> Result<Upstream, ConnectError> {
    let filter = RoleFilter::new(pool, wanted);
    connect_matching(pool, client, &|server: &Server| filter.admits(server)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{lag, two_server_pool as pool};

    #[test]
    fn roles_and_lag_decide_which_servers_are_admitted() {
        let pool = pool(r#"max_replica_lag = "10s""#);
        let (a, b) = (&pool.servers[0], &pool.servers[1]);
        let primary = RoleFilter::new(&pool, Some(ServerRole::Primary));
        let replica = RoleFilter::new(&pool, Some(ServerRole::Replica));
        let any = RoleFilter::new(&pool, None);
        assert!(!primary.admits(a), "role unknown");
        assert!(any.admits(a), "any admits unknown roles");
        a.record_role(ServerRole::Primary, None);
        b.record_role(ServerRole::Replica, lag(5.0));
        assert!(primary.admits(a));
        assert!(!primary.admits(b));
        assert!(replica.admits(b));
        b.record_role(ServerRole::Replica, lag(20.0));
        assert!(!replica.admits(b), "lagging");
        let unbounded = RoleFilter::with_lag(None, Some(ServerRole::Replica));
        assert!(unbounded.admits(b), "no limit");
    }

    #[test]
    fn a_replica_listener_falls_back_to_the_primary_only_when_allowed() {
        let pool = pool("");
        pool.servers[0].record_role(ServerRole::Primary, None);
        pool.servers[1].record_role(ServerRole::Primary, None);
        assert_eq!(
            wanted_role(&pool, ListenerRole::Replica, true),
            Some(ServerRole::Primary)
        );
        assert_eq!(
            wanted_role(&pool, ListenerRole::Replica, false),
            Some(ServerRole::Replica)
        );
        pool.servers[1].record_role(ServerRole::Replica, lag(0.0));
        assert_eq!(
            wanted_role(&pool, ListenerRole::Replica, true),
            Some(ServerRole::Replica)
        );
        assert_eq!(wanted_role(&pool, ListenerRole::Any, true), None);
    }
}
