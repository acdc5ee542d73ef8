//! The callee's half of an upgrade ([`crate::upgrade`]): an extended
//! CONNECT from a caller's sidecar is authorized as the request the
//! caller's app made (its method, the normalized path) by the same
//! [`admit`] as any request (and held to the same pending requests), sent to the app as that HTTP/1.1 upgrade
//! request, and on the app's `101` answered `200`; the two streams are
//! then spliced in a task the drain tracks.

use bulkhead_proto::model::Protocol;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use super::http::{Answer, admit};
use super::{Caller, Inbound};
use crate::drain::Drain;
use crate::upgrade::{self, UpgradeError};

/// Whether a request from a caller's sidecar is an upgrade: an extended
/// CONNECT (a CONNECT with `:protocol`).
pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_some()
}

pub(super) async fn request(
    mut req: Request<Incoming>,
    inbound: &Inbound,
    caller: &Caller,
    port: u16,
    drain: Drain,
) -> Answer {
    let refused = |error: UpgradeError| Answer::Refused(Box::new(error.response("inbound")));
    let from_peer = hyper::upgrade::on(&mut req);
    let (mut head, body) = req.into_parts();
    let (method, protocol) = match upgrade::from_connect(&mut head) {
        Ok(upgrade) => upgrade,
        Err(error) => return refused(error),
    };
    let mut req = Request::from_parts(head, body);
    match admit(&mut req, Some(&method), inbound, caller, port, false) {
        Ok(Protocol::Http) => {}
        Ok(_) => return refused(UpgradeError::NotHttp(port)),
        Err(answer) => return *answer,
    }
    let (mut head, body) = req.into_parts();
    upgrade::to_app(&mut head, method, &protocol);
    let deadline = tokio::time::Instant::now() + inbound.request_timeout;
    let req = Request::from_parts(head, body);
    let mut resp = match inbound.to_app(req, false, deadline, false).await {
        Ok(resp) => resp,
        Err(failed) => return Answer::Version(failed),
    };
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let from_app = hyper::upgrade::on(&mut resp);
        let stream = upgrade::Stream {
            direction: "inbound",
            service: inbound.service().to_owned(),
            peer: caller.id.to_string(),
        };
        let idle = inbound.tcp_idle_timeout;
        drain.spawn(
            async move {
                upgrade::splice(from_app, from_peer, idle, stream).await;
            }
            .in_current_span(),
        );
        let (head, _) = resp.into_parts();
        Answer::Version(upgrade::opened(head.headers))
    } else if status.is_success() {
        Answer::Version(UpgradeError::Declined(status).response("inbound"))
    } else {
        // The app's refusal (404, 426, ...) reaches the caller as it is.
        Answer::Version(resp.map(|b| b.boxed()))
    }
}
