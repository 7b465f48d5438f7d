//! `throughput`: N parallel connections each streaming bulk data, in both
//! directions. Bytes are counted at the receiving end (the sink backend for
//! uploads, the client for downloads) over a measurement window that starts
//! after a warm-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::{Instant, sleep_until, timeout_at};

use super::{Context, connect_many, progress};
use crate::backend::{Backend, BackendKind};
use crate::table::{Better, Row};
use crate::targets::RunningTarget;

const SCENARIO: &str = "throughput";
const GIB: u64 = 1 << 30;

/// Options of the `throughput` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct ThroughputArgs {
    /// Parallel connection counts to measure (comma separated).
    #[arg(
        id = "throughput-conns",
        long = "throughput-conns",
        value_name = "N,..",
        value_delimiter = ',',
        default_value = "2,8"
    )]
    pub conns: Vec<usize>,
    /// Measurement window per run, seconds.
    #[arg(
        id = "throughput-secs",
        long = "throughput-secs",
        value_name = "SECS",
        default_value_t = 8.0
    )]
    pub secs: f64,
    /// Warm-up before the window, seconds (not counted).
    #[arg(
        id = "throughput-warmup-secs",
        long = "throughput-warmup-secs",
        value_name = "SECS",
        default_value_t = 1.0
    )]
    pub warmup_secs: f64,
    /// Size of each read/write, KiB.
    #[arg(
        id = "throughput-chunk-kib",
        long = "throughput-chunk-kib",
        value_name = "KIB",
        default_value_t = 256
    )]
    pub chunk_kib: usize,
    /// Upper bound of data sent per run (all connections together), GiB.
    #[arg(
        id = "throughput-max-gib",
        long = "throughput-max-gib",
        value_name = "GIB",
        default_value_t = 200
    )]
    pub max_gib: u64,
}

/// Data direction of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Client writes, backend (sink) reads.
    Upload,
    /// Backend (source) writes, client reads.
    Download,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Upload => "upload client->backend",
            Direction::Download => "download backend->client",
        }
    }
}

fn metric(dir: Direction, conns: usize) -> String {
    format!("{}, {conns} conns (Gb/s)", dir.label())
}

/// Runs the scenario on every target of `ctx`.
pub async fn run(ctx: &Context, args: &ThroughputArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &target in &ctx.targets {
        for dir in [Direction::Upload, Direction::Download] {
            let kind = match dir {
                Direction::Upload => BackendKind::Sink,
                Direction::Download => BackendKind::Source,
            };
            let backend = Backend::start(kind, ctx.backend_threads, args.chunk_kib * 1024)?;
            let running =
                match RunningTarget::start(target, backend.addrs(), &ctx.target_opts).await {
                    Ok(r) => r,
                    Err(e) => {
                        progress(format!("{target}: unavailable: {e:#}"));
                        for &n in &args.conns {
                            rows.push(Row::failed(
                                SCENARIO,
                                metric(dir, n),
                                target,
                                Better::Higher,
                                format!("{e:#}"),
                            ));
                        }
                        continue;
                    }
                };
            for &n in &args.conns {
                progress(format!("throughput {target}: {}, {n} conns", dir.label()));
                let res = measure(dir, running.addr(), n, args, &backend).await;
                rows.push(match res {
                    Ok(gbps) => {
                        progress(format!("  -> {gbps:.2} Gb/s"));
                        Row::ok(SCENARIO, metric(dir, n), target, gbps, Better::Higher)
                    }
                    Err(e) => Row::failed(
                        SCENARIO,
                        metric(dir, n),
                        target,
                        Better::Higher,
                        format!("{e:#}"),
                    ),
                });
            }
            running.stop().await?;
        }
    }
    Ok(rows)
}

/// One run: `n` connections for warm-up + window; returns Gb/s.
async fn measure(
    dir: Direction,
    addr: SocketAddr,
    n: usize,
    args: &ThroughputArgs,
    backend: &Backend,
) -> Result<f64> {
    if n == 0 {
        bail!("connection count must be positive");
    }
    let streams = connect_many(addr, n).await?;
    let chunk = args.chunk_kib.max(1) * 1024;
    let max_bytes_per_conn = args.max_gib * GIB / n as u64;
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup_secs);
    let deadline = window_start + Duration::from_secs_f64(args.secs);
    let client_received = Arc::new(AtomicU64::new(0));

    let mut tasks = tokio::task::JoinSet::new();
    for mut stream in streams {
        let client_received = client_received.clone();
        tasks.spawn(async move {
            let mut buf = vec![0x5au8; chunk];
            let mut moved: u64 = 0;
            while moved < max_bytes_per_conn {
                let step = match dir {
                    Direction::Upload => timeout_at(deadline, stream.write_all(&buf))
                        .await
                        .map(|r| r.map(|()| chunk)),
                    Direction::Download => timeout_at(deadline, stream.read(&mut buf)).await,
                };
                match step {
                    Err(_elapsed) => break,
                    Ok(Err(e)) => return Err(anyhow::Error::new(e).context("stream I/O")),
                    Ok(Ok(0)) => bail!("unexpected end of stream"),
                    Ok(Ok(k)) => {
                        moved += k as u64;
                        if dir == Direction::Download {
                            client_received.fetch_add(k as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            Ok(())
        });
    }

    let counter = || match dir {
        Direction::Upload => backend.bytes_received(),
        Direction::Download => client_received.load(Ordering::Relaxed),
    };
    sleep_until(window_start).await;
    let (c0, t0) = (counter(), Instant::now());
    sleep_until(deadline).await;
    let (c1, t1) = (counter(), Instant::now());

    while let Some(res) = tasks.join_next().await {
        res.context("stream task panicked")??;
    }
    let secs = (t1 - t0).as_secs_f64();
    Ok((c1 - c0) as f64 * 8.0 / secs / 1e9)
}
