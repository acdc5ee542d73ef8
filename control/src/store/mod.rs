//! The control plane's storage: one trait, two implementations.
//!
//! - [`EtcdStore`]: production. Several control-plane replicas share one etcd
//!   cluster; leases and watches do the work.
//! - [`MemoryStore`]: embedded, for the one-command demo and unit tests. Same
//!   semantics (revisions, leases, watches, atomic transactions).
//!
//! Keys given to and returned by a [`Store`] are relative to the store's
//! prefix (default `/bulkhead/`); the implementation prepends it.

use std::time::Duration;

use futures::stream::BoxStream;

mod etcd;
mod etcd_members;
mod memory;

pub use etcd::{EtcdConfig, EtcdStore, EtcdTls};
pub use memory::MemoryStore;

/// A store revision (etcd's cluster-wide, monotonically increasing counter).
pub type Revision = i64;
/// A lease: keys attached to it disappear when it is revoked or expires.
pub type LeaseId = i64;

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// Relative to the store prefix.
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// 0 when the key has no lease.
    pub lease: LeaseId,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    /// `revision` is the revision of the deletion.
    Delete {
        key: String,
        revision: Revision,
    },
}

/// Events of a watch, in revision order. `revision` is the highest revision
/// the batch brings the watcher to: that of its last event, so a new watch
/// resumes from `revision + 1`. (Not etcd's response header revision: a
/// watcher still catching up gets the current revision in every header while
/// older events are yet to come.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<Event>,
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for history that has been compacted away; the watcher
    /// must list again and watch from the listing's revision + 1.
    #[error("revision {requested} has been compacted (oldest available {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The lease does not exist (expired or revoked).
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("store error: {0}")]
    Other(String),
}

/// What the control plane needs of a key-value store.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// One key, or `None`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key under `prefix`, sorted by key, and the revision the listing
    /// was read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;

    /// Every key in [`from_key`, `to_key`), sorted by key, and the revision
    /// the read was made at: for keys that sort by time (`stats/<unix ms>-...`),
    /// a time window. Empty when `from_key >= to_key`.
    async fn range(
        &self,
        from_key: &str,
        to_key: &str,
    ) -> Result<(Vec<KeyValue>, Revision), StoreError>;

    /// The first `limit` keys in [`from_key`, `to_key`), sorted by key: the
    /// oldest of keys that sort by time, without reading them all.
    async fn range_first(
        &self,
        from_key: &str,
        to_key: &str,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;

    /// How many keys are in [`from_key`, `to_key`) (no values are read).
    async fn count(&self, from_key: &str, to_key: &str) -> Result<u64, StoreError>;

    /// Applies every op atomically (all or nothing); returns the revision
    /// after the write.
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError>;

    /// Writes `key` only if it does not exist. `Ok(false)`: it existed and
    /// nothing was written. Atomic across replicas (a compare-and-swap).
    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<bool, StoreError>;

    /// Writes `key` only if its mod revision is still `expected` (0: only
    /// if it does not exist). `Ok(false)`: it changed meanwhile and nothing
    /// was written. Atomic across replicas (a compare-and-swap): how a
    /// read-check-write (a root rotation's stage) stays correct when two
    /// replicas race.
    async fn put_if(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let put = Op::Put {
            key: key.to_owned(),
            value,
            lease: None,
        };
        self.txn_if(key, expected, vec![put]).await
    }

    /// Applies `ops` atomically only if `key`'s mod revision is still
    /// `expected` (0: it does not exist). `Ok(false)`: it changed and
    /// nothing was written. [`Store::put_if`] with more writes riding along
    /// (the events that describe the change).
    async fn txn_if(&self, key: &str, expected: Revision, ops: Vec<Op>)
    -> Result<bool, StoreError>;

    /// Deletes one key; returns the revision of the deletion, or `None` when
    /// the key did not exist.
    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError>;

    /// Grants a lease with the given time to live (rounded up to seconds).
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Renews a lease once; returns its TTL, or `LeaseNotFound`.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Revokes a lease, deleting its keys. Revoking an unknown lease is not
    /// an error.
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Watches every key under `prefix`, starting at revision `from`
    /// (inclusive). The implementation rides out connection loss on its own:
    /// it reconnects with backoff and resumes from the last revision it
    /// delivered + 1, so the stream has no gaps and no duplicates. The stream
    /// yields `Err(Compacted)` (and ends) when history is gone; other errors
    /// are logged and retried, not yielded.
    fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> BoxStream<'static, Result<WatchBatch, StoreError>>;

    /// Cheap liveness probe for `/ready`.
    async fn health(&self) -> Result<(), StoreError>;

    /// Each member of the store and whether it answers on its own (asked
    /// one by one, not through the balanced client): what `bulkheadctl
    /// check` shows. Err only when the membership cannot be read at all.
    async fn members(&self) -> Result<Vec<MemberHealth>, StoreError>;
}

/// One store member as [`Store::members`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHealth {
    pub name: String,
    /// Its client URL (empty for the embedded store).
    pub url: String,
    /// `Ok`: what it reports (version, leader); `Err`: why it is not healthy.
    pub state: Result<String, String>,
}
