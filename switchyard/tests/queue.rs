//! Per-server connection limits and the pool queue (wait, timeout, full), and the drain and
//! maint operator states for established sessions.

mod support;

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::backends::{Backend, first_line, read_line};
use support::config::Config;
use support::ops::{
    access_for, field, port_of, read_exactly, read_until_closed, round_trip, scrape,
};
use support::{Proxy, wait_until};

/// Listener `front` over pool `app` (plus `pool_extra`) with one server `one` limited to
/// one connection; returns the proxy and the listener's address.
async fn start_limited(pool_extra: &str, backend: &Backend) -> (Proxy, SocketAddr) {
    Config::new()
        .pool(pool_extra)
        .server("one", backend.addr, "max_connections = 1")
        .start()
        .await
}

/// A pool-level metric (e.g. `switchyard_pool_queue_length`) of pool `app`.
async fn pool_metric(proxy: &Proxy, name: &str) -> f64 {
    scrape(proxy, name, &[("pool", "app")]).await
}

async fn wait_queue_length(proxy: &Proxy, length: f64) {
    wait_until(&format!("queue length {length}"), || async {
        pool_metric(proxy, "switchyard_pool_queue_length").await == length
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_client_waits_in_the_queue_and_is_served_when_the_first_leaves() {
    let backend = Backend::echo().await;
    let (proxy, front) = start_limited(r#"timeouts = { queue = "5s" }"#, &backend).await;

    let mut first = TcpStream::connect(front).await.expect("connect first");
    assert_eq!(round_trip(&mut first, b"first").await, b"first");
    let mut second = TcpStream::connect(front).await.expect("connect second");
    second.write_all(b"second").await.expect("write");
    wait_queue_length(&proxy, 1.0).await;
    assert_eq!(proxy.pools().await[0].queued, 1);
    let mut buf = [0u8; 16];
    assert!(
        matches!(second.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a queued client gets no data"
    );
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    drop(first);
    assert_eq!(read_exactly(&mut second, 6).await, b"second");
    wait_queue_length(&proxy, 0.0).await;
    assert_eq!(proxy.server("app", "one").await.active, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_queued_too_long_is_closed() {
    let backend = Backend::echo().await;
    let (proxy, front) = start_limited(r#"timeouts = { queue = "300ms" }"#, &backend).await;

    let mut first = TcpStream::connect(front).await.expect("connect first");
    assert_eq!(round_trip(&mut first, b"first").await, b"first");
    let mut second = TcpStream::connect(front).await.expect("connect second");
    let port = port_of(&second);
    second.write_all(b"second").await.expect("write");
    assert!(
        read_until_closed(&mut second).await.is_empty(),
        "closed without data"
    );

    let line = access_for(&proxy, port).await;
    assert_eq!(field(&line, "termination"), "queue_timeout", "{line}");
    assert!(pool_metric(&proxy, "switchyard_pool_queue_timeouts_total").await >= 1.0);
    assert_eq!(
        pool_metric(&proxy, "switchyard_pool_queue_length").await,
        0.0
    );
    // The first client was never disturbed.
    assert_eq!(round_trip(&mut first, b"again").await, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_further_clients() {
    let backend = Backend::echo().await;
    let (proxy, front) =
        start_limited("max_queue = 1\ntimeouts = { queue = \"10s\" }", &backend).await;

    let mut first = TcpStream::connect(front).await.expect("connect first");
    assert_eq!(round_trip(&mut first, b"first").await, b"first");
    let mut second = TcpStream::connect(front).await.expect("connect second");
    second.write_all(b"second").await.expect("write");
    wait_queue_length(&proxy, 1.0).await;

    let mut third = TcpStream::connect(front).await.expect("connect third");
    let port = port_of(&third);
    assert!(
        read_until_closed(&mut third).await.is_empty(),
        "the third client is closed without data"
    );
    let line = access_for(&proxy, port).await;
    assert_eq!(field(&line, "termination"), "queue_full", "{line}");
    assert!(pool_metric(&proxy, "switchyard_pool_queue_full_total").await >= 1.0);
    assert_eq!(
        pool_metric(&proxy, "switchyard_pool_queue_length").await,
        1.0
    );

    // The queued client is still served in turn.
    drop(first);
    assert_eq!(read_exactly(&mut second, 6).await, b"second");
}

/// Listener `front` over pool `app` with named servers `alpha` and `bravo`.
async fn two_servers() -> (Backend, Backend, Proxy, SocketAddr) {
    let alpha = Backend::named("alpha").await;
    let bravo = Backend::named("bravo").await;
    let (proxy, front) = Config::new()
        .server("alpha", alpha.addr, "")
        .server("bravo", bravo.addr, "")
        .start()
        .await;
    (alpha, bravo, proxy, front)
}

fn other(name: &str) -> &'static str {
    if name == "alpha" { "bravo" } else { "alpha" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_keeps_its_sessions_but_takes_no_new_ones() {
    let (_alpha, _bravo, proxy, front) = two_servers().await;
    let mut session = TcpStream::connect(front).await.expect("connect");
    let port = port_of(&session);
    let drained = read_line(&mut session).await;

    proxy.set_state("app", &drained, "drain").await;
    assert_eq!(proxy.server("app", &drained).await.state, "drain");
    for n in 0..10 {
        assert_eq!(first_line(front).await, other(&drained), "connection {n}");
    }
    assert_eq!(
        round_trip(&mut session, b"still working").await,
        b"still working"
    );
    assert_eq!(proxy.server("app", &drained).await.active, 1);

    session.shutdown().await.expect("shutdown");
    assert!(read_until_closed(&mut session).await.is_empty());
    let line = access_for(&proxy, port).await;
    assert_eq!(field(&line, "server"), drained);
    assert_eq!(field(&line, "termination"), "client_closed", "{line}");
    wait_until("the drained server to be idle", || async {
        proxy.server("app", &drained).await.active == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_cuts_established_sessions() {
    let (_alpha, _bravo, proxy, front) = two_servers().await;
    let mut session = TcpStream::connect(front).await.expect("connect");
    let port = port_of(&session);
    let cut = read_line(&mut session).await;
    assert_eq!(round_trip(&mut session, b"hello").await, b"hello");

    proxy.set_state("app", &cut, "maint").await;
    assert!(
        read_until_closed(&mut session).await.is_empty(),
        "the session is closed by the proxy"
    );
    let line = access_for(&proxy, port).await;
    assert_eq!(field(&line, "server"), cut);
    assert_eq!(field(&line, "termination"), "server_cut", "{line}");
    assert_eq!(proxy.server("app", &cut).await.state, "maint");
    for n in 0..10 {
        assert_eq!(first_line(front).await, other(&cut), "connection {n}");
    }
}
