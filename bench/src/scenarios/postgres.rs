//! `postgres`: pgbench against one PostgreSQL server, straight (`direct`), through
//! switchyard (`protocol = "postgres"`, session mode) and through PgBouncer in session mode,
//! in the same run. Reports `pgbench -S` (select-only) tps with C clients, its average
//! latency with one client (the per-query cost a proxy adds), and the default TPC-B-like
//! script's tps with C clients.
//!
//! Needs the Debian `postgresql` (server, `pgbench`) and `pgbouncer` packages; the server
//! and PgBouncer run as the `postgres` OS user.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::process::Command;

use super::{Context, median_row, progress};
use crate::pg::Cluster;
use crate::sys::per_unit_us;
use crate::table::{Better, Row};
use crate::targets::{PgPooling, RunningTarget, TargetKind};

const SCENARIO: &str = "postgres";

/// Options of the `postgres` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct PostgresArgs {
    /// Targets of this scenario, comma separated. `haproxy` (`mode tcp`) pools nothing: one
    /// server session per client, bytes copied; it shows what a hop alone costs here. A
    /// target named twice also runs twice (`<target> (again)`, a control): its ratio to
    /// itself is what this machine alone makes of a ratio.
    #[arg(
        id = "pg-targets",
        long = "pg-targets",
        value_enum,
        value_delimiter = ',',
        default_value = "direct,switchyard,pgbouncer"
    )]
    pub targets: Vec<TargetKind>,
    /// pgbench clients (`-c`) for the tps runs; each is one session.
    #[arg(
        id = "pg-clients",
        long = "pg-clients",
        value_name = "N",
        default_value_t = 16
    )]
    pub clients: usize,
    /// Seconds per pgbench run (`-T`).
    #[arg(
        id = "pg-secs",
        long = "pg-secs",
        value_name = "SECS",
        default_value_t = 10
    )]
    pub secs: u64,
    /// pgbench scale factor (`pgbench -i -s`).
    #[arg(
        id = "pg-scale",
        long = "pg-scale",
        value_name = "N",
        default_value_t = 10
    )]
    pub scale: u32,
}

/// One pgbench run: what it is called in the table and its extra arguments.
pub(super) struct Run {
    /// Row name in the table.
    pub metric: String,
    /// Whether higher or lower values win.
    pub better: Better,
    /// pgbench arguments besides connection, `-n`, `-T` and the database.
    pub args: Vec<String>,
    /// Report the average latency in µs instead of tps.
    pub latency: bool,
    /// The script updates the tables (TPC-B): the tables are loaded afresh before each
    /// turn (see [`Cluster::load_tables`]), so that no target runs on the dead rows of
    /// the turns before it.
    pub writes: bool,
}

fn runs(args: &PostgresArgs) -> Vec<Run> {
    let c = args.clients.to_string();
    vec![
        Run {
            metric: format!("pgbench -S, {c} clients (tps)"),
            better: Better::Higher,
            args: vec!["-S".into(), "-c".into(), c.clone(), "-j".into(), "2".into()],
            latency: false,
            writes: false,
        },
        Run {
            metric: "pgbench -S, 1 client, latency avg (us)".into(),
            better: Better::Lower,
            args: vec!["-S".into(), "-c".into(), "1".into()],
            latency: true,
            writes: false,
        },
        Run {
            metric: format!("TPC-B, {c} clients (tps)"),
            better: Better::Higher,
            args: vec!["-c".into(), c, "-j".into(), "2".into()],
            latency: false,
            writes: true,
        },
    ]
}

/// Runs the scenario on every target of `--pg-targets`.
pub async fn run(ctx: &Context, args: &PostgresArgs) -> Result<Vec<Row>> {
    progress(format!("initdb and pgbench -i -s {}", args.scale));
    let cluster = Cluster::start(args.scale, 300).await?;
    let setup = Setup {
        scenario: SCENARIO,
        cluster: &cluster,
        pooling: PgPooling::Session,
        scale: args.scale,
        secs: args.secs,
        rounds: 1,
    };
    let rows = setup.measure(ctx, &args.targets, &runs(args)).await;
    cluster.stop().await;
    rows
}

/// What a PostgreSQL scenario's runs share: the server, how the poolers pool, run length.
pub(super) struct Setup<'a> {
    /// Scenario name in the table.
    pub scenario: &'static str,
    /// The server every target leads to.
    pub cluster: &'a Cluster,
    /// switchyard's and PgBouncer's pool mode.
    pub pooling: PgPooling,
    /// pgbench scale factor, for loading the tables afresh.
    pub scale: u32,
    /// Seconds per pgbench run (`-T`).
    pub secs: u64,
    /// Rounds: every target does every run once per round, targets taking turns (see
    /// [`super::turn_order`]), and a row reports the median of the rounds, so that a load
    /// the machine had during one target's turn does not decide the comparison.
    pub rounds: usize,
}

/// What one pgbench run measured on one target.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// tps, or the average latency in µs.
    value: f64,
    /// The proxy's CPU time (user + system, all threads) per transaction, in µs: on two
    /// cores shared with the database and pgbench, the proxy's CPU is taken from theirs.
    /// `None` for the direct path.
    cpu_per_transaction: Option<f64>,
}

