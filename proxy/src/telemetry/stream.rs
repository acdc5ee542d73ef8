//! [`Observed`]: a response body that reports the request when its stream
//! ends — not when its head arrives. Only then is a gRPC call's
//! `grpc-status` known (it travels in the trailers unless the response is
//! trailers-only), and only then is a long stream's duration known. The
//! outbound side's [`Pick`] rides along, so the endpoint counts the stream
//! as in flight (load for the balancer) until it ends, and its outcome
//! feeds the latency estimate and outlier ejection then. The inbound
//! side's [`Serving`] rides along the same way: the request is in flight
//! for its version's aggregates until the stream ends.
//!
//! A `grpc-timeout` deadline is enforced here too: past it, the stream is
//! cut (the upstream stream is reset by dropping it) and ended with
//! `grpc-status: 4` (DEADLINE_EXCEEDED) trailers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::{Classified, End, RequestMetrics, Serving};
use crate::balance::{Outcome, Pick};
use crate::http::is_grpc;

/// A response body that records its request when the stream ends.
pub(crate) struct Observed<B>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    /// `None` once the stream ended (or was cut at the deadline).
    inner: Option<B>,
    status: StatusCode,
    /// For a gRPC response, its `grpc-status` once seen (in the head of a
    /// trailers-only response, else in the trailers).
    grpc: Option<Option<u32>>,
    started: Instant,
    metrics: Arc<RequestMetrics>,
    /// The endpoint that answered, and how long its head took (what the
    /// latency estimate learns; a stream's length is not its latency).
    pick: Option<(Pick, Duration)>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Inbound: the request, counted for this sidecar's version.
    serving: Option<Serving>,
    recorded: bool,
}

/// The `grpc-status` in `headers`, if any (`Some(None)`: present but not a
/// number, which the spec makes UNKNOWN).
fn grpc_status(headers: &HeaderMap) -> Option<Option<u32>> {
    headers
        .get("grpc-status")
        .map(|v| v.to_str().ok().and_then(|s| s.trim().parse().ok()))
}

impl<B> Observed<B>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    /// Wraps `resp`'s body. `started`: when the request arrived; `pick`:
    /// the endpoint that gave the response and its latency to the head;
    /// `deadline`: when a `grpc-timeout` runs out; `serving`: an inbound
    /// request to count for this version.
    pub(crate) fn wrap(
        resp: Response<B>,
        started: Instant,
        metrics: Arc<RequestMetrics>,
        pick: Option<(Pick, Duration)>,
        deadline: Option<Instant>,
        serving: Option<Serving>,
    ) -> Response<Self> {
        let status = resp.status();
        let grpc = is_grpc(resp.headers()).then(|| grpc_status(resp.headers()).flatten());
        let by_mesh = resp.headers().contains_key(crate::http::MESH_ERROR);
        let serving = serving.map(|s| s.mesh_error(by_mesh));
        resp.map(|inner| Self {
            inner: Some(inner),
            status,
            grpc,
            started,
            metrics,
            pick,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            serving,
            recorded: false,
        })
    }

    fn record(&mut self, end: End) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        self.inner = None;
        self.deadline = None;
        let how = Classified::new(self.status, self.grpc, end);
        let elapsed = self.started.elapsed();
        self.metrics.record(how, elapsed);
        if let Some(serving) = self.serving.take() {
            serving.end(how, end, elapsed);
        }
        if let Some((pick, latency)) = self.pick.take() {
            // A caller that left says nothing about the endpoint: the pick
            // is dropped (no longer in flight) without an outcome.
            if end != End::Cancelled {
                pick.finish(Outcome {
                    latency,
                    success: !how.server_error,
                });
            }
        }
    }
}

impl<B> HttpBody for Observed<B>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.record(End::Deadline);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("4"));
            trailers.insert(
                "grpc-message",
                HeaderValue::from_static("bulkhead: deadline (grpc-timeout) exceeded"),
            );
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && this.grpc.is_some()
                    && let Some(code) = grpc_status(trailers)
                {
                    this.grpc = Some(code);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.record(End::Broken);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.record(End::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl<B> Drop for Observed<B>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    fn drop(&mut self) {
        // hyper may drop a body without polling it when it says it is at
        // its end already (an empty body): that stream is complete.
        let end = if self.inner.as_ref().is_none_or(HttpBody::is_end_stream) {
            End::Complete
        } else {
            End::Cancelled
        };
        self.record(end);
    }
}
