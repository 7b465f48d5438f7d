//! `hold`: many idle connections of three protocols held through one switchyard at once
//! (issue 26, item 2: 9,000 TCP, 9,000 HTTP keep-alive and 4,000 PostgreSQL clients),
//! while new connections are probed: fresh HTTP requests on new connections and new
//! PostgreSQL logins with a `select 1`, measured on the idle proxy first and again while
//! everything is held. Then each held connection makes its exchange once more (they still
//! work), and a `max_connections` phase shows what the client past a listener's limit gets.
//!
//! File descriptors: a process may have at most its hard `RLIMIT_NOFILE` open (20,000 on
//! the machine the issue names, and it cannot be raised there). The proxy needs two per
//! TCP connection (client and server side), one per HTTP keep-alive or pooled PostgreSQL
//! client, plus its server connections: more than one process may hold for the issue's
//! numbers. The bench says what it asked for, the limits in force, and how many
//! connections each protocol got; a proxy that runs out must keep running and keep the
//! connections it has. The client side is split over helper processes (`bench
//! hold-clients`, one per protocol), the echo backend is its own process, as in `idle`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::conn::{Exchange, Held, Opener, open_many};
use super::{Context, progress};
use crate::backend::{Backend, BackendKind, BackendProcess};
use crate::child::{self, Helper};
use crate::pg::Cluster;
use crate::sys::{self, free_port};
use crate::table::{Better, Row};
use crate::targets::{PgPooling, RunningTarget, TargetKind, switchyard_pooling};

const SCENARIO: &str = "hold";
/// How long a client group may take to open its connections.
const OPEN_TIMEOUT: Duration = Duration::from_secs(900);
/// A probe stops after this many failed attempts (each may wait its whole timeout).
const PROBE_MAX_FAILURES: usize = 20;
/// Probe connections made and not counted before the first probe.
const WARMUP: usize = 32;
/// How long the client past `max_connections` is watched before a slot is freed.
const OVER_LIMIT_WAIT: Duration = Duration::from_secs(3);

/// A protocol of held connections, each group opened by its own helper process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// Bytes through a `tcp` listener to the echo backend: one 64-byte echo.
    Tcp,
    /// HTTP/1.1 keep-alive: one `GET /small`.
    Http,
    /// PostgreSQL through a transaction pool: login and one `select 1`.
    Pg,
}

impl Group {
    /// The exchange each connection of the group makes.
    fn exchange(self) -> Exchange {
        match self {
            Group::Tcp => Exchange::Echo { size: 64 },
            Group::Http => Exchange::HttpGet,
            Group::Pg => Exchange::PgSelect,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Group::Tcp => "tcp",
            Group::Http => "http keep-alive",
            Group::Pg => "pg (transaction pool)",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Group::Tcp => "tcp",
            Group::Http => "http",
            Group::Pg => "pg",
        }
    }
}

