//! The event stream's background work: aggregated certificate refusals
//! (every replica), expired endpoints (every replica tries; the first to
//! claim each expiry writes it), and on the replica that leads rollouts
//! only, the retention trim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::{CERTIFICATE_REFUSED, ENDPOINT_EXPIRED, Events, Horizon, NewEvent, now_ms};
use crate::keys;
use crate::store::{Op, Revision, Store, StoreError};

/// Refusals are added up over this long, then written as one event per
/// (identity, reason): a flood of bad tokens makes a few events.
pub(crate) const REFUSAL_WINDOW: Duration = Duration::from_secs(5);
/// Distinct (identity, reason) pairs kept per window; beyond, refusals are
/// counted under one overflow entry.
const MAX_REFUSAL_KEYS: usize = 256;
/// How often the leader applies the retention.
const TRIM_PERIOD: Duration = Duration::from_secs(5);
/// Events deleted per transaction (etcd allows 128 operations).
const TRIM_BATCH: usize = 100;

/// Sidecar events one identity may publish per [`PUBLISH_WINDOW`] (to one
/// replica): far above what ejections and 10 s denial windows make, low
/// enough that a compromised sidecar cannot push everyone else's events
/// out of the retention.
const PUBLISH_BUDGET: u32 = 300;
const PUBLISH_WINDOW: Duration = Duration::from_secs(10);
/// Identities tracked per window (beyond: all share one budget).
const MAX_PUBLISHERS: usize = 4096;

/// What each sidecar identity has published in the current window.
#[derive(Debug, Default)]
pub(crate) struct Publishers {
    window: Mutex<(Option<tokio::time::Instant>, HashMap<String, u32>)>,
}

impl Publishers {
    /// How many of `wanted` events `identity` may still publish now.
    pub(crate) fn allow(&self, identity: &str, wanted: usize) -> usize {
        let now = tokio::time::Instant::now();
        let mut guard = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (started, used) = &mut *guard;
        if started.is_none_or(|s| now.duration_since(s) >= PUBLISH_WINDOW) {
            *started = Some(now);
            used.clear();
        }
        let key = if used.len() >= MAX_PUBLISHERS && !used.contains_key(identity) {
            String::new()
        } else {
            identity.to_owned()
        };
        let spent = used.entry(key).or_default();
        let allowed = PUBLISH_BUDGET
            .saturating_sub(*spent)
            .min(u32::try_from(wanted).unwrap_or(u32::MAX));
        *spent += allowed;
        allowed as usize
    }
}

/// Certificate refusals in the current window.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    window: Mutex<HashMap<(String, &'static str), Refused>>,
}

#[derive(Debug)]
struct Refused {
    count: u64,
    /// The first refusal's message (what the caller was told).
    message: String,
}

impl Refusals {
    /// Counts one refusal of `identity` (empty: not known) for `reason`.
    pub(crate) fn add(&self, identity: &str, reason: &'static str, message: &str) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let key = if window.len() >= MAX_REFUSAL_KEYS
            && !window.contains_key(&(identity.to_owned(), reason))
        {
            (String::new(), "overflow")
        } else {
            (identity.to_owned(), reason)
        };
        window
            .entry(key)
            .or_insert_with(|| Refused {
                count: 0,
                message: message.chars().take(300).collect(),
            })
            .count += 1;
    }

