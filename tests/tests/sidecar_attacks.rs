//! The load test of the limits: a legitimate client calls `cart` through
//! `web` at a steady pace while, one after another, each attack runs
//! against the sidecars (loopback only, each bounded in count and time):
//! oversized heads, rapid reset from an app and from a peer with a mesh
//! certificate, CONTINUATION, SETTINGS and PING floods, zero windows,
//! slowloris on heads and bodies, handshakes that never finish, and
//! thousands of idle connections. The legitimate client must keep a
//! success rate of at least 99 % through every attack, and once the
//! attacks are over (and their timeouts have passed) both sidecars' memory
//! and open descriptors must be back near where they started.
//!
//! What each attack costs the client's latency is printed (run with
//! `--nocapture`) and recorded in bench/README.md; the test asserts no
//! timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bulkhead_tests::attack::{self, CONTINUATION, H2, HEADERS, PING, SETTINGS};
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::proxy::*;
use bulkhead_tests::security;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

/// How long each attack runs while the client measures.
const ATTACK: Duration = Duration::from_secs(4);
/// The client's pace: one request every...
const PACE: Duration = Duration::from_millis(10);

/// Flags both sidecars run with: the defaults, but timeouts short enough
/// for the test to see them act.
const FLAGS: &[&str] = &[
    "--header-read-timeout",
    "2s",
    "--idle-timeout",
    "3s",
    "--max-handshakes",
    "64",
];

struct Shop {
    mesh: Mesh,
    _cart_app: App,
    cart: Sidecar,
    web: Sidecar,
}

async fn shop() -> Shop {
    let mesh = security::mesh().await;
    let cart_app = App::http_with(|req: Request<Incoming>| async move {
        let big = req.uri().path() == "/cart/big";
        let _ = req.into_body().collect().await;
        let body = if big {
            Bytes::from(vec![b'b'; 1 << 20])
        } else {
            Bytes::from_static(b"ok")
        };
        Response::new(Full::new(body))
    })
    .await;
    let mut cart = SidecarSpec::new("shop", "cart", "1.0.0").app(&cart_app);
    let mut web = SidecarSpec::new("shop", "web", "1.0.0").upstream("cart");
    for flag in FLAGS {
        cart = cart.arg(flag);
        web = web.arg(flag);
    }
    let cart = mesh.sidecar(cart);
    let web = mesh.sidecar(web);
    until_routable(&web, "cart", "/cart/probe").await;
    Shop {
        mesh,
        _cart_app: cart_app,
        cart,
        web,
    }
}

/// One request of the legitimate client: when it was due, and its
/// latency from then (or why it failed).
type Record = (Instant, Result<Duration, String>);

/// What the legitimate client saw during one phase.
#[derive(Default)]
struct Phase {
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

impl Phase {
    fn total(&self) -> usize {
        self.latencies.len() + self.failures.len()
    }

    fn success_rate(&self) -> f64 {
        self.latencies.len() as f64 / self.total().max(1) as f64
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[at]
    }
}

/// The legitimate client: GETs on keep-alive connections at a fixed pace,
/// each timed from when it was due (so a stall shows as latency instead of
/// the client waiting), on a thread and runtime of its own so that the
/// attackers in this process cannot delay it.
fn legitimate_client(
    addr: SocketAddr,
    records: Arc<std::sync::Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        runtime.block_on(async move {
            let client = client();
            let mut due = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep_until(due).await;
                let result = tokio::time::timeout(
                    Duration::from_secs(5),
                    call_with(&client, addr, "GET", "/cart/ok", &[]),
                )
                .await;
                let outcome = match result {
                    Ok(Ok(r)) if r.status == 200 => Ok(due.elapsed()),
                    Ok(Ok(r)) => Err(format!("{} {:?}", r.status, r.headers)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("timed out".into()),
                };
                records.lock().expect("records").push((due, outcome));
                due += PACE;
                // A client far behind (after a stall) does not rush to
                // catch up.
                if due + Duration::from_secs(1) < Instant::now() {
                    due = Instant::now();
                }
            }
        });
    })
}

