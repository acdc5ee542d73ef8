//! The addresses `Egress` host rules resolve to, kept current.
//!
//! Names are resolved with the pod's resolver (`--resolv-conf`, normally
//! `/etc/resolv.conf`) through hickory, as absolute names (no search
//! domains), for A and AAAA records both. Each address is kept until the TTL of the answer that last
//! named it: a name that rotates through several addresses is allowed on
//! every one still within its TTL, and an address the name no longer
//! resolves to stops being allowed once its TTL is over. Each host is
//! re-resolved as its answer expires ([`refresh_forever`]); a connection
//! to an address the host does not (yet) have asks again at once, at most
//! once per [`REQUERY_AFTER`], so a DNS change the app has already seen is
//! followed without waiting. When resolution fails nothing is added and
//! what expires is gone: fail closed.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Shortest time an answer is kept (a TTL of 0 would mean "ask on every
/// connection").
const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest time an answer is kept, whatever its TTL.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// How long one resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Retry delays after a failed resolution.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// At most one on-demand resolution per host this often.
pub(crate) const REQUERY_AFTER: Duration = Duration::from_secs(1);
/// Most addresses kept per host.
const MAX_ADDRESSES: usize = 64;
/// Most hosts resolved at once by the background refresh.
const PARALLEL: usize = 8;

/// The pod's resolver, or why there is none (every host rule is then
/// unresolved).
#[derive(Clone)]
pub(crate) struct Resolver(Result<TokioResolver, Arc<str>>);

impl Resolver {
    /// From a resolv.conf file; a file that cannot be read or holds no
    /// nameserver is reported once here and makes every lookup fail.
    pub(crate) fn from_resolv_conf(path: &Path) -> Self {
        let built = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                hickory_resolver::system_conf::parse_resolv_conf(bytes).map_err(|e| e.to_string())
            })
            .and_then(|(config, mut options)| {
                options.timeout = RESOLVE_TIMEOUT / 2;
                options.attempts = 2;
                // An app may dial either family: know both.
                options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
                let mut builder =
                    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
                *builder.options_mut() = options;
                builder.build().map_err(|e| e.to_string())
            });
        Self(built.map_err(|e| {
            let why: Arc<str> = format!("{}: {e}", path.display()).into();
            tracing::warn!(error = %why, "no resolver for Egress host rules: they allow nothing");
            why
        }))
    }

    /// The addresses `host` resolves to and until when, clamped to
    /// [`MIN_TTL`]..[`MAX_TTL`].
    async fn lookup(&self, host: &str) -> Result<(Vec<IpAddr>, Instant), String> {
        let resolver = self.0.as_ref().map_err(|why| why.to_string())?;
        let absolute = format!("{host}.");
        let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, resolver.lookup_ip(absolute))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now())
            .clamp(MIN_TTL, MAX_TTL);
        let ips = lookup.iter().map(|ip| ip.to_canonical()).collect();
        Ok((ips, now + ttl))
    }
}

/// One host's addresses, each with the time it expires.
pub(crate) struct HostAddresses {
    pub(crate) host: String,
    addresses: ArcSwap<Vec<(IpAddr, Instant)>>,
    /// Held while resolving; records when the last resolution started.
    resolving: Mutex<Option<Instant>>,
}

impl HostAddresses {
    pub(crate) fn new(host: String) -> Self {
        Self {
            host,
            addresses: ArcSwap::from_pointee(Vec::new()),
            resolving: Mutex::new(None),
        }
    }

    /// Whether `ip` is, right now, an address of the host.
    pub(crate) fn has(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        self.addresses
            .load()
            .iter()
            .any(|(a, until)| *a == ip && *until > now)
    }

    /// Whether the host has any live address.
    pub(crate) fn is_resolved(&self) -> bool {
        let now = Instant::now();
        self.addresses.load().iter().any(|(_, until)| *until > now)
    }

