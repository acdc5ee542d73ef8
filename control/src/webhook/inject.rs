//! The injection decision for one pod (or pod template) and the JSON Patch
//! that carries it out. Pure: values in, a patch out.
//!
//! What the pod may say, as annotations (`inject` also as a label):
//!
//! | key | values | effect |
//! |---|---|---|
//! | `bulkhead.dev/inject` | `enabled`, `disabled` | `disabled` opts out; anything else but `enabled` is left alone with a warning |
//! | `bulkhead.dev/injected` | `"true"` | set by the injector; such a pod is never injected twice |
//! | `bulkhead.dev/app-port` | port | the one app port the sidecar fronts (default: every TCP `containerPort` of the app containers, each as `--app PORT=127.0.0.1:PORT`, but those in `skip-inbound-ports`) |
//! | `bulkhead.dev/app-protocol` | `http`, `grpc`, `tcp` | for ports the Service does not declare (default: from the first port's name prefix, else `http`) |
//! | `bulkhead.dev/skip-inbound-ports` | `8081,9090` | left out of inbound capture (plaintext!); probes on them are not rewritten |
//! | `bulkhead.dev/skip-outbound-ports` | `443,5432` | left out of outbound capture |
//! | `bulkhead.dev/rewrite-probes` | `"false"` | keep the app's kubelet probes as written (see [`probes`](super::probes)) |
//!
//! The service name comes from the label `app.kubernetes.io/name`, else
//! `app`, else the workload's name (the owning Deployment, StatefulSet, ...),
//! else the pod's name; the version from `app.kubernetes.io/version`, else
//! `0.0.0`.
//!
//! The app containers' `httpGet`, `tcpSocket` and `grpc` probes are
//! rewritten to the proxy's admin port, which checks the app on their
//! behalf ([`probes`](super::probes)).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Injector;
use super::probes::{self, REWRITE_PROBES_ANNOTATION, Rewrite};
use super::sidecar::{self, App, AppProtocol, Workload};

pub const INJECT_KEY: &str = "bulkhead.dev/inject";
pub const INJECTED_ANNOTATION: &str = "bulkhead.dev/injected";
pub const APP_PORT_ANNOTATION: &str = "bulkhead.dev/app-port";
pub const APP_PROTOCOL_ANNOTATION: &str = "bulkhead.dev/app-protocol";
pub const SKIP_INBOUND_PORTS_ANNOTATION: &str = "bulkhead.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS_ANNOTATION: &str = "bulkhead.dev/skip-outbound-ports";
pub const SERVICE_LABEL: &str = "app.kubernetes.io/name";
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";
pub const DEFAULT_VERSION: &str = "0.0.0";

/// What injection does to one pod, and what the pod's author should know.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub action: Action,
    /// Short notes for the requester (`response.warnings`, or stderr).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Add the sidecar: the patch is relative to the document `plan` was given.
    Inject(Patch),
    /// Leave the pod as it is.
    Unchanged(Unchanged),
    /// The pod asks for injection but cannot be injected as written.
    Refuse(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    AlreadyInjected,
    OptedOut,
    HostNetwork,
}

impl Unchanged {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyInjected => "already-injected",
            Self::OptedOut => "opted-out",
            Self::HostNetwork => "host-network",
        }
    }
}

/// The document is not a pod (or pod template) Kubernetes would accept.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{path}: {problem}")]
pub struct InvalidPod {
    /// Where, as a dotted path (`spec.containers[0].ports`), or `.`.
    pub path: String,
    pub problem: String,
}

/// The parts of a Pod and a PodTemplateSpec that injection reads.
#[derive(Deserialize)]
struct PodShape {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: PodSpec,
}

