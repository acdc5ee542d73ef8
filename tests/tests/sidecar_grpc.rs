//! Real gRPC through two sidecars: a tonic client calls a tonic server
//! (the Identity service of our own .proto stands in as "the app's API"),
//! per request over the mesh, allowed and denied by the allow-list.

use std::time::Duration;

use bulkhead_proto::pb;
use bulkhead_tests::control::*;
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::proxy::*;
use tonic::{Request, Response, Status};

/// The app: answers Certify with its name, so the caller knows who served it.
struct Echo(&'static str);

#[tonic::async_trait]
impl pb::identity_server::Identity for Echo {
    async fn certify(
        &self,
        req: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        Ok(Response::new(pb::CertifyResponse {
            spiffe_id: format!("{} got {} bytes", self.0, req.into_inner().csr_der.len()),
            ..Default::default()
        }))
    }

    async fn renew(
        &self,
        _req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

const MESH: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: pricing, namespace: shop}
spec:
  ports: [{port: 9090, protocol: grpc}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: pricing-from-cart, namespace: shop}
spec:
  target: pricing
  rules:
    - from: [cart]
      http: {methods: [POST], paths: ['/bulkhead.v1.Identity/Certify']}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_cross_the_mesh_and_denials_are_permission_denied() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::identity_server::IdentityServer::new(Echo("pricing")))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let pricing = mesh.sidecar(
        SidecarSpec::new("shop", "pricing", "1.0.0")
            .protocol("grpc")
            .app_addr(app_addr),
    );
    let cart = mesh.sidecar(SidecarSpec::new("shop", "cart", "2.0.0").upstream("pricing"));
    let web = mesh.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("pricing"));

    let client = |addr: std::net::SocketAddr| {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        pb::identity_client::IdentityClient::new(channel)
    };
    // Allowed: the app answers, over HTTP/2 end to end, many calls on one channel.
    let mut from_cart = client(cart.upstream("pricing"));
    let reply = wait_for_async(
        "pricing to be routable from cart",
        Duration::from_secs(20),
        || {
            let mut c = from_cart.clone();
            async move {
                c.certify(pb::CertifyRequest {
                    csr_der: vec![1, 2, 3],
                    attestation: None,
                })
                .await
                .ok()
            }
        },
    )
    .await;
    assert_eq!(reply.into_inner().spiffe_id, "pricing got 3 bytes");
    for i in 0..50u8 {
        let r = from_cart
            .certify(pb::CertifyRequest {
                csr_der: vec![0; i as usize],
                attestation: None,
            })
            .await
            .expect("call");
        assert_eq!(r.into_inner().spiffe_id, format!("pricing got {i} bytes"));
    }
    // Another method of the same service is not in the rule.
    let err = from_cart
        .renew(pb::RenewRequest { csr_der: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // An unlisted caller: PERMISSION_DENIED from the mesh, not the app.
    let err = client(web.upstream("pricing"))
        .certify(pb::CertifyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("denied by the mesh"),
        "{}",
        err.message()
    );
    assert!(pricing.metrics().contains("bulkhead_authz_denied_total"));
}
