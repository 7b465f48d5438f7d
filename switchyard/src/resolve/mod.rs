//! Resolvers: routing decided at run time. A pool with `resolver` has no servers of its
//! own; each connection's routing key (from what the client sent) is looked up in a map
//! file, a webhook or a Redis server a fleet shares, and the answer gives the servers.
//! Answers are cached (`cache`), checked by the SSRF guard after DNS resolution and
//! pinned (`guard`, `answer`). Protocols never ask a resolver directly: they ask their
//! pool (`upstream::Pool::resolve`), which turns an answer into a pool of its own.

pub mod answer;
mod cache;
pub mod guard;
mod map;
mod redis;
mod webhook;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub use answer::{Answer, AnswerText, PinnedServer};
pub use cache::Cached;
pub use guard::Guard;

use crate::config::{ResolverConfig, ResolverKind};

/// What a source says about a key, before the answer is pinned.
#[derive(Debug)]
pub enum Fetched {
    /// An answer to pin.
    Answer(AnswerText),
    /// The key has no route.
    NoRoute,
    /// The source refuses the key.
    Refused,
}

/// What a lookup decided, as cached.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Go to these servers.
    Route(Arc<Answer>),
    /// No route for the key (a 404, a missing Redis key or map entry).
    NoRoute,
    /// Refused: by the source (403), or by the SSRF guard (the rule is named).
    Refused(String),
}

/// Why a connection gets no servers from its resolver.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    /// The protocol gave no key (e.g. no `Host`), or `key_pattern` did not match.
    #[error("no routing key")]
    NoKey,
    /// The resolver has no route for the key.
    #[error("no route for `{0}`")]
    NoRoute(String),
    /// The key is refused (by the source, or an answer the SSRF guard refused).
    #[error("`{key}` refused: {reason}")]
    Refused {
        /// The key.
        key: String,
        /// Why, naming the guard's rule when it was the guard.
        reason: String,
    },
    /// The source failed and nothing cached could stand in.
    #[error("resolver unavailable: {0}")]
    Unavailable(String),
}

/// Who is asking, for the webhook's body and the logs.
#[derive(Debug, Clone, Copy)]
pub struct LookupContext<'a> {
    /// The protocol of the listener (`http`, `postgres`...).
    pub protocol: &'a str,
    /// The listener's name.
    pub listener: &'a str,
    /// The client's address.
    pub client: Option<SocketAddr>,
}

/// Where answers come from.
#[derive(Debug)]
enum Source {
    Map(map::MapSource),
    Http(crate::http_link::HttpLink),
    Redis(Arc<redis::RedisSource>),
}

/// Counters of a resolver, read by the metrics exporter.
#[derive(Debug, Default)]
pub struct ResolverStats {
    /// Lookups made at the source.
    pub lookups: AtomicU64,
    /// Connections answered from the cache while fresh.
    pub hits: AtomicU64,
    /// Connections that had to wait for a lookup.
    pub misses: AtomicU64,
    /// Stale answers served because the source failed.
    pub stale: AtomicU64,
    /// Lookups that failed (source down, malformed answer, DNS).
    pub errors: AtomicU64,
    /// Answers the SSRF guard refused.
    pub guarded: AtomicU64,
    /// How long lookups at the source took (cache misses), from 0.1 ms.
    pub latency: crate::observe::DurationHistogram<100>,
}

/// One `[[resolver]]`: its source, cache, guard and counters.
#[derive(Debug)]
pub struct Resolver {
    /// Its name.
    pub name: String,
    /// The config it was built from (a reload keeps the resolver when this is unchanged).
    pub config: ResolverConfig,
    /// Counters.
    pub stats: ResolverStats,
    source: Source,
    cache: Arc<cache::Cache>,
    guard: Guard,
    stop: CancellationToken,
    started: std::sync::Once,
}

