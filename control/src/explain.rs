//! "Can A call B, and why" as JSON, for `bulkheadctl explain` and the
//! dashboard's Policy view: one shape, built on the sidecar's own decision
//! code ([`bulkhead_proto::policy::explain`]), so the page, the CLI and
//! the sidecar cannot disagree. Parsing the question (flags, a form) stays
//! with each front end; this module answers it.

use bulkhead_proto::SpiffeId;
use bulkhead_proto::model::{AllowList, AllowRule, Claims, Principal, Protocol, Service};
use bulkhead_proto::policy::{Call, Explanation, Verdict, explain_with_claims};
use serde_json::{Value, json};

/// One question: who calls which service, on which declared port, with
/// what request.
#[derive(Clone, Copy, Debug)]
pub struct Question<'a> {
    pub from: &'a SpiffeId,
    /// `namespace/service`.
    pub to: &'a str,
    pub port: u16,
    pub protocol: Protocol,
    pub call: Call<'a>,
    /// The path as asked (kept for the answer even on a tcp port, where it
    /// does not apply).
    pub path: Option<&'a str>,
    /// An end user's verified claims, as a gateway passes them on (for
    /// rules with `claims`); `None`: a request without, as from any other
    /// caller.
    pub claims: Option<&'a Claims>,
}

/// A caller as typed: `ns/sa` in `trust_domain`, or a full SPIFFE ID;
/// the error says why not.
pub fn parse_caller(from: &str, trust_domain: &str) -> Result<SpiffeId, String> {
    if from.starts_with("spiffe://") {
        from.parse().map_err(|e| format!("{e}"))
    } else {
        match from.split_once('/') {
            Some((ns, sa)) => SpiffeId::new(trust_domain, ns, sa).map_err(|e| format!("{e}")),
            None => Err("no namespace".to_owned()),
        }
    }
}

/// Why a port cannot be picked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("port {port} is not declared: {to} declares port(s) {declared}")]
    NotDeclared {
        port: u16,
        to: String,
        declared: String,
    },
    #[error("{to} declares ports {declared}: name one of them")]
    Ambiguous { to: String, declared: String },
}

