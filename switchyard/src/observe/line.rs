//! One access log line as a record writes it: in the configured format, stamped with the
//! time it is logged, straight into the batch of lines its worker is filling (a line has
//! no `String` of its own).

use std::fmt;

use serde::Serialize;

use super::clock::Clock;
use crate::config::LogFormat;

/// Where a record writes its line (without the newline, which the log adds). Text formats
/// write with `write!`; JSON with [`Line::json`].
pub struct Line<'a> {
    format: LogFormat,
    clock: &'a Clock,
    text: &'a mut Vec<u8>,
}

impl<'a> Line<'a> {
    pub(super) fn new(format: LogFormat, clock: &'a Clock, text: &'a mut Vec<u8>) -> Self {
        Self {
            format,
            clock,
            text,
        }
    }

    /// The format the log is configured for.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// When the line is logged: RFC 3339 in UTC with milliseconds.
    pub fn time(&self) -> &'a str {
        self.clock.rfc3339()
    }

    /// When the line is logged, as the Common Log Format writes it.
    pub fn clf_time(&self) -> &'a str {
        self.clock.clf()
    }

    /// Writes `record` as one JSON object, `time` its first field. A record that fails to
    /// serialize writes nothing (and is not logged).
    pub fn json(&mut self, record: &impl Serialize) {
        #[derive(Serialize)]
        struct Stamped<'r, R> {
            time: &'r str,
            #[serde(flatten)]
            record: &'r R,
        }
        let start = self.text.len();
        let stamped = Stamped {
            time: self.clock.rfc3339(),
            record,
        };
        if serde_json::to_writer(&mut *self.text, &stamped).is_err() {
            self.text.truncate(start);
        }
    }

    /// Writes `record` as one JSON object, or in a text format as the time followed by
    /// `fields` (`key=value` pairs): the shape of every line but an HTTP request's.
    pub fn json_or_fields(&mut self, record: &impl Serialize, fields: fmt::Arguments<'_>) {
        if self.format == LogFormat::Json {
            return self.json(record);
        }
        let time = self.time();
        let _ = fmt::Write::write_fmt(self, format_args!("{time} {fields}"));
    }
}

impl fmt::Write for Line<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.text.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// An optional field in a text line: its value, or `-`.
pub struct OrDash<T>(pub Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The text `write` makes of a line in `format`, stamped `2000-10-10T13:55:36.123Z`: for
/// tests of the records' shapes.
#[cfg(test)]
pub fn line_text(format: LogFormat, write: impl FnOnce(&mut Line<'_>)) -> String {
    let mut clock = Clock::default();
    clock
        .set(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(971_186_136_123));
    let mut text = Vec::new();
    write(&mut Line::new(format, &clock, &mut text));
    String::from_utf8_lossy(&text).into_owned()
}
