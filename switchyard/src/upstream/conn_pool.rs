//! Server connections that clients share one at a time (transaction pooling), with the
//! rules every database pooler keeps, written once and tested without sockets:
//!
//! - A client takes an idle connection on a server it may use, else a free place to open
//!   one (at most `size` per server), else it queues. The look and the queueing happen
//!   under one lock, so nothing freed in between is missed.
//! - A connection given back goes straight to the longest-waiting client that may use it;
//!   only when nobody waits for it does it go idle. A client of the worker that drives
//!   the connection may be served first (its socket then stays on its thread), but an
//!   older client is passed over for at most [`PASS_OVER_FOR`].
//! - A connection closed frees its place ([`Place`] is dropped), which goes to a waiting
//!   client in the same way: that client opens a new connection there.
//! - A waiting client that gives up leaves the queue; whatever was handed to it in the
//!   meantime is passed on, never lost.
//!
//! Nothing here does I/O: opening a connection is the caller's `open`, choosing among
//! servers with room its `choose`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{RoleFilter, Server};
use crate::wait_queue::WaitQueue;

/// How long a waiting client may be passed over in favour of younger ones on the worker
/// that drives the connection being handed out. Serving that worker's own client keeps the
/// socket on its thread; serving the older client on another worker wakes that worker from
/// this one and moves the socket there (four system calls). Under load each worker's own
/// connections come back often enough to serve its oldest client well within this; a
/// worker short of connections has its oldest client passed over until this runs out, then
/// takes a connection, which stays with it. A bound in time, not in turns: a count of two
/// moved a connection at every fourth lease of a busy pool (`pgbench -S -M prepared`, 128
/// clients, pool of 10), while with slow transactions each turn may be a long wait.
pub const PASS_OVER_FOR: Duration = Duration::from_millis(1);

/// What the pool needs to know of a connection it holds.
pub trait PooledConn: Send + 'static {
    /// The server the connection is open to.
    fn server(&self) -> &Arc<Server>;
    /// The worker whose reactor drives its socket, when known.
    fn worker(&self) -> Option<usize>;
}

/// The shared connections of one pool key (a database and user, say).
#[derive(Debug)]
pub struct ConnPool<C> {
    state: Mutex<State<C>>,
}

impl<C> Default for ConnPool<C> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                servers: HashMap::default(),
                waiters: VecDeque::new(),
                next_ticket: 0,
            }),
        }
    }
}

#[derive(Debug)]
struct State<C> {
    /// By the server's address in memory: servers kept by a reload are the same objects.
    /// Hashed with foldhash: every lease and return looks a server up here.
    servers: HashMap<usize, PerServer<C>, foldhash::fast::RandomState>,
    waiters: VecDeque<Waiter<C>>,
    next_ticket: u64,
}

#[derive(Debug)]
struct PerServer<C> {
    server: Arc<Server>,
    /// Ready for the next client; the most recently used last.
    idle: Vec<Idle<C>>,
    /// Places taken: connections leased, idle, or being opened.
    open: usize,
    /// Whether the pool's servers still include it (a reload may remove it): freed places
    /// of a removed server are not handed on.
    current: bool,
}

#[derive(Debug)]
struct Idle<C> {
    conn: C,
    since: Instant,
}

#[derive(Debug)]
struct Waiter<C> {
    ticket: u64,
    filter: RoleFilter,
    worker: Option<usize>,
    /// When a younger client was first served before this one (see [`PASS_OVER_FOR`]).
    passed_over_since: Option<Instant>,
    grant: oneshot::Sender<Grant<C>>,
}

/// What a waiting client is handed.
#[derive(Debug)]
pub enum Grant<C> {
    /// A connection given back, now the client's.
    Conn(C),
    /// A place freed on a server: the client opens a connection there.
    Place(Place<C>),
}

