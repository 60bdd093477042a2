//! Durations as people read them, in error messages and the CLI's lines.

use std::time::Duration;

/// A wait as people read it: `1s 950ms`, not `1s 949ms 998us 389ns`.
pub(crate) fn whole_millis(wait: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(wait.as_millis() as u64))
}
