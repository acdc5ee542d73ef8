//! The dashboard's JSON API, built from the control plane's admin API as
//! the operator: `/api/overview` (every service with its totals, the
//! edges between them and the recently denied ones), `/api/service` (one
//! service in detail, its endpoints' ejections from the event stream) and
//! the rollout actions. Errors are classified once here into an HTTP status
//! the page shows: an unreachable control plane is a 502 with a message,
//! never a blank page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::model::Resource;
use bulkhead_proto::pb;
use bulkhead_proto::pb::admin_client::AdminClient;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::history::{History, SAMPLE_EVERY};
use super::live::Live;
use crate::golden;
use crate::rollout::view;

/// How long one admin call may take before the control plane counts as
/// unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The window the live figures average over.
const WINDOW: Duration = Duration::from_secs(10);
/// Rollouts whose status the overview reads at most.
const MAX_ROLLOUTS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub(super) enum ApiError {
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    #[error("control plane refused the operator's credentials: {0}")]
    Denied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("control plane error: {0}")]
    Upstream(String),
}

impl ApiError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ApiError::Unreachable(_) | ApiError::Denied(_) | ApiError::Upstream(_) => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Refused(_) => StatusCode::CONFLICT,
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                ApiError::Unreachable(message)
            }
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                ApiError::Denied(message)
            }
            tonic::Code::NotFound => ApiError::NotFound(message),
            tonic::Code::InvalidArgument => ApiError::BadRequest(message),
            tonic::Code::FailedPrecondition => ApiError::Refused(message),
            _ => ApiError::Upstream(message),
        }
    }
}

