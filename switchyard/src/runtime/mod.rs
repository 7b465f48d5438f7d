//! Building a running proxy from a config, and shutting it down gracefully.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Protocol};
use crate::listener::Listener;
use crate::observe::AccessLog;
use crate::upstream::Pool;

/// State shared by listeners, connection handlers and the admin API.
#[derive(Debug)]
pub struct Shared {
    /// The config file in use (for reload).
    pub config_path: PathBuf,
    /// Pools by config order.
    pub pools: Vec<Arc<Pool>>,
    /// Bound listeners by config order.
    pub listeners: Vec<Arc<Listener>>,
    /// Connection log.
    pub access_log: AccessLog,
    /// Fired when the shutdown timeout runs out: cuts every remaining session.
    pub hard_stop: CancellationToken,
    /// Fired to begin a graceful shutdown.
    pub shutdown: CancellationToken,
    /// Bearer token for mutating admin calls, resolved from the config.
    pub admin_token: Option<String>,
    /// When the process started.
    pub started: Instant,
}

impl Shared {
    /// Finds a pool by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound.
    #[error("{0}")]
    Bind(io::Error),
    /// Something in the config could not be built.
    #[error("{0}")]
    Build(String),
}

/// Binds everything the config names and builds the shared state.
pub fn build(config: &Config, config_path: PathBuf) -> Result<Arc<Shared>, StartError> {
    let mut pools = HashMap::new();
    let mut pool_list = Vec::new();
    for pool_config in &config.pools {
        let pool = Arc::new(Pool::new(pool_config).map_err(StartError::Build)?);
        pools.insert(pool.name.clone(), pool.clone());
        pool_list.push(pool);
    }
    let mut listeners = Vec::new();
    for listener_config in &config.listeners {
        let pool_name = listener_config.pool.as_deref().unwrap_or_default();
        let pool = pools
            .get(pool_name)
            .cloned()
            .ok_or_else(|| StartError::Build(format!("pool `{pool_name}` is not defined")))?;
        listeners.push(Arc::new(
            Listener::bind(listener_config, pool).map_err(StartError::Bind)?,
        ));
    }
    let config_dir = config_path.parent().map(PathBuf::from).unwrap_or_default();
    let access_log = AccessLog::open(&config.log, &config_dir).map_err(|e| {
        StartError::Build(format!("cannot open access log {}: {e}", config.log.access))
    })?;
    let admin_token = match config.admin.as_ref().and_then(|a| a.token.as_deref()) {
        Some(token) => Some(crate::admin::resolve_secret(token).map_err(StartError::Build)?),
        None => None,
    };
    Ok(Arc::new(Shared {
        config_path,
        pools: pool_list,
        listeners,
        access_log,
        hard_stop: CancellationToken::new(),
        shutdown: CancellationToken::new(),
        admin_token,
        started: Instant::now(),
    }))
}

/// Runs the proxy until SIGTERM/SIGINT (or `shared.shutdown`), then shuts down gracefully:
/// stop accepting, let connections finish for up to `shutdown_timeout`, cut the rest.
pub async fn run(config: Config, shared: Arc<Shared>) -> io::Result<()> {
    let stop_accepting = CancellationToken::new();
    let checks_stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    if let Some(admin) = &config.admin {
        let listen: std::net::SocketAddr = admin.listen.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad admin address {}", admin.listen),
            )
        })?;
        let admin_listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            io::Error::new(e.kind(), format!("admin API cannot bind {listen}: {e}"))
        })?;
        tracing::info!(address = %admin_listener.local_addr()?, "admin API listening");
        tokio::spawn(crate::admin::serve(
            admin_listener,
            shared.clone(),
            checks_stop.clone(),
        ));
    }
    for pool in &shared.pools {
        crate::health::spawn_checks(pool, &checks_stop);
    }
    for listener in &shared.listeners {
        tracing::info!(listener = %listener.name, address = %listener.address, protocol = listener.protocol.as_str(), "listening");
        let shared_for_handler = shared.clone();
        let handler = move |listener: Arc<Listener>, stream, peer| {
            let shared = shared_for_handler.clone();
            async move {
                match listener.protocol {
                    Protocol::Tcp => {
                        crate::protocol::tcp::serve(shared, listener, stream, peer).await
                    }
                    // Validation refuses other protocols until they are built.
                    _ => drop(stream),
                }
            }
        };
        tokio::spawn(
            listener
                .clone()
                .accept_loop(stop_accepting.clone(), tasks.clone(), handler),
        );
    }

    wait_for_shutdown(&shared).await?;
    tracing::info!(timeout = ?config.shutdown_timeout, "shutting down: no longer accepting");
    stop_accepting.cancel();
    tasks.close();
    if tokio::time::timeout(config.shutdown_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tasks.len(),
            "shutdown timeout: closing remaining connections"
        );
        shared.hard_stop.cancel();
        tasks.wait().await;
    }
    checks_stop.cancel();
    // Write out the connection log lines of the last sessions before the process exits.
    let log_owner = shared.clone();
    let flush = move || {
        log_owner
            .access_log
            .flush(std::time::Duration::from_secs(5))
    };
    let _ = tokio::task::spawn_blocking(flush).await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_shutdown(shared: &Shared) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            () = shared.shutdown.cancelled() => return Ok(()),
            _ = hangup.recv() => {
                tracing::warn!("SIGHUP: live reload is not available in this build yet; configuration unchanged");
            }
        }
    }
}
