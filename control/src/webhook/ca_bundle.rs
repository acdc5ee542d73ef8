//! Keeping the webhook configuration's `caBundle` equal to the trust bundle,
//! so that the API server trusts the certificate [`super::certificate`]
//! makes: `GET` the `admissionregistration.k8s.io/v1`
//! MutatingWebhookConfiguration named by `--webhook-configuration` and,
//! where any webhook's `clientConfig.caBundle` does not hold exactly the
//! trust bundle's roots, send a JSON Patch setting it.
//!
//! Why a JSON Patch (`application/json-patch+json`): it names each
//! webhook's `caBundle` by position and opens with a `test` of the
//! object's `resourceVersion`, so a patch computed from a stale read (the
//! object changed in between, say by `helm upgrade` reordering webhooks)
//! is refused whole (HTTP 422) instead of landing on the wrong entry; the
//! next check reads again. A merge patch would replace the whole webhooks
//! list. RBAC: `get` and `patch` on that one object, nothing else.
//!
//! When: at start-up, after every renewal of the serving certificate, at
//! once when the trust bundle changes (a root rotation adds a root, or
//! retires one), and every `--webhook-configuration-resync` (30 s) — `helm upgrade`
//! re-renders the object and may blank the field; one cheap `GET` finds
//! out. Errors are retried with backoff; every call is bounded in time.
//! Several replicas may all do this: a patch is only sent when the field
//! differs, so they agree rather than fight.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bulkhead_process::Backoff;
use bulkhead_tls::TrustBundle;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::k8s_api::{ApiError, ApiServer};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A webhook configuration is a few KiB; each caBundle a few more.
const MAX_OBJECT_BYTES: usize = 4 * 1024 * 1024;
const PATCH_CONTENT_TYPE: &str = "application/json-patch+json";

/// The object read is not a MutatingWebhookConfiguration as the API
/// server returns it: which field, and what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a usable MutatingWebhookConfiguration: {field}: {problem}")]
pub struct MalformedConfiguration {
    pub field: String,
    pub problem: String,
}

fn malformed(field: impl Into<String>, problem: impl Into<String>) -> MalformedConfiguration {
    MalformedConfiguration {
        field: field.into(),
        problem: problem.into(),
    }
}

/// What a webhook configuration needs: the names of the webhooks whose
/// `caBundle` is stale and the JSON Patch that fixes them (None: current).
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub stale: Vec<String>,
    pub patch: Option<Value>,
}

/// The trust bundle as the webhook configuration should hold it.
#[derive(Clone, Debug)]
pub struct WantedBundle {
    /// The roots, sorted, for comparing regardless of order and PEM layout.
    roots: Vec<Vec<u8>>,
    /// base64 of their PEM: the value written.
    base64: String,
}

impl WantedBundle {
    pub fn new(roots: &[CertificateDer<'_>]) -> Self {
        let pem: String = roots
            .iter()
            .map(|root| crate::ca::pem_block("CERTIFICATE", root))
            .collect();
        let mut sorted: Vec<Vec<u8>> = roots.iter().map(|r| r.to_vec()).collect();
        sorted.sort();
        Self {
            roots: sorted,
            base64: STANDARD.encode(pem),
        }
    }

    pub fn base64(&self) -> &str {
        &self.base64
    }

    /// Whether a `caBundle` value holds exactly these roots. Anything that
    /// does not decode (not base64, not PEM) does not.
    fn is_held_by(&self, ca_bundle: &str) -> bool {
        let Ok(pem) = STANDARD.decode(ca_bundle.trim()) else {
            return false;
        };
        let Ok(certs) = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() else {
            return false;
        };
        let mut held: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
        held.sort();
        held == self.roots
    }
}

/// Decides, for a webhook configuration as read from the API server, which
/// webhooks need their `caBundle` set to `want`. Pure: no I/O, never panics
/// on what the server sent.
pub fn plan(config: &Value, want: &WantedBundle) -> Result<Plan, MalformedConfiguration> {
    let object = config
        .as_object()
        .ok_or_else(|| malformed("(object)", "not a JSON object"))?;
    match object.get("kind") {
        None => {}
        Some(kind) if kind == "MutatingWebhookConfiguration" => {}
        Some(kind) => return Err(malformed("kind", format!("{kind}"))),
    }
    let webhooks = match object.get("webhooks") {
        None | Some(Value::Null) => return Ok(Plan::current()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(malformed("webhooks", "not a list")),
    };
    let mut stale = Vec::new();
    let mut ops = Vec::new();
    if let Some(version) = object
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
    {
        let version = version
            .as_str()
            .ok_or_else(|| malformed("metadata.resourceVersion", "not a string"))?;
        ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": version}));
    }
    for (i, hook) in webhooks.iter().enumerate() {
        let field = |name: &str| format!("webhooks[{i}].{name}");
        let name = hook
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(field("name"), "missing or not a string"))?;
        let client = hook
            .get("clientConfig")
            .and_then(Value::as_object)
            .ok_or_else(|| malformed(field("clientConfig"), "missing or not an object"))?;
        let current = match client.get("caBundle") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(malformed(field("clientConfig.caBundle"), "not a string")),
        };
        if current.is_some_and(|c| want.is_held_by(c)) {
            continue;
        }
        stale.push(name.to_owned());
        // `add` on an object member sets it whether or not it is there.
        ops.push(json!({
            "op": "add",
            "path": format!("/webhooks/{i}/clientConfig/caBundle"),
            "value": want.base64(),
        }));
    }
    if stale.is_empty() {
        return Ok(Plan::current());
    }
    Ok(Plan {
        stale,
        patch: Some(Value::Array(ops)),
    })
}

