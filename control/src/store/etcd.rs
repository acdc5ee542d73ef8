//! etcd-backed [`Store`] (production): every key under one prefix, each
//! request bounded by a timeout and failed over between cluster members,
//! watches that reconnect and resume without gaps or duplicates.
//!
//! Failover: etcd-client spreads requests over the members with tonic's
//! power-of-two-choices balancer, whose load metric is constant, so every
//! request goes to a random member — a dead one included. Its lazy connection
//! reports "ready" with the connect error stored and fails the next request
//! handed to it, and the balancer never drops a failing member. So requests are
//! retried here: idempotent ones on any transport failure, writes only when
//! etcd cannot have applied them (the connection was never made, or etcd
//! refused the request for want of a leader). A write that failed in flight
//! returns [`StoreError::Unavailable`]: its outcome is unknown.
//!
//! Each watch is a task (spawned on the current tokio runtime) that owns the
//! etcd watch. A watch from revision 0 starts at the revision current when
//! that task first reaches etcd, some time after `watch` returns: to miss
//! nothing, watch from a listing's revision + 1.

use std::future::Future;
use std::time::Duration;

use bulkhead_process::Backoff;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, debug, warn};

use super::{Event, KeyValue, LeaseId, MemberHealth, Op, Revision, Store, StoreError, WatchBatch};

/// Batches buffered between a watch task and its consumer.
const WATCH_BUFFER: usize = 64;
const WATCH_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(500));
/// Keys per page when listing, to stay far below gRPC's 4 MiB message limit.
const LIST_PAGE: i64 = 1_000;
/// HTTP/2 pings on connections with open streams, so a watch on a member
/// that vanished without closing its socket is noticed. Not below etcd's
/// `--grpc-keepalive-min-time` (5 s), and never on idle connections: etcd does
/// not permit those and answers them with GOAWAY, killing in-flight requests.
const HTTP2_KEEPALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));

/// etcd refuses these before proposing anything: safe to retry even writes.
const REFUSED_UNAPPLIED: &[&str] = &[
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "etcdserver: not capable",
];

/// Where and how to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs of the members, e.g. `http://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Every key lives under it; a missing trailing `/` is added.
    pub prefix: String,
    /// Bounds establishing one connection to one member.
    pub connect_timeout: Duration,
    /// Bounds one store call, retries included.
    pub request_timeout: Duration,
    /// TLS to etcd (https:// endpoints), when the cluster requires it.
    pub tls: Option<EtcdTls>,
}

/// PEM material for TLS to etcd: the CA that signed the members'
/// certificates and, for client-certificate auth, our certificate and key.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/bulkhead/".to_owned(),
            connect_timeout: Duration::from_secs(2),
            // Room for a leader election (a member lost, the machine busy)
            // inside one call, well within the gRPC API's 30 s.
            request_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// A [`Store`] on an etcd cluster. Clones share one client.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// How members are dialled: also for asking each one on its own.
    options: ConnectOptions,
    prefix: String,
    request_timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How a failed request may be retried.
#[derive(Clone, Copy)]
enum Retry {
    /// Any transport failure: repeating the request changes nothing.
    Idempotent,
    /// Only when etcd cannot have applied it.
    IfUnapplied,
}

/// A request that did not succeed.
enum Failure {
    Etcd(etcd_client::Error),
    TimedOut(Duration),
}

