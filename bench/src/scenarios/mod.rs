//! Benchmark scenarios. Each module measures one aspect of the proxies on
//! every selected target and returns [`Row`]s for the table.

pub mod conn;
pub mod connrate;
pub mod hold;
pub mod http;
pub mod idle;
pub mod latency;
pub mod mysql;
pub mod pgpool;
pub mod postgres;
pub mod resolver;
pub mod slow;
pub mod smtp;
pub mod soak;
pub mod throughput;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::net::TcpStream;

use crate::table::{Better, Row};
use crate::targets::{TargetKind, TargetOptions};

/// Settings shared by all scenarios.
#[derive(Clone, Debug)]
pub struct Context {
    /// Targets to measure, in order.
    pub targets: Vec<TargetKind>,
    /// How proxies are launched.
    pub target_opts: TargetOptions,
    /// Worker threads of each backend runtime.
    pub backend_threads: usize,
}

/// Timeout for a single connect attempt of the load generator.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `addr` with [`CONNECT_TIMEOUT`] and enables `TCP_NODELAY`.
pub async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects `n` streams to `addr`, at most 64 at a time.
pub async fn connect_many(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    let mut remaining = n;
    while remaining > 0 {
        let batch = remaining.min(64);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            set.spawn(connect(addr));
        }
        while let Some(res) = set.join_next().await {
            streams.push(res.context("connect task panicked")??);
        }
        remaining -= batch;
    }
    Ok(streams)
}

/// The order the targets take their turns in round `round` (from 1): as given in odd
/// rounds, reversed in even ones. A fixed order would give one target every first turn;
/// a database that slows as a run's updates pile up, or a warming cache, would then
/// favour it in every round alike, and the median would not remove that.
pub fn turn_order(targets: usize, round: usize) -> impl Iterator<Item = usize> {
    let reversed = round.is_multiple_of(2);
    (0..targets).map(move |i| if reversed { targets - 1 - i } else { i })
}

/// Whether the target at `t` of `targets` was named before it: a second instance, run as a
/// control (see [`Row::again`]).
pub fn named_before(targets: &[TargetKind], t: usize) -> bool {
    targets[..t].contains(&targets[t])
}

/// How progress lines name the target at `t` of `targets`: a second instance is
/// `<target> (again)`.
pub fn instance_name(targets: &[TargetKind], t: usize) -> String {
    crate::table::instance_label(targets[t], named_before(targets, t))
}

/// One target's row for `metric` from its rounds: the median of what `pick` reads from
/// each round's sample; failed if a round failed; `None` when `pick` read nothing (a figure
/// the target does not have, such as the direct path's CPU time).
pub fn median_row<T>(
    scenario: &'static str,
    metric: &str,
    target: TargetKind,
    better: Better,
    rounds: &[Result<T, String>],
    pick: fn(&T) -> Option<f64>,
) -> Option<Row> {
    let mut values = Vec::new();
    for round in rounds {
        match round {
            Ok(sample) => values.extend(pick(sample)),
            Err(error) => {
                return Some(Row::failed(scenario, metric, target, better, error.clone()));
            }
        }
    }
    (!values.is_empty())
        .then(|| Row::ok(scenario, metric, target, median(values.into_iter()), better))
}

/// The median of `values` (the mean of the middle two for an even count; 0 for none).
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Progress line on stderr, so stdout carries only the tables.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("  {}", msg.as_ref());
}

#[cfg(test)]
mod tests {
    use super::{instance_name, median, turn_order};
    use crate::targets::TargetKind;

    #[test]
    fn even_rounds_take_turns_in_reverse() {
        assert_eq!(turn_order(3, 1).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(turn_order(3, 2).collect::<Vec<_>>(), [2, 1, 0]);
        assert_eq!(turn_order(3, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(turn_order(0, 2).count(), 0);
    }

    #[test]
    fn a_target_named_twice_is_again_the_second_time() {
        let targets = [
            TargetKind::Pgbouncer,
            TargetKind::Switchyard,
            TargetKind::Pgbouncer,
        ];
        let names: Vec<String> = (0..targets.len())
            .map(|t| instance_name(&targets, t))
            .collect();
        assert_eq!(names, ["pgbouncer", "switchyard", "pgbouncer (again)"]);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }
}
