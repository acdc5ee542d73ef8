//! `GET /v1/events`: the event stream as Server-Sent Events, for a web
//! page, on the gRPC TLS listener. An operator's client certificate is
//! required (403 otherwise). `Last-Event-ID` (or `?after=`) resumes after
//! an id; `?namespace=` and `?type=` (repeatable) filter as `WatchEvents`
//! does. Each event is `id:` (its revision), `event:` (its type) and
//! `data:` (the CloudEvent, one line of JSON); a comment every
//! [`HEARTBEAT`] keeps proxies from closing an idle stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::feed::{self, Delivered, FeedError};
use crate::api::ControlPlane;
use crate::server::ConnInfo;

/// The path served.
pub(crate) const PATH: &str = "/v1/events";
/// How often an idle stream gets a comment.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Longest query string read.
const MAX_QUERY: usize = 2048;

type Body = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

fn plain(status: http::StatusCode, text: String) -> http::Response<Body> {
    let once = futures::stream::iter([Ok(Frame::data(Bytes::from(text + "\n")))]);
    let mut response = http::Response::new(StreamBody::new(Box::pin(once) as _));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Answers one request for the stream.
pub(crate) async fn serve<B>(
    plane: Arc<ControlPlane>,
    request: http::Request<B>,
) -> Result<http::Response<Body>, Infallible> {
    let peer = request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|info| info.peer.clone());
    let Some(peer) = peer.filter(|p| plane.operators.contains(p)) else {
        metrics::counter!("bulkhead_admin_denied_total", "action" => "events").increment(1);
        return Ok(plain(
            http::StatusCode::FORBIDDEN,
            "the event stream needs an operator's client certificate".to_owned(),
        ));
    };
    if request.method() != http::Method::GET {
        return Ok(plain(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "only GET".to_owned(),
        ));
    }
    let query = match parse(&request) {
        Ok(q) => q,
        Err(message) => return Ok(plain(http::StatusCode::BAD_REQUEST, message)),
    };
    tracing::debug!(%peer, after = query.after_id, "event stream (SSE) opened");
    let (rx, done_rx) = match feed::spawn(&plane.events.consumers, plane.store.clone(), query) {
        Ok(feed) => feed,
        Err(busy) => {
            return Ok(plain(
                http::StatusCode::SERVICE_UNAVAILABLE,
                busy.to_string(),
            ));
        }
    };
    let mut response = http::Response::new(StreamBody::new(frames(rx, done_rx)));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// The feed as SSE frames, with heartbeats; ends with a comment saying why
/// when the feed fails.
fn frames(
    rx: mpsc::Receiver<Delivered>,
    done: tokio::sync::oneshot::Receiver<Result<(), FeedError>>,
) -> Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>> {
    let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let state = (rx, Some(done), heartbeat);
    Box::pin(futures::stream::unfold(
        state,
        |(mut rx, mut done, mut heartbeat)| async move {
            let text = tokio::select! {
                event = rx.recv() => match event {
                    Some(d) => format!("id: {}\nevent: {}\ndata: {}\n\n", d.id, d.kind, d.json),
                    None => {
                        let result = done.take()?.await;
                        match result {
                            Ok(Err(FeedError::Gone)) | Ok(Ok(())) | Err(_) => return None,
                            Ok(Err(error)) => format!(": stream ended: {error}\n\n"),
                        }
                    }
                },
                _ = heartbeat.tick() => ": heartbeat\n\n".to_owned(),
            };
            Some((Ok(Frame::data(Bytes::from(text))), (rx, done, heartbeat)))
        },
    ))
}

/// `Last-Event-ID` / `?after=`, `?namespace=`, `?type=`.
fn parse<B>(request: &http::Request<B>) -> Result<feed::Query, String> {
    let mut query = feed::Query {
        follow: true,
        ..feed::Query::default()
    };
    if let Some(id) = request.headers().get("last-event-id") {
        query.after_id = id
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or("Last-Event-ID: expected an event id (a number)")?;
    }
    let text = request.uri().query().unwrap_or("");
    if text.len() > MAX_QUERY {
        return Err(format!("query string longer than {MAX_QUERY} bytes"));
    }
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "after" if query.after_id == 0 => {
                query.after_id = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or("after: expected an event id (a number)")?;
            }
            "after" => {}
            "namespace" => {
                bulkhead_proto::identity::validate_name("namespace", value)
                    .map_err(|e| e.to_string())?;
                query.namespace = Some(value.to_owned());
            }
            "type" => {
                let request = bulkhead_proto::pb::WatchEventsRequest {
                    types: vec![value.to_owned()],
                    ..Default::default()
                };
                crate::api::admin::events_query(request).map_err(|s| s.message().to_owned())?;
                if query.types.len() >= 32 {
                    return Err("at most 32 type filters".to_owned());
                }
                query.types.push(value.to_owned());
            }
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, last: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::get(uri);
        if let Some(id) = last {
            b = b.header("last-event-id", id);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_last_event_id_wins_over_the_query_and_bad_input_is_refused() {
        let q = parse(&request(
            "/v1/events?after=5&namespace=shop&type=endpoint",
            Some("42"),
        ))
        .unwrap();
        assert_eq!(q.after_id, 42);
        assert_eq!(q.namespace.as_deref(), Some("shop"));
        assert_eq!(q.types, ["endpoint"]);
        assert_eq!(
            parse(&request("/v1/events?after=7", None))
                .unwrap()
                .after_id,
            7
        );
        assert!(parse(&request("/v1/events", Some("x"))).is_err());
        assert!(parse(&request("/v1/events?namespace=../x", None)).is_err());
        assert!(parse(&request("/v1/events?type=A%20B", None)).is_err());
        assert!(parse(&request("/v1/events?bogus=1", None)).is_err());
    }
}
