//! Vectored writes sent as one plain write when they are small.
//!
//! hyper hands its writes over as a list of buffers (a message head, then body chunks) to
//! any stream that says it can write vectored, and a socket turns that into `writev(2)`,
//! even for a list of one. On Linux `writev` goes through the file layer before it reaches
//! the socket, and costs more than `send(2)` of the same bytes; a small message is also
//! better as one TCP segment than as two. So up to [`JOIN_WRITES_UP_TO`] bytes are copied
//! into one buffer on the stack and sent with a plain write; a larger body is not worth
//! copying and goes out vectored.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes a vectored write may hold to be joined into one plain write.
pub const JOIN_WRITES_UP_TO: usize = 8 * 1024;

/// Writes `bufs` to `writer`: one non-empty buffer as a plain write, several as one plain
/// write of their concatenation up to [`JOIN_WRITES_UP_TO`] bytes, else vectored. Like any
/// write it may take only a prefix; the caller offers the rest again.
pub fn poll_write_joined<W: AsyncWrite + ?Sized>(
    writer: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut filled = bufs.iter().filter(|buf| !buf.is_empty());
    let (Some(first), second) = (filled.next(), filled.next()) else {
        return Poll::Ready(Ok(0));
    };
    let Some(second) = second else {
        return writer.poll_write(cx, first);
    };
    let total: usize = bufs.iter().map(|buf| buf.len()).sum();
    if total > JOIN_WRITES_UP_TO {
        return writer.poll_write_vectored(cx, bufs);
    }
    // Joined afresh each time (what was not written is offered again by the caller), on
    // the stack: a buffer kept with the stream would stay allocated for its whole life.
    let mut joined = smallvec::SmallVec::<[u8; JOIN_WRITES_UP_TO]>::new();
    joined.extend_from_slice(first);
    joined.extend_from_slice(second);
    for buf in filled {
        joined.extend_from_slice(buf);
    }
    writer.poll_write(cx, &joined)
}

/// A stream whose vectored writes go through [`poll_write_joined`]: for streams hyper
/// writes to directly (the server connections of HTTP pools).
#[derive(Debug)]
pub struct JoinedWrites<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for JoinedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JoinedWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_joined(Pin::new(&mut self.0), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Joined or not, and however little the peer takes at a time, vectored writes arrive
    /// whole and in order: one buffer, a small pair, a large pair, empty buffers between.
    #[tokio::test]
    async fn vectored_writes_arrive_whole_through_partial_writes() {
        let (near, mut far) = tokio::io::duplex(7);
        let mut stream = JoinedWrites(near);
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec();
        let large = vec![b'x'; JOIN_WRITES_UP_TO + 1];
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            far.read_to_end(&mut received).await.map(|_| received)
        });
        let messages = [
            (head.clone(), Vec::new()),
            (head.clone(), b"hello".to_vec()),
            (head.clone(), large.clone()),
        ];
        for (first, second) in &messages {
            let (mut first, mut second) = (&first[..], &second[..]);
            while !first.is_empty() || !second.is_empty() {
                let bufs = [
                    io::IoSlice::new(&[]),
                    io::IoSlice::new(first),
                    io::IoSlice::new(&[]),
                    io::IoSlice::new(second),
                ];
                let n =
                    std::future::poll_fn(|cx| Pin::new(&mut stream).poll_write_vectored(cx, &bufs))
                        .await
                        .expect("write");
                assert!(n > 0, "a write with bytes to write wrote none");
                let from_first = n.min(first.len());
                first = &first[from_first..];
                second = &second[n - from_first..];
            }
        }
        stream.shutdown().await.expect("shutdown");
        drop(stream);
        let received = reader.await.expect("reader").expect("read");
        let expected = [&head[..], &head[..], b"hello", &head[..], &large[..]].concat();
        assert_eq!(received.len(), expected.len());
        assert!(
            received == expected,
            "the bytes arrived changed or out of order"
        );
    }
}