/// A connection's place on its server in the pool, counted until dropped. Dropping it
/// (the connection closed, or its opening failed) hands the place to a waiting client
/// or frees it.
#[derive(Debug)]
pub struct Place<C> {
    home: Weak<ConnPool<C>>,
    server: Arc<Server>,
    armed: bool,
}

impl<C> Place<C> {
    /// The server the place is on.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }
}

impl<C> Drop for Place<C> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(home) = self.home.upgrade() {
            home.free_place(&self.server);
        }
    }
}

/// What a lease asks for.
pub struct Ask<'a, C> {
    /// The pool's servers now.
    pub servers: &'a [Arc<Server>],
    /// Which of them the client may use (besides being available).
    pub filter: RoleFilter,
    /// Most connections per server.
    pub size: usize,
    /// The worker the client runs on.
    pub worker: Option<usize>,
    /// When to give up waiting.
    pub deadline: Instant,
    /// Whether an idle connection may still be used (not too old, not cut).
    pub usable: &'a (dyn Fn(&C) -> bool + Sync),
    /// Picks one of servers with room for a new connection (the pool's balancer).
    pub choose: &'a (dyn Fn(&[Arc<Server>]) -> usize + Sync),
    /// Woken when servers change (health, operator state, reload): waiting clients look
    /// again, since a server they may use may have come back.
    pub changed: &'a WaitQueue,
}

/// Why a lease failed.
#[derive(Debug)]
pub enum LeaseFailure<E> {
    /// No server the client may use is available.
    NoServer,
    /// Waited until the deadline with every connection busy.
    QueueTimeout,
    /// Opening a new connection failed.
    Open(E),
}

/// What one look found.
enum Found<C> {
    Conn(C),
    Room(Vec<Arc<Server>>),
    Full,
    NoServer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(server: &Arc<Server>) -> usize {
    Arc::as_ptr(server) as usize
}

impl<C> State<C> {
    fn of(&mut self, server: &Arc<Server>) -> &mut PerServer<C> {
        // Kept for the pool's life (see `memory`), though first made for a client.
        crate::memory::lasting(|| {
            self.servers
                .entry(key(server))
                .or_insert_with(|| PerServer {
                    server: server.clone(),
                    idle: Vec::new(),
                    open: 0,
                    current: true,
                })
        })
    }
}

impl<C: PooledConn> State<C> {
    /// An idle connection the client may use, else servers with room, else `Full`. Idle
    /// connections found unusable are moved to `stale`, to be closed outside the lock.
    fn look(&mut self, ask: &Ask<'_, C>, stale: &mut Vec<C>) -> Found<C> {
        let count = ask.servers.len();
        let mut any = false;
        let mut room = Vec::new();
        // Start at a different server each time so that every server's idle connections
        // get used.
        let start = fastrand::usize(..count.max(1));
        for offset in 0..count {
            let server = &ask.servers[(start + offset) % count];
            if !ask.filter.admits_available(server) {
                continue;
            }
            any = true;
            let entry = self.of(server);
            entry.current = true;
            // One of the client's worker's own connections first, if one is idle.
            if let Some(mine) = entry
                .idle
                .iter()
                .rposition(|idle| idle.conn.worker() == ask.worker)
            {
                let last = entry.idle.len() - 1;
                entry.idle.swap(mine, last);
            }
            while let Some(idle) = entry.idle.pop() {
                if (ask.usable)(&idle.conn) {
                    return Found::Conn(idle.conn);
                }
                stale.push(idle.conn);
            }
            if entry.open < ask.size {
                room.push(server.clone());
            }
        }
        match (any, room.is_empty()) {
            (false, _) => Found::NoServer,
            (true, true) => Found::Full,
            (true, false) => Found::Room(room),
        }
    }
}

impl<C> State<C> {
    /// Hands `grant` (on `server`, driven by `worker`) to a waiting client that may use
    /// it; gives it back when nobody can take it.
    fn hand_over(
        &mut self,
        mut grant: Grant<C>,
        server: &Server,
        worker: Option<usize>,
    ) -> Option<Grant<C>> {
        while let Some(index) = self.pick_waiter(server, worker) {
            let Some(waiter) = self.waiters.remove(index) else {
                break;
            };
            match waiter.grant.send(grant) {
                Ok(()) => return None,
                // The client stopped waiting just now: the next one.
                Err(returned) => grant = returned,
            }
        }
        Some(grant)
    }

