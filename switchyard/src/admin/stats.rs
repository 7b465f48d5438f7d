//! `GET /api/v1/stats`: one snapshot of everything the dashboard shows, so that a page (or
//! a script) reads listeners, pools, servers and the protocols' extras in one request and
//! computes rates from counters and the snapshot's own clock.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::status::{self, ListenerStatus, PoolStatus};
use crate::runtime::Shared;

/// The snapshot. Counters only grow (a reload that replaces a server starts its own), so
/// a rate is the difference of two snapshots' counters over their `uptime_seconds`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// The proxy's version, to tell which build answers.
    pub version: String,
    /// Wall-clock time of the snapshot, milliseconds since the Unix epoch, for display.
    pub timestamp_ms: u64,
    /// Seconds since the process started, on the monotonic clock: the time base of rates
    /// (a wall clock may step).
    pub uptime_seconds: f64,
    /// Whether mutating calls need the bearer token; without one they are open to whoever
    /// reaches the API, which the dashboard says.
    pub token_required: bool,
    /// Every listener.
    pub listeners: Vec<ListenerStatus>,
    /// Every pool with its servers and protocol extras (`http_responses`,
    /// `transaction_pools`).
    pub pools: Vec<PoolStatus>,
    /// The tenants using the most bytes (both ways), largest first, at most
    /// [`TENANTS_SHOWN`]; empty without resolvers. `GET /api/v1/tenants` has them all.
    #[serde(default)]
    pub tenants: Vec<TenantUsage>,
}

/// Tenants in a snapshot: a page lists a screenful; a platform may have thousands.
pub const TENANTS_SHOWN: usize = 50;

/// One tenant's usage since the process started (see `accounting`), as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantUsage {
    /// The answer's `tenant`, else the routing key.
    pub tenant: String,
    /// Client connections.
    pub connections: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// HTTP requests.
    pub requests: u64,
    /// PostgreSQL transactions (transaction pooling).
    pub transactions: u64,
    /// SMTP messages the servers accepted.
    #[serde(default)]
    pub messages: u64,
    /// Connection time, milliseconds.
    pub connection_ms: u64,
}

/// The [`TENANTS_SHOWN`] tenants with the most bytes, largest first.
fn top_tenants(shared: &Shared) -> Vec<TenantUsage> {
    let mut tenants: Vec<TenantUsage> = shared
        .context
        .accounting
        .snapshot()
        .into_iter()
        .map(
            |(
                tenant,
                [
                    connections,
                    bytes_in,
                    bytes_out,
                    requests,
                    transactions,
                    messages,
                    connection_ms,
                ],
            )| {
                TenantUsage {
                    tenant,
                    connections,
                    bytes_in,
                    bytes_out,
                    requests,
                    transactions,
                    messages,
                    connection_ms,
                }
            },
        )
        .collect();
    tenants.sort_by_key(|t| std::cmp::Reverse(t.bytes_in.saturating_add(t.bytes_out)));
    tenants.truncate(TENANTS_SHOWN);
    tenants
}

/// Takes the snapshot.
pub fn snapshot(shared: &Shared) -> Stats {
    Stats {
        version: env!("CARGO_PKG_VERSION").to_string(),
        timestamp_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default(),
        uptime_seconds: shared.started.elapsed().as_secs_f64(),
        token_required: shared.admin_token.is_some(),
        listeners: status::listeners(shared),
        pools: status::pools(shared),
        tenants: top_tenants(shared),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every object key in `value`, recursively.
    fn keys(value: &serde_json::Value, into: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    into.push(key.clone());
                    keys(value, into);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| keys(item, into)),
            _ => {}
        }
    }

    #[test]
    fn the_snapshot_has_its_documented_shape() {
        let config = crate::testing::load_config(
            r#"
[admin]
listen = "127.0.0.1:0"
token = "secret"

[[listener]]
name = "front"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "app"
max_connections = 5

[[pool]]
name = "app"
servers = [{ name = "a", address = "127.0.0.1:1", max_connections = 3 }, { address = "127.0.0.1:2" }]
"#,
        )
        .expect("valid config");
        let shared = crate::runtime::build(&config, "t.toml".into(), &mut Default::default())
            .expect("built");
        let stats = snapshot(&shared);
        let value = serde_json::to_value(&stats).expect("JSON");
        assert!(value["token_required"].as_bool().expect("bool"));
        assert!(value["timestamp_ms"].as_u64().expect("number") > 1_600_000_000_000);
        assert!(value["uptime_seconds"].as_f64().expect("number") >= 0.0);
        let listener = &value["listeners"][0];
        assert_eq!(listener["max_connections"], 5);
        assert_eq!(listener["tls"], false);
        let servers = &value["pools"][0]["servers"];
        assert_eq!(servers[0]["max_connections"], 3);
        assert!(servers[1]["max_connections"].is_null(), "no limit");
        assert_eq!(servers[1]["name"], "127.0.0.1:2");
        assert!(servers[0]["check_duration_ms"].is_null(), "not checked yet");
        assert!(servers[0]["state_age_seconds"].as_f64().is_some());
        // It reads back as the type `ctl` and the tests use.
        let back: Stats = serde_json::from_value(value.clone()).expect("reads back");
        assert_eq!(back.pools[0].servers.len(), 2);
        // Every field is in the docs' stats section.
        let docs = include_str!("../../../docs/configuration.md");
        let section = docs
            .split("### Dashboard and stats")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("the docs have the section");
        let mut found = Vec::new();
        keys(&value, &mut found);
        for key in found {
            assert!(
                section.contains(&format!("`{key}`")) || section.contains(&format!("`{key}[]`")),
                "`{key}` is documented"
            );
        }
    }
}