/// One admin call, bounded in time.
async fn call<T>(
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => Ok(r?.into_inner()),
        Err(_) => Err(ApiError::Unreachable(format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

pub(super) struct Api {
    pub(super) admin: AdminClient<Channel>,
    pub(super) history: Arc<History>,
    /// The relayed event stream and what it tells (denials, ejections).
    pub(super) live: Arc<Live>,
    /// The mesh's trust domain, for callers typed as `ns/sa`.
    pub(super) trust_domain: String,
}

fn window_ms(window: Duration) -> u32 {
    u32::try_from(window.as_millis()).unwrap_or(u32::MAX)
}

impl Api {
    pub(super) fn new(admin: AdminClient<Channel>) -> Self {
        Self {
            admin,
            history: Arc::default(),
            live: Arc::default(),
            trust_domain: bulkhead_proto::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
        }
    }

    pub(super) async fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Resource>, ApiError> {
        let resp = call(self.admin.clone().get(pb::GetRequest {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }))
        .await?;
        // One unreadable resource should not hide the others.
        Ok(resp
            .resources
            .iter()
            .filter_map(|r| Resource::try_from(r).ok())
            .collect())
    }

    async fn stats(
        &self,
        namespace: &str,
        service: &str,
        window: Duration,
    ) -> Result<pb::StatsResponse, ApiError> {
        call(self.admin.clone().get_stats(pb::StatsRequest {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            window_ms: window_ms(window),
        }))
        .await
    }

    async fn endpoints(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<Vec<pb::Endpoint>, ApiError> {
        let resp = call(self.admin.clone().list_endpoints(pb::ListEndpointsRequest {
            service: service.to_owned(),
            namespace: namespace.to_owned(),
            all: true,
        }))
        .await?;
        Ok(resp.endpoints)
    }

    async fn rollout(&self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let state = call(self.admin.clone().get_rollout(pb::RolloutRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }))
        .await?;
        rollout_json(&state)
    }

    /// Takes one sample of every version's figures for the charts.
    pub(super) async fn sample(&self) -> Result<(), ApiError> {
        let stats = self.stats("", "", SAMPLE_EVERY).await?;
        self.history
            .record(stats.to_unix_ms, &golden::version_rows(&stats));
        Ok(())
    }

    /// Every service (declared, registered or seen in traffic) with its
    /// totals, endpoints and rollout, and the edges between them.
    pub(super) async fn overview(&self) -> Result<Value, ApiError> {
        let (services, stats, endpoints, rollouts) = tokio::try_join!(
            self.get("Service", "", ""),
            self.stats("", "", WINDOW),
            self.endpoints("", ""),
            self.get("Rollout", "", ""),
        )?;
        let mut rows: BTreeMap<(String, String), Value> = BTreeMap::new();
        for s in &services {
            entry(&mut rows, s.namespace(), s.name())["declared"] = json!(true);
        }
        for e in &endpoints {
            let row = entry(&mut rows, &e.namespace, &e.service);
            row["endpoints"] = json!(row["endpoints"].as_u64().unwrap_or(0) + 1);
            if e.ready.unwrap_or(true) {
                row["ready"] = json!(row["ready"].as_u64().unwrap_or(0) + 1);
            }
        }
        let merged = golden::by_service(&stats);
        for t in golden::version_rows(&merged) {
            let row = entry(&mut rows, &t.namespace, &t.service);
            row["rps"] = json!(t.rps);
            row["successRate"] = json!(t.success_rate);
            row["p99Ms"] = json!(t.p99_ms);
            row["requests"] = json!(t.requests);
        }
        for v in golden::version_rows(&stats) {
            let row = entry(&mut rows, &v.namespace, &v.service);
            if let Some(list) = row["versions"].as_array_mut() {
                list.push(json!(v.version));
            }
        }
        for e in &endpoints {
            let row = entry(&mut rows, &e.namespace, &e.service);
            if let Some(list) = row["versions"].as_array_mut()
                && !list.iter().any(|v| v == &json!(e.version))
            {
                list.push(json!(e.version));
            }
        }
        let wanted: Vec<(String, String, String)> = rollouts
            .iter()
            .filter_map(|r| match r {
                Resource::Rollout(r) => Some((
                    r.metadata.namespace.clone(),
                    r.metadata.name.clone(),
                    r.spec.service.clone(),
                )),
                _ => None,
            })
            .take(MAX_ROLLOUTS)
            .collect();
        let states =
            futures::future::join_all(wanted.iter().map(|(ns, name, _)| self.rollout(ns, name)))
                .await;
        for ((ns, _, service), state) in wanted.iter().zip(states) {
            let Ok(state) = state else { continue };
            entry(&mut rows, ns, service)["rollout"] = json!({
                "name": state["name"],
                "phase": state["status"]["phase"],
                "step": state["status"]["step"],
                "canaryWeight": state["status"]["canaryWeight"],
            });
        }
        let edges: Vec<Value> = golden::edge_rows(&merged, |_| true)
            .into_iter()
            .map(|e| {
                json!({"from": e.from, "to": format!("{}/{}", e.namespace, e.service),
                       "rps": e.rps, "successRate": e.success_rate, "p99Ms": e.p99_ms,
                       "requests": e.requests, "failures": e.failures})
            })
            .collect();
        Ok(json!({
            "windowMs": window_ms(WINDOW),
            "services": rows.into_values().collect::<Vec<_>>(),
            "edges": edges,
            "denied": self.live.denied_edges(),
        }))
    }

    /// One service: its resource, versions with figures and history,
    /// endpoints, TrafficSplits, rollouts and callers.
    pub(super) async fn service(&self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let (resource, stats, endpoints, splits, rollouts) = tokio::try_join!(
            self.get("Service", namespace, name),
            self.stats(namespace, name, WINDOW),
            self.endpoints(namespace, name),
            self.get("TrafficSplit", namespace, ""),
            self.get("Rollout", namespace, ""),
        )?;
        let resource = resource.first().map(resource_json);
        if resource.is_none() && endpoints.is_empty() && stats.versions.is_empty() {
            return Err(ApiError::NotFound(format!(
                "service {namespace}/{name}: not declared, no endpoints, no traffic"
            )));
        }
        let splits: Vec<Value> = splits
            .iter()
            .filter(|r| matches!(r, Resource::TrafficSplit(t) if t.spec.service == name))
            .map(resource_json)
            .collect();
        let mut states = Vec::new();
        for r in &rollouts {
            if let Resource::Rollout(r) = r
                && r.spec.service == name
            {
                states.push(self.rollout(namespace, &r.metadata.name).await?);
            }
        }
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|e| {
                let locality = e.locality.clone().unwrap_or_default();
                json!({"version": e.version, "address": e.address, "inboundPort": e.inbound_port,
                       "ports": e.ports.iter().map(|p| json!({"port": p.port, "protocol": p.protocol})).collect::<Vec<_>>(),
                       "node": locality.node, "zone": locality.zone, "region": locality.region,
                       "ready": e.ready.unwrap_or(true), "identity": e.identity,
                       "ejectedBy": self.live.ejected(&e.address, e.inbound_port),
                       "registeredUnixMs": e.registered_unix_ms})
            })
            .collect();
        Ok(json!({
            "namespace": namespace,
            "name": name,
            "windowMs": window_ms(WINDOW),
            "resource": resource,
            "versions": golden::version_rows(&stats),
            "callers": golden::edge_rows(&stats, |_| true),
            "endpoints": endpoints,
            "trafficSplits": splits,
            "rollouts": states,
            "history": self.history.of(namespace, name),
            "sampleEveryMs": window_ms(SAMPLE_EVERY),
        }))
    }

    /// promote, pause, resume or abort a rollout, as the operator.
    pub(super) async fn act(&self, action: &RolloutAction) -> Result<Value, ApiError> {
        if !matches!(
            action.action.as_str(),
            "promote" | "pause" | "resume" | "abort"
        ) {
            return Err(ApiError::BadRequest(format!(
                "action {:?}: expected promote, pause, resume or abort",
                action.action
            )));
        }
        check_name("namespace", &action.namespace)?;
        check_name("name", &action.name)?;
        let state = call(self.admin.clone().act_on_rollout(pb::RolloutActionRequest {
            namespace: action.namespace.clone(),
            name: action.name.clone(),
            action: action.action.clone(),
            full: false,
        }))
        .await?;
        rollout_json(&state)
    }
}

/// What the page posts to `/api/rollout-action`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RolloutAction {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) action: String,
}

/// Namespaces and names are DNS labels: anything else is refused before
/// it reaches the control plane.
pub(super) fn check_name(what: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what}: expected a DNS name (a-z, 0-9, '-', '.')"
        )))
    }
}