/// Options of the `hold` scenario (and of its `hold-clients` helpers).
#[derive(clap::Args, Clone, Debug)]
pub struct HoldArgs {
    /// TCP connections to hold.
    #[arg(
        id = "hold-tcp",
        long = "hold-tcp",
        value_name = "N",
        default_value_t = 9000
    )]
    pub tcp: usize,
    /// HTTP keep-alive connections to hold.
    #[arg(
        id = "hold-http",
        long = "hold-http",
        value_name = "N",
        default_value_t = 9000
    )]
    pub http: usize,
    /// PostgreSQL clients to hold (transaction pool).
    #[arg(
        id = "hold-pg",
        long = "hold-pg",
        value_name = "N",
        default_value_t = 4000
    )]
    pub pg: usize,
    /// Server connections of the PostgreSQL transaction pool.
    #[arg(
        id = "hold-pool-size",
        long = "hold-pool-size",
        value_name = "N",
        default_value_t = 8
    )]
    pub pool_size: usize,
    /// Connections of one group being opened concurrently.
    #[arg(
        id = "hold-open-concurrency",
        long = "hold-open-concurrency",
        value_name = "N",
        default_value_t = 128
    )]
    pub open_concurrency: usize,
    /// A group stops opening after this many failed attempts.
    #[arg(
        id = "hold-max-failures",
        long = "hold-max-failures",
        value_name = "N",
        default_value_t = 256
    )]
    pub max_failures: usize,
    /// Fresh HTTP requests, each on a new connection, per probe.
    #[arg(
        id = "hold-probe-http",
        long = "hold-probe-http",
        value_name = "N",
        default_value_t = 1000
    )]
    pub probe_http: usize,
    /// New PostgreSQL logins with a `select 1`, per probe.
    #[arg(
        id = "hold-probe-pg",
        long = "hold-probe-pg",
        value_name = "N",
        default_value_t = 200
    )]
    pub probe_pg: usize,
    /// Probe attempts in flight at once.
    #[arg(
        id = "hold-probe-concurrency",
        long = "hold-probe-concurrency",
        value_name = "N",
        default_value_t = 4
    )]
    pub probe_concurrency: usize,
    /// `max_connections` of the limited listeners (one http, one postgres).
    #[arg(
        id = "hold-limit",
        long = "hold-limit",
        value_name = "N",
        default_value_t = 100
    )]
    pub limit: usize,
    /// Pause before each RSS and descriptor reading, milliseconds.
    #[arg(
        id = "hold-settle-ms",
        long = "hold-settle-ms",
        value_name = "MS",
        default_value_t = 2500
    )]
    pub settle_ms: u64,
    /// Helper only: the group this `hold-clients` process opens.
    #[arg(id = "hold-group", long = "hold-group", value_enum, hide = true)]
    pub group: Option<Group>,
    /// Helper only: where the group connects.
    #[arg(id = "hold-group-addr", long = "hold-group-addr", hide = true)]
    pub group_addr: Option<SocketAddr>,
    /// Helper only: how many connections the group opens.
    #[arg(id = "hold-group-conns", long = "hold-group-conns", hide = true)]
    pub group_conns: Option<usize>,
}

/// The proxy's listeners.
struct Listeners {
    tcp: SocketAddr,
    http: SocketAddr,
    pg: SocketAddr,
    http_limited: SocketAddr,
    pg_limited: SocketAddr,
}

impl Listeners {
    fn of(&self, group: Group) -> SocketAddr {
        match group {
            Group::Tcp => self.tcp,
            Group::Http => self.http,
            Group::Pg => self.pg,
        }
    }
}

/// What one probe measured: exchanges (with `hold`, each on a new connection, timed from
/// the connect), how many succeeded and why the others failed.
pub(super) struct Probe {
    /// Exchanges asked for.
    pub(super) asked: usize,
    /// Exchanges that succeeded.
    pub(super) ok: usize,
    /// Exchanges that failed.
    pub(super) failed: usize,
    /// The first failure.
    pub(super) first_error: Option<String>,
    /// Latency of each success, microseconds.
    pub(super) micros: Histogram<u64>,
}

