//! Tests of the trust record: its stages, its encoding, and what it refuses.

use super::*;
use crate::ca::test_support::{TwoCas, certs_in, trust_record as record};

fn two_cas() -> TwoCas {
    TwoCas::new("example.org")
}

fn first(path: &std::path::Path) -> CertificateDer<'static> {
    certs_in(path).remove(0)
}

fn cert(path: &std::path::Path) -> Cert {
    Cert::parse(first(path), "test").unwrap()
}

fn round_trip(r: &TrustRecord) {
    assert_eq!(&TrustRecord::decode(&r.encode()).unwrap(), r);
}

#[test]
fn a_rotation_walks_its_stages_and_survives_the_store() {
    let cas = two_cas();
    let start = record(&cas.old);
    assert_eq!(start.stage(), Stage::None);
    assert_eq!(start.issuer().root, start.roots()[0].fingerprint);
    round_trip(&start);
    assert!(
        start.activated(SystemTime::now()).is_none(),
        "nothing prepared"
    );
    assert!(start.retired().is_none());

    let prepared = start
        .prepared(cert(&cas.new.root_cert), cert(&cas.new.issuer_cert))
        .unwrap();
    assert_eq!(prepared.stage(), Stage::Prepared);
    assert_eq!(prepared.roots().len(), 2);
    assert_eq!(
        prepared.issuer(),
        start.issuer(),
        "still signing with the old"
    );
    let Rotation::Prepared { next } = prepared.rotation() else {
        panic!("{prepared:?}")
    };
    assert_eq!(next.root, prepared.roots()[1].fingerprint);
    assert_eq!(prepared.issuers().count(), 2);
    assert_eq!(prepared.token_issuers().count(), 1);
    round_trip(&prepared);

    let renew_by = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let activated = prepared.activated(renew_by).unwrap();
    assert_eq!(activated.stage(), Stage::Activated);
    assert_eq!(activated.issuer(), next);
    assert_eq!(
        activated
            .token_issuers()
            .map(|i| &i.cert)
            .collect::<Vec<_>>(),
        [&next.cert, &start.issuer().cert],
        "the old issuer's tokens are accepted until retire"
    );
    let pushed = activated.to_pb();
    assert_eq!(pushed.renew_by_unix, 2_000_000_000);
    assert_eq!(pushed.issuer_sha256, next.cert.fingerprint);
    assert_eq!(pushed.roots_der.len(), 2);
    round_trip(&activated);

    let retired = activated.retired().unwrap();
    assert_eq!(retired.stage(), Stage::None);
    assert_eq!(retired.roots(), &prepared.roots()[1..]);
    assert_eq!(retired.issuer(), next);
    assert_eq!(retired.to_pb().renew_by_unix, 0);
    round_trip(&retired);
}

#[test]
fn refuses_issuers_no_root_signed_and_roots_that_are_not_cas() {
    let cas = two_cas();
    let err = TrustRecord::new(certs_in(&cas.old.bundle), first(&cas.new.issuer_cert)).unwrap_err();
    assert!(matches!(err, RecordError::Unanchored { .. }), "{err}");
    // A next issuer must be signed by the root that joins with it.
    let start = record(&cas.old);
    let err = start
        .prepared(cert(&cas.new.root_cert), cert(&cas.old.issuer_cert))
        .unwrap_err();
    assert!(err.to_string().contains("new root"), "{err}");
    let operator = first(&cas.old.operator_cert);
    let err = TrustRecord::new(vec![operator.clone()], first(&cas.old.issuer_cert)).unwrap_err();
    assert!(err.to_string().contains("root #1"), "{err}");
    let err = TrustRecord::new(certs_in(&cas.old.bundle), operator).unwrap_err();
    assert!(err.to_string().contains("issuer"), "{err}");
    assert_eq!(
        TrustRecord::new(vec![], first(&cas.old.issuer_cert)).unwrap_err(),
        RecordError::RootCount(0)
    );
}

#[test]
fn a_damaged_record_is_refused_with_what_is_wrong() {
    let cas = two_cas();
    let good = String::from_utf8(record(&cas.old).encode()).unwrap();
    for (bad, says) in [
        ("not json".to_owned(), "not valid JSON"),
        (good.replace("\"v\":1", "\"v\":2"), "version 2"),
        (
            good.replace("\"stage\":\"none\"", "\"stage\":\"prepared\""),
            "needs next",
        ),
        (
            good.replace("\"issuer\":\"", "\"issuer\":\"!"),
            "not base64",
        ),
    ] {
        let err = TrustRecord::decode(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}
