//! `slow`: slow and hostile clients at scale against one switchyard (issue 26, item 5).
//! A quiet phase measures a steady, paced probe load for `--slow-secs`: HTTP keep-alive
//! requests, and new PostgreSQL logins each with a `select 1`. The attack phase runs the
//! same probes while three groups of slow clients are held against the same proxy:
//! slowloris HTTP clients (a request head sent a byte every `--slow-drip-ms`, never
//! finished), PostgreSQL clients that send half a startup packet and stop, and TLS clients
//! that send part of a ClientHello and stop. Each slow client, once cut, connects again,
//! so each group keeps its size for the whole phase; their first connects are spread over
//! one timeout period.
//!
//! The proxy's `timeouts.http_request`, `timeouts.login` and TLS `handshake_timeout` are all
//! `--slow-timeout-secs`; the scenario reports for each group how many were cut and the
//! time from connect to cut (min, median, max), and the probes' p99 under attack against
//! the quiet run (the target: at most 2×). The slow clients come from 127.0.x.y source
//! addresses, at most 500 per address, below the default `max_logins_per_address`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};

use super::conn::{Exchange, Opener, http_get, pg_startup};
use super::connrate::connect_from;
use super::hold::{Probe, histogram};
use super::{Context, progress};
use crate::backend::{Backend, BackendKind};
use crate::child::{self, Helper};
use crate::pg::Cluster;
use crate::sys::{self, free_port};
use crate::table::{Better, Row};
use crate::targets::{PgPooling, RunningTarget, TargetKind, TlsFiles, switchyard_pooling};

const SCENARIO: &str = "slow";
/// Probing before the quiet phase, not counted.
const WARMUP: Duration = Duration::from_secs(2);
/// How long a `slow-clients` helper may take to start.
const HELPER_READY: Duration = Duration::from_secs(30);
/// Slow clients per source address.
const PER_SOURCE: usize = 500;

/// Options of the `slow` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct SlowArgs {
    /// Probe window of each phase, seconds.
    #[arg(
        id = "slow-secs",
        long = "slow-secs",
        value_name = "SECS",
        default_value_t = 20.0
    )]
    pub secs: f64,
    /// Slowloris HTTP clients.
    #[arg(
        id = "slow-http",
        long = "slow-http",
        value_name = "N",
        default_value_t = 2000
    )]
    pub http: usize,
    /// PostgreSQL clients that stop mid-startup.
    #[arg(
        id = "slow-pg",
        long = "slow-pg",
        value_name = "N",
        default_value_t = 2000
    )]
    pub pg: usize,
    /// TLS clients that stop mid-handshake.
    #[arg(
        id = "slow-tls",
        long = "slow-tls",
        value_name = "N",
        default_value_t = 2000
    )]
    pub tls: usize,
    /// The proxy's HTTP request-head, login and TLS handshake timeouts, seconds.
    #[arg(
        id = "slow-timeout-secs",
        long = "slow-timeout-secs",
        value_name = "SECS",
        default_value_t = 5
    )]
    pub timeout_secs: u64,
    /// Pause between the bytes of a slowloris request head, milliseconds.
    #[arg(
        id = "slow-drip-ms",
        long = "slow-drip-ms",
        value_name = "MS",
        default_value_t = 2000
    )]
    pub drip_ms: u64,
    /// HTTP keep-alive probe connections.
    #[arg(
        id = "slow-probe-conns",
        long = "slow-probe-conns",
        value_name = "N",
        default_value_t = 4
    )]
    pub probe_conns: usize,
    /// Pause between two requests of one HTTP probe connection, milliseconds.
    #[arg(
        id = "slow-probe-interval-ms",
        long = "slow-probe-interval-ms",
        value_name = "MS",
        default_value_t = 10
    )]
    pub probe_interval_ms: u64,
    /// PostgreSQL probe workers, each logging in anew and running `select 1`.
    #[arg(
        id = "slow-pg-workers",
        long = "slow-pg-workers",
        value_name = "N",
        default_value_t = 2
    )]
    pub pg_workers: usize,
    /// Pause between two logins of one PostgreSQL probe worker, milliseconds.
    #[arg(
        id = "slow-pg-interval-ms",
        long = "slow-pg-interval-ms",
        value_name = "MS",
        default_value_t = 50
    )]
    pub pg_interval_ms: u64,
    /// Server connections of the PostgreSQL transaction pool.
    #[arg(
        id = "slow-pool-size",
        long = "slow-pool-size",
        value_name = "N",
        default_value_t = 8
    )]
    pub pool_size: usize,
    /// Helper only: the kind of slow client this `slow-clients` process runs.
    #[arg(id = "slow-group", long = "slow-group", value_enum, hide = true)]
    pub group: Option<Slow>,
    /// Helper only: where its clients connect.
    #[arg(id = "slow-group-addr", long = "slow-group-addr", hide = true)]
    pub group_addr: Option<SocketAddr>,
    /// Helper only: how many clients it keeps.
    #[arg(id = "slow-group-conns", long = "slow-group-conns", hide = true)]
    pub group_conns: Option<usize>,
}

