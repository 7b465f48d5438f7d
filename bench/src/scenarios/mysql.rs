//! `mysql`: sysbench against one MariaDB server, straight (`direct`) and through
//! switchyard (`protocol = "mysql"`), in the same run.
//!
//! With `--my-pool session` (the default) switchyard owns the handshake and relays the
//! login, one server connection per client, and HAProxy in `mode tcp` (which only copies
//! bytes) is measured too: `oltp_point_select` and `oltp_read_only` transactions per
//! second at 16 and 128 threads (each thread one session).
//!
//! With `--my-pool transaction` switchyard authenticates the clients itself
//! (`auth = "mysql_native_password"`, sysbench's user as its one `[[user]]`) and shares a
//! transaction pool of `--my-pool-size` server connections between them: `oltp_read_only`
//! (prepared statements) at 128 and 512 threads, against `direct` with one server session
//! per thread. HAProxy cannot pool and is skipped. Each run also reports the most server
//! sessions of sysbench's user seen on MariaDB during it (sampled twice a second).
//!
//! Beside each run's tps, each proxy's CPU time (user + system, from /proc) per transaction:
//! on two cores shared with MariaDB and sysbench, what a proxy spends is taken from them.
//!
//! The targets take turns at each run, each started for its turn (in reverse order every
//! other round); `--my-rounds N` repeats that N times and reports medians.
//!
//! Needs the Debian `mariadb-server` (run as the `mysql` OS user) and `sysbench` packages.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::process::Command;

use super::{Context, median, progress};
use crate::mariadb::{MariaDb, SBTEST, sysbench_connection};
use crate::sys::per_unit_us;
use crate::table::{Better, Row};
use crate::targets::{MyPooling, RunningTarget, TargetKind};

const SCENARIO: &str = "mysql";

/// Server sessions MariaDB allows besides one per sysbench thread (root's CLI, the
/// proxies' connections between runs).
const SPARE_CONNECTIONS: usize = 50;

/// How often the server's sessions are counted during a transaction-mode run.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// How switchyard shares MariaDB connections (`--my-pool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolMode {
    /// One server connection per client session, the login relayed (the pool's default).
    Session,
    /// A transaction pool: `pool_mode = "transaction"`, proxy-side authentication.
    Transaction,
}

/// Options of the `mysql` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct MysqlArgs {
    /// Rounds: every target does every run once per round, the targets taking turns (in
    /// reverse order every other round); each row is the median of the rounds, so a load
    /// the machine had during one turn moves one sample, not a target's whole result.
    #[arg(
        id = "my-rounds",
        long = "my-rounds",
        value_name = "N",
        default_value_t = 1
    )]
    pub rounds: usize,
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
    /// sysbench threads, comma separated [default: 16,128; with `--my-pool transaction`
    /// 128,512].
    #[arg(
        id = "my-threads",
        long = "my-threads",
        value_name = "N,..",
        value_delimiter = ','
    )]
    pub threads: Vec<usize>,
    /// switchyard's pool: `session` (the login relayed, a server connection per client;
    /// HAProxy measured too) or `transaction` (proxy-side `mysql_native_password`, clients'
    /// transactions share `--my-pool-size` server connections; `oltp_read_only` only,
    /// HAProxy skipped).
    #[arg(
        id = "my-pool",
        long = "my-pool",
        value_enum,
        default_value = "session"
    )]
    pub pool: PoolMode,
    /// Server connections of switchyard's transaction pool (`pool_size`).
    #[arg(
        id = "my-pool-size",
        long = "my-pool-size",
        value_name = "N",
        default_value_t = 10
    )]
    pub pool_size: usize,
}

/// One sysbench run: a script at a thread count.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    script: &'static str,
    threads: usize,
    /// The tps row's metric.
    metric: String,
    /// The server-sessions row's metric, counted in transaction mode only.
    sessions_metric: Option<String>,
}

