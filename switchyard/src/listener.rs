//! Listening sockets: binding, the accept loop, and the connection limit.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

type StdListener = std::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::config::{ListenerConfig, Protocol};
use crate::login_gate::LoginGate;
use crate::net::AcceptFailures;
use crate::tally::{Carried, Tally};
use crate::tls::ServerTls;
use crate::workers::{Placement, Workers};

/// Counters kept per listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections being handled now.
    pub active: AtomicUsize,
    /// Connections accepted.
    pub total: AtomicU64,
    /// Bytes from clients.
    pub bytes_in: Tally,
    /// Bytes to clients.
    pub bytes_out: Tally,
    /// Connections closed before reaching a server (bad PROXY header, no server, ...).
    pub failed: AtomicU64,
}

impl ListenerStats {
    /// The counters that only grow (connections, bytes in and out, failed), for a binary
    /// upgrade to carry over.
    pub fn cumulative(&self) -> [&dyn Carried; 4] {
        [&self.total, &self.bytes_in, &self.bytes_out, &self.failed]
    }
}

/// What serves a listener's connections: built by the listener's protocol from its config
/// and the pools in service (at start and at each reload). It holds what the protocol
/// keeps per listener (routing, limits); a connection keeps the one it was accepted with.
pub trait Handler: AsAny + Send + Sync + std::fmt::Debug + 'static {
    /// Serves one accepted connection to its end (and logs it).
    fn serve(self: Arc<Self>, connection: Accepted) -> Serving;

    /// Whether a connection's task and future last as long as it does, and so come from
    /// the heap of what connections keep for their life (see `memory`). A protocol whose
    /// idle connections leave their task for the idle lot (`idle_lot`) says no: its tasks
    /// come and go, and would leave that heap's pages half empty.
    fn lasting_tasks(&self) -> bool {
        true
    }

    /// What a client past the listener's `max_connections` is told before its connection
    /// closes: the protocol's own "too many connections", which clients show to their user
    /// and retry on, where a connection left waiting in the kernel's queue would look like
    /// a hung server. `tls`: the listener terminates TLS, inside which a protocol that
    /// speaks first in TLS can say nothing. Empty: closed without a word (raw TCP).
    fn at_capacity(&self, _tls: bool) -> Vec<u8> {
        Vec::new()
    }
}

