//! HTTP message shapes through the proxy: WebSocket tunnels (tokio-tungstenite on both
//! ends) and the tunnel timeout, 100-continue, trailers, HEAD, 204/304, responses read to
//! close, HTTP/2 to the server, and 1 GiB each way in bounded proxy memory.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use support::backends::{Backend, read_request_head};
use support::config::Config;
use support::http::{HttpBackend, TestBody, full, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn http_proxy(server: SocketAddr, pool: &str) -> (support::Proxy, SocketAddr) {
    Config::new()
        .protocol("http")
        .pool(pool)
        .server("a1", server, "")
        .start()
        .await
}

async fn websocket_echo() -> Backend {
    Backend::start("127.0.0.1:0", |stream: TcpStream| async move {
        let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() || socket.send(message).await.is_err() {
                break;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_cross_the_tunnel() {
    let backend = websocket_echo().await;
    let (proxy, front) = http_proxy(backend.addr, "").await;
    let (mut socket, response) = tokio_tungstenite::connect_async(format!("ws://{front}/chat"))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    for i in 0..20 {
        let text = format!("message {i}");
        socket
            .send(Message::text(text.clone()))
            .await
            .expect("send");
        assert_eq!(
            socket.next().await.expect("frame").expect("ok"),
            Message::text(text)
        );
    }
    let binary = vec![7u8; 200_000];
    socket
        .send(Message::binary(binary.clone()))
        .await
        .expect("send");
    assert_eq!(
        socket.next().await.expect("frame").expect("ok"),
        Message::binary(binary)
    );
    socket.close(None).await.expect("close");
    while socket.next().await.is_some() {}
    drop(socket);
    let line = support::ops::wait_access(&proxy, "tunnel line", |l| {
        l.get("status").and_then(|s| s.as_u64()) == Some(101)
    })
    .await;
    assert_eq!(support::ops::field(&line, "termination"), "tunnel_closed");
    assert!(support::ops::number(&line, "bytes_out") > 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_tunnel_timeout() {
    let backend = websocket_echo().await;
    let (proxy, front) = http_proxy(backend.addr, "timeouts = { tunnel = \"300ms\" }").await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{front}/idle"))
        .await
        .expect("handshake");
    socket.send(Message::text("hi")).await.expect("send");
    assert_eq!(
        socket.next().await.expect("frame").expect("ok"),
        Message::text("hi")
    );
    // Now idle: the proxy ends the tunnel.
    let end = tokio::time::timeout(support::DEADLINE, socket.next()).await;
    assert!(matches!(end, Ok(None | Some(Err(_)))), "{end:?}");
    support::ops::wait_access(&proxy, "timeout line", |l| {
        l.get("termination").and_then(|t| t.as_str()) == Some("tunnel_timeout")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let backend = HttpBackend::describe().await;
    let (_proxy, front) = http_proxy(backend.addr, "").await;
    let mut client = TcpStream::connect(front).await.expect("connect");
    client
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .expect("head");
    let mut interim = Vec::new();
    assert!(read_request_head(&mut client, &mut interim).await);
    let interim = String::from_utf8_lossy(&interim).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    client.write_all(b"hello").await.expect("body");
    let mut answer = vec![0u8; 4096];
    let n = client.read(&mut answer).await.expect("answer");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_head_204_and_304_pass_and_keep_the_connection_usable() {
    let backend = HttpBackend::start(|request: Request<Incoming>| async move {
        match request.uri().path() {
            "/trailers" => {
                let frames = vec![
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(
                        "payload",
                    ))),
                    Ok(Frame::trailers({
                        let mut t = hyper::HeaderMap::new();
                        t.insert("x-checksum", "abc123".parse().expect("value"));
                        t
                    })),
                ];
                let mut response = Response::new(BodyExt::boxed(StreamBody::new(
                    futures_util::stream::iter(frames),
                )));
                response
                    .headers_mut()
                    .insert("trailer", "x-checksum".parse().expect("value"));
                response
            }
            "/head" => {
                let mut response = Response::new(full(""));
                response
                    .headers_mut()
                    .insert("content-length", "1234".parse().expect("value"));
                response
            }
            "/204" => {
                let mut response = Response::new(full(""));
                *response.status_mut() = hyper::StatusCode::NO_CONTENT;
                response
            }
            _ => {
                let mut response = Response::new(full(""));
                *response.status_mut() = hyper::StatusCode::NOT_MODIFIED;
                response
                    .headers_mut()
                    .insert("etag", "\"v1\"".parse().expect("value"));
                response
            }
        }
    })
    .await;
    let (_proxy, front) = http_proxy(backend.addr, "").await;
    let stream = TcpStream::connect(front).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "a")
            .header("te", "trailers")
            .body(full(""))
            .expect("request")
    };
    let response = sender
        .send_request(request("GET", "/trailers"))
        .await
        .expect("trailers response");
    let collected = response.into_body().collect().await.expect("body");
    assert_eq!(
        collected.trailers().map(|t| t["x-checksum"].clone()),
        Some("abc123".parse().expect("value"))
    );
    assert_eq!(collected.to_bytes(), "payload");

    sender.ready().await.expect("ready");
    let response = sender
        .send_request(request("HEAD", "/head"))
        .await
        .expect("head");
    assert_eq!(response.headers()["content-length"], "1234");
    assert!(
        response
            .into_body()
            .collect()
            .await
            .expect("empty")
            .to_bytes()
            .is_empty()
    );
    sender.ready().await.expect("ready");
    let response = sender
        .send_request(request("GET", "/204"))
        .await
        .expect("204");
    assert_eq!(response.status(), 204);
    response.into_body().collect().await.expect("empty");
    sender.ready().await.expect("ready");
    let response = sender
        .send_request(request("GET", "/304"))
        .await
        .expect("304");
    assert_eq!(response.status(), 304);
    assert_eq!(response.headers()["etag"], "\"v1\"");
    response.into_body().collect().await.expect("empty");
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        4,
        "one client connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_read_to_close_is_forwarded_whole() {
    let backend = Backend::start("127.0.0.1:0", |mut stream: TcpStream| async move {
        let mut head = Vec::new();
        if read_request_head(&mut stream, &mut head).await {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await;
            for _ in 0..100 {
                let _ = stream.write_all(&[b'z'; 1000]).await;
            }
        }
    })
    .await;
    let (_proxy, front) = http_proxy(backend.addr, "").await;
    for _ in 0..2 {
        let answer = get(front, "/", &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), 100_000);
    }
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 2, "never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_to_the_server_multiplexes_one_connection() {
    let backend = HttpBackend::describe().await;
    let (_proxy, front) = http_proxy(backend.addr, "http_version = \"2\"").await;
    for _ in 0..5 {
        let answer = get(front, "/h2?x=1", &[("host", "svc.example.com")]).await;
        assert_eq!(answer.status, 200);
        assert!(
            answer
                .body
                .starts_with("GET http://svc.example.com/h2?x=1 HTTP/2.0\n"),
            "{}",
            answer.body
        );
    }
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
}

/// A backend whose responses send one chunk and then nothing, forever.
async fn stalling_backend() -> HttpBackend {
    HttpBackend::start(|_| async {
        let first =
            futures_util::stream::iter([Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                Frame::data(Bytes::from("first chunk")),
            )]);
        let body = StreamBody::new(first.chain(futures_util::stream::pending()));
        Response::new(BodyExt::boxed(body))
    })
    .await
}

/// Sends `GET /` and reads the body: `Err` when the proxy cut it short.
async fn read_cut_body(front: SocketAddr) -> Result<Bytes, hyper::Error> {
    let stream = TcpStream::connect(front).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = Request::get("/").header("host", "a").body(full(""));
    let response = sender
        .send_request(request.expect("request"))
        .await
        .expect("response head");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.map(|c| c.to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_silent_mid_body_is_cut_after_the_server_timeout() {
    let backend = stalling_backend().await;
    let (proxy, front) = http_proxy(backend.addr, "timeouts = { server = \"300ms\" }").await;
    assert!(
        read_cut_body(front).await.is_err(),
        "a truncated body must not look complete"
    );
    support::ops::wait_access(&proxy, "server_timeout line", |l| {
        l.get("termination").and_then(|t| t.as_str()) == Some("server_timeout")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_cuts_a_response_in_flight() {
    let backend = stalling_backend().await;
    let (proxy, front) = http_proxy(backend.addr, "").await;
    let reading = tokio::spawn(read_cut_body(front));
    support::wait_until("request at the backend", || async {
        backend.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    proxy.set_state("app", "a1", "maint").await;
    let result = tokio::time::timeout(support::DEADLINE, reading)
        .await
        .expect("cut in time")
        .expect("task");
    assert!(result.is_err());
    support::ops::wait_access(&proxy, "server_cut line", |l| {
        l.get("termination").and_then(|t| t.as_str()) == Some("server_cut")
    })
    .await;
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;

/// A body of `total` bytes made on the fly, never held whole.
fn generated(total: u64) -> TestBody {
    let chunk = Bytes::from(vec![b'g'; CHUNK]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            (sent < total).then(|| {
                let n = (total - sent).min(CHUNK as u64) as usize;
                (Ok(Frame::data(chunk.slice(..n))), sent + n as u64)
            })
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_streams_in_bounded_proxy_memory() {
    let backend = HttpBackend::start(|request: Request<Incoming>| async move {
        if request.uri().path() == "/download" {
            return Response::new(generated(GIB));
        }
        let mut body = request.into_body();
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            received += frame
                .ok()
                .and_then(|f| f.into_data().ok())
                .map_or(0, |d| d.len() as u64);
        }
        Response::new(full(received.to_string()))
    })
    .await;
    let (proxy, front) = http_proxy(backend.addr, "").await;
    let pid = proxy.pid();
    let baseline = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let done = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.is_cancelled() {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    let download = async {
        let stream = TcpStream::connect(front).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let request = Request::get("/download").header("host", "a").body(full(""));
        let mut body = sender
            .send_request(request.expect("request"))
            .await
            .expect("response")
            .into_body();
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            received += frame
                .expect("frame")
                .into_data()
                .map_or(0, |d| d.len() as u64);
        }
        received
    };
    let upload = async {
        let request = Request::post("/upload")
            .header("host", "a")
            .body(generated(GIB));
        support::http::send(front, request.expect("request"))
            .await
            .body
    };
    let (downloaded, uploaded) = tokio::join!(download, upload);
    done.cancel();
    let _ = sampler.await;
    assert_eq!(downloaded, GIB);
    assert_eq!(uploaded, GIB.to_string());
    let growth_mib = peak.load(Ordering::Relaxed).saturating_sub(baseline) / 1024;
    assert!(growth_mib < 64, "proxy RSS grew by {growth_mib} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight_and_closes_idle_clients() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let backend = {
        let release = release.clone();
        HttpBackend::start(move |request: Request<Incoming>| {
            let release = release.clone();
            async move {
                if request.uri().path() == "/slow" {
                    release.notified().await;
                }
                Response::new(full("done"))
            }
        })
        .await
    };
    let (mut proxy, front) = Config::new()
        .top("shutdown_timeout = \"20s\"")
        .protocol("http")
        .server("a1", backend.addr, "")
        .start()
        .await;
    // An idle keep-alive client, and one waiting for a slow response.
    let mut idle = TcpStream::connect(front).await.expect("connect");
    idle.write_all(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    assert!(read_request_head(&mut idle, &mut head).await);
    let slow = tokio::spawn(get(front, "/slow", &[]));
    support::wait_until("slow request at the backend", || async {
        backend.requests.load(Ordering::SeqCst) == 2
    })
    .await;

    proxy.signal("TERM");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(support::DEADLINE, idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle client connection was not closed");
    release.notify_one();
    let answer = slow.await.expect("slow request task");
    assert_eq!((answer.status, answer.body.as_str()), (200, "done"));
    let status = proxy.wait_exit().await;
    assert!(status.success(), "{status}: {}", proxy.stderr());
}
