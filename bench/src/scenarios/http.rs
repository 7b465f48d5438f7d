//! `http`: HTTP/1.1 keep-alive GETs driven by `wrk` (Debian package) against the HTTP
//! backend, for a small (13 B) and a 64 KiB response, through each target (switchyard,
//! HAProxy `mode http` and nginx configured for HTTP). Reports requests per second, wrk's
//! p50/p99 latency and each proxy's CPU time (user + system, from /proc) per request.
//! `--http-rounds N` has the targets, all running at once, take turns N times (in reverse
//! order every other round), and reports medians: single runs on this machine move by
//! ±20 %, and a drift that lands on one target's turn would otherwise decide the ratio.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use tokio::process::Command;

use super::{Context, median_row, progress};
use crate::backend::{Backend, BackendKind};
use crate::sys::per_unit_us;
use crate::table::{Better, Row};
use crate::targets::RunningTarget;

const SCENARIO: &str = "http";

/// Options of the `http` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct HttpArgs {
    /// Keep-alive connections wrk holds.
    #[arg(
        id = "http-conns",
        long = "http-conns",
        value_name = "N",
        default_value_t = 64
    )]
    pub conns: usize,
    /// wrk threads.
    #[arg(
        id = "http-threads",
        long = "http-threads",
        visible_alias = "wrk-threads",
        value_name = "N",
        default_value_t = 2
    )]
    pub threads: usize,
    /// Access logs: `on` has every proxy write a line per request to a file (switchyard's
    /// JSON lines, HAProxy `option httplog`, nginx `combined`), `off` logs nothing.
    #[arg(id = "logs", long = "logs", value_enum, default_value = "off")]
    pub logs: Logs,
    /// Measurement time per response size, seconds.
    #[arg(
        id = "http-secs",
        long = "http-secs",
        value_name = "SECS",
        default_value_t = 10
    )]
    pub secs: u64,
    /// Rounds: every target runs every size once per round, the targets taking turns (in
    /// reverse order every other round); each figure is the median of the rounds, so a
    /// load the machine had during one turn moves one sample, not a target's whole result.
    #[arg(
        id = "http-rounds",
        long = "http-rounds",
        value_name = "N",
        default_value_t = 1
    )]
    pub rounds: usize,
    /// wrk binary.
    #[arg(id = "wrk-bin", long = "wrk-bin", default_value = "/usr/bin/wrk")]
    pub wrk: String,
}

/// Whether the proxies write access logs in the `http` scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Logs {
    /// A line per request, to a file.
    On,
    /// None.
    Off,
}

