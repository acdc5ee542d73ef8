//! The issuers one replica can sign with: each pair of certificate and key
//! files it was given (`--issuer-cert/--issuer-key`, and for a root
//! rotation `--next-issuer-cert/--next-issuer-key`), loaded and checked, and
//! read again every `--issuer-reload` so that files replaced in place — a
//! Kubernetes Secret updated under its mount — count without a restart.
//! The store's trust record says which issuer signs (by fingerprint); keys
//! never leave this process.
//!
//! Reading again never makes things worse: a pair that does not load (half
//! written, key and certificate of different issuers) keeps what was loaded
//! from it before, and only an optional pair whose files are gone is
//! dropped.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::{Ca, CaError};

/// One pair of issuer files and the flag that named it.
#[derive(Clone, Debug)]
pub struct IssuerFiles {
    /// The flag, for messages (`--issuer-cert`).
    pub flag: &'static str,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// May be absent (the next issuer, before a rotation is prepared).
    pub optional: bool,
}

/// What one pair of files held when last read.
struct Slot {
    files: IssuerFiles,
    /// The bytes last read (cert, key), to skip unchanged files.
    seen: Option<(Vec<u8>, Vec<u8>)>,
    loaded: Option<Arc<Ca>>,
}

/// The issuers this replica holds keys for.
pub struct Keyring {
    trust_domain: String,
    reload: Duration,
    slots: RwLock<Vec<Slot>>,
    /// Bumped whenever the set of issuers held changes.
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("issuers", &self.fingerprints())
            .finish()
    }
}

fn read_pair(files: &IssuerFiles) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((
        std::fs::read(&files.cert).ok()?,
        std::fs::read(&files.key).ok()?,
    ))
}