impl MysqlArgs {
    /// The thread counts: `--my-threads`, or the mode's default.
    fn thread_counts(&self) -> Vec<usize> {
        if !self.threads.is_empty() {
            return self.threads.clone();
        }
        match self.pool {
            PoolMode::Session => vec![16, 128],
            PoolMode::Transaction => vec![128, 512],
        }
    }

    /// switchyard's pooling for [`RunningTarget::start_mysql`].
    fn pooling(&self) -> MyPooling {
        match self.pool {
            PoolMode::Session => MyPooling::Session,
            PoolMode::Transaction => MyPooling::Transaction {
                size: self.pool_size.max(1),
                user: SBTEST,
            },
        }
    }

    /// Every run, in table order.
    fn runs(&self) -> Vec<Run> {
        let scripts: &[&'static str] = match self.pool {
            PoolMode::Session => &["oltp_point_select", "oltp_read_only"],
            PoolMode::Transaction => &["oltp_read_only"],
        };
        let threads = self.thread_counts();
        let mut runs = Vec::new();
        for &script in scripts {
            for &threads in &threads {
                let run = match self.pool {
                    PoolMode::Session => Run {
                        script,
                        threads,
                        metric: format!("{script}, {threads} threads (tps)"),
                        sessions_metric: None,
                    },
                    PoolMode::Transaction => {
                        let pool = format!("transaction pool of {}", self.pool_size.max(1));
                        Run {
                            script,
                            threads,
                            metric: format!("{script}, {threads} threads, {pool} (tps)"),
                            sessions_metric: Some(format!(
                                "{script}, {threads} threads, {pool}: most server sessions"
                            )),
                        }
                    }
                };
                runs.push(run);
            }
        }
        runs
    }

    /// Whether `target` is measured in this mode.
    fn measures(&self, target: TargetKind) -> bool {
        match self.pool {
            PoolMode::Session => matches!(
                target,
                TargetKind::Direct | TargetKind::Switchyard | TargetKind::Haproxy
            ),
            PoolMode::Transaction => matches!(target, TargetKind::Direct | TargetKind::Switchyard),
        }
    }
}

/// Runs the scenario on every selected target (direct, switchyard and, in session mode,
/// haproxy).
pub async fn run(ctx: &Context, args: &MysqlArgs) -> Result<Vec<Row>> {
    let runs = args.runs();
    progress(format!(
        "mariadb-install-db and sysbench prepare ({} rows)",
        args.rows
    ));
    let most = runs.iter().map(|run| run.threads).max().unwrap_or(16);
    let server = MariaDb::start(args.rows, most + SPARE_CONNECTIONS).await?;
    let targets: Vec<TargetKind> = ctx
        .targets
        .iter()
        .copied()
        .filter(|&target| {
            let measured = args.measures(target);
            if !measured && target == TargetKind::Haproxy {
                progress("haproxy: skipped, it copies bytes and cannot pool transactions");
            }
            measured
        })
        .collect();
    let rounds = args.rounds.max(1);
    // turns[run][target]: what each round's sysbench reported, and the sessions counted.
    let mut turns: Vec<Vec<Vec<Turn>>> = (0..runs.len())
        .map(|_| (0..targets.len()).map(|_| Vec::new()).collect())
        .collect();
    // The targets take turns at each run of each round, each started for its turn alone
    // (the sessions a run counts on the server are its target's only).
    for round in 1..=rounds {
        for (r, run) in runs.iter().enumerate() {
            for t in super::turn_order(targets.len(), round) {
                let target = targets[t];
                progress(format!(
                    "{}: {}, round {round} of {rounds}",
                    super::instance_name(&targets, t),
                    run.metric
                ));
                let turn = take_turn(&server, target, ctx, args, run).await?;
                turns[r][t].push(turn);
            }
        }
    }
    let mut rows = Vec::new();
    for (run, turns) in runs.iter().zip(turns) {
        let mut cpu_rows = Vec::new();
        for (t, (&target, turns)) in targets.iter().zip(turns).enumerate() {
            let again = super::named_before(&targets, t);
            let (row, cpu, sessions) = summarise(run, target, turns);
            rows.push(row.again(again));
            cpu_rows.extend(cpu.map(|cpu| cpu.again(again)));
            if let (Some(metric), Some(sessions)) = (&run.sessions_metric, sessions) {
                let counted = sessions.map(|n| n as f64);
                rows.push(
                    Row::measured(SCENARIO, metric, target, Better::Lower, counted).again(again),
                );
            }
        }
        rows.extend(cpu_rows);
    }
    server.stop().await;
    Ok(rows)
}

