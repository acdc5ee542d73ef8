//! The API gateway end to end (issue 14): the real `bulkhead-proxy
//! gateway` in front of real sidecars and apps, a real control plane, end
//! users with tokens signed here with each accepted algorithm (and forged
//! ones), a JWKS server that rotates and stops, and aggregates with a slow
//! and a failing part.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use bulkhead_tests::control::wait_for_async;
use bulkhead_tests::gateway::*;
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::prom;
use bulkhead_tests::proxy::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_whole_segments_and_nothing_else_is_reachable() {
    let shop = Shop::start().await;
    let open = shop.get("/api/open/x?q=1", &[]).await.unwrap();
    assert_eq!(open.status, 200, "{}", open.body);
    let seen = body(&open);
    // Forwarded unchanged, over mTLS as the gateway's own identity.
    assert_eq!(seen["path"], "/api/open/x?q=1");
    assert_eq!(
        seen["peer"],
        "spiffe://gateway.test/ns/shop/sa/gateway-public"
    );
    assert_eq!(seen["x-forwarded-proto"], "http");
    // HTTP/2 from outside too (h2c behind a load balancer).
    let h2 = call_with(&h2_client(), shop.listen(), "GET", "/api/open", &[])
        .await
        .unwrap();
    assert_eq!(h2.status, 200, "{}", h2.body);
    for unknown in ["/api/cartX", "/api/openX", "/api", "/", "/nothing/here"] {
        let r = shop.get(unknown, &[]).await.unwrap();
        assert_eq!(r.status, 404, "{unknown}: {}", r.body);
        assert_eq!(r.headers["x-bulkhead-error"], "no-route");
    }
    // The longest prefix wins, whole segments only; a route naming the
    // host wins over one that takes any host.
    let special = shop.get("/api/open/special/x", &[]).await.unwrap();
    assert_eq!(special.status, 500, "to broken: {}", special.body);
    let not_special = shop.get("/api/open/specialX", &[]).await.unwrap();
    assert_eq!(body(&not_special)["service"], "cart");
    for host in ["shop.test", "SHOP.test:8080"] {
        let r = shop.get("/api/open/x", &[("host", host)]).await.unwrap();
        assert_eq!(body(&r)["name"], "lamp", "{host}: to catalog");
    }
    // A path servers could read differently is refused, never routed.
    let r = shop
        .get("/api/open/%2e%2e/%2e%2e/admin%2F", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);

    // Outside clients cannot pass for the mesh or for a verified user.
    let token = shop.es.sign(&shop.user(json!({})));
    let spoof = format!("Bearer {token}");
    let r = shop
        .get(
            "/api/cart",
            &[
                ("authorization", &spoof),
                ("x-user-id", "admin"),
                (
                    "x-bulkhead-peer-identity",
                    "spiffe://gateway.test/ns/shop/sa/admin",
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = body(&r);
    assert_eq!(
        seen["x-user-id"], "user-1",
        "the claim, not the client's copy"
    );
    assert_eq!(seen["authorization"], Value::Null, "token stripped");
    assert_eq!(
        seen["peer"],
        "spiffe://gateway.test/ns/shop/sa/gateway-public"
    );
    let r = shop
        .get("/api/open", &[("x-user-id", "admin")])
        .await
        .unwrap();
    assert_eq!(
        body(&r)["x-user-id"],
        Value::Null,
        "stripped on every route"
    );
    assert!(
        shop.gateway
            .metric("bulkhead_gateway_requests_total", &[("route", "/api/open")])
            >= 2.0
    );

    // A client that connects and sends nothing, or half a head, is closed
    // after --header-read-timeout rather than held.
    for opening in [&b""[..], b"GET /api/open HTTP/1.1\r\nHost: x"] {
        let mut slow = tokio::net::TcpStream::connect(shop.listen()).await.unwrap();
        slow.write_all(opening).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, slow.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "a silent client is closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_users_are_authenticated_with_each_algorithm_and_forgeries_refused() {
    let shop = Shop::start().await;
    for signer in [&shop.es, &shop.rs, &shop.ed] {
        let r = shop
            .get_as("/api/cart", &signer.sign(&shop.user(json!({}))))
            .await;
        assert_eq!(r.status, 200, "{}: {}", signer.alg(), r.body);
    }
    // Within the 60 s clock skew.
    let late = shop.user(json!({"exp": at(-30)}));
    assert_eq!(
        shop.get_as("/api/cart", &shop.es.sign(&late)).await.status,
        200
    );

    let refused = [
        (
            "expired",
            shop.es.sign(&shop.user(json!({"exp": at(-120)}))),
        ),
        (
            "not yet valid",
            shop.es.sign(&shop.user(json!({"nbf": at(300)}))),
        ),
        ("no exp", {
            let mut c = shop.user(json!({}));
            c.as_object_mut().unwrap().remove("exp");
            shop.es.sign(&c)
        }),
        (
            "wrong audience",
            shop.es.sign(&claims(ISSUER, "other-app", json!({}))),
        ),
        (
            "wrong issuer",
            shop.es
                .sign(&claims("https://evil.test", "shop-web", json!({}))),
        ),
        ("alg none", unsigned(&shop.user(json!({})))),
        (
            "HS256 with the RSA public key as secret",
            hs256(&shop.rs.public_bytes(), "k-rs", &shop.user(json!({}))),
        ),
        (
            "signed by an unknown key",
            Signer::es256("k-es").sign(&shop.user(json!({}))),
        ),
        (
            "ES256 header on an RSA key's kid",
            shop.es.sign_with_header(
                &json!({"alg": "ES256", "kid": "k-rs"}),
                &shop.user(json!({})),
            ),
        ),
    ];
    for (what, token) in &refused {
        let r = shop.get_as("/api/cart", token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert!(
            r.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{what}"
        );
    }
    // Missing where required: 401 with the challenge.
    let r = shop.get("/api/cart", &[]).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let counted = shop.gateway.metric(
        "bulkhead_gateway_auth_refused_total",
        &[("route", "/api/cart"), ("reason", "token-missing")],
    );
    assert!(counted >= 1.0, "refusals are counted by bounded reason");
    // Any malformed Authorization is a 401, even where a token is optional.
    for bad in ["Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.b.c.d"] {
        for path in ["/api/cart", "/api/maybe"] {
            let r = shop.get(path, &[("authorization", bad)]).await.unwrap();
            assert_eq!(r.status, 401, "{path} {bad}: {}", r.body);
        }
    }
    // if-present: none is fine, a bad one is not.
    assert_eq!(shop.get("/api/maybe", &[]).await.unwrap().status, 200);
    assert_eq!(shop.get_as("/api/maybe", &refused[0].1).await.status, 401);
    // Inline keys, and a provider that forwards the token.
    let staff = shop
        .staff
        .sign(&claims("https://staff.test", "ops", json!({})));
    let r = shop.get_as("/api/staff", &staff).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(body(&r)["authorization"], format!("Bearer {staff}"));
    // An issuer whose keys were never fetched: 503, never allow.
    let r = shop
        .get_as(
            "/api/gone",
            &shop.es.sign(&claims("https://gone.test", "x", json!({}))),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_survive_an_outage_of_the_jwks_server() {
    let shop = Shop::start().await;
    // Rotation: a new kid is fetched when first seen.
    let fresh = Signer::rs256("k-new");
    let token = fresh.sign(&shop.user(json!({})));
    let before = shop.users.fetches();
    shop.users.rotate(jwks(&[&shop.es, &fresh]));
    let r = shop.get_as("/api/cart", &token).await;
    assert_eq!(r.status, 200, "the new kid after a refetch: {}", r.body);
    assert!(shop.users.fetches() > before);
    // Another unknown kid within 30 s does not fetch again.
    let fetched = shop.users.fetches();
    let stranger = Signer::es256("k-stranger").sign(&shop.user(json!({})));
    assert_eq!(shop.get_as("/api/cart", &stranger).await.status, 401);
    assert_eq!(
        shop.users.fetches(),
        fetched,
        "at most one kid refetch per 30 s"
    );

    // Outage: the last good keys keep working.
    let partner_claims = claims(PARTNER_ISSUER, "shop-api", json!({}));
    let ok = shop.partner.sign(&partner_claims);
    assert_eq!(shop.get_as("/api/partner", &ok).await.status, 200);
    shop.partners.app.stop();
    let unknown = Signer::es256("p2").sign(&partner_claims);
    assert_eq!(shop.get_as("/api/partner", &unknown).await.status, 401);
    let errors = wait_for_async("a failed JWKS fetch to be counted", WAIT, || async {
        let n = shop.gateway.metric(
            "bulkhead_gateway_jwks_fetch_total",
            &[("provider", "partners"), ("result", "error")],
        );
        (n >= 1.0).then_some(n)
    })
    .await;
    assert!(errors >= 1.0);
    assert_eq!(
        shop.get_as("/api/partner", &ok).await.status,
        200,
        "last good keys kept"
    );
    let text = shop.gateway.metrics();
    assert!(
        prom::metric_if_any(
            &text,
            "bulkhead_gateway_jwks_fetch_total",
            &[("provider", "users"), ("result", "ok")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_merge_parts_and_say_which_failed() {
    let shop = Shop::start().await;
    let r = shop
        .get("/api/product/42?fields=name,price", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["x-bulkhead-partial"], "stock");
    assert_eq!(
        body(&r),
        json!({
            "product": {"name": "lamp", "price": 12},
            "stock": null,
            "_status": {"product": 200, "stock": "timeout"},
        })
    );
    // Without fields, the whole object, and the path template and query
    // reached the backend.
    let r = shop.get("/api/product/42?lang=en", &[]).await.unwrap();
    let product = &body(&r)["product"];
    assert_eq!(product["path"], "/v1/products/42?lang=en");
    assert_eq!(product["internal"], "x");
    // A required part that fails: 502 naming it.
    let r = shop.get("/api/broken/1", &[]).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    let failed = body(&r);
    assert_eq!(failed["key"], "bad");
    assert_eq!(failed["status"], 500);
    // A required part out of time: 504 naming it.
    let r = shop.get("/api/slow", &[]).await.unwrap();
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(body(&r)["key"], "stock");
    assert_eq!(body(&r)["status"], "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_resource_is_applied_as_written_and_checked() {
    let mesh = Mesh::memory("gateway.test", "", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("gateway.yaml");
    std::fs::write(
        &good,
        gateway_yaml(
            "https://id.shop.example/.well-known/jwks.json",
            "http://idp.shop:8080/jwks",
            &jwks(&[&Signer::ed25519("s")]),
            "http://gone:1/jwks",
        ),
    )
    .unwrap();
    let out = mesh
        .cp
        .ctl(&mesh.ca, &["apply", "-f", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mesh
        .cp
        .ctl(&mesh.ca, &["get", "gateway", "-n", "shop", "-o", "json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/v1/products/{rest}"), "{text}");
    let out = mesh.cp.ctl(&mesh.ca, &["get", "gw", "-n", "shop"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("routes=/api/cart,/api/open"), "{table}");

    let bad = dir.path().join("bad.yaml");
    let doc = std::fs::read_to_string(&good)
        .unwrap()
        .replace(
            "{jwt: staff, require: always}",
            "{jwt: admins, require: always}",
        )
        .replace("key: bad,", "key: product,");
    std::fs::write(&bad, doc).unwrap();
    let out = mesh
        .cp
        .ctl(&mesh.ca, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.routes[4].auth.jwt: unknown provider \"admins\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("two backends map to \"product\""),
        "{stderr}"
    );
    // `explain` reads claims rules with the sidecar's own code.
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, services()).unwrap();
    let explain = |claims: &[&str]| {
        let mut args = vec![
            "explain",
            "-f",
            policy.to_str().unwrap(),
            "--from",
            "shop/gateway-public",
            "--to",
            "shop/orders",
            "--method",
            "POST",
            "--path",
            "/orders",
        ];
        for c in claims {
            args.extend(["--claim", c]);
        }
        mesh.cp.ctl(&mesh.ca, &args)
    };
    let out = explain(&["scope=orders:read", "scope=orders:write"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = explain(&["scope=orders:read"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scope: orders:write"), "{text}");
    assert_eq!(explain(&[]).status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlists_require_end_user_claims_only_a_gateway_can_carry() {
    let shop = Shop::start().await;
    let with_scope = |scope: Value| shop.es.sign(&shop.user(json!({"scope": scope})));
    let r = shop
        .get_as(
            "/api/orders",
            &with_scope(json!("orders:read orders:write")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(body(&r)["service"], "orders");
    let r = shop
        .get_as("/api/orders", &with_scope(json!(["orders:write"])))
        .await;
    assert_eq!(r.status, 200, "a list claim: {}", r.body);
    let r = shop
        .get_as("/api/orders", &with_scope(json!("orders:read")))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.headers["x-bulkhead-error"], "denied");
    // No token (the route lets it through), no claims: the rule cannot match.
    let r = shop.get("/api/orders", &[]).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.body);

    // Another caller's claims are its own say-so: its sidecar removes them
    // (and the target's believes them from gateways only).
    let web = shop
        .mesh
        .sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("orders"));
    use base64::Engine;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"scope": "orders:write"}).to_string());
    let r = wait_for_async("web's sidecar to reach orders", WAIT, || async {
        let r = call(
            web.upstream("orders"),
            "GET",
            "/orders",
            &[("x-bulkhead-claims", &forged)],
        )
        .await
        .ok()?;
        (r.status != 503).then_some(r)
    })
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
}

/// TLS from files: ALPN h2 and http/1.1 both served, plain HTTP refused on
/// the TLS port, and a renewed certificate served without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_files_speaks_h2_and_http1_and_reloads_the_certificate() {
    let mesh = Mesh::memory("gateway.test", &services(), &[]).await;
    mesh.apply(
        "apiVersion: bulkhead.dev/v1\nkind: Gateway\nmetadata: {name: public, namespace: shop}\n\
         spec: {routes: [{pathPrefix: /api/open, service: cart}]}\n",
    )
    .await;
    let app = mirror("cart").await;
    let _cart = mesh.sidecar(SidecarSpec::new("shop", "cart", "1.0.0").app(&app));
    let dir = tempfile::tempdir().unwrap();
    let first = write_server_cert(dir.path(), "first");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let gateway = mesh.sidecar(
        SidecarSpec::gateway("shop", "public")
            .arg("--tls-cert")
            .arg(cert.to_str().unwrap())
            .arg("--tls-key")
            .arg(key.to_str().unwrap()),
    );
    let addr = gateway.listen.unwrap();
    let h2 = wait_for_async("the gateway to route over TLS", WAIT, || async {
        let r = https_get(addr, &first, &[b"h2", b"http/1.1"], "/api/open")
            .await
            .ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(h2.version, http::Version::HTTP_2);
    assert_eq!(h2.server_cert, first);
    let h1 = https_get(addr, &first, &[b"http/1.1"], "/api/open")
        .await
        .unwrap();
    assert_eq!((h1.status, h1.version), (200, http::Version::HTTP_11));
    assert!(
        call(addr, "GET", "/api/open", &[]).await.is_err(),
        "plain HTTP on the TLS port"
    );

    let second = write_server_cert(dir.path(), "second");
    wait_for_async("the renewed certificate to be served", WAIT, || async {
        let r = https_get(addr, &second, &[b"h2"], "/api/open").await.ok()?;
        (r.server_cert == second && r.status == 200).then_some(())
    })
    .await;

    // The Gateway deleted: nothing is exposed any more, and the gateway
    // says it is not ready (a load balancer stops sending to it).
    let out = mesh
        .cp
        .ctl(&mesh.ca, &["delete", "gateway", "public", "-n", "shop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_async("routes to be withdrawn", WAIT, || async {
        let r = https_get(addr, &second, &[b"h2"], "/api/open").await.ok()?;
        (r.status == 404).then_some(())
    })
    .await;
    let (status, _) = bulkhead_tests::control::http_get(gateway.admin, "/ready").unwrap();
    assert_eq!(status, 503);
}

/// Keys from an `https://` JWKS URL are fetched only from a server the
/// provider's `jwksCa` vouches for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_jwks_is_verified_against_the_providers_ca() {
    let mesh = Mesh::memory("gateway.test", &services(), &[]).await;
    let signer = Signer::ed25519("tls-key");
    let dir = tempfile::tempdir().unwrap();
    let (jwks_server, ca) = JwksServer::start_tls(jwks(&[&signer]), dir.path()).await;
    let other = tempfile::tempdir().unwrap();
    write_server_cert(other.path(), "someone else");
    let other_ca = std::fs::read_to_string(other.path().join("cert.pem")).unwrap();
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let provider = |name: &str, pem: &str| {
        format!(
            "  - name: {name}\n    issuer: https://tls.test\n    audiences: [app]\n    \
             jwksUri: {}\n    jwksCa: |\n{}",
            jwks_server.uri(),
            indent(pem)
        )
    };
    mesh.apply(&format!(
        "apiVersion: bulkhead.dev/v1\nkind: Gateway\nmetadata: {{name: public, namespace: shop}}\n\
         spec:\n  jwt:\n{}{}  routes:\n\
         \x20 - {{pathPrefix: /api/trusted, service: cart, auth: {{jwt: trusted}}}}\n\
         \x20 - {{pathPrefix: /api/untrusted, service: cart, auth: {{jwt: untrusted}}}}\n",
        provider("trusted", &ca),
        provider("untrusted", &other_ca),
    ))
    .await;
    let app = mirror("cart").await;
    let _cart = mesh.sidecar(SidecarSpec::new("shop", "cart", "1.0.0").app(&app));
    let gateway = mesh.sidecar(SidecarSpec::gateway("shop", "public"));
    let listen = gateway.listen.unwrap();
    let auth = format!(
        "Bearer {}",
        signer.sign(&claims("https://tls.test", "app", json!({})))
    );
    let headers = [("authorization", auth.as_str())];
    wait_for_async(
        "a token checked with keys fetched over TLS",
        WAIT,
        || async {
            let r = call(listen, "GET", "/api/trusted", &headers).await.ok()?;
            (r.status == 200).then_some(())
        },
    )
    .await;
    // The other CA does not vouch for the server: no keys, never allow.
    let r = call(listen, "GET", "/api/untrusted", &headers)
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        gateway.metric(
            "bulkhead_gateway_jwks_fetch_total",
            &[("provider", "untrusted"), ("result", "error")]
        ) >= 1.0
    );
}
