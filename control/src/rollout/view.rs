//! A rollout as operators see it, from the admin API's `RolloutState`:
//! the resource and its status decoded, and its plan as step labels
//! (`25%`, `pause`, ..., `100%`). Shared by `bulkheadctl rollout status`
//! and the dashboard.

use bulkhead_proto::model::{Resource, Rollout, Step, Strategy};
use bulkhead_proto::pb;

use super::RolloutStatus;

/// The Rollout and its status (`None` before the controller acted on it);
/// the error says what the control plane sent wrong.
pub fn decode(state: &pb::RolloutState) -> Result<(Rollout, Option<RolloutStatus>), String> {
    let resource = state
        .rollout
        .as_ref()
        .ok_or_else(|| "control plane sent no rollout".to_owned())?;
    let rollout = match Resource::try_from(resource) {
        Ok(Resource::Rollout(r)) => r,
        Ok(other) => {
            return Err(format!(
                "control plane sent a {} for a rollout",
                other.kind()
            ));
        }
        Err(e) => return Err(format!("control plane sent a bad rollout: {e}")),
    };
    if state.status_json.is_empty() {
        return Ok((rollout, None));
    }
    let status = serde_json::from_str(&state.status_json)
        .map_err(|e| format!("control plane sent a bad rollout status: {e}"))?;
    Ok((rollout, Some(status)))
}

/// The steps as labels, the last one `100%` (promotion): index `i` is
/// the status's `step == i`.
pub fn step_labels(rollout: &Rollout) -> Vec<String> {
    let mut plan: Vec<String> = match rollout.spec.strategy {
        Strategy::BlueGreen => vec!["analyse pinned".into()],
        Strategy::Canary => rollout
            .spec
            .plan()
            .iter()
            .map(|s| match s {
                Step::Weight(w) => format!("{w}%"),
                Step::Pause(None) => "pause".into(),
                Step::Pause(Some(d)) => format!("pause {d}"),
            })
            .collect(),
    };
    plan.push("100%".into());
    plan
}
