//! A stream that first gives back bytes already read from it (after a PROXY header, or a
//! peeked ClientHello), so the TLS handshake sees the connection from its first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner` with `prefix` put back in front of what it reads.
#[derive(Debug)]
pub struct Rewind<S> {
    /// Boxed, and none once read: a client's stream is kept for the connection's life, and
    /// most never have a prefix or soon read it (8 bytes kept instead of 32).
    prefix: Option<Box<Bytes>>,
    inner: S,
}

impl<S> Rewind<S> {
    /// Reads `prefix` first, then `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then(|| Box::new(prefix)),
            inner,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The bytes not yet read back.
    pub fn buffered(&self) -> &[u8] {
        self.prefix.as_deref().map_or(&[], |prefix| prefix.as_ref())
    }

    /// Puts `bytes` back in front of what is still to be read (a buffered reader's
    /// bytes read past what it was asked for).
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.prefix = Some(Box::new(match self.prefix.take() {
            None => bytes,
            Some(rest) => [bytes.as_ref(), rest.as_ref()].concat().into(),
        }));
    }

    /// The bytes not yet read back, and the stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (
            self.prefix.map(|prefix| *prefix).unwrap_or_default(),
            self.inner,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(prefix) = &mut self.prefix {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..n]);
            prefix.advance(n);
            if prefix.is_empty() {
                self.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn unread_bytes_come_before_the_prefix_left_and_the_stream() {
        let stream: &[u8] = b" stream";
        let mut rewind = Rewind::new(Bytes::from_static(b"prefix"), stream);
        let mut first = [0u8; 3];
        assert!(rewind.read_exact(&mut first).await.is_ok());
        assert_eq!(&first, b"pre");
        rewind.unread(Bytes::from_static(b"un"));
        rewind.unread(Bytes::new());
        assert_eq!(rewind.buffered(), b"unfix");
        let mut all = Vec::new();
        assert!(rewind.read_to_end(&mut all).await.is_ok());
        assert_eq!(all, b"unfix stream");
        rewind.unread(Bytes::from_static(b"again"));
        assert_eq!(rewind.into_parts().0, Bytes::from_static(b"again"));
    }
}