/// A kind of slow client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Slow {
    /// A request head a byte at a time, never finished.
    Loris,
    /// Half a PostgreSQL startup packet.
    HalfStartup,
    /// Part of a TLS ClientHello.
    PartialHello,
}

impl Slow {
    fn arg(self) -> &'static str {
        match self {
            Slow::Loris => "loris",
            Slow::HalfStartup => "half-startup",
            Slow::PartialHello => "partial-hello",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Slow::Loris => "slowloris http",
            Slow::HalfStartup => "pg half startup",
            Slow::PartialHello => "tls partial hello",
        }
    }

    /// The third octet of its clients' source addresses (127.0.<this>.<n>).
    fn subnet(self) -> u8 {
        match self {
            Slow::Loris => 2,
            Slow::HalfStartup => 3,
            Slow::PartialHello => 4,
        }
    }
}

/// How a slow connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// The proxy answered (HTTP: with this status), then closed.
    Answered(u16),
    /// The proxy closed it without a word.
    Closed,
    /// Reset, or a write failed.
    Reset,
}

/// What one group of slow clients saw.
#[derive(Default)]
struct GroupResult {
    /// Time from connect to cut of every connection cut during the phase.
    cut_after: Vec<Duration>,
    /// How each was cut.
    how: Vec<Cut>,
    /// Connections not cut within three timeouts.
    not_cut: usize,
    /// Connects that failed.
    connect_errors: usize,
    first_error: Option<String>,
}

/// The proxy's listeners.
struct Listeners {
    http: SocketAddr,
    tls: SocketAddr,
    pg: SocketAddr,
}

/// Runs the scenario (switchyard only).
pub async fn run(ctx: &Context, args: &SlowArgs) -> Result<Vec<Row>> {
    if !ctx.targets.contains(&TargetKind::Switchyard) {
        progress("slow: measures switchyard only; add it to --targets");
        return Ok(Vec::new());
    }
    let dir = tempfile::tempdir().context("temp dir")?;
    let (files, _) = super::tls::certificate(dir.path())?;
    let web = Backend::start(BackendKind::Http, ctx.backend_threads, 4096)?;
    let cluster = Cluster::start(1, args.pool_size * 2 + 20).await?;
    let listeners = Listeners {
        http: free_port()?,
        tls: free_port()?,
        pg: free_port()?,
    };
    let body = config(
        &listeners,
        &files,
        (web.addrs()[0], cluster.address()),
        args,
    );
    let result = async {
        let mut running = RunningTarget::start_switchyard(
            &ctx.target_opts,
            &body,
            &[listeners.http, listeners.tls, listeners.pg],
        )
        .await?;
        let result = match running.pid() {
            Some(pid) => phases(args, &listeners, pid).await,
            None => Err(anyhow::anyhow!("proxy has no pid")),
        };
        if let Some(log) = running.log_tail(5) {
            progress(format!("switchyard log (last lines):\n{log}"));
        }
        let crashed = running.exit_status()?;
        running.stop().await?;
        let mut rows = result?;
        rows.push(match crashed {
            None => Row::ok(
                SCENARIO,
                "proxy still running at the end (1 = yes)",
                TargetKind::Switchyard,
                1.0,
                Better::Higher,
            ),
            Some(status) => Row::failed(
                SCENARIO,
                "proxy still running at the end (1 = yes)",
                TargetKind::Switchyard,
                Better::Higher,
                format!("the proxy exited: {status}"),
            ),
        });
        anyhow::Ok(rows)
    }
    .await;
    cluster.stop().await;
    drop(web);
    result
}

