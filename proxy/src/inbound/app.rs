//! The app behind this sidecar, as the inbound side speaks to it: a client
//! per protocol (HTTP/1.1, or HTTP/2 for gRPC) whose connections are kept
//! and reused, at most `--max-pending-requests` requests waiting for or in
//! flight to it (past that: 503 `overloaded`, the app never sees it), and
//! its answer checked to be a head the caller's sidecar will take.
//!
//! A request whose caller gives up (resets the stream) while the app has
//! it is not cut off: cutting an HTTP/1.1 exchange closes its connection,
//! and a peer resetting fast would then have the sidecar dial the app for
//! every request. The exchange is finished in the background instead
//! ([`AppCall`]), holding its pending slot, so those stay bounded too.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::Inbound;
use crate::http::{self as h, Body};
use crate::limits::{self, Head, Limit, Limits, PendingSlot};

/// How long, and how many bytes, an abandoned exchange's answer is read
/// for so its connection can be reused; past either it is closed instead.
const ABANDONED_DRAIN_TIME: Duration = Duration::from_secs(1);
const ABANDONED_DRAIN_BYTES: usize = 1 << 20;

pub(crate) type AppClient = Client<HttpConnector, Incoming>;

/// The clients for the app: HTTP/1.1 and HTTP/2 (prior knowledge).
pub(crate) fn clients(limits: &Limits) -> (AppClient, AppClient) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    // Idle app connections close after 30 s, and at most 256 wait per
    // app: enough that a steady 320 concurrent requests reuse them
    // instead of dialing the app per request (bench/README.md), few
    // enough that a burst does not leave thousands open. Busy ones are
    // bounded by the pending requests, one each.
    let builder = || {
        let mut b = Client::builder(TokioExecutor::new());
        // What an app connection buffers of an answer not yet sent on (a
        // caller that grants no window): its head, and a little more.
        b.http1_max_buf_size((2 * limits.max_header_bytes).max(64 * 1024))
            .http2_max_send_buf_size(limits::SEND_BUFFER)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256);
        b
    };
    let http1 = builder().build(connector.clone());
    // Every peer's gRPC calls share the HTTP/2 connection to the app: one
    // peer that stops reading its responses must not hold its window.
    let http2 = builder()
        .http2_only(true)
        .http2_initial_stream_window_size(limits::STREAM_WINDOW)
        .http2_initial_connection_window_size(limits.connection_window())
        .build(connector);
    (http1, http2)
}

impl Inbound {
    /// Sends an admitted request to the app (over HTTP/2 when `http2`):
    /// the app's answer, or the mesh's when there is no room among the
    /// pending requests, the app fails, it does not answer by `deadline`,
    /// or its answer's head is too large for the caller's sidecar.
    pub(super) async fn to_app(
        &self,
        req: Request<Incoming>,
        http2: bool,
        deadline: Instant,
        grpc: bool,
    ) -> Result<Response<Incoming>, Response<Body>> {
        let Some(slot) = self.pending.try_slot() else {
            return Err(overloaded(grpc));
        };
        let client = if http2 {
            &self.app_http2
        } else {
            &self.app_http1
        };
        let call = AppCall {
            call: Some(client.request(req)),
            // An HTTP/2 stream is cancelled alone; an HTTP/1 exchange cut
            // short takes its connection with it.
            finish_abandoned: !http2,
            deadline,
            slot: Some(slot),
        };
        let resp = match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(error)) => {
                metrics::counter!("bulkhead_mesh_errors_total", "direction" => "inbound", "reason" => "app-error").increment(1);
                tracing::warn!(%error, "forwarding to the app failed");
                return Err(h::mesh_response(
                    grpc,
                    StatusCode::BAD_GATEWAY,
                    "app-unreachable",
                    "bulkhead: the app did not answer",
                ));
            }
            Err(_) => {
                return Err(h::mesh_response(
                    grpc,
                    StatusCode::GATEWAY_TIMEOUT,
                    "app-timeout",
                    "bulkhead: the app did not answer in time",
                ));
            }
        };
        if !Head::response(&resp.status(), resp.headers()).fits(self.limits.max_header_bytes) {
            return Err(response_too_large(grpc, self.limits.max_header_bytes));
        }
        Ok(resp)
    }
}

#[cold]
fn overloaded(grpc: bool) -> Response<Body> {
    limits::exceeded("inbound", Limit::PendingRequests);
    tracing::debug!("too many requests pending for the app: shed");
    h::mesh_response(
        grpc,
        StatusCode::SERVICE_UNAVAILABLE,
        h::OVERLOADED,
        "bulkhead: too many requests are waiting for the app; try again",
    )
}

#[cold]
fn response_too_large(grpc: bool, limit: usize) -> Response<Body> {
    limits::exceeded("inbound", Limit::HeaderSize);
    metrics::counter!("bulkhead_mesh_errors_total", "direction" => "inbound", "reason" => "response-header-too-large").increment(1);
    tracing::warn!(
        limit,
        "the app answered with a head larger than --max-header-bytes"
    );
    h::mesh_response(
        grpc,
        StatusCode::BAD_GATEWAY,
        "response-header-too-large",
        &format!("bulkhead: the app's response headers exceed {limit} bytes"),
    )
}

/// A request with the app, holding its pending slot until the app has
/// answered. Dropped before that (its caller reset the stream), an HTTP/1
/// exchange is finished in a task of its own ([`finish_abandoned`]).
struct AppCall {
    /// `None` once it has resolved.
    call: Option<ResponseFuture>,
    finish_abandoned: bool,
    deadline: Instant,
    slot: Option<PendingSlot>,
}

impl Future for AppCall {
    type Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(call) = self.call.as_mut() else {
            return Poll::Pending;
        };
        let out = std::task::ready!(Pin::new(call).poll(cx));
        self.call = None;
        Poll::Ready(out)
    }
}

impl Drop for AppCall {
    fn drop(&mut self) {
        if let Some(call) = self.call.take()
            && self.finish_abandoned
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(finish_abandoned(call, self.deadline, self.slot.take()));
        }
    }
}

/// An exchange whose caller left: its answer is awaited (until the
/// request's deadline) and read (a little, briefly), so the connection
/// goes back to the pool instead of closing.
#[cold]
async fn finish_abandoned(call: ResponseFuture, deadline: Instant, slot: Option<PendingSlot>) {
    let Ok(Ok(resp)) = tokio::time::timeout_at(deadline, call).await else {
        return;
    };
    let mut body = resp.into_body();
    let drain = async {
        let mut read = 0;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return };
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > ABANDONED_DRAIN_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(ABANDONED_DRAIN_TIME, drain).await;
    drop(slot);
}
