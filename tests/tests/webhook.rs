//! Sidecar injection end to end: the real webhook listener over real HTTPS
//! (a certificate issued for the test), fed real AdmissionReview v1
//! documents (`tests/fixtures/admission/`, sources in its README); the
//! returned patch is applied to the request's pod and the result parsed
//! as a k8s-openapi `Pod`, field by field. And `bulkheadctl inject` on a
//! manifest, as a user runs it.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::convert::Infallible;

use bulkhead_control::webhook::{self};
use bulkhead_tests::admission::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_docs_example_scale_update_is_allowed_unchanged() {
    let hook = Webhook::start().await;
    let review = fixture("kubernetes-docs-scale-update.json");
    let out = hook.review(&review).await;
    assert_eq!(
        out["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_no_patch(&out);
}

#[tokio::test]
async fn a_deployment_pod_gets_the_init_container_and_the_native_sidecar() {
    let hook = Webhook::start().await;
    let review = fixture("deployment-pod-create.json");
    let out = hook.review(&review).await;
    let (json, pod) = patched(&review, &out);
    assert_known_fields(&json, &pod);
    let spec = pod.spec.as_ref().unwrap();
    let original: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let original_spec = original.spec.as_ref().unwrap();

    // The app's containers are untouched; ours come first, init then proxy.
    assert_eq!(spec.containers, original_spec.containers);
    let inits = spec.init_containers.as_deref().unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["bulkhead-init", "bulkhead-proxy"]);
    let (init, proxy) = (&inits[0], &inits[1]);

    // bulkhead-init: iptables as root with NET_ADMIN/NET_RAW, no more.
    assert_eq!(
        init.image.as_deref(),
        Some("registry.test/bulkhead-proxy:9.9.9")
    );
    assert_eq!(init.command.as_deref().unwrap(), ["bulkhead-proxy"]);
    assert_eq!(init.args.as_deref().unwrap()[0], "init-iptables");
    assert_eq!(flag(init, "--proxy-uid"), Some("2102"));
    assert_eq!(flag(init, "--inbound-port"), Some("4143"));
    assert_eq!(flag(init, "--outbound-port"), Some("4140"));
    assert_eq!(flag(init, "--redirect-dns"), None);
    assert_eq!(init.restart_policy, None, "the capture container runs once");
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);

    // bulkhead-proxy: a native sidecar, probed on the admin port.
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(proxy.args.as_deref().unwrap()[0], "run");
    assert_eq!(flag(proxy, "--control"), Some(CONTROL_URL));
    // Default injector settings: the bundle from the ConfigMap volume, by
    // env (the control plane itself passes it inline; see the unit tests).
    assert_eq!(flag(proxy, "--trust-bundle"), None);
    assert_eq!(
        value(proxy, "BULKHEAD_TRUST_BUNDLE"),
        "/var/run/bulkhead/bundle/bundle.crt"
    );
    assert_eq!(
        flag(proxy, "--token-file"),
        Some("/var/run/bulkhead/token/token")
    );
    assert_eq!(flag(proxy, "--outbound"), Some("127.0.0.1:4140,[::1]:4140"));
    assert_eq!(flag(proxy, "--inbound"), Some("[::]:4143"));
    assert_eq!(flag(proxy, "--admin"), Some("0.0.0.0:4191"));
    let ready = proxy
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/ready"));
    assert_eq!(ready.port, IntOrString::Int(4191));
    let startup = proxy
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.port, IntOrString::Int(4191));
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(2102));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));

    // Who the pod is comes from the downward API at run time ...
    assert_eq!(field_ref(proxy, "POD_NAME"), "metadata.name");
    assert_eq!(field_ref(proxy, "BULKHEAD_NAMESPACE"), "metadata.namespace");
    assert_eq!(field_ref(proxy, "BULKHEAD_NODE"), "spec.nodeName");
    assert_eq!(
        field_ref(proxy, "BULKHEAD_SERVICE_ACCOUNT"),
        "spec.serviceAccountName"
    );
    assert_eq!(field_ref(proxy, "BULKHEAD_ADVERTISE"), "status.podIP");
    // ... what it serves from its labels: none here, so the Deployment's
    // name (the ReplicaSet's minus the pod-template-hash), said in a warning.
    assert_eq!(value(proxy, "BULKHEAD_SERVICE"), "demo-crd-resource");
    assert_eq!(value(proxy, "BULKHEAD_VERSION"), "0.0.0");
    assert_eq!(value(proxy, "BULKHEAD_ATTESTATION"), "k8s-jwt");
    assert_eq!(
        value(proxy, "BULKHEAD_STATE_DIR"),
        "/var/run/bulkhead/state"
    );
    let warned = warnings(&out);
    assert!(
        warned.iter().any(|w| w.contains("\"demo-crd-resource\"")),
        "{warned:?}"
    );
    // The app declares no port: nothing to forward inbound to, and it says so.
    assert!(flags(proxy, "--app").is_empty());
    assert!(
        warned.iter().any(|w| w.contains("no TCP containerPort")),
        "{warned:?}"
    );

    // Volumes: the pod's own first, then the projected token, the trust
    // bundle, iptables' lock directory and the sidecar's in-memory state.
    let volume_names: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volume_names,
        [
            "kube-api-access-5drvz",
            "bulkhead-token",
            "bulkhead-trust-bundle",
            "bulkhead-xtables-lock",
            "bulkhead-state"
        ]
    );
    let state = volume(&pod, "bulkhead-state").empty_dir.as_ref().unwrap();
    assert_eq!(
        state.medium.as_deref(),
        Some("Memory"),
        "keys stay off the node's disk"
    );
    assert!(state.size_limit.is_some());
    let token = volume(&pod, "bulkhead-token").projected.as_ref().unwrap();
    let sat = token.sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(sat.audience.as_deref(), Some("bulkhead"));
    assert_eq!(sat.expiration_seconds, Some(3600));
    assert_eq!(sat.path, "token");
    let bundle = volume(&pod, "bulkhead-trust-bundle")
        .config_map
        .as_ref()
        .unwrap();
    assert_eq!(bundle.name, TRUST_BUNDLE_CONFIG_MAP);
    assert_eq!(bundle.items.as_ref().unwrap()[0].key, "bundle.crt");
    let mounts: Vec<(&str, &str, Option<bool>)> = proxy
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("bulkhead-token", "/var/run/bulkhead/token", Some(true)),
            ("bulkhead-state", "/var/run/bulkhead/state", None),
            (
                "bulkhead-trust-bundle",
                "/var/run/bulkhead/bundle",
                Some(true)
            ),
        ]
    );

    // Annotations: the pod's kept, ours added.
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["bulkhead.dev/injected"], "true");
    assert_eq!(
        annotations["kubectl.kubernetes.io/restartedAt"],
        "2025-04-29T04:39:32Z"
    );
}

