//! `GET /api/v1/stats.csv`: the stats snapshot as CSV, one row per listener, pool and
//! server, in the manner of HAProxy's `;csv` stats, for scripts and spreadsheets.
//!
//! Written by hand rather than with the `csv` crate: writing needs only RFC 4180 quoting
//! (a field with a comma, quote, CR or LF is quoted, its quotes doubled), which
//! [`push_field`] does and its tests pin down. Values are not altered otherwise: a check
//! result a server wrote (which could start with `=`) reaches a spreadsheet as that text,
//! so open the file as data, not with formulas enabled.

use std::fmt::Write;

use serde_json::Value;

use super::stats::Stats;
use super::status::{ListenerStatus, PoolStatus, ServerStatus};
use crate::protocol::http::metrics::CLASSES;

/// The columns, in order; `docs/configuration.md` (Dashboard and stats) says what each
/// holds for each row type.
const COLUMNS: [&str; 34] = [
    "type",
    "pxname",
    "svname",
    "status",
    "protocol",
    "address",
    "tls",
    "scur",
    "slim",
    "stot",
    "qcur",
    "bin",
    "bout",
    "ereq",
    "econ",
    "queue_timeouts",
    "queue_full",
    "no_server",
    "chkpass",
    "chkfail",
    "check_status",
    "check_duration_ms",
    "lastchg",
    "weight",
    "eweight",
    "backup",
    "role",
    "lag_bytes",
    "lag_seconds",
    "hrsp_1xx",
    "hrsp_2xx",
    "hrsp_3xx",
    "hrsp_4xx",
    "hrsp_5xx",
];

/// One row being filled: a value per column, empty where the row type has none.
struct Row([String; COLUMNS.len()]);

impl Row {
    fn new(kind: &str, pxname: &str, svname: &str) -> Self {
        let mut row = Row(std::array::from_fn(|_| String::new()));
        row.set("type", kind);
        row.set("pxname", pxname);
        row.set("svname", svname);
        row
    }

    /// Sets `column` (one of [`COLUMNS`]; the tests check every row type's columns are).
    fn set(&mut self, column: &str, value: impl ToString) {
        if let Some(index) = COLUMNS.iter().position(|c| *c == column) {
            self.0[index] = value.to_string();
        }
    }

    fn set_option(&mut self, column: &str, value: Option<impl ToString>) {
        if let Some(value) = value {
            self.set(column, value);
        }
    }

    /// The `hrsp_*` columns from a `{"1xx": n, ...}` object, when the protocol counts them.
    fn set_responses(&mut self, classes: Option<&Value>) {
        for class in CLASSES {
            let count = classes.and_then(|c| c.get(class)).and_then(Value::as_u64);
            self.set_option(&format!("hrsp_{class}"), count);
        }
    }

    fn write(&self, out: &mut String) {
        for (index, value) in self.0.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            push_field(out, value);
        }
        out.push_str("\r\n");
    }
}

/// Appends `value` as one CSV field: quoted when it holds a comma, a quote, CR or LF (its
/// quotes doubled), else as it is.
fn push_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// 1 or 0, as HAProxy's CSV writes flags.
fn flag(value: bool) -> u8 {
    u8::from(value)
}

/// Renders the snapshot: a header row, then each listener, then each pool followed by its
/// servers. Lines end in CRLF (RFC 4180).
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let _ = write!(out, "{}\r\n", COLUMNS.join(","));
    for listener in &stats.listeners {
        listener_row(listener).write(&mut out);
    }
    for pool in &stats.pools {
        pool_row(pool).write(&mut out);
        let responses = pool.protocol.get("http_responses");
        for server in &pool.servers {
            let classes = responses
                .and_then(|r| r.get("servers"))
                .and_then(|servers| servers.get(&server.name));
            server_row(&pool.name, server, responses.map(|_| classes)).write(&mut out);
        }
    }
    out
}

