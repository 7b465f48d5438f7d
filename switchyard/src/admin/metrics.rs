//! Prometheus exposition, read straight from the live counters on each scrape.
//!
//! The counters already exist for the JSON API; a `Collector` turns them into metric
//! families at scrape time, so the data path never touches a metrics registry.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::health::Health;
use crate::listener::Listener;
use crate::protocol::postgres::pooler::TxPool;
use crate::runtime::Shared;
use crate::upstream::{AdminState, Pool, Server, ServerRole};

type Labels = Vec<(&'static str, String)>;

/// Renders every metric in the OpenMetrics text format.
pub fn render(shared: &Shared) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        pools: shared.pools(),
        tx_pools: shared.postgres_pools.snapshot(),
        tx_pool_pairs: shared.postgres_pools.pairs(),
        listeners: shared.listeners(),
        dropped_log_lines: shared.access_log.dropped.load(Ordering::Relaxed),
    }));
    shared.http_metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct Snapshot {
    pools: Arc<Vec<Arc<Pool>>>,
    tx_pools: Vec<Arc<TxPool>>,
    tx_pool_pairs: usize,
    listeners: Arc<Vec<Arc<Listener>>>,
    dropped_log_lines: u64,
}

/// How to read a value, and whether it only grows (counter, exact integers) or goes up
/// and down (gauge, which may be fractional, such as a ramping effective weight).
enum Read<T: ?Sized> {
    Counter(fn(&T) -> u64),
    Gauge(fn(&T) -> f64),
}

/// One metric family over a kind of object: name, help and how to read the value.
struct Metric<T: ?Sized> {
    name: &'static str,
    help: &'static str,
    read: Read<T>,
}

