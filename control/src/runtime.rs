//! Assembling a control plane: store, trust, mesh view, gRPC, admin and
//! admission-webhook listeners. [`start`] is what `bulkhead-control` runs
//! and what `bulkhead-demo` embeds.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::SpiffeId;
use bulkhead_proto::pb::{
    admin_server::AdminServer, discovery_server::DiscoveryServer, identity_server::IdentityServer,
};
use bulkhead_tls::{self as tls, CertSlot};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::health::WebhookServing;
use crate::api::{self, ControlPlane};
use crate::hub::Hub;
use crate::k8s_api::ApiServer;
use crate::store::Store;
use crate::trust::Trust;
use crate::webhook::ca_bundle::CaBundleKeeper;
use crate::{admin_http, server};

/// Lifetime of the control plane's own serving certificate; it is renewed
/// at half of it.
const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How often a given webhook certificate's files are looked at again (the
/// kubelet takes about a minute to update a mounted Secret anyway).
const WEBHOOK_FILES_RELOAD: Duration = Duration::from_secs(30);

/// Everything needed to start a control plane (already validated).
pub struct Settings {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The issuers held and the trust to start from (the store's wins).
    pub trust: Arc<Trust>,
    /// How this replica names itself to operators (`ca status`).
    pub replica: String,
    /// Operators besides the built-in `bulkhead/operator`.
    pub operators: Vec<SpiffeId>,
    pub cert_lifetime: Duration,
    pub lease_ttl: Duration,
    /// TTL of the rollout leader's lease: takeover time when it dies.
    pub leader_lease_ttl: Duration,
    /// How often sidecars report their traffic (`--report-interval`).
    pub report_interval: Duration,
    /// How long reports stay in the store (`--stats-retention`).
    pub stats_retention: Duration,
    /// How long and how many mesh events are kept (`--events-retention`,
    /// `--events-max`).
    pub events: crate::events::EventSettings,
    pub dns_names: Vec<String>,
    /// Kubernetes service-account token verification, when configured.
    pub k8s: Option<Arc<crate::attest::K8sVerifier>>,
    /// Node topology labels for endpoint locality, when configured.
    pub topology: Option<Arc<crate::topology::Topology>>,
    /// The admission webhook, when configured.
    pub webhook: Option<WebhookSettings>,
}

/// Where and how the admission webhook is served.
pub struct WebhookSettings {
    pub listen: SocketAddr,
    pub certificate: WebhookCertificate,
    /// Injected pods get the trust bundle in force inline, when these
    /// settings carry one (`trust_bundle_pem`).
    pub injector: crate::webhook::InjectorSettings,
}

/// Where the webhook's serving certificate comes from.
pub enum WebhookCertificate {
    /// Files given (`--webhook-cert`/`--webhook-key`): bring your own, e.g.
    /// cert-manager's; read again when they change.
    Files {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
    /// Made here from the mesh issuer and renewed
    /// ([`crate::webhook::certificate`]).
    SelfManaged {
        dns_names: Vec<String>,
        lifetime: Duration,
        /// Keep a webhook configuration's `caBundle` current, when an API
        /// server is configured.
        ca_bundle: Option<CaBundleTarget>,
    },
}

/// The webhook configuration whose `caBundle` the control plane keeps.
pub struct CaBundleTarget {
    pub api: Arc<ApiServer>,
    /// The MutatingWebhookConfiguration's name.
    pub configuration: String,
    /// How often it is checked when nothing changed here.
    pub resync: Duration,
}

/// A running control plane. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The admission webhook's address, when it is served.
    pub webhook_addr: Option<SocketAddr>,
    pub plane: Arc<ControlPlane>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    /// Stops accepting, lets in-flight calls finish (bounded), stops tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        for t in self.tasks {
            t.abort();
        }
    }

    /// Waits until the gRPC server ends (it ends on shutdown or fatal error).
    pub async fn wait(&mut self) -> Result<(), String> {
        match (&mut self.server).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("gRPC server failed: {e}")),
            Err(e) => Err(format!("gRPC server task failed: {e}")),
        }
    }
}

/// The built-in operator identity that `bulkheadctl ca init` issues.
pub fn builtin_operator(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "bulkhead", "operator").expect("static identity is valid")
}

/// The identity every control-plane replica serves as.
pub fn control_identity(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "bulkhead", "control").expect("static identity is valid")
}

/// What the control plane's own serving certificate is for.
#[derive(Clone)]
struct ServingNames {
    listen: SocketAddr,
    dns_names: Vec<String>,
}