impl Injector {
    /// Decides for one pod. `pod` is a Pod or a PodTemplateSpec (metadata
    /// and spec); `at` is where it sits in the document the patch will be
    /// applied to (empty for a Pod, `["spec", "template"]` for a
    /// Deployment); `workload` names its owner when the pod cannot (a
    /// template has no name of its own).
    pub fn plan(
        &self,
        pod: &Value,
        at: &[&str],
        workload: Option<&str>,
    ) -> Result<Outcome, InvalidPod> {
        let shape: PodShape = serde_path_to_error::deserialize(pod).map_err(|e| InvalidPod {
            path: e.path().to_string(),
            problem: e.inner().to_string(),
        })?;
        let (meta, spec) = (&shape.metadata, &shape.spec);
        let empty = BTreeMap::new();
        let annotations = meta.annotations.as_ref().unwrap_or(&empty);
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        let mut warnings = Vec::new();
        let unchanged = |why, warnings| {
            Ok(Outcome {
                action: Action::Unchanged(why),
                warnings,
            })
        };

        let has_proxy = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == sidecar::PROXY_CONTAINER);
        if has_proxy || annotations.get(INJECTED_ANNOTATION).map(String::as_str) == Some("true") {
            return unchanged(Unchanged::AlreadyInjected, warnings);
        }
        let asked = annotations
            .get(INJECT_KEY)
            .or_else(|| labels.get(INJECT_KEY));
        match asked.map(String::as_str) {
            None | Some("enabled") => {}
            Some("disabled") => return unchanged(Unchanged::OptedOut, warnings),
            Some(other) => {
                warnings.push(format!(
                    "bulkhead: {INJECT_KEY}: {other:?} is neither enabled nor disabled; not injected"
                ));
                return unchanged(Unchanged::OptedOut, warnings);
            }
        }
        if spec.host_network == Some(true) {
            warnings.push(
                "bulkhead: not injected: the pod uses hostNetwork, and capture would take the node's traffic"
                    .into(),
            );
            return unchanged(Unchanged::HostNetwork, warnings);
        }
        let mut workload = match describe(meta, spec, workload, &mut warnings) {
            Ok(w) => w,
            Err(why) => {
                return Ok(Outcome {
                    action: Action::Refuse(format!("bulkhead: cannot inject: {why}")),
                    warnings,
                });
            }
        };
        let rewrite_probes = match annotations
            .get(REWRITE_PROBES_ANNOTATION)
            .map(String::as_str)
        {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Ok(Outcome {
                    action: Action::Refuse(format!(
                        "bulkhead: cannot inject: {REWRITE_PROBES_ANNOTATION}: {other:?}: expected \"true\" or \"false\""
                    )),
                    warnings,
                });
            }
        };
        let rewrite = probes::rewrite(
            spec,
            rewrite_probes,
            self.settings.ports.admin,
            &workload.skip_inbound,
            &mut warnings,
        );
        workload.app_probes = rewrite.env_value();
        Ok(Outcome {
            action: Action::Inject(self.patch(pod, at, &workload, &rewrite)),
            warnings,
        })
    }

    /// The JSON Patch: one annotation, two init containers in front of the
    /// pod's own (so capture and the proxy are up before any app code runs,
    /// the app's init containers included), three volumes, and the app's
    /// rewritten probes. Arrays and maps that are absent (or null) are added
    /// whole; present ones are extended.
    fn patch(&self, pod: &Value, at: &[&str], workload: &Workload, rewrite: &Rewrite) -> Patch {
        let ptr = |tail: &[&str]| PointerBuf::from_tokens(at.iter().chain(tail).copied());
        let add =
            |path: PointerBuf, value: Value| PatchOperation::Add(AddOperation { path, value });
        let mut ops = Vec::new();

        let metadata = pod.get("metadata").filter(|m| m.is_object());
        match metadata
            .and_then(|m| m.get("annotations"))
            .filter(|a| a.is_object())
        {
            Some(_) => ops.push(add(
                ptr(&["metadata", "annotations", INJECTED_ANNOTATION]),
                json!("true"),
            )),
            None if metadata.is_some() => ops.push(add(
                ptr(&["metadata", "annotations"]),
                json!({ INJECTED_ANNOTATION: "true" }),
            )),
            None => ops.push(add(
                ptr(&["metadata"]),
                json!({ "annotations": { INJECTED_ANNOTATION: "true" } }),
            )),
        }

        let spec = &pod["spec"];
        let init = to_value(sidecar::init_container(&self.settings, workload));
        let proxy = to_value(sidecar::proxy_container(&self.settings, workload));
        if spec.get("initContainers").is_some_and(Value::is_array) {
            ops.push(add(ptr(&["spec", "initContainers", "0"]), init));
            ops.push(add(ptr(&["spec", "initContainers", "1"]), proxy));
        } else {
            ops.push(add(ptr(&["spec", "initContainers"]), json!([init, proxy])));
        }

        let volumes: Vec<Value> = sidecar::volumes(&self.settings)
            .into_iter()
            .map(to_value)
            .collect();
        if spec.get("volumes").is_some_and(Value::is_array) {
            for volume in volumes {
                ops.push(add(ptr(&["spec", "volumes", "-"]), volume));
            }
        } else {
            ops.push(add(ptr(&["spec", "volumes"]), Value::Array(volumes)));
        }

        for (index, field, probe) in &rewrite.probes {
            let index = index.to_string();
            ops.push(PatchOperation::Replace(ReplaceOperation {
                path: ptr(&["spec", "containers", &index, field]),
                value: to_value(probe),
            }));
        }
        Patch(ops)
    }
}