/// A connection being served: boxed, so that each protocol's connection future keeps its
/// own size (one future type over every protocol would be as large as the largest).
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A handler as itself, for a connection of the same protocol to read the listener's
/// current handler (its routing after a reload).
pub trait AsAny {
    /// The handler as `Any`, to downcast to its own type.
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<T: std::any::Any> AsAny for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// An accepted connection, with the listener and the settings it was accepted under.
#[derive(Debug)]
pub struct Accepted {
    /// The listener.
    pub listener: Arc<Listener>,
    /// Its settings as of the accept: a later reload does not change this connection.
    pub settings: Arc<ListenerSettings>,
    /// The client's socket.
    pub stream: TcpStream,
    /// The client's address (a PROXY header may tell the real one).
    pub peer: SocketAddr,
    /// Held until the connection ends.
    pub occupancy: Occupancy,
}

/// What a connection holds for as long as it lives, on a task or waiting without one
/// (`idle_lot`): its place among the listener's active connections and under
/// `max_connections`, its worker's count (by which new connections are placed), and the
/// shutdown's wait for it. Dropping it ends all four.
#[derive(Debug)]
pub struct Occupancy {
    listener: Arc<Listener>,
    _permit: Option<OwnedSemaphorePermit>,
    _placement: Placement,
    _awaited: TaskTrackerToken,
}

impl Occupancy {
    /// The listener the connection came through.
    pub fn listener(&self) -> &Arc<Listener> {
        &self.listener
    }
}

impl Drop for Occupancy {
    fn drop(&mut self) {
        self.listener.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection takes from its listener when it is accepted; a reload swaps in new
/// settings for later connections while established ones keep the ones they started with.
#[derive(Debug)]
pub struct ListenerSettings {
    /// The listener's config.
    pub config: ListenerConfig,
    /// The protocol's handler of the listener's connections.
    pub handler: Arc<dyn Handler>,
    /// TLS termination (`tls`); shared across reloads, which swap its certificates.
    pub tls: Option<Arc<ServerTls>>,
    // The `max_connections` limit; replaced (not resized) when the limit changes, so the
    // permits of established connections go back to the semaphore they came from.
    limit: Option<Arc<Semaphore>>,
}

/// A bound listener and everything a connection handler needs from it.
#[derive(Debug)]
pub struct Listener {
    /// Name from the config.
    pub name: String,
    /// The protocol spoken.
    pub protocol: Protocol,
    /// The address actually bound (port 0 resolved).
    pub address: SocketAddr,
    /// Counters.
    pub stats: ListenerStats,
    /// Logins in flight per client address (`max_logins_per_address`); kept across
    /// reloads with the listener.
    pub logins: LoginGate,
    settings: ArcSwap<ListenerSettings>,
    // The bound socket until `take_socket` gives it to the workers' accept loops.
    socket: std::sync::Mutex<Option<StdListener>>,
    // A duplicate of the socket for a binary upgrade to hand over; dropped when the accept
    // loop ends so that a closed listener really frees its port.
    handover: std::sync::Mutex<Option<OwnedFd>>,
    // How many of the workers (the first ones) serve this listener (`workers`; all: None).
    // Fixed at creation: accept loops run on those workers only.
    workers: Option<usize>,
    // Accept loops still running (one per serving worker), and fired when the last one has
    // ended.
    accept_loops: AtomicUsize,
    // Shared by the accept loops, so that the listener logs a failure once, not once per
    // loop.
    accept_failures: AcceptFailures,
    not_accepting: CancellationToken,
    closed: CancellationToken,
}

impl ListenerSettings {
    /// The handler as the protocol's own type `T`, when it is one (a connection reading the
    /// routing in force after a reload).
    pub fn handler_as<T: Handler>(&self) -> Option<&T> {
        (*self.handler).as_any().downcast_ref::<T>()
    }
}

impl Listener {
    /// Binds the socket a listener with `config` would use, without building the listener
    /// (a reload binds every new socket before changing anything).
    pub fn bind_socket(config: &ListenerConfig) -> io::Result<StdListener> {
        let requested: SocketAddr = config.listen.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad address {}", config.listen),
            )
        })?;
        bind_socket(requested, config.backlog).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("listener `{}` cannot bind {requested}: {e}", config.name),
            )
        })
    }

    /// Builds a listener around a socket from `bind_socket`.
    pub fn with_socket(
        config: &ListenerConfig,
        handler: Arc<dyn Handler>,
        socket: StdListener,
    ) -> io::Result<Self> {
        let address = socket.local_addr()?;
        let tls = config
            .tls
            .as_ref()
            .map(|tls| ServerTls::from_config(tls, Path::new("")).map(Arc::new))
            .transpose()
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("listener `{}`: {e}", config.name),
                )
            })?;
        let handover = socket.as_fd().try_clone_to_owned()?;
        Ok(Self {
            name: config.name.clone(),
            protocol: config.protocol,
            address,
            stats: ListenerStats::default(),
            logins: LoginGate::default(),
            settings: ArcSwap::from_pointee(ListenerSettings {
                config: config.clone(),
                handler,
                tls,
                limit: config.max_connections.map(|n| Arc::new(Semaphore::new(n))),
            }),
            socket: std::sync::Mutex::new(Some(socket)),
            handover: std::sync::Mutex::new(Some(handover)),
            workers: config.workers,
            accept_loops: AtomicUsize::new(0),
            accept_failures: AcceptFailures::default(),
            not_accepting: CancellationToken::new(),
            closed: CancellationToken::new(),
        })
    }

    /// The settings new connections get now.
    pub fn settings(&self) -> Arc<ListenerSettings> {
        self.settings.load_full()
    }

    /// Applies a reloaded config (same name and address) and its handler to connections
    /// accepted from now on. Certificate files are re-read; if they cannot be, the
    /// certificates in use stay and the reason is logged.
    pub fn update(&self, config: &ListenerConfig, handler: Arc<dyn Handler>) {
        let current = self.settings();
        let tls = match (&config.tls, &current.tls) {
            (None, _) => None,
            (Some(cfg), Some(tls)) => {
                if let Err(error) = tls.reload(cfg, Path::new("")) {
                    tracing::error!(listener = %self.name, %error, "certificates not reloaded; keeping the ones in use");
                }
                Some(tls.clone())
            }
            (Some(cfg), None) => match ServerTls::from_config(cfg, Path::new("")) {
                Ok(tls) => Some(Arc::new(tls)),
                Err(error) => {
                    tracing::error!(listener = %self.name, %error, "TLS not enabled; keeping the listener's settings");
                    return;
                }
            },
        };
        let limit = if current.config.max_connections == config.max_connections {
            current.limit.clone()
        } else {
            config.max_connections.map(|n| Arc::new(Semaphore::new(n)))
        };
        self.settings.store(Arc::new(ListenerSettings {
            config: config.clone(),
            handler,
            tls,
            limit,
        }));
    }

    /// Stops accepting (the listener was removed by a reload) and closes the socket;
    /// established connections run on.
    pub fn close(&self) {
        self.closed.cancel();
    }

    // The listening socket, once, for the accept loops.
    fn take_socket(&self) -> Option<StdListener> {
        self.socket.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// A duplicate of the listening socket for a binary upgrade, while it is still open.
    pub fn handover_fd(&self) -> Option<io::Result<OwnedFd>> {
        let handover = self.handover.lock().unwrap_or_else(|e| e.into_inner());
        handover.as_ref().map(|fd| fd.try_clone())
    }

    /// How many of `workers` serve this listener: its `workers`, at most all of them.
    fn serving(&self, workers: &Workers) -> usize {
        self.workers
            .map_or(workers.count(), |wanted| wanted.min(workers.count()))
            .max(1)
    }

    /// Starts one accept loop on each worker runtime that serves the listener (each on its
    /// own duplicate of the socket). They run until `stop` fires or the listener is closed;
    /// "stopped accepting" is logged once the last has ended.
    pub fn spawn_accept_loops(
        self: &Arc<Self>,
        workers: &Workers,
        stop: &CancellationToken,
        tasks: &TaskTracker,
    ) {
        let Some(socket) = self.take_socket() else {
            return;
        };
        let serving = self.serving(workers);
        let mut sockets = Vec::with_capacity(serving);
        for _ in 1..serving {
            match socket.try_clone() {
                Ok(duplicate) => sockets.push(duplicate),
                Err(error) => {
                    tracing::warn!(listener = %self.name, %error, "fewer accept loops than workers");
                    break;
                }
            }
        }
        sockets.push(socket);
        self.accept_loops.store(sockets.len(), Ordering::Release);
        for (index, socket) in sockets.into_iter().enumerate() {
            workers.handle(index).spawn(self.clone().accept_loop(
                socket,
                (workers.clone(), index),
                stop.clone(),
                tasks.clone(),
            ));
        }
    }

    /// Accepts connections from `socket` (a duplicate of this listener's socket) until
    /// `stop` fires or the listener is closed, handing each to its settings' handler on its
    /// own task of the least busy worker (`here` is the worker this loop runs on). With
    /// `max_connections`, a client past the limit is accepted, told the protocol's "too many
    /// connections" and closed (see [`Handler::at_capacity`]).
    async fn accept_loop(
        self: Arc<Self>,
        socket: StdListener,
        (workers, here): (Workers, usize),
        stop: CancellationToken,
        tasks: TaskTracker,
    ) {
        let socket = match TcpListener::from_std(socket) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(listener = %self.name, %error, "cannot watch the listening socket");
                self.accept_loop_ended();
                return;
            }
        };
        let mut full = AtCapacity::default();
        let serving = self.serving(&workers);
        // The first look at the settings on this thread makes arc-swap's record of the
        // thread, kept for its life: made now, in the lasting heap (see `memory`), rather
        // than among the first burst of connections' allocations.
        crate::memory::lasting(|| drop(self.settings()));
        loop {
            let accepted = tokio::select! {
                // The socket's registration lasts as long as the connection.
                accepted = crate::memory::Lasting::new(socket.accept()) => accepted,
                () = stop.cancelled() => break,
                () = self.closed.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    self.accept_failures.failed(&self.name, &error).await;
                    continue;
                }
            };
            self.accept_failures.succeeded(&self.name);
            self.stats.total.fetch_add(1, Ordering::Relaxed);
            // Settings swapped while this loop waited apply to this connection.
            let settings = self.settings();
            let permit = match &settings.limit {
                None => None,
                Some(limit) => match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        full.served(&self.name);
                        Some(permit)
                    }
                    Err(_) => {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        let answer = settings.handler.at_capacity(settings.tls.is_some());
                        full.refuse(&self.name, stream, peer, answer, &tasks);
                        continue;
                    }
                },
            };
            self.stats.active.fetch_add(1, Ordering::Relaxed);
            let (worker, placement) = workers.place(here, serving);
            let occupancy = Occupancy {
                listener: self.clone(),
                _permit: permit,
                _placement: placement,
                _awaited: tasks.token(),
            };
            // The connection's future and task last as long as it does (see `memory`), unless
            // its protocol says otherwise.
            let lasting = settings.handler.lasting_tasks();
            if worker == here {
                crate::memory::lasting_if(lasting, || {
                    let connection = settings.handler.clone().serve(Accepted {
                        listener: self.clone(),
                        settings,
                        stream,
                        peer,
                        occupancy,
                    });
                    tokio::spawn(connection)
                });
                continue;
            }
            // Another worker's reactor takes the socket over: it leaves this one's.
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(listener = %self.name, %error, "cannot hand a connection to another worker");
                    continue;
                }
            };
            let listener = self.clone();
            let task = async move {
                match crate::memory::lasting(|| TcpStream::from_std(stream)) {
                    Ok(stream) => {
                        let handler = settings.handler.clone();
                        let accepted = Accepted {
                            listener: listener.clone(),
                            settings,
                            stream,
                            peer,
                            occupancy,
                        };
                        crate::memory::lasting_if(lasting, || handler.serve(accepted)).await;
                    }
                    Err(error) => {
                        tracing::warn!(listener = %listener.name, %error, "cannot watch a handed-over connection");
                    }
                }
            };
            crate::memory::lasting_if(lasting, || workers.handle(worker).spawn(task));
        }
        drop(socket);
        self.accept_loop_ended();
    }

    /// After the last accept loop: the handover duplicate goes too, so that a closed
    /// listener really frees its port.
    fn accept_loop_ended(&self) {
        if self.accept_loops.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.handover
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            tracing::info!(listener = %self.name, "stopped accepting");
            self.not_accepting.cancel();
        }
    }

    /// Completes once every accept loop has ended (after `stop` or `close`).
    pub async fn stopped_accepting(&self) {
        self.not_accepting.cancelled().await;
    }
}

