//! Reading version labels as semver, leniently enough for the labels people
//! give deployments (`v3`, `3.1`).

use semver::{BuildMetadata, Prerelease, Version};

/// Whether `value` has the shape of a version label (what the model accepts
/// for endpoint and backend versions) rather than of a requirement.
pub(super) fn is_label(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// `value` without one leading `v` before a digit (`v3.1` → `3.1`).
pub(super) fn strip_v(value: &str) -> &str {
    match value.strip_prefix('v') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest,
        _ => value,
    }
}

/// An endpoint's version label as semver: one leading `v` dropped, a missing
/// minor or patch read as 0 (`v3` → 3.0.0, `3.1-rc.1` → 3.1.0-rc.1). `None`
/// for labels that are not versions (`canary`, `3.1.2.4`, `01.2`).
pub(super) fn read(label: &str) -> Option<Version> {
    let label = strip_v(label);
    let (rest, build) = match label.split_once('+') {
        Some((rest, build)) => (rest, Some(build)),
        None => (label, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let mut parts = core.split('.');
    let major = number(parts.next()?)?;
    let minor = parts.next().map_or(Some(0), number)?;
    let patch = parts.next().map_or(Some(0), number)?;
    if parts.next().is_some() {
        return None;
    }
    let mut version = Version::new(major, minor, patch);
    if let Some(pre) = pre {
        version.pre = Prerelease::new(pre).ok().filter(|p| !p.is_empty())?;
    }
    if let Some(build) = build {
        version.build = BuildMetadata::new(build).ok().filter(|b| !b.is_empty())?;
    }
    Some(version)
}

/// A semver numeric identifier: digits, no leading zero.
fn number(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_full_partial_and_v_prefixed_versions() {
        let cases = [
            ("3.1.4", "3.1.4"),
            ("3.1", "3.1.0"),
            ("3", "3.0.0"),
            ("v3", "3.0.0"),
            ("v3.1.2", "3.1.2"),
            ("3.1-rc.1", "3.1.0-rc.1"),
            ("3.1.0-rc.1+b7", "3.1.0-rc.1+b7"),
            ("0.0.0", "0.0.0"),
        ];
        for (label, expected) in cases {
            assert_eq!(
                read(label).map(|v| v.to_string()).as_deref(),
                Some(expected),
                "{label}"
            );
        }
    }

    #[test]
    fn other_labels_are_not_versions() {
        for label in [
            "", "canary", "v", "vv3", "3.", ".3", "3.1.2.4", "01.2", "3.x", "3.1-", "3.1+", "-3",
            "v-3", "3..1",
        ] {
            assert_eq!(read(label), None, "{label:?}");
        }
    }

    #[test]
    fn labels_and_prefixes() {
        assert!(is_label("3.1.0-rc.1+b7"));
        assert!(is_label("canary_2"));
        for not in ["", "^3", "~3.1", ">=3.1, <4", "*", "3.1 ", "3|4"] {
            assert!(!is_label(not), "{not:?}");
        }
        assert_eq!(strip_v("v3.1"), "3.1");
        assert_eq!(strip_v("vanilla"), "vanilla");
        assert_eq!(strip_v("3.1"), "3.1");
    }
}
