//! Parked HTTP/1 connections. Most keep-alive connections are idle most of the time
//! (browsers, mobile clients, pooled API clients), and an idle hyper connection keeps its
//! read and write buffers. So after [`super::PARK_AFTER`] without a request, the guard ends the
//! hyper connection without closing the socket (see `guard`), and the stream waits here
//! for the client's next bytes holding no buffer; they start a new hyper connection.

use std::task::Poll;

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::SHUTDOWN_IDLE_GRACE;
use super::proxy::ConnectionContext;

/// Waits on a parked stream for the client's next bytes: `true` with them in `request`,
/// `false` when the connection is to be closed (the client closed, the keep-alive limit
/// since the last response passed, shutdown and its grace passed, hard stop).
///
/// One timer serves both limits (the keep-alive one, moved earlier to the end of the
/// grace at shutdown), and one poll function waits on the read, the timer and the two
/// stops: this future is what every parked connection keeps, and a `select!` over their
/// futures made it half again as large.
///
/// The bytes go to the caller's `request` rather than into a value of this future's own,
/// and the keep-alive limit is read in a block: what this future holds, every parked
/// connection holds.
pub async fn wait<S: AsyncRead + Unpin>(
    stream: &mut S,
    connection: &ConnectionContext,
    request: &mut Bytes,
) -> bool {
    let handler = &connection.handler;
    let _parked = handler.metrics.count_parked();
    let mut deadline = {
        let keep_alive = connection.settings.config.timeouts.keep_alive;
        (connection.in_flight.idle_since())
            .filter(|_| !keep_alive.is_zero())
            .and_then(|since| since.checked_add(keep_alive))
    };
    let mut timer = std::pin::pin!(tokio::time::sleep_until(
        deadline.unwrap_or_else(Instant::now)
    ));
    // One wait for the two stops, in their order: the hard stop is only ever fired after
    // the graceful one (`runtime`), so the wait moves to it once shutdown has begun.
    let (stopping, hard_stop) = (&handler.context.stopping, &handler.context.hard_stop);
    let mut stop = std::pin::pin!(stopping.cancelled());
    let mut stop_seen = false;
    *request = Bytes::new();
    let arrived = std::future::poll_fn(|cx| {
        while stop.as_mut().poll(cx).is_ready() {
            if stop_seen {
                return Poll::Ready(false);
            }
            stop_seen = true;
            let grace_end = Instant::now() + SHUTDOWN_IDLE_GRACE;
            let end = deadline.map_or(grace_end, |deadline| deadline.min(grace_end));
            deadline = Some(end);
            timer.as_mut().reset(end);
            stop.set(hard_stop.cancelled());
        }
        if deadline.is_some() && timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        crate::net::poll_read_unbuffered(cx, stream, &mut |read: Option<&[u8]>| {
            if let Some(bytes) = read {
                *request = Bytes::copy_from_slice(bytes);
            }
        })
        .map(|read| read.is_ok())
    })
    .await;
    arrived && !request.is_empty()
}
