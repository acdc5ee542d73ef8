//! `bulkheadctl demo`: the control plane at work on loopback, no etcd needed.
//!
//! It makes a CA, starts a control plane on the embedded store, applies the
//! shop from `examples/shop.yaml` as an operator over mTLS, then plays the
//! workloads' side the way a sidecar does: key made locally, CSR + one-time
//! token, endpoint registration on a lease kept alive, and a Watch stream
//! whose pushed updates are printed live. It shows the refusals too (a
//! reused token, a registration by the wrong identity, a non-operator
//! changing policy) and a workload that stops: its lease runs out and every
//! watcher hears of it. The sidecar data path joins the demo with the sidecar
//! issue.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bulkhead_control::ca::{self, Ca};
use bulkhead_control::runtime::{self, Settings};
use bulkhead_control::store::MemoryStore;
use bulkhead_proto::SpiffeId;
use bulkhead_proto::pb::{
    self, admin_client::AdminClient, discovery_client::DiscoveryClient,
    identity_client::IdentityClient,
};
use bulkhead_proto::tls::{CertSlot, TrustBundle};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::{CliError, CliResult};

const SHOP: &str = include_str!("../../../../examples/shop.yaml");
const LEASE_TTL: Duration = Duration::from_secs(3);

struct Workload {
    service: &'static str,
    version: &'static str,
    address: &'static str,
    node: &'static str,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        service: "web",
        version: "1.4.0",
        address: "198.18.1.10",
        node: "node-1",
    },
    Workload {
        service: "cart",
        version: "2.0.1",
        address: "198.18.1.20",
        node: "node-1",
    },
    Workload {
        service: "inventory",
        version: "3.0.0",
        address: "198.18.1.30",
        node: "node-1",
    },
    Workload {
        service: "inventory",
        version: "3.1.0",
        address: "198.18.2.31",
        node: "node-2",
    },
    Workload {
        service: "pricing",
        version: "1.0.0",
        address: "198.18.1.40",
        node: "node-1",
    },
    Workload {
        service: "pricing",
        version: "1.0.0",
        address: "198.18.2.41",
        node: "node-2",
    },
];

fn fail(what: &str) -> impl FnOnce(String) -> CliError + '_ {
    move |e| CliError::failure(format!("demo: {what}: {e}"))
}

fn step(text: &str) {
    println!("\n== {text}");
}

