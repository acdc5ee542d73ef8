//! End-user token keys: each JWT provider's key set, inline or fetched
//! from its `jwksUri`, and kept fresh in the background.
//!
//! - A fetched set is refreshed after its `Cache-Control: max-age`, clamped
//!   to [`MIN_REFRESH`]–[`MAX_REFRESH`] ([`DEFAULT_REFRESH`] without one).
//! - A failed fetch keeps the last good set and tries again with backoff;
//!   a provider never fetched has no keys, and its routes answer 503
//!   (never "allow").
//! - A token naming an unknown `kid` asks for a refetch, at most one per
//!   [`KID_REFETCH_INTERVAL`] per provider (a flood of made-up kids cannot
//!   turn into a flood of fetches).
//! - Only public signature keys of the kinds the gateway verifies are kept:
//!   RSA (RS256), EC P-256 (ES256), OKP Ed25519 (EdDSA); each key is bound
//!   to its one algorithm, so a token cannot pick another (no HMAC with a
//!   public key as the secret).
//!
//! `bulkhead_gateway_jwks_fetch_total{provider, result}` counts fetches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bulkhead_proto::model::{JwksSource, JwtProvider};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls_pki_types::ServerName;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Refresh bounds and default (issue 14).
pub(super) const MIN_REFRESH: Duration = Duration::from_secs(30);
pub(super) const MAX_REFRESH: Duration = Duration::from_secs(3600);
pub(super) const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// At most one refetch for an unknown `kid` per provider this often.
pub(super) const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// How long a request with an unknown `kid` waits for that refetch.
const KID_REFETCH_WAIT: Duration = Duration::from_secs(5);
/// One fetch, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys kept from one set.
const MAX_KEYS: usize = 64;
/// Retry after a failed fetch: from this, doubling up to [`MIN_REFRESH`].
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// One verification key, bound to its algorithm.
pub(super) struct Key {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
}

/// A provider's usable keys.
pub(super) struct KeySet {
    pub(super) keys: Vec<Key>,
}

impl KeySet {
    /// Reads a JWKS document, keeping the keys the gateway can verify with;
    /// an error when none is usable.
    pub(super) fn parse(jwks: &serde_json::Value) -> Result<Self, String> {
        let list = jwks
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("not a JWKS: expected an object with a `keys` list")?;
        let mut keys = Vec::new();
        for jwk in list.iter().take(MAX_KEYS) {
            match key(jwk) {
                Ok(k) => keys.push(k),
                Err(why) => tracing::debug!(%why, "JWKS key skipped"),
            }
        }
        if keys.is_empty() {
            return Err(
                "no usable key (RSA, EC P-256 or Ed25519 public keys for signatures)".into(),
            );
        }
        Ok(Self { keys })
    }

    /// The keys a token with this header may be checked with: the one
    /// named by `kid`, else every key of the token's algorithm.
    pub(super) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            k.alg == alg
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }

    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn key(jwk: &serde_json::Value) -> Result<Key, String> {
    let field = |name: &str| jwk.get(name).and_then(|v| v.as_str());
    if field("use").is_some_and(|u| u != "sig") {
        return Err("not a signature key (`use` is not sig)".into());
    }
    let (alg, key) = match (field("kty"), field("crv")) {
        (Some("RSA"), _) => {
            let (n, e) = field("n")
                .zip(field("e"))
                .ok_or("RSA key without n and e")?;
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?,
            )
        }
        (Some("EC"), Some("P-256")) => {
            let (x, y) = field("x").zip(field("y")).ok_or("EC key without x and y")?;
            (
                Algorithm::ES256,
                DecodingKey::from_ec_components(x, y).map_err(|e| e.to_string())?,
            )
        }
        (Some("OKP"), Some("Ed25519")) => {
            let x = field("x").ok_or("OKP key without x")?;
            (
                Algorithm::EdDSA,
                DecodingKey::from_ed_components(x).map_err(|e| e.to_string())?,
            )
        }
        (kty, crv) => return Err(format!("unsupported key type {kty:?} (curve {crv:?})")),
    };
    // A key that names its algorithm must name the one its type implies.
    if let Some(named) = field("alg")
        && named != format!("{alg:?}")
    {
        return Err(format!("key says alg {named}, its type is for {alg:?}"));
    }
    Ok(Key {
        kid: field("kid").map(str::to_owned),
        alg,
        key,
    })
}

