//! The rollout controller's loop, on the leading replica: every tick, for
//! each `Rollout` in the mesh view, read its status, carry out operator
//! commands, judge a due interval from the reported measurements, move the
//! [`machine`] on, and make the service's `TrafficSplit` say what the
//! status says.
//!
//! The status is written before the split: a leader that dies between the
//! two leaves a status its successor reconciles the split to, so no step
//! is repeated or skipped. While a rollout runs it owns the split (an edit
//! or delete is undone at the next tick); once it has ended and its last
//! split is written (`splitReleased` in the status), the split is the
//! operator's again. Both writes are compare-and-swap on the key's
//! store revision: a write based on a stale read fails and is retried from
//! a fresh read at the next tick, so two writers (a stalled old leader and
//! a new one, or an operator's `apply`) cannot flap a split.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::model::{
    Backend, Kind, Metadata, Resource, Rollout, Stickiness, TrafficSplit, TrafficSplitSpec,
};
use tokio::sync::watch;

use super::judge::{self, Interval};
use super::machine::{self, Command, Judged, Moment};
use super::status::{Phase, RolloutStatus};
use crate::api::{ControlPlane, now_unix_ms};
use crate::events::{self, NewEvent};
use crate::keys;
use crate::measure::VersionWindow;
use crate::store::{KeyValue, Op, StoreError};

/// How often the leader looks at every rollout: `abort` takes effect
/// within this (plus a store round trip).
const TICK: Duration = Duration::from_millis(250);

/// An operator's command as queued in the store
/// (`rollout-commands/<ns>/<name>/<id>`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueuedCommand {
    pub id: String,
    pub action: String,
    #[serde(default)]
    pub full: bool,
    pub by: String,
    pub at_unix_ms: i64,
}

pub(crate) struct Controller {
    pub plane: Arc<ControlPlane>,
    pub replica: String,
    pub leading: watch::Receiver<bool>,
}

