//! Request-path normalization: one canonical form, both matched against
//! allow-lists and forwarded to the app; anything ambiguous is refused.

use std::borrow::Cow;

/// Longest request path accepted, in bytes (before normalization, which
/// never lengthens a path).
pub const MAX_PATH_LEN: usize = 8 * 1024;

/// Most `/`-separated segments accepted (counted before normalization).
pub const MAX_PATH_SEGMENTS: usize = 256;

/// Why a request path is refused. Every variant is answered with 400: its
/// `Display` is the response body, [`PathError::reason`] the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with /")]
    NotOriginForm,
    #[error("the request path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("the request path has more than {MAX_PATH_SEGMENTS} segments")]
    TooManySegments,
    #[error("the request path has a % that is not followed by two hex digits")]
    InvalidPercentEncoding,
    #[error("the request path contains an encoded slash (%2F), which servers read differently")]
    EncodedSlash,
    #[error("the request path contains an encoded backslash (%5C), which servers read differently")]
    EncodedBackslash,
    #[error("the request path contains a backslash, which some servers read as a slash")]
    Backslash,
    #[error("the request path contains a NUL byte (raw or %00)")]
    Nul,
    #[error("the request path contains a control character (raw or percent-encoded)")]
    ControlCharacter,
    #[error("the request path contains a raw non-ASCII byte; percent-encode it")]
    NonAscii,
    #[error("the request path contains a raw {0:?}, which is not allowed in a path")]
    InvalidCharacter(char),
    #[error("the request path has percent-encoded bytes that are not UTF-8 (or an overlong form)")]
    InvalidUtf8,
    #[error("the request path climbs above the root with ..")]
    AboveRoot,
    #[error(
        "the request path has a . or .. segment with a ;parameter, which servers read differently"
    )]
    DotSegmentParameter,
}

impl PathError {
    /// A short, stable label for metrics (`bulkhead_authz_denied_total`).
    pub const fn reason(&self) -> &'static str {
        match self {
            PathError::NotOriginForm => "path-not-origin-form",
            PathError::TooLong => "path-too-long",
            PathError::TooManySegments => "path-too-many-segments",
            PathError::InvalidPercentEncoding => "path-bad-percent-encoding",
            PathError::EncodedSlash => "path-encoded-slash",
            PathError::EncodedBackslash => "path-encoded-backslash",
            PathError::Backslash => "path-backslash",
            PathError::Nul => "path-nul",
            PathError::ControlCharacter => "path-control-character",
            PathError::NonAscii => "path-non-ascii",
            PathError::InvalidCharacter(_) => "path-invalid-character",
            PathError::InvalidUtf8 => "path-invalid-utf8",
            PathError::AboveRoot => "path-above-root",
            PathError::DotSegmentParameter => "path-dot-segment-parameter",
        }
    }
}

/// Normalizes the path of an origin-form request target (the caller has cut
/// the query off; absolute- and asterisk-form are the caller's to handle).
///
/// Returns the input itself, without allocating, when it is already normal.
/// See the [module docs](super) for what is rewritten and what is refused.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if raw.bytes().filter(|&b| b == b'/').count() > MAX_PATH_SEGMENTS {
        return Err(PathError::TooManySegments);
    }
    if is_normal(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    rewrite(raw).map(Cow::Owned)
}

/// The common case, checked without allocating: no escapes, no empty
/// (except a trailing one) or dot segments, only plain path characters.
/// True only if [`rewrite`] would return `raw` unchanged.
fn is_normal(raw: &str) -> bool {
    let mut segments = raw[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last)
            || is_dot(segment)
            || !segment.bytes().all(is_plain)
            || has_dot_parameter(segment)
        {
            return false;
        }
    }
    true
}

