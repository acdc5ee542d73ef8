//! A DNS query to the sidecar's DNS server, as anything on the pod's
//! network may send it: answered, refused or forwarded, never a panic, and
//! every reply at least a DNS header. Also the upstream resolver's answer
//! to a forwarded query (`dns::answers`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_proxy::fuzz::dns_query(data);
    bulkhead_proxy::fuzz::dns_upstream_answer(data);
});
