//! Where bulkheadctl finds the control plane and its credentials:
//! flag > `BULKHEAD_*` env (both via clap) > config file > defaults.

use std::path::{Path, PathBuf};

use bulkhead_tls::{CertSlot, TrustBundle};
use serde::Deserialize;

use crate::CliError;

pub(crate) const DEFAULT_CONTROL: &str = "https://127.0.0.1:8443";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    control: Option<String>,
    credentials: Option<PathBuf>,
}

#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) control: String,
    /// None: no folder given anywhere.
    pub(crate) credentials: Option<PathBuf>,
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("bulkhead").join("config.yaml"))
}

impl Settings {
    pub(crate) fn resolve(
        control: Option<String>,
        credentials: Option<PathBuf>,
        config: Option<PathBuf>,
    ) -> Result<Self, CliError> {
        let file = match config {
            Some(path) => Some(read_config(&path)?),
            None => match default_config_path() {
                Some(path) if path.exists() => Some(read_config(&path)?),
                _ => None,
            },
        }
        .unwrap_or_default();
        Ok(Self {
            control: control
                .or(file.control)
                .unwrap_or_else(|| DEFAULT_CONTROL.to_owned()),
            credentials: credentials.or(file.credentials),
        })
    }

    /// The credentials folder, or a usage error saying how to give one.
    pub(crate) fn credentials_dir(&self) -> Result<&Path, CliError> {
        self.credentials.as_deref().ok_or_else(|| {
            CliError::usage(
                "no credentials folder: pass --credentials DIR or set BULKHEAD_CREDENTIALS (a folder with operator.crt, operator.key, bundle.crt)",
            )
        })
    }

    /// The operator's trust bundle and client certificate.
    pub(crate) fn operator_identity(&self) -> Result<(TrustBundle, CertSlot), CliError> {
        let dir = self.credentials_dir()?;
        let bundle = load_bundle(&dir.join("bundle.crt"), None)?;
        let slot = slot_from_files(&dir.join("operator.crt"), &dir.join("operator.key"))?;
        Ok((bundle, slot))
    }
}

/// A certificate slot loaded from PEM files.
pub(crate) fn slot_from_files(cert_path: &Path, key_path: &Path) -> Result<CertSlot, CliError> {
    {
        let chain =
            bulkhead_tls::certs_from_pem(&read(cert_path)?, &cert_path.display().to_string())
                .map_err(|e| CliError::usage(e.to_string()))?;
        let key = bulkhead_tls::key_from_pem(&read(key_path)?, &key_path.display().to_string())
            .map_err(|e| CliError::usage(e.to_string()))?;
        let slot = CertSlot::empty();
        slot.set(
            CertSlot::certified_key(chain, key)
                .map_err(|e| CliError::usage(format!("{}: {e}", key_path.display())))?,
        );
        Ok(slot)
    }
}

fn read_config(path: &Path) -> Result<ConfigFile, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("config file {}: {e}", path.display())))?;
    serde_saphyr::from_str(&text).map_err(|e| {
        // The YAML error carries a source snippet on further lines; the
        // first line names the place and the problem.
        let e = e.to_string();
        let first = e
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        CliError::usage(format!("config file {}: {first}", path.display()))
    })
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
}

/// Loads a bundle; the trust domain is `explicit`, else the one the roots
/// name, else the default.
pub(crate) fn load_bundle(path: &Path, explicit: Option<&str>) -> Result<TrustBundle, CliError> {
    let pem = read(path)?;
    let what = path.display().to_string();
    let roots =
        bulkhead_tls::certs_from_pem(&pem, &what).map_err(|e| CliError::usage(e.to_string()))?;
    let td = explicit
        .map(str::to_owned)
        .or_else(|| bulkhead_tls::trust_domain_of_roots(&roots))
        .unwrap_or_else(|| bulkhead_proto::identity::DEFAULT_TRUST_DOMAIN.to_owned());
    TrustBundle::new(roots, &td).map_err(|e| CliError::usage(format!("{what}: {e}")))
}
