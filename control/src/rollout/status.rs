//! A rollout's status as the controller stores it (`rollouts/<ns>/<name>`,
//! JSON) and `bulkheadctl rollout status -o json` prints it. The field
//! names are an interface scripts rely on (issue 11): `phase`, `step`,
//! `canaryWeight`, `stable`, `canary`, `reason`, `intervals[]` with
//! `requests`, `successRate`, `p99Ms`, `verdict`. Fields may be added,
//! never renamed.

use serde::{Deserialize, Serialize};

/// Intervals kept in the status, newest last.
pub const MAX_INTERVALS: usize = 10;
/// Transitions kept in the status, newest last.
pub const MAX_TRANSITIONS: usize = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Progressing,
    Paused,
    InsufficientData,
    Promoted,
    Failed,
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::InsufficientData => "InsufficientData",
            Phase::Promoted => "Promoted",
            Phase::Failed => "Failed",
            Phase::Aborted => "Aborted",
        }
    }

    /// Whether the rollout is over (only `retry` starts it again).
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Promoted | Phase::Failed | Phase::Aborted)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub phase: Phase,
    /// Index of the current step in the rollout's steps (0-based); equal
    /// to the number of steps once promoted. Blue-green has one step: the
    /// analysis on pinned traffic.
    pub step: u32,
    /// Percent of weighted traffic the canary gets now.
    pub canary_weight: u8,
    /// The stable version: after promotion, the version promoted.
    pub stable: String,
    pub canary: String,
    /// Why the last decision was taken, with the measured values.
    pub reason: String,
    /// The last intervals judged, newest last (at most [`MAX_INTERVALS`]).
    #[serde(default)]
    pub intervals: Vec<IntervalReport>,
    /// Consecutive failed intervals at this point.
    #[serde(default)]
    pub failed_intervals: u32,
    /// Fingerprint of the spec this status belongs to: a changed spec
    /// (say a new canary) starts the rollout over.
    pub generation: String,
    /// When the current step began (unix ms); the progress deadline counts
    /// from here.
    pub step_started_unix_ms: i64,
    /// When the interval being measured began (unix ms).
    pub window_started_unix_ms: i64,
    /// Paused by an operator (as opposed to a pause step).
    #[serde(default)]
    pub paused_by_operator: bool,
    /// The phase to return to on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_phase: Option<Phase>,
    /// The last operator action carried out (or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<ActionRecord>,
    /// Every phase, step or weight change, newest last (bounded).
    #[serde(default)]
    pub transitions: Vec<Transition>,
    /// Once the rollout has ended: its last TrafficSplit is written, and
    /// the split is the operator's again (the controller no longer keeps
    /// it in line).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_released: bool,
    pub updated_unix_ms: i64,
}

/// One judged interval: what was measured beside what it was judged
/// against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntervalReport {
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    pub step: u32,
    pub canary_weight: u8,
    /// The canary's requests in the interval.
    pub requests: u64,
    pub failures: u64,
    /// Fraction 0-1; `null` without requests.
    pub success_rate: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Stable over the same interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<Measured>,
    /// Each gate: threshold, measured value, and whether it passed.
    pub gates: Vec<GateResult>,
    pub verdict: Verdict,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measured {
    pub requests: u64,
    pub failures: u64,
    pub success_rate: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// `minRequests`, `minSuccessRate`, `maxP99LatencyMs`,
    /// `maxSuccessRateDrop` or `maxP99Ratio`.
    pub gate: String,
    pub threshold: f64,
    /// The value compared with the threshold (for relative gates, the
    /// canary's difference or ratio to stable); `null` when not measured.
    pub measured: Option<f64>,
    /// `false` only when measured and out of bounds; a gate that could not
    /// be judged (stable without enough requests) passes, with `judged:
    /// false`.
    pub passed: bool,
    pub judged: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Passed,
    Failed,
    InsufficientData,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::InsufficientData => "insufficient-data",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    pub id: String,
    pub action: String,
    /// The operator's identity.
    pub by: String,
    pub at_unix_ms: i64,
    /// `done`, or why it was refused.
    pub outcome: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub at_unix_ms: i64,
    pub phase: Phase,
    pub step: u32,
    pub canary_weight: u8,
    /// The replica that made it.
    pub replica: String,
    pub reason: String,
}

impl RolloutStatus {
    /// Appends an interval, keeping the last [`MAX_INTERVALS`].
    pub fn push_interval(&mut self, interval: IntervalReport) {
        self.intervals.push(interval);
        let extra = self.intervals.len().saturating_sub(MAX_INTERVALS);
        self.intervals.drain(..extra);
    }

    /// Records the current phase/step/weight as a transition.
    pub fn push_transition(&mut self, at_unix_ms: i64, replica: &str) {
        self.transitions.push(Transition {
            at_unix_ms,
            phase: self.phase,
            step: self.step,
            canary_weight: self.canary_weight,
            replica: replica.to_owned(),
            reason: self.reason.clone(),
        });
        let extra = self.transitions.len().saturating_sub(MAX_TRANSITIONS);
        self.transitions.drain(..extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_spellings_scripts_rely_on() {
        let status = RolloutStatus {
            phase: Phase::InsufficientData,
            step: 1,
            canary_weight: 10,
            stable: "3.0.0".into(),
            canary: "3.1.0".into(),
            reason: "why".into(),
            intervals: vec![IntervalReport {
                start_unix_ms: 1,
                end_unix_ms: 2,
                step: 1,
                canary_weight: 10,
                requests: 3,
                failures: 0,
                success_rate: Some(1.0),
                p99_ms: Some(7.5),
                stable: None,
                gates: vec![],
                verdict: Verdict::InsufficientData,
                reason: String::new(),
            }],
            failed_intervals: 0,
            generation: "g".into(),
            step_started_unix_ms: 0,
            window_started_unix_ms: 0,
            paused_by_operator: false,
            resume_phase: None,
            last_action: None,
            transitions: vec![],
            split_released: false,
            updated_unix_ms: 0,
        };
        let json: serde_json::Value = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "InsufficientData");
        assert_eq!(json["step"], 1);
        assert_eq!(json["canaryWeight"], 10);
        assert_eq!(json["stable"], "3.0.0");
        assert_eq!(json["canary"], "3.1.0");
        assert_eq!(json["reason"], "why");
        let interval = &json["intervals"][0];
        assert_eq!(interval["requests"], 3);
        assert_eq!(interval["successRate"], 1.0);
        assert_eq!(interval["p99Ms"], 7.5);
        assert_eq!(interval["verdict"], "insufficient-data");
        let back: RolloutStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }
}
