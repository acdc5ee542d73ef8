use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::stats::{LATENCY_BUCKETS, LatencyHistogram};

use super::pending::{self, Dropped, FlushRecord, Pending, ReporterRecord, SeriesRecord};
use super::*;
use crate::store::MemoryStore;

const T0: i64 = 1_700_000_000_000;

fn settings() -> MeasureSettings {
    MeasureSettings {
        report_interval: Duration::from_secs(5),
        retention: Duration::from_secs(15 * 60),
    }
}

fn replica(store: &Arc<MemoryStore>, name: &str) -> Measurements {
    Measurements::new(store.clone(), settings(), name)
}

fn report(version: &str, reporter: &str, requests: u64, in_flight: u32) -> Report {
    let mut latency = LatencyHistogram::default();
    latency.add_to_bucket(7, requests); // (7.5, 10] ms
    Report {
        namespace: "shop".into(),
        service: "inventory".into(),
        version: version.into(),
        reporter: reporter.into(),
        covered_ms: 5000,
        requests,
        failures: requests / 10,
        latency,
        in_flight,
        mesh_errors: 0,
        callers: Vec::new(),
    }
}

async fn flushes(store: &MemoryStore) -> Vec<crate::store::KeyValue> {
    store.list(keys::STATS).await.unwrap().0
}

#[test]
fn pending_adds_counts_and_keeps_each_endpoints_latest_in_flight() {
    let mut pending = Pending::default();
    assert!(pending.is_empty());
    for (version, endpoint, requests, in_flight) in [
        ("3.1.0", "198.18.0.1:4143", 10, 4),
        ("3.1.0", "198.18.0.1:4143", 20, 1),
        ("3.1.0", "198.18.0.2:4143", 30, 2),
        ("3.0.0", "198.18.0.3:4143", 5, 0),
    ] {
        let r = report(version, endpoint, requests, in_flight);
        pending.add(&r).unwrap();
    }
    let record = pending.take();
    assert!(pending.is_empty(), "take leaves nothing");
    let mut latency = vec![0; LATENCY_BUCKETS];
    latency[7] = 60;
    assert_eq!(record.series.len(), 2);
    assert_eq!(record.series[0].version, "3.0.0", "sorted by version");
    assert_eq!(
        record.series[1],
        SeriesRecord {
            namespace: "shop".into(),
            service: "inventory".into(),
            version: "3.1.0".into(),
            requests: 60,
            failures: 1 + 2 + 3,
            latency,
            reporters: vec![
                ReporterRecord {
                    endpoint: "198.18.0.1:4143".into(),
                    covered_ms: 10_000,
                    in_flight: 1,
                },
                ReporterRecord {
                    endpoint: "198.18.0.2:4143".into(),
                    covered_ms: 5000,
                    in_flight: 2,
                },
            ],
            mesh_errors: 0,
            callers: Vec::new(),
        }
    );
    assert_eq!(FlushRecord::decode(&record.encode()).unwrap(), record);
}

