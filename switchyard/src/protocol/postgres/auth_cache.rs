//! The cache of `auth_query` answers: which users exist and what their secrets are.
//!
//! Every unknown user name would otherwise cost a server login and a query, so answers are
//! kept: found users for a while, "no such user" briefly (a user created on the server is
//! seen soon; a client trying names does not reach the server for each try). The cache is a
//! least-recently-used map with a bound, so a client trying endless names evicts the
//! coldest entries, not every entry. Lookups of one user run one query however many
//! clients log in at once: the first runs it, the others wait for its answer (if the first
//! gives up, say its client left, the next waiting one runs it). An answer that could not
//! be had (no server, a timeout) is shared with those waiting but not kept.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

/// A lookup's outcome: the value, `None` for "no such key", `Err` when it could not be had.
pub type Answer<V> = Result<Option<Arc<V>>, String>;

/// Answers by key, with a bound, an expiry, and one lookup at a time per key.
#[derive(Debug)]
pub struct AnswerCache<V> {
    state: Mutex<State<V>>,
    capacity: usize,
    ttl: Duration,
    negative_ttl: Duration,
}

/// The entries, their use order, and the lookups under way.
#[derive(Debug)]
struct State<V> {
    entries: HashMap<String, Entry<V>>,
    /// Keys by last use (a counter), least recent first.
    order: BTreeMap<u64, String>,
    clock: u64,
    pending: HashMap<String, Arc<OnceCell<Answer<V>>>>,
}

/// One kept answer.
#[derive(Debug)]
struct Entry<V> {
    value: Option<Arc<V>>,
    expires: Instant,
    used: u64,
}

