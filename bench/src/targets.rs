//! Targets under test and management of the proxy processes.
//!
//! A target is the path a client connection takes to a backend: `direct`
//! (no proxy), through `switchyard`, through `haproxy`, (HTTP only) through `nginx` as a
//! reverse proxy, or (PostgreSQL only) through `pgbouncer`. For the proxies
//! this module writes an equivalent configuration to a temporary directory,
//! starts the process, waits until its listener accepts connections and
//! stops it again.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::sys::free_port;

/// The path between client and backend that is being measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum TargetKind {
    /// Client connects straight to the backend (the baseline).
    Direct,
    /// Client connects through switchyard.
    Switchyard,
    /// Client connects through HAProxy in `mode tcp` (`mode http` for HTTP).
    Haproxy,
    /// Client connects through nginx as an HTTP reverse proxy (HTTP scenario only).
    Nginx,
    /// Client connects through PgBouncer (`postgres` and `pgpool` scenarios only).
    Pgbouncer,
}

impl TargetKind {
    /// All targets in table order.
    pub const ALL: [TargetKind; 5] = [
        TargetKind::Direct,
        TargetKind::Switchyard,
        TargetKind::Haproxy,
        TargetKind::Nginx,
        TargetKind::Pgbouncer,
    ];
}

/// What the proxies are configured to understand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bytes only.
    Tcp,
    /// HTTP/1.1 with keep-alive to the backends.
    Http,
    /// The PostgreSQL protocol, pooled as given.
    Postgres(PgPooling),
    /// The MySQL protocol, pooled as given.
    Mysql(MyPooling),
    /// SMTP: switchyard holds the conversation (greeting as [`SMTP_HOSTNAME`]); HAProxy
    /// copies bytes (`mode tcp`).
    Smtp,
    /// HTTP through a pool whose servers a Redis resolver at `redis` gives per `Host`,
    /// and, in the same process on `fixed`, a listener of a static pool of the same
    /// backends (switchyard only: the `resolver` scenario compares the two with equal
    /// work, one process).
    Resolved {
        /// The Redis the resolver asks.
        redis: SocketAddr,
        /// The static pool's listener.
        fixed: SocketAddr,
    },
}

/// Where the `resolver` scenario's Redis holds the answers: `prefix + Host`.
pub const RESOLVER_PREFIX: &str = "bench:route:";

/// The name switchyard greets SMTP clients with in the bench.
const SMTP_HOSTNAME: &str = "mx.bench";

/// How a PostgreSQL pooler (switchyard or PgBouncer) shares server connections: the
/// `postgres` scenario compares session mode, `pgpool` transaction mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgPooling {
    /// One server connection per client session.
    Session,
    /// Server connections shared one transaction at a time, `size` per (database, user)
    /// (switchyard `pool_size`, PgBouncer `default_pool_size`).
    Transaction {
        /// Server connections in the pool.
        size: usize,
    },
}

/// How switchyard shares MySQL server connections: the `mysql` scenario's `--my-pool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MyPooling {
    /// One server connection per client session; the login is relayed.
    Session,
    /// Server connections shared one transaction at a time, `size` per (database, user,
    /// client shape) per server; clients log in to switchyard as `user` (name, password),
    /// the credentials switchyard then logs in to the server with.
    Transaction {
        /// Server connections in the pool (`pool_size`).
        size: usize,
        /// The one `[[user]]`: name and password.
        user: (&'static str, &'static str),
    },
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Direct => "direct",
            TargetKind::Switchyard => "switchyard",
            TargetKind::Haproxy => "haproxy",
            TargetKind::Nginx => "nginx",
            TargetKind::Pgbouncer => "pgbouncer",
        })
    }
}

/// How the proxies are launched and configured.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    /// Worker threads: switchyard `workers` and HAProxy `nbthread`.
    pub workers: usize,
    /// switchyard's listener `workers`: how many of its workers serve the bench listener.
    pub listener_workers: Option<usize>,
    /// Path of the switchyard binary.
    pub switchyard_bin: PathBuf,
    /// Path of the haproxy binary.
    pub haproxy_bin: PathBuf,
    /// Path of the pgbouncer binary.
    pub pgbouncer_bin: PathBuf,
    /// Path of the nginx binary.
    pub nginx_bin: PathBuf,
    /// HAProxy global/frontend `maxconn`.
    pub maxconn: u64,
    /// How long to wait for a proxy to accept connections.
    pub ready_timeout: Duration,
    /// Terminate TLS on the listener with this certificate (the `tls` scenario).
    pub tls: Option<TlsFiles>,
    /// What HAProxy and nginx add to HTTP requests.
    pub competitor_headers: CompetitorHeaders,
    /// HTTP: each proxy writes an access log line per request to [`ACCESS_LOG`] in its
    /// temporary directory (the `http` scenario's `--logs on`).
    pub access_log: bool,
}

/// The file an HTTP target's access log goes to, in its temporary directory.
const ACCESS_LOG: &str = "access.log";

/// What HAProxy and nginx do to the headers of an HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompetitorHeaders {
    /// What switchyard does by default: the client's `Host` kept, `X-Forwarded-For`
    /// appended, `X-Forwarded-Proto` and `X-Forwarded-Host` set, `X-Request-Id` made when
    /// absent. Every proxy then does the same work and the backend parses the same request.
    Same,
    /// Their own defaults: no forwarding headers, and nginx sends its upstream's name as
    /// `Host`. Less work per request than switchyard's defaults, and a smaller request for
    /// the backend to parse (the runs recorded before 2026-11-27's fourth session).
    Bare,
}

