//! The event log of listen mode: one line per event, never payload bytes,
//! never auth tokens.

use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where listen mode reports what happens.
pub struct Log {
    netname: String,
}

impl Log {
    pub fn new(netname: &str) -> Log {
        Log {
            netname: netname.to_string(),
        }
    }

    /// Write one line: `2026-11-25T12:00:00Z p2p-annex[PID] tcp: MESSAGE`.
    pub fn line(&self, msg: fmt::Arguments<'_>) {
        let text = format!(
            "{} p2p-annex[{}] {}: {}\n",
            utc_timestamp(SystemTime::now()),
            std::process::id(),
            self.netname,
            msg
        );
        // One write per line, so lines from concurrent connections never
        // interleave. Nothing useful can be done if stderr is gone.
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`, without a date crate.
fn utc_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), from Howard Hinnant's
/// "chrono-Compatible Low-Level Date Algorithms".
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_610_096);
        assert_eq!(utc_timestamp(t), "2026-11-25T12:34:56Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00Z");
    }
}
