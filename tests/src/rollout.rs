//! Rollout scenarios' fixtures: the `Rollout` document for the shop's
//! inventory (3.0.0 → 3.1.0), canary apps that fail a share of requests on
//! purpose (HTTP 500, or gRPC status UNAVAILABLE), and reading a rollout's
//! status the way scripts do: `bulkheadctl rollout status -o json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;

use crate::control::{ControlPlane, TestCa, wait_for_async};
use crate::mesh::blocking;
use crate::proxy::App;
use crate::shop::{CANARY, STABLE};

/// Control-plane flags for rollout scenarios: sidecars report every half
/// second, so a few-second interval has several reports.
pub const FAST_REPORTS: &[&str] = &["--report-interval", "500ms"];

/// A Rollout of shop/inventory from [`STABLE`] to [`CANARY`]; `spec` is
/// YAML appended to the spec (indented two spaces), e.g. steps and gates.
pub fn rollout(spec: &str) -> String {
    format!(
        "apiVersion: bulkhead.dev/v1
kind: Rollout
metadata: {{name: inventory, namespace: shop}}
spec:
  service: inventory
  stable: \"{STABLE}\"
  canary: \"{CANARY}\"
{spec}"
    )
}

/// An inventory app that answers like [`App::http`] but fails every
/// `every`-th request with a 500 (0: never).
pub async fn failing_app(version: &str, every: u64) -> App {
    let version = version.to_owned();
    let n = Arc::new(AtomicU64::new(0));
    App::http_with(move |req: Request<Incoming>| {
        let seen = n.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = every > 0 && seen.is_multiple_of(every);
        let body = format!(
            "service=inventory version={version} path={}",
            req.uri().path()
        );
        async move {
            let _ = req.into_body().collect().await;
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            if fail {
                *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            }
            resp
        }
    })
    .await
}

/// A gRPC app (h2c) that answers every call trailers-only: `grpc-status:
/// 0`, or 14 (UNAVAILABLE) for every `every`-th call (0: never). HTTP
/// status is always 200, as gRPC's is: only `grpc-status` tells failure.
pub async fn grpc_app(version: &str, every: u64) -> App {
    let version = version.to_owned();
    let n = Arc::new(AtomicU64::new(0));
    App::http_with(move |req: Request<Incoming>| {
        let seen = n.fetch_add(1, Ordering::SeqCst) + 1;
        let code = if every > 0 && seen.is_multiple_of(every) {
            "14"
        } else {
            "0"
        };
        let version = version.clone();
        async move {
            let _ = req.into_body().collect().await;
            Response::builder()
                .header("content-type", "application/grpc")
                .header("x-version", version)
                .header("grpc-status", code)
                .body(Full::new(Bytes::new()))
                .expect("static response")
        }
    })
    .await
}

/// `bulkheadctl rollout status NAME -n shop -o json`, parsed; `None` while
/// the rollout has no status (or the command fails).
pub fn status(cp: &ControlPlane, ca: &TestCa, name: &str) -> Option<Value> {
    let out = blocking(|| cp.ctl(ca, &["rollout", "status", name, "-n", "shop", "-o", "json"]));
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Polls the status until `done` holds (at most `within`), and returns it.
pub async fn until_status(
    cp: &ControlPlane,
    ca: &TestCa,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let found = wait_for_async(what, within, || {
        let s = status(cp, ca, "inventory");
        if let Some(s) = &s {
            *last.lock().unwrap_or_else(|e| e.into_inner()) = s.clone();
        }
        let hit = s.filter(|s| done(s));
        async move { hit }
    });
    match tokio::time::timeout(within + Duration::from_secs(5), found).await {
        Ok(v) => v,
        Err(_) => panic!(
            "{what}: last status {}",
            last.lock().unwrap_or_else(|e| e.into_inner())
        ),
    }
}

/// The phase of a status.
pub fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or_default()
}

/// The steps the status's transitions entered, in order, for phases that
/// move (Progressing, Paused, Promoted): a step repeated would show twice.
pub fn steps_entered(status: &Value) -> Vec<u64> {
    let mut steps: Vec<u64> = Vec::new();
    for t in status["transitions"].as_array().into_iter().flatten() {
        let step = t["step"].as_u64().unwrap_or(u64::MAX);
        let moving = matches!(
            t["phase"].as_str(),
            Some("Progressing" | "Paused" | "Promoted")
        );
        if moving && steps.last() != Some(&step) {
            steps.push(step);
        }
    }
    steps
}
