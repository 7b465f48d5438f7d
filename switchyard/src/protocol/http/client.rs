//! Server connections for HTTP: a keep-alive pool per server (idle limit, idle timeout,
//! requests per connection) for HTTP/1.1, one multiplexed connection per server for HTTP/2,
//! plaintext or TLS (`upstream_tls`).
//!
//! Requests take a slot on their server from the pool's lease (so `max_connections`, the
//! queue, drain and maint keep their meaning: in-flight requests per server); idle
//! connections hold no slot. Idle connections to a server that is drained, put in
//! maintenance or goes down are closed.
//!
//! Idle HTTP/1.1 connections are kept per worker thread: a connection's driver task runs
//! on the worker that opened it, so a request on another worker reusing it would wake that
//! worker for every read and write. Each worker reuses its own connections; `max_idle`
//! still bounds the server's idle connections over all workers. The HTTP/2 connection
//! stays one per server, shared by every worker.
//!
//! An idle hyper connection keeps its buffers, channel and task: about 25 KB. A burst
//! leaves many of them idle, so one unused for 250 ms (`PARK_AFTER`) is parked, as idle
//! client connections are (`park`): its hyper connection ends without closing the socket,
//! and the socket alone waits for the next request, which starts a new hyper connection on
//! it. The connections a busy pool reuses (the most recent first) never wait that long.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::PARK_AFTER;
use super::body::RequestBody;
use crate::config::{HttpVersion, UpstreamKeepAlive};
use crate::joined_writes::JoinedWrites;
use crate::upstream::{Pool, Server, Stage, connect_server, record_failure};
use crate::upstream::{ServerStream, secure_upstream};

/// A connection able to carry one more request.
pub enum Connection {
    /// HTTP/1.1: one request at a time; `used` requests sent so far.
    Http1 {
        /// The request sender.
        sender: http1::SendRequest<RequestBody>,
        /// Requests sent over it, this one included once sent.
        used: u32,
        /// Asks its driver to park the socket when `sender` is dropped (see `drive`);
        /// `None` on a connection driven for upgrades, whose socket hyper keeps.
        park: Option<oneshot::Sender<Ticket>>,
    },
    /// HTTP/2: shared by every request to the server.
    Http2(Http2Sender),
}

/// Why a request could not be sent.
pub enum SendError {
    /// No connection could be made (nothing was sent); the request comes back for a retry.
    Connect(std::io::Error, Box<Request<RequestBody>>),
    /// The exchange failed after the request (or part of it) was sent.
    Exchange(hyper::Error),
}

/// The idle connections of one server: a shard per worker, and the server's one HTTP/2
/// connection.
#[derive(Default)]
struct ServerConnections {
    shards: [OnceLock<Arc<Shard>>; SHARDS],
    http2: Arc<Mutex<Option<Http2Sender>>>,
}

/// Shards per server: one per worker (workers past this share), and one for threads off the
/// workers (the control plane, tests).
const SHARDS: usize = 32;

type Http2Sender = http2::SendRequest<RequestBody>;

/// One worker's idle HTTP/1.1 connections to one server, with what all workers share.
struct Shard {
    state: Mutex<Idle>,
    /// The server's HTTP/2 connection, shared by every worker (one per server).
    http2: Arc<Mutex<Option<Http2Sender>>>,
    /// This worker's watch on the server's sessions: see [`session_cut`].
    cut: Mutex<CancellationToken>,
    /// Wakes the reaper for a connection due before it would look again.
    wake_reaper: Notify,
}

/// One worker's idle HTTP/1.1 connections to one server, each list oldest first. Their
/// counts over all workers are the server's `idle` and `parked` stats (`max_idle` bounds
/// `idle`, which counts both).
#[derive(Default)]
struct Idle {
    /// Hyper connections, reused as they are.
    live: Vec<LiveIdle>,
    /// Sockets of connections parked after [`PARK_AFTER`].
    parked: Vec<(ServerStream, Ticket)>,
    /// When the [`reap`] task watching this shard looks next (`None`: none runs).
    reaper: Option<Instant>,
}

