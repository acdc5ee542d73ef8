//! `Admin` service: what operators (`bulkheadctl`) may do — apply, get and
//! delete resources, list endpoints, read per-version stats, follow the
//! mesh event stream (`WatchEvents`, see [`crate::events`]). Callers must
//! present a certificate whose
//! identity is one of the control plane's operators.

use std::pin::Pin;
use std::sync::Arc;

use bulkhead_proto::SpiffeId;
use bulkhead_proto::model::{self, Kind, Resource};
use bulkhead_proto::pb;
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{ControlPlane, now_unix_ms, peer, store_status};
use crate::events::{self, NewEvent, feed};
use crate::keys;
use crate::store::Op;

/// Most resources one apply may change: they are written in one atomic
/// transaction, and etcd refuses transactions of more than 128 operations
/// (its default `--max-txn-ops`).
pub(crate) const MAX_APPLY_CHANGES: usize = 128;

/// `GetStats` window when none is asked for.
const DEFAULT_STATS_WINDOW_MS: u32 = 30_000;
/// Longest `GetStats` window (reports older than `--stats-retention` are
/// gone from the store anyway).
const MAX_STATS_WINDOW_MS: u32 = 3_600_000;

#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    plane: Arc<ControlPlane>,
}

impl AdminService {
    pub(crate) fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }

    /// The operator's identity, or PERMISSION_DENIED.
    fn authorize<T>(&self, request: &Request<T>, action: &'static str) -> Result<SpiffeId, Status> {
        let identity = peer(request)?;
        if self.plane.operators.contains(&identity) {
            tracing::debug!(%identity, action, "operator call");
            Ok(identity)
        } else {
            metrics::counter!("bulkhead_admin_denied_total", "action" => action).increment(1);
            tracing::warn!(%identity, action, "admin call by a non-operator refused");
            Err(Status::permission_denied(format!(
                "{identity} is not an operator of this control plane (see bulkhead-control --operators)"
            )))
        }
    }
}

/// Most type filters one request may carry.
const MAX_TYPE_FILTERS: usize = 32;
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::MeshEvent, Status>> + Send>>;

/// The feed's query from a request, checked.
pub(crate) fn events_query(req: pb::WatchEventsRequest) -> Result<feed::Query, Status> {
    validate_optional_name("namespace", &req.namespace)?;
    if req.types.len() > MAX_TYPE_FILTERS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_TYPE_FILTERS} type filters, got {}",
            req.types.len()
        )));
    }
    if let Some(bad) = req.types.iter().find(|t| {
        t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    }) {
        return Err(Status::invalid_argument(format!(
            "type filter {bad:?}: expected a type such as dev.bulkhead.endpoint.expired or a prefix such as endpoint"
        )));
    }
    if req.after_id < 0 || req.since_unix_ms < 0 {
        return Err(Status::invalid_argument(
            "after_id and since_unix_ms cannot be negative",
        ));
    }
    Ok(feed::Query {
        after_id: req.after_id,
        since_unix_ms: req.since_unix_ms,
        namespace: (!req.namespace.is_empty()).then_some(req.namespace),
        types: req.types,
        follow: req.follow,
    })
}

/// Runs the feed for one consumer; the stream ends with the feed's error
/// as a status (a slow consumer is told why it was cut off).
fn event_stream(
    events: &crate::events::Events,
    store: Arc<dyn crate::store::Store>,
    query: feed::Query,
) -> Result<EventStream, Status> {
    let (rx, done_rx) = feed::spawn(&events.consumers, store, query)
        .map_err(|busy| Status::unavailable(busy.to_string()))?;
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(|d| {
        Ok(pb::MeshEvent {
            id: d.id,
            r#type: d.kind,
            namespace: d.namespace,
            cloudevent_json: d.json,
        })
    });
    let end = futures::stream::once(done_rx).filter_map(|result| async move {
        match result {
            Ok(Err(feed::FeedError::Store(error))) => Some(Err(store_status(error))),
            Ok(Err(feed::FeedError::TooSlow)) => Some(Err(Status::resource_exhausted(
                feed::FeedError::TooSlow.to_string(),
            ))),
            _ => None,
        }
    });
    Ok(Box::pin(events.chain(end)))
}