/// The keys of one provider, as the routes that name it read them.
pub(super) struct ProviderKeys {
    name: String,
    current: ArcSwapOption<KeySet>,
    /// Bumped at each fetch attempt's end: what a request waiting on a
    /// `kid` refetch wakes on.
    fetched: watch::Sender<u64>,
    refetch: Notify,
    last_kid_refetch: Mutex<Option<Instant>>,
}

impl ProviderKeys {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            current: ArcSwapOption::empty(),
            fetched: watch::Sender::new(0),
            refetch: Notify::new(),
            last_kid_refetch: Mutex::new(None),
        }
    }

    /// The set in force; `None` before the first good fetch.
    pub(super) fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// A token names a `kid` the set lacks: refetch (unless one was asked
    /// for within [`KID_REFETCH_INTERVAL`]) and wait for it, bounded. Returns
    /// the set then in force.
    pub(super) async fn refetch_for_kid(&self) -> Option<Arc<KeySet>> {
        {
            let mut last = self
                .last_kid_refetch
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < KID_REFETCH_INTERVAL) {
                return self.current();
            }
            *last = Some(now);
        }
        let mut fetched = self.fetched.subscribe();
        fetched.mark_unchanged();
        self.refetch.notify_one();
        let _ = tokio::time::timeout(KID_REFETCH_WAIT, fetched.changed()).await;
        self.current()
    }
}

/// Every provider's keys, shared by the route tables that come and go as
/// the Gateway resource changes: a provider whose definition is unchanged
/// keeps its keys (and its fetch task) across updates.
#[derive(Default)]
pub(super) struct KeyStore {
    providers: Mutex<HashMap<String, Known>>,
}

/// A provider's definition, and the keys loaded for it.
type Known = (Arc<JwtProvider>, Arc<ProviderKeys>);

impl KeyStore {
    /// The keys for `provider`, loading or starting to fetch them if its
    /// definition is new.
    pub(super) fn provider(&self, provider: &Arc<JwtProvider>) -> Arc<ProviderKeys> {
        let mut providers = self.providers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((spec, keys)) = providers.get(&provider.name)
            && **spec == **provider
        {
            return keys.clone();
        }
        let keys = Arc::new(ProviderKeys::new(&provider.name));
        match &provider.keys {
            JwksSource::Inline(jwks) => match KeySet::parse(jwks) {
                Ok(set) => keys.current.store(Some(Arc::new(set))),
                Err(why) => {
                    tracing::warn!(provider = %provider.name, %why, "inline JWKS has no usable key: its routes answer 503");
                }
            },
            JwksSource::Uri(uri) => {
                let source = Source {
                    uri: uri.clone(),
                    ca: provider.jwks_ca.clone(),
                };
                tokio::spawn(refresh_forever(Arc::downgrade(&keys), source));
            }
        }
        providers.insert(provider.name.clone(), (provider.clone(), keys.clone()));
        keys
    }

    /// Forgets providers no longer defined (their fetch tasks end).
    pub(super) fn retain(&self, defined: &[Arc<JwtProvider>]) {
        let mut providers = self.providers.lock().unwrap_or_else(|e| e.into_inner());
        providers
            .retain(|name, (spec, _)| defined.iter().any(|d| d.name == *name && **d == **spec));
    }
}

/// Where a provider's keys are fetched from.
struct Source {
    uri: String,
    ca: Option<String>,
}

