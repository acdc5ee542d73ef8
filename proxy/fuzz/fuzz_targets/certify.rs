//! What anyone reaching the control plane's port may send to `Certify`
//! (it needs no client certificate), against a real issuer: a bootstrap
//! token (`Ca::verify_token`: size, structure, base64 and JSON are checked
//! before the signature, so those parsers see every input) when the first
//! byte is even, a certificate signing request (`Ca::certify`) when it is
//! odd. Refused with an error, never a panic; no token the fuzzer makes is
//! accepted.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bulkhead_control::ca::{Ca, init_ca};
use bulkhead_proto::SpiffeId;
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
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        let Ok(token) = std::str::from_utf8(input) else {
            return;
        };
        if let Ok(claims) = ca().verify_token(token, SystemTime::now()) {
            // Only a token this issuer signed gets here, and the fuzzer
            // cannot sign: reaching this line is a finding.
            panic!("accepted a token nobody minted: {claims:?}");
        }
    } else {
        let identity = SpiffeId::new("cluster.local", "shop", "web").expect("an identity");
        let _ = ca().certify(input, &identity, Duration::from_secs(3600));
    }
});
