//! Allow-list evaluation: one [`Decision`] per request (HTTP) or connection
//! (TCP), with the mode semantics described in the [module docs](super).

use std::borrow::Borrow;
use std::fmt;

use crate::identity::SpiffeId;
use crate::model::{AllowList, Claims, Mode};

/// The HTTP side of a request, for rules with an `http` match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpRequestInfo<'a> {
    /// As received: methods are case-sensitive.
    pub method: &'a str,
    /// The output of [`normalize_path`](super::normalize_path).
    pub normalized_path: &'a str,
    /// The end user's claims, when a gateway verified a token and the
    /// caller is that gateway; `None` otherwise (rules with `claims` then
    /// never match).
    pub claims: Option<&'a Claims>,
}

/// What the inbound does with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// A rule matched.
    Allow,
    /// No rule matched, but every list targeting the service is in audit
    /// mode: let it through, log it and count it as a would-be denial.
    AuditAllow,
    /// Refuse: 403 (HTTP), `PERMISSION_DENIED` (gRPC), close (TCP).
    Deny,
}

/// The rule that allowed a request: shown as `allowlist-name#rule-index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRef<'a> {
    pub list: &'a str,
    pub index: usize,
}

impl fmt::Display for RuleRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.list, self.index)
    }
}

/// The outcome of [`authorize`], with what logs and metrics need. It
/// borrows the lists it was decided from: an allowed request (the common
/// case) costs no allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub verdict: Verdict,
    /// The rule that allowed; `None` otherwise.
    pub rule: Option<RuleRef<'a>>,
    /// A bounded label: `allowed`, `no-allowlist`, `no-matching-rule` or
    /// `audit-no-matching-rule`.
    pub reason: &'static str,
}

impl Decision<'_> {
    pub const ALLOWED: &'static str = "allowed";
    pub const NO_ALLOWLIST: &'static str = "no-allowlist";
    pub const NO_MATCHING_RULE: &'static str = "no-matching-rule";
    pub const AUDIT_NO_MATCHING_RULE: &'static str = "audit-no-matching-rule";

    /// The `rule` label of `bulkhead_authz_denied_total`: the rule when one
    /// matched, the reason otherwise. Bounded: AllowList names are bounded
    /// by the config, reasons are constants, never request data.
    pub fn label(&self) -> String {
        match &self.rule {
            Some(rule) => rule.to_string(),
            None => self.reason.to_owned(),
        }
    }

    /// Whether the inbound forwards the request to the app.
    pub fn lets_through(&self) -> bool {
        self.verdict != Verdict::Deny
    }
}

/// Decides whether `peer` may call this service on declared `port`.
///
/// `lists` are the AllowLists targeting this service; they are tried in the
/// order given and the first matching rule names the decision, so pass them
/// in a stable order (by name) for stable labels. `http` is `None` for opaque
/// TCP, which rules with an `http` match never allow. `trust_domain` is the
/// mesh's own: short `from` forms only match identities in it.
pub fn authorize<'a, L: Borrow<AllowList>>(
    lists: &'a [L],
    peer: &SpiffeId,
    port: u16,
    http: Option<HttpRequestInfo<'_>>,
    trust_domain: &str,
) -> Decision<'a> {
    let method = http.map(|h| h.method);
    let path = http.map(|h| h.normalized_path);
    let claims = http.and_then(|h| h.claims);
    for list in lists {
        let list = list.borrow();
        if let Some(index) = list.allows_with_claims(peer, port, method, path, claims, trust_domain)
        {
            return Decision {
                verdict: Verdict::Allow,
                rule: Some(RuleRef {
                    list: &list.metadata.name,
                    index,
                }),
                reason: Decision::ALLOWED,
            };
        }
    }
    let (verdict, reason) = unmatched(lists);
    Decision {
        verdict,
        rule: None,
        reason,
    }
}