/// A certificate for the proxies' TLS listeners, in the shapes each wants.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate (switchyard `cert`).
    pub cert: PathBuf,
    /// PEM private key (switchyard `key`).
    pub key: PathBuf,
    /// Certificate and key in one PEM (HAProxy `crt`).
    pub combined: PathBuf,
}

impl TargetOptions {
    /// Default switchyard location: next to the running bench binary
    /// (`target/release/switchyard` under `cargo run --release`).
    pub fn default_switchyard_bin() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("switchyard")))
            .unwrap_or_else(|| PathBuf::from("target/release/switchyard"))
    }

    /// Largest `maxconn` whose two fds per connection (plus some slack for
    /// listeners and internals) fit in the hard `RLIMIT_NOFILE`.
    pub fn maxconn_for_fd_limit(hard_limit: u64) -> u64 {
        hard_limit.saturating_sub(200) / 2
    }
}

/// A target ready to receive client connections.
pub struct RunningTarget {
    kind: TargetKind,
    addr: SocketAddr,
    process: Option<ProxyProcess>,
    /// The file its access log goes to, when it writes one.
    access_log: Option<PathBuf>,
    /// How this target's configuration differs from what the scenario asked for.
    note: Option<String>,
}

struct ProxyProcess {
    child: Child,
    /// Holds the config and log files; removed on drop.
    dir: tempfile::TempDir,
}

/// The file a proxy's stderr (switchyard's log) goes to, in its temporary directory.
const STDERR_LOG: &str = "stderr.log";

impl RunningTarget {
    /// Starts `kind` in front of a pool of `backends` (round robin) and
    /// waits until it is ready.
    ///
    /// For [`TargetKind::Direct`] nothing is started and the client address
    /// is the first backend address itself.
    pub async fn start(
        kind: TargetKind,
        backends: &[SocketAddr],
        opts: &TargetOptions,
    ) -> Result<Self> {
        Self::launch(kind, backends, opts, Mode::Tcp).await
    }

    /// Like [`RunningTarget::start`], with the proxy configured for HTTP.
    pub async fn start_http(
        kind: TargetKind,
        backends: &[SocketAddr],
        opts: &TargetOptions,
    ) -> Result<Self> {
        Self::launch(kind, backends, opts, Mode::Http).await
    }

    /// Starts `kind` in front of one PostgreSQL `server`: switchyard with a `postgres`
    /// listener, or PgBouncer, both pooling as `pooling` says, or HAProxy in `mode tcp`
    /// (bytes only, whatever `pooling` says); `direct` is the server itself.
    pub async fn start_postgres(
        kind: TargetKind,
        server: SocketAddr,
        opts: &TargetOptions,
        pooling: PgPooling,
    ) -> Result<Self> {
        Self::launch(kind, &[server], opts, Mode::Postgres(pooling)).await
    }

    /// Starts `kind` in front of one MySQL/MariaDB `server`: switchyard with a `mysql`
    /// listener pooling as `pooling` says, or HAProxy in `mode tcp` (bytes only, whatever
    /// `pooling` says); `direct` is the server itself.
    pub async fn start_mysql(
        kind: TargetKind,
        server: SocketAddr,
        opts: &TargetOptions,
        pooling: MyPooling,
    ) -> Result<Self> {
        Self::launch(kind, &[server], opts, Mode::Mysql(pooling)).await
    }

    /// Starts switchyard with two http listeners in one process: one over a pool resolved
    /// by the Redis at `redis` (its address is the target's), one over a static pool of
    /// `backend` (the address returned).
    pub async fn start_resolved(
        kind: TargetKind,
        backend: SocketAddr,
        redis: SocketAddr,
        opts: &TargetOptions,
    ) -> Result<(Self, SocketAddr)> {
        if kind != TargetKind::Switchyard {
            bail!("{kind} has no resolvers");
        }
        let fixed = free_port()?;
        let mode = Mode::Resolved { redis, fixed };
        let running = Self::launch(kind, &[backend], opts, mode).await?;
        Ok((running, fixed))
    }

    /// Starts `kind` in front of one SMTP `server`: switchyard with an `smtp` listener, or
    /// HAProxy in `mode tcp`; `direct` is the server itself.
    pub async fn start_smtp(
        kind: TargetKind,
        server: SocketAddr,
        opts: &TargetOptions,
    ) -> Result<Self> {
        Self::launch(kind, &[server], opts, Mode::Smtp).await
    }

