//! Endpoint registration over mTLS on leases, and the Watch push, against a
//! real etcd and the real control-plane binary.

use std::time::Duration;

use bulkhead_proto::pb::{self, change::Op, discovery_client::DiscoveryClient};
use bulkhead_tests::control::*;
use bulkhead_tests::etcd::EtcdServer;
use tonic::Code;

const SHOP: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
  serviceAccounts: [cart, cart-canary]
";

fn etcd_store(etcd: &EtcdServer) -> StoreSpec {
    StoreSpec::Etcd {
        endpoints: vec![etcd.client_url()],
        prefix: "/bulkhead/".into(),
    }
}

fn discovery(
    cp: &ControlPlane,
    ca: &TestCa,
    w: &Workload,
) -> DiscoveryClient<tonic::transport::Channel> {
    DiscoveryClient::new(cp.channel(ca, Some(w.slot.clone())))
}

/// Names the registration of `shop/service` at `address:4143` on `lease`.
fn registration(service: &str, address: &str, lease_id: i64) -> pb::KeepAliveRequest {
    pb::KeepAliveRequest {
        namespace: "shop".into(),
        service: service.into(),
        address: address.into(),
        lease_id,
        inbound_port: 4143,
        ..Default::default()
    }
}

async fn registered(cp: &ControlPlane, ca: &TestCa, service: &str) -> Vec<pb::Endpoint> {
    endpoints_of(cp, ca, "shop", service).await
}

