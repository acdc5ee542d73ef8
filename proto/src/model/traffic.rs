//! The `TrafficSplit` resource: how a service's requests are shared between
//! its versions, by weight and by request header.

use serde::{Deserialize, Serialize};

use super::check;
use super::error::FieldErrors;
use super::resource::{Kind, Metadata, Resource, Spec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficSplit {
    pub metadata: Metadata,
    pub spec: TrafficSplitSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficSplitSpec {
    /// The service (in the split's namespace) whose traffic this shares.
    pub service: String,
    /// Unique versions; at least one has a weight above zero.
    pub backends: Vec<Backend>,
    /// Header routes, tried in order before the weights; `None` when absent.
    pub matches: Option<Vec<HeaderRoute>>,
    /// How a caller keeps its version from one request to the next.
    pub stickiness: Stickiness,
}

/// Whether the weighted choice is a fresh roll per request or fixed per
/// caller. A sticky caller lands on the version its key hashes to for the
/// weights in force: the same version on every request, while across many
/// callers the shares still converge to the weights. As weights shift
/// toward one version, callers only ever move onto it (a caller's point
/// on the weight line stays put; the boundary moves).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Stickiness {
    /// A random roll per request.
    #[default]
    None,
    /// Keyed by the calling workload's SPIFFE ID.
    Caller,
    /// Keyed by the value of this request header (e.g. a user id); a
    /// request without it rolls at random.
    Header(String),
}

impl Stickiness {
    /// As written in a document: `none`, `caller` or `header:<name>`.
    pub fn to_text(&self) -> String {
        match self {
            Stickiness::None => "none".to_owned(),
            Stickiness::Caller => "caller".to_owned(),
            Stickiness::Header(name) => format!("header:{name}"),
        }
    }

    /// Reads `none`, `caller` or `header:<name>` at `path`.
    pub(crate) fn parse(errs: &mut FieldErrors, path: &str, raw: &str) -> Option<Self> {
        match raw {
            "none" => Some(Stickiness::None),
            "caller" => Some(Stickiness::Caller),
            _ => match raw.strip_prefix("header:") {
                Some(name) => {
                    header_name(errs, path, name.to_ascii_lowercase()).map(Stickiness::Header)
                }
                None => {
                    errs.push(
                        path,
                        format!(
                            "expected none, caller or header:<name> (e.g. header:x-user-id), got {}",
                            check::got(raw)
                        ),
                    );
                    None
                }
            },
        }
    }
}

/// A version and its share: its weight over the sum of all weights.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub version: String,
    pub weight: u32,
}

/// Requests carrying the header go to `version`, whatever the weights.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderRoute {
    pub header: HeaderMatch,
    /// One of the split's backend versions.
    pub version: String,
}

/// A header whose value must equal `value` exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderMatch {
    /// An HTTP field name, compared case-insensitively.
    pub name: String,
    pub value: String,
}

impl TrafficSplitSpec {
    /// Sum of the weights (never zero for a validated split).
    pub fn total_weight(&self) -> u64 {
        self.backends.iter().map(|b| u64::from(b.weight)).sum()
    }
}

