//! Upstream side: pools, servers, balancing, and connecting.

mod address;
mod balance;
pub mod conn_pool;
mod connect;
mod pool;
mod roles;
mod server;

pub use address::ServerAddress;
pub use balance::Balancer;
pub use connect::{
    ConnectError, Upstream, connect, connect_matching, connect_server, record_connect_failure,
};
pub use pool::{Lease, LeaseError, Pool, PoolStats, Pooling, ServerFilter};
pub use roles::RoleFilter;
pub use server::{AdminState, ReplicaLag, Server, ServerRole, ServerStats};
