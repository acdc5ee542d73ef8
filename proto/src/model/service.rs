//! The `Service` resource: a service's declared ports and protocols, who may
//! register its endpoints, and its optional virtual IP.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;

use super::check;
use super::error::FieldErrors;
use super::resource::{Kind, Metadata, Resource, Spec};

/// A service of the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The ports callers address (never the app's local listen ports); unique.
    pub ports: Vec<ServicePort>,
    /// As written; `None` means the service's own name. Use
    /// [`Service::service_accounts`] for the effective list.
    pub service_accounts: Option<Vec<String>>,
    pub vip: Option<IpAddr>,
}

/// A declared port and what speaks on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    pub port: u16,
    pub protocol: Protocol,
}

/// How the mesh handles a port's traffic: HTTP and gRPC per request, TCP as
/// an opaque stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Grpc,
    Tcp,
}

impl Protocol {
    pub(crate) const CHOICES: [(&'static str, Protocol); 3] = [
        ("http", Protocol::Http),
        ("grpc", Protocol::Grpc),
        ("tcp", Protocol::Tcp),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }

    /// Whether requests on this protocol carry a method and path.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Grpc)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}: expected one of http, grpc, tcp")]
pub struct UnknownProtocol(pub String);

/// Exact lower-case names, as documents and the wire write them.
impl FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::CHOICES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, protocol)| *protocol)
            .ok_or_else(|| UnknownProtocol(s.chars().take(64).collect()))
    }
}

impl Service {
    /// Service accounts allowed to register endpoints: the listed ones, or the
    /// service's own name when none are listed.
    pub fn service_accounts(&self) -> Vec<&str> {
        match &self.spec.service_accounts {
            Some(accounts) => accounts.iter().map(String::as_str).collect(),
            None => vec![self.metadata.name.as_str()],
        }
    }

    /// Whether `id` may register endpoints of this service: same trust domain,
    /// same namespace, and one of its service accounts.
    pub fn may_register(&self, id: &SpiffeId, trust_domain: &str) -> bool {
        id.trust_domain() == trust_domain
            && id.namespace() == self.metadata.namespace
            && self.service_accounts().contains(&id.service_account())
    }

    /// The declared port `port`, if any.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.spec.ports.iter().find(|p| p.port == port)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawServiceSpec {
    ports: Vec<RawServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service_accounts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vip: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServicePort {
    port: i64,
    protocol: String,
}

impl Spec for ServiceSpec {
    const KIND: Kind = Kind::Service;
    type Raw = RawServiceSpec;

    fn from_raw(raw: RawServiceSpec, errs: &mut FieldErrors) -> Option<Self> {
        let ports = check::required_list(errs, "spec.ports", "port", raw.ports, service_port);
        if let Some(ports) = &ports {
            for (i, p) in ports.iter().enumerate() {
                if ports[..i].iter().any(|q| q.port == p.port) {
                    errs.push(
                        format!("spec.ports[{i}].port"),
                        format!("expected each port once, got {} again", p.port),
                    );
                }
            }
        }
        let service_accounts = check::optional_list(
            errs,
            "spec.serviceAccounts",
            "service account",
            raw.service_accounts,
            check::dns_label,
        );
        let vip = match raw.vip {
            None => Some(None),
            Some(vip) => match vip.parse::<IpAddr>() {
                Ok(ip) => Some(Some(ip)),
                Err(_) => {
                    errs.push(
                        "spec.vip",
                        format!("expected an IPv4 or IPv6 address, got {}", check::got(&vip)),
                    );
                    None
                }
            },
        };
        Some(ServiceSpec {
            ports: ports?,
            service_accounts: service_accounts?,
            vip: vip?,
        })
    }

    fn to_raw(&self) -> RawServiceSpec {
        RawServiceSpec {
            ports: self
                .ports
                .iter()
                .map(|p| RawServicePort {
                    port: i64::from(p.port),
                    protocol: p.protocol.as_str().to_owned(),
                })
                .collect(),
            service_accounts: self.service_accounts.clone(),
            vip: self.vip.map(|ip| ip.to_string()),
        }
    }

