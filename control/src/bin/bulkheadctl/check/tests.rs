use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn expiry_warns_within_thirty_days_and_fails_once_past() {
    let now = at(1_800_000_000);
    let judge =
        |left: Duration| expiry("issuer-expiry", "the issuer", now + left, now, "fix").status;
    assert_eq!(judge(31 * DAY), Status::Ok);
    assert_eq!(judge(30 * DAY), Status::Warn);
    assert_eq!(judge(Duration::from_secs(1)), Status::Warn);
    let expired = expiry("issuer-expiry", "the issuer", now - DAY, now, "rotate it");
    assert_eq!(expired.status, Status::Fail);
    assert!(expired.message.contains("expired") && expired.message.ends_with("rotate it"));
    assert_eq!(
        expiry("x", "y", now, now, "z").status,
        Status::Warn,
        "at the instant itself: not yet expired"
    );
}

fn member(name: &str, healthy: bool) -> pb::StoreMember {
    pb::StoreMember {
        name: name.into(),
        url: format!("http://{name}:2379"),
        healthy,
        detail: if healthy {
            "etcd 3.5, follower".into()
        } else {
            "connection refused".into()
        },
    }
}

fn statuses(lines: &[Line]) -> Vec<(&str, Status)> {
    lines.iter().map(|l| (l.name.as_str(), l.status)).collect()
}

#[test]
fn a_member_down_fails_its_line_and_a_lost_quorum_fails_the_store() {
    let one_down = store_lines(&[member("m0", true), member("m1", false), member("m2", true)]);
    assert_eq!(
        statuses(&one_down),
        [
            ("store", Status::Ok),
            ("store-member m0", Status::Ok),
            ("store-member m1", Status::Fail),
            ("store-member m2", Status::Ok),
        ]
    );
    assert!(
        one_down[2].message.contains("http://m1:2379")
            && one_down[2].message.contains("connection refused")
    );
    let two_down = store_lines(&[member("m0", true), member("m1", false), member("m2", false)]);
    assert_eq!(two_down[0].status, Status::Fail);
    assert!(two_down[0].message.contains("no quorum"));
    assert_eq!(store_lines(&[])[0].status, Status::Fail);
}

#[test]
fn clock_skew_allows_for_the_round_trip() {
    let sent = at(1_800_000_000);
    let received = sent + Duration::from_secs(2);
    // Anywhere inside the call is no skew at all.
    assert_eq!(
        clock_skew(sent + Duration::from_millis(100), sent, received).status,
        Status::Ok
    );
    assert_eq!(
        clock_skew(sent + Duration::from_secs(10), sent, received).status,
        Status::Warn
    );
    assert_eq!(
        clock_skew(sent - Duration::from_secs(10), sent, received).status,
        Status::Warn
    );
    let far = clock_skew(sent + Duration::from_secs(120), sent, received);
    assert_eq!(far.status, Status::Fail);
    assert!(far.message.contains("ahead of"));
    assert!(
        clock_skew(sent - Duration::from_secs(120), sent, received)
            .message
            .contains("behind")
    );
}

#[test]
fn a_self_managed_webhook_certificate_warns_once_past_its_renewal_time() {
    let now = at(1_800_000_000);
    let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let served = |from: SystemTime, to: SystemTime| pb::WebhookHealth {
        served: true,
        self_managed: true,
        not_before_unix: unix(from),
        not_after_unix: unix(to),
        kubernetes: true,
    };
    assert_eq!(
        webhook_line(&served(now - DAY, now + 9 * DAY), now).status,
        Status::Ok
    );
    assert_eq!(
        webhook_line(&served(now - 9 * DAY, now + DAY), now).status,
        Status::Warn
    );
    assert_eq!(
        webhook_line(&served(now - 9 * DAY, now - DAY), now).status,
        Status::Fail
    );
    let files = pb::WebhookHealth {
        self_managed: false,
        ..served(now - DAY, now + 10 * DAY)
    };
    assert_eq!(
        webhook_line(&files, now).status,
        Status::Warn,
        "files: 30 days ahead"
    );
    let absent = |kubernetes| {
        webhook_line(
            &pb::WebhookHealth {
                kubernetes,
                ..Default::default()
            },
            now,
        )
        .status
    };
    assert_eq!(
        absent(false),
        Status::Ok,
        "outside Kubernetes nobody needs it"
    );
    assert_eq!(absent(true), Status::Warn);
}

#[test]
fn sidecars_on_old_configs_warn() {
    let health = |behind| pb::Health {
        replica: "cp-0".into(),
        watchers: 3,
        watchers_behind: behind,
        registered_endpoints: 3,
        ..Default::default()
    };
    assert_eq!(sidecars_line(&health(0)).status, Status::Ok);
    let l = sidecars_line(&health(1));
    assert_eq!(l.status, Status::Warn);
    assert!(l.message.contains("1 of them on an old config"));
}

#[test]
fn json_is_a_list_of_name_status_message() {
    let json = serde_json::to_value(vec![line("clock-skew", Status::Warn, "m")]).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"name": "clock-skew", "status": "warn", "message": "m"}])
    );
    let t = table(
        &[line("a", Status::Ok, "x"), line("store", Status::Fail, "y")],
        false,
    );
    assert_eq!(t, "ok    a      x\nfail  store  y\n");
}
