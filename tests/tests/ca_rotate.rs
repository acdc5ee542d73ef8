//! `bulkheadctl ca rotate prepare|activate|retire` against a real control
//! plane and real sidecars (issue 10): each stage refuses to run out of
//! order and names the missing one; activate waits for every replica to
//! hold the new issuer's key; sidecars renew onto the new issuer early,
//! without a restart; retire waits until every endpoint is on the new root
//! and then refuses what the old root let in — operator certificates,
//! bootstrap tokens and open connections. The control plane reads the CA
//! folder the CLI writes (`--issuer-reload 1s`), as one given the files of
//! a Secret updated in place would.

use std::time::Duration;

use bulkhead_proto::pb;
use bulkhead_tests::control::{self, slot_from_files};
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::proxy::*;
use bulkhead_tests::rotation::*;
use bulkhead_tests::shop::{self, STABLE};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_refuses_to_run_out_of_order_and_says_why() {
    // This replica never gets the next issuer's key.
    let mesh = Mesh::memory(
        "cluster.local",
        "",
        &[
            "--next-issuer-cert",
            "/nonexistent/next-issuer.crt",
            "--next-issuer-key",
            "/nonexistent/next-issuer.key",
        ],
    )
    .await;
    for stage in ["activate", "retire"] {
        let out = rotate(&mesh, &[stage]);
        assert_eq!(out.status.code(), Some(1), "{stage}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("run `bulkheadctl ca rotate prepare` first"),
            "{stage} names the missing stage: {}",
            stderr(&out)
        );
    }
    let out = rotate(&mesh, &["prepare"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "prepare needs --generate or a root"
    );

    rotate_ok(&mesh, &["prepare", "--generate"]);
    rotate_ok(&mesh, &["prepare", "--generate"]);
    // Another operator's folder (the credentials, not the next issuer's
    // files) cannot prepare a second rotation over this one.
    let elsewhere = tempfile::tempdir().unwrap();
    for file in ["bundle.crt", "operator.crt", "operator.key"] {
        std::fs::copy(mesh.ca.file(file), elsewhere.path().join(file)).unwrap();
    }
    let out = std::process::Command::new(control::bin("bulkheadctl"))
        .env("BULKHEAD_CONTROL", mesh.cp.url())
        .env("BULKHEAD_CREDENTIALS", elsewhere.path())
        .env("XDG_CONFIG_HOME", elsewhere.path())
        .args(["ca", "rotate", "prepare", "--generate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not hold its files"),
        "{}",
        stderr(&out)
    );
    assert!(
        !elsewhere.path().join("next-issuer.crt").exists(),
        "nothing made"
    );
    let out = rotate(&mesh, &["retire"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("run `bulkheadctl ca rotate activate` first"),
        "{}",
        stderr(&out)
    );
    let out = rotate(&mesh, &["activate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("hold no key for the new issuer"),
        "a replica without the key blocks activate: {}",
        stderr(&out)
    );
    let status = ca_status(&mesh);
    assert_eq!(status["stage"], "prepared");
    assert_eq!(status["roots"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_renews_every_sidecar_early_and_retires_the_old_root() {
    let mesh = shop::memory(&["--issuer-reload", "1s"]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let web = mesh.web("node-1");
    until_routable(&web, "inventory", "/probe").await;
    let pids = (inventory.pid(), web.pid());
    let old_root = fingerprint_of(&mesh.ca, "root.crt");
    let old_operator = (
        std::fs::read(mesh.ca.file("operator.crt")).unwrap(),
        std::fs::read(mesh.ca.file("operator.key")).unwrap(),
    );
    // A workload of the old root with a Watch open, and a token of the old
    // issuer not used yet.
    let old_workload = control::workload(&mesh.cp, &mesh.ca, "shop/web").await;
    let mut watch =
        control::Watcher::start(&mesh.cp, &mesh.ca, &old_workload, &["inventory"], "").await;
    watch.next().await;
    let old_token = mesh.ca.token("shop/web", "10m", false);

    let prepared = prepare_and_wait(&mesh).await;
    let next = prepared["nextIssuer"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_root = prepared["nextIssuer"]["root"].as_str().unwrap().to_owned();
    assert_ne!(new_root, old_root);
    for sidecar in [&inventory, &web] {
        until_trusts(sidecar, &[old_root.clone(), new_root.clone()]).await;
    }
    // Not yet: retire refuses before activate (checked above), and the
    // old issuer still signs.
    rotate_ok(&mesh, &["activate", "--renew-within", "8s"]);
    let status = ca_status(&mesh);
    assert_eq!(status["stage"], "activated");
    assert!(status["renewBy"].is_string(), "{status:#}");

    // Every sidecar renews onto the new issuer within the 8 s, early (the
    // certificates are good for 24 h), and reports it.
    let status = until_status(&mesh, "both endpoints on the new root", |s| {
        s["workloads"][&new_root] == 2
    })
    .await;
    assert_eq!(status["workloads"][&old_root], 0, "{status:#}");
    assert_eq!(status["pending"], serde_json::json!({}), "{status:#}");
    for sidecar in [&inventory, &web] {
        assert_eq!(issuer_of(sidecar).as_deref(), Some(next.as_str()));
    }
    // The old issuer's tokens hold until retire.
    control::certify(&mesh.cp, &mesh.ca, &old_token)
        .await
        .expect("a token of the previous issuer, while activated");

    rotate_ok(&mesh, &["retire"]);
    let status = ca_status(&mesh);
    assert_eq!(status["stage"], "none");
    let roots: Vec<&str> = status["roots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["fingerprint"].as_str())
        .collect();
    assert_eq!(roots, [new_root.as_str()]);
    assert_eq!(mesh.ca.bundle().roots_der().len(), 1, "bundle.crt follows");
    for sidecar in [&inventory, &web] {
        until_trusts(sidecar, std::slice::from_ref(&new_root)).await;
    }
    let r = call(web.upstream("inventory"), "GET", "/after", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!((inventory.pid(), web.pid()), pids, "no sidecar restarted");

    // What the old root let in is refused now: its operator certificate,
    // its issuer's tokens, and the Watch it had open (closed at once).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("operator.crt"), &old_operator.0).unwrap();
    std::fs::write(dir.path().join("operator.key"), &old_operator.1).unwrap();
    let operator = slot_from_files(
        &dir.path().join("operator.crt"),
        &dir.path().join("operator.key"),
    );
    let err = pb::admin_client::AdminClient::new(mesh.cp.channel(&mesh.ca, Some(operator)))
        .get_trust(pb::GetTrustRequest {})
        .await
        .expect_err("an operator certificate of the retired root");
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "refused in the handshake: {err:?}"
    );
    // (Not one-time: the same token certified once already, above.)
    let err = control::certify(&mesh.cp, &mesh.ca, &old_token)
        .await
        .expect_err("a token of the retired issuer");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // Updates may still be queued; then the stream ends.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = watch.try_next().await {}
    })
    .await;
    assert!(closed.is_ok(), "the old root's Watch is closed");
}
