//! Transaction pools: the server connections that the clients of one (pool, database,
//! user) share one transaction at a time, for every database pooler (PostgreSQL, MySQL).
//!
//! One [`TxPool`] per (pool, database, user, shape) holds, per server, the connections
//! switchyard has logged in itself, in a [`ConnPool`] that decides who gets which (see its
//! rules): at most `pool_size` per server, handed straight from the client that gives one
//! back to the longest-waiting client. Each connection also holds a slot of its server in
//! the upstream pool, so `max_connections`, drain and maint keep their meaning: they count
//! server connections. What differs per protocol — the login, what a connection keeps —
//! is the protocol's [`Dialect`].
//!
//! The registry ([`TxPools`]) stays bounded whatever clients send: an entry that never
//! logged in to a server is removed when its last client leaves, one with no clients and
//! no connections left is removed by the maintenance tick, and a pool keeps at most
//! `max_transaction_pools` of them.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::conn_pool::{self, Ask, ConnPool, Place, PooledConn};
use super::{Lease, LeaseError, Pool, RoleFilter, Server, ServerRole, Stage, record_failure};
use crate::config::MessageLimits;

/// What a protocol brings to a transaction pool: how to log in on a new connection, and
/// what a logged-in connection keeps.
pub trait Dialect: std::fmt::Debug + Sized + Send + Sync + 'static {
    /// A logged-in connection's protocol side: its stream, its reader, what the login
    /// learnt, what the pooler tracks on it.
    type Link: std::fmt::Debug + Send + 'static;
    /// What switchyard logs in with (the latest client's).
    type Credential: Clone + std::fmt::Debug + Send + Sync + 'static;
    /// Why a login failed.
    type LoginError: std::fmt::Debug + Send + 'static;
    /// What the protocol keeps per transaction pool (PostgreSQL: the parameters the latest
    /// login reported).
    type Shared: Default + std::fmt::Debug + Send + Sync + 'static;
    /// The protocol's part of the pools' metric names (`switchyard_<it>_pool_...`).
    const METRICS: &'static str;

    /// Logs in on `stream`, a new TCP connection to `server` (at `peer`), as `tx_pool`'s
    /// user to its database, TLS per `pool`'s sslmode.
    fn login(
        tx_pool: &TxPool<Self>,
        pool: &Arc<Pool>,
        server: &Arc<Server>,
        stream: (TcpStream, SocketAddr),
        credential: Self::Credential,
        limits: &MessageLimits,
    ) -> impl Future<Output = Result<Self::Link, LeaseFailure<Self::LoginError>>> + Send;

    /// The TCP socket under the link's stream (TLS or not).
    fn socket(link: &mut Self::Link) -> &mut TcpStream;

    /// Whether the link can go back: nothing of a half-read message is buffered.
    fn clean(link: &Self::Link) -> bool;

    /// Sets the longest message read from the server (the leasing listener's limit).
    fn set_limit(link: &mut Self::Link, limit: usize);
}

/// The pools of every (pool, database, user, shape) in the process, for one protocol.
#[derive(Debug)]
pub struct TxPools<D: Dialect> {
    /// Hashed with foldhash: every login looks its pool up here.
    pools: Mutex<HashMap<PoolKey, Arc<TxPool<D>>, foldhash::fast::RandomState>>,
    maintained: AtomicBool,
}