#[tokio::test]
async fn registration_lives_on_a_lease_kept_alive_by_the_registrant() {
    let etcd = EtcdServer::start();
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &etcd_store(&etcd), &["--lease-ttl", "2s"]);
    apply(&cp, &ca, SHOP).await;
    let inventory = workload(&cp, &ca, "shop/inventory").await;
    let mut client = discovery(&cp, &ca, &inventory);

    let mut ep = endpoint("shop", "inventory", "3.1.0", "198.18.0.7", "node-1");
    // A registrant cannot choose the identity the record carries.
    ep.identity = "spiffe://cluster.local/ns/shop/sa/admin".into();
    let reg = client
        .register(pb::RegisterRequest {
            endpoint: Some(ep),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    assert_eq!(reg.ttl_seconds, 2);
    let eps = registered(&cp, &ca, "inventory").await;
    assert_eq!(eps.len(), 1);
    assert_eq!(
        eps[0].identity,
        "spiffe://cluster.local/ns/shop/sa/inventory"
    );
    assert_eq!(eps[0].version, "3.1.0");
    assert_eq!(
        eps[0].locality.as_ref().map(|l| l.node.as_str()),
        Some("node-1")
    );

    // Kept alive for three TTLs, the record stays.
    let key = registration("inventory", "198.18.0.7", reg.lease_id);
    for _ in 0..12 {
        client.keep_alive(key.clone()).await.expect("keep alive");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(registered(&cp, &ca, "inventory").await.len(), 1);

    // The registrant stops: the record goes away on its own.
    wait_for_async("the lease to expire", Duration::from_secs(15), || async {
        registered(&cp, &ca, "inventory")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    let err = client.keep_alive(key).await.expect_err("lease is gone");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn deregistration_removes_the_record_at_once_and_only_for_its_owner() {
    let etcd = EtcdServer::start();
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &etcd_store(&etcd), &["--lease-ttl", "30s"]);
    apply(&cp, &ca, SHOP).await;
    let cart = workload(&cp, &ca, "shop/cart").await;
    let canary = workload(&cp, &ca, "shop/cart-canary").await;

    let reg = discovery(&cp, &ca, &cart)
        .register(pb::RegisterRequest {
            endpoint: Some(endpoint("shop", "cart", "1.0.0", "198.18.0.9", "n1")),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    let key = registration("cart", "198.18.0.9", reg.lease_id);
    // Another identity allowed for the same service still cannot remove it.
    let err = discovery(&cp, &ca, &canary)
        .deregister(key.clone())
        .await
        .expect_err("not the owner");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(registered(&cp, &ca, "cart").await.len(), 1);

    discovery(&cp, &ca, &cart)
        .deregister(key)
        .await
        .expect("deregister");
    assert!(registered(&cp, &ca, "cart").await.is_empty());
}

#[tokio::test]
async fn readiness_is_set_on_the_lease_by_its_owner_only() {
    let etcd = EtcdServer::start();
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &etcd_store(&etcd), &["--lease-ttl", "30s"]);
    apply(&cp, &ca, SHOP).await;
    let cart = workload(&cp, &ca, "shop/cart").await;
    let canary = workload(&cp, &ca, "shop/cart-canary").await;

    // Registered before its app is ready: the operator sees it with --all
    // only (the hub's unit tests show it is pushed to no sidecar).
    let reg = discovery(&cp, &ca, &cart)
        .register(pb::RegisterRequest {
            endpoint: Some(pb::Endpoint {
                ready: Some(false),
                ..endpoint("shop", "cart", "1.0.0", "198.18.0.9", "n1")
            }),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    assert!(registered(&cp, &ca, "cart").await.is_empty());
    let all = registrations_of(&cp, &ca, "shop", "cart").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].ready, Some(false));

    let key = registration("cart", "198.18.0.9", reg.lease_id);
    let set = |registration: pb::KeepAliveRequest, ready| pb::SetReadyRequest {
        registration: Some(registration),
        ready,
    };
    // Another identity allowed for the same service cannot flip it.
    let err = discovery(&cp, &ca, &canary)
        .set_ready(set(key.clone(), true))
        .await
        .expect_err("not the owner");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A lease that is not the registration's: register again.
    let err = discovery(&cp, &ca, &cart)
        .set_ready(set(
            pb::KeepAliveRequest {
                lease_id: reg.lease_id + 1,
                ..key.clone()
            },
            true,
        ))
        .await
        .expect_err("wrong lease");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = discovery(&cp, &ca, &cart)
        .set_ready(pb::SetReadyRequest::default())
        .await
        .expect_err("no registration named");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    discovery(&cp, &ca, &cart)
        .set_ready(set(key.clone(), true))
        .await
        .expect("owner sets ready");
    let ready = registered(&cp, &ca, "cart").await;
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].ready, Some(true));
    // Still on its lease: deregistering by that lease removes it.
    discovery(&cp, &ca, &cart)
        .deregister(key)
        .await
        .expect("deregister");
    assert!(registrations_of(&cp, &ca, "shop", "cart").await.is_empty());
}

#[tokio::test]
async fn only_listed_service_accounts_may_register() {
    let etcd = EtcdServer::start();
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &etcd_store(&etcd), &[]);
    apply(&cp, &ca, SHOP).await;
    let inventory = workload(&cp, &ca, "shop/inventory").await;
    let canary = workload(&cp, &ca, "shop/cart-canary").await;
    let other_ns = workload(&cp, &ca, "other/cart").await;

    // serviceAccounts defaults to the service's own name...
    let err = discovery(&cp, &ca, &inventory)
        .register(pb::RegisterRequest {
            endpoint: Some(endpoint("shop", "cart", "1", "198.18.0.1", "n")),
            ..Default::default()
        })
        .await
        .expect_err("inventory is not a cart service account");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("serviceAccounts"),
        "{}",
        err.message()
    );

    // ...and a listed extra account is admitted.
    discovery(&cp, &ca, &canary)
        .register(pb::RegisterRequest {
            endpoint: Some(endpoint("shop", "cart", "2", "198.18.0.2", "n")),
            ..Default::default()
        })
        .await
        .expect("cart-canary is listed");

    // Same service account name in another namespace: refused.
    let err = discovery(&cp, &ca, &other_ns)
        .register(pb::RegisterRequest {
            endpoint: Some(endpoint("shop", "cart", "1", "198.18.0.3", "n")),
            ..Default::default()
        })
        .await
        .expect_err("other namespace");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // No Service resource at all: a clear precondition failure.
    let err = discovery(&cp, &ca, &inventory)
        .register(pb::RegisterRequest {
            endpoint: Some(endpoint("shop", "payments", "1", "198.18.0.4", "n")),
            ..Default::default()
        })
        .await
        .expect_err("no such service");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // Malformed records are refused, naming the field.
    let mut bad = endpoint("shop", "inventory", "1", "not-an-ip", "n");
    let err = discovery(&cp, &ca, &inventory)
        .register(pb::RegisterRequest {
            endpoint: Some(bad.clone()),
            ..Default::default()
        })
        .await
        .expect_err("bad address");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("address"), "{}", err.message());
    bad.address = "198.18.0.5".into();
    bad.ports[0].port = 0;
    let err = discovery(&cp, &ca, &inventory)
        .register(pb::RegisterRequest {
            endpoint: Some(bad),
            ..Default::default()
        })
        .await
        .expect_err("bad port");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Without a client certificate nothing is possible.
    let err = DiscoveryClient::new(cp.channel(&ca, None))
        .register(pb::RegisterRequest {
            endpoint: Some(endpoint("shop", "inventory", "1", "198.18.0.6", "n")),
            ..Default::default()
        })
        .await
        .expect_err("no client cert");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

#[tokio::test]
async fn watch_pushes_a_snapshot_then_changes_with_rising_revisions() {
    let etcd = EtcdServer::start();
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &etcd_store(&etcd), &[]);
    apply(&cp, &ca, SHOP).await;
    let cart = workload(&cp, &ca, "shop/cart").await;
    let inventory = workload(&cp, &ca, "shop/inventory").await;

    let mut watch = Watcher::start(&cp, &ca, &cart, &["inventory"], "cart").await;
    let first = watch.next().await;
    assert!(first.snapshot);
    assert!(
        first
            .changes
            .iter()
            .any(|c| matches!(c.item, Some(pb::change::Item::TrustBundle(_))))
    );
    let res = resource_changes(&first);
    assert!(
        res.iter()
            .any(|(_, k, ns, n)| k == "Service" && ns == "shop" && n == "inventory"),
        "{res:?}"
    );
    assert!(
        res.iter().any(|(_, k, _, n)| k == "Service" && n == "cart"),
        "own Service is pushed: {res:?}"
    );
    let mut revision = first.revision;

    // An endpoint of a watched service appears...
    let reg = discovery(&cp, &ca, &inventory)
        .register(pb::RegisterRequest {
            endpoint: Some(endpoint("shop", "inventory", "3.0.0", "198.18.0.7", "n1")),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    let u = watch.next().await;
    assert!(!u.snapshot);
    assert!(u.revision > revision);
    revision = u.revision;
    assert_eq!(
        endpoint_changes(&u),
        [(
            Op::Upsert as i32,
            "inventory".to_owned(),
            "198.18.0.7".to_owned()
        )]
    );

    // ...a split for it and an allow-list targeting the subscriber arrive...
    apply(
        &cp,
        &ca,
        "
apiVersion: bulkhead.dev/v1
kind: TrafficSplit
metadata: {name: inventory, namespace: shop}
spec:
  service: inventory
  backends: [{version: 3.0.0, weight: 90}, {version: 3.1.0, weight: 10}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: cart-from-web, namespace: shop}
spec:
  target: cart
  rules: [{from: [web]}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: not-for-cart, namespace: shop}
spec:
  target: inventory
  rules: [{from: [cart]}]
",
    )
    .await;
    let u = watch.next().await;
    assert!(u.revision > revision);
    revision = u.revision;
    let res = resource_changes(&u);
    assert!(
        res.contains(&(
            Op::Upsert as i32,
            "TrafficSplit".into(),
            "shop".into(),
            "inventory".into()
        )),
        "{res:?}"
    );
    assert!(
        res.contains(&(
            Op::Upsert as i32,
            "AllowList".into(),
            "shop".into(),
            "cart-from-web".into()
        )),
        "{res:?}"
    );
    assert!(
        !res.iter().any(|(_, _, _, n)| n == "not-for-cart"),
        "another service's inbound policy must not be pushed: {res:?}"
    );

    // ...and deletions are pushed too.
    discovery(&cp, &ca, &inventory)
        .deregister(registration("inventory", "198.18.0.7", reg.lease_id))
        .await
        .expect("deregister");
    let u = watch
        .until("the endpoint deletion", |u| !endpoint_changes(u).is_empty())
        .await;
    assert!(u.revision > revision);
    assert_eq!(
        endpoint_changes(&u),
        [(
            Op::Delete as i32,
            "inventory".to_owned(),
            "198.18.0.7".to_owned()
        )]
    );
    assert!(
        watch
            .updates
            .iter()
            .all(|u| !u.snapshot || u.revision == first.revision),
        "no resnapshot expected"
    );
}

#[tokio::test]
async fn watch_needs_a_mesh_identity_and_bounded_requests() {
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &StoreSpec::Memory, &[]);
    let err = DiscoveryClient::new(cp.channel(&ca, None))
        .watch(pb::WatchRequest {
            services: vec!["*".into()],
            own_service: String::new(),
            directory: false,
            ..Default::default()
        })
        .await
        .expect_err("no client cert");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let w = workload(&cp, &ca, "shop/cart").await;
    let err = discovery(&cp, &ca, &w)
        .watch(pb::WatchRequest {
            services: vec!["Not_A_Name".into()],
            own_service: String::new(),
            directory: false,
            ..Default::default()
        })
        .await
        .expect_err("bad service name");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = discovery(&cp, &ca, &w)
        .watch(pb::WatchRequest {
            services: (0..2000).map(|i| format!("s{i}")).collect(),
            own_service: String::new(),
            directory: false,
            ..Default::default()
        })
        .await
        .expect_err("too many services");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

/// A sidecar that subscribes on demand (mesh DNS, capture): every Service
/// in the directory, endpoints and splits only for what it names, and
/// "who is at this address" for pod IPs it has not subscribed to.
#[tokio::test]
async fn directory_watch_and_address_lookup_serve_subscription_on_demand() {
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &StoreSpec::Memory, &[]);
    apply(&cp, &ca, SHOP).await;
    apply(
        &cp,
        &ca,
        "
apiVersion: bulkhead.dev/v1
kind: TrafficSplit
metadata: {name: inventory, namespace: shop}
spec:
  service: inventory
  backends: [{version: 3.0.0, weight: 100}]
",
    )
    .await;
    let cart = workload(&cp, &ca, "shop/cart").await;
    let inventory = workload(&cp, &ca, "shop/inventory").await;
    for (w, svc, ip) in [
        (&cart, "cart", "198.18.0.9"),
        (&inventory, "inventory", "198.18.0.7"),
    ] {
        discovery(&cp, &ca, w)
            .register(pb::RegisterRequest {
                endpoint: Some(endpoint("shop", svc, "3.0.0", ip, "n1")),
                ..Default::default()
            })
            .await
            .expect("register");
    }
    let request = |services: &[&str]| pb::WatchRequest {
        services: services.iter().map(|s| s.to_string()).collect(),
        own_service: String::new(),
        directory: true,
        ..Default::default()
    };

    // Named nothing: both Services, no endpoints, no split.
    let mut watch = Watcher::start_with(&cp, &ca, &cart, request(&[])).await;
    let first = watch.next().await;
    let res = resource_changes(&first);
    for name in ["cart", "inventory"] {
        assert!(
            res.iter().any(|(_, k, _, n)| k == "Service" && n == name),
            "{name} is in the directory: {res:?}"
        );
    }
    assert!(
        !res.iter().any(|(_, k, _, _)| k == "TrafficSplit"),
        "{res:?}"
    );
    assert!(endpoint_changes(&first).is_empty());
    // Named inventory: its endpoint and split too, not cart's endpoint.
    let mut watch = Watcher::start_with(&cp, &ca, &cart, request(&["inventory"])).await;
    let first = watch.next().await;
    assert_eq!(
        endpoint_changes(&first),
        [(
            Op::Upsert as i32,
            "inventory".to_owned(),
            "198.18.0.7".to_owned()
        )]
    );
    assert!(
        resource_changes(&first)
            .iter()
            .any(|(_, k, _, _)| k == "TrafficSplit")
    );

    let mut client = discovery(&cp, &ca, &cart);
    let lookup = |address: &str| pb::LookupAddressRequest {
        address: address.into(),
    };
    let at = client
        .lookup_address(lookup("198.18.0.7"))
        .await
        .expect("lookup")
        .into_inner();
    assert_eq!(at.services, ["inventory.shop"]);
    let nobody = client
        .lookup_address(lookup("198.18.0.99"))
        .await
        .expect("lookup")
        .into_inner();
    assert!(nobody.services.is_empty());
    let err = client
        .lookup_address(lookup("not-an-ip"))
        .await
        .expect_err("bad address");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("not an IP address"), "{err:?}");
    let err = DiscoveryClient::new(cp.channel(&ca, None))
        .lookup_address(lookup("198.18.0.7"))
        .await
        .expect_err("no client cert");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}
