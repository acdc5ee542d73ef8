//! `GetRollout` and `ActOnRollout`: the operator's view of a rollout and
//! the commands that steer it. Any replica answers; a command is queued in
//! the store for the replica that leads rollouts, and the call waits
//! (bounded) until that replica has carried it out or refused it.

use std::time::Duration;

use bulkhead_proto::model::{Kind, Resource};
use bulkhead_proto::pb;
use tonic::Status;

use super::{ControlPlane, store_status};
use crate::keys;
use crate::rollout::RolloutStatus;
use crate::rollout::controller::QueuedCommand;
use crate::rollout::machine::Command;

/// How long a command waits for the leader to carry it out.
const ACTION_WAIT: Duration = Duration::from_secs(5);
const ACTION_POLL: Duration = Duration::from_millis(100);

fn names(namespace: &str, name: &str) -> Result<String, Status> {
    let ns = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };
    for (what, value) in [("namespace", ns), ("name", name)] {
        bulkhead_proto::identity::validate_name(what, value)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    Ok(ns.to_owned())
}

/// The rollout and its stored status.
pub(crate) async fn get(
    plane: &ControlPlane,
    namespace: &str,
    name: &str,
) -> Result<pb::RolloutState, Status> {
    let ns = names(namespace, name)?;
    let key = keys::resource(Kind::Rollout, &ns, name);
    let Some(kv) = plane.store.get(&key).await.map_err(store_status)? else {
        return Err(Status::not_found(format!(
            "rollout {ns}/{name} not found (bulkheadctl get rollouts -n {ns} lists them)"
        )));
    };
    let json = String::from_utf8(kv.value)
        .map_err(|_| Status::internal(format!("stored {key} is not UTF-8")))?;
    let resource = Resource::from_json(&json)
        .map_err(|e| Status::internal(format!("stored {key} does not parse: {e}")))?;
    let status = plane
        .store
        .get(&keys::rollout_status(&ns, name))
        .await
        .map_err(store_status)?;
    let generation = match &resource {
        Resource::Rollout(r) => crate::rollout::controller::generation(r),
        _ => String::new(),
    };
    // A status of an earlier spec is not this rollout's.
    let (status_json, revision) = match status {
        Some(kv)
            if serde_json::from_slice::<RolloutStatus>(&kv.value)
                .is_ok_and(|s| s.generation == generation) =>
        {
            (
                String::from_utf8(kv.value).unwrap_or_default(),
                kv.mod_revision,
            )
        }
        _ => (String::new(), 0),
    };
    Ok(pb::RolloutState {
        rollout: Some(pb::Resource {
            kind: Kind::Rollout.to_string(),
            namespace: ns,
            name: name.to_owned(),
            json,
        }),
        status_json,
        revision,
    })
}

/// Queues a command for the leader and waits until it is carried out.
pub(crate) async fn act(
    plane: &ControlPlane,
    by: &str,
    req: pb::RolloutActionRequest,
) -> Result<pb::RolloutState, Status> {
    let Some(cmd) = Command::parse(&req.action, req.full) else {
        return Err(Status::invalid_argument(format!(
            "unknown rollout action {:?}: expected promote, pause, resume, abort or retry",
            req.action
        )));
    };
    if req.full && req.action != "promote" {
        return Err(Status::invalid_argument("--full applies to promote only"));
    }
    // Exists? (NOT_FOUND names it.)
    let ns = names(&req.namespace, &req.name)?;
    get(plane, &ns, &req.name).await?;
    let id = format!("{:016x}", rand::random::<u64>());
    let queued = QueuedCommand {
        id: id.clone(),
        action: req.action.clone(),
        full: req.full,
        by: by.to_owned(),
        at_unix_ms: super::now_unix_ms(),
    };
    let key = format!("{}{id}", keys::rollout_commands(&ns, &req.name));
    let value = serde_json::to_vec(&queued).map_err(|e| Status::internal(e.to_string()))?;
    plane
        .store
        .create(&key, value, None)
        .await
        .map_err(store_status)?;
    tracing::info!(namespace = %ns, rollout = %req.name, action = cmd.as_str(), %by, "rollout command queued");
    let deadline = tokio::time::Instant::now() + ACTION_WAIT;
    loop {
        let state = get(plane, &ns, &req.name).await?;
        let status: Option<RolloutStatus> = serde_json::from_str(&state.status_json).ok();
        if let Some(action) = status.and_then(|s| s.last_action).filter(|a| a.id == id) {
            return match action.outcome.strip_prefix("refused: ") {
                Some(why) => Err(Status::failed_precondition(format!(
                    "{} {ns}/{}: {why}",
                    cmd.as_str(),
                    req.name
                ))),
                None => Ok(state),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Status::unavailable(format!(
                "no control-plane replica carried out `{}` within {}s (is one leading rollouts? see bulkhead_rollout_leader); \
                 the command stays queued and is carried out when one does",
                cmd.as_str(),
                ACTION_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(ACTION_POLL).await;
    }
}
