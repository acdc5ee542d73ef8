//! Assembling a sidecar. [`run`] reads as the table of contents: identity
//! and state, then each listener from its own constructor (inbound,
//! outbound, capture, admin, DNS), then registration (which follows the
//! app's readiness, and reports the inbound aggregates) and shutdown. On
//! SIGTERM: deregister, keep accepting inbound for `--deregister-delay`,
//! drain inbound (stop accepting, HTTP/2 GOAWAY, wait for in-flight work),
//! keep serving the app's outbound calls until it has exited, then drain
//! those — all within the grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_process::Backoff;
use bulkhead_proto::pb;
use bulkhead_tls::{self as tls, BundleSlot, CertSlot, TrustBundle};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tonic::transport::Channel;

use crate::accept::Listener;
use crate::admin::{self, Admin};
use crate::capture;
use crate::config::{Config, Egress};
use crate::control_client::{self, Registration};
use crate::dns;
use crate::drain::Drain;
use crate::egress::EgressPolicy;
use crate::identity::{self, IdentityError};
use crate::inbound::{self, Inbound};
use crate::limits::Pending;
use crate::outbound::{self, MeshListeners, Outbound, Target};
use crate::pool::Pool;
use crate::route;
use crate::state::{self, MeshState, StateCell};
use crate::subscriptions::Subscriptions;
use crate::telemetry::VersionCounters;
use crate::{trust, wire};

/// How often a draining sidecar looks whether its app has exited.
const APP_EXIT_POLL: Duration = Duration::from_millis(200);

/// How the sidecar ended, for the exit code.
#[derive(Debug)]
pub(crate) enum Exit {
    /// Bad configuration or files: exit 2.
    Usage(String),
    /// Could not run: exit 1.
    Failure(String),
}

/// What every workload that calls into the mesh holds — a sidecar, or a
/// gateway: the trust bundle in force, its certificate, the mesh state
/// pushed to it and the outbound side that routes calls over it.
#[derive(Clone)]
pub(crate) struct MeshClient {
    pub(crate) bundle: BundleSlot,
    pub(crate) slot: CertSlot,
    pub(crate) states: StateCell,
    pub(crate) subscriptions: Arc<Subscriptions>,
    pub(crate) outbound: Arc<Outbound>,
}

impl MeshClient {
    /// The bundle from the flags (or the state dir's newer one), the saved
    /// state, and an outbound side that serves from the start: before the
    /// first certificate and config, calls are refused (and counted) rather
    /// than left waiting in a backlog. `subscriptions` says what to ask the
    /// control plane for, given the restored state.
    pub(crate) fn new(
        config: &Config,
        subscriptions: impl FnOnce(&MeshState) -> Subscriptions,
    ) -> Result<Self, Exit> {
        let bundle = BundleSlot::new(trust_bundle(config)?);
        if let Some(dir) = &config.state_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| Exit::Usage(format!("--state-dir {}: {e}", dir.display())))?;
        }
        let saved = saved_state(config);
        // The last bundle pushed is newer than the one the flags name (a root
        // may have been added, or retired, since the pod was made).
        if let Some(trust) = &saved.trust {
            trust::apply(&bundle, trust);
        }
        let slot = CertSlot::empty();
        let states = StateCell::new(saved);
        let subscriptions = Arc::new(subscriptions(&states.load()));
        let outbound = Arc::new(Outbound {
            caller: caller_key(config, &bundle)?,
            locality: Arc::new(arc_swap::ArcSwap::from_pointee(config.locality.clone())),
            states: states.clone(),
            subscriptions: subscriptions.clone(),
            pool: Pool::new(bundle.clone(), slot.clone(), config.limits.clone()),
            balancers: outbound::Balancers::default(),
            request_timeout: config.request_timeout,
            tcp_idle_timeout: config.tcp_idle_timeout,
            limits: config.limits.clone(),
        });
        Ok(Self {
            bundle,
            slot,
            states,
            subscriptions,
            outbound,
        })
    }

    /// Joins the mesh: follows endpoints and trust, gets the first
    /// certificate (and keeps it renewed), then watches the control plane
    /// for what [`Subscriptions`] asks. Returns the identity the
    /// certificate names and the channel to the control plane.
    pub(crate) async fn join(
        self,
        config: &Config,
    ) -> Result<(bulkhead_proto::SpiffeId, Channel), Exit> {
        let Self {
            bundle,
            slot,
            states,
            subscriptions,
            outbound,
        } = self;
        tokio::spawn(follow_endpoints(outbound.clone()));
        tokio::spawn(trust::follow(states.clone(), bundle.clone(), move |b| {
            outbound.pool.retire_untrusted(b)
        }));
        let issued = first_certificate(config, &bundle, &slot).await?;
        check_identity(config, &issued.id)?;
        let own_identity = issued.id.clone();
        let control = bulkhead_tls::channel(&config.control, &bundle, Some(slot.clone()))
            .map_err(|e| Exit::Usage(format!("--control: {e}")))?;
        tokio::spawn(identity::renew_forever(
            control.clone(),
            slot.clone(),
            issued,
            bundle.trust_domain(),
            config.state_dir.clone(),
            states.clone(),
        ));
        subscriptions.connect(control.clone());
        tokio::spawn(control_client::watch_forever(
            control.clone(),
            subscriptions,
            states.clone(),
        ));
        if let Some(dir) = &config.state_dir {
            tokio::spawn(state::save_forever(states.clone(), dir.clone()));
        }
        Ok((own_identity, control))
    }
}

