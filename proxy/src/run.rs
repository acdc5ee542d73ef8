//! Assembling a sidecar: identity first, then config, listeners, and the
//! registration once the app is ready; on SIGTERM deregister, stop
//! accepting, let in-flight work finish (HTTP/2 GOAWAY), exit within the
//! grace period.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::pb;
use bulkhead_tls::{self as tls, CertSlot, TrustBundle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::control_client::{self, Registration};
use crate::dns;
use crate::identity::{self, IdentityError};
use crate::inbound::{self, Inbound};
use crate::outbound::{self, Outbound};
use crate::pool::Pool;
use crate::state::{self, MeshState};
use crate::wire;

/// How long a deregistered sidecar keeps accepting before it drains.
const DEREGISTER_GRACE: Duration = Duration::from_secs(1);

/// How the sidecar ended, for the exit code.
#[derive(Debug)]
pub enum Exit {
    /// Bad configuration or files: exit 2.
    Usage(String),
    /// Could not run: exit 1.
    Failure(String),
}

async fn bind(flag: &str, addr: std::net::SocketAddr) -> Result<TcpListener, Exit> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Exit::Usage(format!("{flag} {addr}: cannot listen: {e}")))
}

/// Gets the first certificate: a still-valid saved one, else the token,
/// retrying while the control plane is unreachable.
async fn first_certificate(
    config: &Config,
    bundle: &TrustBundle,
    slot: &CertSlot,
) -> Result<identity::Issued, Exit> {
    let td = bundle.trust_domain().to_owned();
    if let Some(dir) = &config.state_dir
        && let Some(saved) = identity::load_saved(dir, slot, &td)
    {
        tracing::info!(identity = %saved.id, "using the certificate kept in the state dir");
        return Ok(saved);
    }
    let channel = bulkhead_tls::channel(&config.control, bundle, None)
        .map_err(|e| Exit::Usage(format!("--control: {e}")))?;
    let mut backoff = Duration::from_millis(200);
    loop {
        match identity::certify(
            channel.clone(),
            &config.token_file,
            config.attestation,
            slot,
            &td,
            config.state_dir.as_deref(),
        )
        .await
        {
            Ok(issued) => return Ok(issued),
            Err(IdentityError::Unavailable(why)) => {
                tracing::warn!(reason = %why, retry_in = ?backoff, "control plane unreachable; retrying the certificate request");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e @ IdentityError::Token { .. }) => {
                return Err(Exit::Usage(format!("--token-file: {e}")));
            }
            Err(e) => return Err(Exit::Failure(e.to_string())),
        }
    }
}

