//! The store's key layout (relative to the prefix, default `/bulkhead/`):
//!
//! ```text
//! resources/<Kind>/<namespace>/<name>      canonical JSON of an applied resource
//! endpoints/<namespace>/<service>/<ip>:<inbound-port> protobuf bulkhead.v1.Endpoint, on the registrant's lease
//! tokens/<token-id>                        one-time bootstrap token already used
//!                                          (on a lease that ends when the token expires)
//! ca/trust                                 the trust record: roots, the issuer that
//!                                          signs, a root rotation's stage (JSON,
//!                                          public material only; see ca::TrustRecord)
//! ca/signers/<replica>-<random>            a live replica and the issuers it holds
//!                                          keys for (JSON, on the replica's lease)
//! leaves/<namespace>/<service>/<ip>:<inbound-port>
//!                                          the root and expiry of that endpoint's
//!                                          current certificate (JSON, on its lease)
//! rollouts/<namespace>/<name>             a Rollout's status (JSON, see rollout::status),
//!                                          written by the leading replica
//! rollout-commands/<namespace>/<name>/<id> an operator's command waiting for the leader
//! leader/rollouts                          the replica that drives rollouts (on its lease)
//! stats/<unix-ms, 13 digits>-<replica>-<random>
//!                                          what sidecars reported to one replica since
//!                                          its previous flush, which happened at that
//!                                          time (JSON, see measure::FlushRecord; on a
//!                                          lease of the stats retention). Sorting by
//!                                          key sorts by time: a window is one range read.
//! events/<unix-ms, 13 digits>-<replica>-<random>-<n, 10 digits>
//!                                          one mesh event, a CloudEvent without its id
//!                                          (JSON, see events; the id is the key's mod
//!                                          revision), on a lease of the events retention
//! events-horizon                           the newest revision and time of an event the
//!                                          retention deleted (JSON, see events::Horizon)
//! ```

use bulkhead_proto::model::Kind;

pub(crate) const RESOURCES: &str = "resources/";
pub(crate) const ENDPOINTS: &str = "endpoints/";
pub(crate) const TOKENS: &str = "tokens/";
pub(crate) const TRUST: &str = "ca/trust";
pub(crate) const SIGNERS: &str = "ca/signers/";
pub(crate) const LEAVES: &str = "leaves/";
pub(crate) const ROLLOUTS: &str = "rollouts/";
pub(crate) const ROLLOUT_COMMANDS: &str = "rollout-commands/";
pub(crate) const ROLLOUT_LEADER: &str = "leader/rollouts";
pub(crate) const STATS: &str = "stats/";
pub(crate) const EVENTS: &str = "events/";
pub(crate) const EVENTS_HORIZON: &str = "events-horizon";
/// Which replica wrote the event of a change every replica sees (an
/// endpoint's lease expiry): the first to create the claim.
pub(crate) const EVENT_CLAIMS: &str = "event-claims/";
/// Never written: listing it reads only the store's current revision.
pub(crate) const SYNC_PROBE: &str = "sync-probe/";

pub(crate) fn resource(kind: Kind, namespace: &str, name: &str) -> String {
    format!("{RESOURCES}{kind}/{namespace}/{name}")
}

/// Prefix of every resource of `kind`, in one namespace or (None) in all.
pub(crate) fn resources_of(kind: Kind, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{RESOURCES}{kind}/{ns}/"),
        None => format!("{RESOURCES}{kind}/"),
    }
}

pub(crate) fn endpoint(namespace: &str, service: &str, address: &str, inbound_port: u32) -> String {
    format!("{ENDPOINTS}{namespace}/{service}/{address}:{inbound_port}")
}

/// Prefix of every endpoint of one service.
pub(crate) fn service_endpoints(namespace: &str, service: &str) -> String {
    format!("{ENDPOINTS}{namespace}/{service}/")
}

/// Where the certificate of the endpoint stored at `endpoint_key` is noted.
pub(crate) fn leaf_of(endpoint_key: &str) -> String {
    format!(
        "{LEAVES}{}",
        endpoint_key.strip_prefix(ENDPOINTS).unwrap_or(endpoint_key)
    )
}

pub(crate) fn token(id: &str) -> String {
    format!("{TOKENS}{id}")
}

pub(crate) fn rollout_status(namespace: &str, name: &str) -> String {
    format!("{ROLLOUTS}{namespace}/{name}")
}

/// Prefix of the commands queued for one rollout (ends with `/`).
pub(crate) fn rollout_commands(namespace: &str, name: &str) -> String {
    format!("{ROLLOUT_COMMANDS}{namespace}/{name}/")
}

/// The flush of `replica` (name and random suffix) made at `unix_ms`.
pub(crate) fn stats(unix_ms: i64, replica: &str) -> String {
    format!("{}-{replica}", stats_at(unix_ms))
}

/// Where flushes made at `unix_ms` start: `stats_at(from)..stats_at(to)`
/// is every flush made in [from, to).
pub(crate) fn stats_at(unix_ms: i64) -> String {
    // Zero-padded so that keys sort as times do (13 digits hold every
    // millisecond until the year 2286).
    format!("{STATS}{:013}", unix_ms.max(0))
}

/// Event number `n` of `replica` (name and random suffix), written at `unix_ms`.
pub(crate) fn event(unix_ms: i64, replica: &str, n: u64) -> String {
    // Zero-padded: one replica's events of the same millisecond sort
    // in the order they were made.
    format!("{}-{replica}-{n:010}", events_at(unix_ms))
}

/// The claim on the event of the change to `key` at `revision`.
pub(crate) fn event_claim(revision: i64, key: &str) -> String {
    format!("{EVENT_CLAIMS}{revision:020}/{key}")
}

/// Where events written at `unix_ms` start (as [`stats_at`]).
pub(crate) fn events_at(unix_ms: i64) -> String {
    format!("{EVENTS}{:013}", unix_ms.max(0))
}

/// Past every event key.
pub(crate) fn events_end() -> String {
    format!("{EVENTS}~")
}

/// The time (unix ms) an event key was written at.
pub(crate) fn event_time(key: &str) -> Option<i64> {
    key.strip_prefix(EVENTS)?.get(..13)?.parse().ok()
}
