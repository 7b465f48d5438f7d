//! A Redis (or Valkey) server the proxy talks to (resolvers, the usage sink): the address
//! and AUTH checked once, one shared connection made on first use that reconnects by
//! itself (`ConnectionManager`), TLS with `rediss://` (rustls).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A Redis server and the shared connection to it.
pub struct RedisLink {
    client: redis::Client,
    connection: tokio::sync::OnceCell<ConnectionManager>,
    /// Time allowed to connect and for each command.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// Checks the address and password (`env:`/`file:` allowed); connects on first use.
    pub fn new(address: &str, password: Option<&str>, timeout: Duration) -> Result<Self, String> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(address)
            .map_err(|e| format!("redis address `{address}`: {e}"))?;
        if let Some(password) = password {
            info.redis.password = Some(crate::secret::resolve(password)?);
        }
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            connection: tokio::sync::OnceCell::new(),
            timeout,
        })
    }

    /// The client, for connections of their own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The shared connection, made on first use (and again after a failed first try);
    /// once made it reconnects by itself.
    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        self.connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
            .map_err(|e| format!("redis: {e}"))
    }
}
