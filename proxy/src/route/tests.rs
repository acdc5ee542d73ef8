use std::collections::HashMap;

use bulkhead_proto::model::{HeaderRoute, Metadata, Stickiness, TrafficSplitSpec};
use http::HeaderValue;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

fn split(backends: &[(&str, u32)], routes: &[(&str, &str, &str)]) -> TrafficSplit {
    TrafficSplit {
        metadata: Metadata::new("shop", "inventory"),
        spec: TrafficSplitSpec {
            service: "inventory".into(),
            backends: backends
                .iter()
                .map(|(version, weight)| Backend {
                    version: (*version).into(),
                    weight: *weight,
                })
                .collect(),
            matches: (!routes.is_empty()).then(|| {
                routes
                    .iter()
                    .map(|(name, value, version)| HeaderRoute {
                        header: HeaderMatch {
                            name: (*name).into(),
                            value: (*value).into(),
                        },
                        version: (*version).into(),
                    })
                    .collect()
            }),
            stickiness: Default::default(),
        },
    }
}

/// v1 90 %, v2 10 %, v3 only for `x-canary: yes`.
fn canary() -> TrafficSplit {
    split(
        &[("v1", 90), ("v2", 10), ("v3", 0)],
        &[("X-Canary", "yes", "v3")],
    )
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// The calling workload's key, as its sidecar makes it.
fn web() -> StickyKey {
    caller("spiffe://cluster.local/ns/shop/sa/web")
}

fn caller(id: &str) -> StickyKey {
    StickyKey::new(id.as_bytes())
}

fn exact(version: &str) -> VersionChoice {
    VersionChoice::Exact(version.into())
}

/// How `n` seeded random rolls spread over versions.
fn tally(
    split: &TrafficSplit,
    n: usize,
    mut has_healthy: impl FnMut(&VersionChoice) -> bool,
) -> HashMap<String, usize> {
    let mut rng = SmallRng::seed_from_u64(11);
    let none = HeaderMap::new();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let choice =
            choose_with_fallback(Some(split), &none, web(), rng.random(), &mut has_healthy);
        *counts.entry(choice.unwrap().to_string()).or_default() += 1;
    }
    counts
}

#[test]
fn no_split_means_any_version() {
    assert_eq!(choose(None, &HeaderMap::new(), 0), Ok(VersionChoice::Any));
    assert!(VersionChoice::Any.accepts("whatever"));
}

#[test]
fn weights_share_traffic() {
    let counts = tally(&canary(), 10_000, |_| true);
    // 9,000 expected, standard deviation 30: allow four of them.
    let v1 = counts["v1"];
    assert!((8880..=9120).contains(&v1), "{counts:?}");
    assert_eq!(v1 + counts["v2"], 10_000, "v3 has weight 0: {counts:?}");
}

#[test]
fn rolls_map_onto_cumulative_weights() {
    let split = canary();
    let none = HeaderMap::new();
    let at = |roll| choose(Some(&split), &none, roll).unwrap();
    // 90/10: the first 90 % of the roll's range is v1.
    let boundary = (u64::MAX / 10) * 9;
    assert_eq!(at(0), exact("v1"));
    assert_eq!(at(boundary - (1 << 20)), exact("v1"));
    assert_eq!(at(boundary + (1 << 20)), exact("v2"));
    assert_eq!(at(u64::MAX), exact("v2"));
}

#[test]
fn new_weights_apply_to_the_next_request() {
    let none = HeaderMap::new();
    let roll = u64::MAX / 2;
    let before = split(&[("v1", 90), ("v2", 10)], &[]);
    let after = split(&[("v1", 10), ("v2", 90)], &[]);
    assert_eq!(choose(Some(&before), &none, roll), Ok(exact("v1")));
    assert_eq!(choose(Some(&after), &none, roll), Ok(exact("v2")));
}

