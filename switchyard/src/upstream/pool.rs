//! A pool of servers: choosing one that can take work, queueing when all are full.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Balancer, Server, ServerAddress};
use crate::config::{
    DatabasePool, HealthConfig, HttpPool, PoolConfig, PoolTimeouts, ProxyProtocolVersion,
};
use crate::wait_queue::WaitQueue;

/// Counters kept per pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Clients waiting for a server slot now.
    pub queued: AtomicUsize,
    /// Clients that gave up waiting for a slot.
    pub queue_timeouts: AtomicU64,
    /// Clients refused because the queue was full.
    pub queue_full: AtomicU64,
    /// Clients refused because no server was available.
    pub no_server: AtomicU64,
}

/// Why no server could be leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Every server is down, drained or in maintenance.
    #[error("no server available")]
    NoServer,
    /// Every usable server is at its connection limit and the queue is full.
    #[error("queue full")]
    QueueFull,
    /// Waited `timeouts.queue` for a slot without getting one.
    #[error("queue timeout")]
    QueueTimeout,
}

/// Which servers a lease may use, beyond being available (e.g. only primaries).
pub type ServerFilter<'a> = dyn Fn(&Server) -> bool + Send + Sync + 'a;

/// A connection slot on a server, given back when dropped.
#[derive(Debug)]
pub struct Lease {
    server: Arc<Server>,
    pool: Arc<Pool>,
}

impl Lease {
    /// The leased server.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// The pool the server was leased from.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.server.release_slot();
        self.pool.slot_freed.wake_all();
    }
}

/// Indices of servers a lease may pick from; pools rarely have more than a few servers,
/// and a lease allocates nothing for them.
type Candidates = smallvec::SmallVec<[usize; 8]>;

/// A named group of servers with a balance algorithm.
#[derive(Debug)]
pub struct Pool {
    /// Name from the config.
    pub name: String,
    /// The servers, in config order.
    pub servers: Vec<Arc<Server>>,
    /// Server-side timeouts.
    pub timeouts: PoolTimeouts,
    /// Extra connect attempts on other servers.
    pub retries: u32,
    /// PROXY header to send to servers.
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
    /// Health checking, if configured.
    pub health: Option<HealthConfig>,
    /// TLS to the servers (`upstream_tls`), also used by health checks.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// Counters, shared with the pool this one replaced on reload.
    pub stats: Arc<PoolStats>,
    /// The keys HTTP listeners read (HTTP version, `Host`, keep-alive).
    pub http: HttpPool,
    /// The keys database listeners read (replica lag, pooling, the split).
    pub database: DatabasePool,
    /// The keys SMTP listeners read (`send_xclient`).
    pub smtp: crate::config::SmtpPool,
    max_queue: usize,
    balancer: Balancer,
    // Clients waiting for a server slot. Shared with the pool this one replaced, so that
    // clients still queued in the old pool hear about slots freed on the servers both have.
    slot_freed: Arc<WaitQueue>,
    // Clients waiting for a pooled connection (`ConnPool`), woken to look again when the
    // servers change; shared with the pool this one replaced, like `slot_freed`.
    servers_changed: Arc<WaitQueue>,
    retired: CancellationToken,
    /// For a pool with `resolver`: the resolver and the routing key; its servers come
    /// from the answers ([`Pool::resolve`]).
    pub resolver: Option<Arc<super::resolved::PoolResolver>>,
    /// For a pool built from a resolver's answer: that resolver, told when a server
    /// refuses connections so the answer is asked again.
    pub origin: Option<Arc<crate::resolve::Resolver>>,
}

impl Pool {
    /// Builds a pool from its (validated) config.
    pub fn new(config: &PoolConfig) -> Result<Self, String> {
        Self::rebuild(config, None)
    }

