//! The shop behind the gateway that `tests/tests/gateway.rs` runs against:
//! services whose AllowLists name the gateway, apps that say what they saw
//! (a mirror, a catalog, a slow and a failing backend), token providers
//! with JWKS servers, and the gateway itself, started and routable.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::tokens::{JwksServer, Signer, claims, jwks};
use crate::control::{free_port, wait_for_async};
use crate::mesh::Mesh;
use crate::proxy::{App, Reply, Sidecar, SidecarSpec, call};

const WAIT: Duration = Duration::from_secs(20);
pub const ISSUER: &str = "https://id.shop.test";
pub const PARTNER_ISSUER: &str = "https://partners.test";

/// Services behind the gateway, each allowing the gateway's identity only;
/// `orders` wants an end user's scope too (and names `web` the same way,
/// to show only a gateway's claims count).
pub fn services() -> String {
    let mut yaml = String::new();
    for name in ["cart", "catalog", "inventory", "broken", "orders"] {
        let rules = match name {
            "orders" => {
                "[{from: [gateway-public], claims: {scope: orders:write}}, \
                          {from: [web], claims: {scope: orders:write}}]"
            }
            _ => "[{from: [gateway-public]}]",
        };
        yaml.push_str(&format!(
            "---\napiVersion: bulkhead.dev/v1\nkind: Service\n\
             metadata: {{name: {name}, namespace: shop}}\n\
             spec: {{ports: [{{port: 8080, protocol: http}}]}}\n\
             ---\napiVersion: bulkhead.dev/v1\nkind: AllowList\n\
             metadata: {{name: {name}, namespace: shop}}\n\
             spec: {{target: {name}, rules: {rules}}}\n"
        ));
    }
    yaml
}

