//! What injection adds to a pod: the `bulkhead-init` capture container, the
//! `bulkhead-proxy` native sidecar and their volumes, as k8s-openapi types.
//!
//! Static settings go in as flags; everything that differs per pod at run
//! time (name, namespace, node, service account, IP) comes from the
//! downward API, so one pod template serves every replica.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::InjectorSettings;

pub const INIT_CONTAINER: &str = "bulkhead-init";
pub const PROXY_CONTAINER: &str = "bulkhead-proxy";
pub const TOKEN_VOLUME: &str = "bulkhead-token";
pub const TRUST_BUNDLE_VOLUME: &str = "bulkhead-trust-bundle";
pub const XTABLES_LOCK_VOLUME: &str = "bulkhead-xtables-lock";
/// The sidecar's `--state-dir`: last config and certificate, so a sidecar
/// container restarted while the control plane is away serves on them. In
/// memory (tmpfs): the key never touches the node's disk.
pub const STATE_VOLUME: &str = "bulkhead-state";
pub const STATE_DIR: &str = "/var/run/bulkhead/state";
/// Room for the state: the mesh snapshot a sidecar subscribes to plus a
/// certificate; counted against the pod's memory.
pub const STATE_SIZE_LIMIT: &str = "16Mi";
pub const TOKEN_DIR: &str = "/var/run/bulkhead/token";
pub const TOKEN_FILE: &str = "/var/run/bulkhead/token/token";
pub const TRUST_BUNDLE_DIR: &str = "/var/run/bulkhead/bundle";
pub const TRUST_BUNDLE_FILE: &str = "/var/run/bulkhead/bundle/bundle.crt";
/// The key the trust bundle ConfigMap holds the PEM roots under.
pub const TRUST_BUNDLE_KEY: &str = "bundle.crt";
/// The projected token's audience: what the control plane checks.
pub const TOKEN_AUDIENCE: &str = "bulkhead";
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// How the sidecar proves its identity (read by the proxy once the control
/// plane accepts Kubernetes service-account JWTs).
pub const ATTESTATION: &str = "k8s-jwt";

/// What the injector learned about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub service: String,
    pub version: String,
    /// The app ports the sidecar forwards inbound calls to.
    pub app: Option<App>,
    pub skip_inbound: Vec<u16>,
    pub skip_outbound: Vec<u16>,
    /// The rewritten kubelet probes' table, for the proxy's
    /// `BULKHEAD_APP_PROBES` ([`probes`](super::probes)).
    pub app_probes: Option<String>,
}

/// The app's ports (each declared port reaches the app on the same number
/// on localhost) and the protocol of a port its Service does not declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    pub ports: Vec<u16>,
    pub protocol: AppProtocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProtocol {
    Http,
    Grpc,
    Tcp,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
        }
    }
}

fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn port_list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `bulkhead-proxy init-iptables`: root with NET_ADMIN and NET_RAW for the
/// moment it takes to write the pod's nat table, nothing else.
pub fn init_container(settings: &InjectorSettings, workload: &Workload) -> Container {
    let ports = settings.ports;
    let mut args = vec![
        "init-iptables".to_owned(),
        "--proxy-uid".to_owned(),
        settings.proxy_uid.to_string(),
        "--inbound-port".to_owned(),
        ports.inbound.to_string(),
        "--outbound-port".to_owned(),
        ports.outbound.to_string(),
    ];
    if !workload.skip_inbound.is_empty() {
        args.push("--exclude-inbound-ports".to_owned());
        args.push(port_list(&workload.skip_inbound));
    }
    if !workload.skip_outbound.is_empty() {
        args.push("--exclude-outbound-ports".to_owned());
        args.push(port_list(&workload.skip_outbound));
    }
    if settings.redirect_dns {
        args.push("--redirect-dns".to_owned());
        args.push(ports.dns.to_string());
    }
    Container {
        name: INIT_CONTAINER.to_owned(),
        image: Some(settings.init_image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(strings(["bulkhead-proxy"])),
        args: Some(args),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            // Explicit, so a pod-level runAsNonRoot does not stop capture.
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(strings(["NET_ADMIN", "NET_RAW"])),
                drop: Some(strings(["ALL"])),
            }),
            ..Default::default()
        }),
        resources: Some(resources(
            Some("10m"),
            Some("10Mi"),
            Some("100m"),
            Some("64Mi"),
        )),
        // iptables takes /run/xtables.lock; the root filesystem is read-only.
        volume_mounts: Some(vec![VolumeMount {
            name: XTABLES_LOCK_VOLUME.to_owned(),
            mount_path: "/run".to_owned(),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    }
}

/// The proxy as a native sidecar: an init container that keeps running
/// (`restartPolicy: Always`), started before the app's containers and
/// stopped after them.
pub fn proxy_container(settings: &InjectorSettings, workload: &Workload) -> Container {
    let ports = settings.ports;
    let mut args = vec![
        "run".to_owned(),
        "--control".to_owned(),
        settings.control_url.clone(),
        "--token-file".to_owned(),
        TOKEN_FILE.to_owned(),
        "--outbound".to_owned(),
        format!("127.0.0.1:{0},[::1]:{0}", ports.outbound),
        // IPv4 and IPv6 (init-iptables redirects both); the proxy falls
        // back to IPv4 alone where the pod has no IPv6.
        "--inbound".to_owned(),
        format!("[::]:{}", ports.inbound),
        // On the pod IP, so the kubelet's probes reach it (init-iptables
        // never redirects the admin port).
        "--admin".to_owned(),
        format!("0.0.0.0:{}", ports.admin),
        "--log-level".to_owned(),
        settings.log_level.clone(),
    ];
    if settings.redirect_dns {
        args.push("--dns".to_owned());
        // Both families: init-iptables redirects IPv4 and IPv6 queries.
        args.push(format!("127.0.0.1:{0},[::1]:{0}", ports.dns));
    }

    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("BULKHEAD_NAMESPACE", "metadata.namespace"),
        field_env("BULKHEAD_NODE", "spec.nodeName"),
        field_env("BULKHEAD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("BULKHEAD_ADVERTISE", "status.podIP"),
        value_env("BULKHEAD_SERVICE", &workload.service),
        value_env("BULKHEAD_VERSION", &workload.version),
        value_env("BULKHEAD_ATTESTATION", ATTESTATION),
        value_env("BULKHEAD_STATE_DIR", STATE_DIR),
    ];
    // The trust bundle travels inline when the control plane hands it to
    // the injector (no ConfigMap needed in every namespace); else from the
    // ConfigMap volume.
    match &settings.trust_bundle_pem {
        Some(pem) => env.push(value_env("BULKHEAD_TRUST_BUNDLE_PEM", pem)),
        None => env.push(value_env("BULKHEAD_TRUST_BUNDLE", TRUST_BUNDLE_FILE)),
    }
    if let Some(app) = &workload.app {
        for port in &app.ports {
            args.push("--app".to_owned());
            args.push(format!("{port}=127.0.0.1:{port}"));
        }
        env.push(value_env("BULKHEAD_APP_PROTOCOL", app.protocol.as_str()));
    }
    if let Some(table) = &workload.app_probes {
        env.push(value_env(super::probes::APP_PROBES_ENV, table));
    }

    let r = &settings.resources;
    Container {
        name: PROXY_CONTAINER.to_owned(),
        image: Some(settings.proxy_image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        restart_policy: Some("Always".to_owned()),
        command: Some(strings(["bulkhead-proxy"])),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![
            container_port("bulkhead-mtls", ports.inbound),
            container_port("bulkhead-admin", ports.admin),
        ]),
        // The next container starts once this passes: the proxy is up.
        // Not /ready, which also waits for the app, which waits for us.
        startup_probe: Some(http_probe("/live", ports.admin, 1, 120)),
        readiness_probe: Some(http_probe("/ready", ports.admin, 5, 3)),
        liveness_probe: Some(http_probe("/live", ports.admin, 10, 3)),
        security_context: Some(SecurityContext {
            run_as_user: Some(settings.proxy_uid),
            run_as_group: Some(settings.proxy_uid),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(strings(["ALL"])),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        resources: Some(resources(
            r.cpu_request.as_deref(),
            r.memory_request.as_deref(),
            r.cpu_limit.as_deref(),
            r.memory_limit.as_deref(),
        )),
        volume_mounts: Some({
            let mut mounts = vec![
                VolumeMount {
                    name: TOKEN_VOLUME.to_owned(),
                    mount_path: TOKEN_DIR.to_owned(),
                    read_only: Some(true),
                    ..Default::default()
                },
                VolumeMount {
                    name: STATE_VOLUME.to_owned(),
                    mount_path: STATE_DIR.to_owned(),
                    ..Default::default()
                },
            ];
            if settings.trust_bundle_pem.is_none() {
                mounts.push(VolumeMount {
                    name: TRUST_BUNDLE_VOLUME.to_owned(),
                    mount_path: TRUST_BUNDLE_DIR.to_owned(),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
            mounts
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    }
}

/// The projected service-account token (audience `bulkhead`), the trust
/// bundle ConfigMap, iptables' lock directory and the sidecar's in-memory
/// state dir.
pub fn volumes(settings: &InjectorSettings) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: TOKEN_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.to_owned()),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        path: "token".to_owned(),
                    }),
                    ..Default::default()
                }]),
                default_mode: None,
            }),
            ..Default::default()
        },
        Volume {
            name: XTABLES_LOCK_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: STATE_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: Some(Quantity(STATE_SIZE_LIMIT.to_owned())),
            }),
            ..Default::default()
        },
    ];
    if settings.trust_bundle_pem.is_none() {
        // Between the token and the xtables lock, as before.
        volumes.insert(
            1,
            Volume {
                name: TRUST_BUNDLE_VOLUME.to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: settings.trust_bundle_config_map.clone(),
                    // Naming the key makes a ConfigMap without it a clear
                    // start-up error instead of an empty folder.
                    items: Some(vec![KeyToPath {
                        key: TRUST_BUNDLE_KEY.to_owned(),
                        path: TRUST_BUNDLE_KEY.to_owned(),
                        mode: None,
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
    volumes
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field_path.to_owned(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    }
}

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: u16, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn resources(
    cpu_request: Option<&str>,
    memory_request: Option<&str>,
    cpu_limit: Option<&str>,
    memory_limit: Option<&str>,
) -> ResourceRequirements {
    let map = |cpu: Option<&str>, memory: Option<&str>| {
        let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), Quantity(v?.to_owned()))))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    ResourceRequirements {
        requests: map(cpu_request, memory_request),
        limits: map(cpu_limit, memory_limit),
        ..Default::default()
    }
}