    /// Builds a pool from its (validated) config, taking over from `previous` (a reload):
    /// its servers with the same name and address are kept, updated in place, so their
    /// health, counters, operator state and sessions carry over; so do the pool counters.
    pub fn rebuild(config: &PoolConfig, previous: Option<&Pool>) -> Result<Self, String> {
        let (fall, rise) = thresholds(config.health.as_ref());
        let servers = config
            .servers
            .iter()
            .map(|server_config| {
                let address = ServerAddress::parse(&server_config.address)?;
                let kept = previous
                    .and_then(|p| p.server(server_config.display_name()))
                    .filter(|old| old.address == address);
                let slow_start = server_config.effective_slow_start(config);
                match kept {
                    Some(server) => {
                        server.update(server_config, fall, rise, slow_start);
                        // Health learned from checks that stop now would never change again.
                        if config.health.is_none() && previous.is_some_and(|p| p.health.is_some()) {
                            server.reset_health(fall, rise);
                        }
                        Ok(server.clone())
                    }
                    None => Server::new(server_config, fall, rise, slow_start).map(Arc::new),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: config.name.clone(),
            balancer: Balancer::new(config.balance, servers.len()),
            servers,
            timeouts: config.timeouts.clone(),
            retries: config.retries,
            send_proxy_protocol: config.send_proxy_protocol,
            health: config.health.clone(),
            tls: config
                .upstream_tls
                .as_ref()
                .map(|tls| crate::tls::UpstreamTls::from_config(tls, std::path::Path::new("")))
                .transpose()?
                .map(Arc::new),
            stats: previous.map(|p| p.stats.clone()).unwrap_or_default(),
            http: config.http.clone(),
            database: config.database.clone(),
            smtp: config.smtp.clone(),
            max_queue: config.max_queue,
            slot_freed: previous.map(|p| p.slot_freed.clone()).unwrap_or_default(),
            servers_changed: previous
                .map(|p| p.servers_changed.clone())
                .unwrap_or_default(),
            retired: CancellationToken::new(),
            resolver: None,
            origin: None,
        })
    }

    /// A pool of this one's settings over `servers` (from `origin`'s answer): it shares
    /// the counters, and a reload retiring this pool retires it too.
    pub(super) fn derive(
        &self,
        balance: crate::config::BalanceAlgorithm,
        servers: Vec<Arc<Server>>,
        origin: Arc<crate::resolve::Resolver>,
    ) -> Self {
        Self {
            name: self.name.clone(),
            balancer: Balancer::new(balance, servers.len()),
            servers,
            timeouts: self.timeouts.clone(),
            retries: self.retries,
            send_proxy_protocol: self.send_proxy_protocol,
            health: None,
            tls: self.tls.clone(),
            stats: self.stats.clone(),
            http: self.http.clone(),
            database: self.database.clone(),
            smtp: self.smtp.clone(),
            max_queue: self.max_queue,
            slot_freed: Arc::default(),
            servers_changed: Arc::default(),
            retired: self.retired.child_token(),
            resolver: None,
            origin: Some(origin),
        }
    }

    /// Takes this pool out of service after a reload replaced or removed it: its health
    /// checks stop, and queued clients look again (and find only what is still eligible).
    /// Connections already using it keep running.
    pub fn retire(&self) {
        self.retired.cancel();
        self.wake_queue();
    }

    /// Whether a reload has retired this pool.
    pub fn is_retired(&self) -> bool {
        self.retired.is_cancelled()
    }

    /// Completes when the pool is retired.
    pub async fn retired(&self) {
        self.retired.cancelled().await;
    }

    /// Finds a server by name.
    pub fn server(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Whether some available server passes `accept` (e.g. a replica is up).
    pub fn any_available(&self, accept: &ServerFilter<'_>) -> bool {
        self.servers.iter().any(|s| s.is_available() && accept(s))
    }

    /// Servers eligible for new work among those `accept` admits: available primaries,
    /// else available backups.
    fn eligible(&self, exclude: &[Arc<Server>], accept: &ServerFilter<'_>) -> Candidates {
        let available = |backup: bool| -> Candidates {
            self.servers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.backup() == backup && s.is_available() && accept(s))
                .map(|(i, _)| i)
                .collect()
        };
        let mut eligible = available(false);
        if eligible.is_empty() {
            eligible = available(true);
        }
        if exclude.is_empty() {
            return eligible;
        }
        // Avoid servers that just failed, unless nothing else is left.
        let preferred: Candidates = eligible
            .iter()
            .copied()
            .filter(|&i| !exclude.iter().any(|e| Arc::ptr_eq(e, &self.servers[i])))
            .collect();
        if preferred.is_empty() {
            eligible
        } else {
            preferred
        }
    }

    /// Leases a slot on a server chosen by the balance algorithm, waiting in the queue
    /// up to `timeouts.queue` when every eligible server is at its connection limit.
    pub async fn lease(
        self: &Arc<Self>,
        client: IpAddr,
        exclude: &[Arc<Server>],
    ) -> Result<Lease, LeaseError> {
        self.lease_matching(client, exclude, &|_| true).await
    }

    /// `lease` among the servers `accept` admits (a database listener's role).
    pub async fn lease_matching(
        self: &Arc<Self>,
        client: IpAddr,
        exclude: &[Arc<Server>],
        accept: &ServerFilter<'_>,
    ) -> Result<Lease, LeaseError> {
        if let Some(lease) = self.try_lease(client, exclude, accept)? {
            return Ok(lease);
        }
        if self.stats.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.stats.queued.fetch_sub(1, Ordering::AcqRel);
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            return Err(LeaseError::QueueFull);
        }
        // Boxed, as the rare path: it would otherwise make every lease's future larger.
        let result =
            Box::pin(self.wait_in_queue(client, exclude, accept, self.timeouts.queue)).await;
        self.stats.queued.fetch_sub(1, Ordering::AcqRel);
        if matches!(result, Err(LeaseError::QueueTimeout)) {
            self.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn wait_in_queue(
        self: &Arc<Self>,
        client: IpAddr,
        exclude: &[Arc<Server>],
        accept: &ServerFilter<'_>,
        limit: Duration,
    ) -> Result<Lease, LeaseError> {
        let deadline = Instant::now() + limit;
        let _waiting = self.slot_freed.join();
        loop {
            // Register interest before looking, so a slot freed in between is not missed.
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(lease) = self.try_lease(client, exclude, accept)? {
                return Ok(lease);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(LeaseError::QueueTimeout);
            }
        }
    }

    /// Wakes queued clients so they look again (a server came back or changed state).
    pub fn wake_queue(&self) {
        self.slot_freed.wake_all_now();
        self.servers_changed.wake_all();
    }

    /// Where clients waiting for a pooled server connection hear that servers changed.
    pub fn changes(&self) -> &WaitQueue {
        &self.servers_changed
    }

    /// One of `candidates` (servers of this pool) picked by the balance algorithm.
    pub fn choose(&self, candidates: &[Arc<Server>], client: IpAddr) -> usize {
        let indexes: Candidates = candidates
            .iter()
            .filter_map(|c| self.servers.iter().position(|s| Arc::ptr_eq(s, c)))
            .collect();
        if indexes.len() != candidates.len() {
            // Not all of them this pool's (a reload meanwhile): the first will do.
            return 0;
        }
        let pick = self.balancer.pick(&self.servers, &indexes, client);
        candidates
            .iter()
            .position(|c| Arc::ptr_eq(c, &self.servers[pick]))
            .unwrap_or(0)
    }

    fn try_lease(
        self: &Arc<Self>,
        client: IpAddr,
        exclude: &[Arc<Server>],
        accept: &ServerFilter<'_>,
    ) -> Result<Option<Lease>, LeaseError> {
        let eligible = self.eligible(exclude, accept);
        if eligible.is_empty() {
            self.stats.no_server.fetch_add(1, Ordering::Relaxed);
            return Err(LeaseError::NoServer);
        }
        let mut free: Candidates = eligible
            .into_iter()
            .filter(|&i| {
                self.servers[i]
                    .max_connections()
                    .is_none_or(|max| self.servers[i].active() < max)
            })
            .collect();
        while !free.is_empty() {
            let pick = self.balancer.pick(&self.servers, &free, client);
            let server = &self.servers[pick];
            if server.try_take_slot() {
                return Ok(Some(Lease {
                    server: server.clone(),
                    pool: self.clone(),
                }));
            }
            // Lost a race for its last slot: try the others.
            free.retain(|i| *i != pick);
        }
        Ok(None)
    }
}

/// A pool's health `fall` and `rise`, also used for passive checks without a `health` section.
fn thresholds(health: Option<&HealthConfig>) -> (u32, u32) {
    health.map_or((3, 2), |h| (h.fall, h.rise))
}
