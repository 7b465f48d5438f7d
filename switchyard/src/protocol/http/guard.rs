//! The client side of an HTTP connection, below hyper: checks request framing (see
//! `scanner`) before hyper reads a byte, answers refusals itself (400/414/431), and keeps
//! the client's clocks: `timeouts.http_request` from the first byte of a head to its end
//! (slowloris: 408 and close) and `timeouts.keep_alive` between requests (close).
//!
//! An HTTP/1 connection idle for [`Clocks::park_after`] is parked: the guard tells hyper
//! the client has gone (end of input), hyper ends the connection and lets go of its
//! buffers, and the stream, left in a [`ParkSlot`] instead of being closed, waits for the
//! client's next request holding no buffer (see `park`).
//!
//! It also closes HTTP/1 connections the way nginx's lingering close does. A socket closed
//! with unread bytes in its receive buffer (a refused head not read to its end, a request
//! pipelined behind one answered with `Connection: close`) makes the kernel send a reset,
//! and a client that gets the reset before it has read the answer loses the answer. So the
//! guard sends the answer, shuts its write side, then reads and drops what the client
//! still sends, for a bounded time and number of bytes, before the socket is closed.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::errors::error_body;
use super::scanner::{HeadLimits, RequestScanner};
use crate::lazy_timer::LazyTimer;
use crate::wait_queue::WaitQueue;

/// Requests on a connection whose responses have not ended, shared between the request
/// handler (which counts them) and the guard (which runs the idle clock only at zero).
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    times: Mutex<Times>,
    refused: Mutex<Option<u16>>,
    // Set when the guard stops looking (HTTP/2): the connection's idle clock is then kept
    // by `idle_beyond` instead of the guard.
    opaque: AtomicBool,
    /// Counts the waiters of `serving_or_opaque`: with none, and the guard still reading,
    /// nobody waits for a request's begin or end, and they notify no one (a lock each).
    changed: WaitQueue,
}

impl Activity {
    /// A request was received at `now`.
    pub fn begin(&self, now: Instant) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.lock_times().began = Some(now);
        self.notify_watchers();
    }

    /// A request's response ended at `now`: the connection may be idle from then.
    pub fn end(&self, now: Instant) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.lock_times().ended = Some(now);
        self.notify_watchers();
    }

    fn lock_times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the waiters of `idle_beyond` (once the connection is opaque) and
    /// `serving_or_opaque` that the number of requests in flight changed.
    fn notify_watchers(&self) {
        if self.opaque.load(Ordering::Acquire) {
            self.changed.wake_all_now();
        } else {
            self.changed.wake_all();
        }
    }

    /// Completes once a connection the guard no longer reads (HTTP/2) has had no request
    /// in flight for `limit` (the listener's `keep_alive`), counted from `accepted` for a
    /// connection that never had one; never for a zero `limit`.
    pub async fn idle_beyond(&self, limit: Duration, accepted: Instant) {
        if limit.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = (self.opaque.load(Ordering::Acquire) && !self.busy())
                .then(|| self.lock_times().ended.unwrap_or(accepted) + limit);
            match deadline {
                Some(deadline) => tokio::select! {
                    () = tokio::time::sleep_until(deadline) => return,
                    () = changed => {}
                },
                None => changed.await,
            }
        }
    }

    /// Completes once a request is being served, or at once on a connection the guard no
    /// longer reads (HTTP/2, which closes without a race: GOAWAY). Shutdown waits for this
    /// (for a while) before closing an idle HTTP/1.1 connection, so that the response to the
    /// next request says `Connection: close` instead.
    pub async fn serving_or_opaque(&self) {
        let _watching = self.changed.join();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.busy() || self.opaque.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    /// When the latest response ended, if one has: the keep-alive clock runs from then.
    pub fn idle_since(&self) -> Option<Instant> {
        self.lock_times().ended
    }

    /// The status of the request the guard refused itself, if it did (for the access log).
    pub fn refused(&self) -> Option<u16> {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// When the connection's latest request began and its latest response ended.
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    began: Option<Instant>,
    ended: Option<Instant>,
}

/// What the guard's clock should do when the client sends nothing more.
enum Due {
    /// Nothing is timed (a body being received, an opaque stream, a zero timeout).
    Never,
    /// At this instant: refuse with 408 (`true`) or just close.
    At(Instant, bool),
    /// At this instant the idle connection is parked.
    Park(Instant),
    /// A request is in flight: the keep-alive clock starts when its response ends, so not
    /// before this instant; the timer wakes the guard then to look again.
    NotBefore(Instant),
}

/// What the guard does when its clock runs out.
enum Expiry {
    /// Answer 408 and close.
    Refuse,
    /// Close.
    Close,
    /// Park the connection.
    Park,
}

/// The client timeouts the guard keeps.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// From the first byte of a request head to its end.
    pub http_request: Duration,
    /// Between requests.
    pub keep_alive: Duration,
    /// Idle time after a response before an HTTP/1 connection is parked; zero: never.
    pub park_after: Duration,
}