/// The declared port called and its protocol (rules name declared ports,
/// not the app's); with none given, the only one declared.
pub fn declared_port(service: &Service, port: Option<u16>) -> Result<(u16, Protocol), PortError> {
    let declared = &service.spec.ports;
    let list = || {
        declared
            .iter()
            .map(|p| p.port.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let to = || format!("{}/{}", service.metadata.namespace, service.metadata.name);
    match (port, declared.as_slice()) {
        (Some(port), _) => declared
            .iter()
            .find(|p| p.port == port)
            .map(|p| (p.port, p.protocol))
            .ok_or_else(|| PortError::NotDeclared {
                port,
                to: to(),
                declared: list(),
            }),
        (None, [only]) => Ok((only.port, only.protocol)),
        (None, _) => Err(PortError::Ambiguous {
            to: to(),
            declared: list(),
        }),
    }
}

/// Evaluates `q` against `lists` (those targeting `q.to`) with the
/// sidecar's code.
pub fn answer(lists: &[AllowList], q: &Question<'_>, trust_domain: &str) -> Explanation {
    explain_with_claims(lists, q.from, q.port, q.call, q.claims, trust_domain)
}

/// `allowed`, `audit` or `denied`.
pub fn decision(e: &Explanation) -> &'static str {
    match e.verdict {
        Verdict::Allow => "allowed",
        Verdict::AuditAllow => "audit",
        Verdict::Deny => "denied",
    }
}

/// `{"decision", "allowList", "rule", "normalizedPath", "reasons"}` and
/// what was asked. Every reason has the same keys (null when they do not
/// apply): code, message, allowList, rule, field, got, expected.
pub fn report(lists: &[AllowList], q: &Question<'_>, e: &Explanation) -> Value {
    let (method, path) = match q.call {
        Call::Http { method, path } => (Some(method), Some(path)),
        Call::Tcp | Call::AnyHttp => (None, None),
    };
    json!({
        "decision": decision(e),
        "allowList": e.allowed_by.as_ref().map(|(list, _)| list),
        "rule": e.allowed_by.as_ref().map(|(_, index)| index),
        "normalizedPath": e.normalized_path,
        "reasons": reasons(lists, q, e),
        "label": e.reason,
        "from": q.from.to_string(),
        "to": q.to,
        "port": q.port,
        "protocol": q.protocol.as_str(),
        "method": method,
        "path": path,
    })
}

fn reasons(lists: &[AllowList], q: &Question<'_>, e: &Explanation) -> Vec<Value> {
    let reason = |code: &str, message: String| {
        json!({"code": code, "message": message, "allowList": null, "rule": null,
               "field": null, "got": null, "expected": null})
    };
    let to = q.to;
    let mut out = Vec::new();
    if q.protocol == Protocol::Tcp && q.path.is_some() {
        out.push(reason(
            "tcp-port",
            format!(
                "port {} of {to} is tcp: the sidecar sees an opaque connection, so the method and path do not apply",
                q.port
            ),
        ));
    }
    if let Some(error) = e.path_error {
        let mut r = reason(
            Explanation::BAD_PATH,
            format!(
                "the sidecar refuses this path with 400 before any rule is tried: {error} ({})",
                error.reason()
            ),
        );
        r["field"] = json!("path");
        r["got"] = json!(q.path);
        out.push(r);
        return out;
    }
    if let Some((list, index)) = &e.allowed_by {
        if q.call == Call::AnyHttp {
            out.extend(not_checked(lists, list, *index));
        }
        return out;
    }
    if lists.is_empty() {
        out.push(reason(
            e.reason,
            format!("no AllowList targets {to}: default deny, nobody may call it"),
        ));
        return out;
    }
    if e.verdict == Verdict::AuditAllow {
        out.push(reason(
            e.reason,
            format!(
                "no rule matches, but every AllowList targeting {to} is in audit mode: let through and counted in bulkhead_authz_audit_total"
            ),
        ));
    }
    for rule in e.closest() {
        for m in &rule.failed {
            out.push(json!({
                "code": "mismatch",
                "message": m.to_string(),
                "allowList": rule.list,
                "rule": rule.index,
                "field": m.field.as_str(),
                "got": m.got,
                "expected": m.expected,
            }));
        }
    }
    out
}

/// With no path asked, what the allowing rule still limits.
fn not_checked(lists: &[AllowList], list: &str, index: usize) -> Vec<Value> {
    let Some(http) = lists
        .iter()
        .find(|l| l.metadata.name == list)
        .and_then(|l| l.spec.rules.get(index))
        .and_then(|r| r.http.as_ref())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let limits = [
        ("method", http.methods.clone()),
        (
            "path",
            http.paths
                .as_ref()
                .map(|p| p.iter().map(ToString::to_string).collect()),
        ),
    ];
    for (field, expected) in limits {
        if let Some(expected) = expected {
            out.push(json!({
                "code": "not-checked",
                "message": format!("the rule allows only {field}s [{}]; give a {field} to check a request", expected.join(", ")),
                "allowList": list, "rule": index, "field": field, "got": null,
                "expected": expected,
            }));
        }
    }
    out
}

/// Who may call the service `lists` target (on `port`, when given): one
/// row per rule that lets someone in, `{allowList, rule, mode, callers,
/// ports, httpOnly, methods, paths, claims}` (null: any).
pub fn allowed_callers(lists: &[AllowList], port: Option<u16>) -> Vec<Value> {
    let rules: Vec<(&AllowList, usize, &AllowRule)> = lists
        .iter()
        .flat_map(|l| l.spec.rules.iter().enumerate().map(move |(i, r)| (l, i, r)))
        .filter(|(_, _, r)| port.is_none_or(|p| r.matches_port(p)))
        .collect();
    rules
        .iter()
        .map(|(list, index, rule)| {
            let callers: Vec<String> = rule
                .from
                .iter()
                .map(|p| match p {
                    Principal::ServiceAccount(sa) => format!("{}/{sa}", list.metadata.namespace),
                    other => other.to_string(),
                })
                .collect();
            let ports = rule
                .ports
                .as_ref()
                .map(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>());
            let methods = rule.http.as_ref().and_then(|h| h.methods.clone());
            let paths = rule.http.as_ref().and_then(|h| {
                h.paths
                    .as_ref()
                    .map(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>())
            });
            let claims = rule.claims.as_ref().map(|c| {
                c.iter()
                    .map(|c| format!("{}={}", c.name, c.value))
                    .collect::<Vec<_>>()
            });
            json!({
                "allowList": list.metadata.name, "rule": index, "mode": list.mode().as_str(),
                "callers": callers, "ports": ports, "httpOnly": rule.http.is_some(),
                "methods": methods, "paths": paths, "claims": claims,
            })
        })
        .collect()
}

/// The lists targeting `namespace/name`, by name (the sidecar's order).
pub fn targeting(lists: Vec<AllowList>, namespace: &str, name: &str) -> Vec<AllowList> {
    let mut lists: Vec<AllowList> = lists
        .into_iter()
        .filter(|l| l.metadata.namespace == namespace && l.spec.target == name)
        .collect();
    lists.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    lists
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::model::{Resource, parse_documents};

    const POLICY: &str = "
{apiVersion: bulkhead.dev/v1, kind: Service, metadata: {name: inventory, namespace: shop},
 spec: {ports: [{port: 8080, protocol: http}, {port: 9090, protocol: tcp}]}}
---
{apiVersion: bulkhead.dev/v1, kind: AllowList, metadata: {name: readers, namespace: shop},
 spec: {target: inventory, rules: [{from: [web], ports: [8080],
        http: {methods: [GET], paths: [/v1/stock/*]}}]}}
";

    fn parsed() -> (Service, Vec<AllowList>) {
        let (mut service, mut lists) = (None, Vec::new());
        for r in parse_documents("policy", POLICY).unwrap() {
            match r {
                Resource::Service(s) => service = Some(s),
                Resource::AllowList(l) => lists.push(l),
                _ => {}
            }
        }
        (service.unwrap(), lists)
    }

    #[test]
    fn a_question_is_answered_with_the_sidecars_code() {
        let (service, lists) = parsed();
        let lists = targeting(lists, "shop", "inventory");
        let from = parse_caller("shop/web", "cluster.local").unwrap();
        let (port, protocol) = declared_port(&service, Some(8080)).unwrap();
        let ask = |path| Question {
            from: &from,
            to: "shop/inventory",
            port,
            protocol,
            call: Call::Http {
                method: "GET",
                path,
            },
            path: Some(path),
            claims: None,
        };
        let q = ask("/v1/stock/../stock/a");
        let ok = report(&lists, &q, &answer(&lists, &q, "cluster.local"));
        assert_eq!(ok["decision"], "allowed", "{ok}");
        assert_eq!(ok["normalizedPath"], "/v1/stock/a");
        assert_eq!(ok["allowList"], "readers");
        let q = ask("/admin");
        let no = report(&lists, &q, &answer(&lists, &q, "cluster.local"));
        assert_eq!(no["decision"], "denied", "{no}");
        assert_eq!(no["reasons"][0]["field"], "path", "{no}");
    }

    #[test]
    fn ports_and_callers_are_checked() {
        let (service, lists) = parsed();
        assert!(matches!(
            declared_port(&service, None),
            Err(PortError::Ambiguous { .. })
        ));
        assert!(matches!(
            declared_port(&service, Some(1)),
            Err(PortError::NotDeclared { port: 1, .. })
        ));
        assert!(parse_caller("web", "cluster.local").is_err());
        assert!(parse_caller("spiffe://td/ns/a/sa/b", "x").is_ok());
        let rows = allowed_callers(&lists, Some(8080));
        assert_eq!(rows[0]["callers"], json!(["shop/web"]));
        assert!(allowed_callers(&lists, Some(9090)).is_empty());
    }
}
