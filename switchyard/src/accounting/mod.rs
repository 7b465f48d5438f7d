//! Usage per tenant, for billing: connections, bytes each way, HTTP requests, PostgreSQL
//! transactions, SMTP messages and connection time, counted where connections, requests
//! and messages end, and delivered to a sink (`sink`: Redis or an HTTP receiver) every
//! `flush_interval` and at shutdown, reload and upgrade.
//!
//! Delivery is at least once and never counts twice: each flush turns what was counted
//! since the last one into a batch with an id of its own, which the sink applies once
//! (Redis records the id in the script that applies it; an HTTP receiver gets it as
//! `Idempotency-Key`). Batches wait, oldest first, while the sink is down, up to
//! `max_pending_batches` (the oldest is dropped with a warning beyond it), and are retried
//! with a backoff from 250 ms up to `flush_interval`: one mechanism, whatever the sink.

mod sink;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::AccountingConfig;
use sink::Sink;

/// The usage fields, in the order of [`Counts`] (and of the Redis hash fields and the
/// JSON of the API and the HTTP sink).
pub const FIELDS: [&str; 7] = [
    "connections",
    "bytes_in",
    "bytes_out",
    "requests",
    "transactions",
    "messages",
    "connection_ms",
];

/// One tenant's counters, in [`FIELDS`] order.
pub type Counts = [u64; FIELDS.len()];

/// One tenant's usage since the process started.
#[derive(Debug, Default)]
pub struct Usage {
    /// Client connections.
    pub connections: AtomicU64,
    /// Bytes from clients.
    pub bytes_in: AtomicU64,
    /// Bytes to clients.
    pub bytes_out: AtomicU64,
    /// HTTP requests.
    pub requests: AtomicU64,
    /// PostgreSQL transactions.
    pub transactions: AtomicU64,
    /// SMTP messages the server accepted.
    pub messages: AtomicU64,
    /// Connection time, milliseconds.
    pub connection_ms: AtomicU64,
}

