//! Registry endpoints: one running instance of a service version, as a
//! sidecar registers it, checked at the protobuf boundary.

use std::net::IpAddr;

use crate::identity::{SpiffeId, validate_name};
use crate::pb;

use super::check;
use super::service::{Protocol, ServicePort};

/// One reachable instance of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub address: IpAddr,
    /// The sidecar's mTLS inbound port on `address` (normally 4143).
    pub inbound_port: u16,
    /// Declared service ports this instance serves; unique, never empty.
    pub ports: Vec<ServicePort>,
    pub locality: Locality,
    /// Taken from the registrant's certificate by the control plane; `None`
    /// until then. A non-empty value must be a valid SPIFFE ID, so the control
    /// plane clears what a sidecar sent in `Register` before converting.
    pub identity: Option<SpiffeId>,
    /// When the control plane first accepted the registration.
    pub registered_unix_ms: i64,
    /// Whether its app is ready. The control plane keeps unready
    /// registrations (for operators) but pushes only ready ones.
    pub ready: bool,
}

/// Where an endpoint runs; an empty field means unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    pub node: String,
    pub zone: String,
    pub region: String,
}

/// Why a protobuf endpoint was refused: the field and what it should be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {field}: {message}")]
pub struct EndpointError {
    pub field: String,
    pub message: String,
}

/// Longest locality field accepted.
const MAX_LOCALITY_LEN: usize = 128;

impl Endpoint {
    /// The declared port `port`, if this endpoint serves it.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

impl TryFrom<pb::Endpoint> for Endpoint {
    type Error = EndpointError;

    fn try_from(pb: pb::Endpoint) -> Result<Self, Self::Error> {
        let err = |field: &str, message: String| EndpointError {
            field: field.to_owned(),
            message,
        };
        for (field, value) in [("namespace", &pb.namespace), ("service", &pb.service)] {
            validate_name("name", value).map_err(|_| {
                err(
                    field,
                    format!("expected {}, got {}", check::DNS_LABEL, check::got(value)),
                )
            })?;
        }
        if !check::is_version(&pb.version) {
            return Err(err(
                "version",
                format!(
                    "expected {}, got {}",
                    check::VERSION,
                    check::got(&pb.version)
                ),
            ));
        }
        let address: IpAddr = pb.address.parse().map_err(|_| {
            err(
                "address",
                format!(
                    "expected an IPv4 or IPv6 address, got {}",
                    check::got(&pb.address)
                ),
            )
        })?;
        let inbound_port = port(pb.inbound_port).ok_or_else(|| {
            err(
                "inbound_port",
                format!("expected a port 1-65535, got {}", pb.inbound_port),
            )
        })?;
        if pb.ports.is_empty() {
            return Err(err("ports", "expected at least one port".to_owned()));
        }
        let mut ports: Vec<ServicePort> = Vec::with_capacity(pb.ports.len());
        for (i, p) in pb.ports.iter().enumerate() {
            let number = port(p.port).ok_or_else(|| {
                err(
                    &format!("ports[{i}].port"),
                    format!("expected a port 1-65535, got {}", p.port),
                )
            })?;
            if ports.iter().any(|q| q.port == number) {
                return Err(err(
                    &format!("ports[{i}].port"),
                    format!("expected each port once, got {number} again"),
                ));
            }
            let protocol: Protocol = p.protocol.parse().map_err(|_| {
                err(
                    &format!("ports[{i}].protocol"),
                    format!(
                        "expected one of http, grpc, tcp, got {}",
                        check::got(&p.protocol)
                    ),
                )
            })?;
            ports.push(ServicePort {
                port: number,
                protocol,
            });
        }
        let pb_locality = pb.locality.unwrap_or_default();
        for (field, value) in [
            ("locality.node", &pb_locality.node),
            ("locality.zone", &pb_locality.zone),
            ("locality.region", &pb_locality.region),
        ] {
            if value.chars().count() > MAX_LOCALITY_LEN || value.chars().any(char::is_control) {
                return Err(err(
                    field,
                    format!(
                        "expected at most {MAX_LOCALITY_LEN} printable characters, got {}",
                        check::got(value)
                    ),
                ));
            }
        }
        let identity = if pb.identity.is_empty() {
            None
        } else {
            Some(
                pb.identity
                    .parse::<SpiffeId>()
                    .map_err(|e| err("identity", e.to_string()))?,
            )
        };
        Ok(Endpoint {
            namespace: pb.namespace,
            service: pb.service,
            version: pb.version,
            address,
            inbound_port,
            ports,
            locality: Locality {
                node: pb_locality.node,
                zone: pb_locality.zone,
                region: pb_locality.region,
            },
            identity,
            registered_unix_ms: pb.registered_unix_ms,
            ready: pb.ready.unwrap_or(true),
        })
    }
}

fn port(value: u32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p > 0)
}

