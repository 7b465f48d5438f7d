//! The soak's legitimate clients. Each generator runs until `stop`, in short sessions (a
//! connection lives for tens to hundreds of operations, well under the proxy's
//! `shutdown_timeout`, so that a binary upgrade's drain never has to cut one), and checks
//! every answer byte for byte against what it sent: a difference is corruption.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

use super::database::{self, Acked};
use super::ledger::{Ledger, Proto};
use crate::scenarios::connect;

/// Longest wait for one operation's answer before it counts as a failure.
const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause after a failed connect, so a refused client does not spin.
const BACKOFF: Duration = Duration::from_millis(100);

/// What every generator shares.
#[derive(Clone)]
pub struct Shared {
    /// Where results go.
    pub ledger: Arc<Ledger>,
    /// Set when the run ends: generators finish their current operation and return.
    pub stop: Arc<AtomicBool>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// `len` random bytes.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    fastrand::fill(&mut bytes);
    bytes
}

/// Bytes that differ between what was sent and what came back (a length difference
/// counts in full).
fn differing(sent: &[u8], got: &[u8]) -> u64 {
    let common = sent.iter().zip(got).filter(|(a, b)| a != b).count();
    (common + sent.len().abs_diff(got.len())) as u64
}

/// A short name for an I/O error: its kind.
fn io_kind(error: &std::io::Error) -> String {
    format!("{:?}", error.kind())
}

/// Checks an echoed payload and records the outcome; `false` when it was corrupted.
fn check(shared: &Shared, proto: Proto, started: Instant, sent: &[u8], got: &[u8]) -> bool {
    let bad = differing(sent, got);
    if bad == 0 {
        shared.ledger.ok(proto, sent.len() * 2);
        true
    } else {
        shared.ledger.corrupt(
            proto,
            bad,
            started,
            format!("{bad} of {} bytes differ (got {})", sent.len(), got.len()),
        );
        false
    }
}

/// TCP sessions: random payloads of up to 64 KiB written and read back in full.
pub async fn tcp(addr: SocketAddr, shared: Shared) {
    while !shared.stopped() {
        let started = Instant::now();
        let stream = match connect(addr).await {
            Ok(stream) => stream,
            Err(error) => {
                shared
                    .ledger
                    .fail(Proto::Tcp, "connect", started, format!("{error:#}"));
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let (mut reader, mut writer) = stream.into_split();
        for _ in 0..fastrand::usize(20..200) {
            if shared.stopped() {
                break;
            }
            let payload = random_bytes(fastrand::usize(1..=64 * 1024));
            let started = Instant::now();
            let mut echoed = vec![0u8; payload.len()];
            let exchange = async {
                tokio::try_join!(writer.write_all(&payload), reader.read_exact(&mut echoed))
            };
            match tokio::time::timeout(OP_TIMEOUT, exchange).await {
                Ok(Ok(_)) => {
                    if !check(&shared, Proto::Tcp, started, &payload, &echoed) {
                        break;
                    }
                }
                Ok(Err(error)) => {
                    shared
                        .ledger
                        .fail(Proto::Tcp, &io_kind(&error), started, error.to_string());
                    break;
                }
                Err(_) => {
                    shared
                        .ledger
                        .fail(Proto::Tcp, "timeout", started, "no echo in 15 s");
                    break;
                }
            }
        }
    }
}

/// An echo POST of `body` (a new random one of up to 128 KiB when `None`): its answer
/// must be the body itself.
fn echo_request(authority: SocketAddr, body: Option<Vec<u8>>) -> (Vec<u8>, Request<Full<Bytes>>) {
    let body = body.unwrap_or_else(|| random_bytes(fastrand::usize(0..=128 * 1024)));
    let request = Request::post(format!("http://{authority}/echo"))
        .header("host", authority.to_string())
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())));
    (body, request)
}

