//! Moving bytes both ways between a client and a server socket.
//!
//! Written against `&TcpStream` readiness instead of `tokio::io::copy_bidirectional` for two
//! reasons a proxy cares about: buffers are borrowed from a per-thread pool only while data
//! is moving, so an idle connection holds no buffer memory; and every chunk updates the live
//! byte counters and the idle clock that both directions share.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{self, Read};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, ready};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::observe::Termination;
use crate::tally::Tally;

/// Size of one relay buffer.
const BUFFER_SIZE: usize = 32 * 1024;
/// Buffer of each direction of [`relay_streams`]: one TLS record's plaintext at most, the
/// front of a pooled buffer.
const STREAM_BUFFER_SIZE: usize = 16 * 1024;
const _: () = assert!(STREAM_BUFFER_SIZE <= BUFFER_SIZE);
/// Buffers kept per thread for reuse.
const POOLED_BUFFERS: usize = 64;

thread_local! {
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from the thread's pool, returned on drop.
struct PooledBuffer(Option<Box<[u8]>>);

impl PooledBuffer {
    fn take() -> Self {
        let buffer = BUFFERS
            .with(|pool| pool.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice());
        Self(Some(buffer))
    }

    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.0.take() {
            BUFFERS.with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOLED_BUFFERS {
                    pool.push(buffer);
                }
            });
        }
    }
}

/// Rewrites what the client sends as it passes (a protocol mapping ids the proxy issued to
/// the server's): given each chunk read, the bytes to send on. It may hold bytes back (a
/// message not yet whole) and send them with a later chunk.
pub trait Rewrite: Send {
    /// The bytes to send for `chunk`.
    fn rewrite<'a>(&mut self, chunk: &'a [u8]) -> Cow<'a, [u8]>;
}

/// The bytes to send for `chunk`: rewritten when there is a rewrite.
fn rewritten<'a>(rewrite: &mut Option<&mut dyn Rewrite>, chunk: &'a [u8]) -> Cow<'a, [u8]> {
    match rewrite {
        Some(rewrite) => rewrite.rewrite(chunk),
        None => Cow::Borrowed(chunk),
    }
}

/// How long a relay may sit idle, and what to call it when it does.
#[derive(Debug, Clone, Copy)]
pub struct IdleLimit {
    /// Longest time without traffic in either direction.
    pub after: Duration,
    /// The reason reported when it expires.
    pub reason: Termination,
}

impl IdleLimit {
    /// The effective limit: `tunnel` when set, else the shorter of `client` and `server`.
    /// Zero durations mean "no limit".
    pub fn choose(client: Duration, server: Duration, tunnel: Option<Duration>) -> Option<Self> {
        if let Some(tunnel) = tunnel {
            return (!tunnel.is_zero()).then_some(Self {
                after: tunnel,
                reason: Termination::TunnelTimeout,
            });
        }
        let candidates = [
            (client, Termination::ClientTimeout),
            (server, Termination::ServerTimeout),
        ];
        candidates
            .into_iter()
            .filter(|(d, _)| !d.is_zero())
            .min_by_key(|(d, _)| *d)
            .map(|(after, reason)| Self { after, reason })
    }
}

/// Live counters a relay adds to as bytes move.
pub struct RelayCounters<'a> {
    /// Incremented with client → server bytes.
    pub to_server: &'a [&'a Tally],
    /// Incremented with server → client bytes.
    pub to_client: &'a [&'a Tally],
}

/// What a relay did.
#[derive(Debug, Clone, Copy)]
pub struct RelayOutcome {
    /// Bytes from client to server.
    pub bytes_in: u64,
    /// Bytes from server to client.
    pub bytes_out: u64,
    /// Why it ended.
    pub termination: Termination,
}

/// Time of the last traffic, shared by both directions.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// What both directions of one relay share: the idle clock, the bytes moved each way and
/// which side closed first.
struct Session<'a> {
    activity: Activity,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    first_close: std::sync::Mutex<Option<Side>>,
    counters: RelayCounters<'a>,
}

