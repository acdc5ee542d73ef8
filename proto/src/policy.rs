//! Inbound authorization: the checks the sidecar applies on port 4143 before
//! any byte reaches the app, and the explanation of them `bulkheadctl
//! explain` prints. One implementation, here in the shared crate, so that
//! what the CLI says is what the sidecar does (the control plane never
//! links the sidecar).
//!
//! - [`normalize_path`] turns a request path into the one form that is both
//!   matched against `AllowList` paths and forwarded to the app, or refuses
//!   it with a [`PathError`] (a 400) when servers could read it differently.
//! - [`authorize`] evaluates the `AllowList`s targeting this service for one
//!   request or TCP connection and returns a [`Decision`]: the sidecar's hot
//!   path, no allocation.
//! - [`explain`] evaluates the same lists with the same per-field predicates
//!   ([`AllowRule::matches_peer`](crate::model::AllowRule::matches_peer) and
//!   its siblings) and says, for every rule, which fields failed: the
//!   operator's question "can A call B, and why".
//!
//! # Mode semantics
//!
//! Allow-lists only allow. A request passes ([`Verdict::Allow`]) if any rule
//! of any list targeting the service matches it, whatever that list's mode:
//! adding an `audit` list widens access just as adding an `enforce` one does,
//! so a list's meaning never depends on its neighbours. When no rule matches:
//!
//! - no list targets the service: [`Verdict::Deny`], reason `no-allowlist`
//!   (default deny: a meshed service with no policy accepts nothing);
//! - at least one `enforce` list targets it: [`Verdict::Deny`], reason
//!   `no-matching-rule`. An `audit` list never opens a service an `enforce`
//!   list already closes, so it fails closed while a new list is rolled out
//!   beside an enforced one;
//! - every list targeting it is in `audit` mode: [`Verdict::AuditAllow`],
//!   reason `audit-no-matching-rule`. The caller lets it through and counts it
//!   as a would-be denial. This is how a first policy is rolled out: apply it
//!   as `audit`, watch `bulkhead_authz_audit_total` (what enforce would deny), then
//!   switch to `enforce`.
//!
//! # Path normalization
//!
//! The app must see exactly the path that was matched, so the inbound
//! forwards the output of [`normalize_path`], not the client's bytes. What is
//! rewritten (the same resource under RFC 3986 §6.2.2): percent-escapes of
//! unreserved characters are decoded (so `%2e%2e` is `..`), other escapes get
//! upper-case hex, duplicate slashes are merged, `.` and `..` segments are
//! removed. What is refused, because servers disagree on it and guessing is
//! how allow-lists get bypassed: encoded `/` and `\` (`%2F`, `%5C`), raw `\`,
//! NUL and other control characters (raw or escaped), raw non-ASCII bytes,
//! malformed escapes, escaped bytes that are not UTF-8 (overlong forms such as
//! `%C0%AE` once meant `.`), characters RFC 3986 forbids in a path (space,
//! `?`, `#`, `{`, ...), a `..` that would climb above the root (clamping it as
//! RFC 3986 does would hide an attack an app may resolve differently), and a
//! `.`/`..` segment carrying a `;parameter` (Tomcat and Spring read `..;` as
//! `..`). `%25` is never decoded: `%252F` reaches the app as `%252F`.

mod authz;
mod explain;
mod path;

pub use authz::{Decision, HttpRequestInfo, RuleRef, Verdict, authorize};
pub use explain::{Call, Explanation, Field, Mismatch, RuleCheck, explain, explain_with_claims};
pub use path::{MAX_PATH_LEN, MAX_PATH_SEGMENTS, PathError, assert_normalized, normalize_path};
