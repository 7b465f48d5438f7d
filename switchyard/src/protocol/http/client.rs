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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::RequestBody;
use crate::config::{HttpVersion, UpstreamKeepAlive};
use crate::upstream::secure_upstream;
use crate::upstream::{Pool, Server, Stage, connect_server, record_failure};

/// A connection able to carry one more request.
pub enum Connection {
    /// HTTP/1.1: one request at a time; `used` requests sent so far.
    Http1 {
        /// The request sender.
        sender: http1::SendRequest<RequestBody>,
        /// Requests sent over it, this one included once sent.
        used: u32,
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

/// The idle connections of one server: a shard per worker, their total, and the server's
/// one HTTP/2 connection.
#[derive(Default)]
struct ServerConnections {
    shards: [OnceLock<Arc<Shard>>; SHARDS],
    idle: Arc<AtomicUsize>,
    http2: Arc<Mutex<Option<Http2Sender>>>,
}

/// Shards per server: one per worker (workers past this share), and one for threads off the
/// workers (the control plane, tests).
const SHARDS: usize = 32;

type Http2Sender = http2::SendRequest<RequestBody>;

/// One worker's idle HTTP/1.1 connections to one server, with what all workers share.
struct Shard {
    state: Mutex<Idle>,
    /// The server's idle HTTP/1.1 connections over all shards (`max_idle`).
    idle: Arc<AtomicUsize>,
    /// The server's HTTP/2 connection, shared by every worker (one per server).
    http2: Arc<Mutex<Option<Http2Sender>>>,
    /// This worker's watch on the server's sessions: see [`session_cut`].
    cut: Mutex<CancellationToken>,
}

impl Shard {
    /// Notes that `n` idle HTTP/1.1 connections left this shard.
    fn left(&self, n: usize) {
        self.idle.fetch_sub(n, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Idle {
    http1: Vec<(http1::SendRequest<RequestBody>, u32, Instant)>,
    reaper: bool,
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
                idle: all.idle.clone(),
                http2: all.http2.clone(),
                cut: Mutex::new(server.session_token().child_token()),
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
/// second failure is the server's).
pub async fn send(
    pool: &Pool,
    server: &Arc<Server>,
    mut request: Request<RequestBody>,
    now: Instant,
) -> Result<(Response<Incoming>, Connection), SendError> {
    let conns = connections(server);
    let mut may_reuse = true;
    loop {
        let reused = conns
            .as_ref()
            .filter(|_| may_reuse)
            .and_then(|c| take_idle(c, pool, now));
        let (mut connection, fresh) = match reused {
            Some(connection) => (connection, false),
            // Boxed: the connect and handshake futures are large, and inline they would
            // make every request's future (moved on each poll set-up) as large.
            None => match Box::pin(open(pool, server)).await {
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
            Connection::Http1 { sender, used } => {
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

fn take_idle(conns: &Shard, pool: &Pool, now: Instant) -> Option<Connection> {
    if pool.http.http_version == HttpVersion::Http2 {
        let mut shared = lock(&conns.http2);
        match &*shared {
            Some(sender) if !sender.is_closed() => {
                return Some(Connection::Http2(sender.clone()));
            }
            _ => *shared = None,
        }
        return None;
    }
    let mut idle = lock(&conns.state);
    while let Some((sender, used, since)) = idle.http1.pop() {
        conns.left(1);
        if now.saturating_duration_since(since) < pool.http.keep_alive.idle_timeout
            && !sender.is_closed()
        {
            return Some(Connection::Http1 { sender, used });
        }
    }
    None
}

/// Opens a connection to `server` in the pool's HTTP version, over TLS as the pool's
/// `upstream_tls` asks (with the same `sslmode` meaning as on `tcp` pools); its driver
/// task ends when the connection closes.
/// Opens a connection to `server`; a failed connect or TLS handshake counts against it.
async fn open(pool: &Pool, server: &Arc<Server>) -> std::io::Result<Connection> {
    let (stream, _) = connect_server(server, pool)
        .await
        .inspect_err(|error| record_failure(pool, server, Stage::Connect, error))?;
    let stream = secure_upstream(pool, server, stream, &[])
        .await
        .inspect_err(|error| record_failure(pool, server, Stage::Tls, error))?;
    server.stats.total.fetch_add(1, Ordering::Relaxed);
    server.record_connect_success();
    let io = TokioIo::new(stream);
    match pool.http.http_version {
        HttpVersion::Http1 => {
            let (sender, connection) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(async move {
                let _ = connection.with_upgrades().await;
            });
            Ok(Connection::Http1 { sender, used: 0 })
        }
        HttpVersion::Http2 => {
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

/// Gives a connection back after its response ended cleanly (at `now`): kept idle when the
/// pool's keep-alive settings allow, else closed (dropped).
pub fn give_back(
    server: &Arc<Server>,
    keep_alive: &UpstreamKeepAlive,
    connection: Connection,
    now: Instant,
) {
    let Connection::Http1 { sender, used } = connection else {
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
    let start_reaper = {
        let mut idle = lock(&conns.state);
        if conns.idle.load(Ordering::Relaxed) >= keep_alive.max_idle {
            // Full: this worker's oldest makes room, or (none here) this one is closed.
            if idle.http1.is_empty() {
                return;
            }
            idle.http1.remove(0);
            conns.left(1);
        }
        idle.http1.push((sender, used, now));
        conns.idle.fetch_add(1, Ordering::Relaxed);
        !std::mem::replace(&mut idle.reaper, true)
    };
    if start_reaper {
        tokio::spawn(reap(conns.clone(), server.clone(), keep_alive.idle_timeout));
    }
}

/// Closes idle connections when they pass `idle_timeout`, and all of them when the
/// server stops taking work (drain, maint, down); ends when none is left.
async fn reap(conns: Arc<Shard>, server: Arc<Server>, idle_timeout: Duration) {
    loop {
        let changed = server.admin_state_changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let cut = server.session_token();
        let next = {
            let mut idle = lock(&conns.state);
            let now = Instant::now();
            let before = idle.http1.len();
            if server.is_available() {
                idle.http1.retain(|(sender, _, since)| {
                    !sender.is_closed() && *since + idle_timeout > now
                });
            } else {
                idle.http1.clear();
            }
            conns.left(before - idle.http1.len());
            match idle.http1.iter().map(|(_, _, since)| *since).min() {
                Some(oldest) => oldest + idle_timeout,
                None => {
                    idle.reaper = false;
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = changed => {}
            () = cut.cancelled() => {}
        }
    }
}