impl<'a> Session<'a> {
    fn new(counters: RelayCounters<'a>) -> Self {
        Self {
            activity: Activity {
                start: Instant::now(),
                last_ms: AtomicU64::new(0),
            },
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            first_close: std::sync::Mutex::new(None),
            counters,
        }
    }

    /// Counts `n` bytes read from `from` and written to the other side.
    fn moved(&self, from: Side, n: usize) {
        let (own, counters) = match from {
            Side::Client => (&self.bytes_in, self.counters.to_server),
            Side::Server => (&self.bytes_out, self.counters.to_client),
        };
        own.fetch_add(n as u64, Ordering::Relaxed);
        for counter in counters {
            counter.add(n as u64);
        }
    }

    /// Notes an EOF from `side` (only the first one decides the termination).
    fn closed(&self, side: Side) {
        self.first_close
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(side);
    }

    /// Waits for both directions (or the idle limit, a cut, a shutdown) and sums up.
    async fn outcome(
        &self,
        both: impl Future<Output = Result<((), ()), Side>>,
        idle: Option<IdleLimit>,
        cut: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> RelayOutcome {
        let termination = tokio::select! {
            result = both => match result {
                Ok(_) => match *self.first_close.lock().unwrap_or_else(|e| e.into_inner()) {
                    Some(Side::Server) => Termination::ServerClosed,
                    _ => Termination::ClientClosed,
                },
                Err(Side::Client) => Termination::ClientError,
                Err(Side::Server) => Termination::ServerError,
            },
            reason = idle_watch(&self.activity, idle) => reason,
            () = cut.cancelled() => Termination::ServerCut,
            () = shutdown.cancelled() => Termination::Shutdown,
        };
        RelayOutcome {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            termination,
        }
    }
}

/// Relays until both directions are closed, a socket fails, the idle limit passes, or
/// `cut`/`shutdown` fire. A FIN in one direction is passed on while the other keeps flowing.
/// `rewrite` (if any) sees what the client sends.
pub async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    idle: Option<IdleLimit>,
    cut: &CancellationToken,
    shutdown: &CancellationToken,
    counters: RelayCounters<'_>,
    rewrite: Option<&mut dyn Rewrite>,
) -> RelayOutcome {
    let session = Session::new(counters);
    let upstream = pump(client, server, Side::Client, &session, rewrite);
    let downstream = pump(server, client, Side::Server, &session, None);
    session
        .outcome(
            async { tokio::try_join!(upstream, downstream) },
            idle,
            cut,
            shutdown,
        )
        .await
}

/// Relays between any two byte streams (TLS on one side or both) with the same rules as
/// [`relay`]. A generic stream cannot be polled for readiness without reading, so each
/// read borrows a buffer from the thread's pool for the poll and gives it back when the
/// stream has nothing yet: an idle connection holds no buffer here either.
pub async fn relay_streams<C, S>(
    client: C,
    server: S,
    idle: Option<IdleLimit>,
    cut: &CancellationToken,
    shutdown: &CancellationToken,
    counters: RelayCounters<'_>,
    rewrite: Option<&mut dyn Rewrite>,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = Session::new(counters);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let upstream = pump_stream(
        &mut client_read,
        &mut server_write,
        Side::Client,
        &session,
        rewrite,
    );
    let downstream = pump_stream(
        &mut server_read,
        &mut client_write,
        Side::Server,
        &session,
        None,
    );
    session
        .outcome(
            async { tokio::try_join!(upstream, downstream) },
            idle,
            cut,
            shutdown,
        )
        .await
}