/// A serving certificate from the issuer in force, and that issuer's
/// fingerprint.
fn serving_cert(
    trust: &Trust,
    names: &ServingNames,
) -> Result<(Arc<rustls::sign::CertifiedKey>, String), String> {
    let ca = trust.signer().map_err(|e| e.to_string())?;
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !names.listen.ip().is_unspecified() && !ips.contains(&names.listen.ip()) {
        ips.push(names.listen.ip());
    }
    let (chain, key) = ca
        .issue_local(
            &control_identity(ca.trust_domain()),
            &names.dns_names,
            &ips,
            SERVING_CERT_LIFETIME,
        )
        .map_err(|e| format!("cannot issue the control plane's serving certificate: {e}"))?;
    let key = CertSlot::certified_key(chain, key).map_err(|e| e.to_string())?;
    Ok((key, ca.fingerprint().to_owned()))
}

/// Renews the serving certificate at half its lifetime, and at once when
/// the trust record activates another issuer (or its key arrives): new
/// handshakes get the new one, open connections keep theirs.
async fn keep_serving_cert(
    trust: Arc<Trust>,
    names: ServingNames,
    slot: CertSlot,
    mut signed_by: String,
) {
    let mut records = trust.subscribe();
    let mut keys = trust.keyring().subscribe();
    let mut due = tokio::time::Instant::now() + SERVING_CERT_LIFETIME / 2;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            _ = records.changed() => {}
            _ = keys.changed() => {}
        }
        let active = trust.record().issuer().cert.fingerprint.clone();
        if tokio::time::Instant::now() < due && active == signed_by {
            continue;
        }
        match serving_cert(&trust, &names) {
            Ok((key, issuer)) => {
                slot.set(key);
                tracing::info!(%issuer, "serving certificate renewed");
                signed_by = issuer;
                due = tokio::time::Instant::now() + SERVING_CERT_LIFETIME / 2;
            }
            Err(error) => {
                tracing::error!(%error, "renewing the serving certificate failed; the current one stays in use");
                due = tokio::time::Instant::now() + Duration::from_secs(10);
            }
        }
    }
}

/// The webhook's TLS config, what it serves (for `bulkheadctl check`),
/// and the tasks that keep the certificate current (not yet spawned).
type WebhookTls = (
    Arc<rustls::ServerConfig>,
    WebhookServing,
    Vec<BoxFuture<'static, ()>>,
);

/// The webhook's TLS config, and for a self-managed certificate the tasks
/// that renew it and keep the webhook configuration's `caBundle` current
/// (not yet spawned). The first certificate is issued here, so that an
/// issuer that cannot sign stops start-up.
fn webhook_tls(trust: &Arc<Trust>, certificate: WebhookCertificate) -> Result<WebhookTls, String> {
    use crate::webhook::certificate;
    let slot = CertSlot::empty();
    let self_managed = matches!(certificate, WebhookCertificate::SelfManaged { .. });
    let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();
    match certificate {
        WebhookCertificate::Files { cert, key } => {
            slot.set(certificate::load_files(&cert, &key)?);
            tasks.push(Box::pin(certificate::reload_files_forever(
                cert,
                key,
                slot.clone(),
                WEBHOOK_FILES_RELOAD,
            )));
        }
        WebhookCertificate::SelfManaged {
            dns_names,
            lifetime,
            ca_bundle,
        } => {
            let first = certificate::first(trust, &dns_names, lifetime)?;
            slot.set(first.key.clone());
            let (renewed, renewals) = tokio::sync::watch::channel(0);
            tasks.push(Box::pin(certificate::renew_forever(
                trust.clone(),
                dns_names,
                lifetime,
                slot.clone(),
                first,
                renewed,
            )));
            match ca_bundle {
                Some(target) => {
                    let keeper = CaBundleKeeper {
                        api: target.api,
                        configuration: target.configuration,
                        bundle: trust.bundle().subscribe(),
                        resync: target.resync,
                    };
                    tasks.push(Box::pin(keeper.run(renewals)));
                }
                None => tracing::info!(
                    "no --webhook-configuration: the webhook's certificate is served, no caBundle is kept"
                ),
            }
        }
    }
    let serving = WebhookServing {
        slot: slot.clone(),
        self_managed,
    };
    let config =
        crate::webhook::server_config(Arc::new(slot)).map_err(|e| format!("webhook TLS: {e}"))?;
    Ok((Arc::new(config), serving, tasks))
}

