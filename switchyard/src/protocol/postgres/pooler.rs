//! Server connections shared by transaction-mode clients.
//!
//! One [`TxPool`] per (pool, database, user) holds, per server, the connections switchyard
//! has logged in itself: idle ones ready for the next transaction and a count of all open
//! ones (at most `pool_size` per server). A client leases one for a transaction and gives
//! it back idle, or drops it when it cannot be reused. Each connection also holds a slot
//! of its server in the upstream pool, so `max_connections`, drain and maint keep their
//! meaning: they count server connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::cancel::{CancelTarget, ServerKey};
use super::codec::{PROTOCOL_3_0, Startup};
use super::frames::FrameReader;
use super::login::{LoggedIn, LoginError, ServerCredential, login};
use super::statements::ServerStatements;
use super::tls::{secure_server, server_host};
use crate::config::MessageLimits;
use crate::tls::ServerStream;
use crate::upstream::{Lease, LeaseError, Pool, Server, ServerFilter};
use crate::wait_queue::WaitQueue;

/// The pools of every (pool, database, user) in the process.
#[derive(Debug, Default)]
pub struct TxPools {
    pools: Mutex<HashMap<PoolKey, Arc<TxPool>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    pool: String,
    database: String,
    user: String,
}

impl TxPools {
    /// The pool for (`pool`, `database`, `user`), made on first use; `credential` is
    /// what switchyard logs in with from now on (the latest client's).
    pub fn get(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        database: &str,
        user: &str,
        credential: ServerCredential,
    ) -> Arc<TxPool> {
        let key = PoolKey {
            pool: pool.name.clone(),
            database: database.to_string(),
            user: user.to_string(),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pools.entry(key).or_insert_with(|| {
            let tx = Arc::new(TxPool {
                pool: pool.name.clone(),
                database: database.to_string(),
                user: user.to_string(),
                state: Mutex::new(State::default()),
                returned: Returned::new(),
                credential: Mutex::new(credential.clone()),
                upstream: ArcSwap::new(pool.clone()),
                stats: TxStats::default(),
            });
            tokio::spawn(maintain(Arc::downgrade(&tx)));
            tx
        });
        *lock(&entry.credential) = credential;
        entry.upstream.store(pool.clone());
        entry.clone()
    }

    /// Every pool with its statistics, for the admin API and metrics.
    pub fn snapshot(&self) -> Vec<Arc<TxPool>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.values().cloned().collect()
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
    /// Clients waiting for a server connection now.
    pub waiting: AtomicUsize,
    /// Transactions run (leases given back or dropped).
    pub transactions: AtomicU64,
    /// Queries and Syncs answered with ReadyForQuery.
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

/// Server connections for one (pool, database, user).
#[derive(Debug)]
pub struct TxPool {
    /// The name of the pool whose servers it connects to.
    pub pool: String,
    /// The database the connections are logged in to.
    pub database: String,
    /// The user they are logged in as.
    pub user: String,
    state: Mutex<State>,
    returned: Returned,
    credential: Mutex<ServerCredential>,
    /// The routed pool as last configured; read on every lease and give-back, so it is
    /// swapped rather than locked.
    upstream: ArcSwap<Pool>,
    /// What the pool has done.
    pub stats: TxStats,
}

/// Connections per server, by the server's address in memory (servers kept by a reload
/// are the same objects).
#[derive(Debug, Default)]
struct State {
    servers: HashMap<usize, PerServer>,
}

#[derive(Debug)]
struct PerServer {
    server: Arc<Server>,
    idle: Vec<ServerConn>,
    open: usize,
    active: usize,
}

fn server_key(server: &Arc<Server>) -> usize {
    Arc::as_ptr(server) as usize
}

impl State {
    /// `server`'s connections, an empty entry on first sight.
    fn of(&mut self, server: &Arc<Server>) -> &mut PerServer {
        self.servers
            .entry(server_key(server))
            .or_insert_with(|| PerServer {
                server: server.clone(),
                idle: Vec::new(),
                open: 0,
                active: 0,
            })
    }
}

/// One server's connections in a transaction pool, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerConnections {
    /// Server name.
    pub server: String,
    /// Connections open (leased, idle, or logging in).
    pub open: usize,
    /// Connections leased to a client's transaction.
    pub active: usize,
    /// Connections idle, ready for the next transaction.
    pub idle: usize,
}

/// Why no server connection could be had.
#[derive(Debug)]
pub enum LeaseFailure {
    /// No server admitted by the filter is up.
    NoServer,
    /// Waited `timeouts.queue` with every connection busy.
    QueueTimeout,
    /// The server could not be reached.
    Connect(std::io::Error),
    /// The server refused the login.
    Login(LoginError),
}

/// Clients waiting for a connection, in a queue per worker. A connection given back on a
/// worker wakes a client of that worker when there is one, so that the connection, the
/// client's task and the wake-up stay on one thread (a wake-up across threads costs a
/// system call and a context switch); otherwise a client of another worker.
#[derive(Debug)]
struct Returned {
    queues: Box<[WaitQueue]>,
}

impl Returned {
    fn new() -> Self {
        // One queue per worker and one for the rest; workers beyond that share queues,
        // which only costs them a wake-up across threads now and then.
        let count = std::thread::available_parallelism().map_or(1, usize::from) + 1;
        Self {
            queues: (0..count).map(|_| WaitQueue::default()).collect(),
        }
    }