pub(crate) async fn run(config: Config, metrics: PrometheusHandle) -> Result<(), Exit> {
    keep_metrics_bounded(metrics.clone());
    let mesh = MeshClient::new(&config, |restored| subscriptions(&config, restored))?;
    // Every port is bound first, so a clash is reported at once.
    let listeners = Listeners::bind(&config).await?;
    let addresses = listeners.addresses()?;
    let MeshClient {
        bundle,
        slot,
        states,
        outbound,
        ..
    } = mesh.clone();
    // Two phases on SIGTERM: inbound (and admin's readiness) drains first;
    // the app-facing side keeps serving while the app may still be
    // finishing work that calls its upstreams.
    let drain = Drain::new();
    let outbound_drain = Drain::new();

    let admin = Arc::new(Admin {
        metrics,
        slot: slot.clone(),
        bundle: bundle.clone(),
        states: states.clone(),
        outbound: outbound.clone(),
        apps: config.app.iter().map(|a| a.addr).collect(),
        requires: None,
        drain: drain.clone(),
        limits: config.limits.clone(),
    });
    tokio::spawn(admin::serve(listeners.admin, admin.clone()));
    for (listener, up) in listeners.upstreams {
        let target = Target::new((up.namespace, up.service), up.port);
        outbound_drain.spawn(outbound::serve(
            listener,
            target,
            outbound.clone(),
            outbound_drain.clone(),
        ));
    }
    if !listeners.capture.is_empty() {
        let egress = EgressPolicy::new(
            &config.namespace,
            &config.service,
            config.egress == Egress::Allow,
            &config.resolv_conf,
        );
        tokio::spawn(egress.clone().follow(states.clone()));
        for listener in listeners.capture {
            outbound_drain.spawn(capture::serve(
                listener,
                outbound.clone(),
                egress.clone(),
                outbound_drain.clone(),
            ));
        }
    }
    let dns = serve_dns(&config, &outbound, &outbound_drain).await?;
    if let Some(path) = &config.addresses_file {
        write_addresses(path, &addresses, &dns)?;
    }
    let (own_identity, control) = mesh.join(&config).await?;

    // Counted from the first request served; reported once registered.
    let served = VersionCounters::new();
    let inbound = inbound_side(&config, &bundle, &slot, &states, own_identity, &served)?;
    drain.spawn(inbound::serve(listeners.inbound, inbound, drain.clone()));

    let registered = Registered::default();
    let health = tokio::spawn(follow_health(
        config.clone(),
        addresses.inbound.port(),
        admin,
        control,
        registered.clone(),
        served,
    ));
    bulkhead_process::shutdown_signal().await;
    shut_down(&config, health, registered, [&drain, &outbound_drain]).await;
    Ok(())
}

