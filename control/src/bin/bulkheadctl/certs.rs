//! `ca init`, `token create` and `cert request`: identity material.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bulkhead_control::ca;
use bulkhead_proto::SpiffeId;
use bulkhead_proto::pb;
use bulkhead_proto::pb::identity_client::IdentityClient;

use crate::settings::{Settings, load_bundle, read};
use crate::{CliError, CliResult};

pub(crate) fn ca_init(trust_domain: &str, out: &Path) -> CliResult {
    let files = ca::init_ca(trust_domain, out).map_err(|e| CliError::failure(e.to_string()))?;
    println!(
        "created CA for trust domain {trust_domain} in {}",
        files.dir.display()
    );
    println!(
        "  root       {}  (keep root.key offline)",
        files.root_cert.display()
    );
    println!(
        "  issuer     {}  {}",
        files.issuer_cert.display(),
        files.issuer_key.display()
    );
    println!("  bundle     {}", files.bundle.display());
    println!(
        "  operator   {}  {}",
        files.operator_cert.display(),
        files.operator_key.display()
    );
    println!(
        "next: bulkhead-control --issuer-cert {} --issuer-key {} --trust-bundle {}",
        files.issuer_cert.display(),
        files.issuer_key.display(),
        files.bundle.display()
    );
    println!(
        "  or in Kubernetes: helm install bulkhead charts/bulkhead -n bulkhead --create-namespace \\\n    --set-file issuer.cert={} --set-file issuer.key={} --set-file issuer.bundle={}",
        files.issuer_cert.display(),
        files.issuer_key.display(),
        files.bundle.display()
    );
    Ok(())
}

pub(crate) fn trust_domain_for(
    settings: &Settings,
    explicit: Option<String>,
) -> Result<String, CliError> {
    if let Some(td) = explicit {
        return Ok(td);
    }
    if let Some(dir) = &settings.credentials {
        let bundle = dir.join("bundle.crt");
        if bundle.exists() {
            return Ok(load_bundle(&bundle, None)?.trust_domain().to_owned());
        }
    }
    Ok(bulkhead_proto::identity::DEFAULT_TRUST_DOMAIN.to_owned())
}

pub(crate) fn token_create(
    settings: &Settings,
    identity: &str,
    ttl: Duration,
    once: bool,
    issuer_key: Option<PathBuf>,
    trust_domain: Option<String>,
) -> CliResult {
    let td = trust_domain_for(settings, trust_domain)?;
    let identity = SpiffeId::from_ns_sa(&td, identity).map_err(|e| {
        CliError::usage(format!(
            "--identity {identity:?}: {e} (expected NAMESPACE/SERVICE-ACCOUNT)"
        ))
    })?;
    let key_path = match issuer_key {
        Some(p) => p,
        None => settings.credentials_dir()?.join("issuer.key"),
    };
    let pem = String::from_utf8(read(&key_path)?)
        .map_err(|_| CliError::usage(format!("{}: not a PEM file", key_path.display())))?;
    let token = ca::mint_token(&pem, &identity, ttl, once, SystemTime::now())
        .map_err(|e| CliError::usage(format!("{}: {e}", key_path.display())))?;
    println!("{token}");
    Ok(())
}

/// Writes a new file with `mode`, replacing an existing one only if `force`.
fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> CliResult {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        // Remove first so the new file gets `mode` even if the old one was wider.
        let _ = std::fs::remove_file(path);
    }
    options.create_new(true);
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::failure(format!(
                "{} exists: pass --force to replace it",
                path.display()
            ))
        } else {
            CliError::failure(format!("{}: {e}", path.display()))
        }
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::failure(format!("{}: {e}", path.display())))
}

pub(crate) async fn cert_request(
    settings: &Settings,
    trust_bundle: &Path,
    token: &str,
    out: &Path,
    force: bool,
    trust_domain: Option<String>,
) -> CliResult {
    let token = match token.strip_prefix('@') {
        Some(path) => String::from_utf8(read(Path::new(path))?)
            .map_err(|_| CliError::usage(format!("{path}: token file is not text")))?
            .trim()
            .to_owned(),
        None => token.trim().to_owned(),
    };
    let bundle = load_bundle(trust_bundle, trust_domain.as_deref())?;
    // The key is made here and never leaves this machine: only the CSR goes out.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CliError::failure(format!("cannot generate a key: {e}")))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| CliError::failure(format!("cannot make a CSR: {e}")))?;
    let channel = bulkhead_tls::channel(&settings.control, &bundle, None)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let resp = IdentityClient::new(channel)
        .certify(pb::CertifyRequest {
            csr_der: csr.der().to_vec(),
            attestation: Some(pb::certify_request::Attestation::BootstrapToken(token)),
        })
        .await?
        .into_inner();
    std::fs::create_dir_all(out)
        .map_err(|e| CliError::failure(format!("{}: {e}", out.display())))?;
    let chain: String = resp
        .chain_der
        .iter()
        .map(|c| ca::pem_block("CERTIFICATE", c))
        .collect();
    let roots: String = resp
        .trust_bundle_der
        .iter()
        .map(|c| ca::pem_block("CERTIFICATE", c))
        .collect();
    write_file(
        &out.join("tls.key"),
        key.serialize_pem().as_bytes(),
        0o600,
        force,
    )?;
    write_file(&out.join("tls.crt"), chain.as_bytes(), 0o644, force)?;
    write_file(&out.join("bundle.crt"), roots.as_bytes(), 0o644, force)?;
    let expires = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(resp.not_after_unix.max(0) as u64),
    );
    println!(
        "issued {} (expires {expires}) into {}",
        resp.spiffe_id,
        out.display()
    );
    Ok(())
}
