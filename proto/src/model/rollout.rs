//! The `Rollout` resource: moving a service from a stable version to a canary
//! in steps (or all at once, blue/green), gated on measured success rate and
//! latency.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::FieldErrors;
use super::resource::{Kind, Metadata, Resource, Spec};

#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub metadata: Metadata,
    pub spec: RolloutSpec,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RolloutSpec {
    pub service: String,
    /// The version serving now.
    pub stable: String,
    /// The version being rolled out; differs from `stable`.
    pub canary: String,
    pub strategy: Strategy,
    /// Percentages of traffic sent to the canary, 1-100 and strictly
    /// increasing. Present (non-empty) for `canary`, absent for `blue-green`.
    pub steps: Option<Vec<u8>>,
    /// Time spent at each step before analysis moves on.
    pub interval: Interval,
    /// Gates a step must pass; `None` means time alone moves the rollout.
    pub analysis: Option<Analysis>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Shift traffic step by step.
    Canary,
    /// Run the canary beside stable, then switch all traffic at once.
    BlueGreen,
}

impl Strategy {
    const CHOICES: [(&'static str, Strategy); 2] = [
        ("canary", Strategy::Canary),
        ("blue-green", Strategy::BlueGreen),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::BlueGreen => "blue-green",
        }
    }
}

/// Thresholds measured on the canary over one interval. At least one of the
/// first two is set.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// Fraction of non-5xx responses, 0-1 (e.g. 0.99).
    pub min_success_rate: Option<f64>,
    /// Upper bound on the 99th-percentile latency, milliseconds (> 0).
    pub max_p99_latency_ms: Option<u32>,
    /// Requests needed before the thresholds are judged at all.
    pub min_requests: Option<u64>,
}

/// A duration written as `30s`, `5m`, `1h` or `1h30m` (the shared
/// [`crate::parse_duration`] syntax), kept with its text so documents read
/// back as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Interval {
    text: String,
    duration: Duration,
}

