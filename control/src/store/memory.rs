//! Embedded in-memory [`Store`] with etcd's semantics, for the one-command demo
//! and unit tests: one revision per write transaction, leases that expire on a
//! timer, and watches served from a bounded history.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{Event, KeyValue, LeaseId, Op, Revision, Store, StoreError, WatchBatch};

/// Events kept for watchers that start in the past or fall behind.
const DEFAULT_HISTORY_EVENTS: usize = 10_000;
/// Most revisions handed to a watcher in one batch while it catches up.
const MAX_BATCH_REVISIONS: usize = 1_000;

/// An in-memory store. Cheap to create; clones share the same data.
///
/// Watches read from a shared, bounded history through a cursor rather than
/// each owning a queue: a consumer that stops reading costs no memory, and
/// once the history it still needs has been dropped it gets
/// [`StoreError::Compacted`], as it would from etcd.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// The latest revision; watch cursors wait on it.
    revision: watch::Sender<Revision>,
    /// Wakes the lease reaper: a lease was granted, or the store was dropped.
    reaper_wake: Arc<Notify>,
    reaper_started: AtomicBool,
}

struct State {
    revision: Revision,
    keys: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    last_lease: LeaseId,
    /// One entry per revision, oldest first.
    history: VecDeque<WatchBatch>,
    history_events: usize,
    history_limit: usize,
    /// The oldest revision a watch may start from.
    oldest: Revision,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

impl MemoryStore {
    /// An empty store keeping the last 10,000 events for watchers.
    pub fn new() -> Self {
        Self::with_history_limit(DEFAULT_HISTORY_EVENTS)
    }

    /// An empty store keeping about `events` events of history (always at
    /// least the latest revision).
    pub fn with_history_limit(events: usize) -> Self {
        let (revision, _) = watch::channel(0);
        let state = State {
            revision: 0,
            keys: BTreeMap::new(),
            leases: HashMap::new(),
            last_lease: 0,
            history: VecDeque::new(),
            history_events: 0,
            history_limit: events.max(1),
            oldest: 1,
        };
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                revision,
                reaper_wake: Arc::new(Notify::new()),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Locks the state after applying every lease expiry that is due, so that
    /// reads and writes never see a lease past its deadline whether or not the
    /// reaper task has run yet.
    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock_expired()
    }

    fn start_reaper(&self) {
        if !self.shared.reaper_started.swap(true, Ordering::AcqRel) {
            let wake = self.shared.reaper_wake.clone();
            tokio::spawn(reap_leases(Arc::downgrade(&self.shared), wake));
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("revision", &*self.shared.revision.borrow())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock_expired(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.expire_due(Instant::now()) {
            self.revision.send_replace(state.revision);
        }
        state
    }

    /// Runs `f` on the state and tells watchers if the revision moved.
    fn write<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.lock_expired();
        let before = state.revision;
        let out = f(&mut state);
        if state.revision != before {
            self.revision.send_replace(state.revision);
        }
        out
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Stored as a permit if the reaper is not waiting right now.
        self.reaper_wake.notify_one();
    }
}

/// Expires leases at their deadlines so that watchers see the deletions even
/// when nobody else touches the store. Holds only a weak reference: it ends
/// when the store is dropped.
async fn reap_leases(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        // Register before reading the deadlines so a grant in between is not missed.
        notified.as_mut().enable();
        let next_deadline = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let state = shared.lock_expired();
            state.leases.values().map(|l| l.deadline).min()
        };
        match next_deadline {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

impl State {
    /// Revokes every lease whose deadline has passed; true if anything was deleted.
    fn expire_due(&mut self, now: Instant) -> bool {
        let mut due: Vec<(Instant, LeaseId)> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, lease)| (lease.deadline, *id))
            .collect();
        due.sort_unstable();
        let before = self.revision;
        for (_, id) in due {
            self.revoke_lease(id);
        }
        self.revision != before
    }

