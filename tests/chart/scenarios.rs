//! The values `tests/tests/chart.rs` renders the chart with: the least a user must
//! give, each documented option on top of it, and values that must be refused.

use std::sync::OnceLock;

use serde_json::{Value, json};

use super::support::{base64, merged};

/// The real inputs a user passes with `--set-file`: the issuer and trust bundle
/// that `bulkheadctl ca init` writes, and for bringing one's own webhook
/// certificate, a separate CA.
pub(crate) struct Inputs {
    pub(crate) issuer_cert: String,
    pub(crate) issuer_key: String,
    pub(crate) trust_bundle: String,
    pub(crate) webhook_ca: String,
}

pub(crate) fn inputs() -> &'static Inputs {
    static INPUTS: OnceLock<Inputs> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = bulkhead_control::ca::init_ca("cluster.local", &dir.path().join("ca"))
            .expect("ca init");
        let read = |path: &std::path::Path| std::fs::read_to_string(path).expect("CA file");
        let (issuer_cert, issuer_key) = (read(&ca.issuer_cert), read(&ca.issuer_key));
        let trust_bundle = read(&ca.bundle);

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let webhook_ca = params.self_signed(&key).expect("webhook CA").pem();
        Inputs {
            issuer_cert,
            issuer_key,
            trust_bundle,
            webhook_ca,
        }
    })
}

/// The least a user must give: nothing but the issuer Secret, which
/// `issuer.existingSecret` names by default (`kubectl create secret` + `helm
/// install`, no values).
pub(crate) fn required() -> Value {
    json!({})
}

/// The two-command install: `bulkheadctl ca init` + `helm install --set-file`
/// of the three files it wrote.
pub(crate) fn inline_issuer() -> Value {
    json!({"issuer": {
        "cert": inputs().issuer_cert,
        "key": inputs().issuer_key,
        "bundle": inputs().trust_bundle,
    }})
}

/// Bringing one's own webhook certificate: a TLS Secret and its CA.
pub(crate) fn own_webhook_certificate() -> Value {
    json!({"webhook": {"tlsSecret": "bulkhead-webhook-tls", "caBundle": inputs().webhook_ca}})
}

pub(crate) const EXTERNAL_ETCD: [&str; 3] = [
    "https://etcd-a.storage.svc:2379",
    "https://etcd-b.storage.svc:2379",
    "https://etcd-c.storage.svc:2379",
];

/// Values that must render, lint and validate: name → values.
pub(crate) fn good_scenarios() -> Vec<(&'static str, Value)> {
    vec![
        ("defaults", required()),
        ("inline-issuer", inline_issuer()),
        ("own-webhook-certificate", own_webhook_certificate()),
        (
            "no-node-topology",
            merged(inline_issuer(), json!({"nodeTopology": {"enabled": false}})),
        ),
        (
            "bundled-etcd-tls",
            merged(
                required(),
                json!({"etcd": {"bundled": {"tls": {
                    "enabled": true,
                    "serverSecret": "etcd-server-tls",
                    "clientSecret": "etcd-client-tls",
                }}}}),
            ),
        ),
        (
            "external-etcd-tls",
            merged(
                required(),
                json!({"etcd": {
                    "bundled": {"enabled": false},
                    "external": {"endpoints": EXTERNAL_ETCD, "tls": {"enabled": true, "secret": "etcd-client-tls"}},
                }}),
            ),
        ),
        (
            "external-etcd-plain",
            merged(
                required(),
                json!({"etcd": {
                    "prefix": "/mesh-a/",
                    "bundled": {"enabled": false},
                    "external": {"endpoints": ["http://etcd.storage.svc:2379"]},
                }}),
            ),
        ),
        (
            "custom-replicas",
            merged(
                required(),
                json!({
                    "fullnameOverride": "mesh",
                    "trustDomain": "prod.example",
                    "controlPlane": {
                        "replicas": 3,
                        "podAntiAffinity": "hard",
                        "podDisruptionBudget": {"minAvailable": 2},
                        "topologySpreadConstraints": [],
                        "operators": ["ops/deployer", "spiffe://prod.example/ns/ci/sa/pipeline"],
                        "priorityClassName": "system-cluster-critical",
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mesh", "effect": "NoSchedule"}],
                        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
                        "podAnnotations": {"prometheus.io/scrape": "true"},
                    },
                    // The base64 form of the CA, as copied from another tool.
                    "webhook": {
                        "tlsSecret": "mesh-webhook-tls",
                        "caBundle": base64(inputs().webhook_ca.as_bytes()),
                        "podOptIn": false,
                    },
                }),
            ),
        ),
        (
            "five-member-etcd",
            merged(
                required(),
                json!({"etcd": {"bundled": {
                    "replicas": 5,
                    "podAntiAffinity": "hard",
                    "persistence": {"size": "20Gi", "storageClassName": "fast-ssd"},
                }}}),
            ),
        ),
        (
            "webhook-disabled",
            json!({
                "webhook": {"enabled": false},
                "serviceAccountTokens": {"enabled": false},
                "nodeTopology": {"enabled": false},
                "serviceAccount": {"create": false, "name": "existing-sa"},
                "controlPlane": {"replicas": 1},
            }),
        ),
        (
            "cert-manager-ca",
            json!({
                "webhook": {
                    "tlsSecret": "bulkhead-webhook-tls",
                    "annotations": {"cert-manager.io/inject-ca-from": "mesh-system/bulkhead-webhook"},
                },
            }),
        ),
        (
            "gateway",
            merged(required(), json!({"gateway": {"enabled": true}})),
        ),
        (
            "gateway-tls",
            merged(
                inline_issuer(),
                json!({"gateway": {
                    "enabled": true,
                    "name": "edge",
                    "replicas": 3,
                    "tlsSecret": "edge-tls",
                    "service": {"type": "ClusterIP", "port": 443, "annotations": {"a.example/b": "c"}},
                    "image": {"tag": "edge-1"},
                    "extraArgs": ["--request-timeout=30s"],
                }}),
            ),
        ),
    ]
}

