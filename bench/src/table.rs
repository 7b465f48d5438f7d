//! Result rows and the comparison table printed at the end of a run.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::targets::TargetKind;

/// Which direction of a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Larger values are better (throughput, rates).
    Higher,
    /// Smaller values are better (latency, memory, errors).
    Lower,
}

/// One measured value: one metric of one scenario for one target.
#[derive(Clone, Debug)]
pub struct Row {
    /// Scenario name, e.g. `throughput`.
    pub scenario: &'static str,
    /// Metric label including its unit, e.g. `upload 2 conns (Gb/s)`.
    pub metric: String,
    /// Target the value was measured on.
    pub target: TargetKind,
    /// The value, or why there is none (target unavailable, run failed).
    pub value: Result<f64, String>,
    /// Direction in which the metric improves.
    pub better: Better,
    /// Optional free-form remark shown as a footnote.
    pub note: Option<String>,
    /// Measured on the second instance of `target` in the run: a control, whose ratio to
    /// the first instance shows what the machine alone makes of a ratio between two
    /// targets (see [`Row::again`]).
    pub again: bool,
}

impl Row {
    /// A row holding a measured value.
    pub fn ok(
        scenario: &'static str,
        metric: impl Into<String>,
        target: TargetKind,
        value: f64,
        better: Better,
    ) -> Self {
        Row {
            scenario,
            metric: metric.into(),
            target,
            value: Ok(value),
            better,
            note: None,
            again: false,
        }
    }

    /// A row for a metric that could not be measured, with the reason.
    pub fn failed(
        scenario: &'static str,
        metric: impl Into<String>,
        target: TargetKind,
        better: Better,
        reason: impl Into<String>,
    ) -> Self {
        Row {
            scenario,
            metric: metric.into(),
            target,
            value: Err(reason.into()),
            better,
            note: None,
            again: false,
        }
    }

    /// A row from a measurement's outcome: its value, or why it failed (with the causes),
    /// so that a scenario reports every run the same way.
    pub fn measured(
        scenario: &'static str,
        metric: impl Into<String>,
        target: TargetKind,
        better: Better,
        outcome: anyhow::Result<f64>,
    ) -> Self {
        match outcome {
            Ok(value) => Self::ok(scenario, metric, target, value, better),
            Err(error) => Self::failed(scenario, metric, target, better, format!("{error:#}")),
        }
    }

    /// Attaches a footnote to the row.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Marks the row as measured on a target's second instance in the run (`again`):
    /// shown as `<target> (again)`, its last column divided by the first instance's value
    /// rather than by the peer's.
    pub fn again(mut self, again: bool) -> Self {
        self.again = again;
        self
    }
}

/// How a target is named in the table and in progress lines: its second instance in a
/// run (a control, see [`Row::again`]) is `<target> (again)`.
pub fn instance_label(target: TargetKind, again: bool) -> String {
    if again {
        format!("{target} (again)")
    } else {
        target.to_string()
    }
}

/// The peer column's title: the peer the rows were measured against.
fn peer_header(rows: &[Row]) -> &'static str {
    let has = |kind| rows.iter().any(|r| r.target == kind);
    match (has(TargetKind::Haproxy), has(TargetKind::Pgbouncer)) {
        (false, true) => "vs pgbouncer",
        (true, true) => "vs peer",
        _ => "vs haproxy",
    }
}

fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if a < 10.0 {
        format!("{v:.2}")
    } else if a < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn fmt_ratio(v: &Result<f64, String>, reference: Option<&Result<f64, String>>) -> String {
    match (v, reference) {
        (Ok(v), Some(Ok(r))) if *r != 0.0 => format!("{:.2}x", v / r),
        _ => "-".to_string(),
    }
}

/// 1-based footnote number of `text`, adding it if it is new.
fn note_number(notes: &mut Vec<String>, text: &str) -> usize {
    match notes.iter().position(|n| n == text) {
        Some(i) => i + 1,
        None => {
            notes.push(text.to_string());
            notes.len()
        }
    }
}

