//! Who called, as the app learns it: the peer's SPIFFE ID from its verified
//! certificate, and the headers that tell the app, made once per connection
//! (a request pays two reference-count increments). Whatever identity
//! headers the caller sent are removed first ([`h::strip_mesh_headers`]),
//! so nobody can forge them.

use bulkhead_proto::SpiffeId;
use http::{HeaderMap, HeaderValue};

use crate::http as h;

/// The verified peer of one inbound connection.
pub(crate) struct Caller {
    pub(crate) id: SpiffeId,
    /// `x-bulkhead-peer-identity`.
    identity: Option<HeaderValue>,
    /// `x-forwarded-client-cert`, Envoy's format.
    client_cert: Option<HeaderValue>,
}

impl Caller {
    /// `id`, proven by the certificate `leaf`, calling `callee`.
    pub(crate) fn new(id: SpiffeId, leaf: &[u8], callee: &SpiffeId) -> Self {
        let hash = ring::digest::digest(&ring::digest::SHA256, leaf);
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        // SPIFFE IDs are ASCII without ';', ',' or '"' (validated), so
        // they go in unquoted, as Envoy writes them.
        let client_cert = HeaderValue::from_str(&format!("By={callee};Hash={hex};URI={id}")).ok();
        let identity = HeaderValue::from_str(&id.to_string()).ok();
        Self {
            id,
            identity,
            client_cert,
        }
    }

    /// Replaces whatever mesh or identity headers the caller sent with the
    /// verified ones.
    pub(crate) fn tell_app(&self, headers: &mut HeaderMap) {
        h::strip_mesh_headers(headers);
        if let Some(v) = &self.identity {
            headers.insert(h::PEER_IDENTITY, v.clone());
        }
        if let Some(v) = &self.client_cert {
            headers.insert(h::CLIENT_CERT, v.clone());
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.id.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_hears_only_the_verified_identity() {
        let web = SpiffeId::new("cluster.local", "shop", "web").unwrap();
        let cart = SpiffeId::new("cluster.local", "shop", "cart").unwrap();
        let caller = Caller::new(web, b"certificate bytes", &cart);
        let mut headers = HeaderMap::new();
        headers.insert(
            h::CLIENT_CERT,
            HeaderValue::from_static("URI=spiffe://cluster.local/ns/shop/sa/admin"),
        );
        headers.insert(h::PEER_IDENTITY, HeaderValue::from_static("admin"));
        caller.tell_app(&mut headers);
        assert_eq!(
            headers[h::PEER_IDENTITY],
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        let xfcc = headers[h::CLIENT_CERT].to_str().unwrap();
        let hash = ring::digest::digest(&ring::digest::SHA256, b"certificate bytes");
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            xfcc,
            format!(
                "By=spiffe://cluster.local/ns/shop/sa/cart;Hash={hex};\
                 URI=spiffe://cluster.local/ns/shop/sa/web"
            )
        );
        assert_eq!(headers.get_all(h::CLIENT_CERT).iter().count(), 1);
    }
}
