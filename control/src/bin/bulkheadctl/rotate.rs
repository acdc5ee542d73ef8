//! `ca status`: the trust in force — roots, issuers, a root rotation's
//! stage, how many registered endpoints hold certificates of each root,
//! and which issuers each control-plane replica holds keys for; and `ca
//! rotate prepare|activate|retire`, the stages of a root rotation, each a
//! command of its own that can be run again after an interruption (the
//! files it writes are listed in `bulkhead_control::ca::rotation_files`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_control::ca::Cert;
use bulkhead_control::ca::rotation_files::{self, GivenRoot, NEXT_ISSUER_CERT};
use bulkhead_proto::pb;
use bulkhead_proto::pb::admin_client::AdminClient;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::settings::Settings;
use crate::{CliError, CliResult, Output};

pub(crate) fn client(settings: &Settings) -> Result<AdminClient<Channel>, CliError> {
    let (bundle, slot) = settings.operator_identity()?;
    let channel = bulkhead_tls::channel(&settings.control, &bundle, Some(slot))
        .map_err(|e| CliError::usage(e.to_string()))?;
    Ok(AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// The trust status as a user reads it: certificates parsed, endpoints
/// counted by root.
pub(crate) struct Report {
    pub(crate) stage: String,
    pub(crate) roots: Vec<Cert>,
    pub(crate) issuer: Cert,
    pub(crate) next_issuer: Option<Cert>,
    pub(crate) previous_issuer: Option<Cert>,
    pub(crate) renew_by: Option<SystemTime>,
    pub(crate) endpoints: Vec<pb::EndpointCertificate>,
    pub(crate) signers: Vec<pb::Signer>,
}

fn parse(der: &[u8], what: &str) -> Result<Cert, CliError> {
    Cert::parse(CertificateDer::from(der.to_vec()), what)
        .map_err(|e| CliError::failure(format!("the control plane sent a bad {what}: {e}")))
}

fn optional(der: &[u8], what: &str) -> Result<Option<Cert>, CliError> {
    if der.is_empty() {
        Ok(None)
    } else {
        parse(der, what).map(Some)
    }
}

impl TryFrom<pb::TrustStatus> for Report {
    type Error = CliError;

    fn try_from(status: pb::TrustStatus) -> Result<Self, CliError> {
        Ok(Self {
            roots: status
                .roots_der
                .iter()
                .map(|r| parse(r, "root"))
                .collect::<Result<_, _>>()?,
            issuer: parse(&status.issuer_der, "issuer")?,
            next_issuer: optional(&status.next_issuer_der, "next issuer")?,
            previous_issuer: optional(&status.previous_issuer_der, "previous issuer")?,
            renew_by: (status.renew_by_unix > 0).then(|| from_unix(status.renew_by_unix)),
            stage: status.stage,
            endpoints: status.endpoints,
            signers: status.signers,
        })
    }
}

impl Report {
    /// The fingerprint of the root that signed `issuer`, if one did.
    pub(crate) fn root_of(&self, issuer: &Cert) -> Option<&Cert> {
        self.roots.iter().find(|r| issuer.is_signed_by(r))
    }

    /// Registered endpoints by the root their certificate chains to
    /// (`unknown`: not reported); every root is listed.
    pub(crate) fn workloads(&self) -> BTreeMap<String, u64> {
        let mut counts: BTreeMap<String, u64> = self
            .roots
            .iter()
            .map(|r| (r.fingerprint.clone(), 0))
            .collect();
        for ep in &self.endpoints {
            let root = if ep.root_sha256.is_empty() {
                "unknown"
            } else {
                ep.root_sha256.as_str()
            };
            *counts.entry(root.to_owned()).or_default() += 1;
        }
        counts
    }

    /// Identities whose endpoints do not hold a certificate of `root` yet,
    /// with how many endpoints each.
    pub(crate) fn not_on(&self, root: &str) -> BTreeMap<String, u64> {
        let mut pending = BTreeMap::new();
        for ep in self.endpoints.iter().filter(|e| e.root_sha256 != root) {
            *pending.entry(ep.identity.clone()).or_default() += 1;
        }
        pending
    }

    fn issuer_json(&self, issuer: &Cert) -> Value {
        json!({
            "subject": issuer.subject,
            "notAfter": rfc3339(issuer.not_after),
            "fingerprint": issuer.fingerprint,
            "root": self.root_of(issuer).map(|r| r.fingerprint.clone()),
        })
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut out = json!({
            "stage": self.stage,
            "roots": self.roots.iter().map(|r| json!({
                "subject": r.subject,
                "notAfter": rfc3339(r.not_after),
                "fingerprint": r.fingerprint,
            })).collect::<Vec<_>>(),
            "issuer": self.issuer_json(&self.issuer),
            "workloads": self.workloads(),
            "replicas": self.signers.iter().map(|s| json!({
                "name": s.replica,
                "issuers": s.issuers_sha256,
            })).collect::<Vec<_>>(),
        });
        if let Some(next) = &self.next_issuer {
            out["nextIssuer"] = self.issuer_json(next);
        }
        if let Some(previous) = &self.previous_issuer {
            out["previousIssuer"] = self.issuer_json(previous);
        }
        if let Some(renew_by) = self.renew_by {
            out["renewBy"] = rfc3339(renew_by).into();
        }
        if let Some(root) = self
            .root_of(&self.issuer)
            .filter(|_| self.stage == "activated")
        {
            let pending: BTreeMap<String, u64> = self.not_on(&root.fingerprint);
            out["pending"] = json!(pending);
        }
        out
    }

    fn print_table(&self) {
        let workloads = self.workloads();
        let stage = match self.renew_by {
            Some(t) => format!(
                "{} (sidecars renew onto the new issuer by {})",
                self.stage,
                rfc3339(t)
            ),
            None => self.stage.clone(),
        };
        println!("STAGE  {stage}");
        println!();
        println!(
            "{:<64}  {:<20}  {:>9}  SUBJECT",
            "ROOT", "NOT AFTER", "WORKLOADS"
        );
        for root in &self.roots {
            println!(
                "{:<64}  {:<20}  {:>9}  {}",
                root.fingerprint,
                rfc3339(root.not_after),
                workloads.get(&root.fingerprint).copied().unwrap_or(0),
                root.subject
            );
        }
        if let Some(unknown) = workloads.get("unknown") {
            println!("{:<64}  {:<20}  {unknown:>9}", "(not reported)", "");
        }
        println!();
        let issuers = [
            ("ISSUER", Some(&self.issuer)),
            ("NEXT ISSUER", self.next_issuer.as_ref()),
            ("PREVIOUS ISSUER", self.previous_issuer.as_ref()),
        ];
        for (label, issuer) in issuers {
            let Some(issuer) = issuer else { continue };
            let root = self.root_of(issuer).map_or("?", |r| r.fingerprint.as_str());
            println!(
                "{label:<16} {}  not after {}  root {}",
                issuer.fingerprint,
                rfc3339(issuer.not_after),
                &root[..root.len().min(16)]
            );
        }
        println!();
        for signer in &self.signers {
            let holds: Vec<&str> = signer
                .issuers_sha256
                .iter()
                .map(|f| &f[..f.len().min(16)])
                .collect();
            println!(
                "REPLICA {}  holds keys of {}",
                signer.replica,
                holds.join(", ")
            );
        }
    }
}

/// Reads the trust status from the control plane.
pub(crate) async fn report(client: &mut AdminClient<Channel>) -> Result<Report, CliError> {
    let status = client.get_trust(pb::GetTrustRequest {}).await?.into_inner();
    Report::try_from(status)
}

pub(crate) async fn status(settings: &Settings, output: Output) -> CliResult {
    let report = report(&mut client(settings)?).await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
        ),
        Output::Yaml => print!(
            "{}",
            serde_saphyr::to_string(&report.to_json()).unwrap_or_default()
        ),
        Output::Table | Output::Wide => report.print_table(),
    }
    Ok(())
}

