//! `[accounting]`: usage per tenant (the answer's `tenant`, else the routing key), and
//! where it is delivered for billing.

use std::time::Duration;

use serde::Deserialize;

use super::duration;
use super::load::ErrorSink;
use super::schema::Config;
use crate::key_path;

/// Usage accounting per tenant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountingConfig {
    /// How often usage is delivered to the sink (also at shutdown, reload and upgrade).
    #[serde(default = "default_flush_interval", with = "duration")]
    pub flush_interval: Duration,
    /// Tenants exported to Prometheus: the top N by bytes (the API lists all).
    #[serde(default = "default_top_n")]
    pub top_n: usize,
    /// Batches kept while the sink is down; beyond it the oldest is dropped, with a warning.
    #[serde(default = "default_max_pending")]
    pub max_pending_batches: usize,
    /// Where usage goes; absent keeps it in memory (API, metrics) only.
    #[serde(default)]
    pub sink: Option<SinkConfig>,
}

/// A usage sink.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Only `redis`: `HINCRBY` on `prefix + tenant`.
    pub kind: SinkKind,
    /// `redis://` or `rediss://` URL.
    pub address: String,
    /// AUTH password (`env:`/`file:` allowed), instead of one in the URL.
    #[serde(default)]
    pub password: Option<String>,
    /// Hash key prefix; batch ids are remembered under `prefix + "batch:" + id`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

/// The kinds of sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// A Redis (or Valkey) server.
    Redis,
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_top_n() -> usize {
    20
}
fn default_max_pending() -> usize {
    10_000
}
fn default_prefix() -> String {
    "switchyard:usage:".into()
}

/// Checks `[accounting]`.
pub fn validate(config: &Config, sink: &mut ErrorSink<'_>) {
    let Some(accounting) = &config.accounting else {
        return;
    };
    if accounting.flush_interval.is_zero() {
        sink.at(
            &key_path!("accounting", "flush_interval"),
            "must be more than 0s",
        );
    }
    if accounting.max_pending_batches == 0 {
        sink.at(
            &key_path!("accounting", "max_pending_batches"),
            "must be at least 1",
        );
    }
    if let Some(target) = &accounting.sink {
        if redis::parse_redis_url(&target.address).is_none() {
            sink.at(
                &key_path!("accounting", "sink", "address"),
                "not a redis:// or rediss:// URL",
            );
        }
        if let Some(password) = &target.password
            && let Err(e) = crate::secret::resolve(password)
        {
            sink.at(&key_path!("accounting", "sink", "password"), e);
        }
    }
}