/// The Gateway: `users` keys from a JWKS server, `partners` from another
/// (the one that stops), `staff` inline, `gone` from a server that never
/// answered.
pub fn gateway_yaml(users: &str, partners: &str, staff: &Value, gone: &str) -> String {
    format!(
        "
apiVersion: bulkhead.dev/v1
kind: Gateway
metadata: {{name: public, namespace: shop}}
spec:
  jwt:
  - name: users
    issuer: {ISSUER}
    audiences: [shop-web]
    jwksUri: {users}
    claimToHeaders: [{{claim: sub, header: x-user-id}}]
    forwardToken: false
  - name: partners
    issuer: {PARTNER_ISSUER}
    audiences: [shop-api]
    jwksUri: {partners}
  - name: staff
    issuer: https://staff.test
    audiences: [ops]
    jwks: '{staff}'
    forwardToken: true
  - name: gone
    issuer: https://gone.test
    audiences: [x]
    jwksUri: {gone}
  routes:
  - pathPrefix: /api/cart
    service: cart
    port: 8080
    auth: {{jwt: users, require: always}}
  - pathPrefix: /api/open
    service: cart
  - pathPrefix: /api/maybe
    service: shop/cart
    auth: {{jwt: users, require: if-present}}
  - pathPrefix: /api/partner
    service: cart
    auth: {{jwt: partners}}
  - pathPrefix: /api/staff
    service: cart
    auth: {{jwt: staff, require: always}}
  - pathPrefix: /api/gone
    service: cart
    auth: {{jwt: gone, require: always}}
  - pathPrefix: /api/orders
    service: orders
    auth: {{jwt: users, require: if-present}}
  - pathPrefix: /api/product/
    aggregate:
      timeout: 2s
      backends:
      - {{key: product, service: catalog, path: \"/v1/products/{{rest}}\", required: true}}
      - {{key: stock, service: inventory, path: \"/v1/stock/{{rest}}\", required: false, timeout: 300ms}}
  - pathPrefix: /api/broken
    aggregate:
      backends:
      - {{key: product, service: catalog, path: \"/v1/products/{{rest}}\", required: false}}
      - {{key: bad, service: broken, path: /fail}}
  - pathPrefix: /api/slow
    aggregate:
      backends:
      - {{key: stock, service: inventory, path: /v1/stock, timeout: 300ms}}
  - pathPrefix: /api/open/special
    service: broken
  - pathPrefix: /api/open
    host: shop.test
    service: catalog
"
    )
}

/// An app that answers with what it saw: its name, the path and the
/// headers a test looks at.
pub async fn mirror(name: &'static str) -> App {
    App::http_with(move |req: Request<Incoming>| {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let body = json!({
            "service": name,
            "path": req.uri().path_and_query().map(|p| p.as_str()),
            "x-user-id": header("x-user-id"),
            "authorization": header("authorization"),
            "x-forwarded-proto": header("x-forwarded-proto"),
            "peer": header("x-bulkhead-peer-identity"),
        });
        async move { Response::new(Full::new(Bytes::from(body.to_string()))) }
    })
    .await
}

/// The catalog: a product object with more members than clients ask for.
pub async fn catalog() -> App {
    App::http_with(|req: Request<Incoming>| {
        let path = req.uri().path_and_query().map(|p| p.to_string());
        async move {
            let body = json!({"name": "lamp", "price": 12, "internal": "x", "path": path});
            Response::new(Full::new(Bytes::from(body.to_string())))
        }
    })
    .await
}

/// Inventory that answers after the aggregate's part timeout.
pub async fn slow_inventory() -> App {
    App::http_with(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(Full::new(Bytes::from_static(b"{\"count\": 3}")))
    })
    .await
}

/// A backend that always fails.
pub async fn failing() -> App {
    App::http_with(|_req: Request<Incoming>| async {
        Response::builder()
            .status(500)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    })
    .await
}

/// Everything the scenarios share: the mesh, its apps and sidecars, the
/// JWKS servers and keys, and the gateway.
pub struct Shop {
    pub _apps: Vec<App>,
    pub _sidecars: Vec<Sidecar>,
    pub gateway: Sidecar,
    pub users: JwksServer,
    pub partners: JwksServer,
    pub es: Signer,
    pub rs: Signer,
    pub ed: Signer,
    pub partner: Signer,
    pub staff: Signer,
    pub mesh: Mesh,
}

impl Shop {
    pub async fn start() -> Self {
        let mesh = Mesh::memory("gateway.test", &services(), &[]).await;
        let (es, rs, ed) = (
            Signer::es256("k-es"),
            Signer::rs256("k-rs"),
            Signer::ed25519("k-ed"),
        );
        let users = JwksServer::start(jwks(&[&es, &rs, &ed])).await;
        let partner = Signer::es256("p1");
        let partners = JwksServer::start(jwks(&[&partner])).await;
        let staff = Signer::ed25519("s1");
        let gone = format!("http://127.0.0.1:{}/jwks", free_port());
        mesh.apply(&gateway_yaml(
            &users.uri(),
            &partners.uri(),
            &jwks(&[&staff]),
            &gone,
        ))
        .await;
        let apps = vec![
            mirror("cart").await,
            catalog().await,
            slow_inventory().await,
            failing().await,
            mirror("orders").await,
        ];
        let mut sidecars = Vec::new();
        let services = ["cart", "catalog", "inventory", "broken", "orders"];
        for (service, app) in services.iter().zip(&apps) {
            sidecars.push(mesh.sidecar(SidecarSpec::new("shop", service, "1.0.0").app(app)));
        }
        let gateway = mesh.sidecar(
            SidecarSpec::gateway("shop", "public")
                .arg("--header-read-timeout")
                .arg("2s"),
        );
        let shop = Self {
            _apps: apps,
            _sidecars: sidecars,
            gateway,
            users,
            partners,
            es,
            rs,
            ed,
            partner,
            staff,
            mesh,
        };
        // Routes and endpoints (registered a moment after each sidecar is
        // ready) reach the gateway a moment after it is ready: wait until
        // every app has answered through it (the slow one by timing out).
        let reached = [
            ("/api/open", "service"),
            ("/api/product/1", "_status.stock"),
            ("/api/broken/1", "status"),
        ];
        for (path, member) in reached {
            wait_for_async(&format!("the gateway to reach {path}"), WAIT, || async {
                let r = shop.get(path, &[]).await.ok()?;
                let seen: Value = serde_json::from_str(&r.body).ok()?;
                let value = member.split('.').fold(&seen, |v, k| &v[k]);
                matches!(value, Value::String(s) if s != "error")
                    .then_some(())
                    .or_else(|| (value == 500).then_some(()))
            })
            .await;
        }
        shop
    }

    pub fn listen(&self) -> SocketAddr {
        self.gateway.listen.expect("the gateway's --listen")
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        call(self.listen(), "GET", path, headers).await
    }

    /// GET with `Authorization: Bearer <token>`.
    pub async fn get_as(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.get(path, &[("authorization", &auth)])
            .await
            .expect("gateway answers")
    }

    pub fn user(&self, extra: Value) -> Value {
        claims(ISSUER, "shop-web", extra)
    }
}

pub fn body(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}
