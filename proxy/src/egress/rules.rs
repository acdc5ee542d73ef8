//! The egress rules in force for this sidecar's service — every `Egress`
//! naming it, added up — and the decision for one destination.
//!
//! The order of the checks is what keeps SNI spoofing out: a CIDR rule is
//! decided on the address alone; a host rule needs the name the client
//! asked for (SNI or `Host`) to be the rule's host *and* the address it
//! dialled to be one the sidecar resolved that host to.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bulkhead_proto::model::{Cidr, Egress, EgressDestination};

use super::resolve::HostAddresses;

/// Every rule of the `Egress` resources naming the service.
pub(crate) struct Rules {
    /// `namespace/name` of each resource, for logs.
    pub(crate) sources: Vec<String>,
    cidrs: Vec<(Cidr, Vec<u16>)>,
    /// By host; ports of every rule naming the host, merged.
    hosts: Vec<HostRule>,
}

pub(crate) struct HostRule {
    pub(crate) ports: Vec<u16>,
    pub(crate) addresses: Arc<HostAddresses>,
}

/// Why a connection was refused: the `reason` label, a fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No config has arrived yet: whether an `Egress` names the service
    /// is not known.
    NoConfig,
    /// No `Egress` names the service and `--egress deny`.
    DefaultDeny,
    /// No rule names the address or, on this port, any host.
    NoRule,
    /// The address is allowed, on other ports only.
    Port,
    /// A host rule has this port, but the client sent no SNI or `Host`.
    NoName,
    /// The client sent too little to tell its name in time.
    PeekTimeout,
    /// The TLS SNI names no host allowed on this port.
    SniMismatch,
    /// The HTTP `Host` names no host allowed on this port.
    HostMismatch,
    /// The name is allowed, but the address is not one it resolves to.
    AddressMismatch,
    /// The name is allowed, but it could not be resolved.
    Unresolved,
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 10] = [
        Refusal::NoConfig,
        Refusal::DefaultDeny,
        Refusal::NoRule,
        Refusal::Port,
        Refusal::NoName,
        Refusal::PeekTimeout,
        Refusal::SniMismatch,
        Refusal::HostMismatch,
        Refusal::AddressMismatch,
        Refusal::Unresolved,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::NoConfig => "no-config",
            Refusal::DefaultDeny => "default-deny",
            Refusal::NoRule => "no-rule",
            Refusal::Port => "port",
            Refusal::NoName => "no-name",
            Refusal::PeekTimeout => "peek-timeout",
            Refusal::SniMismatch => "sni-mismatch",
            Refusal::HostMismatch => "host-mismatch",
            Refusal::AddressMismatch => "address-mismatch",
            Refusal::Unresolved => "unresolved",
        }
    }
}

/// What the address alone decides.
pub(crate) enum ByAddress<'a> {
    /// A CIDR rule allows it.
    Cidr,
    /// Only a host rule can: these hosts are allowed on the port.
    NeedsName(Vec<&'a HostRule>),
    Refused(Refusal),
}

impl Rules {
    /// The rules of `egresses`, reusing the resolved addresses of hosts
    /// `previous` already had.
    pub(crate) fn new(egresses: &[Egress], previous: Option<&Rules>) -> Self {
        let mut cidrs = Vec::new();
        let mut hosts: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for egress in egresses {
            for rule in &egress.spec.to {
                match &rule.destination {
                    EgressDestination::Cidr(c) => cidrs.push((*c, rule.ports.clone())),
                    EgressDestination::Host(h) => {
                        let ports = hosts.entry(h.clone()).or_default();
                        ports.extend(&rule.ports);
                        ports.sort_unstable();
                        ports.dedup();
                    }
                }
            }
        }
        let hosts = hosts
            .into_iter()
            .map(|(host, ports)| {
                let addresses = previous
                    .and_then(|p| p.hosts.iter().find(|r| r.addresses.host == host))
                    .map(|r| Arc::clone(&r.addresses))
                    .unwrap_or_else(|| Arc::new(HostAddresses::new(host)));
                HostRule { ports, addresses }
            })
            .collect();
        Self {
            sources: egresses
                .iter()
                .map(|e| format!("{}/{}", e.metadata.namespace, e.metadata.name))
                .collect(),
            cidrs,
            hosts,
        }
    }

    pub(crate) fn host_addresses(&self) -> Vec<Arc<HostAddresses>> {
        self.hosts
            .iter()
            .map(|r| Arc::clone(&r.addresses))
            .collect()
    }

