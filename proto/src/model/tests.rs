//! Tests across kinds: lossless round trips through YAML, JSON and protobuf,
//! and collecting every error of a file.

use super::*;
use crate::model::test_support::{GATEWAY_ISSUE_14, parse_one};
use crate::pb;

/// One document of each kind, with every optional field present.
const FULL: [&str; 6] = [
    "apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}, {port: 9000, protocol: tcp}]
  serviceAccounts: [inventory, inventory-batch]
  vip: 198.19.0.10
",
    "apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: inventory, namespace: shop}
spec:
  target: inventory
  mode: audit
  rules:
  - from: [cart, web/*, '*', spiffe://cluster.local/ns/ops/sa/admin]
    ports: [8080]
    http: {methods: [GET], paths: [/items/**, /health, /]}
  - from: [ops/debugger]
",
    "apiVersion: bulkhead.dev/v1
kind: TrafficSplit
metadata: {name: inventory, namespace: shop}
spec:
  service: inventory
  backends: [{version: v1, weight: 90}, {version: '2.0', weight: 10}]
  match: [{header: {name: x-canary, value: 'true'}, version: '2.0'}]
",
    "apiVersion: bulkhead.dev/v1
kind: Rollout
metadata: {name: inventory, namespace: shop}
spec:
  service: inventory
  stable: v1
  canary: v2
  strategy: canary
  steps: [10, 50, 100]
  interval: 1m30s
  analysis: {minSuccessRate: 0.995, maxP99LatencyMs: 300, minRequests: 50}
",
    GATEWAY_ISSUE_14,
    "apiVersion: bulkhead.dev/v1
kind: Egress
metadata: {name: payments-out, namespace: shop}
spec:
  from: [payments, refunds]
  to:
  - {host: api.payments.example, ports: [443, 8443]}
  - {cidr: 198.18.5.0/24, ports: [5432]}
  - {cidr: 'fd00:bb::/48', ports: [5432]}
",
];

/// The same kinds with only required fields.
const MINIMAL: [&str; 6] = [
    "apiVersion: bulkhead.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: tcp}]}\n",
    "apiVersion: bulkhead.dev/v1\nkind: AllowList\nmetadata: {name: a}\nspec: {target: a, rules: [{from: [b]}]}\n",
    "apiVersion: bulkhead.dev/v1\nkind: TrafficSplit\nmetadata: {name: a}\nspec: {service: a, backends: [{version: v1, weight: 1}]}\n",
    "apiVersion: bulkhead.dev/v1\nkind: Rollout\nmetadata: {name: a}\n\
     spec: {service: a, stable: v1, canary: v2, strategy: blue-green, interval: 10m}\n",
    "apiVersion: bulkhead.dev/v1\nkind: Gateway\nmetadata: {name: a}\nspec: {routes: [{pathPrefix: /, service: a}]}\n",
    "apiVersion: bulkhead.dev/v1\nkind: Egress\nmetadata: {name: a}\nspec: {from: [a], to: [{cidr: 10.0.0.0/8, ports: [1]}]}\n",
];

#[test]
fn yaml_round_trip_is_lossless_for_every_kind() {
    for text in FULL.iter().chain(MINIMAL.iter()) {
        let resource = parse_one(text);
        let yaml = resource.to_yaml();
        assert_eq!(parse_one(&yaml), resource, "through YAML:\n{yaml}");
        // Writing the re-read value gives the same text: nothing is added or lost.
        assert_eq!(parse_one(&yaml).to_yaml(), yaml);
    }
}

#[test]
fn json_round_trip_is_lossless_for_every_kind() {
    for text in FULL.iter().chain(MINIMAL.iter()) {
        let resource = parse_one(text);
        let json = resource.to_json();
        let back = Resource::from_json(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert_eq!(back, resource);
        assert_eq!(back.to_json(), json);
        let via_serde: Resource = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(via_serde, resource);
    }
}

#[test]
fn defaults_are_not_written_into_stored_documents() {
    let json = parse_one(MINIMAL[0]).to_json();
    assert_eq!(
        json,
        r#"{"apiVersion":"bulkhead.dev/v1","kind":"Service","metadata":{"name":"a","namespace":"default"},"spec":{"ports":[{"port":80,"protocol":"tcp"}]}}"#
    );
    let json = parse_one(MINIMAL[1]).to_json();
    assert!(!json.contains("mode"), "{json}");
}

#[test]
fn protobuf_round_trip_checks_the_envelope() {
    for text in FULL {
        let resource = parse_one(text);
        let message = pb::Resource::from(&resource);
        assert_eq!(message.kind, resource.kind().as_str());
        assert_eq!(Resource::try_from(&message), Ok(resource));
    }
    let mut message = pb::Resource::from(&parse_one(FULL[0]));
    message.name = "other".into();
    let errors = Resource::try_from(&message).unwrap_err();
    assert_eq!(errors.errors()[0].path, "metadata.name");
    message.name = "inventory".into();
    message.kind = "AllowList".into();
    assert!(Resource::try_from(&message).is_err());
}

#[test]
fn from_json_validates() {
    let json = parse_one(FULL[1]).to_json().replace("/health", "health");
    let errors = Resource::from_json(&json).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "AllowList shop/inventory: spec.rules[0].http.paths[1]: expected a path pattern such as \
         /a/b, /a/* or /a/**: it must start with /, got \"health\""
    );
    assert!(Resource::from_json("{").is_err());
    assert!(Resource::from_json("null").is_err());
    let typo = parse_one(FULL[0]).to_json().replace("\"vip\"", "\"vipp\"");
    assert_eq!(
        Resource::from_json(&typo).unwrap_err().errors()[0].path,
        "spec.vipp"
    );
}

#[test]
fn accessors_and_key() {
    let resource = parse_one(FULL[1]);
    assert_eq!(resource.kind(), Kind::AllowList);
    assert_eq!(resource.name(), "inventory");
    assert_eq!(resource.namespace(), "shop");
    assert_eq!(resource.key(), "AllowList/shop/inventory");
    assert_eq!(Resource::key_for(Kind::Rollout, "a", "b"), "Rollout/a/b");
}

#[test]
fn kind_names_and_short_forms() {
    for (names, kind) in [
        (["Service", "services", "SVC"], Kind::Service),
        (["allowlist", "AllowLists", "al"], Kind::AllowList),
        (["TrafficSplit", "trafficsplits", "ts"], Kind::TrafficSplit),
        (["rollout", "Rollouts", "RO"], Kind::Rollout),
    ] {
        for name in names {
            assert_eq!(name.parse::<Kind>(), Ok(kind), "{name}");
        }
        assert_eq!(kind.to_string().parse::<Kind>(), Ok(kind));
    }
    assert!("pod".parse::<Kind>().is_err());
}

#[test]
fn collects_every_error_across_documents() {
    let text = format!(
        "{}---\n{}---\n{}---\n{}",
        FULL[0],
        FULL[1]
            .replace("ports: [8080]", "ports: [70000]")
            .replace("/items/**", "/items/**/x")
            .replace("methods: [GET]", "methods: [get]"),
        MINIMAL[2].replace("weight: 1", "weight: -1"),
        FULL[3].replace("kind: Rollout", "kind: Rollot"),
    );
    let errors = parse_documents("shop.yaml", &text).unwrap_err();
    let lines: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "shop.yaml: document 2 (AllowList shop/inventory): spec.rules[0].ports[0]: \
             expected a port 1-65535, got 70000",
            "shop.yaml: document 2 (AllowList shop/inventory): spec.rules[0].http.methods[0]: \
             expected an upper-case HTTP method token such as GET, got \"get\"",
            "shop.yaml: document 2 (AllowList shop/inventory): spec.rules[0].http.paths[0]: \
             expected a path pattern such as /a/b, /a/* or /a/**: ** only as the last segment, \
             got \"/items/**/x\"",
            "shop.yaml: document 3 (TrafficSplit default/a): spec.backends[0].weight: \
             expected a weight 0-4294967295, got -1",
            "shop.yaml: document 4: kind: expected one of Service, AllowList, TrafficSplit, \
             Rollout, Gateway, Egress, got \"Rollot\"",
        ]
    );
}

#[test]
fn a_valid_file_yields_every_resource_in_order() {
    let text = FULL.join("---\n");
    let resources = parse_documents("shop.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<Kind> = resources.iter().map(Resource::kind).collect();
    assert_eq!(kinds, Kind::ALL.to_vec());
}
