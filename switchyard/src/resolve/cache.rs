//! The answers a resolver keeps: fresh for their TTL, then kept `stale_if_error` longer
//! to serve while the source fails; "no route" and "refused" for `negative_ttl`; at most
//! `max_entries` keys, least recently used out first. Lookups of one key run one at a
//! time (single flight): a thousand clients arriving for a cold key wait for one lookup.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use tokio::time::{Duration, Instant};

use super::Outcome;

/// A cached outcome and how long it lasts.
#[derive(Debug, Clone)]
struct Entry {
    outcome: Outcome,
    fresh_until: Instant,
    keep_until: Instant,
}

/// What the cache holds for a key.
#[derive(Debug, Clone)]
pub enum Cached {
    /// Within its TTL: use it.
    Fresh(Outcome),
    /// Past its TTL but within `stale_if_error`: ask again, serve it if asking fails.
    Stale(Outcome),
    /// Nothing usable.
    Miss,
}

/// The result of one lookup, shared by everyone waiting on it.
pub type Flight = Arc<OnceCell<Result<Outcome, String>>>;

/// A resolver's cache.
#[derive(Debug)]
pub struct Cache {
    entries: Mutex<lru::LruCache<String, Entry>>,
    flights: Mutex<HashMap<String, Flight>>,
    stale_if_error: Duration,
    // Servers that refused a connection, and until when they are held down: an answer
    // naming one is fresh no longer than that, so it is asked about again by the time the
    // server is tried again.
    suspects: Mutex<HashMap<SocketAddr, Instant>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    /// A cache of at most `max_entries` keys.
    pub fn new(max_entries: usize, stale_if_error: Duration) -> Self {
        Self {
            entries: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(max_entries).unwrap_or(NonZeroUsize::MIN),
            )),
            flights: Mutex::new(HashMap::new()),
            stale_if_error,
            suspects: Mutex::new(HashMap::new()),
        }
    }

    /// What is cached for `key` at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Cached {
        let mut entries = lock(&self.entries);
        match entries.get(key) {
            Some(entry) if now < entry.fresh_until => Cached::Fresh(entry.outcome.clone()),
            Some(entry) if now < entry.keep_until => Cached::Stale(entry.outcome.clone()),
            Some(_) => {
                entries.pop(key);
                Cached::Miss
            }
            None => Cached::Miss,
        }
    }

    /// The lookup of `key` in flight, or a new one the caller runs.
    pub fn flight(&self, key: &str) -> Flight {
        lock(&self.flights)
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Ends `flight` (once, whoever calls first): a success is cached for `ttl` (plus
    /// `stale_if_error` for a route), a failure leaves the cache as it was.
    pub fn land(&self, key: &str, flight: &Flight, ttl: Duration, now: Instant) {
        {
            let mut flights = lock(&self.flights);
            match flights.get(key) {
                Some(current) if Arc::ptr_eq(current, flight) => flights.remove(key),
                _ => return,
            };
        }
        if let Some(Ok(outcome)) = flight.get() {
            let mut fresh_until = now + ttl;
            let keep_until = match outcome {
                Outcome::Route(answer) => {
                    let keep_until = fresh_until + self.stale_if_error;
                    let suspects = lock(&self.suspects);
                    for server in &answer.servers {
                        let held = server.address.socket().and_then(|a| suspects.get(&a));
                        if let Some(&until) = held.filter(|&&until| until > now) {
                            fresh_until = fresh_until.min(until);
                        }
                    }
                    keep_until
                }
                _ => fresh_until,
            };
            lock(&self.entries).put(
                key.to_string(),
                Entry {
                    outcome: outcome.clone(),
                    fresh_until,
                    keep_until,
                },
            );
        }
    }

    /// Drops `key`; whether it was cached.
    pub fn purge(&self, key: &str) -> bool {
        lock(&self.entries).pop(key).is_some()
    }

    /// Drops every key.
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }

    /// Makes every answer naming a server at `addr` stale, so the next connection asks the
    /// source again (the server refused a connection: it may have moved); an answer naming
    /// it that lands before `until` (the server is held down till then) is fresh only until
    /// then.
    pub fn revalidate(&self, addr: SocketAddr, now: Instant, until: Instant) {
        {
            let mut suspects = lock(&self.suspects);
            suspects.retain(|_, held| *held > now);
            suspects.insert(addr, until);
        }
        for (_, entry) in lock(&self.entries).iter_mut() {
            if let Outcome::Route(answer) = &entry.outcome
                && answer
                    .servers
                    .iter()
                    .any(|s| s.address.socket() == Some(addr))
            {
                entry.fresh_until = entry.fresh_until.min(now);
            }
        }
    }

    /// Keys cached now.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Outcome {
        Outcome::NoRoute
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_then_stale_then_gone() {
        let cache = Cache::new(10, Duration::from_secs(10));
        let now = Instant::now();
        let answer = Arc::new(crate::resolve::Answer {
            servers: vec![],
            ttl: None,
            tenant: None,
            rewrite_database: None,
            rewrite_user: None,
            host: None,
        });
        let flight = cache.flight("k");
        flight.set(Ok(Outcome::Route(answer))).unwrap();
        cache.land("k", &flight, Duration::from_secs(5), now);
        assert!(matches!(cache.get("k", now), Cached::Fresh(_)));
        assert!(matches!(
            cache.get("k", now + Duration::from_secs(6)),
            Cached::Stale(_)
        ));
        assert!(matches!(
            cache.get("k", now + Duration::from_secs(16)),
            Cached::Miss
        ));
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_server_makes_its_answers_stale_and_fresh_only_until_its_hold_ends() {
        let cache = Cache::new(10, Duration::ZERO);
        let now = Instant::now();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let answer = Arc::new(crate::resolve::Answer {
            servers: vec![crate::resolve::PinnedServer {
                name: "s".into(),
                address: crate::address::ServerAddress::Ip(addr),
                weight: 1,
            }],
            ttl: None,
            tenant: None,
            rewrite_database: None,
            rewrite_user: None,
            host: None,
        });
        let land = |at: Instant| {
            let flight = cache.flight("k");
            flight.set(Ok(Outcome::Route(answer.clone()))).unwrap();
            cache.land("k", &flight, Duration::from_secs(3600), at);
        };
        land(now);
        assert!(matches!(cache.get("k", now), Cached::Fresh(_)));
        let hold = now + Duration::from_secs(2);
        cache.revalidate(addr, now, hold);
        assert!(matches!(cache.get("k", now), Cached::Stale(_)));
        // Asked again while the server is held: the same answer lasts as long as the hold.
        land(now);
        assert!(matches!(cache.get("k", now), Cached::Fresh(_)));
        assert!(matches!(cache.get("k", hold), Cached::Stale(_)));
        // After the hold, answers last their TTL again.
        land(hold);
        assert!(matches!(
            cache.get("k", hold + Duration::from_secs(60)),
            Cached::Fresh(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn negative_answers_are_not_served_stale_and_lru_evicts() {
        let cache = Cache::new(2, Duration::from_secs(10));
        let now = Instant::now();
        for key in ["a", "b", "c"] {
            let flight = cache.flight(key);
            flight.set(Ok(route())).unwrap();
            cache.land(key, &flight, Duration::from_secs(5), now);
        }
        assert!(matches!(cache.get("a", now), Cached::Miss));
        assert!(matches!(cache.get("c", now), Cached::Fresh(_)));
        assert!(matches!(
            cache.get("c", now + Duration::from_secs(6)),
            Cached::Miss
        ));
        assert!(cache.purge("b"));
        assert!(!cache.purge("b"));
    }

    #[tokio::test]
    async fn one_flight_per_key_and_failures_are_not_cached() {
        let cache = Cache::new(10, Duration::ZERO);
        let first = cache.flight("k");
        let second = cache.flight("k");
        assert!(Arc::ptr_eq(&first, &second));
        first.set(Err("down".into())).unwrap();
        cache.land("k", &first, Duration::from_secs(5), Instant::now());
        cache.land("k", &second, Duration::from_secs(5), Instant::now());
        assert!(matches!(cache.get("k", Instant::now()), Cached::Miss));
        assert!(!Arc::ptr_eq(&cache.flight("k"), &first));
    }
}
