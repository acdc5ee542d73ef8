//! Talking to the control plane after bootstrap: one Watch subscription that
//! keeps [`MeshState`] current (reconnecting with backoff, resuming on a
//! fresh snapshot, re-opened wider when [`Subscriptions`] grow), and the
//! endpoint registration kept alive on its lease (reporting the certificate
//! served with, at registration and after each renewal, so operators see
//! which root each endpoint is on), with this endpoint's inbound
//! aggregates reported beside it ([`report`]).
//!
//! An outage changes nothing on the data path: the last state stays
//! published and `bulkhead_control_plane_connected` drops to 0.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bulkhead_process::Backoff;
use bulkhead_proto::model::{Endpoint, Locality};
use bulkhead_proto::pb::{self, discovery_client::DiscoveryClient};
use bulkhead_tls::CertSlot;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::state::{EndpointKey, MeshState, ServiceKey, StateCell, Subscribed};
use crate::subscriptions::Subscriptions;
use crate::telemetry::VersionCounters;

mod report;

/// The registration's lease id, while it has one.
type Lease = Arc<std::sync::Mutex<Option<i64>>>;

/// Between reconnects: 200 ms doubling to 10 s, with jitter.
fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
}

/// Endpoints a resync snapshot left out, held for a grace period (see
/// [`RESYNC_GRACE`]), with their deadline.
type Held = HashMap<(ServiceKey, EndpointKey), Instant>;

/// How long a widened subscription waits for more demand before it is
/// re-opened: a burst of DNS answers costs one re-subscription.
const WIDEN_COALESCE: Duration = Duration::from_millis(5);

/// How one Watch stream ended.
enum Ended {
    /// Failed or closed: reconnect after a backoff.
    Lost,
    /// More services are wanted: re-open at once with the wider set.
    Widened,
}

/// Subscribes and re-subscribes forever, publishing each new state.
pub(crate) async fn watch_forever(
    channel: Channel,
    subscriptions: Arc<Subscriptions>,
    states: StateCell,
) {
    let mut backoff = reconnect_backoff();
    let mut held = Held::new();
    let mut synced_once = states.load().revision > 0;
    // Whether the next snapshot follows an outage (and may miss endpoints
    // that have not re-registered yet) rather than a widening.
    let mut after_outage = synced_once;
    loop {
        let (request, subscribed) = subscriptions.request();
        let mut client = DiscoveryClient::new(channel.clone());
        let ended = match client.watch(request).await {
            Ok(stream) => {
                let mut follow = Follow {
                    subscribed,
                    states: &states,
                    held: &mut held,
                    synced_once: &mut synced_once,
                    after_outage,
                };
                follow
                    .stream(stream.into_inner(), &subscriptions, &mut backoff)
                    .await
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot subscribe to the control plane; retrying");
                Ended::Lost
            }
        };
        match ended {
            Ended::Widened => after_outage = false,
            Ended::Lost => {
                after_outage = synced_once;
                metrics::gauge!("bulkhead_control_plane_connected").set(0.0);
                metrics::counter!("bulkhead_control_plane_reconnects_total").increment(1);
                backoff.wait().await;
            }
        }
    }
}

/// One Watch stream being applied to the published state.
struct Follow<'a> {
    /// What this stream's request asked for.
    subscribed: Subscribed,
    states: &'a StateCell,
    held: &'a mut Held,
    synced_once: &'a mut bool,
    after_outage: bool,
}

impl Follow<'_> {
    async fn stream(
        &mut self,
        mut stream: tonic::Streaming<pb::WatchUpdate>,
        subscriptions: &Subscriptions,
        backoff: &mut Backoff,
    ) -> Ended {
        // Work on a copy (cheap: the maps inside are shared until changed);
        // publish only whole updates.
        let mut current = self.states.load_full().as_ref().clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut first = true;
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = tick.tick() => {
                    if release_held(&mut current, self.held) {
                        self.states.publish(current.clone());
                    }
                    continue;
                }
                () = subscriptions.widened() => {
                    tokio::time::sleep(WIDEN_COALESCE).await;
                    if subscriptions.wider_than(&self.subscribed) {
                        return Ended::Widened;
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(update)) => {
                    backoff.reset();
                    metrics::gauge!("bulkhead_control_plane_connected").set(1.0);
                    // The first snapshot after an outage, or a resync later
                    // on the same stream, may miss live endpoints.
                    let hold =
                        update.snapshot && *self.synced_once && (self.after_outage || !first);
                    self.apply(&mut current, &update, hold);
                    first = false;
                    self.states.publish(current.clone());
                }
                Ok(None) => {
                    tracing::warn!("control plane ended the watch; reconnecting");
                    return Ended::Lost;
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "watch failed; reconnecting");
                    return Ended::Lost;
                }
            }
        }
    }

    fn apply(&mut self, current: &mut MeshState, update: &pb::WatchUpdate, hold: bool) {
        let before = hold.then(|| current.clone());
        let problems = current.apply(update);
        if !problems.is_empty() {
            tracing::warn!(
                ?problems,
                revision = update.revision,
                "ignored invalid items pushed by the control plane"
            );
        }
        if update.snapshot {
            current.set_subscribed(self.subscribed.clone());
        }
        if let Some(before) = before {
            hold_missing(current, &before, self.held);
        } else {
            // A pushed change to a held endpoint settles it.
            for change in &update.changes {
                if let Some(pb::change::Item::Endpoint(e)) = &change.item
                    && let Ok(ip) = e.address.parse()
                {
                    let at = EndpointKey::new(ip, u16::try_from(e.inbound_port).unwrap_or(0));
                    self.held
                        .remove(&((e.namespace.clone(), e.service.clone()), at));
                }
            }
        }
        *self.synced_once = true;
        metrics::gauge!("bulkhead_config_revision").set(current.revision as f64);
        tracing::debug!(
            revision = update.revision,
            snapshot = update.snapshot,
            changes = update.changes.len(),
            "config update"
        );
    }
}

