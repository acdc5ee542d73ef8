//! The live side of the dashboard: ONE `Admin.WatchEvents` stream from
//! the control plane (as the operator), resumed after the last id it
//! delivered whenever it breaks (or stays quiet and the control plane
//! does not answer a health probe), relayed to every open page over
//! Server-Sent Events (`/api/events`). What the views need from the
//! stream is kept here in bounded memory: the latest events (replayed to
//! a page that connects, or resumes with `Last-Event-ID`), the denials
//! added up by caller, target, rule and path, and which endpoints
//! callers have ejected.
//!
//! Bounds: [`MAX_RECENT`] events kept, [`MAX_DENIALS`] denial rows,
//! [`MAX_EJECTIONS`] ejections, [`MAX_STREAMS`] pages streaming at once
//! (more get a 503 and their browser retries), events over
//! [`MAX_EVENT_BYTES`] dropped. A page too slow to keep up is cut off
//! and resumes from the kept events.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_proto::pb;
use bulkhead_proto::pb::admin_client::AdminClient;
use bytes::Bytes;
use futures::Stream;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tonic::transport::Channel;

use crate::events::{AUTHZ_DENIED, ENDPOINT_EJECTED, ENDPOINT_READMITTED, now_ms};
use crate::golden::short_caller;

/// Events kept for pages that connect or resume.
pub(super) const MAX_RECENT: usize = 500;
/// Events replayed to a page that connects without a `Last-Event-ID`.
const REPLAY: usize = 200;
/// Denial rows kept (the oldest go first).
const MAX_DENIALS: usize = 200;
/// Ejections kept (the oldest go first).
const MAX_EJECTIONS: usize = 1000;
/// Pages streaming at once.
pub(super) const MAX_STREAMS: usize = 8;
/// Larger events are not relayed (sidecars' are under 2 KiB).
const MAX_EVENT_BYTES: usize = 64 * 1024;
/// How far back the dashboard reads when it starts.
const BACKLOG: Duration = Duration::from_secs(3600);
/// Denials this recent draw a denied edge in the topology.
const DENIED_EDGE_WINDOW: Duration = Duration::from_secs(300);
/// How often an idle stream gets a comment (keeps it from looking dead).
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Longest wait before the relay tries the control plane again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long opening the stream (or a health probe) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream quiet this long gets its control plane probed.
const QUIET: Duration = Duration::from_secs(20);

/// One message for the pages: a mesh event (with its id) or the relay's
/// own status (`event: status`, no id).
#[derive(Debug)]
pub(super) struct Relayed {
    id: Option<i64>,
    /// One line of JSON.
    json: String,
}

impl Relayed {
    fn frame(&self) -> String {
        match self.id {
            Some(id) => format!("id: {id}\ndata: {}\n\n", self.json),
            None => format!("event: status\ndata: {}\n\n", self.json),
        }
    }
}

/// What denials are added up by: the target's namespace and name, the
/// caller, the rule or reason, the normalized path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DenialKey {
    namespace: String,
    caller: String,
    target: String,
    rule: String,
    path: String,
}

/// Denials of one [`DenialKey`], added up.
#[derive(Debug, Clone)]
struct Denials {
    count: u64,
    first_unix_ms: i64,
    last_unix_ms: i64,
    /// The sidecar that reported the latest.
    reported_by: String,
}

/// An endpoint ejected by one caller's sidecar.
#[derive(Debug, Clone)]
struct Ejection {
    at_unix_ms: i64,
    until_unix_ms: i64,
}

#[derive(Debug, Default)]
struct Kept {
    recent: VecDeque<Arc<Relayed>>,
    denials: HashMap<DenialKey, Denials>,
    /// (address:inboundPort, ejecting sidecar)
    ejections: HashMap<(String, String), Ejection>,
    status: Value,
}

/// The relay and what it keeps; shared by the server's handlers.
#[derive(Debug)]
pub(super) struct Live {
    kept: Mutex<Kept>,
    tx: broadcast::Sender<Arc<Relayed>>,
    streams: Arc<Semaphore>,
}

