//! Which replicas are alive and which issuers each holds keys for: every
//! replica keeps a note under `ca/signers/` on a lease of its own, written
//! again when its keyring changes. `ca rotate activate` refuses while a
//! live replica lacks the next issuer's key (it could not sign after the
//! switch), and `ca status` lists them.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Trust;
use crate::keys;
use crate::store::{Op, Store, StoreError};

/// How long a replica's note outlives it.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the lease is kept alive (a third of its life).
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// One replica's note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerNote {
    /// The replica's name (host or pod name).
    pub replica: String,
    /// SHA-256 of each issuer certificate it holds the key of.
    pub issuers: Vec<String>,
}

impl SignerNote {
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Every live replica's note (ones that do not parse are skipped).
pub(crate) async fn list(store: &dyn Store) -> Result<Vec<SignerNote>, StoreError> {
    let (kvs, _) = store.list(keys::SIGNERS).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| SignerNote::decode(&kv.value))
        .collect())
}

/// Keeps this replica's note in the store for as long as the process runs.
pub(crate) async fn announce(trust: Arc<Trust>, store: Arc<dyn Store>, replica: String) {
    let key = format!("{}{replica}-{:08x}", keys::SIGNERS, rand::random::<u32>());
    let mut keys_changed = trust.keyring().subscribe();
    let mut backoff =
        bulkhead_process::Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    loop {
        let note = SignerNote {
            replica: replica.clone(),
            issuers: trust.keyring().fingerprints(),
        };
        let written = async {
            let lease = store.grant(LEASE_TTL).await?;
            store
                .txn(vec![Op::Put {
                    key: key.clone(),
                    value: serde_json::to_vec(&note).unwrap_or_default(),
                    lease: Some(lease),
                }])
                .await?;
            Ok::<_, StoreError>(lease)
        };
        let lease = match written.await {
            Ok(lease) => lease,
            Err(error) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(%error, ?retry_in, "cannot note this replica's issuers in the store; retrying");
                tokio::time::sleep(retry_in).await;
                continue;
            }
        };
        backoff.reset();
        tracing::debug!(issuers = ?note.issuers, "noted this replica's issuers");
        // Keep it alive, noting the keyring again on the same lease when it
        // changes (never unlisted meanwhile), until the lease is lost.
        loop {
            tokio::select! {
                () = tokio::time::sleep(KEEP_ALIVE) => {
                    if let Err(error) = store.keep_alive(lease).await {
                        tracing::warn!(%error, "lost this replica's signer lease; noting again");
                        break;
                    }
                }
                _ = keys_changed.changed() => {
                    let note = SignerNote {
                        replica: replica.clone(),
                        issuers: trust.keyring().fingerprints(),
                    };
                    let put = Op::Put {
                        key: key.clone(),
                        value: serde_json::to_vec(&note).unwrap_or_default(),
                        lease: Some(lease),
                    };
                    if let Err(error) = store.txn(vec![put]).await {
                        tracing::warn!(%error, "cannot note this replica's new issuers; noting again");
                        break;
                    }
                    tracing::info!(issuers = ?note.issuers, "noted this replica's issuers");
                }
            }
        }
    }
}
