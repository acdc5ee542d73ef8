//! Egress allow-lists: which captured connections to destinations outside
//! the mesh this sidecar lets out.
//!
//! A service that no `Egress` resource names follows `--egress allow|deny`.
//! One that is named gets exactly the rules of every `Egress` naming it
//! ([`rules`]), and every other destination is refused:
//!
//! 1. a CIDR rule with the destination's port allows on the address alone;
//! 2. otherwise, if a host rule has that port, the connection's first bytes
//!    are read ([`peek`]: TLS SNI or HTTP/1 `Host`, bounded in bytes and
//!    time) and the name must be a rule's host *and* the address dialled
//!    must be one the sidecar resolved that host to ([`resolve`]: the pod's
//!    resolver, following TTLs) — so a forged SNI to an arbitrary address
//!    is refused;
//! 3. anything else is refused: the connection is closed, counted in
//!    `bulkhead_egress_refused_total{service,reason}` (a fixed set of
//!    reasons, never the destination), logged with the destination, and
//!    added to the aggregated `dev.bulkhead.egress.refused` event.
//!
//! An allowed connection is dialled directly (it is not mesh traffic),
//! gets the bytes read while deciding, then both directions are copied.
//! The rules follow the pushed config ([`EgressPolicy::follow`]); until a
//! config has arrived nothing goes out (fail closed).

pub(crate) mod peek;
mod resolve;
mod rules;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bulkhead_proto::model::Egress;
use metrics::Counter;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use self::peek::{Name, Peeked};
use self::resolve::{Resolver, refresh_forever};
use self::rules::{ByAddress, Refusal, Rules, check_address, rule_for};
use crate::state::StateCell;

/// How long an allowed egress connection may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The egress decision for this sidecar's service, shared by every
/// captured connection.
pub(crate) struct EgressPolicy {
    namespace: String,
    service: String,
    /// `--egress allow`: what a service no `Egress` names gets.
    default_allow: bool,
    /// `None`: no `Egress` names the service.
    rules: ArcSwapOption<Rules>,
    resolver: Resolver,
    counters: Counters,
}

/// Counters made once (one per label set), so the data path records
/// without building labels.
struct Counters {
    refused: Vec<(Refusal, Counter)>,
    allowed_cidr: Counter,
    allowed_host: Counter,
    allowed_default: Counter,
    /// The count `capture` has always kept for destinations outside the
    /// mesh refused without rules (`--egress deny`, or no config yet).
    unknown_destination: Counter,
}

impl Counters {
    fn new(service: &str) -> Self {
        let refused = Refusal::ALL
            .into_iter()
            .map(|r| {
                let c = metrics::counter!("bulkhead_egress_refused_total",
                    "service" => service.to_owned(), "reason" => r.as_str());
                (r, c)
            })
            .collect();
        let allowed = |by: &'static str| {
            metrics::counter!("bulkhead_egress_allowed_total",
                "service" => service.to_owned(), "rule" => by)
        };
        metrics::describe_counter!(
            "bulkhead_egress_refused_total",
            "Captured connections to destinations outside the mesh refused, by service and reason"
        );
        metrics::describe_counter!(
            "bulkhead_egress_allowed_total",
            "Captured connections to destinations outside the mesh let out, by service and the kind of rule (cidr, host, default)"
        );
        Self {
            refused,
            allowed_cidr: allowed("cidr"),
            allowed_host: allowed("host"),
            allowed_default: allowed("default"),
            unknown_destination: metrics::counter!("bulkhead_outbound_refused_total", "reason" => "unknown-destination"),
        }
    }

    fn refused(&self, reason: Refusal) {
        if let Some((_, c)) = self.refused.iter().find(|(r, _)| *r == reason) {
            c.increment(1);
        }
    }
}

impl EgressPolicy {
    pub(crate) fn new(
        namespace: &str,
        service: &str,
        default_allow: bool,
        resolv_conf: &Path,
    ) -> Arc<Self> {
        Arc::new(Self {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            default_allow,
            rules: ArcSwapOption::empty(),
            resolver: Resolver::from_resolv_conf(resolv_conf),
            counters: Counters::new(service),
        })
    }