/// A fingerprint of a rollout's spec: a changed spec starts over.
pub(crate) fn generation(rollout: &Rollout) -> String {
    let json = Resource::Rollout(rollout.clone()).to_json();
    let digest = ring::digest::digest(&ring::digest::SHA256, json.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Controller {
    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !*self.leading.borrow_and_update() {
                continue;
            }
            if let Err(error) = self.once().await {
                tracing::warn!(%error, "rollout controller: store unavailable; trying again");
            }
        }
    }

    async fn once(&self) -> Result<(), StoreError> {
        // A replica that leads before its view is loaded would see no
        // Rollout at all, and clear every status below as an orphan: the
        // rollouts would start over.
        if !self.plane.hub.is_synced() {
            return Ok(());
        }
        let rollouts: Vec<Rollout> = {
            let view = self.plane.hub.read();
            view.resources
                .values()
                .filter_map(|r| match &**r {
                    Resource::Rollout(ro) => Some(ro.clone()),
                    _ => None,
                })
                .collect()
        };
        let store = &self.plane.store;
        let (statuses, _) = store.list(keys::ROLLOUTS).await?;
        let mut statuses: BTreeMap<String, KeyValue> = statuses
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        let (queued, _) = store.list(keys::ROLLOUT_COMMANDS).await?;
        let mut commands: BTreeMap<String, Vec<KeyValue>> = BTreeMap::new();
        for kv in queued {
            let owner = kv
                .key
                .rsplit_once('/')
                .map(|(owner, _)| owner.to_owned())
                .unwrap_or_default();
            commands.entry(owner).or_default().push(kv);
        }
        for rollout in &rollouts {
            let (ns, name) = (
                rollout.metadata.namespace.as_str(),
                rollout.metadata.name.as_str(),
            );
            let status_key = keys::rollout_status(ns, name);
            let stored = statuses.remove(&status_key);
            let queued = commands
                .remove(keys::rollout_commands(ns, name).trim_end_matches('/'))
                .unwrap_or_default();
            if let Err(error) = self.drive(rollout, &status_key, stored, queued).await {
                tracing::warn!(namespace = ns, rollout = name, %error, "rollout: store write failed; trying again");
            }
        }
        // Statuses and commands of rollouts that were deleted.
        for key in statuses.into_keys() {
            store.delete(&key).await?;
        }
        for kv in commands.into_values().flatten() {
            store.delete(&kv.key).await?;
        }
        Ok(())
    }

    async fn drive(
        &self,
        rollout: &Rollout,
        status_key: &str,
        stored: Option<KeyValue>,
        queued: Vec<KeyValue>,
    ) -> Result<(), StoreError> {
        let spec = &rollout.spec;
        let (ns, name) = (
            rollout.metadata.namespace.as_str(),
            rollout.metadata.name.as_str(),
        );
        let generation = generation(rollout);
        let at = Moment {
            now_unix_ms: now_unix_ms(),
            replica: &self.replica,
        };
        let expected_revision = stored.as_ref().map_or(0, |kv| kv.mod_revision);
        let previous: Option<RolloutStatus> = stored.as_ref().and_then(|kv| {
            serde_json::from_slice(&kv.value)
                .map_err(|error| tracing::warn!(key = %kv.key, %error, "unreadable rollout status; starting over"))
                .ok()
        });
        let mut status = match previous.clone() {
            Some(status) if status.generation == generation => status,
            Some(_) => {
                tracing::info!(
                    namespace = ns,
                    rollout = name,
                    "rollout spec changed; starting over"
                );
                machine::start(spec, &generation, at)
            }
            None => machine::start(spec, &generation, at),
        };
        let transitions_before = previous
            .as_ref()
            .filter(|p| p.generation == generation)
            .map_or(0, |p| p.transitions.len());
        let mut done_commands = Vec::new();
        for kv in queued {
            done_commands.push(kv.key.clone());
            let Ok(queued) = serde_json::from_slice::<QueuedCommand>(&kv.value) else {
                tracing::warn!(key = %kv.key, "ignoring an unreadable rollout command");
                continue;
            };
            let Some(cmd) = Command::parse(&queued.action, queued.full) else {
                continue;
            };
            let outcome = machine::command(&mut status, spec, &generation, cmd, &queued.by, at);
            machine::record_action(&mut status, &queued.id, cmd, &queued.by, at, &outcome);
            let result = if outcome.is_ok() { "done" } else { "refused" };
            metrics::counter!("bulkhead_rollout_actions_total", "namespace" => ns.to_owned(), "rollout" => name.to_owned(), "action" => queued.action.clone(), "result" => result).increment(1);
            tracing::info!(namespace = ns, rollout = name, action = cmd.as_str(), by = %queued.by, outcome = ?outcome, phase = status.phase.as_str(), step = status.step, canary_weight = status.canary_weight, "rollout action");
        }
        let judged = match machine::due_window(
            &status,
            spec,
            at.now_unix_ms,
            self.plane.measurements.settle(),
        ) {
            Some((from, to)) => Some(self.measure(rollout, &status, from, to).await),
            None => None,
        };
        if let Some(judged) = &judged {
            log_interval(ns, name, judged);
        }
        machine::tick(&mut status, spec, judged, at);
        if status.split_released && previous.as_ref() == Some(&status) {
            // Over, and its last split written: the split is the
            // operator's to change or delete now.
            for key in done_commands {
                self.plane.store.delete(&key).await?;
            }
            return Ok(());
        }
        if previous.as_ref() != Some(&status) {
            let json = serde_json::to_vec(&status)
                .map_err(|e| StoreError::Other(format!("rollout status: {e}")))?;
            let events = status
                .transitions
                .iter()
                .skip(transitions_before)
                .map(|t| transition_event(ns, name, t))
                .collect::<Vec<_>>();
            let mut ops = vec![Op::Put {
                key: status_key.to_owned(),
                value: json,
                lease: None,
            }];
            for event in events {
                ops.push(self.plane.events.op(event).await?);
            }
            // The status and the events of its transitions: both or neither.
            let written = self
                .plane
                .store
                .txn_if(status_key, expected_revision, ops)
                .await;
            if let Err(error) = &written {
                self.plane.events.lease_failed(error);
            }
            if !written? {
                tracing::debug!(
                    namespace = ns,
                    rollout = name,
                    "rollout status changed meanwhile; reading again"
                );
                return Ok(());
            }
            for t in status.transitions.iter().skip(transitions_before) {
                metrics::counter!("bulkhead_rollout_transitions_total", "namespace" => ns.to_owned(), "rollout" => name.to_owned(), "phase" => t.phase.as_str()).increment(1);
                tracing::info!(namespace = ns, rollout = name, phase = t.phase.as_str(), step = t.step, canary_weight = t.canary_weight, reason = %t.reason, "rollout transition");
            }
            metrics::gauge!("bulkhead_rollout_canary_weight", "namespace" => ns.to_owned(), "rollout" => name.to_owned()).set(f64::from(status.canary_weight));
        }
        for key in done_commands {
            self.plane.store.delete(&key).await?;
        }
        let in_line = self.reconcile_split(rollout, &status).await?;
        if in_line && status.phase.is_terminal() {
            self.release_split(status_key, status).await?;
        }
        Ok(())
    }

    /// Notes that an ended rollout's last split is written: from now on
    /// the split is the operator's (a compare-and-swap again; a lost race
    /// is retried at the next tick).
    async fn release_split(
        &self,
        status_key: &str,
        mut status: RolloutStatus,
    ) -> Result<(), StoreError> {
        let Some(stored) = self.plane.store.get(status_key).await? else {
            return Ok(());
        };
        status.split_released = true;
        let json = serde_json::to_vec(&status)
            .map_err(|e| StoreError::Other(format!("rollout status: {e}")))?;
        self.plane
            .store
            .put_if(status_key, stored.mod_revision, json)
            .await?;
        Ok(())
    }

    /// Measures `[from, to)` for the canary (and stable), or says why the
    /// measurements cannot be trusted.
    async fn measure(
        &self,
        rollout: &Rollout,
        status: &RolloutStatus,
        from: i64,
        to: i64,
    ) -> Judged {
        let spec = &rollout.spec;
        let ns = rollout.metadata.namespace.as_str();
        let window = match self
            .plane
            .measurements
            .window(ns, &spec.service, from, to)
            .await
        {
            Ok(window) => window,
            Err(error) => return Judged::Incomplete(format!("measurements unreadable: {error}")),
        };
        let empty = VersionWindow::default();
        let canary = window.versions.get(&spec.canary).unwrap_or(&empty);
        let stable = window.versions.get(&spec.stable).unwrap_or(&empty);
        let relative = spec
            .analysis
            .as_ref()
            .is_some_and(|a| a.compare_to_stable.is_some());
        let mut versions = vec![(&spec.canary, canary)];
        if relative {
            versions.push((&spec.stable, stable));
        }
        if let Some(why) = self.missing_reports(ns, &spec.service, &versions, from, to) {
            return Judged::Incomplete(why);
        }
        Judged::Complete(judge::judge(
            spec.analysis.as_ref(),
            Interval {
                start_unix_ms: from,
                end_unix_ms: to,
                step: status.step,
                canary_weight: status.canary_weight,
                canary,
                stable,
            },
        ))
    }

    /// Endpoints of these versions, registered through `[from, to)`, whose
    /// reports do not cover it: a sidecar that stopped reporting, or
    /// reports lost with a control-plane replica. Allows a report and a
    /// half of slack (reports arrive every interval, not at its edges).
    fn missing_reports(
        &self,
        ns: &str,
        service: &str,
        versions: &[(&String, &VersionWindow)],
        from: i64,
        to: i64,
    ) -> Option<String> {
        let every = self.plane.measurements.report_interval().as_millis() as i64;
        let view = self.plane.hub.read();
        let prefix = keys::service_endpoints(ns, service);
        let mut missing = Vec::new();
        let mut expected = 0;
        for (key, ep) in view.endpoints.range(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            let Some((_, window)) = versions.iter().find(|(v, _)| **v == ep.version) else {
                continue;
            };
            let since = from.max(ep.registered_unix_ms);
            let needed = to - since;
            if needed <= 2 * every {
                continue;
            }
            expected += 1;
            let reporter = key.rsplit('/').next().unwrap_or_default();
            let covered = window.reporters.get(reporter).copied().unwrap_or(0) as i64;
            if covered + every * 3 / 2 < needed {
                missing.push(format!(
                    "{} {reporter} ({} of {} s)",
                    ep.version,
                    covered / 1000,
                    needed / 1000
                ));
            }
        }
        if missing.is_empty() {
            return None;
        }
        missing.truncate(5);
        Some(format!(
            "{} of {expected} endpoints did not report through the interval: {}",
            missing.len(),
            missing.join(", ")
        ))
    }

    /// Makes the service's TrafficSplit carry the status's weights;
    /// `true` when it does (it did already, or the write went through).
    async fn reconcile_split(
        &self,
        rollout: &Rollout,
        status: &RolloutStatus,
    ) -> Result<bool, StoreError> {
        let spec = &rollout.spec;
        let ns = rollout.metadata.namespace.as_str();
        // The split that already governs the service, else one named after it.
        let existing_name = {
            let view = self.plane.hub.read();
            let prefix = keys::resources_of(Kind::TrafficSplit, Some(ns));
            let mut found: Option<String> = None;
            for (_, res) in view
                .resources
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
            {
                if let Resource::TrafficSplit(ts) = &**res
                    && ts.spec.service == spec.service
                    && (found.is_none() || ts.metadata.name.as_str() == spec.service)
                {
                    found = Some(ts.metadata.name.as_str().to_owned());
                }
            }
            found
        };
        let name = existing_name.unwrap_or_else(|| spec.service.clone());
        let key = keys::resource(Kind::TrafficSplit, ns, &name);
        let current = self.plane.store.get(&key).await?;
        let current_split = current.as_ref().and_then(|kv| {
            match Resource::from_json(std::str::from_utf8(&kv.value).ok()?).ok()? {
                Resource::TrafficSplit(ts) => Some(ts),
                _ => None,
            }
        });
        let desired = desired_split(rollout, status, current_split.as_ref(), &name);
        if current_split.as_ref().map(|ts| &ts.spec) == Some(&desired.spec) {
            return Ok(true);
        }
        let json = Resource::TrafficSplit(desired.clone()).to_json();
        let expected = current.as_ref().map_or(0, |kv| kv.mod_revision);
        if self
            .plane
            .store
            .put_if(&key, expected, json.into_bytes())
            .await?
        {
            let weights: Vec<String> = desired
                .spec
                .backends
                .iter()
                .map(|b| format!("{}={}", b.version, b.weight))
                .collect();
            tracing::info!(namespace = ns, rollout = rollout.metadata.name.as_str(), split = %name, weights = %weights.join(" "), "rollout: traffic split written");
            Ok(true)
        } else {
            tracing::debug!(namespace = ns, split = %name, "traffic split changed meanwhile; reading again");
            Ok(false)
        }
    }
}