impl Usage {
    /// The counters, in [`FIELDS`] order.
    pub fn read(&self) -> Counts {
        [
            &self.connections,
            &self.bytes_in,
            &self.bytes_out,
            &self.requests,
            &self.transactions,
            &self.messages,
            &self.connection_ms,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }

    /// Counts one finished HTTP request.
    pub fn add_request(&self, bytes_in: u64, bytes_out: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    /// Counts one message a server accepted (SMTP).
    pub fn add_message(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one finished connection.
    pub fn add_connection(&self, bytes_in: u64, bytes_out: u64, duration_ms: u64) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        self.connection_ms.fetch_add(duration_ms, Ordering::Relaxed);
    }
}

/// One tenant's usage as JSON: `{"tenant", "connections", "bytes_in", ...}` (the API's
/// rows, the HTTP sink's).
pub fn usage_json(tenant: &str, counts: &Counts) -> serde_json::Value {
    let mut row = serde_json::Map::new();
    row.insert("tenant".into(), tenant.into());
    for (field, value) in FIELDS.iter().zip(counts) {
        row.insert((*field).into(), (*value).into());
    }
    serde_json::Value::Object(row)
}

/// What a flush delivers: per tenant, the increments of each field.
#[derive(Debug, Clone)]
struct Batch {
    id: String,
    increments: Vec<(String, Counts)>,
}

/// The first retry after a failed delivery; each next one waits twice as long, up to
/// `flush_interval`.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Every tenant's usage, and its delivery.
#[derive(Debug)]
pub struct Accounting {
    tenants: Mutex<HashMap<String, Arc<Usage>>>,
    // What each tenant had when last put into a batch.
    batched: Mutex<HashMap<String, Counts>>,
    pending: tokio::sync::Mutex<VecDeque<Batch>>,
    sink: Option<Sink>,
    max_pending: usize,
    instance: String,
    sequence: AtomicU64,
    /// Tenants exported to Prometheus.
    pub top_n: usize,
    /// How often usage is delivered.
    pub flush_interval: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Accounting {
    /// From `[accounting]` (absent: counted in memory only, never delivered).
    pub fn new(config: Option<&AccountingConfig>) -> Result<Self, String> {
        let sink = config
            .and_then(|c| c.sink.as_ref())
            .map(Sink::new)
            .transpose()?;
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| e.to_string())?;
        Ok(Self {
            tenants: Mutex::default(),
            batched: Mutex::default(),
            pending: tokio::sync::Mutex::default(),
            sink,
            max_pending: config.map_or(10_000, |c| c.max_pending_batches),
            instance: id.iter().map(|b| format!("{b:02x}")).collect(),
            sequence: AtomicU64::new(0),
            top_n: config.map_or(20, |c| c.top_n),
            flush_interval: config.map_or(Duration::from_secs(10), |c| c.flush_interval),
        })
    }

    /// The counters of `tenant`, made on first use.
    pub fn tenant(&self, tenant: &str) -> Arc<Usage> {
        let mut tenants = lock(&self.tenants);
        if let Some(usage) = tenants.get(tenant) {
            return usage.clone();
        }
        let usage = Arc::new(Usage::default());
        tenants.insert(tenant.to_string(), usage.clone());
        usage
    }

    /// Every tenant's usage since start, by name.
    pub fn snapshot(&self) -> Vec<(String, Counts)> {
        let mut all: Vec<_> = lock(&self.tenants)
            .iter()
            .map(|(name, usage)| (name.clone(), usage.read()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Turns what was counted since the last call into a pending batch.
    async fn cut_batch(&self) {
        let mut increments = Vec::new();
        {
            let tenants = lock(&self.tenants);
            let mut batched = lock(&self.batched);
            for (name, usage) in tenants.iter() {
                let now = usage.read();
                let before = batched.entry(name.clone()).or_default();
                let delta: Counts = std::array::from_fn(|i| now[i].saturating_sub(before[i]));
                if delta.iter().any(|&d| d != 0) {
                    increments.push((name.clone(), delta));
                    *before = now;
                }
            }
        }
        if increments.is_empty() {
            return;
        }
        let id = format!(
            "{}-{}",
            self.instance,
            self.sequence.fetch_add(1, Ordering::Relaxed)
        );
        let mut pending = self.pending.lock().await;
        pending.push_back(Batch { id, increments });
        while pending.len() > self.max_pending {
            if let Some(dropped) = pending.pop_front() {
                tracing::warn!(batch = %dropped.id, tenants = dropped.increments.len(), "usage sink down too long: the oldest batch is dropped");
            }
        }
    }

    /// Delivers what was counted since the last flush, and every batch still pending;
    /// whether nothing is left pending.
    pub async fn flush(&self) -> bool {
        if self.sink.is_none() {
            return true;
        }
        self.cut_batch().await;
        self.deliver_pending().await
    }

    /// Delivers the pending batches, oldest first; stops at the first failure (the batch
    /// stays, to be retried); whether nothing is left pending.
    async fn deliver_pending(&self) -> bool {
        let Some(sink) = &self.sink else {
            return true;
        };
        let mut pending = self.pending.lock().await;
        while let Some(batch) = pending.front() {
            match sink.deliver(batch).await {
                Ok(()) => {
                    pending.pop_front();
                }
                Err(error) => {
                    tracing::warn!(%error, batch = %batch.id, pending = pending.len(), "usage not delivered; kept to retry");
                    return false;
                }
            }
        }
        true
    }

    /// Flushes every `flush_interval` until `stop`; after a failed delivery, retries the
    /// pending batches with a backoff ([`FIRST_RETRY`] doubling up to `flush_interval`).
    pub fn spawn_flushes(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.sink.is_none() {
            return;
        }
        let accounting = self.clone();
        tokio::spawn(async move {
            let interval = accounting.flush_interval;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut retry: Option<Duration> = None;
            loop {
                let delivered = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => accounting.flush().await,
                    _ = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {
                        accounting.deliver_pending().await
                    }
                };
                retry = match (delivered, retry) {
                    (true, _) => None,
                    (false, None) => Some(FIRST_RETRY.min(interval)),
                    (false, Some(wait)) => Some((wait * 2).min(interval)),
                };
            }
        });
    }
}
