//! Bodies in flight: frames stream through one at a time (hyper's back-pressure holds
//! the sender until the receiver polls), counted for logs and limits; nothing is buffered
//! whole.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Errors carried by bodies in flight.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy sends to clients: a server's streamed body or its own short one.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The request body exceeded `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A client's request body on its way to a server: counted, and cut with `BodyTooLarge`
/// once it passes the listener's limit.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    received: Arc<AtomicU64>,
    limit: Option<u64>,
}

impl RequestBody {
    /// Wraps `inner`; `received` counts its bytes as they pass.
    pub fn new(inner: Incoming, received: Arc<AtomicU64>, limit: Option<u64>) -> Self {
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
        if let Some(data) = frame.data_ref() {
            let total = self
                .received
                .fetch_add(data.len() as u64, Ordering::Relaxed)
                + data.len() as u64;
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
#[derive(Debug, Clone, Copy)]
pub struct BodyEnd {
    /// Body bytes passed to the client.
    pub bytes: u64,
    /// Whether the body was read to its end (else the client left or the server failed).
    pub complete: bool,
    /// Whether the server side failed.
    pub server_error: bool,
}

/// A server's response body on its way to the client; `on_end` runs once when it ends or
/// is dropped (client gone), to give the server connection back and log the request.
pub struct ResponseBody {
    inner: Incoming,
    bytes: u64,
    on_end: Option<Box<dyn FnOnce(BodyEnd) + Send>>,
}

impl ResponseBody {
    /// Wraps `inner`, calling `on_end` when it ends.
    pub fn new(inner: Incoming, on_end: Box<dyn FnOnce(BodyEnd) + Send>) -> Self {
        let mut body = Self {
            inner,
            bytes: 0,
            on_end: Some(on_end),
        };
        // A body known to be empty (HEAD, 204, 304) may never be polled.
        if body.inner.is_end_stream() {
            body.end(true, false);
        }
        body
    }

    fn end(&mut self, complete: bool, server_error: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end(BodyEnd {
                bytes: self.bytes,
                complete,
                server_error,
            });
        }
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
                if self.inner.is_end_stream() {
                    self.end(true, false);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.end(false, true);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.end(true, false);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
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
        self.end(false, false);
    }
}
