//! PLACEHOLDER replaced by the `stats` branch at merge: the interface the
//! rollout controller reads measurements through.

use std::collections::BTreeMap;
use std::time::Duration;

use bulkhead_proto::stats::LatencyHistogram;

use crate::store::StoreError;

pub(crate) struct Measurements;

impl Measurements {
    pub(crate) fn report_interval(&self) -> Duration {
        Duration::from_secs(5)
    }

    pub(crate) fn settle(&self) -> Duration {
        Duration::from_secs(2)
    }

    pub(crate) async fn window(
        &self,
        _namespace: &str,
        _service: &str,
        _from_unix_ms: i64,
        _to_unix_ms: i64,
    ) -> Result<ServiceWindow, StoreError> {
        Ok(ServiceWindow::default())
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct ServiceWindow {
    pub versions: BTreeMap<String, VersionWindow>,
}

#[derive(Clone, Debug, Default)]
#[allow(dead_code)]
pub(crate) struct VersionWindow {
    pub requests: u64,
    pub failures: u64,
    pub latency: LatencyHistogram,
    pub in_flight: u32,
    pub reporters: BTreeMap<String, u64>,
}