impl EtcdStore {
    /// Connects and checks that the cluster answers (a quorum read), so that a
    /// wrong address or a cluster without quorum shows at start-up.
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Other("no etcd endpoints configured".into()));
        }
        let mut prefix = config.prefix;
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(HTTP2_KEEPALIVE.0, HTTP2_KEEPALIVE.1)
            .with_keep_alive_while_idle(false)
            // A member cut off from the leader refuses requests at once and
            // ends its watches, instead of serving stale reads or going silent.
            .with_require_leader(true);
        let options = match &config.tls {
            Some(tls) => {
                let mut t = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
                if let Some((cert, key)) = &tls.client {
                    t = t.identity(etcd_client::Identity::from_pem(cert, key));
                }
                options.with_tls(t)
            }
            None => options,
        };
        let client = timeout(
            config.connect_timeout,
            Client::connect(&config.endpoints, Some(options.clone())),
        )
        .await
        .map_err(|_| StoreError::Unavailable("etcd client setup timed out".into()))?
        .map_err(|e| StoreError::Other(format!("etcd endpoints {:?}: {e}", config.endpoints)))?;
        let store = Self {
            client,
            options,
            prefix,
            request_timeout: config.request_timeout,
        };
        store
            .health()
            .await
            .map_err(|e| StoreError::Unavailable(format!("etcd at {:?}: {e}", config.endpoints)))?;
        Ok(store)
    }

    /// The prefix every key is stored under (ends with `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `attempt` until it succeeds, fails in a way `retry` does not
    /// cover, or the request timeout passes.
    async fn request<T, Fut>(
        &self,
        what: &'static str,
        retry: Retry,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let mut backoff = Backoff::new(RETRY_BACKOFF.0, RETRY_BACKOFF.1);
        loop {
            // An idempotent request stuck on one member (say, a follower whose
            // leader just died) gives up halfway, leaving time to try another.
            let attempt_deadline = match retry {
                Retry::Idempotent => deadline.min(Instant::now() + self.request_timeout / 2),
                Retry::IfUnapplied => deadline,
            };
            let err = match timeout_at(attempt_deadline, attempt()).await {
                Err(_) if attempt_deadline < deadline => {
                    debug!(request = what, "etcd request stalled; retrying");
                    continue;
                }
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) => err,
                Err(_) => return Err(Failure::TimedOut(self.request_timeout)),
            };
            let retryable = match retry {
                Retry::Idempotent => is_transient(&err),
                Retry::IfUnapplied => is_unapplied(&err),
            };
            let delay = backoff.next_delay();
            if !retryable || Instant::now() + delay >= deadline {
                return Err(Failure::Etcd(err));
            }
            debug!(request = what, error = %err, retry_in = ?delay, "etcd request failed; retrying");
            sleep(delay).await;
        }
    }

    fn to_key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let key = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix(self.prefix.as_str()))
            .ok_or_else(|| {
                StoreError::Other(format!(
                    "etcd key {:?} is not UTF-8 under {}",
                    String::from_utf8_lossy(kv.key()),
                    self.prefix
                ))
            })?;
        Ok(KeyValue {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        })
    }

    /// Every key in [`start`, `end`) (full keys), paged, read at one
    /// revision.
    async fn read_range(
        &self,
        mut start: Vec<u8>,
        end: Vec<u8>,
    ) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            // Later pages read at the first page's revision: one consistent snapshot.
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = self
                .request("list", Retry::Idempotent, || {
                    let mut kv = self.client.kv_client();
                    let (start, options) = (start.clone(), options.clone());
                    async move { kv.get(start, Some(options)).await }
                })
                .await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                out.push(self.to_key_value(kv)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    /// A transaction's writes, and a lease to name if one is not found.
    fn txn_ops(&self, ops: Vec<Op>) -> (Vec<TxnOp>, Option<LeaseId>) {
        let lease_hint = ops.iter().find_map(|op| match op {
            Op::Put { lease, .. } => *lease,
            Op::Delete { .. } => None,
        });
        let txn_ops = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => TxnOp::put(
                    self.full_key(&key),
                    value,
                    lease.map(|id| PutOptions::new().with_lease(id)),
                ),
                Op::Delete { key } => TxnOp::delete(self.full_key(&key), None),
            })
            .collect();
        (txn_ops, lease_hint)
    }

    /// The cluster's current revision (a quorum read).
    async fn current_revision(&self) -> Result<Revision, Failure> {
        let resp = self
            .request("get", Retry::Idempotent, || {
                let mut kv = self.client.kv_client();
                let key = self.prefix.clone();
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let full = self.full_key(key);
        let resp = self
            .request("get", Retry::Idempotent, || {
                let mut kv = self.client.kv_client();
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .await?;
        resp.kvs()
            .first()
            .map(|kv| self.to_key_value(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let full = self.full_key(prefix);
        let end = prefix_end(full.as_bytes());
        self.read_range(full.into_bytes(), end).await
    }

    async fn range(
        &self,
        from_key: &str,
        to_key: &str,
    ) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        if from_key >= to_key {
            // An empty range; not sent, since etcd gives some ends (`\0`)
            // meanings of their own.
            return Ok((Vec::new(), self.current_revision().await?));
        }
        let (from, to) = (self.full_key(from_key), self.full_key(to_key));
        self.read_range(from.into_bytes(), to.into_bytes()).await
    }

    async fn range_first(
        &self,
        from_key: &str,
        to_key: &str,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if from_key >= to_key || limit == 0 {
            return Ok(Vec::new());
        }
        let (from, to) = (self.full_key(from_key), self.full_key(to_key));
        let options = GetOptions::new()
            .with_range(to)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let resp = self
            .request("range", Retry::Idempotent, || {
                let mut kv = self.client.kv_client();
                let (from, options) = (from.clone(), options.clone());
                async move { kv.get(from, Some(options)).await }
            })
            .await?;
        resp.kvs().iter().map(|kv| self.to_key_value(kv)).collect()
    }

    async fn count(&self, from_key: &str, to_key: &str) -> Result<u64, StoreError> {
        if from_key >= to_key {
            return Ok(0);
        }
        let (from, to) = (self.full_key(from_key), self.full_key(to_key));
        let options = GetOptions::new().with_range(to).with_count_only();
        let resp = self
            .request("count", Retry::Idempotent, || {
                let mut kv = self.client.kv_client();
                let (from, options) = (from.clone(), options.clone());
                async move { kv.get(from, Some(options)).await }
            })
            .await?;
        Ok(u64::try_from(resp.count()).unwrap_or(0))
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        let (txn_ops, lease_hint) = self.txn_ops(ops);
        let resp = self
            .request("txn", Retry::IfUnapplied, || {
                let mut kv = self.client.kv_client();
                let txn = Txn::new().and_then(txn_ops.clone());
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(|f| f.into_store_error(lease_hint))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<bool, StoreError> {
        let full = self.full_key(key);
        let put = TxnOp::put(
            full.clone(),
            value,
            lease.map(|id| PutOptions::new().with_lease(id)),
        );
        let resp = self
            .request("create", Retry::IfUnapplied, || {
                let mut kv = self.client.kv_client();
                let txn = Txn::new()
                    .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
                    .and_then([put.clone()]);
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(|f| f.into_store_error(lease))?;
        Ok(resp.succeeded())
    }

    async fn txn_if(
        &self,
        key: &str,
        expected: Revision,
        ops: Vec<Op>,
    ) -> Result<bool, StoreError> {
        let full = self.full_key(key);
        let (txn_ops, lease_hint) = self.txn_ops(ops);
        let resp = self
            .request("txn_if", Retry::IfUnapplied, || {
                let mut kv = self.client.kv_client();
                // A key that does not exist has mod revision 0.
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        full.clone(),
                        CompareOp::Equal,
                        expected,
                    )])
                    .and_then(txn_ops.clone());
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(|f| f.into_store_error(lease_hint))?;
        Ok(resp.succeeded())
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        let full = self.full_key(key);
        let resp = self
            .request("delete", Retry::IfUnapplied, || {
                let mut kv = self.client.kv_client();
                let full = full.clone();
                async move { kv.delete(full, None).await }
            })
            .await?;
        Ok((resp.deleted() > 0).then(|| resp.header().map_or(0, |h| h.revision())))
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        // A retry after a lost answer leaks a lease, which simply expires.
        let resp = self
            .request("grant", Retry::Idempotent, || {
                let mut lease = self.client.lease_client();
                async move { lease.grant(seconds, None).await }
            })
            .await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let ttl = self
            .request("keep-alive", Retry::Idempotent, || {
                let mut client = self.client.lease_client();
                async move {
                    // etcd has no unary renewal. The first exchange on the
                    // stream renews but etcd-client keeps its TTL to itself,
                    // so ask once more.
                    let (mut keeper, mut responses) = client.keep_alive(lease).await?;
                    keeper.keep_alive().await?;
                    match responses.message().await? {
                        Some(resp) if resp.ttl() > 0 => Ok(resp.ttl()),
                        Some(_) => Err(etcd_client::Error::LeaseKeepAliveError(
                            "lease not found".into(),
                        )),
                        None => Err(etcd_client::Error::LeaseKeepAliveError(
                            "keep-alive stream ended".into(),
                        )),
                    }
                }
            })
            .await
            .map_err(|f| f.into_store_error(Some(lease)))?;
        Ok(Duration::from_secs(ttl.unsigned_abs()))
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let result = self
            .request("revoke", Retry::Idempotent, || {
                let mut client = self.client.lease_client();
                async move { client.revoke(lease).await }
            })
            .await;
        match result.map_err(|f| f.into_store_error(Some(lease))) {
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> BoxStream<'static, Result<WatchBatch, StoreError>> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let key = self.full_key(prefix);
        let span = tracing::info_span!("etcd_watch", prefix = %key);
        tokio::spawn(follow_watch(self.clone(), key, from, tx).instrument(span));
        ReceiverStream::new(rx).boxed()
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.current_revision().await?;
        Ok(())
    }

    async fn members(&self) -> Result<Vec<MemberHealth>, StoreError> {
        let members = self
            .request("member_list", Retry::Idempotent, || {
                super::etcd_members::members(&self.client, &self.options)
            })
            .await?;
        Ok(members)
    }
}

/// Owns one store watch: keeps an etcd watch open on `key` (a prefix),
/// reopening it after any failure from the revision after the last one it
/// delivered. Ends when the consumer drops the stream (dropping the gRPC
/// stream makes etcd cancel the watch) or when history is compacted.
async fn follow_watch(
    store: EtcdStore,
    key: String,
    from: Revision,
    tx: mpsc::Sender<Result<WatchBatch, StoreError>>,
) {
    let mut next = from;
    let mut backoff = Backoff::new(WATCH_BACKOFF.0, WATCH_BACKOFF.1);
    loop {
        let lost = tokio::select! {
            () = tx.closed() => return,
            lost = watch_once(&store, &key, &mut next, &tx, &mut backoff) => lost,
        };
        let error = match lost {
            WatchEnd::ConsumerGone => return,
            WatchEnd::Compacted(err) => {
                let _ = tx.send(Err(err)).await;
                return;
            }
            WatchEnd::Lost(error) => error,
        };
        let delay = backoff.next_delay();
        warn!(%error, resume_from = next, retry_in = ?delay, "etcd watch lost; reconnecting");
        tokio::select! {
            () = tx.closed() => return,
            () = sleep(delay) => {}
        }
    }
}

enum WatchEnd {
    ConsumerGone,
    Compacted(StoreError),
    Lost(String),
}

/// One etcd watch from `*next` on, until it fails. Advances `*next` past
/// every delivered batch.
async fn watch_once(
    store: &EtcdStore,
    key: &str,
    next: &mut Revision,
    tx: &mpsc::Sender<Result<WatchBatch, StoreError>>,
    backoff: &mut Backoff,
) -> WatchEnd {
    if *next <= 0 {
        // Pin "from now" to a revision, so a reconnect before the first
        // event still resumes at the right place.
        match store.current_revision().await {
            Ok(revision) => *next = revision + 1,
            Err(f) => return WatchEnd::Lost(StoreError::from(f).to_string()),
        }
    }
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*next)
        .with_progress_notify();
    let mut watch_client = store.client.watch_client();
    let mut stream = match timeout(
        store.request_timeout,
        watch_client.watch(key.to_owned(), Some(options)),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return WatchEnd::Lost(e.to_string()),
        Err(_) => return WatchEnd::Lost("no answer to the watch request".into()),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return WatchEnd::Lost("etcd closed the watch stream".into()),
            Err(e) => return WatchEnd::Lost(e.to_string()),
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return WatchEnd::Compacted(StoreError::Compacted {
                    requested: *next,
                    compacted: resp.compact_revision(),
                });
            }
            return WatchEnd::Lost(format!("etcd canceled the watch: {}", resp.cancel_reason()));
        }
        if resp.created() {
            backoff.reset();
        }
        if resp.events().is_empty() {
            // A progress notification: etcd sends them only to watchers that
            // have caught up, so nothing at or below its revision is pending.
            // (The header of a batch of events is no such promise: a watcher
            // catching up gets the current revision with old events.)
            if !resp.created()
                && let Some(header) = resp.header()
            {
                *next = (*next).max(header.revision() + 1);
            }
            continue;
        }
        let mut events = Vec::with_capacity(resp.events().len());
        let mut revision = *next;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            revision = revision.max(kv.mod_revision());
            let converted = match event.event_type() {
                EventType::Put => store.to_key_value(kv).map(Event::Put),
                EventType::Delete => store.to_key_value(kv).map(|kv| Event::Delete {
                    key: kv.key,
                    revision: kv.mod_revision,
                }),
            };
            match converted {
                Ok(event) => events.push(event),
                Err(e) => warn!(error = %e, "skipping a watch event"),
            }
        }
        if tx.send(Ok(WatchBatch { revision, events })).await.is_err() {
            return WatchEnd::ConsumerGone;
        }
        *next = revision + 1;
    }
}

impl Failure {
    fn into_store_error(self, lease: Option<LeaseId>) -> StoreError {
        match self {
            Failure::TimedOut(after) => {
                StoreError::Unavailable(format!("etcd did not answer within {after:?}"))
            }
            Failure::Etcd(err) if is_lease_not_found(&err) => {
                StoreError::LeaseNotFound(lease.unwrap_or_default())
            }
            Failure::Etcd(err) if is_transient(&err) => StoreError::Unavailable(err.to_string()),
            Failure::Etcd(err) => StoreError::Other(err.to_string()),
        }
    }
}

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        failure.into_store_error(None)
    }
}

fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m == "lease not found",
        _ => false,
    }
}

/// Failures a repeated request may not meet again: lost connections,
/// elections, overload.
fn is_transient(err: &etcd_client::Error) -> bool {
    use tonic::Code;
    match err {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
        ),
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_) => true,
        etcd_client::Error::LeaseKeepAliveError(m) => m != "lease not found",
        _ => false,
    }
}

/// Failures that prove etcd never applied the request: no connection could
/// be made, the request never left the client, or etcd refused it up front.
fn is_unapplied(err: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = err else {
        return false;
    };
    if REFUSED_UNAPPLIED.contains(&status.message()) {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        // hyper cancels requests it never sent when their connection closes.
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// The end of etcd's range for "every key starting with `prefix`".
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/bulkhead/"), b"/bulkhead0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn only_refusals_and_unsent_requests_count_as_unapplied() {
        let refused = tonic::Status::unavailable("etcdserver: no leader");
        assert!(is_unapplied(&etcd_client::Error::GRpcStatus(refused)));
        let ambiguous = tonic::Status::unavailable("etcdserver: request timed out");
        assert!(!is_unapplied(&etcd_client::Error::GRpcStatus(ambiguous)));
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        )));
        assert_eq!(connect.code(), tonic::Code::Unavailable);
        assert!(is_unapplied(&etcd_client::Error::GRpcStatus(connect)));
    }
}
