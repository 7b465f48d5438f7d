//! Which servers of a database pool a client may use: those of a role (as health checks
//! found it), replicas only within the pool's `max_replica_lag`.
//!
//! A plain value rather than a closure, so a client waiting for a pooled connection can
//! leave it in the pool's queue and whoever frees a connection can ask it.

use std::time::Duration;

use super::{Pool, Server, ServerRole};

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
}
