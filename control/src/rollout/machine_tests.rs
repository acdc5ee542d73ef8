use bulkhead_proto::model::{Resource, parse_documents};

use super::*;
use crate::rollout::status::{GateResult, Verdict};

fn spec(extra: &str, steps: &str) -> RolloutSpec {
    let yaml = format!(
        "apiVersion: bulkhead.dev/v1
kind: Rollout
metadata: {{name: inventory, namespace: shop}}
spec:
  service: inventory
  stable: '3.0.0'
  canary: '3.1.0'
  strategy: canary
  steps: {steps}
  interval: 30s
  threshold: 2
  progressDeadline: 5m
{extra}"
    );
    match parse_documents("t", &yaml).map(|mut d| d.remove(0)) {
        Ok(Resource::Rollout(r)) => r.spec,
        other => panic!("{other:?}"),
    }
}

fn at(now_unix_ms: i64) -> Moment<'static> {
    Moment {
        now_unix_ms,
        replica: "r1",
    }
}

fn report(verdict: Verdict) -> Judged {
    Judged::Complete(IntervalReport {
        start_unix_ms: 0,
        end_unix_ms: 0,
        step: 0,
        canary_weight: 0,
        requests: 100,
        failures: 0,
        success_rate: Some(1.0),
        p99_ms: Some(5.0),
        stable: None,
        gates: Vec::<GateResult>::new(),
        verdict,
        reason: verdict.as_str().to_owned(),
    })
}

const S: i64 = 1000;

#[test]
fn steps_through_and_promotes() {
    let spec = spec("", "[10, 50]");
    let mut st = start(&spec, "g", at(0));
    assert_eq!(
        (st.phase, st.step, st.canary_weight),
        (Phase::Progressing, 0, 10)
    );
    let settle = Duration::from_secs(2);
    assert_eq!(due_window(&st, &spec, 31 * S, settle), None);
    assert_eq!(due_window(&st, &spec, 32 * S, settle), Some((0, 30 * S)));
    assert!(tick(
        &mut st,
        &spec,
        Some(report(Verdict::Passed)),
        at(32 * S)
    ));
    assert_eq!((st.step, st.canary_weight), (1, 50));
    assert_eq!(st.window_started_unix_ms, 32 * S);
    tick(&mut st, &spec, Some(report(Verdict::Passed)), at(64 * S));
    assert_eq!((st.phase, st.canary_weight), (Phase::Promoted, 100));
    assert_eq!(st.stable, "3.1.0");
    assert_eq!(st.step, 2);
    assert!(!tick(
        &mut st,
        &spec,
        Some(report(Verdict::Passed)),
        at(99 * S)
    ));
    // One transition per step, and one for the promotion.
    let steps: Vec<u32> = st.transitions.iter().map(|t| t.step).collect();
    assert_eq!(steps, [0, 1, 2]);
}

#[test]
fn threshold_failed_intervals_roll_back() {
    let spec = spec("", "[10, 50]");
    let mut st = start(&spec, "g", at(0));
    tick(&mut st, &spec, Some(report(Verdict::Failed)), at(32 * S));
    assert_eq!(
        (st.phase, st.canary_weight, st.failed_intervals),
        (Phase::Progressing, 10, 1)
    );
    // Insufficient data in between neither resets nor adds.
    tick(
        &mut st,
        &spec,
        Some(report(Verdict::InsufficientData)),
        at(64 * S),
    );
    assert_eq!(
        (st.phase, st.failed_intervals),
        (Phase::InsufficientData, 1)
    );
    tick(&mut st, &spec, Some(report(Verdict::Failed)), at(96 * S));
    assert_eq!((st.phase, st.canary_weight), (Phase::Failed, 0));
    assert!(
        st.reason.contains("rolled back after 2 failed"),
        "{}",
        st.reason
    );
    assert_eq!(st.stable, "3.0.0");
    assert_eq!(st.intervals.len(), 3);
}

#[test]
fn insufficient_data_holds_then_fails_at_the_deadline() {
    let spec = spec("", "[10, 50]");
    let mut st = start(&spec, "g", at(0));
    let mut now = 0;
    for _ in 0..9 {
        now += 32 * S;
        tick(
            &mut st,
            &spec,
            Some(report(Verdict::InsufficientData)),
            at(now),
        );
        assert_eq!((st.phase, st.canary_weight), (Phase::InsufficientData, 10));
    }
    // 5 minutes after the step began.
    tick(&mut st, &spec, None, at(301 * S));
    assert_eq!((st.phase, st.canary_weight), (Phase::Failed, 0));
    assert!(st.reason.contains("progress deadline 5m"), "{}", st.reason);
    assert!(st.intervals.len() <= crate::rollout::status::MAX_INTERVALS);
}

