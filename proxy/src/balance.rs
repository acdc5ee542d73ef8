//! Local-first load balancing over one service's endpoints: locality tiers,
//! power of two choices over peak-EWMA latency and in-flight requests, and
//! passive outlier ejection.
//!
//! One [`Balancer`] per service, shared by every request to it. A request
//! asks for a [`Pick`] (filtered to the versions its route accepts), sends to
//! [`Pick::endpoint`], and reports the [`Outcome`] with [`Pick::finish`]. How
//! a pick is made:
//!
//! 1. Keep the endpoints the version filter accepts.
//! 2. Take the nearest [`LocalityTier`] that has an endpoint not ejected;
//!    farther tiers only get traffic when nearer ones have none healthy.
//! 3. Inside the tier, draw two endpoints at random and take the cheaper:
//!    cost = peak-EWMA latency × (in-flight requests + 1).
//! 4. If every accepted endpoint is ejected ("panic mode"), do the same over
//!    the ejected ones: ejection steers traffic away from bad endpoints, it
//!    must never turn a degraded service into an unreachable one.
//!
//! A pick takes one pass over the endpoint list, two small locks and no
//! allocation; statistics live beside each endpoint so concurrent requests
//! contend only when they land on the same endpoint.

mod ewma;
mod outlier;
mod tier;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use bulkhead_proto::model::{Endpoint, Locality};
use metrics::Counter;
use tokio::time::Instant;

use self::ewma::PeakEwma;
use self::outlier::Outlier;
pub(crate) use self::outlier::OutlierConfig;
pub(crate) use self::tier::LocalityTier;
use crate::telemetry::RequestMetrics;

/// Tuning of a [`Balancer`]; the defaults follow linkerd's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BalancerConfig {
    /// Latency assumed for an endpoint until its first response. Deliberately
    /// pessimistic: a new endpoint is not handed a burst before it has
    /// answered once; peers' in-flight requests and idle decay make it
    /// competitive soon enough.
    pub default_rtt: Duration,
    /// Time constant of the latency average (τ): how fast an estimate comes
    /// down after a peak, and how fast an idle endpoint's estimate fades so
    /// that it is tried again.
    pub decay: Duration,
    pub outlier: OutlierConfig,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            outlier: OutlierConfig::default(),
        }
    }
}

/// The endpoints of one service and what the proxy has learnt about each.
/// Cloning is cheap and shares the state.
#[derive(Clone)]
pub(crate) struct Balancer {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    config: BalancerConfig,
    /// Replaced whole by `update`; a pick works on the list it started with.
    endpoints: RwLock<Arc<[Arc<Slot>]>>,
    rng: SplitMix64,
    /// Serializes ejections so that the ejected fraction stays bounded.
    ejecting: Mutex<()>,
    /// `bulkhead_lb_picks_total{service, tier}`, indexed by tier.
    picks: [Counter; 4],
    /// Origin of the nanosecond timestamps in `Stats::ejected_until_ns`.
    epoch: Instant,
}

/// An endpoint as last announced, with statistics that outlive announcements.
struct Slot {
    endpoint: Endpoint,
    stats: Arc<Stats>,
    /// Outbound request metrics labelled with this endpoint's version and
    /// identity, registered on first use; a re-announced endpoint gets a
    /// new slot, so the labels follow it.
    metrics: OnceLock<Arc<RequestMetrics>>,
}

struct Stats {
    in_flight: AtomicU32,
    /// End of the current ejection in nanoseconds after `Inner::epoch`;
    /// atomic so that a pick checks it without a lock. 0: never ejected.
    ejected_until_ns: AtomicU64,
    health: Mutex<Health>,
}

struct Health {
    latency: PeakEwma,
    outlier: Outlier,
}

/// An endpoint chosen for one request. It counts as in flight until finished
/// or dropped.
pub(crate) struct Pick {
    slot: Arc<Slot>,
    inner: Arc<Inner>,
    tier: LocalityTier,
}

/// How a picked request went, as the caller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// From sending the request to the response head (or the failure).
    pub latency: Duration,
    /// False for what says the endpoint is unwell: connect and TLS errors,
    /// resets, timeouts, 5xx. Not for 4xx, nor for the mesh's own refusals.
    pub success: bool,
}