#[test]
fn header_routes_come_before_weights() {
    let split = split(
        &[("v1", 100), ("v2", 0), ("v3", 0)],
        &[("x-canary", "yes", "v3"), ("x-tenant", "acme", "v2")],
    );
    let choice = |pairs: &[(&str, &str)]| choose(Some(&split), &headers(pairs), 0).unwrap();
    assert_eq!(choice(&[("X-Canary", "yes")]), exact("v3"));
    assert_eq!(choice(&[("x-tenant", "acme")]), exact("v2"));
    // First matching route wins.
    assert_eq!(
        choice(&[("x-tenant", "acme"), ("x-canary", "yes")]),
        exact("v3")
    );
    // Values compare exactly; any one field line may match.
    assert_eq!(choice(&[("x-canary", "YES")]), exact("v1"));
    assert_eq!(choice(&[("x-canary", "yes, no")]), exact("v1"));
    assert_eq!(
        choice(&[("x-canary", "no"), ("x-canary", "yes")]),
        exact("v3")
    );
    assert_eq!(choice(&[]), exact("v1"));
}

#[test]
fn pin_comes_first() {
    let pinned = choose(
        Some(&canary()),
        &headers(&[("x-canary", "yes"), ("x-bulkhead-version", "v2")]),
        0,
    )
    .unwrap();
    assert!(pinned.accepts("v2"));
    assert!(!pinned.accepts("v3") && !pinned.accepts("v1"));
    // A pin may name a version outside the split, and works with no split.
    let pinned = choose(None, &headers(&[("X-Bulkhead-Version", "v4")]), 0).unwrap();
    assert_eq!(pinned.to_string(), "v4");
    assert!(pinned.accepts("v4"));
}

#[test]
fn pin_of_an_exact_version() {
    let pin = VersionChoice::pin("3.1").unwrap();
    for accepted in ["3.1", "3.1.0", "3.1.7", "v3.1.2"] {
        assert!(pin.accepts(accepted), "{accepted}");
    }
    for refused in ["3.10.0", "3.2.0", "3", "3.1.0-rc.1", "canary"] {
        assert!(!pin.accepts(refused), "{refused}");
    }
    let full = VersionChoice::pin("3.1.0").unwrap();
    assert!(full.accepts("3.1.0") && full.accepts("v3.1") && !full.accepts("3.1.1"));
    let pre = VersionChoice::pin("3.1.0-rc.1").unwrap();
    assert!(pre.accepts("3.1.0-rc.1") && !pre.accepts("3.1.0"));
    let label = VersionChoice::pin(" canary ").unwrap();
    assert_eq!(
        label,
        VersionChoice::Pinned {
            version: "canary".into(),
            semver: None
        }
    );
    assert!(label.accepts("canary") && !label.accepts("canary2"));
}

#[test]
fn pin_of_a_semver_requirement() {
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (
            "^3",
            &["3.0.0", "3.9.1", "v3", "3.1"],
            &["4.0.0", "2.9.9", "canary", "3.2.0-rc.1"],
        ),
        ("~3.1", &["3.1.0", "3.1.9", "v3.1"], &["3.2.0", "3.0.9"]),
        (">=3.1, <4", &["3.1.0", "3.9"], &["3.0.9", "4.0.0"]),
        ("*", &["0.1.0", "v7"], &["canary"]),
    ];
    for (pin, accepted, refused) in cases {
        let choice = VersionChoice::pin(pin).unwrap();
        assert!(matches!(choice, VersionChoice::Matching(_)), "{pin}");
        for version in accepted {
            assert!(choice.accepts(version), "{pin} should accept {version}");
        }
        for version in refused {
            assert!(!choice.accepts(version), "{pin} should refuse {version}");
        }
    }
}

#[test]
fn invalid_pins_are_refused() {
    let long = "1".repeat(MAX_PIN_LEN + 1);
    for bad in ["", "  ", "^^3", "3.1 || 4", ">=", "~>3", "3 .1", &long] {
        let result = choose(None, &headers(&[("x-bulkhead-version", bad)]), 0);
        assert!(
            matches!(result, Err(RouteError::BadVersionPin(_))),
            "{bad:?}: {result:?}"
        );
    }
    let mut two = headers(&[("x-bulkhead-version", "v1")]);
    two.append(VERSION_HEADER, HeaderValue::from_static("v2"));
    assert_eq!(
        choose(None, &two, 0),
        Err(RouteError::BadVersionPin(
            "expected one header, got several".into()
        ))
    );
    let mut binary = HeaderMap::new();
    binary.insert(VERSION_HEADER, HeaderValue::from_bytes(b"3.\xff").unwrap());
    assert!(choose(None, &binary, 0).is_err());

    let message = VersionChoice::pin("^^3").unwrap_err().to_string();
    assert!(
        message.starts_with("bad x-bulkhead-version header: expected a version such as 3.1.0"),
        "{message}"
    );
}

