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
//! ([`Target::pinned`]). Destinations outside the mesh are `egress`'s to
//! let out or refuse ([`EgressPolicy`]: the service's `Egress` rules, else
//! `--egress allow|deny`).

mod iptables;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

pub(crate) use self::iptables::{InitArgs, init_iptables};
use crate::accept::{self, Listener};
use crate::drain::Drain;
use crate::egress::EgressPolicy;
use crate::outbound::{self, Outbound, Target};
use crate::state::Destination;
#[cfg(doc)]
use crate::state::MeshState;

/// Serves the capture listener until the sidecar drains.
pub(crate) async fn serve(
    listener: Listener,
    outbound: Arc<Outbound>,
    egress: Arc<EgressPolicy>,
    drain: Drain,
) {
    accept::serve(listener, Some(drain.clone()), move |tcp, _| {
        connection(tcp, outbound.clone(), egress.clone(), drain.clone())
    })
    .await;
}

async fn connection(
    tcp: TcpStream,
    outbound: Arc<Outbound>,
    egress: Arc<EgressPolicy>,
    drain: Drain,
) {
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
        None => {
            let idle = outbound.tcp_idle_timeout;
            // Boxed: its name-reading buffers would otherwise grow every
            // captured connection's future, mesh ones included.
            Box::pin(egress.connection(&outbound.states, tcp, dst, idle)).await;
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
