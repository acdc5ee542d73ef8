//! `bulkheadctl check`: the preflight a new user runs first. One line per
//! thing that must hold — the control plane answers, its replicas, each
//! store member, the operator's credentials, root and issuer expiry, the
//! webhook's certificate, the sidecars, clock skew — each ok, warn or fail
//! with what to do. Exit 0 only when no line failed.
//!
//! The control plane reports facts (`Admin.GetHealth`, `Admin.GetTrust`);
//! the judging is here, in plain functions of those facts and the time.
//! When the control plane cannot be asked, root and issuer expiry are read
//! from the credentials folder instead (an expired issuer is a likely cause:
//! every certificate it signed, the control plane's own included, dies with
//! it).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulkhead_control::ca::Cert;
use bulkhead_control::trust::expiry::WARN_AHEAD;
use bulkhead_proto::pb;
use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::rollout::{colour, paint};
use crate::rotate::{from_unix, rfc3339};
use crate::settings::{Settings, read};
use crate::{CliError, CliResult, Output};

pub(crate) const EXAMPLES: &str = "\
Examples:
  bulkheadctl check
  bulkheadctl --control https://cp.example:8443 --credentials ./ca check
  bulkheadctl check -o json | jq '.[] | select(.status != \"ok\")'";

/// Clock skew worth a word: logs and metrics stop lining up.
const SKEW_WARN: Duration = Duration::from_secs(5);
/// Clock skew that breaks certificates: the control plane backdates what
/// it issues by a minute, so a clock further apart sees them as not yet
/// valid.
const SKEW_FAIL: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report (`-o json` is a list of these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Line {
    pub(crate) name: String,
    pub(crate) status: Status,
    pub(crate) message: String,
}

fn line(name: impl Into<String>, status: Status, message: impl Into<String>) -> Line {
    Line {
        name: name.into(),
        status,
        message: message.into(),
    }
}

/// Fail once expired, warn within [`WARN_AHEAD`]; `what` names the
/// certificate, `fix` says what to do about it.
pub(crate) fn expiry(
    name: &str,
    what: &str,
    not_after: SystemTime,
    now: SystemTime,
    fix: &str,
) -> Line {
    match not_after.duration_since(now) {
        Err(_) => line(
            name,
            Status::Fail,
            format!("{what} expired at {}: {fix}", rfc3339(not_after)),
        ),
        Ok(left) if left <= WARN_AHEAD => line(
            name,
            Status::Warn,
            format!(
                "{what} expires in {} days, at {}: {fix}",
                left.as_secs() / 86_400,
                rfc3339(not_after)
            ),
        ),
        Ok(left) => line(
            name,
            Status::Ok,
            format!(
                "{what} valid until {} ({} days)",
                rfc3339(not_after),
                left.as_secs() / 86_400
            ),
        ),
    }
}

/// The worst of several lines of one name, as one line.
fn worst(name: &str, lines: Vec<Line>) -> Line {
    let status = lines.iter().map(|l| l.status).max().unwrap_or(Status::Ok);
    let message = lines
        .into_iter()
        .map(|l| l.message)
        .collect::<Vec<_>>()
        .join("; ");
    line(name, status, message)
}

const ROOT_FIX: &str = "rotate the root (bulkheadctl ca rotate prepare, activate, retire)";
const ISSUER_FIX: &str = "give the control plane a new issuer signed by the root (its --issuer-cert/--issuer-key files, read again every --issuer-reload), or rotate (bulkheadctl ca rotate prepare)";

fn root_lines(roots: &[Cert], now: SystemTime) -> Line {
    if roots.is_empty() {
        return line(
            "root-expiry",
            Status::Fail,
            "the trust bundle holds no root",
        );
    }
    worst(
        "root-expiry",
        roots
            .iter()
            .map(|r| {
                let what = format!("root {}", &r.fingerprint[..r.fingerprint.len().min(16)]);
                expiry("root-expiry", &what, r.not_after, now, ROOT_FIX)
            })
            .collect(),
    )
}

/// Each store member, and the store as a whole: a member down is a
/// failure (the next loss may cost the quorum); no quorum stops writes.
pub(crate) fn store_lines(members: &[pb::StoreMember]) -> Vec<Line> {
    let healthy = members.iter().filter(|m| m.healthy).count();
    let quorum = members.len() / 2 + 1;
    let summary = if members.is_empty() {
        line("store", Status::Fail, "the store reports no members")
    } else if healthy < quorum {
        line(
            "store",
            Status::Fail,
            format!(
                "{healthy} of {} members healthy: no quorum, nothing can be written; bring members back (etcd needs {quorum})",
                members.len()
            ),
        )
    } else {
        line(
            "store",
            Status::Ok,
            format!("{healthy} of {} members healthy", members.len()),
        )
    };
    let mut lines = vec![summary];
    for m in members {
        let at = if m.url.is_empty() {
            String::new()
        } else {
            format!(" at {}", m.url)
        };
        lines.push(if m.healthy {
            line(format!("store-member {}", m.name), Status::Ok, format!("{}{at}", m.detail))
        } else {
            line(
                format!("store-member {}", m.name),
                Status::Fail,
                format!(
                    "does not answer{at}: {}; start it again or replace it (etcdctl member list / member remove)",
                    m.detail
                ),
            )
        });
    }
    lines
}

/// Skew between the control plane's clock and ours. `sent` and `received`
/// bracket the call on our clock; the answer's time fell somewhere in
/// between, so half the round trip is uncertainty, never counted as skew.
pub(crate) fn clock_skew(server: SystemTime, sent: SystemTime, received: SystemTime) -> Line {
    let rtt = received.duration_since(sent).unwrap_or_default();
    let ours = sent + rtt / 2;
    let (skew, ahead) = match server.duration_since(ours) {
        Ok(d) => (d, "ahead of"),
        Err(e) => (e.duration(), "behind"),
    };
    let skew = skew.saturating_sub(rtt / 2);
    let about = format!(
        "the control plane's clock is {} ms {ahead} this machine's (±{} ms)",
        skew.as_millis(),
        (rtt / 2).as_millis()
    );
    if skew > SKEW_FAIL {
        line(
            "clock-skew",
            Status::Fail,
            format!(
                "{about}: certificates it issues look not yet valid or already expired; sync both clocks (NTP)"
            ),
        )
    } else if skew > SKEW_WARN {
        line(
            "clock-skew",
            Status::Warn,
            format!("{about}: sync both clocks (NTP)"),
        )
    } else {
        line("clock-skew", Status::Ok, about)
    }
}

fn webhook_line(w: &pb::WebhookHealth, now: SystemTime) -> Line {
    if !w.served {
        return if w.kubernetes {
            line(
                "webhook",
                Status::Warn,
                "this replica verifies Kubernetes tokens but serves no admission webhook: pods are not injected; start it with --webhook (the chart does)",
            )
        } else {
            line(
                "webhook",
                Status::Ok,
                "not served (no --webhook): outside Kubernetes, add sidecars with bulkheadctl inject or by hand",
            )
        };
    }
    let not_after = from_unix(w.not_after_unix);
    if w.not_after_unix == 0 {
        return line(
            "webhook",
            Status::Fail,
            "served, but its certificate does not parse",
        );
    }
    if w.self_managed {
        // Renewed at about 70 % of its life: past 80 %, renewal is failing.
        let life = not_after
            .duration_since(from_unix(w.not_before_unix))
            .unwrap_or_default();
        let left = not_after.duration_since(now);
        let fix = "the replica cannot renew it: see its log (an issuer it cannot sign with?)";
        return match left {
            Err(_) => line(
                "webhook",
                Status::Fail,
                format!("its certificate expired at {}: {fix}", rfc3339(not_after)),
            ),
            Ok(left) if left < life / 5 => line(
                "webhook",
                Status::Warn,
                format!(
                    "its certificate is past its renewal time, expires at {}: {fix}",
                    rfc3339(not_after)
                ),
            ),
            Ok(_) => line(
                "webhook",
                Status::Ok,
                format!(
                    "served; its certificate (renewed by the replica) is valid until {}",
                    rfc3339(not_after)
                ),
            ),
        };
    }
    let mut l = expiry(
        "webhook",
        "its certificate (--webhook-cert)",
        not_after,
        now,
        "renew the files (cert-manager, or your own); the replica reads them again when they change",
    );
    if l.status == Status::Ok {
        l.message = format!("served; {}", l.message);
    }
    l
}

fn sidecars_line(h: &pb::Health) -> Line {
    let mesh = format!(
        "{} endpoints registered in the mesh; {} sidecars watch replica {}",
        h.registered_endpoints, h.watchers, h.replica
    );
    if h.watchers_behind > 0 {
        line(
            "sidecars",
            Status::Warn,
            format!(
                "{mesh}, {} of them on an old config (not reading their updates): look at those sidecars' logs and bulkhead_watch_subscribers",
                h.watchers_behind
            ),
        )
    } else {
        line(
            "sidecars",
            Status::Ok,
            format!("{mesh}, all on the latest config"),
        )
    }
}

fn replicas_line(h: &pb::Health) -> Line {
    if h.replicas.is_empty() {
        return line(
            "replicas",
            Status::Warn,
            "no replica has noted itself in the store yet (each does within seconds of starting); run check again",
        );
    }
    line(
        "replicas",
        Status::Ok,
        format!("{} live: {}", h.replicas.len(), h.replicas.join(", ")),
    )
}

fn parse_pem(path: &std::path::Path) -> Result<Vec<Cert>, String> {
    let what = path.display().to_string();
    let pem = read(path).map_err(|e| e.message)?;
    let ders = bulkhead_tls::certs_from_pem(&pem, &what).map_err(|e| e.to_string())?;
    ders.into_iter()
        .map(|der| {
            Cert::parse(CertificateDer::from(der.to_vec()), &what).map_err(|e| e.to_string())
        })
        .collect()
}

/// What the credentials folder holds: the roots of bundle.crt and the
/// chain of operator.crt (leaf, issuer).
struct Local {
    roots: Vec<Cert>,
    operator: Vec<Cert>,
}

fn local(dir: &std::path::Path) -> Result<Local, Line> {
    let fail = |e: String| {
        line(
            "credentials",
            Status::Fail,
            format!(
                "{e}: point --credentials (BULKHEAD_CREDENTIALS) at the folder bulkheadctl ca init wrote"
            ),
        )
    };
    Ok(Local {
        roots: parse_pem(&dir.join("bundle.crt")).map_err(fail)?,
        operator: parse_pem(&dir.join("operator.crt")).map_err(fail)?,
    })
}

fn credentials_line(local: &Local, now: SystemTime) -> Line {
    let Some(leaf) = local.operator.first() else {
        return line(
            "credentials",
            Status::Fail,
            "operator.crt holds no certificate",
        );
    };
    let chained = local.operator.windows(2).all(|w| w[0].is_signed_by(&w[1]))
        && local.operator.last().is_some_and(|top| {
            local
                .roots
                .iter()
                .any(|r| top.is_signed_by(r) || r.der == top.der)
        });
    if !chained {
        return line(
            "credentials",
            Status::Fail,
            "operator.crt does not chain to a root of bundle.crt: take both from the same CA folder (after a root rotation, the new operator.crt and bundle.crt)",
        );
    }
    expiry(
        "credentials",
        &format!("the operator certificate ({})", leaf.subject),
        leaf.not_after,
        now,
        "make a new one with the CA (bulkheadctl ca init writes one; ca rotate prepare writes the next)",
    )
}

/// The issuer a certificate chain names (its second certificate).
fn issuer_from_files(local: &Local, now: SystemTime) -> Line {
    match local.operator.get(1) {
        Some(issuer) => {
            let mut l = expiry(
                "issuer-expiry",
                "the issuer (in operator.crt)",
                issuer.not_after,
                now,
                ISSUER_FIX,
            );
            l.message.push_str(
                " [read from the credentials folder: the control plane could not be asked]",
            );
            l
        }
        None => line(
            "issuer-expiry",
            Status::Warn,
            "unknown: the control plane could not be asked and operator.crt names no issuer",
        ),
    }
}

/// Why a call failed, as the user should read it: the innermost causes.
fn causes(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn unreachable(settings: &Settings, status: &tonic::Status) -> Line {
    let why = causes(status);
    let hint = if why.contains("xpired") {
        "a certificate in the handshake has expired (the control plane's own is signed by the issuer: see issuer-expiry)"
    } else {
        "is it running and listening there? (bulkhead-control --listen; in Kubernetes: kubectl -n bulkhead get pods, or port-forward 8443)"
    };
    line(
        "control-plane",
        Status::Fail,
        format!(
            "cannot reach the control plane at {} (--control or BULKHEAD_CONTROL): {why}; {hint}",
            settings.control
        ),
    )
}

/// Every line, in the order they are shown.
async fn lines(settings: &Settings) -> Vec<Line> {
    let now = SystemTime::now();
    let dir = match settings.credentials_dir() {
        Ok(dir) => dir,
        Err(e) => return vec![line("credentials", Status::Fail, e.message.clone())],
    };
    let local = match local(dir) {
        Ok(l) => l,
        Err(l) => return vec![l],
    };
    let credentials = credentials_line(&local, now);
    let mut client = match crate::ops::client(settings) {
        Ok(c) => c,
        Err(e) => {
            return vec![
                credentials,
                line("control-plane", Status::Fail, e.message.clone()),
            ];
        }
    };
    let sent = SystemTime::now();
    let started = Instant::now();
    let answer = client.get_health(pb::GetHealthRequest {}).await;
    let received = SystemTime::now();
    let health = match answer {
        Ok(h) => h.into_inner(),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ) =>
        {
            return vec![
                line(
                    "control-plane",
                    Status::Ok,
                    format!("answered at {}", settings.control),
                ),
                line(
                    "credentials",
                    Status::Fail,
                    format!(
                        "refused: {}; use the operator.crt of the CA the control plane trusts, or add its identity to bulkhead-control --operators",
                        status.message()
                    ),
                ),
            ];
        }
        Err(status) => {
            return vec![
                unreachable(settings, &status),
                credentials,
                root_lines(&local.roots, now),
                issuer_from_files(&local, now),
            ];
        }
    };
    let mut out = vec![
        line(
            "control-plane",
            Status::Ok,
            format!(
                "replica {} (version {}) answered at {} in {} ms",
                health.replica,
                health.version,
                settings.control,
                started.elapsed().as_millis()
            ),
        ),
        replicas_line(&health),
    ];
    out.extend(store_lines(&health.store_members));
    out.push(credentials);
    match crate::rotate::report(&mut client).await {
        Ok(trust) => {
            out.push(root_lines(&trust.roots, now));
            out.push(expiry(
                "issuer-expiry",
                "the issuer",
                trust.issuer.not_after,
                now,
                ISSUER_FIX,
            ));
        }
        Err(e) => out.push(line(
            "issuer-expiry",
            Status::Fail,
            format!("cannot read the trust in force: {}", e.message.clone()),
        )),
    }
    out.push(webhook_line(&health.webhook.unwrap_or_default(), now));
    out.push(sidecars_line(&health));
    out.push(clock_skew(from_unix_ms(health.now_unix_ms), sent, received));
    out
}

fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn table(lines: &[Line], colour: bool) -> String {
    let width = lines.iter().map(|l| l.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for l in lines {
        let (word, code) = match l.status {
            Status::Ok => ("ok  ", "32"),
            Status::Warn => ("warn", "33"),
            Status::Fail => ("fail", "31"),
        };
        let word = paint(word, code, colour);
        out.push_str(&format!("{word}  {:<width$}  {}\n", l.name, l.message));
    }
    out
}

pub(crate) async fn run(settings: &Settings, output: Output) -> CliResult {
    let lines = lines(settings).await;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&lines).unwrap_or_default()
        ),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&lines).unwrap_or_default()),
        Output::Table | Output::Wide => print!("{}", table(&lines, colour())),
    }
    let failed = lines.iter().filter(|l| l.status == Status::Fail).count();
    if failed > 0 {
        return Err(CliError::failure(format!("{failed} check(s) failed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