/// One wrk run's results.
#[derive(Clone, Debug, PartialEq)]
pub struct WrkResult {
    /// Requests per second.
    pub rps: f64,
    /// Requests completed.
    pub requests: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

/// Runs the scenario on every target of `ctx` (direct included). All targets run at once,
/// in front of one backend, and take turns under load: each round runs every size through
/// every target, and each figure is the median of the rounds.
pub async fn run(ctx: &Context, args: &HttpArgs) -> Result<Vec<Row>> {
    let mut opts = ctx.target_opts.clone();
    opts.access_log = args.logs == Logs::On;
    let sizes = if opts.access_log {
        [("small", "13 B logged"), ("large", "64 KiB logged")]
    } else {
        [("small", "13 B"), ("large", "64 KiB")]
    };
    let backend = Backend::start(BackendKind::Http, ctx.backend_threads, 4096)?;
    let mut running = Vec::new();
    for &target in &ctx.targets {
        let started = RunningTarget::start_http(target, backend.addrs(), &opts).await;
        if let Err(e) = &started {
            progress(format!("{target}: failed to start: {e:#}"));
        }
        running.push((target, started.map_err(|e| format!("{e:#}"))));
    }
    let rounds = args.rounds.max(1);
    // samples[size][target]: one result per round.
    let mut samples: Vec<Vec<Vec<Result<Sample, String>>>> =
        vec![vec![Vec::new(); running.len()]; sizes.len()];
    for round in 1..=rounds {
        for (s, (path, _)) in sizes.iter().enumerate() {
            for t in super::turn_order(running.len(), round) {
                let (target, started) = &running[t];
                let sample = match started {
                    Ok(started) => {
                        progress(format!(
                            "http {target}: GET /{path}, round {round} of {rounds}"
                        ));
                        let sample = measure(started, path, args).await;
                        if let Ok(sample) = &sample {
                            progress(format!(
                                "  -> {:.0} req/s, p50 {:.0} us, p99 {:.0} us",
                                sample.wrk.rps, sample.wrk.p50_us, sample.wrk.p99_us
                            ));
                        }
                        sample.map_err(|e| format!("{e:#}"))
                    }
                    Err(e) => Err(e.clone()),
                };
                if let Err(e) = &sample {
                    progress(format!("{target}: failed: {e}"));
                }
                samples[s][t].push(sample);
            }
        }
    }
    let mut rows = Vec::new();
    for (s, (_, label)) in sizes.iter().enumerate() {
        let metrics: [(String, Better, Pick); 4] = [
            (
                format!("{} conns GET {label} (req/s)", args.conns),
                Better::Higher,
                |s| Some(s.wrk.rps),
            ),
            (format!("GET {label} p50 (us)"), Better::Lower, |s| {
                Some(s.wrk.p50_us)
            }),
            (format!("GET {label} p99 (us)"), Better::Lower, |s| {
                Some(s.wrk.p99_us)
            }),
            (
                format!("GET {label}: proxy CPU per request (us)"),
                Better::Lower,
                |s| s.cpu_per_request_us,
            ),
        ];
        for (metric, better, pick) in metrics {
            for (t, (target, _)) in running.iter().enumerate() {
                if let Some(row) =
                    median_row(SCENARIO, &metric, *target, better, &samples[s][t], pick)
                {
                    rows.push(row);
                }
            }
        }
    }
    for (_, started) in running {
        if let Ok(started) = started {
            if let Some(log) = started.access_log() {
                // Shows that the target did write its lines.
                let bytes = std::fs::metadata(log).map_or(0, |m| m.len());
                progress(format!("  access log: {} MiB", bytes >> 20));
            }
            started.stop().await?;
        }
    }
    drop(backend);
    Ok(rows)
}

/// What a row reads from each round's sample.
type Pick = fn(&Sample) -> Option<f64>;

/// One wrk run through a target, with the proxy's CPU time around it.
#[derive(Clone)]
struct Sample {
    wrk: WrkResult,
    /// User and system time of the proxy (and its child processes) per request; `None`
    /// for `direct`.
    cpu_per_request_us: Option<f64>,
}

/// Runs wrk once through `running`, reading the proxy's CPU time around it.
async fn measure(running: &RunningTarget, path: &str, args: &HttpArgs) -> Result<Sample> {
    let (wrk, cpu) = running
        .cpu_during(wrk(running.addr(), path, &[], args))
        .await?;
    Ok(Sample {
        cpu_per_request_us: per_unit_us(cpu, wrk.requests),
        wrk,
    })
}

/// Runs wrk with `args` against `http://addr/path`, sending `headers` (`Name: value`) too.
pub async fn wrk(
    addr: SocketAddr,
    path: &str,
    headers: &[String],
    args: &HttpArgs,
) -> Result<WrkResult> {
    let mut command = Command::new(&args.wrk);
    for header in headers {
        command.arg("-H").arg(header);
    }
    let output = command
        .arg(format!("-t{}", args.threads.max(1)))
        .arg(format!("-c{}", args.conns.max(args.threads.max(1))))
        .arg(format!("-d{}s", args.secs.max(1)))
        .arg("--latency")
        .arg(format!("http://{addr}/{path}"))
        .output()
        .await
        .with_context(|| format!("running {}", args.wrk))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if text.contains("Non-2xx or 3xx responses") || text.contains("Socket errors") {
        bail!("wrk saw errors: {}", text.replace('\n', " | "));
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output: {text}"))
}

/// Reads `Requests/sec:`, the request count and the 50% and 99% lines of `--latency`
/// output.
fn parse_wrk(text: &str) -> Option<WrkResult> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    // "  40000 requests in 1.00s, 3.00MB read"
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())?;
    Some(WrkResult {
        rps: field("Requests/sec:")?.parse().ok()?,
        requests,
        p50_us: duration_us(field("50%")?)?,
        p99_us: duration_us(field("99%")?)?,
    })
}

/// wrk durations: `812.00us`, `1.23ms`, `2.01s`, `1.00m`.
fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_latency_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/small
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   100.00us   20.00us   1.00ms   90.00%
  Latency Distribution
     50%   95.00us
     75%  110.00us
     90%  130.00us
     99%    1.20ms
  40000 requests in 1.00s, 3.00MB read
Requests/sec:  39990.12
Transfer/sec:      3.00MB
";
        assert_eq!(
            parse_wrk(text),
            Some(WrkResult {
                rps: 39990.12,
                requests: 40000.0,
                p50_us: 95.0,
                p99_us: 1200.0
            })
        );
    }
}
