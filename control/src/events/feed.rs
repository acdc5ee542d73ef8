//! One consumer's view of the event stream (gRPC `WatchEvents` and
//! `GET /v1/events` both use it): the kept events after an id or a time,
//! in id order, then new ones as they are written.
//!
//! The backlog is a range read by time, never the store's watch history
//! (which etcd compaction removes): so a consumer resuming from an old id
//! gets every event still kept. New events come from a watch that starts
//! right after the backlog's read revision; if that history is compacted
//! away under it, the backlog is read again from the last event sent, and
//! ids already sent are skipped. What retention deleted is announced with
//! one [`super::LOST`] event, never skipped silently.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{CloudEvent, EventId, Horizon, LOST, last_id_of, number, rfc3339, type_matches};
use crate::keys;
use crate::store::{Event, Revision, Store, StoreError};

/// How far apart two replicas' clocks may be: a backlog read starts this
/// much before the time asked for, so an event written by a replica whose
/// clock is behind is not missed.
const CLOCK_SKEW: i64 = 60_000;
/// A consumer that does not take an event for this long is disconnected
/// rather than buffered for.
pub(crate) const SLOW_CONSUMER: Duration = Duration::from_secs(30);
/// Without an id or a time: the last hour.
pub(crate) const DEFAULT_LOOKBACK_MS: i64 = 3_600_000;

/// What a consumer asks for.
#[derive(Clone, Debug, Default)]
pub(crate) struct Query {
    pub after_id: EventId,
    pub since_unix_ms: i64,
    pub namespace: Option<String>,
    pub types: Vec<String>,
    pub follow: bool,
}

/// One event as sent.
#[derive(Clone, Debug)]
pub(crate) struct Delivered {
    /// The id as a number (for a LOST marker: the id to resume after).
    pub id: EventId,
    pub kind: String,
    pub namespace: String,
    pub json: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FeedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the consumer took no event for {SLOW_CONSUMER:?}; disconnected (resume from the last id)"
    )]
    TooSlow,
    /// The consumer went away.
    #[error("consumer gone")]
    Gone,
}

struct Cursor<'a> {
    query: &'a Query,
    tx: &'a mpsc::Sender<Delivered>,
    /// The highest id sent (or asked to start after).
    after: EventId,
    /// The time (key ms) of the last event sent.
    last_ms: i64,
}

impl Cursor<'_> {
    async fn send(&self, item: Delivered) -> Result<(), FeedError> {
        match tokio::time::timeout(SLOW_CONSUMER, self.tx.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(FeedError::Gone),
            Err(_) => Err(FeedError::TooSlow),
        }
    }

    /// Sends a kept event if it is new to the consumer and passes its filters.
    async fn offer(&mut self, key: &str, event: CloudEvent, id: EventId) -> Result<(), FeedError> {
        let at = keys::event_time(key).unwrap_or(0);
        if id <= self.after || at < self.query.since_unix_ms {
            return Ok(());
        }
        self.after = id;
        self.last_ms = self.last_ms.max(at);
        if !type_matches(&self.query.types, &event.kind)
            || self
                .query
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != event.namespace)
        {
            return Ok(());
        }
        self.send(Delivered {
            id,
            kind: event.kind.clone(),
            namespace: event.namespace.clone(),
            json: event.to_json(),
        })
        .await
    }

    /// Says what retention deleted, if the consumer asked for any of it.
    async fn announce_losses(&mut self, horizon: Horizon) -> Result<(), FeedError> {
        let lost_through = last_id_of(horizon.revision);
        let lost = if self.after > 0 {
            self.after < lost_through
        } else {
            horizon.revision > 0 && self.query.since_unix_ms <= horizon.unix_ms
        };
        if !lost {
            return Ok(());
        }
        let data = serde_json::json!({
            "afterId": self.after,
            "since": rfc3339(self.query.since_unix_ms),
            "lostThroughId": lost_through,
            "lostBefore": rfc3339(horizon.unix_ms),
            "reason": "retention",
        });
        self.after = self.after.max(lost_through);
        self.send(lost_marker(lost_through, data)).await
    }

    /// The kept events after the cursor, in id order; returns the
    /// revision the read was made at.
    async fn backlog(&mut self, store: &dyn Store) -> Result<Revision, FeedError> {
        let horizon = Horizon::read(store).await?;
        self.announce_losses(horizon).await?;
        let from = if self.last_ms > 0 {
            self.last_ms
        } else if self.after > 0 && self.query.since_unix_ms == 0 {
            0
        } else {
            self.query.since_unix_ms
        };
        let (kvs, read_at) = store
            .range(&keys::events_at(from - CLOCK_SKEW), &keys::events_end())
            .await?;
        let fresh = kvs
            .iter()
            .filter(|kv| last_id_of(kv.mod_revision) > self.after)
            .collect();
        for (id, kv) in number(fresh) {
            if let Some(event) = CloudEvent::from_kv(kv, id) {
                self.offer(&kv.key, event, id).await?;
            }
        }
        Ok(read_at)
    }
}

