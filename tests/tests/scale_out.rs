//! Scale-out and faults: two replicas on one etcd, control-plane and etcd
//! restarts, and a three-member etcd cluster losing a member — none of which
//! a client may notice.

use std::time::Duration;

use bulkhead_proto::pb::{self, change::Op};
use bulkhead_tests::control::*;
use bulkhead_tests::etcd::{EtcdCluster, EtcdServer};

const INVENTORY: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
";

fn split(name: &str, canary_weight: u32) -> String {
    format!(
        "
apiVersion: bulkhead.dev/v1
kind: TrafficSplit
metadata: {{name: {name}, namespace: shop}}
spec:
  service: inventory
  backends: [{{version: 3.0.0, weight: {}}}, {{version: 3.1.0, weight: {canary_weight}}}]
",
        100 - canary_weight
    )
}

fn store(endpoints: Vec<String>) -> StoreSpec {
    StoreSpec::Etcd {
        endpoints,
        prefix: "/bulkhead/".into(),
    }
}

/// Waits for the update that upserts the TrafficSplit `name`.
async fn split_arrives(watch: &mut Watcher, name: &str) -> pb::WatchUpdate {
    let u = watch
        .until(&format!("TrafficSplit {name}"), |u| {
            resource_changes(u).iter().any(|(op, kind, _, n)| {
                *op == Op::Upsert as i32 && kind == "TrafficSplit" && n == name
            })
        })
        .await;
    assert!(
        !u.snapshot,
        "the change must come as an increment, not a new snapshot"
    );
    u
}

