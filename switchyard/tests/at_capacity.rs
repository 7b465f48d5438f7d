//! A listener at `max_connections` answers a further client with its protocol's own "too
//! many connections" and closes, instead of leaving it waiting in the kernel's accept queue:
//! HTTP 503, PostgreSQL FATAL 53300 (psql shows it), MySQL ERR 1040 in place of the
//! greeting, SMTP 421; raw TCP is closed without a word. A slot that frees lets the next
//! client in.

mod support;

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use support::backends::Backend;
use support::config::Config;
use support::postgres::psql;
use support::{DEADLINE, Proxy, wait_until};

/// A proxy whose `front` listener speaks `protocol` (with `keys`) and takes one client.
async fn one_client(protocol: &str, keys: &str, server: SocketAddr) -> (Proxy, SocketAddr) {
    Config::new()
        .protocol(protocol)
        .listener(&format!("max_connections = 1\n{keys}"))
        .server("s", server, "")
        .start()
        .await
}

/// Everything a client gets before the proxy closes its connection.
async fn answer(front: SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(front).await.expect("connect");
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("the refused client is closed")
        .expect("read");
    answer
}

/// Holds the listener's one connection, then reads what the next client is told.
async fn refused(protocol: &str, keys: &str) -> Vec<u8> {
    let backend = Backend::echo().await;
    let (proxy, front) = one_client(protocol, keys, backend.addr).await;
    let _held = TcpStream::connect(front).await.expect("connect");
    wait_until("the first client counted", || async {
        proxy.listeners().await[0].active == 1
    })
    .await;
    answer(front).await
}

#[tokio::test]
async fn each_protocol_says_too_many_connections() {
    let http = refused("http", "").await;
    assert!(
        http.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"),
        "{}",
        String::from_utf8_lossy(&http)
    );
    let postgres = refused("postgres", "").await;
    assert_eq!(postgres.first(), Some(&b'E'), "an ErrorResponse");
    let text = String::from_utf8_lossy(&postgres);
    assert!(text.contains("C53300") && text.contains("SFATAL"), "{text}");
    let mysql = refused("mysql", "").await;
    // Sequence 0, ERR, code 1040 little-endian, SQLSTATE 08004.
    assert_eq!(mysql.get(3..7), Some(&[0u8, 0xff, 0x10, 0x04][..]));
    assert!(String::from_utf8_lossy(&mysql).contains("#08004Too many connections"));
    let smtp = refused("smtp", "smtp = { hostname = \"mx.test\" }").await;
    assert!(
        smtp.starts_with(b"421 4.3.2 "),
        "{}",
        String::from_utf8_lossy(&smtp)
    );
    assert!(refused("tcp", "").await.is_empty(), "raw TCP: closed");
}

#[tokio::test]
async fn psql_shows_postgresql_s_own_words() {
    let backend = Backend::echo().await;
    let (proxy, front) = one_client("postgres", "", backend.addr).await;
    let _held = TcpStream::connect(front).await.expect("connect");
    wait_until("the first client counted", || async {
        proxy.listeners().await[0].active == 1
    })
    .await;
    let output =
        tokio::task::spawn_blocking(move || psql(front, "postgres", "postgres", "SELECT 1", &[]))
            .await
            .expect("psql");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("sorry, too many clients already"),
        "{stderr}"
    );
    let listener = &proxy.listeners().await[0];
    assert!(listener.total >= 2 && listener.failed >= 1, "{listener:?}");
}