impl Setup<'_> {
    /// Starts each of `targets` in turn in front of the cluster and does every run through
    /// it, `rounds` times; one row per (run, target) with the median of the rounds, and one
    /// row of the proxy's CPU per transaction for each proxy. A target that does not start
    /// or a run that fails gets failed rows.
    pub async fn measure(
        &self,
        ctx: &Context,
        targets: &[TargetKind],
        runs: &[Run],
    ) -> Result<Vec<Row>> {
        let rounds = self.rounds.max(1);
        // samples[target][run]: one result per round.
        let mut samples: Vec<Vec<Vec<Result<Sample, String>>>> =
            vec![vec![Vec::new(); runs.len()]; targets.len()];
        let mut notes: Vec<Option<String>> = vec![None; targets.len()];
        for round in 1..=rounds {
            for t in super::turn_order(targets.len(), round) {
                let target = targets[t];
                let name = super::instance_name(targets, t);
                let turn = if rounds > 1 {
                    format!("{name}, round {round} of {rounds}")
                } else {
                    name.clone()
                };
                progress(&turn);
                let address = self.cluster.address();
                let running =
                    RunningTarget::start_postgres(target, address, &ctx.target_opts, self.pooling)
                        .await;
                let running = match running {
                    Ok(running) => running,
                    Err(error) => {
                        for results in &mut samples[t] {
                            results.push(Err(format!("{error:#}")));
                        }
                        continue;
                    }
                };
                if let Some(note) = running.note() {
                    progress(format!("{name}: {note}"));
                    notes[t] = Some(note.to_string());
                }
                for (r, run) in runs.iter().enumerate() {
                    progress(format!("{turn}: {}", run.metric));
                    if run.writes
                        && let Err(error) = self.cluster.load_tables(self.scale).await
                    {
                        samples[t][r].push(Err(format!("loading the tables: {error:#}")));
                        continue;
                    }
                    let sample = sample(self.cluster, &running, self.secs, run).await;
                    if let Ok(sample) = &sample {
                        progress(format!("  -> {:.0}", sample.value));
                    }
                    samples[t][r].push(sample.map_err(|error| format!("{error:#}")));
                }
                running.stop().await?;
            }
        }
        let mut rows = Vec::new();
        for (r, run) in runs.iter().enumerate() {
            let cpu_metric = format!("{}: proxy CPU per transaction (us)", run.metric);
            let mut cpu_rows = Vec::new();
            for (t, &target) in targets.iter().enumerate() {
                let again = super::named_before(targets, t);
                let results = &samples[t][r];
                let row = |metric: &str, better, pick: fn(&Sample) -> Option<f64>| {
                    let row = median_row(self.scenario, metric, target, better, results, pick)
                        .unwrap_or_else(|| {
                            Row::failed(
                                self.scenario,
                                metric,
                                target,
                                better,
                                "not measured".to_string(),
                            )
                        });
                    let row = row.again(again);
                    match &notes[t] {
                        Some(note) => row.with_note(note.clone()),
                        None => row,
                    }
                };
                rows.push(row(&run.metric, run.better, |s| Some(s.value)));
                if target != TargetKind::Direct {
                    cpu_rows.push(row(&cpu_metric, Better::Lower, |s| s.cpu_per_transaction));
                }
            }
            rows.extend(cpu_rows);
        }
        Ok(rows)
    }
}

/// Runs pgbench once through `running`, reading the proxy's CPU time around it.
async fn sample(
    cluster: &Cluster,
    running: &RunningTarget,
    secs: u64,
    run: &Run,
) -> Result<Sample> {
    let (report, cpu) = running
        .cpu_during(pgbench(cluster, running.addr(), secs, run))
        .await?;
    Ok(Sample {
        value: report.value,
        cpu_per_transaction: per_unit_us(cpu, report.transactions),
    })
}

/// What a pgbench report says.
struct Report {
    /// tps, or the average latency in µs.
    value: f64,
    /// Transactions processed.
    transactions: f64,
}

/// Runs pgbench against `address` and reads tps or the average latency from its report.
async fn pgbench(cluster: &Cluster, address: SocketAddr, secs: u64, run: &Run) -> Result<Report> {
    let output = Command::new(cluster.bin("pgbench"))
        .args(["-n", "-h"])
        .arg(address.ip().to_string())
        .arg("-p")
        .arg(address.port().to_string())
        .args(["-U", "postgres", "-T"])
        .arg(secs.to_string())
        .args(&run.args)
        .arg("postgres")
        .env("PGSSLMODE", "disable")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(secs + 60), output)
        .await
        .context("pgbench did not finish")?
        .context("running pgbench")?;
    let report = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // With hundreds of clients every one may report the same error: keep the first.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().find(|line| !line.trim().is_empty());
        bail!("pgbench failed: {}", first.unwrap_or("(no stderr)").trim());
    }
    let (prefix, scale) = if run.latency {
        ("latency average = ", 1000.0)
    } else {
        ("tps = ", 1.0)
    };
    Ok(Report {
        value: figure(&report, prefix)? * scale,
        transactions: figure(&report, "number of transactions actually processed: ")?,
    })
}

/// The number after `prefix` on a line of pgbench's report.
fn figure(report: &str, prefix: &str) -> Result<f64> {
    report
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse::<f64>().ok())
        .with_context(|| format!("no `{prefix}` in pgbench's report: {report}"))
}
