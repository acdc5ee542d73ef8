//! The shared model: the resources operators apply (`Service`, `AllowList`,
//! `TrafficSplit`, `Rollout`, `Gateway`, `Egress`), parsing and validating them, matching requests
//! against allow-lists, registry endpoints, and the trust sidecars are pushed.
//!
//! Everything here checks what it reads: a `Resource` or `Endpoint` value is
//! always valid, and bad input is reported with its file, document, field
//! path and what was expected.

mod allowlist;
mod check;
mod egress;
mod endpoint;
mod error;
mod gateway;
mod matching;
mod parse;
mod resource;
mod rollout;
mod service;
mod traffic;
mod trust;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use allowlist::{AllowList, AllowListSpec, AllowRule, ClaimMatch, Claims, HttpMatch, Mode};
pub use egress::{BadCidr, Cidr, Destination as EgressDestination, Egress, EgressRule, EgressSpec};
pub use endpoint::{Endpoint, EndpointError, Locality};
pub use error::{ValidationError, ValidationErrors};
pub use gateway::{
    Aggregate, AggregateBackend, ClaimToHeader, DEFAULT_AGGREGATE_TIMEOUT, Gateway, GatewayRoute,
    GatewaySpec, JwksSource, JwtProvider, Require, RouteAuth, RouteTarget, ServiceRef,
};
pub use matching::{BadPathPattern, BadPrincipal, PathPattern, Principal};
pub use parse::{MAX_DOCUMENTS, MAX_FILE_BYTES, parse_documents};
pub use resource::{API_VERSION, DEFAULT_NAMESPACE, Kind, Metadata, Resource, UnknownKind};
pub use rollout::{
    Analysis, BadInterval, CompareToStable, DEFAULT_THRESHOLD, Interval, Rollout, RolloutSpec,
    Step, Strategy,
};
pub use service::{Protocol, Service, ServicePort, ServiceSpec, UnknownProtocol};
pub use traffic::{Backend, HeaderMatch, HeaderRoute, Stickiness, TrafficSplit, TrafficSplitSpec};
pub use trust::{MAX_ROOT_BYTES, MAX_TRUST_ROOTS, Trust, TrustError};