    /// The waiter to serve with a connection on `server` driven by `worker`: the oldest
    /// that may use it, or a younger one on `worker` until the oldest has been passed over
    /// for [`PASS_OVER_FOR`].
    fn pick_waiter(&mut self, server: &Server, worker: Option<usize>) -> Option<usize> {
        if !server.is_available() {
            return None;
        }
        let admits = |w: &Waiter<C>| w.filter.admits(server);
        let oldest = self.waiters.iter().position(admits)?;
        if worker.is_none() || self.waiters[oldest].worker == worker {
            return Some(oldest);
        }
        let local = self
            .waiters
            .iter()
            .enumerate()
            .skip(oldest + 1)
            .find(|(_, w)| w.worker == worker && admits(w))
            .map(|(i, _)| i);
        let Some(local) = local else {
            return Some(oldest);
        };
        let now = Instant::now();
        let passed_long = |since: Instant| now.duration_since(since) >= PASS_OVER_FOR;
        if self.waiters[oldest]
            .passed_over_since
            .is_some_and(passed_long)
        {
            return Some(oldest);
        }
        for passed in self.waiters.range_mut(oldest..local) {
            if passed.filter.admits(server) {
                passed.passed_over_since.get_or_insert(now);
            }
        }
        Some(local)
    }

    fn remove_waiter(&mut self, ticket: u64) -> bool {
        match self.waiters.iter().position(|w| w.ticket == ticket) {
            Some(index) => {
                self.waiters.remove(index);
                true
            }
            None => false,
        }
    }
}

impl<C: PooledConn> ConnPool<C> {
    /// Leases a connection: an idle one, else a new one opened with `open` on a place of
    /// a server with room, else the first one given back or place freed before the
    /// deadline. `open` is handed the place; on failure it drops it (freeing it).
    pub async fn lease<E, F, Fut>(
        self: &Arc<Self>,
        ask: &Ask<'_, C>,
        mut open: F,
    ) -> Result<C, LeaseFailure<E>>
    where
        F: FnMut(Place<C>) -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        loop {
            let mut stale = Vec::new();
            let (found, waiting) = {
                let mut state = lock(&self.state);
                let found = state.look(ask, &mut stale);
                let waiting = match found {
                    Found::Full => Some(self.enqueue(&mut state, ask)),
                    _ => None,
                };
                (found, waiting)
            };
            // Closed outside the lock: their places are freed, maybe to this client.
            drop(stale);
            let grant = match (found, waiting) {
                (Found::Conn(conn), _) => return Ok(conn),
                (Found::NoServer, _) => return Err(LeaseFailure::NoServer),
                (Found::Room(room), _) => {
                    match self.reserve(&room[(ask.choose)(&room)], ask.size) {
                        Some(place) => Grant::Place(place),
                        // Another client took the last place meanwhile: look again.
                        None => continue,
                    }
                }
                (Found::Full, Some(waiting)) => match Box::pin(self.wait(waiting, ask)).await? {
                    Some(grant) => grant,
                    None => continue,
                },
                (Found::Full, None) => continue,
            };
            return match grant {
                Grant::Conn(conn) => Ok(conn),
                Grant::Place(place) => open(place).await.map_err(LeaseFailure::Open),
            };
        }
    }

    /// Puts the client in the queue (under the lock of the look that found it full).
    fn enqueue(self: &Arc<Self>, state: &mut State<C>, ask: &Ask<'_, C>) -> Waiting<C> {
        let (grant, granted) = oneshot::channel();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let waiter = Waiter {
            ticket,
            filter: ask.filter,
            worker: ask.worker,
            passed_over_since: None,
            grant,
        };
        // The queue keeps the room a burst of clients made it take for the pool's life: in
        // the main heap, that block would pin a page of the burst's freed buffers.
        crate::memory::lasting(|| state.waiters.push_back(waiter));
        Waiting {
            pool: self.clone(),
            ticket,
            granted,
        }
    }