impl Probe {
    /// The latency at quantile `q`, milliseconds.
    pub(super) fn quantile_ms(&self, q: f64) -> f64 {
        self.micros.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs the scenario (switchyard only: the other targets are not asked to hold three
/// protocols in one process).
pub async fn run(ctx: &Context, args: &HoldArgs) -> Result<Vec<Row>> {
    if !ctx.targets.contains(&TargetKind::Switchyard) {
        progress("hold: measures switchyard only; add it to --targets");
        return Ok(Vec::new());
    }
    let echo = BackendProcess::spawn(ctx.backend_threads).await?;
    let web = Backend::start(BackendKind::Http, ctx.backend_threads, 4096)?;
    let result = async {
        let cluster = Cluster::start(1, args.pool_size * 2 + 20).await?;
        let result = with_backends(ctx, args, echo.addrs()[0], web.addrs()[0], &cluster).await;
        cluster.stop().await;
        result
    }
    .await;
    echo.stop().await?;
    drop(web);
    result
}

/// The proxy's configuration: a tcp, an http and a postgres listener (transaction pool)
/// with timeouts longer than the run, and an http and a postgres listener limited to
/// `limit` connections.
fn config(
    l: &Listeners,
    (echo, web, pg): (SocketAddr, SocketAddr, SocketAddr),
    pool_size: usize,
    limit: usize,
) -> String {
    let (auth, pooling) = switchyard_pooling(PgPooling::Transaction { size: pool_size });
    format!(
        r#"[[listener]]
name = "tcp"
listen = "{tcp}"
protocol = "tcp"
pool = "echo"
timeouts.client = "1h"

[[listener]]
name = "http"
listen = "{http}"
protocol = "http"
pool = "web"
timeouts.client = "1h"
timeouts.keep_alive = "1h"

[[listener]]
name = "pg"
listen = "{pgl}"
protocol = "postgres"
pool = "pg"
{auth}
timeouts.client = "1h"

[[listener]]
name = "http-limited"
listen = "{http_limited}"
protocol = "http"
pool = "web"
max_connections = {limit}
timeouts.keep_alive = "1h"

[[listener]]
name = "pg-limited"
listen = "{pg_limited}"
protocol = "postgres"
pool = "pg"
{auth}
max_connections = {limit}

[[pool]]
name = "echo"
servers = [ {{ name = "echo", address = "{echo}" }} ]
timeouts.server = "1h"

[[pool]]
name = "web"
servers = [ {{ name = "web", address = "{web}" }} ]

[[pool]]
name = "pg"
servers = [ {{ name = "pg", address = "{pg}" }} ]
{pooling}
"#,
        tcp = l.tcp,
        http = l.http,
        pgl = l.pg,
        http_limited = l.http_limited,
        pg_limited = l.pg_limited,
    )
}

async fn with_backends(
    ctx: &Context,
    args: &HoldArgs,
    echo: SocketAddr,
    web: SocketAddr,
    cluster: &Cluster,
) -> Result<Vec<Row>> {
    let listeners = Listeners {
        tcp: free_port()?,
        http: free_port()?,
        pg: free_port()?,
        http_limited: free_port()?,
        pg_limited: free_port()?,
    };
    let body = config(
        &listeners,
        (echo, web, cluster.address()),
        args.pool_size,
        args.limit,
    );
    let mut running = RunningTarget::start_switchyard(
        &ctx.target_opts,
        &body,
        &[
            listeners.tcp,
            listeners.http,
            listeners.pg,
            listeners.http_limited,
            listeners.pg_limited,
        ],
    )
    .await?;
    let result = hold(args, &listeners, &mut running).await;
    if let Some(log) = running.log_tail(5) {
        progress(format!("switchyard log (last lines):\n{log}"));
    }
    running.stop().await?;
    result
}

async fn hold(
    args: &HoldArgs,
    listeners: &Listeners,
    running: &mut RunningTarget,
) -> Result<Vec<Row>> {
    let pid = running.pid().context("proxy has no pid")?;
    let settle = Duration::from_millis(args.settle_ms);
    let mut rows = Vec::new();
    let row = |metric: &str, value: f64, better| {
        Row::ok(SCENARIO, metric, TargetKind::Switchyard, value, better)
    };

    let proxy_limit = sys::nofile_limit_of(pid)?;
    let groups = [
        (Group::Pg, args.pg),
        (Group::Http, args.http),
        (Group::Tcp, args.tcp),
    ];
    let need = 2 * args.tcp + args.http + args.pg + args.open_concurrency + args.pool_size + 64;
    let limits = format!(
        "proxy RLIMIT_NOFILE {proxy_limit} (inherited; the hard limit cannot be raised here), \
         bench {}; asked: {} tcp + {} http + {} pg need about {need} descriptors in the proxy; \
         each client group in its own process",
        sys::nofile_hard_limit()?,
        args.tcp,
        args.http,
        args.pg
    );
    progress(&limits);
    println!("hold: {limits}");

    // Probes on the idle proxy.
    tokio::time::sleep(settle).await;
    let idle_rss = sys::tree_rss_bytes(pid)?;
    let idle_fds = sys::open_fds(pid)?;
    // Uncounted: the first connections fill the pools (server connections, buffers).
    for (addr, exchange) in [
        (listeners.http, Exchange::HttpGet),
        (listeners.pg, Exchange::PgSelect),
    ] {
        probe(
            addr,
            Opener::plain(exchange),
            WARMUP,
            args.probe_concurrency,
        )
        .await?;
    }
    progress("probing the idle proxy");
    let before = probes(args, listeners).await?;

    // Every group held, each by its own helper process.
    let mut helpers = Vec::new();
    let mut held = Vec::new();
    for (group, conns) in groups {
        if conns == 0 {
            continue;
        }
        progress(format!("opening {conns} {} connections", group.label()));
        let started = Instant::now();
        let helper = Helper::spawn(
            &[
                "hold-clients".to_string(),
                "--hold-group".to_string(),
                group.arg().to_string(),
                "--hold-group-addr".to_string(),
                listeners.of(group).to_string(),
                "--hold-group-conns".to_string(),
                conns.to_string(),
                "--hold-open-concurrency".to_string(),
                args.open_concurrency.to_string(),
                "--hold-max-failures".to_string(),
                args.max_failures.to_string(),
            ],
            OPEN_TIMEOUT,
        )
        .await?;
        let (opened, failed, first) = parse_report(helper.ready_line(), "HELD")?;
        progress(format!(
            "  -> {opened} held, {failed} failed in {:.1} s{}",
            started.elapsed().as_secs_f64(),
            if first.is_empty() {
                String::new()
            } else {
                format!(" (first: {first})")
            }
        ));
        held.push((group, conns, opened, failed, first));
        helpers.push((group, helper));
    }
    tokio::time::sleep(settle).await;
    let held_rss = sys::tree_rss_bytes(pid)?;
    let held_fds = sys::open_fds(pid)?;
    progress(format!(
        "holding: proxy RSS {:.1} MiB, {held_fds} fds; probing",
        mib(held_rss)
    ));
    let during = probes(args, listeners).await?;

    // Each held connection makes its exchange again.
    let mut alive = Vec::new();
    for (group, helper) in &mut helpers {
        let answer = helper.ask("check", OPEN_TIMEOUT).await?;
        let (ok, failed, first) = parse_report(&answer, "ALIVE")?;
        progress(format!(
            "  {} still answering: {ok}, failed {failed} {first}",
            group.label()
        ));
        alive.push((ok, failed, first));
    }
    let crashed = running.exit_status()?;
    for (_, helper) in helpers {
        helper.stop().await?;
    }

    for ((group, asked, opened, failed, first), (ok, dead, dead_first)) in held.iter().zip(&alive) {
        let mut note = format!("asked {asked}, {failed} failed to open");
        if !first.is_empty() {
            note += &format!(" (first: {first})");
        }
        rows.push(
            row(
                &format!("{} held", group.label()),
                *opened as f64,
                Better::Higher,
            )
            .with_note(note),
        );
        let mut still = row(
            &format!("{} held, answering again at the end", group.label()),
            *ok as f64,
            Better::Higher,
        );
        if *dead > 0 {
            still = still.with_note(format!("{dead} failed (first: {dead_first})"));
        }
        rows.push(still);
    }
    rows.push(row("proxy RSS idle (MiB)", mib(idle_rss), Better::Lower));
    rows.push(row("proxy RSS holding (MiB)", mib(held_rss), Better::Lower));
    rows.push(row("proxy open fds idle", idle_fds as f64, Better::Lower));
    rows.push(
        row("proxy open fds holding", held_fds as f64, Better::Lower)
            .with_note(format!("of its limit {proxy_limit}")),
    );
    for (name, idle, busy) in [
        ("new http conn + GET", &before.0, &during.0),
        ("new pg login + select 1", &before.1, &during.1),
    ] {
        for (phase, probe) in [("idle proxy", idle), ("holding", busy)] {
            let mut ok = row(
                &format!("{name}, {phase}: ok of {}", probe.asked),
                probe.ok as f64,
                Better::Higher,
            );
            if probe.failed > 0 {
                ok = ok.with_note(format!(
                    "{} failed (first: {}){}",
                    probe.failed,
                    probe.first_error.as_deref().unwrap_or("?"),
                    if probe.ok + probe.failed < probe.asked {
                        "; the probe stopped early"
                    } else {
                        ""
                    }
                ));
            }
            rows.push(ok);
            if probe.ok > 0 {
                rows.push(row(
                    &format!("{name}, {phase}: p50 (ms)"),
                    probe.quantile_ms(0.5),
                    Better::Lower,
                ));
                rows.push(row(
                    &format!("{name}, {phase}: p99 (ms)"),
                    probe.quantile_ms(0.99),
                    Better::Lower,
                ));
            }
        }
    }
    rows.push(match crashed {
        None => row(
            "proxy still running after the hold (1 = yes)",
            1.0,
            Better::Higher,
        ),
        Some(status) => Row::failed(
            SCENARIO,
            "proxy still running after the hold (1 = yes)",
            TargetKind::Switchyard,
            Better::Higher,
            format!("the proxy exited: {status}"),
        ),
    });
    if crashed.is_some() {
        return Ok(rows);
    }

    // The client past a listener's max_connections.
    for (name, addr, exchange) in [
        ("http", listeners.http_limited, Exchange::HttpGet),
        ("pg", listeners.pg_limited, Exchange::PgSelect),
    ] {
        let metric = format!(
            "{name} listener at max_connections {}: client {} answered after (ms)",
            args.limit,
            args.limit + 1
        );
        progress(format!("max_connections {}: {name}", args.limit));
        rows.push(
            match over_limit(addr, &Opener::plain(exchange), args.limit).await {
                Ok((ms, outcome)) => row(&metric, ms, Better::Lower).with_note(outcome),
                Err(e) => Row::failed(
                    SCENARIO,
                    metric,
                    TargetKind::Switchyard,
                    Better::Lower,
                    format!("{e:#}"),
                ),
            },
        );
    }
    Ok(rows)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Both probes: new HTTP connections with one GET, new PostgreSQL logins with `select 1`.
async fn probes(args: &HoldArgs, listeners: &Listeners) -> Result<(Probe, Probe)> {
    let http = probe(
        listeners.http,
        Opener::plain(Exchange::HttpGet),
        args.probe_http,
        args.probe_concurrency,
    )
    .await?;
    let pg = probe(
        listeners.pg,
        Opener::plain(Exchange::PgSelect),
        args.probe_pg,
        args.probe_concurrency,
    )
    .await?;
    progress(format!(
        "  http {}/{} ok, p99 {:.2} ms; pg {}/{} ok, p99 {:.2} ms",
        http.ok,
        http.asked,
        http.quantile_ms(0.99),
        pg.ok,
        pg.asked,
        pg.quantile_ms(0.99)
    ));
    Ok((http, pg))
}

/// `count` new connections to `addr`, each opened, exchanged and closed, `concurrency`
/// at a time; stops after [`PROBE_MAX_FAILURES`] failures.
async fn probe(
    addr: SocketAddr,
    opener: Opener,
    count: usize,
    concurrency: usize,
) -> Result<Probe> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (next, failures, opener) = (next.clone(), failures.clone(), opener.clone());
        tasks.spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let mut micros = histogram()?;
            let mut errors = Vec::new();
            let mut ok = 0;
            while next.fetch_add(1, Relaxed) < count && failures.load(Relaxed) < PROBE_MAX_FAILURES
            {
                let started = Instant::now();
                match opener.open(addr).await {
                    Ok(stream) => {
                        micros.saturating_record(started.elapsed().as_micros() as u64);
                        ok += 1;
                        drop(stream);
                    }
                    Err(e) => {
                        failures.fetch_add(1, Relaxed);
                        errors.push(format!("{e:#}"));
                    }
                }
            }
            anyhow::Ok((micros, ok, errors))
        });
    }
    let mut probe = Probe {
        asked: count,
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
    Ok(probe)
}

/// A latency histogram in microseconds, up to a minute.
pub(super) fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")
}

