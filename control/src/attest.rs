//! Kubernetes projected service-account tokens as attestation.
//!
//! A pod's sidecar sends the token the kubelet projected for it (audience
//! `bulkhead`); the control plane verifies it against the cluster's
//! service-account issuer keys (a JWKS file, e.g. the output of
//! `kubectl get --raw /openid/v1/jwks`, re-read when it changes): signature
//! (RS256, ES256 and the other asymmetric algorithms the issuer may use; never
//! `none` or HMAC), issuer, audience, expiry and not-before (60 s leeway),
//! and takes the identity from the token's `kubernetes.io` claims,
//! cross-checked against `sub` (`system:serviceaccount:NS:SA`).

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use bulkhead_proto::SpiffeId;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Largest token accepted (projected tokens are ~1 KiB).
pub const MAX_JWT_LEN: usize = 16 * 1024;
const LEEWAY_SECS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("JWKS file {path}: {reason}")]
    Jwks { path: String, reason: String },
    #[error("token larger than {MAX_JWT_LEN} bytes")]
    TooLarge,
    #[error("token is not a JWT: {0}")]
    Malformed(String),
    #[error("token algorithm {0:?} is not accepted (asymmetric signatures only)")]
    Algorithm(String),
    #[error("no key of the cluster's issuer matches the token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("token refused: {0}")]
    Invalid(String),
    #[error("token names no service account (kubernetes.io claims or sub)")]
    NoIdentity,
    #[error("token's sub {sub:?} disagrees with its kubernetes.io claims ({ns}/{sa})")]
    Inconsistent { sub: String, ns: String, sa: String },
    #[error("token identity: {0}")]
    Identity(#[from] bulkhead_proto::IdentityError),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

#[derive(Debug, Deserialize)]
struct KubernetesClaims {
    namespace: Option<String>,
    serviceaccount: Option<Named>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

struct Keys {
    set: JwkSet,
    modified: Option<SystemTime>,
}

/// Verifies projected service-account tokens of one cluster.
pub struct K8sVerifier {
    issuer: String,
    audience: String,
    trust_domain: String,
    jwks_path: PathBuf,
    /// Set when the keys come from the API server rather than a file.
    remote: Option<fetch::Remote>,
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for K8sVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks", &self.jwks_path)
            .finish()
    }
}

fn read_jwks(path: &Path) -> Result<Keys, AttestError> {
    let err = |reason: String| AttestError::Jwks {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > 1024 * 1024 {
        return Err(err("larger than 1 MiB".into()));
    }
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let set: JwkSet =
        serde_json::from_slice(&text).map_err(|e| err(format!("not a JWKS document: {e}")))?;
    if set.keys.is_empty() {
        return Err(err("holds no keys".into()));
    }
    Ok(Keys {
        set,
        modified: meta.modified().ok(),
    })
}

impl K8sVerifier {
    pub fn new(
        jwks: &Path,
        issuer: &str,
        audience: &str,
        trust_domain: &str,
    ) -> Result<Self, AttestError> {
        let keys = read_jwks(jwks)?;
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            trust_domain: trust_domain.to_owned(),
            jwks_path: jwks.to_owned(),
            remote: None,
            keys: RwLock::new(keys),
        })
    }

    /// Keys fetched from the API server (`https://.../openid/v1/jwks`),
    /// trusting `remote.ca_pem` and sending `remote`'s bearer token; the
    /// first fetch must succeed, later failures keep the keys in use.
    pub async fn from_url(
        remote: fetch::Remote,
        issuer: &str,
        audience: &str,
        trust_domain: &str,
    ) -> Result<Self, AttestError> {
        let set = remote.fetch().await?;
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            trust_domain: trust_domain.to_owned(),
            jwks_path: PathBuf::from(&remote.url),
            remote: Some(remote),
            keys: RwLock::new(Keys {
                set,
                modified: None,
            }),
        })
    }

    /// Re-reads the JWKS file when it changed (key rotation); a bad new
    /// file keeps the old keys and is reported.
    pub fn reload_if_changed(&self) {
        let modified = std::fs::metadata(&self.jwks_path)
            .and_then(|m| m.modified())
            .ok();
        let current = self.keys.read().unwrap_or_else(|e| e.into_inner()).modified;
        if modified.is_none() || modified == current {
            return;
        }
        match read_jwks(&self.jwks_path) {
            Ok(keys) => {
                tracing::info!(path = %self.jwks_path.display(), keys = keys.set.keys.len(), "reloaded service-account issuer keys");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
            }
            Err(error) => {
                tracing::warn!(%error, "keeping the previous service-account issuer keys")
            }
        }
    }

    /// Checks the file (or fetches the URL) every `every` for as long as the
    /// process runs.
    pub async fn reload_forever(self: std::sync::Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match &self.remote {
                None => self.reload_if_changed(),
                Some(remote) => match remote.fetch().await {
                    Ok(set) => {
                        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Keys {
                            set,
                            modified: None,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "keeping the previous service-account issuer keys")
                    }
                },
            }
        }
    }

    /// The identity a valid token attests.
    pub fn verify(&self, token: &str) -> Result<SpiffeId, AttestError> {
        if token.len() > MAX_JWT_LEN {
            return Err(AttestError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AttestError::Malformed(e.to_string()))?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(AttestError::Algorithm(format!("{:?}", header.alg)));
        }
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let candidates: Vec<&jsonwebtoken::jwk::Jwk> = keys
            .set
            .keys
            .iter()
            .filter(|k| match (&header.kid, &k.common.key_id) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
                (None, _) => true,
            })
            .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
            .collect();
        if candidates.is_empty() {
            return Err(AttestError::UnknownKey(header.kid.clone()));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = None;
        for jwk in candidates {
            let key = match DecodingKey::from_jwk(jwk) {
                Ok(k) => k,
                Err(e) => {
                    last = Some(AttestError::Invalid(format!("issuer key unusable: {e}")));
                    continue;
                }
            };
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => last = Some(AttestError::Invalid(e.to_string())),
            }
        }
        Err(last.unwrap_or(AttestError::UnknownKey(header.kid)))
    }

    fn identity(&self, claims: Claims) -> Result<SpiffeId, AttestError> {
        let from_sub = claims.sub.as_deref().and_then(|s| {
            let rest = s.strip_prefix("system:serviceaccount:")?;
            let (ns, sa) = rest.split_once(':')?;
            Some((ns.to_owned(), sa.to_owned()))
        });
        let from_k8s = claims
            .kubernetes
            .and_then(|k| Some((k.namespace?, k.serviceaccount?.name)));
        let (ns, sa) = match (from_k8s, from_sub) {
            (Some(k), Some(s)) if k != s => {
                return Err(AttestError::Inconsistent {
                    sub: claims.sub.unwrap_or_default(),
                    ns: k.0,
                    sa: k.1,
                });
            }
            (Some(k), _) => k,
            (None, Some(s)) => s,
            (None, None) => return Err(AttestError::NoIdentity),
        };
        Ok(SpiffeId::new(&self.trust_domain, &ns, &sa)?)
    }
}

pub mod fetch;
#[cfg(test)]
mod tests;
