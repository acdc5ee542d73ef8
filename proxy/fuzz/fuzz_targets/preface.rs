//! The sidecar-to-sidecar preface (proxy/src/wire.rs): any 8 bytes decode
//! or are refused, and whatever decodes encodes back to the same bytes.
#![no_main]

use bulkhead_proxy::wire::{PREFACE_LEN, Preface};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(bytes) = <[u8; PREFACE_LEN]>::try_from(data) else {
        return;
    };
    if let Ok(preface) = Preface::decode(&bytes) {
        assert_eq!(preface.encode(), bytes);
        assert_ne!(preface.port, 0);
    }
});
