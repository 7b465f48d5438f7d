//! HTTP request metrics: requests by listener, pool, server and status class, and a
//! request duration histogram per listener. Kept in live families that the admin
//! exporter registers at scrape time.

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
    /// Counts one finished request.
    pub fn record(
        &self,
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
        self.requests
            .get_or_create(&vec![
                ("listener", listener.to_string()),
                ("pool", pool.unwrap_or("").to_string()),
                ("server", server.unwrap_or("").to_string()),
                ("code", class.to_string()),
            ])
            .inc();
        self.duration
            .get_or_create(&vec![("listener", listener.to_string())])
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
