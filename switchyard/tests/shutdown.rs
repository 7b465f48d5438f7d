//! Signals: graceful shutdown on SIGTERM/SIGINT, the shutdown timeout, SIGHUP.

mod support;

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::backends::Backend;
use support::ops::{self, listener_addr, read_until_closed, round_trip, wait_access};
use support::{Proxy, wait_until};

fn config(backend: &Backend, shutdown_timeout: &str) -> String {
    format!(
        r#"
shutdown_timeout = "{shutdown_timeout}"

[admin]
listen = "{{admin}}"

[[listener]]
name = "front"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "app"

[[pool]]
name = "app"
servers = [ {{ name = "echo", address = "{}" }} ]
"#,
        backend.addr
    )
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

/// Opens a session, sends `signal`, and checks that the proxy stops accepting, keeps the
/// session working, and exits 0 once the session ends.
async fn graceful_shutdown_on(signal: &str) {
    let backend = Backend::echo().await;
    let mut proxy = Proxy::start(&config(&backend, "20s")).await;
    let front = listener_addr(&proxy, "front").await;
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
    let status = proxy.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.stderr()
    );
    let line = wait_access(&proxy, "the session", |l| {
        ops::field(l, "listener") == "front"
    })
    .await;
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
    let mut proxy = Proxy::start(&config(&backend, "500ms")).await;
    let mut session = TcpStream::connect(listener_addr(&proxy, "front").await)
        .await
        .expect("connect");
    assert_eq!(round_trip(&mut session, b"hello").await, b"hello");

    proxy.signal("TERM");
    // We never close the session: the proxy does, once the shutdown timeout has passed.
    assert!(read_until_closed(&mut session).await.is_empty());
    let status = proxy.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.stderr()
    );
    let line = wait_access(&proxy, "the cut session", |l| {
        ops::field(l, "listener") == "front"
    })
    .await;
    assert_eq!(ops::field(&line, "termination"), "shutdown", "{line}");
    assert_eq!(ops::number(&line, "bytes_in"), 5);
    assert_eq!(ops::number(&line, "bytes_out"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_stop_the_proxy() {
    let backend = Backend::echo().await;
    let mut proxy = Proxy::start(&config(&backend, "20s")).await;
    let front = listener_addr(&proxy, "front").await;
    let mut session = TcpStream::connect(front).await.expect("connect");
    assert_eq!(round_trip(&mut session, b"before").await, b"before");

    proxy.signal("HUP");
    wait_until("the SIGHUP warning", || async {
        let stderr = proxy.stderr();
        stderr.contains("SIGHUP") && stderr.contains("reload is not available")
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
