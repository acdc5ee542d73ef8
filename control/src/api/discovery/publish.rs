//! `Discovery.PublishEvents`: what a sidecar saw (ejections, readmissions,
//! aggregated denials), checked and written to the event stream. The
//! source and namespace come from the caller's certificate; the type must
//! be one sidecars may publish; sizes and each identity's rate are bounded
//! (see [`crate::events::upkeep::Publishers`]).

use bulkhead_proto::SpiffeId;
use bulkhead_proto::pb;
use tonic::Status;

use super::DiscoveryService;
use crate::api::{now_unix_ms, store_status};
use crate::events::{NewEvent, SIDECAR_TYPES};

/// Most events one batch may carry (a sidecar sends at most this many a
/// second).
pub(crate) const MAX_BATCH: usize = 100;
/// Largest `data_json` of one event.
const MAX_DATA_BYTES: usize = 2048;
/// Longest subject.
const MAX_SUBJECT: usize = 256;
/// How far from now a sidecar's timestamp may be before it is replaced by
/// the time of arrival.
const MAX_CLOCK_DISTANCE_MS: i64 = 3_600_000;

impl DiscoveryService {
    pub(super) async fn accept_events(
        &self,
        identity: &SpiffeId,
        req: pb::PublishEventsRequest,
    ) -> Result<pb::PublishEventsResponse, Status> {
        if req.events.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} events per batch, got {}",
                req.events.len()
            )));
        }
        if req.dropped > 0 {
            metrics::counter!("bulkhead_sidecar_events_dropped_total").increment(req.dropped);
        }
        let now = now_unix_ms();
        let source = identity.to_string();
        let mut accepted = Vec::with_capacity(req.events.len());
        for event in req.events {
            match check(identity, &source, event, now) {
                Ok(event) => accepted.push(event),
                Err(why) => {
                    metrics::counter!("bulkhead_sidecar_events_refused_total", "reason" => why)
                        .increment(1);
                    tracing::debug!(%identity, reason = why, "sidecar event refused");
                }
            }
        }
        let allowed = self.plane.events.publishers.allow(&source, accepted.len());
        if allowed < accepted.len() {
            let over = (accepted.len() - allowed) as u64;
            metrics::counter!("bulkhead_sidecar_events_refused_total", "reason" => "rate")
                .increment(over);
            tracing::debug!(%identity, over, "sidecar over its event budget; events dropped");
            accepted.truncate(allowed);
        }
        let count = accepted.len() as u32;
        if !accepted.is_empty() {
            self.plane
                .events
                .write(accepted)
                .await
                .map_err(store_status)?;
        }
        Ok(pb::PublishEventsResponse { accepted: count })
    }
}

fn check(
    identity: &SpiffeId,
    source: &str,
    event: pb::SidecarEvent,
    now: i64,
) -> Result<NewEvent, &'static str> {
    let Some(kind) = SIDECAR_TYPES.iter().find(|t| **t == event.r#type) else {
        return Err("type");
    };
    if event.data_json.len() > MAX_DATA_BYTES {
        return Err("too_big");
    }
    if event.subject.len() > MAX_SUBJECT || event.subject.chars().any(char::is_control) {
        return Err("subject");
    }
    let data: serde_json::Value = serde_json::from_str(&event.data_json).map_err(|_| "data")?;
    if !data.is_object() {
        return Err("data");
    }
    let mut new = NewEvent::new(kind, identity.namespace(), event.subject, data);
    new.source = Some(source.to_owned());
    new.unix_ms = if (event.unix_ms - now).abs() <= MAX_CLOCK_DISTANCE_MS {
        event.unix_ms
    } else {
        now
    };
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: &str) -> pb::SidecarEvent {
        pb::SidecarEvent {
            r#type: kind.into(),
            subject: "shop/api".into(),
            unix_ms: 1_000,
            data_json: data.into(),
        }
    }

    #[test]
    fn only_sidecar_types_with_small_object_data_pass() {
        let id: SpiffeId = "spiffe://td/ns/shop/sa/web".parse().unwrap();
        let src = id.to_string();
        let ok = check(
            &id,
            &src,
            event(crate::events::AUTHZ_DENIED, r#"{"count":3}"#),
            1_000,
        )
        .unwrap();
        assert_eq!(ok.namespace, "shop");
        assert_eq!(ok.source.as_deref(), Some(src.as_str()));
        let refused = |e| check(&id, &src, e, 1_000).unwrap_err();
        assert_eq!(
            refused(event(crate::events::RESOURCE_APPLIED, "{}")),
            "type"
        );
        assert_eq!(refused(event(crate::events::AUTHZ_DENIED, "[1]")), "data");
        assert_eq!(refused(event(crate::events::AUTHZ_DENIED, "{")), "data");
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_DATA_BYTES));
        assert_eq!(refused(event(crate::events::AUTHZ_DENIED, &big)), "too_big");
        // A clock far off: the time of arrival.
        let late = check(
            &id,
            &src,
            event(crate::events::ENDPOINT_EJECTED, "{}"),
            10_000_000_000,
        )
        .unwrap();
        assert_eq!(late.unix_ms, 10_000_000_000);
    }
}
