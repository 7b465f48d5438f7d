//! A webhook the proxy calls (the `http` resolver, the `http` usage sink): an `http://` or
//! `https://` URL checked once, headers with their `env:`/`file:` secrets resolved once,
//! TLS by rustls (the Mozilla roots, or the CAs of a `ca` file), and each call one `POST`
//! of JSON on a connection of its own, the whole exchange within a timeout. Calls are rare
//! (a resolver's misses, one per usage batch), so no connection is kept between them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The largest response body read.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// A webhook and what is sent with every call.
pub struct HttpLink {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Time allowed for one call: connect, TLS, request and response body.
    pub timeout: Duration,
}

impl std::fmt::Debug for HttpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers carry secrets: not shown.
        f.debug_struct("HttpLink")
            .field("uri", &self.uri)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A webhook's answer: its status, and its body for a 2xx.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The body of a 2xx (empty otherwise), at most 64 KiB.
    pub body: Bytes,
}

impl HttpLink {
    /// Checks `url`, resolves the `headers`' secrets and, for https, reads `ca` (PEM; the
    /// Mozilla roots without it).
    pub fn new(
        url: &str,
        headers: &BTreeMap<String, String>,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let uri = crate::config::resolver::webhook_url(url)?;
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("url `{url}`: server name `{host}`: {e}"))?;
            let connector = tokio_rustls::TlsConnector::from(crate::tls::https_client(ca)?);
            Some((connector, name))
        } else {
            None
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
            host,
            port,
            tls,
            headers,
            timeout,
        })
    }

    /// The URL, for messages.
    pub fn url(&self) -> &Uri {
        &self.uri
    }

    /// POSTs `body` (JSON) with the configured headers and `extra` ones.
    pub async fn post(
        &self,
        body: Vec<u8>,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Reply, String> {
        tokio::time::timeout(self.timeout, self.call(body, extra))
            .await
            .map_err(|_| format!("{} timed out", self.uri))?
            .map_err(|e| format!("{}: {e}", self.uri))
    }

    async fn call(
        &self,
        body: Vec<u8>,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                hyper::header::HOST,
                self.uri.authority().map_or("", |a| a.as_str()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (name, value) in self.headers.iter().chain(extra) {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| e.to_string())?;
        match &self.tls {
            None => exchange(stream, request).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                exchange(stream, request).await
            }
        }
    }
}

/// Sends `request` over `stream` (HTTP/1.1) and reads the answer.
async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Reply, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = if status.is_success() {
        Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("answer: {e}"))?
            .to_bytes()
    } else {
        Bytes::new()
    };
    Ok(Reply { status, body })
}
