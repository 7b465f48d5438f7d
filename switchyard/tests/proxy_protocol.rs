//! PROXY protocol: accepted from clients on a listener, sent to servers by a pool.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard::proxy_protocol::{ParseOutcome, ProxyHeader, encode_v2, parse_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::Proxy;
use support::backends::{Backend, echo, read_line};
use support::config::Config;
use support::ops::{
    self, listener_addr, on_listener, read_exactly, read_until_closed, wait_access,
};

/// A server behind a PROXY-sending pool: reads until the header parses, answers one line
/// `VERSION SOURCE DESTINATION` (or `LOCAL`, or `BAD ...`), then echoes whatever follows
/// the header and everything after it.
async fn header_reporting_backend() -> Backend {
    Backend::start("127.0.0.1:0", |mut stream: TcpStream| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let (header, consumed) = loop {
            match parse_header(&buf) {
                ParseOutcome::Complete { header, consumed } => break (header, consumed),
                ParseOutcome::Incomplete => match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                other => {
                    let _ = stream
                        .write_all(format!("BAD {other:?}\n").as_bytes())
                        .await;
                    return;
                }
            }
        };
        let version = if buf.starts_with(b"PROXY ") {
            "v1"
        } else {
            "v2"
        };
        let report = match header {
            ProxyHeader::Proxied(addrs) => {
                format!("{version} {} {}\n", addrs.source, addrs.destination)
            }
            ProxyHeader::Local => format!("{version} LOCAL\n"),
        };
        if stream.write_all(report.as_bytes()).await.is_err()
            || stream.write_all(&buf[consumed..]).await.is_err()
        {
            return;
        }
        echo(stream).await;
    })
    .await
}

