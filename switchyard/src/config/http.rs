//! The keys of HTTP: a listener's `[listener.http]` limits and its routes, the pool keys
//! HTTP listeners read, and the `http` health check; with the rules they must follow.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::duration;
use super::listener_keys::{ListenerKeys, Surroundings};
use super::report::ErrorSink;
use crate::key_path;

/// What only an `http` listener has.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HttpListener {
    /// Request limits and forwarding headers (`[listener.http]`).
    #[serde(default)]
    pub http: HttpOptions,
    /// Routing rules; first match wins, else the listener's `pool`.
    #[serde(default)]
    pub routes: Vec<HttpRoute>,
}

/// What an HTTP listener accepts from clients and adds to requests it forwards.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpOptions {
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in a request; more gets 431.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Longest request target in bytes; longer gets 414.
    #[serde(default = "defaults::max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Largest request body in bytes; larger gets 413. Absent: no limit.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Also send an RFC 7239 `Forwarded` header (the `X-Forwarded-*` ones are always sent).
    #[serde(default)]
    pub forwarded: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            max_uri_bytes: defaults::max_uri_bytes(),
            max_body_bytes: None,
            forwarded: false,
        }
    }
}

/// An HTTP routing rule: when every given match key matches a request, use `pool`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    /// The pool this route sends to.
    pub pool: String,
    /// The request's authority (Host), exact or `*.suffix`.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Method (exact, case-sensitive as methods are).
    #[serde(default)]
    pub method: Option<String>,
    /// Headers that must be present with these exact values (names case-insensitive).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// TLS SNI of the client's connection.
    #[serde(default)]
    pub sni: Option<String>,
    /// Header rules applied to requests this route forwards.
    #[serde(default)]
    pub request_headers: HeaderRules,
    /// Header rules applied to responses this route returns.
    #[serde(default)]
    pub response_headers: HeaderRules,
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers to set, replacing any present.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to append, keeping any present.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

impl HeaderRules {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// The keys of a pool that HTTP listeners read (written at the pool's top level).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HttpPool {
    /// HTTP version spoken to the servers.
    #[serde(default)]
    pub http_version: HttpVersion,
    /// Keep the request's authority as `Host`; `false` sends the server address instead.
    #[serde(default = "defaults::preserve_host")]
    pub preserve_host: bool,
    /// The keep-alive connections kept to each server.
    #[serde(default)]
    pub keep_alive: UpstreamKeepAlive,
}

/// HTTP versions spoken to servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HttpVersion {
    /// HTTP/1.1 with a keep-alive connection pool per server.
    #[default]
    #[serde(rename = "1.1")]
    Http1,
    /// HTTP/2 (prior knowledge, cleartext): one multiplexed connection per server.
    #[serde(rename = "2")]
    Http2,
}

/// Reuse of HTTP/1.1 server connections.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamKeepAlive {
    /// Idle connections kept per server; 0 closes each after its request.
    #[serde(default = "defaults::max_idle")]
    pub max_idle: usize,
    /// How long an idle connection is kept.
    #[serde(default = "defaults::idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// Requests sent over one connection before it is closed.
    #[serde(default = "defaults::max_requests")]
    pub max_requests: u32,
}

impl Default for UpstreamKeepAlive {
    fn default() -> Self {
        Self {
            max_idle: defaults::max_idle(),
            idle_timeout: defaults::idle_timeout(),
            max_requests: defaults::max_requests(),
        }
    }
}

/// The `http` health check: a request whose answer must have an expected status (and body).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HttpCheck {
    /// Path requested.
    #[serde(default = "defaults::check_path")]
    pub path: String,
    /// `Host` sent; defaults to the server address.
    #[serde(default)]
    pub host: Option<String>,
    /// Method.
    #[serde(default = "defaults::check_method")]
    pub method: String,
    /// Statuses accepted, as `"200-399"` or `"204"`.
    #[serde(default = "defaults::check_status")]
    pub expect_status: String,
    /// Text the body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        Self {
            path: defaults::check_path(),
            host: None,
            method: defaults::check_method(),
            expect_status: defaults::check_status(),
            body_contains: None,
        }
    }
}

/// A range of HTTP statuses an `http` check accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest accepted status.
    pub low: u16,
    /// Highest accepted status.
    pub high: u16,
}

