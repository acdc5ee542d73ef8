//! Peak-EWMA latency estimate of one endpoint (the Finagle / linkerd cost
//! model): quick to believe an endpoint got slower, slow to believe it got
//! faster.

use std::time::Duration;

use tokio::time::Instant;

/// The latency estimate, in nanoseconds as `f64` so decay needs no rounding.
#[derive(Clone, Debug)]
pub(super) struct PeakEwma {
    estimate_ns: f64,
    /// When the estimate last took an observation (or was created).
    stamp: Instant,
    /// False until the first response: the estimate is then only the
    /// configured default, and the first real latency replaces it outright.
    observed: bool,
}

impl PeakEwma {
    pub(super) fn new(default: Duration, now: Instant) -> Self {
        PeakEwma {
            estimate_ns: nanos(default),
            stamp: now,
            observed: false,
        }
    }

    /// The estimate as the balancer reads it at `now`: the stored estimate
    /// decayed toward zero over the time since the last observation.
    ///
    /// Why toward zero: power of two choices never picks the loser of every
    /// comparison, so an endpoint that was slow once would otherwise never be
    /// measured again. Idle, it becomes cheaper until it is tried; the first
    /// slow answer puts it straight back (tower's `PeakEwma` does the same).
    pub(super) fn read(&self, now: Instant, decay: Duration) -> f64 {
        self.estimate_ns * weight(now.saturating_duration_since(self.stamp), decay)
    }

    /// Takes a successful response's latency: a peak is believed at once, a
    /// lower latency pulls the estimate toward it with time constant `decay`
    /// measured from the previous observation, so the pull does not depend on
    /// the request rate.
    pub(super) fn observe(&mut self, rtt: Duration, now: Instant, decay: Duration) {
        let rtt = nanos(rtt);
        if !self.observed || rtt > self.estimate_ns {
            self.estimate_ns = rtt;
        } else {
            let w = weight(now.saturating_duration_since(self.stamp), decay);
            self.estimate_ns = self.estimate_ns * w + rtt * (1.0 - w);
        }
        self.stamp = now;
        self.observed = true;
    }

    /// Takes a failed response's latency. A failure may raise the estimate
    /// (a timeout is slowness) but never lowers it, and it restarts the idle
    /// decay from the full estimate: an endpoint that fails fast must not
    /// look fast.
    pub(super) fn observe_failure(&mut self, rtt: Duration, now: Instant) {
        let rtt = nanos(rtt);
        if rtt > self.estimate_ns {
            self.estimate_ns = rtt;
            self.observed = true;
        }
        self.stamp = now;
    }
}

/// `exp(-elapsed / decay)`: how much of the old estimate is left.
fn weight(elapsed: Duration, decay: Duration) -> f64 {
    let decay = nanos(decay);
    if decay <= 0.0 {
        return 0.0;
    }
    (-nanos(elapsed) / decay).exp()
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    fn ms(v: f64) -> f64 {
        v * 1e6
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 1e-9 + 1.0
    }

    #[test]
    fn starts_at_default_and_first_observation_replaces_it() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(30), t0);
        assert!(close(e.read(t0, TAU), ms(30.0)));
        e.observe(Duration::from_millis(2), t0, TAU);
        assert!(close(e.read(t0, TAU), ms(2.0)));
    }

    #[test]
    fn peaks_jump_and_lower_values_decay_with_time() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(1), t0);
        e.observe(Duration::from_millis(10), t0, TAU);
        e.observe(Duration::from_millis(100), t0, TAU);
        assert!(close(e.read(t0, TAU), ms(100.0)));
        // One time constant later a 10 ms answer leaves e^-1 of the peak.
        let t1 = t0 + TAU;
        e.observe(Duration::from_millis(10), t1, TAU);
        let w = (-1.0f64).exp();
        assert!(close(e.read(t1, TAU), ms(100.0) * w + ms(10.0) * (1.0 - w)));
    }

    #[test]
    fn pull_does_not_depend_on_rate() {
        let t0 = Instant::now();
        let mut few = PeakEwma::new(Duration::from_millis(1), t0);
        let mut many = few.clone();
        few.observe(Duration::from_millis(100), t0, TAU);
        many.observe(Duration::from_millis(100), t0, TAU);
        few.observe(Duration::from_millis(10), t0 + Duration::from_secs(1), TAU);
        for i in 1..=10 {
            many.observe(
                Duration::from_millis(10),
                t0 + Duration::from_millis(100 * i),
                TAU,
            );
        }
        let t1 = t0 + Duration::from_secs(1);
        assert!(close(few.read(t1, TAU), many.read(t1, TAU)));
    }

    #[test]
    fn idle_estimate_decays_toward_zero() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(1), t0);
        e.observe(Duration::from_secs(5), t0, TAU);
        let later = e.read(t0 + Duration::from_secs(60), TAU);
        assert!(later < ms(15.0), "{later}");
    }

    #[test]
    fn failures_never_lower_the_estimate() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(1), t0);
        e.observe(Duration::from_millis(20), t0, TAU);
        let t1 = t0 + Duration::from_secs(30);
        e.observe_failure(Duration::from_micros(50), t1);
        assert!(close(e.read(t1, TAU), ms(20.0)));
        e.observe_failure(Duration::from_secs(2), t1);
        assert!(close(e.read(t1, TAU), ms(2000.0)));
    }
}
