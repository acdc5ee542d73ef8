//! Opaque TCP to a service: pick a version and an endpoint, dial its
//! sidecar (mTLS, exact identity, TCP preface), then copy bytes both ways.
//! Nothing has been sent before the dial succeeds, so a failed dial tries
//! another endpoint (up to [`MAX_ATTEMPTS`]) — unless the caller dialled
//! one endpoint's own address: then that one only.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Outbound;
use super::retry::MAX_ATTEMPTS;
use crate::balance::Outcome;
use crate::route;
use crate::state::ServiceKey;
use crate::wire::{self, Payload, Preface};

/// `pin`: the one endpoint a caller that dialled a pod address reaches
/// (no split, no other endpoint when it fails).
pub(super) async fn stream(
    mut app: TcpStream,
    key: &ServiceKey,
    port: u16,
    pin: Option<SocketAddr>,
    outbound: &Outbound,
) {
    let (service, choice) = {
        let state = outbound.states.load();
        let service = outbound.balancers.get(key, &state);
        if pin.is_some() {
            (service, route::VersionChoice::Any)
        } else {
            let split = state.view(key).and_then(|v| v.split.as_deref());
            // No headers: a split sticky by header rolls at random here.
            let headers = http::HeaderMap::new();
            let random = rand::random();
            let choice =
                route::choose_with_fallback(split, &headers, outbound.caller, random, |c| {
                    service.balancer.has_healthy(|e| c.accepts(&e.version))
                })
                .unwrap_or(route::VersionChoice::Any);
            (service, choice)
        }
    };
    let balancer = &service.balancer;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let (pick, identity, mut remote, started) = loop {
        let pick = if tried.len() >= MAX_ATTEMPTS {
            None
        } else {
            balancer.pick(&outbound.locality.load(), |e| {
                let at = SocketAddr::new(e.address, e.inbound_port);
                choice.accepts(&e.version)
                    && e.port(port).is_some()
                    && pin.is_none_or(|pin| pin == at)
                    && !tried.contains(&at)
            })
        };
        let Some(pick) = pick else {
            let reason = if tried.is_empty() {
                "no-endpoints"
            } else {
                "connect-failed"
            };
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => reason).increment(1);
            tracing::warn!(service = %key.1, reason, "no reachable endpoint; closing connection");
            return;
        };
        let ep = pick.endpoint().clone();
        let Some(identity) = ep.identity.clone() else {
            return;
        };
        let addr = SocketAddr::new(ep.address, ep.inbound_port);
        tried.push(addr);
        let started = Instant::now();
        let preface = Preface {
            payload: Payload::Tcp,
            port,
        };
        match outbound.pool.dial(addr, &identity, preface).await {
            Ok(s) => break (pick, identity, s, started),
            Err(error) => {
                pick.finish(Outcome {
                    latency: started.elapsed(),
                    success: false,
                });
                tracing::warn!(%error, "cannot reach endpoint; trying another");
            }
        }
    };
    let connected = started.elapsed();
    let result = wire::splice(&mut app, &mut remote, outbound.tcp_idle_timeout).await;
    let class = wire::splice_result(&result);
    pick.finish(Outcome {
        latency: connected,
        // Idling out says nothing against the endpoint.
        success: class != "error",
    });
    metrics::counter!("bulkhead_tcp_connections_total", "direction" => "outbound", "service" => key.1.clone(), "peer" => identity.to_string(), "result" => class).increment(1);
}
