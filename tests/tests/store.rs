//! The control plane's store against real etcd (a server, a restarted
//! server, a 3-member cluster losing members) and the embedded store: the same
//! behavioural checks run on both.

use std::time::Duration;

use bulkhead_control::store::{
    EtcdConfig, EtcdStore, Event, KeyValue, LeaseId, MemoryStore, Op, Revision, Store, StoreError,
    WatchBatch,
};
use bulkhead_tests::etcd::{EtcdCluster, EtcdServer};
use futures::StreamExt;
use futures::stream::BoxStream;

type Watch = BoxStream<'static, Result<WatchBatch, StoreError>>;

/// Longest wait for one watch batch or one lease expiry.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// A lease id no store has granted.
const UNKNOWN_LEASE: LeaseId = 0x7a11_0000_0bad;

async fn connect(endpoints: Vec<String>) -> EtcdStore {
    let config = EtcdConfig {
        endpoints,
        prefix: "/bulkhead/".into(),
        connect_timeout: Duration::from_secs(1),
        // Room for a leader election inside one call.
        request_timeout: Duration::from_secs(10),
        tls: None,
    };
    EtcdStore::connect(config).await.expect("connect to etcd")
}

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.into(),
        value: value.to_vec(),
        lease: None,
    }
}

fn leased(key: &str, lease: LeaseId) -> Op {
    Op::Put {
        key: key.into(),
        value: b"leased".to_vec(),
        lease: Some(lease),
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

/// A put or a delete as a watcher sees it: key and revision.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Put(String, Revision),
    Delete(String, Revision),
}

fn seen_put(key: &str, revision: Revision) -> Seen {
    Seen::Put(key.into(), revision)
}

/// Reads batches until `count` events have arrived, checking that each
/// batch's revision is that of its last event and that revisions only grow.
async fn next_events(watch: &mut Watch, count: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut last_revision = 0;
    while seen.len() < count {
        let batch = tokio::time::timeout(EVENT_TIMEOUT, watch.next())
            .await
            .unwrap_or_else(|_| panic!("no watch event within {EVENT_TIMEOUT:?}; got {seen:?}"))
            .expect("watch ended")
            .expect("watch failed");
        assert!(
            batch.revision > last_revision,
            "batch revisions went back: {batch:?}"
        );
        last_revision = batch.revision;
        let mut top = 0;
        for event in batch.events {
            let s = match event {
                Event::Put(kv) => Seen::Put(kv.key, kv.mod_revision),
                Event::Delete { key, revision } => Seen::Delete(key, revision),
            };
            let (Seen::Put(_, rev) | Seen::Delete(_, rev)) = &s;
            assert!(*rev >= top, "events out of order in a batch");
            top = *rev;
            seen.push(s);
        }
        assert_eq!(top, last_revision, "a batch's revision is its last event's");
    }
    assert_eq!(seen.len(), count, "more events than expected: {seen:?}");
    seen
}

/// Polls until `key` is gone (a lease expiring), at most [`EVENT_TIMEOUT`].
async fn wait_until_deleted(store: &dyn Store, key: &str) {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while store.get(key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} still there after {EVENT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Behaviour both stores must share. Each check starts on an empty store.
mod checks {
    use super::*;

    pub(crate) async fn put_get_list_delete(store: &dyn Store) {
        assert_eq!(store.get("svc/a").await.unwrap(), None);
        let binary = [0u8, 159, 146, 150, 255];
        let r1 = store
            .txn(vec![put("svc/b", b"1"), put("svc/a", &binary)])
            .await
            .unwrap();
        let r2 = store
            .txn(vec![put("svc/b", b"2"), put("svd", b"x")])
            .await
            .unwrap();
        assert_eq!(r2, r1 + 1, "one revision per transaction");

        let a = store.get("svc/a").await.unwrap().expect("svc/a");
        assert_eq!(
            (
                a.value.as_slice(),
                a.create_revision,
                a.mod_revision,
                a.lease
            ),
            (&binary[..], r1, r1, 0)
        );
        let b = store.get("svc/b").await.unwrap().expect("svc/b");
        assert_eq!(
            (b.value.as_slice(), b.create_revision, b.mod_revision),
            (&b"2"[..], r1, r2)
        );

        let (kvs, revision) = store.list("svc/").await.unwrap();
        assert_eq!((keys(&kvs), revision), (vec!["svc/a", "svc/b"], r2));
        assert_eq!(
            keys(&store.list("").await.unwrap().0),
            ["svc/a", "svc/b", "svd"]
        );

        assert_eq!(store.delete("svc/a").await.unwrap(), Some(r2 + 1));
        assert_eq!(store.delete("svc/a").await.unwrap(), None);
        assert_eq!(store.get("svc/a").await.unwrap(), None);
        store.health().await.unwrap();
    }

    pub(crate) async fn range_is_half_open_and_sorted(store: &dyn Store) {
        let rev = store
            .txn(vec![
                put("t/0003", b"3"),
                put("t/0001-a", b"1"),
                put("t/0002-b", b"2"),
                put("u", b"x"),
            ])
            .await
            .unwrap();
        let (kvs, revision) = store.range("t/0001", "t/0003").await.unwrap();
        assert_eq!((keys(&kvs), revision), (vec!["t/0001-a", "t/0002-b"], rev));
        assert_eq!(keys(&store.range("t/", "v").await.unwrap().0).len(), 4);
        for (from, to) in [("t/0001", "t/0001"), ("t/9", "t/0")] {
            let (kvs, revision) = store.range(from, to).await.unwrap();
            assert_eq!((kvs.len(), revision), (0, rev), "{from}..{to}");
        }
    }

    pub(crate) async fn txn_is_all_or_nothing(store: &dyn Store) {
        let before = store.txn(vec![put("keep", b"0")]).await.unwrap();
        let err = store
            .txn(vec![
                put("a", b"1"),
                Op::Delete { key: "keep".into() },
                leased("b", UNKNOWN_LEASE),
            ])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::LeaseNotFound(UNKNOWN_LEASE)),
            "{err}"
        );
        let err = store
            .txn(vec![put("a", b"1"), put("a", b"2")])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Other(_)), "duplicate keys: {err}");
        let (kvs, revision) = store.list("").await.unwrap();
        assert_eq!(
            (keys(&kvs), revision),
            (vec!["keep"], before),
            "a failed txn wrote something"
        );

        let both = store
            .txn(vec![put("a", b"1"), Op::Delete { key: "keep".into() }])
            .await
            .unwrap();
        assert_eq!(both, before + 1);
        assert_eq!(keys(&store.list("").await.unwrap().0), ["a"]);
    }

    pub(crate) async fn create_only_if_absent(store: &dyn Store) {
        assert!(
            store
                .create("token/1", b"first".to_vec(), None)
                .await
                .unwrap()
        );
        let (_, revision) = store.list("").await.unwrap();
        assert!(
            !store
                .create("token/1", b"second".to_vec(), None)
                .await
                .unwrap()
        );
        assert_eq!(store.get("token/1").await.unwrap().unwrap().value, b"first");
        assert_eq!(
            store.list("").await.unwrap().1,
            revision,
            "a refused create wrote"
        );
        let err = store
            .create("token/2", b"x".to_vec(), Some(UNKNOWN_LEASE))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::LeaseNotFound(UNKNOWN_LEASE)),
            "{err}"
        );
    }

    pub(crate) async fn put_if_swaps_only_the_revision_it_read(store: &dyn Store) {
        assert!(
            store
                .put_if("ca/trust", 0, b"first".to_vec())
                .await
                .unwrap()
        );
        assert!(
            !store
                .put_if("ca/trust", 0, b"again".to_vec())
                .await
                .unwrap(),
            "0 means absent"
        );
        let read = store.get("ca/trust").await.unwrap().unwrap();
        // Two writers read the same revision: the first wins, the second
        // is told and writes nothing.
        assert!(
            store
                .put_if("ca/trust", read.mod_revision, b"second".to_vec())
                .await
                .unwrap()
        );
        let (_, revision) = store.list("").await.unwrap();
        assert!(
            !store
                .put_if("ca/trust", read.mod_revision, b"lost".to_vec())
                .await
                .unwrap()
        );
        assert_eq!(
            store.get("ca/trust").await.unwrap().unwrap().value,
            b"second"
        );
        assert_eq!(
            store.list("").await.unwrap().1,
            revision,
            "a refused swap wrote"
        );
    }

    pub(crate) async fn lease_expires_without_keep_alive(store: &dyn Store) {
        let lease = store.grant(Duration::from_secs(2)).await.unwrap();
        let (_, start) = store.list("").await.unwrap();
        let mut watch = store.watch("ep/", start + 1);
        let r = store
            .txn(vec![leased("ep/a", lease), put("ep/b", b"no lease")])
            .await
            .unwrap();
        assert_eq!(store.get("ep/a").await.unwrap().unwrap().lease, lease);

        wait_until_deleted(store, "ep/a").await;
        let events = next_events(&mut watch, 3).await;
        assert_eq!(events[..2], [seen_put("ep/a", r), seen_put("ep/b", r)]);
        assert!(
            matches!(&events[2], Seen::Delete(k, rev) if k == "ep/a" && *rev > r),
            "{events:?}"
        );
        assert!(store.get("ep/b").await.unwrap().is_some());
        let err = store.keep_alive(lease).await.unwrap_err();
        assert!(
            matches!(err, StoreError::LeaseNotFound(id) if id == lease),
            "{err}"
        );
    }

    pub(crate) async fn keep_alive_holds_a_lease(store: &dyn Store) {
        let lease = store.grant(Duration::from_secs(2)).await.unwrap();
        store.txn(vec![leased("ep/a", lease)]).await.unwrap();
        // Renew at a third of the TTL for more than twice the TTL.
        for _ in 0..8 {
            let ttl = store.keep_alive(lease).await.unwrap();
            assert!(ttl >= Duration::from_secs(2), "ttl {ttl:?}");
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        assert!(
            store.get("ep/a").await.unwrap().is_some(),
            "a renewed lease expired"
        );
        store.revoke(lease).await.unwrap();
    }

    pub(crate) async fn revoke_deletes_the_lease_keys(store: &dyn Store) {
        let lease = store.grant(Duration::from_secs(60)).await.unwrap();
        store
            .txn(vec![
                leased("ep/a", lease),
                leased("ep/b", lease),
                put("ep/c", b"kept"),
            ])
            .await
            .unwrap();
        store.revoke(lease).await.unwrap();
        assert_eq!(keys(&store.list("ep/").await.unwrap().0), ["ep/c"]);
        store.revoke(lease).await.unwrap(); // unknown now: not an error
        let err = store.txn(vec![leased("ep/d", lease)]).await.unwrap_err();
        assert!(
            matches!(err, StoreError::LeaseNotFound(id) if id == lease),
            "{err}"
        );
        let err = store.keep_alive(UNKNOWN_LEASE).await.unwrap_err();
        assert!(
            matches!(err, StoreError::LeaseNotFound(UNKNOWN_LEASE)),
            "{err}"
        );
    }

    pub(crate) async fn watch_delivers_changes_in_order(store: &dyn Store) {
        let (_, start) = store.list("").await.unwrap();
        // From a listing's revision + 1: nothing missed. (Watching "from now",
        // revision 0, starts whenever etcd sets the watch up: no use here.)
        let mut watch = store.watch("svc/", start + 1);
        let r1 = store.txn(vec![put("svc/a", b"1")]).await.unwrap();
        let r2 = store.txn(vec![put("svc/b", b"1")]).await.unwrap();
        let r3 = store.delete("svc/a").await.unwrap().unwrap();
        store
            .txn(vec![put("other/x", b"not watched")])
            .await
            .unwrap();
        let r5 = store
            .txn(vec![put("svc/c", b"1"), put("svc/d", b"1")])
            .await
            .unwrap();
        let expected = vec![
            seen_put("svc/a", r1),
            seen_put("svc/b", r2),
            Seen::Delete("svc/a".into(), r3),
            seen_put("svc/c", r5),
            seen_put("svc/d", r5),
        ];
        assert_eq!(next_events(&mut watch, 5).await, expected);

        // History: a watch from the past replays the same events.
        let mut replay = store.watch("svc/", r2);
        assert_eq!(next_events(&mut replay, 4).await, expected[1..]);
        let r6 = store.txn(vec![put("svc/e", b"1")]).await.unwrap();
        assert_eq!(next_events(&mut replay, 1).await, [seen_put("svc/e", r6)]);
        assert_eq!(next_events(&mut watch, 1).await, [seen_put("svc/e", r6)]);
    }
}

