//! `http`: HTTP/1.1 keep-alive GETs driven by `wrk` (Debian package) against the HTTP
//! backend, for a small (13 B) and a 64 KiB response, through each target (switchyard,
//! HAProxy `mode http` and nginx configured for HTTP). Reports requests per second and
//! wrk's p50/p99 latency.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use tokio::process::Command;

use super::{Context, progress};
use crate::backend::{Backend, BackendKind};
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
#[derive(Debug, PartialEq)]
pub struct WrkResult {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

/// Runs the scenario on every target of `ctx` (direct included).
pub async fn run(ctx: &Context, args: &HttpArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut opts = ctx.target_opts.clone();
    opts.access_log = args.logs == Logs::On;
    let sizes = if opts.access_log {
        [("small", "13 B logged"), ("large", "64 KiB logged")]
    } else {
        [("small", "13 B"), ("large", "64 KiB")]
    };
    for &target in &ctx.targets {
        let backend = Backend::start(BackendKind::Http, ctx.backend_threads, 4096)?;
        let running = RunningTarget::start_http(target, backend.addrs(), &opts).await;
        for (path, label) in sizes {
            let names = [
                (
                    format!("{} conns GET {label} (req/s)", args.conns),
                    Better::Higher,
                ),
                (format!("GET {label} p50 (us)"), Better::Lower),
                (format!("GET {label} p99 (us)"), Better::Lower),
            ];
            let result = match &running {
                Ok(running) => {
                    progress(format!("http {target}: GET /{path}"));
                    wrk(running.addr(), path, &[], args).await
                }
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            };
            match result {
                Ok(m) => {
                    progress(format!(
                        "  -> {:.0} req/s, p50 {:.0} us, p99 {:.0} us",
                        m.rps, m.p50_us, m.p99_us
                    ));
                    if let Some(log) = running.as_ref().ok().and_then(RunningTarget::access_log) {
                        // Shows that the target did write its lines (the run's total so far).
                        let bytes = std::fs::metadata(log).map_or(0, |m| m.len());
                        progress(format!("  access log: {} MiB", bytes >> 20));
                    }
                    for ((name, better), v) in names.into_iter().zip([m.rps, m.p50_us, m.p99_us]) {
                        rows.push(Row::ok(SCENARIO, name, target, v, better));
                    }
                }
                Err(e) => {
                    progress(format!("{target}: failed: {e:#}"));
                    for (name, better) in names {
                        rows.push(Row::failed(
                            SCENARIO,
                            name,
                            target,
                            better,
                            format!("{e:#}"),
                        ));
                    }
                }
            }
        }
        if let Ok(running) = running {
            running.stop().await?;
        }
        drop(backend);
    }
    Ok(rows)
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

/// Reads `Requests/sec:` and the 50% and 99% lines of `--latency` output.
fn parse_wrk(text: &str) -> Option<WrkResult> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    Some(WrkResult {
        rps: field("Requests/sec:")?.parse().ok()?,
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
                p50_us: 95.0,
                p99_us: 1200.0
            })
        );
    }
}
