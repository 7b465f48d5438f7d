//! Balance algorithms: which of the servers able to take work gets the next connection.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::Server;
use crate::config::BalanceAlgorithm;

/// Per-pool balancing state.
#[derive(Debug)]
pub struct Balancer {
    algorithm: BalanceAlgorithm,
    /// Smooth weighted round robin's running weights, indexed like the pool's servers
    /// (fractional while a server ramps up after `slow_start`).
    current_weights: Mutex<Vec<f64>>,
    /// Rotates ties in least_conn so equal servers share work.
    rotation: AtomicUsize,
}

impl Balancer {
    /// State for `server_count` servers.
    pub fn new(algorithm: BalanceAlgorithm, server_count: usize) -> Self {
        Self {
            algorithm,
            current_weights: Mutex::new(vec![0.0; server_count]),
            rotation: AtomicUsize::new(0),
        }
    }

    /// Picks one of `candidates` (indexes into `servers`, non-empty, each with weight > 0),
    /// by the servers' effective weights now.
    pub fn pick(
        &self,
        servers: &[std::sync::Arc<Server>],
        candidates: &[usize],
        client: IpAddr,
    ) -> usize {
        debug_assert!(!candidates.is_empty());
        if candidates.len() == 1 {
            return candidates[0];
        }
        self.pick_at(servers, candidates, client, Instant::now())
    }

    /// `pick` with the servers' weights as of `now`.
    fn pick_at(
        &self,
        servers: &[std::sync::Arc<Server>],
        candidates: &[usize],
        client: IpAddr,
        now: Instant,
    ) -> usize {
        match self.algorithm {
            BalanceAlgorithm::RoundRobin => self.smooth_round_robin(servers, candidates, now),
            BalanceAlgorithm::LeastConn => self.least_conn(servers, candidates, now),
            BalanceAlgorithm::Random => two_random_choices(servers, candidates, now),
            BalanceAlgorithm::SourceHash => rendezvous(servers, candidates, client, now),
        }
    }

