//! Version choice for one request: an `x-bulkhead-version` pin, else the
//! service's `TrafficSplit` header routes, else its weights.
//!
//! Precedence, first that applies:
//!
//! 1. `x-bulkhead-version` pin: a version (`3.1.0`, `3.1`, `v2`) or a semver
//!    requirement (`^3`, `~3.1`, `>=3.1, <4`). An invalid pin is
//!    [`RouteError::BadVersionPin`]: answer 400, never guess.
//! 2. The first of the split's `match` routes whose header the request
//!    carries.
//! 3. The split's weights: backends with weight above 0, chosen by a roll
//!    — random, or fixed by the split's `stickiness` ([`sticky`]): `caller`
//!    keys it by the calling workload's SPIFFE ID (this sidecar's own,
//!    [`StickyKey`]), `header:<name>` by that header's value (a request
//!    without it rolls at random).
//! 4. No split: [`VersionChoice::Any`].
//!
//! Nothing here keeps state: every request reads the split it is given, so a
//! new split (new weights) applies from the next request on.
//!
//! **Fallback.** A weighted choice is a share of traffic, not a promise: when
//! the rolled version has no healthy endpoint, its share goes to the split's
//! other weighted backends in proportion to their weights — never to versions
//! outside the split. [`choose_with_fallback`] does this given a probe of the
//! balancer. Pins and header routes are explicit requests for a version and
//! never fall back: with no endpoint for them the caller answers 503.
//!
//! **Weights as a line.** A roll is a point on `0..total` (the sum of the
//! weights): `⌊roll × total / 2⁶⁴⌋`. The backends are walked in the split's
//! order, each taking the next `weight` of the line. A sticky key's point
//! stays put while the weights change (as long as their sum does), and
//! only the boundaries move. With two weighted backends — a rollout's
//! stable and canary — that makes movement one-way whatever their order:
//! as the canary's weight grows its part of the line grows and the
//! stable's shrinks, so a caller only ever moves onto the canary, never
//! off it (and back only when the weight goes back). With three or more,
//! a point between two shrinking backends may move from one to the other.
//! The order must stay the same from one split to the next: a writer that
//! reorders the backends (sorting by weight, say, which flips at 50/50)
//! reshuffles every sticky caller. A rollout's split lists the stable
//! version first.
//!
//! ```ignore
//! let choice = route::choose_with_fallback(split, req.headers(), rand::random(), |c| {
//!     balancer.has_healthy(|e| c.accepts(&e.version))
//! })?;
//! let pick = balancer.pick(&local, |e| choice.accepts(&e.version));
//! ```

mod sticky;
mod version;

#[cfg(test)]
mod tests;

use std::fmt;

use bulkhead_proto::model::{Backend, HeaderMatch, Stickiness, TrafficSplit};
use http::{HeaderMap, HeaderName};
use semver::VersionReq;

pub(crate) use self::sticky::StickyKey;

/// The request header that pins a version.
pub(crate) const VERSION_HEADER: HeaderName = HeaderName::from_static("x-bulkhead-version");

/// Longest `x-bulkhead-version` value accepted; a version label is at most
/// 64 characters, and a requirement naming a range of them fits.
pub(crate) const MAX_PIN_LEN: usize = 128;

/// Which endpoint versions may serve a request; use
/// [`VersionChoice::accepts`] as the balancer's version filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum VersionChoice {
    /// Any version: the service has no split.
    Any,
    /// Exactly this version label (a split backend or header route).
    Exact(String),
    /// A pinned version: endpoints labelled exactly `version`, and, when
    /// `version` reads as a (possibly partial) semver version, endpoints whose
    /// version satisfies `=version`. So `3.1` accepts `3.1`, `3.1.0` and
    /// `3.1.7` but not `3.10.0`; `3.1.0` accepts only 3.1.0.
    Pinned {
        version: String,
        semver: Option<VersionReq>,
    },
    /// A pinned semver requirement such as `^3` or `>=3.1, <4`.
    Matching(VersionReq),
}