/// Starts `target`, has sysbench do `run` through it (counting the server's sessions if the
/// run asks), and stops it; a target that did not start gets a failed turn.
async fn take_turn(
    server: &MariaDb,
    target: TargetKind,
    ctx: &Context,
    args: &MysqlArgs,
    run: &Run,
) -> Result<Turn> {
    let started =
        RunningTarget::start_mysql(target, server.address(), &ctx.target_opts, args.pooling())
            .await;
    let running = match started {
        Ok(running) => running,
        Err(error) => {
            return Ok(Turn {
                report: Err(error),
                cpu_per_transaction: None,
                sessions: None,
            });
        }
    };
    let load = sysbench(running.addr(), run, args.secs);
    let (report, sessions) = match &run.sessions_metric {
        None => (running.cpu_during(load).await, None),
        Some(_) => {
            let (report, sessions) = sampling_sessions(server, running.cpu_during(load)).await;
            (report, Some(sessions))
        }
    };
    let (report, cpu_per_transaction) = match report {
        Ok((report, cpu)) => {
            let per_transaction = per_unit_us(cpu, report.transactions);
            (Ok(report), per_transaction)
        }
        Err(error) => (Err(error), None),
    };
    if let Ok(report) = &report {
        progress(format!("  -> {:.0} tps", report.tps));
    }
    if !report.as_ref().is_ok_and(|report| !report.troubled())
        && let Some(log) = running.log_tail(20)
    {
        progress(format!("{target}'s log, last lines:\n{log}"));
    }
    running.stop().await?;
    Ok(Turn {
        report,
        cpu_per_transaction,
        sessions,
    })
}

/// One target's turn at one run.
struct Turn {
    report: Result<Report>,
    /// The proxy's CPU time (user + system, from /proc) over the transactions, in µs; `None`
    /// for the direct path.
    cpu_per_transaction: Option<f64>,
    /// The most sessions counted on the server, for runs that count them.
    sessions: Option<Result<usize>>,
}

/// A run's row for one target: the median tps of its turns (failed if a turn failed), with
/// the first trouble sysbench reported; the median of the proxy's CPU time per transaction
/// (none for the direct path); and the most sessions counted in any turn.
fn summarise(
    run: &Run,
    target: TargetKind,
    turns: Vec<Turn>,
) -> (Row, Option<Row>, Option<Result<usize>>) {
    let mut tps = Vec::new();
    let mut cpu = Vec::new();
    let mut note = None;
    let mut failure = None;
    let mut sessions: Option<Result<usize>> = None;
    for turn in turns {
        cpu.extend(turn.cpu_per_transaction);
        match turn.report {
            Ok(report) => {
                tps.push(report.tps);
                note = note.or_else(|| report.trouble());
            }
            Err(error) => failure = failure.or(Some(error)),
        }
        if let Some(counted) = turn.sessions {
            sessions = Some(match (sessions, counted) {
                (Some(Ok(most)), Ok(n)) => Ok(most.max(n)),
                (Some(Ok(most)), Err(_)) => Ok(most),
                (_, counted) => counted,
            });
        }
    }
    let failure_free = failure.is_none();
    let outcome = match failure {
        Some(error) => Err(error),
        None => Ok(median(tps.into_iter())),
    };
    let row = Row::measured(SCENARIO, &run.metric, target, Better::Higher, outcome);
    let row = match note {
        Some(note) => row.with_note(note),
        None => row,
    };
    // A failed turn fails the tps row; the CPU row then has nothing to say.
    let cpu_row = (failure_free && !cpu.is_empty()).then(|| {
        Row::ok(
            SCENARIO,
            format!("{}: proxy CPU per transaction (us)", run.metric),
            target,
            median(cpu.into_iter()),
            Better::Lower,
        )
    });
    (row, cpu_row, sessions)
}