impl Plan {
    fn current() -> Self {
        Self {
            stale: Vec::new(),
            patch: None,
        }
    }
}

/// What one check did.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    Current,
    Patched(Vec<String>),
}

/// Why one check failed, by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The object changed between our read and our patch: read again soon.
    #[error("the webhook configuration changed while it was being patched; checking again")]
    Conflict,
    #[error("{0}")]
    Api(String),
    #[error(transparent)]
    Malformed(#[from] MalformedConfiguration),
}

/// Where the `caBundle` is kept and how often it is checked.
pub struct CaBundleKeeper {
    pub api: Arc<ApiServer>,
    /// The MutatingWebhookConfiguration's name (a DNS subdomain: it goes
    /// into a URL path).
    pub configuration: String,
    /// The trust bundle in force: what the `caBundle` must hold.
    pub bundle: watch::Receiver<TrustBundle>,
    pub resync: Duration,
}

fn count(result: &'static str) {
    metrics::counter!("bulkhead_webhook_ca_bundle_patches_total", "result" => result).increment(1);
}

impl CaBundleKeeper {
    fn path(&self) -> String {
        format!(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{}",
            self.configuration
        )
    }

    /// Explains a refusal by what the operator can do about it.
    fn api_error(&self, verb: &str, error: ApiError) -> CheckError {
        let hint = match error.status.map(|s| s.as_u16()) {
            Some(404) => format!(
                " (no MutatingWebhookConfiguration {:?}: --webhook-configuration must name the one the chart rendered)",
                self.configuration
            ),
            Some(401 | 403) => format!(
                " (the control plane's ServiceAccount needs get and patch on mutatingwebhookconfigurations/{})",
                self.configuration
            ),
            _ => String::new(),
        };
        CheckError::Api(format!(
            "{verb} {}{}: {error}{hint}",
            self.api.base(),
            self.path()
        ))
    }

    /// Reads the configuration and patches it if it needs it.
    pub async fn check(&self) -> Result<Checked, CheckError> {
        let path = self.path();
        let body =
            match tokio::time::timeout(CALL_TIMEOUT, self.api.get(&path, MAX_OBJECT_BYTES)).await {
                Err(_) => return Err(self.api_error("GET", fail_timeout())),
                Ok(result) => result.map_err(|e| self.api_error("GET", e))?,
            };
        let object: Value = serde_json::from_slice(&body).map_err(|e| MalformedConfiguration {
            field: "(body)".into(),
            problem: format!("not JSON: {e}"),
        })?;
        let want = WantedBundle::new(self.bundle.borrow().roots_der());
        let plan = plan(&object, &want)?;
        let Some(patch) = plan.patch else {
            return Ok(Checked::Current);
        };
        let bytes = serde_json::to_vec(&patch).map_err(|e| CheckError::Api(e.to_string()))?;
        let sent = self
            .api
            .patch(&path, PATCH_CONTENT_TYPE, bytes, MAX_OBJECT_BYTES);
        match tokio::time::timeout(CALL_TIMEOUT, sent).await {
            Err(_) => Err(self.api_error("PATCH", fail_timeout())),
            // 422: our `test` of the resourceVersion failed; 409: the same,
            // said another way.
            Ok(Err(e)) if matches!(e.status.map(|s| s.as_u16()), Some(409 | 422)) => {
                Err(CheckError::Conflict)
            }
            Ok(Err(e)) => Err(self.api_error("PATCH", e)),
            Ok(Ok(_)) => Ok(Checked::Patched(plan.stale)),
        }
    }

    /// Checks now, then after every bump of `renewed`, every change of the
    /// trust bundle and every `resync`; failures are retried with backoff
    /// (1 s doubling to a minute).
    pub async fn run(mut self, mut renewed: watch::Receiver<u64>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut renewals_open = true;
        let mut bundles_open = true;
        loop {
            let wait = match self.check().await {
                Ok(Checked::Current) => {
                    tracing::debug!(configuration = %self.configuration, "webhook caBundle is current");
                    backoff.reset();
                    self.resync
                }
                Ok(Checked::Patched(webhooks)) => {
                    count("patched");
                    tracing::info!(configuration = %self.configuration, ?webhooks, "set the webhook configuration's caBundle to the trust bundle");
                    backoff.reset();
                    self.resync
                }
                Err(CheckError::Conflict) => {
                    count("conflict");
                    let retry_in = backoff.next_delay();
                    tracing::info!(configuration = %self.configuration, ?retry_in, "the webhook configuration changed while it was being patched; checking again");
                    retry_in
                }
                Err(error) => {
                    count("error");
                    let retry_in = backoff.next_delay().min(self.resync);
                    tracing::warn!(configuration = %self.configuration, %error, ?retry_in, "cannot keep the webhook configuration's caBundle current");
                    retry_in
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = renewed.changed(), if renewals_open => {
                    // The renewal task is gone (shutdown): the timer alone.
                    renewals_open = changed.is_ok();
                }
                changed = self.bundle.changed(), if bundles_open => {
                    bundles_open = changed.is_ok();
                    if bundles_open {
                        tracing::info!(configuration = %self.configuration, "the trust bundle changed: checking the webhook's caBundle");
                    }
                }
            }
        }
    }
}

fn fail_timeout() -> ApiError {
    ApiError {
        status: None,
        reason: format!("no answer within {CALL_TIMEOUT:?}"),
    }
}

#[cfg(test)]
#[path = "ca_bundle_tests.rs"]
mod tests;
