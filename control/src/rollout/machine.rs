//! A rollout's state machine, without I/O: what the status becomes at a
//! moment, given the spec, a judged interval (if one is due) and operator
//! commands. The controller ([`super::controller`]) reads the store, calls
//! these, and writes the result back with compare-and-swap.
//!
//! ```text
//!   start ──> Progressing ──(interval passed)──> next step ... ──> Promoted
//!               │  ^  │                                  (canary 100 %)
//!  (too few     │  │  └─(threshold failed intervals, or
//!   requests)   v  │     progressDeadline without a pass)──> Failed (stable 100 %)
//!          InsufficientData
//!   pause step / `pause` ──> Paused ──(promote | resume | timed pause over)──> ...
//!   `abort` (any time before the end) ──> Aborted (stable 100 %)
//!   `retry` (Failed | Aborted) ──> start again from the first step
//! ```
//!
//! Measurements that are incomplete (a canary or stable endpoint that did
//! not report through the interval, a control-plane restart) freeze the
//! rollout: the interval is measured again and counts neither way.

use std::time::Duration;

use bulkhead_proto::model::{RolloutSpec, Step, Strategy};

use super::status::{ActionRecord, IntervalReport, Phase, RolloutStatus, Verdict};

/// An operator's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Skip the rest of the current step (its analysis or pause); with
    /// `full`, skip every remaining step: the canary gets 100 % now.
    Promote {
        full: bool,
    },
    Pause,
    Resume,
    /// Stable gets 100 % at once; the rollout ends `Aborted`.
    Abort,
    /// Start a `Failed` or `Aborted` rollout again from its first step.
    Retry,
}

