//! Each etcd member's health, for `bulkheadctl check`: the membership from
//! the cluster, then every member asked for its status on a connection of
//! its own — the balanced client would answer from any live member and
//! hide a dead one.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::timeout;

use super::MemberHealth;

/// Bounds connecting to and asking one member.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// Every member, asked at once. `options` are the store's own (TLS, and
/// require-leader: a member cut off from the leader answers with an error).
pub(super) async fn members(
    client: &Client,
    options: &ConnectOptions,
) -> Result<Vec<MemberHealth>, etcd_client::Error> {
    let list = client.cluster_client().member_list().await?;
    let asks = list.members().iter().map(|member| {
        let name = if member.name().is_empty() {
            format!("{:x}", member.id())
        } else {
            member.name().to_owned()
        };
        let url = member.client_urls().first().cloned().unwrap_or_default();
        let options = options.clone();
        async move {
            let state = if url.is_empty() {
                Err("not started yet: it has no client URL".to_owned())
            } else {
                status(&url, options).await
            };
            MemberHealth { name, url, state }
        }
    });
    Ok(futures::future::join_all(asks).await)
}

async fn status(url: &str, options: ConnectOptions) -> Result<String, String> {
    let ask = async {
        let mut client = Client::connect([url], Some(options))
            .await
            .map_err(|e| e.to_string())?;
        let status = client.status().await.map_err(|e| e.to_string())?;
        if status.leader() == 0 {
            return Err("it has no leader".to_owned());
        }
        if !status.errors().is_empty() {
            return Err(status.errors().join("; "));
        }
        let role = if status.leader() == status.header().map_or(0, |h| h.member_id()) {
            "leader"
        } else {
            "follower"
        };
        Ok(format!("etcd {}, {role}", status.version()))
    };
    timeout(MEMBER_TIMEOUT, ask)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {MEMBER_TIMEOUT:?}")))
}