/// What `--addresses-file` reports: every address bound, with the ports
/// the system chose for port 0.
struct Addresses {
    inbound: SocketAddr,
    admin: SocketAddr,
    capture: Vec<SocketAddr>,
    /// `--upstream` target as given (`NAME[.NS][:PORT]`) → address.
    upstreams: Vec<(String, SocketAddr)>,
}

fn write_addresses(path: &std::path::Path, a: &Addresses, dns: &[SocketAddr]) -> Result<(), Exit> {
    let text = |v: &[SocketAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let upstreams: serde_json::Map<String, serde_json::Value> = a
        .upstreams
        .iter()
        .map(|(target, addr)| (target.clone(), addr.to_string().into()))
        .collect();
    let json = serde_json::json!({
        "inbound": a.inbound.to_string(),
        "admin": a.admin.to_string(),
        "outbound": text(&a.capture),
        "upstreams": upstreams,
        "dns": text(dns),
    });
    // Written whole, then renamed: a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{json:#}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Exit::Usage(format!("--addresses-file {}: {e}", path.display())))
}

/// Every TCP port the sidecar serves, bound.
struct Listeners {
    inbound: Listener,
    admin: Listener,
    capture: Vec<Listener>,
    upstreams: Vec<(Listener, crate::config::Upstream)>,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Self, Exit> {
        let inbound = match bind("--inbound", config.inbound).await {
            // `[::]` needs IPv6; without it, take every IPv4 address instead.
            Err(_)
                if config.inbound.ip()
                    == std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED) =>
            {
                let v4 = SocketAddr::from(([0, 0, 0, 0], config.inbound.port()));
                tracing::warn!(%v4, "no IPv6 here: inbound listens on IPv4 only");
                bind("--inbound", v4).await?
            }
            other => other?,
        };
        let admin = bind("--admin", config.admin).await?;
        let max = config.limits.max_connections;
        let mut capture = Vec::new();
        for addr in &config.outbound {
            let tcp = bind("--outbound", *addr).await?;
            capture.push(Listener::new("capture", tcp, max));
        }
        let mut upstreams = Vec::new();
        for up in &config.upstreams {
            let tcp = bind("--upstream", up.listen).await?;
            let listener = Listener::new("outbound", tcp, max);
            upstreams.push((listener, up.clone()));
        }
        Ok(Self {
            inbound: Listener::new("inbound", inbound, max),
            admin: Listener::new("admin", admin, config.limits.max_admin_connections),
            capture,
            upstreams,
        })
    }
}

impl Listeners {
    fn addresses(&self) -> Result<Addresses, Exit> {
        let addr = |l: &Listener| {
            l.local_addr()
                .map_err(|e| Exit::Failure(format!("listener address: {e}")))
        };
        Ok(Addresses {
            inbound: addr(&self.inbound)?,
            admin: addr(&self.admin)?,
            capture: self.capture.iter().map(addr).collect::<Result<_, _>>()?,
            upstreams: self
                .upstreams
                .iter()
                .map(|(l, up)| Ok((up.target(), addr(l)?)))
                .collect::<Result<_, Exit>>()?,
        })
    }
}

pub(crate) async fn bind(flag: &str, addr: SocketAddr) -> Result<TcpListener, Exit> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Exit::Usage(format!("{flag} {addr}: cannot listen: {e}")))
}

/// Histograms keep every sample until upkeep folds them in; without it a
/// sidecar nobody scrapes grows without bound (found by bench/). Upkeep
/// runs on a blocking thread: folding thousands of samples on the thread
/// that serves traffic would stall every request behind it (recording
/// stays lock-free meanwhile).
pub(crate) fn keep_metrics_bounded(metrics: PrometheusHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let metrics = metrics.clone();
            if let Err(error) = tokio::task::spawn_blocking(move || metrics.run_upkeep()).await {
                tracing::warn!(%error, "metrics upkeep failed");
            }
        }
    });
}

