//! Building a running proxy from a config, reloading it, and shutting it down gracefully.

mod reload;
pub mod upgrade;

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::listener::Listener;
use crate::observe::AccessLog;
use crate::protocol::{Context, Registry};
use crate::upstream::Pool;

use crate::workers::Workers;
pub use reload::{Changes, ReloadError, ReloadSummary, reload};
pub use upgrade::Inherited;

/// What a config must pass besides its own rules before the proxy runs it: certificate
/// and key files that load.
pub const RESOURCE_CHECKS: [crate::config::ResourceCheck; 1] = [crate::tls::validate];

/// Reads, parses and validates a config file, its resources too.
pub fn load_file(path: &std::path::Path) -> Result<Config, crate::config::ConfigErrors> {
    crate::config::load_file_with(path, &RESOURCE_CHECKS)
}

/// Serves the admin API on the socket bound for it until the token fires: handed to
/// [`run`] by its caller, so that the runtime does not depend on the API that reads it.
pub type AdminService = fn(
    tokio::net::TcpListener,
    Arc<Shared>,
    &crate::config::AdminConfig,
    CancellationToken,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// State shared by listeners, connection handlers and the admin API.
#[derive(Debug)]
pub struct Shared {
    /// The config file in use (for reload).
    pub config_path: PathBuf,
    // Pools and listeners in config order; a reload swaps in new lists while readers keep
    // the snapshot they loaded.
    pools: ArcSwap<Vec<Arc<Pool>>>,
    listeners: ArcSwap<Vec<Arc<Listener>>>,
    // The resolvers pools with `resolver` ask; a reload swaps in a new set.
    resolvers: ArcSwap<crate::resolve::Resolvers>,
    // The config in effect; held for the whole of a reload so that reloads do not interleave.
    applied: tokio::sync::Mutex<Config>,
    // Fired at the end of shutdown: health checks and the admin API stop.
    stop_background: CancellationToken,
    // Every client connection, so shutdown can wait for them.
    tasks: TaskTracker,
    /// What connection handlers use: the access log, and the tokens that stop accepting
    /// (`stopping`) and cut the last sessions (`hard_stop`).
    pub context: Arc<Context>,
    /// Every protocol's front end.
    pub registry: Registry,
    /// Fired to begin a graceful shutdown.
    pub shutdown: CancellationToken,
    /// Bearer token for mutating admin calls, resolved from the config.
    pub admin_token: Option<String>,
    /// When the process started.
    pub started: Instant,
    // The threads that accept and serve connections.
    workers: Workers,
}

impl Shared {
    /// The pools in service now.
    pub fn pools(&self) -> Arc<Vec<Arc<Pool>>> {
        self.pools.load_full()
    }

    /// Connections each worker serves now, by worker index.
    pub fn worker_connections(&self) -> Vec<usize> {
        self.workers.connections()
    }

    /// The listeners accepting now.
    pub fn listeners(&self) -> Arc<Vec<Arc<Listener>>> {
        self.listeners.load_full()
    }

    /// The resolvers in service now.
    pub fn resolvers(&self) -> Arc<crate::resolve::Resolvers> {
        self.resolvers.load_full()
    }

    /// Starts the background work of every resolver in service (those already started
    /// are left as they are).
    fn start_resolvers(&self) {
        for resolver in self.resolvers.load().values() {
            resolver.start();
        }
    }

    /// Starts the health checks of `pool` (its protocol's check kind).
    fn spawn_checks(&self, pool: &Arc<Pool>) {
        if let Some(health) = &pool.health {
            let check = self.registry.check(health.check);
            crate::health::spawn_checks(pool, check, &self.stop_background);
        }
    }

    /// Finds a pool in service by name.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.load().iter().find(|p| p.name == name).cloned()
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

/// Binds everything the config names (taking the sockets a binary upgrade inherited where
/// they match) and builds the shared state.
pub fn build(
    config: &Config,
    config_path: PathBuf,
    inherited: &mut Inherited,
) -> Result<Arc<Shared>, StartError> {
    let config_dir = config_path.parent().map(PathBuf::from).unwrap_or_default();
    let access_log = AccessLog::open(&config.log, &config_dir).map_err(|e| {
        StartError::Build(format!("cannot open access log {}: {e}", config.log.access))
    })?;
    let accounting = crate::accounting::Accounting::new(config.accounting.as_ref())
        .map_err(|e| StartError::Build(format!("accounting: {e}")))?;
    let context = Arc::new(Context::new(access_log, Arc::new(accounting)));
    let registry = Registry::new(&context);
    registry.configure(config).map_err(StartError::Build)?;
    let (resolvers, _) =
        crate::resolve::build(&config.resolvers, None).map_err(StartError::Build)?;
    let mut pools = HashMap::new();
    let mut pool_list = Vec::new();
    for pool_config in &config.pools {
        let pool = Pool::new(pool_config)
            .and_then(|pool| pool.with_resolver(pool_config, &resolvers))
            .map_err(StartError::Build)?;
        let pool = Arc::new(pool);
        pools.insert(pool.name.clone(), pool.clone());
        pool_list.push(pool);
    }
    let mut listeners = Vec::new();
    for listener_config in &config.listeners {
        let handler = registry
            .handler(listener_config, &pools)
            .map_err(StartError::Build)?;
        let socket = match listener_config
            .listen
            .parse()
            .ok()
            .and_then(|address| inherited.take_listener(&listener_config.name, address))
        {
            Some(socket) => socket,
            None => Listener::bind_socket(listener_config).map_err(StartError::Bind)?,
        };
        listeners.push(Arc::new(
            Listener::with_socket(listener_config, handler, socket).map_err(StartError::Bind)?,
        ));
    }
    let admin_token = match config.admin.as_ref().and_then(|a| a.token.as_deref()) {
        Some(token) => Some(crate::secret::resolve(token).map_err(StartError::Build)?),
        None => None,
    };
    Ok(Arc::new(Shared {
        config_path,
        pools: ArcSwap::from_pointee(pool_list),
        listeners: ArcSwap::from_pointee(listeners),
        resolvers: ArcSwap::from_pointee(resolvers),
        applied: tokio::sync::Mutex::new(config.clone()),
        stop_background: CancellationToken::new(),
        tasks: TaskTracker::new(),
        context,
        registry,
        shutdown: CancellationToken::new(),
        admin_token,
        started: Instant::now(),
        workers: Workers::start(config.workers)
            .map_err(|e| StartError::Build(format!("cannot start worker threads: {e}")))?,
    }))
}

/// Runs the proxy until SIGTERM/SIGINT (or `shared.shutdown`), then shuts down gracefully:
/// stop accepting, let connections finish for up to `shutdown_timeout`, cut the rest.
/// SIGHUP reloads the config file; SIGUSR2 starts a binary upgrade. After a binary upgrade (`inherited` holds the link to the
/// old process) it takes over from the old process once ready; it then serves the upgrade
/// socket itself, handing over to the next one.
/// `ready_file`, when given, gets the bound addresses once every listener accepts;
/// `admin_service` serves the admin API when the config has one.
pub async fn run(
    config: Config,
    shared: Arc<Shared>,
    mut inherited: Inherited,
    ready_file: Option<PathBuf>,
    admin_service: AdminService,
) -> io::Result<()> {
    let stop_admin = shared.stop_background.child_token();
    let mut admin_handover = None;
    let mut admin_address = None;
    let mut admin_api = None;
    if let Some(admin) = &config.admin {
        let listen: std::net::SocketAddr = admin.listen.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad admin address {}", admin.listen),
            )
        })?;
        let admin_listener = match inherited.take_admin(listen) {
            Some(socket) => tokio::net::TcpListener::from_std(socket)?,
            None => tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                io::Error::new(e.kind(), format!("admin API cannot bind {listen}: {e}"))
            })?,
        };
        let address = admin_listener.local_addr()?;
        tracing::info!(%address, "admin API listening");
        admin_address = Some(address);
        admin_handover = Some((address, admin_listener.as_fd().try_clone_to_owned()?));
        admin_api = Some((admin_listener, admin));
    }
    inherited.restore_servers(&shared);
    for pool in shared.pools().iter() {
        shared.spawn_checks(pool);
    }
    shared.start_resolvers();
    shared
        .context
        .accounting
        .spawn_flushes(shared.stop_background.clone());
    if inherited.is_upgrade() {
        upgrade::first_checks(&shared).await;
    }
    for listener in shared.listeners().iter() {
        spawn_listener(&shared, listener);
    }
    upgrade::take_over(inherited, &shared).await?;
    // The API answers from here on: after a binary upgrade, once the old process's
    // counters are added (the old process answers on the shared socket until it stops,
    // callers meanwhile wait in its backlog), so no caller sees them missing.
    if let Some((listener, admin)) = admin_api {
        tokio::spawn(admin_service(
            listener,
            shared.clone(),
            admin,
            stop_admin.clone(),
        ));
    }
    upgrade::notify_systemd();
    if let Some(path) = &ready_file {
        write_ready_file(path, admin_address, &shared)?;
    }
    let upgrade_path = upgrade::socket_path(&config, &shared.config_path);
    let handed_over = CancellationToken::new();
    tokio::spawn(upgrade::serve(
        shared.clone(),
        upgrade_path.clone(),
        admin_handover,
        stop_admin,
        handed_over.clone(),
    ));

    wait_for_shutdown(&shared).await?;
    // A reload may have changed the timeout since the start.
    let shutdown_timeout = shared.applied.lock().await.shutdown_timeout;
    tracing::info!(timeout = ?shutdown_timeout, "shutting down: no longer accepting");
    shared.context.stopping.cancel();
    let tasks = &shared.tasks;
    tasks.close();
    if tokio::time::timeout(shutdown_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tasks.len(),
            "shutdown timeout: closing remaining connections"
        );
        shared.context.hard_stop.cancel();
        tasks.wait().await;
    }
    shared.stop_background.cancel();
    // The usage of the last connections is delivered before the process exits (also
    // after a binary upgrade: the old process ends here).
    let final_flush = shared.context.accounting.flush();
    if tokio::time::timeout(std::time::Duration::from_secs(10), final_flush)
        .await
        .is_err()
    {
        tracing::warn!("usage not delivered at shutdown: the sink did not answer in time");
    }
    for resolver in shared.resolvers().values() {
        resolver.stop();
    }
    // Write out the access log lines of the last sessions before the process exits (off
    // the runtime: the wait is for a thread writing to a file or a pipe).
    let log_owner = shared.clone();
    let close = move || {
        log_owner
            .context
            .access_log
            .close(std::time::Duration::from_secs(5))
    };
    let _ = tokio::task::spawn_blocking(close).await;
    if !handed_over.is_cancelled() {
        let _ = std::fs::remove_file(&upgrade_path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts a listener's accept loop on every worker; they run until shutdown or until a
/// reload closes the listener.
fn spawn_listener(shared: &Arc<Shared>, listener: &Arc<Listener>) {
    tracing::info!(listener = %listener.name, address = %listener.address, protocol = listener.protocol.as_str(), "listening");
    listener.spawn_accept_loops(&shared.workers, &shared.context.stopping, &shared.tasks);
}

/// Writes where the proxy listens, for whoever started it with port 0 (tests, scripts,
/// supervisors): `{"pid", "admin", "listeners": {name: address}}`. Written whole under a
/// temporary name, then renamed, so a reader never sees half of it.
fn write_ready_file(
    path: &std::path::Path,
    admin: Option<std::net::SocketAddr>,
    shared: &Shared,
) -> io::Result<()> {
    let listeners: serde_json::Map<String, serde_json::Value> = shared
        .listeners()
        .iter()
        .map(|l| (l.name.clone(), l.address.to_string().into()))
        .collect();
    let ready = serde_json::json!({
        "pid": std::process::id(),
        "admin": admin.map(|a| a.to_string()),
        "listeners": listeners,
    });
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let written = std::fs::write(&temporary, ready.to_string())
        .and_then(|()| std::fs::rename(&temporary, path));
    written.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot write the ready file {}: {e}", path.display()),
        )
    })
}

async fn wait_for_shutdown(shared: &Arc<Shared>) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut user2 = signal(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            () = shared.shutdown.cancelled() => return Ok(()),
            _ = hangup.recv() => {
                tracing::info!(config = %shared.config_path.display(), "SIGHUP: reloading the configuration");
                // The outcome is logged by `reload` itself.
                let _ = reload(shared).await;
            }
            _ = user2.recv() => upgrade::spawn_successor(&shared.config_path),
        }
    }
}
