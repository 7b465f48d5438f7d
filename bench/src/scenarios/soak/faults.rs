//! The fault schedule: periodic tasks that break things while the traffic runs, each
//! recording its window in the ledger (see [`super::ledger::Fault`] for what each window
//! excuses).
//!
//! - an HTTP backend and an echo backend killed with SIGKILL in turn, restarted on the
//!   same address two seconds later; the window closes when the proxy sees it up again;
//! - the PostgreSQL primary crashed and the replica promoted ([`Database::failover`]);
//! - `reload` every 10 s with a changed config (weights, a response header, a timeout);
//! - a binary upgrade every 60 s;
//! - a drain/ready cycle of one HTTP backend (drained 5 s, then ready).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::sync::Mutex;

use super::database::Database;
use super::ledger::{Fault, Ledger};
use super::proxy::Proxy;
use crate::backend::{BackendKind, BackendProcess};

/// How long a killed backend stays away before it is started again.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long the proxy may take to see a restarted backend up (health checks every 500 ms,
/// `rise = 2`).
const BACK_WITHIN: Duration = Duration::from_secs(30);

/// How often each fault recurs.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Between kills of each backend kind.
    pub kill_every: Duration,
    /// Between failovers of the PostgreSQL primary.
    pub promote_every: Duration,
    /// Between reloads.
    pub reload_every: Duration,
    /// Between binary upgrades.
    pub upgrade_every: Duration,
    /// Between drain/ready cycles.
    pub drain_every: Duration,
}

/// Two child backends of one kind, the servers `{prefix}1` and `{prefix}2` of `pool`.
pub struct BackendPair {
    kind: BackendKind,
    pool: &'static str,
    prefix: &'static str,
    threads: usize,
    processes: Mutex<[Option<BackendProcess>; 2]>,
    /// Their addresses (kept across restarts).
    pub addrs: [SocketAddr; 2],
}

impl BackendPair {
    /// Starts two `kind` children on free ports.
    pub async fn start(
        kind: BackendKind,
        pool: &'static str,
        prefix: &'static str,
        threads: usize,
    ) -> Result<Self> {
        let first = BackendProcess::spawn_kind(kind, threads, None).await?;
        let second = BackendProcess::spawn_kind(kind, threads, None).await?;
        let addrs = [first.addrs()[0], second.addrs()[0]];
        Ok(BackendPair {
            kind,
            pool,
            prefix,
            threads,
            processes: Mutex::new([Some(first), Some(second)]),
            addrs,
        })
    }

    /// Kills server `index` with SIGKILL, starts it again after [`DOWN_FOR`] and waits
    /// until the proxy sees it up; the window is `fault`'s.
    async fn kill_and_restart(
        &self,
        index: usize,
        fault: Fault,
        proxy: &Proxy,
        ledger: &Ledger,
    ) -> Result<()> {
        let process = self.processes.lock().await[index].take();
        let window = ledger.fault_begin(fault);
        if let Some(process) = process {
            process.kill().await?;
        }
        tokio::time::sleep(DOWN_FOR).await;
        let restarted =
            BackendProcess::spawn_kind(self.kind, self.threads, Some(self.addrs[index]))
                .await
                .context("restarting a killed backend")?;
        self.processes.lock().await[index] = Some(restarted);
        let name = format!("{}{}", self.prefix, index + 1);
        proxy
            .wait_server(self.pool, &name, None, BACK_WITHIN)
            .await?;
        ledger.fault_end(window);
        Ok(())
    }

    /// Stops both children.
    pub async fn stop(&self) {
        for process in self.processes.lock().await.iter_mut() {
            if let Some(process) = process.take() {
                let _ = process.stop().await;
            }
        }
    }
}

/// Everything the fault tasks act on.
pub struct Targets {
    /// The proxy.
    pub proxy: Arc<Proxy>,
    /// The echo backends (pool `echo`).
    pub echo: Arc<BackendPair>,
    /// The HTTP backends (pool `web`).
    pub web: Arc<BackendPair>,
    /// The PostgreSQL servers.
    pub database: Arc<Mutex<Database>>,
    /// Where windows and notes go.
    pub ledger: Arc<Ledger>,
}

/// Sleeps `period` unless the run stops first; `false` when it stopped.
async fn wait(period: Duration, stop: &AtomicBool) -> bool {
    let deadline = tokio::time::Instant::now() + period;
    while tokio::time::Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100).min(period)).await;
    }
    !stop.load(Ordering::Relaxed)
}

/// Starts every fault task; each ends when `stop` is set (after its current fault).
pub fn spawn(
    targets: &Arc<Targets>,
    schedule: Schedule,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // Kills: HTTP and echo backends alternate servers, offset by half a period.
    for (pair, fault, offset) in [
        (targets.web.clone(), Fault::KillHttpBackend, 2),
        (targets.echo.clone(), Fault::KillEchoBackend, 4),
    ] {
        let (targets, stop) = (targets.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut index = 0;
            let mut period = schedule.kill_every / offset;
            while wait(period, &stop).await {
                period = schedule.kill_every;
                let killed = pair
                    .kill_and_restart(index, fault, &targets.proxy, &targets.ledger)
                    .await;
                if let Err(error) = killed {
                    targets.ledger.note(format!("{}: {error:#}", fault.name()));
                }
                index = 1 - index;
            }
        }));
    }
    let (t, s) = (targets.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        while wait(schedule.promote_every, &s).await {
            let mut database = t.database.lock().await;
            if let Err(error) = database.failover(&t.proxy, &t.ledger).await {
                t.ledger
                    .note(format!("{}: {error:#}", Fault::PromoteReplica.name()));
            }
        }
    }));
    let (t, s) = (targets.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        let mut generation = 0;
        while wait(schedule.reload_every, &s).await {
            generation += 1;
            let window = t.ledger.fault_begin(Fault::Reload);
            if let Err(error) = t.proxy.reload(generation).await {
                t.ledger.note(format!("reload {generation}: {error:#}"));
            }
            t.ledger.fault_end(window);
        }
    }));
    let (t, s) = (targets.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        while wait(schedule.upgrade_every, &s).await {
            let window = t.ledger.fault_begin(Fault::Upgrade);
            if let Err(error) = t.proxy.upgrade().await {
                t.ledger.note(format!("upgrade: {error:#}"));
            }
            t.ledger.fault_end(window);
        }
    }));
    let (t, s) = (targets.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        while wait(schedule.drain_every, &s).await {
            let window = t.ledger.fault_begin(Fault::DrainReady);
            let cycle = async {
                t.proxy.set_state("web", "w2", "drain").await?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                t.proxy.set_state("web", "w2", "ready").await
            };
            if let Err(error) = cycle.await {
                t.ledger.note(format!("drain/ready: {error:#}"));
            }
            t.ledger.fault_end(window);
        }
    }));
    tasks
}