impl<D: Dialect> Default for TxPools<D> {
    fn default() -> Self {
        Self {
            pools: Mutex::default(),
            maintained: AtomicBool::new(false),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    pool: String,
    // For a pool with `resolver`: the resolved servers (answers naming other servers
    // never share connections); empty for a configured pool.
    servers: String,
    database: String,
    user: String,
    shape: u64,
}

/// The identity of a resolved pool's servers (empty for a configured pool): connections
/// are shared per resolved server set, never between answers naming different servers.
fn resolved_servers(pool: &Pool) -> String {
    if pool.origin.is_none() {
        return String::new();
    }
    let names: Vec<String> = pool.servers.iter().map(|s| s.address.to_string()).collect();
    names.join(",")
}

/// A pool already keeps `max_transaction_pools` (database, user) pairs.
#[derive(Debug, Clone, Copy)]
pub struct TooManyPools {
    /// The limit reached.
    pub limit: usize,
}

/// Which connections a client may share: those of its pool logged in to `database` as
/// `user`, in the same `shape` (protocol options that change how the session's messages
/// read, such as MySQL's capability flags; 0 when nothing does).
#[derive(Debug, Clone, Copy)]
pub struct Pairing<'a> {
    /// The database.
    pub database: &'a str,
    /// The user.
    pub user: &'a str,
    /// The protocol's connection shape.
    pub shape: u64,
}

/// A client's membership of a transaction pool: counted as its client until dropped, so
/// the maintenance tick never removes a pool someone is about to use.
#[derive(Debug)]
pub struct Member<D: Dialect> {
    /// The registry is reached through the pool: an idle pooled client keeps this, and
    /// one pointer less is what fits its session in mimalloc's 512 B class.
    pool: Arc<TxPool<D>>,
}

impl<D: Dialect> Member<D> {
    /// The pool joined.
    pub fn pool(&self) -> &Arc<TxPool<D>> {
        &self.pool
    }
}

impl<D: Dialect> Drop for Member<D> {
    fn drop(&mut self) {
        // The registry is gone only when the process's pools are.
        let registry = self.pool.registry.upgrade();
        let mut pools = registry.as_ref().map(|registry| lock(&registry.pools));
        self.pool.stats.clients.fetch_sub(1, Ordering::Relaxed);
        // An entry that never logged in (a database or user the server refuses) goes with
        // its last client: such names cost nothing once their clients are gone.
        if let Some(pools) = &mut pools
            && !self.pool.logged_in.load(Ordering::Acquire)
            && self.pool.unused()
        {
            pools.remove(&self.pool.key());
        }
    }
}

impl<D: Dialect> TxPools<D> {
    /// Joins the pool for `pool` and `pairing`, made on first use; `credential` is what
    /// switchyard logs in with from now on (the latest client's).
    pub fn join(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        pairing: Pairing<'_>,
        credential: D::Credential,
    ) -> Result<Member<D>, TooManyPools> {
        // The maintenance task and a new pool last as long as the process, not as the
        // burst of clients that first joins: they are made in the lasting heap (`memory`).
        if !self.maintained.swap(true, Ordering::AcqRel) {
            crate::memory::lasting(|| tokio::spawn(maintain(Arc::downgrade(self))));
        }
        let key = PoolKey {
            pool: pool.name.clone(),
            servers: resolved_servers(pool),
            database: pairing.database.to_string(),
            user: pairing.user.to_string(),
            shape: pairing.shape,
        };
        let mut pools = lock(&self.pools);
        let entry = match pools.get(&key) {
            Some(entry) => entry.clone(),
            None => {
                let limit = pool.database.max_transaction_pools;
                if pools.keys().filter(|k| k.pool == key.pool).count() >= limit {
                    return Err(TooManyPools { limit });
                }
                crate::memory::lasting(|| {
                    let entry = Arc::new(TxPool::new(
                        key.clone(),
                        pool,
                        credential.clone(),
                        Arc::downgrade(self),
                    ));
                    pools.insert(key, entry.clone());
                    entry
                })
            }
        };
        entry.stats.clients.fetch_add(1, Ordering::Relaxed);
        *lock(&entry.credential) = credential;
        // Changed by a reload only: a store makes every thread's readers settle their
        // debts, a look does not.
        if !Arc::ptr_eq(&entry.upstream.load(), pool) {
            entry.upstream.store(pool.clone());
        }
        Ok(Member { pool: entry })
    }

    /// Every pool that has logged in to a server, for the admin API and metrics.
    pub fn snapshot(&self) -> Vec<Arc<TxPool<D>>> {
        let pools = lock(&self.pools);
        pools
            .values()
            .filter(|p| p.logged_in.load(Ordering::Acquire))
            .cloned()
            .collect()
    }

    /// Pairs kept now, logged in or not.
    pub fn pairs(&self) -> usize {
        lock(&self.pools).len()
    }

    /// The transaction pools of pool `pool` for the admin API's status: `{
    /// "transaction_pools": [...] }`, or nothing when it has none.
    pub fn pool_status(&self, pool: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut tx_pools: Vec<_> = self
            .snapshot()
            .into_iter()
            .filter(|t| t.pool == pool)
            .collect();
        let mut status = serde_json::Map::new();
        if tx_pools.is_empty() {
            return status;
        }
        tx_pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        let list: Vec<_> = tx_pools.iter().map(|t| t.status()).collect();
        if let Ok(value) = serde_json::to_value(list) {
            status.insert("transaction_pools".to_string(), value);
        }
        status
    }

