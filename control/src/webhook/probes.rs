//! Kubelet probes of the app, rewritten so they survive inbound capture.
//!
//! The kubelet dials the pod IP in plaintext; `init-iptables` sends every
//! inbound TCP connection to the proxy's mTLS port, so an `httpGet`,
//! `tcpSocket` or `grpc` probe on the app's port would be refused and the
//! pod would never become Ready. As Istio does, the injector rewrites each
//! such probe of an app container into
//!
//! ```yaml
//! httpGet: {port: 4191, path: /app-health/<container>/<liveness|readiness|startup>}
//! ```
//!
//! on the proxy's admin port (which capture never redirects), keeping the
//! probe's timings and thresholds, and hands the original target to the
//! proxy in its environment, `BULKHEAD_APP_PROBES`: a JSON object from
//! those paths to what to check on 127.0.0.1:
//!
//! ```json
//! {"/app-health/web/readiness": {"port": 8080, "path": "/ready", "scheme": "HTTP",
//!                                "headers": [{"name": "X-Probe", "value": "1"}]},
//!  "/app-health/web/liveness":  {"tcp": 8080},
//!  "/app-health/web/startup":   {"grpc": 9090, "service": ""}}
//! ```
//!
//! Named ports are resolved against the container's `ports` here, so the
//! proxy only ever sees numbers. The proxy answers with the app's own
//! status code (HTTP), 200 or 503 (TCP, gRPC health `SERVING`), and 503
//! when the app does not answer. The proxy's environment rather than a pod
//! annotation: the proxy reads it once at start, with no API access, and
//! the pod template (so a rollout) changes whenever the probes do.
//!
//! The proxy dials the app on 127.0.0.1, so an app that listens only on
//! the pod IP fails its rewritten probes; annotate its probe port in
//! `bulkhead.dev/skip-inbound-ports` (plaintext from anywhere!) or
//! `bulkhead.dev/rewrite-probes: "false"` for such an app.
//!
//! Left as they are: probes with an explicit `host` (they do not target
//! this pod), probes on the admin port or on a port the pod skips from
//! inbound capture (`bulkhead.dev/skip-inbound-ports`: plaintext already
//! reaches it), `exec` probes, and every probe when the pod is annotated
//! `bulkhead.dev/rewrite-probes: "false"`. A probe that still cannot pass
//! (a named port the container does not declare, a native sidecar's probe,
//! or rewriting turned off) gets a warning naming its port.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::inject::SKIP_INBOUND_PORTS_ANNOTATION;

/// The proxy's environment variable holding the probe table (JSON).
pub const APP_PROBES_ENV: &str = "BULKHEAD_APP_PROBES";
/// `"false"` keeps the pod's probes as written (then they only pass on
/// ports listed in `bulkhead.dev/skip-inbound-ports`).
pub const REWRITE_PROBES_ANNOTATION: &str = "bulkhead.dev/rewrite-probes";
/// Paths the proxy's admin port serves rewritten probes under.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

/// The probe kinds, as (the kind in the path, the container field).
pub const KINDS: [(&str, &str); 3] = [
    ("liveness", "livenessProbe"),
    ("readiness", "readinessProbe"),
    ("startup", "startupProbe"),
];

/// What rewriting does to one pod.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rewrite {
    /// (index in `spec.containers`, container field, the new probe).
    pub probes: Vec<(usize, &'static str, Probe)>,
    /// Path → original target: the proxy's `BULKHEAD_APP_PROBES`.
    pub table: BTreeMap<String, Value>,
}

impl Rewrite {
    /// The table as the proxy reads it; None when nothing was rewritten.
    pub fn env_value(&self) -> Option<String> {
        (!self.table.is_empty()).then(|| Value::from_iter(self.table.clone()).to_string())
    }
}

