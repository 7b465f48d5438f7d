//! `idle`: hold H connections open through a proxy, each after one small
//! exchange of its protocol, and compute the proxy's memory cost per connection from
//! the `VmRSS` of its processes: `(RSS_with_conns - RSS_baseline) / H`. The reading is
//! taken `--idle-settle-ms` after the last connection opened: switchyard parks an idle
//! HTTP connection 250 ms after its response and returns freed memory to the system
//! every second, so a reading sooner would count buffers an idle connection no longer
//! holds.
//!
//! Protocols: `tcp` (one echo), `http` (one keep-alive `GET`), `pg-transaction` and
//! `pg-session` (a PostgreSQL login and one `select 1`, through a transaction pool of
//! `--idle-pool-size` server connections or one server connection per client), each
//! optionally over TLS (`--idle-tls`, tcp and http). The peers are those that speak the
//! protocol: HAProxy for tcp, HAProxy and nginx for http, PgBouncer for PostgreSQL.
//!
//! The TCP echo backend runs as a separate process (`bench serve-echo`) so that
//! the client fds (here) and the backend fds (there) each stay below the
//! open-file limit; the proxy itself needs two fds per connection. The direct
//! path has no proxy process and is not measured.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::conn::{Exchange, Opener, open_many};
use super::{Context, progress};
use crate::backend::{Backend, BackendKind, BackendProcess};
use crate::pg::Cluster;
use crate::sys;
use crate::table::{Better, Row};
use crate::targets::{PgPooling, RunningTarget, TargetKind, TargetOptions};

const SCENARIO: &str = "idle";
/// Connections opened and closed before the baseline is taken, so that
/// lazily initialised pools and buffers are in the baseline.
const WARMUP_CONNS: usize = 32;

/// What the idle connections speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IdleProtocol {
    /// Bytes: one echo exchange.
    Tcp,
    /// HTTP/1.1 keep-alive: one `GET /small`.
    Http,
    /// PostgreSQL through a transaction pool: login and one `select 1`.
    PgTransaction,
    /// PostgreSQL in session mode: login and one `select 1`, one server connection each.
    PgSession,
}

impl IdleProtocol {
    /// Connections held when `--idle-conns` is not given: the sizes of the rows
    /// (session mode is bounded by the server's own per-connection processes).
    fn default_conns(self) -> usize {
        match self {
            IdleProtocol::Tcp => 9000,
            IdleProtocol::Http => 4000,
            IdleProtocol::PgTransaction => 2000,
            IdleProtocol::PgSession => 200,
        }
    }

    /// The exchange each connection makes.
    fn exchange(self, msg_size: usize) -> Exchange {
        match self {
            IdleProtocol::Tcp => Exchange::Echo { size: msg_size },
            IdleProtocol::Http => Exchange::HttpGet,
            IdleProtocol::PgTransaction | IdleProtocol::PgSession => Exchange::PgSelect,
        }
    }

    fn label(self) -> &'static str {
        match self {
            IdleProtocol::Tcp => "tcp",
            IdleProtocol::Http => "http",
            IdleProtocol::PgTransaction => "pg-transaction",
            IdleProtocol::PgSession => "pg-session",
        }
    }

    /// Whether `target` speaks this protocol.
    fn measures(self, target: TargetKind, tls: bool) -> bool {
        match (self, target) {
            (_, TargetKind::Direct) => false,
            (_, TargetKind::Switchyard) => true,
            (IdleProtocol::Tcp | IdleProtocol::Http, TargetKind::Haproxy) => true,
            (IdleProtocol::Http, TargetKind::Nginx) => !tls,
            (IdleProtocol::PgTransaction | IdleProtocol::PgSession, TargetKind::Pgbouncer) => !tls,
            _ => false,
        }
    }
}