    /// Waits in the queue for a grant. `None`: look again from the start (the client was
    /// taken out of the queue because a server it may use has room or an idle connection).
    async fn wait<E>(
        self: &Arc<Self>,
        mut waiting: Waiting<C>,
        ask: &Ask<'_, C>,
    ) -> Result<Option<Grant<C>>, LeaseFailure<E>> {
        let _counted = ask.changed.join();
        loop {
            let changed = ask.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // A change between the enqueue and the registration just above is seen here.
            match waiting.look_again(ask) {
                LookAgain::Stay | LookAgain::Granted => {}
                LookAgain::Found(Found::Conn(conn)) => return Ok(Some(Grant::Conn(conn))),
                LookAgain::Found(Found::NoServer) => return Err(LeaseFailure::NoServer),
                LookAgain::Found(Found::Room(_) | Found::Full) => return Ok(None),
            }
            tokio::select! {
                biased;
                grant = &mut waiting.granted => {
                    return match grant {
                        Ok(grant) => Ok(Some(grant)),
                        // The pool is gone: nothing can come any more.
                        Err(_) => Err(LeaseFailure::NoServer),
                    };
                }
                () = &mut changed => {}
                () = tokio::time::sleep_until(ask.deadline) => {
                    // A grant sent at the same instant is taken rather than dropped.
                    return match waiting.take_sent() {
                        Some(grant) => Ok(Some(grant)),
                        None => Err(LeaseFailure::QueueTimeout),
                    };
                }
            }
        }
    }

    /// Takes a place on `server` if it has fewer than `size` (also for a connection nobody
    /// asked for yet, kept idle for `min_idle`).
    pub fn reserve(self: &Arc<Self>, server: &Arc<Server>, size: usize) -> Option<Place<C>> {
        let mut state = lock(&self.state);
        let entry = state.of(server);
        if entry.open >= size {
            return None;
        }
        entry.open += 1;
        Some(Place {
            home: Arc::downgrade(self),
            server: server.clone(),
            armed: true,
        })
    }