impl HeaderMatch {
    pub fn matches(&self, name: &str, value: &str) -> bool {
        self.name.eq_ignore_ascii_case(name) && self.value == value
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrafficSplitSpec {
    service: String,
    backends: Vec<RawBackend>,
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    matches: Option<Vec<RawHeaderRoute>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stickiness: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    version: String,
    weight: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderRoute {
    header: RawHeaderMatch,
    version: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    value: String,
}

/// Longest header value a route may name.
const MAX_HEADER_VALUE: usize = 1024;

impl Spec for TrafficSplitSpec {
    const KIND: Kind = Kind::TrafficSplit;
    type Raw = RawTrafficSplitSpec;

    fn from_raw(raw: RawTrafficSplitSpec, errs: &mut FieldErrors) -> Option<Self> {
        let service = check::dns_label(errs, "spec.service", raw.service);
        let backends =
            check::required_list(errs, "spec.backends", "backend", raw.backends, backend);
        if let Some(backends) = &backends {
            for (i, b) in backends.iter().enumerate() {
                if backends[..i].iter().any(|other| other.version == b.version) {
                    errs.push(
                        format!("spec.backends[{i}].version"),
                        format!(
                            "expected each version once, got {} again",
                            check::got(&b.version)
                        ),
                    );
                }
            }
            if backends.iter().all(|b| b.weight == 0) {
                errs.push(
                    "spec.backends",
                    "expected at least one backend with a weight above 0",
                );
            }
        }
        let matches = check::optional_list(errs, "spec.match", "header route", raw.matches, route);
        if let (Some(backends), Some(Some(routes))) = (&backends, &matches) {
            for (i, r) in routes.iter().enumerate() {
                if !backends.iter().any(|b| b.version == r.version) {
                    let known: Vec<&str> = backends.iter().map(|b| b.version.as_str()).collect();
                    errs.push(
                        format!("spec.match[{i}].version"),
                        format!(
                            "expected one of the backends' versions ({}), got {}; \
                             list it in backends with weight 0 to route only matching requests",
                            known.join(", "),
                            check::got(&r.version)
                        ),
                    );
                }
            }
        }
        let stickiness = match &raw.stickiness {
            None => Some(Stickiness::None),
            Some(text) => Stickiness::parse(errs, "spec.stickiness", text),
        };
        Some(TrafficSplitSpec {
            service: service?,
            backends: backends?,
            matches: matches?,
            stickiness: stickiness?,
        })
    }

    fn to_raw(&self) -> RawTrafficSplitSpec {
        RawTrafficSplitSpec {
            service: self.service.clone(),
            backends: self
                .backends
                .iter()
                .map(|b| RawBackend {
                    version: b.version.clone(),
                    weight: i64::from(b.weight),
                })
                .collect(),
            matches: self.matches.as_ref().map(|routes| {
                routes
                    .iter()
                    .map(|r| RawHeaderRoute {
                        header: RawHeaderMatch {
                            name: r.header.name.clone(),
                            value: r.header.value.clone(),
                        },
                        version: r.version.clone(),
                    })
                    .collect()
            }),
            stickiness: (self.stickiness != Stickiness::None).then(|| self.stickiness.to_text()),
        }
    }

    fn into_resource(metadata: Metadata, spec: Self) -> Resource {
        Resource::TrafficSplit(TrafficSplit { metadata, spec })
    }
}

fn backend(errs: &mut FieldErrors, path: &str, raw: RawBackend) -> Option<Backend> {
    let version = check::version(errs, &format!("{path}.version"), raw.version);
    let weight = match u32::try_from(raw.weight) {
        Ok(weight) => Some(weight),
        Err(_) => {
            errs.push(
                format!("{path}.weight"),
                format!("expected a weight 0-{}, got {}", u32::MAX, raw.weight),
            );
            None
        }
    };
    Some(Backend {
        version: version?,
        weight: weight?,
    })
}

fn route(errs: &mut FieldErrors, path: &str, raw: RawHeaderRoute) -> Option<HeaderRoute> {
    let name = header_name(errs, &format!("{path}.header.name"), raw.header.name);
    let value = header_value(errs, &format!("{path}.header.value"), raw.header.value);
    let version = check::version(errs, &format!("{path}.version"), raw.version);
    Some(HeaderRoute {
        header: HeaderMatch {
            name: name?,
            value: value?,
        },
        version: version?,
    })
}

/// An RFC 9110 field name (a token); pseudo-headers such as `:path` are not.
fn header_name(errs: &mut FieldErrors, path: &str, name: String) -> Option<String> {
    let tchar = super::matching::is_tchar;
    if !name.is_empty() && name.len() <= 256 && name.bytes().all(tchar) {
        Some(name)
    } else {
        errs.push(
            path,
            format!(
                "expected an HTTP header name such as x-canary, got {}",
                check::got(&name)
            ),
        );
        None
    }
}

/// Visible ASCII, spaces and tabs inside; what a header can carry intact.
fn header_value(errs: &mut FieldErrors, path: &str, value: String) -> Option<String> {
    let ok_byte = |b: u8| b.is_ascii_graphic() || b == b' ' || b == b'\t';
    let trimmed = value.trim_matches([' ', '\t']).len() == value.len();
    if value.len() <= MAX_HEADER_VALUE && trimmed && value.bytes().all(ok_byte) {
        Some(value)
    } else {
        errs.push(
            path,
            format!(
                "expected a header value of at most {MAX_HEADER_VALUE} visible ASCII characters \
                 (spaces only inside), got {}",
                check::got(&value)
            ),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{expect_error, parse_one};

    const SPLIT: &str = "apiVersion: bulkhead.dev/v1
kind: TrafficSplit
metadata: {name: inventory, namespace: shop}
spec:
  service: inventory
  backends:
  - {version: v1, weight: 90}
  - {version: v2, weight: 10}
  - {version: v3, weight: 0}
  match:
  - header: {name: X-Canary, value: 'yes'}
    version: v3
";

    fn split(yaml: &str) -> TrafficSplit {
        match parse_one(yaml) {
            Resource::TrafficSplit(t) => t,
            other => panic!("not a TrafficSplit: {other:?}"),
        }
    }

    #[test]
    fn parses_weights_and_routes() {
        let t = split(SPLIT);
        assert_eq!(t.spec.total_weight(), 100);
        let routes = t.spec.matches.as_deref().unwrap_or_default();
        assert_eq!(routes.len(), 1);
        assert!(routes[0].header.matches("x-canary", "yes"));
        assert!(!routes[0].header.matches("x-canary", "YES"));
        assert_eq!(routes[0].version, "v3");
    }

    #[test]
    fn unquoted_numeric_versions_are_strings() {
        let t = split(&SPLIT.replace("version: v1,", "version: 1.0,"));
        assert_eq!(t.spec.backends[0].version, "1.0");
    }

    #[test]
    fn stickiness() {
        assert_eq!(split(SPLIT).spec.stickiness, Stickiness::None);
        let t = split(&format!("{SPLIT}  stickiness: caller\n"));
        assert_eq!(t.spec.stickiness, Stickiness::Caller);
        let t = split(&format!("{SPLIT}  stickiness: header:X-User-Id\n"));
        assert_eq!(t.spec.stickiness, Stickiness::Header("x-user-id".into()));
        expect_error(
            &format!("{SPLIT}  stickiness: user\n"),
            "spec.stickiness",
            "expected none, caller or header:<name>",
        );
        expect_error(
            &format!("{SPLIT}  stickiness: 'header:'\n"),
            "spec.stickiness",
            "expected an HTTP header name",
        );
    }

    #[test]
    fn rejects_negative_weight() {
        expect_error(
            &SPLIT.replace("weight: 10", "weight: -10"),
            "spec.backends[1].weight",
            "expected a weight 0-4294967295, got -10",
        );
    }

    #[test]
    fn rejects_all_zero_weights() {
        expect_error(
            &SPLIT
                .replace("weight: 90", "weight: 0")
                .replace("weight: 10", "weight: 0"),
            "spec.backends",
            "at least one backend with a weight above 0",
        );
    }

    #[test]
    fn rejects_duplicate_version() {
        expect_error(
            &SPLIT.replace("version: v2", "version: v1"),
            "spec.backends[1].version",
            "expected each version once, got \"v1\" again",
        );
    }

    #[test]
    fn rejects_bad_version() {
        expect_error(
            &SPLIT.replace("version: v2", "version: 'v 2'"),
            "spec.backends[1].version",
            "expected a version",
        );
    }

    #[test]
    fn rejects_no_backends() {
        expect_error(
            "apiVersion: bulkhead.dev/v1\nkind: TrafficSplit\nmetadata: {name: a}\nspec: {service: a, backends: []}\n",
            "spec.backends",
            "expected at least one backend",
        );
    }

    #[test]
    fn rejects_bad_service() {
        expect_error(
            &SPLIT.replace("service: inventory", "service: inv.shop"),
            "spec.service",
            "DNS label",
        );
    }

    #[test]
    fn rejects_bad_header_name() {
        expect_error(
            &SPLIT.replace("name: X-Canary", "name: ':path'"),
            "spec.match[0].header.name",
            "expected an HTTP header name",
        );
        expect_error(
            &SPLIT.replace("name: X-Canary", "name: 'x canary'"),
            "spec.match[0].header.name",
            "expected an HTTP header name",
        );
    }

    #[test]
    fn rejects_bad_header_value() {
        expect_error(
            &SPLIT.replace("value: 'yes'", "value: \"a\\nb\""),
            "spec.match[0].header.value",
            "expected a header value",
        );
    }

    #[test]
    fn rejects_route_to_unlisted_version() {
        expect_error(
            &SPLIT.replace("    version: v3", "    version: v4"),
            "spec.match[0].version",
            "expected one of the backends' versions (v1, v2, v3), got \"v4\"",
        );
    }

    #[test]
    fn rejects_empty_match() {
        expect_error(
            &format!(
                "{}  match: []\n",
                SPLIT.split("  match:").next().unwrap_or_default()
            ),
            "spec.match",
            "expected at least one header route",
        );
    }
}