/// Fills a listener of `limit` connections, then opens one more: how long until it got
/// an answer, and what (an error in the protocol, or service once a held one closed).
async fn over_limit(addr: SocketAddr, opener: &Opener, limit: usize) -> Result<(f64, String)> {
    let mut opened = open_many(addr, opener, limit, 16, 1).await?;
    if opened.held.len() < limit {
        bail!(
            "only {} of {limit} connections opened: {}",
            opened.held.len(),
            opened.first_error.as_deref().unwrap_or("?")
        );
    }
    let started = Instant::now();
    let mut extra = tokio::spawn({
        let opener = opener.clone();
        async move { opener.open(addr).await.map(drop) }
    });
    let ms = |at: Instant| at.elapsed().as_secs_f64() * 1000.0;
    match tokio::time::timeout(OVER_LIMIT_WAIT, &mut extra).await {
        Ok(joined) => {
            let took = ms(started);
            Ok(match joined.context("client task panicked")? {
                Ok(()) => (took, "served at once: the limit did not hold".to_string()),
                Err(e) => (took, format!("refused at once: {e:#}")),
            })
        }
        Err(_) => {
            // One held connection closes: a slot frees.
            let freed = Instant::now();
            drop(opened.held.pop());
            let outcome = extra.await.context("client task panicked")?;
            let waited = format!(
                "no answer for {:.0} s (connected: the kernel queues it in the listen backlog while switchyard stops accepting at the limit)",
                OVER_LIMIT_WAIT.as_secs_f64()
            );
            Ok(match outcome {
                Ok(()) => (
                    ms(started),
                    format!(
                        "{waited}; served {:.0} ms after one of the {limit} closed",
                        ms(freed)
                    ),
                ),
                Err(e) => (ms(started), format!("{waited}; then failed: {e:#}")),
            })
        }
    }
}

