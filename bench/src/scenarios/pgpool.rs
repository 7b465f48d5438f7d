//! `pgpool`: transaction pooling. pgbench against one PostgreSQL server straight
//! (`direct`), through switchyard (`pool_mode = "transaction"`) and through PgBouncer
//! (`pool_mode = transaction`), both with the same number of server connections, in the
//! same run. Every (script, query mode, clients) combination is one row: `pgbench -S` and
//! the default TPC-B-like script, `-M simple|extended|prepared`, 1 to 512 clients. Beside
//! each row, each pooler's CPU time (user + system, from /proc) per transaction: on two
//! cores shared with the database and pgbench, what a pooler spends is taken from them.
//! `--pgpool-rounds N` runs everything N times with the targets taking turns (in reverse
//! order every other round) and reports medians.
//!
//! pgbench gets one thread per client (`-j = -c`) up to `--pgpool-max-jobs`. In
//! `-M prepared` pgbench prepares each statement with a blocking call, which stalls that
//! thread's other clients; when those hold every pooled server connection inside a
//! transaction, the prepare waits for a connection that cannot come back until the queue
//! timeout. With one client per thread a blocked prepare stalls nobody else, so the cap
//! defaults to the largest default client count (512): more threads than cores costs the
//! load generator some context switches, the same for every target.
//!
//! Needs the Debian `postgresql` (server, `pgbench`) and `pgbouncer` packages, like
//! `postgres`.

use anyhow::Result;

use super::postgres::{Run, Setup};
use super::{Context, progress};
use crate::pg::Cluster;
use crate::table::{Better, Row};
use crate::targets::{PgPooling, TargetKind};

const SCENARIO: &str = "pgpool";

/// Server connections the direct runs may need besides one per client (superuser
/// reserve, the pgbench initialisation, the poolers' connections between runs).
const SPARE_CONNECTIONS: usize = 50;

/// A pgbench script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Script {
    /// `pgbench -S`: one primary-key SELECT per transaction.
    Select,
    /// The default TPC-B-like script: three UPDATEs, a SELECT and an INSERT in a
    /// transaction.
    Tpcb,
}

/// A pgbench query mode (`-M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryMode {
    /// One Query message per statement.
    Simple,
    /// Unnamed Parse/Bind/Execute per statement.
    Extended,
    /// Named statements, parsed once per client and then only bound.
    Prepared,
}

impl QueryMode {
    fn name(self) -> &'static str {
        match self {
            QueryMode::Simple => "simple",
            QueryMode::Extended => "extended",
            QueryMode::Prepared => "prepared",
        }
    }
}

/// Options of the `pgpool` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct PgpoolArgs {
    /// Targets of this scenario, comma separated. `haproxy` (`mode tcp`) pools nothing: one
    /// server session per client, bytes copied; it shows what a hop alone costs here. A
    /// target named twice also runs twice (`<target> (again)`, a control): its ratio to
    /// itself is what this machine alone makes of a ratio.
    #[arg(
        id = "pgpool-targets",
        long = "pgpool-targets",
        value_enum,
        value_delimiter = ',',
        default_value = "direct,switchyard,pgbouncer"
    )]
    pub targets: Vec<TargetKind>,
    /// pgbench client counts (`-c`), comma separated; each is one run per script and mode.
    #[arg(
        id = "pgpool-clients",
        long = "pgpool-clients",
        value_name = "N,..",
        value_delimiter = ',',
        default_value = "1,16,128,512"
    )]
    pub clients: Vec<usize>,
    /// pgbench query modes (`-M`), comma separated.
    #[arg(
        id = "pgpool-modes",
        long = "pgpool-modes",
        value_enum,
        value_delimiter = ',',
        default_value = "simple,extended,prepared"
    )]
    pub modes: Vec<QueryMode>,
    /// pgbench scripts, comma separated.
    #[arg(
        id = "pgpool-scripts",
        long = "pgpool-scripts",
        value_enum,
        value_delimiter = ',',
        default_value = "select,tpcb"
    )]
    pub scripts: Vec<Script>,
    /// Client counts of the connect-per-transaction rows (`pgbench -C`, TPC-B, two
    /// threads): how PHP-FPM and other per-request clients use a pooler, each transaction
    /// paying a login. `0` runs none.
    #[arg(
        id = "pgpool-connect-clients",
        long = "pgpool-connect-clients",
        value_name = "N,..",
        value_delimiter = ',',
        default_value = "16,64"
    )]
    pub connect_clients: Vec<usize>,
    /// Server connections of each pooler (switchyard `pool_size`, PgBouncer
    /// `default_pool_size`).
    #[arg(
        id = "pgpool-size",
        long = "pgpool-size",
        value_name = "N",
        default_value_t = 10
    )]
    pub pool_size: usize,
    /// Most pgbench threads (`-j` is the client count up to this).
    #[arg(
        id = "pgpool-max-jobs",
        long = "pgpool-max-jobs",
        value_name = "N",
        default_value_t = 512
    )]
    pub max_jobs: usize,
    /// Seconds per pgbench run (`-T`).
    #[arg(
        id = "pgpool-secs",
        long = "pgpool-secs",
        value_name = "SECS",
        default_value_t = 10
    )]
    pub secs: u64,
    /// pgbench scale factor (`pgbench -i -s`).
    #[arg(
        id = "pgpool-scale",
        long = "pgpool-scale",
        value_name = "N",
        default_value_t = 10
    )]
    pub scale: u32,
    /// Rounds: every target does every run once per round, targets taking turns (in
    /// reverse order every other round); each row is the median of the rounds (a load the
    /// machine had during one target's turn would otherwise decide a comparison within
    /// 10 %).
    #[arg(
        id = "pgpool-rounds",
        long = "pgpool-rounds",
        value_name = "N",
        default_value_t = 1
    )]
    pub rounds: usize,
}