/// The roots, and the trust domain: the flag's, else the one the roots
/// name, else the default.
fn trust_bundle(config: &Config) -> Result<TrustBundle, Exit> {
    let (pem, what) = config.trust_bundle.read().map_err(Exit::Usage)?;
    let roots =
        tls::certs_from_pem(&pem, &what).map_err(|e| Exit::Usage(format!("--trust-bundle {e}")))?;
    let td = config
        .trust_domain
        .clone()
        .or_else(|| tls::trust_domain_of_roots(&roots))
        .unwrap_or_else(|| bulkhead_proto::identity::DEFAULT_TRUST_DOMAIN.to_owned());
    TrustBundle::new(roots, &td).map_err(|e| Exit::Usage(format!("--trust-bundle {what}: {e}")))
}

/// The state saved in `--state-dir`, served until the control plane answers.
fn saved_state(config: &Config) -> MeshState {
    let Some(dir) = &config.state_dir else {
        return MeshState::default();
    };
    match state::load(dir) {
        Ok(Some(saved)) => {
            tracing::info!(
                revision = saved.revision,
                "serving on the last saved config until the control plane answers"
            );
            saved
        }
        Ok(None) => MeshState::default(),
        Err(error) => {
            tracing::warn!(%error, "ignoring the saved config");
            MeshState::default()
        }
    }
}

/// Mesh DNS on each `--dns` address, answering with listeners made on
/// demand ([`MeshListeners`]). Returns the addresses bound.
async fn serve_dns(
    config: &Config,
    outbound: &Arc<Outbound>,
    drain: &Drain,
) -> Result<Vec<SocketAddr>, Exit> {
    let mut bound = Vec::new();
    if config.dns.is_empty() {
        return Ok(bound);
    }
    let names: Arc<dyn dns::MeshNames> =
        Arc::new(MeshListeners::new(outbound.clone(), drain.clone()));
    for &listen in &config.dns {
        let dns_config = dns::DnsConfig {
            listen,
            own_namespace: config.namespace.clone(),
            cluster_domain: config.cluster_domain.clone(),
            forward: dns::Forward::System,
            max_tcp_connections: config.limits.max_dns_connections,
        };
        let server = dns::DnsServer::bind(dns_config, names.clone())
            .await
            .map_err(|e| Exit::Usage(format!("--dns: {e}")))?;
        tracing::info!(addr = %server.local_addr(), "mesh DNS serving");
        bound.push(server.local_addr());
        drain.spawn(server.run(drain.clone()));
    }
    Ok(bound)
}

/// Endpoint sets follow the config: balancers get the services that
/// changed, and connections to endpoints that left are closed.
async fn follow_endpoints(outbound: Arc<Outbound>) {
    let mut changes = outbound.states.subscribe();
    while changes.changed().await.is_ok() {
        let state = outbound.states.load_full();
        let gone = outbound.balancers.refresh(&state);
        if !gone.is_empty() {
            outbound.pool.forget(&gone);
        }
    }
}

/// This workload's SPIFFE ID, as its certificate will name it
/// ([`check_identity`] holds it to that), hashed for sticky splits: known
/// before the certificate, so outbound can serve from the start.
fn caller_key(config: &Config, bundle: &BundleSlot) -> Result<route::StickyKey, Exit> {
    let td = bundle.trust_domain();
    let id = bulkhead_proto::SpiffeId::new(&td, &config.namespace, &config.service_account)
        .map_err(|e| Exit::Usage(format!("--namespace/--service-account: {e}")))?;
    Ok(route::StickyKey::new(id.to_string().as_bytes()))
}

/// The certificate must name the workload the flags describe: a token for
/// another service account (or namespace) is a misconfiguration to stop
/// on, not an identity to serve under.
fn check_identity(config: &Config, id: &bulkhead_proto::SpiffeId) -> Result<(), Exit> {
    if id.namespace() == config.namespace && id.service_account() == config.service_account {
        return Ok(());
    }
    Err(Exit::Usage(format!(
        "the certificate names {id} (namespace {:?}, service account {:?}), but this sidecar \
         runs as --namespace {:?} --service-account {:?}: give it a token for that service \
         account, or correct the flags",
        id.namespace(),
        id.service_account(),
        config.namespace,
        config.service_account
    )))
}