pub(crate) async fn run(duration: Duration) -> CliResult {
    let started = Instant::now();
    let dir = tempfile_dir()?;
    let ca_dir = dir.join("ca");
    step("bulkheadctl ca init: root, issuer, trust bundle, operator certificate");
    let files =
        ca::init_ca("cluster.local", &ca_dir).map_err(|e| fail("ca init")(e.to_string()))?;
    println!("   CA in {}", ca_dir.display());
    let ca = Arc::new(
        Ca::load(
            &files.issuer_cert,
            &files.issuer_key,
            &files.bundle,
            "cluster.local",
        )
        .map_err(|e| fail("load CA")(e.to_string()))?,
    );
    let issuer_key = std::fs::read_to_string(&files.issuer_key)
        .map_err(|e| fail("issuer key")(e.to_string()))?;

    step("bulkhead-control on the embedded store (127.0.0.1, ephemeral ports)");
    let metrics = bulkhead_control::telemetry::init_metrics().map_err(fail("metrics"))?;
    let running = runtime::start(
        Settings {
            listen: "127.0.0.1:0".parse().expect("static addr"),
            admin: "127.0.0.1:0".parse().expect("static addr"),
            ca: ca.clone(),
            operators: vec![],
            cert_lifetime: Duration::from_secs(3600),
            lease_ttl: LEASE_TTL,
            dns_names: vec!["localhost".into()],
        },
        Arc::new(MemoryStore::new()),
        metrics,
    )
    .await
    .map_err(fail("start control plane"))?;
    let url = format!("https://{}", running.grpc_addr);
    println!(
        "   gRPC {url}   admin http://{}/metrics",
        running.admin_addr
    );
    let result = tokio::select! {
        r = scenario(&url, &files, &issuer_key, duration, started) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\n== interrupted: stopping");
            Ok(())
        }
    };
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> Result<std::path::PathBuf, CliError> {
    let base = std::env::temp_dir().join(format!("bulkhead-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).map_err(|e| fail("temp dir")(e.to_string()))?;
    Ok(base)
}

fn channel(url: &str, bundle: &TrustBundle, slot: Option<CertSlot>) -> Result<Channel, CliError> {
    bulkhead_proto::client::channel(url, bundle, slot).map_err(|e| fail("channel")(e.to_string()))
}

async fn certify(
    url: &str,
    bundle: &TrustBundle,
    token: String,
) -> Result<(CertSlot, String), tonic::Status> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let resp = IdentityClient::new(
        channel(url, bundle, None).map_err(|e| tonic::Status::internal(e.message))?,
    )
    .certify(pb::CertifyRequest {
        csr_der: csr.der().to_vec(),
        attestation: Some(pb::certify_request::Attestation::BootstrapToken(token)),
    })
    .await?
    .into_inner();
    let chain = resp.chain_der.into_iter().map(Into::into).collect();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let slot = CertSlot::empty();
    slot.set(
        CertSlot::certified_key(chain, key).map_err(|e| tonic::Status::internal(e.to_string()))?,
    );
    Ok((slot, resp.spiffe_id))
}

fn endpoint_record(w: &Workload) -> pb::Endpoint {
    pb::Endpoint {
        namespace: "shop".into(),
        service: w.service.into(),
        version: w.version.into(),
        address: w.address.into(),
        inbound_port: 4143,
        ports: vec![pb::Port {
            port: if w.service == "pricing" { 9090 } else { 8080 },
            protocol: if w.service == "pricing" {
                "grpc"
            } else {
                "http"
            }
            .into(),
        }],
        locality: Some(pb::Locality {
            node: w.node.into(),
            zone: "zone-a".into(),
            region: "region-1".into(),
        }),
        ..Default::default()
    }
}

/// Registers and keeps the lease alive, as a sidecar does, until aborted.
fn keep_registered(
    client: DiscoveryClient<Channel>,
    record: pb::Endpoint,
    lease: i64,
) -> JoinHandle<()> {
    let mut client = client;
    tokio::spawn(async move {
        let key = pb::KeepAliveRequest {
            namespace: record.namespace.clone(),
            service: record.service.clone(),
            address: record.address.clone(),
            lease_id: lease,
            inbound_port: record.inbound_port,
        };
        loop {
            tokio::time::sleep(LEASE_TTL / 3).await;
            if client.keep_alive(key.clone()).await.is_err() {
                return;
            }
        }
    })
}

fn describe(update: &pb::WatchUpdate) -> Vec<String> {
    let mut lines = Vec::new();
    for c in &update.changes {
        let op = if c.op == pb::change::Op::Delete as i32 {
            "-"
        } else {
            "+"
        };
        match &c.item {
            Some(pb::change::Item::Endpoint(e)) => lines.push(format!(
                "{op} endpoint {}/{} v{} at {} on {}",
                e.namespace,
                e.service,
                e.version,
                e.address,
                e.locality.as_ref().map(|l| l.node.as_str()).unwrap_or("?")
            )),
            Some(pb::change::Item::Resource(r)) => {
                lines.push(format!("{op} {} {}/{}", r.kind, r.namespace, r.name))
            }
            Some(pb::change::Item::TrustBundle(b)) => {
                lines.push(format!("{op} trust bundle ({} root)", b.roots_der.len()))
            }
            None => {}
        }
    }
    lines
}

async fn scenario(
    url: &str,
    files: &ca::CaFiles,
    issuer_key: &str,
    duration: Duration,
    started: Instant,
) -> CliResult {
    let bundle_pem = std::fs::read(&files.bundle).map_err(|e| fail("bundle")(e.to_string()))?;
    let bundle = TrustBundle::from_pem(&bundle_pem, "bundle.crt", "cluster.local")
        .map_err(|e| fail("bundle")(e.to_string()))?;
    let operator = crate::settings::slot_from_files(&files.operator_cert, &files.operator_key)?;

    step(
        "bulkheadctl apply -f examples/shop.yaml (as spiffe://cluster.local/ns/bulkhead/sa/operator, over mTLS)",
    );
    let mut admin = AdminClient::new(channel(url, &bundle, Some(operator))?);
    let applied = admin
        .apply(pb::ApplyRequest {
            source: "examples/shop.yaml".into(),
            yaml: SHOP.into(),
            dry_run: false,
        })
        .await
        .map_err(|s| fail("apply")(s.message().to_owned()))?
        .into_inner();
    for r in &applied.results {
        println!(
            "   {}/{} {}/{} {}",
            r.kind.to_lowercase(),
            r.name,
            r.namespace,
            r.name,
            r.outcome
        );
    }

    step(
        "workloads: key made locally, CSR + one-time token -> certificate, endpoint registered on a lease",
    );
    let mint = |ns_sa: &str| -> Result<String, CliError> {
        let id = SpiffeId::from_ns_sa("cluster.local", ns_sa)
            .map_err(|e| fail("identity")(e.to_string()))?;
        ca::mint_token(
            issuer_key,
            &id,
            Duration::from_secs(600),
            true,
            SystemTime::now(),
        )
        .map_err(|e| fail("token")(e.to_string()))
    };
    let mut keepers = Vec::new();
    let mut slots = std::collections::BTreeMap::new();
    let mut reused_token = None;
    for w in WORKLOADS {
        let token = mint(&format!("shop/{}", w.service))?;
        let (slot, id) = certify(url, &bundle, token.clone())
            .await
            .map_err(|s| fail("certify")(s.message().to_owned()))?;
        reused_token.get_or_insert(token);
        let mut client = DiscoveryClient::new(channel(url, &bundle, Some(slot.clone()))?);
        let record = endpoint_record(w);
        let reg = client
            .register(pb::RegisterRequest {
                endpoint: Some(record.clone()),
            })
            .await
            .map_err(|s| fail("register")(s.message().to_owned()))?
            .into_inner();
        println!(
            "   {id:<45} {} v{} at {} ({}), lease {:x}",
            w.service, w.version, w.address, w.node, reg.lease_id
        );
        keepers.push(keep_registered(client, record, reg.lease_id));
        slots.insert(w.service, slot);
    }

    step("cart's sidecar subscribes once: snapshot, then pushed changes");
    let cart = slots
        .get("cart")
        .cloned()
        .ok_or_else(|| CliError::failure("demo: no cart workload"))?;
    let mut watch = DiscoveryClient::new(channel(url, &bundle, Some(cart))?)
        .watch(pb::WatchRequest {
            services: vec!["inventory".into(), "pricing".into()],
            own_service: "cart".into(),
        })
        .await
        .map_err(|s| fail("watch")(s.message().to_owned()))?
        .into_inner();
    let printer = tokio::spawn(async move {
        while let Ok(Some(update)) = watch.message().await {
            let kind = if update.snapshot {
                "snapshot"
            } else {
                "update"
            };
            println!("   [watch] {kind} at revision {}", update.revision);
            for line in describe(&update) {
                println!("   [watch]   {line}");
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    step("refusals");
    if let Some(token) = reused_token {
        match certify(url, &bundle, token).await {
            Err(s) => println!(
                "   reused one-time token     -> {:?}: {}",
                s.code(),
                s.message()
            ),
            Ok(_) => {
                return Err(CliError::failure(
                    "demo: a reused one-time token was accepted",
                ));
            }
        }
    }
    if let Some(web) = slots.get("web") {
        let mut client = DiscoveryClient::new(channel(url, &bundle, Some(web.clone()))?);
        match client
            .register(pb::RegisterRequest {
                endpoint: Some(endpoint_record(&WORKLOADS[2])),
            })
            .await
        {
            Err(s) => println!(
                "   web registering inventory -> {:?}: {}",
                s.code(),
                s.message()
            ),
            Ok(_) => {
                return Err(CliError::failure(
                    "demo: web was allowed to register inventory",
                ));
            }
        }
        let mut not_operator = AdminClient::new(channel(url, &bundle, Some(web.clone()))?);
        match not_operator
            .delete(pb::DeleteRequest {
                kind: "AllowList".into(),
                namespace: "shop".into(),
                name: "inventory-readers".into(),
            })
            .await
        {
            Err(s) => println!(
                "   web deleting a policy     -> {:?}: {}",
                s.code(),
                s.message()
            ),
            Ok(_) => return Err(CliError::failure("demo: a workload changed policy")),
        }
    }

    step("the inventory 3.1.0 canary stops renewing its lease: it leaves the registry on its own");
    if let Some(k) = keepers.get(3) {
        k.abort();
    }
    tokio::time::sleep(LEASE_TTL + Duration::from_secs(2)).await;

    step("an operator shifts the split to 50/50");
    let split = SHOP
        .split("---")
        .find(|d| d.contains("kind: TrafficSplit"))
        .unwrap_or_default()
        .replace("weight: 90", "weight: 50")
        .replace("weight: 10", "weight: 50");
    admin
        .apply(pb::ApplyRequest {
            source: "split.yaml".into(),
            yaml: split,
            dry_run: false,
        })
        .await
        .map_err(|s| fail("apply")(s.message().to_owned()))?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    step("bulkheadctl endpoints -n shop");
    let eps = admin
        .list_endpoints(pb::ListEndpointsRequest {
            service: String::new(),
            namespace: "shop".into(),
        })
        .await
        .map_err(|s| fail("endpoints")(s.message().to_owned()))?
        .into_inner();
    for e in &eps.endpoints {
        println!(
            "   {:<10} v{:<6} {:<14} {:<7} {}",
            e.service,
            e.version,
            e.address,
            e.locality.as_ref().map(|l| l.node.as_str()).unwrap_or(""),
            e.identity
        );
    }

    let remaining = duration.saturating_sub(started.elapsed());
    if !remaining.is_zero() {
        step(&format!(
            "control plane keeps serving for {}s (--duration)",
            remaining.as_secs()
        ));
        tokio::time::sleep(remaining).await;
    }
    for k in keepers {
        k.abort();
    }
    printer.abort();
    step("done: control plane stopped, nothing left running");
    Ok(())
}