/// Fetches, then refetches after the server's max-age (or sooner when a
/// request names an unknown kid), until the provider is dropped.
async fn refresh_forever(keys: Weak<ProviderKeys>, source: Source) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(provider) = keys.upgrade() else {
            return;
        };
        let result = fetch(&source).await;
        let next = match result {
            Ok((set, max_age)) => {
                retry = FIRST_RETRY;
                metrics::counter!("bulkhead_gateway_jwks_fetch_total", "provider" => provider.name.clone(), "result" => "ok").increment(1);
                tracing::debug!(provider = %provider.name, keys = set.keys.len(), "JWKS fetched");
                provider.current.store(Some(Arc::new(set)));
                max_age.map_or(DEFAULT_REFRESH, |a| a.clamp(MIN_REFRESH, MAX_REFRESH))
            }
            Err(error) => {
                metrics::counter!("bulkhead_gateway_jwks_fetch_total", "provider" => provider.name.clone(), "result" => "error").increment(1);
                let kept = if provider.current().is_some() {
                    "keeping the last good keys"
                } else {
                    "no keys yet: its routes answer 503"
                };
                tracing::warn!(provider = %provider.name, uri = %source.uri, %error, retry_in = ?retry, "JWKS fetch failed; {kept}");
                let wait = retry;
                retry = (retry * 2).min(MIN_REFRESH);
                wait
            }
        };
        provider.fetched.send_modify(|n| *n += 1);
        let refetch = async { provider.refetch.notified().await };
        let sleep = tokio::time::sleep(next);
        // Holding only a weak reference while asleep would miss the
        // notification; holding the strong one keeps the provider alive
        // until the next wake-up, which is bounded by `next`.
        tokio::select! {
            () = refetch => {}
            () = sleep => {}
        }
    }
}

/// One GET of the JWKS: the set and the response's max-age.
async fn fetch(source: &Source) -> Result<(KeySet, Option<Duration>), String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_once(source))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")))
}

async fn fetch_once(source: &Source) -> Result<(KeySet, Option<Duration>), String> {
    let uri: http::Uri = source.uri.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = if https {
        let config = client_tls(source.ca.as_deref())?;
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| format!("server name {host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    if response.status() != http::StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let max_age = max_age(response.headers());
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the JWKS (at most {MAX_JWKS_BYTES} bytes): {e}"))?
        .to_bytes();
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
    Ok((KeySet::parse(&json)?, max_age))
}

async fn send<I>(
    io: I,
    request: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

/// `Cache-Control: max-age=N`, if the response says so.
pub(super) fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|directive| {
            let (name, value) = directive.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
                .map(Duration::from_secs)
        })
}

/// TLS to the identity provider: the provider's `jwksCa`, else the
/// system's roots.
fn client_tls(ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (pem, what) = match ca {
        Some(pem) => (pem.as_bytes().to_vec(), "jwksCa".to_owned()),
        None => system_roots()?,
    };
    for cert in bulkhead_tls::certs_from_pem(&pem, &what).map_err(|e| e.to_string())? {
        // A bundle may hold a certificate rustls cannot use; the rest still serve.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!("{what}: no usable root certificate"));
    }
    let config = rustls::ClientConfig::builder_with_provider(bulkhead_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the usual places.
fn system_roots() -> Result<(Vec<u8>, String), String> {
    let candidates = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .map(std::path::PathBuf::from),
        );
    for path in candidates {
        if let Ok(pem) = std::fs::read(&path) {
            return Ok((pem, path.display().to_string()));
        }
    }
    Err("no system CA bundle found (set SSL_CERT_FILE, or give the provider a jwksCa)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        let mut h = http::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(
            http::header::CACHE_CONTROL,
            "public, max-age=120".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(120)));
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }

    #[test]
    fn keys_are_bound_to_their_algorithm() {
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "wrong-alg", "alg": "RS256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]});
        let set = KeySet::parse(&jwks).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(set.has_kid("ed"));
        assert_eq!(set.candidates(Some("ed"), Algorithm::EdDSA).count(), 1);
        assert_eq!(set.candidates(Some("ed"), Algorithm::HS256).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::RS256).count(), 0);
        assert!(KeySet::parse(&serde_json::json!({"keys": [{"kty": "oct", "k": "AA"}]})).is_err());
    }
}
