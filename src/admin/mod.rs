//! Operator commands, `secretd admin …`: `stats` (what the database holds, as a table or
//! JSON) and `backup` (`backup.rs`), which run beside a live server and write nothing to
//! its database, and `erase-user` (`erase.rs`), which erases a user beside it.

pub mod backup;
pub mod erase;

use std::time::Duration;

use crate::config::Settings;
use crate::store::stats::{self, Stats};

/// Runs `secretd admin stats`: the figures of the configured database, as an aligned
/// table for a person or, with `json`, one JSON object for scripts (the [`Stats`]
/// fields, plus `database` with its password masked and `oldest_event` in RFC 3339).
pub async fn stats(settings: &Settings, json: bool) -> anyhow::Result<String> {
    let database = settings.database()?;
    let limit = Duration::from_millis(settings.db_timeout_ms);
    let figures = stats::read(&database, limit)
        .await
        .map_err(|e| e.context(format!("cannot read the statistics of {database}")))?;
    let database = database.to_string();
    if json {
        let mut object = serde_json::to_value(&figures)?;
        if let Some(map) = object.as_object_mut() {
            map.insert("database".into(), database.into());
            let oldest = figures.oldest_event_us.map(rfc3339_micros);
            map.insert("oldest_event".into(), oldest.into());
        }
        return Ok(serde_json::to_string_pretty(&object)?);
    }
    Ok(table(&database, &figures))
}

/// The figures as aligned lines `name  value`.
fn table(database: &str, s: &Stats) -> String {
    let kt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let rows = [
        ("database", format!("{database} ({})", s.backend)),
        ("users with a key", s.users_with_key.to_string()),
        ("foreign users", s.foreign_users.to_string()),
        ("channel pairs", s.pairs.to_string()),
        ("events", s.events.to_string()),
        ("ciphertext bytes", with_unit(s.ciphertext_bytes)),
        (
            "oldest event",
            s.oldest_event_us.map_or("-".to_string(), rfc3339_micros),
        ),
        ("key log entries", kt(s.kt_log_entries)),
        ("keys not yet logged", kt(s.kt_keys_pending)),
        ("database size", with_unit(s.database_bytes)),
    ];
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(name, value)| format!("{name:<width$}  {value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `bytes` exactly, and in binary units when that reads easier: `1536 (1.5 KiB)`.
fn with_unit(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = None;
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(u);
    }
    match unit {
        Some(u) => format!("{bytes} ({value:.1} {u})"),
        None => bytes.to_string(),
    }
}

/// Microseconds since the Unix epoch as RFC 3339 in UTC:
/// `2026-12-03T12:11:12.345678Z`.
pub fn rfc3339_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
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

    #[test]
    fn times_read_as_rfc3339_utc() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(
            rfc3339_micros(1_796_299_872_345_678),
            "2026-12-03T12:11:12.345678Z"
        );
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn sizes_get_a_unit_past_one_kibibyte() {
        assert_eq!(with_unit(1023), "1023");
        assert_eq!(with_unit(1536), "1536 (1.5 KiB)");
        assert_eq!(with_unit(3 << 30), "3221225472 (3.0 GiB)");
    }
}
