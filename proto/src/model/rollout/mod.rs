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
use super::traffic::Stickiness;

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
    /// The canary's steps: percentages (1-100, strictly increasing across
    /// the percentage steps) and pauses. Present (non-empty) for `canary`,
    /// absent for `blue-green`. Promotion to 100 % follows the last step.
    pub steps: Option<Vec<Step>>,
    /// Time spent at each step before analysis moves on.
    pub interval: Interval,
    /// Consecutive failed intervals that roll the canary back (default 2).
    pub threshold: u32,
    /// How long one step may go without progress (e.g. never enough data)
    /// before the rollout fails; `None`: [`RolloutSpec::progress_deadline`]'s
    /// default.
    pub progress_deadline: Option<Interval>,
    /// How callers keep their version while the weights are split.
    pub stickiness: Stickiness,
    /// Gates a step must pass; `None` means time alone moves the rollout.
    pub analysis: Option<Analysis>,
}

/// One step of a canary rollout.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Send this percentage of traffic to the canary for an interval.
    Weight(u8),
    /// Hold the weight so far: until promoted by hand (`None`, written
    /// `pause`) or for a while (`{pause: 5m}`).
    Pause(Option<Interval>),
}

/// Default for [`RolloutSpec::threshold`].
pub const DEFAULT_THRESHOLD: u32 = 2;
/// Least default progress deadline; it is at least five intervals.
const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

impl RolloutSpec {
    /// How long a step may go without progress before the rollout fails:
    /// `progressDeadline`, else 10 minutes or five intervals, whichever is
    /// longer.
    pub fn progress_deadline(&self) -> Duration {
        match &self.progress_deadline {
            Some(deadline) => deadline.duration(),
            None => DEFAULT_PROGRESS_DEADLINE.max(self.interval.duration().saturating_mul(5)),
        }
    }

    /// The steps as the controller walks them: the canary's, or for
    /// blue-green the one step that runs analysis on pinned traffic (0 %).
    pub fn plan(&self) -> Vec<Step> {
        match (&self.strategy, &self.steps) {
            (Strategy::Canary, Some(steps)) => steps.clone(),
            _ => vec![Step::Weight(0)],
        }
    }
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

/// Thresholds measured on the canary over one interval. At least one gate
/// (absolute or relative) is set.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// Fraction of non-5xx responses, 0-1 (e.g. 0.99).
    pub min_success_rate: Option<f64>,
    /// Upper bound on the 99th-percentile latency, milliseconds (> 0).
    pub max_p99_latency_ms: Option<u32>,
    /// Requests needed before the thresholds are judged at all.
    pub min_requests: Option<u64>,
    /// Gates relative to the stable version over the same window.
    pub compare_to_stable: Option<CompareToStable>,
}

/// Kayenta-style gates: the canary is judged against stable measured over
/// the same interval, so a noisy dependency that fails both does not fail
/// the canary alone. At least one is set.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareToStable {
    /// The canary's success rate may be at most this much below stable's
    /// (a fraction 0-1: 0.01 is one percentage point).
    pub max_success_rate_drop: Option<f64>,
    /// The canary's p99 latency may be at most this factor of stable's
    /// (at least 1).
    pub max_p99_ratio: Option<f64>,
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
    steps: Option<Vec<RawStep>>,
    interval: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    threshold: Option<i64>,
    #[serde(
        rename = "progressDeadline",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    progress_deadline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stickiness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    analysis: Option<RawAnalysis>,
}

