//! HTTP test tools: an in-test hyper backend (HTTP/1.1 and h2c, or HTTPS) that counts
//! connections, a one-request hyper client (plain or over TLS), and raw-bytes exchanges for
//! malformed input.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
        Self::serve(None, handler).await
    }

    /// Like `start`, over TLS with `config` (an HTTPS backend; its ALPN list decides
    /// whether clients may speak HTTP/2).
    pub async fn start_tls<F, Fut>(config: Arc<rustls::ServerConfig>, handler: F) -> HttpBackend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(config)), handler).await
    }

    async fn serve<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> HttpBackend
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
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let response = handler(request);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // The proxy's header limits are under test, not the backend's.
                    builder.http1().max_headers(1000);
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
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
        Self::start(describe).await
    }

    /// Like `describe`, over TLS with `config`.
    pub async fn describe_tls(config: Arc<rustls::ServerConfig>) -> HttpBackend {
        Self::start_tls(config, describe).await
    }
}

/// The `describe` backend's answer.
async fn describe(request: Request<Incoming>) -> Response<TestBody> {
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
    send_on(stream, false, request).await
}

/// Sends `request` over `stream` (plain or TLS) in HTTP/2 when `h2`, else HTTP/1.1, and
/// reads the whole answer.
pub async fn send_on<S>(stream: S, h2: bool, request: Request<TestBody>) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        sender.send_request(request).await.expect("response")
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(connection);
        sender.send_request(request).await.expect("response")
    };
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

/// What an HTTP load saw: requests answered `200`, and every other outcome described.
#[derive(Debug, Default)]
pub struct HttpLoad {
    /// Requests answered `200` with the whole body.
    pub ok: AtomicUsize,
    /// Everything else: error statuses, refused or reset connections, cut bodies.
    pub failures: Mutex<Vec<String>>,
}

impl HttpLoad {
    /// Starts two loads on `front` until `stop`: one on new connections, one keep-alive
    /// client ([`http_load`]); returns their shared tally and tasks.
    pub fn spawn(
        front: SocketAddr,
        stop: &Arc<AtomicBool>,
    ) -> (Arc<HttpLoad>, Vec<JoinHandle<()>>) {
        Self::spawn_posting(front, stop, 0)
    }

    /// Like [`Self::spawn`], each request a `POST` of `body` bytes (a `GET` for 0).
    pub fn spawn_posting(
        front: SocketAddr,
        stop: &Arc<AtomicBool>,
        body: usize,
    ) -> (Arc<HttpLoad>, Vec<JoinHandle<()>>) {
        let load = Arc::new(HttpLoad::default());
        let tasks = [false, true]
            .into_iter()
            .map(|keep_alive| {
                let (stop, load) = (stop.clone(), load.clone());
                tokio::spawn(http_load(front, keep_alive, body, stop, load))
            })
            .collect();
        (load, tasks)
    }

    /// Requests that went wrong so far.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("failures").clone()
    }
}

/// `GET /` (or a `POST` of `body` bytes) to `front` with a hyper client until `stop`.
/// With `keep_alive` the client keeps its connections (a pooled client: connections
/// reused, replaced when the proxy closes them); without, each request opens a new
/// connection.
pub async fn http_load(
    front: SocketAddr,
    keep_alive: bool,
    body: usize,
    stop: Arc<AtomicBool>,
    load: Arc<HttpLoad>,
) {
    use hyper_util::client::legacy::Client;
    let mut builder = Client::builder(TokioExecutor::new());
    if !keep_alive {
        builder.pool_max_idle_per_host(0);
    }
    let client: Client<_, TestBody> = builder.build_http();
    let uri: hyper::Uri = format!("http://{front}/").parse().expect("uri");
    while !stop.load(Ordering::Relaxed) {
        let method = if body == 0 { "GET" } else { "POST" };
        let request = Request::builder()
            .method(method)
            .uri(uri.clone())
            .header("host", "load.example.com")
            .body(full(vec![b'x'; body]))
            .expect("request");
        let outcome = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            match status.as_u16() {
                200 => Ok(()),
                other => Err(format!(
                    "{other}: {}",
                    String::from_utf8_lossy(&body.to_bytes())
                )),
            }
        };
        let failure = match tokio::time::timeout(super::DEADLINE, outcome).await {
            Ok(Ok(())) => {
                load.ok.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(Err(failure)) => failure,
            Err(_) => "timed out".to_string(),
        };
        let kind = if keep_alive {
            "keep-alive"
        } else {
            "new connection"
        };
        load.failures
            .lock()
            .expect("failures")
            .push(format!("{kind}: {failure}"));
    }
}

/// What a hand-written HTTP/2 exchange ([`h2_raw`]) got back on its stream.
#[derive(Debug, Default)]
pub struct H2Answer {
    /// The response status, when the proxy sent one the HPACK static table holds (200,
    /// 204, 206, 304, 400, 404, 500: how hyper's encoder writes those).
    pub status: Option<u16>,
    /// The response body.
    pub body: String,
    /// The error code of a `RST_STREAM` or `GOAWAY` that ended the stream instead.
    pub reset: Option<u32>,
}

/// Sends one HTTP/2 request on a new h2c connection, its header block written field by
/// field as given (pseudo-fields included, HPACK literals without indexing or Huffman), and
/// reads stream 1's answer until it ends. Client libraries keep requests well-formed; this
/// sends what they would not (`:scheme` without `:authority`, a `host` that differs from
/// `:authority`).
pub async fn h2_raw(front: SocketAddr, fields: &[(&str, &str)]) -> H2Answer {
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).expect("frame length");
        let mut frame = length.to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }
    let mut block = Vec::new();
    for (name, value) in fields {
        // Literal header field without indexing, new name (RFC 7541 §6.2.2).
        block.push(0);
        for text in [name, value] {
            let length = u8::try_from(text.len()).ok().filter(|&n| n < 0x7f);
            block.push(length.expect("short header text"));
            block.extend_from_slice(text.as_bytes());
        }
    }
    let mut stream = TcpStream::connect(front).await.expect("connect to proxy");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
    stream.write_all(&hello).await.expect("write request");
    let mut answer = H2Answer::default();
    loop {
        let mut head = [0u8; 9];
        if stream.read_exact(&mut head).await.is_err() {
            return answer;
        }
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let on_stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        if stream.read_exact(&mut payload).await.is_err() {
            return answer;
        }
        match (kind, on_stream) {
            (SETTINGS, 0) if flags & 0x1 == 0 => {
                let ack = frame(SETTINGS, 0x1, 0, &[]);
                stream.write_all(&ack).await.expect("settings ack");
            }
            (HEADERS, 1) => {
                // An indexed field first (RFC 7541 §6.1): `:status` from the static table.
                let indexed = payload.first().filter(|&&b| b & 0x80 != 0);
                answer.status = match indexed.map(|b| b & 0x7f) {
                    Some(8) => Some(200),
                    Some(9) => Some(204),
                    Some(10) => Some(206),
                    Some(11) => Some(304),
                    Some(12) => Some(400),
                    Some(13) => Some(404),
                    Some(14) => Some(500),
                    _ => None,
                };
            }
            (DATA, 1) => answer.body.push_str(&String::from_utf8_lossy(&payload)),
            (RST_STREAM, 1) => {
                answer.reset = payload
                    .get(..4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                return answer;
            }
            (GOAWAY, 0) => {
                answer.reset = payload
                    .get(4..8)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                return answer;
            }
            _ => {}
        }
        if on_stream == 1 && matches!(kind, HEADERS | DATA) && flags & END_STREAM != 0 {
            return answer;
        }
    }
}
