//! HTTP test tools: an in-test hyper backend (HTTP/1.1 and h2c) that counts connections,
//! a one-request hyper client, and raw-bytes exchanges for malformed input.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Response bodies the test backends send.
pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A full body from bytes.
pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A hyper backend; stops when dropped.
pub struct HttpBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    /// Requests received.
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpBackend {
    /// Serves every request (HTTP/1.1 or h2c) with `handler`.
    pub async fn start<F, Fut>(handler: F) -> HttpBackend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let (accepted, open, requests) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let handler = Arc::new(handler);
        let counters = (accepted.clone(), open.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counters.0.fetch_add(1, Ordering::SeqCst);
                counters.1.fetch_add(1, Ordering::SeqCst);
                let (handler, open, requests) =
                    (handler.clone(), counters.1.clone(), counters.2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let response = handler(request);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        HttpBackend {
            addr,
            accepted,
            open,
            requests,
            task,
        }
    }

    /// Answers every request with a text body describing it: `METHOD TARGET VERSION`, then
    /// one `name: value` line per header in order, then a line with the body length.
    pub async fn describe() -> HttpBackend {
        Self::start(|request: Request<Incoming>| async move {
            let mut text = format!(
                "{} {} {:?}\n",
                request.method(),
                request.uri(),
                request.version()
            );
            for (name, value) in request.headers() {
                text.push_str(&format!(
                    "{name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            let body = request.into_body().collect().await.map(|b| b.to_bytes());
            text.push_str(&format!("body-length: {}\n", body.map_or(0, |b| b.len())));
            Response::new(full(text))
        })
        .await
    }
}

/// One parsed response.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// The whole body.
    pub body: String,
}

/// Sends `request` over a new HTTP/1.1 connection to `front` and reads the whole answer.
pub async fn send(front: SocketAddr, request: Request<TestBody>) -> Answer {
    let stream = TcpStream::connect(front).await.expect("connect to proxy");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `GET path` with extra headers (and `Host: example.com` unless they name one).
pub async fn get(front: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(path);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request = request.header("host", "example.com");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(front, request.body(full("")).expect("request")).await
}

/// Writes `bytes` on a new connection and reads until the proxy closes it.
pub async fn raw(front: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(front).await.expect("connect to proxy");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `curl` with `args` (`-s` added) and returns its stdout; panics if it fails.
pub async fn curl(args: &[&str]) -> String {
    let output = tokio::process::Command::new("curl")
        .arg("-s")
        .args(args)
        .output()
        .await
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