    /// Removes the pools nobody uses any more: no client, no connection.
    fn remove_unused(&self) {
        lock(&self.pools).retain(|_, pool| !pool.unused());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters of one transaction pool.
#[derive(Debug, Default)]
pub struct TxStats {
    /// Clients connected to this (database, user).
    pub clients: AtomicUsize,
    /// Transactions run (leases given back or dropped).
    pub transactions: AtomicU64,
    /// Queries answered (ReadyForQuery, or a MySQL command's last reply).
    pub queries: AtomicU64,
    /// Total time clients waited for a lease, microseconds.
    pub wait_micros: AtomicU64,
    /// Leases handed out.
    pub leases: AtomicU64,
    /// Clients refused after waiting `timeouts.queue`.
    pub queue_timeouts: AtomicU64,
    /// Transactions sent to the primary by the read/write split.
    pub routed_primary: AtomicU64,
    /// Transactions sent to a replica by the read/write split.
    pub routed_replica: AtomicU64,
}

/// Server connections for one (pool, database, user, shape).
#[derive(Debug)]
pub struct TxPool<D: Dialect> {
    /// The name of the pool whose servers it connects to.
    pub pool: String,
    /// For a pool with `resolver`: the resolved servers it connects to.
    pub servers: String,
    /// The database the connections are logged in to.
    pub database: String,
    /// The user they are logged in as.
    pub user: String,
    /// The protocol's connection shape (see [`Pairing`]).
    pub shape: u64,
    /// The registry the pool is in, for its members to leave it.
    registry: Weak<TxPools<D>>,
    conns: Arc<ConnPool<ServerConn<D>>>,
    credential: Mutex<D::Credential>,
    /// The routed pool as last configured; read on every lease and give-back, so it is
    /// swapped rather than locked.
    upstream: ArcSwap<Pool>,
    /// What the protocol keeps per pool.
    pub shared: D::Shared,
    /// A login to a server succeeded at least once.
    logged_in: AtomicBool,
    /// A task is opening connections up to `min_idle`.
    filling: AtomicBool,
    /// What the pool has done.
    pub stats: TxStats,
}

/// One server's connections in a transaction pool, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerConnections {
    /// Server name.
    pub server: String,
    /// Connections open (leased, idle, or logging in).
    pub open: usize,
    /// Connections leased to a client's transaction (or logging in).
    pub active: usize,
    /// Connections idle, ready for the next transaction.
    pub idle: usize,
}

/// A transaction pool (one database and user) as the API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TxPoolStatus {
    /// Database.
    pub database: String,
    /// User.
    pub user: String,
    /// Clients connected.
    pub clients: usize,
    /// Clients waiting for a server connection now.
    pub waiting: usize,
    /// Transactions run.
    pub transactions: u64,
    /// Queries run.
    pub queries: u64,
    /// Average time a client waited for a server connection, milliseconds.
    pub avg_wait_ms: f64,
    /// Clients refused after the queue timeout.
    pub queue_timeouts: u64,
    /// Transactions the read/write split sent to the primary.
    pub routed_primary: u64,
    /// Transactions the read/write split sent to a replica.
    pub routed_replica: u64,
    /// Server connections per server.
    pub servers: Vec<ServerConnections>,
}

/// Why no server connection could be had.
#[derive(Debug)]
pub enum LeaseFailure<E> {
    /// No server admitted by the filter is up.
    NoServer,
    /// Waited `timeouts.queue` with every connection busy.
    QueueTimeout,
    /// The server could not be reached.
    Connect(std::io::Error),
    /// The server refused the login.
    Login(E),
}

/// A logged-in server connection. Dropped, it is closed and its place in the pool freed.
#[derive(Debug)]
pub struct ServerConn<D: Dialect> {
    /// The protocol's side: the stream and what the pooler tracks on it.
    pub link: D::Link,
    /// The server.
    pub server: Arc<Server>,
    /// Fires when the server is put in maintenance (its sessions are cut); taken once
    /// per connection, not per transaction, to keep the server's token tree quiet.
    pub cut: tokio_util::sync::CancellationToken,
    /// The worker whose reactor drives its socket (the one that opened it): a client on
    /// another worker is woken across threads for each of its reads.
    worker: Option<usize>,
    created: Instant,
    // Dropped in this order after the link: the server's slot first, so that a client
    // handed the place finds the slot free.
    _slot: Lease,
    _place: Place<ServerConn<D>>,
}

impl<D: Dialect> PooledConn for ServerConn<D> {
    fn server(&self) -> &Arc<Server> {
        &self.server
    }

