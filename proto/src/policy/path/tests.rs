use std::borrow::Cow;
use std::collections::HashSet;

use super::*;

use PathError::*;

/// Input → expected normalized path.
const ACCEPTED: &[(&str, &str)] = &[
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/b/", "/a/b/"),
    ("//a//b", "/a/b"),
    ("//", "/"),
    ("///", "/"),
    ("/a//", "/a/"),
    ("/a/./b/../c", "/a/c"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/%2E%2E/b", "/b"),
    ("/a/.%2e/b", "/b"),
    ("/a/%2e/b", "/a/b"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/b/%2e%2e/", "/a/"),
    ("/a/..", "/"),
    ("/a/../", "/"),
    ("/.", "/"),
    ("/./", "/"),
    ("/a/b/../../c", "/c"),
    ("/a/./../b", "/b"),
    ("/a/..b/c", "/a/..b/c"),
    ("/a/.../b", "/a/.../b"),
    ("/.a/b.", "/.a/b."),
    ("/a%2E", "/a."),
    ("/%41%42c", "/ABc"),
    ("/%7e%7Euser", "/~~user"),
    ("/%2d%5f%30", "/-_0"),
    ("/a%3ab", "/a%3Ab"),
    ("/a%3Ab", "/a%3Ab"),
    ("/%c3%a9t%C3%A9", "/%C3%A9t%C3%A9"),
    ("/%E2%82%AC", "/%E2%82%AC"),
    ("/%f0%9f%98%80", "/%F0%9F%98%80"),
    // `%25` is never decoded: the app decodes once and sees `%2F` as text.
    ("/%252F", "/%252F"),
    ("/%252f", "/%252f"),
    ("/%25", "/%25"),
    ("/%252e%252e/x", "/%252e%252e/x"),
    ("/%20", "/%20"),
    ("/a/%3Fq=1", "/a/%3Fq=1"),
    ("/a;b=c/d", "/a;b=c/d"),
    ("/a/b;jsessionid=1", "/a/b;jsessionid=1"),
    ("/a/;/b", "/a/;/b"),
    ("/a/...;x/b", "/a/...;x/b"),
    ("/users/@me:x", "/users/@me:x"),
    ("/!$&'()*+,;=", "/!$&'()*+,;="),
    ("/a/b/c/./../../d//e/", "/a/d/e/"),
];

/// Input → expected refusal.
const REJECTED: &[(&str, PathError)] = &[
    ("", NotOriginForm),
    ("a/b", NotOriginForm),
    ("*", NotOriginForm),
    ("http://x/a", NotOriginForm),
    ("/a%2Fb", EncodedSlash),
    ("/a%2fb", EncodedSlash),
    ("/a%2F/../b", EncodedSlash),
    ("/%5C", EncodedBackslash),
    ("/x/%5c..%5cadmin", EncodedBackslash),
    ("/a\\b", Backslash),
    ("/..\\admin", Backslash),
    ("/a%00", Nul),
    ("/a\0b", Nul),
    ("/a\tb", ControlCharacter),
    ("/a\r\nb", ControlCharacter),
    ("/a\x7f", ControlCharacter),
    ("/a%0Ab", ControlCharacter),
    ("/a%0d%0aSet-Cookie:x", ControlCharacter),
    ("/a%7F", ControlCharacter),
    ("/%G1", InvalidPercentEncoding),
    ("/%4", InvalidPercentEncoding),
    ("/%4/", InvalidPercentEncoding),
    ("/%", InvalidPercentEncoding),
    ("/a%%41", InvalidPercentEncoding),
    ("/%u002e", InvalidPercentEncoding),
    ("/%+1", InvalidPercentEncoding),
    ("/caf\u{e9}", NonAscii),
    ("/\u{ff0f}admin", NonAscii),
    ("/a b", InvalidCharacter(' ')),
    ("/a?b", InvalidCharacter('?')),
    ("/a#b", InvalidCharacter('#')),
    ("/a/{id}", InvalidCharacter('{')),
    ("/%C0%AE%C0%AE/admin", InvalidUtf8),
    ("/%c0%af", InvalidUtf8),
    ("/%E0%80%AE", InvalidUtf8),
    ("/%ED%A0%80", InvalidUtf8),
    ("/%F4%90%80%80", InvalidUtf8),
    ("/%FF", InvalidUtf8),
    ("/%C3", InvalidUtf8),
    ("/%C3/%A9", InvalidUtf8),
    ("/%C3x", InvalidUtf8),
    ("/%A9", InvalidUtf8),
    ("/..", AboveRoot),
    ("/../a", AboveRoot),
    ("/a/../..", AboveRoot),
    ("/a/../../b", AboveRoot),
    ("/%2e%2e", AboveRoot),
    ("/./..", AboveRoot),
    ("//..//a", AboveRoot),
    ("/a/..;/admin", DotSegmentParameter),
    ("/a/..;x=1/admin", DotSegmentParameter),
    ("/a/%2e%2e;/admin", DotSegmentParameter),
    ("/a/.;/b", DotSegmentParameter),
    ("/a/..%3B/admin", DotSegmentParameter),
    ("/a/..%3bx/admin", DotSegmentParameter),
];

#[test]
fn accepted_table() {
    for &(raw, want) in ACCEPTED {
        assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw:?}");
    }
}

#[test]
fn rejected_table() {
    for &(raw, want) in REJECTED {
        assert_eq!(normalize_path(raw), Err(want), "{raw:?}");
    }
}

#[test]
fn bounds() {
    let longest = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
    assert!(normalize_path(&longest).is_ok());
    assert_eq!(normalize_path(&format!("{longest}a")), Err(TooLong));
    let most = "/a".repeat(MAX_PATH_SEGMENTS);
    assert!(normalize_path(&most).is_ok());
    assert_eq!(normalize_path(&format!("{most}/a")), Err(TooManySegments));
    assert_eq!(
        normalize_path(&"/".repeat(MAX_PATH_SEGMENTS + 1)),
        Err(TooManySegments)
    );
}

#[test]
fn normal_paths_are_borrowed() {
    for raw in ["/", "/a/b", "/a/b/", "/a;b=c", "/..a/b..", "/@:!$&'()*+,;="] {
        assert!(
            matches!(normalize_path(raw), Ok(Cow::Borrowed(p)) if p == raw),
            "{raw:?}"
        );
    }
    assert!(matches!(normalize_path("/a//b"), Ok(Cow::Owned(_))));
}

#[test]
fn errors_have_distinct_reasons_and_messages() {
    let errors = [
        NotOriginForm,
        TooLong,
        TooManySegments,
        InvalidPercentEncoding,
        EncodedSlash,
        EncodedBackslash,
        Backslash,
        Nul,
        ControlCharacter,
        NonAscii,
        InvalidCharacter('#'),
        InvalidUtf8,
        AboveRoot,
        DotSegmentParameter,
    ];
    let reasons: HashSet<_> = errors.iter().map(PathError::reason).collect();
    assert_eq!(reasons.len(), errors.len());
    let label = |r: &str| {
        r.bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-' || b.is_ascii_digit())
    };
    assert!(reasons.iter().all(|r| label(r)), "{reasons:?}");
    for e in errors {
        assert!(e.to_string().starts_with("the request path "), "{e}");
    }
    assert_eq!(
        InvalidCharacter('#').to_string(),
        "the request path contains a raw '#', which is not allowed in a path"
    );
}

/// SplitMix64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces attackers and fuzzers combine: separators, dots in every
/// spelling, escapes of every class, and a few bytes that must be refused.
const PIECES: &[&str] = &[
    "/",
    "/",
    "/",
    "/",
    "a",
    "b",
    "z",
    "0",
    ".",
    ".",
    "..",
    "...",
    "~",
    "-",
    "_",
    ";",
    ";x=1",
    "%2e",
    "%2E",
    "%2e%2e",
    "%41",
    "%7e",
    "%3a",
    "%3B",
    "%25",
    "%252F",
    "%2F",
    "%2f",
    "%5C",
    "%5c",
    "%00",
    "%0a",
    "%20",
    "%C3%A9",
    "%c3",
    "%a9",
    "%C0%AE",
    "%E2%82%AC",
    "%F0%9F%98%80",
    "%",
    "%4",
    "%G1",
    "\\",
    "\0",
    "\t",
    "\u{e9}",
    "?",
    "#",
    " ",
    "@",
    ":",
    "!",
    "*",
];

#[test]
fn invariants_hold_on_pseudo_random_paths() {
    let mut rng = Rng(0x5eed_b01d_face);
    let (mut accepted, mut rewritten) = (0, 0);
    for _ in 0..20_000 {
        let mut raw = String::from(if rng.below(16) == 0 { "" } else { "/" });
        for _ in 0..rng.below(12) {
            raw.push_str(PIECES[rng.below(PIECES.len())]);
        }
        match normalize_path(&raw) {
            Ok(out) => {
                accepted += 1;
                if matches!(out, Cow::Owned(_)) {
                    rewritten += 1;
                }
                assert_normalized(&raw, &out);
            }
            Err(e) => assert!(!e.reason().is_empty()),
        }
    }
    // Not vacuous: plenty of inputs got through, many of them rewritten.
    assert!(
        accepted > 2_000 && rewritten > 1_000,
        "{accepted} {rewritten}"
    );
}

#[test]
fn invariants_hold_on_the_table() {
    for &(raw, _) in ACCEPTED {
        assert_normalized(raw, &normalize_path(raw).unwrap());
    }
}