fn parse_kind(kind: &str) -> Result<Kind, Status> {
    kind.parse::<Kind>().map_err(|_| {
        Status::invalid_argument(format!(
            "unknown kind {kind:?}: expected Service, AllowList, TrafficSplit or Rollout"
        ))
    })
}

fn validate_optional_name(what: &'static str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Ok(());
    }
    bulkhead_proto::identity::validate_name(what, value)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// One `resource.applied` per changed resource when they fit in the
/// transaction beside the changes (`room` operations left); otherwise one
/// for the whole apply, naming the first resources.
fn applied_events(
    results: &[pb::ApplyResult],
    by: &SpiffeId,
    source: &str,
    room: usize,
) -> Vec<NewEvent> {
    let changed: Vec<&pb::ApplyResult> = results
        .iter()
        .filter(|r| r.outcome != "unchanged")
        .collect();
    if changed.len() <= room {
        return changed
            .iter()
            .map(|r| {
                NewEvent::new(
                    events::RESOURCE_APPLIED,
                    &r.namespace,
                    format!("{}/{}/{}", r.kind, r.namespace, r.name),
                    serde_json::json!({
                        "kind": r.kind,
                        "namespace": r.namespace,
                        "name": r.name,
                        "outcome": r.outcome,
                        "by": by.to_string(),
                        "source": source,
                    }),
                )
            })
            .collect();
    }
    let names: Vec<String> = changed
        .iter()
        .take(MAX_APPLY_CHANGES)
        .map(|r| format!("{}/{}/{}", r.kind, r.namespace, r.name))
        .collect();
    vec![NewEvent::new(
        events::RESOURCE_APPLIED,
        "",
        source.to_owned(),
        serde_json::json!({
            "count": changed.len(),
            "resources": names,
            "by": by.to_string(),
            "source": source,
        }),
    )]
}