/// The proxy's configuration: an http listener with the request-head timeout, an http
/// listener with TLS and the handshake timeout, a postgres listener (transaction pool)
/// with the login timeout.
fn config(
    l: &Listeners,
    tls: &TlsFiles,
    (web, pg): (SocketAddr, SocketAddr),
    args: &SlowArgs,
) -> String {
    let (auth, pooling) = switchyard_pooling(PgPooling::Transaction {
        size: args.pool_size,
    });
    let t = args.timeout_secs;
    format!(
        r#"[[listener]]
name = "http"
listen = "{http}"
protocol = "http"
pool = "web"
timeouts.http_request = "{t}s"
timeouts.keep_alive = "1h"

[[listener]]
name = "tls"
listen = "{tlsl}"
protocol = "http"
pool = "web"
tls = {{ certs = [{{ cert = "{cert}", key = "{key}" }}], handshake_timeout = "{t}s" }}

[[listener]]
name = "pg"
listen = "{pgl}"
protocol = "postgres"
pool = "pg"
{auth}
timeouts.login = "{t}s"

[[pool]]
name = "web"
servers = [ {{ name = "web", address = "{web}" }} ]

[[pool]]
name = "pg"
servers = [ {{ name = "pg", address = "{pg}" }} ]
{pooling}
"#,
        http = l.http,
        tlsl = l.tls,
        pgl = l.pg,
        cert = tls.cert.display(),
        key = tls.key.display(),
    )
}

