//! Client-side defence of the HTTP proxy, with raw bytes over TcpStream: smuggling shapes
//! and over-limit requests are refused before anything reaches a backend, a slowloris
//! client gets 408 while others are served, idle keep-alive connections are closed.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::config::Config;
use support::http::{HttpBackend, get, raw};
use support::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxy_for(backend: &HttpBackend, listener: &str) -> (support::Proxy, SocketAddr) {
    Config::new()
        .protocol("http")
        .listener(listener)
        .server("a1", backend.addr, "")
        .start()
        .await
}

/// Sends `bytes` on a new connection and reads what comes back until the proxy closes it,
/// which it must do within the test deadline.
async fn answer_then_close(front: SocketAddr, bytes: &[u8]) -> String {
    tokio::time::timeout(support::DEADLINE, raw(front, bytes))
        .await
        .expect("the idle connection was not closed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_get_400_and_never_reach_the_backend() {
    let backend = HttpBackend::describe().await;
    let (proxy, front) = proxy_for(&backend, "").await;
    let attempts: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4x\r\nabcd\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding : chunked\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;a\x00b\r\nx\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX Y: z\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        // Nothing is tunnelled after a CONNECT: what follows it is checked as HTTP/1.
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET / HTTP/1.1\nHost: a\n\n",
    ];
    for attempt in attempts {
        let answer = raw(front, attempt).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(attempt)
        );
    }
    // A smuggled request pipelined behind a valid one in the same packet: the whole
    // packet is refused, the valid request with it.
    let answer = raw(
        front,
        b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert_eq!(
        backend.accepted.load(Ordering::SeqCst),
        0,
        "the backend saw nothing"
    );
    support::ops::wait_access(&proxy, "refusal line", |l| {
        l.get("status").and_then(|s| s.as_u64()) == Some(400)
            && l.get("termination").and_then(|t| t.as_str()) == Some("bad_request")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_uri_headers_and_head_size() {
    let backend = HttpBackend::describe().await;
    let (_proxy, front) = proxy_for(
        &backend,
        "http = { max_uri_bytes = 100, max_headers = 5, max_header_bytes = 2048 }",
    )
    .await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(200));
    assert!(
        raw(front, long_uri.as_bytes())
            .await
            .starts_with("HTTP/1.1 414 ")
    );
    let many: String = (0..6).map(|i| format!("X-{i}: v\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert!(
        raw(front, head.as_bytes())
            .await
            .starts_with("HTTP/1.1 431 ")
    );
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(3000));
    assert!(
        raw(front, big.as_bytes())
            .await
            .starts_with("HTTP/1.1 431 ")
    );
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
    assert_eq!(get(front, "/", &[]).await.status, 200);
}

/// A head of `count` header lines that closes its connection after the answer.
fn head_with_headers(count: usize) -> String {
    let extra: String = (2..count).map(|i| format!("X-{i}: v\r\n")).collect();
    format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{extra}\r\n")
}

/// The limit on header lines is the configured one exactly, at the default (hyper's own
/// default too) and above it (hyper given a larger limit of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_count_limit_is_exact_at_and_above_the_default() {
    let backend = HttpBackend::describe().await;
    for (listener, limit) in [("", 100), ("http = { max_headers = 150 }", 150)] {
        let (_proxy, front) = proxy_for(&backend, listener).await;
        let at = raw(front, head_with_headers(limit).as_bytes()).await;
        assert!(at.starts_with("HTTP/1.1 200 "), "{limit} headers: {at}");
        let over = raw(front, head_with_headers(limit + 1).as_bytes()).await;
        assert!(
            over.starts_with("HTTP/1.1 431 "),
            "{} headers: {over}",
            limit + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_gets_408_while_other_clients_are_served() {
    let backend = HttpBackend::describe().await;
    let (proxy, front) = proxy_for(&backend, "timeouts = { http_request = \"1s\" }").await;
    let mut slow = TcpStream::connect(front).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let trickle = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        for i in 0.. {
            // One header byte at a time, never finishing the head.
            let _ = slow.write_all(format!("X-{i}: y\r\n").as_bytes()).await;
            tokio::select! {
                read = slow.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    };
    let others = async {
        let mut served = 0;
        for _ in 0..5 {
            if get(front, "/", &[]).await.status == 200 {
                served += 1;
            }
        }
        served
    };
    let (answer, served) = tokio::join!(trickle, others);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );
    assert_eq!(served, 5);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 5);
    support::ops::wait_access(&proxy, "408 line", |l| {
        l.get("termination").and_then(|t| t.as_str()) == Some("request_timeout")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_client_connections_are_closed() {
    let backend = HttpBackend::describe().await;
    let (_proxy, front) = proxy_for(&backend, "timeouts = { keep_alive = \"300ms\" }").await;
    let text = answer_then_close(front, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    // The status line itself: the echoed request carries a random request id, which can
    // contain "408".
    assert!(
        !text.contains("408 Request Timeout"),
        "an idle close is silent: {text}"
    );
    wait_until("backend request seen", || async {
        backend.requests.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_client_connections_are_closed() {
    let backend = HttpBackend::describe().await;
    let (_proxy, front) = proxy_for(&backend, "timeouts = { keep_alive = \"300ms\" }").await;
    let stream = TcpStream::connect(front).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(format!("http://{front}/h2"))
        .body(support::http::full(""))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    drop(response);
    // Idle now: the proxy ends the connection (GOAWAY, then close).
    let ended = tokio::time::timeout(support::DEADLINE, driver).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let backend = HttpBackend::describe().await;
    let (_proxy, front) = proxy_for(&backend, "").await;
    let answer = raw(
        front,
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    let first = answer.find("GET /first").expect("first answered");
    let second = answer.find("GET /second").expect("second answered");
    assert!(first < second, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_slower_than_keep_alive_is_not_cut_and_the_connection_idles_out_after() {
    let backend = HttpBackend::start(|request| async move {
        if request.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        hyper::Response::new(support::http::full("done\n"))
    })
    .await;
    let (_proxy, front) = proxy_for(&backend, "timeouts = { keep_alive = \"300ms\" }").await;
    // Pipelined, so that the client never idles between them: only the proxy's clock can.
    let text = answer_then_close(
        front,
        b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\nGET /slow HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.ends_with("done\n"), "{text}");
}

/// Heads refused before the proxy has read all the client sent (a body it never reads
/// follows each) are answered every time. A client streaming its body to a proxy that
/// closed with that body unread gets a reset on its next write and gives up before it
/// reads the answer (curl reports a send failure); the proxy's lingering close reads and
/// drops the rest instead, so the write completes and the answer is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_heads_get_their_answer_every_time_not_a_reset() {
    let backend = HttpBackend::describe().await;
    let (_proxy, front) = proxy_for(&backend, "").await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(70_000)
    );
    let refused: [(&[u8], &str); 4] = [
        (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "400"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            "400",
        ),
        (big_header.as_bytes(), "431"),
    ];
    // More than the socket buffers take while nobody reads, less than the proxy drains.
    let unread = vec![b'x'; 512 * 1024];
    for (head, status) in refused {
        let sent = [head, &unread[..]].concat();
        for attempt in 0..50 {
            let mut stream = TcpStream::connect(front).await.expect("connect");
            let written = stream.write_all(&sent).await;
            let mut answer = Vec::new();
            let read = stream.read_to_end(&mut answer).await;
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                written.is_ok()
                    && read.is_ok()
                    && answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "attempt {attempt} of {:?}: write {written:?}, read {read:?}, answer {answer:?}",
                String::from_utf8_lossy(&head[..head.len().min(40)])
            );
        }
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
}

/// Reads one whole response with a `content-length` body from `stream`.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .expect("content-length");
            if received.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(support::DEADLINE, stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed before the response ended: {text}");
        received.extend_from_slice(&chunk[..n]);
    }
}

/// The parked connections the proxy counts.
async fn parked_connections(proxy: &support::Proxy) -> f64 {
    support::ops::scrape(proxy, "switchyard_http_parked_connections", &[]).await
}

/// A proxy whose listener keeps connections alive for `keep_alive`, and a client connection
/// that made one request and is now parked.
async fn parked_after_one_request(keep_alive: &str) -> (HttpBackend, support::Proxy, TcpStream) {
    let backend = HttpBackend::describe().await;
    let listener = format!("timeouts = {{ keep_alive = \"{keep_alive}\" }}");
    let (proxy, front) = proxy_for(&backend, &listener).await;
    let mut stream = TcpStream::connect(front).await.expect("connect");
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    assert!(
        read_response(&mut stream)
            .await
            .starts_with("HTTP/1.1 200 OK")
    );
    wait_until("the idle connection parked", || async {
        parked_connections(&proxy).await == 1.0
    })
    .await;
    (backend, proxy, stream)
}

/// The proxy closes `stream` within the test deadline: the client reads its end.
async fn assert_closed_by_the_proxy(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(support::DEADLINE, stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");
}

/// At a graceful shutdown a parked keep-alive connection is closed after the idle grace,
/// long before its keep-alive limit, and the process exits: the parked wait watches the
/// shutdown, then the hard stop, with one future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_at_shutdown() {
    let (_backend, mut proxy, mut stream) = parked_after_one_request("1h").await;
    proxy.signal("TERM");
    assert_closed_by_the_proxy(&mut stream).await;
    let status = proxy.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.stderr()
    );
}

/// An idle keep-alive connection is parked (hyper's connection and its buffers let go,
/// the socket kept open): its next request, sent whole or in pieces, is answered as on a
/// connection never parked, and the keep-alive limit still closes it once it idles again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_keep_alive_connections_answer_their_next_request() {
    let (backend, proxy, mut stream) = parked_after_one_request("5s").await;
    let parked = || async { parked_connections(&proxy).await };
    // The next request in two pieces: the first wakes the parked connection.
    stream
        .write_all(b"GET /second HTTP/1.1\r\n")
        .await
        .expect("send");
    wait_until("the connection unparked", || async {
        parked().await == 0.0
    })
    .await;
    stream.write_all(b"Host: a\r\n\r\n").await.expect("send");
    let second = read_response(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200 OK"), "{second}");
    assert!(second.contains("/second"), "{second}");
    assert_eq!(backend.requests.load(Ordering::SeqCst), 2);
    wait_until("parked again", || async { parked().await == 1.0 }).await;
    // Closed by the keep-alive limit while parked: the client reads the end of the stream.
    assert_closed_by_the_proxy(&mut stream).await;
    wait_until("no parked connection left", || async {
        parked().await == 0.0
    })
    .await;
}
