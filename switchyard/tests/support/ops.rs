//! Helpers for operational tests: access log lines, listener addresses, Prometheus text,
//! and reading a connection until the proxy closes it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{DEADLINE, Proxy, wait_until};

/// The address a listener actually bound (configs use port 0).
pub async fn listener_addr(proxy: &Proxy, name: &str) -> SocketAddr {
    let listener = proxy
        .listeners()
        .await
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"));
    listener.address.parse().expect("listener address")
}

/// Every JSON access log line written to stdout so far.
pub fn access_lines(proxy: &Proxy) -> Vec<Value> {
    proxy
        .stdout()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v.get("termination").is_some())
        .collect()
}

/// Waits until the access log has, for each `(termination, count)`, exactly `count`
/// connection lines that ended so.
pub async fn wait_terminations(proxy: &Proxy, expected: &[(&str, usize)]) {
    let ended = |name: &str| {
        access_lines(proxy)
            .iter()
            .filter(|line| line["termination"] == name)
            .count()
    };
    wait_until(
        &format!("terminations {expected:?} in the access log"),
        || async { expected.iter().all(|&(name, count)| ended(name) == count) },
    )
    .await;
}

/// Waits for an access log line matching `matches`, and returns it.
pub async fn wait_access(proxy: &Proxy, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    wait_until(&format!("access log line: {what}"), || async {
        access_lines(proxy).iter().any(&matches)
    })
    .await;
    access_lines(proxy)
        .into_iter()
        .find(|v| matches(v))
        .expect("line seen a moment ago")
}

/// Matches the access log line of the client connection whose local port is `port`
/// (its `client` field ends in `:PORT`); for `wait_access`.
pub fn from_port(port: u16) -> impl Fn(&Value) -> bool {
    let suffix = format!(":{port}");
    move |line| field(line, "client").ends_with(&suffix)
}

/// Matches the access log lines of connections accepted on listener `name`; for
/// `wait_access`.
pub fn on_listener(name: &str) -> impl Fn(&Value) -> bool {
    move |line| field(line, "listener") == name
}

/// The local port of a client connection: what `from_port` / `access_for` look for.
pub fn port_of(stream: &TcpStream) -> u16 {
    stream.local_addr().expect("local addr").port()
}

/// Waits for the access log line of the client connection whose local port is `port`.
pub async fn access_for(proxy: &Proxy, port: u16) -> Value {
    wait_access(
        proxy,
        &format!("connection from port {port}"),
        from_port(port),
    )
    .await
}

/// A string field of an access log line.
pub fn field<'a>(line: &'a Value, key: &str) -> &'a str {
    line.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// A numeric field of an access log line.
pub fn number(line: &Value, key: &str) -> u64 {
    line.get(key).and_then(Value::as_u64).unwrap_or_default()
}

/// Writes `message` and reads the same number of bytes back (an echo round trip).
pub async fn round_trip(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    message: &[u8],
) -> Vec<u8> {
    stream.write_all(message).await.expect("write to proxy");
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut back))
        .await
        .expect("echo within the deadline")
        .expect("echo read");
    back
}

/// Reads exactly `len` bytes; panics if they have not arrived within `DEADLINE`.
pub async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut data))
        .await
        .expect("data within the deadline")
        .expect("read");
    data
}

/// Reads until the peer closes (EOF or reset); returns what arrived before that.
/// Panics if the connection is still open after `DEADLINE`.
pub async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {DEADLINE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// One sample of Prometheus text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total` etc.).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses Prometheus / OpenMetrics text, failing on any line that is neither a comment nor
/// `name{labels} value`, and on a sample whose family has no `# TYPE` line before it.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut typed: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") {
                let name = words.next().ok_or_else(|| bad("TYPE without a name"))?;
                words.next().ok_or_else(|| bad("TYPE without a type"))?;
                typed.push(name.to_string());
            }
            continue;
        }
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .ok_or_else(|| bad("no value"))?;
        let name = &line[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(bad("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix("{}") {
            rest = after;
        } else if let Some(inner) = rest.strip_prefix('{') {
            // name="value" pairs; a value escapes `\`, `"` and newlines with a backslash.
            let mut chars = inner.char_indices();
            loop {
                let key: String = chars
                    .by_ref()
                    .map(|(_, c)| c)
                    .take_while(|&c| c != '=')
                    .collect();
                let valid_key = !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !key.starts_with(|c: char| c.is_ascii_digit());
                if !valid_key {
                    return Err(bad("bad label name"));
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(bad("label value not quoted"));
                }
                let mut value = String::new();
                loop {
                    match chars.next().map(|(_, c)| c) {
                        Some('"') => break,
                        Some('\\') => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c @ ('\\' | '"')) => value.push(c),
                            _ => return Err(bad("bad escape in a label value")),
                        },
                        Some(c) => value.push(c),
                        None => return Err(bad("unclosed label value")),
                    }
                }
                labels.insert(key, value);
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((index, '}')) => {
                        rest = &inner[index + 1..];
                        break;
                    }
                    _ => return Err(bad("unclosed labels")),
                }
            }
        }
        let value_text = rest
            .strip_prefix(' ')
            .ok_or_else(|| bad("no space before the value"))?;
        let value_text = value_text.split(' ').next().unwrap_or_default();
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().map_err(|_| bad("value is not a number"))?,
        };
        if !typed.iter().any(|family| name.starts_with(family.as_str())) {
            return Err(bad("sample without a # TYPE line for its family"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// Scrapes `/metrics` now and returns the value of the sample `name` whose labels include
/// all of `labels`; panics (showing the text) if the text is invalid or has no such sample.
pub async fn scrape(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = proxy.metrics().await;
    let samples = parse_metrics(&text).expect("valid metrics text");
    metric(&samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// The transaction pools a pool's status lists (what the postgres and mysql front ends add to it).
pub fn tx_pools(
    pool: &switchyard::admin::PoolStatus,
) -> Vec<switchyard::upstream::tx_pool::TxPoolStatus> {
    pool.protocol
        .get("transaction_pools")
        .map(|value| serde_json::from_value(value.clone()).expect("transaction_pools JSON"))
        .unwrap_or_default()
}