impl Default for Live {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(MAX_RECENT);
        Self {
            kept: Mutex::new(Kept {
                status: json!({"connected": false, "error": "connecting to the control plane"}),
                ..Kept::default()
            }),
            tx,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

/// Too many pages stream already.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_STREAMS} pages follow the event stream already: close one, or wait")]
pub(super) struct Busy;

type Frames = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the control plane's event stream for as long as the
    /// dashboard runs, resuming after the last id when it breaks.
    pub(super) async fn follow(self: Arc<Self>, admin: AdminClient<Channel>) {
        let mut after = 0;
        let mut backoff = Duration::from_millis(200);
        loop {
            let request = pb::WatchEventsRequest {
                after_id: after,
                since_unix_ms: if after > 0 {
                    0
                } else {
                    now_ms() - BACKLOG.as_millis() as i64
                },
                namespace: String::new(),
                types: Vec::new(),
                follow: true,
            };
            let result = async {
                let opened =
                    tokio::time::timeout(OPEN_TIMEOUT, admin.clone().watch_events(request))
                        .await
                        .map_err(|_| format!("no answer within {}s", OPEN_TIMEOUT.as_secs()))?;
                let mut stream = opened.map_err(|s| s.message().to_owned())?.into_inner();
                self.set_status(None);
                backoff = Duration::from_millis(200);
                loop {
                    // A quiet stream may be a dead connection (a partition
                    // sends no reset): after a while, ask the control plane
                    // whether it is there.
                    let Ok(next) = tokio::time::timeout(QUIET, stream.message()).await else {
                        probe(&admin).await?;
                        continue;
                    };
                    let Some(event) = next.map_err(|s| s.message().to_owned())? else {
                        break;
                    };
                    after = after.max(event.id);
                    self.take(&event);
                }
                Err::<(), String>("the control plane closed the event stream".to_owned())
            }
            .await;
            if let Err(error) = result {
                tracing::debug!(%error, after, "dashboard: event stream interrupted");
                self.set_status(Some(error));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn set_status(&self, error: Option<String>) {
        let status = match &error {
            None => json!({"connected": true, "error": null}),
            Some(e) => {
                json!({"connected": false, "error": format!("control plane unreachable: {e}")})
            }
        };
        let mut kept = self.lock();
        if kept.status == status {
            return;
        }
        kept.status = status.clone();
        let _ = self.tx.send(Arc::new(Relayed {
            id: None,
            json: status.to_string(),
        }));
    }

    /// Keeps and relays one event; notes denials and ejections.
    fn take(&self, event: &pb::MeshEvent) {
        if event.cloudevent_json.len() > MAX_EVENT_BYTES {
            return;
        }
        let Ok(value) = serde_json::from_str::<Value>(&event.cloudevent_json) else {
            return;
        };
        // Re-serialized: one line whatever the control plane sent.
        let relayed = Arc::new(Relayed {
            id: Some(event.id),
            json: value.to_string(),
        });
        let mut kept = self.lock();
        match event.r#type.as_str() {
            AUTHZ_DENIED => note_denial(&mut kept, &event.namespace, &value),
            ENDPOINT_EJECTED | ENDPOINT_READMITTED => {
                note_ejection(&mut kept, &event.r#type, &value);
            }
            _ => {}
        }
        if kept.recent.len() >= MAX_RECENT {
            kept.recent.pop_front();
        }
        kept.recent.push_back(relayed.clone());
        // Sent under the lock: a page subscribing meanwhile sees each
        // event once, in the replay or live.
        let _ = self.tx.send(relayed);
    }

    /// An SSE stream for one page: the status, the kept events after
    /// `last_id` (or the latest [`REPLAY`]), then live ones.
    pub(super) fn stream(&self, last_id: Option<i64>) -> Result<Frames, Busy> {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| Busy)?;
        let (rx, mut backlog, status) = {
            let kept = self.lock();
            let rx = self.tx.subscribe();
            let backlog: Vec<Arc<Relayed>> = match last_id {
                Some(last) => kept
                    .recent
                    .iter()
                    .filter(|r| r.id.is_some_and(|id| id > last))
                    .cloned()
                    .collect(),
                None => kept
                    .recent
                    .iter()
                    .skip(kept.recent.len().saturating_sub(REPLAY))
                    .cloned()
                    .collect(),
            };
            (rx, backlog, kept.status.to_string())
        };
        backlog.insert(
            0,
            Arc::new(Relayed {
                id: None,
                json: status,
            }),
        );
        let heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        let state = Pump {
            backlog: backlog.into(),
            rx,
            heartbeat,
            _permit: permit,
        };
        Ok(Box::pin(futures::stream::unfold(state, |mut pump| async {
            let text = pump.next().await?;
            Some((Ok(Frame::data(Bytes::from(text))), pump))
        })))
    }

    /// The denial rows, newest first.
    pub(super) fn denials(&self) -> Vec<Value> {
        let kept = self.lock();
        let mut rows: Vec<(&DenialKey, &Denials)> = kept.denials.iter().collect();
        rows.sort_by_key(|(_, d)| std::cmp::Reverse(d.last_unix_ms));
        rows.into_iter()
            .map(|(k, d)| {
                json!({"namespace": k.namespace, "caller": k.caller, "from": short_caller(&k.caller),
                       "target": k.target, "to": format!("{}/{}", k.namespace, k.target),
                       "rule": k.rule, "path": k.path, "count": d.count,
                       "firstUnixMs": d.first_unix_ms, "lastUnixMs": d.last_unix_ms,
                       "reportedBy": d.reported_by})
            })
            .collect()
    }

    /// Caller → target pairs denied in the last few minutes, with counts.
    pub(super) fn denied_edges(&self) -> Vec<Value> {
        let since = now_ms() - DENIED_EDGE_WINDOW.as_millis() as i64;
        let kept = self.lock();
        let mut edges: HashMap<(String, String), (u64, Vec<String>)> = HashMap::new();
        for (k, d) in &kept.denials {
            if d.last_unix_ms < since {
                continue;
            }
            let edge = edges
                .entry((
                    short_caller(&k.caller),
                    format!("{}/{}", k.namespace, k.target),
                ))
                .or_default();
            edge.0 += d.count;
            if !edge.1.contains(&k.rule) && edge.1.len() < 8 {
                edge.1.push(k.rule.clone());
            }
        }
        let mut out: Vec<Value> = edges
            .into_iter()
            .map(|((from, to), (count, rules))| {
                json!({"from": from, "to": to, "count": count, "rules": rules})
            })
            .collect();
        out.sort_by(|a, b| {
            (a["from"].as_str(), a["to"].as_str()).cmp(&(b["from"].as_str(), b["to"].as_str()))
        });
        out
    }

    /// Who ejects the endpoint at `address:inbound_port` now, and until
    /// when.
    pub(super) fn ejected(&self, address: &str, inbound_port: u32) -> Vec<Value> {
        let key = format!("{address}:{inbound_port}");
        let now = now_ms();
        let kept = self.lock();
        let mut by: Vec<Value> = kept
            .ejections
            .iter()
            .filter(|((endpoint, _), e)| *endpoint == key && e.until_unix_ms > now)
            .map(|((_, caller), e)| {
                json!({"by": short_caller(caller), "atUnixMs": e.at_unix_ms, "untilUnixMs": e.until_unix_ms})
            })
            .collect();
        by.sort_by(|a, b| a["by"].as_str().cmp(&b["by"].as_str()));
        by
    }
}

/// Whether the control plane answers (`GetHealth`, bounded in time).
async fn probe(admin: &AdminClient<Channel>) -> Result<(), String> {
    match tokio::time::timeout(
        OPEN_TIMEOUT,
        admin.clone().get_health(pb::GetHealthRequest {}),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status.message().to_owned()),
        Err(_) => Err(format!(
            "no answer to a health probe within {}s",
            OPEN_TIMEOUT.as_secs()
        )),
    }
}

/// One page's stream: replay first, then live, with heartbeats.
struct Pump {
    backlog: VecDeque<Arc<Relayed>>,
    rx: broadcast::Receiver<Arc<Relayed>>,
    heartbeat: tokio::time::Interval,
    _permit: OwnedSemaphorePermit,
}

impl Pump {
    /// The next frame; None ends the stream (the page reconnects and
    /// resumes with `Last-Event-ID`).
    async fn next(&mut self) -> Option<String> {
        if let Some(r) = self.backlog.pop_front() {
            return Some(r.frame());
        }
        tokio::select! {
            received = self.rx.recv() => match received {
                Ok(r) => Some(r.frame()),
                // Lagged: too slow; closed: the dashboard stops.
                Err(_) => None,
            },
            _ = self.heartbeat.tick() => Some(": heartbeat\n\n".to_owned()),
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn event_ms(event: &Value) -> i64 {
    event["time"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or_else(now_ms)
}

/// Before `key` goes into `map`: when it is new and `map` holds `max`
/// already, the entry with the oldest `time` goes (a scan, on a map of a
/// few hundred entries).
fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    key: &K,
    max: usize,
    time: impl Fn(&V) -> i64,
) {
    if map.contains_key(key) || map.len() < max {
        return;
    }
    let oldest = map
        .iter()
        .min_by_key(|(_, v)| time(v))
        .map(|(k, _)| k.clone());
    if let Some(oldest) = oldest {
        map.remove(&oldest);
    }
}

fn note_denial(kept: &mut Kept, namespace: &str, event: &Value) {
    let data = &event["data"];
    let key = DenialKey {
        namespace: namespace.to_owned(),
        caller: text(&data["caller"]),
        target: text(&data["target"]),
        rule: text(&data["rule"]),
        path: text(&data["path"]),
    };
    let at = event_ms(event);
    let count = data["count"].as_u64().unwrap_or(1);
    make_room(&mut kept.denials, &key, MAX_DENIALS, |d| d.last_unix_ms);
    let row = kept.denials.entry(key).or_insert(Denials {
        count: 0,
        first_unix_ms: at,
        last_unix_ms: at,
        reported_by: String::new(),
    });
    row.count = row.count.saturating_add(count);
    row.last_unix_ms = row.last_unix_ms.max(at);
    row.reported_by = text(&event["source"]);
}

fn note_ejection(kept: &mut Kept, kind: &str, event: &Value) {
    let data = &event["data"];
    let key = (
        format!(
            "{}:{}",
            text(&data["address"]),
            data["inboundPort"].as_u64().unwrap_or(0)
        ),
        text(&event["source"]),
    );
    if kind == ENDPOINT_READMITTED {
        kept.ejections.remove(&key);
        return;
    }
    make_room(&mut kept.ejections, &key, MAX_EJECTIONS, |e| e.at_unix_ms);
    let at = event_ms(event);
    let seconds = data["ejectedForSeconds"]
        .as_f64()
        .unwrap_or(30.0)
        .clamp(0.0, 3600.0);
    kept.ejections.insert(
        key,
        Ejection {
            at_unix_ms: at,
            until_unix_ms: at + (seconds * 1000.0) as i64,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, kind: &str, namespace: &str, data: Value) -> pb::MeshEvent {
        let ce = json!({"specversion": "1.0", "id": id.to_string(), "type": kind,
                        "source": "spiffe://td/ns/shop/sa/web", "time": crate::events::rfc3339(now_ms()),
                        "namespace": namespace, "data": data});
        pb::MeshEvent {
            id,
            r#type: kind.to_owned(),
            namespace: namespace.to_owned(),
            cloudevent_json: ce.to_string(),
        }
    }

    fn denial(id: i64, path: &str, count: u64) -> pb::MeshEvent {
        event(
            id,
            AUTHZ_DENIED,
            "shop",
            json!({"caller": "spiffe://td/ns/shop/sa/intruder", "target": "inventory",
                   "rule": "no-matching-rule", "path": path, "count": count}),
        )
    }

    #[test]
    fn denials_add_up_by_caller_target_rule_and_path_and_stay_bounded() {
        let live = Live::default();
        live.take(&denial(1, "/a", 3));
        live.take(&denial(2, "/a", 4));
        live.take(&denial(3, "/<b>", 1));
        let rows = live.denials();
        assert_eq!(rows.len(), 2);
        let a = rows.iter().find(|r| r["path"] == "/a").unwrap();
        assert_eq!(a["count"], 7);
        assert_eq!(a["from"], "shop/intruder");
        assert_eq!(a["to"], "shop/inventory");
        let edges = live.denied_edges();
        assert_eq!(edges.len(), 1);
        assert_eq!(edges[0]["count"], 8);
        for i in 0..(MAX_DENIALS as i64 + 10) {
            live.take(&denial(10 + i, &format!("/p{i}"), 1));
        }
        assert_eq!(live.denials().len(), MAX_DENIALS);
        assert_eq!(live.lock().recent.len(), MAX_RECENT.min(MAX_DENIALS + 13));
    }

    #[test]
    fn an_ejection_lasts_until_readmitted() {
        let live = Live::default();
        let data = json!({"service": "inventory", "address": "198.18.0.5", "inboundPort": 4143,
                          "ejectedForSeconds": 30});
        live.take(&event(1, ENDPOINT_EJECTED, "shop", data.clone()));
        let by = live.ejected("198.18.0.5", 4143);
        assert_eq!(by.len(), 1);
        assert_eq!(by[0]["by"], "shop/web");
        assert!(live.ejected("198.18.0.5", 4144).is_empty());
        live.take(&event(2, ENDPOINT_READMITTED, "shop", data));
        assert!(live.ejected("198.18.0.5", 4143).is_empty());
    }

    #[tokio::test]
    async fn a_page_gets_the_status_then_what_it_missed_then_live_events() {
        use futures::StreamExt;
        let live = Live::default();
        for id in 1..=5 {
            live.take(&event(
                id,
                "dev.bulkhead.resource.applied",
                "shop",
                json!({}),
            ));
        }
        let mut stream = live.stream(Some(3)).unwrap();
        let mut next = async || {
            let frame = stream.next().await.unwrap().unwrap();
            String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
        };
        assert!(next().await.starts_with("event: status\n"));
        assert!(next().await.starts_with("id: 4\n"));
        assert!(next().await.starts_with("id: 5\n"));
        live.take(&event(
            6,
            "dev.bulkhead.resource.applied",
            "shop",
            json!({}),
        ));
        assert!(next().await.starts_with("id: 6\ndata: {"));
    }

    #[tokio::test]
    async fn pages_streaming_at_once_are_bounded() {
        let live = Live::default();
        let open: Vec<_> = (0..MAX_STREAMS)
            .map(|_| live.stream(None).unwrap())
            .collect();
        assert!(live.stream(None).is_err());
        drop(open);
        assert!(live.stream(None).is_ok());
    }
}
