//! The one mesh setup every sidecar scenario starts from: a test CA, a real
//! `bulkhead-control` on the memory store or on its own etcd, resources
//! applied as the operator, and sidecars started against it.
//!
//! Scenario files add what their shop needs (`impl Mesh` in [`crate::shop`]
//! for the resilience scenarios); the setup itself is written once here.

use crate::control::{ControlPlane, StoreSpec, TestCa, apply};
use crate::etcd::EtcdServer;
use crate::proxy::{Sidecar, SidecarSpec};

/// A control plane and what it trusts. Fields drop in order: the control
/// plane stops before its etcd.
pub struct Mesh {
    pub cp: ControlPlane,
    pub ca: TestCa,
    etcd: Option<EtcdServer>,
}

/// Runs a blocking helper (a process spawn, a bounded poll) off the async
/// workers when the test runs on the multi-thread runtime, so in-process
/// apps keep answering; directly otherwise.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Mesh {
    /// A control plane on the memory store, trust domain `trust_domain`,
    /// with `yaml` applied (empty: nothing).
    pub async fn memory(trust_domain: &str, yaml: &str, extra: &[&str]) -> Self {
        let ca = TestCa::init(trust_domain);
        let cp = blocking(|| ControlPlane::start(&ca, &StoreSpec::Memory, extra));
        let mesh = Self { cp, ca, etcd: None };
        mesh.apply(yaml).await;
        mesh
    }

    /// A control plane on an etcd of its own (keys under `prefix`), with
    /// `yaml` applied: state survives a control-plane restart.
    pub async fn etcd(trust_domain: &str, prefix: &str, yaml: &str, extra: &[&str]) -> Self {
        let etcd = blocking(EtcdServer::start);
        let ca = TestCa::init(trust_domain);
        let store = StoreSpec::Etcd {
            endpoints: vec![etcd.client_url()],
            prefix: prefix.into(),
        };
        let cp = blocking(|| ControlPlane::start(&ca, &store, extra));
        let mesh = Self {
            cp,
            ca,
            etcd: Some(etcd),
        };
        mesh.apply(yaml).await;
        mesh
    }

    /// The etcd under the control plane, if it has one.
    pub fn etcd_server(&mut self) -> Option<&mut EtcdServer> {
        self.etcd.as_mut()
    }

    /// Applies `yaml` as the operator (nothing for an empty text).
    pub async fn apply(&self, yaml: &str) {
        if !yaml.trim().is_empty() {
            apply(&self.cp, &self.ca, yaml).await;
        }
    }

    /// Starts a sidecar with a fresh one-time token and waits for it to be
    /// ready.
    pub fn sidecar(&self, spec: SidecarSpec) -> Sidecar {
        blocking(|| Sidecar::start(&self.ca, &self.cp, spec))
    }
}