impl StatusRange {
    /// Parses `"LOW-HIGH"` or a single status; statuses run from 100 to 599.
    pub fn parse(text: &str) -> Result<Self, String> {
        let status = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|n| (100..=599).contains(n))
                .ok_or_else(|| format!("`{s}` is not an HTTP status (100 to 599)"))
        };
        let (low, high) = match text.split_once('-') {
            Some((low, high)) => (status(low)?, status(high)?),
            None => (status(text)?, status(text)?),
        };
        if low > high {
            return Err(format!("`{text}`: the range is empty"));
        }
        Ok(Self { low, high })
    }

    /// Whether `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

/// The ALPN protocols an `http` listener offers when its `tls` names none: HTTP/2 first.
pub const DEFAULT_ALPN: [&str; 2] = ["h2", "http/1.1"];

impl ListenerKeys for HttpListener {
    fn route_pools(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.pool.as_str()).collect()
    }

    /// Limits large enough to serve ordinary requests, routes that can match.
    fn validate(&self, _around: &Surroundings<'_>, i: usize, sink: &mut ErrorSink<'_>) {
        validate_listener(self, i, sink);
    }
}

fn validate_listener(http: &HttpListener, i: usize, sink: &mut ErrorSink<'_>) {
    let limits = &http.http;
    let mut limit = |key: &str, problem: Option<&str>| {
        if let Some(problem) = problem {
            sink.at(&key_path!("listener", i, "http", key), problem);
        }
    };
    limit(
        "max_header_bytes",
        (limits.max_header_bytes < 1024).then_some("must be at least 1024"),
    );
    limit(
        "max_headers",
        (limits.max_headers == 0).then_some("must be at least 1"),
    );
    limit(
        "max_uri_bytes",
        (limits.max_uri_bytes < 16).then_some("must be at least 16"),
    );
    for (r, route) in http.routes.iter().enumerate() {
        let mut report = |key: &str, message: String| {
            sink.at(&key_path!("listener", i, "routes", r, key), message)
        };
        if let Some(host) = &route.host
            && let Err(message) = crate::authority::route_pattern(host)
        {
            report("host", message);
        }
        if let Some(method) = &route.method
            && hyper::Method::from_bytes(method.as_bytes()).is_err()
        {
            report("method", format!("`{method}` is not a valid HTTP method"));
        }
        for name in route.headers.keys() {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                report("headers", format!("`{name}` is not a valid header name"));
            }
        }
        validate_rules(&route.request_headers, &mut |m| {
            report("request_headers", m)
        });
        validate_rules(&route.response_headers, &mut |m| {
            report("response_headers", m)
        });
    }
}

/// Reports header names and values in `rules` that are not valid HTTP.
fn validate_rules(rules: &HeaderRules, report: &mut dyn FnMut(String)) {
    let names = rules
        .remove
        .iter()
        .chain(rules.set.keys())
        .chain(rules.add.keys());
    for name in names {
        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            report(format!("`{name}` is not a valid header name"));
        }
    }
    for value in rules.set.values().chain(rules.add.values()) {
        if hyper::header::HeaderValue::from_str(value).is_err() {
            report(format!("`{value}` is not a valid header value"));
        }
    }
}

/// Checks an `http` health check: a path, a method and statuses that can be sent and met.
pub fn validate_check(check: &HttpCheck, i: usize, sink: &mut ErrorSink<'_>) {
    if !check.path.starts_with('/') {
        sink.at(&key_path!("pool", i, "health", "path"), "must start with /");
    }
    if let Err(e) = StatusRange::parse(&check.expect_status) {
        sink.at(&key_path!("pool", i, "health", "expect_status"), e);
    }
    if hyper::Method::from_bytes(check.method.as_bytes()).is_err() {
        sink.at(
            &key_path!("pool", i, "health", "method"),
            "not a valid HTTP method",
        );
    }
}

/// Default values, named so the schema documentation and the code agree.
mod defaults {
    use std::time::Duration;

    pub fn max_header_bytes() -> usize {
        32 * 1024
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_uri_bytes() -> usize {
        8 * 1024
    }
    pub fn preserve_host() -> bool {
        true
    }
    pub fn max_idle() -> usize {
        1024
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_requests() -> u32 {
        1000
    }
    pub fn check_path() -> String {
        "/".into()
    }
    pub fn check_method() -> String {
        "GET".into()
    }
    pub fn check_status() -> String {
        "200-399".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse_single_statuses_and_ranges() {
        assert_eq!(
            StatusRange::parse("200-399"),
            Ok(StatusRange {
                low: 200,
                high: 399
            })
        );
        assert!(StatusRange::parse("204").is_ok_and(|r| r.contains(204) && !r.contains(200)));
        assert!(StatusRange::parse("399-200").is_err());
        assert!(StatusRange::parse("99").is_err());
    }
}
