//! Locality in Kubernetes (issue 9): a sidecar knows its node's name only
//! (the downward API); the control plane, reading Nodes from the API server
//! (`--k8s-api`), records the zone and region of the Node's
//! `topology.kubernetes.io` labels with the endpoint and tells the sidecar.
//! A node without them still works, on the node tier, and the sidecar says
//! so once. The API server is a stand-in serving Node objects.

use std::time::Duration;

use bulkhead_tests::apiserver::{ApiServer, node};
use bulkhead_tests::control::{endpoints_of, wait_for_async};
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::proxy::*;

const SHOP: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_and_region_come_from_the_nodes_labels() {
    let labelled = node(
        "node-a",
        &[
            ("topology.kubernetes.io/zone", "eu-west-1a"),
            ("topology.kubernetes.io/region", "eu-west-1"),
            ("kubernetes.io/hostname", "node-a"),
        ],
    );
    let api = ApiServer::start(
        "control-plane-token",
        &[
            ("/api/v1/nodes/node-a", labelled),
            ("/api/v1/nodes/node-b", node("node-b", &[])),
        ],
    )
    .await;
    let url = api.url();
    let mut extra = vec!["--k8s-api", url.as_str()];
    let creds = api.credentials_args();
    extra.extend(creds.iter().map(String::as_str));
    let mesh = Mesh::memory("cluster.local", SHOP, &extra).await;
    let app = App::http("web", "1.0.0").await;
    // Neither sidecar is told its zone: only its node, as injected ones are.
    let spec = |node: &str| {
        let mut spec = SidecarSpec::new("shop", "web", "1.0.0")
            .app(&app)
            .node(node)
            .zone("");
        spec.region = String::new();
        spec
    };
    let on_a = mesh.sidecar(spec("node-a"));
    let on_b = mesh.sidecar(spec("node-b"));

    let endpoints = wait_for_async("both endpoints registered", Duration::from_secs(20), || {
        let mesh = &mesh;
        async move {
            let listed = endpoints_of(&mesh.cp, &mesh.ca, "shop", "web").await;
            (listed.len() == 2).then_some(listed)
        }
    })
    .await;
    let locality_of = |node: &str| {
        let ep = endpoints
            .iter()
            .find(|e| e.locality.as_ref().is_some_and(|l| l.node == node))
            .unwrap_or_else(|| panic!("no endpoint on {node}: {endpoints:?}"));
        let l = ep.locality.clone().unwrap_or_default();
        (l.zone, l.region)
    };
    assert_eq!(
        locality_of("node-a"),
        ("eu-west-1a".to_owned(), "eu-west-1".to_owned())
    );
    assert_eq!(locality_of("node-b"), (String::new(), String::new()));
    assert!(api.served("/api/v1/nodes/node-a") >= 1);

    // Each sidecar took the recorded locality as its own.
    let own = on_a.config()["locality"].clone();
    assert_eq!(own["zone"], "eu-west-1a", "{own}");
    assert_eq!(own["region"], "eu-west-1", "{own}");
    // The one on the unlabelled node works (it is ready and registered)
    // and said once that only the node tier applies.
    let log = on_b.log_text();
    assert_eq!(
        log.matches("no zone known for this node").count(),
        1,
        "{log}"
    );
    assert!(!on_a.log_text().contains("no zone known"));
}
