//! Tests of the rotation stages: order, repeats, and what each refuses.

use super::*;
use crate::ca::test_support::{TwoCas, certs_in};
use crate::ca::{CaFiles, Stage};

fn two_cas() -> TwoCas {
    TwoCas::new("example.org")
}

fn first(path: &std::path::Path) -> Vec<u8> {
    certs_in(path).remove(0).to_vec()
}

fn start(ca: &CaFiles) -> TrustRecord {
    crate::ca::test_support::trust_record(ca)
}

fn written(step: Result<Step, RotationError>) -> TrustRecord {
    match step {
        Ok(Step::Write(record)) => *record,
        other => panic!("expected a record to write, got {other:?}"),
    }
}

const MINUTE: Duration = Duration::from_secs(60);

fn replicas(issuers: &[&[&str]]) -> Vec<(String, Vec<String>)> {
    issuers
        .iter()
        .enumerate()
        .map(|(i, fps)| {
            (
                format!("cp-{i}"),
                fps.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn the_stages_run_in_order_and_each_says_what_is_missing() {
    let cas = two_cas();
    let now = SystemTime::now();
    let none = start(&cas.old);
    let (root, issuer) = (first(&cas.new.root_cert), first(&cas.new.issuer_cert));

    let err = activate(&none, MINUTE, &[], now).unwrap_err();
    assert!(err.to_string().contains("ca rotate prepare"), "{err}");
    let err = retire(&none, &[]).unwrap_err();
    assert!(err.to_string().contains("ca rotate prepare"), "{err}");

    let prepared = written(prepare(&none, &root, &issuer, "example.org", now));
    assert_eq!(prepared.stage(), Stage::Prepared);
    assert_eq!(
        prepare(&prepared, &root, &issuer, "example.org", now),
        Ok(Step::AlreadyDone),
        "a repeat of prepare changes nothing"
    );
    let err = prepare(
        &prepared,
        &first(&cas.old.root_cert),
        &issuer,
        "example.org",
        now,
    )
    .unwrap_err();
    assert!(err.to_string().contains("ca rotate activate"), "{err}");
    let err = retire(&prepared, &[]).unwrap_err();
    assert_eq!(err, RotationError::NotActivated);
    assert!(err.to_string().contains("ca rotate activate"), "{err}");

    let next = bulkhead_tls::fingerprint(&issuer);
    let old = prepared.issuer().cert.fingerprint.clone();
    // A replica without the next issuer's key blocks activation, by name.
    let err = activate(
        &prepared,
        MINUTE,
        &replicas(&[&[&old, &next], &[&old]]),
        now,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("cp-1") && !err.to_string().contains("cp-0"),
        "{err}"
    );
    assert!(matches!(
        activate(&prepared, Duration::ZERO, &replicas(&[&[&next]]), now),
        Err(RotationError::RenewWithin(_))
    ));
    let activated = written(activate(
        &prepared,
        MINUTE,
        &replicas(&[&[&old, &next]]),
        now,
    ));
    assert_eq!(activated.issuer().cert.fingerprint, next);
    assert!(matches!(
        activated.rotation(),
        Rotation::Activated { renew_by, .. } if *renew_by == now + MINUTE
    ));
    assert_eq!(
        activate(&activated, MINUTE, &[], now),
        Ok(Step::AlreadyDone)
    );
    let err = prepare(&activated, &root, &issuer, "example.org", now).unwrap_err();
    assert!(err.to_string().contains("ca rotate retire"), "{err}");

    // Retire waits for every endpoint, and names who is left.
    let new_root = activated.issuer().root.clone();
    let old_root = prepared.issuer().root.clone();
    let endpoints = vec![
        (
            "spiffe://example.org/ns/shop/sa/web".to_owned(),
            new_root.clone(),
        ),
        (
            "spiffe://example.org/ns/shop/sa/cart".to_owned(),
            old_root.clone(),
        ),
        (
            "spiffe://example.org/ns/shop/sa/cart".to_owned(),
            String::new(),
        ),
    ];
    let err = retire(&activated, &endpoints).unwrap_err().to_string();
    assert!(
        err.contains("2 registered endpoint(s)")
            && err.contains("shop/sa/cart (2)")
            && !err.contains("sa/web"),
        "{err}"
    );
    assert!(err.contains(&old_root), "names the old root: {err}");
    let retired = written(retire(&activated, &endpoints[..1]));
    assert_eq!(retired.stage(), Stage::None);
    assert_eq!(retired.roots().len(), 1);
    assert_eq!(retired.roots()[0].fingerprint, new_root);
}

#[test]
fn prepare_refuses_roots_and_issuers_that_would_not_work() {
    let cas = two_cas();
    let now = SystemTime::now();
    let none = start(&cas.old);
    let (root, issuer) = (first(&cas.new.root_cert), first(&cas.new.issuer_cert));
    let cases: [(Vec<u8>, Vec<u8>, &str, &str); 5] = [
        (
            first(&cas.old.root_cert),
            issuer.clone(),
            "example.org",
            "already in the trust bundle",
        ),
        (root.clone(), issuer.clone(), "other.org", "trust domain"),
        (
            issuer.clone(),
            issuer.clone(),
            "example.org",
            "not self-signed",
        ),
        (
            root.clone(),
            first(&cas.old.issuer_cert),
            "example.org",
            "not signed by the new root",
        ),
        (
            root.clone(),
            first(&cas.new.operator_cert),
            "example.org",
            "not a CA",
        ),
    ];
    for (root, issuer, td, says) in cases {
        let err = prepare(&none, &root, &issuer, td, now).unwrap_err();
        assert!(err.to_string().contains(says), "{says}: {err}");
    }
    let later = SystemTime::now() + Duration::from_secs(20 * 365 * 24 * 3600);
    let err = prepare(&none, &root, &issuer, "example.org", later).unwrap_err();
    assert!(err.to_string().contains("not valid now"), "{err}");
}
