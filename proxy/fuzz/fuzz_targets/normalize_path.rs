//! Fuzzes `normalize_path` (`bulkhead_proto::policy`, re-exported by the
//! proxy), which sees every inbound request path before the allow-list
//! does. Any accepted path must be canonical: what the allow-list matched is
//! exactly what the app receives, and normalizing it again changes nothing.
//! The unit test `policy::path::tests::invariants_hold_on_pseudo_random_paths`
//! in `bulkhead-proto` checks the same invariants on stable, in CI.

#![no_main]

use bulkhead_proxy::policy::{assert_normalized, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Request targets reach the normalizer as `&str` (hyper's `Uri`).
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(out) = normalize_path(raw) else {
        return;
    };
    assert_normalized(raw, &out);
});