#[test]
fn weighted_share_of_an_unhealthy_version_goes_to_the_others() {
    let split = canary();
    let counts = tally(&split, 1000, |c| c.accepts("v1"));
    assert_eq!(counts, HashMap::from([("v1".to_owned(), 1000)]));
    let counts = tally(&split, 1000, |c| c.accepts("v2"));
    assert_eq!(counts, HashMap::from([("v2".to_owned(), 1000)]));

    // Proportionally among what is left.
    let three = split_of_three();
    let counts = tally(&three, 10_000, |c| !c.accepts("a"));
    let b = counts["b"];
    assert!((4800..=5200).contains(&b), "{counts:?}");
    assert_eq!(b + counts["c"], 10_000);
}

fn split_of_three() -> TrafficSplit {
    split(&[("a", 50), ("b", 25), ("c", 25)], &[])
}

#[test]
fn fallback_never_leaves_the_split_nor_overrides_explicit_choices() {
    let split = canary();
    // Nothing healthy: the rolled version, for the balancer's panic mode.
    let counts = tally(&split, 1000, |_| false);
    assert_eq!(
        counts.keys().filter(|v| *v != "v1" && *v != "v2").count(),
        0
    );
    assert!(counts["v1"] > counts["v2"]);
    // Header routes and pins are kept even when unhealthy.
    let unhealthy = |_: &VersionChoice| false;
    let routed = choose_with_fallback(
        Some(&split),
        &headers(&[("x-canary", "yes")]),
        web(),
        0,
        unhealthy,
    );
    assert_eq!(routed, Ok(exact("v3")));
    let pinned = choose_with_fallback(
        Some(&split),
        &headers(&[("x-bulkhead-version", "v2")]),
        web(),
        0,
        unhealthy,
    );
    assert_eq!(pinned.map(|c| c.to_string()), Ok("v2".into()));
}

#[test]
fn healthy_split_asks_once() {
    let mut asked = 0;
    let choice = choose_with_fallback(Some(&split_of_three()), &HeaderMap::new(), web(), 0, |_| {
        asked += 1;
        true
    });
    assert_eq!((choice, asked), (Ok(exact("a")), 1));
}

#[test]
fn choices_display_as_written() {
    assert_eq!(VersionChoice::Any.to_string(), "any");
    assert_eq!(exact("v2").to_string(), "v2");
    assert_eq!(VersionChoice::pin("3.1").unwrap().to_string(), "3.1");
    assert_eq!(VersionChoice::pin("^3").unwrap().to_string(), "^3");
}

/// `stable` then `canary`, sticky as `stickiness` says.
fn rollout(canary: u32, stickiness: Stickiness) -> TrafficSplit {
    let mut split = split(&[("stable", 100 - canary), ("canary", canary)], &[]);
    split.spec.stickiness = stickiness;
    split
}

/// The version `caller` lands on, with a random roll `roll` for whatever
/// is not sticky.
fn sticky_choice(
    split: &TrafficSplit,
    headers: &HeaderMap,
    caller: StickyKey,
    roll: u64,
) -> String {
    choose_with_fallback(Some(split), headers, caller, roll, |_| true)
        .unwrap()
        .to_string()
}

#[test]
fn a_sticky_caller_keeps_its_version() {
    let mut rng = SmallRng::seed_from_u64(7);
    let none = HeaderMap::new();
    let by_caller = rollout(50, Stickiness::Caller);
    let by_user = rollout(50, Stickiness::Header("x-user".into()));
    for id in 0..20 {
        let me = caller(&format!("spiffe://cluster.local/ns/shop/sa/web-{id}"));
        let user = headers(&[("X-User", &format!("user-{id}"))]);
        let first = sticky_choice(&by_caller, &none, me, rng.random());
        let first_user = sticky_choice(&by_user, &user, web(), rng.random());
        for _ in 0..1000 {
            assert_eq!(sticky_choice(&by_caller, &none, me, rng.random()), first);
            assert_eq!(
                sticky_choice(&by_user, &user, web(), rng.random()),
                first_user
            );
        }
    }
}