async fn phases(args: &SlowArgs, listeners: &Listeners, pid: u32) -> Result<Vec<Row>> {
    let window = Duration::from_secs_f64(args.secs);

    // Uncounted: the first logins open the pool's server connections.
    progress(format!("warm-up: probes for {:.0} s", WARMUP.as_secs_f64()));
    probes(args, listeners, Instant::now() + WARMUP).await?;
    progress(format!(
        "quiet phase: probes for {:.0} s",
        window.as_secs_f64()
    ));
    let cpu = CpuMeter::start(pid)?;
    let quiet = probes(args, listeners, Instant::now() + window).await?;
    let quiet_cpu = cpu.percent()?;

    let groups = [
        (Slow::Loris, args.http, listeners.http),
        (Slow::HalfStartup, args.pg, listeners.pg),
        (Slow::PartialHello, args.tls, listeners.tls),
    ];
    let ramp = Duration::from_secs(args.timeout_secs);
    progress(format!(
        "attack phase: {} slow clients (one helper process per kind), first connects over {:.0} s, then probes for {:.0} s",
        args.http + args.pg + args.tls,
        ramp.as_secs_f64(),
        window.as_secs_f64()
    ));
    let mut helpers = Vec::new();
    for (kind, count, addr) in groups {
        if count == 0 {
            continue;
        }
        let helper = Helper::spawn(
            &[
                "slow-clients".to_string(),
                "--slow-group".to_string(),
                kind.arg().to_string(),
                "--slow-group-addr".to_string(),
                addr.to_string(),
                "--slow-group-conns".to_string(),
                count.to_string(),
                "--slow-timeout-secs".to_string(),
                args.timeout_secs.to_string(),
                "--slow-drip-ms".to_string(),
                args.drip_ms.to_string(),
                "--slow-secs".to_string(),
                args.secs.to_string(),
            ],
            HELPER_READY,
        )
        .await?;
        helpers.push((kind, count, helper));
    }
    let start = Instant::now();
    tokio::time::sleep_until(start + ramp).await;
    let cpu = CpuMeter::start(pid)?;
    let attacked = probes(args, listeners, start + ramp + window).await?;
    let attack_cpu = cpu.percent()?;
    let mut results = Vec::new();
    for (kind, count, mut helper) in helpers {
        let line = helper.ask("result", ramp * 4 + HELPER_READY).await?;
        helper.stop().await?;
        results.push((kind, count, Summary::parse(&line)?));
    }

    let row = |metric: String, value: f64, better| {
        Row::ok(SCENARIO, metric, TargetKind::Switchyard, value, better)
    };
    let mut rows = Vec::new();
    for (name, calm, busy) in [
        ("http keep-alive GET", &quiet.0, &attacked.0),
        ("new pg login + select 1", &quiet.1, &attacked.1),
    ] {
        for (phase, probe) in [("quiet", calm), ("attack", busy)] {
            let mut ok = row(
                format!("{name}, {phase}: requests ok"),
                probe.ok as f64,
                Better::Higher,
            );
            if probe.failed > 0 {
                ok = ok.with_note(format!(
                    "{name}, {phase}: {} failed (first: {})",
                    probe.failed,
                    probe.first_error.as_deref().unwrap_or("?")
                ));
            }
            rows.push(ok);
            rows.push(row(
                format!("{name}, {phase}: p50 (ms)"),
                probe.quantile_ms(0.5),
                Better::Lower,
            ));
            rows.push(row(
                format!("{name}, {phase}: p99 (ms)"),
                probe.quantile_ms(0.99),
                Better::Lower,
            ));
        }
        let quiet_p99 = calm.quantile_ms(0.99);
        if quiet_p99 > 0.0 {
            rows.push(row(
                format!("{name}: p99 attack / quiet (target <= 2)"),
                busy.quantile_ms(0.99) / quiet_p99,
                Better::Lower,
            ));
        }
    }
    rows.push(row(
        "proxy CPU, quiet (% of one core)".to_string(),
        quiet_cpu,
        Better::Lower,
    ));
    rows.push(row(
        "proxy CPU, attack (% of one core)".to_string(),
        attack_cpu,
        Better::Lower,
    ));
    for (kind, count, summary) in results {
        let label = kind.label();
        let mut note = format!("{count} clients, reconnecting when cut; {}", summary.how);
        if summary.connect_errors > 0 {
            note += &format!(
                "; {} connects failed (first: {})",
                summary.connect_errors, summary.first_error
            );
        }
        rows.push(row(format!("{label}: cut"), summary.cut as f64, Better::Higher).with_note(note));
        rows.push(row(
            format!("{label}: held at once (peak)"),
            summary.peak as f64,
            Better::Higher,
        ));
        rows.push(row(
            format!("{label}: not cut within 3x the timeout"),
            summary.not_cut as f64,
            Better::Lower,
        ));
        if summary.cut > 0 {
            for (what, at) in [
                ("min", summary.min),
                ("median", summary.median),
                ("max", summary.max),
            ] {
                rows.push(row(
                    format!("{label}: connect to cut, {what} (s)"),
                    at,
                    Better::Lower,
                ));
            }
        }
    }
    Ok(rows)
}

/// The proxy's CPU time over a window.
struct CpuMeter {
    pid: u32,
    cpu: f64,
    at: Instant,
}

impl CpuMeter {
    fn start(pid: u32) -> Result<Self> {
        Ok(CpuMeter {
            pid,
            cpu: sys::process_cpu_seconds(pid)?,
            at: Instant::now(),
        })
    }

    /// CPU time used since the start, in percent of one core.
    fn percent(&self) -> Result<f64> {
        let used = sys::process_cpu_seconds(self.pid)? - self.cpu;
        Ok(100.0 * used / self.at.elapsed().as_secs_f64().max(1e-9))
    }
}

/// What a group of slow clients saw, as its helper reports it.
#[derive(Debug, PartialEq)]
struct Summary {
    cut: usize,
    not_cut: usize,
    connect_errors: usize,
    peak: usize,
    min: f64,
    median: f64,
    max: f64,
    how: String,
    first_error: String,
}

