//! Aggregation ("backend for frontend"): one GET fanned out to several
//! mesh services at once, their JSON merged under the route's keys.
//!
//! Each part's path is its template with `{rest}` replaced by the request
//! path after the route's prefix, and the request's query (so `fields`
//! reaches backends that support it). Every part has its own deadline
//! within the route's. The answer is a JSON object with one member per key
//! and `_status` mapping every key to its HTTP status or `"timeout"` /
//! `"error"`; a failed optional part is `null` and listed in
//! `x-bulkhead-partial`; a failed required part makes the whole a 502 (504
//! when it timed out) naming it. `?fields=a,b` keeps only those members of
//! each part's object.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::routes::Part;
use crate::http::{self as h, Body};
use crate::outbound::{self, Outbound};

/// Largest body read from one part.
const MAX_PART_BYTES: usize = 1 << 20;
/// Most names `fields` may list.
const MAX_FIELDS: usize = 64;

/// How one part ended.
enum Outcome {
    Json(Value),
    /// The backend answered, but not a 2xx.
    Status(StatusCode),
    /// Not JSON, too large, or the mesh could not send it.
    Error(String),
    Timeout,
}

impl Outcome {
    fn status(&self) -> Value {
        match self {
            Outcome::Json(_) => Value::from(200),
            Outcome::Status(s) => Value::from(s.as_u16()),
            Outcome::Error(_) => Value::from("error"),
            Outcome::Timeout => Value::from("timeout"),
        }
    }
}

pub(super) async fn serve(
    req: Request<Incoming>,
    parts: &[Part],
    timeout: Duration,
    rest: &str,
    outbound: &Outbound,
) -> Response<Body> {
    if req.method() != Method::GET {
        let mut resp = h::mesh_response(
            false,
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "bulkhead: an aggregate route answers GET only",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let query = req.uri().query().map(str::to_owned);
    let fields = query.as_deref().and_then(fields);
    let claims = req.extensions().get::<h::VerifiedClaims>().cloned();
    let mut headers = req.headers().clone();
    h::strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    // The parts are read here, not passed on: ask for them uncompressed.
    headers.remove(header::ACCEPT_ENCODING);
    let calls = parts.iter().map(|part| {
        let part_deadline = part
            .spec
            .timeout
            .as_ref()
            .map_or(deadline, |t| deadline.min(started + t.duration()));
        let path = part.spec.path.replace("{rest}", rest);
        let uri = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let headers = headers.clone();
        let claims = claims.clone();
        async move {
            let mut request = Request::new(h::empty());
            *request.headers_mut() = headers;
            if let Some(claims) = claims {
                request.extensions_mut().insert(claims);
            }
            match uri.parse() {
                Ok(uri) => *request.uri_mut() = uri,
                Err(e) => return Outcome::Error(format!("path {uri}: {e}")),
            }
            let call = async {
                let resp = outbound::send(&part.target, request, outbound).await;
                if !resp.status().is_success() {
                    return Outcome::Status(resp.status());
                }
                match Limited::new(resp.into_body(), MAX_PART_BYTES)
                    .collect()
                    .await
                {
                    Ok(body) => read_json(&body.to_bytes()),
                    Err(e) => Outcome::Error(format!("reading the body: {e}")),
                }
            };
            tokio::time::timeout_at(part_deadline, call)
                .await
                .unwrap_or(Outcome::Timeout)
        }
    });
    let outcomes = futures::future::join_all(calls).await;

    let mut merged = Map::new();
    let mut status = Map::new();
    let mut failed = Vec::new();
    for (part, outcome) in parts.iter().zip(outcomes) {
        let key = part.spec.key.as_str();
        status.insert(key.to_owned(), outcome.status());
        match outcome {
            Outcome::Json(value) => {
                merged.insert(key.to_owned(), select(value, fields.as_deref()));
            }
            failure => {
                if let Outcome::Error(why) = &failure {
                    tracing::debug!(key, %why, "aggregate part failed");
                }
                if part.spec.is_required() {
                    return required_failed(key, &failure);
                }
                failed.push(key);
                merged.insert(key.to_owned(), Value::Null);
            }
        }
    }
    merged.insert("_status".to_owned(), Value::Object(status));
    let body = Value::Object(merged).to_string();
    let mut resp = Response::new(h::full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if !failed.is_empty()
        && let Ok(value) = HeaderValue::from_str(&failed.join(","))
    {
        resp.headers_mut().insert("x-bulkhead-partial", value);
    }
    resp
}

fn read_json(body: &Bytes) -> Outcome {
    match serde_json::from_slice(body) {
        Ok(value) => Outcome::Json(value),
        Err(e) => Outcome::Error(format!("not JSON: {e}")),
    }
}

/// A required part failed: 504 if it ran out of time, else 502, naming it.
fn required_failed(key: &str, outcome: &Outcome) -> Response<Body> {
    let (status, reason) = match outcome {
        Outcome::Timeout => (StatusCode::GATEWAY_TIMEOUT, "part-timeout"),
        _ => (StatusCode::BAD_GATEWAY, "part-failed"),
    };
    let body = serde_json::json!({
        "error": format!("required part {key:?} failed"),
        "key": key,
        "status": outcome.status(),
    });
    let mut resp = Response::new(h::full(body.to_string()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(h::MESH_ERROR, HeaderValue::from_static(reason));
    resp
}

/// The names `fields=a,b` lists (percent-decoding not needed: field names
/// are plain tokens; anything else never matches).
pub(super) fn fields(query: &str) -> Option<Vec<String>> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("fields="))?;
    let names: Vec<String> = value
        .split([',', '+'])
        .flat_map(|v| v.split("%2C"))
        .filter(|n| !n.is_empty())
        .take(MAX_FIELDS)
        .map(str::to_owned)
        .collect();
    (!names.is_empty()).then_some(names)
}

/// Keeps only the named members of an object (other values as they are).
fn select(value: Value, fields: Option<&[String]>) -> Value {
    match (value, fields) {
        (Value::Object(object), Some(fields)) => Value::Object(
            object
                .into_iter()
                .filter(|(k, _)| fields.iter().any(|f| f == k))
                .collect(),
        ),
        (value, _) => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_the_query() {
        assert_eq!(
            fields("a=1&fields=name,price"),
            Some(vec!["name".to_owned(), "price".to_owned()])
        );
        assert_eq!(
            fields("fields=name%2Cprice"),
            Some(vec!["name".to_owned(), "price".to_owned()])
        );
        assert_eq!(fields("fields="), None);
        assert_eq!(fields("x=1"), None);
    }

    #[test]
    fn select_keeps_named_members_of_objects_only() {
        let v = serde_json::json!({"name": "a", "price": 1, "secret": true});
        let names = ["name".to_owned()];
        assert_eq!(
            select(v.clone(), Some(&names)),
            serde_json::json!({"name": "a"})
        );
        assert_eq!(select(v.clone(), None), v);
        assert_eq!(
            select(serde_json::json!([1]), Some(&names)),
            serde_json::json!([1])
        );
    }
}