impl<V> AnswerCache<V> {
    /// A cache of at most `capacity` answers (at least one), keeping found values for `ttl`
    /// and "no such key" for `negative_ttl`.
    pub fn new(capacity: usize, ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                clock: 0,
                pending: HashMap::new(),
            }),
            capacity: capacity.max(1),
            ttl,
            negative_ttl,
        }
    }

    /// The answer for `key`: kept, or being looked up by another caller (then its answer),
    /// or from `fetch`, run here.
    pub async fn get_or_fetch<F, Fut>(&self, key: &str, fetch: F) -> Answer<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, String>>,
    {
        let cell = {
            let mut state = self.lock();
            if let Some(value) = state.get(key, Instant::now()) {
                return Ok(value);
            }
            state.pending.entry(key.to_string()).or_default().clone()
        };
        let answer = cell
            .get_or_init(|| async { fetch().await.map(|value| value.map(Arc::new)) })
            .await
            .clone();
        let mut state = self.lock();
        // The first caller back moves the answer from the lookup to the entries.
        if state
            .pending
            .get(key)
            .is_some_and(|pending| Arc::ptr_eq(pending, &cell))
        {
            state.pending.remove(key);
            if let Ok(value) = &answer {
                let ttl = if value.is_some() {
                    self.ttl
                } else {
                    self.negative_ttl
                };
                state.insert(key, value.clone(), Instant::now() + ttl, self.capacity);
            }
        }
        answer
    }

    /// The state; a poisoned lock (a panic elsewhere while holding it) still holds a
    /// consistent map, so it is used as is.
    fn lock(&self) -> MutexGuard<'_, State<V>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<V> State<V> {
    /// The kept answer for `key` if it has not expired (then marked used); an expired one
    /// is dropped.
    fn get(&mut self, key: &str, now: Instant) -> Option<Option<Arc<V>>> {
        let entry = self.entries.get(key)?;
        if entry.expires <= now {
            let used = entry.used;
            self.entries.remove(key);
            self.order.remove(&used);
            return None;
        }
        let value = entry.value.clone();
        self.touch(key);
        Some(value)
    }

    /// Marks `key` (kept) as just used.
    fn touch(&mut self, key: &str) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(entry) = self.entries.get_mut(key) {
            let key = self
                .order
                .remove(&entry.used)
                .unwrap_or_else(|| key.to_string());
            entry.used = clock;
            self.order.insert(clock, key);
        }
    }

    /// Keeps `value` for `key` until `expires`, dropping the least recently used entries
    /// beyond `capacity`.
    fn insert(&mut self, key: &str, value: Option<Arc<V>>, expires: Instant, capacity: usize) {
        self.clock += 1;
        let used = self.clock;
        let entry = Entry {
            value,
            expires,
            used,
        };
        if let Some(old) = self.entries.insert(key.to_string(), entry) {
            self.order.remove(&old.used);
        }
        self.order.insert(used, key.to_string());
        while self.entries.len() > capacity {
            let Some((_, coldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&coldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const TTL: Duration = Duration::from_secs(30);
    const NEGATIVE_TTL: Duration = Duration::from_secs(5);

    /// A fetch that counts its calls and answers `answer` for every key.
    fn counted(
        calls: &AtomicUsize,
        answer: Result<Option<u32>, &'static str>,
    ) -> impl Future<Output = Result<Option<u32>, String>> {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { answer.map_err(str::to_string) }
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_key_make_one_fetch() {
        let cache = Arc::new(AnswerCache::<u32>::new(100, TTL, NEGATIVE_TTL));
        let calls = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let lookups = 50;
        let mut tasks = Vec::new();
        for _ in 0..lookups {
            let (cache, calls, started, gate) =
                (cache.clone(), calls.clone(), started.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                started.fetch_add(1, Ordering::SeqCst);
                cache
                    .get_or_fetch("alice", || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok(Some(7))
                    })
                    .await
            }));
        }
        // On this single-threaded runtime each task runs to its first wait when polled:
        // once all have started, all are waiting on the one fetch.
        while started.load(Ordering::SeqCst) < lookups {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        gate.notify_one();
        for task in tasks {
            let answer = task.await.expect("lookup task");
            assert_eq!(answer.ok().flatten().as_deref(), Some(&7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Kept: the next lookup makes no fetch.
        let again = cache
            .get_or_fetch("alice", || counted(&calls, Ok(Some(8))))
            .await;
        assert_eq!(again.ok().flatten().as_deref(), Some(&7));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn found_and_missing_answers_expire_after_their_own_time() {
        let cache = AnswerCache::<u32>::new(100, TTL, NEGATIVE_TTL);
        let calls = AtomicUsize::new(0);
        let found = || cache.get_or_fetch("alice", || counted(&calls, Ok(Some(1))));
        let missing = || cache.get_or_fetch("nobody", || counted(&calls, Ok(None)));
        assert_eq!(found().await, Ok(Some(Arc::new(1))));
        assert_eq!(missing().await, Ok(None));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(NEGATIVE_TTL - Duration::from_millis(1)).await;
        assert_eq!(missing().await, Ok(None));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "no such user, still kept");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(missing().await, Ok(None));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "asked again after the negative ttl"
        );
        assert_eq!(found().await, Ok(Some(Arc::new(1))));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "a found user is kept longer"
        );
        tokio::time::advance(TTL).await;
        assert_eq!(found().await, Ok(Some(Arc::new(1))));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn failures_are_not_kept() {
        let cache = AnswerCache::<u32>::new(100, TTL, NEGATIVE_TTL);
        let calls = AtomicUsize::new(0);
        let failed = cache
            .get_or_fetch("alice", || counted(&calls, Err("no server")))
            .await;
        assert_eq!(failed, Err("no server".to_string()));
        let found = cache
            .get_or_fetch("alice", || counted(&calls, Ok(Some(2))))
            .await;
        assert_eq!(found, Ok(Some(Arc::new(2))));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_least_recently_used_answer_goes_first() {
        let cache = AnswerCache::<u32>::new(2, TTL, NEGATIVE_TTL);
        let calls = AtomicUsize::new(0);
        for key in ["a", "b", "a", "c", "a", "b"] {
            cache
                .get_or_fetch(key, || counted(&calls, Ok(Some(0))))
                .await
                .expect("answer");
        }
        // a, b fetched; a kept; c evicts b (a was used since); a kept; b fetched again.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let state = cache.lock();
        assert_eq!(state.entries.len(), 2);
        assert_eq!(state.order.len(), 2);
        assert!(state.entries.contains_key("a") && state.entries.contains_key("b"));
        assert!(state.pending.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_lookup_takes_over_when_the_first_gives_up() {
        let cache = Arc::new(AnswerCache::<u32>::new(100, TTL, NEGATIVE_TTL));
        let calls = Arc::new(AtomicUsize::new(0));
        let first = {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_fetch("alice", || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<Result<Option<u32>, String>>().await
                    })
                    .await
            })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let second = {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_fetch("alice", || counted(&calls, Ok(Some(3))))
                    .await
            })
        };
        tokio::task::yield_now().await;
        first.abort();
        let answer = second.await.expect("second lookup");
        assert_eq!(answer, Ok(Some(Arc::new(3))));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(cache.lock().pending.is_empty());
    }
}
