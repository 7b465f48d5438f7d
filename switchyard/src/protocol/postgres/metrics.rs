//! The metric families of PostgreSQL transaction pools, per (pool, database, user).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use super::pooler::{TxPool, TxPools};
use crate::observe::families::{Labels, Metric, Read, family, load, load_usize, metric};

/// The transaction pools as they are at one scrape.
#[derive(Debug)]
pub struct TxPoolMetrics {
    pools: Vec<Arc<TxPool>>,
    pairs: usize,
}

impl TxPoolMetrics {
    /// A snapshot of `pools`.
    pub fn of(pools: &TxPools) -> Self {
        Self {
            pools: pools.snapshot(),
            pairs: pools.pairs(),
        }
    }
}

const TX_POOL_METRICS: &[Metric<TxPool>] = &[
    metric(
        "switchyard_pg_pool_clients",
        "Transaction-mode clients connected, per pool, database and user",
        Read::Gauge(|t| load_usize(&t.stats.clients)),
    ),
    metric(
        "switchyard_pg_pool_clients_waiting",
        "Transaction-mode clients waiting for a server connection",
        Read::Gauge(|t| t.waiting() as f64),
    ),
    metric(
        "switchyard_pg_pool_transactions",
        "Transactions run over shared server connections",
        Read::Counter(|t| load(&t.stats.transactions)),
    ),
    metric(
        "switchyard_pg_pool_queries",
        "Queries run over shared server connections (ReadyForQuery answers)",
        Read::Counter(|t| load(&t.stats.queries)),
    ),
    metric(
        "switchyard_pg_pool_leases",
        "Server connections handed to a client's transaction",
        Read::Counter(|t| load(&t.stats.leases)),
    ),
    metric(
        "switchyard_pg_pool_wait_seconds",
        "Time clients waited for a server connection, summed (divide by leases for the average)",
        Read::Gauge(|t| t.stats.wait_micros.load(Ordering::Relaxed) as f64 / 1e6),
    ),
    metric(
        "switchyard_pg_pool_queue_timeouts",
        "Clients refused (53300) after waiting timeouts.queue",
        Read::Counter(|t| load(&t.stats.queue_timeouts)),
    ),
    metric(
        "switchyard_pg_pool_routed_primary",
        "Transactions the read/write split sent to the primary",
        Read::Counter(|t| load(&t.stats.routed_primary)),
    ),
    metric(
        "switchyard_pg_pool_routed_replica",
        "Transactions the read/write split sent to a replica",
        Read::Counter(|t| load(&t.stats.routed_replica)),
    ),
];

impl Collector for TxPoolMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tx_pools: Vec<(Labels, &TxPool)> = self
            .pools
            .iter()
            .map(|t| {
                let labels = vec![
                    ("pool", t.pool.clone()),
                    ("database", t.database.clone()),
                    ("user", t.user.clone()),
                ];
                (labels, t.as_ref())
            })
            .collect();
        for metric in TX_POOL_METRICS {
            family(&mut encoder, metric, &tx_pools)?;
        }
        let mut connections = encoder.encode_descriptor(
            "switchyard_pg_pool_server_connections",
            "Shared server connections per server: active (in a transaction) or idle",
            None,
            ConstGauge::new(0.0f64).metric_type(),
        )?;
        for (labels, tx_pool) in &tx_pools {
            for server in tx_pool.servers() {
                for (state, count) in [("active", server.active), ("idle", server.idle)] {
                    let mut labels = labels.clone();
                    labels.push(("server", server.server.clone()));
                    labels.push(("state", state.to_string()));
                    ConstGauge::new(count as f64).encode(connections.encode_family(&labels)?)?;
                }
            }
        }
        let pairs = encoder.encode_descriptor(
            "switchyard_pg_pool_pairs",
            "(database, user) pairs with transaction-pool state kept, logged in or not yet",
            None,
            ConstGauge::new(0.0f64).metric_type(),
        )?;
        ConstGauge::new(self.pairs as f64).encode(pairs)?;
        Ok(())
    }
}
