//! One access log line per HTTP request, in the configured format: `json`, `clf` (Common
//! Log Format) or `combined` (CLF plus referer and user agent), the last two followed by
//! the proxy's own fields (duration, time to first byte, pool, server, termination).

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::LogFormat;
use crate::observe::Termination;

/// One finished request, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// When it ended (RFC 3339, UTC).
    pub time: String,
    /// Listener name.
    pub listener: String,
    /// Client address (after PROXY protocol, if any).
    pub client: SocketAddr,
    /// Request method.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// Request protocol version, e.g. `HTTP/1.1`.
    pub protocol: &'static str,
    /// Host the client asked for.
    pub host: Option<String>,
    /// Status sent to the client.
    pub status: u16,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From the request head to the end of the response, in milliseconds.
    pub duration_ms: u64,
    /// From the request head to the server's response head, in milliseconds.
    pub ttfb_ms: Option<u64>,
    /// Pool chosen.
    pub pool: Option<String>,
    /// Server that answered.
    pub server: Option<String>,
    /// The tenant usage is accounted to (a pool with `resolver`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How the request ended: `ok`, or why not.
    pub termination: Termination,
    /// The request id sent to the server.
    pub request_id: Option<String>,
    /// `Referer` header.
    pub referer: Option<String>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
}

impl RequestRecord {
    /// A request from `client` on `listener` that got no further than the connection: no
    /// head, no pool, no server yet. It is stamped with the time now.
    pub fn new(listener: &str, client: SocketAddr) -> Self {
        Self {
            time: crate::observe::ConnectionRecord::now_string(),
            listener: listener.to_string(),
            client,
            method: "-".into(),
            path: "-".into(),
            protocol: "HTTP/1.1",
            host: None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
            ttfb_ms: None,
            pool: None,
            server: None,
            tenant: None,
            // Until the request says otherwise.
            termination: Termination::Ok,
            request_id: None,
            referer: None,
            user_agent: None,
        }
    }

    /// The line in `format` (`text` is treated as `combined`).
    pub fn render(&self, format: LogFormat) -> String {
        match format {
            LogFormat::Json => serde_json::to_string(self).unwrap_or_default(),
            LogFormat::Clf => format!("{} {}", self.clf(), self.extra()),
            LogFormat::Combined | LogFormat::Text => format!(
                "{} \"{}\" \"{}\" {}",
                self.clf(),
                escape(self.referer.as_deref().unwrap_or("-")),
                escape(self.user_agent.as_deref().unwrap_or("-")),
                self.extra()
            ),
        }
    }

    fn clf(&self) -> String {
        format!(
            "{} - - [{}] \"{} {} {}\" {} {}",
            self.client.ip(),
            clf_time(SystemTime::now()),
            escape(&self.method),
            escape(&self.path),
            self.protocol,
            self.status,
            self.bytes_out
        )
    }

    fn extra(&self) -> String {
        format!(
            "duration_ms={} ttfb_ms={} pool={} server={} termination={} request_id={}",
            self.duration_ms,
            self.ttfb_ms.map_or("-".to_string(), |t| t.to_string()),
            self.pool.as_deref().unwrap_or("-"),
            self.server.as_deref().unwrap_or("-"),
            self.termination,
            escape(self.request_id.as_deref().unwrap_or("-"))
        )
    }
}

/// Keeps a client-controlled field on one line and inside its quotes.
fn escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if c.is_control() => format!("\\x{:02x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}

/// `10/Oct/2000:13:55:36 +0000`, the CLF timestamp, in UTC.
fn clf_time(now: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize % 12],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record() -> RequestRecord {
        RequestRecord {
            time: "t".into(),
            listener: "web".into(),
            client: "192.0.2.1:5000".parse().expect("addr"),
            method: "GET".into(),
            path: "/a\"b".into(),
            protocol: "HTTP/1.1",
            host: Some("example.com".into()),
            status: 200,
            bytes_in: 0,
            bytes_out: 13,
            duration_ms: 5,
            ttfb_ms: Some(4),
            pool: Some("app".into()),
            server: Some("a1".into()),
            tenant: None,
            termination: Termination::Ok,
            request_id: Some("id1".into()),
            referer: None,
            user_agent: Some("curl/8".into()),
        }
    }

    #[test]
    fn clf_timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(971_186_136);
        assert_eq!(clf_time(t), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(
            clf_time(SystemTime::UNIX_EPOCH),
            "01/Jan/1970:00:00:00 +0000"
        );
    }

    #[test]
    fn formats() {
        let r = record();
        let clf = r.render(LogFormat::Clf);
        assert!(clf.starts_with("192.0.2.1 - - ["), "{clf}");
        assert!(clf.contains("\"GET /a\\\"b HTTP/1.1\" 200 13 duration_ms=5 ttfb_ms=4 pool=app server=a1 termination=ok"), "{clf}");
        let combined = r.render(LogFormat::Combined);
        assert!(
            combined.contains("200 13 \"-\" \"curl/8\" duration_ms=5"),
            "{combined}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&r.render(LogFormat::Json)).expect("json");
        assert_eq!(json["status"], 200);
        assert_eq!(json["ttfb_ms"], 4);
    }
}
