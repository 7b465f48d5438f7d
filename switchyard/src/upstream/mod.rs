//! Upstream side: pools, servers, balancing, and connecting.

mod balance;
pub mod conn_pool;
mod connect;
mod pool;
mod resolved;
mod roles;
mod secure;
mod server;
mod tracker;
pub mod tx_metrics;
pub mod tx_pool;

pub use crate::address::ServerAddress;
pub use balance::Balancer;
pub use connect::{
    ConnectError, Stage, Upstream, connect, connect_matching, connect_server, following_reloads,
    lost_to_reload, record_failure,
};
pub use pool::{Lease, LeaseError, Pool, PoolStats, ServerFilter};
pub use resolved::{InUse, PoolResolver, Resolved};
pub use roles::{RoleFilter, connect_role, wanted_role};
pub use secure::{ServerStream, secure_upstream, server_host};
pub use server::{AdminState, ReplicaLag, Server, ServerRole, ServerStats};
pub use tracker::{Health, HealthTracker, Transition, on_transition};
