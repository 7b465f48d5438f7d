//! HTTP request metrics: requests by listener, pool, server and status class, and a
//! request duration histogram per listener. Kept in live families that the admin
//! exporter registers at scrape time; the admin stats read the same request counters by
//! pool ([`RequestMetrics::responses`]).
//!
//! Each worker memoizes the handles its requests count on ([`Memo`]): finding a series in
//! a family builds its label strings and hashes them, which cost more than a small
//! request's whole proxying on the HTTP bench. The memo is the worker's, not the client
//! connection's, so that an idle connection keeps none of it. The series themselves count
//! per worker ([`Tally`]): every request of every worker adds to them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::tally::Tally;

type Labels = Vec<(&'static str, String)>;

/// The status classes requests are counted by, in order.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Responses by status class, counted as [`CLASSES`] names them.
pub type Classes = BTreeMap<&'static str, u64>;

/// One pool's responses: in all, and per server (those counted without a server, such as
/// a 503 for no server available, are only in `all`).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolResponses {
    /// Every response of the pool's requests.
    pub all: Classes,
    /// Per server name.
    pub servers: BTreeMap<String, Classes>,
}

/// The request duration histogram: buckets from 1 ms doubling to about 33 s.
type DurationHistogram = crate::observe::DurationHistogram<1000>;

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

/// The HTTP request counters and histograms of the process.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    requests: Family<Labels, RequestCounter>,
    duration: Family<Labels, DurationHistogram>,
    // The series of `requests` by pool. A family cannot be listed, and the stats need a
    // pool's series without knowing its listeners. Written only when a series is created.
    by_pool: Mutex<HashMap<String, Vec<PoolSeries>>>,
    /// Idle HTTP/1 connections parked now (see `park`).
    parked: Gauge,
    /// The handles each worker found (see [`crate::workers::worker_slot`]).
    memos: [WorkerMemo; MEMO_SLOTS],
}

/// Counts one parked connection for as long as it lives.
#[derive(Debug)]
pub struct ParkedCount(Gauge);

impl Drop for ParkedCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One series of a pool: server name, class index, the family's own counter.
type PoolSeries = (String, usize, RequestCounter);

impl RequestMetrics {
    /// Counts one finished request, through the handles the calling worker memoizes.
    pub fn record(
        &self,
        listener: &str,
        pool: Option<&str>,
        server: Option<&str>,
        status: u16,
        elapsed: Duration,
    ) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        let (pool, server) = (pool.unwrap_or(""), server.unwrap_or(""));
        let memo = &self.memos[crate::workers::worker_slot(MEMO_SLOTS)].0;
        let mut memo = memo.lock().unwrap_or_else(|e| e.into_inner());
        memo.count(listener, pool, server, class, || {
            self.series(listener, pool, server, class)
        });
        memo.observe(listener, elapsed, || {
            self.duration
                .get_or_create(&vec![("listener", listener.to_string())])
                .clone()
        });
    }

    /// The request counter of one series, created (and indexed by pool) on first use.
    fn series(&self, listener: &str, pool: &str, server: &str, class: usize) -> RequestCounter {
        let labels = vec![
            ("listener", listener.to_string()),
            ("pool", pool.to_string()),
            ("server", server.to_string()),
            ("code", CLASSES[class].to_string()),
        ];
        if let Some(counter) = self.requests.get(&labels) {
            return counter.clone();
        }
        // Created under the index's lock, so that a series two connections create at once
        // is indexed once.
        let mut by_pool = self.by_pool.lock().unwrap_or_else(|e| e.into_inner());
        let counter = self.requests.get_or_create(&labels).clone();
        let indexed = by_pool.entry(pool.to_string()).or_default();
        if !indexed
            .iter()
            .any(|(_, _, c)| Arc::ptr_eq(&c.0, &counter.0))
        {
            indexed.push((server.to_string(), class, counter.clone()));
        }
        counter
    }

    /// The responses counted for `pool`'s requests, summed over listeners; `None` before
    /// its first.
    pub fn responses(&self, pool: &str) -> Option<PoolResponses> {
        let by_pool = self.by_pool.lock().unwrap_or_else(|e| e.into_inner());
        let series = by_pool.get(pool)?;
        let zero = || CLASSES.iter().map(|&class| (class, 0)).collect::<Classes>();
        let mut responses = PoolResponses {
            all: zero(),
            servers: BTreeMap::new(),
        };
        for (server, class, counter) in series {
            let (class, count) = (CLASSES[*class], counter.0.get());
            *responses.all.entry(class).or_default() += count;
            if !server.is_empty() {
                let classes = responses.servers.entry(server.clone()).or_insert_with(zero);
                *classes.entry(class).or_default() += count;
            }
        }
        Some(responses)
    }

    /// Counts a connection as parked until the count is dropped.
    pub fn count_parked(&self) -> ParkedCount {
        self.parked.inc();
        ParkedCount(self.parked.clone())
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
        registry.register(
            "switchyard_http_parked_connections",
            "Idle HTTP/1 keep-alive connections parked (holding no hyper connection or buffer)",
            self.parked.clone(),
        );
    }
}

/// Memos per process: one for threads off the workers, one per worker (workers past them
/// share).
const MEMO_SLOTS: usize = 8;

/// One worker's memo, alone in its cache line: only its worker locks it.
#[derive(Debug, Default)]
#[repr(align(64))]
struct WorkerMemo(Mutex<Memo>);

