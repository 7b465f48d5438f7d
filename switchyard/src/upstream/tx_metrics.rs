//! The metric families of transaction pools, per (pool, database, user):
//! `switchyard_pg_pool_*` for PostgreSQL, `switchyard_mysql_pool_*` for MySQL (the
//! dialect's [`Dialect::METRICS`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use super::tx_pool::{Dialect, TxPool, TxPools};
use crate::observe::families::{Labels, Metric, Read, family_as, load, load_usize, metric};

/// The transaction pools as they are at one scrape.
#[derive(Debug)]
pub struct TxPoolMetrics<D: Dialect> {
    pools: Vec<Arc<TxPool<D>>>,
    pairs: usize,
}

impl<D: Dialect> TxPoolMetrics<D> {
    /// A snapshot of `pools`.
    pub fn of(pools: &TxPools<D>) -> Self {
        Self {
            pools: pools.snapshot(),
            pairs: pools.pairs(),
        }
    }
}

/// The families, by name after the dialect's prefix (`switchyard_<prefix>_pool_`).
fn tx_pool_metrics<D: Dialect>() -> [Metric<TxPool<D>>; 9] {
    [
        metric(
            "clients",
            "Transaction-mode clients connected, per pool, database and user",
            Read::Gauge(|t| load_usize(&t.stats.clients)),
        ),
        metric(
            "clients_waiting",
            "Transaction-mode clients waiting for a server connection",
            Read::Gauge(|t| t.waiting() as f64),
        ),
        metric(
            "transactions",
            "Transactions run over shared server connections",
            Read::Counter(|t| load(&t.stats.transactions)),
        ),
        metric(
            "queries",
            "Queries run over shared server connections (ReadyForQuery answers; MySQL: commands)",
            Read::Counter(|t| load(&t.stats.queries)),
        ),
        metric(
            "leases",
            "Server connections handed to a client's transaction",
            Read::Counter(|t| load(&t.stats.leases)),
        ),
        metric(
            "wait_seconds",
            "Time clients waited for a server connection, summed (divide by leases for the average)",
            Read::Gauge(|t| t.stats.wait_micros.load(Ordering::Relaxed) as f64 / 1e6),
        ),
        metric(
            "queue_timeouts",
            "Clients refused (53300; MySQL 1040) after waiting timeouts.queue",
            Read::Counter(|t| load(&t.stats.queue_timeouts)),
        ),
        metric(
            "routed_primary",
            "Transactions the read/write split sent to the primary",
            Read::Counter(|t| load(&t.stats.routed_primary)),
        ),
        metric(
            "routed_replica",
            "Transactions the read/write split sent to a replica",
            Read::Counter(|t| load(&t.stats.routed_replica)),
        ),
    ]
}

impl<D: Dialect> Collector for TxPoolMetrics<D> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let name = |family: &str| format!("switchyard_{}_pool_{family}", D::METRICS);
        let tx_pools: Vec<(Labels, &TxPool<D>)> = self
            .pools
            .iter()
            .map(|t| {
                let mut labels = vec![
                    ("pool", t.pool.clone()),
                    ("database", t.database.clone()),
                    ("user", t.user.clone()),
                ];
                // Clients of different shapes (MySQL capabilities and character set)
                // have pools of their own: one series each.
                if t.shape != 0 {
                    labels.push(("shape", format!("{:x}", t.shape)));
                }
                (labels, t.as_ref())
            })
            .collect();
        for metric in &tx_pool_metrics::<D>() {
            family_as(&mut encoder, &name(metric.name()), metric, &tx_pools)?;
        }
        let connections_name = name("server_connections");
        let mut connections = encoder.encode_descriptor(
            &connections_name,
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
        let pairs_name = name("pairs");
        let pairs = encoder.encode_descriptor(
            &pairs_name,
            "(database, user) pairs with transaction-pool state kept, logged in or not yet",
            None,
            ConstGauge::new(0.0f64).metric_type(),
        )?;
        ConstGauge::new(self.pairs as f64).encode(pairs)?;
        Ok(())
    }
}