    /// Removes a lease and deletes its keys in one revision, as etcd does.
    fn revoke_lease(&mut self, id: LeaseId) {
        if let Some(lease) = self.leases.remove(&id) {
            let ops = lease
                .keys
                .into_iter()
                .map(|key| Op::Delete { key })
                .collect();
            self.apply(ops)
                .expect("deleting a lease's keys cannot fail");
        }
    }

    /// Applies a transaction: every op or none, one revision for all of them.
    fn apply(&mut self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        let mut seen = HashSet::new();
        for op in &ops {
            let key = match op {
                Op::Put { key, lease, .. } => {
                    if let Some(id) = lease.filter(|id| *id != 0)
                        && !self.leases.contains_key(&id)
                    {
                        return Err(StoreError::LeaseNotFound(id));
                    }
                    key
                }
                Op::Delete { key } => key,
            };
            if !seen.insert(key.as_str()) {
                // etcd refuses these too ("duplicate key given in txn request").
                return Err(StoreError::Other(format!(
                    "duplicate key {key:?} in one transaction"
                )));
            }
        }

        let revision = self.revision + 1;
        let mut events = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let lease = lease.unwrap_or(0);
                    let create_revision = match self.keys.get(&key) {
                        Some(old) => {
                            let (old_lease, created) = (old.lease, old.create_revision);
                            if old_lease != lease {
                                self.detach(old_lease, &key);
                            }
                            created
                        }
                        None => revision,
                    };
                    if let Some(l) = self.leases.get_mut(&lease) {
                        l.keys.insert(key.clone());
                    }
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision,
                        mod_revision: revision,
                        lease,
                    };
                    self.keys.insert(key, kv.clone());
                    events.push(Event::Put(kv));
                }
                Op::Delete { key } => {
                    if let Some(old) = self.keys.remove(&key) {
                        self.detach(old.lease, &key);
                        events.push(Event::Delete { key, revision });
                    }
                }
            }
        }
        if events.is_empty() {
            // Nothing changed (only deletes of absent keys): no new revision.
            return Ok(self.revision);
        }
        self.revision = revision;
        self.record(WatchBatch { revision, events });
        Ok(revision)
    }

    fn detach(&mut self, lease: LeaseId, key: &str) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.remove(key);
        }
    }

    fn record(&mut self, batch: WatchBatch) {
        self.history_events += batch.events.len();
        self.history.push_back(batch);
        while self.history_events > self.history_limit && self.history.len() > 1 {
            if let Some(dropped) = self.history.pop_front() {
                self.history_events -= dropped.events.len();
                self.oldest = dropped.revision + 1;
            }
        }
    }

    /// What a watch cursor at `next` gets now.
    fn catch_up(&self, prefix: &str, next: Revision) -> CatchUp {
        if next < self.oldest {
            return CatchUp::Compacted {
                oldest: self.oldest,
            };
        }
        let start = self.history.partition_point(|b| b.revision < next);
        let mut events = Vec::new();
        let mut last = None;
        let mut revisions = 0;
        for batch in self.history.range(start..) {
            let before = events.len();
            events.extend(
                batch
                    .events
                    .iter()
                    .filter(|e| event_key(e).starts_with(prefix))
                    .cloned(),
            );
            if events.len() > before {
                last = Some(batch.revision);
                revisions += 1;
                if revisions == MAX_BATCH_REVISIONS {
                    break;
                }
            }
        }
        match last {
            Some(revision) => CatchUp::Batch(WatchBatch { revision, events }),
            None => CatchUp::UpTo(self.revision),
        }
    }
}

fn event_key(event: &Event) -> &str {
    match event {
        Event::Put(kv) => &kv.key,
        Event::Delete { key, .. } => key,
    }
}

enum CatchUp {
    Batch(WatchBatch),
    /// Nothing for this watcher up to and including this revision.
    UpTo(Revision),
    Compacted {
        oldest: Revision,
    },
}

struct Cursor {
    store: Weak<Shared>,
    revisions: watch::Receiver<Revision>,
    prefix: String,
    next: Revision,
    done: bool,
}