fn to_value<T: serde::Serialize>(t: T) -> Value {
    // k8s-openapi types are plain data: serializing them cannot fail.
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// Reads service, version, app port and skipped ports off the pod.
fn describe(
    meta: &ObjectMeta,
    spec: &PodSpec,
    workload: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Workload, String> {
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let labels = meta.labels.as_ref().unwrap_or(&empty);

    let (service, from) = if let Some(name) = labels.get(SERVICE_LABEL) {
        (name.clone(), "label app.kubernetes.io/name")
    } else if let Some(name) = labels.get("app") {
        (name.clone(), "label app")
    } else if let Some(name) = workload_name(meta, labels).or(workload.map(str::to_owned)) {
        (name, "the workload's name")
    } else if let Some(name) = &meta.name {
        (name.clone(), "the pod's name")
    } else {
        return Err(format!(
            "no service name: set the label {SERVICE_LABEL} (or annotate {INJECT_KEY}: disabled)"
        ));
    };
    if bulkhead_proto::identity::validate_name("service", &service).is_err() {
        return Err(format!(
            "service name {service:?} (from {from}) must be a DNS label: lower-case letters, digits and '-', at most 63; set the label {SERVICE_LABEL}"
        ));
    }
    if !from.starts_with("label") {
        warnings.push(format!(
            "bulkhead: service name {service:?} taken from {from}; set the label {SERVICE_LABEL} to choose it"
        ));
    }
    let version = labels
        .get(VERSION_LABEL)
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| DEFAULT_VERSION.to_owned());

    let skip_inbound = ports_annotation(annotations, SKIP_INBOUND_PORTS_ANNOTATION)?;
    let skip_outbound = ports_annotation(annotations, SKIP_OUTBOUND_PORTS_ANNOTATION)?;
    let protocol = match annotations.get(APP_PROTOCOL_ANNOTATION).map(String::as_str) {
        None => None,
        Some("http") => Some(AppProtocol::Http),
        Some("grpc") => Some(AppProtocol::Grpc),
        Some("tcp") => Some(AppProtocol::Tcp),
        Some(other) => {
            return Err(format!(
                "{APP_PROTOCOL_ANNOTATION}: {other:?}: expected http, grpc or tcp"
            ));
        }
    };
    let app =
        match annotations.get(APP_PORT_ANNOTATION) {
            Some(port) => Some(App {
                ports: vec![parse_port(port).ok_or_else(|| {
                    format!("{APP_PORT_ANNOTATION}: {port:?} is not a port 1-65535")
                })?],
                protocol: protocol.unwrap_or(AppProtocol::Http),
            }),
            None => {
                // Every declared TCP port but those left out of capture (their
                // calls never reach the sidecar); the protocol from the first
                // one's name unless annotated.
                let ports: Vec<(u16, Option<&str>)> = tcp_ports(spec)
                    .into_iter()
                    .filter(|(port, _)| !skip_inbound.contains(port))
                    .collect();
                ports.first().map(|(_, name)| {
                    let guessed = match name {
                        Some(n) if n.starts_with("grpc") => AppProtocol::Grpc,
                        Some(n) if n.starts_with("tcp") => AppProtocol::Tcp,
                        _ => AppProtocol::Http,
                    };
                    App {
                        ports: ports.iter().map(|(port, _)| *port).collect(),
                        protocol: protocol.unwrap_or(guessed),
                    }
                })
            }
        };
    // Every port left out of capture is a choice, not a mistake.
    if app.is_none() && tcp_ports(spec).is_empty() {
        warnings.push(format!(
            "bulkhead: no TCP containerPort and no {APP_PORT_ANNOTATION}: the sidecar forwards no inbound calls"
        ));
    }
    Ok(Workload {
        service,
        version,
        app,
        skip_inbound,
        skip_outbound,
        app_probes: None,
    })
}

/// The owning workload's name: a ReplicaSet's minus its pod-template-hash
/// (so the Deployment's), else the controller's.
fn workload_name(meta: &ObjectMeta, labels: &BTreeMap<String, String>) -> Option<String> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet"
        && let Some(hash) = labels.get("pod-template-hash")
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return Some(deployment.to_owned());
    }
    Some(owner.name.clone())
}

fn parse_port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

fn ports_annotation(annotations: &BTreeMap<String, String>, key: &str) -> Result<Vec<u16>, String> {
    let Some(list) = annotations.get(key) else {
        return Ok(Vec::new());
    };
    let mut ports = Vec::new();
    for item in list.split(',').filter(|s| !s.trim().is_empty()) {
        let port =
            parse_port(item).ok_or_else(|| format!("{key}: {item:?} is not a port 1-65535"))?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// The app containers' TCP `containerPort`s, each once, in order.
fn tcp_ports(spec: &PodSpec) -> Vec<(u16, Option<&str>)> {
    let mut ports: Vec<(u16, Option<&str>)> = Vec::new();
    let declared = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"));
    for p in declared {
        if let Some(port) = u16::try_from(p.container_port).ok().filter(|p| *p != 0)
            && !ports.iter().any(|(seen, _)| *seen == port)
        {
            ports.push((port, p.name.as_deref()));
        }
    }
    ports
}
