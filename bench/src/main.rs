//! `bench`: load generators comparing switchyard with the direct path
//! (client straight to backend) and with HAProxy.
//!
//! One invocation runs a scenario on every selected target: it starts the
//! backends itself, writes a proxy configuration to a temporary directory,
//! starts the proxy, waits until it accepts connections, runs the load,
//! stops the proxy and prints a comparison table. See `docs/benchmarks.md`.

mod backend;
mod child;
mod http_echo;
mod mariadb;
mod pg;
mod redis;
mod scenarios;
mod sys;
mod table;
mod targets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};

use scenarios::connrate::ConnrateArgs;
use scenarios::hold::HoldArgs;
use scenarios::http::HttpArgs;
use scenarios::idle::IdleArgs;
use scenarios::latency::LatencyArgs;
use scenarios::mysql::MysqlArgs;
use scenarios::pgpool::PgpoolArgs;
use scenarios::postgres::PostgresArgs;
use scenarios::resolver::ResolverArgs;
use scenarios::slow::SlowArgs;
use scenarios::smtp::SmtpArgs;
use scenarios::soak::SoakArgs;
use scenarios::throughput::ThroughputArgs;
use scenarios::tls::TlsArgs;
use table::Row;
use targets::{CompetitorHeaders, TargetKind, TargetOptions};

/// Which scenario to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Bulk streaming in both directions, Gb/s.
    Throughput,
    /// Small request/response on persistent connections: req/s and percentiles.
    Latency,
    /// connect / one exchange / close loops: connections per second.
    Connrate,
    /// Proxy memory per idle connection.
    Idle,
    /// HTTP keep-alive GETs with wrk, small and 64 KiB responses (adds nginx).
    Http,
    /// TLS termination: full and resumed handshakes/s, TLS throughput.
    Tls,
    /// pgbench through switchyard (postgres, session mode) vs PgBouncer vs direct.
    Postgres,
    /// pgbench through switchyard (postgres, transaction mode) vs PgBouncer vs direct.
    Pgpool,
    /// sysbench through switchyard (mysql, session mode) vs HAProxy `mode tcp` vs direct;
    /// with `--my-pool transaction`, switchyard's transaction pool vs direct.
    Mysql,
    /// Postfix's smtp-source through switchyard (smtp) vs HAProxy `mode tcp` vs direct,
    /// into smtp-sink: messages/s.
    Smtp,
    /// HTTP through a pool resolved by Redis vs a static pool of the same backend (wrk
    /// keep-alive, a new connection per request), and cold-key lookup latency.
    Resolver,
    /// Held connections at scale: thousands of idle TCP, HTTP keep-alive and PostgreSQL
    /// clients held through one switchyard while new connections are probed, and what the
    /// client past a listener's `max_connections` gets (switchyard only).
    Hold,
    /// Slow and hostile clients at scale: slowloris HTTP, PostgreSQL clients stopping
    /// mid-startup and TLS clients stopping mid-handshake against one switchyard; probe
    /// latency quiet vs under attack, and when each slow client is cut (switchyard only).
    Slow,
    /// Mixed traffic through one switchyard under a fault schedule (backends killed, a
    /// PostgreSQL replica promoted, reloads, binary upgrades, drain/ready, hostile
    /// clients), checking that nothing accepted is lost or corrupted; run on demand, not
    /// in CI (default 10 minutes). Measures switchyard only.
    Soak,
    /// All of the above except `postgres`, `pgpool`, `mysql`, `smtp`, `resolver`, `hold`,
    /// `slow` and `soak`, in that order.
    All,
    /// Internal: echo backend child process used by `idle`, `hold` and `soak`.
    #[value(hide = true)]
    ServeEcho,
    /// Internal: HTTP echo backend child process used by `soak`.
    #[value(hide = true)]
    ServeHttpEcho,
    /// Internal: a group of held client connections of `hold`.
    #[value(hide = true)]
    HoldClients,
    /// Internal: a group of slow clients of `slow`.
    #[value(hide = true)]
    SlowClients,
}