    fn worker(&self) -> Option<usize> {
        self.worker
    }
}

impl<D: Dialect> ServerConn<D> {
    /// Has the calling worker's reactor drive the connection's socket from now on, when
    /// another worker's does: each read would otherwise wake this worker from that one's
    /// thread (a system call and a context switch per server reply). Costs four system
    /// calls once; a connection then mostly stays, as it is given back to this worker's
    /// waiting clients first. Over TLS the socket moves under the TLS state, which stays.
    fn move_to_this_worker(&mut self) {
        let here = crate::workers::current_worker();
        if here.is_none() || here == self.worker {
            return;
        }
        // The new registration lasts as the connection does (see `memory`).
        let socket = D::socket(&mut self.link);
        match crate::memory::lasting(|| crate::net::move_to_this_worker(socket)) {
            Ok(()) => self.worker = here,
            Err(error) => {
                tracing::debug!(server = %self.server.name, %error, "server connection stays on its worker");
            }
        }
    }

    /// Whether the connection has outlived `lifetime`.
    fn expired(&self, now: Instant, lifetime: Duration) -> bool {
        now.duration_since(self.created) >= lifetime
    }
}

impl<D: Dialect> TxPool<D> {
    fn new(
        key: PoolKey,
        pool: &Arc<Pool>,
        credential: D::Credential,
        registry: Weak<TxPools<D>>,
    ) -> Self {
        Self {
            registry,
            pool: key.pool,
            servers: key.servers,
            database: key.database,
            user: key.user,
            shape: key.shape,
            conns: Arc::default(),
            credential: Mutex::new(credential),
            upstream: ArcSwap::new(pool.clone()),
            shared: D::Shared::default(),
            logged_in: AtomicBool::new(false),
            filling: AtomicBool::new(false),
            stats: TxStats::default(),
        }
    }

    fn key(&self) -> PoolKey {
        PoolKey {
            pool: self.pool.clone(),
            servers: self.servers.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
            shape: self.shape,
        }
    }

    /// No client and no connection (open, leased or being opened).
    fn unused(&self) -> bool {
        self.stats.clients.load(Ordering::Relaxed) == 0 && self.connections() == 0
    }

    /// Connections open (leased, idle or being opened) on all servers.
    pub fn connections(&self) -> usize {
        self.conns.open()
    }

    /// Clients waiting for a server connection now.
    pub fn waiting(&self) -> usize {
        self.conns.waiting()
    }

    /// Its status for the admin API.
    pub fn status(&self) -> TxPoolStatus {
        let stats = &self.stats;
        let leases = stats.leases.load(Ordering::Relaxed);
        let waited = stats.wait_micros.load(Ordering::Relaxed);
        TxPoolStatus {
            database: self.database.clone(),
            user: self.user.clone(),
            clients: stats.clients.load(Ordering::Relaxed),
            waiting: self.waiting(),
            transactions: stats.transactions.load(Ordering::Relaxed),
            queries: stats.queries.load(Ordering::Relaxed),
            avg_wait_ms: if leases == 0 {
                0.0
            } else {
                waited as f64 / leases as f64 / 1000.0
            },
            queue_timeouts: stats.queue_timeouts.load(Ordering::Relaxed),
            routed_primary: stats.routed_primary.load(Ordering::Relaxed),
            routed_replica: stats.routed_replica.load(Ordering::Relaxed),
            servers: self.servers(),
        }
    }

