//! A certificate signing request as a sidecar sends it in `Certify` (before
//! it has a certificate): refused with an error or signed, never a panic.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bulkhead_control::ca::{Ca, init_ca};
use bulkhead_proto::SpiffeId;
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bulkhead-fuzz-csr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = init_ca("cluster.local", &dir).expect("a CA");
        let ca = Ca::load(&files.issuer_cert, &files.issuer_key, &files.bundle, "cluster.local")
            .expect("the CA loads");
        let _ = std::fs::remove_dir_all(&dir);
        ca
    })
}

fuzz_target!(|data: &[u8]| {
    let identity = SpiffeId::new("cluster.local", "shop", "web").expect("an identity");
    let _ = ca().certify(data, &identity, Duration::from_secs(3600));
});
