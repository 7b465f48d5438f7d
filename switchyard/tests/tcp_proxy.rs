//! TCP proxying over real sockets: echo, IPv6, half-close both ways, large transfers with
//! exact accounting, idle and tunnel timeouts, the listener connection limit, TCP_NODELAY.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use support::backends::Backend;
use support::config::Config;
use support::ops::{
    access_for, access_lines, field, from_port, listener_addr, number, on_listener, port_of,
    read_until_closed, round_trip, wait_access,
};
use support::{DEADLINE, Proxy, wait_until};

/// Listener `front` over pool `app` with one server `echo` at `backend`.
fn one_server_config(backend: &Backend) -> Config {
    Config::new().server("echo", backend.addr, "")
}

/// Starts a proxy in front of `backend`; returns it and the listener's bound address.
async fn start(listener_extra: &str, pool_extra: &str, backend: &Backend) -> (Proxy, SocketAddr) {
    one_server_config(backend)
        .listener(listener_extra)
        .pool(pool_extra)
        .start()
        .await
}

/// Reads from `reader` until EOF and returns how many bytes arrived.
async fn count_to_eof(reader: &mut (impl AsyncRead + Unpin)) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n as u64,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_through_the_proxy() {
    let backend = Backend::echo().await;
    let (proxy, front) = start("", "", &backend).await;
    let mut client = TcpStream::connect(front).await.expect("connect");
    let port = port_of(&client);
    let messages: [&[u8]; 3] = [b"hello", b"a longer second message\n", &[0, 255, 10, 13, 0]];
    for message in messages {
        assert_eq!(round_trip(&mut client, message).await, message);
    }
    client.shutdown().await.expect("shutdown");
    assert!(read_until_closed(&mut client).await.is_empty());

    let sent: u64 = messages.iter().map(|m| m.len() as u64).sum();
    let line = access_for(&proxy, port).await;
    assert_eq!(field(&line, "listener"), "front");
    assert_eq!(field(&line, "pool"), "app");
    assert_eq!(field(&line, "server"), "echo");
    assert_eq!(field(&line, "termination"), "client_closed");
    assert_eq!(number(&line, "bytes_in"), sent);
    assert_eq!(number(&line, "bytes_out"), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener_forwards_to_an_ipv4_backend() {
    let backend = Backend::echo().await;
    let (proxy, front) = one_server_config(&backend).listen("[::1]:0").start().await;
    assert!(front.is_ipv6(), "listener bound {front}");
    assert!(backend.addr.is_ipv4());

    let mut client = TcpStream::connect(front).await.expect("connect over IPv6");
    let port = port_of(&client);
    assert_eq!(round_trip(&mut client, b"over v6").await, b"over v6");
    drop(client);
    let line = access_for(&proxy, port).await;
    assert!(
        field(&line, "client").starts_with("[::1]:"),
        "client address logged as IPv6: {line}"
    );
    assert_eq!(field(&line, "server"), "echo");
    assert_eq!(number(&line, "bytes_out"), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_still_receives_the_full_reply() {
    // Reads until the client's FIN arrives, then answers with the byte count.
    let backend = Backend::start("127.0.0.1:0", |mut stream: TcpStream| async move {
        let received = count_to_eof(&mut stream).await;
        let _ = stream.write_all(format!("{received}\n").as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let (proxy, front) = start("", "", &backend).await;

    let mut client = TcpStream::connect(front).await.expect("connect");
    let port = port_of(&client);
    let payload = vec![7u8; 100_000];
    client.write_all(&payload).await.expect("write");
    client
        .shutdown()
        .await
        .expect("half-close the client's write side");
    let reply = read_until_closed(&mut client).await;
    assert_eq!(String::from_utf8_lossy(&reply), "100000\n");

    let line = access_for(&proxy, port).await;
    assert_eq!(field(&line, "termination"), "client_closed");
    assert_eq!(number(&line, "bytes_in"), 100_000);
    assert_eq!(number(&line, "bytes_out"), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_half_close_lets_the_client_keep_sending() {
    // Greets, half-closes its write side, then counts what the client still sends.
    let (counts, mut received) = mpsc::unbounded_channel::<u64>();
    let backend = Backend::start("127.0.0.1:0", move |mut stream: TcpStream| {
        let counts = counts.clone();
        async move {
            let _ = stream.write_all(b"hello\n").await;
            let _ = stream.shutdown().await;
            let total = count_to_eof(&mut stream).await;
            let _ = counts.send(total);
        }
    })
    .await;
    let (proxy, front) = start("", "", &backend).await;

    let mut client = TcpStream::connect(front).await.expect("connect");
    let port = port_of(&client);
    let greeting = read_until_closed(&mut client).await;
    assert_eq!(greeting, b"hello\n", "greeting, then the server's FIN");
    let payload = vec![3u8; 50_000];
    client
        .write_all(&payload)
        .await
        .expect("the client's direction stays open after the server's FIN");
    client.shutdown().await.expect("shutdown");
    let total = tokio::time::timeout(DEADLINE, received.recv())
        .await
        .expect("backend reports within the deadline")
        .expect("backend count");
    assert_eq!(
        total, 50_000,
        "the backend got everything sent after its FIN"
    );

    let line = access_for(&proxy, port).await;
    assert_eq!(field(&line, "termination"), "server_closed");
    assert_eq!(number(&line, "bytes_in"), 50_000);
    assert_eq!(number(&line, "bytes_out"), 6);
}

/// 64 MiB each way.
const BIG: u64 = 64 * 1024 * 1024;
/// Write size, and the largest read checked at once.
const CHUNK: usize = 64 * 1024;
/// The content repeats with this period (prime, so shifted data does not match by chance).
const PERIOD: usize = 251;

fn pattern() -> Vec<u8> {
    (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect()
}

/// Writes `BIG` bytes of the pattern, then half-closes.
async fn send_pattern(writer: &mut (impl AsyncWrite + Unpin)) {
    let block = pattern();
    let mut offset = 0u64;
    while offset < BIG {
        let start = (offset % PERIOD as u64) as usize;
        writer
            .write_all(&block[start..start + CHUNK])
            .await
            .expect("write pattern");
        offset += CHUNK as u64;
    }
    writer
        .shutdown()
        .await
        .expect("half-close after the pattern");
}

/// Reads to EOF, checking the content against the pattern; returns (bytes, content ok).
async fn receive_pattern(reader: &mut (impl AsyncRead + Unpin)) -> (u64, bool) {
    let block = pattern();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    let mut intact = true;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return (offset, intact),
            Ok(n) => {
                let start = (offset % PERIOD as u64) as usize;
                intact &= buf[..n] == block[start..start + n];
                offset += n as u64;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_each_way_are_counted_exactly() {
    // Sends 64 MiB while receiving (and checking) whatever the client sends.
    let (reports, mut received) = mpsc::unbounded_channel::<(u64, bool)>();
    let backend = Backend::start("127.0.0.1:0", move |stream: TcpStream| {
        let reports = reports.clone();
        async move {
            let (mut reader, mut writer) = stream.into_split();
            let ((), report) =
                tokio::join!(send_pattern(&mut writer), receive_pattern(&mut reader));
            let _ = reports.send(report);
        }
    })
    .await;
    let (proxy, front) = start("", "", &backend).await;

    let client = TcpStream::connect(front).await.expect("connect");
    let port = port_of(&client);
    let (mut reader, mut writer) = client.into_split();
    let ((), (downloaded, download_intact)) =
        tokio::time::timeout(Duration::from_secs(120), async {
            tokio::join!(send_pattern(&mut writer), receive_pattern(&mut reader))
        })
        .await
        .expect("both transfers finish");
    assert_eq!(downloaded, BIG, "bytes the client received");
    assert!(download_intact, "server → client content unchanged");
    let (uploaded, upload_intact) = tokio::time::timeout(DEADLINE, received.recv())
        .await
        .expect("backend reports")
        .expect("backend report");
    assert_eq!(uploaded, BIG, "bytes the backend received");
    assert!(upload_intact, "client → server content unchanged");

    let line = access_for(&proxy, port).await;
    assert_eq!(number(&line, "bytes_in"), BIG, "{line}");
    assert_eq!(number(&line, "bytes_out"), BIG, "{line}");
    let server = proxy.server("app", "echo").await;
    assert_eq!(server.bytes_in, BIG);
    assert_eq!(server.bytes_out, BIG);
    assert_eq!(server.total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_times_out_while_a_busy_one_survives() {
    let backend = Backend::echo().await;
    let (proxy, front) = start(r#"timeouts = { client = "300ms" }"#, "", &backend).await;

    let mut idle = TcpStream::connect(front).await.expect("connect idle");
    let idle_port = port_of(&idle);
    assert_eq!(round_trip(&mut idle, b"i").await, b"i");
    let mut busy = TcpStream::connect(front).await.expect("connect busy");
    let busy_port = port_of(&busy);
    assert_eq!(round_trip(&mut busy, b"b").await, b"b");

    // 15 exchanges 100 ms apart: well past the 300 ms limit in total, never idle that long.
    for n in 0..15u8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(round_trip(&mut busy, &[n]).await, [n], "exchange {n}");
    }

    assert!(
        read_until_closed(&mut idle).await.is_empty(),
        "the idle connection is closed without data"
    );
    let line = access_for(&proxy, idle_port).await;
    assert_eq!(field(&line, "termination"), "client_timeout", "{line}");

    assert_eq!(round_trip(&mut busy, b"still here").await, b"still here");
    assert!(
        !access_lines(&proxy).iter().any(from_port(busy_port)),
        "the busy connection has not ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_tunnel_timeout_replaces_client_and_server_timeouts() {
    let backend = Backend::echo().await;
    let config = format!(
        r#"
[admin]
listen = "{{admin}}"

# Short client and server idle limits, overridden by a longer tunnel timeout.
[[listener]]
name = "longer"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "longer"
timeouts = {{ client = "100ms" }}

# A long client idle limit, overridden by a shorter tunnel timeout.
[[listener]]
name = "shorter"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "shorter"
timeouts = {{ client = "30s" }}

[[pool]]
name = "longer"
timeouts = {{ server = "100ms", tunnel = "1s" }}
servers = [ {{ name = "echo", address = "{addr}" }} ]

[[pool]]
name = "shorter"
timeouts = {{ server = "30s", tunnel = "200ms" }}
servers = [ {{ name = "echo", address = "{addr}" }} ]
"#,
        addr = backend.addr
    );
    let proxy = Proxy::start(&config).await;

    let mut clients = Vec::new();
    for listener in ["longer", "shorter"] {
        let mut client = TcpStream::connect(listener_addr(&proxy, listener).await)
            .await
            .expect("connect");
        assert_eq!(round_trip(&mut client, b"x").await, b"x");
        clients.push((listener, client));
    }
    for (listener, client) in &mut clients {
        assert!(
            read_until_closed(client).await.is_empty(),
            "{listener}: closed when idle"
        );
        let line = wait_access(&proxy, listener, on_listener(listener)).await;
        assert_eq!(field(&line, "termination"), "tunnel_timeout", "{line}");
        if *listener == "longer" {
            // The 100 ms client/server limits did not apply: a timer never fires early.
            assert!(number(&line, "duration_ms") >= 1000, "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_max_connections_refuses_past_the_limit() {
    let backend = Backend::echo().await;
    let (proxy, front) = start("max_connections = 2", "", &backend).await;

    let mut first = TcpStream::connect(front).await.expect("connect 1");
    assert_eq!(round_trip(&mut first, b"1").await, b"1");
    let mut second = TcpStream::connect(front).await.expect("connect 2");
    assert_eq!(round_trip(&mut second, b"2").await, b"2");

    // Past the limit: accepted and closed (raw TCP has no words for "too many"), never
    // relayed; the first two still work.
    let mut third = TcpStream::connect(front).await.expect("connect 3");
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, third.read_to_end(&mut rest))
        .await
        .expect("the third client is closed")
        .expect("read");
    assert!(rest.is_empty());
    assert_eq!(round_trip(&mut second, b"still").await, b"still");
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    let listener = &proxy.listeners().await[0];
    assert_eq!((listener.total, listener.failed), (3, 1));

    // A slot that frees lets the next client in.
    drop(first);
    wait_until("the first client's slot freed", || async {
        proxy.listeners().await[0].active == 1
    })
    .await;
    let mut fourth = TcpStream::connect(front).await.expect("connect 4");
    assert_eq!(round_trip(&mut fourth, b"4").await, b"4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_one_byte_round_trips_complete() {
    let backend = Backend::echo().await;
    let (_proxy, front) = start("", "", &backend).await;
    let mut client = TcpStream::connect(front).await.expect("connect");
    client.set_nodelay(true).expect("nodelay");
    // Two small writes then a read per exchange: the pattern Nagle + delayed ACK would
    // stall for ~40 ms each on either hop.
    for n in 0..500u32 {
        let byte = (n % 256) as u8;
        client.write_all(&[byte]).await.expect("write 1");
        client.write_all(&[byte ^ 0xff]).await.expect("write 2");
        let mut back = [0u8; 2];
        tokio::time::timeout(DEADLINE, client.read_exact(&mut back))
            .await
            .expect("reply within the deadline")
            .expect("read");
        assert_eq!(back, [byte, byte ^ 0xff], "exchange {n}");
    }
}
