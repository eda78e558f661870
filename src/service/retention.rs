//! SetRetention: a pair's owner sets how long its events are kept, within the server's
//! `max_retention_days` (README "Retention"; the sweeper is `crate::retention`).

use crate::domain::UserId;
use crate::error::{Error, Result};
use crate::proto;
use crate::requests::SetRetention;
use crate::service::AppState;
use crate::store::retention::Retention;

/// Checks the setting against the server's maximum and stores it.
pub(super) async fn set_retention(
    st: &AppState,
    user: UserId,
    r: SetRetention,
) -> Result<proto::SetRetentionResponse> {
    check_maximum(st.settings.max_retention_days, r.max_age_secs)?;
    let policy = Retention {
        max_age_secs: r.max_age_secs,
        max_events: r.max_events,
    };
    st.store
        .set_retention(user, r.pair, policy, crate::time::now_micros())
        .await?;
    Ok(proto::SetRetentionResponse {})
}

/// Refuses a maximum age above `max_days` (0 = no maximum), "forever" (0) included.
fn check_maximum(max_days: u64, max_age_secs: i64) -> Result<()> {
    if max_days == 0 {
        return Ok(());
    }
    let max_secs = max_days.saturating_mul(86_400);
    if max_age_secs == 0 || max_age_secs as u64 > max_secs {
        return Err(Error::invalid(format!(
            "this server keeps events at most {max_days} days (max_retention_days): set \
             max_age_secs between 1 and {max_secs}{}",
            if max_age_secs == 0 {
                " (0 = keep forever is above the maximum)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maximum_bounds_the_age_and_refuses_forever() {
        assert!(check_maximum(0, 0).is_ok());
        assert!(check_maximum(0, i64::MAX).is_ok());
        assert!(check_maximum(1, 86_400).is_ok());
        assert!(check_maximum(1, 86_401).is_err());
        assert!(check_maximum(1, 0).is_err());
    }
}