fn listener_row(listener: &ListenerStatus) -> Row {
    let mut row = Row::new("listener", &listener.name, "LISTENER");
    row.set("status", "open");
    row.set("protocol", &listener.protocol);
    row.set("address", &listener.address);
    row.set("tls", flag(listener.tls));
    row.set("scur", listener.active);
    row.set_option("slim", listener.max_connections);
    row.set("stot", listener.total);
    row.set("bin", listener.bytes_in);
    row.set("bout", listener.bytes_out);
    row.set("ereq", listener.failed);
    row
}

fn pool_row(pool: &PoolStatus) -> Row {
    let mut row = Row::new("pool", &pool.name, "POOL");
    let up = pool.servers.iter().any(|s| s.state == "up");
    row.set("status", if up { "up" } else { "down" });
    let sum = |field: fn(&ServerStatus) -> u64| pool.servers.iter().map(field).sum::<u64>();
    row.set("scur", sum(|s| s.active as u64));
    row.set("stot", sum(|s| s.total));
    row.set("qcur", pool.queued);
    row.set("bin", sum(|s| s.bytes_in));
    row.set("bout", sum(|s| s.bytes_out));
    row.set("econ", sum(|s| s.connect_errors));
    row.set("queue_timeouts", pool.queue_timeouts);
    row.set("queue_full", pool.queue_full);
    row.set("no_server", pool.no_server);
    row.set("chkpass", sum(|s| s.checks_passed));
    row.set("chkfail", sum(|s| s.checks_failed));
    row.set_responses(
        pool.protocol
            .get("http_responses")
            .and_then(|r| r.get("all")),
    );
    row
}

