//! Kubernetes projected service-account tokens as attestation, end to end:
//! a control plane given the cluster's issuer keys (JWKS) certifies a
//! sidecar that presents its pod's token, and refuses forged ones.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bulkhead_proto::pb;
use bulkhead_tests::apiserver::ApiServer;
use bulkhead_tests::control::*;
use bulkhead_tests::proxy::*;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A cluster's service-account issuer: an ES256 key and its JWKS file.
struct Issuer {
    key: EcdsaKeyPair,
    dir: tempfile::TempDir,
}

impl Issuer {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let point = key.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])}]});
        std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
        Self { key, dir }
    }

    fn jwks(&self) -> String {
        self.dir.path().join("jwks.json").display().to_string()
    }

    /// A token as the kubelet projects it for a pod of `ns/sa`.
    fn token(&self, ns: &str, sa: &str, audience: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({"aud": [audience], "exp": now + 3600, "iat": now, "nbf": now, "iss": ISSUER,
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u1"}, "pod": {"name": "p", "uid": "u2"}}});
        let input = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

async fn certify_jwt(
    cp: &ControlPlane,
    ca: &TestCa,
    jwt: String,
) -> Result<pb::CertifyResponse, tonic::Status> {
    let (_, csr) = key_and_csr(&[]);
    pb::identity_client::IdentityClient::new(cp.channel(ca, None))
        .certify(pb::CertifyRequest {
            csr_der: csr,
            attestation: Some(pb::certify_request::Attestation::ServiceAccountJwt(jwt)),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_pod_token_attests_its_service_account_and_forgeries_are_refused() {
    let issuer = Issuer::new();
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(
        &ca,
        &StoreSpec::Memory,
        &["--k8s-jwks", &issuer.jwks(), "--k8s-issuer", ISSUER],
    );
    let resp = certify_jwt(&cp, &ca, issuer.token("shop", "cart", "bulkhead"))
        .await
        .expect("certify");
    assert_eq!(resp.spiffe_id, "spiffe://cluster.local/ns/shop/sa/cart");
    // Projected tokens are reusable until they expire (unlike --once tokens).
    certify_jwt(&cp, &ca, issuer.token("shop", "cart", "bulkhead"))
        .await
        .expect("again");

    let err = certify_jwt(
        &cp,
        &ca,
        issuer.token("shop", "cart", "https://kubernetes.default.svc"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("Audience"), "{}", err.message());
    let other = Issuer::new();
    let err = certify_jwt(&cp, &ca, other.token("shop", "cart", "bulkhead"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // Without --k8s-jwks the control plane says how to enable it.
    let plain = ControlPlane::start(&ca, &StoreSpec::Memory, &[]);
    let err = certify_jwt(&plain, &ca, issuer.token("shop", "cart", "bulkhead"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("--k8s-jwks"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_bootstraps_with_its_pod_token() {
    let issuer = Issuer::new();
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(
        &ca,
        &StoreSpec::Memory,
        &["--k8s-jwks", &issuer.jwks(), "--k8s-issuer", ISSUER],
    );
    apply(&cp, &ca, "apiVersion: bulkhead.dev/v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec:\n  ports: [{port: 8080, protocol: http}]\n").await;
    let app = App::http("cart", "1.0.0").await;
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, issuer.token("shop", "cart", "bulkhead")).unwrap();
    // The spec's bootstrap token is replaced by the pod token via flags
    // given after it (clap takes the last value).
    let sidecar = Sidecar::start(
        &ca,
        &cp,
        SidecarSpec::new("shop", "cart", "1.0.0")
            .app(&app)
            .arg("--token-file")
            .arg(token_file.to_str().unwrap())
            .arg("--attestation")
            .arg("k8s-jwt"),
    );
    let config = sidecar.config();
    assert!(
        config["certificateNotAfterUnix"].as_u64().is_some(),
        "{config}"
    );
    assert!(
        sidecar
            .log_text()
            .contains("spiffe://cluster.local/ns/shop/sa/cart"),
        "{}",
        sidecar.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_keys_are_fetched_from_the_api_server() {
    let issuer = Issuer::new();
    let jwks = std::fs::read_to_string(issuer.jwks()).unwrap();
    let api = ApiServer::start("control-plane-token", &[("/openid/v1/jwks", jwks)]).await;
    let (ca_file, token_file) = (&api.ca_file, &api.token_file);
    let ca = TestCa::init("cluster.local");
    let url = format!("{}/openid/v1/jwks", api.url());
    let cp = ControlPlane::start(
        &ca,
        &StoreSpec::Memory,
        &[
            "--k8s-jwks",
            &url,
            "--k8s-issuer",
            ISSUER,
            "--k8s-api-ca",
            ca_file.to_str().unwrap(),
            "--k8s-api-token",
            token_file.to_str().unwrap(),
        ],
    );
    assert!(api.served("/openid/v1/jwks") >= 1);
    let resp = certify_jwt(&cp, &ca, issuer.token("shop", "cart", "bulkhead"))
        .await
        .expect("certify");
    assert_eq!(resp.spiffe_id, "spiffe://cluster.local/ns/shop/sa/cart");

    // A wrong bearer token: the control plane refuses to start, naming the URL.
    std::fs::write(token_file, "stolen").unwrap();
    let out = std::process::Command::new(bin("bulkhead-control"))
        .args([
            "--store",
            "memory",
            "--k8s-jwks",
            &url,
            "--k8s-issuer",
            ISSUER,
            "--k8s-api-ca",
            ca_file.to_str().unwrap(),
            "--k8s-api-token",
            token_file.to_str().unwrap(),
        ])
        .arg("--issuer-cert")
        .arg(ca.file("issuer.crt"))
        .arg("--issuer-key")
        .arg(ca.file("issuer.key"))
        .arg("--trust-bundle")
        .arg(ca.file("bundle.crt"))
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains(&url), "{err}");
}
