//! A bootstrap token as anyone who can reach the control plane's port may
//! send it (`Certify` needs no client certificate): checked against a real
//! issuer, refused with an error or accepted, never a panic. Tokens are
//! checked before the signature for size, structure, base64 and JSON, so
//! those parsers see every input.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use bulkhead_control::ca::{Ca, init_ca};
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bulkhead-fuzz-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = init_ca("cluster.local", &dir).expect("a CA");
        let ca = Ca::load(&files.issuer_cert, &files.issuer_key, &files.bundle, "cluster.local")
            .expect("the CA loads");
        let _ = std::fs::remove_dir_all(&dir);
        ca
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(claims) = ca().verify_token(token, SystemTime::now()) {
        // Only a token this issuer signed gets here: the fuzzer cannot
        // forge one, so reaching this line is a finding.
        panic!("accepted a token nobody minted: {claims:?}");
    }
});