impl Resolver {
    /// Builds a resolver from its (validated) config; background work (Redis purges, map
    /// file changes) starts with [`Self::start`].
    pub fn new(config: &ResolverConfig) -> Result<Self, String> {
        let source = match config.kind {
            ResolverKind::Map => Source::Map(map::MapSource::open(
                config
                    .file
                    .as_deref()
                    .ok_or("a map resolver needs `file`")?,
            )?),
            ResolverKind::Http => Source::Http(crate::http_link::HttpLink::new(
                config
                    .url
                    .as_deref()
                    .ok_or("an http resolver needs `url`")?,
                &config.headers,
                config.ca.as_deref(),
                config.timeout,
            )?),
            ResolverKind::Redis => Source::Redis(Arc::new(redis::RedisSource::new(
                config
                    .address
                    .as_deref()
                    .ok_or("a redis resolver needs `address`")?,
                config.password.as_deref(),
                &config.prefix,
                config.timeout,
            )?)),
        };
        let allow = config
            .allow_private
            .iter()
            .map(|cidr| cidr.parse().map_err(|_| format!("`{cidr}` is not a CIDR")))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            name: config.name.clone(),
            config: config.clone(),
            stats: ResolverStats::default(),
            source,
            cache: Arc::new(cache::Cache::new(
                config.cache.max_entries,
                config.cache.stale_if_error,
            )),
            guard: Guard::new(allow),
            stop: CancellationToken::new(),
            started: std::sync::Once::new(),
        })
    }

    /// Starts the background work: listening for purges (Redis), watching the file (map).
    /// Must run inside a tokio runtime; it ends with [`Self::stop`]. Only the first call
    /// starts anything, so the runtime calls it for every resolver in service.
    pub fn start(self: &Arc<Self>) {
        self.started.call_once(|| self.spawn_background());
    }

    fn spawn_background(self: &Arc<Self>) {
        match &self.source {
            Source::Redis(redis) => {
                redis.spawn_purge_listener(self.cache.clone(), self.name.clone(), self.stop.clone())
            }
            Source::Map(_) => {
                let resolver = Arc::downgrade(self);
                let stop = self.stop.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        let Some(resolver) = resolver.upgrade() else {
                            return;
                        };
                        if let Source::Map(map) = &resolver.source
                            && map.changed()
                        {
                            resolver.reload();
                        }
                    }
                });
            }
            Source::Http(_) => {}
        }
    }

    /// Stops the background work (a reload replaced or removed this resolver).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Rereads what can be reread (a map's file), dropping the cache it fed.
    pub fn reload(&self) {
        if let Source::Map(map) = &self.source {
            match map.reload() {
                Ok(()) => {
                    self.cache.clear();
                    tracing::info!(resolver = %self.name, "map reloaded");
                }
                Err(error) => {
                    tracing::warn!(resolver = %self.name, %error, "map not reloaded; keeping the answers in memory");
                }
            }
        }
    }

    /// The answer for `key`: from the cache while fresh, else from the source (one lookup
    /// per key at a time), else a stale answer within `stale_if_error`.
    pub async fn resolve(
        &self,
        key: &str,
        context: &LookupContext<'_>,
    ) -> Result<Arc<Answer>, ResolveError> {
        let stale = match self.cache.get(key, Instant::now()) {
            Cached::Fresh(outcome) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return self.decide(key, outcome);
            }
            Cached::Stale(outcome) => Some(outcome),
            Cached::Miss => None,
        };
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let flight = self.cache.flight(key);
        let result = flight
            .get_or_init(|| self.lookup(key, context))
            .await
            .clone();
        let ttl = match &result {
            Ok(Outcome::Route(answer)) => answer.ttl.unwrap_or(self.config.cache.ttl),
            _ => self.config.cache.negative_ttl,
        };
        self.cache.land(key, &flight, ttl, Instant::now());
        match (result, stale) {
            (Ok(outcome), _) => self.decide(key, outcome),
            (Err(_), Some(stale)) => {
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                self.decide(key, stale)
            }
            (Err(error), None) => Err(ResolveError::Unavailable(error)),
        }
    }

    fn decide(&self, key: &str, outcome: Outcome) -> Result<Arc<Answer>, ResolveError> {
        match outcome {
            Outcome::Route(answer) => Ok(answer),
            Outcome::NoRoute => Err(ResolveError::NoRoute(key.to_string())),
            Outcome::Refused(reason) => Err(ResolveError::Refused {
                key: key.to_string(),
                reason,
            }),
        }
    }

    /// One lookup at the source, its answer pinned; an `Err` is a failure of the source
    /// (stale answers may stand in), not a "no".
    async fn lookup(&self, key: &str, context: &LookupContext<'_>) -> Result<Outcome, String> {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let fetched = match &self.source {
            Source::Map(map) => Ok(map.fetch(key)),
            Source::Http(link) => webhook::fetch(link, key, context).await,
            Source::Redis(redis) => redis.fetch(key).await,
        };
        let outcome = match fetched {
            Ok(Fetched::Answer(text)) => {
                match answer::pin(text, &self.guard, self.config.timeout).await {
                    Ok(answer) => Ok(Outcome::Route(Arc::new(answer))),
                    Err(answer::AnswerError::Guarded { address, rule }) => {
                        self.stats.guarded.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(resolver = %self.name, %key, %address, %rule, "answer refused by the SSRF guard");
                        Ok(Outcome::Refused(format!("{address} is {rule}")))
                    }
                    Err(error) => Err(error.to_string()),
                }
            }
            Ok(Fetched::NoRoute) => Ok(Outcome::NoRoute),
            Ok(Fetched::Refused) => Ok(Outcome::Refused("refused by the resolver".into())),
            Err(error) => Err(error),
        };
        self.stats.latency.observe(started.elapsed());
        if let Err(error) = &outcome {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(resolver = %self.name, %key, %error, "lookup failed");
        }
        outcome
    }

    /// What the cache holds for `key` (for `ctl resolve`), without asking the source.
    pub fn cached(&self, key: &str) -> Cached {
        self.cache.get(key, Instant::now())
    }

    /// Drops `key` here and, with Redis, on every instance of the fleet.
    pub async fn purge(&self, key: &str) -> Result<bool, String> {
        let here = self.cache.purge(key);
        if let Source::Redis(redis) = &self.source {
            redis.publish_purge(key).await?;
        }
        Ok(here)
    }

    /// Makes answers naming `addr` stale: the server refused a connection, so the next
    /// connection asks the source again; while it is held down (for `hold`), an answer
    /// still naming it is asked about again when the hold ends.
    pub fn revalidate(&self, addr: SocketAddr, hold: Duration) {
        let now = Instant::now();
        self.cache.revalidate(addr, now, now + hold);
    }

    /// Keys in the cache.
    pub fn cached_keys(&self) -> usize {
        self.cache.len()
    }
}

/// The resolvers in service, by name.
pub type Resolvers = HashMap<String, Arc<Resolver>>;

/// Builds the resolvers of a config, keeping those of `previous` whose config did not
/// change (their caches and connections carry over; a map rereads its file). Replaced
/// ones are returned to be stopped.
pub fn build(
    configs: &[ResolverConfig],
    previous: Option<&Resolvers>,
) -> Result<(Resolvers, Vec<Arc<Resolver>>), String> {
    let mut resolvers = HashMap::new();
    for config in configs {
        let kept = previous
            .and_then(|p| p.get(&config.name))
            .filter(|r| r.config == *config);
        let resolver = match kept {
            Some(resolver) => {
                resolver.reload();
                resolver.clone()
            }
            None => Arc::new(
                Resolver::new(config).map_err(|e| format!("resolver `{}`: {e}", config.name))?,
            ),
        };
        resolvers.insert(config.name.clone(), resolver);
    }
    let replaced = previous
        .map(|p| {
            p.values()
                .filter(|old| !resolvers.values().any(|new| Arc::ptr_eq(new, old)))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Ok((resolvers, replaced))
}