    /// Leases a server connection on a server `filter` admits: an idle one when there is
    /// one, else a new one while the server has fewer than `pool_size`, else the first
    /// one given back (or place freed) within the pool's queue timeout.
    pub async fn lease(
        self: &Arc<Self>,
        client: SocketAddr,
        filter: RoleFilter,
        limits: &MessageLimits,
    ) -> Result<ServerConn<D>, LeaseFailure<D::LoginError>> {
        let pool = self.upstream.load_full();
        let started = Instant::now();
        let lifetime = pool.database.server_lifetime;
        let usable =
            |conn: &ServerConn<D>| !conn.expired(started, lifetime) && !conn.cut.is_cancelled();
        let choose = |room: &[Arc<Server>]| pool.choose(room, client.ip());
        let ask = Ask {
            servers: &pool.servers,
            filter,
            size: pool.database.pool_size,
            worker: crate::workers::current_worker(),
            deadline: started + pool.timeouts.queue,
            usable: &usable,
            choose: &choose,
            changed: pool.changes(),
        };
        // Boxed: opening a connection (connect, TLS, login) is a large future that most
        // leases never run, and every transaction's future would carry room for it.
        let open = |place| Box::pin(self.open(&pool, client, place, limits));
        let leased = self.conns.lease(&ask, open).await;
        let waited = started.elapsed().as_micros() as u64;
        self.stats.wait_micros.fetch_add(waited, Ordering::Relaxed);
        match leased {
            Ok(mut conn) => {
                self.stats.leases.fetch_add(1, Ordering::Relaxed);
                conn.move_to_this_worker();
                // A pool serves every listener routed to it, and `min_idle` opens
                // connections for no listener: the message limit is the leasing
                // listener's, set at each lease.
                D::set_limit(&mut conn.link, limits.message);
                Ok(conn)
            }
            Err(conn_pool::LeaseFailure::NoServer) => Err(LeaseFailure::NoServer),
            Err(conn_pool::LeaseFailure::QueueTimeout) => {
                self.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(LeaseFailure::QueueTimeout)
            }
            Err(conn_pool::LeaseFailure::Open(failure)) => Err(failure),
        }
    }

    /// Leases for a statement the read/write split sent to `role` (`None`: no split, the
    /// client's `accept` filter): a replica when one is available, else the primary; the
    /// split's counters count where it went.
    pub async fn lease_for_role(
        self: &Arc<Self>,
        client: SocketAddr,
        accept: RoleFilter,
        role: Option<ServerRole>,
        limits: &MessageLimits,
    ) -> Result<ServerConn<D>, LeaseFailure<D::LoginError>> {
        let upstream = self.upstream.load_full();
        let role = match role {
            None => return self.lease(client, accept, limits).await,
            Some(ServerRole::Replica) => {
                let replica = RoleFilter::new(&upstream, Some(ServerRole::Replica));
                match self.lease(client, replica, limits).await {
                    Err(LeaseFailure::NoServer) => ServerRole::Primary,
                    other => {
                        self.stats.routed_replica.fetch_add(1, Ordering::Relaxed);
                        return other;
                    }
                }
            }
            Some(role) => role,
        };
        self.stats.routed_primary.fetch_add(1, Ordering::Relaxed);
        let primary = RoleFilter::new(&upstream, Some(role));
        self.lease(client, primary, limits).await
    }

