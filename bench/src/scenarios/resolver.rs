//! `resolver`: what a pool whose servers a Redis resolver gives (`resolver`, `key =
//! "{host}"`) costs next to a static pool of the same HTTP backend, in one run and one
//! switchyard process (a listener each, so both pools have the same workers). With the key
//! cached: keep-alive GETs driven by wrk (the `http` options), and one GET per new
//! connection (the `connrate` loop and options), the two pools in turn for a few rounds so
//! that other load on the machine weighs on both alike. Then the first request of each of many
//! distinct new keys, each a lookup in a local `redis-server`, against requests of a cached
//! key on new connections: their difference is the cost of a cold lookup. `direct` gives the
//! backend's own figures for the first two; other targets have no resolvers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::connrate::{ConnrateArgs, Exchange};
use super::http::HttpArgs;
use super::{Context, connect, median, progress};
use crate::backend::{Backend, BackendKind};
use crate::redis::Redis;
use crate::sys::process_cpu_seconds;
use crate::table::{Better, Row};
use crate::targets::{RESOLVER_PREFIX, RunningTarget, TargetKind};

const SCENARIO: &str = "resolver";

/// The key every throughput request asks for (cached after the first).
const CACHED: &str = "cached.bench";

/// Options of the `resolver` scenario (with those of `http` and `connrate`).
#[derive(clap::Args, Clone, Debug)]
pub struct ResolverArgs {
    /// Distinct new keys, each asked once, for the cold-lookup latency.
    #[arg(
        id = "resolver-cold-keys",
        long = "resolver-cold-keys",
        value_name = "N",
        default_value_t = 2000
    )]
    pub cold_keys: usize,
    /// redis-server binary.
    #[arg(
        id = "redis-bin",
        long = "redis-bin",
        default_value = "/usr/bin/redis-server"
    )]
    pub redis: PathBuf,
    /// Rounds of the static and the resolved pool in turn (each round runs wrk and the
    /// connection loop on both); the figures are the rounds' medians.
    #[arg(
        id = "resolver-rounds",
        long = "resolver-rounds",
        value_name = "N",
        default_value_t = 3
    )]
    pub rounds: usize,
}

/// The `i`-th key asked for once.
fn cold_key(i: usize) -> String {
    format!("k{i}.cold.bench")
}

/// Reads one response to a GET: the head, then its `Content-Length` bytes of body; an
/// error unless the status is 200.
async fn read_response(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        let status = head.lines().next().unwrap_or_default().to_string();
        return Err(std::io::Error::other(format!("answered {status}")));
    }
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no content-length"))?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// One `GET /small` with `Host: host` on a connection (then closed by the client).
fn get_small(host: &str) -> impl Exchange {
    let request: Arc<[u8]> = format!("GET /small HTTP/1.1\r\nHost: {host}\r\n\r\n")
        .into_bytes()
        .into();
    move |mut stream: TcpStream| {
        let request = request.clone();
        async move {
            stream.write_all(&request).await?;
            read_response(&mut stream).await
        }
    }
}

/// Requests per second of `wrk` with keep-alive connections, for the cached key.
async fn keep_alive(addr: SocketAddr, http: &HttpArgs) -> Result<f64> {
    let host = vec![format!("Host: {CACHED}")];
    let result = super::http::wrk(addr, "small", &host, http).await?;
    Ok(result.rps)
}

/// Requests per second with a new connection each, for the cached key.
async fn new_connections(addr: SocketAddr, connrate: &ConnrateArgs) -> Result<f64> {
    let (rate, counts) = super::connrate::measure(addr, connrate, get_small(CACHED)).await?;
    if counts.errors > 0 {
        bail!(
            "{} failed requests, the first: {}",
            counts.errors,
            counts.first_error.unwrap_or_default()
        );
    }
    Ok(rate)
}

