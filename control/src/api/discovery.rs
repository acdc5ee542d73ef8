//! `Discovery` service: endpoint registration on store leases, the
//! `Watch` stream that pushes each sidecar what concerns it, and the
//! sidecars' traffic reports ([`report`]) and the events they saw
//! ([`publish`]).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use bulkhead_proto::SpiffeId;
use bulkhead_proto::model::{Endpoint, Kind, Resource};
use bulkhead_proto::pb::{self, change::Item, change::Op};
use futures::Stream;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{ControlPlane, now_unix_ms, peer, store_status};
use crate::events::{self, NewEvent};
use crate::hub::{Change, Delta, View};
use crate::keys;
use crate::store::Op as StoreOp;
use crate::trust::leaves::LeafNote;

mod publish;
mod report;

/// How long a Watch or lookup waits for this replica's view to hold the
/// writes the store had made when it arrived.
const CATCH_UP_BOUND: std::time::Duration = std::time::Duration::from_secs(2);
/// Updates queued per subscriber before its stream applies backpressure.
const SUBSCRIBER_QUEUE: usize = 16;
/// Most services one Watch may name.
const MAX_WATCHED_SERVICES: usize = 1024;
/// Most services one LookupAddress answer names.
const MAX_SERVICES_AT_ADDRESS: usize = 16;

#[derive(Debug, Clone)]
pub(crate) struct DiscoveryService {
    plane: Arc<ControlPlane>,
}