#[test]
fn incomplete_measurements_freeze() {
    let spec = spec("", "[10, 50]");
    let mut st = start(&spec, "g", at(0));
    tick(
        &mut st,
        &spec,
        Some(Judged::Incomplete("x".into())),
        at(32 * S),
    );
    assert_eq!(
        (st.phase, st.step, st.failed_intervals),
        (Phase::Progressing, 0, 0)
    );
    assert!(st.intervals.is_empty());
    assert_eq!(st.window_started_unix_ms, 32 * S);
    assert!(st.reason.contains("measurements incomplete"));
}

#[test]
fn pause_steps_wait_for_promotion_or_time() {
    let spec = spec("", "[10, pause, 50, {pause: 1m}]");
    let mut st = start(&spec, "g", at(0));
    tick(&mut st, &spec, Some(report(Verdict::Passed)), at(32 * S));
    assert_eq!(
        (st.phase, st.step, st.canary_weight),
        (Phase::Paused, 1, 10)
    );
    assert_eq!(due_window(&st, &spec, 999 * S, Duration::ZERO), None);
    // An untimed pause is not "no progress".
    tick(&mut st, &spec, None, at(9999 * S));
    assert_eq!(st.phase, Phase::Paused);
    command(
        &mut st,
        &spec,
        "g",
        Command::Promote { full: false },
        "op",
        at(10_000 * S),
    )
    .unwrap();
    assert_eq!(
        (st.phase, st.step, st.canary_weight),
        (Phase::Progressing, 2, 50)
    );
    tick(
        &mut st,
        &spec,
        Some(report(Verdict::Passed)),
        at(10_032 * S),
    );
    assert_eq!(
        (st.phase, st.step, st.canary_weight),
        (Phase::Paused, 3, 50)
    );
    tick(&mut st, &spec, None, at(10_080 * S));
    assert_eq!(st.phase, Phase::Paused);
    tick(&mut st, &spec, None, at(10_093 * S));
    assert_eq!(st.phase, Phase::Promoted);
}

#[test]
fn operator_pause_resume_abort_retry() {
    let spec = spec("", "[10, 50]");
    let mut st = start(&spec, "g", at(0));
    command(&mut st, &spec, "g", Command::Pause, "op", at(S)).unwrap();
    assert_eq!(st.phase, Phase::Paused);
    assert!(!tick(
        &mut st,
        &spec,
        Some(report(Verdict::Passed)),
        at(40 * S)
    ));
    command(&mut st, &spec, "g", Command::Resume, "op", at(50 * S)).unwrap();
    assert_eq!(
        (st.phase, st.step, st.window_started_unix_ms),
        (Phase::Progressing, 0, 50 * S)
    );
    assert!(command(&mut st, &spec, "g", Command::Resume, "op", at(51 * S)).is_err());
    assert!(command(&mut st, &spec, "g", Command::Retry, "op", at(51 * S)).is_err());
    command(&mut st, &spec, "g", Command::Abort, "op", at(52 * S)).unwrap();
    assert_eq!((st.phase, st.canary_weight), (Phase::Aborted, 0));
    let err = command(&mut st, &spec, "g", Command::Abort, "op", at(53 * S)).unwrap_err();
    assert!(err.contains("Aborted"), "{err}");
    command(&mut st, &spec, "g", Command::Retry, "op", at(54 * S)).unwrap();
    assert_eq!(
        (st.phase, st.step, st.canary_weight),
        (Phase::Progressing, 0, 10)
    );
    assert!(st.transitions.len() > 3);
    command(
        &mut st,
        &spec,
        "g",
        Command::Promote { full: true },
        "op",
        at(55 * S),
    )
    .unwrap();
    assert_eq!(
        (st.phase, st.canary_weight, st.stable.as_str()),
        (Phase::Promoted, 100, "3.1.0")
    );
}

#[test]
fn blue_green_analyses_pinned_traffic_then_switches() {
    let mut spec = spec("", "[10]");
    spec.strategy = Strategy::BlueGreen;
    spec.steps = None;
    let mut st = start(&spec, "g", at(0));
    assert_eq!((st.phase, st.canary_weight), (Phase::Progressing, 0));
    assert!(st.reason.contains("pinned"), "{}", st.reason);
    tick(&mut st, &spec, Some(report(Verdict::Passed)), at(32 * S));
    assert_eq!((st.phase, st.canary_weight), (Phase::Promoted, 100));
}

#[test]
fn weights_of_pauses() {
    let plan = [
        Step::Pause(None),
        Step::Weight(10),
        Step::Pause(None),
        Step::Weight(40),
    ];
    assert_eq!(weight_at(&plan, 0), 0);
    assert_eq!(weight_at(&plan, 1), 10);
    assert_eq!(weight_at(&plan, 2), 10);
    assert_eq!(weight_at(&plan, 3), 40);
}
