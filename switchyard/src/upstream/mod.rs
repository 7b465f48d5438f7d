//! Upstream side: pools, servers, balancing, and connecting.

mod address;
mod balance;
mod connect;
mod pool;
mod server;

pub use address::ServerAddress;
pub use balance::Balancer;
pub use connect::{
    ConnectError, Upstream, connect, connect_matching, connect_server, record_connect_failure,
};
pub use pool::{Lease, LeaseError, Pool, PoolStats, Pooling, ServerFilter};
pub use server::{AdminState, ReplicaLag, Server, ServerRole, ServerStats};
