//! The sidecar's HTTP path end to end: app → sidecar → mTLS → sidecar → app,
//! with allow-lists enforced at the callee and paths normalized.

use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::prom;
use bulkhead_tests::proxy::*;

const SHOP: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: cart-from-web, namespace: shop}
spec:
  target: cart
  rules:
    - from: [web]
      ports: [8080]
      http: {methods: [GET, POST], paths: ['/cart/**']}
";

struct Shop {
    mesh: Mesh,
    cart_app: App,
    cart: Sidecar,
    web: Sidecar,
}

async fn shop() -> Shop {
    let mesh = Mesh::memory("cluster.local", SHOP, &[]).await;
    let cart_app = App::http("cart", "1.0.0").await;
    let cart = mesh.sidecar(SidecarSpec::new("shop", "cart", "1.0.0").app(&cart_app));
    let web = mesh.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("cart"));
    Shop {
        mesh,
        cart_app,
        cart,
        web,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_call_arrives_with_the_normalized_path() {
    let s = shop().await;
    until_routable(&s.web, "cart", "/cart/probe").await;
    let r = call(s.web.upstream("cart"), "GET", "/cart/items?id=7", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("service=cart") && r.body.contains("path=/cart/items?id=7"),
        "{}",
        r.body
    );
    // Dot segments and duplicate slashes are resolved before matching, and
    // the app sees exactly the path that was authorized.
    let r = call(s.web.upstream("cart"), "GET", "/cart//a/./b/../c", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("path=/cart/a/c"), "{}", r.body);
    // POST is allowed too (not retried, but delivered).
    let r = call(s.web.upstream("cart"), "POST", "/cart/checkout", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 200, "{r:?}");
    let _ = (&s.mesh, &s.cart);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_path_or_method_is_denied_by_the_mesh_not_the_app() {
    let s = shop().await;
    until_routable(&s.web, "cart", "/cart/probe").await;
    let seen = s.cart_app.seen();
    for (method, path) in [
        ("GET", "/admin"),
        ("DELETE", "/cart/1"),
        ("GET", "/cart/../admin"),
    ] {
        let r = call(s.web.upstream("cart"), method, path, &[])
            .await
            .expect("call");
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
        assert_eq!(
            r.headers
                .get("x-bulkhead-error")
                .map(|v| v.to_str().unwrap()),
            Some("denied"),
            "{r:?}"
        );
        assert!(r.headers.contains_key("x-bulkhead-denied"), "{r:?}");
    }
    // Ambiguous encodings are refused, not guessed.
    for path in ["/cart/a%2Fb", "/cart/a%5Cb", "/cart/a%00"] {
        let r = call(s.web.upstream("cart"), "GET", path, &[])
            .await
            .expect("call");
        assert_eq!(r.status, 400, "{path}: {r:?}");
    }
    assert_eq!(s.cart_app.seen(), seen, "nothing denied reached the app");
    let metrics = s.cart.metrics();
    assert!(metrics.contains("bulkhead_authz_denied_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_caller_is_denied() {
    let s = shop().await;
    let inventory = s
        .mesh
        .sidecar(SidecarSpec::new("shop", "inventory", "1.0.0").upstream("cart"));
    until_routable(&s.web, "cart", "/cart/probe").await;
    let r = call(inventory.upstream("cart"), "GET", "/cart/items", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body
            .contains("spiffe://cluster.local/ns/shop/sa/inventory"),
        "the denial names the caller: {}",
        r.body
    );
}

/// Request metrics carry the service, the version and identity of the
/// endpoint that answered, and the status class, at both ends; answers the
/// mesh gives without an endpoint are counted with empty version and peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_name_both_ends() {
    let s = shop().await;
    let caller = s.mesh.sidecar(
        SidecarSpec::new("shop", "web", "1.0.0")
            .upstream("cart")
            .upstream("inventory")
            // The multi-threaded runtime serves as the default one does.
            .arg("--workers")
            .arg("2"),
    );
    until_routable(&caller, "cart", "/cart/probe").await;
    for _ in 0..5 {
        let r = call(caller.upstream("cart"), "GET", "/cart/items", &[])
            .await
            .expect("call");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = call(caller.upstream("cart"), "GET", "/admin", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 403, "{r:?}");
    // inventory is a Service without endpoints.
    let r = call(caller.upstream("inventory"), "GET", "/", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 503, "{r:?}");

    let cart_id = "spiffe://cluster.local/ns/shop/sa/cart";
    let web_id = "spiffe://cluster.local/ns/shop/sa/web";
    let outbound = |class| {
        [
            ("direction", "outbound"),
            ("service", "cart"),
            ("version", "1.0.0"),
            ("peer", cart_id),
            ("status_class", class),
        ]
    };
    assert!(caller.metric("bulkhead_requests_total", &outbound("2xx")) >= 5.0);
    assert!(caller.metric("bulkhead_request_duration_seconds_count", &outbound("2xx")) >= 5.0);
    // A Prometheus histogram (aggregatable across pods), not a summary:
    // at least 10 buckets from 1 ms to 10 s, cumulative, +Inf = count.
    let buckets = prom::buckets(
        &caller.metrics(),
        "bulkhead_request_duration_seconds",
        &outbound("2xx"),
    );
    let finite: Vec<f64> = buckets
        .iter()
        .map(|b| b.0)
        .filter(|b| b.is_finite())
        .collect();
    assert!(finite.len() >= 10, "{buckets:?}");
    assert_eq!(finite.first(), Some(&0.001), "{buckets:?}");
    assert_eq!(finite.last(), Some(&10.0), "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(
        buckets.last().map(|b| b.1),
        Some(caller.metric("bulkhead_request_duration_seconds_count", &outbound("2xx")))
    );
    assert_eq!(
        caller.metric("bulkhead_requests_total", &outbound("4xx")),
        1.0
    );
    let unattributed = [
        ("direction", "outbound"),
        ("service", "inventory"),
        ("version", ""),
        ("peer", ""),
        ("status_class", "5xx"),
    ];
    assert_eq!(caller.metric("bulkhead_requests_total", &unattributed), 1.0);

    let inbound = |class| {
        [
            ("direction", "inbound"),
            ("service", "cart"),
            ("version", "1.0.0"),
            ("peer", web_id),
            ("status_class", class),
        ]
    };
    assert!(s.cart.metric("bulkhead_requests_total", &inbound("2xx")) >= 5.0);
    assert!(
        s.cart
            .metric("bulkhead_request_duration_seconds_count", &inbound("2xx"))
            >= 5.0
    );
    // Both web sidecars share the identity: one 403 from this caller.
    assert_eq!(
        s.cart.metric("bulkhead_requests_total", &inbound("4xx")),
        1.0
    );
}