/// Compare switchyard with the direct path and HAProxy on loopback.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,

    /// Targets to measure, comma separated. In `mysql` a target named twice also runs
    /// twice (`<target> (again)`, a control: its ratio to itself is what this machine alone
    /// makes of a ratio); `postgres` and `pgpool` take theirs from `--pg-targets` and
    /// `--pgpool-targets`, which do the same.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,switchyard,haproxy"
    )]
    targets: Vec<TargetKind>,

    /// Proxy worker threads (switchyard `workers`, HAProxy `nbthread`).
    #[arg(long, default_value_t = 2)]
    workers: usize,

    /// How many of switchyard's workers serve the bench listener (its `workers` key);
    /// all by default.
    #[arg(long, value_name = "N")]
    listener_workers: Option<usize>,

    /// Load-generator worker threads (default: number of CPUs).
    #[arg(long)]
    client_threads: Option<usize>,

    /// Worker threads of each backend (default: number of CPUs).
    #[arg(long)]
    backend_threads: Option<usize>,

    /// switchyard binary (default: `switchyard` next to this executable).
    #[arg(long)]
    switchyard_bin: Option<PathBuf>,

    /// haproxy binary.
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    haproxy_bin: PathBuf,

    /// pgbouncer binary (`postgres` and `pgpool` scenarios).
    #[arg(long, default_value = "/usr/sbin/pgbouncer")]
    pgbouncer_bin: PathBuf,

    /// nginx binary (HTTP scenario).
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx_bin: PathBuf,

    /// HTTP: what HAProxy and nginx add to requests. `same` (the default) configures them
    /// to add the forwarding headers switchyard adds by default, so that all three do the
    /// same work; `bare` leaves their own defaults, which add none.
    #[arg(long, value_enum, default_value = "same")]
    competitor_headers: CompetitorHeaders,

    /// HAProxy maxconn (default: what fits the hard open-file limit).
    #[arg(long)]
    haproxy_maxconn: Option<u64>,

    /// Internal: the address a `serve-echo` or `serve-http-echo` child binds (default: a
    /// free port).
    #[arg(long, hide = true)]
    serve_listen: Option<SocketAddr>,

    /// Seconds to wait for a proxy to accept connections.
    #[arg(long, default_value_t = 15.0)]
    ready_timeout_secs: f64,

    #[command(flatten)]
    throughput: ThroughputArgs,
    #[command(flatten)]
    latency: LatencyArgs,
    #[command(flatten)]
    connrate: ConnrateArgs,
    #[command(flatten)]
    idle: IdleArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    postgres: PostgresArgs,
    #[command(flatten)]
    pgpool: PgpoolArgs,
    #[command(flatten)]
    mysql: MysqlArgs,
    #[command(flatten)]
    smtp: SmtpArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    resolver: ResolverArgs,
    #[command(flatten)]
    hold: HoldArgs,
    #[command(flatten)]
    slow: SlowArgs,
    #[command(flatten)]
    soak: SoakArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (soft, hard) = sys::raise_nofile_limit()?;
    let cpus = sys::cpu_count();
    let backend_threads = cli.backend_threads.unwrap_or(cpus);

    match cli.scenario {
        Scenario::ServeEcho => {
            return backend::serve_child_main(
                backend::BackendKind::Echo,
                backend_threads,
                cli.serve_listen,
            );
        }
        Scenario::ServeHttpEcho => {
            return backend::serve_child_main(
                backend::BackendKind::HttpEcho,
                backend_threads,
                cli.serve_listen,
            );
        }
        _ => {}
    }
    let client_threads = cli.client_threads.unwrap_or(cpus).max(1);
    if cli.scenario == Scenario::HoldClients {
        return scenarios::hold::clients_main(&cli.hold, client_threads);
    }
    if cli.scenario == Scenario::SlowClients {
        return scenarios::slow::clients_main(&cli.slow, client_threads);
    }

    let ctx = scenarios::Context {
        targets: cli.targets.clone(),
        target_opts: TargetOptions {
            workers: cli.workers.max(1),
            listener_workers: cli.listener_workers,
            switchyard_bin: cli
                .switchyard_bin
                .clone()
                .unwrap_or_else(TargetOptions::default_switchyard_bin),
            haproxy_bin: cli.haproxy_bin.clone(),
            pgbouncer_bin: cli.pgbouncer_bin.clone(),
            nginx_bin: cli.nginx_bin.clone(),
            maxconn: cli
                .haproxy_maxconn
                .unwrap_or_else(|| TargetOptions::maxconn_for_fd_limit(hard)),
            ready_timeout: Duration::from_secs_f64(cli.ready_timeout_secs),
            tls: None,
            competitor_headers: cli.competitor_headers,
            access_log: false,
        },
        backend_threads,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .thread_name("client")
        .enable_all()
        .build()
        .context("building client runtime")?;

    println!("machine: {}", sys::machine_summary());
    println!(
        "setup: load generator ({client_threads} threads), backend ({backend_threads} threads) and proxy \
         ({} workers) all share these {cpus} cores over 127.0.0.1; compare ratios, not absolute capacity",
        ctx.target_opts.workers
    );
    println!(
        "open files: soft {soft}, hard {hard}; haproxy maxconn {}",
        ctx.target_opts.maxconn
    );
    match sys::load_average() {
        Ok(load) => println!("load average before the run (1, 5, 15 min): {load}"),
        Err(e) => println!("load average before the run: unknown ({e:#})"),
    }
    match sys::cpu_busy_fraction(Duration::from_secs(1)) {
        Ok(busy) => println!(
            "CPU busy before the run: {:.0}% (other work on the machine skews the numbers)",
            busy * 100.0
        ),
        Err(e) => println!("CPU busy before the run: unknown ({e:#})"),
    }

    let started = Instant::now();
    if cli.scenario == Scenario::Soak {
        // The soak prints its own tables: they are not a comparison of targets.
        let met = runtime.block_on(scenarios::soak::run(&ctx, &cli.soak))?;
        println!("total time: {:.0} s", started.elapsed().as_secs_f64());
        runtime.shutdown_timeout(Duration::from_secs(1));
        if !met {
            std::process::exit(1);
        }
        return Ok(());
    }
    let rows = runtime.block_on(run(&cli, &ctx))?;
    println!("\n{}", table::render(&rows));
    println!("total time: {:.0} s", started.elapsed().as_secs_f64());
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Runs the selected scenario(s), printing each scenario's table as it ends.
async fn run(cli: &Cli, ctx: &scenarios::Context) -> Result<Vec<Row>> {
    let selected: &[Scenario] = match cli.scenario {
        Scenario::All => &[
            Scenario::Throughput,
            Scenario::Latency,
            Scenario::Connrate,
            Scenario::Idle,
            Scenario::Http,
            Scenario::Tls,
        ],
        ref one => std::slice::from_ref(one),
    };
    let mut all = Vec::new();
    for scenario in selected {
        eprintln!("== {scenario:?}");
        let rows = match scenario {
            Scenario::Throughput => scenarios::throughput::run(ctx, &cli.throughput).await?,
            Scenario::Latency => scenarios::latency::run(ctx, &cli.latency).await?,
            Scenario::Connrate => scenarios::connrate::run(ctx, &cli.connrate).await?,
            Scenario::Idle => scenarios::idle::run(ctx, &cli.idle).await?,
            Scenario::Http => scenarios::http::run(ctx, &cli.http).await?,
            Scenario::Postgres => scenarios::postgres::run(ctx, &cli.postgres).await?,
            Scenario::Pgpool => scenarios::pgpool::run(ctx, &cli.pgpool).await?,
            Scenario::Mysql => scenarios::mysql::run(ctx, &cli.mysql).await?,
            Scenario::Smtp => scenarios::smtp::run(ctx, &cli.smtp).await?,
            Scenario::Tls => scenarios::tls::run(ctx, &cli.tls).await?,
            Scenario::Resolver => {
                scenarios::resolver::run(ctx, &cli.resolver, &cli.http, &cli.connrate).await?
            }
            Scenario::Hold => scenarios::hold::run(ctx, &cli.hold).await?,
            Scenario::Slow => scenarios::slow::run(ctx, &cli.slow).await?,
            Scenario::All
            | Scenario::Soak
            | Scenario::ServeEcho
            | Scenario::ServeHttpEcho
            | Scenario::HoldClients
            | Scenario::SlowClients => Vec::new(),
        };
        if selected.len() > 1 {
            eprintln!("\n{}", table::render(&rows));
        }
        all.extend(rows);
    }
    Ok(all)
}