/// Why a request's route could not be chosen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
    /// The `x-bulkhead-version` header is not a version or requirement; the
    /// message says what was expected (answer 400 with it).
    #[error("bad x-bulkhead-version header: {0}")]
    BadVersionPin(String),
}

impl VersionChoice {
    /// Reads a pin: a version label (`3.1.0`, `3.1`, `v2`, `canary`) becomes
    /// [`VersionChoice::Pinned`]; anything with an operator (`^3`, `~3.1`,
    /// `>=3.1, <4`, `*`) must parse as a semver requirement and becomes
    /// [`VersionChoice::Matching`].
    ///
    /// A bare `3.1` is deliberately not read the way Cargo reads it (`^3.1`):
    /// a pin names a version, so it means `=3.1`.
    pub(crate) fn pin(value: &str) -> Result<VersionChoice, RouteError> {
        let value = value.trim_matches([' ', '\t']);
        if value.is_empty() {
            return Err(bad_pin(
                "expected a version or a semver requirement, got nothing",
            ));
        }
        if value.len() > MAX_PIN_LEN {
            return Err(bad_pin(format!(
                "expected at most {MAX_PIN_LEN} characters, got {}",
                value.len()
            )));
        }
        if version::is_label(value) {
            let semver = VersionReq::parse(&format!("={}", version::strip_v(value))).ok();
            return Ok(VersionChoice::Pinned {
                version: value.to_owned(),
                semver,
            });
        }
        VersionReq::parse(value)
            .map(VersionChoice::Matching)
            .map_err(|e| {
                bad_pin(format!(
                    "expected a version such as 3.1.0 or a semver requirement such as ^3, \
                     got {value:?} ({e})"
                ))
            })
    }

    /// Whether an endpoint of version `version` may serve the request.
    ///
    /// Semver comparisons read endpoint versions leniently: one leading `v`
    /// is dropped and a missing minor or patch is 0 (`v3` is 3.0.0, `3.1` is
    /// 3.1.0). Labels that still are not semver (`canary`) only match by
    /// exact string. Pre-releases follow semver: `^3` does not accept
    /// `3.2.0-rc.1`.
    pub(crate) fn accepts(&self, version: &str) -> bool {
        let satisfies = |req: &VersionReq| version::read(version).is_some_and(|v| req.matches(&v));
        match self {
            VersionChoice::Any => true,
            VersionChoice::Exact(exact) => exact == version,
            VersionChoice::Pinned {
                version: pinned,
                semver,
            } => pinned == version || semver.as_ref().is_some_and(satisfies),
            VersionChoice::Matching(req) => satisfies(req),
        }
    }
}

impl fmt::Display for VersionChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionChoice::Any => f.write_str("any"),
            VersionChoice::Exact(version) | VersionChoice::Pinned { version, .. } => {
                f.write_str(version)
            }
            VersionChoice::Matching(req) => write!(f, "{req}"),
        }
    }
}

/// The version choice for a request, by the precedence in the module
/// documentation, without fallback. `roll` is a uniformly random `u64`
/// (`rand::random()`), used only for a weighted choice that is not sticky.
#[cfg(test)]
pub(crate) fn choose(
    split: Option<&TrafficSplit>,
    headers: &HeaderMap,
    roll: u64,
) -> Result<VersionChoice, RouteError> {
    let caller = StickyKey::new(b"spiffe://cluster.local/ns/shop/sa/web");
    choose_with_fallback(split, headers, caller, roll, |_| true)
}

