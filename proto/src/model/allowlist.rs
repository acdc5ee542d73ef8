//! The `AllowList` resource: who may call a service, on which ports, with
//! which methods and paths. Allow-lists only allow; with none matching, a
//! meshed service accepts nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;

use super::check;
use super::error::FieldErrors;
use super::matching::{PathPattern, Principal, check_method};
use super::resource::{Kind, Metadata, Resource, Spec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowList {
    pub metadata: Metadata,
    pub spec: AllowListSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowListSpec {
    /// The service (in the allow-list's namespace) whose inbound calls this governs.
    pub target: String,
    /// As written; `None` means enforce. Use [`AllowList::mode`].
    pub mode: Option<Mode>,
    pub rules: Vec<AllowRule>,
}

/// What happens to a request no rule allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Denied.
    #[default]
    Enforce,
    /// Logged and counted as a would-be denial, then let through.
    Audit,
}

impl Mode {
    const CHOICES: [(&'static str, Mode); 2] = [("enforce", Mode::Enforce), ("audit", Mode::Audit)];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// One rule: a request matches when every present field matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    /// Callers; any one of them matches. Never empty.
    pub from: Vec<Principal>,
    /// Declared service ports; `None` means any port.
    pub ports: Option<Vec<u16>>,
    /// Present: only HTTP/gRPC requests can match (never opaque TCP).
    pub http: Option<HttpMatch>,
    /// End-user claims a gateway verified: every one must hold (see
    /// [`ClaimMatch`]). Present: only requests that came through a gateway
    /// with a verified token can match.
    pub claims: Option<Vec<ClaimMatch>>,
}

/// The verified claims of an end user's token, as a gateway passed them on.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// `claim: value` in a rule: the claim must equal `value`, or be a list
/// with an element equal to it, or a space-separated string (OAuth
/// `scope`) with a word equal to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimMatch {
    pub name: String,
    pub value: String,
}

impl ClaimMatch {
    pub fn matches(&self, claims: &Claims) -> bool {
        let wanted = self.value.as_str();
        let scalar = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s == wanted || s.split(' ').any(|w| w == wanted),
            serde_json::Value::Bool(b) => b.to_string() == wanted,
            serde_json::Value::Number(n) => n.to_string() == wanted,
            _ => false,
        };
        match claims.get(&self.name) {
            Some(serde_json::Value::Array(items)) => items.iter().any(|item| {
                matches!(item, serde_json::Value::String(s) if s == wanted)
                    || (!item.is_string() && scalar(item))
            }),
            Some(value) => scalar(value),
            None => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpMatch {
    /// Upper-case method tokens; `None` means any method.
    pub methods: Option<Vec<String>>,
    /// `None` means any path.
    pub paths: Option<Vec<PathPattern>>,
}

impl AllowList {
    pub fn mode(&self) -> Mode {
        self.spec.mode.unwrap_or_default()
    }

    /// The index of the first rule that allows the request, if any.
    ///
    /// `port` is the declared service port the caller addressed. `method` and
    /// `normalized_path` are `None` for opaque TCP, which rules with `http`
    /// never match. `trust_domain` is the mesh's own.
    pub fn allows(
        &self,
        peer: &SpiffeId,
        port: u16,
        method: Option<&str>,
        normalized_path: Option<&str>,
        trust_domain: &str,
    ) -> Option<usize> {
        self.allows_with_claims(peer, port, method, normalized_path, None, trust_domain)
    }

    /// [`allows`](Self::allows), for a request that may carry an end
    /// user's verified `claims` (from a gateway).
    pub fn allows_with_claims(
        &self,
        peer: &SpiffeId,
        port: u16,
        method: Option<&str>,
        normalized_path: Option<&str>,
        claims: Option<&Claims>,
        trust_domain: &str,
    ) -> Option<usize> {
        self.spec.rules.iter().position(|rule| {
            rule.matches(
                peer,
                &self.metadata.namespace,
                port,
                method,
                normalized_path,
                trust_domain,
            ) && rule.matches_claims(claims)
        })
    }
}

impl AllowRule {
    /// Whether this rule (of an allow-list in `namespace`) allows the request:
    /// every field's predicate below holds. `bulkhead_proto::policy::explain`
    /// reports the same predicates one by one.
    pub fn matches(
        &self,
        peer: &SpiffeId,
        namespace: &str,
        port: u16,
        method: Option<&str>,
        normalized_path: Option<&str>,
        trust_domain: &str,
    ) -> bool {
        self.matches_peer(peer, namespace, trust_domain)
            && self.matches_port(port)
            && match (&self.http, method, normalized_path) {
                (None, _, _) => true,
                (Some(http), Some(method), Some(path)) => {
                    http.matches_method(method) && http.matches_path(path)
                }
                (Some(_), _, _) => false,
            }
    }

    /// `from`: any one of the callers names `peer`.
    pub fn matches_peer(&self, peer: &SpiffeId, namespace: &str, trust_domain: &str) -> bool {
        self.from
            .iter()
            .any(|p| p.matches(peer, namespace, trust_domain))
    }

    /// `claims`: absent, or every one holds for the request's verified claims.
    pub fn matches_claims(&self, claims: Option<&Claims>) -> bool {
        match (&self.claims, claims) {
            (None, _) => true,
            (Some(wanted), Some(claims)) => wanted.iter().all(|c| c.matches(claims)),
            (Some(_), None) => false,
        }
    }

    /// `ports`: absent, or lists the declared port.
    pub fn matches_port(&self, port: u16) -> bool {
        self.ports
            .as_ref()
            .is_none_or(|ports| ports.contains(&port))
    }
}

impl HttpMatch {
    /// Methods compare exactly: HTTP methods are case-sensitive.
    pub fn matches(&self, method: &str, normalized_path: &str) -> bool {
        self.matches_method(method) && self.matches_path(normalized_path)
    }

    /// `methods`: absent, or names `method` exactly.
    pub fn matches_method(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m == method))
    }

    /// `paths`: absent, or one pattern matches the normalized path.
    pub fn matches_path(&self, normalized_path: &str) -> bool {
        self.paths
            .as_ref()
            .is_none_or(|paths| paths.iter().any(|p| p.matches(normalized_path)))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllowListSpec {
    target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    rules: Vec<RawAllowRule>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowRule {
    from: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ports: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<RawHttpMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claims: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    paths: Option<Vec<String>>,
}

impl Spec for AllowListSpec {
    const KIND: Kind = Kind::AllowList;
    type Raw = RawAllowListSpec;

    fn from_raw(raw: RawAllowListSpec, errs: &mut FieldErrors) -> Option<Self> {
        let target = check::dns_label(errs, "spec.target", raw.target);
        let mode = match raw.mode {
            None => Some(None),
            Some(mode) => check::one_of(errs, "spec.mode", &mode, &Mode::CHOICES).map(Some),
        };
        let rules = check::required_list(errs, "spec.rules", "rule", raw.rules, rule);
        Some(AllowListSpec {
            target: target?,
            mode: mode?,
            rules: rules?,
        })
    }

    fn to_raw(&self) -> RawAllowListSpec {
        RawAllowListSpec {
            target: self.target.clone(),
            mode: self.mode.map(|m| m.as_str().to_owned()),
            rules: self
                .rules
                .iter()
                .map(|rule| RawAllowRule {
                    from: rule.from.iter().map(ToString::to_string).collect(),
                    ports: rule
                        .ports
                        .as_ref()
                        .map(|ports| ports.iter().copied().map(i64::from).collect()),
                    claims: rule.claims.as_ref().map(|claims| {
                        claims
                            .iter()
                            .map(|c| (c.name.clone(), c.value.clone()))
                            .collect()
                    }),
                    http: rule.http.as_ref().map(|http| RawHttpMatch {
                        methods: http.methods.clone(),
                        paths: http
                            .paths
                            .as_ref()
                            .map(|paths| paths.iter().map(ToString::to_string).collect()),
                    }),
                })
                .collect(),
        }
    }

    fn into_resource(metadata: Metadata, spec: Self) -> Resource {
        Resource::AllowList(AllowList { metadata, spec })
    }
}

fn rule(errs: &mut FieldErrors, path: &str, raw: RawAllowRule) -> Option<AllowRule> {
    let from = check::required_list(errs, &format!("{path}.from"), "caller", raw.from, principal);
    let ports = check::optional_list(
        errs,
        &format!("{path}.ports"),
        "port",
        raw.ports,
        check::port,
    );
    let http = match raw.http {
        None => Some(None),
        Some(http) => http_match(errs, &format!("{path}.http"), http).map(Some),
    };
    let claims = match raw.claims {
        None => Some(None),
        Some(claims) => claim_matches(errs, &format!("{path}.claims"), claims).map(Some),
    };
    Some(AllowRule {
        from: from?,
        ports: ports?,
        http: http?,
        claims: claims?,
    })
}

/// Most claims one rule may require.
const MAX_CLAIMS: usize = 16;

fn claim_matches(
    errs: &mut FieldErrors,
    path: &str,
    raw: BTreeMap<String, String>,
) -> Option<Vec<ClaimMatch>> {
    if raw.is_empty() || raw.len() > MAX_CLAIMS {
        errs.push(
            path,
            format!(
                "expected 1-{MAX_CLAIMS} claims (claim: value); leave the field out instead of {{}}"
            ),
        );
        return None;
    }
    let mut ok = true;
    for (name, value) in &raw {
        let bad = |s: &str| s.is_empty() || s.len() > 256 || s.chars().any(char::is_control);
        if bad(name) || bad(value) || value.contains(' ') {
            errs.push(
                format!("{path}.{name}"),
                format!(
                    "expected a claim name and one value (1-256 characters, no spaces or control characters), got {}",
                    check::got(value)
                ),
            );
            ok = false;
        }
    }
    ok.then(|| {
        raw.into_iter()
            .map(|(name, value)| ClaimMatch { name, value })
            .collect()
    })
}

fn principal(errs: &mut FieldErrors, path: &str, raw: String) -> Option<Principal> {
    raw.parse()
        .map_err(|e: super::matching::BadPrincipal| errs.push(path, e.to_string()))
        .ok()
}

fn http_match(errs: &mut FieldErrors, path: &str, raw: RawHttpMatch) -> Option<HttpMatch> {
    let methods = check::optional_list(
        errs,
        &format!("{path}.methods"),
        "method",
        raw.methods,
        |errs, path, method: String| match check_method(&method) {
            Ok(()) => Some(method),
            Err(message) => {
                errs.push(path, message);
                None
            }
        },
    );
    let paths = check::optional_list(
        errs,
        &format!("{path}.paths"),
        "path",
        raw.paths,
        |errs, path, pattern: String| {
            pattern
                .parse::<PathPattern>()
                .map_err(|e| errs.push(path, e.to_string()))
                .ok()
        },
    );
    Some(HttpMatch {
        methods: methods?,
        paths: paths?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{expect_error, parse_one};

    const TD: &str = "cluster.local";

    const ALLOW: &str = "apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: inventory, namespace: shop}
spec:
  target: inventory
  rules:
  - from: [cart, web/*]
    ports: [8080]
    http:
      methods: [GET, HEAD]
      paths: [/items/*, /health]
  - from: [ops/debugger]
  - from: [spiffe://cluster.local/ns/batch/sa/sync]
    ports: [9090]
";

    fn allow_list(yaml: &str) -> AllowList {
        match parse_one(yaml) {
            Resource::AllowList(a) => a,
            other => panic!("not an AllowList: {other:?}"),
        }
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn claims_read_back_and_bad_ones_are_refused() {
        let with = |claims: &str| {
            ALLOW.replace(
                "  - from: [ops/debugger]\n",
                &format!("  - from: [ops/debugger]\n    claims: {claims}\n"),
            )
        };
        let al = allow_list(&with("{scope: orders:write, tier: gold}"));
        let rule = &al.spec.rules[1];
        let claims = rule.claims.as_ref().expect("claims");
        assert_eq!(claims.len(), 2);
        let resource = parse_one(&with("{scope: orders:write}"));
        assert_eq!(parse_one(&resource.to_yaml()), resource);
        expect_error(&with("{}"), "spec.rules[1].claims", "expected 1-16 claims");
        expect_error(
            &with("{scope: 'a b'}"),
            "spec.rules[1].claims.scope",
            "one value",
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let al = allow_list(ALLOW);
        let cart = id("spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(
            al.allows(&cart, 8080, Some("GET"), Some("/items/42"), TD),
            Some(0)
        );
        let debugger = id("spiffe://cluster.local/ns/ops/sa/debugger");
        assert_eq!(al.allows(&debugger, 1234, None, None, TD), Some(1));
        let sync = id("spiffe://cluster.local/ns/batch/sa/sync");
        assert_eq!(al.allows(&sync, 9090, None, None, TD), Some(2));
    }

    #[test]
    fn every_present_field_must_match() {
        let al = allow_list(ALLOW);
        let web = id("spiffe://cluster.local/ns/web/sa/frontend");
        assert_eq!(
            al.allows(&web, 8080, Some("HEAD"), Some("/health"), TD),
            Some(0)
        );
        assert_eq!(
            al.allows(&web, 8080, Some("POST"), Some("/health"), TD),
            None
        );
        assert_eq!(
            al.allows(&web, 8080, Some("get"), Some("/health"), TD),
            None
        );
        assert_eq!(
            al.allows(&web, 8080, Some("GET"), Some("/items/1/x"), TD),
            None
        );
        assert_eq!(
            al.allows(&web, 9090, Some("GET"), Some("/health"), TD),
            None
        );
        let sync = id("spiffe://cluster.local/ns/batch/sa/sync");
        assert_eq!(al.allows(&sync, 8080, None, None, TD), None);
    }

    #[test]
    fn http_rules_never_match_tcp() {
        let al = allow_list(ALLOW);
        let cart = id("spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(al.allows(&cart, 8080, None, None, TD), None);
        assert_eq!(al.allows(&cart, 8080, Some("GET"), None, TD), None);
        assert_eq!(al.allows(&cart, 8080, None, Some("/health"), TD), None);
    }

    #[test]
    fn empty_http_matches_any_http_request_only() {
        let al = allow_list(
            "apiVersion: bulkhead.dev/v1\nkind: AllowList\nmetadata: {name: a}\n\
             spec: {target: a, rules: [{from: ['*'], http: {}}]}\n",
        );
        let anyone = id("spiffe://cluster.local/ns/x/sa/y");
        assert_eq!(
            al.allows(&anyone, 1, Some("DELETE"), Some("/"), TD),
            Some(0)
        );
        assert_eq!(al.allows(&anyone, 1, None, None, TD), None);
        let foreign = id("spiffe://evil.org/ns/x/sa/y");
        assert_eq!(al.allows(&foreign, 1, Some("GET"), Some("/"), TD), None);
    }

    #[test]
    fn default_and_explicit_mode() {
        assert_eq!(allow_list(ALLOW).mode(), Mode::Enforce);
        assert_eq!(allow_list(ALLOW).spec.mode, None);
        let audit = allow_list(&ALLOW.replace("  target:", "  mode: audit\n  target:"));
        assert_eq!(audit.mode(), Mode::Audit);
    }

    #[test]
    fn rejects_bad_target() {
        expect_error(
            &ALLOW.replace("target: inventory", "target: Inventory"),
            "spec.target",
            "expected a DNS label",
        );
    }

    #[test]
    fn rejects_unknown_mode() {
        expect_error(
            &ALLOW.replace("  target:", "  mode: permissive\n  target:"),
            "spec.mode",
            "expected one of enforce, audit, got \"permissive\"",
        );
    }

    #[test]
    fn rejects_no_rules() {
        expect_error(
            "apiVersion: bulkhead.dev/v1\nkind: AllowList\nmetadata: {name: a}\nspec: {target: a, rules: []}\n",
            "spec.rules",
            "expected at least one rule",
        );
    }

    #[test]
    fn rejects_empty_from() {
        expect_error(
            &ALLOW.replace("[ops/debugger]", "[]"),
            "spec.rules[1].from",
            "expected at least one caller",
        );
    }

    #[test]
    fn rejects_bad_principal() {
        expect_error(
            &ALLOW.replace("web/*", "web/**"),
            "spec.rules[0].from[1]",
            "expected sa, ns/sa, ns/*",
        );
    }

    #[test]
    fn rejects_bad_port() {
        expect_error(
            &ALLOW.replace("[8080]", "[70000]"),
            "spec.rules[0].ports[0]",
            "expected a port 1-65535, got 70000",
        );
        expect_error(
            &ALLOW.replace("[8080]", "[]"),
            "spec.rules[0].ports",
            "expected at least one port",
        );
    }

    #[test]
    fn rejects_bad_method() {
        expect_error(
            &ALLOW.replace("[GET, HEAD]", "[GET, head]"),
            "spec.rules[0].http.methods[1]",
            "expected an upper-case HTTP method token",
        );
    }

    #[test]
    fn rejects_bad_path() {
        expect_error(
            &ALLOW.replace("/health]", "/a/../b]"),
            "spec.rules[0].http.paths[1]",
            "no . or .. segments",
        );
    }

    #[test]
    fn rejects_misspelled_field() {
        expect_error(
            &ALLOW.replace("methods:", "method:"),
            "spec.rules[0].http.method",
            "unknown field `method`",
        );
    }
}
