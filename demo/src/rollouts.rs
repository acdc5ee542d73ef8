//! The demo's releases: two rollouts of inventory run by the control plane
//! on what the sidecars report, while the shop's traffic flows — 3.1.0,
//! healthy, promoted step by step; then 3.2.0, which fails one request in
//! eight, rolled back on its own. A line per change shows the steps, the
//! weight and the last interval's measurements beside the gates.

use std::time::Duration;

use bulkhead_control::rollout::RolloutStatus;
use bulkhead_proto::pb::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use crate::{DemoError, DemoResult};

/// How long one release may take before the demo gives up on it.
const RELEASE_LIMIT: Duration = Duration::from_secs(60);

/// A Rollout of shop/inventory, seconds per step so the demo sees it all.
fn document(stable: &str, canary: &str) -> String {
    format!(
        "apiVersion: bulkhead.dev/v1
kind: Rollout
metadata: {{name: inventory, namespace: shop}}
spec:
  service: inventory
  stable: \"{stable}\"
  canary: \"{canary}\"
  strategy: canary
  steps: [25, 50]
  interval: 3s
  threshold: 1
  analysis:
    minRequests: 20
    minSuccessRate: 0.99
    maxP99LatencyMs: 250
    compareToStable: {{maxSuccessRateDrop: 0.01}}
"
    )
}

/// One line for a status: the steps, the phase, the last interval.
fn line(status: &RolloutStatus) -> String {
    let bar: Vec<String> = [25u8, 50, 100]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mark = if status.phase.as_str() == "Promoted" || (i as u32) < status.step {
                "■"
            } else if i as u32 == status.step && status.phase.is_terminal() {
                "✗"
            } else if i as u32 == status.step {
                "▶"
            } else {
                "□"
            };
            format!("{mark} {w}%")
        })
        .collect();
    let last = status.intervals.last().map_or(String::new(), |i| {
        format!(
            "  last interval: {} req, success {}, p99 {} ms → {}",
            i.requests,
            i.success_rate
                .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
            i.p99_ms.map_or("-".into(), |p| format!("{p:.1}")),
            i.verdict.as_str()
        )
    });
    format!(
        "   {:<16} {}  canary {:>3}%{last}",
        status.phase.as_str(),
        bar.join(" ── "),
        status.canary_weight
    )
}

/// Applies a rollout from `stable` to `canary` and follows it until it
/// ends; the error names the phase when it is not `expect`.
pub(crate) async fn release(
    admin: &mut AdminClient<Channel>,
    stable: &str,
    canary: &str,
    expect: &str,
) -> DemoResult {
    admin
        .apply(pb::ApplyRequest {
            source: "rollout.yaml".into(),
            yaml: document(stable, canary),
            dry_run: false,
        })
        .await
        .map_err(|s| DemoError::new(format!("demo: apply rollout: {}", s.message())))?;
    let started = tokio::time::Instant::now();
    let mut shown = String::new();
    loop {
        let state = admin
            .get_rollout(pb::RolloutRequest {
                namespace: "shop".into(),
                name: "inventory".into(),
            })
            .await
            .map_err(|s| DemoError::new(format!("demo: rollout status: {}", s.message())))?
            .into_inner();
        if let Ok(status) = serde_json::from_str::<RolloutStatus>(&state.status_json)
            && status.canary == canary
        {
            let now = line(&status);
            if now != shown {
                println!("{now}");
                shown = now;
            }
            if status.phase.is_terminal() {
                println!("   → {}", status.reason);
                return if status.phase.as_str() == expect {
                    Ok(())
                } else {
                    Err(DemoError::new(format!(
                        "demo: the rollout to {canary} ended {}, expected {expect}: {}",
                        status.phase.as_str(),
                        status.reason
                    )))
                };
            }
        }
        if started.elapsed() > RELEASE_LIMIT {
            return Err(DemoError::new(format!(
                "demo: the rollout to {canary} did not finish within {}s (last: {shown})",
                RELEASE_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
