//! The `http` check: a request (method, path, Host configurable) that must answer a status
//! in the expected range and, optionally, a body containing some text.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::config::{CheckOptions, HealthConfig, HttpCheck, StatusRange};
use crate::health::{Check, Outcome};
use crate::upstream::{Pool, Server, connect_server};

/// Most body bytes a check reads when looking for `body_contains`.
const BODY_LIMIT: usize = 64 * 1024;

/// The `http` check.
#[derive(Debug)]
pub struct HttpHealthCheck;

impl Check for HttpHealthCheck {
    fn check<'a>(
        &'a self,
        pool: &'a Pool,
        server: &'a Server,
        health: &'a HealthConfig,
    ) -> Outcome<'a> {
        Box::pin(async move {
            let CheckOptions::Http(check) = &health.options else {
                return Err("not an http check".to_string());
            };
            request(pool, server, check).await
        })
    }
}

/// Sends the configured request over a fresh connection and checks the answer.
async fn request(pool: &Pool, server: &Server, health: &HttpCheck) -> Result<(), String> {
    let expected = StatusRange::parse(&health.expect_status)?;
    let method = hyper::Method::from_bytes(health.method.as_bytes())
        .map_err(|_| format!("bad method {}", health.method))?;
    let (stream, _) = connect_server(server, pool)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let stream = crate::upstream::secure_upstream(pool, server, stream, &[])
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
    fn bodies_are_searched_for_the_text() {
        assert!(contains(b"status: ok", b"ok"));
        assert!(!contains(b"status: ko", b"ok"));
    }
}