/// Gets the first certificate: a still-valid saved one, else the token,
/// retrying while the control plane is unreachable.
async fn first_certificate(
    config: &Config,
    bundle: &BundleSlot,
    slot: &CertSlot,
) -> Result<identity::Issued, Exit> {
    let td = bundle.trust_domain();
    if let Some(dir) = &config.state_dir
        && let Some(saved) = identity::load_saved(dir, slot, &td)
    {
        tracing::info!(identity = %saved.id, "using the certificate kept in the state dir");
        return Ok(saved);
    }
    let channel = bulkhead_tls::channel(&config.control, bundle, None)
        .map_err(|e| Exit::Usage(format!("--control: {e}")))?;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let certified = identity::certify(
            channel.clone(),
            &config.token_file,
            config.attestation,
            slot,
            &td,
            config.state_dir.as_deref(),
        )
        .await;
        match certified {
            Ok(issued) => return Ok(issued),
            Err(IdentityError::Unavailable(why)) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(reason = %why, ?retry_in, "control plane unreachable; retrying the certificate request");
                tokio::time::sleep(retry_in).await;
            }
            Err(e @ IdentityError::Token { .. }) => {
                return Err(Exit::Usage(format!("--token-file: {e}")));
            }
            Err(e) => return Err(Exit::Failure(e.to_string())),
        }
    }
}

/// What the sidecar subscribes to: the `--upstream`s' services; with mesh
/// DNS or capture, also the directory and whatever the app asks for (seeded
/// with what a restored state was using).
fn subscriptions(config: &Config, restored: &MeshState) -> Subscriptions {
    let fixed = config
        .upstreams
        .iter()
        .map(|u| (u.namespace.clone(), u.service.clone()))
        .collect();
    let on_demand = !config.dns.is_empty() || !config.outbound.is_empty();
    let seed = restored.services_in_use().cloned().collect::<Vec<_>>();
    Subscriptions::new(fixed, on_demand, config.service.clone(), seed)
}

/// The inbound side: mTLS with a mandatory mesh client certificate, then
/// the app on localhost.
fn inbound_side(
    config: &Config,
    bundle: &BundleSlot,
    slot: &CertSlot,
    states: &StateCell,
    identity: bulkhead_proto::SpiffeId,
    served: &Arc<VersionCounters>,
) -> Result<Arc<Inbound>, Exit> {
    let (app_http1, app_http2) = inbound::app_clients(&config.limits);
    let server_config = tls::server_config(bundle, slot.clone(), true, &[wire::ALPN])
        .map_err(|e| Exit::Failure(e.to_string()))?;
    Ok(Arc::new(Inbound {
        tls: TlsAcceptor::from(Arc::new(server_config)),
        bundle: bundle.clone(),
        trust_domain: bundle.trust_domain(),
        identity,
        key: (config.namespace.clone(), config.service.clone()),
        id: std::sync::OnceLock::new(),
        version: config.version.clone(),
        apps: inbound::Apps::new(&config.app),
        app_protocol: config.app_protocol,
        states: states.clone(),
        app_http1,
        app_http2,
        request_timeout: config.request_timeout,
        tcp_idle_timeout: config.tcp_idle_timeout,
        limits: config.limits.clone(),
        handshakes: Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_handshakes.max(1),
        )),
        pending: Pending::new(config.limits.max_pending_requests),
        served: served.clone(),
    }))
}

/// How often the app's readiness decides whether this endpoint is
/// registered.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// Failed checks in a row before a registered endpoint is withdrawn: about
/// a second, so callers stop being sent to a sick pod without waiting for
/// outlier ejection, and one slow probe does not flap the registration.
const UNREADY_CHECKS: u32 = 2;

/// The registration, once this endpoint is registered.
type Registered = Arc<tokio::sync::Mutex<Option<Registration>>>;

