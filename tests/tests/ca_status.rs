//! `bulkheadctl ca status` and the control plane's trust metrics (issue
//! 10): the roots with their subject, expiry and SHA-256 fingerprint, the
//! issuer and the root it chains to, how many registered endpoints hold a
//! certificate of each root, and which issuer keys each replica holds; the
//! admin port exports when each root and the issuer expire.

use bulkhead_tests::prom::metric_if_any;
use bulkhead_tests::proxy::*;
use bulkhead_tests::rotation::*;
use bulkhead_tests::shop::{self, STABLE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_status_shows_the_roots_the_issuer_and_what_each_endpoint_holds() {
    let mesh = shop::memory(&[]).await;
    let app = App::http("inventory", STABLE).await;
    let _inventory = mesh.inventory(STABLE, "node-1", &app);
    let _web = mesh.web("node-1");
    let root = fingerprint_of(&mesh.ca, "root.crt");
    let issuer = fingerprint_of(&mesh.ca, "issuer.crt");

    let status = until_status(&mesh, "both endpoints counted under the root", |s| {
        s["workloads"][&root] == 2
    })
    .await;
    assert_eq!(status["stage"], "none", "{status:#}");
    let roots = status["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 1, "{status:#}");
    assert_eq!(roots[0]["fingerprint"], root.as_str());
    assert_eq!(root.len(), 64, "SHA-256, hex, no colons");
    assert!(roots[0]["subject"].as_str().unwrap().contains("root CA"));
    let not_after = roots[0]["notAfter"].as_str().expect("notAfter");
    assert!(
        not_after.len() == 20 && not_after.ends_with('Z') && &not_after[10..11] == "T",
        "RFC 3339: {not_after}"
    );
    assert_eq!(status["issuer"]["root"], root.as_str(), "{status:#}");
    assert_eq!(status["issuer"]["fingerprint"], issuer.as_str());
    assert!(status["issuer"]["notAfter"].is_string());
    let replicas = status["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 1, "{status:#}");
    assert_eq!(replicas[0]["issuers"], serde_json::json!([issuer]));
    assert!(status.get("nextIssuer").is_none() && status.get("renewBy").is_none());

    // The table is for people; it names the stage and the root.
    let table = mesh.cp.ctl(&mesh.ca, &["ca", "status"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("STAGE  none") && text.contains(&root),
        "{text}"
    );

    let metrics = mesh.cp.metrics();
    assert_eq!(
        metric_if_any(
            &metrics,
            "bulkhead_trust_root_expiry_timestamp_seconds",
            &[("fingerprint", &root)]
        ),
        Some(not_after_of(&mesh.ca, "root.crt") as f64),
        "{metrics}"
    );
    assert_eq!(
        metric_if_any(&metrics, "bulkhead_issuer_expiry_timestamp_seconds", &[]),
        Some(not_after_of(&mesh.ca, "issuer.crt") as f64)
    );
    assert!(
        !metrics.contains("bulkhead_cert_expiry_seconds"),
        "the old name is gone"
    );
}