pub async fn run(
    config: Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(), Exit> {
    // Histograms keep every sample until upkeep folds them in; without it a
    // sidecar nobody scrapes grows without bound (found by bench/).
    {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        });
    }
    let (bundle_pem, what) = config.trust_bundle.read().map_err(Exit::Usage)?;
    let roots = tls::certs_from_pem(&bundle_pem, &what)
        .map_err(|e| Exit::Usage(format!("--trust-bundle {e}")))?;
    let td = config
        .trust_domain
        .clone()
        .or_else(|| tls::trust_domain_of_roots(&roots))
        .unwrap_or_else(|| bulkhead_proto::identity::DEFAULT_TRUST_DOMAIN.to_owned());
    let bundle = TrustBundle::new(roots, &td)
        .map_err(|e| Exit::Usage(format!("--trust-bundle {what}: {e}")))?;
    if let Some(dir) = &config.state_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| Exit::Usage(format!("--state-dir {}: {e}", dir.display())))?;
    }

    // Listeners first, so a port clash is reported at once.
    let inbound_listener = match bind("--inbound", config.inbound).await {
        // `[::]` needs IPv6; without it, take every IPv4 address instead.
        Err(_)
            if config.inbound.ip() == std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED) =>
        {
            let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], config.inbound.port()));
            tracing::warn!(%v4, "no IPv6 here: inbound listens on IPv4 only");
            bind("--inbound", v4).await?
        }
        other => other?,
    };
    let admin_listener = bind("--admin", config.admin).await?;
    let mut capture_listeners = Vec::new();
    for addr in &config.outbound {
        capture_listeners.push(bind("--outbound", *addr).await?);
    }
    let mut upstream_listeners = Vec::new();
    for up in &config.upstreams {
        upstream_listeners.push((bind("--upstream", up.listen).await?, up.clone()));
    }

    let slot = CertSlot::empty();
    let (states_tx, states) = watch::channel(Arc::new(MeshState::default()));
    if let Some(dir) = &config.state_dir {
        match state::load(dir) {
            Ok(Some(saved)) => {
                tracing::info!(
                    revision = saved.revision,
                    "serving on the last saved config until the control plane answers"
                );
                states_tx.send_replace(Arc::new(saved));
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "ignoring the saved config"),
        }
    }
    let draining = CancellationToken::new();
    let admin = Arc::new(Admin {
        metrics,
        slot: slot.clone(),
        states: states.clone(),
        app: config.app,
        draining: draining.clone(),
    });
    tokio::spawn(admin::serve(admin_listener, admin.clone()));

    // Outbound listeners serve from the start: before the first
    // certificate and config, captured or local calls are refused (and
    // counted) rather than left waiting in a backlog.
    let tracker = TaskTracker::new();
    let outbound = Arc::new(Outbound {
        locality: config.locality.clone(),
        states: states.clone(),
        pool: Pool::new(bundle.clone(), slot.clone()),
        balancers: outbound::Balancers::default(),
        request_timeout: config.request_timeout,
        tcp_idle_timeout: config.tcp_idle_timeout,
        budget: outbound::RetryBudget::default(),
    });
    for (listener, up) in upstream_listeners {
        tokio::spawn(outbound::serve(
            listener,
            up,
            outbound.clone(),
            draining.clone(),
            tracker.clone(),
        ));
    }
    for listener in capture_listeners {
        let egress = config.egress == crate::config::Egress::Allow;
        tokio::spawn(outbound::serve_captured(
            listener,
            outbound.clone(),
            egress,
            draining.clone(),
            tracker.clone(),
        ));
    }
    let names: Arc<dyn dns::MeshNames> = Arc::new(outbound::MeshListeners::new(
        outbound.clone(),
        draining.clone(),
        tracker.clone(),
    ));
    for &listen in &config.dns {
        let names = names.clone();
        let dns_config = dns::DnsConfig {
            listen,
            own_namespace: config.namespace.clone(),
            cluster_domain: config.cluster_domain.clone(),
            forward: dns::Forward::System,
        };
        let server = dns::DnsServer::bind(dns_config, names)
            .await
            .map_err(|e| Exit::Usage(format!("--dns: {e}")))?;
        tracing::info!(addr = %server.local_addr(), "mesh DNS serving");
        tokio::spawn(server.run(draining.clone()));
    }
    let issued = first_certificate(&config, &bundle, &slot).await?;
    let mtls = bulkhead_tls::channel(&config.control, &bundle, Some(slot.clone()))
        .map_err(|e| Exit::Usage(format!("--control: {e}")))?;
    tokio::spawn(identity::renew_forever(
        mtls.clone(),
        slot.clone(),
        issued,
        td.clone(),
        config.state_dir.clone(),
        bundle.clone(),
    ));

    // With mesh DNS or capture the app may call any service: watch them all.
    let services = if !config.dns.is_empty() || !config.outbound.is_empty() {
        vec!["*".to_owned()]
    } else {
        config
            .upstreams
            .iter()
            .map(|u| format!("{}.{}", u.service, u.namespace))
            .collect()
    };
    let watch_request = pb::WatchRequest {
        services,
        own_service: config.service.clone(),
    };
    tokio::spawn(control_client::watch_forever(
        mtls.clone(),
        watch_request,
        states_tx,
        config.state_dir.clone(),
    ));

    let (app_http1, app_http2) = Inbound::app_clients();
    let server_config = tls::server_config(&bundle, slot.clone(), true, &[wire::ALPN])
        .map_err(|e| Exit::Failure(e.to_string()))?;
    let inbound = Arc::new(Inbound {
        tls: TlsAcceptor::from(Arc::new(server_config)),
        trust_domain: td.clone(),
        namespace: config.namespace.clone(),
        service: config.service.clone(),
        version: config.version.clone(),
        app: config.app,
        app_authority: config
            .app
            .and_then(|app| http::uri::Authority::try_from(app.to_string()).ok()),
        app_protocol: config.app_protocol,
        states: states.clone(),
        app_http1,
        app_http2,
        request_timeout: config.request_timeout,
        tcp_idle_timeout: config.tcp_idle_timeout,
        allow_lists: inbound::AllowListCache::default(),
    });
    tokio::spawn(inbound::serve(
        inbound_listener,
        inbound,
        draining.clone(),
        tracker.clone(),
    ));

    // Endpoint sets follow the config; connections to endpoints that left
    // are dropped from the pool.
    {
        let outbound = outbound.clone();
        let mut states = states.clone();
        tokio::spawn(async move {
            while states.changed().await.is_ok() {
                let state = states.borrow_and_update().clone();
                outbound.balancers.refresh(&state);
                let live: std::collections::HashSet<std::net::SocketAddr> = state
                    .endpoints
                    .values()
                    .flat_map(|s| s.values())
                    .map(|e| std::net::SocketAddr::new(e.address, e.inbound_port))
                    .collect();
                outbound.pool.retain(|a| live.contains(a));
            }
        });
    }

    // Register once ready (certificate, config with our Service, app up).
    let registration = {
        let admin = admin.clone();
        let config = config.clone();
        let states = states.clone();
        let inbound_port = config.inbound.port();
        let mtls = mtls.clone();
        tokio::spawn(async move {
            loop {
                let ports = states
                    .borrow()
                    .service(&config.namespace, &config.service)
                    .map(|s| {
                        s.spec
                            .ports
                            .iter()
                            .map(|p| pb::Port {
                                port: u32::from(p.port),
                                protocol: p.protocol.as_str().to_owned(),
                            })
                            .collect::<Vec<_>>()
                    });
                if let (Ok(()), Some(ports)) = (admin.readiness().await, ports) {
                    let record = pb::Endpoint {
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
                    };
                    return Registration::start(mtls, record);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    bulkhead_process::shutdown_signal().await;
    tracing::info!(grace = ?config.drain_timeout, "SIGTERM: deregistering, then draining");
    // Deregister first so callers stop picking us, then stop accepting.
    if registration.is_finished()
        && let Ok(reg) = registration.await
    {
        reg.deregister().await;
    }
    // Callers hear of the deregistration within milliseconds; keep
    // accepting for a moment so ones that had already picked us still land.
    tokio::time::sleep(DEREGISTER_GRACE.min(config.drain_timeout / 2)).await;
    draining.cancel();
    tracker.close();
    if tokio::time::timeout(config.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over with connections still open; closing them");
    }
    Ok(())
}
