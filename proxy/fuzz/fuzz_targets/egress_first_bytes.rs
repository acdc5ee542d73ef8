//! The first bytes of a captured connection to a destination outside the
//! mesh, as the app (or anything in the pod) sends them: the TLS
//! ClientHello or HTTP/1 head the sidecar reads for an `Egress` host
//! rule's name. Never a panic; a name found is a plain lower-case host name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_proxy::fuzz::egress_first_bytes(data);
});