/// Like [`choose`], for a caller whose (own) identity is keyed `caller`;
/// and a weighted choice skips backends for which
/// `has_healthy` is false, sharing their weight among the others. If no
/// backend is healthy it returns the rolled one, so that the balancer's panic
/// mode still serves it. `has_healthy` is asked once for a healthy split,
/// and at most once per backend otherwise.
pub(crate) fn choose_with_fallback(
    split: Option<&TrafficSplit>,
    headers: &HeaderMap,
    caller: StickyKey,
    roll: u64,
    has_healthy: impl FnMut(&VersionChoice) -> bool,
) -> Result<VersionChoice, RouteError> {
    if let Some(pin) = pin(headers)? {
        return Ok(pin);
    }
    let Some(split) = split else {
        return Ok(VersionChoice::Any);
    };
    let spec = &split.spec;
    let routes = spec.matches.as_deref().unwrap_or_default();
    if let Some(route) = routes.iter().find(|r| carries(headers, &r.header)) {
        return Ok(VersionChoice::Exact(route.version.clone()));
    }
    let roll = sticky_roll(split, headers, caller).unwrap_or(roll);
    Ok(weighted(&spec.backends, roll, has_healthy))
}

/// The roll a sticky split fixes for this request; `None`: roll at random.
fn sticky_roll(split: &TrafficSplit, headers: &HeaderMap, caller: StickyKey) -> Option<u64> {
    let key = match &split.spec.stickiness {
        Stickiness::None => return None,
        Stickiness::Caller => caller,
        // The model keeps the name lower-case, as HeaderMap wants it.
        Stickiness::Header(name) => StickyKey::new(headers.get(name.as_str())?.as_bytes()),
    };
    Some(key.roll(&split.metadata.namespace, &split.spec.service))
}

/// The request's pin, if it has one.
fn pin(headers: &HeaderMap) -> Result<Option<VersionChoice>, RouteError> {
    let mut values = headers.get_all(VERSION_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad_pin("expected one header, got several"));
    }
    if value.len() > MAX_PIN_LEN {
        return Err(bad_pin(format!(
            "expected at most {MAX_PIN_LEN} characters, got {}",
            value.len()
        )));
    }
    let text = value
        .to_str()
        .map_err(|_| bad_pin("expected visible ASCII characters"))?;
    VersionChoice::pin(text).map(Some)
}

fn bad_pin(message: impl Into<String>) -> RouteError {
    RouteError::BadVersionPin(message.into())
}

/// Whether one of the request's `name` fields has exactly the route's value
/// (a comma-joined list is one value, not several).
fn carries(headers: &HeaderMap, route: &HeaderMatch) -> bool {
    headers
        .get_all(route.name.as_str())
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| route.matches(&route.name, v)))
}

fn weighted(
    backends: &[Backend],
    roll: u64,
    mut has_healthy: impl FnMut(&VersionChoice) -> bool,
) -> VersionChoice {
    let Some(rolled) = by_weight(backends.iter(), roll) else {
        // Only a split with no weight at all; validation refuses those.
        return VersionChoice::Any;
    };
    let rolled = VersionChoice::Exact(rolled.version.clone());
    if has_healthy(&rolled) {
        return rolled;
    }
    let healthy: Vec<&Backend> = backends
        .iter()
        .filter(|b| b.weight > 0 && !rolled.accepts(&b.version))
        .filter(|b| has_healthy(&VersionChoice::Exact(b.version.clone())))
        .collect();
    // A fresh roll: the first one is confined to the rolled backend's range.
    match by_weight(healthy.into_iter(), remix(roll)) {
        Some(backend) => VersionChoice::Exact(backend.version.clone()),
        None => rolled,
    }
}

/// The backend whose slice of the cumulative weights holds `roll` scaled to
/// `0..total`; backends of weight 0 have no slice.
fn by_weight<'a>(
    backends: impl Iterator<Item = &'a Backend> + Clone,
    roll: u64,
) -> Option<&'a Backend> {
    let total: u64 = backends.clone().map(|b| u64::from(b.weight)).sum();
    // Lemire's multiply-shift: uniform in 0..total, bias below total / 2^64.
    let mut point = ((u128::from(roll) * u128::from(total)) >> 64) as u64;
    for backend in backends {
        let weight = u64::from(backend.weight);
        if point < weight {
            return Some(backend);
        }
        point -= weight;
    }
    None
}

/// SplitMix64's finalizer: a roll independent of which slice `roll` fell in.
fn remix(roll: u64) -> u64 {
    let mut z = roll.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