    /// Connects and logs in a new connection on `place`'s server, taking one of the
    /// server's slots in the upstream pool first.
    async fn open(
        &self,
        pool: &Arc<Pool>,
        client: SocketAddr,
        place: Place<ServerConn<D>>,
        limits: &MessageLimits,
    ) -> Result<ServerConn<D>, LeaseFailure<D::LoginError>> {
        let server = place.server().clone();
        let this_server = |s: &Server| std::ptr::eq(s, server.as_ref());
        let slot = match pool.lease_matching(client.ip(), &[], &this_server).await {
            Ok(slot) => slot,
            Err(LeaseError::NoServer) => return Err(LeaseFailure::NoServer),
            Err(LeaseError::QueueFull | LeaseError::QueueTimeout) => {
                return Err(LeaseFailure::QueueTimeout);
            }
        };
        // A shared connection outlives the clients whose leases open it: what it keeps
        // comes from the lasting heap (see `memory`), not from pages its opener's
        // passing allocations share.
        let connected = crate::memory::Lasting::new(super::connect_server(&server, pool))
            .await
            .map_err(|e| {
                record_failure(pool, &server, Stage::Connect, &e);
                LeaseFailure::Connect(e)
            })?;
        let credential = lock(&self.credential).clone();
        let login = D::login(self, pool, &server, connected, credential, limits);
        let link = tokio::time::timeout(pool.timeouts.connect, crate::memory::Lasting::new(login))
            .await
            .map_err(|_| {
                LeaseFailure::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "login timed out",
                ))
            })??;
        self.logged_in.store(true, Ordering::Release);
        Ok(ServerConn {
            link,
            worker: crate::workers::current_worker(),
            cut: server.session_token(),
            created: Instant::now(),
            server,
            _slot: slot,
            _place: place,
        })
    }

    /// Takes back a connection that is idle at the server and clean: to the
    /// longest-waiting client, else idle. It is closed instead when its server is no
    /// longer usable or it is too old.
    pub fn give_back(&self, conn: ServerConn<D>) {
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        let pool = self.upstream.load();
        let usable = conn.server.is_available()
            && !conn.cut.is_cancelled()
            && !conn.expired(Instant::now(), pool.database.server_lifetime)
            && D::clean(&conn.link)
            && pool.servers.iter().any(|s| Arc::ptr_eq(s, &conn.server));
        if usable {
            self.conns.give_back(conn);
        }
    }

    /// Closes a leased connection that cannot be reused (its place goes to a waiting
    /// client).
    pub fn discard(&self, conn: ServerConn<D>) {
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        drop(conn);
    }

    /// `give_back` without counting a transaction (a connection opened for `min_idle`,
    /// or leased only to learn the server's parameters).
    pub fn give_back_unused(&self, conn: ServerConn<D>) {
        self.give_back(conn);
        self.stats.transactions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Server connections per server, by server name.
    pub fn servers(&self) -> Vec<ServerConnections> {
        let mut out: Vec<_> = self
            .conns
            .counts()
            .into_iter()
            .map(|(server, open, idle)| ServerConnections {
                server: server.name.clone(),
                open,
                active: open.saturating_sub(idle),
                idle,
            })
            .collect();
        out.sort_by(|a, b| a.server.cmp(&b.server));
        out
    }

    /// Closes idle connections that are too old, unused too long (beyond `min_idle`) or
    /// whose server is gone or unusable, and starts opening connections up to `min_idle`.
    fn tidy(self: &Arc<Self>) {
        let pool = self.upstream.load_full();
        self.conns.track_servers(&pool.servers);
        let now = Instant::now();
        let pooling = &pool.database;
        let current = |server: &Server| {
            pool.servers
                .iter()
                .any(|s| std::ptr::eq(s.as_ref(), server))
        };
        // Most recently used first: those are kept for `min_idle`, the long unused ones
        // beyond it are closed.
        let closing = self.conns.take_idle_where(|server, conn, idle_for, kept| {
            !(current(server) && server.is_available())
                || conn.expired(now, pooling.server_lifetime)
                || (kept + 1 > pooling.min_idle && idle_for >= pooling.server_idle_timeout)
        });
        drop(closing);
        if pooling.min_idle > 0
            && self.logged_in.load(Ordering::Acquire)
            && !self.filling.swap(true, Ordering::AcqRel)
        {
            let this = self.clone();
            tokio::spawn(async move {
                this.fill_min_idle(&pool).await;
                this.filling.store(false, Ordering::Release);
            });
        }
    }

    /// Opens connections until every available server has `min_idle` idle ones (or
    /// `pool_size` in all); one opening at a time per pool.
    async fn fill_min_idle(self: &Arc<Self>, pool: &Arc<Pool>) {
        let pooling = &pool.database;
        let idle: HashMap<usize, usize> = self
            .conns
            .counts()
            .into_iter()
            .map(|(server, _, idle)| (Arc::as_ptr(&server) as usize, idle))
            .collect();
        // No listener asked for these: the default limit holds for the login only, a
        // lease applies its listener's (see `lease`).
        let limits = MessageLimits::default();
        let client = SocketAddr::from(([127, 0, 0, 1], 0));
        for server in pool.servers.iter().filter(|s| s.is_available()) {
            let have = idle.get(&(Arc::as_ptr(server) as usize)).copied();
            for _ in have.unwrap_or(0)..pooling.min_idle {
                let Some(place) = self.conns.reserve(server, pooling.pool_size) else {
                    break;
                };
                match self.open(pool, client, place, &limits).await {
                    Ok(conn) => self.give_back_unused(conn),
                    Err(failure) => {
                        tracing::debug!(pool = %pool.name, server = %server.name, ?failure, "min_idle connection failed");
                        break;
                    }
                }
            }
        }
    }
}

/// Tidies every pool each second, and removes the pools nobody uses any more, while the
/// registry exists.
async fn maintain<D: Dialect>(pools: Weak<TxPools<D>>) {
    // Made at the first client's join, among a burst's allocations, but kept for good.
    let mut tick = crate::memory::lasting(|| tokio::time::interval(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        let all: Vec<Arc<TxPool<D>>> = lock(&pools.pools).values().cloned().collect();
        for pool in all {
            pool.tidy();
        }
        pools.remove_unused();
    }
}
