//! The caller's half of an upgrade ([`crate::upgrade`]): the app's
//! HTTP/1.1 upgrade request is routed like any request and sent as an
//! extended CONNECT on a connection of its own; when the callee's sidecar
//! opens the stream (200), the app gets its `101` and the two are spliced
//! in a task the drain tracks. The endpoint counts the stream as in flight
//! until it ends, as it does an opaque TCP stream.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Answered, HttpRoute, route_request};
use crate::balance::Outcome;
use crate::drain::Drain;
use crate::http::{Answer, Body};
use crate::outbound::Outbound;
use crate::pool::Lane;
use crate::telemetry::Observed;
use crate::upgrade::{self, UpgradeError};

/// A request that carries `Upgrade`: carried as an upgrade when it is one
/// the mesh carries, refused when it cannot be, else sent as any request.
pub(super) async fn request(
    mut req: Request<Incoming>,
    route: &HttpRoute,
    outbound: &Outbound,
    drain: Drain,
) -> Response<Body> {
    let started = Instant::now();
    let protocol = match upgrade::requested(req.version(), req.method(), req.headers()) {
        Ok(Some(protocol)) => protocol,
        Ok(None) => return super::request(req, route, outbound).await,
        Err(error) => {
            let resp = error.response("outbound").map(Answer::Mesh);
            let metrics = Arc::clone(&route.unattributed);
            return Observed::wrap(resp, started, metrics, None, None, None).map(|b| b.boxed());
        }
    };
    route.service.budget.record_request(started);
    let from_app = hyper::upgrade::on(&mut req);
    let (mut head, body) = req.into_parts();
    upgrade::to_connect(&mut head, protocol.clone());
    let deadline = started + outbound.request_timeout;
    let req = Request::from_parts(head, body);
    let (mut resp, answered) =
        route_request(req, route, outbound, false, deadline, Lane::Dedicated).await;
    let Answered { metrics, mut pick } = answered.unwrap_or_else(|| Answered {
        metrics: Arc::clone(&route.unattributed),
        pick: None,
    });
    let status = resp.status();
    let resp = if status == StatusCode::OK && matches!(resp.body(), Answer::Peer(_)) {
        let from_peer = hyper::upgrade::on(&mut resp);
        let stream = upgrade::Stream {
            direction: "outbound",
            service: route.key.1.clone(),
            peer: pick
                .as_ref()
                .and_then(|(p, _)| p.endpoint().identity.as_ref())
                .map(ToString::to_string)
                .unwrap_or_default(),
        };
        // The endpoint carries the stream until it ends: the pick goes with
        // it, and its outcome is the stream's.
        let pick = pick.take();
        let idle = outbound.tcp_idle_timeout;
        drain.spawn(
            async move {
                let result = upgrade::splice(from_app, from_peer, idle, stream).await;
                if let Some((pick, latency)) = pick {
                    pick.finish(Outcome {
                        latency,
                        // Idling out says nothing against the endpoint.
                        success: result != "error",
                    });
                }
            }
            .in_current_span(),
        );
        let (head, _) = resp.into_parts();
        upgrade::switched(head.headers, &protocol).map(Answer::Mesh)
    } else if status.is_success() {
        UpgradeError::NotOpened(status)
            .response("outbound")
            .map(Answer::Mesh)
    } else {
        // A refusal (403), the app's own answer (404, 426), a mesh error:
        // the app's client sees it as it came.
        resp
    };
    Observed::wrap(resp, started, metrics, pick, None, None).map(|b| b.boxed())
}