    async fn launch(
        kind: TargetKind,
        backends: &[SocketAddr],
        opts: &TargetOptions,
        mode: Mode,
    ) -> Result<Self> {
        let Some(&first) = backends.first() else {
            bail!("no backend address");
        };
        let (bin, config_name) = match kind {
            TargetKind::Direct => {
                return Ok(RunningTarget {
                    kind,
                    addr: first,
                    process: None,
                    access_log: None,
                    note: None,
                });
            }
            TargetKind::Switchyard => (&opts.switchyard_bin, "switchyard.toml"),
            TargetKind::Haproxy => (&opts.haproxy_bin, "haproxy.cfg"),
            TargetKind::Nginx if mode == Mode::Http => (&opts.nginx_bin, "nginx.conf"),
            TargetKind::Nginx => bail!("nginx is measured in the http scenario only"),
            TargetKind::Pgbouncer if matches!(mode, Mode::Postgres(_)) => {
                (&opts.pgbouncer_bin, "pgbouncer.ini")
            }
            TargetKind::Pgbouncer => {
                bail!("pgbouncer is measured in the PostgreSQL scenarios only")
            }
        };
        if !bin.exists() {
            bail!("{kind} binary not found at {}", bin.display());
        }
        let listen = free_port()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("bench-{kind}-"))
            .tempdir()
            .context("creating temp dir")?;
        let mut note = None;
        let config = match kind {
            TargetKind::Switchyard => switchyard_config(opts, listen, free_port()?, backends, mode),
            TargetKind::Nginx => nginx_config(opts, listen, backends, dir.path()),
            TargetKind::Pgbouncer => {
                let version = pgbouncer_version(bin).await;
                let prepared = version.is_none_or(|v| v >= PGBOUNCER_PREPARED_STATEMENTS);
                if !prepared && matches!(mode, Mode::Postgres(PgPooling::Transaction { .. })) {
                    note = Some(format!(
                        "PgBouncer {} predates max_prepared_statements (1.21) and runs without it: a client's named statements stay on the server connection that prepared them, so -M prepared works only by luck (pgbench -S: every client's one statement is the same P_0) or fails",
                        version
                            .map_or_else(String::new, |(major, minor)| format!("{major}.{minor}"))
                    ));
                }
                pgbouncer_config(listen, first, mode, prepared)
            }
            _ => haproxy_config(opts, listen, backends, mode),
        };
        let logs = logs_requests(opts, mode);
        Self::spawn(
            kind,
            bin,
            dir,
            config_name,
            config,
            listen,
            opts,
            logs,
            note,
        )
        .await
    }

    /// Starts switchyard with `listeners` (its `[[listener]]` and `[[pool]]` tables, after
    /// the bench's usual workers, admin and log settings) and waits until each address of
    /// `ready` (its listeners) accepts: for scenarios that need several listeners in one
    /// process. The target's address is the first.
    pub async fn start_switchyard(
        opts: &TargetOptions,
        listeners: &str,
        ready: &[SocketAddr],
    ) -> Result<Self> {
        let Some((&first, others)) = ready.split_first() else {
            bail!("no listener to wait for");
        };
        let kind = TargetKind::Switchyard;
        let bin = &opts.switchyard_bin;
        if !bin.exists() {
            bail!("{kind} binary not found at {}", bin.display());
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("bench-{kind}-"))
            .tempdir()
            .context("creating temp dir")?;
        let config = format!(
            "{}{listeners}",
            switchyard_header(opts, free_port()?, false)
        );
        let mut running = Self::spawn(
            kind,
            bin,
            dir,
            "switchyard.toml",
            config,
            first,
            opts,
            false,
            None,
        )
        .await?;
        for &addr in others {
            let Some(process) = running.process.as_mut() else {
                break;
            };
            if let Err(e) = wait_ready(&mut process.child, addr, opts.ready_timeout).await {
                let _ = running.stop().await;
                return Err(e.context("switchyard did not accept on every listener"));
            }
        }
        Ok(running)
    }

    /// Writes `config` as `config_name` in `dir`, starts `bin` on it as `kind` wants and
    /// waits until `listen` accepts.
    #[allow(clippy::too_many_arguments)]
    async fn spawn(
        kind: TargetKind,
        bin: &Path,
        dir: tempfile::TempDir,
        config_name: &str,
        config: String,
        listen: SocketAddr,
        opts: &TargetOptions,
        logs: bool,
        note: Option<String>,
    ) -> Result<Self> {
        let config_path = dir.path().join(config_name);
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let stderr_path = dir.path().join(STDERR_LOG);
        let stderr = std::fs::File::create(&stderr_path).context("creating stderr log")?;

        let mut cmd = Command::new(bin);
        match kind {
            TargetKind::Switchyard => cmd.arg("run").arg("-c").arg(&config_path),
            TargetKind::Nginx => cmd
                .arg("-c")
                .arg(&config_path)
                .arg("-p")
                .arg(dir.path())
                .arg("-g")
                .arg("daemon off;"),
            TargetKind::Pgbouncer => {
                // PgBouncer refuses to run as root.
                let (uid, gid) = crate::pg::postgres_ids()?;
                crate::pg::give_to_postgres(dir.path())?;
                crate::pg::give_to_postgres(&config_path)?;
                std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n")?;
                cmd.uid(uid)
                    .gid(gid)
                    .current_dir(dir.path())
                    .arg(&config_path)
            }
            _ => cmd.arg("-f").arg(&config_path).arg("-db"),
        };
        let access_log = logs.then(|| dir.path().join(ACCESS_LOG));
        // HAProxy's access log is its stdout (see `haproxy_config`).
        let stdout = match &access_log {
            Some(path) if kind == TargetKind::Haproxy => Stdio::from(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            _ => Stdio::null(),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut process = ProxyProcess { child, dir };
        if let Err(e) = wait_ready(&mut process.child, listen, opts.ready_timeout).await {
            let log = tail(&stderr_path);
            let _ = process.child.kill().await;
            return Err(e.context(format!("{kind} did not become ready (its stderr: {log})")));
        }
        Ok(RunningTarget {
            kind,
            addr: listen,
            process: Some(process),
            access_log,
            note,
        })
    }

    /// The file the proxy writes its access log to, when it writes one.
    pub fn access_log(&self) -> Option<&Path> {
        self.access_log.as_deref()
    }

    /// Why this target's rows are not what the scenario asked for (e.g. a PgBouncer too old
    /// for a setting), for a footnote on each.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The last `lines` lines the proxy wrote to stderr so far (switchyard's log); `None`
    /// for the direct path, or when it wrote nothing.
    pub fn log_tail(&self, lines: usize) -> Option<String> {
        let process = self.process.as_ref()?;
        let text = std::fs::read_to_string(process.dir.path().join(STDERR_LOG)).ok()?;
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if all.is_empty() {
            return None;
        }
        Some(all[all.len().saturating_sub(lines)..].join("\n"))
    }

    /// Address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How the proxy process ended, if it has (a crash under load shows here); `None`
    /// while it runs, and for the direct path.
    pub fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.process.as_mut() {
            Some(process) => process.child.try_wait().context("checking proxy process"),
            None => Ok(None),
        }
    }

    /// Process id of the proxy, `None` for the direct path.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(|p| p.child.id())
    }

    /// Runs `load` and reads the CPU time (user + system, child processes included) the
    /// proxy spent meanwhile, in seconds; `None` for the direct path.
    pub async fn cpu_during<T>(
        &self,
        load: impl Future<Output = Result<T>>,
    ) -> Result<(T, Option<f64>)> {
        let cpu = || {
            self.pid()
                .map(crate::sys::process_tree_cpu_seconds)
                .transpose()
        };
        let before = cpu()?;
        let outcome = load.await?;
        let after = cpu()?;
        Ok((outcome, before.zip(after).map(|(b, a)| a - b)))
    }

    /// Stops the proxy: SIGTERM, then SIGKILL if it has not exited in 5 s.
    pub async fn stop(self) -> Result<()> {
        let Some(mut process) = self.process else {
            return Ok(());
        };
        if let Some(pid) = process.child.id() {
            // SAFETY: plain syscall; `pid` is our own, not yet reaped child.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), process.child.wait()).await {
            Ok(status) => {
                status.with_context(|| format!("waiting for {}", self.kind))?;
            }
            Err(_) => {
                eprintln!(
                    "  {} did not exit within 5 s of SIGTERM; killing it",
                    self.kind
                );
                process.child.kill().await.context("killing proxy")?;
            }
        }
        Ok(())
    }
}