#[test]
fn pending_is_bounded_in_series_and_reporters() {
    // (bound, the i-th report up to it, one more, what is refused).
    let series = |i: usize| report(&format!("1.0.{i}"), "198.18.0.1:4143", 1, 0);
    let reporters = |i: usize| {
        let endpoint = format!("198.18.{}.{}:4143", i / 256, i % 256);
        report("1.0.0", &endpoint, 1, 0)
    };
    type Nth<'a> = &'a dyn Fn(usize) -> Report;
    let cases: [(usize, Nth<'_>, Dropped); 2] = [
        (pending::MAX_SERIES, &series, Dropped::TooManySeries),
        (
            pending::MAX_REPORTERS,
            &reporters,
            Dropped::TooManyReporters,
        ),
    ];
    for (bound, nth, refused) in cases {
        let mut pending = Pending::default();
        for i in 0..bound {
            pending.add(&nth(i)).unwrap();
        }
        assert_eq!(pending.add(&nth(bound)), Err(refused));
        // What is already there still takes reports.
        pending.add(&nth(0)).unwrap();
    }
}

/// The largest flush the bounds allow (longest names, every series and
/// reporter, huge counts) fits in etcd's default request limit.
#[test]
fn the_largest_flush_fits_in_one_etcd_request() {
    let name = |c: char, i: usize| format!("{}{i:05}", c.to_string().repeat(58));
    let per_series = pending::MAX_REPORTERS / pending::MAX_SERIES;
    let record = FlushRecord {
        series: (0..pending::MAX_SERIES)
            .map(|i| SeriesRecord {
                namespace: name('n', i),
                service: name('s', i),
                version: format!("{}+{}", "1".repeat(40), name('v', i)),
                requests: u64::MAX,
                failures: u64::MAX,
                latency: vec![u64::MAX; LATENCY_BUCKETS],
                reporters: (0..per_series)
                    .map(|r| ReporterRecord {
                        endpoint: format!("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:{r:04x}]:65535"),
                        covered_ms: u64::MAX,
                        in_flight: u32::MAX,
                    })
                    .collect(),
                mesh_errors: u64::MAX,
                callers: Vec::new(),
            })
            .collect(),
    };
    let size = record.encode().len();
    assert!(size < 1536 * 1024, "{size} bytes");
}

#[tokio::test(start_paused = true)]
async fn a_flush_writes_one_key_on_a_shared_lease_and_only_when_there_is_news() {
    let store = Arc::new(MemoryStore::new());
    let m = replica(&store, "cp-0");
    let mut flusher = Flusher::default();
    // Nothing received: nothing written.
    assert!(flusher.flush(&m, T0).await);
    assert!(flushes(&store).await.is_empty());

    m.record_at(&report("3.1.0", "198.18.0.1:4143", 10, 4), T0);
    assert!(flusher.flush(&m, T0 + 1000).await);
    let written = flushes(&store).await;
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].key, keys::stats(T0 + 1000, &m.replica));
    assert!(
        written[0].key.starts_with("stats/1700000001000-cp-0-"),
        "{}",
        written[0].key
    );
    let record = FlushRecord::decode(&written[0].value).unwrap();
    assert_eq!(record.series[0].requests, 10);
    let lease = written[0].lease;
    assert_ne!(lease, 0, "on a lease");

    // Nothing new: nothing written.
    assert!(flusher.flush(&m, T0 + 2000).await);
    assert_eq!(flushes(&store).await.len(), 1);

    // The next flush reuses the lease ...
    m.record_at(&report("3.1.0", "198.18.0.1:4143", 5, 1), T0 + 2500);
    assert!(flusher.flush(&m, T0 + 3000).await);
    let written = flushes(&store).await;
    assert_eq!(written.len(), 2);
    assert_eq!(written[1].lease, lease);
    // ... until a quarter of the retention has passed.
    tokio::time::advance(settings().retention / 4).await;
    m.record_at(&report("3.1.0", "198.18.0.1:4143", 5, 1), T0 + 4000);
    assert!(flusher.flush(&m, T0 + 5000).await);
    let written = flushes(&store).await;
    assert_ne!(written[2].lease, lease);
    // Every flush outlives the retention, and not much more.
    tokio::time::advance(settings().retention).await;
    assert_eq!(flushes(&store).await.len(), 1, "the first two expired");
    tokio::time::advance(settings().retention / 4).await;
    assert!(flushes(&store).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_is_written_again_under_its_own_key() {
    let store = Arc::new(MemoryStore::new());
    let m = replica(&store, "cp-0");
    let mut flusher = Flusher::default();
    m.record_at(&report("3.1.0", "198.18.0.1:4143", 10, 4), T0);
    assert!(flusher.flush(&m, T0 + 1000).await);
    // The lease goes away (say, etcd lost it): the next flush fails ...
    let (lease, _) = flusher.lease.unwrap();
    store.revoke(lease).await.unwrap();
    m.record_at(&report("3.1.0", "198.18.0.1:4143", 7, 2), T0 + 1500);
    assert!(!flusher.flush(&m, T0 + 2000).await);
    assert!(flushes(&store).await.is_empty());
    // ... and what arrives meanwhile waits its turn ...
    m.record_at(&report("3.1.0", "198.18.0.1:4143", 3, 0), T0 + 2500);
    assert!(flusher.flush(&m, T0 + 3000).await);
    let written = flushes(&store).await;
    assert_eq!(written.len(), 1);
    assert_eq!(
        written[0].key,
        keys::stats(T0 + 2000, &m.replica),
        "the failed flush keeps its time"
    );
    assert_eq!(
        FlushRecord::decode(&written[0].value).unwrap().series[0].requests,
        7
    );
    // ... for the next period.
    assert!(flusher.flush(&m, T0 + 4000).await);
    let written = flushes(&store).await;
    assert_eq!(written[1].key, keys::stats(T0 + 4000, &m.replica));
    assert_eq!(
        FlushRecord::decode(&written[1].value).unwrap().series[0].requests,
        3
    );
}

#[tokio::test(start_paused = true)]
async fn a_window_adds_up_every_replicas_flushes_made_in_it() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (replica(&store, "cp-0"), replica(&store, "cp-1"));
    let (mut fa, mut fb) = (Flusher::default(), Flusher::default());
    // Before the window.
    a.record_at(&report("3.1.0", "198.18.0.1:4143", 1000, 9), T0 - 500);
    fa.flush(&a, T0 - 1).await;
    // In it: two replicas, two versions; one endpoint moves from a to b.
    a.record_at(&report("3.1.0", "198.18.0.1:4143", 10, 4), T0);
    a.record_at(&report("3.0.0", "198.18.0.9:4143", 90, 1), T0);
    fa.flush(&a, T0 + 1000).await;
    b.record_at(&report("3.1.0", "198.18.0.1:4143", 20, 6), T0 + 5000);
    b.record_at(&report("3.1.0", "198.18.0.2:4143", 30, 2), T0 + 5000);
    fb.flush(&b, T0 + 5999).await;
    // At its end: out (a window is half open).
    a.record_at(&report("3.1.0", "198.18.0.2:4143", 1000, 7), T0 + 5500);
    fa.flush(&a, T0 + 6000).await;
    // Another service: not in this one's window.
    let mut other = report("1.0.0", "198.18.0.5:4143", 1, 0);
    other.service = "web".into();
    b.record_at(&other, T0 + 5500);
    fb.flush(&b, T0 + 5000).await;

    let w = a.window("shop", "inventory", T0, T0 + 6000).await.unwrap();
    assert_eq!(w.versions.keys().collect::<Vec<_>>(), ["3.0.0", "3.1.0"]);
    let v = &w.versions["3.1.0"];
    assert_eq!((v.requests, v.failures), (60, 1 + 2 + 3));
    assert_eq!(v.latency.total(), 60);
    assert_eq!(v.in_flight, 6 + 2, "each endpoint's latest");
    // Covered time adds up, clamped to the window's length.
    assert_eq!(
        v.reporters,
        [
            ("198.18.0.1:4143".to_owned(), 6000),
            ("198.18.0.2:4143".to_owned(), 5000)
        ]
        .into()
    );
    let long = a.window("shop", "inventory", T0, T0 + 6001).await.unwrap();
    assert_eq!(long.versions["3.1.0"].reporters["198.18.0.1:4143"], 6001);
    let tiny = b
        .window("shop", "inventory", T0 + 1000, T0 + 1001)
        .await
        .unwrap();
    assert_eq!(tiny.versions["3.1.0"].reporters["198.18.0.1:4143"], 1);
    // Reading from another replica, or every service, gives the same.
    let all = b.all(Some("shop"), None, T0, T0 + 6000).await.unwrap();
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        [
            &("shop".to_owned(), "inventory".to_owned()),
            &("shop".to_owned(), "web".to_owned())
        ]
    );
    assert_eq!(
        all[&("shop".into(), "inventory".into())].versions["3.1.0"].requests,
        60
    );
    assert!(
        b.all(Some("other"), None, T0, T0 + 6000)
            .await
            .unwrap()
            .is_empty()
    );
    // Empty or backwards windows read nothing.
    assert!(
        a.window("shop", "inventory", T0, T0)
            .await
            .unwrap()
            .versions
            .is_empty()
    );
    assert!(a.all(None, None, T0 + 10, T0).await.unwrap().is_empty());
    // An unreadable flush is skipped, not fatal.
    store
        .txn(vec![Op::Put {
            key: keys::stats(T0 + 3000, "intruder"),
            value: b"not json".to_vec(),
            lease: None,
        }])
        .await
        .unwrap();
    let w = a.window("shop", "inventory", T0, T0 + 6000).await.unwrap();
    assert_eq!(w.versions["3.1.0"].requests, 60);
}

