//! The `Egress` resource: which destinations outside the mesh a service's
//! captured connections may reach — host names (checked against the TLS
//! SNI or HTTP `Host` and the addresses the sidecar resolves them to) and
//! CIDRs, each on a list of ports. Egress rules only allow; several
//! resources naming the same service add up.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::FieldErrors;
use super::resource::{Kind, Metadata, Resource, Spec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    pub metadata: Metadata,
    pub spec: EgressSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressSpec {
    /// Services (in the resource's namespace) whose outbound traffic this
    /// governs. Never empty.
    pub from: Vec<String>,
    /// Destinations they may reach. Never empty.
    pub to: Vec<EgressRule>,
}

/// One destination and the ports it may be reached on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EgressRule {
    pub destination: Destination,
    /// Never empty.
    pub ports: Vec<u16>,
}

/// Where an egress rule lets traffic go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A DNS name, lower case, without a trailing dot: matched against the
    /// SNI or `Host`, and the connection's address must be one the name
    /// resolves to.
    Host(String),
    /// Any address in this block.
    Cidr(Cidr),
}

impl Egress {
    /// Whether this resource governs `service` (of its own namespace).
    pub fn names(&self, service: &str) -> bool {
        self.spec.from.iter().any(|s| s == service)
    }
}

impl EgressRule {
    pub fn allows_port(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }
}

/// An address block: `198.18.5.0/24`, `fd00:bb::/48`. Host bits are
/// always zero (a block written with host bits set is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// A CIDR that does not parse, or has host bits set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCidr(String);

impl Cidr {
    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the block. An IPv4-mapped IPv6 address counts as
    /// the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), 32, self.prefix) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// The first `prefix` of `bits` bits of `value`.
fn mask(value: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        let keep = u128::MAX << (bits - prefix);
        value & keep & (u128::MAX >> (128 - u32::from(bits)))
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| BadCidr(format!("expected a CIDR such as 198.18.5.0/24, {why}"));
        let Some((addr, prefix)) = s.split_once('/') else {
            let hint = match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => format!("; write {s}/32 for one address"),
                Ok(IpAddr::V6(_)) => format!("; write {s}/128 for one address"),
                Err(_) => String::new(),
            };
            return Err(bad(format!("got {}{hint}", check::got(s))));
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            bad(format!(
                "got {}: {} is not an IP address",
                check::got(s),
                check::got(addr)
            ))
        })?;
        let bits: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= bits && !prefix.starts_with('+'))
            .ok_or_else(|| {
                bad(format!(
                    "got {}: the prefix length must be 0-{bits}",
                    check::got(s)
                ))
            })?;
        let value = match network {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let masked = mask(value, bits, prefix);
        if masked != value {
            let base: IpAddr = match network {
                IpAddr::V4(_) => IpAddr::from(u32::try_from(masked).unwrap_or(0).to_be_bytes()),
                IpAddr::V6(_) => IpAddr::from(masked.to_be_bytes()),
            };
            return Err(bad(format!(
                "got {} with host bits set: did you mean {base}/{prefix}?",
                check::got(s)
            )));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Longest host name (RFC 1035, without the root dot).
const MAX_HOST: usize = 253;

/// A host name for a rule: two or more DNS labels (letters, digits, '-'),
/// lower-cased. No wildcards, no IP addresses, no trailing dot.
fn check_host(host: &str) -> Result<String, String> {
    let expected = "expected a host name such as api.payments.example (2 or more DNS labels of \
                    a-z, 0-9 and '-', at most 253 characters)";
    if host.starts_with("*.") || host.contains('*') {
        return Err(format!(
            "{expected}, got {}: wildcards are not supported, list each host name",
            check::got(host)
        ));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{expected}, got the address {}: use `cidr:` for addresses",
            check::got(host)
        ));
    }
    if host.ends_with('.') {
        return Err(format!(
            "{expected}, got {}: leave out the trailing dot",
            check::got(host)
        ));
    }
    let lower = host.to_ascii_lowercase();
    let labels: Vec<&str> = lower.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let top_ok = labels
        .last()
        .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()));
    if lower.len() > MAX_HOST || labels.len() < 2 || !labels.iter().all(label_ok) || !top_ok {
        return Err(format!("{expected}, got {}", check::got(host)));
    }
    Ok(lower)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEgressSpec {
    from: Vec<String>,
    to: Vec<RawEgressRule>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cidr: Option<String>,
    ports: Vec<i64>,
}