    /// nginx's smooth weighted round robin: spreads a heavy server's turns evenly.
    fn smooth_round_robin(
        &self,
        servers: &[std::sync::Arc<Server>],
        candidates: &[usize],
        now: Instant,
    ) -> usize {
        let mut current = self
            .current_weights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut total = 0.0;
        let mut best = candidates[0];
        for &i in candidates {
            let weight = servers[i].effective_weight(now);
            current[i] += weight;
            total += weight;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        best
    }

    /// Fewest active connections per unit of weight; ties rotate.
    fn least_conn(
        &self,
        servers: &[std::sync::Arc<Server>],
        candidates: &[usize],
        now: Instant,
    ) -> usize {
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % candidates.len();
        let mut best = candidates[start];
        for offset in 1..candidates.len() {
            let i = candidates[(start + offset) % candidates.len()];
            if lighter(&servers[i], &servers[best], now) {
                best = i;
            }
        }
        best
    }
}

/// Whether `a` carries less load per unit of (effective) weight than `b`.
fn lighter(a: &Server, b: &Server, now: Instant) -> bool {
    a.active() as f64 * b.effective_weight(now) < b.active() as f64 * a.effective_weight(now)
}

/// Power of two random choices: near-least-loaded without a global scan or herd effects.
fn two_random_choices(
    servers: &[std::sync::Arc<Server>],
    candidates: &[usize],
    now: Instant,
) -> usize {
    let first = fastrand::usize(..candidates.len());
    let mut second = fastrand::usize(..candidates.len() - 1);
    if second >= first {
        second += 1;
    }
    let (a, b) = (candidates[first], candidates[second]);
    if lighter(&servers[b], &servers[a], now) {
        b
    } else {
        a
    }
}

/// Weighted rendezvous hashing: removing a server moves only the clients it had.
fn rendezvous(
    servers: &[std::sync::Arc<Server>],
    candidates: &[usize],
    client: IpAddr,
    now: Instant,
) -> usize {
    let client_hash = match client {
        IpAddr::V4(ip) => fnv1a(&ip.octets(), FNV_OFFSET),
        IpAddr::V6(ip) => fnv1a(&ip.octets(), FNV_OFFSET),
    };
    let mut best = candidates[0];
    let mut best_score = f64::NEG_INFINITY;
    for &i in candidates {
        let hash = mix(fnv1a(servers[i].name.as_bytes(), client_hash));
        // Map to (0, 1) and score weight / -ln(u): the highest-random-weight method.
        let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = servers[i].effective_weight(now) / -unit.ln();
        if score > best_score {
            best_score = score;
            best = i;
        }
    }
    best
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64's finalizer, to spread FNV's weak low bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::time::Duration;

    use super::*;
    use crate::config::ServerConfig;
    use crate::upstream::AdminState;

    fn servers(weights: &[u32]) -> Vec<Arc<Server>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let config = ServerConfig {
                    name: Some(format!("s{i}")),
                    address: format!("127.0.0.1:{}", 1000 + i),
                    weight,
                    max_connections: None,
                    backup: false,
                    slow_start: None,
                };
                Arc::new(
                    Server::new(&config, 3, 2, Duration::from_secs(10)).expect("valid test server"),
                )
            })
            .collect()
    }

    #[test]
    fn smooth_round_robin_follows_weights_and_interleaves() {
        let servers = servers(&[5, 1, 1]);
        let balancer = Balancer::new(BalanceAlgorithm::RoundRobin, 3);
        let all = [0, 1, 2];
        let picks: Vec<usize> = (0..7)
            .map(|_| balancer.pick(&servers, &all, IpAddr::from([127, 0, 0, 1])))
            .collect();
        assert_eq!(
            picks,
            vec![0, 0, 1, 0, 2, 0, 0],
            "nginx's documented sequence for 5,1,1"
        );
    }

    /// Drains and readies server 1 of two weight-1 servers, then counts which server each
    /// of `clients` gets, at the start of the ramp and once it is over.
    fn shares_while_returning(algorithm: BalanceAlgorithm, clients: u32) -> [[usize; 2]; 2] {
        let servers = servers(&[1, 1]);
        let balancer = Balancer::new(algorithm, 2);
        servers[1].set_admin_state(AdminState::Drain);
        servers[1].set_admin_state(AdminState::Ready);
        let start = Instant::now();
        [start, start + Duration::from_secs(10)].map(|now| {
            let mut counts = [0; 2];
            for n in 0..clients {
                let client = IpAddr::from(n.wrapping_mul(2_654_435_761).to_be_bytes());
                counts[balancer.pick_at(&servers, &[0, 1], client, now)] += 1;
            }
            counts
        })
    }

    #[test]
    fn round_robin_ramps_a_returning_server() {
        let [ramping, after] = shares_while_returning(BalanceAlgorithm::RoundRobin, 40);
        assert!(ramping[1] <= 2, "about 5% of 40 at first: {ramping:?}");
        assert_eq!(after, [20, 20], "equal weights, equal share after the ramp");
    }

    #[test]
    fn source_hash_ramps_a_returning_server() {
        let [ramping, after] = shares_while_returning(BalanceAlgorithm::SourceHash, 2000);
        assert!(ramping[1] < 250, "about 5% of 2000 at first: {ramping:?}");
        assert!(
            after[1] > 850 && after[1] < 1150,
            "half after the ramp: {after:?}"
        );
    }

    #[test]
    fn least_conn_weighs_load_by_the_ramped_weight() {
        let servers = servers(&[1, 1]);
        servers[1].set_admin_state(AdminState::Drain);
        servers[1].set_admin_state(AdminState::Ready);
        servers[0].try_take_slot();
        servers[1].try_take_slot();
        let balancer = Balancer::new(BalanceAlgorithm::LeastConn, 2);
        let now = Instant::now();
        assert_eq!(
            balancer.pick_at(&servers, &[0, 1], IpAddr::from([1, 1, 1, 1]), now),
            0
        );
        let later = now + Duration::from_secs(10);
        let picks: std::collections::HashSet<usize> = (0..4)
            .map(|_| balancer.pick_at(&servers, &[0, 1], IpAddr::from([1, 1, 1, 1]), later))
            .collect();
        assert_eq!(
            picks.len(),
            2,
            "equal load and weight after the ramp: ties rotate"
        );
    }

    #[test]
    fn least_conn_prefers_idle_servers() {
        let servers = servers(&[1, 1]);
        servers[0].try_take_slot();
        let balancer = Balancer::new(BalanceAlgorithm::LeastConn, 2);
        for _ in 0..4 {
            assert_eq!(
                balancer.pick(&servers, &[0, 1], IpAddr::from([1, 2, 3, 4])),
                1
            );
        }
    }

    #[test]
    fn source_hash_moves_only_the_removed_servers_clients() {
        let servers = servers(&[1, 1, 1, 1]);
        let balancer = Balancer::new(BalanceAlgorithm::SourceHash, 4);
        let mut per_server = [0usize; 4];
        for n in 0..2000u32 {
            let client = IpAddr::from(n.wrapping_mul(2_654_435_761).to_be_bytes());
            let before = balancer.pick(&servers, &[0, 1, 2, 3], client);
            per_server[before] += 1;
            let after = balancer.pick(&servers, &[0, 1, 3], client);
            if before != 2 {
                assert_eq!(
                    before, after,
                    "client {client} moved although its server stayed"
                );
            }
            assert_eq!(
                before,
                balancer.pick(&servers, &[0, 1, 2, 3], client),
                "stable"
            );
        }
        assert!(
            per_server.iter().all(|&n| n > 350),
            "spread: {per_server:?}"
        );
    }

    #[test]
    fn random_picks_both_servers() {
        let servers = servers(&[1, 1]);
        let balancer = Balancer::new(BalanceAlgorithm::Random, 2);
        let picks: std::collections::HashSet<usize> = (0..64)
            .map(|_| balancer.pick(&servers, &[0, 1], IpAddr::from([1, 1, 1, 1])))
            .collect();
        assert_eq!(picks.len(), 2);
    }
}