/// The deployment fixture's pod with the three kinds of kubelet probe an
/// app uses: httpGet on a named port, tcpSocket, gRPC.
fn probed_review() -> Value {
    let mut review = fixture("deployment-pod-create.json");
    let c = &mut review["request"]["object"]["spec"]["containers"][0];
    c["ports"] = json!([
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc-admin", "containerPort": 9090, "protocol": "TCP"},
    ]);
    c["readinessProbe"] = json!({
        "httpGet": {"path": "/healthz?full=1", "port": "http", "scheme": "HTTP",
                    "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]},
        "periodSeconds": 3, "timeoutSeconds": 2, "failureThreshold": 4,
    });
    c["livenessProbe"] = json!({"tcpSocket": {"port": 8080}, "initialDelaySeconds": 5});
    c["startupProbe"] = json!({"grpc": {"port": 9090}, "failureThreshold": 30});
    review
}

#[tokio::test]
async fn app_probes_are_rewritten_to_the_proxy_admin_port() {
    let hook = Webhook::start().await;
    let review = probed_review();
    let out = hook.review(&review).await;
    assert_eq!(out["response"]["allowed"], true, "{out}");
    // The rewrite replaces the old "will be captured and fail" warning.
    assert!(
        !warnings(&out).iter().any(|w| w.contains("probe")),
        "{:?}",
        warnings(&out)
    );
    let (json, pod) = patched(&review, &out);
    assert_known_fields(&json, &pod);
    let spec = pod.spec.as_ref().unwrap();
    let app = &spec.containers[0];
    let name = app.name.as_str();
    for (probe, kind) in [
        (&app.readiness_probe, "readiness"),
        (&app.liveness_probe, "liveness"),
        (&app.startup_probe, "startup"),
    ] {
        let probe = probe
            .as_ref()
            .unwrap_or_else(|| panic!("{kind} probe kept"));
        let get = probe
            .http_get
            .as_ref()
            .unwrap_or_else(|| panic!("{kind}: httpGet"));
        assert_eq!(get.port, IntOrString::Int(4191), "{kind}");
        assert_eq!(
            get.path.as_deref(),
            Some(format!("/app-health/{name}/{kind}").as_str())
        );
        assert_eq!(get.host, None);
        assert_eq!(get.http_headers, None, "{kind}: headers go to the proxy");
        assert!(probe.tcp_socket.is_none() && probe.grpc.is_none() && probe.exec.is_none());
    }
    // Timings and thresholds are the pod's own.
    let ready = app.readiness_probe.as_ref().unwrap();
    assert_eq!(
        (
            ready.period_seconds,
            ready.timeout_seconds,
            ready.failure_threshold
        ),
        (Some(3), Some(2), Some(4))
    );
    assert_eq!(
        app.liveness_probe.as_ref().unwrap().initial_delay_seconds,
        Some(5)
    );
    assert_eq!(
        app.startup_probe.as_ref().unwrap().failure_threshold,
        Some(30)
    );

    // The proxy learns the original targets, named ports resolved.
    let proxy = &spec.init_containers.as_deref().unwrap()[1];
    let table: Value = serde_json::from_str(&value(proxy, "BULKHEAD_APP_PROBES")).unwrap();
    assert_eq!(
        table,
        json!({
            format!("/app-health/{name}/readiness"): {
                "port": 8080, "path": "/healthz?full=1", "scheme": "HTTP",
                "headers": [{"name": "X-Probe", "value": "kubelet"}],
            },
            format!("/app-health/{name}/liveness"): {"tcp": 8080},
            format!("/app-health/{name}/startup"): {"grpc": 9090, "service": ""},
        })
    );
    // No plaintext hole is opened for the probes.
    let init = &spec.init_containers.as_deref().unwrap()[0];
    assert_eq!(flag(init, "--exclude-inbound-ports"), None);

    // Idempotent: the patched pod goes through untouched.
    let mut again = with_uid(&review, "b2c1f4de-0000-4000-8000-000000000001");
    again["request"]["object"] = json;
    let out = hook.review(&again).await;
    assert_eq!(out["response"]["allowed"], true);
    assert_no_patch(&out);
}

#[tokio::test]
async fn probes_can_be_kept_as_written_with_a_warning() {
    let hook = Webhook::start().await;
    let mut review = probed_review();
    review["request"]["object"]["metadata"]["annotations"]["bulkhead.dev/rewrite-probes"] =
        json!("false");
    let out = hook.review(&review).await;
    let (_, pod) = patched(&review, &out);
    let original: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    assert_eq!(
        pod.spec.as_ref().unwrap().containers,
        original.spec.as_ref().unwrap().containers
    );
    let proxy = &pod
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_deref()
        .unwrap()[1];
    assert!(
        !proxy
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "BULKHEAD_APP_PROBES")
    );
    let w = warnings(&out);
    assert!(
        w.iter().any(|w| w.contains("port 8080")) && w.iter().any(|w| w.contains("port 9090")),
        "{w:?}"
    );
}

