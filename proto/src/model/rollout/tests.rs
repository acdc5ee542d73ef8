use super::*;
use crate::model::Stickiness;
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
    assert_eq!(
        r.spec.steps,
        Some([5, 25, 50, 100].map(Step::Weight).to_vec())
    );
    assert_eq!(r.spec.threshold, DEFAULT_THRESHOLD);
    assert_eq!(r.spec.progress_deadline(), Duration::from_secs(1500));
    assert_eq!(r.spec.stickiness, Stickiness::None);
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
        "expected a percentage 1-100, pause or {pause: 5m}, got 0",
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
        "expected minSuccessRate, maxP99LatencyMs or compareToStable",
    );
}

/// The document issue 11 promises to accept as written.
const ISSUE_EXAMPLE: &str = "apiVersion: bulkhead.dev/v1
kind: Rollout
metadata: {name: inventory, namespace: shop}
spec:
  service: inventory
  stable: \"3.0.0\"
  canary: \"3.1.0\"
  strategy: canary            # or blue-green
  steps: [10, 50]             # percent to the canary; promotion to 100 follows the last
  interval: 30s               # per step
  threshold: 2                # consecutive failed intervals before rollback
  progressDeadline: 10m       # no progress (e.g. never enough data) -> Failed
  stickiness: caller          # optional: none (default) | caller | header:x-user-id
  analysis:
    minRequests: 50           # per interval, else insufficient data
    minSuccessRate: 0.99
    maxP99LatencyMs: 250
    compareToStable: {maxSuccessRateDrop: 0.01, maxP99Ratio: 1.5}
";

#[test]
fn parses_the_documented_example() {
    let r = rollout(ISSUE_EXAMPLE);
    assert_eq!(r.spec.stable, "3.0.0");
    assert_eq!(r.spec.steps, Some(vec![Step::Weight(10), Step::Weight(50)]));
    assert_eq!(r.spec.threshold, 2);
    assert_eq!(r.spec.progress_deadline(), Duration::from_secs(600));
    assert_eq!(r.spec.stickiness, Stickiness::Caller);
    let a = r
        .spec
        .analysis
        .clone()
        .unwrap_or_else(|| panic!("analysis"));
    assert_eq!(a.min_requests, Some(50));
    assert_eq!(
        a.compare_to_stable,
        Some(CompareToStable {
            max_success_rate_drop: Some(0.01),
            max_p99_ratio: Some(1.5)
        })
    );
    // Written back and read again, it is the same document.
    let json = serde_json::to_string(&Resource::Rollout(r.clone())).unwrap();
    match crate::model::parse_documents("-", &json).map(|mut d| d.remove(0)) {
        Ok(Resource::Rollout(again)) => assert_eq!(again, r),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pause_steps() {
    let r = rollout(&ISSUE_EXAMPLE.replace("[10, 50]", "[10, pause, 50, {pause: 5m}]"));
    let five = "5m".parse::<Interval>().unwrap();
    assert_eq!(
        r.spec.steps,
        Some(vec![
            Step::Weight(10),
            Step::Pause(None),
            Step::Weight(50),
            Step::Pause(Some(five))
        ])
    );
    expect_error(
        &ISSUE_EXAMPLE.replace("[10, 50]", "[10, wait]"),
        "spec.steps[1]",
        "expected a percentage 1-100, pause or {pause: 5m}, got \"wait\"",
    );
    expect_error(
        &ISSUE_EXAMPLE.replace("[10, 50]", "[10, {pause: soon}]"),
        "spec.steps[1].pause",
        "expected a duration",
    );
    expect_error(
        &ISSUE_EXAMPLE.replace("[10, 50]", "[50, pause, 10]"),
        "spec.steps[2]",
        "strictly increasing",
    );
}

#[test]
fn rejects_bad_threshold_deadline_stickiness_and_comparison() {
    expect_error(
        &ISSUE_EXAMPLE.replace("threshold: 2 ", "threshold: 0 "),
        "spec.threshold",
        "1-1000",
    );
    expect_error(
        &ISSUE_EXAMPLE.replace("progressDeadline: 10m", "progressDeadline: never"),
        "spec.progressDeadline",
        "expected a duration",
    );
    expect_error(
        &ISSUE_EXAMPLE.replace("stickiness: caller", "stickiness: session"),
        "spec.stickiness",
        "expected none, caller or header:<name>",
    );
    expect_error(
        &ISSUE_EXAMPLE.replace("maxP99Ratio: 1.5", "maxP99Ratio: 0.5"),
        "spec.analysis.compareToStable.maxP99Ratio",
        "expected a factor 1-1000",
    );
    expect_error(
        &ISSUE_EXAMPLE.replace("maxSuccessRateDrop: 0.01", "maxSuccessRateDrop: 2"),
        "spec.analysis.compareToStable.maxSuccessRateDrop",
        "expected a fraction 0-1",
    );
}

#[test]
fn header_stickiness() {
    let r = rollout(&ISSUE_EXAMPLE.replace("stickiness: caller", "stickiness: header:x-user-id"));
    assert_eq!(r.spec.stickiness, Stickiness::Header("x-user-id".into()));
}
