//! What the soak's clients did and what went wrong, and the rule that decides whom a
//! failure is attributed to (see the [module docs](super) for the rule in words).
//!
//! Generators count every completed operation and its bytes, and record every failure
//! with the moment its operation started and the moment it failed. Faults record the
//! window in which they may legitimately break traffic. Failures are classified only at
//! the end, when every window is known.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The kinds of client traffic the soak runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP streams echoed by the echo backends.
    Tcp,
    /// HTTP/1.1 keep-alive POSTs echoed by the HTTP backends.
    Http1,
    /// HTTP/2 (h2c, prior knowledge) POSTs echoed by the HTTP backends.
    H2,
    /// WebSocket messages echoed by the HTTP backends.
    WebSocket,
    /// PostgreSQL session-mode clients writing rows.
    PgSession,
    /// PostgreSQL transaction-pool clients writing rows.
    PgTransaction,
}

impl Proto {
    /// Every kind, in table order.
    pub const ALL: [Proto; 6] = [
        Proto::Tcp,
        Proto::Http1,
        Proto::H2,
        Proto::WebSocket,
        Proto::PgSession,
        Proto::PgTransaction,
    ];

    /// The name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp echo",
            Proto::Http1 => "http/1.1",
            Proto::H2 => "h2c",
            Proto::WebSocket => "websocket",
            Proto::PgSession => "pg session",
            Proto::PgTransaction => "pg txn pool",
        }
    }

    /// What one operation is, for the table's header note.
    fn unit(self) -> &'static str {
        match self {
            Proto::Tcp => "round trips",
            Proto::Http1 | Proto::H2 => "requests",
            Proto::WebSocket => "messages",
            Proto::PgSession | Proto::PgTransaction => "transactions",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The faults the schedule injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// An HTTP backend killed with SIGKILL and started again.
    KillHttpBackend,
    /// An echo backend killed with SIGKILL and started again.
    KillEchoBackend,
    /// The PostgreSQL primary crashed and its replica promoted (then a new replica made).
    PromoteReplica,
    /// `POST /api/v1/reload` with a changed config.
    Reload,
    /// A binary upgrade (`switchyard run --upgrade`).
    Upgrade,
    /// One HTTP backend drained, then made ready again.
    DrainReady,
}

impl Fault {
    /// Every fault, in table order.
    pub const ALL: [Fault; 6] = [
        Fault::KillHttpBackend,
        Fault::KillEchoBackend,
        Fault::PromoteReplica,
        Fault::Reload,
        Fault::Upgrade,
        Fault::DrainReady,
    ];

    /// The name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillHttpBackend => "kill -9 + restart HTTP backend",
            Fault::KillEchoBackend => "kill -9 + restart echo backend",
            Fault::PromoteReplica => "crash PG primary, promote replica",
            Fault::Reload => "reload (changed config)",
            Fault::Upgrade => "binary upgrade",
            Fault::DrainReady => "drain/ready HTTP backend",
        }
    }

    /// Whether this fault may legitimately break an operation of `proto` in flight
    /// during its window: only the loss of the server the operation runs on. Reloads,
    /// upgrades and drains must break nothing.
    pub fn excuses(self, proto: Proto) -> bool {
        matches!(
            (self, proto),
            (
                Fault::KillHttpBackend,
                Proto::Http1 | Proto::H2 | Proto::WebSocket
            ) | (Fault::KillEchoBackend, Proto::Tcp)
                | (
                    Fault::PromoteReplica,
                    Proto::PgSession | Proto::PgTransaction
                )
        )
    }
}

/// Failure kinds that no fault excuses: data the proxy accepted and then damaged or lost.
const NEVER_EXCUSED: [&str; 3] = ["corrupted", "lost acknowledged write", "duplicated write"];

/// After a fault's window closes (the proxy sees the server back, or the new primary),
/// operations that started before it may still fail from it for this long: the
/// health-check interval, so that a failure in the last check's shadow is not blamed on
/// the proxy.
const GRACE: Duration = Duration::from_secs(1);