/// What the guard reads a connection's [`Activity`] through: the state the connection's
/// requests share, which holds the activity in place (one allocation per connection, not
/// two, for as long as it lives).
pub type SharedActivity = std::sync::Arc<dyn AsRef<Activity> + Send + Sync>;

/// Where a parked connection's stream is left when hyper drops the guard.
pub type ParkSlot<S> = std::sync::Arc<Mutex<Option<S>>>;

/// A client stream with the checks and clocks above; hyper reads and writes through it.
pub struct Guard<S> {
    // Always there while the guard lives; taken only when a parked guard is dropped.
    inner: Option<S>,
    scanner: RequestScanner,
    clocks: Clocks,
    activity: SharedActivity,
    // Bytes read from the client and checked, not yet handed to hyper.
    ready: Bytes,
    // A response the guard writes itself, then the connection ends.
    refusal: Option<Bytes>,
    accepted: Instant,
    head_started: Option<Instant>,
    // Requests move the keep-alive deadline later: a lazy timer is not reset for each.
    timer: LazyTimer,
    // When the timer last fired: a request still in flight then ends after it.
    fired: Instant,
    // When bytes last came from the client: a request whose head has arrived, not yet
    // begun by the handler, is not idle time.
    last_input: Instant,
    linger: Linger,
    // Set when the connection is being parked: hyper was told the client had gone.
    parking: bool,
    park_slot: ParkSlot<S>,
}

/// Longest a closing connection is read and drained (see the module documentation): long
/// enough for a client to read the answer and close its side, short enough that a client
/// that never stops sending holds nothing for long.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Most bytes read and dropped while a connection closes; a client sending more is cut.
const LINGER_BYTES: usize = 1024 * 1024;

/// Where a connection is in its lingering close.
#[derive(Debug, Clone, Copy)]
enum Linger {
    /// Not closing.
    Open,
    /// The write side is shut: reading and dropping until `until`, at most `budget` more
    /// bytes.
    Draining { until: Instant, budget: usize },
    /// The client closed its side, or time or bytes ran out: the socket may be closed.
    Done,
}

impl<S> Guard<S> {
    fn activity(&self) -> &Activity {
        (*self.activity).as_ref()
    }

    /// Wraps a client stream; `early` holds bytes already read from it (after a PROXY
    /// header), checked like the rest.
    pub fn new(
        inner: S,
        early: Bytes,
        limits: HeadLimits,
        clocks: Clocks,
        activity: SharedActivity,
        park_slot: ParkSlot<S>,
    ) -> Self {
        let now = Instant::now();
        let mut guard = Self {
            inner: Some(inner),
            scanner: RequestScanner::new(limits),
            clocks,
            activity,
            ready: Bytes::new(),
            refusal: None,
            accepted: now,
            head_started: None,
            timer: LazyTimer::default(),
            fired: now,
            last_input: now,
            linger: Linger::Open,
            parking: false,
            park_slot,
        };
        if !early.is_empty() && guard.check(&early) {
            guard.ready = early;
        }
        guard
    }

    /// Checks freshly read bytes: true if they may pass on, else the rest of the
    /// connection is replaced with a refusal.
    fn check(&mut self, data: &[u8]) -> bool {
        let was_between = self.scanner.between_requests();
        let now = Instant::now();
        self.last_input = now;
        match self.scanner.push(data) {
            Ok(()) => {
                if !self.scanner.in_head() {
                    self.head_started = None;
                } else if was_between || self.head_started.is_none() {
                    self.head_started = Some(now);
                }
                true
            }
            Err(violation) => {
                self.refuse(violation.status(), &violation.to_string());
                false
            }
        }
    }