/// The injector, rebuilt whenever the trust bundle changes when it hands
/// pods the bundle inline (a pod made during a rotation trusts both roots;
/// one made after, the new one only).
/// The injector in force, told of each rebuild.
type Injectors = tokio::sync::watch::Receiver<Arc<crate::webhook::Injector>>;

fn injectors(
    trust: &Arc<Trust>,
    settings: crate::webhook::InjectorSettings,
) -> Result<(Injectors, Option<BoxFuture<'static, ()>>), String> {
    use crate::webhook::Injector;
    let inline = settings.trust_bundle_pem.is_some();
    let build = move |roots: &[rustls_pki_types::CertificateDer<'_>]| {
        let mut settings = settings.clone();
        if settings.trust_bundle_pem.is_some() {
            settings.trust_bundle_pem = Some(
                roots
                    .iter()
                    .map(|r| crate::ca::pem_block("CERTIFICATE", r))
                    .collect(),
            );
        }
        Injector::new(settings).map(Arc::new)
    };
    let first =
        build(trust.bundle().get().roots_der()).map_err(|e| format!("webhook settings: {e}"))?;
    let (tx, rx) = tokio::sync::watch::channel(first);
    if !inline {
        return Ok((rx, None));
    }
    let mut bundles = trust.bundle().subscribe();
    let follow = async move {
        while bundles.changed().await.is_ok() {
            let roots = bundles.borrow_and_update().roots_der().to_vec();
            match build(&roots) {
                Ok(injector) => {
                    tx.send_replace(injector);
                    tracing::info!(
                        roots = roots.len(),
                        "injected pods now get the new trust bundle"
                    );
                }
                Err(error) => {
                    tracing::error!(%error, "cannot rebuild the injector with the new trust bundle; pods still get the previous one")
                }
            }
        }
    };
    Ok((rx, Some(Box::pin(follow))))
}

