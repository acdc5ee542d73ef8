//! `MeshState::apply` and its indexes, on hand-made Watch updates.

use bulkhead_proto::model::parse_documents;

use super::*;

fn resource(yaml: &str) -> pb::Change {
    let mut parsed = parse_documents("test.yaml", yaml).expect("valid resource");
    let r = parsed.pop().expect("one document");
    pb::Change {
        op: Op::Upsert as i32,
        item: Some(Item::Resource(pb::Resource::from(&r))),
    }
}

fn delete(kind: &str, namespace: &str, name: &str) -> pb::Change {
    pb::Change {
        op: Op::Delete as i32,
        item: Some(Item::Resource(pb::Resource {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            json: String::new(),
        })),
    }
}

fn service(name: &str, vip: Option<&str>) -> pb::Change {
    let vip = vip.map(|v| format!("\n  vip: {v}")).unwrap_or_default();
    resource(&format!(
        "apiVersion: bulkhead.dev/v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  ports: [{{port: 8080, protocol: http}}]{vip}"
    ))
}

fn split(name: &str, service: &str) -> pb::Change {
    resource(&format!(
        "apiVersion: bulkhead.dev/v1\nkind: TrafficSplit\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  service: {service}\n  backends: [{{version: 1.0.0, weight: 100}}]"
    ))
}

fn allow_list(name: &str, target: &str) -> pb::Change {
    resource(&format!(
        "apiVersion: bulkhead.dev/v1\nkind: AllowList\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  target: {target}\n  rules: [{{from: [web]}}]"
    ))
}

fn endpoint(service: &str, address: &str, op: Op) -> pb::Change {
    pb::Change {
        op: op as i32,
        item: Some(Item::Endpoint(pb::Endpoint {
            namespace: "shop".into(),
            service: service.into(),
            version: "1.0.0".into(),
            address: address.into(),
            inbound_port: 4143,
            ports: vec![pb::Port {
                port: 8080,
                protocol: "http".into(),
            }],
            locality: Some(pb::Locality::default()),
            identity: format!("spiffe://cluster.local/ns/shop/sa/{service}"),
            registered_unix_ms: 1,
            ready: Some(true),
        })),
    }
}

fn update(revision: i64, snapshot: bool, changes: Vec<pb::Change>) -> pb::WatchUpdate {
    pb::WatchUpdate {
        revision,
        snapshot,
        changes,
    }
}

