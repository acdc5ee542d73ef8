//! The webhook's certificate, made by the control plane itself (no
//! `--webhook-cert`): the real `bulkhead-control` serves `/inject` with a
//! certificate from the mesh issuer that a client trusting only the trust
//! bundle accepts for the Service's DNS name; it keeps the webhook
//! configuration's `caBundle` (in a stand-in API server) equal to the
//! bundle, also after something blanks it as `helm upgrade` does; and it
//! renews the certificate while the webhook keeps answering, open
//! connections included.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use base64::Engine as _;
use bulkhead_tests::admission::{Webhook, fixture, patched, with_uid};
use bulkhead_tests::apiserver::{
    ApiServer, mutating_webhook_configuration, mutating_webhook_configuration_path,
};
use bulkhead_tests::control::{ControlPlane, StoreSpec, TestCa, wait_for_async};
use bulkhead_tests::prom::metric_if_any;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The name the API server checks for a Service reference to
/// `bulkhead-control` in namespace `bulkhead` (the default --namespace).
const SERVICE_DNS_NAME: &str = "bulkhead-control.bulkhead.svc";
const CONFIGURATION: &str = "bulkhead-bulkhead-injector";
const WEBHOOKS: [&str; 2] = ["namespace.inject.bulkhead.dev", "pod.inject.bulkhead.dev"];

/// The certificates (DER) a `caBundle` value holds, sorted.
fn roots_in_ca_bundle(value: &Value) -> Option<Vec<Vec<u8>>> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()?;
    let mut roots: Vec<Vec<u8>> = bulkhead_tls::certs_from_pem(&pem, "caBundle")
        .ok()?
        .iter()
        .map(|c| c.to_vec())
        .collect();
    roots.sort();
    Some(roots)
}

/// Whether every webhook of the configuration holds exactly `bundle`.
fn holds_bundle(config: &Value, bundle: &[Vec<u8>]) -> bool {
    config["webhooks"].as_array().is_some_and(|hooks| {
        hooks.iter().all(|hook| {
            roots_in_ca_bundle(&hook["clientConfig"]["caBundle"]).as_deref() == Some(bundle)
        })
    })
}

fn bundle_roots(ca: &TestCa) -> Vec<Vec<u8>> {
    let mut roots: Vec<Vec<u8>> = ca.bundle().roots_der().iter().map(|c| c.to_vec()).collect();
    roots.sort();
    roots
}

/// A stand-in API server holding the webhook configuration, and a real
/// control plane serving the webhook and keeping that configuration's
/// caBundle (checked every second).
struct Keeping {
    api: ApiServer,
    path: String,
    rendered: Value,
    cp: ControlPlane,
}

