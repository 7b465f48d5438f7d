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
use crate::runtime::Shared;
use crate::upstream::{AdminState, Pool};

type Labels = Vec<(&'static str, String)>;

/// Renders every metric in the OpenMetrics text format.
pub fn render(shared: &Shared) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        pools: shared.pools.clone(),
        listeners: shared.listeners.clone(),
        dropped_log_lines: shared.access_log.dropped.load(Ordering::Relaxed),
    }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct Snapshot {
    pools: Vec<Arc<Pool>>,
    listeners: Vec<Arc<Listener>>,
    dropped_log_lines: u64,
}

/// Writes one metric family from (labels, value) samples.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let listener_labels = |l: &Listener| vec![("listener", l.name.clone())];
        let listeners = &self.listeners;
        family(
            &mut encoder,
            "switchyard_listener_connections_active",
            "Client connections being handled",
            listeners.iter().map(|l| {
                (
                    listener_labels(l),
                    gauge(l.stats.active.load(Ordering::Relaxed) as i64),
                )
            }),
        )?;
        family(
            &mut encoder,
            "switchyard_listener_connections",
            "Client connections accepted",
            listeners.iter().map(|l| {
                (
                    listener_labels(l),
                    counter(l.stats.total.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "switchyard_listener_connections_failed",
            "Client connections closed before reaching a server",
            listeners.iter().map(|l| {
                (
                    listener_labels(l),
                    counter(l.stats.failed.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "switchyard_listener_received_bytes",
            "Bytes received from clients",
            listeners.iter().map(|l| {
                (
                    listener_labels(l),
                    counter(l.stats.bytes_in.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "switchyard_listener_sent_bytes",
            "Bytes sent to clients",
            listeners.iter().map(|l| {
                (
                    listener_labels(l),
                    counter(l.stats.bytes_out.load(Ordering::Relaxed)),
                )
            }),
        )?;

        let pools = &self.pools;
        let pool_labels = |p: &Pool| vec![("pool", p.name.clone())];
        family(
            &mut encoder,
            "switchyard_pool_queue_length",
            "Clients waiting for a server slot",
            pools.iter().map(|p| {
                (
                    pool_labels(p),
                    gauge(p.stats.queued.load(Ordering::Relaxed) as i64),
                )
            }),
        )?;
        family(
            &mut encoder,
            "switchyard_pool_queue_timeouts",
            "Clients that waited too long for a server slot",
            pools.iter().map(|p| {
                (
                    pool_labels(p),
                    counter(p.stats.queue_timeouts.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "switchyard_pool_queue_full",
            "Clients refused because the queue was full",
            pools.iter().map(|p| {
                (
                    pool_labels(p),
                    counter(p.stats.queue_full.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "switchyard_pool_no_server",
            "Clients refused because no server was available",
            pools.iter().map(|p| {
                (
                    pool_labels(p),
                    counter(p.stats.no_server.load(Ordering::Relaxed)),
                )
            }),
        )?;

        let servers: Vec<_> = pools
            .iter()
            .flat_map(|p| {
                p.servers.iter().map(move |s| {
                    (
                        vec![("pool", p.name.clone()), ("server", s.name.clone())],
                        s,
                    )
                })
            })
            .collect();
        let each = |f: fn(&crate::upstream::Server) -> u64| {
            servers
                .iter()
                .map(move |(labels, s)| (labels.clone(), counter(f(s))))
        };
        family(
            &mut encoder,
            "switchyard_server_up",
            "1 when the server takes new work (healthy and ready)",
            servers
                .iter()
                .map(|(labels, s)| (labels.clone(), gauge(i64::from(s.is_available())))),
        )?;
        family(
            &mut encoder,
            "switchyard_server_healthy",
            "1 unless health checks report the server down",
            servers
                .iter()
                .map(|(labels, s)| (labels.clone(), gauge(i64::from(s.health() != Health::Down)))),
        )?;
        family(
            &mut encoder,
            "switchyard_server_ready",
            "1 when the operator state is ready (not drain or maint)",
            servers.iter().map(|(labels, s)| {
                (
                    labels.clone(),
                    gauge(i64::from(s.admin_state() == AdminState::Ready)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "switchyard_server_connections_active",
            "Sessions holding a slot on the server",
            servers
                .iter()
                .map(|(labels, s)| (labels.clone(), gauge(s.active() as i64))),
        )?;
        family(
            &mut encoder,
            "switchyard_server_connections",
            "Sessions established to the server",
            each(|s| s.stats.total.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "switchyard_server_received_bytes",
            "Bytes sent by clients to the server",
            each(|s| s.stats.bytes_in.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "switchyard_server_sent_bytes",
            "Bytes sent by the server to clients",
            each(|s| s.stats.bytes_out.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "switchyard_server_connect_errors",
            "Failed connect attempts",
            each(|s| s.stats.connect_errors.load(Ordering::Relaxed)),
        )?;
        let checks = servers.iter().flat_map(|(labels, s)| {
            let with = |result: &str| {
                let mut labels = labels.clone();
                labels.push(("result", result.to_string()));
                labels
            };
            [
                (
                    with("passed"),
                    counter(s.stats.checks_passed.load(Ordering::Relaxed)),
                ),
                (
                    with("failed"),
                    counter(s.stats.checks_failed.load(Ordering::Relaxed)),
                ),
            ]
        });
        family(
            &mut encoder,
            "switchyard_server_checks",
            "Health check results (active and passive)",
            checks,
        )?;
        family(
            &mut encoder,
            "switchyard_access_log_dropped_lines",
            "Access log lines dropped because the writer fell behind",
            [(Vec::new(), counter(self.dropped_log_lines))],
        )?;
        Ok(())
    }
}
