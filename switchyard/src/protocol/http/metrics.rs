//! HTTP request metrics: requests by listener, pool, server and status class, and a
//! request duration histogram per listener. Kept in live families that the admin
//! exporter registers at scrape time.
//!
//! Each client connection memoizes the handles its requests count on ([`MetricHandles`]):
//! finding a series in a family builds its label strings and hashes them, which cost more
//! than a small request's whole proxying on the HTTP bench.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn duration_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The HTTP request counters and histograms of the process.
#[derive(Debug)]
pub struct RequestMetrics {
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }
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
            .observe(elapsed.as_secs_f64());
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
    duration: OnceLock<Histogram>,
    requests: Mutex<Vec<(CounterKey, Counter)>>,
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
        look_up: impl FnOnce() -> Counter,
    ) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counter)) = requests
            .iter()
            .find(|(key, _)| key.class == class && key.server == server && key.pool == pool)
        {
            // Counted under the memo's lock: no clone of the shared handle (whose
            // reference count every worker would bounce between them).
            counter.inc();
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
        counter.inc();
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
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
