//! The mesh's own measurements: what sidecars report (`Discovery.Report`)
//! about their endpoint's inbound traffic, shared by every replica through
//! the store, and read back over time windows by rollout gates, `GetStats`
//! and `bulkheadctl stat`.
//!
//! A sidecar reports to whichever replica it is connected to, and the
//! replica that leads rollouts may be another: so each replica adds up what
//! it receives ([`pending`]) and every [`FLUSH_PERIOD`] writes it, when
//! there is any, as ONE key `stats/<flush unix ms>-<replica id>` on a lease
//! of the retention. A window is then one range read over those keys,
//! every replica's, each attributed to its flush time ([`window`]). The
//! same reports feed this replica's per-version metrics ([`local`]).
//!
//! A flush that fails is kept, with its key, and written again before
//! anything newer: a retried write of the same key is idempotent even when
//! the failed one was applied after all, and the reports keep their time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::api::now_unix_ms;
use crate::keys;
use crate::store::{LeaseId, Op, Store, StoreError};

mod local;
mod pending;
#[cfg(test)]
mod tests;
mod window;

pub(crate) use pending::{CallerPart, Report};
pub(crate) use window::ServiceWindow;
pub(crate) use window::VersionWindow;

use pending::{FlushRecord, Pending};

/// How often each replica writes what it received.
pub(crate) const FLUSH_PERIOD: Duration = Duration::from_secs(1);
/// Beyond a flush period, how long a flush may take to be written and read
/// back by another replica (a store round trip, with room).
const SETTLE_MARGIN: Duration = Duration::from_secs(1);
/// Shortest report interval `--report-interval` accepts.
pub(crate) const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Shortest retention `--stats-retention` accepts (rollout intervals must
/// fit in it).
pub(crate) const MIN_RETENTION: Duration = Duration::from_secs(60);

/// How measurements are taken and kept (validated at the edge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MeasureSettings {
    /// How often sidecars are asked to report (`--report-interval`).
    pub(crate) report_interval: Duration,
    /// How long flushes stay in the store (`--stats-retention`).
    pub(crate) retention: Duration,
}

impl Default for MeasureSettings {
    fn default() -> Self {
        Self {
            report_interval: Duration::from_secs(5),
            retention: Duration::from_secs(15 * 60),
        }
    }
}

/// Reports received, flushed to the store, and read back over windows.
/// (`pub` only because [`crate::api::ControlPlane`], which holds it, is
/// reachable from [`crate::runtime::Running`]; nothing outside the crate
/// can name it.)
pub struct Measurements {
    store: Arc<dyn Store>,
    settings: MeasureSettings,
    /// This replica's name and a random suffix: a restarted replica (same
    /// name) never overwrites its predecessor's flushes.
    replica: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pending: Pending,
    local: local::Local,
}