    /// Resolves now, unless another resolution is under way (then waits
    /// for it) or one started less than [`REQUERY_AFTER`] ago.
    pub(crate) async fn requery(&self, resolver: &Resolver) {
        let mut last = self.resolving.lock().await;
        if last.is_some_and(|t| t.elapsed() < REQUERY_AFTER) {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.resolve(resolver).await;
    }

    /// One resolution: new answers are merged in, expired ones dropped.
    /// Returns when the answer expires (to resolve again then).
    async fn resolve(&self, resolver: &Resolver) -> Result<Instant, String> {
        let result = resolver.lookup(&self.host).await;
        let answer = result
            .as_ref()
            .ok()
            .map(|(ips, until)| (ips.as_slice(), *until));
        let next = merge(&self.addresses.load(), answer, Instant::now());
        let outcome = match result {
            Ok((_, until)) => {
                metrics::counter!("bulkhead_egress_resolutions_total", "result" => "ok")
                    .increment(1);
                tracing::debug!(host = %self.host, addresses = ?next, "resolved Egress host");
                Ok(until)
            }
            Err(error) => {
                metrics::counter!("bulkhead_egress_resolutions_total", "result" => "error")
                    .increment(1);
                tracing::info!(host = %self.host, %error, "cannot resolve Egress host");
                Err(error)
            }
        };
        self.addresses.store(Arc::new(next));
        outcome
    }
}

/// The addresses after an answer (or a failure, `None`) at `now`: the
/// ones still within their TTL, each named again extended to the new
/// answer's expiry, new ones added (at most [`MAX_ADDRESSES`]).
fn merge(
    current: &[(IpAddr, Instant)],
    answer: Option<(&[IpAddr], Instant)>,
    now: Instant,
) -> Vec<(IpAddr, Instant)> {
    let mut next: Vec<(IpAddr, Instant)> = current
        .iter()
        .filter(|(_, until)| *until > now)
        .copied()
        .collect();
    if let Some((ips, until)) = answer {
        for &ip in ips {
            if let Some(entry) = next.iter_mut().find(|(a, _)| *a == ip) {
                entry.1 = entry.1.max(until);
            } else if next.len() < MAX_ADDRESSES {
                next.push((ip, until));
            }
        }
    }
    next
}

/// Keeps `hosts` resolved: each again when its answer expires, after a
/// failure with backoff, at most [`PARALLEL`] at once (a slow or failing
/// resolver holds up one host's refresh, not every other's). Runs until
/// aborted (when the rules change).
pub(crate) async fn refresh_forever(hosts: Vec<Arc<HostAddresses>>, resolver: Resolver) {
    let mut due: Vec<(Instant, Duration)> = vec![(Instant::now(), RETRY_MIN); hosts.len()];
    loop {
        let now = Instant::now();
        let resolving: Vec<_> = (0..hosts.len())
            .filter(|i| due[*i].0 <= now)
            .map(|i| {
                // Owned, so the task's future holds no borrowed closure.
                let (host, resolver) = (Arc::clone(&hosts[i]), resolver.clone());
                async move {
                    let mut last = host.resolving.lock().await;
                    *last = Some(Instant::now());
                    (i, host.resolve(&resolver).await)
                }
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(resolving)
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for (i, result) in results {
            let (at, retry) = &mut due[i];
            match result {
                Ok(until) => (*at, *retry) = (until, RETRY_MIN),
                Err(_) => {
                    *at = Instant::now() + *retry;
                    *retry = (*retry * 2).min(RETRY_MAX);
                }
            }
        }
        let Some(next) = due.iter().map(|(at, _)| *at).min() else {
            return;
        };
        tokio::time::sleep_until(next.max(Instant::now() + Duration::from_millis(100))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_live_until_the_ttl_of_the_last_answer_naming_them() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let (a, b) = (ip("198.18.2.2"), ip("198.18.2.50"));
        let first = merge(&[], Some((&[a], t0 + 2 * s)), t0);
        assert_eq!(first, [(a, t0 + 2 * s)]);
        // The name moves to b: a stays until its TTL, b is added.
        let moved = merge(&first, Some((&[b], t0 + 3 * s)), t0 + s);
        assert_eq!(moved, [(a, t0 + 2 * s), (b, t0 + 3 * s)]);
        // Past a's TTL only b is left; a failed lookup adds nothing.
        assert_eq!(merge(&moved, None, t0 + 2 * s), [(b, t0 + 3 * s)]);
        assert!(merge(&moved, None, t0 + 3 * s).is_empty());
        // Named again: the later expiry wins.
        let again = merge(&moved, Some((&[a], t0 + 9 * s)), t0 + s);
        assert_eq!(again, [(a, t0 + 9 * s), (b, t0 + 3 * s)]);
    }

    #[test]
    fn a_host_keeps_a_bounded_number_of_addresses() {
        let t0 = Instant::now();
        let many: Vec<IpAddr> = (0..200u8).map(|i| IpAddr::from([198, 18, 3, i])).collect();
        let kept = merge(&[], Some((&many, t0 + Duration::from_secs(5))), t0);
        assert_eq!(kept.len(), MAX_ADDRESSES);
    }

    #[tokio::test]
    async fn without_a_resolver_configuration_nothing_resolves() {
        let resolver = Resolver::from_resolv_conf(Path::new("/nonexistent/resolv.conf"));
        let host = HostAddresses::new("api.payments.example".into());
        host.requery(&resolver).await;
        assert!(!host.is_resolved());
        assert!(!host.has(ip("198.18.2.2")));
    }
}
