//! Passive outlier ejection: an endpoint whose requests keep failing is left
//! out of picks for a while, longer each time it relapses.

use std::time::Duration;

use tokio::time::Instant;

/// When an endpoint is ejected, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutlierConfig {
    /// Failures in a row (connect errors, 5xx: whatever the caller reports as
    /// `success: false`) that eject an endpoint. A success resets the count.
    /// 0 is read as 1.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each relapse doubles it.
    pub base_ejection: Duration,
    /// Longest ejection. Also the time an endpoint must stay in after
    /// returning before its next ejection starts again from `base_ejection`.
    pub max_ejection: Duration,
    /// Most of a service's endpoints ejected at once, in percent (rounded
    /// down, but one endpoint may always be ejected); 0 disables ejection.
    /// Picks fall back to ejected endpoints when a request has nothing else
    /// (panic mode), so a small service is never left with no endpoint.
    pub max_ejected_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

impl OutlierConfig {
    /// How many of `endpoints` may be ejected at the same time.
    pub(super) fn max_ejected(&self, endpoints: usize) -> usize {
        if self.max_ejected_percent == 0 || endpoints == 0 {
            return 0;
        }
        let percent = usize::from(self.max_ejected_percent.min(100));
        (endpoints * percent / 100).max(1)
    }

    /// Length of an endpoint's `nth` ejection in a row (1-based).
    fn ejection_time(&self, nth: u32) -> Duration {
        let doublings = nth.saturating_sub(1).min(31);
        self.base_ejection
            .saturating_mul(1 << doublings)
            .min(self.max_ejection)
    }
}

/// One endpoint's failure streak and ejection history.
#[derive(Clone, Debug, Default)]
pub(super) struct Outlier {
    consecutive_failures: u32,
    /// Ejections in a row, for the backoff.
    ejections: u32,
    /// When the last ejection ended (or ends).
    returns_at: Option<Instant>,
}

impl Outlier {
    pub(super) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub(super) fn success(&mut self) {
        self.consecutive_failures = 0;
    }

    /// Counts a failure; true when the streak is long enough to eject.
    pub(super) fn failure(&mut self, config: &OutlierConfig) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.consecutive_failures >= config.consecutive_failures.max(1)
    }

    /// Starts an ejection at `now`; returns when it ends.
    pub(super) fn eject(&mut self, config: &OutlierConfig, now: Instant) -> Instant {
        let forgiven = self
            .returns_at
            .is_none_or(|back| now >= back + config.max_ejection);
        if forgiven {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        let until = now + config.ejection_time(self.ejections);
        self.returns_at = Some(until);
        // A returning endpoint needs a whole new streak to go out again.
        self.consecutive_failures = 0;
        until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_time_doubles_up_to_the_max() {
        let config = OutlierConfig::default();
        let secs: Vec<u64> = (1..=8).map(|n| config.ejection_time(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(config.ejection_time(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn max_ejected_rounds_down_but_allows_one() {
        let config = OutlierConfig::default();
        let counts: Vec<usize> = [0, 1, 2, 3, 4, 5, 10]
            .into_iter()
            .map(|n| config.max_ejected(n))
            .collect();
        assert_eq!(counts, [0, 1, 1, 1, 2, 2, 5]);
        let off = OutlierConfig {
            max_ejected_percent: 0,
            ..config
        };
        assert_eq!(off.max_ejected(10), 0);
    }

    #[test]
    fn streak_needs_consecutive_failures() {
        let config = OutlierConfig::default();
        let mut o = Outlier::default();
        for _ in 0..4 {
            assert!(!o.failure(&config));
        }
        o.success();
        for _ in 0..4 {
            assert!(!o.failure(&config));
        }
        assert!(o.failure(&config));
    }

    #[test]
    fn backoff_is_forgiven_after_a_quiet_period() {
        let config = OutlierConfig::default();
        let mut o = Outlier::default();
        let t0 = Instant::now();
        let back = o.eject(&config, t0);
        assert_eq!(back - t0, Duration::from_secs(10));
        let again = o.eject(&config, back);
        assert_eq!(again - back, Duration::from_secs(20));
        let quiet = again + config.max_ejection;
        assert_eq!(o.eject(&config, quiet) - quiet, Duration::from_secs(10));
    }
}