fn key(name: &str) -> ServiceKey {
    ("shop".into(), name.into())
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[test]
fn a_snapshot_builds_one_view_per_service_with_its_split_lists_and_endpoints() {
    let mut state = MeshState::default();
    let problems = state.apply(&update(
        5,
        true,
        vec![
            service("inventory", Some("198.19.0.10")),
            service("cart", None),
            split("inventory-canary", "inventory"),
            allow_list("inventory-from-web", "inventory"),
            allow_list("cart-from-web", "cart"),
            endpoint("inventory", "198.18.0.1", Op::Upsert),
            endpoint("inventory", "198.18.0.2", Op::Upsert),
        ],
    ));
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(state.revision, 5);
    let inventory = state.view(&key("inventory")).expect("inventory view");
    assert_eq!(
        inventory.split.as_ref().map(|s| s.metadata.name.as_str()),
        Some("inventory-canary")
    );
    let lists: Vec<&str> = inventory
        .allow_lists
        .iter()
        .map(|l| l.metadata.name.as_str())
        .collect();
    assert_eq!(lists, ["inventory-from-web"]);
    assert_eq!(inventory.endpoints.len(), 2);
    let cart = state.view(&key("cart")).expect("cart view");
    assert!(cart.split.is_none() && cart.endpoints.is_empty());
    assert_eq!(cart.allow_lists.len(), 1);
}

#[test]
fn an_update_gives_new_views_only_to_the_services_it_touches() {
    let mut state = MeshState::default();
    state.apply(&update(
        1,
        true,
        vec![
            service("inventory", None),
            service("cart", None),
            endpoint("inventory", "198.18.0.1", Op::Upsert),
            endpoint("cart", "198.18.0.5", Op::Upsert),
        ],
    ));
    let before_cart = Arc::clone(state.view(&key("cart")).unwrap());
    let before_inventory = Arc::clone(state.view(&key("inventory")).unwrap());
    state.apply(&update(
        2,
        false,
        vec![endpoint("inventory", "198.18.0.2", Op::Upsert)],
    ));
    assert!(Arc::ptr_eq(&before_cart, state.view(&key("cart")).unwrap()));
    let after = state.view(&key("inventory")).unwrap();
    assert!(!Arc::ptr_eq(&before_inventory, after));
    assert_eq!(after.endpoints.len(), 2);
    // The untouched service's endpoint set is the very same map.
    assert!(Arc::ptr_eq(
        &before_cart.endpoints,
        &state.view(&key("cart")).unwrap().endpoints
    ));
}

#[test]
fn service_numbers_survive_snapshots_and_deletions() {
    let mut state = MeshState::default();
    state.apply(&update(
        1,
        true,
        vec![service("inventory", None), service("cart", None)],
    ));
    let (inventory, cart) = (
        state.id(&key("inventory")).unwrap(),
        state.id(&key("cart")).unwrap(),
    );
    assert_ne!(inventory, cart);
    // A resync snapshot without cart, then cart again: same numbers.
    state.apply(&update(2, true, vec![service("inventory", None)]));
    assert!(state.view_at(cart).is_none());
    assert_eq!(state.id(&key("inventory")), Some(inventory));
    assert!(state.view_at(inventory).is_some());
    state.apply(&update(3, false, vec![service("cart", None)]));
    assert_eq!(state.id(&key("cart")), Some(cart));
    assert_eq!(
        state
            .view_at(cart)
            .and_then(|v| v.service.as_ref())
            .map(|s| s.metadata.name.as_str()),
        Some("cart")
    );
    // A service only deleted never got a number.
    state.apply(&update(4, false, vec![delete("Service", "shop", "ghost")]));
    assert_eq!(state.id(&key("ghost")), None);
}

#[test]
fn deleting_a_split_or_list_updates_the_service_it_named() {
    let mut state = MeshState::default();
    state.apply(&update(
        1,
        true,
        vec![
            service("inventory", None),
            split("canary", "inventory"),
            allow_list("from-web", "inventory"),
        ],
    ));
    state.apply(&update(
        2,
        false,
        vec![
            delete("TrafficSplit", "shop", "canary"),
            delete("AllowList", "shop", "from-web"),
        ],
    ));
    let view = state.view(&key("inventory")).unwrap();
    assert!(view.split.is_none());
    assert!(view.allow_lists.is_empty());
    // Retargeting a list moves it from one service's view to the other's.
    state.apply(&update(3, false, vec![allow_list("l", "inventory")]));
    state.apply(&update(4, false, vec![allow_list("l", "cart")]));
    assert!(
        state
            .view(&key("inventory"))
            .unwrap()
            .allow_lists
            .is_empty()
    );
    assert_eq!(state.view(&key("cart")).unwrap().allow_lists.len(), 1);
}

#[test]
fn capture_destinations_by_vip_and_by_endpoint_address() {
    let mut state = MeshState::default();
    state.apply(&update(
        1,
        true,
        vec![
            service("inventory", Some("198.19.0.10")),
            endpoint("inventory", "198.18.0.1", Op::Upsert),
        ],
    ));
    assert_eq!(
        state.destination(at("198.19.0.10", 8080)),
        Some(Destination::Vip(key("inventory")))
    );
    // A VIP on a port the Service does not declare is not the service.
    assert_eq!(state.destination(at("198.19.0.10", 9999)), None);
    match state.destination(at("198.18.0.1", 8080)) {
        Some(Destination::Endpoint(k, e)) => {
            assert_eq!(k, key("inventory"));
            assert_eq!(e.address.to_string(), "198.18.0.1");
        }
        other => panic!("expected the endpoint, got {other:?}"),
    }
    assert_eq!(state.destination(at("198.18.0.1", 9999)), None);
    assert_eq!(state.destination(at("198.18.0.99", 8080)), None);
    // The endpoint leaves: its address is no longer the service's.
    state.apply(&update(
        2,
        false,
        vec![endpoint("inventory", "198.18.0.1", Op::Delete)],
    ));
    assert_eq!(state.destination(at("198.18.0.1", 8080)), None);
    // The VIP moves with the Service.
    state.apply(&update(
        3,
        false,
        vec![service("inventory", Some("198.19.0.11"))],
    ));
    assert_eq!(state.destination(at("198.19.0.10", 8080)), None);
    assert_eq!(
        state.destination(at("198.19.0.11", 8080)),
        Some(Destination::Vip(key("inventory")))
    );
}

#[test]
fn bad_items_are_reported_and_skipped() {
    let mut state = MeshState::default();
    let mut no_identity = endpoint("inventory", "198.18.0.1", Op::Upsert);
    if let Some(Item::Endpoint(e)) = &mut no_identity.item {
        e.identity.clear();
    }
    let problems = state.apply(&update(
        1,
        true,
        vec![
            no_identity,
            endpoint("inventory", "not-an-ip", Op::Upsert),
            pb::Change {
                op: Op::Upsert as i32,
                item: Some(Item::Resource(pb::Resource {
                    kind: "Service".into(),
                    namespace: "shop".into(),
                    name: "broken".into(),
                    json: "{".into(),
                })),
            },
        ],
    ));
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(state.views().next().is_none());
}

#[test]
fn held_endpoints_stay_until_released() {
    let mut state = MeshState::default();
    state.apply(&update(
        1,
        true,
        vec![endpoint("inventory", "198.18.0.1", Op::Upsert)],
    ));
    let held = Arc::clone(
        state
            .view(&key("inventory"))
            .unwrap()
            .endpoints
            .values()
            .next()
            .unwrap(),
    );
    // A resync snapshot leaves it out; it is held.
    state.apply(&update(9, true, vec![service("inventory", None)]));
    state.hold_endpoint(&key("inventory"), held);
    assert_eq!(state.view(&key("inventory")).unwrap().endpoints.len(), 1);
    assert!(state.destination(at("198.18.0.1", 8080)).is_some());
    state.release_endpoint(&key("inventory"), at("198.18.0.1", 4143));
    assert!(state.view(&key("inventory")).unwrap().endpoints.is_empty());
    assert!(state.destination(at("198.18.0.1", 8080)).is_none());
}

#[test]
fn the_snapshot_round_trips() {
    let mut state = MeshState::default();
    state.apply(&update(
        7,
        true,
        vec![
            service("inventory", Some("198.19.0.10")),
            split("canary", "inventory"),
            endpoint("inventory", "198.18.0.1", Op::Upsert),
        ],
    ));
    let mut again = MeshState::default();
    assert!(again.apply(&state.to_snapshot()).is_empty());
    assert_eq!(again.revision, 7);
    let view = again.view(&key("inventory")).unwrap();
    assert!(view.split.is_some() && view.endpoints.len() == 1);
    assert!(again.destination(at("198.19.0.10", 8080)).is_some());
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_is_written_once_per_burst_of_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cell = StateCell::new(MeshState::default());
    let writer = tokio::spawn(save_forever(cell.clone(), dir.path().to_owned()));
    tokio::task::yield_now().await;
    for revision in 1..=5 {
        let mut state = MeshState::default();
        state.apply(&update(revision, true, vec![service("inventory", None)]));
        cell.publish(state);
    }
    assert!(
        !snapshot_path(dir.path()).exists(),
        "written before the debounce"
    );
    // Past the debounce: the last state is on disk.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(Some(saved)) = load(dir.path())
            && saved.revision == 5
        {
            writer.abort();
            return;
        }
    }
    panic!("the snapshot was not written");
}