/// Runs each check on a fresh MemoryStore and on a fresh etcd.
macro_rules! on_both_stores {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $check() {
                    super::checks::$check(&bulkhead_control::store::MemoryStore::new()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $check() {
                    let etcd = bulkhead_tests::etcd::EtcdServer::start();
                    let store = super::connect(vec![etcd.client_url()]).await;
                    super::checks::$check(&store).await;
                }
            )*
        }
    };
}

on_both_stores!(
    put_get_list_delete,
    range_is_half_open_and_sorted,
    txn_is_all_or_nothing,
    create_only_if_absent,
    put_if_swaps_only_the_revision_it_read,
    lease_expires_without_keep_alive,
    keep_alive_holds_a_lease,
    revoke_deletes_the_lease_keys,
    watch_delivers_changes_in_order,
);

#[tokio::test]
async fn memory_watch_from_dropped_history_is_compacted() {
    let store = MemoryStore::with_history_limit(4);
    for i in 0..6 {
        store.txn(vec![put("k", &[i])]).await.unwrap();
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
    assert!(watch.next().await.is_none(), "a compacted watch must end");
}

#[tokio::test]
async fn etcd_watch_from_compacted_history_is_compacted() {
    let etcd = EtcdServer::start();
    let store = connect(vec![etcd.client_url()]).await;
    let first = store.txn(vec![put("k", b"1")]).await.unwrap();
    let last = store.txn(vec![put("k", b"2")]).await.unwrap();
    etcd.compact(last);
    let mut watch = store.watch("", first);
    let err = tokio::time::timeout(EVENT_TIMEOUT, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { requested, compacted } if requested == first && compacted == last),
        "{err}"
    );
    assert!(watch.next().await.is_none(), "a compacted watch must end");
}

