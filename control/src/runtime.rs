//! Assembling a control plane: store, CA, mesh view, gRPC, admin and
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
use bulkhead_tls::{self as tls, CertSlot, TrustBundle};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{self, ControlPlane};
use crate::ca::Ca;
use crate::hub::Hub;
use crate::k8s_api::ApiServer;
use crate::store::Store;
use crate::webhook::ca_bundle::{CaBundleKeeper, WantedBundle};
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
    pub ca: Arc<Ca>,
    /// Operators besides the built-in `bulkhead/operator`.
    pub operators: Vec<SpiffeId>,
    pub cert_lifetime: Duration,
    pub lease_ttl: Duration,
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
    pub injector: Arc<crate::webhook::Injector>,
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

fn serving_cert(ca: &Ca, settings: &Settings) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !settings.listen.ip().is_unspecified() && !ips.contains(&settings.listen.ip()) {
        ips.push(settings.listen.ip());
    }
    let (chain, key) = ca
        .issue_local(
            &control_identity(ca.trust_domain()),
            &settings.dns_names,
            &ips,
            SERVING_CERT_LIFETIME,
        )
        .map_err(|e| format!("cannot issue the control plane's serving certificate: {e}"))?;
    CertSlot::certified_key(chain, key).map_err(|e| e.to_string())
}

/// The webhook's TLS config, and for a self-managed certificate the tasks
/// that renew it and keep the webhook configuration's `caBundle` current
/// (not yet spawned). The first certificate is issued here, so that an
/// issuer that cannot sign stops start-up.
fn webhook_tls(
    ca: &Arc<Ca>,
    certificate: WebhookCertificate,
) -> Result<(Arc<rustls::ServerConfig>, Vec<BoxFuture<'static, ()>>), String> {
    use crate::webhook::certificate;
    let slot = CertSlot::empty();
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
            let first = certificate::first(ca, &dns_names, lifetime)?;
            slot.set(first.key);
            let (renewed, renewals) = tokio::sync::watch::channel(0);
            tasks.push(Box::pin(certificate::renew_forever(
                ca.clone(),
                dns_names,
                lifetime,
                slot.clone(),
                first.not_after,
                renewed,
            )));
            match ca_bundle {
                Some(target) => {
                    let keeper = CaBundleKeeper {
                        api: target.api,
                        configuration: target.configuration,
                        want: WantedBundle::new(ca.bundle_der()),
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
    let config =
        crate::webhook::server_config(Arc::new(slot)).map_err(|e| format!("webhook TLS: {e}"))?;
    Ok((Arc::new(config), tasks))
}

/// Binds the listeners and starts serving. Errors are one line for the user.
pub async fn start(
    mut settings: Settings,
    store: Arc<dyn Store>,
    metrics: PrometheusHandle,
) -> Result<Running, String> {
    let ca = settings.ca.clone();
    let td = ca.trust_domain().to_owned();
    let bundle = TrustBundle::new(ca.bundle_der().to_vec(), &td).map_err(|e| e.to_string())?;
    let webhook = match settings.webhook.take() {
        Some(w) => {
            let (tls, tasks) = webhook_tls(&ca, w.certificate)?;
            Some((w.listen, tls, w.injector, tasks))
        }
        None => None,
    };

    let slot = CertSlot::empty();
    slot.set(serving_cert(&ca, &settings)?);
    let server_config = tls::server_config(&bundle, slot.clone(), false, &[tls::ALPN_H2])
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
    let plane = Arc::new(ControlPlane {
        store: store.clone(),
        ca: ca.clone(),
        hub: hub.clone(),
        operators,
        cert_lifetime: settings.cert_lifetime,
        lease_ttl: settings.lease_ttl,
        k8s: settings.k8s.clone(),
        topology: settings.topology.clone(),
    });

    let mut tasks = vec![tokio::spawn(hub.clone().run(store.clone()))];
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
        },
    )));
    // Renew the serving certificate at half its lifetime; handshakes pick up
    // the new one, open connections keep theirs.
    {
        let ca = ca.clone();
        let slot = slot.clone();
        let settings_dns = settings.dns_names.clone();
        let listen = settings.listen;
        tasks.push(tokio::spawn(async move {
            let renew_settings = Settings {
                listen,
                admin: listen,
                ca: ca.clone(),
                operators: vec![],
                cert_lifetime: SERVING_CERT_LIFETIME,
                lease_ttl: SERVING_CERT_LIFETIME,
                dns_names: settings_dns,
                k8s: None,
                topology: None,
                webhook: None,
            };
            loop {
                tokio::time::sleep(SERVING_CERT_LIFETIME / 2).await;
                match serving_cert(&ca, &renew_settings) {
                    Ok(key) => slot.set(key),
                    Err(error) => {
                        tracing::error!(%error, "renewing the serving certificate failed")
                    }
                }
            }
        }));
    }

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
        td.clone(),
    );
    let mut shutdown_rx = shutdown_rx;
    let max = api::MAX_REQUEST_BYTES;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(256))
        // Bounds the time to a response (for Watch: to the stream's start,
        // not its length); store calls have their own, shorter limits.
        .timeout(Duration::from_secs(30))
        .add_service(
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
        );
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