fn to_pb(res: &Resource) -> pb::Resource {
    pb::Resource {
        kind: res.kind().to_string(),
        namespace: res.namespace().to_owned(),
        name: res.name().to_owned(),
        json: res.to_json(),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let by = self.authorize(&request, "apply")?;
        let req = request.into_inner();
        let source = if req.source.is_empty() {
            "-"
        } else {
            req.source.as_str()
        };
        let resources = model::parse_documents(source, &req.yaml)
            .map_err(|errors| Status::invalid_argument(errors.to_string()))?;
        let mut results = Vec::with_capacity(resources.len());
        let mut ops = Vec::with_capacity(resources.len());
        for res in &resources {
            let key = keys::resource(res.kind(), res.namespace(), res.name());
            let json = res.to_json();
            let existing = self.plane.store.get(&key).await.map_err(store_status)?;
            let outcome = match existing {
                None => "created",
                Some(kv) if kv.value == json.as_bytes() => "unchanged",
                Some(_) => "configured",
            };
            if outcome != "unchanged" {
                ops.push(Op::Put {
                    key,
                    value: json.into_bytes(),
                    lease: None,
                });
            }
            results.push(pb::ApplyResult {
                kind: res.kind().to_string(),
                namespace: res.namespace().to_owned(),
                name: res.name().to_owned(),
                outcome: outcome.to_owned(),
            });
        }
        if ops.len() > MAX_APPLY_CHANGES {
            return Err(Status::invalid_argument(format!(
                "{source}: {} resources would change, at most {MAX_APPLY_CHANGES} may change in one apply (one atomic store transaction); split the file",
                ops.len()
            )));
        }
        let mut revision = 0;
        if !req.dry_run && !ops.is_empty() {
            let room = MAX_APPLY_CHANGES - ops.len();
            let mut events = applied_events(&results, &by, source, room);
            // Only a full-size apply leaves no room: its one event follows.
            let after = if events.len() > room {
                std::mem::take(&mut events)
            } else {
                Vec::new()
            };
            // All documents or none, with the events that say so.
            revision = self
                .plane
                .events
                .txn_with(ops, events)
                .await
                .map_err(store_status)?;
            if !after.is_empty()
                && let Err(error) = self.plane.events.write(after).await
            {
                tracing::warn!(%error, "applied, but the event saying so could not be written");
            }
            for r in &results {
                tracing::info!(kind = %r.kind, namespace = %r.namespace, name = %r.name, outcome = %r.outcome, "applied");
            }
        }
        Ok(Response::new(pb::ApplyResponse { results, revision }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.authorize(&request, "get")?;
        let req = request.into_inner();
        let kind = parse_kind(&req.kind)?;
        validate_optional_name("namespace", &req.namespace)?;
        validate_optional_name("name", &req.name)?;
        let namespace = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
        let stored = if req.name.is_empty() {
            let (kvs, _) = self
                .plane
                .store
                .list(&keys::resources_of(kind, namespace))
                .await
                .map_err(store_status)?;
            kvs
        } else {
            let ns = namespace.unwrap_or("default");
            let key = keys::resource(kind, ns, &req.name);
            match self.plane.store.get(&key).await.map_err(store_status)? {
                Some(kv) => vec![kv],
                None => {
                    return Err(Status::not_found(format!(
                        "{kind} {ns}/{} not found",
                        req.name
                    )));
                }
            }
        };
        let mut resources = Vec::with_capacity(stored.len());
        for kv in stored {
            let json = String::from_utf8(kv.value)
                .map_err(|_| Status::internal(format!("stored {} is not UTF-8", kv.key)))?;
            let res = Resource::from_json(&json)
                .map_err(|e| Status::internal(format!("stored {} does not parse: {e}", kv.key)))?;
            resources.push(to_pb(&res));
        }
        Ok(Response::new(pb::GetResponse { resources }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let by = self.authorize(&request, "delete")?;
        let req = request.into_inner();
        let kind = parse_kind(&req.kind)?;
        let ns = if req.namespace.is_empty() {
            "default"
        } else {
            req.namespace.as_str()
        };
        validate_optional_name("namespace", ns)?;
        validate_optional_name("name", &req.name)?;
        if req.name.is_empty() {
            return Err(Status::invalid_argument("delete needs a resource name"));
        }
        let key = keys::resource(kind, ns, &req.name);
        if self
            .plane
            .store
            .get(&key)
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "{kind} {ns}/{} not found",
                req.name
            )));
        }
        let event = NewEvent::new(
            events::RESOURCE_DELETED,
            ns,
            format!("{kind}/{ns}/{}", req.name),
            serde_json::json!({
                "kind": kind.to_string(),
                "namespace": ns,
                "name": req.name,
                "by": by.to_string(),
            }),
        );
        let revision = self
            .plane
            .events
            .txn_with(vec![Op::Delete { key }], vec![event])
            .await
            .map_err(store_status)?;
        tracing::info!(%kind, namespace = ns, name = %req.name, "deleted");
        Ok(Response::new(pb::DeleteResponse { revision }))
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        self.authorize(&request, "endpoints")?;
        let req = request.into_inner();
        validate_optional_name("namespace", &req.namespace)?;
        validate_optional_name("service", &req.service)?;
        let (kvs, _) = self
            .plane
            .store
            .list(keys::ENDPOINTS)
            .await
            .map_err(store_status)?;
        let mut endpoints = Vec::new();
        for kv in kvs {
            let ep = pb::Endpoint::decode(kv.value.as_slice())
                .map_err(|e| Status::internal(format!("stored {} does not decode: {e}", kv.key)))?;
            if (req.namespace.is_empty() || ep.namespace == req.namespace)
                && (req.service.is_empty() || ep.service == req.service)
                && (req.all || ep.ready.unwrap_or(true))
            {
                endpoints.push(ep);
            }
        }
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints,
            now_unix_ms: now_unix_ms(),
        }))
    }

    async fn get_trust(
        &self,
        request: Request<pb::GetTrustRequest>,
    ) -> Result<Response<pb::TrustStatus>, Status> {
        self.authorize(&request, "trust")?;
        Ok(Response::new(super::trust::status(&self.plane).await?))
    }

    async fn prepare_rotation(
        &self,
        request: Request<pb::PrepareRotationRequest>,
    ) -> Result<Response<pb::TrustStatus>, Status> {
        self.authorize(&request, "rotate")?;
        let status = super::trust::prepare(&self.plane, request.into_inner()).await?;
        Ok(Response::new(status))
    }

    async fn activate_rotation(
        &self,
        request: Request<pb::ActivateRotationRequest>,
    ) -> Result<Response<pb::TrustStatus>, Status> {
        self.authorize(&request, "rotate")?;
        let status = super::trust::activate(&self.plane, request.into_inner()).await?;
        Ok(Response::new(status))
    }

    async fn retire_root(
        &self,
        request: Request<pb::RetireRootRequest>,
    ) -> Result<Response<pb::TrustStatus>, Status> {
        self.authorize(&request, "rotate")?;
        Ok(Response::new(super::trust::retire(&self.plane).await?))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::RolloutRequest>,
    ) -> Result<Response<pb::RolloutState>, Status> {
        self.authorize(&request, "rollout")?;
        let req = request.into_inner();
        let state = super::rollouts::get(&self.plane, &req.namespace, &req.name).await?;
        Ok(Response::new(state))
    }

    async fn act_on_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutState>, Status> {
        let by = self.authorize(&request, "rollout")?;
        let state =
            super::rollouts::act(&self.plane, &by.to_string(), request.into_inner()).await?;
        Ok(Response::new(state))
    }

    async fn get_health(
        &self,
        request: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::Health>, Status> {
        self.authorize(&request, "health")?;
        Ok(Response::new(super::health::health(&self.plane).await?))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.authorize(&request, "events")?;
        let query = events_query(request.into_inner())?;
        Ok(Response::new(event_stream(
            &self.plane.events,
            self.plane.store.clone(),
            query,
        )?))
    }

    async fn get_stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        self.authorize(&request, "stats")?;
        let req = request.into_inner();
        validate_optional_name("namespace", &req.namespace)?;
        validate_optional_name("service", &req.service)?;
        let window_ms = match req.window_ms {
            0 => DEFAULT_STATS_WINDOW_MS,
            n if n > MAX_STATS_WINDOW_MS => {
                return Err(Status::invalid_argument(format!(
                    "StatsRequest.window_ms {n} is over one hour ({MAX_STATS_WINDOW_MS}); ask for a shorter window"
                )));
            }
            n => n,
        };
        // Ends where every replica's flushes are sure to be readable: a
        // window ending now would miss the last second of other replicas.
        let measurements = &self.plane.measurements;
        let to = now_unix_ms() - measurements.settle().as_millis() as i64;
        let from = to - i64::from(window_ms);
        let namespace = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
        let service = (!req.service.is_empty()).then_some(req.service.as_str());
        let services = measurements
            .all(namespace, service, from, to)
            .await
            .map_err(store_status)?;
        let mut versions = Vec::new();
        for ((namespace, service), window) in services {
            for (version, v) in window.versions {
                versions.push(pb::VersionStats {
                    namespace: namespace.clone(),
                    service: service.clone(),
                    version,
                    requests: v.requests,
                    failures: v.failures,
                    latency_counts: v.latency.counts().to_vec(),
                    in_flight: v.in_flight,
                    reporters: u32::try_from(v.reporters.len()).unwrap_or(u32::MAX),
                    mesh_errors: v.mesh_errors,
                    callers: v
                        .callers
                        .into_iter()
                        .map(|(caller, part)| pb::CallerCounts {
                            caller,
                            requests: part.requests,
                            failures: part.failures,
                            mesh_errors: part.mesh_errors,
                            latency_counts: part.latency.counts().to_vec(),
                        })
                        .collect(),
                });
            }
        }
        Ok(Response::new(pb::StatsResponse {
            from_unix_ms: from,
            to_unix_ms: to,
            versions,
        }))
    }
}
