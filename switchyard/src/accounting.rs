//! Usage per tenant, for billing: connections, bytes each way, HTTP requests, PostgreSQL
//! transactions and connection time, counted where connections and requests end, and
//! delivered to a sink (Redis: `HINCRBY` on `prefix + tenant`) every `flush_interval` and
//! at shutdown, reload and upgrade.
//!
//! Delivery is at least once and never counts twice: each flush turns what was counted
//! since the last one into a batch with an id of its own, and the sink applies a batch in
//! one script that first records its id (`SET NX`), so a batch retried after a lost reply
//! is skipped. Batches wait, oldest first, while the sink is down, up to
//! `max_pending_batches` (the oldest is dropped with a warning beyond it).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::AccountingConfig;
use crate::redis_link::RedisLink;

/// The usage fields, in the order of [`Usage::read`] and of the Redis hash fields.
pub const FIELDS: [&str; 6] = [
    "connections",
    "bytes_in",
    "bytes_out",
    "requests",
    "transactions",
    "connection_ms",
];

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
    /// Connection time, milliseconds.
    pub connection_ms: AtomicU64,
}

impl Usage {
    /// The counters, in [`FIELDS`] order.
    pub fn read(&self) -> [u64; 6] {
        [
            &self.connections,
            &self.bytes_in,
            &self.bytes_out,
            &self.requests,
            &self.transactions,
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

    /// Counts one finished connection.
    pub fn add_connection(&self, bytes_in: u64, bytes_out: u64, duration_ms: u64) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        self.connection_ms.fetch_add(duration_ms, Ordering::Relaxed);
    }
}

/// What a flush delivers: per tenant, the increments of each field.
#[derive(Debug, Clone)]
struct Batch {
    id: String,
    increments: Vec<(String, [u64; 6])>,
}

/// Applies a batch once: records its id, then increments every field given.
/// KEYS[1] is the batch id key; then per tenant a hash key; ARGV holds the six
/// increments of each tenant in order.
const APPLY_BATCH: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 604800) then return 0 end
local fields = {'connections','bytes_in','bytes_out','requests','transactions','connection_ms'}
for t = 2, #KEYS do
  for f = 1, 6 do
    local n = tonumber(ARGV[(t - 2) * 6 + f])
    if n ~= 0 then redis.call('HINCRBY', KEYS[t], fields[f], n) end
  end
end
return 1
"#;

/// Every tenant's usage, and its delivery.
#[derive(Debug)]
pub struct Accounting {
    tenants: Mutex<HashMap<String, Arc<Usage>>>,
    // What each tenant had when last put into a batch.
    batched: Mutex<HashMap<String, [u64; 6]>>,
    pending: tokio::sync::Mutex<VecDeque<Batch>>,
    sink: Option<(RedisLink, String)>,
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
            .map(|sink| {
                RedisLink::new(
                    &sink.address,
                    sink.password.as_deref(),
                    Duration::from_secs(2),
                )
                .map(|link| (link, sink.prefix.clone()))
            })
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
    pub fn snapshot(&self) -> Vec<(String, [u64; 6])> {
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
                let delta: [u64; 6] = std::array::from_fn(|i| now[i].saturating_sub(before[i]));
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

    /// Delivers what was counted since the last flush, and every batch still pending,
    /// oldest first; stops at the first failure (retried at the next flush).
    pub async fn flush(&self) {
        let Some((link, prefix)) = &self.sink else {
            return;
        };
        self.cut_batch().await;
        let mut pending = self.pending.lock().await;
        while let Some(batch) = pending.front() {
            match deliver(link, prefix, batch).await {
                Ok(()) => {
                    pending.pop_front();
                }
                Err(error) => {
                    tracing::warn!(%error, pending = pending.len(), "usage not delivered; kept for the next flush");
                    return;
                }
            }
        }
    }

    /// Flushes every `flush_interval` until `stop`.
    pub fn spawn_flushes(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.sink.is_none() {
            return;
        }
        let accounting = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(accounting.flush_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => accounting.flush().await,
                }
            }
        });
    }
}

/// Applies one batch with [`APPLY_BATCH`].
async fn deliver(link: &RedisLink, prefix: &str, batch: &Batch) -> Result<(), String> {
    let script = redis::Script::new(APPLY_BATCH);
    let mut invocation = script.key(format!("{prefix}batch:{}", batch.id));
    for (tenant, values) in &batch.increments {
        invocation.key(format!("{prefix}{tenant}"));
        for value in values {
            invocation.arg(*value);
        }
    }
    let work = async {
        let mut connection = link.connection().await?;
        invocation
            .invoke_async::<i64>(&mut connection)
            .await
            .map_err(|e| format!("redis: {e}"))
    };
    tokio::time::timeout(link.timeout, work)
        .await
        .map_err(|_| "redis: timed out".to_string())??;
    Ok(())
}
