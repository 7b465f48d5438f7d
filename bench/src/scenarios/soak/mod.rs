//! `bench soak`: mixed traffic through one switchyard for a given duration while a fault
//! schedule runs, then a report of what was carried, what failed and why, and the proxy's
//! memory and descriptors over time. Run on demand (minutes), never in CI.
//!
//! Setup: two echo backends (pool `echo`, `tcp` listener), two HTTP echo backends (pool
//! `web`, `http` listener: HTTP/1.1, h2c and WebSocket), a PostgreSQL primary with a
//! synchronous replica behind a session-mode and a transaction-mode pool (`postgres`
//! listeners with `role = "primary"`). Backends are child processes so that they can be
//! killed with SIGKILL; every pool has two servers and health checks, so traffic moves over.
//!
//! Traffic ([`traffic`]): TCP streams and WebSocket messages with random payloads, HTTP/1.1
//! and h2c POSTs with random bodies, all echoed and compared byte for byte; PostgreSQL
//! transactions that insert a row, read it back and commit, the acknowledged ids checked
//! against the table at the end. Hostile clients ([`hostile`]): slowloris, clients that
//! vanish mid-request or mid-transaction, malformed bytes on every listener. Faults
//! ([`faults`]): backends killed and restarted, the primary crashed and the replica
//! promoted, reloads with a changed config, binary upgrades, drain/ready.
//!
//! # Whom a failure is attributed to
//!
//! Every failed operation (refused, reset, timed out, answered with an error status or
//! SQLSTATE) is recorded with the moment it started and the moment it failed. Every fault
//! records a window: from its start until the proxy sees the server back (a killed
//! backend up again, the promoted replica up as `primary` in both PostgreSQL pools), plus
//! one second of grace. A failure is **expected** when its operation's lifetime overlaps
//! the window of a fault that takes away the server such an operation runs on: a killed
//! HTTP backend excuses HTTP/1.1, h2c and WebSocket failures, a killed echo backend
//! excuses TCP failures, a failover excuses PostgreSQL failures. Everything else is
//! **attributable to the proxy**: a failure while only a reload, an upgrade, a drain of
//! a backend or hostile clients were going on, or while nothing was; and, whatever the
//! faults, any corrupted byte, any acknowledged write missing from the table (or
//! present twice), and any row of a transaction whose client vanished before COMMIT.
//! The rule is deliberately coarse in the proxy's disfavour in one way and generous in
//! another: a kill excuses failures of its protocol on either server of the pool (the
//! client cannot tell which server it was on), but nothing excuses a failure of another
//! protocol. HTTP/2 requests refused by a GOAWAY (`REFUSED_STREAM`, or above its last
//! stream id) were never processed; they are sent again and counted as "retried", not
//! failed.

mod database;
mod faults;
mod hostile;
mod ledger;
mod proxy;
mod traffic;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::Context;
use crate::backend::BackendKind;
use database::{Acked, Database, Integrity};
use faults::{BackendPair, Schedule, Targets};
use ledger::{Ledger, Proto};
use proxy::{Proxy, Sample, Servers};
use traffic::Shared;

/// Options of the `soak` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct SoakArgs {
    /// Soak: how long the traffic and the faults run, in seconds.
    #[arg(long, default_value_t = 600)]
    pub soak_secs: u64,
    /// Soak: seconds between kills of each backend kind (HTTP, echo).
    #[arg(long, default_value_t = 30)]
    pub soak_kill_every: u64,
    /// Soak: seconds between failovers of the PostgreSQL primary.
    #[arg(long, default_value_t = 150)]
    pub soak_promote_every: u64,
    /// Soak: seconds between reloads with a changed config.
    #[arg(long, default_value_t = 10)]
    pub soak_reload_every: u64,
    /// Soak: seconds between binary upgrades.
    #[arg(long, default_value_t = 60)]
    pub soak_upgrade_every: u64,
    /// Soak: seconds between drain/ready cycles of an HTTP backend.
    #[arg(long, default_value_t = 20)]
    pub soak_drain_every: u64,
    /// Soak: slowloris clients held open at once.
    #[arg(long, default_value_t = 50)]
    pub soak_slowloris: usize,
    /// Soak: seconds between resource samples of the proxy.
    #[arg(long, default_value_t = 5)]
    pub soak_sample_every: u64,
}

/// Runs the soak and prints its report; `Ok(false)` when a target was missed.
pub async fn run(ctx: &Context, args: &SoakArgs) -> Result<bool> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before the run: {}", load.trim());
    let threads = ctx.backend_threads.clamp(1, 2);
    super::progress("starting backends and PostgreSQL (primary + synchronous replica)");
    let echo = Arc::new(BackendPair::start(BackendKind::Echo, "echo", "e", threads).await?);
    let web = Arc::new(BackendPair::start(BackendKind::HttpEcho, "web", "w", threads).await?);
    let database = Database::start().await?;
    let servers = Servers {
        echo: echo.addrs,
        web: web.addrs,
        pg: database.servers,
    };
    let proxy = Arc::new(
        Proxy::start(
            &ctx.target_opts.switchyard_bin,
            servers,
            ctx.target_opts.workers,
        )
        .await?,
    );
    let database = Arc::new(Mutex::new(database));
    let outcome = soak(ctx, args, &proxy, &echo, &web, &database).await;
    echo.stop().await;
    web.stop().await;
    if let Ok(proxy) = Arc::try_unwrap(proxy) {
        // A missed target is explained by the processes' logs: they outlive the run then.
        proxy.stop(!matches!(outcome, Ok(true))).await;
    }
    if let Ok(database) = Arc::try_unwrap(database) {
        database.into_inner().stop().await;
    }
    outcome
}

