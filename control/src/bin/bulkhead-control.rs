//! `bulkhead-control`: the control plane binary. See `--help`.

use std::process::ExitCode;
use std::sync::Arc;

use bulkhead_control::ca::IssuerFiles;
use bulkhead_control::config::{ControlArgs, StoreKind};
use bulkhead_control::k8s_api::ApiServer;
use bulkhead_control::runtime::{self, CaBundleTarget, Settings, WebhookCertificate};
use bulkhead_control::store::{EtcdConfig, EtcdStore, EtcdTls, MemoryStore, Store};
use bulkhead_control::telemetry;
use bulkhead_control::topology::Topology;
use bulkhead_control::trust::{NEXT_ISSUER_CERT, NEXT_ISSUER_KEY, Trust, TrustFiles};
use bulkhead_control::webhook::is_dns_subdomain;
use bulkhead_proto::SpiffeId;

/// Exit code for bad flags, unreadable files and other usage errors.
const USAGE: u8 = 2;

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("bulkhead-control: {message}");
    ExitCode::from(USAGE)
}

fn main() -> ExitCode {
    let args: ControlArgs =
        match bulkhead_process::parse_args("bulkhead-control", std::env::args_os()) {
            Ok(a) => a,
            Err(code) => return code,
        };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bulkhead-control: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: ControlArgs) -> ExitCode {
    if let Err(e) = bulkhead_process::check_log_filter(&args.log_level) {
        return usage_error(format!("--log-level: {e}"));
    }
    telemetry::init_logs(args.log_format, &args.log_level);
    bulkhead_tls::install_default_provider();
    tracing::debug!(config = ?args, "effective configuration");

    if let Err(e) = bulkhead_proto::identity::validate_trust_domain(&args.trust_domain) {
        return usage_error(format!("--trust-domain: {e}"));
    }
    let mut operators = Vec::new();
    for op in &args.operators {
        let parsed = if op.starts_with("spiffe://") {
            op.parse::<SpiffeId>()
        } else {
            SpiffeId::from_ns_sa(&args.trust_domain, op)
        };
        match parsed {
            Ok(id) => operators.push(id),
            Err(e) => return usage_error(format!("--operators {op:?}: {e}")),
        }
    }
    let trust = match Trust::load(&trust_files(&args)) {
        Ok(trust) => Arc::new(trust),
        Err(e) => return usage_error(e),
    };
    let k8s = match (&args.k8s_jwks, &args.k8s_issuer) {
        (Some(jwks), Some(issuer)) => match k8s_verifier(&args, jwks, issuer).await {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => return usage_error(format!("--k8s-jwks: {e}")),
        },
        _ => None,
    };
    let metrics = match telemetry::init_metrics() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bulkhead-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store: Arc<dyn Store> = match args.store {
        StoreKind::Memory => {
            tracing::warn!("using the in-memory store: state is lost when this process exits");
            Arc::new(MemoryStore::new())
        }
        StoreKind::Etcd => {
            let mut prefix = args.prefix.clone();
            if !prefix.ends_with('/') {
                prefix.push('/');
            }
            let tls = match etcd_tls(&args) {
                Ok(t) => t,
                Err(e) => return usage_error(e),
            };
            let config = EtcdConfig {
                endpoints: args.etcd_endpoints.clone(),
                prefix,
                tls,
                ..EtcdConfig::default()
            };
            match EtcdStore::connect(config).await {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    eprintln!(
                        "bulkhead-control: --etcd-endpoints {}: {e}",
                        args.etcd_endpoints.join(",")
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let api = match api_server(&args) {
        Ok(api) => api,
        Err(e) => return usage_error(e),
    };
    let topology = match &api {
        Some(api) if args.node_topology => {
            tracing::info!(api = %api.base(), "endpoint zones and regions come from Node labels");
            Some(Arc::new(Topology::new(api.clone())))
        }
        _ => None,
    };
    let webhook = match webhook_settings(&args, api) {
        Ok(w) => w,
        Err(e) => return usage_error(e),
    };
    let replica = args.replica_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "bulkhead-control".to_owned())
    });
    let settings = Settings {
        listen: args.listen,
        admin: args.admin,
        trust,
        replica,
        operators,
        cert_lifetime: args.cert_lifetime,
        lease_ttl: args.lease_ttl,
        leader_lease_ttl: args.leader_lease_ttl,
        report_interval: args.report_interval,
        stats_retention: args.stats_retention,
        events: bulkhead_control::events::EventSettings {
            retention: args.events_retention,
            max: args.events_max,
        },
        dns_names: args.dns_names.clone(),
        k8s,
        topology,
        webhook,
    };
    let mut running = match runtime::start(settings, store, metrics).await {
        Ok(r) => r,
        Err(e) => return usage_error(e),
    };
    if let Some(path) = &args.addresses_file {
        let mut json = serde_json::json!({
            "grpc": running.grpc_addr.to_string(),
            "admin": running.admin_addr.to_string(),
        });
        if let Some(webhook) = running.webhook_addr {
            json["webhook"] = webhook.to_string().into();
        }
        // Written whole, then renamed: a reader never sees half a file.
        let tmp = path.with_extension("tmp");
        if let Err(e) =
            std::fs::write(&tmp, format!("{json:#}\n")).and_then(|()| std::fs::rename(&tmp, path))
        {
            running.shutdown().await;
            return usage_error(format!("--addresses-file {}: {e}", path.display()));
        }
    }
    tokio::select! {
        result = running.wait() => {
            if let Err(e) = result {
                tracing::error!(error = %e, "control plane stopped");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        () = bulkhead_process::shutdown_signal() => {
            tracing::info!("shutting down");
            running.shutdown().await;
            ExitCode::SUCCESS
        }
    }
}

/// The issuer files (the next one beside the current one unless named)
/// and the bundle the trust starts from.
fn trust_files(args: &ControlArgs) -> TrustFiles {
    let beside = |file: &std::path::Path, name: &str| file.with_file_name(name);
    TrustFiles {
        trust_domain: args.trust_domain.clone(),
        bundle: args.trust_bundle.clone(),
        issuers: vec![
            IssuerFiles {
                flag: "--issuer-cert",
                cert: args.issuer_cert.clone(),
                key: args.issuer_key.clone(),
                optional: false,
            },
            IssuerFiles {
                flag: "--next-issuer-cert",
                cert: args
                    .next_issuer_cert
                    .clone()
                    .unwrap_or_else(|| beside(&args.issuer_cert, NEXT_ISSUER_CERT)),
                key: args
                    .next_issuer_key
                    .clone()
                    .unwrap_or_else(|| beside(&args.issuer_key, NEXT_ISSUER_KEY)),
                optional: true,
            },
        ],
        reload: args.issuer_reload,
    }
}

async fn k8s_verifier(
    args: &ControlArgs,
    jwks: &str,
    issuer: &str,
) -> Result<bulkhead_control::attest::K8sVerifier, String> {
    use bulkhead_control::attest::{K8sVerifier, fetch::Remote};
    if jwks.starts_with("https://") {
        let remote = Remote {
            url: jwks.to_owned(),
            ca_pem: read_file("--k8s-api-ca", &args.k8s_api_ca)?,
            token_file: args
                .k8s_api_token
                .exists()
                .then(|| args.k8s_api_token.clone()),
        };
        K8sVerifier::from_url(remote, issuer, &args.k8s_audience, &args.trust_domain)
            .await
            .map_err(|e| e.to_string())
    } else {
        K8sVerifier::new(
            std::path::Path::new(jwks),
            issuer,
            &args.k8s_audience,
            &args.trust_domain,
        )
        .map_err(|e| e.to_string())
    }
}

/// The API server of --k8s-api, with its CA and token.
fn api_server(args: &ControlArgs) -> Result<Option<Arc<ApiServer>>, String> {
    let Some(url) = &args.k8s_api else {
        return Ok(None);
    };
    let ca_pem = read_file("--k8s-api-ca", &args.k8s_api_ca)?;
    bulkhead_tls::certs_from_pem(&ca_pem, &args.k8s_api_ca.display().to_string())
        .map_err(|e| format!("--k8s-api-ca {e}"))?;
    let token = args
        .k8s_api_token
        .exists()
        .then(|| args.k8s_api_token.clone());
    let api = ApiServer::new(url, &ca_pem, token).map_err(|e| format!("--k8s-api {e}"))?;
    Ok(Some(Arc::new(api)))
}

fn read_file(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// TLS to etcd from --etcd-ca / --etcd-cert / --etcd-key.
fn etcd_tls(args: &ControlArgs) -> Result<Option<EtcdTls>, String> {
    let Some(ca) = &args.etcd_ca else {
        if args
            .etcd_endpoints
            .iter()
            .any(|e| e.starts_with("https://"))
        {
            return Err("--etcd-endpoints uses https:// but no --etcd-ca was given".into());
        }
        return Ok(None);
    };
    let ca_pem = read_file("--etcd-ca", ca)?;
    bulkhead_tls::certs_from_pem(&ca_pem, &ca.display().to_string())
        .map_err(|e| format!("--etcd-ca {e}"))?;
    let client = match (&args.etcd_cert, &args.etcd_key) {
        (Some(cert), Some(key)) => Some((
            read_file("--etcd-cert", cert)?,
            read_file("--etcd-key", key)?,
        )),
        _ => None,
    };
    Ok(Some(EtcdTls { ca_pem, client }))
}

/// Where the webhook listens when --webhook-cert is given without --webhook.
const DEFAULT_WEBHOOK: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9443);

/// The admission webhook, when --webhook or --webhook-cert is given: with
/// the certificate given, or one the control plane makes (and, with
/// --webhook-configuration, whose CA it keeps in that configuration).
fn webhook_settings(
    args: &ControlArgs,
    api: Option<Arc<ApiServer>>,
) -> Result<Option<runtime::WebhookSettings>, String> {
    let listen = match (args.webhook, &args.webhook_cert) {
        (Some(listen), _) => listen,
        (None, Some(_)) => DEFAULT_WEBHOOK,
        (None, None) => return Ok(None),
    };
    let certificate = match (&args.webhook_cert, &args.webhook_key) {
        (Some(cert), Some(key)) => {
            // Checked now, so that bad files are a usage error.
            bulkhead_control::webhook::certificate::load_files(cert, key)
                .map_err(|e| format!("--webhook-cert/--webhook-key: {e}"))?;
            WebhookCertificate::Files {
                cert: cert.clone(),
                key: key.clone(),
            }
        }
        _ => self_managed_certificate(args, api)?,
    };
    let mut injector = bulkhead_control::webhook::InjectorSettings::default();
    // Injected pods get the trust bundle inline: no ConfigMap needed in
    // every namespace the mesh reaches.
    let bundle = read_file("--trust-bundle", &args.trust_bundle)?;
    injector.trust_bundle_pem =
        Some(String::from_utf8(bundle).map_err(|_| "--trust-bundle: not PEM text".to_owned())?);
    if let Some(image) = &args.proxy_image {
        injector.proxy_image = image.clone();
        injector.init_image = image.clone();
    }
    if let Some(url) = &args.inject_control_url {
        injector.control_url = url.clone();
    }
    // Checked now, so that bad settings are a usage error.
    bulkhead_control::webhook::Injector::new(injector.clone())
        .map_err(|e| format!("webhook settings: {e}"))?;
    Ok(Some(runtime::WebhookSettings {
        listen,
        certificate,
        injector,
    }))
}

/// The certificate the control plane makes: for --webhook-dns-names, or
/// `bulkhead-control.<--namespace>.svc`.
fn self_managed_certificate(
    args: &ControlArgs,
    api: Option<Arc<ApiServer>>,
) -> Result<WebhookCertificate, String> {
    let dns_names = if args.webhook_dns_names.is_empty() {
        if !is_dns_subdomain(&args.namespace) || args.namespace.contains('.') {
            return Err(format!(
                "--namespace {:?}: not a Kubernetes namespace name",
                args.namespace
            ));
        }
        vec![format!("bulkhead-control.{}.svc", args.namespace)]
    } else {
        args.webhook_dns_names.clone()
    };
    if let Some(bad) = dns_names.iter().find(|n| !is_dns_subdomain(n)) {
        return Err(format!(
            "--webhook-dns-names {bad:?}: not a DNS name (expected e.g. bulkhead-control.bulkhead.svc)"
        ));
    }
    let ca_bundle = match (&args.webhook_configuration, api) {
        (Some(name), Some(api)) => {
            if !is_dns_subdomain(name) {
                return Err(format!(
                    "--webhook-configuration {name:?}: not a Kubernetes object name"
                ));
            }
            Some(CaBundleTarget {
                api,
                configuration: name.clone(),
                resync: args.webhook_configuration_resync,
            })
        }
        // clap makes --webhook-configuration require --k8s-api.
        _ => None,
    };
    Ok(WebhookCertificate::SelfManaged {
        dns_names,
        lifetime: args.webhook_cert_lifetime,
        ca_bundle,
    })
}
