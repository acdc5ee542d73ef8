//! Reading the name a captured connection is for, from its first bytes:
//! the SNI of a TLS ClientHello, or the `Host` of an HTTP/1 request head.
//!
//! The bytes are read (not left in the socket) into a buffer of at most
//! [`MAX_PEEK`] and replayed to the destination once the connection is
//! allowed. Reading stops as soon as the name is known, when the bytes
//! cannot be TLS or HTTP/1, at [`MAX_PEEK`], or at [`PEEK_TIMEOUT`]. The
//! parsers never panic and never trust a length they have not bounded.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Most bytes read before giving up on a name (a ClientHello with large
/// key shares is a few KiB; a request head rarely more).
pub(crate) const MAX_PEEK: usize = 16 * 1024;

/// How long a client may take to send its ClientHello or request head.
pub(crate) const PEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest name accepted (RFC 1035, with a trailing dot).
const MAX_NAME: usize = 254;

/// The name a connection asks for, lower case, without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Name {
    Sni(String),
    Host(String),
}

impl Name {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Name::Sni(n) | Name::Host(n) => n,
        }
    }
}

/// What the first bytes said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peeked {
    Name(Name),
    /// TLS without SNI, HTTP without a usable `Host`, another protocol, or
    /// more than [`MAX_PEEK`] bytes without an answer.
    NoName,
    /// The client sent too little within [`PEEK_TIMEOUT`], or closed.
    Timeout,
}

/// One parse of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
enum Parse {
    Found(Name),
    NoName,
    /// More bytes may tell.
    Incomplete,
}

/// Reads from `tcp` into `buf` until the name is known (see the module
/// docs for the bounds).
pub(crate) async fn read_name(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Peeked {
    let reading = async {
        let mut chunk = [0u8; 4096];
        loop {
            let room = MAX_PEEK.saturating_sub(buf.len()).min(chunk.len());
            if room == 0 {
                return Peeked::NoName;
            }
            match tcp.read(&mut chunk[..room]).await {
                Ok(0) | Err(_) => return Peeked::Timeout,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            match parse(buf) {
                Parse::Found(name) => return Peeked::Name(name),
                Parse::NoName => return Peeked::NoName,
                Parse::Incomplete => {}
            }
        }
    };
    tokio::time::timeout(PEEK_TIMEOUT, reading)
        .await
        .unwrap_or(Peeked::Timeout)
}

/// The name in a connection's first bytes, if they hold a complete one
/// (for the fuzz target).
pub(crate) fn name_in(buf: &[u8]) -> Option<Name> {
    match parse(buf) {
        Parse::Found(name) => Some(name),
        Parse::NoName | Parse::Incomplete => None,
    }
}

fn parse(buf: &[u8]) -> Parse {
    match buf.first() {
        None => Parse::Incomplete,
        // A TLS handshake record.
        Some(0x16) => client_hello_sni(buf),
        Some(b) if b.is_ascii_uppercase() => http_host(buf),
        Some(_) => Parse::NoName,
    }
}

/// The SNI host name of the ClientHello in `buf`, which may span several
/// handshake records.
fn client_hello_sni(buf: &[u8]) -> Parse {
    // Reassemble the handshake bytes from consecutive records.
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            break;
        }
        if rest[0] != 0x16 || rest[1] != 0x03 {
            return Parse::NoName;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16 * 1024 + 256 {
            return Parse::NoName;
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            handshake.extend_from_slice(&rest[5..]);
            break;
        };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            let want = 4 + u24(&handshake[1..4]);
            if handshake.len() >= want {
                break;
            }
        }
    }
    if handshake.len() < 4 {
        return Parse::Incomplete;
    }
    if handshake[0] != 0x01 {
        return Parse::NoName;
    }
    let body_len = u24(&handshake[1..4]);
    if body_len > MAX_PEEK {
        return Parse::NoName;
    }
    let Some(body) = handshake.get(4..4 + body_len) else {
        return Parse::Incomplete;
    };
    match sni_of_client_hello(body) {
        Some(Some(name)) => Parse::Found(Name::Sni(name)),
        _ => Parse::NoName,
    }
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A cursor over a ClientHello body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

/// `None`: malformed; `Some(None)`: well formed, no host name.
fn sni_of_client_hello(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let session = r.u8()?;
    r.take(session)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = r.u8()?;
    r.take(compression)?;
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let list_len = list.u16()?;
        let mut names = Reader(list.take(list_len)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let len = names.u16()?;
            let name = names.take(len)?;
            if name_type == 0 {
                return Some(clean_name(name));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// The `Host` of a complete HTTP/1 request head.
fn http_host(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => Parse::Incomplete,
        Err(_) => Parse::NoName,
        Ok(httparse::Status::Complete(_)) => {
            let mut hosts = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"));
            match (hosts.next(), hosts.next()) {
                // One Host, or none: never a choice between two.
                (Some(host), None) => match strip_port(host.value).and_then(clean_name) {
                    Some(name) => Parse::Found(Name::Host(name)),
                    None => Parse::NoName,
                },
                _ => Parse::NoName,
            }
        }
    }
}

/// `name[:port]` → `name`; an IPv6 literal (`[...]`) is no name.
fn strip_port(value: &[u8]) -> Option<&[u8]> {
    if value.first() == Some(&b'[') {
        return None;
    }
    match value.iter().rposition(|b| *b == b':') {
        Some(i) if value[i + 1..].iter().all(u8::is_ascii_digit) => Some(&value[..i]),
        Some(_) => None,
        None => Some(value),
    }
}

/// A host name as rules hold them: lower case, no trailing dot, labels of
/// 1-63 letters, digits and '-'. Anything else is no name.
fn clean_name(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    let label_ok = |l: &[u8]| {
        !l.is_empty() && l.len() <= 63 && l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    if raw.is_empty() || raw.len() > MAX_NAME || !raw.split(|b| *b == b'.').all(label_ok) {
        return None;
    }
    Some(String::from_utf8_lossy(raw).to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