impl std::fmt::Debug for Measurements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Measurements")
            .field("replica", &self.replica)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Measurements {
    pub(crate) fn new(store: Arc<dyn Store>, settings: MeasureSettings, replica: &str) -> Self {
        Self {
            store,
            settings,
            replica: format!("{replica}-{:08x}", rand::random::<u32>()),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How often sidecars are asked to report (ReportResponse.report_interval_ms).
    pub(crate) fn report_interval(&self) -> Duration {
        self.settings.report_interval
    }

    /// How long after a moment its reports are sure to be readable by every
    /// replica (the report interval is NOT included: flush period + margin).
    pub(crate) fn settle(&self) -> Duration {
        FLUSH_PERIOD + SETTLE_MARGIN
    }

    /// How long an endpoint's in-flight count holds in the local metrics.
    fn stale_ms(&self) -> i64 {
        local::IN_FLIGHT_INTERVALS * self.settings.report_interval.as_millis() as i64
    }

    /// Counts one checked report: in the next flush and in this replica's
    /// metrics. Beyond the bounds it is dropped and counted.
    pub(crate) fn record(&self, report: &Report) {
        self.record_at(report, now_unix_ms());
    }

    fn record_at(&self, report: &Report, now_ms: i64) {
        let stale_ms = self.stale_ms();
        let mut state = self.state();
        if let Err(why) = state.pending.add(report) {
            metrics::counter!("bulkhead_reports_dropped_total", "reason" => why.reason())
                .increment(1);
            tracing::debug!(namespace = %report.namespace, service = %report.service,
                reason = why.reason(), "report dropped: too much pending");
        }
        if let Err(why) = state.local.record(report, now_ms, stale_ms) {
            let reason = match why {
                local::Skipped::TooManySeries => "too_many_metric_series",
                local::Skipped::TooManyEndpoints => "too_many_metric_endpoints",
            };
            metrics::counter!("bulkhead_reports_dropped_total", "reason" => reason).increment(1);
        }
    }

    /// The per-version metrics' Prometheus text (see [`local`]).
    pub(crate) fn render(&self) -> String {
        let stale_ms = self.stale_ms();
        self.state().local.render(now_unix_ms(), stale_ms)
    }

    /// What sidecars reported (to ANY replica) about one service, for
    /// reports received in [from_unix_ms, to_unix_ms) (each replica's
    /// flush counts at its flush time, at most a flush period after the
    /// reports in it arrived).
    pub(crate) async fn window(
        &self,
        namespace: &str,
        service: &str,
        from_unix_ms: i64,
        to_unix_ms: i64,
    ) -> Result<ServiceWindow, StoreError> {
        let mut all = self
            .all(Some(namespace), Some(service), from_unix_ms, to_unix_ms)
            .await?;
        Ok(all
            .remove(&(namespace.to_owned(), service.to_owned()))
            .unwrap_or_default())
    }

    /// Same for every service (or those of one namespace, or one service),
    /// keyed by (namespace, service).
    pub(crate) async fn all(
        &self,
        namespace: Option<&str>,
        service: Option<&str>,
        from_unix_ms: i64,
        to_unix_ms: i64,
    ) -> Result<BTreeMap<(String, String), ServiceWindow>, StoreError> {
        if to_unix_ms <= from_unix_ms {
            return Ok(BTreeMap::new());
        }
        let (kvs, _) = self
            .store
            .range(&keys::stats_at(from_unix_ms), &keys::stats_at(to_unix_ms))
            .await?;
        let records = kvs
            .iter()
            .filter_map(|kv| match FlushRecord::decode(&kv.value) {
                Ok(record) => Some(record),
                Err(error) => {
                    // Only replicas write here; say so, but read the rest.
                    tracing::warn!(key = %kv.key, %error, "ignoring a stats flush that does not parse");
                    None
                }
            });
        let filter = window::Filter { namespace, service };
        let length = (to_unix_ms - from_unix_ms) as u64;
        Ok(window::add_up(records, filter, length))
    }

    /// Writes what was received, every [`FLUSH_PERIOD`], for as long as the
    /// process runs.
    pub(crate) async fn flush_forever(self: Arc<Self>) {
        let mut flusher = Flusher::default();
        let mut tick = tokio::time::interval(FLUSH_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            flusher.flush(&self, now_unix_ms()).await;
        }
    }
}

/// The flush loop's own state: the lease flushes go on, and a flush that
/// failed and is to be written again.
#[derive(Debug, Default)]
struct Flusher {
    /// The lease and when it was granted.
    lease: Option<(LeaseId, tokio::time::Instant)>,
    /// Key and value of a failed flush.
    held: Option<(String, Vec<u8>)>,
    /// Failures in a row (the first is logged as a warning, the rest not).
    failures: u32,
}

impl Flusher {
    /// One lease for many keys: granted again every quarter of the
    /// retention, with a TTL of the retention plus that quarter, so that
    /// every key lives at least the retention.
    async fn lease(&mut self, m: &Measurements) -> Result<LeaseId, StoreError> {
        let renew_every = m.settings.retention / 4;
        if let Some((id, granted)) = self.lease
            && granted.elapsed() < renew_every
        {
            return Ok(id);
        }
        let id = m.store.grant(m.settings.retention + renew_every).await?;
        self.lease = Some((id, tokio::time::Instant::now()));
        Ok(id)
    }

    /// Writes the held flush if there is one (what is pending waits for the
    /// next period), else what is pending (if anything) as the flush made
    /// at `now_ms`. Returns whether nothing is left to write again.
    async fn flush(&mut self, m: &Measurements, now_ms: i64) -> bool {
        if self.held.is_none() {
            let record = {
                let mut state = m.state();
                if state.pending.is_empty() {
                    return true;
                }
                state.pending.take()
            };
            self.held = Some((keys::stats(now_ms, &m.replica), record.encode()));
        }
        let Some((key, value)) = self.held.clone() else {
            return true;
        };
        let written = async {
            let lease = self.lease(m).await?;
            m.store
                .txn(vec![Op::Put {
                    key: key.clone(),
                    value,
                    lease: Some(lease),
                }])
                .await
        }
        .await;
        match written {
            Ok(_) => {
                metrics::counter!("bulkhead_stats_flushes_total", "result" => "ok").increment(1);
                if self.failures > 0 {
                    tracing::info!(failures = self.failures, %key, "stats flushed again after failures");
                }
                self.failures = 0;
                self.held = None;
                true
            }
            Err(error) => {
                metrics::counter!("bulkhead_stats_flushes_total", "result" => "error").increment(1);
                if matches!(error, StoreError::LeaseNotFound(_)) {
                    self.lease = None;
                }
                if self.failures == 0 {
                    tracing::warn!(%error, %key, "cannot write this replica's stats flush; keeping it and retrying every flush period");
                } else {
                    tracing::debug!(%error, %key, failures = self.failures, "stats flush failed again");
                }
                self.failures = self.failures.saturating_add(1);
                false
            }
        }
    }
}