/// Listener `front` (accepting PROXY headers if `accept`, plus `listener_timeouts`) over
/// one server `backend` in a pool that sends `send` headers (`v1`/`v2`), if any.
fn config(backend: &Backend, accept: bool, listener_timeouts: &str, send: Option<&str>) -> String {
    let mut config = Config::new();
    if accept {
        config = config.listener("proxy_protocol = \"accept\"");
    }
    if let Some(version) = send {
        config = config.pool(&format!("send_proxy_protocol = \"{version}\""));
    }
    config
        .listener(listener_timeouts)
        .server("backend", backend.addr, "")
        .build()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

/// Closes our side and waits for the proxy to close its side.
async fn finish(mut stream: TcpStream) {
    stream.shutdown().await.expect("half-close");
    read_until_closed(&mut stream).await;
}

/// Sends `header` and `payload` in one write through a proxy that accepts PROXY headers
/// and sends `upstream` ones; checks what the server saw and what the access log says.
async fn relayed_header(header: &[u8], upstream: &str, source: &str, destination: &str) {
    let backend = header_reporting_backend().await;
    let proxy = Proxy::start(&config(&backend, true, "", Some(upstream))).await;
    let mut client = TcpStream::connect(listener_addr(&proxy, "front").await)
        .await
        .expect("connect");
    let payload = b"payload after the header\x00\x01\x02\r\n".as_slice();
    client
        .write_all(&[header, payload].concat())
        .await
        .expect("write");

    let report = read_line(&mut client).await;
    assert_eq!(report, format!("{upstream} {source} {destination}"));
    assert_eq!(
        read_exactly(&mut client, payload.len()).await,
        payload,
        "payload intact"
    );
    client.write_all(b"more").await.expect("write");
    assert_eq!(read_exactly(&mut client, 4).await, b"more");
    finish(client).await;

    let line = wait_access(&proxy, "the proxied connection", on_listener("front")).await;
    assert_eq!(ops::field(&line, "client"), source, "{line}");
    assert_eq!(ops::field(&line, "termination"), "client_closed", "{line}");
    assert_eq!(
        ops::number(&line, "bytes_in"),
        (payload.len() + 4) as u64,
        "header bytes are not payload: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_in_v2_out_carries_the_original_client() {
    relayed_header(
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n",
        "v2",
        "203.0.113.7:40000",
        "198.51.100.1:443",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_in_v1_out_carries_the_original_client() {
    let header = encode_v2(addr("203.0.113.7:40000"), addr("198.51.100.1:443"));
    relayed_header(&header, "v1", "203.0.113.7:40000", "198.51.100.1:443").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_sources_are_carried() {
    relayed_header(
        b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n",
        "v2",
        "[2001:db8::7]:40000",
        "[2001:db8::1]:443",
    )
    .await;
    let header = encode_v2(addr("[2001:db8::7]:40001"), addr("[2001:db8::1]:443"));
    relayed_header(&header, "v1", "[2001:db8::7]:40001", "[2001:db8::1]:443").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_split_across_writes_is_reassembled() {
    let backend = header_reporting_backend().await;
    let proxy = Proxy::start(&config(&backend, true, "", Some("v2"))).await;
    let front = listener_addr(&proxy, "front").await;
    let v1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n".to_vec();
    let v2 = encode_v2(addr("203.0.113.8:40000"), addr("198.51.100.1:443"));
    for (header, source, cuts) in [
        (v1, "203.0.113.7:40000", [3, 17, 46]),
        (v2, "203.0.113.8:40000", [5, 13, 20]),
    ] {
        let mut client = TcpStream::connect(front).await.expect("connect");
        client.set_nodelay(true).expect("nodelay");
        let mut start = 0;
        for cut in cuts.into_iter().chain([header.len()]) {
            client.write_all(&header[start..cut]).await.expect("write");
            start = cut;
            // Give each piece a chance to arrive on its own; the outcome does not depend on it.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        client.write_all(b"hello").await.expect("write");
        assert_eq!(
            read_line(&mut client).await,
            format!("v2 {source} 198.51.100.1:443")
        );
        assert_eq!(read_exactly(&mut client, 5).await, b"hello");
        finish(client).await;
        wait_access(&proxy, source, |l| ops::field(l, "client") == source).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_header_closes_the_connection_before_any_server() {
    let backend = header_reporting_backend().await;
    let proxy = Proxy::start(&config(&backend, true, "", Some("v2"))).await;
    let mut client = TcpStream::connect(listener_addr(&proxy, "front").await)
        .await
        .expect("connect");
    let port = client.local_addr().expect("local address").port();
    client
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut client).await;
    assert!(answer.is_empty(), "{answer:?}");

    let line = wait_access(&proxy, "the refused connection", on_listener("front")).await;
    assert_eq!(
        ops::field(&line, "termination"),
        "proxy_header_error",
        "{line}"
    );
    assert_eq!(
        ops::field(&line, "client"),
        format!("127.0.0.1:{port}"),
        "{line}"
    );
    assert!(line["server"].is_null(), "{line}");
    assert_eq!(
        backend.accepted.load(Ordering::SeqCst),
        0,
        "the server was never contacted"
    );
    let stderr = proxy.stderr();
    // The connection's warnings (not the startup's, such as the admin API's missing token).
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("listener="))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning:\n{stderr}");
    assert!(warnings[0].contains("PROXY"), "{}", warnings[0]);
    assert_eq!(proxy.listeners().await[0].total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_header_timeout() {
    let backend = header_reporting_backend().await;
    let proxy = Proxy::start(&config(
        &backend,
        true,
        "timeouts = { proxy_header = \"300ms\" }",
        Some("v1"),
    ))
    .await;
    let mut client = TcpStream::connect(listener_addr(&proxy, "front").await)
        .await
        .expect("connect");
    // We send nothing and never close: only the header timeout can end this.
    assert!(read_until_closed(&mut client).await.is_empty());
    let line = wait_access(&proxy, "the silent connection", on_listener("front")).await;
    assert_eq!(
        ops::field(&line, "termination"),
        "proxy_header_error",
        "{line}"
    );
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 0);
    assert!(proxy.stderr().contains("timed out"), "{}", proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_accept_the_real_client_address_is_sent() {
    let backend = header_reporting_backend().await;
    let proxy = Proxy::start(&config(&backend, false, "", Some("v1"))).await;
    let front = listener_addr(&proxy, "front").await;
    let mut client = TcpStream::connect(front).await.expect("connect");
    let me = client.local_addr().expect("local address");
    client.write_all(b"plain bytes").await.expect("write");
    assert_eq!(read_line(&mut client).await, format!("v1 {me} {front}"));
    assert_eq!(read_exactly(&mut client, 11).await, b"plain bytes");
    finish(client).await;
    let line = wait_access(&proxy, "the connection", on_listener("front")).await;
    assert_eq!(ops::field(&line, "client"), me.to_string());
    assert_eq!(ops::number(&line, "bytes_in"), 11);
}