/// One endpoint's state, for the admin `/config` dump.
#[derive(Clone, Debug)]
pub(crate) struct EndpointStatus {
    pub endpoint: Endpoint,
    /// The latency estimate picks use right now.
    pub latency: Duration,
    pub in_flight: u32,
    pub consecutive_failures: u32,
    /// Time left in the current ejection, if ejected.
    pub ejected_for: Option<Duration>,
}

impl Balancer {
    /// An empty balancer for `service`, seeded from the OS.
    ///
    /// `service` is the `service` label of `bulkhead_lb_picks_total`; the
    /// counters are registered here, so install the metrics recorder before
    /// building balancers.
    pub(crate) fn new(service: impl Into<String>, config: BalancerConfig) -> Self {
        Self::with_seed(service, config, rand::random())
    }

    /// Like [`Balancer::new`] with a fixed random seed, so that tests are
    /// repeatable.
    pub(crate) fn with_seed(service: impl Into<String>, config: BalancerConfig, seed: u64) -> Self {
        let service = service.into();
        let picks = LocalityTier::ALL.map(|tier| {
            metrics::counter!(
                "bulkhead_lb_picks_total",
                "service" => service.clone(),
                "tier" => tier.as_str(),
            )
        });
        Balancer {
            inner: Arc::new(Inner {
                service,
                config,
                endpoints: RwLock::new(Arc::from([])),
                rng: SplitMix64(AtomicU64::new(seed)),
                ejecting: Mutex::new(()),
                picks,
                epoch: Instant::now(),
            }),
        }
    }

    /// Number of endpoints, ejected or not.
    pub(crate) fn len(&self) -> usize {
        self.inner.current().len()
    }

    /// Replaces the endpoint set. Endpoints that stay (same address and
    /// inbound port) keep their latency estimate, in-flight count and
    /// ejection; requests in flight to removed endpoints finish normally.
    /// Of two endpoints with the same address and port, the first is kept.
    pub(crate) fn update(&self, endpoints: Vec<Endpoint>) {
        let inner = &self.inner;
        let now = Instant::now();
        let mut current = inner
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let next: Vec<Arc<Slot>> = {
            let old: HashMap<(IpAddr, u16), &Arc<Slot>> =
                current.iter().map(|s| (key(&s.endpoint), s)).collect();
            let mut seen = HashSet::with_capacity(endpoints.len());
            endpoints
                .into_iter()
                .filter(|e| seen.insert(key(e)))
                .map(|endpoint| match old.get(&key(&endpoint)) {
                    Some(slot) if slot.endpoint == endpoint => Arc::clone(slot),
                    Some(slot) => Arc::new(Slot {
                        endpoint,
                        stats: Arc::clone(&slot.stats),
                        metrics: OnceLock::new(),
                    }),
                    None => Arc::new(Slot {
                        endpoint,
                        stats: Arc::new(Stats::new(&inner.config, now)),
                        metrics: OnceLock::new(),
                    }),
                })
                .collect()
        };
        *current = next.into();
    }

    /// Chooses an endpoint for one request among those `version_filter`
    /// accepts, as the module documentation describes; `None` only when it
    /// accepts none. `local` is this sidecar's own locality.
    pub(crate) fn pick(
        &self,
        local: &Locality,
        version_filter: impl Fn(&Endpoint) -> bool,
    ) -> Option<Pick> {
        let inner = &self.inner;
        let set = inner.current();
        let now = Instant::now();
        let now_ns = inner.nanos(now);
        let mut healthy = Sample::EMPTY;
        let mut ejected = Sample::EMPTY;
        for (index, slot) in set.iter().enumerate() {
            if !version_filter(&slot.endpoint) {
                continue;
            }
            let tier = LocalityTier::between(local, &slot.endpoint.locality);
            let until = slot.stats.ejected_until_ns.load(Ordering::Relaxed);
            let sample = if until > now_ns {
                &mut ejected
            } else {
                if until != 0 {
                    inner.readmitted(slot, until);
                }
                &mut healthy
            };
            sample.offer(tier, index, &inner.rng);
        }
        // Panic mode when every accepted endpoint is ejected.
        let sample = if healthy.seen > 0 { healthy } else { ejected };
        let index = match sample.seen {
            0 => return None,
            1 => sample.chosen[0],
            _ => inner.cheaper(&set, sample.chosen, now),
        };
        let slot = Arc::clone(&set[index]);
        slot.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        inner.picks[sample.tier.index()].increment(1);
        Some(Pick {
            slot,
            inner: Arc::clone(inner),
            tier: sample.tier,
        })
    }