    /// The first step: CIDR rules, and whether any host rule could apply.
    pub(crate) fn by_address(&self, dst: SocketAddr) -> ByAddress<'_> {
        let (ip, port) = (dst.ip().to_canonical(), dst.port());
        let in_cidr = |c: &Cidr| c.contains(ip);
        if self
            .cidrs
            .iter()
            .any(|(c, ports)| in_cidr(c) && ports.contains(&port))
        {
            return ByAddress::Cidr;
        }
        let on_port: Vec<&HostRule> = self
            .hosts
            .iter()
            .filter(|r| r.ports.contains(&port))
            .collect();
        if !on_port.is_empty() {
            return ByAddress::NeedsName(on_port);
        }
        let known = self.cidrs.iter().any(|(c, _)| in_cidr(c))
            || self.hosts.iter().any(|r| r.addresses.has(ip));
        ByAddress::Refused(if known {
            Refusal::Port
        } else {
            Refusal::NoRule
        })
    }
}

/// The host rule among `candidates` whose host is `name`.
pub(crate) fn rule_for<'a>(candidates: &[&'a HostRule], name: &str) -> Option<&'a HostRule> {
    candidates
        .iter()
        .copied()
        .find(|r| r.addresses.host == name)
}

/// Whether `ip` is an address of `rule`'s host, and if not, why.
pub(crate) fn check_address(rule: &HostRule, ip: IpAddr) -> Result<(), Refusal> {
    let ip = ip.to_canonical();
    if rule.addresses.has(ip) {
        Ok(())
    } else if rule.addresses.is_resolved() {
        Err(Refusal::AddressMismatch)
    } else {
        Err(Refusal::Unresolved)
    }
}

#[cfg(test)]
mod tests {
    use bulkhead_proto::model::Resource;

    use super::*;

    fn egresses(yaml: &str) -> Vec<Egress> {
        bulkhead_proto::model::parse_documents("test.yaml", yaml)
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Resource::Egress(e) => e,
                other => panic!("not an Egress: {other:?}"),
            })
            .collect()
    }

    const TWO: &str = "apiVersion: bulkhead.dev/v1
kind: Egress
metadata: {name: payments-out, namespace: shop}
spec: {from: [payments], to: [{host: api.payments.example, ports: [443]}, {cidr: 198.18.5.0/24, ports: [5432]}]}
---
apiVersion: bulkhead.dev/v1
kind: Egress
metadata: {name: payments-more, namespace: shop}
spec:
  from: [payments, web]
  to:
  - {host: api.payments.example, ports: [8443]}
  - {host: status.example, ports: [443]}
";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn several_egresses_add_up() {
        let rules = Rules::new(&egresses(TWO), None);
        assert_eq!(rules.sources, ["shop/payments-out", "shop/payments-more"]);
        assert!(matches!(
            rules.by_address(addr("198.18.5.9:5432")),
            ByAddress::Cidr
        ));
        assert!(matches!(
            rules.by_address(addr("[::ffff:198.18.5.9]:5432")),
            ByAddress::Cidr
        ));
        let ByAddress::NeedsName(on_443) = rules.by_address(addr("203.0.113.1:443")) else {
            panic!("443 has host rules")
        };
        let hosts: Vec<&str> = on_443.iter().map(|r| r.addresses.host.as_str()).collect();
        assert_eq!(hosts, ["api.payments.example", "status.example"]);
        let ByAddress::NeedsName(on_8443) = rules.by_address(addr("203.0.113.1:8443")) else {
            panic!("8443 has a host rule")
        };
        assert!(rule_for(&on_8443, "api.payments.example").is_some());
        assert!(rule_for(&on_8443, "status.example").is_none());
    }

    #[test]
    fn refusals_say_whether_the_address_or_the_port_was_wrong() {
        let rules = Rules::new(&egresses(TWO), None);
        assert!(matches!(
            rules.by_address(addr("198.18.5.9:22")),
            ByAddress::Refused(Refusal::Port)
        ));
        assert!(matches!(
            rules.by_address(addr("198.18.6.9:5432")),
            ByAddress::Refused(Refusal::NoRule)
        ));
    }

    #[test]
    fn an_unresolved_host_refuses_every_address() {
        let rules = Rules::new(&egresses(TWO), None);
        let ByAddress::NeedsName(on_443) = rules.by_address(addr("198.18.5.9:443")) else {
            panic!("443 has host rules")
        };
        let rule = rule_for(&on_443, "api.payments.example").unwrap();
        assert_eq!(
            check_address(rule, "198.18.5.9".parse().unwrap()),
            Err(Refusal::Unresolved)
        );
    }

    #[test]
    fn resolved_addresses_survive_a_rule_change() {
        let first = Rules::new(&egresses(TWO), None);
        let second = Rules::new(&egresses(TWO), Some(&first));
        for (a, b) in first.hosts.iter().zip(&second.hosts) {
            assert!(Arc::ptr_eq(&a.addresses, &b.addresses));
        }
    }
}
