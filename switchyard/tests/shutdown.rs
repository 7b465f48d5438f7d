//! Signals: graceful shutdown on SIGTERM/SIGINT, the shutdown timeout, SIGHUP.

mod support;

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::backends::Backend;
use support::config::{Config, http_section};
use support::http::{HttpBackend, get};
use support::ops::{self, listener_addr, on_listener, read_until_closed, round_trip, wait_access};
use support::{Proxy, wait_until};

/// Listener `front` over one echo server, with the given top-level `shutdown_timeout`.
fn config(backend: &Backend, shutdown_timeout: &str) -> Config {
    Config::new()
        .top(&format!("shutdown_timeout = \"{shutdown_timeout}\""))
        .server("echo", backend.addr, "")
}

/// A new client is not served: the connect is refused, or the connection is closed
/// without an answer.
async fn assert_not_served(address: SocketAddr) {
    if let Ok(mut stream) = TcpStream::connect(address).await {
        let _ = stream.write_all(b"anyone?").await;
        let answer = read_until_closed(&mut stream).await;
        assert!(
            answer.is_empty(),
            "a new connection was served after shutdown began: {answer:?}"
        );
    }
}

/// Waits for the proxy to exit and asserts it exited with status 0.
async fn assert_exits_zero(proxy: &mut Proxy) {
    let status = proxy.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.stderr()
    );
}

/// Opens a session, sends `signal`, and checks that the proxy stops accepting, keeps the
/// session working, and exits 0 once the session ends.
async fn graceful_shutdown_on(signal: &str) {
    let backend = Backend::echo().await;
    let (mut proxy, front) = config(&backend, "20s").start().await;
    let mut session = TcpStream::connect(front).await.expect("connect");
    assert_eq!(round_trip(&mut session, b"before").await, b"before");

    proxy.signal(signal);
    wait_until("the listener to stop accepting", || async {
        proxy.stderr().contains("stopped accepting")
    })
    .await;
    assert_not_served(front).await;

    // The established session keeps working, and the process waits for it.
    assert_eq!(
        round_trip(&mut session, b"after the signal").await,
        b"after the signal"
    );
    assert!(
        proxy.try_wait().is_none(),
        "exited with a session still open"
    );

    session.shutdown().await.expect("half-close");
    assert!(read_until_closed(&mut session).await.is_empty());
    drop(session);
    assert_exits_zero(&mut proxy).await;
    let line = wait_access(&proxy, "the session", on_listener("front")).await;
    assert_eq!(ops::field(&line, "termination"), "client_closed", "{line}");
    assert_eq!(ops::number(&line, "bytes_in"), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_lets_sessions_finish_and_exits_zero() {
    graceful_shutdown_on("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_behaves_like_sigterm() {
    graceful_shutdown_on("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_closes_remaining_sessions() {
    let backend = Backend::echo().await;
    let mut proxy = Proxy::start(&config(&backend, "500ms").build()).await;
    let mut session = TcpStream::connect(listener_addr(&proxy, "front").await)
        .await
        .expect("connect");
    assert_eq!(round_trip(&mut session, b"hello").await, b"hello");

    proxy.signal("TERM");
    // We never close the session: the proxy does, once the shutdown timeout has passed.
    assert!(read_until_closed(&mut session).await.is_empty());
    assert_exits_zero(&mut proxy).await;
    let line = wait_access(&proxy, "the cut session", on_listener("front")).await;
    assert_eq!(ops::field(&line, "termination"), "shutdown", "{line}");
    assert_eq!(ops::number(&line, "bytes_in"), 5);
    assert_eq!(ops::number(&line, "bytes_out"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_stop_the_proxy() {
    let backend = Backend::echo().await;
    let (mut proxy, front) = config(&backend, "20s").start().await;
    let mut session = TcpStream::connect(front).await.expect("connect");
    assert_eq!(round_trip(&mut session, b"before").await, b"before");

    proxy.signal("HUP");
    wait_until("the SIGHUP reload", || async {
        let stderr = proxy.stderr();
        stderr.contains("SIGHUP") && stderr.contains("configuration reloaded")
    })
    .await;
    assert!(
        proxy.try_wait().is_none(),
        "SIGHUP stopped the proxy:\n{}",
        proxy.stderr()
    );
    assert!(!proxy.stderr().contains("stopped accepting"));
    assert_eq!(proxy.get("/health").await.0, 200);
    // Both the old session and a new one are served.
    assert_eq!(round_trip(&mut session, b"after").await, b"after");
    let mut fresh = TcpStream::connect(front)
        .await
        .expect("connect after SIGHUP");
    assert_eq!(round_trip(&mut fresh, b"new client").await, b"new client");
}

/// `rounds` rounds of `clients` requests at once, each on a new connection (so that every
/// worker serves some: a new connection goes to the worker serving the fewest), every one
/// answered 200.
async fn requests(web: SocketAddr, clients: usize, rounds: usize) {
    for _ in 0..rounds {
        let batch: Vec<_> = (0..clients)
            .map(|_| tokio::spawn(async move { get(web, "/", &[]).await.status }))
            .collect();
        for request in batch {
            assert_eq!(request.await.expect("request task"), 200);
        }
    }
}

/// The access log (to a file) holds each request's line, from every worker, by the time
/// SIGTERM has made the process exit: lines wait in their worker's batch until it fills,
/// the writer's tick or the log's close at exit, and a reload in between loses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_line_is_written_across_a_reload_and_by_the_exit() {
    let backend = Backend::echo().await;
    let http = HttpBackend::describe().await;
    let mut proxy = Proxy::start(
        &config(&backend, "20s")
            .top("workers = 4\n[log]\naccess = \"access.log\"")
            .section(&http_section("web", &[("h1", http.addr, "")]))
            .build(),
    )
    .await;
    let web = listener_addr(&proxy, "web").await;
    requests(web, 8, 5).await;
    proxy.signal("HUP");
    wait_until("the SIGHUP reload", || async {
        proxy.stderr().contains("configuration reloaded")
    })
    .await;
    requests(web, 8, 5).await;
    proxy.signal("TERM");
    assert_exits_zero(&mut proxy).await;
    let log = std::fs::read_to_string(proxy.dir.path().join("access.log")).expect("access log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 80, "{log}");
    for line in &lines {
        assert_eq!(ops::field(line, "listener"), "web", "{line}");
        assert_eq!(ops::number(line, "status"), 200, "{line}");
    }
    assert!(proxy.stdout().is_empty(), "{}", proxy.stdout());
}
