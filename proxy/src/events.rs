//! What this sidecar tells the mesh event stream: endpoints it ejected
//! (outlier detection), the requests it denied and the egress connections
//! it refused, added up per (caller, target, rule or reason) over
//! [`DENIAL_WINDOW`] so a flood of denied requests makes a bounded number
//! of events.
//!
//! Nothing here may slow the data path: producers `try_send` into bounded
//! queues and never wait; when a queue is full the event is dropped and
//! counted (`bulkhead_events_dropped_total{reason}`). Batches go to the
//! control plane every [`PUBLISH_EVERY`] over the registration's channel
//! (`Discovery.PublishEvents`), which sets the source from this sidecar's
//! certificate. Until [`start`] runs (or with no control plane at all)
//! events are not collected.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulkhead_proto::pb::{self, discovery_client::DiscoveryClient};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Events waiting to be published.
const QUEUE: usize = 1024;
/// Denials waiting to be added up.
const DENIAL_QUEUE: usize = 4096;
/// Denials are added up over this long.
pub(crate) const DENIAL_WINDOW: Duration = Duration::from_secs(10);
/// Distinct (caller, target, rule) per window; beyond, one overflow entry.
const MAX_DENIAL_KEYS: usize = 128;
/// How often a batch is sent.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Most events per batch (the control plane's bound).
const MAX_BATCH: usize = 100;
/// How long one PublishEvents call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest path kept in a denial event.
const MAX_PATH: usize = 128;

pub(crate) const ENDPOINT_EJECTED: &str = "dev.bulkhead.endpoint.ejected";
pub(crate) const ENDPOINT_READMITTED: &str = "dev.bulkhead.endpoint.readmitted";
pub(crate) const AUTHZ_DENIED: &str = "dev.bulkhead.authz.denied";
pub(crate) const EGRESS_REFUSED: &str = "dev.bulkhead.egress.refused";

struct Sinks {
    events: mpsc::Sender<pb::SidecarEvent>,
    denials: mpsc::Sender<Denial>,
}

static SINKS: OnceLock<Sinks> = OnceLock::new();
/// Dropped since the last accepted batch (told to the control plane).
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn dropped(reason: &'static str) {
    DROPPED.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("bulkhead_events_dropped_total", "reason" => reason).increment(1);
}

/// One denied request (or refused egress connection), as the data path saw it.
#[derive(Debug)]
pub(crate) struct Denial {
    pub kind: DenialKind,
    pub caller: String,
    pub target: String,
    pub rule: String,
    /// The normalized path (HTTP), cut to [`MAX_PATH`]; empty for TCP.
    pub path: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Queues an event; never waits.
pub(crate) fn emit(kind: &str, subject: String, data: serde_json::Value) {
    let Some(sinks) = SINKS.get() else {
        return;
    };
    let event = pb::SidecarEvent {
        r#type: kind.to_owned(),
        subject,
        unix_ms: now_ms(),
        data_json: data.to_string(),
    };
    if sinks.events.try_send(event).is_err() {
        dropped("queue_full");
    }
}

/// Counts one denied request toward its window's event; never waits.
pub(crate) fn denied(caller: &dyn std::fmt::Display, target: &str, rule: &str, path: &str) {
    let Some(sinks) = SINKS.get() else {
        return;
    };
    let mut cut = path.len().min(MAX_PATH);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    let denial = Denial {
        kind: DenialKind::Authz,
        caller: caller.to_string(),
        target: target.to_owned(),
        rule: rule.to_owned(),
        path: path[..cut].to_owned(),
    };
    if sinks.denials.try_send(denial).is_err() {
        dropped("denials_full");
    }
}

/// Which event a denial adds up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DenialKind {
    /// An inbound request no AllowList allowed.
    Authz,
    /// A captured connection out of the mesh no Egress (or `--egress`)
    /// allowed: `caller` is the service, `target` the destination, `rule`
    /// the reason, `path` the SNI or `Host` name read, if any.
    Egress,
}

/// Counts one refused egress connection toward its window's event; never
/// waits.
pub(crate) fn egress_refused(
    service: &str,
    destination: std::net::SocketAddr,
    reason: &str,
    name: &str,
) {
    let Some(sinks) = SINKS.get() else {
        return;
    };
    let denial = Denial {
        kind: DenialKind::Egress,
        caller: service.to_owned(),
        target: destination.to_string(),
        rule: reason.to_owned(),
        path: name.chars().take(MAX_PATH).collect(),
    };
    if sinks.denials.try_send(denial).is_err() {
        dropped("denials_full");
    }
}

/// Starts collecting and publishing over `channel` (once per process; a
/// second call does nothing).
pub(crate) fn start(channel: Channel) {
    let (events, events_rx) = mpsc::channel(QUEUE);
    let (denials, denials_rx) = mpsc::channel(DENIAL_QUEUE);
    if SINKS.set(Sinks { events, denials }).is_err() {
        return;
    }
    tokio::spawn(add_up_denials(denials_rx));
    tokio::spawn(publish_forever(channel, events_rx));
}