/// After an outage longer than a registration lease, the first snapshot may
/// miss endpoints that are alive but have not re-registered yet (their
/// leases ran out while the control plane was away). They are kept this
/// long, unless the control plane says otherwise, so callers do not see a
/// burst of "no endpoints"; dead ones meanwhile fail over by retries and
/// outlier ejection.
const RESYNC_GRACE: Duration = Duration::from_secs(15);

fn hold_missing(current: &mut MeshState, before: &MeshState, held: &mut Held) {
    let deadline = Instant::now() + RESYNC_GRACE;
    for (service, view) in before.views() {
        for (at, endpoint) in view.endpoints.iter() {
            let known = current
                .view(service)
                .is_some_and(|v| v.endpoints.contains_key(at));
            if !known {
                current.hold_endpoint(service, Arc::<Endpoint>::clone(endpoint));
                held.entry((service.clone(), *at)).or_insert(deadline);
            }
        }
    }
    if !held.is_empty() {
        tracing::info!(endpoints = held.len(), grace = ?RESYNC_GRACE, "keeping endpoints the resync left out until they re-register");
    }
}

/// Drops held endpoints whose grace ran out; true if anything changed.
fn release_held(current: &mut MeshState, held: &mut Held) -> bool {
    let now = Instant::now();
    let expired: Vec<(ServiceKey, EndpointKey)> = held
        .iter()
        .filter(|(_, d)| **d <= now)
        .map(|(k, _)| k.clone())
        .collect();
    for key in &expired {
        held.remove(key);
        current.release_endpoint(&key.0, key.1);
    }
    !expired.is_empty()
}

/// The registration of this endpoint, kept alive (and its readiness kept
/// as the app's) until deregistered.
pub(crate) struct Registration {
    channel: Channel,
    record: pb::Endpoint,
    lease: Lease,
    /// The app's readiness, as the control plane should record it.
    ready: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Reporting the inbound aggregates, while registered.
    reporter: tokio::task::JoinHandle<()>,
}

impl Registration {
    /// Registers (retrying until it succeeds) and keeps the lease alive,
    /// re-registering if the control plane lost it; records `ready` and
    /// every later [`set_ready`](Self::set_ready) (only ready endpoints are
    /// sent to callers).
    /// `locality`: this sidecar's own, updated to what the control plane
    /// records (zone and region from the Node's labels). `served` is
    /// reported while a lease is held.
    pub(crate) fn start(
        channel: Channel,
        record: pb::Endpoint,
        locality: Arc<ArcSwap<Locality>>,
        ready: bool,
        certificate: CertSlot,
        served: Arc<VersionCounters>,
    ) -> Self {
        let lease = Arc::new(std::sync::Mutex::new(None));
        let (ready, ready_rx) = watch::channel(ready);
        let task = tokio::spawn(keep_registered(
            channel.clone(),
            record.clone(),
            lease.clone(),
            ready_rx,
            locality,
            certificate,
        ));
        let reporter = tokio::spawn(report::report_forever(
            channel.clone(),
            record.clone(),
            lease.clone(),
            served,
        ));
        Self {
            channel,
            record,
            lease,
            ready,
            task,
            reporter,
        }
    }

    /// Records the app as ready or not (at once; again after a lost lease).
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready
            .send_if_modified(|r| std::mem::replace(r, ready) != ready);
    }

    /// Stops renewing and removes the record at once (graceful shutdown).
    pub(crate) async fn deregister(self) {
        self.task.abort();
        self.reporter.abort();
        let lease = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = lease {
            let mut client = DiscoveryClient::new(self.channel.clone());
            let call = client.deregister(key(&self.record, id));
            match tokio::time::timeout(Duration::from_secs(3), call).await {
                Ok(Ok(_)) => tracing::info!("endpoint deregistered"),
                Ok(Err(status)) => tracing::warn!(
                    message = status.message(),
                    "deregistration failed; the lease will expire"
                ),
                Err(_) => tracing::warn!("deregistration timed out; the lease will expire"),
            }
        }
        metrics::gauge!("bulkhead_registered").set(0.0);
    }
}

