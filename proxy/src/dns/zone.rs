//! The mesh zones: which query names the sidecar answers itself, and which
//! service a name means. Names outside these zones are forwarded.
//!
//! Zones and the names they hold (case-insensitive):
//!
//! | zone                     | service names                     |
//! |--------------------------|-----------------------------------|
//! | `svc.<cluster-domain>.`  | `<svc>.<ns>.svc.<cluster-domain>.` |
//! | `svc.`                   | `<svc>.<ns>.svc.`                 |
//! | `mesh.`                  | `<svc>.mesh.` (own namespace), `<svc>.<ns>.mesh.` |
//!
//! Every other name inside a zone (a search-list expansion such as
//! `example.com.shop.svc.cluster.local.`, an SRV-style `_grpc._tcp...`, a
//! label that is not a DNS label) does not exist: the sidecar answers for the
//! whole zone so that no mesh name leaks to upstream resolvers.

use std::mem;

use bulkhead_proto::identity::validate_name;
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record};

use super::{DnsError, NEGATIVE_TTL};

/// The zones of one sidecar, built once from its config.
#[derive(Debug)]
pub(crate) struct MeshZones {
    own_namespace: String,
    /// Longest first, so `svc.cluster.local.` wins over a shorter zone.
    zones: Vec<Zone>,
}

/// One zone the sidecar is authoritative for.
#[derive(Debug)]
pub(super) struct Zone {
    /// Lower-case labels of the apex, left to right.
    labels: Vec<String>,
    form: Form,
    /// Sent in the authority section of negative answers, so caching
    /// resolvers keep a "no" only as long as a "yes" (RFC 2308).
    soa: Record,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `<svc>.<ns>.<zone>`; `<ns>.<zone>` exists but holds no records.
    Kubernetes,
    /// `<svc>.<zone>` (own namespace) or `<svc>.<ns>.<zone>`.
    Mesh,
}

/// Where a query name falls.
#[derive(Debug)]
pub(super) enum Place<'z> {
    /// A service name; `lookup` decides whether the service exists.
    Service {
        service: String,
        namespace: String,
        zone: &'z Zone,
    },
    /// A name that exists in a zone but holds no records (the apex, a
    /// namespace node): NODATA.
    Empty { zone: &'z Zone },
    /// Inside a zone and no such name: NXDOMAIN.
    Missing { zone: &'z Zone },
    /// Not ours.
    Outside,
}

impl Zone {
    /// Whether this sidecar alone answers for the zone. `.mesh` is ours; the
    /// cluster's `svc.<domain>` zone is shared with the cluster's own DNS, so
    /// names there that are not mesh services are forwarded (a pod must
    /// still resolve `kubernetes.default.svc.cluster.local`).
    pub(super) fn authoritative(&self) -> bool {
        self.form == Form::Mesh
    }
}

impl MeshZones {
    pub(crate) fn new(own_namespace: &str, cluster_domain: &str) -> Result<Self, DnsError> {
        validate_name("namespace", own_namespace).map_err(|_| DnsError::Config {
            field: "own_namespace",
            value: own_namespace.to_owned(),
            expected: "a DNS label (lower-case letters, digits, '-')",
        })?;
        let domain = cluster_domain.trim_end_matches('.').to_ascii_lowercase();
        let domain_labels: Vec<&str> = domain.split('.').collect();
        if domain_labels
            .iter()
            .any(|label| validate_name("cluster domain label", label).is_err())
        {
            return Err(DnsError::Config {
                field: "cluster_domain",
                value: cluster_domain.to_owned(),
                expected: "dot-separated DNS labels, e.g. cluster.local",
            });
        }
        let mut cluster = vec!["svc"];
        cluster.extend(domain_labels);
        let zones = vec![
            Zone::new(&cluster, Form::Kubernetes)?,
            Zone::new(&["svc"], Form::Kubernetes)?,
            Zone::new(&["mesh"], Form::Mesh)?,
        ];
        Ok(Self {
            own_namespace: own_namespace.to_owned(),
            zones,
        })
    }

    pub(super) fn place(&self, name: &Name) -> Place<'_> {
        let labels: Vec<&[u8]> = name.iter().collect();
        for zone in &self.zones {
            let Some(split) = labels.len().checked_sub(zone.labels.len()) else {
                continue;
            };
            let (rest, tail) = labels.split_at(split);
            let in_zone = tail
                .iter()
                .zip(&zone.labels)
                .all(|(label, apex)| label.eq_ignore_ascii_case(apex.as_bytes()));
            if !in_zone {
                continue;
            }
            let Some(mut rest) = rest
                .iter()
                .map(|label| dns_label(label))
                .collect::<Option<Vec<String>>>()
            else {
                return Place::Missing { zone };
            };
            return match (zone.form, rest.as_mut_slice()) {
                (_, []) | (Form::Kubernetes, [_]) => Place::Empty { zone },
                (Form::Mesh, [service]) => Place::Service {
                    service: mem::take(service),
                    namespace: self.own_namespace.clone(),
                    zone,
                },
                (_, [service, namespace]) => Place::Service {
                    service: mem::take(service),
                    namespace: mem::take(namespace),
                    zone,
                },
                _ => Place::Missing { zone },
            };
        }
        Place::Outside
    }
}