impl From<&Endpoint> for pb::Endpoint {
    fn from(e: &Endpoint) -> Self {
        pb::Endpoint {
            namespace: e.namespace.clone(),
            service: e.service.clone(),
            version: e.version.clone(),
            address: e.address.to_string(),
            inbound_port: u32::from(e.inbound_port),
            ports: e
                .ports
                .iter()
                .map(|p| pb::Port {
                    port: u32::from(p.port),
                    protocol: p.protocol.as_str().to_owned(),
                })
                .collect(),
            locality: Some(pb::Locality {
                node: e.locality.node.clone(),
                zone: e.locality.zone.clone(),
                region: e.locality.region.clone(),
            }),
            identity: e
                .identity
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            registered_unix_ms: e.registered_unix_ms,
            ready: Some(e.ready),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::Endpoint {
        pb::Endpoint {
            namespace: "shop".into(),
            service: "inventory".into(),
            version: "v2".into(),
            address: "198.18.0.7".into(),
            inbound_port: 4143,
            ports: vec![
                pb::Port {
                    port: 8080,
                    protocol: "http".into(),
                },
                pb::Port {
                    port: 9090,
                    protocol: "grpc".into(),
                },
            ],
            locality: Some(pb::Locality {
                node: "node-a".into(),
                zone: "zone-1".into(),
                region: "region-x".into(),
            }),
            identity: "spiffe://cluster.local/ns/shop/sa/inventory".into(),
            registered_unix_ms: 1_700_000_000_000,
            ready: None,
        }
    }

    fn field_of(pb: pb::Endpoint) -> String {
        Endpoint::try_from(pb)
            .map(|_| "accepted".to_owned())
            .unwrap_or_else(|e| e.field)
    }

    #[test]
    fn round_trips_through_protobuf() {
        let endpoint = Endpoint::try_from(good()).unwrap();
        assert_eq!(endpoint.address, "198.18.0.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            endpoint.port(9090).map(|p| p.protocol),
            Some(Protocol::Grpc)
        );
        assert_eq!(
            endpoint.identity.as_ref().map(SpiffeId::service_account),
            Some("inventory")
        );
        let back = pb::Endpoint::from(&endpoint);
        assert_eq!(back.ready, Some(true));
        assert_eq!(
            back,
            pb::Endpoint {
                ready: Some(true),
                ..good()
            }
        );
    }

    #[test]
    fn readiness_absent_means_ready() {
        // Sidecars that predate the field registered only when ready.
        assert!(Endpoint::try_from(good()).unwrap().ready);
        let unready = pb::Endpoint {
            ready: Some(false),
            ..good()
        };
        let endpoint = Endpoint::try_from(unready.clone()).unwrap();
        assert!(!endpoint.ready);
        assert_eq!(pb::Endpoint::from(&endpoint), unready);
    }

    #[test]
    fn empty_identity_and_locality_are_unknown() {
        let mut pb = good();
        pb.identity.clear();
        pb.locality = None;
        pb.address = "2001:db8::7".into();
        let endpoint = Endpoint::try_from(pb).unwrap();
        assert_eq!(endpoint.identity, None);
        assert_eq!(endpoint.locality, Locality::default());
    }

    #[test]
    fn rejects_bad_names() {
        let mut pb = good();
        pb.namespace = "Shop".into();
        assert_eq!(field_of(pb), "namespace");
        let mut pb = good();
        pb.service = String::new();
        assert_eq!(field_of(pb), "service");
    }

    #[test]
    fn rejects_bad_version() {
        for bad in ["", "v 2", &"v".repeat(65)] {
            let mut pb = good();
            pb.version = bad.into();
            assert_eq!(field_of(pb), "version", "{bad:?}");
        }
    }

    #[test]
    fn rejects_bad_address() {
        for bad in ["", "198.18.0.7:8080", "inventory.shop", "198.18.0.256"] {
            let mut pb = good();
            pb.address = bad.into();
            assert_eq!(field_of(pb), "address", "{bad:?}");
        }
    }

    #[test]
    fn rejects_bad_ports() {
        let mut pb = good();
        pb.inbound_port = 0;
        assert_eq!(field_of(pb), "inbound_port");
        let mut pb = good();
        pb.ports.clear();
        assert_eq!(field_of(pb), "ports");
        let mut pb = good();
        pb.ports[1].port = 70000;
        assert_eq!(field_of(pb), "ports[1].port");
        let mut pb = good();
        pb.ports[1].port = 8080;
        assert_eq!(field_of(pb), "ports[1].port");
        let mut pb = good();
        pb.ports[0].protocol = "udp".into();
        assert_eq!(field_of(pb), "ports[0].protocol");
    }

    #[test]
    fn rejects_bad_locality() {
        let mut pb = good();
        if let Some(l) = pb.locality.as_mut() {
            l.zone = "z".repeat(129);
        }
        assert_eq!(field_of(pb), "locality.zone");
        let mut pb = good();
        if let Some(l) = pb.locality.as_mut() {
            l.node = "node\n".into();
        }
        assert_eq!(field_of(pb), "locality.node");
    }

    #[test]
    fn rejects_bad_identity() {
        let mut pb = good();
        pb.identity = "inventory".into();
        assert_eq!(field_of(pb), "identity");
    }

    #[test]
    fn error_names_the_field() {
        let mut pb = good();
        pb.ports[0].port = 0;
        let e = Endpoint::try_from(pb).unwrap_err();
        assert_eq!(
            e.to_string(),
            "endpoint ports[0].port: expected a port 1-65535, got 0"
        );
    }
}
