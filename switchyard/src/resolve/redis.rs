//! The `redis` resolver: answers are JSON values at `prefix + key` in a Redis (or Valkey)
//! server a fleet shares; a key published on `prefix + "purge"` is dropped by every
//! instance. The connection reconnects by itself (`ConnectionManager`); TLS with
//! `rediss://`, AUTH from the URL or `password`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::cache::Cache;
use super::{Fetched, answer};
use crate::redis_link::RedisLink;

/// A Redis server holding answers.
#[derive(Debug)]
pub struct RedisSource {
    link: RedisLink,
    prefix: String,
}

impl RedisSource {
    /// Checks the address and password; connects on first use.
    pub fn new(
        address: &str,
        password: Option<&str>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        Ok(Self {
            link: RedisLink::new(address, password, timeout)?,
            prefix: prefix.to_string(),
        })
    }

    /// The answer stored for `key`.
    pub async fn fetch(&self, key: &str) -> Result<Fetched, String> {
        let work = async {
            let mut connection = self.link.connection().await?;
            let value: Option<Vec<u8>> = connection
                .get(format!("{}{key}", self.prefix))
                .await
                .map_err(|e| format!("redis: {e}"))?;
            match value {
                None => Ok(Fetched::NoRoute),
                Some(bytes) => answer::parse(&bytes)
                    .map(Fetched::Answer)
                    .map_err(|e| format!("redis {}{key}: {e}", self.prefix)),
            }
        };
        tokio::time::timeout(self.link.timeout, work)
            .await
            .map_err(|_| "redis: timed out".to_string())?
    }

    /// Tells every instance to drop `key`.
    pub async fn publish_purge(&self, key: &str) -> Result<(), String> {
        let work = async {
            let mut connection = self.link.connection().await?;
            let _: i64 = connection
                .publish(self.purge_channel(), key)
                .await
                .map_err(|e| format!("redis: {e}"))?;
            Ok(())
        };
        tokio::time::timeout(self.link.timeout, work)
            .await
            .map_err(|_| "redis: timed out".to_string())?
    }

    fn purge_channel(&self) -> String {
        format!("{}purge", self.prefix)
    }

    /// Listens on the purge channel until `stop`, dropping each key published from
    /// `cache`; reconnects within a second after losing Redis, and then drops every key
    /// (purges sent meanwhile were missed).
    pub fn spawn_purge_listener(
        self: &Arc<Self>,
        cache: Arc<Cache>,
        name: String,
        stop: CancellationToken,
    ) {
        let source = self.clone();
        tokio::spawn(async move {
            let mut lost = false;
            loop {
                let subscribed = std::sync::atomic::AtomicBool::new(false);
                let listen = async {
                    let mut pubsub = source.link.client().get_async_pubsub().await?;
                    pubsub.subscribe(source.purge_channel()).await?;
                    subscribed.store(true, std::sync::atomic::Ordering::Relaxed);
                    if lost {
                        cache.clear();
                        tracing::info!(resolver = %name, "purge channel back; cache cleared");
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let key = String::from_utf8_lossy(message.get_payload_bytes());
                        cache.purge(&key);
                        tracing::debug!(resolver = %name, %key, "purged");
                    }
                    Ok::<(), redis::RedisError>(())
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    result = listen => {
                        // Warn when a working subscription ends, or the first one fails;
                        // not at every failed retry while Redis stays down.
                        if subscribed.load(std::sync::atomic::Ordering::Relaxed) || !lost {
                            let error = result.err().map_or("closed".to_string(), |e| e.to_string());
                            tracing::warn!(resolver = %name, %error, "purge channel lost; retrying");
                        }
                        lost = true;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
    }
}
