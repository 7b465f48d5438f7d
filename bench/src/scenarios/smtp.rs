//! `smtp`: Postfix's `smtp-source` sends messages into Postfix's `smtp-sink`, straight
//! (`direct`), through switchyard (`protocol = "smtp"`: it greets, answers EHLO and reads
//! the envelope itself, and opens the server session at the first RCPT) and through HAProxy
//! in `mode tcp` (which only copies bytes), in the same run. Reports messages per second
//! for each message size and number of parallel sessions, one connection per message.
//!
//! Needs the Debian `postfix` package for the two tools (the Postfix service itself is never
//! started). The sink drops root for `nobody` once its socket is open.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::process::{Child, Command};

use super::{Context, progress};
use crate::sys::free_port;
use crate::table::{Better, Row};
use crate::targets::{RunningTarget, TargetKind, wait_ready};

const SCENARIO: &str = "smtp";

/// Options of the `smtp` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct SmtpArgs {
    /// Message sizes in bytes (`smtp-source -l`), comma separated.
    #[arg(
        id = "smtp-sizes",
        long = "smtp-sizes",
        value_name = "BYTES",
        value_delimiter = ',',
        default_value = "1024,102400"
    )]
    pub sizes: Vec<usize>,
    /// Parallel SMTP sessions (`smtp-source -s`), comma separated.
    #[arg(
        id = "smtp-sessions",
        long = "smtp-sessions",
        value_name = "N",
        value_delimiter = ',',
        default_value = "1,50"
    )]
    pub sessions: Vec<usize>,
    /// Messages per run (`smtp-source -m`), one count per entry of `--smtp-sessions` in
    /// the same order, or one count for all of them.
    #[arg(
        id = "smtp-messages",
        long = "smtp-messages",
        value_name = "N",
        value_delimiter = ',',
        default_value = "2000,20000"
    )]
    pub messages: Vec<u64>,
    /// Postfix's `smtp-source`.
    #[arg(
        id = "smtp-source-bin",
        long = "smtp-source-bin",
        default_value = "/usr/sbin/smtp-source"
    )]
    pub source_bin: PathBuf,
    /// Postfix's `smtp-sink`.
    #[arg(
        id = "smtp-sink-bin",
        long = "smtp-sink-bin",
        default_value = "/usr/sbin/smtp-sink"
    )]
    pub sink_bin: PathBuf,
}

/// One smtp-source run: so many messages of one size over so many parallel sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    size: usize,
    sessions: usize,
    messages: u64,
}

impl Run {
    fn metric(self) -> String {
        let plural = if self.sessions == 1 { "" } else { "s" };
        format!(
            "{} messages, {} session{plural} (msg/s)",
            size_label(self.size),
            self.sessions
        )
    }
}

/// Every (size, sessions) pair in the order asked, with its message count.
fn runs(args: &SmtpArgs) -> Result<Vec<Run>> {
    let messages: Vec<u64> = match args.messages[..] {
        [all] => vec![all; args.sessions.len()],
        _ if args.messages.len() == args.sessions.len() => args.messages.clone(),
        _ => bail!(
            "--smtp-messages has {} counts for {} entries of --smtp-sessions (give one per entry, or one for all)",
            args.messages.len(),
            args.sessions.len()
        ),
    };
    if args.sizes.contains(&0) || args.sessions.contains(&0) || messages.contains(&0) {
        bail!("--smtp-sizes, --smtp-sessions and --smtp-messages must be at least 1");
    }
    Ok(args
        .sizes
        .iter()
        .flat_map(|&size| {
            args.sessions
                .iter()
                .zip(&messages)
                .map(move |(&sessions, &messages)| Run {
                    size,
                    sessions,
                    messages,
                })
        })
        .collect())
}

/// `1 KiB` for whole KiB, else bytes.
fn size_label(bytes: usize) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// Runs the scenario on every selected target (direct, switchyard, haproxy).
pub async fn run(ctx: &Context, args: &SmtpArgs) -> Result<Vec<Row>> {
    let runs = runs(args)?;
    let sink = Sink::start(&args.sink_bin, &ctx.target_opts.ready_timeout).await?;
    let mut rows = Vec::new();
    for &target in &ctx.targets {
        if !matches!(
            target,
            TargetKind::Direct | TargetKind::Switchyard | TargetKind::Haproxy
        ) {
            continue;
        }
        progress(format!("{target}"));
        let running = match RunningTarget::start_smtp(target, sink.address, &ctx.target_opts).await
        {
            Ok(running) => running,
            Err(error) => {
                let error = format!("{error:#}");
                rows.extend(runs.iter().map(|run| {
                    Row::failed(SCENARIO, run.metric(), target, Better::Higher, &error)
                }));
                continue;
            }
        };
        for &run in &runs {
            progress(format!(
                "{target}: {} ({} messages)",
                run.metric(),
                run.messages
            ));
            let sent = source(&args.source_bin, running.addr(), run).await;
            let warning = sent.as_ref().ok().and_then(|sent| sent.warning.clone());
            let rate = sent.map(|sent| sent.rate);
            let row = Row::measured(SCENARIO, run.metric(), target, Better::Higher, rate);
            rows.push(match warning {
                Some(warning) => row.with_note(format!("smtp-source said: {warning}")),
                None => row,
            });
        }
        running.stop().await?;
    }
    sink.stop().await;
    Ok(rows)
}

