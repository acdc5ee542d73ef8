//! Judging one interval: the canary's measurements against the absolute
//! gates, and against stable's over the same interval for the relative
//! (Kayenta-style) ones. Pure: measurements in, an [`IntervalReport`] out.
//!
//! - Fewer canary requests than `minRequests` (default
//!   [`DEFAULT_MIN_REQUESTS`]) is insufficient data: no gate is judged,
//!   nothing counts as failed.
//! - A relative gate needs stable to have had `minRequests` too; when it
//!   has not, the gate is reported as not judged and does not fail the
//!   interval (the absolute gates still apply).
//! - An interval fails when any judged gate fails.

use bulkhead_proto::model::Analysis;

use super::status::{GateResult, IntervalReport, Measured, Verdict};
use crate::measure::VersionWindow;

/// `minRequests` when the analysis does not say: a handful of requests
/// says nothing about a success rate.
pub const DEFAULT_MIN_REQUESTS: u64 = 10;

/// Where and what was measured.
pub(crate) struct Interval<'a> {
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    pub step: u32,
    pub canary_weight: u8,
    pub canary: &'a VersionWindow,
    pub stable: &'a VersionWindow,
}

fn success_rate(w: &VersionWindow) -> Option<f64> {
    (w.requests > 0).then(|| 1.0 - (w.failures.min(w.requests) as f64 / w.requests as f64))
}

fn measured(w: &VersionWindow) -> Measured {
    Measured {
        requests: w.requests,
        failures: w.failures,
        success_rate: success_rate(w),
        p99_ms: w.latency.quantile(0.99),
    }
}

/// Rounds for display and storage (the histogram is no more precise).
fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