    fn take(&self) -> HashMap<(String, &'static str), Refused> {
        std::mem::take(&mut *self.window.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Writes each window's refusals, for as long as the process runs.
pub(crate) async fn refusals_forever(events: Arc<Events>) {
    let mut tick = tokio::time::interval(REFUSAL_WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let window = events.refusals.take();
        if window.is_empty() {
            continue;
        }
        let batch: Vec<NewEvent> = window
            .into_iter()
            .map(|((identity, reason), refused)| {
                let namespace = identity
                    .parse::<bulkhead_proto::SpiffeId>()
                    .map(|id| id.namespace().to_owned())
                    .unwrap_or_default();
                NewEvent::new(
                    CERTIFICATE_REFUSED,
                    &namespace,
                    identity.clone(),
                    serde_json::json!({
                        "identity": identity,
                        "reason": reason,
                        "count": refused.count,
                        "message": refused.message,
                        "windowSeconds": REFUSAL_WINDOW.as_secs(),
                    }),
                )
            })
            .collect();
        for chunk in batch.chunks(TRIM_BATCH) {
            if let Err(error) = events.write(chunk.to_vec()).await {
                metrics::counter!("bulkhead_events_dropped_total", "reason" => "store")
                    .increment(chunk.len() as u64);
                tracing::warn!(%error, "cannot write certificate refusal events");
            }
        }
    }
}

/// An endpoint key deleted with no event in the same transaction (a
/// deregistration writes one): its lease expired.
#[derive(Clone, Debug)]
pub(crate) struct Unexplained {
    pub key: String,
    pub revision: Revision,
}

/// Writes `endpoint.expired` for each unexplained endpoint deletion the
/// hub sees. Every replica tries, and the first to claim the deletion
/// (create-if-absent of its claim key, in the event's transaction) writes
/// it: one event per expiry, none lost while the rollout leadership moves
/// (a leader-only writer would miss the expiries of the handover and could
/// write twice if two replicas briefly both believed they led).
pub(crate) async fn expiries_forever(
    events: Arc<Events>,
    mut deletions: broadcast::Receiver<Arc<Vec<Unexplained>>>,
) {
    loop {
        let batch = match deletions.recv().await {
            Ok(batch) => batch,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics::counter!("bulkhead_events_dropped_total", "reason" => "lagged")
                    .increment(n);
                tracing::warn!(
                    missed = n,
                    "fell behind on endpoint deletions; another replica may write their expiries"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        for gone in batch.iter() {
            if let Err(error) = write_expiry(&events, gone).await {
                metrics::counter!("bulkhead_events_dropped_total", "reason" => "store")
                    .increment(1);
                tracing::warn!(%error, key = %gone.key, "cannot write an endpoint expiry event");
            }
        }
    }
}

/// Writes the expiry of `gone` unless another replica has: `Ok(false)`
/// when it had.
pub(crate) async fn write_expiry(events: &Events, gone: &Unexplained) -> Result<bool, StoreError> {
    let claim = keys::event_claim(gone.revision, &gone.key);
    events.create_with(&claim, vec![expired_event(gone)]).await
}

fn expired_event(gone: &Unexplained) -> NewEvent {
    // endpoints/<namespace>/<service>/<ip>:<port>
    let rest = gone.key.strip_prefix(keys::ENDPOINTS).unwrap_or(&gone.key);
    let mut parts = rest.splitn(3, '/');
    let (namespace, service, at) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (address, port) = at.rsplit_once(':').unwrap_or((at, ""));
    NewEvent::new(
        ENDPOINT_EXPIRED,
        namespace,
        rest.to_owned(),
        serde_json::json!({
            "namespace": namespace,
            "service": service,
            "address": address,
            "inboundPort": port.parse::<u32>().unwrap_or(0),
            "deletedRevision": gone.revision,
        }),
    )
}

/// Applies the retention (age, then count) while this replica leads.
pub(crate) async fn trim_forever(
    events: Arc<Events>,
    store: Arc<dyn Store>,
    leading: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TRIM_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !*leading.borrow() {
            continue;
        }
        if let Err(error) = trim(store.as_ref(), events.settings, now_ms()).await {
            tracing::warn!(%error, "cannot apply the events retention; trying again");
        }
    }
}

pub(crate) async fn trim(
    store: &dyn Store,
    settings: super::EventSettings,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    let cutoff = keys::events_at(now_ms - settings.retention.as_millis() as i64);
    loop {
        let old = store.range_first(keys::EVENTS, &cutoff, TRIM_BATCH).await?;
        if old.is_empty() {
            break;
        }
        deleted += delete_oldest(store, old).await?;
    }
    let mut excess = store
        .count(keys::EVENTS, &keys::events_end())
        .await?
        .saturating_sub(settings.max);
    while excess > 0 {
        let limit = usize::try_from(excess)
            .unwrap_or(TRIM_BATCH)
            .min(TRIM_BATCH);
        let old = store
            .range_first(keys::EVENTS, &keys::events_end(), limit)
            .await?;
        if old.is_empty() {
            break;
        }
        let n = delete_oldest(store, old).await?;
        deleted += n;
        excess = excess.saturating_sub(n);
    }
    if deleted > 0 {
        metrics::counter!("bulkhead_events_trimmed_total").increment(deleted);
        tracing::debug!(deleted, "events retention applied");
    }
    Ok(deleted)
}

/// Deletes `old` and moves the horizon past them, in one transaction.
async fn delete_oldest(
    store: &dyn Store,
    old: Vec<crate::store::KeyValue>,
) -> Result<u64, StoreError> {
    let mut horizon = Horizon::read(store).await?;
    let mut ops = Vec::with_capacity(old.len() + 1);
    for kv in &old {
        horizon.revision = horizon.revision.max(kv.mod_revision);
        horizon.unix_ms = horizon.unix_ms.max(keys::event_time(&kv.key).unwrap_or(0));
        ops.push(Op::Delete {
            key: kv.key.clone(),
        });
    }
    ops.push(Op::Put {
        key: keys::EVENTS_HORIZON.to_owned(),
        value: serde_json::to_vec(&horizon).unwrap_or_default(),
        lease: None,
    });
    store.txn(ops).await?;
    Ok(old.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_support;

    #[tokio::test]
    async fn an_expiry_seen_by_two_replicas_is_written_once() {
        let (store, settings, first) = test_support::events();
        let second = Events::new(store.clone(), settings, "cp-2");
        let gone = Unexplained {
            key: format!("{}shop/web/10.0.0.7:8443", keys::ENDPOINTS),
            revision: 42,
        };
        assert!(write_expiry(&first, &gone).await.unwrap());
        assert!(!write_expiry(&second, &gone).await.unwrap());
        assert!(!write_expiry(&first, &gone).await.unwrap());
        let (kept, _) = store.list(keys::EVENTS).await.unwrap();
        assert_eq!(kept.len(), 1, "one event: {kept:?}");
        let event: serde_json::Value = serde_json::from_slice(&kept[0].value).unwrap();
        assert_eq!(event["type"], ENDPOINT_EXPIRED);
        assert_eq!(event["subject"], "shop/web/10.0.0.7:8443");
        // Another expiry of the same key (registered again, expired again)
        // is its own event.
        let again = Unexplained {
            revision: 57,
            ..gone
        };
        assert!(write_expiry(&second, &again).await.unwrap());
    }

    #[tokio::test]
    async fn the_count_bound_deletes_the_oldest_and_moves_the_horizon() {
        let (store, settings, events) = test_support::events();
        let revisions = test_support::write(&events, 130).await;
        assert_eq!(trim(store.as_ref(), settings, now_ms()).await.unwrap(), 30);
        assert_eq!(
            store
                .count(keys::EVENTS, &keys::events_end())
                .await
                .unwrap(),
            100
        );
        let horizon = Horizon::read(store.as_ref()).await.unwrap();
        assert_eq!(horizon.revision, revisions[29]);
        // Age: everything is older than a retention from now + 2h.
        let later = now_ms() + 7_200_000;
        assert_eq!(trim(store.as_ref(), settings, later).await.unwrap(), 100);
        assert_eq!(
            Horizon::read(store.as_ref()).await.unwrap().revision,
            revisions[129]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sidecar_publishes_within_a_budget_per_window() {
        let publishers = Publishers::default();
        assert_eq!(publishers.allow("a", 100), 100);
        assert_eq!(publishers.allow("a", 250), 200);
        assert_eq!(publishers.allow("a", 1), 0);
        assert_eq!(publishers.allow("b", 1), 1, "each identity its own");
        tokio::time::advance(PUBLISH_WINDOW).await;
        assert_eq!(publishers.allow("a", 1), 1, "a new window");
    }

    #[test]
    fn refusals_are_counted_per_identity_and_reason_within_a_bound() {
        let refusals = Refusals::default();
        for _ in 0..1000 {
            refusals.add("", "token", "bootstrap token refused: bad signature");
        }
        for i in 0..1000 {
            refusals.add(&format!("spiffe://td/ns/a/sa/s{i}"), "csr", "bad csr");
        }
        let window = refusals.take();
        assert_eq!(window[&(String::new(), "token")].count, 1000);
        assert!(window.len() <= MAX_REFUSAL_KEYS + 1);
        assert!(window[&(String::new(), "overflow")].count > 0);
        assert!(refusals.take().is_empty());
    }
}