/// The split a status asks for: stable and canary weighted, header routes
/// of an existing split kept (with their versions at weight 0 when the
/// rollout does not weigh them).
fn desired_split(
    rollout: &Rollout,
    status: &RolloutStatus,
    current: Option<&TrafficSplit>,
    name: &str,
) -> TrafficSplit {
    let spec = &rollout.spec;
    let canary = u32::from(status.canary_weight.min(100));
    let mut backends = if status.phase == Phase::Promoted {
        vec![
            Backend {
                version: spec.canary.clone(),
                weight: 100,
            },
            Backend {
                version: spec.stable.clone(),
                weight: 0,
            },
        ]
    } else {
        vec![
            Backend {
                version: spec.stable.clone(),
                weight: 100 - canary,
            },
            Backend {
                version: spec.canary.clone(),
                weight: canary,
            },
        ]
    };
    let matches = current.and_then(|ts| ts.spec.matches.clone());
    for route in matches.iter().flatten() {
        if !backends.iter().any(|b| b.version == route.version) {
            backends.push(Backend {
                version: route.version.clone(),
                weight: 0,
            });
        }
    }
    let stickiness = if status.phase.is_terminal() {
        Stickiness::None
    } else {
        spec.stickiness.clone()
    };
    TrafficSplit {
        metadata: Metadata::new(rollout.metadata.namespace.as_str(), name),
        spec: TrafficSplitSpec {
            service: spec.service.clone(),
            backends,
            matches,
            stickiness,
        },
    }
}

