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
use std::task::{Context, Poll, ready};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
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

/// Which socket of a relay.
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

    /// The termination of a relay whose socket on this side failed.
    fn failed(self) -> Termination {
        match self {
            Side::Client => Termination::ClientError,
            Side::Server => Termination::ServerError,
        }
    }
}

/// Relays until both directions are closed, a socket fails, the idle limit passes, or
/// `cut`/`shutdown` fire. A FIN in one direction is passed on while the other keeps flowing.
/// `rewrite` (if any) sees what the client sends.
pub fn relay(
    client: &TcpStream,
    server: &TcpStream,
    idle: Option<IdleLimit>,
    cut: &CancellationToken,
    shutdown: &CancellationToken,
    counters: RelayCounters<'_>,
    rewrite: Option<&mut dyn Rewrite>,
) -> impl Future<Output = RelayOutcome> {
    let ends = (SocketEnd(client), SocketEnd(server));
    run(ends, idle, cut, shutdown, counters, rewrite)
}

/// Relays between any two byte streams (TLS on one side or both) with the same rules as
/// [`relay`]. A generic stream cannot be polled for readiness without reading, so each
/// read borrows a buffer from the thread's pool for the poll and gives it back when the
/// stream has nothing yet: an idle connection holds no buffer here either.
pub fn relay_streams<C, S>(
    client: C,
    server: S,
    idle: Option<IdleLimit>,
    cut: &CancellationToken,
    shutdown: &CancellationToken,
    counters: RelayCounters<'_>,
    rewrite: Option<&mut dyn Rewrite>,
) -> impl Future<Output = RelayOutcome>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ends = (StreamEnd(client), StreamEnd(server));
    run(ends, idle, cut, shutdown, counters, rewrite)
}

/// Drives both directions of `ends` (client, server) as one state machine polled in place,
/// not as two futures joined: its state is a few hundred bytes, kept for every idle
/// connection's life, where joined `async` pumps with their readiness and write futures
/// came to kilobytes. (`relay` and `relay_streams` return this future as it is, rather than
/// awaiting it in a future of their own that would hold their arguments a second time.)
async fn run(
    (mut client, mut server): (impl End, impl End),
    idle: Option<IdleLimit>,
    cut: &CancellationToken,
    shutdown: &CancellationToken,
    counters: RelayCounters<'_>,
    mut rewrite: Option<&mut dyn Rewrite>,
) -> RelayOutcome {
    let mut relay = Relay {
        upstream: Pump::new(Side::Client),
        downstream: Pump::new(Side::Server),
        totals: Totals {
            last: Instant::now(),
            bytes_in: 0,
            bytes_out: 0,
            first_close: None,
            counters,
        },
        idle: idle.map(|limit| IdleWatch {
            limit,
            timer: Box::pin(tokio::time::sleep(limit.after)),
        }),
    };
    // The cut and the shutdown are looked at only when one of them fires, not on every
    // wake-up of the relay (each look takes two locks; see `on_wake`).
    let termination = tokio::select! {
        biased;
        termination = std::future::poll_fn(|cx| {
            relay.poll(cx, &mut client, &mut server, &mut rewrite)
        }) => termination,
        interruption = crate::on_wake::cut_or_stop(cut, shutdown) => interruption.into(),
    };
    RelayOutcome {
        bytes_in: relay.totals.bytes_in,
        bytes_out: relay.totals.bytes_out,
        termination,
    }
}

/// Both directions of a relay and what they share.
struct Relay<'a> {
    /// Client to server.
    upstream: Pump,
    /// Server to client.
    downstream: Pump,
    totals: Totals<'a>,
    idle: Option<IdleWatch>,
}

impl Relay<'_> {
    /// Moves what can be moved now; ready with the termination once both directions have
    /// ended, a socket has failed or the relay has been idle too long.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut impl End,
        server: &mut impl End,
        rewrite: &mut Option<&mut dyn Rewrite>,
    ) -> Poll<Termination> {
        let upstream = self
            .upstream
            .poll(cx, client, server, &mut self.totals, rewrite);
        if let Poll::Ready(Err(side)) = upstream {
            return Poll::Ready(side.failed());
        }
        let downstream = self
            .downstream
            .poll(cx, server, client, &mut self.totals, &mut None);
        if let Poll::Ready(Err(side)) = downstream {
            return Poll::Ready(side.failed());
        }
        if upstream.is_ready() && downstream.is_ready() {
            return Poll::Ready(match self.totals.first_close {
                Some(Side::Server) => Termination::ServerClosed,
                _ => Termination::ClientClosed,
            });
        }
        match &mut self.idle {
            Some(idle) => idle.poll(cx, self.totals.last),
            None => Poll::Pending,
        }
    }
}

/// What both directions of one relay count: the last traffic, the bytes moved each way and
/// which side closed first.
struct Totals<'a> {
    last: Instant,
    bytes_in: u64,
    bytes_out: u64,
    first_close: Option<Side>,
    counters: RelayCounters<'a>,
}

