//! Bad input: silent clients, silent and resetting backends, connection floods.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::backends::Backend;
use support::config::Config;
use support::ops::{
    self, access_lines, from_port, listener_addr, on_listener, read_exactly, read_until_closed,
    round_trip, wait_access,
};
use support::{Proxy, wait_until};

/// Listener `front` (plus `listener_timeouts`) over one server `backend`.
fn config(backend: &Backend, listener_timeouts: &str) -> String {
    Config::new()
        .listener(listener_timeouts)
        .server("backend", backend.addr, "")
        .build()
}

async fn wait_idle(proxy: &Proxy) {
    wait_until("no active connection on the listener", || async {
        proxy.listeners().await[0].active == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_and_closes_is_logged_and_forgotten() {
    let backend = Backend::echo().await;
    let proxy = Proxy::start(&config(&backend, "")).await;
    let front = listener_addr(&proxy, "front").await;
    let silent = TcpStream::connect(front).await.expect("connect");
    let silent_port = silent.local_addr().expect("local address").port();
    wait_until("the proxy to accept the silent client", || async {
        proxy.listeners().await[0].total == 1
    })
    .await;
    drop(silent);

    let line = wait_access(&proxy, "the silent client", from_port(silent_port)).await;
    assert_eq!(ops::field(&line, "listener"), "front");
    assert_eq!(ops::number(&line, "bytes_in"), 0);
    assert_eq!(ops::number(&line, "bytes_out"), 0);
    assert!(!ops::field(&line, "termination").is_empty(), "{line}");
    wait_idle(&proxy).await;
    assert_eq!(proxy.get("/health").await.0, 200);
    let mut next = TcpStream::connect(front).await.expect("connect");
    assert_eq!(
        round_trip(&mut next, b"still serving").await,
        b"still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_hits_the_client_timeout() {
    // Reads whatever arrives and never writes; keeps the connection open.
    let mute = Backend::start("127.0.0.1:0", |mut stream: TcpStream| async move {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                std::future::pending::<()>().await;
            }
        }
    })
    .await;
    let proxy = Proxy::start(&config(&mute, "timeouts = { client = \"300ms\" }")).await;
    let mut client = TcpStream::connect(listener_addr(&proxy, "front").await)
        .await
        .expect("connect");
    client.write_all(b"hello?").await.expect("write");
    let answer = read_until_closed(&mut client).await;
    assert!(answer.is_empty(), "{answer:?}");
    let line = wait_access(&proxy, "the timed-out connection", on_listener("front")).await;
    assert_eq!(ops::field(&line, "termination"), "client_timeout", "{line}");
    assert_eq!(ops::number(&line, "bytes_in"), 6);
    assert_eq!(ops::number(&line, "bytes_out"), 0);
    assert_eq!(mute.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    wait_idle(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_reset_mid_stream_closes_the_client_and_keeps_the_bytes() {
    const SENT: usize = 1000;
    // Sends SENT bytes, waits for the client's 4-byte acknowledgement, then resets.
    let resetting = Backend::start("127.0.0.1:0", |mut stream: TcpStream| async move {
        if stream.write_all(&[b'x'; SENT]).await.is_err() {
            return;
        }
        let mut ack = [0u8; 4];
        if stream.read_exact(&mut ack).await.is_err() {
            return;
        }
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        drop(stream);
    })
    .await;
    let proxy = Proxy::start(&config(&resetting, "")).await;
    let mut client = TcpStream::connect(listener_addr(&proxy, "front").await)
        .await
        .expect("connect");
    let data = read_exactly(&mut client, SENT).await;
    assert!(data.iter().all(|&b| b == b'x'));
    client.write_all(b"ack!").await.expect("write ack");

    // The listener's idle timeout is the default 10 minutes: only the reset can close it.
    let rest = read_until_closed(&mut client).await;
    assert!(rest.is_empty(), "{rest:?}");
    let line = wait_access(&proxy, "the reset connection", on_listener("front")).await;
    let termination = ops::field(&line, "termination");
    assert!(
        termination == "server_error" || termination == "server_closed",
        "termination {termination}: {line}"
    );
    assert_eq!(ops::number(&line, "bytes_out"), SENT as u64, "{line}");
    assert_eq!(ops::number(&line, "bytes_in"), 4, "{line}");
    let server = proxy.server("app", "backend").await;
    assert_eq!(server.bytes_out, SENT as u64);
    assert_eq!(server.bytes_in, 4);
    wait_idle(&proxy).await;
    assert_eq!(proxy.server("app", "backend").await.active, 0);
    assert_eq!(proxy.get("/health").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_dropped_connections_loses_no_accounting() {
    const CONNECTIONS: usize = 2000;
    let backend = Backend::echo().await;
    let proxy = Proxy::start(&config(&backend, "")).await;
    let front = listener_addr(&proxy, "front").await;

    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        flood.spawn(async move { TcpStream::connect(front).await.map(drop) });
    }
    let mut connected = 0;
    while let Some(result) = flood.join_next().await {
        if let Ok(Ok(())) = result {
            connected += 1;
        }
    }
    assert_eq!(connected, CONNECTIONS, "every connect succeeded");

    wait_until("the proxy to have accepted every connection", || async {
        proxy.listeners().await[0].total >= CONNECTIONS as u64
    })
    .await;
    wait_idle(&proxy).await;
    wait_until("one access log line per connection", || async {
        access_lines(&proxy).len() >= CONNECTIONS
    })
    .await;
    let lines = access_lines(&proxy);
    assert_eq!(lines.len(), CONNECTIONS);
    assert!(lines.iter().all(|l| ops::field(l, "listener") == "front"));
    let listener = &proxy.listeners().await[0];
    assert_eq!(listener.total, CONNECTIONS as u64);
    assert_eq!(listener.active, 0);
    wait_until("every server slot freed", || async {
        proxy.server("app", "backend").await.active == 0
    })
    .await;
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("switchyard_access_log_dropped_lines_total 0"),
        "no access log line was dropped:\n{metrics}"
    );

    let mut client = TcpStream::connect(front)
        .await
        .expect("connect after the flood");
    assert_eq!(
        round_trip(&mut client, b"business as usual").await,
        b"business as usual"
    );
}

/// Descriptors the process `pid` has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_proxy_backs_off_and_recovers() {
    let backend = Backend::echo().await;
    let proxy = Proxy::start(&config(&backend, "")).await;
    let front = listener_addr(&proxy, "front").await;
    // A first connection through, so everything lazily opened at the start is open.
    let mut first = TcpStream::connect(front).await.expect("connect");
    assert_eq!(round_trip(&mut first, b"warm").await, b"warm");
    drop(first);
    wait_idle(&proxy).await;
    // Room for four proxied connections (a client and a server descriptor each).
    let limit = open_descriptors(proxy.pid()) + 8;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", proxy.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
    // Twelve clients: the kernel completes every handshake, the proxy runs out of
    // descriptors part way and the rest wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(TcpStream::connect(front).await.expect("connect"));
    }
    wait_until("accept failing for lack of descriptors", || async {
        proxy.stderr().contains("accept failed")
    })
    .await;
    assert!(
        proxy.stderr().contains("Too many open files"),
        "EMFILE named"
    );
    assert!(
        std::path::Path::new(&format!("/proc/{}", proxy.pid())).exists(),
        "the proxy is alive"
    );
    drop(held);
    // Descriptors come back: the waiting connections are accepted and ended. Looked at in
    // this order because the admin API's own accepts fail while descriptors are short.
    wait_until("every client accepted and ended", || async {
        open_descriptors(proxy.pid()) + 8 <= limit && {
            let listener = &proxy.listeners().await[0];
            listener.total == 13 && listener.active == 0
        }
    })
    .await;
    assert!(
        proxy.stderr().contains("accepting again"),
        "recovery logged"
    );
    let mut next = TcpStream::connect(front).await.expect("connect");
    assert_eq!(round_trip(&mut next, b"recovered").await, b"recovered");
    assert_eq!(proxy.get("/health").await.0, 200);
    // One error line for the whole episode: not one per retry, nor one per worker's
    // accept loop, nor one each time a freed descriptor lets an accept through between
    // failures (a listener logs the error at most once per ten seconds).
    let stderr = proxy.stderr();
    let errors = stderr
        .lines()
        .filter(|line| line.contains("accept failed") && line.contains("front"))
        .count();
    assert_eq!(errors, 1, "accept errors logged:\n{stderr}");
}