const fn metric<T: ?Sized>(name: &'static str, help: &'static str, read: Read<T>) -> Metric<T> {
    Metric { name, help, read }
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn load_usize(counter: &std::sync::atomic::AtomicUsize) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

fn flag(value: bool) -> f64 {
    f64::from(u8::from(value))
}

const LISTENER_METRICS: &[Metric<Listener>] = &[
    metric(
        "switchyard_listener_connections_active",
        "Client connections being handled",
        Read::Gauge(|l| load_usize(&l.stats.active)),
    ),
    metric(
        "switchyard_listener_connections",
        "Client connections accepted",
        Read::Counter(|l| load(&l.stats.total)),
    ),
    metric(
        "switchyard_listener_connections_failed",
        "Client connections closed before reaching a server",
        Read::Counter(|l| load(&l.stats.failed)),
    ),
    metric(
        "switchyard_listener_received_bytes",
        "Bytes received from clients",
        Read::Counter(|l| l.stats.bytes_in.get()),
    ),
    metric(
        "switchyard_listener_sent_bytes",
        "Bytes sent to clients",
        Read::Counter(|l| l.stats.bytes_out.get()),
    ),
];

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

const POOL_METRICS: &[Metric<Pool>] = &[
    metric(
        "switchyard_pool_queue_length",
        "Clients waiting for a server slot",
        Read::Gauge(|p| load_usize(&p.stats.queued)),
    ),
    metric(
        "switchyard_pool_queue_timeouts",
        "Clients that waited too long for a server slot",
        Read::Counter(|p| load(&p.stats.queue_timeouts)),
    ),
    metric(
        "switchyard_pool_queue_full",
        "Clients refused because the queue was full",
        Read::Counter(|p| load(&p.stats.queue_full)),
    ),
    metric(
        "switchyard_pool_no_server",
        "Clients refused because no server was available",
        Read::Counter(|p| load(&p.stats.no_server)),
    ),
];

const SERVER_METRICS: &[Metric<Server>] = &[
    metric(
        "switchyard_server_up",
        "1 when the server takes new work (healthy and ready)",
        Read::Gauge(|s| flag(s.is_available())),
    ),
    metric(
        "switchyard_server_healthy",
        "1 unless health checks report the server down",
        Read::Gauge(|s| flag(s.health() != Health::Down)),
    ),
    metric(
        "switchyard_server_ready",
        "1 when the operator state is ready (not drain or maint)",
        Read::Gauge(|s| flag(s.admin_state() == AdminState::Ready)),
    ),
    metric(
        "switchyard_server_connections_active",
        "Sessions holding a slot on the server",
        Read::Gauge(|s| s.active() as f64),
    ),
    metric(
        "switchyard_server_effective_weight",
        "Weight the balancer uses now; below the configured weight during slow_start",
        Read::Gauge(|s| s.effective_weight(std::time::Instant::now())),
    ),
    metric(
        "switchyard_server_connections",
        "Sessions established to the server",
        Read::Counter(|s| load(&s.stats.total)),
    ),
    metric(
        "switchyard_server_received_bytes",
        "Bytes sent by clients to the server",
        Read::Counter(|s| s.stats.bytes_in.get()),
    ),
    metric(
        "switchyard_server_sent_bytes",
        "Bytes sent by the server to clients",
        Read::Counter(|s| s.stats.bytes_out.get()),
    ),
    metric(
        "switchyard_server_connect_errors",
        "Failed connect attempts",
        Read::Counter(|s| load(&s.stats.connect_errors)),
    ),
    metric(
        "switchyard_server_primary",
        "1 when the last database check found the server accepting writes",
        Read::Gauge(|s| flag(s.role() == ServerRole::Primary)),
    ),
    metric(
        "switchyard_server_replica",
        "1 when the last database check found the server a read-only replica",
        Read::Gauge(|s| flag(s.role() == ServerRole::Replica)),
    ),
    metric(
        "switchyard_server_replica_lag_bytes",
        "WAL a replica has received but not replayed (0 for other roles)",
        Read::Gauge(|s| s.replica_lag().map_or(0.0, |lag| lag.bytes as f64)),
    ),
    metric(
        "switchyard_server_replica_lag_seconds",
        "Age of a replica's last replayed transaction while it is behind (0 for other roles)",
        Read::Gauge(|s| s.replica_lag().map_or(0.0, |lag| lag.seconds)),
    ),
];

/// Writes one family: a sample per (labels, object).
fn family<T: ?Sized>(
    encoder: &mut DescriptorEncoder,
    metric: &Metric<T>,
    objects: &[(Labels, &T)],
) -> Result<(), std::fmt::Error> {
    if objects.is_empty() {
        return Ok(());
    }
    let kind = match metric.read {
        Read::Counter(_) => ConstCounter::new(0u64).metric_type(),
        Read::Gauge(_) => ConstGauge::new(0.0f64).metric_type(),
    };
    let mut family = encoder.encode_descriptor(metric.name, metric.help, None, kind)?;
    for (labels, object) in objects {
        let sample = family.encode_family(labels)?;
        match metric.read {
            Read::Counter(read) => ConstCounter::new(read(object)).encode(sample)?,
            Read::Gauge(read) => ConstGauge::new(read(object)).encode(sample)?,
        }
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let listeners: Vec<(Labels, &Listener)> = self
            .listeners
            .iter()
            .map(|l| (vec![("listener", l.name.clone())], l.as_ref()))
            .collect();
        for metric in LISTENER_METRICS {
            family(&mut encoder, metric, &listeners)?;
        }
        let pools: Vec<(Labels, &Pool)> = self
            .pools
            .iter()
            .map(|p| (vec![("pool", p.name.clone())], p.as_ref()))
            .collect();
        for metric in POOL_METRICS {
            family(&mut encoder, metric, &pools)?;
        }
        let servers: Vec<(Labels, &Server)> = self
            .pools
            .iter()
            .flat_map(|p| {
                p.servers.iter().map(move |s| {
                    (
                        vec![("pool", p.name.clone()), ("server", s.name.clone())],
                        s.as_ref(),
                    )
                })
            })
            .collect();
        for metric in SERVER_METRICS {
            family(&mut encoder, metric, &servers)?;
        }
        let tx_pools: Vec<(Labels, &TxPool)> = self
            .tx_pools
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
        let mut checks = encoder.encode_descriptor(
            "switchyard_server_checks",
            "Health check results (active and passive)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (labels, server) in &servers {
            for (result, count) in [
                ("passed", &server.stats.checks_passed),
                ("failed", &server.stats.checks_failed),
            ] {
                let mut labels = labels.clone();
                labels.push(("result", result.to_string()));
                ConstCounter::new(load(count)).encode(checks.encode_family(&labels)?)?;
            }
        }
        let dropped = encoder.encode_descriptor(
            "switchyard_access_log_dropped_lines",
            "Access log lines dropped because the writer fell behind",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        ConstCounter::new(self.dropped_log_lines).encode(dropped)?;
        let pairs = encoder.encode_descriptor(
            "switchyard_pg_pool_pairs",
            "(database, user) pairs with transaction-pool state kept, logged in or not yet",
            None,
            ConstGauge::new(0.0f64).metric_type(),
        )?;
        ConstGauge::new(self.tx_pool_pairs as f64).encode(pairs)?;
        Ok(())
    }
}
