//! Bodies in flight: frames stream through one at a time (hyper's back-pressure holds
//! the sender until the receiver polls), counted for logs and limits; nothing is buffered
//! whole.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::lazy_timer::LazyTimer;
use crate::observe::Termination;

/// Errors carried by bodies in flight.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy sends to clients: a server's streamed body or its own short one. An
/// enum, not a boxed body: every response would otherwise cost an allocation and a dynamic
/// call per frame.
pub enum ProxyBody {
    /// A server's response body, streamed.
    Server(ResponseBody),
    /// The proxy's own: an error page, or nothing (after a `101`).
    Own(Full<Bytes>),
}

impl ProxyBody {
    /// The proxy's own body of `data` (empty: none).
    pub fn own(data: impl Into<Bytes>) -> Self {
        Self::Own(Full::new(data.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Server(body) => Pin::new(body).poll_frame(cx),
            Self::Own(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Server(body) => body.is_end_stream(),
            Self::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Server(body) => body.size_hint(),
            Self::Own(body) => body.size_hint(),
        }
    }
}

/// The request body exceeded `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A client's request body on its way to a server: counted, and cut with `BodyTooLarge`
/// once it passes the listener's limit.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    received: Option<Arc<AtomicU64>>,
    limit: Option<u64>,
}

impl RequestBody {
    /// Wraps `inner`; `received` counts its bytes as they pass (`None`: a body known to be
    /// empty, with nothing to count or limit).
    pub fn new(inner: Incoming, received: Option<Arc<AtomicU64>>, limit: Option<u64>) -> Self {
        Self {
            inner,
            received,
            limit,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let (Some(data), Some(received)) = (frame.data_ref(), &self.received) {
            let total =
                received.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
            if let Some(limit) = self.limit.filter(|&limit| total > limit) {
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge(limit)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a server's response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Read to its end.
    Complete,
    /// The client went away first.
    ClientGone,
    /// The server connection failed.
    ServerError,
    /// The server sent nothing for `timeouts.server`.
    ServerTimeout,
    /// The server was put in maintenance (or went down with `shutdown_sessions`).
    ServerCut,
}

impl Ending {
    /// The termination reason in the access log.
    pub fn reason(self) -> Termination {
        match self {
            Self::Complete => Termination::Ok,
            Self::ClientGone => Termination::ClientAborted,
            Self::ServerError => Termination::ServerError,
            Self::ServerTimeout => Termination::ServerTimeout,
            Self::ServerCut => Termination::ServerCut,
        }
    }
}

/// The body bytes passed on and how the body ended.
#[derive(Debug, Clone, Copy)]
pub struct BodyEnd {
    /// Body bytes passed to the client.
    pub bytes: u64,
    /// How it ended; only a complete body leaves its server connection reusable.
    pub ending: Ending,
}

/// A server's response body on its way to the client; `on_end` runs once when it ends or
/// is dropped (client gone), to give the server connection back and log the request. A
/// server silent for `idle`, or whose sessions are cut, ends it with an error, which
/// closes the client connection (a truncated body must not look complete).
///
/// The idle timer and the watch on the cut are set up when the server first keeps the body
/// waiting: most responses are complete as soon as their head arrives, and need neither.
pub struct ResponseBody {
    inner: Incoming,
    bytes: u64,
    on_end: Option<Box<dyn FnOnce(BodyEnd) + Send>>,
    idle: Duration,
    cut: CancellationToken,
    waiting: Option<Waiting>,
}

/// What a body the server keeps waiting watches: the server's silence (since its last
/// frame; a lazy timer, as every frame moves the deadline later) and its cut.
struct Waiting {
    timer: Option<LazyTimer>,
    since: Instant,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl ResponseBody {
    /// Wraps `inner`, calling `on_end` when it ends; `idle` is the server timeout
    /// (zero: none) and `cut` the server's session token.
    pub fn new(
        inner: Incoming,
        idle: Duration,
        cut: CancellationToken,
        on_end: Box<dyn FnOnce(BodyEnd) + Send>,
    ) -> Self {
        let mut body = Self {
            inner,
            bytes: 0,
            on_end: Some(on_end),
            idle,
            cut,
            waiting: None,
        };
        // A body known to be empty (HEAD, 204, 304) may never be polled.
        if body.inner.is_end_stream() {
            body.end(Ending::Complete);
        }
        body
    }

    fn end(&mut self, ending: Ending) {
        if let Some(on_end) = self.on_end.take() {
            on_end(BodyEnd {
                bytes: self.bytes,
                ending,
            });
        }
    }

    /// Ends the body with an error for `ending`.
    fn fail(&mut self, ending: Ending) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.end(ending);
        Poll::Ready(Some(Err(ending.reason().as_str().into())))
    }

    /// Why the body must end now that the server keeps it waiting, if it must: its
    /// sessions were cut, or it has been silent for `idle`.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Option<Ending> {
        let (idle, cut) = (self.idle, &self.cut);
        let waiting = self.waiting.get_or_insert_with(|| Waiting {
            timer: (!idle.is_zero()).then(LazyTimer::default),
            since: Instant::now(),
            cut: Box::pin(cut.clone().cancelled_owned()),
        });
        if waiting.cut.as_mut().poll(cx).is_ready() {
            return Some(Ending::ServerCut);
        }
        // A deadline too far to count is none.
        let deadline = waiting.since.checked_add(idle)?;
        let silent = waiting
            .timer
            .as_mut()
            .is_some_and(|timer| timer.poll_until(cx, deadline).is_ready());
        silent.then_some(Ending::ServerTimeout)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if let Some(waiting) = self.waiting.as_mut() {
                    waiting.since = Instant::now();
                }
                if self.inner.is_end_stream() {
                    self.end(Ending::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.end(Ending::ServerError);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.end(Ending::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.on_end.is_some()
                    && let Some(ending) = self.poll_waiting(cx)
                {
                    return self.fail(ending);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.end(Ending::ClientGone);
    }
}
