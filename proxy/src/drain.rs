//! Shutdown in one handle: every listener and task that must finish before
//! the process exits holds a [`Drain`]. On SIGTERM the sidecar signals it
//! (listeners stop accepting, HTTP/2 connections send GOAWAY, TCP streams
//! close at the end of the grace period) and waits for the tracked tasks,
//! at most the grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// A clone per holder; all clones see the same signal.
#[derive(Clone, Debug, Default)]
pub(crate) struct Drain {
    signal: CancellationToken,
    tracker: TaskTracker,
}

impl Drain {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Resolves once draining has begun.
    pub(crate) fn signaled(&self) -> WaitForCancellationFuture<'_> {
        self.signal.cancelled()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Begins draining without waiting (the DNS server's own tests stop it
    /// this way).
    #[cfg(test)]
    pub(crate) fn signal(&self) {
        self.signal.cancel();
    }

    /// Spawns `task` so that [`Drain::drain`] waits for it.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Signals every holder, then waits up to `grace` for the tracked tasks.
    /// False when the grace period ended with tasks still running (they are
    /// dropped with the runtime).
    pub(crate) async fn drain(&self, grace: Duration) -> bool {
        self.signal.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tracked_work_up_to_the_grace() {
        let drain = Drain::new();
        let holder = drain.clone();
        drain.spawn(async move {
            holder.signaled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        assert!(!drain.is_draining());
        assert!(drain.drain(Duration::from_secs(5)).await);
        assert!(drain.is_draining());

        let stuck = Drain::new();
        stuck.spawn(std::future::pending());
        assert!(!stuck.drain(Duration::from_secs(5)).await);
    }
}