async fn keeping_the_ca_bundle(ca: &TestCa, more: &[&str]) -> Keeping {
    let path = mutating_webhook_configuration_path(CONFIGURATION);
    let rendered = mutating_webhook_configuration(CONFIGURATION, &WEBHOOKS);
    let api = ApiServer::start(
        "control-plane-token",
        &[(path.as_str(), rendered.to_string())],
    )
    .await;
    let url = api.url();
    let mut extra = vec![
        "--webhook",
        "127.0.0.1:0",
        "--k8s-api",
        url.as_str(),
        "--node-topology=false",
        "--webhook-configuration",
        CONFIGURATION,
        "--webhook-configuration-resync",
        "1s",
    ];
    let creds = api.credentials_args();
    extra.extend(creds.iter().map(String::as_str));
    extra.extend_from_slice(more);
    let cp = tokio::task::block_in_place(|| ControlPlane::start(ca, &StoreSpec::Memory, &extra));
    Keeping {
        api,
        path,
        rendered,
        cp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_serves_a_certificate_the_bundle_trusts_and_keeps_the_ca_bundle() {
    let ca = TestCa::init("cluster.local");
    let Keeping {
        api,
        path,
        rendered,
        cp,
    } = keeping_the_ca_bundle(&ca, &[]).await;
    let addr = cp.webhook.expect("the webhook's address");

    // (a) A client that trusts nothing but the mesh's roots, asking for the
    // Service's name as the API server does, gets its review answered.
    let bundle_pem = std::fs::read(ca.file("bundle.crt")).unwrap();
    let client = Webhook::client(addr, &bundle_pem, SERVICE_DNS_NAME);
    let review = fixture("deployment-pod-create.json");
    let (_, pod) = patched(&review, &client.review(&review).await);
    let inits = pod.spec.as_ref().and_then(|s| s.init_containers.as_deref());
    let names: Vec<&str> = inits.unwrap().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["bulkhead-init", "bulkhead-proxy"]);

    // (b) The configuration's caBundle becomes the trust bundle, in every webhook.
    let bundle = bundle_roots(&ca);
    let set = || {
        let (api, path, bundle) = (&api, &path, &bundle);
        async move { api.object(path).filter(|c| holds_bundle(c, bundle)) }
    };
    wait_for_async(
        "the caBundle set to the trust bundle",
        Duration::from_secs(20),
        set,
    )
    .await;
    let patches = api.patched(&path);
    assert_eq!(patches, 1, "one patch sets both webhooks");
    let metrics = cp.metrics();
    assert_eq!(
        metric_if_any(
            &metrics,
            "bulkhead_webhook_ca_bundle_patches_total",
            &[("result", "patched")]
        ),
        Some(1.0),
        "{metrics}"
    );
    let expiry = metric_if_any(
        &metrics,
        "bulkhead_webhook_cert_expiry_timestamp_seconds",
        &[],
    )
    .expect("the certificate's expiry is exported");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 23.0 * 3600.0,
        "24 h by default: {expiry} vs {now}"
    );

    // Checked again and again, patched no more: it is current.
    let reads = api.served(&path);
    wait_for_async("three more checks", Duration::from_secs(20), || {
        let (api, path) = (&api, &path);
        async move { (api.served(path) >= reads + 3).then_some(()) }
    })
    .await;
    assert_eq!(api.patched(&path), patches, "no patch while it is current");

    // `helm upgrade` renders the object again without a caBundle: it comes back.
    api.replace(&path, rendered.clone());
    assert!(!holds_bundle(&api.object(&path).unwrap(), &bundle));
    wait_for_async(
        "the blanked caBundle set again",
        Duration::from_secs(20),
        set,
    )
    .await;
    assert_eq!(api.patched(&path), patches + 1);

    // And the webhook answered throughout.
    let again = with_uid(&review, "0a5d6a4e-0000-4000-8000-000000000002");
    patched(&again, &client.review(&again).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_renewed_while_the_webhook_keeps_answering() {
    let ca = TestCa::init("cluster.local");
    // No API server: the certificate is served, no caBundle is kept.
    let cp = tokio::task::block_in_place(|| {
        ControlPlane::start(
            &ca,
            &StoreSpec::Memory,
            &[
                "--webhook",
                "127.0.0.1:0",
                "--webhook-dns-names",
                "hooks.mesh-system.svc,hooks.mesh-system.svc.cluster.local",
                "--webhook-cert-lifetime",
                "6s",
            ],
        )
    });
    let addr = cp.webhook.expect("the webhook's address");
    let bundle_pem = std::fs::read(ca.file("bundle.crt")).unwrap();
    let client = Webhook::client(addr, &bundle_pem, "hooks.mesh-system.svc.cluster.local");
    let review = fixture("deployment-pod-create.json");
    let first = client.served_certificate().await;

    // A connection opened now keeps working after the renewal.
    let io = TokioIo::new(client.tls(&[b"http/1.1"]).await);
    let (mut open, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let post = |uid: &str| {
        http::Request::post("/inject")
            .header(http::header::HOST, "hooks.mesh-system.svc")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from(
                serde_json::to_vec(&with_uid(&review, uid)).unwrap(),
            )))
            .unwrap()
    };
    let answer = open.send_request(post("before")).await.unwrap();
    assert_eq!(answer.status(), 200);
    answer.into_body().collect().await.unwrap();

    // Renewed at about 70 % of 6 s; every new connection meanwhile is answered.
    let mut answered = 0;
    let renewed = wait_for_async("a renewed certificate", Duration::from_secs(15), || {
        answered += 1;
        let uid = format!("during-{answered}");
        let client = &client;
        let first = &first;
        let review = with_uid(&review, &uid);
        async move {
            patched(&review, &client.review(&review).await);
            let now = client.served_certificate().await;
            (now != *first).then_some(now)
        }
    })
    .await;
    assert!(answered > 1, "the old certificate was served for a while");
    let (_, leaf) = x509_parser::parse_x509_certificate(&renewed).unwrap();
    let (_, old) = x509_parser::parse_x509_certificate(&first).unwrap();
    assert!(leaf.validity().not_after > old.validity().not_after);

    let answer = open.send_request(post("after")).await.unwrap();
    assert_eq!(answer.status(), 200, "the open connection survived");
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["response"]["uid"], "after");
}