    /// The calling worker's queue.
    fn mine(&self) -> &WaitQueue {
        &self.queues[crate::runtime::worker_slot(self.queues.len())]
    }

    /// A connection was given back or its place freed: wakes one waiting client, of the
    /// calling worker if it has one.
    fn notify_one(&self) {
        if !self.mine().wake_one() {
            self.queues.iter().any(WaitQueue::wake_one);
        }
    }
}

/// A logged-in server connection. Dropped, it is closed and its place in the pool freed.
#[derive(Debug)]
pub struct ServerConn {
    /// The stream to the server.
    pub stream: ServerStream,
    /// Bytes read from the server not yet taken as messages.
    pub reader: FrameReader,
    /// The server.
    pub server: Arc<Server>,
    /// The server's cancel key for this connection and where cancel requests go; shared
    /// with the cancel key of the client holding it.
    pub cancel: Arc<ServerKey>,
    /// The parameters the server reported at login.
    pub parameters: Vec<(String, String)>,
    /// Statements prepared on it.
    pub prepared: ServerStatements,
    /// The session settings applied on it (see `settings::SessionSettings::id`).
    pub applied: u64,
    /// Fires when the server is put in maintenance (its sessions are cut); taken once
    /// per connection, not per transaction, to keep the server's token tree quiet.
    pub cut: tokio_util::sync::CancellationToken,
    /// The worker whose reactor drives its socket (the one that opened it): a client on
    /// another worker is woken across threads for each of its reads.
    worker: Option<usize>,
    created: Instant,
    idle_since: Instant,
    _slot: Slot,
}

/// A connection's place in its pool and on its server.
#[derive(Debug)]
struct Slot {
    home: Weak<TxPool>,
    server: Arc<Server>,
    _lease: Lease,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            if let Some(entry) = lock(&home.state).servers.get_mut(&server_key(&self.server)) {
                entry.open = entry.open.saturating_sub(1);
            }
            home.returned.notify_one();
        }
    }
}

