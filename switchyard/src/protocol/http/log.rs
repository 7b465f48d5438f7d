//! One access log line per HTTP request, in the configured format: `json`, `clf` (Common
//! Log Format) or `combined` (CLF plus referer and user agent), the last two followed by
//! the proxy's own fields (duration, time to first byte, pool, server, termination).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;

use crate::config::LogFormat;
use crate::observe::{JsonFields, Line, OrDash, Termination};

/// One finished request, as logged (with the time it is logged). It borrows what it shows
/// from the request and the proxy's state: it lives only while its line is written.
#[derive(Debug, Clone)]
pub struct RequestRecord<'a> {
    /// Listener name.
    pub listener: &'a str,
    /// Client address (after PROXY protocol, if any).
    pub client: SocketAddr,
    /// Request method.
    pub method: &'a str,
    /// Request target (path and query).
    pub path: Cow<'a, str>,
    /// Request protocol version, e.g. `HTTP/1.1`.
    pub protocol: &'static str,
    /// Host the client asked for.
    pub host: Option<&'a str>,
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
    pub pool: Option<&'a str>,
    /// Server that answered.
    pub server: Option<&'a str>,
    /// The tenant usage is accounted to (a pool with `resolver`); not in the line without.
    pub tenant: Option<&'a str>,
    /// How the request ended: `ok`, or why not.
    pub termination: Termination,
    /// The request id sent to the server.
    pub request_id: Option<&'a str>,
    /// `Referer` header.
    pub referer: Option<&'a str>,
    /// `User-Agent` header.
    pub user_agent: Option<&'a str>,
}

impl<'a> RequestRecord<'a> {
    /// A request from `client` on `listener` that got no further than the connection: no
    /// head, no pool, no server yet.
    pub fn new(listener: &'a str, client: SocketAddr) -> Self {
        Self {
            listener,
            client,
            method: "-",
            path: Cow::Borrowed("-"),
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

    /// Writes the line in the log's format (`text` is written as `combined`).
    pub fn write(&self, line: &mut Line<'_>) {
        let format = line.format();
        if format == LogFormat::Json {
            return line.json_fields(|json| self.write_json(json));
        }
        let _ = write!(
            line,
            "{} - - [{}] \"{} {} {}\" {} {} ",
            self.client.ip(),
            line.clf_time(),
            Escaped(self.method),
            Escaped(&self.path),
            self.protocol,
            self.status,
            self.bytes_out
        );
        if format != LogFormat::Clf {
            let _ = write!(
                line,
                "\"{}\" \"{}\" ",
                Escaped(self.referer.unwrap_or("-")),
                Escaped(self.user_agent.unwrap_or("-")),
            );
        }
        let _ = write!(
            line,
            "duration_ms={} ttfb_ms={} pool={} server={} termination={} request_id={}",
            self.duration_ms,
            OrDash(self.ttfb_ms),
            OrDash(self.pool),
            OrDash(self.server),
            self.termination,
            Escaped(self.request_id.unwrap_or("-"))
        );
    }
}

impl RequestRecord<'_> {
    /// The fields of the JSON line, in the order of the struct.
    fn write_json(&self, json: &mut JsonFields<'_>) {
        json.str("listener", self.listener)
            .display("client", self.client)
            .str("method", self.method)
            .str("path", &*self.path)
            .str("protocol", self.protocol)
            .str("host", self.host)
            .number("status", u64::from(self.status))
            .number("bytes_in", self.bytes_in)
            .number("bytes_out", self.bytes_out)
            .number("duration_ms", self.duration_ms)
            .number("ttfb_ms", self.ttfb_ms)
            .str("pool", self.pool)
            .str("server", self.server);
        if let Some(tenant) = self.tenant {
            json.str("tenant", tenant);
        }
        json.str("termination", self.termination.as_str())
            .str("request_id", self.request_id)
            .str("referer", self.referer)
            .str("user_agent", self.user_agent);
    }
}

/// A client-controlled field kept on one line and inside its quotes.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c.is_control()) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            if c.is_control() {
                write!(f, "\\x{:02x}", c as u32)?;
            } else {
                write!(f, "\\{c}")?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::line_text;

    fn record() -> RequestRecord<'static> {
        RequestRecord {
            listener: "web",
            client: "192.0.2.1:5000".parse().expect("addr"),
            method: "GET",
            path: "/a\"b".into(),
            protocol: "HTTP/1.1",
            host: Some("example.com"),
            status: 200,
            bytes_in: 0,
            bytes_out: 13,
            duration_ms: 5,
            ttfb_ms: Some(4),
            pool: Some("app"),
            server: Some("a1"),
            tenant: None,
            termination: Termination::Ok,
            request_id: Some("id1"),
            referer: None,
            user_agent: Some("curl/8\n\\"),
        }
    }

    #[test]
    fn formats() {
        let r = record();
        let clf = line_text(LogFormat::Clf, |line| r.write(line));
        assert_eq!(
            clf,
            "192.0.2.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /a\\\"b HTTP/1.1\" 200 13 duration_ms=5 ttfb_ms=4 pool=app server=a1 termination=ok request_id=id1"
        );
        let combined = line_text(LogFormat::Combined, |line| r.write(line));
        assert!(
            combined.contains("200 13 \"-\" \"curl/8\\x0a\\\\\" duration_ms=5"),
            "{combined}"
        );
        assert_eq!(line_text(LogFormat::Text, |line| r.write(line)), combined);
        let json: serde_json::Value =
            serde_json::from_str(&line_text(LogFormat::Json, |line| r.write(line))).expect("json");
        assert_eq!(json["time"], "2000-10-10T13:55:36.123Z");
        assert_eq!(json["status"], 200);
        assert_eq!(json["ttfb_ms"], 4);
        assert_eq!(
            json,
            serde_json::json!({
                "time": "2000-10-10T13:55:36.123Z",
                "listener": "web",
                "client": "192.0.2.1:5000",
                "method": "GET",
                "path": "/a\"b",
                "protocol": "HTTP/1.1",
                "host": "example.com",
                "status": 200,
                "bytes_in": 0,
                "bytes_out": 13,
                "duration_ms": 5,
                "ttfb_ms": 4,
                "pool": "app",
                "server": "a1",
                "termination": "ok",
                "request_id": "id1",
                "referer": null,
                "user_agent": "curl/8\n\\",
            }),
            "no tenant without one"
        );
        let tenant = RequestRecord {
            tenant: Some("t1"),
            ..record()
        };
        let json: serde_json::Value =
            serde_json::from_str(&line_text(LogFormat::Json, |line| tenant.write(line)))
                .expect("json");
        assert_eq!(json["tenant"], "t1");
    }

    #[test]
    fn a_bare_refusal() {
        let mut r = RequestRecord::new("web", "192.0.2.1:5000".parse().expect("addr"));
        r.status = 400;
        r.termination = Termination::BadRequest;
        assert_eq!(
            line_text(LogFormat::Clf, |line| r.write(line)),
            "192.0.2.1 - - [10/Oct/2000:13:55:36 +0000] \"- - HTTP/1.1\" 400 0 duration_ms=0 ttfb_ms=- pool=- server=- termination=bad_request request_id=-"
        );
    }
}
