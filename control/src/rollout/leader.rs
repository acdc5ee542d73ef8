//! Which replica drives rollouts: the one that holds the key
//! `leader/rollouts` on its lease. The key is created only if absent (a
//! compare-and-swap), so at most one replica holds it; the holder renews
//! its lease every third of the TTL and steps down at the first renewal
//! that fails. When the holder dies, its lease expires within the TTL
//! (`--leader-lease-ttl`, default 10 s) and a follower, which looks every
//! tenth of the TTL, takes over.
//!
//! Leadership alone does not make writes safe — a leader that stalls past
//! its TTL may still write once more — so every write the controller makes
//! is a compare-and-swap as well (see [`super::controller`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::keys;
use crate::store::{LeaseId, Store, StoreError};

/// How often a follower looks for a vacant seat: a tenth of the TTL,
/// between 100 ms and 1 s.
fn retry_period(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Campaigns forever; `leading` says whether this replica leads now.
pub(crate) async fn campaign(
    store: Arc<dyn Store>,
    replica: String,
    ttl: Duration,
    leading: watch::Sender<bool>,
) {
    let retry = retry_period(ttl);
    loop {
        match try_lead(&*store, &replica, ttl).await {
            Ok(Some(lease)) => {
                tracing::info!(%replica, ttl = ?ttl, "leading rollouts");
                metrics::gauge!("bulkhead_rollout_leader").set(1.0);
                leading.send_replace(true);
                hold(&*store, lease, ttl).await;
                leading.send_replace(false);
                metrics::gauge!("bulkhead_rollout_leader").set(0.0);
                tracing::warn!(%replica, "no longer leading rollouts (lease renewal failed)");
                // Best effort: let a follower take over at once.
                let _ = store.revoke(lease).await;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%error, "rollout leader election: store unavailable");
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// Takes the seat if it is vacant; `Some(lease)` when this replica now
/// holds it.
async fn try_lead(
    store: &dyn Store,
    replica: &str,
    ttl: Duration,
) -> Result<Option<LeaseId>, StoreError> {
    if store.get(keys::ROLLOUT_LEADER).await?.is_some() {
        return Ok(None);
    }
    let lease = store.grant(ttl).await?;
    if store
        .create(
            keys::ROLLOUT_LEADER,
            replica.as_bytes().to_vec(),
            Some(lease),
        )
        .await?
    {
        Ok(Some(lease))
    } else {
        let _ = store.revoke(lease).await;
        Ok(None)
    }
}

/// Renews the lease until a renewal fails.
async fn hold(store: &dyn Store, lease: LeaseId, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let renewed = tokio::time::timeout(every, store.keep_alive(lease)).await;
        match renewed {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "renewing the rollout leader lease failed");
                return;
            }
            Err(_) => {
                tracing::warn!("renewing the rollout leader lease timed out");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn one_leader_and_a_takeover() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ttl = Duration::from_secs(1);
        let (a_tx, mut a) = watch::channel(false);
        let (b_tx, b) = watch::channel(false);
        let first = tokio::spawn(campaign(store.clone(), "a".into(), ttl, a_tx));
        a.wait_for(|l| *l).await.unwrap();
        let second = tokio::spawn(campaign(store.clone(), "b".into(), ttl, b_tx));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!*b.borrow(), "two leaders");
        // The leader dies without a word: its lease expires.
        first.abort();
        let mut b = b;
        tokio::time::timeout(Duration::from_secs(5), b.wait_for(|l| *l))
            .await
            .expect("takeover within the TTL")
            .unwrap();
        second.abort();
    }
}