/// An idle hyper connection.
struct LiveIdle {
    sender: http1::SendRequest<RequestBody>,
    park: Option<oneshot::Sender<Ticket>>,
    ticket: Ticket,
}

/// What an idle connection carries into and out of its parking.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    /// Requests sent over the connection (`max_requests`).
    used: u32,
    /// When its last response ended (`idle_timeout`).
    since: Instant,
    /// The pool's `idle_timeout`, for a reaper the parking may have to start.
    idle_timeout: Duration,
}

/// An idle connection taken for a request.
enum Reused {
    /// Ready to send on.
    Live(Connection),
    /// A parked socket, needing a new hyper connection.
    Parked(ServerStream, u32),
}

impl Shard {
    /// Keeps `add` (run under the lock) in this shard, and makes sure a reaper looks at it
    /// by `due` (when it is to be parked or closed). A busy pool's reaper is due earlier
    /// for an older connection, so this rarely wakes it.
    fn keep(
        self: &Arc<Self>,
        server: &Arc<Server>,
        idle_timeout: Duration,
        due: Instant,
        add: impl FnOnce(&mut Idle),
    ) {
        let reaper = {
            let mut idle = lock(&self.state);
            add(&mut idle);
            let next = idle.reaper.map_or(due, |next| next.min(due));
            idle.reaper.replace(next)
        };
        match reaper {
            None => {
                tokio::spawn(reap(self.clone(), server.clone(), idle_timeout));
            }
            Some(next) if due < next => self.wake_reaper.notify_one(),
            Some(_) => {}
        }
    }
}

/// How long a connection stays idle before it is parked: [`PARK_AFTER`], or less when the
/// pool closes idle connections sooner.
fn park_after(idle_timeout: Duration) -> Duration {
    PARK_AFTER.min(idle_timeout)
}

