//! Prometheus exposition, read straight from the live counters on each scrape.
//!
//! The counters already exist for the JSON API; a `Collector` turns them into metric
//! families at scrape time, so the data path never touches a metrics registry.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};

use crate::observe::families::{Labels, Metric, Read, family, flag, load, load_usize, metric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::listener::Listener;
use crate::resolve::Resolver;
use crate::runtime::Shared;
use crate::upstream::Health;
use crate::upstream::{AdminState, Pool, Server, ServerRole};

/// Renders every metric in the OpenMetrics text format.
pub fn render(shared: &Shared) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        resolvers: shared.resolvers(),
        tenants: top_tenants(&shared.context.accounting),
        pools: shared.pools(),
        listeners: shared.listeners(),
        dropped_log_lines: shared.context.access_log.dropped(),
        dozing: crate::idle_lot::sleeping(),
        worker_connections: shared.worker_connections(),
    }));
    for frontend in shared.registry.frontends() {
        frontend.register_metrics(&mut registry);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct Snapshot {
    tenants: Vec<(String, crate::accounting::Counts)>,
    resolvers: Arc<crate::resolve::Resolvers>,
    pools: Arc<Vec<Arc<Pool>>>,
    listeners: Arc<Vec<Arc<Listener>>>,
    dropped_log_lines: u64,
    dozing: usize,
    worker_connections: Vec<usize>,
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

const RESOLVER_METRICS: &[Metric<Resolver>] = &[
    metric(
        "switchyard_resolver_lookups",
        "Lookups made at the resolver's source",
        Read::Counter(|r| load(&r.stats.lookups)),
    ),
    metric(
        "switchyard_resolver_cache_hits",
        "Connections answered from the cache while fresh",
        Read::Counter(|r| load(&r.stats.hits)),
    ),
    metric(
        "switchyard_resolver_cache_misses",
        "Connections that waited for a lookup",
        Read::Counter(|r| load(&r.stats.misses)),
    ),
    metric(
        "switchyard_resolver_stale_answers",
        "Stale answers served because the source failed",
        Read::Counter(|r| load(&r.stats.stale)),
    ),
    metric(
        "switchyard_resolver_errors",
        "Lookups that failed (source down, malformed answer, DNS)",
        Read::Counter(|r| load(&r.stats.errors)),
    ),
    metric(
        "switchyard_resolver_guard_refusals",
        "Answers the SSRF guard refused",
        Read::Counter(|r| load(&r.stats.guarded)),
    ),
    metric(
        "switchyard_resolver_cached_keys",
        "Keys in the resolver's cache",
        Read::Gauge(|r| r.cached_keys() as f64),
    ),
];

/// The `top_n` tenants by bytes (both ways): labels per tenant would be unbounded.
fn top_tenants(
    accounting: &crate::accounting::Accounting,
) -> Vec<(String, crate::accounting::Counts)> {
    let mut all = accounting.snapshot();
    all.sort_by_key(|(_, v)| std::cmp::Reverse(v[1] + v[2]));
    all.truncate(accounting.top_n);
    all
}

const TENANT_METRICS: &[Metric<crate::accounting::Counts>] = &[
    metric(
        "switchyard_tenant_connections",
        "Client connections of the tenant (top N by bytes)",
        Read::Counter(|v| v[0]),
    ),
    metric(
        "switchyard_tenant_received_bytes",
        "Bytes from the tenant's clients (top N by bytes)",
        Read::Counter(|v| v[1]),
    ),
    metric(
        "switchyard_tenant_sent_bytes",
        "Bytes to the tenant's clients (top N by bytes)",
        Read::Counter(|v| v[2]),
    ),
    metric(
        "switchyard_tenant_requests",
        "HTTP requests of the tenant (top N by bytes)",
        Read::Counter(|v| v[3]),
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
        "switchyard_server_connections_idle",
        "Idle connections kept for reuse (HTTP keep-alive), parked ones included",
        Read::Gauge(|s| load_usize(&s.stats.idle)),
    ),
    metric(
        "switchyard_server_connections_parked",
        "Idle connections kept as bare sockets, their HTTP connection state dropped until reused",
        Read::Gauge(|s| load_usize(&s.stats.parked)),
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
        let mut resolvers: Vec<(Labels, &Resolver)> = self
            .resolvers
            .values()
            .map(|r| (vec![("resolver", r.name.clone())], r.as_ref()))
            .collect();
        resolvers.sort_by(|a, b| a.0.cmp(&b.0));
        for metric in RESOLVER_METRICS {
            family(&mut encoder, metric, &resolvers)?;
        }
        if !resolvers.is_empty() {
            let mut lookups = encoder.encode_descriptor(
                "switchyard_resolver_lookup_seconds",
                "Time of a lookup at the resolver's source (cache misses)",
                None,
                MetricType::Histogram,
            )?;
            for (labels, resolver) in &resolvers {
                resolver
                    .stats
                    .latency
                    .encode(lookups.encode_family(labels)?)?;
            }
        }
        let tenants: Vec<(Labels, &crate::accounting::Counts)> = self
            .tenants
            .iter()
            .map(|(name, values)| (vec![("tenant", name.clone())], values))
            .collect();
        for metric in TENANT_METRICS {
            family(&mut encoder, metric, &tenants)?;
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
            "Access log lines lost: dropped because the writer fell behind, or refused by the destination",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        ConstCounter::new(self.dropped_log_lines).encode(dropped)?;
        let dozing = encoder.encode_descriptor(
            "switchyard_idle_lot_connections",
            "Idle connections waiting in the workers' idle lots, without a task of their own",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.dozing as i64).encode(dozing)?;
        let mut workers = encoder.encode_descriptor(
            "switchyard_worker_connections",
            "Client connections each worker thread serves",
            None,
            MetricType::Gauge,
        )?;
        for (worker, &connections) in self.worker_connections.iter().enumerate() {
            let labels: Labels = vec![("worker", worker.to_string())];
            ConstGauge::new(connections as i64).encode(workers.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