/// Registration follows readiness: registered once the sidecar has its
/// certificate and a config with our Service, recorded ready while the app
/// is (only ready endpoints are sent callers), unready after
/// [`UNREADY_CHECKS`] failed checks, ready again when it recovers.
async fn follow_health(
    config: Config,
    inbound_port: u16,
    admin: Arc<Admin>,
    control: Channel,
    registered: Registered,
    served: Arc<VersionCounters>,
) {
    // What this sidecar sees (ejections, denials) goes to the event stream
    // over the same channel from the start, registered or not yet.
    crate::events::start(control.clone());
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Failed checks in a row; whether the app is taken as ready; whether
    // it was, then stopped being.
    let (mut failures, mut ready, mut withdrawn) = (0, false, false);
    loop {
        tick.tick().await;
        let check = admin.readiness().await;
        match &check {
            Ok(()) => {
                if std::mem::take(&mut withdrawn) {
                    tracing::info!("app ready again: callers may be sent here");
                }
                failures = 0;
                ready = true;
            }
            Err(why) => {
                failures += 1;
                if ready && failures >= UNREADY_CHECKS {
                    tracing::warn!(reason = %why, "app not ready: no callers are sent here until it is");
                    metrics::counter!("bulkhead_registration_withdrawn_total").increment(1);
                    (ready, withdrawn) = (false, true);
                }
            }
        }
        let mut current = registered.lock().await;
        match current.as_ref() {
            Some(registration) => registration.set_ready(ready),
            None => {
                if let Some(record) = endpoint_record(&config, inbound_port, &admin) {
                    *current = Some(Registration::start(
                        control.clone(),
                        record,
                        admin.outbound.locality.clone(),
                        ready,
                        admin.slot.clone(),
                        served.clone(),
                    ));
                }
            }
        }
    }
}

/// What this endpoint registers as; `None` until the config has our Service.
fn endpoint_record(config: &Config, inbound_port: u16, admin: &Admin) -> Option<pb::Endpoint> {
    let ports = admin
        .states
        .load()
        .service(&config.namespace, &config.service)?
        .spec
        .ports
        .iter()
        .map(|p| pb::Port {
            port: u32::from(p.port),
            protocol: p.protocol.as_str().to_owned(),
        })
        .collect();
    Some(pb::Endpoint {
        namespace: config.namespace.clone(),
        service: config.service.clone(),
        version: config.version.clone(),
        address: config.advertise.to_string(),
        inbound_port: u32::from(inbound_port),
        ports,
        locality: Some(pb::Locality {
            node: config.locality.node.clone(),
            zone: config.locality.zone.clone(),
            region: config.locality.region.clone(),
        }),
        ..Default::default()
    })
}

/// Deregister first so callers stop picking us; keep accepting inbound
/// for `--deregister-delay` (callers that had already picked us still
/// land); drain inbound; keep serving the app's outbound calls until the
/// app has exited or the grace period ends; then drain those.
async fn shut_down(
    config: &Config,
    health: JoinHandle<()>,
    registered: Registered,
    [inbound, outbound]: [&Drain; 2],
) {
    let started = tokio::time::Instant::now();
    let deadline = started + config.drain_timeout;
    tracing::info!(grace = ?config.drain_timeout, "SIGTERM: deregistering, then draining");
    health.abort();
    if let Some(registration) = registered.lock().await.take() {
        registration.deregister().await;
    }
    tokio::time::sleep(config.deregister_delay.min(config.drain_timeout / 2)).await;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    if !inbound.drain(left()).await {
        tracing::warn!("grace period over with inbound connections still open; closing them");
    }
    for app in config.app.iter().map(|a| a.addr) {
        while !left().is_zero() && app_is_up(app).await {
            tokio::time::sleep(APP_EXIT_POLL).await;
        }
    }
    if !outbound.drain(left().max(Duration::from_secs(1))).await {
        tracing::warn!("grace period over with the app's outbound calls still open; closing them");
    }
}

/// Whether the app still accepts connections on `--app`.
async fn app_is_up(app: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(app)).await,
        Ok(Ok(_))
    )
}