impl Keyring {
    /// Reads every pair now: a required pair must load (the error names
    /// its files); an optional pair may be absent, but if present must
    /// load too, so that a mistake shows at start-up.
    pub fn load(
        trust_domain: &str,
        files: Vec<IssuerFiles>,
        reload: Duration,
    ) -> Result<Self, CaError> {
        let mut slots = Vec::with_capacity(files.len());
        for files in files {
            let seen = read_pair(&files);
            let loaded = if seen.is_none() && files.optional {
                None
            } else {
                Some(Arc::new(Ca::load_issuer(
                    &files.cert,
                    &files.key,
                    trust_domain,
                )?))
            };
            slots.push(Slot {
                files,
                seen,
                loaded,
            });
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            reload,
            slots: RwLock::new(slots),
            changed: watch::Sender::new(0),
        })
    }

    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Slot>> {
        // A panic while swapping an Arc leaves whole values behind.
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The issuer with this certificate fingerprint, if its key is here.
    pub fn get(&self, fingerprint: &str) -> Option<Arc<Ca>> {
        self.slots()
            .iter()
            .filter_map(|s| s.loaded.as_ref())
            .find(|ca| ca.fingerprint() == fingerprint)
            .cloned()
    }

    /// The issuer of the first pair (`--issuer-cert`), when it is loaded.
    pub fn first(&self) -> Option<Arc<Ca>> {
        self.slots().first().and_then(|s| s.loaded.clone())
    }

    /// Fingerprints of every issuer held, sorted, without repeats.
    pub fn fingerprints(&self) -> Vec<String> {
        let mut fps: Vec<String> = self
            .slots()
            .iter()
            .filter_map(|s| s.loaded.as_ref().map(|ca| ca.fingerprint().to_owned()))
            .collect();
        fps.sort();
        fps.dedup();
        fps
    }

    /// Which files hold which issuer, for messages.
    pub fn describe(&self) -> String {
        self.slots()
            .iter()
            .map(|s| {
                let held = s
                    .loaded
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), |ca| ca.fingerprint().to_owned());
                format!("{} {} ({held})", s.files.flag, s.files.cert.display())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How often the files are read again.
    pub fn reload_interval(&self) -> Duration {
        self.reload
    }

    /// Told (a counter bumps) whenever the issuers held change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Reads every pair again; returns whether the issuers held changed.
    pub fn reload(&self) -> bool {
        let before = self.fingerprints();
        {
            let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
            for slot in slots.iter_mut() {
                let now = read_pair(&slot.files);
                if now == slot.seen {
                    continue;
                }
                match &now {
                    None if slot.files.optional => {
                        if slot.loaded.take().is_some() {
                            tracing::info!(files = %slot.files.cert.display(), "issuer files removed: no longer signing with that issuer");
                        }
                        slot.seen = None;
                    }
                    None => {
                        tracing::warn!(flag = slot.files.flag, cert = %slot.files.cert.display(), "issuer files cannot be read; keeping the issuer loaded before");
                    }
                    Some(_) => {
                        match Ca::load_issuer(&slot.files.cert, &slot.files.key, &self.trust_domain)
                        {
                            Ok(ca) => {
                                tracing::info!(
                                    flag = slot.files.flag,
                                    issuer = ca.fingerprint(),
                                    "loaded issuer from changed files"
                                );
                                slot.loaded = Some(Arc::new(ca));
                                slot.seen = now;
                            }
                            // Not marked seen: a half-written pair is read again.
                            Err(error) => {
                                tracing::warn!(flag = slot.files.flag, %error, "issuer files changed but do not load; keeping what was loaded before")
                            }
                        }
                    }
                }
            }
        }
        let changed = self.fingerprints() != before;
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        changed
    }

    /// Reads the files again every [`Keyring::reload_interval`], forever.
    pub async fn reload_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.reload).await;
            self.reload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::init_ca;

    fn pair(dir: &std::path::Path, flag: &'static str, optional: bool) -> IssuerFiles {
        IssuerFiles {
            flag,
            cert: dir.join(format!("{flag}.crt")),
            key: dir.join(format!("{flag}.key")),
            optional,
        }
    }

    #[test]
    fn picks_up_changed_files_and_never_loses_an_issuer_to_a_torn_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let first = init_ca("example.org", &tmp.path().join("a")).unwrap();
        let second = init_ca("example.org", &tmp.path().join("b")).unwrap();
        let dir = tmp.path();
        let main = pair(dir, "main", false);
        let next = pair(dir, "next", true);
        std::fs::copy(&first.issuer_cert, &main.cert).unwrap();
        std::fs::copy(&first.issuer_key, &main.key).unwrap();
        let ring = Keyring::load(
            "example.org",
            vec![main.clone(), next.clone()],
            Duration::from_secs(1),
        )
        .unwrap();
        let a = ring.first().unwrap().fingerprint().to_owned();
        assert_eq!(ring.fingerprints(), std::slice::from_ref(&a));
        assert!(!ring.reload(), "nothing changed");

        // The next issuer appears (a Secret gained two keys).
        std::fs::copy(&second.issuer_cert, &next.cert).unwrap();
        std::fs::copy(&second.issuer_key, &next.key).unwrap();
        let told = ring.subscribe();
        assert!(ring.reload());
        assert!(told.has_changed().unwrap());
        let b = bulkhead_tls::fingerprint(&crate::ca::test_support::certs_in(&next.cert)[0]);
        assert!(ring.get(&b).is_some() && ring.get(&a).is_some());

        // The main pair torn (new certificate, old key): the old issuer stays.
        std::fs::copy(&second.issuer_cert, &main.cert).unwrap();
        assert!(!ring.reload());
        assert!(ring.get(&a).is_some(), "a torn pair keeps what it had");
        // Completed: the main pair now holds the second issuer too.
        std::fs::copy(&second.issuer_key, &main.key).unwrap();
        assert!(ring.reload());
        assert_eq!(ring.fingerprints(), std::slice::from_ref(&b));

        // The optional pair removed: dropped; the main one keeps signing.
        std::fs::remove_file(&next.cert).unwrap();
        assert!(!ring.reload(), "the same issuer is still held");
        assert_eq!(ring.fingerprints(), [b]);
        assert!(ring.describe().contains("next"), "{}", ring.describe());
    }

    #[test]
    fn a_required_pair_must_load_and_a_present_optional_one_too() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = init_ca("example.org", &tmp.path().join("ca")).unwrap();
        let missing = pair(tmp.path(), "absent", false);
        let err = Keyring::load("example.org", vec![missing.clone()], Duration::from_secs(1))
            .unwrap_err();
        assert!(err.to_string().contains("absent.crt"), "{err}");
        let optional = IssuerFiles {
            optional: true,
            ..missing
        };
        let ring = Keyring::load("example.org", vec![optional], Duration::from_secs(1)).unwrap();
        assert!(ring.first().is_none());
        // Present but wrong: the root's key for the issuer's certificate.
        let broken = IssuerFiles {
            flag: "broken",
            cert: ca.issuer_cert.clone(),
            key: ca.root_key.clone(),
            optional: true,
        };
        assert!(Keyring::load("example.org", vec![broken], Duration::from_secs(1)).is_err());
    }
}