/// The median and 99th percentile, in microseconds, of one request on a new connection
/// for each of `hosts`, one after the other.
async fn latencies(addr: SocketAddr, hosts: impl Iterator<Item = String>) -> Result<[f64; 2]> {
    let mut micros = Vec::new();
    for host in hosts {
        let started = Instant::now();
        let stream = connect(addr).await?;
        get_small(&host)
            .run(stream)
            .await
            .with_context(|| format!("GET for {host}"))?;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
    }
    if micros.is_empty() {
        bail!("no request");
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
    Ok([at(0.50), at(0.99)])
}

/// A figure measured on the static and the resolved pool in each round.
struct Figure {
    /// What was measured, e.g. `GET /small, 64 keep-alive conns`.
    label: String,
    /// Its unit, e.g. `req/s`.
    unit: &'static str,
    /// Which way is better.
    better: Better,
}

impl Figure {
    /// The figures of a round, in the order [`round`] gives them: keep-alive requests per
    /// second, the proxy's CPU time per keep-alive request, new-connection requests per
    /// second.
    fn all(http: &HttpArgs, connrate: &ConnrateArgs) -> [Self; 3] {
        let keep_alive = format!("GET /small, {} keep-alive conns", http.conns);
        let figure = |label: String, unit, better| Figure {
            label,
            unit,
            better,
        };
        [
            figure(keep_alive.clone(), "req/s", Better::Higher),
            figure(
                format!("{keep_alive}, proxy CPU per request"),
                "us",
                Better::Lower,
            ),
            figure(
                format!("GET /small, new conn each, {} workers", connrate.workers),
                "req/s",
                Better::Higher,
            ),
        ]
    }

    /// The metric of the static pool (and of `direct`).
    fn fixed(&self) -> String {
        format!("{} ({})", self.label, self.unit)
    }

    /// The rows of switchyard for this figure: the static pool, the resolved pool and
    /// resolved / static (the median of the rounds').
    fn rows(&self, values: Result<[f64; 3], String>) -> impl Iterator<Item = Row> + '_ {
        let metrics = [
            self.fixed(),
            format!("{}, resolved pool ({})", self.label, self.unit),
            format!("{}, resolved / static (x)", self.label),
        ];
        let values = match values {
            Ok(values) => values.map(Ok),
            Err(why) => std::array::from_fn(|_| Err(why.clone())),
        };
        (metrics.into_iter().zip(values))
            .map(|(metric, value)| switchyard_row(metric, self.better, value))
    }
}

/// A row of switchyard's.
fn switchyard_row(metric: impl Into<String>, better: Better, value: Result<f64, String>) -> Row {
    let value = value.map_err(anyhow::Error::msg);
    Row::measured(SCENARIO, metric, TargetKind::Switchyard, better, value)
}