#[tokio::test]
async fn a_resource_applied_through_one_replica_reaches_a_watcher_of_the_other() {
    let etcd = EtcdServer::start();
    let ca = TestCa::init("cluster.local");
    let a = ControlPlane::start(&ca, &store(vec![etcd.client_url()]), &[]);
    let b = ControlPlane::start(&ca, &store(vec![etcd.client_url()]), &[]);
    apply(&a, &ca, INVENTORY).await;
    let cart = workload(&b, &ca, "shop/cart").await;
    let mut watch = Watcher::start(&b, &ca, &cart, &["inventory"], "cart").await;
    let snapshot = watch.next().await;
    assert!(snapshot.snapshot);
    assert!(
        resource_changes(&snapshot)
            .iter()
            .any(|(_, k, _, n)| k == "Service" && n == "inventory")
    );

    apply(&a, &ca, &split("inventory", 10)).await;
    let u = split_arrives(&mut watch, "inventory").await;
    assert!(u.revision > snapshot.revision);

    // And an endpoint registered through B is listed through A.
    let inventory = workload(&a, &ca, "shop/inventory").await;
    pb::discovery_client::DiscoveryClient::new(b.channel(&ca, Some(inventory.slot.clone())))
        .register(pb::RegisterRequest {
            endpoint: Some(endpoint("shop", "inventory", "3.0.0", "198.18.0.7", "n1")),
            ..Default::default()
        })
        .await
        .expect("register through B");
    let listed = a
        .admin_client(&ca)
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .expect("list through A")
        .into_inner();
    assert_eq!(listed.endpoints.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_is_ridden_out_without_a_gap_for_watchers() {
    let mut etcd = EtcdServer::start();
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &store(vec![etcd.client_url()]), &[]);
    apply(&cp, &ca, INVENTORY).await;
    let cart = workload(&cp, &ca, "shop/cart").await;
    let mut watch = Watcher::start(&cp, &ca, &cart, &["inventory"], "cart").await;
    let snapshot = watch.next().await;
    apply(&cp, &ca, &split("before", 10)).await;
    let before = split_arrives(&mut watch, "before").await;

    etcd.kill();
    etcd.restart();

    // The control plane's own watch resumes; writes after the restart reach
    // the same, unbroken stream with higher revisions, and no resnapshot.
    let mut admin = cp.admin_client(&ca);
    wait_for_async(
        "the control plane to write to the restarted etcd",
        Duration::from_secs(30),
        || {
            let mut admin = admin.clone();
            async move {
                admin
                    .apply(pb::ApplyRequest {
                        source: "after.yaml".into(),
                        yaml: split("after", 20),
                        dry_run: false,
                    })
                    .await
                    .ok()
            }
        },
    )
    .await;
    let after = split_arrives(&mut watch, "after").await;
    assert!(after.revision > before.revision);
    assert!(before.revision > snapshot.revision);
    assert_eq!(
        watch.updates.iter().filter(|u| u.snapshot).count(),
        1,
        "one snapshot at the start, increments after"
    );
    // The admin API sees everything, old and new.
    let got = admin
        .get(pb::GetRequest {
            kind: "TrafficSplit".into(),
            namespace: "shop".into(),
            name: String::new(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.resources.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restart_loses_no_registration_or_resource() {
    let etcd = EtcdServer::start();
    let ca = TestCa::init("cluster.local");
    let mut cp = ControlPlane::start(
        &ca,
        &store(vec![etcd.client_url()]),
        &["--lease-ttl", "10s"],
    );
    apply(&cp, &ca, INVENTORY).await;
    let inventory = workload(&cp, &ca, "shop/inventory").await;
    let reg =
        pb::discovery_client::DiscoveryClient::new(cp.channel(&ca, Some(inventory.slot.clone())))
            .register(pb::RegisterRequest {
                endpoint: Some(endpoint("shop", "inventory", "3.0.0", "198.18.0.7", "n1")),
                ..Default::default()
            })
            .await
            .expect("register")
            .into_inner();

    cp.restart();

    // The registrant keeps its lease alive through the new process.
    pb::discovery_client::DiscoveryClient::new(cp.channel(&ca, Some(inventory.slot.clone())))
        .keep_alive(pb::KeepAliveRequest {
            namespace: "shop".into(),
            service: "inventory".into(),
            address: "198.18.0.7".into(),
            lease_id: reg.lease_id,
            inbound_port: 4143,
            ..Default::default()
        })
        .await
        .expect("keep alive after restart");
    let cart = workload(&cp, &ca, "shop/cart").await;
    let mut watch = Watcher::start(&cp, &ca, &cart, &["inventory"], "").await;
    let snapshot = watch.next().await;
    assert_eq!(
        endpoint_changes(&snapshot),
        [(Op::Upsert as i32, "inventory".into(), "198.18.0.7".into())]
    );
    assert!(
        resource_changes(&snapshot)
            .iter()
            .any(|(_, k, _, n)| k == "Service" && n == "inventory")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_etcd_cluster_can_lose_any_one_member() {
    let mut cluster = EtcdCluster::start(3);
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &store(cluster.client_urls()), &[]);
    apply(&cp, &ca, INVENTORY).await;
    let cart = workload(&cp, &ca, "shop/cart").await;
    let mut watch = Watcher::start(&cp, &ca, &cart, &["inventory"], "cart").await;
    let mut last = watch.next().await.revision;

    for member in 0..3 {
        cluster.kill_member(member);
        // Everything a client does keeps working, with no retry needed
        // from the client's side beyond the control plane's own.
        let name = format!("without-m{member}");
        let mut admin = cp.admin_client(&ca);
        admin
            .apply(pb::ApplyRequest {
                source: "split.yaml".into(),
                yaml: split(&name, 10),
                dry_run: false,
            })
            .await
            .unwrap_or_else(|e| {
                panic!("apply with member {member} down: {e:?}\n{}", cp.log_text())
            });
        let u = split_arrives(&mut watch, &name).await;
        assert!(u.revision > last);
        last = u.revision;
        let token = ca.token("shop/inventory", "10m", true);
        let w = certify(&cp, &ca, &token)
            .await
            .unwrap_or_else(|e| panic!("certify with member {member} down: {e:?}"));
        let err = certify(&cp, &ca, &token)
            .await
            .expect_err("one-time token still one-time");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        pb::discovery_client::DiscoveryClient::new(cp.channel(&ca, Some(w.slot.clone())))
            .register(pb::RegisterRequest {
                endpoint: Some(endpoint(
                    "shop",
                    "inventory",
                    "3.0.0",
                    &format!("198.18.0.{}", 10 + member),
                    "n1",
                )),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("register with member {member} down: {e:?}"));
        cluster.restart_member(member);
    }
    assert_eq!(
        watch.updates.iter().filter(|u| u.snapshot).count(),
        1,
        "no resnapshot while members come and go"
    );
}