fn bind_socket(address: SocketAddr, backlog: u32) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // Accepted connections inherit TCP_NODELAY and keepalive from the listening socket.
    crate::net::tune_socket(&socket);
    if address.is_ipv6() {
        // `[::]` serves IPv4 too, as operators expect from a wildcard.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Clients refused at `max_connections` by one accept loop: at most [`MAX_REFUSING`] told
/// at once (more are closed without a word, so that a flood cannot hold descriptors), each
/// for at most [`REFUSAL_TIME`], and one log line when refusing starts and one when it ends.
#[derive(Debug)]
struct AtCapacity {
    refusing: Arc<Semaphore>,
    /// Clients refused since the listener was last below its limit.
    refused: u64,
}

/// Refused clients being told at once, per accept loop.
const MAX_REFUSING: usize = 256;
/// How long a refused client has to read its answer before the connection is closed.
const REFUSAL_TIME: std::time::Duration = std::time::Duration::from_secs(2);

impl Default for AtCapacity {
    fn default() -> Self {
        Self {
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            refused: 0,
        }
    }
}

impl AtCapacity {
    /// Tells `stream`'s client `answer` and closes the connection: the answer is written,
    /// the sending side shut (so the close is a FIN after the answer, not a reset for what
    /// the client sent meanwhile), and what the client sends is read and dropped until it
    /// closes or [`REFUSAL_TIME`] passes.
    fn refuse(
        &mut self,
        listener: &str,
        mut stream: TcpStream,
        peer: SocketAddr,
        answer: Vec<u8>,
        tasks: &TaskTracker,
    ) {
        if self.refused == 0 {
            tracing::warn!(%listener, %peer, "max_connections reached; refusing new clients until a connection closes");
        }
        self.refused += 1;
        let Ok(slot) = self.refusing.clone().try_acquire_owned() else {
            return;
        };
        tasks.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let told = async {
                stream.write_all(&answer).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 512];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, io::Error>(())
            };
            let _ = tokio::time::timeout(REFUSAL_TIME, told).await;
            drop(slot);
        });
    }

    /// A client was let in: ends an episode of refusals, saying how many there were.
    fn served(&mut self, listener: &str) {
        if self.refused > 0 {
            tracing::info!(%listener, refused = self.refused, "below max_connections again; accepting");
            self.refused = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Mine;

    impl Handler for Mine {
        fn serve(self: Arc<Self>, _: Accepted) -> Serving {
            Box::pin(async {})
        }
    }

    #[derive(Debug)]
    struct Other;

    impl Handler for Other {
        fn serve(self: Arc<Self>, _: Accepted) -> Serving {
            Box::pin(async {})
        }
    }

    #[test]
    fn a_handler_is_read_back_as_its_own_type_only() {
        let text =
            crate::testing::postgres_config("", "servers = [ { address = \"127.0.0.1:1\" } ]", "");
        let config = crate::testing::load_config(&text).expect("valid config");
        let settings = ListenerSettings {
            config: config.listeners[0].clone(),
            handler: Arc::new(Mine),
            tls: None,
            limit: None,
        };
        // Through the trait object, not the `Arc` around it.
        assert!(settings.handler_as::<Mine>().is_some());
        assert!(settings.handler_as::<Other>().is_none());
    }
}