/// What one smtp-source run measured.
struct Sent {
    /// Messages per second, from the start of the process to its exit.
    rate: f64,
    /// The first line smtp-source wrote to stderr although it succeeded.
    warning: Option<String>,
}

/// Runs smtp-source against `address`: `run.messages` messages of `run.size` bytes over
/// `run.sessions` parallel sessions, each message on a connection of its own.
async fn source(bin: &std::path::Path, address: SocketAddr, run: Run) -> Result<Sent> {
    let started = Instant::now();
    let output = Command::new(bin)
        .args(["-s", &run.sessions.to_string()])
        .args(["-m", &run.messages.to_string()])
        .args(["-l", &run.size.to_string()])
        .args(["-M", "source.bench", "-f", "sender@source.bench"])
        .args(["-t", "recipient@sink.bench", &address.to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // Bounded: a proxy that stalls fails the run instead of hanging the bench.
    let limit = Duration::from_secs(60) + Duration::from_millis(run.messages.saturating_mul(10));
    let output = tokio::time::timeout(limit, output)
        .await
        .with_context(|| format!("smtp-source did not finish within {limit:?}"))?
        .with_context(|| format!("running {} (Debian postfix package)", bin.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().map(str::trim).find(|line| !line.is_empty());
    if !output.status.success() {
        bail!(
            "smtp-source failed ({}): {}",
            output.status,
            first.unwrap_or("(nothing on stderr)")
        );
    }
    Ok(Sent {
        rate: run.messages as f64 / seconds,
        warning: first.map(str::to_string),
    })
}

/// Postfix's smtp-sink on a free loopback port, answering every message `250`.
struct Sink {
    child: Child,
    address: SocketAddr,
}

impl Sink {
    /// Starts the sink (as `nobody` once its socket is open, when the bench runs as root)
    /// and waits until it accepts connections.
    async fn start(bin: &std::path::Path, ready_timeout: &Duration) -> Result<Self> {
        let address = free_port()?;
        let mut command = Command::new(bin);
        // SAFETY: plain syscall without arguments.
        if unsafe { libc::geteuid() } == 0 {
            command.args(["-u", "nobody"]);
        }
        let mut child = command
            .args([&address.to_string(), "2048"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {} (Debian postfix package)", bin.display()))?;
        wait_ready(&mut child, address, *ready_timeout)
            .await
            .context("smtp-sink did not become ready")?;
        Ok(Sink { child, address })
    }

    /// Kills the sink and reaps it.
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(sessions: &str, messages: &str) -> SmtpArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            smtp: SmtpArgs,
        }
        Cli::try_parse_from([
            "bench",
            "--smtp-sizes",
            "1024,1000",
            "--smtp-sessions",
            sessions,
            "--smtp-messages",
            messages,
        ])
        .unwrap_or_else(|e| panic!("{e}"))
        .smtp
    }

    #[test]
    fn message_counts_go_with_session_counts() {
        let both = runs(&args("1,50", "20,200")).unwrap_or_else(|e| panic!("{e:#}"));
        let pairs: Vec<_> = both
            .iter()
            .map(|r| (r.size, r.sessions, r.messages))
            .collect();
        assert_eq!(
            pairs,
            [
                (1024, 1, 20),
                (1024, 50, 200),
                (1000, 1, 20),
                (1000, 50, 200)
            ]
        );
        assert_eq!(both[1].metric(), "1 KiB messages, 50 sessions (msg/s)");
        assert_eq!(both[2].metric(), "1000 B messages, 1 session (msg/s)");
        let one = runs(&args("1,50", "7")).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(one.iter().all(|r| r.messages == 7));
        assert!(runs(&args("1,50", "1,2,3")).is_err());
        assert!(runs(&args("0", "1")).is_err());
    }

    /// A few messages pass every target: smtp-sink, switchyard (`protocol = "smtp"`, built
    /// by `cargo build -p switchyard`) and HAProxy as the bench starts them.
    #[tokio::test]
    async fn a_few_messages_reach_the_sink_through_every_target() {
        let opts = crate::targets::tests::options(crate::targets::CompetitorHeaders::Same);
        let args = args("1,2", "3");
        let sink = Sink::start(&args.sink_bin, &opts.ready_timeout)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        for kind in [
            TargetKind::Direct,
            TargetKind::Switchyard,
            TargetKind::Haproxy,
        ] {
            let target = RunningTarget::start_smtp(kind, sink.address, &opts)
                .await
                .unwrap_or_else(|e| panic!("{kind}: {e:#}"));
            let run = Run {
                size: 2000,
                sessions: 2,
                messages: 3,
            };
            let sent = source(&args.source_bin, target.addr(), run)
                .await
                .unwrap_or_else(|e| panic!("{kind}: {e:#}"));
            assert!(sent.rate > 0.0, "{kind}");
            assert_eq!(sent.warning, None, "{kind}");
            target.stop().await.unwrap_or_else(|e| panic!("{e:#}"));
        }
        sink.stop().await;
    }
}