impl Spec for EgressSpec {
    const KIND: Kind = Kind::Egress;
    type Raw = RawEgressSpec;

    fn from_raw(raw: RawEgressSpec, errs: &mut FieldErrors) -> Option<Self> {
        let from = check::required_list(errs, "spec.from", "service", raw.from, check::dns_label);
        let to = check::required_list(errs, "spec.to", "destination", raw.to, rule);
        Some(EgressSpec {
            from: from?,
            to: to?,
        })
    }

    fn to_raw(&self) -> RawEgressSpec {
        RawEgressSpec {
            from: self.from.clone(),
            to: self
                .to
                .iter()
                .map(|r| {
                    let (host, cidr) = match &r.destination {
                        Destination::Host(h) => (Some(h.clone()), None),
                        Destination::Cidr(c) => (None, Some(c.to_string())),
                    };
                    RawEgressRule {
                        host,
                        cidr,
                        ports: r.ports.iter().copied().map(i64::from).collect(),
                    }
                })
                .collect(),
        }
    }

    fn into_resource(metadata: Metadata, spec: Self) -> Resource {
        Resource::Egress(Egress { metadata, spec })
    }
}

fn rule(errs: &mut FieldErrors, path: &str, raw: RawEgressRule) -> Option<EgressRule> {
    let destination = match (raw.host, raw.cidr) {
        (Some(host), None) => match check_host(&host) {
            Ok(host) => Some(Destination::Host(host)),
            Err(message) => {
                errs.push(format!("{path}.host"), message);
                None
            }
        },
        (None, Some(cidr)) => match cidr.parse::<Cidr>() {
            Ok(cidr) => Some(Destination::Cidr(cidr)),
            Err(e) => {
                errs.push(format!("{path}.cidr"), e.to_string());
                None
            }
        },
        (Some(_), Some(_)) => {
            errs.push(
                path,
                "expected either host or cidr, got both: write two entries",
            );
            None
        }
        (None, None) => {
            errs.push(
                path,
                "expected host (a name such as api.payments.example) or cidr (such as 198.18.5.0/24)",
            );
            None
        }
    };
    let ports = check::required_list(
        errs,
        &format!("{path}.ports"),
        "port",
        raw.ports,
        check::port,
    );
    Some(EgressRule {
        destination: destination?,
        ports: ports?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{expect_error, parse_one};

    const ISSUE_EXAMPLE: &str = "apiVersion: bulkhead.dev/v1
kind: Egress
metadata: {name: payments-out, namespace: shop}
spec:
  from: [payments]
  to:
  - {host: api.payments.example, ports: [443]}
  - {cidr: 198.18.5.0/24, ports: [5432]}
";

    fn egress(yaml: &str) -> Egress {
        match parse_one(yaml) {
            Resource::Egress(e) => e,
            other => panic!("not an Egress: {other:?}"),
        }
    }

    fn with_to(to: &str) -> String {
        format!(
            "apiVersion: bulkhead.dev/v1\nkind: Egress\nmetadata: {{name: e, namespace: shop}}\n\
             spec:\n  from: [payments]\n  to:\n  - {to}\n"
        )
    }

    #[test]
    fn the_issue_example_reads_as_written_and_round_trips() {
        let e = egress(ISSUE_EXAMPLE);
        assert_eq!(e.spec.from, ["payments"]);
        assert!(e.names("payments") && !e.names("web"));
        assert_eq!(
            e.spec.to[0],
            EgressRule {
                destination: Destination::Host("api.payments.example".into()),
                ports: vec![443]
            }
        );
        let Destination::Cidr(cidr) = &e.spec.to[1].destination else {
            panic!("not a CIDR")
        };
        assert_eq!(cidr.to_string(), "198.18.5.0/24");
        assert!(e.spec.to[1].allows_port(5432) && !e.spec.to[1].allows_port(443));
        let resource = Resource::Egress(e.clone());
        assert_eq!(Resource::from_json(&resource.to_json()).unwrap(), resource);
        assert_eq!(parse_one(&resource.to_yaml()), resource);
    }

    #[test]
    fn bad_destinations_are_refused_with_what_to_write() {
        let cases = [
            (
                "{cidr: 198.18.5.0/33, ports: [1]}",
                "spec.to[0].cidr",
                "prefix length must be 0-32",
            ),
            (
                "{cidr: 198.18.5.1/24, ports: [1]}",
                "spec.to[0].cidr",
                "did you mean 198.18.5.0/24",
            ),
            (
                "{cidr: 198.18.5.7, ports: [1]}",
                "spec.to[0].cidr",
                "write 198.18.5.7/32",
            ),
            (
                "{cidr: 'fd00::1/64', ports: [1]}",
                "spec.to[0].cidr",
                "did you mean fd00::/64",
            ),
            (
                "{cidr: nowhere/8, ports: [1]}",
                "spec.to[0].cidr",
                "not an IP address",
            ),
            (
                "{host: api.example, ports: []}",
                "spec.to[0].ports",
                "at least one port",
            ),
            (
                "{host: api.example, ports: [0]}",
                "spec.to[0].ports[0]",
                "expected a port 1-65535, got 0",
            ),
            (
                "{host: api.example, ports: [65536]}",
                "spec.to[0].ports[0]",
                "expected a port 1-65535",
            ),
            (
                "{host: api.example, cidr: 10.0.0.0/8, ports: [1]}",
                "spec.to[0]",
                "got both",
            ),
            ("{ports: [1]}", "spec.to[0]", "expected host"),
            (
                "{host: '*.example.com', ports: [1]}",
                "spec.to[0].host",
                "wildcards are not supported",
            ),
            (
                "{host: 198.18.5.7, ports: [1]}",
                "spec.to[0].host",
                "use `cidr:`",
            ),
            (
                "{host: localhost, ports: [1]}",
                "spec.to[0].host",
                "expected a host name",
            ),
            (
                "{host: 'api.example.', ports: [1]}",
                "spec.to[0].host",
                "trailing dot",
            ),
            (
                "{host: 'api_x.example', ports: [1]}",
                "spec.to[0].host",
                "expected a host name",
            ),
            (
                "{host: '-api.example', ports: [1]}",
                "spec.to[0].host",
                "expected a host name",
            ),
            (
                "{host: api.example, ports: [1], path: /x}",
                "spec.to[0].path",
                "unknown field",
            ),
        ];
        for (to, path, message) in cases {
            expect_error(&with_to(to), path, message);
        }
        let long = format!("{}.example", "a".repeat(64));
        expect_error(
            &with_to(&format!("{{host: {long}, ports: [1]}}")),
            "spec.to[0].host",
            "expected a host name",
        );
        let no_from = "apiVersion: bulkhead.dev/v1\nkind: Egress\nmetadata: {name: e}\nspec: {from: [], to: [{cidr: 10.0.0.0/8, ports: [1]}]}\n";
        expect_error(no_from, "spec.from", "at least one service");
        let no_to = "apiVersion: bulkhead.dev/v1\nkind: Egress\nmetadata: {name: e}\nspec: {from: [Pay], to: []}\n";
        expect_error(no_to, "spec.to", "at least one destination");
        expect_error(no_to, "spec.from[0]", "expected a DNS label");
    }

    #[test]
    fn hosts_are_lower_cased() {
        let e = egress(&with_to("{host: API.Payments.Example, ports: [443]}"));
        assert_eq!(
            e.spec.to[0].destination,
            Destination::Host("api.payments.example".into())
        );
    }

    #[test]
    fn cidrs_contain_their_addresses_only() {
        let c: Cidr = "198.18.5.0/24".parse().unwrap();
        for ip in ["198.18.5.0", "198.18.5.255", "::ffff:198.18.5.9"] {
            assert!(c.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["198.18.6.1", "198.18.4.255", "fd00::1"] {
            assert!(!c.contains(ip.parse().unwrap()), "{ip}");
        }
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!(!all.contains("fd00::1".parse().unwrap()));
        let one: Cidr = "198.18.5.7/32".parse().unwrap();
        assert!(one.contains("198.18.5.7".parse().unwrap()));
        assert!(!one.contains("198.18.5.8".parse().unwrap()));
        let v6: Cidr = "fd00:bb::/48".parse().unwrap();
        assert!(v6.contains("fd00:bb:0:5::9".parse().unwrap()));
        assert!(!v6.contains("fd00:bc::1".parse().unwrap()));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains("fd00::1".parse().unwrap()));
    }
}
