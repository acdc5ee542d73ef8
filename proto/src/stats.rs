//! Request measurements as sidecars report them and the control plane adds
//! them up: counts and a latency histogram with fixed buckets, so that
//! histograms from any number of sidecars and report periods merge by
//! adding counts, and a quantile is read from the sum.
//!
//! The bounds are finer than Prometheus' defaults around the latencies
//! rollout gates are usually set at (tens to hundreds of milliseconds): a
//! p99 read from them is within one bucket's width (at most 25 % of the
//! value between 1 ms and 10 s), interpolated linearly inside the bucket.

/// Upper bounds (inclusive) of the latency buckets, milliseconds. A
/// histogram has one more count: above the last bound.
pub const LATENCY_BOUNDS_MS: [f64; 30] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 75.0, 100.0,
    125.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0,
    10000.0,
];

/// Number of counts in a histogram: one per bound, one above.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// A latency histogram over [`LATENCY_BOUNDS_MS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
}

/// A histogram with the wrong number of buckets (from another version of
/// the contract, or a bad peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected {LATENCY_BUCKETS} latency counts (or none), got {0}")]
pub struct BadHistogram(pub usize);

impl LatencyHistogram {
    /// From reported counts; an empty list is an empty histogram.
    pub fn from_counts(counts: &[u64]) -> Result<Self, BadHistogram> {
        match counts.len() {
            0 => Ok(Self::default()),
            LATENCY_BUCKETS => Ok(Self {
                counts: counts.to_vec(),
            }),
            n => Err(BadHistogram(n)),
        }
    }

    /// The counts, one per bucket (empty when nothing was recorded).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Index of the bucket `ms` falls in.
    pub fn bucket_of(ms: f64) -> usize {
        LATENCY_BOUNDS_MS.partition_point(|bound| *bound < ms)
    }

    /// Counts one observation.
    pub fn record(&mut self, ms: f64) {
        self.add_to_bucket(Self::bucket_of(ms), 1);
    }

    /// Adds `n` to bucket `index` (clamped to the last).
    pub fn add_to_bucket(&mut self, index: usize, n: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS];
        }
        let index = index.min(LATENCY_BUCKETS - 1);
        self.counts[index] = self.counts[index].saturating_add(n);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (i, n) in other.counts.iter().enumerate() {
            if *n > 0 {
                self.add_to_bucket(i, *n);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, n| a.saturating_add(*n))
    }

    /// The `q` quantile (0-1) in milliseconds, interpolated linearly inside
    /// its bucket; `None` when empty. Above the last bound the answer is
    /// the last bound (the histogram knows no more).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, n) in self.counts.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let before = seen as f64;
            seen = seen.saturating_add(*n);
            if (seen as f64) >= rank {
                let Some(upper) = LATENCY_BOUNDS_MS.get(i) else {
                    return LATENCY_BOUNDS_MS.last().copied();
                };
                let lower = if i == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_MS[i - 1]
                };
                let within = ((rank - before) / *n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
        }
        LATENCY_BOUNDS_MS.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_increasing() {
        assert!(LATENCY_BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        assert_eq!(LatencyHistogram::bucket_of(0.0), 0);
        assert_eq!(LatencyHistogram::bucket_of(0.5), 0);
        assert_eq!(LatencyHistogram::bucket_of(0.6), 1);
        assert_eq!(LatencyHistogram::bucket_of(250.0), 19);
        assert_eq!(LatencyHistogram::bucket_of(1e9), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.99), None);
        for _ in 0..99 {
            h.record(8.0); // (7.5, 10]
        }
        h.record(220.0); // (200, 250]
        let p50 = h.quantile(0.5).unwrap();
        assert!((7.5..=10.0).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((7.5..=10.0).contains(&p99), "{p99}");
        let p100 = h.quantile(1.0).unwrap();
        assert!((200.0..=250.0).contains(&p100), "{p100}");
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = LatencyHistogram::default();
        a.record(1.0);
        let mut b = LatencyHistogram::default();
        b.record(1.0);
        b.record(20_000.0);
        a.merge(&b);
        assert_eq!(a.total(), 3);
        assert_eq!(a.counts()[1], 2);
        assert_eq!(a.counts()[LATENCY_BUCKETS - 1], 1);
        assert_eq!(a.quantile(1.0), Some(10_000.0));
        assert_eq!(
            LatencyHistogram::from_counts(a.counts()).map(|h| h.total()),
            Ok(3)
        );
        assert_eq!(LatencyHistogram::from_counts(&[1, 2]), Err(BadHistogram(2)));
    }
}