impl ServerConn {
    /// Has the calling worker's reactor drive the connection's socket from now on, when
    /// another worker's does: each read would otherwise wake this worker from that one's
    /// thread (a system call and a context switch per server reply). Costs four system
    /// calls once; a connection then mostly stays, as it is given back to this worker's
    /// waiting clients first. Over TLS the socket moves under the TLS state, which stays.
    fn move_to_this_worker(&mut self) {
        let here = crate::runtime::current_worker();
        if here.is_none() || here == self.worker {
            return;
        }
        let tcp = match &mut self.stream {
            tokio_util::either::Either::Left(tcp) => tcp,
            tokio_util::either::Either::Right(tls) => tls.get_mut().0,
        };
        match crate::net::move_to_this_worker(tcp) {
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

impl TxPool {
    /// Leases a server connection on a server `accept` admits: an idle one when there is
    /// one, else a new one while the server has fewer than `pool_size`, else waits up to
    /// the pool's queue timeout for one to come back.
    pub async fn lease(
        self: &Arc<Self>,
        client: SocketAddr,
        accept: &ServerFilter<'_>,
        limits: &MessageLimits,
    ) -> Result<ServerConn, LeaseFailure> {
        let pool = self.upstream.load_full();
        let started = Instant::now();
        let deadline = started + pool.timeouts.queue;
        // The common case: a connection is free now; no queue bookkeeping.
        match self.try_lease(&pool, client, accept, limits).await {
            Ok(Some(conn)) => {
                self.stats.leases.fetch_add(1, Ordering::Relaxed);
                return Ok(conn);
            }
            Ok(None) => {}
            Err(failure) => return Err(failure),
        }
        let mut waiting = false;
        let queue = self.returned.mine();
        let _queued = queue.join();
        let result = loop {
            let returned = queue.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            match self.try_lease(&pool, client, accept, limits).await {
                Ok(Some(conn)) => break Ok(conn),
                Ok(None) => {}
                Err(failure) => break Err(failure),
            }
            if !waiting {
                waiting = true;
                self.stats.waiting.fetch_add(1, Ordering::Relaxed);
            }
            // A connection given back for a server this client does not admit wakes it
            // in vain; look again now and then so such a wake-up is never lost for good.
            let recheck = (Instant::now() + Duration::from_millis(100)).min(deadline);
            if tokio::time::timeout_at(recheck, returned).await.is_err() && recheck >= deadline {
                self.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                break Err(LeaseFailure::QueueTimeout);
            }
        };
        if waiting {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        let waited = started.elapsed().as_micros() as u64;
        self.stats.wait_micros.fetch_add(waited, Ordering::Relaxed);
        if result.is_ok() {
            self.stats.leases.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn try_lease(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        client: SocketAddr,
        accept: &ServerFilter<'_>,
        limits: &MessageLimits,
    ) -> Result<Option<ServerConn>, LeaseFailure> {
        let admitted = |s: &Server| s.is_available() && accept(s);
        if !pool.servers.iter().any(|s| admitted(s)) {
            return Err(LeaseFailure::NoServer);
        }
        match self.take_idle(pool, &admitted) {
            Ok(mut conn) => {
                conn.move_to_this_worker();
                // A pool serves every listener routed to it, and `min_idle` opens
                // connections for no listener: the message limit is the leasing
                // listener's, set at each lease (new connections are opened with it).
                conn.reader.set_limit(limits.message);
                Ok(Some(conn))
            }
            Err(open_on) => self.open_new(pool, client, &open_on, limits).await,
        }
    }

    /// An idle connection on a server `admitted` accepts; else the admitted servers that
    /// have room for another connection.
    fn take_idle(
        &self,
        pool: &Pool,
        admitted: &ServerFilter<'_>,
    ) -> Result<ServerConn, Vec<Arc<Server>>> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let mut open_on = Vec::new();
        {
            let mut state = lock(&self.state);
            // Start the scan at a different server each time so idle connections of
            // every server get used.
            let count = pool.servers.len();
            let start = fastrand::usize(..count.max(1));
            let here = crate::runtime::current_worker();
            for offset in 0..count {
                let server = &pool.servers[(start + offset) % count];
                if !admitted(server) {
                    continue;
                }
                let entry = state.of(server);
                // One of this worker's own connections first, if it has one idle.
                if let Some(mine) = entry.idle.iter().rposition(|c| c.worker == here) {
                    let last = entry.idle.len() - 1;
                    entry.idle.swap(mine, last);
                }
                while let Some(conn) = entry.idle.pop() {
                    if conn.expired(now, pool.pooling.lifetime) || conn.cut.is_cancelled() {
                        stale.push(conn);
                        continue;
                    }
                    entry.active += 1;
                    drop(state);
                    drop(stale);
                    return Ok(conn);
                }
                if entry.open < pool.pooling.size {
                    open_on.push(server.clone());
                }
            }
        }
        // Closed outside the lock: a connection's slot takes it when dropped.
        drop(stale);
        Err(open_on)
    }

    /// Opens and logs in a new connection on one of `open_on` (the pool's balancer picks);
    /// `None` when none has room any more.
    async fn open_new(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        client: SocketAddr,
        open_on: &[Arc<Server>],
        limits: &MessageLimits,
    ) -> Result<Option<ServerConn>, LeaseFailure> {
        if open_on.is_empty() {
            return Ok(None);
        }
        let candidates = |s: &Server| open_on.iter().any(|o| std::ptr::eq(o.as_ref(), s));
        let lease = match pool.lease_matching(client.ip(), &[], &candidates).await {
            Ok(lease) => lease,
            Err(LeaseError::NoServer) => return Err(LeaseFailure::NoServer),
            Err(LeaseError::QueueFull | LeaseError::QueueTimeout) => {
                return Err(LeaseFailure::QueueTimeout);
            }
        };
        let server = lease.server().clone();
        {
            let mut state = lock(&self.state);
            let entry = state.of(&server);
            if entry.open >= pool.pooling.size {
                // Another client took the last place meanwhile.
                return Ok(None);
            }
            entry.open += 1;
            entry.active += 1;
        }
        let slot = Slot {
            home: Arc::downgrade(self),
            server: server.clone(),
            _lease: lease,
        };
        match self.open(pool, slot, limits).await {
            Ok(conn) => Ok(Some(conn)),
            Err(failure) => {
                self.done(&server);
                Err(failure)
            }
        }
    }

    /// Connects and logs in a new connection for `slot`'s server.
    async fn open(
        &self,
        pool: &Arc<Pool>,
        slot: Slot,
        limits: &MessageLimits,
    ) -> Result<ServerConn, LeaseFailure> {
        let server = slot.server.clone();
        let (stream, peer) = crate::upstream::connect_server(&server, pool)
            .await
            .map_err(|e| {
                crate::upstream::record_connect_failure(pool, &server, &e);
                LeaseFailure::Connect(e)
            })?;
        let host = server_host(&server);
        let tls = pool.tls.as_deref();
        let mut stream = secure_server(tls, &host, stream, &[], false)
            .await
            .map_err(LeaseFailure::Connect)?;
        let mut startup = Startup {
            version: PROTOCOL_3_0,
            params: Vec::new(),
        };
        startup.set_param("user", &self.user);
        startup.set_param("database", &self.database);
        let credential = lock(&self.credential).clone();
        let logged_in: LoggedIn = tokio::time::timeout(
            pool.timeouts.connect,
            login(&mut stream, &startup, &credential, limits),
        )
        .await
        .map_err(|_| {
            LeaseFailure::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "login timed out",
            ))
        })?
        .map_err(LeaseFailure::Login)?;
        let now = Instant::now();
        Ok(ServerConn {
            stream,
            reader: FrameReader::new(limits.message),
            cancel: Arc::new(ServerKey::new(
                CancelTarget {
                    server: peer,
                    connect_timeout: pool.timeouts.connect,
                    tls: pool.tls.clone(),
                    host,
                    preamble: Vec::new(),
                },
                logged_in.process_id,
                logged_in.secret_key,
            )),
            parameters: logged_in.parameters,
            prepared: ServerStatements::new(pool.pooling.max_prepared_statements),
            applied: 0,
            worker: crate::runtime::current_worker(),
            cut: server.session_token(),
            created: now,
            idle_since: now,
            server,
            _slot: slot,
        })
    }

    /// Notes that a lease of `server` ended without the connection coming back.
    fn done(&self, server: &Arc<Server>) {
        if let Some(entry) = lock(&self.state).servers.get_mut(&server_key(server)) {
            entry.active = entry.active.saturating_sub(1);
        }
    }

    /// Takes back a connection that is idle at the server (ReadyForQuery `I`) and clean.
    /// It is closed instead when its server is no longer usable or it is too old.
    pub fn give_back(&self, mut conn: ServerConn) {
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        let pool = self.upstream.load();
        let now = Instant::now();
        let usable = conn.server.is_available()
            && !conn.cut.is_cancelled()
            && !conn.expired(now, pool.pooling.lifetime)
            && !conn.reader.has_partial()
            && pool.servers.iter().any(|s| Arc::ptr_eq(s, &conn.server));
        let mut state = lock(&self.state);
        let Some(entry) = state.servers.get_mut(&server_key(&conn.server)) else {
            drop(state);
            drop(conn);
            return;
        };
        entry.active = entry.active.saturating_sub(1);
        if usable {
            conn.idle_since = now;
            entry.idle.push(conn);
            drop(state);
            self.returned.notify_one();
        } else {
            drop(state);
            drop(conn);
        }
    }

    /// Closes a leased connection that cannot be reused.
    pub fn discard(&self, conn: ServerConn) {
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        self.done(&conn.server);
        drop(conn);
    }

    /// Server connections per server, by server name.
    pub fn servers(&self) -> Vec<ServerConnections> {
        let state = lock(&self.state);
        let mut out: Vec<_> = state
            .servers
            .values()
            .map(|e| ServerConnections {
                server: e.server.name.clone(),
                open: e.open,
                active: e.active,
                idle: e.idle.len(),
            })
            .collect();
        out.sort_by(|a, b| a.server.cmp(&b.server));
        out
    }

    /// Closes idle connections that are too old, unused too long (beyond `min_idle`) or
    /// whose server is gone or unusable, and opens connections up to `min_idle`.
    async fn tidy(self: &Arc<Self>) {
        let pool = self.upstream.load_full();
        let now = Instant::now();
        let mut closing = Vec::new();
        let mut short = Vec::new();
        {
            let mut state = lock(&self.state);
            for entry in state.servers.values_mut() {
                let current = pool.servers.iter().any(|s| Arc::ptr_eq(s, &entry.server));
                let usable = current && entry.server.is_available();
                let mut kept = Vec::with_capacity(entry.idle.len());
                // Most recently used first (they sit at the end): those are kept for
                // `min_idle`, the long unused ones beyond it are closed.
                for conn in entry.idle.drain(..).rev() {
                    let idle_for = now.duration_since(conn.idle_since);
                    let surplus = kept.len() + 1 > pool.pooling.min_idle;
                    if !usable
                        || conn.expired(now, pool.pooling.lifetime)
                        || (surplus && idle_for >= pool.pooling.idle_timeout)
                    {
                        closing.push(conn);
                    } else {
                        kept.push(conn);
                    }
                }
                kept.reverse();
                entry.idle = kept;
                let want = pool.pooling.min_idle.saturating_sub(entry.idle.len());
                if usable && want > 0 && entry.open < pool.pooling.size {
                    short.push((entry.server.clone(), want));
                }
            }
            for server in &pool.servers {
                if pool.pooling.min_idle > 0
                    && server.is_available()
                    && !state.servers.contains_key(&server_key(server))
                {
                    short.push((server.clone(), pool.pooling.min_idle));
                }
            }
        }
        drop(closing);
        // No listener asked for these: the default limit holds for the login only, a
        // lease applies its listener's (see `try_lease`).
        let limits = MessageLimits::default();
        let client = SocketAddr::from(([127, 0, 0, 1], 0));
        for (server, want) in short {
            // New connections only: taking an idle one and giving it back adds nothing.
            for _ in 0..want {
                let open_on = std::slice::from_ref(&server);
                match self.open_new(&pool, client, open_on, &limits).await {
                    Ok(Some(conn)) => self.give_back_unused(conn),
                    Ok(None) => break,
                    Err(failure) => {
                        tracing::debug!(pool = %pool.name, server = %server.name, ?failure, "min_idle connection failed");
                        break;
                    }
                }
            }
        }
    }

    /// `give_back` without counting a transaction (a connection opened for `min_idle`,
    /// or leased only to learn the server's parameters).
    pub fn give_back_unused(&self, conn: ServerConn) {
        self.give_back(conn);
        self.stats.transactions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tidies a pool every second while it exists.
async fn maintain(pool: Weak<TxPool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.tidy().await;
    }
}

#[cfg(test)]
mod tests {
    /// The keys `load_str` reports for a config with a postgres listener (`listener`
    /// keys) over a pool with `pool` keys, or none when it loads.
    fn errors(listener: &str, pool: &str) -> Vec<String> {
        let pool = format!("{pool}\nservers = [ {{ address = \"127.0.0.1:5432\" }} ]");
        keys(&crate::testing::postgres_config(
            listener,
            &pool,
            "[[user]]\nname = \"app\"\npassword = \"pw\"",
        ))
    }

    /// The keys of the errors loading `text` gives.
    fn keys(text: &str) -> Vec<String> {
        match crate::testing::load_config(text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| e.key.clone()).collect(),
        }
    }

    #[test]
    fn pooling_keys_are_checked() {
        assert!(
            errors(
                "",
                "pool_mode = \"transaction\"\npool_size = 5\nmin_idle = 2"
            )
            .is_empty()
        );
        assert_eq!(errors("", "pool_size = 0"), ["pool[0].pool_size"]);
        assert_eq!(
            errors("", "pool_size = 2\nmin_idle = 3"),
            ["pool[0].min_idle"]
        );
        assert_eq!(
            errors("", "max_prepared_statements = 0"),
            ["pool[0].max_prepared_statements"]
        );
        assert_eq!(
            errors("", "pool_mode = \"statement\""),
            ["pool[0].pool_mode"]
        );
        assert_eq!(
            errors("auth = \"passthrough\"", "pool_mode = \"transaction\""),
            ["listener[0].auth"],
            "switchyard must know the client to log in for it"
        );
    }

    #[test]
    fn transaction_pools_serve_postgres_listeners_only() {
        let text = r#"
[[listener]]
name = "tcp"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "pg"

[[pool]]
name = "pg"
pool_mode = "transaction"
servers = [ { address = "127.0.0.1:5432" } ]
"#;
        assert_eq!(keys(text), ["pool[0].pool_mode"]);
    }
}
