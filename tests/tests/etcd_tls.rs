//! The control plane on an etcd that requires TLS and client certificates
//! (`--etcd-ca/--etcd-cert/--etcd-key`), as production etcd clusters do.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bulkhead_tests::control::*;

struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "etcd test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        Self { ca, ca_key }
    }

    /// A leaf for `127.0.0.1` (server and client use).
    fn leaf(&self, dir: &Path, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = rcgen::Issuer::from_ca_cert_der(self.ca.der(), &self.ca_key).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_uses_etcd_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let ca_file = dir.path().join("etcd-ca.crt");
    std::fs::write(&ca_file, pki.ca.pem()).unwrap();
    let (server_crt, server_key) = pki.leaf(dir.path(), "etcd");
    let (client_crt, client_key) = pki.leaf(dir.path(), "bulkhead-control");
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let mut etcd = Command::new("etcd")
        .args(["--name", "m0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args(["--initial-cluster", &format!("m0=http://127.0.0.1:{peer}")])
        .args([
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{metrics}"),
        ])
        .args([
            "--cert-file",
            &server_crt,
            "--key-file",
            &server_key,
            "--client-cert-auth",
            "--trusted-ca-file",
        ])
        .arg(&ca_file)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("etcd (apt-get install etcd-server)");
    let health = SocketAddr::from(([127, 0, 0, 1], metrics));
    wait_for(
        "etcd with TLS to be healthy",
        Duration::from_secs(15),
        || matches!(http_get(health, "/health"), Ok((200, _))).then_some(()),
    );

    let ca = TestCa::init("cluster.local");
    let store = StoreSpec::Etcd {
        endpoints: vec![url.clone()],
        prefix: "/bulkhead/".into(),
    };
    let ca_arg = ca_file.display().to_string();
    let cp = ControlPlane::start(
        &ca,
        &store,
        &[
            "--etcd-ca",
            &ca_arg,
            "--etcd-cert",
            &client_crt,
            "--etcd-key",
            &client_key,
        ],
    );
    apply(&cp, &ca, "apiVersion: bulkhead.dev/v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec:\n  ports: [{port: 8080, protocol: http}]\n").await;
    let out = cp.ctl(&ca, &["get", "services", "-n", "shop", "-o", "json"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("cart"),
        "{out:?}"
    );

    // Without a client certificate etcd refuses, and the control plane says so.
    let out = Command::new(bin("bulkhead-control"))
        .args([
            "--store",
            "etcd",
            "--etcd-endpoints",
            &url,
            "--etcd-ca",
            &ca_arg,
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
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--etcd-endpoints"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // https:// without --etcd-ca is a usage error.
    let out = Command::new(bin("bulkhead-control"))
        .args(["--store", "etcd", "--etcd-endpoints", &url])
        .arg("--issuer-cert")
        .arg(ca.file("issuer.crt"))
        .arg("--issuer-key")
        .arg(ca.file("issuer.key"))
        .arg("--trust-bundle")
        .arg(ca.file("bundle.crt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--etcd-ca"));
    let _ = etcd.kill();
    let _ = etcd.wait();
}