/// The overview's row for a service, made on first sight.
fn entry<'a>(
    rows: &'a mut BTreeMap<(String, String), Value>,
    ns: &str,
    name: &str,
) -> &'a mut Value {
    rows.entry((ns.to_owned(), name.to_owned()))
        .or_insert_with(|| {
            json!({"namespace": ns, "name": name, "declared": false,
                   "endpoints": 0, "ready": 0, "versions": [], "rollout": null,
                   "rps": 0.0, "successRate": null, "p99Ms": null, "requests": 0})
        })
}

fn resource_json(r: &Resource) -> Value {
    serde_json::from_str(&r.to_json()).unwrap_or(Value::Null)
}

fn rollout_json(state: &pb::RolloutState) -> Result<Value, ApiError> {
    let (rollout, status) = view::decode(state).map_err(ApiError::Upstream)?;
    Ok(json!({
        "namespace": rollout.metadata.namespace,
        "name": rollout.metadata.name,
        "spec": resource_json(&Resource::Rollout(rollout.clone()))["spec"],
        "steps": view::step_labels(&rollout),
        "status": status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses() {
        let cases = [
            (tonic::Status::unavailable("x"), StatusCode::BAD_GATEWAY),
            (
                tonic::Status::permission_denied("x"),
                StatusCode::BAD_GATEWAY,
            ),
            (tonic::Status::not_found("x"), StatusCode::NOT_FOUND),
            (
                tonic::Status::invalid_argument("x"),
                StatusCode::BAD_REQUEST,
            ),
            (
                tonic::Status::failed_precondition("x"),
                StatusCode::CONFLICT,
            ),
            (tonic::Status::internal("x"), StatusCode::BAD_GATEWAY),
        ];
        for (status, want) in cases {
            assert_eq!(ApiError::from(status.clone()).status(), want, "{status:?}");
        }
        assert!(
            ApiError::from(tonic::Status::unavailable("connection refused"))
                .to_string()
                .starts_with("control plane unreachable")
        );
    }

    #[test]
    fn names_are_dns_names() {
        assert!(check_name("name", "inventory").is_ok());
        assert!(check_name("name", "shop.v2-a").is_ok());
        for bad in ["", "Inventory", "a/b", "<img>", "a b", &"a".repeat(254)] {
            assert!(check_name("name", bad).is_err(), "{bad}");
        }
    }
}
