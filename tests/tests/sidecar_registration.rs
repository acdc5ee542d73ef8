//! Registration follows the app's health (issue 9): an endpoint is
//! registered once its app passes its readiness probe (the one the
//! injector hands over in `BULKHEAD_APP_PROBES`), withdrawn when the app
//! stops being ready, so callers stop being sent there without waiting for
//! outlier ejection, and registered again when it recovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bulkhead_tests::control::{endpoints_of, wait_for_async};
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::proxy::*;
use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::json;

const SHOP: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unready_app_is_withdrawn_and_registered_again_when_it_recovers() {
    let mesh = Mesh::memory("cluster.local", SHOP, &[]).await;
    // The app's readiness endpoint answers what the test says.
    let readiness = Arc::new(AtomicU16::new(200));
    let status = readiness.clone();
    let app = App::http_with(move |_req| {
        let code = status.load(Ordering::SeqCst);
        async move {
            Response::builder()
                .status(code)
                .body(Full::new(Bytes::from_static(b"ok")))
                .unwrap()
        }
    })
    .await;
    let probes = json!({"/app-health/web/readiness": {"port": app.addr.port(), "path": "/ready"}});
    let _web = mesh.sidecar(
        SidecarSpec::new("shop", "web", "1.0.0")
            .app(&app)
            .env("BULKHEAD_APP_PROBES", &probes.to_string()),
    );
    let registered = |expected: usize| {
        let mesh = &mesh;
        async move {
            let listed = endpoints_of(&mesh.cp, &mesh.ca, "shop", "web").await;
            (listed.len() == expected).then_some(())
        }
    };
    let wait = Duration::from_secs(10);
    wait_for_async("web registered while ready", wait, || registered(1)).await;

    // The app says it is not ready: the endpoint is withdrawn ...
    readiness.store(503, Ordering::SeqCst);
    wait_for_async("web withdrawn while unready", wait, || registered(0)).await;
    // ... and registered again once it recovers.
    readiness.store(200, Ordering::SeqCst);
    wait_for_async("web registered again", wait, || registered(1)).await;
}
