use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use bulkhead_proto::model::{Protocol, ServicePort};
use metrics::{Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio::time::advance;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
}

fn at(node: &str, zone: &str, region: &str) -> Locality {
    Locality {
        node: node.into(),
        zone: zone.into(),
        region: region.into(),
    }
}

/// The sidecar's own place in every test.
fn here() -> Locality {
    at("n1", "z1", "r1")
}

fn endpoint(n: u8, version: &str, locality: Locality) -> Endpoint {
    Endpoint {
        namespace: "shop".into(),
        service: "inventory".into(),
        version: version.into(),
        address: ip(n),
        inbound_port: 4143,
        ports: vec![ServicePort {
            port: 8080,
            protocol: Protocol::Http,
        }],
        locality,
        identity: None,
        registered_unix_ms: 0,
        ready: true,
    }
}

/// `n` endpoints of version v1 in the sidecar's zone, on other nodes.
fn zone_peers(n: u8) -> Vec<Endpoint> {
    (1..=n)
        .map(|i| endpoint(i, "v1", at(&format!("n{}", i + 1), "z1", "r1")))
        .collect()
}

fn balancer(endpoints: Vec<Endpoint>) -> Balancer {
    let b = Balancer::with_seed("inventory", BalancerConfig::default(), 7);
    b.update(endpoints);
    b
}

fn any(_: &Endpoint) -> bool {
    true
}

fn picked(b: &Balancer) -> IpAddr {
    b.pick(&here(), any)
        .expect("an endpoint")
        .endpoint()
        .address
}

/// Sends `n` requests to the endpoint at `ip(which)` and reports them.
fn report(b: &Balancer, which: u8, n: usize, latency: Duration, success: bool) {
    for _ in 0..n {
        let pick = b
            .pick(&here(), |e| e.address == ip(which))
            .expect("the endpoint");
        pick.finish(Outcome { latency, success });
    }
}

fn fail(b: &Balancer, which: u8, n: usize) {
    report(b, which, n, MS, false);
}

/// Where `n` picks go, each dropped at once (so in-flight stays 0).
fn spread(b: &Balancer, n: usize) -> HashMap<IpAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(picked(b)).or_default() += 1;
    }
    counts
}

fn status(b: &Balancer, which: u8) -> EndpointStatus {
    b.snapshot()
        .into_iter()
        .find(|s| s.endpoint.address == ip(which))
        .expect("the endpoint")
}

fn ejected(b: &Balancer) -> Vec<IpAddr> {
    b.snapshot()
        .into_iter()
        .filter(|s| s.ejected_for.is_some())
        .map(|s| s.endpoint.address)
        .collect()
}

/// One endpoint per tier: 1 on this node, 2 in this zone, 3 in this region,
/// 4 elsewhere.
fn one_per_tier() -> Vec<Endpoint> {
    vec![
        endpoint(4, "v1", at("n4", "z4", "r4")),
        endpoint(3, "v1", at("n3", "z3", "r1")),
        endpoint(2, "v1", at("n2", "z1", "r1")),
        endpoint(1, "v1", at("n1", "z1", "r1")),
    ]
}

#[test]
fn balancer_and_pick_are_shareable() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Balancer>();
    shareable::<Pick>();
}

#[test]
fn nothing_to_pick() {
    let b = balancer(vec![]);
    assert!(b.pick(&here(), any).is_none());
    b.update(zone_peers(2));
    assert!(b.pick(&here(), |e| e.version == "v9").is_none());
}