/// A server's row; `responses` is `None` when its pool counts no HTTP responses, and
/// `Some(None)` when it does but this server has answered none yet (zeros).
fn server_row(pool: &str, server: &ServerStatus, responses: Option<Option<&Value>>) -> Row {
    let mut row = Row::new("server", pool, &server.name);
    row.set("status", &server.state);
    row.set("address", &server.address);
    row.set("scur", server.active);
    row.set_option("slim", server.max_connections);
    row.set("stot", server.total);
    row.set("bin", server.bytes_in);
    row.set("bout", server.bytes_out);
    row.set("econ", server.connect_errors);
    row.set("chkpass", server.checks_passed);
    row.set("chkfail", server.checks_failed);
    row.set_option("check_status", server.check.as_deref());
    row.set_option(
        "check_duration_ms",
        server.check_duration_ms.map(|ms| format!("{ms:.3}")),
    );
    row.set("lastchg", server.state_age_seconds.floor());
    row.set("weight", server.weight);
    row.set("eweight", format!("{:.3}", server.effective_weight));
    row.set("backup", flag(server.backup));
    row.set("role", &server.role);
    if let Some(lag) = server.replica_lag {
        row.set("lag_bytes", lag.bytes);
        row.set("lag_seconds", lag.seconds);
    }
    match responses {
        Some(Some(classes)) => row.set_responses(Some(classes)),
        Some(None) => CLASSES
            .iter()
            .for_each(|class| row.set(&format!("hrsp_{class}"), 0)),
        None => {}
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(value: &str) -> String {
        let mut out = String::new();
        push_field(&mut out, value);
        out
    }

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        assert_eq!(field("alpha"), "alpha");
        assert_eq!(field(""), "");
        assert_eq!(field("a b;c=d"), "a b;c=d");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("\""), "\"\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field("cr\r"), "\"cr\r\"");
        assert_eq!(field("=cmd()"), "=cmd()", "values are not altered");
        assert_eq!(field("ünï,côdé"), "\"ünï,côdé\"");
    }

    /// Splits one CSV record (RFC 4180), to read back what `render` wrote.
    fn parse_record(line: &str) -> Vec<String> {
        let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (_, '"') => quoted = !quoted,
                (false, ',') => fields.push(std::mem::take(&mut field)),
                (_, c) => field.push(c),
            }
        }
        fields.push(field);
        fields
    }

    fn server(name: &str, check: &str) -> ServerStatus {
        ServerStatus {
            name: name.to_string(),
            address: "127.0.0.1:1".to_string(),
            state: "up".to_string(),
            health: "up".to_string(),
            admin_state: "ready".to_string(),
            backup: false,
            weight: 2,
            effective_weight: 2.0,
            active: 1,
            max_connections: Some(10),
            total: 7,
            bytes_in: 100,
            bytes_out: 200,
            connect_errors: 1,
            checks_passed: 3,
            checks_failed: 1,
            check: Some(check.to_string()),
            check_duration_ms: Some(1.5),
            state_age_seconds: 12.7,
            role: "replica".to_string(),
            replica_lag: Some(crate::upstream::ReplicaLag {
                bytes: 4096,
                seconds: 0.5,
            }),
        }
    }

    #[test]
    fn every_row_type_fills_its_columns_and_reads_back() {
        let mut protocol = serde_json::Map::new();
        protocol.insert(
            "http_responses".to_string(),
            serde_json::json!({
                "all": {"1xx": 0, "2xx": 5, "3xx": 0, "4xx": 0, "5xx": 2},
                "servers": {"a,1": {"1xx": 0, "2xx": 5, "3xx": 0, "4xx": 0, "5xx": 1}},
            }),
        );
        let stats = Stats {
            version: "0".to_string(),
            timestamp_ms: 0,
            uptime_seconds: 1.0,
            token_required: false,
            listeners: vec![ListenerStatus {
                name: "front".to_string(),
                address: "127.0.0.1:80".to_string(),
                protocol: "http".to_string(),
                active: 2,
                max_connections: None,
                total: 9,
                failed: 1,
                bytes_in: 10,
                bytes_out: 20,
                tls: true,
            }],
            pools: vec![PoolStatus {
                name: "app".to_string(),
                queued: 3,
                queue_timeouts: 4,
                queue_full: 5,
                no_server: 6,
                servers: vec![server("a,1", "ok"), server("b", "status \"500\"\nbad")],
                resolved: Vec::new(),
                protocol,
            }],
            tenants: Vec::new(),
        };
        let text = render(&stats);
        assert!(text.ends_with("\r\n"));
        // Records end in CRLF; a quoted field may hold a bare LF.
        let records: Vec<Vec<String>> = text
            .trim_end_matches("\r\n")
            .split("\r\n")
            .map(parse_record)
            .collect();
        assert_eq!(records.len(), 5, "{text}");
        assert!(
            records.iter().all(|r| r.len() == COLUMNS.len()),
            "{records:?}"
        );
        let row = |index: usize| -> std::collections::HashMap<&str, &str> {
            COLUMNS
                .iter()
                .copied()
                .zip(records[index].iter().map(String::as_str))
                .collect()
        };
        assert_eq!(records[0], COLUMNS);
        let listener = row(1);
        assert_eq!(
            (listener["type"], listener["pxname"], listener["svname"]),
            ("listener", "front", "LISTENER")
        );
        assert_eq!(
            (listener["tls"], listener["slim"], listener["ereq"]),
            ("1", "", "1")
        );
        let pool = row(2);
        assert_eq!(
            (pool["type"], pool["status"], pool["qcur"]),
            ("pool", "up", "3")
        );
        assert_eq!(
            (pool["scur"], pool["stot"], pool["bin"], pool["bout"]),
            ("2", "14", "200", "400")
        );
        assert_eq!(
            (pool["no_server"], pool["chkfail"], pool["hrsp_5xx"]),
            ("6", "2", "2")
        );
        let first = row(3);
        assert_eq!(
            (first["svname"], first["hrsp_2xx"], first["hrsp_5xx"]),
            ("a,1", "5", "1")
        );
        assert_eq!(
            (first["role"], first["lag_bytes"], first["lastchg"]),
            ("replica", "4096", "12")
        );
        assert_eq!((first["check_duration_ms"], first["slim"]), ("1.500", "10"));
        let second = row(4);
        assert_eq!(second["check_status"], "status \"500\"\nbad");
        assert_eq!(
            second["hrsp_2xx"], "0",
            "an HTTP pool's quiet server has zeros"
        );
        // Without HTTP responses the columns stay empty.
        let mut quiet = stats.clone();
        quiet.pools[0].protocol.clear();
        let text = render(&quiet);
        let pool_line = text
            .split("\r\n")
            .nth(2)
            .map(parse_record)
            .unwrap_or_default();
        assert_eq!(pool_line[COLUMNS.len() - 1], "");
    }
}