/// Hostile-client outcomes, counted but never failures of the legitimate traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hostile {
    /// A slowloris connection the proxy closed (with `408` or without).
    SlowlorisClosed,
    /// A slowloris connection still open when the run ended.
    SlowlorisOpenAtEnd,
    /// A client that vanished mid-request or mid-transaction.
    Vanished,
    /// Malformed input the proxy answered with an error or closed on.
    MalformedRefused,
    /// Malformed input the proxy neither answered nor closed within 15 s.
    MalformedIgnored,
}

impl Hostile {
    const ALL: [Hostile; 5] = [
        Hostile::SlowlorisClosed,
        Hostile::SlowlorisOpenAtEnd,
        Hostile::Vanished,
        Hostile::MalformedRefused,
        Hostile::MalformedIgnored,
    ];

    fn name(self) -> &'static str {
        match self {
            Hostile::SlowlorisClosed => "slowloris connections closed by the proxy",
            Hostile::SlowlorisOpenAtEnd => "slowloris connections open at the end",
            Hostile::Vanished => "clients vanished mid-request/transaction",
            Hostile::MalformedRefused => "malformed inputs refused or closed",
            Hostile::MalformedIgnored => "malformed inputs neither answered nor closed in 15 s",
        }
    }
}

#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    bytes: AtomicU64,
    /// Requests refused by an HTTP/2 GOAWAY before the server saw them, sent again.
    retried: AtomicU64,
}

#[derive(Clone, Debug)]
struct Failure {
    proto: Proto,
    kind: String,
    started: Instant,
    failed: Instant,
    detail: String,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    fault: Fault,
    start: Instant,
    end: Option<Instant>,
}

#[derive(Default)]
struct Records {
    failures: Vec<Failure>,
    windows: Vec<Window>,
    hostile: BTreeMap<Hostile, u64>,
    corrupted_bytes: u64,
    notes: Vec<String>,
}

/// Shared by every generator and fault task.
pub struct Ledger {
    /// When the run started; times in the tables count from here.
    pub start: Instant,
    counts: [Counts; Proto::ALL.len()],
    records: Mutex<Records>,
}

/// A fault in progress; [`Ledger::fault_end`] closes its window.
#[derive(Clone, Copy, Debug)]
pub struct FaultId(usize);

