//! Fetching the cluster's service-account issuer keys from the API server
//! (`GET /openid/v1/jwks`, through [`crate::k8s_api::get`]). Bounded in time
//! and size.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;

use super::AttestError;

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where to fetch keys from, and how to authenticate there.
#[derive(Clone)]
pub struct Remote {
    /// `https://host[:port]/path`.
    pub url: String,
    /// The API server's CA (PEM).
    pub ca_pem: Vec<u8>,
    /// A file with a bearer token, re-read at each fetch (it is rotated).
    pub token_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

fn err(url: &str, reason: impl std::fmt::Display) -> AttestError {
    AttestError::Jwks {
        path: url.to_owned(),
        reason: reason.to_string(),
    }
}

impl Remote {
    pub async fn fetch(&self) -> Result<JwkSet, AttestError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_unbounded())
            .await
            .map_err(|_| err(&self.url, "timed out"))?
    }

    async fn fetch_unbounded(&self) -> Result<JwkSet, AttestError> {
        let url = &self.url;
        let body = crate::k8s_api::get(
            url,
            &self.ca_pem,
            self.token_file.as_deref(),
            "application/jwk-set+json, application/json",
            MAX_JWKS_BYTES,
        )
        .await
        .map_err(|e| err(url, e))?;
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| err(url, format!("not a JWKS document: {e}")))?;
        if set.keys.is_empty() {
            return Err(err(url, "holds no keys"));
        }
        tracing::info!(%url, keys = set.keys.len(), "fetched service-account issuer keys");
        Ok(set)
    }
}