impl Totals<'_> {
    /// Notes traffic now, for the idle limit.
    fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Counts `n` bytes read from `from` and written to the other side.
    fn moved(&mut self, from: Side, n: usize) {
        let (own, counters) = match from {
            Side::Client => (&mut self.bytes_in, self.counters.to_server),
            Side::Server => (&mut self.bytes_out, self.counters.to_client),
        };
        *own += n as u64;
        for counter in counters {
            counter.add(n as u64);
        }
    }
}

/// The idle limit's timer. It is armed at a deadline and, when it fires, moved to the
/// last traffic plus the limit if there was traffic since: traffic never touches the timer
/// wheel.
struct IdleWatch {
    limit: IdleLimit,
    timer: Pin<Box<Sleep>>,
}

impl IdleWatch {
    fn poll(&mut self, cx: &mut Context<'_>, last: Instant) -> Poll<Termination> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = last + self.limit.after;
            if Instant::now() >= deadline {
                return Poll::Ready(self.limit.reason);
            }
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// One direction of a relay: read a chunk, send it on, and pass the end of the stream on
/// as a half-close while the other direction keeps flowing.
struct Pump {
    /// The side read from.
    from: Side,
    state: PumpState,
}

enum PumpState {
    Reading,
    /// `read` bytes were read; `out` (what is sent for them) is being written.
    Sending {
        out: Outgoing,
        read: usize,
    },
    /// Written; flushing before counting the bytes.
    Flushing {
        read: usize,
    },
    /// The read side ended: half-closing the other.
    Closing,
    Done,
}

impl Pump {
    fn new(from: Side) -> Self {
        Self {
            from,
            state: PumpState::Reading,
        }
    }

    /// Copies from `from` to `to` until `from` has nothing or `to` takes nothing more:
    /// ready once the end of the stream has been passed on, or with the side that failed.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut impl End,
        to: &mut impl End,
        totals: &mut Totals<'_>,
        rewrite: &mut Option<&mut dyn Rewrite>,
    ) -> Poll<Result<(), Side>> {
        let to_side = self.from.other();
        loop {
            match &mut self.state {
                PumpState::Reading => {
                    let (buffer, read) = ready!(from.poll_chunk(cx)).map_err(|_| self.from)?;
                    if read == 0 {
                        totals.first_close.get_or_insert(self.from);
                        self.state = PumpState::Closing;
                        continue;
                    }
                    totals.touch();
                    let out = Outgoing::for_chunk(buffer, read, rewrite);
                    self.state = PumpState::Sending { out, read };
                }
                PumpState::Sending { out, read } => {
                    while !out.remaining().is_empty() {
                        match ready!(to.poll_send(cx, out.remaining())) {
                            Ok(0) | Err(_) => return Poll::Ready(Err(to_side)),
                            Ok(n) => out.advance(n),
                        }
                        totals.touch();
                    }
                    self.state = PumpState::Flushing { read: *read };
                }
                PumpState::Flushing { read } => {
                    ready!(to.poll_flush_sent(cx)).map_err(|_| to_side)?;
                    totals.moved(self.from, *read);
                    self.state = PumpState::Reading;
                }
                PumpState::Closing => {
                    ready!(to.poll_close_sending(cx));
                    self.state = PumpState::Done;
                }
                PumpState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Bytes on their way to the other side: a range of the pooled buffer they were read into,
/// or a rewrite's own bytes.
enum Outgoing {
    Pooled {
        buffer: PooledBuffer,
        at: usize,
        end: usize,
    },
    Owned {
        bytes: Vec<u8>,
        at: usize,
    },
}

impl Outgoing {
    /// What is sent for the `read` bytes at the front of `buffer`.
    fn for_chunk(
        mut buffer: PooledBuffer,
        read: usize,
        rewrite: &mut Option<&mut dyn Rewrite>,
    ) -> Self {
        let Some(rewrite) = rewrite else {
            return Outgoing::Pooled {
                buffer,
                at: 0,
                end: read,
            };
        };
        let chunk = &buffer.as_mut()[..read];
        let rewritten = rewrite.rewrite(chunk);
        match rewritten {
            Cow::Borrowed(part) => match range_within(chunk, part) {
                Some(range) => Outgoing::Pooled {
                    buffer,
                    at: range.start,
                    end: range.end,
                },
                None => Outgoing::Owned {
                    bytes: part.to_vec(),
                    at: 0,
                },
            },
            Cow::Owned(bytes) => Outgoing::Owned { bytes, at: 0 },
        }
    }

    fn remaining(&mut self) -> &[u8] {
        match self {
            Outgoing::Pooled { buffer, at, end } => &buffer.as_mut()[*at..*end],
            Outgoing::Owned { bytes, at } => &bytes[*at..],
        }
    }

    fn advance(&mut self, n: usize) {
        match self {
            Outgoing::Pooled { at, .. } | Outgoing::Owned { at, .. } => *at += n,
        }
    }
}

/// Where `part` lies in `whole`, when it is a slice of it.
fn range_within(whole: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// One end of a relay as its pumps use it.
trait End {
    /// A chunk read into a pooled buffer (0 bytes: the end of the stream). No buffer is
    /// held while the end has nothing to read.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(PooledBuffer, usize)>>;
    /// Writes some of `data`.
    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>>;
    /// Pushes out what was written (a TLS record).
    fn poll_flush_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ends the sending half (a FIN, or TLS close_notify), failures ignored: the relay ends
    /// this direction either way.
    fn poll_close_sending(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// A plaintext socket, read on readiness so that a buffer is taken only when there are
/// bytes.
struct SocketEnd<'a>(&'a TcpStream);

impl End for SocketEnd<'_> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(PooledBuffer, usize)>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let mut buffer = PooledBuffer::take();
            match read_chunk(self.0, buffer.as_mut()) {
                Ok(read) => return Poll::Ready(Ok((buffer, read))),
                Err(e) if is_retry(&e) => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Err(e) if is_retry(&e) => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_flush_sent(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close_sending(&mut self, _: &mut Context<'_>) -> Poll<()> {
        let _ = SockRef::from(self.0).shutdown(Shutdown::Write);
        Poll::Ready(())
    }
}

/// Any byte stream (TLS): each read borrows a pooled buffer for the poll and gives it back
/// when the stream has nothing yet.
struct StreamEnd<T>(T);

impl<T: AsyncRead + AsyncWrite + Unpin> End for StreamEnd<T> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(PooledBuffer, usize)>> {
        loop {
            let mut buffer = PooledBuffer::take();
            let mut read = ReadBuf::new(&mut buffer.as_mut()[..STREAM_BUFFER_SIZE]);
            let polled = ready!(Pin::new(&mut self.0).poll_read(cx, &mut read));
            let n = read.filled().len();
            return Poll::Ready(match polled {
                Ok(()) => Ok((buffer, n)),
                // A TLS peer gone without close_notify: the end, as with no bytes.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok((buffer, 0)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            });
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close_sending(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        ready!(Pin::new(&mut self.0).poll_shutdown(cx)).ok();
        Poll::Ready(())
    }
}

/// An error that only means "try again".
fn is_retry(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Reads once into `buffer`.
///
/// A read that returns less than the buffer holds has emptied the socket's receive queue,
/// so the readiness is cleared right away instead of paying for one more `read` that would
/// only return `EAGAIN` — one syscall saved per message on request/response traffic. This
/// is safe with tokio: readiness is cleared only if no new event arrived since it was
/// observed, and end-of-stream and error states are never cleared.
fn read_chunk(from: &TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
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
        Some(n) => Ok(n),
        None => result,
    }
}

/// Writes all of `data` to a socket.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

    /// Holds back the last byte of every chunk and sends it with the next one.
    struct HoldLast(Vec<u8>);

    impl Rewrite for HoldLast {
        fn rewrite<'a>(&mut self, chunk: &'a [u8]) -> Cow<'a, [u8]> {
            if self.0.is_empty() {
                let (send, keep) = chunk.split_at(chunk.len().saturating_sub(1));
                self.0 = keep.to_vec();
                return Cow::Borrowed(send);
            }
            let mut joined = std::mem::take(&mut self.0);
            joined.extend_from_slice(chunk);
            self.0 = joined.split_off(joined.len() - 1);
            Cow::Owned(joined)
        }
    }

    fn sent(rewrite: &mut dyn Rewrite, chunk: &[u8]) -> Vec<u8> {
        let mut buffer = PooledBuffer::take();
        buffer.as_mut()[..chunk.len()].copy_from_slice(chunk);
        let mut out = Outgoing::for_chunk(buffer, chunk.len(), &mut Some(rewrite));
        out.remaining().to_vec()
    }

    #[test]
    fn a_rewrite_may_send_part_of_the_chunk_or_bytes_of_its_own() {
        let mut rewrite = HoldLast(Vec::new());
        assert_eq!(sent(&mut rewrite, b"abc"), b"ab");
        assert_eq!(sent(&mut rewrite, b"de"), b"cd");
        assert_eq!(rewrite.0, b"e");
    }

    #[test]
    fn only_a_slice_of_the_chunk_is_a_range_of_it() {
        let whole = [1u8, 2, 3, 4];
        assert_eq!(range_within(&whole, &whole[1..3]), Some(1..3));
        assert_eq!(range_within(&whole, &whole), Some(0..4));
        assert_eq!(range_within(&whole[1..], &whole[..2]), None);
        assert_eq!(range_within(&whole, b"elsewhere"), None);
    }
}