    fn refuse(&mut self, status: u16, message: &str) {
        tracing::info!(status, reason = message, "refused a client request");
        *self
            .activity()
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(status);
        // Bytes hyper has not seen yet are dropped with the rest of the connection.
        self.ready = Bytes::new();
        if self.activity().busy() {
            // A response is being written: a refusal now would corrupt it; just close.
            self.refusal = Some(Bytes::new());
            return;
        }
        let status_text = hyper::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let (content_type, body) = error_body(
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST),
            message,
            false,
        );
        let response = format!(
            "HTTP/1.1 {status} {status_text}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        self.refusal = Some(Bytes::from(response));
    }

    /// The deadline that applies now, and what happens at it. A zero timeout is no limit.
    fn due(&self) -> Due {
        let Clocks {
            http_request,
            keep_alive,
            park_after,
        } = self.clocks;
        let at = |limit: Duration, from: Instant, answer: bool| {
            if limit.is_zero() {
                Due::Never
            } else {
                Due::At(from + limit, answer)
            }
        };
        if self.scanner.is_opaque() {
            return Due::Never;
        }
        if let Some(started) = self.head_started {
            return at(http_request, started, true);
        }
        if !self.scanner.between_requests() {
            return Due::Never;
        }
        // Parking comes first when it is due before the keep-alive limit.
        let parks = !park_after.is_zero() && (keep_alive.is_zero() || park_after < keep_alive);
        let idle_limit = if parks { park_after } else { keep_alive };
        let times = *self.activity().lock_times();
        if self.activity().busy() {
            let floor = times
                .began
                .map_or(self.fired, |began| began.max(self.fired));
            return match at(idle_limit, floor, false) {
                Due::At(not_before, _) => Due::NotBefore(not_before),
                never => never,
            };
        }
        match times.ended.map(|ended| ended.max(self.last_input)) {
            Some(since) if parks => Due::Park(since + park_after),
            Some(since) => at(keep_alive, since, false),
            // No request yet: the first must start and end within `http_request`.
            None => at(http_request, self.accepted, true),
        }
    }