/// Runs the scenario: `direct` once; switchyard's static and resolved pools side by side,
/// in alternating rounds, then the lookup latencies.
pub async fn run(
    ctx: &Context,
    args: &ResolverArgs,
    http: &HttpArgs,
    connrate: &ConnrateArgs,
) -> Result<Vec<Row>> {
    let backend = Backend::start(BackendKind::Http, ctx.backend_threads, 4096)?;
    let server = backend.addrs()[0];
    let redis = Redis::start(&args.redis).await?;
    let answer = format!(r#"{{"servers":[{{"address":"{server}"}}]}}"#);
    let keys = std::iter::once(CACHED.to_string()).chain((0..args.cold_keys).map(cold_key));
    let pairs: Vec<(String, String)> = keys
        .map(|key| (format!("{RESOLVER_PREFIX}{key}"), answer.clone()))
        .collect();
    redis.set_all(&pairs).await?;
    progress(format!(
        "resolver: {} answers in redis at {}",
        pairs.len(),
        redis.addr
    ));
    let figures = Figure::all(http, connrate);
    let mut rows = Vec::new();
    for &target in &ctx.targets {
        match target {
            TargetKind::Direct => {
                // The backend runs in this process: no CPU time of its own to report.
                progress(format!("resolver {target}: the backend itself"));
                let [keep_alive_figure, _, new_conns_figure] = &figures;
                let measured = [
                    (keep_alive_figure, keep_alive(server, http).await),
                    (new_conns_figure, new_connections(server, connrate).await),
                ];
                rows.extend(measured.map(|(figure, value)| {
                    Row::measured(SCENARIO, figure.fixed(), target, figure.better, value)
                }));
            }
            TargetKind::Switchyard => {
                let compared = compare(ctx, args, http, connrate, server, redis.addr).await;
                rows.extend(Compared::rows(compared, &figures));
            }
            other => progress(format!("resolver: {other} has no resolvers; not measured")),
        }
    }
    Ok(rows)
}

/// What switchyard measured: per figure of [`Figure::all`], the static and the resolved
/// pool's (medians of the rounds) and resolved / static (the median of the rounds'
/// ratios); then the first request of a new key and of the cached key (p50, p99).
struct Compared {
    figures: [[f64; 3]; 3],
    cold: [f64; 2],
    warm: [f64; 2],
}

/// Starts switchyard with both pools, each on a listener of its own in one process (equal
/// work: the same workers, allocator and backend connections' machinery), and measures
/// them in `args.rounds` rounds, each pool in turn in each, so that other load on the
/// machine weighs on both alike; then the lookup latencies on the resolved pool.
async fn compare(
    ctx: &Context,
    args: &ResolverArgs,
    http: &HttpArgs,
    connrate: &ConnrateArgs,
    server: SocketAddr,
    redis: SocketAddr,
) -> Result<Compared> {
    let target = TargetKind::Switchyard;
    let (running, fixed) = RunningTarget::start_resolved(target, server, redis, &ctx.target_opts)
        .await
        .context("switchyard with the static and the resolved pool")?;
    let pid = running.pid().context("switchyard has no pid")?;
    let measured = measure(args, http, connrate, pid, [fixed, running.addr()]).await;
    if let Err(e) = running.stop().await {
        progress(format!("resolver {target}: stopping switchyard: {e:#}"));
    }
    measured
}

/// The figures of the pool behind the listener at `addr` in one round (see
/// [`Figure::all`]); `pid` is switchyard's, whose CPU time the round reads.
async fn round(
    pid: u32,
    addr: SocketAddr,
    http: &HttpArgs,
    connrate: &ConnrateArgs,
) -> Result<[f64; 3]> {
    let cpu_before = process_cpu_seconds(pid)?;
    let keep_alive = keep_alive(addr, http).await?;
    let cpu = process_cpu_seconds(pid)? - cpu_before;
    let requests = keep_alive * http.secs.max(1) as f64;
    let new_conns = new_connections(addr, connrate).await?;
    Ok([keep_alive, cpu / requests.max(1.0) * 1e6, new_conns])
}

/// The rounds, then the lookup latencies, for [`compare`]; `pools` are the listeners of
/// the static and the resolved pool of switchyard's process `pid`.
async fn measure(
    args: &ResolverArgs,
    http: &HttpArgs,
    connrate: &ConnrateArgs,
    pid: u32,
    pools: [SocketAddr; 2],
) -> Result<Compared> {
    let rounds = args.rounds.max(1);
    // Per round, per pool (static, resolved): the figures.
    let mut measured: Vec<[[f64; 3]; 2]> = Vec::new();
    for number in 1..=rounds {
        // The pools take turns going first, so that neither always follows the other.
        let order = if number % 2 == 1 { [0, 1] } else { [1, 0] };
        let mut pair = [[0.0; 3]; 2];
        for pool in order {
            pair[pool] = round(pid, pools[pool], http, connrate).await?;
        }
        let [[ka_s, cpu_s, nc_s], [ka_r, cpu_r, nc_r]] = pair;
        progress(format!(
            "resolver switchyard: round {number} of {rounds} (static, resolved): keep-alive {ka_s:.0}, {ka_r:.0} req/s at {cpu_s:.1}, {cpu_r:.1} us CPU each; new conn each {nc_s:.0}, {nc_r:.0} req/s"
        ));
        measured.push(pair);
    }
    let figures = std::array::from_fn(|figure| {
        let of = |pick: &dyn Fn(&[[f64; 3]; 2]) -> f64| median(measured.iter().map(pick));
        [
            of(&|pair| pair[0][figure]),
            of(&|pair| pair[1][figure]),
            of(&|pair| pair[1][figure] / pair[0][figure]),
        ]
    });
    let [_, resolved] = pools;
    progress(format!(
        "resolver switchyard: {} new keys, then the cached key as often",
        args.cold_keys
    ));
    let cold = latencies(resolved, (0..args.cold_keys).map(cold_key)).await?;
    let warm = latencies(
        resolved,
        std::iter::repeat_n(CACHED.to_string(), args.cold_keys),
    )
    .await?;
    Ok(Compared {
        figures,
        cold,
        warm,
    })
}

impl Compared {
    /// switchyard's rows: its figures, or each failed with why.
    fn rows(compared: Result<Self>, figures: &[Figure; 3]) -> Vec<Row> {
        let (values, latencies) = match compared {
            Ok(c) => (
                c.figures.map(Ok),
                [c.cold, c.warm].concat().into_iter().map(Ok).collect(),
            ),
            Err(e) => {
                let why = format!("{e:#}");
                (std::array::from_fn(|_| Err(why.clone())), vec![Err(why); 4])
            }
        };
        let latency_metrics = [
            "first GET of a new key, p50 (us)",
            "first GET of a new key, p99 (us)",
            "GET of a cached key, new conn, p50 (us)",
            "GET of a cached key, new conn, p99 (us)",
        ];
        figures
            .iter()
            .zip(values)
            .flat_map(|(figure, values)| figure.rows(values))
            .chain(
                latency_metrics
                    .into_iter()
                    .zip(latencies)
                    .map(|(metric, value)| switchyard_row(metric, Better::Lower, value)),
            )
            .collect()
    }
}