/// The value of `name` for inventory `version` in a scrape.
fn value(text: &str, name: &str, version: &str) -> String {
    let prefix =
        format!("{name}{{namespace=\"shop\",service=\"inventory\",version=\"{version}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .to_owned()
}

#[test]
fn metrics_show_rate_in_flight_and_a_cumulative_histogram() {
    let store = Arc::new(MemoryStore::new());
    let m = replica(&store, "cp-0");
    let mut odd = report("3.1.0-rc\"1\\", "198.18.0.1:4143", 300, 4);
    odd.latency = LatencyHistogram::default();
    odd.latency.add_to_bucket(0, 100); // [0, 0.5] ms
    odd.latency.add_to_bucket(LATENCY_BUCKETS - 1, 200); // above 10 s
    m.record_at(&report("3.1.0", "198.18.0.1:4143", 300, 4), T0);
    m.record_at(&report("3.1.0", "198.18.0.2:4143", 600, 5), T0 + 10_000);
    m.record_at(&odd, T0 + 10_000);
    let stale_ms = m.stale_ms();
    assert_eq!(stale_ms, 15_000);
    let render = |now: i64| m.state().local.render(now, stale_ms);

    let text = render(T0 + 12_000);
    let line = |name: &str, version: &str| value(&text, name, version);
    assert_eq!(line("bulkhead_version_requests_per_second", "3.1.0"), "30");
    assert_eq!(line("bulkhead_version_requests_in_flight", "3.1.0"), "9");
    assert_eq!(
        line("bulkhead_version_request_duration_seconds_count", "3.1.0"),
        "900"
    );
    // Label values are escaped.
    assert_eq!(
        line("bulkhead_version_requests_in_flight", "3.1.0-rc\\\"1\\\\"),
        "4"
    );
    // Buckets are cumulative, in seconds, up to +Inf; the sum approximate.
    let odd_labels = "namespace=\"shop\",service=\"inventory\",version=\"3.1.0-rc\\\"1\\\\\"";
    for (le, n) in [("0.0005", 100), ("10", 100), ("+Inf", 300)] {
        let want = format!(
            "bulkhead_version_request_duration_seconds_bucket{{{odd_labels},le=\"{le}\"}} {n}\n"
        );
        assert!(text.contains(&want), "{want} in\n{text}");
    }
    let sum = format!("bulkhead_version_request_duration_seconds_sum{{{odd_labels}}} ");
    let sum: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&sum))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (sum - (100.0 * 0.000_25 + 200.0 * 10.0)).abs() < 1e-6,
        "{sum}"
    );
    for name in [
        "bulkhead_version_requests_per_second gauge",
        "bulkhead_version_requests_in_flight gauge",
        "bulkhead_version_request_duration_seconds histogram",
    ] {
        assert!(text.contains(&format!("# TYPE {name}\n")), "{name}");
    }

    // 3 report intervals after an endpoint's report it leaves the in-flight
    // sum; 30 s after a report, the rate.
    let line = |text: &str, name: &str| value(text, name, "3.1.0");
    let text = render(T0 + 20_000);
    assert_eq!(line(&text, "bulkhead_version_requests_in_flight"), "5");
    assert_eq!(line(&text, "bulkhead_version_requests_per_second"), "30");
    let text = render(T0 + 30_000);
    assert_eq!(line(&text, "bulkhead_version_requests_in_flight"), "0");
    assert_eq!(line(&text, "bulkhead_version_requests_per_second"), "20");
    assert_eq!(
        line(&text, "bulkhead_version_request_duration_seconds_count"),
        "900"
    );
    // A series silent for long is forgotten.
    let text = render(T0 + 10_000 + 16 * 60 * 1000);
    assert!(!text.contains("version=\"3.1.0\""), "{text}");
}