    /// Takes back a leased connection that can be reused: to a waiting client that may use
    /// it, else idle.
    pub fn give_back(&self, conn: C) {
        let server = conn.server().clone();
        let worker = conn.worker();
        let mut state = lock(&self.state);
        if let Some(Grant::Conn(conn)) = state.hand_over(Grant::Conn(conn), &server, worker) {
            state.of(&server).idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Marks which servers the pool has now; places freed on the others are not handed on.
    pub fn track_servers(&self, servers: &[Arc<Server>]) {
        let mut state = lock(&self.state);
        for entry in state.servers.values_mut() {
            entry.current = servers.iter().any(|s| Arc::ptr_eq(s, &entry.server));
        }
    }

    /// Takes out idle connections that `close` picks, to be closed by the caller (outside
    /// the lock). `close` sees each server with its idle connections, the most recently
    /// used first, how long each has been idle, and how many of the server's it kept so far.
    pub fn take_idle_where(
        &self,
        mut close: impl FnMut(&Server, &C, Duration, usize) -> bool,
    ) -> Vec<C> {
        let now = Instant::now();
        let mut closing = Vec::new();
        let mut state = lock(&self.state);
        for entry in state.servers.values_mut() {
            let mut kept = Vec::with_capacity(entry.idle.len());
            for idle in entry.idle.drain(..).rev() {
                let idle_for = now.duration_since(idle.since);
                if close(&entry.server, &idle.conn, idle_for, kept.len()) {
                    closing.push(idle.conn);
                } else {
                    kept.push(idle);
                }
            }
            kept.reverse();
            entry.idle = kept;
        }
        closing
    }

    /// Per server: (server, places taken, idle connections).
    pub fn counts(&self) -> Vec<(Arc<Server>, usize, usize)> {
        let state = lock(&self.state);
        state
            .servers
            .values()
            .map(|e| (e.server.clone(), e.open, e.idle.len()))
            .collect()
    }

    /// Clients waiting now.
    pub fn waiting(&self) -> usize {
        lock(&self.state).waiters.len()
    }

    /// Places taken in all: nothing open, leased or being opened when 0.
    pub fn open(&self) -> usize {
        lock(&self.state).servers.values().map(|e| e.open).sum()
    }

    /// Checks the pool's promise: nobody waits while a connection or a place they may use
    /// is free. For tests.
    #[cfg(test)]
    fn assert_nobody_waits_needlessly(&self, size: usize) {
        let state = lock(&self.state);
        for waiter in &state.waiters {
            for entry in state.servers.values() {
                if !entry.current || !waiter.filter.admits_available(&entry.server) {
                    continue;
                }
                assert!(
                    entry.idle.is_empty(),
                    "a client waits while {} has an idle connection",
                    entry.server.name
                );
                assert!(
                    entry.open >= size,
                    "a client waits while {} has room",
                    entry.server.name
                );
            }
        }
    }
}

impl<C> ConnPool<C> {
    /// A place on `server` was freed: to a waiting client, else no longer counted.
    fn free_place(self: &Arc<Self>, server: &Arc<Server>) {
        let mut state = lock(&self.state);
        let current = state.of(server).current;
        let place = Place {
            home: Arc::downgrade(self),
            server: server.clone(),
            armed: true,
        };
        let left = if current {
            state.hand_over(Grant::Place(place), server, None)
        } else {
            Some(Grant::Place(place))
        };
        if let Some(Grant::Place(mut place)) = left {
            // Not handed on: no longer counted (dropped disarmed, under the lock).
            place.armed = false;
            let entry = state.of(server);
            entry.open = entry.open.saturating_sub(1);
        }
    }
}

/// A client's place in the queue. Dropped, it leaves the queue and passes on whatever it
/// was handed meanwhile.
struct Waiting<C: PooledConn> {
    pool: Arc<ConnPool<C>>,
    ticket: u64,
    granted: oneshot::Receiver<Grant<C>>,
}

/// What looking again found for a waiting client.
enum LookAgain<C> {
    /// Still nothing: keep waiting, keep the place in the queue.
    Stay,
    /// Already handed something: take it.
    Granted,
    /// Something changed (out of the queue now): an idle connection, room to open one
    /// (taken with a fresh look), or no server the client may use any more.
    Found(Found<C>),
}

impl<C: PooledConn> Waiting<C> {
    /// Looks again without giving up the place in the queue.
    fn look_again(&mut self, ask: &Ask<'_, C>) -> LookAgain<C> {
        let mut state = lock(&self.pool.state);
        if !state.waiters.iter().any(|w| w.ticket == self.ticket) {
            return LookAgain::Granted;
        }
        let mut stale = Vec::new();
        let found = state.look(ask, &mut stale);
        let outcome = match found {
            Found::Full => LookAgain::Stay,
            found => {
                state.remove_waiter(self.ticket);
                LookAgain::Found(found)
            }
        };
        drop(state);
        drop(stale);
        outcome
    }

    /// A grant already sent, if any, taking the client out of the queue.
    fn take_sent(&mut self) -> Option<Grant<C>> {
        lock(&self.pool.state).remove_waiter(self.ticket);
        self.granted.close();
        self.granted.try_recv().ok()
    }
}

impl<C: PooledConn> Drop for Waiting<C> {
    fn drop(&mut self) {
        match self.take_sent() {
            Some(Grant::Conn(conn)) => self.pool.give_back(conn),
            // Its drop hands the place on.
            Some(Grant::Place(place)) => drop(place),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;