    /// Runs the clock while the client sends nothing: ready with what to do once the
    /// deadline passes.
    fn poll_clock(&mut self, cx: &mut Context<'_>) -> Poll<Expiry> {
        loop {
            match self.due() {
                Due::Never => return Poll::Pending,
                Due::At(deadline, answer) => {
                    ready!(self.timer.poll_until(cx, deadline));
                    return Poll::Ready(if answer {
                        Expiry::Refuse
                    } else {
                        Expiry::Close
                    });
                }
                Due::Park(deadline) => {
                    ready!(self.timer.poll_until(cx, deadline));
                    return Poll::Ready(Expiry::Park);
                }
                Due::NotBefore(instant) => self.fired = ready!(self.timer.poll_until(cx, instant)),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guard<S> {
    /// Shuts the write side (what was written is flushed first), then reads and drops what
    /// the client sends until it closes its side, [`LINGER_BYTES`] have come or
    /// [`LINGER_TIME`] has passed.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            self.linger = match self.linger {
                Linger::Done => return Poll::Ready(()),
                Linger::Open => {
                    match inner_of(&mut self.inner).map(|inner| Pin::new(inner).poll_shutdown(cx)) {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(Ok(()))) => Linger::Draining {
                            until: Instant::now() + LINGER_TIME,
                            budget: LINGER_BYTES,
                        },
                        Ok(Poll::Ready(Err(_))) | Err(_) => Linger::Done,
                    }
                }
                Linger::Draining { until, budget } => {
                    let mut scratch = [0u8; 8192];
                    let mut dropped = ReadBuf::new(&mut scratch);
                    let read = match inner_of(&mut self.inner) {
                        Ok(inner) => Pin::new(inner).poll_read(cx, &mut dropped),
                        Err(error) => Poll::Ready(Err(error)),
                    };
                    match read {
                        Poll::Ready(Ok(())) if (1..budget).contains(&dropped.filled().len()) => {
                            Linger::Draining {
                                until,
                                budget: budget - dropped.filled().len(),
                            }
                        }
                        // The client's end, an error, or the budget spent.
                        Poll::Ready(_) => Linger::Done,
                        Poll::Pending => {
                            ready!(self.timer.poll_until(cx, until));
                            Linger::Done
                        }
                    }
                }
            };
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(refusal) = &mut this.refusal {
                while refusal.has_remaining() {
                    match Pin::new(inner_of(&mut this.inner)?).poll_write(cx, refusal.chunk()) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                        Poll::Ready(Ok(n)) => refusal.advance(n),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                // While hyper still writes a response, it lingers when it shuts down after.
                if !this.activity().busy() {
                    ready!(this.poll_linger(cx));
                }
                // End of input for hyper: it closes the connection.
                return Poll::Ready(Ok(()));
            }
            if this.ready.has_remaining() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.scanner.is_opaque() {
                if !this.activity().opaque.swap(true, Ordering::AcqRel) {
                    this.activity().changed.wake_all_now();
                }
                return Pin::new(inner_of(&mut this.inner)?).poll_read(cx, buf);
            }
            // Read straight into hyper's buffer; bytes that fail the check are taken back
            // before hyper sees them.
            let before = buf.filled().len();
            match Pin::new(inner_of(&mut this.inner)?).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    if buf.filled().len() == before || this.check(&buf.filled()[before..]) {
                        return Poll::Ready(Ok(()));
                    }
                    buf.set_filled(before);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    let Poll::Ready(expiry) = this.poll_clock(cx) else {
                        return Poll::Pending;
                    };
                    match expiry {
                        Expiry::Refuse => this.refuse(408, "request headers not received in time"),
                        Expiry::Close => this.refusal = Some(Bytes::new()),
                        // End of input for hyper, which ends the connection; the stream
                        // goes to the park slot when hyper drops the guard.
                        Expiry::Park => {
                            this.parking = true;
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(inner_of(&mut self.inner)?).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(inner_of(&mut self.inner)?).poll_flush(cx)
    }

    /// HTTP/1: the lingering close (see the module documentation). After an upgrade, or on
    /// HTTP/2, only the write side's end: a tunnel's other direction goes on.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parking {
            // Parked, not closed: the stream stays open for the client's next request.
            return Poll::Ready(Ok(()));
        }
        if self.scanner.is_opaque() {
            return Pin::new(inner_of(&mut self.inner)?).poll_shutdown(cx);
        }
        ready!(self.poll_linger(cx));
        Poll::Ready(Ok(()))
    }

    /// Small writes joined (see [`crate::joined_writes`]).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        crate::joined_writes::poll_write_joined(Pin::new(inner_of(&mut self.inner)?), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.is_write_vectored())
    }
}

impl<S> Drop for Guard<S> {
    /// A parked connection's stream goes to the park slot instead of being closed.
    fn drop(&mut self) {
        if self.parking
            && let Some(inner) = self.inner.take()
        {
            *self.park_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(inner);
        }
    }
}

/// The guard's stream; gone only once a parked guard is dropped, so never while it is used.
fn inner_of<S>(inner: &mut Option<S>) -> io::Result<&mut S> {
    inner
        .as_mut()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection parked"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guard(stream: tokio::io::DuplexStream) -> Guard<tokio::io::DuplexStream> {
        let limits = HeadLimits {
            max_header_bytes: 1024,
            max_headers: 10,
            max_uri_bytes: 64,
        };
        let clocks = Clocks {
            http_request: Duration::ZERO,
            keep_alive: Duration::ZERO,
            park_after: Duration::ZERO,
        };
        Guard::new(
            stream,
            Bytes::new(),
            limits,
            clocks,
            std::sync::Arc::new(Activity::default()),
            Default::default(),
        )
    }

    // A guard under test shares its activity with nothing else.
    impl AsRef<Activity> for Activity {
        fn as_ref(&self) -> &Activity {
            self
        }
    }

    /// A response head and body written vectored through the guard arrive whole (the
    /// joining itself is tested in `joined_writes`).
    #[tokio::test]
    async fn a_vectored_response_arrives_whole() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let mut guard = guard(near);
        let (head, body) = (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"[..],
            &b"hello"[..],
        );
        let bufs = [io::IoSlice::new(head), io::IoSlice::new(body)];
        let n = std::future::poll_fn(|cx| Pin::new(&mut guard).poll_write_vectored(cx, &bufs))
            .await
            .expect("write");
        assert_eq!(n, head.len() + body.len());
        guard.shutdown().await.expect("shutdown");
        drop(guard);
        let mut received = Vec::new();
        far.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, [head, body].concat());
    }
}
