//! Pools with `resolver`: the servers of a connection come from the answer for its
//! routing key. Each distinct answer (its pinned servers) becomes a pool of its own,
//! derived from the configured one and kept while answers name it, so that everything a
//! pool does (balance, `max_connections`, queue, upstream TLS, HTTP keep-alive, passive
//! health) works for resolved servers as for configured ones, and connections to the same
//! resolved server are shared across keys.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use super::{Pool, Server};
use crate::config::{BalanceAlgorithm, KeyFact, KeyTemplate, PoolConfig};
use crate::resolve::{
    Answer, Cached, LookupContext, Outcome, PinnedServer, ResolveError, Resolver, Resolvers,
};

/// Derived pools kept before the ones no connection uses are dropped.
const DERIVED_SOFT_LIMIT: usize = 1024;

/// Keys remembered per derived pool, for operators to see who uses it.
const KEYS_SHOWN: NonZeroUsize = NonZeroUsize::MIN.saturating_add(15);

/// A pool's resolver, routing key and the pools derived from answers.
#[derive(Debug)]
pub struct PoolResolver {
    /// The resolver asked.
    pub resolver: Arc<Resolver>,
    /// How the routing key is made from what the client sent.
    pub key: KeyTemplate,
    balance: BalanceAlgorithm,
    derived: Mutex<HashMap<Vec<PinnedServer>, Derived>>,
}

/// The pool derived for one set of servers, and the keys routed to it lately (with their
/// tenants), least recently routed out first.
#[derive(Debug)]
struct Derived {
    pool: Arc<Pool>,
    keys: lru::LruCache<String, Option<String>>,
}

impl Derived {
    /// Notes `key` (of `tenant`) as routed here now.
    fn remember(&mut self, key: &str, tenant: Option<&str>) {
        if self
            .keys
            .get(key)
            .is_none_or(|known| known.as_deref() != tenant)
        {
            self.keys.put(key.to_string(), tenant.map(str::to_string));
        }
    }
}

/// A server set answers route to, as operators see it.
#[derive(Debug)]
pub struct InUse {
    /// The pool derived for the set (its servers, their state and counters).
    pub pool: Arc<Pool>,
    /// Keys routed to it lately whose cached answer still names it, with their tenants
    /// (at most 16).
    pub keys: Vec<(String, Option<String>)>,
}

/// Where a connection of a pool goes: the pool itself, or the pool of its answer.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The pool to lease from.
    pub pool: Arc<Pool>,
    /// The answer, for a pool with `resolver` (rewrites, tenant).
    pub answer: Option<Arc<Answer>>,
    /// The routing key looked up.
    pub key: Option<String>,
}

impl Resolved {
    /// The tenant usage is accounted to: the answer's, else the key.
    pub fn tenant(&self) -> Option<&str> {
        self.answer
            .as_ref()
            .and_then(|a| a.tenant.as_deref())
            .or(self.key.as_deref())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// Attaches the pool's `resolver` (if it names one) from `resolvers`.
    pub fn with_resolver(
        mut self,
        config: &PoolConfig,
        resolvers: &Resolvers,
    ) -> Result<Self, String> {
        let Some(name) = &config.resolver else {
            return Ok(self);
        };
        let resolver = resolvers
            .get(name)
            .ok_or_else(|| format!("resolver `{name}` is not defined"))?
            .clone();
        let key = KeyTemplate::parse(
            config
                .key
                .as_deref()
                .ok_or("a pool with `resolver` needs `key`")?,
            config.key_pattern.as_deref(),
        )?;
        self.resolver = Some(Arc::new(PoolResolver {
            resolver,
            key,
            balance: config.balance,
            derived: Mutex::new(HashMap::new()),
        }));
        Ok(self)
    }

    /// The pool a connection goes to. A pool without `resolver` is itself; a pool with one
    /// looks up the key made from `fact` (what the protocol knows of the connection) and
    /// gives the pool of the answer.
    pub async fn resolve<'a>(
        self: &Arc<Self>,
        fact: impl Fn(KeyFact) -> Option<&'a str>,
        context: &LookupContext<'_>,
    ) -> Result<Resolved, ResolveError> {
        let Some(resolving) = &self.resolver else {
            return Ok(Resolved {
                pool: self.clone(),
                answer: None,
                key: None,
            });
        };
        let key = resolving.key.render(fact).ok_or(ResolveError::NoKey)?;
        let answer = resolving.resolver.resolve(&key, context).await?;
        Ok(Resolved {
            pool: resolving.pool_for(self, &key, &answer),
            answer: Some(answer),
            key: Some(key),
        })
    }
}

impl PoolResolver {
    /// The pool derived from `parent` for `answer`'s servers, built on first use; `key` is
    /// remembered as routed there.
    fn pool_for(&self, parent: &Pool, key: &str, answer: &Answer) -> Arc<Pool> {
        let tenant = answer.tenant.as_deref();
        let mut derived = lock(&self.derived);
        if let Some(entry) = derived.get_mut(&answer.servers) {
            entry.remember(key, tenant);
            return entry.pool.clone();
        }
        if derived.len() >= DERIVED_SOFT_LIMIT {
            derived.retain(|_, d| Arc::strong_count(&d.pool) > 1);
        }
        let servers = answer
            .servers
            .iter()
            .map(|s| Arc::new(Server::resolved(&s.name, s.address.clone(), s.weight)))
            .collect();
        let mut entry = Derived {
            pool: Arc::new(parent.derive(self.balance, servers, self.resolver.clone())),
            keys: lru::LruCache::new(KEYS_SHOWN),
        };
        entry.remember(key, tenant);
        let pool = entry.pool.clone();
        derived.insert(answer.servers.clone(), entry);
        pool
    }

    /// The server sets in use: those a cached answer routes to, or whose servers have
    /// sessions; most recently routed keys first.
    pub fn in_use(&self) -> Vec<InUse> {
        let sets: Vec<(Vec<PinnedServer>, InUse)> = lock(&self.derived)
            .iter()
            .map(|(servers, d)| {
                let keys = d.keys.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
                let pool = d.pool.clone();
                (servers.clone(), InUse { pool, keys })
            })
            .collect();
        // The cache is asked without the derived pools' lock held.
        sets.into_iter()
            .filter_map(|(servers, mut set)| {
                set.keys.retain(|(key, _)| {
                    matches!(
                        self.resolver.cached(key),
                        Cached::Fresh(Outcome::Route(a)) | Cached::Stale(Outcome::Route(a))
                            if a.servers == servers
                    )
                });
                let busy = set.pool.servers.iter().any(|s| s.active() > 0);
                (busy || !set.keys.is_empty()).then_some(set)
            })
            .collect()
    }
}