/// Counts idle connections coming (`came`) and going (`left`) in `server`'s stats, of
/// which `parked` are (or were) parked sockets. Every request moves a connection in and
/// out of the idle set, so only the counters that change are written (workers share them).
fn count_idle(server: &Server, came: usize, left: usize, parked: (usize, usize)) {
    let stats = &server.stats;
    for (counter, up, down) in [
        (&stats.idle, came, left),
        (&stats.parked, parked.0, parked.1),
    ] {
        match up.cmp(&down) {
            std::cmp::Ordering::Greater => counter.fetch_add(up - down, Ordering::Relaxed),
            std::cmp::Ordering::Less => counter.fetch_sub(down - up, Ordering::Relaxed),
            std::cmp::Ordering::Equal => continue,
        };
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The calling worker's idle connections to `server`: no lock and no shared write, as every
/// request asks.
fn connections(server: &Server) -> Option<&Arc<Shard>> {
    let all = server
        .idle_connections
        .0
        .get_or_init(|| Arc::new(ServerConnections::default()))
        .downcast_ref::<ServerConnections>()?;
    Some(
        all.shards[crate::workers::worker_slot(SHARDS)].get_or_init(|| {
            Arc::new(Shard {
                state: Mutex::new(Idle::default()),
                http2: all.http2.clone(),
                cut: Mutex::new(server.session_token().child_token()),
                wake_reaper: Notify::new(),
            })
        }),
    )
}

/// A token cancelled when `server`'s sessions are cut (`maint`, removal): a child of the
/// server's session token kept per worker, so that the requests waiting on it register
/// with a token only their own worker touches, not with one every worker shares.
pub fn session_cut(server: &Server) -> CancellationToken {
    let Some(shard) = connections(server) else {
        return server.session_token();
    };
    let mut cut = lock(&shard.cut);
    if cut.is_cancelled() {
        // Cut since: watch the server's new token.
        *cut = server.session_token().child_token();
    }
    cut.clone()
}

/// Sends `request` to `server`, over an idle connection when one is usable (idle since
/// before `now` by less than the idle timeout), else over a new one. A reused connection
/// that turns out closed before the request went out is replaced by a new one (once: a
/// second failure is the server's). An `upgrade` request (WebSocket; the caller's
/// reading of the client's request) always goes on a new connection, driven so that hyper
/// can hand its socket to the tunnel.
pub async fn send(
    pool: &Pool,
    server: &Arc<Server>,
    mut request: Request<RequestBody>,
    now: Instant,
    upgrade: bool,
) -> Result<(Response<Incoming>, Connection), SendError> {
    let conns = connections(server);
    let mut may_reuse = !upgrade;
    loop {
        let reused = conns
            .filter(|_| may_reuse)
            .and_then(|c| take_idle(c, server, pool, now));
        let (mut connection, fresh) = match reused {
            Some(Reused::Live(connection)) => (connection, false),
            Some(Reused::Parked(stream, used)) => {
                match start_http1(server, stream, used, false).await {
                    Ok(connection) => (connection, false),
                    Err(_) => continue,
                }
            }
            // Boxed: the connect and handshake futures are large, and inline they would
            // make every request's future (moved on each poll set-up) as large.
            None => match Box::pin(open(pool, server, upgrade)).await {
                Ok(connection) => (connection, true),
                Err(error) => return Err(SendError::Connect(error, Box::new(request))),
            },
        };
        let ready = match &mut connection {
            Connection::Http1 { sender, .. } => sender.ready().await,
            Connection::Http2(sender) => sender.ready().await,
        };
        if let Err(error) = ready {
            if fresh {
                return Err(SendError::Exchange(error));
            }
            may_reuse = false;
            forget_http2(conns.map(Arc::as_ref), &connection);
            continue;
        }
        let sent = match &mut connection {
            Connection::Http1 { sender, used, .. } => {
                *used += 1;
                sender.try_send_request(request).await
            }
            Connection::Http2(sender) => sender.try_send_request(request).await,
        };
        match sent {
            Ok(response) => return Ok((response, connection)),
            Err(error) => match retryable(error, fresh) {
                Ok(back) => {
                    request = back;
                    may_reuse = false;
                    forget_http2(conns.map(Arc::as_ref), &connection);
                }
                Err(error) => return Err(SendError::Exchange(error)),
            },
        }
    }
}

/// Stops sharing a failed HTTP/2 connection, so the next request opens a new one.
fn forget_http2(conns: Option<&Shard>, failed: &Connection) {
    if let (Some(conns), Connection::Http2(_)) = (conns, failed) {
        *lock(&conns.http2) = None;
    }
}

/// A request that a reused connection never sent can go again on another connection.
fn retryable(
    mut error: TrySendError<Request<RequestBody>>,
    fresh: bool,
) -> Result<Request<RequestBody>, hyper::Error> {
    match error.take_message() {
        Some(request) if !fresh => Ok(request),
        _ => Err(error.into_error()),
    }
}

/// The most recently idle connection still usable: live ones first, then parked sockets
/// on which nothing arrived (a closing server's FIN, stray bytes); the others are closed.
fn take_idle(conns: &Shard, server: &Server, pool: &Pool, now: Instant) -> Option<Reused> {
    if pool.http.http_version == HttpVersion::Http2 {
        let mut shared = lock(&conns.http2);
        match &*shared {
            Some(sender) if !sender.is_closed() => {
                return Some(Reused::Live(Connection::Http2(sender.clone())));
            }
            _ => *shared = None,
        }
        return None;
    }
    let fresh = |ticket: &Ticket| {
        now.saturating_duration_since(ticket.since) < pool.http.keep_alive.idle_timeout
    };
    let mut idle = lock(&conns.state);
    while let Some(LiveIdle {
        sender,
        park,
        ticket,
    }) = idle.live.pop()
    {
        count_idle(server, 0, 1, (0, 0));
        if fresh(&ticket) && !sender.is_closed() {
            let used = ticket.used;
            return Some(Reused::Live(Connection::Http1 { sender, used, park }));
        }
    }
    while let Some((stream, ticket)) = idle.parked.pop() {
        count_idle(server, 0, 1, (0, 1));
        if fresh(&ticket) && quiet(&stream) {
            return Some(Reused::Parked(stream, ticket.used));
        }
    }
    None
}

/// Whether nothing arrived on a parked socket. A server's answer can only follow a request,
/// so anything readable (its FIN, a TLS alert or ticket) makes the socket one not to reuse.
/// Asking leaves a no-op waker as the socket's reader, in place of the task that last read
/// it.
fn quiet(stream: &ServerStream) -> bool {
    let tcp = match stream {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    };
    // The readiness the I/O driver recorded; no system call, and no waker left to wake.
    tcp.poll_read_ready(&mut Context::from_waker(Waker::noop()))
        .is_pending()
}

/// Opens a connection to `server` in the pool's HTTP version, over TLS as the pool's
/// `upstream_tls` asks (with the same `sslmode` meaning as on `tcp` pools); a failed
/// connect or TLS handshake counts against the server. `upgrades`: an HTTP/1.1 connection
/// for an upgrade request (see [`start_http1`]).
async fn open(pool: &Pool, server: &Arc<Server>, upgrades: bool) -> std::io::Result<Connection> {
    let (stream, _) = connect_server(server, pool)
        .await
        .inspect_err(|error| record_failure(pool, server, Stage::Connect, error))?;
    let stream = secure_upstream(pool, server, stream, &[])
        .await
        .inspect_err(|error| record_failure(pool, server, Stage::Tls, error))?;
    server.stats.total.fetch_add(1, Ordering::Relaxed);
    server.record_connect_success();
    match pool.http.http_version {
        HttpVersion::Http1 => start_http1(server, stream, 0, upgrades)
            .await
            .map_err(std::io::Error::other),
        HttpVersion::Http2 => {
            let io = TokioIo::new(JoinedWrites(stream));
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            if let Some(conns) = connections(server) {
                *lock(&conns.http2) = Some(sender.clone());
            }
            Ok(Connection::Http2(sender))
        }
    }
}

/// Starts hyper's HTTP/1.1 client on `stream` (`used` requests sent on it so far) and the
/// task that drives it. A connection for an upgrade is driven `with_upgrades`, so that
/// hyper hands its socket to the tunnel after a `101`; any other one by [`drive`], so that
/// its socket can be parked, which hyper cannot do on the former.
async fn start_http1(
    server: &Arc<Server>,
    stream: ServerStream,
    used: u32,
    upgrades: bool,
) -> hyper::Result<Connection> {
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(JoinedWrites(stream)))
        .await?;
    if upgrades {
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        return Ok(Connection::Http1 {
            sender,
            used,
            park: None,
        });
    }
    let (park, parked) = oneshot::channel();
    tokio::spawn(drive(connection, parked, server.clone()));
    Ok(Connection::Http1 {
        sender,
        used,
        park: Some(park),
    })
}

/// Runs an HTTP/1.1 connection until it ends: its server closed it, it failed, or its
/// sender was dropped. When the sender was dropped by [`reap`] parking it (the ticket sent
/// first) and nothing unread is left, the socket is kept idle in this worker's shard;
/// otherwise it is shut down and closed.
async fn drive(
    connection: http1::Connection<TokioIo<JoinedWrites<ServerStream>>, RequestBody>,
    mut parked: oneshot::Receiver<Ticket>,
    server: Arc<Server>,
) {
    let Ok(parts) = connection.without_shutdown().await else {
        return;
    };
    let JoinedWrites(mut stream) = parts.io.into_inner();
    match (parked.try_recv(), connections(&server)) {
        // `quiet` also takes this task's waker off the socket, where hyper's last read
        // left it: the waker would keep this finished task's memory (2 KB) for as long
        // as the socket stays parked.
        (Ok(ticket), Some(conns))
            if parts.read_buf.is_empty() && server.is_available() && quiet(&stream) =>
        {
            let due = ticket.since + ticket.idle_timeout;
            conns.keep(&server, ticket.idle_timeout, due, |idle| {
                idle.parked.push((stream, ticket));
            });
            count_idle(&server, 1, 0, (1, 0));
        }
        _ => {
            let _ = stream.shutdown().await;
        }
    }
}

/// Gives a connection back after its response ended cleanly (at `now`): kept idle when the
/// pool's keep-alive settings allow, else closed (dropped).
pub fn give_back(
    server: &Arc<Server>,
    keep_alive: &UpstreamKeepAlive,
    connection: Connection,
    now: Instant,
) {
    let Connection::Http1 { sender, used, park } = connection else {
        return;
    };
    if used >= keep_alive.max_requests
        || keep_alive.max_idle == 0
        || keep_alive.idle_timeout.is_zero()
        || !server.is_available()
    {
        return;
    }
    let Some(conns) = connections(server) else {
        return;
    };
    let idle_timeout = keep_alive.idle_timeout;
    let ticket = Ticket {
        used,
        since: now,
        idle_timeout,
    };
    let due = now + park_after(idle_timeout);
    conns.keep(server, idle_timeout, due, |idle| {
        if server.stats.idle.load(Ordering::Relaxed) >= keep_alive.max_idle {
            // Full: this worker's oldest makes room, or (none here) this one is closed.
            if !idle.parked.is_empty() {
                idle.parked.remove(0);
                count_idle(server, 0, 1, (0, 1));
            } else if !idle.live.is_empty() {
                idle.live.remove(0);
                count_idle(server, 0, 1, (0, 0));
            } else {
                return;
            }
        }
        idle.live.push(LiveIdle {
            sender,
            park,
            ticket,
        });
        count_idle(server, 1, 0, (0, 0));
    });
}

/// Parks idle connections unused for [`PARK_AFTER`], closes them when they pass
/// `idle_timeout`, and closes all of them when the server stops taking work (drain, maint,
/// down); ends when none is left.
async fn reap(conns: Arc<Shard>, server: Arc<Server>, idle_timeout: Duration) {
    loop {
        let changed = server.admin_state_changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let cut = server.session_token();
        let next = {
            let mut idle = lock(&conns.state);
            let now = Instant::now();
            let (live, parked) = (idle.live.len(), idle.parked.len());
            if server.is_available() {
                let expired = |ticket: &Ticket| ticket.since + idle_timeout <= now;
                idle.parked.retain(|(_, ticket)| !expired(ticket));
                // Oldest first: the connections to park are a prefix of the live list.
                idle.live
                    .retain(|entry| !entry.sender.is_closed() && !expired(&entry.ticket));
                let cold = idle
                    .live
                    .partition_point(|e| e.ticket.since + park_after(idle_timeout) <= now);
                for LiveIdle {
                    sender,
                    park,
                    ticket,
                } in idle.live.drain(..cold)
                {
                    // The ticket first: the sender's drop ends the connection, and its driver
                    // then finds the ticket and keeps the socket. One that cannot be parked
                    // is closed.
                    if let Some(park) = park {
                        let _ = park.send(ticket);
                    }
                    drop(sender);
                }
            } else {
                idle.live.clear();
                idle.parked.clear();
            }
            let parked_left = parked - idle.parked.len();
            count_idle(
                &server,
                0,
                live + parked - idle.live.len() - idle.parked.len(),
                (0, parked_left),
            );
            let live = (idle.live.iter()).map(|e| e.ticket.since + park_after(idle_timeout));
            let parked = idle
                .parked
                .iter()
                .map(|(_, ticket)| ticket.since + idle_timeout);
            idle.reaper = live.chain(parked).min();
            match idle.reaper {
                Some(next) => next,
                None => return,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = conns.wake_reaper.notified() => {}
            () = changed => {}
            () = cut.cancelled() => {}
        }
    }
}
