//! Sticky weighted choices (`TrafficSplit` `stickiness`): the roll is a
//! hash of a key — the calling workload's SPIFFE ID, or a request header's
//! value — instead of a random number, so one key lands on the same
//! version request after request, and on every sidecar (a fixed hash, not
//! std's per-process `RandomState`).
//!
//! The roll, exactly: FNV-1a 64 over the key's bytes, a 0 byte, the
//! split's namespace, a 0 byte and its service name, through SplitMix64's
//! finalizer (FNV's low bits mix poorly). The service is in the hash so a
//! caller's luck is drawn afresh per service: the callers in one service's
//! canary are not the same ones in every other's.
//!
//! The caller's part is hashed once per sidecar ([`StickyKey`] holds
//! FNV's state after the key); a request hashes only the service name.

use super::remix;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A stickiness key, hashed: the same bytes give the same rolls in every
/// process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StickyKey(u64);

impl StickyKey {
    pub(crate) fn new(key: &[u8]) -> Self {
        Self(fnv1a(FNV_OFFSET, key))
    }

    /// The roll this key always gets for the split of `namespace/service`.
    pub(crate) fn roll(self, namespace: &str, service: &str) -> u64 {
        let mut state = fnv1a(self.0, &[0]);
        state = fnv1a(state, namespace.as_bytes());
        state = fnv1a(state, &[0]);
        remix(fnv1a(state, service.as_bytes()))
    }
}

/// FNV-1a 64, continued from `state` over `bytes`.
fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        // From the FNV authors' test suite.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn rolls_are_fixed_by_key_and_service() {
        let caller = StickyKey::new(b"spiffe://cluster.local/ns/shop/sa/web");
        let again = StickyKey::new(b"spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(caller.roll("shop", "cart"), again.roll("shop", "cart"));
        assert_ne!(caller.roll("shop", "cart"), caller.roll("shop", "pay"));
        assert_ne!(caller.roll("shop", "cart"), caller.roll("shop2", "cart"));
        // Computed apart from this code (FNV-1a over b"user-42\0shop\0cart",
        // then SplitMix64's finalizer): every sidecar, of every build, must
        // agree, or callers would move when their sidecar is upgraded.
        let roll = StickyKey::new(b"user-42").roll("shop", "cart");
        assert_eq!(roll, 0x308e_8bce_cad1_0e52);
        // Point 18 of 100: stable while its weight is above 18.
        assert_eq!((u128::from(roll) * 100) >> 64, 18);
    }
}