/// A LOST marker: `id` is where the consumer may resume after.
fn lost_marker(id: EventId, data: serde_json::Value) -> Delivered {
    let event = CloudEvent {
        specversion: "1.0".to_owned(),
        id: format!("lost-{id}"),
        source: "/bulkhead-control".to_owned(),
        kind: LOST.to_owned(),
        subject: String::new(),
        time: rfc3339(super::now_ms()),
        datacontenttype: "application/json".to_owned(),
        namespace: String::new(),
        data,
    };
    Delivered {
        id,
        kind: LOST.to_owned(),
        namespace: String::new(),
        json: event.to_json(),
    }
}

/// Events queued for one consumer.
const QUEUE: usize = 64;
/// Consumers (gRPC `WatchEvents` and SSE together) one replica serves at
/// once: each holds a watch and, while it catches up, backlog reads.
pub(crate) const MAX_CONSUMERS: usize = 256;

/// The consumers being served, against [`MAX_CONSUMERS`].
#[derive(Debug)]
pub(crate) struct Consumers(Arc<tokio::sync::Semaphore>);

impl Default for Consumers {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(MAX_CONSUMERS)))
    }
}

/// A consumer's feed: its events, then how it ended.
pub(crate) type Feed = (
    mpsc::Receiver<Delivered>,
    tokio::sync::oneshot::Receiver<Result<(), FeedError>>,
);

/// Starts serving `query` to one consumer, or refuses when
/// [`MAX_CONSUMERS`] are already served (the caller says "busy, retry").
pub(crate) fn spawn(
    consumers: &Consumers,
    store: Arc<dyn Store>,
    query: Query,
) -> Result<Feed, Busy> {
    let permit = consumers.0.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!("bulkhead_event_consumers_refused_total").increment(1);
        Busy
    })?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        metrics::gauge!("bulkhead_event_consumers").increment(1.0);
        let result = run(store, query, tx).await;
        metrics::gauge!("bulkhead_event_consumers").decrement(1.0);
        drop(permit);
        let _ = done_tx.send(result);
    });
    Ok((rx, done_rx))
}

/// Every consumer slot is taken.
#[derive(Debug, thiserror::Error)]
#[error(
    "this control-plane replica already serves {MAX_CONSUMERS} event consumers; retry later or use another replica"
)]
pub(crate) struct Busy;

