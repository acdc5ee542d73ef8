use super::*;
use crate::model::test_support::{GATEWAY_ISSUE_14 as ISSUE, expect_error, parse_one};

fn gateway(yaml: &str) -> Gateway {
    match parse_one(yaml) {
        Resource::Gateway(g) => g,
        other => panic!("not a Gateway: {other:?}"),
    }
}

#[test]
fn the_issue_document_is_accepted_as_written() {
    let g = gateway(ISSUE);
    let users = &g.spec.jwt.as_ref().unwrap()[0];
    assert_eq!(users.issuer, "https://id.shop.example");
    assert_eq!(
        users.keys,
        JwksSource::Uri("https://id.shop.example/.well-known/jwks.json".into())
    );
    assert!(!users.forward_token);
    let cart = &g.spec.routes[0];
    assert_eq!(
        cart.target,
        RouteTarget::Service {
            service: ServiceRef {
                namespace: None,
                name: "cart".into()
            },
            port: Some(8080)
        }
    );
    assert_eq!(cart.auth.as_ref().unwrap().require, Require::Always);
    let RouteTarget::Aggregate(agg) = &g.spec.routes[1].target else {
        panic!("aggregate expected");
    };
    assert_eq!(agg.timeout(), Duration::from_secs(2));
    assert!(agg.backends[0].is_required());
    assert!(!agg.backends[1].is_required());
    assert_eq!(
        agg.backends[1].timeout.as_ref().unwrap().duration(),
        Duration::from_millis(300)
    );
}

#[test]
fn path_prefixes_match_whole_segments() {
    let g = gateway(ISSUE);
    let cart = &g.spec.routes[0];
    assert!(cart.matches_path("/api/cart"));
    assert!(cart.matches_path("/api/cart/x"));
    assert!(!cart.matches_path("/api/cartX"));
    assert!(!cart.matches_path("/api"));
    let product = &g.spec.routes[1];
    assert!(product.matches_path("/api/product/42"));
    assert!(product.matches_path("/api/product"));
    assert_eq!(product.rest("/api/product/42/reviews"), "42/reviews");
    assert_eq!(product.rest("/api/product"), "");
    let root = gateway(
        "apiVersion: bulkhead.dev/v1\nkind: Gateway\nmetadata: {name: a}\nspec: {routes: [{pathPrefix: /, service: a}]}\n",
    );
    assert!(root.spec.routes[0].matches_path("/anything"));
    assert_eq!(root.spec.routes[0].rest("/a/b"), "a/b");
}

#[test]
fn inline_jwks_as_string_or_mapping_reads_the_same() {
    let key = r#"{"kty": "EC", "crv": "P-256", "x": "AA", "y": "BB", "kid": "k1"}"#;
    let doc = |jwks: &str| {
        ISSUE.replace(
            "jwksUri: https://id.shop.example/.well-known/jwks.json   # or `jwks:` inline JSON",
            &format!("jwks: {jwks}"),
        )
    };
    let as_string = gateway(&doc(&format!("'{{\"keys\": [{key}]}}'")));
    let as_mapping = gateway(&doc(&format!("{{keys: [{key}]}}")));
    assert_eq!(as_string, as_mapping);
    // Inline keys and a host read back as written.
    let with_host = doc(&format!("{{keys: [{key}]}}")).replace(
        "  - pathPrefix: /api/cart\n",
        "  - pathPrefix: /api/cart\n    host: Shop.Example\n",
    );
    let resource = parse_one(&with_host);
    let Resource::Gateway(g) = &resource else {
        panic!("a Gateway")
    };
    assert_eq!(g.spec.routes[0].host.as_deref(), Some("shop.example"));
    assert_eq!(parse_one(&resource.to_yaml()), resource);
    assert_eq!(Resource::from_json(&resource.to_json()).unwrap(), resource);
}

fn doc_with(old: &str, new: &str) -> String {
    assert!(ISSUE.contains(old), "{old}");
    ISSUE.replace(old, new)
}

#[test]
fn refuses_what_cannot_work() {
    let cases = [
        (
            doc_with("auth: {jwt: users, require: always}", "auth: {jwt: admins}"),
            "spec.routes[0].auth.jwt",
            "unknown provider \"admins\"",
        ),
        (
            doc_with("key: stock,", "key: product,"),
            "spec.routes[1].aggregate.backends[1].key",
            "two backends map to \"product\"",
        ),
        (
            doc_with("timeout: 2s", "timeout: 2 parsecs"),
            "spec.routes[1].aggregate.timeout",
            "expected a duration",
        ),
        (
            doc_with("timeout: 300ms", "timeout: 3s"),
            "spec.routes[1].aggregate.backends[1].timeout",
            "longer than the aggregate's timeout",
        ),
        (
            doc_with(
                "    service: cart               # a mesh Service in this namespace (or ns/name)\n",
                "",
            ),
            "spec.routes[0]",
            "expected service (one mesh service) or aggregate",
        ),
        (
            doc_with("pathPrefix: /api/cart", "pathPrefix: /api/../cart"),
            "spec.routes[0].pathPrefix",
            "expected a path prefix",
        ),
        (
            doc_with("pathPrefix: /api/cart", "pathPrefix: /api/product"),
            "spec.routes[1].pathPrefix",
            "another route already takes",
        ),
        (
            doc_with("require: always", "require: sometimes"),
            "spec.routes[0].auth.require",
            "expected one of always, if-present, never",
        ),
        (
            doc_with(
                "jwksUri: https://id.shop.example/.well-known/jwks.json",
                "jwksUri: ftp://id.shop.example/jwks",
            ),
            "spec.jwt[0].jwksUri",
            "expected an http:// or https:// URL",
        ),
        (
            doc_with("header: x-user-id", "header: x-bulkhead-peer-identity"),
            "spec.jwt[0].claimToHeaders[0].header",
            "reserved",
        ),
        (
            doc_with("key: stock,", "key: _status,"),
            "spec.routes[1].aggregate.backends[1].key",
            "not starting with '_'",
        ),
        (
            doc_with("path: \"/v1/stock/{rest}\"", "path: \"v1/stock\""),
            "spec.routes[1].aggregate.backends[1].path",
            "expected a path such as",
        ),
    ];
    for (yaml, path, message) in cases {
        expect_error(&yaml, path, message);
    }
}

#[test]
fn refuses_keys_that_are_not_public_signature_keys() {
    let jwks = |key: &str| {
        doc_with(
            "jwksUri: https://id.shop.example/.well-known/jwks.json",
            &format!("jwks: {{keys: [{key}]}}"),
        )
    };
    expect_error(
        &jwks("{kty: oct, k: c2VjcmV0}"),
        "spec.jwt[0].jwks.keys[0].kty",
        "expected RSA, EC or OKP",
    );
    expect_error(
        &jwks("{kty: EC, crv: P-256, x: AA}"),
        "spec.jwt[0].jwks.keys[0].y",
        "missing",
    );
    expect_error(
        &jwks("{kty: OKP, crv: Ed25519, x: AA, d: AA}"),
        "spec.jwt[0].jwks.keys[0].d",
        "private key",
    );
    expect_error(
        &doc_with(
            "jwksUri: https://id.shop.example/.well-known/jwks.json",
            "jwksUri: https://a.example/jwks\n    jwks: {keys: [{kty: OKP, crv: Ed25519, x: AA}]}",
        ),
        "spec.jwt[0]",
        "not both",
    );
}