#[tokio::test]
async fn etcd_prefixes_keep_stores_apart() {
    let etcd = EtcdServer::start();
    let mut config = EtcdConfig {
        endpoints: vec![etcd.client_url()],
        prefix: "/tenant-a".into(), // the missing '/' is added
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        tls: None,
    };
    let a = EtcdStore::connect(config.clone()).await.unwrap();
    assert_eq!(a.prefix(), "/tenant-a/");
    config.prefix = "/tenant-ab/".into();
    let ab = EtcdStore::connect(config).await.unwrap();
    a.txn(vec![put("k", b"a")]).await.unwrap();
    ab.txn(vec![put("k", b"ab"), put("other", b"ab")])
        .await
        .unwrap();
    assert_eq!(a.get("k").await.unwrap().unwrap().value, b"a");
    assert_eq!(keys(&a.list("").await.unwrap().0), ["k"]);
    assert_eq!(keys(&ab.list("").await.unwrap().0), ["k", "other"]);
}

#[tokio::test]
async fn etcd_connect_to_nothing_fails_in_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        ..EtcdConfig::default()
    };
    let started = std::time::Instant::now();
    let err = EtcdStore::connect(config).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn etcd_dropping_a_watch_cancels_it_in_etcd() {
    let etcd = EtcdServer::start();
    let store = connect(vec![etcd.client_url()]).await;
    let mut watch = store.watch("", 1);
    let revision = store.txn(vec![put("k", b"1")]).await.unwrap();
    assert_eq!(next_events(&mut watch, 1).await, [seen_put("k", revision)]);
    assert_eq!(etcd.watcher_count(), 1);

    drop(watch);
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while etcd.watcher_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "etcd still serves the dropped watch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kill: etcd dies without warning and comes back on the same data. Writes
/// after the restart reach the watcher exactly once, in order, with
/// revisions continuing where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_survives_a_restart() {
    let mut etcd = EtcdServer::start();
    let store = connect(vec![etcd.client_url()]).await;
    let (_, start) = store.list("").await.unwrap();
    let mut watch = store.watch("", start + 1);
    let r1 = store.txn(vec![put("k1", b"1")]).await.unwrap();
    assert_eq!(next_events(&mut watch, 1).await, [seen_put("k1", r1)]);

    let impatient = EtcdStore::connect(EtcdConfig {
        endpoints: vec![etcd.client_url()],
        request_timeout: Duration::from_millis(500),
        ..EtcdConfig::default()
    })
    .await
    .unwrap();
    etcd.kill();
    let err = impatient.get("k1").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    etcd.restart();

    // Written while the watch is still reconnecting (or just after).
    let r2 = store.txn(vec![put("k2", b"2")]).await.unwrap();
    let r3 = store
        .txn(vec![put("k3", b"3"), Op::Delete { key: "k1".into() }])
        .await
        .unwrap();
    assert_eq!(r2, r1 + 1, "etcd lost a revision over the restart");
    let expected = [
        seen_put("k2", r2),
        seen_put("k3", r3),
        Seen::Delete("k1".into(), r3),
    ];
    assert_eq!(next_events(&mut watch, 3).await, expected);

    // Once more, with the watch idle at the moment of the kill.
    etcd.kill();
    etcd.restart();
    let r4 = store.txn(vec![put("k4", b"4")]).await.unwrap();
    assert_eq!(next_events(&mut watch, 1).await, [seen_put("k4", r4)]);
}

