//! Which Watch subscribers (sidecars) of this replica have been sent every
//! change that concerns them: each notes the revision of the last delta it
//! handled (sent, or found of no concern), and the hub notes the revision
//! of the last delta it published. One behind that for longer than a moment
//! runs on an old config (a full queue: it stopped reading).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::Revision;

/// How often [`Watchers::settled`] looks again while it waits.
const SETTLE_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub(crate) struct Watchers {
    /// The revision of the last delta (or snapshot) the hub published.
    published: AtomicI64,
    next_id: AtomicU64,
    handled: Mutex<HashMap<u64, Revision>>,
}

/// How many subscribers there are, and how many are behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WatcherCount {
    pub(crate) connected: usize,
    pub(crate) behind: usize,
}

/// One subscriber's place; it leaves the count when dropped.
#[derive(Debug)]
pub(crate) struct Watcher {
    watchers: Arc<Watchers>,
    id: u64,
}

impl Watcher {
    /// Everything up to `revision` has been handled.
    pub(crate) fn handled(&self, revision: Revision) {
        if let Some(r) = self.watchers.lock().get_mut(&self.id) {
            *r = (*r).max(revision);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.watchers.lock().remove(&self.id);
    }
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Revision>> {
        self.handled.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn published(&self, revision: Revision) {
        self.published.fetch_max(revision, Ordering::Relaxed);
    }

    /// A new subscriber, behind until it handles its snapshot.
    pub(crate) fn join(self: &Arc<Self>) -> Watcher {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, 0);
        Watcher {
            watchers: self.clone(),
            id,
        }
    }

    /// The count against `target`.
    fn count(&self, target: Revision) -> WatcherCount {
        let handled = self.lock();
        WatcherCount {
            connected: handled.len(),
            behind: handled.values().filter(|r| **r < target).count(),
        }
    }

    /// The count against what was published when asked, after giving the
    /// subscribers up to `bound` to catch up (a change published a moment
    /// ago is not an old config).
    pub(crate) async fn settled(&self, bound: Duration) -> WatcherCount {
        let target = self.published.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let count = self.count(target);
            if count.behind == 0 || tokio::time::Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_is_behind_until_it_handles_what_was_published() {
        let watchers = Arc::new(Watchers::default());
        watchers.published(7);
        let fast = watchers.join();
        let slow = watchers.join();
        fast.handled(7);
        slow.handled(5);
        let bound = Duration::from_secs(1);
        assert_eq!(
            watchers.settled(bound).await,
            WatcherCount {
                connected: 2,
                behind: 1
            }
        );
        // Catching up within the bound counts as current.
        let settled = watchers.settled(bound);
        let catch_up = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            slow.handled(7);
        };
        let (count, ()) = tokio::join!(settled, catch_up);
        assert_eq!(count.behind, 0);
        drop(slow);
        assert_eq!(watchers.count(7).connected, 1);
    }
}
