//! `idle`: hold H connections open through a proxy, each after one small
//! echo exchange, and compute the proxy's memory cost per connection from
//! its `VmRSS`: `(RSS_with_conns - RSS_baseline) / H`.
//!
//! The echo backend runs as a separate process (`bench serve-echo`) so that
//! the client fds (here) and the backend fds (there) each stay below the
//! open-file limit; the proxy itself needs two fds per connection. The direct
//! path has no proxy process and is not measured.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{Context, connect, progress};
use crate::backend::EchoProcess;
use crate::sys;
use crate::table::{Better, Row};
use crate::targets::{RunningTarget, TargetKind};

const SCENARIO: &str = "idle";
/// Connections opened and closed before the baseline is taken, so that
/// lazily initialised pools and buffers are in the baseline.
const WARMUP_CONNS: usize = 32;
/// Bound on one connect + exchange.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of the `idle` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    /// Connections held open (the proxy needs two fds for each).
    #[arg(
        id = "idle-conns",
        long = "idle-conns",
        value_name = "N",
        default_value_t = 9000
    )]
    pub conns: usize,
    /// Connections being opened concurrently.
    #[arg(
        id = "idle-open-concurrency",
        long = "idle-open-concurrency",
        value_name = "N",
        default_value_t = 128
    )]
    pub open_concurrency: usize,
    /// Size of the one echo exchange per connection, bytes.
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
        default_value_t = 500
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

/// Runs the scenario on every proxy target of `ctx`.
pub async fn run(ctx: &Context, args: &IdleArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let per_conn = format!("{} conns: RSS per conn (bytes)", args.conns);
    let total = format!("{} conns: RSS total (MiB)", args.conns);
    let hard = sys::nofile_hard_limit()?;
    if (args.conns as u64) * 2 + 100 > hard {
        progress(format!(
            "warning: {} conns need about {} fds in the proxy, the hard limit is {hard}",
            args.conns,
            args.conns * 2 + 100
        ));
    }
    for &target in &ctx.targets {
        if target == TargetKind::Direct {
            continue;
        }
        progress(format!("idle {target}: {} conns", args.conns));
        match measure(ctx, target, args).await {
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
                    "{target} idle: baseline RSS {:.1} MiB, {} conns held",
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
                rows.push(Row::failed(
                    SCENARIO,
                    per_conn.clone(),
                    target,
                    Better::Lower,
                    format!("{e:#}"),
                ));
                rows.push(Row::failed(
                    SCENARIO,
                    total.clone(),
                    target,
                    Better::Lower,
                    format!("{e:#}"),
                ));
            }
        }
    }
    Ok(rows)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn measure(ctx: &Context, target: TargetKind, args: &IdleArgs) -> Result<Measurement> {
    let backend = EchoProcess::spawn(ctx.backend_threads).await?;
    let result = async {
        let running = RunningTarget::start(target, backend.addrs(), &ctx.target_opts).await?;
        let res = measure_running(&running, args).await;
        running.stop().await?;
        res
    }
    .await;
    backend.stop().await?;
    result
}

async fn measure_running(running: &RunningTarget, args: &IdleArgs) -> Result<Measurement> {
    let pid = running.pid().context("proxy has no pid")?;
    let settle = Duration::from_millis(args.settle_ms);
    let size = args.msg_size.max(1);

    // Warm-up connections, closed again before the baseline.
    for _ in 0..WARMUP_CONNS {
        let stream = open_one(running.addr(), size).await?;
        drop(stream);
    }
    tokio::time::sleep(settle).await;
    let baseline = sys::vm_rss_bytes(pid)?;

    // Open H connections with bounded concurrency; each task opens its share.
    let workers = args.open_concurrency.clamp(1, args.conns.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let share = args.conns / workers + usize::from(w < args.conns % workers);
        let addr = running.addr();
        tasks.spawn(async move {
            let mut held = Vec::with_capacity(share);
            let mut errors = Vec::new();
            for _ in 0..share {
                match open_one(addr, size).await {
                    Ok(s) => held.push(s),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            (held, errors)
        });
    }
    let mut held = Vec::with_capacity(args.conns);
    let mut errors = Vec::new();
    while let Some(res) = tasks.join_next().await {
        let (h, e) = res.context("idle open task panicked")?;
        held.extend(h);
        errors.extend(e);
    }
    if held.is_empty() {
        bail!(
            "no connection could be opened: {}",
            errors.first().map_or("?", |s| s.as_str())
        );
    }
    tokio::time::sleep(settle).await;
    let loaded = sys::vm_rss_bytes(pid)?;
    let opened = held.len();
    drop(held);
    Ok(Measurement {
        baseline,
        loaded,
        opened,
        errors: errors.len(),
        first_error: errors.into_iter().next(),
    })
}

/// Opens one connection and does one echo exchange on it.
async fn open_one(addr: SocketAddr, size: usize) -> Result<TcpStream> {
    let mut stream = connect(addr).await?;
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; size];
    tokio::time::timeout(ATTEMPT_TIMEOUT, async {
        stream.write_all(&msg).await?;
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(())
    })
    .await
    .context("echo exchange timed out")?
    .context("echo exchange")?;
    Ok(stream)
}