/// Everything between setup and teardown.
async fn soak(
    ctx: &Context,
    args: &SoakArgs,
    proxy: &Arc<Proxy>,
    echo: &Arc<BackendPair>,
    web: &Arc<BackendPair>,
    database: &Arc<Mutex<Database>>,
) -> Result<bool> {
    for (pool, server) in [("echo", "e1"), ("echo", "e2"), ("web", "w1"), ("web", "w2")] {
        proxy
            .wait_server(pool, server, None, Duration::from_secs(30))
            .await?;
    }
    for pool in ["pg", "pgtx"] {
        proxy
            .wait_server(pool, "p1", Some("primary"), Duration::from_secs(30))
            .await?;
    }
    let ledger = Arc::new(Ledger::new());
    let mut samples = vec![sample(proxy, &ledger)];
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Shared {
        ledger: ledger.clone(),
        stop: stop.clone(),
    };
    let listeners = proxy.listeners;
    let acked = Acked::default();
    let ids = Arc::new(AtomicI64::new(1));
    let mut clients: Vec<JoinHandle<()>> = Vec::new();
    for _ in 0..4 {
        clients.push(tokio::spawn(traffic::tcp(listeners.tcp, shared.clone())));
        clients.push(tokio::spawn(traffic::http1(listeners.web, shared.clone())));
        clients.push(tokio::spawn(traffic::postgres(
            listeners.pg,
            Proto::PgSession,
            ids.clone(),
            acked.clone(),
            shared.clone(),
        )));
    }
    for _ in 0..2 {
        clients.push(tokio::spawn(traffic::h2(listeners.web, 4, shared.clone())));
        clients.push(tokio::spawn(traffic::websocket(
            listeners.web,
            shared.clone(),
        )));
    }
    for _ in 0..8 {
        clients.push(tokio::spawn(traffic::postgres(
            listeners.pgtx,
            Proto::PgTransaction,
            ids.clone(),
            acked.clone(),
            shared.clone(),
        )));
    }
    let mut hostiles: Vec<JoinHandle<()>> = Vec::new();
    for _ in 0..args.soak_slowloris {
        hostiles.push(tokio::spawn(hostile::slowloris(
            listeners.web,
            shared.clone(),
        )));
    }
    hostiles.push(tokio::spawn(hostile::vanishers(listeners, shared.clone())));
    hostiles.push(tokio::spawn(hostile::malformed(listeners, shared.clone())));
    let targets = Arc::new(Targets {
        proxy: proxy.clone(),
        echo: echo.clone(),
        web: web.clone(),
        database: database.clone(),
        ledger: ledger.clone(),
    });
    let schedule = Schedule {
        kill_every: Duration::from_secs(args.soak_kill_every.max(1)),
        promote_every: Duration::from_secs(args.soak_promote_every.max(1)),
        reload_every: Duration::from_secs(args.soak_reload_every.max(1)),
        upgrade_every: Duration::from_secs(args.soak_upgrade_every.max(1)),
        drain_every: Duration::from_secs(args.soak_drain_every.max(1)),
    };
    let fault_tasks = faults::spawn(&targets, schedule, &stop);
    super::progress(format!(
        "soaking for {} s: tcp {}, http {}, pg {}, pgtx {}, admin {}",
        args.soak_secs, listeners.tcp, listeners.web, listeners.pg, listeners.pgtx, listeners.admin
    ));
    let end = Instant::now() + Duration::from_secs(args.soak_secs);
    let every = Duration::from_secs(args.soak_sample_every.max(1));
    while Instant::now() < end {
        tokio::time::sleep(every.min(end.saturating_duration_since(Instant::now()))).await;
        let last = sample(proxy, &ledger);
        super::progress(format!(
            "t={:.0}s proxy processes {} rss {:.1} MiB fds {}; failures attributable so far {}",
            last.at,
            last.processes,
            mib(last.rss),
            last.fds,
            ledger.attributable()
        ));
        samples.push(last);
    }
    super::progress("stopping traffic and faults");
    stop.store(true, Ordering::Relaxed);
    for task in fault_tasks {
        let _ = task.await;
    }
    for task in clients {
        if tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .is_err()
        {
            ledger.note("a traffic generator did not finish within 30 s of the stop");
        }
    }
    for task in hostiles {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
    let traffic_end = samples.len();
    let settled = settle(proxy, &ledger, &mut samples).await;
    let integrity = database.lock().await.verify(&acked).await?;
    // Each breach of the table's integrity is one failure, charged to the session clients
    // whose writes the table holds.
    for (count, kind, what) in [
        (
            integrity.lost,
            "lost acknowledged write",
            "acknowledged writes missing",
        ),
        (
            integrity.duplicated,
            "duplicated write",
            "ids present more than once",
        ),
        (
            integrity.vanished_committed,
            "corrupted",
            "rows of transactions whose client vanished before COMMIT",
        ),
    ] {
        if count > 0 {
            ledger.fail(
                Proto::PgSession,
                kind,
                ledger.start,
                format!("{count} {what}"),
            );
        }
    }
    println!(
        "\nsoak: {} s of mixed traffic through one switchyard ({} workers) under faults, then {:.0} s for connections to close",
        args.soak_secs,
        ctx.target_opts.workers,
        settled.as_secs_f64()
    );
    println!("\n{}", ledger.render());
    println!("{}", integrity_table(&integrity, ledger.corrupted_bytes()));
    println!("{}", resources_table(&samples, traffic_end));
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let rss_flat = last.rss <= first.rss + 32 * 1024 * 1024;
    let fds_flat = last.fds <= first.fds + 8;
    let attributable = ledger.attributable();
    let targets = [
        ("0 corrupted bytes", ledger.corrupted_bytes() == 0),
        ("0 lost acknowledged writes", integrity.lost == 0),
        (
            "0 failures attributable to the proxy (reloads, upgrades and drains included)",
            attributable == 0,
        ),
        ("RSS flat after the run (last <= first + 32 MiB)", rss_flat),
        (
            "descriptors flat after the run (last <= first + 8)",
            fds_flat,
        ),
    ];
    println!("targets:");
    for (what, met) in targets {
        println!("  [{}] {what}", if met { "met" } else { "MISSED" });
    }
    if attributable > 0 || !rss_flat || !fds_flat {
        println!("\nproxy logs:\n{}", proxy.log_tail());
    }
    Ok(targets.iter().all(|(_, met)| *met))
}

/// Samples the proxy, noting processes that exited with an error.
fn sample(proxy: &Proxy, ledger: &Ledger) -> Sample {
    let (sample, problems) = proxy.sample(ledger.start);
    for problem in problems {
        ledger.note(problem);
    }
    sample
}

/// After the traffic: waits (up to 45 s) until one process is left and its descriptors
/// stop falling (idle server connections close after their idle timeouts), sampling.
async fn settle(proxy: &Proxy, ledger: &Ledger, samples: &mut Vec<Sample>) -> Duration {
    let started = Instant::now();
    let mut previous = usize::MAX;
    let mut steady = 0;
    while started.elapsed() < Duration::from_secs(45) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sample(proxy, ledger);
        samples.push(now);
        if now.processes == 1 && now.fds >= previous {
            steady += 1;
            if steady >= 5 {
                break;
            }
        } else {
            steady = 0;
        }
        previous = now.fds;
    }
    started.elapsed()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Acknowledged writes and what became of them.
fn integrity_table(integrity: &Integrity, corrupted: u64) -> String {
    let mut out = String::new();
    let rows = [
        ("corrupted bytes (all echoed traffic)", corrupted as usize),
        (
            "PostgreSQL writes acknowledged (COMMIT ok)",
            integrity.acknowledged,
        ),
        ("rows in the table at the end", integrity.rows),
        ("acknowledged writes missing", integrity.lost),
        ("ids present more than once", integrity.duplicated),
        (
            "rows of vanished clients' uncommitted transactions",
            integrity.vanished_committed,
        ),
    ];
    for (what, value) in rows {
        let _ = writeln!(out, "{what:<56} {value:>8}");
    }
    out
}

/// The proxy's resources: a time series (about a dozen rows during the traffic, then the
/// settling), and first (before any traffic) against last (after it, connections closed).
fn resources_table(samples: &[Sample], traffic_end: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8} {:>10} {:>10} {:>8}   proxy resources (all its processes)",
        "t s", "processes", "RSS MiB", "fds"
    );
    let step = (traffic_end / 12).max(1);
    let mut shown: Vec<usize> = (0..traffic_end).step_by(step).collect();
    shown.push(traffic_end.saturating_sub(1));
    shown.push(samples.len() - 1);
    shown.dedup();
    for &index in &shown {
        let Some(s) = samples.get(index) else {
            continue;
        };
        let _ = writeln!(
            out,
            "{:>8.0} {:>10} {:>10.1} {:>8}{}",
            s.at,
            s.processes,
            mib(s.rss),
            s.fds,
            if index == 0 {
                "   first: before traffic"
            } else if index == samples.len() - 1 {
                "   last: traffic stopped, connections closed"
            } else {
                ""
            }
        );
    }
    let peak = samples.iter().max_by_key(|s| s.rss).copied();
    let peak_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    if let Some(peak) = peak {
        let _ = writeln!(
            out,
            "peak: RSS {:.1} MiB (t={:.0}s, {} processes), {} fds",
            mib(peak.rss),
            peak.at,
            peak.processes,
            peak_fds
        );
    }
    out
}