/// The leaf certificate in `slot` (DER; empty before there is one).
fn leaf(slot: &CertSlot) -> Vec<u8> {
    slot.get()
        .and_then(|key| key.cert.first().map(|c| c.to_vec()))
        .unwrap_or_default()
}

/// The registration's life: register, keep the lease alive (a third of
/// its TTL, with the certificate when it was renewed since last said),
/// tell the control plane when readiness changes, and register again when
/// the lease was lost.
async fn keep_registered(
    channel: Channel,
    mut record: pb::Endpoint,
    lease: Lease,
    mut ready: watch::Receiver<bool>,
    locality: Arc<ArcSwap<Locality>>,
    certificate: CertSlot,
) {
    let mut client = DiscoveryClient::new(channel);
    let mut backoff = reconnect_backoff();
    let mut said_node_only = false;
    // What the control plane holds for the current lease.
    let mut recorded_ready = None;
    let mut reported = Vec::new();
    let set_lease = |id| *lease.lock().unwrap_or_else(|e| e.into_inner()) = id;
    loop {
        let want = *ready.borrow_and_update();
        let current = *lease.lock().unwrap_or_else(|e| e.into_inner());
        let step = match current {
            None => {
                record.ready = Some(want);
                let current = leaf(&certificate);
                let request = pb::RegisterRequest {
                    endpoint: Some(record.clone()),
                    certificate_der: current.clone(),
                };
                match client.register(request).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        tracing::info!(
                            lease = format!("{:x}", resp.lease_id),
                            ttl = resp.ttl_seconds,
                            ready = want,
                            "endpoint registered"
                        );
                        set_lease(Some(resp.lease_id));
                        recorded_ready = Some(want);
                        reported = current;
                        if let Some(recorded) = &resp.locality {
                            learn_locality(&locality, recorded, &mut said_node_only);
                        }
                        metrics::gauge!("bulkhead_registered").set(1.0);
                        Ok(Duration::from_secs(u64::from(resp.ttl_seconds.max(3))) / 3)
                    }
                    Err(status) => Err(status),
                }
            }
            Some(id) if recorded_ready != Some(want) => {
                let request = pb::SetReadyRequest {
                    registration: Some(key(&record, id)),
                    ready: want,
                };
                match client.set_ready(request).await {
                    Ok(_) => {
                        tracing::info!(ready = want, "endpoint readiness recorded");
                        recorded_ready = Some(want);
                        // Renew now: when the lease was last renewed is
                        // not tracked, and one extra call is cheap.
                        Ok(Duration::ZERO)
                    }
                    Err(status) => Err(status),
                }
            }
            Some(id) => {
                let current = leaf(&certificate);
                let mut request = key(&record, id);
                if current != reported {
                    request.certificate_der = current.clone();
                }
                match client.keep_alive(request).await {
                    Ok(resp) => {
                        if current != reported {
                            tracing::debug!("renewed certificate reported to the control plane");
                            reported = current;
                        }
                        Ok(
                            Duration::from_secs(u64::from(resp.into_inner().ttl_seconds.max(3)))
                                / 3,
                        )
                    }
                    Err(status) => Err(status),
                }
            }
        };
        match step {
            Ok(wait) => {
                backoff.reset();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    changed = ready.changed() => {
                        if changed.is_err() {
                            return; // the Registration is gone
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound && current.is_some() => {
                tracing::warn!("registration lease lost; registering again");
                set_lease(None);
                recorded_ready = None;
                metrics::gauge!("bulkhead_registered").set(0.0);
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "registration call failed; retrying");
                // Short backoff (at most 2 s): a lost lease must be renewed
                // soon after the control plane is back.
                tokio::time::sleep(backoff.next_delay().min(Duration::from_secs(2))).await;
            }
        }
    }
}

/// Takes the locality the control plane recorded as this sidecar's own
/// (for choosing the nearest endpoints); says once when no zone is known.
fn learn_locality(own: &ArcSwap<Locality>, recorded: &pb::Locality, said: &mut bool) {
    let recorded = Locality {
        node: recorded.node.clone(),
        zone: recorded.zone.clone(),
        region: recorded.region.clone(),
    };
    if **own.load() != recorded {
        tracing::info!(node = %recorded.node, zone = %recorded.zone, region = %recorded.region,
            "locality as the control plane recorded it (zone and region from the Node's labels)");
        own.store(Arc::new(recorded.clone()));
    }
    if recorded.zone.is_empty() && !*said {
        *said = true;
        tracing::warn!(
            node = %recorded.node,
            "no zone known for this node (its Node has no topology.kubernetes.io/zone label, \
             or the control plane does not read Nodes: --k8s-api): locality-aware balancing \
             uses the node tier only"
        );
    }
}

fn key(record: &pb::Endpoint, lease_id: i64) -> pb::KeepAliveRequest {
    pb::KeepAliveRequest {
        namespace: record.namespace.clone(),
        service: record.service.clone(),
        address: record.address.clone(),
        lease_id,
        inbound_port: record.inbound_port,
        certificate_der: Vec::new(),
    }
}