/// Renders rows as a fixed-width text table followed by numbered footnotes.
///
/// Rows are grouped by `(scenario, metric)` in first-appearance order. The
/// ratio columns divide each value by the `direct` and the peer's (`haproxy`, or
/// `pgbouncer` for PostgreSQL) value of the same metric; whether a ratio above 1 is good
/// depends on the `best` column (`high` or `low`). A target's second instance (a control,
/// [`Row::again`]) follows its first, and its last column is its ratio to the first.
pub fn render(rows: &[Row]) -> String {
    let mut groups: Vec<(&'static str, &str)> = Vec::new();
    let mut index: HashMap<(&str, &str, TargetKind, bool), &Row> = HashMap::new();
    for r in rows {
        let key = (r.scenario, r.metric.as_str());
        if !groups.contains(&key) {
            groups.push(key);
        }
        index.insert((r.scenario, r.metric.as_str(), r.target, r.again), r);
    }

    let mut lines: Vec<[String; 7]> = vec![[
        "scenario".into(),
        "metric".into(),
        "best".into(),
        "target".into(),
        "value".into(),
        "vs direct".into(),
        peer_header(rows).into(),
    ]];
    let mut notes: Vec<String> = Vec::new();
    for (scenario, metric) in &groups {
        let reference = |t| index.get(&(*scenario, *metric, t, false)).map(|r| &r.value);
        let mut first = true;
        let instances = TargetKind::ALL
            .into_iter()
            .flat_map(|target| [(target, false), (target, true)]);
        for (target, again) in instances {
            let Some(row) = index.get(&(*scenario, *metric, target, again)) else {
                continue;
            };
            let mut value = match &row.value {
                Ok(v) => fmt_value(*v),
                Err(e) => format!("n/a [{}]", note_number(&mut notes, e)),
            };
            if let Some(n) = &row.note {
                let _ = write!(value, " [{}]", note_number(&mut notes, n));
            }
            lines.push([
                if first {
                    scenario.to_string()
                } else {
                    String::new()
                },
                if first {
                    metric.to_string()
                } else {
                    String::new()
                },
                if first {
                    match row.better {
                        Better::Higher => "high".into(),
                        Better::Lower => "low".into(),
                    }
                } else {
                    String::new()
                },
                instance_label(target, again),
                value,
                fmt_ratio(&row.value, reference(TargetKind::Direct)),
                fmt_ratio(
                    &row.value,
                    if again {
                        reference(target)
                    } else {
                        reference(TargetKind::Haproxy).or(reference(TargetKind::Pgbouncer))
                    },
                ),
            ]);
            first = false;
        }
    }

    let mut widths = [0usize; 7];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let mut text = String::new();
        for (col, (cell, w)) in line.iter().zip(widths).enumerate() {
            // Right-align the numeric columns.
            if col >= 4 {
                let _ = write!(text, "{cell:>w$}  ");
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    for (i, n) in notes.iter().enumerate() {
        let _ = writeln!(out, "[{}] {n}", i + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_instance_is_shown_after_the_first_and_divided_by_it() {
        let row = |target, value| Row::ok("pgpool", "TPC-B (tps)", target, value, Better::Higher);
        let rows = [
            row(TargetKind::Pgbouncer, 1000.0),
            row(TargetKind::Switchyard, 900.0),
            row(TargetKind::Pgbouncer, 1020.0).again(true),
        ];
        let table = render(&rows);
        let lines: Vec<&str> = table.lines().skip(2).collect();
        let cells = |line: &str| {
            line.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(cells(lines[0])[4..], ["switchyard", "900.0", "-", "0.90x"]);
        assert_eq!(cells(lines[1]), ["pgbouncer", "1000", "-", "1.00x"]);
        assert_eq!(
            cells(lines[2]),
            ["pgbouncer", "(again)", "1020", "-", "1.02x"]
        );
    }
}