    fn into_resource(metadata: Metadata, spec: Self) -> Resource {
        Resource::Service(Service { metadata, spec })
    }
}

fn service_port(errs: &mut FieldErrors, path: &str, raw: RawServicePort) -> Option<ServicePort> {
    let port = check::port(errs, &format!("{path}.port"), raw.port);
    let protocol = check::one_of(
        errs,
        &format!("{path}.protocol"),
        &raw.protocol,
        &Protocol::CHOICES,
    );
    Some(ServicePort {
        port: port?,
        protocol: protocol?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{expect_error, parse_one};

    const SERVICE: &str = "apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  ports:
  - {port: 8080, protocol: http}
  - {port: 9090, protocol: grpc}
";

    fn service(yaml: &str) -> Service {
        match parse_one(yaml) {
            Resource::Service(s) => s,
            other => panic!("not a Service: {other:?}"),
        }
    }

    #[test]
    fn parses_ports_and_defaults_service_accounts_at_use_time() {
        let s = service(SERVICE);
        assert_eq!(s.spec.ports.len(), 2);
        assert_eq!(s.port(9090).map(|p| p.protocol), Some(Protocol::Grpc));
        assert_eq!(s.spec.service_accounts, None);
        assert_eq!(s.service_accounts(), vec!["inventory"]);
        assert!(!Resource::Service(s).to_json().contains("serviceAccounts"));
    }

    #[test]
    fn listed_service_accounts_and_vip() {
        let s = service(&format!(
            "{SERVICE}  serviceAccounts: [inventory, inventory-v2]\n  vip: 198.19.0.10\n"
        ));
        assert_eq!(s.service_accounts(), vec!["inventory", "inventory-v2"]);
        assert_eq!(s.spec.vip, Some("198.19.0.10".parse().unwrap()));
        let s6 = service(&format!("{SERVICE}  vip: 2001:db8::1\n"));
        assert_eq!(s6.spec.vip, Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn may_register_checks_namespace_account_and_trust_domain() {
        let s = service(SERVICE);
        let id = |s: &str| s.parse::<SpiffeId>().unwrap();
        assert!(s.may_register(
            &id("spiffe://cluster.local/ns/shop/sa/inventory"),
            "cluster.local"
        ));
        assert!(!s.may_register(
            &id("spiffe://cluster.local/ns/shop/sa/cart"),
            "cluster.local"
        ));
        assert!(!s.may_register(
            &id("spiffe://cluster.local/ns/other/sa/inventory"),
            "cluster.local"
        ));
        assert!(!s.may_register(
            &id("spiffe://example.org/ns/shop/sa/inventory"),
            "cluster.local"
        ));
    }

    #[test]
    fn rejects_port_out_of_range() {
        expect_error(
            &SERVICE.replace("8080", "70000"),
            "spec.ports[0].port",
            "expected a port 1-65535, got 70000",
        );
        expect_error(&SERVICE.replace("8080", "0"), "spec.ports[0].port", "got 0");
    }

    #[test]
    fn rejects_unknown_protocol() {
        expect_error(
            &SERVICE.replace("grpc", "udp"),
            "spec.ports[1].protocol",
            "expected one of http, grpc, tcp, got \"udp\"",
        );
    }

    #[test]
    fn rejects_duplicate_port() {
        expect_error(
            &SERVICE.replace("9090", "8080"),
            "spec.ports[1].port",
            "expected each port once",
        );
    }

    #[test]
    fn rejects_no_ports() {
        let yaml =
            "apiVersion: bulkhead.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: []}\n";
        expect_error(yaml, "spec.ports", "expected at least one port");
    }

    #[test]
    fn rejects_bad_service_account() {
        expect_error(
            &format!("{SERVICE}  serviceAccounts: [Inventory]\n"),
            "spec.serviceAccounts[0]",
            "expected a DNS label",
        );
        expect_error(
            &format!("{SERVICE}  serviceAccounts: []\n"),
            "spec.serviceAccounts",
            "expected at least one service account",
        );
    }

    #[test]
    fn rejects_bad_vip() {
        expect_error(
            &format!("{SERVICE}  vip: 198.19.0.300\n"),
            "spec.vip",
            "expected an IPv4 or IPv6 address, got \"198.19.0.300\"",
        );
    }

    #[test]
    fn rejects_unknown_field() {
        expect_error(
            &SERVICE.replace("protocol: http", "protocl: http"),
            "spec.ports[0].protocl",
            "unknown field `protocl`",
        );
    }

    #[test]
    fn protocol_names() {
        for p in [Protocol::Http, Protocol::Grpc, Protocol::Tcp] {
            assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
        }
        assert!("HTTP".parse::<Protocol>().is_err());
        assert!(Protocol::Grpc.is_http() && !Protocol::Tcp.is_http());
    }
}
