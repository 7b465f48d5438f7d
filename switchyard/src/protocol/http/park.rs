//! Parked HTTP/1 connections. Most keep-alive connections are idle most of the time
//! (browsers, mobile clients, pooled API clients), and an idle hyper connection keeps its
//! read and write buffers. So after [`PARK_AFTER`] without a request, the guard ends the
//! hyper connection without closing the socket (see `guard`), and the stream waits here
//! for the client's next bytes holding no buffer; they start a new hyper connection.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::SHUTDOWN_IDLE_GRACE;
use super::proxy::ConnectionContext;

/// Idle time after a response before a connection is parked: far longer than the gap
/// between the requests of a busy client, which never pays for a new hyper connection;
/// short enough that idle clients soon cost little.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// Waits on a parked stream for the client's next bytes: the stream and the bytes, or
/// `None` when the connection is to be closed (the client closed, the keep-alive limit
/// since the last response passed, shutdown and its grace passed, hard stop).
///
/// One timer serves both limits (the keep-alive one, moved earlier to the end of the
/// grace at shutdown): this future is what every parked connection keeps.
pub async fn wait<S: AsyncRead + Unpin>(
    mut stream: S,
    connection: &ConnectionContext,
) -> Option<(S, Bytes)> {
    let handler = &connection.handler;
    let (stopping, hard_stop) = (&handler.context.stopping, &handler.context.hard_stop);
    let _parked = handler.metrics.count_parked();
    let keep_alive = connection.settings.config.timeouts.keep_alive;
    let mut deadline = (connection.in_flight.idle_since())
        .filter(|_| !keep_alive.is_zero())
        .and_then(|since| since.checked_add(keep_alive));
    let timer = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
    let mut timer = std::pin::pin!(timer);
    let mut request = Bytes::new();
    let arrived = {
        let read = crate::net::read_unbuffered(&mut stream, |read| {
            if let Some(bytes) = read {
                request = Bytes::copy_from_slice(bytes);
            }
        });
        let mut read = std::pin::pin!(read);
        let mut stop_seen = false;
        loop {
            tokio::select! {
                read = read.as_mut() => break read.is_ok(),
                () = timer.as_mut(), if deadline.is_some() => break false,
                () = stopping.cancelled(), if !stop_seen => {
                    stop_seen = true;
                    let grace_end = Instant::now() + SHUTDOWN_IDLE_GRACE;
                    let end = deadline.map_or(grace_end, |deadline| deadline.min(grace_end));
                    deadline = Some(end);
                    timer.as_mut().reset(end);
                }
                () = hard_stop.cancelled() => break false,
            }
        }
    };
    (arrived && !request.is_empty()).then_some((stream, request))
}
