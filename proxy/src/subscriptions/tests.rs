use super::*;

fn key(ns: &str, name: &str) -> ServiceKey {
    (ns.to_owned(), name.to_owned())
}

fn on_demand(fixed: &[ServiceKey]) -> Subscriptions {
    Subscriptions::new(
        fixed.iter().cloned().collect(),
        true,
        "web".into(),
        Vec::new(),
    )
}

#[test]
fn upstreams_only_ask_for_their_services_and_ignore_demand() {
    let subs = Subscriptions::new(
        [key("shop", "cart"), key("pay", "ledger")].into(),
        false,
        "web".into(),
        [key("shop", "old")],
    );
    assert!(!subs.want(&key("shop", "inventory")));
    let (request, subscribed) = subs.request();
    assert_eq!(request.services, ["cart.shop", "ledger.pay"]);
    assert!(!request.directory);
    assert_eq!(request.own_service, "web");
    assert!(subscribed.contains(&key("shop", "cart")));
    assert!(!subscribed.contains(&key("shop", "inventory")));
    assert!(
        !subscribed.contains(&key("shop", "old")),
        "no seed without demand"
    );
}

#[tokio::test(start_paused = true)]
async fn demand_widens_the_next_request() {
    let subs = Subscriptions::new(
        [key("shop", "cart")].into(),
        true,
        "web".into(),
        [key("shop", "restored")],
    );
    let (first, before) = subs.request();
    assert!(first.directory);
    assert_eq!(first.services, ["cart.shop", "restored.shop"]);
    assert!(!subs.wider_than(&before));

    assert!(subs.want(&key("shop", "inventory")));
    assert!(!subs.want(&key("shop", "inventory")), "asked once");
    assert!(!subs.want(&key("shop", "cart")), "always subscribed");
    tokio::time::timeout(Duration::from_millis(1), subs.widened())
        .await
        .expect("a new want wakes the watch loop");
    assert!(subs.wider_than(&before));
    let (second, after) = subs.request();
    assert_eq!(
        second.services,
        ["cart.shop", "inventory.shop", "restored.shop"]
    );
    assert!(!subs.wider_than(&after));
    assert!(
        tokio::time::timeout(Duration::from_millis(1), subs.widened())
            .await
            .is_err(),
        "nothing new"
    );
}

#[test]
fn past_the_limit_everything_is_subscribed() {
    let subs = on_demand(&[]);
    for i in 0..=MAX_SUBSCRIBED {
        subs.want(&key("shop", &format!("s{i}")));
    }
    let (request, subscribed) = subs.request();
    assert_eq!(request.services, ["*"]);
    assert!(matches!(subscribed, Subscribed::All));
    assert!(!subs.wider_than(&subscribed));
    assert!(
        !subs.want(&key("shop", "one-more")),
        "no growth past the limit"
    );
}

fn state_subscribed_to(keys: &[ServiceKey]) -> MeshState {
    let mut state = MeshState::default();
    state.set_subscribed(Subscribed::Only(Arc::new(keys.iter().cloned().collect())));
    state
}

#[tokio::test(start_paused = true)]
async fn ensure_waits_for_a_state_that_holds_the_service() {
    let subs = Arc::new(on_demand(&[]));
    let states = StateCell::new(MeshState::default());
    let inventory = key("shop", "inventory");
    let waiter = {
        let (subs, states, inventory) = (subs.clone(), states.clone(), inventory.clone());
        tokio::spawn(async move { subs.ensure(&states, &inventory).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    assert!(subs.wider_than(&Subscribed::default()), "asked for");
    // A state for something else does not end the wait ...
    states.publish(state_subscribed_to(&[key("shop", "cart")]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    // ... one that holds the service does.
    states.publish(state_subscribed_to(std::slice::from_ref(&inventory)));
    assert!(waiter.await.unwrap());
    // Held already: no wait, nothing asked.
    assert!(subs.ensure(&states, &inventory).await);
}

#[tokio::test(start_paused = true)]
async fn ensure_gives_up_after_the_wait() {
    let subs = on_demand(&[]);
    let states = StateCell::new(MeshState::default());
    let started = Instant::now();
    assert!(!subs.ensure(&states, &key("shop", "inventory")).await);
    assert_eq!(started.elapsed(), SUBSCRIBE_WAIT);
}

#[tokio::test(start_paused = true)]
async fn misses_are_remembered_for_a_while_and_bounded() {
    let subs = on_demand(&[]);
    let ip: IpAddr = "198.18.0.9".parse().unwrap();
    assert!(!subs.known_absent(ip));
    subs.remember_absent(ip);
    assert!(subs.known_absent(ip));
    tokio::time::advance(NEGATIVE_TTL).await;
    assert!(!subs.known_absent(ip), "forgotten after the TTL");

    for i in 0..MAX_NEGATIVE as u32 {
        subs.remember_absent(IpAddr::from(i.to_be_bytes()));
    }
    subs.remember_absent(ip);
    assert!(!subs.known_absent(ip), "full: not remembered");
    tokio::time::advance(NEGATIVE_TTL).await;
    subs.remember_absent(ip);
    assert!(subs.known_absent(ip), "expired entries make room");
    assert_eq!(subs.negative.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn without_a_control_plane_an_address_is_not_in_the_mesh() {
    let subs = on_demand(&[]);
    assert!(
        subs.lookup_address("198.18.0.9".parse().unwrap())
            .await
            .is_empty()
    );
}