/// The series one worker has counted on: request counters by (listener, pool, server,
/// status class) and duration histograms by listener, each found in its family once.
#[derive(Debug, Default)]
struct Memo {
    requests: Vec<(SeriesKey, RequestCounter)>,
    durations: Vec<(Box<str>, DurationHistogram)>,
}

#[derive(Debug)]
struct SeriesKey {
    listener: Box<str>,
    pool: Box<str>,
    server: Box<str>,
    class: usize,
}

/// Series a worker keeps of each kind; a worker counting on more looks the rest up.
const MEMOIZED_SERIES: usize = 64;

impl Memo {
    /// Counts a request in its series, kept here after `look_up` found it once.
    fn count(
        &mut self,
        listener: &str,
        pool: &str,
        server: &str,
        class: usize,
        look_up: impl FnOnce() -> RequestCounter,
    ) {
        let is_it = |key: &SeriesKey| {
            key.class == class
                && *key.server == *server
                && *key.pool == *pool
                && *key.listener == *listener
        };
        let key = || SeriesKey {
            listener: listener.into(),
            pool: pool.into(),
            server: server.into(),
            class,
        };
        memoized(&mut self.requests, is_it, key, look_up).0.add(1);
    }

    /// Observes a request's duration in its listener's histogram, kept here after
    /// `look_up` found it once.
    fn observe(
        &mut self,
        listener: &str,
        elapsed: Duration,
        look_up: impl FnOnce() -> DurationHistogram,
    ) {
        let entries = &mut self.durations;
        memoized(
            entries,
            |key| **key == *listener,
            || listener.into(),
            look_up,
        )
        .observe(elapsed);
    }
}

/// The value `entries` keeps for the key `is_it` recognizes (the latest kept first); else
/// `look_up`'s, kept under `key()` in place of the oldest when [`MEMOIZED_SERIES`] are.
fn memoized<K, V>(
    entries: &mut Vec<(K, V)>,
    is_it: impl Fn(&K) -> bool,
    key: impl FnOnce() -> K,
    look_up: impl FnOnce() -> V,
) -> &V {
    match entries.iter().rposition(|(k, _)| is_it(k)) {
        Some(found) => &entries[found].1,
        None => {
            if entries.len() == MEMOIZED_SERIES {
                entries.remove(0);
            }
            entries.push((key(), look_up()));
            &entries[entries.len() - 1].1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn memoized_handles_count_in_the_families() {
        let metrics = RequestMetrics::default();
        for (server, status) in (0..20).map(|i| (format!("s{}", i % 10), 200 + i % 2 * 300)) {
            metrics.record("web", Some("app"), Some(&server), status, Duration::ZERO);
        }
        metrics.record("web", None, None, 408, Duration::ZERO);
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
    fn series_past_the_memo_bound_still_count_in_their_own() {
        let metrics = RequestMetrics::default();
        let servers = 2 * MEMOIZED_SERIES;
        for round in 0..2 {
            for server in 0..servers {
                let listener = format!("l{}", server % 3);
                let server = format!("s{server}");
                let status = if round == 0 { 200 } else { 204 };
                metrics.record(
                    &listener,
                    Some("app"),
                    Some(&server),
                    status,
                    Duration::ZERO,
                );
            }
        }
        let responses = metrics.responses("app").expect("counted");
        assert_eq!(responses.servers.len(), servers);
        assert!(
            responses
                .servers
                .values()
                .all(|classes| classes["2xx"] == 2)
        );
        let memo = metrics.memos[0].0.lock().expect("memo");
        assert_eq!(memo.requests.len(), MEMOIZED_SERIES);
        assert_eq!(memo.durations.len(), 3);
    }

    #[test]
    fn responses_by_pool_sum_the_series_of_every_listener() {
        let metrics = RequestMetrics::default();
        for (listener, server, status) in [
            ("web", Some("a"), 200),
            ("web", Some("a"), 204),
            ("api", Some("a"), 503),
            ("api", Some("b"), 302),
            ("api", None, 503),
        ] {
            let server = server.map(str::to_string);
            metrics.record(
                listener,
                Some("app"),
                server.as_deref(),
                status,
                Duration::ZERO,
            );
        }
        metrics.record("web", None, None, 400, Duration::ZERO);
        assert_eq!(metrics.responses("other"), None);
        let responses = metrics.responses("app").expect("counted");
        let classes = |counts: [u64; 5]| -> Classes { CLASSES.into_iter().zip(counts).collect() };
        assert_eq!(responses.all, classes([0, 2, 1, 0, 2]));
        assert_eq!(responses.servers["a"], classes([0, 2, 0, 0, 1]));
        assert_eq!(responses.servers["b"], classes([0, 0, 1, 0, 0]));
        assert_eq!(
            responses.servers.len(),
            2,
            "the server-less 503 is the pool's only"
        );
    }

    #[test]
    fn a_series_created_twice_at_once_is_indexed_once() {
        let metrics = Arc::new(RequestMetrics::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || metrics.series("web", "app", "a", 1).0.add(1))
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let responses = metrics.responses("app").expect("counted");
        assert_eq!(responses.servers["a"]["2xx"], 4);
        assert_eq!(metrics.by_pool.lock().expect("lock")["app"].len(), 1);
    }
}