/// Rewrites the app containers' probes (when `enabled`), and warns about
/// every probe left that capture will break.
pub fn rewrite(
    spec: &PodSpec,
    enabled: bool,
    admin: u16,
    skip_inbound: &[u16],
    warnings: &mut Vec<String>,
) -> Rewrite {
    let mut out = Rewrite::default();
    let mut warned = Vec::new();
    let mut warn = |port: u16, container: &str, warnings: &mut Vec<String>| {
        if !warned.contains(&port) {
            warned.push(port);
            warnings.push(format!(
                "bulkhead: kubelet probes on port {port} ({container}) will be captured and fail; annotate {SKIP_INBOUND_PORTS_ANNOTATION}: \"{port}\" to let them in"
            ));
        }
    };
    for (index, container) in spec.containers.iter().enumerate() {
        for (kind, field) in KINDS {
            let Some(probe) = probe_of(container, field) else {
                continue;
            };
            let Some(target) = target_of(probe) else {
                continue; // exec, or aimed at another host
            };
            let port = match resolve(container, target.port()) {
                Ok(port) => port,
                Err(name) => {
                    warnings.push(format!(
                        "bulkhead: {} {kind} probe: named port {name:?} is not among the container's ports; probe left as is",
                        container.name
                    ));
                    continue;
                }
            };
            if port == admin || skip_inbound.contains(&port) {
                continue;
            }
            if !enabled {
                warn(port, &container.name, warnings);
                continue;
            }
            let path = format!("{APP_HEALTH_PREFIX}{}/{kind}", container.name);
            out.table.insert(path.clone(), target.entry(port));
            out.probes
                .push((index, field, rewritten(probe, &path, admin)));
        }
    }
    // Native sidecars (init containers that keep running) are probed too,
    // and are not rewritten: say so.
    for container in spec.init_containers.iter().flatten() {
        if container.restart_policy.as_deref() != Some("Always") {
            continue;
        }
        for (_, field) in KINDS {
            if let Some(target) = probe_of(container, field).and_then(target_of)
                && let Ok(port) = resolve(container, target.port())
                && port != admin
                && !skip_inbound.contains(&port)
            {
                warn(port, &container.name, warnings);
            }
        }
    }
    out
}

fn probe_of<'a>(container: &'a Container, field: &str) -> Option<&'a Probe> {
    match field {
        "livenessProbe" => container.liveness_probe.as_ref(),
        "readinessProbe" => container.readiness_probe.as_ref(),
        "startupProbe" => container.startup_probe.as_ref(),
        _ => None,
    }
}

/// What a probe dials, when that is this pod.
enum Target<'a> {
    Http(&'a HTTPGetAction),
    Tcp(&'a IntOrString),
    Grpc(i32, Option<&'a str>),
}

fn target_of(probe: &Probe) -> Option<Target<'_>> {
    if let Some(http) = &probe.http_get {
        return http
            .host
            .as_deref()
            .is_none_or(str::is_empty)
            .then_some(Target::Http(http));
    }
    if let Some(tcp) = &probe.tcp_socket {
        return tcp
            .host
            .as_deref()
            .is_none_or(str::is_empty)
            .then_some(Target::Tcp(&tcp.port));
    }
    probe
        .grpc
        .as_ref()
        .map(|g| Target::Grpc(g.port, g.service.as_deref()))
}

impl Target<'_> {
    fn port(&self) -> IntOrString {
        match self {
            Self::Http(http) => http.port.clone(),
            Self::Tcp(port) => (*port).clone(),
            Self::Grpc(port, _) => IntOrString::Int(*port),
        }
    }

    /// The table entry: what the proxy checks on 127.0.0.1:`port`.
    fn entry(&self, port: u16) -> Value {
        match self {
            Self::Http(http) => {
                let path = http
                    .path
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("/");
                let path = if path.starts_with('/') {
                    path.to_owned()
                } else {
                    format!("/{path}")
                };
                let scheme = match http.scheme.as_deref() {
                    Some(s) if s.eq_ignore_ascii_case("https") => "HTTPS",
                    _ => "HTTP",
                };
                let headers: Vec<Value> = http
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| json!({"name": h.name, "value": h.value}))
                    .collect();
                json!({"port": port, "path": path, "scheme": scheme, "headers": headers})
            }
            Self::Tcp(_) => json!({ "tcp": port }),
            Self::Grpc(_, service) => json!({"grpc": port, "service": service.unwrap_or("")}),
        }
    }
}

/// A port number, or a named port looked up in the container's ports;
/// Err(name) when the name is not there (or a number is out of range).
fn resolve(container: &Container, port: IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| n.to_string()),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .filter(|p| *p != 0)
                .ok_or(name)
        }
    }
}

/// The same probe (timings, thresholds) as an httpGet on the admin port.
fn rewritten(probe: &Probe, path: &str, admin: u16) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(admin)),
            scheme: Some("HTTP".to_owned()),
            ..Default::default()
        }),
        tcp_socket: None,
        grpc: None,
        exec: None,
        ..probe.clone()
    }
}