/// Every (script, mode, clients) run, in table order.
fn runs(args: &PgpoolArgs) -> Vec<Run> {
    let mut runs = Vec::new();
    for &script in &args.scripts {
        for &mode in &args.modes {
            for &clients in &args.clients {
                let jobs = clients.min(args.max_jobs).max(1);
                let (name, mut pgbench_args) = match script {
                    Script::Select => ("pgbench -S", vec!["-S".to_string()]),
                    Script::Tpcb => ("TPC-B", Vec::new()),
                };
                pgbench_args.extend([
                    "-M".to_string(),
                    mode.name().to_string(),
                    "-c".to_string(),
                    clients.to_string(),
                    "-j".to_string(),
                    jobs.to_string(),
                ]);
                let noun = if clients == 1 { "client" } else { "clients" };
                runs.push(Run {
                    metric: format!("{name} -M {}, {clients} {noun} (tps)", mode.name()),
                    better: Better::Higher,
                    args: pgbench_args,
                    latency: false,
                    writes: script == Script::Tpcb,
                });
            }
        }
    }
    for &clients in args.connect_clients.iter().filter(|&&c| c > 0) {
        // Two threads, fewer than clients: pgbench connects with a blocking call, so a
        // pooler whose logins wait for a server connection stalls the thread's others.
        runs.push(Run {
            metric: format!("TPC-B -C (a login per transaction), {clients} clients (tps)"),
            better: Better::Higher,
            args: ["-C", "-c", &clients.to_string(), "-j", "2"]
                .map(String::from)
                .to_vec(),
            latency: false,
            writes: true,
        });
    }
    runs
}

/// Runs the scenario on every target of `--pgpool-targets`.
pub async fn run(ctx: &Context, args: &PgpoolArgs) -> Result<Vec<Row>> {
    let most_clients = args.clients.iter().copied().max().unwrap_or(1);
    progress(format!("initdb and pgbench -i -s {}", args.scale));
    let cluster = Cluster::start(args.scale, most_clients + SPARE_CONNECTIONS).await?;
    let setup = Setup {
        scenario: SCENARIO,
        cluster: &cluster,
        pooling: PgPooling::Transaction {
            size: args.pool_size.max(1),
        },
        scale: args.scale,
        secs: args.secs,
        rounds: args.rounds,
    };
    let rows = setup.measure(ctx, &args.targets, &runs(args)).await;
    cluster.stop().await;
    rows
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PgpoolArgs,
    }

    fn parse(argv: &[&str]) -> PgpoolArgs {
        let argv = std::iter::once("bench").chain(argv.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.args,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn defaults_cover_both_scripts_three_modes_and_four_client_counts() {
        let runs = runs(&parse(&[]));
        assert_eq!(runs.len(), 2 * 3 * 4 + 2);
        assert_eq!(runs[0].metric, "pgbench -S -M simple, 1 client (tps)");
        assert_eq!(
            runs[0].args,
            ["-S", "-M", "simple", "-c", "1", "-j", "1"].map(String::from)
        );
        let last = &runs[runs.len() - 3];
        assert_eq!(last.metric, "TPC-B -M prepared, 512 clients (tps)");
        assert_eq!(
            last.args,
            ["-M", "prepared", "-c", "512", "-j", "512"].map(String::from)
        );
        let connecting = &runs[runs.len() - 1];
        assert_eq!(
            connecting.metric,
            "TPC-B -C (a login per transaction), 64 clients (tps)"
        );
        assert_eq!(
            connecting.args,
            ["-C", "-c", "64", "-j", "2"].map(String::from)
        );
    }

    #[test]
    fn threads_stop_at_the_cap() {
        let args = parse(&[
            "--pgpool-clients",
            "16,128",
            "--pgpool-max-jobs",
            "64",
            "--pgpool-modes",
            "prepared",
            "--pgpool-scripts",
            "tpcb",
            "--pgpool-connect-clients",
            "0",
        ]);
        let jobs: Vec<String> = runs(&args)
            .into_iter()
            .map(|run| run.args[5].clone())
            .collect();
        assert_eq!(jobs, ["16", "64"]);
    }
}
