//! Field checks shared by every kind (names, ports, versions, lists) and the
//! wording of their errors.

use crate::identity::validate_name;

use super::error::FieldErrors;

/// A user-supplied value for an error message: quoted, escaped, and cut short
/// so one huge value cannot flood the output.
pub(crate) fn got(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}...")
    }
}

pub(crate) const DNS_LABEL: &str =
    "a DNS label (1-63 characters of a-z, 0-9 and '-', starting and ending alphanumeric)";

/// A namespace, service or service-account name.
pub(crate) fn dns_label(errs: &mut FieldErrors, path: &str, value: String) -> Option<String> {
    match validate_name("name", &value) {
        Ok(()) => Some(value),
        Err(_) => {
            errs.push(path, format!("expected {DNS_LABEL}, got {}", got(&value)));
            None
        }
    }
}

/// A TCP port, 1-65535.
pub(crate) fn port(errs: &mut FieldErrors, path: &str, value: i64) -> Option<u16> {
    match u16::try_from(value) {
        Ok(port) if port > 0 => Some(port),
        _ => {
            errs.push(path, format!("expected a port 1-65535, got {value}"));
            None
        }
    }
}

pub(crate) const VERSION: &str =
    "a version (1-64 characters of A-Z, a-z, 0-9, '.', '_', '+' and '-')";

pub(crate) fn is_version(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// A workload version label such as `v2` or `3.1.0-rc.1`.
pub(crate) fn version(errs: &mut FieldErrors, path: &str, value: String) -> Option<String> {
    if is_version(&value) {
        Some(value)
    } else {
        errs.push(path, format!("expected {VERSION}, got {}", got(&value)));
        None
    }
}

/// Checks each item of a list, reporting every bad one at `path[i]`.
pub(crate) fn each<T, U>(
    errs: &mut FieldErrors,
    path: &str,
    items: Vec<T>,
    mut check: impl FnMut(&mut FieldErrors, &str, T) -> Option<U>,
) -> Option<Vec<U>> {
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.into_iter().enumerate() {
        match check(errs, &format!("{path}[{i}]"), item) {
            Some(value) => out.push(value),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A list that must have at least one item.
pub(crate) fn required_list<T, U>(
    errs: &mut FieldErrors,
    path: &str,
    what: &str,
    items: Vec<T>,
    check: impl FnMut(&mut FieldErrors, &str, T) -> Option<U>,
) -> Option<Vec<U>> {
    if items.is_empty() {
        errs.push(path, format!("expected at least one {what}"));
        return None;
    }
    each(errs, path, items, check)
}

/// An optional list: absent is fine, but present-and-empty is refused because
/// readers disagree on whether `[]` means "none" or "any". The outer `Option`
/// is validity, the inner one presence.
pub(crate) fn optional_list<T, U>(
    errs: &mut FieldErrors,
    path: &str,
    what: &str,
    items: Option<Vec<T>>,
    check: impl FnMut(&mut FieldErrors, &str, T) -> Option<U>,
) -> Option<Option<Vec<U>>> {
    match items {
        None => Some(None),
        Some(items) if items.is_empty() => {
            errs.push(
                path,
                format!("expected at least one {what}; leave the field out instead of []"),
            );
            None
        }
        Some(items) => each(errs, path, items, check).map(Some),
    }
}

/// One of a fixed set of words (`http|grpc|tcp`, `enforce|audit`, ...).
pub(crate) fn one_of<T: Copy>(
    errs: &mut FieldErrors,
    path: &str,
    value: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    if let Some((_, found)) = choices.iter().find(|(word, _)| *word == value) {
        return Some(*found);
    }
    let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
    errs.push(
        path,
        format!("expected one of {}, got {}", words.join(", "), got(value)),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn got_quotes_and_truncates() {
        assert_eq!(got("a\"b"), "\"a\\\"b\"");
        let long = "x".repeat(100);
        assert_eq!(got(&long), format!("\"{}\"...", "x".repeat(64)));
    }

    #[test]
    fn versions() {
        for ok in ["v1", "3.1.0-rc.1", "1.0+build_7", &"a".repeat(64)] {
            assert!(is_version(ok), "{ok}");
        }
        for bad in ["", "v 1", "v1/2", "é", &"a".repeat(65)] {
            assert!(!is_version(bad), "{bad}");
        }
    }

    #[test]
    fn ports() {
        let mut errs = FieldErrors::default();
        assert_eq!(port(&mut errs, "p", 1), Some(1));
        assert_eq!(port(&mut errs, "p", 65535), Some(65535));
        assert!(errs.is_empty());
        assert_eq!(port(&mut errs, "p", 0), None);
        assert_eq!(port(&mut errs, "p", 70000), None);
        assert_eq!(port(&mut errs, "p", -1), None);
        let errors: Vec<_> = errs.locate("", None, None).collect();
        assert_eq!(errors[1].message, "expected a port 1-65535, got 70000");
    }

    #[test]
    fn optional_list_refuses_empty() {
        let mut errs = FieldErrors::default();
        let none: Option<Vec<i64>> = None;
        assert_eq!(
            optional_list(&mut errs, "p", "port", none, port),
            Some(None)
        );
        assert_eq!(
            optional_list(&mut errs, "p", "port", Some(vec![]), port),
            None
        );
        let errors: Vec<_> = errs.locate("", None, None).collect();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("expected at least one port"));
    }
}
