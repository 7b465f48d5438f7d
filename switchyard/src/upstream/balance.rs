//! Balance algorithms: which of the servers able to take work gets the next connection.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Server;
use crate::config::BalanceAlgorithm;

/// Per-pool balancing state.
#[derive(Debug)]
pub struct Balancer {
    algorithm: BalanceAlgorithm,
    /// Smooth weighted round robin's running weights, indexed like the pool's servers.
    current_weights: Mutex<Vec<i64>>,
    /// Rotates ties in least_conn so equal servers share work.
    rotation: AtomicUsize,
}

impl Balancer {
    /// State for `server_count` servers.
    pub fn new(algorithm: BalanceAlgorithm, server_count: usize) -> Self {
        Self {
            algorithm,
            current_weights: Mutex::new(vec![0; server_count]),
            rotation: AtomicUsize::new(0),
        }
    }

    /// Picks one of `candidates` (indexes into `servers`, non-empty, each with weight > 0).
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
        match self.algorithm {
            BalanceAlgorithm::RoundRobin => self.smooth_round_robin(servers, candidates),
            BalanceAlgorithm::LeastConn => self.least_conn(servers, candidates),
            BalanceAlgorithm::Random => two_random_choices(servers, candidates),
            BalanceAlgorithm::SourceHash => rendezvous(servers, candidates, client),
        }
    }

    /// nginx's smooth weighted round robin: spreads a heavy server's turns evenly.
    fn smooth_round_robin(
        &self,
        servers: &[std::sync::Arc<Server>],
        candidates: &[usize],
    ) -> usize {
        let mut current = self
            .current_weights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best = candidates[0];
        for &i in candidates {
            let weight = i64::from(servers[i].weight());
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
    fn least_conn(&self, servers: &[std::sync::Arc<Server>], candidates: &[usize]) -> usize {
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % candidates.len();
        let mut best = candidates[start];
        for offset in 1..candidates.len() {
            let i = candidates[(start + offset) % candidates.len()];
            if lighter(&servers[i], &servers[best]) {
                best = i;
            }
        }
        best
    }
}

/// Whether `a` carries less load per unit of weight than `b`.
fn lighter(a: &Server, b: &Server) -> bool {
    (a.active() as u128) * u128::from(b.weight()) < (b.active() as u128) * u128::from(a.weight())
}

/// Power of two random choices: near-least-loaded without a global scan or herd effects.
fn two_random_choices(servers: &[std::sync::Arc<Server>], candidates: &[usize]) -> usize {
    let first = fastrand::usize(..candidates.len());
    let mut second = fastrand::usize(..candidates.len() - 1);
    if second >= first {
        second += 1;
    }
    let (a, b) = (candidates[first], candidates[second]);
    if lighter(&servers[b], &servers[a]) {
        b
    } else {
        a
    }
}

/// Weighted rendezvous hashing: removing a server moves only the clients it had.
fn rendezvous(servers: &[std::sync::Arc<Server>], candidates: &[usize], client: IpAddr) -> usize {
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
        let score = f64::from(servers[i].weight()) / -unit.ln();
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

    use super::*;
    use crate::config::ServerConfig;

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
                };
                Arc::new(Server::new(&config, 3, 2).expect("valid test server"))
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