impl DiscoveryService {
    pub(crate) fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }

    /// The Service resource for `ns/name`, checked to admit `identity` as a
    /// registrant.
    async fn authorize_registrant(
        &self,
        identity: &SpiffeId,
        namespace: &str,
        service: &str,
    ) -> Result<(), Status> {
        if namespace != identity.namespace() {
            return Err(Status::permission_denied(format!(
                "{identity} may not register endpoints in namespace {namespace:?}: only in its own namespace {:?}",
                identity.namespace()
            )));
        }
        let key = keys::resource(Kind::Service, namespace, service);
        let Some(kv) = self.plane.store.get(&key).await.map_err(store_status)? else {
            return Err(Status::failed_precondition(format!(
                "no Service {namespace}/{service}: apply a Service resource before registering endpoints for it"
            )));
        };
        let json = std::str::from_utf8(&kv.value).map_err(|_| {
            Status::internal(format!("stored Service {namespace}/{service} is not UTF-8"))
        })?;
        let Ok(Resource::Service(svc)) = Resource::from_json(json) else {
            return Err(Status::internal(format!(
                "stored Service {namespace}/{service} does not parse"
            )));
        };
        if !svc.may_register(identity, self.plane.trust.trust_domain()) {
            return Err(Status::permission_denied(format!(
                "{identity} is not among the serviceAccounts of Service {namespace}/{service}"
            )));
        }
        Ok(())
    }

    /// Zone and region from the endpoint's Node labels, when the control
    /// plane reads Nodes; a label the Node lacks (or a failed lookup)
    /// leaves what the sidecar said.
    async fn fill_locality(&self, endpoint: &mut Endpoint) {
        let Some(topology) = &self.plane.topology else {
            return;
        };
        let node = endpoint.locality.node.clone();
        if node.is_empty() {
            return;
        }
        match topology.locality(&node).await {
            Ok(found) => {
                if !found.zone.is_empty() {
                    endpoint.locality.zone = found.zone;
                }
                if !found.region.is_empty() {
                    endpoint.locality.region = found.region;
                }
            }
            Err(error) => {
                tracing::warn!(%node, %error, "cannot read the node's topology labels; registering the locality as given")
            }
        }
    }

    /// The stored registration `req` names (its key and record), if it is
    /// `identity`'s on that lease.
    async fn owned_registration(
        &self,
        identity: &SpiffeId,
        req: &pb::KeepAliveRequest,
    ) -> Result<(String, pb::Endpoint), Status> {
        let key = keys::endpoint(&req.namespace, &req.service, &req.address, req.inbound_port);
        let not_found = || {
            Status::not_found(format!(
                "no registration of {}/{} at {}:{} on lease {:x}: register again",
                req.namespace, req.service, req.address, req.inbound_port, req.lease_id
            ))
        };
        let kv = self
            .plane
            .store
            .get(&key)
            .await
            .map_err(store_status)?
            .ok_or_else(not_found)?;
        let record = pb::Endpoint::decode(kv.value.as_slice())
            .map_err(|e| Status::internal(format!("stored endpoint {key} does not decode: {e}")))?;
        if kv.lease != req.lease_id {
            return Err(not_found());
        }
        if record.identity != identity.to_string() {
            return Err(Status::permission_denied(format!(
                "registration {key} belongs to {}, not to {identity}",
                record.identity
            )));
        }
        Ok((key, record))
    }

    /// The note about the certificate `identity` reported (none reported:
    /// none to write).
    fn leaf_note(&self, identity: &SpiffeId, der: &[u8]) -> Result<Option<LeafNote>, Status> {
        if der.is_empty() {
            return Ok(None);
        }
        let record = self.plane.trust.record();
        let note = LeafNote::check(&record, identity, der)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if note.root.is_empty() {
            tracing::warn!(%identity, "a reported certificate is signed by no issuer of the trust record");
        }
        Ok(Some(note))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let identity = peer(&request)?;
        let response = self.accept_report(&identity, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn publish_events(
        &self,
        request: Request<pb::PublishEventsRequest>,
    ) -> Result<Response<pb::PublishEventsResponse>, Status> {
        let identity = peer(&request)?;
        let response = self.accept_events(&identity, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let identity = peer(&request)?;
        let request = request.into_inner();
        let leaf = self.leaf_note(&identity, &request.certificate_der)?;
        let Some(mut endpoint) = request.endpoint else {
            return Err(Status::invalid_argument(
                "RegisterRequest.endpoint is missing",
            ));
        };
        // The identity is ours to set, from the certificate.
        endpoint.identity.clear();
        let mut endpoint = Endpoint::try_from(endpoint)
            .map_err(|e| Status::invalid_argument(format!("invalid endpoint: {e}")))?;
        self.authorize_registrant(&identity, &endpoint.namespace, &endpoint.service)
            .await?;
        endpoint.identity = Some(identity.clone());
        endpoint.registered_unix_ms = now_unix_ms();
        self.fill_locality(&mut endpoint).await;
        let address = endpoint.address.to_string();
        let key = keys::endpoint(
            &endpoint.namespace,
            &endpoint.service,
            &address,
            u32::from(endpoint.inbound_port),
        );
        let ttl = self.plane.lease_ttl;
        let lease = self.plane.store.grant(ttl).await.map_err(store_status)?;
        let record = pb::Endpoint::from(&endpoint).encode_to_vec();
        let mut ops = Vec::with_capacity(2);
        if let Some(leaf) = &leaf {
            ops.push(StoreOp::Put {
                key: keys::leaf_of(&key),
                value: leaf.encode(),
                lease: Some(lease),
            });
        }
        let event = NewEvent::new(
            events::ENDPOINT_REGISTERED,
            &endpoint.namespace,
            key.strip_prefix(keys::ENDPOINTS).unwrap_or(&key).to_owned(),
            serde_json::json!({
                "namespace": endpoint.namespace,
                "service": endpoint.service,
                "version": endpoint.version,
                "address": address,
                "inboundPort": endpoint.inbound_port,
                "identity": identity.to_string(),
                "ready": endpoint.ready,
                "node": endpoint.locality.node,
                "zone": endpoint.locality.zone,
                "region": endpoint.locality.region,
            }),
        );
        ops.push(StoreOp::Put {
            key,
            value: record,
            lease: Some(lease),
        });
        let revision = self
            .plane
            .events
            .txn_with(ops, vec![event])
            .await
            .map_err(store_status)?;
        tracing::info!(%identity, service = %endpoint.service, namespace = %endpoint.namespace,
            %address, version = %endpoint.version, ready = endpoint.ready, lease = format!("{lease:x}"), "registered endpoint");
        Ok(Response::new(pb::RegisterResponse {
            lease_id: lease,
            ttl_seconds: ttl.as_secs() as u32,
            revision,
            locality: Some(pb::Locality {
                node: endpoint.locality.node.clone(),
                zone: endpoint.locality.zone.clone(),
                region: endpoint.locality.region.clone(),
            }),
        }))
    }

    async fn keep_alive(
        &self,
        request: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        let identity = peer(&request)?;
        let req = request.into_inner();
        let leaf = self.leaf_note(&identity, &req.certificate_der)?;
        let (key, _) = self.owned_registration(&identity, &req).await?;
        let ttl = self
            .plane
            .store
            .keep_alive(req.lease_id)
            .await
            .map_err(store_status)?;
        // A renewed certificate: noted on the registration's lease.
        if let Some(leaf) = leaf {
            self.plane
                .store
                .txn(vec![StoreOp::Put {
                    key: keys::leaf_of(&key),
                    value: leaf.encode(),
                    lease: Some(req.lease_id),
                }])
                .await
                .map_err(store_status)?;
            tracing::debug!(%identity, %key, root = %leaf.root, "noted a renewed certificate");
        }
        Ok(Response::new(pb::KeepAliveResponse {
            ttl_seconds: ttl.as_secs() as u32,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let identity = peer(&request)?;
        let req = request.into_inner();
        let (key, record) = self.owned_registration(&identity, &req).await?;
        let event = endpoint_event(events::ENDPOINT_DEREGISTERED, &key, &record);
        // The event in the delete's transaction: an endpoint deletion
        // without one is a lease expiry (events::upkeep).
        self.plane
            .events
            .txn_with(vec![StoreOp::Delete { key: key.clone() }], vec![event])
            .await
            .map_err(store_status)?;
        self.plane
            .store
            .revoke(req.lease_id)
            .await
            .map_err(store_status)?;
        tracing::info!(%identity, %key, "deregistered endpoint");
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn set_ready(
        &self,
        request: Request<pb::SetReadyRequest>,
    ) -> Result<Response<pb::SetReadyResponse>, Status> {
        let identity = peer(&request)?;
        let req = request.into_inner();
        let Some(registration) = req.registration else {
            return Err(Status::invalid_argument(
                "SetReadyRequest.registration is missing",
            ));
        };
        let (key, mut record) = self.owned_registration(&identity, &registration).await?;
        if record.ready.unwrap_or(true) == req.ready {
            return Ok(Response::new(pb::SetReadyResponse {}));
        }
        record.ready = Some(req.ready);
        // On the same lease: an expired one fails the put (NOT_FOUND, so
        // the sidecar registers again) rather than leaving a record no
        // lease holds.
        let kind = if req.ready {
            events::ENDPOINT_READY
        } else {
            events::ENDPOINT_UNREADY
        };
        let event = endpoint_event(kind, &key, &record);
        self.plane
            .events
            .txn_with(
                vec![StoreOp::Put {
                    key: key.clone(),
                    value: record.encode_to_vec(),
                    lease: Some(registration.lease_id),
                }],
                vec![event],
            )
            .await
            .map_err(store_status)?;
        tracing::info!(%identity, %key, ready = req.ready, "endpoint readiness changed");
        Ok(Response::new(pb::SetReadyResponse {}))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let identity = peer(&request)?;
        let interest = Interest::new(&identity, request.get_ref())?;
        self.plane.hub.wait_synced().await;
        // What the caller (or anyone) wrote before asking is in the answer.
        self.plane
            .hub
            .catch_up(self.plane.store.as_ref(), CATCH_UP_BOUND)
            .await;
        // Until the store holds a trust record (it is seeded at start-up),
        // the one this replica started from.
        let bundle = self.plane.trust.record().to_pb();
        let hub = self.plane.hub.clone();
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        tracing::debug!(%identity, ?interest, "watch subscribed");
        tokio::spawn(async move {
            metrics::gauge!("bulkhead_watch_subscribers").increment(1.0);
            feed(&hub, &interest, &bundle, &tx).await;
            metrics::gauge!("bulkhead_watch_subscribers").decrement(1.0);
            tracing::debug!(%identity, "watch ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lookup_address(
        &self,
        request: Request<pb::LookupAddressRequest>,
    ) -> Result<Response<pb::LookupAddressResponse>, Status> {
        let identity = peer(&request)?;
        let text = &request.get_ref().address;
        let ip: std::net::IpAddr = text.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "LookupAddressRequest.address {text:?} is not an IP address"
            ))
        })?;
        self.plane.hub.wait_synced().await;
        // What the caller (or anyone) wrote before asking is in the answer.
        self.plane
            .hub
            .catch_up(self.plane.store.as_ref(), CATCH_UP_BOUND)
            .await;
        let services: BTreeSet<String> = self
            .plane
            .hub
            .read()
            .endpoints_at(ip)
            .map(|ep| format!("{}.{}", ep.service, ep.namespace))
            .collect();
        tracing::debug!(%identity, %ip, ?services, "address looked up");
        Ok(Response::new(pb::LookupAddressResponse {
            services: services.into_iter().take(MAX_SERVICES_AT_ADDRESS).collect(),
        }))
    }
}

/// Sends a snapshot, then deltas, until the subscriber goes away. The
/// snapshot's trust is the view's (`fallback` before the store has one).
async fn feed(
    hub: &crate::hub::Hub,
    interest: &Interest,
    fallback: &pb::TrustBundle,
    tx: &mpsc::Sender<Result<pb::WatchUpdate, Status>>,
) {
    // What `bulkheadctl check` counts: is it sent what concerns it?
    let watcher = hub.watchers().join();
    loop {
        let (snapshot, mut rx) = hub.subscribe(|view| {
            let bundle = view.trust.as_ref().map(|t| t.to_pb());
            interest.snapshot(view, bundle.as_ref().unwrap_or(fallback))
        });
        let revision = snapshot.revision;
        if tx.send(Ok(snapshot)).await.is_err() {
            return;
        }
        watcher.handled(revision);
        loop {
            match rx.recv().await {
                Ok(Delta::Changes { revision, changes }) => {
                    let changes: Vec<pb::Change> =
                        changes.iter().filter_map(|c| interest.change(c)).collect();
                    if changes.is_empty() {
                        watcher.handled(revision);
                        continue;
                    }
                    let update = pb::WatchUpdate {
                        revision,
                        snapshot: false,
                        changes,
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                    watcher.handled(revision);
                }
                // Fell behind, or the view was rebuilt: start over with a
                // fresh snapshot rather than buffering without bound.
                Ok(Delta::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// What one subscriber is pushed.
#[derive(Debug)]
struct Interest {
    namespace: String,
    /// `None`: every service.
    services: Option<BTreeSet<(String, String)>>,
    own_service: Option<String>,
    /// Every Service resource too (the directory for DNS and capture).
    directory: bool,
    /// The Gateway (in `namespace`) this client serves.
    gateway: Option<String>,
}

impl Interest {
    fn new(identity: &SpiffeId, req: &pb::WatchRequest) -> Result<Self, Status> {
        if req.services.len() > MAX_WATCHED_SERVICES {
            return Err(Status::invalid_argument(format!(
                "a watch may name at most {MAX_WATCHED_SERVICES} services, got {}",
                req.services.len()
            )));
        }
        let namespace = identity.namespace().to_owned();
        let mut services = Some(BTreeSet::new());
        for name in &req.services {
            if name == "*" {
                services = None;
                break;
            }
            let (svc, ns) = name.split_once('.').unwrap_or((name, &namespace));
            for (what, value) in [("service", svc), ("namespace", ns)] {
                bulkhead_proto::identity::validate_name(what, value).map_err(|e| {
                    Status::invalid_argument(format!("WatchRequest.services entry {name:?}: {e}"))
                })?;
            }
            if let Some(set) = services.as_mut() {
                set.insert((ns.to_owned(), svc.to_owned()));
            }
        }
        let own_service = if req.own_service.is_empty() {
            None
        } else {
            bulkhead_proto::identity::validate_name("service", &req.own_service)
                .map_err(|e| Status::invalid_argument(format!("WatchRequest.own_service: {e}")))?;
            Some(req.own_service.clone())
        };
        let gateway = if req.gateway.is_empty() {
            None
        } else {
            bulkhead_proto::identity::validate_name("gateway", &req.gateway)
                .map_err(|e| Status::invalid_argument(format!("WatchRequest.gateway: {e}")))?;
            Some(req.gateway.clone())
        };
        Ok(Self {
            namespace,
            services,
            own_service,
            directory: req.directory,
            gateway,
        })
    }

    fn wants_service(&self, namespace: &str, service: &str) -> bool {
        match &self.services {
            None => true,
            Some(set) => set.contains(&(namespace.to_owned(), service.to_owned())),
        }
    }

    fn is_own(&self, namespace: &str, service: &str) -> bool {
        namespace == self.namespace && self.own_service.as_deref() == Some(service)
    }

    fn wants_resource(&self, res: &Resource) -> bool {
        let ns = res.namespace();
        match res {
            Resource::Service(_) => {
                self.directory || self.wants_service(ns, res.name()) || self.is_own(ns, res.name())
            }
            Resource::AllowList(al) => self.is_own(ns, &al.spec.target),
            Resource::TrafficSplit(ts) => self.wants_service(ns, &ts.spec.service),
            // Rollouts drive TrafficSplits on the control plane; sidecars
            // only need the splits.
            Resource::Rollout(_) => false,
            Resource::Gateway(g) => {
                ns == self.namespace && self.gateway.as_deref() == Some(g.metadata.name.as_str())
            }
            // A sidecar enforces the egress rules of its own service only.
            Resource::Egress(eg) => {
                ns == self.namespace && self.own_service.as_deref().is_some_and(|own| eg.names(own))
            }
        }
    }

    fn may_hold_egress(&self, res: &Resource) -> bool {
        matches!(res, Resource::Egress(_))
            && res.namespace() == self.namespace
            && self.own_service.is_some()
    }

    fn wants_endpoint(&self, ep: &Endpoint) -> bool {
        self.wants_service(&ep.namespace, &ep.service)
    }

    fn change(&self, change: &Change) -> Option<pb::Change> {
        let (op, item) = match change {
            Change::Resource(res) if self.wants_resource(res) => {
                (Op::Upsert, resource_item(res, true))
            }
            // An Egress edited to no longer name this sidecar's service
            // must leave it; a delete of one it never held costs nothing.
            Change::Resource(res) if self.may_hold_egress(res) => {
                (Op::Delete, resource_item(res, false))
            }
            Change::ResourceDeleted(res) if self.wants_resource(res) => {
                (Op::Delete, resource_item(res, false))
            }
            Change::Endpoint(ep) if self.wants_endpoint(ep) => {
                (Op::Upsert, Item::Endpoint(pb::Endpoint::from(ep.as_ref())))
            }
            Change::EndpointDeleted(ep) if self.wants_endpoint(ep) => {
                (Op::Delete, Item::Endpoint(pb::Endpoint::from(ep.as_ref())))
            }
            // Every sidecar trusts the same roots.
            Change::Trust(record) => (Op::Upsert, Item::TrustBundle(record.to_pb())),
            _ => return None,
        };
        Some(pb::Change {
            op: op as i32,
            item: Some(item),
        })
    }

    fn snapshot(&self, view: &View, bundle: &pb::TrustBundle) -> pb::WatchUpdate {
        let mut changes = vec![pb::Change {
            op: Op::Upsert as i32,
            item: Some(Item::TrustBundle(bundle.clone())),
        }];
        for res in view.resources.values().filter(|r| self.wants_resource(r)) {
            if let Some(c) = self.change(&Change::Resource(res.clone())) {
                changes.push(c);
            }
        }
        let endpoints: Box<dyn Iterator<Item = &Arc<Endpoint>>> = match &self.services {
            None => Box::new(view.endpoints.values()),
            // Only the named services' endpoints, by key range: a subscriber
            // that names a few services costs a few, however big the mesh.
            Some(set) => Box::new(set.iter().flat_map(|(ns, svc)| {
                let prefix = keys::service_endpoints(ns, svc);
                view.endpoints
                    .range(prefix.clone()..)
                    .take_while(move |(k, _)| k.starts_with(&prefix))
                    .map(|(_, ep)| ep)
            })),
        };
        for ep in endpoints {
            if let Some(c) = self.change(&Change::Endpoint(ep.clone())) {
                changes.push(c);
            }
        }
        pb::WatchUpdate {
            revision: view.revision,
            snapshot: true,
            changes,
        }
    }
}

/// An event about the registration stored at `key`.
fn endpoint_event(kind: &'static str, key: &str, record: &pb::Endpoint) -> NewEvent {
    NewEvent::new(
        kind,
        &record.namespace,
        key.strip_prefix(keys::ENDPOINTS).unwrap_or(key).to_owned(),
        serde_json::json!({
            "namespace": record.namespace,
            "service": record.service,
            "version": record.version,
            "address": record.address,
            "inboundPort": record.inbound_port,
            "identity": record.identity,
        }),
    )
}

fn resource_item(res: &Resource, with_body: bool) -> Item {
    Item::Resource(pb::Resource {
        kind: res.kind().to_string(),
        namespace: res.namespace().to_owned(),
        name: res.name().to_owned(),
        json: if with_body {
            res.to_json()
        } else {
            String::new()
        },
    })
}