/// Runs `sysbench` while counting the server's sessions of sysbench's user every
/// [`SAMPLE_EVERY`]; its outcome and the most sessions counted (an error if no count
/// succeeded).
async fn sampling_sessions<T>(
    server: &MariaDb,
    sysbench: impl Future<Output = Result<T>>,
) -> (Result<T>, Result<usize>) {
    let mut most: Result<usize> = Err(anyhow::anyhow!("no session count"));
    let report = {
        let sampler = async {
            loop {
                match server.sessions_of(SBTEST.0).await {
                    Ok(n) => most = Ok(most.as_ref().map_or(n, |&m| m.max(n))),
                    Err(error) if most.is_err() => most = Err(error),
                    Err(_) => {}
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        };
        tokio::select! {
            report = sysbench => report,
            () = sampler => unreachable!("the sampler loops until sysbench ends"),
        }
    };
    (report, most)
}

/// What one sysbench run reported.
#[derive(Clone, Debug, PartialEq)]
struct Report {
    /// Transactions per second.
    tps: f64,
    /// Transactions done.
    transactions: f64,
    /// Errors sysbench ignored (a failed statement rolls the transaction back and retries).
    ignored_errors: u64,
    /// Connections sysbench had to make again.
    reconnects: u64,
}

impl Report {
    fn troubled(&self) -> bool {
        self.tps == 0.0 || self.ignored_errors > 0 || self.reconnects > 0
    }

    /// A footnote for a run with errors or reconnects.
    fn trouble(&self) -> Option<String> {
        (self.ignored_errors > 0 || self.reconnects > 0).then(|| {
            format!(
                "sysbench: {} ignored errors, {} reconnects",
                self.ignored_errors, self.reconnects
            )
        })
    }
}

/// Runs one sysbench script against `address`; what its report says.
async fn sysbench(address: SocketAddr, run: &Run, secs: u64) -> Result<Report> {
    let output = Command::new("sysbench")
        .arg(run.script)
        .args(sysbench_connection(address))
        .args([
            "--tables=1".to_string(),
            format!("--threads={}", run.threads),
            format!("--time={secs}"),
            "--report-interval=0".to_string(),
            "run".to_string(),
        ])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(secs + 60), output)
        .await
        .context("sysbench did not finish")?
        .context("running sysbench")?;
    let report = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // All of it on stderr with the progress lines: the row keeps only the first FATAL.
        progress(format!(
            "sysbench failed ({}); its stderr:\n{}\nits stdout (last 20 lines):\n{}",
            output.status,
            stderr.trim(),
            last_lines(&report, 20)
        ));
        let first = stderr
            .lines()
            .chain(report.lines())
            .find(|l| l.contains("FATAL"));
        bail!(
            "sysbench failed: {}",
            first.unwrap_or("(no FATAL line)").trim()
        );
    }
    let parsed = parse_report(&report)
        .with_context(|| format!("no transaction rate in sysbench's report: {report}"))?;
    if parsed.troubled() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        progress(format!(
            "sysbench: {} tps, {} ignored errors, {} reconnects; its stderr (last 20 lines):\n{}",
            parsed.tps,
            parsed.ignored_errors,
            parsed.reconnects,
            last_lines(&stderr, 20)
        ));
    }
    Ok(parsed)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The rate and error counts of sysbench's report:
