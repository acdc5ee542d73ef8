//! The `Gateway` resource: what the mesh exposes to the outside world, and
//! how end users prove who they are. Everything reachable through a gateway
//! is named by one of its routes; a request no route matches is a 404.
//!
//! - `jwt`: end-user token providers (issuer, audiences, keys inline or from
//!   a JWKS URL, claims forwarded as headers).
//! - `routes`: a path prefix (whole segments) and optional host, sent either
//!   to one mesh service or fanned out to several (`aggregate`), each route
//!   with its own `auth` requirement.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::FieldErrors;
use super::resource::{Kind, Metadata, Resource, Spec};
use super::rollout::Interval;

mod provider;

use provider::{RawJwtProvider, provider, provider_to_raw};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub metadata: Metadata,
    pub spec: GatewaySpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySpec {
    /// Token providers routes may name; `None` when absent.
    pub jwt: Option<Vec<JwtProvider>>,
    /// Never empty; no two share a host and path prefix.
    pub routes: Vec<GatewayRoute>,
}

/// Who issues end-user tokens, and how to check them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtProvider {
    /// What routes name in `auth.jwt`; unique in the gateway.
    pub name: String,
    /// The `iss` a token must carry, exactly.
    pub issuer: String,
    /// A token's `aud` must name at least one of these.
    pub audiences: Vec<String>,
    pub keys: JwksSource,
    /// PEM roots that verify an `https://` JWKS URL instead of the system's.
    pub jwks_ca: Option<String>,
    /// Claims copied into request headers (client copies removed first).
    pub claim_to_headers: Option<Vec<ClaimToHeader>>,
    /// Whether the `Authorization` header reaches the service.
    pub forward_token: bool,
}

/// Where a provider's keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// `http://` or `https://`, fetched and refreshed by the gateway.
    Uri(String),
    /// A JWKS document (`{"keys": [...]}`), as given.
    Inline(serde_json::Value),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub claim: String,
    /// A lower-case HTTP field name.
    pub header: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRoute {
    /// Matched against the request's host (port removed), case-insensitively;
    /// `None` matches any host.
    pub host: Option<String>,
    /// As written: starts with `/`; matches whole segments.
    pub path_prefix: String,
    pub target: RouteTarget,
    /// `None`: no token needed (`require: never`).
    pub auth: Option<RouteAuth>,
}

impl GatewayRoute {
    /// The prefix without a trailing `/` (empty for `/`): what a path must
    /// equal, or continue with `/` after.
    pub fn prefix(&self) -> &str {
        self.path_prefix.trim_end_matches('/')
    }

    /// Whether the route takes `path`: whole segments, so `/api/cart`
    /// matches `/api/cart` and `/api/cart/x` but not `/api/cartX`.
    pub fn matches_path(&self, path: &str) -> bool {
        let prefix = self.prefix();
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The path after the prefix, without its leading `/`: what `{rest}`
    /// stands for.
    pub fn rest<'a>(&self, path: &'a str) -> &'a str {
        let rest = path.strip_prefix(self.prefix()).unwrap_or("");
        rest.strip_prefix('/').unwrap_or(rest)
    }
}

/// A mesh service, by name in the gateway's namespace or `ns/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl ServiceRef {
    /// `(namespace, name)`, the gateway's namespace when none was written.
    pub fn key(&self, own_namespace: &str) -> (String, String) {
        (
            self.namespace
                .clone()
                .unwrap_or_else(|| own_namespace.to_owned()),
            self.name.clone(),
        )
    }

    fn parse(errs: &mut FieldErrors, path: &str, raw: String) -> Option<Self> {
        match raw.split_once('/') {
            Some((ns, name)) => {
                let ns = check::dns_label(errs, path, ns.to_owned());
                let name = check::dns_label(errs, path, name.to_owned());
                Some(ServiceRef {
                    namespace: Some(ns?),
                    name: name?,
                })
            }
            None => check::dns_label(errs, path, raw).map(|name| ServiceRef {
                namespace: None,
                name,
            }),
        }
    }

    fn to_text(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Where a route's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// One service; `port` may be left out for a single-port Service.
    Service {
        service: ServiceRef,
        port: Option<u16>,
    },
    /// Several services at once, their JSON merged under keys.
    Aggregate(Aggregate),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    /// The whole fan-out's deadline; `None`: [`DEFAULT_AGGREGATE_TIMEOUT`].
    pub timeout: Option<Interval>,
    /// Never empty; keys unique.
    pub backends: Vec<AggregateBackend>,
}

