//! An HTTP/1.1 request head as anyone on the internet sends it to a
//! gateway: parsed the way hyper parses it (httparse), then everything the
//! gateway reads from it before a token is verified (the bearer token and
//! its JOSE header, the path, the host, `?fields=`, and the claims header
//! as a target's sidecar reads it from a gateway), with the invariants
//! `bulkhead_proxy::fuzz` asserts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let mut req = http::Request::builder().method(method).uri(path);
    req = req.version(match parsed.version {
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    });
    for h in parsed.headers.iter() {
        req = req.header(h.name, h.value);
    }
    let Ok(req) = req.body(()) else {
        return;
    };
    bulkhead_proxy::fuzz::gateway_request_head(req);
});
