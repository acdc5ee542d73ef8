//! Helpers for the model's unit tests: parse one document, expect an error.

use super::{Resource, parse_documents};

/// Parses a file that must hold exactly one valid resource.
pub(crate) fn parse_one(yaml: &str) -> Resource {
    match parse_documents("test.yaml", yaml) {
        Ok(mut resources) if resources.len() == 1 => resources.remove(0),
        Ok(resources) => panic!("expected one resource, got {}", resources.len()),
        Err(errors) => panic!("expected a valid document, got:\n{errors}"),
    }
}

/// Asserts the file is rejected with an error at `path` whose message
/// contains `message`.
pub(crate) fn expect_error(yaml: &str, path: &str, message: &str) {
    let errors = match parse_documents("test.yaml", yaml) {
        Ok(_) => panic!("expected an error at {path}, but the document was accepted:\n{yaml}"),
        Err(errors) => errors,
    };
    assert!(
        errors
            .errors()
            .iter()
            .any(|e| e.path == path && e.message.contains(message)),
        "expected an error at {path} containing {message:?}, got:\n{errors}"
    );
}

/// The document of issue 14, as users will write it.
pub(crate) const GATEWAY_ISSUE_14: &str = "apiVersion: bulkhead.dev/v1
kind: Gateway
metadata: {name: public, namespace: shop}
spec:
  jwt:
  - name: users
    issuer: https://id.shop.example
    audiences: [shop-web]
    jwksUri: https://id.shop.example/.well-known/jwks.json   # or `jwks:` inline JSON
    claimToHeaders: [{claim: sub, header: x-user-id}]
    forwardToken: false
  routes:
  - pathPrefix: /api/cart
    service: cart               # a mesh Service in this namespace (or ns/name)
    port: 8080                  # optional for a single-port Service
    auth: {jwt: users, require: always}   # always | if-present | never
  - pathPrefix: /api/product/
    auth: {jwt: users, require: if-present}
    aggregate:
      timeout: 2s
      backends:
      - {key: product, service: catalog, path: \"/v1/products/{rest}\", required: true}
      - {key: stock, service: inventory, path: \"/v1/stock/{rest}\", required: false, timeout: 300ms}
";
