//! Inbound authorization: the checks the sidecar applies on port 4143 before
//! any byte reaches the app. They live in `bulkhead_proto::policy` (mode
//! semantics and path normalization are documented there), shared with
//! `bulkheadctl explain` so the CLI's answer is the sidecar's.

pub use bulkhead_proto::policy::{
    Decision, HttpRequestInfo, MAX_PATH_LEN, MAX_PATH_SEGMENTS, PathError, RuleRef, Verdict,
    assert_normalized, authorize, normalize_path,
};