/// [`pump`] for generic streams: copies until EOF (then shuts the writer down, which for TLS
/// sends close_notify) or an error. A TLS peer that closes without close_notify counts as
/// a close, as it does for most clients.
async fn pump_stream<R, W>(
    from: &mut R,
    to: &mut W,
    from_side: Side,
    session: &Session<'_>,
    mut rewrite: Option<&mut dyn Rewrite>,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let to_side = from_side.other();
    loop {
        let read = std::future::poll_fn(|cx| {
            let mut buffer = PooledBuffer::take();
            let mut read = ReadBuf::new(&mut buffer.as_mut()[..STREAM_BUFFER_SIZE]);
            // Nothing yet: the buffer goes back to the pool for the wait.
            ready!(Pin::new(&mut *from).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            Poll::Ready(Ok::<_, io::Error>((buffer, n)))
        })
        .await;
        let (mut buffer, n) = match read {
            Ok(read) => read,
            // A TLS peer gone without close_notify: the end, as with no bytes.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => (PooledBuffer(None), 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(from_side),
        };
        if n == 0 {
            session.closed(from_side);
            let _ = to.shutdown().await;
            return Ok(());
        }
        session.activity.touch();
        let out = rewritten(&mut rewrite, &buffer.as_mut()[..n]);
        to.write_all(&out).await.map_err(|_| to_side)?;
        to.flush().await.map_err(|_| to_side)?;
        session.moved(from_side, n);
    }
}

async fn idle_watch(activity: &Activity, idle: Option<IdleLimit>) -> Termination {
    let Some(limit) = idle else {
        return std::future::pending().await;
    };
    loop {
        let deadline = activity.last() + limit.after;
        if Instant::now() >= deadline {
            return limit.reason;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Copies one direction until EOF (then half-closes the writer) or an error, which is
/// reported as the side whose socket failed.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    from_side: Side,
    session: &Session<'_>,
    mut rewrite: Option<&mut dyn Rewrite>,
) -> Result<(), Side> {
    let to_side = from_side.other();
    loop {
        from.readable().await.map_err(|_| from_side)?;
        let mut buffer = PooledBuffer::take();
        loop {
            let (n, drained) = match read_chunk(from, buffer.as_mut()) {
                Ok((0, _)) => {
                    session.closed(from_side);
                    // Pass the FIN on; the other direction keeps flowing.
                    let _ = SockRef::from(to).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(from_side),
            };
            session.activity.touch();
            let out = rewritten(&mut rewrite, &buffer.as_mut()[..n]);
            write_all(to, &out, &session.activity)
                .await
                .map_err(|_| to_side)?;
            session.moved(from_side, n);
            if drained {
                break;
            }
        }
    }
}

/// Reads once into `buffer`; also says whether the socket is known to be drained.
///
/// A read that returns less than the buffer holds has emptied the socket's receive queue,
/// so the readiness is cleared right away instead of paying for one more `read` that would
/// only return `EAGAIN` — one syscall saved per message on request/response traffic. This
/// is safe with tokio: readiness is cleared only if no new event arrived since it was
/// observed, and end-of-stream and error states are never cleared.
fn read_chunk(from: &TcpStream, buffer: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut short_read = None;
    let result = from.try_io(Interest::READABLE, || {
        let n = (&*SockRef::from(from)).read(buffer)?;
        if n > 0 && n < buffer.len() {
            short_read = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short_read {
        Some(n) => Ok((n, true)),
        None => result.map(|n| (n, false)),
    }
}

/// Writes all of `data`, touching the idle clock on each bit of progress so a slow but
/// live reader is not mistaken for an idle one.
pub async fn write_all(
    to: &TcpStream,
    mut data: &[u8],
    activity_hint: &impl Touch,
) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                activity_hint.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Something that notes traffic.
pub trait Touch {
    /// Notes that bytes moved now.
    fn touch(&self);
}

impl Touch for Activity {
    fn touch(&self) {
        Activity::touch(self);
    }
}

impl Touch for () {
    fn touch(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_limit_prefers_tunnel_then_shortest() {
        let s = Duration::from_secs;
        let limit = IdleLimit::choose(s(30), s(10), None).map(|l| (l.after, l.reason));
        assert_eq!(limit, Some((s(10), Termination::ServerTimeout)));
        let limit = IdleLimit::choose(s(30), s(10), Some(s(3600))).map(|l| (l.after, l.reason));
        assert_eq!(limit, Some((s(3600), Termination::TunnelTimeout)));
        assert!(IdleLimit::choose(s(0), s(0), None).is_none());
    }
}