/// Sends `frames` (built per connection by `build`) on connections from
/// `connect` until `within` has passed; how many connections the server
/// ended with GOAWAY, and how many otherwise.
async fn flood<F, Fut>(
    connect: F,
    build: fn(&mut H2) -> Vec<Vec<u8>>,
    within: Duration,
) -> (u64, u64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<H2>>,
{
    let deadline = Instant::now() + within;
    let (mut goaways, mut closed) = (0, 0);
    while Instant::now() < deadline {
        let Ok(Ok(mut conn)) = tokio::time::timeout_at(deadline, connect()).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let run = async {
            loop {
                for frame in build(&mut conn) {
                    conn.raw(&frame).await?;
                }
                conn.flush().await?;
                if conn.seen.goaway().is_some() || conn.seen.closed() {
                    return Ok::<_, std::io::Error>(());
                }
                tokio::task::yield_now().await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, run).await;
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if conn.seen.goaway().is_some() {
            goaways += 1;
        } else {
            closed += 1;
        }
    }
    (goaways, closed)
}

/// `build`'s frames flooded at the same time on web's app-facing listener
/// (h2c) and at cart's inbound port (mTLS, as an allowed peer).
async fn both_ways(s: &Shop, build: fn(&mut H2) -> Vec<Vec<u8>>) -> String {
    let (web_up, mesh, cart) = (s.web.upstream("cart"), &s.mesh, &s.cart);
    let (a, b) = tokio::join!(
        flood(|| H2::plain(web_up, &[]), build, ATTACK),
        flood(|| attack::mesh_peer(mesh, cart, 8080), build, ATTACK),
    );
    format!("GOAWAY {}+{}, closed otherwise {}+{}", a.0, b.0, a.1, b.1)
}

fn continuation_flood(conn: &mut H2) -> Vec<Vec<u8>> {
    // A HEADERS frame that never ends, then CONTINUATIONs, forever.
    let id = conn.next_stream();
    let mut frames = vec![attack::frame(
        HEADERS,
        0,
        id,
        &attack::request_block("GET", "cart", "/cart/x", &[]),
    )];
    let mut filler = Vec::new();
    attack::hpack_field(&mut filler, "x-filler", &[b'f'; 4000]);
    for _ in 0..200 {
        frames.push(attack::frame(CONTINUATION, 0, id, &filler));
    }
    frames
}

fn settings_flood(_: &mut H2) -> Vec<Vec<u8>> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&0x3u16.to_be_bytes()); // MAX_CONCURRENT_STREAMS
    payload.extend_from_slice(&100u32.to_be_bytes());
    (0..500)
        .map(|_| attack::frame(SETTINGS, 0, 0, &payload))
        .collect()
}

fn ping_flood(_: &mut H2) -> Vec<Vec<u8>> {
    (0..500)
        .map(|i: u64| attack::frame(PING, 0, 0, &i.to_be_bytes()))
        .collect()
}

/// Zero windows: streams asking for 1 MB each from a client that never
/// grants the window to send it.
async fn zero_window(addr: SocketAddr, within: Duration) -> usize {
    let mut held = Vec::new();
    for _ in 0..4 {
        let Ok(mut conn) = H2::plain(addr, &[(attack::INITIAL_WINDOW_SIZE, 0)]).await else {
            continue;
        };
        for _ in 0..25 {
            if conn.get("cart", "/cart/big").await.is_err() {
                break;
            }
        }
        let _ = conn.flush().await;
        held.push(conn);
    }
    tokio::time::sleep(within).await;
    held.len()
}