#[tokio::test(start_paused = true)]
async fn nearest_tier_wins() {
    let b = balancer(one_per_tier());
    let expect = [
        (ip(1), LocalityTier::Node),
        (ip(2), LocalityTier::Zone),
        (ip(3), LocalityTier::Region),
        (ip(4), LocalityTier::Any),
    ];
    for (i, (address, tier)) in expect.into_iter().enumerate() {
        // Hide the nearer tiers through the filter.
        let farther = |e: &Endpoint| !expect[..i].iter().any(|(a, _)| *a == e.address);
        for _ in 0..50 {
            let pick = b.pick(&here(), farther).expect("an endpoint");
            assert_eq!((pick.endpoint().address, pick.tier()), (address, tier));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn spills_over_when_the_near_tiers_are_ejected() {
    let b = balancer(one_per_tier());
    fail(&b, 1, 5);
    assert_eq!(spread(&b, 100), HashMap::from([(ip(2), 100)]));
    fail(&b, 2, 5);
    let pick = b.pick(&here(), any).expect("an endpoint");
    assert_eq!(pick.tier(), LocalityTier::Region);
    drop(pick);
    advance(Duration::from_secs(10)).await;
    assert_eq!(spread(&b, 100), HashMap::from([(ip(1), 100)]));
}

#[tokio::test(start_paused = true)]
async fn random_pairs_are_uniform() {
    let b = balancer(zone_peers(10));
    let counts = spread(&b, 10_000);
    assert_eq!(counts.len(), 10);
    for (address, n) in counts {
        assert!((800..=1200).contains(&n), "{address}: {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn prefers_the_faster_endpoint() {
    let b = balancer(zone_peers(2));
    report(&b, 1, 3, MS, true);
    report(&b, 2, 3, 10 * MS, true);
    let counts = spread(&b, 1000);
    let fast = counts.get(&ip(1)).copied().unwrap_or(0);
    assert!(fast > 800, "{counts:?}");

    // With more endpoints the fast one wins every pair it is drawn into.
    let b = balancer(zone_peers(5));
    report(&b, 1, 3, MS, true);
    for slow in 2..=5 {
        report(&b, slow, 3, 10 * MS, true);
    }
    let fast = spread(&b, 1000).get(&ip(1)).copied().unwrap_or(0);
    // Drawn into 4 of the 10 pairs.
    assert!((330..=470).contains(&fast), "{fast}");
}

#[tokio::test(start_paused = true)]
async fn in_flight_raises_cost() {
    let b = balancer(zone_peers(2));
    report(&b, 1, 1, MS, true);
    report(&b, 2, 1, MS, true);
    // Equal latency: a request in flight on one sends the next to the other.
    let first = b.pick(&here(), any).expect("an endpoint");
    for _ in 0..20 {
        let other = b.pick(&here(), any).expect("an endpoint");
        assert_ne!(other.endpoint().address, first.endpoint().address);
    }
    drop(first);

    // Held requests balance at in-flight inversely proportional to latency:
    // (a + 1) x 1 ms = (b + 1) x 4 ms, so about 4 in 5 go to the fast one.
    report(&b, 2, 1, 4 * MS, true);
    let held: Vec<Pick> = (0..1000).map(|_| b.pick(&here(), any).unwrap()).collect();
    let fast = held
        .iter()
        .filter(|p| p.endpoint().address == ip(1))
        .count();
    assert!((790..=810).contains(&fast), "{fast}");
    assert_eq!(status(&b, 1).in_flight as usize, fast);
    drop(held);
    assert_eq!(status(&b, 1).in_flight + status(&b, 2).in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn ejects_after_consecutive_failures_and_returns() {
    let b = balancer(zone_peers(2));
    fail(&b, 1, 4);
    report(&b, 1, 1, MS, true);
    fail(&b, 1, 4);
    assert!(ejected(&b).is_empty(), "a success resets the streak");
    fail(&b, 1, 1);
    assert_eq!(ejected(&b), [ip(1)]);
    assert_eq!(status(&b, 1).ejected_for, Some(Duration::from_secs(10)));
    assert!(!b.has_healthy(|e| e.address == ip(1)));
    assert_eq!(spread(&b, 100), HashMap::from([(ip(2), 100)]));

    advance(Duration::from_secs(10) - MS).await;
    assert_eq!(spread(&b, 100), HashMap::from([(ip(2), 100)]));
    advance(MS).await;
    assert!(ejected(&b).is_empty());
    assert!(spread(&b, 100).contains_key(&ip(1)));

    // A relapse soon after returning is ejected for twice as long.
    fail(&b, 1, 5);
    assert_eq!(status(&b, 1).ejected_for, Some(Duration::from_secs(20)));
    advance(Duration::from_secs(19)).await;
    assert_eq!(ejected(&b), [ip(1)]);
    advance(Duration::from_secs(1)).await;
    assert!(ejected(&b).is_empty());
}

#[tokio::test(start_paused = true)]
async fn failures_of_requests_sent_before_an_ejection_do_not_extend_it() {
    let b = balancer(zone_peers(2));
    let late: Vec<Pick> = (0..3)
        .map(|_| b.pick(&here(), |e| e.address == ip(1)).unwrap())
        .collect();
    fail(&b, 1, 5);
    for pick in late {
        pick.finish(Outcome {
            latency: MS,
            success: false,
        });
    }
    assert_eq!(status(&b, 1).consecutive_failures, 0);
    assert_eq!(status(&b, 1).ejected_for, Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn at_most_half_are_ejected() {
    let b = balancer(zone_peers(4));
    for n in 1..=4 {
        fail(&b, n, 5);
    }
    assert_eq!(ejected(&b), [ip(1), ip(2)]);
    // The others keep their streak and go out as soon as there is room.
    assert_eq!(status(&b, 3).consecutive_failures, 5);
    fail(&b, 3, 1);
    assert_eq!(ejected(&b).len(), 2);
    advance(Duration::from_secs(10)).await;
    fail(&b, 3, 1);
    assert_eq!(ejected(&b), [ip(3)]);
}

#[tokio::test(start_paused = true)]
async fn panic_mode_keeps_ejected_endpoints_reachable() {
    // A lone endpoint may be ejected, and is still picked.
    let b = balancer(zone_peers(1));
    fail(&b, 1, 5);
    assert_eq!(ejected(&b), [ip(1)]);
    let pick = b.pick(&here(), any).expect("panic mode");
    assert_eq!(pick.endpoint().address, ip(1));
    drop(pick);

    // A version whose every endpoint is ejected is still served by them,
    // from the nearest tier.
    let b = balancer(vec![
        endpoint(1, "v1", at("n1", "z1", "r1")),
        endpoint(2, "v2", at("n1", "z1", "r1")),
        endpoint(3, "v2", at("n9", "z9", "r9")),
        endpoint(4, "v1", at("n9", "z9", "r9")),
    ]);
    fail(&b, 2, 5);
    fail(&b, 3, 5);
    assert_eq!(ejected(&b), [ip(2), ip(3)]);
    assert!(!b.has_healthy(|e| e.version == "v2"));
    for _ in 0..20 {
        let pick = b.pick(&here(), |e| e.version == "v2").expect("panic mode");
        assert_eq!(
            (pick.endpoint().address, pick.tier()),
            (ip(2), LocalityTier::Node)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn stats_survive_update() {
    let b = balancer(zone_peers(4));
    report(&b, 1, 1, 50 * MS, true);
    fail(&b, 2, 5);
    fail(&b, 3, 2);
    let in_flight = b.pick(&here(), |e| e.address == ip(1)).unwrap();

    let mut next = zone_peers(3);
    next[2].version = "v2".into(); // same address and port, new record
    next.push(endpoint(9, "v1", at("n9", "z1", "r1")));
    next.push(endpoint(9, "v1", at("n8", "z1", "r1"))); // duplicate: ignored
    b.update(next);

    assert_eq!(b.len(), 4);
    assert_eq!(status(&b, 1).latency, 50 * MS);
    assert_eq!(status(&b, 1).in_flight, 1);
    assert_eq!(status(&b, 2).ejected_for, Some(Duration::from_secs(10)));
    assert_eq!(status(&b, 3).consecutive_failures, 2);
    assert_eq!(status(&b, 3).endpoint.version, "v2");
    assert_eq!(status(&b, 9).latency, 30 * MS);
    assert_eq!(status(&b, 9).endpoint.locality.node, "n9");

    in_flight.finish(Outcome {
        latency: 100 * MS,
        success: true,
    });
    assert_eq!(status(&b, 1).in_flight, 0);
    assert_eq!(status(&b, 1).latency, 100 * MS);

    // A finished request to a removed endpoint changes nothing.
    let gone = b.pick(&here(), |e| e.address == ip(9)).unwrap();
    b.update(zone_peers(1));
    gone.finish(Outcome {
        latency: MS,
        success: false,
    });
    assert_eq!(b.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropped_picks_count_nothing_but_in_flight() {
    let b = balancer(zone_peers(1));
    for _ in 0..10 {
        let pick = b.pick(&here(), any).unwrap();
        assert_eq!(status(&b, 1).in_flight, 1);
        drop(pick);
    }
    let s = status(&b, 1);
    assert_eq!((s.in_flight, s.consecutive_failures), (0, 0));
    assert_eq!(s.latency, 30 * MS);
}

#[tokio::test(start_paused = true)]
async fn idle_slow_endpoint_is_tried_again() {
    let b = balancer(zone_peers(2));
    report(&b, 1, 1, 2 * MS, true);
    report(&b, 2, 1, 500 * MS, true);
    assert_eq!(spread(&b, 100), HashMap::from([(ip(1), 100)]));
    // ip(1) keeps answering in 2 ms; ip(2) is not measured and fades.
    for _ in 0..60 {
        advance(Duration::from_secs(1)).await;
        report(&b, 1, 1, 2 * MS, true);
    }
    assert!(spread(&b, 100).contains_key(&ip(2)));
}

#[tokio::test(start_paused = true)]
async fn picks_are_counted_by_tier() {
    let recorder = CountingRecorder::default();
    let b = metrics::with_local_recorder(&recorder, || {
        Balancer::with_seed("inventory", BalancerConfig::default(), 7)
    });
    b.update(one_per_tier());
    for _ in 0..3 {
        drop(b.pick(&here(), any));
    }
    drop(b.pick(&here(), |e| e.address == ip(4)));
    assert_eq!(recorder.get("inventory", "node"), 3);
    assert_eq!(recorder.get("inventory", "any"), 1);
    assert_eq!(recorder.get("inventory", "zone"), 0);
    assert_eq!(recorder.counters.lock().unwrap().len(), 4);
}

/// Counters by their (service, tier) labels.
#[derive(Default)]
struct CountingRecorder {
    counters: Mutex<HashMap<(String, String), Arc<AtomicU64>>>,
}

impl CountingRecorder {
    fn get(&self, service: &str, tier: &str) -> u64 {
        let counters = self.counters.lock().unwrap();
        counters
            .get(&(service.to_owned(), tier.to_owned()))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        assert_eq!(key.name(), "bulkhead_lb_picks_total");
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        let labels = (label("service"), label("tier"));
        let counter = Arc::clone(self.counters.lock().unwrap().entry(labels).or_default());
        Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
