//! Socket options every proxied connection gets.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};

/// Disables Nagle (proxied request/response traffic must not wait 40 ms) and turns on
/// keepalive so dead peers behind NAT are noticed. Set on listening sockets, the options
/// are inherited by every accepted connection at no per-connection cost. Failures only
/// cost performance, so they are ignored.
pub fn tune_socket<'s>(socket: impl Into<SockRef<'s>>) {
    let socket = socket.into();
    let _ = socket.set_tcp_nodelay(true);
    let _ = socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(Duration::from_secs(60)));
}

/// Moves `stream` to the calling task's runtime: its readiness is from now on reported by
/// this worker's reactor instead of the one that registered it, so reading it no longer
/// wakes this worker from another thread. The socket is duplicated and registered here,
/// and the old descriptor deregistered and closed; the connection itself is untouched.
pub fn move_to_this_worker(stream: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let duplicate: std::net::TcpStream = SockRef::from(&*stream).try_clone()?.into();
    *stream = tokio::net::TcpStream::from_std(duplicate)?;
    Ok(())
}

/// Writes all of `bytes` and flushes. Over TLS a write can leave the encrypted bytes in the
/// TLS layer's buffer when the socket is not writable at that instant (full send buffer, or
/// a socket just registered); without the flush they would wait there for the next write,
/// while the peer waits for them.
pub async fn send_all<S>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::AsyncWriteExt;
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Room on the stack [`poll_read_unbuffered`] reads into: most requests and messages a
/// client sends after a pause fit whole; a longer one continues through the caller's
/// buffer.
const UNBUFFERED_SCRATCH: usize = 4 * 1024;

/// Reads what `stream` has through a scratch array on the stack, so that a connection
/// waiting here holds no heap buffer: idle clients are most of a proxy's connections.
/// `seen` is called with `None` each time the stream has nothing yet (for the caller to
/// give back what it holds meanwhile), then once with the bytes read (empty at the end of
/// the stream). A poll, for the waits that poll their timers and stops beside it.
pub fn poll_read_unbuffered<S, F>(
    cx: &mut Context<'_>,
    stream: &mut S,
    seen: &mut F,
) -> Poll<std::io::Result<()>>
where
    S: tokio::io::AsyncRead + Unpin,
    F: FnMut(Option<&[u8]>),
{
    // Left uninitialised: zeroing 4 KiB on every poll would cost each message read here.
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); UNBUFFERED_SCRATCH];
    let mut read = tokio::io::ReadBuf::uninit(&mut scratch);
    match Pin::new(&mut *stream).poll_read(cx, &mut read) {
        Poll::Pending => {
            seen(None);
            Poll::Pending
        }
        Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        Poll::Ready(Ok(())) => {
            seen(Some(read.filled()));
            Poll::Ready(Ok(()))
        }
    }
}

/// Reads into `buf` for a wait that may last (a client between transactions): while the
/// stream has nothing and `buf` holds nothing, `buf`'s memory is given back and `on_wait`
/// runs, so that an idle connection holds no heap buffer; bytes that arrive go into a
/// buffer of at least `capacity`. When `buf` holds part of a message the read is a plain
/// one. `Ok(0)` is the end of the stream. A poll, not a future: the wait it is part of
/// polls the idle timer and the hard stop beside it, and keeps no future for the read.
pub fn poll_fill_idle<S: tokio::io::AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    buf: &mut bytes::BytesMut,
    capacity: usize,
    stream: &mut S,
    on_wait: &mut impl FnMut(),
) -> Poll<std::io::Result<usize>> {
    if !buf.is_empty() {
        if buf.capacity() - buf.len() < capacity / 2 {
            buf.reserve(capacity);
        }
        return tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf);
    }
    let mut taken = 0;
    let read = poll_read_unbuffered(cx, stream, &mut |read: Option<&[u8]>| match read {
        None => {
            *buf = bytes::BytesMut::new();
            on_wait();
        }
        Some(bytes) => {
            if buf.capacity() == 0 {
                buf.reserve(capacity.max(bytes.len()));
            }
            buf.extend_from_slice(bytes);
            taken = bytes.len();
        }
    });
    read.map_ok(|()| taken)
}

/// Failed accepts on one listening socket, shared by all the loops that accept from it.
/// Out of descriptors (EMFILE) or memory, `accept` fails at once every time it is called;
/// a loop that retried at once would spin a core and write a log line per try. The client
/// waits in the kernel's backlog meanwhile, so backing off loses nothing. Near the limit,
/// accepts fail and succeed by turns as connections come and go, so the error is logged
/// at most once per [`ACCEPT_ERROR_LOG_INTERVAL`] for the listener, however many loops
/// and episodes there are.
#[derive(Debug, Default)]
pub struct AcceptFailures {
    // Failures since the last accept that worked (0: accepting).
    in_a_row: AtomicU64,
    // When the error was last logged.
    logged: std::sync::Mutex<Option<Instant>>,
}

/// How often a listener that keeps failing to accept logs it again.
pub const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl AcceptFailures {
    /// Pause before the next try; logs unless the listener logged within the interval.
    pub async fn failed(&self, listener: &str, error: &std::io::Error) {
        self.in_a_row.fetch_add(1, Ordering::Relaxed);
        let log = {
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let due = logged.is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL);
            if due {
                *logged = Some(now);
            }
            due
        };
        if log {
            tracing::error!(%listener, %error, "accept failed; retrying every 50 ms until it succeeds");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// An accept worked: ends an episode of failures, saying how many there were.
    pub fn succeeded(&self, listener: &str) {
        // One load on the path every accept takes; the swap only after failures.
        if self.in_a_row.load(Ordering::Relaxed) == 0 {
            return;
        }
        let failed = self.in_a_row.swap(0, Ordering::Relaxed);
        if failed > 0 {
            tracing::warn!(%listener, failed, "accepting again");
        }
    }
}
