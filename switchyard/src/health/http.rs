//! The `http` check: a request (method, path, Host configurable) that must answer a status
//! in the expected range and, optionally, a body containing some text.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::config::HealthConfig;
use crate::upstream::{Pool, Server, connect_server};

/// Most body bytes a check reads when looking for `body_contains`.
const BODY_LIMIT: usize = 64 * 1024;

/// An inclusive range of HTTP statuses, written `"200-399"` or `"204"`.
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

/// Sends the configured request over a fresh connection and checks the answer.
pub async fn check(pool: &Pool, server: &Server, health: &HealthConfig) -> Result<(), String> {
    let expected = StatusRange::parse(&health.expect_status)?;
    let method = hyper::Method::from_bytes(health.method.as_bytes())
        .map_err(|_| format!("bad method {}", health.method))?;
    let (stream, _) = connect_server(server, pool)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let stream = crate::tls::secure_upstream(pool, server, stream, &[])
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(connection);
    let host = health
        .host
        .clone()
        .unwrap_or_else(|| server.address.to_string());
    let request = hyper::Request::builder()
        .method(method)
        .uri(health.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "switchyard-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("http: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let status = response.status().as_u16();
    if !expected.contains(status) {
        return Err(format!("http status {status}"));
    }
    if let Some(needle) = &health.body_contains {
        let body = Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await
            .map_err(|e| format!("http body: {e}"))?
            .to_bytes();
        if !contains(&body, needle.as_bytes()) {
            return Err(format!("body does not contain `{needle}`"));
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        let range = StatusRange::parse("200-399").expect("range");
        assert!(range.contains(200) && range.contains(399) && !range.contains(400));
        assert_eq!(
            StatusRange::parse("204"),
            Ok(StatusRange {
                low: 204,
                high: 204
            })
        );
        assert!(StatusRange::parse("400-200").is_err());
        assert!(StatusRange::parse("99").is_err());
        assert!(StatusRange::parse("abc").is_err());
        assert!(contains(b"status: ok", b"ok"));
        assert!(!contains(b"status: ko", b"ok"));
    }
}