fn mesh_blocking_join(client: std::thread::JoinHandle<()>) {
    bulkhead_tests::mesh::blocking(|| client.join().expect("client thread"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legitimate_client_keeps_99_percent_through_every_attack() {
    let s = shop().await;
    let (web_up, web_admin) = (s.web.upstream("cart"), s.web.admin);
    let cart_in = s.cart.inbound;
    // Let start-up settle, then take the baseline footprint.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = [attack::footprint(&s.web), attack::footprint(&s.cart)];

    let records = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = legitimate_client(web_up, records.clone(), stop.clone());
    // Each phase: its name, when it began and ended, what the attack saw
    // (and the sidecars' memory at its end).
    let mut phases: Vec<(String, Instant, Instant, String)> = Vec::new();
    macro_rules! phase {
        ($name:expr, $attack:expr) => {{
            let began = Instant::now();
            let what = $attack;
            let (web, cart) = (attack::footprint(&s.web), attack::footprint(&s.cart));
            let what = format!(
                "{what}; RSS web {} MB, cart {} MB",
                web.0 / 1024,
                cart.0 / 1024
            );
            phases.push(($name.to_string(), began, Instant::now(), what));
        }};
    }

    phase!("no attack", {
        tokio::time::sleep(ATTACK).await;
        String::new()
    });
    phase!("oversized heads (100 KB header, 8 at a time)", {
        let deadline = Instant::now() + ATTACK;
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let workers = (0..8).map(|_| {
            let sent = sent.clone();
            async move {
                let big = "a".repeat(100_000);
                while Instant::now() < deadline {
                    let r = call(web_up, "GET", "/cart/big-head", &[("x-big", &big)]).await;
                    assert!(matches!(r, Ok(ref r) if r.status == 431), "{r:?}");
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        futures::future::join_all(workers).await;
        format!("{} answered 431", sent.load(Ordering::SeqCst))
    });
    phase!("rapid reset from an app (h2c)", {
        let app = || H2::plain(web_up, &[]);
        let t = attack::rapid_reset(app, "cart", "/cart/ok", 20, u64::MAX, ATTACK).await;
        t.to_string()
    });
    phase!("rapid reset from a peer (mTLS)", {
        let (mesh, cart) = (&s.mesh, &s.cart);
        let peer = || attack::mesh_peer(mesh, cart, 8080);
        let t = attack::rapid_reset(peer, "cart.shop:8080", "/cart/ok", 20, u64::MAX, ATTACK).await;
        t.to_string()
    });
    phase!("CONTINUATION flood (h2c and mTLS)", {
        both_ways(&s, continuation_flood).await
    });
    phase!("SETTINGS flood (h2c and mTLS)", {
        both_ways(&s, settings_flood).await
    });
    phase!("PING flood (h2c and mTLS)", {
        both_ways(&s, ping_flood).await
    });
    phase!("zero windows (100 streams of 1 MB never read)", {
        let held = zero_window(web_up, ATTACK).await;
        format!("{held} connections")
    });
    phase!(
        "slowloris on heads (200 to the app-facing listener, 50 to admin)",
        {
            let ((a, b), (c, d)) = tokio::join!(
                attack::slowloris(web_up, 200, ATTACK),
                attack::slowloris(web_admin, 50, ATTACK),
            );
            format!("closed {b}/{a} and {d}/{c} within {ATTACK:?}")
        }
    );
    phase!("slow bodies (50 POSTs, 2 bytes every 500 ms)", {
        let (n, ended) = attack::slow_body(web_up, 50, ATTACK).await;
        format!("ended {ended}/{n} within {ATTACK:?}")
    });
    phase!("handshakes that never finish (300 to inbound)", {
        let (n, closed) = attack::idle_connections(cart_in, 300, None, ATTACK).await;
        format!(
            "{closed}/{n} refused or closed within {ATTACK:?} (the rest at the 10 s handshake timeout)"
        )
    });
    phase!("idle connections (2,000 to the app-facing listener)", {
        let (n, closed) = attack::idle_connections(web_up, 2000, None, ATTACK).await;
        format!("closed {closed}/{n} within {ATTACK:?}")
    });
    phase!("after the attacks", {
        tokio::time::sleep(ATTACK).await;
        String::new()
    });
    stop.store(true, Ordering::SeqCst);
    mesh_blocking_join(client);
    // Each request counts in the phase it was due in.
    let records = std::mem::take(&mut *records.lock().expect("records"));
    let report: Vec<(String, Phase, String)> = phases
        .into_iter()
        .map(|(name, began, ended, what)| {
            let mut phase = Phase::default();
            let during = records
                .iter()
                .filter(|(due, _)| *due >= began && *due < ended);
            for (_, outcome) in during {
                match outcome {
                    Ok(latency) => phase.latencies.push(*latency),
                    Err(why) => phase.failures.push(why.clone()),
                }
            }
            (name, phase, what)
        })
        .collect();

    eprintln!(
        "\n| attack | requests | success | p50 | p99 | max | what the attack saw |\n|---|---|---|---|---|---|---|"
    );
    for (name, p, what) in &report {
        eprintln!(
            "| {name} | {} | {:.2} % | {:.1} ms | {:.1} ms | {:.1} ms | {what} |",
            p.total(),
            p.success_rate() * 100.0,
            p.percentile(0.50).as_secs_f64() * 1e3,
            p.percentile(0.99).as_secs_f64() * 1e3,
            p.percentile(1.0).as_secs_f64() * 1e3,
        );
    }

    // Every connection the attacks left ends within its timeout (the
    // longest: 15 s for a request, and 30 s for an idle connection to the
    // app to leave the pool): then memory and descriptors are back near
    // the baseline.
    let give_up = Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let now = [attack::footprint(&s.web), attack::footprint(&s.cart)];
        let back = now
            .iter()
            .zip(&baseline)
            .all(|((_, fds), (_, base))| *fds <= base + 8);
        if back {
            break now;
        }
        assert!(
            Instant::now() < give_up,
            "descriptors not back near the baseline after 60 s: [web, cart] (RSS kB, fds) \
             {baseline:?} before, {now:?} now"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for ((name, (rss, fds)), (base_rss, base_fds)) in
        ["web", "cart"].iter().zip(settled).zip(baseline)
    {
        eprintln!("{name}: RSS {base_rss} kB -> {rss} kB, descriptors {base_fds} -> {fds}");
        assert!(
            rss <= base_rss + 16_384,
            "{name}'s memory did not come back: {base_rss} kB before, {rss} kB after"
        );
    }
    for (name, p, _) in &report {
        assert!(
            p.success_rate() >= 0.99,
            "{name}: {:.2} % of {} succeeded; failures: {:?}",
            p.success_rate() * 100.0,
            p.total(),
            p.failures.iter().take(5).collect::<Vec<_>>()
        );
    }
}