/// Sends what `query` asks for to `tx` until done (no follow), the
/// consumer goes away, or it falls too far behind.
async fn run(
    store: Arc<dyn Store>,
    mut query: Query,
    tx: mpsc::Sender<Delivered>,
) -> Result<(), FeedError> {
    if query.after_id == 0 && query.since_unix_ms == 0 {
        query.since_unix_ms = super::now_ms() - DEFAULT_LOOKBACK_MS;
    }
    let mut cursor = Cursor {
        after: query.after_id.max(0),
        query: &query,
        tx: &tx,
        last_ms: 0,
    };
    loop {
        let read_at = cursor.backlog(store.as_ref()).await?;
        if !cursor.query.follow {
            return Ok(());
        }
        let mut watch = store.watch(keys::EVENTS, read_at + 1);
        loop {
            let batch = tokio::select! {
                batch = watch.next() => batch,
                () = tx.closed() => return Err(FeedError::Gone),
            };
            match batch {
                Some(Ok(batch)) => {
                    let puts = batch
                        .events
                        .iter()
                        .filter_map(|e| match e {
                            Event::Put(kv) => Some(kv),
                            Event::Delete { .. } => None,
                        })
                        .collect();
                    for (id, kv) in number(puts) {
                        if let Some(event) = CloudEvent::from_kv(kv, id) {
                            cursor.offer(&kv.key, event, id).await?;
                        }
                    }
                }
                Some(Err(StoreError::Compacted { .. })) | None => {
                    // History gone under us: read the kept events again
                    // from the last one sent (ids already sent are skipped).
                    tracing::debug!(
                        after = cursor.after,
                        "event watch compacted; reading the backlog again"
                    );
                    break;
                }
                Some(Err(error)) => return Err(error.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{RESOURCE_APPLIED, event_id, test_support, upkeep};

    fn ids(revisions: &[Revision]) -> Vec<EventId> {
        revisions.iter().map(|r| event_id(*r, 0)).collect()
    }

    #[tokio::test]
    async fn consumers_are_bounded_and_a_slot_frees_when_one_leaves() {
        let (store, _, events) = test_support::events();
        let follow = || Query {
            follow: true,
            ..Query::default()
        };
        let mut feeds: Vec<Feed> = (0..MAX_CONSUMERS)
            .map(|_| spawn(&events.consumers, store.clone(), follow()).expect("a free slot"))
            .collect();
        assert!(spawn(&events.consumers, store.clone(), follow()).is_err());
        // A consumer goes away: its feed ends and gives its slot back.
        let (rx, done) = feeds.pop().unwrap();
        drop(rx);
        // The feed notices on its next send: write an event.
        test_support::write(&events, 1).await;
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(5), done).await,
            Ok(Ok(Err(FeedError::Gone)))
        ));
        assert!(spawn(&events.consumers, store.clone(), follow()).is_ok());
    }

    #[tokio::test]
    async fn events_of_one_transaction_get_ids_in_the_order_they_were_made() {
        let (store, _, events) = test_support::events();
        let batch = (0..3)
            .map(|i| {
                crate::events::NewEvent::new(
                    RESOURCE_APPLIED,
                    "shop",
                    format!("s{i}"),
                    serde_json::json!({}),
                )
            })
            .collect();
        let revision = events.write(batch).await.unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let query = Query {
            since_unix_ms: 1,
            ..Query::default()
        };
        run(store.clone(), query.clone(), tx).await.unwrap();
        let got = drain(&mut rx, 3).await;
        assert_eq!(
            got.iter().map(|d| d.id).collect::<Vec<_>>(),
            (0..3).map(|n| event_id(revision, n)).collect::<Vec<_>>()
        );
        assert!(got[2].json.contains("\"subject\":\"s2\""));
        // Resuming inside the transaction: the rest of it.
        let (tx, mut rx) = mpsc::channel(8);
        run(
            store.clone(),
            Query {
                after_id: got[0].id,
                ..query
            },
            tx,
        )
        .await
        .unwrap();
        assert_eq!(drain(&mut rx, 2).await[0].id, got[1].id);
    }

    async fn drain(rx: &mut mpsc::Receiver<Delivered>, n: usize) -> Vec<Delivered> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(
                tokio::time::timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        out
    }

    #[tokio::test]
    async fn a_consumer_resumes_after_its_last_id_then_follows_and_is_told_of_losses() {
        let (store, settings, events) = test_support::events();
        let first = test_support::write(&events, 10).await;
        // Resume after the 4th: the 6 after it, in order, then live ones.
        let (tx, mut rx) = mpsc::channel(4);
        let query = Query {
            after_id: event_id(first[3], 0),
            follow: true,
            ..Query::default()
        };
        let task = tokio::spawn(run(store.clone(), query, tx));
        let got = drain(&mut rx, 6).await;
        assert_eq!(
            got.iter().map(|d| d.id).collect::<Vec<_>>(),
            ids(&first[4..])
        );
        let live = test_support::write(&events, 3).await;
        let got = drain(&mut rx, 3).await;
        assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), ids(&live));
        drop(rx);
        assert!(matches!(task.await.unwrap(), Err(FeedError::Gone)));

        // Beyond the count bound: a consumer behind it is told, once.
        test_support::write(&events, 100).await;
        upkeep::trim(store.as_ref(), settings, super::super::now_ms())
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::channel(200);
        let query = Query {
            after_id: event_id(first[3], 0),
            ..Query::default()
        };
        run(store.clone(), query, tx).await.unwrap();
        let got = drain(&mut rx, 101).await;
        assert_eq!(got[0].kind, LOST);
        assert!(got[1..].iter().all(|d| d.kind == RESOURCE_APPLIED));
        assert!(got[1..].windows(2).all(|w| w[0].id < w[1].id));
        assert!(rx.try_recv().is_err());
    }
}
