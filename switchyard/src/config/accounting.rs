//! `[accounting]`: usage per tenant (the answer's `tenant`, else the routing key), and
//! where it is delivered for billing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::duration;
use super::report::ErrorSink;
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

/// A usage sink: a Redis server (`redis`) or a receiver POSTed to (`http`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `redis`: `HINCRBY` on `prefix + tenant`; `http`: one POST per batch.
    pub kind: SinkKind,
    /// `redis`: a `redis://` or `rediss://` URL.
    #[serde(default)]
    pub address: Option<String>,
    /// `redis`: AUTH password (`env:`/`file:` allowed), instead of one in the URL.
    #[serde(default)]
    pub password: Option<String>,
    /// `redis`: hash key prefix; batch ids are remembered under `prefix + "batch:" + id`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// `http`: the receiver's URL (`http://` or `https://host:port/path`).
    #[serde(default)]
    pub url: Option<String>,
    /// `http`: headers sent with every POST (values may be `env:`/`file:` secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `http` over https: PEM CAs the receiver's certificate is verified against instead
    /// of the Mozilla roots; relative to the config file.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// Time allowed for one delivery (a script run, a POST).
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
}

/// The kinds of sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// A Redis (or Valkey) server.
    Redis,
    /// An HTTP(S) receiver.
    Http,
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
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Checks `[accounting]`.
pub fn validate(accounting: Option<&AccountingConfig>, sink: &mut ErrorSink<'_>) {
    let Some(accounting) = accounting else {
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
    let Some(target) = &accounting.sink else {
        return;
    };
    let at = key_path!("accounting", "sink");
    let needs = |key: &str, present: bool, sink: &mut ErrorSink<'_>| {
        if !present {
            sink.at(
                &at,
                format!("a `{}` sink needs `{key}`", target.kind.as_str()),
            );
        }
    };
    // The keys of the other kind are refused: a sink half redis, half http is a mistake.
    let foreign: &[&str] = match target.kind {
        SinkKind::Redis => {
            needs("address", target.address.is_some(), sink);
            if let Some(address) = &target.address
                && redis::parse_redis_url(address).is_none()
            {
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
            &["url", "headers", "ca"]
        }
        SinkKind::Http => {
            needs("url", target.url.is_some(), sink);
            if let Some(url) = &target.url {
                super::resolver::check_webhook(url, &target.headers, &at, sink);
            }
            &["address", "password", "prefix"]
        }
    };
    for key in foreign {
        let path = key_path!("accounting", "sink", *key);
        if sink.is_set(&path) {
            sink.at(
                &path,
                format!("does not apply to a `{}` sink", target.kind.as_str()),
            );
        }
    }
}

impl SinkKind {
    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Http => "http",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::load_str;

    const POOL: &str = "[[pool]]\nname = \"p\"\nservers = [ { address = \"127.0.0.1:1\" } ]\n";

    fn errors(sink: &str) -> String {
        let text = format!("{POOL}[accounting]\nsink = {sink}\n");
        load_str(Path::new("t.toml"), &text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn each_sink_kind_takes_its_own_keys() {
        assert_eq!(
            errors(
                r#"{ kind = "http", url = "https://billing.example/usage", headers = { authorization = "Bearer x" }, timeout = "5s" }"#
            ),
            ""
        );
        assert_eq!(
            errors(r#"{ kind = "redis", address = "redis://127.0.0.1:6379" }"#),
            ""
        );
        for (sink, expected) in [
            (r#"{ kind = "http" }"#, "needs `url`"),
            (r#"{ kind = "redis" }"#, "needs `address`"),
            (
                r#"{ kind = "http", url = "ftp://x/" }"#,
                "only http:// and https://",
            ),
            (
                r#"{ kind = "http", url = "http://x/", prefix = "p:" }"#,
                "sink.prefix",
            ),
            (
                r#"{ kind = "redis", address = "redis://x", url = "http://x/" }"#,
                "sink.url",
            ),
            (
                r#"{ kind = "http", url = "http://x/", headers = { k = "env:SWITCHYARD_NO_SUCH_VAR" } }"#,
                "sink.headers.k",
            ),
        ] {
            let errors = errors(sink);
            assert!(errors.contains(expected), "{sink}: {errors}");
        }
    }
}