/// `10`, `pause` or `{pause: 5m}`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawStep {
    Percent(i64),
    Word(String),
    Timed(RawTimedPause),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimedPause {
    pause: String,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compare_to_stable: Option<RawCompare>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCompare {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_success_rate_drop: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_p99_ratio: Option<f64>,
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
        let threshold = match raw.threshold {
            None => Some(DEFAULT_THRESHOLD),
            Some(n) => match u32::try_from(n) {
                Ok(n @ 1..=1000) => Some(n),
                _ => {
                    errs.push(
                        "spec.threshold",
                        format!("expected failed intervals before rollback, 1-1000, got {n}"),
                    );
                    None
                }
            },
        };
        let progress_deadline = match &raw.progress_deadline {
            None => Some(None),
            Some(text) => text
                .parse::<Interval>()
                .map(Some)
                .map_err(|e| errs.push("spec.progressDeadline", e.to_string()))
                .ok(),
        };
        let stickiness = match &raw.stickiness {
            None => Some(Stickiness::None),
            Some(text) => Stickiness::parse(errs, "spec.stickiness", text),
        };
        Some(RolloutSpec {
            service: service?,
            stable: stable?,
            canary: canary?,
            strategy: strategy?,
            steps: steps?,
            interval: interval?,
            threshold: threshold?,
            progress_deadline: progress_deadline?,
            stickiness: stickiness?,
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
                .map(|steps| steps.iter().map(Step::to_raw).collect()),
            interval: self.interval.to_string(),
            threshold: (self.threshold != DEFAULT_THRESHOLD).then_some(i64::from(self.threshold)),
            progress_deadline: self.progress_deadline.as_ref().map(Interval::to_string),
            stickiness: (self.stickiness != Stickiness::None).then(|| self.stickiness.to_text()),
            analysis: self.analysis.as_ref().map(|a| RawAnalysis {
                min_success_rate: a.min_success_rate,
                max_p99_latency_ms: a.max_p99_latency_ms.map(i64::from),
                min_requests: a.min_requests.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                compare_to_stable: a.compare_to_stable.as_ref().map(|c| RawCompare {
                    max_success_rate_drop: c.max_success_rate_drop,
                    max_p99_ratio: c.max_p99_ratio,
                }),
            }),
        }
    }

    fn into_resource(metadata: Metadata, spec: Self) -> Resource {
        Resource::Rollout(Rollout { metadata, spec })
    }
}

impl Step {
    fn to_raw(&self) -> RawStep {
        match self {
            Step::Weight(percent) => RawStep::Percent(i64::from(*percent)),
            Step::Pause(None) => RawStep::Word("pause".to_owned()),
            Step::Pause(Some(for_)) => RawStep::Timed(RawTimedPause {
                pause: for_.to_string(),
            }),
        }
    }
}

fn step(errs: &mut FieldErrors, path: &str, raw: RawStep) -> Option<Step> {
    match raw {
        RawStep::Percent(percent) => match u8::try_from(percent) {
            Ok(percent @ 1..=100) => Some(Step::Weight(percent)),
            _ => {
                errs.push(
                    path,
                    format!("expected a percentage 1-100, pause or {{pause: 5m}}, got {percent}"),
                );
                None
            }
        },
        RawStep::Word(word) if word == "pause" => Some(Step::Pause(None)),
        RawStep::Word(word) => {
            errs.push(
                path,
                format!(
                    "expected a percentage 1-100, pause or {{pause: 5m}}, got {}",
                    check::got(&word)
                ),
            );
            None
        }
        RawStep::Timed(timed) => timed
            .pause
            .parse::<Interval>()
            .map(|d| Step::Pause(Some(d)))
            .map_err(|e| errs.push(format!("{path}.pause"), e.to_string()))
            .ok(),
    }
}

fn steps(
    errs: &mut FieldErrors,
    strategy: Option<Strategy>,
    raw: Option<Vec<RawStep>>,
) -> Option<Option<Vec<Step>>> {
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
    let steps = check::optional_list(errs, PATH, "step", raw, step)?;
    if let Some(steps) = &steps {
        let mut last: Option<u8> = None;
        for (i, step) in steps.iter().enumerate() {
            let Step::Weight(percent) = step else {
                continue;
            };
            if let Some(before) = last
                && *percent <= before
            {
                errs.push(
                    format!("{PATH}[{i}]"),
                    format!(
                        "expected steps in strictly increasing order, got {percent} after {before}"
                    ),
                );
                return None;
            }
            last = Some(*percent);
        }
    }
    Some(steps)
}

fn analysis(errs: &mut FieldErrors, raw: RawAnalysis) -> Option<Analysis> {
    const PATH: &str = "spec.analysis";
    if raw.min_success_rate.is_none()
        && raw.max_p99_latency_ms.is_none()
        && raw.compare_to_stable.is_none()
    {
        errs.push(
            PATH,
            "expected minSuccessRate, maxP99LatencyMs or compareToStable (or leave analysis out)",
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
    let compare = match raw.compare_to_stable {
        None => Some(None),
        Some(raw) => compare(errs, raw).map(Some),
    };
    Some(Analysis {
        min_success_rate: rate?,
        max_p99_latency_ms: latency?,
        min_requests: min_requests?,
        compare_to_stable: compare?,
    })
}

fn compare(errs: &mut FieldErrors, raw: RawCompare) -> Option<CompareToStable> {
    const PATH: &str = "spec.analysis.compareToStable";
    if raw.max_success_rate_drop.is_none() && raw.max_p99_ratio.is_none() {
        errs.push(PATH, "expected maxSuccessRateDrop or maxP99Ratio");
        return None;
    }
    let mut ok = true;
    if let Some(drop) = raw.max_success_rate_drop
        && !(0.0..=1.0).contains(&drop)
    {
        errs.push(
            format!("{PATH}.maxSuccessRateDrop"),
            format!("expected a fraction 0-1 such as 0.01, got {drop}"),
        );
        ok = false;
    }
    if let Some(ratio) = raw.max_p99_ratio
        && !(ratio.is_finite() && (1.0..=1000.0).contains(&ratio))
    {
        errs.push(
            format!("{PATH}.maxP99Ratio"),
            format!("expected a factor 1-1000 such as 1.5, got {ratio}"),
        );
        ok = false;
    }
    ok.then_some(CompareToStable {
        max_success_rate_drop: raw.max_success_rate_drop,
        max_p99_ratio: raw.max_p99_ratio,
    })
}

#[cfg(test)]
mod tests;
