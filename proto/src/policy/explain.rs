//! Why a call is allowed or denied: the sidecar's [`Decision`] together
//! with, for every rule of every list targeting the service, the fields
//! that failed. Built from the same per-field predicates [`authorize`]
//! matches with; unlike it, this allocates (it serves the CLI, not the
//! request path).

use std::borrow::Borrow;
use std::fmt;

use crate::identity::SpiffeId;
use crate::model::{AllowList, AllowRule, Claims, Mode};

use super::authz::{Decision, HttpRequestInfo, Verdict, authorize, unmatched};
use super::path::{PathError, normalize_path};

/// What is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call<'a> {
    /// An opaque TCP connection (what the sidecar sees on a `tcp` port):
    /// rules with an `http` match never allow it.
    Tcp,
    /// An HTTP or gRPC request. `path` is as the client sends it; it is
    /// normalized here exactly as the sidecar does, or refused.
    Http { method: &'a str, path: &'a str },
    /// An HTTP request whose method and path are left open: identity and
    /// port only ("may A call B at all?").
    AnyHttp,
}

/// A field of a rule that a call can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// `from`.
    Identity,
    /// `ports`.
    Port,
    /// `http` present: the rule allows HTTP requests only, never TCP.
    Protocol,
    /// `http.methods`.
    Method,
    /// `http.paths`, against the normalized path.
    Path,
    /// `claims`: the end user's verified claims (requests via a gateway).
    Claims,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Identity => "identity",
            Field::Port => "port",
            Field::Protocol => "protocol",
            Field::Method => "method",
            Field::Path => "path",
            Field::Claims => "claims",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One field of one rule that the call did not match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub field: Field,
    /// What the call has: the peer's SPIFFE ID, the port, `tcp`, the
    /// method, or the normalized path.
    pub got: String,
    /// What the rule accepts, as written in it.
    pub expected: Vec<String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expected = self.expected.join(", ");
        match self.field {
            Field::Identity => write!(f, "identity {} is not one of from [{expected}]", self.got),
            Field::Port => write!(f, "port {} is not one of ports [{expected}]", self.got),
            Field::Protocol => write!(
                f,
                "the rule has an http match, so it allows HTTP requests only, not a TCP connection"
            ),
            Field::Method => write!(f, "method {} is not one of methods [{expected}]", self.got),
            Field::Path => write!(
                f,
                "path {} (normalized) matches none of paths [{expected}]",
                self.got
            ),
            Field::Claims => write!(f, "claims {} do not hold all of [{expected}]", self.got),
        }
    }
}

/// One rule, checked field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCheck {
    /// The AllowList's name.
    pub list: String,
    pub mode: Mode,
    /// 0-based, as `list#index` labels count.
    pub index: usize,
    /// Empty when the rule allows the call.
    pub failed: Vec<Mismatch>,
}

impl RuleCheck {
    pub fn allows(&self) -> bool {
        self.failed.is_empty()
    }
}

/// The answer to "may this peer make this call, and why".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: Verdict,
    /// The sidecar's label: [`Decision`]'s reasons, or [`Explanation::BAD_PATH`]
    /// when the sidecar refuses the path (400) before any rule is tried.
    pub reason: &'static str,
    /// The rule that allows: AllowList name and rule index.
    pub allowed_by: Option<(String, usize)>,
    /// The path the rules were matched against (HTTP calls only).
    pub normalized_path: Option<String>,
    /// Why the path was refused.
    pub path_error: Option<PathError>,
    /// Every rule of every list targeting the service: lists by name (the
    /// sidecar's order), rules in order. Empty for a refused path.
    pub rules: Vec<RuleCheck>,
}

impl Explanation {
    pub const BAD_PATH: &'static str = "bad-path";

    /// Whether the sidecar forwards the call (allowed, or audit-only).
    pub fn lets_through(&self) -> bool {
        self.verdict != Verdict::Deny
    }

    /// The rules that came nearest when none allows: those with the fewest
    /// failed fields, in order. Empty when a rule allows.
    pub fn closest(&self) -> Vec<&RuleCheck> {
        if self.allowed_by.is_some() {
            return Vec::new();
        }
        let fewest = self.rules.iter().map(|r| r.failed.len()).min();
        self.rules
            .iter()
            .filter(|r| Some(r.failed.len()) == fewest)
            .collect()
    }
}

/// Explains what [`authorize`] decides for `peer` calling on declared
/// `port`, given the `lists` targeting the service (any order: they are
/// tried by name, as the sidecar holds them). The verdict and the allowing
/// rule are [`authorize`]'s own; for [`Call::AnyHttp`], which it cannot be
/// asked, they follow from the same predicates and mode rules.
pub fn explain<L: Borrow<AllowList>>(
    lists: &[L],
    peer: &SpiffeId,
    port: u16,
    call: Call<'_>,
    trust_domain: &str,
) -> Explanation {
    explain_with_claims(lists, peer, port, call, None, trust_domain)
}