/// Options of the `idle` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    /// Protocols of the idle connections, comma-separated.
    #[arg(
        id = "idle-protocols",
        long = "idle-protocols",
        value_name = "LIST",
        value_enum,
        value_delimiter = ',',
        default_value = "tcp"
    )]
    pub protocols: Vec<IdleProtocol>,
    /// Connections held open (the proxy needs two fds for each; a transaction pool
    /// fewer). Default per protocol: tcp 9000, http 4000, pg-transaction 2000,
    /// pg-session 200.
    #[arg(id = "idle-conns", long = "idle-conns", value_name = "N")]
    pub conns: Option<usize>,
    /// Terminate TLS on the proxies' listeners (tcp and http; the certificate is made
    /// for the run).
    #[arg(id = "idle-tls", long = "idle-tls")]
    pub tls: bool,
    /// Server connections of the PostgreSQL transaction pool.
    #[arg(
        id = "idle-pool-size",
        long = "idle-pool-size",
        value_name = "N",
        default_value_t = 8
    )]
    pub pool_size: usize,
    /// Connections being opened concurrently.
    #[arg(
        id = "idle-open-concurrency",
        long = "idle-open-concurrency",
        value_name = "N",
        default_value_t = 128
    )]
    pub open_concurrency: usize,
    /// Size of the one echo exchange per tcp connection, bytes.
    #[arg(
        id = "idle-msg-size",
        long = "idle-msg-size",
        value_name = "BYTES",
        default_value_t = 64
    )]
    pub msg_size: usize,
    /// Pause before each RSS reading, milliseconds.
    #[arg(
        id = "idle-settle-ms",
        long = "idle-settle-ms",
        value_name = "MS",
        default_value_t = 2500
    )]
    pub settle_ms: u64,
}

/// Result of one idle run.
struct Measurement {
    baseline: u64,
    loaded: u64,
    opened: usize,
    errors: usize,
    first_error: Option<String>,
}

/// Runs the scenario on every proxy target of `ctx` that speaks each selected protocol.
pub async fn run(ctx: &Context, args: &IdleArgs) -> Result<Vec<Row>> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut opts = ctx.target_opts.clone();
    let mut connector = None;
    if args.tls {
        let (files, client) = super::tls::certificate(dir.path())?;
        opts.tls = Some(files);
        connector = Some(tokio_rustls::TlsConnector::from(Arc::new(client)));
    }
    let hard = sys::nofile_hard_limit()?;
    let mut rows = Vec::new();
    for &protocol in &args.protocols {
        let tls = args.tls && matches!(protocol, IdleProtocol::Tcp | IdleProtocol::Http);
        if args.tls && !tls {
            progress(format!(
                "idle {}: --idle-tls applies to tcp and http only; measured in plaintext",
                protocol.label()
            ));
        }
        let conns = args.conns.unwrap_or_else(|| protocol.default_conns());
        if (conns as u64) * 2 + 100 > hard {
            progress(format!(
                "warning: {conns} conns need about {} fds in the proxy, the hard limit is {hard}",
                conns * 2 + 100
            ));
        }
        let opener = Opener {
            exchange: protocol.exchange(args.msg_size),
            tls: if tls { connector.clone() } else { None },
        };
        let label = format!(
            "{}{}, {conns} conns",
            protocol.label(),
            if tls { " tls" } else { "" }
        );
        let per_conn = format!("{label}: RSS per conn (bytes)");
        let total = format!("{label}: RSS total (MiB)");
        let mut target_opts = opts.clone();
        if !tls {
            target_opts.tls = None;
        }
        for &target in ctx.targets.iter().filter(|t| protocol.measures(**t, tls)) {
            progress(format!("idle {target}: {label}"));
            match measure(ctx, &target_opts, target, args, (protocol, conns), &opener).await {
                Ok(m) => {
                    let opened = m.opened.max(1) as f64;
                    let bytes = (m.loaded as f64 - m.baseline as f64) / opened;
                    progress(format!(
                        "  -> baseline {:.1} MiB, with {} conns {:.1} MiB, {bytes:.0} bytes/conn, {} errors",
                        mib(m.baseline),
                        m.opened,
                        mib(m.loaded),
                        m.errors
                    ));
                    let mut note = format!(
                        "{target} idle {label}: baseline RSS {:.1} MiB, {} conns held",
                        mib(m.baseline),
                        m.opened
                    );
                    if m.errors > 0 {
                        note += &format!(
                            ", {} failed to open (first: {})",
                            m.errors,
                            m.first_error.as_deref().unwrap_or("?")
                        );
                    }
                    rows.push(
                        Row::ok(SCENARIO, per_conn.clone(), target, bytes, Better::Lower)
                            .with_note(note),
                    );
                    rows.push(Row::ok(
                        SCENARIO,
                        total.clone(),
                        target,
                        mib(m.loaded),
                        Better::Lower,
                    ));
                }
                Err(e) => {
                    progress(format!("{target}: failed: {e:#}"));
                    for name in [&per_conn, &total] {
                        rows.push(Row::failed(
                            SCENARIO,
                            name.clone(),
                            target,
                            Better::Lower,
                            format!("{e:#}"),
                        ));
                    }
                }
            }
        }
    }
    Ok(rows)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Starts the protocol's backend and `target` in front of it, and measures.