/// What happens to a request no rule allows, by the modes of the lists
/// targeting the service (the [module docs](super) say why).
pub(super) fn unmatched<L: Borrow<AllowList>>(lists: &[L]) -> (Verdict, &'static str) {
    if lists.is_empty() {
        (Verdict::Deny, Decision::NO_ALLOWLIST)
    } else if lists
        .iter()
        .any(|list| list.borrow().mode() == Mode::Enforce)
    {
        (Verdict::Deny, Decision::NO_MATCHING_RULE)
    } else {
        (Verdict::AuditAllow, Decision::AUDIT_NO_MATCHING_RULE)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use crate::model::{Resource, parse_documents};

    use super::*;

    pub(in crate::policy) const TD: &str = "cluster.local";

    /// An AllowList named `name` in namespace `shop` targeting `inventory`.
    pub(in crate::policy) fn list(name: &str, mode: &str, rules: &str) -> AllowList {
        let yaml = format!(
            "apiVersion: bulkhead.dev/v1\nkind: AllowList\n\
             metadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  target: inventory\n  mode: {mode}\n  rules:\n{rules}"
        );
        match parse_documents("test.yaml", &yaml)
            .expect("valid AllowList")
            .pop()
        {
            Some(Resource::AllowList(list)) => list,
            other => panic!("not an AllowList: {other:?}"),
        }
    }

    pub(in crate::policy) fn peer(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new(TD, ns, sa).unwrap()
    }

    fn get(path: &str) -> Option<HttpRequestInfo<'_>> {
        Some(HttpRequestInfo {
            method: "GET",
            normalized_path: path,
            claims: None,
        })
    }

    /// `rule` as `list#index`.
    fn allowed(rule: &str) -> Decision<'_> {
        let (list, index) = rule.split_once('#').expect("list#index");
        Decision {
            verdict: Verdict::Allow,
            rule: Some(RuleRef {
                list,
                index: index.parse().expect("a rule index"),
            }),
            reason: Decision::ALLOWED,
        }
    }

    fn denied(reason: &'static str) -> Decision<'static> {
        Decision {
            verdict: Verdict::Deny,
            rule: None,
            reason,
        }
    }

    fn audited() -> Decision<'static> {
        Decision {
            verdict: Verdict::AuditAllow,
            rule: None,
            reason: Decision::AUDIT_NO_MATCHING_RULE,
        }
    }

    #[test]
    fn default_deny_without_lists() {
        let d = authorize::<AllowList>(&[], &peer("shop", "cart"), 8080, get("/"), TD);
        assert_eq!(d, denied(Decision::NO_ALLOWLIST));
        assert_eq!(d.label(), "no-allowlist");
        assert!(!d.lets_through());
        let tcp = authorize::<AllowList>(&[], &peer("shop", "cart"), 8080, None, TD);
        assert_eq!(tcp, denied(Decision::NO_ALLOWLIST));
    }

    #[test]
    fn from_forms() {
        let al = list(
            "inv",
            "enforce",
            "  - from: [cart]\n\
             \x20 - from: [web/frontend]\n\
             \x20 - from: [ops/*]\n\
             \x20 - from: [spiffe://cluster.local/ns/batch/sa/sync]\n",
        );
        let lists = [&al];
        let check = |ns, sa| authorize(&lists, &peer(ns, sa), 8080, get("/x"), TD);
        assert_eq!(check("shop", "cart"), allowed("inv#0"));
        assert_eq!(check("other", "cart"), denied(Decision::NO_MATCHING_RULE));
        assert_eq!(check("web", "frontend"), allowed("inv#1"));
        assert_eq!(check("web", "backend"), denied(Decision::NO_MATCHING_RULE));
        assert_eq!(check("ops", "anyone"), allowed("inv#2"));
        assert_eq!(check("batch", "sync"), allowed("inv#3"));
        assert_eq!(check("batch", "other"), denied(Decision::NO_MATCHING_RULE));
        assert_eq!(check("shop", "cart").label(), "inv#0");
    }

    #[test]
    fn any_identity_of_the_trust_domain_only() {
        let al = list("open", "enforce", "  - from: ['*']\n");
        let lists = [&al];
        let d = authorize(&lists, &peer("x", "y"), 1, None, TD);
        assert_eq!(d, allowed("open#0"));
        let foreign = SpiffeId::new("evil.org", "x", "y").unwrap();
        let d = authorize(&lists, &foreign, 1, None, TD);
        assert_eq!(d, denied(Decision::NO_MATCHING_RULE));
    }

    #[test]
    fn ports_methods_and_paths() {
        let al = list(
            "inv",
            "enforce",
            "  - from: [cart]\n    ports: [8080]\n    http: {methods: [GET], paths: [/items/*]}\n",
        );
        let lists = [&al];
        let cart = peer("shop", "cart");
        let req = |method, normalized_path| {
            Some(HttpRequestInfo {
                method,
                normalized_path,
                claims: None,
            })
        };
        assert_eq!(
            authorize(&lists, &cart, 8080, req("GET", "/items/1"), TD),
            allowed("inv#0")
        );
        let no = denied(Decision::NO_MATCHING_RULE);
        assert_eq!(
            authorize(&lists, &cart, 9090, req("GET", "/items/1"), TD),
            no
        );
        assert_eq!(
            authorize(&lists, &cart, 8080, req("POST", "/items/1"), TD),
            no
        );
        assert_eq!(
            authorize(&lists, &cart, 8080, req("get", "/items/1"), TD),
            no
        );
        assert_eq!(
            authorize(&lists, &cart, 8080, req("GET", "/items/1/x"), TD),
            no
        );
        assert_eq!(authorize(&lists, &cart, 8080, req("GET", "/admin"), TD), no);
    }

    #[test]
    fn tcp_never_matches_http_rules() {
        let al = list(
            "inv",
            "enforce",
            "  - from: [cart]\n    http: {}\n  - from: [sync]\n    ports: [9090]\n",
        );
        let lists = [&al];
        let cart = peer("shop", "cart");
        assert_eq!(
            authorize(&lists, &cart, 8080, get("/"), TD),
            allowed("inv#0")
        );
        assert_eq!(
            authorize(&lists, &cart, 8080, None, TD),
            denied(Decision::NO_MATCHING_RULE)
        );
        // A rule without `http` allows both TCP and HTTP on its ports.
        let sync = peer("shop", "sync");
        assert_eq!(authorize(&lists, &sync, 9090, None, TD), allowed("inv#1"));
        assert_eq!(
            authorize(&lists, &sync, 9090, get("/"), TD),
            allowed("inv#1")
        );
    }

    #[test]
    fn audit_only_lets_through_what_it_would_deny() {
        let al = list("trial", "audit", "  - from: [cart]\n");
        let lists = [&al];
        let web = peer("shop", "web");
        let d = authorize(&lists, &web, 8080, get("/"), TD);
        assert_eq!(d, audited());
        assert!(d.lets_through());
        assert_eq!(d.label(), "audit-no-matching-rule");
        // What the audit list allows is allowed, not counted.
        let d = authorize(&lists, &peer("shop", "cart"), 8080, None, TD);
        assert_eq!(d, allowed("trial#0"));
    }

    #[test]
    fn enforce_beside_audit_fails_closed() {
        let enforced = list("base", "enforce", "  - from: [cart]\n");
        let trial = list("trial", "audit", "  - from: [web]\n");
        for lists in [[&enforced, &trial], [&trial, &enforced]] {
            let d = authorize(&lists, &peer("shop", "pricing"), 8080, None, TD);
            assert_eq!(d, denied(Decision::NO_MATCHING_RULE));
            assert_eq!(d.label(), "no-matching-rule");
            let cart = authorize(&lists, &peer("shop", "cart"), 8080, None, TD);
            assert_eq!(cart, allowed("base#0"));
            // Any rule of any list allows, whatever its mode.
            let web = authorize(&lists, &peer("shop", "web"), 8080, None, TD);
            assert_eq!(web, allowed("trial#0"));
        }
    }

    #[test]
    fn claims_must_hold_for_the_gateways_requests() {
        let al = list(
            "orders",
            "enforce",
            "  - from: [gateway-public]\n    claims: {scope: orders:write}\n",
        );
        let lists = [&al];
        let gateway = peer("shop", "gateway-public");
        let with = |claims: serde_json::Value| {
            let claims = claims.as_object().cloned().unwrap();
            authorize(
                &lists,
                &gateway,
                8080,
                Some(HttpRequestInfo {
                    method: "POST",
                    normalized_path: "/orders",
                    claims: Some(&claims),
                }),
                TD,
            )
            .verdict
        };
        let allow = Verdict::Allow;
        assert_eq!(with(serde_json::json!({"scope": "orders:write"})), allow);
        assert_eq!(
            with(serde_json::json!({"scope": "orders:read orders:write"})),
            allow
        );
        assert_eq!(
            with(serde_json::json!({"scope": ["a", "orders:write"]})),
            allow
        );
        let deny = Verdict::Deny;
        assert_eq!(with(serde_json::json!({"scope": "orders:read"})), deny);
        assert_eq!(with(serde_json::json!({"scope": "orders:writer"})), deny);
        assert_eq!(with(serde_json::json!({"scope": ["orders:write x"]})), deny);
        assert_eq!(with(serde_json::json!({"sub": "orders:write"})), deny);
        // No verified claims (not via a gateway with a token): denied.
        assert_eq!(
            authorize(&lists, &gateway, 8080, get("/orders"), TD).verdict,
            deny
        );
        assert_eq!(authorize(&lists, &gateway, 8080, None, TD).verdict, deny);
    }

    #[test]
    fn several_lists_first_match_names_the_rule() {
        let a = list("a", "enforce", "  - from: [cart]\n    ports: [1]\n");
        let b = list("b", "enforce", "  - from: [web]\n  - from: [cart]\n");
        let lists = [&a, &b];
        let cart = peer("shop", "cart");
        assert_eq!(authorize(&lists, &cart, 1, None, TD), allowed("a#0"));
        assert_eq!(authorize(&lists, &cart, 2, None, TD), allowed("b#1"));
        assert_eq!(
            authorize(&lists, &peer("shop", "web"), 2, None, TD),
            allowed("b#0")
        );
        let two_audits = [
            &list("x", "audit", "  - from: [web]\n"),
            &list("y", "audit", "  - from: [web]\n"),
        ];
        assert_eq!(authorize(&two_audits, &cart, 1, None, TD), audited());
    }
}
