use super::*;
use crate::policy::authz::tests::{TD, list, peer};

fn http<'a>(method: &'a str, path: &'a str) -> Call<'a> {
    Call::Http { method, path }
}

/// The failed fields of `list#index`.
fn failed(e: &Explanation, list: &str, index: usize) -> Vec<Field> {
    e.rules
        .iter()
        .find(|r| r.list == list && r.index == index)
        .unwrap_or_else(|| panic!("no rule {list}#{index} in {e:?}"))
        .failed
        .iter()
        .map(|m| m.field)
        .collect()
}

fn inventory() -> AllowList {
    list(
        "inv",
        "enforce",
        "  - from: [web]\n    ports: [8080]\n    http: {methods: [GET], paths: ['/v1/stock/*']}\n\
         \x20 - from: [ops/*]\n    ports: [9090]\n",
    )
}

/// Explains a call to `inventory()`'s service.
fn ask(peer: &SpiffeId, port: u16, call: Call<'_>) -> Explanation {
    explain(&[inventory()], peer, port, call, TD)
}

#[test]
fn names_the_allowing_list_and_rule() {
    let e = ask(&peer("shop", "web"), 8080, http("GET", "/v1/stock/x"));
    assert_eq!(e.verdict, Verdict::Allow);
    assert_eq!(e.reason, Decision::ALLOWED);
    assert_eq!(e.allowed_by, Some(("inv".to_owned(), 0)));
    assert_eq!(e.normalized_path.as_deref(), Some("/v1/stock/x"));
    assert!(e.closest().is_empty());
    let e = ask(&peer("ops", "debug"), 9090, Call::Tcp);
    assert_eq!(e.allowed_by, Some(("inv".to_owned(), 1)));
}

#[test]
fn each_failing_field_is_named() {
    let web = peer("shop", "web");
    let e = ask(&web, 8080, http("POST", "/v1/stock/x"));
    assert_eq!(e.verdict, Verdict::Deny);
    assert_eq!(e.reason, Decision::NO_MATCHING_RULE);
    assert_eq!(failed(&e, "inv", 0), [Field::Method]);
    assert_eq!(failed(&e, "inv", 1), [Field::Identity, Field::Port]);
    let closest = e.closest();
    assert_eq!(closest.len(), 1);
    assert_eq!(closest[0].index, 0);
    let m = &closest[0].failed[0];
    assert_eq!(
        (m.got.as_str(), m.expected.as_slice()),
        ("POST", &["GET".to_owned()][..])
    );
    assert_eq!(m.to_string(), "method POST is not one of methods [GET]");

    let e = ask(&web, 9090, http("GET", "/v1/stock/x"));
    assert_eq!(failed(&e, "inv", 0), [Field::Port]);
    let e = ask(&web, 8080, http("GET", "/admin"));
    assert_eq!(failed(&e, "inv", 0), [Field::Path]);
    let e = ask(&peer("shop", "cart"), 8080, http("GET", "/v1/stock/x"));
    assert_eq!(failed(&e, "inv", 0), [Field::Identity]);
    assert_eq!(
        e.closest()[0].failed[0].to_string(),
        "identity spiffe://cluster.local/ns/shop/sa/cart is not one of from [web]"
    );
    // A foreign trust domain never matches a short form.
    let foreign = SpiffeId::new("evil.org", "shop", "web").unwrap();
    let e = ask(&foreign, 8080, http("GET", "/v1/stock/x"));
    assert_eq!(failed(&e, "inv", 0), [Field::Identity]);
}

#[test]
fn the_path_is_matched_and_shown_normalized() {
    let web = peer("shop", "web");
    let e = ask(&web, 8080, http("GET", "//v1/./stock/%78"));
    assert_eq!(e.verdict, Verdict::Allow);
    assert_eq!(e.normalized_path.as_deref(), Some("/v1/stock/x"));
    let e = ask(&web, 8080, http("GET", "/v1/stock/x/%2e%2e/%2e%2e/admin"));
    assert_eq!(e.verdict, Verdict::Deny);
    assert_eq!(e.normalized_path.as_deref(), Some("/v1/admin"));
    let m = &e.closest()[0].failed[0];
    assert_eq!(m.field, Field::Path);
    assert_eq!(m.got, "/v1/admin");
    assert_eq!(
        m.to_string(),
        "path /v1/admin (normalized) matches none of paths [/v1/stock/*]"
    );
}

#[test]
fn a_path_the_sidecar_refuses_is_bad_path() {
    for (raw, error) in [
        ("/../v1/stock/x", PathError::AboveRoot),
        ("/v1/stock%2Fx", PathError::EncodedSlash),
        ("/v1/..;/stock/x", PathError::DotSegmentParameter),
        ("v1", PathError::NotOriginForm),
    ] {
        let e = ask(&peer("shop", "web"), 8080, http("GET", raw));
        assert_eq!(e.verdict, Verdict::Deny, "{raw}");
        assert_eq!(e.reason, Explanation::BAD_PATH, "{raw}");
        assert_eq!(e.path_error, Some(error), "{raw}");
        assert_eq!(e.normalized_path, None);
        assert!(e.rules.is_empty() && e.allowed_by.is_none());
    }
}

