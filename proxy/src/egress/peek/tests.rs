use std::sync::Arc;

use super::*;

/// The ClientHello a real TLS client (rustls) sends for `server_name`.
fn client_hello(server_name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("client hello");
    out
}

#[test]
fn a_real_client_hello_gives_its_sni_and_every_prefix_asks_for_more() {
    let hello = client_hello("API.Payments.Example");
    assert_eq!(
        parse(&hello),
        Parse::Found(Name::Sni("api.payments.example".into()))
    );
    for cut in 1..hello.len() {
        assert_eq!(parse(&hello[..cut]), Parse::Incomplete, "prefix of {cut}");
    }
}

#[test]
fn a_client_hello_split_over_two_records_is_reassembled() {
    let hello = client_hello("api.payments.example");
    let handshake = &hello[5..];
    let (a, b) = handshake.split_at(40);
    let mut split = Vec::new();
    for part in [a, b] {
        split.extend_from_slice(&[0x16, 0x03, 0x01]);
        split.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
        split.extend_from_slice(part);
    }
    assert_eq!(
        parse(&split),
        Parse::Found(Name::Sni("api.payments.example".into()))
    );
    assert_eq!(parse(&split[..50]), Parse::Incomplete);
}

#[test]
fn tls_without_a_host_name_or_malformed_has_no_name() {
    // rustls sends no SNI for an address.
    assert_eq!(parse(&client_hello("198.18.5.7")), Parse::NoName);
    // A record that is not a ClientHello, one that lies about its length,
    // and an SNI with bytes no host name has.
    assert_eq!(
        parse(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0]),
        Parse::NoName
    );
    let mut hello = client_hello("api.payments.example");
    let at = hello
        .windows(5)
        .position(|w| w == b"api.p")
        .expect("name in hello");
    hello[at] = b'/';
    assert_eq!(parse(&hello), Parse::NoName);
    let mut short = client_hello("api.payments.example");
    short[3] = 0;
    short[4] = 10;
    assert_eq!(parse(&short), Parse::NoName);
}

#[test]
fn http_requests_give_their_host_without_port() {
    let cases = [
        (
            "GET / HTTP/1.1\r\nHost: API.example:8080\r\n\r\n",
            Parse::Found(Name::Host("api.example".into())),
        ),
        (
            "POST /x HTTP/1.1\r\nhost: api.example.\r\nContent-Length: 3\r\n\r\nabc",
            Parse::Found(Name::Host("api.example".into())),
        ),
        ("GET / HTTP/1.1\r\nHost: api.example\r\n", Parse::Incomplete),
        ("GET / HTT", Parse::Incomplete),
        (
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            Parse::NoName,
        ),
        (
            "GET / HTTP/1.1\r\nHost: [fd00::1]:80\r\n\r\n",
            Parse::NoName,
        ),
        ("GET / HTTP/1.1\r\nHost: a.example:x\r\n\r\n", Parse::NoName),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Parse::NoName),
        // Found by the fuzz target: dots that make no labels.
        ("GET / HTTP/1.1\r\nHost: w........\r\n\r\n", Parse::NoName),
        ("GET / HTTP/1.1\r\nHost: a..example\r\n\r\n", Parse::NoName),
        ("GET / HTTP/1.1\r\nHost: .example\r\n\r\n", Parse::NoName),
        ("GET / HTTP/1.1\r\n\r\n", Parse::NoName),
        ("GET / HTTP/1.1\r\nBad Header\r\n\r\n", Parse::NoName),
    ];
    for (text, want) in cases {
        assert_eq!(parse(text.as_bytes()), want, "{text:?}");
    }
}

#[test]
fn other_protocols_have_no_name() {
    // PostgreSQL's startup message, SSH's banner, HTTP/2 prior knowledge.
    assert_eq!(parse(&[0, 0, 0, 8, 4, 210, 22, 47]), Parse::NoName);
    assert_eq!(parse(b"SSH-2.0-OpenSSH_9.6\r\n"), Parse::NoName);
    assert_eq!(parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Parse::NoName);
}

#[test]
fn arbitrary_bytes_never_panic() {
    let hello = client_hello("api.payments.example");
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bytes = hello.clone();
        let len = (seed as usize) % bytes.len();
        bytes.truncate(len.max(1));
        let flips = (seed >> 32) as usize % 4 + 1;
        for k in 0..flips {
            let i = (seed as usize).wrapping_mul(k + 7) % bytes.len();
            bytes[i] ^= (seed >> (8 * k)) as u8;
        }
        let _ = parse(&bytes);
    }
}