/// Sends `request` and checks the echo; `Err(retry)` when the connection is unusable
/// (`retry`: the request never reached a server and may be sent again).
async fn http_exchange<F>(shared: &Shared, proto: Proto, send: F, body: &[u8]) -> Result<(), bool>
where
    F: Future<Output = Result<hyper::Response<hyper::body::Incoming>, hyper::Error>>,
{
    let started = Instant::now();
    let answer = async {
        let response = send.await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, bytes))
    };
    match tokio::time::timeout(OP_TIMEOUT, answer).await {
        Ok(Ok((status, bytes))) if status == hyper::StatusCode::OK => {
            check(shared, proto, started, body, &bytes);
            Ok(())
        }
        Ok(Ok((status, bytes))) => {
            shared.ledger.fail(
                proto,
                &format!("status {}", status.as_u16()),
                started,
                String::from_utf8_lossy(&bytes[..bytes.len().min(100)]).into_owned(),
            );
            Ok(())
        }
        Ok(Err(error)) => {
            // hyper's own text ("http2 error") says little: the causes follow.
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            // Never sent (`is_canceled`: the connection closed before the request left the
            // client, as when a GOAWAY arrives while it waits to be sent), or, in HTTP/2,
            // refused by the server (REFUSED_STREAM, or above a GOAWAY's last stream id):
            // not processed, so sent again, as hyper-util's client does by default.
            let refused = error.is_canceled()
                || (proto == Proto::H2
                    && (text.contains("refused stream")
                        || text.contains("not a result of an error")));
            if refused {
                shared.ledger.retried(proto);
                return Err(true);
            }
            let kind = if error.is_incomplete_message() {
                "connection closed mid-exchange"
            } else {
                "error"
            };
            shared.ledger.fail(proto, kind, started, text);
            Err(false)
        }
        Err(_) => {
            shared
                .ledger
                .fail(proto, "timeout", started, "no answer in 15 s");
            Err(false)
        }
    }
}

/// HTTP/1.1 keep-alive sessions of echo POSTs.
pub async fn http1(addr: SocketAddr, shared: Shared) {
    // A request that never left the client, sent again on the next connection.
    let mut resend: Option<Vec<u8>> = None;
    while !shared.stopped() || resend.is_some() {
        let started = Instant::now();
        let handshake = async {
            let stream = connect(addr).await?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            anyhow::Ok((sender, connection))
        };
        let (mut sender, connection) = match handshake.await {
            Ok(pair) => pair,
            Err(error) => {
                if shared.stopped() {
                    // The run is over: a request never sent is not sent any more.
                    return;
                }
                shared
                    .ledger
                    .fail(Proto::Http1, "connect", started, format!("{error:#}"));
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        tokio::spawn(connection);
        for _ in 0..fastrand::usize(20..200) {
            // A connection the server closed (Connection: close) is not a failure: no
            // request was on it.
            if (shared.stopped() && resend.is_none()) || sender.ready().await.is_err() {
                break;
            }
            let (body, request) = echo_request(addr, resend.take());
            let send = sender.send_request(request);
            match http_exchange(&shared, Proto::Http1, send, &body).await {
                Ok(()) => {}
                Err(true) => {
                    resend = Some(body);
                    break;
                }
                Err(false) => break,
            }
        }
    }
}

/// h2c (prior knowledge) sessions: `streams` concurrent echo POSTs on one connection.
pub async fn h2(addr: SocketAddr, streams: usize, shared: Shared) {
    while !shared.stopped() {
        let started = Instant::now();
        let handshake = async {
            let stream = connect(addr).await?;
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await?;
            anyhow::Ok((sender, connection))
        };
        let (sender, connection) = match handshake.await {
            Ok(pair) => pair,
            Err(error) => {
                shared
                    .ledger
                    .fail(Proto::H2, "connect", started, format!("{error:#}"));
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        tokio::spawn(connection);
        let requests = fastrand::usize(20..200);
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let (mut sender, shared) = (sender.clone(), shared.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..requests {
                    if shared.stopped() || sender.ready().await.is_err() {
                        break;
                    }
                    let (body, request) = echo_request(addr, None);
                    let send = sender.send_request(request);
                    match http_exchange(&shared, Proto::H2, send, &body).await {
                        Ok(()) => {}
                        Err(true) => {
                            // Sent again on the next connection.
                            return Some(body);
                        }
                        Err(false) => break,
                    }
                }
                None
            }));
        }
        for task in tasks {
            if let Ok(Some(body)) = task.await {
                retry_h2(addr, &shared, body).await;
            }
        }
    }
}

/// Sends a refused h2 request again on a new connection.
async fn retry_h2(addr: SocketAddr, shared: &Shared, body: Vec<u8>) {
    let started = Instant::now();
    let attempt = async {
        let stream = connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(connection);
        sender.ready().await?;
        let (_, request) = echo_request(addr, Some(body.clone()));
        anyhow::Ok(sender.send_request(request))
    };
    match attempt.await {
        Ok(send) => {
            let _ = http_exchange(shared, Proto::H2, send, &body).await;
        }
        Err(error) => {
            shared
                .ledger
                .fail(Proto::H2, "connect", started, format!("retry: {error:#}"))
        }
    }
}

/// WebSocket sessions: random binary messages of up to 64 KiB echoed one at a time.
pub async fn websocket(addr: SocketAddr, shared: Shared) {
    while !shared.stopped() {
        let started = Instant::now();
        let open = async {
            let stream = connect(addr).await?;
            let (socket, _) =
                tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await?;
            anyhow::Ok(socket)
        };
        let mut socket = match tokio::time::timeout(OP_TIMEOUT, open).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => {
                shared
                    .ledger
                    .fail(Proto::WebSocket, "upgrade", started, format!("{error:#}"));
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
            Err(_) => {
                shared
                    .ledger
                    .fail(Proto::WebSocket, "timeout", started, "no 101 in 15 s");
                continue;
            }
        };
        let mut clean = true;
        for _ in 0..fastrand::usize(20..200) {
            if shared.stopped() {
                break;
            }
            let payload = random_bytes(fastrand::usize(1..=64 * 1024));
            let started = Instant::now();
            let exchange = async {
                socket.send(Message::binary(payload.clone())).await?;
                loop {
                    match socket.next().await {
                        Some(Ok(Message::Binary(data))) => return Ok(data),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(other)) => {
                            return Err(anyhow::anyhow!("unexpected message {other:?}"));
                        }
                        Some(Err(error)) => return Err(error.into()),
                        None => return Err(anyhow::anyhow!("closed")),
                    }
                }
            };
            match tokio::time::timeout(OP_TIMEOUT, exchange).await {
                Ok(Ok(data)) => {
                    if !check(&shared, Proto::WebSocket, started, &payload, &data) {
                        clean = false;
                        break;
                    }
                }
                Ok(Err(error)) => {
                    shared
                        .ledger
                        .fail(Proto::WebSocket, "error", started, format!("{error:#}"));
                    clean = false;
                    break;
                }
                Err(_) => {
                    shared
                        .ledger
                        .fail(Proto::WebSocket, "timeout", started, "no echo in 15 s");
                    clean = false;
                    break;
                }
            }
        }
        if clean {
            let _ = tokio::time::timeout(Duration::from_secs(5), socket.close(None)).await;
        }
    }
}