#[test]
fn metric_series_are_bounded() {
    let mut local = local::Local::default();
    for i in 0..local::MAX_SERIES {
        local
            .record(
                &report(&format!("1.0.{i}"), "198.18.0.1:4143", 1, 0),
                T0,
                15_000,
            )
            .unwrap();
    }
    assert_eq!(
        local.record(&report("9.9.9", "198.18.0.1:4143", 1, 0), T0, 15_000),
        Err(local::Skipped::TooManySeries)
    );
    // Once the others are forgotten, there is room again.
    let later = T0 + 16 * 60 * 1000;
    local
        .record(&report("9.9.9", "198.18.0.1:4143", 1, 0), later, 15_000)
        .unwrap();
}

#[test]
fn callers_and_mesh_errors_add_up_and_a_flush_too_large_keeps_the_totals() {
    use super::pending::{CallerPart, Pending};
    let mut latency = LatencyHistogram::default();
    latency.record(8.0);
    let part = |n| CallerPart {
        requests: n,
        failures: 1,
        mesh_errors: 1,
        latency: latency.clone(),
    };
    let web = "spiffe://cluster.local/ns/shop/sa/web".to_owned();
    let mut r = report("3.1.0", "198.18.0.1:4143", 10, 0);
    r.mesh_errors = 1;
    r.callers = vec![(web.clone(), part(4))];
    let mut pending = Pending::default();
    pending.add(&r).unwrap();
    pending.add(&r).unwrap();
    let record = pending.take();
    let s = &record.series[0];
    assert_eq!((s.mesh_errors, s.callers.len()), (2, 1));
    assert_eq!((s.callers[0].requests, s.callers[0].failures), (8, 2));
    let windows = super::window::add_up([record.clone(), record], Default::default(), 10_000);
    let v = &windows[&("shop".to_owned(), "inventory".to_owned())].versions["3.1.0"];
    assert_eq!((v.mesh_errors, v.callers[&web].requests), (4, 16));
    assert_eq!(v.callers[&web].latency.total(), 4);
    // Far more callers than fit in one write: the totals stay.
    let mut pending = Pending::default();
    for i in 0..3000 {
        let mut r = report(
            "3.1.0",
            &format!("198.18.{}.{}:4143", i / 250, i % 250),
            10,
            0,
        );
        r.callers = vec![(
            format!("spiffe://cluster.local/ns/{}/sa/{}", "n".repeat(300), i),
            part(1),
        )];
        pending.add(&r).unwrap();
    }
    let record = pending.take();
    assert!(record.series[0].callers.is_empty());
    assert_eq!(record.series[0].requests, 30_000);
    assert!(record.encode().len() < 1536 * 1024);
}