/// [`explain`] for a request carrying an end user's verified `claims`, as
/// a gateway passes them on (`None`: a request without, as from any other
/// caller).
pub fn explain_with_claims<L: Borrow<AllowList>>(
    lists: &[L],
    peer: &SpiffeId,
    port: u16,
    call: Call<'_>,
    claims: Option<&Claims>,
    trust_domain: &str,
) -> Explanation {
    let mut sorted: Vec<&AllowList> = lists.iter().map(Borrow::borrow).collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let (method, normalized_path) = match call {
        Call::Http { method, path } => match normalize_path(path) {
            Ok(normal) => (Some(method), Some(normal.into_owned())),
            Err(error) => {
                return Explanation {
                    verdict: Verdict::Deny,
                    reason: Explanation::BAD_PATH,
                    allowed_by: None,
                    normalized_path: None,
                    path_error: Some(error),
                    rules: Vec::new(),
                };
            }
        },
        Call::Tcp | Call::AnyHttp => (None, None),
    };
    let asked = Asked {
        peer,
        port,
        call,
        method,
        path: normalized_path.as_deref(),
        claims,
        trust_domain,
    };
    let rules: Vec<RuleCheck> = sorted
        .iter()
        .flat_map(|list| {
            list.spec
                .rules
                .iter()
                .enumerate()
                .map(|(index, rule)| RuleCheck {
                    list: list.metadata.name.clone(),
                    mode: list.mode(),
                    index,
                    failed: asked.mismatches(rule, &list.metadata.namespace),
                })
        })
        .collect();
    let first_allowing = rules
        .iter()
        .find(|r| r.allows())
        .map(|r| (r.list.clone(), r.index));
    let (verdict, reason, allowed_by) = if call == Call::AnyHttp {
        match first_allowing {
            Some(rule) => (Verdict::Allow, Decision::ALLOWED, Some(rule)),
            None => {
                let (verdict, reason) = unmatched(&sorted);
                (verdict, reason, None)
            }
        }
    } else {
        let http = method
            .zip(normalized_path.as_deref())
            .map(|(method, path)| HttpRequestInfo {
                method,
                normalized_path: path,
                claims,
            });
        let decision = authorize(&sorted, peer, port, http, trust_domain);
        let allowed_by = decision.rule.map(|r| (r.list.to_owned(), r.index));
        // One set of predicates: the field-by-field view agrees with the
        // sidecar's single pass, or the explanation is wrong.
        debug_assert_eq!(allowed_by, first_allowing);
        (decision.verdict, decision.reason, allowed_by)
    };
    Explanation {
        verdict,
        reason,
        allowed_by,
        normalized_path,
        path_error: None,
        rules,
    }
}

/// A call, its path already normalized.
struct Asked<'a> {
    peer: &'a SpiffeId,
    port: u16,
    call: Call<'a>,
    method: Option<&'a str>,
    path: Option<&'a str>,
    claims: Option<&'a Claims>,
    trust_domain: &'a str,
}

impl Asked<'_> {
    /// The fields of `rule` (of a list in `namespace`) the call fails, each
    /// judged by the predicate [`AllowRule::matches`] is made of.
    fn mismatches(&self, rule: &AllowRule, namespace: &str) -> Vec<Mismatch> {
        let mut failed = Vec::new();
        if !rule.matches_peer(self.peer, namespace, self.trust_domain) {
            failed.push(Mismatch {
                field: Field::Identity,
                got: self.peer.to_string(),
                expected: rule.from.iter().map(ToString::to_string).collect(),
            });
        }
        if !rule.matches_port(self.port) {
            failed.push(Mismatch {
                field: Field::Port,
                got: self.port.to_string(),
                expected: rule
                    .ports
                    .iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect(),
            });
        }
        if !rule.matches_claims(self.claims) {
            failed.push(Mismatch {
                field: Field::Claims,
                got: match self.claims {
                    Some(claims) => serde_json::Value::Object(claims.clone()).to_string(),
                    None => "none (not via a gateway with a verified token)".to_owned(),
                },
                expected: rule
                    .claims
                    .iter()
                    .flatten()
                    .map(|c| format!("{}: {}", c.name, c.value))
                    .collect(),
            });
        }
        let Some(http) = &rule.http else {
            return failed;
        };
        match (self.call, self.method, self.path) {
            (Call::Tcp, _, _) => failed.push(Mismatch {
                field: Field::Protocol,
                got: "tcp".to_owned(),
                expected: vec!["http".to_owned()],
            }),
            (_, Some(method), Some(path)) => {
                if !http.matches_method(method) {
                    failed.push(Mismatch {
                        field: Field::Method,
                        got: method.to_owned(),
                        expected: http.methods.clone().unwrap_or_default(),
                    });
                }
                if !http.matches_path(path) {
                    failed.push(Mismatch {
                        field: Field::Path,
                        got: path.to_owned(),
                        expected: http
                            .paths
                            .iter()
                            .flatten()
                            .map(ToString::to_string)
                            .collect(),
                    });
                }
            }
            // Method and path left open: not checked.
            _ => {}
        }
        failed
    }
}

#[cfg(test)]
mod tests;
