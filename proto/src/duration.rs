//! Durations as users write them, on the command line and in resources:
//! `90s`, `10m`, `24h`, `1h30m`, `250ms` (humantime's syntax). One parser,
//! so a flag and a field never disagree on what `5m` means.

use std::time::Duration;

/// Parses a duration; zero is refused (every duration Bulkhead takes is a
/// timeout, an interval or a lifetime).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration like 30s, 10m or 24h ({e})"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}
