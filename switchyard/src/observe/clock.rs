//! The time access log lines are stamped with, rendered once per millisecond (RFC 3339)
//! and once per second (CLF) instead of once per line: a worker logging tens of thousands
//! of requests a second formats its timestamps a thousand times a second at most.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// The last time a worker's lines were stamped with, in both shapes lines use.
#[derive(Debug)]
pub(super) struct Clock {
    /// Milliseconds since the epoch that `rfc3339` shows; `u64::MAX` before the first line.
    millis: u64,
    rfc3339: String,
    /// Seconds since the epoch that `clf` shows.
    secs: u64,
    clf: String,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            millis: u64::MAX,
            rfc3339: String::new(),
            secs: u64::MAX,
            clf: String::new(),
        }
    }
}

impl Clock {
    /// Moves the clock to `now`, rendering only what changed.
    pub(super) fn set(&mut self, now: SystemTime) {
        let since_epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let millis = since_epoch.as_millis() as u64;
        if millis == self.millis {
            return;
        }
        self.millis = millis;
        self.rfc3339.clear();
        let _ = write!(
            self.rfc3339,
            "{}",
            humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + since_epoch)
        );
        let secs = since_epoch.as_secs();
        if secs != self.secs {
            self.secs = secs;
            self.clf.clear();
            write_clf(&mut self.clf, secs);
        }
    }

    /// `2000-10-10T13:55:36.123Z`: RFC 3339 in UTC, with milliseconds.
    pub(super) fn rfc3339(&self) -> &str {
        &self.rfc3339
    }

    /// `10/Oct/2000:13:55:36 +0000`: the Common Log Format's timestamp, in UTC.
    pub(super) fn clf(&self) -> &str {
        &self.clf
    }
}

/// Writes `secs` since the epoch as CLF writes a time.
fn write_clf(out: &mut String, secs: u64) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize % 12],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    );
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

    fn at(millis: u64) -> Clock {
        let mut clock = Clock::default();
        clock.set(SystemTime::UNIX_EPOCH + Duration::from_millis(millis));
        clock
    }

    #[test]
    fn renders_both_shapes() {
        let clock = at(971_186_136_123);
        assert_eq!(clock.rfc3339(), "2000-10-10T13:55:36.123Z");
        assert_eq!(clock.clf(), "10/Oct/2000:13:55:36 +0000");
        let epoch = at(0);
        assert_eq!(epoch.rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(epoch.clf(), "01/Jan/1970:00:00:00 +0000");
    }

    #[test]
    fn follows_time_forward_and_back() {
        let mut clock = at(971_186_136_123);
        clock.set(SystemTime::UNIX_EPOCH + Duration::from_millis(971_186_137_001));
        assert_eq!(clock.rfc3339(), "2000-10-10T13:55:37.001Z");
        assert_eq!(clock.clf(), "10/Oct/2000:13:55:37 +0000");
        // The wall clock may step back (NTP): the stamp follows it.
        clock.set(SystemTime::UNIX_EPOCH + Duration::from_millis(971_186_136_999));
        assert_eq!(clock.rfc3339(), "2000-10-10T13:55:36.999Z");
        assert_eq!(clock.clf(), "10/Oct/2000:13:55:36 +0000");
    }

    #[test]
    fn leap_days() {
        // 2024-02-29T23:59:59Z and the next second.
        let clock = at(1_709_251_199_000);
        assert_eq!(clock.clf(), "29/Feb/2024:23:59:59 +0000");
        let clock = at(1_709_251_200_000);
        assert_eq!(clock.clf(), "01/Mar/2024:00:00:00 +0000");
    }
}
