//! The AdmissionReview exchange: how the patch goes out, refusals, malformed
//! reviews and what the webhook considers at all.

use super::*;

fn review_of(object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": object,
            "oldObject": null
        }
    })
}

#[test]
fn the_patch_goes_out_as_base64_of_json_text() {
    let body = serde_json::to_vec(&review_of(pod())).unwrap();
    let reviewed = injector().review(&body).unwrap();
    assert_eq!(reviewed.verdict, Verdict::Injected);
    let out: Value = serde_json::from_slice(&reviewed.json).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], "u-1");
    assert_eq!(out["response"]["allowed"], true);
    assert_eq!(out["response"]["patchType"], "JSONPatch");
    let b64 = out["response"]["patch"]
        .as_str()
        .expect("a string, not a number array");
    let text = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let patch: Patch = serde_json::from_slice(&text).unwrap();
    assert_eq!(patch.0.len(), 7);
}

#[test]
fn refusals_are_answered_not_errors() {
    let mut p = pod();
    p["metadata"]["labels"]["app.kubernetes.io/name"] = json!("Not_A_Label");
    let reviewed = injector()
        .review(&serde_json::to_vec(&review_of(p)).unwrap())
        .unwrap();
    assert_eq!(reviewed.verdict, Verdict::Refused);
    let out: Value = serde_json::from_slice(&reviewed.json).unwrap();
    assert_eq!(out["response"]["allowed"], false);
    assert_eq!(out["response"]["status"]["code"], 400);
    assert!(out["response"].get("patch").is_none());
}

/// Recognizes the error a case expects.
type IsExpected = fn(&MalformedReview) -> bool;

/// Each malformed input, the error it maps to, and whether the uid is
/// known (then the 400 carries an AdmissionReview, else plain text).
#[test]
fn malformed_reviews_map_to_named_errors() {
    let good = review_of(pod());
    let with = |f: fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(Vec<u8>, IsExpected, bool)> = vec![
        (
            b"{not json".to_vec(),
            |e| matches!(e, MalformedReview::NotJson(_)),
            false,
        ),
        (
            b"[1,2]".to_vec(),
            |e| matches!(e, MalformedReview::NotAnObject),
            false,
        ),
        (
            with(|v| v["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            |e| matches!(e, MalformedReview::ApiVersion(_)),
            true,
        ),
        (
            with(|v| v["kind"] = json!("Pod")),
            |e| matches!(e, MalformedReview::Kind(_)),
            true,
        ),
        (
            with(|v| v.as_object_mut().unwrap().retain(|k, _| k != "request")),
            |e| matches!(e, MalformedReview::MissingRequest),
            false,
        ),
        (
            with(|v| v["request"]["uid"] = json!("")),
            |e| matches!(e, MalformedReview::MissingUid),
            false,
        ),
        (
            with(|v| v["request"]["operation"] = json!("EXPLODE")),
            |e| matches!(e, MalformedReview::Request(m) if m.contains("operation")),
            true,
        ),
        (
            with(|v| v["request"]["object"] = Value::Null),
            |e| matches!(e, MalformedReview::MissingObject),
            true,
        ),
        (
            with(|v| v["request"]["object"]["kind"] = json!("Deployment")),
            |e| matches!(e, MalformedReview::NotAPod(_)),
            true,
        ),
        (
            with(|v| v["request"]["object"]["spec"]["containers"] = json!("nope")),
            |e| matches!(e, MalformedReview::NotAPod(m) if m.contains("spec.containers")),
            true,
        ),
    ];
    for (body, is_expected, uid_known) in cases {
        let err = injector().review(&body).unwrap_err();
        assert!(is_expected(&err.error), "{err:?}");
        assert_eq!(err.uid.is_some(), uid_known, "{err:?}");
        let (content_type, text) = err.body();
        if uid_known {
            assert_eq!(content_type, "application/json");
            let out: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(out["response"]["allowed"], false);
            assert_eq!(out["response"]["status"]["code"], 400);
            assert_eq!(out["response"]["status"]["message"], err.to_string());
        } else {
            assert!(content_type.starts_with("text/plain"));
        }
    }
}

#[test]
fn only_pod_creations_are_considered() {
    let mut update = review_of(pod());
    update["request"]["operation"] = json!("UPDATE");
    let mut sub = review_of(pod());
    sub["request"]["subResource"] = json!("ephemeralcontainers");
    let mut deployment = review_of(json!({"apiVersion": "apps/v1", "kind": "Deployment"}));
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    for review in [update, sub, deployment] {
        let r = injector()
            .review(&serde_json::to_vec(&review).unwrap())
            .unwrap();
        assert_eq!(r.verdict, Verdict::NotAPodCreation);
        let out: Value = serde_json::from_slice(&r.json).unwrap();
        assert_eq!(out["response"], json!({"uid": "u-1", "allowed": true}));
    }
}
