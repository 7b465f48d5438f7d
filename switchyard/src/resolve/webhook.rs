//! The `http` resolver: a webhook asked with `POST {"key","protocol","listener","client"}`;
//! 200 carries an answer, 404 means no route, 403 refused; anything else is a failure
//! (a stale answer is served within `stale_if_error`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri};

use super::{Fetched, LookupContext, answer};

/// The largest answer body read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A webhook and the headers sent to it.
#[derive(Debug)]
pub struct Webhook {
    uri: Uri,
    authority: String,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    timeout: Duration,
}

impl Webhook {
    /// Checks the URL and headers (secrets resolved).
    pub fn new(
        url: &str,
        headers: &std::collections::BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("url `{url}`: {e}"))?;
        let authority = match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(authority)) => authority.to_string(),
            _ => {
                return Err(format!(
                    "url `{url}`: only http://host:port/path is supported"
                ));
            }
        };
        let headers = headers
            .iter()
            .map(|(name, value)| {
                let value = crate::secret::resolve(value)?;
                Ok((
                    name.parse().map_err(|e| format!("header `{name}`: {e}"))?,
                    value.parse().map_err(|e| format!("header `{name}`: {e}"))?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            uri,
            authority,
            headers,
            timeout,
        })
    }

    /// Asks the webhook about `key`.
    pub async fn fetch(&self, key: &str, context: &LookupContext<'_>) -> Result<Fetched, String> {
        tokio::time::timeout(self.timeout, self.call(key, context))
            .await
            .map_err(|_| format!("webhook {} timed out", self.uri))?
    }

    async fn call(&self, key: &str, context: &LookupContext<'_>) -> Result<Fetched, String> {
        let body = serde_json::json!({
            "key": key,
            "protocol": context.protocol,
            "listener": context.listener,
            "client": context.client.map(|c| c.ip().to_string()),
        });
        let port = self.uri.port_u16().unwrap_or(80);
        let host = self.uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("webhook {}: {e}", self.uri))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("webhook {}: {e}", self.uri))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("webhook {}: {e}", self.uri))?;
        match response.status() {
            StatusCode::OK => {
                let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                    .collect()
                    .await
                    .map_err(|e| format!("webhook {} answer: {e}", self.uri))?
                    .to_bytes();
                answer::parse(&bytes)
                    .map(Fetched::Answer)
                    .map_err(|e| format!("webhook {}: {e}", self.uri))
            }
            StatusCode::NOT_FOUND => Ok(Fetched::NoRoute),
            StatusCode::FORBIDDEN => Ok(Fetched::Refused),
            status => Err(format!("webhook {} answered {status}", self.uri)),
        }
    }
}
