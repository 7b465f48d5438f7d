//! HTTP request metrics: requests by listener, pool, server and status class, and a
//! request duration histogram per listener. Kept in live families that the admin
//! exporter registers at scrape time.
//!
//! Each client connection memoizes the handles its requests count on ([`MetricHandles`]):
//! finding a series in a family builds its label strings and hashes them, which cost more
//! than a small request's whole proxying on the HTTP bench. The series themselves count per
//! worker ([`Tally`]): every request of every worker adds to them.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::tally::{Tally, TallyHistogram};

type Labels = Vec<(&'static str, String)>;

/// Upper bounds of the duration buckets, in seconds: 1 ms doubling to about 33 s.
const DURATION_BOUNDS: [f64; 16] = {
    let mut bounds = [0.001; 16];
    let mut i = 1;
    while i < bounds.len() {
        bounds[i] = bounds[i - 1] * 2.0;
        i += 1;
    }
    bounds
};

/// A request counter series.
#[derive(Debug, Default, Clone)]
struct RequestCounter(Arc<Tally>);

impl TypedMetric for RequestCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for RequestCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.0.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A request duration histogram series: the buckets of [`DURATION_BOUNDS`] and one past
/// them, the sum kept in nanoseconds.
#[derive(Debug, Default, Clone)]
struct DurationHistogram(Arc<TallyHistogram<{ DURATION_BOUNDS.len() + 1 }>>);

impl DurationHistogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BOUNDS.partition_point(|&bound| bound < seconds);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.observe(bucket, nanos);
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.0.read();
        let buckets: Vec<(f64, u64)> = DURATION_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts.buckets)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            counts.sum as f64 / 1e9,
            counts.count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The HTTP request counters and histograms of the process.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    requests: Family<Labels, RequestCounter>,
    duration: Family<Labels, DurationHistogram>,
}

impl RequestMetrics {
    /// Counts one finished request, through the handles `memo` keeps for its connection.
    pub fn record(
        &self,
        memo: &MetricHandles,
        listener: &str,
        pool: Option<&str>,
        server: Option<&str>,
        status: u16,
        elapsed: Duration,
    ) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let (pool, server) = (pool.unwrap_or(""), server.unwrap_or(""));
        memo.count(pool, server, class, || {
            self.requests
                .get_or_create(&vec![
                    ("listener", listener.to_string()),
                    ("pool", pool.to_string()),
                    ("server", server.to_string()),
                    ("code", class.to_string()),
                ])
                .clone()
        });
        memo.duration
            .get_or_init(|| {
                self.duration
                    .get_or_create(&vec![("listener", listener.to_string())])
                    .clone()
            })
            .observe(elapsed);
    }

    /// Adds the families to a scrape's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "switchyard_http_requests",
            "HTTP requests answered, by listener, pool, server and status class",
            self.requests.clone(),
        );
        registry.register(
            "switchyard_http_request_duration_seconds",
            "HTTP request duration, from the request head to the end of the response",
            self.duration.clone(),
        );
    }
}

/// One client connection's metric handles (all of one listener): the duration histogram,
/// and the request counters of the last few (pool, server, status class) it counted on.
#[derive(Debug, Default)]
pub struct MetricHandles {
    duration: OnceLock<DurationHistogram>,
    requests: Mutex<Vec<(CounterKey, RequestCounter)>>,
}

#[derive(Debug)]
struct CounterKey {
    pool: String,
    server: String,
    class: &'static str,
}

/// Counters a connection keeps; a connection spread over more servers looks the rest up.
const MEMOIZED_COUNTERS: usize = 8;

impl MetricHandles {
    /// Counts a request in its series, kept here after `look_up` found it once.
    fn count(
        &self,
        pool: &str,
        server: &str,
        class: &'static str,
        look_up: impl FnOnce() -> RequestCounter,
    ) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counter)) = requests
            .iter()
            .find(|(key, _)| key.class == class && key.server == server && key.pool == pool)
        {
            // Counted under the memo's lock: no clone of the shared handle (whose
            // reference count every worker would bounce between them).
            counter.0.add(1);
            return;
        }
        let counter = look_up();
        if requests.len() == MEMOIZED_COUNTERS {
            requests.remove(0);
        }
        let key = CounterKey {
            pool: pool.to_string(),
            server: server.to_string(),
            class,
        };
        counter.0.add(1);
        requests.push((key, counter));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn memoized_handles_count_in_the_families() {
        let metrics = RequestMetrics::default();
        let memo = MetricHandles::default();
        for (server, status) in (0..20).map(|i| (format!("s{}", i % 10), 200 + i % 2 * 300)) {
            metrics.record(
                &memo,
                "web",
                Some("app"),
                Some(&server),
                status,
                Duration::ZERO,
            );
        }
        metrics.record(
            &MetricHandles::default(),
            "web",
            None,
            None,
            408,
            Duration::ZERO,
        );
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            r#"switchyard_http_requests_total{listener="web",pool="app",server="s0",code="2xx"} 2"#,
            r#"switchyard_http_requests_total{listener="web",pool="app",server="s1",code="5xx"} 2"#,
            r#"switchyard_http_requests_total{listener="web",pool="",server="",code="4xx"} 1"#,
            r#"switchyard_http_request_duration_seconds_count{listener="web"} 21"#,
            r#"switchyard_http_request_duration_seconds_bucket{le="0.001",listener="web"} 21"#,
            r#"switchyard_http_request_duration_seconds_bucket{le="+Inf",listener="web"} 21"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn durations_fall_in_their_buckets() {
        let histogram = DurationHistogram::default();
        for millis in [0, 1, 2, 3, 1000, 40_000] {
            histogram.observe(Duration::from_millis(millis));
        }
        let counts = histogram.0.read();
        // Upper bounds are inclusive: 1 ms is in the first bucket, 2 ms in the second.
        assert_eq!(&counts.buckets[..4], &[2, 1, 1, 0]);
        // 1 s in the bucket up to 1.024 s, 40 s past the last bound.
        assert_eq!(counts.buckets[10], 1);
        assert_eq!(counts.buckets[16], 1);
        assert_eq!(counts.count, 6);
        assert_eq!(counts.sum, 41_006_000_000);
    }
}
