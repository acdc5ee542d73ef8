//! `ca status`: the trust in force — roots, issuers, a root rotation's
//! stage, how many registered endpoints hold certificates of each root,
//! and which issuers each control-plane replica holds keys for.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_control::ca::Cert;
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

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn from_unix(secs: i64) -> SystemTime {
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
