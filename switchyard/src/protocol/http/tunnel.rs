//! After a `101 Switching Protocols` (WebSocket and other upgrades): bytes both ways,
//! unchanged, until either side closes or nothing moves for the tunnel timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::observe::Termination;
use crate::protocol::Context;

/// Size of each direction's copy buffer.
const BUFFER: usize = 16 * 1024;

/// Runs the tunnel between the two upgraded connections; returns the termination reason
/// and the bytes sent client to server and server to client.
pub async fn run(
    client: OnUpgrade,
    server: OnUpgrade,
    idle: Duration,
    cut: CancellationToken,
    context: &Context,
) -> (Termination, u64, u64) {
    let (client, server) = match tokio::try_join!(client, server) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return (Termination::UpgradeFailed, 0, 0);
        }
    };
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (server_read, server_write) = tokio::io::split(TokioIo::new(server));
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let copying = async {
        tokio::join!(
            copy(client_read, server_write, &up, &last, start),
            copy(server_read, client_write, &down, &last, start)
        )
    };
    let watchdog = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + since + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let termination = tokio::select! {
        _ = copying => Termination::TunnelClosed,
        () = watchdog, if !idle.is_zero() => Termination::TunnelTimeout,
        // Looked at only when one fires, not at each wake-up of the copies.
        interruption = crate::on_wake::cut_or_stop(&cut, &context.hard_stop) => interruption.into(),
    };
    (
        termination,
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
    )
}

/// Copies one direction until EOF or an error, then half-closes the writer.
async fn copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    counter: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}
