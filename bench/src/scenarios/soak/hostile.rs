//! Clients that misbehave: slowloris (a request head one byte a second), clients that
//! vanish mid-request or mid-transaction, and malformed bytes on every listener. Their
//! outcomes are counted apart; what matters is that the legitimate traffic does not
//! suffer and that the proxy closes them (its descriptors stay flat).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::database;
use super::ledger::Hostile;
use super::proxy::Listeners;
use super::traffic::Shared;

/// How long a malformed input may go unanswered before it counts as ignored.
const MALFORMED_WAIT: Duration = Duration::from_secs(15);

/// One slowloris client, reconnecting each time the proxy closes it: a POST head sent one
/// byte a second, never finished.
pub async fn slowloris(addr: SocketAddr, shared: Shared) {
    const HEAD: &[u8] = b"POST /slow HTTP/1.1\r\nHost: soak\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut closed = false;
        for &byte in HEAD.iter().cycle() {
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            if stream.write_all(&[byte]).await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 512];
            // A byte a second; an answer (408) or EOF means the proxy gave up on us.
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(_)) => {
                    // The 408: read on until the close.
                    let _ = tokio::time::timeout(MALFORMED_WAIT, drain(&mut stream)).await;
                    closed = true;
                    break;
                }
                Err(_) => {}
            }
        }
        shared.ledger.hostile(if closed {
            Hostile::SlowlorisClosed
        } else {
            Hostile::SlowlorisOpenAtEnd
        });
    }
}

/// Reads until EOF or an error.
async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Clients that go away in the middle, in turn: an HTTP POST with half its body, an HTTP
/// request whose answer is never read, a TCP write never read, an h2 stream half sent,
/// and a PostgreSQL transaction that inserted a row (negative id: it must never be
/// committed) and then lost its connection.
pub async fn vanishers(listeners: Listeners, shared: Shared) {
    let ids = AtomicI64::new(-1);
    let mut turn = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        turn += 1;
        let done = match turn % 5 {
            0 => {
                let head = b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n";
                send_and_drop(
                    listeners.web,
                    &[head.as_slice(), &[b'x'; 5000][..]].concat(),
                )
                .await
            }
            1 => {
                let request = b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: 70000\r\n\r\n";
                send_and_drop(
                    listeners.web,
                    &[request.as_slice(), &[b'y'; 70000][..]].concat(),
                )
                .await
            }
            2 => send_and_drop(listeners.tcp, &[b'z'; 200_000]).await,
            3 => {
                // h2c preface, SETTINGS, HEADERS of a POST without END_STREAM: the body
                // never comes.
                let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                let block = [0x83u8, 0x86, 0x84, 0x41, 0x04, b's', b'o', b'a', b'k'];
                bytes.extend_from_slice(&[0, 0, block.len() as u8, 1, 4, 0, 0, 0, 1]);
                bytes.extend_from_slice(&block);
                send_and_drop(listeners.web, &bytes).await
            }
            _ => {
                let addr = if turn.is_multiple_of(2) {
                    listeners.pg
                } else {
                    listeners.pgtx
                };
                vanish_mid_transaction(addr, ids.fetch_sub(1, Ordering::Relaxed)).await
            }
        };
        if done {
            shared.ledger.hostile(Hostile::Vanished);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connects, writes `bytes` and closes without reading; `true` when the bytes were sent.
async fn send_and_drop(addr: SocketAddr, bytes: &[u8]) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let sent = tokio::time::timeout(Duration::from_secs(5), stream.write_all(bytes))
        .await
        .is_ok_and(|written| written.is_ok());
    // Closed with unread data: the kernel resets the connection, as a crashed client's.
    let _ = stream.set_zero_linger();
    sent
}

/// BEGIN, INSERT row `id`, then the connection drops without COMMIT.
async fn vanish_mid_transaction(addr: SocketAddr, id: i64) -> bool {
    let Ok((client, task)) = database::connect(addr, "soak-vanisher").await else {
        return false;
    };
    let wrote = async {
        client.batch_execute("BEGIN").await?;
        client
            .execute(
                "INSERT INTO soak_writes (id, writer, payload) VALUES ($1, 'vanisher', 'never committed')",
                &[&id],
            )
            .await
    };
    let done = tokio::time::timeout(Duration::from_secs(10), wrote)
        .await
        .is_ok_and(|result| result.is_ok());
    // Dropping the driver task's future drops the socket: no ROLLBACK, no Terminate.
    task.abort();
    drop(client);
    done
}

/// Malformed input on every listener in turn (the admin API's included): HTTP smuggling
/// shapes, a broken chunk, a bad HTTP/2 frame, PostgreSQL startups with impossible
/// lengths or versions, random bytes. Each connection must be answered with an error or
/// closed by the proxy.
pub async fn malformed(listeners: Listeners, shared: Shared) {
    let inputs: Vec<(SocketAddr, Vec<u8>)> = vec![
        (
            listeners.web,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        ),
        (
            listeners.web,
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (listeners.web, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".to_vec()),
        (listeners.web, b"GET /\x00\x01 HTTP/9.9\r\n\r\n".to_vec()),
        (listeners.web, {
            // h2c preface, then a DATA frame on stream 0 (a connection error).
            let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
            bytes.extend_from_slice(&[0, 0, 4, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
            bytes
        }),
        // StartupMessage whose length says 4 GiB.
        (listeners.pg, vec![0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0]),
        // Protocol version 9.9.
        (listeners.pgtx, vec![0, 0, 0, 8, 0, 9, 0, 9]),
        // A startup with a parameter that never ends.
        (listeners.pg, {
            let mut bytes = vec![0, 0, 0, 40, 0, 3, 0, 0];
            bytes.extend_from_slice(b"user\0postgresXXXXXXXXXXXXXXXXXXXXXXXXX");
            bytes.truncate(40);
            bytes
        }),
        (listeners.admin, b"GET /api/v1/pools HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec()),
    ];
    let mut turn = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        let (addr, bytes) = if turn % (inputs.len() + 1) == inputs.len() {
            // Random bytes to a random listener (the tcp one echoes them: also fine).
            let targets = [
                listeners.web,
                listeners.pg,
                listeners.pgtx,
                listeners.tcp,
                listeners.admin,
            ];
            let mut junk = vec![0u8; fastrand::usize(1..4096)];
            fastrand::fill(&mut junk);
            (targets[fastrand::usize(..targets.len())], junk)
        } else {
            inputs[turn % (inputs.len() + 1)].clone()
        };
        turn += 1;
        match refused(addr, &bytes).await {
            Some(true) => shared.ledger.hostile(Hostile::MalformedRefused),
            Some(false) => {
                shared.ledger.hostile(Hostile::MalformedIgnored);
                // Rare and worth a look: which listener, and what it was sent.
                let shown = &bytes[..bytes.len().min(32)];
                shared.ledger.note(format!(
                    "malformed input to {addr} neither answered nor closed in {} s: {} bytes, starting {shown:?}",
                    MALFORMED_WAIT.as_secs(),
                    bytes.len()
                ));
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `bytes` and waits for an answer or the close: `Some(true)` when one came within
/// [`MALFORMED_WAIT`], `Some(false)` when neither did, `None` when the connect failed.
async fn refused(addr: SocketAddr, bytes: &[u8]) -> Option<bool> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    if stream.write_all(bytes).await.is_err() {
        return Some(true);
    }
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(MALFORMED_WAIT, stream.read(&mut buf))
        .await
        .is_ok();
    Some(answered)
}