impl Ledger {
    /// An empty ledger starting now.
    pub fn new() -> Self {
        Ledger {
            start: Instant::now(),
            counts: Default::default(),
            records: Mutex::default(),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        // A panicking generator leaves the counts as they were: still worth printing.
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One operation completed and checked, moving `bytes` (both ways).
    pub fn ok(&self, proto: Proto, bytes: usize) {
        let counts = &self.counts[proto.index()];
        counts.ops.fetch_add(1, Ordering::Relaxed);
        counts.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// An HTTP/2 request refused by a GOAWAY before the server saw it, and sent again.
    pub fn retried(&self, proto: Proto) {
        self.counts[proto.index()]
            .retried
            .fetch_add(1, Ordering::Relaxed);
    }

    /// An operation that started at `started` failed now.
    pub fn fail(&self, proto: Proto, kind: &str, started: Instant, detail: impl Into<String>) {
        self.records().failures.push(Failure {
            proto,
            kind: kind.to_string(),
            started,
            failed: Instant::now(),
            detail: detail.into(),
        });
    }

    /// An answer that differs from what was sent in `bad_bytes` bytes.
    pub fn corrupt(&self, proto: Proto, bad_bytes: u64, started: Instant, detail: String) {
        self.records().corrupted_bytes += bad_bytes;
        self.fail(proto, "corrupted", started, detail);
    }

    /// A hostile-client outcome.
    pub fn hostile(&self, what: Hostile) {
        *self.records().hostile.entry(what).or_default() += 1;
    }

    /// A line for the report (a fault that could not be carried out, a process that
    /// exited unexpectedly).
    pub fn note(&self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("  note: {text}");
        self.records().notes.push(text);
    }

    /// A fault starts now.
    pub fn fault_begin(&self, fault: Fault) -> FaultId {
        let mut records = self.records();
        records.windows.push(Window {
            fault,
            start: Instant::now(),
            end: None,
        });
        FaultId(records.windows.len() - 1)
    }

    /// A fault's effects are over now (the server is back and the proxy sees it).
    pub fn fault_end(&self, id: FaultId) {
        if let Some(window) = self.records().windows.get_mut(id.0) {
            window.end = Some(Instant::now());
        }
    }

    /// The fault excusing `failure`, if any: one that may break its protocol, whose window
    /// (plus [`GRACE`]) overlaps the operation's lifetime. A window never closed lasts to
    /// the end of the run.
    fn excuse(windows: &[Window], failure: &Failure) -> Option<Fault> {
        if NEVER_EXCUSED.contains(&failure.kind.as_str()) {
            return None;
        }
        windows
            .iter()
            .filter(|w| w.fault.excuses(failure.proto))
            .find(|w| {
                let end = w.end.map_or(failure.failed, |end| end + GRACE);
                w.start <= failure.failed && failure.started <= end
            })
            .map(|w| w.fault)
    }

    /// The faults of any kind whose window (plus [`GRACE`]) overlaps `failure`: what an
    /// attributable failure coincided with.
    fn coinciding(windows: &[Window], failure: &Failure) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = windows
            .iter()
            .filter(|w| {
                let end = w.end.map_or(failure.failed, |end| end + GRACE);
                w.start <= failure.failed && failure.started <= end
            })
            .map(|w| w.fault.name())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Failures attributable to the proxy (kind, count), for the verdict.
    pub fn attributable(&self) -> usize {
        let records = self.records();
        records
            .failures
            .iter()
            .filter(|f| Self::excuse(&records.windows, f).is_none())
            .count()
    }

    /// Bytes that came back different from what was sent.
    pub fn corrupted_bytes(&self) -> u64 {
        self.records().corrupted_bytes
    }

    /// The tables: traffic by protocol, failures by kind, faults, hostile clients,
    /// attributable failures in detail, notes.
    pub fn render(&self) -> String {
        let records = self.records();
        let mut out = String::new();
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-9);
        let mut per_proto: BTreeMap<Proto, (u64, u64)> = BTreeMap::new();
        let mut by_kind: BTreeMap<(Proto, String), (u64, u64)> = BTreeMap::new();
        for failure in &records.failures {
            let excused = Self::excuse(&records.windows, failure).is_some();
            let (expected, proxy) = per_proto.entry(failure.proto).or_default();
            let (kind_expected, kind_proxy) = by_kind
                .entry((failure.proto, failure.kind.clone()))
                .or_default();
            if excused {
                *expected += 1;
                *kind_expected += 1;
            } else {
                *proxy += 1;
                *kind_proxy += 1;
            }
        }
        let _ = writeln!(
            out,
            "{:<12} {:>12} {:<13} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "traffic", "operations", "(unit)", "MiB", "per s", "retried", "expected", "proxy"
        );
        for proto in Proto::ALL {
            let counts = &self.counts[proto.index()];
            let ops = counts.ops.load(Ordering::Relaxed);
            let bytes = counts.bytes.load(Ordering::Relaxed);
            let (expected, proxy) = per_proto.get(&proto).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<12} {:>12} {:<13} {:>10.1} {:>9.0} {:>9} {:>9} {:>9}",
                proto.name(),
                ops,
                proto.unit(),
                bytes as f64 / (1024.0 * 1024.0),
                ops as f64 / elapsed,
                counts.retried.load(Ordering::Relaxed),
                expected,
                proxy
            );
        }
        let _ = writeln!(
            out,
            "(operations: completed and checked; MiB: payload both ways; retried: requests that never reached a server (canceled before they were sent, or refused by an HTTP/2 GOAWAY or REFUSED_STREAM) and were sent again; expected / proxy: failed operations excused by a backend fault / attributable to the proxy)"
        );
        out.push('\n');
        let _ = writeln!(
            out,
            "{:<12} {:<58} {:>9} {:>9}",
            "failures", "kind", "expected", "proxy"
        );
        if by_kind.is_empty() {
            let _ = writeln!(out, "(none)");
        }
        for ((proto, kind), (expected, proxy)) in &by_kind {
            let kind: String = kind.chars().take(58).collect();
            let _ = writeln!(
                out,
                "{:<12} {:<58} {:>9} {:>9}",
                proto.name(),
                kind,
                expected,
                proxy
            );
        }
        out.push('\n');
        let _ = writeln!(out, "{:<36} {:>6} {:>12}", "fault", "times", "window s");
        for fault in Fault::ALL {
            let windows: Vec<&Window> = records
                .windows
                .iter()
                .filter(|w| w.fault == fault)
                .collect();
            let open: f64 = windows
                .iter()
                .map(|w| {
                    w.end
                        .unwrap_or_else(Instant::now)
                        .duration_since(w.start)
                        .as_secs_f64()
                })
                .sum::<f64>()
                .max(0.0);
            let _ = writeln!(
                out,
                "{:<36} {:>6} {:>12.1}",
                fault.name(),
                windows.len(),
                open
            );
        }
        out.push('\n');
        for what in Hostile::ALL {
            let _ = writeln!(
                out,
                "{:<56} {:>8}",
                what.name(),
                records.hostile.get(&what).copied().unwrap_or_default()
            );
        }
        let attributable: Vec<&Failure> = records
            .failures
            .iter()
            .filter(|f| Self::excuse(&records.windows, f).is_none())
            .collect();
        if !attributable.is_empty() {
            let _ = writeln!(
                out,
                "\nfailures attributable to the proxy (first 20 of {}):",
                attributable.len()
            );
            for failure in attributable.iter().take(20) {
                let coinciding = Self::coinciding(&records.windows, failure);
                let _ = writeln!(
                    out,
                    "  t={:.1}s..{:.1}s {} {}: {} [during: {}]",
                    failure.started.duration_since(self.start).as_secs_f64(),
                    failure.failed.duration_since(self.start).as_secs_f64(),
                    failure.proto.name(),
                    failure.kind,
                    failure.detail,
                    if coinciding.is_empty() {
                        "no fault".to_string()
                    } else {
                        coinciding.join(", ")
                    }
                );
            }
        }
        if !records.notes.is_empty() {
            let _ = writeln!(out, "\nnotes:");
            for note in &records.notes {
                let _ = writeln!(out, "  {note}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_kill_excuses_only_its_own_traffic_and_never_corruption() {
        let ledger = Ledger::new();
        let kill = ledger.fault_begin(Fault::KillHttpBackend);
        let reload = ledger.fault_begin(Fault::Reload);
        let started = Instant::now();
        ledger.fail(
            Proto::Http1,
            "reset",
            started,
            "in flight on the killed backend",
        );
        ledger.fail(Proto::Tcp, "reset", started, "another backend's traffic");
        ledger.corrupt(Proto::H2, 3, started, "3 bytes differ".into());
        ledger.fault_end(kill);
        ledger.fault_end(reload);
        // The TCP reset coincides only with the reload (a kill of an HTTP backend does not
        // explain it), and corruption is never excused.
        assert_eq!(ledger.attributable(), 2);
        assert_eq!(ledger.corrupted_bytes(), 3);
    }

    #[test]
    fn a_failure_of_an_operation_started_after_the_window_is_not_excused() {
        let ledger = Ledger::new();
        let kill = ledger.fault_begin(Fault::KillEchoBackend);
        ledger.fault_end(kill);
        let mut records = ledger.records();
        records.failures.push(Failure {
            proto: Proto::Tcp,
            kind: "reset".into(),
            started: Instant::now() + GRACE + Duration::from_millis(1),
            failed: Instant::now() + GRACE + Duration::from_millis(2),
            detail: String::new(),
        });
        drop(records);
        assert_eq!(ledger.attributable(), 1);
    }
}