impl Zone {
    fn new(labels: &[&str], form: Form) -> Result<Self, DnsError> {
        let apex = labels.join(".");
        let name = |text: &str| {
            Name::from_ascii(text).map_err(|_| DnsError::Config {
                field: "cluster_domain",
                value: apex.clone(),
                expected: "a domain name of at most 253 characters",
            })
        };
        let apex_name = name(&format!("{apex}."))?;
        let soa = SOA::new(
            apex_name.clone(),
            name(&format!("hostmaster.{apex}."))?,
            1,
            3600,
            600,
            86400,
            NEGATIVE_TTL,
        );
        Ok(Self {
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            form,
            soa: Record::from_rdata(apex_name, NEGATIVE_TTL, RData::SOA(soa)),
        })
    }

    pub(super) fn soa(&self) -> &Record {
        &self.soa
    }
}

/// A label as the mesh names things (lower-cased), or `None` if it is not a
/// valid DNS label.
fn dns_label(raw: &[u8]) -> Option<String> {
    let label = std::str::from_utf8(raw).ok()?.to_ascii_lowercase();
    validate_name("DNS label", &label).ok()?;
    Some(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(name: &str) -> String {
        let zones = MeshZones::new("shop", "cluster.local").unwrap();
        // Raw labels: the wire allows any bytes, not only what parses as text.
        let labels = name.split('.').filter(|l| !l.is_empty()).map(str::as_bytes);
        match zones.place(&Name::from_labels(labels).unwrap()) {
            Place::Service {
                service,
                namespace,
                zone,
            } => format!("service {service}/{namespace} in {}", zone.soa().name),
            Place::Empty { zone } => format!("empty in {}", zone.soa().name),
            Place::Missing { zone } => format!("missing in {}", zone.soa().name),
            Place::Outside => "outside".to_owned(),
        }
    }

    #[test]
    fn names_map_to_places() {
        let table = [
            (
                "inventory.shop.svc.cluster.local.",
                "service inventory/shop in svc.cluster.local.",
            ),
            (
                "inventory.shop.svc.cluster.local",
                "service inventory/shop in svc.cluster.local.",
            ),
            (
                "Inventory.SHOP.Svc.Cluster.LOCAL.",
                "service inventory/shop in svc.cluster.local.",
            ),
            ("inventory.shop.svc.", "service inventory/shop in svc."),
            ("inventory.shop.svc", "service inventory/shop in svc."),
            ("cart.mesh.", "service cart/shop in mesh."),
            ("CART.Mesh", "service cart/shop in mesh."),
            ("cart.other.mesh.", "service cart/other in mesh."),
            ("mesh.", "empty in mesh."),
            ("svc.cluster.local.", "empty in svc.cluster.local."),
            ("shop.svc.cluster.local.", "empty in svc.cluster.local."),
            ("shop.svc.", "empty in svc."),
            // Search-list expansions and deeper names stay inside the zone.
            (
                "example.com.shop.svc.cluster.local.",
                "missing in svc.cluster.local.",
            ),
            ("a.b.c.mesh.", "missing in mesh."),
            (
                "_grpc._tcp.cart.shop.svc.cluster.local.",
                "missing in svc.cluster.local.",
            ),
            ("in_valid.shop.svc.", "missing in svc."),
            ("-cart.mesh.", "missing in mesh."),
            ("caf\u{e9}.mesh.", "missing in mesh."),
            ("a b.mesh.", "missing in mesh."),
            ("example.com.", "outside"),
            ("cluster.local.", "outside"),
            ("shop.svc.other.local.", "outside"),
            ("meshy.", "outside"),
            (".", "outside"),
        ];
        for (name, want) in table {
            assert_eq!(place(name), want, "{name}");
        }
    }

    #[test]
    fn custom_cluster_domain() {
        let zones = MeshZones::new("shop", "Corp.Example.").unwrap();
        let name = Name::from_ascii("cart.shop.svc.corp.example.").unwrap();
        assert!(matches!(zones.place(&name), Place::Service { .. }));
        let name = Name::from_ascii("cart.shop.svc.cluster.local.").unwrap();
        assert!(matches!(zones.place(&name), Place::Outside));
    }

    #[test]
    fn bad_config_is_named() {
        let err = MeshZones::new("Shop", "cluster.local").unwrap_err();
        assert!(err.to_string().contains("own_namespace"), "{err}");
        let err = MeshZones::new("shop", "cluster..local").unwrap_err();
        assert!(err.to_string().contains("cluster_domain"), "{err}");
        let err = MeshZones::new("shop", "").unwrap_err();
        assert!(err.to_string().contains("cluster_domain"), "{err}");
    }
}