impl Command {
    pub fn parse(action: &str, full: bool) -> Option<Self> {
        Some(match action {
            "promote" => Command::Promote { full },
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "abort" => Command::Abort,
            "retry" => Command::Retry,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Promote { full: false } => "promote",
            Command::Promote { full: true } => "promote --full",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
            Command::Retry => "retry",
        }
    }
}

/// The outcome of measuring a due interval.
#[derive(Clone, Debug)]
pub enum Judged {
    Complete(IntervalReport),
    /// Some endpoint did not report through the interval: nothing is
    /// known, nothing counts.
    Incomplete(String),
}

/// Who acts and when.
#[derive(Clone, Copy, Debug)]
pub struct Moment<'a> {
    pub now_unix_ms: i64,
    pub replica: &'a str,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The canary's weight at step `index` of `plan`: a pause holds the last
/// weight before it (0 before any).
pub fn weight_at(plan: &[Step], index: usize) -> u8 {
    plan.iter()
        .take(index + 1)
        .filter_map(|s| match s {
            Step::Weight(w) => Some(*w),
            Step::Pause(_) => None,
        })
        .next_back()
        .unwrap_or(0)
}

/// A fresh status at the first step.
pub fn start(spec: &RolloutSpec, generation: &str, at: Moment<'_>) -> RolloutStatus {
    let plan = spec.plan();
    let mut status = RolloutStatus {
        phase: Phase::Progressing,
        step: 0,
        canary_weight: weight_at(&plan, 0),
        stable: spec.stable.clone(),
        canary: spec.canary.clone(),
        reason: format!(
            "started: {} {} -> {}",
            spec.strategy.as_str(),
            spec.stable,
            spec.canary
        ),
        intervals: Vec::new(),
        failed_intervals: 0,
        generation: generation.to_owned(),
        step_started_unix_ms: at.now_unix_ms,
        window_started_unix_ms: at.now_unix_ms,
        paused_by_operator: false,
        resume_phase: None,
        last_action: None,
        transitions: Vec::new(),
        split_released: false,
        updated_unix_ms: at.now_unix_ms,
    };
    enter_step(&mut status, spec, at);
    status
}

/// The interval to judge now, if one is due: `[from, to)` in unix ms.
/// `settle`: how long reports take to become readable everywhere.
pub fn due_window(
    status: &RolloutStatus,
    spec: &RolloutSpec,
    now_unix_ms: i64,
    settle: Duration,
) -> Option<(i64, i64)> {
    if status.phase.is_terminal() || status.phase == Phase::Paused {
        return None;
    }
    let plan = spec.plan();
    if !matches!(plan.get(status.step as usize), Some(Step::Weight(_))) {
        return None;
    }
    let from = status.window_started_unix_ms;
    let to = from.saturating_add(ms(spec.interval.duration()));
    (now_unix_ms >= to.saturating_add(ms(settle))).then_some((from, to))
}

/// Moves the status on: a judged interval (from [`due_window`]), timed
/// pauses, the progress deadline. Returns whether anything changed.
pub fn tick(
    status: &mut RolloutStatus,
    spec: &RolloutSpec,
    judged: Option<Judged>,
    at: Moment<'_>,
) -> bool {
    if status.phase.is_terminal() || status.paused_by_operator {
        return false;
    }
    let before = status.clone();
    let plan = spec.plan();
    let now = at.now_unix_ms;
    match plan.get(status.step as usize) {
        Some(Step::Pause(Some(for_)))
            if now
                >= status
                    .step_started_unix_ms
                    .saturating_add(ms(for_.duration())) =>
        {
            advance(status, spec, at, format!("timed pause of {for_} over"));
        }
        Some(Step::Pause(_)) => {}
        Some(Step::Weight(_)) => {
            if let Some(judged) = judged {
                on_judged(status, spec, judged, at);
            }
            let on_same_step = status.step == before.step && !status.phase.is_terminal();
            let deadline = spec.progress_deadline();
            if on_same_step && now.saturating_sub(status.step_started_unix_ms) > ms(deadline) {
                let last = status
                    .intervals
                    .last()
                    .filter(|i| i.step == status.step)
                    .map_or("no interval was measured".to_owned(), |i| i.reason.clone());
                fail(
                    status,
                    at,
                    format!(
                        "progress deadline {} passed at step {} without a passing interval (last: {last}); all traffic back to {}",
                        humantime::format_duration(deadline),
                        status.step + 1,
                        spec.stable
                    ),
                );
            }
        }
        None => {}
    }
    let changed = *status != before;
    if changed {
        status.updated_unix_ms = now;
    }
    changed
}

fn on_judged(status: &mut RolloutStatus, spec: &RolloutSpec, judged: Judged, at: Moment<'_>) {
    let now = at.now_unix_ms;
    match judged {
        Judged::Incomplete(why) => {
            status.reason =
                format!("measurements incomplete, interval not counted (measuring again): {why}");
            status.window_started_unix_ms = now;
        }
        Judged::Complete(report) => {
            let verdict = report.verdict;
            let reason = report.reason.clone();
            status.push_interval(report);
            status.window_started_unix_ms = now;
            match verdict {
                Verdict::Passed => {
                    status.failed_intervals = 0;
                    advance(status, spec, at, reason);
                }
                Verdict::InsufficientData => {
                    set_phase(
                        status,
                        Phase::InsufficientData,
                        format!("{reason}; holding at {} %", status.canary_weight),
                        at,
                    );
                }
                Verdict::Failed => {
                    status.failed_intervals += 1;
                    if status.failed_intervals >= spec.threshold {
                        fail(
                            status,
                            at,
                            format!(
                                "rolled back after {} failed interval(s) in a row (threshold {}): {reason}",
                                status.failed_intervals, spec.threshold
                            ),
                        );
                    } else {
                        set_phase(
                            status,
                            Phase::Progressing,
                            format!(
                                "interval failed ({} of {} before rollback): {reason}",
                                status.failed_intervals, spec.threshold
                            ),
                            at,
                        );
                    }
                }
            }
        }
    }
}

fn set_phase(status: &mut RolloutStatus, phase: Phase, reason: String, at: Moment<'_>) {
    let changed = status.phase != phase;
    status.phase = phase;
    status.reason = reason;
    if changed {
        status.push_transition(at.now_unix_ms, at.replica);
    }
}

fn fail(status: &mut RolloutStatus, at: Moment<'_>, reason: String) {
    status.canary_weight = 0;
    status.phase = Phase::Failed;
    status.reason = reason;
    status.push_transition(at.now_unix_ms, at.replica);
}

/// The next step, or promotion after the last.
fn advance(status: &mut RolloutStatus, spec: &RolloutSpec, at: Moment<'_>, why: String) {
    let plan = spec.plan();
    status.step += 1;
    status.failed_intervals = 0;
    status.step_started_unix_ms = at.now_unix_ms;
    status.window_started_unix_ms = at.now_unix_ms;
    status.paused_by_operator = false;
    status.resume_phase = None;
    if status.step as usize >= plan.len() {
        promote(status, spec, at, why);
        return;
    }
    status.reason = why;
    enter_step(status, spec, at);
}

/// Sets phase and weight for the step the status is on, and records it.
fn enter_step(status: &mut RolloutStatus, spec: &RolloutSpec, at: Moment<'_>) {
    let plan = spec.plan();
    let index = status.step as usize;
    // Reasons are for people: steps count from 1 (the status from 0).
    let number = index + 1;
    status.canary_weight = weight_at(&plan, index);
    let what = match plan.get(index) {
        Some(Step::Pause(None)) => {
            status.phase = Phase::Paused;
            format!(
                "paused at step {number} until promoted (bulkheadctl rollout promote {})",
                spec.service
            )
        }
        Some(Step::Pause(Some(for_))) => {
            status.phase = Phase::Paused;
            format!("paused at step {number} for {for_}")
        }
        _ if spec.strategy == Strategy::BlueGreen => {
            status.phase = Phase::Progressing;
            format!(
                "analysing {} on requests pinned with x-bulkhead-version: {}",
                spec.canary, spec.canary
            )
        }
        _ => {
            status.phase = Phase::Progressing;
            format!(
                "step {number}: {} % to {}",
                status.canary_weight, spec.canary
            )
        }
    };
    status.reason = if status.reason.is_empty() {
        what
    } else {
        format!("{what} ({})", status.reason)
    };
    status.push_transition(at.now_unix_ms, at.replica);
}

fn promote(status: &mut RolloutStatus, spec: &RolloutSpec, at: Moment<'_>, why: String) {
    status.step = spec.plan().len() as u32;
    status.canary_weight = 100;
    status.phase = Phase::Promoted;
    status.stable = spec.canary.clone();
    status.paused_by_operator = false;
    status.resume_phase = None;
    status.reason = format!("promoted: {} is now stable ({why})", spec.canary);
    status.push_transition(at.now_unix_ms, at.replica);
}

/// Carries out an operator's command, or says why it cannot be.
pub fn command(
    status: &mut RolloutStatus,
    spec: &RolloutSpec,
    generation: &str,
    cmd: Command,
    by: &str,
    at: Moment<'_>,
) -> Result<(), String> {
    let name = cmd.as_str();
    if status.phase.is_terminal() && cmd != Command::Retry {
        return Err(format!(
            "the rollout is {}; `{name}` applies to a running rollout (use retry to start it again)",
            status.phase.as_str()
        ));
    }
    let plan = spec.plan();
    let who = format!("by {by}");
    match cmd {
        Command::Promote { full: true } => promote(status, spec, at, format!("promoted {who}")),
        Command::Promote { full: false } => {
            advance(status, spec, at, format!("step promoted {who}"));
        }
        Command::Pause => {
            if !status.paused_by_operator {
                status.resume_phase = Some(status.phase);
                status.paused_by_operator = true;
                set_phase(
                    status,
                    Phase::Paused,
                    format!("paused {who} at {} %", status.canary_weight),
                    at,
                );
            }
        }
        Command::Resume => {
            if status.paused_by_operator {
                let phase = status.resume_phase.take().unwrap_or(Phase::Progressing);
                status.paused_by_operator = false;
                // Time paused is not time without progress, and what was
                // measured before the pause is stale.
                status.step_started_unix_ms = at.now_unix_ms;
                status.window_started_unix_ms = at.now_unix_ms;
                set_phase(status, phase, format!("resumed {who}"), at);
                if matches!(plan.get(status.step as usize), Some(Step::Pause(_))) {
                    status.phase = Phase::Paused;
                }
            } else if matches!(plan.get(status.step as usize), Some(Step::Pause(None))) {
                advance(status, spec, at, format!("resumed {who}"));
            } else {
                return Err(format!(
                    "the rollout is {}, not paused",
                    status.phase.as_str()
                ));
            }
        }
        Command::Abort => {
            status.canary_weight = 0;
            status.paused_by_operator = false;
            status.resume_phase = None;
            set_phase(
                status,
                Phase::Aborted,
                format!("aborted {who}: all traffic back to {}", spec.stable),
                at,
            );
        }
        Command::Retry => {
            if !matches!(status.phase, Phase::Failed | Phase::Aborted) {
                return Err(format!(
                    "retry starts a Failed or Aborted rollout again; this one is {}",
                    status.phase.as_str()
                ));
            }
            let mut fresh = start(spec, generation, at);
            fresh.reason = format!("retried {who}: {}", fresh.reason);
            let mut transitions = std::mem::take(&mut status.transitions);
            transitions.append(&mut fresh.transitions);
            fresh.transitions = transitions;
            let extra = fresh
                .transitions
                .len()
                .saturating_sub(super::status::MAX_TRANSITIONS);
            fresh.transitions.drain(..extra);
            *status = fresh;
        }
    }
    status.updated_unix_ms = at.now_unix_ms;
    Ok(())
}

/// Notes a command's outcome in the status.
pub fn record_action(
    status: &mut RolloutStatus,
    id: &str,
    cmd: Command,
    by: &str,
    at: Moment<'_>,
    outcome: &Result<(), String>,
) {
    status.last_action = Some(ActionRecord {
        id: id.to_owned(),
        action: cmd.as_str().to_owned(),
        by: by.to_owned(),
        at_unix_ms: at.now_unix_ms,
        outcome: match outcome {
            Ok(()) => "done".to_owned(),
            Err(why) => format!("refused: {why}"),
        },
    });
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