pub(crate) fn judge(analysis: Option<&Analysis>, interval: Interval<'_>) -> IntervalReport {
    let canary = measured(interval.canary);
    let stable = measured(interval.stable);
    let mut report = IntervalReport {
        start_unix_ms: interval.start_unix_ms,
        end_unix_ms: interval.end_unix_ms,
        step: interval.step,
        canary_weight: interval.canary_weight,
        requests: canary.requests,
        failures: canary.failures,
        success_rate: canary.success_rate.map(|r| round(r, 5)),
        p99_ms: canary.p99_ms.map(|p| round(p, 2)),
        stable: Some(Measured {
            success_rate: stable.success_rate.map(|r| round(r, 5)),
            p99_ms: stable.p99_ms.map(|p| round(p, 2)),
            ..stable.clone()
        }),
        gates: Vec::new(),
        verdict: Verdict::Passed,
        reason: String::new(),
    };
    let Some(analysis) = analysis else {
        report.reason = "no analysis: the rollout moves on time alone".into();
        return report;
    };
    let min_requests = analysis.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    let enough = canary.requests >= min_requests.max(1);
    report.gates.push(GateResult {
        gate: "minRequests".into(),
        threshold: min_requests as f64,
        measured: Some(canary.requests as f64),
        passed: enough,
        judged: true,
    });
    if !enough {
        report.verdict = Verdict::InsufficientData;
        report.reason = format!(
            "insufficient data: {} of {min_requests} canary requests",
            canary.requests
        );
        return report;
    }
    let mut failed: Vec<String> = Vec::new();
    let mut gate = |name: &str, threshold: f64, measured: Option<f64>, ok: Option<bool>| {
        let judged = ok.is_some();
        let passed = ok.unwrap_or(true);
        if !passed {
            failed.push(format!(
                "{name} {} against {threshold}",
                measured.map_or("?".to_owned(), |m| format!("{}", round(m, 4)))
            ));
        }
        report.gates.push(GateResult {
            gate: name.into(),
            threshold,
            measured: measured.map(|m| round(m, 5)),
            passed,
            judged,
        });
    };
    if let Some(min) = analysis.min_success_rate {
        let rate = canary.success_rate;
        gate("minSuccessRate", min, rate, rate.map(|r| r >= min));
    }
    if let Some(max) = analysis.max_p99_latency_ms {
        let p99 = canary.p99_ms;
        let max = f64::from(max);
        // No latency recorded with requests served: nothing to hold
        // against the gate (older sidecars send no histogram).
        gate("maxP99LatencyMs", max, p99, p99.map(|p| p <= max));
    }
    if let Some(compare) = &analysis.compare_to_stable {
        let stable_judged = stable.requests >= min_requests.max(1);
        if let Some(max_drop) = compare.max_success_rate_drop {
            let drop = match (canary.success_rate, stable.success_rate) {
                (Some(c), Some(s)) if stable_judged => Some(s - c),
                _ => None,
            };
            // A float margin: 0.99 - 0.98 is not exactly 0.01.
            gate(
                "maxSuccessRateDrop",
                max_drop,
                drop,
                drop.map(|d| d <= max_drop + 1e-9),
            );
        }
        if let Some(max_ratio) = compare.max_p99_ratio {
            let ratio = match (canary.p99_ms, stable.p99_ms) {
                (Some(c), Some(s)) if stable_judged && s > 0.0 => Some(c / s),
                _ => None,
            };
            gate(
                "maxP99Ratio",
                max_ratio,
                ratio,
                ratio.map(|r| r <= max_ratio + 1e-9),
            );
        }
    }
    let describe = format!(
        "{} requests, success rate {}, p99 {}",
        canary.requests,
        canary
            .success_rate
            .map_or("-".to_owned(), |r| format!("{:.4}", r)),
        canary
            .p99_ms
            .map_or("-".to_owned(), |p| format!("{:.1} ms", p)),
    );
    if failed.is_empty() {
        report.reason = format!("passed: {describe}");
    } else {
        report.verdict = Verdict::Failed;
        report.reason = format!("failed: {} ({describe})", failed.join("; "));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::model::CompareToStable;
    use bulkhead_proto::stats::LatencyHistogram;

    fn window(requests: u64, failures: u64, latency_ms: f64) -> VersionWindow {
        let mut latency = LatencyHistogram::default();
        for _ in 0..requests {
            latency.record(latency_ms);
        }
        VersionWindow {
            requests,
            failures,
            latency,
            ..Default::default()
        }
    }

    fn analysis() -> Analysis {
        Analysis {
            min_success_rate: Some(0.99),
            max_p99_latency_ms: Some(250),
            min_requests: Some(50),
            compare_to_stable: Some(CompareToStable {
                max_success_rate_drop: Some(0.01),
                max_p99_ratio: Some(1.5),
            }),
        }
    }

    fn run(a: Option<&Analysis>, canary: &VersionWindow, stable: &VersionWindow) -> IntervalReport {
        judge(
            a,
            Interval {
                start_unix_ms: 0,
                end_unix_ms: 30_000,
                step: 0,
                canary_weight: 10,
                canary,
                stable,
            },
        )
    }

    #[test]
    fn healthy_canary_passes() {
        let r = run(
            Some(&analysis()),
            &window(100, 0, 8.0),
            &window(900, 0, 8.0),
        );
        assert_eq!(r.verdict, Verdict::Passed, "{}", r.reason);
        assert_eq!(r.success_rate, Some(1.0));
        assert!(
            r.gates.iter().all(|g| g.passed && g.judged),
            "{:?}",
            r.gates
        );
    }

    #[test]
    fn too_few_requests_is_insufficient_not_failed() {
        let r = run(
            Some(&analysis()),
            &window(12, 12, 900.0),
            &window(900, 0, 8.0),
        );
        assert_eq!(r.verdict, Verdict::InsufficientData);
        assert!(r.reason.contains("12 of 50"), "{}", r.reason);
        let r = run(Some(&analysis()), &window(0, 0, 0.0), &window(0, 0, 0.0));
        assert_eq!(r.verdict, Verdict::InsufficientData);
        assert_eq!(r.success_rate, None);
    }

    #[test]
    fn failing_canary_fails_with_the_values_named() {
        let r = run(
            Some(&analysis()),
            &window(200, 10, 8.0),
            &window(900, 0, 8.0),
        );
        assert_eq!(r.verdict, Verdict::Failed);
        assert!(
            r.reason.contains("minSuccessRate 0.95 against 0.99"),
            "{}",
            r.reason
        );
        let drop = r
            .gates
            .iter()
            .find(|g| g.gate == "maxSuccessRateDrop")
            .unwrap();
        assert!(!drop.passed);
        assert_eq!(drop.measured, Some(0.05));
    }

    #[test]
    fn slow_canary_fails_latency_gates() {
        let r = run(
            Some(&analysis()),
            &window(200, 0, 400.0),
            &window(900, 0, 8.0),
        );
        assert_eq!(r.verdict, Verdict::Failed);
        let names: Vec<&str> = r
            .gates
            .iter()
            .filter(|g| !g.passed)
            .map(|g| g.gate.as_str())
            .collect();
        assert_eq!(names, ["maxP99LatencyMs", "maxP99Ratio"]);
    }

    #[test]
    fn a_noisy_dependency_fails_both_and_the_relative_gate_passes() {
        // Both versions fail 3 %: the absolute gate fails, the relative one
        // shows it is not the canary's doing.
        let mut a = analysis();
        a.min_success_rate = None;
        let r = run(Some(&a), &window(100, 3, 8.0), &window(900, 27, 8.0));
        assert_eq!(r.verdict, Verdict::Passed, "{}", r.reason);
    }

    #[test]
    fn relative_gates_without_stable_traffic_are_not_judged() {
        let r = run(Some(&analysis()), &window(100, 0, 8.0), &window(3, 0, 8.0));
        assert_eq!(r.verdict, Verdict::Passed);
        let ratio = r.gates.iter().find(|g| g.gate == "maxP99Ratio").unwrap();
        assert!(!ratio.judged && ratio.passed);
    }

    #[test]
    fn no_analysis_passes_on_time() {
        let r = run(None, &window(0, 0, 0.0), &window(0, 0, 0.0));
        assert_eq!(r.verdict, Verdict::Passed);
        assert!(r.gates.is_empty());
    }
}