/// Kill: each member of a 3-member cluster in turn (the leader among them),
/// with the store pointed at all three. Reads, writes, leases and the watch
/// keep working on the two that are left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_cluster_keeps_working_with_a_member_killed() {
    let mut cluster = EtcdCluster::start(3);
    let store = connect(cluster.client_urls()).await;
    let (_, start) = store.list("").await.unwrap();
    let mut watch = store.watch("data/", start + 1);

    for victim in 0..3 {
        cluster.kill_member(victim);
        // The first quorum read also waits out the election if the victim
        // led: a write sent to a follower that still trusts a dead leader
        // hangs in etcd and fails with an unknown outcome, which no client
        // may retry blindly.
        store.health().await.expect("health with a member down");

        let mut expected = Vec::new();
        for i in 0..10 {
            let key = format!("data/{victim}/{i}");
            let revision = store
                .txn(vec![put(&key, b"v")])
                .await
                .expect("write with a member down");
            let kv = store
                .get(&key)
                .await
                .expect("read with a member down")
                .expect("written key");
            assert_eq!(kv.mod_revision, revision);
            expected.push(seen_put(&key, revision));
        }
        let key = format!("data/{victim}/created");
        assert!(
            store
                .create(&key, b"v".to_vec(), None)
                .await
                .expect("create with a member down")
        );
        let revision = store.get(&key).await.unwrap().unwrap().mod_revision;
        expected.push(seen_put(&key, revision));
        let (kvs, _) = store
            .list(&format!("data/{victim}/"))
            .await
            .expect("list with a member down");
        assert_eq!(kvs.len(), 11);

        let lease = store
            .grant(Duration::from_secs(30))
            .await
            .expect("grant with a member down");
        store
            .keep_alive(lease)
            .await
            .expect("keep-alive with a member down");
        store
            .revoke(lease)
            .await
            .expect("revoke with a member down");

        assert_eq!(
            next_events(&mut watch, expected.len()).await,
            expected,
            "round {victim}"
        );
        cluster.restart_member(victim);
    }
}
