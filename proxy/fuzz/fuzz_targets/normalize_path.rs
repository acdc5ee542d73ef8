//! Fuzzes `policy::normalize_path`, which sees every inbound request path
//! before the allow-list does. Any accepted path must be canonical: what the
//! allow-list matched is exactly what the app receives, and normalizing it
//! again changes nothing. The unit test
//! `policy::path::tests::invariants_hold_on_pseudo_random_paths` checks the
//! same invariants on stable, in CI.

#![no_main]

use bulkhead_proxy::policy::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Request targets reach the normalizer as `&str` (hyper's `Uri`).
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(out) = normalize_path(raw) else {
        return;
    };
    check(raw, &out);
});

fn check(raw: &str, out: &str) {
    assert!(out.starts_with('/'), "{raw:?} -> {out:?}");
    assert!(out.len() <= raw.len(), "{raw:?} -> {out:?}");
    assert!(!out.contains("//"), "{raw:?} -> {out:?}");
    assert!(
        !out.split('/').any(|s| s == "." || s == ".."),
        "{raw:?} -> {out:?}"
    );
    let upper = out.to_ascii_uppercase();
    assert!(
        !upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%00"),
        "{raw:?} -> {out:?}"
    );
    assert!(
        out.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'),
        "{raw:?} -> {out:?}"
    );
    // Escapes are canonical: upper-case hex, never an unreserved character.
    let bytes = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let pair = &bytes[i + 1..i + 3];
        assert!(
            pair.iter()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
            "{raw:?} -> {out:?}"
        );
        let decoded = u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap();
        let unreserved = decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded);
        assert!(!unreserved, "{raw:?} -> {out:?}");
    }
    assert_eq!(
        normalize_path(out).as_deref(),
        Ok(out),
        "not idempotent: {raw:?} -> {out:?}"
    );
}