///
/// ```text
///     transactions:                        123456 (12345.67 per sec.)
///     ignored errors:                      0      (0.00 per sec.)
///     reconnects:                          0      (0.00 per sec.)
/// ```
fn parse_report(report: &str) -> Option<Report> {
    let field = |name: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':'))
    };
    let transactions = field("transactions")?;
    let tps = transactions
        .split('(')
        .nth(1)
        .and_then(|rate| rate.split_whitespace().next())
        .and_then(|number| number.parse::<f64>().ok())?;
    let done = transactions
        .split_whitespace()
        .next()
        .and_then(|number| number.parse::<f64>().ok())?;
    let count = |name: &str| {
        field(name)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Report {
        tps,
        transactions: done,
        ignored_errors: count("ignored errors"),
        reconnects: count("reconnects"),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MysqlArgs,
    }

    fn parse(argv: &[&str]) -> MysqlArgs {
        let argv = std::iter::once("bench").chain(argv.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.args,
            Err(error) => panic!("{error}"),
        }
    }

    fn metrics(args: &MysqlArgs) -> Vec<String> {
        args.runs().into_iter().map(|run| run.metric).collect()
    }

    #[test]
    fn session_mode_is_the_default_and_keeps_its_runs() {
        let args = parse(&[]);
        assert_eq!(args.pooling(), MyPooling::Session);
        assert_eq!(
            metrics(&args),
            [
                "oltp_point_select, 16 threads (tps)",
                "oltp_point_select, 128 threads (tps)",
                "oltp_read_only, 16 threads (tps)",
                "oltp_read_only, 128 threads (tps)",
            ]
        );
        assert!(args.runs().iter().all(|run| run.sessions_metric.is_none()));
        assert!(args.measures(TargetKind::Haproxy));
    }

    #[test]
    fn transaction_mode_runs_read_only_at_its_own_thread_counts() {
        let args = parse(&["--my-pool", "transaction"]);
        assert_eq!(
            args.pooling(),
            MyPooling::Transaction {
                size: 10,
                user: SBTEST
            }
        );
        assert_eq!(
            metrics(&args),
            [
                "oltp_read_only, 128 threads, transaction pool of 10 (tps)",
                "oltp_read_only, 512 threads, transaction pool of 10 (tps)",
            ]
        );
        assert_eq!(
            args.runs()[1].sessions_metric.as_deref(),
            Some("oltp_read_only, 512 threads, transaction pool of 10: most server sessions")
        );
        assert!(!args.measures(TargetKind::Haproxy));
        assert!(args.measures(TargetKind::Switchyard));

        let args = parse(&[
            "--my-pool",
            "transaction",
            "--my-pool-size",
            "4",
            "--my-threads",
            "32",
        ]);
        assert_eq!(
            metrics(&args),
            ["oltp_read_only, 32 threads, transaction pool of 4 (tps)"]
        );
        let args = parse(&["--my-threads", "8"]);
        assert_eq!(metrics(&args)[0], "oltp_point_select, 8 threads (tps)");
    }

    #[test]
    fn reports_give_the_rate_the_count_and_the_errors() {
        let report = "SQL statistics:
    queries performed:
        read:                            1400
    transactions:                        100    (19.87 per sec.)
    queries:                             1600   (318.00 per sec.)
    ignored errors:                      3      (0.60 per sec.)
    reconnects:                          0      (0.00 per sec.)
";
        let parsed = parse_report(report).unwrap_or_else(|| panic!("no report"));
        assert_eq!(
            parsed,
            Report {
                tps: 19.87,
                transactions: 100.0,
                ignored_errors: 3,
                reconnects: 0
            }
        );
        assert!(parsed.troubled());
        assert!(parse_report("FATAL: nothing").is_none());
    }
}