async fn measure(
    ctx: &Context,
    opts: &TargetOptions,
    target: TargetKind,
    args: &IdleArgs,
    (protocol, conns): (IdleProtocol, usize),
    opener: &Opener,
) -> Result<Measurement> {
    match protocol {
        IdleProtocol::Tcp => {
            let backend = BackendProcess::spawn(ctx.backend_threads).await?;
            let result = async {
                let running = RunningTarget::start(target, backend.addrs(), opts).await?;
                let res = measure_running(&running, args, conns, opener).await;
                running.stop().await?;
                res
            }
            .await;
            backend.stop().await?;
            result
        }
        IdleProtocol::Http => {
            let backend = Backend::start(BackendKind::Http, ctx.backend_threads, 4096)?;
            let running = RunningTarget::start_http(target, backend.addrs(), opts).await?;
            let res = measure_running(&running, args, conns, opener).await;
            running.stop().await?;
            res
        }
        IdleProtocol::PgTransaction | IdleProtocol::PgSession => {
            let (pooling, server_conns) = if protocol == IdleProtocol::PgSession {
                (PgPooling::Session, conns + WARMUP_CONNS)
            } else {
                (
                    PgPooling::Transaction {
                        size: args.pool_size,
                    },
                    args.pool_size,
                )
            };
            let cluster = Cluster::start(1, server_conns + 20).await?;
            let result = async {
                let running =
                    RunningTarget::start_postgres(target, cluster.address(), opts, pooling).await?;
                let res = measure_running(&running, args, conns, opener).await;
                running.stop().await?;
                res
            }
            .await;
            cluster.stop().await;
            result
        }
    }
}

async fn measure_running(
    running: &RunningTarget,
    args: &IdleArgs,
    conns: usize,
    opener: &Opener,
) -> Result<Measurement> {
    let pid = running.pid().context("proxy has no pid")?;
    let settle = Duration::from_millis(args.settle_ms);

    // Warm-up connections, closed again before the baseline.
    for _ in 0..WARMUP_CONNS {
        let stream = opener.open(running.addr()).await?;
        drop(stream);
    }
    tokio::time::sleep(settle).await;
    let baseline = sys::tree_rss_bytes(pid)?;

    let opened = open_many(
        running.addr(),
        opener,
        conns,
        args.open_concurrency,
        usize::MAX,
    )
    .await?;
    if opened.held.is_empty() {
        bail!(
            "no connection could be opened: {}",
            opened.first_error.as_deref().unwrap_or("?")
        );
    }
    tokio::time::sleep(settle).await;
    let loaded = sys::tree_rss_bytes(pid)?;
    Ok(Measurement {
        baseline,
        loaded,
        opened: opened.held.len(),
        errors: opened.errors,
        first_error: opened.first_error,
    })
}
