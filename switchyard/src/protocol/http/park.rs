//! Parked HTTP/1 connections. Most keep-alive connections are idle most of the time
//! (browsers, mobile clients, pooled API clients), and an idle hyper connection keeps its
//! read and write buffers. So after [`super::PARK_AFTER`] without a request, the guard ends the
//! hyper connection without closing the socket (see `guard`), and the stream waits here
//! for the client's next bytes holding no buffer; they start a new hyper connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFuture;

use super::SHUTDOWN_IDLE_GRACE;
use super::metrics::ParkedCount;
use super::proxy::ConnectionContext;

/// Waits on a parked stream for the client's next bytes: `true` with them in `request`,
/// `false` when the connection is to be closed (the client closed, the keep-alive limit
/// since the last response passed, shutdown and its grace passed, hard stop).
///
/// One timer serves both limits (the keep-alive one, moved earlier to the end of the
/// grace at shutdown), and one poll waits on the read, the timer and the two stops. This
/// future is what every parked connection keeps, so it is a struct of exactly that state:
/// a `select!` over futures made it half again as large, and an `async fn` around a poll
/// closure kept a reference to each of its locals besides.
pub fn wait<'a, S: AsyncRead + Unpin>(
    stream: &'a mut S,
    connection: &'a ConnectionContext,
    request: &'a mut Bytes,
) -> Parked<'a, S> {
    let keep_alive = connection.settings.config.timeouts.keep_alive;
    let deadline = (connection.in_flight.idle_since())
        .filter(|_| !keep_alive.is_zero())
        .and_then(|since| since.checked_add(keep_alive));
    *request = Bytes::new();
    Parked {
        stream,
        request,
        connection,
        _count: connection.handler.metrics.count_parked(),
        deadline,
        stop_seen: false,
        timer: tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
        stop: connection.handler.context.stopping.cancelled(),
    }
}

pin_project_lite::pin_project! {
    /// A parked connection's wait (see [`wait`]).
    pub struct Parked<'a, S> {
        stream: &'a mut S,
        request: &'a mut Bytes,
        connection: &'a ConnectionContext,
        _count: ParkedCount,
        // The keep-alive limit, or the end of the shutdown grace; `None`: no limit.
        deadline: Option<Instant>,
        // The graceful stop has fired: `stop` now waits for the hard one.
        stop_seen: bool,
        #[pin]
        timer: Sleep,
        #[pin]
        stop: WaitForCancellationFuture<'a>,
    }
}

impl<S: AsyncRead + Unpin> Future for Parked<'_, S> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let mut this = self.project();
        // The two stops in their order: the hard stop is only ever fired after the
        // graceful one (`runtime`), so the wait moves to it once shutdown has begun.
        while this.stop.as_mut().poll(cx).is_ready() {
            if *this.stop_seen {
                return Poll::Ready(false);
            }
            *this.stop_seen = true;
            let grace_end = Instant::now() + SHUTDOWN_IDLE_GRACE;
            let end = this
                .deadline
                .map_or(grace_end, |deadline| deadline.min(grace_end));
            *this.deadline = Some(end);
            this.timer.as_mut().reset(end);
            this.stop
                .set(this.connection.handler.context.hard_stop.cancelled());
        }
        if this.deadline.is_some() && this.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        let request = &mut **this.request;
        crate::net::poll_read_unbuffered(cx, &mut **this.stream, &mut |read: Option<&[u8]>| {
            if let Some(bytes) = read {
                *request = Bytes::copy_from_slice(bytes);
            }
        })
        .map(|read| read.is_ok() && !request.is_empty())
    }
}
