//! `latency`: C persistent connections, each doing back-to-back
//! request/response exchanges of a small message with an echo backend.
//! Reports requests per second and latency percentiles (HdrHistogram).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::{Context, connect_many, progress};
use crate::backend::{Backend, BackendKind};
use crate::table::{Better, Row};
use crate::targets::RunningTarget;

const SCENARIO: &str = "latency";

/// Options of the `latency` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct LatencyArgs {
    /// Persistent connections.
    #[arg(
        id = "latency-conns",
        long = "latency-conns",
        value_name = "N",
        default_value_t = 64
    )]
    pub conns: usize,
    /// Measurement window, seconds.
    #[arg(
        id = "latency-secs",
        long = "latency-secs",
        value_name = "SECS",
        default_value_t = 12.0
    )]
    pub secs: f64,
    /// Warm-up before the window, seconds (not recorded).
    #[arg(
        id = "latency-warmup-secs",
        long = "latency-warmup-secs",
        value_name = "SECS",
        default_value_t = 1.0
    )]
    pub warmup_secs: f64,
    /// Request (and response) size, bytes.
    #[arg(
        id = "latency-msg-size",
        long = "latency-msg-size",
        value_name = "BYTES",
        default_value_t = 64
    )]
    pub msg_size: usize,
    /// Upper bound of requests per connection.
    #[arg(
        id = "latency-max-requests",
        long = "latency-max-requests",
        value_name = "N",
        default_value_t = 10_000_000
    )]
    pub max_requests: u64,
}

/// Result of one latency run.
struct Measurement {
    rps: f64,
    hist: Histogram<u64>,
}

fn metrics(args: &LatencyArgs) -> [(String, Better); 4] {
    let c = args.conns;
    let b = args.msg_size;
    [
        (format!("{c} conns x {b} B echo (req/s)"), Better::Higher),
        ("p50 (us)".to_string(), Better::Lower),
        ("p99 (us)".to_string(), Better::Lower),
        ("p99.9 (us)".to_string(), Better::Lower),
    ]
}

/// Runs the scenario on every target of `ctx`.
pub async fn run(ctx: &Context, args: &LatencyArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let names = metrics(args);
    for &target in &ctx.targets {
        let backend = Backend::start(BackendKind::Echo, ctx.backend_threads, 4096)?;
        let result = match RunningTarget::start(target, backend.addrs(), &ctx.target_opts).await {
            Ok(running) => {
                progress(format!("latency {target}: {} conns", args.conns));
                let res = measure(running.addr(), args).await;
                running.stop().await?;
                res
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(m) => {
                let q = |q: f64| m.hist.value_at_quantile(q) as f64 / 1000.0;
                let values = [m.rps, q(0.50), q(0.99), q(0.999)];
                progress(format!(
                    "  -> {:.0} req/s, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
                    values[0], values[1], values[2], values[3]
                ));
                for ((name, better), v) in names.iter().zip(values) {
                    rows.push(Row::ok(SCENARIO, name.clone(), target, v, *better));
                }
            }
            Err(e) => {
                progress(format!("{target}: failed: {e:#}"));
                for (name, better) in &names {
                    rows.push(Row::failed(
                        SCENARIO,
                        name.clone(),
                        target,
                        *better,
                        format!("{e:#}"),
                    ));
                }
            }
        }
    }
    Ok(rows)
}

fn new_histogram() -> Result<Histogram<u64>> {
    // 1 ns .. 60 s, 3 significant digits; values are recorded in ns.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("creating histogram")
}

async fn measure(addr: SocketAddr, args: &LatencyArgs) -> Result<Measurement> {
    let streams = connect_many(addr, args.conns).await?;
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup_secs);
    let deadline = window_start + Duration::from_secs_f64(args.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        let (size, max) = (args.msg_size.max(1), args.max_requests);
        tasks.spawn(conn_loop(stream, size, window_start, deadline, max));
    }
    let mut hist = new_histogram()?;
    while let Some(res) = tasks.join_next().await {
        let h = res.context("latency task panicked")??;
        hist.add(h).context("merging histograms")?;
    }
    let rps = hist.len() as f64 / (deadline - window_start).as_secs_f64();
    Ok(Measurement { rps, hist })
}

/// Request/response loop of one connection, bounded by `deadline` and
/// `max_requests`. Records latencies of requests started in the window.
async fn conn_loop(
    mut stream: TcpStream,
    size: usize,
    window_start: Instant,
    deadline: Instant,
    max_requests: u64,
) -> Result<Histogram<u64>> {
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; size];
    let mut hist = new_histogram()?;
    for _ in 0..max_requests {
        let sent_at = Instant::now();
        if sent_at >= deadline {
            break;
        }
        let exchange = async {
            stream.write_all(&msg).await?;
            stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(())
        };
        match timeout_at(deadline, exchange).await {
            Err(_elapsed) => break,
            Ok(res) => res.context("echo exchange")?,
        }
        if sent_at >= window_start {
            let ns = u64::try_from(sent_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
            hist.saturating_record(ns);
        }
    }
    Ok(hist)
}