/// The full normalizer: validates every byte (even of segments a later `..`
/// removes), decodes, and resolves dot segments (RFC 3986 §5.2.4) without
/// ever climbing above the root.
fn rewrite(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    // Invariant between segments: `out` is empty or `/seg(/seg)*`, no trailing `/`.
    let mut out = String::with_capacity(raw.len());
    let mut utf8 = Utf8Run::default();
    let mut i = 1;
    let trailing_slash = loop {
        let start = out.len();
        out.push('/');
        while i < bytes.len() && bytes[i] != b'/' {
            let b = bytes[i];
            if b == b'%' {
                let decoded = hex_pair(bytes.get(i + 1..i + 3))?;
                push_escaped(&mut out, decoded)?;
                utf8.escaped(decoded)?;
                i += 3;
            } else {
                utf8.end()?;
                check_raw(b)?;
                out.push(char::from(b));
                i += 1;
            }
        }
        utf8.end()?;
        let last = i >= bytes.len();
        let segment = &out[start + 1..];
        if has_dot_parameter(segment) {
            return Err(PathError::DotSegmentParameter);
        }
        // A path ending in `/`, `/.` or `/..` names a directory.
        let directory = match segment {
            "" | "." => {
                out.truncate(start);
                true
            }
            ".." => {
                out.truncate(start);
                let parent = out.rfind('/').ok_or(PathError::AboveRoot)?;
                out.truncate(parent);
                true
            }
            _ => false,
        };
        if last {
            break directory;
        }
        i += 1;
    };
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// The byte two hex digits after a `%` stand for.
fn hex_pair(digits: Option<&[u8]>) -> Result<u8, PathError> {
    let hex = |d: u8| char::from(d).to_digit(16);
    match digits {
        Some(&[hi, lo]) => match (hex(hi), hex(lo)) {
            // Both digits are below 16, so this fits a byte.
            (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
            _ => Err(PathError::InvalidPercentEncoding),
        },
        _ => Err(PathError::InvalidPercentEncoding),
    }
}

/// Writes a decoded escape back in canonical form, or refuses it.
fn push_escaped(out: &mut String, b: u8) -> Result<(), PathError> {
    match b {
        0 => Err(PathError::Nul),
        b'/' => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::EncodedBackslash),
        b if b < 0x20 || b == 0x7f => Err(PathError::ControlCharacter),
        b if is_unreserved(b) => {
            out.push(char::from(b));
            Ok(())
        }
        b => {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
            Ok(())
        }
    }
}

/// Accepts a raw (unescaped) byte of a segment, or says why not.
fn check_raw(b: u8) -> Result<(), PathError> {
    match b {
        0 => Err(PathError::Nul),
        b if b < 0x20 || b == 0x7f => Err(PathError::ControlCharacter),
        b'\\' => Err(PathError::Backslash),
        b if !b.is_ascii() => Err(PathError::NonAscii),
        b if is_plain(b) => Ok(()),
        b => Err(PathError::InvalidCharacter(char::from(b))),
    }
}

/// RFC 3986 `unreserved`: the characters whose escapes are decoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `%`: what a segment may hold unescaped.
fn is_plain(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn is_dot(segment: &str) -> bool {
    segment == "." || segment == ".."
}

/// `..;x` or `..%3Bx` (escapes are upper-case by now): servers that strip
/// path parameters (Tomcat, Jetty, Spring) would see a dot segment the
/// allow-list never did.
fn has_dot_parameter(segment: &str) -> bool {
    let semicolon = segment.find(';');
    let escaped = segment.find("%3B");
    let cut = match (semicolon, escaped) {
        (Some(s), Some(e)) => Some(s.min(e)),
        (s, e) => s.or(e),
    };
    cut.is_some_and(|cut| is_dot(&segment[..cut]))
}

/// Checks that runs of escaped bytes at or above 0x80 are well-formed UTF-8
/// (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
#[derive(Default)]
struct Utf8Run {
    /// Continuation bytes still expected.
    pending: u8,
    /// The range the next continuation byte must fall in.
    low: u8,
    high: u8,
}

impl Utf8Run {
    fn escaped(&mut self, b: u8) -> Result<(), PathError> {
        if self.pending > 0 {
            if !(self.low..=self.high).contains(&b) {
                return Err(PathError::InvalidUtf8);
            }
            self.pending -= 1;
            (self.low, self.high) = (0x80, 0xbf);
            return Ok(());
        }
        let (pending, low, high) = match b {
            0x00..=0x7f => return Ok(()),
            0xc2..=0xdf => (1, 0x80, 0xbf),
            0xe0 => (2, 0xa0, 0xbf),
            0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
            0xed => (2, 0x80, 0x9f),
            0xf0 => (3, 0x90, 0xbf),
            0xf1..=0xf3 => (3, 0x80, 0xbf),
            0xf4 => (3, 0x80, 0x8f),
            _ => return Err(PathError::InvalidUtf8),
        };
        *self = Utf8Run { pending, low, high };
        Ok(())
    }

    /// Something other than an escape follows: no sequence may be cut short.
    fn end(&self) -> Result<(), PathError> {
        if self.pending > 0 {
            Err(PathError::InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

/// Panics unless `out`, what [`normalize_path`] made of `raw`, has every
/// property an accepted path must have. One definition for the unit tests
/// and the fuzz target (`proxy/fuzz/fuzz_targets/normalize_path.rs`).
#[doc(hidden)]
pub fn assert_normalized(raw: &str, out: &str) {
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
        assert!(!is_unreserved(decoded), "{raw:?} -> {out:?}");
    }
    assert_eq!(
        normalize_path(out).as_deref(),
        Ok(out),
        "not idempotent: {raw:?} -> {out:?}"
    );
    // The allocation-free shortcut never disagrees with the full rewrite.
    if is_normal(raw) {
        assert_eq!(rewrite(raw).as_deref(), Ok(raw));
    }
}

#[cfg(test)]
mod tests;