impl Summary {
    fn of(group: GroupResult, peak: usize) -> Self {
        let mut times: Vec<f64> = group.cut_after.iter().map(Duration::as_secs_f64).collect();
        times.sort_by(f64::total_cmp);
        let mut how = std::collections::BTreeMap::<String, usize>::new();
        for cut in &group.how {
            let name = match cut {
                Cut::Answered(0) => "answered".to_string(),
                Cut::Answered(status) => format!("answered {status}"),
                Cut::Closed => "closed".to_string(),
                Cut::Reset => "reset".to_string(),
            };
            *how.entry(name).or_default() += 1;
        }
        let how: Vec<String> = how.iter().map(|(k, v)| format!("{v} {k}")).collect();
        Summary {
            cut: times.len(),
            not_cut: group.not_cut,
            connect_errors: group.connect_errors,
            peak,
            min: times.first().copied().unwrap_or(0.0),
            median: times.get(times.len() / 2).copied().unwrap_or(0.0),
            max: times.last().copied().unwrap_or(0.0),
            how: how.join(", "),
            first_error: group.first_error.unwrap_or_default(),
        }
    }

    /// One line, tab-separated.
    fn line(&self) -> String {
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        format!(
            "RESULT\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.cut,
            self.not_cut,
            self.connect_errors,
            self.peak,
            self.min,
            self.median,
            self.max,
            clean(&self.how),
            clean(&self.first_error)
        )
    }

    fn parse(line: &str) -> Result<Self> {
        let parse = || -> Option<Self> {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 10 || f[0] != "RESULT" {
                return None;
            }
            Some(Summary {
                cut: f[1].parse().ok()?,
                not_cut: f[2].parse().ok()?,
                connect_errors: f[3].parse().ok()?,
                peak: f[4].parse().ok()?,
                min: f[5].parse().ok()?,
                median: f[6].parse().ok()?,
                max: f[7].parse().ok()?,
                how: f[8].to_string(),
                first_error: f[9].to_string(),
            })
        };
        parse().with_context(|| format!("unexpected slow-clients report {line:?}"))
    }
}

/// Entry point of the hidden `slow-clients` subcommand: starts the group's slow clients
/// at once (first connects spread over one timeout), reports `STARTED`, and answers the
/// request that follows with the group's [`Summary`] once its phase (one timeout plus
/// `--slow-secs`) has ended. A process of its own, so that the attack does not share the
/// probes' runtime.
pub fn clients_main(args: &SlowArgs, threads: usize) -> Result<()> {
    let (Some(kind), Some(addr), Some(count)) = (args.group, args.group_addr, args.group_conns)
    else {
        bail!("slow-clients needs --slow-group, --slow-group-addr and --slow-group-conns");
    };
    let runtime = child::runtime(threads, "slow-clients")?;
    runtime.block_on(async {
        let timeout = Duration::from_secs(args.timeout_secs);
        let drip = Duration::from_millis(args.drip_ms.max(1));
        let start = Instant::now();
        let end = start + timeout + Duration::from_secs_f64(args.secs);
        let held = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..count {
            let delay = timeout.mul_f64(i as f64 / count.max(1) as f64);
            let source = Ipv4Addr::new(127, 0, kind.subnet(), 1 + (i / PER_SOURCE) as u8);
            let (held, peak) = (held.clone(), peak.clone());
            set.spawn(async move {
                tokio::time::sleep_until(start + delay).await;
                slow_client(kind, (source, addr), (timeout, drip, end), (&held, &peak)).await
            });
        }
        let set = Arc::new(tokio::sync::Mutex::new(Some(set)));
        child::serve("STARTED", |_| {
            let (set, peak) = (set.clone(), peak.clone());
            async move {
                let mut group = GroupResult::default();
                if let Some(mut set) = set.lock().await.take() {
                    while let Some(joined) = set.join_next().await {
                        let Ok(one) = joined else { continue };
                        group.cut_after.extend(one.cut_after);
                        group.how.extend(one.how);
                        group.not_cut += one.not_cut;
                        group.connect_errors += one.connect_errors;
                        if group.first_error.is_none() {
                            group.first_error = one.first_error;
                        }
                    }
                }
                Summary::of(group, peak.load(Ordering::Relaxed)).line()
            }
        })
        .await
    })?;
    runtime.shutdown_background();
    Ok(())
}

