//! `mysql`: sysbench against one MariaDB server, straight (`direct`), through switchyard
//! (`protocol = "mysql"`, session mode: switchyard owns the handshake and relays the
//! login) and through HAProxy in `mode tcp` (which only copies bytes), in the same run.
//! Reports `oltp_point_select` and `oltp_read_only` transactions per second at 16 and
//! 128 threads (each thread one session).
//!
//! Needs the Debian `mariadb-server` (run as the `mysql` OS user) and `sysbench` packages.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::process::Command;

use super::{Context, progress};
use crate::mariadb::{MariaDb, sysbench_connection};
use crate::table::{Better, Row};
use crate::targets::{RunningTarget, TargetKind};

const SCENARIO: &str = "mysql";

/// Options of the `mysql` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct MysqlArgs {
    /// Seconds per sysbench run (`--time`).
    #[arg(
        id = "my-secs",
        long = "my-secs",
        value_name = "SECS",
        default_value_t = 10
    )]
    pub secs: u64,
    /// Rows in sysbench's table (`--table-size`).
    #[arg(
        id = "my-rows",
        long = "my-rows",
        value_name = "N",
        default_value_t = 100_000
    )]
    pub rows: usize,
    /// sysbench threads, comma separated.
    #[arg(
        id = "my-threads",
        long = "my-threads",
        value_delimiter = ',',
        default_value = "16,128"
    )]
    pub threads: Vec<usize>,
}

/// Runs the scenario on every selected target (direct, switchyard, haproxy).
pub async fn run(ctx: &Context, args: &MysqlArgs) -> Result<Vec<Row>> {
    progress(format!(
        "mariadb-install-db and sysbench prepare ({} rows)",
        args.rows
    ));
    let most = args.threads.iter().copied().max().unwrap_or(16);
    let server = MariaDb::start(args.rows, most + 50).await?;
    let runs: Vec<(&str, usize)> = ["oltp_point_select", "oltp_read_only"]
        .into_iter()
        .flat_map(|script| args.threads.iter().map(move |&threads| (script, threads)))
        .collect();
    let metric = |(script, threads): (&str, usize)| format!("{script}, {threads} threads (tps)");
    let mut rows = Vec::new();
    for &target in &ctx.targets {
        if !matches!(
            target,
            TargetKind::Direct | TargetKind::Switchyard | TargetKind::Haproxy
        ) {
            continue;
        }
        progress(format!("{target}"));
        let running =
            match RunningTarget::start_mysql(target, server.address(), &ctx.target_opts).await {
                Ok(running) => running,
                Err(error) => {
                    for &run in &runs {
                        let error = format!("{error:#}");
                        rows.push(Row::failed(
                            SCENARIO,
                            metric(run),
                            target,
                            Better::Higher,
                            error,
                        ));
                    }
                    continue;
                }
            };
        for &run in &runs {
            progress(format!("{target}: {}", metric(run)));
            let tps = sysbench(running.addr(), run, args.secs).await;
            rows.push(Row::measured(
                SCENARIO,
                metric(run),
                target,
                Better::Higher,
                tps,
            ));
        }
        running.stop().await?;
    }
    server.stop().await;
    Ok(rows)
}

/// Runs one sysbench script against `address`; transactions per second from its report.
async fn sysbench(address: SocketAddr, (script, threads): (&str, usize), secs: u64) -> Result<f64> {
    let output = Command::new("sysbench")
        .arg(script)
        .args(sysbench_connection(address))
        .args([
            "--tables=1".to_string(),
            format!("--threads={threads}"),
            format!("--time={secs}"),
            "--report-interval=0".to_string(),
            "run".to_string(),
        ])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(secs + 60), output)
        .await
        .context("sysbench did not finish")?
        .context("running sysbench")?;
    let report = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .chain(report.lines())
            .find(|l| l.contains("FATAL"));
        bail!(
            "sysbench failed: {}",
            first.unwrap_or("(no FATAL line)").trim()
        );
    }
    // "    transactions:                        123456 (12345.67 per sec.)"
    report
        .lines()
        .find_map(|line| line.trim().strip_prefix("transactions:"))
        .and_then(|rest| rest.split('(').nth(1))
        .and_then(|rate| rate.split_whitespace().next())
        .and_then(|number| number.parse::<f64>().ok())
        .with_context(|| format!("no transaction rate in sysbench's report: {report}"))
}