/// Longest interval accepted: a week.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Interval {
    pub fn duration(&self) -> Duration {
        self.duration
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected a duration such as 30s, 5m, 1h or 1h30m (above 0, at most 168h), got {0}")]
pub struct BadInterval(String);

impl FromStr for Interval {
    type Err = BadInterval;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let total = crate::parse_duration(s)
            .ok()
            .filter(|d| *d <= MAX_INTERVAL)
            .ok_or_else(|| BadInterval(check::got(s)))?;
        Ok(Interval {
            text: s.to_owned(),
            duration: total,
        })
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRolloutSpec {
    service: String,
    stable: String,
    canary: String,
    strategy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<i64>>,
    interval: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    analysis: Option<RawAnalysis>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAnalysis {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_success_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_p99_latency_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_requests: Option<i64>,
}

impl Spec for RolloutSpec {
    const KIND: Kind = Kind::Rollout;
    type Raw = RawRolloutSpec;

    fn from_raw(raw: RawRolloutSpec, errs: &mut FieldErrors) -> Option<Self> {
        let service = check::dns_label(errs, "spec.service", raw.service);
        let stable = check::version(errs, "spec.stable", raw.stable);
        let canary = check::version(errs, "spec.canary", raw.canary);
        if let (Some(stable), Some(canary)) = (&stable, &canary)
            && stable == canary
        {
            errs.push(
                "spec.canary",
                format!(
                    "expected a version other than stable's, got {} for both",
                    check::got(canary)
                ),
            );
        }
        let strategy = check::one_of(errs, "spec.strategy", &raw.strategy, &Strategy::CHOICES);
        let steps = steps(errs, strategy, raw.steps);
        let interval = raw
            .interval
            .parse::<Interval>()
            .map_err(|e| errs.push("spec.interval", e.to_string()))
            .ok();
        let analysis = match raw.analysis {
            None => Some(None),
            Some(raw) => analysis(errs, raw).map(Some),
        };
        Some(RolloutSpec {
            service: service?,
            stable: stable?,
            canary: canary?,
            strategy: strategy?,
            steps: steps?,
            interval: interval?,
            analysis: analysis?,
        })
    }

    fn to_raw(&self) -> RawRolloutSpec {
        RawRolloutSpec {
            service: self.service.clone(),
            stable: self.stable.clone(),
            canary: self.canary.clone(),
            strategy: self.strategy.as_str().to_owned(),
            steps: self
                .steps
                .as_ref()
                .map(|steps| steps.iter().copied().map(i64::from).collect()),
            interval: self.interval.to_string(),
            analysis: self.analysis.as_ref().map(|a| RawAnalysis {
                min_success_rate: a.min_success_rate,
                max_p99_latency_ms: a.max_p99_latency_ms.map(i64::from),
                min_requests: a.min_requests.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            }),
        }
    }

    fn into_resource(metadata: Metadata, spec: Self) -> Resource {
        Resource::Rollout(Rollout { metadata, spec })
    }
}

fn steps(
    errs: &mut FieldErrors,
    strategy: Option<Strategy>,
    raw: Option<Vec<i64>>,
) -> Option<Option<Vec<u8>>> {
    const PATH: &str = "spec.steps";
    match (strategy, &raw) {
        (Some(Strategy::Canary), None) => {
            errs.push(
                PATH,
                "missing; a canary rollout needs steps such as [10, 50, 100]",
            );
            return None;
        }
        (Some(Strategy::BlueGreen), Some(_)) => {
            errs.push(
                PATH,
                "expected no steps: blue-green switches all traffic at once (use strategy: canary for steps)",
            );
            return None;
        }
        _ => {}
    }
    let steps =
        check::optional_list(
            errs,
            PATH,
            "step",
            raw,
            |errs, path, step: i64| match u8::try_from(step) {
                Ok(percent @ 1..=100) => Some(percent),
                _ => {
                    errs.push(path, format!("expected a percentage 1-100, got {step}"));
                    None
                }
            },
        )?;
    if let Some(steps) = &steps {
        for (i, pair) in steps.windows(2).enumerate() {
            if pair[1] <= pair[0] {
                errs.push(
                    format!("{PATH}[{}]", i + 1),
                    format!(
                        "expected steps in strictly increasing order, got {} after {}",
                        pair[1], pair[0]
                    ),
                );
                return None;
            }
        }
    }
    Some(steps)
}

fn analysis(errs: &mut FieldErrors, raw: RawAnalysis) -> Option<Analysis> {
    const PATH: &str = "spec.analysis";
    if raw.min_success_rate.is_none() && raw.max_p99_latency_ms.is_none() {
        errs.push(
            PATH,
            "expected minSuccessRate or maxP99LatencyMs (or leave analysis out)",
        );
        return None;
    }
    let rate = match raw.min_success_rate {
        Some(rate) if !(0.0..=1.0).contains(&rate) => {
            errs.push(
                format!("{PATH}.minSuccessRate"),
                format!("expected a fraction 0-1 such as 0.99, got {rate}"),
            );
            None
        }
        rate => Some(rate),
    };
    let latency = match raw.max_p99_latency_ms {
        None => Some(None),
        Some(ms) => match u32::try_from(ms) {
            Ok(ms) if ms > 0 => Some(Some(ms)),
            _ => {
                errs.push(
                    format!("{PATH}.maxP99LatencyMs"),
                    format!("expected milliseconds 1-{}, got {ms}", u32::MAX),
                );
                None
            }
        },
    };
    let min_requests = match raw.min_requests {
        None => Some(None),
        Some(n) => match u64::try_from(n) {
            Ok(n) => Some(Some(n)),
            Err(_) => {
                errs.push(
                    format!("{PATH}.minRequests"),
                    format!("expected a request count of 0 or more, got {n}"),
                );
                None
            }
        },
    };
    Some(Analysis {
        min_success_rate: rate?,
        max_p99_latency_ms: latency?,
        min_requests: min_requests?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{expect_error, parse_one};

    const ROLLOUT: &str = "apiVersion: bulkhead.dev/v1
kind: Rollout
metadata: {name: inventory-v2, namespace: shop}
spec:
  service: inventory
  stable: v1
  canary: v2
  strategy: canary
  steps: [5, 25, 50, 100]
  interval: 5m
  analysis: {minSuccessRate: 0.99, maxP99LatencyMs: 250, minRequests: 100}
";

    fn rollout(yaml: &str) -> Rollout {
        match parse_one(yaml) {
            Resource::Rollout(r) => r,
            other => panic!("not a Rollout: {other:?}"),
        }
    }

    #[test]
    fn parses_canary() {
        let r = rollout(ROLLOUT);
        assert_eq!(r.spec.strategy, Strategy::Canary);
        assert_eq!(r.spec.steps, Some(vec![5, 25, 50, 100]));
        assert_eq!(r.spec.interval.duration(), Duration::from_secs(300));
        let a = r.spec.analysis.unwrap_or_else(|| panic!("analysis"));
        assert_eq!(a.min_success_rate, Some(0.99));
        assert_eq!(a.max_p99_latency_ms, Some(250));
        assert_eq!(a.min_requests, Some(100));
    }

    #[test]
    fn parses_blue_green_without_steps_or_analysis() {
        let yaml = ROLLOUT
            .replace("strategy: canary", "strategy: blue-green")
            .replace("  steps: [5, 25, 50, 100]\n", "")
            .replace(
                "  analysis: {minSuccessRate: 0.99, maxP99LatencyMs: 250, minRequests: 100}\n",
                "",
            );
        let r = rollout(&yaml);
        assert_eq!(r.spec.strategy, Strategy::BlueGreen);
        assert_eq!(r.spec.steps, None);
        assert_eq!(r.spec.analysis, None);
    }

    #[test]
    fn intervals() {
        let d = |s: &str| s.parse::<Interval>().map(|i| i.duration());
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("168h"), Ok(MAX_INTERVAL));
        // The shared syntax: what a flag takes, a field takes.
        assert_eq!(d("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(d("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in [
            "",
            "30",
            "s",
            "0s",
            "-1s",
            "169h",
            "8d",
            "99999999999999s",
            "5M",
        ] {
            assert!(bad.parse::<Interval>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_bad_interval() {
        expect_error(
            &ROLLOUT.replace("5m", "5 fortnights"),
            "spec.interval",
            "expected a duration",
        );
    }

    #[test]
    fn rejects_same_stable_and_canary() {
        expect_error(
            &ROLLOUT.replace("canary: v2", "canary: v1"),
            "spec.canary",
            "other than stable's",
        );
    }

    #[test]
    fn rejects_bad_versions() {
        expect_error(
            &ROLLOUT.replace("stable: v1", "stable: ''"),
            "spec.stable",
            "expected a version",
        );
        expect_error(
            &ROLLOUT.replace("canary: v2", "canary: v/2"),
            "spec.canary",
            "expected a version",
        );
    }

    #[test]
    fn rejects_unknown_strategy() {
        expect_error(
            &ROLLOUT.replace("strategy: canary", "strategy: bluegreen"),
            "spec.strategy",
            "expected one of canary, blue-green, got \"bluegreen\"",
        );
    }

    #[test]
    fn rejects_step_out_of_range() {
        expect_error(
            &ROLLOUT.replace("[5, 25", "[0, 25"),
            "spec.steps[0]",
            "expected a percentage 1-100, got 0",
        );
        expect_error(
            &ROLLOUT.replace("50, 100]", "50, 101]"),
            "spec.steps[3]",
            "got 101",
        );
    }

    #[test]
    fn rejects_steps_not_increasing() {
        expect_error(
            &ROLLOUT.replace("[5, 25, 50", "[5, 50, 50"),
            "spec.steps[2]",
            "strictly increasing",
        );
    }

    #[test]
    fn rejects_canary_without_steps() {
        expect_error(
            &ROLLOUT.replace("  steps: [5, 25, 50, 100]\n", ""),
            "spec.steps",
            "needs steps",
        );
        expect_error(
            &ROLLOUT.replace("[5, 25, 50, 100]", "[]"),
            "spec.steps",
            "at least one step",
        );
    }

    #[test]
    fn rejects_steps_for_blue_green() {
        expect_error(
            &ROLLOUT.replace("strategy: canary", "strategy: blue-green"),
            "spec.steps",
            "blue-green switches all traffic at once",
        );
    }

    #[test]
    fn rejects_bad_success_rate() {
        expect_error(
            &ROLLOUT.replace("0.99", "99"),
            "spec.analysis.minSuccessRate",
            "expected a fraction 0-1 such as 0.99, got 99",
        );
    }

    #[test]
    fn rejects_bad_latency() {
        expect_error(
            &ROLLOUT.replace("maxP99LatencyMs: 250", "maxP99LatencyMs: 0"),
            "spec.analysis.maxP99LatencyMs",
            "expected milliseconds",
        );
    }

    #[test]
    fn rejects_negative_min_requests() {
        expect_error(
            &ROLLOUT.replace("minRequests: 100", "minRequests: -1"),
            "spec.analysis.minRequests",
            "expected a request count",
        );
    }

    #[test]
    fn rejects_empty_analysis() {
        expect_error(
            &ROLLOUT.replace(
                "{minSuccessRate: 0.99, maxP99LatencyMs: 250, minRequests: 100}",
                "{minRequests: 5}",
            ),
            "spec.analysis",
            "expected minSuccessRate or maxP99LatencyMs",
        );
    }
}