    /// Whether some endpoint the filter accepts is not ejected: what a router
    /// asks before sending a weighted share to a version (see
    /// [`crate::route::choose_with_fallback`]).
    pub(crate) fn has_healthy(&self, filter: impl Fn(&Endpoint) -> bool) -> bool {
        let now_ns = self.inner.nanos(Instant::now());
        self.inner
            .current()
            .iter()
            .any(|s| !s.stats.is_ejected(now_ns) && filter(&s.endpoint))
    }

    /// Every endpoint with its statistics, in announcement order.
    pub(crate) fn snapshot(&self) -> Vec<EndpointStatus> {
        let inner = &self.inner;
        let now = Instant::now();
        let now_ns = inner.nanos(now);
        inner
            .current()
            .iter()
            .map(|slot| {
                let stats = &slot.stats;
                let health = stats.health();
                let until = stats.ejected_until_ns.load(Ordering::Relaxed);
                EndpointStatus {
                    endpoint: slot.endpoint.clone(),
                    latency: Duration::from_nanos(
                        health.latency.read(now, inner.config.decay) as u64
                    ),
                    in_flight: stats.in_flight.load(Ordering::Relaxed),
                    consecutive_failures: health.outlier.consecutive_failures(),
                    ejected_for: (until > now_ns).then(|| Duration::from_nanos(until - now_ns)),
                }
            })
            .collect()
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.inner.service)
            .field("endpoints", &self.len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn current(&self) -> Arc<[Arc<Slot>]> {
        Arc::clone(
            &self
                .endpoints
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The power-of-two-choices comparison; ties are broken at random so
    /// that equal endpoints share the load.
    fn cheaper(&self, set: &[Arc<Slot>], [a, b]: [usize; 2], now: Instant) -> usize {
        let (ca, cb) = (self.cost(&set[a], now), self.cost(&set[b], now));
        if ca < cb || (ca == cb && self.rng.next() & 1 == 0) {
            a
        } else {
            b
        }
    }

    fn cost(&self, slot: &Slot, now: Instant) -> f64 {
        let latency = slot.stats.health().latency.read(now, self.config.decay);
        let in_flight = slot.stats.in_flight.load(Ordering::Relaxed);
        latency * (f64::from(in_flight) + 1.0)
    }

    fn record(&self, slot: &Slot, outcome: Outcome) {
        let now = Instant::now();
        let stats = &slot.stats;
        let streak_ended = {
            let mut health = stats.health();
            if outcome.success {
                health
                    .latency
                    .observe(outcome.latency, now, self.config.decay);
                health.outlier.success();
                false
            } else {
                health.latency.observe_failure(outcome.latency, now);
                // Requests sent before an ejection say nothing new once it
                // has started.
                !stats.is_ejected(self.nanos(now)) && health.outlier.failure(&self.config.outlier)
            }
        };
        if streak_ended {
            self.eject(slot, now);
        }
    }

    /// An ejection that ran out (`until`): said once, by the pick that
    /// sees it first (one compare-and-swap per ejection; every other pick
    /// pays only the load it already made).
    fn readmitted(&self, slot: &Slot, until: u64) {
        if slot
            .stats
            .ejected_until_ns
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let address = slot.endpoint.address;
        let port = slot.endpoint.inbound_port;
        tracing::info!(service = %self.service, %address, port, "ejected endpoint readmitted");
        crate::events::emit(
            crate::events::ENDPOINT_READMITTED,
            format!("{}/{address}:{port}", self.service),
            serde_json::json!({
                "service": self.service,
                "address": address.to_string(),
                "inboundPort": port,
            }),
        );
    }

    /// Ejects `slot` unless that would put too much of the service out; the
    /// streak then stays long, so its next failure tries again.
    fn eject(&self, slot: &Slot, now: Instant) {
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(PoisonError::into_inner);
        let set = self.current();
        let now_ns = self.nanos(now);
        let stats = &slot.stats;
        let present = set.iter().any(|s| Arc::ptr_eq(&s.stats, stats));
        if !present || stats.is_ejected(now_ns) {
            return;
        }
        let ejected = set.iter().filter(|s| s.stats.is_ejected(now_ns)).count();
        let address = slot.endpoint.address;
        let port = slot.endpoint.inbound_port;
        if ejected >= self.config.outlier.max_ejected(set.len()) {
            tracing::debug!(
                service = %self.service, %address, port, ejected,
                "endpoint keeps failing; not ejected, too many already are",
            );
            return;
        }
        let until = stats.health().outlier.eject(&self.config.outlier, now);
        stats
            .ejected_until_ns
            .store(self.nanos(until), Ordering::Relaxed);
        let seconds = (until - now).as_secs_f64();
        tracing::info!(
            service = %self.service, %address, port, seconds,
            "ejected endpoint after consecutive failures",
        );
        // Rare (once per streak, under the ejection lock): not the data path.
        crate::events::emit(
            crate::events::ENDPOINT_EJECTED,
            format!("{}/{address}:{port}", self.service),
            serde_json::json!({
                "service": self.service,
                "address": address.to_string(),
                "inboundPort": port,
                "ejectedForSeconds": seconds,
                "reason": "consecutive_failures",
            }),
        );
    }
}

impl Stats {
    fn new(config: &BalancerConfig, now: Instant) -> Self {
        Stats {
            in_flight: AtomicU32::new(0),
            ejected_until_ns: AtomicU64::new(0),
            health: Mutex::new(Health {
                latency: PeakEwma::new(config.default_rtt, now),
                outlier: Outlier::default(),
            }),
        }
    }

    fn is_ejected(&self, now_ns: u64) -> bool {
        self.ejected_until_ns.load(Ordering::Relaxed) > now_ns
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn key(endpoint: &Endpoint) -> (IpAddr, u16) {
    (endpoint.address, endpoint.inbound_port)
}

impl Pick {
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.slot.endpoint
    }

    /// The outbound request metrics for this endpoint (`version` and `peer`
    /// labels from its announcement).
    pub(crate) fn request_metrics(&self) -> Arc<RequestMetrics> {
        let slot = &self.slot;
        Arc::clone(slot.metrics.get_or_init(|| {
            let peer = slot
                .endpoint
                .identity
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default();
            Arc::new(RequestMetrics::new(
                "outbound",
                self.inner.service.as_str(),
                slot.endpoint.version.as_str(),
                peer,
            ))
        }))
    }

    /// The tier the endpoint was chosen from.
    #[cfg(test)]
    pub(crate) fn tier(&self) -> LocalityTier {
        self.tier
    }

    /// Reports how the request went: feeds the latency estimate and the
    /// outlier detector. Dropping a pick instead (a cancelled request)
    /// reports nothing.
    pub(crate) fn finish(self, outcome: Outcome) {
        self.inner.record(&self.slot, outcome);
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.slot.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("address", &self.slot.endpoint.address)
            .field("inbound_port", &self.slot.endpoint.inbound_port)
            .field("tier", &self.tier)
            .finish()
    }
}

/// A uniformly random pair among the endpoints of the nearest tier offered
/// so far (reservoir sampling), so that a pick needs one pass and no buffer.
#[derive(Clone, Copy)]
struct Sample {
    tier: LocalityTier,
    /// Endpoints offered in `tier`.
    seen: usize,
    chosen: [usize; 2],
}

impl Sample {
    const EMPTY: Sample = Sample {
        tier: LocalityTier::Any,
        seen: 0,
        chosen: [0; 2],
    };

    fn offer(&mut self, tier: LocalityTier, index: usize, rng: &SplitMix64) {
        if self.seen == 0 || tier < self.tier {
            self.tier = tier;
            self.seen = 0;
        } else if tier > self.tier {
            return;
        }
        self.seen += 1;
        match self.seen {
            1 => self.chosen[0] = index,
            2 => self.chosen[1] = index,
            // Keep the newcomer with probability 2/seen, in a random place.
            seen => {
                let j = rng.below(seen);
                if j < 2 {
                    self.chosen[j] = index;
                }
            }
        }
    }
}

/// SplitMix64 over an atomic counter: a seeded, lock-free generator that
/// concurrent picks share without contending on a mutex, and that replays
/// exactly in single-threaded tests.
struct SplitMix64(AtomicU64);

impl SplitMix64 {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(Self::GAMMA, Ordering::Relaxed)
            .wrapping_add(Self::GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below n/2^64).
    fn below(&self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}