impl Cursor {
    async fn next_batch(mut self) -> Option<(Result<WatchBatch, StoreError>, Self)> {
        if self.done {
            return None;
        }
        loop {
            // Mark the current revision seen before reading, so a write that
            // lands after the read wakes `changed` below.
            self.revisions.borrow_and_update();
            let catch_up = {
                let shared = self.store.upgrade()?;
                let state = shared.lock_expired();
                state.catch_up(&self.prefix, self.next)
            };
            match catch_up {
                CatchUp::Batch(batch) => {
                    self.next = batch.revision + 1;
                    return Some((Ok(batch), self));
                }
                CatchUp::Compacted { oldest } => {
                    self.done = true;
                    let err = StoreError::Compacted {
                        requested: self.next,
                        compacted: oldest,
                    };
                    return Some((Err(err), self));
                }
                CatchUp::UpTo(revision) => {
                    // Skipping revisions nobody here cares about keeps an idle
                    // watcher inside the history window.
                    self.next = self.next.max(revision + 1);
                    // Errors once the store is dropped: the stream ends.
                    self.revisions.changed().await.ok()?;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.state().keys.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let state = self.state();
        let kvs = state
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok((kvs, state.revision))
    }

    async fn range(
        &self,
        from_key: &str,
        to_key: &str,
    ) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let state = self.state();
        if from_key >= to_key {
            return Ok((Vec::new(), state.revision));
        }
        let kvs = state
            .keys
            .range::<str, _>((Bound::Included(from_key), Bound::Excluded(to_key)))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok((kvs, state.revision))
    }

    async fn range_first(
        &self,
        from_key: &str,
        to_key: &str,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let state = self.state();
        if from_key >= to_key {
            return Ok(Vec::new());
        }
        Ok(state
            .keys
            .range::<str, _>((Bound::Included(from_key), Bound::Excluded(to_key)))
            .take(limit)
            .map(|(_, kv)| kv.clone())
            .collect())
    }

    async fn count(&self, from_key: &str, to_key: &str) -> Result<u64, StoreError> {
        let state = self.state();
        if from_key >= to_key {
            return Ok(0);
        }
        Ok(state
            .keys
            .range::<str, _>((Bound::Included(from_key), Bound::Excluded(to_key)))
            .count() as u64)
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.shared.write(|state| state.apply(ops))
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<bool, StoreError> {
        self.shared.write(|state| {
            if state.keys.contains_key(key) {
                return Ok(false);
            }
            let put = Op::Put {
                key: key.to_owned(),
                value,
                lease,
            };
            state.apply(vec![put]).map(|_| true)
        })
    }

    async fn txn_if(
        &self,
        key: &str,
        expected: Revision,
        ops: Vec<Op>,
    ) -> Result<bool, StoreError> {
        self.shared.write(|state| {
            let current = state.keys.get(key).map_or(0, |kv| kv.mod_revision);
            if current != expected {
                return Ok(false);
            }
            state.apply(ops).map(|_| true)
        })
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.shared.write(|state| {
            if !state.keys.contains_key(key) {
                return Ok(None);
            }
            let del = Op::Delete {
                key: key.to_owned(),
            };
            state.apply(vec![del]).map(Some)
        })
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.start_reaper();
        let ttl = Duration::from_secs(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .max(Duration::from_secs(1));
        let id = {
            let mut state = self.state();
            state.last_lease += 1;
            let id = state.last_lease;
            let lease = Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            };
            state.leases.insert(id, lease);
            id
        };
        self.shared.reaper_wake.notify_one();
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let mut state = self.state();
        let l = state
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        // A later deadline needs no wake-up: the reaper re-reads deadlines
        // when the earlier one passes.
        l.deadline = Instant::now() + l.ttl;
        Ok(l.ttl)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.shared.write(|state| state.revoke_lease(lease));
        Ok(())
    }

    fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> BoxStream<'static, Result<WatchBatch, StoreError>> {
        let current = self.state().revision;
        let cursor = Cursor {
            store: Arc::downgrade(&self.shared),
            revisions: self.shared.revision.subscribe(),
            prefix: prefix.to_owned(),
            // As in etcd, 0 means "from the next write on".
            next: if from <= 0 { current + 1 } else { from },
            done: false,
        };
        stream::unfold(cursor, Cursor::next_batch).boxed()
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn members(&self) -> Result<Vec<super::MemberHealth>, StoreError> {
        Ok(vec![super::MemberHealth {
            name: "memory".to_owned(),
            url: String::new(),
            state: Ok("embedded in this replica (state is lost when it stops)".to_owned()),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            lease: None,
        }
    }

    fn leased(key: &str, lease: LeaseId) -> Op {
        Op::Put {
            key: key.to_owned(),
            value: b"v".to_vec(),
            lease: Some(lease),
        }
    }

    async fn next(watch: &mut BoxStream<'static, Result<WatchBatch, StoreError>>) -> WatchBatch {
        watch
            .next()
            .await
            .expect("watch ended")
            .expect("watch failed")
    }

    #[tokio::test]
    async fn a_transaction_is_one_revision() {
        let store = MemoryStore::new();
        let first = store.txn(vec![put("a", "1")]).await.unwrap();
        let rev = store
            .txn(vec![
                put("a", "2"),
                put("b", "1"),
                Op::Delete { key: "zz".into() },
            ])
            .await
            .unwrap();
        assert_eq!((first, rev), (1, 2));
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!(
            (a.create_revision, a.mod_revision, a.value),
            (1, 2, b"2".to_vec())
        );
        assert_eq!(store.get("b").await.unwrap().unwrap().create_revision, 2);
        // Deleting nothing changes nothing, not even the revision.
        assert_eq!(
            store
                .txn(vec![Op::Delete { key: "zz".into() }])
                .await
                .unwrap(),
            2
        );
        assert_eq!(store.delete("zz").await.unwrap(), None);
        assert_eq!(store.delete("a").await.unwrap(), Some(3));
    }

    #[tokio::test]
    async fn a_range_is_half_open_and_sorted() {
        let store = MemoryStore::new();
        let rev = store
            .txn(vec![
                put("stats/0000000002000-b", "2"),
                put("stats/0000000001000-a", "1"),
                put("stats/0000000003000-a", "3"),
                put("statz", "x"),
            ])
            .await
            .unwrap();
        let keys = |kvs: Vec<KeyValue>| kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
        let (kvs, revision) = store
            .range("stats/0000000001000", "stats/0000000003000")
            .await
            .unwrap();
        assert_eq!(revision, rev);
        assert_eq!(
            keys(kvs),
            ["stats/0000000001000-a", "stats/0000000002000-b"]
        );
        // Empty and backwards ranges read nothing (and do not panic).
        for (from, to) in [("stats/1", "stats/1"), ("stats/9", "stats/0")] {
            let (kvs, revision) = store.range(from, to).await.unwrap();
            assert_eq!((kvs.len(), revision), (0, rev));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unrenewed_lease_expires_and_watchers_see_the_deletes() {
        let store = MemoryStore::new();
        let lease = store.grant(Duration::from_millis(4_500)).await.unwrap();
        let rev = store
            .txn(vec![leased("a", lease), leased("b", lease)])
            .await
            .unwrap();
        let mut watch = store.watch("", rev + 1);

        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            store.keep_alive(lease).await.unwrap(),
            Duration::from_secs(5)
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            store.get("a").await.unwrap().is_some(),
            "renewed lease expired"
        );

        // Nobody touches the store: the reaper alone must expire the lease.
        let batch = next(&mut watch).await;
        let deleted = vec![
            Event::Delete {
                key: "a".into(),
                revision: rev + 1,
            },
            Event::Delete {
                key: "b".into(),
                revision: rev + 1,
            },
        ];
        assert_eq!(
            batch,
            WatchBatch {
                revision: rev + 1,
                events: deleted
            }
        );
        assert!(store.get("a").await.unwrap().is_none());
        assert!(matches!(
            store.keep_alive(lease).await,
            Err(StoreError::LeaseNotFound(id)) if id == lease
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_exact_even_before_the_reaper_runs() {
        let store = MemoryStore::new();
        let lease = store.grant(Duration::from_secs(2)).await.unwrap();
        store.txn(vec![leased("a", lease)]).await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(store.get("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn revoke_deletes_the_lease_keys_and_ignores_unknown_leases() {
        let store = MemoryStore::new();
        let lease = store.grant(Duration::from_secs(60)).await.unwrap();
        store
            .txn(vec![leased("a", lease), put("b", "kept")])
            .await
            .unwrap();
        // Re-putting without the lease detaches the key from it.
        store.txn(vec![put("b", "again")]).await.unwrap();
        store.txn(vec![leased("c", lease)]).await.unwrap();
        store.txn(vec![put("c", "detached")]).await.unwrap();
        store.revoke(lease).await.unwrap();
        let (kvs, _) = store.list("").await.unwrap();
        let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["b", "c"]);
        store.revoke(lease).await.unwrap();
        store.revoke(12345).await.unwrap();
    }

    #[tokio::test]
    async fn watch_replays_history_then_follows_writes() {
        let store = MemoryStore::new();
        store.txn(vec![put("a", "1")]).await.unwrap();
        store.txn(vec![put("other", "x")]).await.unwrap();
        store.txn(vec![put("a", "2"), put("b", "1")]).await.unwrap();
        let mut from_start = store.watch("", 1);
        let mut only_new = store.watch("", 0);
        let mut only_b = store.watch("b", 1);

        // Catching up may merge revisions into one batch.
        let replay = next(&mut from_start).await;
        assert_eq!(replay.revision, 3);
        assert_eq!(replay.events.len(), 4);
        assert_eq!(next(&mut only_b).await.revision, 3);

        store.delete("a").await.unwrap();
        let deleted = WatchBatch {
            revision: 4,
            events: vec![Event::Delete {
                key: "a".into(),
                revision: 4,
            }],
        };
        assert_eq!(next(&mut only_new).await, deleted);
        assert_eq!(next(&mut from_start).await, deleted);
        store.txn(vec![put("b", "2")]).await.unwrap();
        assert_eq!(next(&mut only_b).await.revision, 5);
        assert_eq!(next(&mut only_new).await.revision, 5);
    }

    #[tokio::test]
    async fn watching_compacted_history_fails_then_ends() {
        let store = MemoryStore::with_history_limit(3);
        for i in 0..5 {
            store.txn(vec![put("k", &i.to_string())]).await.unwrap();
        }
        let mut watch = store.watch("", 1);
        let err = watch.next().await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Compacted {
                    requested: 1,
                    compacted: 3
                }
            ),
            "{err}"
        );
        assert!(watch.next().await.is_none());
        // The retained history is still served.
        assert_eq!(next(&mut store.watch("", 3)).await.revision, 5);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_compacted() {
        let store = MemoryStore::with_history_limit(10);
        let mut slow = store.watch("", 0);
        let mut idle = store.watch("elsewhere/", 0);
        for i in 0..3 {
            store.txn(vec![put("k", &i.to_string())]).await.unwrap();
        }
        assert_eq!(next(&mut slow).await.revision, 3);
        for i in 0..20 {
            store.txn(vec![put("k", &i.to_string())]).await.unwrap();
            // A watcher with nothing to deliver keeps up as long as it is polled.
            assert!(futures::poll!(idle.next()).is_pending());
        }
        let err = slow.next().await.unwrap().unwrap_err();
        assert!(
            matches!(err, StoreError::Compacted { requested: 4, .. }),
            "{err}"
        );
        store.txn(vec![put("elsewhere/x", "1")]).await.unwrap();
        assert_eq!(next(&mut idle).await.revision, 24);
    }

    #[tokio::test]
    async fn dropping_the_store_ends_its_watches() {
        let store = MemoryStore::new();
        let mut watch = store.watch("", 0);
        drop(store);
        assert!(watch.next().await.is_none());
    }
}