/// How long an aggregate waits for its parts when its route names no timeout.
pub const DEFAULT_AGGREGATE_TIMEOUT: Duration = Duration::from_secs(5);

impl Aggregate {
    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_ref()
            .map_or(DEFAULT_AGGREGATE_TIMEOUT, Interval::duration)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateBackend {
    /// The member of the merged object this part's JSON goes under.
    pub key: String,
    pub service: ServiceRef,
    pub port: Option<u16>,
    /// Starts with `/`; `{rest}` stands for the request path after the prefix.
    pub path: String,
    /// A failed required part fails the request (502, or 504 if it timed
    /// out); a failed optional one is `null`. `None` means required.
    pub required: Option<bool>,
    /// This part's own deadline, at most the aggregate's.
    pub timeout: Option<Interval>,
}

impl AggregateBackend {
    pub fn is_required(&self) -> bool {
        self.required.unwrap_or(true)
    }
}

/// Who must show a token on a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAuth {
    /// A provider of the gateway's `jwt`; `None` only with `require: never`.
    pub jwt: Option<String>,
    pub require: Require,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Require {
    /// A valid token or a 401.
    #[default]
    Always,
    /// No token is fine; a bad one is still a 401.
    IfPresent,
    /// Tokens are neither asked for nor checked.
    Never,
}

impl Require {
    const CHOICES: [(&'static str, Require); 3] = [
        ("always", Require::Always),
        ("if-present", Require::IfPresent),
        ("never", Require::Never),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Require::Always => "always",
            Require::IfPresent => "if-present",
            Require::Never => "never",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGatewaySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwt: Option<Vec<RawJwtProvider>>,
    routes: Vec<RawRoute>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    path_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<RawAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aggregate: Option<RawAggregate>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    require: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAggregate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    backends: Vec<RawAggregateBackend>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAggregateBackend {
    key: String,
    service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<i64>,
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
}

/// Longest issuer, audience, URL or path accepted.
pub(super) const MAX_TEXT: usize = 2048;

impl Spec for GatewaySpec {
    const KIND: Kind = Kind::Gateway;
    type Raw = RawGatewaySpec;

    fn from_raw(raw: RawGatewaySpec, errs: &mut FieldErrors) -> Option<Self> {
        let jwt = check::optional_list(errs, "spec.jwt", "provider", raw.jwt, provider);
        if let Some(Some(providers)) = &jwt {
            for (i, p) in providers.iter().enumerate() {
                if providers[..i].iter().any(|other| other.name == p.name) {
                    errs.push(
                        format!("spec.jwt[{i}].name"),
                        format!(
                            "expected each provider name once, got {} again",
                            check::got(&p.name)
                        ),
                    );
                }
            }
        }
        let names: Vec<String> = match &jwt {
            Some(Some(providers)) => providers.iter().map(|p| p.name.clone()).collect(),
            _ => Vec::new(),
        };
        let routes =
            check::required_list(errs, "spec.routes", "route", raw.routes, |errs, path, r| {
                route(errs, path, r, &names)
            });
        if let Some(routes) = &routes {
            for (i, r) in routes.iter().enumerate() {
                if routes[..i]
                    .iter()
                    .any(|o| o.prefix() == r.prefix() && o.host == r.host)
                {
                    errs.push(
                        format!("spec.routes[{i}].pathPrefix"),
                        format!(
                            "another route already takes {} for this host: each host and prefix once",
                            check::got(&r.path_prefix)
                        ),
                    );
                }
            }
        }
        Some(GatewaySpec {
            jwt: jwt?,
            routes: routes?,
        })
    }

    fn to_raw(&self) -> RawGatewaySpec {
        RawGatewaySpec {
            jwt: self
                .jwt
                .as_ref()
                .map(|providers| providers.iter().map(provider_to_raw).collect()),
            routes: self.routes.iter().map(route_to_raw).collect(),
        }
    }

    fn into_resource(metadata: Metadata, spec: Self) -> Resource {
        Resource::Gateway(Gateway { metadata, spec })
    }
}

fn route(
    errs: &mut FieldErrors,
    path: &str,
    raw: RawRoute,
    providers: &[String],
) -> Option<GatewayRoute> {
    let host = match raw.host {
        None => Some(None),
        Some(h) => hostname(errs, &format!("{path}.host"), h).map(Some),
    };
    let path_prefix = url_path(errs, &format!("{path}.pathPrefix"), raw.path_prefix, false);
    let target = match (raw.service, raw.aggregate) {
        (Some(service), None) => {
            let service = ServiceRef::parse(errs, &format!("{path}.service"), service);
            let port = optional_port(errs, &format!("{path}.port"), raw.port);
            Some(RouteTarget::Service {
                service: service?,
                port: port?,
            })
        }
        (None, Some(aggregate)) => {
            if raw.port.is_some() {
                errs.push(
                    format!("{path}.port"),
                    "an aggregate route names ports on its backends",
                );
            }
            self::aggregate(errs, &format!("{path}.aggregate"), aggregate)
                .map(RouteTarget::Aggregate)
        }
        (Some(_), Some(_)) => {
            errs.push(path, "expected service or aggregate, not both");
            None
        }
        (None, None) => {
            errs.push(
                path,
                "expected service (one mesh service) or aggregate (several, merged)",
            );
            None
        }
    };
    let auth = match raw.auth {
        None => Some(None),
        Some(a) => auth(errs, &format!("{path}.auth"), a, providers).map(Some),
    };
    Some(GatewayRoute {
        host: host?,
        path_prefix: path_prefix?,
        target: target?,
        auth: auth?,
    })
}

fn optional_port(errs: &mut FieldErrors, path: &str, raw: Option<i64>) -> Option<Option<u16>> {
    match raw {
        None => Some(None),
        Some(p) => check::port(errs, path, p).map(Some),
    }
}

fn hostname(errs: &mut FieldErrors, path: &str, raw: String) -> Option<String> {
    let lower = raw.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= 253
        && lower.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Some(lower)
    } else {
        errs.push(
            path,
            format!(
                "expected a host name such as shop.example.com, got {}",
                check::got(&raw)
            ),
        );
        None
    }
}

/// An absolute path in the one form the gateway matches: `/`-separated
/// segments of unreserved and sub-delim characters, no `.` or `..`
/// segments, no empty ones (but a trailing `/`), no query. With
/// `template`, `{rest}` may appear as a whole.
fn url_path(errs: &mut FieldErrors, path: &str, raw: String, template: bool) -> Option<String> {
    let body = if template {
        raw.replace("{rest}", "x")
    } else {
        raw.clone()
    };
    let segments_ok = body.strip_prefix('/').is_some_and(|rest| {
        let segments: Vec<&str> = rest.split('/').collect();
        let last = segments.len() - 1;
        segments.iter().enumerate().all(|(i, s)| {
            (!s.is_empty() || i == last)
                && *s != "."
                && *s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b))
        })
    });
    if raw.len() <= MAX_TEXT && segments_ok {
        Some(raw)
    } else {
        let what = if template {
            "a path such as /v1/products/{rest} ({rest}: the request path after the prefix)"
        } else {
            "a path prefix such as /api/cart (segments of letters, digits and -._~; no query)"
        };
        errs.push(path, format!("expected {what}, got {}", check::got(&raw)));
        None
    }
}

fn interval(errs: &mut FieldErrors, path: &str, raw: Option<String>) -> Option<Option<Interval>> {
    match raw {
        None => Some(None),
        Some(text) => text
            .parse::<Interval>()
            .map_err(|e| errs.push(path, e.to_string()))
            .ok()
            .map(Some),
    }
}

fn aggregate(errs: &mut FieldErrors, path: &str, raw: RawAggregate) -> Option<Aggregate> {
    let timeout = interval(errs, &format!("{path}.timeout"), raw.timeout);
    let backends = check::required_list(
        errs,
        &format!("{path}.backends"),
        "backend",
        raw.backends,
        aggregate_backend,
    );
    let limit = timeout.as_ref().map(|t| {
        t.as_ref()
            .map_or(DEFAULT_AGGREGATE_TIMEOUT, Interval::duration)
    });
    if let (Some(backends), Some(limit)) = (&backends, limit) {
        for (i, b) in backends.iter().enumerate() {
            if backends[..i].iter().any(|o| o.key == b.key) {
                errs.push(
                    format!("{path}.backends[{i}].key"),
                    format!("two backends map to {}: each key once", check::got(&b.key)),
                );
            }
            if let Some(t) = &b.timeout
                && t.duration() > limit
            {
                errs.push(
                    format!("{path}.backends[{i}].timeout"),
                    format!(
                        "{} is longer than the aggregate's timeout ({limit:?}): a part cannot outlast the whole",
                        t.as_str()
                    ),
                );
            }
        }
    }
    Some(Aggregate {
        timeout: timeout?,
        backends: backends?,
    })
}

fn aggregate_backend(
    errs: &mut FieldErrors,
    path: &str,
    raw: RawAggregateBackend,
) -> Option<AggregateBackend> {
    let key_ok = !raw.key.is_empty()
        && raw.key.len() <= 64
        && !raw.key.starts_with('_')
        && raw
            .key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if key_ok {
        Some(raw.key)
    } else {
        errs.push(
            format!("{path}.key"),
            format!(
                "expected a key of 1-64 letters, digits, '_' and '-', not starting with '_' (`_status` is the gateway's), got {}",
                check::got(&raw.key)
            ),
        );
        None
    };
    let service = ServiceRef::parse(errs, &format!("{path}.service"), raw.service);
    let port = optional_port(errs, &format!("{path}.port"), raw.port);
    let url = url_path(errs, &format!("{path}.path"), raw.path, true);
    let timeout = interval(errs, &format!("{path}.timeout"), raw.timeout);
    Some(AggregateBackend {
        key: key?,
        service: service?,
        port: port?,
        path: url?,
        required: raw.required,
        timeout: timeout?,
    })
}

fn auth(
    errs: &mut FieldErrors,
    path: &str,
    raw: RawAuth,
    providers: &[String],
) -> Option<RouteAuth> {
    let require = match &raw.require {
        None => Some(Require::default()),
        Some(r) => check::one_of(errs, &format!("{path}.require"), r, &Require::CHOICES),
    };
    let jwt = match (raw.jwt, require) {
        (Some(name), _) if providers.contains(&name) => Some(Some(name)),
        (Some(name), _) => {
            let known = if providers.is_empty() {
                "the gateway has no spec.jwt providers".to_owned()
            } else {
                format!(
                    "expected one of spec.jwt's providers ({})",
                    providers.join(", ")
                )
            };
            errs.push(
                format!("{path}.jwt"),
                format!("unknown provider {}: {known}", check::got(&name)),
            );
            None
        }
        (None, Some(Require::Never)) => Some(None),
        (None, Some(r)) => {
            errs.push(
                format!("{path}.jwt"),
                format!(
                    "require: {} needs a provider: name one of spec.jwt",
                    r.as_str()
                ),
            );
            None
        }
        (None, None) => None,
    };
    Some(RouteAuth {
        jwt: jwt?,
        require: require?,
    })
}

fn route_to_raw(r: &GatewayRoute) -> RawRoute {
    let (service, port, aggregate) = match &r.target {
        RouteTarget::Service { service, port } => {
            (Some(service.to_text()), port.map(i64::from), None)
        }
        RouteTarget::Aggregate(a) => (
            None,
            None,
            Some(RawAggregate {
                timeout: a.timeout.as_ref().map(Interval::to_string),
                backends: a
                    .backends
                    .iter()
                    .map(|b| RawAggregateBackend {
                        key: b.key.clone(),
                        service: b.service.to_text(),
                        port: b.port.map(i64::from),
                        path: b.path.clone(),
                        required: b.required,
                        timeout: b.timeout.as_ref().map(Interval::to_string),
                    })
                    .collect(),
            }),
        ),
    };
    RawRoute {
        host: r.host.clone(),
        path_prefix: r.path_prefix.clone(),
        service,
        port,
        auth: r.auth.as_ref().map(|a| RawAuth {
            jwt: a.jwt.clone(),
            require: Some(a.require.as_str().to_owned()),
        }),
        aggregate,
    }
}

#[cfg(test)]
#[path = "gateway_tests.rs"]
mod tests;
