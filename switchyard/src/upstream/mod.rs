//! Upstream side: pools, servers, balancing, and connecting.

mod balance;
pub mod conn_pool;
mod connect;
mod pool;
mod roles;
mod server;

pub use crate::address::ServerAddress;
pub use balance::Balancer;
pub use connect::{
    ConnectError, Upstream, connect, connect_matching, connect_server, record_connect_failure,
};
pub use pool::{Lease, LeaseError, Pool, PoolStats, ServerFilter};
pub use roles::RoleFilter;
pub use server::{AdminState, ReplicaLag, Server, ServerRole, ServerStats};
