//! Transparent capture, in one place: the rules `bulkhead-proxy
//! init-iptables` installs in a pod ([`iptables`]), and the port-4140
//! listener they redirect the pod's outbound TCP to.
//!
//! Each captured connection's original destination (`SO_ORIGINAL_DST`)
//! picks the service — a Service's VIP, or the address of a registered
//! endpoint ([`MeshState::destination`]; an address no subscribed service
//! has is looked up on the control plane first, see `subscriptions`) — and
//! the connection is then routed as on an `--upstream` listener: balanced
//! for a VIP, pinned to that one endpoint for a pod address
//! ([`Target::pinned`]). Unknown destinations go
//! out unchanged only with `--egress allow`; otherwise they are refused
//! and counted.

mod iptables;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

pub(crate) use self::iptables::{InitArgs, init_iptables};
use crate::accept::{self, Listener};
use crate::drain::Drain;
use crate::outbound::{self, Outbound, Target};
use crate::state::Destination;
#[cfg(doc)]
use crate::state::MeshState;

/// How long a passed-through egress connection may take to connect.
const EGRESS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the capture listener until the sidecar drains.
pub(crate) async fn serve(
    listener: Listener,
    outbound: Arc<Outbound>,
    egress_allowed: bool,
    drain: Drain,
) {
    accept::serve(listener, Some(drain.clone()), move |tcp, _| {
        connection(tcp, outbound.clone(), egress_allowed, drain.clone())
    })
    .await;
}

async fn connection(tcp: TcpStream, outbound: Arc<Outbound>, egress_allowed: bool, drain: Drain) {
    let dst = match original_destination(&tcp) {
        Ok(d) => d,
        Err(error) => {
            metrics::counter!("bulkhead_outbound_refused_total", "reason" => "no-original-destination").increment(1);
            tracing::warn!(%error, "captured connection without an original destination");
            return;
        }
    };
    let found = match outbound.states.load().destination(dst) {
        Some(found) => Some(found),
        None => look_up(dst, &outbound).await,
    };
    let target = match found {
        Some(Destination::Vip(key)) => Target::new(key, Some(dst.port())),
        // A pod address reaches that pod, or nothing.
        Some(Destination::Endpoint(key, endpoint)) => Target::pinned(key, dst.port(), &endpoint),
        None if egress_allowed => {
            passthrough(tcp, dst, outbound.tcp_idle_timeout).await;
            return;
        }
        None => {
            metrics::counter!("bulkhead_outbound_refused_total", "reason" => "unknown-destination")
                .increment(1);
            tracing::info!(%dst, "refused captured connection to a destination outside the mesh (see --egress)");
            return;
        }
    };
    let target = Arc::new(target.captured());
    outbound::connection(tcp, target, outbound, drain).await;
}

/// A destination the state does not know may be an endpoint of a service
/// not subscribed yet: ask the control plane who is at that address,
/// subscribe, and look again.
async fn look_up(dst: SocketAddr, outbound: &Outbound) -> Option<Destination> {
    let services = outbound.subscriptions.lookup_address(dst.ip()).await;
    // Together, not in turn: the wait stays one SUBSCRIBE_WAIT however many
    // services share the address.
    let waits = services
        .iter()
        .map(|key| outbound.subscriptions.ensure(&outbound.states, key));
    let asked = futures::future::join_all(waits).await.contains(&true);
    if asked {
        outbound.states.load().destination(dst)
    } else {
        None
    }
}

async fn passthrough(mut app: TcpStream, dst: SocketAddr, idle: Duration) {
    match tokio::time::timeout(EGRESS_CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(mut remote)) => {
            metrics::counter!("bulkhead_egress_connections_total").increment(1);
            let _ = crate::wire::splice(&mut app, &mut remote, idle).await;
        }
        _ => tracing::info!(%dst, "egress destination unreachable"),
    }
}

/// Where a captured connection was going (SO_ORIGINAL_DST, v4 or v6).
pub(crate) fn original_destination(tcp: &tokio::net::TcpStream) -> std::io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let local = tcp.local_addr()?;
    let dst = if local.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    dst.as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}