/// Denials in one window by (caller, target, rule), bounded: the count and
/// the first path seen.
#[derive(Debug, Default)]
struct Window {
    counts: HashMap<(DenialKind, String, String, String), (u64, String)>,
}

impl Window {
    fn add(&mut self, d: Denial) {
        let mut key = (d.kind, d.caller, d.target, d.rule);
        if self.counts.len() >= MAX_DENIAL_KEYS && !self.counts.contains_key(&key) {
            key = match d.kind {
                DenialKind::Authz => (d.kind, "*".into(), key.2, "overflow".into()),
                DenialKind::Egress => (d.kind, key.1, "*".into(), "overflow".into()),
            };
        }
        self.counts.entry(key).or_insert((0, d.path)).0 += 1;
    }

    /// (event type, subject, data) for each entry.
    fn events(self) -> impl Iterator<Item = (&'static str, String, serde_json::Value)> {
        self.counts
            .into_iter()
            .map(|((kind, caller, target, rule), (count, path))| match kind {
                DenialKind::Authz => {
                    let data = serde_json::json!({
                        "caller": caller,
                        "target": target,
                        "rule": rule,
                        "path": path,
                        "count": count,
                        "windowSeconds": DENIAL_WINDOW.as_secs(),
                    });
                    (AUTHZ_DENIED, target, data)
                }
                DenialKind::Egress => {
                    let data = serde_json::json!({
                        "service": caller,
                        "destination": target,
                        "reason": rule,
                        "name": path,
                        "count": count,
                        "windowSeconds": DENIAL_WINDOW.as_secs(),
                    });
                    (EGRESS_REFUSED, caller, data)
                }
            })
    }
}

async fn add_up_denials(mut rx: mpsc::Receiver<Denial>) {
    let mut window = Window::default();
    let mut tick = tokio::time::interval(DENIAL_WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            denial = rx.recv() => match denial {
                Some(d) => window.add(d),
                None => return,
            },
            _ = tick.tick() => {
                for (kind, subject, data) in std::mem::take(&mut window).events() {
                    emit(kind, subject, data);
                }
            }
        }
    }
}

async fn publish_forever(channel: Channel, mut rx: mpsc::Receiver<pb::SidecarEvent>) {
    let mut client = DiscoveryClient::new(channel);
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let request = pb::PublishEventsRequest {
            events: batch,
            dropped: DROPPED.swap(0, Ordering::Relaxed),
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.publish_events(request)).await {
            Ok(Ok(_)) => {
                metrics::counter!("bulkhead_events_published_total").increment(n);
            }
            // Not kept for later: the queue behind is bounded, and an
            // outage must not turn into a burst when it ends.
            Ok(Err(status)) => {
                metrics::counter!("bulkhead_events_dropped_total", "reason" => "publish_failed")
                    .increment(n);
                tracing::debug!(%status, events = n, "cannot publish events");
            }
            Err(_) => {
                metrics::counter!("bulkhead_events_dropped_total", "reason" => "publish_failed")
                    .increment(n);
                tracing::debug!(events = n, "publishing events timed out");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(caller: &str, path: &str) -> Denial {
        Denial {
            kind: DenialKind::Authz,
            caller: caller.into(),
            target: "inventory".into(),
            rule: "default-deny".into(),
            path: path.into(),
        }
    }

    #[test]
    fn egress_refusals_are_their_own_events_and_a_flood_stays_bounded() {
        let mut window = Window::default();
        for i in 0..5_000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            window.add(Denial {
                kind: DenialKind::Egress,
                caller: "payments".into(),
                target: format!("198.18.{a}.{b}:443"),
                rule: "no-rule".into(),
                path: String::new(),
            });
        }
        window.add(denial("spiffe://td/ns/a/sa/web", "/x"));
        let events: Vec<_> = window.events().collect();
        assert!(events.len() <= MAX_DENIAL_KEYS + 2, "{}", events.len());
        let egress: Vec<_> = events
            .iter()
            .filter(|(kind, _, _)| *kind == EGRESS_REFUSED)
            .collect();
        let total: u64 = egress
            .iter()
            .map(|(_, _, d)| d["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 5_000);
        assert!(egress.iter().all(|(_, subject, d)| subject == "payments"
            && d["service"] == "payments"
            && d["destination"].as_str().is_some()));
        assert!(
            egress
                .iter()
                .any(|(_, _, d)| d["destination"] == "*" && d["reason"] == "overflow")
        );
    }

    #[test]
    fn a_flood_of_denials_is_a_bounded_number_of_events_that_count_it_all() {
        let mut window = Window::default();
        for i in 0..10_000 {
            window.add(denial("spiffe://td/ns/a/sa/attacker", "/admin"));
            window.add(denial(&format!("spiffe://td/ns/a/sa/s{i}"), "/x"));
        }
        let events: Vec<_> = window.events().collect();
        assert!(events.len() <= MAX_DENIAL_KEYS + 1, "{}", events.len());
        let total: u64 = events
            .iter()
            .map(|(_, _, d)| d["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 20_000);
        assert!(
            events
                .iter()
                .any(|(_, _, d)| d["caller"] == "spiffe://td/ns/a/sa/attacker"
                    && d["count"] == 10_000)
        );
    }
}
