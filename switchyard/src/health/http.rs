//! The `http` check: a GET that must answer 2xx or 3xx.

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::config::HealthConfig;
use crate::upstream::{Pool, Server, connect_server};

/// Sends `GET path` over a fresh connection and checks the status.
pub async fn check(pool: &Pool, server: &Server, health: &HealthConfig) -> Result<(), String> {
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
    let request = hyper::Request::get(health.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "switchyard-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("http: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("http status {}", status.as_u16()))
    }
}