#[tokio::test]
async fn an_injected_pod_is_left_alone() {
    let hook = Webhook::start().await;
    let review = fixture("deployment-pod-create.json");
    let (json, _) = patched(&review, &hook.review(&review).await);
    let mut again = with_uid(&review, "2b0c4d1e-0000-4000-8000-000000000001");
    again["request"]["object"] = json;
    let out = hook.review(&again).await;
    assert_no_patch(&out);
    assert!(warnings(&out).is_empty());
}

#[tokio::test]
async fn opt_out_and_host_network_pods_are_left_alone() {
    let hook = Webhook::start().await;
    let mut opted_out = with_uid(&fixture("deployment-pod-create.json"), "opt-out");
    opted_out["request"]["object"]["metadata"]["annotations"]["bulkhead.dev/inject"] =
        json!("disabled");
    let out = hook.review(&opted_out).await;
    assert_no_patch(&out);

    let mut host = with_uid(&fixture("deployment-pod-create.json"), "host");
    host["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    let out = hook.review(&host).await;
    assert_no_patch(&out);
    let warned = warnings(&out);
    assert!(
        warned.iter().any(|w| w.contains("hostNetwork")),
        "{warned:?}"
    );
}

#[tokio::test]
async fn a_kubectl_pod_with_init_containers_keeps_them_after_ours() {
    let hook = Webhook::start().await;
    let mut review = fixture("kubectl-pod-create-gke.json");
    let pod = &mut review["request"]["object"];
    pod["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "jmalloc/echo-server", "command": ["true"]}]);
    // No volumes and no annotations: the patch adds the arrays and maps.
    pod["spec"].as_object_mut().unwrap().remove("volumes");
    pod["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let out = hook.review(&review).await;
    let (json, pod) = patched(&review, &out);
    assert_known_fields(&json, &pod);
    let spec = pod.spec.as_ref().unwrap();
    let names: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["bulkhead-init", "bulkhead-proxy", "migrate"]);
    assert_eq!(spec.volumes.as_ref().unwrap().len(), 4);
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()["bulkhead.dev/injected"],
        "true"
    );
    // Service from the `app` label, the app port from the container's port.
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    assert_eq!(value(proxy, "BULKHEAD_SERVICE"), "echo-server");
    assert_eq!(flags(proxy, "--app"), ["8080=127.0.0.1:8080"]);
    assert_eq!(value(proxy, "BULKHEAD_APP_PROTOCOL"), "http");
    assert!(warnings(&out).is_empty(), "{:?}", warnings(&out));
}

#[tokio::test]
async fn http2_clients_are_answered_too() {
    let hook = Webhook::start().await;
    let review = fixture("deployment-pod-create.json");
    let io = TokioIo::new(hook.tls(&[b"h2"]).await);
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri("https://localhost/inject")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&review).unwrap())))
        .unwrap();
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let out: Value = serde_json::from_slice(&body).unwrap();
    patched(&review, &out);
}

