//! An HTTP/1.1 request head as an app (or a captured connection) sends it
//! to the sidecar's outbound listener: parsed the way hyper parses it
//! (httparse), then everything the sidecar reads from it before routing
//! (gRPC deadline, version pin, retryability, upgrade, path, header
//! stripping), with the invariants `bulkhead_proxy::fuzz` asserts.
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
    bulkhead_proxy::fuzz::http_request_head(req);
});
