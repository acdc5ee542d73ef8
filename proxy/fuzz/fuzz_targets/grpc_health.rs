//! The body of an app's gRPC health answer, read by the sidecar when the
//! kubelet probes through `/app-health`: decoded and judged, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulkhead_proxy::fuzz::grpc_health_reply(data);
});