#[test]
fn sticky_callers_split_as_the_weights_say() {
    for (stickiness, canary) in [
        (Stickiness::Caller, 10),
        (Stickiness::Caller, 50),
        (Stickiness::Header("x-user".into()), 30),
    ] {
        let split = rollout(canary, stickiness.clone());
        let n = 10_000;
        let on_canary = (0..n)
            .filter(|i| {
                let (me, user) = match &stickiness {
                    Stickiness::Header(_) => (web(), headers(&[("x-user", &format!("{i}"))])),
                    _ => (
                        caller(&format!("spiffe://cluster.local/ns/shop/sa/w{i}")),
                        HeaderMap::new(),
                    ),
                };
                sticky_choice(&split, &user, me, 0) == "canary"
            })
            .count();
        let share = on_canary as f64 / f64::from(n);
        let want = f64::from(canary) / 100.0;
        assert!(
            (share - want).abs() <= 0.03,
            "{stickiness:?} {canary}%: {share}"
        );
    }
}

#[test]
fn as_the_canary_grows_callers_only_move_onto_it() {
    let none = HeaderMap::new();
    let callers: Vec<StickyKey> = (0..2000)
        .map(|i| caller(&format!("spiffe://cluster.local/ns/app{i}/sa/web")))
        .collect();
    let mut on_canary = vec![false; callers.len()];
    for canary in [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100] {
        let split = rollout(canary, Stickiness::Caller);
        let mut moved = 0;
        for (me, was) in callers.iter().zip(on_canary.iter_mut()) {
            let now = sticky_choice(&split, &none, *me, 0) == "canary";
            assert!(now || !*was, "a caller left the canary at {canary}%");
            moved += usize::from(now && !*was);
            *was = now;
        }
        if canary > 0 && canary < 100 {
            assert!(moved > 0, "someone moves onto the canary at {canary}%");
        }
    }
    assert!(on_canary.iter().all(|c| *c));
    // The same holds with the canary listed first.
    let mut on_canary = vec![false; callers.len()];
    for canary in [10, 50, 100] {
        let mut split = split(&[("canary", canary), ("stable", 100 - canary)], &[]);
        split.spec.stickiness = Stickiness::Caller;
        for (me, was) in callers.iter().zip(on_canary.iter_mut()) {
            let now = sticky_choice(&split, &none, *me, 0) == "canary";
            assert!(now || !*was, "a caller left the canary at {canary}%");
            *was = now;
        }
    }
}

#[test]
fn without_the_sticky_header_the_roll_is_random() {
    let split = rollout(50, Stickiness::Header("x-user".into()));
    let mut rng = SmallRng::seed_from_u64(3);
    let seen: std::collections::HashSet<String> = (0..200)
        .map(|_| sticky_choice(&split, &HeaderMap::new(), web(), rng.random()))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Not sticky at all: random too, whoever calls.
    let split = rollout(50, Stickiness::None);
    let seen: std::collections::HashSet<String> = (0..200)
        .map(|_| sticky_choice(&split, &HeaderMap::new(), web(), rng.random()))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn a_sticky_caller_whose_version_is_down_falls_back_and_returns() {
    let split = rollout(50, Stickiness::Caller);
    let none = HeaderMap::new();
    let on_canary = (0..100)
        .map(|i| caller(&format!("spiffe://cluster.local/ns/shop/sa/w{i}")))
        .find(|me| sticky_choice(&split, &none, *me, 0) == "canary")
        .expect("half the callers are on the canary");
    let canary_down = |c: &VersionChoice| !c.accepts("canary");
    let fallback = choose_with_fallback(Some(&split), &none, on_canary, 0, canary_down);
    assert_eq!(fallback, Ok(exact("stable")));
    assert_eq!(sticky_choice(&split, &none, on_canary, 0), "canary");
}
