//! A small admin API client, used by `switchyard ctl` and by the tests.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A pool or server name as one path segment: every byte but the unreserved ones
/// (RFC 3986) percent-encoded, so that any name (an address with `:` or `[...]`, a space, a
/// `/`) reaches the API whole; the API decodes segments one by one.
pub fn path_segment(name: &str) -> String {
    let mut segment = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    segment
}

/// An admin API endpoint: `http://host:port` or `host:port`.
#[derive(Debug, Clone)]
pub struct AdminClient {
    authority: String,
    token: Option<String>,
}

impl AdminClient {
    /// A client for `base`, sending `token` as a bearer token when given.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, String> {
        let authority = base
            .strip_prefix("http://")
            .unwrap_or(base)
            .trim_end_matches('/')
            .to_string();
        if authority.is_empty() || authority.contains('/') || base.starts_with("https://") {
            return Err(format!(
                "admin address `{base}` must look like http://127.0.0.1:9900"
            ));
        }
        Ok(Self { authority, token })
    }

    /// Sends one request; returns the status code and body text.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), String> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot reach admin API at {}: {e}", self.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("admin API: {e}"))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        // Mutating calls must say JSON even without a body (`reload`): the API refuses
        // others, as a browser page could send them from another origin.
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("admin API: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("admin API: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("admin API: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