/// Values that must be refused: name → (values, what the message must say).
pub(crate) fn bad_scenarios() -> Vec<(&'static str, Value, &'static str)> {
    let mut no_key = inline_issuer();
    no_key["issuer"]["key"] = json!("");
    let mut key_as_cert = inline_issuer();
    key_as_cert["issuer"]["cert"] = json!(inputs().issuer_key);
    vec![
        (
            "no-issuer",
            json!({"issuer": {"existingSecret": ""}}),
            "the issuer is required: --set-file issuer.cert=ca/issuer.crt",
        ),
        (
            "inline-issuer-without-key",
            no_key,
            "issuer.key is required when the issuer is given inline: --set-file issuer.key=ca/issuer.key",
        ),
        (
            "inline-issuer-key-as-cert",
            key_as_cert,
            "issuer.cert must be PEM certificates",
        ),
        (
            "no-webhook-ca",
            json!({"webhook": {"tlsSecret": "own-tls"}}),
            "webhook.caBundle is required with webhook.tlsSecret",
        ),
        (
            "webhook-ca-without-certificate",
            json!({"webhook": {"caBundle": inputs().webhook_ca}}),
            "webhook.caBundle is set but webhook.tlsSecret is not",
        ),
        (
            "cert-manager-without-certificate",
            json!({"webhook": {"annotations": {"cert-manager.io/inject-ca-from": "a/b"}}}),
            "cert-manager.io/inject-ca-from needs webhook.tlsSecret",
        ),
        (
            "removed-trust-bundle-value",
            json!({"trustBundle": {"pem": inputs().trust_bundle}}),
            "'trustBundle' not allowed",
        ),
        (
            "both-stores",
            merged(
                required(),
                json!({"etcd": {"external": {"endpoints": EXTERNAL_ETCD}}}),
            ),
            "choose one store",
        ),
        (
            "no-store",
            merged(required(), json!({"etcd": {"bundled": {"enabled": false}}})),
            "Bulkhead needs etcd",
        ),
        (
            "tls-to-plain-endpoint",
            merged(
                required(),
                json!({"etcd": {
                    "bundled": {"enabled": false},
                    "external": {"endpoints": ["http://etcd.storage.svc:2379"], "tls": {"enabled": true, "secret": "s"}},
                }}),
            ),
            "is not https://",
        ),
        (
            "bundled-tls-without-secrets",
            merged(
                required(),
                json!({"etcd": {"bundled": {"tls": {"enabled": true}}}}),
            ),
            "etcd.bundled.tls.serverSecret and etcd.bundled.tls.clientSecret are required",
        ),
        (
            "typo",
            merged(required(), json!({"controlPlane": {"replica": 3}})),
            "'replica' not allowed",
        ),
        (
            "even-etcd",
            merged(required(), json!({"etcd": {"bundled": {"replicas": 2}}})),
            "/etcd/bundled/replicas",
        ),
        (
            "gateway-bad-name",
            merged(
                required(),
                json!({"gateway": {"enabled": true, "name": "Public!"}}),
            ),
            "/gateway/name",
        ),
        (
            "unknown-failure-policy",
            merged(required(), json!({"webhook": {"failurePolicy": "Retry"}})),
            "/webhook/failurePolicy",
        ),
    ]
}
