//! How big a request (or response) head may be, measured as the HTTP/2
//! peer that receives it measures it, so that the sidecar that sends a
//! head refuses it (431) exactly when the receiving sidecar would.
//!
//! The receiver (h2's decoder) refuses a head in two ways, and only the
//! first keeps the connection: a header list of `--max-header-bytes` or
//! more (RFC 7541 §4.1: name + value + 32 per field, pseudo-headers
//! included) is answered 431 and its stream refused; a header block that
//! takes more than [`max_frames`] frames to carry is taken for a
//! CONTINUATION flood and ends the whole connection. HPACK's Huffman code
//! is up to 30 bits a byte, so a head well inside the first limit (one of
//! bytes above 0x7F) can still break the second: [`Head::fits`]
//! checks both, the second only for heads large enough to reach it.

use http::{HeaderMap, Method, StatusCode};

/// A head as an HTTP/2 peer receives it: pseudo-headers, then fields.
pub(crate) struct Head<'a> {
    pseudo: [(&'static str, &'a [u8]); 5],
    /// How many of `pseudo` are present.
    pseudo_len: usize,
    headers: &'a HeaderMap,
}

/// Frame payload the sender uses before the receiver's SETTINGS arrive,
/// and what sidecars use after (neither raises SETTINGS_MAX_FRAME_SIZE).
const FRAME: usize = 16_384;
/// HPACK's worst case beyond the Huffman code itself, per field: the
/// representation byte, and length prefixes for name and value.
const FIELD_OVERHEAD: usize = 10;

/// The most frames h2 takes for one header block whose list may be
/// `limit` bytes: HEADERS and its CONTINUATIONs (h2's own rule, in
/// `codec/framed_read.rs`: a quarter over what the list needs, at least 5
/// continuations).
fn max_frames(limit: usize) -> usize {
    let needed = (limit / FRAME).max(1);
    let continuations = needed.saturating_add(needed >> 2).max(5);
    continuations + 1
}

/// HPACK's Huffman code lengths in bits (RFC 7541 Appendix B).
const HUFFMAN_BITS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

fn huffman_len(bytes: &[u8]) -> usize {
    let bits: usize = bytes
        .iter()
        .map(|b| usize::from(HUFFMAN_BITS[usize::from(*b)]))
        .sum();
    bits.div_ceil(8)
}

impl<'a> Head<'a> {
    /// A request head as a sidecar sends it: `:method`, `:scheme` (http),
    /// `:authority`, `:path` (and `:protocol` for an extended CONNECT),
    /// then `headers`.
    pub(crate) fn request(
        method: &'a Method,
        authority: &'a str,
        path: &'a str,
        protocol: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> Self {
        Self {
            pseudo: [
                (":method", method.as_str().as_bytes()),
                (":scheme", b"http"),
                (":authority", authority.as_bytes()),
                (":path", path.as_bytes()),
                (":protocol", protocol.unwrap_or_default().as_bytes()),
            ],
            pseudo_len: if protocol.is_some() { 5 } else { 4 },
            headers,
        }
    }

    /// A response head: `:status`, then `headers`.
    pub(crate) fn response(status: &'a StatusCode, headers: &'a HeaderMap) -> Self {
        let none: &[u8] = &[];
        Self {
            pseudo: [
                (":status", status.as_str().as_bytes()),
                ("", none),
                ("", none),
                ("", none),
                ("", none),
            ],
            pseudo_len: 1,
            headers,
        }
    }

    fn pseudo(&self) -> &[(&'static str, &'a [u8])] {
        &self.pseudo[..self.pseudo_len]
    }

    /// The header list size as RFC 7541 §4.1 counts it: name + value + 32
    /// per field, pseudo-headers included.
    pub(crate) fn list_size(&self) -> usize {
        let pseudo: usize = self
            .pseudo()
            .iter()
            .map(|(n, v)| n.len() + v.len() + 32)
            .sum();
        let fields: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        pseudo + fields
    }

    /// Whether a receiver whose limit is `limit` takes this head and keeps
    /// the connection.
    pub(crate) fn fits(&self, limit: usize) -> bool {
        let list = self.list_size();
        if list >= limit {
            return false;
        }
        // Every field's name and value, and 32 each besides: the list size
        // bounds the bytes, and a byte codes in at most 30 bits, so most
        // heads cannot come near the frame budget.
        let fields = self.pseudo_len + self.headers.len();
        let raw = list - 32 * fields;
        let budget = max_frames(limit) * FRAME;
        if raw * 30 / 8 + fields * FIELD_OVERHEAD < budget {
            return true;
        }
        self.encoded_size() < budget
    }

    /// The rare case, out of line: the Huffman-coded size of every name and
    /// value, with the worst overhead per field.
    #[cold]
    fn encoded_size(&self) -> usize {
        let pseudo: usize = self
            .pseudo()
            .iter()
            .map(|(n, v)| huffman_len(n.as_bytes()) + huffman_len(v) + FIELD_OVERHEAD)
            .sum();
        let fields: usize = self
            .headers
            .iter()
            .map(|(n, v)| {
                huffman_len(n.as_str().as_bytes()) + huffman_len(v.as_bytes()) + FIELD_OVERHEAD
            })
            .sum();
        pseudo + fields
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const LIMIT: usize = 64 * 1024;

    fn headers(value: HeaderValue) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-big", value);
        headers
    }

    fn head(headers: &HeaderMap) -> Head<'_> {
        Head::request(&Method::GET, "cart.shop:8080", "/", None, headers)
    }

