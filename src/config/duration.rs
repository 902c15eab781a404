//! Durations in settings: `30s`, `2m`, `1m30s` (humantime), or a bare number of seconds.
//! Each setting checks its own range.

use std::time::Duration;

use super::{invalid, ConfigError};

/// The longest duration any setting takes.
pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);

/// `raw` as a duration; the error names `var` and says `fix`.
pub(super) fn parse(var: &'static str, raw: &str, fix: &str) -> Result<Duration, ConfigError> {
    let trimmed = raw.trim();
    match trimmed.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(trimmed)
            .map_err(|e| invalid(var, raw, format!("not a duration ({e})"), fix)),
    }
}