/// Where `prepare` takes the new root from.
pub(crate) enum NewRoot {
    Generate,
    Given {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

fn ca_error(e: bulkhead_control::ca::CaError) -> CliError {
    CliError::failure(e.to_string())
}

/// The fingerprint of `next-issuer.crt` in `dir`, when there is one.
fn next_issuer_in(dir: &std::path::Path) -> Option<String> {
    let pem = std::fs::read(dir.join(NEXT_ISSUER_CERT)).ok()?;
    let certs = bulkhead_tls::certs_from_pem(&pem, NEXT_ISSUER_CERT).ok()?;
    certs.first().map(|c| bulkhead_tls::fingerprint(c))
}

/// The bundle a status names.
fn roots_of(status: &pb::TrustStatus) -> Vec<CertificateDer<'static>> {
    status
        .roots_der
        .iter()
        .map(|r| CertificateDer::from(r.clone()))
        .collect()
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

pub(crate) async fn prepare(settings: &Settings, root: NewRoot) -> CliResult {
    let dir = settings.credentials_dir()?.to_owned();
    let mut client = client(settings)?;
    let before = report(&mut client).await?;
    if before.stage == "activated" {
        return Err(CliError::failure(
            "a rotation is already activated: finish it with `bulkheadctl ca rotate retire` before preparing another",
        ));
    }
    let next_here = next_issuer_in(&dir);
    if let Some(next) = &before.next_issuer
        && next_here.as_deref() != Some(next.fingerprint.as_str())
    {
        return Err(CliError::failure(format!(
            "a rotation to issuer {} is already prepared, but {} does not hold its files: run activate and retire with the credentials folder that prepared it",
            short(&next.fingerprint),
            dir.display()
        )));
    }
    let td = crate::settings::load_bundle(&dir.join("bundle.crt"), None)?
        .trust_domain()
        .to_owned();
    let given = match &root {
        NewRoot::Generate => None,
        NewRoot::Given { cert, key } => Some(GivenRoot { cert, key }),
    };
    let next = rotation_files::next_ca(&dir, &td, given).map_err(ca_error)?;
    let status = client
        .prepare_rotation(pb::PrepareRotationRequest {
            root_der: next.root.to_vec(),
            issuer_der: next.issuer.to_vec(),
        })
        .await?
        .into_inner();
    let roots = roots_of(&status);
    // The CLI keeps working through every stage: both roots to verify the
    // control plane with, and an operator certificate of the new issuer
    // (the control plane trusts its root from now on).
    rotation_files::write_bundle(&dir, &roots).map_err(ca_error)?;
    rotation_files::write_operator(&dir, &td).map_err(ca_error)?;
    let after = Report::try_from(status)?;
    let issuer = after
        .next_issuer
        .as_ref()
        .map_or("?", |i| i.fingerprint.as_str());
    let holding = after
        .signers
        .iter()
        .filter(|s| s.issuers_sha256.iter().any(|f| f == issuer))
        .count();
    println!(
        "prepared: the trust bundle holds {} roots; the new issuer {} waits",
        after.roots.len(),
        short(issuer)
    );
    println!(
        "  wrote {} in {}: the new root{}, the new issuer, bundle.crt and a new operator certificate",
        if next.made {
            "new files"
        } else {
            "nothing new (reused an earlier prepare's files)"
        },
        dir.display(),
        if matches!(root, NewRoot::Generate) {
            " (keep next-root.key offline)"
        } else {
            ""
        }
    );
    println!(
        "next: give every control-plane replica {} and next-issuer.key (a control plane reading this folder picks them up by itself; in Kubernetes add them to the issuer Secret); {holding} of {} replicas hold the key now",
        NEXT_ISSUER_CERT,
        after.signers.len()
    );
    println!("then: bulkheadctl ca rotate activate");
    Ok(())
}

pub(crate) async fn activate(settings: &Settings, renew_within: Duration) -> CliResult {
    let seconds = u32::try_from(renew_within.as_secs())
        .map_err(|_| CliError::usage("--renew-within: too long"))?;
    let status = client(settings)?
        .activate_rotation(pb::ActivateRotationRequest {
            renew_within_seconds: seconds,
        })
        .await?
        .into_inner();
    let after = Report::try_from(status)?;
    println!(
        "activated: replicas sign with issuer {}; sidecars renew onto it by {}",
        short(&after.issuer.fingerprint),
        after.renew_by.map_or_else(|| "?".to_owned(), rfc3339)
    );
    println!(
        "next: bulkheadctl ca rotate retire (once `bulkheadctl ca status` shows every workload on the new root)"
    );
    Ok(())
}

pub(crate) async fn retire(settings: &Settings) -> CliResult {
    let dir = settings.credentials_dir()?.to_owned();
    let mut client = client(settings)?;
    let before = report(&mut client).await?;
    let next_here = std::fs::read(dir.join(NEXT_ISSUER_CERT))
        .ok()
        .and_then(|pem| bulkhead_tls::certs_from_pem(&pem, NEXT_ISSUER_CERT).ok())
        .map(|certs| bulkhead_tls::fingerprint(&certs[0]));
    let status =
        if before.stage == "none" && next_here.as_deref() == Some(&before.issuer.fingerprint) {
            // Retired already; an interruption left the folder unfinished.
            pb::TrustStatus {
                stage: before.stage.clone(),
                roots_der: before.roots.iter().map(|r| r.der.to_vec()).collect(),
                ..Default::default()
            }
        } else {
            client
                .retire_root(pb::RetireRootRequest {})
                .await?
                .into_inner()
        };
    let roots = roots_of(&status);
    rotation_files::write_bundle(&dir, &roots).map_err(ca_error)?;
    println!(
        "retired: the trust bundle holds {} root(s); certificates of the old root are refused, and connections it let in close within 15 s",
        roots.len()
    );
    // Only the files of the issuer that signs now take the place of the
    // current ones (another folder may have prepared this rotation).
    if next_here.as_deref() == Some(before.issuer.fingerprint.as_str()) {
        let kept = rotation_files::promote_next(&dir).map_err(ca_error)?;
        println!(
            "  {}: the new root and issuer are root.* and issuer.* now; the old ones are in {}",
            dir.display(),
            kept.display()
        );
    } else {
        println!(
            "  {} holds no files of the issuer that signs now ({}): only bundle.crt was updated",
            dir.display(),
            short(&before.issuer.fingerprint)
        );
    }
    println!(
        "  in Kubernetes: set issuer.crt, issuer.key and bundle.crt of the issuer Secret to these files and remove next-issuer.*"
    );
    Ok(())
}