    #[test]
    fn the_list_size_is_counted_as_rfc_7541_says() {
        let h = headers(HeaderValue::from_static("abc"));
        // x-big: 5 + 3 + 32; the pseudo-headers: (7+3+32) + (7+4+32) +
        // (10+14+32) + (5+1+32).
        assert_eq!(head(&h).list_size(), 40 + 42 + 43 + 56 + 38);
        let status = StatusCode::NOT_FOUND;
        assert_eq!(Head::response(&status, &h).list_size(), 40 + 7 + 3 + 32);
    }

    #[test]
    fn a_head_fits_below_the_limit_and_not_at_it() {
        let small = headers(HeaderValue::from_static("abc"));
        assert!(head(&small).fits(LIMIT));
        let fill = LIMIT - head(&small).list_size() + 3;
        let at = headers(HeaderValue::from_str(&"a".repeat(fill)).unwrap());
        assert_eq!(head(&at).list_size(), LIMIT);
        assert!(
            !head(&at).fits(LIMIT),
            "h2 refuses a list of exactly the limit"
        );
        let below = headers(HeaderValue::from_str(&"a".repeat(fill - 1)).unwrap());
        assert!(head(&below).fits(LIMIT));
    }

    #[test]
    fn a_head_whose_encoding_would_flood_continuations_does_not_fit() {
        // 40 KB of bytes Huffman codes in 26 bits: a list well under 64 KiB
        // that takes about 130 KB on the wire, more than six frames.
        let binary = headers(HeaderValue::from_bytes(&vec![0xfe; 40_000]).unwrap());
        assert!(head(&binary).list_size() < LIMIT);
        assert!(!head(&binary).fits(LIMIT));
        // The same length of plain text fits, and so does a long path.
        let text = headers(HeaderValue::from_str(&"z".repeat(40_000)).unwrap());
        assert!(head(&text).fits(LIMIT));
        let path = format!("/{}", "p".repeat(20_000));
        let long = Head::request(&Method::GET, "cart.shop:8080", &path, None, &text);
        assert!(long.fits(LIMIT));
    }

    #[test]
    fn frames_as_h2_allows_them() {
        assert_eq!(max_frames(16 * 1024), 6);
        assert_eq!(max_frames(64 * 1024), 6);
        assert_eq!(max_frames(256 * 1024), 21);
    }
}