/// Binds the listeners and starts serving. Errors are one line for the user.
pub async fn start(
    mut settings: Settings,
    store: Arc<dyn Store>,
    metrics: PrometheusHandle,
) -> Result<Running, String> {
    let trust = settings.trust.clone();
    let td = trust.trust_domain().to_owned();
    let mut webhook_serving = None;
    let webhook = match settings.webhook.take() {
        Some(w) => {
            let (tls, serving, mut tasks) = webhook_tls(&trust, w.certificate)?;
            webhook_serving = Some(serving);
            let (injector, follow) = injectors(&trust, w.injector)?;
            tasks.extend(follow);
            Some((w.listen, tls, injector, tasks))
        }
        None => None,
    };

    let slot = CertSlot::empty();
    let names = ServingNames {
        listen: settings.listen,
        dns_names: settings.dns_names.clone(),
    };
    let (key, signed_by) = serving_cert(&trust, &names)?;
    slot.set(key);
    let server_config = tls::server_config(
        trust.bundle(),
        slot.clone(),
        false,
        &[tls::ALPN_H2, b"http/1.1"],
    )
    .map_err(|e| e.to_string())?;

    let grpc_listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("--listen {}: cannot bind: {e}", settings.listen))?;
    let admin_listener = TcpListener::bind(settings.admin)
        .await
        .map_err(|e| format!("--admin {}: cannot bind: {e}", settings.admin))?;
    let webhook_listener = match &webhook {
        Some((listen, ..)) => Some(
            TcpListener::bind(listen)
                .await
                .map_err(|e| format!("--webhook {listen}: cannot bind: {e}"))?,
        ),
        None => None,
    };
    let grpc_addr = grpc_listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;

    let hub = Arc::new(Hub::new());
    let mut operators: BTreeSet<SpiffeId> = settings.operators.into_iter().collect();
    operators.insert(builtin_operator(&td));
    let measurements = Arc::new(crate::measure::Measurements::new(
        store.clone(),
        crate::measure::MeasureSettings {
            report_interval: settings.report_interval,
            retention: settings.stats_retention,
        },
        &settings.replica,
    ));
    let events = Arc::new(crate::events::Events::new(
        store.clone(),
        settings.events,
        &settings.replica,
    ));
    let plane = Arc::new(ControlPlane {
        store: store.clone(),
        trust: trust.clone(),
        hub: hub.clone(),
        operators,
        cert_lifetime: settings.cert_lifetime,
        lease_ttl: settings.lease_ttl,
        k8s: settings.k8s.clone(),
        topology: settings.topology.clone(),
        measurements: measurements.clone(),
        replica: settings.replica.clone(),
        webhook: webhook_serving,
        events: events.clone(),
    });

    let mut tasks = vec![
        tokio::spawn(hub.clone().run(store.clone())),
        tokio::spawn(crate::trust::follow(
            trust.clone(),
            hub.clone(),
            store.clone(),
        )),
        tokio::spawn(trust.keyring().clone().reload_forever()),
        tokio::spawn(crate::trust::signers::announce(
            trust.clone(),
            store.clone(),
            settings.replica.clone(),
        )),
        tokio::spawn(crate::trust::expiry::warn_forever(trust.clone())),
        tokio::spawn(measurements.clone().flush_forever()),
        tokio::spawn(crate::events::upkeep::refusals_forever(events.clone())),
    ];
    // Fold histogram samples in even when nobody scrapes /metrics.
    {
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        }));
    }
    {
        let (leading_tx, leading) = tokio::sync::watch::channel(false);
        let replica = format!("{}-{:08x}", settings.replica, rand::random::<u32>());
        tasks.push(tokio::spawn(crate::rollout::leader::campaign(
            store.clone(),
            replica.clone(),
            settings.leader_lease_ttl,
            leading_tx,
        )));
        // Expiries: once, by whichever replica claims each first.
        tasks.push(tokio::spawn(crate::events::upkeep::expiries_forever(
            events.clone(),
            hub.unexplained_deletions(),
        )));
        // The trim: by the replica that leads.
        tasks.push(tokio::spawn(crate::events::upkeep::trim_forever(
            events.clone(),
            store.clone(),
            leading.clone(),
        )));
        let controller = crate::rollout::controller::Controller {
            plane: plane.clone(),
            replica,
            leading,
        };
        tasks.push(tokio::spawn(controller.run()));
    }
    if let Some(k8s) = &settings.k8s {
        tasks.push(tokio::spawn(
            k8s.clone().reload_forever(Duration::from_secs(30)),
        ));
    }
    tasks.push(tokio::spawn(admin_http::serve(
        admin_listener,
        admin_http::AdminState {
            metrics,
            store: store.clone(),
            hub: hub.clone(),
            trust: trust.clone(),
            measurements,
        },
    )));
    tasks.push(tokio::spawn(keep_serving_cert(
        trust.clone(),
        names,
        slot.clone(),
        signed_by,
    )));

    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut webhook_addr = None;
    if let (Some((_, tls, injector, upkeep)), Some(listener)) = (webhook, webhook_listener) {
        webhook_addr = Some(listener.local_addr().map_err(|e| e.to_string())?);
        let mut stop = shutdown_rx.clone();
        tasks.push(tokio::spawn(crate::webhook::serve(
            listener,
            TlsAcceptor::from(tls),
            injector,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
        tasks.extend(upkeep.into_iter().map(tokio::spawn));
    }
    let incoming = server::accept_tls(
        grpc_listener,
        TlsAcceptor::from(Arc::new(server_config)),
        trust.bundle().clone(),
    );
    let mut shutdown_rx = shutdown_rx;
    let max = api::MAX_REQUEST_BYTES;
    // The gRPC services, and beside them on the same TLS listener the
    // event stream as Server-Sent Events (for web pages).
    let routes = tonic::service::Routes::new(
        IdentityServer::new(api::identity::IdentityService::new(plane.clone()))
            .max_decoding_message_size(max),
    )
    .add_service(
        DiscoveryServer::new(api::discovery::DiscoveryService::new(plane.clone()))
            .max_decoding_message_size(max),
    )
    .add_service(
        AdminServer::new(api::admin::AdminService::new(plane.clone()))
            .max_decoding_message_size(max),
    )
    .into_axum_router()
    .route_service(crate::events::sse::PATH, {
        let plane = plane.clone();
        tower::service_fn(move |request: http::Request<_>| {
            crate::events::sse::serve(plane.clone(), request)
        })
    });
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(256))
        // A browser's EventSource may speak HTTP/1.1.
        .accept_http1(true)
        // Bounds the time to a response (for Watch: to the stream's start,
        // not its length); store calls have their own, shorter limits.
        .timeout(Duration::from_secs(30))
        .add_routes(tonic::service::Routes::from(routes));
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        ReceiverStream::new(incoming),
        async move {
            let _ = shutdown_rx.wait_for(|s| *s).await;
        },
    ));
    tracing::info!(%grpc_addr, %admin_addr, webhook = ?webhook_addr, trust_domain = %td, "control plane serving");
    Ok(Running {
        grpc_addr,
        admin_addr,
        webhook_addr,
        plane,
        shutdown,
        tasks,
        server,
    })
}