#[test]
fn tcp_fails_http_rules_on_protocol() {
    let e = ask(&peer("shop", "web"), 8080, Call::Tcp);
    assert_eq!(e.verdict, Verdict::Deny);
    assert_eq!(failed(&e, "inv", 0), [Field::Protocol]);
    assert_eq!(e.normalized_path, None);
}

#[test]
fn any_http_checks_identity_and_port_only() {
    let e = ask(&peer("shop", "web"), 8080, Call::AnyHttp);
    assert_eq!(e.verdict, Verdict::Allow);
    assert_eq!(e.allowed_by, Some(("inv".to_owned(), 0)));
    let e = ask(&peer("shop", "web"), 9090, Call::AnyHttp);
    assert_eq!(e.verdict, Verdict::Deny);
    assert_eq!(e.reason, Decision::NO_MATCHING_RULE);
    assert_eq!(failed(&e, "inv", 0), [Field::Port]);
}

#[test]
fn audit_and_no_allowlist() {
    let e = explain::<AllowList>(&[], &peer("shop", "web"), 8080, Call::AnyHttp, TD);
    assert_eq!(
        (e.verdict, e.reason),
        (Verdict::Deny, Decision::NO_ALLOWLIST)
    );
    assert!(e.rules.is_empty() && e.closest().is_empty());
    let e = explain::<AllowList>(&[], &peer("shop", "web"), 8080, http("GET", "/"), TD);
    assert_eq!(
        (e.verdict, e.reason),
        (Verdict::Deny, Decision::NO_ALLOWLIST)
    );

    let trial = [list("trial", "audit", "  - from: [cart]\n")];
    let e = explain(&trial, &peer("shop", "web"), 8080, http("GET", "/"), TD);
    assert_eq!(e.verdict, Verdict::AuditAllow);
    assert_eq!(e.reason, Decision::AUDIT_NO_MATCHING_RULE);
    assert!(e.lets_through());
    assert_eq!(failed(&e, "trial", 0), [Field::Identity]);
    assert_eq!(e.rules[0].mode, Mode::Audit);
    // Beside an enforce list, audit fails closed.
    let both = [
        list("base", "enforce", "  - from: [pricing]\n"),
        trial[0].clone(),
    ];
    let e = explain(&both, &peer("shop", "web"), 8080, Call::AnyHttp, TD);
    assert_eq!(
        (e.verdict, e.reason),
        (Verdict::Deny, Decision::NO_MATCHING_RULE)
    );
    assert_eq!(e.closest().len(), 2);
}

#[test]
fn lists_are_tried_by_name_like_the_sidecar() {
    let b = list("b", "enforce", "  - from: [web]\n");
    let a = list("a", "enforce", "  - from: [cart]\n  - from: [web]\n");
    let e = explain(&[&b, &a], &peer("shop", "web"), 1, Call::Tcp, TD);
    assert_eq!(e.allowed_by, Some(("a".to_owned(), 1)));
    let order: Vec<(&str, usize)> = e.rules.iter().map(|r| (r.list.as_str(), r.index)).collect();
    assert_eq!(order, [("a", 0), ("a", 1), ("b", 0)]);
}

/// Every combination of a small table of callers, ports and requests: the
/// explanation's verdict, reason and rule are `authorize`'s, and the rule
/// it names has no failed field while every earlier one has one.
#[test]
fn agrees_with_authorize() {
    let lists = [
        inventory(),
        list(
            "trial",
            "audit",
            "  - from: [cart]\n    http: {paths: ['/cart/**']}\n",
        ),
    ];
    let peers = [peer("shop", "web"), peer("shop", "cart"), peer("ops", "x")];
    let calls = [
        Call::Tcp,
        http("GET", "/v1/stock/1"),
        http("GET", "/v1//stock/%31"),
        http("DELETE", "/v1/stock/1"),
        http("GET", "/cart/a/../b"),
        http("GET", "/cart/../../x"),
    ];
    for peer in &peers {
        for port in [8080, 9090] {
            for call in calls {
                let e = explain(&lists, peer, port, call, TD);
                let Call::Http { method, path } = call else {
                    let d = authorize(&lists, peer, port, None, TD);
                    assert_eq!((e.verdict, e.reason), (d.verdict, d.reason));
                    continue;
                };
                let Ok(normal) = normalize_path(path) else {
                    assert_eq!(e.reason, Explanation::BAD_PATH);
                    continue;
                };
                let d = authorize(
                    &lists,
                    peer,
                    port,
                    Some(HttpRequestInfo {
                        method,
                        normalized_path: &normal,
                        claims: None,
                    }),
                    TD,
                );
                assert_eq!(
                    (e.verdict, e.reason),
                    (d.verdict, d.reason),
                    "{peer} {port} {call:?}"
                );
                assert_eq!(
                    e.allowed_by,
                    d.rule.map(|r| (r.list.to_owned(), r.index)),
                    "{peer} {port} {call:?}"
                );
            }
        }
    }
}
