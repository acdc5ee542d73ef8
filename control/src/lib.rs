//! Bulkhead control plane: the mesh's CA, endpoint registry and config push,
//! on etcd (or an embedded store for demos).
//!
//! A request's path: [`server`] accepts and completes TLS (peer identity from
//! the client certificate) → an [`api`] service authorizes by that identity
//! → it reads or writes the [`store`]; a [`hub`] per replica watches the store
//! once and pushes changes to every sidecar's Watch stream. The [`trust`] a
//! replica acts on (roots, the issuer that signs) follows the store's trust
//! record, which [`ca`] defines. What sidecars report about their traffic
//! is added up, shared through the store and read back over windows by
//! [`measure`]. Everything that happens is an event in the store's
//! [`events`] stream, which operators and programs follow.
//!
//! Beside it: the admission [`webhook`] (sidecar injection, on its own
//! listener, with a certificate it can make and renew itself), and the one
//! Kubernetes API-server client, [`k8s_api`], which reads Nodes
//! ([`topology`]) and keeps the webhook configuration's `caBundle`.
//!
//! For operators: the golden metrics rows ([`golden`]) that `bulkheadctl
//! stat` prints, the policy answers ([`explain`]) of `bulkheadctl explain`, and the web [`dashboard`] (`bulkheadctl dashboard`, the
//! demo's `--dashboard`), a loopback server that reads the admin API as
//! the operator.

mod admin_http;
mod api;
pub mod attest;
pub mod ca;
pub mod config;
pub mod dashboard;
pub mod events;
pub mod explain;
pub mod golden;
mod hub;
pub mod k8s_api;
mod keys;
pub(crate) mod measure;
pub mod rollout;
pub mod runtime;
mod server;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod trust;
pub mod webhook;