    /// Keeps the rules in step with the `Egress` resources naming this
    /// service, and their hosts resolved.
    pub(crate) async fn follow(self: Arc<Self>, states: StateCell) {
        let mut changes = states.subscribe();
        let mut current: Option<Vec<Egress>> = None;
        let mut refresher: Option<JoinHandle<()>> = None;
        loop {
            let egresses = states.load().egresses_of(&self.namespace, &self.service);
            if current.as_ref() != Some(&egresses) {
                if let Some(task) = refresher.take() {
                    task.abort();
                }
                if egresses.is_empty() {
                    if current.is_some() {
                        tracing::info!("no Egress names this service any more: --egress applies");
                    }
                    self.rules.store(None);
                } else {
                    let previous = self.rules.load_full();
                    let rules = Arc::new(Rules::new(&egresses, previous.as_deref()));
                    tracing::info!(egress = ?rules.sources, "Egress rules in force for this service");
                    refresher = Some(tokio::spawn(refresh_forever(
                        rules.host_addresses(),
                        self.resolver.clone(),
                    )));
                    self.rules.store(Some(rules));
                }
                current = Some(egresses);
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// One captured connection to `dst`, which is not in the mesh.
    pub(crate) async fn connection(
        &self,
        states: &StateCell,
        mut app: TcpStream,
        dst: SocketAddr,
        idle: Duration,
    ) {
        let Some(rules) = self.rules.load_full() else {
            let refusal = if states.load().revision == 0 {
                // No config yet: whether an Egress names us is unknown.
                Refusal::NoConfig
            } else if self.default_allow {
                self.counters.allowed_default.increment(1);
                passthrough(app, dst, &[], idle).await;
                return;
            } else {
                Refusal::DefaultDeny
            };
            self.counters.unknown_destination.increment(1);
            self.refuse(refusal, dst, None, &[]);
            return;
        };
        let mut first_bytes = Vec::new();
        let verdict = match rules.by_address(dst) {
            ByAddress::Cidr => Ok(&self.counters.allowed_cidr),
            ByAddress::Refused(refusal) => Err((refusal, None)),
            ByAddress::NeedsName(candidates) => {
                match peek::read_name(&mut app, &mut first_bytes).await {
                    Peeked::Timeout => Err((Refusal::PeekTimeout, None)),
                    Peeked::NoName => Err((Refusal::NoName, None)),
                    Peeked::Name(name) => match rule_for(&candidates, name.as_str()) {
                        None => Err((mismatch(&name), Some(name))),
                        Some(rule) => {
                            let mut checked = check_address(rule, dst.ip());
                            if checked.is_err() {
                                // The app may have seen a DNS change first.
                                rule.addresses.requery(&self.resolver).await;
                                checked = check_address(rule, dst.ip());
                            }
                            match checked {
                                Ok(()) => Ok(&self.counters.allowed_host),
                                Err(refusal) => Err((refusal, Some(name))),
                            }
                        }
                    },
                }
            }
        };
        match verdict {
            Ok(counter) => {
                counter.increment(1);
                passthrough(app, dst, &first_bytes, idle).await;
            }
            Err((refusal, name)) => self.refuse(refusal, dst, name.as_ref(), &rules.sources),
        }
    }

    /// Counts, logs and reports a refusal; the connection is closed when
    /// the caller drops it.
    fn refuse(&self, refusal: Refusal, dst: SocketAddr, name: Option<&Name>, egress: &[String]) {
        self.counters.refused(refusal);
        let name = name.map(Name::as_str).unwrap_or_default();
        tracing::info!(
            service = %self.service,
            %dst,
            name,
            reason = refusal.as_str(),
            ?egress,
            "refused captured connection to a destination outside the mesh (see Egress and --egress)"
        );
        crate::events::egress_refused(&self.service, dst, refusal.as_str(), name);
    }
}

fn mismatch(name: &Name) -> Refusal {
    match name {
        Name::Sni(_) => Refusal::SniMismatch,
        Name::Host(_) => Refusal::HostMismatch,
    }
}

/// Dials `dst` directly, sends what was read while deciding, then copies
/// both ways until either side closes or the stream idles.
async fn passthrough(mut app: TcpStream, dst: SocketAddr, first_bytes: &[u8], idle: Duration) {
    let mut remote = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(remote)) => remote,
        Ok(Err(error)) => {
            tracing::info!(%dst, %error, "egress destination unreachable");
            return;
        }
        Err(_) => {
            tracing::info!(%dst, "egress destination did not answer in time");
            return;
        }
    };
    metrics::counter!("bulkhead_egress_connections_total").increment(1);
    if !first_bytes.is_empty() && remote.write_all(first_bytes).await.is_err() {
        return;
    }
    let _ = crate::wire::splice(&mut app, &mut remote, idle).await;
}