/// `dev.bulkhead.rollout.step`: one transition of a rollout.
fn transition_event(ns: &str, name: &str, t: &super::status::Transition) -> NewEvent {
    NewEvent::new(
        events::ROLLOUT_STEP,
        ns,
        format!("Rollout/{ns}/{name}"),
        serde_json::json!({
            "namespace": ns,
            "rollout": name,
            "phase": t.phase.as_str(),
            "step": t.step,
            "canaryWeight": t.canary_weight,
            "reason": t.reason,
            "replica": t.replica,
        }),
    )
}

fn log_interval(ns: &str, name: &str, judged: &Judged) {
    match judged {
        Judged::Complete(i) => {
            metrics::counter!("bulkhead_rollout_intervals_total", "namespace" => ns.to_owned(), "rollout" => name.to_owned(), "verdict" => i.verdict.as_str()).increment(1);
            tracing::info!(
                namespace = ns, rollout = name, step = i.step, canary_weight = i.canary_weight,
                requests = i.requests, failures = i.failures, success_rate = ?i.success_rate, p99_ms = ?i.p99_ms,
                stable = ?i.stable, gates = ?i.gates, verdict = i.verdict.as_str(), reason = %i.reason,
                "rollout interval judged"
            );
        }
        Judged::Incomplete(why) => {
            metrics::counter!("bulkhead_rollout_intervals_total", "namespace" => ns.to_owned(), "rollout" => name.to_owned(), "verdict" => "incomplete").increment(1);
            tracing::warn!(namespace = ns, rollout = name, reason = %why, "rollout interval not counted: measurements incomplete");
        }
    }
}