/// Polls until a TCP connect to `addr` succeeds, failing early if the
/// process exits and late after `timeout`.
pub async fn wait_ready(child: &mut Child, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("checking proxy process")? {
            bail!("process exited with {status}");
        }
        if let Ok(Ok(_conn)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no successful connect to {addr} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Last few hundred bytes of a log file, on one line.
fn tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().is_empty() => "(empty)".to_string(),
        Ok(s) => {
            let s = s.trim();
            let start = s.len().saturating_sub(400);
            let start = (start..s.len())
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(s.len());
            s[start..].replace('\n', " | ")
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// Clients PgBouncer accepts (`max_client_conn`) and switchyard lets wait for a pooled
/// server connection (`max_queue`): far above the largest pgbench client count (and
/// sysbench thread count, for switchyard's MySQL transaction pool).
const PG_MAX_CLIENTS: usize = 2000;

/// How long a client may wait for a pooled server connection in transaction mode, on both
/// poolers: PgBouncer's default `query_wait_timeout`, so that a burst of 512 clients over 10
/// server connections is measured rather than cut off by switchyard's 5 s default (the
/// same for switchyard's MySQL transaction pool).
const PG_QUEUE_TIMEOUT_SECS: u64 = 120;

/// switchyard's extra listener and pool keys for `pooling`. Transaction mode trusts the
/// clients (`auth = "trust"`), as PgBouncer's `auth_type = trust` and the server do, so that
/// no proxy does password work the others skip.
pub(crate) fn switchyard_pooling(pooling: PgPooling) -> (String, String) {
    match pooling {
        PgPooling::Session => (String::new(), String::new()),
        PgPooling::Transaction { size } => (
            "auth = \"trust\"".to_string(),
            format!(
                "pool_mode = \"transaction\"\npool_size = {size}\nmax_queue = {PG_MAX_CLIENTS}\ntimeouts.queue = \"{PG_QUEUE_TIMEOUT_SECS}s\""
            ),
        ),
    }
}

/// switchyard's extra listener and pool keys for MySQL `pooling`. Transaction mode needs
/// proxy-side authentication: the listener checks `mysql_native_password` against the one
/// `[[user]]`, whose password switchyard also logs in to the server with. The `[[user]]`
/// table comes last: every key after it would be the user's.
fn switchyard_my_pooling(pooling: MyPooling) -> (String, String) {
    match pooling {
        MyPooling::Session => (String::new(), String::new()),
        MyPooling::Transaction {
            size,
            user: (name, password),
        } => (
            "auth = \"mysql_native_password\"".to_string(),
            format!(
                "pool_mode = \"transaction\"\npool_size = {size}\nmax_queue = {PG_MAX_CLIENTS}\ntimeouts.queue = \"{PG_QUEUE_TIMEOUT_SECS}s\"\n[[user]]\nname = \"{name}\"\npassword = \"{password}\""
            ),
        ),
    }
}

/// switchyard configuration: one listener (tcp, http, postgres, mysql or smtp), one
/// round-robin pool.
fn switchyard_config(
    opts: &TargetOptions,
    listen: SocketAddr,
    admin: SocketAddr,
    backends: &[SocketAddr],
    mode: Mode,
) -> String {
    let protocol = match mode {
        Mode::Tcp => "tcp",
        Mode::Http | Mode::Resolved { .. } => "http",
        Mode::Postgres(_) => "postgres",
        Mode::Mysql(_) => "mysql",
        Mode::Smtp => "smtp",
    };
    let (listener_keys, pool_keys) = match mode {
        Mode::Postgres(pooling) => switchyard_pooling(pooling),
        Mode::Mysql(pooling) => switchyard_my_pooling(pooling),
        Mode::Smtp => (
            format!("smtp = {{ hostname = \"{SMTP_HOSTNAME}\" }}"),
            String::new(),
        ),
        Mode::Resolved { redis, .. } => (
            String::new(),
            format!(
                r#"resolver = "r"
key = "{{host}}"
[[resolver]]
name = "r"
kind = "redis"
address = "redis://{redis}"
prefix = "{RESOLVER_PREFIX}"
cache = {{ ttl = "1h" }}
allow_private = ["127.0.0.0/8"]"#
            ),
        ),
        Mode::Tcp | Mode::Http => (String::new(), String::new()),
    };
    let servers: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, a)| format!(r#"{{ name = "b{}", address = "{a}" }}"#, i + 1))
        .collect();
    // A resolved pool has no servers of its own: the answers give them. The static pool
    // it is compared with is a second listener of the same process.
    let listed = format!("servers = [ {} ]", servers.join(", "));
    let (servers, fixed) = match mode {
        Mode::Resolved { fixed, .. } => (
            String::new(),
            format!(
                "[[listener]]\nname = \"static\"\nlisten = \"{fixed}\"\nprotocol = \"http\"\npool = \"static\"\n\
                 [[pool]]\nname = \"static\"\nbalance = \"round_robin\"\n{listed}\n"
            ),
        ),
        _ => (listed, String::new()),
    };
    format!(
        r#"{header}[[listener]]
name = "bench"
listen = "{listen}"
protocol = "{protocol}"
pool = "backend"
{tls}
{listener_workers}
{listener_keys}
[[pool]]
name = "backend"
balance = "round_robin"
{servers}
{pool_keys}
{fixed}"#,
        header = switchyard_header(opts, admin, logs_requests(opts, mode)),
        listener_workers = opts
            .listener_workers
            .map_or_else(String::new, |n| format!("workers = {n}")),
        tls = opts.tls.as_ref().map_or_else(String::new, |tls| format!(
            "tls = {{ certs = [{{ cert = \"{}\", key = \"{}\" }}] }}",
            tls.cert.display(),
            tls.key.display()
        )),
    )
}

/// The top of every switchyard configuration: workers, the admin listener on `admin`,
/// warnings only in the log and an access log to [`ACCESS_LOG`] when `access_log`.
fn switchyard_header(opts: &TargetOptions, admin: SocketAddr, access_log: bool) -> String {
    format!(
        "# generated by bench\nworkers = {workers}\n[admin]\nlisten = \"{admin}\"\n[log]\nlevel = \"warn\"\naccess = \"{access}\"\n",
        workers = opts.workers,
        access = if access_log { ACCESS_LOG } else { "off" },
    )
}

/// Whether a target started in `mode` writes an access log: asked for, and HTTP.
fn logs_requests(opts: &TargetOptions, mode: Mode) -> bool {
    opts.access_log && mode == Mode::Http
}

/// The first PgBouncer release with `max_prepared_statements`; older ones refuse to start
/// with it in the configuration.
const PGBOUNCER_PREPARED_STATEMENTS: (u32, u32) = (1, 21);

/// PgBouncer's (major, minor) version from `pgbouncer --version` ("PgBouncer 1.18.0"), or
/// `None` when it does not say.
async fn pgbouncer_version(bin: &Path) -> Option<(u32, u32)> {
    let output = Command::new(bin).arg("--version").output().await.ok()?;
    parse_pgbouncer_version(&String::from_utf8_lossy(&output.stdout))
}

fn parse_pgbouncer_version(text: &str) -> Option<(u32, u32)> {
    let version = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("PgBouncer "))?;
    let mut parts = version.split('.');
    let major = parts.next()?.trim().parse().ok()?;
    let minor = parts.next()?.trim().parse().ok()?;
    Some((major, minor))
}

/// PgBouncer in front of `server`, trusting the `postgres` user (the server trusts it
/// too), logging to stderr only and no line per login or logout (switchyard runs with
/// `access = "off"`: neither writes a line per connection). Session mode for
/// [`Mode::Postgres`]`(Session)`, else transaction mode with `size` server connections,
/// switchyard's queue timeout and, when `prepared` (the version has it),
/// `max_prepared_statements = 200`.
fn pgbouncer_config(listen: SocketAddr, server: SocketAddr, mode: Mode, prepared: bool) -> String {
    let pooling = match mode {
        Mode::Postgres(PgPooling::Transaction { size }) => format!(
            "pool_mode = transaction\ndefault_pool_size = {size}\nquery_wait_timeout = {PG_QUEUE_TIMEOUT_SECS}{}",
            if prepared {
                "\nmax_prepared_statements = 200"
            } else {
                ""
            }
        ),
        _ => "pool_mode = session\ndefault_pool_size = 200".to_string(),
    };
    format!(
        r#"; generated by bench
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = {listen_host}
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = users.txt
{pooling}
max_client_conn = {PG_MAX_CLIENTS}
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
"#,
        host = server.ip(),
        port = server.port(),
        listen_host = listen.ip(),
        listen_port = listen.port(),
    )
}

/// HAProxy configuration equivalent to [`switchyard_config`]: `mode tcp` (or `mode http`
/// with server keep-alive), `nbthread` = workers, high `maxconn`, generous timeouts, no
/// logging, or with an access log `option httplog` lines to its stdout (a file: HAProxy
/// writes no file itself, and `log stdout` is its way to one without a syslog daemon) and
/// `option dontlognull` (as Debian's default configuration: connections that sent nothing,
/// such as the bench's readiness probe, are not logged).
fn haproxy_config(
    opts: &TargetOptions,
    listen: SocketAddr,
    backends: &[SocketAddr],
    mode: Mode,
) -> String {
    let forwarding = match (mode, opts.competitor_headers) {
        (Mode::Http, CompetitorHeaders::Same) => haproxy_forwarding(opts.tls.is_some()),
        _ => String::new(),
    };
    let (global_log, defaults_log) = if logs_requests(opts, mode) {
        (
            "log stdout format raw local0",
            "\n    log global\n    option httplog\n    option dontlognull",
        )
    } else {
        ("# no \"log\" line: HAProxy logs nothing", "")
    };
    let mode = match mode {
        Mode::Tcp | Mode::Postgres(_) | Mode::Mysql(_) | Mode::Smtp => "mode tcp",
        Mode::Http | Mode::Resolved { .. } => {
            "mode http\n    http-reuse always\n    timeout http-keep-alive 1h"
        }
    };
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server b{} {a}\n", i + 1))
        .collect();
    format!(
        r#"# generated by bench
global
    nbthread {workers}
    maxconn {maxconn}
    {global_log}

defaults
    {mode}{defaults_log}
    maxconn {maxconn}
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    timeout client-fin 1h
    timeout server-fin 1h

frontend bench
    bind {listen}{tls}
    default_backend backend{forwarding}

backend backend
    balance roundrobin
{servers}"#,
        workers = opts.workers,
        maxconn = opts.maxconn,
        tls = opts.tls.as_ref().map_or_else(String::new, |tls| format!(
            " ssl crt {} ssl-min-ver TLSv1.2",
            tls.combined.display()
        )),
    )
}

/// HAProxy `frontend` lines adding the request headers switchyard adds by default; the
/// request id is HAProxy's `unique-id` (hex), made only when the client sent none.
fn haproxy_forwarding(tls: bool) -> String {
    let proto = if tls { "https" } else { "http" };
    format!(
        "
    option forwardfor
    unique-id-format %{{+X}}o%ci%cp%fi%fp%Ts%rt%pid
    http-request set-header X-Forwarded-Proto {proto}
    http-request set-header X-Forwarded-Host %[req.hdr(host)] if {{ req.hdr(host) -m found }}
    http-request set-header X-Request-Id %[unique-id] unless {{ req.hdr(x-request-id) -m found }}"
    )
}

/// nginx `http` and `location` lines adding the request headers switchyard adds by default
/// and keeping the client's `Host`; the request id is nginx's `$request_id` unless the
/// client sent one.
fn nginx_forwarding() -> (&'static str, &'static str) {
    (
        "
    map $http_x_request_id $switchyard_request_id {
        default $http_x_request_id;
        \"\" $request_id;
    }",
        "
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $switchyard_request_id;",
    )
}

/// nginx as an HTTP reverse proxy equivalent to [`switchyard_config`] in HTTP mode:
/// `worker_processes` = workers, keep-alive to the backends, no access log (or one in its
/// default `combined` format, unbuffered as nginx writes it by default); every path (pid,
/// logs, temp files) under `dir`.
fn nginx_config(
    opts: &TargetOptions,
    listen: SocketAddr,
    backends: &[SocketAddr],
    dir: &Path,
) -> String {
    let servers: String = backends
        .iter()
        .map(|a| format!("        server {a};\n"))
        .collect();
    let dir = dir.display();
    let (http_forwarding, location_forwarding) = match opts.competitor_headers {
        CompetitorHeaders::Same => nginx_forwarding(),
        CompetitorHeaders::Bare => ("", ""),
    };
    let access_log = if logs_requests(opts, Mode::Http) {
        format!("{dir}/{ACCESS_LOG}")
    } else {
        "off".to_string()
    };
    format!(
        r#"# generated by bench
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 10000;
}}
http {{
    access_log {access_log};
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;{http_forwarding}
    upstream backend {{
{servers}        keepalive 256;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;{location_forwarding}
        }}
    }}
}}
"#,
        workers = opts.workers,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `127.0.0.1:port`, an address the configs under test name.
    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Options as the bench's defaults make them, with the binaries where `cargo build`
    /// puts switchyard and Debian the others.
    pub(crate) fn options(headers: CompetitorHeaders) -> TargetOptions {
        let switchyard_bin = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("switchyard")))
            .unwrap_or_default();
        TargetOptions {
            workers: 1,
            listener_workers: None,
            switchyard_bin,
            haproxy_bin: "/usr/sbin/haproxy".into(),
            pgbouncer_bin: "/usr/sbin/pgbouncer".into(),
            nginx_bin: "/usr/sbin/nginx".into(),
            maxconn: 1000,
            ready_timeout: Duration::from_secs(15),
            tls: None,
            competitor_headers: headers,
            access_log: false,
        }
    }

    #[test]
    fn smtp_configs_hold_the_conversation_or_copy_bytes() {
        let opts = options(CompetitorHeaders::Same);
        let listen = loopback(2525);
        let admin = loopback(2526);
        let sink = loopback(25);
        let switchyard = switchyard_config(&opts, listen, admin, &[sink], Mode::Smtp);
        for line in [
            "protocol = \"smtp\"",
            "smtp = { hostname = \"mx.bench\" }",
            "address = \"127.0.0.1:25\"",
        ] {
            assert!(
                switchyard.contains(line),
                "{line} missing from {switchyard}"
            );
        }
        let haproxy = haproxy_config(&opts, listen, &[sink], Mode::Smtp);
        assert!(haproxy.contains("mode tcp"), "{haproxy}");
        assert!(haproxy.contains("server b1 127.0.0.1:25"), "{haproxy}");
    }

    #[test]
    fn a_resolved_pool_takes_its_servers_from_redis() {
        let opts = options(CompetitorHeaders::Same);
        let listen = loopback(8080);
        let admin = loopback(8081);
        let backend = loopback(9000);
        let redis = loopback(6379);
        let fixed = loopback(8082);
        let mode = Mode::Resolved { redis, fixed };
        let config = switchyard_config(&opts, listen, admin, &[backend], mode);
        for line in [
            "protocol = \"http\"",
            "resolver = \"r\"",
            "key = \"{host}\"",
            "address = \"redis://127.0.0.1:6379\"",
            "prefix = \"bench:route:\"",
        ] {
            assert!(config.contains(line), "{line} missing from {config}");
        }
        // The resolved pool has no servers; the static one, on its own listener, has.
        let (resolved, fixed_part) = config.split_once("name = \"static\"").expect("static");
        assert!(!resolved.contains("servers ="), "{config}");
        assert!(
            fixed_part.contains("servers = [ { name = \"b1\", address = \"127.0.0.1:9000\" } ]"),
            "{config}"
        );
        assert!(config.contains("listen = \"127.0.0.1:8082\""), "{config}");
    }

    #[test]
    fn pgbouncer_version_is_read_from_its_banner() {
        let debian =
            "PgBouncer 1.18.0\nlibevent 2.1.12-stable\nadns: c-ares 1.18.1\ntls: OpenSSL 3.0.17\n";
        assert_eq!(parse_pgbouncer_version(debian), Some((1, 18)));
        assert_eq!(parse_pgbouncer_version("PgBouncer 1.23.1"), Some((1, 23)));
        assert_eq!(parse_pgbouncer_version("pgbouncer: unknown option"), None);
        assert!((1, 18) < PGBOUNCER_PREPARED_STATEMENTS);
    }

    #[test]
    fn transaction_mode_configs_pool_alike() {
        let listen = loopback(6432);
        let server = loopback(5432);
        let mode = Mode::Postgres(PgPooling::Transaction { size: 10 });
        let pgbouncer = pgbouncer_config(listen, server, mode, true);
        for line in [
            "pool_mode = transaction",
            "default_pool_size = 10",
            "max_prepared_statements = 200",
            "query_wait_timeout = 120",
            "max_client_conn = 2000",
            "auth_type = trust",
            "log_connections = 0",
            "log_disconnections = 0",
        ] {
            assert!(pgbouncer.contains(line), "{line} missing from {pgbouncer}");
        }
        assert!(!pgbouncer_config(listen, server, mode, false).contains("max_prepared"));
        let (listener, pool) = switchyard_pooling(PgPooling::Transaction { size: 10 });
        assert_eq!(listener, "auth = \"trust\"");
        for line in [
            "pool_mode = \"transaction\"",
            "pool_size = 10",
            "max_queue = 2000",
            "timeouts.queue = \"120s\"",
        ] {
            assert!(pool.contains(line), "{line} missing from {pool}");
        }
    }

    #[test]
    fn mysql_transaction_mode_authenticates_the_sysbench_user_on_the_proxy() {
        let opts = options(CompetitorHeaders::Same);
        let listen = loopback(3307);
        let admin = loopback(3308);
        let server = loopback(3306);
        let pooled = Mode::Mysql(MyPooling::Transaction {
            size: 10,
            user: ("sbtest", "sbtest-pw"),
        });
        let config = switchyard_config(&opts, listen, admin, &[server], pooled);
        for line in [
            "protocol = \"mysql\"",
            "auth = \"mysql_native_password\"",
            "pool_mode = \"transaction\"",
            "pool_size = 10",
            "max_queue = 2000",
            "timeouts.queue = \"120s\"",
            "[[user]]\nname = \"sbtest\"\npassword = \"sbtest-pw\"",
        ] {
            assert!(config.contains(line), "{line} missing from {config}");
        }
        // Nothing after the user table: a key there would be the user's.
        assert!(
            config.trim_end().ends_with("password = \"sbtest-pw\""),
            "{config}"
        );
        let session = switchyard_config(
            &opts,
            listen,
            admin,
            &[server],
            Mode::Mysql(MyPooling::Session),
        );
        for key in ["auth", "pool_mode", "[[user]]"] {
            assert!(!session.contains(key), "{key} in {session}");
        }
        let haproxy = haproxy_config(&opts, listen, &[server], pooled);
        assert!(haproxy.contains("mode tcp"), "{haproxy}");
    }

    /// A backend that answers each request with a short response and sends the request's
    /// lower-cased header lines (`name: value`) down the returned channel.
    fn recording_backend() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (heads, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let lines = String::from_utf8_lossy(&head)
                    .lines()
                    .skip(1)
                    .filter(|line| !line.is_empty())
                    .map(str::to_ascii_lowercase)
                    .collect();
                let _ = heads.send(lines);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        (addr, received)
    }

    /// The header lines `kind` sends the backend for one plain GET.
    async fn forwarded_header_lines(kind: TargetKind, headers: CompetitorHeaders) -> Vec<String> {
        let (target, lines) = one_get(kind, &options(headers)).await;
        target.stop().await.unwrap_or_else(|e| panic!("{e:#}"));
        lines
    }

    /// Starts `kind` with `opts` and sends it one `GET /x`; returns it, still running, and
    /// the header lines it sent the backend.
    async fn one_get(kind: TargetKind, opts: &TargetOptions) -> (RunningTarget, Vec<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (backend, heads) = recording_backend();
        let target = RunningTarget::start_http(kind, &[backend], opts)
            .await
            .unwrap_or_else(|e| panic!("{e:#} (switchyard is built by `cargo test --workspace`)"));
        let mut client = tokio::net::TcpStream::connect(target.addr())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client
            .write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\nUser-Agent: bench\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Bounded waits: a proxy that never answers fails the test instead of hanging it.
        let mut response = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(30), client.read(&mut response))
            .await
            .unwrap_or_else(|_| panic!("{kind} sent no response"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            response[..n].starts_with(b"HTTP/1.1 200"),
            "{kind}: {:?}",
            &response[..n]
        );
        let lines = heads
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{kind}: no request reached the backend: {e}"));
        (target, lines)
    }

    /// With `--logs on` every HTTP target writes one line for the request, and nothing for
    /// the readiness probe, to its access log file (switchyard's within its writer's tick:
    /// waited for).
    #[tokio::test]
    async fn http_targets_log_each_request_to_a_file_when_asked() {
        let mut opts = options(CompetitorHeaders::Same);
        opts.access_log = true;
        for kind in [
            TargetKind::Switchyard,
            TargetKind::Haproxy,
            TargetKind::Nginx,
        ] {
            let (target, _) = one_get(kind, &opts).await;
            let path = target
                .access_log()
                .unwrap_or_else(|| panic!("{kind} has no access log"))
                .to_path_buf();
            let deadline = Instant::now() + Duration::from_secs(30);
            let log = loop {
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                if log.contains("/x") || Instant::now() > deadline {
                    break log;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            target.stop().await.unwrap_or_else(|e| panic!("{e:#}"));
            let lines: Vec<&str> = log.lines().collect();
            assert_eq!(lines.len(), 1, "{kind}: {log}");
            assert!(lines[0].contains("/x"), "{kind}: {log}");
        }
        opts.access_log = false;
        let (target, _) = one_get(TargetKind::Haproxy, &opts).await;
        assert!(target.access_log().is_none());
        target.stop().await.unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// With `same`, HAProxy and nginx send the backend the headers switchyard sends (and no
    /// others), so that the HTTP bench compares the same work; with `bare`, none of them.
    #[tokio::test]
    async fn competitors_forward_the_headers_switchyard_adds() {
        let names = |lines: &[String]| -> Vec<String> {
            let mut names: Vec<String> = lines
                .iter()
                .filter_map(|line| Some(line.split_once(':')?.0.to_string()))
                .collect();
            names.sort();
            names
        };
        let switchyard =
            forwarded_header_lines(TargetKind::Switchyard, CompetitorHeaders::Same).await;
        assert!(
            switchyard.contains(&"host: app.test".to_string()),
            "{switchyard:?}"
        );
        for kind in [TargetKind::Haproxy, TargetKind::Nginx] {
            let same = forwarded_header_lines(kind, CompetitorHeaders::Same).await;
            assert_eq!(names(&same), names(&switchyard), "{kind}: {same:?}");
            for line in [
                "host: app.test",
                "x-forwarded-for: 127.0.0.1",
                "x-forwarded-proto: http",
                "x-forwarded-host: app.test",
            ] {
                assert!(
                    same.contains(&line.to_string()),
                    "{kind} lacks {line}: {same:?}"
                );
            }
            let bare = forwarded_header_lines(kind, CompetitorHeaders::Bare).await;
            assert!(
                bare.iter().all(|line| !line.starts_with("x-")),
                "{kind}: {bare:?}"
            );
        }
    }
}
