//! `--dns`: an app resolves a mesh name to a loopback address its sidecar
//! listens on, and calls it with no code change.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bulkhead_tests::control::*;
use bulkhead_tests::mesh::Mesh;
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
kind: AllowList
metadata: {name: cart-from-web, namespace: shop}
spec:
  target: cart
  rules: [{from: [web]}]
";

/// A DNS query for an A record, built by hand (RFC 1035 §4).
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    q
}

/// rcode and the first A record of a reply.
fn parse_a(reply: &[u8]) -> (u8, Option<Ipv4Addr>) {
    let rcode = reply[3] & 0x0f;
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    if answers == 0 {
        return (rcode, None);
    }
    // Our server answers with the question's own name (a pointer or not);
    // the A record's RDATA is the last four bytes of a one-answer reply
    // without authority or additional records.
    let n = reply.len();
    (
        rcode,
        Some(Ipv4Addr::new(
            reply[n - 4],
            reply[n - 3],
            reply[n - 2],
            reply[n - 1],
        )),
    )
}

async fn resolve(server: SocketAddr, name: &str) -> (u8, Option<Ipv4Addr>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    socket
        .send_to(&a_query(0x4242, name), server)
        .await
        .expect("send");
    let mut buf = vec![0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("dns answer in time")
        .expect("recv");
    assert_eq!(&buf[..2], &0x4242u16.to_be_bytes());
    parse_a(&buf[..n])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_calls_a_mesh_name_through_the_sidecar_dns() {
    let mesh = Mesh::memory("cluster.local", SHOP, &[]).await;
    let cart_app = App::http("cart", "1.0.0").await;
    let _cart = mesh.sidecar(SidecarSpec::new("shop", "cart", "1.0.0").app(&cart_app));
    let web = mesh.sidecar(
        SidecarSpec::new("shop", "web", "1.0.0")
            .arg("--dns")
            .arg("127.0.0.1:0"),
    );
    // Bound on port 0; the sidecar reported the port it got.
    let dns = web.dns[0];
    // Subscribed on demand: web has the directory (every Service) but no
    // service's endpoints until its app asks for one.
    let config = web.config();
    assert_eq!(config["subscribed"], serde_json::json!([]), "{config:#}");
    let pushed = |config: &serde_json::Value, kind: &str, name: &str| {
        config["resources"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        })
    };
    assert!(pushed(&config, "Service", "cart"), "{config:#}");
    let cart_endpoints = |config: &serde_json::Value| {
        config["endpoints"]
            .as_array()
            .map_or(0, |e| e.iter().filter(|e| e["service"] == "cart").count())
    };
    assert_eq!(cart_endpoints(&config), 0, "{config:#}");

    // Both name forms give the same loopback address, a listener of web's sidecar.
    let (rcode, ip) = resolve(dns, "cart.shop.svc.cluster.local").await;
    assert_eq!(rcode, 0);
    let ip = ip.expect("an A record");
    assert!(ip.is_loopback(), "{ip}");
    assert_eq!(resolve(dns, "CART.mesh.").await, (0, Some(ip)));
    // A name in the mesh's own zone that is no service does not exist.
    assert_eq!(resolve(dns, "ghost.mesh").await.0, 3, "NXDOMAIN");

    // The app calls the name's address on the Service's port: plain HTTP,
    // carried over mTLS to cart, allowed by the allow-list.
    let target = SocketAddr::from((ip, 8080));
    let reply = wait_for_async(
        "cart to answer through the DNS listener",
        Duration::from_secs(20),
        || async {
            call(target, "GET", "/items", &[])
                .await
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .await;
    assert!(reply.body.contains("service=cart"), "{}", reply.body);
    // Asking for the name subscribed web to cart, and to nothing else.
    let config = web.config();
    assert_eq!(
        config["subscribed"],
        serde_json::json!(["cart.shop"]),
        "{config:#}"
    );
    assert_eq!(cart_endpoints(&config), 1, "{config:#}");
}