/// The roots injected pods are handed inline (`BULKHEAD_TRUST_BUNDLE_PEM`).
fn injected_roots(pod: &k8s_openapi::api::core::v1::Pod) -> usize {
    let proxy = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "bulkhead-proxy"))
        .expect("the injected sidecar");
    let pem = proxy
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "BULKHEAD_TRUST_BUNDLE_PEM")
        .and_then(|e| e.value.clone())
        .expect("the bundle inline");
    bulkhead_tls::certs_from_pem(pem.as_bytes(), "env")
        .unwrap()
        .len()
}

fn ctl_ok(cp: &ControlPlane, ca: &TestCa, args: &[&str]) -> String {
    let out = tokio::task::block_in_place(|| cp.ctl(ca, args));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A root rotation keeps the webhook working for an API server that
/// trusts what the caBundle holds: both roots from `prepare`, a serving
/// certificate of the new issuer from `activate`, the new root alone from
/// `retire`; pods injected meanwhile get the bundle in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_keeps_the_ca_bundle_and_the_webhook_certificate_current() {
    let ca = TestCa::init("cluster.local");
    let Keeping { api, path, cp, .. } =
        keeping_the_ca_bundle(&ca, &["--issuer-reload", "1s"]).await;
    let addr = cp.webhook.expect("the webhook's address");
    let until_ca_bundle = |roots: Vec<Vec<u8>>, what: &'static str| {
        let (api, path) = (&api, &path);
        wait_for_async(what, Duration::from_secs(20), move || {
            let roots = roots.clone();
            async move { api.object(path).filter(|c| holds_bundle(c, &roots)) }
        })
    };
    until_ca_bundle(bundle_roots(&ca), "the caBundle set to the old root").await;

    ctl_ok(&cp, &ca, &["ca", "rotate", "prepare", "--generate"]);
    let both = bundle_roots(&ca);
    assert_eq!(both.len(), 2, "bundle.crt holds both roots now");
    until_ca_bundle(both, "the caBundle to hold both roots").await;
    let old_roots = std::fs::read(ca.file("root.crt")).unwrap();
    let review = fixture("deployment-pod-create.json");
    let old_client = Webhook::client(addr, &old_roots, SERVICE_DNS_NAME);
    let (_, pod) = patched(&review, &old_client.review(&review).await);
    let both_client = Webhook::client(
        addr,
        &std::fs::read(ca.file("bundle.crt")).unwrap(),
        SERVICE_DNS_NAME,
    );
    assert_eq!(injected_roots(&pod), 2, "a pod made now trusts both roots");

    // Activate once the replica holds the next issuer's key (read from
    // this folder within a second); the webhook's certificate follows.
    wait_for_async("activate to be accepted", Duration::from_secs(20), || {
        let out = tokio::task::block_in_place(|| cp.ctl(&ca, &["ca", "rotate", "activate"]));
        async move { out.status.success().then_some(()) }
    })
    .await;
    let new_root = std::fs::read(ca.file("next-root.crt")).unwrap();
    let next_issuer = std::fs::read(ca.file("next-issuer.crt")).unwrap();
    let next_issuer = bulkhead_tls::certs_from_pem(&next_issuer, "next").unwrap();
    let new_client = Webhook::client(addr, &new_root, SERVICE_DNS_NAME);
    wait_for_async(
        "a webhook certificate of the new issuer",
        Duration::from_secs(20),
        || {
            let (client, issuer) = (&both_client, &next_issuer[0]);
            async move {
                let leaf = client.served_certificate().await;
                let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).ok()?;
                let (_, issuer) = x509_parser::parse_x509_certificate(issuer).ok()?;
                leaf.verify_signature(Some(issuer.public_key())).ok()
            }
        },
    )
    .await;
    let again = with_uid(&review, "0a5d6a4e-0000-4000-8000-000000000003");
    patched(&again, &new_client.review(&again).await);

    ctl_ok(&cp, &ca, &["ca", "rotate", "retire"]);
    let new_only = bundle_roots(&ca);
    assert_eq!(new_only.len(), 1);
    until_ca_bundle(new_only, "the caBundle to hold the new root alone").await;
    let last = with_uid(&review, "0a5d6a4e-0000-4000-8000-000000000004");
    let (_, pod) = patched(&last, &new_client.review(&last).await);
    assert_eq!(
        injected_roots(&pod),
        1,
        "a pod made now trusts the new root"
    );
}