/// PostgreSQL sessions against `addr`: each transaction inserts a row with a new id and a
/// payload derived from it, reads it back inside the transaction, and commits; the id of
/// every acknowledged COMMIT goes to `acked`, checked against the table at the end.
pub async fn postgres(
    addr: SocketAddr,
    proto: Proto,
    ids: Arc<AtomicI64>,
    acked: Acked,
    shared: Shared,
) {
    let client_name = format!("{}-{}", proto.name(), fastrand::u32(..));
    while !shared.stopped() {
        let started = Instant::now();
        let (mut client, connection) = match database::connect(addr, &client_name).await {
            Ok(pair) => pair,
            Err(error) => {
                shared.ledger.fail(
                    proto,
                    &database::kind("connect", &error),
                    started,
                    database::describe(&error),
                );
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        for _ in 0..fastrand::usize(10..60) {
            if shared.stopped() {
                break;
            }
            let id = ids.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let outcome =
                tokio::time::timeout(OP_TIMEOUT, database::write(&mut client, id, &client_name))
                    .await;
            match outcome {
                Ok(Ok(bytes)) => {
                    acked.push(id);
                    shared.ledger.ok(proto, bytes);
                }
                Ok(Err(database::WriteError::Mismatch(detail))) => {
                    shared.ledger.corrupt(proto, 1, started, detail);
                    break;
                }
                Ok(Err(database::WriteError::Failed { step, error })) => {
                    shared.ledger.fail(
                        proto,
                        &database::kind(step, &error),
                        started,
                        format!("id {id}: {}", database::describe(&error)),
                    );
                    if client.is_closed() {
                        break;
                    }
                    // E.g. no primary during a failover: retrying at once would only
                    // count the same outage many times.
                    tokio::time::sleep(BACKOFF).await;
                }
                Err(_) => {
                    shared.ledger.fail(
                        proto,
                        "timeout",
                        started,
                        format!("id {id}: no answer in 15 s"),
                    );
                    break;
                }
            }
        }
        drop(client);
        let _ = connection.await;
    }
}