/// One slow client: connects from `source`, misbehaves until the proxy cuts it, and again,
/// until `end`. The cut time runs from the connect to the first answer, close or reset.
async fn slow_client(
    kind: Slow,
    (source, addr): (Ipv4Addr, SocketAddr),
    (timeout, drip, end): (Duration, Duration, Instant),
    (held, peak): (&AtomicUsize, &AtomicUsize),
) -> GroupResult {
    let mut result = GroupResult::default();
    while Instant::now() < end {
        let stream = match tokio::time::timeout_at(end, connect_from(source, addr)).await {
            Err(_) => break,
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                result.connect_errors += 1;
                if result.first_error.is_none() {
                    result.first_error = Some(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connected = Instant::now();
        let now = held.fetch_add(1, Ordering::Relaxed) + 1;
        peak.fetch_max(now, Ordering::Relaxed);
        let give_up = connected + timeout * 3;
        let outcome =
            tokio::time::timeout_at(give_up.min(end), misbehave(kind, stream, drip)).await;
        held.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(cut) => {
                result.cut_after.push(connected.elapsed());
                result.how.push(cut);
            }
            // Still held when the phase ended: not counted either way.
            Err(_) if Instant::now() >= end => break,
            Err(_) => result.not_cut += 1,
        }
    }
    result
}

/// Does what a slow client of `kind` does until the proxy answers, closes or resets.
async fn misbehave(kind: Slow, mut stream: TcpStream, drip: Duration) -> Cut {
    let first: Vec<u8> = match kind {
        Slow::Loris => Vec::new(),
        Slow::HalfStartup => {
            let startup = pg_startup();
            startup[..startup.len() / 2].to_vec()
        }
        Slow::PartialHello => partial_client_hello(),
    };
    if !first.is_empty() && stream.write_all(&first).await.is_err() {
        return Cut::Reset;
    }
    let head = b"GET /small HTTP/1.1\r\nHost: bench.test\r\nX-Slow: ";
    let mut sent = 0usize;
    let mut next_drip = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        let read = if kind == Slow::Loris {
            tokio::select! {
                read = stream.read(&mut buf) => read,
                () = tokio::time::sleep_until(next_drip) => {
                    let byte = head.get(sent).copied().unwrap_or(b'a');
                    if stream.write_all(&[byte]).await.is_err() {
                        return Cut::Reset;
                    }
                    sent += 1;
                    next_drip += drip;
                    continue;
                }
            }
        } else {
            stream.read(&mut buf).await
        };
        return match read {
            Ok(0) => Cut::Closed,
            Ok(n) => Cut::Answered(http_status(&buf[..n])),
            Err(_) => Cut::Reset,
        };
    }
}

/// The status of an HTTP/1.1 response's first bytes, 0 when they are not one.
fn http_status(bytes: &[u8]) -> u16 {
    bytes
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The first bytes of a TLS 1.2/1.3 ClientHello record announcing 512 bytes: the record
/// and handshake headers, the version and half the random.
fn partial_client_hello() -> Vec<u8> {
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.extend_from_slice(&[0x42; 16]);
    hello
}

/// The two probes until `until`: HTTP keep-alive requests on `--slow-probe-conns`
/// connections, and new PostgreSQL logins with a `select 1` on `--slow-pg-workers`, each
/// paced by its interval.
async fn probes(args: &SlowArgs, listeners: &Listeners, until: Instant) -> Result<(Probe, Probe)> {
    let http = paced(
        listeners.http,
        Opener::plain(Exchange::HttpGet),
        (
            args.probe_conns,
            Duration::from_millis(args.probe_interval_ms.max(1)),
        ),
        until,
        true,
    );
    let pg = paced(
        listeners.pg,
        Opener::plain(Exchange::PgSelect),
        (
            args.pg_workers,
            Duration::from_millis(args.pg_interval_ms.max(1)),
        ),
        until,
        false,
    );
    let (http, pg) = tokio::join!(http, pg);
    let (http, pg) = (http?, pg?);
    progress(format!(
        "  http {} ok, p50 {:.2} ms, p99 {:.2} ms; pg {} ok, p50 {:.2} ms, p99 {:.2} ms",
        http.ok,
        http.quantile_ms(0.5),
        http.quantile_ms(0.99),
        pg.ok,
        pg.quantile_ms(0.5),
        pg.quantile_ms(0.99)
    ));
    Ok((http, pg))
}

/// `workers` loops each doing one exchange per `interval` until `until`: on one kept
/// connection when `keep` (reopened after a failure), else on a new connection each time
/// (the open, login included, is timed).
async fn paced(
    addr: SocketAddr,
    opener: Opener,
    (workers, interval): (usize, Duration),
    until: Instant,
    keep: bool,
) -> Result<Probe> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let opener = opener.clone();
        tasks.spawn(async move {
            let mut micros = histogram()?;
            let (mut ok, mut errors) = (0usize, Vec::new());
            let mut stream = None;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            while Instant::now() < until {
                ticks.tick().await;
                if keep && stream.is_none() {
                    // Opening the kept connection (and its first GET) is not timed.
                    match opener.open(addr).await {
                        Ok(open) => stream = Some(open),
                        Err(e) => {
                            errors.push(format!("{e:#}"));
                            continue;
                        }
                    }
                }
                let started = Instant::now();
                let done = match stream.as_mut() {
                    Some(open) => {
                        tokio::time::timeout(super::conn::ATTEMPT_TIMEOUT, http_get(open))
                            .await
                            .unwrap_or_else(|_| {
                                Err(anyhow::anyhow!("no answer within the timeout"))
                            })
                    }
                    None => opener.open(addr).await.map(drop),
                };
                match done {
                    Ok(()) => {
                        micros.saturating_record(started.elapsed().as_micros() as u64);
                        ok += 1;
                    }
                    Err(e) => {
                        stream = None;
                        errors.push(format!("{e:#}"));
                    }
                }
            }
            anyhow::Ok((micros, ok, errors))
        });
    }
    let mut probe = Probe {
        asked: 0,
        ok: 0,
        failed: 0,
        first_error: None,
        micros: histogram()?,
    };
    while let Some(res) = tasks.join_next().await {
        let (micros, ok, errors) = res.context("probe task panicked")??;
        probe.micros.add(&micros).context("merging histograms")?;
        probe.ok += ok;
        probe.failed += errors.len();
        if probe.first_error.is_none() {
            probe.first_error = errors.into_iter().next();
        }
    }
    probe.asked = probe.ok + probe.failed;
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_round_trip_through_a_line() {
        let group = GroupResult {
            cut_after: vec![Duration::from_millis(5010), Duration::from_millis(4990)],
            how: vec![Cut::Answered(408), Cut::Closed],
            not_cut: 1,
            connect_errors: 2,
            first_error: Some("refused\tnow".to_string()),
        };
        let summary = Summary::of(group, 7);
        assert_eq!((summary.min, summary.max), (4.99, 5.01));
        assert_eq!(summary.how, "1 answered 408, 1 closed");
        let parsed = Summary::parse(&summary.line()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(parsed.first_error, "refused now");
        assert_eq!(
            Summary {
                first_error: summary.first_error.clone(),
                ..parsed
            },
            summary
        );
        assert!(Summary::parse("STARTED").is_err());
    }

    #[test]
    fn statuses_are_read_from_a_response_start() {
        assert_eq!(http_status(b"HTTP/1.1 408 Request Timeout\r\n"), 408);
        assert_eq!(http_status(b"\x15\x03\x03"), 0);
        assert_eq!(http_status(b"HTTP/1.1 "), 0);
    }

    #[test]
    fn the_partial_hello_is_a_handshake_record_cut_short() {
        let hello = partial_client_hello();
        assert_eq!(hello[0], 0x16);
        let announced = u16::from_be_bytes([hello[3], hello[4]]) as usize;
        assert!(hello.len() - 5 < announced);
    }
}
