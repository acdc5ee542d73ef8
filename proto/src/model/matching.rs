//! The parts of an allow-list rule a request is matched against: `from`
//! principals, path patterns and method tokens. The sidecar and the control
//! plane both use these, so a rule means the same thing everywhere.

use std::fmt;
use std::str::FromStr;

use crate::identity::{SpiffeId, validate_name};

/// Who a rule allows, as written in `from`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// `sa`: that service account in the allow-list's own namespace.
    ServiceAccount(String),
    /// `ns/sa`.
    NamespacedAccount {
        namespace: String,
        service_account: String,
    },
    /// `ns/*`: any identity of the namespace.
    Namespace(String),
    /// `spiffe://td/ns/x/sa/y`: exactly that identity.
    Spiffe(SpiffeId),
    /// `*`: any identity of the mesh's trust domain.
    Any,
}

impl Principal {
    /// Whether `peer` (already verified against the trust bundle) is one of
    /// the identities this entry names. Every short form is confined to the
    /// mesh's `trust_domain`; a full SPIFFE ID matches only itself.
    pub fn matches(&self, peer: &SpiffeId, allowlist_namespace: &str, trust_domain: &str) -> bool {
        let local = peer.trust_domain() == trust_domain;
        match self {
            Principal::Any => local,
            Principal::ServiceAccount(sa) => {
                local && peer.namespace() == allowlist_namespace && peer.service_account() == sa
            }
            Principal::NamespacedAccount {
                namespace,
                service_account,
            } => {
                local && peer.namespace() == namespace && peer.service_account() == service_account
            }
            Principal::Namespace(namespace) => local && peer.namespace() == namespace,
            Principal::Spiffe(id) => peer == id,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected sa, ns/sa, ns/*, spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> or *, got {0}"
)]
pub struct BadPrincipal(String);

impl FromStr for Principal {
    type Err = BadPrincipal;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPrincipal(super::check::got(s));
        if s == "*" {
            return Ok(Principal::Any);
        }
        if s.starts_with("spiffe://") {
            return s.parse().map(Principal::Spiffe).map_err(|_| bad());
        }
        match s.split_once('/') {
            None => {
                validate_name("service account", s).map_err(|_| bad())?;
                Ok(Principal::ServiceAccount(s.to_owned()))
            }
            Some((namespace, rest)) => {
                validate_name("namespace", namespace).map_err(|_| bad())?;
                if rest == "*" {
                    return Ok(Principal::Namespace(namespace.to_owned()));
                }
                validate_name("service account", rest).map_err(|_| bad())?;
                Ok(Principal::NamespacedAccount {
                    namespace: namespace.to_owned(),
                    service_account: rest.to_owned(),
                })
            }
        }
    }
}

/// Written back exactly as the accepted input was.
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::ServiceAccount(sa) => f.write_str(sa),
            Principal::NamespacedAccount {
                namespace,
                service_account,
            } => write!(f, "{namespace}/{service_account}"),
            Principal::Namespace(namespace) => write!(f, "{namespace}/*"),
            Principal::Spiffe(id) => write!(f, "{id}"),
            Principal::Any => f.write_str("*"),
        }
    }
}

/// A path an HTTP rule allows: `/a/b` exactly, `/a/*` one more segment,
/// `/a/**` one or more segments below `/a` (not `/a` itself, nor `/a/`).
/// Matched against the proxy's normalized path (decoded, no `.`/`..`, no
/// `//`, no query), so patterns may not contain what a normalized path cannot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
    /// Ends in `/**`.
    below: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    /// Exact text; the empty literal only as the last segment (trailing `/`).
    Literal(String),
    /// `*`: one non-empty segment.
    One,
}

/// Longest path pattern accepted.
const MAX_PATH_LEN: usize = 1024;

impl PathPattern {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a normalized request path (starting with `/`, no query) matches.
    pub fn matches(&self, normalized_path: &str) -> bool {
        let Some(rest) = normalized_path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let ok = match segment {
                Segment::Literal(text) => part == text,
                Segment::One => !part.is_empty(),
            };
            if !ok {
                return false;
            }
        }
        match parts.next() {
            None => !self.below,
            Some(next) => self.below && !next.is_empty(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected a path pattern such as /a/b, /a/* or /a/**: {0}")]
pub struct BadPathPattern(String);

impl FromStr for PathPattern {
    type Err = BadPathPattern;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            Err(BadPathPattern(format!(
                "{why}, got {}",
                super::check::got(s)
            )))
        };
        if s.len() > MAX_PATH_LEN {
            return bad(&format!("at most {MAX_PATH_LEN} bytes"));
        }
        let Some(body) = s.strip_prefix('/') else {
            return bad("it must start with /");
        };
        if s.chars().any(char::is_control) {
            return bad("no control characters");
        }
        if s.contains('%') {
            return bad("no percent-encoding (write the decoded path)");
        }
        if s.contains(['?', '#']) {
            return bad("no query or fragment");
        }
        if s.contains('\\') {
            return bad("no backslashes");
        }
        let parts: Vec<&str> = body.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut below = false;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match *part {
                "" if last => segments.push(Segment::Literal(String::new())),
                "" => return bad("no empty segments (//)"),
                "." | ".." => return bad("no . or .. segments"),
                "**" if last => below = true,
                "**" => return bad("** only as the last segment"),
                "*" => segments.push(Segment::One),
                p if p.contains('*') => return bad("* and ** only as whole segments"),
                p => segments.push(Segment::Literal(p.to_owned())),
            }
        }
        Ok(PathPattern {
            text: s.to_owned(),
            segments,
            below,
        })
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An HTTP method as rules name it: an RFC 9110 token with no lower-case
/// letters (`GET`, `POST`, `PROPFIND`), at most 32 bytes. `*` is refused:
/// leaving `methods` out is how a rule allows any method.
pub(crate) fn check_method(method: &str) -> Result<(), String> {
    if method == "*" {
        return Err("expected a method such as GET; leave methods out to allow any".into());
    }
    let tchar = |b: u8| is_tchar(b) && !b.is_ascii_lowercase();
    if !method.is_empty() && method.len() <= 32 && method.bytes().all(tchar) {
        Ok(())
    } else {
        Err(format!(
            "expected an upper-case HTTP method token such as GET, got {}",
            super::check::got(method)
        ))
    }
}

/// An RFC 9110 `tchar`: what HTTP tokens (methods, field names) are made of.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "cluster.local";

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn principal(s: &str) -> Principal {
        s.parse().unwrap()
    }

    #[test]
    fn principal_forms_round_trip() {
        for s in [
            "cart",
            "shop/cart",
            "shop/*",
            "spiffe://cluster.local/ns/shop/sa/cart",
            "*",
        ] {
            assert_eq!(principal(s).to_string(), s);
        }
    }

    #[test]
    fn principal_rejects_malformed() {
        for bad in [
            "",
            "Cart",
            "shop/",
            "/cart",
            "*/cart",
            "*/*",
            "shop/cart/x",
            "shop/**",
            "**",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/*",
        ] {
            assert!(
                bad.parse::<Principal>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn same_namespace_service_account() {
        let p = principal("cart");
        assert!(p.matches(&id("spiffe://cluster.local/ns/shop/sa/cart"), "shop", TD));
        assert!(!p.matches(&id("spiffe://cluster.local/ns/other/sa/cart"), "shop", TD));
        assert!(!p.matches(&id("spiffe://cluster.local/ns/shop/sa/carts"), "shop", TD));
        assert!(!p.matches(&id("spiffe://evil.org/ns/shop/sa/cart"), "shop", TD));
    }

    #[test]
    fn namespaced_account_and_namespace() {
        let peer = id("spiffe://cluster.local/ns/web/sa/frontend");
        assert!(principal("web/frontend").matches(&peer, "shop", TD));
        assert!(!principal("web/backend").matches(&peer, "shop", TD));
        assert!(principal("web/*").matches(&peer, "shop", TD));
        assert!(!principal("shop/*").matches(&peer, "shop", TD));
        assert!(!principal("web/*").matches(
            &id("spiffe://evil.org/ns/web/sa/frontend"),
            "shop",
            TD
        ));
    }

    #[test]
    fn full_id_and_any() {
        let peer = id("spiffe://cluster.local/ns/web/sa/frontend");
        assert!(principal("spiffe://cluster.local/ns/web/sa/frontend").matches(&peer, "shop", TD));
        assert!(!principal("spiffe://other.td/ns/web/sa/frontend").matches(&peer, "shop", TD));
        assert!(principal("*").matches(&peer, "shop", TD));
        assert!(!principal("*").matches(&id("spiffe://evil.org/ns/web/sa/frontend"), "shop", TD));
    }

    fn pattern(s: &str) -> PathPattern {
        s.parse().unwrap()
    }

    #[test]
    fn exact_paths() {
        assert!(pattern("/a/b").matches("/a/b"));
        assert!(!pattern("/a/b").matches("/a/b/"));
        assert!(!pattern("/a/b").matches("/a/bc"));
        assert!(!pattern("/a/b").matches("/a"));
        assert!(!pattern("/a/b").matches("/a/b/c"));
        assert!(pattern("/").matches("/"));
        assert!(!pattern("/").matches("/a"));
        assert!(pattern("/a/").matches("/a/"));
        assert!(!pattern("/a/").matches("/a"));
        assert!(!pattern("/a").matches("a"));
    }

    #[test]
    fn one_segment_wildcard() {
        let p = pattern("/a/*");
        assert!(p.matches("/a/b"));
        assert!(!p.matches("/a/"));
        assert!(!p.matches("/a"));
        assert!(!p.matches("/a/b/c"));
        assert!(!p.matches("/a/b/"));
        assert!(pattern("/a/*/c").matches("/a/x/c"));
        assert!(!pattern("/a/*/c").matches("/a/x/d"));
    }

    #[test]
    fn any_depth_below() {
        let p = pattern("/a/**");
        assert!(p.matches("/a/b"));
        assert!(p.matches("/a/b/c/d"));
        assert!(p.matches("/a/b/"));
        assert!(!p.matches("/a"));
        assert!(!p.matches("/a/"));
        assert!(!p.matches("/ab/c"));
        let root = pattern("/**");
        assert!(root.matches("/x"));
        assert!(root.matches("/x/y"));
        assert!(!root.matches("/"));
        assert!(pattern("/a/*/**").matches("/a/b/c"));
        assert!(!pattern("/a/*/**").matches("/a/b"));
    }

    #[test]
    fn path_pattern_rules() {
        for (bad, why) in [
            ("a/b", "start with /"),
            ("", "start with /"),
            ("/a//b", "empty segments"),
            ("//", "empty segments"),
            ("/a/./b", ". or .."),
            ("/a/..", ". or .."),
            ("/a/%2e", "percent"),
            ("/a\0", "control"),
            ("/a?b=1", "query"),
            ("/a/**/b", "last segment"),
            ("/a/b*", "whole segments"),
            ("/a/***", "whole segments"),
            ("/a\\b", "backslash"),
        ] {
            let err = bad.parse::<PathPattern>().expect_err(bad).to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(
            format!("/{}", "a".repeat(MAX_PATH_LEN))
                .parse::<PathPattern>()
                .is_err()
        );
        assert_eq!(pattern("/a/**").to_string(), "/a/**");
    }

    #[test]
    fn methods() {
        for ok in ["GET", "POST", "PROPFIND", "M-SEARCH"] {
            assert_eq!(check_method(ok), Ok(()), "{ok}");
        }
        for bad in [
            "get",
            "Get",
            "",
            "GET POST",
            "G\u{e9}T",
            "*",
            &"A".repeat(33),
        ] {
            assert!(check_method(bad).is_err(), "{bad:?}");
        }
    }
}