#[tokio::test]
async fn malformed_reviews_get_a_clear_400_and_the_webhook_keeps_serving() {
    let hook = Webhook::start().await;
    let good = fixture("deployment-pod-create.json");

    // Not JSON, no uid to answer with: plain text.
    let answer = hook.post(b"\x00\xffgarbage{".to_vec()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.content_type().starts_with("text/plain"));
    assert!(answer.text().contains("not JSON"), "{}", answer.text());

    // A uid but the wrong kind: an AdmissionReview refusing, saying why.
    let mut wrong_kind = good.clone();
    wrong_kind["kind"] = json!("AdmissionRequest");
    let answer = hook.post(serde_json::to_vec(&wrong_kind).unwrap()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let out = answer.json();
    assert_eq!(
        out["response"]["uid"],
        "cb2373d5-7933-43a4-9ca7-0be7db7c6f33"
    );
    assert_eq!(out["response"]["allowed"], false);
    assert_eq!(out["response"]["status"]["code"], 400);
    let message = out["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("AdmissionRequest"), "{message}");

    // The old API version.
    let mut v1beta1 = good.clone();
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let answer = hook.post(serde_json::to_vec(&v1beta1).unwrap()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.text().contains("admission.k8s.io/v1"));

    // No uid.
    let mut no_uid = good.clone();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let answer = hook.post(serde_json::to_vec(&no_uid).unwrap()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.content_type().starts_with("text/plain"));
    assert!(answer.text().contains("request.uid"), "{}", answer.text());

    // A Pod request whose object is not a Pod.
    let mut not_a_pod = good.clone();
    not_a_pod["request"]["object"]["spec"]["containers"] = json!({"name": "not-a-list"});
    let answer = hook.post(serde_json::to_vec(&not_a_pod).unwrap()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let message = answer.json()["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("not a Pod") && message.contains("containers"),
        "{message}"
    );

    // Too big, declared up front ...
    let answer = hook.post(vec![b' '; webhook::MAX_BODY_BYTES + 1]).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    // ... or streamed without a length.
    let chunks =
        (0..4).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b' '; 1024 * 1024]))));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/inject")
        .header(header::HOST, "localhost")
        .body(StreamBody::new(futures::stream::iter(chunks)))
        .unwrap();
    let answer = hook.send(req).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Wrong method, wrong path.
    let answer = hook.request(Method::GET, "/inject", Vec::new()).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.headers[header::ALLOW], "POST");
    let answer = hook
        .request(Method::POST, "/mutate", serde_json::to_vec(&good).unwrap())
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    // Still serving.
    patched(&good, &hook.review(&good).await);
}

#[tokio::test]
async fn shutdown_stops_the_listener() {
    let mut hook = Webhook::start().await;
    let good = fixture("deployment-pod-create.json");
    hook.review(&good).await;
    hook.shut_down().await;
    assert!(TcpStream::connect(hook.addr).await.is_err());
}
