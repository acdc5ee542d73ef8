//! `bulkheadctl inject -f FILE|-`: the webhook's injection, offline, on
//! manifests (for GitOps). Pods and the pod templates of Deployments,
//! StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs and
//! CronJobs get the sidecar; `List` items are walked; every other document
//! passes through. The same rules as the webhook: injected once, opt-out
//! honoured, host-network pods left alone.

use std::io::Read;

use bulkhead_control::webhook::{Action, Injector, InjectorSettings};
use clap::Args;
use json_patch::jsonptr::PointerBuf;
use serde_json::Value;

use crate::{CliError, CliResult};

/// Largest manifest read.
const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Sidecar settings; each defaults to what the Helm chart installs.
#[derive(Debug, Clone, Args)]
pub(crate) struct InjectArgs {
    /// Control-plane URL as sidecars reach it [default: https://bulkhead-control.bulkhead.svc:8443].
    #[arg(long, value_name = "URL")]
    proxy_control: Option<String>,
    /// Sidecar image [default: ghcr.io/bulkhead/bulkhead-proxy:<this version>].
    #[arg(long, value_name = "IMAGE")]
    proxy_image: Option<String>,
    /// Capture init container image [default: the sidecar image].
    #[arg(long, value_name = "IMAGE")]
    init_image: Option<String>,
    /// imagePullPolicy of both containers: Always, IfNotPresent or Never.
    #[arg(long, value_name = "POLICY")]
    image_pull_policy: Option<String>,
    /// The mesh's roots (PEM, `bundle.crt` of `ca init`), written into each
    /// pod inline as the webhook does. Without it, pods mount the ConfigMap
    /// of --trust-bundle-configmap, which must exist in each pod's namespace.
    #[arg(long, value_name = "FILE", conflicts_with = "trust_bundle_config_map")]
    trust_bundle: Option<std::path::PathBuf>,
    /// ConfigMap (in each pod's namespace) holding bundle.crt [default: bulkhead-trust-bundle].
    #[arg(long = "trust-bundle-configmap", value_name = "NAME")]
    trust_bundle_config_map: Option<String>,
    /// UID the proxy runs as, exempt from capture [default: 2102].
    #[arg(long, value_name = "UID")]
    proxy_uid: Option<i64>,
    /// Redirect the pods' DNS to the sidecar's DNS server.
    #[arg(long)]
    redirect_dns: bool,
    /// The sidecar's log level [default: info].
    #[arg(long, value_name = "LEVEL")]
    proxy_log_level: Option<String>,
    /// Sidecar CPU request [default: 10m].
    #[arg(long, value_name = "QUANTITY")]
    proxy_cpu_request: Option<String>,
    /// Sidecar memory request [default: 32Mi].
    #[arg(long, value_name = "QUANTITY")]
    proxy_memory_request: Option<String>,
    /// Sidecar CPU limit [default: none].
    #[arg(long, value_name = "QUANTITY")]
    proxy_cpu_limit: Option<String>,
    /// Sidecar memory limit [default: 256Mi].
    #[arg(long, value_name = "QUANTITY")]
    proxy_memory_limit: Option<String>,
}

impl InjectArgs {
    fn settings(self) -> Result<InjectorSettings, CliError> {
        let mut s = InjectorSettings::default();
        if let Some(path) = &self.trust_bundle {
            let pem = std::fs::read(path).map_err(|e| {
                CliError::failure(format!("--trust-bundle {}: {e}", path.display()))
            })?;
            bulkhead_tls::certs_from_pem(&pem, &path.display().to_string())
                .map_err(|e| CliError::failure(format!("--trust-bundle {e}")))?;
            let pem = String::from_utf8(pem).map_err(|_| {
                CliError::failure(format!("--trust-bundle {}: not PEM text", path.display()))
            })?;
            s.trust_bundle_pem = Some(pem);
        }
        if let Some(image) = &self.proxy_image {
            s.proxy_image = image.clone();
            s.init_image = image.clone();
        }
        if let Some(image) = self.init_image {
            s.init_image = image;
        }
        s.image_pull_policy = self.image_pull_policy;
        if let Some(url) = self.proxy_control {
            s.control_url = url;
        }
        if let Some(name) = self.trust_bundle_config_map {
            s.trust_bundle_config_map = name;
        }
        if let Some(uid) = self.proxy_uid {
            s.proxy_uid = uid;
        }
        s.redirect_dns = self.redirect_dns;
        if let Some(level) = self.proxy_log_level {
            s.log_level = level;
        }
        let r = &mut s.resources;
        for (flag, slot) in [
            (self.proxy_cpu_request, &mut r.cpu_request),
            (self.proxy_memory_request, &mut r.memory_request),
            (self.proxy_cpu_limit, &mut r.cpu_limit),
            (self.proxy_memory_limit, &mut r.memory_limit),
        ] {
            if flag.is_some() {
                *slot = flag;
            }
        }
        Ok(s)
    }
}

pub(crate) fn run(file: &str, args: InjectArgs) -> CliResult {
    let injector =
        Injector::new(args.settings()?).map_err(|e| CliError::usage(format!("inject: {e}")))?;
    let text = read_input(file)?;
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| CliError::failure(format!("{file}: not YAML: {e}")))?;
    docs.retain(|d| !d.is_null());
    let mut notes = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        inject_document(&injector, doc, &mut notes)
            .map_err(|e| CliError::failure(format!("{file}: document {}: {e}", i + 1)))?;
    }
    let yaml = serde_saphyr::to_string_multiple(&docs)
        .map_err(|e| CliError::failure(format!("cannot write YAML: {e}")))?;
    print!("{yaml}");
    for note in notes {
        eprintln!("{note}");
    }
    Ok(())
}

fn read_input(file: &str) -> Result<String, CliError> {
    let mut text = String::new();
    let result = if file == "-" {
        std::io::stdin()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_INPUT_BYTES + 1).read_to_string(&mut text))
    };
    result.map_err(|e| CliError::usage(format!("{file}: {e}")))?;
    if text.len() as u64 > MAX_INPUT_BYTES {
        return Err(CliError::usage(format!(
            "{file}: larger than {MAX_INPUT_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// Where a kind keeps its pod: `Some(&[])` for a Pod itself.
fn pod_location(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn inject_document(
    injector: &Injector,
    doc: &mut Value,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind == "List" {
        for item in doc
            .get_mut("items")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            inject_document(injector, item, notes)?;
        }
        return Ok(());
    }
    let Some(at) = pod_location(kind) else {
        return Ok(());
    };
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let what = format!("{}/{name}", kind.to_lowercase());
    let pointer = PointerBuf::from_tokens(at.iter().copied());
    let pod = doc
        .pointer(pointer.as_str())
        .ok_or_else(|| format!("{what}: has no pod template at {pointer}"))?;
    let outcome = injector
        .plan(pod, at, (!name.is_empty()).then_some(name.as_str()))
        .map_err(|e| format!("{what}: {pointer}/{e}"))?;
    for warning in &outcome.warnings {
        notes.push(format!("{what}: warning: {warning}"));
    }
    match outcome.action {
        Action::Inject(patch) => {
            json_patch::patch(doc, &patch).map_err(|e| format!("{what}: {e}"))?;
            notes.push(format!("{what} injected"));
        }
        Action::Unchanged(why) => notes.push(format!("{what} left alone: {}", why.as_str())),
        Action::Refuse(message) => return Err(format!("{what}: {message}")),
    }
    Ok(())
}
