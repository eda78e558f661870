//! Times as people read them: UTC dates without a date-time crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `2026-12-06 20:51:03 UTC` for Unix seconds.
pub fn format_utc_secs(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// [`format_utc_secs`] for milliseconds since the Unix epoch.
pub fn format_utc_ms(ms: i64) -> String {
    format_utc_secs((ms.max(0) / 1000) as u64)
}

/// A duration in the largest unit that fits: `40 s`, `3 min`, `5 h`, `2 days`.
pub fn span(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_utc_secs(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc_secs(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc_secs(1_796_590_263), "2026-12-06 20:51:03 UTC");
        assert_eq!(span(59), "59 s");
        assert_eq!(span(3 * 3600), "3 h");
    }
}