/// Parses a helper's `<WORD> <ok> FAILED <failed> <first error>` line.
fn parse_report(line: &str, word: &str) -> Result<(usize, usize, String)> {
    let parse = || -> Option<(usize, usize, String)> {
        let rest = line.strip_prefix(word)?.trim_start();
        let (ok, rest) = rest.split_once(' ')?;
        let rest = rest.strip_prefix("FAILED ")?;
        let (failed, first) = rest.split_once(' ').unwrap_or((rest, ""));
        Some((
            ok.parse().ok()?,
            failed.parse().ok()?,
            first.trim().to_string(),
        ))
    };
    parse().with_context(|| format!("unexpected helper report {line:?}"))
}

/// Entry point of the hidden `hold-clients` subcommand: opens the group's connections,
/// reports `HELD <n> FAILED <m> <first error>`, answers each `check` with `ALIVE <n>
/// FAILED <m> <first error>` after one more exchange on every held connection (those that
/// fail are dropped), and holds them until stdin ends.
pub fn clients_main(args: &HoldArgs, threads: usize) -> Result<()> {
    let (Some(group), Some(addr), Some(conns)) = (args.group, args.group_addr, args.group_conns)
    else {
        bail!("hold-clients needs --hold-group, --hold-group-addr and --hold-group-conns");
    };
    let runtime = child::runtime(threads, "hold-clients")?;
    runtime.block_on(async {
        let opener = Opener::plain(group.exchange());
        let opened = open_many(
            addr,
            &opener,
            conns,
            args.open_concurrency,
            args.max_failures,
        )
        .await?;
        let line = report("HELD", opened.held.len(), opened.errors, opened.first_error);
        let held = std::sync::Arc::new(tokio::sync::Mutex::new(opened.held));
        child::serve(&line, |_| {
            let (held, opener) = (held.clone(), opener.clone());
            async move {
                let mut held = held.lock().await;
                let all = std::mem::take(&mut *held);
                let (alive, failed, first) = check(all, &opener).await;
                let line = report("ALIVE", alive.len(), failed, first);
                *held = alive;
                line
            }
        })
        .await
    })?;
    runtime.shutdown_background();
    Ok(())
}

fn report(word: &str, ok: usize, failed: usize, first: Option<String>) -> String {
    let first = first.unwrap_or_default().replace(['\n', '\r'], " ");
    format!("{word} {ok} FAILED {failed} {first}")
}

/// One more exchange on every connection, 64 at a time; returns those that answered, how
/// many failed and the first failure.
async fn check(
    all: Vec<Box<dyn Held>>,
    opener: &Opener,
) -> (Vec<Box<dyn Held>>, usize, Option<String>) {
    let mut chunks: Vec<Vec<Box<dyn Held>>> = (0..64).map(|_| Vec::new()).collect();
    for (i, stream) in all.into_iter().enumerate() {
        chunks[i % 64].push(stream);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in chunks {
        let opener = opener.clone();
        tasks.spawn(async move {
            let mut alive = Vec::with_capacity(chunk.len());
            let mut errors = Vec::new();
            for mut stream in chunk {
                match tokio::time::timeout(super::conn::ATTEMPT_TIMEOUT, opener.again(&mut stream))
                    .await
                {
                    Ok(Ok(())) => alive.push(stream),
                    Ok(Err(e)) => errors.push(format!("{e:#}")),
                    Err(_) => errors.push("no answer within the timeout".to_string()),
                }
            }
            (alive, errors)
        });
    }
    let (mut alive, mut failed, mut first) = (Vec::new(), 0, None);
    while let Some(Ok((ok, errors))) = tasks.join_next().await {
        alive.extend(ok);
        failed += errors.len();
        if first.is_none() {
            first = errors.into_iter().next();
        }
    }
    (alive, failed, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_reports_round_trip() {
        let line = report("HELD", 8990, 10, Some("connect\nrefused".to_string()));
        assert_eq!(
            parse_report(&line, "HELD").unwrap_or_else(|e| panic!("{e:#}")),
            (8990, 10, "connect refused".to_string())
        );
        let line = report("ALIVE", 4000, 0, None);
        assert_eq!(
            parse_report(&line, "ALIVE").unwrap_or_else(|e| panic!("{e:#}")),
            (4000, 0, String::new())
        );
        assert!(parse_report("LISTEN 127.0.0.1:1", "HELD").is_err());
    }

    #[test]
    fn config_has_the_limited_listeners_and_a_transaction_pool() {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let l = Listeners {
            tcp: at(1),
            http: at(2),
            pg: at(3),
            http_limited: at(4),
            pg_limited: at(5),
        };
        let text = config(&l, (at(7), at(8), at(9)), 8, 100);
        assert_eq!(text.matches("max_connections = 100").count(), 2, "{text}");
        assert_eq!(text.matches("[[listener]]").count(), 5, "{text}");
        assert!(text.contains("pool_mode = \"transaction\""), "{text}");
        assert!(text.contains("timeouts.keep_alive = \"1h\""), "{text}");
    }
}
